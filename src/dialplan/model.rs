//! A dialplan as the interpreter, the checker and the graph see it: named steps, each with one
//! action and an explicit transition for every outcome.
//!
//! The model is what [`parse`](mod@super::parse) builds from the file. Positions ([`Pos`]) ride along
//! on everything an admin wrote, so checks that run later (dangling transitions, unknown
//! prompts, unset variables) still point at the right line. Transitions are `Option`s: a
//! missing one is a problem `ivrd check` reports, not a reason the graph of a half-written
//! plan cannot be drawn.

use super::problem::Pos;
use super::services::{LookupBy, PinChannel};
use super::template::{Condition, Template};
use regex::Regex;
use std::collections::BTreeMap;

/// The step types, by the key that gives a step its type.
pub const STEP_TYPES: &[&str] = &[
    "play",
    "say_digits",
    "say_number",
    "collect",
    "menu",
    "set",
    "branch",
    "set_language",
    "lookup_customer",
    "send_pin",
    "check_pin",
    "transfer",
    "hangup",
    "goto",
    "hours",
    "count",
    "call",
    "return",
    "http",
];

/// A parsed dialplan.
#[derive(Debug, Clone)]
pub struct Dialplan {
    /// The file it came from, as named when loaded (for problems and logs).
    pub file: String,
    pub name: String,
    pub description: String,
    /// The first step.
    pub start: Target,
    /// The language the call starts in, and the fallback when a dynamic `set_language`
    /// names a language this plan does not declare.
    pub language: String,
    /// Every language the plan may speak (includes `language`). Prompts and SMS templates
    /// must exist in all of them.
    pub languages: Vec<String>,
    pub languages_pos: Pos,
    /// The dialed numbers (Request-URI user) this plan answers.
    pub numbers: Vec<NumberPattern>,
    /// Initial variables.
    pub vars: BTreeMap<String, String>,
    /// SMS text per language, with `{pin}`, `{minutes}` and `{name}`.
    pub sms: BTreeMap<String, SmsTemplate>,
    /// In file order.
    pub steps: Vec<Step>,
    /// Where `[dialplan]` is (for problems about the plan as a whole).
    pub pos: Pos,
    /// The site's time zone and holidays, for `hours` steps (set with the site's settings;
    /// the host's zone and no holidays until then).
    pub calendar: std::sync::Arc<super::calendar::Calendar>,
    /// The other plans this one's `call` and `goto` steps can lead to, directly or through
    /// each other, by name ([`super::check::link`] fills it once the whole set is loaded and
    /// configured). They are the plans as loaded, without links of their own: a call keeps
    /// the set it started with however often the daemon reloads, and plans that go to each
    /// other form no reference cycle.
    pub linked: BTreeMap<String, std::sync::Arc<Dialplan>>,
}

impl Dialplan {
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// The plan called `name` as a step of this one sees it: itself, or one it is linked to.
    pub fn plan_named(&self, name: &str) -> Option<&Dialplan> {
        if name == self.name {
            Some(self)
        } else {
            self.linked.get(name).map(|p| &**p)
        }
    }

    /// The entries into other plans its steps make (`call` and cross-plan `goto`).
    pub fn entries(&self) -> impl Iterator<Item = (&Step, &Entry)> {
        self.steps.iter().filter_map(|s| match &s.action {
            Action::Call { entry, .. } | Action::GotoPlan { entry } if entry.plan.is_some() => {
                Some((s, entry))
            }
            _ => None,
        })
    }

    /// The SMS template for `language`, else the plan language's, else none (the SMS sender
    /// then uses its built-in text).
    pub fn sms_template(&self, language: &str) -> Option<&str> {
        self.sms
            .get(language)
            .or_else(|| self.sms.get(&self.language))
            .map(|t| t.text.as_str())
    }

    /// How well this plan answers `dialed`: `None` if not at all, else a rank where an exact
    /// number beats any prefix and a longer prefix beats a shorter one.
    pub fn answers(&self, dialed: &str) -> Option<usize> {
        self.numbers.iter().filter_map(|n| n.rank(dialed)).max()
    }
}

