//! Operators' numbers: counters and gauges in the Prometheus text format, and the registry of
//! calls in progress that `/status` and `ivrd status` show.
//!
//! Hand-written rather than the `prometheus` crate: a dozen relaxed atomics and one small
//! map cover what ivrd exports, the exposition format is a page of text, and nothing on a hot
//! path (per packet, per digit) takes a lock. Counters owned by other layers (the SIP core's
//! retransmissions, the media engine's packets and late ticks) are read from their own stats
//! at scrape time instead of being copied.

use crate::media::dtmf::DtmfMethod;
use crate::media::engine::{JITTER_BUCKETS_US, MediaStats};
use crate::redact::mask_number;
use crate::sip::core::{CoreStats, REFUSALS};
use crate::sip::transport::TransportStats;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Upper bounds (seconds) of the SMS latency histogram buckets.
const SMS_BUCKETS: [f64; 7] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A call in progress, as `/status` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ActiveCall {
    /// The call's key in the active list (what [`CallGuard::id`] returns).
    #[serde(skip)]
    pub id: u64,
    pub call_id: String,
    /// Masked: status output ends up in tickets and chat.
    pub caller: String,
    pub dialed: String,
    pub dialplan: String,
    /// The SIP transport the call came on: UDP, TCP or TLS.
    pub transport: &'static str,
    #[serde(skip)]
    pub started: Instant,
    pub seconds: u64,
    /// The SRTP suite of the call's media, `None` for plain RTP (or before it is negotiated).
    pub srtp: Option<&'static str>,
}

#[derive(Default)]
pub struct Metrics {
    next_call: AtomicU64,
    active: Mutex<HashMap<u64, ActiveCall>>,
    calls_by_outcome: Mutex<BTreeMap<String, u64>>,
    dtmf: [AtomicU64; 3],
    sms_sent: AtomicU64,
    sms_failed: AtomicU64,
    sms_buckets: [AtomicU64; SMS_BUCKETS.len()],
    sms_latency_ms_sum: AtomicU64,
    pin_checks: Mutex<BTreeMap<&'static str, u64>>,
    guard_refusals: Mutex<BTreeMap<&'static str, u64>>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    pub draining: AtomicBool,
}

/// Removes the call from the active list when dropped (whatever way the call task ends).
pub struct CallGuard<'a> {
    metrics: &'a Metrics,
    id: u64,
}

impl CallGuard<'_> {
    /// The call's key in the active list, for [`Metrics::call_srtp`].
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.metrics
            .active
            .lock()
            .expect("metrics lock")
            .remove(&self.id);
    }
}

