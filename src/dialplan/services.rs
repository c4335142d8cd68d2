//! What a dialplan needs from outside the call: customers, PINs by SMS, and lookups over
//! HTTP (`http` steps), and nothing else.
//!
//! The interpreter sees only this trait (and [`crate::call::CallIo`] for the call itself), so
//! the daemon, `ivrd simulate` and tests can each hand it their own implementation: the daemon
//! wires it to SQLite and a real SMS provider, the simulator to SQLite and a capturing provider.
//! Outcomes are plain enums: every one of them must map to a transition in the dialplan.

pub use crate::http_lookup::{HttpError, HttpRequest, HttpResponse};
use std::collections::BTreeMap;
use std::future::Future;

/// A customer as a dialplan sees it (no PIN material, ever).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerRecord {
    pub id: String,
    pub name: String,
    /// The mobile number on file, E.164. The PIN goes only here.
    pub mobile: String,
    /// The customer's preferred prompt language, if recorded.
    pub language: Option<String>,
    /// Every field of the record by name (id, name, mobile, language, and any extra columns),
    /// for `${customer.<field>}` in dialplans.
    pub fields: BTreeMap<String, String>,
}

/// Which field a lookup matches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupBy {
    /// The customer identifier the caller typed.
    Id,
    /// The caller's own number (E.164 after normalisation).
    Mobile,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupOutcome {
    /// Exactly one enabled customer matched.
    Found(CustomerRecord),
    /// No enabled customer matched (a disabled one counts as not found: same prompts, same timing).
    NotFound,
    /// More than one matched: the flow must not guess.
    Ambiguous,
    /// The customer exists but is locked out after too many failures.
    LockedOut,
    /// The store failed; the flow takes its error transition.
    Error(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendPinOutcome {
    /// The provider accepted the SMS; the PIN is valid for `minutes`.
    Sent { minutes: u32 },
    /// Too many SMS for this customer or caller in the window.
    RateLimited,
    /// The customer is locked out.
    LockedOut,
    /// The fraud guard refused the send (the plan takes `on_limited`).
    Guarded(GuardKind),
    /// The provider refused or could not be reached.
    Failed(String),
}

/// Which kind of fraud guard refused a send, as the audit names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardKind {
    /// A global or per-country budget is spent.
    Budget,
    /// The destination's region is not allowed.
    Country,
    /// Sends to the destination's prefix are paused (they did not lead to verifications).
    Breaker,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckPinOutcome {
    Valid,
    /// Wrong PIN; the caller may try again.
    Invalid {
        tries_left: u32,
    },
    /// Wrong PIN and no tries left for this PIN (it is now void).
    Exhausted,
    /// The PIN expired (or none was sent).
    Expired,
    /// Too many failures for this customer: locked out (persisted).
    LockedOut,
}

/// What to send: the template is per language, with `{pin}`, `{minutes}` and `{name}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinRequest {
    pub customer_id: String,
    /// Who asks, for the per-caller SMS limit (never a destination): the identity a trusted
    /// peer asserts or vouches for, or the source address of an untrusted one
    /// ([`crate::call::CallFacts::limit_key`]).
    pub caller: String,
    pub language: String,
    /// PIN length, 4..=10.
    pub length: usize,
    /// The SMS text in `language`, with `{pin}`, `{minutes}` and `{name}`: from the plan the
    /// `send_pin` step is in (a sub-flow's own texts), `None` if it has none.
    pub template: Option<String>,
    /// For a decoy customer (`decoy` on `lookup_customer`): send nothing, but take as long
    /// and count against the same limits as a real send.
    pub decoy: bool,
    /// By SMS, or read out by a call to the number on file.
    pub channel: PinChannel,
}

/// How a `send_pin` step delivers the PIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PinChannel {
    #[default]
    Sms,
    /// A call to the customer's number on file reads it out (`[outbound]`): for a mobile that
    /// cannot take SMS. The step goes on as soon as the call is placed.
    Voice,
}

pub trait FlowServices: Send + Sync {
    fn lookup_customer(
        &self,
        by: LookupBy,
        value: &str,
    ) -> impl Future<Output = LookupOutcome> + Send;
    fn send_pin(&self, req: &PinRequest) -> impl Future<Output = SendPinOutcome> + Send;
    /// `decoy`: the customer is a decoy; the answer is never `Valid`, and otherwise follows
    /// the same tries and expiry as a real PIN.
    fn check_pin(
        &self,
        customer_id: &str,
        input: &str,
        decoy: bool,
    ) -> impl Future<Output = CheckPinOutcome> + Send;
    /// An `http` step's request (`step` names it, for the simulator's fakes). The
    /// interpreter bounds the wait by `req.timeout` as well.
    fn http(
        &self,
        step: &str,
        req: &HttpRequest,
    ) -> impl Future<Output = Result<HttpResponse, HttpError>> + Send;
}
