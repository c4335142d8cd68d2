#!/usr/bin/env python3
"""ivrd benchmark, workload 3: the full verification flow (dialplans/verify.toml) under load.

Per call rate (a fresh ivrd and database each), SIPp (scenarios/uac_verify.xml) places
`rate x secs` calls, one customer each: welcome, the customer id typed as RFC 2833 events,
the PIN SMS, the PIN typed back, "verified", REFER to the queue (answered by SIPp: 202,
NOTIFY sipfrag 200), BYE from ivrd. The SMS provider is ivrd's `webhook` pointed at a
loopback gateway in this process that relays each PIN to the SIPp call as a SIP MESSAGE.

Figures per rate: completed verifications per second (audit rows with outcome `verified`),
every other outcome, digits sent vs counted by ivrd (`ivrd_dtmf_digits_total`), SMS and PIN
check counters, flow duration, ivrd CPU. ivrd is pinned to CPU 0; SIPp and this process
(the gateway) to CPU 1. Python standard library only; reuses bench.py's helpers.

    w3.py --ivrd target/release/ivrd --out DIR [--rates 5,10] [--secs 30]
    bench.py ... --only w3          (the same, inside the benchmark's results.md/json)
"""
import argparse
import http.server
import json
import os
import re
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (helpers: metrics, snapshots, SIPp statistics, machine facts)
from bench import HOST, SIP_PORT, SIPP_PORT, MEDIA_PORT, ADMIN_PORT, RTP_MIN, RTP_MAX, log, fmt  # noqa: E402

SMS_HTTP_PORT = 19061   # the SMS gateway (ivrd's webhook posts here)
SMS_SIP_PORT = 15071    # the gateway's UDP socket that sends the PIN MESSAGEs to SIPp
CALL_ID = "w3-{n}@127.0.0.1"          # SIPp -cid_str "w3-%u@127.0.0.1": n = SIPp's call number
ID_DIGITS, PIN_DIGITS = 6, 4          # verify.toml: 6-digit customer id, 4-digit PIN

MODES = {
    "quick": dict(rates=[5, 10, 20], secs=30),
    "full": dict(rates=[10, 20, 40, 80], secs=60),
}
# Scenario pauses. The id is typed once welcome (4.05 s) and enter-customer-id (2.74 s) have
# played; the PIN once the rest of sending-pin (4.68 s, starts as the SMS goes out) and
# enter-pin (2.71 s) have. ivrd keeps keys typed ahead, so early digits are not lost either.
ID_WAIT_MS = 7000
PIN_WAIT_MS = 7600


# ---------------------------------------------------------------- the SMS gateway

