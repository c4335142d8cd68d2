//! The one HTTP client and retry loop that every HTTP provider uses, so the retry rules are
//! written (and tested) once.
//!
//! The rules (from the providers' docs, summarised in `sms-providers.md`):
//! - Retry on HTTP 429 and 5xx (Twilio documents 429 / error 20429 as safe to retry after a
//!   back-off) and when the connection could not be made (then nothing reached the provider).
//! - Wait `initial`, then twice that, and so on, capped at `max` (500 ms .. 5 s by default);
//!   when the response carries `Retry-After` (seconds or an HTTP date), wait that long
//!   instead, capped at `retry_after_cap` (10 s by default): a caller is on the line.
//! - After the request went out but no answer came (read timeout, connection lost), the
//!   message may already be queued. Only providers that de-duplicate repeats (Azure's
//!   repeatability headers, the webhook's `reference`) are asked again; for the others
//!   (Twilio, tyntec, Vonage: no idempotency key) a re-POST could send a second SMS and bill
//!   it twice, so the result is [`SmsError::Timeout`]. Once any attempt was ambiguous, giving
//!   up later also reports [`SmsError::Timeout`] ("maybe sent"), never `Unavailable`.
//! - No redirects are followed: a redirected POST would carry the PIN and the credentials to
//!   a host nobody configured.

use super::{SmsError, SmsMessage, SmsReceipt, mask_number};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use std::time::{Duration, SystemTime};

/// How long to wait between attempts. [`Backoff::default`] is the production timing; tests
/// shorten it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait before the first retry; each further retry waits twice as long (500 ms).
    pub initial: Duration,
    /// The longest exponential wait (5 s).
    pub max: Duration,
    /// The longest wait a `Retry-After` header can ask for (10 s).
    pub retry_after_cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(5),
            retry_after_cap: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The wait before retry number `retry` (0 for the first), given the `Retry-After` of the
    /// failed response, if any.
    pub(crate) fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(asked) = retry_after {
            return asked.min(self.retry_after_cap);
        }
        let factor = 1u32.checked_shl(retry.min(16)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// The settings from the configuration that shape the HTTP exchange.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub timeout: Duration,
    pub max_retries: u32,
    pub backoff: Backoff,
}

impl Policy {
    pub(crate) fn new(
        timeout_ms: u64,
        max_retries: u32,
        backoff: Backoff,
    ) -> Result<Self, SmsError> {
        if timeout_ms == 0 {
            return Err(SmsError::Config("timeout_ms must be greater than 0".into()));
        }
        if max_retries > 10 {
            return Err(SmsError::Config("max_retries must be at most 10".into()));
        }
        Ok(Policy {
            timeout: Duration::from_millis(timeout_ms),
            max_retries,
            backoff,
        })
    }
}

/// What a provider made of one HTTP response.
pub(crate) enum Verdict {
    /// Final: accepted, or refused in a way a retry would not change.
    Done(Result<SmsReceipt, SmsError>),
    /// Not sent but worth another try (429, 5xx, a throttling status in the body); the text
    /// (already scrubbed) becomes [`SmsError::Unavailable`] when the retries run out.
    Retry(String),
}

impl Verdict {
    /// The verdict on an HTTP error status, the same for every provider: 429 and 5xx may
    /// succeed later (retry with backoff); any other status is a refusal a retry would repeat.
    pub(crate) fn from_error_status(status: u16, reason: String) -> Verdict {
        if status == 429 || status >= 500 {
            Verdict::Retry(reason)
        } else {
            Verdict::Done(Err(SmsError::Rejected {
                status: Some(status),
                reason,
            }))
        }
    }
}

/// An HTTP client bound to one provider and its retry policy.
pub(crate) struct HttpSender {
    client: reqwest::Client,
    provider: &'static str,
    policy: Policy,
    /// Whether the provider de-duplicates a repeated request, which makes a retry after an
    /// ambiguous failure (read timeout, connection lost) safe.
    dedupes: bool,
}

/// How one attempt failed, for the decision to retry.
enum Failure {
    /// Nothing was sent, or the provider said it did not take the message.
    NotSent(String),
    /// The request may have reached the provider; the answer was lost.
    Ambiguous(String),
}

