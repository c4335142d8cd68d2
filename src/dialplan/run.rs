//! The interpreter: runs a dialplan on a call, step by step, and says how it ended.
//!
//! It sees the call only through [`CallIo`] and the outside world only through
//! [`FlowServices`], so the daemon, `ivrd simulate` and tests run the very same code.
//!
//! What it guarantees:
//! - Every outcome of every step goes where the plan says; a transition that is missing
//!   anyway (a plan that skipped `ivrd check`) stops the flow with [`Outcome::Error`]
//!   rather than guessing.
//! - A plan cannot loop forever: after [`STEP_BUDGET`] steps the flow stops with an error.
//! - Secrets (collected with `secret = true`, and anything computed from them) never reach a
//!   log line or an [`Observer`]: observers see `None` where the value would be.
//! - The caller is never left in silence while an SMS goes out: `send_pin` runs the send
//!   under its prompt ([`CallIo::run_with_prompt`]).
//!
//! The [`Outcome`] is the *verification* outcome an audit needs, not how the call ended: a
//! caller who typed an unknown customer number and was then transferred to the fallback
//! agent is [`Outcome::UnknownCustomer`], although the transfer succeeded. The rules:
//! 1. An interpreter fault (budget, missing transition) is [`Outcome::Error`].
//! 2. Otherwise the last verification event decides: a PIN accepted ([`Outcome::Verified`],
//!    or [`Outcome::TransferFailed`] if the hand-over to the agent then failed), a customer
//!    not found, locked out, an SMS not sent or rate limited, a wrong PIN, an expired PIN,
//!    input that never came or never fit (a `collect` or `menu` that ran out of tries), a
//!    store error.
//! 3. A wrong PIN with tries left is not final: if the caller hangs up then, the outcome is
//!    [`Outcome::CallerHangup`] (they abandoned, they did not fail).
//! 4. With no verification event: a hang-up is [`Outcome::CallerHangup`] (or
//!    [`Outcome::Interrupted`] if ivrd ended the call: RTP timeout, maximum duration,
//!    shutdown), a transfer is [`Outcome::TransferredUnverified`] or
//!    [`Outcome::TransferFailed`], and a plan that just ends is [`Outcome::Completed`].

use super::model::{Action, Collect, Dialplan, Entry, Menu, PromptRef, Step, Target};
use super::say;
use super::services::{
    CheckPinOutcome, CustomerRecord, FlowServices, GuardKind, HttpRequest, LookupOutcome,
    PinChannel, PinRequest, SendPinOutcome,
};
use super::template::{Part, Template};
use crate::call::{CallEnd, CallIo, CollectEnd, CollectSpec, PlayOutcome, TransferOutcome};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tracing::{debug, warn};

/// Steps a call may take before the interpreter decides the plan loops and stops it. A
/// real call takes a few dozen; a retry loop with three tries takes a handful more.
pub const STEP_BUDGET: usize = 1000;

/// After a collection ends by reaching its maximum, a terminator pressed this soon after is
/// the caller finishing the same entry ("123456#" out of habit): it is swallowed, so it does
/// not end the next collection empty or skip the next prompt. A digit in this window is
/// surplus input and dropped too.
pub const TERMINATOR_GRACE: Duration = Duration::from_millis(400);

/// The verification outcome of a call, for the audit log (see the module docs for the rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The caller entered the right PIN (and, if the plan transferred them, they got through).
    Verified,
    /// The caller entered wrong PINs until none were left (or the plan gave up after one).
    WrongPin,
    /// The PIN had expired, or none had been sent.
    PinExpired,
    /// No customer matched the number entered (or several did: the flow does not guess).
    UnknownCustomer,
    /// The customer is locked out after too many failures.
    LockedOut,
    /// The SMS provider refused or could not be reached.
    SmsFailed,
    /// Too many SMS for this customer or caller in the window.
    RateLimited,
    /// The fraud guard's global or per-country SMS budget is spent.
    GuardBudget,
    /// The fraud guard does not text the destination's region.
    GuardCountry,
    /// The fraud guard's breaker for the destination's prefix is open.
    GuardBreaker,
    /// The caller entered nothing, every try.
    NoInput,
    /// The caller entered something every try, but never anything valid.
    InvalidInput,
    /// The caller hung up before the verification came to an end.
    CallerHangup,
    /// ivrd ended the call (RTP timeout, maximum duration, shutdown) before the verification
    /// came to an end.
    Interrupted,
    /// A transfer failed and the call ended without verification, or after it (a verified
    /// caller who never reached an agent: the case an operator must look at).
    TransferFailed,
    /// The plan transferred the caller without verifying them (a "talk to an agent" option).
    TransferredUnverified,
    /// The plan ended without verifying anyone (a demo, an announcement).
    Completed,
    /// The plan could not go on (step budget, missing transition) or the customer store
    /// failed; [`FlowResult::error`] says which.
    Error,
}

impl Outcome {
    /// Every outcome, in declaration order: for metrics that export a zero for each before it
    /// first happens, and for `ivrd audit --outcome`, which names them. A test's exhaustive
    /// match makes a new variant fail to compile until it is listed here.
    pub const ALL: [Outcome; 18] = [
        Outcome::Verified,
        Outcome::WrongPin,
        Outcome::PinExpired,
        Outcome::UnknownCustomer,
        Outcome::LockedOut,
        Outcome::SmsFailed,
        Outcome::RateLimited,
        Outcome::GuardBudget,
        Outcome::GuardCountry,
        Outcome::GuardBreaker,
        Outcome::NoInput,
        Outcome::InvalidInput,
        Outcome::CallerHangup,
        Outcome::Interrupted,
        Outcome::TransferFailed,
        Outcome::TransferredUnverified,
        Outcome::Completed,
        Outcome::Error,
    ];

