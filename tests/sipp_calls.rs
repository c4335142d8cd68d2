//! SIP behaviour of `ivrd` checked from the caller's side: SIPp scenarios in tests/sipp/ and
//! hand-made messages over UDP/TCP. Each test starts its own daemon with the config it needs.
//!
//! Needs `sipp` (Debian package sip-tester, which also ships the RFC 2833 pcaps): run
//! scripts/install-test-deps.sh. A missing tool fails the tests; nothing is skipped.

mod common;

use common::*;
use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

/// Normalised `call ended` reasons (see `Daemon::call_end_reasons`) that mean "the caller sent
/// BYE": ivrd logs `reason=caller-hangup`; `caller-bye` or `remote-bye` would do as well.
fn is_caller_bye(reason: &str) -> bool {
    ["caller", "remote", "peer"]
        .iter()
        .any(|w| reason.contains(w))
        && (reason.contains("bye") || reason.contains("hangup"))
}

/// Where SIPp finds the RFC 2833 pcaps (shipped by Debian's sip-tester package).
const PCAP_DIR: &str = "/usr/share/sip-tester";

fn require_pcaps() {
    for digit in ["1", "2", "3", "pound"] {
        let pcap = Path::new(PCAP_DIR).join(format!("dtmf_2833_{digit}.pcap"));
        assert!(
            pcap.is_file(),
            "{} not found: run scripts/install-test-deps.sh (package sip-tester)",
            pcap.display()
        );
    }
}

/// How long to wait before sending digits: past the welcome prompt, so that a daemon which
/// flushes type-ahead during the welcome still hears them (they land in the barge-in prompt).
fn welcome_wait() -> Duration {
    prompt_duration("en", "demo-welcome") + Duration::from_millis(700)
}

#[test]
fn call_with_caller_bye() {
    let daemon = Daemon::start("");
    let run = Sipp::new("uac_call.xml", daemon.sip_addr()).run();
    run.assert_ok();

    // RFC 3581: our INVITE's Via carries `rport`, so every response must fill it in.
    let ok = run
        .received()
        .into_iter()
        .find(|m| m.status() == Some(200) && m.cseq_method().as_deref() == Some("INVITE"))
        .expect("a 200 for the INVITE");
    let via = ok.header("Via").unwrap_or_default();
    assert!(
        field_value(&via.replace(';', " "), "rport").is_some_and(|p| p.parse::<u16>().is_ok()),
        "200 Via lacks rport=<port>: {via}"
    );

    let reasons = daemon.wait_call_ends(1, Duration::from_secs(5));
    assert!(
        is_caller_bye(&reasons[0]),
        "call ended with reason {:?}, expected a caller-BYE reason",
        reasons[0]
    );
}

#[test]
fn call_over_tcp() {
    let daemon = Daemon::start("");
    let run = Sipp::new("uac_call.xml", daemon.sip_addr()).tcp().run();
    run.assert_ok();
    let reasons = daemon.wait_call_ends(1, Duration::from_secs(5));
    assert!(is_caller_bye(&reasons[0]), "reason {:?}", reasons[0]);
}

#[test]
fn ivrd_hangs_up_after_last_round() {
    let daemon = Daemon::start("[demo]\nrounds = 1\nfirst_digit_timeout_ms = 500\n");
    let run = Sipp::new("uac_wait_bye.xml", daemon.sip_addr())
        .timeout_secs(60)
        .run();
    run.assert_ok();
    assert!(
        daemon.wait_for_log("no input", Duration::from_secs(2)),
        "expected a `no input` line for the silent round"
    );
    let reasons = daemon.wait_call_ends(1, Duration::from_secs(5));
    assert!(
        !is_caller_bye(&reasons[0]),
        "ivrd sent the BYE, yet the reason is {:?}",
        reasons[0]
    );
}

#[test]
fn cancel_before_answer() {
    let daemon = Daemon::start("[sip]\nring_ms = 5000\n");
    let run = Sipp::new("uac_cancel.xml", daemon.sip_addr()).run();
    run.assert_ok();
    let received = run.received();
    assert!(
        received.iter().any(|m| m.status() == Some(100)),
        "no 100 Trying before the 180\n{}",
        run.report()
    );
    assert!(
        !received
            .iter()
            .any(|m| m.status() == Some(200) && m.cseq_method().as_deref() == Some("INVITE")),
        "the cancelled INVITE was answered 200\n{}",
        run.report()
    );
    let reasons = daemon.wait_call_ends(1, Duration::from_secs(5));
    assert!(
        reasons[0].contains("cancel"),
        "reason {:?}, expected a CANCEL reason",
        reasons[0]
    );
}

