//! Who may talk to us, and how much: the trusted-peer list and the budgets of every source.
//!
//! Trust comes from configuration, never from a header: `[sip] trusted` lists the addresses
//! and CIDR ranges of the PBXes and SBCs in front of ivrd. With a list, requests from anywhere
//! else are dropped (or answered 403 with `untrusted = "reject"`) before they are parsed, or
//! served as untrusted with `untrusted = "allow"`. With no list ivrd is *open*: anyone who
//! reaches the port may call, but as an untrusted source, so every per-source budget below
//! applies and nothing it asserts about itself is believed.
//!
//! What trust buys a peer:
//! - its `P-Asserted-Identity` (RFC 3325) names the caller for the per-caller limits (From is
//!   whatever a caller wants it to be);
//! - `maddr` in its Via is honoured (from anyone else it would aim our responses at a third
//!   host);
//! - no per-source budget: a PBX carries every caller, and overload control protects us
//!   from it. Untrusted sources each get a small share: new calls per second, INVITEs waiting
//!   for their ACK (each holds an RTP port), live transactions, TCP connections.
//!
//! [`SourceBudgets`] is the bookkeeping for those shares: no IO and no clock of its own, so
//! the SIP core drives it with `now` and tests drive it on a virtual clock.

use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How a source address is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Listed in `[sip] trusted`.
    Trusted,
    /// Not listed, but the list is empty (open) or `untrusted = "allow"`: served within the
    /// per-source budgets.
    Untrusted,
    /// Not listed, with a list and `untrusted` "drop" or "reject": never served.
    Denied,
}

impl Trust {
    pub fn is_trusted(self) -> bool {
        self == Trust::Trusted
    }
}

/// What happens to requests from sources outside a non-empty trusted list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UntrustedAction {
    /// Silently dropped, unparsed: a scanner learns nothing, and a spoofed source makes us
    /// send nothing to anyone.
    #[default]
    Drop,
    /// Answered 403 (statelessly), for sites that want a misrouted PBX to see why.
    Reject,
    /// Served as untrusted, within the per-source budgets (callers reaching ivrd directly
    /// beside the PBX). This is what an empty list means.
    Allow,
}

/// The trusted-peer list.
#[derive(Clone, Debug, Default)]
pub struct PeerPolicy {
    trusted: Vec<IpNet>,
    pub untrusted: UntrustedAction,
}

/// Why a `[sip] trusted` entry could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "[sip] trusted: {0:?} is not an IP address or CIDR range (e.g. \"192.0.2.10\", \"10.0.0.0/8\", \"2001:db8::/32\")"
)]
pub struct BadPeer(pub String);

impl PeerPolicy {
    /// Parses the configured entries: bare addresses (a /32 or /128) and CIDR ranges.
    pub fn new(entries: &[String], untrusted: UntrustedAction) -> Result<PeerPolicy, BadPeer> {
        let trusted = entries
            .iter()
            .map(|e| {
                let e = e.trim();
                e.parse::<IpNet>()
                    .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| BadPeer(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PeerPolicy { trusted, untrusted })
    }

    /// Whether there is no list (anyone may call, untrusted).
    pub fn is_open(&self) -> bool {
        self.trusted.is_empty()
    }

    pub fn classify(&self, ip: IpAddr) -> Trust {
        // A dual-stack [::] listener sees IPv4 peers as ::ffff:a.b.c.d; the list says a.b.c.d.
        let ip = ip.to_canonical();
        if self.trusted.iter().any(|n| n.contains(&ip)) {
            Trust::Trusted
        } else if self.trusted.is_empty() || self.untrusted == UntrustedAction::Allow {
            Trust::Untrusted
        } else {
            Trust::Denied
        }
    }
}

/// The shares one untrusted source gets (trusted sources have none of these limits).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budgets {
    /// New calls (INVITEs outside a dialog) per second, sustained; bursts of twice that.
    pub calls_per_sec: f64,
    /// INVITEs from one source that have not been confirmed by an ACK yet. Each holds an RTP
    /// port until its ACK comes or `[sip] ack_timeout_ms` passes.
    pub unconfirmed: u32,
    /// Live server transactions of one source.
    pub transactions: u32,
    /// Calls of one source at once, confirmed or not: each holds an RTP port for as long as
    /// it lasts, and a source that can ACK could otherwise take them all at its call rate.
    pub calls: u32,
    /// Unconfirmed INVITEs of all untrusted sources together: many sources with a share each
    /// must not take every RTP port either (the daemon sets it to half its ports, at most 256).
    pub unconfirmed_total: u32,
    /// Calls of all untrusted sources together, confirmed or not: each holds a task, buffers
    /// and an RTP port (40-67 KiB), so many sources with a share each must not grow memory
    /// without bound (the daemon sets it to half its ports, at most 512).
    pub calls_total: u32,
    /// Sources tracked at once; a flood from more (spoofed) addresses than this is refused
    /// rather than grown into.
    pub max_sources: usize,
}

impl Default for Budgets {
    /// The shares `[sip] source_*` default to (a daemon with 5,000 RTP ports).
    fn default() -> Self {
        Budgets {
            calls_per_sec: 10.0,
            unconfirmed: 16,
            transactions: 256,
            calls: 32,
            unconfirmed_total: 2_500,
            calls_total: 2_500,
            // 64 Ki sources of about 100 bytes each: a flood from spoofed addresses cannot
            // grow the table past a few MiB.
            max_sources: 65_536,
        }
    }
}

/// Why a request from an untrusted source was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Over its new-calls-per-second rate.
    Rate,
    /// Too many of its INVITEs wait for their ACK.
    Unconfirmed,
    /// Too many of its calls are up.
    Calls,
    /// Too many of its transactions are alive.
    Transactions,
    /// Too many sources are tracked already.
    Sources,
    /// The daemon's own cap on transactions (count or bytes) is reached, for every source.
    Capacity,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Rate => "call-rate",
            Refusal::Unconfirmed => "unconfirmed",
            Refusal::Calls => "calls",
            Refusal::Transactions => "transactions",
            Refusal::Sources => "sources",
            Refusal::Capacity => "capacity",
        }
    }
}

