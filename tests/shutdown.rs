//! Shutdown and crash safety, as operators were promised:
//!
//! - SIGTERM drains: new INVITEs get 503 with Retry-After, OPTIONS say the same, calls in
//!   progress run until `[shutdown] drain_secs`, then ivrd hangs them up with BYE, writes
//!   their audit rows and exits 0 by itself.
//! - A call that ends during the drain is audited, and the daemon exits as soon as the last
//!   call is gone instead of waiting for the deadline.
//! - `kill -9` in the middle of a call loses nothing that was committed (SQLite WAL): the next
//!   start is clean, the database passes `PRAGMA integrity_check`, earlier audit rows and the
//!   seeded customers are still there, and calls work again.
//!
//! The callers are `RawUac` (tests/common): a small UDP SIP caller that keeps sending RTP, so
//! only the drain (not the RTP timeout) can end its call. Needs no external peer.

mod common;

use common::*;
use ivrd::store::{AuditRow, Store};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The seed of the verify tests.
const SEED_CSV: &str = "examples/customers.csv";
/// A customer number nobody has: the verify plan goes to the fallback without an SMS.
const UNKNOWN: &str = "999999";

/// From the first key to the REFER in the verify plan; generous for two loaded cores.
const FLOW_TIMEOUT: Duration = Duration::from_secs(40);

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A directory for the database that outlives the daemons started on it.
fn state_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ivrd-shutdown-")
        .tempdir()
        .expect("create state dir")
}

/// The audit rows, newest first.
fn audit(db: &Path) -> Vec<AuditRow> {
    Store::open(db)
        .expect("open the daemon's database")
        .recent_audit(10)
        .expect("read audit rows")
}

/// Waits until the database has `count` audit rows and returns them, newest first.
fn wait_audit(db: &Path, count: usize, timeout: Duration) -> Vec<AuditRow> {
    common::verify::wait_audit_rows(|| audit(db), count, timeout)
}

