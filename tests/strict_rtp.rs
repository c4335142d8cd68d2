//! Strict RTP against a real daemon: a caller sets up a call (RawUac: INVITE, 200, ACK, then
//! RTP from the address in its SDP), and intruders on other ports and another loopback host
//! (127.0.0.2) send well-formed RTP audio, in-band DTMF tones, RFC 4733 key presses, lone end
//! packets and garbage with the telephone-event payload type into the daemon's RTP port.
//!
//! - The demo flow: prompts keep going to the caller and never to an intruder, only the
//!   caller's digits are collected, `ivrd_rtp_foreign_packets_total` counts the intruders'
//!   packets, and one log line reports them.
//! - The same attack with `strict_rtp = false`: the intruders take the audio and type digits,
//!   which shows the attack above is real and the test would catch its return.
//! - The verify plan with a real SMS gateway (`SmsSink`): an intruder typing a customer
//!   number sends no PIN SMS; the caller typing it does.
//!
//! Nothing here depends on RTP from the daemon before the ACK: RawUac acknowledges the 200
//! before its RTP starts, and the tests wait for the daemon's RTP to arrive.

mod common;

use common::*;
use ivrd::media::dtmf::{Digit, dbm0_to_amplitude, generate_tone, rfc4733_payload};
use ivrd::media::g711;
use ivrd::media::rtp::{HEADER_LEN, RtpSender};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Waits until the daemon's RTP reaches the caller: the call is up and acknowledged, and
/// the caller's own RTP has been flowing for a moment.
fn wait_for_media(uac: &RawUac) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while uac.rtp_received() == 0 {
        assert!(
            Instant::now() < deadline,
            "no RTP from ivrd within 5 s of the ACK\n{}",
            uac.transcript()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
}

/// One intruder: its own socket and RTP stream aimed at the daemon's RTP port.
struct Intruder {
    sock: UdpSocket,
    to: SocketAddr,
    rtp: RtpSender,
    sent: u64,
    received: u64,
}

impl Intruder {
    fn new(bind: &str, to: SocketAddr) -> Intruder {
        let sock = UdpSocket::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        sock.set_nonblocking(true).expect("non-blocking");
        Intruder {
            sock,
            to,
            rtp: RtpSender::new_random(),
            sent: 0,
            received: 0,
        }
    }

    fn send(&mut self, pkt: &[u8]) {
        self.sock.send_to(pkt, self.to).expect("send to the daemon");
        self.sent += 1;
    }

    /// One 20 ms PCMU packet, next in the intruder's sequence.
    fn audio(&mut self, payload: &[u8; 160]) {
        let mut pkt = [0u8; HEADER_LEN + 160];
        self.rtp.write_header(&mut pkt, 0, 160);
        pkt[HEADER_LEN..].copy_from_slice(payload);
        self.send(&pkt);
    }

    /// A key press as RFC 4733 packets in the intruder's stream: start, update, end three
    /// times, on one timestamp, with the payload type from the SDP.
    fn press(&mut self, key: char) {
        let digit = Digit::from_char(key).unwrap();
        let ts = self.rtp.timestamp;
        for (end, duration) in [
            (false, 160),
            (false, 320),
            (true, 480),
            (true, 480),
            (true, 480),
        ] {
            let mut pkt = [0u8; HEADER_LEN + 4];
            self.rtp.timestamp = ts;
            self.rtp.write_header(&mut pkt, 101, 0);
            pkt[HEADER_LEN..].copy_from_slice(&rfc4733_payload(digit, end, 10, duration));
            self.send(&pkt);
        }
        self.rtp.timestamp = ts.wrapping_add(800);
    }

    /// What a blind attacker sends: one end packet of a press, under a fresh SSRC, and a
    /// datagram of garbage with the telephone-event payload type.
    fn blind(&mut self, key: char) {
        let mut pkt = [0u8; HEADER_LEN + 4];
        RtpSender::new_random().write_header(&mut pkt, 101, 0);
        pkt[HEADER_LEN..].copy_from_slice(&rfc4733_payload(
            Digit::from_char(key).unwrap(),
            true,
            10,
            800,
        ));
        self.send(&pkt);
        let mut garbage = [0xA5u8; HEADER_LEN + 4];
        garbage[..2].copy_from_slice(&[0x80, 101]);
        self.send(&garbage);
    }

    /// Counts what the daemon sent us.
    fn drain(&mut self) {
        let mut buf = [0u8; 2048];
        while self.sock.recv(&mut buf).is_ok() {
            self.received += 1;
        }
    }
}

/// What the intruders did, once stopped.
struct Attack {
    sent: u64,
    received: u64,
}

/// Two intruders, one on another port of the caller's host and one on 127.0.0.2, sending
/// until stopped: a continuous in-sequence PCMU stream (good enough to pass any probation)
/// that carries the DTMF tone of `key` for 100 ms of every 500, an RFC 4733 press of `key`
/// every 300 ms, and blind end packets and garbage.
struct Flood {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Attack>>,
}

impl Flood {
    fn start(to: SocketAddr, key: char) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut intruders = [
                Intruder::new("127.0.0.1:0", to),
                Intruder::new("127.0.0.2:0", to),
            ];
            let mut tone = Vec::new();
            generate_tone(
                Digit::from_char(key).unwrap(),
                100,
                dbm0_to_amplitude(-8.0),
                &mut tone,
            );
            let frames: Vec<[u8; 160]> = tone
                .chunks(160)
                .map(|pcm| {
                    let mut f = [g711::ULAW_SILENCE; 160];
                    g711::encode_ulaw_into(pcm, &mut f[..pcm.len()]);
                    f
                })
                .collect();
            let start = Instant::now();
            let mut tick: u32 = 0;
            while !st.load(Ordering::SeqCst) {
                let frame = frames
                    .get((tick % 25) as usize)
                    .unwrap_or(&[g711::ULAW_SILENCE; 160]);
                for i in intruders.iter_mut() {
                    i.audio(frame);
                    if tick % 15 == 7 {
                        i.press(key);
                        i.blind(key);
                    }
                    i.drain();
                }
                tick += 1;
                let next = start + Duration::from_millis(20) * tick;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            // The last packets the daemon sent may still be on their way.
            std::thread::sleep(Duration::from_millis(100));
            for i in intruders.iter_mut() {
                i.drain();
            }
            Attack {
                sent: intruders.iter().map(|i| i.sent).sum(),
                received: intruders.iter().map(|i| i.received).sum(),
            }
        });
        Flood {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Attack {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("intruder thread")
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits for the demo's `collected` line.
fn wait_collected(daemon: &Daemon) -> Vec<(String, String)> {
    daemon.expect_log("collected digits=", Duration::from_secs(20));
    daemon.collected()
}

const FOREIGN_LINE: &str = "RTP from an address other than the caller's dropped";

#[test]
fn intruders_get_no_audio_and_type_no_digits() {
    let admin = format!("127.0.0.1:{}", free_sip_port());
    let daemon = Daemon::start(&format!(
        "[admin]\nlisten = \"{admin}\"\n[demo]\nrounds = 1\ninter_digit_timeout_ms = 3000\n"
    ));
    let mut uac = RawUac::call(daemon.sip_addr(), "demo");
    wait_for_media(&uac);

    // The intruders start while the welcome plays and keep going through the collection.
    let before = uac.rtp_received();
    let started = Instant::now();
    let flood = Flood::start(uac.daemon_rtp_addr(), '9');
    std::thread::sleep(prompt_duration("en", "demo-welcome") + Duration::from_millis(700));
    // The caller's keys, in its own RTP stream, from its SDP address.
    uac.rtp_digits("12#");
    let collected = wait_collected(&daemon);
    let attack = flood.stop();
    let elapsed = started.elapsed();
    let got = u64::from(uac.rtp_received() - before);

    assert_eq!(
        collected,
        vec![("12".to_string(), "rfc4733".to_string())],
        "only the caller's keys may be collected"
    );
    assert_eq!(
        attack.received, 0,
        "the daemon sent {} RTP packets to an intruder",
        attack.received
    );
    // Prompt audio (or silence) kept going to the caller: 50 packets a second.
    let expected = elapsed.as_millis() as u64 / 20;
    assert!(
        got >= expected * 8 / 10,
        "the caller got {got} RTP packets in {elapsed:?} of intrusion, expected about {expected}"
    );

    let metrics = admin_get(&admin, "/metrics");
    let foreign = metric(&metrics, "ivrd_rtp_foreign_packets_total");
    assert!(
        foreign > 0.0 && foreign <= attack.sent as f64,
        "ivrd_rtp_foreign_packets_total {foreign}, intruders sent {}",
        attack.sent
    );
    // Loopback loses nothing, but leave room for the last packets still in the socket.
    assert!(
        foreign >= attack.sent as f64 * 0.9,
        "ivrd_rtp_foreign_packets_total {foreign}, intruders sent {}",
        attack.sent
    );
    assert!(metrics.contains("# TYPE ivrd_rtp_foreign_packets_total counter"));

    // One line for the stream, naming an intruder's address, not one per packet.
    let lines = daemon.log_lines(FOREIGN_LINE);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let from = field_value(&lines[0], "from").unwrap_or_default();
    let source = field_value(&lines[0], "source").unwrap_or_default();
    assert!(
        from.starts_with("127.0.0.1:") || from.starts_with("127.0.0.2:"),
        "{}",
        lines[0]
    );
    assert_ne!(from, uac.rtp_local_addr().to_string(), "{}", lines[0]);
    assert_eq!(source, uac.rtp_local_addr().to_string(), "{}", lines[0]);

    assert_eq!(uac.bye(), 200, "{}", uac.transcript());
}

/// The negative control: the same attack without strict RTP succeeds.
#[test]
fn without_strict_rtp_intruders_take_over() {
    let daemon = Daemon::start(
        "[media]\nstrict_rtp = false\n[demo]\nrounds = 1\ninter_digit_timeout_ms = 3000\n",
    );
    let mut uac = RawUac::call(daemon.sip_addr(), "demo");
    wait_for_media(&uac);
    let flood = Flood::start(uac.daemon_rtp_addr(), '9');
    std::thread::sleep(prompt_duration("en", "demo-welcome") + Duration::from_millis(700));
    uac.rtp_digits("12#");
    let collected = wait_collected(&daemon);
    let attack = flood.stop();
    assert!(
        collected.iter().any(|(digits, _)| digits.contains('9')),
        "the intruders' 9s were not collected without strict RTP: {collected:?}"
    );
    assert!(
        attack.received > 0,
        "without strict RTP the daemon should have followed an intruder"
    );
    assert!(daemon.log_lines(FOREIGN_LINE).is_empty());
    let _ = uac.bye();
}

/// The verify plan (dialplans/verify.toml) with the example customers and the webhook SMS
/// provider pointed at `sms`.
fn verify_daemon(sms: &SmsSink, state: &Path) -> Daemon {
    let nobody = format!("sip:nobody@127.0.0.1:{}", free_udp_port());
    Daemon::start(&common::verify::verify_plan_config(
        &state.join("ivrd.db"),
        &sms.url(),
        &nobody,
        &nobody,
    ))
}

#[test]
fn an_intruder_cannot_start_a_pin_verification() {
    // Erika, in examples/customers.csv.
    const CUSTOMER: &str = "123456";
    const MOBILE: &str = "+491701234567";
    let sms = SmsSink::start(200);
    let state = tempfile::Builder::new()
        .prefix("ivrd-strict-rtp-")
        .tempdir()
        .expect("state dir");
    let daemon = verify_daemon(&sms, state.path());
    let mut uac = RawUac::call(daemon.sip_addr(), "verify");
    wait_for_media(&uac);

    // While the welcome plays (it takes type-ahead), an intruder types Erika's customer
    // number in a stream of its own from 127.0.0.2, in sequence, as a phone would.
    let mut intruder = Intruder::new("127.0.0.2:0", uac.daemon_rtp_addr());
    for key in CUSTOMER.chars() {
        for _ in 0..10 {
            intruder.audio(&[g711::ULAW_SILENCE; 160]);
            std::thread::sleep(Duration::from_millis(20));
        }
        intruder.press(key);
        intruder.blind(key);
    }
    std::thread::sleep(Duration::from_secs(3));
    intruder.drain();
    assert_eq!(intruder.received, 0, "the daemon sent RTP to the intruder");
    assert!(
        sms.posts().is_empty(),
        "an intruder's digits sent a PIN SMS: {:?}",
        sms.posts()
    );
    assert!(daemon.log_lines("PIN sent").is_empty());

    // The caller types the same number: the PIN goes to the customer's mobile.
    uac.rtp_digits(CUSTOMER);
    let posts = sms.wait_posts(1, Duration::from_secs(30));
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_eq!(posts[0].field("to"), MOBILE, "{posts:?}");
    assert_eq!(daemon.log_lines(FOREIGN_LINE).len(), 1);
    let _ = uac.bye();
}
