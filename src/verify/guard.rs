//! The fraud guard: limits on what ivrd sends as a whole, not per customer or caller.
//!
//! Per-customer and per-caller limits stop one person from guessing or from harassing one
//! customer. They do not stop SMS pumping (toll fraud where premium or inflated numbers are
//! texted at the sender's cost: the attacker is paid per message) or a slow enumeration
//! spread over many callers. This guard adds what Twilio Verify calls Fraud Guard and geo
//! permissions:
//!
//! - a global budget of PIN SMS per hour and per day (all nodes: counted in the database);
//! - an allow-list of destination regions (`countries = ["DE", "GB"]`, empty: all);
//! - a budget per country calling code per hour (`country_per_hour = { "44" = 200 }`);
//! - a circuit breaker per number prefix (the first `breaker_prefix_digits` digits of the
//!   E.164 number): when, over `breaker_window_mins`, at least `breaker_min_sends` SMS went to
//!   the prefix and fewer than `breaker_min_ratio` of them led to a verified PIN, sends to the
//!   prefix pause for `breaker_pause_mins`; then the breaker half-opens (only sends after the
//!   pause count towards the next decision), so it resumes by itself. Sends younger than a
//!   PIN's validity are not judged yet (their PIN may still be typed): a burst of honest
//!   sends to one operator's prefix must not trip it;
//! - NIST SP 800-63B's cap of `max_consecutive_failures` wrong PINs per customer, counted
//!   across lock-outs and restarts, after which only an admin unlocks the customer.
//!
//! This module holds the configuration and the pure decisions; the counting is in the store,
//! inside the same transaction that admits a send, so two calls (or two nodes) cannot both
//! take the last message of a budget.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// `[guard]` in the config. Every field is optional; unknown fields are an error.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardConfig {
    /// PIN SMS per hour, all customers and callers together (0: no limit).
    pub sms_per_hour: u32,
    /// PIN SMS per day (0: no limit).
    pub sms_per_day: u32,
    /// Destination regions allowed (ISO 3166 codes as the phone-number library knows them:
    /// "DE", "GB", ...). Empty: every region.
    pub countries: Vec<String>,
    /// PIN SMS per hour per country calling code ("49", "44", ...); codes not listed are
    /// limited only by the global budgets.
    pub country_per_hour: BTreeMap<String, u32>,
    /// Digits of the E.164 number (without '+') that make a prefix for the breaker.
    pub breaker_prefix_digits: usize,
    pub breaker_window_mins: u64,
    /// Sends to a prefix in the window before its ratio is judged (0: no breaker).
    pub breaker_min_sends: u32,
    /// Verified PINs per send below which the breaker trips.
    pub breaker_min_ratio: f64,
    pub breaker_pause_mins: u64,
    /// Sends younger than this are not judged yet (default: the PIN's validity).
    pub breaker_grace_secs: Option<u64>,
    /// Wrong PINs in a row (across calls, lock-outs and restarts) after which a customer
    /// stays locked until an admin unlocks them (0: no cap).
    pub max_consecutive_failures: u32,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            sms_per_hour: 2_000,
            sms_per_day: 20_000,
            countries: Vec::new(),
            country_per_hour: BTreeMap::new(),
            breaker_prefix_digits: 6,
            breaker_window_mins: 60,
            breaker_min_sends: 20,
            breaker_min_ratio: 0.1,
            breaker_pause_mins: 30,
            breaker_grace_secs: None,
            max_consecutive_failures: 100,
        }
    }
}