/// Waits until the daemon's RTP (prompt or silence) reaches the caller: the call is really up.
fn wait_media(uac: &RawUac, packets: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while uac.rtp_received() < packets {
        assert!(
            Instant::now() < deadline,
            "only {} RTP packets from ivrd within 5 s of the answer\n{}",
            uac.rtp_received(),
            uac.transcript()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A demo-flow daemon whose call stays up on its own: one round, a minute to type.
fn demo_daemon(drain_secs: u64, db: &Path) -> Daemon {
    Daemon::start(&format!(
        r#"
[shutdown]
drain_secs = {drain_secs}

[demo]
first_digit_timeout_ms = 60000
inter_digit_timeout_ms = 60000
rounds = 1

[store]
path = {db}
"#,
        db = toml_str(&db.display().to_string())
    ))
}

/// An out-of-dialog INVITE with a PCMU offer, from `raw`'s socket.
fn invite_request(raw: &RawUdp, call_id: &str, branch: &str) -> String {
    let (target, local) = (raw.target, raw.local_addr());
    let sdp = "v=0\r\no=probe 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
               m=audio 29990 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
    format!(
        "INVITE sip:demo@{target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:+4930999@{local}>;tag=late-caller\r\n\
         To: <sip:demo@{target}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:late@{local}>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

/// The ACK for a non-2xx final response to `invite_request` (same branch, the response's To).
fn ack_for(raw: &RawUdp, call_id: &str, branch: &str, response: &str) -> String {
    let (target, local) = (raw.target, raw.local_addr());
    let to = header_value(response, "To", Some("t")).expect("To in the response");
    format!(
        "ACK sip:demo@{target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:+4930999@{local}>;tag=late-caller\r\n\
         To: {to}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 ACK\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// The first final response on `raw` whose CSeq names `method`, within `timeout`; every
/// message seen is returned too, for failure messages.
fn final_response(raw: &RawUdp, method: &str, timeout: Duration) -> (Option<String>, Vec<String>) {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (None, seen);
        }
        let Some(msg) = raw.recv(left) else {
            return (None, seen);
        };
        seen.push(msg.clone());
        let ours = header_value(&msg, "CSeq", None)
            .is_some_and(|c| c.split_whitespace().nth(1) == Some(method));
        if ours && status_code(&msg).is_some_and(|c| c >= 200) {
            return (Some(msg), seen);
        }
    }
}

/// Checks a draining 503: the status and a Retry-After of a positive number of seconds.
fn assert_503_retry_after(resp: &str, what: &str) {
    assert_eq!(
        status_code(resp),
        Some(503),
        "{what} during the drain was not answered 503:\n{resp}"
    );
    let retry = header_value(resp, "Retry-After", None)
        .unwrap_or_else(|| panic!("{what}'s 503 has no Retry-After:\n{resp}"));
    let secs: u32 = retry
        .split([';', '(', ' '])
        .next()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{what}'s Retry-After is not a number of seconds: {retry:?}"));
    assert!(secs > 0, "{what}'s Retry-After is 0:\n{resp}");
}

/// 1. SIGTERM with a call up: 503 + Retry-After to a new INVITE and to OPTIONS, the call keeps
///    its media until the drain deadline, then ivrd sends BYE, audits the call as "shutdown"
///    and exits 0 on its own.
#[test]
fn sigterm_drains() {
    const DRAIN: Duration = Duration::from_secs(3);
    let state = state_dir();
    let db = state.path().join("ivrd.db");
    let mut daemon = demo_daemon(DRAIN.as_secs(), &db);
    let mut uac = RawUac::call(daemon.sip_addr(), "demo");
    wait_media(&uac, 10);

    let term = Instant::now();
    daemon.signal("TERM");
    daemon.expect_log("no longer accepting calls", Duration::from_secs(5));

    // A new INVITE is refused with 503 and Retry-After (and the 503 is ACKed, as a UAC does).
    let raw = RawUdp::new(daemon.sip_addr());
    let late_call_id = "late-invite@127.0.0.1";
    let branch = "z9hG4bK-late-invite";
    raw.send(invite_request(&raw, late_call_id, branch).as_bytes());
    let (resp, seen) = final_response(&raw, "INVITE", Duration::from_secs(3));
    let resp = resp.unwrap_or_else(|| {
        panic!("no final response to an INVITE during the drain; got:\n{seen:#?}")
    });
    assert_503_retry_after(&resp, "an INVITE");
    raw.send(ack_for(&raw, late_call_id, branch, &resp).as_bytes());

    // OPTIONS pings say the same, so load balancers move traffic away.
    let probe = RawUdp::new(daemon.sip_addr());
    probe.send(
        options_request(
            daemon.sip_addr(),
            probe.local_addr(),
            "drain-options",
            "UDP",
        )
        .as_bytes(),
    );
    let (resp, seen) = final_response(&probe, "OPTIONS", Duration::from_secs(3));
    let resp = resp.unwrap_or_else(|| {
        panic!("no final response to OPTIONS during the drain; got:\n{seen:#?}")
    });
    assert_503_retry_after(&resp, "an OPTIONS");

    // The call in progress keeps going (media flows) until the deadline, then gets BYE.
    let (rtp_mid, mid_at) = (uac.rtp_received(), term.elapsed());
    let bye = uac.expect_request("BYE", DRAIN + Duration::from_secs(5));
    let bye_at = term.elapsed();
    let rtp_end = uac.rtp_received();
    uac.respond(&bye, 200, "OK");
    uac.stop_media();
    assert!(
        bye_at + Duration::from_millis(100) >= DRAIN,
        "ivrd hung up {bye_at:?} after SIGTERM, before the {DRAIN:?} drain deadline\n{}",
        uac.transcript()
    );
    assert!(
        bye_at <= DRAIN + Duration::from_secs(3),
        "ivrd's BYE came {bye_at:?} after SIGTERM, long after the {DRAIN:?} drain deadline"
    );
    if mid_at + Duration::from_millis(500) < DRAIN {
        // 50 packets a second; at least a quarter of that over the time left.
        let left = (DRAIN - mid_at).as_secs_f64();
        let expected = (left * 50.0 / 4.0) as u32;
        assert!(
            rtp_end.saturating_sub(rtp_mid) >= expected,
            "the call's media stopped during the drain: {rtp_mid} RTP packets at {mid_at:?}, \
             {rtp_end} at the BYE ({bye_at:?}); expected at least {expected} more"
        );
    }
    assert_eq!(
        header_value(&bye, "Call-ID", Some("i")).as_deref(),
        Some(uac.call_id()),
        "the BYE is not for our call:\n{bye}"
    );

    // The process exits on its own, with status 0, soon after the deadline.
    let status = daemon.wait_exit(DRAIN + Duration::from_secs(5));
    let exit_at = term.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "ivrd still running {exit_at:?} after SIGTERM (drain {DRAIN:?})\n--- ivrd log ---\n{}",
            daemon.log()
        )
    });
    assert!(
        status.success(),
        "ivrd exited with {status} after a drain\n--- ivrd log ---\n{}",
        daemon.log()
    );
    assert!(
        daemon.log().contains("drain deadline passed"),
        "the log does not say the drain deadline passed\n{}",
        daemon.log()
    );

    // The call's audit row is on disk, once, as ended by the shutdown; the refused INVITE
    // left none.
    let rows = audit(&db);
    assert_eq!(rows.len(), 1, "expected exactly one audit row: {rows:#?}");
    let row = &rows[0];
    assert_eq!(row.call_id, uac.call_id(), "audit row: {row:#?}");
    assert_eq!(row.outcome, "shutdown", "audit row: {row:#?}");
    assert_eq!(
        row.detail.as_deref(),
        Some("end=shutdown"),
        "audit row: {row:#?}"
    );
    assert!(
        row.ended_at >= row.started_at,
        "audit row ends before it starts: {row:#?}"
    );
}

/// 2. The caller hangs up during the drain: the call is audited as a caller hang-up and the
///    daemon exits at once, well before the drain deadline.
#[test]
fn call_ending_during_drain_is_audited() {
    const DRAIN: Duration = Duration::from_secs(10);
    let state = state_dir();
    let db = state.path().join("ivrd.db");
    let mut daemon = demo_daemon(DRAIN.as_secs(), &db);
    let mut uac = RawUac::call(daemon.sip_addr(), "demo");
    wait_media(&uac, 10);

    let term = Instant::now();
    daemon.signal("TERM");
    daemon.expect_log("no longer accepting calls", Duration::from_secs(5));
    assert!(
        uac.try_request("BYE", Duration::from_millis(500)).is_none(),
        "ivrd hung up at once on SIGTERM instead of draining ({DRAIN:?})\n{}",
        uac.transcript()
    );
    assert!(daemon.is_running(), "ivrd exited with a call still up");

    assert_eq!(
        uac.bye(),
        200,
        "our BYE during the drain was not answered 200\n{}",
        uac.transcript()
    );
    let hung_up = term.elapsed();
    let status = daemon.wait_exit(DRAIN + Duration::from_secs(5));
    let exit_at = term.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "ivrd still running {exit_at:?} after SIGTERM, though its only call ended at {hung_up:?}\n--- ivrd log ---\n{}",
            daemon.log()
        )
    });
    assert!(
        status.success(),
        "ivrd exited with {status}\n--- ivrd log ---\n{}",
        daemon.log()
    );
    assert!(
        exit_at < DRAIN && exit_at < hung_up + Duration::from_secs(3),
        "ivrd exited {exit_at:?} after SIGTERM; its last call ended at {hung_up:?}, so it \
         should not wait for the {DRAIN:?} deadline\n--- ivrd log ---\n{}",
        daemon.log()
    );
    assert!(
        !daemon.log().contains("drain deadline passed"),
        "ivrd waited for the drain deadline\n{}",
        daemon.log()
    );

    let rows = audit(&db);
    assert_eq!(rows.len(), 1, "expected exactly one audit row: {rows:#?}");
    let row = &rows[0];
    assert_eq!(row.call_id, uac.call_id(), "audit row: {row:#?}");
    assert_eq!(row.outcome, "caller-hangup", "audit row: {row:#?}");
}

