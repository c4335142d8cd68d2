//! The systemd integration: the shipped unit (`systemd/ivrd.service`) passes
//! `systemd-analyze verify` and keeps its `systemd-analyze security` exposure at 2.0 or lower,
//! and the daemon speaks the sd_notify protocol (READY, WATCHDOG, RELOADING, STOPPING) to a
//! notify socket the test owns, as systemd would see it.
//!
//! The unit also hands ivrd its secrets as credentials and lets it read a 0640 config through
//! a static group; the packaging files must agree with it (tested below).
//!
//! `systemd-analyze` is a hard requirement (Debian package `systemd`): a missing tool fails the
//! test with the install command, it never skips.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const UNIT: &str = "systemd/ivrd.service";
const MAX_EXPOSURE: f64 = 2.0;
const INSTALL_HINT: &str = "systemd-analyze not found: install the Debian package `systemd` \
    (apt-get install -y systemd; scripts/install-test-deps.sh should install it too)";

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn systemd_analyze() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("systemd-analyze"))
        .find(|c| {
            fs::metadata(c)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .unwrap_or_else(|| panic!("{INSTALL_HINT}"))
}

/// The shipped unit, copied to a temp dir under its own name, with ExecStart (and every other
/// /usr/bin/ivrd) pointing at the binary cargo built, so `verify` finds an executable.
fn unit_copy() -> (tempfile::TempDir, PathBuf) {
    let text = fs::read_to_string(manifest_dir().join(UNIT)).expect("read systemd/ivrd.service");
    let exe = env!("CARGO_BIN_EXE_ivrd");
    assert!(
        !exe.contains(char::is_whitespace),
        "the test binary path {exe:?} has whitespace; systemd would split it"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ivrd.service");
    fs::write(&path, text.replace("/usr/bin/ivrd", exe)).expect("write unit copy");
    (dir, path)
}

fn analyze(args: &[&str], unit: &Path) -> Output {
    Command::new(systemd_analyze())
        .args(args)
        .arg(unit)
        .env("SYSTEMD_COLORS", "0")
        .env("SYSTEMD_PAGER", "")
        .stdin(Stdio::null())
        .output()
        .expect("run systemd-analyze")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn unit_has_the_required_settings() {
    let text = fs::read_to_string(manifest_dir().join(UNIT)).expect("read unit");
    let settings: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    for want in [
        "Type=notify",
        "NotifyAccess=main",
        "ExecStart=/usr/bin/ivrd run --config /etc/ivrd/ivrd.toml",
        "ExecReload=/usr/bin/ivrd reload --config /etc/ivrd/ivrd.toml",
        "WatchdogSec=30s",
        "Restart=on-failure",
        "StateDirectory=ivrd",
        "ConfigurationDirectory=ivrd",
        "CapabilityBoundingSet=",
        "LimitNOFILE=65536",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    ] {
        assert!(settings.contains(&want), "{UNIT} lacks `{want}`");
    }
    // The stop timeout must outlast the 10 s drain plus the BYE transactions.
    let stop = settings
        .iter()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec=");
    let secs: u64 = stop
        .trim_end_matches('s')
        .parse()
        .expect("TimeoutStopSec in seconds");
    assert!(
        secs > 10 + 32,
        "TimeoutStopSec={stop} is shorter than the drain"
    );
}

#[test]
fn unit_verifies() {
    let (_dir, unit) = unit_copy();
    let out = analyze(&["verify"], &unit);
    assert!(
        out.status.success(),
        "systemd-analyze verify {UNIT} failed ({}):\n{}",
        out.status,
        text(&out)
    );
    // verify exits 0 on a line it ignores (e.g. `SetCredential=id:` with an empty value
    // in systemd 252): a setting silently dropped is a failure here.
    let report = text(&out);
    assert!(
        report.trim().is_empty(),
        "systemd-analyze verify {UNIT} printed warnings:\n{report}"
    );
}

/// The settings of the unit, without comments.
fn unit_settings() -> Vec<String> {
    fs::read_to_string(manifest_dir().join(UNIT))
        .expect("read unit")
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Secrets come in as systemd credentials: the whole /etc/ivrd/credentials directory, under
/// the ID `credentials`, so that ivrd finds `credentials/<file>` as `credentials_<file>`
/// (src/secrets.rs), with a default so that a site without the directory still starts.
#[test]
fn unit_loads_the_credentials_directory() {
    let settings = unit_settings();
    assert!(
        settings.contains(&"LoadCredential=credentials:/etc/ivrd/credentials".to_string()),
        "{UNIT} does not load /etc/ivrd/credentials as credentials: {settings:#?}"
    );
    let default = settings
        .iter()
        .find_map(|l| l.strip_prefix("SetCredential=credentials:"))
        .unwrap_or_else(|| panic!("{UNIT}: no SetCredential=credentials:... default"));
    assert!(
        !default.is_empty(),
        "systemd 252 ignores an empty SetCredential= value"
    );
    assert!(
        !settings
            .iter()
            .any(|l| l.starts_with("Environment=") && l.contains("CREDENTIALS")),
        "systemd sets $CREDENTIALS_DIRECTORY itself"
    );
}

/// The config may be 0640: the unit's supplementary group is the one sysusers.d creates and
/// the one the package gives the config file.
#[test]
fn unit_packaging_and_config_agree_on_the_group_and_the_secrets() {
    let settings = unit_settings();
    let group = settings
        .iter()
        .find_map(|l| l.strip_prefix("SupplementaryGroups="))
        .unwrap_or_else(|| panic!("{UNIT}: no SupplementaryGroups="))
        .to_string();
    assert_ne!(
        group, "ivrd",
        "a static group named like the unit replaces DynamicUser's group"
    );
    let sysusers = fs::read_to_string(manifest_dir().join("packaging/sysusers.d/ivrd.conf"))
        .expect("read packaging/sysusers.d/ivrd.conf");
    assert!(
        sysusers
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["g", group.as_str()])),
        "packaging/sysusers.d/ivrd.conf does not create the group {group}:\n{sysusers}"
    );
    let postinst = fs::read_to_string(manifest_dir().join("packaging/debian/postinst"))
        .expect("read packaging/debian/postinst");
    assert!(
        postinst.contains(&format!("root {group} 0640 /etc/ivrd/ivrd.toml")),
        "postinst does not install the config root:{group} 0640:\n{postinst}"
    );
    let cargo = fs::read_to_string(manifest_dir().join("Cargo.toml")).expect("read Cargo.toml");
    assert!(
        cargo.contains("\"packaging/sysusers.d/ivrd.conf\", \"usr/lib/sysusers.d/\""),
        "the package does not ship the sysusers.d file"
    );

    // The shipped config names its secrets by *_file only, all under credentials/.
    let config = fs::read_to_string(manifest_dir().join("packaging/ivrd.toml"))
        .expect("read packaging/ivrd.toml");
    let mut file_keys = 0;
    for line in config.lines() {
        let line = line.trim_start_matches(['#', ' ']);
        let Some((key, value)) = line.split_once(" = ") else {
            continue;
        };
        let key = key.trim();
        assert!(
            !["auth_token", "api_secret", "access_key", "password"].contains(&key),
            "packaging/ivrd.toml shows a secret inline: {line}"
        );
        if key.ends_with("_file") || key == "headers_file" {
            file_keys += 1;
            assert!(value.contains("\"credentials/"), "{line}");
        }
    }
    assert!(
        file_keys >= 2,
        "packaging/ivrd.toml shows no *_file example"
    );
}

#[test]
fn unit_exposure_is_low() {
    let (_dir, unit) = unit_copy();
    let out = analyze(&["security", "--offline=true", "--no-pager"], &unit);
    let report = text(&out);
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no \"Overall exposure level\" line from systemd-analyze security ({}):\n{report}",
                out.status
            )
        });
    let score: f64 = line
        .rsplit_once(": ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure from {line:?}"));
    assert!(
        score <= MAX_EXPOSURE,
        "{UNIT}: exposure {score} > {MAX_EXPOSURE}\n{report}"
    );
}