#[derive(Debug)]
struct Source {
    /// Token bucket for new calls: tokens left as of `refilled`.
    tokens: f64,
    refilled: Instant,
    unconfirmed: u32,
    calls: u32,
    transactions: u32,
}

/// Per-source accounting for untrusted sources. Callers pair every successful `open_*` with
/// one `close_*`; a source whose counts are back at zero and whose bucket is full is
/// forgotten by [`SourceBudgets::sweep`], so the table holds only sources that are active.
#[derive(Debug)]
pub struct SourceBudgets {
    limits: Budgets,
    sources: HashMap<IpAddr, Source>,
    /// Sum of every source's `unconfirmed`.
    unconfirmed: u32,
    /// Sum of every source's `calls`.
    calls: u32,
}

impl SourceBudgets {
    pub fn new(limits: Budgets) -> SourceBudgets {
        SourceBudgets {
            limits,
            sources: HashMap::new(),
            unconfirmed: 0,
            calls: 0,
        }
    }

    fn burst(&self) -> f64 {
        (self.limits.calls_per_sec * 2.0).max(1.0)
    }

    fn entry(&mut self, ip: IpAddr, now: Instant) -> Result<&mut Source, Refusal> {
        let burst = self.burst();
        if !self.sources.contains_key(&ip) && self.sources.len() >= self.limits.max_sources {
            return Err(Refusal::Sources);
        }
        let rate = self.limits.calls_per_sec;
        let s = self.sources.entry(ip).or_insert(Source {
            tokens: burst,
            refilled: now,
            unconfirmed: 0,
            calls: 0,
            transactions: 0,
        });
        let elapsed = now.saturating_duration_since(s.refilled).as_secs_f64();
        s.tokens = (s.tokens + elapsed * rate).min(burst);
        s.refilled = now;
        Ok(s)
    }

    /// A new call (INVITE outside a dialog) from `ip`: takes a token, a call slot and an
    /// unconfirmed slot, or says why not. On `Ok` the caller owes one
    /// [`SourceBudgets::confirmed`] and one [`SourceBudgets::call_ended`].
    pub fn open_call(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let Budgets {
            unconfirmed: limit,
            calls,
            ..
        } = self.limits;
        let all_full = self.unconfirmed >= self.limits.unconfirmed_total;
        let all_calls = self.calls >= self.limits.calls_total;
        let s = self.entry(ip, now)?;
        if s.unconfirmed >= limit || all_full {
            return Err(Refusal::Unconfirmed);
        }
        if s.calls >= calls || all_calls {
            return Err(Refusal::Calls);
        }
        if s.tokens < 1.0 {
            return Err(Refusal::Rate);
        }
        s.tokens -= 1.0;
        s.unconfirmed += 1;
        s.calls += 1;
        self.unconfirmed += 1;
        self.calls += 1;
        Ok(())
    }

