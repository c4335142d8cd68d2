#!/usr/bin/env python3
"""ivrd load benchmark: the orchestrator behind bench/run.sh (see bench/README.md).

Loopback only: every socket here binds or sends to 127.0.0.1. ivrd is pinned to CPU 0,
SIPp, the sink and dumpcap to CPU 1. Plain Python 3, no third-party modules.

    bench.py --quick|--full --ivrd target/release/ivrd --bin DIR --out RESULTS_DIR
"""
import argparse
import atexit
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
HOST = "127.0.0.1"
SIP_PORT = 15060      # ivrd SIP (UDP+TCP)
TLS_PORT = 15061      # ivrd SIP over TLS (workloads w2srtp and w1tls)
STUNNEL_PORT = 15062  # the local stunnel client: SIPp connects here over TCP, stunnel to TLS_PORT
SIPP_PORT = 15070     # SIPp SIP
MEDIA_PORT = 16000    # SIPp's media port: where ivrd sends RTP (and the floor's sink port)
ADMIN_PORT = 19060    # ivrd /metrics
RTP_MIN, RTP_MAX = 20000, 31999   # below ip_local_port_range (32768-), room for 6000 calls
SAMPLE_STREAMS = 20   # streams captured for the timing figures, spread over all N (sample_ports)
CLK_TCK = os.sysconf("SC_CLK_TCK")
PACER_NICE = None     # --pacer-nice: [media] pacer_nice (None: ivrd's default, -10)

MODES = {
    # Workload 2: concurrent calls
    "quick": dict(ns=[100, 250, 500], steady=20, capture=10,
                  cps_rates=[200, 400, 800, 1000], cps_secs=20,
                  sig_rates=[1000, 2000], sig_secs=10, echo_ns=[250, 500]),
    "full": dict(ns=[500, 1000, 2000, 4000], steady=60, capture=20,
                 cps_rates=[200, 400, 600, 800, 1000, 1200, 1400, 1600, 2000], cps_secs=30,
                 sig_rates=[1000, 1500, 2000, 2500, 3000, 4000], sig_secs=20, echo_ns=[1000, 2000]),
}


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


# ---------------------------------------------------------------- machine facts

def read_proc_stat():
    """{'cpu': [...], 'cpu0': [...], ...} jiffies: user nice system idle iowait irq softirq steal."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu"):
                p = line.split()
                out[p[0]] = [int(x) for x in p[1:9]]
    return out


def stat_delta(a, b, cpu="cpu"):
    d = [y - x for x, y in zip(a[cpu], b[cpu])]
    total = sum(d) or 1
    idle = d[3] + d[4]
    return dict(busy_pct=100.0 * (total - idle) / total, steal_pct=100.0 * d[7] / total,
                total_jiffies=total)


def machine_facts():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        host=socket.gethostname(),
        cpu_model=model,
        nproc=os.cpu_count(),
        kernel=platform.release(),
        loadavg=open("/proc/loadavg").read().split()[:3],
    )


# ---------------------------------------------------------------- process sampling

def proc_sample(pid):
    """CPU jiffies (utime+stime) of the process and of each thread, VmRSS in kB."""
    def cpu_of(path):
        with open(path) as f:
            s = f.read()
        comm = s[s.index("(") + 1:s.rindex(")")]
        p = s.rsplit(")", 1)[1].split()
        return comm, int(p[11]) + int(p[12])
    _, total = cpu_of(f"/proc/{pid}/stat")
    threads = {}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                comm, j = cpu_of(f"/proc/{pid}/task/{tid}/stat")
                threads[f"{comm}#{tid}"] = j
            except OSError:
                pass
    except OSError:
        pass
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return dict(t=time.monotonic(), cpu=total, threads=threads, rss_kb=rss)


def metrics():
    # On a starved host (CPU 0 shared with other jobs) /metrics may take longer than 5 s to
    # answer: try three times (5, 10, 20 s) before giving up, rather than end the whole run.
    url = f"http://{HOST}:{ADMIN_PORT}/metrics"
    for attempt, timeout in enumerate((5, 10, 20)):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                text = r.read().decode()
            break
        except OSError as e:
            timed_out = isinstance(e, TimeoutError) or isinstance(getattr(e, "reason", None), TimeoutError)
            if attempt == 2 or not timed_out:
                raise
            log(f"  /metrics did not answer in {timeout} s; again")
    return parse_metrics(text)


def parse_metrics(text):
    """Prometheus text as {name{labels}: value}; comments and unparsable values skipped."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, val = line.rpartition(" ")
        try:
            out[name] = float(val)
        except ValueError:
            pass
    return out


def snapshot(pid, with_metrics=True, extra_pid=None):
    s = dict(proc=proc_sample(pid), stat=read_proc_stat(),
             loadavg=open("/proc/loadavg").read().split()[:3])
    if with_metrics:
        s["metrics"] = metrics()
    if extra_pid:
        try:
            s["extra"] = proc_sample(extra_pid)
        except OSError:
            s["extra"] = None
    return s


def window(a, b):
    """Figures for the window between two snapshots."""
    secs = b["proc"]["t"] - a["proc"]["t"]
    cores = (b["proc"]["cpu"] - a["proc"]["cpu"]) / CLK_TCK / secs
    cpu0 = stat_delta(a["stat"], b["stat"], "cpu0")
    allc = stat_delta(a["stat"], b["stat"], "cpu")
    threads = {}
    for k, v in b["proc"]["threads"].items():
        if k in a["proc"]["threads"]:
            threads[k] = (v - a["proc"]["threads"][k]) / CLK_TCK / secs
    w = dict(secs=secs, cores=cores, threads=threads,
             cpu0_busy_pct=cpu0["busy_pct"],
             cpu0_other_pct=max(0.0, cpu0["busy_pct"] - 100 * cores),
             steal_pct=allc["steal_pct"], loadavg=b["loadavg"])
    if "metrics" in a:
        ma, mb = a["metrics"], b["metrics"]
        d = lambda k: mb.get(k, 0) - ma.get(k, 0)
        w.update(pkts=d("ivrd_rtp_packets_sent_total"), send_errors=d("ivrd_rtp_send_errors_total"),
                 pkts_received=d("ivrd_rtp_packets_received_total"),
                 foreign=d("ivrd_rtp_foreign_packets_total"),
                 ticks=d("ivrd_rtp_ticks_total"), late_ticks=d("ivrd_rtp_late_ticks_total"),
                 skipped_ticks=d("ivrd_rtp_skipped_ticks_total"),
                 active_start=ma.get("ivrd_calls_active", 0), active_end=mb.get("ivrd_calls_active", 0),
                 jitter_own=own_jitter(ma, mb))
    if a.get("extra") and b.get("extra"):
        w["peer_cores"] = (b["extra"]["cpu"] - a["extra"]["cpu"]) / CLK_TCK / secs
    return w


def own_jitter(ma, mb):
    """ivrd's own view of send timing over the window, from its histogram
    ivrd_rtp_send_jitter_seconds (every packet of every stream): for p50/p99/p99.9 the upper
    bound (ms) of the bucket the quantile falls in, and the share of intervals within 2 ms."""
    pre = 'ivrd_rtp_send_jitter_seconds_bucket{le="'
    buckets = sorted((float(k[len(pre):-2]) if k[len(pre):-2] != "+Inf" else float("inf"),
                      mb[k] - ma.get(k, 0)) for k in mb if k.startswith(pre))
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]

    def q(x):
        for le, cum in buckets:
            if cum >= x * total:
                return le * 1000.0
        return float("inf")
    within_2ms = next((cum for le, cum in buckets if abs(le - 0.002) < 1e-9), None)
    return dict(intervals=total, p50_le=q(0.5), p99_le=q(0.99), p999_le=q(0.999),
                within_2ms_pct=None if within_2ms is None else 100.0 * within_2ms / total)


# ---------------------------------------------------------------- capture and timing

