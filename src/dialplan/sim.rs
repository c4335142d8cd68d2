//! The simulator: a scripted caller on a virtual clock, and a transcript of what happened.
//!
//! [`SimCall`] implements [`CallIo`] like the live call does, but the caller is a *key
//! script* and time is virtual: a 5-second timeout passes instantly, so `ivrd simulate` and
//! tests walk through a whole call (every retry, every timeout) in microseconds and get the
//! same result every time. The interpreter cannot tell the difference; that is the point.
//!
//! # Key scripts
//! The caller acts on the script from the moment the call starts, in order:
//! - `0`-`9`, `*`, `#`, `A`-`D`: press that key (keys take no time);
//! - `w`: wait one second;
//! - `W`: wait until the prompt that is playing ends (or, if none is, the next one);
//! - `{pin}`: type the PIN from the last SMS sent (waits until one has been sent);
//! - `!`: hang up;
//! - spaces are ignored (write `W 123456 W {pin}` for readability).
//!
//! When the script runs out the caller stays on the line and says nothing. So
//! `"123456"` types the customer number at once, during the welcome prompt (type-ahead),
//! while `"W W 123456"` listens to two prompts first.
//!
//! # What stays secret
//! The PIN comes from the SMS the services sent (through the capture function given to
//! [`SimCall::sms_capture`]), so the transcript never shows it: the SMS text is shown with
//! `****`, keys typed by `{pin}` are shown as `(PIN digit)`, and secret variables are masked
//! by the interpreter itself. A transcript can be pasted into a ticket.

use super::model::Dialplan;
use super::run::{FlowEvent, FlowResult, run_observed};
use super::services::FlowServices;
use crate::call::{
    CallEnd, CallFacts, CallIo, CollectEnd, CollectSpec, Collected, DigitCollector, PlayOutcome,
    TransferOutcome,
};
use crate::media::dtmf::DtmfMethod;
use std::collections::VecDeque;
use std::fmt::Write;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How long a prompt lasts when no duration function is given.
pub const DEFAULT_PROMPT_DURATION: Duration = Duration::from_secs(2);

/// How long a transfer (REFER and its NOTIFYs) takes on the virtual clock.
pub const TRANSFER_DURATION: Duration = Duration::from_secs(1);

/// Why a key script could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptError {
    /// A character that is not a key, a wait or a command.
    #[error("key script: \"{0}\" at character {1} is not a key (0-9 * # A-D), w, W, {{pin}} or !")]
    Unknown(char, usize),
    /// A `{` that does not start `{pin}`.
    #[error("key script: \"{{\" at character {0} does not start {{pin}}")]
    BadBrace(usize),
}

/// One thing a key script does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    Key(char),
    Wait(Duration),
    UntilPromptEnds,
    Pin,
    Hangup,
    /// A key typed by `{pin}` (masked in the transcript).
    PinKey(char),
}

/// Reads a key script (see the module docs).
pub fn parse_script(script: &str) -> Result<Vec<Token>, ScriptError> {
    let mut out = Vec::new();
    let mut chars = script.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '0'..='9' | '*' | '#' | 'A'..='D' => out.push(Token::Key(c)),
            'w' => out.push(Token::Wait(Duration::from_secs(1))),
            'W' => out.push(Token::UntilPromptEnds),
            '!' => out.push(Token::Hangup),
            '{' => {
                if script[i..].starts_with("{pin}") {
                    for _ in 0..4 {
                        chars.next();
                    }
                    out.push(Token::Pin);
                } else {
                    return Err(ScriptError::BadBrace(i + 1));
                }
            }
            c if c.is_whitespace() => {}
            c => return Err(ScriptError::Unknown(c, i + 1)),
        }
    }
    Ok(out)
}

/// An SMS the services sent, as the capture function reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentSms {
    pub to: String,
    pub text: String,
    /// The PIN in it (so the script can type it and the transcript can hide it).
    pub pin: String,
}

