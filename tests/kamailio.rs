//! Kamailio (Debian `kamailio`, 5.6) as the PBX in front of ivrd, the way ivrd is deployed:
//! callers reach ivrd only through the proxy, which record-routes the calls, so ivrd's REFER
//! goes back through it, and it challenges that REFER (407, digest with qop=auth) before
//! relaying it. Each test starts its own Kamailio on loopback (tests/kamailio/kamailio.cfg.in,
//! tests/common/kamailio.rs) and stops it at the end. The caller is baresip, which follows the
//! REFER to the queue, a SIPp UAS (tests/sipp/queue_uas.xml) that Kamailio serves too.
//!
//! - Over UDP, a full verification: customer number, PIN from the SMS, REFER through Kamailio
//!   (challenged, answered with `[transfer] username`/`password`), the queue call through
//!   Kamailio.
//! - Over TCP (caller to Kamailio to ivrd), the PBX's password changes: Kamailio restarts
//!   with the new one, and ivrd's REFER with the old password fails (407 again: the transfer
//!   fails and the caller hears goodbye); once ivrd's `password_file` has the new one and
//!   `ivrd reload` has run, the next REFER passes.
//!
//! Trust: Kamailio forwards from 127.0.0.1, which the harness config trusts.
//! Needs `kamailio`, `baresip` and `sipp`: run scripts/install-test-deps.sh.

mod common;

use common::kamailio::{KAMAILIO_USER, Kamailio};
use common::verify::*;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The queue, a SIPp UAS on `port`, answering one call (the test hangs it up).
fn start_queue(port: u16, daemon: &Daemon) -> JoinHandle<SippRun> {
    let sipp = Sipp::new("queue_uas.xml", daemon.sip_addr())
        .local_port(port)
        .timeout_secs(90);
    let queue = std::thread::spawn(move || sipp.run());
    wait_udp_bound(port, Duration::from_secs(10));
    queue
}

/// The INVITE the queue received.
fn queue_invite(run: &SippRun) -> TracedMessage {
    run.received()
        .into_iter()
        .find(|m| m.text.starts_with("INVITE "))
        .unwrap_or_else(|| panic!("the queue got no INVITE\n{}", run.report()))
}

/// How many times ivrd's REFER met Kamailio's challenge with no credentials, with credentials
/// that failed, and passed it.
fn refer_auth_counts(kamailio: &Kamailio) -> (usize, usize, usize) {
    (
        kamailio.count("REFER challenged (credentials of user [<null>])"),
        kamailio.count(&format!(
            "REFER challenged (credentials of user [{KAMAILIO_USER}])"
        )),
        kamailio.count(&format!("REFER authenticated (user [{KAMAILIO_USER}])")),
    )
}

