//! systemd notifications (`sd_notify(3)`) without libsystemd: one datagram per message to the
//! Unix socket named by `$NOTIFY_SOCKET` (a path, or an abstract socket when it starts with
//! `@`), and the service watchdog (`WATCHDOG_USEC`, `WATCHDOG_PID`).
//!
//! Everything is a no-op when `NOTIFY_SOCKET` is unset, so the daemon behaves the same under a
//! terminal, a container or systemd. A failed send is logged and otherwise ignored: losing a
//! notification must never take the daemon down (systemd then times the service out, which is
//! the right signal).
//!
//! The watchdog is tied to liveness, not to the process merely existing: every long-running
//! loop owns a slot in [`Heartbeats`] and bumps it each turn; [`spawn_watchdog`] sends
//! `WATCHDOG=1` only if every slot moved since the previous check. A loop that is stuck (a
//! deadlock, a blocked runtime thread) therefore stops the pings, and systemd restarts the
//! service after `WatchdogSec=`.
//!
//! `NOTIFY_SOCKET` is not removed from the environment: ivrd starts no child processes, and
//! changing the environment of a multi-threaded process is unsound.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{debug, warn};

/// How long one send may block when systemd does not read its socket.
const SEND_TIMEOUT: Duration = Duration::from_millis(200);

/// Sends state changes to systemd; every method is a no-op without `NOTIFY_SOCKET`.
pub struct Notifier {
    target: Option<Target>,
    /// `WATCHDOG_USEC` when it applies to this process.
    watchdog_usec: Option<u64>,
}

struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// For log messages.
    name: String,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("socket", &self.target.as_ref().map(|t| t.name.as_str()))
            .field("watchdog_usec", &self.watchdog_usec)
            .finish()
    }
}

impl Notifier {
    /// From `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`.
    pub fn from_env() -> Notifier {
        Self::from_vars(
            std::env::var_os("NOTIFY_SOCKET"),
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        )
    }

    /// [`Notifier::from_env`] over explicit values (testable without touching the environment).
    pub fn from_vars(
        notify_socket: Option<OsString>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        our_pid: u32,
    ) -> Notifier {
        let target = notify_socket.filter(|s| !s.is_empty()).and_then(|s| {
            match Target::open(s.as_bytes()) {
                Ok(t) => Some(t),
                Err(e) => {
                    warn!(socket = %s.to_string_lossy(), error = %e, "NOTIFY_SOCKET unusable; not notifying systemd");
                    None
                }
            }
        });
        let pid_is_ours = match watchdog_pid {
            None => true,
            Some(pid) => pid.trim().parse::<u32>().ok() == Some(our_pid),
        };
        let watchdog_usec = watchdog_usec
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&us| us > 0 && pid_is_ours);
        Notifier {
            target,
            watchdog_usec,
        }
    }

    /// Notifies the datagram socket at `path` (a filesystem path, or `@name` for an abstract
    /// socket), with no watchdog. For tests.
    pub fn with_socket(path: impl AsRef<Path>) -> Notifier {
        Self::from_vars(
            Some(path.as_ref().as_os_str().to_owned()),
            None,
            None,
            std::process::id(),
        )
    }

    /// Sets the watchdog timeout as if `WATCHDOG_USEC` said so (for tests).
    pub fn with_watchdog_usec(mut self, usec: u64) -> Notifier {
        self.watchdog_usec = (usec > 0).then_some(usec);
        self
    }

    /// Whether notifications go anywhere.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Start-up is complete.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// A free-form status line (`systemctl status` shows it).
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    /// A reload has started; systemd waits for [`Notifier::reloaded`].
    pub fn reloading(&self) {
        if self.target.is_none() {
            return;
        }
        match monotonic_usec() {
            Some(us) => self.send(&format!("RELOADING=1\nMONOTONIC_USEC={us}")),
            None => self.send("RELOADING=1"),
        }
    }

    /// A reload finished (successfully or not: the daemon runs either way).
    pub fn reloaded(&self, status: &str) {
        self.ready(status);
    }

    /// Shutdown has started (the drain).
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// The watchdog interval from WATCHDOG_USEC (only if WATCHDOG_PID is unset or ours),
    /// halved, as sd_watchdog_enabled(3) recommends. `None` without a notify socket too.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.target.as_ref()?;
        self.watchdog_usec
            .map(|us| Duration::from_micros((us / 2).max(1)))
    }

    /// "Still alive".
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    fn send(&self, msg: &str) {
        let Some(t) = &self.target else { return };
        match t.socket.send_to_addr(msg.as_bytes(), &t.addr) {
            Ok(_) => debug!(socket = %t.name, msg = %msg.replace('\n', " "), "notified systemd"),
            Err(e) => {
                warn!(socket = %t.name, error = %e, msg = %msg.replace('\n', " "), "cannot notify systemd")
            }
        }
    }
}

