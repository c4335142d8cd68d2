//! TOML text -> [`Dialplan`], with a `FILE:LINE:COLUMN` and a fix for everything wrong.
//!
//! The TOML crate reads the file into maps of spanned values; the step tables are then read
//! by hand rather than by serde derive, because admins deserve better than serde's first
//! error: every step is read completely, every problem in every step is reported (unknown
//! keys with a "did you mean", wrong types with an example of the right one, bad durations,
//! patterns and `${...}` templates), each at the line of the offending key.
//!
//! Problems that need the whole plan (transitions to nowhere, unreachable steps, prompts,
//! unset variables) are [`check`](mod@super::check)'s; [`parse`] only needs the file.

use super::model::*;
use super::problem::{LineIndex, Pos, Problem, did_you_mean};
use super::services::{LookupBy, PinChannel};
use super::template::{Condition, Template, first_line, is_var_name};
use regex::Regex;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::Duration;
use toml::{Spanned, Value};

/// Variables ivrd sets for every call; a plan reads them but cannot assign them.
pub const BUILTIN_VARS: &[&str] = &["caller", "caller_name", "dialed", "call_id", "language"];

/// Collect defaults (documented in the module docs of [`super`]).
const DEFAULT_MIN: i64 = 1;
const DEFAULT_MAX: i64 = 20;
const DEFAULT_FIRST_DIGIT: Duration = Duration::from_secs(5);
const DEFAULT_INTER_DIGIT: Duration = Duration::from_secs(3);
const DEFAULT_TRIES: i64 = 3;
const DEFAULT_MENU_TIMEOUT: Duration = Duration::from_secs(5);
/// NIST SP 800-63B asks for at least six digits for a one-time code sent out of band.
const DEFAULT_PIN_LENGTH: i64 = 6;

/// Keys each step type accepts besides its type key. Public so that the test of the
/// `ivrd-dialplan(5)` man page can hold the page to exactly these keys.
pub const STEP_KEYS: &[(&str, &[&str])] = &[
    ("play", &["barge_in", "next"]),
    ("say_digits", &["barge_in", "next"]),
    ("say_number", &["barge_in", "next"]),
    (
        "collect",
        &[
            "prompt",
            "barge_in",
            "min",
            "max",
            "terminator",
            "first_digit_timeout",
            "inter_digit_timeout",
            "tries",
            "pattern",
            "invalid_prompt",
            "timeout_prompt",
            "secret",
            "on_input",
            "on_failure",
            "on_star",
            "hotkeys",
        ],
    ),
    (
        "menu",
        &[
            "options",
            "barge_in",
            "tries",
            "timeout",
            "invalid_prompt",
            "timeout_prompt",
            "on_failure",
        ],
    ),
    ("set", &["next"]),
    ("branch", &["else"]),
    ("set_language", &["next"]),
    (
        "lookup_customer",
        &[
            "by",
            "decoy",
            "on_found",
            "on_not_found",
            "on_locked",
            "on_error",
        ],
    ),
    (
        "send_pin",
        &[
            "length",
            "channel",
            "prompt",
            "on_sent",
            "on_limited",
            "on_locked",
            "on_failure",
        ],
    ),
    (
        "check_pin",
        &[
            "customer",
            "on_valid",
            "on_invalid",
            "on_exhausted",
            "on_expired",
            "on_locked",
        ],
    ),
    ("transfer", &["headers", "on_failure"]),
    ("hours", &["on_open", "on_closed", "on_holiday"]),
    ("count", &["add", "next"]),
    ("hangup", &[]),
    ("goto", &[]),
    ("call", &["next"]),
    ("return", &[]),
    (
        "http",
        &[
            "method", "headers", "body", "timeout", "vars", "prompt", "on_ok", "on_error",
        ],
    ),
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    dialplan: Spanned<RawHeader>,
    #[serde(default)]
    vars: BTreeMap<Spanned<String>, Spanned<Value>>,
    #[serde(default)]
    sms: BTreeMap<Spanned<String>, Spanned<RawSms>>,
    #[serde(default)]
    steps: BTreeMap<Spanned<String>, Spanned<StepTable>>,
}

/// One `[steps.NAME]` table: its keys and values, each with its place in the file.
type StepTable = BTreeMap<Spanned<String>, Spanned<Value>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    start: Spanned<String>,
    language: Option<Spanned<String>>,
    languages: Option<Spanned<Vec<String>>>,
    numbers: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSms {
    text: Spanned<String>,
}

/// Reads a dialplan. `file` is the name problems carry (as the admin would type it).
/// On failure, every problem [`parse`] can find without looking at the plan as a whole.
pub fn parse(file: &str, src: &str) -> Result<Dialplan, Vec<Problem>> {
    let partial = parse_partial(file, src);
    match partial.plan {
        Some(plan) if partial.problems.is_empty() => Ok(plan),
        _ => Err(partial.problems),
    }
}

/// What [`parse`] could make of a file with problems: the plan without its broken steps
/// (so [`super::check`] can still look at the rest), and the names of those steps (so it does
/// not call transitions to them dangling).
pub(crate) struct Partial {
    pub plan: Option<Dialplan>,
    pub broken: BTreeSet<String>,
    pub problems: Vec<Problem>,
}

