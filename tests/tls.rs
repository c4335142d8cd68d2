//! SIP over TLS against a real daemon, from a small rustls client (Debian's SIPp is built
//! without TLS): OPTIONS and a whole call (INVITE, ACK, RTP, an in-dialog INFO, BYE) on one
//! connection; `sips:` URIs (TLS on every hop) and their refusal over UDP; mutual TLS; and a
//! certificate renewed by reload while a TLS call is up. Certificates are made by the test.

mod common;

use common::*;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

fn toml_path(p: &Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}

/// A daemon with a TLS listener on a port of its own; returns it and the TLS address.
fn tls_daemon(pki: &TestPki, dir: &Path, extra: &str) -> (Daemon, SocketAddr) {
    let (cert, key, _) = pki.write_server(dir);
    let tls_port = free_sip_port();
    let daemon = Daemon::start(&format!(
        "[sip]\ntls = [\"127.0.0.1:{tls_port}\"]\n[tls]\ncert = {}\nkey = {}\n{extra}",
        toml_path(&cert),
        toml_path(&key)
    ));
    (daemon, SocketAddr::from((LOCALHOST, tls_port)))
}

fn options(target: SocketAddr, local: SocketAddr, call_id: &str, uri_scheme: &str) -> String {
    options_request(target, local, call_id, "TLS").replacen(
        "OPTIONS sip:",
        &format!("OPTIONS {uri_scheme}:"),
        1,
    )
}

