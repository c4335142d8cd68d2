//! SRTP end to end with a real softphone: baresip calls the demo over SIP over TLS with
//! `;mediaenc=srtp-mand` (SDES keys in the TLS-protected SDP, RFC 4568), hears the prompts and
//! types digits as RFC 4733 events inside SRTP; the audit row says so. Then what an
//! eavesdropper on the network sees: ivrd's RTP ports on loopback are captured with tcpdump
//! around a plain call and around the SRTP call, the captures are parsed here (a small pcap reader below), and the
//! bytes the plain call shows in clear (the welcome prompt's PCMU, baresip's tone, the digits'
//! event payloads) must appear nowhere in the SRTP call's datagrams, all of whose RTP packets
//! carry the suite's authentication tag.
//!
//! What we learned about Debian's baresip 1.0.0 with SRTP:
//! - `module srtp.so` provides `srtp`, `srtp-mand` and `srtp-mandf`; `;mediaenc=srtp-mand` on
//!   the account line offers `RTP/SAVP` with `a=crypto` lines and accepts nothing else.
//! - `sip_cafile` is the CA file for SIP over TLS; `sip:...;transport=tls` in the dialled URI
//!   makes it connect over TLS.
//! - Once the answer's key is in place it sends a `CALL_MENC` event whose param is
//!   `0,audio,<suite>` and logs `SRTP is Enabled (cryptosuite=<suite>)`.
//! - A BYE from ivrd closes the call with the reason "Connection reset by peer" (libre's
//!   sipsess reports a remote BYE as ECONNRESET); nothing is wrong with the connection.
//!
//! `[media] srtp = "required"` refusing a plain offer (488) is tested in tests/sipp_calls.rs
//! (`sdes_over_udp_is_refused_with_a_reason`).

mod common;

use common::*;
use ivrd::media::prompt::PromptLibrary;
use ivrd::store::{AuditRow, Store};
use std::collections::HashSet;
use std::fs::{self, File};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEMO_ONE_ROUND: &str =
    "[demo]\nrounds = 1\nfirst_digit_timeout_ms = 15000\ninter_digit_timeout_ms = 3000\n";

/// The digits each call types, and the RFC 4733 event codes they become (`#` is 11).
const DIGITS: &str = "427#";
const EVENTS: [u8; 4] = [4, 2, 7, 11];

fn toml_path(p: &Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}

/// A daemon running the demo (one round) on UDP and on a TLS listener, with an audit database
/// and an admin listener; the test CA that signed its certificate is `dir/ca.pem`.
struct World {
    daemon: Daemon,
    dir: tempfile::TempDir,
    tls: SocketAddr,
    admin: String,
}

