//! The daemon's [`FlowServices`]: customers from SQLite, PINs from the verifier, SMS through the
//! configured provider. `ivrd simulate` uses the same type with a capturing provider, so a
//! simulated call exercises the real store, limits and lock-outs.
//!
//! SQLite calls are blocking: they run on tokio's blocking pool (`spawn_blocking`) so a slow disk
//! never stalls the tasks that pace RTP and answer SIP.

use crate::dialplan::model::render_sms;
use crate::dialplan::services::{
    CheckPinOutcome, CustomerRecord, FlowServices, HttpError, HttpRequest, HttpResponse, LookupBy,
    LookupOutcome, PinChannel, PinRequest, SendPinOutcome,
};
use crate::redact::mask_number;
use crate::store::{Customer, Store, normalize_phone};
use crate::verify::limits::{SendRefusal, Verifier};
use crate::verify::sms::{SmsMessage, SmsProvider};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tracing::{debug, info, warn};

/// Called with every SMS that was sent and the PIN in it (the simulator types it back).
pub type SentHook = Arc<dyn Fn(&SmsMessage, &str) + Send + Sync>;

/// What all calls share.
pub struct Shared {
    pub store: Arc<Store>,
    pub verifier: Arc<Verifier>,
    pub sms: Arc<dyn SmsProvider>,
    /// Region for numbers without a country code (lookup by the caller's number).
    pub default_region: String,
    pub on_sent: Option<SentHook>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// How long recent real sends took, for decoys to take as long.
    pub send_times: SendTimes,
    /// Where `http` steps' requests go.
    pub http: HttpBackend,
    /// The calls that read PINs out (`send_pin` with `channel = "voice"`), once the daemon
    /// has its SIP core; shared by every snapshot. Empty: no `[outbound]` trunk (or `ivrd
    /// simulate`, which never calls out).
    pub voice: VoiceSlot,
}

/// Where the daemon puts its [`VoiceChannel`](crate::verify::voice::VoiceChannel).
pub type VoiceSlot = Arc<std::sync::OnceLock<crate::verify::voice::VoiceChannel>>;

/// Where `http` steps' requests go: out (the daemon), or to answers from a file (`ivrd
/// simulate`, which must never call the real CRM).
pub enum HttpBackend {
    Client(crate::http_lookup::HttpClient),
    Fakes(crate::http_lookup::HttpFakes),
}

impl HttpBackend {
    async fn send(&self, step: &str, req: &HttpRequest) -> Result<HttpResponse, HttpError> {
        match self {
            HttpBackend::Client(c) => c.send(req).await,
            HttpBackend::Fakes(fakes) => fakes.respond(step, req),
        }
    }
}

/// The last few real SMS sends: how long each took and whether it went out. A decoy send
/// draws one of the recent ones at random and does as it did (waits as long, fails if it
/// failed), so that neither a caller who times the end of a send nor one who calls during a
/// provider outage can tell a decoy from a customer.
#[derive(Default)]
pub struct SendTimes(std::sync::Mutex<std::collections::VecDeque<(Instant, Duration, bool)>>);

impl SendTimes {
    const KEEP: usize = 32;
    /// Older sends say nothing about the provider now.
    const RECENT: Duration = Duration::from_secs(300);
    /// Before any real send: a typical provider round trip, and a success.
    const DEFAULT: (Duration, bool) = (Duration::from_millis(400), true);

    pub fn record(&self, took: Duration, sent: bool) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() == Self::KEEP {
            q.pop_front();
        }
        q.push_back((Instant::now(), took, sent));
    }

    /// How long a decoy send takes, and whether it "goes out".
    pub fn sample(&self) -> (Duration, bool) {
        use rand::Rng;
        let q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let recent: Vec<(Duration, bool)> = q
            .iter()
            .filter(|(at, _, _)| at.elapsed() < Self::RECENT)
            .map(|&(_, took, sent)| (took, sent))
            .collect();
        if recent.is_empty() {
            return Self::DEFAULT;
        }
        recent[rand::rng().random_range(0..recent.len())]
    }
}