/// The plan that answers `dialed` best (see [`Dialplan::answers`]); ties go to the first.
/// Works over plain plans and over shared ones (`Arc<Dialplan>`, as the daemon holds them).
pub fn select<'a, P: std::borrow::Borrow<Dialplan>>(plans: &'a [P], dialed: &str) -> Option<&'a P> {
    let mut best: Option<(usize, &P)> = None;
    for p in plans {
        if let Some(rank) = p.borrow().answers(dialed)
            && best.is_none_or(|(r, _)| rank > r)
        {
            best = Some((rank, p));
        }
    }
    best.map(|(_, p)| p)
}

/// A dialed number a plan answers: exact (`"100"`) or a prefix (`"+4930123*"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberPattern {
    /// Without the trailing `*`.
    pub number: String,
    pub prefix: bool,
    pub pos: Pos,
}

impl NumberPattern {
    fn rank(&self, dialed: &str) -> Option<usize> {
        if self.prefix {
            dialed
                .starts_with(&self.number)
                .then_some(self.number.len())
        } else {
            (dialed == self.number).then_some(usize::MAX)
        }
    }
}

impl std::fmt::Display for NumberPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.number, if self.prefix { "*" } else { "" })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmsTemplate {
    pub text: String,
    pub pos: Pos,
}

/// Fills an SMS template: `{pin}`, `{minutes}`, `{name}`; `{{` and `}}` are literal braces.
/// The SMS sender calls this; the PIN never passes through the interpreter.
pub fn render_sms(template: &str, pin: &str, minutes: u32, name: &str) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let (piece, skip) = if tail.starts_with("{{") {
            ("{".to_string(), 2)
        } else if tail.starts_with("}}") {
            ("}".to_string(), 2)
        } else if tail.starts_with("{pin}") {
            (pin.to_string(), 5)
        } else if tail.starts_with("{minutes}") {
            (minutes.to_string(), 9)
        } else if tail.starts_with("{name}") {
            (name.to_string(), 6)
        } else {
            (tail[..1].to_string(), 1)
        };
        out.push_str(&piece);
        rest = &tail[skip..];
    }
    out.push_str(rest);
    out
}

/// A transition: the name of the step to go to, and where the admin wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub step: String,
    pub pos: Pos,
}

/// Where a `call` or a `goto` into another plan enters: `"plan"` (its start),
/// `"plan:step"`, or `":step"` (a section of the plan the step is in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `None`: the plan the step is written in.
    pub plan: Option<String>,
    /// `None`: the plan's start.
    pub step: Option<String>,
    pub pos: Pos,
}

impl Entry {
    /// Reads `"plan"`, `"plan:"`, `"plan:step"` or `":step"`; `None` for `":"` and `""`.
    pub fn parse(s: &str, pos: Pos) -> Option<Entry> {
        let (plan, step) = match s.split_once(':') {
            Some((plan, step)) => (plan, step),
            None => (s, ""),
        };
        let some = |x: &str| (!x.is_empty()).then(|| x.to_string());
        let entry = Entry {
            plan: some(plan),
            step: some(step),
            pos,
        };
        (entry.plan.is_some() || entry.step.is_some()).then_some(entry)
    }

    /// The plan it enters, seen from a step of `here`.
    pub fn plan_name<'a>(&'a self, here: &'a str) -> &'a str {
        self.plan.as_deref().unwrap_or(here)
    }
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.plan, &self.step) {
            (Some(p), Some(s)) => write!(f, "{p}:{s}"),
            (Some(p), None) => write!(f, "{p}"),
            (None, Some(s)) => write!(f, ":{s}"),
            (None, None) => Ok(()),
        }
    }
}

/// A prompt by name (the file stem under `prompts/<language>/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptRef {
    pub name: String,
    pub pos: Pos,
}

/// One named step.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    /// Where its `[steps.NAME]` header (or key) is.
    pub pos: Pos,
    pub action: Action,
}