    /// Stable name for logs and the audit table.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Verified => "verified",
            Outcome::WrongPin => "wrong-pin",
            Outcome::PinExpired => "pin-expired",
            Outcome::UnknownCustomer => "unknown-customer",
            Outcome::LockedOut => "locked-out",
            Outcome::SmsFailed => "sms-failed",
            Outcome::RateLimited => "rate-limited",
            Outcome::GuardBudget => "guard-budget",
            Outcome::GuardCountry => "guard-country",
            Outcome::GuardBreaker => "guard-breaker",
            Outcome::NoInput => "no-input",
            Outcome::InvalidInput => "invalid-input",
            Outcome::CallerHangup => "caller-hangup",
            Outcome::Interrupted => "interrupted",
            Outcome::TransferFailed => "transfer-failed",
            Outcome::TransferredUnverified => "transferred-unverified",
            Outcome::Completed => "completed",
            Outcome::Error => "error",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step the call went through, and how it left it (the audit trail; no values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrailEntry {
    pub step: String,
    /// The outcome, as `${STEP.outcome}` has it: `next`, `input`, `failure`, `found`, a menu
    /// key, `case-1`, `else`, ...; `transferred`, `hangup` or `call-ended` for the last step.
    pub outcome: String,
}

/// How a flow ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowResult {
    pub outcome: Outcome,
    /// The customer the lookup found, if it found one.
    pub customer_id: Option<String>,
    /// How the call ended under the flow (the caller hung up, RTP timeout, ...); `None` if
    /// the flow ended it itself (a hangup step, a transfer, an error): then ivrd hangs up.
    pub end: Option<CallEnd>,
    /// Where the caller went, if a transfer succeeded.
    pub transferred_to: Option<String>,
    /// What went wrong, for [`Outcome::Error`].
    pub error: Option<String>,
    pub trail: Vec<TrailEntry>,
}

impl FlowResult {
    /// What a flow passed to [`crate::call::run`] returns.
    pub fn call_result(&self) -> Result<(), CallEnd> {
        match &self.end {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

/// What the interpreter does, as it does it (for the simulator's transcript, and any other
/// observer). Secret values are `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowEvent {
    Step {
        step: String,
        kind: &'static str,
    },
    /// A variable got a value.
    Set {
        name: String,
        value: Option<String>,
    },
    /// A `collect` try ended: `verdict` is `ok`, `no-input` or `invalid`.
    Collected {
        step: String,
        value: Option<String>,
        ended_by: CollectEnd,
        verdict: &'static str,
    },
    /// A call to [`FlowServices`]: what was asked and what came back.
    Service {
        step: String,
        /// `lookup_customer`, `send_pin` or `check_pin`.
        service: &'static str,
        request: String,
        outcome: String,
    },
    Transfer {
        step: String,
        target: String,
        headers: Vec<(String, String)>,
        outcome: String,
    },
    Language {
        language: String,
    },
    Transition {
        step: String,
        outcome: String,
        to: String,
    },
    Warning {
        message: String,
    },
}

/// Receives [`FlowEvent`]s; any `FnMut(FlowEvent) + Send` closure is one.
pub trait Observer: Send {
    fn event(&mut self, event: FlowEvent);
}

impl<F: FnMut(FlowEvent) + Send> Observer for F {
    fn event(&mut self, event: FlowEvent) {
        self(event)
    }
}

/// Runs `plan` on `call` until it hangs up, transfers, fails, or the call ends.
pub async fn run<C: CallIo + Send, S: FlowServices>(
    plan: &Dialplan,
    call: &mut C,
    services: &S,
) -> FlowResult {
    run_observed(plan, call, services, &mut |_: FlowEvent| {}).await
}

/// [`run`], telling `observer` everything it does.
pub async fn run_observed<C: CallIo + Send, S: FlowServices>(
    plan: &Dialplan,
    call: &mut C,
    services: &S,
    observer: &mut dyn Observer,
) -> FlowResult {
    let facts = call.facts().clone();
    let mut vars: BTreeMap<String, String> = plan.vars.clone();
    vars.insert("caller".into(), facts.caller.clone());
    vars.insert(
        "caller_name".into(),
        facts.caller_name.clone().unwrap_or_default(),
    );
    vars.insert("dialed".into(), facts.called.clone());
    vars.insert("call_id".into(), facts.call_id.clone());
    call.set_language(&plan.language);
    let mut it = Interp {
        root: plan,
        plan,
        frames: Vec::new(),
        call,
        services,
        obs: observer,
        vars,
        secrets: BTreeSet::new(),
        customer_id: None,
        decoy: false,
        verdict: None,
        service_error: None,
        transferred_to: None,
        transfer_failed: false,
        fault: None,
        end: None,
        trail: Vec::new(),
    };
    it.run().await;
    let outcome = it.outcome();
    debug!(plan = %plan.name, outcome = outcome.as_str(), steps = it.trail.len(), "flow ended");
    FlowResult {
        outcome,
        customer_id: it.customer_id,
        end: it.end,
        transferred_to: it.transferred_to,
        error: it.fault.or(it.service_error),
        trail: it.trail,
    }
}

/// What a step did: go somewhere, or end the flow.
enum Flow {
    Go {
        outcome: String,
        to: Option<Target>,
    },
    /// Into a sub-flow or another plan, or back from one: `to` is a step of the plan the
    /// interpreter is now in.
    Enter {
        outcome: String,
        to: String,
        /// The step the observer sees the transition leave, if not the one that ran (a
        /// `return` continues after its `call` step: the `next` edge of that step).
        from: Option<(String, String)>,
    },
    Transferred,
    Hangup,
    Stop(String),
}

/// How deep sub-flows may nest: far more than a plan needs, few enough that a plan calling
/// itself stops at once instead of after the step budget.
pub const MAX_CALL_DEPTH: usize = 16;

/// A `call` step waiting for its sub-flow to return.
struct Frame<'a> {
    plan: &'a Dialplan,
    step: &'a Step,
}

fn go(outcome: &str, to: &Option<Target>) -> Flow {
    Flow::Go {
        outcome: outcome.to_string(),
        to: to.clone(),
    }
}

struct Interp<'a, C, S> {
    /// The plan the call started in (it holds the others, [`Dialplan::linked`]).
    root: &'a Dialplan,
    /// The plan the current step is in.
    plan: &'a Dialplan,
    frames: Vec<Frame<'a>>,
    call: &'a mut C,
    services: &'a S,
    obs: &'a mut dyn Observer,
    vars: BTreeMap<String, String>,
    /// Variables whose values must not be shown.
    secrets: BTreeSet<String>,
    customer_id: Option<String>,
    /// The customer is a decoy (see `decoy` on `lookup_customer`): the verdict is already
    /// final and no later step may change it.
    decoy: bool,
    /// The last verification event, and whether it is final (see the module docs).
    verdict: Option<(Outcome, bool)>,
    service_error: Option<String>,
    transferred_to: Option<String>,
    transfer_failed: bool,
    /// Why the interpreter stopped the flow, if it did.
    fault: Option<String>,
    end: Option<CallEnd>,
    trail: Vec<TrailEntry>,
}

impl<'a, C: CallIo + Send, S: FlowServices> Interp<'a, C, S> {
    async fn run(&mut self) {
        let mut current = self.plan.start.step.clone();
        for _ in 0..STEP_BUDGET {
            let plan = self.plan;
            let Some(step) = plan.step(&current) else {
                return self.stop(format!("step \"{current}\" does not exist"));
            };
            let shown = self.shown(step);
            debug!(step = %shown, kind = step.action.kind(), "step");
            self.obs.event(FlowEvent::Step {
                step: shown.clone(),
                kind: step.action.kind(),
            });
            // Sub-flows move between plans; they touch neither the call nor the verdict.
            let flow = match &step.action {
                Action::Call { entry, .. } => self.enter(step, entry, true),
                Action::GotoPlan { entry } => self.enter(step, entry, false),
                Action::Return { value } => self.leave(step, value),
                _ => {
                    // A decoy's verdict (unknown or locked out) was final at the lookup:
                    // what the caller does afterwards changes nothing in the audit.
                    let (was_decoy, verdict) = (self.decoy, self.verdict);
                    let stepped = self.step(step).await;
                    if was_decoy && self.decoy {
                        self.verdict = verdict;
                    }
                    match stepped {
                        Ok(flow) => flow,
                        Err(end) => {
                            debug!(step = %shown, reason = end.as_str(), "call ended during step");
                            self.trail(&shown, "call-ended");
                            self.end = Some(end);
                            return;
                        }
                    }
                }
            };
            match flow {
                Flow::Go { outcome, to } => {
                    self.vars
                        .insert(format!("{}.outcome", step.name), outcome.clone());
                    self.vars.insert("last.outcome".into(), outcome.clone());
                    self.trail(&shown, &outcome);
                    let Some(to) = to else {
                        return self.stop(format!(
                            "step \"{shown}\" has no transition for \"{outcome}\""
                        ));
                    };
                    self.obs.event(FlowEvent::Transition {
                        step: shown,
                        outcome,
                        to: self.shown_name(&to.step),
                    });
                    current = to.step;
                }
                Flow::Enter { outcome, to, from } => {
                    self.trail(&shown, &outcome);
                    let (step, outcome) = from.unwrap_or((shown, outcome));
                    self.obs.event(FlowEvent::Transition {
                        step,
                        outcome,
                        to: self.shown_name(&to),
                    });
                    current = to;
                }
                Flow::Transferred => return self.trail(&shown, "transferred"),
                Flow::Hangup => return self.trail(&shown, "hangup"),
                Flow::Stop(why) => return self.stop(why),
            }
        }
        self.stop(format!(
            "the plan ran {STEP_BUDGET} steps without ending (a loop?); last step \"{}\"",
            self.shown_name(&current)
        ));
    }

    /// A step as logs, the trail and observers name it: `plan:step` in a plan other than the
    /// one the call started in.
    fn shown(&self, step: &Step) -> String {
        self.shown_name(&step.name)
    }

    fn shown_name(&self, step: &str) -> String {
        if std::ptr::eq(self.plan, self.root) {
            step.to_string()
        } else {
            format!("{}:{step}", self.plan.name)
        }
    }

    /// `call` (`returns`) or `goto` into another plan, or a section of this one.
    fn enter(&mut self, step: &'a Step, entry: &Entry, returns: bool) -> Flow {
        let name = entry.plan_name(&self.plan.name);
        let Some(plan) = self.root.plan_named(name) else {
            return Flow::Stop(format!(
                "step \"{}\": plan \"{name}\" is not loaded",
                self.shown(step)
            ));
        };
        if returns {
            if self.frames.len() >= MAX_CALL_DEPTH {
                return Flow::Stop(format!(
                    "step \"{}\": sub-flows nested {MAX_CALL_DEPTH} deep (a plan that calls itself?)",
                    self.shown(step)
                ));
            }
            self.frames.push(Frame {
                plan: self.plan,
                step,
            });
        }
        if !std::ptr::eq(plan, self.plan) {
            // The plan's own [vars] are its defaults: what the call set already stays.
            for (k, v) in &plan.vars {
                if !self.vars.contains_key(k) {
                    self.vars.insert(k.clone(), v.clone());
                }
            }
        }
        self.plan = plan;
        let to = entry
            .step
            .clone()
            .unwrap_or_else(|| plan.start.step.clone());
        Flow::Enter {
            outcome: if returns { "call" } else { "goto" }.into(),
            to,
            from: None,
        }
    }

    /// A `return` step: back after the `call` that started the sub-flow, or, with none, the
    /// end of the call.
    fn leave(&mut self, step: &Step, value: &str) -> Flow {
        let Some(frame) = self.frames.pop() else {
            return Flow::Hangup;
        };
        self.set(
            &format!("{}.result", frame.step.name),
            value.to_string(),
            false,
        );
        self.plan = frame.plan;
        let next = match &frame.step.action {
            Action::Call { next, .. } => next.clone(),
            _ => None,
        };
        debug!(step = %step.name, to = %frame.step.name, "return");
        self.vars
            .insert(format!("{}.outcome", frame.step.name), "next".into());
        self.vars.insert("last.outcome".into(), "next".into());
        match next {
            Some(to) => Flow::Enter {
                outcome: "return".into(),
                to: to.step,
                from: Some((self.shown(frame.step), "next".into())),
            },
            None => Flow::Stop(format!(
                "step \"{}\" has no transition for \"next\"",
                self.shown(frame.step)
            )),
        }
    }

    fn trail(&mut self, step: &str, outcome: &str) {
        self.trail.push(TrailEntry {
            step: step.to_string(),
            outcome: outcome.to_string(),
        });
    }

    fn stop(&mut self, why: String) {
        warn!(plan = %self.plan.name, "{why}");
        self.obs.event(FlowEvent::Warning {
            message: why.clone(),
        });
        self.fault = Some(why);
    }

    fn warn(&mut self, message: String) {
        warn!(plan = %self.plan.name, "{message}");
        self.obs.event(FlowEvent::Warning { message });
    }