/// How a prompt (list) ended in the simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlayEnd {
    /// Played to the end.
    Finished,
    /// A key stopped it at this time (barge-in).
    Interrupted(Duration),
    /// Not played at all: keys were already typed ahead and barge-in was allowed.
    Skipped,
    /// The caller hung up at this time.
    HungUp(Duration),
    /// Cut at a pause at this time: what the caller waited for was known (the daemon's wait
    /// prompt ends at its next pause, see [`SimCall::prompt_pauses`]).
    Cut(Duration),
}

/// One line of a transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimEvent {
    /// What the interpreter did (steps, variables, services, transfers).
    Flow(FlowEvent),
    Play {
        prompts: Vec<String>,
        language: String,
        barge_in: bool,
        length: Duration,
        ended: PlayEnd,
    },
    /// The caller pressed a key; `masked` for keys typed by `{pin}`.
    Key {
        key: char,
        masked: bool,
    },
    /// An SMS went out (PIN masked).
    Sms {
        to: String,
        text: String,
    },
    Hangup {
        by_caller: bool,
    },
    /// How the flow ended.
    End {
        outcome: String,
        customer_id: Option<String>,
        transferred_to: Option<String>,
        error: Option<String>,
    },
    Note(String),
}

/// A transcript line with its virtual time since the call started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptEntry {
    pub at: Duration,
    pub event: SimEvent,
}

/// What a simulation gives back.
#[derive(Debug, Clone)]
pub struct Simulation {
    pub result: FlowResult,
    pub transcript: Vec<TranscriptEntry>,
}

impl Simulation {
    /// The transcript as text (see [`format_transcript`]).
    pub fn format(&self) -> String {
        format_transcript(&self.transcript)
    }
}

/// The clock and the transcript, shared by the call and the interpreter's observer.
#[derive(Default)]
struct Shared {
    now: Duration,
    entries: Vec<TranscriptEntry>,
}

type DurationFn = Box<dyn Fn(&str, &str) -> Duration + Send + Sync>;
type PausesFn = Box<dyn Fn(&str, &str) -> Vec<Duration> + Send + Sync>;
type CaptureFn = Box<dyn Fn() -> Vec<SentSms> + Send + Sync>;

/// A simulated call (see the module docs).
pub struct SimCall {
    facts: CallFacts,
    language: String,
    shared: Arc<Mutex<Shared>>,
    script: VecDeque<Token>,
    /// The earliest virtual time the next script token can happen.
    cursor: Duration,
    typeahead: VecDeque<char>,
    hung_up: bool,
    prompt_duration: DurationFn,
    prompt_pauses: Option<PausesFn>,
    capture: Option<CaptureFn>,
    sms_seen: usize,
    last_pin: Option<String>,
    fail_transfers: Vec<String>,
}

/// Call facts for a simulated call from `caller` to `dialed`.
pub fn sim_facts(caller: &str, dialed: &str) -> CallFacts {
    CallFacts {
        call_id: "simulated-call".into(),
        caller: caller.into(),
        limit_key: caller.into(),
        caller_name: None,
        called: dialed.into(),
        request_uri: format!("sip:{dialed}@ivrd.invalid"),
        from_uri: format!("sip:{caller}@caller.invalid"),
        remote: std::net::SocketAddr::from(([127, 0, 0, 1], 5060)),
        started: SystemTime::UNIX_EPOCH,
    }
}

/// What stopped the script engine.
enum Happened {
    Key,
    Hangup,
    /// Nothing (more) happens before the limit.
    Quiet,
}

impl SimCall {
    pub fn new(facts: CallFacts, script: &str) -> Result<SimCall, ScriptError> {
        Ok(SimCall {
            facts,
            language: "en".into(),
            shared: Arc::new(Mutex::new(Shared::default())),
            script: parse_script(script)?.into(),
            cursor: Duration::ZERO,
            typeahead: VecDeque::new(),
            hung_up: false,
            prompt_duration: Box::new(|_, _| DEFAULT_PROMPT_DURATION),
            prompt_pauses: None,
            capture: None,
            sms_seen: 0,
            last_pin: None,
            fail_transfers: Vec::new(),
        })
    }