def sample_ports(ports):
    """The RTP ports of the sampled streams: spread evenly over `ports`, the streams' ports in
    the order their calls were set up, not the first ones. ivrd's pacer and the floor both
    send a tick's streams in the order they were added, and a stream late in a tick's burst
    sees more timing error than one at its start, so both must be sampled across the whole
    burst. ivrd picks its ports at random: its list comes from SIPp (`rtp_ports`); the
    floor's are sequential (`floor_ports`)."""
    k = min(SAMPLE_STREAMS, len(ports))
    return [ports[i * len(ports) // k] for i in range(k)]


def floor_ports(n):
    return [RTP_MIN + 2 * i for i in range(n)]


def rtp_ports(run_dir):
    """The RTP port of each call's answer, in the order the calls were set up: SIPp logs the
    m= port of every 200 (scenarios/uac_hold.xml, `-trace_logs`) to rtp_ports.log."""
    import re
    path = os.path.join(run_dir, "rtp_ports.log")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [int(m.group(1)) for m in re.finditer(r"^rtp (\d+)", f.read(), re.M)]


def capture(secs, out, ports, dst_port=MEDIA_PORT):
    """dumpcap on lo during `secs`, only the sampled streams' RTP, 64-byte snaplen, on CPU 1."""
    src = " or ".join(f"udp src port {p}" for p in sample_ports(ports))
    filt = f"udp dst port {dst_port} and ({src})"
    cmd = ["taskset", "-c", "1", "dumpcap", "-q", "-i", "lo", "-f", filt, "-s", "64",
           "-a", f"duration:{secs}", "-w", out]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=secs + 30)


def timing(pcap, dst_port=MEDIA_PORT):
    """|inter-packet interval - 20 ms| per stream (src port + SSRC), percentiles in ms."""
    cmd = ["tshark", "-r", pcap, "-d", f"udp.port=={dst_port},rtp", "-T", "fields",
           "-e", "udp.srcport", "-e", "rtp.ssrc", "-e", "frame.time_epoch", "-e", "rtp.seq"]
    r = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    streams = {}
    for line in r.stdout.splitlines():
        p = line.split("\t")
        if len(p) < 4 or not p[2]:
            continue
        streams.setdefault((p[0], p[1]), []).append((float(p[2]), int(p[3] or 0)))
    devs, gaps = [], 0
    for pk in streams.values():
        pk.sort()
        for (t0, s0), (t1, s1) in zip(pk, pk[1:]):
            devs.append(abs((t1 - t0) * 1000.0 - 20.0))
            if (s1 - s0) % 65536 != 1:
                gaps += 1
    devs.sort()

    def pct(q):
        if not devs:
            return None
        return devs[min(len(devs) - 1, int(q / 100.0 * len(devs)))]
    return dict(streams=len(streams), intervals=len(devs), seq_gaps=gaps,
                p50=pct(50), p99=pct(99), p999=pct(99.9), max=devs[-1] if devs else None)


# ---------------------------------------------------------------- ivrd and SIPp

def write_config(run_dir, text):
    """Writes ivrd.toml into the step's folder (kept with the results) and returns its path."""
    path = os.path.join(run_dir, "ivrd.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


TCP_WRITE_QUEUE_KIB = None  # --tcp-write-queue-kib: [sip] tcp_write_queue_kib for w1tls (None: ivrd's 256)


def ivrd_config(run_dir, rtp_timeout_secs=0, strict_rtp=None, sip_extra="", tls=None, srtp=None):
    """The demo-flow config of workloads 1 and 2 (and the flood runs, with `sip_extra`).
    SIPp at 127.0.0.1 is the trusted PBX: an untrusted source may place only 10 new calls a
    second and hold 16 unanswered INVITEs (`[sip] source_*`), which would throttle every
    step. `rtp_timeout_secs` 0: SIPp sends no RTP (the echo variant of workload 2 does, and
    keeps the default 30 s: None); `strict_rtp` None leaves the default (true). `tls`: (cert,
    key) PEM paths for a `[sip] tls` listener on TLS_PORT; `srtp`: `[media] srtp` ("off",
    "optional", "required"; None = the default)."""
    if rtp_timeout_secs is None:
        timeout = "# rtp_timeout_secs: the default (30 s); the sink echoes every packet back"
    elif rtp_timeout_secs == 0:
        timeout = "rtp_timeout_secs = 0            # SIPp sends no RTP: never hang up silent callers"
    else:
        timeout = f"rtp_timeout_secs = {rtp_timeout_secs}"
    strict = "" if strict_rtp is None else f"strict_rtp = {'true' if strict_rtp else 'false'}\n"
    tls_listen = f'tls = ["{HOST}:{TLS_PORT}"]\n' if tls else ""
    if tls and TCP_WRITE_QUEUE_KIB:
        tls_listen += f"tcp_write_queue_kib = {TCP_WRITE_QUEUE_KIB}\n"
    tls_section = f'[tls]\ncert = "{tls[0]}"\nkey = "{tls[1]}"\n\n' if tls else ""
    srtp_line = f'srtp = "{srtp}"\n' if srtp else ""
    if PACER_NICE is not None:
        srtp_line += f"pacer_nice = {PACER_NICE}\n"
    cfg = f"""# ivrd bench config (written by bench/bench.py)
[sip]
udp = ["{HOST}:{SIP_PORT}"]
tcp = ["{HOST}:{SIP_PORT}"]
{tls_listen}trusted = ["{HOST}"]             # SIPp, the PBX: no per-source limits
{sip_extra}
{tls_section}[media]
rtp_ip = "{HOST}"
rtp_port_min = {RTP_MIN}
rtp_port_max = {RTP_MAX}
{timeout}
{strict}max_call_secs = 0
prompts_dir = "{ROOT}/prompts"
inband_dtmf = false
pacing_threads = 1
{srtp_line}
[demo]
enabled = true
rounds = 1
first_digit_timeout_ms = 3600000  # welcome, enter-digits, then silence while waiting
inter_digit_timeout_ms = 3600000

[shutdown]
drain_secs = 1

[admin]
listen = "{HOST}:{ADMIN_PORT}"

[dialplans]
dir = "{ROOT}/dialplans"

[store]
path = "{run_dir}/ivrd.db"

[log]
level = "warn"
"""
    return write_config(run_dir, cfg)


class Ivrd:
    """ivrd on CPU 0, up once it serves /metrics. `cfg`: a config file (default: the demo-flow
    config of ivrd_config). The database is removed at stop unless `keep_db` (workload 3 reads
    its audit rows)."""

    def __init__(self, binary, run_dir, cfg=None, keep_db=False):
        os.makedirs(run_dir, exist_ok=True)
        self.run_dir = run_dir
        self.keep_db = keep_db
        cfg = cfg or ivrd_config(run_dir)
        env = dict(os.environ)
        env.pop("RUST_LOG", None)
        env["NO_COLOR"] = "1"
        self.logf = open(os.path.join(run_dir, "ivrd.log"), "w")
        self.p = subprocess.Popen(["taskset", "-c", "0", binary, "run", "--config", cfg],
                                  stdout=self.logf, stderr=subprocess.STDOUT, env=env, cwd=run_dir)
        deadline = time.time() + 60
        while True:
            if self.p.poll() is not None:
                raise SystemExit(f"ivrd exited at start-up (code {self.p.returncode}); see {run_dir}/ivrd.log")
            try:
                metrics()
                time.sleep(0.3)
                if self.p.poll() is None:   # /metrics is ours, not another daemon's
                    break
            except OSError:
                if time.time() > deadline:
                    self.stop()
                    raise SystemExit(f"ivrd did not serve /metrics within 60 s; see {run_dir}/ivrd.log")
                time.sleep(0.2)
        self.pid = self.p.pid
        # A step that fails half-way (an exception in its analysis) must not leave this ivrd
        # holding the ports for the next run.
        atexit.register(self.kill_if_running)

    def kill_if_running(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=90)
            except subprocess.TimeoutExpired:
                log("ivrd did not stop within 90 s after SIGTERM: killing it")
                self.p.kill()
                self.p.wait()
        self.logf.close()
        if not self.keep_db:
            for fn in os.listdir(self.run_dir):
                if fn.startswith("ivrd.db"):
                    os.remove(os.path.join(self.run_dir, fn))
        with open(os.path.join(self.run_dir, "ivrd.log")) as f:
            lines = f.read().splitlines()
        return dict(log_lines=len(lines), warn_lines=sum("WARN" in l[:40] for l in lines),
                    error_lines=sum("ERROR" in l[:40] for l in lines))


def sipp(run_dir, n_total, limit, rate, hold_ms, rtt=False, port=SIPP_PORT, media_port=MEDIA_PORT,
         sdp_port=None, ctrl_port=None, trace_logs=False, scenario="uac_hold.xml",
         remote_port=SIP_PORT, transport=None):
    """SIPp with `scenario` (scenarios/uac_hold.xml), pinned to CPU 1. `sdp_port`: the port its
    SDP offers (default: its own media port; workload 2's echo variant names the sink's).
    `trace_logs`: write the RTP port of every answer (the scenario's `<log>`) to
    rtp_ports.log. Two SIPps at once (the flood runs) need their own `port`, `media_port` and
    control port. `transport` "t1": one TCP connection for all calls (to the stunnel client at
    `remote_port`, which carries it to ivrd over TLS); default UDP."""
    cmd = ["taskset", "-c", "1", "sipp", f"{HOST}:{remote_port}",
           "-sf", os.path.join(BENCH, "scenarios", scenario),
           "-s", "100", "-i", HOST, "-p", str(port), "-mi", HOST, "-mp", str(media_port),
           "-key", "sdp_port", str(sdp_port or media_port),
           "-l", str(limit), "-r", str(rate), "-m", str(n_total), "-d", str(hold_ms),
           # SIPp's default socket buffer is 64 KiB: at thousands of calls a second it drops
           # ivrd's answers itself, and its retransmissions would be charged to ivrd.
           "-buff_size", str(4 << 20),
           "-nostdin", "-trace_stat", "-stf", "stat.csv", "-fd", "1",
           "-trace_err", "-error_file", "errors.log", "-trace_screen", "-screen_file", "screen.log"]
    if ctrl_port:
        cmd += ["-cp", str(ctrl_port)]
    if rtt:
        cmd += ["-trace_rtt", "-rtt_freq", "1"]
    if transport:
        cmd += ["-t", transport]
    if trace_logs:
        cmd += ["-trace_logs", "-log_file", "rtp_ports.log"]
    out = open(os.path.join(run_dir, "sipp.out"), "w")
    with open(os.path.join(run_dir, "sipp.cmd"), "w") as f:
        f.write(" ".join(cmd) + "\n")
    return subprocess.Popen(cmd, cwd=run_dir, stdout=out, stderr=subprocess.STDOUT)


def udp_drops(ports):
    """Datagrams the kernel dropped at each of these local UDP ports (receive buffer full),
    from /proc/net/udp; a port with no socket is absent."""
    out = {}
    with open("/proc/net/udp") as f:
        for line in f.readlines()[1:]:
            p = line.split()
            port = int(p[1].split(":")[1], 16)
            if port in ports:
                out[port] = out.get(port, 0) + int(p[12])
    return out


def wait_sipp(p, timeout, drops=None):
    """Waits for SIPp. With `drops` (a dict), records every 0.5 s: the largest drop count seen at
    ivrd's and SIPp's SIP sockets while SIPp runs (SIPp's socket is gone once it exits), and
    CPU 0's steal, as the worst 0.5 s slice (`steal_max_ms`). A host that takes the vCPU away
    for a quarter of a second shows up there, not in the window's average steal."""
    end = time.monotonic() + timeout
    try:
        prev = read_proc_stat()
        while drops is not None and p.poll() is None and time.monotonic() < end:
            for port, n in udp_drops({SIP_PORT, SIPP_PORT}).items():
                drops[port] = max(drops.get(port, 0), n)
            time.sleep(0.5)
            cur = read_proc_stat()
            steal_ms = (cur["cpu0"][7] - prev["cpu0"][7]) * 1000.0 / CLK_TCK
            drops["steal_max_ms"] = max(drops.get("steal_max_ms", 0.0), steal_ms)
            prev = cur
        return p.wait(timeout=max(0.0, end - time.monotonic()))
    except subprocess.TimeoutExpired:
        log(f"SIPp still running after {timeout:.0f} s: stopping it")
        p.send_signal(signal.SIGUSR1) if False else p.terminate()
        try:
            return p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            return p.wait()


def sipp_stats(run_dir):
    path = os.path.join(run_dir, "stat.csv")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        rows = [l.rstrip("\n").split(";") for l in f if l.strip()]
    if len(rows) < 2:
        return {}
    head, last = rows[0], rows[-1]
    d = dict(zip(head, last))
    g = lambda k: int(float(d.get(k, "0") or 0))
    return dict(successful=g("SuccessfulCall(C)"), failed=g("FailedCall(C)"),
                retrans=g("Retransmissions(C)"), created=g("TotalCallCreated"),
                outofcall=g("OutOfCallMsgs(C)"), dead=g("DeadCallMsgs(C)"))


def pcapng_udp(path):
    """(timestamp s, src port, dst port, payload) of every IPv4/UDP packet in a pcapng file
    written by dumpcap on `lo` (Ethernet link type). A few dozen lines instead of tshark:
    tshark's SIP dissector took over 5 minutes for the 180,000 messages of one 1,500 calls/s
    step."""
    import struct
    out = []
    with open(path, "rb") as f:
        data = f.read()
    pos, endian, resol = 0, "<", {}
    while pos + 12 <= len(data):
        btype = struct.unpack_from(endian + "I", data, pos)[0]
        if btype == 0x0A0D0D0A:  # section header: byte order from its magic
            endian = "<" if data[pos + 8:pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            resol = {}
        blen = struct.unpack_from(endian + "I", data, pos + 4)[0]
        if blen < 12:
            break
        body = data[pos + 8:pos + blen - 4]
        if btype == 1:  # interface description: link type, then options (if_tsresol = 9)
            idx = len(resol)
            r = 1e-6
            opos = 8
            while opos + 4 <= len(body):
                code, olen = struct.unpack_from(endian + "HH", body, opos)
                if code == 0:
                    break
                if code == 9 and olen >= 1:
                    v = body[opos + 4]
                    r = 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0 ** -v
                opos += 4 + ((olen + 3) & ~3)
            resol[idx] = (struct.unpack_from(endian + "H", body, 0)[0], r)
        elif btype == 6:  # enhanced packet
            iface, hi, lo, caplen = struct.unpack_from(endian + "IIII", body, 0)
            link, r = resol.get(iface, (1, 1e-6))
            pkt = body[20:20 + caplen]
            off = 14 if link == 1 else 0
            if len(pkt) >= off + 28 and pkt[off] >> 4 == 4 and pkt[off + 9] == 17:
                ihl = (pkt[off] & 0x0F) * 4
                u = off + ihl
                sport, dport = struct.unpack_from(">HH", pkt, u)
                out.append((((hi << 32) | lo) * r, sport, dport, pkt[u + 8:]))
        pos += blen
    return out


def sip_setup_times(pcap):
    """INVITE -> 200 (INVITE) per Call-ID from a capture of ivrd's SIP port, in ms (µs resolution),
    and the retransmissions seen on the wire (repeated INVITEs, repeated 200s to an INVITE)."""
    import re
    callid_re = re.compile(rb"^(?:call-id|i)[ \t]*:[ \t]*(\S+)", re.I | re.M)
    cseq_re = re.compile(rb"^cseq[ \t]*:[ \t]*\d+[ \t]+(\w+)", re.I | re.M)
    inv, ok, n_inv, n_ok = {}, {}, {}, {}
    for t, sport, dport, payload in pcapng_udp(pcap):
        head = payload.split(b"\r\n\r\n", 1)[0]
        first = head.split(b"\r\n", 1)[0]
        m = callid_re.search(head)
        if not m:
            continue
        cid = m.group(1)
        if first.startswith(b"INVITE ") and dport == SIP_PORT:
            inv.setdefault(cid, t)
            n_inv[cid] = n_inv.get(cid, 0) + 1
        elif first.startswith(b"SIP/2.0 200") and sport == SIP_PORT:
            c = cseq_re.search(head)
            if c and c.group(1) == b"INVITE":
                ok.setdefault(cid, t)
                n_ok[cid] = n_ok.get(cid, 0) + 1
    vals = sorted((ok[c] - inv[c]) * 1000.0 for c in ok if c in inv)
    res = dict(wire_invites=len(inv), wire_answered=len(vals),
               wire_invite_retrans=sum(v - 1 for v in n_inv.values()),
               wire_200_retrans=sum(v - 1 for v in n_ok.values()))
    if vals:
        pct = lambda q: vals[min(len(vals) - 1, int(q / 100.0 * len(vals)))]
        res.update(setup_p50=pct(50), setup_p99=pct(99), setup_max=vals[-1])
    return res


def sipp_rtt(run_dir):
    vals = []
    for fn in os.listdir(run_dir):
        if fn.endswith("_rtt.csv"):
            with open(os.path.join(run_dir, fn)) as f:
                for line in f:
                    p = line.strip().split(";")
                    try:
                        vals.append(float(p[1]))
                    except (ValueError, IndexError):
                        pass
    vals.sort()
    if not vals:
        return {}
    pct = lambda q: vals[min(len(vals) - 1, int(q / 100.0 * len(vals)))]
    return dict(rtt_n=len(vals), rtt_p50=pct(50), rtt_p99=pct(99), rtt_max=vals[-1])


# ---------------------------------------------------------------- TLS: certificates and stunnel

class Pki:
    """A throw-away CA and a leaf certificate for 127.0.0.1 (IP SAN), made with openssl in a
    temporary folder outside the repository and removed at exit: never committed. ivrd serves
    the leaf on its `[sip] tls` listener; stunnel checks it against the CA."""

    def __init__(self):
        import tempfile
        self.dir = tempfile.mkdtemp(prefix="ivrd-bench-pki-")
        atexit.register(shutil.rmtree, self.dir, True)
        d = lambda f: os.path.join(self.dir, f)
        self.ca, self.cert, self.key = d("ca.pem"), d("cert.pem"), d("key.pem")
        with open(d("leaf.ext"), "w") as f:
            f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                    "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n")
        for cmd in (
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", d("ca.key"), "-out", self.ca, "-days", "2", "-subj", "/CN=ivrd bench CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            ["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", self.key, "-out", d("leaf.csr"), "-subj", "/CN=127.0.0.1"],
            ["openssl", "x509", "-req", "-in", d("leaf.csr"), "-CA", self.ca, "-CAkey", d("ca.key"),
             "-CAcreateserial", "-out", self.cert, "-days", "2", "-extfile", d("leaf.ext")],
        ):
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"openssl failed ({' '.join(cmd[:3])}): {r.stderr.strip()}")


def tcp_listening(port):
    """Whether something listens on 127.0.0.1:port (or 0.0.0.0), from /proc/net/tcp."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            p = line.split()
            if p[3] == "0A" and int(p[1].split(":")[1], 16) == port:
                return True
    return False


class Stunnel:
    """A local stunnel client on CPU 1: accepts SIPp's TCP on STUNNEL_PORT and connects to
    ivrd's TLS listener, checking its certificate (chain to the bench CA, IP 127.0.0.1).
    Started per step and stopped with it; an exit before the stop ends the run, loudly."""

    def __init__(self, run_dir, pki):
        if not shutil.which("stunnel"):
            raise SystemExit("stunnel not found: apt-get install stunnel4 (workloads w2srtp and w1tls)")
        if tcp_listening(STUNNEL_PORT):
            raise SystemExit(f"127.0.0.1:{STUNNEL_PORT} is taken (a stunnel left over?)")
        self.run_dir = run_dir
        conf = os.path.join(run_dir, "stunnel.conf")
        with open(conf, "w") as f:
            f.write(f"""; written by bench/bench.py: SIPp (TCP) -> stunnel -> ivrd (TLS)
foreground = yes
pid =
syslog = no
debug = notice
[sip]
client = yes
accept = {HOST}:{STUNNEL_PORT}
connect = {HOST}:{TLS_PORT}
CAfile = {pki.ca}
verifyChain = yes
checkIP = {HOST}
; no SNI: an IP address is not a host name (RFC 6066 3); rustls warns about it and ignores it
sni =
sslVersionMin = TLSv1.2
; latency: SIP messages are small
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
""")
        self.logf = open(os.path.join(run_dir, "stunnel.log"), "w")
        self.p = subprocess.Popen(["taskset", "-c", "1", "stunnel", conf], stdout=self.logf,
                                  stderr=subprocess.STDOUT)
        atexit.register(self.kill_if_running)
        deadline = time.time() + 10
        while not tcp_listening(STUNNEL_PORT):
            if self.p.poll() is not None:
                raise SystemExit(f"stunnel exited at start-up (code {self.p.returncode}); see {run_dir}/stunnel.log")
            if time.time() > deadline:
                self.stop()
                raise SystemExit(f"stunnel did not listen on {STUNNEL_PORT} within 10 s; see {run_dir}/stunnel.log")
            time.sleep(0.1)
        self.pid = self.p.pid

    def kill_if_running(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()

    def stop(self):
        """Stops stunnel; fails loudly if it had exited on its own. Returns what its log says
        about the certificate check."""
        if self.p.poll() is not None:
            raise SystemExit(f"stunnel exited during the step (code {self.p.returncode}); see {self.run_dir}/stunnel.log")
        self.p.terminate()
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.logf.close()
        with open(os.path.join(self.run_dir, "stunnel.log")) as f:
            text = f.read()
        return dict(cert_accepted=text.count("Certificate accepted"),
                    cert_rejected=text.count("Certificate check failed") + text.count("Rejected by CERT"),
                    connections=text.count("s_connect: connected"),
                    errors=sum(1 for l in text.splitlines() if "LOG3" in l or "LOG2" in l))


def call_modes():
    """{(transport, srtp suite or 'plain'): calls} from ivrd's /status."""
    with urllib.request.urlopen(f"http://{HOST}:{ADMIN_PORT}/status", timeout=20) as r:
        doc = json.loads(r.read().decode())
    out = {}
    for c in doc.get("active_calls", []):
        k = f"{c.get('transport', '?')}/{c.get('srtp') or 'plain'}"
        out[k] = out.get(k, 0) + 1
    return out


# ---------------------------------------------------------------- workloads

def calls_rate(n):
    """Call setup rate for the ramp of workload 2 (about 10 s of ramp, 25..100 cps)."""
    return max(25, min(100, n // 10))


ECHO_PORT = 16100    # workload 2's echo variant: the sink's port, named in SIPp's SDP


def workload2_ivrd(args, mode, n, out, strict=None, tag=None):
    """Workload 2 at N calls. `strict` None: the plain workload (SIPp sends no RTP). True or
    False: the echo variant (`w2echo`) with `[media] strict_rtp` set so: SIPp's SDP names the
    sink, which sends every packet back to the ivrd port it came from, so ivrd receives 50
    packets a second per call as it does from real callers, from the address the SDP named."""
    echo = strict is not None
    name = tag or (f"w2echo-{'strict' if strict else 'plain'}-{n}" if echo else f"w2-ivrd-{n}")
    run_dir = os.path.join(out, "raw", name)
    os.makedirs(run_dir, exist_ok=True)
    # With the echo, every call up adds 50 received packets a second to the one tokio worker
    # that also runs the SIP core: set up at half the rate, so no INVITE of the ramp waits past
    # overload control's 250 ms.
    rate = max(25, calls_rate(n) // 2) if echo else calls_rate(n)
    ramp = n / rate
    settle = 3
    hold_s = ramp * 1.5 + 5 + settle + mode["steady"] + mode["capture"] + 5
    log(f"{'W2echo strict_rtp=' + str(strict).lower() if echo else 'W2 ivrd'} N={n}: {rate} cps ramp "
        f"(~{ramp:.0f} s), each call listens {hold_s:.0f} s")
    cfg = ivrd_config(run_dir, rtp_timeout_secs=None, strict_rtp=strict) if echo else None
    iv = Ivrd(args.ivrd, run_dir, cfg=cfg)
    idle = proc_sample(iv.pid)
    sink = None
    if echo:
        sink = subprocess.Popen(["taskset", "-c", "1", os.path.join(args.bin, "sink"), str(ECHO_PORT),
                                 str(hold_s + 30), "echo"],
                                stdout=open(os.path.join(run_dir, "sink.out"), "w"), stderr=subprocess.STDOUT)
        time.sleep(0.3)
    sp = sipp(run_dir, n, n, rate, int(hold_s * 1000), sdp_port=ECHO_PORT if echo else None,
              trace_logs=True)
    res = dict(n=n, rate=rate, hold_s=hold_s, strict_rtp=strict)
    t0 = time.time()
    reached = 0
    while time.time() - t0 < ramp * 1.5 + 5:
        reached = int(metrics().get("ivrd_calls_active", 0))
        if reached >= n or sp.poll() is not None:
            break
        time.sleep(0.5)
    res["ramp_secs"] = time.time() - t0
    res["reached"] = reached
    if reached < n:
        log(f"  only {reached}/{n} calls up after {res['ramp_secs']:.0f} s; measuring anyway")
    time.sleep(settle)
    a = snapshot(iv.pid, extra_pid=sp.pid)
    time.sleep(mode["steady"])
    b = snapshot(iv.pid, extra_pid=sp.pid)
    w = window(a, b)
    res["window"] = w
    res["rss_per_call_kb"] = (b["proc"]["rss_kb"] - idle["rss_kb"]) / max(1, w["active_start"])
    res["rss_idle_kb"] = idle["rss_kb"]
    res["rss_kb"] = b["proc"]["rss_kb"]
    res["expected_pkts"] = w["active_start"] * 50 * w["secs"]
    ports = rtp_ports(run_dir)
    res["rtp_ports_logged"] = len(ports)
    if len(ports) < min(n, reached):
        log(f"  SIPp logged {len(ports)} RTP ports for {reached} calls up; sampling from those")
    pcap = os.path.join(run_dir, "rtp.pcapng")
    dst = ECHO_PORT if echo else MEDIA_PORT
    res["sampled_ports"] = sample_ports(ports)
    capture(mode["capture"], pcap, ports, dst_port=dst)
    res["active_after_capture"] = int(metrics().get("ivrd_calls_active", 0))
    res["timing"] = timing(pcap, dst_port=dst)
    rc = wait_sipp(sp, hold_s + 60)
    res["sipp_rc"] = rc
    res["sipp"] = sipp_stats(run_dir)
    m = metrics()
    res["ivrd_retrans"] = m.get("ivrd_sip_retransmissions_total", 0)
    res["foreign_total"] = m.get("ivrd_rtp_foreign_packets_total", 0)
    res["received_total"] = m.get("ivrd_rtp_packets_received_total", 0)
    res["ivrd_log"] = iv.stop()
    if sink:
        sink.terminate()
        sink.wait(timeout=10)
        with open(os.path.join(run_dir, "sink.out")) as f:
            for line in f:
                k, _, v = line.partition(" ")
                if v.strip().isdigit():
                    res[k] = int(v)
    os.remove(pcap) if not args.keep_pcaps else None
    extra = ""
    if echo:
        extra = (f", received {w['pkts_received']:.0f} ({100 * w['pkts_received'] / max(1, w['pkts']):.1f} % of sent), "
                 f"{1e6 * w['cores'] * w['secs'] / max(1, w['pkts'] + w['pkts_received']):.2f} µs CPU per packet, "
                 f"foreign {w['foreign']:.0f}")
    log(f"  ivrd {w['cores']:.3f} cores, {w['pkts']:.0f}/{res['expected_pkts']:.0f} pkts{extra}, "
        f"late {w['late_ticks']:.0f}/{w['ticks']:.0f}, p99 {res['timing']['p99']} ms, "
        f"SIPp ok={res['sipp'].get('successful')} failed={res['sipp'].get('failed')}")
    return res


def workload2_tls(args, mode, n, out, srtp, rep, pki):
    """Workload 2 over TLS signalling: SIPp over TCP to the stunnel client, stunnel to ivrd's
    TLS listener, RTP direct. `srtp` True: uac_hold_srtp.xml (RTP/SAVP with an SDES key) and
    ivrd with [media] srtp = "required" (a call that fell back to plain RTP fails); False:
    uac_hold.xml (RTP/AVP) and srtp = "off", the same path otherwise. No timing capture: the
    figures are CPU per packet, packets sent and ticks."""
    tag = "srtp" if srtp else "plain"
    run_dir = os.path.join(out, "raw", f"w2tls-{n}-{tag}-{rep}")
    os.makedirs(run_dir, exist_ok=True)
    rate = calls_rate(n)
    ramp = n / rate
    settle = 3
    hold_s = ramp * 1.3 + 5 + settle + mode["steady"] + 3
    log(f"W2 over TLS N={n} {tag} (rep {rep}): {rate} cps ramp (~{ramp:.0f} s), each call listens {hold_s:.0f} s")
    cfg = ivrd_config(run_dir, tls=(pki.cert, pki.key), srtp="required" if srtp else "off")
    iv = Ivrd(args.ivrd, run_dir, cfg=cfg)
    st = Stunnel(run_dir, pki)
    idle = proc_sample(iv.pid)
    sp = sipp(run_dir, n, n, rate, int(hold_s * 1000), scenario="uac_hold_srtp.xml" if srtp else "uac_hold.xml",
              remote_port=STUNNEL_PORT, transport="t1")
    res = dict(n=n, srtp=srtp, mode=tag, rep=rep, rate=rate, hold_s=hold_s)
    t0 = time.time()
    reached = 0
    while time.time() - t0 < ramp * 1.3 + 5:
        reached = int(metrics().get("ivrd_calls_active", 0))
        if reached >= n or sp.poll() is not None:
            break
        time.sleep(0.5)
    res["ramp_secs"] = time.time() - t0
    res["reached"] = reached
    if reached < n:
        log(f"  only {reached}/{n} calls up after {res['ramp_secs']:.0f} s; measuring anyway")
    time.sleep(settle)
    a = snapshot(iv.pid, extra_pid=st.pid)
    time.sleep(mode["steady"])
    b = snapshot(iv.pid, extra_pid=st.pid)
    w = window(a, b)
    d = lambda k: b["metrics"].get(k, 0) - a["metrics"].get(k, 0)
    res["window"] = w
    res["auth_failures"] = b["metrics"].get("ivrd_srtp_auth_failures_total", 0)
    res["replays"] = b["metrics"].get("ivrd_srtp_replays_total", 0)
    res["rss_per_call_kb"] = (b["proc"]["rss_kb"] - idle["rss_kb"]) / max(1, w["active_start"])
    res["rss_idle_kb"] = idle["rss_kb"]
    res["rss_kb"] = b["proc"]["rss_kb"]
    res["rss_window_kb"] = b["proc"]["rss_kb"] - a["proc"]["rss_kb"]
    res["expected_pkts"] = w["active_start"] * 50 * w["secs"]
    res["us_per_pkt"] = w["cores"] / (w["pkts"] / w["secs"]) * 1e6 if w["pkts"] else None
    try:
        res["call_modes"] = call_modes()
    except OSError as e:
        res["call_modes"] = {"error": str(e)}
    rc = wait_sipp(sp, hold_s + 90)
    res["sipp_rc"] = rc
    res["sipp"] = sipp_stats(run_dir)
    m = metrics()
    res["ivrd_retrans"] = m.get("ivrd_sip_retransmissions_total", 0)
    res["tls_handshake_failures"] = m.get("ivrd_sip_tls_handshake_failures_total", 0)
    res["auth_failures_end"] = m.get("ivrd_srtp_auth_failures_total", 0)
    res["ivrd_log"] = iv.stop()
    res["stunnel"] = st.stop()
    want = f"TLS/{'AES_CM_128_HMAC_SHA1_80' if srtp else 'plain'}"
    res["modes_ok"] = res["call_modes"].get(want, 0) == w["active_start"] and len(res["call_modes"]) == 1
    log(f"  ivrd {w['cores']:.3f} cores, {fmt(res['us_per_pkt'], 2)} us/pkt, {w['pkts']:.0f}/{res['expected_pkts']:.0f} pkts, "
        f"late {w['late_ticks']:.0f}/{w['ticks']:.0f}, skipped {w['skipped_ticks']:.0f}, auth failures {res['auth_failures']:.0f}, "
        f"calls {res['call_modes']}, SIPp ok={res['sipp'].get('successful')} failed={res['sipp'].get('failed')}, "
        f"stunnel {fmt(w.get('peer_cores'), 3)} cores, steal {w['steal_pct']:.2f} %")
    if not res["modes_ok"]:
        log(f"  WARNING: calls not all {want}: {res['call_modes']}")
    return res


def workload2_floor(args, mode, n, out):
    run_dir = os.path.join(out, "raw", f"w2-floor-{n}")
    os.makedirs(run_dir, exist_ok=True)
    settle = 3
    secs = settle + mode["steady"] + mode["capture"] + 3
    log(f"W2 floor N={n}: {secs} s")
    sink = subprocess.Popen(["taskset", "-c", "1", os.path.join(args.bin, "sink"), str(MEDIA_PORT),
                             str(secs + 10), args.sink_mode],
                            stdout=open(os.path.join(run_dir, "sink.out"), "w"), stderr=subprocess.STDOUT)
    time.sleep(0.5)
    # At ivrd's pacer priority (nice -10, its default), so both are measured alike.
    fl = subprocess.Popen(["taskset", "-c", "0", "nice", "-n", "-10", os.path.join(args.bin, "floor"), str(n), str(secs),
                           str(MEDIA_PORT), str(RTP_MIN)],
                          stdout=open(os.path.join(run_dir, "floor.out"), "w"), stderr=subprocess.STDOUT)
    time.sleep(settle)
    if fl.poll() is not None:
        sink.kill()
        raise SystemExit(f"floor exited early; see {run_dir}/floor.out")
    a = snapshot(fl.pid, with_metrics=False)
    time.sleep(mode["steady"])
    b = snapshot(fl.pid, with_metrics=False)
    w = window(a, b)
    pcap = os.path.join(run_dir, "rtp.pcapng")
    capture(mode["capture"], pcap, floor_ports(n))
    res = dict(n=n, window=w, rss_kb=b["proc"]["rss_kb"], timing=timing(pcap))
    fl.wait(timeout=60)
    sink.terminate()
    sink.wait(timeout=10)
    with open(os.path.join(run_dir, "floor.out")) as f:
        for line in f:
            k, _, v = line.partition(" ")
            if v.strip().isdigit():
                res[k] = int(v)
    res["expected_total"] = n * 50 * secs
    os.remove(pcap) if not args.keep_pcaps else None
    log(f"  floor {w['cores']:.3f} cores, p99 {res['timing']['p99']} ms")
    return res


def workload1(args, mode, rate, out, hold_ms=1000, pki=None):
    """One call-rate step. hold_ms=1000: the issue's workload (1 s of prompt per call);
    hold_ms=0: signalling only (BYE right after the ACK), the figure published SIP stacks quote.
    `pki`: the same over TLS with SRTP (w1tls): SIPp over one TCP connection to the stunnel
    client, stunnel over one TLS connection to ivrd, uac_hold_srtp.xml, [media] srtp =
    "required"; no SIP capture (the signalling is encrypted), SIPp's own INVITE->200 only."""
    tag = "w1tls" if pki else ("w1" if hold_ms else "w1sig")
    run_dir = os.path.join(out, "raw", f"{tag}-{rate}cps")
    os.makedirs(run_dir, exist_ok=True)
    secs = mode["cps_secs"] if hold_ms else mode["sig_secs"]
    total = rate * secs
    what = f"{hold_ms / 1000:g} s of prompt each" if hold_ms else "signalling only"
    log(f"W1 {rate} cps for {secs} s ({total} calls, {what})")
    st = None
    if pki:
        iv = Ivrd(args.ivrd, run_dir, cfg=ivrd_config(run_dir, tls=(pki.cert, pki.key), srtp="required"))
        st = Stunnel(run_dir, pki)
        cap = None
    else:
        iv = Ivrd(args.ivrd, run_dir)
        pcap = os.path.join(run_dir, "sip.pcapng")
        cap = subprocess.Popen(["taskset", "-c", "1", "dumpcap", "-q", "-i", "lo", "-f", f"udp port {SIP_PORT}",
                                "-s", "1500", "-a", f"duration:{secs + 90}", "-w", pcap],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    a = snapshot(iv.pid, extra_pid=st.pid if st else None)
    if pki:
        sp = sipp(run_dir, total, rate * 10, rate, hold_ms, rtt=True, scenario="uac_hold_srtp.xml",
                  remote_port=STUNNEL_PORT, transport="t1")
    else:
        sp = sipp(run_dir, total, rate * 10, rate, hold_ms, rtt=True)
    drops = {}
    rc = wait_sipp(sp, secs + 60, drops)
    b = snapshot(iv.pid, extra_pid=st.pid if st else None)
    time.sleep(0.5)
    res = dict(rate=rate, secs=secs, total=total, sipp_rc=rc, hold_ms=hold_ms,
               drops_ivrd=drops.get(SIP_PORT, 0), drops_sipp=drops.get(SIPP_PORT, 0),
               steal_max_ms=drops.get("steal_max_ms", 0.0))
    if cap:
        cap.send_signal(signal.SIGINT)
        cap.wait(timeout=30)
        res.update(sip_setup_times(pcap))
        os.remove(pcap) if not args.keep_pcaps else None
    else:
        res["drops_ivrd"] = res["drops_sipp"] = "n/a (TCP/TLS)"
    res["window"] = window(a, b)
    if pki:
        res["auth_failures"] = b["metrics"].get("ivrd_srtp_auth_failures_total", 0)
        res["tls_handshake_failures"] = b["metrics"].get("ivrd_sip_tls_handshake_failures_total", 0)
    res["sipp"] = sipp_stats(run_dir)
    res.update(sipp_rtt(run_dir))
    res["ivrd_retrans"] = b["metrics"].get("ivrd_sip_retransmissions_total", 0)
    res["ivrd_log"] = iv.stop()
    if st:
        res["stunnel"] = st.stop()
    # Each call hears hold_ms of prompt: 50 packets a second of it (20 ms ptime). Skipped
    # ticks are packets a caller never got (the pacer fell > 200 ms behind): a rate where
    # prompts break up is not a rate ivrd holds, whatever SIPp says about the signalling.
    w = res["window"]
    res["rtp_expected"] = s_ok = res["sipp"].get("successful", 0) * hold_ms // 20
    s = res["sipp"]
    log(f"  RTP sent {w['pkts']:.0f} / ~{s_ok} expected, late ticks {w['late_ticks']:.0f}, "
        f"skipped {w['skipped_ticks']:.0f}")
    log(f"  SIP datagrams dropped by the kernel: at ivrd {res['drops_ivrd']}, at SIPp {res['drops_sipp']}; "
        f"steal {w['steal_pct']:.2f} % on average (all CPUs), {res['steal_max_ms']:.0f} ms of CPU 0 in its worst 0.5 s")
    log(f"  ok={s.get('successful')} failed={s.get('failed')} retrans={s.get('retrans')} "
        f"ivrd_retrans={res['ivrd_retrans']:.0f} INVITE->200 p50={fmt(res.get('setup_p50'), 3)} p99={fmt(res.get('setup_p99'), 3)} ms "
        f"({res.get('wire_answered')}/{res.get('wire_invites')} on the wire)")
    return res


def w1_held(r):
    """A rate is held when every call succeeded with no retransmission on either side and no
    caller lost prompt audio to a skipped tick."""
    s, w = r["sipp"], r["window"]
    return (s.get("failed") == 0 and s.get("retrans") == 0 and s.get("successful") == r["total"]
            and r["ivrd_retrans"] == 0 and w.get("skipped_ticks", 0) == 0)


# ---------------------------------------------------------------- report

def own_fmt(j):
    if not j:
        return "n/a"
    le = lambda x: "> 20" if x == float("inf") else f"{x:g}"
    return (f"{le(j['p50_le'])} / {le(j['p99_le'])} / {le(j['p999_le'])}, "
            f"{fmt(j['within_2ms_pct'], 2)} %")


def fmt(x, nd=2):
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def svg_plot(w2, floor, path):
    """Two panels: CPU (cores) vs N, and p99 |interval-20ms| (ms) vs N; ivrd and floor."""
    W, H, M = 860, 340, 60
    pw = (W - 3 * M) / 2
    ph = H - 2 * M
    ns = [r["n"] for r in w2]
    fl = {r["n"]: r for r in floor}
    series = [
        ("ivrd CPU (cores)", [(r["n"], r["window"]["cores"]) for r in w2],
         [(n, fl[n]["window"]["cores"]) for n in ns if n in fl]),
        ("p99 |interval - 20 ms| (ms)", [(r["n"], r["timing"]["p99"] or 0) for r in w2],
         [(n, fl[n]["timing"]["p99"] or 0) for n in ns if n in fl]),
    ]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>']
    xmax = max(ns) * 1.05
    for i, (title, a, b) in enumerate(series):
        x0 = M + i * (pw + M)
        ymax = max([v for _, v in a + b] + [1e-9]) * 1.15
        X = lambda n: x0 + pw * n / xmax
        Y = lambda v: M + ph - ph * v / ymax
        out.append(f'<text x="{x0 + pw / 2}" y="{M - 25}" text-anchor="middle" font-weight="bold">{title}</text>')
        out.append(f'<line x1="{x0}" y1="{M + ph}" x2="{x0 + pw}" y2="{M + ph}" stroke="black"/>')
        out.append(f'<line x1="{x0}" y1="{M}" x2="{x0}" y2="{M + ph}" stroke="black"/>')
        for k in range(5):
            v = ymax * k / 4
            out.append(f'<text x="{x0 - 5}" y="{Y(v) + 4}" text-anchor="end">{v:.3g}</text>')
            out.append(f'<line x1="{x0}" y1="{Y(v)}" x2="{x0 + pw}" y2="{Y(v)}" stroke="#ddd"/>')
        for n in ns:
            out.append(f'<text x="{X(n)}" y="{M + ph + 16}" text-anchor="middle">{n}</text>')
        out.append(f'<text x="{x0 + pw / 2}" y="{M + ph + 34}" text-anchor="middle">concurrent calls N</text>')
        for pts, colour, name in ((a, "#c0392b", "ivrd"), (b, "#2471a3", "floor (C)")):
            if pts:
                out.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>' % (
                    colour, " ".join(f"{X(n):.1f},{Y(v):.1f}" for n, v in pts)))
                for n, v in pts:
                    out.append(f'<circle cx="{X(n):.1f}" cy="{Y(v):.1f}" r="3" fill="{colour}"/>')
        for j, (colour, name) in enumerate((("#c0392b", "ivrd"), ("#2471a3", "floor (C)"))):
            out.append(f'<rect x="{x0 + 10}" y="{M + 8 + 16 * j}" width="12" height="3" fill="{colour}"/>')
            out.append(f'<text x="{x0 + 28}" y="{M + 13 + 16 * j}">{name}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def w2tls_report(data):
    """Workload 2 over TLS, plain RTP against SRTP: a row per run and a summary per N."""
    fl = {r["n"]: r for r in data["floor"]}
    runs = data["w2tls"]
    L = ["## Workload 2 over TLS signalling: SRTP against plain RTP", "",
         "Each call as in workload 2, but SIPp talks TCP to a local stunnel client (CPU 1), which "
         "carries it over one TLS connection to ivrd's `[sip] tls` listener, checking ivrd's "
         "certificate (a throw-away CA made at bench time); RTP goes direct. *plain*: "
         "`uac_hold.xml` (RTP/AVP), ivrd `[media] srtp = \"off\"`. *srtp*: `uac_hold_srtp.xml` "
         "(RTP/SAVP, one SDES key), `srtp = \"required\"`. Same path, same config otherwise; "
         f"steady window {data['steady']} s, no timing capture. CPU per packet = ivrd cores ÷ "
         "packets sent per second (ivrd_rtp_packets_sent_total); calls by mode from `/status`.", "",
         "| N | mode | pass | calls up | calls by transport/SRTP (/status) | ivrd CPU (cores) | ivrd CPU per pkt (µs) | ivrd/floor per pkt | RTP sent / expected | late / skipped ticks | SRTP auth failures | SIPp ok / failed / retrans | stunnel CPU (cores) | RSS Δ in window (KiB) | steal % | load1 |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        w, s = r["window"], r["sipp"]
        f = fl.get(r["n"])
        ratio = "n/a"
        if f and r.get("us_per_pkt") and f["window"]["cores"] > 0:
            ratio = f"{r['us_per_pkt'] / (f['window']['cores'] / (r['n'] * 50) * 1e6):.2f}"
        modes = ", ".join(f"{k} {v}" for k, v in sorted(r["call_modes"].items()))
        L.append(f"| {r['n']} | {r['mode']} | {r['rep'] + 1} | {int(w['active_start'])}→{int(w['active_end'])} | {modes} | "
                 f"{w['cores']:.3f} | {fmt(r.get('us_per_pkt'), 2)} | {ratio} | "
                 f"{w['pkts']:.0f} / {r['expected_pkts']:.0f} ({100 * w['pkts'] / max(1, r['expected_pkts']):.1f} %) | "
                 f"{w['late_ticks']:.0f} / {w.get('skipped_ticks', 0):.0f} | {r['auth_failures']:.0f} | "
                 f"{s.get('successful', '?')} / {s.get('failed', '?')} / {s.get('retrans', '?')} | "
                 f"{fmt(w.get('peer_cores'), 3)} | {r['rss_window_kb']} | {w['steal_pct']:.2f} | {w['loadavg'][0]} |")
    L += ["", "Summary per N (mean over the passes):", "",
          "| N | plain µs/pkt | SRTP µs/pkt | SRTP/plain (target ≤ 1.25) | floor µs/pkt | plain/floor | SRTP/floor | packets sent / expected, all runs | skipped ticks | auth failures |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for n in sorted({r["n"] for r in runs}):
        rr = [r for r in runs if r["n"] == n]
        mean = lambda xs: sum(xs) / len(xs) if xs else None
        pl = mean([r["us_per_pkt"] for r in rr if not r["srtp"] and r.get("us_per_pkt")])
        sr = mean([r["us_per_pkt"] for r in rr if r["srtp"] and r.get("us_per_pkt")])
        f = fl.get(n)
        fus = f["window"]["cores"] / (n * 50) * 1e6 if f and f["window"]["cores"] > 0 else None
        sent = sum(r["window"]["pkts"] for r in rr)
        exp = sum(r["expected_pkts"] for r in rr)
        L.append(f"| {n} | {fmt(pl, 2)} | {fmt(sr, 2)} | {fmt(sr / pl if pl and sr else None, 2)} | {fmt(fus, 2)} | "
                 f"{fmt(pl / fus if pl and fus else None, 2)} | {fmt(sr / fus if sr and fus else None, 2)} | "
                 f"{sent:.0f} / {exp:.0f} ({100 * sent / max(1, exp):.2f} %) | "
                 f"{sum(r['window'].get('skipped_ticks', 0) for r in rr):.0f} | {sum(r['auth_failures'] for r in rr):.0f} |")
    L += ["", "Details per run:", ""]
    for r in runs:
        w = r["window"]
        top = sorted(w["threads"].items(), key=lambda kv: -kv[1])[:4]
        L.append(f"- N={r['n']} {r['mode']} pass {r['rep'] + 1}: ramp {r['rate']} cps took {r['ramp_secs']:.1f} s; "
                 f"window {w['secs']:.1f} s; RSS idle {r['rss_idle_kb']} KiB → {r['rss_kb']} KiB; send errors "
                 f"{w['send_errors']:.0f}; TLS handshake failures {r['tls_handshake_failures']:.0f}; replays {r['replays']:.0f}; "
                 f"ivrd retrans {r['ivrd_retrans']:.0f}; stunnel: {r['stunnel']}; own histogram {own_fmt(w.get('jitter_own'))}; "
                 f"ivrd log warn/error {r['ivrd_log']['warn_lines']}/{r['ivrd_log']['error_lines']}; busiest threads: "
                 + ", ".join(f"{k.split('#')[0]} {v:.3f}" for k, v in top))
    L.append("")
    return L


def echo_cpu_per_pkt_us(r):
    w = r["window"]
    return 1e6 * w["cores"] * w["secs"] / max(1, w["pkts"] + w.get("pkts_received", 0))


def echo_report_lines(rows):
    L = ["## Workload 2 with RTP echoed: strict RTP against plain", "",
         "As workload 2, but SIPp's SDP names the sink (`sink echo`), which sends every packet "
         "back to the ivrd port it came from: ivrd receives 50 packets a second per call, from "
         "the address the SDP named. `[media] strict_rtp` true and false, interleaved (ABBA) in "
         "one run, a fresh ivrd per step; `rtp_timeout_secs` at its default (30 s), "
         "`inband_dtmf = false` as in workload 2. CPU per packet = ivrd CPU ÷ (packets sent + "
         "received) over the steady window.", "",
         "| step | N | strict_rtp | calls up | ivrd CPU (cores) | sent pkt/s | received pkt/s | received / sent | µs CPU per packet | foreign pkts | late / skipped ticks | \\|Δt−20ms\\| p50 / p99 (ms) | SIPp ok / failed | steal % | load1 |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        w, t, s = r["window"], r["timing"], r["sipp"]
        L.append(f"| {r['rep']} | {r['n']} | {str(r['strict_rtp']).lower()} | {int(w['active_start'])}→{int(w['active_end'])} | "
                 f"{w['cores']:.3f} | {w['pkts'] / w['secs']:.0f} | {w.get('pkts_received', 0) / w['secs']:.0f} | "
                 f"{100 * w.get('pkts_received', 0) / max(1, w['pkts']):.1f} % | {echo_cpu_per_pkt_us(r):.3f} | "
                 f"{w.get('foreign', 0):.0f} (run {r.get('foreign_total', 0):.0f}) | "
                 f"{w['late_ticks']:.0f} / {w.get('skipped_ticks', 0):.0f} | {fmt(t['p50'], 3)} / {fmt(t['p99'], 3)} | "
                 f"{s.get('successful', '?')} / {s.get('failed', '?')} | {w['steal_pct']:.2f} | {w['loadavg'][0]} |")
    L += ["", "| N | µs CPU per packet, strict (each step) | plain (each step) | mean strict / mean plain |",
          "|---|---|---|---|"]
    for n in sorted({r["n"] for r in rows}):
        st = [echo_cpu_per_pkt_us(r) for r in rows if r["n"] == n and r["strict_rtp"]]
        pl = [echo_cpu_per_pkt_us(r) for r in rows if r["n"] == n and not r["strict_rtp"]]
        ratio = (sum(st) / len(st)) / (sum(pl) / len(pl)) if st and pl else None
        L.append(f"| {n} | {', '.join(f'{x:.3f}' for x in st)} | {', '.join(f'{x:.3f}' for x in pl)} | "
                 f"{fmt(ratio, 3)} |")
    L += ["", "Details per step: " + "; ".join(
        f"{r['rep']}/{r['n']}/{'strict' if r['strict_rtp'] else 'plain'}: sink got {r.get('sink_packets', '?')}, "
        f"echoed {r.get('sink_echoed', '?')}; RSS/call {r['rss_per_call_kb']:.1f} KiB; busiest threads "
        + ", ".join(f"{k.split('#')[0]} {v:.3f}" for k, v in sorted(r['window']['threads'].items(), key=lambda kv: -kv[1])[:3])
        for r in rows), ""]
    return L


def report(data, path):
    mf, me = data["machine_start"], data["machine_end"]
    L = [f"# ivrd load benchmark ({data['mode']} mode)", ""]
    L += ["## Machine", "",
          f"- date: {mf['date']} (end {me['date']})",
          f"- host: {mf['host']}; kernel {mf['kernel']}",
          f"- CPU: {mf['cpu_model']}; nproc {mf['nproc']}",
          f"- load average at start {' '.join(mf['loadavg'])}, at end {' '.join(me['loadavg'])}",
          f"- steal over the whole run: {data['steal_pct_run']:.2f} % of all CPU time",
          f"- ivrd commit: {data.get('git', '?')}",
          "- pinning: ivrd / floor on CPU 0; SIPp, sink and dumpcap on CPU 1 (`taskset`)",
          "", "## Set-up", ""] + [f"- {s}" for s in data["setup"]] + [""]
    w2, fl = data["w2"], {r["n"]: r for r in data["floor"]}
    if w2:
        L += ["## Workload 2: concurrent calls", "",
              f"Each call: INVITE (PCMU) → 200 → ACK → SIPp listens (sends no RTP) → BYE. ivrd plays "
              f"the demo welcome and enter-digits prompts, then silence while waiting for a digit. "
              f"Steady window: {data['steady']} s with all calls up (CPU, RSS, packets, late ticks); "
              f"then a {data['capture']} s capture of {SAMPLE_STREAMS} streams (timing).", "",
              "| N | calls up | ivrd CPU (cores) | floor CPU (cores) | ivrd/floor CPU per pkt | RSS/call (KiB) | RTP sent / expected | late ticks / ticks | ivrd \\|Δt−20ms\\| p50 / p99 / p99.9 (ms) | ivrd's own histogram: p50 / p99 / p99.9 ≤ (ms), share ≤ 2 ms | floor p50 / p99 / p99.9 (ms) | SIPp ok / failed / retrans | CPU0 other busy % | steal % | load1 |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in w2:
            w = r["window"]
            f = fl.get(r["n"])
            t = r["timing"]
            ratio = "n/a"
            if f and w["pkts"] and f["window"]["cores"] > 0:
                fpkts = r["n"] * 50  # floor sends N*50 pkt/s by construction (checked below)
                ratio = f"{(w['cores'] / (w['pkts'] / w['secs'])) / (f['window']['cores'] / fpkts):.2f}"
            ft = f["timing"] if f else {}
            s = r["sipp"]
            L.append(
                f"| {r['n']} | {int(w['active_start'])}→{int(w['active_end'])} | {w['cores']:.3f} | "
                f"{fmt(f['window']['cores'], 3) if f else 'n/a'} | {ratio} | {r['rss_per_call_kb']:.1f} | "
                f"{w['pkts']:.0f} / {r['expected_pkts']:.0f} ({100 * w['pkts'] / max(1, r['expected_pkts']):.1f} %) | "
                f"{w['late_ticks']:.0f} / {w['ticks']:.0f} ({w.get('skipped_ticks', 0):.0f} skipped) | {fmt(t['p50'], 3)} / {fmt(t['p99'], 3)} / {fmt(t['p999'], 3)} | "
                f"{own_fmt(w.get('jitter_own'))} | "
                f"{fmt(ft.get('p50'), 3)} / {fmt(ft.get('p99'), 3)} / {fmt(ft.get('p999'), 3)} | "
                f"{s.get('successful', '?')} / {s.get('failed', '?')} / {s.get('retrans', '?')} | "
                f"{w['cpu0_other_pct']:.1f} | {w['steal_pct']:.2f} | {w['loadavg'][0]} |")
        L += ["", "Details per step:", ""]
        for r in w2:
            w, t = r["window"], r["timing"]
            top = sorted(w["threads"].items(), key=lambda kv: -kv[1])[:5]
            f = fl.get(r["n"])
            L.append(f"- N={r['n']}: ramp {r['rate']} cps took {r['ramp_secs']:.1f} s; window {w['secs']:.1f} s; "
                     f"SIPp CPU {fmt(w.get('peer_cores'), 3)} cores; RSS idle {r['rss_idle_kb']} KiB → {r['rss_kb']} KiB; "
                     f"send errors {w['send_errors']:.0f}; capture {t['streams']} streams, {t['intervals']} intervals, "
                     f"max {fmt(t['max'], 3)} ms, seq gaps {t['seq_gaps']}; calls up after capture {r['active_after_capture']}; "
                     f"ivrd log warn/error lines {r['ivrd_log']['warn_lines']}/{r['ivrd_log']['error_lines']}; "
                     f"busiest ivrd threads (cores): " + ", ".join(f"{k.split('#')[0]} {v:.3f}" for k, v in top))
            if f:
                L.append(f"  - floor N={r['n']}: sent {f.get('floor_packets_sent', '?')} of {f['expected_total']} "
                         f"(whole run), errors {f.get('floor_send_errors', '?')}, late ticks {f.get('floor_late_ticks', '?')}"
                         f"/{f.get('floor_ticks', '?')}; CPU0 other busy {f['window']['cpu0_other_pct']:.1f} %; "
                         f"capture {f['timing']['streams']} streams, max {fmt(f['timing']['max'], 3)} ms")
        L += ["", "![ivrd CPU and p99 timing against N](plot.svg)", ""]
    if data.get("w2tls"):
        L += w2tls_report(data)
    for key, title in (("w1tls", "Workload 1 over TLS with SRTP: call rate"), ("w1", "Workload 1: call rate"),
                       ("w1sig", "Workload 1, signalling only")):
        rows = data.get(key) or []
        if not rows:
            continue
        if key == "w1tls":
            what = (f"Each call: INVITE (RTP/SAVP, SDES key) → 200 (SRTP, ivrd's key) → ACK → 1 s of the welcome "
                    f"prompt in SRTP → BYE; SIPp over one TCP connection to a local stunnel client, stunnel over "
                    f"one TLS connection to ivrd (a PBX trunk: one handshake per step, not per call); "
                    f"{rows[0]['secs']} s per rate, a fresh ivrd and stunnel per rate. No SIP capture (encrypted): "
                    "INVITE→200 from SIPp only.")
        elif key == "w1":
            what = (f"Each call: INVITE → 200 → ACK → 1 s of the welcome prompt → BYE; {rows[0]['secs']} s per rate, "
                    "a fresh ivrd per rate.")
        else:
            what = (f"Each call: INVITE → 200 → ACK → BYE at once (ivrd sets up the call and its RTP socket "
                    f"and starts the prompt, which the BYE cuts); {rows[0]['secs']} s per rate, a fresh ivrd per rate. "
                    "This is the figure SIP stacks publish as calls per second (signalling only).")
        cap_text = ("" if key == "w1tls" else " INVITE→200 per call from a capture of ivrd's SIP port on `lo` "
                    "(first INVITE to first 200; SIPp's own `-trace_rtt` has 1 ms resolution and is in raw/ too).")
        L += [f"## {title}", "", what + cap_text + " "
              "RTP: packets sent while the calls were up, against 50 per second of prompt per call; "
              "skipped ticks are packets given up because the pacer fell more than 200 ms behind.", "",
              "| rate (cps) | calls | SIPp ok / failed | SIPp retrans | ivrd retrans | on the wire: INVITE / 200 repeats | INVITE→200 p50 / p99 / max (ms) | SIPp rtt p50 / p99 (ms, 1 ms res.) | RTP sent / expected | late / skipped ticks | SIP drops at ivrd / SIPp | ivrd CPU (cores, avg) | ivrd CPU ms per call | steal %, worst 0.5 s (ms) | load1 |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        best = None
        for r in rows:
            s, w = r["sipp"], r["window"]
            if w1_held(r):
                best = r["rate"]
            cpu_ms = w["cores"] * w["secs"] * 1000 / max(1, s.get("successful", 0) or 1)
            exp = r.get("rtp_expected")
            L.append(f"| {r['rate']} | {r['total']} | {s.get('successful', '?')} / {s.get('failed', '?')} | "
                     f"{s.get('retrans', '?')} | {r['ivrd_retrans']:.0f} | {r.get('wire_invite_retrans', '?')} / {r.get('wire_200_retrans', '?')} | "
                     f"{fmt(r.get('setup_p50'), 3)} / {fmt(r.get('setup_p99'), 3)} / {fmt(r.get('setup_max'), 3)} | "
                     f"{fmt(r.get('rtt_p50'), 0)} / {fmt(r.get('rtt_p99'), 0)} | "
                     f"{w.get('pkts', 0):.0f} / {exp if exp is not None else 'n/a'} | "
                     f"{w.get('late_ticks', 0):.0f} / {w.get('skipped_ticks', 0):.0f} | "
                     f"{r.get('drops_ivrd', 'n/a')} / {r.get('drops_sipp', 'n/a')} | {w['cores']:.3f} | {cpu_ms:.2f} | "
                     f"{w['steal_pct']:.2f}, {r.get('steal_max_ms', 0):.0f} | {w['loadavg'][0]} |")
        L += ["", f"Highest rate with every call successful, 0 failed, 0 retransmissions and no RTP tick "
                  f"skipped: **{best if best else 'none'} cps** (of the rates tried).", ""]
        if key == "w1tls":
            for r in rows:
                L.append(f"- {r['rate']} cps: SRTP auth failures {r.get('auth_failures', 0):.0f}, TLS handshake "
                         f"failures {r.get('tls_handshake_failures', 0):.0f}, stunnel CPU "
                         f"{fmt(r['window'].get('peer_cores'), 3)} cores, stunnel: {r.get('stunnel')}")
            L.append("")
    if data.get("w2echo"):
        L += echo_report_lines(data["w2echo"])
    if data.get("w3"):
        import w3
        L += w3.report_lines(data["w3"])
    if data.get("flood"):
        import flood
        L += flood.report_lines(data["flood"])
    missing = [what for key, what in (
        ("w2", "workload 2 (concurrent calls, `--only w2`)"),
        ("w2echo", "workload 2 with RTP echoed back, strict RTP against plain (`--only w2echo`)"),
        ("w1", "workload 1 (call rate, `--only w1`)"),
        ("w1sig", "workload 1, signalling only (`--only w1sig`)"),
        ("w3", "workload 3 (verification flow with SMS and REFER, `--only w3`)"),
        ("flood", "floods (`--only flood`)")) if not data.get(key)]
    if missing:
        L += ["## Not run in this run", ""] + [f"- {m}" for m in missing] + [""]
    with open(path, "w") as f:
        f.write("\n".join(L))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--ivrd", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--sink-mode", default="hold", choices=["hold", "read"])
    ap.add_argument("--setup-note", action="append", default=[])
    ap.add_argument("--only", default="w2,w2echo,w1,w1sig,w3,flood",
                    help="comma list of workloads: w2,w2echo,w2srtp,w1,w1tls,w1sig,w3,flood")
    ap.add_argument("--echo-ns", default="", help="override the N steps of w2echo, e.g. 1000,2000")
    ap.add_argument("--echo-reps", type=int, default=2,
                    help="w2echo: strict/plain pairs per N, in ABBA order (strict, plain, plain, strict, ...)")
    ap.add_argument("--floods", default="", help="flood: comma list of floods (see flood.py)")
    ap.add_argument("--flood-modes", default="allow,drop", help="flood: untrusted modes to run")
    ap.add_argument("--flood-secs", type=int, default=0, help="flood: seconds of each flood")
    ap.add_argument("--ns", default="", help="override N steps, e.g. 100,200")
    ap.add_argument("--rates", default="", help="override call rates, e.g. 10,20")
    ap.add_argument("--sig-rates", default="", help="override signalling-only call rates")
    ap.add_argument("--cps-secs", type=int, default=0, help="override seconds per call rate")
    ap.add_argument("--keep-pcaps", action="store_true")
    ap.add_argument("--srtp-ns", default="1000,2000", help="N steps of w2srtp (plain and SRTP over TLS)")
    ap.add_argument("--srtp-reps", type=int, default=1,
                    help="w2srtp passes: pass 1 runs plain then SRTP per N, pass 2 SRTP then plain (ABBA), ...")
    ap.add_argument("--srtp-first", action="store_true", help="w2srtp: SRTP before plain in the first pass")
    ap.add_argument("--srtp-floor", action="store_true", help="w2srtp: also run the C floor per N")
    ap.add_argument("--steady-secs", type=int, default=0, help="override the steady window (s)")
    ap.add_argument("--pacer-nice", type=int, default=None,
                    help="[media] pacer_nice for ivrd (default: ivrd's, -10; 0 for a smoke test beside other work)")
    ap.add_argument("--tcp-write-queue-kib", type=int, default=None,
                    help="[sip] tcp_write_queue_kib in the TLS configs (default: ivrd's, 256)")
    ap.add_argument("--tls-rates", default="", help="w1tls call rates (default: the w1 rates)")
    args = ap.parse_args()
    args.ivrd = os.path.abspath(args.ivrd)
    args.bin = os.path.abspath(args.bin)
    args.out = os.path.abspath(args.out)
    mode_name = "quick" if args.quick else "full"
    mode = dict(MODES[mode_name])
    if args.ns:
        mode["ns"] = [int(x) for x in args.ns.split(",")]
    if args.rates:
        mode["cps_rates"] = [int(x) for x in args.rates.split(",")]
    if args.sig_rates:
        mode["sig_rates"] = [int(x) for x in args.sig_rates.split(",")]
    if args.cps_secs:
        mode["cps_secs"] = args.cps_secs
    if args.steady_secs:
        mode["steady"] = args.steady_secs
    global PACER_NICE, TCP_WRITE_QUEUE_KIB
    PACER_NICE = args.pacer_nice
    TCP_WRITE_QUEUE_KIB = args.tcp_write_queue_kib
    if args.echo_ns:
        mode["echo_ns"] = [int(x) for x in args.echo_ns.split(",")]
    os.makedirs(args.out, exist_ok=True)
    git = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    data = dict(mode=mode_name, steady=mode["steady"], capture=mode["capture"], setup=args.setup_note,
                machine_start=machine_facts(), git=git, w2=[], floor=[], w1=[], w1sig=[], w3=[],
                w2tls=[], w1tls=[], w2echo=[], flood=[])
    st0 = read_proc_stat()
    only = args.only.split(",")
    json_path = os.path.join(args.out, "results.json")

    def save():
        data["machine_end"] = machine_facts()
        data["steal_pct_run"] = stat_delta(st0, read_proc_stat())["steal_pct"]
        with open(json_path, "w") as f:
            json.dump(data, f, indent=1, default=str)
        report(data, os.path.join(args.out, "results.md"))
        if data["w2"]:
            svg_plot(data["w2"], data["floor"], os.path.join(args.out, "plot.svg"))

    if "w2" in only:
        for n in mode["ns"]:
            data["w2"].append(workload2_ivrd(args, mode, n, args.out))
            save()
            data["floor"].append(workload2_floor(args, mode, n, args.out))
            save()
    pki = Pki() if ("w2srtp" in only or "w1tls" in only) else None
    def w2srtp_pass(rep):
        for n in [int(x) for x in args.srtp_ns.split(",")]:
            # ABBA over the passes: plain first in even passes, SRTP first in odd ones.
            for srtp in ((False, True) if (rep + args.srtp_first) % 2 == 0 else (True, False)):
                data["w2tls"].append(workload2_tls(args, mode, n, args.out, srtp, rep, pki))
                save()
            if rep == 0 and args.srtp_floor:
                data["floor"].append(workload2_floor(args, mode, n, args.out))
                save()

    if "w2echo" in only:
        # Interleaved, ABBA: strict, plain, plain, strict, ... so that a drift of the host's
        # speed over the run falls on both alike.
        for n in mode["echo_ns"]:
            order = []
            for k in range(args.echo_reps):
                order += [True, False] if k % 2 == 0 else [False, True]
            for k, strict in enumerate(order):
                tag = f"w2echo-{'strict' if strict else 'plain'}-{n}-{k + 1}"
                r = workload2_ivrd(args, mode, n, args.out, strict=strict, tag=tag)
                r["rep"] = k + 1
                data["w2echo"].append(r)
                save()
    # The first pass of w2srtp, then the call rates, then the further passes (ABBA): a run
    # cut short still has one pass of each.
    if "w2srtp" in only:
        w2srtp_pass(0)
    tls_rates = [int(x) for x in args.tls_rates.split(",")] if args.tls_rates else mode["cps_rates"]
    for key, rates, hold in (("w1tls", tls_rates, 1000), ("w1", mode["cps_rates"], 1000),
                             ("w1sig", mode["sig_rates"], 0)):
        if key not in only:
            continue
        for rate in rates:
            r = workload1(args, mode, rate, args.out, hold_ms=hold, pki=pki if key == "w1tls" else None)
            data[key].append(r)
            save()
            # The first rate not held ends the steps: the one before it is the answer, and
            # higher rates only pile up failures.
            if not w1_held(r):
                log(f"  {rate} cps not held (failures, retransmissions or skipped RTP): stopping these steps")
                break
    if "w2srtp" in only:
        for rep in range(1, args.srtp_reps):
            w2srtp_pass(rep)
    if "w3" in only:
        import w3
        w3.workload3(args.ivrd, args.out, w3.MODES[mode_name]["rates"], w3.MODES[mode_name]["secs"],
                     on_result=lambda r: (data["w3"].append(r), save()))
    if "flood" in only:
        import flood
        flood.run_floods(args.ivrd, args.bin, args.out, mode_name,
                         floods=args.floods.split(",") if args.floods else None,
                         modes=args.flood_modes.split(","), secs=args.flood_secs or None,
                         on_result=lambda r: (data["flood"].append(r), save()))
    save()
    log(f"results: {os.path.join(args.out, 'results.md')}")


if __name__ == "__main__":
    main()
