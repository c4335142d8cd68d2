//! The `tyntec` provider: tyntec SMS API v1 (a plain message; ivrd makes and checks the PIN).
//!
//! `POST {base}/messaging/v1/sms` with header `apikey: <key>` and JSON
//! `{"to":"+E164","from":"...","message":"...","validity":"<minutes>","reference":"..."}`.
//! The OpenAPI spec types `validity` as a string of minutes (default "2880"), so it is sent
//! as one. Success is 200 (or 201/202) with `{"requestId":"...","status":"ACCEPTED",...}`;
//! errors are RFC 7807 problems `{"type","title","status","detail"}`.
//!
//! tyntec has no idempotency key: after a request went out and no answer came back the
//! message is not posted again ([`SmsError::Timeout`]); 429 and 5xx are retried.

use super::retry::{HttpSender, Policy, Verdict, join, parse_base_url};
use super::{SendFuture, SmsError, SmsMessage, SmsProvider, SmsReceipt, check_destination, scrub};
use reqwest::header::HeaderValue;
use serde::Deserialize;

pub(crate) struct TyntecProvider {
    http: HttpSender,
    url: String,
    api_key: HeaderValue,
    from: String,
}

impl TyntecProvider {
    pub(crate) fn new(
        base_url: &str,
        api_key: &str,
        from: &str,
        policy: Policy,
    ) -> Result<Self, SmsError> {
        let base = parse_base_url("tyntec base_url", base_url)?;
        if api_key.is_empty() {
            return Err(SmsError::Config("tyntec api_key is empty".into()));
        }
        let mut api_key = HeaderValue::from_str(api_key)
            .map_err(|_| SmsError::Config("tyntec api_key has invalid characters".into()))?;
        api_key.set_sensitive(true);
        if from.is_empty() {
            return Err(SmsError::Config("tyntec from is empty".into()));
        }
        Ok(TyntecProvider {
            http: HttpSender::new("tyntec", policy, false)?,
            url: join(&base, "messaging/v1/sms"),
            api_key,
            from: from.to_string(),
        })
    }
}

impl SmsProvider for TyntecProvider {
    fn name(&self) -> &'static str {
        "tyntec"
    }

    fn send<'a>(&'a self, msg: &'a SmsMessage) -> SendFuture<'a> {
        Box::pin(async move {
            check_destination(&msg.to)?;
            // Whole minutes, rounded up, at least one: a shorter validity would drop a
            // message the PIN is still good for.
            let minutes = msg.ttl.as_secs().div_ceil(60).max(1);
            let body = serde_json::json!({
                "to": msg.to,
                "from": self.from,
                "message": msg.text,
                "validity": minutes.to_string(),
                "reference": msg.reference,
            });
            self.http
                .send(
                    msg,
                    |client| {
                        client
                            .post(&self.url)
                            .header("apikey", self.api_key.clone())
                            .json(&body)
                    },
                    |status, body| judge(status, body, msg),
                )
                .await
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Accepted {
    request_id: Option<String>,
}

/// RFC 7807 problem details (tyntec's `Problem` schema).
#[derive(Deserialize)]
struct Problem {
    title: Option<String>,
    detail: Option<String>,
}

fn judge(status: u16, body: &[u8], msg: &SmsMessage) -> Verdict {
    if (200..300).contains(&status) {
        return Verdict::Done(Ok(SmsReceipt {
            provider: "tyntec",
            message_id: serde_json::from_slice::<Accepted>(body)
                .ok()
                .and_then(|a| a.request_id),
        }));
    }
    let reason = match serde_json::from_slice::<Problem>(body) {
        Ok(Problem {
            title: Some(title),
            detail,
        }) => scrub(
            &match detail {
                Some(d) => format!("tyntec: {title}: {d}"),
                None => format!("tyntec: {title}"),
            },
            msg,
        ),
        _ => format!("tyntec answered HTTP {status}"),
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

    fn config(base: &str) -> SmsConfig {
        SmsConfig::Tyntec {
            base_url: base.to_string(),
            api_key: "k3y".into(),
            api_key_file: None,
            from: "ivrd".into(),
            timeout_ms: 2000,
            max_retries: 2,
        }
    }

    fn problem(status: u16, title: &str, detail: &str) -> ResponseTemplate {
        ResponseTemplate::new(status).set_body_raw(
            serde_json::json!({
                "type": "https://docs.tyntec.com/problems/DataNotParseable",
                "title": title, "status": status, "detail": detail,
            })
            .to_string(),
            "application/problem+json",
        )
    }

    #[tokio::test]
    async fn posts_the_documented_json_with_apikey() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/messaging/v1/sms"))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "requestId": "e74db8d4-77ad-4671-8feb-9bc76b0df188",
                "status": "ACCEPTED",
                "submitDate": "2019-07-02T16:47:39+0200",
                "href": "/messaging/v1/messages/e74db8d4-77ad-4671-8feb-9bc76b0df188",
            })))
            .expect(1)
            .mount(&server)
            .await;
        let provider = build_with_backoff(&config(&server.uri()), fast()).unwrap();
        let mut msg = message();
        msg.ttl = std::time::Duration::from_secs(301);
        let receipt = provider.send(&msg).await.unwrap();
        assert_eq!(receipt.provider, "tyntec");
        assert_eq!(
            receipt.message_id.as_deref(),
            Some("e74db8d4-77ad-4671-8feb-9bc76b0df188")
        );

        let req = &received(&server).await[0];
        assert_eq!(header(req, "apikey"), Some("k3y"));
        assert_eq!(header(req, "content-type"), Some("application/json"));
        assert_eq!(
            json(&req.body),
            serde_json::json!({
                "to": "+4915112345678",
                "from": "ivrd",
                "message": message().text,
                "validity": "6",
                "reference": "ref-1",
            })
        );
    }

    #[tokio::test]
    async fn accepted_with_202_and_no_body() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(202))
            .mount(&server)
            .await;
        let provider = build_with_backoff(&config(&server.uri()), fast()).unwrap();
        assert_eq!(provider.send(&message()).await.unwrap().message_id, None);
    }

    #[tokio::test]
    async fn problems_map_to_rejected_and_unavailable() {
        for (status, title) in [
            (400, "The given data were not parsable."),
            (401, "Unauthorized"),
            (403, "Forbidden"),
        ] {
            let server = MockServer::start().await;
            Mock::given(method("POST"))
                .respond_with(problem(status, title, "see docs"))
                .expect(1)
                .mount(&server)
                .await;
            let provider = build_with_backoff(&config(&server.uri()), fast()).unwrap();
            match provider.send(&message()).await {
                Err(SmsError::Rejected { status: s, reason }) => {
                    assert_eq!(s, Some(status));
                    assert_eq!(reason, format!("tyntec: {title}: see docs"));
                }
                other => panic!("{status}: {other:?}"),
            }
        }

        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(problem(500, "Something went wrong. :-(", "later"))
            .expect(3)
            .mount(&server)
            .await;
        let provider = build_with_backoff(&config(&server.uri()), fast()).unwrap();
        match provider.send(&message()).await {
            Err(SmsError::Unavailable(reason)) => {
                assert!(reason.contains("Something went wrong"), "{reason}");
                assert!(reason.contains("after 3 attempts"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn config_is_checked() {
        let mut cfg = config("https://api.tyntec.com");
        if let SmsConfig::Tyntec { api_key, .. } = &mut cfg {
            api_key.clear();
        }
        assert!(matches!(
            build_with_backoff(&cfg, fast()),
            Err(SmsError::Config(_))
        ));
    }
}