    fn outcome(&self) -> Outcome {
        if self.fault.is_some() {
            return Outcome::Error;
        }
        let ended = self.end.as_ref().map(|e| match e {
            CallEnd::CallerHangup | CallEnd::Cancelled => Outcome::CallerHangup,
            _ => Outcome::Interrupted,
        });
        match (self.verdict, ended) {
            (Some((Outcome::Verified, _)), _) => {
                if self.transferred_to.is_none() && self.transfer_failed {
                    Outcome::TransferFailed
                } else {
                    Outcome::Verified
                }
            }
            (Some((o, true)), _) | (Some((o, false)), None) => o,
            (_, Some(ended)) => ended,
            (None, None) if self.transferred_to.is_some() => Outcome::TransferredUnverified,
            (None, None) if self.transfer_failed => Outcome::TransferFailed,
            (None, None) => Outcome::Completed,
        }
    }

    /// A variable's value ("" and a warning if it has none), and whether it is secret.
    fn var(&mut self, name: &str) -> (String, bool) {
        if name == "language" {
            return (self.call.language().to_string(), false);
        }
        match self.vars.get(name) {
            Some(v) => (v.clone(), self.secrets.contains(name)),
            None => {
                self.warn(format!("${{{name}}} is not set; using \"\""));
                (String::new(), false)
            }
        }
    }

    /// Renders a template; the flag says whether it read a secret.
    fn render(&mut self, t: &Template) -> (String, bool) {
        let mut out = String::new();
        let mut secret = false;
        for p in &t.parts {
            match p {
                Part::Text(s) => out.push_str(s),
                Part::Var(v) => {
                    let (value, s) = self.var(v);
                    secret |= s;
                    out.push_str(&value);
                }
            }
        }
        (out, secret)
    }

    fn set(&mut self, name: &str, value: String, secret: bool) {
        self.obs.event(FlowEvent::Set {
            name: name.to_string(),
            value: (!secret).then(|| value.clone()),
        });
        if secret {
            self.secrets.insert(name.to_string());
        } else {
            self.secrets.remove(name);
        }
        self.vars.insert(name.to_string(), value);
    }

    fn service(&mut self, step: &Step, request: String, outcome: String) {
        debug!(step = %step.name, %request, %outcome, "service");
        self.obs.event(FlowEvent::Service {
            step: step.name.clone(),
            service: step.action.kind(),
            request,
            outcome,
        });
    }

    /// A service answer that also decides the verification verdict (`is_final` when no later
    /// step can change it: a wrong PIN with tries left is not final).
    fn service_verdict(
        &mut self,
        step: &Step,
        request: String,
        outcome: String,
        verdict: Outcome,
        is_final: bool,
    ) {
        self.service(step, request, outcome);
        self.verdict = Some((verdict, is_final));
    }

    async fn play(
        &mut self,
        prompts: &[PromptRef],
        barge_in: bool,
    ) -> Result<PlayOutcome, CallEnd> {
        if prompts.is_empty() {
            return Ok(PlayOutcome { interrupted: false });
        }
        let names: Vec<&str> = prompts.iter().map(|p| p.name.as_str()).collect();
        self.call.play(&names, barge_in).await
    }

    async fn play_names(&mut self, names: &[String], barge_in: bool) -> Result<(), CallEnd> {
        if !names.is_empty() {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            self.call.play(&names, barge_in).await?;
        }
        Ok(())
    }