/// The services for one call (the SMS texts come with each request, from the plan that
/// sends).
#[derive(Clone)]
pub struct CallServices {
    pub shared: Arc<Shared>,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => Some(v),
        Err(e) => {
            warn!(error = %e, "store task failed");
            None
        }
    }
}

impl FlowServices for CallServices {
    async fn lookup_customer(&self, by: LookupBy, value: &str) -> LookupOutcome {
        let shared = self.shared.clone();
        let value = value.to_string();
        let r = blocking(move || -> Result<LookupOutcome, String> {
            let found = match by {
                LookupBy::Id => shared
                    .store
                    .find_customer(&value)
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .collect::<Vec<_>>(),
                LookupBy::Mobile => match normalize_phone(&value, &shared.default_region) {
                    Ok(e164) => shared
                        .store
                        .find_by_mobile(&e164)
                        .map_err(|e| e.to_string())?,
                    // A caller number we cannot read matches nobody.
                    Err(_) => Vec::new(),
                },
            };
            // A disabled customer is "not found": same prompts, same timing (no enumeration).
            let mut enabled: Vec<_> = found.into_iter().filter(|c| c.enabled).collect();
            match enabled.len() {
                0 => Ok(LookupOutcome::NotFound),
                1 => {
                    let c = enabled.remove(0);
                    if shared
                        .verifier
                        .is_locked(&c.id, SystemTime::now())
                        .map_err(|e| e.to_string())?
                    {
                        return Ok(LookupOutcome::LockedOut);
                    }
                    Ok(LookupOutcome::Found(customer_record(c)))
                }
                _ => Ok(LookupOutcome::Ambiguous),
            }
        })
        .await;
        match r {
            Some(Ok(o)) => o,
            Some(Err(e)) => LookupOutcome::Error(e),
            None => LookupOutcome::Error("store task failed".into()),
        }
    }

    async fn send_pin(&self, req: &PinRequest) -> SendPinOutcome {
        let shared = self.shared.clone();
        // The send is recorded at this instant, and refunded by it if nothing goes out.
        let wall = SystemTime::now();
        if req.decoy {
            return self.send_decoy(req, wall).await;
        }
        let r = {
            let req = req.clone();
            let shared = shared.clone();
            blocking(move || {
                let customer = shared
                    .store
                    .find_customer(&req.customer_id)
                    .map_err(|e| e.to_string())?;
                let Some(customer) = customer else {
                    return Err("customer vanished".to_string());
                };
                let pin = shared.verifier.prepare_pin_to(
                    &req.customer_id,
                    &customer.mobile,
                    &req.caller,
                    req.length,
                    Instant::now(),
                    wall,
                );
                Ok((customer, pin))
            })
            .await
        };
        let (customer, pin) = match r {
            Some(Ok((c, Ok(pin)))) => (c, pin),
            Some(Ok((_, Err(refusal)))) => {
                info!(customer = %req.customer_id, refusal = ?refusal, "PIN not sent");
                if let SendRefusal::Guard(g) = &refusal {
                    shared.metrics.guard_refusal(g.as_str());
                }
                return refusal.to_outcome();
            }
            Some(Err(e)) => return SendPinOutcome::Failed(e),
            None => return SendPinOutcome::Failed("store task failed".into()),
        };
        let minutes = shared.verifier.limits().pin_minutes();
        if req.channel == PinChannel::Voice {
            return self.call_pin(req, &customer, pin, minutes);
        }
        let Some(template) = req.template.as_deref() else {
            shared.verifier.send_failed(&req.customer_id, &pin);
            return SendPinOutcome::Failed(format!("no SMS text for language {}", req.language));
        };
        let text = render_sms(template, pin.expose(), minutes, &customer.name);
        let msg = SmsMessage {
            // Only ever the number on file (never one the caller typed): SMS pumping guard.
            to: customer.mobile.clone(),
            text,
            reference: uuid::Uuid::new_v4().to_string(),
            ttl: shared.verifier.limits().pin_ttl(),
        };
        let started = Instant::now();
        let sent = shared.sms.send(&msg).await;
        shared.metrics.sms(sent.is_ok(), started.elapsed());
        shared.send_times.record(started.elapsed(), sent.is_ok());
        match sent {
            Ok(receipt) => {
                info!(
                    customer = %req.customer_id,
                    to = %mask_number(&msg.to),
                    resend = pin.issue() == crate::verify::pin::Issue::Resend,
                    provider = receipt.provider,
                    ms = started.elapsed().as_millis() as u64,
                    "PIN sent"
                );
                if let Some(hook) = &shared.on_sent {
                    hook(&msg, pin.expose());
                }
                SendPinOutcome::Sent { minutes }
            }
            Err(e) if e.nothing_sent() => {
                // Nothing went out (refused, or the provider unreachable): void the PIN and
                // take the send back, so an outage or a refused number costs the customer
                // none of their quota.
                let (id, caller) = (req.customer_id.clone(), req.caller.clone());
                let refunded =
                    blocking(move || shared.verifier.refund_send(&id, &caller, &pin, wall)).await;
                warn!(customer = %req.customer_id, error = %e,
                    counted = !matches!(refunded, Some(Ok(true))), "SMS failed; nothing was sent");
                SendPinOutcome::Failed(e.to_string())
            }
            Err(e) => {
                // It may have gone out: void a new PIN (the caller cannot be told it), but the
                // send counts, so a provider that times out is no way around the limits.
                shared.verifier.send_failed(&req.customer_id, &pin);
                warn!(customer = %req.customer_id, error = %e, "SMS may or may not have been sent; counted");
                SendPinOutcome::Failed(e.to_string())
            }
        }
    }