impl Target {
    fn open(name: &[u8]) -> io::Result<Target> {
        let addr = if let Some(abstract_name) = name.strip_prefix(b"@") {
            abstract_addr(abstract_name)?
        } else if name.starts_with(b"/") {
            SocketAddr::from_pathname(Path::new(std::ffi::OsStr::from_bytes(name)))?
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not an absolute path or @abstract name",
            ));
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_write_timeout(Some(SEND_TIMEOUT))?;
        Ok(Target {
            socket,
            addr,
            name: String::from_utf8_lossy(name).into_owned(),
        })
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_addr(name: &[u8]) -> io::Result<SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_addr(_name: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract sockets need Linux",
    ))
}

/// A status must not start a new `KEY=` line.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// `CLOCK_MONOTONIC` in microseconds, as systemd expects in `MONOTONIC_USEC`.
/// (`std::time::Instant` reads the same clock but does not expose its value.)
#[cfg(target_os = "linux")]
pub fn monotonic_usec() -> Option<u64> {
    use std::ffi::{c_int, c_long};
    /// `struct timespec` as glibc and musl define it on Linux (`time_t` is `long`).
    #[repr(C)]
    struct Timespec {
        tv_sec: c_long,
        tv_nsec: c_long,
    }
    const CLOCK_MONOTONIC: c_int = 1;
    unsafe extern "C" {
        fn clock_gettime(clock: c_int, tp: *mut Timespec) -> c_int;
    }
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes to it.
    let rc = unsafe { clock_gettime(CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 || ts.tv_sec < 0 || ts.tv_nsec < 0 {
        return None;
    }
    Some(ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000)
}

#[cfg(not(target_os = "linux"))]
pub fn monotonic_usec() -> Option<u64> {
    None
}

/// Liveness: each loop bumps its own counter; the watchdog pings only if every counter moved
/// since the last check.
pub struct Heartbeats {
    names: Vec<&'static str>,
    counters: Vec<AtomicU64>,
    /// The counters as the previous check saw them.
    seen: Mutex<Vec<u64>>,
}

impl Heartbeats {
    /// One counter per name; the index into `names` is the loop's `idx` for [`Heartbeats::beat`].
    pub fn new(names: &[&'static str]) -> Arc<Heartbeats> {
        Arc::new(Heartbeats {
            names: names.to_vec(),
            counters: names.iter().map(|_| AtomicU64::new(0)).collect(),
            seen: Mutex::new(vec![0; names.len()]),
        })
    }

    /// Loop `idx` made progress. Cheap (one relaxed atomic add); an unknown index is ignored.
    pub fn beat(&self, idx: usize) {
        if let Some(c) = self.counters.get(idx) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `Ok` if every loop beat since the previous call (the first call compares with the
    /// start), else the name of the first loop that did not. Either way the next call
    /// measures from now.
    pub fn all_alive_since_last_check(&self) -> Result<(), &'static str> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut stalled = None;
        for (i, counter) in self.counters.iter().enumerate() {
            let now = counter.load(Ordering::Relaxed);
            if now == seen[i] && stalled.is_none() {
                stalled = Some(self.names[i]);
            }
            seen[i] = now;
        }
        match stalled {
            None => Ok(()),
            Some(name) => Err(name),
        }
    }
}

/// Spawns a tokio task that every `watchdog_interval` checks the heartbeats and sends
/// `WATCHDOG=1` only when all are alive (logs a warning naming the stalled loop otherwise),
/// and updates STATUS with `status()` (e.g. "3 active calls") when it changed.
/// `None` (no task) when systemd asked for no watchdog.
pub fn spawn_watchdog(
    n: Arc<Notifier>,
    hb: Arc<Heartbeats>,
    status: impl Fn() -> String + Send + 'static,
) -> Option<tokio::task::JoinHandle<()>> {
    let every = n.watchdog_interval()?;
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: skip it so every loop gets a whole interval to beat.
        ticks.tick().await;
        let mut last_status = String::new();
        let mut stalled_before: Option<&'static str> = None;
        loop {
            ticks.tick().await;
            match hb.all_alive_since_last_check() {
                Ok(()) => {
                    if let Some(name) = stalled_before.take() {
                        warn!(r#loop = name, "loop alive again; watchdog pings resume");
                    }
                    n.watchdog();
                }
                Err(name) => {
                    warn!(
                        r#loop = name,
                        interval_ms = every.as_millis() as u64,
                        "loop made no progress; withholding the systemd watchdog ping"
                    );
                    stalled_before = Some(name);
                }
            }
            let now = status();
            if now != last_status {
                n.status(&now);
                last_status = now;
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A bound notify socket in a temp dir, like systemd's.
    fn listener() -> (tempfile::TempDir, UnixDatagram, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        (dir, sock, path)
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8(buf[..n].to_vec()).expect("utf-8")
    }

    fn recv_within(sock: &UnixDatagram, wait: Duration) -> Option<String> {
        sock.set_read_timeout(Some(wait)).expect("read timeout");
        let mut buf = [0u8; 4096];
        let r = sock
            .recv(&mut buf)
            .ok()
            .map(|n| String::from_utf8(buf[..n].to_vec()).expect("utf-8"));
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        r
    }

    #[test]
    fn notify_sends_exact_datagrams() {
        let (_dir, sock, path) = listener();
        let n = Notifier::with_socket(&path);
        assert!(n.enabled());
        n.ready("listening on udp:127.0.0.1:5060");
        assert_eq!(
            recv(&sock),
            "READY=1\nSTATUS=listening on udp:127.0.0.1:5060"
        );
        n.status("3 active calls");
        assert_eq!(recv(&sock), "STATUS=3 active calls");
        n.reloaded("reloaded\ndialplans: verify");
        assert_eq!(recv(&sock), "READY=1\nSTATUS=reloaded dialplans: verify");
        n.stopping();
        assert_eq!(recv(&sock), "STOPPING=1");
        n.watchdog();
        assert_eq!(recv(&sock), "WATCHDOG=1");
    }

    #[test]
    fn reloading_carries_clock_monotonic() {
        let (_dir, sock, path) = listener();
        let n = Notifier::with_socket(&path);
        let before = monotonic_usec().expect("CLOCK_MONOTONIC");
        n.reloading();
        let after = monotonic_usec().expect("CLOCK_MONOTONIC");
        let msg = recv(&sock);
        let us: u64 = msg
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("unexpected datagram {msg:?}"))
            .parse()
            .expect("MONOTONIC_USEC is a number");
        assert!(before <= us && us <= after, "{before} <= {us} <= {after}");
        // Same clock as std's Instant (CLOCK_MONOTONIC on Linux): it advances in step.
        let t0 = Instant::now();
        let m0 = monotonic_usec().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let m1 = monotonic_usec().unwrap();
        let elapsed = t0.elapsed().as_micros() as u64;
        assert!(m1 - m0 >= 50_000 && m1 - m0 <= elapsed + 1_000);
        // And it is not the wall clock.
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        assert!(us < wall / 2);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("ivrd-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::from_vars(Some(format!("@{name}").into()), None, None, 1);
        n.stopping();
        assert_eq!(recv(&sock), "STOPPING=1");
    }

    #[test]
    fn without_socket_everything_is_a_noop() {
        let n = Notifier::from_vars(None, Some("30000000"), None, 1);
        assert!(!n.enabled());
        n.ready("x");
        n.reloading();
        n.watchdog();
        assert_eq!(n.watchdog_interval(), None);
        let bad = Notifier::from_vars(Some("relative/path".into()), None, None, 1);
        assert!(!bad.enabled());
    }

    #[test]
    fn watchdog_interval_is_half_and_only_for_our_pid() {
        let (_dir, _sock, path) = listener();
        let sock = || Some(path.as_os_str().to_owned());
        let half = Some(Duration::from_secs(15));
        assert_eq!(
            Notifier::from_vars(sock(), Some("30000000"), None, 42).watchdog_interval(),
            half
        );
        assert_eq!(
            Notifier::from_vars(sock(), Some("30000000"), Some("42"), 42).watchdog_interval(),
            half
        );
        assert_eq!(
            Notifier::from_vars(sock(), Some("30000000"), Some("43"), 42).watchdog_interval(),
            None
        );
        assert_eq!(
            Notifier::from_vars(sock(), Some("0"), None, 42).watchdog_interval(),
            None
        );
        assert_eq!(
            Notifier::from_vars(sock(), Some("soon"), None, 42).watchdog_interval(),
            None
        );
        assert_eq!(
            Notifier::from_vars(sock(), None, None, 42).watchdog_interval(),
            None
        );
    }

    #[test]
    fn heartbeats_report_the_stalled_loop() {
        let hb = Heartbeats::new(&["sip", "accept"]);
        assert_eq!(hb.all_alive_since_last_check(), Err("sip"));
        hb.beat(0);
        assert_eq!(hb.all_alive_since_last_check(), Err("accept"));
        hb.beat(0);
        hb.beat(1);
        hb.beat(1);
        assert_eq!(hb.all_alive_since_last_check(), Ok(()));
        hb.beat(1);
        assert_eq!(hb.all_alive_since_last_check(), Err("sip"));
        assert_eq!(hb.all_alive_since_last_check(), Err("sip"));
        hb.beat(7); // ignored
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watchdog_pings_only_while_heartbeats_move() {
        let (_dir, sock, path) = listener();
        // 100 ms WATCHDOG_USEC: a check every 50 ms.
        let n = Arc::new(Notifier::with_socket(&path).with_watchdog_usec(100_000));
        assert_eq!(n.watchdog_interval(), Some(Duration::from_millis(50)));
        let hb = Heartbeats::new(&["sip", "calls"]);
        let beating = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let beater = {
            let (hb, beating) = (hb.clone(), beating.clone());
            tokio::spawn(async move {
                loop {
                    hb.beat(0);
                    if beating.load(Ordering::Relaxed) {
                        hb.beat(1);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        let calls = Arc::new(AtomicU64::new(3));
        let task = {
            let calls = calls.clone();
            spawn_watchdog(n.clone(), hb.clone(), move || {
                format!("{} active calls", calls.load(Ordering::Relaxed))
            })
            .expect("a watchdog task")
        };

        let sock = Arc::new(sock);
        let rx = sock.clone();
        let (pings, statuses) = tokio::task::spawn_blocking(move || {
            let (mut pings, mut statuses) = (0, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(5);
            while pings < 4 && Instant::now() < deadline {
                match recv(&rx).as_str() {
                    "WATCHDOG=1" => pings += 1,
                    other => statuses.push(other.to_string()),
                }
            }
            (pings, statuses)
        })
        .await
        .unwrap();
        assert_eq!(pings, 4);
        // STATUS only when it changes.
        assert_eq!(statuses, vec!["STATUS=3 active calls".to_string()]);

        // Loop "calls" stalls: the pings stop (at most one already in flight).
        beating.store(false, Ordering::Relaxed);
        calls.store(2, Ordering::Relaxed);
        let rx = sock.clone();
        let after_stall = tokio::task::spawn_blocking(move || {
            let mut got = Vec::new();
            let deadline = Instant::now() + Duration::from_millis(400);
            while let Some(msg) = recv_within(
                &rx,
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ) {
                got.push(msg);
                if Instant::now() >= deadline {
                    break;
                }
            }
            got
        })
        .await
        .unwrap();
        let late_pings = after_stall.iter().filter(|m| *m == "WATCHDOG=1").count();
        assert!(late_pings <= 1, "pings after the stall: {after_stall:?}");
        assert!(
            after_stall.contains(&"STATUS=2 active calls".to_string()),
            "status still updates while stalled: {after_stall:?}"
        );

        // It beats again: pings resume.
        beating.store(true, Ordering::Relaxed);
        let rx = sock.clone();
        let resumed = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if recv(&rx) == "WATCHDOG=1" {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap();
        assert!(resumed);
        task.abort();
        beater.abort();
    }

    #[tokio::test]
    async fn no_watchdog_task_without_watchdog_usec() {
        let (_dir, _sock, path) = listener();
        let n = Arc::new(Notifier::with_socket(&path));
        assert!(spawn_watchdog(n, Heartbeats::new(&["x"]), String::new).is_none());
    }
}
