//! What the API's endpoints do, without HTTP: start a verification (send a code), check a
//! code, resend, cancel, read one. The PIN engine, limits, fraud guard and audit are the
//! IVR's ([`Verifier`](crate::verify::limits::Verifier), [`Store`](crate::store::Store)), so
//! a customer locked out on the phone is locked out here
//! too, and the other way round.
//!
//! Statuses follow Twilio Verify and tyntec 2FA: `pending` until the right code
//! (`approved`), too many wrong ones (`max_attempts_reached`), the code's validity ending
//! (`expired`, noticed on the next request), the client's `cancel` (`canceled`), or no code
//! sent at all (`failed`). Every final status writes one audit row, named after the key.

use super::ApiError;
use crate::config::ApiConfig;
use crate::dialplan::model::render_sms;
use crate::dialplan::services::{CheckPinOutcome, GuardKind, SendPinOutcome};
use crate::services::Shared;
use crate::store::{AuditRow, Verification, VerificationStatus, normalize_phone, not_mobile};
use crate::verify::limits::{ApiSubject, SendRefusal};
use crate::verify::sms::SmsMessage;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tracing::{info, warn};

/// The longest code a check accepts (the longest a PIN can be).
const MAX_CODE: usize = 10;

/// What a request works with: the configuration current when it arrived.
#[derive(Clone)]
pub struct ApiContext {
    pub shared: Arc<Shared>,
    pub cfg: Arc<ApiConfig>,
    /// Calls that read codes out, with `[outbound]` set.
    pub voice: Option<crate::verify::voice::VoiceChannel>,
}

/// `POST /v1/verifications`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// The phone number, in any format the phone-number crate reads (national numbers in
    /// `[store] default_region`).
    pub to: String,
    /// `sms`, `voice` or `auto` (default `sms`).
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub locale: Option<String>,
    /// A template name under `[api.templates]` (default `default`).
    #[serde(default)]
    pub template: Option<String>,
}

/// A verification and, after a check, the tries the code has left.
#[derive(Debug, Clone)]
pub struct Answer {
    pub verification: Verification,
    /// Whether this request created it (a start that found a pending one resends its code).
    pub created: bool,
    pub tries_left: Option<u32>,
}

impl Answer {
    /// A verification that existed before the request.
    fn of(verification: Verification) -> Answer {
        Answer {
            verification,
            created: false,
            tries_left: None,
        }
    }
}

impl ApiContext {
    fn verifier(&self) -> &crate::verify::limits::Verifier {
        &self.shared.verifier
    }

    /// Starts a verification: or, when this key has one pending for the number, sends its
    /// code again (the same code while it is valid, as the IVR's resend does).
    pub async fn start(&self, key: &str, req: StartRequest) -> Result<Answer, ApiError> {
        let to = normalize_phone(&req.to, &self.shared.default_region)
            .map_err(|e| ApiError::bad("invalid_number", format!("\"to\": {e}")))?;
        let channel = self.channel(req.channel.as_deref(), &to)?;
        if let (Some(kind), "sms") = (not_mobile(&to), channel) {
            return Err(ApiError::bad(
                "not_mobile",
                format!("{to} is {kind}: no SMS reaches it"),
            ));
        }
        let locale = req
            .locale
            .clone()
            .unwrap_or_else(|| self.cfg.default_locale.clone());
        let template = req.template.clone().unwrap_or_else(|| "default".into());
        if self.cfg.text(&template, &locale).is_none() {
            return Err(ApiError::bad(
                "unknown_template",
                format!("no text for template {template:?} in locale {locale:?}"),
            ));
        }
        let this = self.clone();
        let key = key.to_string();
        blocking(move || this.start_blocking(&key, &to, channel, &locale, &template)).await?
    }

