//! What operators look at: the admin listener's metrics, health and status after real calls,
//! and `ivrd status` from the command line.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn metrics_move_after_real_calls_and_status_reports() {
    for digit in ["1", "2", "3"] {
        let pcap = format!("/usr/share/sip-tester/dtmf_2833_{digit}.pcap");
        assert!(
            std::path::Path::new(&pcap).is_file(),
            "{pcap} not found: run scripts/install-test-deps.sh (package sip-tester)"
        );
    }
    let admin = format!("127.0.0.1:{}", free_sip_port());
    let daemon = Daemon::start(&format!(
        "[admin]\nlisten = \"{admin}\"\n[demo]\ninter_digit_timeout_ms = 1500\n"
    ));
    let before = admin_get(&admin, "/metrics");
    assert!(before.starts_with("HTTP/1.1 200"), "{before}");
    assert_eq!(metric(&before, "ivrd_rtp_packets_sent_total"), 0.0);
    // Every outcome, PIN check result and guard has its series from the start (at zero), so
    // `rate()` and `increase()` alerts work before the first event (issue 14, defect 6).
    for series in [
        "ivrd_calls_total{outcome=\"verified\"}",
        "ivrd_calls_total{outcome=\"sms-failed\"}",
        "ivrd_calls_total{outcome=\"guard-breaker\"}",
        "ivrd_pin_checks_total{result=\"locked-out\"}",
        "ivrd_guard_refusals_total{guard=\"hour-budget\"}",
    ] {
        assert!(
            before.contains(&format!("{series} 0\n")),
            "{series} missing: {before}"
        );
    }

    // A real call from SIPp with three RFC 2833 digits, then BYE.
    let welcome = prompt_duration("en", "demo-welcome") + Duration::from_millis(700);
    Sipp::new("rfc2833_digits.xml", daemon.sip_addr())
        .set("welcome_ms", &welcome.as_millis().to_string())
        .set("after_ms", "3500")
        .timeout_secs(60)
        .run()
        .assert_ok();
    daemon.wait_call_ends(1, Duration::from_secs(5));
    // The audit/metrics update follows the call's end line by a moment.
    std::thread::sleep(Duration::from_millis(300));

    let after = admin_get(&admin, "/metrics");
    assert_eq!(
        metric(&after, "ivrd_dtmf_digits_total{method=\"rfc4733\"}"),
        3.0,
        "{after}"
    );
    assert_eq!(
        metric(&after, "ivrd_calls_total{outcome=\"caller-hangup\"}"),
        1.0,
        "{after}"
    );
    assert_eq!(metric(&after, "ivrd_calls_active"), 0.0);
    // At least the welcome prompt went out: ~50 packets a second.
    assert!(
        metric(&after, "ivrd_rtp_packets_sent_total") > 100.0,
        "{after}"
    );
    assert!(
        metric(&after, "ivrd_rtp_packets_received_total") > 0.0,
        "{after}"
    );
    assert!(
        metric(&after, "ivrd_sip_requests_total") >= 3.0,
        "INVITE, ACK, BYE: {after}"
    );
    assert!(metric(&after, "ivrd_rtp_ticks_total") > metric(&before, "ivrd_rtp_ticks_total"));

    let health = admin_get(&admin, "/health");
    assert!(
        health.starts_with("HTTP/1.1 200") && health.contains("\"ok\""),
        "{health}"
    );

    // `ivrd status` reads the same listener through the daemon's config file.
    let out = Command::new(env!("CARGO_BIN_EXE_ivrd"))
        .args(["status", "--config"])
        .arg(daemon.dir().join("ivrd.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(": ok,") && text.contains("0 active calls"),
        "{text}"
    );
}
