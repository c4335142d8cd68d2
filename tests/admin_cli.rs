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

/// Issue 14, defect 5: `simulate` spent the live database's limits (the fourth run of the
/// day ended `rate-limited`). It runs on a throw-away copy and says so; `--live` spends them.
#[test]
fn simulate_runs_on_a_copy_unless_told_to_use_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    copy_plans(&plans);
    let cfg = write_config(dir.path(), &plans);
    let c = cfg.to_str().unwrap();
    let run = |live: bool| {
        let mut args = vec![
            "simulate",
            "verify",
            "--config",
            c,
            "--keys",
            "123456 W {pin}",
        ];
        if live {
            args.push("--live");
        }
        text(&ivrd(&args, dir.path()))
    };
    // sms_per_customer is 3 per 10 minutes: five runs on copies are all verified.
    for _ in 0..5 {
        let out = run(false);
        assert!(out.contains("end: verified"), "{out}");
        assert!(
            out.starts_with("(simulating on a throw-away copy of "),
            "{out}"
        );
    }
    let outcomes: Vec<String> = (0..4)
        .map(|_| {
            let out = run(true);
            assert!(
                out.contains("itself: the limits it spends are real"),
                "{out}"
            );
            out.lines()
                .find_map(|l| l.split_once("end: ").map(|(_, e)| e.to_string()))
                .unwrap_or_default()
        })
        .collect();
    assert!(
        outcomes[..3].iter().all(|o| o.starts_with("verified")),
        "{outcomes:?}"
    );
    assert!(outcomes[3].starts_with("rate-limited"), "{outcomes:?}");
}

/// Issue 14, defect 6: the example commands at the top of the shipped plans must run as
/// written (they did not: `check` took no file). Each `ivrd ...` line is run (up to a pipe),
/// from a scratch directory with the plan paths made absolute, and must exit 0.
#[test]
fn the_commands_in_the_shipped_plans_headers_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut ran = 0;
    for plan in [
        "dialplans/verify.toml",
        "dialplans/demo.toml",
        "examples/dialplans/front.toml",
        "examples/dialplans/call-pin.toml",
    ] {
        let src = std::fs::read_to_string(repo().join(plan)).unwrap();
        for line in src.lines().take_while(|l| l.starts_with('#')) {
            let Some((_, cmd)) = line.split_once("ivrd ") else {
                continue;
            };
            let cmd = cmd.split('|').next().unwrap().trim();
            // Split like a shell: double quotes group words.
            let mut args = Vec::new();
            for (i, part) in cmd.split('"').enumerate() {
                if i % 2 == 1 {
                    args.push(part.to_string());
                } else {
                    args.extend(part.split_whitespace().map(|w| {
                        if w.starts_with("dialplans/") || w.starts_with("examples/") {
                            repo().join(w).display().to_string()
                        } else {
                            w.to_string()
                        }
                    }));
                }
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let o = ivrd(&args, dir.path());
            assert!(o.status.success(), "`ivrd {cmd}` in {plan}: {}", text(&o));
            ran += 1;
        }
    }
    assert!(ran >= 4, "only {ran} commands found in the plans' headers");
}

/// Issue 14, defect 6: one custom prompt meant copying all the bundled ones. Now a site
/// directory holds only what it changes and the bundled set supplies the rest;
/// `bundled_prompts = false` turns that off (and then the missing prompts are errors).
#[test]
fn a_site_prompt_directory_needs_only_the_prompts_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    copy_plans(&plans);
    let site = dir.path().join("site-prompts");
    std::fs::create_dir_all(site.join("en")).unwrap();
    std::fs::copy(
        repo().join("prompts/en/goodbye.wav"),
        site.join("en/welcome.wav"),
    )
    .unwrap();
    let cfg = dir.path().join("ivrd.toml");
    let write = |extra: &str| {
        std::fs::write(
            &cfg,
            format!(
                "[media]\nprompts_dir = {:?}\n{extra}[dialplans]\ndir = {:?}\n[store]\npath = \"ivrd.db\"\n",
                site, plans
            ),
        )
        .unwrap();
    };
    write("");
    let c = cfg.to_str().unwrap();
    let o = ivrd(&["check", "--config", c], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("in {} over ", site.display())),
        "{}",
        text(&o)
    );
    // The site's welcome is played: it lasts as long as the bundled goodbye it was copied
    // from, not as long as the bundled welcome.
    let seconds = |p: &Path| {
        let pcm = ivrd::media::prompt::load_wav(p).unwrap();
        ivrd::media::prompt::Prompt::from_pcm("x", "en", pcm)
            .duration()
            .as_secs_f64()
    };
    let ours = seconds(&repo().join("prompts/en/goodbye.wav"));
    assert_ne!(
        format!("{ours:.3}"),
        format!("{:.3}", seconds(&repo().join("prompts/en/welcome.wav")))
    );
    let sim = text(&ivrd(&["simulate", "verify", "--config", c], dir.path()));
    assert!(
        sim.contains(&format!("play welcome (en, barge-in, {ours:.3}s)")),
        "{sim}"
    );
    write("bundled_prompts = false\n");
    let o = ivrd(&["check", "--config", c], dir.path());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("is missing in en"), "{}", text(&o));
}

