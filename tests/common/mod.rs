//! Harness shared by the integration tests: starts `ivrd` on free loopback ports with a
//! generated config, runs SIPp scenarios against it, and sends raw SIP over UDP/TCP.
//!
//! Every peer (SIPp, baresip, linphonec, Kamailio) is a hard requirement: a missing tool fails
//! the test with the install command instead of skipping it, so a green run always means the
//! calls were made.
//!
//! Submodules: [`verify`] (the verification flow's world: SMS webhook, customers, audit rows),
//! [`linphone`] (a headless linphonec driven over stdin) and [`kamailio`] (a throw-away
//! Kamailio proxy in front of ivrd).

// Each test binary compiles this module and uses a different subset of it.
#![allow(dead_code)]

pub mod api;
pub mod digits;
pub mod kamailio;
pub mod linphone;
pub mod postgres;
pub mod verify;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Width of the RTP port range each daemon gets; tests in one binary run in parallel threads.
const RTP_RANGE_WIDTH: u16 = 200;
/// Daemon RTP ranges live in 20000..28000 and peer media ports in 28000..32700: both below
/// Linux's ephemeral range (32768..60999), so `bind(0)` sockets never land on them.
const RTP_RANGE_BASE: u16 = 20000;
const RTP_RANGE_SLOTS: u32 = 40;
const MEDIA_PORT_BASE: u16 = 28000;
const MEDIA_PORT_SLOTS: u32 = 1000;
const MEDIA_PORT_STEP: u16 = 4;

/// How long `Daemon::start` waits for the first 200 to an OPTIONS. Start-up resamples and
/// encodes every prompt, which takes a debug build about 1.7 s of CPU; with several test
/// daemons starting at once on two cores that adds up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The repository's bundled prompts, used by every test daemon.
pub fn prompts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts")
}

/// The folder holding the SIPp scenarios.
pub fn sipp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp")
}

/// The Debian package that provides each peer the tests run.
const PEER_PACKAGES: &[(&str, &str)] = &[
    ("sipp", "sip-tester"),
    ("baresip", "baresip-core"),
    ("linphonec", "linphone-cli"),
    ("kamailio", "kamailio"),
    ("tcpdump", "tcpdump"),
    ("chromium", "chromium"),
    ("python3", "python3-minimal"),
];

