//! The `twilio` provider: Twilio Programmable Messaging (API 2010-04-01).
//!
//! `POST {base}/2010-04-01/Accounts/{AccountSid}/Messages.json`, HTTP Basic auth with the
//! account SID and auth token, form fields `To`, `From` and/or `MessagingServiceSid`, `Body`
//! and `ValidityPeriod` (seconds; Twilio accepts 1 to 36000, error 21624/90007 otherwise).
//! Success is `201 Created` with `{"sid": "SM...", "status": "queued", ...}`; errors are
//! `{"code": 21211, "message": "...", "more_info": "...", "status": 400}`.
//!
//! Twilio has no idempotency key, so after a request went out and no answer came back the
//! message is NOT posted again (a duplicate SMS, billed twice): that is [`SmsError::Timeout`].
//! 429 (error 20429, "too many requests") and 5xx are retried after a back-off.

use super::retry::{HttpSender, Policy, Verdict, join, parse_base_url};
use super::{SendFuture, SmsError, SmsMessage, SmsProvider, SmsReceipt, check_destination, scrub};
use serde::Deserialize;

/// Twilio's accepted `ValidityPeriod` range in seconds (errors 21624 / 90007).
const VALIDITY_SECS: std::ops::RangeInclusive<u64> = 1..=36_000;

pub(crate) struct TwilioProvider {
    http: HttpSender,
    url: String,
    account_sid: String,
    auth_token: String,
    from: Option<String>,
    messaging_service_sid: Option<String>,
}

impl TwilioProvider {
    pub(crate) fn new(
        base_url: &str,
        account_sid: &str,
        auth_token: &str,
        from: Option<&str>,
        messaging_service_sid: Option<&str>,
        policy: Policy,
    ) -> Result<Self, SmsError> {
        let base = parse_base_url("twilio base_url", base_url)?;
        // The SID goes into the URL path: insist on its documented shape (AC + 32 hex).
        if !(account_sid.len() == 34
            && account_sid.starts_with("AC")
            && account_sid[2..].bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(SmsError::Config(
                "twilio account_sid must be 'AC' followed by 32 hex digits".into(),
            ));
        }
        if auth_token.is_empty() {
            return Err(SmsError::Config("twilio auth_token is empty".into()));
        }
        let from = from.filter(|s| !s.is_empty()).map(str::to_string);
        let messaging_service_sid = messaging_service_sid
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        if from.is_none() && messaging_service_sid.is_none() {
            return Err(SmsError::Config(
                "twilio needs `from` or `messaging_service_sid`".into(),
            ));
        }
        Ok(TwilioProvider {
            http: HttpSender::new("twilio", policy, false)?,
            url: join(
                &base,
                &format!("2010-04-01/Accounts/{account_sid}/Messages.json"),
            ),
            account_sid: account_sid.to_string(),
            auth_token: auth_token.to_string(),
            from,
            messaging_service_sid,
        })
    }
}

impl SmsProvider for TwilioProvider {
    fn name(&self) -> &'static str {
        "twilio"
    }

    fn send<'a>(&'a self, msg: &'a SmsMessage) -> SendFuture<'a> {
        Box::pin(async move {
            check_destination(&msg.to)?;
            // Round up so a 90.5 s PIN is not dropped half a second early.
            let validity = msg.ttl.as_millis().div_ceil(1000).clamp(
                u128::from(*VALIDITY_SECS.start()),
                u128::from(*VALIDITY_SECS.end()),
            );
            let mut form: Vec<(&str, String)> = vec![("To", msg.to.clone())];
            if let Some(from) = &self.from {
                form.push(("From", from.clone()));
            }
            if let Some(sid) = &self.messaging_service_sid {
                form.push(("MessagingServiceSid", sid.clone()));
            }
            form.push(("Body", msg.text.clone()));
            form.push(("ValidityPeriod", validity.to_string()));
            self.http
                .send(
                    msg,
                    |client| {
                        client
                            .post(&self.url)
                            .basic_auth(&self.account_sid, Some(&self.auth_token))
                            .form(&form)
                    },
                    |status, body| judge(status, body, msg),
                )
                .await
        })
    }
}

#[derive(Deserialize)]
struct Created {
    sid: Option<String>,
    status: Option<String>,
    error_code: Option<i64>,
    error_message: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: Option<i64>,
    message: Option<String>,
}

