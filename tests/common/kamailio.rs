//! A throw-away Kamailio (Debian `kamailio`, 5.6) on loopback, playing the PBX in front of
//! ivrd: it record-routes calls to ivrd (or to the queue), and challenges ivrd's REFER with a
//! 407 that only a fixed user and password pass. Its config is tests/kamailio/kamailio.cfg.in,
//! written into a temporary directory with its ports and password.
//!
//! Kamailio runs in the foreground (`-DD`), logs to stderr (`-E`, into a file here), keeps its
//! pid file and runtime directory in the temporary directory (`-P`, `-Y`), and runs in a
//! process group of its own, so stopping it reaches its worker processes too. A 10-minute
//! `timeout` wraps it in case the test process dies without dropping it.
//!
//! [`Kamailio::start_tls`] runs the same config with `WITH_TLS` defined (`-A WITH_TLS`): the
//! tls module (Debian `kamailio-tls-modules`) listens on a TLS port of its own and every call
//! goes to ivrd's TLS listener. Its certificate, key and CA (from the test's [`TestPki`]) and
//! tests/kamailio/tls.cfg.in are written into the temporary directory, removed with it.
//!
//! [`Kamailio::start_outbound`] runs it with `WITH_OUTBOUND` defined (`-A WITH_OUTBOUND`):
//! Kamailio is also the trunk for ivrd's outbound calls, challenging ivrd's INVITE with 407
//! and relaying it, authenticated, to a callee (a baresip) or refusing it by the number's last
//! digits (486, 603, 404).

use super::*;
use std::os::unix::process::CommandExt;

const CONFIG_TEMPLATE: &str = include_str!("../kamailio/kamailio.cfg.in");
const TLS_CONFIG_TEMPLATE: &str = include_str!("../kamailio/tls.cfg.in");

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
    tls: Option<TlsLeg>,
    /// With `WITH_OUTBOUND`: where ivrd's outbound calls go (the callee's SIP port on
    /// 127.0.0.1, UDP).
    callee_port: Option<u16>,
    /// A shipped configuration run instead of tests/kamailio/kamailio.cfg.in (its text, the
    /// test's ports and paths already in).
    shipped: Option<String>,
}

/// Kamailio's TLS side (with `WITH_TLS`).
struct TlsLeg {
    /// Kamailio's own TLS listener on 127.0.0.1.
    port: u16,
    ivrd_port: u16,
    /// Close the connection to ivrd after relaying the caller's ACK (`WITH_CLOSE_AFTER_ACK`).
    close_after_ack: bool,
    ca_pem: String,
    /// A client certificate from the test CA for the readiness probe: Kamailio's TLS server
    /// requires one.
    probe: (String, String),
}