/// Issue 14, defect 6: `ivrd graph` failed when the prompts directory was missing; drawing
/// needs no audio, so it draws the plan and warns.
#[test]
fn graph_draws_without_the_prompts_directory() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ivrd.toml");
    std::fs::write(&cfg, "[media]\nprompts_dir = \"no-such-prompts\"\n").unwrap();
    let plan = repo().join("dialplans/verify.toml");
    let o = ivrd(
        &[
            "graph",
            plan.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let dot = String::from_utf8_lossy(&o.stdout);
    assert!(
        dot.starts_with("digraph \"verify\"") && dot.contains("check_pin"),
        "{dot}"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("drawing the plan without checking its prompts"),
        "{}",
        text(&o)
    );
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
    // A standalone SVG with every step of the plan on it.
    let svg = ivrd(
        &[
            "graph",
            "verify",
            "--format",
            "svg",
            "--config",
            cfg.to_str().unwrap(),
        ],
        dir.path(),
    );
    let svg = String::from_utf8_lossy(&svg.stdout).to_string();
    assert!(
        svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\"")
            && svg.trim_end().ends_with("</svg>"),
        "{svg}"
    );
    let plan = std::fs::read_to_string(repo().join("dialplans/verify.toml")).unwrap();
    for step in plan.lines().filter_map(|l| l.strip_prefix("[steps.")) {
        let name = step.trim_end_matches(']');
        assert!(svg.contains(&format!(">{name}<")), "step {name} not drawn");
    }
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

/// Issue 14, defect 2: the packaged config's `rtp_ip = "192.0.2.10"` (not on this host)
/// passed `check`, and `run` said "ready" before the first call failed. Now `check` fails
/// naming the setting and address, `run` refuses to start with the same sentence, and a
/// SIP port clash names its address (it said only "Address in use"); a config error makes
/// `check` exit 1 as the README says.
#[test]
fn check_and_run_name_an_address_that_is_not_on_the_host_or_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    copy_plans(&plans);
    let cfg = write_config(dir.path(), &plans);
    let base = std::fs::read_to_string(&cfg).unwrap();
    let with = |extra: &str| {
        let body = base.replace("[media]\n", &format!("[media]\n{extra}"));
        std::fs::write(&cfg, body).unwrap();
    };
    with("rtp_ip = \"192.0.2.10\"\n");
    let c = cfg.to_str().unwrap();
    let o = ivrd(&["check", "--config", c], dir.path());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("[media] rtp_ip = 192.0.2.10: not an address of this host"),
        "{}",
        text(&o)
    );
    let started = std::time::Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_ivrd"))
        .args(["run", "--config", c])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("[media] rtp_ip = 192.0.2.10: not an address of this host"),
        "{}",
        text(&o)
    );
    assert!(!text(&o).contains("ready"), "{}", text(&o));
    assert!(started.elapsed() < Duration::from_secs(20));

    // A SIP port another process holds: `check` warns, `run` fails naming it.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let body = format!(
        "[sip]\nudp = [\"127.0.0.1:{port}\"]\ntcp = []\n[admin]\nlisten = \"\"\n{}",
        base.replace("[media]\n", "[media]\nrtp_ip = \"127.0.0.1\"\n")
    );
    std::fs::write(&cfg, body).unwrap();
    let o = ivrd(&["check", "--config", c], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("warning: [sip] udp = 127.0.0.1:{port}: in use")),
        "{}",
        text(&o)
    );
    let o = Command::new(env!("CARGO_BIN_EXE_ivrd"))
        .args(["run", "--config", c])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("UDP 127.0.0.1:{port}")),
        "the clash does not name the address: {}",
        text(&o)
    );
    drop(taken);

    std::fs::write(&cfg, "[sip]\nudpp = 1\n").unwrap();
    let o = ivrd(&["check", "--config", c], dir.path());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

