//! Everything `ivrd check` finds in a dialplan, all at once, each at its line.
//!
//! [`parse`](mod@super::parse) reports what one step alone shows (types, keys, durations, patterns);
//! this module looks at the plan as a whole and at what it needs from outside:
//! - transitions to steps that do not exist, and outcomes with no transition at all;
//! - steps that can never be reached from `start`;
//! - prompts missing in any language the plan may speak (including the digit and number
//!   prompts `say_digits` and `say_number` compose), and languages with no prompts;
//! - variables read but never set anywhere, and secrets sent out in transfer headers;
//! - SMS templates missing for a language the plan speaks.
//!
//! [`load`] runs both and returns every problem, sorted by line, so an admin fixes a file in
//! one pass instead of one error per reload.

use super::model::{Action, Dialplan, Entry, Target};
use super::parse::{BUILTIN_VARS, Partial, parse_partial};
use super::problem::{Pos, Problem, closest, did_you_mean};
use super::say;
use super::services::PinChannel;
use super::template::Part;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

/// What a plan is checked against: the prompts that exist.
pub struct CheckEnv<'a> {
    /// Whether prompt `name` (second argument) exists in `language` (first argument).
    pub prompt_exists: &'a dyn Fn(&str, &str) -> bool,
    /// The languages that have prompts at all.
    pub languages: &'a [String],
}

/// Why dialplans could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DialplanError {
    /// A file or directory could not be read.
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The plans have problems; each names its file and line.
    #[error("{}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid { problems: Vec<Problem> },
}

/// Parses and checks a plan: the plan, or every problem in it.
pub fn load(file: &str, src: &str, env: &CheckEnv<'_>) -> Result<Dialplan, Vec<Problem>> {
    let Partial {
        plan,
        broken,
        mut problems,
    } = parse_partial(file, src);
    let Some(plan) = plan else {
        return Err(problems);
    };
    problems.extend(check_inner(&plan, env, &broken, &InSet::default()));
    if problems.is_empty() {
        Ok(plan)
    } else {
        problems.sort_by_key(Problem::pos);
        Err(problems)
    }
}

/// [`load`] for a file on disk; problems name it as `path` is written.
pub fn load_file(path: &Path, env: &CheckEnv<'_>) -> Result<Dialplan, DialplanError> {
    let src = std::fs::read_to_string(path).map_err(|source| DialplanError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    load(&path.display().to_string(), &src, env)
        .map_err(|problems| DialplanError::Invalid { problems })
}

/// The dialplan files of `dir`: every `*.toml`, sorted by name.
pub fn plan_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Loads every `*.toml` in `dir` (sorted by name) and checks them together: every problem
/// in every file, plus numbers two plans both claim and the plans' calls into each other
/// ([`check_links`]). The plans are not linked yet: [`link`] them once site variables and
/// the calendar are set.
pub fn load_dir(dir: &Path, env: &CheckEnv<'_>) -> Result<Vec<Dialplan>, DialplanError> {
    let files = plan_files(dir).map_err(|source| DialplanError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    load_set(&files, env)
}

/// [`load_dir`] for a list of files.
pub fn load_set(files: &[PathBuf], env: &CheckEnv<'_>) -> Result<Vec<Dialplan>, DialplanError> {
    let mut sources = Vec::new();
    for f in files {
        let src = std::fs::read_to_string(f).map_err(|source| DialplanError::Read {
            path: f.clone(),
            source,
        })?;
        sources.push((f.display().to_string(), src));
    }
    load_sources(&sources, env).map_err(|problems| DialplanError::Invalid { problems })
}

/// Parses and checks plans together, given as (file name, text): the plans, or every
/// problem in any of them.
pub fn load_sources(
    sources: &[(String, String)],
    env: &CheckEnv<'_>,
) -> Result<Vec<Dialplan>, Vec<Problem>> {
    let mut partials = Vec::new();
    let mut problems = Vec::new();
    for (file, src) in sources {
        let partial = parse_partial(file, src);
        problems.extend(partial.problems);
        if let Some(plan) = partial.plan {
            partials.push((plan, partial.broken));
        }
    }
    // What the plans need from each other: the steps other plans enter (so they count as
    // reached), and the variables set anywhere among plans that call or go to each other.
    let plans_only: Vec<&Dialplan> = partials.iter().map(|(p, _)| p).collect();
    for (plan, broken) in &partials {
        let in_set = InSet::of(plan, &plans_only);
        problems.extend(check_inner(plan, env, broken, &in_set));
    }
    let plans: Vec<Dialplan> = partials.into_iter().map(|(p, _)| p).collect();
    problems.extend(check_numbers(&plans));
    problems.extend(check_links(&plans));
    if problems.is_empty() {
        Ok(plans)
    } else {
        problems.sort_by(|a, b| (&a.file, a.pos()).cmp(&(&b.file, b.pos())));
        Err(problems)
    }
}

/// `files`, and the files of `dir` that hold the plans they `call` or `goto`, directly or
/// through each other (for checking or simulating one file with what it needs). Files that
/// do not parse are left to [`load_set`] to report.
pub fn with_linked_files(files: &[PathBuf], dir: &Path) -> Vec<PathBuf> {
    let parsed = |f: &Path| -> Option<Dialplan> {
        let src = std::fs::read_to_string(f).ok()?;
        parse_partial(&f.display().to_string(), &src).plan
    };
    let mut out: Vec<PathBuf> = files.to_vec();
    let mut have: BTreeSet<String> = BTreeSet::new();
    let mut wanted: VecDeque<String> = VecDeque::new();
    let note = |plan: &Dialplan, have: &mut BTreeSet<String>, wanted: &mut VecDeque<String>| {
        have.insert(plan.name.clone());
        for (_, entry) in plan.entries() {
            wanted.push_back(entry.plan_name(&plan.name).to_string());
        }
    };
    for f in files {
        if let Some(plan) = parsed(f) {
            note(&plan, &mut have, &mut wanted);
        }
    }
    if wanted.iter().all(|w| have.contains(w)) {
        return out;
    }
    let dir_plans: Vec<(PathBuf, Dialplan)> = plan_files(dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|f| parsed(&f).map(|p| (f, p)))
        .collect();
    while let Some(name) = wanted.pop_front() {
        if have.contains(&name) {
            continue;
        }
        if let Some((f, plan)) = dir_plans.iter().find(|(_, p)| p.name == name) {
            out.push(f.clone());
            note(plan, &mut have, &mut wanted);
        } else {
            // Reported by check_links, with the plans there are.
            have.insert(name);
        }
    }
    out
}

/// What a plan's check knows of the other plans in its set.
#[derive(Default)]
pub(crate) struct InSet {
    /// Steps of this plan that other plans `call` or `goto`: reached, whatever its start
    /// does.
    entered: BTreeSet<String>,
    /// Variables the plans it is linked with set (sub-flows share the call's variables),
    /// and whether one of them looks up a customer.
    vars: BTreeSet<String>,
    lookup: bool,
}

impl InSet {
    fn of(plan: &Dialplan, set: &[&Dialplan]) -> InSet {
        let mut in_set = InSet::default();
        let mut linked = false;
        for other in set {
            for (_, entry) in other.entries() {
                if entry.plan_name(&other.name) != plan.name || std::ptr::eq(*other, plan) {
                    continue;
                }
                linked = true;
                in_set.entered.insert(
                    entry
                        .step
                        .clone()
                        .unwrap_or_else(|| plan.start.step.clone()),
                );
            }
        }
        linked |= plan.entries().next().is_some();
        if linked {
            for other in set.iter().filter(|o| !std::ptr::eq(**o, plan)) {
                let (vars, lookup) = vars_set(other);
                in_set.vars.extend(vars);
                in_set.lookup |= lookup;
            }
        }
        in_set
    }
}

/// The variables a plan's own steps and `[vars]` set, and whether it looks up a customer.
fn vars_set(plan: &Dialplan) -> (BTreeSet<String>, bool) {
    let mut set: BTreeSet<String> = plan.vars.keys().cloned().collect();
    let mut has_lookup = false;
    for step in &plan.steps {
        set.insert(format!("{}.outcome", step.name));
        match &step.action {
            Action::Collect(c) => {
                set.insert(c.var.clone());
            }
            Action::Set { vars, .. } => set.extend(vars.iter().map(|a| a.name.clone())),
            Action::Count { var, .. } => {
                set.insert(var.clone());
            }
            Action::LookupCustomer { .. } => has_lookup = true,
            Action::SendPin { .. } => {
                set.insert(format!("{}.minutes", step.name));
            }
            Action::CheckPin { .. } => {
                set.insert(format!("{}.tries_left", step.name));
            }
            Action::Transfer { .. } => {
                set.insert(format!("{}.status", step.name));
                set.insert(format!("{}.reason", step.name));
            }
            Action::Call { .. } => {
                set.insert(format!("{}.result", step.name));
            }
            Action::Http(h) => {
                set.extend(h.vars.iter().map(|(v, _)| v.clone()));
                set.insert(format!("{}.status", step.name));
                set.insert(format!("{}.reason", step.name));
            }
            _ => {}
        }
    }
    (set, has_lookup)
}

/// What `call` and `goto` steps need from the plans they enter: the plan exists, so does
/// the step, the plan speaks every language the caller's plan may be in, and no plan calls
/// itself back through others (a sub-flow that can never return; `goto` is the way back).
pub fn check_links(plans: &[Dialplan]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let by_name: BTreeMap<&str, &Dialplan> = plans.iter().map(|p| (p.name.as_str(), p)).collect();
    let names: Vec<&str> = by_name.keys().copied().collect();
    for plan in plans {
        for (step, entry) in plan.entries() {
            let name = entry.plan_name(&plan.name);
            let Some(target) = by_name.get(name) else {
                problems.push(
                    Problem::new(
                        &plan.file,
                        entry.pos,
                        format!(
                            "step \"{}\": {} \"{entry}\": there is no plan \"{name}\"",
                            step.name,
                            step.action.kind()
                        ),
                    )
                    .with_hint(
                        did_you_mean(name, names.iter().copied())
                            .or_else(|| Some(format!("the plans are: {}", names.join(", ")))),
                    ),
                );
                continue;
            };
            if let Some(s) = &entry.step
                && target.step(s).is_none()
            {
                problems.push(
                    Problem::new(
                        &plan.file,
                        entry.pos,
                        format!(
                            "step \"{}\": {} \"{entry}\": plan \"{name}\" has no step \"{s}\"",
                            step.name,
                            step.action.kind()
                        ),
                    )
                    .with_hint(did_you_mean(
                        s,
                        target.steps.iter().map(|t| t.name.as_str()),
                    )),
                );
            }
            let missing: Vec<&str> = plan
                .languages
                .iter()
                .filter(|l| !target.languages.contains(l))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                problems.push(
                    Problem::new(
                        &plan.file,
                        entry.pos,
                        format!(
                            "step \"{}\": plan \"{name}\" does not speak {}, which this plan may be in",
                            step.name,
                            missing.join(", ")
                        ),
                    )
                    .with_hint(Some(format!(
                        "add {} to the languages of plan \"{name}\" (and its prompts)",
                        missing.join(", ")
                    ))),
                );
            }
        }
    }
    // Calls between plans must not come back around: A calls B calls A.
    let calls = |p: &Dialplan| -> BTreeSet<String> {
        p.steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::Call {
                    entry:
                        Entry {
                            plan: Some(other), ..
                        },
                    ..
                } if *other != p.name => Some(other.clone()),
                _ => None,
            })
            .collect()
    };
    for plan in plans {
        let mut path = vec![plan.name.clone()];
        if let Some(cycle) = call_cycle(&plan.name, &by_name, &calls, &mut path) {
            // Reported once, at the plan whose name sorts first in the cycle.
            if cycle.iter().min() == Some(&plan.name) {
                problems.push(
                    Problem::new(
                        &plan.file,
                        plan.pos,
                        format!(
                            "plans call each other in a circle: {}",
                            cycle.join(" calls ")
                        ),
                    )
                    .with_hint(Some(
                        "a sub-flow cannot call the plan that called it; use goto to go back"
                            .into(),
                    )),
                );
            }
        }
    }
    problems
}