/// What a step does. Each variant is one step type; its transitions are named after its
/// outcomes.
#[derive(Debug, Clone)]
pub enum Action {
    Play {
        prompts: Vec<PromptRef>,
        barge_in: bool,
        next: Option<Target>,
    },
    SayDigits {
        value: Template,
        barge_in: bool,
        next: Option<Target>,
    },
    SayNumber {
        value: Template,
        barge_in: bool,
        next: Option<Target>,
    },
    Collect(Collect),
    Menu(Menu),
    Set {
        vars: Vec<Assignment>,
        next: Option<Target>,
    },
    Branch {
        cases: Vec<Case>,
        otherwise: Option<Target>,
    },
    SetLanguage {
        value: Template,
        next: Option<Target>,
    },
    LookupCustomer {
        value: Template,
        by: LookupBy,
        /// Unknown, disabled, ambiguous and locked-out ids go on as found, with a decoy
        /// customer whose PIN is never sent and never valid, so that nothing the caller hears
        /// before the PIN check tells a registered id from any other (the audit keeps the
        /// truth). `on_not_found` and `on_locked` are then never taken.
        decoy: bool,
        on_found: Option<Target>,
        on_not_found: Option<Target>,
        on_locked: Option<Target>,
        on_error: Option<Target>,
    },
    SendPin {
        /// Whose mobile number on file gets the PIN.
        customer: Template,
        length: usize,
        /// By SMS, or read out by a call to that number (`[outbound]`).
        channel: PinChannel,
        /// Played while the SMS goes out.
        prompts: Vec<PromptRef>,
        on_sent: Option<Target>,
        on_limited: Option<Target>,
        on_locked: Option<Target>,
        on_failure: Option<Target>,
    },
    CheckPin {
        /// What the caller typed.
        value: Template,
        customer: Template,
        on_valid: Option<Target>,
        on_invalid: Option<Target>,
        on_exhausted: Option<Target>,
        on_expired: Option<Target>,
        on_locked: Option<Target>,
    },
    Transfer {
        target: Template,
        headers: Vec<(String, Template)>,
        on_failure: Option<Target>,
    },
    Hangup {
        prompts: Vec<PromptRef>,
    },
    Goto {
        target: Option<Target>,
    },
    /// `goto = "plan:step"`: the call goes on in another plan and does not come back.
    GotoPlan {
        entry: Entry,
    },
    /// A sub-flow: runs from `entry` until a `return` step, then goes on at `next`. A
    /// sub-flow that transfers or hangs up ends the call as it would anywhere.
    Call {
        entry: Entry,
        /// For a section of this plan (`":step"`): the step, as a transition the checker
        /// and the graph follow.
        section: Option<Target>,
        next: Option<Target>,
    },
    /// A lookup in another system (a CRM): a request whose answer fills variables.
    Http(Http),
    /// Ends a sub-flow: the call goes on after the `call` step that started it, with
    /// `${CALLSTEP.result}` = `value`. With no sub-flow to end, the call hangs up.
    Return {
        value: String,
    },
    /// A counter: `var` (read as a whole number, unset or not a number as 0) plus `add`.
    Count {
        var: String,
        add: i64,
        next: Option<Target>,
    },
    /// Business hours: open, closed or a holiday now, in the site's time zone
    /// ([`super::calendar`]).
    Hours {
        rules: Vec<super::calendar::HoursRule>,
        on_open: Option<Target>,
        on_closed: Option<Target>,
        /// Where a listed holiday goes; without it, holidays are closed.
        on_holiday: Option<Target>,
    },
}

#[derive(Debug, Clone)]
pub struct Collect {
    /// The variable the digits go into.
    pub var: String,
    pub prompts: Vec<PromptRef>,
    pub barge_in: bool,
    pub min: usize,
    pub max: usize,
    pub terminator: Option<char>,
    pub first_digit_timeout: std::time::Duration,
    pub inter_digit_timeout: std::time::Duration,
    pub tries: u32,
    pub pattern: Option<Regex>,
    pub invalid_prompts: Vec<PromptRef>,
    pub timeout_prompts: Vec<PromptRef>,
    /// Never logged, masked in transcripts (PINs).
    pub secret: bool,
    pub on_input: Option<Target>,
    pub on_failure: Option<Target>,
    /// Keys that, pressed first, end the collection at once and go to their step (`hotkeys`,
    /// e.g. `"0"` for an operator; `on_star` is the shorthand for `"*"`, e.g. "send me a
    /// new text"), in key order. Pressed later, they are ordinary keys.
    pub hotkeys: Vec<(char, Target)>,
    /// Whether the `*` hotkey was written as `on_star` (for problems and graphs).
    pub star_as_on_star: bool,
}

