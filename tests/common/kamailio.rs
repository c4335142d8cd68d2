//! A throw-away Kamailio (Debian `kamailio`, 5.6) on loopback, playing the PBX in front of
//! ivrd: it record-routes calls to ivrd (or to the queue), and challenges ivrd's REFER with a
//! 407 that only a fixed user and password pass. Its config is tests/kamailio/kamailio.cfg.in,
//! written into a temporary directory with its ports and password.
//!
//! Kamailio runs in the foreground (`-DD`), logs to stderr (`-E`, into a file here), keeps its
//! pid file and runtime directory in the temporary directory (`-P`, `-Y`), and runs in a
//! process group of its own, so stopping it reaches its worker processes too. A 10-minute
//! `timeout` wraps it in case the test process dies without dropping it.

use super::*;
use std::os::unix::process::CommandExt;

const CONFIG_TEMPLATE: &str = include_str!("../kamailio/kamailio.cfg.in");

/// The realm and user of the REFER challenge.
pub const KAMAILIO_REALM: &str = "pbx.test";
pub const KAMAILIO_USER: &str = "ivrd";

/// How long Kamailio may take to answer its first OPTIONS.
const KAMAILIO_STARTUP: Duration = Duration::from_secs(20);

pub struct Kamailio {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    ivrd_port: u16,
    queue_port: u16,
    password: String,
}

impl Kamailio {
    /// Starts Kamailio on `port` of 127.0.0.1 (UDP and TCP; take it from `free_sip_port()`,
    /// before ivrd, whose transfer targets point at Kamailio), forwarding calls to ivrd's SIP
    /// port and calls for `queue` to `queue_port`, with `password` for ivrd's REFERs.
    pub fn start(port: u16, ivrd_port: u16, queue_port: u16, password: &str) -> Kamailio {
        require_tool("kamailio");
        let dir = tempfile::Builder::new()
            .prefix("kamailio-test-")
            .tempdir()
            .expect("create temp dir");
        fs::create_dir(dir.path().join("run")).expect("create runtime dir");
        let mut kamailio = Kamailio {
            child: None,
            dir,
            port,
            ivrd_port,
            queue_port,
            password: password.to_string(),
        };
        kamailio.spawn();
        kamailio
    }

    /// Where Kamailio listens (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((LOCALHOST, self.port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("kamailio.cfg")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("kamailio.log")
    }

    /// The config as it runs now.
    pub fn config(&self) -> String {
        fs::read_to_string(self.config_path()).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let binary = require_tool("kamailio");
        let config = CONFIG_TEMPLATE
            .replace("@PORT@", &self.port.to_string())
            .replace("@IVRD_PORT@", &self.ivrd_port.to_string())
            .replace("@QUEUE_PORT@", &self.queue_port.to_string())
            .replace("@REALM@", KAMAILIO_REALM)
            .replace("@USER@", KAMAILIO_USER)
            .replace("@PASSWORD@", &self.password);
        let left = regex::Regex::new("@[A-Z_]+@").expect("regex");
        assert!(
            !left.is_match(&config),
            "a placeholder is left in tests/kamailio/kamailio.cfg.in: {:?}",
            left.find(&config).map(|m| m.as_str())
        );
        fs::write(self.config_path(), config).expect("write kamailio.cfg");
        // Every run appends: the log tells the whole story across restarts.
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open kamailio log");
        let child = Command::new("timeout")
            .args(["--kill-after=5", "600"])
            .arg(&binary)
            .arg("-f")
            .arg(self.config_path())
            .args(["-DD", "-E", "-m", "32", "-M", "8", "-P"])
            .arg(self.dir.path().join("kamailio.pid"))
            .arg("-Y")
            .arg(self.dir.path().join("run"))
            .current_dir(self.dir.path())
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
        self.child = Some(child);
        self.wait_ready();
    }

    /// Sends OPTIONS over UDP until Kamailio answers 200, then checks that its TCP port takes
    /// connections.
    fn wait_ready(&mut self) {
        let sock = UdpSocket::bind((LOCALHOST, 0)).expect("bind probe socket");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("set timeout");
        let local = sock.local_addr().expect("local addr");
        let deadline = Instant::now() + KAMAILIO_STARTUP;
        let mut attempt = 0;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "kamailio exited with {status} during start-up\n--- config ---\n{}\n--- kamailio log ---\n{}",
                    self.config(),
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "kamailio did not answer OPTIONS on {} within {KAMAILIO_STARTUP:?}\n--- kamailio log ---\n{}",
                self.addr(),
                self.log()
            );
            attempt += 1;
            let call_id = format!("kamailio-ready-{}-{attempt}", self.port);
            let msg = options_request(self.addr(), local, &call_id, "UDP");
            let _ = sock.send_to(msg.as_bytes(), self.addr());
            let mut buf = [0u8; 65535];
            if let Ok((n, _)) = sock.recv_from(&mut buf)
                && buf[..n].starts_with(b"SIP/2.0 200")
            {
                break;
            }
        }
        TcpStream::connect_timeout(&self.addr(), Duration::from_secs(5)).unwrap_or_else(|e| {
            panic!(
                "kamailio answers on UDP but not on TCP {}: {e}",
                self.addr()
            )
        });
    }

    /// Stops Kamailio (SIGTERM to its process group, SIGKILL after 5 s) and waits for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // The group we made it lead at spawn: `timeout`, Kamailio and its workers.
        let group = child.id() as libc::pid_t;
        // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
        unsafe { libc::kill(-group, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Any worker still there holds the ports: the next start would fail to bind.
        // SAFETY: as above.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = child.wait();
    }

    /// A PBX administrator's password change: the config gets `password` and Kamailio is
    /// restarted on the same ports (a running Kamailio reads its config only at start).
    pub fn restart_with_password(&mut self, password: &str) {
        self.stop();
        self.password = password.to_string();
        self.spawn();
    }

    /// Everything Kamailio logged, across restarts.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.log_path()).unwrap_or_default()).into_owned()
    }

    /// The `ivrd-test:` lines (what the config logs for each request and reply), without the
    /// prefix, in order.
    pub fn trace(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| l.split_once("ivrd-test: ").map(|(_, t)| t.to_string()))
            .collect()
    }

    /// How many trace lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.trace().iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits until `count` trace lines contain `needle`; panics with the trace on timeout.
    pub fn wait_count(&self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.count(needle) < count {
            assert!(
                Instant::now() < deadline,
                "kamailio logged {:?} {} times within {timeout:?}, expected {count}:\n{}",
                needle,
                self.count(needle),
                self.trace().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "---- kamailio log ----\n{}\n---- end of kamailio log ----",
                self.log()
            );
        }
    }
}
