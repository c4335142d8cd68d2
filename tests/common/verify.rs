//! The verification flow's test world, shared by the end-to-end tests that drive
//! dialplans/verify.toml with real peers (tests/verify_e2e.rs, tests/linphone.rs,
//! tests/kamailio.rs): the example customers, a loopback SMS webhook to read the PIN from, the
//! transfer targets, the database with its audit rows, and the PIN checks.

use super::*;
use ivrd::store::{AuditRow, Store};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Customers in examples/customers.csv.
pub const ERIKA: &str = "123456"; // +491701234567, de
pub const ERIKA_MOBILE: &str = "+491701234567";
pub const JOHN: &str = "234567"; // +447911123456, en
pub const JOHN_MOBILE: &str = "+447911123456";
pub const UNKNOWN: &str = "999999";

/// Between two key presses, as a person types.
pub const KEY_GAP: Duration = Duration::from_millis(300);

/// From the first key to the REFER: lookup, "sending-pin" (4.7 s) while the SMS goes out,
/// "enter-pin", the check, "verified" (up to 4.5 s in German) or "fallback"; with retries and
/// wrong-PIN prompts on top. Generous for a loaded two-core machine, still bounded.
pub const FLOW_TIMEOUT: Duration = Duration::from_secs(45);

/// The config of a daemon running the shipped verify plan over the database `db`, seeded from
/// examples/customers.csv, texting through the webhook at `sms_url`, with `queue` and
/// `fallback` as the plan's transfer targets. It ends inside `[sms]`, so more SMS keys may
/// follow, then more tables.
pub fn verify_plan_config(db: &Path, sms_url: &str, queue: &str, fallback: &str) -> String {
    format!(
        r#"
[demo]
enabled = false

[dialplans]
dir = {dir}
default = "verify"
vars = {{ queue = {queue}, fallback = {fallback} }}

[store]
path = {db}
seed_csv = {seed}

[sms]
provider = "webhook"
url = {url}
"#,
        dir = toml_str(&manifest_dir().join("dialplans").display().to_string()),
        queue = toml_str(queue),
        fallback = toml_str(fallback),
        db = toml_str(&db.display().to_string()),
        seed = toml_str(
            &manifest_dir()
                .join("examples/customers.csv")
                .display()
                .to_string()
        ),
        url = toml_str(sms_url),
    )
}

/// Types `wrong` three times like a person: the first once "sending-pin" has ended, each
/// next one past the 400 ms grace after the previous entry. Keys typed ahead would be kept,
/// but a key within 400 ms of a full entry is dropped (TERMINATOR_GRACE), so an entry typed
/// into the previous one's collect would be cut short.
pub fn type_three_wrong_pins(uac: &mut RawUac, language: &str, wrong: &str) {
    std::thread::sleep(prompt_duration(language, "sending-pin") + Duration::from_millis(500));
    for attempt in 0..3 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(1500));
        }
        uac.info_digits(wrong, KEY_GAP);
    }
}

pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// What the transfer targets are: `sip:<user>@127.0.0.1:<port>`.
pub fn target(user: &str, port: u16) -> String {
    format!("sip:{user}@127.0.0.1:{port}")
}

/// One test's world: the SMS gateway, the transfer targets and the database file. The
/// database lives in its own temporary directory so a daemon restart can reopen it.
pub struct Rig {
    pub sms: SmsSink,
    pub queue: String,
    pub fallback: String,
    pub state: tempfile::TempDir,
}

