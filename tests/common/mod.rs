//! Harness shared by the integration tests: starts `ivrd` on free loopback ports with a
//! generated config, runs SIPp scenarios against it, and sends raw SIP over UDP/TCP.
//!
//! Every peer (SIPp, baresip) is a hard requirement: a missing tool fails the test with the
//! install command instead of skipping it, so a green run always means the calls were made.

// Each test binary compiles this module and uses a different subset of it.
#![allow(dead_code)]

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

/// Finds `name` on PATH or panics with the command that installs it.
pub fn require_tool(name: &str) -> PathBuf {
    find_in_path(name).unwrap_or_else(|| {
        panic!("{name} not found: run scripts/install-test-deps.sh (installs sip-tester and baresip-core)")
    })
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
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

/// A loopback port that is free for both UDP and TCP (SIP listens on both with one number).
pub fn free_sip_port() -> u16 {
    for _ in 0..200 {
        let udp = UdpSocket::bind((LOCALHOST, 0)).expect("bind an ephemeral UDP port");
        let port = udp.local_addr().expect("local addr").port();
        if TcpListener::bind((LOCALHOST, port)).is_ok() && claim(port) {
            return port;
        }
    }
    panic!("no loopback port free for both UDP and TCP after 200 tries");
}

/// A free loopback UDP port.
pub fn free_udp_port() -> u16 {
    for _ in 0..200 {
        let udp = UdpSocket::bind((LOCALHOST, 0)).expect("bind an ephemeral UDP port");
        let port = udp.local_addr().expect("local addr").port();
        if claim(port) {
            return port;
        }
    }
    panic!("no free loopback UDP port after 200 tries");
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
    /// (a TOML document such as `"[demo]\nrounds = 1"`), and waits until it answers OPTIONS.
    pub fn start(toml_overrides: &str) -> Daemon {
        let sip_port = free_sip_port();
        let rtp_range = next_rtp_range();
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

[media]
rtp_ip = "127.0.0.1"
rtp_port_min = {rtp_min}
rtp_port_max = {rtp_max}

# The call-engine tests drive the built-in demo flow; dialplan tests turn it off.
[demo]
enabled = true

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
        let local_port = free_sip_port();
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