    /// How long prompt `name` (second argument) lasts in `language` (first argument).
    pub fn prompt_durations(
        mut self,
        f: impl Fn(&str, &str) -> Duration + Send + Sync + 'static,
    ) -> SimCall {
        self.prompt_duration = Box::new(f);
        self
    }

    /// Where prompt `name` (second argument) in `language` (first) may be cut between words,
    /// from its start. With it, a wait prompt ends at its first pause once the task it covers
    /// is done (the task takes no virtual time), as the daemon's does; without it, it plays
    /// in full.
    pub fn prompt_pauses(
        mut self,
        f: impl Fn(&str, &str) -> Vec<Duration> + Send + Sync + 'static,
    ) -> SimCall {
        self.prompt_pauses = Some(Box::new(f));
        self
    }

    /// Where the SMS the services send can be seen: every one sent so far, oldest first.
    pub fn sms_capture(mut self, f: impl Fn() -> Vec<SentSms> + Send + Sync + 'static) -> SimCall {
        self.capture = Some(Box::new(f));
        self
    }

    /// Transfers to these targets fail (`"*"`: every transfer fails).
    pub fn fail_transfers<I: IntoIterator<Item = T>, T: Into<String>>(
        mut self,
        targets: I,
    ) -> SimCall {
        self.fail_transfers = targets.into_iter().map(Into::into).collect();
        self
    }

    /// The virtual time since the call started.
    pub fn now(&self) -> Duration {
        self.with(|s| s.now)
    }

    /// What happened so far (for flows other than a dialplan's, which [`simulate`] returns).
    pub fn transcript(&self) -> Vec<TranscriptEntry> {
        self.with(|s| s.entries.clone())
    }

    fn with<R>(&self, f: impl FnOnce(&mut Shared) -> R) -> R {
        let mut guard = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }

    fn set_now(&self, t: Duration) {
        self.with(|s| s.now = s.now.max(t));
    }

    fn record(&self, event: SimEvent) -> usize {
        self.with(|s| {
            let at = s.now;
            s.entries.push(TranscriptEntry { at, event });
            s.entries.len() - 1
        })
    }

    fn check_sms(&mut self) {
        let Some(capture) = &self.capture else {
            return;
        };
        let sent = capture();
        for sms in sent.iter().skip(self.sms_seen) {
            let text = if sms.pin.is_empty() {
                sms.text.clone()
            } else {
                sms.text.replace(&sms.pin, "****")
            };
            self.record(SimEvent::Sms {
                to: sms.to.clone(),
                text,
            });
            self.last_pin = Some(sms.pin.clone());
        }
        self.sms_seen = self.sms_seen.max(sent.len());
    }

    /// Runs the script until a key is pressed, the caller hangs up, or `limit` passes.
    /// `playing_until`: a prompt is playing until then (what `W` waits for).
    fn advance(&mut self, limit: Duration, playing_until: Option<Duration>) -> Happened {
        loop {
            let now = self.now();
            let at = self.cursor.max(now);
            let Some(token) = self.script.front().copied() else {
                return Happened::Quiet;
            };
            match token {
                Token::Wait(d) => {
                    self.cursor = at + d;
                    self.script.pop_front();
                }
                Token::UntilPromptEnds => match playing_until {
                    Some(end) if at < end => {
                        self.cursor = end;
                        self.script.pop_front();
                    }
                    // Waits for a prompt that has not started yet.
                    _ => return Happened::Quiet,
                },
                Token::Pin => {
                    self.check_sms();
                    let Some(pin) = self.last_pin.clone() else {
                        return Happened::Quiet;
                    };
                    self.script.pop_front();
                    for c in pin.chars().rev() {
                        self.script.push_front(Token::PinKey(c));
                    }
                }
                Token::Key(c) | Token::PinKey(c) => {
                    if at >= limit {
                        return Happened::Quiet;
                    }
                    self.script.pop_front();
                    self.cursor = at;
                    self.set_now(at);
                    self.record(SimEvent::Key {
                        key: c,
                        masked: matches!(token, Token::PinKey(_)),
                    });
                    self.typeahead.push_back(c);
                    return Happened::Key;
                }
                Token::Hangup => {
                    if at >= limit {
                        return Happened::Quiet;
                    }
                    self.script.pop_front();
                    self.cursor = at;
                    self.set_now(at);
                    self.hung_up = true;
                    self.record(SimEvent::Hangup { by_caller: true });
                    return Happened::Hangup;
                }
            }
        }
    }