    fn start_blocking(
        &self,
        key: &str,
        to: &str,
        channel: &str,
        locale: &str,
        template: &str,
    ) -> Result<Answer, ApiError> {
        let store = self.verifier().store();
        let customers = store.find_by_mobile(to).map_err(ApiError::store)?;
        let customer = match customers.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        };
        let subject = match &customer {
            Some(c) => c.id.clone(),
            None => format!("tel:{to}"),
        };
        let wall = SystemTime::now();
        let pending = store
            .pending_verification(&subject, key)
            .map_err(ApiError::store)?
            .filter(|v| v.expires_at > wall);
        let (mut v, mut created) = match pending {
            Some(v) => (v, false),
            None => (
                Verification {
                    id: format!("VE{}", uuid::Uuid::new_v4().simple()),
                    key_name: key.to_string(),
                    to: to.to_string(),
                    subject,
                    customer_id: customer.as_ref().map(|c| c.id.clone()),
                    channel: channel.to_string(),
                    locale: locale.to_string(),
                    template: template.to_string(),
                    status: VerificationStatus::Pending,
                    sends: 0,
                    checks: 0,
                    created_at: wall,
                    updated_at: wall,
                    expires_at: wall,
                    delivery: None,
                },
                true,
            ),
        };
        // A start that finds one pending resends over the channel asked for now.
        v.channel = channel.to_string();
        let name = customer.map(|c| c.name).unwrap_or_default();
        match self.send(key, &mut v, &name, wall) {
            Ok(()) => {}
            Err(e) if created && matches!(e.code, "sms_failed" | "voice_unavailable") => {
                // Nothing went out: the verification is kept as failed, for its audit row.
                // (A refusal by the limits creates none: the client is told to wait.)
                v.status = VerificationStatus::Failed;
                v.updated_at = SystemTime::now();
                store.insert_verification(&v).map_err(ApiError::store)?;
                self.audit(&v);
                self.notify(&v);
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        if created {
            let (recorded, fresh) = store
                .start_verification(&v, wall)
                .map_err(ApiError::store)?;
            if fresh {
                self.notify(&v);
            } else {
                // Another node started this one's verification since we looked: the code
                // that went out is a resend of that one (the same digits with shared PINs).
                info!(verification = %recorded.id, key, "joined a verification started meanwhile");
                v = recorded;
                created = false;
            }
        } else {
            // A resend leaves the status pending; if another node ended the verification
            // meanwhile, its state stands (the code went out regardless).
            store
                .update_verification(&v, VerificationStatus::Pending)
                .map_err(ApiError::store)?;
        }
        info!(verification = %v.id, key, created, "API verification code sent");
        Ok(Answer {
            verification: v,
            created,
            tries_left: None,
        })
    }

    /// Admits and sends one code for `v` (its first or a resend), updating its counts and
    /// expiry. Runs on a blocking thread: the SMS is sent from it on the runtime.
    fn send(
        &self,
        key: &str,
        v: &mut Verification,
        name: &str,
        wall: SystemTime,
    ) -> Result<(), ApiError> {
        let subject = api_subject(v);
        let caller = format!("api:{key}");
        let pin = self
            .verifier()
            .prepare_api_pin(
                &subject,
                &v.to,
                &caller,
                self.cfg.sends_per_key,
                self.cfg.code_length,
                Instant::now(),
                wall,
            )
            .map_err(|r| self.refusal(r))?;
        let limits = self.verifier().limits();
        if v.channel == "voice" {
            let subject_key = subject.key().to_string();
            self.call(key, v, &pin).inspect_err(|_| {
                self.verifier().send_failed(&subject_key, &pin);
            })?;
        } else {
            let Some(template) = self.cfg.text(&v.template, &v.locale) else {
                self.verifier().send_failed(subject.key(), &pin);
                return Err(ApiError::bad(
                    "unknown_template",
                    format!("no text for template {:?} in {:?}", v.template, v.locale),
                ));
            };
            let msg = SmsMessage {
                to: v.to.clone(),
                text: render_sms(&template, pin.expose(), limits.pin_minutes(), name),
                reference: v.id.clone(),
                ttl: limits.pin_ttl(),
            };
            let started = Instant::now();
            let sent = tokio::runtime::Handle::current().block_on(self.shared.sms.send(&msg));
            self.shared.metrics.sms(sent.is_ok(), started.elapsed());
            if let Err(e) = sent {
                warn!(verification = %v.id, error = %e, "API verification code not sent");
                self.verifier().send_failed(subject.key(), &pin);
                return Err(ApiError::new(
                    502,
                    "sms_failed",
                    format!("the SMS provider did not take the message: {e}"),
                ));
            }
            v.delivery = Some("sent".into());
        }
        if pin.issue() == crate::verify::pin::Issue::New {
            v.expires_at = wall + limits.pin_ttl();
        }
        v.sends += 1;
        v.updated_at = wall;
        Ok(())
    }

    /// Calls `v.to` to read `pin` out; the call's outcome is recorded when it is over
    /// ([`ApiContext::call_over`]). Fails only when no call could start.
    fn call(
        &self,
        key: &str,
        v: &mut Verification,
        pin: &crate::verify::pin::Pin,
    ) -> Result<(), ApiError> {
        let Some(voice) = &self.voice else {
            return Err(ApiError::new(
                501,
                "voice_unavailable",
                "codes by voice call need an [outbound] trunk on this ivrd".into(),
            ));
        };
        let job = crate::verify::voice::VoiceJob {
            to: v.to.clone(),
            code: zeroize::Zeroizing::new(pin.expose().to_string()),
            language: v.locale.clone(),
            reference: v.id.clone(),
        };
        let (this, key, id) = (self.clone(), key.to_string(), v.id.clone());
        let dialed = voice.dial(job, move |report| {
            tokio::task::spawn_blocking(move || this.call_over(&key, &id, &report));
        });
        if !dialed {
            return Err(ApiError::limited(
                "voice_lines_busy",
                "every line for calls out is taken; try again shortly".into(),
                Duration::from_secs(30),
            ));
        }
        v.delivery = Some("calling".into());
        Ok(())
    }

    /// A code call is over: its outcome goes into the verification (`delivery`, called back
    /// like a status change) and into an audit row of its own.
    fn call_over(&self, key: &str, id: &str, report: &crate::verify::voice::VoiceReport) {
        let store = self.verifier().store();
        let delivery = report.delivery.as_str();
        if let Err(e) = store.set_verification_delivery(id, delivery, report.ended) {
            tracing::error!(verification = %id, error = %e, "cannot record the call's outcome");
        }
        let v = match store.verification(id) {
            Ok(Some(v)) => v,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(verification = %id, error = %e, "cannot read the verification");
                return;
            }
        };
        info!(verification = %id, delivery, "code call over");
        self.notify(&v);
        let heard = match report.heard {
            Some(crate::verify::voice::Heard::Read { times }) => format!("read {times}x"),
            Some(crate::verify::voice::Heard::NoKey) => "no key".into(),
            None => "not read".into(),
        };
        let row = AuditRow {
            call_id: report
                .call_id
                .clone()
                .unwrap_or_else(|| format!("{id}-call-{}", v.sends)),
            caller: format!("api:{key}"),
            dialed: v.to.clone(),
            customer_id: v.customer_id.clone(),
            outcome: format!("voice-{delivery}"),
            started_at: report.started,
            ended_at: report.ended,
            dtmf_methods: String::new(),
            detail: Some(format!(
                "api verification={id} delivery={delivery} sip_status={} code={heard}: {}",
                report.status.map_or("-".to_string(), |s| s.to_string()),
                report.reason
            )),
            transfer: None,
            transport: Some(
                self.voice
                    .as_ref()
                    .map_or("SIP", |c| c.protocol().via_name())
                    .into(),
            ),
            srtp: report.srtp.map(str::to_string),
        };
        if let Err(e) = store.write_audit(&row) {
            tracing::error!(verification = %id, error = %e, "cannot write the call's audit row");
        }
    }

