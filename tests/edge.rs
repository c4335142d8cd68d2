//! The edge, tried as an attacker would, against a real daemon on loopback: spoofed INVITEs
//! that are never ACKed, floods from one source, TCP clients that never read or send one byte
//! a second, sources that are not trusted, messages over the size limits. Each test asserts
//! what the attacker gets (nothing, a 503, a 403, a closed connection) and that legitimate
//! calls from the trusted PBX (127.0.0.1 in the harness) go on being served.
//!
//! Other loopback addresses play the other hosts: 127.0.0.2 is an untrusted caller or a victim,
//! 127.0.0.3 an attacker. Linux routes all of 127.0.0.0/8 to lo, so nothing needs setting up.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

const VICTIM: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// An INVITE with an SDP offer whose media address is `media`, sent as if from `via`
/// (the top Via's sent-by and parameters), with a Contact of our choosing.
fn invite(target: SocketAddr, via: &str, call_id: &str, media: SocketAddr) -> String {
    let sdp = format!(
        "v=0\r\no=x 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\n",
        ip = media.ip(),
        port = media.port()
    );
    format!(
        "INVITE sip:demo@{target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {via}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:caller@{host}>;tag=f-{call_id}\r\n\
         To: <sip:demo@{target}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:caller@{media}>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {len}\r\n\r\n{sdp}",
        host = media.ip(),
        len = sdp.len()
    )
}

/// The ACK for the 200 `ok` to `invite_text` (dialog ACK: our From, the 200's To).
fn ack_for(invite_text: &str, ok: &str, via: &str) -> String {
    let to = header_value(ok, "To", Some("t")).expect("To in the 200");
    let from = header_value(invite_text, "From", Some("f")).expect("From");
    let call_id = header_value(invite_text, "Call-ID", Some("i")).expect("Call-ID");
    let contact = header_value(ok, "Contact", Some("m")).expect("Contact in the 200");
    let target = contact.trim_start_matches('<').split('>').next().unwrap();
    format!(
        "ACK {target} SIP/2.0\r\nVia: SIP/2.0/UDP {via}\r\nMax-Forwards: 70\r\n\
         From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Datagrams arriving at `sock` within `window`: (count, bytes).
fn count_datagrams(sock: &UdpSocket, window: Duration) -> (usize, usize) {
    let deadline = Instant::now() + window;
    let (mut n, mut bytes) = (0, 0);
    let mut buf = [0u8; 65535];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (n, bytes);
        }
        sock.set_read_timeout(Some(left)).unwrap();
        match sock.recv_from(&mut buf) {
            Ok((len, _)) => {
                n += 1;
                bytes += len;
            }
            Err(_) => return (n, bytes),
        }
    }
}

/// The daemon's resident memory in KiB (`VmRSS`).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

fn admin_addr() -> String {
    format!("127.0.0.1:{}", free_sip_port())
}

/// Reads from `stream` until the peer closes it (EOF or reset); how long that took, or None
/// if it stayed open for `limit`. Anything the peer sent meanwhile is discarded.
fn time_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(start.elapsed());
        if left.is_zero() {
            return None;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            Err(_) => return Some(start.elapsed()),
        }
    }
}

fn connect_from(ip: Ipv4Addr, target: SocketAddr) -> TcpStream {
    connect_with(ip, target, None)
}

/// A TCP connection from `ip`, with a receive buffer of `rcvbuf` bytes set before the
/// handshake (set later, the kernel drops the daemon's segments, window updates included,
/// and both directions stall: a different attack, which the message timeout also ends).
fn connect_with(ip: Ipv4Addr, target: SocketAddr, rcvbuf: Option<libc::c_int>) -> TcpStream {
    // std cannot bind or size buffers before connect; libc can, and ivrd depends on it.
    use std::os::fd::FromRawFd;
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket()");
        if let Some(v) = rcvbuf {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as _,
            );
        }
        let mut local: libc::sockaddr_in = std::mem::zeroed();
        local.sin_family = libc::AF_INET as _;
        local.sin_addr.s_addr = u32::from(ip).to_be();
        let rc = libc::bind(
            fd,
            (&local as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as _,
        );
        assert_eq!(rc, 0, "bind {ip}: {}", std::io::Error::last_os_error());
        let mut remote: libc::sockaddr_in = std::mem::zeroed();
        remote.sin_family = libc::AF_INET as _;
        remote.sin_port = target.port().to_be();
        let IpAddr::V4(t) = target.ip() else {
            panic!("IPv4 target")
        };
        remote.sin_addr.s_addr = u32::from(t).to_be();
        let rc = libc::connect(
            fd,
            (&remote as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as _,
        );
        assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    }
}

