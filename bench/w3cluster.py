#!/usr/bin/env python3
"""ivrd benchmark, workload 3 on a cluster (issue 16): the verification flow of bench/w3.py on
two ivrd nodes sharing one PostgreSQL database behind Kamailio's dispatcher, against one node.

Configurations, each per rate with a fresh database (and fresh nodes, Kamailio, gateway):
  sqlite1  one node on SQLite, SIPp calls it directly: today's baseline (what w3.py measures)
  pg1      one node on PostgreSQL behind Kamailio (packaging/kamailio/ivrd-dispatcher.cfg)
  pg2      two nodes on the same PostgreSQL database behind the same Kamailio (round-robin)
SIPp, the scenario (scenarios/uac_verify.xml), the customers and the SMS gateway that relays
each PIN to its SIPp call are w3.py's. Kamailio listens on w3.py's ivrd port (15060), so SIPp's
command is the same in every configuration; the nodes listen on 15066 and 15067.

Pinning: every ivrd node on CPU 0; SIPp, Kamailio, PostgreSQL and this process (the gateway)
on CPU 1. The machine has 2 cores: two nodes share CPU 0, so they get no more CPU than one.

PostgreSQL: a throw-away cluster (initdb, run as the `postgres` user when root) in a directory
under --pg-dir (default /tmp, on disk: fsync, synchronous_commit and full_page_writes stay
on), with pg_stat_statements loaded. Per step: pg_stat_statements reset before SIPp starts;
statements (sum of calls, BEGIN/COMMIT/ROLLBACK counted apart), transactions (xact_commit +
xact_rollback of the step's database) and WAL syncs over the window, and per verified call the
round trips as statements + 2 x transactions. An idle window before SIPp starts measures what
the nodes send with no calls.

    w3cluster.py --ivrd target/release/ivrd --out DIR [--rates 5,10] [--then 20] [--secs 30]
                 [--configs sqlite1,pg1,pg2] [--pg-dir /tmp] [--no-wait-quiet]
"""
import argparse
import atexit
import csv
import io
import json
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (machine facts, /proc sampling, SIPp statistics)
import w3  # noqa: E402  (gateway, customers, ivrd config, SIPp command, analysis)
from bench import HOST, SIP_PORT, ADMIN_PORT, RTP_MIN, RTP_MAX, log, fmt  # noqa: E402

KAM_PORT = SIP_PORT          # Kamailio takes the port w3.sipp_cmd calls
NODES = [dict(sip=15066, admin=ADMIN_PORT, rtp=(RTP_MIN, 25999)),
         dict(sip=15067, admin=19062, rtp=(26000, RTP_MAX))]
PG_PORT = 15433
PG_USER = "ivrd"
CONFIGS = {
    "sqlite1": dict(nodes=1, pg=False, kamailio=False,
                    what="1 node, SQLite, no Kamailio (baseline)"),
    "pg1": dict(nodes=1, pg=True, kamailio=True, what="1 node, PostgreSQL, behind Kamailio"),
    "pg2": dict(nodes=2, pg=True, kamailio=True,
                what="2 nodes, one PostgreSQL database, behind Kamailio (round-robin)"),
}
STATS_FLUSH_SECS = 12   # PostgreSQL 15 backends flush pg_stat_database at most every 10 s when idle
TXN_CONTROL = ("BEGIN", "START TRANSACTION", "COMMIT", "END", "ROLLBACK")
# ivrd's readiness probe (src/server.rs spawn_store_probe: every 2 s per node, one read-only
# transaction whatever the load), told apart so the per-call figures can leave it out.
PING = "SELECT count(*) FROM customers WHERE id = ''"


# ---------------------------------------------------------------- small helpers

