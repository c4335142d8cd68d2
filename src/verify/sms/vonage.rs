//! The `vonage` provider: the Vonage (formerly Nexmo) SMS API.
//!
//! `POST {base}/sms/json`, form-encoded `api_key`, `api_secret`, `from`, `to` (E.164 WITHOUT
//! the `+`), `text`, `ttl` (milliseconds; Vonage accepts 20000 to 604800000), plus
//! `client-ref` (our reference, echoed in delivery receipts) and `type=unicode` when the text
//! is not plain ASCII (the default `text` type would garble it).
//!
//! The answer is HTTP 200 even when the message was refused:
//! `{"message-count":"1","messages":[{"status":"0","message-id":"...",...}]}`, and a status
//! other than "0" carries `error-text`. A long text is split into several parts, each with
//! its own status; all must be "0". Status 1 (throttled) and 5 (internal error) mean "not
//! sent, try later" and are retried like a 429/5xx; the others (bad credentials, barred
//! number, invalid sender, ...) are permanent.
//!
//! Vonage has no idempotency key: after a request went out and no answer came back the
//! message is not posted again ([`SmsError::Timeout`]).

use super::retry::{HttpSender, Policy, Verdict, join, parse_base_url};
use super::{SendFuture, SmsError, SmsMessage, SmsProvider, SmsReceipt, check_destination, scrub};
use serde::Deserialize;

/// Vonage's accepted `ttl` range in milliseconds.
const TTL_MS: std::ops::RangeInclusive<u128> = 20_000..=604_800_000;
/// We send at most this much of the reference as `client-ref` (older Vonage docs cap it at
/// 40 characters, newer ones at 100).
const CLIENT_REF_MAX: usize = 40;

pub(crate) struct VonageProvider {
    http: HttpSender,
    url: String,
    api_key: String,
    api_secret: String,
    from: String,
}

impl VonageProvider {
    pub(crate) fn new(
        base_url: &str,
        api_key: &str,
        api_secret: &str,
        from: &str,
        policy: Policy,
    ) -> Result<Self, SmsError> {
        let base = parse_base_url("vonage base_url", base_url)?;
        if api_key.is_empty() || api_secret.is_empty() {
            return Err(SmsError::Config(
                "vonage api_key and api_secret must be set".into(),
            ));
        }
        if from.is_empty() {
            return Err(SmsError::Config("vonage from is empty".into()));
        }
        Ok(VonageProvider {
            http: HttpSender::new("vonage", policy, false)?,
            url: join(&base, "sms/json"),
            api_key: api_key.to_string(),
            api_secret: api_secret.to_string(),
            from: from.to_string(),
        })
    }
}

impl SmsProvider for VonageProvider {
    fn name(&self) -> &'static str {
        "vonage"
    }

    fn send<'a>(&'a self, msg: &'a SmsMessage) -> SendFuture<'a> {
        Box::pin(async move {
            check_destination(&msg.to)?;
            let ttl = msg.ttl.as_millis().clamp(*TTL_MS.start(), *TTL_MS.end());
            let to = msg.to.trim_start_matches('+');
            let client_ref: String = msg.reference.chars().take(CLIENT_REF_MAX).collect();
            let mut form: Vec<(&str, &str)> = vec![
                ("api_key", &self.api_key),
                ("api_secret", &self.api_secret),
                ("from", &self.from),
                ("to", to),
                ("text", &msg.text),
            ];
            let ttl = ttl.to_string();
            form.push(("ttl", &ttl));
            form.push(("client-ref", &client_ref));
            if !msg.text.is_ascii() {
                form.push(("type", "unicode"));
            }
            self.http
                .send(
                    msg,
                    |client| client.post(&self.url).form(&form),
                    |status, body| judge(status, body, msg),
                )
                .await
        })
    }
}

#[derive(Deserialize)]
struct Response {
    messages: Vec<Part>,
}

#[derive(Deserialize)]
struct Part {
    status: String,
    #[serde(rename = "message-id")]
    message_id: Option<String>,
    #[serde(rename = "error-text")]
    error_text: Option<String>,
}

