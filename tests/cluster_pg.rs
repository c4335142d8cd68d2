//! Two ivrd nodes sharing one PostgreSQL database behind Kamailio's dispatcher (issue 16), with
//! the shipped dispatcher configuration in front and callers (`RawUac`s) running the shipped
//! verify plan through it:
//! - wrong PINs typed on one node lock the customer out on the other; an SMS budget spent
//!   through one node refuses on the other;
//! - `kill -9` of a node mid-call: the next calls go to the other node, and what the dead
//!   node committed (its SMS sends, its finished calls' audit rows) is all there;
//! - PostgreSQL stopped during a call: that caller goes down the failure branch, the node
//!   answers OPTIONS and new INVITEs 503 meanwhile, takes calls again once the database is
//!   back (no restart), and no audit row is lost (the audit writer spools to disk meanwhile);
//! - with `[store] pin_key_file`, a code the HTTP API sent through one node is resent and
//!   checked through the other.
//!
//! The database is a throw-away cluster (tests/common/postgres.rs); each node's config names it
//! with `[store] url`, and the first node to start creates the schema and imports the example
//! customers (the second finds them).

mod common;

use common::api::{Api, make_key};
use common::kamailio::Kamailio;
use common::postgres::Postgres;
use common::verify::*;
use common::*;
use ivrd::store::{AuditRow, PgOptions, Store};
use serde_json::json;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

/// A node on the shared database: the rig's verify plan with `[store] url`.
fn node(rig: &Rig, url: &str, extra: &str) -> Daemon {
    rig.daemon(&format!(
        "[store]\nurl = {}\n[limits]\nfailures_before_lockout = 3\n{extra}",
        toml_str(url)
    ))
}

fn dispatcher(nodes: &[&Daemon]) -> Kamailio {
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.sip_addr()).collect();
    Kamailio::start_dispatcher(free_sip_port(), &addrs)
}

/// Which of the nodes has the call (its Call-ID in the log).
fn serving<'a>(nodes: [&'a Daemon; 2], uac: &RawUac) -> (&'a Daemon, &'a Daemon) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if nodes[0].log().contains(uac.call_id()) {
            return (nodes[0], nodes[1]);
        }
        if nodes[1].log().contains(uac.call_id()) {
            return (nodes[1], nodes[0]);
        }
        assert!(Instant::now() < deadline, "no node has {}", uac.call_id());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Calls through Kamailio and types the customer number during the welcome prompt.
fn call_and_enter_id(kamailio: &Kamailio, id: &str) -> RawUac {
    let mut uac = RawUac::call(kamailio.addr(), "verify");
    std::thread::sleep(Duration::from_millis(800));
    uac.info_digits(id, KEY_GAP);
    uac
}

/// The transferee's side of a transfer: 202, NOTIFY 200; then ivrd's BYE, answered.
fn complete_transfer(uac: &mut RawUac, refer: &str) {
    uac.respond(refer, 202, "Accepted");
    assert_eq!(
        uac.notify_sipfrag("SIP/2.0 200 OK", "terminated;reason=noresource"),
        200,
        "{}",
        uac.transcript()
    );
    let bye = uac.expect_request("BYE", Duration::from_secs(5));
    uac.respond(&bye, 200, "OK");
    uac.stop_media();
}

/// A node's answer to one OPTIONS (its status line and headers).
fn ask_options(node: SocketAddr, n: u32) -> String {
    let probe = RawUdp::new(node);
    probe.send(options_request(node, probe.local_addr(), &format!("probe-{n}"), "UDP").as_bytes());
    probe
        .recv(Duration::from_secs(3))
        .expect("an answer to OPTIONS")
}

/// A node's final answer to a new INVITE (no call is set up by it when refused).
fn invite_answer(node: SocketAddr) -> String {
    let probe = RawUdp::new(node);
    let local = probe.local_addr();
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
               m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
    let invite = format!(
        "INVITE sip:verify@{node} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK-away;rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:caller@{local}>;tag=away\r\n\
         To: <sip:verify@{node}>\r\n\
         Call-ID: away-{}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:caller@{local}>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{sdp}",
        local.port(),
        sdp.len()
    );
    probe.send(invite.as_bytes());
    loop {
        let answer = probe
            .recv(Duration::from_secs(5))
            .expect("a final answer to the INVITE");
        if status_code(&answer).is_some_and(|c| c >= 200) {
            return answer;
        }
    }
}

