#!/usr/bin/env python3
"""ivrd under floods: what an outsider can make the daemon hold, and whether the PBX's calls
go on being served meanwhile and afterwards (see bench/README.md, "Floods").

Per flood and per `[sip] untrusted` mode (allow: attackers are served within the per-source
budgets, the worst case; drop: production), a fresh ivrd (release build, CPU 0) with
`[sip] trusted = ["127.0.0.1"]`:

  idle 3 s -> baseline 10 s -> flood (full 60 s, quick 20 s) -> recovery 30 s

SIPp places the PBX's calls from 127.0.0.1 all along (20 calls/s, INVITE, ACK, 2 s of prompt,
BYE; one SIPp per phase, so each phase's calls are counted on their own). The attacker is
`flood` (flood.c) on CPU 1 at nice 10 (SIPp, also on CPU 1, goes first), from 127.0.0.2 and
up. VmRSS and open descriptors are sampled every 250 ms, ivrd's metrics every second.

    python3 bench/flood.py --ivrd target/release/ivrd --bin bench/.build --out DIR [--quick]
        [--floods invite-1,tcp-idle] [--modes allow,drop] [--secs 60]
or  bench/run.sh --only flood [--floods ...]

Plain Python 3, no third-party modules. Loopback only.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

HOST = bench.HOST
TARGET = f"{HOST}:{bench.SIP_PORT}"
FIRST_SOURCE = "127.0.0.2"
LEGIT_RATE = 20          # the PBX's calls per second, all along
LEGIT_HOLD_MS = 2000     # each hears 2 s of prompt
BOUND_MIB = 64           # the bound: RSS at most this far above idle under any flood
PHASES = {"baseline": (15070, 16000, 8888), "flood": (15072, 16010, 8889),
          "recovery": (15074, 16020, 8890)}   # SIPp's SIP port, media port (it binds +2 too), control port

# name -> flood.c arguments and what it is. UDP floods run at the generator's top speed
# (-r 0); TCP floods open connections at a set rate and reopen every one ivrd closes.
FLOODS = {
    "invite-1": (["invite", "-n", "1", "-r", "0"],
                 "full calls (INVITE, ACK on the 200, BYE at once) from 1 source, top speed"),
    "invite-200": (["invite", "-n", "200", "-r", "0"],
                   "full calls from 200 sources (127.0.0.2-201), top speed"),
    "invite-hold": (["invite", "-n", "20", "-r", "200", "-H", "600000", "-k", "10000"],
                    "full calls from 20 sources at their budget (10/s each, 200/s in all), each "
                    "held (no BYE) with one RTP packet every 10 s so that the RTP timeout never "
                    "ends it"),
    "noack-1": (["noack", "-n", "1", "-r", "0"],
                "INVITEs never ACKed from 1 source, top speed"),
    "noack-200": (["noack", "-n", "200", "-r", "0"],
                  "INVITEs never ACKed from 200 sources, top speed"),
    "noack-400": (["noack", "-n", "400", "-r", "1000"],
                  "INVITEs never ACKed from 400 sources at 1,000/s in all (2.5/s each, within "
                  "every per-source budget): 400 x 16 unconfirmed > the 6,000 RTP ports"),
    "noack-100k": (["noack", "-n", "100000", "-r", "0"],
                   "INVITEs never ACKed from 100,000 sources (127.0.0.2-127.1.134.161), top "
                   "speed: more sources than the table of sources holds (64 Ki)"),
    "options": (["options", "-n", "1", "-r", "0"], "OPTIONS from 1 source, top speed"),
    "options-vias": (["options", "-n", "1", "-r", "0", "-v", "1200"],
                     "OPTIONS with 1,200 Via headers (51 KB each) from 1 source, top speed"),
    "tcp-idle": (["tcp-idle", "-n", "200", "-c", "20000", "-r", "2000", "-w", "4"],
                 "20,000 TCP connections from 200 sources that send nothing, opened (and "
                 "reopened) at 2,000/s"),
    "tcp-noread": (["tcp-noread", "-n", "200", "-c", "3200", "-r", "1000"],
                   "3,200 TCP connections from 200 sources sending OPTIONS as fast as they "
                   "can and never reading (4 KiB receive buffer), reopened at 1,000/s"),
    "tcp-slow": (["tcp-slow", "-n", "200", "-c", "2000", "-r", "1000"],
                 "2,000 TCP connections from 200 sources sending an OPTIONS one byte a "
                 "second (slowloris), reopened at 1,000/s"),
}
MODES = {"quick": dict(secs=20, recovery=20, baseline=10),
         "full": dict(secs=60, recovery=30, baseline=10)}

# Gauges sampled every second (their peak is reported) and counters reported as deltas.
GAUGES = ["ivrd_sip_transactions", "ivrd_sip_transaction_bytes", "ivrd_sip_tcp_connections",
          "ivrd_sip_unconfirmed_calls", "ivrd_calls_active"]
COUNTERS = ["ivrd_sip_refused_total", "ivrd_sip_untrusted_total", "ivrd_sip_overload_rejects_total",
            "ivrd_sip_bad_messages_total", "ivrd_sip_tcp_refused_total", "ivrd_sip_tcp_closed_total",
            "ivrd_sip_ack_timeouts_total", "ivrd_calls_total", "ivrd_sip_requests_total",
            "ivrd_sip_responses_total", "ivrd_sip_retransmissions_total", "ivrd_rtp_packets_sent_total",
            "ivrd_rtp_skipped_ticks_total", "ivrd_rtp_late_ticks_total"]


def log(*a):
    bench.log(*a)


def metrics_or_none(timeout=2.0):
    try:
        with urllib.request.urlopen(f"http://{HOST}:{bench.ADMIN_PORT}/metrics", timeout=timeout) as r:
            text = r.read().decode()
    except OSError:
        return None
    return bench.parse_metrics(text)


def counter_deltas(a, b):
    if not a or not b:
        return {}
    out = {}
    for k, v in b.items():
        if any(k == c or k.startswith(c + "{") for c in COUNTERS):
            d = v - a.get(k, 0)
            if d:
                out[k] = d
    return out


class Sampler:
    """VmRSS, open descriptors and CPU of ivrd every 250 ms; ivrd's gauges every second (its
    own thread: under a flood /metrics may answer slowly, and must not hold up the RSS)."""

    def __init__(self, pid, t0):
        self.pid, self.t0 = pid, t0
        self.rows, self.gauges = [], []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.proc_loop, daemon=True),
                        threading.Thread(target=self.metrics_loop, daemon=True)]
        for t in self.threads:
            t.start()

    def proc_loop(self):
        nxt = time.monotonic()
        while not self.stop.is_set():
            try:
                rss = 0
                with open(f"/proc/{self.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            rss = int(line.split()[1])
                            break
                fds = len(os.listdir(f"/proc/{self.pid}/fd"))
                with open(f"/proc/{self.pid}/stat") as f:
                    p = f.read().rsplit(")", 1)[1].split()
                cpu = int(p[11]) + int(p[12])
                st = bench.read_proc_stat()
                # The state of the tokio worker(s) ("ivrd" threads other than the main one): a
                # worker in D (waiting for the disk, e.g. a page fault) serves nothing.
                wstate = ""
                for tid in os.listdir(f"/proc/{self.pid}/task"):
                    if int(tid) == self.pid:
                        continue
                    try:
                        with open(f"/proc/{self.pid}/task/{tid}/stat") as f:
                            ts = f.read()
                    except OSError:
                        continue
                    if ts[ts.index("(") + 1:ts.rindex(")")] == "ivrd":
                        wstate += ts.rsplit(")", 1)[1].split()[0]
            except OSError:
                return
            # CPU 0's and CPU 1's steal (jiffies): a host that takes a vCPU away for a few
            # hundred ms stalls the pacer and SIPp alike, and the calls that fail then are not
            # the flood's doing.
            self.rows.append((time.monotonic() - self.t0, rss, fds, cpu, st["cpu0"][7], st["cpu1"][7], wstate))
            nxt += 0.25
            self.stop.wait(max(0.0, nxt - time.monotonic()))

    def metrics_loop(self):
        while not self.stop.is_set():
            t = time.monotonic() - self.t0
            m = metrics_or_none(timeout=1.0)
            if m is not None:
                self.gauges.append((t, {g: m.get(g, 0.0) for g in GAUGES}))
            self.stop.wait(1.0)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=5)

    def rss_at(self, t):
        """The last RSS sample at or before t (KiB)."""
        best = None
        for r in self.rows:
            if r[0] <= t:
                best = r
        return best[1] if best else None

    def window(self, t0, t1):
        return [r for r in self.rows if t0 <= r[0] <= t1]

    def cpu_cores(self, t0, t1):
        w = self.window(t0, t1)
        if len(w) < 2 or w[-1][0] <= w[0][0]:
            return None
        return (w[-1][3] - w[0][3]) / bench.CLK_TCK / (w[-1][0] - w[0][0])

    def host(self, t0, t1):
        """Steal on CPU 0 and CPU 1 over the window (% of the window) and in the worst
        250 ms slice (ms), and the longest gap between two samples (ms; the sampler runs on
        CPU 1 every 250 ms, so a gap well beyond that is a stall of CPU 1)."""
        w = self.window(t0, t1)
        if len(w) < 2:
            return {}
        span = w[-1][0] - w[0][0]
        tick = 1000.0 / bench.CLK_TCK
        out = dict(max_gap_ms=max((b[0] - a[0]) * 1000 for a, b in zip(w, w[1:])),
                   worker_disk_wait_samples=sum("D" in r[6] for r in w), samples=len(w))
        for i, cpu in ((4, "cpu0"), (5, "cpu1")):
            out[f"steal_{cpu}_pct"] = 100.0 * (w[-1][i] - w[0][i]) * tick / 1000.0 / span
            out[f"steal_{cpu}_worst_ms"] = max((b[i] - a[i]) * tick for a, b in zip(w, w[1:]))
        return out

    def gauge_peaks(self, t0, t1):
        out = {}
        for t, g in self.gauges:
            if t0 <= t <= t1:
                for k, v in g.items():
                    out[k] = max(out.get(k, 0.0), v)
        return out


def slope_mib_per_min(rows):
    """Least-squares slope of RSS over `rows`, MiB per minute."""
    if len(rows) < 8:
        return None
    xs = [r[0] for r in rows]
    ys = [r[1] / 1024.0 for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return 60.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def start_legit(run_dir, phase, secs):
    d = os.path.join(run_dir, f"legit-{phase}")
    os.makedirs(d, exist_ok=True)
    port, media, ctrl = PHASES[phase]
    n = LEGIT_RATE * secs
    p = bench.sipp(d, n, LEGIT_RATE * 10, LEGIT_RATE, LEGIT_HOLD_MS, rtt=True, port=port,
                   media_port=media, ctrl_port=ctrl)
    return p, d, n


def legit_result(p, d, n, timeout):
    rc = bench.wait_sipp(p, timeout)
    s = bench.sipp_stats(d)
    r = dict(rc=rc, planned=n, attempted=s.get("created"), ok=s.get("successful"),
             failed=s.get("failed"), retrans=s.get("retrans"))
    r.update(bench.sipp_rtt(d))
    return r


def parse_report(path):
    out = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                k, _, v = line.strip().partition(" ")
                try:
                    out[k] = float(v) if "." in v else int(v)
                except ValueError:
                    pass
    return out


def run_one(ivrd, binary_dir, out, name, untrusted, m):
    args, desc = FLOODS[name]
    run_dir = os.path.join(out, "raw", f"flood-{name}-{untrusted}")
    os.makedirs(run_dir, exist_ok=True)
    secs, recovery, baseline = m["secs"], m["recovery"], m["baseline"]
    log(f"FLOOD {name} ({desc}), untrusted = \"{untrusted}\": {baseline} s baseline, {secs} s flood, "
        f"{recovery} s recovery; legitimate calls at {LEGIT_RATE}/s from {HOST} all along")
    cfg = bench.ivrd_config(run_dir, rtp_timeout_secs=None,
                            sip_extra=f'untrusted = "{untrusted}"          # sources outside trusted')
    iv = bench.Ivrd(ivrd, run_dir, cfg=cfg)
    t0 = time.monotonic()
    smp = Sampler(iv.pid, t0)
    res = dict(name=name, untrusted=untrusted, desc=desc, flood_args=args, secs=secs,
               recovery_secs=recovery, baseline_secs=baseline, legit_rate=LEGIT_RATE,
               legit_hold_ms=LEGIT_HOLD_MS)
    try:
        time.sleep(3)
        t_idle = time.monotonic() - t0
        m_idle = metrics_or_none()
        # Baseline: the PBX's calls alone.
        lb = start_legit(run_dir, "baseline", baseline)
        time.sleep(baseline)
        t_f0 = time.monotonic() - t0
        m_f0 = metrics_or_none()
        th_f0 = bench.proc_sample(iv.pid)
        # The flood, with the PBX's calls beside it.
        rep = os.path.join(run_dir, "flood.report")
        cmd = ["taskset", "-c", "1", "nice", "-n", "10", os.path.join(binary_dir, "flood")] + args + [
            "-t", TARGET, "-s", FIRST_SOURCE, "-d", str(secs), "-g", "3", "-o", rep]
        with open(os.path.join(run_dir, "flood.cmd"), "w") as f:
            f.write(" ".join(cmd) + "\n")
        fl = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                              stderr=open(os.path.join(run_dir, "flood.log"), "w"))
        lf = start_legit(run_dir, "flood", secs)
        # The flood stops sending after `secs` (UDP: then 3 s more of collecting answers).
        time.sleep(secs)
        t_f1 = time.monotonic() - t0
        th_f1 = bench.proc_sample(iv.pid)
        m_f1 = metrics_or_none(timeout=10)
        # Recovery: the PBX's calls go on; the attacker is gone.
        lr = start_legit(run_dir, "recovery", recovery)
        try:
            fl.wait(timeout=60)
        except subprocess.TimeoutExpired:
            fl.kill()
            fl.wait()
        res["flood_rc"] = fl.returncode
        time.sleep(max(0.0, recovery - (time.monotonic() - t0 - t_f1)))
        t_r1 = time.monotonic() - t0
        m_r1 = metrics_or_none(timeout=10)
        res["legit"] = {
            "baseline": legit_result(*lb, timeout=60),
            "flood": legit_result(*lf, timeout=120),
            "recovery": legit_result(*lr, timeout=120),
        }
        # Every call has ended: what ivrd still holds.
        time.sleep(2)
        t_end = time.monotonic() - t0
        m_end = metrics_or_none(timeout=10)
    finally:
        smp.finish()
        res["ivrd_log"] = iv.stop()
    res["attacker"] = parse_report(os.path.join(run_dir, "flood.report"))
    idle = smp.rss_at(t_idle)
    flood_rows = smp.window(t_f0, t_f1 + 3)
    res.update(
        rss_idle_kb=idle,
        rss_before_kb=smp.rss_at(t_f0),
        rss_peak_flood_kb=max((r[1] for r in flood_rows), default=None),
        rss_peak_kb=max((r[1] for r in smp.rows), default=None),
        rss_end_flood_kb=smp.rss_at(t_f1),
        rss_end_kb=smp.rss_at(t_end),
        rss_slope_2nd_half=slope_mib_per_min(smp.window((t_f0 + t_f1) / 2, t_f1)),
        fds_idle=next((r[2] for r in smp.rows if r[0] >= t_idle), None),
        fds_peak=max((r[2] for r in smp.rows), default=None),
        fds_end=smp.window(t_end - 1, t_end + 5)[-1][2] if smp.window(t_end - 1, t_end + 5) else None,
        cpu_baseline=smp.cpu_cores(t_idle, t_f0),
        cpu_flood=smp.cpu_cores(t_f0, t_f1),
        cpu_recovery=smp.cpu_cores(t_f1 + 3, t_r1),
        host=dict(baseline=smp.host(t_idle, t_f0), flood=smp.host(t_f0, t_f1),
                  recovery=smp.host(t_f1, t_r1)),
        threads_flood=thread_cores(th_f0, th_f1),
        gauges_flood=smp.gauge_peaks(t_f0, t_f1 + 3),
        gauges_end=(m_end and {g: m_end.get(g, 0.0) for g in GAUGES}),
        metrics_flood=counter_deltas(m_f0, m_f1),
        metrics_recovery=counter_deltas(m_f1, m_r1),
        metrics_baseline=counter_deltas(m_idle, m_f0),
        metrics_missing=[k for k, v in (("idle", m_idle), ("flood start", m_f0), ("flood end", m_f1),
                                        ("recovery end", m_r1), ("end", m_end)) if v is None],
        phases=dict(idle=t_idle, flood_start=t_f0, flood_end=t_f1, recovery_end=t_r1, end=t_end),
        loadavg=open("/proc/loadavg").read().split()[:3],
    )
    res["peak_over_idle_mib"] = ((res["rss_peak_kb"] or 0) - (idle or 0)) / 1024.0
    res["end_over_idle_mib"] = ((res["rss_end_kb"] or 0) - (idle or 0)) / 1024.0
    with open(os.path.join(run_dir, "samples.csv"), "w") as f:
        f.write("t_s,rss_kb,fds,cpu_jiffies,steal_cpu0,steal_cpu1,worker_state\n")
        for r in smp.rows:
            f.write(f"{r[0]:.2f}," + ",".join(str(x) for x in r[1:]) + "\n")
    with open(os.path.join(run_dir, "gauges.csv"), "w") as f:
        f.write("t_s," + ",".join(GAUGES) + "\n")
        for t, g in smp.gauges:
            f.write(f"{t:.1f}," + ",".join(f"{g[k]:.0f}" for k in GAUGES) + "\n")
    res["verdict"] = verdict(res)
    a = res["attacker"]
    lg = res["legit"]
    log(f"  RSS idle {kib_mib(idle)} -> peak {kib_mib(res['rss_peak_kb'])} -> end {kib_mib(res['rss_end_kb'])} MiB "
        f"(+{res['peak_over_idle_mib']:.1f}); fds peak {res['fds_peak']}; ivrd {fmt(res['cpu_flood'], 2)} cores in the flood")
    log(f"  legit calls ok/attempted: baseline {lg['baseline']['ok']}/{lg['baseline']['attempted']}, "
        f"flood {lg['flood']['ok']}/{lg['flood']['attempted']}, recovery {lg['recovery']['ok']}/{lg['recovery']['attempted']}; "
        f"attacker: {attacker_summary(a)}")
    log(f"  verdict: {res['verdict']}")
    return res


def thread_cores(a, b):
    """CPU (cores) of each ivrd thread between two proc samples, busiest first."""
    secs = b["t"] - a["t"]
    out = {}
    for k, v in b["threads"].items():
        if k in a["threads"] and secs > 0:
            out[k.split("#")[0]] = out.get(k.split("#")[0], 0.0) + (v - a["threads"][k]) / bench.CLK_TCK / secs
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def stalled(h):
    """A host stall in a phase: 100 ms or more of steal in one 250 ms slice, or a 1 s gap in
    the sampler."""
    return bool(h) and (h.get("steal_cpu0_worst_ms", 0) >= 100 or h.get("steal_cpu1_worst_ms", 0) >= 100
                        or h.get("max_gap_ms", 0) >= 1000)


def verdict(r):
    out = []
    if r["peak_over_idle_mib"] > BOUND_MIB:
        out.append(f"RSS +{r['peak_over_idle_mib']:.0f} MiB over idle (bound {BOUND_MIB})")
    for ph in ("flood", "recovery"):
        lg = r["legit"][ph]
        if lg.get("failed") or (lg.get("ok") or 0) < (lg.get("planned") or 0):
            h = r.get("host", {}).get(ph)
            note = ""
            if stalled(h):
                note = (f" (host stall in that phase: worst 250 ms steal {h['steal_cpu0_worst_ms']:.0f} / "
                        f"{h['steal_cpu1_worst_ms']:.0f} ms on CPU 0 / 1, sampler gap {h['max_gap_ms']:.0f} ms)")
            out.append(f"legit calls {ph}: {lg.get('ok')} ok of {lg.get('planned')}{note}")
    return "holds" if not out else "; ".join(out)


def kib_mib(k):
    return "n/a" if k is None else f"{k / 1024:.1f}"


def fmt(x, nd=2):
    return bench.fmt(x, nd)


def attacker_summary(a):
    if not a:
        return "no report"
    if "connect_attempts" in a:
        return (f"{a['connect_attempts']} connects ({a.get('connect_rate_achieved', 0):.0f}/s), "
                f"{a.get('connected', 0)} established, {a.get('connect_failed', 0)} failed; closed by ivrd "
                f"{a.get('closed_by_peer', 0)} (<1 s {a.get('closed_within_1s', 0)}, 1-5 s {a.get('closed_1_5s', 0)}, "
                f"5-15 s {a.get('closed_5_15s', 0)}, 15-60 s {a.get('closed_15_60s', 0)}); "
                f"open at most {a.get('open_max', 0)}, at the end {a.get('open_at_end', 0)}"
                + (f"; {a.get('requests_sent', 0)} requests written" if a.get("requests_sent") else ""))
    parts = [f"{a.get('sent', 0)} sent ({a.get('rate_achieved', 0):.0f}/s)"]
    for k, label in (("answered_100", "100"), ("answered_200", "200"), ("answered_403", "403"),
                     ("answered_503", "503"), ("answered_513", "513"), ("answered_4xx_other", "other 4xx"),
                     ("answered_5xx_other", "other 5xx"), ("no_final_answer", "no final answer")):
        if a.get(k):
            parts.append(f"{label}: {a[k]}")
    if a.get("byes_sent"):
        parts.append(f"BYE answered 200: {a.get('bye_200', 0)} of {a['byes_sent']}")
    if a.get("repeated_200"):
        parts.append(f"200 repeats: {a['repeated_200']}")
    return ", ".join(parts)


def metrics_summary(d):
    short = {}
    for k, v in sorted(d.items()):
        if k.startswith(("ivrd_sip_requests_total", "ivrd_sip_responses_total", "ivrd_rtp_packets_sent_total",
                         "ivrd_rtp_late_ticks_total")):
            continue
        short[k.replace("ivrd_sip_", "").replace("_total", "").replace('reason="', "").replace('action="', "")
              .replace('kind="', "").replace('outcome="', "").replace('"', "")] = v
    return ", ".join(f"{k} {v:.0f}" for k, v in short.items()) or "none"


def us_per_drop(r):
    """ivrd's CPU per datagram it dropped unparsed (drop mode), µs."""
    d = (r.get("metrics_flood") or {}).get('ivrd_sip_untrusted_total{action="dropped"}', 0)
    if not d or r.get("cpu_flood") is None:
        return None
    return 1e6 * r["cpu_flood"] * r["secs"] / d