    async fn step(&mut self, step: &Step) -> Result<Flow, CallEnd> {
        match &step.action {
            Action::Play {
                prompts,
                barge_in,
                next,
            } => {
                self.play(prompts, *barge_in).await?;
                Ok(go("next", next))
            }
            Action::SayDigits {
                value,
                barge_in,
                next,
            } => {
                let (v, _) = self.render(value);
                let names = self.digit_prompts(step, &v);
                self.play_names(&names, *barge_in).await?;
                Ok(go("next", next))
            }
            Action::SayNumber {
                value,
                barge_in,
                next,
            } => {
                let (v, _) = self.render(value);
                let names = self.number_prompts(step, &v);
                self.play_names(&names, *barge_in).await?;
                Ok(go("next", next))
            }
            Action::Collect(c) => self.collect(step, c).await,
            Action::Menu(m) => self.menu(step, m).await,
            Action::Set { vars, next } => {
                for a in vars {
                    let (v, secret) = self.render(&a.value);
                    self.set(&a.name, v, secret);
                }
                Ok(go("next", next))
            }
            Action::Branch { cases, otherwise } => {
                for (i, case) in cases.iter().enumerate() {
                    let mut lookups = Vec::new();
                    for v in case.condition.vars() {
                        let value = self.var(v).0;
                        lookups.push((v.to_string(), value));
                    }
                    let hit = case.condition.eval(|name| {
                        lookups
                            .iter()
                            .find(|(n, _)| n == name)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    });
                    if hit {
                        return Ok(go(&format!("case-{}", i + 1), &case.goto));
                    }
                }
                Ok(go("else", otherwise))
            }
            Action::SetLanguage { value, next } => {
                let (wanted, _) = self.render(value);
                let wanted = wanted.trim().to_string();
                let language = if self.plan.languages.contains(&wanted) {
                    wanted
                } else {
                    if !wanted.is_empty() {
                        self.warn(format!(
                            "step \"{}\": language \"{wanted}\" is not one this plan speaks; using {}",
                            step.name, self.plan.language
                        ));
                    }
                    self.plan.language.clone()
                };
                self.call.set_language(&language);
                self.obs.event(FlowEvent::Language { language });
                Ok(go("next", next))
            }
            Action::LookupCustomer {
                value,
                by,
                decoy,
                on_found,
                on_not_found,
                on_locked,
                on_error,
            } => {
                let (v, secret) = self.render(value);
                let request = format!("by {} {}", by_name(*by), if secret { "****" } else { &v });
                let outcome = self.services.lookup_customer(*by, &v).await;
                // Under `decoy`, every id that is not a usable customer goes on as found.
                let truth = match &outcome {
                    LookupOutcome::NotFound => Some((Outcome::UnknownCustomer, "not found")),
                    LookupOutcome::Ambiguous => {
                        Some((Outcome::UnknownCustomer, "ambiguous (counts as not found)"))
                    }
                    LookupOutcome::LockedOut => Some((Outcome::LockedOut, "locked out")),
                    LookupOutcome::Found(_) | LookupOutcome::Error(_) => None,
                };
                if *decoy && let Some((verdict, what)) = truth {
                    self.service_verdict(step, request, format!("{what}: decoy"), verdict, true);
                    self.found(CustomerRecord {
                        id: v.clone(),
                        name: String::new(),
                        mobile: String::new(),
                        language: None,
                        fields: BTreeMap::new(),
                    });
                    self.decoy = true;
                    // The audit names an id only if it belongs to a customer.
                    if verdict != Outcome::LockedOut || *by != super::services::LookupBy::Id {
                        self.customer_id = None;
                    }
                    return Ok(go("found", on_found));
                }
                match outcome {
                    LookupOutcome::Found(rec) => {
                        self.service(step, request, format!("found {}", describe(&rec)));
                        self.found(rec);
                        self.decoy = false;
                        Ok(go("found", on_found))
                    }
                    LookupOutcome::NotFound => {
                        self.service_verdict(
                            step,
                            request,
                            "not found".into(),
                            Outcome::UnknownCustomer,
                            true,
                        );
                        Ok(go("not_found", on_not_found))
                    }
                    LookupOutcome::Ambiguous => {
                        self.service_verdict(
                            step,
                            request,
                            "ambiguous (counts as not found)".into(),
                            Outcome::UnknownCustomer,
                            true,
                        );
                        Ok(go("not_found", on_not_found))
                    }
                    LookupOutcome::LockedOut => {
                        self.service_verdict(
                            step,
                            request,
                            "locked out".into(),
                            Outcome::LockedOut,
                            true,
                        );
                        // The audit names who was locked out when the caller typed their id.
                        if *by == super::services::LookupBy::Id && !v.is_empty() {
                            self.customer_id = Some(v.clone());
                        }
                        Ok(go("locked", on_locked))
                    }
                    LookupOutcome::Error(e) => {
                        self.service_verdict(
                            step,
                            request,
                            format!("error: {e}"),
                            Outcome::Error,
                            true,
                        );
                        self.service_error = Some(format!("customer lookup: {e}"));
                        Ok(go("error", on_error))
                    }
                }
            }
            Action::SendPin {
                customer,
                length,
                channel,
                prompts,
                on_sent,
                on_limited,
                on_locked,
                on_failure,
            } => {
                let (customer_id, _) = self.render(customer);
                if customer_id.is_empty() {
                    self.warn(format!(
                        "step \"{}\": no customer to send a PIN to",
                        step.name
                    ));
                    self.verdict = Some((Outcome::SmsFailed, true));
                    return Ok(go("failure", on_failure));
                }
                let language = self.sms_language();
                let req = PinRequest {
                    customer_id,
                    caller: self.call.facts().limit_key.clone(),
                    template: self.plan.sms_template(&language).map(str::to_string),
                    language,
                    length: *length,
                    decoy: self.decoy,
                    channel: *channel,
                };
                let request = format!(
                    "customer {}, {}, {} digits{}",
                    req.customer_id,
                    req.language,
                    req.length,
                    match req.channel {
                        PinChannel::Sms => "",
                        PinChannel::Voice => ", by call",
                    }
                );
                let names: Vec<&str> = prompts.iter().map(|p| p.name.as_str()).collect();
                let sent = self
                    .call
                    .run_with_prompt(&names, self.services.send_pin(&req))
                    .await?;
                match sent {
                    SendPinOutcome::Sent { minutes } => {
                        self.service(step, request, format!("sent, valid {minutes} min"));
                        self.set(
                            &format!("{}.minutes", step.name),
                            minutes.to_string(),
                            false,
                        );
                        Ok(go("sent", on_sent))
                    }
                    SendPinOutcome::RateLimited => {
                        self.service_verdict(
                            step,
                            request,
                            "rate limited".into(),
                            Outcome::RateLimited,
                            true,
                        );
                        Ok(go("limited", on_limited))
                    }
                    SendPinOutcome::LockedOut => {
                        self.service_verdict(
                            step,
                            request,
                            "locked out".into(),
                            Outcome::LockedOut,
                            true,
                        );
                        Ok(go("locked", on_locked))
                    }
                    SendPinOutcome::Guarded(kind) => {
                        let (what, verdict) = match kind {
                            GuardKind::Budget => ("SMS budget spent", Outcome::GuardBudget),
                            GuardKind::Country => {
                                ("destination not allowed", Outcome::GuardCountry)
                            }
                            GuardKind::Breaker => ("prefix paused", Outcome::GuardBreaker),
                        };
                        self.service_verdict(
                            step,
                            request,
                            format!("refused by the fraud guard: {what}"),
                            verdict,
                            true,
                        );
                        Ok(go("limited", on_limited))
                    }
                    SendPinOutcome::Failed(e) => {
                        self.service_verdict(
                            step,
                            request,
                            format!("failed: {e}"),
                            Outcome::SmsFailed,
                            true,
                        );
                        Ok(go("failure", on_failure))
                    }
                }
            }
            Action::CheckPin {
                value,
                customer,
                on_valid,
                on_invalid,
                on_exhausted,
                on_expired,
                on_locked,
            } => {
                let (input, _) = self.render(value);
                let (customer_id, _) = self.render(customer);
                if customer_id.is_empty() {
                    // No customer, so no PIN was sent: the service would say the same.
                    self.warn(format!(
                        "step \"{}\": no customer to check a PIN for",
                        step.name
                    ));
                    self.verdict = Some((Outcome::PinExpired, true));
                    return Ok(go("expired", on_expired));
                }
                let request = format!("customer {customer_id}, PIN ****");
                match self
                    .services
                    .check_pin(&customer_id, &input, self.decoy)
                    .await
                {
                    CheckPinOutcome::Valid => {
                        self.service_verdict(
                            step,
                            request,
                            "valid".into(),
                            Outcome::Verified,
                            true,
                        );
                        Ok(go("valid", on_valid))
                    }
                    CheckPinOutcome::Invalid { tries_left } => {
                        self.service(step, request, format!("invalid, {tries_left} tries left"));
                        self.set(
                            &format!("{}.tries_left", step.name),
                            tries_left.to_string(),
                            false,
                        );
                        self.verdict = Some((Outcome::WrongPin, false));
                        Ok(go("invalid", on_invalid))
                    }
                    CheckPinOutcome::Exhausted => {
                        self.service_verdict(
                            step,
                            request,
                            "invalid, no tries left".into(),
                            Outcome::WrongPin,
                            true,
                        );
                        Ok(go("exhausted", on_exhausted))
                    }
                    CheckPinOutcome::Expired => {
                        self.service_verdict(
                            step,
                            request,
                            "expired".into(),
                            Outcome::PinExpired,
                            true,
                        );
                        Ok(go("expired", on_expired))
                    }
                    CheckPinOutcome::LockedOut => {
                        self.service_verdict(
                            step,
                            request,
                            "locked out".into(),
                            Outcome::LockedOut,
                            true,
                        );
                        Ok(go("locked", on_locked))
                    }
                }
            }
            Action::Transfer {
                target,
                headers,
                on_failure,
            } => {
                let (target, _) = self.render(target);
                let mut hs = Vec::new();
                for (name, t) in headers {
                    let (v, _) = self.render(t);
                    // An empty header says nothing and some PBXes reject it: leave it out.
                    if !v.is_empty() {
                        hs.push((name.clone(), v));
                    }
                }
                let result = self.call.transfer(&target, &hs).await?;
                let outcome = match &result {
                    TransferOutcome::Transferred => "transferred".to_string(),
                    TransferOutcome::Failed { status, reason } => match status {
                        Some(s) => format!("failed: {s} {reason}"),
                        None => format!("failed: {reason}"),
                    },
                };
                debug!(step = %step.name, %target, %outcome, "transfer");
                self.obs.event(FlowEvent::Transfer {
                    step: step.name.clone(),
                    target: target.clone(),
                    headers: hs,
                    outcome,
                });
                match result {
                    TransferOutcome::Transferred => {
                        self.transferred_to = Some(target);
                        Ok(Flow::Transferred)
                    }
                    TransferOutcome::Failed { status, reason } => {
                        self.transfer_failed = true;
                        let status = status.map(|s| s.to_string()).unwrap_or_default();
                        self.set(&format!("{}.status", step.name), status, false);
                        self.set(&format!("{}.reason", step.name), reason, false);
                        Ok(go("failure", on_failure))
                    }
                }
            }
            Action::Hangup { prompts } => {
                self.play(prompts, false).await?;
                Ok(Flow::Hangup)
            }
            Action::Goto { target } => Ok(go("next", target)),
            Action::Http(h) => self.http(step, h).await,
            // The run loop takes these itself (they move between plans).
            Action::GotoPlan { .. } | Action::Call { .. } | Action::Return { .. } => Ok(
                Flow::Stop(format!("step \"{}\" ran out of place", self.shown(step))),
            ),
            Action::Count { var, add, next } => {
                // Unset or not a number counts from 0; saturating, so no input overflows.
                let now = self.var(var).0.trim().parse::<i64>().unwrap_or(0);
                self.set(var, now.saturating_add(*add).to_string(), false);
                Ok(go("next", next))
            }
            Action::Hours {
                rules,
                on_open,
                on_closed,
                on_holiday,
            } => {
                use super::calendar::Hours;
                Ok(
                    match self.plan.calendar.decide(rules, self.call.wall_clock()) {
                        Hours::Open => go("open", on_open),
                        Hours::Holiday if on_holiday.is_some() => go("holiday", on_holiday),
                        Hours::Holiday | Hours::Closed => go("closed", on_closed),
                    },
                )
            }
        }
    }

    /// The SMS's language: the one the call speaks if a step chose it, else the customer's
    /// own if the plan has an SMS text in it. A plan that keeps the caller in its default
    /// language until the PIN is checked (so that a customer's language is no oracle) still
    /// texts each customer in theirs.
    /// Renders a template with every variable's value passed through `encode` (the text
    /// around them is the admin's and stays as written).
    fn render_encoded(&mut self, t: &Template, encode: fn(&str) -> String) -> String {
        let mut out = String::new();
        for p in &t.parts {
            match p {
                Part::Text(s) => out.push_str(s),
                Part::Var(v) => {
                    let (value, _) = self.var(v);
                    out.push_str(&encode(&value));
                }
            }
        }
        out
    }

    /// An `http` step: the request, then the answer's values into variables.
    async fn http(&mut self, step: &Step, h: &super::model::Http) -> Result<Flow, CallEnd> {
        use crate::http_lookup::{extract, json_escape, url_encode};
        let secret = h
            .templates()
            .iter()
            .any(|t| t.vars().any(|v| self.secrets.contains(v)));
        if secret {
            // `ivrd check` refuses plans that do this; a secret set at run time (a `set`
            // from a secret) is caught here.
            self.warn(format!(
                "step \"{}\": the request would carry a secret; not sent",
                self.shown(step)
            ));
            self.set(&format!("{}.status", step.name), String::new(), false);
            self.set(&format!("{}.reason", step.name), "secret".into(), false);
            return Ok(go("error", &h.on_error));
        }
        let mut headers = Vec::new();
        for (name, t) in &h.headers {
            let (value, _) = self.render(t);
            headers.push((name.clone(), value));
        }
        let req = HttpRequest {
            method: h.method,
            url: self.render_encoded(&h.url, url_encode),
            headers,
            body: h.body.as_ref().map(|b| self.render_encoded(b, json_escape)),
            timeout: h.timeout,
        };
        let request = format!(
            "{} {}",
            match h.method {
                crate::http_lookup::HttpMethod::Get => "GET",
                crate::http_lookup::HttpMethod::Post => "POST",
            },
            req.url
        );
        let names: Vec<&str> = h.prompts.iter().map(|p| p.name.as_str()).collect();
        // The services bound the wait by the step's timeout (the daemon's client does; the
        // simulator's fakes answer a delay over it with a timeout).
        let answer = self
            .call
            .run_with_prompt(&names, self.services.http(&step.name, &req))
            .await?;
        let (status, result) = match answer {
            Ok(resp) if (200..300).contains(&resp.status) => {
                (resp.status.to_string(), extract(&resp.body, &h.vars))
            }
            Ok(resp) => (
                resp.status.to_string(),
                Err(format!("the server answered {}", resp.status)),
            ),
            Err(e) => (String::new(), Err(e.to_string())),
        };
        self.set(&format!("{}.status", step.name), status.clone(), false);
        match result {
            Ok(values) => {
                self.service(step, request, format!("{status}, {} values", values.len()));
                for (name, value) in values {
                    self.set(&name, value, false);
                }
                self.set(&format!("{}.reason", step.name), String::new(), false);
                Ok(go("ok", &h.on_ok))
            }
            Err(reason) => {
                self.service(step, request, format!("error: {reason}"));
                self.set(&format!("{}.reason", step.name), reason, false);
                Ok(go("error", &h.on_error))
            }
        }
    }

