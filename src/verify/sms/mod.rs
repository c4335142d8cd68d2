//! Sending the one-time PIN by SMS: the message type, the provider trait, the configuration,
//! and one module per provider (`log`, `webhook`, `twilio`, `tyntec`, `azure`, `vonage`).
//!
//! Why it looks like this:
//! - The verifier only needs "send this text to this number, once". Everything provider
//!   specific (URL, auth, body shape, how a failure looks) stays behind [`SmsProvider`], and
//!   the retry rules live in one place (the `retry` module) so every provider retries the same way.
//! - The text carries the PIN, so it is never logged and never put into an error:
//!   [`SmsMessage`]'s `Debug` redacts it, provider error texts are scrubbed before they become
//!   an [`SmsError`], and phone numbers in logs are masked with [`crate::redact::mask_number`] (OWASP MFA
//!   cheat sheet: never log the code; keep personal data out of logs).
//! - [`SmsError`] tells the caller what it may do next: [`SmsError::Rejected`] will fail the
//!   same way again, [`SmsError::Unavailable`] may work later, and [`SmsError::Timeout`] means
//!   "maybe sent": the caller should tell the user to wait for the SMS rather than send another
//!   one at once (a second SMS would double the cost and confuse the user with two PINs).
//! - The `log` provider (the default) needs no account: it writes the message to a file that a
//!   demo operator or a test reads the PIN from. [`CaptureProvider`] keeps messages in memory
//!   for `ivrd simulate` and tests.

mod azure;
mod log;
pub(crate) mod retry;
mod twilio;
mod tyntec;
mod vonage;
mod webhook;

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

pub use retry::Backoff;

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// One SMS to send.
#[derive(Clone)]
pub struct SmsMessage {
    /// Destination in E.164 with the leading `+` (e.g. `+4915112345678`).
    pub to: String,
    /// The text; it contains the PIN, so it is never logged (see the `Debug` impl).
    pub text: String,
    /// A unique id for this message: providers that support it use it to de-duplicate
    /// retries, and delivery reports carry it back.
    pub reference: String,
    /// How long the message is worth delivering (about the PIN's lifetime); providers that
    /// support a validity period drop the message when it runs out.
    pub ttl: Duration,
}

impl fmt::Debug for SmsMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmsMessage")
            .field("to", &mask_number(&self.to))
            .field(
                "text",
                &format_args!("<redacted, {} chars>", self.text.chars().count()),
            )
            .field("reference", &self.reference)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// What a provider said when it accepted a message.
#[derive(Debug, Clone)]
pub struct SmsReceipt {
    /// The provider's name as in the configuration (`"twilio"`, `"log"`, ...).
    pub provider: &'static str,
    /// The provider's id for the message, when it returns one (Twilio `sid`, tyntec
    /// `requestId`, Azure `messageId`, Vonage `message-id`).
    pub message_id: Option<String>,
}

/// Why an SMS was not (or maybe not) sent. No variant ever contains the message text.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SmsError {
    /// The provider refused the message and would refuse it again (bad number, bad
    /// credentials, bad sender, other 4xx): do not retry; `status` is the HTTP status when
    /// the refusal came as one.
    #[error("the SMS provider rejected the message ({}): {reason}", http_status(.status))]
    Rejected { status: Option<u16>, reason: String },
    /// The provider could not be reached or kept answering 429/5xx until the retries ran
    /// out; nothing was sent and a later attempt may work.
    #[error("the SMS provider is unavailable: {0}")]
    Unavailable(String),
    /// No usable answer came after the request went out (read timeout, connection lost,
    /// unreadable acceptance), so the message may or may not have been sent; sending it
    /// again could deliver a second SMS.
    #[error(
        "no answer from the SMS provider (timed out or connection lost); the message may or may not have been sent"
    )]
    Timeout,
    /// The SMS configuration cannot work (missing or malformed setting).
    #[error("invalid SMS configuration: {0}")]
    Config(String),
}

impl SmsError {
    /// Whether the message certainly did not go out: refused (a 4xx a retry would repeat),
    /// the provider unreachable or answering 429/5xx until the retries ran out, or a
    /// configuration that cannot send. Such a send is not counted against the customer's or
    /// the caller's quota: an outage must not lock customers out. A [`SmsError::Timeout`]
    /// may have been delivered, so it counts.
    pub fn nothing_sent(&self) -> bool {
        !matches!(self, SmsError::Timeout)
    }
}