def report_lines(rows):
    L = ["## Floods", "",
         f"A fresh ivrd per flood and mode, `[sip] trusted = [\"{HOST}\"]` (SIPp, the PBX), every other "
         "limit at its default. SIPp places the PBX's calls all along "
         f"({LEGIT_RATE}/s, INVITE, ACK, {LEGIT_HOLD_MS / 1000:g} s of prompt, BYE): baseline "
         f"{rows[0]['baseline_secs']} s, flood {rows[0]['secs']} s, recovery {rows[0]['recovery_secs']} s "
         "(one SIPp per phase). The attacker (`flood`, flood.c) runs on CPU 1 at nice 10 from 127.0.0.2 "
         "and up; `allow` serves it within the per-source budgets (the worst case), `drop` is production. "
         f"RSS sampled every 250 ms. Bound: peak RSS at most {BOUND_MIB} MiB over idle, and every "
         "legitimate call served in the flood and the recovery.", "",
         "| flood | untrusted | RSS idle / peak / end (MiB) | peak − idle (MiB) | RSS slope, 2nd half of flood (MiB/min) | fds idle / peak | legit calls ok / attempted: flood, recovery | INVITE→200 p50 / p99 (ms): baseline, flood, recovery | ivrd CPU (cores): flood, recovery | verdict |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lg = r["legit"]
        rtt = lambda ph: f"{fmt(lg[ph].get('rtt_p50'), 0)} / {fmt(lg[ph].get('rtt_p99'), 0)}"
        L.append(f"| {r['name']} | {r['untrusted']} | {kib_mib(r['rss_idle_kb'])} / {kib_mib(r['rss_peak_kb'])} / "
                 f"{kib_mib(r['rss_end_kb'])} | {r['peak_over_idle_mib']:.1f} | {fmt(r['rss_slope_2nd_half'], 2)} | "
                 f"{r['fds_idle']} / {r['fds_peak']} | {lg['flood']['ok']} / {lg['flood']['attempted']}, "
                 f"{lg['recovery']['ok']} / {lg['recovery']['attempted']} | {rtt('baseline')}; {rtt('flood')}; {rtt('recovery')} | "
                 f"{fmt(r['cpu_flood'], 2)}, {fmt(r['cpu_recovery'], 2)} | {r['verdict']} |")
    L += ["", "What the attackers got, and ivrd's counters over the flood (deltas) and its gauges' peaks:", ""]
    for r in rows:
        g = r.get("gauges_flood") or {}
        L.append(f"- **{r['name']}, {r['untrusted']}** ({r['desc']}): {attacker_summary(r['attacker'])}.")
        L.append(f"  - ivrd, flood: {metrics_summary(r['metrics_flood'])}; peaks: transactions "
                 f"{g.get('ivrd_sip_transactions', 0):.0f} ({g.get('ivrd_sip_transaction_bytes', 0) / 1024:.0f} KiB), "
                 f"unconfirmed calls {g.get('ivrd_sip_unconfirmed_calls', 0):.0f}, calls active "
                 f"{g.get('ivrd_calls_active', 0):.0f}, TCP connections {g.get('ivrd_sip_tcp_connections', 0):.0f}.")
        hf, hr = r.get("host", {}).get("flood") or {}, r.get("host", {}).get("recovery") or {}
        th = ", ".join(f"{k} {v:.2f}" for k, v in list((r.get("threads_flood") or {}).items())[:4])
        L.append(f"  - ivrd threads in the flood (cores): {th}. Host: steal CPU 0 / 1 in the flood "
                 f"{hf.get('steal_cpu0_pct', 0):.1f} / {hf.get('steal_cpu1_pct', 0):.1f} % (worst 250 ms: "
                 f"{hf.get('steal_cpu0_worst_ms', 0):.0f} / {hf.get('steal_cpu1_worst_ms', 0):.0f} ms), in the recovery "
                 f"{hr.get('steal_cpu0_pct', 0):.1f} / {hr.get('steal_cpu1_pct', 0):.1f} % (worst "
                 f"{hr.get('steal_cpu0_worst_ms', 0):.0f} / {hr.get('steal_cpu1_worst_ms', 0):.0f} ms); longest sampler gap "
                 f"{hf.get('max_gap_ms', 0):.0f} / {hr.get('max_gap_ms', 0):.0f} ms; tokio worker waiting for the disk "
                 f"(state D) in {hf.get('worker_disk_wait_samples', 0)} of {hf.get('samples', 0)} samples of the flood.")
        lr = r["legit"]
        L.append(f"  - recovery: {metrics_summary(r['metrics_recovery'])}. Legit SIPp failed/retrans: baseline "
                 f"{lr['baseline'].get('failed')}/{lr['baseline'].get('retrans')}, flood {lr['flood'].get('failed')}/"
                 f"{lr['flood'].get('retrans')}, recovery {lr['recovery'].get('failed')}/{lr['recovery'].get('retrans')}. "
                 f"ivrd log warn/error lines {r['ivrd_log']['warn_lines']}/{r['ivrd_log']['error_lines']}; "
                 f"load1 {r['loadavg'][0]}" + (f"; metrics unanswered at {', '.join(r['metrics_missing'])}"
                                               if r.get("metrics_missing") else "") + ".")
    drops = [(r["name"], us_per_drop(r), r["attacker"].get("rate_achieved")) for r in rows
             if r["untrusted"] == "drop" and us_per_drop(r)]
    if drops:
        L += ["", "Drop mode, ivrd's CPU per datagram dropped unparsed (CPU in the flood ÷ datagrams dropped): "
              + ", ".join(f"{n} {u:.2f} µs ({fmt(rate, 0)}/s offered)" for n, u, rate in drops) + "."]
    L.append("")
    return L


def run_floods(ivrd, binary_dir, out, mode_name, floods=None, modes=("allow", "drop"), secs=None,
               on_result=None):
    m = dict(MODES[mode_name])
    if secs:
        m["secs"] = secs
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass
    # The sampler threads run in this process: off CPU 0, which is ivrd's.
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {1})
    rows = []
    try:
        rows = _run_floods(ivrd, binary_dir, out, m, floods, modes, on_result)
    finally:
        os.sched_setaffinity(0, affinity)
    return rows


