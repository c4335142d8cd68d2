//! Several ivrd nodes behind Kamailio's dispatcher (issue 16), with the shipped configuration
//! (packaging/kamailio/ivrd-dispatcher.cfg): new calls go round-robin over the nodes that
//! answer OPTIONS 200; `ivrd drain` takes a node out (INVITE and OPTIONS 503) while its call
//! goes on, and `ivrd resume` puts it back; a node killed with SIGKILL loses its new calls to
//! the other at once (fr_timer), and is out of the rotation after the next probe. Callers are
//! `RawUac`s talking to Kamailio (their in-dialog requests follow its Record-Route); each node
//! runs the demo flow on its own SQLite database (tests/cluster_pg.rs shares one PostgreSQL).
//! A node that cannot take a call (no free RTP port) says so to OPTIONS on its own.

mod common;

use common::kamailio::Kamailio;
use common::*;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

/// A node: the demo flow waiting a minute for a digit (calls stay up until the caller hangs
/// up), and an admin listener for `ivrd drain`.
fn node() -> (Daemon, String) {
    let admin = format!("127.0.0.1:{}", free_tcp_port());
    let daemon = Daemon::start(&format!(
        "[demo]\nrounds = 1\nfirst_digit_timeout_ms = 60000\n[admin]\nlisten = \"{admin}\"\n\
         [shutdown]\ndrain_secs = 30\n"
    ));
    (daemon, admin)
}

/// How many calls a node has answered so far.
fn answered(node: &Daemon) -> usize {
    node.log_lines("call started").len()
}

/// `ivrd drain` / `ivrd resume` (and their arguments) against a node's config.
fn ivrd(node: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ivrd"))
        .args(args)
        .arg("--config")
        .arg(node.config_path())
        .output()
        .expect("run ivrd")
}

fn dispatcher(nodes: &[&Daemon]) -> Kamailio {
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.sip_addr()).collect();
    Kamailio::start_dispatcher(free_sip_port(), &addrs)
}

