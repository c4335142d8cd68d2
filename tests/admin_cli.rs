//! The admin's tools, run as the admin runs them: the `ivrd` binary with real files.
//! `check` on good and broken plans, `simulate` through the shipped flow on a real SQLite
//! file, `graph`, `customers import`, `audit` (listing and prune) beside an open database, and
//! SIGHUP reload keeping the running version when a new file is broken.

mod common;

use common::Daemon;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn ivrd(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ivrd"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run ivrd")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Whether `s` contains `n` ASCII digits in a row (a PIN would).
fn has_digit_run(s: &str, n: usize) -> bool {
    let mut run = 0;
    for c in s.chars() {
        run = if c.is_ascii_digit() { run + 1 } else { 0 };
        if run >= n {
            return true;
        }
    }
    false
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A config in `dir` pointing at the repo's prompts and at `plans`.
fn write_config(dir: &Path, plans: &Path) -> PathBuf {
    let cfg = dir.join("ivrd.toml");
    let body = format!(
        "[media]\nprompts_dir = {:?}\n[dialplans]\ndir = {:?}\ndefault = \"verify\"\n[store]\npath = \"ivrd.db\"\nseed_csv = {:?}\n",
        repo().join("prompts"),
        plans,
        repo().join("examples/customers.csv"),
    );
    std::fs::write(&cfg, body).unwrap();
    cfg
}

fn copy_plans(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for name in ["verify.toml", "demo.toml"] {
        std::fs::copy(repo().join("dialplans").join(name), to.join(name)).unwrap();
    }
}

#[test]
fn check_passes_on_the_shipped_files_and_names_file_and_line_when_broken() {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    copy_plans(&plans);
    let cfg = write_config(dir.path(), &plans);
    let ok = ivrd(&["check", "--config", cfg.to_str().unwrap()], dir.path());
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("all checks passed"));
    // The shipped 4-digit PIN of the use case: the limits give ~70 guesses a day, so the
    // check says what that means and warns (it does not fail).
    let strength = String::from_utf8_lossy(&ok.stderr).to_string();
    assert!(
        strength.contains("warning: dialplan \"verify\": 4-digit PINs: an attacker gets at most"),
        "{strength}"
    );
    assert!(strength.contains("above 1 in 10,000"), "{strength}");
    // And no advice on the shipped plan's shape: it has no oracle.
    assert!(!strength.contains("tell by ear"), "{strength}");

    // A dangling transition: the problem names the file, the line and the fix.
    let verify = std::fs::read_to_string(plans.join("verify.toml")).unwrap();
    let broken = verify.replacen("on_failure = \"fallback\"", "on_failure = \"fallbak\"", 1);
    assert_ne!(
        broken, verify,
        "the shipped plan has an on_failure to fallback"
    );
    std::fs::write(plans.join("verify.toml"), &broken).unwrap();
    let line = broken
        .lines()
        .position(|l| l.contains("\"fallbak\""))
        .unwrap()
        + 1;
    let bad = ivrd(&["check", "--config", cfg.to_str().unwrap()], dir.path());
    let out = text(&bad);
    assert!(!bad.status.success(), "{out}");
    assert!(
        out.contains(&format!("verify.toml:{line}:")),
        "no file:line in: {out}"
    );
    assert!(
        out.contains("fallbak") && out.contains("did you mean \"fallback\""),
        "{out}"
    );
}

#[test]
fn simulate_runs_the_verified_branch_on_a_real_database() {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    copy_plans(&plans);
    let cfg = write_config(dir.path(), &plans);
    let c = cfg.to_str().unwrap();
    let verified = ivrd(
        &[
            "simulate",
            "verify",
            "--config",
            c,
            "--keys",
            "123456 W {pin}",
        ],
        dir.path(),
    );
    let out = text(&verified);
    assert!(verified.status.success(), "{out}");
    assert!(out.contains("end: verified, customer 123456"), "{out}");
    assert!(out.contains("X-Customer-Id: 123456"), "{out}");
    // The transcript never shows the PIN: the SMS line is masked.
    let sms = out
        .lines()
        .find(|l| l.contains("sms to"))
        .expect("an SMS line");
    let body = sms.split_once(": ").map(|(_, b)| b).unwrap_or(sms);
    assert!(body.contains("****") && !has_digit_run(body, 4), "{sms}");
    assert!(
        dir.path().join("ivrd.db").exists(),
        "the simulation used the configured SQLite file"
    );

    // An unknown customer goes to the fallback, with no SMS.
    let unknown = text(&ivrd(
        &["simulate", "verify", "--config", c, "--keys", "999999"],
        dir.path(),
    ));
    assert!(unknown.contains("end: unknown-customer"), "{unknown}");
    assert!(!unknown.contains("sms to"), "{unknown}");

    // The provider fails: the sms-failed branch.
    let down = text(&ivrd(
        &[
            "simulate",
            "verify",
            "--config",
            c,
            "--keys",
            "234567",
            "--sms-fails",
        ],
        dir.path(),
    ));
    assert!(down.contains("end: sms-failed"), "{down}");
}

