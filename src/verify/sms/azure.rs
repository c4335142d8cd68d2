//! The `azure` provider: Azure Communication Services SMS (REST API version 2021-03-07).
//!
//! `POST {endpoint}/sms?api-version=2021-03-07` with JSON
//! `{"from","message","smsRecipients":[{"to","repeatabilityRequestId","repeatabilityFirstSent"}],
//! "smsSendOptions":{"enableDeliveryReport":false}}`.
//!
//! Authentication is HMAC-SHA256 (learn.microsoft.com, "Sign an HTTP request"):
//! `x-ms-date` (RFC 1123, UTC), `x-ms-content-sha256` = base64(SHA-256(body)), and
//! `Authorization: HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=S`
//! where S = base64(HMAC-SHA256(base64-decoded access key, string to sign)) and the string to
//! sign is `"POST\n<path and query>\n<x-ms-date>;<host>;<content hash>"`.
//!
//! The answer is 202 even when the recipient failed: the per-recipient result
//! (`value[].successful`, `httpStatusCode`, `errorMessage`) decides.
//!
//! Retries are safe here, even after a timeout, because of the repeatability fields: the
//! service de-duplicates requests with the same `repeatabilityRequestId` (a UUID) and
//! `repeatabilityFirstSent`. Both are therefore made once per message and reused verbatim
//! on every retry (the body is serialised once); only `x-ms-date` and the signature are
//! renewed per attempt.

use super::retry::{HttpSender, Policy, Verdict, join, parse_base_url};
use super::{SendFuture, SmsError, SmsMessage, SmsProvider, SmsReceipt, check_destination, scrub};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::time::SystemTime;

const API_PATH: &str = "sms?api-version=2021-03-07";

pub(crate) struct AzureProvider {
    http: HttpSender,
    url: String,
    /// What is signed as the path: `/sms?api-version=2021-03-07` (with any endpoint prefix).
    path_and_query: String,
    /// What is signed as the host: the URL's host, plus `:port` when it is not the default
    /// (the same value the HTTP client sends in `Host`).
    host: String,
    key: Vec<u8>,
    from: String,
}

impl AzureProvider {
    pub(crate) fn new(
        endpoint: &str,
        access_key: &str,
        from: &str,
        policy: Policy,
    ) -> Result<Self, SmsError> {
        let base = parse_base_url("azure endpoint", endpoint)?;
        let url = join(&base, API_PATH);
        let parsed = reqwest::Url::parse(&url)
            .map_err(|e| SmsError::Config(format!("azure endpoint: {e}")))?;
        let path_and_query = format!("{}?{}", parsed.path(), parsed.query().unwrap_or_default());
        let host_name = parsed.host_str().unwrap_or_default();
        let host = match parsed.port() {
            Some(port) => format!("{host_name}:{port}"),
            None => host_name.to_string(),
        };
        let key = BASE64
            .decode(access_key.trim())
            .map_err(|_| SmsError::Config("azure access_key is not valid base64".into()))?;
        if key.is_empty() {
            return Err(SmsError::Config("azure access_key is empty".into()));
        }
        if from.is_empty() {
            return Err(SmsError::Config("azure from is empty".into()));
        }
        Ok(AzureProvider {
            http: HttpSender::new("azure", policy, true)?,
            url,
            path_and_query,
            host,
            key,
            from: from.to_string(),
        })
    }
}

/// base64(SHA-256(body)), the `x-ms-content-sha256` header.
pub(crate) fn content_hash(body: &[u8]) -> String {
    BASE64.encode(Sha256::digest(body))
}

/// The `Authorization` header value for a POST (see the module doc for the recipe).
pub(crate) fn authorization(
    key: &[u8],
    path_and_query: &str,
    date: &str,
    host: &str,
    content_hash: &str,
) -> String {
    let string_to_sign = format!("POST\n{path_and_query}\n{date};{host};{content_hash}");
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(string_to_sign.as_bytes());
    let signature = BASE64.encode(mac.finalize().into_bytes());
    format!("HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={signature}")
}