    fn sms_language(&self) -> String {
        let speaking = self.call.language();
        if speaking == self.plan.language
            && let Some(own) = self.vars.get("customer.language")
            && self.plan.sms.contains_key(own.as_str())
        {
            return own.clone();
        }
        speaking.to_string()
    }

    fn found(&mut self, rec: CustomerRecord) {
        // A second lookup must not leave the first customer's fields behind.
        self.vars.retain(|k, _| !k.starts_with("customer."));
        for (k, v) in &rec.fields {
            self.vars.insert(format!("customer.{k}"), v.clone());
        }
        self.vars.insert("customer.id".into(), rec.id.clone());
        self.vars.insert("customer.name".into(), rec.name);
        self.vars.insert("customer.mobile".into(), rec.mobile);
        self.vars
            .insert("customer.language".into(), rec.language.unwrap_or_default());
        self.customer_id = Some(rec.id);
    }

    fn digit_prompts(&mut self, step: &Step, value: &str) -> Vec<String> {
        let mut names = Vec::new();
        for c in value.chars() {
            match say::digit_prompt(c) {
                Some(n) => names.push(n),
                None => self.warn(format!(
                    "step \"{}\": no prompt for \"{c}\"; skipped",
                    step.name
                )),
            }
        }
        names
    }

    fn number_prompts(&mut self, step: &Step, value: &str) -> Vec<String> {
        let value = value.trim();
        let language = self.call.language().to_string();
        let n = value
            .parse::<u32>()
            .ok()
            .filter(|_| value.chars().all(|c| c.is_ascii_digit()));
        match n.and_then(|n| say::number_prompts(&language, n)) {
            Some(names) => names,
            None => {
                self.warn(format!(
                    "step \"{}\": cannot say \"{value}\" as a number in {language}; reading the digits",
                    step.name
                ));
                self.digit_prompts(step, value)
            }
        }
    }

    async fn collect(&mut self, step: &Step, c: &Collect) -> Result<Flow, CallEnd> {
        let spec = CollectSpec {
            escape: c.hotkeys.iter().map(|(k, _)| *k).collect(),
            min: c.min,
            max: c.max,
            terminator: c.terminator,
            first_digit_timeout: c.first_digit_timeout,
            inter_digit_timeout: c.inter_digit_timeout,
        };
        let mut failure = Outcome::NoInput;
        for _ in 0..c.tries {
            self.play(&c.prompts, c.barge_in).await?;
            let got = self.call.collect(&spec).await?;
            if got.ended_by == CollectEnd::MaxDigits
                && let Some(t) = c.terminator
            {
                self.swallow(t).await?;
            }
            if got.ended_by == CollectEnd::Escape {
                let key = got.digits.chars().next();
                let target = c.hotkeys.iter().find(|(k, _)| Some(*k) == key);
                let star = key == Some('*') && c.star_as_on_star;
                self.obs.event(FlowEvent::Collected {
                    step: step.name.clone(),
                    value: Some(got.digits.clone()),
                    ended_by: got.ended_by,
                    verdict: if star { "star" } else { "hotkey" },
                });
                let outcome = match key {
                    Some(k) if !star => format!("hotkey {k}"),
                    _ => "star".to_string(),
                };
                return Ok(go(&outcome, &target.map(|(_, t)| t.clone())));
            }
            let verdict = if got.digits.is_empty() && got.ended_by == CollectEnd::Timeout {
                "no-input"
            } else if got.digits.len() < c.min
                || c.pattern
                    .as_ref()
                    .is_some_and(|re| !re.is_match(&got.digits))
            {
                "invalid"
            } else {
                "ok"
            };
            self.obs.event(FlowEvent::Collected {
                step: step.name.clone(),
                value: (!c.secret).then(|| got.digits.clone()),
                ended_by: got.ended_by,
                verdict,
            });
            match verdict {
                "ok" => {
                    self.set(&c.var, got.digits, c.secret);
                    return Ok(go("input", &c.on_input));
                }
                "no-input" => {
                    failure = Outcome::NoInput;
                    self.play(&c.timeout_prompts, c.barge_in).await?;
                }
                _ => {
                    failure = Outcome::InvalidInput;
                    self.play(&c.invalid_prompts, c.barge_in).await?;
                }
            }
        }
        self.verdict = Some((failure, true));
        Ok(go("failure", &c.on_failure))
    }

    /// Takes a terminator pressed right after a full entry (see [`TERMINATOR_GRACE`]).
    async fn swallow(&mut self, terminator: char) -> Result<(), CallEnd> {
        let spec = CollectSpec {
            escape: Vec::new(),
            min: 0,
            max: 1,
            terminator: Some(terminator),
            first_digit_timeout: TERMINATOR_GRACE,
            inter_digit_timeout: TERMINATOR_GRACE,
        };
        let extra = self.call.collect(&spec).await?;
        if !extra.digits.is_empty() {
            debug!("key after a full entry dropped");
        }
        Ok(())
    }

    async fn menu(&mut self, step: &Step, m: &Menu) -> Result<Flow, CallEnd> {
        let spec = CollectSpec {
            escape: Vec::new(),
            min: 1,
            max: 1,
            terminator: None,
            first_digit_timeout: m.timeout,
            inter_digit_timeout: m.timeout,
        };
        let mut failure = Outcome::NoInput;
        for _ in 0..m.tries {
            self.play(&m.prompts, m.barge_in).await?;
            let got = self.call.collect(&spec).await?;
            let key = got.digits.chars().next();
            let choice = key.and_then(|k| m.options.iter().find(|(o, _)| *o == k));
            self.obs.event(FlowEvent::Collected {
                step: step.name.clone(),
                value: Some(got.digits.clone()),
                ended_by: got.ended_by,
                verdict: match (key, choice) {
                    (None, _) => "no-input",
                    (Some(_), None) => "invalid",
                    _ => "ok",
                },
            });
            match (key, choice) {
                (_, Some((k, target))) => {
                    return Ok(Flow::Go {
                        outcome: k.to_string(),
                        to: Some(target.clone()),
                    });
                }
                (None, _) => {
                    failure = Outcome::NoInput;
                    self.play(&m.timeout_prompts, m.barge_in).await?;
                }
                (Some(_), None) => {
                    failure = Outcome::InvalidInput;
                    self.play(&m.invalid_prompts, m.barge_in).await?;
                }
            }
        }
        self.verdict = Some((failure, true));
        Ok(go("failure", &m.on_failure))
    }
}

fn by_name(by: super::services::LookupBy) -> &'static str {
    match by {
        super::services::LookupBy::Id => "id",
        super::services::LookupBy::Mobile => "mobile",
    }
}

