//! A real softphone calls the demo: baresip (headless, driven over its ctrl_tcp JSON socket)
//! dials ivrd, hears the prompts, types digits, and is hung up on after the last round.
//!
//! What we learned about Debian's baresip 1.0.0 (see also tests/baresip/config.in):
//! - Modules live in /usr/lib/baresip/modules on Debian (other builds use
//!   /usr/lib/<triplet>/baresip/modules or /usr/local/lib/baresip/modules): we look for them.
//! - `net_interface 127.0.0.1` is needed, or the SDP announces eth0's address.
//! - Headless audio: `audio_source aufile,<wav>` and `audio_player aubridge,nil`; the
//!   `sndfile` filter then dumps what the call hears to `<snd_path>/dump-<timestamp>-dec.wav`
//!   (8 kHz mono 16-bit for G.711). The file is complete once the call is closed.
//! - ctrl_tcp speaks netstrings (`<len>:<json>,`): commands are
//!   `{"command":"dial","params":"sip:...","token":"n"}`, answered by
//!   `{"response":true,"ok":true,"data":"","token":"n"}`; events look like
//!   `{"event":true,"type":"CALL_ESTABLISHED",...}` and `CALL_CLOSED`.
//! - DTMF: `sndcode` with one digit sends it as RFC 4733 telephone-events on the negotiated
//!   payload type (baresip offers 101): about 180 ms of updates then three end packets, with
//!   one RTP timestamp per digit. It never falls back to SIP INFO or in-band tones here.
//! - IPv6: `sip_listen [::1]:port` with `net_interface ::1` (an address, as for IPv4): it then
//!   offers `c=IN IP6 ::1` and sends its RTP over IPv6. ivrd needs `[::1]` among its `[sip]
//!   udp` addresses, `::1` in `trusted` (or the INVITE is dropped unanswered) and
//!   `[media] rtp_ip6` (or the offer gets 488).

mod common;

use common::*;
use std::time::Duration;

/// The demo with rounds = 1: baresip dials `uri`, waits out the welcome, types 4 2 7 #; ivrd
/// collects 427 (RFC 4733), reads it back, says goodbye and hangs up. What baresip heard must
/// be speech, not silence.
fn hears_prompts_and_types_digits(daemon: &Daemon, phone: &mut Baresip, uri: &str) {
    phone.command("dial", uri);
    phone.wait_event("CALL_ESTABLISHED", Duration::from_secs(10));

    // Past the welcome prompt, so the digits land in the barge-in "enter-digits" prompt or the
    // collect itself, whatever the daemon does with type-ahead during the welcome.
    std::thread::sleep(prompt_duration("en", "demo-welcome") + Duration::from_millis(700));
    for digit in ["4", "2", "7", "#"] {
        phone.command("sndcode", digit);
        // One event lasts ~240 ms including its end packets; keep them apart.
        std::thread::sleep(Duration::from_millis(400));
    }

    daemon.expect_log("collected digits=", Duration::from_secs(10));
    // Read-back, goodbye, then ivrd hangs up (rounds = 1).
    phone.wait_event("CALL_CLOSED", Duration::from_secs(60));
    phone.quit();

    assert_eq!(
        daemon.collected(),
        vec![("427".to_string(), "rfc4733".to_string())],
        "expected `collected digits=427 methods=rfc4733` (terminator # not included)"
    );
    let reasons = daemon.wait_call_ends(1, Duration::from_secs(5));
    assert!(
        !reasons[0].contains("caller") && !reasons[0].contains("remote"),
        "ivrd hung up, yet the reason is {:?}",
        reasons[0]
    );

    let (rms, length) = phone.heard();
    eprintln!("baresip heard {length:?} of audio, RMS {rms:.4} of full scale");
    assert!(
        length > Duration::from_secs(3),
        "recording of the call is only {length:?} long"
    );
    // Speech prompts sit far above -40 dBFS; a silent or missing stream is ~0.
    assert!(
        rms > 0.01,
        "what baresip heard is (near) silence: RMS {rms:.5} of full scale over {length:?}"
    );

    // And it heard the read-back: of all the demo's prompts (welcome, enter-digits,
    // you-entered, the digits, goodbye) only the read-back speaks digit prompts, so the digits
    // in the recording are exactly 4 2 7, in that order, one digit prompt's length apart.
    let recording = phone.heard_wav();
    let started = std::time::Instant::now();
    let heard = digits::digits_heard(&recording, "en");
    let took = started.elapsed();
    let (samples, _) = digits::read_recording(&recording);
    let scored = digits::find_digits(&samples, "en");
    eprintln!("digit prompts found in {took:?}: {scored:?}");
    let found: String = heard.iter().map(|(d, _)| *d).collect();
    assert_eq!(
        found, "427",
        "digit prompts heard by baresip (expected the read-back of 427): {heard:?}"
    );
    for pair in heard.windows(2) {
        let gap = pair[1].1 - pair[0].1;
        let first = prompt_duration("en", &format!("digit-{}", pair[0].0));
        assert!(
            // A packet the jitter buffer drops or adds moves a prompt by 20 ms.
            gap + Duration::from_millis(60) >= first && gap < first + Duration::from_millis(300),
            "digit {} at {:?} follows digit {} at {:?}, yet the prompts play back to back \
             ({first:?} long)",
            pair[1].0,
            pair[1].1,
            pair[0].0,
            pair[0].1
        );
    }
}

const DEMO_ONE_ROUND: &str =
    "[demo]\nrounds = 1\nfirst_digit_timeout_ms = 15000\ninter_digit_timeout_ms = 3000\n";

#[test]
fn baresip_hears_prompts_and_its_digits_are_collected() {
    let daemon = Daemon::start(DEMO_ONE_ROUND);
    let mut phone = Baresip::start(1);
    hears_prompts_and_types_digits(
        &daemon,
        &mut phone,
        &format!("sip:demo@{}", daemon.sip_addr()),
    );
}

/// The same call over IPv6: baresip on `[::1]` calls ivrd's `[::1]` listener, ivrd answers
/// with `c=IN IP6 ::1` from `rtp_ip6`, and the prompts and the RFC 4733 digits travel as RTP
/// over IPv6.
#[test]
fn baresip_over_ipv6_hears_prompts_and_its_digits_are_collected() {
    let daemon = Daemon::start(&format!(
        "{DEMO_ONE_ROUND}\
         [sip]\nudp = [\"127.0.0.1:{{sip_port}}\", \"[::1]:{{sip_port}}\"]\n\
         trusted = [\"127.0.0.1\", \"::1\"]\n\
         [media]\nrtp_ip6 = \"::1\"\n"
    ));
    let mut phone = Baresip::start_on(1, Family::V6);
    let uri = format!("sip:demo@[::1]:{}", daemon.sip_port());
    hears_prompts_and_types_digits(&daemon, &mut phone, &uri);

    // The call came in over IPv6, and baresip's media came from and went to ::1.
    let started = daemon.log_lines("call started").join("\n");
    assert!(
        started.contains("remote=[::1]:"),
        "the INVITE did not come over IPv6: {started}"
    );
    let log = phone.log();
    assert!(
        log.contains("receiving from [::1]:"),
        "baresip received no RTP from ivrd over IPv6:\n{log}"
    );
}