#[test]
fn over_udp_a_verified_caller_is_transferred_through_kamailio_which_challenges_the_refer() {
    require_tool("kamailio");
    require_tool("baresip");
    require_tool("sipp");
    let started = Instant::now();
    let kamailio_port = free_sip_port();
    let queue_port = free_sip_port();
    // The queue lives behind the PBX: ivrd refers the caller to Kamailio.
    let rig = Rig::new(200, kamailio_port);
    let password = "kam-udp-s3cret";
    let daemon = rig.daemon(&format!(
        "[transfer]\nusername = \"{KAMAILIO_USER}\"\npassword = \"{password}\"\n"
    ));
    let kamailio = Kamailio::start(kamailio_port, daemon.sip_port(), queue_port, password);
    let queue = start_queue(queue_port, &daemon);

    let mut phone = Baresip::start(2);
    phone.command("dial", &format!("sip:verify@{}", kamailio.addr()));
    phone.wait_event("CALL_ESTABLISHED", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1000));
    phone.type_digits(ERIKA, KEY_GAP);
    let posts = rig.sms.wait_posts(1, FLOW_TIMEOUT);
    let pin = check_sms(&posts[0], ERIKA_MOBILE, "de");
    phone.type_digits(&pin, KEY_GAP);

    // baresip follows the REFER through Kamailio: the queue call is established, and ivrd
    // leaves the first call.
    phone.wait_events("CALL_ESTABLISHED", 2, FLOW_TIMEOUT);
    let reasons = daemon.wait_call_ends(1, Duration::from_secs(20));
    assert_eq!(
        reasons[0], "transferred",
        "ivrd's call should end as transferred"
    );
    let row = rig.wait_audit(1, Duration::from_secs(15)).remove(0);
    phone.command("hangup", "");
    let run = queue.join().expect("queue SIPp thread");
    run.assert_ok();

    assert_eq!(row.outcome, "verified", "audit row: {row:#?}");
    assert_eq!(
        row.customer_id.as_deref(),
        Some(ERIKA),
        "audit row: {row:#?}"
    );
    assert_eq!(
        row.transfer.as_ref().map(|t| (t.target.as_str(), t.status)),
        Some((rig.queue.as_str(), Some(200))),
        "audit row: {row:#?}"
    );

    // Every hop went through Kamailio, over UDP.
    let trace = kamailio.trace().join("\n");
    let started_line = daemon.log_lines("call started").join("\n");
    assert!(
        started_line.contains(&format!("remote={}", kamailio.addr()))
            && started_line.contains("transport=\"UDP\""),
        "ivrd's call did not come from Kamailio over UDP: {started_line}"
    );
    assert!(
        trace.contains(&format!("INVITE sip:verify@{} ", kamailio.addr()))
            && trace.contains("INVITE sip:queue@")
            && !trace.contains("over tcp"),
        "Kamailio did not route both calls over UDP:\n{trace}"
    );
    // The REFER: challenged once, answered with the right credentials, accepted by baresip.
    assert_eq!(
        refer_auth_counts(&kamailio),
        (1, 0, 1),
        "REFER challenges (none, failed, passed):\n{trace}"
    );
    // Kamailio offered qop=auth, and ivrd's answer used it.
    assert!(
        kamailio
            .trace()
            .iter()
            .any(|l| l.contains("REFER authenticated")
                && l.contains("qop=auth")
                && l.contains("nc=")
                && l.contains("cnonce=")),
        "ivrd's credentials did not use qop=auth:\n{trace}"
    );
    assert!(
        trace.contains("reply 202 Accepted to REFER"),
        "baresip's 202 did not come back through Kamailio:\n{trace}"
    );
    // The queue's INVITE came through Kamailio, which record-routed it.
    let invite = queue_invite(&run);
    let vias = header_values(&invite.text, "Via");
    assert!(
        vias.first()
            .is_some_and(|v| v.contains(&kamailio.addr().to_string())),
        "the queue's INVITE did not come through Kamailio: {vias:?}\n{}",
        invite.text
    );
    assert!(
        invite.header("Record-Route").is_some(),
        "Kamailio did not record-route the queue call:\n{}",
        invite.text
    );
    // And the caller kept to that route: its BYE to the queue came through Kamailio too.
    let bye = run
        .received()
        .into_iter()
        .find(|m| m.text.starts_with("BYE "))
        .unwrap_or_else(|| panic!("the queue got no BYE\n{}", run.report()));
    assert!(
        header_values(&bye.text, "Via")
            .first()
            .is_some_and(|v| v.contains(&kamailio.addr().to_string())),
        "the queue's BYE did not come through Kamailio:\n{}",
        bye.text
    );
    // baresip 1.0 puts the Refer-To URI's headers into the Request-URI and To, and Kamailio
    // reads the customer id from there.
    let request_line = invite.text.lines().next().unwrap_or_default();
    assert!(
        request_line.contains(&format!("X-Customer-Id={ERIKA}")),
        "the queue's Request-URI has no customer id:\n{}",
        invite.text
    );
    assert_eq!(
        kamailio.count(&format!(
            "queue call for customer [{ERIKA}] from the Request-URI"
        )),
        1,
        "Kamailio did not read the customer id:\n{trace}"
    );

    assert_pin_not_logged(&daemon, &pin);
    assert!(
        !daemon.log().contains(password),
        "the transfer password is in the daemon log"
    );
    eprintln!(
        "what Kamailio saw:\n{}\nthe test took {:?}",
        kamailio.trace().join("\n"),
        started.elapsed()
    );
    phone.quit();
}

/// Writes a secret as root would: 0600.
fn write_secret(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write secret");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// The shipped plans plus `xfer`, for number `xfer`: a transfer to `${queue}` at once, and
/// goodbye if it fails. The credentials are the point here, not the flow before the REFER.
fn plans_with_xfer(dir: &Path) -> PathBuf {
    let plans = dir.join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    std::fs::copy(
        manifest_dir().join("dialplans/verify.toml"),
        plans.join("verify.toml"),
    )
    .unwrap();
    std::fs::write(
        plans.join("xfer.toml"),
        r#"
[dialplan]
name = "xfer"
description = "Transfer every call to the queue at once"
start = "to_queue"
language = "en"
languages = ["en"]
numbers = ["xfer"]

[vars]
queue = "sip:queue@pbx.example.com"

[steps.to_queue]
transfer = "${queue}"
on_failure = "goodbye"

[steps.goodbye]
hangup = ["goodbye"]
"#,
    )
    .unwrap();
    plans
}

fn ivrd_reload(daemon: &Daemon) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ivrd"))
        .args(["reload", "--config"])
        .arg(daemon.config_path())
        .output()
        .expect("run ivrd reload");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "ivrd reload failed: {text}");
    text
}