    /// The call opened by [`SourceBudgets::open_call`] is over (or was refused).
    pub fn call_ended(&mut self, ip: IpAddr) {
        if let Some(s) = self.sources.get_mut(&ip)
            && s.calls > 0
        {
            s.calls -= 1;
            self.calls -= 1;
        }
    }

    /// The call opened by [`SourceBudgets::open_call`] was ACKed, refused or ended.
    pub fn confirmed(&mut self, ip: IpAddr) {
        if let Some(s) = self.sources.get_mut(&ip)
            && s.unconfirmed > 0
        {
            s.unconfirmed -= 1;
            self.unconfirmed -= 1;
        }
    }

    /// A server transaction for `ip`. On `Ok` the caller owes one
    /// [`SourceBudgets::close_transaction`].
    pub fn open_transaction(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let limit = self.limits.transactions;
        let s = self.entry(ip, now)?;
        if s.transactions >= limit {
            return Err(Refusal::Transactions);
        }
        s.transactions += 1;
        Ok(())
    }

    pub fn close_transaction(&mut self, ip: IpAddr) {
        if let Some(s) = self.sources.get_mut(&ip) {
            s.transactions = s.transactions.saturating_sub(1);
        }
    }

    /// Forgets sources with nothing open whose bucket has refilled: call now and then.
    pub fn sweep(&mut self, now: Instant) {
        let (rate, burst) = (self.limits.calls_per_sec, self.burst());
        self.sources.retain(|_, s| {
            let tokens = s.tokens + now.saturating_duration_since(s.refilled).as_secs_f64() * rate;
            s.unconfirmed > 0 || s.calls > 0 || s.transactions > 0 || tokens < burst
        });
    }

    /// Sources tracked now (for tests and the status page).
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// How often [`SourceBudgets::sweep`] should run.
    pub const SWEEP_EVERY: Duration = Duration::from_secs(5);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn trusted_list_takes_addresses_and_ranges_of_both_families() {
        let p = PeerPolicy::new(
            &[
                "192.0.2.10".into(),
                "10.0.0.0/8".into(),
                "2001:db8::/32".into(),
                " ::1 ".into(),
                // Host bits set: the range is what counts.
                "198.51.100.7/24".into(),
            ],
            UntrustedAction::Drop,
        )
        .unwrap();
        assert_eq!(p.classify(ip("192.0.2.10")), Trust::Trusted);
        assert_eq!(p.classify(ip("192.0.2.11")), Trust::Denied);
        assert_eq!(p.classify(ip("10.200.3.4")), Trust::Trusted);
        assert_eq!(p.classify(ip("2001:db8:1::5")), Trust::Trusted);
        assert_eq!(p.classify(ip("2001:db9::5")), Trust::Denied);
        assert_eq!(p.classify(ip("::1")), Trust::Trusted);
        assert_eq!(p.classify(ip("198.51.100.200")), Trust::Trusted);
        // An IPv4 peer on a dual-stack socket.
        assert_eq!(p.classify(ip("::ffff:10.1.2.3")), Trust::Trusted);
        assert!(!p.is_open());
    }

    #[test]
    fn allow_serves_the_unlisted_as_untrusted() {
        let p = PeerPolicy::new(&["192.0.2.10".into()], UntrustedAction::Allow).unwrap();
        assert_eq!(p.classify(ip("192.0.2.10")), Trust::Trusted);
        assert_eq!(p.classify(ip("192.0.2.11")), Trust::Untrusted);
    }

    #[test]
    fn an_empty_list_is_open_but_trusts_nobody() {
        let p = PeerPolicy::default();
        assert!(p.is_open());
        assert_eq!(p.classify(ip("127.0.0.1")), Trust::Untrusted);
    }

    #[test]
    fn bad_entries_are_named() {
        let err = PeerPolicy::new(&["10.0.0.0/33".into()], UntrustedAction::Drop).unwrap_err();
        assert_eq!(err, BadPeer("10.0.0.0/33".into()));
        assert!(err.to_string().contains("CIDR"));
        assert!(PeerPolicy::new(&["pbx.example.com".into()], UntrustedAction::Drop).is_err());
    }

    fn budgets() -> SourceBudgets {
        SourceBudgets::new(Budgets {
            calls_per_sec: 2.0,
            unconfirmed: 3,
            transactions: 5,
            calls: 5,
            unconfirmed_total: 4,
            calls_total: 6,
            max_sources: 2,
        })
    }

