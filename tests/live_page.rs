//! The live page in a real browser: a daemon with the shipped dialplans takes a SIPp load
//! through the demo plan, and headless Chromium (Debian package `chromium`) loads `/` while
//! the calls run and after: a screenshot, and the rendered DOM, whose per-outcome counts must
//! match `/metrics` (`ivrd_calls_total`) and whose edge counts must match `/live.json`.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CALLS: usize = 12;

/// Runs headless Chromium with `args` then `url`; returns its stdout. Each run has its own
/// profile directory (runs in parallel would fight over one) and a deadline.
fn run_chromium(profile: &Path, args: &[&str], url: &str) -> String {
    let out_path = profile.join(format!("out-{}.txt", rand_suffix()));
    let err_path = profile.join(format!("err-{}.txt", rand_suffix()));
    let mut child = Command::new(chromium())
        .args(CHROMIUM_HEADLESS)
        .arg("--hide-scrollbars")
        .arg(format!(
            "--user-data-dir={}",
            profile.join("profile").display()
        ))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("spawn chromium");
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium {args:?} {url} did not finish in 40 s:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "chromium {args:?} {url} failed ({status}):\n{}",
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    std::fs::read_to_string(&out_path).unwrap()
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// `data-plan`/`data-outcome`/`data-count` of every outcome row in the DOM, summed over plans.
fn page_outcomes(dom: &str) -> BTreeMap<String, u64> {
    let re = regex::Regex::new(
        r#"<tr class="outcome" data-plan="[^"]*" data-outcome="([^"]*)" data-count="(\d+)""#,
    )
    .unwrap();
    let mut out = BTreeMap::new();
    for c in re.captures_iter(dom) {
        *out.entry(c[1].to_string()).or_insert(0) += c[2].parse::<u64>().unwrap();
    }
    out
}

#[test]
fn the_live_page_in_a_browser_matches_metrics_and_live_json() {
    let started = Instant::now();
    let browser = chromium();
    let work = tempfile::Builder::new()
        .prefix("ivrd-live-")
        .tempdir()
        .unwrap();
    let admin = format!("127.0.0.1:{}", free_sip_port());
    let dialplans = Path::new(env!("CARGO_MANIFEST_DIR")).join("dialplans");
    let daemon = Daemon::start(&format!(
        "[admin]\nlisten = \"{admin}\"\n[demo]\nenabled = false\n[dialplans]\ndir = {}\ndefault = \"demo\"\n",
        toml::Value::String(dialplans.display().to_string())
    ));
    let url = format!("http://{admin}/");

    // The load: CALLS calls through the demo plan (welcome, then the language menu gets the
    // keys 4 and 2 by SIP INFO), four new calls a second, each hanging up after ~5 s.
    let welcome = prompt_duration("en", "demo-welcome") + Duration::from_millis(600);
    let sip = daemon.sip_addr();
    let load = std::thread::spawn(move || {
        Sipp::new("info_digits.xml", sip)
            .set("welcome_ms", &welcome.as_millis().to_string())
            .set("after_ms", "2500")
            .arg("-m")
            .arg(&CALLS.to_string())
            .arg("-l")
            .arg(&CALLS.to_string())
            .arg("-r")
            .arg("4")
            .timeout_secs(45)
            .run()
    });

    // While it runs: the page lists calls with the step each is in.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let doc: serde_json::Value =
            serde_json::from_str(body(&admin_get(&admin, "/live.json"))).unwrap();
        let stepping = doc["active_calls"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["step"].is_string());
        if stepping {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no call in a step on /live.json: {doc}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let during = run_chromium(work.path(), &["--dump-dom"], &url);
    let rows = during.matches("<tr class=\"call\"").count();
    assert!(
        rows >= 1,
        "no active call rows in the DOM during the load:\n{during}"
    );
    assert!(
        during.contains("data-dialplan=\"demo\""),
        "active calls are not shown with their dialplan:\n{during}"
    );

    let run = load.join().unwrap();
    run.assert_ok();
    daemon.wait_call_ends(CALLS, Duration::from_secs(20));
    // The counters move just after the call-ended line.
    let deadline = Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let m = admin_get(&admin, "/metrics");
        let ended: f64 = m
            .lines()
            .filter(|l| l.starts_with("ivrd_calls_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if ended as usize >= CALLS {
            break m;
        }
        assert!(Instant::now() < deadline, "calls never counted:\n{m}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let live: serde_json::Value =
        serde_json::from_str(body(&admin_get(&admin, "/live.json"))).unwrap();

    // The screenshot: a real PNG, not an empty file.
    let shot = work.path().join("shot.png");
    run_chromium(
        work.path(),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,2000",
        ],
        &url,
    );
    let png = std::fs::read(&shot).expect("chromium wrote no screenshot");
    // To look at it: IVRD_LIVE_SCREENSHOT=/tmp/live.png cargo test --test live_page
    if let Some(keep) = std::env::var_os("IVRD_LIVE_SCREENSHOT") {
        std::fs::write(keep, &png).unwrap();
    }
    assert!(
        png.len() > 10_000 && png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG of a rendered page: {} bytes",
        png.len()
    );

    let dom = run_chromium(work.path(), &["--dump-dom"], &url);
    assert!(dom.contains("<svg"), "no picture in the DOM:\n{dom}");
    assert!(
        dom.contains("data-plan=\"verify\"") && dom.contains("data-plan=\"demo\""),
        "both shipped plans are drawn:\n{dom}"
    );
    assert!(dom.contains("<span id=\"active-count\">0</span>"), "{dom}");
    // Recent audit rows: every call has one.
    assert_eq!(
        dom.matches("<tr class=\"audit\"").count(),
        CALLS,
        "audit rows on the page:\n{dom}"
    );

    // Per outcome: page == /metrics == /live.json.
    let on_page = page_outcomes(&dom);
    assert_eq!(on_page.values().sum::<u64>(), CALLS as u64, "{on_page:?}");
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("ivrd_calls_total{"))
    {
        let outcome = line
            .split('"')
            .nth(1)
            .expect("ivrd_calls_total{outcome=\"...\"}");
        let n = metric(
            &metrics,
            &format!("ivrd_calls_total{{outcome=\"{outcome}\"}}"),
        ) as u64;
        assert_eq!(
            on_page.get(outcome).copied().unwrap_or(0),
            n,
            "outcome {outcome}: page {on_page:?} vs /metrics"
        );
        let json = live["plans"]["demo"]["outcomes"][outcome]
            .as_u64()
            .unwrap_or(0);
        assert_eq!(json, n, "outcome {outcome}: /live.json {live} vs /metrics");
    }

    // Per edge: every count in /live.json is on the picture, with the same number.
    let edges = live["plans"]["demo"]["edges"].as_array().unwrap();
    assert!(!edges.is_empty(), "no transitions counted: {live}");
    for e in edges {
        let attrs = format!(
            "data-from=\"{}\" data-outcome=\"{}\" data-to=\"{}\" data-count=\"{}\"",
            e["from"].as_str().unwrap(),
            e["outcome"].as_str().unwrap(),
            e["to"].as_str().unwrap(),
            e["count"]
        );
        assert!(dom.contains(&attrs), "{attrs} not on the page:\n{dom}");
    }
    let welcome_edge = edges
        .iter()
        .find(|e| e["from"] == "welcome" && e["to"] == "choose_language")
        .unwrap_or_else(|| panic!("welcome -> choose_language not counted: {live}"));
    assert!(welcome_edge["count"].as_u64().unwrap() >= 1);
    // No script: the page works without JavaScript.
    assert!(!dom.contains("<script"), "{dom}");
    eprintln!(
        "live page test: {CALLS} calls, {} chromium ({}), {:.1} s",
        browser.display(),
        png.len(),
        started.elapsed().as_secs_f64()
    );
}