/// An `http` step: what to ask and which parts of the JSON answer to keep.
#[derive(Debug, Clone)]
pub struct Http {
    /// The URL; variables in it are percent-encoded, and its scheme and host are fixed text
    /// (the parser refuses a variable before the path), so a caller's input only ever lands
    /// in the path or query.
    pub url: Template,
    pub method: crate::http_lookup::HttpMethod,
    /// Variables in values are sent as they are; a value with a line break fails the request.
    pub headers: Vec<(String, Template)>,
    /// A JSON body (POST); variables in it are JSON-escaped, so write them inside quotes.
    pub body: Option<Template>,
    pub timeout: std::time::Duration,
    /// (variable, JSON pointer into the answer), in the order written.
    pub vars: Vec<(String, String)>,
    /// Played while the request runs (nothing by default: a fast lookup needs no prompt).
    pub prompts: Vec<PromptRef>,
    /// A 2xx answer whose every pointer was found.
    pub on_ok: Option<Target>,
    /// Anything else: no answer in time, no connection, another status, an answer that is
    /// not JSON or lacks a pointer (`${STEP.status}` and `${STEP.reason}` say which).
    pub on_error: Option<Target>,
}

impl Http {
    /// Every template the request is made of.
    pub fn templates(&self) -> Vec<&Template> {
        let mut v = vec![&self.url];
        v.extend(self.headers.iter().map(|(_, t)| t));
        v.extend(self.body.as_ref());
        v
    }
}

#[derive(Debug, Clone)]
pub struct Menu {
    pub prompts: Vec<PromptRef>,
    pub barge_in: bool,
    /// Key -> step, in key order.
    pub options: Vec<(char, Target)>,
    pub tries: u32,
    pub timeout: std::time::Duration,
    pub invalid_prompts: Vec<PromptRef>,
    pub timeout_prompts: Vec<PromptRef>,
    pub on_failure: Option<Target>,
}

#[derive(Debug, Clone)]
pub struct Assignment {
    pub name: String,
    pub value: Template,
}

#[derive(Debug, Clone)]
pub struct Case {
    pub condition: Condition,
    pub goto: Option<Target>,
}

/// One outgoing edge of a step, for the checker and the graph.
#[derive(Debug, Clone, Copy)]
pub struct Transition<'a> {
    /// The key that holds it (`next`, `on_input`, a menu key, `if`, `else`).
    pub key: &'a str,
    /// What the graph writes on the edge (the key, a menu key, a branch condition).
    pub label: &'a str,
    pub target: Option<&'a Target>,
}