impl World {
    fn start() -> World {
        let dir = tempfile::Builder::new()
            .prefix("ivrd-srtp-")
            .tempdir()
            .expect("create temp dir");
        let (cert, key, _ca) = TestPki::new().write_server(dir.path());
        let tls_port = free_sip_port();
        let admin = format!("127.0.0.1:{}", free_sip_port());
        let daemon = Daemon::start(&format!(
            "{DEMO_ONE_ROUND}\
             [sip]\ntls = [\"127.0.0.1:{tls_port}\"]\n\
             [tls]\ncert = {}\nkey = {}\n\
             [store]\npath = {}\n\
             [admin]\nlisten = \"{admin}\"\n",
            toml_path(&cert),
            toml_path(&key),
            toml_path(&dir.path().join("ivrd.db")),
        ));
        World {
            daemon,
            tls: SocketAddr::from((LOCALHOST, tls_port)),
            admin,
            dir,
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// baresip offering SRTP only (`srtp-mand`), trusting the test CA for SIP over TLS.
    fn srtp_phone(&self) -> Baresip {
        Baresip::start_with(
            1,
            Family::V4,
            &BaresipExtras {
                config: format!(
                    "\n# SRTP with SDES keys, and the CA for SIP over TLS (tests/baresip_srtp.rs).\n\
                     module\t\t\tsrtp.so\nsip_cafile\t\t{}\n",
                    self.ca().display()
                ),
                account_params: ";mediaenc=srtp-mand".into(),
            },
        )
    }

    fn metric(&self, series: &str) -> f64 {
        metric(&admin_get(&self.admin, "/metrics"), series)
    }

    /// Waits for `count` audit rows; newest first.
    fn wait_audit(&self, count: usize) -> Vec<AuditRow> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let store = Store::open(self.dir.path().join("ivrd.db")).expect("open the database");
            let rows = store.recent_audit(10).expect("read audit rows");
            if rows.len() >= count {
                return rows;
            }
            assert!(
                Instant::now() < deadline,
                "{} audit rows, expected {count}: {rows:#?}",
                rows.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One demo call: baresip dials `uri`, waits out the welcome, types [`DIGITS`], and ivrd
/// collects them, reads them back and hangs up; baresip must have heard the prompts.
fn demo_call(daemon: &Daemon, phone: &mut Baresip, uri: &str, calls_before: usize) {
    phone.command("dial", uri);
    phone.wait_event("CALL_ESTABLISHED", Duration::from_secs(15));
    std::thread::sleep(prompt_duration("en", "demo-welcome") + Duration::from_millis(700));
    // One event lasts ~240 ms including its end packets; keep them apart.
    phone.type_digits(DIGITS, Duration::from_millis(400));
    phone.wait_event("CALL_CLOSED", Duration::from_secs(60));
    phone.quit();
    let reasons = daemon.wait_call_ends(calls_before + 1, Duration::from_secs(10));
    assert_eq!(
        reasons[calls_before], "completed",
        "the call did not end as the demo ends it: {reasons:?}"
    );
    let (rms, length) = phone.heard();
    eprintln!("baresip heard {length:?} of audio, RMS {rms:.4} of full scale");
    assert!(
        length > Duration::from_secs(3),
        "the call lasted {length:?}"
    );
    // Speech prompts sit far above -40 dBFS; a stream that does not decrypt plays as silence
    // or not at all.
    assert!(
        rms > 0.01,
        "what baresip heard is (near) silence: RMS {rms:.5} over {length:?}\n{}",
        phone.log()
    );
}

/// The whole story: a plain call over UDP and an SRTP call over TLS, each captured on
/// loopback; the SRTP call works like the plain one (prompts heard, digits collected, audit
/// row), and on the wire shows none of what the plain call showed.
#[test]
fn baresip_srtp_over_tls_works_and_hides_what_a_plain_call_shows() {
    let world = World::start();
    let daemon = &world.daemon;
    let (ivrd_min, ivrd_max) = daemon.rtp_range();
    let ivrd_ports = ivrd_min..=ivrd_max;

    // The control: plain RTP over UDP signalling, as tests/baresip_call.rs makes it.
    let mut plain_phone = Baresip::start(1);
    let capture = Capture::start(world.dir.path(), "plain", &ivrd_ports);
    demo_call(
        daemon,
        &mut plain_phone,
        &format!("sip:demo@{}", daemon.sip_addr()),
        0,
    );
    let plain = capture.stop();
    let digits_after_plain = world.metric("ivrd_dtmf_digits_total{method=\"rfc4733\"}");

    // The SRTP call over TLS.
    let mut phone = world.srtp_phone();
    let capture = Capture::start(world.dir.path(), "srtp", &ivrd_ports);
    demo_call(
        daemon,
        &mut phone,
        &format!("sip:demo@{};transport=tls", world.tls),
        1,
    );
    let srtp = capture.stop();

    // baresip took the answer's key: the answer was RTP/SAVP with an a=crypto line it
    // accepted (srtp-mand accepts nothing else), and ivrd says the same of its side.
    let menc = phone.wait_event("CALL_MENC", Duration::from_secs(1));
    assert!(
        menc.contains("audio,AES_CM_128_HMAC_SHA1_"),
        "baresip's media encryption event: {menc}"
    );
    assert!(
        phone.log().contains("SRTP is Enabled"),
        "baresip did not enable SRTP:\n{}",
        phone.log()
    );
    let started = daemon.log_lines("call started");
    assert_eq!(started.len(), 2, "{started:#?}");
    assert!(
        started[0].contains("transport=\"UDP\"") && started[0].contains("srtp=\"no\""),
        "{}",
        started[0]
    );
    assert!(
        started[1].contains("transport=\"TLS\"")
            && started[1].contains("srtp=\"AES_CM_128_HMAC_SHA1_"),
        "{}",
        started[1]
    );

    // The digits typed inside SRTP reached the plan, like the plain call's.
    assert_eq!(
        daemon.collected(),
        vec![
            ("427".to_string(), "rfc4733".to_string()),
            ("427".to_string(), "rfc4733".to_string())
        ],
        "both calls should have collected 427 by RFC 4733"
    );
    let digits_after_srtp = world.metric("ivrd_dtmf_digits_total{method=\"rfc4733\"}");
    assert!(
        digits_after_srtp - digits_after_plain >= DIGITS.len() as f64,
        "RFC 4733 digits counted: {digits_after_plain} after the plain call, \
         {digits_after_srtp} after the SRTP call"
    );
    assert_eq!(world.metric("ivrd_srtp_auth_failures_total"), 0.0);
    assert_eq!(world.metric("ivrd_srtp_replays_total"), 0.0);

    // The audit rows: newest (SRTP over TLS) first.
    let rows = world.wait_audit(2);
    let suite = rows[0].srtp.clone().unwrap_or_else(|| {
        panic!("the SRTP call's audit row has no suite: {:#?}", rows[0]);
    });
    assert!(suite.starts_with("AES_CM_128_HMAC_SHA1_"), "{suite}");
    assert_eq!(rows[0].transport.as_deref(), Some("TLS"), "{:#?}", rows[0]);
    assert_eq!(rows[0].dtmf_methods, "rfc4733", "{:#?}", rows[0]);
    assert_eq!(
        (rows[1].transport.as_deref(), rows[1].srtp.as_deref()),
        (Some("UDP"), None),
        "the plain call's row: {:#?}",
        rows[1]
    );
    let tag_len = if suite.ends_with("_80") { 10 } else { 4 };

    // --- The wire. ---
    let plain_media = call_media(&plain, &ivrd_ports, plain_phone.rtp_ports());
    let srtp_media = call_media(&srtp, &ivrd_ports, phone.rtp_ports());

    // The plain call shows the welcome prompt's PCMU bytes (the library ivrd loads), baresip's
    // tone and the digits' RFC 4733 payloads in clear.
    let library = PromptLibrary::load(&prompts_dir()).expect("load the prompts");
    let welcome = library
        .get("en", "demo-welcome")
        .expect("the demo-welcome prompt");
    let prompt_windows = lively_windows(&welcome.pcmu);
    assert!(
        prompt_windows.len() > 1000,
        "the welcome prompt is silence?"
    );
    let plain_windows: HashSet<[u8; WINDOW]> = plain_media
        .iter()
        .filter(|d| is_rtp(&d.payload) && d.payload.len() > 12 + 4)
        .flat_map(|d| lively_windows(&d.payload[12..]))
        .collect();
    let seen = prompt_windows.intersection(&plain_windows).count();
    eprintln!(
        "plain call: {} datagrams on the call's ports, {seen} of the welcome prompt's {} \
         distinctive 16-byte windows in clear; SRTP call: {} datagrams",
        plain_media.len(),
        prompt_windows.len(),
        srtp_media.len()
    );
    assert!(
        seen * 2 > prompt_windows.len(),
        "only {seen} of the welcome prompt's {} distinctive 16-byte windows are in the plain \
         call's RTP: is the capture or the port filter wrong?",
        prompt_windows.len()
    );
    let from_phone = |d: &&Datagram| ivrd_ports.contains(&d.dst.port());
    let plain_events: Vec<&[u8]> = plain_media
        .iter()
        .filter(from_phone)
        .filter(|d| is_rtp(&d.payload) && d.payload.len() == 12 + 4)
        .map(|d| &d.payload[12..16])
        .collect();
    let mut codes: Vec<u8> = plain_events.iter().map(|e| e[0]).collect();
    codes.dedup();
    assert_eq!(
        codes, EVENTS,
        "the plain call's RFC 4733 events, as anyone on the path reads them"
    );
    let event_payloads: HashSet<&[u8]> = plain_events.iter().copied().collect();
    let event_pt = plain_media
        .iter()
        .filter(from_phone)
        .find(|d| is_rtp(&d.payload) && d.payload.len() == 12 + 4)
        .map(|d| d.payload[1] & 0x7f)
        .expect("an event packet");

    // The SRTP call: RTP both ways, every RTP packet an SRTP one (a payload of 160 bytes of
    // audio or 4 of an event, plus the tag), and nothing of the above anywhere.
    let rtp: Vec<&Datagram> = srtp_media.iter().filter(|d| is_rtp(&d.payload)).collect();
    let to_phone = rtp
        .iter()
        .filter(|d| ivrd_ports.contains(&d.src.port()))
        .count();
    let to_ivrd = rtp.len() - to_phone;
    assert!(
        to_phone > 200 && to_ivrd > 200,
        "too little RTP in the SRTP call's capture: {to_phone} to baresip, {to_ivrd} to ivrd"
    );
    for d in &rtp {
        let body = d.payload.len() - 12;
        assert!(
            body == 160 + tag_len || body == 4 + tag_len,
            "{} -> {}: an RTP packet of {} bytes is not SRTP with {suite}'s {tag_len}-byte tag",
            d.src,
            d.dst,
            d.payload.len()
        );
    }
    for d in &srtp_media {
        if let Some(at) = d
            .payload
            .windows(WINDOW)
            .position(|w| plain_windows.contains(w) || prompt_windows.contains(w))
        {
            panic!(
                "{} -> {}: plain audio bytes at offset {at} of an SRTP call's datagram",
                d.src, d.dst
            );
        }
    }
    let srtp_events: Vec<&[u8]> = rtp
        .iter()
        .filter(|d| d.payload[1] & 0x7f == event_pt && d.payload.len() == 12 + 4 + tag_len)
        .map(|d| &d.payload[12..16])
        .collect();
    assert!(
        srtp_events.len() >= 2 * EVENTS.len(),
        "only {} event packets (payload type {event_pt}) in the SRTP call",
        srtp_events.len()
    );
    // Four bytes are too short to look for anywhere (a random match somewhere in a few hundred
    // kilobytes is not impossible), but an event packet's payload is where they would be.
    for e in &srtp_events {
        assert!(
            !event_payloads.contains(e),
            "an SRTP event packet carries a plain event payload {e:02x?}"
        );
    }
}

/// The answer itself, read over our own TLS connection: an offer of SDES keys over TLS gets
/// `RTP/SAVP` back with one `a=crypto` line, the tag and suite of the first line it could use,
/// and a key of ivrd's own.
#[test]
fn an_sdes_offer_over_tls_is_answered_with_savp_and_one_crypto_line() {
    let world = World::start();
    let ca = fs::read_to_string(world.ca()).expect("read CA");
    let mut tls = SipTls::connect(world.tls, &ca, None).expect("connect over TLS");
    let local = tls.local_addr();
    let media = free_media_port();
    let our_key = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";
    let sdp = format!(
        "v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {media} RTP/SAVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\n\
         a=crypto:3 AEAD_AES_256_GCM inline:ZmFrZWtleWZha2VrZXlmYWtla2V5ZmFrZWtleWZha2VrZXlmYWtla2V5\r\n\
         a=crypto:5 AES_CM_128_HMAC_SHA1_32 inline:{our_key}\r\n\
         a=crypto:6 AES_CM_128_HMAC_SHA1_80 inline:{our_key}\r\n"
    );
    let target = world.tls;
    tls.send(
        format!(
            "INVITE sip:demo@{target};transport=tls SIP/2.0\r\n\
             Via: SIP/2.0/TLS {local};branch=z9hG4bK-sdes-tls;rport\r\nMax-Forwards: 70\r\n\
             From: <sip:caller@{local}>;tag=sdes1\r\nTo: <sip:demo@{target}>\r\n\
             Call-ID: sdes-tls\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:caller@{local};transport=tls>\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )
        .as_bytes(),
    );
    let ok = tls
        .final_response(Duration::from_secs(5))
        .expect("a final response");
    assert_eq!(status_code(&ok), Some(200), "{ok}");
    let body = sip_body(&ok);
    assert!(
        body.lines()
            .any(|l| l.starts_with("m=audio ") && l.contains(" RTP/SAVP ")),
        "{body}"
    );
    let crypto: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("a=crypto:"))
        .collect();
    assert_eq!(crypto.len(), 1, "{body}");
    let key = crypto[0]
        .strip_prefix("a=crypto:5 AES_CM_128_HMAC_SHA1_32 inline:")
        .unwrap_or_else(|| panic!("not the first usable line's tag and suite: {}", crypto[0]))
        .trim();
    // 16 bytes of key and 14 of salt: 40 characters of base64.
    assert_eq!(key.len(), 40, "{}", crypto[0]);
    assert_ne!(
        key, our_key,
        "ivrd echoed our key instead of making its own"
    );
    world
        .daemon
        .expect_log("srtp=\"AES_CM_128_HMAC_SHA1_32\"", Duration::from_secs(2));
}

// ---------------------------------------------------------------------------------------------
// Capturing loopback, and reading the capture.
// ---------------------------------------------------------------------------------------------

/// tcpdump writing every UDP datagram on loopback into a file until [`Capture::stop`].
struct Capture {
    child: Option<Child>,
    path: PathBuf,
    log: PathBuf,
}

impl Capture {
    /// Starts tcpdump on the UDP ports `ports` (ivrd's RTP range: every datagram to or from
    /// the call's media) and waits until it listens. It needs capture rights on `lo` (the tests
    /// run as root); `-Z root` keeps it from dropping them before it writes into our
    /// directory; `--immediate-mode` and `-U` hand each packet to the file as it comes (the
    /// kernel's ring would otherwise hold up to a second of them, lost at SIGINT).
    fn start(dir: &Path, name: &str, ports: &std::ops::RangeInclusive<u16>) -> Capture {
        let tcpdump = require_tool("tcpdump");
        let path = dir.join(format!("{name}.pcap"));
        let log = dir.join(format!("{name}.tcpdump.log"));
        let child = Command::new(tcpdump)
            .args([
                "-i",
                "lo",
                "-n",
                "--immediate-mode",
                "-U",
                "-B",
                "16384",
                "-Z",
                "root",
            ])
            .arg("-w")
            .arg(&path)
            .arg(format!("udp portrange {}-{}", ports.start(), ports.end()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("create tcpdump log"))
            .spawn()
            .expect("spawn tcpdump");
        let mut capture = Capture {
            child: Some(child),
            path,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let said = fs::read_to_string(&capture.log).unwrap_or_default();
            if said.contains("listening on") {
                return capture;
            }
            if let Some(status) = capture
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "tcpdump exited with {status} (capturing needs root or CAP_NET_RAW):\n{said}"
                );
            }
            assert!(
                Instant::now() < deadline,
                "tcpdump did not start listening on lo within 10 s:\n{said}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops tcpdump (SIGINT, so it finishes the file) and reads the UDP datagrams it saw.
    fn stop(mut self) -> Vec<Datagram> {
        let mut child = self.child.take().expect("tcpdump running");
        // Let the last packets of the call reach the file.
        std::thread::sleep(Duration::from_millis(500));
        let status = Command::new("sh")
            .args(["-c", "kill -INT \"$1\"", "sh", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -INT tcpdump failed: {status}");
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for tcpdump") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("tcpdump did not stop on SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let said = fs::read_to_string(&self.log).unwrap_or_default();
        assert!(status.success(), "tcpdump exited with {status}:\n{said}");
        assert!(
            said.lines()
                .any(|l| l.trim() == "0 packets dropped by kernel"),
            "tcpdump lost packets, the capture proves nothing:\n{said}"
        );
        read_pcap(&fs::read(&self.path).expect("read the capture"))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One UDP datagram from a capture.
struct Datagram {
    src: SocketAddr,
    dst: SocketAddr,
    payload: Vec<u8>,
}

/// The UDP datagrams of a pcap file (the classic format tcpdump writes: either byte order,
/// micro- or nanosecond timestamps), over IPv4 or IPv6, from the link types tcpdump uses
/// for `lo`. Panics on anything it cannot read, rather than reading less than was captured.
fn read_pcap(file: &[u8]) -> Vec<Datagram> {
    assert!(file.len() >= 24, "pcap file of {} bytes", file.len());
    let little = match u32::from_le_bytes(file[0..4].try_into().unwrap()) {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        magic => panic!("not a pcap file (magic {magic:#x})"),
    };
    let u32_at = |at: usize| {
        let b: [u8; 4] = file[at..at + 4].try_into().unwrap();
        if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let link_type = u32_at(20) & 0x0fff_ffff;
    // Bytes of link-layer header before the IP packet.
    let link_header = match link_type {
        1 => 14,       // Ethernet (Linux's lo)
        0 => 4,        // BSD loopback
        113 => 16,     // Linux cooked capture
        276 => 20,     // Linux cooked capture v2
        12 | 101 => 0, // raw IP
        other => panic!("pcap link type {other} not handled"),
    };
    let mut out = Vec::new();
    let mut at = 24;
    while at < file.len() {
        assert!(at + 16 <= file.len(), "truncated pcap record header");
        let captured = u32_at(at + 8) as usize;
        let original = u32_at(at + 12) as usize;
        assert_eq!(
            captured, original,
            "a packet was cut short by the snap length"
        );
        let frame = &file[at + 16..at + 16 + captured];
        at += 16 + captured;
        if let Some(d) = udp_datagram(&frame[link_header..]) {
            out.push(d);
        }
    }
    out
}

/// The UDP datagram in an IP packet, if it is one.
fn udp_datagram(ip: &[u8]) -> Option<Datagram> {
    let be16 = |b: &[u8], at: usize| usize::from(u16::from_be_bytes([b[at], b[at + 1]]));
    let (src, dst, udp) = match ip.first()? >> 4 {
        4 => {
            let header = usize::from(ip[0] & 0x0f) * 4;
            let fragment = be16(ip, 6) & 0x3fff;
            if ip[9] != 17 || fragment != 0 {
                return None;
            }
            let src: [u8; 4] = ip[12..16].try_into().unwrap();
            let dst: [u8; 4] = ip[16..20].try_into().unwrap();
            (
                IpAddr::from(src),
                IpAddr::from(dst),
                &ip[header..be16(ip, 2)],
            )
        }
        6 => {
            if ip[6] != 17 {
                return None;
            }
            let src: [u8; 16] = ip[8..24].try_into().unwrap();
            let dst: [u8; 16] = ip[24..40].try_into().unwrap();
            (
                IpAddr::from(src),
                IpAddr::from(dst),
                &ip[40..40 + be16(ip, 4)],
            )
        }
        _ => return None,
    };
    Some(Datagram {
        src: SocketAddr::new(src, be16(udp, 0) as u16),
        dst: SocketAddr::new(dst, be16(udp, 2) as u16),
        payload: udp[8..be16(udp, 4)].to_vec(),
    })
}

/// The datagrams between ivrd's RTP ports and the phone's media ports, either way.
fn call_media(
    all: &[Datagram],
    ivrd: &std::ops::RangeInclusive<u16>,
    (phone_min, phone_max): (u16, u16),
) -> Vec<Datagram> {
    let phone = phone_min..=phone_max;
    all.iter()
        .filter(|d| {
            (ivrd.contains(&d.src.port()) && phone.contains(&d.dst.port()))
                || (phone.contains(&d.src.port()) && ivrd.contains(&d.dst.port()))
        })
        .map(|d| Datagram {
            src: d.src,
            dst: d.dst,
            payload: d.payload.clone(),
        })
        .collect()
}

/// RTP rather than RTCP (payload types 200-204 with the marker bit's place) or anything else.
fn is_rtp(p: &[u8]) -> bool {
    p.len() >= 12 && p[0] >> 6 == 2 && !(200..=204).contains(&p[1])
}

const WINDOW: usize = 16;

/// Every 16-byte run of `bytes` distinctive enough that it cannot turn up by chance or as
/// silence (at least 8 different byte values): PCMU silence and near-silence repeat a byte or
/// two, speech and a tone do not.
fn lively_windows(bytes: &[u8]) -> HashSet<[u8; WINDOW]> {
    bytes
        .windows(WINDOW)
        .filter(|w| {
            let mut seen = [false; 256];
            w.iter()
                .filter(|&&b| !std::mem::replace(&mut seen[usize::from(b)], true))
                .count()
                >= 8
        })
        .map(|w| w.try_into().unwrap())
        .collect()
}