#[test]
fn missing_ack_retransmits_200_then_drops_the_call_quietly() {
    const T1_MS: f64 = 100.0;
    // Default ACK wait: 16*T1 = 1.6 s.
    let daemon = Daemon::start("[sip]\nt1_ms = 100\n");
    let run = Sipp::new("uac_no_ack.xml", daemon.sip_addr()).run();
    run.assert_ok();

    let received = run.received();
    let oks: Vec<f64> = received
        .iter()
        .filter(|m| m.status() == Some(200) && m.cseq_method().as_deref() == Some("INVITE"))
        .map(|m| m.at)
        .collect();
    assert!(
        !received.iter().any(|m| m.text.starts_with("BYE ")),
        "an unconfirmed dialog got a BYE\n{}",
        run.report()
    );

    // Sent at 0, T1, 3T1, 7T1, 15T1, then the wait ends at 16*T1: five copies. Allow for
    // scheduling slack but insist on several, backing off.
    assert!(
        (4..=6).contains(&oks.len()),
        "expected 4..=6 copies of the 200 within 16*T1, got {}: {oks:?}",
        oks.len()
    );
    let gaps: Vec<f64> = oks.windows(2).map(|w| (w[1] - w[0]) * 1000.0).collect();
    assert!(
        gaps[0] > 0.5 * T1_MS && gaps[0] < 3.0 * T1_MS,
        "first retransmission after {:.0} ms, expected about T1 = {T1_MS} ms ({gaps:?})",
        gaps[0]
    );
    let last = gaps[gaps.len() - 1];
    assert!(
        last > 2.5 * gaps[0],
        "retransmission interval does not back off (gaps in ms: {gaps:?})"
    );
    let span_ms = (oks[oks.len() - 1] - oks[0]) * 1000.0;
    assert!(
        span_ms < 16.0 * T1_MS,
        "200s went on for {span_ms:.0} ms, past the 16*T1 ACK wait"
    );

    let reasons = daemon.wait_call_ends(1, Duration::from_secs(5));
    assert!(
        reasons[0].contains("ack"),
        "reason {:?}, expected an ACK-timeout reason",
        reasons[0]
    );
}

#[test]
fn options_out_of_dialog() {
    let daemon = Daemon::start("");
    Sipp::new("options_out_of_dialog.xml", daemon.sip_addr())
        .run()
        .assert_ok();
}

#[test]
fn options_in_dialog() {
    let daemon = Daemon::start("");
    Sipp::new("options_in_dialog.xml", daemon.sip_addr())
        .run()
        .assert_ok();
    let reasons = daemon.wait_call_ends(1, Duration::from_secs(5));
    assert!(is_caller_bye(&reasons[0]), "reason {:?}", reasons[0]);
}

#[test]
fn reinvite_hold_and_resume() {
    let daemon = Daemon::start("");
    Sipp::new("reinvite_hold.xml", daemon.sip_addr())
        .set("hold_ms", "500")
        .run()
        .assert_ok();
    let reasons = daemon.wait_call_ends(1, Duration::from_secs(5));
    assert!(is_caller_bye(&reasons[0]), "reason {:?}", reasons[0]);
}

/// The ACK of a re-INVITE's 200 completes its transaction: the 200 is not sent again, and a
/// hold longer than 64*T1 (6.4 s with T1 = 100 ms) and than a new call's ACK wait (16*T1)
/// does not end the call (it once did, with BYE "ack-timeout", after 32 s).
#[test]
fn a_long_hold_survives_its_reinvite() {
    let daemon = Daemon::start("[sip]\nt1_ms = 100\n[demo]\nfirst_digit_timeout_ms = 30000\n");
    let run = Sipp::new("reinvite_hold.xml", daemon.sip_addr())
        .set("hold_ms", "8000")
        .timeout_secs(40)
        .run();
    run.assert_ok();
    let hold_oks = run
        .received()
        .iter()
        .filter(|m| m.status() == Some(200) && m.header("CSeq").as_deref() == Some("2 INVITE"))
        .count();
    assert_eq!(
        hold_oks,
        1,
        "the hold re-INVITE's 200 was sent {hold_oks} times: its ACK was not matched\n{}",
        run.report()
    );
    let reasons = daemon.wait_call_ends(1, Duration::from_secs(5));
    assert!(is_caller_bye(&reasons[0]), "reason {:?}", reasons[0]);
}