class Gateway:
    """ivrd's webhook SMS provider posts {"to","text","reference","ttl_seconds"} here. Each
    SMS is answered 200 and its PIN relayed to the SIPp call of that customer as a SIP MESSAGE
    (UDP, retransmitted at 0.5/1/2 s until SIPp answers 200, like a non-INVITE client
    transaction)."""

    def __init__(self, mobile_to_call, pin_dtmf="rfc2833"):
        self.mobile_to_call = mobile_to_call   # "+49..." -> SIPp call number
        self.pin_dtmf = pin_dtmf               # how SIPp is to type the PIN: info | rfc2833
        self.lock = threading.Lock()
        self.posts = []            # (t, to, reference)
        self.unknown = 0           # SMS to a number no call has
        self.no_pin = 0            # SMS text without exactly one 4-digit run
        self.pending = {}          # call-id -> [data, sends, next_t, interval]
        self.delivered = {}        # call-id -> seconds from the POST to SIPp's 200
        self.sent_at = {}
        self.messages_sent = 0     # MESSAGE datagrams incl. retransmissions
        self.gave_up = 0
        self.stop = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, SMS_SIP_PORT))
        self.sock.settimeout(0.05)
        gw = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                reply = gw.on_sms(body)
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.http = http.server.ThreadingHTTPServer((HOST, SMS_HTTP_PORT), Handler)
        self.http.daemon_threads = True
        self.threads = [threading.Thread(target=self.http.serve_forever, daemon=True),
                        threading.Thread(target=self.udp_loop, daemon=True)]
        for t in self.threads:
            t.start()

    @property
    def url(self):
        return f"http://{HOST}:{SMS_HTTP_PORT}/sms"

    def on_sms(self, body):
        now = time.monotonic()
        try:
            msg = json.loads(body)
            to, text, ref = msg["to"], msg["text"], msg.get("reference", "")
        except (ValueError, KeyError, TypeError):
            return {"error": "bad body"}
        pins = re.findall(r"(?<![0-9])([0-9]{4})(?![0-9])", text)
        with self.lock:
            k = len(self.posts)
            self.posts.append((now, to, ref))
            n = self.mobile_to_call.get(to)
            if n is None:
                self.unknown += 1
                return {"id": f"w3-{k}"}
            if len(pins) != 1:
                self.no_pin += 1
                return {"id": f"w3-{k}"}
            cid = CALL_ID.format(n=n)
            body = f"pin={pins[0]}\r\ndtmf={self.pin_dtmf}\r\n"
            data = (f"MESSAGE sip:sipp@{HOST}:{SIPP_PORT} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP {HOST}:{SMS_SIP_PORT};branch=z9hG4bK-w3sms-{n}-{k};rport\r\n"
                    f"From: <sip:sms-gateway@{HOST}:{SMS_SIP_PORT}>;tag=w3sms{k}\r\n"
                    f"To: <sip:{to}@{HOST}:{SIPP_PORT}>\r\n"
                    f"Call-ID: {cid}\r\n"
                    f"CSeq: {k + 1} MESSAGE\r\n"
                    "Max-Forwards: 70\r\n"
                    "Content-Type: text/plain\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n{body}").encode()
            self.sent_at[cid] = now
            self.sock.sendto(data, (HOST, SIPP_PORT))    # at once; udp_loop retransmits
            self.messages_sent += 1
            self.pending[cid] = [data, 1, now + 0.5, 1.0]
        return {"id": f"w3-{k}"}

    def udp_loop(self):
        while not self.stop.is_set():
            now = time.monotonic()
            with self.lock:
                for cid, p in list(self.pending.items()):
                    if p[2] <= now:
                        if p[1] >= 4:
                            del self.pending[cid]
                            self.gave_up += 1
                            continue
                        self.sock.sendto(p[0], (HOST, SIPP_PORT))
                        self.messages_sent += 1
                        p[1] += 1
                        p[2] = now + p[3]
                        p[3] *= 2
            try:
                data, _ = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            text = data.decode(errors="replace")
            if not text.startswith("SIP/2.0 200"):
                continue
            m = re.search(r"(?im)^(?:Call-ID|i)\s*:\s*(\S+)", text)
            if m:
                with self.lock:
                    cid = m.group(1)
                    if self.pending.pop(cid, None) is not None:
                        self.delivered[cid] = time.monotonic() - self.sent_at[cid]

    def close(self):
        self.stop.set()
        self.http.shutdown()
        self.http.server_close()
        for t in self.threads:
            t.join(timeout=5)
        self.sock.close()

    def summary(self):
        with self.lock:
            lat = sorted(self.delivered.values())
            return dict(sms_posts=len(self.posts), sms_numbers=len({p[1] for p in self.posts}),
                        sms_unknown_number=self.unknown, sms_without_pin=self.no_pin,
                        pins_delivered=len(self.delivered), pins_undelivered=len(self.pending) + self.gave_up,
                        message_datagrams=self.messages_sent,
                        pin_relay_p50_ms=pct(lat, 50) * 1000 if lat else None,
                        pin_relay_max_ms=lat[-1] * 1000 if lat else None)