fn invite(target: SocketAddr, local: SocketAddr, media: SocketAddr, scheme: &str) -> String {
    let sdp = format!(
        "v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\n",
        media.port()
    );
    format!(
        "INVITE {scheme}:demo@{target} SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bK-tlsinv;rport\r\n\
         Max-Forwards: 70\r\nFrom: <{scheme}:caller@{local}>;tag=tls1\r\nTo: <{scheme}:demo@{target}>\r\n\
         Call-ID: tls-call\r\nCSeq: 1 INVITE\r\nContact: <{scheme}:caller@{local};transport=tls>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

fn in_dialog(
    method: &str,
    cseq: u32,
    ok: &str,
    local: SocketAddr,
    extra: &str,
    body: &str,
) -> String {
    let to = header_value(ok, "To", Some("t")).expect("To");
    let contact = header_value(ok, "Contact", Some("m")).expect("Contact");
    let target = contact.trim_start_matches('<').split('>').next().unwrap();
    format!(
        "{method} {target} SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bK-tls{method}{cseq};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:caller@{local}>;tag=tls1\r\nTo: {to}\r\nCall-ID: tls-call\r\n\
         CSeq: {cseq} {method}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn rtp_arrives(media: &UdpSocket) -> bool {
    media
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut buf = [0u8; 2048];
    media.recv_from(&mut buf).is_ok()
}

/// A call set up, answered, used and ended over one TLS connection: the 200's Contact says
/// `transport=tls` (the Request-URI was `sip:`), the in-dialog INFO digit and the BYE travel
/// the same connection, and the audit-facing log names the transport.
#[test]
fn options_and_a_whole_call_over_tls() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let (daemon, tls) = tls_daemon(&pki, dir.path(), "[demo]\nmax_digits = 1\n");
    let mut c = SipTls::connect(tls, &pki.ca_pem(), None).expect("TLS handshake");
    let local = c.local_addr();
    c.send(options(tls, local, "tls-opt", "sip").as_bytes());
    let ok = c
        .final_response(Duration::from_secs(3))
        .expect("OPTIONS answered");
    assert_eq!(status_code(&ok), Some(200), "{ok}");
    assert!(
        header_value(&ok, "Via", Some("v"))
            .unwrap()
            .contains("SIP/2.0/TLS"),
        "{ok}"
    );

    let media = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.send(invite(tls, local, media.local_addr().unwrap(), "sip").as_bytes());
    let ok = c
        .final_response(Duration::from_secs(5))
        .expect("INVITE answered");
    assert_eq!(status_code(&ok), Some(200), "{ok}");
    let contact = header_value(&ok, "Contact", Some("m")).unwrap();
    assert!(contact.contains(";transport=tls"), "Contact: {contact}");
    c.send(in_dialog("ACK", 1, &ok, local, "", "").as_bytes());
    assert!(rtp_arrives(&media), "no RTP after the ACK");
    daemon.expect_log("transport=\"TLS\"", Duration::from_secs(2));
    // An INFO digit ends the one-digit collect; its answer comes on this connection.
    let info = in_dialog(
        "INFO",
        2,
        &ok,
        local,
        "Content-Type: application/dtmf-relay\r\n",
        "Signal=7\r\nDuration=160\r\n",
    );
    c.send(info.as_bytes());
    let info_ok = c
        .final_response(Duration::from_secs(3))
        .expect("INFO answered");
    assert_eq!(status_code(&info_ok), Some(200), "{info_ok}");
    daemon.expect_log("collected digits=7", Duration::from_secs(5));
    c.send(in_dialog("BYE", 3, &ok, local, "", "").as_bytes());
    let bye_ok = c
        .final_response(Duration::from_secs(3))
        .expect("BYE answered");
    assert_eq!(status_code(&bye_ok), Some(200), "{bye_ok}");
    // The audit row says the call came over TLS.
    let db = daemon.dir().join("ivrd.db");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let row = loop {
        let rows = ivrd::store::Store::open(&db)
            .and_then(|s| s.recent_audit(1))
            .unwrap_or_default();
        if let Some(row) = rows.into_iter().next() {
            break row;
        }
        assert!(std::time::Instant::now() < deadline, "no audit row");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(row.call_id, "tls-call");
    assert_eq!(row.transport.as_deref(), Some("TLS"), "{row:#?}");
}

/// `sips:` means TLS on every hop (RFC 5630): over TLS the Contact is `sips:`; over UDP the
/// request is refused with 416 rather than served in clear.
#[test]
fn sips_uris_need_tls() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let (daemon, tls) = tls_daemon(&pki, dir.path(), "");
    let mut c = SipTls::connect(tls, &pki.ca_pem(), None).expect("TLS handshake");
    let local = c.local_addr();
    let media = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.send(invite(tls, local, media.local_addr().unwrap(), "sips").as_bytes());
    let ok = c
        .final_response(Duration::from_secs(5))
        .expect("INVITE answered");
    assert_eq!(status_code(&ok), Some(200), "{ok}");
    let contact = header_value(&ok, "Contact", Some("m")).unwrap();
    assert!(contact.starts_with("<sips:"), "Contact: {contact}");
    c.send(in_dialog("ACK", 1, &ok, local, "", "").as_bytes());
    c.send(in_dialog("BYE", 2, &ok, local, "", "").as_bytes());

    let raw = RawUdp::new(daemon.sip_addr());
    let over_udp = options_request(daemon.sip_addr(), raw.local_addr(), "sips-udp", "UDP")
        .replacen("OPTIONS sip:", "OPTIONS sips:", 1);
    raw.send(over_udp.as_bytes());
    let resp = raw
        .recv(Duration::from_secs(3))
        .expect("an answer over UDP");
    assert_eq!(status_code(&resp), Some(416), "{resp}");
}

/// Mutual TLS: with `require_client_cert`, a client without a certificate from the CA does
/// not get through the handshake; one with it does.
#[test]
fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("client-ca.pem");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    let (daemon, tls) = tls_daemon(
        &pki,
        dir.path(),
        &format!(
            "client_ca = {}\nrequire_client_cert = true\n",
            toml_path(&ca)
        ),
    );
    let refused = SipTls::connect(tls, &pki.ca_pem(), None).and_then(|mut c| {
        // With TLS 1.3 the client learns of the refusal on its first read.
        let local = c.local_addr();
        c.send(options(tls, local, "no-cert", "sip").as_bytes());
        c.recv(Duration::from_secs(2))
            .ok_or_else(|| std::io::Error::other("closed"))
    });
    assert!(
        refused.is_err(),
        "a client without a certificate was served"
    );
    let other = TestPki::new();
    let (cert, key) = other.leaf(&["pbx.test"]);
    let wrong = SipTls::connect(tls, &pki.ca_pem(), Some((&cert, &key))).and_then(|mut c| {
        let local = c.local_addr();
        c.send(options(tls, local, "wrong-ca", "sip").as_bytes());
        c.recv(Duration::from_secs(2))
            .ok_or_else(|| std::io::Error::other("closed"))
    });
    assert!(wrong.is_err(), "a certificate from another CA was accepted");
    let (cert, key) = pki.leaf(&["pbx.test"]);
    let mut c = SipTls::connect(tls, &pki.ca_pem(), Some((&cert, &key))).expect("mutual TLS");
    let local = c.local_addr();
    c.send(options(tls, local, "with-cert", "sip").as_bytes());
    let ok = c.final_response(Duration::from_secs(3)).expect("answered");
    assert_eq!(status_code(&ok), Some(200), "{ok}");
    assert!(
        daemon.log_lines("TLS handshake failed").len() >= 2,
        "the refused handshakes are logged"
    );
}

/// A renewed certificate, loaded by a reload while a TLS call is up: the call goes on over its
/// connection (an in-dialog request and the BYE), and a new connection sees the new
/// certificate. A reload with a key that does not match keeps the running certificate.
#[test]
fn a_renewed_certificate_is_loaded_without_dropping_the_call() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("127.0.0.1:{}", free_sip_port());
    let (daemon, tls) = tls_daemon(
        &pki,
        dir.path(),
        &format!("[admin]\nlisten = \"{admin}\"\n"),
    );
    let mut call = SipTls::connect(tls, &pki.ca_pem(), None).expect("TLS handshake");
    let old_cert = call.server_cert();
    let local = call.local_addr();
    let media = UdpSocket::bind("127.0.0.1:0").unwrap();
    call.send(invite(tls, local, media.local_addr().unwrap(), "sip").as_bytes());
    let ok = call
        .final_response(Duration::from_secs(5))
        .expect("INVITE answered");
    call.send(in_dialog("ACK", 1, &ok, local, "", "").as_bytes());
    assert!(rtp_arrives(&media));

    // Renew: a new certificate and key in the same files, then reload.
    pki.write_server(dir.path());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ivrd"))
        .args(["reload", "--config"])
        .arg(daemon.config_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fresh = SipTls::connect(tls, &pki.ca_pem(), None).expect("TLS after the reload");
    let new_cert = fresh.server_cert();
    assert_ne!(
        old_cert, new_cert,
        "the new connection got the old certificate"
    );

    // The call is still up on its connection.
    let info = in_dialog(
        "INFO",
        2,
        &ok,
        local,
        "Content-Type: application/dtmf-relay\r\n",
        "Signal=5\r\nDuration=160\r\n",
    );
    call.send(info.as_bytes());
    let info_ok = call
        .final_response(Duration::from_secs(3))
        .expect("INFO answered");
    assert_eq!(status_code(&info_ok), Some(200), "{info_ok}");
    assert!(rtp_arrives(&media), "the call's media stopped");

    // A key that does not match its certificate: the reload fails, the running one stays.
    let (other_cert, _) = pki.leaf(&["127.0.0.1"]);
    std::fs::write(dir.path().join("cert.pem"), other_cert).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ivrd"))
        .args(["reload", "--config"])
        .arg(daemon.config_path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not belong"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = SipTls::connect(tls, &pki.ca_pem(), None).expect("TLS after a failed reload");
    assert_eq!(again.server_cert(), new_cert);

    call.send(in_dialog("BYE", 3, &ok, local, "", "").as_bytes());
    let bye_ok = call
        .final_response(Duration::from_secs(3))
        .expect("BYE answered");
    assert_eq!(status_code(&bye_ok), Some(200), "{bye_ok}");
}

/// An INVITE whose Contact names the caller's own TLS listener (`port`), sent on `c`.
fn invite_with_contact(
    c: &mut SipTls,
    tls: SocketAddr,
    media: &UdpSocket,
    port: u16,
    call_id: &str,
) -> String {
    let local = c.local_addr();
    let text = invite(tls, local, media.local_addr().unwrap(), "sip")
        .replace(
            &format!("Contact: <sip:caller@{local};transport=tls>"),
            &format!("Contact: <sip:caller@127.0.0.1:{port};transport=tls>"),
        )
        .replace("Call-ID: tls-call", &format!("Call-ID: {call_id}"));
    c.send(text.as_bytes());
    let ok = c
        .final_response(Duration::from_secs(5))
        .expect("INVITE answered");
    assert_eq!(status_code(&ok), Some(200), "{ok}");
    c.send(
        in_dialog("ACK", 1, &ok, local, "", "")
            .replace("Call-ID: tls-call", &format!("Call-ID: {call_id}"))
            .as_bytes(),
    );
    ok
}

/// The PBX closed its connection while the call was up (Kamailio does after
/// `tcp_connection_lifetime`): ivrd's BYE opens a TLS connection of its own to the Contact,
/// checks the server's certificate against `[tls] server_ca`, presents its own certificate,
/// and the BYE arrives. A server whose certificate does not chain to `server_ca` gets nothing:
/// the handshake fails, and the log and the metrics say so.
#[test]
fn a_request_reopens_tls_to_the_contact_when_the_connection_is_gone() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("127.0.0.1:{}", free_sip_port());
    let (daemon, tls) = tls_daemon(
        &pki,
        dir.path(),
        &format!(
            "server_ca = {}\n[media]\nmax_call_secs = 2\nrtp_timeout_secs = 0\n[admin]\nlisten = \"{admin}\"\n",
            toml_path(&dir.path().join("ca.pem"))
        ),
    );
    let media = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer_leaf = pki.leaf(&["127.0.0.1"]);

    // The PBX's TLS listener, then a call whose connection the PBX drops at once.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut c = SipTls::connect(tls, &pki.ca_pem(), None).expect("TLS handshake");
    invite_with_contact(&mut c, tls, &media, port, "reopen-1");
    drop(c);
    let mut back = SipTls::accept(
        &listener,
        (&peer_leaf.0, &peer_leaf.1),
        Some(&pki.ca_pem()),
        Duration::from_secs(8),
    )
    .expect("ivrd connects back over TLS, with a certificate from our CA");
    assert!(
        back.client_cert().is_some(),
        "ivrd presented no certificate"
    );
    let bye = back
        .recv(Duration::from_secs(5))
        .expect("a request from ivrd");
    assert!(bye.starts_with("BYE sip:caller@127.0.0.1:"), "{bye}");
    assert!(
        header_value(&bye, "Via", Some("v"))
            .unwrap()
            .starts_with("SIP/2.0/TLS"),
        "{bye}"
    );
    let answer = format!(
        "SIP/2.0 200 OK\r\nVia: {}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {}\r\nContent-Length: 0\r\n\r\n",
        header_value(&bye, "Via", Some("v")).unwrap(),
        header_value(&bye, "From", Some("f")).unwrap(),
        header_value(&bye, "To", Some("t")).unwrap(),
        header_value(&bye, "Call-ID", Some("i")).unwrap(),
        header_value(&bye, "CSeq", None).unwrap(),
    );
    back.send(answer.as_bytes());
    // The call ends once its BYE is answered; an unanswered one would log so first.
    daemon.expect_log("reason=\"max-duration\"", Duration::from_secs(5));
    assert!(daemon.log_lines("BYE got no answer").is_empty());

    // A server from another CA: ivrd refuses it and the BYE is not sent in its hands.
    let stranger = TestPki::new().leaf(&["127.0.0.1"]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut c = SipTls::connect(tls, &pki.ca_pem(), None).expect("TLS handshake");
    invite_with_contact(&mut c, tls, &media, port, "reopen-2");
    drop(c);
    let refused = SipTls::accept(
        &listener,
        (&stranger.0, &stranger.1),
        None,
        Duration::from_secs(8),
    )
    .and_then(|mut s| {
        s.recv(Duration::from_secs(2))
            .ok_or_else(|| std::io::Error::other("nothing"))
    });
    assert!(refused.is_err(), "ivrd sent its BYE to an untrusted server");
    daemon.expect_log(
        "could not open a connection for a dialog's request",
        Duration::from_secs(5),
    );
    let metrics = admin_get(&admin, "/metrics");
    assert_eq!(metric(&metrics, "ivrd_sip_connects_total"), 2.0);
    assert_eq!(metric(&metrics, "ivrd_sip_connect_failures_total"), 1.0);
}
