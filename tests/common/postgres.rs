//! A throw-away PostgreSQL cluster on loopback for the store tests: its own data directory in a
//! temporary directory, `pg_ctl start` on 127.0.0.1 with a port from the test port pool, and
//! gone again when the [`Postgres`] is dropped. Stop it, kill it, start it again on the same
//! port: the data stays.
//!
//! The server binaries come from PATH or, as Debian installs them (package `postgresql`), from
//! /usr/lib/postgresql/<version>/bin, newest version first; without them the test fails with
//! the install command, it never skips. `psql` is the one beside them (or PATH's).
//!
//! The cluster is made for speed, not durability: `initdb --no-sync`, `fsync = off`,
//! `full_page_writes = off`, and its directory on /dev/shm (tmpfs) when that has room. A
//! commit still hands its WAL to the kernel before it returns (`synchronous_commit` stays on),
//! so [`Postgres::kill`] loses no committed transaction; only a crash of the machine would.
//! Its superuser is [`PG_USER`], every local and loopback connection is trusted (no password),
//! and its Unix socket lives in the temporary directory, so nothing outside it is touched.
//!
//! Speed (2 cores): `initdb` takes 0.6 s on tmpfs (1.7 s on this machine's ext4), so it runs
//! once per PostgreSQL version into a template under target/tmp ([`template`]) and every
//! cluster is a copy of that (0.08 s); start and stop take about 0.1 s each (pg_ctl polls
//! every 100 ms). A new cluster is ready in about 0.2 s, the first of a fresh checkout in 1 s.
//!
//! PostgreSQL refuses to run as root. When the tests run as root (CI), `initdb`, `pg_ctl` and
//! so the server run as the `postgres` system user (the Debian package creates it; `nobody`
//! otherwise): the children get its uid and gid (`CommandExt::uid`/`gid`; std also drops
//! root's supplementary groups) and the cluster's directory is chowned to it. A developer's
//! own user needs none of that. `psql` runs as the test's user either way, over TCP.
//!
//! `pg_ctl` detaches the server (its own session), so a test process that dies without
//! dropping its [`Postgres`] (SIGKILL, a timeout, Ctrl-C) would leave it running. A watchdog
//! shell per cluster waits on a pipe from the test process and, when that closes, stops the
//! server (immediate) and removes the directory.

use super::*;
use std::os::unix::process::CommandExt;

/// The cluster's superuser (`initdb -U`), the user of every [`Postgres::url`].
pub const PG_USER: &str = "ivrd";

/// How long `pg_ctl` may wait for the server to start or stop (several test binaries start
/// clusters at once on a 2-core machine).
const PG_CTL_TIMEOUT_SECS: &str = "60";

/// Longest Unix socket path (`sun_path` is 108 bytes with its NUL); the server would refuse a
/// longer one, so a very long temporary directory gets no socket (TCP only).
const MAX_SOCKET_PATH: usize = 107;

pub struct Postgres {
    dir: tempfile::TempDir,
    /// The directory holding initdb, pg_ctl and postgres.
    bin: PathBuf,
    psql: PathBuf,
    port: u16,
    /// Who runs initdb, pg_ctl and the server: (uid, gid) of an unprivileged user when the
    /// tests run as root, None otherwise.
    run_as: Option<(u32, u32)>,
    running: bool,
    /// SIGSTOPped by [`Postgres::freeze`].
    frozen: bool,
    /// Stops the server and removes the directory if this process dies (see the module doc).
    watchdog: Option<Child>,
}