#[test]
fn compact_headers_call() {
    let daemon = Daemon::start("");
    Sipp::new("compact_call.xml", daemon.sip_addr())
        .run()
        .assert_ok();
    let reasons = daemon.wait_call_ends(1, Duration::from_secs(5));
    assert!(is_caller_bye(&reasons[0]), "reason {:?}", reasons[0]);
}

#[test]
fn unknown_method_in_dialog_gets_501() {
    let daemon = Daemon::start("");
    Sipp::new("unknown_in_dialog.xml", daemon.sip_addr())
        .run()
        .assert_ok();
}

#[test]
fn rfc4733_digits_are_collected_once_each() {
    require_pcaps();
    let daemon = Daemon::start("[demo]\ninter_digit_timeout_ms = 1500\n");
    let run = Sipp::new("rfc2833_digits.xml", daemon.sip_addr())
        .set("welcome_ms", &welcome_wait().as_millis().to_string())
        // Generous: this test is about counting digits, barge-in has its own test.
        .set("after_ms", "3500")
        .timeout_secs(60)
        .run();
    run.assert_ok();
    daemon.wait_call_ends(1, Duration::from_secs(5));
    // Each pcap repeats its end packet three times: still one digit each.
    assert_eq!(
        daemon.collected(),
        vec![("123".to_string(), "rfc4733".to_string())],
        "expected exactly one `collected digits=123 methods=rfc4733` line"
    );
}

#[test]
fn digit_barges_in_on_the_prompt() {
    require_pcaps();
    // Two rounds, so ivrd is still collecting (not saying goodbye) when we hang up.
    let daemon = Daemon::start("[demo]\nrounds = 2\n");
    let welcome = prompt_duration("en", "demo-welcome");
    let enter_digits = prompt_duration("en", "enter-digits");
    // "1" 300 ms into "enter-digits", "#" half a second later.
    let run = Sipp::new("barge_in.xml", daemon.sip_addr())
        .set(
            "welcome_ms",
            &(welcome + Duration::from_millis(300))
                .as_millis()
                .to_string(),
        )
        .set("after_ms", "1500")
        .timeout_secs(60)
        .run();
    run.assert_ok();
    daemon.wait_call_ends(1, Duration::from_secs(5));
    assert_eq!(
        daemon.collected(),
        vec![("1".to_string(), "rfc4733".to_string())]
    );
    let started = daemon
        .log_time("call started")
        .expect("`call started` line");
    let collected = daemon
        .log_time("collected digits=")
        .expect("`collected` line");
    // Without barge-in the collect could not even begin before both prompts had played.
    let elapsed = collected - started;
    let no_barge_in = (welcome + enter_digits).as_secs_f64();
    assert!(
        elapsed < no_barge_in,
        "digits collected {elapsed:.2} s after answer; the prompts alone last {no_barge_in:.2} s: \
         the digit did not stop \"enter-digits\""
    );
}

#[test]
fn info_digits_are_collected() {
    let daemon = Daemon::start("[demo]\ninter_digit_timeout_ms = 1500\n");
    let run = Sipp::new("info_digits.xml", daemon.sip_addr())
        .set("welcome_ms", &welcome_wait().as_millis().to_string())
        .set("after_ms", "2500")
        .timeout_secs(60)
        .run();
    run.assert_ok();
    daemon.wait_call_ends(1, Duration::from_secs(5));
    assert_eq!(
        daemon.collected(),
        vec![("42".to_string(), "info".to_string())],
        "expected exactly one `collected digits=42 methods=info` line"
    );
}

