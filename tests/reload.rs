//! Reload as an operator sees it: `ivrd reload` (what `systemctl reload` runs) waits for the
//! daemon's verdict and fails when the reload failed; a changed setting that needs a restart
//! is named, only when it changed; a setting a reload applies reaches the next call; `/health`
//! and `ivrd status` show the last reload.

mod common;

use common::*;
use std::net::UdpSocket;
use std::process::{Command, Output};
use std::time::Duration;

fn ivrd_reload(daemon: &Daemon) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ivrd"))
        .args(["reload", "--config"])
        .arg(daemon.config_path())
        .output()
        .expect("run ivrd reload")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn set(table: &mut toml::Table, section: &str, key: &str, value: toml::Value) {
    table
        .entry(section)
        .or_insert_with(|| toml::Value::Table(Default::default()))
        .as_table_mut()
        .expect("a section")
        .insert(key.into(), value);
}

#[test]
fn reload_reports_its_verdict_and_names_what_needs_a_restart() {
    let admin = format!("127.0.0.1:{}", free_sip_port());
    let daemon = Daemon::start(&format!("[admin]\nlisten = \"{admin}\"\n"));

    // Nothing changed: reloaded, and nothing is said about restarts.
    let out = ivrd_reload(&daemon);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).trim(), "reloaded", "{}", text(&out));

    // A restart-only setting changed: still reloaded, and it is named.
    daemon.edit_config(|t| set(t, "sip", "t1_ms", 400.into()));
    let out = ivrd_reload(&daemon);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("only on restart: [sip] t1_ms"),
        "{}",
        text(&out)
    );
    assert_eq!(
        daemon.log_lines("take effect only on restart").len(),
        1,
        "one warning for one changed reload"
    );

    // A bad value: the reload fails, the command fails, the running configuration stays.
    daemon.edit_config(|t| set(t, "limits", "pin_ttl_secs", 99_999.into()));
    let out = ivrd_reload(&daemon);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("pin_ttl_secs"), "{}", text(&out));
    let health = admin_get(&admin, "/health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(
        health.contains("\"ok\":false") && health.contains("pin_ttl_secs"),
        "{health}"
    );
    let status = Command::new(env!("CARGO_BIN_EXE_ivrd"))
        .args(["status", "--config"])
        .arg(daemon.config_path())
        .output()
        .unwrap();
    assert!(
        text(&status).contains("last reload") && text(&status).contains("reload failed"),
        "{}",
        text(&status)
    );
    // And the daemon still answers calls.
    drop(RawUac::call(daemon.sip_addr(), "demo"));
}

#[test]
fn a_reloaded_setting_reaches_the_next_call() {
    let admin = format!("127.0.0.1:{}", free_sip_port());
    let daemon = Daemon::start(&format!("[admin]\nlisten = \"{admin}\"\n"));
    // Ring before answering, from the next call on.
    daemon.edit_config(|t| set(t, "sip", "ring_ms", 300.into()));
    let out = ivrd_reload(&daemon);
    assert!(out.status.success(), "{}", text(&out));
    let sip = UdpSocket::bind("127.0.0.1:0").unwrap();
    let media = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = sip.local_addr().unwrap();
    let sdp = format!(
        "v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {} RTP/AVP 0\r\n",
        media.local_addr().unwrap().port()
    );
    let target = daemon.sip_addr();
    let invite = format!(
        "INVITE sip:demo@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-ring;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:c@{local}>;tag=r1\r\nTo: <sip:demo@{target}>\r\n\
         Call-ID: ring-after-reload\r\nCSeq: 1 INVITE\r\nContact: <sip:c@{local}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    sip.send_to(invite.as_bytes(), target).unwrap();
    sip.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut codes = Vec::new();
    let mut buf = [0u8; 65535];
    while !codes.contains(&200) {
        let (n, _) = sip.recv_from(&mut buf).expect("answers to the INVITE");
        if let Some(code) = status_code(&String::from_utf8_lossy(&buf[..n])) {
            codes.push(code);
        }
    }
    assert!(
        codes.contains(&180),
        "no 180 Ringing after ring_ms was reloaded: {codes:?}"
    );
}