/// A temporary directory for a Kamailio with TLS: its runtime directory, a certificate for
/// 127.0.0.1 signed by `pki`'s CA, the CA, and tests/kamailio/tls.cfg.in filled in.
fn tls_dir(pki: &TestPki) -> tempfile::TempDir {
    require_tool("kamailio");
    require_tls_module();
    let dir = tempfile::Builder::new()
        .prefix("kamailio-test-")
        .tempdir()
        .expect("create temp dir");
    fs::create_dir(dir.path().join("run")).expect("create runtime dir");
    let (cert, key) = pki.leaf(&["127.0.0.1", "kamailio.test"]);
    fs::write(dir.path().join("kamailio-cert.pem"), cert).expect("write certificate");
    fs::write(dir.path().join("kamailio-key.pem"), key).expect("write key");
    fs::write(dir.path().join("ca.pem"), pki.ca_pem()).expect("write CA");
    let tls_config = TLS_CONFIG_TEMPLATE.replace("@DIR@", &dir.path().display().to_string());
    fs::write(dir.path().join("tls.cfg"), tls_config).expect("write tls.cfg");
    dir
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
            tls: None,
            callee_port: None,
            shipped: None,
        };
        kamailio.spawn();
        kamailio
    }

    /// Like [`Kamailio::start`], but every call goes to ivrd's TLS listener on
    /// `ivrd_tls_port` (the caller may still come over UDP or TCP), and Kamailio listens for
    /// TLS on a port of its own ([`Kamailio::tls_addr`]). Its certificate (for 127.0.0.1) is
    /// signed by `pki`'s CA, it checks ivrd's against that CA and presents its own. With
    /// `close_after_ack` it closes its connection to ivrd once it has relayed the caller's ACK,
    /// as a PBX does with an idle connection, so ivrd must open one for its next request.
    pub fn start_tls(
        port: u16,
        ivrd_tls_port: u16,
        queue_port: u16,
        password: &str,
        pki: &TestPki,
        close_after_ack: bool,
    ) -> Kamailio {
        let dir = tls_dir(pki);
        let mut kamailio = Kamailio {
            child: None,
            dir,
            port,
            ivrd_port: 0,
            queue_port,
            password: password.to_string(),
            tls: Some(TlsLeg {
                port: free_sip_port(),
                ivrd_port: ivrd_tls_port,
                close_after_ack,
                ca_pem: pki.ca_pem(),
                probe: pki.leaf(&["127.0.0.1"]),
            }),
            callee_port: None,
            shipped: None,
        };
        kamailio.spawn();
        kamailio
    }

    /// Kamailio as ivrd's outbound trunk (`WITH_OUTBOUND`) on `port` of 127.0.0.1 (UDP and
    /// TCP). An initial INVITE from 127.0.0.1:`ivrd_port` (ivrd sends from its SIP port) is
    /// ivrd's outbound call: challenged with 407 (realm [`KAMAILIO_REALM`], qop=auth) until it
    /// carries the credentials of [`KAMAILIO_USER`] with `password` (a wrong password is
    /// challenged again, another user gets 403), then, by the Request-URI user's last digits,
    /// answered `486 Busy Here` (..486), `603 Decline` (..603), `404 Not Found` (..404), or
    /// record-routed and relayed to `sip:tester@127.0.0.1:callee_port` (a [`Baresip`], whose
    /// account is `tester`). Its in-dialog requests and CANCEL are relayed; INVITEs from
    /// anywhere else still go to ivrd.
    ///
    /// What the trace shows ([`Kamailio::count`], [`Kamailio::wait_count`]):
    /// `INVITE challenged (credentials of user [..])` for each 407,
    /// `INVITE refused: user [..]` for a 403,
    /// `INVITE authenticated (user [ivrd])`, then `outbound call to [<user>]`, and the callee's
    /// replies as `reply <code> <reason> to INVITE from 127.0.0.1:<callee_port> (udp)`.
    pub fn start_outbound(port: u16, ivrd_port: u16, callee_port: u16, password: &str) -> Kamailio {
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
            queue_port: 0,
            password: password.to_string(),
            tls: None,
            callee_port: Some(callee_port),
            shipped: None,
        };
        kamailio.spawn();
        kamailio
    }

    /// [`Kamailio::start_outbound`] with ivrd coming over TLS: Kamailio listens for TLS on a
    /// port of its own ([`Kamailio::tls_addr`]) with a certificate for 127.0.0.1 from `pki`,
    /// requires and checks ivrd's client certificate, takes every initial INVITE over TLS as
    /// ivrd's call, and relays it to the callee over UDP.
    pub fn start_outbound_tls(
        port: u16,
        callee_port: u16,
        password: &str,
        pki: &TestPki,
    ) -> Kamailio {
        let dir = tls_dir(pki);
        let mut kamailio = Kamailio {
            child: None,
            dir,
            port,
            ivrd_port: 0,
            queue_port: 0,
            password: password.to_string(),
            tls: Some(TlsLeg {
                port: free_sip_port(),
                ivrd_port: 0,
                close_after_ack: false,
                ca_pem: pki.ca_pem(),
                probe: pki.leaf(&["127.0.0.1"]),
            }),
            callee_port: Some(callee_port),
            shipped: None,
        };
        kamailio.spawn();
        kamailio
    }

    /// The shipped dispatcher configuration (packaging/kamailio/ivrd-dispatcher.cfg) in front of
    /// `nodes`, listening on `port` of 127.0.0.1 (UDP and TCP). Only the `listen` lines and the
    /// node list's path are changed; the list has one line per node (set 1, `name=node-N`).
    /// Its trace lines: `call <Call-ID> to sip:<node>`, `node sip:<node> failed the call ...`.
    pub fn start_dispatcher(port: u16, nodes: &[SocketAddr]) -> Kamailio {
        require_tool("kamailio");
        let dir = tempfile::Builder::new()
            .prefix("kamailio-test-")
            .tempdir()
            .expect("create temp dir");
        fs::create_dir(dir.path().join("run")).expect("create runtime dir");
        let list = dir.path().join("ivrd-nodes.list");
        let lines: String = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("1 sip:{n} 0 0 name=node-{i}\n"))
            .collect();
        fs::write(&list, lines).expect("write the node list");
        let mut config = fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/kamailio/ivrd-dispatcher.cfg"),
        )
        .expect("read packaging/kamailio/ivrd-dispatcher.cfg");
        for (from, to) in [
            (
                "listen=udp:0.0.0.0:5060".to_string(),
                format!("listen=udp:127.0.0.1:{port}"),
            ),
            (
                "listen=tcp:0.0.0.0:5060".to_string(),
                format!("listen=tcp:127.0.0.1:{port}"),
            ),
            (
                "/etc/kamailio/ivrd-nodes.list".to_string(),
                list.display().to_string(),
            ),
        ] {
            assert!(
                config.contains(&from),
                "packaging/kamailio/ivrd-dispatcher.cfg no longer has {from:?}"
            );
            config = config.replace(&from, &to);
        }
        let mut kamailio = Kamailio {
            child: None,
            dir,
            port,
            ivrd_port: 0,
            queue_port: 0,
            password: String::new(),
            tls: None,
            callee_port: None,
            shipped: Some(config),
        };
        kamailio.spawn();
        kamailio
    }

    /// Where ivrd's outbound calls go (only after [`Kamailio::start_outbound`]).
    pub fn callee_port(&self) -> u16 {
        self.callee_port
            .expect("Kamailio started without WITH_OUTBOUND")
    }

    /// Where Kamailio listens for TLS (only after [`Kamailio::start_tls`]).
    pub fn tls_addr(&self) -> SocketAddr {
        let tls = self.tls.as_ref().expect("Kamailio started without TLS");
        SocketAddr::from((LOCALHOST, tls.port))
    }

    /// Where Kamailio listens (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((LOCALHOST, self.port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where Kamailio sends calls for the user "queue" (UDP).
    pub fn queue_port(&self) -> u16 {
        self.queue_port
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
        // Without TLS the WITH_TLS blocks are left out and these values are never read.
        let (tls_port, ivrd_tls_port) = self.tls.as_ref().map_or((0, 0), |t| (t.port, t.ivrd_port));
        let config = CONFIG_TEMPLATE
            .replace("@PORT@", &self.port.to_string())
            .replace("@IVRD_PORT@", &self.ivrd_port.to_string())
            .replace("@QUEUE_PORT@", &self.queue_port.to_string())
            .replace("@CALLEE_PORT@", &self.callee_port.unwrap_or(0).to_string())
            .replace("@REALM@", KAMAILIO_REALM)
            .replace("@USER@", KAMAILIO_USER)
            .replace("@PASSWORD@", &self.password)
            .replace("@TLS_PORT@", &tls_port.to_string())
            .replace("@IVRD_TLS_PORT@", &ivrd_tls_port.to_string())
            .replace(
                "@TLS_CONFIG@",
                &self.dir.path().join("tls.cfg").display().to_string(),
            );
        let config = self.shipped.clone().unwrap_or(config);
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
        let mut command = Command::new("timeout");
        command
            .args(["--kill-after=5", "600"])
            .arg(&binary)
            .arg("-f")
            .arg(self.config_path());
        if self.callee_port.is_some() {
            command.args(["-A", "WITH_OUTBOUND"]);
        }
        if let Some(tls) = &self.tls {
            command.args(["-A", "WITH_TLS"]);
            if tls.close_after_ack {
                command.args(["-A", "WITH_CLOSE_AFTER_ACK"]);
            }
        }
        let child = command
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
        if let Some(tls) = &self.tls {
            self.probe_tls(tls);
        }
    }

    /// An OPTIONS over TLS to Kamailio's TLS listener, from a client with a certificate of the
    /// test CA, must get 200: the tls module loaded its certificates and serves the port.
    fn probe_tls(&self, tls: &TlsLeg) {
        let addr = SocketAddr::from((LOCALHOST, tls.port));
        let probe = (tls.probe.0.as_str(), tls.probe.1.as_str());
        let mut conn = SipTls::connect(addr, &tls.ca_pem, Some(probe)).unwrap_or_else(|e| {
            panic!(
                "kamailio answers on UDP but its TLS listener {addr} refused a handshake: {e}\n--- kamailio log ---\n{}",
                self.log()
            )
        });
        let call_id = format!("kamailio-ready-tls-{}", tls.port);
        conn.send(options_request(addr, conn.local_addr(), &call_id, "TLS").as_bytes());
        let answer = conn.final_response(Duration::from_secs(5));
        assert!(
            answer
                .as_deref()
                .is_some_and(|a| status_code(a) == Some(200)),
            "kamailio did not answer OPTIONS over TLS on {addr}: {answer:?}\n--- kamailio log ---\n{}",
            self.log()
        );
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
            .filter_map(|l| {
                l.split_once("ivrd-test: ")
                    .or_else(|| l.split_once("ivrd-dispatcher: "))
                    .map(|(_, t)| t.to_string())
            })
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

/// Fails the test, naming the package, when Kamailio's tls module is not installed: Debian's
/// `kamailio-tls-modules` puts it in /usr/lib/<multiarch>/kamailio/modules (the base package
/// has none).
fn require_tls_module() {
    let multiarch = fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    let found = std::iter::once(PathBuf::from("/usr/lib"))
        .chain(multiarch)
        .any(|dir| dir.join("kamailio/modules/tls.so").is_file());
    assert!(
        found,
        "Kamailio's tls module (kamailio/modules/tls.so) is not installed: run \
         scripts/install-test-deps.sh (Debian package kamailio-tls-modules)"
    );
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
