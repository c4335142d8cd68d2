//! linphonec (Debian `linphone-cli`, liblinphone 5.1) as the caller of the verification flow:
//! it calls ivrd's verify plan, types the customer number and the PIN from the SMS, holds the
//! call and resumes it in the middle of the flow, and follows ivrd's REFER to the queue (a
//! SIPp UAS, tests/sipp/queue_uas.xml). How to run linphonec headless: tests/common/linphone.rs.
//!
//! What linphonec does on the wire (and this test checks):
//! - DTMF as RFC 2833/4733 telephone-events by default, one key a second;
//! - `pause` is a re-INVITE with `a=sendonly`, `resume` one with `a=sendrecv`; ivrd answers
//!   `recvonly` and `sendrecv`;
//! - on ivrd's REFER it first puts ivrd's call on hold (another re-INVITE, `a=sendonly`), then
//!   calls the Refer-To URI, and turns its URI headers (`?X-Customer-Id=..&X-Verified=..`)
//!   into header fields of that INVITE (RFC 3261 19.1.5), with a Referred-By.
//!
//! Headless (no sound card, no file to play) linphonec sends no audio, only its key presses,
//! and nothing at all while it holds the call. The hold lasts longer than ivrd's RTP timeout
//! (8 s here): the call must survive it (calls died 30 s after a hold: a caller's
//! `a=sendonly` did not pause the timeout, and a timeout already waiting when the hold came
//! fired anyway).
//!
//! Needs `linphonec` and `sipp`: run scripts/install-test-deps.sh.

mod common;

use common::linphone::Linphonec;
use common::verify::*;
use common::*;
use std::time::{Duration, Instant};

/// Longer than the RTP timeout the daemon gets below.
const HOLD: Duration = Duration::from_secs(10);
/// Above the longest gap between linphonec's key presses in the flow (it sends no audio):
/// the "verified" prompt (4.5 s in German) after the last PIN key.
const RTP_TIMEOUT_SECS: u64 = 8;

/// The RTP packets ivrd received so far, from its metrics page.
fn rtp_received(admin: &str) -> f64 {
    metric(
        &admin_get(admin, "/metrics"),
        "ivrd_rtp_packets_received_total",
    )
}