    fn script_left(&self) -> String {
        self.script
            .iter()
            .map(|t| match t {
                Token::Key(c) => c.to_string(),
                Token::PinKey(_) => "(PIN digit)".into(),
                Token::Wait(_) => "w".into(),
                Token::UntilPromptEnds => "W".into(),
                Token::Pin => "{pin}".into(),
                Token::Hangup => "!".into(),
            })
            .collect()
    }
}

impl SimCall {
    /// Plays `prompts`, or only their first `cut` (then ended as [`PlayEnd::Cut`]).
    async fn play_for(
        &mut self,
        prompts: &[&str],
        barge_in: bool,
        cut: Option<Duration>,
    ) -> Result<PlayOutcome, CallEnd> {
        if self.hung_up {
            return Err(CallEnd::CallerHangup);
        }
        let whole: Duration = prompts
            .iter()
            .map(|p| (self.prompt_duration)(&self.language, p))
            .sum();
        let length = cut.map_or(whole, |c| c.min(whole));
        let start = self.now();
        let end = start + length;
        let index = self.record(SimEvent::Play {
            prompts: prompts.iter().map(|p| p.to_string()).collect(),
            language: self.language.clone(),
            barge_in,
            length,
            ended: PlayEnd::Finished,
        });
        let set_end = |me: &SimCall, how: PlayEnd| {
            me.with(|s| {
                if let SimEvent::Play { ended, .. } = &mut s.entries[index].event {
                    *ended = how;
                }
            })
        };
        if barge_in && !self.typeahead.is_empty() {
            set_end(self, PlayEnd::Skipped);
            return Ok(PlayOutcome { interrupted: true });
        }
        loop {
            match self.advance(end, Some(end)) {
                Happened::Key if barge_in => {
                    set_end(self, PlayEnd::Interrupted(self.now()));
                    return Ok(PlayOutcome { interrupted: true });
                }
                Happened::Key => {}
                Happened::Hangup => {
                    set_end(self, PlayEnd::HungUp(self.now()));
                    return Err(CallEnd::CallerHangup);
                }
                Happened::Quiet => {
                    self.set_now(end);
                    if cut.is_some() {
                        set_end(self, PlayEnd::Cut(end));
                    }
                    return Ok(PlayOutcome { interrupted: false });
                }
            }
        }
    }
}

impl CallIo for SimCall {
    fn facts(&self) -> &CallFacts {
        &self.facts
    }

    fn wall_clock(&self) -> std::time::SystemTime {
        self.facts.started + self.now()
    }

    fn language(&self) -> &str {
        &self.language
    }

    fn set_language(&mut self, language: &str) {
        self.language = language.to_string();
    }

    async fn play(&mut self, prompts: &[&str], barge_in: bool) -> Result<PlayOutcome, CallEnd> {
        self.play_for(prompts, barge_in, None).await
    }