def metrics_at(port):
    """An ivrd node's /metrics as {name{labels}: value} (bench.metrics, at another port)."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as r:
        return bench.parse_metrics(r.read().decode())


def options_status(port, timeout=1.0):
    """The status code of the answer to one OPTIONS over UDP to 127.0.0.1:port, or None."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((HOST, 0))
        s.settimeout(timeout)
        lp = s.getsockname()[1]
        tag = f"{lp}-{time.monotonic_ns()}"
        s.sendto((f"OPTIONS sip:{HOST}:{port} SIP/2.0\r\n"
                  f"Via: SIP/2.0/UDP {HOST}:{lp};branch=z9hG4bK-w3c-{tag};rport\r\n"
                  "Max-Forwards: 70\r\n"
                  f"From: <sip:probe@{HOST}:{lp}>;tag=w3c{lp}\r\n"
                  f"To: <sip:{HOST}:{port}>\r\n"
                  f"Call-ID: w3c-probe-{tag}\r\n"
                  "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode(), (HOST, port))
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            data = s.recv(65535).decode(errors="replace")
            if data.startswith("SIP/2.0 ") and not data.startswith("SIP/2.0 1"):
                return int(data.split()[1])
    except (OSError, ValueError):
        return None
    finally:
        s.close()
    return None


def proc_cpu(pids):
    """utime + stime jiffies summed over live processes."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                p = f.read().rsplit(")", 1)[1].split()
            total += int(p[11]) + int(p[12])
        except (OSError, IndexError, ValueError):
            pass
    return total


def all_procs():
    """[(pid, ppid, pgid)] of every process."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    p = f.read().rsplit(")", 1)[1].split()
                out.append((int(d), int(p[1]), int(p[2])))
            except (OSError, IndexError, ValueError):
                pass
    return out


def sipp_errors(run_dir):
    """SIPp's errors.log, classified: aborts by kind, and how many calls failed only because
    ivrd's BYE overtook its 200 for SIPp's NOTIFY (the scenario wants the 200 first; through
    Kamailio's several UDP workers the two are relayed in parallel). Such a call was verified
    and transferred; SIPp answers the BYE anyway."""
    try:
        with open(os.path.join(run_dir, "errors.log"), errors="replace") as f:
            text = f.read()
    except OSError:
        return dict(aborts={}, bye_before_notify_200=0)
    cid = r"(w3-\d+@" + re.escape(HOST) + ")"
    aborts = {}
    for m in re.finditer(r"Aborting call on (.+?) for call", text):
        aborts[m.group(1)] = aborts.get(m.group(1), 0) + 1
    bye_first = set(re.findall(r"unexpected BYE for call: " + cid, text))
    late_200 = set()
    for m in re.finditer(r"Discarding message which can't be mapped to a known SIPp call:\n(.*?)(?=\d{4}-\d\d-\d\d\t|\Z)",
                         text, re.S):
        msg = m.group(1)
        c = re.search(r"(?im)^Call-ID:\s*(\S+)", msg)
        if msg.startswith("SIP/2.0 200") and re.search(r"(?im)^CSeq:\s*\d+\s+NOTIFY", msg) and c:
            late_200.add(c.group(1))
    return dict(aborts=aborts, bye_before_notify_200=len(bye_first & late_200))


def log_counts(path):
    with open(path, errors="replace") as f:
        lines = f.read().splitlines()
    warn = [l for l in lines if "WARN" in l[:40] or "ERROR" in l[:40]]
    return dict(log_lines=len(lines), warn_lines=sum("WARN" in l[:40] for l in lines),
                error_lines=sum("ERROR" in l[:40] for l in lines), first_warn_error=warn[:10])


def wait_quiet(max_secs, every=30):
    """Waits until no cargo, rustc or test binary of this tree runs (CPU is shared with another
    engineer's builds and tests). Returns what it saw."""
    t0 = time.monotonic()
    seen = []
    while True:
        busy = []
        for args in (["-x", "cargo"], ["-x", "rustc"], ["-f", "^" + os.path.join(bench.ROOT, "target", "debug", "deps") + "/"]):
            r = subprocess.run(["pgrep", "-a"] + args, capture_output=True, text=True)
            busy += [l[:120] for l in r.stdout.splitlines() if l.strip()]
        waited = time.monotonic() - t0
        if not busy:
            return dict(quiet=True, waited_secs=round(waited), busy_seen=seen[:10])
        seen = busy
        if waited >= max_secs:
            return dict(quiet=False, waited_secs=round(waited), busy_seen=busy[:10])
        log(f"waiting for a quiet machine ({len(busy)} build/test processes: {busy[0]} ...)")
        time.sleep(every)


# ---------------------------------------------------------------- PostgreSQL

class Postgres:
    """A throw-away cluster (tests/common/postgres.rs's recipe, but durable: fsync,
    synchronous_commit and full_page_writes on) on CPU 1, with pg_stat_statements."""

    def __init__(self, base_dir, port, keep_log_to):
        vers = sorted((d for d in os.listdir("/usr/lib/postgresql") if d.replace(".", "").isdigit()),
                      key=lambda v: [int(x) for x in v.split(".")])
        if not vers:
            raise SystemExit("PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin (apt-get install postgresql)")
        self.version = vers[-1]
        self.bin = f"/usr/lib/postgresql/{self.version}/bin"
        self.port = port
        self.keep_log_to = keep_log_to
        self.run_as = "postgres" if os.geteuid() == 0 else None
        self.dir = tempfile.mkdtemp(prefix="ivrd-w3cluster-pg-", dir=base_dir)
        if self.run_as:
            pw = pwd.getpwnam(self.run_as)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.data = os.path.join(self.dir, "data")
        self.running = False
        atexit.register(self.stop)
        r = self._run([os.path.join(self.bin, "initdb"), "-D", self.data, "-U", PG_USER, "-A", "trust",
                       "-E", "UTF8", "--no-locale", "--no-instructions"])
        if r.returncode != 0:
            raise SystemExit(f"initdb failed: {r.stdout}{r.stderr}")
        self.settings = dict(
            listen_addresses="'127.0.0.1'", port=str(port), unix_socket_directories="''",
            fsync="on", synchronous_commit="on", full_page_writes="on", wal_sync_method="fdatasync",
            shared_preload_libraries="'pg_stat_statements'", **{
                "pg_stat_statements.max": "10000", "pg_stat_statements.track": "top",
                "pg_stat_statements.track_utility": "on"},
            track_wal_io_timing="on", max_connections="100", log_autovacuum_min_duration="0",
            log_line_prefix="'%n [%p] '")
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write("\n# bench/w3cluster.py: durable (fsync on), pg_stat_statements\n")
            for k, v in self.settings.items():
                f.write(f"{k} = {v}\n")
        # taskset before pg_ctl: the postmaster and every backend inherit CPU 1.
        r = self._run(["taskset", "-c", "1", os.path.join(self.bin, "pg_ctl"), "start", "-D", self.data,
                       "-l", os.path.join(self.dir, "postgres.log"), "-w", "-t", "60"])
        if r.returncode != 0:
            raise SystemExit(f"pg_ctl start failed: {r.stdout}{r.stderr}\n{self.log_text()}")
        self.running = True
        self.psql("postgres", "CREATE EXTENSION pg_stat_statements")
        self.fs = subprocess.run(["df", "-T", self.dir], capture_output=True, text=True).stdout.splitlines()[-1]

    def _run(self, cmd):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        kw = dict(user=self.run_as, group=self.run_as, extra_groups=[]) if self.run_as else {}
        return subprocess.run(cmd, env=env, cwd=self.dir, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, **kw)

    def log_text(self):
        try:
            with open(os.path.join(self.dir, "postgres.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def url(self, db):
        return f"postgres://{PG_USER}@{HOST}:{self.port}/{db}"

    def psql(self, db, sql):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(PGCONNECT_TIMEOUT="10", PGCLIENTENCODING="UTF8", LC_ALL="C")
        r = subprocess.run([os.path.join(self.bin, "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                            "-h", HOST, "-p", str(self.port), "-U", PG_USER, "-d", db, "-f", "-"],
                           input=sql, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"psql on {db}: {r.stderr.strip()} ({sql[:200]})")
        return r.stdout.strip()

    def copy(self, db, select):
        """Rows of `select` (COPY ... TO STDOUT CSV HEADER) as dicts of strings."""
        text = self.psql(db, f"COPY ({select}) TO STDOUT WITH (FORMAT csv, HEADER true)")
        return list(csv.DictReader(io.StringIO(text)))

    def create_database(self, db):
        self.psql("postgres", f'CREATE DATABASE "{db}"')
        self.psql(db, "CREATE EXTENSION pg_stat_statements")

    def pids(self):
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                pm = int(f.readline())
        except (OSError, ValueError):
            return []
        return [pm] + [pid for pid, ppid, _ in all_procs() if ppid == pm]

    def counters(self, db):
        """pg_stat_database of `db` and pg_stat_wal (cluster-wide), read from the postgres
        database so that this session touches nothing of `db`'s."""
        rows = self.copy("postgres", (
            "SELECT d.xact_commit, d.xact_rollback, d.sessions, d.tup_inserted, d.tup_updated, "
            "d.tup_deleted, d.tup_returned, d.tup_fetched, d.blks_read, d.blks_hit, d.deadlocks, "
            "w.wal_records, w.wal_bytes, w.wal_write, w.wal_sync, w.wal_sync_time "
            f"FROM pg_stat_database d, pg_stat_wal w WHERE d.datname = '{db}'"))
        return {k: float(v) for k, v in rows[0].items()}

    def reset_statements(self):
        self.psql("postgres", "SELECT pg_stat_statements_reset()")

    def statements(self, db):
        rows = self.copy("postgres", (
            "SELECT s.calls, s.rows, round(s.total_exec_time::numeric, 3) AS total_ms, "
            "round(s.mean_exec_time::numeric, 4) AS mean_ms, s.query FROM pg_stat_statements s "
            f"JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = '{db}' ORDER BY s.calls DESC"))
        return [dict(calls=int(r["calls"]), rows=int(r["rows"]), total_ms=float(r["total_ms"]),
                     mean_ms=float(r["mean_ms"]), query=r["query"]) for r in rows]

    def stop(self):
        if self.running:
            self.running = False
            self._run([os.path.join(self.bin, "pg_ctl"), "stop", "-D", self.data, "-m", "fast", "-w", "-t", "60"])
        if os.path.isdir(self.dir):
            if self.keep_log_to:
                try:
                    shutil.copy(os.path.join(self.dir, "postgres.log"), self.keep_log_to)
                except OSError:
                    pass
            shutil.rmtree(self.dir, ignore_errors=True)


def statement_summary(stmts):
    """Statements (sum of calls) apart from transaction control (BEGIN / START TRANSACTION ...,
    COMMIT, ROLLBACK: counted by text, e.g. "START TRANSACTION READ ONLY") and the probe."""
    ctl, other, ping = {}, 0, 0
    for s in stmts:
        text = " ".join(s["query"].split()).rstrip(";")
        kw = next((k for k in TXN_CONTROL if text.upper() == k or text.upper().startswith(k + " ")), None)
        if kw:
            ctl[text] = ctl.get(text, 0) + s["calls"]
        else:
            other += s["calls"]
            ping += s["calls"] if text == PING else 0
    return dict(statements_all=sum(s["calls"] for s in stmts), statements=other, pings=ping,
                txn_control=ctl, distinct=len(stmts))


def autovacuum_runs(log_text, db, t0, t1):
    """Autovacuum/autoanalyze runs on `db`'s tables logged between t0 and t1 (epoch seconds;
    log_line_prefix '%n ...'): their transactions count in pg_stat_database too."""
    runs = []
    for line in log_text.splitlines():
        if f'of table "{db}.' in line and "automatic " in line:
            try:
                t = float(line.split(None, 1)[0])
            except ValueError:
                continue
            if t0 <= t <= t1:
                runs.append(line.split("automatic ", 1)[1].split(":", 1)[0])
    return runs


# ---------------------------------------------------------------- ivrd nodes, Kamailio

def node_config(node_dir, seed, sms_url, log_level, node, pg_url):
    """w3.py's config for one node: on PostgreSQL, with this node's SIP, RTP and admin ports."""
    path = w3.ivrd_config(node_dir, seed, sms_url, log_level)
    if pg_url is None:
        return path
    with open(path) as f:
        cfg = f.read()
    for old, new in [
        (f'udp = ["{HOST}:{SIP_PORT}"]', f'udp = ["{HOST}:{node["sip"]}"]'),
        (f'tcp = ["{HOST}:{SIP_PORT}"]', f'tcp = ["{HOST}:{node["sip"]}"]'),
        (f"rtp_port_min = {RTP_MIN}\n", f"rtp_port_min = {node['rtp'][0]}\n"),
        (f"rtp_port_max = {RTP_MAX}\n", f"rtp_port_max = {node['rtp'][1]}\n"),
        (f'listen = "{HOST}:{ADMIN_PORT}"', f'listen = "{HOST}:{node["admin"]}"'),
        (f"path = {w3.toml_str(os.path.join(node_dir, 'ivrd.db'))}\n",
         f"# bench/w3cluster.py: the shared PostgreSQL database (the first node creates the schema\n"
         f"# and imports seed_csv; the next finds them). pool_size, when_away: defaults.\n"
         f"url = {w3.toml_str(pg_url)}\n"),
        ("[sip]\n", "[sip]\n# bench/w3cluster.py: Kamailio (127.0.0.1, trusted below) relays SIPp's calls.\n"),
    ]:
        if old not in cfg:
            raise SystemExit(f"w3.ivrd_config no longer has {old!r}: update w3cluster.node_config")
        cfg = cfg.replace(old, new, 1)
    with open(path, "w") as f:
        f.write(cfg)
    return path


class Node:
    """One ivrd on CPU 0; up once it answers OPTIONS 200 and serves /metrics."""

    def __init__(self, binary, node_dir, cfg, sip_port, admin_port):
        self.dir, self.sip, self.admin = node_dir, sip_port, admin_port
        env = dict(os.environ)
        env.pop("RUST_LOG", None)
        env["NO_COLOR"] = "1"
        self.log_path = os.path.join(node_dir, "ivrd.log")
        self.logf = open(self.log_path, "w")
        t0 = time.monotonic()
        self.p = subprocess.Popen(["taskset", "-c", "0", binary, "run", "--config", cfg],
                                  stdout=self.logf, stderr=subprocess.STDOUT, env=env, cwd=node_dir)
        atexit.register(self.kill_if_running)
        while True:
            if self.p.poll() is not None:
                raise SystemExit(f"ivrd exited at start-up (code {self.p.returncode}); see {self.log_path}")
            if options_status(sip_port) == 200:
                try:
                    metrics_at(admin_port)
                    break
                except OSError:
                    pass
            if time.monotonic() - t0 > 120:
                self.stop()
                raise SystemExit(f"ivrd did not answer OPTIONS 200 within 120 s; see {self.log_path}")
            time.sleep(0.3)
        self.startup_secs = time.monotonic() - t0
        self.pid = self.p.pid

    def metrics(self):
        return metrics_at(self.admin)

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
        return log_counts(self.log_path)


class Kamailio:
    """packaging/kamailio/ivrd-dispatcher.cfg as shipped, with only the listen lines and the
    node list's path replaced (as tests/common/kamailio.rs start_dispatcher does), on CPU 1,
    in the foreground (-DD, -E: log to stderr, into kamailio.log) in a process group of its own."""

    def __init__(self, run_dir, port, node_ports):
        d = os.path.join(run_dir, "kamailio")
        os.makedirs(os.path.join(d, "run"), exist_ok=True)
        lst = os.path.join(d, "ivrd-nodes.list")
        with open(lst, "w") as f:
            for i, p in enumerate(node_ports):
                f.write(f"1 sip:{HOST}:{p} 0 0 name=node-{i + 1}\n")
        with open(os.path.join(bench.ROOT, "packaging", "kamailio", "ivrd-dispatcher.cfg")) as f:
            cfg = f.read()
        for old, new in [("listen=udp:0.0.0.0:5060", f"listen=udp:{HOST}:{port}"),
                         ("listen=tcp:0.0.0.0:5060", f"listen=tcp:{HOST}:{port}"),
                         ("/etc/kamailio/ivrd-nodes.list", lst)]:
            if old not in cfg:
                raise SystemExit(f"packaging/kamailio/ivrd-dispatcher.cfg no longer has {old!r}")
            cfg = cfg.replace(old, new)
        self.cfg = os.path.join(d, "kamailio.cfg")
        with open(self.cfg, "w") as f:
            f.write(cfg)
        self.log_path = os.path.join(d, "kamailio.log")
        self.logf = open(self.log_path, "w")
        self.port = port
        self.p = subprocess.Popen(["taskset", "-c", "1", "kamailio", "-f", self.cfg, "-DD", "-E",
                                   "-m", "64", "-M", "8", "-P", os.path.join(d, "kamailio.pid"),
                                   "-Y", os.path.join(d, "run")],
                                  cwd=d, stdin=subprocess.DEVNULL, stdout=self.logf,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        atexit.register(self.stop)
        t0 = time.monotonic()
        while options_status(port) != 200:
            if self.p.poll() is not None:
                raise SystemExit(f"kamailio exited at start-up ({self.p.returncode}); see {self.log_path}")
            if time.monotonic() - t0 > 20:
                self.stop()
                raise SystemExit(f"kamailio did not answer OPTIONS within 20 s; see {self.log_path}")
            time.sleep(0.2)

    def pids(self):
        return [pid for pid, _, pgid in all_procs() if pgid == self.p.pid]

    def stop(self):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)   # our own process group: kamailio and its workers
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self.pids():
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.p.poll() is None:
            self.p.wait()
        if not self.logf.closed:
            self.logf.close()
        with open(self.log_path, errors="replace") as f:
            text = f.read()
        dests = {}
        for line in text.splitlines():
            if "ivrd-dispatcher: call " in line and " to sip:" in line:
                dst = line.rsplit(" to ", 1)[1].strip()
                dests[dst] = dests.get(dst, 0) + 1
        return dict(calls_to=dests, failed_over=text.count("ivrd-dispatcher: node "),
                    no_node=text.count("no ivrd node is up"),
                    error_lines=sum(" ERROR: " in l for l in text.splitlines()))


# ---------------------------------------------------------------- one step

def ru_secs(a, b):
    return (b.ru_utime + b.ru_stime) - (a.ru_utime + a.ru_stime)


def sum_metrics(nodes):
    tot = {}
    for n in nodes:
        for k, v in n.metrics().items():
            tot[k] = tot.get(k, 0) + v
    return tot


def audit_rows_pg(pg, db):
    rows = pg.copy(db, "SELECT call_id, caller, customer_id, outcome, started_at, ended_at, dtmf_methods, "
                       "detail FROM audit ORDER BY id")
    for r in rows:
        r["started_at"], r["ended_at"] = int(r["started_at"]), int(r["ended_at"])
    return rows


def step(args, name, rate, secs, out, pg):
    conf = CONFIGS[name]
    run_dir = os.path.join(out, "raw", f"{name}-{rate}cps")
    os.makedirs(run_dir, exist_ok=True)
    total = rate * secs
    log(f"{name} ({conf['what']}): {rate} cps for {secs} s ({total} verification calls)")
    seed, inf, mobile_to_call = w3.write_customers(run_dir, total)
    nodes_spec = NODES[:conf["nodes"]]
    extra = [(k, n["sip"]) for n in nodes_spec for k in ("udp", "tcp")] + [("tcp", n["admin"]) for n in nodes_spec]
    if conf["pg"]:
        extra = [e for e in extra if e != ("tcp", ADMIN_PORT)]
    busy = w3.busy_ports(extra if conf["pg"] else [])
    if busy:
        raise SystemExit(f"ports in use: {', '.join(busy)} (another benchmark or ivrd running?)")
    res = dict(config=name, what=conf["what"], rate=rate, secs=secs, total=total, nodes=conf["nodes"],
               store="postgres" if conf["pg"] else "sqlite", kamailio=conf["kamailio"],
               id_wait_ms=args.id_wait_ms, pin_wait_ms=args.pin_wait_ms, pin_dtmf=args.pin_dtmf)
    gw = w3.Gateway(mobile_to_call, args.pin_dtmf)
    nodes, kam, db = [], None, None
    try:
        if conf["pg"]:
            db = f"w3c_{name}_{rate}"
            pg.create_database(db)
            res["database"] = db
        for i, spec in enumerate(nodes_spec):
            node_dir = os.path.join(run_dir, f"node{i + 1}") if conf["pg"] else run_dir
            os.makedirs(node_dir, exist_ok=True)
            for fn in os.listdir(node_dir):
                if fn.startswith("ivrd.db") or fn.startswith("audit-spool"):
                    os.remove(os.path.join(node_dir, fn))
            cfg = node_config(node_dir, seed, gw.url, args.log_level, spec, pg.url(db) if conf["pg"] else None)
            sip_port = spec["sip"] if conf["pg"] else SIP_PORT
            nodes.append(Node(args.ivrd, node_dir, cfg, sip_port, spec["admin"]))
            log(f"  node {i + 1} up on {sip_port} after {nodes[-1].startup_secs:.1f} s")
        res["node_startup_secs"] = [round(n.startup_secs, 2) for n in nodes]
        if conf["kamailio"]:
            kam = Kamailio(run_dir, KAM_PORT, [n.sip for n in nodes])
        if conf["pg"]:
            res["customers_in_db"] = int(pg.psql(db, "SELECT count(*) FROM customers"))
            # Idle: what the nodes send with no calls (after the import's stats are flushed).
            time.sleep(STATS_FLUSH_SECS)
            pg.reset_statements()
            c0, t0 = pg.counters(db), time.monotonic()
            time.sleep(args.idle_secs)
            idle_stmts, c1 = pg.statements(db), pg.counters(db)
            res["idle"] = dict(secs=round(time.monotonic() - t0, 1),
                               statements=statement_summary(idle_stmts),
                               xacts=(c1["xact_commit"] + c1["xact_rollback"]) - (c0["xact_commit"] + c0["xact_rollback"]),
                               top=idle_stmts[:5])
            pg.reset_statements()
            cnt_a, cnt_a_t = pg.counters(db), time.time()
        else:
            res["customers_in_db"] = w3.customer_count(os.path.join(run_dir, "ivrd.db"))
        snap = lambda: dict(t=time.monotonic(), nodes=[bench.proc_sample(n.pid)["cpu"] for n in nodes],
                            children=resource.getrusage(resource.RUSAGE_CHILDREN),
                            me=resource.getrusage(resource.RUSAGE_SELF),
                            stat=bench.read_proc_stat(), metrics=sum_metrics(nodes),
                            kam=proc_cpu(kam.pids()) if kam else 0, pg=proc_cpu(pg.pids()) if conf["pg"] else 0,
                            per_node=[n.metrics() for n in nodes])
        a = snap()
        cmd = w3.sipp_cmd(run_dir, inf, total, rate, args.id_wait_ms, args.pin_wait_ms)
        assert cmd[4] == f"{HOST}:{KAM_PORT}"   # SIPp calls Kamailio, or the SQLite node directly
        with open(os.path.join(run_dir, "sipp.cmd"), "w") as f:
            f.write(" ".join(cmd) + "\n")
        sp = subprocess.Popen(cmd, cwd=run_dir, stdout=open(os.path.join(run_dir, "sipp.out"), "w"),
                              stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        limit = secs + (args.id_wait_ms + args.pin_wait_ms) / 1000 + 150
        peak, samples = 0, []
        while sp.poll() is None and time.monotonic() - t0 < limit:
            time.sleep(1)
            try:
                act = [int(n.metrics().get("ivrd_calls_active", 0)) for n in nodes]
            except OSError:
                continue
            peak = max(peak, sum(act))
            samples.append((round(time.monotonic() - t0, 1), act))
        res["sipp_rc"] = bench.wait_sipp(sp, 5)
        res["sipp_secs"] = time.monotonic() - t0
        for _ in range(60):   # calls SIPp gave up on: let ivrd end them (BYE, audit row)
            if all(n.metrics().get("ivrd_calls_active", 0) == 0 for n in nodes):
                break
            time.sleep(1)
        b = snap()
        secs_w = b["t"] - a["t"]
        node_cores = [(y - x) / bench.CLK_TCK / secs_w for x, y in zip(a["nodes"], b["nodes"])]
        cpu0 = bench.stat_delta(a["stat"], b["stat"], "cpu0")
        cpu1 = bench.stat_delta(a["stat"], b["stat"], "cpu1")
        allc = bench.stat_delta(a["stat"], b["stat"], "cpu")
        res["window"] = dict(secs=secs_w, node_cores=node_cores, cores=sum(node_cores),
                             kamailio_cores=(b["kam"] - a["kam"]) / bench.CLK_TCK / secs_w,
                             postgres_cores=(b["pg"] - a["pg"]) / bench.CLK_TCK / secs_w,
                             # SIPp is the only child reaped in the window; the gateway is this process
                             sipp_cores=ru_secs(a["children"], b["children"]) / secs_w,
                             gateway_cores=ru_secs(a["me"], b["me"]) / secs_w,
                             cpu0_busy_pct=cpu0["busy_pct"], cpu1_busy_pct=cpu1["busy_pct"],
                             cpu0_other_pct=max(0.0, cpu0["busy_pct"] - 100 * sum(node_cores)),
                             steal_pct=allc["steal_pct"], loadavg=open("/proc/loadavg").read().split()[:3])
        res["peak_active"] = peak
        res["samples"] = samples
        res["sipp"] = bench.sipp_stats(run_dir)
        res["sipp_errors"] = sipp_errors(run_dir)
        ma, mb = a["metrics"], b["metrics"]
        res["dtmf"] = w3.metric_delta(ma, mb, "ivrd_dtmf_digits_total")
        res["pin_checks"] = w3.metric_delta(ma, mb, "ivrd_pin_checks_total")
        res["sms"] = w3.metric_delta(ma, mb, "ivrd_sms_total")
        res["sms_sent_ivrd"] = res["sms"].get('{result="sent"}', 0)
        res["calls_by_end"] = w3.metric_delta(ma, mb, "ivrd_calls_total")
        res["calls_per_node"] = [sum(w3.metric_delta(x, y, "ivrd_calls_total").values())
                                 for x, y in zip(a["per_node"], b["per_node"])]
        res["ivrd_retrans"] = mb.get("ivrd_sip_retransmissions_total", 0)
        if conf["pg"]:
            # pg_stat_statements counts as statements end, pg_stat_database once the backends flush
            # (at most 10 s after they go idle): both are read after that, over the same window.
            time.sleep(STATS_FLUSH_SECS)
            stmts, cnt_b = pg.statements(db), pg.counters(db)
            res["db_window_secs"] = time.time() - cnt_a_t
            d = {k: cnt_b[k] - cnt_a[k] for k in cnt_a}
            ss = statement_summary(stmts)
            res["db"] = dict(counters=d, statements=ss, xacts=d["xact_commit"] + d["xact_rollback"],
                             top=stmts[:10], all_statements=len(stmts),
                             autovacuum=autovacuum_runs(pg.log_text(), db, cnt_a_t, time.time()))
            with open(os.path.join(run_dir, "pg_stat_statements.json"), "w") as f:
                json.dump(stmts, f, indent=1)
            rows = audit_rows_pg(pg, db)
        else:
            rows = w3.audit_rows(os.path.join(run_dir, "ivrd.db"))
        with open(os.path.join(run_dir, "audit.csv"), "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=["call_id", "caller", "customer_id", "outcome", "started_at",
                                               "ended_at", "dtmf_methods", "detail"])
            wr.writeheader()
            wr.writerows(rows)
        if not conf["pg"]:   # audit.csv has what the results need; the database goes
            for fn in os.listdir(run_dir):
                if fn.startswith("ivrd.db"):
                    os.remove(os.path.join(run_dir, fn))
    finally:
        if kam:
            res["kamailio_log"] = kam.stop()
        res["ivrd_logs"] = [n.stop() for n in nodes]
        gw.close()
    res.update(gw.summary())
    res.update(w3.analyse(rows, res))
    if "db" in res:
        v = max(1, res["verified"])
        dbr = res["db"]
        st, x, pings = dbr["statements"]["statements"], dbr["xacts"], dbr["statements"]["pings"]
        dbr["per_verified"] = dict(
            statements=st / v, xacts=x / v, round_trips=(st + 2 * x) / v,
            # without the nodes' readiness probe (1 statement in 1 transaction every 2 s a node)
            round_trips_calls=(st - pings + 2 * (x - pings)) / v,
            counted=dbr["statements"]["statements_all"] / v,
            wal_syncs=dbr["counters"]["wal_sync"] / v, wal_records=dbr["counters"]["wal_records"] / v)
    w = res["window"]
    log(f"  SIPp ok={res['sipp'].get('successful')} failed={res['sipp'].get('failed')}; verified "
        f"{res['verified']}/{total} ({fmt(res['verified_per_s'])}/s); outcomes {res['outcomes']}; flow p99 "
        f"{fmt(res['flow_p99_s'])} s; nodes {' + '.join(f'{c:.3f}' for c in w['node_cores'])} cores"
        + (f"; round trips/verified {res['db']['per_verified']['round_trips']:.1f}" if "db" in res else ""))
    return res


# ---------------------------------------------------------------- report

def held(r):
    """Every call verified, and SIPp failed none but for the BYE overtaking the NOTIFY's 200."""
    return (r["verified"] == r["total"]
            and r["sipp"].get("failed", 1) == r["sipp_errors"]["bye_before_notify_200"])


def report(data):
    mf, me = data["machine_start"], data.get("machine_end", data["machine_start"])
    q, pgi = data["quiet"], data.get("postgres", {})
    L = ["# ivrd benchmark, workload 3 on a cluster (issue 16): 2 nodes on PostgreSQL behind Kamailio", "",
         f"- date {mf['date']}; host {mf['host']}; {mf['cpu_model']}, nproc {mf['nproc']}; kernel {mf['kernel']}; "
         f"load at start {' '.join(mf['loadavg'])}, at end {' '.join(me['loadavg'])}",
         (f"- ivrd: commit {data['git']['ivrd_commit']}, built from `git archive` of it (binary {data['ivrd']}, "
          f"built {data['ivrd_mtime']}), so none of the uncommitted changes in the tree's src/ at the start "
          f"({data['git']['src_dirty'] or 'none'}) are in it" if data["git"].get("ivrd_commit") else
          f"- ivrd: {data['git']['describe']} (binary {data['ivrd']}, built {data['ivrd_mtime']}); "
          f"uncommitted changes in src/ at the start: {data['git']['src_dirty'] or 'none'}"),
         f"- command: `{data['command']}`",
         "- machine quiet (no cargo, rustc or target/debug/deps test binary) before the measured runs: "
         + (f"yes (waited {q['waited_secs']} s)" if q.get("quiet") else
            f"**no**: ran anyway after {q.get('waited_secs')} s; still running: {q.get('busy_seen')}" if "quiet" in q
            else "not checked (--no-wait-quiet)"),
         "- pinning: every ivrd node on CPU 0 (both nodes share it); SIPp, Kamailio (all its processes), "
         "PostgreSQL (postmaster and backends) and the SMS gateway (this script) on CPU 1. **2 cores: two "
         "nodes get no more CPU than one.** What this run can show is that nothing is lost or slower when "
         "the calls are split over two nodes that share their state in one database, not a speed-up.",
         f"- PostgreSQL {pgi.get('version', '?')}: throw-away cluster in `{pgi.get('dir', '?')}` "
         f"({pgi.get('fs', '?')}), i.e. on disk, not tmpfs; durable settings: "
         + ", ".join(f"{k} = {v}" for k, v in pgi.get("settings", {}).items()
                     if k in ("fsync", "synchronous_commit", "full_page_writes", "wal_sync_method",
                              "shared_preload_libraries", "pg_stat_statements.track_utility")),
         "- Kamailio: packaging/kamailio/ivrd-dispatcher.cfg as shipped, only the listen lines "
         f"(127.0.0.1:{KAM_PORT}) and the node list replaced; nodes on 15066 (and 15067), each its own "
         "RTP range and admin port. The nodes' ivrd config is w3.py's (limits at their defaults, "
         "`[guard]` global SMS budgets off) with `[store] url` instead of `path`.",
         f"- per step: {data['secs']} s of new calls at the rate, a fresh database (PostgreSQL: a new "
         "database in the same cluster; SQLite: a new file) seeded with rate × secs customers, fresh nodes "
         "and Kamailio; SIPp types the id after "
         f"{data['id_wait_ms'] / 1000:.1f} s and the PIN {data['pin_wait_ms'] / 1000:.1f} s after the SMS "
         f"({data['pin_dtmf']}).", ""]
    steps = data["steps"]
    L += ["## Summary", ""]
    for rate in sorted({r["rate"] for r in steps}):
        row = {r["config"]: r for r in steps if r["rate"] == rate}
        parts = []
        for c, r in row.items():
            part = (f"{c} {r['verified']}/{r['total']} verified ({fmt(r['verified_per_s'])}/s), flow p99 "
                    f"{fmt(r['flow_p99_s'])} s, ivrd {r['window']['cores']:.3f} cores")
            if "db" in r:
                part += f", {r['db']['per_verified']['round_trips']:.1f} DB round trips per verified"
            parts.append(part + ("" if held(r) else " **(not held)**"))
        L.append(f"- {rate} cps: " + "; ".join(parts) + ".")
    if data.get("skipped"):
        L.append(f"- not run (an earlier rate was not held): {data['skipped']} cps")
    L += ["", "## Results", "",
          "| config | rate (cps) | calls | SIPp ok / failed (of which BYE before the NOTIFY's 200) | verified | verified/s | other outcomes | "
          "flow p50 / p99 / max (s) | calls per node | ivrd CPU per node (cores, CPU 0) | ivrd CPU ms per verification | "
          "CPU 1: SIPp / Kamailio / PostgreSQL / gateway (cores) | DB statements / txns per verified | "
          "DB round trips per verified (without the probe) | WAL syncs per verified | load1 |",
          "|" + "---|" * 17]
    for r in steps:
        s, w = r["sipp"], r["window"]
        other = ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items()) if k != "verified") or "none"
        cpu_ms = w["cores"] * w["secs"] * 1000 / max(1, r["verified"])
        if "db" in r:
            pv = r["db"]["per_verified"]
            dbc = (f"{pv['statements']:.1f} / {pv['xacts']:.1f}",
                   f"**{pv['round_trips']:.1f}** ({pv['round_trips_calls']:.1f})", f"{pv['wal_syncs']:.2f}",
                   f"{w['postgres_cores']:.3f}")
        else:
            dbc = ("n/a (SQLite)", "n/a", "n/a", "–")
        kc = f"{w['kamailio_cores']:.3f}" if r["kamailio"] else "–"
        L.append(f"| {r['config']} | {r['rate']} | {r['total']} | {s.get('successful', '?')} / {s.get('failed', '?')} "
                 f"({r['sipp_errors']['bye_before_notify_200']}) | "
                 f"{r['verified']} | {fmt(r['verified_per_s'])} | {other} | "
                 f"{fmt(r['flow_p50_s'], 2)} / {fmt(r['flow_p99_s'], 2)} / {fmt(r['flow_max_s'], 2)} | "
                 f"{' + '.join(f'{c:.0f}' for c in r['calls_per_node'])} | "
                 f"{' + '.join(f'{c:.3f}' for c in w['node_cores'])} | {cpu_ms:.1f} | "
                 f"{w['sipp_cores']:.3f} / {kc} / {dbc[3]} / {w['gateway_cores']:.3f} | "
                 f"{dbc[0]} | {dbc[1]} | {dbc[2]} | {w['loadavg'][0]} |")
    L += ["", "- *SIPp failed (BYE before the NOTIFY's 200)*: the scenario expects ivrd's 200 for SIPp's "
          "NOTIFY before ivrd's BYE. ivrd sends them in that order, back to back; Kamailio's UDP workers (4, "
          "as shipped) relay the two in parallel and the BYE sometimes arrives first. SIPp then aborts the "
          "call (\"unexpected BYE\", and discards the 200 that follows), after the call was verified and "
          "transferred: errors.log of the step has every such pair. Without Kamailio (sqlite1) it does not "
          "happen. (Checked once with a capture on `lo` in a development run of pg1 at 10 cps, 100 calls: "
          "ivrd sent the 200 13-124 µs, median 18 µs, before the BYE in every call; Kamailio delivered "
          "the BYE first in 6, SIPp's 6 failures.) A rate counts as held when every call is verified and SIPp failed no call for another "
          "reason.",
          "- *config*: " + "; ".join(f"`{k}` {v['what']}" for k, v in CONFIGS.items()) + ".",
          "- *verified/s*: audit rows with outcome `verified` (from the shared PostgreSQL database, or the "
          "SQLite file) over the span from the first to the last of them ending; *flow*: their `ended_at − "
          "started_at` (INVITE to the BYE after the transfer, ~22.7 s unloaded, almost all scripted pauses "
          "and prompts).",
          "- *calls per node*: `ivrd_calls_total` delta of each node; *ivrd CPU per node*: `utime + stime` "
          "from /proc over the window (SIPp's start until every call ended); *ms per verification*: all "
          "nodes together. PostgreSQL and Kamailio CPU: all their processes, same window.",
          "- *DB statements*: sum of `calls` in `pg_stat_statements` for the step's database over the window "
          "(reset just before SIPp starts), without the BEGIN/COMMIT/ROLLBACK that `track_utility` also "
          "counts; *txns*: `xact_commit + xact_rollback` of `pg_stat_database` (read after the backends' "
          f"{STATS_FLUSH_SECS} s stats flush; pg_stat_statements is read then too, so both cover SIPp's start "
          f"until {STATS_FLUSH_SECS} s after the last call ended); *round trips* = statements + 2 × transactions, per verified call; "
          "in brackets the same without each node's readiness probe (`" + PING + "` in a read-only "
          "transaction every 2 s per node, whatever the load: 3 round trips each). "
          "*WAL syncs*: `pg_stat_wal.wal_sync` delta (cluster-wide; each is an fdatasync of the WAL).",
          "- CPU 1: SIPp (rusage of the reaped child), Kamailio and PostgreSQL (all their processes, /proc), "
          "the gateway (this script's own rusage).", ""]
    L += ["## Database round trips", ""]
    for r in steps:
        if "db" not in r:
            continue
        dbr, ss, c = r["db"], r["db"]["statements"], r["db"]["counters"]
        pv, v = dbr["per_verified"], max(1, r["verified"])
        idle = r.get("idle", {})
        L += [f"### {r['config']} at {r['rate']} cps ({r['verified']} verified, database `{r.get('database')}`)", "",
              f"- over {r.get('db_window_secs', 0):.0f} s: statements {ss['statements']} ({ss['distinct']} distinct texts incl. transaction control), "
              f"transactions {dbr['xacts']:.0f} (commit {c['xact_commit']:.0f}, rollback {c['xact_rollback']:.0f}); "
              f"per verified call: {pv['statements']:.2f} statements, {pv['xacts']:.2f} transactions, "
              f"**{pv['round_trips']:.2f} round trips** (statements + 2 × transactions)",
              f"- without the readiness probe ({ss['pings']} probes in the window): "
              f"**{pv['round_trips_calls']:.2f} round trips per verified call**",
              f"- counted directly: transaction control in pg_stat_statements "
              f"{', '.join(f'`{k}` {n}' for k, n in ss['txn_control'].items()) or 'none'}; all statements incl. "
              f"those {ss['statements_all']} = {pv['counted']:.2f} per verified call, each one round trip "
              "(the formula also charges BEGIN and COMMIT to transactions that did not send them: single "
              "statements in autocommit, autovacuum's; prepares on a fresh connection are round trips "
              "pg_stat_statements does not see)",
              f"- autovacuum/autoanalyze runs on this database in the window (postgres.log): "
              f"{len(dbr.get('autovacuum', []))}" + (f" ({', '.join(dbr['autovacuum'][:8])})" if dbr.get("autovacuum") else ""),
              f"- WAL: {c['wal_records']:.0f} records ({pv['wal_records']:.1f} per verified), {c['wal_bytes'] / 1024:.0f} KiB, "
              f"{c['wal_sync']:.0f} syncs ({pv['wal_syncs']:.2f} per verified), sync time {c['wal_sync_time']:.0f} ms; "
              f"rows inserted {c['tup_inserted']:.0f}, updated {c['tup_updated']:.0f}, deleted {c['tup_deleted']:.0f} "
              f"({c['tup_inserted'] / v:.1f} / {c['tup_updated'] / v:.1f} / {c['tup_deleted'] / v:.1f} per verified); "
              f"new sessions {c['sessions']:.0f}; deadlocks {c['deadlocks']:.0f}",
              f"- idle before the calls ({idle.get('secs', '?')} s, nodes up, no calls): "
              f"{idle.get('statements', {}).get('statements_all', '?')} statements incl. transaction control, "
              f"{fmt(idle.get('xacts'))} transactions"
              + (": " + "; ".join(f"{t['calls']}× `{t['query'][:80]}`" for t in idle.get("top", [])) if idle.get("top") else ""),
              "", "| calls | per verified | rows | mean ms | statement |", "|---|---|---|---|---|"]
        for t in dbr["top"]:
            qtxt = " ".join(t["query"].split())
            qtxt = (qtxt[:220] + " …") if len(qtxt) > 220 else qtxt
            L.append(f"| {t['calls']} | {t['calls'] / v:.2f} | {t['rows']} | {t['mean_ms']:.3f} | "
                     f"`{qtxt.replace('|', '¦')}` |")
        L.append("")
    L += ["## Details per step", "",
          "CPU0/CPU1 busy % come from /proc/stat, which samples at the scheduler tick; ivrd's 1 ms pacer "
          "aliases with it (bench/README.md, *What each figure means*), so they are not reliable here. The "
          "process figures above (ivrd, PostgreSQL, Kamailio, SIPp, gateway) are the scheduler's exact runtimes.",
          ""]
    for r in steps:
        kl = r.get("kamailio_log")
        L.append(f"- {r['config']} {r['rate']} cps: SIPp ran {r['sipp_secs']:.0f} s (rc {r['sipp_rc']}), aborts "
                 f"{r['sipp_errors']['aborts'] or 'none'}, retrans "
                 f"{r['sipp'].get('retrans', '?')}, ivrd SIP retrans {r['ivrd_retrans']:.0f}; customers in db "
                 f"{r['customers_in_db']}; node start-up {r['node_startup_secs']} s; SMS sent {r['sms_sent_ivrd']:.0f} / "
                 f"gateway POSTs {r['sms_posts']}, PINs relayed {r['pins_delivered']} ({r['pins_undelivered']} "
                 f"undelivered); PIN checks {', '.join(f'{k} {v:.0f}' for k, v in sorted(r['pin_checks'].items())) or '0'}; "
                 f"digits sent/counted/lost {r['digits_sent']}/{r['digits_counted']:.0f}/{r['digits_lost']:.0f}; "
                 f"calls by end {', '.join(f'{k} {v:.0f}' for k, v in sorted(r['calls_by_end'].items()))}; peak calls "
                 f"{r['peak_active']}; CPU0 busy {r['window']['cpu0_busy_pct']:.0f} %, CPU1 busy "
                 f"{r['window']['cpu1_busy_pct']:.0f} %, steal {r['window']['steal_pct']:.1f} %; ivrd log warn/error lines "
                 + ", ".join(f"node {i + 1} {x['warn_lines']}/{x['error_lines']}" for i, x in enumerate(r["ivrd_logs"]))
                 + (f"; Kamailio: calls to {kl['calls_to']}, failovers {kl['failed_over']}, no node {kl['no_node']}, "
                    f"ERROR lines {kl['error_lines']}" if kl else ""))
        for i, x in enumerate(r["ivrd_logs"]):
            for line in x["first_warn_error"][:3]:
                L.append(f"  - node {i + 1} log: `{line[:200]}`")
        for row in r["not_verified"][:5]:
            L.append(f"  - not verified: {row['call_id']} customer {row['customer_id']} → {row['outcome']} ({row['detail']})")
    L.append("")
    return L


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ivrd", default=os.path.join(bench.ROOT, "target", "release", "ivrd"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--configs", default="sqlite1,pg1,pg2")
    ap.add_argument("--rates", default="5,10")
    ap.add_argument("--then", default="", help="further rates, run only while every config held the previous one")
    ap.add_argument("--secs", type=int, default=30)
    ap.add_argument("--idle-secs", type=int, default=20, help="idle window before the calls (PostgreSQL configs)")
    ap.add_argument("--id-wait-ms", type=int, default=w3.ID_WAIT_MS)
    ap.add_argument("--pin-wait-ms", type=int, default=w3.PIN_WAIT_MS)
    ap.add_argument("--pin-dtmf", default="rfc2833", choices=["info", "rfc2833"])
    ap.add_argument("--log-level", default="warn")
    ap.add_argument("--pg-dir", default="/tmp", help="where the PostgreSQL cluster goes (default /tmp: on disk)")
    ap.add_argument("--ivrd-commit", default="",
                    help="the commit --ivrd was built from, when not this tree (e.g. a `git archive` build)")
    ap.add_argument("--no-wait-quiet", action="store_true")
    ap.add_argument("--render", action="store_true", help="only write results.md again from --out's results.json")
    ap.add_argument("--quiet-max-secs", type=int, default=1200)
    args = ap.parse_args()
    args.ivrd = os.path.abspath(args.ivrd)
    configs = args.configs.split(",")
    for c in configs:
        if c not in CONFIGS:
            raise SystemExit(f"unknown config {c} (known: {', '.join(CONFIGS)})")
    out = os.path.abspath(args.out)
    if args.render:
        with open(os.path.join(out, "results.json")) as f:
            data = json.load(f)
        with open(os.path.join(out, "results.md"), "w") as f:
            f.write("\n".join(report(data)))
        return
    os.makedirs(os.path.join(out, "raw"), exist_ok=True)
    git = lambda *a: subprocess.run(["git", "-C", bench.ROOT] + list(a), capture_output=True, text=True).stdout.strip()
    data = dict(command=" ".join(["bench/w3cluster.py"] + sys.argv[1:]), ivrd=args.ivrd,
                ivrd_mtime=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(args.ivrd))),
                git=dict(describe=git("describe", "--always", "--dirty"), head=git("rev-parse", "HEAD"),
                         src_dirty=", ".join(git("status", "--short", "src").splitlines()),
                         ivrd_commit=args.ivrd_commit),
                secs=args.secs, id_wait_ms=args.id_wait_ms, pin_wait_ms=args.pin_wait_ms, pin_dtmf=args.pin_dtmf,
                quiet={}, steps=[])

    def save():
        data["machine_end"] = bench.machine_facts()
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(data, f, indent=1, default=str)
        with open(os.path.join(out, "results.md"), "w") as f:
            f.write("\n".join(report(data)))

    if not args.no_wait_quiet:
        data["quiet"] = wait_quiet(args.quiet_max_secs)
        log(f"quiet: {data['quiet']}")
    data["machine_start"] = bench.machine_facts()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass
    os.sched_setaffinity(0, {1})     # the gateway shares CPU 1 with SIPp, Kamailio, PostgreSQL
    pg = None
    if any(CONFIGS[c]["pg"] for c in configs):
        if w3.busy_ports([("tcp", PG_PORT)]):
            raise SystemExit(f"port {PG_PORT} in use")
        pg = Postgres(args.pg_dir, PG_PORT, os.path.join(out, "raw", "postgres.log"))
        data["postgres"] = dict(version=pg.version, dir=pg.dir, fs=" ".join(pg.fs.split()), settings=pg.settings)
        log(f"PostgreSQL {pg.version} on {HOST}:{PG_PORT}, data in {pg.data} ({data['postgres']['fs']})")
    rates = [int(x) for x in args.rates.split(",") if x]
    then = [int(x) for x in args.then.split(",") if x]
    try:
        for rate in rates + then:
            if rate in then and not all(held(r) for r in data["steps"]):
                log(f"not running {rate} cps: an earlier step lost calls")
                data["skipped"] = data.get("skipped", []) + [rate]
                continue
            for c in configs:
                data["steps"].append(step(args, c, rate, args.secs, out, pg))
                save()
    finally:
        if pg:
            pg.stop()
        save()
    log(f"results: {os.path.join(out, 'results.md')}")


if __name__ == "__main__":
    main()
