#!/usr/bin/env python3
"""ivrd benchmark, voice workload: concurrent verifications by voice call.

Per level N (a fresh ivrd and database each): N verifications are started through the API
with `channel: voice` from 8 client threads as fast as they go, each to a different fixed-line
number. ivrd places each call through `[outbound]` to a SIPp UAS that plays the trunk and the
callees (scenarios/uas_callee.xml: 180, 200 with a=recvonly, then waits for the BYE), and reads
the 6-digit code twice ("your verification code is" and six digits, twice, then goodbye:
about 10 s of audio per call, 50 RTP packets a second). `[outbound] max_calls` = N.

Figures per level: the start call's p50/p99/max latency as the client sees it and its
answers; calls answered and read (the audit's `voice-answered` rows with "read 2x"); the
largest number of calls up at once (from the audit rows' start and end times); the time from
the first start to the last call's end; ivrd's CPU (user+system, % of one core) over that
window and per call. ivrd is pinned to CPU 0; SIPp and this process to CPU 1.

    wvoice.py --ivrd target/release/ivrd --out DIR [--calls 50,200,500]
"""
import argparse
import http.client
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import wapi  # noqa: E402
from bench import HOST, SIPP_PORT, MEDIA_PORT, log  # noqa: E402


def outbound(n):
    return f"""
[outbound]
proxy = "{HOST}:{SIPP_PORT}"
max_calls = {n}
readings = 2
max_repeats = 0
ring_timeout_secs = 30
"""


def callee(run_dir, n):
    cmd = ["taskset", "-c", "1", "sipp", "-sf", os.path.join(bench.BENCH, "scenarios", "uas_callee.xml"),
           "-i", HOST, "-p", str(SIPP_PORT), "-mi", HOST, "-mp", str(MEDIA_PORT), "-m", str(n),
           "-buff_size", str(4 << 20), "-nostdin", "-trace_stat", "-stf", "stat.csv", "-fd", "1",
           "-trace_err", "-error_file", "errors.log"]
    with open(os.path.join(run_dir, "sipp.cmd"), "w") as f:
        f.write(" ".join(cmd) + "\n")
    return subprocess.Popen(cmd, cwd=run_dir, stdout=open(os.path.join(run_dir, "sipp.out"), "w"),
                            stderr=subprocess.STDOUT)


def client(key, numbers, out):
    conn = http.client.HTTPConnection(HOST, wapi.API_PORT, timeout=30)
    lat, statuses = [], {}
    for n in numbers:
        body = json.dumps({"to": f"+4930{n:08d}", "channel": "voice"})
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/v1/verifications", body,
                         {"Authorization": "Bearer " + key, "Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection(HOST, wapi.API_PORT, timeout=30)
            status = 0
        lat.append(time.perf_counter() - t0)
        statuses[status] = statuses.get(status, 0) + 1
    out.append((lat, statuses))


def voice_rows(db):
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return c.execute("SELECT outcome, started_at, ended_at, detail FROM audit "
                         "WHERE outcome LIKE 'voice-%'").fetchall()
    finally:
        c.close()


def peak_overlap(rows):
    edges = sorted([(s, 1) for _, s, _, _ in rows] + [(e, -1) for _, _, e, _ in rows])
    up = peak = 0
    for _, d in edges:
        up += d
        peak = max(peak, up)
    return peak


def level(ivrd, out_dir, n, clients=8):
    run_dir = os.path.join(out_dir, f"voice-{n}")
    os.makedirs(run_dir, exist_ok=True)
    cfg = wapi.config(run_dir, outbound(n))
    db = os.path.join(run_dir, "ivrd.db")
    sp = callee(run_dir, n)
    proc = subprocess.Popen(["taskset", "-c", "0", ivrd, "run", "--config", cfg],
                            stdout=open(os.path.join(run_dir, "ivrd.log"), "w"), stderr=subprocess.STDOUT)
    try:
        wapi.wait_port(wapi.API_PORT)
        key = subprocess.run([ivrd, "api-keys", "create", "bench", "--db", db],
                             capture_output=True, text=True, check=True).stdout.strip()
        results = []
        shares = [range(i, n, clients) for i in range(clients)]
        threads = [threading.Thread(target=client, args=(key, s, results)) for s in shares]
        cpu0, t0 = wapi.cpu_secs(proc.pid), time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        started_in = time.time() - t0
        deadline = time.time() + 120
        rows = []
        while time.time() < deadline:
            rows = voice_rows(db)
            if len(rows) >= n:
                break
            time.sleep(0.5)
        wall = time.time() - t0
        cpu = wapi.cpu_secs(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        try:
            sp.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sp.terminate()
    lat = sorted(x for r in results for x in r[0])
    statuses = {}
    for _, s in results:
        for k, v in s.items():
            statuses[k] = statuses.get(k, 0) + v
    answered = sum(1 for r in rows if r[0] == "voice-answered")
    read = sum(1 for r in rows if r[0] == "voice-answered" and "code=read 2x" in (r[3] or ""))
    outcomes = {}
    for r in rows:
        outcomes[r[0]] = outcomes.get(r[0], 0) + 1
    lengths = sorted((e - s) / 1000 for _, s, e, _ in rows)

    def pct(xs, p):
        return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else 0

    return {
        "calls": n, "started_in_s": round(started_in, 2), "start_p50_ms": round(pct(lat, 0.5) * 1000, 1),
        "start_p99_ms": round(pct(lat, 0.99) * 1000, 1), "start_max_ms": round(lat[-1] * 1000, 1) if lat else 0,
        "answers": {str(k): v for k, v in sorted(statuses.items())}, "outcomes": outcomes,
        "answered": answered, "read_2x": read, "peak_up": peak_overlap(rows),
        "call_s_p50": round(pct(lengths, 0.5), 2), "call_s_max": round(lengths[-1], 2) if lengths else 0,
        "window_s": round(wall, 1), "cpu_pct": round(100 * cpu / wall, 1),
        "cpu_ms_per_call": round(1000 * cpu / n, 1), "sipp": bench.sipp_stats(run_dir),
    }


def report_lines(rows):
    L = ["| calls | all started in | start p50 ms | p99 ms | max ms | answered | code read 2x | peak up at once | call length p50 s | window s | ivrd CPU % (1 core) | CPU ms per call |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['calls']} | {r['started_in_s']} s | {r['start_p50_ms']} | {r['start_p99_ms']} | {r['start_max_ms']} | "
                 f"{r['answered']} | {r['read_2x']} | {r['peak_up']} | {r['call_s_p50']} | {r['window_s']} | "
                 f"{r['cpu_pct']} | {r['cpu_ms_per_call']} |")
    return L


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ivrd", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--calls", default="50,200,500")
    args = ap.parse_args()
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    os.sched_setaffinity(0, {1})
    rows = []
    for n in [int(x) for x in args.calls.split(",")]:
        log(f"voice: {n} calls")
        rows.append(level(os.path.abspath(args.ivrd), args.out, n))
        log(json.dumps(rows[-1]))
    with open(os.path.join(args.out, "voice.json"), "w") as f:
        json.dump({"machine": bench.machine_facts(), "rows": rows}, f, indent=1)
    with open(os.path.join(args.out, "voice.md"), "w") as f:
        f.write("\n".join(["# Voice workload: concurrent verifications by call", ""] + report_lines(rows)) + "\n")
    print("\n".join(report_lines(rows)))


if __name__ == "__main__":
    main()