def pct(vals, q):
    return vals[min(len(vals) - 1, int(q / 100.0 * len(vals)))] if vals else None


# ---------------------------------------------------------------- customers, ivrd

def write_customers(run_dir, n):
    """n customers (ids 100000.., mobiles +491555xxxxxxx, English), as ivrd's seed CSV, and
    SIPp's injection file (SEQUENTIAL: line i goes to call number i+1)."""
    rows = [(str(100000 + i), f"+491555{i:07d}") for i in range(n)]
    seed = os.path.join(run_dir, "customers.csv")
    with open(seed, "w") as f:
        f.write("id,name,mobile,language\n")
        for cid, mob in rows:
            f.write(f"{cid},W3 Caller {cid},{mob},en\n")
    inf = os.path.join(run_dir, "callers.csv")
    with open(inf, "w") as f:
        f.write("SEQUENTIAL\n")
        for cid, mob in rows:
            f.write(f"{cid};{mob}\n")
    return seed, inf, {mob: i + 1 for i, (_, mob) in enumerate(rows)}


def toml_str(s):
    return json.dumps(str(s))   # a JSON string is a valid TOML basic string


def ivrd_config(run_dir, seed_csv, sms_url, log_level):
    queue = f"sip:queue@{HOST}:{SIPP_PORT}"
    fallback = f"sip:fallback@{HOST}:{SIPP_PORT}"
    cfg = f"""# ivrd bench w3 config (written by bench/w3.py): the verify dialplan, production defaults
# except where a comment says otherwise.
[sip]
udp = ["{HOST}:{SIP_PORT}"]
tcp = ["{HOST}:{SIP_PORT}"]
# SIPp is the PBX: without it listed, every call would come from one untrusted source and
# meet its budgets (10 new calls a second, 16 unconfirmed), and the per-caller SMS limit would
# count that source's address (5 SMS per 10 minutes) instead of each caller's number.
trusted = ["{HOST}"]

[media]
rtp_ip = "{HOST}"
rtp_port_min = {RTP_MIN}
rtp_port_max = {RTP_MAX}
prompts_dir = {toml_str(os.path.join(bench.ROOT, "prompts"))}
pacing_threads = 1
# rtp_timeout_secs (30), max_call_secs, inband_dtmf (true): defaults. SIPp sends RTP only
# while it types digits; the longest silence of the flow is ~8 s.

[dialplans]
dir = {toml_str(os.path.join(bench.ROOT, "dialplans"))}
default = "verify"
# Transfers go to SIPp, which accepts the REFER itself (202 + NOTIFY 200).
vars = {{ queue = {toml_str(queue)}, fallback = {toml_str(fallback)} }}

[store]
path = {toml_str(os.path.join(run_dir, "ivrd.db"))}
seed_csv = {toml_str(seed_csv)}

[sms]
provider = "webhook"
url = {toml_str(sms_url)}

# [limits]: defaults (3 SMS per customer and 5 per calling number per 10 min, lock-outs).
# Nothing is relaxed: every call is a different customer calling from its own mobile.

[guard]
# The global budgets (default 2,000 an hour, 20,000 a day) would stop a run at 80 cps after
# 25 s; the breaker stays at its defaults (every PIN is typed, so the prefix converts).
sms_per_hour = 0
sms_per_day = 0

[shutdown]
drain_secs = 1

[admin]
listen = "{HOST}:{ADMIN_PORT}"

[log]
level = "{log_level}"
"""
    return bench.write_config(run_dir, cfg)


def busy_ports(extra=()):
    """The benchmark's ports (and `extra`, (kind, port) pairs) that something else holds
    (another bench run or ivrd)."""
    busy = []
    for kind, port in (("udp", SIP_PORT), ("udp", SIPP_PORT), ("udp", SMS_SIP_PORT), ("udp", MEDIA_PORT),
                       ("tcp", SIP_PORT), ("tcp", ADMIN_PORT), ("tcp", SMS_HTTP_PORT), *extra):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
        try:
            if kind == "tcp":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((HOST, port))
        except OSError:
            busy.append(f"{kind}/{port}")
        finally:
            s.close()
    return busy


