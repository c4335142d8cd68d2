//! The verification policy: how many tries, SMS and failures a customer or caller gets, and the
//! [`Verifier`] that applies it over the PIN vault and the store.
//!
//! PIN digests live in memory only (a restart voids outstanding PINs, which costs a caller one
//! re-send), but everything that limits an attacker is persisted: each wrong PIN, each lock-out
//! and its level, each SMS sent. So neither a restart nor a second ivrd process on the same
//! database file resets a limit. Waits grow: the n-th lock-out lasts `lockout_base * 2^(n-1)`,
//! capped at `lockout_max`; a successful verification resets the level.
//!
//! Sending the SMS is not done here: [`Verifier::prepare_pin`] checks the limits, records the send
//! and hands back the [`Pin`] for the caller to render and send (and [`Verifier::revoke_pin`] if
//! the provider refuses). Time is always a parameter: `Instant` for the in-memory PIN expiry,
//! `SystemTime` for what the store persists, so the simulator can drive both from a virtual clock.
//!
//! Store failures fail closed: a lock-out that cannot be read counts as a lock-out.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::dialplan::services::{CheckPinOutcome, GuardKind, SendPinOutcome};
use crate::store::{Admission, GuardQuery, GuardStop, SmsAdmission, Store, StoreError};
use crate::verify::guard::{Destination, GuardConfig, GuardRefusal, breaker_trips};
use crate::verify::pin::{Issue, MAX_TTL, Pin, PinCheck, PinError, PinVault};
use crate::verify::shared_pins::{SharedPinError, SharedVault};

/// The end of a lock-out that only an admin ends (NIST SP 800-63B's cap on failures in a
/// row): the end of the year 9999.
pub fn admin_lock_until() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(253_402_300_799)
}

/// The level of such a lock-out, which no lock-out schedule reaches.
pub const ADMIN_LOCK_LEVEL: u32 = u32::MAX;

/// How far back any limit or guard counts (the longest window, plus an hour to spare): rows
/// older than this may be purged without changing a decision.
pub fn purge_horizon(limits: &Limits, guard: &GuardConfig) -> Duration {
    let breaker = guard.breaker_window()
        + limits.pin_ttl()
        + Duration::from_secs(guard.breaker_grace_secs.unwrap_or(0));
    [
        limits.failure_window(),
        limits.sms_window(),
        Duration::from_secs(24 * 3600),
        breaker,
    ]
    .into_iter()
    .max()
    .unwrap_or_default()
        + Duration::from_secs(3600)
}

/// Refuses a PIN length out of range before anything is recorded.
fn check_length(length: usize) -> Result<(), SendRefusal> {
    if (crate::verify::pin::MIN_LENGTH..=crate::verify::pin::MAX_LENGTH).contains(&length) {
        Ok(())
    } else {
        Err(PinError::Length(length).into())
    }
}

/// The vault subject of a decoy: a NUL cannot be part of a customer id, so it never names one.
fn decoy_subject(subject: &str) -> String {
    format!("\u{0}decoy\u{0}{subject}")
}

/// Limits on PIN tries, failures, lock-outs and SMS, as configured (e.g. a `[limits]` table).
/// Every field is optional in the file; unknown fields are an error so a typo cannot silently
/// leave a default in force.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Wrong entries allowed on one PIN before it is void.
    pub wrong_tries_per_pin: u32,
    /// Wrong PINs (over any number of PINs) within `failure_window_secs` that lock the customer.
    pub failures_before_lockout: u32,
    /// The window over which wrong PINs are counted.
    pub failure_window_secs: u64,
    /// The first lock-out's length; each further one doubles it.
    pub lockout_base_secs: u64,
    /// The longest lock-out, however often the customer was locked.
    pub lockout_max_secs: u64,
    /// PIN SMS per customer within `sms_window_secs`.
    pub sms_per_customer: u32,
    /// PIN SMS requested by one calling number within `sms_window_secs`.
    pub sms_per_caller: u32,
    /// The window over which SMS are counted.
    pub sms_window_secs: u64,
    /// How long a PIN is valid (at most 600 s).
    pub pin_ttl_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            wrong_tries_per_pin: 3,
            failures_before_lockout: 10,
            failure_window_secs: 24 * 3600,
            lockout_base_secs: 15 * 60,
            lockout_max_secs: 24 * 3600,
            sms_per_customer: 3,
            sms_per_caller: 5,
            sms_window_secs: 10 * 60,
            pin_ttl_secs: 5 * 60,
        }
    }
}