pub(crate) fn parse_partial(file: &str, src: &str) -> Partial {
    let lines = LineIndex::new(src);
    let raw: RawFile = match toml::from_str(src) {
        Ok(r) => r,
        Err(e) => {
            let pos = e
                .span()
                .map_or(Pos { line: 1, column: 1 }, |s| lines.pos(s.start));
            let message = e
                .message()
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(": ");
            let hint = toml_hint(&message);
            return Partial {
                plan: None,
                broken: BTreeSet::new(),
                problems: vec![Problem::new(file, pos, message).with_hint(hint)],
            };
        }
    };
    let mut p = Parser {
        file,
        lines: &lines,
        problems: Vec::new(),
    };
    let header = raw.dialplan.get_ref();
    let plan_pos = lines.pos(raw.dialplan.span().start);

    let name = header.name.get_ref().clone();
    let start = Target {
        step: header.start.get_ref().clone(),
        pos: lines.pos(header.start.span().start),
    };
    let language = match &header.language {
        Some(l) => {
            p.language_name(l.get_ref(), l.span(), "language");
            l.get_ref().clone()
        }
        None => "en".to_string(),
    };
    let mut languages = Vec::new();
    let mut languages_pos = plan_pos;
    if let Some(ls) = &header.languages {
        languages_pos = lines.pos(ls.span().start);
        for l in ls.get_ref() {
            if p.language_name(l, ls.span(), "languages") && !languages.contains(l) {
                languages.push(l.clone());
            }
        }
    }
    if !languages.contains(&language) {
        languages.insert(0, language.clone());
    }
    let numbers = header
        .numbers
        .as_ref()
        .map(|ns| {
            ns.get_ref()
                .iter()
                .filter_map(|n| p.number(n, ns.span()))
                .collect()
        })
        .unwrap_or_default();

    let mut vars = BTreeMap::new();
    for (k, v) in &raw.vars {
        let pos = lines.pos(k.span().start);
        let name = k.get_ref();
        if let Some(why) = unassignable(name) {
            p.problem(pos, format!("[vars]: \"{name}\" {why}"), None);
            continue;
        }
        match v.get_ref() {
            Value::String(s) => {
                vars.insert(name.clone(), s.clone());
            }
            other => p.problem(
                pos,
                format!("[vars]: {name} must be a string, not {}", other.type_str()),
                Some(format!(
                    "quote it: {name} = \"{}\"",
                    other.to_string().trim_matches('"')
                )),
            ),
        }
    }

    let mut sms = BTreeMap::new();
    for (k, v) in &raw.sms {
        let lang = k.get_ref();
        p.language_name(lang, k.span(), "[sms]");
        let text = v.get_ref().text.get_ref();
        let pos = lines.pos(v.get_ref().text.span().start);
        p.sms_template(lang, text, pos);
        sms.insert(
            lang.clone(),
            SmsTemplate {
                text: text.clone(),
                pos,
            },
        );
    }

    let mut steps = Vec::new();
    let mut broken = BTreeSet::new();
    if raw.steps.is_empty() {
        p.problem(
            plan_pos,
            "the plan has no steps".into(),
            Some("add a [steps.NAME] table for each step".into()),
        );
    }
    for (k, table) in &raw.steps {
        let before = p.problems.len();
        let step_name = k.get_ref();
        let pos = lines.pos(k.span().start);
        if !is_step_name(step_name) {
            p.problem(
                pos,
                format!("step \"{step_name}\": a step name has letters, digits, '_' and '-' only"),
                None,
            );
        }
        let action = p.step(step_name, pos, table.get_ref());
        match action {
            Some(action) if p.problems.len() == before => steps.push(Step {
                name: step_name.clone(),
                pos,
                action,
            }),
            _ => {
                broken.insert(step_name.clone());
            }
        }
    }
    steps.sort_by_key(|s| s.pos);

    let plan = Dialplan {
        file: file.to_string(),
        name,
        description: header.description.clone(),
        start,
        language,
        languages,
        languages_pos,
        numbers,
        vars,
        sms,
        steps,
        pos: plan_pos,
        calendar: Default::default(),
        linked: BTreeMap::new(),
    };
    Partial {
        plan: Some(plan),
        broken,
        problems: p.problems,
    }
}

/// A hint for the TOML errors admins hit most.
fn toml_hint(message: &str) -> Option<String> {
    if message.contains("unknown field") {
        Some("a dialplan has the tables [dialplan], [vars], [sms.LANG] and [steps.NAME]".into())
    } else if message.contains("duplicate key") {
        Some("each key (and each step name) may appear once".into())
    } else if message.contains("missing field") {
        Some("[dialplan] needs name and start".into())
    } else {
        None
    }
}

/// Why a plan may not assign `name`, if it may not.
pub(crate) fn unassignable(name: &str) -> Option<&'static str> {
    if BUILTIN_VARS.contains(&name) {
        Some("is set by ivrd for every call and cannot be assigned")
    } else if name.contains('.') {
        Some("contains '.': names with a dot (customer.*, STEP.outcome) are set by ivrd")
    } else if !is_var_name(name) {
        Some("is not a variable name (letters, digits, '_' and '-')")
    } else {
        None
    }
}

fn is_step_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('.') && is_var_name(name)
}

/// Prompt names are file stems: nothing that could leave the prompt directory.
fn is_prompt_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, scale_ms) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        return None;
    };
    let num = num.trim();
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    let v: f64 = num.parse().ok()?;
    Some(Duration::from_millis((v * scale_ms).round() as u64))
}

struct Parser<'a> {
    file: &'a str,
    lines: &'a LineIndex<'a>,
    problems: Vec<Problem>,
}

/// One step's keys, read one at a time; what is left at the end is unknown.
struct Fields<'t> {
    step: &'t str,
    kind: &'static str,
    pos: Pos,
    map: &'t StepTable,
}

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<(&Spanned<String>, &Spanned<Value>)> {
        self.map.iter().find(|(k, _)| k.get_ref() == key)
    }
}