#[test]
fn unknown_method_outside_dialog_gets_501() {
    let daemon = Daemon::start("");
    let udp = RawUdp::new(daemon.sip_addr());
    let local = udp.local_addr();
    let target = daemon.sip_addr();
    udp.send(
        format!(
            "FROBNICATE sip:demo@{target} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK-frob-1\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:raw@{local}>;tag=raw1\r\n\
             To: <sip:demo@{target}>\r\n\
             Call-ID: frob-1@test\r\n\
             CSeq: 7 FROBNICATE\r\n\
             Content-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    );
    let resp = udp
        .recv(Duration::from_secs(2))
        .expect("no answer to an unknown method");
    assert_eq!(status_code(&resp), Some(501), "expected 501:\n{resp}");
    assert_eq!(
        header_value(&resp, "CSeq", None).as_deref(),
        Some("7 FROBNICATE")
    );
    assert_eq!(
        header_value(&resp, "Call-ID", Some("i")).as_deref(),
        Some("frob-1@test")
    );
    assert!(
        header_value(&resp, "Via", Some("v")).is_some_and(|v| v.contains("branch=z9hG4bK-frob-1")),
        "Via not echoed:\n{resp}"
    );
}

#[test]
fn rport_and_received_are_filled_in() {
    let daemon = Daemon::start("");
    let udp = RawUdp::new(daemon.sip_addr());
    let local = udp.local_addr();
    let target = daemon.sip_addr();
    // The Via names another loopback host and a dead port: the answer can only reach us if
    // ivrd honours rport (RFC 3581) and replies to the packet's source.
    udp.send(
        format!(
            "OPTIONS sip:demo@{target} SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.2:9;branch=z9hG4bK-rport-1;rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:raw@127.0.0.2>;tag=raw2\r\n\
             To: <sip:demo@{target}>\r\n\
             Call-ID: rport-1@test\r\n\
             CSeq: 1 OPTIONS\r\n\
             Content-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    );
    let resp = udp
        .recv(Duration::from_secs(2))
        .expect("no answer at the source address: rport not honoured");
    assert_eq!(status_code(&resp), Some(200), "{resp}");
    let via = header_value(&resp, "Via", Some("v")).unwrap_or_default();
    let params = via.replace(';', " ");
    assert_eq!(
        field_value(&params, "received").as_deref(),
        Some("127.0.0.1"),
        "Via lacks received=127.0.0.1: {via}"
    );
    assert_eq!(
        field_value(&params, "rport"),
        Some(local.port().to_string()),
        "Via lacks rport={}: {via}",
        local.port()
    );
}

#[test]
fn malformed_messages_then_a_good_call() {
    let mut daemon = Daemon::start("");
    let udp = RawUdp::new(daemon.sip_addr());
    let local = udp.local_addr();
    let target = daemon.sip_addr();
    let good_head = |call_id: &str, cseq: &str| {
        format!(
            "OPTIONS sip:demo@{target} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK-{call_id}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:raw@{local}>;tag=bad\r\n\
             To: <sip:demo@{target}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq}\r\n"
        )
    };
    let options = |call_id: &str, cseq: &str, tail: &str| {
        format!("{}{tail}", good_head(call_id, cseq)).into_bytes()
    };
    let mut nul = options("nul", "1 OPTIONS", "Content-Length: 0\r\n\r\n");
    nul[60] = 0; // inside the Via line
    const BAD: &[u16] = &[400];
    const SILENCE: &[u16] = &[];
    // (what, bytes, status codes allowed besides no answer at all)
    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        (
            "garbage bytes",
            b"\x16\x03\x01\x02\x00\xff\xfe garbage \x80\x81".to_vec(),
            BAD,
        ),
        ("empty datagram", Vec::new(), SILENCE),
        ("CRLF keepalive", b"\r\n\r\n".to_vec(), SILENCE),
        (
            "no Call-ID",
            format!(
                "OPTIONS sip:demo@{target} SIP/2.0\r\n\
                 Via: SIP/2.0/UDP {local};branch=z9hG4bK-nocid\r\n\
                 From: <sip:raw@{local}>;tag=x\r\n\
                 To: <sip:demo@{target}>\r\n\
                 CSeq: 1 OPTIONS\r\n\
                 Content-Length: 0\r\n\r\n"
            )
            .into_bytes(),
            BAD,
        ),
        (
            "bad CSeq number",
            options("badcseq", "one OPTIONS", "Content-Length: 0\r\n\r\n"),
            BAD,
        ),
        (
            "CSeq method mismatch",
            options("cseqmeth", "1 INVITE", "Content-Length: 0\r\n\r\n"),
            BAD,
        ),
        (
            "Content-Length beyond the datagram",
            options(
                "shortbody",
                "1 OPTIONS",
                "Content-Type: application/sdp\r\nContent-Length: 500\r\n\r\nv=0\r\n",
            ),
            BAD,
        ),
        // Well-formed, only big: answering it normally is as good as refusing it.
        (
            "30 kB header line",
            options(
                "huge",
                "1 OPTIONS",
                &format!(
                    "X-Huge: {}\r\nContent-Length: 0\r\n\r\n",
                    "a".repeat(30_000)
                ),
            ),
            &[200, 400, 413, 513],
        ),
        (
            "invalid start line",
            b"HELLO WORLD\r\nVia: SIP/2.0/UDP 127.0.0.1:9\r\n\r\n".to_vec(),
            BAD,
        ),
        (
            "request line without version",
            format!("OPTIONS sip:demo@{target}\r\n\r\n").into_bytes(),
            BAD,
        ),
        ("NUL byte in a header", nul, BAD),
        (
            "headers never end",
            options("noend", "1 OPTIONS", "Content-Length: 0\r\n"),
            BAD,
        ),
        // A response matching no transaction is dropped; a response is never answered.
        (
            "stray response",
            format!(
                "SIP/2.0 200 OK\r\n\
                 Via: SIP/2.0/UDP {target};branch=z9hG4bK-stray\r\n\
                 From: <sip:a@x>;tag=1\r\n\
                 To: <sip:b@x>;tag=2\r\n\
                 Call-ID: stray@test\r\n\
                 CSeq: 1 OPTIONS\r\n\
                 Content-Length: 0\r\n\r\n"
            )
            .into_bytes(),
            SILENCE,
        ),
    ];
    for (name, bytes, allowed) in &cases {
        udp.send(bytes);
        for answer in udp.recv_all(Duration::from_millis(300)) {
            assert!(
                status_code(&answer).is_some_and(|code| allowed.contains(&code)),
                "{name}: expected no answer or one of {allowed:?}, got:\n{answer}"
            );
        }
    }
    assert!(daemon.is_running(), "ivrd died on malformed input");

    // Still serving: OPTIONS and a whole call.
    udp.send(options_request(target, local, "after-abuse", "UDP").as_bytes());
    let resp = udp
        .recv(Duration::from_secs(2))
        .expect("no answer to OPTIONS after the abuse");
    assert_eq!(status_code(&resp), Some(200), "{resp}");
    Sipp::new("uac_call.xml", daemon.sip_addr())
        .run()
        .assert_ok();
}

#[test]
fn tcp_framing_pipelined_and_split() {
    let daemon = Daemon::start("");
    let target = daemon.sip_addr();
    let mut tcp = SipTcp::connect(target);
    let local = tcp.local_addr();
    let a = options_request(target, local, "tcp-a", "TCP");
    let b = options_request(target, local, "tcp-b", "TCP");
    let c = options_request(target, local, "tcp-c", "TCP");
    // Two requests in one segment, then one split mid-header across two writes: only
    // Content-Length framing finds the message boundaries.
    tcp.send(format!("{a}{b}").as_bytes());
    let (c1, c2) = c.split_at(40);
    tcp.send(c1.as_bytes());
    std::thread::sleep(Duration::from_millis(200));
    tcp.send(c2.as_bytes());
    let mut seen = Vec::new();
    for _ in 0..3 {
        let msg = tcp
            .recv(Duration::from_secs(3))
            .expect("a response on the TCP connection");
        assert_eq!(status_code(&msg), Some(200), "{msg}");
        seen.push(header_value(&msg, "Call-ID", Some("i")).unwrap_or_default());
    }
    assert_eq!(seen, ["tcp-a", "tcp-b", "tcp-c"]);
}

#[test]
fn rtp_reaches_the_caller() {
    let daemon = Daemon::start("");
    let udp = RawUdp::new(daemon.sip_addr());
    let rtp = UdpSocket::bind((LOCALHOST, free_media_port())).expect("bind RTP socket");
    let local = udp.local_addr();
    let rtp_port = rtp.local_addr().expect("rtp addr").port();
    let target = daemon.sip_addr();
    let sdp = format!(
        "v=0\r\no=raw 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {rtp_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\n"
    );
    let dialog = |method: &str, cseq: u32, uri: &str, to_tag: &str, body: &str| {
        let ctype = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        format!(
            "{method} {uri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK-rtp-{cseq}-{method};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:raw@{local}>;tag=rtpcaller\r\n\
             To: <sip:demo@{target}>{to_tag}\r\n\
             Call-ID: rtp-1@test\r\n\
             CSeq: {cseq} {method}\r\n\
             Contact: <sip:raw@{local}>\r\n\
             {ctype}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let request_uri = format!("sip:demo@{target}");
    udp.send(dialog("INVITE", 1, &request_uri, "", &sdp).as_bytes());
    let deadline = Instant::now() + Duration::from_secs(5);
    let ok = loop {
        assert!(Instant::now() < deadline, "no 200 for the INVITE");
        if let Some(msg) = udp.recv(Duration::from_millis(500))
            && status_code(&msg) == Some(200)
        {
            break msg;
        }
    };
    let to = header_value(&ok, "To", Some("t")).expect("To in 200");
    let tag = to
        .split(";tag=")
        .nth(1)
        .expect("To tag in 200")
        .split(';')
        .next()
        .unwrap_or("");
    let contact = header_value(&ok, "Contact", Some("m")).expect("Contact in 200");
    let contact_uri = contact
        .trim_start_matches(|c| c != '<')
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap_or(&contact)
        .to_string();
    let to_tag = format!(";tag={tag}");
    udp.send(dialog("ACK", 1, &contact_uri, &to_tag, "").as_bytes());

    // Two seconds of whatever ivrd plays (the welcome prompt).
    rtp.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("set timeout");
    let start = Instant::now();
    let mut packets = 0;
    let mut audible = false;
    let mut buf = [0u8; 2048];
    while start.elapsed() < Duration::from_secs(2) {
        if let Ok(n) = rtp.recv(&mut buf) {
            assert!(
                n >= 12 && buf[0] >> 6 == 2,
                "not an RTP v2 packet ({n} bytes)"
            );
            assert_eq!(buf[1] & 0x7f, 0, "payload type is not PCMU (0)");
            assert_eq!(n - 12, 160, "a 20 ms PCMU packet carries 160 bytes");
            // PCMU silence encodes as 0xFF/0x7F; speech moves far from them.
            audible |= buf[12..n].iter().any(|&b| b & 0x7f < 0x70);
            packets += 1;
        }
    }
    assert!(
        packets >= 80,
        "only {packets} RTP packets in 2 s, expected about 100 (20 ms pacing)"
    );
    assert!(
        packets <= 120,
        "{packets} RTP packets in 2 s: sent faster than real time"
    );
    assert!(
        audible,
        "all RTP payloads were silence: the welcome prompt is not being played"
    );

    udp.send(dialog("BYE", 2, &contact_uri, &to_tag, "").as_bytes());
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        assert!(Instant::now() < deadline, "no 200 for the BYE");
        if let Some(msg) = udp.recv(Duration::from_millis(500)) {
            let cseq = header_value(&msg, "CSeq", None).unwrap_or_default();
            if status_code(&msg) == Some(200) && cseq.ends_with("BYE") {
                break;
            }
        }
    }
}

/// A re-INVITE without SDP gets our offer in its 200 and the answer in its ACK (RFC 3261
/// 14.2); a second offer before that ACK is glare and gets 491. The call then stays up past
/// 64*T1 (6.4 s here) with no BYE from ivrd, and ends with the caller's.
#[test]
fn offerless_reinvite_glare_and_a_long_call() {
    let daemon = Daemon::start("[sip]\nt1_ms = 100\n[demo]\nfirst_digit_timeout_ms = 30000\n");
    let run = Sipp::new("reinvite_no_sdp_glare.xml", daemon.sip_addr())
        .set("hold_ms", "7000")
        .timeout_secs(40)
        .run();
    run.assert_ok();
    assert!(
        !run.received().iter().any(|m| m.text.starts_with("BYE ")),
        "ivrd hung up\n{}",
        run.report()
    );
    let reasons = daemon.wait_call_ends(1, Duration::from_secs(5));
    assert!(is_caller_bye(&reasons[0]), "reason {:?}", reasons[0]);
}

/// RFC 4028 with the caller refreshing: the 200 echoes Session-Expires with refresher=uac and
/// Require: timer; a re-INVITE and an UPDATE without SDP each refresh it; when refreshes stop,
/// ivrd sends BYE before the session expires (interval - min(32 s, interval/3)).
#[test]
fn session_timer_refreshed_by_reinvite_and_update_then_bye() {
    let daemon =
        Daemon::start("[sip]\nsession_min_se_secs = 2\n[demo]\nfirst_digit_timeout_ms = 60000\n");
    let run = Sipp::new("session_timer.xml", daemon.sip_addr())
        .set("se", "6")
        .set("refresh_ms", "2500")
        .timeout_secs(40)
        .run();
    run.assert_ok();
    let received = run.received();
    let oks: Vec<&TracedMessage> = received
        .iter()
        .filter(|m| m.status() == Some(200))
        .collect();
    for ok in &oks {
        assert_eq!(
            ok.header("Session-Expires").as_deref(),
            Some("6;refresher=uac"),
            "{}",
            ok.text
        );
        assert_eq!(
            ok.header("Require").as_deref(),
            Some("timer"),
            "{}",
            ok.text
        );
    }
    let update_ok = oks
        .iter()
        .find(|m| m.cseq_method().as_deref() == Some("UPDATE"))
        .expect("a 200 to the UPDATE");
    let bye = received
        .iter()
        .find(|m| m.text.starts_with("BYE "))
        .expect("a BYE from ivrd");
    // The last refresh is the UPDATE's 200; the BYE is due 6 - 2 = 4 s later.
    let after = bye.at - update_ok.at;
    assert!(
        (3.5..5.5).contains(&after),
        "BYE {after:.2} s after the last refresh, expected about 4 s"
    );
    let reasons = daemon.wait_call_ends(1, Duration::from_secs(5));
    assert!(
        reasons[0].contains("session") && reasons[0].contains("expired"),
        "{reasons:?}"
    );
}

/// A session interval below our minimum, from a caller that supports timers: 422 with Min-SE.
#[test]
fn session_interval_too_small_gets_422_with_min_se() {
    let daemon = Daemon::start("[sip]\nsession_min_se_secs = 120\n");
    let run = Sipp::new("session_timer_too_small.xml", daemon.sip_addr())
        .set("se", "90")
        .run();
    run.assert_ok();
    let refusal = run
        .received()
        .into_iter()
        .find(|m| m.status() == Some(422))
        .expect("a 422");
    assert_eq!(
        refusal.header("Min-SE").as_deref(),
        Some("120"),
        "{}",
        refusal.text
    );
    assert!(daemon.log_lines("call started").is_empty());
}

/// RFC 4028 with ivrd refreshing (the INVITE asked for refresher=uas): an UPDATE without SDP
/// at half the interval, again after each refresh.
#[test]
fn session_timer_refreshed_by_ivrd_with_update() {
    let daemon =
        Daemon::start("[sip]\nsession_min_se_secs = 2\n[demo]\nfirst_digit_timeout_ms = 60000\n");
    let run = Sipp::new("session_timer_uas.xml", daemon.sip_addr())
        .set("se", "4")
        .timeout_secs(40)
        .run();
    run.assert_ok();
    let received = run.received();
    let ok = received
        .iter()
        .find(|m| m.status() == Some(200) && m.cseq_method().as_deref() == Some("INVITE"))
        .expect("the 200");
    assert_eq!(
        ok.header("Session-Expires").as_deref(),
        Some("4;refresher=uas")
    );
    let updates: Vec<&TracedMessage> = received
        .iter()
        .filter(|m| m.text.starts_with("UPDATE "))
        .collect();
    assert_eq!(updates.len(), 2, "{}", run.report());
    assert!(
        !updates[0].text.contains("application/sdp"),
        "{}",
        updates[0].text
    );
    for (from, to) in [(ok.at, updates[0].at), (updates[0].at, updates[1].at)] {
        let gap = to - from;
        assert!(
            (1.6..3.0).contains(&gap),
            "UPDATE {gap:.2} s apart, expected 2 s"
        );
    }
}