/// Why a [`Limits`] is unusable.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    /// A count or window is zero, which would refuse everything or count nothing.
    #[error("limits: {0} must be at least 1")]
    Zero(&'static str),
    /// The PIN validity is outside 1..=600 seconds.
    #[error("limits: pin_ttl_secs must be between 1 and 600, not {0}")]
    PinTtl(u64),
    /// The first lock-out would be longer than the longest.
    #[error("limits: lockout_base_secs ({base}) must not exceed lockout_max_secs ({max})")]
    LockoutBase { base: u64, max: u64 },
    /// The PIN vault could not be created (no randomness for its key).
    #[error("could not set up the PIN vault: {0}")]
    Vault(#[from] PinError),
}

impl Limits {
    /// Checks that the limits make sense together.
    pub fn validate(&self) -> Result<(), LimitsError> {
        let nonzero = [
            ("wrong_tries_per_pin", u64::from(self.wrong_tries_per_pin)),
            (
                "failures_before_lockout",
                u64::from(self.failures_before_lockout),
            ),
            ("failure_window_secs", self.failure_window_secs),
            ("lockout_base_secs", self.lockout_base_secs),
            ("lockout_max_secs", self.lockout_max_secs),
            ("sms_per_customer", u64::from(self.sms_per_customer)),
            ("sms_per_caller", u64::from(self.sms_per_caller)),
            ("sms_window_secs", self.sms_window_secs),
        ];
        if let Some((name, _)) = nonzero.iter().find(|(_, v)| *v == 0) {
            return Err(LimitsError::Zero(name));
        }
        if self.pin_ttl_secs == 0 || Duration::from_secs(self.pin_ttl_secs) > MAX_TTL {
            return Err(LimitsError::PinTtl(self.pin_ttl_secs));
        }
        if self.lockout_base_secs > self.lockout_max_secs {
            return Err(LimitsError::LockoutBase {
                base: self.lockout_base_secs,
                max: self.lockout_max_secs,
            });
        }
        Ok(())
    }

    pub fn failure_window(&self) -> Duration {
        Duration::from_secs(self.failure_window_secs)
    }

    pub fn sms_window(&self) -> Duration {
        Duration::from_secs(self.sms_window_secs)
    }

    pub fn pin_ttl(&self) -> Duration {
        Duration::from_secs(self.pin_ttl_secs)
    }

    /// The PIN validity in whole minutes, rounded up, for the SMS text and the prompts.
    pub fn pin_minutes(&self) -> u32 {
        u32::try_from(self.pin_ttl_secs.div_ceil(60)).unwrap_or(u32::MAX)
    }

    /// How long the lock-out at `level` (1 = first) lasts: base * 2^(level-1), capped.
    pub fn lockout_for(&self, level: u32) -> Duration {
        let doublings = level.saturating_sub(1).min(63);
        let secs = self.lockout_base_secs.saturating_mul(1u64 << doublings);
        Duration::from_secs(secs.min(self.lockout_max_secs))
    }

    /// The most wrong PINs an attacker can try against one customer in a day under these
    /// limits, from any number of calling numbers, and in all (`cap`: the guard's wrong PINs
    /// in a row before an admin must unlock; 0 for none). The attacker is as fast as the
    /// limits allow: `wrong_tries_per_pin` tries on each of `sms_per_customer` PINs per SMS
    /// window, until `failures_before_lockout` lock the customer, then waits the lock-out
    /// out, and again, each lock-out longer.
    pub fn guesses_per_day(&self, cap: u32) -> u32 {
        const DAY: f64 = 86_400.0;
        let per_window = f64::from(self.wrong_tries_per_pin) * f64::from(self.sms_per_customer);
        if per_window == 0.0 {
            return 0;
        }
        let per_sec = per_window / self.sms_window_secs.max(1) as f64;
        let cap = if cap == 0 { u32::MAX } else { cap };
        let burst = self.failures_before_lockout.max(1);
        let (mut t, mut guesses, mut level) = (0.0f64, 0u32, 0u32);
        while t < DAY && guesses < cap {
            // One burst of failures up to the lock-out, at the SMS limit's pace.
            let n = burst.min(cap - guesses);
            let time = f64::from(n) / per_sec;
            if t + time > DAY {
                guesses += ((DAY - t) * per_sec) as u32;
                break;
            }
            t += time;
            guesses += n;
            level += 1;
            t += self.lockout_for(level).as_secs_f64();
        }
        guesses.min(cap)
    }
}

/// The chance that one of `guesses` random tries hits a uniform PIN of `length` digits.
pub fn guess_success(guesses: u32, length: usize) -> f64 {
    let p = 10f64.powi(-(length as i32));
    1.0 - (1.0 - p).powf(f64::from(guesses))
}

/// Why no PIN was issued.
#[derive(Debug, thiserror::Error)]
pub enum SendRefusal {
    /// The customer is locked out after too many wrong PINs.
    #[error("the customer is locked out")]
    LockedOut,
    /// The customer has had the maximum number of PIN SMS in the window.
    #[error("too many PIN messages for this customer in the window")]
    CustomerRateLimited,
    /// This calling number has requested the maximum number of PIN SMS in the window.
    #[error("too many PIN requests from this calling number in the window")]
    CallerRateLimited,
    /// The store could not check or record the limits; no PIN is sent unchecked.
    #[error("could not check or record the limits: {0}")]
    Store(#[from] StoreError),
    /// The PIN could not be generated (bad length or no randomness).
    #[error("could not create a PIN: {0}")]
    Pin(#[from] PinError),
    /// The fraud guard refused the send.
    #[error("refused by the fraud guard ({})", .0.as_str())]
    Guard(GuardRefusal),
}

impl SendRefusal {
    /// The dialplan's view of this refusal.
    pub fn to_outcome(&self) -> SendPinOutcome {
        match self {
            SendRefusal::LockedOut => SendPinOutcome::LockedOut,
            SendRefusal::CustomerRateLimited | SendRefusal::CallerRateLimited => {
                SendPinOutcome::RateLimited
            }
            SendRefusal::Guard(g) => SendPinOutcome::Guarded(match g {
                GuardRefusal::HourBudget
                | GuardRefusal::DayBudget
                | GuardRefusal::CountryBudget => GuardKind::Budget,
                GuardRefusal::Country => GuardKind::Country,
                GuardRefusal::Breaker => GuardKind::Breaker,
            }),
            SendRefusal::Store(_) | SendRefusal::Pin(_) => SendPinOutcome::Failed(self.to_string()),
        }
    }
}

/// Whom a verification through the HTTP API is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiSubject<'a> {
    /// The customer whose mobile number it is (their id).
    Customer(&'a str),
    /// A number that is no customer's: `tel:+E164`.
    Number(&'a str),
}

impl ApiSubject<'_> {
    /// The key its PIN, sends and failures are kept under.
    pub fn key(&self) -> &str {
        match self {
            ApiSubject::Customer(k) | ApiSubject::Number(k) => k,
        }
    }
}

/// Applies [`Limits`] over a [`PinVault`] and the [`Store`]. `Send + Sync`; share it in an `Arc`.
#[derive(Debug)]
pub struct Verifier {
    store: Arc<Store>,
    limits: Limits,
    guard: GuardConfig,
    /// Shared with the verifier of the configuration before a reload when the PINs' rules
    /// did not change ([`Verifier::keeping_pins_of`]).
    pins: Pins,
}

/// Where outstanding PINs live: this process's memory, or the database every node shares
/// (`[store] pin_key_file`), where any node can check or resend a code another one sent.
#[derive(Debug, Clone)]
enum Pins {
    Local(Arc<Mutex<PinVault>>),
    Shared(Arc<SharedVault>),
}

/// The in-memory vault. Its operations leave it consistent at every step; a panic elsewhere
/// while the lock was held does not make its contents wrong.
fn lock(vault: &Mutex<PinVault>) -> MutexGuard<'_, PinVault> {
    vault.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pins {
    fn issue_or_resend(
        &self,
        subject: &str,
        length: usize,
        now: Instant,
        wall: SystemTime,
    ) -> Result<Pin, SendRefusal> {
        match self {
            Pins::Shared(v) => v
                .issue_or_resend(subject, length, wall)
                .map_err(|e| match e {
                    SharedPinError::Pin(e) => e.into(),
                    SharedPinError::Store(e) => e.into(),
                }),
            Pins::Local(v) => Ok(lock(v).issue_or_resend(subject, length, now)?),
        }
    }

    /// A check; a shared vault that cannot be read fails closed (no PIN to match).
    fn check(&self, subject: &str, input: &str, now: Instant, wall: SystemTime) -> PinCheck {
        match self {
            Pins::Shared(v) => v.check(subject, input, wall).unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot read the shared PINs; the check fails");
                PinCheck::NoPin
            }),
            Pins::Local(v) => lock(v).check(subject, input, now),
        }
    }

    fn revoke(&self, subject: &str) -> bool {
        match self {
            Pins::Shared(v) => v.revoke(subject).unwrap_or_else(|e| {
                // It expires by itself within the PIN's validity.
                tracing::warn!(error = %e, "cannot void a shared PIN");
                false
            }),
            Pins::Local(v) => lock(v).revoke(subject),
        }
    }
}

impl Verifier {
    /// Validates `limits` and creates the vault (with a fresh random key).
    pub fn new(store: Arc<Store>, limits: Limits) -> Result<Verifier, LimitsError> {
        limits.validate()?;
        let vault = PinVault::new(limits.pin_ttl(), limits.wrong_tries_per_pin)?;
        Ok(Verifier {
            store,
            limits,
            guard: GuardConfig::default(),
            pins: Pins::Local(Arc::new(Mutex::new(vault))),
        })
    }

    /// Keeps outstanding PINs in the database, under keys derived from `secret` (the same on
    /// every node), instead of in this process: any node checks or resends any node's code.
    pub fn with_shared_pins(mut self, secret: &[u8]) -> Result<Verifier, LimitsError> {
        let vault = SharedVault::new(
            secret,
            self.limits.pin_ttl(),
            self.limits.wrong_tries_per_pin,
            self.store.clone(),
        )?;
        self.pins = Pins::Shared(Arc::new(vault));
        Ok(self)
    }

    /// Keeps the outstanding PINs of `old` (the verifier before a reload) when their validity
    /// and tries are the same: a code sent before a reload (a pending API verification, a
    /// caller's second call) is still good after it.
    pub fn keeping_pins_of(mut self, old: &Verifier) -> Verifier {
        // A shared vault keeps its PINs in the database anyway.
        if self.limits.pin_ttl() == old.limits.pin_ttl()
            && self.limits.wrong_tries_per_pin == old.limits.wrong_tries_per_pin
            && let (Pins::Local(_), Pins::Local(_)) = (&self.pins, &old.pins)
        {
            self.pins = old.pins.clone();
        }
        self
    }

    /// The fraud guard's settings (the defaults otherwise).
    pub fn with_guard(mut self, guard: GuardConfig) -> Verifier {
        self.guard = guard;
        self
    }

    pub fn guard(&self) -> &GuardConfig {
        &self.guard
    }

    /// The guard's question for a send to `dest` (or, for a decoy, to nowhere: budgets only).
    fn guard_query<'a>(
        &'a self,
        dest: Option<&'a Destination>,
        trips: &'a dyn Fn(u32, u32) -> bool,
    ) -> GuardQuery<'a> {
        let g = &self.guard;
        GuardQuery {
            prefix: dest.map_or("", |d| d.prefix.as_str()),
            code: dest.map_or("", |d| d.calling_code.as_str()),
            per_hour: g.sms_per_hour,
            per_day: g.sms_per_day,
            code_per_hour: dest.and_then(|d| g.country_budget(d)),
            breaker_window: if g.breaker_min_sends > 0 {
                g.breaker_window()
            } else {
                Duration::ZERO
            },
            breaker_pause: g.breaker_pause(),
            breaker_grace: g
                .breaker_grace_secs
                .map_or(self.limits.pin_ttl(), Duration::from_secs),
            trips,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Whether the customer is locked out at `now`.
    pub fn is_locked(&self, customer_id: &str, now: SystemTime) -> Result<bool, StoreError> {
        Ok(self
            .store
            .lockout(customer_id)?
            .is_some_and(|(until, _)| until > now))
    }

    /// Checks the lock-out and both SMS limits, records the send and issues a PIN of `length`
    /// digits: the outstanding one again while it is valid (a resend counts as a send), else a
    /// new one. `customer_id` must exist in the store (the send is
    /// recorded against it). The caller sends the PIN; if sending fails, call
    /// [`Verifier::send_failed`] (or [`Verifier::refund_send`]). The send stays counted either way: a failing provider must not
    /// become a way around the rate limit.
    pub fn prepare_pin(
        &self,
        customer_id: &str,
        caller: &str,
        length: usize,
        now: Instant,
        wall: SystemTime,
    ) -> Result<Pin, SendRefusal> {
        let mobile = self
            .store
            .find_customer(customer_id)?
            .map(|c| c.mobile)
            .unwrap_or_default();
        self.prepare_pin_to(customer_id, &mobile, caller, length, now, wall)
    }

    /// [`Verifier::prepare_pin`] for a customer whose number on file (`mobile`, where the SMS
    /// goes and what the fraud guard judges) the caller has just read.
    pub fn prepare_pin_to(
        &self,
        customer_id: &str,
        mobile: &str,
        caller: &str,
        length: usize,
        now: Instant,
        wall: SystemTime,
    ) -> Result<Pin, SendRefusal> {
        check_length(length)?;
        if self.is_locked(customer_id, wall)? {
            return Err(SendRefusal::LockedOut);
        }
        let dest = Destination::of(mobile, self.guard.breaker_prefix_digits);
        let Some(dest) = dest.filter(|d| self.guard.allows(d)) else {
            tracing::warn!(
                guard = GuardRefusal::Country.as_str(),
                region = Destination::of(mobile, 0)
                    .and_then(|d| d.region)
                    .unwrap_or_default(),
                "fraud guard refused a PIN SMS"
            );
            return Err(SendRefusal::Guard(GuardRefusal::Country));
        };
        self.admit_send(false, customer_id, caller, wall, Some(&dest))?;
        self.pins.issue_or_resend(customer_id, length, now, wall)
    }

    /// Admits one send of `subject` (a customer, or a decoy's number) under the SMS limits
    /// and the fraud guard, recording it; a decoy, with no destination, meets the budgets only.
    fn admit_send(
        &self,
        decoy: bool,
        subject: &str,
        caller: &str,
        wall: SystemTime,
        dest: Option<&Destination>,
    ) -> Result<(), SendRefusal> {
        self.admit(
            decoy,
            !decoy,
            subject,
            caller,
            self.limits.sms_per_caller,
            wall,
            dest,
        )
    }

    /// [`Verifier::admit_send`] with all its knobs: `apart` counts the subject's sends in
    /// the table of subjects that are no customer, `goes_out` spends the guard's budgets,
    /// `per_caller` is the limit on whoever asks (a caller, an API key).
    #[allow(clippy::too_many_arguments)]
    fn admit(
        &self,
        apart: bool,
        goes_out: bool,
        subject: &str,
        caller: &str,
        per_caller: u32,
        wall: SystemTime,
        dest: Option<&Destination>,
    ) -> Result<(), SendRefusal> {
        let trips = |sends, verified| dest.is_some() && breaker_trips(&self.guard, sends, verified);
        let guard = self.guard_query(dest, &trips);
        let admission = self.store.admit(&Admission {
            decoy: apart,
            goes_out,
            subject,
            caller,
            at: wall,
            since: wall.checked_sub(self.limits.sms_window()).unwrap_or(wall),
            per_subject: self.limits.sms_per_customer,
            per_caller,
            guard: Some(&guard),
        })?;
        self.admitted(admission, dest)
    }

    /// An admission's verdict as a refusal (logged when the guard refused).
    fn admitted(
        &self,
        admission: SmsAdmission,
        dest: Option<&Destination>,
    ) -> Result<(), SendRefusal> {
        let stop = match admission {
            SmsAdmission::Recorded => return Ok(()),
            SmsAdmission::CustomerLimit => return Err(SendRefusal::CustomerRateLimited),
            SmsAdmission::CallerLimit => return Err(SendRefusal::CallerRateLimited),
            SmsAdmission::LockedOut => return Err(SendRefusal::LockedOut),
            SmsAdmission::Guard(stop) => stop,
        };
        let refusal = match stop {
            GuardStop::HourBudget => GuardRefusal::HourBudget,
            GuardStop::DayBudget => GuardRefusal::DayBudget,
            GuardStop::CodeBudget => GuardRefusal::CountryBudget,
            GuardStop::Breaker => GuardRefusal::Breaker,
        };
        tracing::warn!(
            guard = refusal.as_str(),
            prefix = dest.map_or("", |d| d.prefix.as_str()),
            "fraud guard refused a PIN SMS"
        );
        Err(SendRefusal::Guard(refusal))
    }

    /// A send for a decoy (an id that is no usable customer, see `decoy` on
    /// `lookup_customer`): nothing goes out, but it is admitted against the same limits as a
    /// real send (the caller's limit counts both kinds) and a PIN nobody knows is kept under
    /// the decoy's subject, so that tries, expiry and resends run as for a customer.
    pub fn prepare_decoy(
        &self,
        subject: &str,
        caller: &str,
        length: usize,
        now: Instant,
        wall: SystemTime,
    ) -> Result<(), SendRefusal> {
        check_length(length)?;
        // When a budget is spent, decoys are refused too (or the refusal would tell real ids).
        self.admit_send(true, subject, caller, wall, None)?;
        self.pins
            .issue_or_resend(&decoy_subject(subject), length, now, wall)?;
        Ok(())
    }

    /// A PIN check for a decoy: never valid; wrong tries, expiry and the lock-out's early end
    /// of the tries as for a real PIN (the failures are persisted under the decoy's subject).
    pub fn check_decoy(
        &self,
        subject: &str,
        input: &str,
        now: Instant,
        wall: SystemTime,
    ) -> CheckPinOutcome {
        let check = self.pins.check(&decoy_subject(subject), input, now, wall);
        if matches!(check, PinCheck::Expired | PinCheck::NoPin) {
            return CheckPinOutcome::Expired;
        }
        // Every guess is wrong (nobody was told the decoy's PIN; a lucky one is one more wrong
        // one, and the vault has already voided it), and counted as a customer's is: the one
        // that reaches `failures_before_lockout` ends the tries early, as a lock-out does. A
        // customer then locked out is a decoy itself, so the calls after it sound alike too.
        let since = wall
            .checked_sub(self.limits.failure_window())
            .unwrap_or(wall);
        match self.store.record_decoy_failure(subject, wall, since) {
            Ok(n) if n >= self.limits.failures_before_lockout => {
                if let Err(e) = self.store.clear_decoy_failures(subject) {
                    tracing::warn!(error = %e, "cannot clear a decoy's failures");
                }
                self.pins.revoke(&decoy_subject(subject));
                return CheckPinOutcome::Exhausted;
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot persist a decoy's wrong PIN"),
        }
        match check {
            PinCheck::Invalid { tries_left } => CheckPinOutcome::Invalid { tries_left },
            _ => CheckPinOutcome::Exhausted,
        }
    }

    /// A code for a verification through the HTTP API: the lock-out, the destination guard,
    /// the SMS limits (per number or customer as for the IVR, per API key in `caller` up to
    /// `per_key` in the SMS window) and the budgets, then the outstanding PIN again while it
    /// is valid or a new one. A customer's number shares the customer's limits, lock-out
    /// and PIN with the IVR.
    #[allow(clippy::too_many_arguments)]
    pub fn prepare_api_pin(
        &self,
        subject: &ApiSubject,
        mobile: &str,
        caller: &str,
        per_key: u32,
        length: usize,
        now: Instant,
        wall: SystemTime,
    ) -> Result<Pin, SendRefusal> {
        check_length(length)?;
        if self.api_locked(subject, wall)? {
            return Err(SendRefusal::LockedOut);
        }
        let dest = Destination::of(mobile, self.guard.breaker_prefix_digits);
        let Some(dest) = dest.filter(|d| self.guard.allows(d)) else {
            return Err(SendRefusal::Guard(GuardRefusal::Country));
        };
        let apart = matches!(subject, ApiSubject::Number(_));
        self.admit(
            apart,
            true,
            subject.key(),
            caller,
            per_key,
            wall,
            Some(&dest),
        )?;
        self.pins.issue_or_resend(subject.key(), length, now, wall)
    }

    /// Whether the subject may not have codes now: a customer's lock-out, or, for a number,
    /// `failures_before_lockout` wrong codes within the failure window.
    pub fn api_locked(&self, subject: &ApiSubject, wall: SystemTime) -> Result<bool, StoreError> {
        match subject {
            ApiSubject::Customer(id) => self.is_locked(id, wall),
            ApiSubject::Number(key) => {
                let since = wall
                    .checked_sub(self.limits.failure_window())
                    .unwrap_or(wall);
                Ok(self.store.decoy_failures_since(key, since)?
                    >= self.limits.failures_before_lockout)
            }
        }
    }

    /// Checks a code of a verification through the HTTP API: a customer's as
    /// [`Verifier::check_pin`] does (their failures and lock-out are the IVR's); a number's
    /// against the vault, its wrong codes persisted, the one that reaches
    /// `failures_before_lockout` ending its tries (and its sends for the window).
    pub fn check_api_pin(
        &self,
        subject: &ApiSubject,
        mobile: &str,
        input: &str,
        now: Instant,
        wall: SystemTime,
    ) -> CheckPinOutcome {
        let key = match subject {
            ApiSubject::Customer(id) => return self.check_pin(id, input, now, wall),
            ApiSubject::Number(key) => *key,
        };
        match self.api_locked(subject, wall) {
            Ok(false) => {}
            Ok(true) => {
                self.pins.revoke(key);
                return CheckPinOutcome::LockedOut;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read a number's failures; refusing the check");
                return CheckPinOutcome::LockedOut;
            }
        }
        let check = self.pins.check(key, input, now, wall);
        match check {
            PinCheck::Valid => {
                let cleared = self
                    .store
                    .clear_decoy_failures(key)
                    .map(drop)
                    .and_then(|()| {
                        match Destination::of(mobile, self.guard.breaker_prefix_digits) {
                            Some(dest) => self.store.record_verified(&dest.prefix, wall),
                            None => Ok(()),
                        }
                    });
                if let Err(e) = cleared {
                    tracing::warn!(error = %e, "cannot clear a number's failures after a valid code");
                }
                CheckPinOutcome::Valid
            }
            PinCheck::Invalid { .. } | PinCheck::Exhausted => {
                let since = wall
                    .checked_sub(self.limits.failure_window())
                    .unwrap_or(wall);
                match self.store.record_decoy_failure(key, wall, since) {
                    Ok(n) if n >= self.limits.failures_before_lockout => {
                        self.pins.revoke(key);
                        return CheckPinOutcome::Exhausted;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "cannot persist a wrong code"),
                }
                match check {
                    PinCheck::Invalid { tries_left } => CheckPinOutcome::Invalid { tries_left },
                    _ => CheckPinOutcome::Exhausted,
                }
            }
            PinCheck::Expired | PinCheck::NoPin => CheckPinOutcome::Expired,
        }
    }

    /// Voids the customer's outstanding PIN (e.g. the SMS could not be sent).
    pub fn revoke_pin(&self, customer_id: &str) -> bool {
        self.pins.revoke(customer_id)
    }

    /// The SMS carrying `pin` failed: a new PIN is void (nobody can know it); a resent one
    /// stays, since the first SMS delivered it and a caller may be typing it now.
    pub fn send_failed(&self, customer_id: &str, pin: &Pin) {
        if pin.issue() == Issue::New {
            self.pins.revoke(customer_id);
        }
    }

    /// The send [`Verifier::prepare_pin`] recorded at `wall` did not go out at all (the
    /// provider refused it or could not be reached): void the PIN and take the send back, so
    /// that an outage or a bad number costs the customer nothing. A send that may have gone
    /// out (a timeout after the request left) is not refunded.
    pub fn refund_send(
        &self,
        customer_id: &str,
        caller: &str,
        pin: &Pin,
        wall: SystemTime,
    ) -> Result<bool, StoreError> {
        self.send_failed(customer_id, pin);
        self.store.refund_sms(customer_id, caller, wall)
    }

    /// Checks an entered PIN. A wrong PIN is persisted as a failure; reaching
    /// `failures_before_lockout` within the window locks the customer (persisted, growing waits)
    /// and voids the PIN; a right PIN clears the failures and resets the lock-out level.
    pub fn check_pin(
        &self,
        customer_id: &str,
        input: &str,
        now: Instant,
        wall: SystemTime,
    ) -> CheckPinOutcome {
        match self.is_locked(customer_id, wall) {
            Ok(false) => {}
            Ok(true) => {
                self.pins.revoke(customer_id);
                return CheckPinOutcome::LockedOut;
            }
            Err(e) => {
                // Fail closed: without the lock-out state we cannot tell whether to let a guess in.
                tracing::error!(customer = customer_id, error = %e, "cannot read lock-out; refusing the PIN check");
                return CheckPinOutcome::LockedOut;
            }
        }
        let check = self.pins.check(customer_id, input, now, wall);
        match check {
            PinCheck::Valid => {
                if let Err(e) = self
                    .store
                    .clear_failures(customer_id)
                    .and_then(|()| self.store.clear_lockout(customer_id).map(drop))
                    .and_then(|()| self.store.reset_failures_in_a_row(customer_id))
                    .and_then(|()| self.record_verified(customer_id, wall))
                {
                    // The PIN was right; the caller is verified. Stale failures only make a
                    // later lock-out come sooner, so log and carry on.
                    tracing::warn!(customer = customer_id, error = %e, "cannot clear failures after a valid PIN");
                }
                CheckPinOutcome::Valid
            }
            PinCheck::Invalid { .. } | PinCheck::Exhausted => {
                match self.register_failure(customer_id, wall) {
                    // This wrong PIN locked the customer: the PIN is void and the caller's
                    // tries are over ("exhausted", so the call is audited as a wrong PIN);
                    // the lock-out is what the next call meets (LockedOut at lookup).
                    Ok(true) => {
                        self.pins.revoke(customer_id);
                        return CheckPinOutcome::Exhausted;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        // The in-memory tries still bound guessing on this PIN.
                        tracing::error!(customer = customer_id, error = %e, "cannot persist a PIN failure");
                    }
                }
                match check {
                    PinCheck::Invalid { tries_left } => CheckPinOutcome::Invalid { tries_left },
                    _ => CheckPinOutcome::Exhausted,
                }
            }
            // No PIN to guess at, so nothing to count.
            PinCheck::Expired | PinCheck::NoPin => CheckPinOutcome::Expired,
        }
    }

    /// A verified PIN for the breaker of the prefix it was sent to. The number is read again
    /// (one indexed read per verified call): the PIN does not carry where it went.
    fn record_verified(&self, customer_id: &str, wall: SystemTime) -> Result<(), StoreError> {
        if let Some(c) = self.store.find_customer(customer_id)?
            && let Some(dest) = Destination::of(&c.mobile, self.guard.breaker_prefix_digits)
        {
            self.store.record_verified(&dest.prefix, wall)?;
        }
        Ok(())
    }

    /// The customer's wrong PINs in a row reached the cap: locked until an admin unlocks
    /// (`ivrd customers unlock`), whatever the lock-out levels say.
    fn over_the_cap(&self, customer_id: &str) -> Result<bool, StoreError> {
        let cap = self.guard.max_consecutive_failures;
        let in_a_row = self.store.bump_failures_in_a_row(customer_id)?;
        if cap == 0 || in_a_row < cap {
            return Ok(false);
        }
        self.store
            .lock(customer_id, admin_lock_until(), ADMIN_LOCK_LEVEL)?;
        tracing::warn!(
            customer = customer_id,
            in_a_row,
            "customer locked until an admin unlocks them: {in_a_row} wrong PINs in a row"
        );
        Ok(true)
    }

    fn register_failure(&self, customer_id: &str, wall: SystemTime) -> Result<bool, StoreError> {
        if self.over_the_cap(customer_id)? {
            return Ok(true);
        }
        let since = wall
            .checked_sub(self.limits.failure_window())
            .unwrap_or(wall);
        // One transaction: the failure, the count, and the lock-out it may make. The lock-out
        // uses these failures up: after it ends the customer gets a fresh set of tries, and
        // the level (not the old failures) makes the next lock-out longer.
        let Some((level, failures)) = self.store.record_failure_and_lock(
            customer_id,
            wall,
            since,
            self.limits.failures_before_lockout,
            |level| self.limits.lockout_for(level),
        )?
        else {
            return Ok(false);
        };
        tracing::warn!(
            customer = customer_id,
            level,
            minutes = self.limits.lockout_for(level).as_secs() / 60,
            "customer locked out after {failures} wrong PINs"
        );
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewCustomer;
    use std::path::Path;
    use std::time::UNIX_EPOCH;

    const CALLER: &str = "+4930111111";

    static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

    fn open(path: &Path) -> Arc<Store> {
        Arc::new(Store::open(path).unwrap())
    }

    /// A customer `id` with a German mobile.
    fn add_test_customer(store: &Store, id: &str) {
        store
            .add_customer(&NewCustomer {
                id: id.into(),
                name: "Test".into(),
                mobile: "+491701234567".into(),
                ..Default::default()
            })
            .unwrap();
    }

    fn setup(limits: Limits) -> (tempfile::TempDir, Verifier) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("ivrd.sqlite"));
        for id in ["c1", "c2"] {
            add_test_customer(&store, id);
        }
        (dir, Verifier::new(store, limits).unwrap())
    }

    fn wall(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn wrong(pin: &Pin) -> String {
        pin.expose()
            .bytes()
            .map(|b| char::from(b'0' + (b - b'0' + 1) % 10))
            .collect()
    }

    #[test]
    fn defaults_are_the_documented_policy() {
        let l = Limits::default();
        assert_eq!(l.wrong_tries_per_pin, 3);
        assert_eq!(l.failures_before_lockout, 10);
        assert_eq!(l.failure_window(), Duration::from_secs(86_400));
        assert_eq!(l.lockout_for(1), Duration::from_secs(900));
        assert_eq!(l.sms_per_customer, 3);
        assert_eq!(l.sms_per_caller, 5);
        assert_eq!(l.sms_window(), Duration::from_secs(600));
        assert_eq!(l.pin_ttl(), Duration::from_secs(300));
        assert_eq!(l.pin_minutes(), 5);
        l.validate().unwrap();
    }

    #[test]
    fn lockouts_double_per_level_up_to_the_cap() {
        let l = Limits::default();
        let mins: Vec<u64> = (1..=9).map(|n| l.lockout_for(n).as_secs() / 60).collect();
        assert_eq!(mins, [15, 30, 60, 120, 240, 480, 960, 1440, 1440]);
        assert_eq!(l.lockout_for(u32::MAX), Duration::from_secs(86_400));
        assert_eq!(l.lockout_for(0), Duration::from_secs(900));
    }

    #[test]
    fn limits_deserialize_with_defaults_and_refuse_unknown_fields() {
        let l: Limits = toml::from_str("sms_per_caller = 2\npin_ttl_secs = 120").unwrap();
        assert_eq!(l.sms_per_caller, 2);
        assert_eq!(l.pin_minutes(), 2);
        assert_eq!(l.sms_per_customer, 3);
        let err = toml::from_str::<Limits>("sms_per_callr = 2").unwrap_err();
        assert!(err.to_string().contains("sms_per_callr"), "{err}");
    }

    #[test]
    fn invalid_limits_are_refused() {
        let bad = |l: Limits| l.validate().unwrap_err().to_string();
        assert_eq!(
            bad(Limits {
                sms_per_caller: 0,
                ..Default::default()
            }),
            "limits: sms_per_caller must be at least 1"
        );
        assert!(
            bad(Limits {
                pin_ttl_secs: 601,
                ..Default::default()
            })
            .contains("between 1 and 600")
        );
        assert!(
            bad(Limits {
                lockout_base_secs: 100_000,
                ..Default::default()
            })
            .contains("must not exceed")
        );
        Limits {
            pin_ttl_secs: 600,
            ..Default::default()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn valid_pin_verifies_once() {
        let (_dir, v) = setup(Limits::default());
        let t = Instant::now();
        let pin = v.prepare_pin("c1", CALLER, 6, t, wall(0)).unwrap();
        assert_eq!(
            v.check_pin("c1", pin.expose(), t, wall(1)),
            CheckPinOutcome::Valid
        );
        assert_eq!(
            v.check_pin("c1", pin.expose(), t, wall(2)),
            CheckPinOutcome::Expired,
            "single use"
        );
    }

    #[test]
    fn wrong_pins_count_down_and_are_persisted() {
        let (_dir, v) = setup(Limits::default());
        let t = Instant::now();
        let pin = v.prepare_pin("c1", CALLER, 4, t, wall(0)).unwrap();
        let bad = wrong(&pin);
        assert_eq!(
            v.check_pin("c1", &bad, t, wall(1)),
            CheckPinOutcome::Invalid { tries_left: 2 }
        );
        assert_eq!(
            v.check_pin("c1", &bad, t, wall(2)),
            CheckPinOutcome::Invalid { tries_left: 1 }
        );
        assert_eq!(
            v.check_pin("c1", &bad, t, wall(3)),
            CheckPinOutcome::Exhausted
        );
        assert_eq!(v.store().failures_since("c1", wall(0)).unwrap(), 3);
        // The PIN is void, and a check with no PIN to guess at is not a failure.
        assert_eq!(
            v.check_pin("c1", pin.expose(), t, wall(4)),
            CheckPinOutcome::Expired
        );
        assert_eq!(v.store().failures_since("c1", wall(0)).unwrap(), 3);
    }

    #[test]
    fn success_clears_failures_and_the_lockout_level() {
        let (_dir, v) = setup(Limits::default());
        let t = Instant::now();
        v.store().lock("c1", wall(0), 3).unwrap(); // an old, ended lock-out
        let pin = v.prepare_pin("c1", CALLER, 6, t, wall(10)).unwrap();
        v.check_pin("c1", &wrong(&pin), t, wall(11));
        assert_eq!(v.store().failures_since("c1", wall(0)).unwrap(), 1);
        assert_eq!(
            v.check_pin("c1", pin.expose(), t, wall(12)),
            CheckPinOutcome::Valid
        );
        assert_eq!(v.store().failures_since("c1", wall(0)).unwrap(), 0);
        assert_eq!(v.store().lockout("c1").unwrap(), None);
    }

    #[test]
    fn expiry_uses_the_given_instant() {
        let (_dir, v) = setup(Limits {
            pin_ttl_secs: 60,
            ..Default::default()
        });
        let t = Instant::now();
        let pin = v.prepare_pin("c1", CALLER, 6, t, wall(0)).unwrap();
        assert_eq!(
            v.check_pin("c1", pin.expose(), t + Duration::from_secs(60), wall(60)),
            CheckPinOutcome::Expired
        );
        assert_eq!(v.store().failures_since("c1", wall(0)).unwrap(), 0);
    }

    /// Drives `n` wrong PINs for c1 (re-sending as each PIN is exhausted), starting at `start`
    /// seconds, one per second; returns the outcome of the last check.
    fn fail_n(v: &Verifier, n: u32, start: u64, caller_seed: u64) -> CheckPinOutcome {
        // The monotonic clock follows the wall clock, so a PIN from an earlier batch has
        // expired (rather than being sent again) when the batches are minutes apart.
        let t = *EPOCH + Duration::from_secs(start);
        let mut pin: Option<Pin> = None;
        let mut outcome = CheckPinOutcome::Expired;
        for i in 0..u64::from(n) {
            if pin.is_none() {
                // A different caller each time so the per-caller SMS limit stays out of the way.
                let caller = format!("+49301{:06}", caller_seed * 1000 + i);
                pin = Some(v.prepare_pin("c1", &caller, 6, t, wall(start + i)).unwrap());
            }
            outcome = v.check_pin("c1", &wrong(pin.as_ref().unwrap()), t, wall(start + i));
            if outcome != (CheckPinOutcome::Invalid { tries_left: 1 })
                && outcome != (CheckPinOutcome::Invalid { tries_left: 2 })
            {
                pin = None;
            }
        }
        outcome
    }

    fn generous_sms() -> Limits {
        Limits {
            sms_per_customer: 1000,
            sms_per_caller: 1000,
            ..Default::default()
        }
    }

    #[test]
    fn ten_failures_in_the_window_lock_the_customer_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ivrd.sqlite");
        {
            let store = open(&path);
            add_test_customer(&store, "c1");
            let v = Verifier::new(store, generous_sms()).unwrap();
            assert_eq!(fail_n(&v, 9, 0, 1), CheckPinOutcome::Exhausted);
            assert!(!v.is_locked("c1", wall(9)).unwrap());
            // The failure that locks ends this PIN's tries; the lock-out is what comes next.
            assert_eq!(fail_n(&v, 1, 9, 2), CheckPinOutcome::Exhausted);
            assert!(v.is_locked("c1", wall(10)).unwrap());
        }
        // "Restart": a new store on the same file and a new verifier (new vault, new key).
        let v = Verifier::new(open(&path), generous_sms()).unwrap();
        assert!(v.is_locked("c1", wall(10)).unwrap());
        let (until, level) = v.store().lockout("c1").unwrap().unwrap();
        assert_eq!(level, 1);
        assert_eq!(until, wall(9) + Duration::from_secs(900));
        assert!(matches!(
            v.prepare_pin("c1", CALLER, 6, Instant::now(), wall(100)),
            Err(SendRefusal::LockedOut)
        ));
        assert_eq!(
            v.check_pin("c1", "123456", Instant::now(), wall(100)),
            CheckPinOutcome::LockedOut
        );
        // Over at `until`; then the customer may ask for a PIN again.
        assert!(!v.is_locked("c1", until).unwrap());
        assert!(
            v.prepare_pin("c1", CALLER, 6, Instant::now(), until)
                .is_ok()
        );
    }

    #[test]
    fn lockout_revokes_the_outstanding_pin() {
        let (_dir, v) = setup(Limits {
            failures_before_lockout: 2,
            ..Default::default()
        });
        let t = Instant::now();
        let pin = v.prepare_pin("c1", CALLER, 6, t, wall(0)).unwrap();
        assert_eq!(
            v.check_pin("c1", &wrong(&pin), t, wall(1)),
            CheckPinOutcome::Invalid { tries_left: 2 }
        );
        assert_eq!(
            v.check_pin("c1", &wrong(&pin), t, wall(2)),
            CheckPinOutcome::Exhausted
        );
        // Locked now: even the right PIN is refused as locked out.
        assert_eq!(
            v.check_pin("c1", pin.expose(), t, wall(3)),
            CheckPinOutcome::LockedOut
        );
        // Even after the lock-out ends, the PIN from before it is void.
        let after = wall(2) + Duration::from_secs(900);
        assert_eq!(
            v.check_pin("c1", pin.expose(), t, after),
            CheckPinOutcome::Expired
        );
    }

    #[test]
    fn repeated_lockouts_grow_and_failures_outside_the_window_do_not_count() {
        let (_dir, v) = setup(Limits {
            failures_before_lockout: 3,
            failure_window_secs: 3600,
            ..generous_sms()
        });
        // Two failures, then an hour and more of quiet: they fall out of the window.
        fail_n(&v, 2, 0, 1);
        assert_eq!(
            fail_n(&v, 2, 4000, 2),
            CheckPinOutcome::Invalid { tries_left: 1 }
        );
        assert!(!v.is_locked("c1", wall(4002)).unwrap());
        // The third within the window locks (level 1, 15 min).
        assert_eq!(fail_n(&v, 1, 4002, 3), CheckPinOutcome::Exhausted);
        assert_eq!(
            v.store().lockout("c1").unwrap(),
            Some((wall(4002) + Duration::from_secs(900), 1))
        );
        // After it ends, three more failures lock at level 2 for twice as long.
        let start = 4002 + 900;
        assert_eq!(fail_n(&v, 3, start, 4), CheckPinOutcome::Exhausted);
        assert_eq!(
            v.store().lockout("c1").unwrap(),
            Some((wall(start + 2) + Duration::from_secs(1800), 2))
        );
        // The other customer is unaffected.
        assert!(!v.is_locked("c2", wall(start + 3)).unwrap());
    }

    /// A send that never went out is taken back: it counts against neither limit.
    #[test]
    fn a_refunded_send_does_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("db"));
        store
            .add_customer(&NewCustomer {
                id: "c1".into(),
                name: "C".into(),
                mobile: "+491701234567".into(),
                language: None,
                extra: Default::default(),
            })
            .unwrap();
        let v = Verifier::new(
            store,
            Limits {
                sms_per_customer: 1,
                sms_per_caller: 1,
                ..Limits::default()
            },
        )
        .unwrap();
        let wall = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for attempt in 0..5 {
            let at = wall + Duration::from_secs(attempt);
            let pin = v.prepare_pin("c1", CALLER, 4, Instant::now(), at).unwrap();
            assert!(
                v.refund_send("c1", CALLER, &pin, at).unwrap(),
                "attempt {attempt}"
            );
        }
        // One that went out counts: the next is refused.
        let at = wall + Duration::from_secs(10);
        v.prepare_pin("c1", CALLER, 4, Instant::now(), at).unwrap();
        assert!(matches!(
            v.prepare_pin("c1", CALLER, 4, Instant::now(), at + Duration::from_secs(1)),
            Err(SendRefusal::CustomerRateLimited)
        ));
    }

    /// A second send while the PIN is valid carries the same PIN; when that resend fails the
    /// PIN stays (the first SMS delivered it), while a failed first send voids it.
    #[test]
    fn a_resend_carries_the_same_pin_and_its_failure_keeps_it() {
        let (_dir, v) = setup(Limits::default());
        let t = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let first = v.prepare_pin("c1", CALLER, 6, t, wall).unwrap();
        assert_eq!(first.issue(), Issue::New);
        let again = v
            .prepare_pin("c1", "+4930999", 6, t + Duration::from_secs(30), wall)
            .unwrap();
        assert_eq!(again.issue(), Issue::Resend);
        assert_eq!(first.expose(), again.expose());
        v.send_failed("c1", &again);
        assert!(matches!(
            v.check_pin("c1", first.expose(), t + Duration::from_secs(40), wall),
            CheckPinOutcome::Valid
        ));
        // Used: the next send is a new PIN, and when it fails nothing is left to type.
        let third = v
            .prepare_pin("c1", CALLER, 6, t + Duration::from_secs(50), wall)
            .unwrap();
        assert_eq!(third.issue(), Issue::New);
        v.send_failed("c1", &third);
        assert!(matches!(
            v.check_pin("c1", third.expose(), t + Duration::from_secs(60), wall),
            CheckPinOutcome::Expired
        ));
    }

    /// Decoy sends count against the caller's limit together with real ones, and against a
    /// per-number limit like a customer's; a decoy's PIN check is never valid.
    #[test]
    fn decoys_count_like_real_sends_and_never_verify() {
        let (_dir, v) = setup(Limits::default());
        let t = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        // 3 per number: the 4th decoy send for the same number is refused as a customer's.
        for i in 0..3 {
            v.prepare_decoy("999999", &format!("+4930{i}"), 4, t, wall)
                .unwrap();
        }
        assert!(matches!(
            v.prepare_decoy("999999", "+49309", 4, t, wall),
            Err(SendRefusal::CustomerRateLimited)
        ));
        // 5 per caller, real and decoy together.
        v.prepare_pin("c1", CALLER, 4, t, wall).unwrap();
        for n in ["900001", "900002", "900003"] {
            v.prepare_decoy(n, CALLER, 4, t, wall).unwrap();
        }
        v.prepare_pin("c2", CALLER, 4, t, wall).unwrap();
        assert!(matches!(
            v.prepare_decoy("900004", CALLER, 4, t, wall),
            Err(SendRefusal::CallerRateLimited)
        ));
        assert!(matches!(
            v.prepare_pin("c1", CALLER, 4, t, wall),
            Err(SendRefusal::CallerRateLimited)
        ));
        // Every guess is wrong; the tries run out as for a real PIN.
        let mut outcomes = Vec::new();
        for guess in ["0000", "1234", "9999"] {
            outcomes.push(v.check_decoy("900001", guess, t, wall));
        }
        assert_eq!(
            outcomes,
            [
                CheckPinOutcome::Invalid { tries_left: 2 },
                CheckPinOutcome::Invalid { tries_left: 1 },
                CheckPinOutcome::Exhausted
            ]
        );
        assert_eq!(
            v.check_decoy("900001", "0000", t, wall),
            CheckPinOutcome::Expired
        );
        // A decoy is not a customer: its subject cannot be checked as one.
        assert_eq!(
            v.check_pin("900002", "0000", t, wall),
            CheckPinOutcome::Expired
        );
    }

    /// Four calls of three wrong PINs each, for a customer and for an unknown id: the caller
    /// hears the same thing at every try, including the early end at the 10th failure in the
    /// window (the customer's lock-out), and the decoy's count survives a restart.
    #[test]
    fn a_decoy_runs_out_of_tries_where_a_customer_is_locked_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ivrd.sqlite");
        let store = open(&path);
        add_test_customer(&store, "c1");
        let mut v = Verifier::new(store, generous_sms()).unwrap();
        let heard = |v: &Verifier, decoy: bool, call: u64| {
            let t = *EPOCH + Duration::from_secs(call * 1000);
            let at = wall(call * 60);
            let caller = format!("+4930{call:06}");
            let mut outcomes = Vec::new();
            if decoy {
                v.prepare_decoy("777777", &caller, 6, t, at).unwrap();
            } else {
                v.prepare_pin("c1", &caller, 6, t, at).unwrap();
            }
            for guess in ["000000", "111111", "222222"] {
                let o = if decoy {
                    v.check_decoy("777777", guess, t, at)
                } else {
                    v.check_pin("c1", guess, t, at)
                };
                let last = !matches!(o, CheckPinOutcome::Invalid { .. });
                outcomes.push(o);
                if last {
                    break;
                }
            }
            outcomes
        };
        let mut customer = Vec::new();
        let mut decoy = Vec::new();
        for call in 0..3 {
            customer.push(heard(&v, false, call));
            decoy.push(heard(&v, true, call));
        }
        // "Restart" before the fourth call: the counts are in the database.
        v = Verifier::new(open(&path), generous_sms()).unwrap();
        customer.push(heard(&v, false, 3));
        decoy.push(heard(&v, true, 3));
        let three = vec![
            CheckPinOutcome::Invalid { tries_left: 2 },
            CheckPinOutcome::Invalid { tries_left: 1 },
            CheckPinOutcome::Exhausted,
        ];
        assert_eq!(customer[..3], [three.clone(), three.clone(), three]);
        assert_eq!(customer[3], [CheckPinOutcome::Exhausted], "the 10th locks");
        assert!(v.is_locked("c1", wall(181)).unwrap());
        assert_eq!(decoy, customer);
        // The count starts again after the early end, as a lock-out's does.
        assert_eq!(
            v.store()
                .record_decoy_failure("777777", wall(200), wall(0))
                .unwrap(),
            1
        );
    }

    /// The purge keeps what the longest window needs (the day budget, by default) and drops
    /// the rest, the guard's counts included.
    #[test]
    fn the_purge_horizon_covers_the_longest_window() {
        let hour = Duration::from_secs(3600);
        let g = GuardConfig::default();
        assert_eq!(purge_horizon(&Limits::default(), &g), 25 * hour);
        let week = Limits {
            failure_window_secs: 7 * 24 * 3600,
            ..Limits::default()
        };
        assert_eq!(purge_horizon(&week, &g), 7 * 24 * hour + hour);
        let (_dir, v) = setup(Limits::default());
        v.prepare_pin("c1", CALLER, 6, Instant::now(), wall(0))
            .unwrap();
        v.check_pin("c1", "000000", Instant::now(), wall(1));
        let kept = v.store().purge(wall(0)).unwrap();
        assert_eq!(kept.failures + kept.sms_sends + kept.guard_rows, 0);
        let gone = v.store().purge(wall(2)).unwrap();
        assert_eq!((gone.failures, gone.sms_sends), (1, 1));
        assert!(gone.guard_rows >= 1, "{gone:?}");
    }

    fn guarded(guard: GuardConfig) -> (tempfile::TempDir, Verifier) {
        let (dir, v) = setup(Limits {
            failures_before_lockout: 1000,
            ..generous_sms()
        });
        for (id, mobile) in [("gb1", "+447400123456"), ("gb2", "+447400654321")] {
            v.store()
                .add_customer(&NewCustomer {
                    id: id.into(),
                    name: "T".into(),
                    mobile: mobile.into(),
                    ..Default::default()
                })
                .unwrap();
        }
        (dir, v.with_guard(guard))
    }

    fn send(v: &Verifier, id: &str, secs: u64) -> Result<Pin, SendRefusal> {
        // Monotonic time apart too, so every send is a new PIN.
        let t = *EPOCH + Duration::from_secs(secs * 1000);
        v.prepare_pin(id, &format!("+4930{secs:08}"), 4, t, wall(secs))
    }

    fn refused_by(r: Result<Pin, SendRefusal>) -> Option<GuardRefusal> {
        match r {
            Err(SendRefusal::Guard(g)) => Some(g),
            _ => None,
        }
    }

    /// The global budgets count every destination; a refunded send gives its message back.
    #[test]
    fn the_hourly_budget_stops_sends_to_anyone_and_refunds_give_back() {
        let (_dir, v) = guarded(GuardConfig {
            sms_per_hour: 2,
            ..GuardConfig::default()
        });
        send(&v, "c1", 0).unwrap();
        let pin = send(&v, "gb1", 1).unwrap();
        assert_eq!(
            refused_by(send(&v, "c2", 2)),
            Some(GuardRefusal::HourBudget)
        );
        assert_eq!(
            refused_by(
                v.prepare_decoy("999999", "+4930777", 4, Instant::now(), wall(2))
                    .map(|_| pin_stub())
            ),
            Some(GuardRefusal::HourBudget),
            "a decoy is refused when the budget is spent, like a customer"
        );
        assert!(
            v.refund_send("gb1", "+493000000001", &pin, wall(1))
                .unwrap()
        );
        send(&v, "c2", 3).unwrap();
        // An hour after the first, it no longer counts.
        send(&v, "gb2", 3601).unwrap();
        assert_eq!(
            refused_by(send(&v, "gb1", 3602)),
            Some(GuardRefusal::HourBudget)
        );
        assert_eq!(
            SendRefusal::Guard(GuardRefusal::HourBudget).to_outcome(),
            SendPinOutcome::Guarded(GuardKind::Budget)
        );
    }

    fn pin_stub() -> Pin {
        Pin::generate(4).unwrap()
    }

    #[test]
    fn regions_outside_the_allow_list_and_spent_country_budgets_are_refused() {
        let (_dir, v) = guarded(GuardConfig {
            countries: vec!["DE".into()],
            ..GuardConfig::default()
        });
        send(&v, "c1", 0).unwrap();
        assert_eq!(refused_by(send(&v, "gb1", 1)), Some(GuardRefusal::Country));
        assert_eq!(
            SendRefusal::Guard(GuardRefusal::Country).to_outcome(),
            SendPinOutcome::Guarded(GuardKind::Country)
        );

        let (_dir, v) = guarded(GuardConfig {
            country_per_hour: [("44".to_string(), 1)].into(),
            ..GuardConfig::default()
        });
        send(&v, "gb1", 0).unwrap();
        assert_eq!(
            refused_by(send(&v, "gb2", 1)),
            Some(GuardRefusal::CountryBudget)
        );
        send(&v, "c1", 2).expect("another calling code has no budget");
    }

    /// Sends to a prefix that never turn into verifications trip its breaker; other prefixes
    /// go on; after the pause it half-opens: only later sends are judged.
    #[test]
    fn the_breaker_pauses_a_prefix_without_verifications_and_resumes() {
        let (_dir, v) = guarded(GuardConfig {
            breaker_prefix_digits: 6,
            breaker_min_sends: 3,
            breaker_min_ratio: 0.5,
            breaker_window_mins: 60,
            breaker_pause_mins: 10,
            ..GuardConfig::default()
        });
        for i in 0..3 {
            send(&v, if i % 2 == 0 { "gb1" } else { "gb2" }, i).unwrap();
        }
        // Sends younger than a PIN's validity (300 s) are not judged: their PINs may come.
        send(&v, "gb1", 200).unwrap();
        assert_eq!(
            refused_by(send(&v, "gb1", 400)),
            Some(GuardRefusal::Breaker)
        );
        assert_eq!(
            refused_by(send(&v, "gb2", 410)),
            Some(GuardRefusal::Breaker),
            "still open"
        );
        send(&v, "c1", 420).expect("another prefix");
        let open = v.store().open_breakers(wall(420)).unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].0, "447400");
        // After the 10 minutes: half-open, the sends before the pause no longer count.
        let check = |id: &str, pin: &Pin, secs: u64| {
            let t = *EPOCH + Duration::from_secs(secs * 1000);
            v.check_pin(id, pin.expose(), t, wall(secs))
        };
        let pin = send(&v, "gb1", 1001).unwrap();
        assert_eq!(check("gb1", &pin, 1001), CheckPinOutcome::Valid);
        let pin = send(&v, "gb2", 1002).unwrap();
        assert_eq!(check("gb2", &pin, 1002), CheckPinOutcome::Valid);
        send(&v, "gb1", 1003).unwrap();
        // 2 of 3 judged sends verified: above half, it stays closed.
        for secs in [1400, 1401, 1402, 1403] {
            send(&v, "gb2", secs).expect("2 of 3 verified");
        }
        // 2 of 7: open again.
        assert_eq!(
            refused_by(send(&v, "gb1", 1800)),
            Some(GuardRefusal::Breaker)
        );
    }

    /// NIST SP 800-63B: after the cap of wrong PINs in a row the customer stays locked until
    /// an admin unlocks them, across lock-outs and a restart; a right PIN starts the count
    /// again.
    #[test]
    fn wrong_pins_in_a_row_lock_until_an_admin_unlocks_even_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ivrd.sqlite");
        let guard = GuardConfig {
            max_consecutive_failures: 5,
            ..GuardConfig::default()
        };
        let limits = Limits {
            failures_before_lockout: 1000,
            ..generous_sms()
        };
        {
            let store = open(&path);
            store
                .add_customer(&NewCustomer {
                    id: "c1".into(),
                    name: "T".into(),
                    mobile: "+491701234567".into(),
                    ..Default::default()
                })
                .unwrap();
            let v = Verifier::new(store, limits.clone())
                .unwrap()
                .with_guard(guard.clone());
            // Two wrong, then right: the count starts again.
            let t = *EPOCH;
            let pin = v.prepare_pin("c1", CALLER, 6, t, wall(0)).unwrap();
            v.check_pin("c1", &wrong(&pin), t, wall(1));
            v.check_pin("c1", &wrong(&pin), t, wall(2));
            assert_eq!(
                v.check_pin("c1", pin.expose(), t, wall(3)),
                CheckPinOutcome::Valid
            );
            assert_eq!(v.store().failures_in_a_row("c1").unwrap(), 0);
            let mut last = CheckPinOutcome::Valid;
            for i in 0..5u64 {
                let t = *EPOCH + Duration::from_secs(1000 * (i + 1));
                let pin = v.prepare_pin("c1", CALLER, 6, t, wall(10 + i)).unwrap();
                last = v.check_pin("c1", &wrong(&pin), t, wall(10 + i));
            }
            assert_eq!(last, CheckPinOutcome::Exhausted, "the 5th in a row locks");
            assert!(v.is_locked("c1", wall(20)).unwrap());
        }
        // A restart, years later: still locked.
        let store = open(&path);
        let v = Verifier::new(store.clone(), limits)
            .unwrap()
            .with_guard(guard);
        assert!(v.is_locked("c1", wall(10 * 365 * 86_400)).unwrap());
        assert!(matches!(
            v.prepare_pin("c1", CALLER, 6, Instant::now(), wall(100)),
            Err(SendRefusal::LockedOut)
        ));
        // The admin's unlock (what `ivrd customers unlock` does).
        store.reset_failures_in_a_row("c1").unwrap();
        assert!(store.clear_lockout("c1").unwrap());
        assert!(!v.is_locked("c1", wall(101)).unwrap());
    }

    /// The shipped limits: 9 tries per 10 minutes, locked after 10 for 15 min, 30 min, 1 h,
    /// ...: about 70 guesses a day; a 4-digit PIN falls with a chance of 0.7 % a day, a
    /// 6-digit one with 0.007 %. The 100-in-a-row cap bounds it for good.
    #[test]
    fn guesses_per_day_follow_the_limits() {
        let l = Limits::default();
        let day = l.guesses_per_day(0);
        assert!((60..=80).contains(&day), "{day}");
        assert_eq!(l.guesses_per_day(50), 50);
        let p4 = guess_success(day, 4);
        assert!(p4 > 1e-4 && p4 < 0.01, "{p4}");
        assert!(guess_success(day, 6) < 1e-4);
        // Without lock-outs only the SMS pace limits: 9 per 10 min, 1,296 a day.
        let loose = Limits {
            failures_before_lockout: 1_000_000,
            ..Limits::default()
        };
        assert_eq!(loose.guesses_per_day(0), 1296);
        assert!((guess_success(1, 4) - 1e-4).abs() < 1e-12);
    }

    #[test]
    fn sms_limits_per_customer_and_per_caller_over_the_window() {
        let (_dir, v) = setup(Limits::default());
        let t = Instant::now();
        for i in 0..3 {
            v.prepare_pin("c1", CALLER, 6, t, wall(i)).unwrap();
        }
        assert!(matches!(
            v.prepare_pin("c1", "+4930999", 6, t, wall(3)),
            Err(SendRefusal::CustomerRateLimited)
        ));
        // Two more from the same caller for another customer reach the caller's 5.
        v.prepare_pin("c2", CALLER, 6, t, wall(4)).unwrap();
        v.prepare_pin("c2", CALLER, 6, t, wall(5)).unwrap();
        let refusal = v.prepare_pin("c2", CALLER, 6, t, wall(6)).unwrap_err();
        assert!(matches!(refusal, SendRefusal::CallerRateLimited));
        assert_eq!(refusal.to_outcome(), SendPinOutcome::RateLimited);
        // The window includes its start: at 600 s the send at 0 s still counts ...
        assert!(matches!(
            v.prepare_pin("c1", "+4930999", 6, t, wall(600)),
            Err(SendRefusal::CustomerRateLimited)
        ));
        // ... and once it has left the 10-minute window, c1 may receive again.
        assert!(v.prepare_pin("c1", "+4930999", 6, t, wall(601)).is_ok());
    }

    #[test]
    fn sms_limits_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ivrd.sqlite");
        let store = open(&path);
        add_test_customer(&store, "c1");
        let v = Verifier::new(store, Limits::default()).unwrap();
        for i in 0..3 {
            v.prepare_pin("c1", CALLER, 6, Instant::now(), wall(i))
                .unwrap();
        }
        drop(v);
        let v = Verifier::new(open(&path), Limits::default()).unwrap();
        assert!(matches!(
            v.prepare_pin("c1", CALLER, 6, Instant::now(), wall(10)),
            Err(SendRefusal::CustomerRateLimited)
        ));
    }

    #[test]
    fn a_restart_voids_outstanding_pins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ivrd.sqlite");
        let store = open(&path);
        add_test_customer(&store, "c1");
        let t = Instant::now();
        let pin = Verifier::new(store, Limits::default())
            .unwrap()
            .prepare_pin("c1", CALLER, 6, t, wall(0))
            .unwrap();
        let v = Verifier::new(open(&path), Limits::default()).unwrap();
        assert_eq!(
            v.check_pin("c1", pin.expose(), t, wall(1)),
            CheckPinOutcome::Expired
        );
    }

    #[test]
    fn a_bad_length_is_refused_before_anything_is_recorded() {
        let (_dir, v) = setup(Limits::default());
        let err = v
            .prepare_pin("c1", CALLER, 3, Instant::now(), wall(0))
            .unwrap_err();
        assert!(matches!(err, SendRefusal::Pin(PinError::Length(3))));
        assert!(matches!(err.to_outcome(), SendPinOutcome::Failed(_)));
        assert_eq!(v.store().sms_count_for_customer("c1", wall(0)).unwrap(), 0);
    }

    #[test]
    fn revoke_after_a_failed_send_voids_the_pin_but_keeps_the_count() {
        let (_dir, v) = setup(Limits::default());
        let t = Instant::now();
        let pin = v.prepare_pin("c1", CALLER, 6, t, wall(0)).unwrap();
        assert!(v.revoke_pin("c1"));
        assert_eq!(
            v.check_pin("c1", pin.expose(), t, wall(1)),
            CheckPinOutcome::Expired
        );
        assert_eq!(v.store().sms_count_for_customer("c1", wall(0)).unwrap(), 1);
    }

    #[test]
    fn verifier_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Verifier>();
    }
}
