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
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

use crate::dialplan::services::{CheckPinOutcome, SendPinOutcome};
use crate::store::{SmsAdmission, Store, StoreError};
use crate::verify::pin::{MAX_TTL, Pin, PinCheck, PinError, PinVault};

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
}

impl SendRefusal {
    /// The dialplan's view of this refusal.
    pub fn to_outcome(&self) -> SendPinOutcome {
        match self {
            SendRefusal::LockedOut => SendPinOutcome::LockedOut,
            SendRefusal::CustomerRateLimited | SendRefusal::CallerRateLimited => {
                SendPinOutcome::RateLimited
            }
            SendRefusal::Store(_) | SendRefusal::Pin(_) => SendPinOutcome::Failed(self.to_string()),
        }
    }
}

/// Applies [`Limits`] over a [`PinVault`] and the [`Store`]. `Send + Sync`; share it in an `Arc`.
#[derive(Debug)]
pub struct Verifier {
    store: Arc<Store>,
    limits: Limits,
    vault: Mutex<PinVault>,
}

impl Verifier {
    /// Validates `limits` and creates the vault (with a fresh random key).
    pub fn new(store: Arc<Store>, limits: Limits) -> Result<Verifier, LimitsError> {
        limits.validate()?;
        let vault = PinVault::new(limits.pin_ttl(), limits.wrong_tries_per_pin)?;
        Ok(Verifier {
            store,
            limits,
            vault: Mutex::new(vault),
        })
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
    /// digits (replacing any outstanding one). `customer_id` must exist in the store (the send is
    /// recorded against it). The caller sends the PIN; if sending fails, call
    /// [`Verifier::revoke_pin`]. The send stays counted either way: a failing provider must not
    /// become a way around the rate limit.
    pub fn prepare_pin(
        &self,
        customer_id: &str,
        caller: &str,
        length: usize,
        now: Instant,
        wall: SystemTime,
    ) -> Result<Pin, SendRefusal> {
        // Refuse a bad length before anything is recorded.
        if !(crate::verify::pin::MIN_LENGTH..=crate::verify::pin::MAX_LENGTH).contains(&length) {
            return Err(PinError::Length(length).into());
        }
        if self.is_locked(customer_id, wall)? {
            return Err(SendRefusal::LockedOut);
        }
        let since = wall.checked_sub(self.limits.sms_window()).unwrap_or(wall);
        match self.store.admit_sms(
            customer_id,
            caller,
            wall,
            since,
            self.limits.sms_per_customer,
            self.limits.sms_per_caller,
        )? {
            SmsAdmission::Recorded => {}
            SmsAdmission::CustomerLimit => return Err(SendRefusal::CustomerRateLimited),
            SmsAdmission::CallerLimit => return Err(SendRefusal::CallerRateLimited),
        }
        Ok(self.vault().issue(customer_id, length, now)?)
    }

    /// Voids the customer's outstanding PIN (e.g. the SMS could not be sent).
    pub fn revoke_pin(&self, customer_id: &str) -> bool {
        self.vault().revoke(customer_id)
    }

    /// The send [`Verifier::prepare_pin`] recorded at `wall` did not go out at all (the
    /// provider refused it or could not be reached): void the PIN and take the send back, so
    /// that an outage or a bad number costs the customer nothing. A send that may have gone
    /// out (a timeout after the request left) is not refunded.
    pub fn refund_send(
        &self,
        customer_id: &str,
        caller: &str,
        wall: SystemTime,
    ) -> Result<bool, StoreError> {
        self.vault().revoke(customer_id);
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
                self.vault().revoke(customer_id);
                return CheckPinOutcome::LockedOut;
            }
            Err(e) => {
                // Fail closed: without the lock-out state we cannot tell whether to let a guess in.
                tracing::error!(customer = customer_id, error = %e, "cannot read lock-out; refusing the PIN check");
                return CheckPinOutcome::LockedOut;
            }
        }
        let check = self.vault().check(customer_id, input, now);
        match check {
            PinCheck::Valid => {
                if let Err(e) = self
                    .store
                    .clear_failures(customer_id)
                    .and_then(|()| self.store.clear_lockout(customer_id).map(drop))
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
                        self.vault().revoke(customer_id);
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

    /// Records a failure and locks the customer if that reaches the threshold in the window.
    /// Returns whether the customer is now locked.
    fn register_failure(&self, customer_id: &str, wall: SystemTime) -> Result<bool, StoreError> {
        self.store.record_failure(customer_id, wall)?;
        let since = wall
            .checked_sub(self.limits.failure_window())
            .unwrap_or(wall);
        let failures = self.store.failures_since(customer_id, since)?;
        if failures < self.limits.failures_before_lockout {
            return Ok(false);
        }
        let level = self
            .store
            .lockout(customer_id)?
            .map_or(1, |(_, level)| level.saturating_add(1));
        let until = wall + self.limits.lockout_for(level);
        self.store.lock(customer_id, until, level)?;
        // The lock-out has used these failures up: after it ends the customer gets a fresh set of
        // tries, and the level (not the old failures) makes the next lock-out longer.
        self.store.clear_failures(customer_id)?;
        tracing::warn!(
            customer = customer_id,
            level,
            minutes = self.limits.lockout_for(level).as_secs() / 60,
            "customer locked out after {failures} wrong PINs"
        );
        Ok(true)
    }

    fn vault(&self) -> MutexGuard<'_, PinVault> {
        // The vault's operations leave it consistent at every step; a panic elsewhere while the
        // lock was held does not make it unsafe to use.
        self.vault.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewCustomer;
    use std::path::Path;
    use std::time::UNIX_EPOCH;

    const CALLER: &str = "+4930111111";

    fn open(path: &Path) -> Arc<Store> {
        Arc::new(Store::open(path).unwrap())
    }

    fn setup(limits: Limits) -> (tempfile::TempDir, Verifier) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("ivrd.sqlite"));
        for id in ["c1", "c2"] {
            store
                .add_customer(&NewCustomer {
                    id: id.into(),
                    name: "Test".into(),
                    mobile: "+491701234567".into(),
                    ..Default::default()
                })
                .unwrap();
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
        let t = Instant::now();
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
            store
                .add_customer(&NewCustomer {
                    id: "c1".into(),
                    name: "Test".into(),
                    mobile: "+491701234567".into(),
                    ..Default::default()
                })
                .unwrap();
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
            v.prepare_pin("c1", CALLER, 4, Instant::now(), at).unwrap();
            assert!(
                v.refund_send("c1", CALLER, at).unwrap(),
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
        store
            .add_customer(&NewCustomer {
                id: "c1".into(),
                name: "Test".into(),
                mobile: "+491701234567".into(),
                ..Default::default()
            })
            .unwrap();
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
        store
            .add_customer(&NewCustomer {
                id: "c1".into(),
                name: "Test".into(),
                mobile: "+491701234567".into(),
                ..Default::default()
            })
            .unwrap();
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
