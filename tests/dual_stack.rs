//! Media in the caller's address family. An IPv6 offer gets an IPv6 answer and IPv6 RTP when
//! `[media] rtp_ip6` is set, and a 488 naming the reason when it is not: it once got
//! `c=IN IP4 127.0.0.1` back, and ivrd then sent 1,001 packets to `[::1]:0` and lost the
//! digits.

mod common;

use common::*;
use ivrd::media::dtmf::{Digit, rfc4733_payload};
use ivrd::media::rtp::{HEADER_LEN, RtpSender};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// A daemon listening for SIP on 127.0.0.1 and [::1] (same port), trusting both.
fn dual_stack_daemon(extra: &str) -> Daemon {
    Daemon::start(&format!(
        "[sip]\nudp = [\"127.0.0.1:{{sip_port}}\", \"[::1]:{{sip_port}}\"]\n\
         trusted = [\"127.0.0.1\", \"::1\"]\n{extra}"
    ))
}

fn v6_invite(target: SocketAddr, sip: SocketAddr, media: SocketAddr, call_id: &str) -> String {
    let sdp = format!(
        "v=0\r\no=x 1 1 IN IP6 ::1\r\ns=-\r\nc=IN IP6 ::1\r\nt=0 0\r\n\
         m=audio {} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\n",
        media.port()
    );
    format!(
        "INVITE sip:demo@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {sip};branch=z9hG4bK-{call_id};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:caller@[::1]>;tag=f-{call_id}\r\nTo: <sip:demo@{target}>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{sip}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

/// The final response to an INVITE sent from `sip`.
fn final_response(sip: &UdpSocket) -> String {
    let mut buf = [0u8; 65535];
    sip.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    loop {
        let (n, _) = sip.recv_from(&mut buf).expect("an answer to the INVITE");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if status_code(&msg).is_some_and(|c| c >= 200) {
            return msg;
        }
    }
}

#[test]
fn an_ipv6_caller_gets_ipv6_media_and_its_digits_count() {
    let daemon = dual_stack_daemon("[media]\nrtp_ip6 = \"::1\"\n[demo]\nmax_digits = 2\n");
    let target = SocketAddr::new("::1".parse().unwrap(), daemon.sip_port());
    let sip = UdpSocket::bind("[::1]:0").unwrap();
    let media = UdpSocket::bind("[::1]:0").unwrap();
    let inv = v6_invite(
        target,
        sip.local_addr().unwrap(),
        media.local_addr().unwrap(),
        "v6-call",
    );
    sip.send_to(inv.as_bytes(), target).unwrap();
    let ok = final_response(&sip);
    assert_eq!(status_code(&ok), Some(200), "{ok}");
    let body = sip_body(&ok);
    assert!(body.contains("c=IN IP6 ::1"), "answer:\n{body}");
    let port: u16 = body
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("m=audio port");
    let to = header_value(&ok, "To", Some("t")).unwrap();
    let ack = format!(
        "ACK sip:ivrd@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-v6ack;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:caller@[::1]>;tag=f-v6-call\r\nTo: {to}\r\n\
         Call-ID: v6-call\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        sip.local_addr().unwrap()
    );
    sip.send_to(ack.as_bytes(), target).unwrap();
    // Prompts arrive over IPv6.
    media
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = media.recv_from(&mut buf).expect("RTP over IPv6");
    assert!(n > HEADER_LEN && from.is_ipv6(), "{n} bytes from {from}");
    // Two RFC 4733 presses from the caller's SDP address.
    let ivrd_rtp = SocketAddr::new("::1".parse().unwrap(), port);
    let mut sender = RtpSender::new_random();
    for key in ['4', '2'] {
        let ts = sender.timestamp;
        for (end, dur) in [
            (false, 160),
            (false, 320),
            (true, 480),
            (true, 480),
            (true, 480),
        ] {
            let mut pkt = [0u8; HEADER_LEN + 4];
            sender.timestamp = ts;
            sender.write_header(&mut pkt, 101, 0);
            pkt[HEADER_LEN..].copy_from_slice(&rfc4733_payload(
                Digit::from_char(key).unwrap(),
                end,
                10,
                dur,
            ));
            media.send_to(&pkt, ivrd_rtp).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        sender.timestamp = ts.wrapping_add(2000);
        std::thread::sleep(Duration::from_millis(200));
    }
    daemon.expect_log("collected digits=42", Duration::from_secs(10));
}

#[test]
fn an_ipv6_offer_without_an_ipv6_media_address_gets_488() {
    let daemon = dual_stack_daemon("");
    let target = SocketAddr::new("::1".parse().unwrap(), daemon.sip_port());
    let sip = UdpSocket::bind("[::1]:0").unwrap();
    let media = UdpSocket::bind("[::1]:0").unwrap();
    let inv = v6_invite(
        target,
        sip.local_addr().unwrap(),
        media.local_addr().unwrap(),
        "v6-488",
    );
    sip.send_to(inv.as_bytes(), target).unwrap();
    let resp = final_response(&sip);
    assert_eq!(status_code(&resp), Some(488), "{resp}");
    let warning = header_value(&resp, "Warning", None).unwrap_or_default();
    assert!(warning.contains("IPv6"), "{resp}");
    // And nothing was sent to the caller's media address.
    media
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(media.recv_from(&mut buf).is_err(), "RTP after a 488");
}