fn http_status(status: &Option<u16>) -> String {
    match status {
        Some(s) => format!("HTTP {s}"),
        None => "no HTTP status".to_string(),
    }
}

/// The future [`SmsProvider::send`] returns.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<SmsReceipt, SmsError>> + Send + 'a>>;

/// Something that can send an SMS. Implementations retry by themselves (see the `retry` module);
/// a caller should not loop on [`SmsError::Timeout`].
/// Checks a URL ivrd sends something private to: `https://`, or `http://` on the loopback
/// interface only. `name` names the setting in the message.
pub fn check_url(name: &str, url: &str) -> Result<(), String> {
    retry::parse_base_url(name, url)
        .map(drop)
        .map_err(|e| e.to_string())
}

pub trait SmsProvider: Send + Sync {
    /// The provider's name as in the configuration, for logs and receipts.
    fn name(&self) -> &'static str;
    /// Sends one message. Resolves once the provider accepted it (not when it was delivered).
    fn send<'a>(&'a self, msg: &'a SmsMessage) -> SendFuture<'a>;
}

/// The `[sms]` configuration: `provider = "..."` selects the variant; unknown keys are errors.
///
/// For the HTTP providers, `timeout_ms` (default 10000) bounds each HTTP request and
/// `max_retries` (default 2, at most 10) is how many times a failed request is repeated
/// (the `retry` module says when). The worst case before `send` returns is therefore about
/// `(max_retries + 1) * timeout_ms` plus the back-off waits: keep it within what a caller on
/// the line will wait. Base URLs are configurable so tests can point at a loopback server;
/// they must be `https://` unless the host is the loopback interface, because the request
/// carries the PIN and the account credentials.
///
/// Every secret (`auth_token`, tyntec's `api_key`, `access_key`, `api_secret`, a webhook
/// header's value) can instead be read from a file: `auth_token_file = "..."`, and for
/// webhook headers `headers_file = { Authorization = "..." }`. See [`crate::secrets`] for
/// where the files are looked up (systemd credentials); [`SmsConfig::resolve_secrets`] reads
/// them. Setting a secret and its file is an error.
#[derive(Clone, Deserialize)]
#[serde(tag = "provider", rename_all = "lowercase", deny_unknown_fields)]
pub enum SmsConfig {
    /// No SMS account: each message is written to `path` (when set) and a masked line is
    /// logged. THE FILE CONTAINS PINS: it is for demos and tests only, and is created with
    /// mode 0600.
    Log {
        #[serde(default)]
        path: Option<PathBuf>,
    },
    /// A JSON POST to an in-house gateway (see the `webhook` module for the body).
    Webhook {
        url: String,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        /// Header values read from files, by header name (values are usually credentials).
        #[serde(default)]
        headers_file: BTreeMap<String, PathBuf>,
        #[serde(default = "default_timeout_ms")]
        timeout_ms: u64,
        #[serde(default = "default_max_retries")]
        max_retries: u32,
    },
    /// Twilio Programmable Messaging. Set `from` (a Twilio number) or
    /// `messaging_service_sid`, or both.
    Twilio {
        #[serde(default = "twilio_base_url")]
        base_url: String,
        account_sid: String,
        #[serde(default)]
        auth_token: String,
        auth_token_file: Option<PathBuf>,
        from: Option<String>,
        messaging_service_sid: Option<String>,
        #[serde(default = "default_timeout_ms")]
        timeout_ms: u64,
        #[serde(default = "default_max_retries")]
        max_retries: u32,
    },
    /// tyntec SMS API v1.
    Tyntec {
        #[serde(default = "tyntec_base_url")]
        base_url: String,
        #[serde(default)]
        api_key: String,
        api_key_file: Option<PathBuf>,
        /// A number in international format or an alphanumeric id of at most 11 characters.
        from: String,
        #[serde(default = "default_timeout_ms")]
        timeout_ms: u64,
        #[serde(default = "default_max_retries")]
        max_retries: u32,
    },
    /// Azure Communication Services SMS.
    Azure {
        /// The resource endpoint, e.g. `https://contoso.communication.azure.com`.
        endpoint: String,
        /// The resource's access key, base64 as shown in the portal.
        #[serde(default)]
        access_key: String,
        access_key_file: Option<PathBuf>,
        /// The ACS number to send from, E.164.
        from: String,
        #[serde(default = "default_timeout_ms")]
        timeout_ms: u64,
        #[serde(default = "default_max_retries")]
        max_retries: u32,
    },
    /// Vonage (Nexmo) SMS API.
    Vonage {
        #[serde(default = "vonage_base_url")]
        base_url: String,
        /// The account's key: an identifier, shown in logs (the secret is `api_secret`).
        api_key: String,
        #[serde(default)]
        api_secret: String,
        api_secret_file: Option<PathBuf>,
        from: String,
        #[serde(default = "default_timeout_ms")]
        timeout_ms: u64,
        #[serde(default = "default_max_retries")]
        max_retries: u32,
    },
}