/// Finds `name` on PATH (or in the sbin directories, where Debian puts `kamailio` and a
/// normal user's PATH does not look) or panics with the command that installs it.
pub fn require_tool(name: &str) -> PathBuf {
    find_in_path(name).unwrap_or_else(|| {
        let package = PEER_PACKAGES
            .iter()
            .find(|(tool, _)| *tool == name)
            .map_or(String::new(), |(_, p)| format!(" (Debian package {p})"));
        panic!(
            "{name} not found{package}: run scripts/install-test-deps.sh, which installs sip-tester, baresip-core, linphone-cli, kamailio, tcpdump and chromium"
        )
    })
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| {
            fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Ports handed out by this process. The OS may return a just-released port from `bind(0)` to
/// another thread before our child binds it, so we never hand out the same port twice.
static CLAIMED: Mutex<Vec<u16>> = Mutex::new(Vec::new());

fn claim(port: u16) -> bool {
    let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
    if claimed.contains(&port) {
        return false;
    }
    claimed.push(port);
    true
}

/// Where the tests' listening ports come from: below the kernel's ephemeral range (32768 and
/// up on Linux) and below the RTP ranges the daemons get (20000 and up), so no socket bound to
/// port 0, in any process, can take a port between the test's check and the daemon's bind.
/// (Taking them from `bind(0)` did race: a daemon once failed with "Address already in use"
/// on the SIP port its test had just found free.) Also below the benchmark's fixed ports.
const PORT_POOL: std::ops::Range<u16> = 10000..15000;

static PORT_SEQ: AtomicU32 = AtomicU32::new(0);

/// The next port of [`PORT_POOL`] this process has not handed out and `free` accepts; each
/// process starts at its own place in the pool, so parallel test binaries rarely meet.
fn pick(free: impl Fn(u16) -> bool) -> u16 {
    let len = u32::from(PORT_POOL.end - PORT_POOL.start);
    let offset = std::process::id().wrapping_mul(7919) % len;
    for _ in 0..len {
        let n = (offset + PORT_SEQ.fetch_add(1, Ordering::Relaxed)) % len;
        let port = PORT_POOL.start + n as u16;
        if free(port) && claim(port) {
            return port;
        }
    }
    panic!("no free loopback port in {PORT_POOL:?}");
}

/// A loopback port that is free for both UDP and TCP (SIP listens on both with one number).
pub fn free_sip_port() -> u16 {
    pick(|p| UdpSocket::bind((LOCALHOST, p)).is_ok() && TcpListener::bind((LOCALHOST, p)).is_ok())
}

/// A port free for both UDP and TCP on the IPv6 loopback `[::1]`, for a peer that listens
/// there (baresip over IPv6).
pub fn free_sip_port_v6() -> u16 {
    let v6 = std::net::Ipv6Addr::LOCALHOST;
    pick(|p| UdpSocket::bind((v6, p)).is_ok() && TcpListener::bind((v6, p)).is_ok())
}

/// A free loopback UDP port.
pub fn free_udp_port() -> u16 {
    pick(|p| UdpSocket::bind((LOCALHOST, p)).is_ok())
}

/// Headless Chromium (Debian package `chromium`), or a failure that names the package.
pub fn chromium() -> PathBuf {
    ["chromium", "chromium-browser"]
        .iter()
        .map(|n| Path::new("/usr/bin").join(n))
        .find(|p| p.is_file())
        .unwrap_or_else(|| require_tool("chromium"))
}

/// The flags every headless Chromium run of the tests takes (no sandbox: the tests run as
/// root in CI; no GPU, no /dev/shm, no first-run or extension work).
pub const CHROMIUM_HEADLESS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-extensions",
];

/// A free loopback TCP port (for an HTTP listener of the daemon).
pub fn free_tcp_port() -> u16 {
    pick(|p| TcpListener::bind((LOCALHOST, p)).is_ok())
}

static MEDIA_SEQ: AtomicU32 = AtomicU32::new(0);

/// An even RTP port for a peer (SIPp, baresip) with the next three ports free too: SIPp's
/// `-mp N` binds N (audio) and N+2 (video), and RTCP would be N+1.
pub fn free_media_port() -> u16 {
    // Start at a per-process offset so parallel test processes (nextest) rarely collide.
    let offset = std::process::id() % MEDIA_PORT_SLOTS;
    for _ in 0..MEDIA_PORT_SLOTS {
        let n = (offset + MEDIA_SEQ.fetch_add(1, Ordering::Relaxed)) % MEDIA_PORT_SLOTS;
        let Some(port) = MEDIA_PORT_BASE.checked_add(n as u16 * MEDIA_PORT_STEP) else {
            continue;
        };
        let all_free =
            (port..port + MEDIA_PORT_STEP).all(|p| UdpSocket::bind((LOCALHOST, p)).is_ok());
        if all_free && claim(port) {
            return port;
        }
    }
    panic!("no free media port block in {MEDIA_PORT_BASE}..");
}

static DAEMON_SEQ: AtomicU32 = AtomicU32::new(0);

/// A distinct RTP port range for the next daemon of this process.
fn next_rtp_range() -> (u16, u16) {
    let slot = (std::process::id() + DAEMON_SEQ.fetch_add(1, Ordering::Relaxed)) % RTP_RANGE_SLOTS;
    let min = RTP_RANGE_BASE + slot as u16 * RTP_RANGE_WIDTH;
    (min, min + RTP_RANGE_WIDTH - 1)
}

/// Removes ANSI escape sequences, so substring checks work even if the daemon colours its log.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            // CSI: parameters and intermediates, then one final byte in '@'..='~'.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Deep-merges `over` into `base`: tables merge key by key, anything else is replaced.
fn merge_toml(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_toml(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// A running `ivrd` with its own config, ports and log file in a temporary directory.
/// Dropping it stops the daemon (SIGTERM, then SIGKILL) and, if the test is failing,
/// prints the daemon's log so the failure explains itself.
pub struct Daemon {
    child: Option<Child>,
    dir: tempfile::TempDir,
    sip_port: u16,
    rtp_range: (u16, u16),
    log_path: PathBuf,
    config_path: PathBuf,
}

impl Daemon {
    /// Starts the daemon with the harness's base config deep-merged with `toml_overrides`
    /// (a TOML document such as `"[demo]\nrounds = 1"`, where `{sip_port}` stands for the
    /// daemon's SIP port), and waits until it answers OPTIONS.
    pub fn start(toml_overrides: &str) -> Daemon {
        Self::start_full(RTP_RANGE_WIDTH, toml_overrides, &[])
    }

    /// [`Daemon::start`] with only `ports` RTP ports (`ports / 2` calls: one even port each),
    /// for tests that run the range out.
    pub fn start_with_rtp_ports(ports: u16, toml_overrides: &str) -> Daemon {
        Self::start_full(ports, toml_overrides, &[])
    }

    /// Like [`Daemon::start`], with extra environment variables for the daemon (e.g.
    /// `CREDENTIALS_DIRECTORY`, as systemd sets it).
    pub fn start_with_env(toml_overrides: &str, env: &[(&str, &Path)]) -> Daemon {
        Self::start_full(RTP_RANGE_WIDTH, toml_overrides, env)
    }

    fn start_full(ports: u16, toml_overrides: &str, env: &[(&str, &Path)]) -> Daemon {
        let sip_port = free_sip_port();
        let (rtp_min, _) = next_rtp_range();
        let rtp_range = (rtp_min, rtp_min + ports.clamp(2, RTP_RANGE_WIDTH) - 1);
        let dir = tempfile::Builder::new()
            .prefix("ivrd-test-")
            .tempdir()
            .expect("create temp dir");
        let config_path = dir.path().join("ivrd.toml");
        let log_path = dir.path().join("ivrd.log");
        fs::write(
            &config_path,
            Self::config_text(sip_port, rtp_range, toml_overrides),
        )
        .expect("write config");

        let log = File::create(&log_path).expect("create log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ivrd"));
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir.path())
            // tracing-subscriber honours NO_COLOR; escape codes inside `key=value` fields
            // would break every substring check on the log.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        // RUST_LOG would override the config's level and could hide the lines tests wait
        // for; IVRD_TEST_RUST_LOG lets a developer ask for more detail on purpose.
        match std::env::var("IVRD_TEST_RUST_LOG") {
            Ok(filter) => cmd.env("RUST_LOG", filter),
            Err(_) => cmd.env_remove("RUST_LOG"),
        };
        for (key, value) in env {
            cmd.env(key, value);
        }
        let child = cmd.spawn().expect("spawn ivrd");

        let mut daemon = Daemon {
            child: Some(child),
            dir,
            sip_port,
            rtp_range,
            log_path,
            config_path,
        };
        daemon.wait_ready();
        daemon
    }

    fn config_text(sip_port: u16, (rtp_min, rtp_max): (u16, u16), overrides: &str) -> String {
        let base = format!(
            r#"
[sip]
udp = ["127.0.0.1:{sip_port}"]
tcp = ["127.0.0.1:{sip_port}"]
# The test peers (SIPp, baresip, the raw clients) play the PBX from 127.0.0.1, as a production
# config names its PBX; the edge tests attack from other loopback addresses (127.0.0.2, ...).
trusted = ["127.0.0.1"]

[media]
rtp_ip = "127.0.0.1"
rtp_port_min = {rtp_min}
rtp_port_max = {rtp_max}

# The call-engine tests drive the built-in demo flow; dialplan tests turn it off.
[demo]
enabled = true

# Many daemons run at once: no shared admin port (tests that scrape set their own).
[admin]
listen = ""

[log]
level = "info"
"#
        );
        let mut table: toml::Table = base.parse().expect("base config is valid TOML");
        if let Some(toml::Value::Table(media)) = table.get_mut("media") {
            // Inserted as a value, not formatted in, so any path is quoted correctly.
            media.insert(
                "prompts_dir".into(),
                toml::Value::String(prompts_dir().display().to_string()),
            );
        }
        // `{sip_port}` in the overrides is the daemon's SIP port (for extra listen addresses).
        let overrides = overrides.replace("{sip_port}", &sip_port.to_string());
        let over: toml::Table = overrides.parse().unwrap_or_else(|e| {
            panic!("test config overrides are not valid TOML: {e}\n{overrides}")
        });
        merge_toml(&mut table, over);
        toml::to_string(&table).expect("serialize config")
    }

    /// Polls with OPTIONS until a 200 arrives; panics with the log if the daemon dies or stays mute.
    fn wait_ready(&mut self) {
        let sock = UdpSocket::bind((LOCALHOST, 0)).expect("bind probe socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set timeout");
        let local = sock.local_addr().expect("local addr");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut attempt = 0u32;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "ivrd exited with {status} before answering OPTIONS\nconfig:\n{}\n--- ivrd log ---\n{}",
                    fs::read_to_string(&self.config_path).unwrap_or_default(),
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "ivrd did not answer OPTIONS on {} within {STARTUP_TIMEOUT:?}\n--- ivrd log ---\n{}",
                    self.sip_addr(),
                    self.log()
                );
            }
            attempt += 1;
            let call_id = format!("ready-{}-{attempt}", self.sip_port);
            let msg = options_request(self.sip_addr(), local, &call_id, "UDP");
            let _ = sock.send_to(msg.as_bytes(), self.sip_addr());
            let mut buf = [0u8; 65535];
            // Drain answers until the 100 ms read timeout; older attempts' answers are fine too.
            while let Ok((n, _)) = sock.recv_from(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]);
                if text.starts_with("SIP/2.0 200") {
                    return;
                }
            }
        }
    }

    /// Where the daemon listens for SIP (UDP and TCP).
    pub fn sip_addr(&self) -> SocketAddr {
        SocketAddr::from((LOCALHOST, self.sip_port))
    }

    pub fn sip_port(&self) -> u16 {
        self.sip_port
    }

    /// The RTP port range given to this daemon.
    pub fn rtp_range(&self) -> (u16, u16) {
        self.rtp_range
    }

    /// The daemon's temporary directory (config, log); removed on drop.
    /// The config file the daemon runs on (tests edit it, then reload).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Edits the daemon's config file: `edit` changes the parsed TOML, which is written back.
    pub fn edit_config(&self, edit: impl FnOnce(&mut toml::Table)) {
        let text = fs::read_to_string(&self.config_path).expect("read config");
        let mut table: toml::Table = text.parse().expect("config is TOML");
        edit(&mut table);
        fs::write(
            &self.config_path,
            toml::to_string(&table).expect("serialize config"),
        )
        .expect("write config");
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Everything the daemon wrote to stdout and stderr so far, without colour codes.
    pub fn log(&self) -> String {
        let bytes = fs::read(&self.log_path).unwrap_or_default();
        strip_ansi(&String::from_utf8_lossy(&bytes))
    }

    /// Log lines that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until the log contains `needle`; false on timeout.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Like `wait_for_log` but panics with the log on timeout.
    pub fn expect_log(&self, needle: &str, timeout: Duration) {
        assert!(
            self.wait_for_log(needle, timeout),
            "ivrd log has no {needle:?} after {timeout:?}"
        );
    }

    /// The `reason=` values of every `call ended` line, normalised for comparison: lower
    /// case, quotes removed, `-`/`_`/spaces dropped (so `caller-bye`, `CallerBye` and
    /// `"caller bye"` all read `callerbye`).
    pub fn call_end_reasons(&self) -> Vec<String> {
        self.log_lines("call ended")
            .iter()
            .filter_map(|line| field_value(line, "reason"))
            .map(|r| {
                r.to_lowercase()
                    .chars()
                    .filter(|c| !matches!(c, '-' | '_' | ' '))
                    .collect()
            })
            .collect()
    }

    /// Waits for `count` `call ended` lines and returns their normalised reasons.
    pub fn wait_call_ends(&self, count: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let reasons = self.call_end_reasons();
            if reasons.len() >= count || Instant::now() > deadline {
                assert!(
                    reasons.len() >= count,
                    "expected {count} `call ended ... reason=` lines within {timeout:?}, found {reasons:?}"
                );
                return reasons;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// When the first line containing `needle` was logged, in seconds since midnight (UTC),
    /// read from the line's tracing timestamp (`2026-11-22T16:01:03.373393Z ...`).
    pub fn log_time(&self, needle: &str) -> Option<f64> {
        self.log_lines(needle).first().and_then(|l| line_time(l))
    }

    /// The `digits`/`methods` pairs of every `collected digits=` line.
    pub fn collected(&self) -> Vec<(String, String)> {
        self.log_lines("collected digits=")
            .iter()
            .map(|line| {
                (
                    field_value(line, "digits").unwrap_or_default(),
                    field_value(line, "methods").unwrap_or_default(),
                )
            })
            .collect()
    }
}

/// Seconds since midnight from a log line starting with an RFC 3339 timestamp.
pub fn line_time(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?;
    let time = stamp.split('T').nth(1)?.trim_end_matches('Z');
    let time = time.split(['+', '-']).next()?;
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// The value of `key=` in a `key=value` log line; handles `key="quoted value"`.
pub fn field_value(line: &str, key: &str) -> Option<String> {
    let pat = format!("{key}=");
    let mut search = line;
    // Require a word boundary before the key so `reason=` does not match `xreason=`.
    loop {
        let pos = search.find(&pat)?;
        let boundary = search[..pos]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        let rest = &search[pos + pat.len()..];
        if boundary {
            return Some(if let Some(quoted) = rest.strip_prefix('"') {
                quoted.split('"').next().unwrap_or("").to_string()
            } else {
                rest.split_whitespace().next().unwrap_or("").to_string()
            });
        }
        search = rest;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM first so the daemon can hang up cleanly; `kill` is the shell builtin,
            // which exists even where procps is not installed.
            let _ = Command::new("sh")
                .args(["-c", "kill -TERM \"$1\"", "sh", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- ivrd log ({}) ----\n{}\n---- end of ivrd log ----",
                self.log_path.display(),
                self.log()
            );
        }
    }
}

/// An out-of-dialog OPTIONS from `local` to `target`.
pub fn options_request(
    target: SocketAddr,
    local: SocketAddr,
    call_id: &str,
    transport: &str,
) -> String {
    format!(
        "OPTIONS sip:demo@{target} SIP/2.0\r\n\
         Via: SIP/2.0/{transport} {local};branch=z9hG4bK-{call_id};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@{local}>;tag=probe\r\n\
         To: <sip:demo@{target}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Accept: application/sdp\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// A UDP socket on loopback for hand-made SIP messages.
pub struct RawUdp {
    pub sock: UdpSocket,
    pub target: SocketAddr,
}

impl RawUdp {
    pub fn new(target: SocketAddr) -> RawUdp {
        let sock = UdpSocket::bind((LOCALHOST, 0)).expect("bind raw UDP socket");
        RawUdp { sock, target }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("local addr")
    }

    pub fn send(&self, data: &[u8]) {
        self.sock.send_to(data, self.target).expect("send UDP");
    }

    /// The next datagram within `timeout`, or None.
    pub fn recv(&self, timeout: Duration) -> Option<String> {
        self.sock
            .set_read_timeout(Some(timeout))
            .expect("set timeout");
        let mut buf = vec![0u8; 65535];
        match self.sock.recv_from(&mut buf) {
            Ok((n, _)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => None,
        }
    }

    /// Every datagram that arrives within `window` (for checking that nothing, or only a
    /// 400, comes back).
    pub fn recv_all(&self, window: Duration) -> Vec<String> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return out;
            }
            match self.recv(left) {
                Some(msg) => out.push(msg),
                None => return out,
            }
        }
    }
}

/// A TCP connection carrying SIP, framed by Content-Length (RFC 3261 18.3). Keeps bytes that
/// arrived beyond one message, since pipelined responses can share a segment.
pub struct SipTcp {
    pub stream: TcpStream,
    pending: Vec<u8>,
}

impl SipTcp {
    pub fn connect(target: SocketAddr) -> SipTcp {
        let stream = TcpStream::connect_timeout(&target, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("connect TCP to {target}: {e}"));
        SipTcp {
            stream,
            pending: Vec::new(),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local addr")
    }

    pub fn send(&mut self, data: &[u8]) {
        self.stream.write_all(data).expect("write to TCP");
        self.stream.flush().expect("flush TCP");
    }

    /// The next complete message, or None if the peer closes or `timeout` passes first.
    pub fn recv(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = find_subslice(&self.pending, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.pending[..end]).into_owned();
                let body_len = header_value(&head, "Content-Length", Some("l"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                let total = end + 4 + body_len;
                if self.pending.len() >= total {
                    let msg: Vec<u8> = self.pending.drain(..total).collect();
                    return Some(String::from_utf8_lossy(&msg).into_owned());
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).ok()?;
            match self.stream.read(&mut buf) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
            }
        }
    }
}

fn find_subslice(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The first value of a header (case-insensitive name, optional compact form) in a SIP message.
pub fn header_value(msg: &str, name: &str, compact: Option<&str>) -> Option<String> {
    let head = msg.split("\r\n\r\n").next().unwrap_or(msg);
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        let n = n.trim();
        let matches =
            n.eq_ignore_ascii_case(name) || compact.is_some_and(|c| n.eq_ignore_ascii_case(c));
        matches.then(|| v.trim().to_string())
    })
}

/// The status code of a SIP response, None for requests or garbage.
pub fn status_code(msg: &str) -> Option<u16> {
    let rest = msg.strip_prefix("SIP/2.0 ")?;
    rest.get(..3)?.parse().ok()
}

/// One message from SIPp's `-trace_msg` log.
#[derive(Debug, Clone)]
pub struct TracedMessage {
    /// Seconds since midnight (the log's wall-clock timestamp), for measuring gaps.
    pub at: f64,
    /// True for messages SIPp sent, false for those it received.
    pub sent: bool,
    pub text: String,
}

impl TracedMessage {
    pub fn status(&self) -> Option<u16> {
        status_code(&self.text)
    }

    pub fn header(&self, name: &str) -> Option<String> {
        header_value(&self.text, name, None)
    }

    /// The method named in the CSeq header (`INVITE` for a 200 to an INVITE).
    pub fn cseq_method(&self) -> Option<String> {
        self.header("CSeq")
            .and_then(|v| v.split_whitespace().nth(1).map(str::to_owned))
    }
}

/// Parses SIPp's message log: entries start with a dashed line carrying a timestamp, then
/// `UDP message received [N] bytes :` or `TCP message sent (N bytes):`, a blank line, the message.
pub fn parse_sipp_messages(log: &str) -> Vec<TracedMessage> {
    const MARK: &str = "----------------------------------------------- ";
    let mut out = Vec::new();
    for entry in log.split(MARK).skip(1) {
        let mut lines = entry.splitn(3, '\n');
        let stamp = lines.next().unwrap_or("").trim();
        let kind = lines.next().unwrap_or("");
        let body = lines.next().unwrap_or("");
        let sent = kind.contains("message sent");
        if !sent && !kind.contains("message received") {
            continue;
        }
        // "2026-11-22 15:43:26.458199" -> seconds since midnight.
        let at = stamp
            .split_whitespace()
            .nth(1)
            .and_then(|t| {
                let mut p = t.split(':');
                let h: f64 = p.next()?.parse().ok()?;
                let m: f64 = p.next()?.parse().ok()?;
                let s: f64 = p.next()?.parse().ok()?;
                Some(h * 3600.0 + m * 60.0 + s)
            })
            .unwrap_or(0.0);
        let text = body
            .trim_start_matches(['\r', '\n'])
            .replace("\r\n", "\n")
            .replace('\n', "\r\n");
        out.push(TracedMessage { at, sent, text });
    }
    out
}

/// A SIPp run against a daemon, built up with the methods below and started with `run`.
pub struct Sipp {
    scenario: PathBuf,
    target: SocketAddr,
    tcp: bool,
    timeout_secs: u64,
    extra: Vec<String>,
    /// The SIP port SIPp listens on; a free one when not set.
    local_port: Option<u16>,
}

/// What a SIPp run left behind.
pub struct SippRun {
    pub status: ExitStatus,
    /// The `-trace_msg` log: every message sent and received.
    pub messages: String,
    /// The `-trace_err` log: unexpected messages and scenario errors.
    pub errors: String,
    /// SIPp's stdout and stderr (statistics screens, fatal errors).
    pub output: String,
    pub scenario: String,
    pub command: String,
}

impl Sipp {
    /// `scenario` is a file name in tests/sipp/ (`"uac_call.xml"`) or a path.
    pub fn new(scenario: &str, target: SocketAddr) -> Sipp {
        let path = Path::new(scenario);
        let scenario = if path.is_absolute() {
            path.to_path_buf()
        } else {
            sipp_dir().join(scenario)
        };
        assert!(
            scenario.is_file(),
            "no SIPp scenario at {}",
            scenario.display()
        );
        Sipp {
            scenario,
            target,
            tcp: false,
            timeout_secs: 30,
            extra: Vec::new(),
            local_port: None,
        }
    }

    /// Use TCP (one connection for the call) instead of UDP.
    pub fn tcp(mut self) -> Sipp {
        self.tcp = true;
        self
    }

    /// SIPp's global timeout (the run fails when it is reached).
    pub fn timeout_secs(mut self, secs: u64) -> Sipp {
        self.timeout_secs = secs;
        self
    }

    /// `-key name value`: replaces `[name]` inside the scenario's messages.
    pub fn key(mut self, name: &str, value: &str) -> Sipp {
        self.extra
            .extend(["-key".into(), name.into(), value.into()]);
        self
    }

    /// `-set name value`: sets a scenario `<Global>` variable (a string; use `<todouble>`
    /// before using it as a number, e.g. as a `<pause variable=...>`).
    pub fn set(mut self, name: &str, value: &str) -> Sipp {
        self.extra
            .extend(["-set".into(), name.into(), value.into()]);
        self
    }

    /// Listen on this SIP port (`-p`): a UAS scenario (a transfer target) must be reachable
    /// at an address the test knows before SIPp starts. Take it from `free_sip_port()`.
    pub fn local_port(mut self, port: u16) -> Sipp {
        self.local_port = Some(port);
        self
    }

    pub fn arg(mut self, arg: &str) -> Sipp {
        self.extra.push(arg.into());
        self
    }

    /// Runs SIPp to completion (one call) in a fresh temporary directory.
    pub fn run(self) -> SippRun {
        let sipp = require_tool("sipp");
        let dir = tempfile::Builder::new()
            .prefix("sipp-")
            .tempdir()
            .expect("create temp dir");
        let messages_path = dir.path().join("messages.log");
        let errors_path = dir.path().join("errors.log");
        let output_path = dir.path().join("output.log");
        let local_port = self.local_port.unwrap_or_else(free_sip_port);
        let media_port = free_media_port();
        // SIPp's control socket defaults to UDP 8888 on all interfaces; parallel runs would
        // fight over it, so each run gets its own.
        let control_port = free_udp_port();

        let mut args: Vec<String> = vec![
            self.target.to_string(),
            "-sf".into(),
            self.scenario.display().to_string(),
            "-s".into(),
            "demo".into(),
            "-m".into(),
            "1".into(),
            "-l".into(),
            "1".into(),
            "-i".into(),
            "127.0.0.1".into(),
            "-p".into(),
            local_port.to_string(),
            "-mp".into(),
            media_port.to_string(),
            "-cp".into(),
            control_port.to_string(),
            "-timeout".into(),
            format!("{}s", self.timeout_secs),
            "-timeout_error".into(),
            // No terminal and no stdin under cargo test or CI.
            "-nostdin".into(),
            "-trace_msg".into(),
            "-message_file".into(),
            messages_path.display().to_string(),
            "-trace_err".into(),
            "-error_file".into(),
            errors_path.display().to_string(),
        ];
        if self.tcp {
            // t1: one TCP connection for all calls (we make one call anyway).
            args.extend(["-t".into(), "t1".into()]);
        }
        args.extend(self.extra.iter().cloned());
        let command = format!("sipp {}", args.join(" "));

        let output = File::create(&output_path).expect("create SIPp output file");
        let mut child = Command::new(&sipp)
            .args(&args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("clone output handle"))
            .stderr(output)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", sipp.display()));

        // SIPp enforces its own -timeout; this is a backstop in case it wedges.
        let deadline = Instant::now() + Duration::from_secs(self.timeout_secs + 20);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for sipp") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let status = child.wait().expect("reap sipp");
                eprintln!("SIPp ran past its own timeout and was killed");
                break status;
            }
            std::thread::sleep(Duration::from_millis(50));
        };

        let read =
            |p: &Path| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
        SippRun {
            status,
            messages: read(&messages_path),
            errors: read(&errors_path),
            output: read(&output_path),
            scenario: self.scenario.display().to_string(),
            command,
        }
    }
}

impl SippRun {
    /// SIPp exits 0 only when every call followed the scenario to its end.
    pub fn succeeded(&self) -> bool {
        self.status.code() == Some(0)
    }

    /// Panics with SIPp's logs unless the scenario succeeded.
    pub fn assert_ok(&self) {
        assert!(
            self.succeeded(),
            "SIPp scenario {} failed ({})\ncommand: {}\n{}",
            self.scenario,
            self.status,
            self.command,
            self.report()
        );
    }

    /// SIPp's errors, output tail and message trace, for failure messages.
    pub fn report(&self) -> String {
        let output_tail: String = {
            let lines: Vec<&str> = self.output.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        format!(
            "---- SIPp errors ----\n{}\n---- SIPp output (tail) ----\n{}\n---- SIPp messages ----\n{}\n---- end of SIPp logs ----",
            self.errors, output_tail, self.messages
        )
    }

    pub fn traced(&self) -> Vec<TracedMessage> {
        parse_sipp_messages(&self.messages)
    }

    /// Messages SIPp received.
    pub fn received(&self) -> Vec<TracedMessage> {
        self.traced().into_iter().filter(|m| !m.sent).collect()
    }
}

/// Duration of a prompt WAV from the bundled prompts (`prompts/<lang>/<name>.wav`), so tests
/// can wait until the daemon is past a prompt without hard-coding its length.
pub fn prompt_duration(lang: &str, name: &str) -> Duration {
    let path = prompts_dir().join(lang).join(format!("{name}.wav"));
    let reader = hound::WavReader::open(&path)
        .unwrap_or_else(|e| panic!("prompt {} is needed by this test: {e}", path.display()));
    let spec = reader.spec();
    let frames = reader.duration();
    Duration::from_secs_f64(f64::from(frames) / f64::from(spec.sample_rate))
}

// ---------------------------------------------------------------------------------------------
// A loopback SMS gateway for the `webhook` provider.
// ---------------------------------------------------------------------------------------------

/// One POST the SMS webhook received: the path and the JSON body
/// (`{"to","text","reference","ttl_seconds"}`).
#[derive(Debug, Clone)]
pub struct SmsPost {
    pub path: String,
    pub body: serde_json::Value,
    /// The request's headers, names in lower case, in order.
    pub headers: Vec<(String, String)>,
}

impl SmsPost {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        self.body["text"].as_str().unwrap_or_default().to_string()
    }

    pub fn field(&self, name: &str) -> String {
        match &self.body[name] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        }
    }
}