#[test]
fn calls_spread_a_drained_node_gets_none_and_finishes_its_own() {
    let (a, admin_a) = node();
    let (b, admin_b) = node();
    let kamailio = dispatcher(&[&a, &b]);

    // Round-robin: four calls, two on each node.
    let mut calls: Vec<RawUac> = (0..4)
        .map(|_| RawUac::call(kamailio.addr(), "100"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        (answered(&a), answered(&b)),
        (2, 2),
        "round-robin over two nodes\n{}",
        kamailio.log()
    );
    for c in calls.iter_mut().skip(1) {
        assert_eq!(c.bye(), 200, "BYE through Kamailio to its node");
    }
    // calls[0] is up on one of them: drain that one.
    let ended = |n: &Daemon| n.log_lines("call ended").len();
    let deadline = Instant::now() + Duration::from_secs(5);
    while ended(&a) + ended(&b) < 3 {
        assert!(Instant::now() < deadline, "three calls did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ((busy, busy_admin), idle) = if ended(&a) < 2 {
        ((&a, &admin_a), &b)
    } else {
        ((&b, &admin_b), &a)
    };
    // Its count of calls up follows the call's end by a moment.
    while !admin_get(busy_admin, "/health").contains("\"active_calls\":1") {
        assert!(
            Instant::now() < deadline,
            "{}",
            admin_get(busy_admin, "/health")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = ivrd(busy, &["drain"]);
    assert!(
        out.status.success(),
        "ivrd drain: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("draining") && said.contains("1 call up"),
        "{said}"
    );
    let before = (answered(busy), answered(idle));
    let mut more: Vec<RawUac> = (0..4)
        .map(|_| RawUac::call(kamailio.addr(), "100"))
        .collect();
    assert_eq!(
        (answered(busy), answered(idle)),
        (before.0, before.1 + 4),
        "every new call went to the node in service\n{}",
        kamailio.log()
    );
    // The drained node's call is still served: it hangs up normally.
    assert_eq!(calls[0].bye(), 200);
    assert_eq!(
        busy.wait_call_ends(2, Duration::from_secs(5)),
        ["callerhangup", "callerhangup"]
    );
    for c in &mut more {
        assert_eq!(c.bye(), 200);
    }
    // `--wait` returns at once: nothing is up any more.
    let out = ivrd(busy, &["drain", "--wait", "10"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Back in service: the next probe (every 5 s) brings it back into the rotation.
    let out = ivrd(busy, &["resume"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("taking calls"),
        "{out:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let back = answered(busy);
    while answered(busy) == back {
        assert!(
            Instant::now() < deadline,
            "the resumed node got no call within 15 s\n{}",
            kamailio.log()
        );
        let mut c = RawUac::call(kamailio.addr(), "100");
        c.bye();
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_killed_node_loses_its_new_calls_to_the_other_at_once() {
    let (mut a, _) = node();
    let (b, _) = node();
    let kamailio = dispatcher(&[&a, &b]);
    // One call on each (round-robin), then A dies with its call.
    let first = RawUac::call(kamailio.addr(), "100");
    let second = RawUac::call(kamailio.addr(), "100");
    // A node logs "call started" a moment after its 200 may have reached the caller.
    let deadline = Instant::now() + Duration::from_secs(2);
    while answered(&a) + answered(&b) < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!((answered(&a), answered(&b)), (1, 1), "{}", kamailio.log());
    let mut on_b = if b.log().contains(first.call_id()) {
        first
    } else {
        second
    };
    let status = Command::new("kill")
        .args(["-9", &a.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        !a.is_running() || {
            std::thread::sleep(Duration::from_millis(200));
            !a.is_running()
        }
    );
    // Kamailio does not know yet: a call it sends to A gets no answer, and after fr_timer
    // (2 s) goes to B. Every call is answered, none waits for the next probe.
    for _ in 0..3 {
        let started = Instant::now();
        let mut c = RawUac::call(kamailio.addr(), "100");
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(4),
            "a call took {took:?} to be answered"
        );
        assert_eq!(c.bye(), 200);
    }
    assert_eq!(answered(&b), 4, "{}", kamailio.log());
    assert!(
        kamailio.count("failed the call") >= 1,
        "no failover logged\n{}",
        kamailio.log()
    );
    // After a probe interval (5 s) A is out of the rotation: no call waits for it any more.
    std::thread::sleep(Duration::from_secs(6));
    let failovers = kamailio.count("failed the call");
    for _ in 0..2 {
        let started = Instant::now();
        let mut c = RawUac::call(kamailio.addr(), "100");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(c.bye(), 200);
    }
    assert_eq!(kamailio.count("failed the call"), failovers);
    assert_eq!(answered(&b), 6);
    // B's own call never noticed.
    assert_eq!(on_b.bye(), 200);
}

/// A node whose RTP ports are all taken says so to OPTIONS (503, Retry-After, a Warning with
/// the reason), so a dispatcher's probe takes it out before a call is refused; once the call
/// ends it answers 200 again.
#[test]
fn a_node_without_a_free_rtp_port_answers_options_503() {
    // Two ports: one call's worth (RTP and RTCP).
    let node =
        Daemon::start_with_rtp_ports(2, "[demo]\nrounds = 1\nfirst_digit_timeout_ms = 60000\n");
    let probe = RawUdp::new(node.sip_addr());
    let ask = |n: u32| -> String {
        probe.send(
            options_request(
                node.sip_addr(),
                probe.local_addr(),
                &format!("ready-{n}"),
                "UDP",
            )
            .as_bytes(),
        );
        probe
            .recv(Duration::from_secs(2))
            .expect("an answer to OPTIONS")
    };
    assert!(ask(1).starts_with("SIP/2.0 200 "));
    let mut call = RawUac::call(node.sip_addr(), "100");
    // The daemon looks every 100 ms.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut n = 2;
    let busy = loop {
        let answer = ask(n);
        n += 1;
        if answer.starts_with("SIP/2.0 503 ") || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(busy.starts_with("SIP/2.0 503 "), "{busy}");
    assert!(
        busy.contains("Warning: 399 ivrd \"no free RTP port\""),
        "{busy}"
    );
    assert!(busy.contains("Retry-After: 5"), "{busy}");
    assert_eq!(call.bye(), 200);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let answer = ask(n);
        n += 1;
        if answer.starts_with("SIP/2.0 200 ") {
            break;
        }
        assert!(Instant::now() < deadline, "still {answer}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