fn judge(status: u16, body: &[u8], msg: &SmsMessage) -> Verdict {
    if (200..300).contains(&status) {
        let created: Option<Created> = serde_json::from_slice(body).ok();
        // A message created as "failed" will not be sent (e.g. a blocked destination).
        if let Some(c) = created
            .as_ref()
            .filter(|c| c.status.as_deref() == Some("failed"))
        {
            return Verdict::Done(Err(SmsError::Rejected {
                status: Some(status),
                reason: scrub(
                    &format!(
                        "Twilio created the message as failed (error {}): {}",
                        c.error_code.unwrap_or_default(),
                        c.error_message.as_deref().unwrap_or("no message")
                    ),
                    msg,
                ),
            }));
        }
        return Verdict::Done(Ok(SmsReceipt {
            provider: "twilio",
            message_id: created.and_then(|c| c.sid),
        }));
    }
    let reason = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody {
            code: Some(code),
            message,
        }) => scrub(
            &format!(
                "Twilio error {code}: {}",
                message.as_deref().unwrap_or("no message")
            ),
            msg,
        ),
        _ => format!("Twilio answered HTTP {status}"),
    };
    Verdict::from_error_status(status, reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::sms::test_support::{PIN, fast, form, header, message, received};
    use crate::verify::sms::{SmsConfig, build_with_backoff};
    use base64::Engine;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    const SID: &str = "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const PATH: &str = "/2010-04-01/Accounts/ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/Messages.json";

    fn config(base: &str, from: Option<&str>, service: Option<&str>) -> SmsConfig {
        SmsConfig::Twilio {
            base_url: base.to_string(),
            account_sid: SID.into(),
            auth_token: "tok3n".into(),
            auth_token_file: None,
            from: from.map(Into::into),
            messaging_service_sid: service.map(Into::into),
            timeout_ms: 2000,
            max_retries: 2,
        }
    }

    fn created() -> ResponseTemplate {
        ResponseTemplate::new(201).set_body_json(serde_json::json!({
            "sid": "SM0123456789abcdef0123456789abcdef",
            "status": "queued",
            "error_code": null,
            "error_message": null,
        }))
    }

    #[tokio::test]
    async fn posts_the_documented_form_with_basic_auth() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(PATH))
            .respond_with(created())
            .expect(1)
            .mount(&server)
            .await;
        let cfg = config(&server.uri(), Some("+15005550006"), None);
        let provider = build_with_backoff(&cfg, fast()).unwrap();
        let receipt = provider.send(&message()).await.unwrap();
        assert_eq!(receipt.provider, "twilio");
        assert_eq!(
            receipt.message_id.as_deref(),
            Some("SM0123456789abcdef0123456789abcdef")
        );

        let req = &received(&server).await[0];
        let expected_auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{SID}:tok3n"))
        );
        assert_eq!(header(req, "authorization"), Some(expected_auth.as_str()));
        assert_eq!(
            header(req, "content-type"),
            Some("application/x-www-form-urlencoded")
        );
        let f = form(&req.body);
        assert_eq!(f.len(), 4, "{f:?}");
        assert_eq!(f["To"], "+4915112345678");
        assert_eq!(f["From"], "+15005550006");
        assert_eq!(f["Body"], message().text);
        assert_eq!(f["ValidityPeriod"], "300");
    }

    #[tokio::test]
    async fn messaging_service_and_validity_bounds() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(created())
            .mount(&server)
            .await;
        let cfg = config(&server.uri(), None, Some("MG123"));
        let provider = build_with_backoff(&cfg, fast()).unwrap();
        let mut msg = message();
        msg.ttl = std::time::Duration::from_secs(50_000);
        provider.send(&msg).await.unwrap();
        msg.ttl = std::time::Duration::from_millis(300);
        provider.send(&msg).await.unwrap();

        let reqs = received(&server).await;
        let first = form(&reqs[0].body);
        assert_eq!(first["MessagingServiceSid"], "MG123");
        assert!(!first.contains_key("From"));
        assert_eq!(first["ValidityPeriod"], "36000");
        assert_eq!(form(&reqs[1].body)["ValidityPeriod"], "1");
    }

    #[tokio::test]
    async fn documented_errors_are_rejected_and_scrubbed() {
        let server = MockServer::start().await;
        // Twilio echoes the number in 21211; the test also echoes the PIN to check scrubbing.
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(400).set_body_json(serde_json::json!({
                "code": 21211,
                "message": format!("The 'To' number +4915112345678 is not a valid phone number. Body: {}", message().text),
                "more_info": "https://www.twilio.com/docs/errors/21211",
                "status": 400,
            })))
            .expect(1)
            .mount(&server)
            .await;
        let provider =
            build_with_backoff(&config(&server.uri(), Some("+15005550006"), None), fast()).unwrap();
        let err = provider.send(&message()).await.unwrap_err();
        let text = err.to_string();
        match &err {
            SmsError::Rejected { status, reason } => {
                assert_eq!(*status, Some(400));
                assert!(reason.contains("21211"), "{reason}");
                assert!(reason.contains("+49*********78"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            !text.contains(PIN) && !text.contains("+4915112345678"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn bad_credentials_are_rejected() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(401).set_body_json(serde_json::json!({
                "code": 20003, "message": "Authenticate", "more_info": "", "status": 401,
            })))
            .expect(1)
            .mount(&server)
            .await;
        let provider =
            build_with_backoff(&config(&server.uri(), Some("+15005550006"), None), fast()).unwrap();
        match provider.send(&message()).await {
            Err(SmsError::Rejected { status, reason }) => {
                assert_eq!(status, Some(401));
                assert_eq!(reason, "Twilio error 20003: Authenticate");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn created_as_failed_is_rejected() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(201).set_body_json(serde_json::json!({
                "sid": "SMx", "status": "failed", "error_code": 30007, "error_message": "Carrier violation",
            })))
            .mount(&server)
            .await;
        let provider =
            build_with_backoff(&config(&server.uri(), Some("+15005550006"), None), fast()).unwrap();
        assert!(matches!(
            provider.send(&message()).await,
            Err(SmsError::Rejected {
                status: Some(201),
                ..
            })
        ));
    }

    #[test]
    fn config_is_checked() {
        let no_sender = config("https://api.twilio.com", None, None);
        assert!(matches!(
            build_with_backoff(&no_sender, fast()),
            Err(SmsError::Config(_))
        ));
        let mut bad_sid = config("https://api.twilio.com", Some("+1"), None);
        if let SmsConfig::Twilio { account_sid, .. } = &mut bad_sid {
            *account_sid = "AC../../x".into();
        }
        assert!(matches!(
            build_with_backoff(&bad_sid, fast()),
            Err(SmsError::Config(_))
        ));
        let plain_http = config("http://api.twilio.com", Some("+1"), None);
        assert!(matches!(
            build_with_backoff(&plain_http, fast()),
            Err(SmsError::Config(_))
        ));
    }
}