#[test]
fn over_tcp_a_changed_pbx_password_fails_the_refer_until_ivrd_reloads_the_new_one() {
    require_tool("kamailio");
    require_tool("baresip");
    require_tool("sipp");
    let started = Instant::now();
    let kamailio_port = free_sip_port();
    let queue_port = free_sip_port();
    let mut rig = Rig::new(200, kamailio_port);
    // The transferred call goes to Kamailio over TCP too.
    rig.queue = format!("sip:queue@127.0.0.1:{kamailio_port};transport=tcp");
    let files = tempfile::tempdir().unwrap();
    let plans = plans_with_xfer(files.path());
    let password_file = files.path().join("pbx-password");
    write_secret(&password_file, "kam-tcp-one\n");
    let admin = format!("127.0.0.1:{}", free_sip_port());
    let daemon = rig.daemon(&format!(
        "[dialplans]\ndir = {}\n\
         [transfer]\nusername = \"{KAMAILIO_USER}\"\npassword_file = {}\n\
         [admin]\nlisten = \"{admin}\"\n",
        toml_str(&plans.display().to_string()),
        toml_str(&password_file.display().to_string()),
    ));
    let mut kamailio = Kamailio::start(kamailio_port, daemon.sip_port(), queue_port, "kam-tcp-one");
    let mut phone = Baresip::start(2);
    let dial = format!("sip:xfer@{};transport=tcp", kamailio.addr());

    // 1. Both have the first password: the REFER passes and baresip reaches the queue.
    let queue = start_queue(queue_port, &daemon);
    phone.command("dial", &dial);
    phone.wait_events("CALL_ESTABLISHED", 2, FLOW_TIMEOUT);
    let reasons = daemon.wait_call_ends(1, Duration::from_secs(20));
    assert_eq!(reasons[0], "transferred", "call 1");
    phone.command("hangup", "");
    let run = queue.join().expect("queue SIPp thread");
    run.assert_ok();
    assert_eq!(refer_auth_counts(&kamailio), (1, 0, 1), "call 1");
    let row = rig.wait_audit(1, Duration::from_secs(15)).remove(0);
    assert_eq!(
        row.transfer.as_ref().and_then(|t| t.status),
        Some(200),
        "call 1: {row:#?}"
    );
    let started_line = daemon.log_lines("call started").join("\n");
    assert!(
        started_line.contains("transport=\"TCP\""),
        "Kamailio did not forward the call over TCP: {started_line}"
    );
    // Every request of the call went over TCP: ivrd's REFER too, on Kamailio's connection.
    let trace = kamailio.trace();
    let requests: Vec<&String> = trace
        .iter()
        .filter(|l| l.contains(" from ") && l.contains(" over "))
        .collect();
    assert!(
        requests.iter().any(|l| l.starts_with("INVITE sip:queue@"))
            && requests.iter().any(|l| l.starts_with("REFER "))
            && requests
                .iter()
                .filter(|l| !l.starts_with("OPTIONS "))
                .all(|l| l.ends_with(" over tcp")),
        "call 1 did not go over TCP:\n{}",
        trace.join("\n")
    );

    // 2. The PBX's password changes; ivrd still has the old one: Kamailio challenges the
    //    answer again, the transfer fails with 407, the caller hears goodbye.
    kamailio.restart_with_password("kam-tcp-two");
    phone.command("dial", &dial);
    phone.wait_events("CALL_ESTABLISHED", 3, Duration::from_secs(15));
    daemon.wait_call_ends(2, Duration::from_secs(30));
    let row = rig.wait_audit(2, Duration::from_secs(15)).remove(0);
    assert_eq!(row.outcome, "transfer-failed", "call 2: {row:#?}");
    assert_eq!(
        row.transfer.as_ref().and_then(|t| t.status),
        Some(407),
        "call 2: the old password must not pass: {row:#?}"
    );
    assert_eq!(
        refer_auth_counts(&kamailio),
        (2, 1, 1),
        "call 2:\n{}",
        kamailio.trace().join("\n")
    );

    // 3. ivrd gets the new password and reloads: the next REFER passes.
    write_secret(&password_file, "kam-tcp-two\n");
    let verdict = ivrd_reload(&daemon);
    assert!(verdict.contains("reloaded"), "{verdict}");
    let queue = start_queue(queue_port, &daemon);
    phone.command("dial", &dial);
    phone.wait_events("CALL_ESTABLISHED", 5, FLOW_TIMEOUT);
    let reasons = daemon.wait_call_ends(3, Duration::from_secs(20));
    assert_eq!(reasons[2], "transferred", "call 3");
    phone.command("hangup", "");
    let run = queue.join().expect("queue SIPp thread");
    run.assert_ok();
    assert_eq!(
        refer_auth_counts(&kamailio),
        (3, 1, 2),
        "call 3:\n{}",
        kamailio.trace().join("\n")
    );
    let row = rig.wait_audit(3, Duration::from_secs(15)).remove(0);
    assert_eq!(
        row.transfer.as_ref().and_then(|t| t.status),
        Some(200),
        "call 3: {row:#?}"
    );

    let log = daemon.log();
    assert!(
        !log.contains("kam-tcp-one") && !log.contains("kam-tcp-two"),
        "a transfer password is in the daemon log"
    );
    eprintln!(
        "what Kamailio saw:\n{}\nthe test took {:?}",
        kamailio.trace().join("\n"),
        started.elapsed()
    );
    phone.quit();
}