/// A found customer for logs and transcripts: id and language, never the name or number
/// (personal data stays out of logs, which are kept and shipped far more widely than the db).
fn describe(rec: &CustomerRecord) -> String {
    match &rec.language {
        Some(l) => format!("{} ({l})", rec.id),
        None => rec.id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::sim::{SimCall, SimEvent, Simulation, sim_facts, simulate};
    use super::super::testing::{FakeServices, block_on, plan};
    use super::*;

    /// `Outcome::ALL` lists every outcome once: a new variant does not compile here until it
    /// is listed (the match is exhaustive), and names are unique.
    #[test]
    fn every_outcome_is_in_all() {
        let listed = |o: Outcome| match o {
            Outcome::Verified
            | Outcome::WrongPin
            | Outcome::PinExpired
            | Outcome::UnknownCustomer
            | Outcome::LockedOut
            | Outcome::SmsFailed
            | Outcome::RateLimited
            | Outcome::GuardBudget
            | Outcome::GuardCountry
            | Outcome::GuardBreaker
            | Outcome::NoInput
            | Outcome::InvalidInput
            | Outcome::CallerHangup
            | Outcome::Interrupted
            | Outcome::TransferFailed
            | Outcome::TransferredUnverified
            | Outcome::Completed
            | Outcome::Error => Outcome::ALL.contains(&o),
        };
        assert!(Outcome::ALL.iter().all(|o| listed(*o)));
        let names: std::collections::BTreeSet<&str> =
            Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(names.len(), Outcome::ALL.len());
    }

    fn sim(src: &str, script: &str) -> Simulation {
        let plan = plan(src);
        let services = FakeServices::new();
        let call = SimCall::new(sim_facts("+4930111", "100"), script).unwrap();
        block_on(simulate(&plan, call, &services))
    }

    fn heard(sim: &Simulation) -> Vec<String> {
        sim.transcript
            .iter()
            .filter_map(|e| match &e.event {
                SimEvent::Play { prompts, .. } => Some(prompts.join("+")),
                _ => None,
            })
            .collect()
    }

    fn line_at(sim: &Simulation, needle: &str) -> String {
        let text = sim.format();
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
            .to_string()
    }

    const COLLECT: &str = r##"
[dialplan]
name = "collect"
start = "ask"

[steps.ask]
collect = "x"
prompt = ["enter-digits"]
min = 2
max = 4
terminator = "#"
first_digit_timeout = "5s"
inter_digit_timeout = "3s"
tries = 2
pattern = "^[0-9]+$"
invalid_prompt = ["invalid"]
timeout_prompt = ["no-input"]
on_input = "read_back"
on_failure = "failed"

[steps.read_back]
say_digits = "${x}"
next = "bye"

[steps.failed]
hangup = ["goodbye"]

[steps.bye]
hangup = []
"##;

    #[test]
    fn collect_ends_at_the_terminator() {
        let s = sim(COLLECT, "W 12#");
        assert!(
            line_at(&s, "collected").starts_with("[00:02.000] collected \"12\" (terminator): ok")
        );
        assert_eq!(heard(&s), ["enter-digits", "digit-1+digit-2"]);
        assert_eq!(s.result.outcome, Outcome::Completed);
        assert_eq!(s.result.end, None);
    }

    /// A counter counts up from unset (0), a branch compares it as a number, and the loop
    /// ends at the limit: three resends, then the fallback.
    #[test]
    fn a_counter_and_a_numeric_branch_end_a_loop() {
        let src = r#"
[dialplan]
name = "count"
start = "again"

[steps.again]
count = "resends"
next = "enough"

[steps.enough]
branch = [{ if = "${resends} > '2'", goto = "done" }]
else = "again"

[steps.done]
say_number = "${resends}"
next = "bye"

[steps.bye]
hangup = []
"#;
        let s = sim(src, "");
        let text = s.format();
        assert_eq!(text.matches("step again (count)").count(), 3, "{text}");
        assert!(text.contains("set resends = \"3\""), "{text}");
        assert!(text.contains("case-1 -> done"), "{text}");
        // A negative step and a value that is not a number (read as 0).
        let down = src
            .replace("count = \"resends\"\n", "count = \"resends\"\nadd = -1\n")
            .replace("${resends} > '2'", "${resends} < '-1'")
            .replace("start = \"again\"", "start = \"init\"")
            + "\n[steps.init]\nset = { resends = \"x\" }\nnext = \"again\"\n";
        let text = sim(&down, "").format();
        assert!(text.contains("set resends = \"-2\""), "{text}");
        // A counter cannot be one of ivrd's own variables.
        let bad = src.replace("count = \"resends\"", "count = \"caller\"");
        let err = super::super::testing::check_with(&bad, &["en"], &|_, _| true).unwrap_err();
        assert!(
            err.iter().any(|p| p.message.contains("count \"caller\"")),
            "{err:#?}"
        );
    }

    /// A hotkey pressed first ends the collect at once (no terminator, no timeout) and goes
    /// to its step; pressed later it is an ordinary key.
    #[test]
    fn a_hotkey_pressed_first_ends_the_collect_at_once() {
        let src = COLLECT
            .replace(
                "on_failure = \"failed\"\n",
                "on_failure = \"failed\"\nhotkeys = { \"0\" = \"operator\" }\non_star = \"bye\"\n",
            )
            .replace("pattern = \"^[0-9]+$\"", "pattern = \"^[0-9*]+$\"")
            + "\n[steps.operator]\nhangup = [\"goodbye\"]\n";
        let s = sim(&src, "W 0");
        assert!(
            line_at(&s, "collected").starts_with("[00:02.000] collected \"0\" (hotkey): hotkey"),
            "{}",
            s.format()
        );
        assert!(
            s.format().contains("hotkey 0 -> operator"),
            "{}",
            s.format()
        );
        let s = sim(&src, "W *");
        assert!(s.format().contains("star -> bye"), "{}", s.format());
        // Later in the input both are ordinary keys.
        let s = sim(&src, "W 10*#");
        assert!(
            line_at(&s, "collected").contains("\"10*\" (terminator): ok"),
            "{}",
            s.format()
        );
        // "*" twice, or the terminator as a hotkey: refused with the reason.
        let twice = src.replace("\"0\" = \"operator\"", "\"*\" = \"operator\"");
        let err = super::super::testing::check_with(&twice, &["en"], &|_, _| true).unwrap_err();
        assert!(
            err.iter()
                .any(|p| p.message.contains("both on_star and a hotkey")),
            "{err:#?}"
        );
        let term = src.replace("\"0\" = \"operator\"", "\"#\" = \"operator\"");
        let err = super::super::testing::check_with(&term, &["en"], &|_, _| true).unwrap_err();
        assert!(
            err.iter()
                .any(|p| p.message.contains("is the terminator and a hotkey")),
            "{err:#?}"
        );
    }

    #[test]
    fn collect_ends_at_max_and_drops_a_surplus_key() {
        let s = sim(COLLECT, "W 12345");
        assert!(line_at(&s, "collected").contains("\"1234\" (max digits): ok"));
        // The 5th key came with the others: it is surplus, not the start of anything.
        assert_eq!(heard(&s)[1], "digit-1+digit-2+digit-3+digit-4");
        assert!(!s.format().contains("script left unused"));
    }

    #[test]
    fn collect_first_digit_timeout() {
        let s = sim(COLLECT, "");
        // Prompt 2 s, then 5 s for a first key.
        assert!(
            line_at(&s, "collected")
                .starts_with("[00:07.000] collected nothing (timeout): no-input")
        );
        assert!(line_at(&s, "play no-input").starts_with("[00:07.000]"));
        // Two tries, then on_failure.
        assert_eq!(
            heard(&s),
            [
                "enter-digits",
                "no-input",
                "enter-digits",
                "no-input",
                "goodbye"
            ]
        );
        assert_eq!(s.result.outcome, Outcome::NoInput);
        assert_eq!(s.result.trail.last().unwrap().step, "failed");
    }

    #[test]
    fn collect_inter_digit_timeout_and_barge_in_on_the_next_prompt() {
        // Keys at 2 s, then 4 s of silence: the 3 s inter-digit timer ends the entry at 5 s.
        let s = sim(COLLECT, "W 12 wwww 3");
        assert!(line_at(&s, "collected").starts_with("[00:05.000] collected \"12\" (timeout): ok"));
        // The late '3' (at 6 s) barges into the read-back.
        assert!(line_at(&s, "play digit-1 + digit-2").ends_with("interrupted at 00:06.000"));
    }

    #[test]
    fn keys_typed_during_a_barge_in_prompt_stop_it_and_are_kept() {
        let s = sim(COLLECT, "w 12#");
        assert!(line_at(&s, "play enter-digits").ends_with("interrupted at 00:01.000"));
        assert!(
            line_at(&s, "collected").starts_with("[00:01.000] collected \"12\" (terminator): ok")
        );
    }

    #[test]
    fn keys_typed_during_a_prompt_without_barge_in_wait_for_the_collect() {
        let src = COLLECT.replace("start = \"ask\"", "start = \"intro\"")
            + "\n[steps.intro]\nplay = [\"welcome\"]\nbarge_in = false\nnext = \"ask\"\n";
        let s = sim(&src, "12#");
        assert!(line_at(&s, "play welcome").ends_with(": played"));
        // The prompt before the collect is skipped: the caller already typed.
        assert!(line_at(&s, "play enter-digits").ends_with("skipped (keys typed ahead)"));
        assert!(
            line_at(&s, "collected").starts_with("[00:02.000] collected \"12\" (terminator): ok")
        );
    }

    #[test]
    fn collect_pattern_mismatch_plays_the_invalid_prompt_and_retries() {
        let s = sim(COLLECT, "W 1*2# W W 34#");
        assert!(line_at(&s, "collected \"1*2\"").ends_with("(terminator): invalid"));
        assert_eq!(heard(&s)[..3], ["enter-digits", "invalid", "enter-digits"]);
        assert!(s.format().contains("set x = \"34\""));

        // Too short (min 2) twice: invalid input, on_failure.
        let s = sim(COLLECT, "W 1# W W 2#");
        assert_eq!(s.result.outcome, Outcome::InvalidInput);
        assert_eq!(
            heard(&s),
            [
                "enter-digits",
                "invalid",
                "enter-digits",
                "invalid",
                "goodbye"
            ]
        );
    }

    const MENU: &str = r##"
[dialplan]
name = "menu"
start = "m"
languages = ["en", "de"]

[vars]
n = "21"

[steps.m]
menu = ["language-menu"]
options = { "1" = "english", "2" = "german" }
tries = 2
timeout = "4s"
invalid_prompt = ["invalid"]
timeout_prompt = ["no-input"]
on_failure = "bye"

[steps.english]
set_language = "en"
next = "number"

[steps.german]
set_language = "de"
next = "number"

[steps.number]
say_number = "${n}"
next = "echo"

[steps.echo]
say_digits = "${m.outcome}"
next = "bye"

[steps.bye]
hangup = ["goodbye"]
"##;

    #[test]
    fn menu_invalid_key_then_choice() {
        let s = sim(MENU, "W 9 W W 2");
        assert_eq!(
            heard(&s)[..3],
            ["language-menu", "invalid", "language-menu"]
        );
        assert!(s.format().contains("language de"));
        // 21 in German: ein-und-zwanzig; then the menu's outcome is the key.
        assert_eq!(
            heard(&s)[3..],
            ["num-one+num-and+num-20", "digit-2", "goodbye"]
        );
        let trail: Vec<String> = s
            .result
            .trail
            .iter()
            .map(|t| format!("{}:{}", t.step, t.outcome))
            .collect();
        assert_eq!(trail[..2], ["m:2", "german:next"]);
        assert_eq!(s.result.outcome, Outcome::Completed);
    }

    #[test]
    fn menu_timeouts_take_on_failure() {
        let s = sim(MENU, "");
        assert_eq!(
            heard(&s),
            [
                "language-menu",
                "no-input",
                "language-menu",
                "no-input",
                "goodbye"
            ]
        );
        // 2 x (menu 2 s + 4 s timeout + no-input 2 s) + goodbye 2 s.
        assert_eq!(s.transcript.last().unwrap().at, Duration::from_secs(18));
        assert_eq!(s.result.outcome, Outcome::NoInput);
    }

    #[test]
    fn english_numbers_and_language_fallback() {
        let s = sim(MENU, "1");
        assert_eq!(heard(&s)[1], "num-20+num-1");
        // A dynamic language the plan does not speak falls back to the plan language.
        let src = MENU.replace("set_language = \"de\"", "set_language = \"${n}\"");
        let s = sim(&src, "2");
        assert!(
            s.format()
                .contains("language \"21\" is not one this plan speaks; using en")
        );
        assert!(s.format().contains("language en"));
    }

    #[test]
    fn set_branch_and_goto_loop_until_a_condition_holds() {
        let s = sim(
            r##"
[dialplan]
name = "loop"
start = "more"

[vars]
count = ""

[steps.more]
set = { count = "${count}x", seen = "${caller}" }
next = "test"

[steps.test]
branch = [
    { if = "${count} == 'xxx'", goto = "done" },
    { if = "${seen} !~ '^[+]49'", goto = "done" },
]
else = "again"

[steps.again]
goto = "more"

[steps.done]
hangup = []
"##,
            "",
        );
        let trail: Vec<String> = s
            .result
            .trail
            .iter()
            .map(|t| format!("{}:{}", t.step, t.outcome))
            .collect();
        assert_eq!(
            trail,
            [
                "more:next",
                "test:else",
                "again:next",
                "more:next",
                "test:else",
                "again:next",
                "more:next",
                "test:case-1",
                "done:hangup"
            ]
        );
        assert!(s.format().contains("set count = \"xxx\""));
        assert!(s.format().contains("set seen = \"+4930111\""));
    }

    #[test]
    fn an_endless_loop_hits_the_step_budget() {
        let s = sim(
            "[dialplan]\nname = \"spin\"\nstart = \"a\"\n[steps.a]\ngoto = \"b\"\n[steps.b]\ngoto = \"a\"\n",
            "",
        );
        assert_eq!(s.result.outcome, Outcome::Error);
        assert_eq!(s.result.trail.len(), STEP_BUDGET);
        assert!(
            s.result
                .error
                .as_deref()
                .unwrap()
                .contains("ran 1000 steps without ending")
        );
        assert!(s.format().contains("ivrd hangs up"));
    }

    #[test]
    fn secrets_stay_masked_through_set_and_unset_variables_warn() {
        let s = sim(
            r##"
[dialplan]
name = "secret"
start = "ask"

[steps.ask]
collect = "code"
max = 4
secret = true
on_input = "copy"
on_failure = "other"

[steps.other]
collect = "later"
on_input = "copy"
on_failure = "copy"

[steps.copy]
set = { again = "code ${code}" }
next = "say"

[steps.say]
say_digits = "${later}"
next = "bye"

[steps.bye]
hangup = []
"##,
            "9876",
        );
        let text = s.format();
        assert!(!text.contains("9876"), "{text}");
        assert!(
            text.contains("set code = ****") && text.contains("set again = ****"),
            "{text}"
        );
        assert!(text.contains("collected **** (max digits): ok"), "{text}");
        assert!(
            text.contains("warning: ${later} is not set; using \"\""),
            "{text}"
        );
        // The keys themselves were typed by the script, so they are shown.
        assert!(text.contains("key 9"), "{text}");
    }

    #[test]
    fn say_number_falls_back_to_digits() {
        let s = sim(
            "[dialplan]\nname = \"n\"\nstart = \"a\"\n[vars]\nv = \"1234567\"\n[steps.a]\nsay_number = \"${v}\"\nnext = \"b\"\n[steps.b]\nhangup = []\n",
            "",
        );
        assert_eq!(
            heard(&s),
            ["digit-1+digit-2+digit-3+digit-4+digit-5+digit-6+digit-7"]
        );
        assert!(
            s.format()
                .contains("cannot say \"1234567\" as a number in en")
        );
    }

    #[test]
    fn the_flow_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let plan = plan(COLLECT);
        let services = FakeServices::new();
        let mut call = SimCall::new(sim_facts("1", "2"), "").unwrap();
        let fut = run(&plan, &mut call, &services);
        assert_send(&fut);
        assert_eq!(block_on(fut).outcome, Outcome::NoInput);
    }
}

