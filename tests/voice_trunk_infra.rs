//! The outbound-trunk test infrastructure without ivrd: Kamailio in `WITH_OUTBOUND` mode
//! ([`Kamailio::start_outbound`]) between a SIPp UAC that stands in for ivrd (bound to the port
//! Kamailio takes for ivrd's) and a headless baresip callee.
//!
//! What it pins down:
//! - Kamailio challenges the INVITE with 407 (realm pbx.test, qop=auth), challenges a wrong
//!   password again, refuses another user with 403, answers numbers ending in 486/603/404
//!   itself, and relays an authenticated call to baresip (record-routed: ACK and BYE go
//!   through it);
//! - baresip 1.0 with `;answermode=auto` on its account answers at once (180 Ringing, then
//!   at once `200 Answering`); with `;answermode=manual` (also its default) it rings (180) and
//!   never answers, and a CANCEL ends the call with 487 (events: CALL_INCOMING, CALL_CLOSED).
//!
//! The SIPp scenarios are written here, into a temporary directory, since only this file uses
//! them.

mod common;

use common::kamailio::{KAMAILIO_REALM, KAMAILIO_USER, Kamailio};
use common::*;
use std::time::Duration;

const PASSWORD: &str = "trunk-secret";

/// The first INVITE (no credentials), its 407 and the ACK for it; then the INVITE again, CSeq
/// 2, with credentials of `user`/`password` for the challenge (SIPp's `[authentication]`, a
/// Proxy-Authorization for a 407, qop=auth). `[user]` is the number called (`-key user`).
fn challenged_invite(user: &str, password: &str) -> String {
    format!(
        r#"
  <send retrans="500">
    <![CDATA[

      INVITE sip:[user]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: ivrd <sip:ivrd@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[user]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:ivrd@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

{SDP}
    ]]>
  </send>

  <recv response="100" optional="true"/>
  <recv response="407" auth="true">
    <action>
      <ereg regexp='realm="{KAMAILIO_REALM}".*qop="auth"' search_in="hdr" header="Proxy-Authenticate:" check_it="true" assign_to="challenge"/>
    </action>
  </recv>

  <send>
    <![CDATA[

      ACK sip:[user]@[remote_ip]:[remote_port] SIP/2.0
      [last_Via:]
      [last_From:]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>

  <send retrans="500">
    <![CDATA[

      INVITE sip:[user]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: ivrd <sip:ivrd@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[user]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 2 INVITE
      Contact: <sip:ivrd@[local_ip]:[local_port]>
      [authentication username={user} password={password}]
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

{SDP}
    ]]>
  </send>

  <recv response="100" optional="true"/>
"#
    )
}

const SDP: &str = "      v=0
      o=ivrd 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-15
      a=ptime:20
      a=sendrecv
";

fn scenario(name: &str, body: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="{name}">
{body}
  <Reference variables="challenge"/>
</scenario>
"#
    )
    .replace("{SDP}", SDP)
}

/// The INVITE passes, the callee answers; ACK and BYE follow the Record-Route.
fn answered_call() -> String {
    let body = challenged_invite(KAMAILIO_USER, PASSWORD)
        + r#"
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true"/>

  <send>
    <![CDATA[

      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: ivrd <sip:ivrd@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      [routes]
      Call-ID: [call_id]
      CSeq: 2 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>

  <pause milliseconds="500"/>

  <send retrans="500">
    <![CDATA[

      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: ivrd <sip:ivrd@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      [routes]
      Call-ID: [call_id]
      CSeq: 3 BYE
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>

  <recv response="200" crlf="true"/>
"#;
    scenario("outbound call answered", &body)
}

/// The INVITE with credentials ends with `code` (407 again, 403, 486, 603, 404), ACKed.
fn refused_call(user: &str, password: &str, code: u16) -> String {
    let body = challenged_invite(user, password)
        + &format!(
            r#"
  <recv response="{code}"/>

  <send>
    <![CDATA[

      ACK sip:[user]@[remote_ip]:[remote_port] SIP/2.0
      [last_Via:]
      [last_From:]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 2 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>

  <timewait milliseconds="500"/>
"#
        );
    scenario("outbound call refused", &body)
}

/// The callee rings (180, no answer); the caller cancels: 200 for the CANCEL, 487 for the
/// INVITE, ACKed.
fn cancelled_call() -> String {
    let body = challenged_invite(KAMAILIO_USER, PASSWORD)
        + r#"
  <recv response="180"/>
  <pause milliseconds="1500"/>

  <send>
    <![CDATA[

      CANCEL sip:[user]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-4];rport
      From: ivrd <sip:ivrd@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[user]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 2 CANCEL
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>

  <recv response="200"/>
  <recv response="487"/>

  <send>
    <![CDATA[

      ACK sip:[user]@[remote_ip]:[remote_port] SIP/2.0
      [last_Via:]
      [last_From:]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 2 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>

  <timewait milliseconds="500"/>
"#;
    scenario("outbound call cancelled", &body)
}

/// Runs `xml` from the port Kamailio takes for ivrd's, calling `number`.
fn run(kamailio: &Kamailio, ivrd_port: u16, xml: &str, number: &str) -> SippRun {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("scenario.xml");
    std::fs::write(&path, xml).expect("write scenario");
    Sipp::new(&path.display().to_string(), kamailio.addr())
        .local_port(ivrd_port)
        .key("user", number)
        .timeout_secs(10)
        .run()
}

fn callee(answermode: &str) -> Baresip {
    Baresip::start_with(
        1,
        Family::V4,
        &BaresipExtras {
            account_params: format!(";answermode={answermode}"),
            ..Default::default()
        },
    )
}

/// An authenticated call reaches baresip, which answers it by itself; ACK and BYE go through
/// Kamailio. A wrong password is challenged again, another user refused, and numbers ending in
/// 486, 603 and 404 are answered by Kamailio without reaching the callee.
#[test]
fn trunk_challenges_and_relays_to_an_auto_answering_callee() {
    let mut phone = callee("auto");
    let ivrd_port = free_sip_port();
    let kamailio = Kamailio::start_outbound(free_sip_port(), ivrd_port, phone.sip_port(), PASSWORD);

    let call = run(&kamailio, ivrd_port, &answered_call(), "+4915112345678");
    call.assert_ok();
    let established = phone.wait_event("CALL_ESTABLISHED", Duration::from_secs(5));
    phone.wait_event("CALL_CLOSED", Duration::from_secs(5));
    eprintln!("baresip: {established}");
    let statuses: Vec<u16> = call.received().iter().filter_map(|m| m.status()).collect();
    eprintln!("SIPp received {statuses:?}");
    // baresip rings for an instant even when it answers by itself.
    assert_eq!(
        statuses,
        [407, 100, 180, 200, 200],
        "expected 407, then 100, 180, 200 for the INVITE and 200 for the BYE"
    );
    kamailio.wait_count(
        "INVITE challenged (credentials of user [",
        1,
        Duration::from_secs(2),
    );
    kamailio.wait_count(
        &format!("INVITE authenticated (user [{KAMAILIO_USER}])"),
        1,
        Duration::from_secs(2),
    );
    kamailio.wait_count(
        "outbound call to [+4915112345678]",
        1,
        Duration::from_secs(2),
    );
    let callee_reply = format!(
        "reply 200 Answering to INVITE from 127.0.0.1:{}",
        phone.sip_port()
    );
    kamailio.wait_count(&callee_reply, 1, Duration::from_secs(2));
    kamailio.wait_count("in-dialog ACK", 1, Duration::from_secs(2));
    kamailio.wait_count("in-dialog BYE", 1, Duration::from_secs(2));

    // A wrong password: challenged again, never relayed.
    let bad = run(
        &kamailio,
        ivrd_port,
        &refused_call(KAMAILIO_USER, "wrong", 407),
        "+4915112345678",
    );
    bad.assert_ok();
    kamailio.wait_count(
        &format!("INVITE challenged (credentials of user [{KAMAILIO_USER}])"),
        1,
        Duration::from_secs(2),
    );
    // Another user: 403.
    let other = run(
        &kamailio,
        ivrd_port,
        &refused_call("mallory", PASSWORD, 403),
        "+4915112345678",
    );
    other.assert_ok();
    kamailio.wait_count("INVITE refused: user [mallory]", 1, Duration::from_secs(2));
    // Numbers the trunk refuses itself.
    for code in [486, 603, 404] {
        let number = format!("+49151000{code}");
        let refused = run(
            &kamailio,
            ivrd_port,
            &refused_call(KAMAILIO_USER, PASSWORD, code),
            &number,
        );
        refused.assert_ok();
        kamailio.wait_count(
            &format!("outbound call to [{number}]"),
            1,
            Duration::from_secs(2),
        );
    }
    assert_eq!(
        kamailio.count(&format!("INVITE authenticated (user [{KAMAILIO_USER}])")),
        4,
        "{}",
        kamailio.trace().join("\n")
    );
    assert_eq!(
        kamailio.count("outbound call to ["),
        4,
        "{}",
        kamailio.trace().join("\n")
    );
    phone.poll_events(Duration::from_millis(200));
    // (An auto-answered call sends no CALL_INCOMING, only CALL_ESTABLISHED.)
    assert_eq!(
        phone.count_events("CALL_ESTABLISHED") + phone.count_events("CALL_INCOMING"),
        1,
        "a refused call reached baresip: {:#?}",
        phone.events
    );
}

/// baresip with `;answermode=manual` rings (180) and never answers; the caller's CANCEL,
/// relayed by Kamailio, ends the call with 487.
#[test]
fn manual_answer_callee_rings_and_a_cancel_gets_487() {
    let mut phone = callee("manual");
    let ivrd_port = free_sip_port();
    let kamailio = Kamailio::start_outbound(free_sip_port(), ivrd_port, phone.sip_port(), PASSWORD);

    let call = run(&kamailio, ivrd_port, &cancelled_call(), "+4915112345678");
    call.assert_ok();
    let statuses: Vec<u16> = call.received().iter().filter_map(|m| m.status()).collect();
    eprintln!("SIPp received {statuses:?}");
    // baresip reports the call as CALL_INCOMING (CALL_RINGING is for its own outgoing
    // calls), and the CANCEL closes it, oddly with "Connection reset by peer" as the reason.
    phone.wait_event("CALL_INCOMING", Duration::from_secs(2));
    phone.wait_event("CALL_CLOSED", Duration::from_secs(5));
    assert_eq!(
        phone.count_events("CALL_ESTABLISHED"),
        0,
        "{:#?}",
        phone.events
    );
    let callee = format!("from 127.0.0.1:{}", phone.sip_port());
    kamailio.wait_count(
        &format!("reply 180 Ringing to INVITE {callee}"),
        1,
        Duration::from_secs(2),
    );
    kamailio.wait_count("CANCEL", 1, Duration::from_secs(2));
    kamailio.wait_count(
        &format!("reply 487 Request Terminated to INVITE {callee}"),
        1,
        Duration::from_secs(2),
    );
}
