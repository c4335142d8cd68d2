//! Tests of what all providers share: the message's redacting `Debug`, masking and
//! scrubbing, the configuration (from TOML, as an operator writes it), the capture provider,
//! the retry rules run against a real loopback HTTP server for every HTTP provider, and a
//! check that no log line carries the PIN or the full number.

use super::test_support::{PIN, fast, message, received, refused_url};
use super::*;
use std::time::Instant;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

// ---- the message, masking, scrubbing ----

#[test]
fn debug_of_a_message_redacts_the_text_and_masks_the_number() {
    let shown = format!("{:?}", message());
    assert!(!shown.contains(PIN), "{shown}");
    assert!(!shown.contains("+4915112345678"), "{shown}");
    assert!(shown.contains("+49*********78"), "{shown}");
    let redacted = format!("<redacted, {} chars>", message().text.chars().count());
    assert!(shown.contains(&redacted), "{shown}");
    assert!(shown.contains("ref-1"), "{shown}");
    let pretty = format!("{:#?}", message());
    assert!(!pretty.contains(PIN));
}

#[test]
fn destinations_must_be_e164() {
    for good in ["+4915112345678", "+1234567", "+123456789012345"] {
        assert!(check_destination(good).is_ok(), "{good}");
    }
    for bad in [
        "4915112345678",
        "+0123456789",
        "+123456",
        "+1234567890123456",
        "+49 151 1234",
        "",
    ] {
        assert!(
            matches!(
                check_destination(bad),
                Err(SmsError::Rejected { status: None, .. })
            ),
            "{bad}"
        );
    }
}

#[test]
fn scrub_removes_text_pin_and_number() {
    let msg = message();
    let echoed = format!(
        "bad To 4915112345678 (+4915112345678), body {}, code {PIN} again\nline2",
        msg.text
    );
    let clean = scrub(&echoed, &msg);
    assert!(!clean.contains(PIN), "{clean}");
    assert!(!clean.contains("4915112345678"), "{clean}");
    assert!(!clean.contains('\n'), "{clean}");
    assert!(
        clean.contains("[message text]") && clean.contains("[digits]"),
        "{clean}"
    );
    assert_eq!(scrub(&"x".repeat(1000), &msg).len(), 300);
    assert_eq!(scrub("  ", &msg), "no reason given");
}

#[test]
fn error_texts() {
    let rejected = SmsError::Rejected {
        status: Some(400),
        reason: "Twilio error 21211: bad number".into(),
    };
    assert_eq!(
        rejected.to_string(),
        "the SMS provider rejected the message (HTTP 400): Twilio error 21211: bad number"
    );
    let no_status = SmsError::Rejected {
        status: None,
        reason: "r".into(),
    };
    assert_eq!(
        no_status.to_string(),
        "the SMS provider rejected the message (no HTTP status): r"
    );
    assert!(SmsError::Timeout.to_string().contains("may or may not"));
}

// ---- configuration ----

fn parse(toml_text: &str) -> Result<SmsConfig, toml::de::Error> {
    toml::from_str(toml_text)
}