/// Sub-flows: `call` into another plan or a section of this one, `return`, and `goto` into
/// another plan, run as the daemon runs them (linked plan sets).
#[cfg(test)]
mod subflow_tests {
    use super::super::sim::{SimCall, Simulation, sim_facts, simulate};
    use super::super::testing::{FakeServices, block_on, plan_set};
    use super::*;

    const MENU: &str = r#"
[dialplan]
name = "menu"
start = "main"
languages = ["en", "de"]

[steps.main]
menu = ["main-menu"]
options = { "1" = "get_verified", "2" = "to_other" }
on_failure = "bye"

[steps.get_verified]
call = "verify"
next = "after"

[steps.after]
branch = [{ if = "${get_verified.result} == 'ok'", goto = "queue" }]
else = "bye"

[steps.queue]
transfer = "sip:queue@pbx.example.com"
headers = { X-Customer-Id = "${customer.id}" }
on_failure = "bye"

[steps.to_other]
goto = "verify:ask_id"

[steps.bye]
hangup = ["goodbye"]
"#;

    const VERIFY: &str = r#"
[dialplan]
name = "verify"
start = "welcome"
languages = ["en", "de"]

[sms.en]
text = "Sub-flow PIN {pin}"

[sms.de]
text = "Unter-PIN {pin}"

[steps.welcome]
play = ["welcome"]
next = "ask_id"

[steps.ask_id]
collect = "customer_id"
min = 6
max = 6
on_input = "lookup"
on_failure = "failed"

[steps.lookup]
lookup_customer = "${customer_id}"
on_found = "send"
on_not_found = "failed"
on_locked = "failed"
on_error = "failed"

[steps.send]
send_pin = "${customer.id}"
on_sent = "ask_pin"
on_limited = "failed"
on_locked = "failed"
on_failure = "failed"

[steps.ask_pin]
collect = "pin"
secret = true
min = 6
max = 6
on_input = "check"
on_failure = "failed"

[steps.check]
check_pin = "${pin}"
on_valid = "ok"
on_invalid = "ask_pin"
on_exhausted = "failed"
on_expired = "failed"
on_locked = "failed"

[steps.ok]
return = "ok"

[steps.failed]
return = "failed"
"#;

    fn run_menu(script: &str) -> (Simulation, FakeServices) {
        let plans = plan_set(&[MENU, VERIFY]).unwrap_or_else(|p| panic!("{p:?}"));
        let services = FakeServices::new();
        let call = SimCall::new(sim_facts("+4930111", "100"), script)
            .unwrap()
            .sms_capture(services.capture());
        let sim = block_on(simulate(&plans[0], call, &services));
        (sim, services)
    }

    fn steps(sim: &Simulation) -> Vec<String> {
        sim.result.trail.iter().map(|t| t.step.clone()).collect()
    }