impl Postgres {
    /// Creates a cluster in a new temporary directory and starts it on a free loopback port;
    /// returns once it accepts connections.
    pub fn new() -> Postgres {
        let (bin, psql) = find_binaries();
        let run_as = unprivileged_user();
        let dir = tempfile::Builder::new()
            .prefix("ivrd-pg-")
            .tempdir_in(clusters_dir())
            .expect("create temp dir");
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("chown the cluster's directory to the server's user");
        }
        let mut pg = Postgres {
            dir,
            bin,
            psql,
            port: free_tcp_port(),
            run_as,
            running: false,
            frozen: false,
            watchdog: None,
        };
        pg.create_cluster();
        pg.spawn_watchdog();
        pg.start();
        pg
    }

    /// The loopback port the server listens on (the same across [`Postgres::stop`] and
    /// [`Postgres::start`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The server's log (every start and stop of this cluster, appended).
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.log_path()).unwrap_or_default()).into_owned()
    }

    /// A connection URL for database `db` as [`PG_USER`] over TCP, e.g.
    /// `postgres://ivrd@127.0.0.1:10042/ivrd` (no password: loopback is trusted).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{PG_USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Freezes the server (SIGSTOP to the postmaster and every process it started), as a hung
    /// host or a stalled disk would: connections stay open and the kernel still acknowledges
    /// what clients send, but nothing answers, so only a client's own deadline ends a wait.
    /// [`Postgres::thaw`] lets it go on; dropping the cluster thaws it first.
    pub fn freeze(&mut self) {
        self.signal_server(libc::SIGSTOP);
        self.frozen = true;
    }

    /// Lets a frozen server go on where it stopped.
    pub fn thaw(&mut self) {
        self.signal_server(libc::SIGCONT);
        self.frozen = false;
    }

    /// Sends `signal` to the postmaster (its pid is the first line of `postmaster.pid`) and
    /// to every process whose parent it is (the backends and helpers).
    fn signal_server(&self, signal: i32) {
        let pid_file = fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .expect("postmaster.pid: is the server running?");
        let postmaster: i32 = pid_file
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("a pid on postmaster.pid's first line");
        let mut pids = vec![postmaster];
        for entry in fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            // /proc/PID/stat: "PID (comm) STATE PPID ...", comm may hold spaces.
            let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(postmaster) {
                pids.push(pid);
            }
        }
        for pid in pids {
            // SAFETY: kill(2) with a pid read from the cluster's own files; no memory involved.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    /// Whether the server was started and not stopped or killed since.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// `CREATE DATABASE name` (owned by [`PG_USER`], UTF8); panics if it fails.
    pub fn create_database(&self, name: &str) {
        let ident = format!("\"{}\"", name.replace('"', "\"\""));
        if let Err(e) = self.psql("postgres", &format!("CREATE DATABASE {ident}")) {
            panic!("CREATE DATABASE {ident} failed: {e}");
        }
    }

    /// Runs `sql` (one or more statements) with `psql` on database `db` and returns the rows
    /// of its results as psql prints them unaligned without headers (`-At`: one row a line,
    /// columns separated by `|`), trimmed. Stops at the first error and returns psql's
    /// message; a stopped server is an error too.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let mut cmd = Command::new(&self.psql);
        clean_env(&mut cmd);
        cmd.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
        ])
        .arg("-p")
        .arg(self.port.to_string())
        .args(["-U", PG_USER, "-d", db, "-f", "-"])
        .env("PGCONNECT_TIMEOUT", "5")
        .env("PGCLIENTENCODING", "UTF8")
        .current_dir(self.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.psql.display()));
        // psql connects before it reads its input; if that fails it exits without reading
        // (EPIPE here), and its exit status says why.
        let _ = child
            .stdin
            .take()
            .expect("psql stdin")
            .write_all(sql.as_bytes());
        let out = child.wait_with_output().expect("wait for psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!(
                "psql exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Starts the server again on the same data directory and port (after [`Postgres::stop`]
    /// or [`Postgres::kill`]) and waits until it accepts connections. Does nothing if it runs.
    pub fn start(&mut self) {
        if self.running {
            return;
        }
        let data = self.data_dir();
        let log = self.log_path();
        let started = Instant::now();
        let out = self.pg_ctl(&[
            "start".as_ref(),
            "-D".as_ref(),
            data.as_os_str(),
            "-l".as_ref(),
            log.as_os_str(),
            "-w".as_ref(),
            "-t".as_ref(),
            PG_CTL_TIMEOUT_SECS.as_ref(),
        ]);
        assert!(
            out.status.success(),
            "pg_ctl start on port {} failed ({}) after {:?}: {}\n--- postgres log ---\n{}",
            self.port,
            out.status,
            started.elapsed(),
            output_text(&out),
            self.log()
        );
        self.running = true;
    }

    /// Stops the server the clean way (`pg_ctl stop -m fast`: open transactions are rolled
    /// back, clients are disconnected, a checkpoint is written) and waits until it is down.
    /// Connections are refused until [`Postgres::start`].
    pub fn stop(&mut self) {
        self.shut_down("fast");
    }

    /// Stops the server abruptly (`pg_ctl stop -m immediate`: every process quits at once,
    /// without a checkpoint, as in a crash; the next start runs crash recovery).
    pub fn kill(&mut self) {
        self.shut_down("immediate");
    }

    fn shut_down(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        let data = self.data_dir();
        let out = self.pg_ctl(&[
            "stop".as_ref(),
            "-D".as_ref(),
            data.as_os_str(),
            "-m".as_ref(),
            mode.as_ref(),
            "-w".as_ref(),
            "-t".as_ref(),
            PG_CTL_TIMEOUT_SECS.as_ref(),
        ]);
        // Stopped or not, don't try again from Drop (an error here panics the test anyway).
        self.running = false;
        assert!(
            out.status.success(),
            "pg_ctl stop -m {mode} failed ({}): {}\n--- postgres log ---\n{}",
            out.status,
            output_text(&out),
            self.log()
        );
    }

    /// The cluster's `data/`: a copy of the [`template`] (or initdb's own, without one) with
    /// this cluster's settings appended to its postgresql.conf.
    fn create_cluster(&self) {
        let data = self.data_dir();
        match template(&self.bin, self.run_as) {
            Some(template) => copy_tree(&template, &data, self.run_as),
            None => run_initdb(&self.bin, &data, self.run_as),
        }
        let socket_dir = self.dir.path().display().to_string();
        let socket_dir = if socket_dir.len() + "/.s.PGSQL.65535".len() <= MAX_SOCKET_PATH {
            socket_dir
        } else {
            String::new()
        };
        let settings = format!(
            "\n# tests/common/postgres.rs: a throw-away test cluster\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{socket}'\n\
             fsync = off\n\
             full_page_writes = off\n",
            port = self.port,
            socket = socket_dir.replace('\'', "''"),
        );
        let conf = data.join("postgresql.conf");
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .unwrap_or_else(|e| panic!("open {}: {e}", conf.display()));
        file.write_all(settings.as_bytes())
            .unwrap_or_else(|e| panic!("write {}: {e}", conf.display()));
    }

    /// See the module doc: `sh` reads its stdin, whose other end only this process holds;
    /// EOF means the process is gone (a dropped `Postgres` kills the watchdog first).
    fn spawn_watchdog(&mut self) {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"read -r _; "$0" stop -D "$1/data" -m immediate -w; rm -rf "$1""#)
            .arg(self.bin.join("pg_ctl"))
            .arg(self.dir.path())
            .current_dir(self.dir.path())
            // Its own process group: a Ctrl-C to the test run must not kill it before it
            // has done its job.
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        clean_env(&mut cmd);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        self.watchdog = Some(cmd.spawn().expect("spawn the cluster's watchdog (sh)"));
    }

    /// A command for a server binary (initdb, pg_ctl), as the unprivileged user if needed.
    fn server_command(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(name));
        clean_env(&mut cmd);
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn pg_ctl(&self, args: &[&std::ffi::OsStr]) -> std::process::Output {
        // The server inherits nothing of these pipes: pg_ctl starts it with its output in
        // the log file (-l), so output() returns as soon as pg_ctl exits.
        self.server_command("pg_ctl")
            .args(args)
            .output()
            .expect("run pg_ctl")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.frozen {
            self.thaw();
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        // Also after a failed start or stop, which may leave a server behind.
        if self.running || self.data_dir().join("postmaster.pid").exists() {
            self.running = false;
            let data = self.data_dir();
            // Immediate: the data goes away with the directory anyway.
            let _ = self.pg_ctl(&[
                "stop".as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
            ]);
        }
        if std::thread::panicking() {
            eprintln!(
                "---- postgres log (port {}) ----\n{}\n---- end of postgres log ----",
                self.port,
                self.log()
            );
        }
        // The TempDir removes the directory after this.
    }
}

/// Where the clusters' directories go: /dev/shm, a tmpfs, when it has room for many (a data
/// directory is about 40 MB), else the temporary directory. On a disk file system, copying
/// the template's thousand files takes about 1 s of kernel time here (ext4 mounted with
/// `discard`), on tmpfs 0.08 s; Docker's default /dev/shm (64 MB) is too small and is skipped.
fn clusters_dir() -> PathBuf {
    const MIN_FREE: u64 = 1 << 30;
    let shm = Path::new("/dev/shm");
    let free = || -> Option<u64> {
        let path = std::ffi::CString::new("/dev/shm").ok()?;
        // SAFETY: statvfs(3) fills the zeroed struct it is given from a NUL-terminated path.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
            return None;
        }
        // Both are u64 here, narrower on some 32-bit targets.
        #[allow(clippy::useless_conversion)]
        Some(u64::from(stat.f_bavail) * u64::from(stat.f_frsize))
    };
    if shm.is_dir() && free().is_some_and(|bytes| bytes >= MIN_FREE) {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// What `initdb` makes, whatever the cluster: its superuser, trust for every local and
/// loopback connection, UTF8 without a locale, and no fsync of its files (`--no-sync`).
const INITDB_ARGS: &[&str] = &[
    "-U",
    PG_USER,
    "-A",
    "trust",
    "-E",
    "UTF8",
    "--no-locale",
    "--no-sync",
    "--no-instructions",
];

/// This process's template data directory, made once per PostgreSQL version and
/// [`INITDB_ARGS`] and kept under Cargo's CARGO_TARGET_TMPDIR (target/tmp): every cluster is a
/// copy of it, a tenth of what `initdb` takes. The first test to need it runs `initdb` (as the
/// server's user, into a fresh temporary directory), copies the result next to the cache entry
/// and renames it into place, so a test binary running beside this one sees either no
/// template or a whole one. All copies share initdb's system identifier, which only
/// replication would notice. None if this user can neither read nor make the cache (a target
/// directory of another user's): then every cluster runs `initdb` itself.
fn template(bin: &Path, run_as: Option<(u32, u32)>) -> Option<PathBuf> {
    static TEMPLATE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let initdb = bin.join("initdb");
            let version = Command::new(&initdb)
                .arg("--version")
                .output()
                .unwrap_or_else(|e| panic!("run {} --version: {e}", initdb.display()));
            let mut hasher = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(&(&version.stdout, bin, INITDB_ARGS), &mut hasher);
            let key = std::hash::Hasher::finish(&hasher);
            let cache = Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("postgres-template-{key:016x}"));
            let usable = |dir: &Path| fs::read(dir.join("PG_VERSION")).is_ok();
            if usable(&cache) {
                return Some(cache);
            }
            let partial = cache.with_extension(format!("partial-{}", std::process::id()));
            let _ = fs::remove_dir_all(&partial);
            let writable = cache
                .parent()
                .is_some_and(|parent| fs::create_dir_all(parent).is_ok())
                && fs::create_dir(&partial).is_ok();
            if !writable {
                return None;
            }
            let _ = fs::remove_dir(&partial);
            // initdb as the server's user wants a directory that user can reach; target/ may
            // be under a home directory it cannot enter.
            let scratch = tempfile::Builder::new()
                .prefix("ivrd-pg-initdb-")
                .tempdir_in(clusters_dir())
                .expect("create temp dir");
            if let Some((uid, gid)) = run_as {
                std::os::unix::fs::chown(scratch.path(), Some(uid), Some(gid))
                    .expect("chown the initdb directory to the server's user");
            }
            let data = scratch.path().join("data");
            run_initdb(bin, &data, run_as);
            copy_tree(&data, &partial, None);
            if fs::rename(&partial, &cache).is_err() {
                // Another test binary was quicker: use its template.
                let _ = fs::remove_dir_all(&partial);
            }
            usable(&cache).then_some(cache)
        })
        .clone()
}