impl Action {
    /// The step type, as the key written in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Play { .. } => "play",
            Action::SayDigits { .. } => "say_digits",
            Action::SayNumber { .. } => "say_number",
            Action::Collect(_) => "collect",
            Action::Menu(_) => "menu",
            Action::Set { .. } => "set",
            Action::Branch { .. } => "branch",
            Action::SetLanguage { .. } => "set_language",
            Action::LookupCustomer { .. } => "lookup_customer",
            Action::SendPin { .. } => "send_pin",
            Action::CheckPin { .. } => "check_pin",
            Action::Transfer { .. } => "transfer",
            Action::Hangup { .. } => "hangup",
            Action::Goto { .. } => "goto",
            Action::Hours { .. } => "hours",
            Action::Count { .. } => "count",
            Action::GotoPlan { .. } => "goto",
            Action::Call { .. } => "call",
            Action::Return { .. } => "return",
            Action::Http(_) => "http",
        }
    }

    /// Every outcome and where it goes (`target: None` = missing), in a stable order.
    pub fn transitions(&self) -> Vec<Transition<'_>> {
        fn t<'a>(key: &'a str, target: &'a Option<Target>) -> Transition<'a> {
            Transition {
                key,
                label: key,
                target: target.as_ref(),
            }
        }
        match self {
            Action::Play { next, .. }
            | Action::SayDigits { next, .. }
            | Action::SayNumber { next, .. }
            | Action::Set { next, .. }
            | Action::SetLanguage { next, .. }
            | Action::Count { next, .. } => vec![t("next", next)],
            Action::Collect(c) => {
                let mut v = vec![t("on_input", &c.on_input), t("on_failure", &c.on_failure)];
                // Optional: without them, `*` and the others are ordinary keys.
                v.extend(c.hotkeys.iter().map(|(k, target)| {
                    if *k == '*' && c.star_as_on_star {
                        Transition {
                            key: "on_star",
                            label: "on_star",
                            target: Some(target),
                        }
                    } else {
                        Transition {
                            key: "hotkeys",
                            label: key_label(*k),
                            target: Some(target),
                        }
                    }
                }));
                v
            }
            Action::Menu(m) => {
                let mut v: Vec<Transition<'_>> = m
                    .options
                    .iter()
                    .map(|(k, target)| Transition {
                        key: "options",
                        label: key_label(*k),
                        target: Some(target),
                    })
                    .collect();
                v.push(t("on_failure", &m.on_failure));
                v
            }
            Action::Branch { cases, otherwise } => {
                let mut v: Vec<Transition<'_>> = cases
                    .iter()
                    .map(|c| Transition {
                        key: "goto",
                        label: &c.condition.raw,
                        target: c.goto.as_ref(),
                    })
                    .collect();
                v.push(t("else", otherwise));
                v
            }
            // Under decoy, "not found" and "locked" go on as found: only what is set counts.
            Action::LookupCustomer {
                decoy: true,
                on_found,
                on_not_found,
                on_locked,
                on_error,
                ..
            } => {
                let mut v = vec![t("on_found", on_found), t("on_error", on_error)];
                if on_not_found.is_some() {
                    v.push(t("on_not_found", on_not_found));
                }
                if on_locked.is_some() {
                    v.push(t("on_locked", on_locked));
                }
                v
            }
            Action::LookupCustomer {
                on_found,
                on_not_found,
                on_locked,
                on_error,
                ..
            } => vec![
                t("on_found", on_found),
                t("on_not_found", on_not_found),
                t("on_locked", on_locked),
                t("on_error", on_error),
            ],
            Action::SendPin {
                on_sent,
                on_limited,
                on_locked,
                on_failure,
                ..
            } => vec![
                t("on_sent", on_sent),
                t("on_limited", on_limited),
                t("on_locked", on_locked),
                t("on_failure", on_failure),
            ],
            Action::CheckPin {
                on_valid,
                on_invalid,
                on_exhausted,
                on_expired,
                on_locked,
                ..
            } => vec![
                t("on_valid", on_valid),
                t("on_invalid", on_invalid),
                t("on_exhausted", on_exhausted),
                t("on_expired", on_expired),
                t("on_locked", on_locked),
            ],
            Action::Transfer { on_failure, .. } => vec![t("on_failure", on_failure)],
            Action::Http(h) => vec![t("on_ok", &h.on_ok), t("on_error", &h.on_error)],
            Action::Hangup { .. } | Action::Return { .. } | Action::GotoPlan { .. } => vec![],
            Action::Goto { target } => vec![t("goto", target)],
            Action::Call { section, next, .. } => {
                let mut v = Vec::new();
                if section.is_some() {
                    v.push(t("call", section));
                }
                v.push(t("next", next));
                v
            }
            Action::Hours {
                on_open,
                on_closed,
                on_holiday,
                ..
            } => {
                let mut v = vec![t("on_open", on_open), t("on_closed", on_closed)];
                // Optional: without it a holiday is closed.
                if on_holiday.is_some() {
                    v.push(t("on_holiday", on_holiday));
                }
                v
            }
        }
    }

    /// Every template the step reads (for the unset-variable check).
    pub fn templates(&self) -> Vec<&Template> {
        match self {
            Action::SayDigits { value, .. }
            | Action::SayNumber { value, .. }
            | Action::SetLanguage { value, .. } => {
                vec![value]
            }
            Action::Set { vars, .. } => vars.iter().map(|a| &a.value).collect(),
            Action::Branch { cases, .. } => {
                let mut v = Vec::new();
                for c in cases {
                    v.push(&c.condition.left);
                    if let super::template::Test::Eq(r)
                    | super::template::Test::Ne(r)
                    | super::template::Test::Compare(r, _) = &c.condition.test
                    {
                        v.push(r);
                    }
                }
                v
            }
            Action::LookupCustomer { value, .. } => vec![value],
            Action::SendPin { customer, .. } => vec![customer],
            Action::CheckPin {
                value, customer, ..
            } => vec![value, customer],
            Action::Transfer {
                target, headers, ..
            } => {
                let mut v = vec![target];
                v.extend(headers.iter().map(|(_, t)| t));
                v
            }
            Action::Http(h) => h.templates(),
            Action::Play { .. }
            | Action::Collect(_)
            | Action::Menu(_)
            | Action::Hangup { .. }
            | Action::Hours { .. }
            | Action::Count { .. }
            | Action::Goto { .. }
            | Action::GotoPlan { .. }
            | Action::Call { .. }
            | Action::Return { .. } => {
                vec![]
            }
        }
    }

    /// Every prompt the step names (not the digit and number prompts `say_*` compose).
    pub fn prompts(&self) -> Vec<&PromptRef> {
        match self {
            Action::Play { prompts, .. }
            | Action::Hangup { prompts }
            | Action::SendPin { prompts, .. } => prompts.iter().collect(),
            Action::Http(h) => h.prompts.iter().collect(),
            Action::Collect(c) => c
                .prompts
                .iter()
                .chain(&c.invalid_prompts)
                .chain(&c.timeout_prompts)
                .collect(),
            Action::Menu(m) => m
                .prompts
                .iter()
                .chain(&m.invalid_prompts)
                .chain(&m.timeout_prompts)
                .collect(),
            _ => vec![],
        }
    }
}