fn refer_to(refer: &str) -> String {
    header_value(refer, "Refer-To", Some("r")).unwrap_or_default()
}

/// The shared database's audit rows, newest first.
fn audit(url: &str) -> Vec<AuditRow> {
    Store::connect(url, &PgOptions::default())
        .expect("connect to the shared database")
        .recent_audit(100)
        .expect("read the audit")
}

fn wait_audit(url: &str, count: usize, timeout: Duration) -> Vec<AuditRow> {
    wait_audit_rows(|| audit(url), count, timeout)
}

/// Wrong PINs on one node lock the customer out on the other; the SMS budget of a customer
/// spent through one node refuses on the other.
#[test]
fn a_lock_out_and_an_sms_budget_hold_on_every_node() {
    let pg = Postgres::new();
    pg.create_database("ivrd");
    let url = pg.url("ivrd");
    let rig = Rig::new(200, free_udp_port());
    // One SMS per customer per window: the second request is over the budget.
    let a = node(&rig, &url, "sms_per_customer = 1\n");
    let b = node(&rig, &url, "sms_per_customer = 1\n");
    let kamailio = dispatcher(&[&a, &b]);

    // John, three wrong PINs on whichever node takes the call: locked out.
    let mut uac = call_and_enter_id(&kamailio, JOHN);
    let (_, other) = serving([&a, &b], &uac);
    let posts = rig.sms.wait_posts(1, FLOW_TIMEOUT);
    let pin = check_sms(&posts[0], JOHN_MOBILE, "en");
    type_three_wrong_pins(&mut uac, "en", &wrong_pin(&pin));
    let refer = uac.expect_request("REFER", FLOW_TIMEOUT);
    assert!(refer_to(&refer).contains("X-Verified=no"), "{refer}");
    complete_transfer(&mut uac, &refer);
    let rows = wait_audit(&url, 1, Duration::from_secs(15));
    assert_eq!(rows[0].outcome, "wrong-pin", "{rows:#?}");

    // The next call goes to the other node (round-robin), which knows the lock-out: no SMS,
    // and even the right PIN fails.
    let mut uac = call_and_enter_id(&kamailio, JOHN);
    let (second, _) = serving([&a, &b], &uac);
    assert!(
        std::ptr::eq(second, other),
        "round-robin sent both calls to one node\n{}",
        kamailio.log()
    );
    type_three_wrong_pins(&mut uac, "en", &pin);
    let refer = uac.expect_request("REFER", FLOW_TIMEOUT);
    assert!(refer_to(&refer).contains("X-Verified=no"), "{refer}");
    complete_transfer(&mut uac, &refer);
    let rows = wait_audit(&url, 2, Duration::from_secs(15));
    assert_eq!(
        rows[0].outcome, "locked-out",
        "the lock-out made on one node did not hold on the other: {rows:#?}"
    );
    assert_eq!(rig.sms.posts().len(), 1, "a locked-out customer got an SMS");

    // Erika: one SMS through one node spends her budget; a call on the other gets none.
    let mut uac = call_and_enter_id(&kamailio, ERIKA);
    let (third, _) = serving([&a, &b], &uac);
    let posts = rig.sms.wait_posts(2, FLOW_TIMEOUT);
    let pin = check_sms(&posts[1], ERIKA_MOBILE, "de");
    uac.info_digits(&pin, KEY_GAP);
    let refer = uac.expect_request("REFER", FLOW_TIMEOUT);
    assert!(refer_to(&refer).contains("X-Verified=yes"), "{refer}");
    complete_transfer(&mut uac, &refer);
    let mut uac = call_and_enter_id(&kamailio, ERIKA);
    let (fourth, _) = serving([&a, &b], &uac);
    assert!(!std::ptr::eq(third, fourth), "{}", kamailio.log());
    let refer = uac.expect_request("REFER", FLOW_TIMEOUT);
    assert!(refer_to(&refer).contains("X-Verified=no"), "{refer}");
    complete_transfer(&mut uac, &refer);
    let rows = wait_audit(&url, 4, Duration::from_secs(15));
    assert_eq!(rows[0].outcome, "rate-limited", "{rows:#?}");
    assert_eq!(rows[0].customer_id.as_deref(), Some(ERIKA), "{rows:#?}");
    assert_eq!(
        rig.sms.posts().len(),
        2,
        "the budget spent on one node was spent again on the other"
    );
}

