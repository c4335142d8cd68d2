//! The `webhook` provider: a JSON POST to an in-house SMS gateway.
//!
//! Body: `{"to":"+E164","text":"...","reference":"...","ttl_seconds":300}`, with the
//! configured headers (typically an `Authorization`). Any 2xx means accepted; the answer
//! may carry the gateway's id as `{"id":"..."}` or `{"message_id":"..."}`.
//!
//! The receiver MUST de-duplicate by `reference` (it is unique per message): that is what
//! makes a retry safe even after a timeout, where the first request may have got through,
//! so this provider retries after timeouts as well as after 429/5xx and refused connections.

use super::retry::{HttpSender, Policy, Verdict, parse_base_url};
use super::{SendFuture, SmsError, SmsMessage, SmsProvider, SmsReceipt, check_destination, scrub};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use std::collections::BTreeMap;

pub(crate) struct WebhookProvider {
    http: HttpSender,
    url: String,
    headers: HeaderMap,
}

impl WebhookProvider {
    pub(crate) fn new(
        url: &str,
        headers: &BTreeMap<String, String>,
        policy: Policy,
    ) -> Result<Self, SmsError> {
        let url = parse_base_url("webhook url", url)?.to_string();
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                SmsError::Config(format!("webhook header name {name:?} is invalid"))
            })?;
            // The value is not echoed: it is usually a credential.
            let mut value = HeaderValue::from_str(value).map_err(|_| {
                SmsError::Config(format!("webhook header {name} has an invalid value"))
            })?;
            value.set_sensitive(true);
            map.insert(name, value);
        }
        Ok(WebhookProvider {
            http: HttpSender::new("webhook", policy, true)?,
            url,
            headers: map,
        })
    }
}

impl SmsProvider for WebhookProvider {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn send<'a>(&'a self, msg: &'a SmsMessage) -> SendFuture<'a> {
        Box::pin(async move {
            check_destination(&msg.to)?;
            let body = serde_json::json!({
                "to": msg.to,
                "text": msg.text,
                "reference": msg.reference,
                "ttl_seconds": msg.ttl.as_secs(),
            });
            self.http
                .send(
                    msg,
                    |client| {
                        client
                            .post(&self.url)
                            .headers(self.headers.clone())
                            .json(&body)
                    },
                    |status, body| judge(status, body, msg),
                )
                .await
        })
    }
}

fn judge(status: u16, body: &[u8], msg: &SmsMessage) -> Verdict {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        json.as_ref()
            .and_then(|j| j.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    if (200..300).contains(&status) {
        return Verdict::Done(Ok(SmsReceipt {
            provider: "webhook",
            message_id: field("id").or_else(|| field("message_id")),
        }));
    }
    let detail = field("message")
        .or_else(|| field("error"))
        .or_else(|| field("detail"))
        .map(|d| scrub(&d, msg));
    let reason = match detail {
        Some(d) => format!("webhook answered HTTP {status}: {d}"),
        None => format!("webhook answered HTTP {status}"),
    };
    Verdict::from_error_status(status, reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::sms::test_support::{fast, header, json, message, received};
    use crate::verify::sms::{SmsConfig, build_with_backoff};
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn config(url: &str) -> SmsConfig {
        SmsConfig::Webhook {
            url: format!("{url}/hooks/sms"),
            headers: BTreeMap::from([
                ("Authorization".to_string(), "Bearer s3cret".to_string()),
                ("X-Tenant".to_string(), "acme".to_string()),
            ]),
            headers_file: BTreeMap::new(),
            timeout_ms: 2000,
            max_retries: 2,
        }
    }

    #[tokio::test]
    async fn posts_json_with_headers() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/hooks/sms"))
            .respond_with(
                ResponseTemplate::new(202).set_body_json(serde_json::json!({"id": "gw-7"})),
            )
            .expect(1)
            .mount(&server)
            .await;
        let provider = build_with_backoff(&config(&server.uri()), fast()).unwrap();
        let receipt = provider.send(&message()).await.unwrap();
        assert_eq!(receipt.provider, "webhook");
        assert_eq!(receipt.message_id.as_deref(), Some("gw-7"));

        let req = &received(&server).await[0];
        assert_eq!(header(req, "authorization"), Some("Bearer s3cret"));
        assert_eq!(header(req, "x-tenant"), Some("acme"));
        assert_eq!(header(req, "content-type"), Some("application/json"));
        assert_eq!(
            json(&req.body),
            serde_json::json!({
                "to": "+4915112345678",
                "text": message().text,
                "reference": "ref-1",
                "ttl_seconds": 300,
            })
        );
    }

    #[tokio::test]
    async fn empty_2xx_is_accepted_without_an_id() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(204))
            .mount(&server)
            .await;
        let provider = build_with_backoff(&config(&server.uri()), fast()).unwrap();
        let receipt = provider.send(&message()).await.unwrap();
        assert_eq!(receipt.message_id, None);
    }

    #[tokio::test]
    async fn a_4xx_is_rejected_with_the_gateway_reason() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(422)
                    .set_body_json(serde_json::json!({"error": "number not allowed"})),
            )
            .expect(1)
            .mount(&server)
            .await;
        let provider = build_with_backoff(&config(&server.uri()), fast()).unwrap();
        match provider.send(&message()).await {
            Err(SmsError::Rejected { status, reason }) => {
                assert_eq!(status, Some(422));
                assert!(reason.contains("number not allowed"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_headers_are_config_errors() {
        let mut cfg = config("http://127.0.0.1:9");
        if let SmsConfig::Webhook { headers, .. } = &mut cfg {
            headers.insert("Bad Header".into(), "x".into());
        }
        assert!(matches!(
            build_with_backoff(&cfg, fast()),
            Err(SmsError::Config(_))
        ));
        let mut cfg = config("http://127.0.0.1:9");
        if let SmsConfig::Webhook { headers, .. } = &mut cfg {
            headers.insert("X-Ok".into(), "line\nbreak".into());
        }
        match build_with_backoff(&cfg, fast()) {
            Err(SmsError::Config(m)) => assert!(!m.contains("line")),
            _ => panic!("expected a config error"),
        }
    }
}