def audit_rows(db):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        cur = con.execute("SELECT call_id, caller, customer_id, outcome, started_at, ended_at, "
                          "dtmf_methods, detail FROM audit ORDER BY id")
        keys = ["call_id", "caller", "customer_id", "outcome", "started_at", "ended_at", "dtmf_methods", "detail"]
        return [dict(zip(keys, r)) for r in cur]
    finally:
        con.close()


def customer_count(db):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute("SELECT count(*) FROM customers").fetchone()[0]
    finally:
        con.close()


# ---------------------------------------------------------------- one step

def sipp_cmd(run_dir, inf, total, rate, id_wait_ms, pin_wait_ms):
    return ["taskset", "-c", "1", "sipp", f"{HOST}:{SIP_PORT}",
            "-sf", os.path.join(bench.BENCH, "scenarios", "uac_verify.xml"),
            "-s", "ivr", "-i", HOST, "-p", str(SIPP_PORT), "-mi", HOST, "-mp", str(MEDIA_PORT),
            "-inf", inf, "-cid_str", CALL_ID.replace("{n}", "%u"),
            "-set", "id_wait_ms", str(id_wait_ms), "-set", "pin_wait_ms", str(pin_wait_ms),
            "-set", "sms_port", str(SMS_SIP_PORT),
            "-r", str(rate), "-m", str(total), "-l", str(total),
            "-nostdin", "-trace_stat", "-stf", "stat.csv", "-fd", "1",
            "-trace_err", "-error_file", "errors.log", "-trace_screen", "-screen_file", "screen.log"]


def metric_delta(a, b, prefix):
    """{label-set: delta} for the metric lines starting with `prefix`."""
    out = {}
    for k in set(a) | set(b):
        if k.startswith(prefix):
            d = b.get(k, 0) - a.get(k, 0)
            if d:
                out[k[len(prefix):] or "total"] = d
    return out