// ---------------------------------------------------------------------------------------------

/// RTP starts with the ACK, not with the 200: until the caller proves it received our answer,
/// the address in its SDP gets nothing. Then the same call, ACKed, hears prompts at once.
#[test]
fn no_rtp_leaves_before_the_ack() {
    let daemon = Daemon::start("[sip]\nt1_ms = 100\n");
    let sip = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    let media = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    let via = format!("{};branch=z9hG4bK-norpt;rport", sip.local_addr().unwrap());
    let inv = invite(
        daemon.sip_addr(),
        &via,
        "no-rtp-before-ack",
        media.local_addr().unwrap(),
    );
    sip.send_to(inv.as_bytes(), daemon.sip_addr()).unwrap();
    let raw = RawUdp {
        sock: sip,
        target: daemon.sip_addr(),
    };
    let ok = loop {
        let msg = raw
            .recv(Duration::from_secs(5))
            .expect("an answer to the INVITE");
        if status_code(&msg) == Some(200) {
            break msg;
        }
    };
    // The 200 is out and retransmitted; for a second, not one RTP packet.
    let (before, _) = count_datagrams(&media, Duration::from_millis(1000));
    assert_eq!(before, 0, "{before} RTP packets before the ACK");
    raw.send(ack_for(&inv, &ok, &via).as_bytes());
    let (after, _) = count_datagrams(&media, Duration::from_millis(600));
    assert!(
        after >= 10,
        "only {after} RTP packets in the 600 ms after the ACK"
    );
}

/// One INVITE from an attacker, naming a victim as its Via maddr, its Contact and its media
/// address, never ACKed: the victim gets nothing at all, and the attacker gets back no more
/// than the 100 and the retransmitted 200 (it once cost 2,268 RTP packets and 19 responses
/// aimed at the victim).
#[test]
fn a_spoofed_invite_reflects_nothing_to_a_third_host() {
    let daemon = Daemon::start("[sip]\nt1_ms = 100\nuntrusted = \"allow\"\n[demo]\nrounds = 1\n");
    let victim = UdpSocket::bind((VICTIM, 0)).unwrap();
    let port = victim.local_addr().unwrap().port();
    // The attacker's real address: responses without rport go to the source IP and the Via
    // port, so it listens on the victim's port number.
    let attacker = UdpSocket::bind((ATTACKER, port)).unwrap();
    let via = format!("{VICTIM}:{port};maddr={VICTIM};branch=z9hG4bK-spoof");
    let inv = invite(
        daemon.sip_addr(),
        &via,
        "spoofed",
        SocketAddr::from((VICTIM, port)),
    );
    attacker.send_to(inv.as_bytes(), daemon.sip_addr()).unwrap();
    let window = Duration::from_millis(4000); // the ACK wait is 16*T1 = 1.6 s
    let victim_thread = std::thread::spawn(move || count_datagrams(&victim, window));
    let mut got = Vec::new();
    let deadline = Instant::now() + window;
    let mut buf = [0u8; 65535];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        attacker
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match attacker.recv_from(&mut buf) {
            Ok((n, _)) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => break,
        }
    }
    let (to_victim, victim_bytes) = victim_thread.join().unwrap();
    assert_eq!(
        (to_victim, victim_bytes),
        (0, 0),
        "the victim named in Via maddr, Contact and SDP received traffic"
    );
    let codes: Vec<Option<u16>> = got.iter().map(|m| status_code(m)).collect();
    assert!(
        codes.iter().all(|c| matches!(c, Some(100) | Some(200))),
        "the attacker got more than 100/200: {codes:?}"
    );
    let oks = codes.iter().filter(|c| **c == Some(200)).count();
    assert!(
        (1..=6).contains(&oks),
        "{oks} copies of the 200 for an unACKed INVITE"
    );
    let reasons = daemon.wait_call_ends(1, Duration::from_secs(5));
    assert!(reasons[0].contains("ack"), "call ended as {reasons:?}");
}