struct SinkState {
    status: u16,
    posts: Vec<SmsPost>,
}

/// A real HTTP server on loopback that plays the in-house SMS gateway: it records every JSON
/// POST and answers each with a fixed status (200 with `{"id":...}`, or e.g. 500 for an outage).
/// HTTP/1.1 with keep-alive, Content-Length bodies (what reqwest sends). Stops on drop.
pub struct SmsSink {
    addr: SocketAddr,
    state: std::sync::Arc<Mutex<SinkState>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SmsSink {
    /// Starts the server; every request is answered with `status`.
    pub fn start(status: u16) -> SmsSink {
        let listener = TcpListener::bind((LOCALHOST, 0)).expect("bind SMS sink");
        let addr = listener.local_addr().expect("local addr");
        let state = std::sync::Arc::new(Mutex::new(SinkState {
            status,
            posts: Vec::new(),
        }));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve_http(conn, &st));
            }
        });
        SmsSink { addr, state, stop }
    }

    /// From now on, every request is answered with `status` (an outage ends, or begins).
    pub fn set_status(&self, status: u16) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).status = status;
    }

    /// The URL to put in `[sms] url`.
    pub fn url(&self) -> String {
        format!("http://{}/sms", self.addr)
    }

    /// Every POST so far.
    pub fn posts(&self) -> Vec<SmsPost> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .posts
            .clone()
    }

    /// Waits until at least `count` POSTs arrived; panics on timeout.
    pub fn wait_posts(&self, count: usize, timeout: Duration) -> Vec<SmsPost> {
        let deadline = Instant::now() + timeout;
        loop {
            let posts = self.posts();
            if posts.len() >= count {
                return posts;
            }
            assert!(
                Instant::now() < deadline,
                "the SMS webhook got {} POSTs within {timeout:?}, expected {count}: {posts:?}",
                posts.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SmsSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve_http(mut conn: TcpStream, state: &Mutex<SinkState>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // One request: head, then Content-Length bytes of body.
        let (head, body) = loop {
            if let Some(end) = find_subslice(&pending, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                let len = head
                    .lines()
                    .skip(1)
                    .find_map(|l| {
                        let (n, v) = l.split_once(':')?;
                        n.trim()
                            .eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if pending.len() >= end + 4 + len {
                    let body = pending[end + 4..end + 4 + len].to_vec();
                    pending.drain(..end + 4 + len);
                    break (head, body);
                }
            }
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
        };
        let path = head
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("")
            .to_string();
        let headers = head
            .lines()
            .skip(1)
            .filter_map(|l| {
                let (n, v) = l.split_once(':')?;
                Some((n.trim().to_ascii_lowercase(), v.trim().to_string()))
            })
            .collect();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&body).into_owned())
        });
        let status = {
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            st.posts.push(SmsPost {
                path,
                body: json,
                headers,
            });
            st.status
        };
        let reply = if (200..300).contains(&status) {
            format!(r#"{{"id":"sink-{}"}}"#, std::process::id())
        } else {
            r#"{"error":"gateway down"}"#.to_string()
        };
        let response = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        );
        if conn.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A minimal SIP UAC over UDP, for transfer tests that need to see and answer REFER themselves.
// ---------------------------------------------------------------------------------------------

static UAC_SEQ: AtomicU32 = AtomicU32::new(0);

fn uac_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{:x}{:x}{:x}",
        std::process::id(),
        UAC_SEQ.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// The method of a SIP request (`None` for a response).
pub fn sip_method(msg: &str) -> Option<&str> {
    let first = msg.lines().next()?;
    if first.starts_with("SIP/2.0") {
        return None;
    }
    first.split_whitespace().next()
}

/// The body of a SIP message (after the blank line).
pub fn sip_body(msg: &str) -> &str {
    msg.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

/// Every value of a header (full name only), in order.
pub fn header_values(msg: &str, name: &str) -> Vec<String> {
    let head = msg.split("\r\n\r\n").next().unwrap_or(msg);
    head.lines()
        .skip(1)
        .filter_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
        .collect()
}

/// Sends 20 ms PCMU silence packets to the daemon (as any phone does, so the RTP timeout never
/// fires) and counts the packets that come back. Key presses queued in `keys` go out as
/// RFC 4733 telephone-events (payload type 101, as RawUac offers) in place of audio, on the
/// same SSRC and sequence, as a phone sends them.
struct RtpPump {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    keys: std::sync::Arc<Mutex<std::collections::VecDeque<char>>>,
    /// Presses queued or being sent.
    keys_pending: std::sync::Arc<AtomicU32>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Packets of one RFC 4733 press: updates while the key is down (100 ms), then the end
/// report three times. Then this many 20 ms packets of audio before the next press.
const PRESS_UPDATES: u32 = 5;
const PRESS_ENDS: u32 = 3;
const PRESS_GAP: u32 = 10;
/// How much received RTP payload a `RawUac` keeps (30 s of G.711), for comparing with prompts.
const RTP_PAYLOAD_KEEP: usize = 30 * 8000;

impl RtpPump {
    fn start(
        sock: UdpSocket,
        remote: SocketAddr,
        received: std::sync::Arc<AtomicU32>,
        payload: std::sync::Arc<Mutex<Vec<u8>>>,
    ) -> RtpPump {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let keys = std::sync::Arc::new(Mutex::new(std::collections::VecDeque::<char>::new()));
        let keys_pending = std::sync::Arc::new(AtomicU32::new(0));
        let (st, rx) = (stop.clone(), received.clone());
        let (queue, pending) = (keys.clone(), keys_pending.clone());
        let thread = std::thread::spawn(move || {
            sock.set_nonblocking(true).expect("non-blocking RTP socket");
            let ssrc: u32 = 0x1d2c_3b4a ^ std::process::id();
            let (mut seq, mut ts) = (1000u16, 160_000u32);
            let mut buf = [0u8; 2048];
            let start = Instant::now();
            let mut n: u32 = 0;
            // The press being sent: its digit, its timestamp (its start), packets sent so far.
            let mut press: Option<(ivrd::media::dtmf::Digit, u32, u32)> = None;
            let mut gap = 0u32;
            while !st.load(Ordering::SeqCst) {
                if press.is_none() && gap == 0 {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                    if let Some(c) = next {
                        let digit = ivrd::media::dtmf::Digit::from_char(c)
                            .unwrap_or_else(|| panic!("{c:?} is not a DTMF key"));
                        press = Some((digit, ts, 0));
                    }
                }
                let mut pkt = Vec::with_capacity(172);
                pkt.push(0x80);
                match press.as_mut() {
                    Some((digit, start_ts, sent)) => {
                        // Marker on the first packet of the event (RFC 4733 2.5.1.1).
                        pkt.push(if *sent == 0 { 0x80 | 101 } else { 101 });
                        pkt.extend_from_slice(&seq.to_be_bytes());
                        pkt.extend_from_slice(&start_ts.to_be_bytes());
                        pkt.extend_from_slice(&ssrc.to_be_bytes());
                        let end = *sent >= PRESS_UPDATES;
                        let duration = (160 * (*sent + 1).min(PRESS_UPDATES)) as u16;
                        pkt.extend_from_slice(&ivrd::media::dtmf::rfc4733_payload(
                            *digit, end, 10, duration,
                        ));
                        *sent += 1;
                        if *sent == PRESS_UPDATES + PRESS_ENDS {
                            press = None;
                            gap = PRESS_GAP;
                            pending.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    None => {
                        pkt.push(if n == 0 { 0x80 } else { 0x00 }); // marker on the first, PT 0
                        pkt.extend_from_slice(&seq.to_be_bytes());
                        pkt.extend_from_slice(&ts.to_be_bytes());
                        pkt.extend_from_slice(&ssrc.to_be_bytes());
                        pkt.extend_from_slice(&[0xFF; 160]); // PCMU silence
                        gap = gap.saturating_sub(1);
                    }
                }
                let _ = sock.send_to(&pkt, remote);
                seq = seq.wrapping_add(1);
                ts = ts.wrapping_add(160);
                n += 1;
                while let Ok((len, _)) = sock.recv_from(&mut buf) {
                    if len >= 12 {
                        rx.fetch_add(1, Ordering::Relaxed);
                        // The daemon sends plain 12-byte headers (no CSRC, no extension).
                        let mut kept = payload.lock().unwrap_or_else(|e| e.into_inner());
                        let room = RTP_PAYLOAD_KEEP.saturating_sub(kept.len());
                        kept.extend_from_slice(&buf[12..len][..room.min(len - 12)]);
                    }
                }
                let next = start + Duration::from_millis(20) * n;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        RtpPump {
            stop,
            keys,
            keys_pending,
            thread: Some(thread),
        }
    }

    /// Queues key presses and waits until their last packet is sent.
    fn press_keys(&self, keys: &str) {
        let count = keys.chars().count() as u32;
        self.keys_pending.fetch_add(count, Ordering::SeqCst);
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(keys.chars());
        // A press with its gap lasts 360 ms; generous for a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(2) * count.max(1);
        while self.keys_pending.load(Ordering::SeqCst) > 0 {
            assert!(
                Instant::now() < deadline,
                "the RTP pump did not send {keys:?} in time"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RtpPump {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A small, honest SIP caller over UDP: INVITE with PCMU and telephone-event/101, ACK, RTP
/// silence, digits as SIP INFO (`application/dtmf-relay`), and the transferee's side of a
/// REFER (answer it, report progress with NOTIFY `message/sipfrag`, take the BYE). Only what
/// the transfer tests need: no authentication, no forking, one dialog. Every message sent and
/// received is kept in `trace` for failure messages.
pub struct RawUac {
    sock: UdpSocket,
    daemon: SocketAddr,
    local: SocketAddr,
    call_id: String,
    from: String,
    /// The To header of the 200 (with the daemon's tag).
    to: String,
    /// The daemon's Contact URI: the Request-URI of our in-dialog requests.
    remote_target: String,
    /// The 200's Record-Route in reverse (a proxy such as Kamailio in between): our in-dialog
    /// requests carry them as Route (RFC 3261 12.1.2).
    routes: Vec<String>,
    cseq: u32,
    rtp: Option<RtpPump>,
    /// Our RTP address (the one in our SDP) and the daemon's (from its answer).
    rtp_local: SocketAddr,
    rtp_remote: SocketAddr,
    /// RTP packets received from the daemon.
    rtp_received: std::sync::Arc<AtomicU32>,
    /// Their payloads, concatenated in arrival order (the first `RTP_PAYLOAD_KEEP` bytes).
    rtp_payload: std::sync::Arc<Mutex<Vec<u8>>>,
    /// Requests from the daemon that arrived while we waited for something else.
    inbox: std::collections::VecDeque<String>,
    /// Responses we sent, by the request's Via branch, so a retransmission gets the same one.
    answered: Vec<(String, String)>,
    /// The 200 to our INVITE and the ACK we sent for it (to re-ACK a retransmitted 200).
    invite_ok_cseq: String,
    ack: String,
    pub trace: Vec<String>,
}

/// Who a [`RawUac`] calls as.
#[derive(Clone, Debug)]
pub struct UacOptions {
    /// The loopback address it sends SIP and RTP from (127.0.0.1 is the harness's trusted PBX).
    pub ip: std::net::IpAddr,
    /// The user part of its From URI.
    pub from_user: String,
    /// Extra INVITE headers (e.g. P-Asserted-Identity).
    pub headers: Vec<(String, String)>,
}

impl Default for UacOptions {
    fn default() -> Self {
        UacOptions {
            ip: LOCALHOST.into(),
            from_user: "+4930123456".into(),
            headers: Vec::new(),
        }
    }
}

impl RawUac {
    /// Calls `sip:<user>@<daemon>` and returns once the call is answered and acknowledged.
    pub fn call(daemon: SocketAddr, user: &str) -> RawUac {
        Self::call_with(daemon, user, &UacOptions::default())
    }

    /// [`RawUac::call`] from another address, as another caller, with more headers.
    pub fn call_with(daemon: SocketAddr, user: &str, opts: &UacOptions) -> RawUac {
        let sock = UdpSocket::bind((opts.ip, 0)).expect("bind UAC socket");
        let local = sock.local_addr().expect("local addr");
        let rtp_sock = UdpSocket::bind((opts.ip, 0)).expect("bind UAC RTP socket");
        let rtp_local = rtp_sock.local_addr().expect("rtp addr");
        let rtp_port = rtp_local.port();
        let call_id = format!("rawuac-{}@{}", uac_token(), opts.ip);
        let from = format!(
            "\"Raw UAC\" <sip:{}@{local}>;tag={}",
            opts.from_user,
            uac_token()
        );
        let mut uac = RawUac {
            sock,
            daemon,
            local,
            call_id,
            from,
            to: format!("<sip:{user}@{daemon}>"),
            remote_target: format!("sip:{user}@{daemon}"),
            routes: Vec::new(),
            cseq: 1,
            rtp: None,
            rtp_local,
            rtp_remote: rtp_local,
            rtp_received: Default::default(),
            rtp_payload: Default::default(),
            inbox: Default::default(),
            answered: Vec::new(),
            invite_ok_cseq: String::new(),
            ack: String::new(),
            trace: Vec::new(),
        };
        let ip = opts.ip;
        let sdp = format!(
            "v=0\r\no=rawuac 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
             m=audio {rtp_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
        );
        let branch = format!("z9hG4bK-{}", uac_token());
        let mut extra: Vec<(&str, &str)> = vec![("Content-Type", "application/sdp")];
        extra.extend(opts.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let invite = uac.request(
            "INVITE",
            &format!("sip:{user}@{daemon}"),
            &branch,
            1,
            &extra,
            &sdp,
        );
        // Timer A: retransmit until a response arrives.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut interval = Duration::from_millis(500);
        uac.send(&invite);
        let mut next_retrans = Instant::now() + interval;
        let mut provisional = false;
        let ok = loop {
            assert!(
                Instant::now() < deadline,
                "no 200 to our INVITE within 10 s\n{}",
                uac.transcript()
            );
            let wait = if provisional {
                deadline.saturating_duration_since(Instant::now())
            } else {
                next_retrans.saturating_duration_since(Instant::now())
            };
            let Some(msg) = uac.recv_raw(wait.max(Duration::from_millis(1))) else {
                if !provisional && Instant::now() >= next_retrans {
                    uac.send(&invite);
                    interval = (interval * 2).min(Duration::from_secs(4));
                    next_retrans = Instant::now() + interval;
                }
                continue;
            };
            match status_code(&msg) {
                Some(100..=199) => provisional = true,
                Some(200) => break msg,
                Some(code) => panic!("INVITE answered {code}\n{}", uac.transcript()),
                None => uac.inbox.push_back(msg),
            }
        };
        uac.to = header_value(&ok, "To", Some("t")).expect("To in the 200");
        let contact = header_value(&ok, "Contact", Some("m")).expect("Contact in the 200");
        uac.remote_target = contact
            .trim()
            .trim_start_matches('<')
            .split('>')
            .next()
            .unwrap_or_default()
            .to_string();
        uac.invite_ok_cseq = header_value(&ok, "CSeq", None).unwrap_or_default();
        uac.routes = header_values(&ok, "Record-Route")
            .iter()
            .flat_map(|v| v.split(','))
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty())
            .collect();
        uac.routes.reverse();
        let ack_branch = format!("z9hG4bK-{}", uac_token());
        let target = uac.remote_target.clone();
        uac.ack = uac.request("ACK", &target, &ack_branch, 1, &[], "");
        let ack = uac.ack.clone();
        uac.send(&ack);
        let body = sip_body(&ok);
        let port: u16 = body
            .lines()
            .find_map(|l| l.strip_prefix("m=audio "))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no m=audio port in the 200's SDP\n{}", uac.transcript()));
        let ip: std::net::IpAddr = body
            .lines()
            .find_map(|l| l.strip_prefix("c=IN IP4 "))
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or(LOCALHOST.into());
        uac.rtp_remote = SocketAddr::new(ip, port);
        uac.rtp = Some(RtpPump::start(
            rtp_sock,
            uac.rtp_remote,
            uac.rtp_received.clone(),
            uac.rtp_payload.clone(),
        ));
        uac
    }

    /// The RTP address in our SDP, which our RTP comes from.
    pub fn rtp_local_addr(&self) -> SocketAddr {
        self.rtp_local
    }

    /// The daemon's RTP address, from its SDP answer.
    pub fn daemon_rtp_addr(&self) -> SocketAddr {
        self.rtp_remote
    }

    /// Types `keys` as RFC 4733 telephone-events in our RTP stream (a press every 360 ms) and
    /// returns when the last one is sent.
    pub fn rtp_digits(&self, keys: &str) {
        self.rtp
            .as_ref()
            .expect("RTP is running (the call is up)")
            .press_keys(keys);
    }

    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// RTP packets received from the daemon so far (prompts and silence).
    pub fn rtp_received(&self) -> u32 {
        self.rtp_received.load(Ordering::Relaxed)
    }

    /// The payloads of the RTP packets received so far (G.711 bytes, the first 30 s), in
    /// arrival order: what the caller heard.
    pub fn rtp_payload(&self) -> Vec<u8> {
        self.rtp_payload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Everything sent and received, for failure messages.
    pub fn transcript(&self) -> String {
        self.trace.join("\n")
    }

    fn request(
        &self,
        method: &str,
        uri: &str,
        branch: &str,
        cseq: u32,
        extra: &[(&str, &str)],
        body: &str,
    ) -> String {
        let cseq_method = method;
        let mut m = format!(
            "{method} {uri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: {}\r\n\
             To: {}\r\n\
             Call-ID: {}\r\n\
             CSeq: {cseq} {cseq_method}\r\n\
             Contact: <sip:rawuac@{}>\r\n\
             User-Agent: ivrd-tests RawUac\r\n",
            self.local, self.from, self.to, self.call_id, self.local
        );
        for route in &self.routes {
            m.push_str(&format!("Route: {route}\r\n"));
        }
        for (n, v) in extra {
            m.push_str(&format!("{n}: {v}\r\n"));
        }
        m.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        m
    }

    fn send(&mut self, msg: &str) {
        self.trace.push(format!(">>> sent\n{}", msg.trim_end()));
        self.sock
            .send_to(msg.as_bytes(), self.daemon)
            .expect("send SIP");
    }

    /// The next datagram within `timeout`, handling what needs no decision: a retransmitted
    /// 200 to our INVITE gets the ACK again, a retransmitted request we already answered gets
    /// the same answer again.
    fn recv_raw(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65535];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.sock.set_read_timeout(Some(left)).ok()?;
            let n = match self.sock.recv_from(&mut buf) {
                Ok((n, _)) => n,
                Err(_) => return None,
            };
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.trace.push(format!("<<< received\n{}", msg.trim_end()));
            if status_code(&msg).is_some_and(|c| (200..300).contains(&c))
                && !self.ack.is_empty()
                && header_value(&msg, "CSeq", None).as_deref() == Some(&self.invite_ok_cseq)
            {
                let ack = self.ack.clone();
                self.send(&ack);
                continue;
            }
            if sip_method(&msg).is_some() {
                let branch = via_branch(&msg);
                if let Some((_, resp)) = self.answered.iter().find(|(b, _)| *b == branch) {
                    let resp = resp.clone();
                    self.send(&resp);
                    continue;
                }
            }
            return Some(msg);
        }
    }

    /// Waits for a request with `method` from the daemon (taking earlier arrivals first).
    /// Other requests that arrive meanwhile stay queued for later calls.
    pub fn expect_request(&mut self, method: &str, timeout: Duration) -> String {
        self.try_request(method, timeout).unwrap_or_else(|| {
            panic!(
                "no {method} from ivrd within {timeout:?}\n---- RawUac transcript ----\n{}",
                self.transcript()
            )
        })
    }

    /// Like [`expect_request`](Self::expect_request), but None on timeout.
    pub fn try_request(&mut self, method: &str, timeout: Duration) -> Option<String> {
        if let Some(i) = self
            .inbox
            .iter()
            .position(|m| sip_method(m) == Some(method))
        {
            return self.inbox.remove(i);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let msg = self.recv_raw(deadline.saturating_duration_since(Instant::now()))?;
            if sip_method(&msg) == Some(method) {
                return Some(msg);
            }
            if sip_method(&msg).is_some() {
                self.inbox.push_back(msg);
            }
        }
    }

    /// Requests from the daemon that arrived and were not taken by `expect_request`.
    pub fn unanswered(&mut self, window: Duration) -> Vec<String> {
        while let Some(msg) = self.recv_raw(window) {
            if sip_method(&msg).is_some() {
                self.inbox.push_back(msg);
            }
        }
        self.inbox.iter().cloned().collect()
    }

    /// Answers a request from the daemon (Via, From, To, Call-ID and CSeq copied).
    pub fn respond(&mut self, req: &str, code: u16, reason: &str) {
        self.respond_with(req, code, reason, &[]);
    }

    /// Like [`respond`](Self::respond), with extra headers (e.g. a `Proxy-Authenticate`
    /// challenge).
    pub fn respond_with(&mut self, req: &str, code: u16, reason: &str, headers: &[(&str, &str)]) {
        let mut resp = format!("SIP/2.0 {code} {reason}\r\n");
        for (name, value) in headers {
            resp.push_str(&format!("{name}: {value}\r\n"));
        }
        for via in header_values(req, "Via") {
            resp.push_str(&format!("Via: {via}\r\n"));
        }
        for name in ["From", "To", "Call-ID", "CSeq"] {
            let v = header_value(req, name, None)
                .unwrap_or_else(|| panic!("request without {name}:\n{req}"));
            resp.push_str(&format!("{name}: {v}\r\n"));
        }
        resp.push_str(&format!(
            "Contact: <sip:rawuac@{}>\r\nContent-Length: 0\r\n\r\n",
            self.local
        ));
        self.answered.push((via_branch(req), resp.clone()));
        self.send(&resp);
    }

    /// Sends an in-dialog request and waits for its final response (retransmitting on UDP).
    fn in_dialog(&mut self, method: &str, extra: &[(&str, &str)], body: &str) -> String {
        self.cseq += 1;
        let cseq = self.cseq;
        let branch = format!("z9hG4bK-{}", uac_token());
        let target = self.remote_target.clone();
        let msg = self.request(method, &target, &branch, cseq, extra, body);
        let want_cseq = format!("{cseq} {method}");
        self.send(&msg);
        let deadline = Instant::now() + Duration::from_secs(8);
        let mut interval = Duration::from_millis(500);
        let mut next = Instant::now() + interval;
        loop {
            assert!(
                Instant::now() < deadline,
                "no final response to our {method} within 8 s\n{}",
                self.transcript()
            );
            let wait = next.saturating_duration_since(Instant::now());
            match self.recv_raw(wait.max(Duration::from_millis(1))) {
                None => {
                    self.send(&msg);
                    interval = (interval * 2).min(Duration::from_secs(4));
                    next = Instant::now() + interval;
                }
                Some(m) if sip_method(&m).is_some() => self.inbox.push_back(m),
                Some(m) => {
                    let ours = header_value(&m, "CSeq", None).as_deref() == Some(&want_cseq);
                    if ours && status_code(&m).is_some_and(|c| c >= 200) {
                        return m;
                    }
                }
            }
        }
    }

    /// Types `digits` as SIP INFO `application/dtmf-relay`, `gap` apart; each must get a 200.
    pub fn info_digits(&mut self, digits: &str, gap: Duration) {
        for (i, d) in digits.chars().enumerate() {
            if i > 0 {
                std::thread::sleep(gap);
            }
            let body = format!("Signal={d}\r\nDuration=160\r\n");
            let resp = self.in_dialog("INFO", &[("Content-Type", "application/dtmf-relay")], &body);
            assert_eq!(
                status_code(&resp),
                Some(200),
                "INFO digit {d} not accepted:\n{resp}"
            );
        }
    }

    /// Reports the progress of a transfer we accepted: NOTIFY `Event: refer` with a
    /// `message/sipfrag` body such as `SIP/2.0 200 OK`. Returns the daemon's answer's status.
    pub fn notify_sipfrag(&mut self, sipfrag: &str, subscription_state: &str) -> u16 {
        let body = format!("{sipfrag}\r\n");
        let resp = self.in_dialog(
            "NOTIFY",
            &[
                ("Event", "refer"),
                ("Subscription-State", subscription_state),
                ("Content-Type", "message/sipfrag;version=2.0"),
            ],
            &body,
        );
        status_code(&resp).unwrap_or(0)
    }

    /// Hangs up (BYE) and returns the status of the answer.
    pub fn bye(&mut self) -> u16 {
        let resp = self.in_dialog("BYE", &[], "");
        self.rtp = None;
        status_code(&resp).unwrap_or(0)
    }

    /// Stops sending RTP (after the call ended).
    pub fn stop_media(&mut self) {
        self.rtp = None;
    }
}

/// The `branch` parameter of the top Via.
pub fn via_branch(msg: &str) -> String {
    header_value(msg, "Via", Some("v"))
        .and_then(|v| {
            v.split(';')
                .find_map(|p| p.trim().strip_prefix("branch=").map(str::to_owned))
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// baresip, headless, driven over ctrl_tcp (see tests/baresip_call.rs for what we learned).
// ---------------------------------------------------------------------------------------------

const BARESIP_CONFIG_TEMPLATE: &str = include_str!("../baresip/config.in");

/// Modules the config loads; a directory qualifies only if it has all of them.
const BARESIP_MODULES: &[&str] = &[
    "g711.so",
    "aubridge.so",
    "aufile.so",
    "sndfile.so",
    "uuid.so",
    "account.so",
    "menu.so",
    "ctrl_tcp.so",
];

/// Finds baresip's module directory, which differs between distributions and builds.
pub fn baresip_module_dir() -> PathBuf {
    let mut candidates = vec![
        PathBuf::from("/usr/lib/baresip/modules"),
        PathBuf::from("/usr/local/lib/baresip/modules"),
        PathBuf::from("/usr/lib64/baresip/modules"),
    ];
    if let Ok(entries) = fs::read_dir("/usr/lib") {
        candidates.extend(entries.flatten().map(|e| e.path().join("baresip/modules")));
    }
    candidates
        .into_iter()
        .find(|dir| BARESIP_MODULES.iter().all(|m| dir.join(m).is_file()))
        .unwrap_or_else(|| {
            panic!(
                "no baresip module directory with {BARESIP_MODULES:?}: run scripts/install-test-deps.sh (package baresip-core)"
            )
        })
}

/// A mono 8 kHz WAV with a quiet 440 Hz tone (the caller's "voice"; far from DTMF frequencies).
pub fn write_tone_wav(path: &Path, secs: u32) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec).expect("create source WAV");
    for i in 0..secs * 8000 {
        let t = f64::from(i) / 8000.0;
        let sample = (0.05 * (2.0 * std::f64::consts::PI * 440.0 * t).sin() * 32767.0) as i16;
        writer.write_sample(sample).expect("write sample");
    }
    writer.finalize().expect("finalize source WAV");
}

/// RMS of a 16-bit WAV, as a fraction of full scale, and its length.
pub fn wav_rms(path: &Path) -> (f64, Duration) {
    let mut reader =
        hound::WavReader::open(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let spec = reader.spec();
    assert_eq!(
        spec.bits_per_sample, 16,
        "sndfile dump is not 16-bit: {spec:?}"
    );
    let samples: Vec<i16> = reader
        .samples::<i16>()
        .collect::<Result<_, _>>()
        .expect("decode WAV samples");
    let secs = samples.len() as f64 / f64::from(spec.sample_rate) / f64::from(spec.channels);
    if samples.is_empty() {
        return (0.0, Duration::ZERO);
    }
    let mean_square = samples
        .iter()
        .map(|&s| (f64::from(s) / 32768.0).powi(2))
        .sum::<f64>()
        / samples.len() as f64;
    (mean_square.sqrt(), Duration::from_secs_f64(secs))
}

/// A headless baresip with its own config directory and a ctrl_tcp connection.
pub struct Baresip {
    child: Option<Child>,
    dir: tempfile::TempDir,
    ctrl: Option<TcpStream>,
    pending: Vec<u8>,
    /// Every event received so far, as raw JSON.
    pub events: Vec<String>,
    token: u32,
    /// The UDP ports baresip's media may use (first, last).
    rtp_ports: (u16, u16),
    /// The port of `sip_listen` (UDP and TCP; TLS on the next one).
    sip_port: u16,
}

/// What a [`Baresip`] adds to the shared config and account: for SRTP over TLS,
/// `module srtp.so` and `sip_cafile` lines, and `;mediaenc=srtp-mand` on the account.
#[derive(Clone, Debug, Default)]
pub struct BaresipExtras {
    /// Lines appended to tests/baresip/config.in.
    pub config: String,
    /// Parameters appended to the account line (e.g. `;mediaenc=srtp-mand`).
    pub account_params: String,
}

/// The address family a [`Baresip`] listens, announces and sends media in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// SIP on 127.0.0.1, media announced as `c=IN IP4 127.0.0.1`.
    V4,
    /// SIP on `[::1]`, media announced as `c=IN IP6 ::1`.
    V6,
}

impl Baresip {
    /// Starts baresip allowing `max_calls` simultaneous calls (a transfer needs 2: the new
    /// call to the target is made while the transferred one still exists).
    pub fn start(max_calls: u32) -> Baresip {
        Self::start_on(max_calls, Family::V4)
    }

    /// [`Baresip::start`] in one address family: over IPv6 it listens on `[::1]`, announces
    /// `::1` in its SDP and its account is `sip:tester@[::1]` (`net_interface ::1`, an address
    /// rather than `lo`, as for IPv4). Its control socket stays on 127.0.0.1.
    pub fn start_on(max_calls: u32, family: Family) -> Baresip {
        Self::start_with(max_calls, family, &BaresipExtras::default())
    }

    /// [`Baresip::start_on`] with more config lines and account parameters.
    pub fn start_with(max_calls: u32, family: Family, extras: &BaresipExtras) -> Baresip {
        let binary = require_tool("baresip");
        let module_path = baresip_module_dir();
        let dir = tempfile::Builder::new()
            .prefix("baresip-test-")
            .tempdir()
            .expect("create temp dir");
        let dump_dir = dir.path().join("dump");
        fs::create_dir(&dump_dir).expect("create dump dir");
        let source = dir.path().join("source.wav");
        write_tone_wav(&source, 120);
        // baresip also listens for TLS on the port after its SIP port: that one must be
        // nobody else's either (another test's daemon once got it: baresip exited with 98).
        let (sip_port, host) = loop {
            let (port, host) = match family {
                Family::V4 => (free_sip_port(), "127.0.0.1"),
                Family::V6 => (free_sip_port_v6(), "::1"),
            };
            let next_free = TcpListener::bind((host, port + 1)).is_ok();
            if next_free && claim(port + 1) {
                break (port, host);
            }
        };
        let sip_listen = match family {
            Family::V4 => format!("{host}:{sip_port}"),
            Family::V6 => format!("[{host}]:{sip_port}"),
        };
        // baresip also listens for SIP over TLS on the next port up (sip_listen + 1), so the
        // control socket must not be there.
        let ctrl_port = loop {
            let port = free_sip_port();
            if port != sip_port + 1 {
                break port;
            }
        };
        let rtp_min = free_media_port();

        let template = BARESIP_CONFIG_TEMPLATE.replace(
            "call_max_calls\t\t1",
            &format!("call_max_calls\t\t{max_calls}"),
        );
        assert!(
            template.contains(&format!("call_max_calls\t\t{max_calls}")),
            "tests/baresip/config.in no longer has `call_max_calls<TAB><TAB>1`"
        );
        let config = (template + &extras.config)
            .replace("@SIP_LISTEN@", &sip_listen)
            .replace("@NET_INTERFACE@", host)
            .replace("@RTP_MIN@", &rtp_min.to_string())
            .replace("@RTP_MAX@", &(rtp_min + 3).to_string())
            .replace("@SOURCE_WAV@", &source.display().to_string())
            .replace("@MODULE_PATH@", &module_path.display().to_string())
            .replace("@DUMP_DIR@", &dump_dir.display().to_string())
            .replace("@CTRL_PORT@", &ctrl_port.to_string());
        fs::write(dir.path().join("config"), config).expect("write baresip config");
        let aor_host = match family {
            Family::V4 => host.to_string(),
            Family::V6 => format!("[{host}]"),
        };
        fs::write(
            dir.path().join("accounts"),
            format!(
                "<sip:tester@{aor_host}>;regint=0{}\n",
                extras.account_params
            ),
        )
        .expect("write accounts");

        let log = File::create(dir.path().join("baresip.log")).expect("create log");
        let child = Command::new(binary)
            .arg("-f")
            .arg(dir.path())
            // Backstop: quit on its own even if this test process dies without dropping us.
            .args(["-t", "180"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn baresip");

        let mut phone = Baresip {
            child: Some(child),
            dir,
            ctrl: None,
            pending: Vec::new(),
            events: Vec::new(),
            token: 0,
            rtp_ports: (rtp_min, rtp_min + 3),
            sip_port,
        };
        phone.connect_ctrl(SocketAddr::from((LOCALHOST, ctrl_port)));
        phone
    }

    fn connect_ctrl(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "baresip exited with {status} during startup\n{}",
                    self.log()
                );
            }
            if let Ok(stream) = TcpStream::connect(addr) {
                self.ctrl = Some(stream);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "baresip ctrl_tcp did not listen on {addr}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Where baresip's `sndfile` module writes what the call heard (`dump-*-dec.wav`).
    pub fn dump_dir(&self) -> PathBuf {
        self.dir.path().join("dump")
    }

    /// The UDP ports baresip's media may use (first, last).
    pub fn rtp_ports(&self) -> (u16, u16) {
        self.rtp_ports
    }

    /// The port baresip listens on for SIP (UDP and TCP), on 127.0.0.1 or `[::1]`: where a
    /// proxy sends calls for it (`sip:tester@127.0.0.1:<port>`).
    pub fn sip_port(&self) -> u16 {
        self.sip_port
    }

    /// What the one call so far sounded like at baresip's end: the RMS (fraction of full
    /// scale) and length of its `dump-*-dec.wav`, complete once the call is closed.
    pub fn heard(&self) -> (f64, Duration) {
        wav_rms(&self.heard_wav())
    }

    /// The recording of what the one call so far heard (`dump-*-dec.wav`: 8 kHz mono s16 for
    /// G.711), complete once the call is closed. Panics unless there is exactly one.
    pub fn heard_wav(&self) -> PathBuf {
        let dumps: Vec<PathBuf> = fs::read_dir(self.dump_dir())
            .expect("read dump dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("dump-") && n.ends_with("-dec.wav"))
            })
            .collect();
        assert_eq!(
            dumps.len(),
            1,
            "expected one dump-*-dec.wav in {}, found {dumps:?}\n{}",
            self.dump_dir().display(),
            self.log()
        );
        dumps[0].clone()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("baresip.log")).unwrap_or_default()
    }

    /// Reads one netstring frame, or None when `deadline` passes first.
    fn read_frame(&mut self, deadline: Instant) -> Option<String> {
        loop {
            if let Some(colon) = self.pending.iter().position(|&b| b == b':') {
                let len: usize = std::str::from_utf8(&self.pending[..colon])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| {
                        panic!(
                            "bad netstring from baresip: {:?}",
                            String::from_utf8_lossy(&self.pending)
                        )
                    });
                if self.pending.len() > colon + len + 1 {
                    let payload =
                        String::from_utf8_lossy(&self.pending[colon + 1..colon + 1 + len])
                            .into_owned();
                    self.pending.drain(..colon + len + 2);
                    return Some(payload);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let stream = self.ctrl.as_mut().expect("ctrl connection");
            stream
                .set_read_timeout(Some(left.min(Duration::from_millis(200))))
                .expect("set timeout");
            let mut buf = [0u8; 4096];
            match stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("reading baresip ctrl_tcp: {e}"),
            }
        }
    }

    /// Runs a command and returns its response; events that arrive meanwhile are kept.
    pub fn command(&mut self, command: &str, params: &str) -> String {
        self.token += 1;
        let token = self.token.to_string();
        assert!(
            !params.contains(['"', '\\']),
            "unexpected characters in {params:?}"
        );
        let json = format!(r#"{{"command":"{command}","params":"{params}","token":"{token}"}}"#);
        let frame = format!("{}:{json},", json.len());
        self.ctrl
            .as_mut()
            .expect("ctrl connection")
            .write_all(frame.as_bytes())
            .expect("write ctrl command");
        let deadline = Instant::now() + Duration::from_secs(5);
        let token_field = format!(r#""token":"{token}""#);
        loop {
            let frame = self
                .read_frame(deadline)
                .unwrap_or_else(|| panic!("no response to {command} from baresip\n{}", self.log()));
            if frame.contains(r#""response":true"#) && frame.contains(&token_field) {
                assert!(
                    frame.contains(r#""ok":true"#),
                    "baresip refused {command} {params}: {frame}"
                );
                return frame;
            }
            if frame.contains(r#""event":true"#) {
                self.events.push(frame);
            }
        }
    }

    /// Reads events for up to `window` (keeping them).
    pub fn poll_events(&mut self, window: Duration) {
        let deadline = Instant::now() + window;
        while let Some(frame) = self.read_frame(deadline) {
            if frame.contains(r#""event":true"#) {
                self.events.push(frame);
            }
        }
    }

    /// How many events of `kind` were received so far.
    pub fn count_events(&self, kind: &str) -> usize {
        let needle = format!(r#""type":"{kind}""#);
        self.events.iter().filter(|e| e.contains(&needle)).count()
    }

    /// Waits until `count` events of `kind` (e.g. CALL_ESTABLISHED) were received in all.
    pub fn wait_events(&mut self, kind: &str, count: usize, timeout: Duration) -> Vec<String> {
        let needle = format!(r#""type":"{kind}""#);
        let deadline = Instant::now() + timeout;
        loop {
            let found: Vec<String> = self
                .events
                .iter()
                .filter(|e| e.contains(&needle))
                .cloned()
                .collect();
            if found.len() >= count {
                return found;
            }
            match self.read_frame(deadline) {
                Some(frame) if frame.contains(r#""event":true"#) => self.events.push(frame),
                Some(_) => {}
                None => panic!(
                    "baresip sent {} {kind} events within {timeout:?}, expected {count}; events so far:\n{}\n--- baresip log ---\n{}",
                    found.len(),
                    self.events.join("\n"),
                    self.log()
                ),
            }
        }
    }

    /// Waits for an event of `kind`, including ones already received.
    pub fn wait_event(&mut self, kind: &str, timeout: Duration) -> String {
        self.wait_events(kind, 1, timeout).remove(0)
    }

    /// Types `digits` as RFC 4733 events (`sndcode`), `gap` apart.
    pub fn type_digits(&mut self, digits: &str, gap: Duration) {
        for d in digits.chars() {
            self.command("sndcode", &d.to_string());
            std::thread::sleep(gap);
        }
    }

    /// Asks baresip to quit and waits for it.
    pub fn quit(&mut self) {
        if let Some(stream) = self.ctrl.as_mut() {
            let json = r#"{"command":"quit","params":"","token":"quit"}"#;
            let _ = stream.write_all(format!("{}:{json},", json.len()).as_bytes());
        }
        if let Some(child) = self.child.as_mut() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- baresip events ----\n{}\n---- baresip log ----\n{}\n---- end of baresip log ----",
                self.events.join("\n"),
                self.log()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Signals and exit, for the shutdown tests.
// ---------------------------------------------------------------------------------------------

impl Daemon {
    /// Sends `signal` (a name such as `TERM`, `KILL`, `HUP`) to the daemon with the shell's
    /// `kill` builtin (present even where procps is not). Panics if the daemon already exited.
    pub fn signal(&mut self, signal: &str) {
        assert!(
            self.is_running(),
            "ivrd is not running; cannot send SIG{signal}\n--- ivrd log ---\n{}",
            self.log()
        );
        let pid = self.pid().to_string();
        let status = Command::new("sh")
            .args(["-c", &format!("kill -{signal} \"$1\""), "sh", &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed: {status}");
    }

    /// Waits up to `timeout` for the daemon to exit and returns its exit status, or None if it
    /// is still running (or was already reaped by an earlier call). Once it has exited the process is reaped and forgotten, so dropping
    /// the `Daemon` later signals nothing (the pid may belong to someone else by then); the
    /// log stays readable until the drop.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `GET path` from the admin listener at `addr`; the whole HTTP response.
pub fn admin_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("admin listener reachable");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    r
}

/// The value of a sample line of a metrics page, such as `ivrd_sip_transactions 0` or
/// `ivrd_dtmf_digits_total{method="rfc4733"} 3`.
pub fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{metrics}"))
        .trim()
        .parse()
        .expect("a number")
}

/// Test certificates, made at test time (never committed): a CA, and leaves it signs.
pub struct TestPki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestPki {
    pub fn new() -> TestPki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ivrd test CA");
        let key = rcgen::KeyPair::generate().expect("CA key");
        TestPki {
            ca: rcgen::CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A certificate for `names` (DNS names or IP addresses) signed by the CA: (cert, key) PEM.
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).expect("leaf params");
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.ca).expect("sign leaf");
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a server certificate for 127.0.0.1 into `dir` as cert.pem/key.pem (and the CA
    /// as ca.pem); returns the three paths.
    pub fn write_server(&self, dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let (cert, key) = self.leaf(&["127.0.0.1", "ivrd.test"]);
        let paths = (
            dir.join("cert.pem"),
            dir.join("key.pem"),
            dir.join("ca.pem"),
        );
        fs::write(&paths.0, cert).unwrap();
        fs::write(&paths.1, key).unwrap();
        fs::write(&paths.2, self.ca_pem()).unwrap();
        (paths.0, paths.1, paths.2)
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

/// SIP over TLS from a small rustls client (Debian's SIPp has no TLS), or a server side that
/// takes the connection ivrd opens: framing by Content-Length as `SipTcp` does.
pub struct SipTls<C = rustls::ClientConnection> {
    pub stream: rustls::StreamOwned<C, TcpStream>,
    pending: Vec<u8>,
}

impl SipTls<rustls::ServerConnection> {
    /// Accepts one connection on `listener` within `timeout` and completes the handshake with
    /// `cert`/`key` (PEM). With `client_ca`, the client must present a certificate from it.
    pub fn accept(
        listener: &TcpListener,
        (cert, key): (&str, &str),
        client_ca: Option<&str>,
        timeout: Duration,
    ) -> std::io::Result<SipTls<rustls::ServerConnection>> {
        use rustls::pki_types::pem::PemObject;
        let builder = rustls::ServerConfig::builder();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
                    roots.add(c.expect("CA PEM")).expect("add CA");
                }
                builder.with_client_cert_verifier(
                    rustls::server::WebPkiClientVerifier::builder(std::sync::Arc::new(roots))
                        .build()
                        .expect("client verifier"),
                )
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(
                vec![rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .expect("server cert");
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + timeout;
        let sock = loop {
            match listener.accept() {
                Ok((sock, _)) => break sock,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "nobody connected",
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        };
        sock.set_nonblocking(false)?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        let conn = rustls::ServerConnection::new(std::sync::Arc::new(config))
            .map_err(std::io::Error::other)?;
        let mut stream = rustls::StreamOwned::new(conn, sock);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(SipTls {
            stream,
            pending: Vec::new(),
        })
    }

    /// The client's certificate (DER), if it presented one.
    pub fn client_cert(&self) -> Option<Vec<u8>> {
        self.stream
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
    }
}

impl SipTls {
    /// Connects to `target`, trusting `ca_pem`, presenting `client` (cert, key PEM) if given.
    pub fn connect(
        target: SocketAddr,
        ca_pem: &str,
        client: Option<(&str, &str)>,
    ) -> std::io::Result<SipTls> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("add CA");
        }
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let config = match client {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![
                        rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap(),
                    ],
                    rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .expect("client cert"),
            None => builder.with_no_client_auth(),
        };
        let name = rustls::pki_types::ServerName::IpAddress(target.ip().into());
        let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
            .map_err(std::io::Error::other)?;
        let sock = TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut stream = rustls::StreamOwned::new(conn, sock);
        // Drive the handshake now, so a refused one fails here.
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(SipTls {
            stream,
            pending: Vec::new(),
        })
    }

    /// The server's certificate (DER), to tell one certificate from another.
    pub fn server_cert(&self) -> Vec<u8> {
        self.stream
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default()
    }
}

impl<C, S> SipTls<C>
where
    C: std::ops::DerefMut + std::ops::Deref<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.sock.local_addr().expect("local addr")
    }

    pub fn send(&mut self, data: &[u8]) {
        self.stream.write_all(data).expect("write TLS");
        self.stream.flush().expect("flush TLS");
    }

    /// The next complete message, or None if the peer closes or `timeout` passes first.
    pub fn recv(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = find_subslice(&self.pending, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.pending[..end]).into_owned();
                let body_len = header_value(&head, "Content-Length", Some("l"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                let total = end + 4 + body_len;
                if self.pending.len() >= total {
                    let msg: Vec<u8> = self.pending.drain(..total).collect();
                    return Some(String::from_utf8_lossy(&msg).into_owned());
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.sock.set_read_timeout(Some(left)).ok()?;
            match self.stream.read(&mut buf) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// The next response with a final status (skipping 1xx), or None.
    pub fn final_response(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let msg = self.recv(deadline.saturating_duration_since(Instant::now()))?;
            if status_code(&msg).is_some_and(|c| c >= 200) {
                return Some(msg);
            }
        }
    }
}