impl HttpSender {
    pub(crate) fn new(
        provider: &'static str,
        policy: Policy,
        dedupes: bool,
    ) -> Result<Self, SmsError> {
        let client = reqwest::Client::builder()
            .timeout(policy.timeout)
            // A connect timeout is reported as a connect error, which is known not to have
            // sent anything; the overall timeout then covers the request and the answer.
            .connect_timeout(policy.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ivrd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                SmsError::Config(format!("cannot create the HTTP client: {}", describe(&e)))
            })?;
        Ok(HttpSender {
            client,
            provider,
            policy,
            dedupes,
        })
    }

    /// Sends the request that `make` builds (called again for each attempt, so signatures
    /// and dates can be fresh) and lets `judge` read each response, retrying as the module
    /// doc says.
    pub(crate) async fn send<M, J>(
        &self,
        msg: &SmsMessage,
        mut make: M,
        mut judge: J,
    ) -> Result<SmsReceipt, SmsError>
    where
        M: FnMut(&reqwest::Client) -> reqwest::RequestBuilder,
        J: FnMut(u16, &[u8]) -> Verdict,
    {
        let to = mask_number(&msg.to);
        let mut retry = 0u32;
        // Set once any attempt may have reached the provider: from then on, giving up
        // must report "maybe sent", whatever the later attempts said.
        let mut maybe_sent = false;
        loop {
            let attempt = retry + 1;
            let (failure, retry_after) = match make(&self.client).send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = retry_after(resp.headers());
                    match resp.bytes().await {
                        Ok(body) => match judge(status, &body) {
                            Verdict::Done(result) => {
                                match &result {
                                    Ok(receipt) => tracing::info!(
                                        provider = self.provider, to = %to,
                                        reference = %msg.reference, attempt,
                                        message_id = receipt.message_id.as_deref().unwrap_or("-"),
                                        "SMS accepted by the provider"),
                                    Err(e) => tracing::warn!(
                                        provider = self.provider, to = %to,
                                        reference = %msg.reference, attempt, status,
                                        error = %e, "SMS refused by the provider"),
                                }
                                return result;
                            }
                            Verdict::Retry(reason) => (Failure::NotSent(reason), retry_after),
                        },
                        Err(e) => (
                            Failure::Ambiguous(format!(
                                "HTTP {status}, then reading the answer failed: {}",
                                describe(&e)
                            )),
                            None,
                        ),
                    }
                }
                Err(e) if e.is_builder() => {
                    return Err(SmsError::Config(format!(
                        "cannot build the request: {}",
                        describe(&e)
                    )));
                }
                Err(e) if e.is_connect() => (Failure::NotSent(describe(&e)), None),
                Err(e) => (Failure::Ambiguous(describe(&e)), None),
            };

            let (may_retry, reason) = match &failure {
                Failure::NotSent(reason) => (true, reason),
                Failure::Ambiguous(reason) => {
                    maybe_sent = true;
                    (self.dedupes, reason)
                }
            };
            if !may_retry || retry >= self.policy.max_retries {
                tracing::warn!(provider = self.provider, to = %to, reference = %msg.reference,
                    attempt, reason = %reason, maybe_sent, "SMS not sent; giving up");
                return Err(match failure {
                    Failure::NotSent(_) if maybe_sent => SmsError::Timeout,
                    Failure::NotSent(reason) => SmsError::Unavailable(format!(
                        "{reason} (after {attempt} attempt{})",
                        if attempt == 1 { "" } else { "s" }
                    )),
                    Failure::Ambiguous(_) => SmsError::Timeout,
                });
            }
            let wait = self.policy.backoff.delay(retry, retry_after);
            tracing::warn!(provider = self.provider, to = %to, reference = %msg.reference,
                attempt, reason = %reason, wait_ms = wait.as_millis() as u64,
                "SMS attempt failed; retrying");
            tokio::time::sleep(wait).await;
            retry += 1;
        }
    }
}

/// `Retry-After` as a duration: delay-seconds or an HTTP date (RFC 9110 10.2.3).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// A transport error as text: the error and its causes, without the URL (which we never
/// log; see the tyntec 2FA note in `sms-providers.md`).
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        "request failed".to_string()
    };
    push_causes(e, &mut text);
    text
}

/// Appends the causes of `e` to `text`, each after ": " (none before the first when `text` is
/// empty), leaving out one already in it and stopping after five: reqwest's own message names
/// the URL, its causes do not. Shared by the SMS providers and the dialplan's `http` step.
pub(crate) fn push_causes(e: &dyn std::error::Error, text: &mut String) {
    let mut source = e.source();
    let mut depth = 0;
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause_text);
        }
        source = cause.source();
        depth += 1;
        if depth > 4 {
            break;
        }
    }
}

/// Checks a provider base URL: it must parse, and be `https://` unless it points at the
/// loopback interface (the tests' servers), because the request carries the PIN and the
/// account credentials.
pub(crate) fn parse_base_url(name: &str, url: &str) -> Result<reqwest::Url, SmsError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| SmsError::Config(format!("{name} is not a valid URL: {e}")))?;
    let host = parsed.host_str().unwrap_or_default();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if loopback => Ok(parsed),
        _ => Err(SmsError::Config(format!(
            "{name} must be an https:// URL (http:// only for the loopback interface)"
        ))),
    }
}

/// `base` with `path` appended, keeping any path prefix of `base`.
pub(crate) fn join(base: &reqwest::Url, path: &str) -> String {
    format!(
        "{}/{}",
        base.as_str().trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_backoff_is_capped() {
        let b = Backoff::default();
        let waits: Vec<u64> = (0..6)
            .map(|n| b.delay(n, None).as_millis() as u64)
            .collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 5000, 5000]);
        assert_eq!(b.delay(40, None), Duration::from_secs(5));
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let b = Backoff::default();
        assert_eq!(
            b.delay(0, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            b.delay(3, Some(Duration::from_secs(120))),
            Duration::from_secs(10)
        );
        assert_eq!(b.delay(0, Some(Duration::ZERO)), Duration::ZERO);
    }

    #[test]
    fn retry_after_header_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let soon = SystemTime::now() + Duration::from_secs(30);
        h.insert(RETRY_AFTER, httpdate::fmt_http_date(soon).parse().unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        h.insert(
            RETRY_AFTER,
            "Tue, 01 Jan 2002 00:00:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn base_urls_must_be_https_unless_loopback() {
        assert!(parse_base_url("u", "https://api.twilio.com").is_ok());
        assert!(parse_base_url("u", "http://127.0.0.1:8080").is_ok());
        assert!(parse_base_url("u", "http://[::1]:8080").is_ok());
        assert!(parse_base_url("u", "http://localhost:1").is_ok());
        assert!(matches!(
            parse_base_url("u", "http://api.twilio.com"),
            Err(SmsError::Config(_))
        ));
        assert!(matches!(
            parse_base_url("u", "not a url"),
            Err(SmsError::Config(_))
        ));
        let base = parse_base_url("u", "https://gw.example/prefix/").unwrap();
        assert_eq!(
            join(&base, "/sms/json"),
            "https://gw.example/prefix/sms/json"
        );
    }
}