impl GuardConfig {
    /// Refuses settings that cannot work, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        for c in &self.countries {
            if c.len() != 2
                || c.to_ascii_uppercase()
                    .parse::<phonenumber::country::Id>()
                    .is_err()
            {
                return Err(format!(
                    "countries: {c:?} is not a region code (e.g. \"DE\")"
                ));
            }
        }
        for code in self.country_per_hour.keys() {
            if code.is_empty() || code.len() > 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "country_per_hour: {code:?} is not a country calling code (e.g. \"49\")"
                ));
            }
        }
        if !(2..=15).contains(&self.breaker_prefix_digits) {
            return Err("breaker_prefix_digits must be 2 to 15".into());
        }
        if !(0.0..=1.0).contains(&self.breaker_min_ratio) {
            return Err("breaker_min_ratio must be between 0 and 1".into());
        }
        if self.breaker_min_sends > 0
            && (self.breaker_window_mins == 0 || self.breaker_pause_mins == 0)
        {
            return Err("breaker_window_mins and breaker_pause_mins must be above 0".into());
        }
        Ok(())
    }

    pub fn breaker_window(&self) -> Duration {
        Duration::from_secs(self.breaker_window_mins * 60)
    }

    pub fn breaker_pause(&self) -> Duration {
        Duration::from_secs(self.breaker_pause_mins * 60)
    }

    /// Whether `dest`'s region may be texted at all.
    pub fn allows(&self, dest: &Destination) -> bool {
        self.countries.is_empty()
            || dest
                .region
                .as_deref()
                .is_some_and(|r| self.countries.iter().any(|c| c.eq_ignore_ascii_case(r)))
    }

    /// The hourly budget of `dest`'s calling code, if it has one.
    pub fn country_budget(&self, dest: &Destination) -> Option<u32> {
        self.country_per_hour.get(&dest.calling_code).copied()
    }
}

/// Where an SMS would go, as the guard sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The country calling code ("49").
    pub calling_code: String,
    /// The region the number belongs to ("DE"), if the library can tell.
    pub region: Option<String>,
    /// The first digits of the number, for the breaker.
    pub prefix: String,
}

impl Destination {
    /// Reads an E.164 number (as the store keeps them). `None` for anything else: the guard
    /// then refuses, as a number it cannot place is no number to text.
    pub fn of(e164: &str, prefix_digits: usize) -> Option<Destination> {
        let digits = e164.strip_prefix('+')?;
        if digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // The library has had panics on odd inputs; a send must not take a call down.
        let parsed = std::panic::catch_unwind(|| {
            let n = phonenumber::parse(None, e164).ok()?;
            let code = n.country().code().to_string();
            let region = n.country().id().map(|id| format!("{id:?}"));
            Some((code, region))
        })
        .ok()??;
        Some(Destination {
            calling_code: parsed.0,
            region: parsed.1,
            prefix: digits.chars().take(prefix_digits).collect(),
        })
    }
}

/// Which guard refused a send. Each has its audit outcome and metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardRefusal {
    HourBudget,
    DayBudget,
    /// The destination region is not allowed.
    Country,
    CountryBudget,
    /// The prefix's breaker is open.
    Breaker,
}

impl GuardRefusal {
    /// Every guard, for metrics that export a zero for each.
    pub const ALL: [GuardRefusal; 5] = [
        GuardRefusal::HourBudget,
        GuardRefusal::DayBudget,
        GuardRefusal::Country,
        GuardRefusal::CountryBudget,
        GuardRefusal::Breaker,
    ];

    /// The metric label (`ivrd_guard_refusals_total{guard=...}`).
    pub fn as_str(self) -> &'static str {
        match self {
            GuardRefusal::HourBudget => "hour-budget",
            GuardRefusal::DayBudget => "day-budget",
            GuardRefusal::Country => "country",
            GuardRefusal::CountryBudget => "country-budget",
            GuardRefusal::Breaker => "breaker",
        }
    }
}

/// `ivrd guard status`: what the budgets have left and which prefixes are paused, from the
/// database all nodes share.
pub fn status(
    cfg: &GuardConfig,
    store: &crate::store::Store,
    now: std::time::SystemTime,
) -> Result<String, crate::store::StoreError> {
    use std::fmt::Write;
    let ago = |secs: u64| now - Duration::from_secs(secs);
    let budget = |used: u32, max: u32| {
        if max == 0 {
            format!("{used} (no budget)")
        } else {
            format!("{used} of {max}")
        }
    };
    let mut out = String::new();
    let hour = store.guard_sends_since(ago(3600))?;
    let day = store.guard_sends_since(ago(86_400))?;
    let _ = writeln!(
        out,
        "PIN SMS, last hour: {}",
        budget(hour, cfg.sms_per_hour)
    );
    let _ = writeln!(out, "PIN SMS, last 24 h: {}", budget(day, cfg.sms_per_day));
    let _ = writeln!(
        out,
        "regions allowed:    {}",
        if cfg.countries.is_empty() {
            "all".to_string()
        } else {
            cfg.countries.join(", ")
        }
    );
    for (code, max) in &cfg.country_per_hour {
        let used = store.guard_sends_to_code_since(code, ago(3600))?;
        let _ = writeln!(out, "+{code}, last hour:    {}", budget(used, *max));
    }
    let open = store.open_breakers(now)?;
    if cfg.breaker_min_sends == 0 {
        let _ = writeln!(out, "breakers:           off");
    } else if open.is_empty() {
        let _ = writeln!(out, "breakers:           none open");
    } else {
        let _ = writeln!(out, "breakers open:      {}", open.len());
        for (prefix, until) in open {
            let _ = writeln!(
                out,
                "  +{prefix}... paused until {}",
                humantime::format_rfc3339_seconds(until)
            );
        }
    }
    Ok(out)
}

