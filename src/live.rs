//! The live picture's numbers: which transitions calls took and how they ended, per dialplan,
//! over the last hour; and the step each call in progress is in now. The admin page at `/`
//! (see [`crate::live_page`]) and `/live.json` read them.
//!
//! Counts live in [`Ring`]s of per-minute buckets, [`WINDOW_MINUTES`] of them, so memory is
//! bounded whatever the call rate, and a count falls out of the window an hour after it
//! happened. The number of plans and of distinct edges and outcomes per plan is capped
//! ([`MAX_PLANS`], [`MAX_EDGES`], [`MAX_OUTCOMES`]); past a cap, entries that have expired
//! make room, and when none have, the event is dropped and counted in
//! [`LiveSnapshot::dropped`].
//!
//! A call feeds this through a [`LiveCall`], the dialplan [`Observer`] the daemon passes to
//! [`crate::dialplan::run_observed`]: one short mutex hold per step and per transition,
//! nothing per packet or per digit.

use crate::dialplan::{FlowEvent, Observer};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// How far back the counts reach, in one-minute buckets.
pub const WINDOW_MINUTES: usize = 60;
/// Dialplan names tracked (plans are admin-defined; a reload may rename them).
pub const MAX_PLANS: usize = 32;
/// Distinct (from step, outcome, to step) edges tracked per plan.
pub const MAX_EDGES: usize = 512;
/// Distinct call outcomes tracked per plan.
pub const MAX_OUTCOMES: usize = 64;

/// The target of the edge a successful transfer takes (the graph's "transferred" node).
pub const TRANSFERRED: &str = "(transferred)";

/// Counts over the last [`WINDOW_MINUTES`] minutes, one bucket a minute.
#[derive(Clone, Copy)]
pub struct Ring {
    /// (minute since the epoch, count), at index minute % WINDOW_MINUTES.
    buckets: [(u32, u32); WINDOW_MINUTES],
}

impl Default for Ring {
    fn default() -> Self {
        Ring {
            buckets: [(0, 0); WINDOW_MINUTES],
        }
    }
}

impl Ring {
    /// Counts one event in `minute`.
    pub fn add(&mut self, minute: u32) {
        let slot = &mut self.buckets[minute as usize % WINDOW_MINUTES];
        if slot.0 != minute {
            *slot = (minute, 0);
        }
        slot.1 = slot.1.saturating_add(1);
    }

    /// The events of the last [`WINDOW_MINUTES`] minutes up to and including `minute`.
    pub fn total(&self, minute: u32) -> u64 {
        self.buckets
            .iter()
            .filter(|(m, _)| *m <= minute && minute - *m < WINDOW_MINUTES as u32)
            .map(|(_, n)| u64::from(*n))
            .sum()
    }
}

/// The clock the counts use: seconds since the Unix epoch (injectable for tests).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

#[derive(Default)]
struct PlanCounts {
    edges: BTreeMap<(String, String, String), Ring>,
    outcomes: BTreeMap<String, Ring>,
}

#[derive(Default)]
struct Inner {
    plans: BTreeMap<String, PlanCounts>,
    /// The step each call in progress is in, by its key in the metrics' active list.
    steps: HashMap<u64, String>,
    dropped: u64,
}

/// The live counts. One per daemon, shared by the calls and the admin listener.
pub struct Live {
    clock: Clock,
    inner: Mutex<Inner>,
}

impl Default for Live {
    fn default() -> Self {
        Live::with_clock(Arc::new(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
        }))
    }
}

/// One edge's count, as `/live.json` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EdgeCount {
    pub from: String,
    pub outcome: String,
    pub to: String,
    pub count: u64,
}

/// One plan's counts over the last hour (entries at zero left out).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlanSnapshot {
    pub edges: Vec<EdgeCount>,
    /// Calls that ended, by outcome (`verified`, `caller-hangup`, ...).
    pub outcomes: BTreeMap<String, u64>,
}

impl PlanSnapshot {
    /// How many calls took `from` -`outcome`-> `to`.
    pub fn edge(&self, from: &str, outcome: &str, to: &str) -> u64 {
        self.edges
            .iter()
            .find(|e| e.from == from && e.outcome == outcome && e.to == to)
            .map_or(0, |e| e.count)
    }
}

/// Everything at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LiveSnapshot {
    pub window_minutes: u64,
    pub plans: BTreeMap<String, PlanSnapshot>,
    /// Events not counted because a cap was reached.
    pub dropped: u64,
}

impl Live {
    pub fn with_clock(clock: Clock) -> Live {
        Live {
            clock,
            inner: Mutex::default(),
        }
    }

