//! The verification dialplan (dialplans/verify.toml) end to end, against real peers: ivrd runs
//! with the `verify` plan, the example customers in a SQLite file, and the `webhook` SMS
//! provider pointed at a real HTTP server on loopback (`SmsSink`) that records each SMS, so
//! the test can read the PIN and type it back.
//!
//! - The happy path with baresip (a real softphone, RFC 4733 digits): it follows ivrd's REFER
//!   and calls the queue, a SIPp UAS (tests/sipp/queue_uas.xml).
//! - Everything else with `RawUac` (tests/common), a small SIP caller that sends digits as SIP
//!   INFO and plays the transferee itself, so the test sees the REFER exactly and chooses how
//!   the transfer goes (202 + NOTIFY 100/200, a 603, a NOTIFY 486).
//!
//! Every test checks the audit row ivrd wrote into the database and that the PIN never made
//! it into the daemon's log. Needs `sipp` and `baresip`: run scripts/install-test-deps.sh.

mod common;

use common::verify::*;
use common::*;
use ivrd::store::AuditRow;
use std::time::{Duration, Instant};

/// The Refer-To of a REFER, checked to be `<expected>` exactly.
fn assert_refer_to(refer: &str, expected: &str) {
    let refer_to = header_value(refer, "Refer-To", Some("r")).unwrap_or_default();
    assert_eq!(
        refer_to,
        format!("<{expected}>"),
        "Refer-To of the REFER:\n{refer}"
    );
    assert!(
        header_value(refer, "Referred-By", Some("b")).is_some(),
        "REFER without Referred-By:\n{refer}"
    );
    assert_eq!(
        header_value(refer, "CSeq", None)
            .and_then(|c| c.split_whitespace().nth(1).map(str::to_owned))
            .as_deref(),
        Some("REFER"),
        "REFER's CSeq method:\n{refer}"
    );
}

/// The transferee's side of a transfer that works (RFC 3515): 202, NOTIFY 100 (ivrd must not
/// hang up on it), NOTIFY 200; then ivrd sends BYE, which we answer.
fn complete_transfer(uac: &mut RawUac, refer: &str) {
    uac.respond(refer, 202, "Accepted");
    assert_eq!(
        uac.notify_sipfrag("SIP/2.0 100 Trying", "active;expires=60"),
        200,
        "NOTIFY 100 not answered 200\n{}",
        uac.transcript()
    );
    assert!(
        uac.try_request("BYE", Duration::from_millis(1500))
            .is_none(),
        "ivrd hung up after a provisional NOTIFY (100), before the transfer succeeded\n{}",
        uac.transcript()
    );
    assert_eq!(
        uac.notify_sipfrag("SIP/2.0 200 OK", "terminated;reason=noresource"),
        200,
        "NOTIFY 200 not answered 200\n{}",
        uac.transcript()
    );
    let bye = uac.expect_request("BYE", Duration::from_secs(5));
    uac.respond(&bye, 200, "OK");
    uac.stop_media();
}

/// Calls ivrd and types the customer number during the welcome prompt (it allows barge-in).
fn call_and_enter_id(daemon: &Daemon, id: &str) -> RawUac {
    let mut uac = RawUac::call(daemon.sip_addr(), "verify");
    std::thread::sleep(Duration::from_millis(800));
    uac.info_digits(id, KEY_GAP);
    uac
}

/// Runs the verify flow for Erika with the right PIN, up to ivrd's REFER; returns the PIN
/// and the REFER.
fn verified_until_refer(rig: &Rig, daemon: &Daemon) -> (RawUac, String, String) {
    let mut uac = call_and_enter_id(daemon, ERIKA);
    let posts = rig.sms.wait_posts(1, FLOW_TIMEOUT);
    let pin = check_sms(&posts[0], ERIKA_MOBILE, "de");
    uac.info_digits(&pin, KEY_GAP);
    let refer = uac.expect_request("REFER", FLOW_TIMEOUT);
    (uac, pin, refer)
}

/// The one audit row of a test with one call.
fn single_audit(rig: &Rig) -> AuditRow {
    let rows = rig.wait_audit(1, Duration::from_secs(15));
    assert_eq!(rows.len(), 1, "expected one audit row: {rows:#?}");
    rows.into_iter().next().unwrap()
}