#[test]
fn every_provider_builds_from_toml_with_defaults() {
    let cases = [
        ("log", "provider = \"log\"\n"),
        (
            "webhook",
            "provider = \"webhook\"\nurl = \"https://sms-gw.example/send\"\n\
             headers = { Authorization = \"Bearer x\" }\n",
        ),
        (
            "twilio",
            "provider = \"twilio\"\naccount_sid = \"ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\n\
             auth_token = \"t\"\nfrom = \"+15005550006\"\n",
        ),
        (
            "tyntec",
            "provider = \"tyntec\"\napi_key = \"k\"\nfrom = \"ivrd\"\n",
        ),
        (
            "azure",
            "provider = \"azure\"\nendpoint = \"https://contoso.communication.azure.com\"\n\
             access_key = \"aXZyZA==\"\nfrom = \"+18005550100\"\n",
        ),
        (
            "vonage",
            "provider = \"vonage\"\napi_key = \"k\"\napi_secret = \"s\"\nfrom = \"ivrd\"\n",
        ),
    ];
    for (name, text) in cases {
        let cfg = parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let provider = build(&cfg).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(provider.name(), name);
    }

    match parse(cases[2].1).unwrap() {
        SmsConfig::Twilio {
            base_url,
            timeout_ms,
            max_retries,
            messaging_service_sid,
            ..
        } => {
            assert_eq!(base_url, "https://api.twilio.com");
            assert_eq!((timeout_ms, max_retries), (10_000, 2));
            assert_eq!(messaging_service_sid, None);
        }
        other => panic!("{other:?}"),
    }
    let SmsConfig::Tyntec { base_url, .. } = parse(cases[3].1).unwrap() else {
        panic!("not tyntec")
    };
    assert_eq!(base_url, "https://api.tyntec.com");
    let SmsConfig::Vonage { base_url, .. } = parse(cases[5].1).unwrap() else {
        panic!("not vonage")
    };
    assert_eq!(base_url, "https://rest.nexmo.com");
    assert!(matches!(
        SmsConfig::default(),
        SmsConfig::Log { path: None }
    ));
}

#[test]
fn explicit_settings_are_read() {
    let cfg = parse(
        "provider = \"tyntec\"\nbase_url = \"http://127.0.0.1:9\"\napi_key = \"k\"\n\
         from = \"ivrd\"\ntimeout_ms = 2500\nmax_retries = 0\n",
    )
    .unwrap();
    let SmsConfig::Tyntec {
        base_url,
        timeout_ms,
        max_retries,
        ..
    } = cfg
    else {
        panic!("not tyntec")
    };
    assert_eq!(
        (base_url.as_str(), timeout_ms, max_retries),
        ("http://127.0.0.1:9", 2500, 0)
    );
    let cfg = parse("provider = \"log\"\npath = \"pins.log\"\n").unwrap();
    let mut resolved = cfg.clone();
    resolved.resolve_relative_paths(std::path::Path::new("/etc/ivrd"));
    let SmsConfig::Log { path } = resolved else {
        panic!("not log")
    };
    assert_eq!(
        path.as_deref(),
        Some(std::path::Path::new("/etc/ivrd/pins.log"))
    );
}

#[test]
fn unknown_fields_and_providers_are_errors() {
    let err = parse("provider = \"tyntec\"\napi_key = \"k\"\nfrom = \"x\"\napikey = \"typo\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown field") && err.contains("apikey"),
        "{err}"
    );
    let err = parse("provider = \"log\"\ntimeout_ms = 5\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field"), "{err}");
    let err = parse("provider = \"sns\"\n").unwrap_err().to_string();
    assert!(err.contains("unknown variant"), "{err}");
    let err = parse("path = \"x\"\n").unwrap_err().to_string();
    assert!(err.contains("provider"), "{err}");
    // A missing secret parses (it may come from `api_secret_file`), but resolving the
    // secrets says which keys could provide it, and the provider refuses to build.
    let mut cfg = parse("provider = \"vonage\"\napi_key = \"k\"\nfrom = \"x\"\n").unwrap();
    let files = crate::secrets::SecretFiles::new("/nonexistent", None);
    let err = cfg.resolve_secrets(&files, &mut Vec::new()).unwrap_err();
    assert!(
        err.contains("vonage needs api_secret_file") && err.contains("or api_secret"),
        "{err}"
    );
    assert!(matches!(build(&cfg), Err(SmsError::Config(_))));
}

#[test]
fn invalid_values_are_config_errors() {
    for text in [
        "provider = \"tyntec\"\napi_key = \"k\"\nfrom = \"x\"\ntimeout_ms = 0\n",
        "provider = \"tyntec\"\napi_key = \"k\"\nfrom = \"x\"\nmax_retries = 50\n",
        "provider = \"tyntec\"\nbase_url = \"http://api.tyntec.com\"\napi_key = \"k\"\nfrom = \"x\"\n",
        "provider = \"webhook\"\nurl = \"ftp://127.0.0.1/\"\n",
        "provider = \"azure\"\nendpoint = \"https://x.example\"\naccess_key = \"%%%\"\nfrom = \"+1\"\n",
        "provider = \"twilio\"\naccount_sid = \"ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\nauth_token = \"t\"\n",
    ] {
        let cfg = parse(text).unwrap();
        assert!(matches!(build(&cfg), Err(SmsError::Config(_))), "{text}");
    }
}