// ---------------------------------------------------------------------------------------
// The daemon under a fake systemd: it owns the notify socket and reads what ivrd says.

/// A loopback port free for UDP and TCP.
fn free_sip_port() -> u16 {
    for _ in 0..200 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free SIP port");
}

struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
    notify: UnixDatagram,
    sip: SocketAddr,
    /// Every datagram received so far, for failure messages.
    seen: Vec<String>,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
        let port = free_sip_port();
        let mut cfg = toml::Table::new();
        let t = |s: &str| -> toml::Table { s.parse().expect("toml") };
        cfg.insert(
            "sip".into(),
            toml::Value::Table(t(&format!(
                "udp = [\"127.0.0.1:{port}\"]\ntcp = [\"127.0.0.1:{port}\"]"
            ))),
        );
        // RTP 32000..32199: above the ranges tests/common hands out, below the ephemeral ports.
        let mut media = t("rtp_ip = \"127.0.0.1\"\nrtp_port_min = 32000\nrtp_port_max = 32199");
        media.insert(
            "prompts_dir".into(),
            toml::Value::String(manifest_dir().join("prompts").display().to_string()),
        );
        cfg.insert("media".into(), toml::Value::Table(media));
        cfg.insert("demo".into(), toml::Value::Table(t("enabled = true")));
        let mut store = toml::Table::new();
        store.insert(
            "path".into(),
            toml::Value::String(dir.path().join("ivrd.db").display().to_string()),
        );
        cfg.insert("store".into(), toml::Value::Table(store));
        cfg.insert("log".into(), toml::Value::Table(t("level = \"debug\"")));
        let config = dir.path().join("ivrd.toml");
        fs::write(&config, toml::to_string(&cfg).expect("config")).expect("write config");
        let log = fs::File::create(dir.path().join("ivrd.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_ivrd"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .current_dir(dir.path())
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", "1000000")
            .env_remove("WATCHDOG_PID")
            .env_remove("STATE_DIRECTORY")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start ivrd");
        Daemon {
            child,
            dir,
            notify,
            sip: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            seen: Vec::new(),
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("ivrd.log")).unwrap_or_default()
    }

    /// Reads datagrams until one satisfies `want`; panics after `within` with all it saw.
    fn expect(&mut self, what: &str, within: Duration, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        let mut buf = vec![0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "no {what} within {within:?}; notifications so far: {:?}\n--- ivrd log ---\n{}",
                    self.seen,
                    self.log()
                );
            }
            self.notify
                .set_read_timeout(Some(left.min(Duration::from_millis(200))))
                .expect("timeout");
            if let Ok(n) = self.notify.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(msg.clone());
                if want(&msg) {
                    return msg;
                }
            } else if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "ivrd exited with {status} while waiting for {what}; notifications: {:?}\n--- ivrd log ---\n{}",
                    self.seen,
                    self.log()
                );
            }
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// One OPTIONS round trip: the SIP socket answers 200.
    fn sip_answers(&self) -> bool {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let local = sock.local_addr().expect("addr");
        let target = self.sip;
        let msg = format!(
            "OPTIONS sip:demo@{target} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK-notify-{port};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:probe@{local}>;tag=probe\r\n\
             To: <sip:demo@{target}>\r\n\
             Call-ID: notify-{port}\r\n\
             CSeq: 1 OPTIONS\r\n\
             Content-Length: 0\r\n\r\n",
            port = local.port()
        );
        sock.send_to(msg.as_bytes(), target).expect("send OPTIONS");
        let mut buf = [0u8; 65535];
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            if buf[..n].starts_with(b"SIP/2.0 200") {
                return true;
            }
        }
        false
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn has_line(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

/// The daemon speaks the sd_notify protocol: READY once serving, WATCHDOG while alive,
/// RELOADING/READY around a reload, STOPPING at shutdown.
#[test]
fn daemon_speaks_sd_notify() {
    let mut d = Daemon::start();

    // READY=1 only once the SIP socket answers.
    d.expect("READY=1", Duration::from_secs(30), |m| {
        has_line(m, "READY=1")
    });
    assert!(
        d.sip_answers(),
        "READY=1 came before SIP answered OPTIONS\n--- ivrd log ---\n{}",
        d.log()
    );

    // WATCHDOG_USEC=1 s: a ping every 0.5 s while every loop is alive.
    let start = Instant::now();
    d.expect("the first WATCHDOG=1", Duration::from_secs(3), |m| {
        has_line(m, "WATCHDOG=1")
    });
    let left = Duration::from_secs(3).saturating_sub(start.elapsed());
    d.expect("a second WATCHDOG=1 within 3 s", left, |m| {
        has_line(m, "WATCHDOG=1")
    });

    // SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1 again.
    d.signal("HUP");
    let reloading = d.expect("RELOADING=1", Duration::from_secs(10), |m| {
        has_line(m, "RELOADING=1")
    });
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {reloading:?}"))
        .parse()
        .expect("MONOTONIC_USEC is a number");
    assert!(usec > 0);
    d.expect("READY=1 after the reload", Duration::from_secs(30), |m| {
        has_line(m, "READY=1")
    });

    // SIGTERM: STOPPING=1, then a clean exit (no calls to drain).
    d.signal("TERM");
    d.expect("STOPPING=1", Duration::from_secs(10), |m| {
        has_line(m, "STOPPING=1")
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = d.child.try_wait().expect("wait") {
            assert!(status.success(), "ivrd exited with {status}\n{}", d.log());
            break;
        }
        assert!(Instant::now() < deadline, "ivrd did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}