fn judge(status: u16, body: &[u8], msg: &SmsMessage) -> Verdict {
    if status != 200 {
        let reason = format!("Vonage answered HTTP {status}");
        return Verdict::from_error_status(status, reason);
    }
    let parts = match serde_json::from_slice::<Response>(body) {
        Ok(r) if !r.messages.is_empty() => r.messages,
        // A 200 we cannot read: the message may well be queued, and re-posting could send
        // it twice, so this is the ambiguous outcome, not retried.
        _ => {
            tracing::warn!(
                provider = "vonage",
                "HTTP 200 without a readable message status"
            );
            return Verdict::Done(Err(SmsError::Timeout));
        }
    };
    if let Some(bad) = parts.iter().find(|p| p.status != "0") {
        let reason = scrub(
            &format!(
                "Vonage status {}: {}",
                bad.status,
                bad.error_text.as_deref().unwrap_or("no error text")
            ),
            msg,
        );
        // Status 1 is "Throttled", 5 is "Internal Error": nothing was sent, try later.
        return if bad.status == "1" || bad.status == "5" {
            Verdict::Retry(reason)
        } else {
            // The HTTP status (200) says nothing about the failure, so none is given.
            Verdict::Done(Err(SmsError::Rejected {
                status: None,
                reason,
            }))
        };
    }
    Verdict::Done(Ok(SmsReceipt {
        provider: "vonage",
        message_id: parts.into_iter().next().and_then(|p| p.message_id),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::sms::test_support::{fast, form, header, message, received};
    use crate::verify::sms::{SmsConfig, build_with_backoff};
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn config(base: &str) -> SmsConfig {
        SmsConfig::Vonage {
            base_url: base.to_string(),
            api_key: "abc123".into(),
            api_secret: "s3cr3t".into(),
            api_secret_file: None,
            from: "ivrd".into(),
            timeout_ms: 2000,
            max_retries: 2,
        }
    }

    fn answer(parts: serde_json::Value) -> ResponseTemplate {
        let count = parts.as_array().map_or(0, Vec::len).to_string();
        ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({"message-count": count, "messages": parts}))
    }

    fn ok_part() -> serde_json::Value {
        serde_json::json!({
            "to": "4915112345678", "message-id": "0A0000000123ABCD1", "status": "0",
            "remaining-balance": "3.14159265", "message-price": "0.03330000", "network": "26201",
        })
    }

    #[tokio::test]
    async fn posts_the_documented_form() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/sms/json"))
            .respond_with(answer(serde_json::json!([ok_part()])))
            .expect(1)
            .mount(&server)
            .await;
        let provider = build_with_backoff(&config(&server.uri()), fast()).unwrap();
        let receipt = provider.send(&message()).await.unwrap();
        assert_eq!(receipt.provider, "vonage");
        assert_eq!(receipt.message_id.as_deref(), Some("0A0000000123ABCD1"));

        let req = &received(&server).await[0];
        assert_eq!(
            header(req, "content-type"),
            Some("application/x-www-form-urlencoded")
        );
        let f = form(&req.body);
        assert_eq!(f.len(), 7, "{f:?}");
        assert_eq!(f["api_key"], "abc123");
        assert_eq!(f["api_secret"], "s3cr3t");
        assert_eq!(f["from"], "ivrd");
        assert_eq!(f["to"], "4915112345678");
        assert_eq!(f["text"], message().text);
        assert_eq!(f["ttl"], "300000");
        assert_eq!(f["client-ref"], "ref-1");
    }

    #[tokio::test]
    async fn unicode_text_and_ttl_bounds() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(answer(serde_json::json!([ok_part()])))
            .mount(&server)
            .await;
        let provider = build_with_backoff(&config(&server.uri()), fast()).unwrap();
        let mut msg = message();
        msg.text = "Kod: 493817 — ważny 5 minut".into();
        msg.ttl = std::time::Duration::from_secs(5);
        provider.send(&msg).await.unwrap();
        let f = form(&received(&server).await[0].body);
        assert_eq!(f["type"], "unicode");
        assert_eq!(f["text"], msg.text);
        assert_eq!(f["ttl"], "20000");
    }

    #[tokio::test]
    async fn a_non_zero_status_in_a_200_is_rejected() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(answer(serde_json::json!([
                {"status": "4", "error-text": "Bad Credentials"}
            ])))
            .expect(1)
            .mount(&server)
            .await;
        let provider = build_with_backoff(&config(&server.uri()), fast()).unwrap();
        match provider.send(&message()).await {
            Err(SmsError::Rejected { status, reason }) => {
                assert_eq!(status, None);
                assert_eq!(reason, "Vonage status 4: Bad Credentials");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_failed_second_part_fails_the_message() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(answer(serde_json::json!([
                ok_part(),
                {"status": "7", "error-text": "Number barred."}
            ])))
            .mount(&server)
            .await;
        let provider = build_with_backoff(&config(&server.uri()), fast()).unwrap();
        assert!(matches!(
            provider.send(&message()).await,
            Err(SmsError::Rejected { status: None, .. })
        ));
    }

    #[tokio::test]
    async fn throttled_status_is_retried_then_succeeds() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(answer(serde_json::json!([
                {"status": "1", "error-text": "Throughput Rate Exceeded - please wait [ 10 ] and retry"}
            ])))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .respond_with(answer(serde_json::json!([ok_part()])))
            .mount(&server)
            .await;
        let provider = build_with_backoff(&config(&server.uri()), fast()).unwrap();
        provider.send(&message()).await.unwrap();
        assert_eq!(received(&server).await.len(), 2);
    }

    #[tokio::test]
    async fn internal_error_status_gives_unavailable_after_retries() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(answer(serde_json::json!([
                {"status": "5", "error-text": "Internal Error"}
            ])))
            .expect(3)
            .mount(&server)
            .await;
        let provider = build_with_backoff(&config(&server.uri()), fast()).unwrap();
        match provider.send(&message()).await {
            Err(SmsError::Unavailable(reason)) => {
                assert!(
                    reason.starts_with("Vonage status 5: Internal Error"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn an_unreadable_200_is_ambiguous_and_not_reposted() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_string("<html>gateway</html>"))
            .mount(&server)
            .await;
        let provider = build_with_backoff(&config(&server.uri()), fast()).unwrap();
        assert!(matches!(
            provider.send(&message()).await,
            Err(SmsError::Timeout)
        ));
        assert_eq!(received(&server).await.len(), 1);
    }

    #[tokio::test]
    async fn an_http_401_is_rejected() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(401))
            .expect(1)
            .mount(&server)
            .await;
        let provider = build_with_backoff(&config(&server.uri()), fast()).unwrap();
        assert!(matches!(
            provider.send(&message()).await,
            Err(SmsError::Rejected {
                status: Some(401),
                ..
            })
        ));
    }
}