/// A source outside `[sip] trusted` floods INVITEs it never ACKs (untrusted callers are
/// allowed here, so only the per-source budgets stand in its way). It gets at most its
/// unconfirmed share of the ports; the PBX's calls are answered and hear prompts throughout.
#[test]
fn an_unconfirmed_invite_flood_leaves_ports_for_the_trusted_pbx() {
    // 10 RTP ports (calls) in all; one untrusted source may hold 4 unconfirmed.
    let daemon = Daemon::start_with_rtp_ports(
        20,
        "[sip]\nuntrusted = \"allow\"\nsource_unconfirmed = 4\nsource_calls_per_sec = 100\n\
         [demo]\nrounds = 1\n",
    );
    let flood = UdpSocket::bind((VICTIM, 0)).unwrap();
    let sink = UdpSocket::bind((VICTIM, 0)).unwrap();
    let via_host = flood.local_addr().unwrap();
    for i in 0..60 {
        let via = format!("{via_host};branch=z9hG4bK-flood{i};rport");
        let inv = invite(
            daemon.sip_addr(),
            &via,
            &format!("flood-{i}"),
            sink.local_addr().unwrap(),
        );
        flood.send_to(inv.as_bytes(), daemon.sip_addr()).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    // While the flood's INVITEs wait for their ACK (8 s), the PBX places three calls.
    let calls: Vec<RawUac> = (0..3)
        .map(|_| RawUac::call(daemon.sip_addr(), "demo"))
        .collect();
    std::thread::sleep(Duration::from_millis(600));
    for (i, c) in calls.iter().enumerate() {
        assert!(
            c.rtp_received() > 5,
            "trusted call {i} hears nothing during the flood ({} packets)",
            c.rtp_received()
        );
    }
    // What the flood got: a 100 and a 200 for at most 4 INVITEs, 503 for the rest.
    let mut oks = std::collections::HashSet::new();
    let mut refused = 0;
    let mut buf = [0u8; 65535];
    flood
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    while let Ok((n, _)) = flood.recv_from(&mut buf) {
        let msg = String::from_utf8_lossy(&buf[..n]);
        match status_code(&msg) {
            Some(200) => {
                oks.insert(header_value(&msg, "Call-ID", Some("i")).unwrap());
            }
            Some(503) => {
                refused += 1;
                assert!(
                    header_value(&msg, "Retry-After", None).is_some(),
                    "503 without Retry-After:\n{msg}"
                );
            }
            _ => {}
        }
    }
    assert!(oks.len() <= 4, "{} flood INVITEs answered 200", oks.len());
    assert!(refused >= 50, "only {refused} flood INVITEs refused");
    daemon.expect_log("refusing requests over a limit", Duration::from_secs(1));
    assert!(
        !daemon.log_lines("unconfirmed").is_empty(),
        "no unconfirmed refusal logged"
    );
}

/// When every RTP port is in use, the caller is told so (503 with a Warning that names the
/// cause), and so is the log: it once said "no free RTP port" for a descriptor shortage too.
#[test]
fn when_rtp_ports_run_out_the_503_and_the_log_say_so() {
    // Two even ports: two calls.
    let daemon = Daemon::start_with_rtp_ports(4, "[demo]\nrounds = 1\n");
    let _a = RawUac::call(daemon.sip_addr(), "demo");
    let _b = RawUac::call(daemon.sip_addr(), "demo");
    let raw = RawUdp::new(daemon.sip_addr());
    let media = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    let via = format!("{};branch=z9hG4bK-third;rport", raw.local_addr());
    raw.send(
        invite(
            daemon.sip_addr(),
            &via,
            "third",
            media.local_addr().unwrap(),
        )
        .as_bytes(),
    );
    let refusal = loop {
        let msg = raw.recv(Duration::from_secs(5)).expect("an answer");
        if status_code(&msg).is_some_and(|c| c >= 200) {
            break msg;
        }
    };
    assert_eq!(status_code(&refusal), Some(503), "{refusal}");
    let warning = header_value(&refusal, "Warning", None).unwrap_or_default();
    assert!(
        warning.contains("no free RTP port"),
        "Warning: {warning:?}\n{refusal}"
    );
    daemon.expect_log("no free RTP port", Duration::from_secs(2));
}

/// With a trusted list, anyone else gets nothing at all (or a 403 with `untrusted =
/// "reject"`): no call, so no prompt and no SMS.
#[test]
fn untrusted_sources_get_no_answer_or_403() {
    for (mode, expect) in [("drop", None), ("reject", Some(403))] {
        let daemon = Daemon::start(&format!("[sip]\nuntrusted = \"{mode}\"\n"));
        let sock = UdpSocket::bind((VICTIM, 0)).unwrap();
        let raw = RawUdp {
            sock,
            target: daemon.sip_addr(),
        };
        let media = UdpSocket::bind((VICTIM, 0)).unwrap();
        let via = format!("{};branch=z9hG4bK-untrusted;rport", raw.local_addr());
        raw.send(
            invite(
                daemon.sip_addr(),
                &via,
                "untrusted",
                media.local_addr().unwrap(),
            )
            .as_bytes(),
        );
        raw.send(
            options_request(daemon.sip_addr(), raw.local_addr(), "untrusted-o", "UDP").as_bytes(),
        );
        let got = raw.recv_all(Duration::from_millis(1500));
        let codes: Vec<Option<u16>> = got.iter().map(|m| status_code(m)).collect();
        match expect {
            None => assert!(got.is_empty(), "{mode}: answered {codes:?}"),
            Some(code) => assert_eq!(codes, vec![Some(code); 2], "{mode}"),
        }
        let (rtp, _) = count_datagrams(&media, Duration::from_millis(200));
        assert_eq!(rtp, 0, "{mode}: RTP to an untrusted source");
        assert!(
            daemon.log_lines("call started").is_empty(),
            "{mode}: a call started"
        );
        // The PBX still gets through.
        let c = RawUac::call(daemon.sip_addr(), "demo");
        drop(c);
    }
}

/// An OPTIONS flood costs no memory (answered statelessly, no transaction kept), and messages
/// over the size limits are refused: 513 with only the top Via for 100 Vias, and a 70 KB
/// header line over TCP closes the connection unanswered.
#[test]
fn an_options_flood_keeps_no_state_and_oversized_messages_are_refused() {
    let admin = admin_addr();
    let daemon = Daemon::start(&format!("[admin]\nlisten = \"{admin}\"\n"));
    let raw = RawUdp::new(daemon.sip_addr());
    let reader = raw.sock.try_clone().unwrap();
    let counter = std::thread::spawn(move || count_datagrams(&reader, Duration::from_secs(3)));
    for i in 0..2000 {
        raw.send(
            options_request(
                daemon.sip_addr(),
                raw.local_addr(),
                &format!("flood-{i}"),
                "UDP",
            )
            .as_bytes(),
        );
        if i % 100 == 99 {
            // Let the daemon keep up; the point is what it keeps, not how fast it reads.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let (answers, _) = counter.join().unwrap();
    assert!(answers >= 1900, "{answers} of 2000 OPTIONS answered");
    // A retransmitted OPTIONS gets the very same answer (the To tag is derived, not stored).
    let again = options_request(daemon.sip_addr(), raw.local_addr(), "flood-7", "UDP");
    raw.send(again.as_bytes());
    raw.send(again.as_bytes());
    let pair = raw.recv_all(Duration::from_millis(500));
    assert_eq!(pair.len(), 2);
    assert_eq!(
        header_value(&pair[0], "To", Some("t")),
        header_value(&pair[1], "To", Some("t"))
    );
    let metrics = admin_get(&admin, "/metrics");
    assert_eq!(metric(&metrics, "ivrd_sip_transactions"), 0.0, "{metrics}");

    // 100 Vias: 513, echoing only the hop that sent it.
    let vias: String = (0..100)
        .map(|i| {
            format!(
                "Via: SIP/2.0/UDP 10.0.0.{}:5060;branch=z9hG4bKv{i}\r\n",
                i % 250
            )
        })
        .collect();
    let big = options_request(daemon.sip_addr(), raw.local_addr(), "many-vias", "UDP").replacen(
        "Max-Forwards",
        &format!("{vias}Max-Forwards"),
        1,
    );
    raw.send(big.as_bytes());
    let resp = raw
        .recv(Duration::from_secs(2))
        .expect("an answer to 100 Vias");
    assert_eq!(status_code(&resp), Some(513), "{resp}");
    assert_eq!(header_values(&resp, "Via").len(), 1, "{resp}");

    let mut tcp = TcpStream::connect(daemon.sip_addr()).unwrap();
    let long = options_request(daemon.sip_addr(), tcp.local_addr().unwrap(), "long", "TCP")
        .replacen(
            "Accept:",
            &format!("X-Long: {}\r\nAccept:", "a".repeat(70_000)),
            1,
        );
    let _ = tcp.write_all(long.as_bytes());
    let closed = time_until_closed(&mut tcp, Duration::from_secs(3));
    assert!(
        closed.is_some(),
        "a 70 KB header line kept the connection open"
    );
    let metrics = admin_get(&admin, "/metrics");
    assert!(
        metric(&metrics, "ivrd_sip_bad_messages_total{kind=\"too_large\"}") >= 2.0,
        "{metrics}"
    );
}

/// A TCP client that sends requests and never reads the answers: the daemon closes the
/// connection once its write queue fills, and its memory stays put (it once grew by 388 MiB).
#[test]
fn a_tcp_client_that_never_reads_is_disconnected_with_bounded_memory() {
    let daemon = Daemon::start("");
    // A small receive window, so the daemon's answers back up quickly.
    let mut tcp = connect_with(LOCALHOST, daemon.sip_addr(), Some(4096));
    let before = rss_kib(daemon.pid());
    let local = tcp.local_addr().unwrap();
    // The daemon (a debug build) reads slower than this loop writes, so writes wait; they end
    // with the reset when the daemon gives up on us.
    tcp.set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut sent = 0;
    let started = Instant::now();
    // 40,000 OPTIONS: about 20 MB of answers if the daemon queued them all.
    for i in 0..40_000 {
        let msg = options_request(daemon.sip_addr(), local, &format!("noread-{i}"), "TCP");
        if tcp.write_all(msg.as_bytes()).is_err() {
            break;
        }
        sent += 1;
        if started.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    daemon.expect_log("TCP peer is not reading", Duration::from_secs(5));
    let after = rss_kib(daemon.pid());
    assert!(
        after < before + 32 * 1024,
        "RSS grew from {before} to {after} KiB for one client that does not read ({sent} requests sent)"
    );
    // The connection is gone: reading now drains what the kernel holds, then ends.
    assert!(
        time_until_closed(&mut tcp, Duration::from_secs(5)).is_some(),
        "the connection is still open"
    );
    // And the PBX is still served.
    let c = RawUac::call(daemon.sip_addr(), "demo");
    drop(c);
}

/// A connection that sends nothing, one that goes quiet after a message, and one that sends a
/// byte at a time are all closed; a TCP call, quiet for longer than the idle time, keeps its
/// connection and gets its BYE on it.
#[test]
fn idle_and_slow_tcp_connections_are_closed_but_a_call_keeps_its_own() {
    let daemon = Daemon::start(
        "[sip]\ntcp_idle_secs = 2\ntcp_message_timeout_ms = 1000\n[demo]\nrounds = 1\n\
         first_digit_timeout_ms = 4000\n",
    );
    // Silent from the start: closed at the first-message deadline.
    let mut silent = TcpStream::connect(daemon.sip_addr()).unwrap();
    let t = time_until_closed(&mut silent, Duration::from_secs(5)).expect("silent stays open");
    assert!(t >= Duration::from_millis(800), "closed after {t:?}");

    // One OPTIONS, answered, then quiet: closed at the idle time.
    let mut quiet = SipTcp::connect(daemon.sip_addr());
    let local = quiet.local_addr();
    quiet.send(options_request(daemon.sip_addr(), local, "quiet", "TCP").as_bytes());
    let resp = quiet
        .recv(Duration::from_secs(2))
        .expect("an answer over TCP");
    assert_eq!(status_code(&resp), Some(200));
    let t = time_until_closed(&mut quiet.stream, Duration::from_secs(6)).expect("quiet stays open");
    assert!(
        t >= Duration::from_millis(1500),
        "an idle connection closed after {t:?}, before the 2 s idle time"
    );

    // Slowloris: one byte every 150 ms never completes a message in time.
    let mut slow = TcpStream::connect(daemon.sip_addr()).unwrap();
    let msg = options_request(daemon.sip_addr(), slow.local_addr().unwrap(), "slow", "TCP");
    let start = Instant::now();
    let mut closed = false;
    for b in msg.as_bytes() {
        if slow.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(150));
        if start.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    let closed = closed || time_until_closed(&mut slow, Duration::from_millis(500)).is_some();
    assert!(
        closed,
        "a byte every 150 ms kept the connection open for 8 s"
    );
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "slowloris closed only after {:?}",
        start.elapsed()
    );

    // A call over TCP: nobody types, so the demo waits 4 s, says goodbye and hangs up; the
    // connection carried nothing for longer than the idle time but must still carry the BYE.
    let run = Sipp::new("uac_wait_bye.xml", daemon.sip_addr())
        .tcp()
        .timeout_secs(40)
        .run();
    run.assert_ok();
    assert!(
        run.received().iter().any(|m| m.text.starts_with("BYE ")),
        "no BYE over TCP\n{}",
        run.report()
    );
}

/// Connections are capped per untrusted source and in total; trusted peers are let in
/// beyond the total, so a flood of connections cannot lock the PBX out.
#[test]
fn tcp_connections_are_capped_and_the_pbx_still_gets_in() {
    let daemon = Daemon::start(
        "[sip]\nuntrusted = \"allow\"\ntcp_max_per_source = 3\ntcp_max_connections = 5\n",
    );
    let target = daemon.sip_addr();
    // Three from 127.0.0.2 are taken; the fourth is closed at once.
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect_from(VICTIM, target)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut fourth = connect_from(VICTIM, target);
    assert!(
        time_until_closed(&mut fourth, Duration::from_secs(2)).is_some(),
        "a fourth connection from one source stayed open"
    );
    // Two more from 127.0.0.3 fill the total of 5; a sixth from anywhere untrusted is closed.
    held.push(connect_from(ATTACKER, target));
    held.push(connect_from(ATTACKER, target));
    std::thread::sleep(Duration::from_millis(200));
    let mut sixth = connect_from(Ipv4Addr::new(127, 0, 0, 4), target);
    assert!(
        time_until_closed(&mut sixth, Duration::from_secs(2)).is_some(),
        "a connection beyond the total stayed open"
    );
    // The trusted PBX still connects and is answered.
    let mut pbx = SipTcp::connect(target);
    let local = pbx.local_addr();
    pbx.send(options_request(target, local, "pbx", "TCP").as_bytes());
    let resp = pbx
        .recv(Duration::from_secs(2))
        .expect("the PBX is answered");
    assert_eq!(status_code(&resp), Some(200));
    drop(held);
}