    async fn check_pin(&self, customer_id: &str, input: &str, decoy: bool) -> CheckPinOutcome {
        let shared = self.shared.clone();
        let id = customer_id.to_string();
        let input = zeroize::Zeroizing::new(input.to_string());
        let metrics = self.shared.metrics.clone();
        let outcome = blocking(move || {
            if decoy {
                // Counted like any check: a metric that moved only for real customers would
                // be an oracle for whoever can read it (it is not the audit).
                return shared
                    .verifier
                    .check_decoy(&id, &input, Instant::now(), SystemTime::now());
            }
            shared
                .verifier
                .check_pin(&id, &input, Instant::now(), SystemTime::now())
        })
        .await
        // A store failure must not let a caller through: fail closed.
        .unwrap_or(CheckPinOutcome::LockedOut);
        metrics.pin_check(pin_check_label(&outcome));
        outcome
    }

    async fn http(&self, step: &str, req: &HttpRequest) -> Result<HttpResponse, HttpError> {
        let started = Instant::now();
        let answer = self.shared.http.send(step, req).await;
        match &answer {
            Ok(r) => {
                debug!(%step, status = r.status, took_ms = started.elapsed().as_millis() as u64, "http step")
            }
            Err(e) => {
                warn!(%step, error = %e, took_ms = started.elapsed().as_millis() as u64, "http step failed")
            }
        }
        answer
    }
}