def step(ivrd_bin, out, rate, secs, id_wait_ms=ID_WAIT_MS, pin_wait_ms=PIN_WAIT_MS, log_level="warn",
         pin_dtmf="rfc2833"):
    run_dir = os.path.join(out, "raw", f"w3-{rate}cps")
    os.makedirs(run_dir, exist_ok=True)
    total = rate * secs
    log(f"W3 {rate} cps for {secs} s ({total} verification calls)")
    seed, inf, mobile_to_call = write_customers(run_dir, total)
    db = os.path.join(run_dir, "ivrd.db")
    for fn in os.listdir(run_dir):   # a rerun into the same folder starts from a fresh database
        if fn.startswith("ivrd.db"):
            os.remove(os.path.join(run_dir, fn))
    busy = busy_ports()
    if busy:
        raise SystemExit(f"ports in use: {', '.join(busy)} (another benchmark or ivrd running?)")
    gw = Gateway(mobile_to_call, pin_dtmf)
    res = dict(rate=rate, secs=secs, total=total, id_wait_ms=id_wait_ms, pin_wait_ms=pin_wait_ms,
               pin_dtmf=pin_dtmf)
    iv = None
    try:
        cfg = ivrd_config(run_dir, seed, gw.url, log_level)
        iv = bench.Ivrd(ivrd_bin, run_dir, cfg, keep_db=True)
        res["customers_in_db"] = customer_count(db)
        a = bench.snapshot(iv.pid)
        cmd = sipp_cmd(run_dir, inf, total, rate, id_wait_ms, pin_wait_ms)
        with open(os.path.join(run_dir, "sipp.cmd"), "w") as f:
            f.write(" ".join(cmd) + "\n")
        sp = subprocess.Popen(cmd, cwd=run_dir, stdout=open(os.path.join(run_dir, "sipp.out"), "w"),
                              stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        limit = secs + (id_wait_ms + pin_wait_ms) / 1000 + 150
        peak, samples = 0, []
        while sp.poll() is None and time.monotonic() - t0 < limit:
            time.sleep(1)
            try:
                m = bench.metrics()
            except OSError:
                continue
            act = int(m.get("ivrd_calls_active", 0))
            peak = max(peak, act)
            samples.append((round(time.monotonic() - t0, 1), act,
                            int(m.get('ivrd_calls_total{outcome="transferred"}', 0))))
        res["sipp_rc"] = bench.wait_sipp(sp, 5)
        res["sipp_secs"] = time.monotonic() - t0
        for _ in range(60):   # let ivrd finish the calls SIPp gave up on (their BYE, audit row)
            if bench.metrics().get("ivrd_calls_active", 0) == 0:
                break
            time.sleep(1)
        b = bench.snapshot(iv.pid, extra_pid=None)
        w = bench.window(a, b)
        res["window"] = w
        res["peak_active"] = peak
        res["samples"] = samples
        res["sipp"] = bench.sipp_stats(run_dir)
        ma, mb = a["metrics"], b["metrics"]
        res["dtmf"] = metric_delta(ma, mb, "ivrd_dtmf_digits_total")
        res["pin_checks"] = metric_delta(ma, mb, "ivrd_pin_checks_total")
        res["sms"] = metric_delta(ma, mb, "ivrd_sms_total")
        res["sms_sent_ivrd"] = res["sms"].get('{result="sent"}', 0)
        res["calls_by_end"] = metric_delta(ma, mb, "ivrd_calls_total")
        res["sms_latency_mean_ms"] = (1000 * (mb.get("ivrd_sms_latency_seconds_sum", 0) - ma.get("ivrd_sms_latency_seconds_sum", 0))
                                      / max(1, mb.get("ivrd_sms_latency_seconds_count", 0) - ma.get("ivrd_sms_latency_seconds_count", 0)))
        res["ivrd_retrans"] = mb.get("ivrd_sip_retransmissions_total", 0)
        rows = audit_rows(db)
    finally:
        if iv:
            res["ivrd_log"] = iv.stop()
        gw.close()
    res.update(gw.summary())
    res.update(analyse(rows, res))
    log(f"  SIPp ok={res['sipp'].get('successful')} failed={res['sipp'].get('failed')}; "
        f"verified {res['verified']}/{total} ({fmt(res['verified_per_s'])}/s); outcomes {res['outcomes']}; "
        f"digits sent {res['digits_sent']} counted {res['digits_counted']:.0f}; ivrd {w['cores']:.3f} cores")
    return res


def analyse(rows, res):
    outcomes = {}
    for r in rows:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    ver = [r for r in rows if r["outcome"] == "verified"]
    ends = sorted(r["ended_at"] for r in ver)
    durs = sorted((r["ended_at"] - r["started_at"]) / 1000.0 for r in ver)
    span = (ends[-1] - ends[0]) / 1000.0 if len(ends) > 1 else 0
    # Digits: every answered call types its id; a call types its PIN once the PIN reached it.
    answered = len(rows)
    sent = ID_DIGITS * answered + PIN_DIGITS * res.get("pins_delivered", 0)
    counted = sum(res.get("dtmf", {}).values())
    return dict(audit_rows=answered, outcomes=outcomes, verified=len(ver),
                # completions per second over the span in which they completed (first to last)
                verified_per_s=(len(ver) - 1) / span if span > 0 else None,
                flow_p50_s=pct(durs, 50), flow_p99_s=pct(durs, 99), flow_max_s=durs[-1] if durs else None,
                digits_sent=sent, digits_counted=counted, digits_lost=sent - counted,
                not_verified=[r for r in rows if r["outcome"] != "verified"][:50])


# ---------------------------------------------------------------- report

def report_lines(w3):
    how = {"info": "SIP INFO (`application/dtmf-relay`, 250 ms apart)", "rfc2833": "RFC 2833 (a second `play_dtmf`)"}
    L = ["## Workload 3: verification flow", "",
         "Each call is a different customer, calling from its own mobile: INVITE → welcome → the "
         "6-digit customer id as RFC 2833 events (SIPp `play_dtmf`) → lookup → PIN SMS via the "
         "`webhook` provider to a loopback gateway, which relays the PIN to the SIPp call as a SIP "
         "MESSAGE → the 4-digit PIN as "
         f"{how.get(w3[0].get('pin_dtmf', 'info'))} → \"verified\" → REFER to the queue (SIPp: 202, "
         "NOTIFY sipfrag 200) → BYE from ivrd. A fresh ivrd and database per rate; ivrd limits at "
         "their defaults (none relaxed, none hit by design). SIPp types the id "
         f"{w3[0]['id_wait_ms'] / 1000:.1f} s after the ACK and the PIN "
         f"{w3[0]['pin_wait_ms'] / 1000:.1f} s after the SMS went out (after the prompts).", "",
         "| rate (cps) | calls | SIPp ok / failed | verified | verified/s | other outcomes | flow p50 / p99 / max (s) | "
         "SMS sent (ivrd / gateway) | PINs relayed | PIN checks | digits sent / counted / lost | "
         "ivrd CPU (cores, avg) | ivrd CPU ms per verification | peak calls | CPU0 other busy % | load1 |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in w3:
        s, w = r["sipp"], r["window"]
        other = ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items()) if k != "verified") or "none"
        checks = ", ".join(f"{k.strip('{}').replace('result=', '').strip(chr(34))} {v:.0f}"
                           for k, v in sorted(r["pin_checks"].items())) or "0"
        cpu_ms = w["cores"] * w["secs"] * 1000 / max(1, r["verified"])
        L.append(f"| {r['rate']} | {r['total']} | {s.get('successful', '?')} / {s.get('failed', '?')} | "
                 f"{r['verified']} | {fmt(r['verified_per_s'])} | {other} | "
                 f"{fmt(r['flow_p50_s'], 2)} / {fmt(r['flow_p99_s'], 2)} / {fmt(r['flow_max_s'], 2)} | "
                 f"{r['sms_sent_ivrd']:.0f} / {r['sms_posts']} | {r['pins_delivered']} | {checks} | "
                 f"{r['digits_sent']} / {r['digits_counted']:.0f} / {r['digits_lost']:.0f} | "
                 f"{w['cores']:.3f} | {cpu_ms:.1f} | {r['peak_active']} | {w['cpu0_other_pct']:.1f} | {w['loadavg'][0]} |")
    L += ["", "- *verified/s*: audit rows with outcome `verified`, counted over the span from the first "
          "to the last of them completing (so ramp-up does not dilute it); at a sustained rate it "
          "equals the offered rate.",
          "- *digits sent*: 6 per call ivrd answered (one audit row each) + 4 per PIN the gateway "
          "relayed (SIPp answered the MESSAGE); *counted*: delta of `ivrd_dtmf_digits_total`. "
          "A digit lost or misread also shows as an outcome other than `verified`.",
          "- *flow*: audit `started_at` → `ended_at` of verified calls (INVITE to the BYE after "
          "the transfer); the scripted pauses make up most of it.", ""]
    for r in w3:
        extra = (f"- {r['rate']} cps: SIPp ran {r['sipp_secs']:.0f} s (rc {r['sipp_rc']}), retrans "
                 f"{r['sipp'].get('retrans', '?')}, ivrd SIP retrans {r['ivrd_retrans']:.0f}; "
                 f"digits by method {', '.join(f'{k.split(chr(34))[1]} {v:.0f}' for k, v in sorted(r['dtmf'].items()))}; "
                 f"ivrd SMS latency mean {fmt(r['sms_latency_mean_ms'], 1)} ms; PIN relay (gateway POST → "
                 f"SIPp's 200) p50 {fmt(r['pin_relay_p50_ms'], 1)} ms, max {fmt(r['pin_relay_max_ms'], 1)} ms, "
                 f"{r['pins_undelivered']} undelivered; SMS to unknown numbers {r['sms_unknown_number']}; "
                 f"calls by end {', '.join(f'{k} {v:.0f}' for k, v in sorted(r['calls_by_end'].items()))}; "
                 f"ivrd log warn/error lines {r.get('ivrd_log', {}).get('warn_lines', '?')}/"
                 f"{r.get('ivrd_log', {}).get('error_lines', '?')}")
        L.append(extra)
        for row in r["not_verified"][:5]:
            L.append(f"  - not verified: {row['call_id']} customer {row['customer_id']} → "
                     f"{row['outcome']} ({row['detail']})")
    L.append("")
    return L