/// `initdb` into `data` (whose parent the server's user must be able to write).
fn run_initdb(bin: &Path, data: &Path, run_as: Option<(u32, u32)>) {
    let parent = data.parent().expect("a data directory has a parent");
    let mut cmd = Command::new(bin.join("initdb"));
    clean_env(&mut cmd);
    cmd.current_dir(parent)
        .stdin(Stdio::null())
        .arg("-D")
        .arg(data)
        .args(INITDB_ARGS);
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
    let started = Instant::now();
    let out = cmd.output().expect("run initdb");
    assert!(
        out.status.success(),
        "initdb {} failed ({}){} after {:?}: {}",
        data.display(),
        out.status,
        run_as.map_or(String::new(), |(uid, _)| format!(
            " as uid {uid} (the tests run as root; that user must be able to reach {})",
            parent.display()
        )),
        started.elapsed(),
        output_text(&out)
    );
}

/// Copies the directory tree `from` to `to` (which must not exist) with its permission bits,
/// owned by `owner` if given (else by this process's user).
fn copy_tree(from: &Path, to: &Path, owner: Option<(u32, u32)>) {
    let fail = |what: &str, path: &Path, e: std::io::Error| -> ! {
        panic!("{what} {}: {e}", path.display())
    };
    let meta = fs::metadata(from).unwrap_or_else(|e| fail("stat", from, e));
    fs::create_dir(to).unwrap_or_else(|e| fail("create", to, e));
    fs::set_permissions(to, meta.permissions()).unwrap_or_else(|e| fail("chmod", to, e));
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(to, Some(uid), Some(gid)).unwrap_or_else(|e| fail("chown", to, e));
    }
    for entry in fs::read_dir(from).unwrap_or_else(|e| fail("read", from, e)) {
        let entry = entry.unwrap_or_else(|e| fail("read", from, e));
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().unwrap_or_else(|e| fail("stat", &src, e));
        if kind.is_dir() {
            copy_tree(&src, &dst, owner);
        } else if kind.is_file() {
            // fs::copy copies the permission bits too.
            fs::copy(&src, &dst).unwrap_or_else(|e| fail("copy", &src, e));
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&dst, Some(uid), Some(gid))
                    .unwrap_or_else(|e| fail("chown", &dst, e));
            }
        } else {
            panic!(
                "{}: neither a file nor a directory in a data directory",
                src.display()
            );
        }
    }
}

