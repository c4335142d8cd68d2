//! Codes by voice call (issue 15): ivrd places the call through a trunk, a real baresip
//! answers it (auto-answer), and what baresip heard must hold the code's digits in order,
//! matched against the digit prompts ([`common::digits`]). The trunk is a real Kamailio that
//! challenges ivrd's INVITE with 407 (tests/kamailio/kamailio.cfg.in, `WITH_OUTBOUND`) and
//! answers busy (486), rejected (603) or relays to the callee by the dialled number; a callee
//! that never answers is cancelled at the ring timeout. Each outcome must reach the
//! verification (`delivery`), its status callback and the audit.

mod common;

use common::api::{Api, make_key};
use common::kamailio::{KAMAILIO_USER, Kamailio};
use common::verify::{Rig, toml_str};
use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const PASSWORD: &str = "trunk-secret-15";

/// baresip as the callee: it answers at once (`auto`) or rings until cancelled (`manual`).
fn callee(answer: &str) -> Baresip {
    Baresip::start_with(
        1,
        Family::V4,
        &BaresipExtras {
            account_params: format!(";answermode={answer}"),
            ..Default::default()
        },
    )
}

/// The daemon with the API and `[outbound]` through `trunk` (`IP:port`).
fn daemon(rig: &Rig, api_port: u16, outbound: &str) -> Daemon {
    rig.daemon(&format!(
        "[api]\nlisten = {}\n[outbound]\n{outbound}\n",
        toml_str(&format!("127.0.0.1:{api_port}"))
    ))
}

/// ivrd with the API and `[outbound]` through a Kamailio trunk that challenges the INVITE
/// (user ivrd, `password`), relaying answered calls to `phone`; ring timeout `ring` seconds.
fn through_kamailio(
    rig: &Rig,
    phone: &Baresip,
    password: &str,
    ring: u64,
) -> (Daemon, Kamailio, Api, String) {
    let kamailio_port = free_sip_port();
    let api_port = free_tcp_port();
    let daemon = daemon(
        rig,
        api_port,
        &format!(
            "proxy = \"127.0.0.1:{kamailio_port}\"\nusername = \"{KAMAILIO_USER}\"\n\
             password = \"{password}\"\nring_timeout_secs = {ring}\nmax_repeats = 0\n"
        ),
    );
    let kamailio =
        Kamailio::start_outbound(kamailio_port, daemon.sip_port(), phone.sip_port(), PASSWORD);
    let key = make_key(&rig.db_path(), "web");
    (daemon, kamailio, Api::new(api_port), key)
}

/// Calls out over TCP: ivrd opens a connection of its own to the trunk from its TCP
/// listener's address; the challenge, the answer, the in-dialog requests and the BYE all go
/// on it.
#[test]
fn a_code_call_over_tcp_goes_through_the_trunk() {
    let rig = Rig::new(200, free_udp_port());
    let mut phone = callee("auto");
    let kamailio_port = free_sip_port();
    let api_port = free_tcp_port();
    let daemon = daemon(
        &rig,
        api_port,
        &format!(
            "proxy = \"127.0.0.1:{kamailio_port}\"\ntransport = \"tcp\"\n\
             username = \"{KAMAILIO_USER}\"\npassword = \"{PASSWORD}\"\nmax_repeats = 0\n"
        ),
    );
    let kamailio =
        Kamailio::start_outbound(kamailio_port, daemon.sip_port(), phone.sip_port(), PASSWORD);
    let key = make_key(&rig.db_path(), "web");
    let api = Api::new(api_port);
    let id = start_call(&api, &key, "+4930123463");
    phone.wait_event("CALL_CLOSED", Duration::from_secs(60));
    let v = wait_delivery(&api, &key, &id, Duration::from_secs(10));
    assert_eq!(v["delivery"], "answered", "{v}");
    assert_eq!(kamailio.count("INVITE authenticated (user [ivrd])"), 1);
    assert!(
        kamailio.count("INVITE sip:+4930123463") >= 2
            && kamailio
                .trace()
                .iter()
                .filter(|l| l.starts_with("INVITE sip:+4930123463"))
                .all(|l| l.ends_with("over tcp")),
        "{}",
        kamailio.log()
    );
    let heard = code_heard(&phone);
    assert_eq!(heard.len(), 12, "{heard}");
    let (s, v) = api.check(&key, &id, &heard[..6]);
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    let row = voice_row(&rig, "+4930123463", "voice-answered");
    assert_eq!(row.transport.as_deref(), Some("TCP"));
}