impl Metrics {
    pub fn call_started(
        &self,
        call_id: &str,
        caller: &str,
        dialed: &str,
        dialplan: &str,
        transport: &'static str,
    ) -> CallGuard<'_> {
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        self.active.lock().expect("metrics lock").insert(
            id,
            ActiveCall {
                id,
                call_id: call_id.to_string(),
                caller: mask_number(caller),
                dialed: dialed.to_string(),
                dialplan: dialplan.to_string(),
                transport,
                started: Instant::now(),
                seconds: 0,
                srtp: None,
            },
        );
        CallGuard { metrics: self, id }
    }

    /// Records the media security a call negotiated (at answer and at every re-INVITE).
    pub fn call_srtp(&self, id: u64, suite: Option<&'static str>) {
        if let Some(call) = self.active.lock().expect("metrics lock").get_mut(&id) {
            call.srtp = suite;
        }
    }

    /// Declares the label values the counters with labels can take, at zero: the call
    /// outcomes, the PIN check results and the guards. (The caller names them: this module
    /// knows no dialplan or verification type.)
    pub fn declare<'a>(
        &self,
        outcomes: impl IntoIterator<Item = &'a str>,
        pin_results: &[&'static str],
        guards: &[&'static str],
    ) {
        let mut calls = self.calls_by_outcome.lock().expect("metrics lock");
        for o in outcomes {
            calls.entry(o.to_string()).or_default();
        }
        let mut pins = self.pin_checks.lock().expect("metrics lock");
        for r in pin_results {
            pins.entry(r).or_default();
        }
        let mut refusals = self.guard_refusals.lock().expect("metrics lock");
        for g in guards {
            refusals.entry(g).or_default();
        }
    }

    pub fn call_ended(&self, outcome: &str) {
        *self
            .calls_by_outcome
            .lock()
            .expect("metrics lock")
            .entry(outcome.to_string())
            .or_default() += 1;
    }

    pub fn active_calls(&self) -> Vec<ActiveCall> {
        let mut calls: Vec<ActiveCall> = self
            .active
            .lock()
            .expect("metrics lock")
            .values()
            .cloned()
            .map(|mut c| {
                c.seconds = c.started.elapsed().as_secs();
                c
            })
            .collect();
        calls.sort_by_key(|c| std::cmp::Reverse(c.seconds));
        calls
    }

    pub fn active_count(&self) -> usize {
        self.active.lock().expect("metrics lock").len()
    }

    pub fn digit(&self, method: DtmfMethod) {
        let i = match method {
            DtmfMethod::Rfc4733 => 0,
            DtmfMethod::SipInfo => 1,
            DtmfMethod::Inband => 2,
        };
        self.dtmf[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn sms(&self, ok: bool, latency: Duration) {
        if ok {
            self.sms_sent.fetch_add(1, Ordering::Relaxed);
        } else {
            self.sms_failed.fetch_add(1, Ordering::Relaxed);
        }
        let secs = latency.as_secs_f64();
        for (i, le) in SMS_BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.sms_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sms_latency_ms_sum
            .fetch_add(latency.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn pin_check(&self, result: &'static str) {
        *self
            .pin_checks
            .lock()
            .expect("metrics lock")
            .entry(result)
            .or_default() += 1;
    }

    /// A send the fraud guard refused, by guard (`hour-budget`, `country`, `breaker`, ...).
    pub fn guard_refusal(&self, guard: &'static str) {
        *self
            .guard_refusals
            .lock()
            .expect("metrics lock")
            .entry(guard)
            .or_default() += 1;
    }

    pub fn reload(&self, ok: bool) {
        let c = if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(
        &self,
        core: &CoreStats,
        transport: &TransportStats,
        media: &MediaStats,
        started: SystemTime,
    ) -> String {
        let mut out = String::with_capacity(4096);
        let r = Ordering::Relaxed;
        gauge(
            &mut out,
            "ivrd_calls_active",
            "Calls in progress.",
            self.active_count() as f64,
        );
        header(
            &mut out,
            "ivrd_calls_total",
            "counter",
            "Finished calls by outcome.",
        );
        for (outcome, n) in self.calls_by_outcome.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "ivrd_calls_total{{outcome=\"{outcome}\"}} {n}");
        }
        header(
            &mut out,
            "ivrd_pin_checks_total",
            "counter",
            "PIN checks by result.",
        );
        for (result, n) in self.pin_checks.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "ivrd_pin_checks_total{{result=\"{result}\"}} {n}");
        }
        header(
            &mut out,
            "ivrd_guard_refusals_total",
            "counter",
            "PIN SMS the fraud guard refused, by guard.",
        );
        for (guard, n) in self.guard_refusals.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "ivrd_guard_refusals_total{{guard=\"{guard}\"}} {n}");
        }
        header(&mut out, "ivrd_sms_total", "counter", "PIN SMS by result.");
        let _ = writeln!(
            out,
            "ivrd_sms_total{{result=\"sent\"}} {}",
            self.sms_sent.load(r)
        );
        let _ = writeln!(
            out,
            "ivrd_sms_total{{result=\"failed\"}} {}",
            self.sms_failed.load(r)
        );
        let count = self.sms_sent.load(r) + self.sms_failed.load(r);
        histogram(
            &mut out,
            "ivrd_sms_latency_seconds",
            "Time to hand a PIN SMS to the provider.",
            SMS_BUCKETS
                .iter()
                .zip(&self.sms_buckets)
                .map(|(le, n)| (*le, n.load(r))),
            count,
            self.sms_latency_ms_sum.load(r) as f64 / 1000.0,
        );
        header(
            &mut out,
            "ivrd_dtmf_digits_total",
            "counter",
            "Key presses by method (after de-duplication).",
        );
        for (i, m) in ["rfc4733", "info", "inband"].iter().enumerate() {
            let _ = writeln!(
                out,
                "ivrd_dtmf_digits_total{{method=\"{m}\"}} {}",
                self.dtmf[i].load(r)
            );
        }
        counter(
            &mut out,
            "ivrd_sip_retransmissions_total",
            "SIP retransmissions received or sent.",
            core.retransmissions.load(r),
        );
        counter(
            &mut out,
            "ivrd_sip_overload_rejects_total",
            "New INVITEs answered 503 because they waited longer than [sip] overload_reject_ms.",
            core.overload_rejects.load(r),
        );
        counter(
            &mut out,
            "ivrd_sip_requests_total",
            "SIP requests received.",
            core.requests_in.load(r),
        );
        labelled(
            &mut out,
            "ivrd_sip_untrusted_total",
            "Requests (TCP: connections) from sources outside [sip] trusted, by what was done.",
            "action",
            [
                ("dropped", transport.untrusted_dropped.load(r)),
                ("rejected", transport.untrusted_rejected.load(r)),
            ],
        );
        labelled(
            &mut out,
            "ivrd_sip_refused_total",
            "Requests answered 503 for being over a limit: an untrusted source's call rate, \
             unconfirmed INVITEs, transactions or the source table, or the daemon's capacity.",
            "reason",
            REFUSALS
                .iter()
                .zip(&core.refused)
                .map(|(why, n)| (why.as_str(), n.load(r))),
        );
        labelled(
            &mut out,
            "ivrd_sip_bad_messages_total",
            "Messages that did not parse, or were over the size limits.",
            "kind",
            [
                ("malformed", transport.malformed.load(r)),
                ("too_large", transport.too_large.load(r)),
            ],
        );
        gauge(
            &mut out,
            "ivrd_sip_transactions",
            "Server transactions alive.",
            core.server_transactions.load(r) as f64,
        );
        gauge(
            &mut out,
            "ivrd_sip_transaction_bytes",
            "Bytes the server transactions hold, as [sip] max_transaction_kib counts them.",
            core.transaction_bytes.load(r) as f64,
        );
        gauge(
            &mut out,
            "ivrd_sip_unconfirmed_calls",
            "Answered or ringing calls whose ACK has not come yet.",
            core.unconfirmed_calls.load(r) as f64,
        );
        counter(
            &mut out,
            "ivrd_sip_ack_timeouts_total",
            "Calls dropped because their 200 was never ACKed.",
            core.ack_timeouts.load(r),
        );
        gauge(
            &mut out,
            "ivrd_sip_tcp_connections",
            "TCP connections open.",
            transport.tcp_open.load(r) as f64,
        );
        counter(
            &mut out,
            "ivrd_sip_tls_handshake_failures_total",
            "TLS handshakes that failed (bad or missing client certificate, protocol) or stalled.",
            transport.tls_handshake_failures.load(r),
        );
        counter(
            &mut out,
            "ivrd_sip_connects_total",
            "TCP/TLS connections ivrd opened for a dialog's request because the peer's was gone.",
            transport.connects.load(r),
        );
        counter(
            &mut out,
            "ivrd_sip_connect_failures_total",
            "Connections ivrd tried to open and could not (refused, timed out, server certificate not trusted).",
            transport.connect_failures.load(r),
        );
        counter(
            &mut out,
            "ivrd_sip_tcp_refused_total",
            "TCP connections refused at accept: over tcp_max_connections or tcp_max_per_source.",
            transport.tcp_refused.load(r),
        );
        labelled(
            &mut out,
            "ivrd_sip_tcp_closed_total",
            "TCP connections ivrd closed: idle, too slow to send a message, or not reading.",
            "reason",
            [
                ("idle", transport.tcp_closed_idle.load(r)),
                ("slow", transport.tcp_closed_slow.load(r)),
                ("backlog", transport.tcp_closed_backlog.load(r)),
            ],
        );
        counter(
            &mut out,
            "ivrd_sip_responses_total",
            "SIP responses received.",
            core.responses_in.load(r),
        );
        counter(
            &mut out,
            "ivrd_rtp_packets_sent_total",
            "RTP packets sent.",
            media.packets_sent.load(r),
        );
        counter(
            &mut out,
            "ivrd_rtp_packets_received_total",
            "RTP packets received from the caller's learned source.",
            media.packets_received.load(r),
        );
        counter(
            &mut out,
            "ivrd_rtp_foreign_packets_total",
            "RTP packets dropped by strict RTP: from another address than the caller's learned source.",
            media.foreign_packets.load(r),
        );
        counter(
            &mut out,
            "ivrd_srtp_auth_failures_total",
            "SRTP packets dropped for failing authentication (wrong key, forgery, plain RTP on an SRTP stream).",
            media.srtp_auth_failures.load(r),
        );
        counter(
            &mut out,
            "ivrd_srtp_replays_total",
            "SRTP packets dropped as replays (an index already received, or older than the 128-packet window).",
            media.srtp_replays.load(r),
        );
        counter(
            &mut out,
            "ivrd_rtp_send_errors_total",
            "RTP packets the kernel refused.",
            media.send_errors.load(r),
        );
        counter(
            &mut out,
            "ivrd_rtp_ticks_total",
            "Pacing clock ticks (1 ms; every 10 ms while no stream is open).",
            media.ticks.load(r),
        );
        counter(
            &mut out,
            "ivrd_rtp_late_ticks_total",
            "Pacing ticks that started more than 5 ms late.",
            media.late_ticks.load(r),
        );
        counter(
            &mut out,
            "ivrd_rtp_skipped_ticks_total",
            "Pacing ticks given up because the pacer was over 200 ms behind (packets not sent).",
            media.skipped_ticks.load(r),
        );
        let (cumulative, count) = media.send_jitter.cumulative();
        histogram(
            &mut out,
            "ivrd_rtp_send_jitter_seconds",
            "Per stream |interval between consecutive packets - ptime| when handed to the kernel.",
            JITTER_BUCKETS_US
                .iter()
                .zip(cumulative)
                .map(|(le_us, n)| (*le_us as f64 / 1e6, n)),
            count,
            media.send_jitter.sum_ns.load(r) as f64 / 1e9,
        );
        header(
            &mut out,
            "ivrd_reloads_total",
            "counter",
            "Reloads by result.",
        );
        let _ = writeln!(
            out,
            "ivrd_reloads_total{{result=\"ok\"}} {}",
            self.reloads_ok.load(r)
        );
        let _ = writeln!(
            out,
            "ivrd_reloads_total{{result=\"failed\"}} {}",
            self.reloads_failed.load(r)
        );
        let start = started
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        gauge(
            &mut out,
            "ivrd_start_time_seconds",
            "When the daemon started (Unix time).",
            start as f64,
        );
        gauge(
            &mut out,
            "ivrd_draining",
            "1 while shutting down (new calls refused).",
            f64::from(u8::from(self.draining.load(r))),
        );
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A counter with one label, one line per value.
fn labelled<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) {
    header(out, name, "counter", help);
    for (value, n) in values {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
    }
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {v}");
}