fn default_timeout_ms() -> u64 {
    10_000
}
fn default_max_retries() -> u32 {
    2
}
fn twilio_base_url() -> String {
    "https://api.twilio.com".to_string()
}
fn tyntec_base_url() -> String {
    "https://api.tyntec.com".to_string()
}
fn vonage_base_url() -> String {
    "https://rest.nexmo.com".to_string()
}

impl Default for SmsConfig {
    /// The `log` provider without a file: works with no account and no setup.
    fn default() -> Self {
        SmsConfig::Log { path: None }
    }
}

impl SmsConfig {
    /// Makes a relative `log` path relative to `dir` (the config file's directory), as for
    /// every other path in the configuration.
    pub fn resolve_relative_paths(&mut self, dir: &Path) {
        if let SmsConfig::Log { path: Some(p) } = self
            && p.is_relative()
        {
            *p = dir.join(&*p);
        }
    }

    /// Reads every `*_file` secret into its key (see [`crate::secrets`]); a secret given
    /// both ways, or neither when the provider needs it, is an error. Warnings (a secret
    /// file its group may read) are appended to `warnings`.
    pub fn resolve_secrets(
        &mut self,
        files: &crate::secrets::SecretFiles,
        warnings: &mut Vec<String>,
    ) -> Result<(), String> {
        const SMS: &str = "[sms]";
        let (provider, key, value, file) = match self {
            SmsConfig::Log { .. } => return Ok(()),
            SmsConfig::Webhook {
                headers,
                headers_file,
                ..
            } => {
                for (name, file) in headers_file.iter() {
                    // Header names are case-insensitive: `authorization` in one table and
                    // `Authorization` in the other would be the same header twice.
                    if headers.keys().any(|h| h.eq_ignore_ascii_case(name)) {
                        return Err(format!(
                            "{SMS} headers.{name} and headers_file.{name} are both set: keep \
                             headers_file.{name} and remove headers.{name}, so the secret is \
                             not in the config file"
                        ));
                    }
                    let value =
                        files.read(&format!("{SMS} headers_file.{name}"), file, warnings)?;
                    headers.insert(name.clone(), value);
                }
                return Ok(());
            }
            SmsConfig::Twilio {
                auth_token,
                auth_token_file,
                ..
            } => ("twilio", "auth_token", auth_token, auth_token_file),
            SmsConfig::Tyntec {
                api_key,
                api_key_file,
                ..
            } => ("tyntec", "api_key", api_key, api_key_file),
            SmsConfig::Azure {
                access_key,
                access_key_file,
                ..
            } => ("azure", "access_key", access_key, access_key_file),
            SmsConfig::Vonage {
                api_secret,
                api_secret_file,
                ..
            } => ("vonage", "api_secret", api_secret, api_secret_file),
        };
        files.resolve(SMS, key, value, file.as_deref(), warnings)?;
        if value.is_empty() {
            return Err(format!(
                "{SMS} {provider} needs {key}_file (the file holding the secret) or {key}"
            ));
        }
        Ok(())
    }
}