impl Rig {
    /// `sms_status`: what the SMS gateway answers (200, or 500 for an outage).
    pub fn new(sms_status: u16, queue_port: u16) -> Rig {
        Rig {
            sms: SmsSink::start(sms_status),
            queue: target("queue", queue_port),
            // Nobody listens there: the RawUac tests never follow the REFER themselves.
            fallback: target("fallback", free_udp_port()),
            state: tempfile::Builder::new()
                .prefix("ivrd-verify-")
                .tempdir()
                .expect("create state dir"),
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.state.path().join("ivrd.db")
    }

    /// Starts ivrd with the verify plan; `extra` is more TOML merged on top.
    pub fn daemon(&self, extra: &str) -> Daemon {
        let overrides = verify_plan_config(
            &self.db_path(),
            &self.sms.url(),
            &self.queue,
            &self.fallback,
        ) + "max_retries = 2\n\n[limits]\nfailures_before_lockout = 3\n\n[transfer]\ntimeout_secs = 10\n";
        let mut overrides: toml::Table = overrides.parse().expect("rig TOML");
        let extra: toml::Table = extra.parse().expect("extra TOML");
        for (k, v) in extra {
            match (overrides.get_mut(&k), v) {
                (Some(toml::Value::Table(base)), toml::Value::Table(more)) => base.extend(more),
                (_, v) => {
                    overrides.insert(k, v);
                }
            }
        }
        Daemon::start(&toml::to_string(&overrides).expect("serialize overrides"))
    }

    /// The audit rows, newest first.
    pub fn audit(&self) -> Vec<AuditRow> {
        let store = Store::open(self.db_path()).expect("open the daemon's database");
        store.recent_audit(20).expect("read audit rows")
    }

    /// Waits until there are `count` audit rows (they are written once a call has ended) and
    /// returns them newest first.
    pub fn wait_audit(&self, count: usize, timeout: Duration) -> Vec<AuditRow> {
        wait_audit_rows(|| self.audit(), count, timeout)
    }
}

/// Waits until `read` (the audit rows of some database, newest first) finds `count` rows and
/// returns them.
pub fn wait_audit_rows(
    read: impl Fn() -> Vec<AuditRow>,
    count: usize,
    timeout: Duration,
) -> Vec<AuditRow> {
    let deadline = Instant::now() + timeout;
    loop {
        let rows = read();
        if rows.len() >= count {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "{} audit rows after {timeout:?}, expected {count}: {rows:#?}",
            rows.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The PIN in an SMS text: the only run of exactly `len` digits.
pub fn pin_in(text: &str, len: usize) -> String {
    let re = regex::Regex::new(&format!(r"(^|[^0-9])([0-9]{{{len}}})([^0-9]|$)")).unwrap();
    let found: Vec<String> = re.captures_iter(text).map(|c| c[2].to_string()).collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {len}-digit PIN in the SMS text {text:?}"
    );
    found[0].clone()
}

/// A wrong PIN of the same length: every digit shifted by one.
pub fn wrong_pin(pin: &str) -> String {
    pin.chars()
        .map(|c| char::from(b'0' + (c as u8 - b'0' + 1) % 10))
        .collect()
}

/// The PIN must never be logged, at any level. Checks every line without its timestamp
/// (whose fractional seconds are just digits) for the PIN as a number of its own, not inside
/// a longer one; and, for a daemon logging at debug level, that the key presses it logged one
/// by one after the SMS went out do not spell the PIN.
pub fn assert_pin_not_logged(daemon: &Daemon, pin: &str) {
    let log = daemon.log();
    assert!(!log.is_empty(), "the daemon log is empty");
    for line in log.lines() {
        let rest = line.split_once(' ').map_or(line, |(_, r)| r);
        let mut from = 0;
        while let Some(pos) = rest[from..].find(pin) {
            let i = from + pos;
            let before = rest[..i].chars().next_back();
            let after = rest[i + pin.len()..].chars().next();
            // Inside a longer number or a word (a hex Call-ID, tag or branch can hold four
            // decimal digits in a row) it is not the PIN standing on its own.
            assert!(
                before.is_some_and(|c| c.is_ascii_alphanumeric())
                    || after.is_some_and(|c| c.is_ascii_alphanumeric()),
                "the PIN {pin} is in the daemon log:\n{line}"
            );
            from = i + 1;
        }
    }
    let keys: String = log
        .lines()
        .skip_while(|l| !l.contains("PIN sent") && !l.contains("SMS failed"))
        .filter_map(|l| field_value(l, "digit"))
        .collect();
    assert!(
        !keys.contains(pin),
        "the daemon logged the PIN {pin} key by key (`digit=` lines after the SMS: {keys}):\n{}",
        log.lines()
            .filter(|l| field_value(l, "digit").is_some())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Checks an SMS the webhook got and returns the PIN in it.
pub fn check_sms(post: &SmsPost, to: &str, language: &str) -> String {
    assert_eq!(post.path, "/sms", "webhook path: {post:?}");
    assert_eq!(post.field("to"), to, "SMS recipient: {post:?}");
    assert!(
        !post.field("reference").is_empty(),
        "SMS without a reference: {post:?}"
    );
    assert_eq!(post.field("ttl_seconds"), "300", "SMS ttl: {post:?}");
    let text = post.text();
    let expected = match language {
        "de" => "Ihre Verifizierungs-PIN lautet",
        _ => "Your verification PIN is",
    };
    assert!(
        text.contains(expected),
        "SMS text is not the plan's {language} text: {text:?}"
    );
    pin_in(&text, 4)
}

/// Waits until something listens on UDP `port` (bind fails).
pub fn wait_udp_bound(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while std::net::UdpSocket::bind(SocketAddr::from((LOCALHOST, port))).is_ok() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on UDP {port} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