// ---------------------------------------------------------------------------------------------

/// The verify plan over `db`, with the example customers as seed and the SMS webhook.
fn verify_daemon(db: &Path, sms: &SmsSink, fallback: &str) -> Daemon {
    Daemon::start(
        &(common::verify::verify_plan_config(db, &sms.url(), fallback, fallback)
            + "\n[transfer]\ntimeout_secs = 10\n"),
    )
}

/// One whole verify call for an unknown customer: the customer number typed, ivrd's REFER to
/// the fallback accepted and reported done (NOTIFY 200), ivrd's BYE answered. Returns the
/// Call-ID.
fn unknown_customer_call(daemon: SocketAddr) -> String {
    let mut uac = RawUac::call(daemon, "verify");
    wait_media(&uac, 10);
    std::thread::sleep(Duration::from_millis(500));
    uac.info_digits(UNKNOWN, Duration::from_millis(300));
    // The shipped plan treats an unknown number as a decoy: "sending-pin", then the PIN
    // prompt; three wrong PINs end it.
    common::verify::type_three_wrong_pins(&mut uac, "en", "0000");
    let refer = uac.expect_request("REFER", FLOW_TIMEOUT);
    uac.respond(&refer, 202, "Accepted");
    assert_eq!(
        uac.notify_sipfrag("SIP/2.0 200 OK", "terminated;reason=noresource"),
        200,
        "NOTIFY 200 not answered 200\n{}",
        uac.transcript()
    );
    let bye = uac.expect_request("BYE", Duration::from_secs(10));
    uac.respond(&bye, 200, "OK");
    uac.stop_media();
    uac.call_id().to_string()
}