/// Issue 14, defect 3: `[dialplans] vars` with a typo'd key or a transfer target that is no
/// SIP URI passed `check` and `run`; now both are refused with the reason.
#[test]
fn check_refuses_unknown_site_vars_and_a_queue_that_is_no_sip_uri() {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    copy_plans(&plans);
    let cfg = write_config(dir.path(), &plans);
    let base = std::fs::read_to_string(&cfg).unwrap();
    let c = cfg.to_str().unwrap();
    // `ivrd check` with `vars` as the site's [dialplans.vars].
    let check_with = |vars: &str| {
        std::fs::write(&cfg, format!("{base}[dialplans.vars]\n{vars}\n")).unwrap();
        ivrd(&["check", "--config", c], dir.path())
    };
    let o = check_with("qeue = \"sip:q@pbx\"");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(
            "[dialplans] vars: \"qeue\" is read by no dialplan (did you mean \"queue\"?)"
        ),
        "{}",
        text(&o)
    );
    let o = check_with("queue = \"queue@pbx\"");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(
            "the transfer target \"queue@pbx\" (${queue} from [dialplans] vars) is not a SIP URI"
        ),
        "{}",
        text(&o)
    );
    let o = check_with("queue = \"sip:queue@pbx.example.com\"");
    assert!(o.status.success(), "{}", text(&o));
}