    fn minute(&self) -> u32 {
        u32::try_from((self.clock)() / 60).unwrap_or(u32::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("live lock")
    }

    /// Counts a transition a call took.
    pub fn transition(&self, plan: &str, from: String, outcome: String, to: String) {
        let minute = self.minute();
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Some(counts) = plan_counts(&mut inner.plans, plan, minute) else {
            inner.dropped += 1;
            return;
        };
        if bump(&mut counts.edges, (from, outcome, to), MAX_EDGES, minute).is_none() {
            inner.dropped += 1;
        }
    }

    /// Counts a call of `plan` that ended with `outcome`.
    pub fn call_ended(&self, plan: &str, outcome: &str) {
        let minute = self.minute();
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Some(counts) = plan_counts(&mut inner.plans, plan, minute) else {
            inner.dropped += 1;
            return;
        };
        if bump(
            &mut counts.outcomes,
            outcome.to_string(),
            MAX_OUTCOMES,
            minute,
        )
        .is_none()
        {
            inner.dropped += 1;
        }
    }

    /// The call `id` (its key in [`crate::metrics::Metrics`]' active list) is in `step` now.
    pub fn set_step(&self, id: u64, step: &str) {
        let mut inner = self.lock();
        match inner.steps.get_mut(&id) {
            Some(s) => {
                s.clear();
                s.push_str(step);
            }
            None => {
                inner.steps.insert(id, step.to_string());
            }
        }
    }

    /// The step each call in progress is in, by its key in the metrics' active list.
    pub fn steps(&self) -> HashMap<u64, String> {
        self.lock().steps.clone()
    }

    /// The counts over the last hour.
    pub fn snapshot(&self) -> LiveSnapshot {
        let minute = self.minute();
        let inner = self.lock();
        let plans = inner
            .plans
            .iter()
            .map(|(name, counts)| {
                let edges = counts
                    .edges
                    .iter()
                    .map(|((from, outcome, to), ring)| EdgeCount {
                        from: from.clone(),
                        outcome: outcome.clone(),
                        to: to.clone(),
                        count: ring.total(minute),
                    })
                    .filter(|e| e.count > 0)
                    .collect();
                let outcomes = counts
                    .outcomes
                    .iter()
                    .map(|(o, ring)| (o.clone(), ring.total(minute)))
                    .filter(|(_, n)| *n > 0)
                    .collect();
                (name.clone(), PlanSnapshot { edges, outcomes })
            })
            .filter(|(_, p)| !p.edges.is_empty() || !p.outcomes.is_empty())
            .collect();
        LiveSnapshot {
            window_minutes: WINDOW_MINUTES as u64,
            plans,
            dropped: inner.dropped,
        }
    }

    /// Starts following a call: the returned observer records its steps and transitions and
    /// forgets the call when dropped.
    pub fn call(self: &Arc<Self>, id: u64, plan: &str) -> LiveCall {
        LiveCall {
            live: self.clone(),
            id,
            plan: plan.to_string(),
        }
    }
}

/// The counts of `plan`, made room for if new (`None`: at the cap with nothing expired).
fn plan_counts<'a>(
    plans: &'a mut BTreeMap<String, PlanCounts>,
    plan: &str,
    minute: u32,
) -> Option<&'a mut PlanCounts> {
    if !plans.contains_key(plan) {
        if plans.len() >= MAX_PLANS {
            plans.retain(|_, c| {
                c.edges.values().any(|r| r.total(minute) > 0)
                    || c.outcomes.values().any(|r| r.total(minute) > 0)
            });
            if plans.len() >= MAX_PLANS {
                return None;
            }
        }
        plans.insert(plan.to_string(), PlanCounts::default());
    }
    plans.get_mut(plan)
}

/// Counts one event under `key`, making room among expired entries at the cap.
fn bump<K: Ord>(map: &mut BTreeMap<K, Ring>, key: K, cap: usize, minute: u32) -> Option<()> {
    if let Some(ring) = map.get_mut(&key) {
        ring.add(minute);
        return Some(());
    }
    if map.len() >= cap {
        map.retain(|_, r| r.total(minute) > 0);
        if map.len() >= cap {
            return None;
        }
    }
    map.entry(key).or_default().add(minute);
    Some(())
}

/// One call's observer: records the step it is in and the transitions it takes.
pub struct LiveCall {
    live: Arc<Live>,
    id: u64,
    plan: String,
}

impl LiveCall {
    /// The flow ended with a successful transfer out of `step`: that is an edge too (to the
    /// graph's "transferred" node).
    pub fn transferred(&self, step: &str) {
        self.live.transition(
            &self.plan,
            step.to_string(),
            "transferred".into(),
            TRANSFERRED.into(),
        );
    }
}