#[test]
fn graph_prints_dot_and_mermaid() {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    copy_plans(&plans);
    let cfg = write_config(dir.path(), &plans);
    let dot = text(&ivrd(
        &["graph", "verify", "--config", cfg.to_str().unwrap()],
        dir.path(),
    ));
    assert!(dot.starts_with("digraph"), "{dot}");
    assert!(dot.contains("check_pin") || dot.contains("check"), "{dot}");
    let mermaid = text(&ivrd(
        &[
            "graph",
            "verify",
            "--format",
            "mermaid",
            "--config",
            cfg.to_str().unwrap(),
        ],
        dir.path(),
    ));
    assert!(mermaid.starts_with("flowchart"), "{mermaid}");
}

#[test]
fn customers_import_reports_bad_rows_by_line_and_keeps_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("c.csv");
    std::fs::write(
        &csv,
        "id,name,mobile\n111111,Ann,+491701112233\n222222,Bob,12\n333333,Cy,+4915112345678\n",
    )
    .unwrap();
    let db = dir.path().join("c.db");
    let o = ivrd(
        &[
            "customers",
            "--db",
            db.to_str().unwrap(),
            "import",
            csv.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("line 3:"), "{}", text(&o));
    let list = text(&ivrd(
        &["customers", "--db", db.to_str().unwrap(), "list"],
        dir.path(),
    ));
    assert!(
        list.contains("111111") && list.contains("333333") && !list.contains("222222"),
        "{list}"
    );
    assert!(list.contains("+491701112233"), "stored as E.164: {list}");
}