impl SmsProvider for AzureProvider {
    fn name(&self) -> &'static str {
        "azure"
    }

    fn send<'a>(&'a self, msg: &'a SmsMessage) -> SendFuture<'a> {
        Box::pin(async move {
            check_destination(&msg.to)?;
            // Made once per message, reused by every retry: this is what lets the service
            // recognise a retry as the same request.
            let request_id = uuid::Uuid::new_v4().to_string();
            let first_sent = httpdate::fmt_http_date(SystemTime::now());
            let body = serde_json::to_vec(&serde_json::json!({
                "from": self.from,
                "message": msg.text,
                "smsRecipients": [{
                    "to": msg.to,
                    "repeatabilityRequestId": request_id,
                    "repeatabilityFirstSent": first_sent,
                }],
                "smsSendOptions": { "enableDeliveryReport": false },
            }))
            .map_err(|e| SmsError::Config(format!("cannot encode the request: {e}")))?;
            let hash = content_hash(&body);
            self.http
                .send(
                    msg,
                    |client| {
                        let date = httpdate::fmt_http_date(SystemTime::now());
                        let auth = authorization(
                            &self.key,
                            &self.path_and_query,
                            &date,
                            &self.host,
                            &hash,
                        );
                        client
                            .post(&self.url)
                            .header("x-ms-date", date)
                            .header("x-ms-content-sha256", &hash)
                            .header(reqwest::header::AUTHORIZATION, auth)
                            .header(reqwest::header::CONTENT_TYPE, "application/json")
                            .body(body.clone())
                    },
                    |status, body| judge(status, body, msg),
                )
                .await
        })
    }
}

