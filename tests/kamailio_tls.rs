//! Kamailio (Debian `kamailio` 5.6 with `kamailio-tls-modules`) as the PBX in front of ivrd,
//! talking to ivrd over SIP over TLS: the caller, a SIPp UAC (tests/sipp/transferee_uac.xml),
//! calls Kamailio over UDP; Kamailio record-routes the call (double Record-Route: a UDP entry
//! for the caller, a TLS one for ivrd) and forwards it over TLS to ivrd's `[sip] tls` listener,
//! checking ivrd's certificate against the test CA and presenting its own (ivrd requires it:
//! `require_client_cert`). Each test starts its own Kamailio on loopback with `-A WITH_TLS`
//! (tests/kamailio/kamailio.cfg.in, tests/kamailio/tls.cfg.in, tests/common/kamailio.rs) and
//! makes its certificates at run time (TestPki); no key is committed.
//!
//! - On Kamailio's connection: the caller's INFO digits reach ivrd over TLS; ivrd's REFER
//!   (challenged with 407 and answered) and its BYE go back through Kamailio on the TLS
//!   connection Kamailio opened, following the route set; the caller follows the REFER to the
//!   queue (a SIPp UAS behind Kamailio).
//! - When Kamailio has closed that connection (right after relaying the caller's ACK, as a PBX
//!   closes an idle one; `set_forward_close()`): ivrd opens a TLS connection of its own to the
//!   route set's first hop, Kamailio's TLS listener, checks Kamailio's certificate against
//!   `[tls] server_ca`, presents its own (Kamailio requires and verifies it), and the REFER and
//!   BYE go through on it.
//!
//! A missing `kamailio`, tls module (kamailio/modules/tls.so) or `sipp` fails the test; run
//! scripts/install-test-deps.sh.

mod common;

use common::kamailio::{KAMAILIO_USER, Kamailio};
use common::verify::*;
use common::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The queue, a SIPp UAS on `port`, answering one call (the caller hangs it up).
fn start_queue(port: u16, daemon: &Daemon) -> JoinHandle<SippRun> {
    let sipp = Sipp::new("queue_uas.xml", daemon.sip_addr())
        .local_port(port)
        .timeout_secs(90);
    let queue = std::thread::spawn(move || sipp.run());
    wait_udp_bound(port, Duration::from_secs(10));
    queue
}

/// The caller: SIPp over UDP to Kamailio; `digits`: whether it types the two INFO digits.
fn start_caller(kamailio: &Kamailio, digits: bool) -> JoinHandle<SippRun> {
    let sipp = Sipp::new("transferee_uac.xml", kamailio.addr())
        .set("digits", if digits { "2" } else { "0" })
        .timeout_secs(60);
    std::thread::spawn(move || sipp.run())
}

/// One plan, the default for every number: `steps` are its steps (start "welcome"), and
/// `to_queue` transfers to `${queue}` (the test's queue behind Kamailio) with X-Customer-Id
/// `${choice}`, which is `choice` unless a step collects it.
fn plan_dir(dir: &Path, choice: &str, steps: &str) -> PathBuf {
    let plans = dir.join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    std::fs::write(
        plans.join("tls.toml"),
        format!(
            r#"
[dialplan]
name = "tls"
description = "A prompt or a choice, then the queue"
start = "welcome"
language = "en"
languages = ["en"]
numbers = []

[vars]
queue = "sip:queue@pbx.example.com"
choice = "{choice}"

{steps}

[steps.to_queue]
transfer = "${{queue}}"
headers = {{ X-Customer-Id = "${{choice}}" }}
on_failure = "goodbye"

[steps.goodbye]
hangup = ["goodbye"]
"#
        ),
    )
    .unwrap();
    plans
}