/// stdout and stderr of a finished command, for a failure message.
fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .trim()
    .to_string()
}

/// The test user's PG* variables (PGHOST, PGPORT, PGDATA, PGUSER, PGCLUSTER, ...) would point
/// the commands elsewhere; C messages whatever the user's locale.
fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("LC_ALL", "C");
}

/// The directory with initdb, pg_ctl and postgres, and the psql to use: PATH first (a symlink
/// such as /usr/local/bin/initdb is followed to its real directory), then
/// /usr/lib/postgresql/<version>/bin, newest version first. Panics with the install command
/// if there is none.
pub fn find_binaries() -> (PathBuf, PathBuf) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let on_path = std::env::split_paths(&path)
        .map(|dir| dir.join("initdb"))
        .filter(|initdb| is_executable(initdb))
        .filter_map(|initdb| fs::canonicalize(initdb).ok())
        .filter_map(|initdb| initdb.parent().map(Path::to_path_buf));
    let mut versioned: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version = name
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versioned.sort_by(|a, b| b.0.cmp(&a.0));
    let bin = on_path
        .chain(versioned.into_iter().map(|(_, dir)| dir))
        .find(|dir| ["initdb", "pg_ctl", "postgres"].iter().all(|b| is_executable(&dir.join(b))))
        .unwrap_or_else(|| {
            panic!(
                "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH nor in /usr/lib/postgresql/*/bin: run scripts/install-test-deps.sh, or apt-get install postgresql"
            )
        });
    let psql = Some(bin.join("psql"))
        .filter(|p| is_executable(p))
        .or_else(|| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("psql"))
                .find(|p| is_executable(p))
        })
        .unwrap_or_else(|| {
            panic!(
                "psql not found in {} nor on PATH: run scripts/install-test-deps.sh, or apt-get install postgresql",
                bin.display()
            )
        });
    (bin, psql)
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// (uid, gid) to run the server as when this process is root: `postgres` (created by the
/// Debian package), else `nobody`. None when not root.
fn unprivileged_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let lookup = |user: &str| {
        passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            match fields.as_slice() {
                [name, _, uid, gid, ..] if *name == user => {
                    Some((uid.parse().ok()?, gid.parse().ok()?))
                }
                _ => None,
            }
        })
    };
    Some(lookup("postgres").or_else(|| lookup("nobody")).unwrap_or_else(|| {
        panic!(
            "the tests run as root, which PostgreSQL refuses, and there is no postgres or nobody user in /etc/passwd to run it as: apt-get install postgresql creates postgres"
        )
    }))
}
