//! Dialplans: the call flows admins write by hand, check, simulate, draw, and ivrd runs.
//!
//! A dialplan is a TOML file of *named steps* with an *explicit transition for every
//! outcome*. TOML because it is what Rust tools (and their admins) already use for
//! configuration, it reads like INI, it allows comments, and every value has a position the
//! parser reports, so a problem can name its line; a step table per step keeps each step's
//! settings together and diff-friendly.
//!
//! ```toml
//! [dialplan]
//! name = "verify"
//! description = "Verify callers by a PIN sent by SMS"
//! start = "welcome"                 # the first step
//! language = "en"                   # the call starts in this language (default "en")
//! languages = ["en", "de"]          # every language the plan may switch to
//! numbers = ["100", "+4930123*"]    # dialed numbers it answers; '*' at the end: prefix
//!
//! [vars]                            # initial variables (strings)
//! queue = "sip:queue@pbx.example.com"
//!
//! [sms.en]                          # SMS text per language: {pin}, {minutes}, {name}
//! text = "Your PIN is {pin}. It is valid for {minutes} minutes."
//!
//! [steps.ask_id]
//! collect = "customer_id"           # the type key; its value is what the step acts on
//! prompt = ["enter-customer-id"]
//! min = 6
//! max = 6
//! pattern = "^[0-9]{6}$"
//! on_input = "lookup"               # one transition per outcome
//! on_failure = "fallback"
//! ```
//!
//! # Step types
//! Each step has exactly one type key. Outcomes are the transition keys; a missing one is
//! an `ivrd check` problem, never a silent default. `${STEP.outcome}` and `${last.outcome}`
//! hold the outcome taken (the key without `on_`).
//!
//! | type key = value | other keys (defaults) | transitions |
//! |---|---|---|
//! | `play = ["p", ...]` | `barge_in` (true) | `next` |
//! | `say_digits = "${v}"` | `barge_in` (true) | `next` |
//! | `say_number = "${v}"` (0..=999999, en and de) | `barge_in` (true) | `next` |
//! | `collect = "var"` | `prompt`, `barge_in` (true), `min` (1), `max` (20), `terminator` ("#"; "" for none), `first_digit_timeout` ("5s"), `inter_digit_timeout` ("3s"), `tries` (3), `pattern`, `invalid_prompt`, `timeout_prompt`, `secret` (false) | `on_input`, `on_failure`; optional `hotkeys = { "0" = "operator" }` (a key pressed first ends the collect at once and goes to its step; later it is an ordinary key) and `on_star` (the same for "*", e.g. to send the PIN again) |
//! | `menu = ["p", ...]` | `options = { "1" = "step" }`, `barge_in` (true), `tries` (3), `timeout` ("5s"), `invalid_prompt`, `timeout_prompt` | the options, `on_failure` |
//! | `set = { name = "value ${x}" }` | | `next` |
//! | `count = "var"` (a whole number; unset or not a number counts as 0) | `add` (1; negative counts down) | `next` |
//! | `branch = [{ if = "${x} == 'y'", goto = "step" }, ...]` (`==`, `!=`, `=~ 'regex'`, `!~ 'regex'`, and `<`, `<=`, `>`, `>=` between whole numbers) | | the cases, `else` |
//! | `set_language = "de"` or `"${customer.language}"` | | `next` |
//! | `lookup_customer = "${customer_id}"` | `by` ("id" or "mobile"), `decoy` (false: unknown, several, disabled and locked-out ids go on as found with a decoy customer whose PIN is never sent and never valid; the audit keeps the truth) | `on_found`, `on_not_found` (also: several match), `on_locked` (both unused with `decoy`), `on_error` |
//! | `send_pin = "${customer.id}"` | `length` (6; 4..=10), `prompt` (["sending-pin"], heard while sending) | `on_sent`, `on_limited`, `on_locked`, `on_failure` |
//! | `check_pin = "${pin}"` | `customer` ("${customer.id}") | `on_valid`, `on_invalid` (tries left), `on_exhausted`, `on_expired`, `on_locked` |
//! | `transfer = "${queue}"` | `headers = { X-Name = "${v}" }` (empty values left out) | `on_failure` (success ends the flow) |
//! | `hangup = ["goodbye"]` (played first; `[]` for none) | | |
//! | `goto = "step"`, or `"plan:step"` / `"plan:"` (another plan, its step or start; no way back) | | |
//! | `call = "plan"`, `"plan:step"` or `":step"` (a section of this plan): a sub-flow | | `next` (after its `return`; `${STEP.result}` = the returned value) |
//! | `return = "value"` (ends a sub-flow; with none, hangs up) | | |
//! | `http = "https://crm.example.com/c/${id}"` (scheme and host fixed; variables percent-encoded) | `method` ("GET" or "POST"), `body` (JSON; variables JSON-escaped), `headers`, `timeout` ("3s", at most 30s), `vars = { v = "/json/pointer" }`, `prompt` (played while waiting) | `on_ok`, `on_error` (`${STEP.status}`, `${STEP.reason}`) |
//! | `hours = ["mon-fri 08:00-18:00", "sat 09:00-13:00"]` (days `mon`..`sun`, ranges, lists or `*`; a range ending before it starts runs over midnight) | | `on_open`, `on_closed`, optional `on_holiday` (else closed): in `[dialplans] timezone` with its `holidays` file ([`calendar`]) |
//!
//! Sub-flows share the call's variables, language and verdict; a called plan's `[vars]` are
//! defaults. [`check::load_dir`] checks a set of plans together ([`check::check_links`]:
//! the plans and steps entered exist, languages match, no plans call each other in a
//! circle) and [`check::link`] gives each plan the others it reaches
//! ([`Dialplan::linked`](model::Dialplan::linked)), so a call keeps the set it started with
//! across reloads. Steps of another plan are named `plan:step` in logs, trails and events.
//!
//! Durations are strings: `"500ms"`, `"8s"`, `"2m"`. Prompts are one name or a list.
//! A collect's `pattern` is a regex the whole entry must match (anchor it: `^...$`); input
//! shorter than `min` or not matching is invalid, and each try that fails plays
//! `invalid_prompt` or `timeout_prompt` before the next.
//!
//! # Variables
//! `${caller}`, `${caller_name}`, `${dialed}`, `${call_id}` and `${language}` are set for
//! every call; `[vars]`, `collect` and `set` set others; a found customer sets
//! `${customer.id}`, `${customer.name}`, `${customer.mobile}`, `${customer.language}` and
//! `${customer.<field>}` for every other field of the record. Steps set `${STEP.outcome}`,
//! `send_pin` also `${STEP.minutes}`, `check_pin` `${STEP.tries_left}`, a failed `transfer`
//! `${STEP.status}` and `${STEP.reason}` (as does `http`), `call` `${STEP.result}`. Names
//! with a dot are ivrd's; a plan cannot assign them. A variable read but never set anywhere
//! (in the plan, or in the plans it calls or is called from) is a check problem; one that
//! is unset at run time reads as "" with a warning. `$$` is a literal `$`.
//!
//! # Modules
//! - [`model`]: the types; [`template`]: `${...}` and conditions; [`say`]: digits and numbers.
//! - [`parse`](mod@parse): text to model; [`check`](mod@check): the whole-plan checks, [`check::load`] for both.
//! - [`problem`]: `FILE:LINE:COLUMN: message (hint)`.
//! - [`run`](mod@run): the interpreter over [`crate::call::CallIo`] and [`services::FlowServices`].
//! - [`sim`]: a scripted caller on a virtual clock, with transcripts.
//! - [`graph`]: Graphviz and Mermaid pictures.
pub mod calendar;
pub mod check;
pub mod graph;
pub mod model;
pub mod parse;
pub mod problem;
pub mod run;
pub mod say;
pub mod services;
pub mod sim;
pub mod template;

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod scenarios;

pub use check::{
    CheckEnv, DialplanError, PromptDir, advisories, apply_site_vars, check, load, load_dir,
    load_file,
};
pub use graph::{to_dot, to_mermaid};
pub use model::{Dialplan, render_sms, select};
pub use parse::parse;
pub use problem::Problem;
pub use run::{FlowEvent, FlowResult, Observer, Outcome, run, run_observed};
pub use sim::{SentSms, SimCall, Simulation, format_transcript, sim_facts, simulate};