impl CallServices {
    /// Places the call that reads `pin` to the customer's number on file; the step goes on
    /// once it is placed (the caller waits for it on the line they are on). The call's
    /// outcome is logged and audited (`voice-answered`, `voice-busy`, ...) when it is over.
    fn call_pin(
        &self,
        req: &PinRequest,
        customer: &crate::store::Customer,
        pin: crate::verify::pin::Pin,
        minutes: u32,
    ) -> SendPinOutcome {
        let shared = self.shared.clone();
        let Some(voice) = shared.voice.get() else {
            if let Some(hook) = &shared.on_sent {
                // `ivrd simulate`: nobody is called; the admin is shown the code instead.
                let msg = SmsMessage {
                    to: customer.mobile.clone(),
                    text: format!("(read out by a call) {}", pin.expose()),
                    reference: String::new(),
                    ttl: shared.verifier.limits().pin_ttl(),
                };
                hook(&msg, pin.expose());
                return SendPinOutcome::Sent { minutes };
            }
            shared.verifier.send_failed(&req.customer_id, &pin);
            warn!(customer = %req.customer_id, "PIN by call asked for, but [outbound] has no trunk");
            return SendPinOutcome::Failed("calls out need an [outbound] trunk".into());
        };
        let job = crate::verify::voice::VoiceJob {
            // Only ever the number on file, as for SMS.
            to: customer.mobile.clone(),
            code: zeroize::Zeroizing::new(pin.expose().to_string()),
            language: req.language.clone(),
            reference: format!("customer {}", req.customer_id),
        };
        let (store, id, caller, to) = (
            shared.store.clone(),
            req.customer_id.clone(),
            req.caller.clone(),
            customer.mobile.clone(),
        );
        let transport = voice.protocol().via_name();
        let dialed = voice.dial(job, move |report| {
            let row = crate::store::AuditRow {
                call_id: report
                    .call_id
                    .clone()
                    .unwrap_or_else(|| format!("{}-pin-call", uuid::Uuid::new_v4().simple())),
                caller,
                dialed: to,
                customer_id: Some(id),
                outcome: format!("voice-{}", report.delivery.as_str()),
                started_at: report.started,
                ended_at: report.ended,
                dtmf_methods: String::new(),
                detail: Some(format!(
                    "pin call delivery={} sip_status={}: {}",
                    report.delivery.as_str(),
                    report.status.map_or("-".to_string(), |s| s.to_string()),
                    report.reason
                )),
                transfer: None,
                transport: Some(transport.into()),
                srtp: report.srtp.map(str::to_string),
            };
            tokio::task::spawn_blocking(move || {
                if let Err(e) = store.write_audit(&row) {
                    tracing::error!(error = %e, "cannot write the PIN call's audit row");
                }
            });
        });
        if !dialed {
            shared.verifier.send_failed(&req.customer_id, &pin);
            warn!(customer = %req.customer_id, "PIN call not placed: every line is taken");
            return SendPinOutcome::Failed("every line for calls out is taken".into());
        }
        info!(customer = %req.customer_id, to = %mask_number(&customer.mobile), "PIN call placed");
        SendPinOutcome::Sent { minutes }
    }

    /// A send for a decoy customer: admitted against the limits like a real one, then as long
    /// a wait as a real send took; nothing goes out. The log says so at debug only, as it
    /// says nothing at info for an unknown id either (the audit row has the truth).
    async fn send_decoy(&self, req: &PinRequest, wall: SystemTime) -> SendPinOutcome {
        let shared = self.shared.clone();
        let (subject, caller, length) = (req.customer_id.clone(), req.caller.clone(), req.length);
        let admitted = blocking(move || {
            shared
                .verifier
                .prepare_decoy(&subject, &caller, length, Instant::now(), wall)
        })
        .await;
        match admitted {
            // A real PIN call goes on as soon as it is placed: so does a decoy's.
            Some(Ok(())) if req.channel == PinChannel::Voice => SendPinOutcome::Sent {
                minutes: self.shared.verifier.limits().pin_minutes(),
            },
            Some(Ok(())) => {
                let (took, sent) = self.shared.send_times.sample();
                tokio::time::sleep(took).await;
                tracing::debug!(customer = %req.customer_id, sent, "decoy: no SMS sent");
                if sent {
                    SendPinOutcome::Sent {
                        minutes: self.shared.verifier.limits().pin_minutes(),
                    }
                } else {
                    // As a customer's send does in an outage (the decoy's own is not
                    // refunded: nothing is counted against a customer).
                    SendPinOutcome::Failed("the SMS provider is failing".into())
                }
            }
            Some(Err(refusal)) => {
                info!(refusal = ?refusal, "PIN not sent (decoy)");
                if let SendRefusal::Guard(g) = &refusal {
                    self.shared.metrics.guard_refusal(g.as_str());
                }
                refusal.to_outcome()
            }
            None => SendPinOutcome::Failed("store task failed".into()),
        }
    }
}