impl Observer for LiveCall {
    fn event(&mut self, event: FlowEvent) {
        match event {
            FlowEvent::Step { step, .. } => self.live.set_step(self.id, &step),
            FlowEvent::Transition { step, outcome, to } => {
                self.live.transition(&self.plan, step, outcome, to)
            }
            _ => {}
        }
    }
}

impl Drop for LiveCall {
    fn drop(&mut self) {
        self.live.lock().steps.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn clocked(start: u64) -> (Arc<Live>, Arc<AtomicU64>) {
        let now = Arc::new(AtomicU64::new(start));
        let t = now.clone();
        (
            Arc::new(Live::with_clock(Arc::new(move || {
                t.load(Ordering::Relaxed)
            }))),
            now,
        )
    }

    #[test]
    fn ring_counts_the_last_hour_only() {
        let mut r = Ring::default();
        r.add(100);
        r.add(100);
        r.add(130);
        assert_eq!(r.total(100), 2);
        assert_eq!(r.total(130), 3);
        assert_eq!(r.total(159), 3);
        // Minute 100's bucket is an hour old at 160.
        assert_eq!(r.total(160), 1);
        assert_eq!(r.total(189), 1);
        assert_eq!(r.total(190), 0);
        // The slot of minute 100 is reused by minute 160 (same index), starting from zero.
        r.add(160);
        assert_eq!(r.total(160), 2);
        assert_eq!(r.total(220), 0);
        // Nothing counts from the future (a clock stepped back).
        assert_eq!(r.total(99), 0);
    }

    #[test]
    fn counts_expire_after_an_hour_with_an_injected_clock() {
        let (live, now) = clocked(1_000_000 * 60);
        live.transition("verify", "a".into(), "next".into(), "b".into());
        live.transition("verify", "a".into(), "next".into(), "b".into());
        live.call_ended("verify", "verified");
        now.fetch_add(30 * 60, Ordering::Relaxed);
        live.transition("verify", "b".into(), "failure".into(), "c".into());
        let snap = live.snapshot();
        let plan = &snap.plans["verify"];
        assert_eq!(plan.edge("a", "next", "b"), 2);
        assert_eq!(plan.edge("b", "failure", "c"), 1);
        assert_eq!(plan.outcomes["verified"], 1);
        // 60 minutes after the first events they are gone; the later one stays.
        now.fetch_add(30 * 60, Ordering::Relaxed);
        let snap = live.snapshot();
        let plan = &snap.plans["verify"];
        assert_eq!(plan.edge("a", "next", "b"), 0);
        assert_eq!(plan.edge("b", "failure", "c"), 1);
        assert!(plan.outcomes.is_empty());
        now.fetch_add(30 * 60, Ordering::Relaxed);
        assert!(live.snapshot().plans.is_empty());
    }

    #[test]
    fn caps_hold_and_expired_entries_make_room() {
        let (live, now) = clocked(60 * 60 * 24);
        for i in 0..MAX_EDGES + 10 {
            live.transition("p", format!("s{i}"), "next".into(), "t".into());
        }
        let snap = live.snapshot();
        assert_eq!(snap.plans["p"].edges.len(), MAX_EDGES);
        assert_eq!(snap.dropped, 10);
        for i in 0..MAX_PLANS + 3 {
            live.call_ended(&format!("plan{i}"), "completed");
        }
        assert_eq!(live.snapshot().plans.len(), MAX_PLANS);
        // An hour on, everything has expired and new names get in.
        now.fetch_add(3600, Ordering::Relaxed);
        live.transition("p", "new".into(), "next".into(), "t".into());
        live.call_ended("another", "completed");
        let snap = live.snapshot();
        assert_eq!(snap.plans["p"].edges.len(), 1);
        assert_eq!(snap.plans["another"].outcomes["completed"], 1);
    }

    #[test]
    fn a_call_observer_tracks_its_step_and_forgets_the_call_at_the_end() {
        let (live, _) = clocked(7200);
        {
            let mut call = live.call(7, "verify");
            call.event(FlowEvent::Step {
                step: "welcome".into(),
                kind: "play",
            });
            assert_eq!(live.steps()[&7], "welcome");
            call.event(FlowEvent::Transition {
                step: "welcome".into(),
                outcome: "next".into(),
                to: "ask_id".into(),
            });
            call.event(FlowEvent::Step {
                step: "ask_id".into(),
                kind: "collect",
            });
            assert_eq!(live.steps()[&7], "ask_id");
            call.transferred("to_queue");
        }
        assert!(live.steps().is_empty());
        let snap = live.snapshot();
        assert_eq!(snap.plans["verify"].edge("welcome", "next", "ask_id"), 1);
        assert_eq!(
            snap.plans["verify"].edge("to_queue", "transferred", TRANSFERRED),
            1
        );
    }
}