#[test]
fn sighup_reload_keeps_the_running_plans_when_a_file_is_broken() {
    let plans = tempfile::tempdir().unwrap();
    copy_plans(plans.path());
    let daemon = Daemon::start(&format!(
        "[demo]\nenabled = false\n[dialplans]\ndir = {:?}\ndefault = \"verify\"\n",
        plans.path()
    ));
    let hup = || {
        let ok = Command::new("kill")
            .args(["-HUP", &daemon.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    // Broken: a step going nowhere. The reload fails, says why, and the daemon keeps serving.
    let verify = std::fs::read_to_string(plans.path().join("verify.toml")).unwrap();
    std::fs::write(
        plans.path().join("verify.toml"),
        verify.replacen("on_failure = \"fallback\"", "on_failure = \"nowhere\"", 1),
    )
    .unwrap();
    hup();
    assert!(
        daemon.wait_for_log("reload failed", Duration::from_secs(10)),
        "{}",
        daemon.log()
    );
    assert!(
        daemon.log().contains("nowhere"),
        "the failure names the problem: {}",
        daemon.log()
    );
    // Fixed: the reload goes through.
    std::fs::write(plans.path().join("verify.toml"), &verify).unwrap();
    hup();
    assert!(
        daemon.wait_for_log("reloaded", Duration::from_secs(10)),
        "{}",
        daemon.log()
    );
}

/// `ivrd guard status` and `ivrd customers show` on a live database: the sends the guard
/// counted, a breaker that tripped, and a customer's limits, as an operator sees them.
#[test]
fn guard_status_and_customers_show_read_a_live_database() {
    use ivrd::store::{NewCustomer, Store};
    use ivrd::verify::guard::GuardConfig;
    use ivrd::verify::limits::{Limits, SendRefusal, Verifier};
    use std::sync::Arc;
    use std::time::{Instant, SystemTime};

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("live.db");
    let store = Arc::new(Store::open(&db).unwrap());
    store
        .add_customer(&NewCustomer {
            id: "424242".into(),
            name: "Max".into(),
            mobile: "+447400123456".into(),
            ..Default::default()
        })
        .unwrap();
    let v = Verifier::new(store.clone(), Limits::default())
        .unwrap()
        .with_guard(GuardConfig {
            breaker_min_sends: 1,
            breaker_min_ratio: 1.0,
            breaker_grace_secs: Some(0),
            ..GuardConfig::default()
        });
    let now = SystemTime::now();
    v.prepare_pin(
        "424242",
        "+4930111",
        4,
        Instant::now(),
        now - Duration::from_secs(5),
    )
    .unwrap();
    assert!(matches!(
        v.prepare_pin("424242", "+4930111", 4, Instant::now(), now),
        Err(SendRefusal::Guard(_))
    ));
    let db_arg = db.to_str().unwrap();

    let out = ivrd(&["guard", "--db", db_arg, "status"], dir.path());
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("PIN SMS, last hour: 1 of 2000"), "{shown}");
    assert!(shown.contains("breakers open:      1"), "{shown}");
    assert!(shown.contains("  +447400... paused until "), "{shown}");

    let out = ivrd(&["customers", "--db", db_arg, "show", "424242"], dir.path());
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("SMS sent:        1 in the last 10 min"),
        "{shown}"
    );
    assert!(shown.contains("lock-out:        not locked"), "{shown}");
}

/// `ivrd audit` on a database the daemon still has open: CSV and JSON Lines with filters, the
/// table, errors that name the bad value, and `audit prune`.
#[test]
fn audit_lists_filters_and_prunes_a_live_database() {
    use ivrd::store::{AuditRow, AuditTransfer, Store};
    use std::time::SystemTime;

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("live.db");
    // Kept open throughout, as the daemon would.
    let store = Store::open(&db).unwrap();
    let now = SystemTime::now();
    let row = |n: u64, hours_ago: u64, outcome: &str, customer: Option<&str>| AuditRow {
        call_id: format!("c{n}@pbx"),
        caller: "+491701234567".into(),
        dialed: "100".into(),
        customer_id: customer.map(str::to_string),
        outcome: outcome.into(),
        started_at: now - Duration::from_secs(hours_ago * 3600),
        ended_at: now - Duration::from_secs(hours_ago * 3600 - 60),
        dtmf_methods: "rfc4733".into(),
        detail: Some("end=completed".into()),
        transfer: None,
        transport: Some("TLS".into()),
        srtp: None,
    };
    let mut rows = vec![
        row(0, 10, "verified", Some("123456")),
        row(1, 9, "wrong-pin", Some("123456")),
        row(2, 8, "verified", Some("654321")),
        row(3, 7, "unknown-customer", None),
        row(4, 1, "verified", Some("123456")),
    ];
    rows[1].detail = Some("end=completed, \"3 tries\"".into());
    rows[2].transfer = Some(AuditTransfer {
        target: "sip:queue@pbx".into(),
        status: Some(200),
        ms: 900,
    });
    store.write_audit_batch(&rows).unwrap();
    let db_arg = db.to_str().unwrap();
    let audit = |args: &[&str]| {
        let mut all = vec!["audit", "--db", db_arg];
        all.extend_from_slice(args);
        ivrd(&all, dir.path())
    };
    let csv_ids = |o: &Output| -> Vec<String> {
        let mut r = csv::Reader::from_reader(&o.stdout[..]);
        assert_eq!(
            r.headers().unwrap().len(),
            15,
            "every column of the audit table"
        );
        r.records().map(|rec| rec.unwrap()[1].to_string()).collect()
    };

    let o = audit(&[
        "--format",
        "csv",
        "--outcome",
        "verified",
        "--customer",
        "123456",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(csv_ids(&o), ["c4@pbx", "c0@pbx"]);
    let o = audit(&[
        "--format",
        "csv",
        "--outcome",
        "wrong-pin",
        "--outcome",
        "unknown-customer",
    ]);
    assert_eq!(csv_ids(&o), ["c3@pbx", "c1@pbx"]);
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(
        shown.contains(",\"end=completed, \"\"3 tries\"\"\","),
        "{shown}"
    );
    let o = audit(&["--format", "csv", "--since", "8h 30m", "--until", "2h"]);
    assert_eq!(csv_ids(&o), ["c3@pbx", "c2@pbx"]);

    let o = audit(&["--format", "json", "--customer", "654321"]);
    assert!(o.status.success(), "{}", text(&o));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["transfer_target"], "sip:queue@pbx");
    assert_eq!(lines[0]["transfer_status"], 200);
    assert_eq!(lines[0]["transport"], "TLS");

    let o = audit(&["--utc", "--limit", "3"]);
    let table = text(&o);
    assert!(o.status.success(), "{table}");
    assert!(table.starts_with("STARTED "), "{table}");
    assert!(
        table.contains("c4@pbx") && !table.contains("c1@pbx"),
        "{table}"
    );
    assert!(
        table.contains("3 calls, newest first, times in UTC; there are more"),
        "{table}"
    );

    // Mistakes: exit 2, one sentence naming the value, nothing on stdout.
    let o = audit(&["--outcome", "verifed"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(o.stdout.is_empty());
    assert!(
        text(&o).contains("unknown outcome \"verifed\": did you mean \"verified\"?"),
        "{}",
        text(&o)
    );
    let o = audit(&["--since", "last tuesday"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("--since \"last tuesday\": not a time"),
        "{}",
        text(&o)
    );
    let missing = dir.path().join("missing.db");
    let o = ivrd(&["audit", "--db", missing.to_str().unwrap()], dir.path());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no database at"), "{}", text(&o));
    assert!(!missing.exists(), "a listing creates no database");

    let o = audit(&["prune", "--older-than", "8h 30m"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).starts_with("pruned 2 audit rows"), "{}", text(&o));
    let o = audit(&["--outcome", "verified", "prune", "--older-than", "1d"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("prune takes only --older-than"),
        "{}",
        text(&o)
    );
    let o = audit(&["--format", "csv"]);
    assert_eq!(csv_ids(&o), ["c4@pbx", "c3@pbx", "c2@pbx"]);
}