/// A menu key as an edge label (a `&'static str`, so transitions can borrow it).
fn key_label(k: char) -> &'static str {
    const KEYS: [&str; 16] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "*", "#", "A", "B", "C", "D",
    ];
    "0123456789*#ABCD".find(k).map_or("?", |i| KEYS[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(numbers: &[(&str, bool)], name: &str) -> Dialplan {
        Dialplan {
            file: format!("{name}.toml"),
            name: name.into(),
            description: String::new(),
            start: Target {
                step: "a".into(),
                pos: Pos::default(),
            },
            language: "en".into(),
            languages: vec!["en".into()],
            languages_pos: Pos::default(),
            numbers: numbers
                .iter()
                .map(|(n, prefix)| NumberPattern {
                    number: n.to_string(),
                    prefix: *prefix,
                    pos: Pos::default(),
                })
                .collect(),
            vars: BTreeMap::new(),
            sms: BTreeMap::new(),
            steps: vec![],
            pos: Pos::default(),
            calendar: Default::default(),
            linked: BTreeMap::new(),
        }
    }

    #[test]
    fn selects_exact_then_longest_prefix() {
        let plans = [
            plan(&[("+49", true)], "country"),
            plan(&[("+4930123", true)], "berlin"),
            plan(&[("+4930123456", false), ("100", false)], "exact"),
        ];
        let pick = |d: &str| select(&plans, d).map(|p| p.name.as_str());
        assert_eq!(pick("+4930123456"), Some("exact"));
        assert_eq!(pick("+4930123999"), Some("berlin"));
        assert_eq!(pick("+4940"), Some("country"));
        assert_eq!(pick("100"), Some("exact"));
        assert_eq!(pick("1000"), None);
    }

    #[test]
    fn renders_sms() {
        assert_eq!(
            render_sms(
                "PIN {pin}, {minutes} min, {name} {{x}} {other}",
                "1234",
                5,
                "Ann"
            ),
            "PIN 1234, 5 min, Ann {x} {other}"
        );
    }
}