// ---------------------------------------------------------------------------------------------

/// 1. The happy path with a real softphone: baresip types the customer number and the PIN
///    from the SMS as RFC 4733 events, ivrd sends REFER, baresip calls the queue (SIPp).
#[test]
fn baresip_verified_caller_is_transferred_to_the_queue() {
    require_tool("sipp");
    require_tool("baresip");
    let queue_port = free_sip_port();
    let rig = Rig::new(200, queue_port);
    let daemon = rig.daemon("");

    // The queue answers the transferred call; it must listen before the call starts.
    let queue_sipp = Sipp::new("queue_uas.xml", daemon.sip_addr())
        .local_port(queue_port)
        .timeout_secs(120);
    let queue = std::thread::spawn(move || queue_sipp.run());
    wait_udp_bound(queue_port, Duration::from_secs(10));

    let mut phone = Baresip::start(2);
    phone.command("dial", &format!("sip:verify@{}", daemon.sip_addr()));
    phone.wait_event("CALL_ESTABLISHED", Duration::from_secs(10));

    std::thread::sleep(Duration::from_millis(1000));
    phone.type_digits(ERIKA, KEY_GAP);

    let posts = rig.sms.wait_posts(1, FLOW_TIMEOUT);
    let pin = check_sms(&posts[0], ERIKA_MOBILE, "de");
    phone.type_digits(&pin, KEY_GAP);

    // baresip follows the REFER: a second call, to the queue, gets established, and ivrd
    // leaves the first one (BYE after the final NOTIFY).
    phone.wait_events("CALL_ESTABLISHED", 2, FLOW_TIMEOUT);
    let reasons = daemon.wait_call_ends(1, Duration::from_secs(20));
    assert_eq!(
        reasons[0], "transferred",
        "ivrd's call should end as transferred"
    );

    let row = single_audit(&rig);
    // Hang up the queue call so the SIPp UAS completes.
    phone.command("hangup", "");
    let run = queue.join().expect("queue SIPp thread");
    run.assert_ok();

    let invite = run
        .received()
        .into_iter()
        .find(|m| m.text.starts_with("INVITE "))
        .unwrap_or_else(|| panic!("the queue got no INVITE\n{}", run.report()));
    let request_line = invite.text.lines().next().unwrap_or_default().to_string();
    let to = invite.header("To").unwrap_or_default();
    let header = invite.header("X-Customer-Id").unwrap_or_default();
    eprintln!(
        "the queue's INVITE: {request_line}\n  To: {to}\n  X-Customer-Id: {header:?}, X-Verified: {:?}",
        invite.header("X-Verified")
    );
    // baresip 1.0 copies Refer-To URI headers into the Request-URI and To instead of making
    // them header fields (RFC 3261 19.1.5); a PBX would do the latter. Accept either place.
    assert!(
        header == ERIKA
            || request_line.contains(&format!("X-Customer-Id={ERIKA}"))
            || to.contains(&format!("X-Customer-Id={ERIKA}")),
        "the queue's INVITE does not carry X-Customer-Id {ERIKA}:\n{}",
        invite.text
    );
    assert!(
        invite.header("X-Verified").as_deref() == Some("yes")
            || request_line.contains("X-Verified=yes")
            || to.contains("X-Verified=yes"),
        "the queue's INVITE does not carry X-Verified yes:\n{}",
        invite.text
    );

    assert_eq!(row.outcome, "verified", "audit row: {row:#?}");
    assert_eq!(
        row.customer_id.as_deref(),
        Some(ERIKA),
        "audit row: {row:#?}"
    );
    assert_eq!(row.dtmf_methods, "rfc4733", "audit row: {row:#?}");
    assert_eq!(rig.sms.posts().len(), 1, "one SMS per verification");
    assert_pin_not_logged(&daemon, &pin);
    phone.quit();
}