#[test]
fn linphonec_is_verified_through_a_hold_and_follows_the_refer_to_the_queue() {
    require_tool("sipp");
    require_tool("linphonec");
    let started = Instant::now();
    let queue_port = free_sip_port();
    let rig = Rig::new(200, queue_port);
    let admin = format!("127.0.0.1:{}", free_sip_port());
    let daemon = rig.daemon(&format!(
        "[media]\nrtp_timeout_secs = {RTP_TIMEOUT_SECS}\n[admin]\nlisten = \"{admin}\"\n"
    ));

    // The queue answers the transferred call; it must listen before the call starts.
    let queue_sipp = Sipp::new("queue_uas.xml", daemon.sip_addr())
        .local_port(queue_port)
        .timeout_secs(120);
    let queue = std::thread::spawn(move || queue_sipp.run());
    wait_udp_bound(queue_port, Duration::from_secs(10));

    let mut phone = Linphonec::start();
    phone.command(&format!("call sip:verify@{}", daemon.sip_addr()));
    phone.wait_for(
        "Media streams established with sip:verify@",
        Duration::from_secs(15),
    );

    // The customer number during the welcome (it allows barge-in).
    std::thread::sleep(Duration::from_millis(1000));
    phone.type_digits(ERIKA, KEY_GAP);
    let posts = rig.sms.wait_posts(1, FLOW_TIMEOUT);
    let pin = check_sms(&posts[0], ERIKA_MOBILE, "de");

    // Hold for longer than the RTP timeout, sending nothing, then resume and type the PIN.
    phone.command("pause");
    phone.wait_for("is now paused.", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(200));
    let held = rtp_received(&admin);
    std::thread::sleep(HOLD);
    let during_hold = rtp_received(&admin) - held;
    assert!(
        daemon.call_end_reasons().is_empty(),
        "the call ended during the hold: {:?}",
        daemon.call_end_reasons()
    );
    // The hold must really have been silent, or this test proves nothing about it.
    assert!(
        during_hold < 5.0,
        "linphonec sent {during_hold} RTP packets during the hold"
    );
    phone.command("resume");
    phone.wait_count(
        "Media streams established with sip:verify@",
        2,
        Duration::from_secs(10),
    );
    phone.type_digits(&pin, KEY_GAP);

    // linphonec follows the REFER: a second call, to the queue, and ivrd leaves the first.
    phone.wait_for("with <sip:queue@", FLOW_TIMEOUT);
    phone.wait_count(" connected.", 2, FLOW_TIMEOUT);
    let reasons = daemon.wait_call_ends(1, Duration::from_secs(20));
    assert_eq!(
        reasons[0], "transferred",
        "ivrd's call should end as transferred"
    );
    phone.wait_for("ended (", Duration::from_secs(10));

    let rows = rig.wait_audit(1, Duration::from_secs(15));
    // Hang up the queue call so the SIPp UAS completes.
    phone.command("terminate all");
    let run = queue.join().expect("queue SIPp thread");
    run.assert_ok();

    let row = &rows[0];
    assert_eq!(row.outcome, "verified", "audit row: {row:#?}");
    assert_eq!(
        row.customer_id.as_deref(),
        Some(ERIKA),
        "audit row: {row:#?}"
    );
    assert_eq!(
        row.dtmf_methods, "rfc4733",
        "linphonec's default DTMF method: {row:#?}"
    );
    assert_eq!(
        row.transfer.as_ref().map(|t| (t.target.as_str(), t.status)),
        Some((rig.queue.as_str(), Some(200))),
        "audit row: {row:#?}"
    );

    // What linphonec sent: the hold, the resume, and the hold before following the REFER.
    let messages = phone.sip_messages();
    let mut reinvites: Vec<&String> = messages
        .iter()
        .filter(|m| {
            m.starts_with("INVITE ")
                && header_value(m, "To", None).is_some_and(|t| t.contains("tag="))
        })
        .collect();
    // Once each, should one have been retransmitted.
    reinvites.dedup_by_key(|m| header_value(m, "CSeq", None));
    let directions: Vec<&str> = reinvites
        .iter()
        .map(|m| {
            ["a=sendonly", "a=inactive", "a=recvonly"]
                .into_iter()
                .find(|d| m.contains(d))
                .unwrap_or("a=sendrecv")
        })
        .collect();
    assert_eq!(
        directions,
        ["a=sendonly", "a=sendrecv", "a=sendonly"],
        "linphonec's re-INVITEs (pause, resume, hold before the transfer):\n{}",
        reinvites
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join("\n\n")
    );

    // The queue's INVITE: linphonec makes the Refer-To URI's headers header fields.
    let invite = run
        .received()
        .into_iter()
        .find(|m| m.text.starts_with("INVITE "))
        .unwrap_or_else(|| panic!("the queue got no INVITE\n{}", run.report()));
    let request_line = invite.text.lines().next().unwrap_or_default().to_string();
    eprintln!(
        "the queue's INVITE from linphonec: {request_line}\n  To: {:?}\n  X-Customer-Id: {:?}, X-Verified: {:?}, Referred-By: {:?}",
        invite.header("To"),
        invite.header("X-Customer-Id"),
        invite.header("X-Verified"),
        invite.header("Referred-By"),
    );
    assert_eq!(
        invite.header("X-Customer-Id").as_deref(),
        Some(ERIKA),
        "{}",
        invite.text
    );
    assert_eq!(
        invite.header("X-Verified").as_deref(),
        Some("yes"),
        "{}",
        invite.text
    );
    assert!(
        !request_line.contains('?'),
        "linphonec left URI headers in the Request-URI: {request_line}"
    );
    assert!(invite.header("Referred-By").is_some(), "{}", invite.text);

    assert_eq!(rig.sms.posts().len(), 1, "one SMS per verification");
    assert_pin_not_logged(&daemon, &pin);
    eprintln!(
        "ivrd received {during_hold} RTP packets during the {HOLD:?} hold; the test took {:?}",
        started.elapsed()
    );
    phone.quit();
}
