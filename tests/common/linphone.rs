//! linphonec (Debian `linphone-cli`, liblinphone 5.1), headless, driven over its stdin.
//!
//! What it takes to run it in a test (learned on Debian 12's linphone-cli 5.1.65):
//! - A writable `HOME` holding `~/.local/share/linphone`. liblinphone opens its SQLite database
//!   there and does not create the directory; without the database the core stays in
//!   `LinphoneGlobalStartup` for ever (`states global` says so), never opens its SIP port, and
//!   `call` fails with "No listening point matching" (in the debug log).
//! - Its own config file (`-c`), which it rewrites with every default on exit. On a host with
//!   a global IPv6 address it announces that address (From, `c=IN IP6 fd00::2`) and binds
//!   `[::0]`; `[sip] use_ipv6=0`, `bind_address`, `contact`, `guess_hostname=0` and
//!   `[rtp] bind_address` keep SIP and media on 127.0.0.1. `sip_tcp_port=0` and
//!   `sip_tls_port=0` turn those transports off (`-1` means a random port). No STUN server, no
//!   proxy, no registration: nothing leaves loopback.
//! - No sound card: `soundcard use files`. With no file to play (`play <wav>`) it then sends
//!   no RTP audio at all, only telephone-events, and nothing while it holds a call. With a
//!   file it sends the file, and keeps sending it to the held party during a hold (it is also
//!   the hold music); `mute` does not stop that.
//! - stdin is read by readline, from a pipe too; the core is iterated in readline's idle hook,
//!   so calls progress between commands. `linphonecsh` is no use here: every linphonec it
//!   starts listens on the same per-user socket (`/tmp/linphonec-<uid>`).
//! - Lines to wait for: `Call N with <uri> connected.`, `Media streams established with <uri>
//!   for call N (audio).`, `Call N with <uri> is now paused.`, `Call N with <uri> ended
//!   (<reason>).`
//! - There is no `dtmf` command: a line of digits is sent as DTMF, one key a second (the
//!   command loop sleeps 1 s after each key), by default as RFC 2833 telephone-events (not
//!   SIP INFO, not in-band).

use super::*;
use std::io::BufRead;
use std::process::ChildStdin;
use std::sync::Arc;

/// A running linphonec with its own HOME, config and debug log in a temporary directory.
/// Dropping it quits linphonec (killing it if it does not exit) and, when the test is failing,
/// prints what it said and the SIP part of its debug log.
pub struct Linphonec {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    dir: tempfile::TempDir,
    /// Everything linphonec wrote to stdout and stderr so far.
    output: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    sip_port: u16,
    rtp_port: u16,
}

/// How long linphonec may take to open its SIP port (it loads every codec plugin first).
const LINPHONEC_STARTUP: Duration = Duration::from_secs(30);

impl Linphonec {
    /// Starts linphonec on loopback and waits until its core is up and its SIP port is open.
    pub fn start() -> Linphonec {
        let binary = require_tool("linphonec");
        let dir = tempfile::Builder::new()
            .prefix("linphonec-test-")
            .tempdir()
            .expect("create temp dir");
        let home = dir.path().join("home");
        fs::create_dir_all(home.join(".local/share/linphone")).expect("create linphonec HOME");
        let sip_port = free_sip_port();
        // linphonec takes this port for its first call and the next even one (+2) for a call
        // made while the first exists (following a REFER): the block is ours up to +3.
        let rtp_port = free_media_port();
        let config = dir.path().join("linphonerc");
        fs::write(
            &config,
            format!(
                "[sip]\n\
                 sip_port={sip_port}\n\
                 sip_tcp_port=0\n\
                 sip_tls_port=0\n\
                 use_ipv6=0\n\
                 bind_address=127.0.0.1\n\
                 contact=sip:linphonec@127.0.0.1\n\
                 guess_hostname=0\n\
                 ping_with_options=0\n\
                 [rtp]\n\
                 audio_rtp_port={rtp_port}\n\
                 bind_address=127.0.0.1\n\
                 [net]\n\
                 stun_server=\n\
                 [sound]\n\
                 echocancellation=0\n"
            ),
        )
        .expect("write linphonerc");

        let mut child = Command::new(&binary)
            .arg("-c")
            .arg(&config)
            .args(["-d", "6", "-l"])
            .arg(dir.path().join("debug.log"))
            .env("HOME", &home)
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
        let output = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let stdout = child.stdout.take().expect("linphonec stdout");
        let stderr = child.stderr.take().expect("linphonec stderr");
        readers.push(spawn_line_reader(stdout, output.clone()));
        readers.push(spawn_line_reader(stderr, output.clone()));
        let stdin = child.stdin.take();

        let mut phone = Linphonec {
            child: Some(child),
            stdin,
            dir,
            output,
            readers,
            sip_port,
            rtp_port,
        };
        phone.wait_started();
        phone.command("soundcard use files");
        phone.wait_for(
            "Using wav files instead of soundcard.",
            Duration::from_secs(10),
        );
        phone
    }