/// 2. The happy path, with the REFER seen exactly: Refer-To carries the customer id and
///    X-Verified=yes; a NOTIFY 100 keeps ivrd on the line, the NOTIFY 200 makes it hang up.
#[test]
fn verified_caller_refer_carries_customer_headers() {
    let rig = Rig::new(200, free_udp_port());
    // Debug level: the PIN must stay out of the log even when an admin turns logging up.
    let daemon = rig.daemon("[log]\nlevel = \"info,ivrd=debug\"\n");
    let (mut uac, pin, refer) = verified_until_refer(&rig, &daemon);
    assert_refer_to(
        &refer,
        &format!("{}?X-Customer-Id={ERIKA}&X-Verified=yes", rig.queue),
    );
    complete_transfer(&mut uac, &refer);

    let row = single_audit(&rig);
    assert_eq!(row.outcome, "verified", "audit row: {row:#?}");
    assert_eq!(
        row.customer_id.as_deref(),
        Some(ERIKA),
        "audit row: {row:#?}"
    );
    assert_eq!(row.call_id, uac.call_id(), "audit row: {row:#?}");
    assert_eq!(
        row.detail.as_deref(),
        Some("end=transferred"),
        "audit row: {row:#?}"
    );
    let transfer = row
        .transfer
        .as_ref()
        .expect("the transfer in the audit row");
    assert_eq!(transfer.target, rig.queue, "audit row: {row:#?}");
    assert_eq!(transfer.status, Some(200), "audit row: {row:#?}");
    assert!(transfer.ms < 10_000, "audit row: {row:#?}");
    assert_eq!(
        daemon.log_lines("transfer finished").len(),
        1,
        "the REFER's fate is logged at info"
    );
    assert!(
        uac.rtp_received() > 100,
        "the caller got only {} RTP packets: no prompts?",
        uac.rtp_received()
    );
    assert_eq!(rig.sms.posts().len(), 1, "one SMS per verification");
    assert_pin_not_logged(&daemon, &pin);
}

/// 3 and 6. Three wrong PINs: fallback, and the customer is locked out (failures_before_lockout
/// = 3). The next call with the same customer number goes straight to the fallback without an
/// SMS, and so does one after a daemon restart on the same database (the lock-out persists).
#[test]
fn wrong_pins_go_to_fallback_and_lock_out_across_calls_and_restarts() {
    let rig = Rig::new(200, free_udp_port());
    let daemon = rig.daemon("");

    // Call 1: three wrong PINs.
    let mut uac = call_and_enter_id(&daemon, JOHN);
    let posts = rig.sms.wait_posts(1, FLOW_TIMEOUT);
    let pin = check_sms(&posts[0], JOHN_MOBILE, "en");
    let wrong = wrong_pin(&pin);
    type_three_wrong_pins(&mut uac, "en", &wrong);
    let refer = uac.expect_request("REFER", FLOW_TIMEOUT);
    assert_refer_to(
        &refer,
        &format!("{}?X-Customer-Id={JOHN}&X-Verified=no", rig.fallback),
    );
    complete_transfer(&mut uac, &refer);
    let rows = rig.wait_audit(1, Duration::from_secs(15));
    assert_eq!(rows[0].outcome, "wrong-pin", "audit row: {:#?}", rows[0]);
    assert_eq!(
        rows[0].customer_id.as_deref(),
        Some(JOHN),
        "audit row: {:#?}",
        rows[0]
    );
    assert_eq!(rig.sms.posts().len(), 1, "one SMS for three tries");
    assert_pin_not_logged(&daemon, &pin);
    assert_pin_not_logged(&daemon, &wrong);

    // Call 2, same daemon: locked out, no SMS; a decoy, so the caller hears the same as
    // before and the PIN check fails.
    let mut uac = call_and_enter_id(&daemon, JOHN);
    type_three_wrong_pins(&mut uac, "en", &pin);
    let refer = uac.expect_request("REFER", FLOW_TIMEOUT);
    assert_refer_to(
        &refer,
        &format!("{}?X-Customer-Id={JOHN}&X-Verified=no", rig.fallback),
    );
    complete_transfer(&mut uac, &refer);
    let rows = rig.wait_audit(2, Duration::from_secs(15));
    assert_eq!(rows[0].outcome, "locked-out", "audit row: {:#?}", rows[0]);
    assert_eq!(
        rows[0].customer_id.as_deref(),
        Some(JOHN),
        "the audit names the locked-out customer: {:#?}",
        rows[0]
    );
    assert_eq!(rig.sms.posts().len(), 1, "a locked-out customer got an SMS");

    // Call 3, after a restart on the same database file.
    drop(daemon);
    let daemon = rig.daemon("");
    let mut uac = call_and_enter_id(&daemon, JOHN);
    type_three_wrong_pins(&mut uac, "en", &pin);
    let refer = uac.expect_request("REFER", FLOW_TIMEOUT);
    assert_refer_to(
        &refer,
        &format!("{}?X-Customer-Id={JOHN}&X-Verified=no", rig.fallback),
    );
    complete_transfer(&mut uac, &refer);
    let rows = rig.wait_audit(3, Duration::from_secs(15));
    assert_eq!(
        rows[0].outcome, "locked-out",
        "the lock-out did not survive a restart: {:#?}",
        rows[0]
    );
    assert_eq!(
        rig.sms.posts().len(),
        1,
        "a locked-out customer got an SMS after a restart"
    );
}