#[test]
fn debug_of_a_config_hides_secrets() {
    let configs = [
        "provider = \"twilio\"\naccount_sid = \"ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\nauth_token = \"SECRET1\"\nfrom = \"+1\"\n",
        "provider = \"tyntec\"\napi_key = \"SECRET1\"\nfrom = \"x\"\n",
        "provider = \"azure\"\nendpoint = \"https://x.example\"\naccess_key = \"SECRET1\"\nfrom = \"+1\"\n",
        "provider = \"vonage\"\napi_key = \"k\"\napi_secret = \"SECRET1\"\nfrom = \"x\"\n",
        "provider = \"webhook\"\nurl = \"https://x.example/send?token=SECRET1\"\nheaders = { Authorization = \"SECRET1\" }\n",
    ];
    for text in configs {
        let shown = format!("{:?}", parse(text).unwrap());
        assert!(!shown.contains("SECRET1"), "{shown}");
    }
}

// ---- the capture provider ----

#[tokio::test]
async fn capture_records_and_can_simulate_an_outage() {
    let capture = CaptureProvider::new();
    let provider: Arc<dyn SmsProvider> = Arc::new(capture.clone());
    provider.send(&message()).await.unwrap();
    assert_eq!(capture.messages().len(), 1);
    assert!(capture.messages()[0].text.contains(PIN));

    capture.fail_with(SmsError::Unavailable("simulated outage".into()));
    assert!(matches!(
        provider.send(&message()).await,
        Err(SmsError::Unavailable(m)) if m == "simulated outage"
    ));
    assert_eq!(capture.messages().len(), 1);
    capture.recover();
    provider.send(&message()).await.unwrap();

    let taken = capture.take();
    assert_eq!(taken.len(), 2);
    assert!(capture.messages().is_empty());
}

// ---- the retry rules, for every HTTP provider, against a loopback server ----

struct Case {
    name: &'static str,
    config: fn(base: &str, timeout_ms: u64) -> SmsConfig,
    ok: fn() -> ResponseTemplate,
    /// The provider de-duplicates, so a retry after a timeout is allowed.
    dedupes: bool,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "webhook",
            config: |base, timeout_ms| SmsConfig::Webhook {
                url: format!("{base}/send"),
                headers: BTreeMap::new(),
                headers_file: Default::default(),
                timeout_ms,
                max_retries: 2,
            },
            ok: || ResponseTemplate::new(200),
            dedupes: true,
        },
        Case {
            name: "twilio",
            config: |base, timeout_ms| SmsConfig::Twilio {
                base_url: base.into(),
                account_sid: "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".into(),
                auth_token: "t".into(),
                auth_token_file: None,
                from: Some("+15005550006".into()),
                messaging_service_sid: None,
                timeout_ms,
                max_retries: 2,
            },
            ok: || ResponseTemplate::new(201).set_body_json(serde_json::json!({"sid": "SM1"})),
            dedupes: false,
        },
        Case {
            name: "tyntec",
            config: |base, timeout_ms| SmsConfig::Tyntec {
                base_url: base.into(),
                api_key: "k".into(),
                api_key_file: None,
                from: "ivrd".into(),
                timeout_ms,
                max_retries: 2,
            },
            ok: || ResponseTemplate::new(202).set_body_json(serde_json::json!({"requestId": "r1"})),
            dedupes: false,
        },
        Case {
            name: "azure",
            config: |base, timeout_ms| SmsConfig::Azure {
                endpoint: base.into(),
                access_key: "aXZyZA==".into(),
                access_key_file: None,
                from: "+18005550100".into(),
                timeout_ms,
                max_retries: 2,
            },
            ok: || {
                ResponseTemplate::new(202).set_body_json(serde_json::json!({"value": [
                    {"to": "+4915112345678", "messageId": "m1", "httpStatusCode": 202, "successful": true}
                ]}))
            },
            dedupes: true,
        },
        Case {
            name: "vonage",
            config: |base, timeout_ms| SmsConfig::Vonage {
                base_url: base.into(),
                api_key: "k".into(),
                api_secret: "s".into(),
                api_secret_file: None,
                from: "ivrd".into(),
                timeout_ms,
                max_retries: 2,
            },
            ok: || {
                ResponseTemplate::new(200).set_body_json(serde_json::json!({
                    "message-count": "1",
                    "messages": [{"status": "0", "message-id": "v1"}]
                }))
            },
            dedupes: false,
        },
    ]
}