/// The customer ids in the seed CSV (first column, after the header), sorted.
fn seeded_ids() -> Vec<String> {
    let path = manifest_dir().join(SEED_CSV);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut ids: Vec<String> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').next())
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty())
        .collect();
    ids.sort_unstable();
    assert!(!ids.is_empty(), "{} has no customers", path.display());
    ids
}

fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// 3. `kill -9` mid-call: the committed audit row and the seeded customers survive, the
///    restart is clean (OPTIONS answered, no errors logged, integrity_check ok), the killed
///    call left no half row, and a new call works and is audited.
#[test]
fn kill_9_mid_call_loses_no_committed_data() {
    let state = state_dir();
    let db = state.path().join("ivrd.db");
    let sms = SmsSink::start(200);
    // Nobody listens there: the caller plays the transferee itself.
    let fallback = format!("sip:fallback@127.0.0.1:{}", free_udp_port());
    let mut daemon = verify_daemon(&db, &sms, &fallback);

    // Call 1 runs to its end; its audit row is committed.
    let first = unknown_customer_call(daemon.sip_addr());
    let rows = wait_audit(&db, 1, Duration::from_secs(15));
    assert_eq!(rows[0].call_id, first, "audit row: {rows:#?}");
    assert_eq!(rows[0].outcome, "unknown-customer", "audit row: {rows:#?}");

    // Call 2 is in the middle of the flow (customer number typed) when the daemon is killed.
    let mut second = RawUac::call(daemon.sip_addr(), "verify");
    wait_media(&second, 10);
    second.info_digits("12", Duration::from_millis(300));
    daemon.signal("KILL");
    let status = daemon
        .wait_exit(Duration::from_secs(5))
        .expect("ivrd still running 5 s after SIGKILL");
    assert_eq!(
        status.signal(),
        Some(9),
        "ivrd's exit after kill -9: {status}"
    );
    let second_id = second.call_id().to_string();
    drop(second);
    drop(daemon);
    // What makes this test bite: the committed rows are (still) in the WAL, not yet
    // checkpointed into the main file, so the restart has to recover them from it.
    let wal = std::fs::metadata(wal_path(&db))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(
        wal > 0,
        "no WAL content left by the killed daemon ({}): is the store still in WAL mode?",
        wal_path(&db).display()
    );

    // The restart on the same file is clean: Daemon::start waits for a 200 to OPTIONS.
    let daemon = verify_daemon(&db, &sms, &fallback);
    let errors: Vec<String> = daemon
        .log()
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
        .map(str::to_owned)
        .collect();
    assert!(
        errors.is_empty(),
        "the restart after kill -9 logged problems:\n{}",
        errors.join("\n")
    );
    let conn = rusqlite::Connection::open(&db).expect("open the database with rusqlite");
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("run integrity_check");
    assert_eq!(integrity, "ok", "PRAGMA integrity_check after kill -9");
    let journal: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("read journal_mode");
    assert_eq!(
        journal.to_lowercase(),
        "wal",
        "journal mode after the restart"
    );
    drop(conn);

    // Committed data survived; the killed call left no row (it never finished).
    let rows = audit(&db);
    assert_eq!(
        rows.len(),
        1,
        "after kill -9 and restart, expected only the first call's audit row: {rows:#?}"
    );
    assert_eq!(rows[0].call_id, first, "audit row: {rows:#?}");
    assert_eq!(rows[0].outcome, "unknown-customer", "audit row: {rows:#?}");
    assert!(
        rows.iter().all(|r| r.call_id != second_id),
        "the killed call has an audit row: {rows:#?}"
    );
    let store = Store::open(&db).expect("open the store");
    let customers = store.list_customers().expect("list customers");
    let mut ids: Vec<String> = customers.iter().map(|c| c.id.clone()).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        seeded_ids(),
        "the seeded customers after kill -9 and restart (not re-imported: the file existed)"
    );
    drop(store);

    // And calls work again, end to end, with their audit rows.
    let third = unknown_customer_call(daemon.sip_addr());
    let rows = wait_audit(&db, 2, Duration::from_secs(15));
    assert_eq!(rows[0].call_id, third, "audit rows: {rows:#?}");
    assert_eq!(rows[0].outcome, "unknown-customer", "audit rows: {rows:#?}");
    assert_eq!(rows[1].call_id, first, "audit rows: {rows:#?}");
    assert!(
        sms.posts().is_empty(),
        "an SMS went out for an unknown customer: {:?}",
        sms.posts()
    );
}