    async fn collect(&mut self, spec: &CollectSpec) -> Result<Collected, CallEnd> {
        if self.hung_up {
            return Err(CallEnd::CallerHangup);
        }
        // The same rules as the live call (one DigitCollector): type-ahead first, then keys
        // as they come, the inter-digit timer restarting at each key.
        let mut collector = DigitCollector::new(spec);
        let mut deadline = self.now() + spec.first_digit_timeout;
        loop {
            while let Some(c) = self.typeahead.pop_front() {
                if let Some(done) = collector.push(c, DtmfMethod::Rfc4733) {
                    return Ok(done);
                }
                deadline = self.now() + spec.inter_digit_timeout;
            }
            match self.advance(deadline, None) {
                Happened::Key => {}
                Happened::Hangup => return Err(CallEnd::CallerHangup),
                Happened::Quiet => {
                    self.set_now(deadline);
                    return Ok(collector.timed_out());
                }
            }
        }
    }

    async fn run_with_prompt<T, F>(&mut self, prompts: &[&str], task: F) -> Result<T, CallEnd>
    where
        T: Send,
        F: Future<Output = T> + Send,
    {
        if self.hung_up {
            return Err(CallEnd::CallerHangup);
        }
        // The task takes no virtual time: its effects (the SMS) exist as the prompt starts.
        let out = task.await;
        self.check_sms();
        if prompts.is_empty() {
            return Ok(out);
        }
        // Done before the prompt starts: like the daemon's pacer, it ends at the first
        // prompt's first pause (or that prompt's end) and nothing after it plays.
        let cut = self.prompt_pauses.as_ref().and_then(|pauses| {
            let first = prompts.first()?;
            let whole = (self.prompt_duration)(&self.language, first);
            Some(
                pauses(&self.language, first)
                    .into_iter()
                    .find(|p| *p <= whole)
                    .unwrap_or(whole),
            )
        });
        match cut {
            Some(at) => self.play_for(prompts, false, Some(at)).await?,
            None => self.play(prompts, false).await?,
        };
        Ok(out)
    }

    async fn transfer(
        &mut self,
        target: &str,
        _headers: &[(String, String)],
    ) -> Result<TransferOutcome, CallEnd> {
        if self.hung_up {
            return Err(CallEnd::CallerHangup);
        }
        let now = self.now();
        self.set_now(now + TRANSFER_DURATION);
        if self.fail_transfers.iter().any(|t| t == "*" || t == target) {
            Ok(TransferOutcome::Failed {
                status: Some(486),
                reason: "Busy Here (simulated)".into(),
            })
        } else {
            Ok(TransferOutcome::Transferred)
        }
    }
}

/// Runs `plan` on `call` with `services`; returns how it ended and the transcript.
pub async fn simulate<S: FlowServices>(
    plan: &Dialplan,
    mut call: SimCall,
    services: &S,
) -> Simulation {
    let shared = call.shared.clone();
    let mut observer = move |event: FlowEvent| {
        let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
        let at = s.now;
        s.entries.push(TranscriptEntry {
            at,
            event: SimEvent::Flow(event),
        });
    };
    let result = run_observed(plan, &mut call, services, &mut observer).await;
    if result.end.is_none() && result.transferred_to.is_none() {
        call.record(SimEvent::Hangup { by_caller: false });
    }
    if !call.script.is_empty() {
        call.record(SimEvent::Note(format!(
            "script left unused: {}",
            call.script_left()
        )));
    }
    call.record(SimEvent::End {
        outcome: result.outcome.as_str().to_string(),
        customer_id: result.customer_id.clone(),
        transferred_to: result.transferred_to.clone(),
        error: result.error.clone(),
    });
    let transcript = call.with(|s| std::mem::take(&mut s.entries));
    Simulation { result, transcript }
}

/// `[mm:ss.mmm]` for a virtual time.
fn stamp(t: Duration) -> String {
    let ms = t.as_millis();
    format!(
        "[{:02}:{:02}.{:03}]",
        ms / 60_000,
        ms / 1000 % 60,
        ms % 1000
    )
}

fn secs(d: Duration) -> String {
    format!("{}.{:03}s", d.as_secs(), d.subsec_millis())
}

