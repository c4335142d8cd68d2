#!/usr/bin/env python3
"""ivrd benchmark, API workload: verifications started per second through the HTTP API.

Per concurrency level (a fresh ivrd and database each), `clients` threads each keep one
HTTP/1.1 connection to `[api] listen` and start verifications back to back
(`POST /v1/verifications`, a different mobile number each, so the per-number limit never
refuses), for `secs` seconds. Every start sends an SMS through ivrd's `webhook` provider to a
loopback gateway in this process, which answers 200 at once. The PIN is issued, sealed and
counted, the send admitted under the limits and the guard (budgets off: the run sends far
more than a day's default), the verification row written, the SMS posted.

Figures per level: started verifications per second (201 answers), p50/p99/max latency of
the start call as the client sees it, other answers by status, SMS the gateway received, and
ivrd's CPU (user+system, % of one core) over the run. ivrd is pinned to CPU 0, this process
to CPU 1. Python standard library only; reuses bench.py's helpers.

    wapi.py --ivrd target/release/ivrd --out DIR [--clients 1,4,16] [--secs 20]
"""
import argparse
import http.client
import http.server
import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
from bench import HOST, SIP_PORT, ADMIN_PORT, RTP_MIN, RTP_MAX, log  # noqa: E402

API_PORT = 18080
SMS_HTTP_PORT = 19062


def toml_str(s):
    return json.dumps(s)


class Gateway(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        self.posts = 0
        self.lock = threading.Lock()
        gateway = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as two writes: without this, Nagle holds the body
            # until ivrd's delayed ACK (40 ms), and the run would measure that.
            disable_nagle_algorithm = True

            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(n)
                with gateway.lock:
                    gateway.posts += 1
                body = b'{"ok":true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__((HOST, SMS_HTTP_PORT), Handler)


def config(run_dir, extra=""):
    """ivrd.toml for the API workloads; `extra` is appended (wvoice.py's [outbound])."""
    cfg = f"""
[sip]
udp = ["{HOST}:{SIP_PORT}"]
tcp = []

[media]
rtp_ip = "{HOST}"
rtp_port_min = {RTP_MIN}
rtp_port_max = {RTP_MAX}
prompts_dir = {toml_str(os.path.join(bench.ROOT, "prompts"))}

[dialplans]
dir = {toml_str(os.path.join(bench.ROOT, "dialplans"))}
default = "verify"

[store]
path = {toml_str(os.path.join(run_dir, "ivrd.db"))}

[sms]
provider = "webhook"
url = "http://{HOST}:{SMS_HTTP_PORT}/sms"

[api]
listen = "{HOST}:{API_PORT}"
sends_per_key = 100000000

[guard]
# The default budgets (2,000 an hour) would stop the run in seconds; the breaker would trip
# on a prefix whose codes nobody types. Both are measured elsewhere (workload 3).
sms_per_hour = 0
sms_per_day = 0
breaker_min_sends = 0

[admin]
listen = "{HOST}:{ADMIN_PORT}"

[log]
level = "warn"
"""
    return bench.write_config(run_dir, cfg + extra)


def cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def wait_port(port, secs=20):
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection(HOST, port, timeout=1)
            c.connect()
            c.close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def client(key, numbers, stop, out):
    conn = http.client.HTTPConnection(HOST, API_PORT, timeout=30)
    lat, statuses = [], {}
    while not stop.is_set():
        n = next(numbers)
        body = json.dumps({"to": f"+4915112{n:06d}"})
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/v1/verifications", body,
                         {"Authorization": "Bearer " + key, "Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection(HOST, API_PORT, timeout=30)
            status = 0
        lat.append(time.perf_counter() - t0)
        statuses[status] = statuses.get(status, 0) + 1
    out.append((lat, statuses))


def level(ivrd, out_dir, clients, secs):
    run_dir = os.path.join(out_dir, f"api-{clients}")
    os.makedirs(run_dir, exist_ok=True)
    cfg = config(run_dir)
    db = os.path.join(run_dir, "ivrd.db")
    proc = subprocess.Popen(["taskset", "-c", "0", ivrd, "run", "--config", cfg],
                            stdout=open(os.path.join(run_dir, "ivrd.log"), "w"), stderr=subprocess.STDOUT)
    try:
        wait_port(API_PORT)
        key = subprocess.run([ivrd, "api-keys", "create", "bench", "--db", db],
                             capture_output=True, text=True, check=True).stdout.strip()
        gateway = Gateway()
        threading.Thread(target=gateway.serve_forever, daemon=True).start()
        counter = iter(range(10**6))
        lock = threading.Lock()

        def numbers():
            while True:
                with lock:
                    yield next(counter)

        gen = numbers()
        stop = threading.Event()
        results = []
        threads = [threading.Thread(target=client, args=(key, gen, stop, results)) for _ in range(clients)]
        cpu0, t0 = cpu_secs(proc.pid), time.time()
        for t in threads:
            t.start()
        time.sleep(secs)
        stop.set()
        for t in threads:
            t.join()
        wall = time.time() - t0
        cpu = cpu_secs(proc.pid) - cpu0
        gateway.shutdown()
        gateway.server_close()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    lat = sorted(x for r in results for x in r[0])
    statuses = {}
    for _, s in results:
        for k, v in s.items():
            statuses[k] = statuses.get(k, 0) + v
    ok = statuses.get(201, 0)

    def pct(p):
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else 0

    return {
        "clients": clients, "secs": round(wall, 1), "started": ok, "per_sec": round(ok / wall, 1),
        "p50_ms": round(pct(0.50), 1), "p99_ms": round(pct(0.99), 1), "max_ms": round(lat[-1] * 1000, 1) if lat else 0,
        "statuses": {str(k): v for k, v in sorted(statuses.items())}, "sms": gateway.posts,
        "cpu_pct": round(100 * cpu / wall, 1), "cpu_ms_per_start": round(1000 * cpu / ok, 2) if ok else None,
    }


def report_lines(rows):
    L = ["| clients | started/s | p50 ms | p99 ms | max ms | answers | SMS received | ivrd CPU % (1 core) | ivrd CPU ms per start |",
         "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        answers = ", ".join(f"{k}: {v}" for k, v in r["statuses"].items())
        L.append(f"| {r['clients']} | {r['per_sec']} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} | {answers} | "
                 f"{r['sms']} | {r['cpu_pct']} | {r['cpu_ms_per_start']} |")
    return L


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ivrd", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--secs", type=int, default=20)
    args = ap.parse_args()
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    os.sched_setaffinity(0, {1})
    rows = []
    for c in [int(x) for x in args.clients.split(",")]:
        log(f"api: {c} clients, {args.secs} s")
        rows.append(level(os.path.abspath(args.ivrd), args.out, c, args.secs))
        log(json.dumps(rows[-1]))
    with open(os.path.join(args.out, "api.json"), "w") as f:
        json.dump({"machine": bench.machine_facts(), "rows": rows}, f, indent=1)
    with open(os.path.join(args.out, "api.md"), "w") as f:
        f.write("\n".join(["# API workload: verifications started per second", ""] + report_lines(rows)) + "\n")
    print("\n".join(report_lines(rows)))


if __name__ == "__main__":
    main()