#[derive(Deserialize)]
struct SendResponse {
    value: Vec<RecipientResult>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecipientResult {
    message_id: Option<String>,
    http_status_code: Option<u16>,
    successful: bool,
    error_message: Option<String>,
}

/// `CommunicationErrorResponse`: `{"error":{"code","message"}}`.
#[derive(Deserialize)]
struct ErrorResponse {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: Option<String>,
    message: Option<String>,
}

fn judge(status: u16, body: &[u8], msg: &SmsMessage) -> Verdict {
    let (status, reason) = if (200..300).contains(&status) {
        let Some(result) = serde_json::from_slice::<SendResponse>(body)
            .ok()
            .and_then(|r| r.value.into_iter().next())
        else {
            // Accepted without a per-recipient result: we cannot tell whether it will be
            // sent, and asking again is safe (same repeatability id).
            return Verdict::Retry(format!(
                "Azure answered HTTP {status} without a recipient result"
            ));
        };
        if result.successful {
            return Verdict::Done(Ok(SmsReceipt {
                provider: "azure",
                message_id: result.message_id,
            }));
        }
        let code = result.http_status_code.unwrap_or(status);
        let reason = scrub(
            &format!(
                "Azure recipient status {code}: {}",
                result.error_message.as_deref().unwrap_or("no message")
            ),
            msg,
        );
        (code, reason)
    } else {
        let reason = match serde_json::from_slice::<ErrorResponse>(body) {
            Ok(ErrorResponse { error }) => scrub(
                &format!(
                    "Azure error {}: {}",
                    error.code.as_deref().unwrap_or("?"),
                    error.message.as_deref().unwrap_or("no message")
                ),
                msg,
            ),
            Err(_) => format!("Azure answered HTTP {status}"),
        };
        (status, reason)
    };
    Verdict::from_error_status(status, reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::sms::test_support::{fast, header, json, message, received};
    use crate::verify::sms::{SmsConfig, build_with_backoff};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

    /// base64 of `ivrd-test-key-material-32-bytes!`.
    const KEY_B64: &str = "aXZyZC10ZXN0LWtleS1tYXRlcmlhbC0zMi1ieXRlcyE=";

    fn config(endpoint: &str, timeout_ms: u64) -> SmsConfig {
        SmsConfig::Azure {
            endpoint: endpoint.to_string(),
            access_key: KEY_B64.into(),
            access_key_file: None,
            from: "+18005550100".into(),
            timeout_ms,
            max_retries: 2,
        }
    }

    /// A known vector, computed outside Rust with
    /// `printf '%s' BODY | openssl dgst -sha256 -binary | base64` and
    /// `printf 'POST\n/sms?api-version=2021-03-07\nDATE;HOST;HASH' |
    ///  openssl dgst -sha256 -mac HMAC -macopt hexkey:<key hex> -binary | base64`.
    #[test]
    fn signature_matches_a_known_vector() {
        let body = br#"{"from":"+18005550100","message":"hello"}"#;
        let hash = content_hash(body);
        assert_eq!(hash, "ZK8fQURL9sX+fFQZOaUDCy+60tn6nkQQcs3eQeS8J64=");
        let key = BASE64.decode(KEY_B64).unwrap();
        assert_eq!(key, b"ivrd-test-key-material-32-bytes!");
        let auth = authorization(
            &key,
            "/sms?api-version=2021-03-07",
            "Mon, 02 Jun 2025 10:00:00 GMT",
            "contoso.communication.azure.com",
            &hash,
        );
        assert_eq!(
            auth,
            "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256\
             &Signature=1YmlW1mMv/auAqXl6mIRhVX/KpXxxCEvWTQXNtx1jBs="
        );
    }

    /// Checks each request the way the service does, with its own HMAC code: well-formed
    /// headers, content hash = SHA-256 of the body, a fresh `x-ms-date`, and a signature over
    /// the `Host` the server actually saw. Answers 401 if anything is off, else `ok`.
    struct Verifier {
        ok: ResponseTemplate,
        problems: Arc<Mutex<Vec<String>>>,
    }

    impl Verifier {
        fn check(req: &Request) -> Result<(), String> {
            let date = header(req, "x-ms-date").ok_or("no x-ms-date")?;
            let when = httpdate::parse_http_date(date).map_err(|_| "x-ms-date is not RFC 1123")?;
            let skew = SystemTime::now()
                .duration_since(when)
                .unwrap_or_else(|e| e.duration());
            if skew > Duration::from_secs(60) {
                return Err("x-ms-date is stale".into());
            }
            let hash = header(req, "x-ms-content-sha256").ok_or("no x-ms-content-sha256")?;
            let actual = BASE64.encode(Sha256::digest(&req.body));
            if hash != actual {
                return Err("content hash does not match the body".into());
            }
            let auth = header(req, "authorization").ok_or("no authorization")?;
            let signature = auth
                .strip_prefix(
                    "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=",
                )
                .ok_or("malformed authorization")?;
            let host = header(req, "host").ok_or("no host")?;
            let path_and_query = format!("{}?{}", req.url.path(), req.url.query().unwrap_or(""));
            let mut mac =
                Hmac::<Sha256>::new_from_slice(b"ivrd-test-key-material-32-bytes!").unwrap();
            mac.update(format!("POST\n{path_and_query}\n{date};{host};{hash}").as_bytes());
            let expected = BASE64.encode(mac.finalize().into_bytes());
            if signature != expected {
                return Err("signature mismatch".into());
            }
            Ok(())
        }
    }

    impl Respond for Verifier {
        fn respond(&self, req: &Request) -> ResponseTemplate {
            match Self::check(req) {
                Ok(()) => self.ok.clone(),
                Err(problem) => {
                    self.problems.lock().unwrap().push(problem);
                    ResponseTemplate::new(401).set_body_json(serde_json::json!({
                        "error": {"code": "Denied", "message": "Denied by the resource provider."}
                    }))
                }
            }
        }
    }

    fn accepted() -> ResponseTemplate {
        ResponseTemplate::new(202).set_body_json(serde_json::json!({
            "value": [{
                "to": "+4915112345678",
                "messageId": "Outgoing_20210308_abc",
                "httpStatusCode": 202,
                "repeatabilityResult": "accepted",
                "successful": true,
                "errorMessage": null,
            }]
        }))
    }

    async fn verifying_server(ok: ResponseTemplate) -> (MockServer, Arc<Mutex<Vec<String>>>) {
        let server = MockServer::start().await;
        let problems = Arc::new(Mutex::new(Vec::new()));
        Mock::given(wiremock::matchers::method("POST"))
            .and(wiremock::matchers::path("/sms"))
            .and(wiremock::matchers::query_param("api-version", "2021-03-07"))
            .respond_with(Verifier {
                ok,
                problems: problems.clone(),
            })
            .mount(&server)
            .await;
        (server, problems)
    }

    #[tokio::test]
    async fn sends_a_signed_request_with_repeatability_fields() {
        let (server, problems) = verifying_server(accepted()).await;
        let provider = build_with_backoff(&config(&server.uri(), 2000), fast()).unwrap();
        let receipt = provider.send(&message()).await.unwrap();
        assert!(problems.lock().unwrap().is_empty(), "{problems:?}");
        assert_eq!(receipt.provider, "azure");
        assert_eq!(receipt.message_id.as_deref(), Some("Outgoing_20210308_abc"));

        let req = &received(&server).await[0];
        assert_eq!(header(req, "content-type"), Some("application/json"));
        let body = json(&req.body);
        assert_eq!(body["from"], "+18005550100");
        assert_eq!(body["message"], message().text);
        assert_eq!(body["smsSendOptions"]["enableDeliveryReport"], false);
        let recipients = body["smsRecipients"].as_array().unwrap();
        assert_eq!(recipients.len(), 1);
        assert_eq!(recipients[0]["to"], "+4915112345678");
        let id = recipients[0]["repeatabilityRequestId"].as_str().unwrap();
        assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 4);
        let first = recipients[0]["repeatabilityFirstSent"].as_str().unwrap();
        assert!(httpdate::parse_http_date(first).is_ok(), "{first}");
        assert!(first.ends_with(" GMT"));
    }

    #[tokio::test]
    async fn a_wrong_key_is_rejected_by_the_verifier() {
        let (server, problems) = verifying_server(accepted()).await;
        let mut cfg = config(&server.uri(), 2000);
        if let SmsConfig::Azure { access_key, .. } = &mut cfg {
            *access_key = BASE64.encode("another key");
        }
        let provider = build_with_backoff(&cfg, fast()).unwrap();
        match provider.send(&message()).await {
            Err(SmsError::Rejected { status, reason }) => {
                assert_eq!(status, Some(401));
                assert_eq!(
                    reason,
                    "Azure error Denied: Denied by the resource provider."
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(*problems.lock().unwrap(), ["signature mismatch"]);
    }

    #[tokio::test]
    async fn a_failed_recipient_in_a_202_is_a_failure() {
        let (server, _) = verifying_server(ResponseTemplate::new(202).set_body_json(
            serde_json::json!({"value": [{
                "to": "+4915112345678", "httpStatusCode": 400, "repeatabilityResult": "accepted",
                "successful": false, "errorMessage": "Invalid To phone number format.",
            }]}),
        ))
        .await;
        let provider = build_with_backoff(&config(&server.uri(), 2000), fast()).unwrap();
        match provider.send(&message()).await {
            Err(SmsError::Rejected { status, reason }) => {
                assert_eq!(status, Some(400));
                assert!(
                    reason.contains("Invalid To phone number format."),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(received(&server).await.len(), 1);
    }

    #[tokio::test]
    async fn error_responses_map_to_rejected_and_unavailable() {
        let server = MockServer::start().await;
        Mock::given(wiremock::matchers::method("POST"))
            .respond_with(ResponseTemplate::new(400).set_body_json(serde_json::json!({
                "error": {"code": "InvalidRequest", "message": "from is not a valid number"}
            })))
            .expect(1)
            .mount(&server)
            .await;
        let provider = build_with_backoff(&config(&server.uri(), 2000), fast()).unwrap();
        assert!(matches!(
            provider.send(&message()).await,
            Err(SmsError::Rejected {
                status: Some(400),
                ..
            })
        ));

        // A recipient-level 5xx inside a 202 is retried (same repeatability id), then gives up.
        let (server, _) = verifying_server(ResponseTemplate::new(202).set_body_json(
            serde_json::json!({"value": [{
                "to": "+4915112345678", "httpStatusCode": 503, "successful": false,
                "errorMessage": "Service unavailable",
            }]}),
        ))
        .await;
        let provider = build_with_backoff(&config(&server.uri(), 2000), fast()).unwrap();
        match provider.send(&message()).await {
            Err(SmsError::Unavailable(reason)) => assert!(reason.contains("503"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(received(&server).await.len(), 3);
    }

    /// After a read timeout the same request is sent again: same repeatability id, same
    /// first-sent date, byte-identical body (so the content hash matches too).
    #[tokio::test]
    async fn retries_after_a_timeout_with_the_same_repeatability_id() {
        let server = MockServer::start().await;
        let problems = Arc::new(Mutex::new(Vec::new()));
        Mock::given(wiremock::matchers::method("POST"))
            .respond_with(Verifier {
                ok: accepted().set_delay(Duration::from_millis(3000)),
                problems: problems.clone(),
            })
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(wiremock::matchers::method("POST"))
            .respond_with(Verifier {
                ok: accepted(),
                problems: problems.clone(),
            })
            .mount(&server)
            .await;
        let provider = build_with_backoff(&config(&server.uri(), 1000), fast()).unwrap();
        let receipt = provider.send(&message()).await.unwrap();
        assert_eq!(receipt.message_id.as_deref(), Some("Outgoing_20210308_abc"));
        assert!(problems.lock().unwrap().is_empty(), "{problems:?}");

        let reqs = received(&server).await;
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].body, reqs[1].body);
        let (a, b) = (json(&reqs[0].body), json(&reqs[1].body));
        let (a, b) = (&a["smsRecipients"][0], &b["smsRecipients"][0]);
        assert_eq!(a["repeatabilityRequestId"], b["repeatabilityRequestId"]);
        assert_eq!(a["repeatabilityFirstSent"], b["repeatabilityFirstSent"]);
    }

    #[tokio::test]
    async fn a_new_message_gets_a_new_repeatability_id() {
        let (server, _) = verifying_server(accepted()).await;
        let provider = build_with_backoff(&config(&server.uri(), 2000), fast()).unwrap();
        provider.send(&message()).await.unwrap();
        provider.send(&message()).await.unwrap();
        let reqs = received(&server).await;
        let id = |r: &Request| json(&r.body)["smsRecipients"][0]["repeatabilityRequestId"].clone();
        assert_ne!(id(&reqs[0]), id(&reqs[1]));
    }

    #[test]
    fn config_is_checked() {
        let mut cfg = config("https://contoso.communication.azure.com", 2000);
        if let SmsConfig::Azure { access_key, .. } = &mut cfg {
            *access_key = "not base64!".into();
        }
        assert!(matches!(
            build_with_backoff(&cfg, fast()),
            Err(SmsError::Config(_))
        ));
        assert!(
            build_with_backoff(
                &config("https://contoso.communication.azure.com/", 2000),
                fast()
            )
            .is_ok()
        );
    }

    #[test]
    fn signed_host_and_path_follow_the_endpoint() {
        let policy = crate::verify::sms::retry::Policy::new(1000, 0, fast()).unwrap();
        let p = AzureProvider::new(
            "https://contoso.communication.azure.com/",
            KEY_B64,
            "+1",
            policy,
        )
        .unwrap();
        assert_eq!(p.host, "contoso.communication.azure.com");
        assert_eq!(p.path_and_query, "/sms?api-version=2021-03-07");
        let p = AzureProvider::new("http://127.0.0.1:8443", KEY_B64, "+1", policy).unwrap();
        assert_eq!(p.host, "127.0.0.1:8443");
        assert_eq!(p.url, "http://127.0.0.1:8443/sms?api-version=2021-03-07");
    }
}