/// A histogram from cumulative bucket counts: (upper bound in seconds, observations <= it).
fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    buckets: impl Iterator<Item = (f64, u64)>,
    count: u64,
    sum_seconds: f64,
) {
    header(out, name, "histogram", help);
    for (le, n) in buckets {
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {sum_seconds}");
    let _ = writeln!(out, "{name}_count {count}");
}

fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {v}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_reflects_what_happened() {
        let m = Metrics::default();
        let guard = m.call_started("c1", "+4915112345678", "100", "verify", "UDP");
        assert_eq!(m.active_count(), 1);
        assert_eq!(m.active_calls()[0].srtp, None);
        m.call_srtp(guard.id(), Some("AES_CM_128_HMAC_SHA1_32"));
        assert_eq!(m.active_calls()[0].srtp, Some("AES_CM_128_HMAC_SHA1_32"));
        assert_eq!(m.active_calls()[0].caller, "+49*********78");
        m.digit(DtmfMethod::Rfc4733);
        m.digit(DtmfMethod::Rfc4733);
        m.digit(DtmfMethod::SipInfo);
        m.sms(true, Duration::from_millis(300));
        m.sms(false, Duration::from_secs(3));
        m.pin_check("valid");
        drop(guard);
        m.call_ended("verified");
        let media = MediaStats::default();
        media.foreign_packets.store(7, Ordering::Relaxed);
        media.srtp_auth_failures.store(3, Ordering::Relaxed);
        media.srtp_replays.store(2, Ordering::Relaxed);
        let text = m.render(
            &CoreStats::default(),
            &TransportStats::default(),
            &media,
            SystemTime::now(),
        );
        assert!(text.contains("ivrd_calls_active 0\n"), "{text}");
        assert!(text.contains("ivrd_calls_total{outcome=\"verified\"} 1\n"));
        assert!(text.contains("ivrd_dtmf_digits_total{method=\"rfc4733\"} 2\n"));
        assert!(text.contains("ivrd_dtmf_digits_total{method=\"info\"} 1\n"));
        assert!(text.contains("ivrd_sms_total{result=\"failed\"} 1\n"));
        // 0.3 s falls in the 0.5 bucket and above; 3 s only in 5 and 10.
        assert!(text.contains("ivrd_sms_latency_seconds_bucket{le=\"0.25\"} 0\n"));
        assert!(text.contains("ivrd_sms_latency_seconds_bucket{le=\"0.5\"} 1\n"));
        assert!(text.contains("ivrd_sms_latency_seconds_bucket{le=\"5\"} 2\n"));
        assert!(text.contains("ivrd_sms_latency_seconds_count 2\n"));
        assert!(text.contains("ivrd_pin_checks_total{result=\"valid\"} 1\n"));
        assert!(text.contains("# TYPE ivrd_rtp_foreign_packets_total counter\n"));
        assert!(text.contains("# HELP ivrd_rtp_foreign_packets_total RTP packets dropped"));
        assert!(text.contains("ivrd_rtp_foreign_packets_total 7\n"));
        assert!(text.contains("ivrd_srtp_auth_failures_total 3\n"));
        assert!(text.contains("ivrd_srtp_replays_total 2\n"));
        // Every sample line belongs to a declared metric (a scraper rejects the rest).
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                text.contains(&format!("# TYPE {base} ")),
                "undeclared: {line}"
            );
        }
    }
}