/// Starts a verification by call to `to`; its id.
fn start_call(api: &Api, key: &str, to: &str) -> String {
    let (s, _, v) = api.start(key, json!({"to": to, "channel": "voice"}));
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["delivery"], "calling", "{v}");
    v["id"].as_str().unwrap().to_string()
}

/// The audit row of the call to `to` with `outcome`.
fn voice_row(rig: &Rig, to: &str, outcome: &str) -> ivrd::store::AuditRow {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = rig.audit();
        if let Some(row) = rows.iter().find(|r| r.dialed == to && r.outcome == outcome) {
            return row.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {outcome} row for {to}: {rows:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls the verification until its `delivery` is no longer `calling`.
fn wait_delivery(api: &Api, key: &str, id: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (s, _, v) = api.call("GET", &format!("/v1/verifications/{id}"), Some(key), None);
        assert_eq!(s, 200, "{v}");
        if v["delivery"] != "calling" {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "still calling after {timeout:?}: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The code in the verification's audit... is never anywhere: the test learns it from what
/// the callee heard, and checks it against the API.
fn code_heard(phone: &Baresip) -> String {
    let digits = common::digits::digits_heard(&phone.heard_wav(), "en");
    digits.iter().map(|(d, _)| *d).collect()
}

#[test]
fn a_code_read_by_a_call_straight_to_the_callee_verifies() {
    let rig = Rig::new(200, free_udp_port());
    let mut phone = callee("auto");
    let api_port = free_tcp_port();
    let daemon = daemon(
        &rig,
        api_port,
        &format!(
            "proxy = \"127.0.0.1:{}\"\nrequest_uri = \"sip:tester@127.0.0.1:{};n={{number}}\"\nreadings = 2\nmax_repeats = 0\n",
            phone.sip_port(),
            phone.sip_port()
        ),
    );
    let key = make_key(&rig.db_path(), "web");
    let api = Api::new(api_port);
    // A fixed line: `auto` calls it.
    let (s, _, v) = api.start(&key, json!({"to": "+4930123456", "channel": "auto"}));
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["channel"], "voice");
    assert_eq!(v["delivery"], "calling");
    let id = v["id"].as_str().unwrap().to_string();
    phone.wait_event("CALL_ESTABLISHED", Duration::from_secs(10));
    phone.wait_event("CALL_CLOSED", Duration::from_secs(60));
    let v = wait_delivery(&api, &key, &id, Duration::from_secs(10));
    assert_eq!(v["delivery"], "answered", "{v}");
    let heard = code_heard(&phone);
    eprintln!("baresip heard the digits {heard}");
    assert_eq!(heard.len(), 12, "the 6-digit code read twice: {heard}");
    let (first, second) = heard.split_at(6);
    assert_eq!(first, second, "both readings give the same code");
    let (s, v) = api.check(&key, &id, first);
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    // Nothing of the code in the log.
    common::verify::assert_pin_not_logged(&daemon, first);
    let row = rig
        .audit()
        .into_iter()
        .find(|r| r.outcome == "voice-answered")
        .expect("an audit row for the call");
    assert_eq!(row.dialed, "+4930123456");
    assert!(
        row.detail
            .as_deref()
            .is_some_and(|d| d.contains(&id) && d.contains("read 2x")),
        "{row:?}"
    );
}

/// The IVR's `send_pin` with `channel = "voice"` (examples/dialplans/call-pin.toml): a caller
/// types their customer number, ivrd calls the mobile on file (baresip) and reads the PIN
/// there, the caller types what was heard and is transferred to the queue as verified.
#[test]
fn an_ivr_caller_gets_the_pin_by_a_call_to_the_mobile_on_file() {
    let rig = Rig::new(200, free_udp_port());
    let mut phone = callee("auto");
    let plans = rig.state.path().join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    std::fs::copy(
        common::verify::manifest_dir().join("examples/dialplans/call-pin.toml"),
        plans.join("call-pin.toml"),
    )
    .unwrap();
    let daemon = rig.daemon(&format!(
        "[dialplans]\ndir = {}\ndefault = \"call-pin\"\n[outbound]\nproxy = \"127.0.0.1:{}\"\n\
         request_uri = \"sip:tester@127.0.0.1:{};n={{number}}\"\nmax_repeats = 0\n",
        toml_str(&plans.display().to_string()),
        phone.sip_port(),
        phone.sip_port()
    ));
    let mut uac = RawUac::call(daemon.sip_addr(), "201");
    std::thread::sleep(Duration::from_millis(800));
    // John Doe, +447911123456 on file (examples/customers.csv).
    uac.info_digits("234567", common::verify::KEY_GAP);
    phone.wait_event("CALL_ESTABLISHED", Duration::from_secs(15));
    phone.wait_event("CALL_CLOSED", Duration::from_secs(60));
    let heard = code_heard(&phone);
    eprintln!("the mobile heard {heard}");
    assert_eq!(heard.len(), 8, "the 4-digit PIN read twice: {heard}");
    assert_eq!(heard[..4], heard[4..]);
    uac.info_digits(&heard[..4], common::verify::KEY_GAP);
    let refer = uac.expect_request("REFER", common::verify::FLOW_TIMEOUT);
    let refer_to = header_value(&refer, "Refer-To", Some("r")).unwrap_or_default();
    assert!(
        refer_to.contains(&rig.queue) && refer_to.contains("X-Customer-Id=234567"),
        "{refer_to}"
    );
    assert!(refer_to.contains("X-Verified=yes"), "{refer_to}");
    uac.respond(&refer, 603, "Declined");
    common::verify::assert_pin_not_logged(&daemon, &heard[..4]);
    // The call to the mobile has its audit row, next to the caller's.
    let rows = rig.wait_audit(1, Duration::from_secs(10));
    let row = rows
        .iter()
        .find(|r| r.outcome == "voice-answered")
        .unwrap_or_else(|| panic!("no voice-answered row in {rows:#?}"));
    assert_eq!(row.dialed, "+447911123456");
    assert_eq!(row.customer_id.as_deref(), Some("234567"));
}

/// Through a trunk that challenges the INVITE (407): the call is authenticated and answered
/// and the code heard verifies; a busy callee (486), one who declines (603) and a number the
/// trunk does not know (404) each end their attempt with their delivery, status callback
/// field and audit row; and with the wrong password the attempt fails without a call.
#[test]
fn through_a_challenging_trunk_calls_are_answered_busy_rejected_or_failed() {
    let rig = Rig::new(200, free_udp_port());
    let mut phone = callee("auto");
    let (daemon, mut kamailio, api, key) = through_kamailio(&rig, &phone, PASSWORD, 30);

    let id = start_call(&api, &key, "+4930123456");
    phone.wait_event("CALL_CLOSED", Duration::from_secs(60));
    let v = wait_delivery(&api, &key, &id, Duration::from_secs(10));
    assert_eq!(v["delivery"], "answered", "{v}");
    assert_eq!(kamailio.count("INVITE challenged"), 1, "{}", kamailio.log());
    assert_eq!(
        kamailio.count("INVITE authenticated (user [ivrd])"),
        1,
        "{}",
        kamailio.log()
    );
    let heard = code_heard(&phone);
    eprintln!("the callee heard {heard}");
    assert_eq!(heard.len(), 12, "{heard}");
    assert_eq!(heard[..6], heard[6..]);
    let (s, v) = api.check(&key, &id, &heard[..6]);
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    common::verify::assert_pin_not_logged(&daemon, &heard[..6]);

    for (to, delivery, status) in [
        ("+4930123486", "busy", 486),
        ("+4930123603", "rejected", 603),
        ("+4930123404", "failed", 404),
    ] {
        let id = start_call(&api, &key, to);
        let v = wait_delivery(&api, &key, &id, Duration::from_secs(15));
        assert_eq!(v["delivery"], delivery, "{to}: {v}");
        // The code is still good: the client may resend, by SMS or another call.
        assert_eq!(v["status"], "pending", "{v}");
        let row = voice_row(&rig, to, &format!("voice-{delivery}"));
        assert!(
            row.detail
                .as_deref()
                .is_some_and(|d| d.contains(&format!("sip_status={status}"))),
            "{row:?}"
        );
    }
    assert_eq!(
        kamailio.count("INVITE authenticated (user [ivrd])"),
        4,
        "{}",
        kamailio.log()
    );

    // A mobile that is busy: the client resends by SMS, the code comes in the text, and it
    // is the code of the same verification.
    let id = start_call(&api, &key, "+4915112345486");
    let v = wait_delivery(&api, &key, &id, Duration::from_secs(15));
    assert_eq!(v["delivery"], "busy", "{v}");
    let (s, _, v) = api.call(
        "POST",
        &format!("/v1/verifications/{id}/resend"),
        Some(&key),
        Some(json!({"channel": "sms"})),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["channel"].as_str(), v["delivery"].as_str()),
        (Some("sms"), Some("sent"))
    );
    assert_eq!(v["sends"], 2, "{v}");
    let posts = rig.sms.wait_posts(1, Duration::from_secs(10));
    assert_eq!(posts[0].field("to"), "+4915112345486");
    let code = common::verify::pin_in(&posts[0].text(), 6);
    let (s, v) = api.check(&key, &id, &code);
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");

    // The trunk's password changes under ivrd: the retry with credentials is challenged
    // again, and the attempt fails (once: no loop of retries).
    kamailio.restart_with_password("changed-elsewhere");
    let before = kamailio.count("INVITE challenged");
    let id = start_call(&api, &key, "+4930123457");
    let v = wait_delivery(&api, &key, &id, Duration::from_secs(15));
    assert_eq!(v["delivery"], "failed", "{v}");
    let row = voice_row(&rig, "+4930123457", "voice-failed");
    assert!(
        row.detail
            .as_deref()
            .is_some_and(|d| d.contains("refused our credentials")),
        "{row:?}"
    );
    assert_eq!(kamailio.count("INVITE challenged") - before, 2);
}

/// A callee whose phone rings and rings: ivrd CANCELs at the ring timeout, the trunk relays
/// it, the callee answers 487, and the attempt ends as no answer.
#[test]
fn a_call_nobody_answers_is_cancelled_at_the_ring_timeout() {
    let rig = Rig::new(200, free_udp_port());
    let mut phone = callee("manual");
    let (_daemon, kamailio, api, key) = through_kamailio(&rig, &phone, PASSWORD, 5);
    let started = Instant::now();
    let id = start_call(&api, &key, "+4930123458");
    phone.wait_event("CALL_INCOMING", Duration::from_secs(10));
    let v = wait_delivery(&api, &key, &id, Duration::from_secs(20));
    let took = started.elapsed();
    assert_eq!(v["delivery"], "no-answer", "{v}");
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(9),
        "cancelled after {took:?}, the ring timeout is 5 s"
    );
    kamailio.wait_count("CANCEL sip:", 1, Duration::from_secs(5));
    kamailio.wait_count("reply 487", 1, Duration::from_secs(5));
    phone.wait_event("CALL_CLOSED", Duration::from_secs(10));
    let row = voice_row(&rig, "+4930123458", "voice-no-answer");
    assert!(
        row.detail
            .as_deref()
            .is_some_and(|d| d.contains("no answer within 5 s")),
        "{row:?}"
    );
}

/// Calls out over TLS with SRTP: ivrd connects to the trunk (Kamailio over TLS, checking its
/// certificate against `[tls] server_ca` and presenting its own), offers SRTP with SDES keys
/// in the TLS-protected SDP (`[media] srtp = "required"`), the callee (baresip, `srtp-mand`)
/// answers SRTP, and the code it decrypted and heard verifies. The audit row names the suite.
#[test]
fn a_code_call_over_tls_carries_srtp_to_the_callee() {
    let rig = Rig::new(200, free_udp_port());
    let files = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let (cert, key_file, ca) = pki.write_server(files.path());
    let mut phone = Baresip::start_with(
        1,
        Family::V4,
        &BaresipExtras {
            config: "\nmodule\t\t\tsrtp.so\n".into(),
            account_params: ";answermode=auto;mediaenc=srtp-mand".into(),
        },
    );
    let kamailio = Kamailio::start_outbound_tls(free_sip_port(), phone.sip_port(), PASSWORD, &pki);
    let api_port = free_tcp_port();
    let tls_port = free_sip_port();
    let daemon = rig.daemon(&format!(
        "[sip]\ntls = [\"127.0.0.1:{tls_port}\"]\n\
         [tls]\ncert = {cert}\nkey = {key}\nserver_ca = {ca}\n\
         [media]\nsrtp = \"required\"\n\
         [api]\nlisten = \"127.0.0.1:{api_port}\"\n\
         [outbound]\nproxy = \"{proxy}\"\ntransport = \"tls\"\nusername = \"{KAMAILIO_USER}\"\n\
         password = \"{PASSWORD}\"\nmax_repeats = 0\n",
        cert = toml_str(&cert.display().to_string()),
        key = toml_str(&key_file.display().to_string()),
        ca = toml_str(&ca.display().to_string()),
        proxy = kamailio.tls_addr(),
    ));
    let key = make_key(&rig.db_path(), "web");
    let api = Api::new(api_port);
    let id = start_call(&api, &key, "+4930123459");
    phone.wait_event("CALL_ESTABLISHED", Duration::from_secs(15));
    phone.wait_event("CALL_CLOSED", Duration::from_secs(60));
    let v = wait_delivery(&api, &key, &id, Duration::from_secs(10));
    assert_eq!(v["delivery"], "answered", "{v}");
    // Kamailio saw the INVITE over TLS and authenticated it.
    assert_eq!(
        kamailio.count("INVITE authenticated (user [ivrd])"),
        1,
        "{}",
        kamailio.log()
    );
    assert!(
        kamailio.count("over tls") >= 1,
        "no message over TLS at Kamailio:\n{}",
        kamailio.log()
    );
    let heard = code_heard(&phone);
    eprintln!("the callee heard {heard} over SRTP");
    assert_eq!(heard.len(), 12, "{heard}\n{}", phone.log());
    let (s, v) = api.check(&key, &id, &heard[..6]);
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    let row = voice_row(&rig, "+4930123459", "voice-answered");
    assert_eq!(row.transport.as_deref(), Some("TLS"), "{row:?}");
    assert!(
        row.srtp
            .as_deref()
            .is_some_and(|s| s.starts_with("AES_CM_128_HMAC_SHA1")),
        "{row:?}"
    );
    drop(daemon);
}

/// `key_first` (Twilio's `DtmfInputRequired`): the code is read only after the callee presses
/// a key (an RFC 4733 event from baresip on our outbound call); a callee that presses none,
/// as an answering machine would, hears "press any key" twice and goodbye, and no digit of
/// the code.
#[test]
fn with_key_first_the_code_waits_for_a_key_and_a_voicemail_hears_none() {
    let rig = Rig::new(200, free_udp_port());
    let mut phone = callee("auto");
    let api_port = free_tcp_port();
    let _daemon = daemon(
        &rig,
        api_port,
        &format!(
            "proxy = \"127.0.0.1:{}\"\nrequest_uri = \"sip:tester@127.0.0.1:{};n={{number}}\"\n\
             key_first = true\nmax_repeats = 0\n",
            phone.sip_port(),
            phone.sip_port()
        ),
    );
    let key = make_key(&rig.db_path(), "web");
    let api = Api::new(api_port);

    // Nobody presses anything: no code.
    let id = start_call(&api, &key, "+4930123461");
    phone.wait_event("CALL_ESTABLISHED", Duration::from_secs(10));
    phone.wait_event("CALL_CLOSED", Duration::from_secs(60));
    let v = wait_delivery(&api, &key, &id, Duration::from_secs(10));
    assert_eq!(v["delivery"], "answered", "{v}");
    assert_eq!(code_heard(&phone), "", "a code was read without a key");
    let row = voice_row(&rig, "+4930123461", "voice-answered");
    assert!(
        row.detail
            .as_deref()
            .is_some_and(|d| d.contains("code=no key")),
        "{row:?}"
    );

    // A person presses 5 after the question: the code, twice.
    std::fs::remove_dir_all(phone.dump_dir()).unwrap();
    std::fs::create_dir(phone.dump_dir()).unwrap();
    let id = start_call(&api, &key, "+4930123462");
    phone.wait_events("CALL_ESTABLISHED", 2, Duration::from_secs(10));
    std::thread::sleep(prompt_duration("en", "voice-press-key") + Duration::from_millis(300));
    phone.command("sndcode", "5");
    phone.wait_events("CALL_CLOSED", 2, Duration::from_secs(60));
    let v = wait_delivery(&api, &key, &id, Duration::from_secs(10));
    assert_eq!(v["delivery"], "answered", "{v}");
    let heard = code_heard(&phone);
    assert_eq!(heard.len(), 12, "{heard}");
    let (s, v) = api.check(&key, &id, &heard[..6]);
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
}