#[tokio::test]
async fn a_429_with_retry_after_is_retried_once_after_the_asked_delay() {
    for case in cases() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "5"))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .respond_with((case.ok)())
            .mount(&server)
            .await;
        let provider = build_with_backoff(&(case.config)(&server.uri(), 2000), fast()).unwrap();
        let started = Instant::now();
        let receipt = provider
            .send(&message())
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let elapsed = started.elapsed();
        assert_eq!(receipt.provider, case.name);
        assert_eq!(received(&server).await.len(), 2, "{}", case.name);
        // Retry-After: 5 s, capped at 200 ms by fast(): far above fast()'s 5 ms back-off
        // (so the header was used) and far below 5 s (so the cap was applied).
        assert!(
            elapsed >= Duration::from_millis(200) && elapsed < Duration::from_secs(4),
            "{}: {elapsed:?}",
            case.name
        );
    }
}

#[tokio::test]
async fn persistent_500s_give_unavailable_after_max_retries() {
    for case in cases() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(500))
            .mount(&server)
            .await;
        let provider = build_with_backoff(&(case.config)(&server.uri(), 2000), fast()).unwrap();
        match provider.send(&message()).await {
            Err(SmsError::Unavailable(reason)) => {
                assert!(
                    reason.contains("500") && reason.contains("after 3 attempts"),
                    "{}: {reason}",
                    case.name
                )
            }
            other => panic!("{}: {other:?}", case.name),
        }
        assert_eq!(received(&server).await.len(), 3, "{}", case.name);
    }
}

#[tokio::test]
async fn a_503_then_success_is_retried() {
    for case in cases() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(503))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .respond_with((case.ok)())
            .mount(&server)
            .await;
        let provider = build_with_backoff(&(case.config)(&server.uri(), 2000), fast()).unwrap();
        provider
            .send(&message())
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(received(&server).await.len(), 2, "{}", case.name);
    }
}

/// The server takes the request but answers too late. Without de-duplication the message
/// may be queued already, so there must be exactly one POST and a Timeout; with it, the
/// request is repeated up to max_retries times.
#[tokio::test]
async fn a_read_timeout_is_retried_only_where_the_provider_dedupes() {
    for case in cases() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with((case.ok)().set_delay(Duration::from_millis(3000)))
            .mount(&server)
            .await;
        let provider = build_with_backoff(&(case.config)(&server.uri(), 500), fast()).unwrap();
        let result = provider.send(&message()).await;
        assert!(
            matches!(result, Err(SmsError::Timeout)),
            "{}: {result:?}",
            case.name
        );
        let expected = if case.dedupes { 3 } else { 1 };
        assert_eq!(received(&server).await.len(), expected, "{}", case.name);
    }
}

/// Once an attempt may have got through, giving up later (here on 500s) must still say
/// "maybe sent", not "unavailable": the caller must not invite the user to ask again at once.
#[tokio::test]
async fn a_timeout_then_500s_still_reports_timeout() {
    for case in cases().into_iter().filter(|c| c.dedupes) {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with((case.ok)().set_delay(Duration::from_millis(3000)))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(500))
            .mount(&server)
            .await;
        let provider = build_with_backoff(&(case.config)(&server.uri(), 500), fast()).unwrap();
        let result = provider.send(&message()).await;
        assert!(
            matches!(result, Err(SmsError::Timeout)),
            "{}: {result:?}",
            case.name
        );
        assert_eq!(received(&server).await.len(), 3, "{}", case.name);
    }
}

