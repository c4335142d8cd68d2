#!/usr/bin/env python3
"""Side monitor for a busy shared host (not part of the bench's figures): every 0.5 s, for each
running process of the given ivrd binary, the run-queue wait summed over its threads
(`/proc/<pid>/task/*/schedstat`, field 2: time runnable but not running, i.e. the CPU taken by
someone else or by another ivrd thread) and the time it ran, beside CPU 0's busy and steal
jiffies in the same 0.5 s and the 1-minute load. Steal only shows the hypervisor taking the
vCPU; this shows other processes of the same VM taking CPU 0 from ivrd.

    taskset -c 1 python3 bench/hostmon.py target/release/ivrd OUT.csv &    # beside run.sh
"""
import os
import sys
import time

exe = os.path.abspath(sys.argv[1])
out = open(sys.argv[2], "a", buffering=1)
out.write("utc,pid,rq_wait_ms_delta,run_ms_delta,cpu0_busy_j,cpu0_steal_j,cpu0_total_j,load1\n")
prev, prevc = {}, None
while True:
    t = time.time()
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu0 "):
                v = [int(x) for x in line.split()[1:]]
                c = (v[0] + v[1] + v[2] + v[5] + v[6], v[7], sum(v[:8]))
    dc = tuple(a - b for a, b in zip(c, prevc)) if prevc else (0, 0, 0)
    prevc = c
    load1 = open("/proc/loadavg").read().split()[0]
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{pid}/exe") != exe:
                continue
            run = wait = 0
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    a = f.read().split()
                    run += int(a[0])
                    wait += int(a[1])
        except OSError:
            continue
        pr = prev.get(pid)
        prev[pid] = (run, wait)
        if pr:
            out.write(f"{time.strftime('%H:%M:%S', time.gmtime(t))}.{int(t % 1 * 10)},{pid},"
                      f"{(wait - pr[1]) / 1e6:.1f},{(run - pr[0]) / 1e6:.1f},{dc[0]},{dc[1]},{dc[2]},{load1}\n")
    time.sleep(0.5)