def workload3(ivrd_bin, out, rates, secs, id_wait_ms=ID_WAIT_MS, pin_wait_ms=PIN_WAIT_MS,
              log_level="warn", on_result=None, pin_dtmf="rfc2833"):
    """Runs the steps, this process pinned to CPU 1 (the gateway shares it with SIPp)."""
    old_aff = os.sched_getaffinity(0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # ~1 fd per call in ivrd, SIPp
    except (ValueError, OSError):
        pass
    os.sched_setaffinity(0, {1})
    results = []
    try:
        for rate in rates:
            results.append(step(ivrd_bin, out, rate, secs, id_wait_ms, pin_wait_ms, log_level, pin_dtmf))
            if on_result:
                on_result(results[-1])
    finally:
        os.sched_setaffinity(0, old_aff)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ivrd", default=os.path.join(bench.ROOT, "target", "release", "ivrd"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="rates 5,10,20 for 30 s (default: 5,10,20,40 for 60 s)")
    ap.add_argument("--rates", default="", help="call rates, e.g. 5,10")
    ap.add_argument("--secs", type=int, default=0, help="seconds of new calls per rate")
    ap.add_argument("--id-wait-ms", type=int, default=ID_WAIT_MS)
    ap.add_argument("--pin-wait-ms", type=int, default=PIN_WAIT_MS)
    ap.add_argument("--log-level", default="warn")
    ap.add_argument("--pin-dtmf", default="rfc2833", choices=["info", "rfc2833"],
                    help="how SIPp types the PIN (default rfc2833, play_dtmf; info: SIP INFO dtmf-relay)")
    args = ap.parse_args()
    mode = MODES["quick" if args.quick else "full"]
    rates = [int(x) for x in args.rates.split(",")] if args.rates else mode["rates"]
    secs = args.secs or mode["secs"]
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    data = dict(machine_start=bench.machine_facts(), w3=[])

    def save(_=None):
        data["machine_end"] = bench.machine_facts()
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(data, f, indent=1, default=str)
        mf = data["machine_start"]
        L = ["# ivrd benchmark, workload 3", "",
             f"- date {mf['date']}; host {mf['host']}; {mf['cpu_model']}, nproc {mf['nproc']}; "
             f"load at start {' '.join(mf['loadavg'])}, at end {' '.join(data['machine_end']['loadavg'])}",
             "- pinning: ivrd on CPU 0; SIPp and the SMS gateway (w3.py) on CPU 1", ""]
        with open(os.path.join(out, "results.md"), "w") as f:
            f.write("\n".join(L + (report_lines(data["w3"]) if data["w3"] else [])))

    workload3(os.path.abspath(args.ivrd), out, rates, secs, args.id_wait_ms, args.pin_wait_ms,
              args.log_level, on_result=lambda r: (data["w3"].append(r), save()), pin_dtmf=args.pin_dtmf)
    save()
    log(f"results: {os.path.join(out, 'results.md')}")


if __name__ == "__main__":
    main()