/// Whether a breaker with `sends` to its prefix and `verified` of them verified since it was
/// last judged must trip.
pub fn breaker_trips(cfg: &GuardConfig, sends: u32, verified: u32) -> bool {
    cfg.breaker_min_sends > 0
        && sends >= cfg.breaker_min_sends
        && f64::from(verified) < cfg.breaker_min_ratio * f64::from(sends)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_read_code_region_and_prefix() {
        let d = Destination::of("+447400123456", 6).unwrap();
        assert_eq!(d.calling_code, "44");
        assert_eq!(d.region.as_deref(), Some("GB"));
        assert_eq!(d.prefix, "447400");
        // The region is the number's own, not the calling code's main country.
        let gg = Destination::of("+447911123456", 6).unwrap();
        assert_eq!(
            (gg.calling_code.as_str(), gg.region.as_deref()),
            ("44", Some("GG"))
        );
        let d = Destination::of("+491701234567", 4).unwrap();
        assert_eq!(
            (d.calling_code.as_str(), d.region.as_deref()),
            ("49", Some("DE"))
        );
        assert_eq!(d.prefix, "4917");
        for bad in [
            "",
            "+",
            "491701234567",
            "+49 170",
            "+4917012345678901234",
            "+abc",
        ] {
            assert_eq!(Destination::of(bad, 6), None, "{bad:?}");
        }
    }

    #[test]
    fn the_allow_list_and_country_budgets_match_the_destination() {
        let cfg = GuardConfig {
            countries: vec!["de".into(), "AT".into()],
            country_per_hour: [("49".to_string(), 7)].into(),
            ..GuardConfig::default()
        };
        cfg.validate().unwrap();
        let de = Destination::of("+491701234567", 6).unwrap();
        let gb = Destination::of("+447400123456", 6).unwrap();
        assert!(cfg.allows(&de));
        assert!(!cfg.allows(&gb));
        assert!(GuardConfig::default().allows(&gb), "empty list: all");
        assert_eq!(cfg.country_budget(&de), Some(7));
        assert_eq!(cfg.country_budget(&gb), None);
    }

    #[test]
    fn the_breaker_judges_only_enough_sends() {
        let cfg = GuardConfig {
            breaker_min_sends: 10,
            breaker_min_ratio: 0.2,
            ..GuardConfig::default()
        };
        assert!(!breaker_trips(&cfg, 9, 0), "too few sends to judge");
        assert!(breaker_trips(&cfg, 10, 1));
        assert!(!breaker_trips(&cfg, 10, 2));
        let off = GuardConfig {
            breaker_min_sends: 0,
            ..cfg
        };
        assert!(!breaker_trips(&off, 1000, 0));
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = |f: fn(&mut GuardConfig)| {
            let mut c = GuardConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(|c| c.countries = vec!["Germany".into()]).starts_with("countries"));
        assert!(bad(|c| c.countries = vec!["XX".into()]).starts_with("countries"));
        assert!(
            bad(|c| c.country_per_hour = [("+49".into(), 1)].into())
                .starts_with("country_per_hour")
        );
        assert!(bad(|c| c.breaker_prefix_digits = 1).starts_with("breaker_prefix_digits"));
        assert!(bad(|c| c.breaker_min_ratio = 1.5).starts_with("breaker_min_ratio"));
    }
}