/// 4. No oracle: an unknown customer number hears exactly what a registered one hears, at
///    the same moment, up to the PIN check (the shipped plan's lookup has `decoy = true`);
///    its PIN check fails, it goes to the fallback, no SMS goes out, and only the audit row
///    says the number was unknown.
#[test]
fn an_unknown_number_sounds_like_a_known_one_until_the_pin_check_fails() {
    let rig = Rig::new(200, free_udp_port());
    let daemon = rig.daemon("");
    // PCMU silence (both signs of zero).
    let silent = |b: &u8| *b == 0xFF || *b == 0x7F;
    let mut calls = Vec::new();
    for id in [JOHN, UNKNOWN] {
        let mut uac = call_and_enter_id(&daemon, id);
        let typed = Instant::now();
        let mark = uac.rtp_payload().len();
        // When the first sound after the id reaches the caller.
        let first_sound = loop {
            if uac.rtp_payload()[mark..].iter().any(|b| !silent(b)) {
                break typed.elapsed();
            }
            assert!(
                typed.elapsed() < Duration::from_secs(5),
                "silence after the id {id}"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let wrong = if id == JOHN {
            let posts = rig.sms.wait_posts(1, FLOW_TIMEOUT);
            wrong_pin(&check_sms(&posts[0], JOHN_MOBILE, "en"))
        } else {
            "0000".to_string()
        };
        type_three_wrong_pins(&mut uac, "en", &wrong);
        // What the caller heard, without the silence between prompts (how long that lasts
        // depends on when this test's keys went out, not on ivrd).
        let sound: Vec<u8> = uac.rtp_payload()[mark..]
            .iter()
            .copied()
            .filter(|b| !silent(b))
            .collect();
        // "sending-pin" (cut at its first pause once the SMS is out: the wait is over),
        // "enter-pin", then what follows each wrong PIN: 2 s of sound at least.
        let n = 16_000;
        assert!(
            sound.len() >= n,
            "only {} bytes after the id {id}",
            sound.len()
        );
        let refer = uac.expect_request("REFER", FLOW_TIMEOUT);
        assert_refer_to(
            &refer,
            &format!("{}?X-Customer-Id={id}&X-Verified=no", rig.fallback),
        );
        complete_transfer(&mut uac, &refer);
        calls.push((first_sound, sound[..n].to_vec()));
    }
    let (known, unknown) = (&calls[0], &calls[1]);
    assert!(
        known.1 == unknown.1,
        "the caller heard something else after an unknown id"
    );
    let gap = known.0.abs_diff(unknown.0);
    assert!(
        gap < Duration::from_millis(300),
        "the first sound came {:?} after a known id, {:?} after an unknown one",
        known.0,
        unknown.0
    );
    let rows = rig.wait_audit(2, Duration::from_secs(15));
    assert_eq!(
        rows[0].outcome, "unknown-customer",
        "audit row: {:#?}",
        rows[0]
    );
    assert_eq!(rows[0].customer_id, None, "audit row: {:#?}", rows[0]);
    assert_eq!(rows[1].outcome, "wrong-pin", "audit row: {:#?}", rows[1]);
    assert_eq!(
        rig.sms.posts().len(),
        1,
        "an SMS went out for an unknown customer: {:?}",
        rig.sms.posts()
    );
}

/// 5. The SMS gateway is down (HTTP 500 every time): ivrd retries (max_retries = 2), says
///    "sms-failed" and transfers to the fallback.
#[test]
fn sms_outage_goes_to_fallback() {
    let rig = Rig::new(500, free_udp_port());
    let daemon = rig.daemon("");
    let mut uac = call_and_enter_id(&daemon, ERIKA);
    rig.sms.wait_posts(3, FLOW_TIMEOUT);
    let gave_up = Instant::now();
    let refer = uac.expect_request("REFER", FLOW_TIMEOUT);
    // The caller was told: "sms-failed", then "fallback" (German: Erika's language), before
    // the REFER.
    let told = prompt_duration("de", "sms-failed") + prompt_duration("de", "fallback");
    assert!(
        gave_up.elapsed() + Duration::from_millis(500) >= told,
        "REFER {:?} after the last SMS try: too soon for the sms-failed and fallback prompts ({told:?})",
        gave_up.elapsed()
    );
    assert_refer_to(
        &refer,
        &format!("{}?X-Customer-Id={ERIKA}&X-Verified=no", rig.fallback),
    );
    complete_transfer(&mut uac, &refer);
    let row = single_audit(&rig);
    assert_eq!(row.outcome, "sms-failed", "audit row: {row:#?}");
    assert_eq!(
        row.customer_id.as_deref(),
        Some(ERIKA),
        "audit row: {row:#?}"
    );

    // One message, tried three times under one reference (the gateway de-duplicates by it).
    let posts = rig.sms.posts();
    assert_eq!(posts.len(), 3, "1 try + 2 retries expected: {posts:?}");
    let reference = posts[0].field("reference");
    assert!(
        posts.iter().all(|p| p.field("reference") == reference),
        "retries changed the reference: {posts:?}"
    );
    let pin = check_sms(&posts[0], ERIKA_MOBILE, "de");
    assert_pin_not_logged(&daemon, &pin);
}

/// 7a. The queue refuses the REFER (603): the plan's on_failure says goodbye and ivrd hangs up.
#[test]
fn refused_refer_says_goodbye_and_hangs_up() {
    let rig = Rig::new(200, free_udp_port());
    let daemon = rig.daemon("");
    let (mut uac, pin, refer) = verified_until_refer(&rig, &daemon);
    uac.respond(&refer, 603, "Decline");
    let refused = Instant::now();
    let bye = uac.expect_request("BYE", Duration::from_secs(6));
    assert_goodbye_before(refused);
    uac.respond(&bye, 200, "OK");
    uac.stop_media();
    assert!(
        !uac.unanswered(Duration::from_millis(500))
            .iter()
            .any(|m| sip_method(m) == Some("REFER")),
        "a second REFER after the failed one\n{}",
        uac.transcript()
    );
    let row = single_audit(&rig);
    assert_eq!(row.outcome, "transfer-failed", "audit row: {row:#?}");
    assert_eq!(
        row.customer_id.as_deref(),
        Some(ERIKA),
        "audit row: {row:#?}"
    );
    assert_eq!(
        row.detail.as_deref(),
        Some("end=completed"),
        "audit row: {row:#?}"
    );
    assert_pin_not_logged(&daemon, &pin);
}

/// 7b. The REFER is accepted but the target is busy (NOTIFY sipfrag 486): goodbye and BYE.
#[test]
fn busy_transfer_target_says_goodbye_and_hangs_up() {
    let rig = Rig::new(200, free_udp_port());
    let daemon = rig.daemon("");
    let (mut uac, pin, refer) = verified_until_refer(&rig, &daemon);
    uac.respond(&refer, 202, "Accepted");
    assert_eq!(
        uac.notify_sipfrag("SIP/2.0 100 Trying", "active;expires=60"),
        200
    );
    let busy = Instant::now();
    assert_eq!(
        uac.notify_sipfrag("SIP/2.0 486 Busy Here", "terminated;reason=noresource"),
        200
    );
    // The 486 ends the transfer at once: "goodbye" (1 s) and BYE, well before the 10 s
    // transfer timeout would.
    let bye = uac.expect_request("BYE", Duration::from_secs(6));
    assert_goodbye_before(busy);
    uac.respond(&bye, 200, "OK");
    uac.stop_media();
    let row = single_audit(&rig);
    assert_eq!(row.outcome, "transfer-failed", "audit row: {row:#?}");
    assert_eq!(
        row.customer_id.as_deref(),
        Some(ERIKA),
        "audit row: {row:#?}"
    );
    let transfer = row
        .transfer
        .as_ref()
        .expect("the transfer in the audit row");
    assert_eq!(
        (transfer.target.as_str(), transfer.status),
        (rig.queue.as_str(), Some(486)),
        "audit row: {row:#?}"
    );
    assert_pin_not_logged(&daemon, &pin);
}

/// A transfer accepted (202, NOTIFY 100) whose final NOTIFY never comes fails after
/// `[transfer] timeout_secs` and follows the plan's failure branch ("goodbye", BYE), as a
/// refused one does; the audit row says where the transfer went and how long it waited.
#[test]
fn a_transfer_without_a_final_notify_fails_after_the_timeout() {
    let rig = Rig::new(200, free_udp_port());
    let daemon = rig.daemon("[transfer]\ntimeout_secs = 2\n");
    let (mut uac, _pin, refer) = verified_until_refer(&rig, &daemon);
    uac.respond(&refer, 202, "Accepted");
    assert_eq!(
        uac.notify_sipfrag("SIP/2.0 100 Trying", "active;expires=60"),
        200
    );
    let accepted = Instant::now();
    let bye = uac.expect_request("BYE", Duration::from_secs(15));
    assert!(
        accepted.elapsed() >= Duration::from_secs(2),
        "BYE {:?} after the transfer was accepted, before its 2 s timeout",
        accepted.elapsed()
    );
    uac.respond(&bye, 200, "OK");
    uac.stop_media();
    let row = single_audit(&rig);
    assert_eq!(row.outcome, "transfer-failed", "audit row: {row:#?}");
    let transfer = row
        .transfer
        .as_ref()
        .expect("the transfer in the audit row");
    assert_eq!(transfer.target, rig.queue, "audit row: {row:#?}");
    assert_eq!(
        transfer.status,
        Some(100),
        "the last status reported: {row:#?}"
    );
    assert!(
        (1_900..6_000).contains(&transfer.ms),
        "the transfer took {} ms, expected about the 2 s timeout",
        transfer.ms
    );
}

/// The BYE after a failed transfer comes after the "goodbye" prompt (German for Erika), not
/// at once.
fn assert_goodbye_before(failed_at: Instant) {
    let goodbye = prompt_duration("de", "goodbye");
    assert!(
        failed_at.elapsed() + Duration::from_millis(300) >= goodbye,
        "BYE {:?} after the transfer failed: too soon for the goodbye prompt ({goodbye:?})",
        failed_at.elapsed()
    );
}

/// Per-caller SMS limits count the identity a trusted PBX asserts (RFC 3325
/// P-Asserted-Identity), not the From a caller chose: with `sms_per_caller = 2`, a third call
/// asserting the same caller gets no SMS though its From is new. A source that is not trusted
/// is counted by its address, whatever identity it asserts.
#[test]
fn the_caller_limit_counts_the_pbxs_asserted_identity_and_others_by_address() {
    let rig = Rig::new(200, free_udp_port());
    let daemon = rig.daemon(
        "[sip]\nuntrusted = \"allow\"\n[limits]\nsms_per_caller = 2\nsms_per_customer = 20\n",
    );
    let call = |ip: [u8; 4], from: &str, asserted: &str| -> RawUac {
        let opts = UacOptions {
            ip: std::net::IpAddr::from(ip),
            from_user: from.into(),
            headers: vec![(
                "P-Asserted-Identity".into(),
                format!("\"Caller\" <sip:{asserted}@pbx.example>"),
            )],
        };
        let mut uac = RawUac::call_with(daemon.sip_addr(), "verify", &opts);
        std::thread::sleep(Duration::from_millis(800));
        uac.info_digits(ERIKA, KEY_GAP);
        uac
    };
    let refused = |uac: &mut RawUac, calls: usize| {
        let refer = uac.expect_request("REFER", FLOW_TIMEOUT);
        assert_refer_to(
            &refer,
            &format!("{}?X-Customer-Id={ERIKA}&X-Verified=no", rig.fallback),
        );
        uac.bye();
        let rows = rig.wait_audit(calls, Duration::from_secs(15));
        assert_eq!(rows[0].outcome, "rate-limited", "audit row: {:#?}", rows[0]);
    };
    let sent = |uac: &mut RawUac, sms: usize| {
        rig.sms.wait_posts(sms, FLOW_TIMEOUT);
        uac.bye();
    };

    // From the trusted PBX (127.0.0.1): a new From each time, one asserted caller.
    sent(&mut call([127, 0, 0, 1], "+491111", "+4915100000001"), 1);
    sent(&mut call([127, 0, 0, 1], "+492222", "+4915100000001"), 2);
    refused(&mut call([127, 0, 0, 1], "+493333", "+4915100000001"), 3);
    assert_eq!(
        rig.sms.posts().len(),
        2,
        "a third SMS for one asserted caller"
    );
    // Another asserted caller has a limit of its own.
    sent(&mut call([127, 0, 0, 1], "+493333", "+4915100000002"), 3);

    // From an untrusted source (127.0.0.2): its assertions are ignored, its address counts.
    sent(&mut call([127, 0, 0, 2], "+494444", "+4915100000003"), 4);
    sent(&mut call([127, 0, 0, 2], "+495555", "+4915100000004"), 5);
    refused(&mut call([127, 0, 0, 2], "+496666", "+4915100000005"), 7);
    assert_eq!(
        rig.sms.posts().len(),
        5,
        "an untrusted source got a third SMS by asserting a new identity"
    );
}

/// Sends the gateway refused or never took (an outage: HTTP 500 every time) do not count
/// against the customer's quota: after more failed calls than `sms_per_customer`, the first
/// call once the gateway is back gets its PIN. (They used to count: the customer was locked out
/// of SMS for the window by an outage they had nothing to do with.)
#[test]
fn sends_that_never_went_out_do_not_use_up_the_quota() {
    let rig = Rig::new(500, free_udp_port());
    let daemon =
        rig.daemon("[sms]\nmax_retries = 0\n[limits]\nsms_per_customer = 2\nsms_per_caller = 2\n");
    for call in 1..=3 {
        let mut uac = call_and_enter_id(&daemon, ERIKA);
        rig.sms.wait_posts(call, FLOW_TIMEOUT);
        let refer = uac.expect_request("REFER", FLOW_TIMEOUT);
        complete_transfer(&mut uac, &refer);
        let rows = rig.wait_audit(call, Duration::from_secs(15));
        assert_eq!(rows[0].outcome, "sms-failed", "call {call}: {:#?}", rows[0]);
    }
    rig.sms.set_status(200);
    let mut uac = call_and_enter_id(&daemon, ERIKA);
    let posts = rig.sms.wait_posts(4, FLOW_TIMEOUT);
    let pin = check_sms(&posts[3], ERIKA_MOBILE, "de");
    uac.info_digits(&pin, KEY_GAP);
    let refer = uac.expect_request("REFER", FLOW_TIMEOUT);
    assert_refer_to(
        &refer,
        &format!("{}?X-Customer-Id={ERIKA}&X-Verified=yes", rig.queue),
    );
    complete_transfer(&mut uac, &refer);
    assert_eq!(daemon.log_lines("nothing was sent").len(), 3);
}

/// A second call for the same customer while the first PIN is valid sends that PIN again
/// (NIST SP 800-63B: one secret at a time; Twilio Verify does the same): the customer does
/// not end up with two codes, and someone typing their id cannot void the code they wait for.
#[test]
fn a_second_call_within_the_pins_validity_resends_the_same_pin() {
    let rig = Rig::new(200, free_udp_port());
    let daemon = rig.daemon("");

    let mut first = call_and_enter_id(&daemon, ERIKA);
    let posts = rig.sms.wait_posts(1, FLOW_TIMEOUT);
    let pin = check_sms(&posts[0], ERIKA_MOBILE, "de");
    assert_eq!(first.bye(), 200, "BYE of the first call");

    let mut second = call_and_enter_id(&daemon, ERIKA);
    let posts = rig.sms.wait_posts(2, FLOW_TIMEOUT);
    let again = check_sms(&posts[1], ERIKA_MOBILE, "de");
    assert_eq!(again, pin, "the resend carried another PIN");
    second.info_digits(&pin, KEY_GAP);
    let refer = second.expect_request("REFER", FLOW_TIMEOUT);
    assert_refer_to(
        &refer,
        &format!("{}?X-Customer-Id={ERIKA}&X-Verified=yes", rig.queue),
    );
    complete_transfer(&mut second, &refer);
    assert!(
        daemon.log().contains("resend=true"),
        "the log does not say the PIN was sent again"
    );
    assert_pin_not_logged(&daemon, &pin);
}

/// The fraud guard, end to end: each guard refuses with its audit outcome and its metric,
/// and the caller goes down the plan's `on_limited` branch (the fallback), never into
/// silence. The hourly budget (1: Erika's SMS spends it, John is refused), the region
/// allow-list (John's number is in Guernsey, only DE is allowed), and the breaker of a
/// prefix whose sends never led to a verified PIN.
#[test]
fn the_fraud_guard_refuses_with_its_own_outcome_and_metric() {
    for (guard, config, series) in [
        (
            "guard-budget",
            "sms_per_hour = 1",
            "ivrd_guard_refusals_total{guard=\"hour-budget\"}",
        ),
        (
            "guard-country",
            "countries = [\"DE\"]",
            "ivrd_guard_refusals_total{guard=\"country\"}",
        ),
        (
            "guard-breaker",
            "breaker_min_sends = 1\nbreaker_min_ratio = 1.0\nbreaker_prefix_digits = 2\nbreaker_grace_secs = 0",
            "ivrd_guard_refusals_total{guard=\"breaker\"}",
        ),
    ] {
        let rig = Rig::new(200, free_udp_port());
        let admin = format!("127.0.0.1:{}", free_sip_port());
        let daemon = rig.daemon(&format!(
            "[admin]\nlisten = \"{admin}\"\n\n[guard]\n{config}\n"
        ));
        let mut calls = 0;
        if guard != "guard-country" {
            // Erika's SMS goes out (it spends the budget, or it is the prefix's unverified
            // send); she hangs up without typing it.
            let mut uac = call_and_enter_id(&daemon, ERIKA);
            rig.sms.wait_posts(1, FLOW_TIMEOUT);
            assert_eq!(uac.bye(), 200);
            calls += 1;
        }
        // The breaker's prefix is the calling code (2 digits): John is +44, Erika +49; for
        // the breaker, Erika calls again.
        let who = if guard == "guard-breaker" {
            ERIKA
        } else {
            JOHN
        };
        let mut uac = call_and_enter_id(&daemon, who);
        let refer = uac.expect_request("REFER", FLOW_TIMEOUT);
        assert_refer_to(
            &refer,
            &format!("{}?X-Customer-Id={who}&X-Verified=no", rig.fallback),
        );
        complete_transfer(&mut uac, &refer);
        calls += 1;
        let rows = rig.wait_audit(calls, Duration::from_secs(15));
        assert_eq!(rows[0].outcome, guard, "audit row: {:#?}", rows[0]);
        assert_eq!(rows[0].customer_id.as_deref(), Some(who));
        let metrics = admin_get(&admin, "/metrics");
        assert_eq!(metric(&metrics, series), 1.0, "{guard}");
        assert_eq!(
            rig.sms.posts().len(),
            calls - 1,
            "{guard}: the refused call sent an SMS"
        );
        assert!(
            daemon.log().contains("fraud guard refused a PIN SMS"),
            "{guard}: not logged"
        );
    }
}