/// Secrets (tokens, keys, header values) are shown as `***` so a config can be logged.
impl fmt::Debug for SmsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HIDDEN: &str = "***";
        match self {
            SmsConfig::Log { path } => f.debug_struct("Log").field("path", path).finish(),
            SmsConfig::Webhook {
                url,
                headers,
                headers_file,
                timeout_ms,
                max_retries,
            } => {
                // The URL may carry a token in its query string: show it without the query.
                let shown = url.split('?').next().unwrap_or_default();
                let names: Vec<&String> = headers.keys().collect();
                f.debug_struct("Webhook")
                    .field("url", &shown)
                    .field("headers", &names)
                    .field("headers_file", headers_file)
                    .field("timeout_ms", timeout_ms)
                    .field("max_retries", max_retries)
                    .finish()
            }
            SmsConfig::Twilio {
                base_url,
                account_sid,
                auth_token: _,
                auth_token_file,
                from,
                messaging_service_sid,
                timeout_ms,
                max_retries,
            } => f
                .debug_struct("Twilio")
                .field("base_url", base_url)
                .field("account_sid", account_sid)
                .field("auth_token", &HIDDEN)
                .field("auth_token_file", auth_token_file)
                .field("from", from)
                .field("messaging_service_sid", messaging_service_sid)
                .field("timeout_ms", timeout_ms)
                .field("max_retries", max_retries)
                .finish(),
            SmsConfig::Tyntec {
                base_url,
                api_key: _,
                api_key_file,
                from,
                timeout_ms,
                max_retries,
            } => f
                .debug_struct("Tyntec")
                .field("base_url", base_url)
                .field("api_key", &HIDDEN)
                .field("api_key_file", api_key_file)
                .field("from", from)
                .field("timeout_ms", timeout_ms)
                .field("max_retries", max_retries)
                .finish(),
            SmsConfig::Azure {
                endpoint,
                access_key: _,
                access_key_file,
                from,
                timeout_ms,
                max_retries,
            } => f
                .debug_struct("Azure")
                .field("endpoint", endpoint)
                .field("access_key", &HIDDEN)
                .field("access_key_file", access_key_file)
                .field("from", from)
                .field("timeout_ms", timeout_ms)
                .field("max_retries", max_retries)
                .finish(),
            SmsConfig::Vonage {
                base_url,
                api_key,
                api_secret: _,
                api_secret_file,
                from,
                timeout_ms,
                max_retries,
            } => f
                .debug_struct("Vonage")
                .field("base_url", base_url)
                .field("api_key", api_key)
                .field("api_secret", &HIDDEN)
                .field("api_secret_file", api_secret_file)
                .field("from", from)
                .field("timeout_ms", timeout_ms)
                .field("max_retries", max_retries)
                .finish(),
        }
    }
}

/// Builds the configured provider with the production back-off ([`Backoff::default`]).
pub fn build(cfg: &SmsConfig) -> Result<Arc<dyn SmsProvider>, SmsError> {
    build_with_backoff(cfg, Backoff::default())
}

/// Builds the configured provider with the given back-off timing (tests use short waits).
pub fn build_with_backoff(
    cfg: &SmsConfig,
    backoff: Backoff,
) -> Result<Arc<dyn SmsProvider>, SmsError> {
    Ok(match cfg {
        SmsConfig::Log { path } => Arc::new(log::LogProvider::new(path.clone())?),
        SmsConfig::Webhook {
            url,
            headers,
            timeout_ms,
            max_retries,
            ..
        } => {
            let policy = retry::Policy::new(*timeout_ms, *max_retries, backoff)?;
            Arc::new(webhook::WebhookProvider::new(url, headers, policy)?)
        }
        SmsConfig::Twilio {
            base_url,
            account_sid,
            auth_token,
            from,
            messaging_service_sid,
            timeout_ms,
            max_retries,
            ..
        } => {
            let policy = retry::Policy::new(*timeout_ms, *max_retries, backoff)?;
            Arc::new(twilio::TwilioProvider::new(
                base_url,
                account_sid,
                auth_token,
                from.as_deref(),
                messaging_service_sid.as_deref(),
                policy,
            )?)
        }
        SmsConfig::Tyntec {
            base_url,
            api_key,
            from,
            timeout_ms,
            max_retries,
            ..
        } => {
            let policy = retry::Policy::new(*timeout_ms, *max_retries, backoff)?;
            Arc::new(tyntec::TyntecProvider::new(
                base_url, api_key, from, policy,
            )?)
        }
        SmsConfig::Azure {
            endpoint,
            access_key,
            from,
            timeout_ms,
            max_retries,
            ..
        } => {
            let policy = retry::Policy::new(*timeout_ms, *max_retries, backoff)?;
            Arc::new(azure::AzureProvider::new(
                endpoint, access_key, from, policy,
            )?)
        }
        SmsConfig::Vonage {
            base_url,
            api_key,
            api_secret,
            from,
            timeout_ms,
            max_retries,
            ..
        } => {
            let policy = retry::Policy::new(*timeout_ms, *max_retries, backoff)?;
            Arc::new(vonage::VonageProvider::new(
                base_url, api_key, api_secret, from, policy,
            )?)
        }
    })
}