/// A path of calls from `path`'s last plan back to `start`, if there is one.
fn call_cycle(
    start: &str,
    plans: &BTreeMap<&str, &Dialplan>,
    calls: &dyn Fn(&Dialplan) -> BTreeSet<String>,
    path: &mut Vec<String>,
) -> Option<Vec<String>> {
    let last = plans.get(path.last()?.as_str())?;
    for next in calls(last) {
        if next == start {
            let mut cycle = path.clone();
            cycle.push(next);
            return Some(cycle);
        }
        // Plans are few (a handful per site); the depth bound keeps this linear in them.
        if path.contains(&next) || path.len() > plans.len() {
            continue;
        }
        path.push(next);
        if let Some(c) = call_cycle(start, plans, calls, path) {
            return Some(c);
        }
        path.pop();
    }
    None
}

/// Gives every plan the plans its `call` and `goto` steps lead to, directly or through
/// others ([`Dialplan::linked`]). Run it last, once the set passed [`load_dir`] and site
/// variables and the calendar are set: the linked copies are taken as the plans are then.
pub fn link(plans: &mut [Dialplan]) {
    let bare: BTreeMap<String, std::sync::Arc<Dialplan>> = plans
        .iter()
        .map(|p| {
            let mut p = p.clone();
            p.linked.clear();
            (p.name.clone(), std::sync::Arc::new(p))
        })
        .collect();
    for plan in plans.iter_mut() {
        let mut linked = BTreeMap::new();
        let mut queue: VecDeque<&Dialplan> = VecDeque::from([&*plan]);
        while let Some(p) = queue.pop_front() {
            for (_, entry) in p.entries() {
                let name = entry.plan_name(&p.name);
                if name == plan.name || linked.contains_key(name) {
                    continue;
                }
                if let Some(other) = bare.get(name) {
                    linked.insert(name.to_string(), other.clone());
                    queue.push_back(other);
                }
            }
        }
        plan.linked = linked;
    }
}

/// Checks a parsed plan as a whole (see the module docs).
pub fn check(plan: &Dialplan, env: &CheckEnv<'_>) -> Vec<Problem> {
    let mut problems = check_inner(plan, env, &BTreeSet::new(), &InSet::default());
    problems.sort_by_key(Problem::pos);
    problems
}