fn ended_by(e: CollectEnd) -> &'static str {
    match e {
        CollectEnd::Terminator => "terminator",
        CollectEnd::MaxDigits => "max digits",
        CollectEnd::Timeout => "timeout",
        CollectEnd::Escape => "hotkey",
    }
}

/// A readable transcript, one line per event:
/// ```text
/// [00:00.000] step welcome (play)
/// [00:00.000] play welcome (en, barge-in, 2.000s): interrupted at 00:01.000
/// [00:01.000] key 1
/// [00:06.000] sms to +4915112345678: "Your PIN is ****."
/// [00:09.000] collected **** (max digits): ok
/// ```
pub fn format_transcript(entries: &[TranscriptEntry]) -> String {
    let mut out = String::new();
    for e in entries {
        let text = match &e.event {
            SimEvent::Flow(f) => match f {
                FlowEvent::Step { step, kind } => format!("step {step} ({kind})"),
                FlowEvent::Set { name, value } => match value {
                    Some(v) => format!("set {name} = {v:?}"),
                    None => format!("set {name} = ****"),
                },
                FlowEvent::Collected {
                    value,
                    ended_by: by,
                    verdict,
                    ..
                } => match value {
                    Some(v) if v.is_empty() => {
                        format!("collected nothing ({}): {verdict}", ended_by(*by))
                    }
                    Some(v) => format!("collected {v:?} ({}): {verdict}", ended_by(*by)),
                    None => format!("collected **** ({}): {verdict}", ended_by(*by)),
                },
                FlowEvent::Service {
                    service,
                    request,
                    outcome,
                    ..
                } => format!("{service} {request} -> {outcome}"),
                FlowEvent::Transfer {
                    target,
                    headers,
                    outcome,
                    ..
                } => {
                    let hs: Vec<String> =
                        headers.iter().map(|(n, v)| format!("{n}: {v}")).collect();
                    format!("transfer to {target} [{}] -> {outcome}", hs.join(", "))
                }
                FlowEvent::Language { language } => format!("language {language}"),
                FlowEvent::Transition { outcome, to, .. } => format!("  {outcome} -> {to}"),
                FlowEvent::Warning { message } => format!("warning: {message}"),
            },
            SimEvent::Play {
                prompts,
                language,
                barge_in,
                length,
                ended,
            } => {
                let how = match ended {
                    PlayEnd::Finished => "played".to_string(),
                    PlayEnd::Interrupted(t) => format!("interrupted at {}", &stamp(*t)[1..10]),
                    PlayEnd::Skipped => "skipped (keys typed ahead)".to_string(),
                    PlayEnd::HungUp(t) => format!("caller hung up at {}", &stamp(*t)[1..10]),
                    PlayEnd::Cut(t) => format!(
                        "cut at a pause at {} (what it covered was done)",
                        &stamp(*t)[1..10]
                    ),
                };
                let barge = if *barge_in { ", barge-in" } else { "" };
                format!(
                    "play {} ({language}{barge}, {}): {how}",
                    prompts.join(" + "),
                    secs(*length)
                )
            }
            SimEvent::Key { key, masked } => match masked {
                true => "key (PIN digit)".to_string(),
                false => format!("key {key}"),
            },
            SimEvent::Sms { to, text } => format!("sms to {to}: {text:?}"),
            SimEvent::Hangup { by_caller: true } => "caller hangs up".to_string(),
            SimEvent::Hangup { by_caller: false } => "ivrd hangs up".to_string(),
            SimEvent::End {
                outcome,
                customer_id,
                transferred_to,
                error,
            } => {
                let mut s = format!("end: {outcome}");
                if let Some(c) = customer_id {
                    let _ = write!(s, ", customer {c}");
                }
                if let Some(t) = transferred_to {
                    let _ = write!(s, ", transferred to {t}");
                }
                if let Some(e) = error {
                    let _ = write!(s, " ({e})");
                }
                s
            }
            SimEvent::Note(n) => format!("note: {n}"),
        };
        let _ = writeln!(out, "{} {text}", stamp(e.at));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::testing::{FakeServices, block_on, plan};
    use super::*;

    #[test]
    fn scripts_parse() {
        assert_eq!(
            parse_script("1 2w W{pin}#*A!").unwrap(),
            [
                Token::Key('1'),
                Token::Key('2'),
                Token::Wait(Duration::from_secs(1)),
                Token::UntilPromptEnds,
                Token::Pin,
                Token::Key('#'),
                Token::Key('*'),
                Token::Key('A'),
                Token::Hangup
            ]
        );
        assert_eq!(parse_script("12x"), Err(ScriptError::Unknown('x', 3)));
        assert_eq!(parse_script("1{pn}"), Err(ScriptError::BadBrace(2)));
        assert_eq!(parse_script("   ").unwrap(), []);
    }

    const PLAN: &str = r##"
[dialplan]
name = "sim"
start = "a"

[steps.a]
play = ["welcome", "goodbye"]
next = "b"

[steps.b]
collect = "x"
prompt = ["enter-digits"]
max = 3
first_digit_timeout = "5s"
tries = 1
on_input = "c"
on_failure = "c"

[steps.c]
hangup = []
"##;

    fn sim_with(script: &str, durations: fn(&str, &str) -> Duration) -> Simulation {
        let plan = plan(PLAN);
        let services = FakeServices::new();
        let call = SimCall::new(sim_facts("1", "2"), script)
            .unwrap()
            .prompt_durations(durations);
        block_on(simulate(&plan, call, &services))
    }

    #[test]
    fn prompt_lengths_come_from_the_duration_function() {
        let s = sim_with("", |_, p| {
            if p == "welcome" {
                Duration::from_millis(3500)
            } else {
                Duration::from_secs(1)
            }
        });
        let text = s.format();
        assert!(
            text.contains("[00:00.000] play welcome + goodbye (en, barge-in, 4.500s): played"),
            "{text}"
        );
        // 4.5 s of prompts, 1 s prompt, 5 s timeout.
        assert!(
            text.contains("[00:10.500] collected nothing (timeout)"),
            "{text}"
        );
        assert!(text.contains("[00:10.500] ivrd hangs up"), "{text}");
        assert!(text.ends_with("[00:10.500] end: no-input\n"), "{text}");
    }

    #[test]
    fn big_w_waits_for_the_prompt_playing_and_small_w_for_a_second() {
        // W: the end of welcome+goodbye (4 s); W: the end of enter-digits (6 s); w: 7 s.
        let s = sim_with("W W w 123", |_, _| Duration::from_secs(2));
        assert!(s.format().contains("[00:07.000] key 1"), "{}", s.format());
        // A W when nothing plays waits for the next prompt; at the end it waits forever.
        let s = sim_with("12 W 3", |_, _| Duration::from_secs(2));
        let text = s.format();
        assert!(text.contains("collected \"12\" (timeout)"), "{text}");
        assert!(text.contains("note: script left unused: W3"), "{text}");
    }

    #[test]
    fn a_pin_token_waits_for_an_sms() {
        // No SMS is ever sent here: {pin} blocks, the caller stays silent.
        let s = sim_with("{pin}", |_, _| Duration::from_secs(2));
        assert!(s.format().contains("note: script left unused: {pin}"));
        assert_eq!(s.result.outcome.as_str(), "no-input");
    }

    #[test]
    fn hanging_up_ends_every_later_operation() {
        let s = sim_with("w!", |_, _| Duration::from_secs(2));
        let text = s.format();
        assert!(text.contains("caller hung up at 00:01.000"), "{text}");
        assert_eq!(s.result.end, Some(CallEnd::CallerHangup));
        assert!(!text.contains("step b"), "{text}");
    }

    #[test]
    fn timestamps() {
        assert_eq!(stamp(Duration::from_millis(72_500)), "[01:12.500]");
        assert_eq!(stamp(Duration::ZERO), "[00:00.000]");
    }
}