    /// Asks for the core's state until it is `LinphoneGlobalOn`, then checks the SIP port.
    fn wait_started(&mut self) {
        let deadline = Instant::now() + LINPHONEC_STARTUP;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("linphonec exited with {status} during start-up");
            }
            if Instant::now() >= deadline {
                let log = self.debug_log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                panic!(
                    "linphonec's core is not up after {LINPHONEC_STARTUP:?} (`states global` never said LinphoneGlobalOn)\n--- output ---\n{}\n--- debug log (last lines) ---\n{}",
                    self.output(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            self.command("states global");
            std::thread::sleep(Duration::from_millis(300));
            if self.output().contains("LinphoneGlobalOn") {
                break;
            }
        }
        self.command("ports");
        self.wait_for(
            &format!("sip port = {}", self.sip_port),
            Duration::from_secs(10),
        );
    }

    /// The UDP port linphonec listens on for SIP (127.0.0.1).
    pub fn sip_port(&self) -> u16 {
        self.sip_port
    }

    /// The RTP port of its first call (127.0.0.1).
    pub fn rtp_port(&self) -> u16 {
        self.rtp_port
    }

    /// Types one command line.
    pub fn command(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("linphonec stdin");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("write {line:?} to linphonec: {e}"));
    }

    /// Types `digits` as DTMF, one line a key, `gap` apart. linphonec itself sends at most one
    /// key a second, so the last key goes out up to `digits.len()` seconds after this returns.
    pub fn type_digits(&mut self, digits: &str, gap: Duration) {
        for d in digits.chars() {
            assert!(
                d.is_ascii_digit() || d == '#' || d == '*',
                "{d:?} is not a key linphonec sends as DTMF"
            );
            self.command(&d.to_string());
            std::thread::sleep(gap);
        }
    }

    /// Everything linphonec printed so far.
    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many times `needle` appears in linphonec's output so far.
    pub fn count(&self, needle: &str) -> usize {
        self.output().matches(needle).count()
    }

    /// Waits until `needle` appears `count` times in linphonec's output; panics on timeout.
    pub fn wait_count(&self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.count(needle) < count {
            assert!(
                Instant::now() < deadline,
                "linphonec printed {:?} {} times within {timeout:?}, expected {count}",
                needle,
                self.count(needle)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `needle` appears in linphonec's output; panics on timeout.
    pub fn wait_for(&self, needle: &str, timeout: Duration) {
        self.wait_count(needle, 1, timeout);
    }

    /// linphonec's debug log (`-d 6`): every SIP message it sent and received, among much else.
    pub fn debug_log(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.dir.path().join("debug.log")).unwrap_or_default())
            .into_owned()
    }

    /// The SIP messages in the debug log, in order, each starting with its first line
    /// (`INVITE sip:...` or `SIP/2.0 200 OK`).
    pub fn sip_messages(&self) -> Vec<String> {
        sip_messages_in_debug_log(&self.debug_log())
    }

    /// Asks linphonec to quit (it hangs up its calls) and waits up to 5 s for it.
    pub fn quit(&mut self) {
        if self.stdin.is_some() && self.is_running() {
            let _ = self
                .stdin
                .as_mut()
                .map(|s| s.write_all(b"quit\n").and_then(|()| s.flush()));
        }
        self.stdin = None;
        if let Some(child) = self.child.as_mut() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

/// Copies each line a child writes into `sink` (both stdout and stderr end up there).
fn spawn_line_reader(
    stream: impl Read + Send + 'static,
    sink: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(stream);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            sink.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_str(&String::from_utf8_lossy(&line));
            line.clear();
        }
    })
}

/// The SIP messages belle-sip logged: each follows a line ending in `message sent to [...],
/// size: [N] bytes` or `received [N] new bytes from [...]:`, and ends at the next log line (which
/// starts with a timestamp).
pub fn sip_messages_in_debug_log(log: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in log.lines() {
        let is_log_line = line.len() > 4 && line[..4].chars().all(|c| c.is_ascii_digit());
        if is_log_line {
            if let Some(msg) = current.take() {
                out.push(msg.trim_end().to_string());
            }
            if line.contains("message sent to [") || line.contains("new bytes from [") {
                current = Some(String::new());
            }
        } else if let Some(msg) = current.as_mut() {
            msg.push_str(line);
            msg.push('\n');
        }
    }
    if let Some(msg) = current {
        out.push(msg.trim_end().to_string());
    }
    out.retain(|m| !m.is_empty());
    out
}

impl Drop for Linphonec {
    fn drop(&mut self) {
        self.quit();
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- linphonec output ----\n{}\n---- linphonec SIP messages ----\n{}\n---- end of linphonec logs ----",
                self.output(),
                self.sip_messages().join("\n\n"),
            );
        }
    }
}