/// Plans that answer the same number, or share a name: the daemon could not tell them apart.
pub fn check_numbers(plans: &[Dialplan]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut numbers: BTreeMap<String, &Dialplan> = BTreeMap::new();
    let mut names: BTreeMap<&str, &Dialplan> = BTreeMap::new();
    for plan in plans {
        if let Some(other) = names.insert(&plan.name, plan) {
            problems.push(
                Problem::new(
                    &plan.file,
                    plan.pos,
                    format!("plan name \"{}\" is also used by {}", plan.name, other.file),
                )
                .with_hint(Some("give every plan its own name".into())),
            );
        }
        for n in &plan.numbers {
            // A plan that lists a number twice does not collide with itself.
            if let Some(other) = numbers.insert(n.to_string(), plan)
                && !std::ptr::eq(other, plan)
            {
                problems.push(
                    Problem::new(
                        &plan.file,
                        n.pos,
                        format!(
                            "numbers: \"{n}\" is also answered by plan \"{}\" ({})",
                            other.name, other.file
                        ),
                    )
                    .with_hint(Some("a number belongs to one plan".into())),
                );
            }
        }
    }
    problems
}

/// The prompts under a directory laid out as `ROOT/<language>/<name>.wav`.
#[derive(Debug, Clone, Default)]
pub struct PromptDir {
    languages: Vec<String>,
    names: BTreeSet<(String, String)>,
}

impl PromptDir {
    pub fn scan(root: &Path) -> std::io::Result<PromptDir> {
        let mut dir = PromptDir::default();
        let mut entries: Vec<_> = std::fs::read_dir(root)?.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let lang = e.file_name().to_string_lossy().into_owned();
            if !e.path().is_dir() || lang.starts_with('.') {
                continue;
            }
            for f in std::fs::read_dir(e.path())?.filter_map(Result::ok) {
                let p = f.path();
                if p.extension().is_some_and(|x| x == "wav")
                    && let Some(stem) = p.file_stem()
                {
                    dir.names
                        .insert((lang.clone(), stem.to_string_lossy().into_owned()));
                }
            }
            dir.languages.push(lang);
        }
        Ok(dir)
    }

    pub fn languages(&self) -> &[String] {
        &self.languages
    }

    pub fn exists(&self, language: &str, name: &str) -> bool {
        self.names
            .contains(&(language.to_string(), name.to_string()))
    }
}

/// Advice that does not stop a plan from loading: ways a plan lets a caller learn something
/// before any secret is checked. Today: a lookup whose outcomes go different ways (an
/// enumeration oracle: "unknown number" is audible), and a language switched to the
/// customer's own before the PIN check (a German customer's id is audible by its prompts).
pub fn advisories(plan: &Dialplan) -> Vec<Problem> {
    let mut out = Vec::new();
    let checks_a_pin = plan
        .steps
        .iter()
        .any(|s| matches!(s.action, Action::CheckPin { .. }));
    if !checks_a_pin {
        return out;
    }
    for step in &plan.steps {
        let Action::LookupCustomer {
            decoy,
            on_found,
            on_not_found,
            on_locked,
            ..
        } = &step.action
        else {
            continue;
        };
        fn goes(t: &Option<Target>) -> Option<&str> {
            t.as_ref().map(|t| t.step.as_str())
        }
        if *decoy {
            for (key, t) in [("on_not_found", on_not_found), ("on_locked", on_locked)] {
                if let Some(t) = t {
                    out.push(
                        Problem::new(
                            &plan.file,
                            t.pos,
                            format!(
                                "step \"{}\": {key} is never taken with decoy = true",
                                step.name
                            ),
                        )
                        .with_hint(Some(format!("remove {key}"))),
                    );
                }
            }
        } else if goes(on_not_found) != goes(on_found) || goes(on_locked) != goes(on_found) {
            out.push(
                Problem::new(
                    &plan.file,
                    step.pos,
                    format!(
                        "step \"{}\": a registered id and an unknown or locked-out one go different \
                         ways before any PIN is checked, so a caller can tell by ear which ids exist",
                        step.name
                    ),
                )
                .with_hint(Some(
                    "add: decoy = true (they go on as found and fail the PIN check)".into(),
                )),
            );
        }
        // What the caller hears between the lookup and a PIN check must not depend on the
        // customer: walk from the lookup, stopping at PIN checks.
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&str> = goes(on_found).into_iter().collect();
        while let Some(name) = todo.pop() {
            if !seen.insert(name) {
                continue;
            }
            let Some(s) = plan.step(name) else { continue };
            match &s.action {
                Action::CheckPin { .. } => continue,
                Action::SetLanguage { value, .. }
                    if value
                        .parts
                        .iter()
                        .any(|p| matches!(p, Part::Var(v) if v.starts_with("customer."))) =>
                {
                    out.push(
                        Problem::new(
                            &plan.file,
                            s.pos,
                            format!(
                                "step \"{}\": switches to the customer's language before the PIN \
                                 is checked, so a caller hears whether an id belongs to a customer \
                                 (and which language they speak)",
                                s.name
                            ),
                        )
                        .with_hint(Some(
                            "switch language after the check_pin step's on_valid; the SMS is \
                             sent in the customer's language anyway"
                                .into(),
                        )),
                    );
                }
                _ => {}
            }
            for t in s.action.transitions() {
                if let Some(target) = t.target {
                    todo.push(target.step.as_str());
                }
            }
        }
    }
    out
}