def _run_floods(ivrd, binary_dir, out, m, floods, modes, on_result):
    rows = []
    for name in floods or list(FLOODS):
        if name not in FLOODS:
            raise SystemExit(f"unknown flood {name!r}; known: {', '.join(FLOODS)}")
        for um in modes:
            r = run_one(ivrd, binary_dir, out, name, um, m)
            rows.append(r)
            if on_result:
                on_result(r)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ivrd", required=True)
    ap.add_argument("--bin", required=True, help="folder with flood and sink (bench/.build)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--floods", default="", help=f"comma list of: {', '.join(FLOODS)}")
    ap.add_argument("--modes", default="allow,drop")
    ap.add_argument("--secs", type=int, default=0, help="seconds of each flood")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    data = dict(mode="quick" if args.quick else "full", machine_start=bench.machine_facts(), flood=[],
                git=subprocess.run(["git", "-C", bench.ROOT, "describe", "--always", "--dirty"],
                                   capture_output=True, text=True).stdout.strip())

    def save(r):
        data["flood"].append(r)
        data["machine_end"] = bench.machine_facts()
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(data, f, indent=1, default=str)
        mf = data["machine_start"]
        with open(os.path.join(out, "results.md"), "w") as f:
            f.write("\n".join([f"# ivrd floods ({data['mode']} mode)", "",
                               f"- date: {mf['date']}; host {mf['host']}; CPU {mf['cpu_model']}, nproc {mf['nproc']}; "
                               f"kernel {mf['kernel']}", f"- ivrd commit: {data['git']}",
                               f"- load average at start {' '.join(mf['loadavg'])}, now "
                               f"{' '.join(data['machine_end']['loadavg'])}", ""] + report_lines(data["flood"])))
    run_floods(os.path.abspath(args.ivrd), os.path.abspath(args.bin), out, data["mode"],
               floods=args.floods.split(",") if args.floods else None, modes=args.modes.split(","),
               secs=args.secs or None, on_result=save)
    log(f"results: {os.path.join(out, 'results.md')}")


if __name__ == "__main__":
    main()