    #[test]
    fn a_called_plan_runs_and_returns_with_its_result() {
        let (sim, services) = run_menu("1 W 123456 W {pin}");
        assert_eq!(sim.result.outcome, Outcome::Verified, "{}", sim.format());
        assert_eq!(
            sim.result.transferred_to.as_deref(),
            Some("sip:queue@pbx.example.com")
        );
        assert_eq!(
            steps(&sim),
            [
                "main",
                "get_verified",
                "verify:welcome",
                "verify:ask_id",
                "verify:lookup",
                "verify:send",
                "verify:ask_pin",
                "verify:check",
                "verify:ok",
                "after",
                "queue"
            ]
        );
        // The called plan's own SMS text, not the caller's (which has none).
        let sent = services.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].text, "Sub-flow PIN 471183");
        // The transition back is the call step's `next` edge, as the live page draws it.
        let text = sim.format();
        assert!(text.contains("set get_verified.result = \"ok\""), "{text}");
        assert!(text.contains("  next -> after"), "{text}");
    }

    #[test]
    fn a_failed_sub_flow_returns_its_own_result() {
        let (sim, _) = run_menu("1 W 999999");
        assert_eq!(
            sim.result.outcome,
            Outcome::UnknownCustomer,
            "{}",
            sim.format()
        );
        let trail = steps(&sim);
        assert_eq!(trail[trail.len() - 3..], ["verify:failed", "after", "bye"]);
    }

    #[test]
    fn goto_into_another_plan_does_not_come_back() {
        let (sim, _) = run_menu("2 999999");
        let trail = steps(&sim);
        assert_eq!(trail[..3], ["main", "to_other", "verify:ask_id"]);
        // `failed` returns, but nothing called: the call ends there.
        assert_eq!(trail.last().map(String::as_str), Some("verify:failed"));
        assert_eq!(sim.result.trail.last().unwrap().outcome, "hangup");
        assert_eq!(sim.result.outcome, Outcome::UnknownCustomer);
    }

    #[test]
    fn a_section_of_the_same_plan_returns_to_each_caller() {
        let src = r#"
[dialplan]
name = "sections"
start = "first"

[steps.first]
call = ":confirm"
next = "second"

[steps.second]
call = ":confirm"
next = "done"

[steps.confirm]
play = ["thank-you"]
next = "back"

[steps.back]
return = "heard"

[steps.done]
hangup = []
"#;
        let plans = plan_set(&[src]).unwrap_or_else(|p| panic!("{p:?}"));
        let call = SimCall::new(sim_facts("+4930111", "100"), "").unwrap();
        let sim = block_on(simulate(&plans[0], call, &FakeServices::new()));
        assert_eq!(
            steps(&sim),
            [
                "first", "confirm", "back", "second", "confirm", "back", "done"
            ]
        );
        assert_eq!(sim.result.outcome, Outcome::Completed);
    }

    #[test]
    fn a_section_that_calls_itself_stops_at_the_depth_bound() {
        let src = r#"
[dialplan]
name = "deep"
start = "again"

[steps.again]
call = ":again"
next = "done"

[steps.done]
hangup = []
"#;
        let plans = plan_set(&[src]).unwrap_or_else(|p| panic!("{p:?}"));
        let call = SimCall::new(sim_facts("+4930111", "100"), "").unwrap();
        let sim = block_on(simulate(&plans[0], call, &FakeServices::new()));
        assert_eq!(sim.result.outcome, Outcome::Error);
        assert!(
            sim.result
                .error
                .as_deref()
                .unwrap_or("")
                .contains("nested 16 deep"),
            "{:?}",
            sim.result.error
        );
        assert_eq!(sim.result.trail.len(), MAX_CALL_DEPTH);
    }

    #[test]
    fn a_plan_run_alone_cannot_reach_a_plan_it_was_not_linked_to() {
        // Checked as a set, then run without linking (as a caller that skipped link would):
        // the interpreter stops with an error instead of guessing.
        let mut plans = plan_set(&[MENU, VERIFY]).unwrap();
        plans[0].linked.clear();
        let call = SimCall::new(sim_facts("+4930111", "100"), "1").unwrap();
        let sim = block_on(simulate(&plans[0], call, &FakeServices::new()));
        assert_eq!(sim.result.outcome, Outcome::Error);
        assert!(
            sim.result
                .error
                .as_deref()
                .unwrap_or("")
                .contains("plan \"verify\" is not loaded"),
            "{:?}",
            sim.result.error
        );
    }
}

/// `http` steps: what is sent (encoded), what comes back (into variables), and every way it
/// fails, with the simulator's fakes as the server.
#[cfg(test)]
mod http_tests {
    use super::super::sim::{SimCall, Simulation, sim_facts, simulate};
    use super::super::testing::{FakeServices, block_on, check_with, plan};
    use crate::http_lookup::{HttpFakes, HttpMethod};

    const PLAN: &str = r#"
[dialplan]
name = "crm"
start = "input"

[vars]
token = "t0k"

[steps.input]
set = { who = "../a b?c#d&e=1", quote = "say \"hi\"\\" }
next = "lookup"

[steps.lookup]
http = "https://crm.example.com/api/${who}?q=${who}"
method = "POST"
body = '{"who": "${quote}", "n": 1}'
headers = { Authorization = "Bearer ${token}" }
vars = { tier = "/account/tier", name = "/name" }
on_ok = "ok"
on_error = "failed"

[steps.ok]
say_digits = "${tier}${name}"
next = "end"

[steps.failed]
say_digits = "${lookup.status}${lookup.reason}"
next = "end"

[steps.end]
hangup = []
"#;

    fn run(fakes: &str) -> (Simulation, FakeServices) {
        let plan = plan(PLAN);
        let mut services = FakeServices::new();
        services.http = HttpFakes::parse("fakes.toml", fakes).unwrap();
        let call = SimCall::new(sim_facts("+4930111", "100"), "").unwrap();
        let sim = block_on(simulate(&plan, call, &services));
        (sim, services)
    }

    fn var(sim: &Simulation, name: &str) -> Option<String> {
        let text = sim.format();
        let needle = format!("set {name} = ");
        text.lines()
            .filter_map(|l| {
                l.split_once(&needle)
                    .map(|(_, v)| v.trim_matches('"').to_string())
            })
            .next_back()
    }

    #[test]
    fn the_request_carries_input_encoded_and_the_answer_fills_variables() {
        let (sim, services) =
            run("[lookup]\nstatus = 200\njson = { name = \"Ada\", account = { tier = 7 } }\n");
        let sent = services.http_requests();
        assert_eq!(sent.len(), 1);
        let req = &sent[0];
        assert_eq!(req.method, HttpMethod::Post);
        // The caller's text cannot add a path segment, a query or a fragment.
        assert_eq!(
            req.url,
            "https://crm.example.com/api/..%2Fa%20b%3Fc%23d%26e%3D1?q=..%2Fa%20b%3Fc%23d%26e%3D1"
        );
        let body: serde_json::Value = serde_json::from_str(req.body.as_deref().unwrap()).unwrap();
        assert_eq!(body["who"], "say \"hi\"\\");
        assert_eq!(body["n"], 1);
        assert_eq!(
            req.headers,
            [("Authorization".to_string(), "Bearer t0k".to_string())]
        );
        assert_eq!(var(&sim, "tier").as_deref(), Some("7"));
        assert_eq!(var(&sim, "name").as_deref(), Some("Ada"));
        assert_eq!(var(&sim, "lookup.status").as_deref(), Some("200"));
        assert!(sim.format().contains("  ok -> ok"), "{}", sim.format());
    }

    #[test]
    fn every_failure_takes_on_error_with_its_status_and_reason() {
        for (fakes, status, reason) in [
            ("[lookup]\nstatus = 404\n", "404", "the server answered 404"),
            (
                "[lookup]\nbody = '{\"name\": \"Ada\"}'\n",
                "200",
                "no /account/tier in the response",
            ),
            ("[lookup]\nbody = 'not json'\n", "200", "not JSON"),
            ("[lookup]\nerror = \"timeout\"\n", "", "no answer"),
            (
                "[lookup]\nstatus = 200\ndelay = \"4s\"\njson = { name = \"x\" }\n",
                "",
                "no answer",
            ),
            ("[other]\nstatus = 200\n", "", "no answer for step"),
        ] {
            let (sim, _) = run(fakes);
            let text = sim.format();
            assert!(text.contains("  error -> failed"), "{fakes}: {text}");
            assert_eq!(
                var(&sim, "lookup.status").as_deref(),
                Some(status),
                "{fakes}: {text}"
            );
            let got = var(&sim, "lookup.reason").unwrap_or_default();
            assert!(got.contains(reason), "{fakes}: reason {got:?}\n{text}");
            assert_eq!(var(&sim, "tier"), None, "{fakes}: no value on failure");
        }
    }

    #[test]
    fn check_refuses_requests_a_caller_could_steer_or_that_carry_a_secret() {
        let problems = |step: &str| -> Vec<String> {
            let src = format!(
                "[dialplan]\nname = \"x\"\nstart = \"pin\"\n[steps.pin]\ncollect = \"pin\"\nsecret = true\non_input = \"h\"\non_failure = \"e\"\n[steps.h]\n{step}\non_ok = \"e\"\non_error = \"e\"\n[steps.e]\nhangup = []\n"
            );
            match check_with(&src, &["en"], &|_, _| true) {
                Ok(_) => Vec::new(),
                Err(p) => p.iter().map(|p| p.to_string()).collect(),
            }
        };
        // Variables are checked as anywhere else.
        let p = problems("http = \"https://crm.example.com/c/${pin_id}\"");
        assert!(
            p.len() == 1 && p[0].contains("step \"h\": ${pin_id} is never set"),
            "{p:?}"
        );
        for (step, want) in [
            ("http = \"https://${host}/c\"", "scheme and host"),
            ("http = \"${url}\"", "scheme and host"),
            ("http = \"ftp://crm.example.com/\"", "http"),
            (
                "http = \"https://crm.example.com/c/${pin}\"",
                "the URL carries the secret ${pin}",
            ),
            (
                "http = \"https://crm.example.com/c\"\nmethod = \"POST\"\nbody = '{\"p\": \"${pin}\"}'",
                "the body carries the secret ${pin}",
            ),
            (
                "http = \"https://crm.example.com/c\"\nheaders = { X-Pin = \"${pin}\" }",
                "X-Pin carries the secret ${pin}",
            ),
            (
                "http = \"https://crm.example.com/c\"\nbody = '{}'",
                "a GET request has no body",
            ),
            (
                "http = \"https://crm.example.com/c\"\nmethod = \"PUT\"",
                "not GET or POST",
            ),
            (
                "http = \"https://crm.example.com/c\"\nvars = { x = \"name\" }",
                "not a JSON pointer",
            ),
            (
                "http = \"https://crm.example.com/c\"\nvars = { \"customer.id\" = \"/id\" }",
                "contains '.'",
            ),
            (
                "http = \"https://crm.example.com/c\"\ntimeout = \"2m\"",
                "over 30s",
            ),
        ] {
            let p = problems(step);
            assert!(
                p.iter().any(|p| p.contains(want)),
                "{step}: want {want:?} in {p:?}"
            );
        }
        assert_eq!(
            problems("http = \"https://crm.example.com/c\"\nvars = { x = \"/a/b\" }"),
            Vec::<String>::new()
        );
    }
}