/// A stored customer as a dialplan sees it: its fields by name for `${customer.<field>}`,
/// the reserved ones (id, name, mobile, language) included. The store keeps its own type and
/// knows nothing of dialplans; this module is where the two meet.
pub fn customer_record(c: Customer) -> CustomerRecord {
    let mut fields = c.extra;
    // Reserved names cannot be extra fields (validation refuses them), so nothing is lost.
    fields.insert("id".into(), c.id.clone());
    fields.insert("name".into(), c.name.clone());
    fields.insert("mobile".into(), c.mobile.clone());
    // Present even when unset, so `${customer.language}` renders empty instead of failing.
    fields.insert("language".into(), c.language.clone().unwrap_or_default());
    CustomerRecord {
        id: c.id,
        name: c.name,
        mobile: c.mobile,
        language: c.language,
        fields,
    }
}

/// The `ivrd_pin_checks_total{result}` label of a PIN check.
fn pin_check_label(outcome: &CheckPinOutcome) -> &'static str {
    match outcome {
        CheckPinOutcome::Valid => "valid",
        CheckPinOutcome::Invalid { .. } => "invalid",
        CheckPinOutcome::Exhausted => "exhausted",
        CheckPinOutcome::Expired => "expired",
        CheckPinOutcome::LockedOut => "locked-out",
    }
}

/// Every PIN check label, for the zeros the metrics export before the first check.
pub const PIN_CHECK_LABELS: [&str; 5] = ["valid", "invalid", "exhausted", "expired", "locked-out"];

/// Every label series the daemon's metrics can have, declared at zero so that `rate()` and
/// `increase()` alerts see a series from the start rather than only after the first event.
pub fn declare_metric_labels(metrics: &crate::metrics::Metrics) {
    metrics.declare(
        crate::dialplan::Outcome::ALL.iter().map(|o| o.as_str()),
        &PIN_CHECK_LABELS,
        &crate::verify::guard::GuardRefusal::ALL.map(|g| g.as_str()),
    );
}

#[cfg(test)]
mod send_times_tests {
    use super::*;

    #[test]
    fn a_decoy_does_as_recent_real_sends_did() {
        let t = SendTimes::default();
        assert_eq!(t.sample(), SendTimes::DEFAULT);
        t.record(Duration::from_millis(1500), false);
        for _ in 0..20 {
            assert_eq!(t.sample(), (Duration::from_millis(1500), false));
        }
        t.record(Duration::from_millis(80), true);
        let draws: Vec<_> = (0..200).map(|_| t.sample()).collect();
        assert!(draws.contains(&(Duration::from_millis(80), true)));
        assert!(draws.contains(&(Duration::from_millis(1500), false)));
        for i in 0..40 {
            t.record(Duration::from_millis(i), true);
        }
        assert!((0..200).all(|_| t.sample().1), "only the last 32 are kept");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewCustomer;

    #[test]
    fn customer_record_carries_all_fields() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("ivrd.sqlite")).unwrap();
        store
            .add_customer(&NewCustomer {
                id: "123456".into(),
                name: "Erika Mustermann".into(),
                mobile: "+491701234567".into(),
                language: Some("de".into()),
                extra: [("branch".to_string(), "Köln".to_string())].into(),
            })
            .unwrap();
        let record = customer_record(store.find_customer("123456").unwrap().unwrap());
        assert_eq!(record.id, "123456");
        assert_eq!(record.mobile, "+491701234567");
        assert_eq!(record.language.as_deref(), Some("de"));
        assert_eq!(record.fields["id"], "123456");
        assert_eq!(record.fields["name"], "Erika Mustermann");
        assert_eq!(record.fields["mobile"], "+491701234567");
        assert_eq!(record.fields["language"], "de");
        assert_eq!(record.fields["branch"], "Köln");
        assert_eq!(record.fields.len(), 5);
    }
}