#[tokio::test]
async fn a_refused_connection_gives_unavailable() {
    for case in cases() {
        let provider = build_with_backoff(&(case.config)(&refused_url(), 2000), fast()).unwrap();
        match provider.send(&message()).await {
            Err(SmsError::Unavailable(reason)) => {
                assert!(
                    reason.starts_with("connection failed"),
                    "{}: {reason}",
                    case.name
                );
                assert!(
                    reason.contains("after 3 attempts"),
                    "{}: {reason}",
                    case.name
                );
                assert!(!reason.contains("127.0.0.1"), "{}: {reason}", case.name);
            }
            other => panic!("{}: {other:?}", case.name),
        }
    }
}

#[tokio::test]
async fn a_bad_number_is_rejected_before_any_request() {
    for case in cases() {
        let server = MockServer::start().await;
        let provider = build_with_backoff(&(case.config)(&server.uri(), 2000), fast()).unwrap();
        let mut msg = message();
        msg.to = "015112345678".into();
        assert!(matches!(
            provider.send(&msg).await,
            Err(SmsError::Rejected { status: None, .. })
        ));
        assert!(received(&server).await.is_empty(), "{}", case.name);
    }
}

// ---- logs ----

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_never_contain_the_pin_or_the_full_number() {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Other tests run in parallel threads without a subscriber. A callsite they register
    // while this dispatcher is being registered can keep a cached "never" interest (a race
    // in tracing-core), which would silently drop our events; recomputing the cache here
    // and before each round makes every callsite see this dispatcher.
    tracing::callsite::rebuild_interest_cache();

    // The log provider with a file, the capture provider.
    let dir = tempfile::tempdir().unwrap();
    let log = build(&SmsConfig::Log {
        path: Some(dir.path().join("pins.log")),
    })
    .unwrap();
    log.send(&message()).await.unwrap();
    CaptureProvider::new().send(&message()).await.unwrap();

    // Every HTTP provider: success, then an error body that echoes the text and number,
    // retried (5xx) and refused (4xx), then a timeout.
    for case in cases() {
        tracing::callsite::rebuild_interest_cache();
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with((case.ok)())
            .up_to_n_times(1)
            .mount(&server)
            .await;
        let echo = serde_json::json!({
            "code": 21211, "message": format!("bad {} for +4915112345678", message().text),
            "title": format!("bad {}", message().text), "detail": "4915112345678",
            "error": {"code": "E", "message": message().text},
        });
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(503).set_body_json(echo.clone()))
            .up_to_n_times(3)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(400).set_body_json(echo))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .respond_with((case.ok)().set_delay(Duration::from_millis(3000)))
            .mount(&server)
            .await;
        // A generous timeout for the answered requests (the machine may be busy), a short
        // one for the request that is answered too late.
        let patient = build_with_backoff(&(case.config)(&server.uri(), 5000), fast()).unwrap();
        let hasty = build_with_backoff(&(case.config)(&server.uri(), 500), fast()).unwrap();
        patient.send(&message()).await.unwrap();
        for (expected, provider) in [
            ("unavailable", &patient),
            ("rejected", &patient),
            ("no answer", &hasty),
        ] {
            let err = provider.send(&message()).await.unwrap_err().to_string();
            assert!(err.contains(expected), "{}: {err}", case.name);
            assert!(
                !err.contains(PIN) && !err.contains("4915112345678"),
                "{}: {err}",
                case.name
            );
        }
    }

    let logged = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    assert!(logged.contains("+49*********78"), "{logged}");
    assert!(
        logged.contains("SMS accepted") && logged.contains("retrying"),
        "{logged}"
    );
    assert!(!logged.contains(PIN), "{logged}");
    assert!(!logged.contains("4915112345678"), "{logged}");
    assert!(!logged.contains("Your ivrd code"), "{logged}");
}
