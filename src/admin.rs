//! The admin commands behind `ivrd check`, `ivrd simulate` and `ivrd graph`: what a telephony
//! admin runs before a reload, or instead of picking up a phone.

use crate::config::Config;
use crate::dialplan::{self, CheckEnv, Dialplan, SentSms, SimCall, sim_facts};
use crate::media::prompt::PromptLibrary;
use crate::server::{load_flows, open_store};
use crate::services::{CallServices, SentHook, Shared};
use crate::verify::limits::Verifier;
use crate::verify::sms::{CaptureProvider, SmsError};
use anyhow::{Context, bail};
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

/// `ivrd check`: config, prompts, dialplans, SMS provider settings, limits. Prints every
/// problem (file:line: what and what to do) and exits 1 if there was any.
pub fn check(cfg: &Config) -> ExitCode {
    let mut ok = true;
    for warning in &cfg.warnings {
        eprintln!("warning: {warning}");
    }
    match load_flows(cfg) {
        Ok(crate::server::Flows {
            prompts,
            plans,
            warnings,
        }) => {
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            let langs: Vec<&str> = prompts.languages().collect();
            let dirs: Vec<String> = cfg
                .media
                .prompt_dirs()
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            println!(
                "prompts: {} in {} ({})",
                prompts.len(),
                dirs.join(" over "),
                langs.join(", ")
            );
            for p in &plans {
                println!(
                    "dialplan {:?} ({}): ok, {} steps",
                    p.name,
                    p.file,
                    p.steps.len()
                );
                for advice in dialplan::advisories(p) {
                    eprintln!("warning: {advice}");
                }
                pin_strength(cfg, p);
            }
        }
        Err(e) => {
            ok = false;
            eprintln!("{e:#}");
        }
    }
    if let Err(e) = crate::verify::sms::build(&cfg.sms) {
        ok = false;
        eprintln!("[sms]: {e}");
    }
    if let Err(e) = cfg.limits.validate() {
        ok = false;
        eprintln!("[limits]: {e}");
    }
    match crate::server::tls_config(cfg) {
        Ok(Some(_)) => println!("tls: certificate and key ok"),
        Ok(None) => {}
        Err(e) => {
            ok = false;
            eprintln!("{e:#}");
        }
    }
    let problems = crate::preflight::probe(cfg);
    for p in &problems {
        if p.in_use {
            eprintln!("warning: {p} (by the running ivrd? it will be taken at start)");
        } else {
            ok = false;
            eprintln!("{p}");
        }
    }
    if problems.is_empty() {
        println!("addresses: every listener and media address is on this host and free");
    }
    if ok {
        println!("all checks passed");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `ivrd check FILE...`: just these dialplan files, against the configured prompts and
/// site variables, with the same advice and PIN strength as a whole check.
pub fn check_files(cfg: &Config, files: &[std::path::PathBuf]) -> ExitCode {
    let prompts = match prompts(cfg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut ok = true;
    for file in files {
        match find_plan(cfg, &prompts, &file.display().to_string()) {
            Ok(p) => {
                println!(
                    "dialplan {:?} ({}): ok, {} steps",
                    p.name,
                    p.file,
                    p.steps.len()
                );
                for advice in dialplan::advisories(&p) {
                    eprintln!("warning: {advice}");
                }
                pin_strength(cfg, &p);
            }
            Err(e) => {
                ok = false;
                eprintln!("{e:#}");
            }
        }
    }
    if ok {
        println!("all checks passed");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What the configured limits give an attacker against one customer, for each PIN length a
/// plan sends: guesses a day (and in all, under the guard's cap) and the chance that one
/// hits. A warning above 1 in 10,000 a day.
fn pin_strength(cfg: &Config, plan: &Dialplan) {
    use crate::dialplan::model::Action;
    use crate::verify::limits::guess_success;
    let mut lengths: Vec<usize> = plan
        .steps
        .iter()
        .filter_map(|s| match s.action {
            Action::SendPin { length, .. } => Some(length),
            _ => None,
        })
        .collect();
    lengths.sort_unstable();
    lengths.dedup();
    let cap = cfg.guard.max_consecutive_failures;
    let per_day = cfg.limits.guesses_per_day(cap);
    for length in lengths {
        let p = guess_success(per_day, length);
        let line = format!(
            "dialplan {:?}: {length}-digit PINs: an attacker gets at most {per_day} guesses a \
             day per customer under [limits]{}; one day's success chance {}",
            plan.name,
            if cap > 0 {
                format!(
                    " ({cap} in all before an admin must unlock: {})",
                    one_in(guess_success(cap, length))
                )
            } else {
                String::new()
            },
            one_in(p)
        );
        if p > 1e-4 {
            eprintln!("warning: {line}, above 1 in 10,000: use longer PINs or tighter [limits]");
        } else {
            println!("{line}");
        }
    }
}

/// A probability as "1 in N".
fn one_in(p: f64) -> String {
    if p <= 0.0 {
        "none".into()
    } else {
        format!("1 in {:.0}", 1.0 / p)
    }
}

/// Finds a dialplan by name in the configured directory, or loads it from a path.
fn find_plan(cfg: &Config, prompts: &PromptLibrary, which: &str) -> anyhow::Result<Dialplan> {
    let languages: Vec<String> = prompts.languages().map(str::to_string).collect();
    let exists = |lang: &str, name: &str| prompts.contains(lang, name);
    let env = CheckEnv {
        prompt_exists: &exists,
        languages: &languages,
    };
    let path = Path::new(which);
    let by_file = which.ends_with(".toml") || path.is_file();
    // A plan file comes with the plans of the dialplans directory it calls or goes to.
    let mut plans = if by_file {
        let files = dialplan::check::with_linked_files(&[path.to_path_buf()], &cfg.dialplans.dir);
        dialplan::check::load_set(&files, &env)?
    } else {
        dialplan::load_dir(&cfg.dialplans.dir, &env)?
    };
    dialplan::apply_site_vars(&mut plans, &cfg.dialplans.vars, false)
        .map_err(|problems| anyhow::anyhow!("{}", problems.join("\n")))?;
    let calendar = Arc::new(cfg.dialplans.calendar().map_err(anyhow::Error::msg)?);
    for plan in &mut plans {
        plan.calendar = calendar.clone();
    }
    dialplan::check::link(&mut plans);
    let names: Vec<String> = plans.iter().map(|p| p.name.clone()).collect();
    // By file: the first plan is the file's own.
    let found = if by_file {
        plans.into_iter().next()
    } else {
        plans.into_iter().find(|p| p.name == which)
    };
    match found {
        Some(p) => Ok(p),
        None => bail!(
            "no dialplan named {which:?} in {} (it has: {})",
            cfg.dialplans.dir.display(),
            names.join(", ")
        ),
    }
}

fn prompts(cfg: &Config) -> anyhow::Result<PromptLibrary> {
    crate::server::load_prompts(cfg).map(|(p, _)| p)
}

/// A plan by name or path, parsed but not checked against prompts (for drawing it where the
/// prompts are not at hand).
fn parse_plan(cfg: &Config, which: &str) -> anyhow::Result<Dialplan> {
    let parse = |path: &Path| -> anyhow::Result<Dialplan> {
        let src =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        dialplan::parse(&path.display().to_string(), &src).map_err(|problems| {
            let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("{}", lines.join("\n"))
        })
    };
    let path = Path::new(which);
    if which.ends_with(".toml") || path.is_file() {
        return parse(path);
    }
    let files = dialplan::check::plan_files(&cfg.dialplans.dir)
        .with_context(|| format!("reading {}", cfg.dialplans.dir.display()))?;
    for f in files {
        if let Ok(plan) = parse(&f)
            && plan.name == which
        {
            return Ok(plan);
        }
    }
    bail!(
        "no dialplan named {which:?} in {}",
        cfg.dialplans.dir.display()
    )
}

/// What `ivrd graph` draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphKind {
    Dot,
    Mermaid,
    Svg,
}

/// `ivrd graph`. Drawing needs no audio: without the prompts directory the plan is drawn
/// unchecked, with a warning.
pub fn graph(cfg: &Config, which: &str, kind: GraphKind) -> ExitCode {
    let result = match prompts(cfg) {
        Ok(p) => find_plan(cfg, &p, which),
        Err(e) => {
            eprintln!("warning: {e:#}; drawing the plan without checking its prompts");
            parse_plan(cfg, which)
        }
    };
    match result {
        Ok(plan) => {
            let out = match kind {
                GraphKind::Dot => dialplan::to_dot(&plan),
                GraphKind::Mermaid => dialplan::to_mermaid(&plan),
                GraphKind::Svg => {
                    dialplan::graph::to_svg(&plan, &plan.name, &dialplan::graph::SvgCounts::NONE)
                }
            };
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ivrd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `ivrd sms test NUMBER`: one text through the configured provider, to check its
/// credentials and sender before the first caller needs a PIN. The text carries no PIN and
/// no limit counts it (an admin with the config's secrets runs it). Exit 0 when the provider
/// accepted the message, 1 otherwise, with the provider's reason.
pub fn sms_test(cfg: &Config, number: &str, text: Option<String>) -> ExitCode {
    let to = match crate::store::normalize_phone(number, &cfg.store.default_region) {
        Ok(e164) => e164,
        Err(e) => {
            eprintln!("ivrd: {number:?}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(kind) = crate::store::not_mobile(&to) {
        eprintln!(
            "warning: {to} is {kind}: the provider may accept the text, but it will not arrive"
        );
    }
    let provider = match crate::verify::sms::build(&cfg.sms) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ivrd: [sms]: {e}");
            return ExitCode::FAILURE;
        }
    };
    let text = text.unwrap_or_else(|| {
        format!(
            "ivrd test message, sent {} UTC: the SMS settings work.",
            humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        )
    });
    let msg = crate::verify::sms::SmsMessage {
        to: to.clone(),
        text,
        reference: format!("ivrd-test-{}", uuid::Uuid::new_v4()),
        ttl: std::time::Duration::from_secs(600),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ivrd: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(provider.send(&msg)) {
        Ok(_) => {
            println!(
                "sent to {to} through {} (reference {}); the provider accepted it, delivery is up to the network",
                provider.name(),
                msg.reference
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ivrd: {} did not send to {to}: {e}", provider.name());
            ExitCode::FAILURE
        }
    }
}

/// What `ivrd simulate` was asked to do.
pub struct SimOptions {
    pub dialplan: String,
    pub caller: String,
    pub dialed: String,
    pub keys: String,
    pub sms_fails: bool,
    pub fail_transfer: Vec<String>,
    /// Use the configured database itself: the simulation spends its real limits.
    pub live: bool,
    /// When the call starts, local time in `[dialplans] timezone` (default: now), for
    /// `hours` steps.
    pub at: Option<String>,
    /// The answers `http` steps get ([`crate::http_lookup::HttpFakes`]); without them every
    /// `http` step fails (a simulation never calls out).
    pub http: Option<std::path::PathBuf>,
}

/// Runs a simulated call and returns its transcript.
pub fn simulate_transcript(cfg: &Config, opts: SimOptions) -> anyhow::Result<String> {
    let prompts = Arc::new(prompts(cfg)?);
    let plan = Arc::new(find_plan(cfg, &prompts, &opts.dialplan)?);
    let live = open_store(cfg)?;
    // A simulation sends (captured) PINs, counts wrong ones, may lock a customer out: on the
    // live database the fourth run of the day would be rate-limited for real. So it runs on
    // a copy unless told otherwise, and says which.
    let _copy_dir;
    let (store, header) = if opts.live {
        (
            live,
            format!(
                "(simulating on {} itself: the limits it spends are real)\n",
                cfg.store.database().describe()
            ),
        )
    } else {
        let dir = tempfile::tempdir().context("a directory for the simulation's database")?;
        let copy = dir.path().join("simulation.sqlite");
        live.copy_to(&copy)
            .with_context(|| format!("copying {}", cfg.store.database().describe()))?;
        drop(live);
        _copy_dir = dir;
        (
            Arc::new(crate::store::Store::open(&copy)?),
            format!(
                "(simulating on a throw-away copy of {}: nothing it spends or records is kept; --live to use it)\n",
                cfg.store.database().describe()
            ),
        )
    };
    let capture = CaptureProvider::new();
    if opts.sms_fails {
        capture.fail_with(SmsError::Unavailable("simulated provider outage".into()));
    }
    let sent: Arc<Mutex<Vec<SentSms>>> = Arc::default();
    let hook: SentHook = {
        let sent = sent.clone();
        Arc::new(move |msg, pin| {
            sent.lock().expect("capture lock").push(SentSms {
                to: msg.to.clone(),
                text: msg.text.clone(),
                pin: pin.to_string(),
            })
        })
    };
    let shared = Arc::new(Shared {
        store: store.clone(),
        verifier: Arc::new(
            Verifier::new(store, cfg.limits.clone())
                .context("[limits]")?
                .with_guard(cfg.guard.clone()),
        ),
        sms: Arc::new(capture),
        default_region: cfg.store.default_region.clone(),
        on_sent: Some(hook),
        metrics: Arc::default(),
        send_times: Default::default(),
        http: crate::services::HttpBackend::Fakes(match &opts.http {
            Some(path) => crate::http_lookup::HttpFakes::load(path).map_err(anyhow::Error::msg)?,
            None => Default::default(),
        }),
        voice: Default::default(),
    });
    let services = CallServices { shared };
    let durations = prompts.clone();
    let pauses = prompts.clone();
    let mut facts = sim_facts(&opts.caller, &opts.dialed);
    facts.started = match &opts.at {
        Some(at) => plan
            .calendar
            .local_time(at)
            .map_err(|e| anyhow::anyhow!("--at: {e}"))?,
        None => std::time::SystemTime::now(),
    };
    let call = SimCall::new(facts, &opts.keys)
        .map_err(|e| anyhow::anyhow!("--keys: {e}"))?
        .sms_capture(move || sent.lock().expect("capture lock").clone())
        .prompt_durations(move |lang, name| {
            durations
                .get(lang, name)
                .map(|p| p.duration())
                .unwrap_or(dialplan::sim::DEFAULT_PROMPT_DURATION)
        })
        .prompt_pauses(move |lang, name| {
            pauses
                .get(lang, name)
                .map(|p| p.pause_times().collect())
                .unwrap_or_default()
        })
        .fail_transfers(opts.fail_transfer.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let sim = rt.block_on(dialplan::simulate(&plan, call, &services));
    Ok(format!("{header}{}", sim.format()))
}

/// `ivrd simulate`.
pub fn simulate(cfg: &Config, opts: SimOptions) -> ExitCode {
    match simulate_transcript(cfg, opts) {
        Ok(t) => {
            print!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ivrd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