/// What the tests share: the CA, ivrd with a TLS listener (its certificate for 127.0.0.1 from
/// the CA, Kamailio's client certificate required, Kamailio's server certificate checked
/// against the CA) and the metrics page, and Kamailio in front of it.
struct World {
    rig: Rig,
    daemon: Daemon,
    kamailio: Kamailio,
    ivrd_tls: SocketAddr,
    admin: String,
    _files: tempfile::TempDir,
}

const PASSWORD: &str = "kam-tls-s3cret";

/// `choice`, `steps`: the plan (see [`plan_dir`]). `close_after_ack`: Kamailio closes its
/// connection to ivrd after relaying the caller's ACK.
fn world(choice: &str, steps: &str, close_after_ack: bool) -> World {
    require_tool("kamailio");
    require_tool("sipp");
    let kamailio_port = free_sip_port();
    let queue_port = free_sip_port();
    // The queue lives behind the PBX: ivrd refers the caller to Kamailio.
    let rig = Rig::new(200, kamailio_port);
    let files = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let (cert, key, ca) = pki.write_server(files.path());
    let plans = plan_dir(files.path(), choice, steps);
    let tls_port = free_sip_port();
    let admin = format!("127.0.0.1:{}", free_sip_port());
    let daemon = rig.daemon(&format!(
        "[sip]\ntls = [\"127.0.0.1:{tls_port}\"]\n\
         [tls]\ncert = {cert}\nkey = {key}\nclient_ca = {ca}\nrequire_client_cert = true\nserver_ca = {ca}\n\
         [dialplans]\ndir = {plans}\ndefault = \"tls\"\n\
         [transfer]\nusername = \"{KAMAILIO_USER}\"\npassword = \"{PASSWORD}\"\n\
         [admin]\nlisten = \"{admin}\"\n",
        cert = toml_str(&cert.display().to_string()),
        key = toml_str(&key.display().to_string()),
        ca = toml_str(&ca.display().to_string()),
        plans = toml_str(&plans.display().to_string()),
    ));
    let kamailio = Kamailio::start_tls(
        kamailio_port,
        tls_port,
        queue_port,
        PASSWORD,
        &pki,
        close_after_ack,
    );
    World {
        rig,
        daemon,
        kamailio,
        ivrd_tls: SocketAddr::from((LOCALHOST, tls_port)),
        admin,
        _files: files,
    }
}

/// The trace lines Kamailio logged for messages it got over TLS (`tls <what> from <addr>
/// conn [<id>] <version> peer [<DNS names>] verified [<0|1>]`), whose `<what>` starts with
/// `what` ("REFER", "200 to INVITE").
fn tls_lines(kamailio: &Kamailio, what: &str) -> Vec<String> {
    kamailio
        .trace()
        .into_iter()
        .filter(|l| l.starts_with(&format!("tls {what} ")))
        .collect()
}

/// The `conn [<id>]` of a `tls` trace line: Kamailio's id of the TCP connection.
fn conn_id(line: &str) -> String {
    line.split_once("conn [")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(id, _)| id.to_string())
        .unwrap_or_else(|| panic!("no connection id in {line:?}"))
}

/// The Route headers ivrd put on its in-dialog `method`s: Kamailio's `in-dialog` trace lines
/// of those that came over TLS.
fn routes_of(kamailio: &Kamailio, method: &str) -> Vec<String> {
    kamailio
        .trace()
        .into_iter()
        .filter_map(|l| {
            l.strip_prefix(&format!("in-dialog {method} over tls route ["))
                .map(|r| r.trim_end_matches(']').to_string())
        })
        .collect()
}