pub(crate) use crate::redact::mask_number;

/// Refuses a destination that is not E.164 (`+`, then 7 to 15 digits, the first not 0):
/// every provider here expects that form, and a malformed number would only come back as a
/// provider error after a billable round trip. The number is not echoed in the error.
pub(crate) fn check_destination(to: &str) -> Result<(), SmsError> {
    let ok = to.strip_prefix('+').is_some_and(|digits| {
        (7..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
    });
    if ok {
        Ok(())
    } else {
        Err(SmsError::Rejected {
            status: None,
            reason: "the destination is not an E.164 number (+ and 7 to 15 digits)".to_string(),
        })
    }
}

/// Makes a provider's error text safe to log and to return: the message text, any run of
/// 4 or more digits from it (the PIN) and the destination number are replaced, control
/// characters become spaces (no log injection) and the length is bounded. Providers echo
/// request fields in their errors (e.g. Twilio's "The 'To' number ... is not a valid phone
/// number"), so nothing from a response body goes into an [`SmsError`] without this.
pub(crate) fn scrub(reason: &str, msg: &SmsMessage) -> String {
    let mut out = reason.to_string();
    if !msg.text.is_empty() {
        out = out.replace(&msg.text, "[message text]");
    }
    for run in msg
        .text
        .split(|c: char| !c.is_ascii_digit())
        .filter(|run| run.len() >= 4)
    {
        out = out.replace(run, "[digits]");
    }
    let masked = mask_number(&msg.to);
    if !msg.to.is_empty() {
        out = out.replace(&msg.to, &masked);
    }
    if let Some(bare) = msg.to.strip_prefix('+').filter(|b| !b.is_empty()) {
        out = out.replace(bare, &masked);
    }
    let mut cleaned: String = out
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    if cleaned.trim().is_empty() {
        cleaned = "no reason given".to_string();
    }
    cleaned
}

/// An in-memory provider for `ivrd simulate` and tests: it records every message it
/// "sends" so the PIN can be read back, and can be told to fail to simulate an outage.
/// Clones share the same store, so one clone can be handed out as the provider and another
/// kept to read the messages.
#[derive(Debug, Clone, Default)]
pub struct CaptureProvider {
    sent: Arc<Mutex<Vec<SmsMessage>>>,
    failure: Arc<Mutex<Option<SmsError>>>,
}

impl CaptureProvider {
    /// An empty store that accepts every message.
    pub fn new() -> Self {
        Self::default()
    }

    /// The messages recorded so far, oldest first.
    pub fn messages(&self) -> Vec<SmsMessage> {
        lock(&self.sent).clone()
    }

    /// The messages recorded so far, oldest first, leaving the store empty.
    pub fn take(&self) -> Vec<SmsMessage> {
        std::mem::take(&mut *lock(&self.sent))
    }

    /// From now on every send fails with `err` and records nothing, until [`Self::recover`].
    pub fn fail_with(&self, err: SmsError) {
        *lock(&self.failure) = Some(err);
    }

    /// Ends a simulated outage: sends are recorded and accepted again.
    pub fn recover(&self) {
        *lock(&self.failure) = None;
    }
}

/// A poisoned lock only means another thread panicked while holding it; the data (a list
/// of messages, an optional error) is still consistent, so keep going.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SmsProvider for CaptureProvider {
    fn name(&self) -> &'static str {
        "capture"
    }

    fn send<'a>(&'a self, msg: &'a SmsMessage) -> SendFuture<'a> {
        Box::pin(async move {
            check_destination(&msg.to)?;
            if let Some(err) = lock(&self.failure).clone() {
                tracing::info!(to = %mask_number(&msg.to), reference = %msg.reference,
                    "capture provider: simulated failure");
                return Err(err);
            }
            lock(&self.sent).push(msg.clone());
            tracing::info!(to = %mask_number(&msg.to), reference = %msg.reference,
                "capture provider: message recorded");
            Ok(SmsReceipt {
                provider: "capture",
                message_id: Some(msg.reference.clone()),
            })
        })
    }
}