/// Issue 14: `ivrd sms test NUMBER` sends one text through the configured provider (here the
/// webhook provider to a real HTTP server on loopback) and says whether it was accepted;
/// a refusal exits 1 with the provider's reason.
#[test]
fn sms_test_sends_one_text_through_the_configured_provider() {
    let sink = common::SmsSink::start(200);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ivrd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\ndefault_region = \"GB\"\n[sms]\nprovider = \"webhook\"\nurl = \"{}\"\nmax_retries = 0\n",
            sink.url()
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let o = ivrd(&["sms", "test", "07400 123456", "-c", c], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("sent to +447400123456 through webhook"),
        "{}",
        text(&o)
    );
    let posts = sink.posts();
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_eq!(posts[0].field("to"), "+447400123456");
    assert!(posts[0].field("text").contains("ivrd test message"));
    sink.set_status(400);
    let o = ivrd(
        &["sms", "test", "+447400123456", "--text", "hello", "-c", c],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("did not send to +447400123456"),
        "{}",
        text(&o)
    );
    let o = ivrd(&["sms", "test", "12", "-c", c], dir.path());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

/// Issue 14, time conditions: an `hours` step branches on the site's time zone and holiday
/// file, and `simulate --at` tries a moment (here Christmas Eve, a listed holiday, and the
/// Monday after at 09:00 and at 20:00 in Berlin).
#[test]
fn simulate_at_a_moment_takes_the_hours_and_holidays_of_the_site() {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    std::fs::write(
        plans.join("hours.toml"),
        "[dialplan]\nname = \"hours\"\nstart = \"when\"\n\n\
         [steps.when]\nhours = [\"mon-fri 08:00-18:00\", \"sat 09:00-13:00\"]\n\
         on_open = \"open\"\non_closed = \"closed\"\non_holiday = \"holiday\"\n\n\
         [steps.open]\nhangup = [\"welcome\"]\n\n[steps.closed]\nhangup = [\"goodbye\"]\n\n\
         [steps.holiday]\nhangup = []\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("holidays.txt"), "2026-12-24 Heiligabend\n").unwrap();
    let cfg = dir.path().join("ivrd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[media]\nprompts_dir = {:?}\n[dialplans]\ndir = {:?}\ndefault = \"hours\"\n\
             timezone = \"Europe/Berlin\"\nholidays = \"holidays.txt\"\n[store]\npath = \"ivrd.db\"\n",
            repo().join("prompts"),
            plans
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let at = |when: &str| {
        text(&ivrd(
            &["simulate", "hours", "-c", c, "--at", when],
            dir.path(),
        ))
    };
    assert!(
        at("2026-12-24 10:00").contains("holiday -> holiday"),
        "{}",
        at("2026-12-24 10:00")
    );
    assert!(at("2026-12-28 09:00").contains("open -> open"));
    assert!(at("2026-12-28 20:00").contains("closed -> closed"));
    assert!(at("2026-12-26 12:59").contains("open -> open")); // Saturday morning
    let o = ivrd(
        &["simulate", "hours", "-c", c, "--at", "24.12.2026"],
        dir.path(),
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("--at: \"24.12.2026\" is not a local date and time"),
        "{}",
        text(&o)
    );
    assert!(ivrd(&["check", "-c", c], dir.path()).status.success());
    // A time zone the host does not know is refused by check, naming the setting.
    let body = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("Europe/Berlin", "Europe/Berlln");
    std::fs::write(&cfg, body).unwrap();
    let o = ivrd(&["check", "-c", c], dir.path());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("[dialplans] timezone = \"Europe/Berlln\""),
        "{}",
        text(&o)
    );
}

/// Issue 14, reuse: a plan calls the shipped verify plan instead of copying its 13 steps.
/// `check` follows the call (from the example file alone, finding verify in the dialplans
/// directory; a typo'd plan name is named with a suggestion), and `simulate` runs the
/// verification inside the sub-flow on a real database, naming its steps `verify:STEP`.
#[test]
fn a_plan_calls_the_verify_plan_and_check_and_simulate_follow_it() {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    copy_plans(&plans);
    let example = repo().join("examples/dialplans/front.toml");
    std::fs::copy(&example, plans.join("front.toml")).unwrap();
    let cfg = write_config(dir.path(), &plans);
    let c = cfg.to_str().unwrap();

    let o = ivrd(&["check", "-c", c], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    // The example file on its own: verify comes from the configured directory.
    let o = ivrd(&["check", "-c", c, example.to_str().unwrap()], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("dialplan \"front\""), "{}", text(&o));

    let o = ivrd(
        &[
            "simulate",
            "front",
            "-c",
            c,
            "--at",
            "2026-12-07 10:00",
            "--keys",
            "2 W 123456 W {pin}",
        ],
        dir.path(),
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("step verify (call)"), "{out}");
    assert!(out.contains("call -> verify:welcome"), "{out}");
    assert!(
        out.contains("step verify:check_pin") || out.contains("step verify:check ("),
        "{out}"
    );
    assert!(out.contains("end: verified"), "{out}");
    // German was chosen in front, and the sub-flow speaks it.
    assert!(out.contains("play welcome (de"), "{out}");
    let o = ivrd(
        &["simulate", "front", "-c", c, "--at", "2026-12-07 20:00"],
        dir.path(),
    );
    assert!(text(&o).contains("closed -> closed"), "{}", text(&o));

    let body = std::fs::read_to_string(plans.join("front.toml"))
        .unwrap()
        .replace("call = \"verify\"", "call = \"verfy\"");
    std::fs::write(plans.join("front.toml"), body).unwrap();
    let o = ivrd(&["check", "-c", c], dir.path());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("call \"verfy\": there is no plan \"verfy\" (did you mean \"verify\"?)"),
        "{}",
        text(&o)
    );
}

/// Issue 14, lookups beyond SQLite: `simulate` never calls the CRM an `http` step names; it
/// takes the answers from `--http FILE`, and without one the step fails and says why.
#[test]
fn simulate_fakes_http_steps_from_a_file_and_never_calls_out() {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    // Nothing listens on this port: a real request would fail with "cannot connect".
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    std::fs::write(
        plans.join("crm.toml"),
        format!(
            "[dialplan]\nname = \"crm\"\nstart = \"ask\"\n\n\
             [steps.ask]\ncollect = \"customer_id\"\nmin = 6\nmax = 6\non_input = \"lookup\"\non_failure = \"bye\"\n\n\
             [steps.lookup]\nhttp = \"http://127.0.0.1:{port}/customers/${{customer_id}}\"\n\
             vars = {{ tier = \"/tier\" }}\non_ok = \"tier\"\non_error = \"bye\"\n\n\
             [steps.tier]\nsay_digits = \"${{tier}}\"\nnext = \"bye\"\n\n[steps.bye]\nhangup = []\n"
        ),
    )
    .unwrap();
    let cfg = dir.path().join("ivrd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[media]\nprompts_dir = {:?}\n[dialplans]\ndir = {:?}\ndefault = \"crm\"\n[store]\npath = \"ivrd.db\"\n",
            repo().join("prompts"),
            plans
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("fakes.toml"),
        "[lookup]\nstatus = 200\njson = { tier = 42 }\n",
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let o = ivrd(
        &[
            "simulate",
            "crm",
            "-c",
            c,
            "--keys",
            "123456",
            "--http",
            "fakes.toml",
        ],
        dir.path(),
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "GET http://127.0.0.1:{port}/customers/123456 -> 200, 1 values"
        )),
        "{out}"
    );
    assert!(out.contains("set tier = \"42\""), "{out}");
    assert!(out.contains("play digit-4 + digit-2"), "{out}");
    assert!(
        !out.contains("play  ("),
        "an empty prompt list plays nothing: {out}"
    );

    let o = ivrd(
        &["simulate", "crm", "-c", c, "--keys", "123456"],
        dir.path(),
    );
    let out = text(&o);
    assert!(out.contains("error -> bye"), "{out}");
    assert!(out.contains("no answer for step"), "{out}");
    assert!(
        !out.contains("cannot connect"),
        "simulate called out: {out}"
    );

    std::fs::write(dir.path().join("bad.toml"), "[lookup]\nstauts = 200\n").unwrap();
    let o = ivrd(
        &[
            "simulate", "crm", "-c", c, "--keys", "123456", "--http", "bad.toml",
        ],
        dir.path(),
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("bad.toml: [lookup]"), "{}", text(&o));
}

/// Issue 14, defect 1: with `[store] default_region = "GB"`, national numbers are British in
/// `import` and `add` (they were stored as German numbers), and the options may come after
/// the subcommand (`customers add ... --db F` was refused).
#[test]
fn customers_read_national_numbers_in_the_configured_region() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ivrd.toml");
    std::fs::write(&cfg, "[store]\npath = \"gb.db\"\ndefault_region = \"GB\"\n").unwrap();
    let csv = dir.path().join("c.csv");
    std::fs::write(&csv, "id,name,mobile\n111111,Ann,07400 123456\n").unwrap();
    let (cfg, csv) = (cfg.to_str().unwrap(), csv.to_str().unwrap());
    let o = ivrd(&["customers", "import", csv, "-c", cfg], dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = ivrd(
        &[
            "customers",
            "add",
            "222222",
            "Bob",
            "07400 654321",
            "--config",
            cfg,
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("+447400654321"), "{}", text(&o));
    let list = text(&ivrd(&["customers", "list", "-c", cfg], dir.path()));
    assert!(
        list.contains("+447400123456") && list.contains("+447400654321"),
        "{list}"
    );
    assert!(!list.contains("+49"), "read as German: {list}");
    // --db after the subcommand names the database.
    let other = dir.path().join("other.db");
    let o = ivrd(
        &[
            "customers",
            "add",
            "333333",
            "Cy",
            "+4915112345678",
            "--db",
            other.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(other.is_file());
}

/// Issue 14, defect 4, through the binary: a landline is refused, a semicolon file gets the
/// hint, `--dry-run` changes nothing and `--sync` disables who the file no longer names.
#[test]
fn customers_import_refuses_landlines_hints_at_semicolons_and_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let db = db.to_str().unwrap();
    let csv = dir.path().join("c.csv");
    let path = csv.to_str().unwrap();
    std::fs::write(
        &csv,
        "id;name;mobile\n111111;Ann;0170 1112233\n222222;Bob;030 1234567\n",
    )
    .unwrap();
    let o = ivrd(&["customers", "import", path, "--db", db], dir.path());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--delimiter ';'"), "{}", text(&o));
    let o = ivrd(
        &["customers", "import", path, "--delimiter", ";", "--db", db],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("line 3: mobile number \"030 1234567\" is a fixed line"),
        "{}",
        text(&o)
    );
    std::fs::write(&csv, "id,name,mobile\n333333,Cy,0170 3334455\n").unwrap();
    let o = ivrd(
        &[
            "customers",
            "import",
            path,
            "--sync",
            "--dry-run",
            "--db",
            db,
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("would disable 1 customer not in the file (111111)"),
        "{}",
        text(&o)
    );
    let list = text(&ivrd(&["customers", "list", "--db", db], dir.path()));
    assert!(!list.contains("333333"), "a dry run wrote: {list}");
    let o = ivrd(
        &["customers", "import", path, "--sync", "--db", db],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let json = text(&ivrd(
        &["customers", "list", "--json", "--db", db],
        dir.path(),
    ));
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    let enabled: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["enabled"] == true)
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(enabled, ["333333"], "{json}");
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