    /// Many sources, each within its share, cannot have more calls up together than the
    /// total; a call that ends gives its slot back to anyone.
    #[test]
    fn calls_of_all_sources_together_are_capped() {
        let mut b = budgets();
        let t0 = Instant::now();
        let (a, c) = (ip("192.0.2.1"), ip("192.0.2.2"));
        for (i, src) in [a, a, a, a, c, c].into_iter().enumerate() {
            let t = t0 + Duration::from_secs(i as u64);
            b.open_call(src, t).unwrap();
            b.confirmed(src);
        }
        let later = t0 + Duration::from_secs(60);
        assert_eq!(b.open_call(c, later), Err(Refusal::Calls), "6 up in all");
        b.call_ended(a);
        b.open_call(c, later).unwrap();
        // A call_ended for a source with nothing open changes nothing.
        b.call_ended(ip("192.0.2.9"));
        assert_eq!(b.open_call(a, later), Err(Refusal::Calls));
    }

    #[test]
    fn call_rate_is_a_token_bucket_with_a_burst_of_twice_the_rate() {
        let mut b = budgets();
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        // A burst of 4 (2/s x 2), as long as each is confirmed (unconfirmed cap is 3).
        for _ in 0..4 {
            b.open_call(a, t0).unwrap();
            b.confirmed(a);
            b.call_ended(a);
        }
        assert_eq!(b.open_call(a, t0), Err(Refusal::Rate));
        // Half a second brings one token back.
        b.open_call(a, t0 + Duration::from_millis(500)).unwrap();
        assert_eq!(
            b.open_call(a, t0 + Duration::from_millis(500)),
            Err(Refusal::Rate)
        );
        // Another source has its own bucket.
        b.open_call(ip("192.0.2.2"), t0).unwrap();
    }

    #[test]
    fn unconfirmed_calls_are_capped_until_confirmed() {
        let mut b = budgets();
        let t = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            b.open_call(a, t).unwrap();
        }
        assert_eq!(b.open_call(a, t), Err(Refusal::Unconfirmed));
        b.confirmed(a);
        b.open_call(a, t).unwrap();
        // All untrusted sources together hold at most 4: the second source gets one.
        let c = ip("192.0.2.2");
        b.confirmed(a);
        b.open_call(c, t).unwrap();
        b.open_call(c, t).unwrap();
        assert_eq!(b.open_call(c, t), Err(Refusal::Unconfirmed));
        // A stray confirmation (nothing open) gives nothing back.
        b.confirmed(ip("192.0.2.9"));
        assert_eq!(b.open_call(c, t), Err(Refusal::Unconfirmed));
    }

    #[test]
    fn calls_are_capped_per_source_until_they_end() {
        let mut b = budgets();
        let t = Instant::now();
        let a = ip("192.0.2.1");
        for i in 0..5 {
            b.open_call(a, t + Duration::from_secs(i)).unwrap();
            b.confirmed(a);
        }
        // Five calls up (all ACKed): a sixth is refused until one ends.
        let later = t + Duration::from_secs(10);
        assert_eq!(b.open_call(a, later), Err(Refusal::Calls));
        b.call_ended(a);
        b.open_call(a, later).unwrap();
        b.sweep(later + Duration::from_secs(60));
        assert_eq!(b.len(), 1, "a source with calls up is kept");
    }

    #[test]
    fn transactions_are_capped_per_source_and_sources_in_total() {
        let mut b = budgets();
        let t = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..5 {
            b.open_transaction(a, t).unwrap();
        }
        assert_eq!(b.open_transaction(a, t), Err(Refusal::Transactions));
        b.close_transaction(a);
        b.open_transaction(a, t).unwrap();
        b.open_transaction(ip("192.0.2.2"), t).unwrap();
        // Two sources tracked: a third is refused rather than grown into.
        assert_eq!(
            b.open_transaction(ip("192.0.2.3"), t),
            Err(Refusal::Sources)
        );
    }

    #[test]
    fn idle_sources_are_forgotten_once_their_bucket_refills() {
        let mut b = budgets();
        let t = Instant::now();
        let a = ip("192.0.2.1");
        b.open_call(a, t).unwrap();
        b.confirmed(a);
        b.call_ended(a);
        b.sweep(t);
        assert_eq!(b.len(), 1, "bucket not full yet");
        b.sweep(t + Duration::from_secs(1));
        assert!(b.is_empty());
        b.open_transaction(a, t).unwrap();
        b.sweep(t + Duration::from_secs(60));
        assert_eq!(b.len(), 1, "a live transaction keeps the source");
    }
}