/// The message `pred` picks among those `run` received.
fn received(run: &SippRun, what: &str, pred: impl Fn(&TracedMessage) -> bool) -> TracedMessage {
    run.received()
        .into_iter()
        .find(|m| pred(m))
        .unwrap_or_else(|| panic!("SIPp got no {what}\n{}", run.report()))
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

/// The caller and the queue went through the whole transfer, via Kamailio over UDP: the
/// REFER came from Kamailio (its UDP Via on top, ivrd's TLS Via under it) with the Refer-To
/// ivrd was configured with; the queue's INVITE came through Kamailio with the customer id.
fn check_caller_and_queue(w: &World, caller: &SippRun, queue: &SippRun, customer: &str) {
    let k = w.kamailio.addr().to_string();
    let refer = received(caller, "REFER", |m| m.text.starts_with("REFER "));
    let vias = header_values(&refer.text, "Via");
    assert!(
        vias.len() == 2 && vias[0].contains(&k) && vias[1].starts_with("SIP/2.0/TLS "),
        "the REFER did not come from ivrd over TLS through Kamailio: {vias:?}\n{}",
        refer.text
    );
    let refer_to = refer.header("Refer-To").unwrap_or_default();
    assert_eq!(
        refer_to,
        format!("<{}?X-Customer-Id={customer}>", w.rig.queue),
        "Refer-To:\n{}",
        refer.text
    );
    // ivrd's answer reached the caller with both of Kamailio's Record-Route entries.
    let ok = received(caller, "200 to the INVITE", |m| {
        m.status() == Some(200)
            && m.cseq_method().as_deref() == Some("INVITE")
            && m.header("From").is_some_and(|f| f.contains("SIPpTag00"))
    });
    let rr = header_values(&ok.text, "Record-Route").join(",");
    assert!(
        rr.contains(&format!(
            "127.0.0.1:{};transport=tls",
            w.kamailio.tls_addr().port()
        )) && rr.contains(&format!("<sip:{k};r2=on;lr")),
        "the 200 has not Kamailio's TLS and UDP Record-Route entries: {rr}\n{}",
        ok.text
    );
    let bye = received(caller, "BYE", |m| m.text.starts_with("BYE "));
    let vias = header_values(&bye.text, "Via");
    assert!(
        vias.len() == 2 && vias[0].contains(&k) && vias[1].starts_with("SIP/2.0/TLS "),
        "ivrd's BYE did not come over TLS through Kamailio: {vias:?}\n{}",
        bye.text
    );
    let invite = received(queue, "INVITE", |m| m.text.starts_with("INVITE "));
    assert!(
        header_values(&invite.text, "Via")
            .first()
            .is_some_and(|v| v.contains(&k)),
        "the queue's INVITE did not come through Kamailio:\n{}",
        invite.text
    );
    assert_eq!(
        invite.header("X-Customer-Id").as_deref(),
        Some(customer),
        "the queue's INVITE:\n{}",
        invite.text
    );
    assert_eq!(
        w.kamailio.count(&format!(
            "queue call for customer [{customer}] from the header field"
        )),
        1,
        "Kamailio did not read the customer id:\n{}",
        w.kamailio.trace().join("\n")
    );
}

/// ivrd's route set for its REFER: Kamailio's Record-Route in order (RFC 3261 12.1.1), the
/// TLS entry (facing ivrd) first.
fn check_route_set(w: &World, method: &str) {
    let routes = routes_of(&w.kamailio, method);
    let tls_port = w.kamailio.tls_addr().port();
    let udp = format!("<sip:{};r2=on;lr", w.kamailio.addr());
    assert!(
        !routes.is_empty()
            && routes.iter().all(|r| {
                let tls_at = r.find(&format!("127.0.0.1:{tls_port};transport=tls"));
                let udp_at = r.find(&udp);
                matches!((tls_at, udp_at), (Some(t), Some(u)) if t < u)
            }),
        "ivrd's {method} did not follow Kamailio's route set (TLS entry, then UDP entry): {routes:?}\n{}",
        w.kamailio.trace().join("\n")
    );
}

#[test]
fn over_tls_ivrd_refers_and_hangs_up_through_kamailio_on_kamailios_connection() {
    let started = Instant::now();
    let w = world(
        "",
        r#"
[steps.welcome]
play = ["welcome"]
barge_in = true
next = "ask"

[steps.ask]
collect = "choice"
prompt = ["enter-digits"]
min = 2
max = 2
first_digit_timeout = "10s"
inter_digit_timeout = "4s"
tries = 1
on_input = "to_queue"
on_failure = "goodbye"
"#,
        false,
    );
    let queue = start_queue(w.kamailio.queue_port(), &w.daemon);
    let caller = start_caller(&w.kamailio, true);

    // While the call is up, ivrd holds one TCP connection: the one Kamailio opened.
    w.daemon.expect_log("call started", Duration::from_secs(20));
    let metrics = admin_get(&w.admin, "/metrics");
    assert_eq!(
        metric(&metrics, "ivrd_sip_tcp_connections"),
        1.0,
        "{metrics}"
    );

    let reasons = w.daemon.wait_call_ends(1, FLOW_TIMEOUT);
    assert_eq!(
        reasons[0], "transferred",
        "ivrd's call should end as transferred"
    );
    let caller = caller.join().expect("caller SIPp thread");
    caller.assert_ok();
    let queue = queue.join().expect("queue SIPp thread");
    queue.assert_ok();

    // ivrd: the call came over TLS from Kamailio, the audit row says TLS and a transfer that
    // the queue answered, and ivrd never opened a connection of its own.
    let started_line = w.daemon.log_lines("call started").join("\n");
    assert!(
        started_line.contains("transport=\"TLS\""),
        "ivrd's call did not come over TLS: {started_line}"
    );
    let row = w.rig.wait_audit(1, Duration::from_secs(15)).remove(0);
    assert_eq!(row.transport.as_deref(), Some("TLS"), "audit row: {row:#?}");
    assert_eq!(
        row.transfer.as_ref().map(|t| (t.target.as_str(), t.status)),
        Some((w.rig.queue.as_str(), Some(200))),
        "audit row: {row:#?}"
    );
    assert!(
        row.dtmf_methods.contains("info"),
        "the INFO digits did not reach ivrd: {row:#?}"
    );
    let metrics = admin_get(&w.admin, "/metrics");
    assert_eq!(
        metric(&metrics, "ivrd_sip_connects_total"),
        0.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "ivrd_sip_tls_handshake_failures_total"),
        0.0,
        "{metrics}"
    );

    // Kamailio: ivrd's answer (and any retransmission of it), both REFERs (challenged, then
    // authenticated) and the BYE came over TLS on one connection, with ivrd's certificate
    // (ivrd.test) verified against the CA.
    let k = &w.kamailio;
    let trace = k.trace().join("\n");
    let answer = tls_lines(k, "reply 200 to INVITE");
    let refers = tls_lines(k, "REFER");
    let byes = tls_lines(k, "BYE");
    assert!(
        !answer.is_empty() && refers.len() == 2 && byes.len() == 1,
        "Kamailio did not get ivrd's 200, two REFERs and a BYE over TLS:\n{trace}"
    );
    let conn = conn_id(&answer[0]);
    for line in answer.iter().chain(&refers).chain(&byes) {
        assert_eq!(
            conn_id(line),
            conn,
            "not on Kamailio's connection: {line}\n{trace}"
        );
        assert!(
            line.contains(&format!("from {} ", w.ivrd_tls))
                && line.contains("TLSv1.")
                && line.contains("ivrd.test")
                && line.ends_with("verified [1]"),
            "not ivrd's verified TLS connection: {line}\n{trace}"
        );
    }
    assert!(
        k.trace()
            .iter()
            .any(|l| l.starts_with(&format!("INVITE sip:demo@{} ", k.addr()))
                && l.ends_with(" over udp")),
        "the caller did not come over UDP:\n{trace}"
    );
    assert_eq!(
        refer_auth_counts(k),
        (1, 0, 1),
        "REFER challenges:\n{trace}"
    );
    check_route_set(&w, "REFER");
    check_route_set(&w, "BYE");
    check_caller_and_queue(&w, &caller, &queue, "42");

    eprintln!(
        "what Kamailio saw:\n{trace}\nthe test took {:?}",
        started.elapsed()
    );
}