    /// A refusal as the API answers it: 429 with Retry-After for the limits, 403 for a
    /// destination the guard does not text.
    fn refusal(&self, r: SendRefusal) -> ApiError {
        let limits = self.verifier().limits();
        match r {
            SendRefusal::CustomerRateLimited => ApiError::limited(
                "number_rate_limited",
                "too many codes for this number; wait before asking again".into(),
                limits.sms_window(),
            ),
            SendRefusal::CallerRateLimited => ApiError::limited(
                "key_rate_limited",
                "this API key sent too many codes; wait before asking again".into(),
                limits.sms_window(),
            ),
            SendRefusal::LockedOut => ApiError::limited(
                "locked_out",
                "too many wrong codes for this number; it is locked for a while".into(),
                limits.failure_window(),
            ),
            other => match other.to_outcome() {
                SendPinOutcome::Guarded(GuardKind::Country) => ApiError::new(
                    403,
                    "destination_refused",
                    "codes are not sent to this country".into(),
                ),
                SendPinOutcome::Guarded(_) => ApiError::limited(
                    "guard_refused",
                    "the SMS budget is spent or sends to this destination are paused".into(),
                    Duration::from_secs(3600),
                ),
                _ => ApiError::new(503, "unavailable", format!("cannot send now: {other}")),
            },
        }
    }