impl Parser<'_> {
    fn problem(&mut self, pos: Pos, message: String, hint: Option<String>) {
        self.problems
            .push(Problem::new(self.file, pos, message).with_hint(hint));
    }

    fn language_name(&mut self, l: &str, span: Range<usize>, key: &str) -> bool {
        let ok = !l.is_empty()
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            let pos = self.lines.find(span, l);
            self.problem(
                pos,
                format!("{key}: \"{l}\" is not a language name"),
                Some("use the name of a directory under prompts/, like \"en\" or \"de\"".into()),
            );
        }
        ok
    }

    fn number(&mut self, n: &str, span: Range<usize>) -> Option<NumberPattern> {
        let pos = self.lines.find(span, &format!("\"{n}\""));
        let (number, prefix) = match n.strip_suffix('*') {
            Some(p) => (p, true),
            None => (n, false),
        };
        let ok = (prefix || !number.is_empty())
            && number
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+*#._-".contains(c));
        if !ok {
            self.problem(
                pos,
                format!("numbers: \"{n}\" is not a dialed number or prefix"),
                Some(
                    "write numbers like \"100\" or \"+4930123456\"; end with '*' to match a prefix"
                        .into(),
                ),
            );
            return None;
        }
        Some(NumberPattern {
            number: number.to_string(),
            prefix,
            pos,
        })
    }

    fn sms_template(&mut self, lang: &str, text: &str, pos: Pos) {
        if !text.contains("{pin}") {
            self.problem(
                pos,
                format!("[sms.{lang}]: the text has no {{pin}}"),
                Some("the caller needs the PIN: add {pin} where it belongs".into()),
            );
        }
        let mut rest = text.replace("{{", "").replace("}}", "");
        while let Some(i) = rest.find('{') {
            let tail = &rest[i..];
            let end = tail.find('}').unwrap_or(tail.len() - 1);
            let placeholder = &tail[..=end];
            if !["{pin}", "{minutes}", "{name}"].contains(&placeholder) {
                let inner = placeholder.trim_matches(['{', '}']);
                let hint = did_you_mean(inner, ["pin", "minutes", "name"]).unwrap_or_else(|| {
                    "the placeholders are {pin}, {minutes} and {name}; write {{ for a brace".into()
                });
                self.problem(
                    pos,
                    format!("[sms.{lang}]: unknown placeholder {placeholder}"),
                    Some(hint),
                );
            }
            rest = tail[end + 1..].to_string();
        }
    }

    /// Reads one step; `None` if it has no usable type (problems say why).
    fn step(&mut self, name: &str, pos: Pos, map: &StepTable) -> Option<Action> {
        let types: Vec<&'static str> = STEP_TYPES
            .iter()
            .copied()
            .filter(|t| map.keys().any(|k| k.get_ref() == t))
            .collect();
        let kind =
            match types.as_slice() {
                [one] => *one,
                [] => {
                    let close = map
                        .keys()
                        .find_map(|k| did_you_mean(k.get_ref(), STEP_TYPES.iter().copied()));
                    self.problem(
                        pos,
                        format!("step \"{name}\" has no type"),
                        Some(close.unwrap_or_else(|| {
                            format!("give it one of: {}", STEP_TYPES.join(", "))
                        })),
                    );
                    return None;
                }
                [a, b, ..] => {
                    self.problem(
                        pos,
                        format!("step \"{name}\" has two types, {a} and {b}"),
                        Some("a step does one thing: split it into two steps".into()),
                    );
                    return None;
                }
            };
        let f = Fields {
            step: name,
            kind,
            pos,
            map,
        };
        let allowed = STEP_KEYS
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(&[][..], |(_, keys)| *keys);
        for k in map.keys() {
            let key = k.get_ref();
            if key != kind && !allowed.contains(&key.as_str()) {
                let hint = did_you_mean(key, allowed.iter().copied()).unwrap_or_else(|| {
                    if allowed.is_empty() {
                        format!("a {kind} step takes no other keys")
                    } else {
                        format!("a {kind} step takes: {}", allowed.join(", "))
                    }
                });
                let kpos = self.lines.pos(k.span().start);
                self.problem(
                    kpos,
                    format!("step \"{name}\": unknown key {key} for a {kind} step"),
                    Some(hint),
                );
            }
        }
        Some(match kind {
            "play" => Action::Play {
                prompts: self.prompts(&f, "play").unwrap_or_default(),
                barge_in: self.boolean(&f, "barge_in", true),
                next: self.target(&f, "next"),
            },
            "say_digits" => Action::SayDigits {
                value: self.template(&f, "say_digits", None)?,
                barge_in: self.boolean(&f, "barge_in", true),
                next: self.target(&f, "next"),
            },
            "say_number" => Action::SayNumber {
                value: self.template(&f, "say_number", None)?,
                barge_in: self.boolean(&f, "barge_in", true),
                next: self.target(&f, "next"),
            },
            "collect" => Action::Collect(self.collect(&f)?),
            "menu" => Action::Menu(self.menu(&f)?),
            "set" => Action::Set {
                vars: self.assignments(&f),
                next: self.target(&f, "next"),
            },
            "branch" => Action::Branch {
                cases: self.cases(&f),
                otherwise: self.target(&f, "else"),
            },
            "set_language" => {
                let value = self.template(&f, "set_language", None)?;
                if let Some(l) = value.as_static() {
                    let span = f.get("set_language").map(|(_, v)| v.span()).unwrap_or(0..0);
                    self.language_name(&l, span, "set_language");
                }
                Action::SetLanguage {
                    value,
                    next: self.target(&f, "next"),
                }
            }
            "lookup_customer" => Action::LookupCustomer {
                value: self.template(&f, "lookup_customer", None)?,
                by: self.lookup_by(&f),
                decoy: self.boolean(&f, "decoy", false),
                on_found: self.target(&f, "on_found"),
                on_not_found: self.target(&f, "on_not_found"),
                on_locked: self.target(&f, "on_locked"),
                on_error: self.target(&f, "on_error"),
            },
            "send_pin" => Action::SendPin {
                customer: self.template(&f, "send_pin", None)?,
                length: self.int(&f, "length", DEFAULT_PIN_LENGTH, 4, 10) as usize,
                channel: match self.string(&f, "channel", "\"voice\"") {
                    None => PinChannel::Sms,
                    Some((c, _, _)) if c == "sms" => PinChannel::Sms,
                    Some((c, _, _)) if c == "voice" => PinChannel::Voice,
                    Some((c, pos, _)) => {
                        self.problem(
                            pos,
                            format!("step \"{}\": channel = \"{c}\" is not sms or voice", f.step),
                            Some("channel = \"voice\" calls the number on file and reads the PIN out".into()),
                        );
                        PinChannel::Sms
                    }
                },
                prompts: self.prompts(&f, "prompt").unwrap_or_else(|| {
                    vec![PromptRef {
                        name: "sending-pin".into(),
                        pos,
                    }]
                }),
                on_sent: self.target(&f, "on_sent"),
                on_limited: self.target(&f, "on_limited"),
                on_locked: self.target(&f, "on_locked"),
                on_failure: self.target(&f, "on_failure"),
            },
            "check_pin" => Action::CheckPin {
                value: self.template(&f, "check_pin", None)?,
                customer: self.template(&f, "customer", Some("${customer.id}"))?,
                on_valid: self.target(&f, "on_valid"),
                on_invalid: self.target(&f, "on_invalid"),
                on_exhausted: self.target(&f, "on_exhausted"),
                on_expired: self.target(&f, "on_expired"),
                on_locked: self.target(&f, "on_locked"),
            },
            "transfer" => Action::Transfer {
                target: self.template(&f, "transfer", None)?,
                headers: self.headers(&f),
                on_failure: self.target(&f, "on_failure"),
            },
            "count" => {
                let (name, pos, _) = self.string(&f, "count", "\"resends\"")?;
                if let Some(why) = unassignable(&name) {
                    self.problem(
                        pos,
                        format!("step \"{}\": count \"{name}\": it {why}", f.step),
                        None,
                    );
                }
                Action::Count {
                    var: name,
                    add: self.int(&f, "add", 1, -1_000_000, 1_000_000),
                    next: self.target(&f, "next"),
                }
            }
            "hours" => Action::Hours {
                rules: self.hours(&f),
                on_open: self.target(&f, "on_open"),
                on_closed: self.target(&f, "on_closed"),
                on_holiday: self.target(&f, "on_holiday"),
            },
            "hangup" => Action::Hangup {
                prompts: self.prompts(&f, "hangup").unwrap_or_default(),
            },
            "call" => {
                let entry = self.entry(&f, "call")?;
                let section = match &entry {
                    Entry {
                        plan: None,
                        step: Some(step),
                        pos,
                    } => Some(Target {
                        step: step.clone(),
                        pos: *pos,
                    }),
                    _ => None,
                };
                Action::Call {
                    entry,
                    section,
                    next: self.target(&f, "next"),
                }
            }
            "http" => Action::Http(self.http(&f)?),
            "return" => {
                let (value, pos, _) = self.string(&f, "return", "\"done\"")?;
                if !value.is_empty() && !is_step_name(&value) {
                    self.problem(
                        pos,
                        format!(
                            "step \"{}\": return \"{value}\": a result has letters, digits, '_' and '-' only",
                            f.step
                        ),
                        Some("for example: return = \"found\"".into()),
                    );
                }
                Action::Return { value }
            }
            _ => match f.get("goto").map(|(_, v)| v.get_ref()) {
                Some(Value::String(s)) if s.contains(':') => Action::GotoPlan {
                    entry: self.entry(&f, "goto")?,
                },
                _ => Action::Goto {
                    target: self.goto(&f),
                },
            },
        })
    }

    fn key_pos(&self, k: &Spanned<String>) -> Pos {
        self.lines.pos(k.span().start)
    }

    fn wrong_type(
        &mut self,
        f: &Fields<'_>,
        k: &Spanned<String>,
        v: &Value,
        want: &str,
        example: &str,
    ) {
        let pos = self.key_pos(k);
        self.problem(
            pos,
            format!(
                "step \"{}\": {} must be {want}, not {}",
                f.step,
                k.get_ref(),
                v.type_str()
            ),
            Some(format!("for example: {} = {example}", k.get_ref())),
        );
    }

    fn string(
        &mut self,
        f: &Fields<'_>,
        key: &str,
        example: &str,
    ) -> Option<(String, Pos, Range<usize>)> {
        let (k, v) = f.get(key)?;
        match v.get_ref() {
            Value::String(s) => Some((s.clone(), self.key_pos(k), v.span())),
            other => {
                self.wrong_type(f, k, other, "a string", example);
                None
            }
        }
    }

    fn missing(&mut self, f: &Fields<'_>, key: &str, example: &str) {
        self.problem(
            f.pos,
            format!("step \"{}\": a {} step needs {key}", f.step, f.kind),
            Some(format!("add: {key} = {example}")),
        );
    }

    fn boolean(&mut self, f: &Fields<'_>, key: &str, default: bool) -> bool {
        match f.get(key) {
            None => default,
            Some((_, v)) if v.get_ref().is_bool() => v.get_ref().as_bool().unwrap_or(default),
            Some((k, v)) => {
                self.wrong_type(f, k, v.get_ref(), "true or false", "true");
                default
            }
        }
    }

    fn int(&mut self, f: &Fields<'_>, key: &str, default: i64, min: i64, max: i64) -> i64 {
        let Some((k, v)) = f.get(key) else {
            return default;
        };
        let Some(n) = v.get_ref().as_integer() else {
            self.wrong_type(f, k, v.get_ref(), "a whole number", &default.to_string());
            return default;
        };
        if !(min..=max).contains(&n) {
            let pos = self.key_pos(k);
            self.problem(
                pos,
                format!("step \"{}\": {key} = {n} is out of range", f.step),
                Some(format!("use {min} to {max}")),
            );
            return default;
        }
        n
    }

    fn duration(&mut self, f: &Fields<'_>, key: &str, default: Duration) -> Duration {
        let Some((s, pos, _)) = self.string(f, key, "\"5s\"") else {
            return default;
        };
        match parse_duration(&s) {
            Some(d) if d >= Duration::from_millis(100) && d <= Duration::from_secs(600) => d,
            Some(_) => {
                self.problem(
                    pos,
                    format!("step \"{}\": {key} = \"{s}\" is out of range", f.step),
                    Some("use 100ms to 10m".into()),
                );
                default
            }
            None => {
                self.problem(
                    pos,
                    format!("step \"{}\": {key} = \"{s}\" is not a duration", f.step),
                    Some("write durations like \"500ms\", \"8s\" or \"2m\"".into()),
                );
                default
            }
        }
    }

    fn template(&mut self, f: &Fields<'_>, key: &str, default: Option<&str>) -> Option<Template> {
        let Some((s, pos, _)) = self.string(f, key, "\"${variable}\"") else {
            if f.get(key).is_none() {
                match default {
                    Some(d) => return Template::parse(d, f.pos).ok(),
                    None => self.missing(f, key, "\"${variable}\""),
                }
            }
            return None;
        };
        match Template::parse(&s, pos) {
            Ok(t) => Some(t),
            Err(e) => {
                self.problem(pos, format!("step \"{}\": {key}: {e}", f.step), None);
                None
            }
        }
    }

    fn target(&mut self, f: &Fields<'_>, key: &str) -> Option<Target> {
        let (step, pos, _) = self.string(f, key, "\"step_name\"")?;
        Some(Target { step, pos })
    }

    /// An `http` step (see [`Http`]).
    fn http(&mut self, f: &Fields<'_>) -> Option<Http> {
        use crate::http_lookup::{HttpMethod, check_url_prefix, valid_pointer};
        let url = self.template(f, "http", None)?;
        // The text before the first variable must hold the scheme and the whole host.
        let prefix: String = match url.parts.first() {
            Some(super::template::Part::Text(t)) => t.clone(),
            _ => String::new(),
        };
        let has_vars = url
            .parts
            .iter()
            .any(|p| matches!(p, super::template::Part::Var(_)));
        if let Err(why) = check_url_prefix(&prefix, has_vars) {
            self.problem(
                url.pos,
                format!("step \"{}\": http = \"{}\": {why}", f.step, url.raw),
                Some("write the scheme and host out: \"https://crm.example.com/customers/${customer_id}\"".into()),
            );
        }
        let method = match self.string(f, "method", "\"POST\"") {
            None => HttpMethod::Get,
            Some((m, _, _)) if m == "GET" => HttpMethod::Get,
            Some((m, _, _)) if m == "POST" => HttpMethod::Post,
            Some((m, pos, _)) => {
                self.problem(
                    pos,
                    format!("step \"{}\": method = \"{m}\" is not GET or POST", f.step),
                    None,
                );
                HttpMethod::Get
            }
        };
        let body = match f.get("body") {
            Some(_) => self.template(f, "body", None),
            None => None,
        };
        if body.is_some() && method == HttpMethod::Get {
            self.problem(
                f.pos,
                format!("step \"{}\": a GET request has no body", f.step),
                Some("add: method = \"POST\"".into()),
            );
        }
        let timeout = self.duration(f, "timeout", Duration::from_secs(3));
        if timeout > Duration::from_secs(30) {
            self.problem(
                f.pos,
                format!(
                    "step \"{}\": timeout is over 30s; the caller waits that long",
                    f.step
                ),
                Some("use at most \"30s\"".into()),
            );
        }
        let mut vars = Vec::new();
        if let Some((k, v)) = f.get("vars") {
            match v.get_ref() {
                Value::Table(t) => {
                    for (name, pointer) in t {
                        let pos = self.lines.find(v.span(), name);
                        if let Some(why) = unassignable(name) {
                            self.problem(
                                pos,
                                format!("step \"{}\": vars: \"{name}\" {why}", f.step),
                                None,
                            );
                            continue;
                        }
                        match pointer.as_str() {
                            Some(p) if valid_pointer(p) => vars.push((name.clone(), p.to_string())),
                            _ => self.problem(
                                pos,
                                format!(
                                    "step \"{}\": vars: {name} = {pointer} is not a JSON pointer",
                                    f.step
                                ),
                                Some(format!(
                                    "for example: {name} = \"/customer/name\" (RFC 6901)"
                                )),
                            ),
                        }
                    }
                }
                other => self.wrong_type(
                    f,
                    k,
                    other,
                    "a table of variable = \"/json/pointer\"",
                    "{ crm_name = \"/name\" }",
                ),
            }
        }
        Some(Http {
            url,
            method,
            headers: self.headers(f),
            body,
            timeout,
            vars,
            prompts: self.prompts(f, "prompt").unwrap_or_default(),
            on_ok: self.target(f, "on_ok"),
            on_error: self.target(f, "on_error"),
        })
    }

    /// `"plan"`, `"plan:step"` or `":step"` (see [`Entry`]).
    fn entry(&mut self, f: &Fields<'_>, key: &str) -> Option<Entry> {
        let (s, pos, _) = self.string(f, key, "\"plan\" or \"plan:step\"")?;
        let entry = Entry::parse(&s, pos);
        let names_ok = entry.as_ref().is_some_and(|e| {
            e.plan.as_deref().is_none_or(is_step_name) && e.step.as_deref().is_none_or(is_step_name)
        });
        if !names_ok || s.matches(':').count() > 1 {
            self.problem(
                pos,
                format!("step \"{}\": {key} = \"{s}\" names no plan or step", f.step),
                Some(format!(
                    "write {key} = \"plan\" (its start), \"plan:step\", or \":step\" (a step of this plan)"
                )),
            );
            return None;
        }
        if key == "goto"
            && let Some(Entry {
                plan: None,
                step: Some(step),
                ..
            }) = &entry
        {
            self.problem(
                pos,
                format!("step \"{}\": goto = \"{s}\" is a step of this plan", f.step),
                Some(format!("write goto = \"{step}\"")),
            );
            return None;
        }
        entry
    }

    fn goto(&mut self, f: &Fields<'_>) -> Option<Target> {
        self.target(f, "goto")
    }

    /// A prompt list: one name or an array of names. `None` if the key is absent.
    /// `hours = ["mon-fri 08:00-18:00", ...]`: when the step says open.
    fn hours(&mut self, f: &Fields<'_>) -> Vec<super::calendar::HoursRule> {
        let Some((k, v)) = f.get("hours") else {
            return Vec::new();
        };
        let specs: Vec<&str> = match v.get_ref() {
            Value::String(s) => vec![s.as_str()],
            Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_str) => {
                items.iter().filter_map(Value::as_str).collect()
            }
            other => {
                self.wrong_type(
                    f,
                    k,
                    other,
                    "a list of \"DAYS HH:MM-HH:MM\" strings",
                    "[\"mon-fri 08:00-18:00\", \"sat 09:00-13:00\"]",
                );
                return Vec::new();
            }
        };
        let mut rules = Vec::new();
        for spec in specs {
            match super::calendar::HoursRule::parse(spec) {
                Ok(r) => rules.push(r),
                Err(e) => {
                    let pos = self.lines.find(v.span(), spec);
                    self.problem(
                        pos,
                        format!("step \"{}\": {e}", f.step),
                        Some("days: mon..sun, ranges (mon-fri), lists (sat,sun) or *".into()),
                    );
                }
            }
        }
        rules
    }

    fn prompts(&mut self, f: &Fields<'_>, key: &str) -> Option<Vec<PromptRef>> {
        let (k, v) = f.get(key)?;
        let names: Vec<String> = match v.get_ref() {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) if items.iter().all(Value::is_str) => items
                .iter()
                .filter_map(|i| i.as_str().map(String::from))
                .collect(),
            other => {
                self.wrong_type(
                    f,
                    k,
                    other,
                    "a prompt name or a list of them",
                    "[\"welcome\"]",
                );
                return Some(vec![]);
            }
        };
        let mut out = Vec::new();
        for name in names {
            let pos = self.lines.find(v.span(), &format!("\"{name}\""));
            if is_prompt_name(&name) {
                out.push(PromptRef { name, pos });
            } else {
                self.problem(
                    pos,
                    format!("step \"{}\": \"{name}\" is not a prompt name", f.step),
                    Some(
                        "a prompt is named by its file name without .wav, like \"welcome\"".into(),
                    ),
                );
            }
        }
        Some(out)
    }

    fn collect(&mut self, f: &Fields<'_>) -> Option<Collect> {
        // The type key is there (it made this a collect step); None means a wrong type,
        // already reported.
        let (var, pos, _) = self.string(f, "collect", "\"customer_id\"")?;
        if let Some(why) = unassignable(&var) {
            self.problem(
                pos,
                format!("step \"{}\": collect into \"{var}\": it {why}", f.step),
                None,
            );
        }
        let min = self.int(f, "min", DEFAULT_MIN, 1, 64) as usize;
        let max = self.int(f, "max", DEFAULT_MAX.max(min as i64), 1, 64) as usize;
        if min > max {
            let pos = f.get("min").map_or(f.pos, |(k, _)| self.key_pos(k));
            self.problem(
                pos,
                format!("step \"{}\": min ({min}) is more than max ({max})", f.step),
                None,
            );
        }
        let terminator = match self.string(f, "terminator", "\"#\"") {
            None => Some('#'),
            Some((t, tpos, _)) => match t.as_str() {
                "" => None,
                "#" => Some('#'),
                "*" => Some('*'),
                _ => {
                    self.problem(
                        tpos,
                        format!(
                            "step \"{}\": terminator \"{t}\" is not \"#\", \"*\" or \"\"",
                            f.step
                        ),
                        Some(
                            "a terminator ends input without being part of it; \"\" means none"
                                .into(),
                        ),
                    );
                    None
                }
            },
        };
        let pattern = match self.string(f, "pattern", "\"^[0-9]{6}$\"") {
            None => None,
            Some((p, ppos, _)) => match Regex::new(&p) {
                Ok(re) => Some(re),
                Err(e) => {
                    self.problem(
                        ppos,
                        format!(
                            "step \"{}\": bad pattern: {}",
                            f.step,
                            first_line(&e.to_string())
                        ),
                        Some("patterns are regular expressions, like \"^[0-9]{6}$\"".into()),
                    );
                    None
                }
            },
        };
        let mut hotkeys = self.key_table(f, "hotkeys", "hotkey");
        let on_star = self.target(f, "on_star");
        let star_as_on_star = on_star.is_some();
        if let Some(target) = on_star {
            if let Some((_, other)) = hotkeys.iter().find(|(k, _)| *k == '*') {
                self.problem(
                    other.pos,
                    format!("step \"{}\": \"*\" is both on_star and a hotkey", f.step),
                    Some("keep one of them".into()),
                );
            } else {
                hotkeys.push(('*', target));
                hotkeys.sort_by_key(|(k, _)| "0123456789*#".find(*k));
            }
        }
        if let (Some(t), Some((_, target))) = (
            terminator,
            terminator.and_then(|t| hotkeys.iter().find(|(k, _)| *k == t)),
        ) {
            self.problem(
                target.pos,
                format!(
                    "step \"{}\": \"{t}\" is the terminator and a hotkey",
                    f.step
                ),
                Some("a key pressed first cannot both end empty input and go elsewhere".into()),
            );
        }
        Some(Collect {
            var,
            prompts: self.prompts(f, "prompt").unwrap_or_default(),
            barge_in: self.boolean(f, "barge_in", true),
            min,
            max,
            terminator,
            first_digit_timeout: self.duration(f, "first_digit_timeout", DEFAULT_FIRST_DIGIT),
            inter_digit_timeout: self.duration(f, "inter_digit_timeout", DEFAULT_INTER_DIGIT),
            tries: self.int(f, "tries", DEFAULT_TRIES, 1, 10) as u32,
            pattern,
            invalid_prompts: self.prompts(f, "invalid_prompt").unwrap_or_default(),
            timeout_prompts: self.prompts(f, "timeout_prompt").unwrap_or_default(),
            secret: self.boolean(f, "secret", false),
            on_input: self.target(f, "on_input"),
            on_failure: self.target(f, "on_failure"),
            hotkeys,
            star_as_on_star,
        })
    }

    /// A table of single keys to steps (`options` of a menu, `hotkeys` of a collect), in key
    /// order; empty when absent. `what` names one entry in problems ("option", "hotkey").
    fn key_table(&mut self, f: &Fields<'_>, name: &str, what: &str) -> Vec<(char, Target)> {
        let mut out = Vec::new();
        let Some((k, v)) = f.get(name) else {
            return out;
        };
        match v.get_ref() {
            Value::Table(t) if !t.is_empty() => {
                for (key, target) in t {
                    let pos = self.lines.find(v.span(), key);
                    let mut chars = key.chars();
                    let digit = match (chars.next(), chars.next()) {
                        (Some(c), None) if "0123456789*#".contains(c) => c,
                        _ => {
                            self.problem(
                                pos,
                                format!("step \"{}\": {what} \"{key}\" is not one key", f.step),
                                Some(format!("{what}s are single keys: 0-9, * or #")),
                            );
                            continue;
                        }
                    };
                    match target.as_str() {
                        Some(step) => out.push((
                            digit,
                            Target {
                                step: step.to_string(),
                                pos: self.lines.find(v.span(), &format!("\"{step}\"")),
                            },
                        )),
                        None => self.problem(
                            pos,
                            format!("step \"{}\": {what} \"{key}\" must name a step", f.step),
                            Some(format!("for example: \"{key}\" = \"step_name\"")),
                        ),
                    }
                }
            }
            other => self.wrong_type(
                f,
                k,
                other,
                "a table of keys to steps",
                "{ \"1\" = \"english\" }",
            ),
        }
        out.sort_by_key(|(k, _)| "0123456789*#".find(*k));
        out
    }

    fn menu(&mut self, f: &Fields<'_>) -> Option<Menu> {
        let prompts = self.prompts(f, "menu").unwrap_or_default();
        let options = match f.get("options") {
            None => {
                self.missing(f, "options", "{ \"1\" = \"english\", \"2\" = \"german\" }");
                Vec::new()
            }
            Some(_) => self.key_table(f, "options", "option"),
        };
        Some(Menu {
            prompts,
            barge_in: self.boolean(f, "barge_in", true),
            options,
            tries: self.int(f, "tries", DEFAULT_TRIES, 1, 10) as u32,
            timeout: self.duration(f, "timeout", DEFAULT_MENU_TIMEOUT),
            invalid_prompts: self.prompts(f, "invalid_prompt").unwrap_or_default(),
            timeout_prompts: self.prompts(f, "timeout_prompt").unwrap_or_default(),
            on_failure: self.target(f, "on_failure"),
        })
    }

    fn assignments(&mut self, f: &Fields<'_>) -> Vec<Assignment> {
        let mut out = Vec::new();
        let Some((k, v)) = f.get("set") else {
            return out;
        };
        let Value::Table(t) = v.get_ref() else {
            self.wrong_type(
                f,
                k,
                v.get_ref(),
                "a table of variables",
                "{ greeting = \"yes\" }",
            );
            return out;
        };
        if t.is_empty() {
            let pos = self.key_pos(k);
            self.problem(
                pos,
                format!("step \"{}\": set assigns nothing", f.step),
                None,
            );
        }
        for (name, value) in t {
            let pos = self.lines.find(v.span(), name);
            if let Some(why) = unassignable(name) {
                self.problem(
                    pos,
                    format!("step \"{}\": set \"{name}\": it {why}", f.step),
                    None,
                );
                continue;
            }
            let Some(s) = value.as_str() else {
                self.problem(
                    pos,
                    format!(
                        "step \"{}\": {name} must be a string, not {}",
                        f.step,
                        value.type_str()
                    ),
                    Some(format!(
                        "quote it: {name} = \"{}\"",
                        value.to_string().trim_matches('"')
                    )),
                );
                continue;
            };
            match Template::parse(s, pos) {
                Ok(t) => out.push(Assignment {
                    name: name.clone(),
                    value: t,
                }),
                Err(e) => self.problem(pos, format!("step \"{}\": {name}: {e}", f.step), None),
            }
        }
        out
    }

    fn cases(&mut self, f: &Fields<'_>) -> Vec<Case> {
        let mut out = Vec::new();
        let Some((k, v)) = f.get("branch") else {
            return out;
        };
        let example = "[{ if = \"${x} == 'yes'\", goto = \"step\" }]";
        let Value::Array(items) = v.get_ref() else {
            self.wrong_type(f, k, v.get_ref(), "a list of cases", example);
            return out;
        };
        for item in items {
            let (cond, goto) = match item.as_table() {
                Some(t) if t.keys().all(|k| k == "if" || k == "goto") => (
                    t.get("if").and_then(Value::as_str),
                    t.get("goto").and_then(Value::as_str),
                ),
                _ => (None, None),
            };
            let (Some(cond), Some(goto)) = (cond, goto) else {
                let pos = self.key_pos(k);
                self.problem(
                    pos,
                    format!(
                        "step \"{}\": each branch case is {{ if = \"...\", goto = \"...\" }}",
                        f.step
                    ),
                    Some(format!("for example: branch = {example}")),
                );
                continue;
            };
            let pos = self.lines.find(v.span(), cond);
            match Condition::parse(cond, pos) {
                Ok(condition) => out.push(Case {
                    condition,
                    goto: Some(Target {
                        step: goto.to_string(),
                        pos: self.lines.find(v.span(), &format!("\"{goto}\"")),
                    }),
                }),
                Err(e) => self.problem(
                    pos,
                    format!("step \"{}\": condition \"{cond}\": {e}", f.step),
                    Some(
                        "conditions are like \"${x} == 'yes'\", \"${x} != ''\" or \"${x} =~ '^0'\""
                            .into(),
                    ),
                ),
            }
        }
        if items.is_empty() {
            let pos = self.key_pos(k);
            self.problem(
                pos,
                format!("step \"{}\": branch has no cases", f.step),
                Some("use goto for an unconditional jump".into()),
            );
        }
        out
    }

    fn lookup_by(&mut self, f: &Fields<'_>) -> LookupBy {
        match self.string(f, "by", "\"id\"") {
            None => LookupBy::Id,
            Some((s, pos, _)) => match s.as_str() {
                "id" => LookupBy::Id,
                "mobile" => LookupBy::Mobile,
                _ => {
                    self.problem(
                        pos,
                        format!(
                            "step \"{}\": by = \"{s}\" is neither \"id\" nor \"mobile\"",
                            f.step
                        ),
                        did_you_mean(&s, ["id", "mobile"]),
                    );
                    LookupBy::Id
                }
            },
        }
    }

    fn headers(&mut self, f: &Fields<'_>) -> Vec<(String, Template)> {
        let mut out = Vec::new();
        let Some((k, v)) = f.get("headers") else {
            return out;
        };
        let Value::Table(t) = v.get_ref() else {
            self.wrong_type(
                f,
                k,
                v.get_ref(),
                "a table of headers",
                "{ X-Customer-Id = \"${customer.id}\" }",
            );
            return out;
        };
        for (name, value) in t {
            let pos = self.lines.find(v.span(), name);
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                self.problem(
                    pos,
                    format!("step \"{}\": \"{name}\" is not a header name", f.step),
                    Some("header names have letters, digits and '-', like X-Customer-Id".into()),
                );
                continue;
            }
            match value.as_str().map(|s| Template::parse(s, pos)) {
                Some(Ok(t)) => out.push((name.clone(), t)),
                Some(Err(e)) => self.problem(
                    pos,
                    format!("step \"{}\": header {name}: {e}", f.step),
                    None,
                ),
                None => self.problem(
                    pos,
                    format!("step \"{}\": header {name} must be a string", f.step),
                    Some(format!(
                        "quote it: {name} = \"{}\"",
                        value.to_string().trim_matches('"')
                    )),
                ),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("8s"), Some(Duration::from_secs(8)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        for bad in ["8", "s", "8 seconds", "-1s", "1h", ""] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_pin_goes_by_sms_or_by_a_call() {
        let plan = |channel: &str| {
            format!(
                "[dialplan]\nname = \"d\"\nstart = \"send\"\n[steps.send]\n\
                 send_pin = \"${{customer.id}}\"\nchannel = {channel}\n"
            )
        };
        let parsed = parse("d.toml", &plan("\"voice\"")).unwrap();
        assert!(matches!(
            parsed.step("send").unwrap().action,
            Action::SendPin {
                channel: PinChannel::Voice,
                ..
            }
        ));
        for (bad, says) in [
            ("\"fax\"", "channel = \"fax\" is not sms or voice"),
            ("2", "channel"),
        ] {
            let problems = parse("d.toml", &plan(bad)).unwrap_err();
            assert!(
                problems.iter().any(|p| p.message.contains(says)),
                "{bad}: {problems:?}"
            );
        }
    }

    #[test]
    fn documented_defaults() {
        let src = r##"
[dialplan]
name = "d"
start = "ask"

[steps.ask]
collect = "x"
on_input = "send"
on_failure = "send"

[steps.send]
send_pin = "${customer.id}"
on_sent = "check"

[steps.check]
check_pin = "${x}"

[steps.menu]
menu = "language-menu"
options = { "2" = "ask", "1" = "send" }

[steps.play]
play = "welcome"
"##;
        let plan = parse("d.toml", src).unwrap();
        assert_eq!(
            (plan.language.as_str(), plan.languages.as_slice()),
            ("en", &["en".to_string()][..])
        );
        assert_eq!(
            plan.steps
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["ask", "send", "check", "menu", "play"],
            "file order"
        );
        let Action::Collect(c) = &plan.step("ask").unwrap().action else {
            panic!()
        };
        assert_eq!(
            (c.min, c.max, c.terminator, c.tries, c.barge_in, c.secret),
            (1, 20, Some('#'), 3, true, false)
        );
        assert_eq!(
            (c.first_digit_timeout, c.inter_digit_timeout),
            (Duration::from_secs(5), Duration::from_secs(3))
        );
        assert!(c.pattern.is_none() && c.prompts.is_empty());
        let Action::SendPin {
            length,
            prompts,
            on_limited,
            channel,
            ..
        } = &plan.step("send").unwrap().action
        else {
            panic!()
        };
        assert_eq!(*length, 6);
        assert_eq!(*channel, PinChannel::Sms);
        assert_eq!(prompts[0].name, "sending-pin");
        assert!(
            on_limited.is_none(),
            "missing transitions stay missing for check to report"
        );
        let Action::CheckPin { customer, .. } = &plan.step("check").unwrap().action else {
            panic!()
        };
        assert_eq!(customer.raw, "${customer.id}");
        let Action::Menu(m) = &plan.step("menu").unwrap().action else {
            panic!()
        };
        assert_eq!(m.options.iter().map(|(k, _)| *k).collect::<String>(), "12");
        assert_eq!(
            (m.tries, m.timeout, m.barge_in),
            (3, Duration::from_secs(5), true)
        );
        let Action::Play {
            prompts, barge_in, ..
        } = &plan.step("play").unwrap().action
        else {
            panic!()
        };
        assert_eq!(
            (prompts[0].name.as_str(), prompts[0].pos.line, *barge_in),
            ("welcome", 23, true)
        );
    }
}