#[test]
fn over_tls_ivrd_opens_a_connection_to_kamailio_when_kamailio_closed_its_own() {
    let started = Instant::now();
    // Kamailio closes its connection once it has relayed the caller's ACK; ivrd plays its
    // welcome (4 s) and then refers the caller.
    let w = world(
        "77",
        r#"
[steps.welcome]
play = ["welcome"]
barge_in = false
next = "to_queue"
"#,
        true,
    );
    let queue = start_queue(w.kamailio.queue_port(), &w.daemon);
    let caller = start_caller(&w.kamailio, false);

    w.daemon.expect_log("call started", Duration::from_secs(20));
    let reasons = w.daemon.wait_call_ends(1, FLOW_TIMEOUT);
    assert_eq!(
        reasons[0], "transferred",
        "ivrd's call should end as transferred"
    );
    let caller = caller.join().expect("caller SIPp thread");
    caller.assert_ok();
    let queue = queue.join().expect("queue SIPp thread");
    queue.assert_ok();

    let row = w.rig.wait_audit(1, Duration::from_secs(15)).remove(0);
    assert_eq!(row.transport.as_deref(), Some("TLS"), "audit row: {row:#?}");
    assert_eq!(
        row.transfer.as_ref().and_then(|t| t.status),
        Some(200),
        "audit row: {row:#?}"
    );
    // ivrd opened one connection, to Kamailio's TLS listener (the REFER's; the BYE reused it),
    // and it did not fail.
    w.daemon.expect_log(
        &format!(
            "opened a TLS connection for a dialog's request peer={}",
            w.kamailio.tls_addr()
        ),
        Duration::from_secs(1),
    );
    let metrics = admin_get(&w.admin, "/metrics");
    assert_eq!(
        metric(&metrics, "ivrd_sip_connects_total"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "ivrd_sip_connect_failures_total"),
        0.0,
        "{metrics}"
    );

    // Kamailio: the REFERs and the BYE came on another connection than ivrd's answer, one
    // ivrd opened to Kamailio's TLS listener with its certificate, which Kamailio verified.
    let k = &w.kamailio;
    let trace = k.trace().join("\n");
    let answer = tls_lines(k, "reply 200 to INVITE");
    let refers = tls_lines(k, "REFER");
    let byes = tls_lines(k, "BYE");
    assert!(
        !answer.is_empty() && refers.len() == 2 && byes.len() == 1,
        "Kamailio did not get ivrd's 200, two REFERs and a BYE over TLS:\n{trace}"
    );
    assert_eq!(
        k.count("closing the connection after this ACK"),
        1,
        "Kamailio did not close its connection after the ACK:\n{trace}"
    );
    let first = conn_id(&answer[0]);
    let second = conn_id(&refers[0]);
    assert_ne!(
        first, second,
        "the REFER came on the closed connection:\n{trace}"
    );
    for line in refers.iter().chain(&byes) {
        assert_eq!(
            conn_id(line),
            second,
            "not on ivrd's connection: {line}\n{trace}"
        );
        assert!(
            line.contains("TLSv1.") && line.contains("ivrd.test") && line.ends_with("verified [1]"),
            "ivrd's connection did not present its verified certificate: {line}\n{trace}"
        );
    }
    assert_eq!(
        refer_auth_counts(k),
        (1, 0, 1),
        "REFER challenges:\n{trace}"
    );
    check_route_set(&w, "REFER");
    check_caller_and_queue(&w, &caller, &queue, "77");
    assert!(
        w.daemon.log_lines("could not open a connection").is_empty(),
        "{}",
        w.daemon.log()
    );

    eprintln!(
        "what Kamailio saw:\n{trace}\nthe test took {:?}",
        started.elapsed()
    );
}