/// `kill -9` of the node with a call up: the next calls go to the other node; what the dead
/// node committed before it died (its SMS send, its earlier call's audit row) is all there.
#[test]
fn a_killed_node_loses_nothing_it_committed() {
    let pg = Postgres::new();
    pg.create_database("ivrd");
    let url = pg.url("ivrd");
    let rig = Rig::new(200, free_udp_port());
    let mut a = node(&rig, &url, "");
    let b = node(&rig, &url, "");
    let kamailio = dispatcher(&[&a, &b]);

    // Round-robin: one finished call on each node, then a call up on A with its SMS sent.
    let mut rows_before = 0;
    for _ in 0..2 {
        let mut uac = RawUac::call(kamailio.addr(), "verify");
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(uac.bye(), 200);
        rows_before += 1;
        wait_audit(&url, rows_before, Duration::from_secs(15));
    }
    // The next call goes to A (round-robin), or the one after.
    let mut up = loop {
        let mut uac = call_and_enter_id(&kamailio, JOHN);
        let (node, _) = serving([&a, &b], &uac);
        if std::ptr::eq(node, &a) {
            break uac;
        }
        assert_eq!(uac.bye(), 200);
        rows_before += 1;
        wait_audit(&url, rows_before, Duration::from_secs(15));
    };
    rig.sms.wait_posts(1, FLOW_TIMEOUT);
    let status = Command::new("kill")
        .args(["-9", &a.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(2);
    while a.is_running() {
        assert!(Instant::now() < deadline, "ivrd survived SIGKILL");
        std::thread::sleep(Duration::from_millis(50));
    }
    up.stop_media();

    // What A committed: the audit rows of its finished calls, and John's SMS send (which
    // counts against his limit on B too).
    let store = Store::connect(&url, &PgOptions::default()).unwrap();
    let since = std::time::SystemTime::now() - Duration::from_secs(600);
    assert_eq!(
        store.sms_count_for_customer(JOHN, since).unwrap(),
        1,
        "the dead node's SMS send is not in the shared database"
    );
    let rows = audit(&url);
    assert!(
        rows.len() >= rows_before,
        "audit rows lost with the node: {rows:#?}"
    );

    // New calls: every one answered by B (within fr_timer while Kamailio still tries A).
    for _ in 0..2 {
        let started = Instant::now();
        let mut uac = RawUac::call(kamailio.addr(), "verify");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a call waited {:?}",
            started.elapsed()
        );
        // A node logs the call a moment after its 200 may have reached the caller.
        assert!(
            b.wait_for_log(uac.call_id(), Duration::from_secs(2)),
            "a new call did not reach the live node\n{}",
            kamailio.log()
        );
        assert_eq!(uac.bye(), 200);
    }
}

/// PostgreSQL stopped while a caller waits for the PIN: the caller goes down the failure
/// branch (the fallback, not silence), the node answers OPTIONS and new INVITEs 503 with
/// Retry-After while the database is away, and once it is back the node takes calls and
/// verifies again without a restart; every call's audit row reaches the database.
#[test]
fn a_database_outage_sends_callers_to_the_fallback_and_loses_no_audit_row() {
    database_away(Outage::Stopped);
}

/// The same with the server frozen (SIGSTOP: a hung host, a stalled disk) instead of stopped:
/// its connections stay open and nothing answers, so only ivrd's own deadline on each
/// exchange (`statement_timeout_ms + connect_timeout_ms`, 7 s by default) ends the wait. The
/// caller still reaches the fallback, in well under the flow's timeout.
#[test]
fn a_frozen_database_sends_callers_to_the_fallback_and_loses_no_audit_row() {
    database_away(Outage::Frozen);
}

#[derive(Clone, Copy, Debug)]
enum Outage {
    /// `pg_ctl stop`: connections are closed, new ones refused.
    Stopped,
    /// SIGSTOP to every server process: connections hang.
    Frozen,
}

fn database_away(outage: Outage) {
    let mut pg = Postgres::new();
    pg.create_database("ivrd");
    let url = pg.url("ivrd");
    let rig = Rig::new(200, free_udp_port());
    let node = node(&rig, &url, "");

    // A caller waiting to type the PIN when the database goes away.
    let mut uac = RawUac::call(node.sip_addr(), "verify");
    std::thread::sleep(Duration::from_millis(800));
    uac.info_digits(ERIKA, KEY_GAP);
    let posts = rig.sms.wait_posts(1, FLOW_TIMEOUT);
    let pin = check_sms(&posts[0], ERIKA_MOBILE, "de");
    match outage {
        Outage::Stopped => pg.stop(),
        Outage::Frozen => pg.freeze(),
    }
    uac.info_digits(&pin, KEY_GAP);
    let typed = Instant::now();
    let refer = uac.expect_request("REFER", FLOW_TIMEOUT);
    let waited = typed.elapsed();
    eprintln!("{outage:?}: the caller was transferred {waited:?} after typing the PIN");
    assert!(
        waited < Duration::from_secs(25),
        "{outage:?}: the caller waited {waited:?} for the fallback"
    );
    assert_eq!(
        refer_to(&refer),
        format!("<{}?X-Customer-Id={ERIKA}&X-Verified=no>", rig.fallback),
        "a caller whose verification could not be recorded must not be transferred as \
         verified\n{}",
        node.log()
    );
    complete_transfer(&mut uac, &refer);

    // Meanwhile: OPTIONS 503 (after the next probe) and a new INVITE 503, both Retry-After.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        n += 1;
        let reply = ask_options(node.sip_addr(), n);
        if status_code(&reply) == Some(503) {
            assert!(reply.contains("Retry-After: 5"), "{reply}");
            assert!(
                reply.contains("Warning: 399 ivrd \"the database does not answer\""),
                "{reply}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "OPTIONS still {reply}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let refused = invite_answer(node.sip_addr());
    assert_eq!(
        status_code(&refused),
        Some(503),
        "a new call while the database is away: {refused}"
    );
    assert!(refused.contains("Retry-After: 5"), "{refused}");

    // Back: OPTIONS 200 again without a restart, and a call verifies.
    match outage {
        Outage::Stopped => pg.start(),
        Outage::Frozen => pg.thaw(),
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while status_code(&ask_options(node.sip_addr(), 1000 + n)) != Some(200) {
        n += 1;
        assert!(
            Instant::now() < deadline,
            "the node did not come back\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut uac = RawUac::call(node.sip_addr(), "verify");
    std::thread::sleep(Duration::from_millis(800));
    uac.info_digits(JOHN, KEY_GAP);
    let posts = rig.sms.wait_posts(2, FLOW_TIMEOUT);
    let pin = check_sms(&posts[1], JOHN_MOBILE, "en");
    uac.info_digits(&pin, KEY_GAP);
    let refer = uac.expect_request("REFER", FLOW_TIMEOUT);
    assert!(refer_to(&refer).contains("X-Verified=yes"), "{refer}");
    complete_transfer(&mut uac, &refer);

    // Both calls' rows, the one that ended during the outage included (spooled, then flushed).
    let rows = wait_audit(&url, 2, Duration::from_secs(20));
    let ids: Vec<Option<&str>> = rows.iter().map(|r| r.customer_id.as_deref()).collect();
    assert_eq!(ids, [Some(JOHN), Some(ERIKA)], "{rows:#?}");
    assert_eq!(rows[0].outcome, "verified", "{rows:#?}");
    assert_ne!(rows[1].outcome, "verified", "{rows:#?}");
}

/// `[store] pin_key_file`, the same secret on both nodes: a code the HTTP API sent through one
/// node is resent (the same digits) and checked through the other; the table holds no code.
#[test]
fn an_api_code_sent_through_one_node_is_checked_through_the_other() {
    let pg = Postgres::new();
    pg.create_database("ivrd");
    let url = pg.url("ivrd");
    let rig = Rig::new(200, free_udp_port());
    let secret = rig.state.path().join("pin-key");
    std::fs::write(
        &secret,
        "5f0c8e2a9b4d7f1e3a6c0b9d8e7f6a5b4c3d2e1f0a9b8c7d\n",
    )
    .unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let ports = [free_tcp_port(), free_tcp_port()];
    let nodes: Vec<Daemon> = ports
        .iter()
        .map(|port| {
            rig.daemon(&format!(
                "[store]\nurl = {}\npin_key_file = {}\n[api]\nlisten = {}\n",
                toml_str(&url),
                toml_str(&secret.display().to_string()),
                toml_str(&format!("127.0.0.1:{port}"))
            ))
        })
        .collect();
    let key = make_key(std::path::Path::new(&url), "web");
    let (a, b) = (Api::new(ports[0]), Api::new(ports[1]));

    let (s, _, v) = a.start(&key, json!({"to": "+4915112345678"}));
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let posts = rig.sms.wait_posts(1, Duration::from_secs(10));
    let code = pin_in(&posts[0].text(), 6);
    let store = Store::connect(&url, &PgOptions::default()).unwrap();
    assert_eq!(store.pins_outstanding().unwrap(), 1);
    let dump = pg
        .psql("ivrd", "SELECT digest || sealed FROM pins")
        .unwrap();
    assert!(
        !dump.contains(&code),
        "the code is in the pins table: {dump}"
    );

    // Started again through B: the pending verification's code goes out again, unchanged.
    let (s, _, v) = b.start(&key, json!({"to": "+4915112345678"}));
    assert!(s == 200 || s == 201, "{s} {v}");
    assert_eq!(v["id"].as_str(), Some(id.as_str()), "{v}");
    let posts = rig.sms.wait_posts(2, Duration::from_secs(10));
    assert_eq!(
        pin_in(&posts[1].text(), 6),
        code,
        "a resend through the other node"
    );

    // A wrong code through A costs a try there and here; the right one through B approves.
    let wrong = wrong_pin(&code);
    let (s, v) = a.check(&key, &id, &wrong);
    assert_eq!((s, v["status"].as_str()), (200, Some("pending")), "{v}");
    let (s, v) = b.check(&key, &id, &code);
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    assert_eq!(store.pins_outstanding().unwrap(), 0, "a used code is gone");
    drop(nodes);
}

/// `ivrd migrate` on an empty PostgreSQL database creates the schema and says from which
/// version; run again, it has nothing to do; a daemon then starts on it without migrating.
#[test]
fn ivrd_migrate_brings_an_empty_database_up_once() {
    let pg = Postgres::new();
    pg.create_database("ivrd");
    let url = pg.url("ivrd");
    let migrate = || {
        let out = Command::new(env!("CARGO_BIN_EXE_ivrd"))
            .args(["migrate", "--db", &url])
            .output()
            .expect("run ivrd migrate");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let first = migrate();
    let version = ivrd::store::SCHEMA_VERSION;
    assert!(
        first.contains(&format!("schema version 0 -> {version}")),
        "{first}"
    );
    assert!(!first.contains("password"), "{first}");
    let again = migrate();
    assert!(again.contains("nothing to do"), "{again}");
    let rows = pg
        .psql("ivrd", "SELECT version FROM schema_version")
        .unwrap();
    assert_eq!(rows.trim(), version.to_string(), "{rows}");
    // A wrong database is an error with the server's words, not a hang.
    let out = Command::new(env!("CARGO_BIN_EXE_ivrd"))
        .args(["migrate", "--db", &pg.url("nosuchdb")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nosuchdb") && err.contains("does not exist"),
        "{err}"
    );
}