/// Sets the site's variables (`[dialplans] vars` of the config) in every plan, after checking
/// them against the plans: a key no plan reads but one letter off a variable a plan does read
/// is a typo (an error, with "did you mean"); one no plan reads otherwise is a warning (a site
/// may keep values for plans it does not load now); a name ivrd sets itself cannot be
/// overridden; and a transfer target that is now fixed text must be a SIP URI (`queue@pbx`
/// would be sent as a Refer-To no PBX routes). Returns the warnings, or every problem, one
/// sentence each, and changes nothing then. `every_plan`: `plans` are all the site's plans
/// (not one file loaded on its own), so what none of them reads can be judged.
pub fn apply_site_vars(
    plans: &mut [Dialplan],
    vars: &BTreeMap<String, String>,
    every_plan: bool,
) -> Result<Vec<String>, Vec<String>> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut known: BTreeSet<&str> = BTreeSet::new();
    for plan in plans.iter() {
        known.extend(plan.vars.keys().map(String::as_str));
        for step in &plan.steps {
            for t in step.action.templates() {
                known.extend(t.vars());
            }
        }
    }
    for key in vars.keys() {
        if BUILTIN_VARS.contains(&key.as_str()) || key.contains('.') {
            problems.push(format!(
                "[dialplans] vars: {key:?} is set by ivrd or a step; it cannot be set here"
            ));
        } else if every_plan && !known.contains(key.as_str()) {
            match did_you_mean(key, known.iter().copied()) {
                Some(hint) => problems.push(format!(
                    "[dialplans] vars: {key:?} is read by no dialplan ({hint})"
                )),
                None => warnings.push(format!("[dialplans] vars: {key:?} is read by no dialplan")),
            }
        }
    }
    for plan in plans.iter() {
        for step in &plan.steps {
            let Action::Transfer { target, .. } = &step.action else {
                continue;
            };
            let fixed = |v: &str| vars.get(v).or_else(|| plan.vars.get(v));
            if target.vars().count() == 0 || !target.vars().all(|v| fixed(v).is_some()) {
                continue;
            }
            let uri = target.render(|v| fixed(v).cloned().unwrap_or_default());
            if let Some(why) = transfer_target_problem(&uri) {
                let from: Vec<String> = target
                    .vars()
                    .map(|v| {
                        let source = if vars.contains_key(v) {
                            "[dialplans] vars"
                        } else {
                            "the plan's [vars]"
                        };
                        format!("${{{v}}} from {source}")
                    })
                    .collect();
                problems.push(format!(
                    "{}:{}:{}: step {:?}: the transfer target {:?} ({}) {why}",
                    plan.file,
                    target.pos.line,
                    target.pos.column,
                    step.name,
                    uri,
                    from.join(", ")
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    for plan in plans.iter_mut() {
        for (k, v) in vars {
            plan.vars.insert(k.clone(), v.clone());
        }
    }
    Ok(warnings)
}

/// Why `uri` cannot be a REFER's target, if it cannot: it must be a SIP URI with a host
/// (or a `tel:` number).
pub fn transfer_target_problem(uri: &str) -> Option<String> {
    let lower = uri.trim().to_ascii_lowercase();
    if let Some(number) = lower.strip_prefix("tel:") {
        let digits = number.split(';').next().unwrap_or_default();
        let ok = !digits.is_empty()
            && digits
                .chars()
                .all(|c| c.is_ascii_digit() || "+-.()".contains(c));
        return (!ok).then(|| "is not a tel: number".to_string());
    }
    if !(lower.starts_with("sip:") || lower.starts_with("sips:")) {
        return Some("is not a SIP URI (expected e.g. \"sip:queue@pbx.example.com\")".into());
    }
    crate::sip::message::parse_sip_uri(uri.trim())
        .is_none()
        .then(|| "is not a valid SIP URI".to_string())
}

pub(crate) fn check_inner(
    plan: &Dialplan,
    env: &CheckEnv<'_>,
    broken: &BTreeSet<String>,
    in_set: &InSet,
) -> Vec<Problem> {
    let mut c = Checker {
        plan,
        problems: Vec::new(),
        typos: BTreeMap::new(),
        in_set,
    };
    c.transitions(broken);
    if broken.is_empty() {
        c.reachability();
    }
    c.languages_and_prompts(env);
    c.variables(broken);
    c.sms();
    c.problems
}

struct Checker<'p> {
    plan: &'p Dialplan,
    problems: Vec<Problem>,
    /// Transition targets that do not exist but are one typo from a step that does: the
    /// step meant. Steps reached only through them are reported as cut off by the typo.
    typos: BTreeMap<String, String>,
    in_set: &'p InSet,
}

/// What a missing transition means, so the message can ask the right question.
fn outcome_meaning(key: &str) -> &'static str {
    match key {
        "next" => "after it",
        "on_input" => "when the caller enters valid input",
        "on_failure" => "when it fails",
        "else" => "when no case matches",
        "on_found" => "when the customer is found",
        "on_not_found" => "when no customer (or more than one) matches",
        "on_locked" => "when the customer is locked out",
        "on_error" => "when the lookup fails",
        "on_ok" => "when the request succeeds",
        "on_open" => "within the hours",
        "on_closed" => "outside the hours",
        "on_sent" => "when the SMS is sent",
        "on_limited" => "when too many SMS were sent",
        "on_valid" => "when the PIN is right",
        "on_invalid" => "when the PIN is wrong and tries are left",
        "on_exhausted" => "when the PIN is wrong and no tries are left",
        "on_expired" => "when the PIN has expired",
        _ => "for this outcome",
    }
}

impl<'p> Checker<'p> {
    fn push(&mut self, pos: Pos, message: String, hint: Option<String>) {
        self.problems
            .push(Problem::new(&self.plan.file, pos, message).with_hint(hint));
    }

    fn step_names(&self) -> Vec<&'p str> {
        let plan: &'p Dialplan = self.plan;
        plan.steps.iter().map(|s| s.name.as_str()).collect()
    }

    fn exists(&self, name: &str, broken: &BTreeSet<String>) -> bool {
        self.plan.step(name).is_some() || broken.contains(name)
    }

    fn transitions(&mut self, broken: &BTreeSet<String>) {
        let names = self.step_names();
        let start = &self.plan.start;
        if !self.exists(&start.step, broken) {
            if let Some(meant) = closest(&start.step, names.iter().copied()) {
                self.typos.insert(start.step.clone(), meant.to_string());
            }
            let hint = did_you_mean(&start.step, names.iter().copied());
            self.push(
                start.pos,
                format!("start = \"{}\", which does not exist", start.step),
                hint,
            );
        }
        let mut found = Vec::new();
        for step in &self.plan.steps {
            for t in step.action.transitions() {
                match t.target {
                    None => found.push((
                        step.pos,
                        format!(
                            "step \"{}\": no {} (where does the call go {}?)",
                            step.name,
                            t.key,
                            outcome_meaning(t.key)
                        ),
                        Some(format!("add: {} = \"step_name\"", t.key)),
                    )),
                    Some(target) if !self.exists(&target.step, broken) => {
                        if let Some(meant) = closest(&target.step, names.iter().copied()) {
                            self.typos.insert(target.step.clone(), meant.to_string());
                        }
                        found.push((
                            target.pos,
                            format!(
                                "step \"{}\": {} goes to \"{}\", which does not exist",
                                step.name,
                                match t.key {
                                    "options" => format!("option \"{}\"", t.label),
                                    "hotkeys" => format!("hotkey \"{}\"", t.label),
                                    "goto" if t.label != "goto" =>
                                        format!("the case \"{}\"", t.label),
                                    key => key.to_string(),
                                },
                                target.step
                            ),
                            did_you_mean(&target.step, names.iter().copied()),
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        for (pos, message, hint) in found {
            self.push(pos, message, hint);
        }
    }

    /// The steps a path from the start reaches, with typo'd targets read as the step meant
    /// (`fix`) or as written.
    fn reached(&self, fix: bool) -> BTreeSet<&'p str> {
        let plan: &'p Dialplan = self.plan;
        let resolve = |name: &'p str| -> &'p str {
            match self.typos.get(name) {
                Some(meant) if fix => plan.step(meant).map_or(name, |s| s.name.as_str()),
                _ => name,
            }
        };
        let mut seen = BTreeSet::new();
        let mut queue = VecDeque::from([resolve(plan.start.step.as_str())]);
        queue.extend(self.in_set.entered.iter().map(String::as_str));
        while let Some(name) = queue.pop_front() {
            if !seen.insert(name) {
                continue;
            }
            if let Some(step) = plan.step(name) {
                queue.extend(
                    step.action
                        .transitions()
                        .iter()
                        .filter_map(|t| t.target.map(|t| resolve(t.step.as_str()))),
                );
            }
        }
        seen
    }

    /// Steps no path from the start reaches. Those that a typo'd step name cuts off (they
    /// would be reached if the name were the step it is one typo from) are one line after
    /// the typo, not one line each burying it.
    fn reachability(&mut self) {
        let seen = self.reached(false);
        let fixed = self.reached(true);
        let plan: &'p Dialplan = self.plan;
        let (cut_off, unreachable): (Vec<_>, Vec<_>) = plan
            .steps
            .iter()
            .filter(|s| !seen.contains(s.name.as_str()))
            .partition(|s| fixed.contains(s.name.as_str()));
        if !cut_off.is_empty() {
            let names: Vec<String> = cut_off.iter().map(|s| format!("{:?}", s.name)).collect();
            // At the last typo's place, so that sorting by line keeps it right after it.
            let pos = self
                .problems
                .iter()
                .filter(|p| p.message.contains("which does not exist"))
                .map(Problem::pos)
                .max()
                .unwrap_or(plan.start.pos);
            let typos: Vec<String> = self
                .typos
                .iter()
                .map(|(typo, meant)| format!("\"{typo}\" for \"{meant}\""))
                .collect();
            self.push(
                pos,
                format!(
                    "{} never reached from start \"{}\" ({}) because of the typo above ({})",
                    match names.len() {
                        1 => "1 step is".to_string(),
                        n => format!("{n} steps are"),
                    },
                    plan.start.step,
                    names.join(", "),
                    typos.join(", ")
                ),
                None,
            );
        }
        for step in unreachable {
            self.push(
                step.pos,
                format!(
                    "step \"{}\" is never reached from start \"{}\"",
                    step.name, plan.start.step
                ),
                Some("remove it, or add a transition to it".into()),
            );
        }
    }

    fn languages_and_prompts(&mut self, env: &CheckEnv<'_>) {
        let plan = self.plan;
        let mut langs = Vec::new();
        for l in &plan.languages {
            if env.languages.contains(l) {
                langs.push(l.as_str());
            } else {
                self.push(
                    plan.languages_pos,
                    format!("language \"{l}\" has no prompts"),
                    Some(format!(
                        "add prompts/{l}/ with every prompt, or drop \"{l}\" from languages"
                    )),
                );
            }
        }
        for step in &plan.steps {
            let mut wanted: Vec<(String, Pos)> = step
                .action
                .prompts()
                .iter()
                .map(|p| (p.name.clone(), p.pos))
                .collect();
            match &step.action {
                Action::SayDigits { .. } => {
                    wanted.extend(say::digit_prompt_names().into_iter().map(|n| (n, step.pos)))
                }
                Action::SayNumber { .. } => {
                    for l in &langs {
                        match say::number_prompt_names(l) {
                            Some(names) => {
                                for n in names {
                                    if !(env.prompt_exists)(l, &n) {
                                        self.push(
                                            step.pos,
                                            format!("step \"{}\": say_number needs prompt \"{n}\", missing in {l}", step.name),
                                            Some("prompts/generate.sh makes the number prompts".into()),
                                        );
                                    }
                                }
                            }
                            None => self.push(
                                step.pos,
                                format!(
                                    "step \"{}\": say_number cannot speak numbers in {l}",
                                    step.name
                                ),
                                Some(format!(
                                    "numbers are known in {}; use say_digits",
                                    say::NUMBER_LANGUAGES.join(", ")
                                )),
                            ),
                        }
                    }
                }
                Action::SetLanguage { value, .. } => {
                    if let Some(l) = value.as_static()
                        && !plan.languages.contains(&l)
                    {
                        self.push(
                            value.pos,
                            format!(
                                "step \"{}\": set_language \"{l}\", which the plan does not speak",
                                step.name
                            ),
                            Some(format!(
                                "add \"{l}\" to languages in [dialplan] (and its prompts)"
                            )),
                        );
                    }
                }
                _ => {}
            }
            for (name, pos) in wanted {
                let missing: Vec<&str> = langs
                    .iter()
                    .copied()
                    .filter(|l| !(env.prompt_exists)(l, &name))
                    .collect();
                if !missing.is_empty() {
                    self.push(
                        pos,
                        format!(
                            "step \"{}\": prompt \"{name}\" is missing in {}",
                            step.name,
                            missing.join(", ")
                        ),
                        Some(format!("expected prompts/{}/{name}.wav", missing[0])),
                    );
                }
            }
        }
    }

    fn variables(&mut self, broken: &BTreeSet<String>) {
        let plan = self.plan;
        let mut set: BTreeSet<String> = BUILTIN_VARS.iter().map(|s| s.to_string()).collect();
        set.insert("last.outcome".into());
        let (own, own_lookup) = vars_set(plan);
        set.extend(own);
        set.extend(self.in_set.vars.iter().cloned());
        let has_lookup = own_lookup || self.in_set.lookup;
        let secrets: BTreeSet<String> = plan
            .steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::Collect(c) if c.secret => Some(c.var.clone()),
                _ => None,
            })
            .collect();
        // Steps that did not parse may set anything; only their outcome names are sure.
        let lenient = !broken.is_empty();
        set.extend(broken.iter().map(|b| format!("{b}.outcome")));
        let mut found = Vec::new();
        for step in &plan.steps {
            for t in step.action.templates() {
                for v in t.vars() {
                    if set.contains(v) || lenient && !v.contains('.') {
                        continue;
                    }
                    if let Some(field) = v.strip_prefix("customer.") {
                        if has_lookup || lenient {
                            continue;
                        }
                        found.push((
                            t.pos,
                            format!("step \"{}\": ${{customer.{field}}} is read, but no step looks up a customer", step.name),
                            Some("customer.* is set by a lookup_customer step".into()),
                        ));
                        continue;
                    }
                    found.push((
                        t.pos,
                        format!("step \"{}\": ${{{v}}} is never set", step.name),
                        did_you_mean(v, set.iter().map(String::as_str)).or_else(|| {
                            Some("set it in [vars], a collect step or a set step".into())
                        }),
                    ));
                }
            }
            // What leaves ivrd: a transfer's target and headers, an http request.
            let outbound: Vec<(&str, &super::template::Template)> = match &step.action {
                Action::Transfer {
                    target, headers, ..
                } => std::iter::once(("the target", target))
                    .chain(headers.iter().map(|(n, t)| (n.as_str(), t)))
                    .collect(),
                Action::Http(h) => std::iter::once(("the URL", &h.url))
                    .chain(h.headers.iter().map(|(n, t)| (n.as_str(), t)))
                    .chain(h.body.iter().map(|t| ("the body", t)))
                    .collect(),
                _ => Vec::new(),
            };
            let leaks = outbound.into_iter().flat_map(|(what, t)| {
                t.vars()
                    .filter(|v| secrets.contains(*v))
                    .map(move |v| (what, v, t.pos))
            });
            for (what, v, pos) in leaks {
                found.push((
                    pos,
                    format!(
                        "step \"{}\": {what} carries the secret ${{{v}}} out of ivrd",
                        step.name
                    ),
                    Some("secrets (PINs) must not leave the IVR".into()),
                ));
            }
        }
        for (pos, message, hint) in found {
            self.push(pos, message, hint);
        }
    }

    fn sms(&mut self) {
        let plan = self.plan;
        // A PIN read out by a call needs no text.
        let Some(first) = plan.steps.iter().find(|s| {
            matches!(
                s.action,
                Action::SendPin {
                    channel: PinChannel::Sms,
                    ..
                }
            )
        }) else {
            return;
        };
        for l in &plan.languages {
            if !plan.sms.contains_key(l) {
                let pos = plan.sms.values().next().map_or(first.pos, |t| t.pos);
                self.push(
                    pos,
                    format!(
                        "no SMS text for {l}, which the plan speaks (step \"{}\" sends a PIN)",
                        first.name
                    ),
                    Some(format!("add [sms.{l}] with text = \"... {{pin}} ...\"")),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check_with, shipped};
    use super::*;

    /// The 1-based line of the first line containing `needle`.
    fn line_of(src: &str, needle: &str) -> usize {
        src.lines()
            .position(|l| l.contains(needle))
            .expect("needle in source")
            + 1
    }

    fn problems(
        src: &str,
        languages: &[&str],
        exists: &dyn Fn(&str, &str) -> bool,
    ) -> Vec<Problem> {
        check_with(src, languages, exists).expect_err("the plan has problems")
    }

    /// A typo'd step name: suggested (a swap is one edit), reported first, and the steps
    /// cut off by it in one line after it instead of one line each.
    #[test]
    fn a_typo_in_a_step_name_is_the_first_problem_and_the_steps_it_cuts_off_one_line() {
        let plan = shipped("verify").unwrap();
        let src = std::fs::read_to_string(format!(
            "{}/dialplans/verify.toml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        assert!(plan.step("lookup").is_some());
        let broken = src.replacen("on_input = \"lookup\"", "on_input = \"lokoup\"", 1);
        assert_ne!(broken, src);
        let all = problems(&broken, &["en", "de"], &|_, _| true);
        assert_eq!(all.len(), 2, "{all:#?}");
        assert!(
            all[0]
                .message
                .contains("goes to \"lokoup\", which does not exist"),
            "{all:#?}"
        );
        assert_eq!(all[0].hint.as_deref(), Some("did you mean \"lookup\"?"));
        assert!(
            all[1].message.starts_with("11 steps are never reached"),
            "{all:#?}"
        );
        assert!(
            all[1]
                .message
                .contains("because of the typo above (\"lokoup\" for \"lookup\")"),
            "{all:#?}"
        );
    }

    /// `[dialplans] vars`: a key no plan reads is a typo, a transfer target must end up a SIP
    /// URI, and nothing is set when something is wrong.
    #[test]
    fn site_vars_are_checked_against_the_plans() {
        let plan = shipped("verify").unwrap();
        let vars = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let mut plans = vec![plan.clone()];
        let err = apply_site_vars(&mut plans, &vars(&[("qeue", "sip:q@pbx")]), true).unwrap_err();
        assert_eq!(
            err,
            ["[dialplans] vars: \"qeue\" is read by no dialplan (did you mean \"queue\"?)"]
        );
        // One plan loaded on its own (simulate a file): other plans may read the key.
        assert!(apply_site_vars(&mut plans, &vars(&[("qeue", "sip:q@pbx")]), false).is_ok());
        // Nothing like any variable: kept for plans not loaded now, with a warning.
        let warned = apply_site_vars(&mut plans, &vars(&[("night_queue", "sip:n@pbx")]), true);
        assert_eq!(
            warned.unwrap(),
            ["[dialplans] vars: \"night_queue\" is read by no dialplan"]
        );
        let mut plans = vec![plan.clone()];
        let err = apply_site_vars(&mut plans, &vars(&[("queue", "queue@pbx")]), true).unwrap_err();
        assert_eq!(err.len(), 1, "{err:?}");
        assert!(
            err[0].contains("the transfer target \"queue@pbx\" (${queue} from [dialplans] vars) is not a SIP URI"),
            "{err:?}"
        );
        assert_eq!(plans[0].vars, plan.vars, "changed despite the problem");
        let err = apply_site_vars(&mut plans, &vars(&[("language", "de")]), true).unwrap_err();
        assert!(err[0].contains("cannot be set here"), "{err:?}");
        apply_site_vars(
            &mut plans,
            &vars(&[("queue", "sip:q@pbx.example.com")]),
            true,
        )
        .unwrap();
        assert_eq!(plans[0].vars["queue"], "sip:q@pbx.example.com");
        assert_eq!(transfer_target_problem("tel:+4930123"), None);
        assert!(transfer_target_problem("tel:abc").is_some());
        assert!(transfer_target_problem("sip:").is_some());
    }

    /// The problem whose message contains `needle` (exactly one).
    fn find<'p>(all: &'p [Problem], needle: &str) -> &'p Problem {
        let hits: Vec<&Problem> = all.iter().filter(|p| p.message.contains(needle)).collect();
        assert_eq!(
            hits.len(),
            1,
            "one problem with {needle:?} in:\n{}",
            render(all)
        );
        hits[0]
    }

    fn render(all: &[Problem]) -> String {
        all.iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The shipped plan gives nothing away; the plan it replaced (lookup branching to the
    /// fallback, language switched right after the lookup) gets both warnings, and a decoy
    /// lookup that still names on_not_found is told it is never taken.
    #[test]
    fn advisories_name_an_audible_lookup_and_an_early_language_switch() {
        let plan = shipped("verify").unwrap();
        assert!(
            advisories(&plan).is_empty(),
            "{}",
            render(&advisories(&plan))
        );

        let src = std::fs::read_to_string(format!(
            "{}/dialplans/verify.toml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let old = src.replace(
            "decoy = true\non_found = \"send_pin\"",
            "on_found = \"early_language\"\non_not_found = \"fallback\"\non_locked = \"fallback\"",
        ) + "\n[steps.early_language]\nset_language = \"${customer.language}\"\nnext = \"send_pin\"\n";
        let plan = check_with(&old, &["en", "de"], &|_, _| true).unwrap();
        let advice = advisories(&plan);
        assert_eq!(advice.len(), 2, "{}", render(&advice));
        let lookup = find(&advice, "can tell by ear");
        assert_eq!(lookup.line, line_of(&old, "[steps.lookup]"));
        assert_eq!(
            lookup.hint.as_deref(),
            Some("add: decoy = true (they go on as found and fail the PIN check)")
        );
        let lang = find(&advice, "customer's language before the PIN");
        assert_eq!(lang.line, line_of(&old, "[steps.early_language]"));

        let decoy_with_branch = src.replace(
            "decoy = true\n",
            "decoy = true\non_not_found = \"fallback\"\n",
        );
        let plan = check_with(&decoy_with_branch, &["en", "de"], &|_, _| true).unwrap();
        let advice = advisories(&plan);
        assert_eq!(advice.len(), 1, "{}", render(&advice));
        find(&advice, "on_not_found is never taken with decoy = true");
    }

    const GRAPH: &str = r#"[dialplan]
name = "broken"
start = "welcome"
languages = ["en", "de"]

[sms.en]
text = "PIN {pin}"

[steps.welcome]
play = ["welcome", "only-in-en"]
next = "ask"

[steps.ask]
collect = "pin"
prompt = "enter-pin"
secret = true
on_input = "check"
on_failure = "byee"

[steps.check]
check_pin = "${pn}"
on_valid = "out"
on_invalid = "ask"
on_exhausted = "bye"
on_expired = "bye"

[steps.out]
transfer = "sip:queue@pbx"
headers = { X-Pin = "${pin}" }
on_failure = "bye"

[steps.send]
send_pin = "${customer.id}"
on_sent = "bye"
on_limited = "bye"
on_locked = "bye"
on_failure = "bye"

[steps.lang]
set_language = "fr"
next = "bye"

[steps.bye]
hangup = ["goodbye"]
"#;

    #[test]
    fn whole_plan_problems_point_at_their_lines() {
        let exists = |l: &str, n: &str| !(l == "de" && n == "only-in-en");
        let all = problems(GRAPH, &["en", "de"], &exists);
        let at = |needle: &str, line_needle: &str| {
            let p = find(&all, needle);
            assert_eq!(p.line, line_of(GRAPH, line_needle), "{p}");
            assert_eq!(p.file, "test.toml");
            p.clone()
        };
        let p = at(
            "on_failure goes to \"byee\", which does not exist",
            "\"byee\"",
        );
        assert_eq!(p.hint.as_deref(), Some("did you mean \"bye\"?"));
        assert_eq!(p.column, 1);
        assert_eq!(
            p.to_string(),
            format!(
                "test.toml:{}:1: step \"ask\": on_failure goes to \"byee\", which does not exist (did you mean \"bye\"?)",
                line_of(GRAPH, "\"byee\"")
            )
        );
        let p = at("step \"check\": no on_locked", "[steps.check]");
        assert_eq!(p.hint.as_deref(), Some("add: on_locked = \"step_name\""));
        let p = at("${pn} is never set", "${pn}");
        assert_eq!(p.hint.as_deref(), Some("did you mean \"pin\"?"));
        let p = at("prompt \"only-in-en\" is missing in de", "only-in-en");
        assert_eq!(
            p.hint.as_deref(),
            Some("expected prompts/de/only-in-en.wav")
        );
        // The column points at the prompt itself, not at the key.
        assert_eq!(
            p.column,
            GRAPH
                .lines()
                .nth(p.line - 1)
                .unwrap()
                .find("\"only")
                .unwrap()
                + 1
        );
        at("step \"send\" is never reached", "[steps.send]");
        at("step \"lang\" is never reached", "[steps.lang]");
        at(
            "step \"send\": ${customer.id} is read, but no step looks up a customer",
            "send_pin = ",
        );
        // check_pin's default customer ("${customer.id}") needs a lookup too.
        at("step \"check\": ${customer.id} is read", "[steps.check]");
        at(
            "set_language \"fr\", which the plan does not speak",
            "set_language",
        );
        at("no SMS text for de", "text = \"PIN");
        at("X-Pin carries the secret ${pin}", "X-Pin");
        assert_eq!(all.len(), 11, "{}", render(&all));
        // Sorted by line, as a compiler would list them.
        assert!(all.windows(2).all(|w| w[0].pos() <= w[1].pos()));
    }

    const LOCAL: &str = r#"[dialplan]
name = "bad"
start = "ask"

[vars]
count = 5
language = "de"

[sms.en]
text = "Your code is {code}"

[steps.ask]
collect = "digits"
promt = ["enter-digits"]
first_digit_timeout = "8 seconds"
inter_digit_timeout = "20m"
pattern = "^[0-9"
max = 0
on_input = "send"
on_failure = "send"

[steps.send]
send_pin = "${customer.id}"
length = 3
on_sent = "cond"
on_limited = "cond"
on_locked = "cond"
on_failure = "cond"

[steps.nothing]
prompt = ["x"]

[steps.typo]
colect = "x"

[steps.both]
play = ["a"]
goto = "ask"

[steps.cond]
branch = [
    { if = "${digits} == '1'", goto = "menu" },
    { if = "${digits} = '2'", goto = "ask" },
]
else = "ask"

[steps.menu]
menu = ["language-menu", "../etc/passwd"]
options = { "1" = "ask", "12" = "ask" }
timeout = 5
on_failure = "ask"
"#;

    #[test]
    fn step_problems_are_all_reported_at_their_keys() {
        let all = problems(LOCAL, &["en", "de"], &|_, _| true);
        let at = |needle: &str, line_needle: &str| {
            let p = find(&all, needle);
            assert_eq!(p.line, line_of(LOCAL, line_needle), "{p}");
            p.clone()
        };
        let p = at("[vars]: count must be a string, not integer", "count = 5");
        assert_eq!(p.hint.as_deref(), Some("quote it: count = \"5\""));
        at("[vars]: \"language\" is set by ivrd", "language = \"de\"");
        at("[sms.en]: the text has no {pin}", "{code}");
        let p = at("unknown placeholder {code}", "{code}");
        assert!(
            p.hint
                .as_deref()
                .unwrap()
                .contains("{pin}, {minutes} and {name}")
        );
        let p = at("unknown key promt for a collect step", "promt");
        assert_eq!(p.hint.as_deref(), Some("did you mean \"prompt\"?"));
        let p = at(
            "first_digit_timeout = \"8 seconds\" is not a duration",
            "8 seconds",
        );
        assert_eq!(
            p.hint.as_deref(),
            Some("write durations like \"500ms\", \"8s\" or \"2m\"")
        );
        at("inter_digit_timeout = \"20m\" is out of range", "\"20m\"");
        let p = at("bad pattern", "pattern =");
        assert!(p.message.contains("unclosed character class"), "{p}");
        at("max = 0 is out of range", "max = 0");
        let p = at("length = 3 is out of range", "length = 3");
        assert_eq!(p.hint.as_deref(), Some("use 4 to 10"));
        let p = at("step \"nothing\" has no type", "[steps.nothing]");
        assert!(
            p.hint
                .as_deref()
                .unwrap()
                .starts_with("give it one of: play, ")
        );
        let p = at("step \"typo\" has no type", "[steps.typo]");
        assert_eq!(p.hint.as_deref(), Some("did you mean \"collect\"?"));
        at("step \"both\" has two types, play and goto", "[steps.both]");
        let p = at("condition \"${digits} = '2'\"", "${digits} = '2'");
        assert!(p.message.contains("expected ==, !=, =~ or !~"), "{p}");
        at("\"../etc/passwd\" is not a prompt name", "../etc/passwd");
        at("option \"12\" is not one key", "\"12\"");
        let p = at("timeout must be a string, not integer", "timeout = 5");
        assert_eq!(p.hint.as_deref(), Some("for example: timeout = \"5s\""));
        assert_eq!(all.len(), 17, "{}", render(&all));
    }

    #[test]
    fn toml_errors_name_their_line() {
        let src = "[dialplan]\nname = \"x\"\nstart = \"a\"\n\n[steps.a]\nplay = [\"welcome\"\nnext = \"a\"\n";
        let all = problems(src, &["en"], &|_, _| true);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].line, 7, "{}", all[0]);

        let src = "[dialplan]\nname = \"x\"\nstart = \"a\"\n\n[step.a]\nplay = \"welcome\"\n";
        let all = problems(src, &["en"], &|_, _| true);
        assert_eq!(all[0].line, 5, "{}", all[0]);
        assert!(
            all[0].message.contains("unknown field `step`"),
            "{}",
            all[0]
        );
        assert!(all[0].hint.as_deref().unwrap().contains("[steps.NAME]"));

        let src = "[dialplan]\nname = \"x\"\nstart = \"a\"\n[steps.a]\ngoto = \"a\"\n[steps.a]\ngoto = \"a\"\n";
        let all = problems(src, &["en"], &|_, _| true);
        assert!(all[0].message.contains("duplicate"), "{}", all[0]);
        assert_eq!(all[0].line, 6, "{}", all[0]);
    }

    #[test]
    fn start_languages_and_numbers() {
        let src = r#"[dialplan]
name = "x"
start = "welcom"
languages = ["en", "fr"]

[steps.welcome]
say_number = "${dialed}"
next = "bye"

[steps.bye]
hangup = []
"#;
        let all = problems(src, &["en", "fr"], &|_, _| true);
        let p = find(&all, "start = \"welcom\", which does not exist");
        assert_eq!(
            (p.line, p.hint.as_deref()),
            (3, Some("did you mean \"welcome\"?"))
        );
        let p = find(&all, "say_number cannot speak numbers in fr");
        assert_eq!(p.line, 6);
        // Every step is unreachable from a start that does not exist: one line, after it.
        let p = find(&all, "2 steps are never reached from start \"welcom\"");
        assert_eq!(p.line, 3);
        assert!(
            p.message
                .contains("(\"welcome\", \"bye\") because of the typo above")
        );

        let all = problems(src, &["en", "de"], &|_, _| true);
        let p = find(&all, "language \"fr\" has no prompts");
        assert_eq!(p.line, 4);

        // say_number needs its prompts in every language.
        let all = problems(src, &["en", "fr"], &|l, n| !(l == "en" && n == "num-13"));
        assert_eq!(find(&all, "needs prompt \"num-13\", missing in en").line, 6);
    }

    #[test]
    fn two_plans_cannot_share_a_number() {
        let a = "[dialplan]\nname = \"a\"\nstart = \"s\"\nnumbers = [\"100\", \"+49*\"]\n[steps.s]\nhangup = []\n";
        let b = "[dialplan]\nname = \"b\"\nstart = \"s\"\nnumbers = [\"200\",\n  \"+49*\"]\n[steps.s]\nhangup = []\n";
        let pa = check_with(a, &["en"], &|_, _| true).unwrap();
        let mut pb = check_with(b, &["en"], &|_, _| true).unwrap();
        pb.file = "b.toml".into();
        let all = check_numbers(&[pa.clone(), pb]);
        assert_eq!(all.len(), 1, "{}", render(&all));
        assert_eq!(all[0].file, "b.toml");
        assert_eq!(all[0].line, 5);
        assert!(
            all[0]
                .message
                .contains("\"+49*\" is also answered by plan \"a\"")
        );
        // The same plan twice: its name and both its numbers collide.
        assert_eq!(check_numbers(&[pa.clone(), pa]).len(), 3);
    }

    #[test]
    fn shipped_plans_check_clean() {
        for name in ["verify", "demo"] {
            if let Err(p) = shipped(name) {
                panic!("dialplans/{name}.toml:\n{}", render(&p));
            }
        }
        let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/dialplans"));
        let prompts = super::super::testing::prompts();
        let exists = |l: &str, n: &str| prompts.exists(l, n);
        let env = CheckEnv {
            prompt_exists: &exists,
            languages: prompts.languages(),
        };
        let plans = load_dir(dir, &env).unwrap_or_else(|e| panic!("{e}"));
        assert!(plans.len() >= 2);
    }
}

/// What `ivrd check` says about plans that call and go to each other.
#[cfg(test)]
mod link_tests {
    use super::super::testing::plan_set;
    use super::*;

    fn problems(sources: &[&str]) -> Vec<String> {
        match plan_set(sources) {
            Ok(_) => Vec::new(),
            Err(p) => p.iter().map(|p| p.to_string()).collect(),
        }
    }

    const CALLEE: &str = r#"
[dialplan]
name = "verify"
start = "welcome"

[steps.welcome]
play = ["welcome"]
next = "ask"

[steps.ask]
say_digits = "${customer_id}"
next = "done"

[steps.done]
return = "ok"
"#;

    fn caller(call: &str) -> String {
        format!(
            r#"
[dialplan]
name = "menu"
start = "main"

[steps.main]
collect = "customer_id"
on_input = "sub"
on_failure = "bye"

[steps.sub]
call = "{call}"
next = "bye"

[steps.bye]
hangup = []
"#
        )
    }

    #[test]
    fn a_call_into_a_plan_or_a_step_that_is_not_there_is_named_with_a_suggestion() {
        // (Unlinked by the typo, verify's ${customer_id} is then never set: a second line.)
        let p = problems(&[&caller("verfy"), CALLEE]);
        assert!(p[0].starts_with("plan1.toml:12:1: step \"sub\""), "{p:?}");
        assert!(
            p[0].contains("call \"verfy\": there is no plan \"verfy\""),
            "{p:?}"
        );
        assert!(p[0].contains("did you mean \"verify\""), "{p:?}");

        let p = problems(&[&caller("verify:aks"), CALLEE]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("plan \"verify\" has no step \"aks\""),
            "{p:?}"
        );
        assert!(p[0].contains("did you mean \"ask\""), "{p:?}");

        // A section of the same plan is an ordinary transition: a typo is named like one.
        let p = problems(&[&caller(":by"), CALLEE]);
        assert!(
            p.iter()
                .any(|p| p.contains("call goes to \"by\", which does not exist")),
            "{p:?}"
        );
    }

    #[test]
    fn a_called_plan_reads_what_its_caller_set_and_a_step_entered_from_outside_is_reached() {
        // `verify` reads ${customer_id}, which only `menu` sets; `ask` is entered directly.
        assert_eq!(problems(&[&caller("verify"), CALLEE]), Vec::<String>::new());
        assert_eq!(
            problems(&[&caller("verify:ask"), CALLEE]),
            Vec::<String>::new()
        );
        // Alone, the same plan has both problems.
        let alone = CALLEE.replace("next = \"ask\"", "next = \"done\"");
        let p = problems(&[&alone]);
        assert!(
            p.iter().any(|p| p.contains("${customer_id} is never set")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|p| p.contains("\"ask\" is never reached")),
            "{p:?}"
        );
        let p = problems(&[&caller("verify:ask"), &alone]);
        assert_eq!(p, Vec::<String>::new());
    }

    #[test]
    fn a_called_plan_must_speak_the_callers_languages() {
        let de = caller("verify").replace(
            "start = \"main\"",
            "start = \"main\"\nlanguages = [\"en\", \"de\"]",
        );
        let p = problems(&[&de, CALLEE]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("plan \"verify\" does not speak de"), "{p:?}");
    }

    #[test]
    fn plans_that_call_each_other_in_a_circle_are_refused_but_goto_back_is_fine() {
        let back = CALLEE.replace("return = \"ok\"", "call = \"menu\"\nnext = \"end\"")
            + "\n[steps.end]\nhangup = []\n";
        let p = problems(&[&caller("verify"), &back]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("plans call each other in a circle: menu calls verify calls menu"),
            "{p:?}"
        );
        let goto_back = CALLEE.replace("return = \"ok\"", "goto = \"menu:\"");
        assert_eq!(
            problems(&[&caller("verify"), &goto_back]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn entries_that_name_nothing_are_refused_where_they_are_written() {
        for bad in ["", ":", "a:b:c", "ver ify"] {
            let p = problems(&[&caller(bad), CALLEE]);
            assert!(
                p.iter().any(|p| p.contains("names no plan or step")),
                "{bad:?}: {p:?}"
            );
        }
        let own = CALLEE.replace("return = \"ok\"", "goto = \":welcome\"");
        let p = problems(&[&own]);
        assert!(
            p.iter()
                .any(|p| p.contains("goto = \":welcome\" is a step of this plan")
                    && p.contains("write goto = \"welcome\"")),
            "{p:?}"
        );
    }

    #[test]
    fn link_gives_each_plan_the_plans_it_reaches_through_others() {
        let third = r#"
[dialplan]
name = "third"
start = "x"

[steps.x]
return = ""
"#;
        let middle = CALLEE.replace("return = \"ok\"", "call = \"third\"\nnext = \"end\"")
            + "\n[steps.end]\nreturn = \"ok\"\n";
        let plans = plan_set(&[&caller("verify"), &middle, third]).unwrap();
        let names = |p: &Dialplan| p.linked.keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(&plans[0]), ["third", "verify"]);
        assert_eq!(names(&plans[1]), ["third"]);
        assert!(names(&plans[2]).is_empty());
        // The copies carry no links of their own (no reference cycles).
        assert!(plans[0].linked["verify"].linked.is_empty());
    }
}