    /// The channel a request asks for: `sms` by default; `auto` is SMS for mobiles and a
    /// call for the rest; a call needs `[outbound]`.
    fn channel(&self, requested: Option<&str>, to: &str) -> Result<&'static str, ApiError> {
        let voice = match requested.unwrap_or("sms") {
            "sms" => false,
            "auto" => not_mobile(to).is_some(),
            "voice" => true,
            other => {
                return Err(ApiError::bad(
                    "invalid_channel",
                    format!("\"channel\": {other:?} is not sms, voice or auto"),
                ));
            }
        };
        if !voice {
            return Ok("sms");
        }
        if self.voice.is_none() {
            return Err(ApiError::new(
                501,
                "voice_unavailable",
                "codes by voice call need an [outbound] trunk on this ivrd; use channel sms \
                 (with auto: this number is not a mobile)"
                    .into(),
            ));
        }
        Ok("voice")
    }

    /// Checks a code.
    pub async fn check(&self, key: &str, id: &str, code: &str) -> Result<Answer, ApiError> {
        if code.is_empty() || code.len() > MAX_CODE || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::bad(
                "invalid_code",
                format!("\"code\" must be 1 to {MAX_CODE} digits"),
            ));
        }
        let (this, key, id, code) = (
            self.clone(),
            key.to_string(),
            id.to_string(),
            zeroize::Zeroizing::new(code.to_string()),
        );
        blocking(move || {
            let mut v = this.pending(&key, &id)?;
            let before = v.status;
            let outcome = this.verifier().check_api_pin(
                &api_subject(&v),
                &v.to,
                &code,
                Instant::now(),
                SystemTime::now(),
            );
            v.checks += 1;
            let mut tries_left = None;
            v.status = match outcome {
                CheckPinOutcome::Valid => VerificationStatus::Approved,
                CheckPinOutcome::Invalid { tries_left: t } => {
                    tries_left = Some(t);
                    VerificationStatus::Pending
                }
                CheckPinOutcome::Exhausted | CheckPinOutcome::LockedOut => {
                    VerificationStatus::MaxAttemptsReached
                }
                CheckPinOutcome::Expired => VerificationStatus::Expired,
            };
            this.save(&mut v, before)?;
            Ok(Answer {
                verification: v,
                created: false,
                tries_left,
            })
        })
        .await?
    }

    /// Sends the code again (the same one while it is valid).
    pub async fn resend(
        &self,
        key: &str,
        id: &str,
        requested: Option<String>,
    ) -> Result<Answer, ApiError> {
        let (this, key, id) = (self.clone(), key.to_string(), id.to_string());
        blocking(move || {
            let mut v = this.pending(&key, &id)?;
            if let Some(requested) = requested.as_deref() {
                v.channel = this.channel(Some(requested), &v.to)?.to_string();
            }
            if let (Some(kind), "sms") = (not_mobile(&v.to), v.channel.as_str()) {
                return Err(ApiError::bad(
                    "not_mobile",
                    format!("{} is {kind}: no SMS reaches it", v.to),
                ));
            }
            let name = match &v.customer_id {
                Some(c) => this
                    .verifier()
                    .store()
                    .find_customer(c)
                    .map_err(ApiError::store)?
                    .map(|c| c.name)
                    .unwrap_or_default(),
                None => String::new(),
            };
            this.send(&key, &mut v, &name, SystemTime::now())?;
            this.save(&mut v, VerificationStatus::Pending)?;
            Ok(Answer::of(v))
        })
        .await?
    }

    /// Cancels a pending verification; its code is void.
    pub async fn cancel(&self, key: &str, id: &str) -> Result<Answer, ApiError> {
        let (this, key, id) = (self.clone(), key.to_string(), id.to_string());
        blocking(move || {
            let mut v = this.pending(&key, &id)?;
            this.verifier().revoke_pin(&v.subject);
            v.status = VerificationStatus::Canceled;
            this.save(&mut v, VerificationStatus::Pending)?;
            Ok(Answer::of(v))
        })
        .await?
    }

    /// One verification (a pending one past its expiry is expired now).
    pub async fn get(&self, key: &str, id: &str) -> Result<Answer, ApiError> {
        let (this, key, id) = (self.clone(), key.to_string(), id.to_string());
        blocking(move || {
            let mut v = this.find(&key, &id)?;
            if v.status == VerificationStatus::Pending && v.expires_at <= SystemTime::now() {
                v.status = VerificationStatus::Expired;
                this.save(&mut v, VerificationStatus::Pending)?;
            }
            Ok(Answer::of(v))
        })
        .await?
    }

    /// The key's verification `id` (another key's is not found: ids are no way into
    /// another application's verifications).
    fn find(&self, key: &str, id: &str) -> Result<Verification, ApiError> {
        match self.verifier().store().verification(id) {
            Ok(Some(v)) if v.key_name == key => Ok(v),
            Ok(_) => Err(ApiError::new(
                404,
                "not_found",
                format!("no verification {id:?}"),
            )),
            Err(e) => Err(ApiError::store(e)),
        }
    }

    /// [`ApiContext::find`], for a change: it must be pending (and not past its expiry,
    /// which makes it expired here and now).
    fn pending(&self, key: &str, id: &str) -> Result<Verification, ApiError> {
        let mut v = self.find(key, id)?;
        if v.status == VerificationStatus::Pending && v.expires_at <= SystemTime::now() {
            v.status = VerificationStatus::Expired;
            self.save(&mut v, VerificationStatus::Pending)?;
        }
        if v.status != VerificationStatus::Pending {
            return Err(ApiError::new(
                409,
                "not_pending",
                format!("verification {id} is {}", v.status.as_str()),
            ));
        }
        Ok(v)
    }

    /// Writes a change; a new status is called back, and a final one audited.
    /// Written only over the status it was read with: if another node (another check, a
    /// cancel) changed it meanwhile, that change stands and `v` becomes the row as it is.
    fn save(&self, v: &mut Verification, before: VerificationStatus) -> Result<(), ApiError> {
        v.updated_at = SystemTime::now();
        let store = self.verifier().store();
        if !store
            .update_verification(v, before)
            .map_err(ApiError::store)?
        {
            if let Some(current) = store.verification(&v.id).map_err(ApiError::store)? {
                *v = current;
            }
            return Ok(());
        }
        if v.status != before {
            self.notify(v);
            if v.status.is_final() {
                self.audit(v);
            }
        }
        Ok(())
    }

    /// Queues the status callback of `v` (with `[api] webhook_url` set).
    fn notify(&self, v: &Verification) {
        if self.cfg.webhook_url.is_empty() {
            return;
        }
        let now = SystemTime::now();
        let body = super::webhooks::body(v, now);
        if let Err(e) = self.verifier().store().enqueue_webhook(&v.id, &body, now) {
            tracing::error!(verification = %v.id, error = %e, "cannot queue the status callback");
        }
    }

    /// The audit row of a verification that ended: the key's name where a call has the
    /// caller, the number where a call has the dialled number.
    fn audit(&self, v: &Verification) {
        let outcome = match v.status {
            VerificationStatus::Approved => "verified",
            VerificationStatus::MaxAttemptsReached => "wrong-pin",
            VerificationStatus::Expired => "pin-expired",
            VerificationStatus::Canceled => "completed",
            VerificationStatus::Failed | VerificationStatus::Pending => "sms-failed",
        };
        let row = AuditRow {
            call_id: v.id.clone(),
            caller: format!("api:{}", v.key_name),
            dialed: v.to.clone(),
            customer_id: v.customer_id.clone(),
            outcome: outcome.into(),
            started_at: v.created_at,
            ended_at: v.updated_at,
            dtmf_methods: String::new(),
            detail: Some(format!(
                "api channel={} status={} sends={} checks={}",
                v.channel,
                v.status.as_str(),
                v.sends,
                v.checks
            )),
            transfer: None,
            transport: Some("HTTP".into()),
            srtp: None,
        };
        if let Err(e) = self.verifier().store().write_audit(&row) {
            tracing::error!(verification = %v.id, error = %e, "cannot write the audit row");
        }
    }
}

fn api_subject(v: &Verification) -> ApiSubject<'_> {
    match &v.customer_id {
        Some(_) => ApiSubject::Customer(&v.subject),
        None => ApiSubject::Number(&v.subject),
    }
}

/// Runs store work (and the SMS send, which waits on the runtime from there) off the
/// runtime's threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(500, "internal", format!("the request failed: {e}")))
}
