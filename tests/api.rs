//! The HTTP API (issue 15) against the running daemon, with a real HTTP client (reqwest) and
//! the SMS going to a real HTTP server on loopback (`SmsSink`, the webhook provider), keys
//! made by the `ivrd api-keys` binary on the daemon's own database:
//! every endpoint and status transition, bad keys (401), bad numbers (400 with the reason),
//! limits (429 with Retry-After), one customer's lock-out holding on the phone path too, the
//! audit rows, a key that cannot see another's verifications, revocation, and a reload that
//! keeps pending codes good.

mod common;

use common::api::{Api, make_key};
use common::verify::{Rig, pin_in, toml_str, wrong_pin};
use common::*;
use ivrd::store::Store;
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, SystemTime};

fn code_in(post: &SmsPost) -> String {
    pin_in(&post.text(), 6)
}

#[test]
fn the_api_verifies_numbers_under_the_ivrs_limits_and_audit() {
    let rig = Rig::new(200, free_udp_port());
    let port = free_tcp_port();
    let daemon = rig.daemon(&format!(
        "[api]\nlisten = {}\n[api.templates.signup]\nen = \"Shop code {{pin}}, {{minutes}} min\"\n",
        toml_str(&format!("127.0.0.1:{port}"))
    ));
    let db = rig.db_path();
    let key = make_key(&db, "web");
    let other = make_key(&db, "other");
    let api = Api::new(port);

    // Keys.
    let (s, _, body) = api.call(
        "POST",
        "/v1/verifications",
        None,
        Some(json!({"to": "+4915112345678"})),
    );
    assert_eq!(
        (s, body["code"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    let (s, _, _) = api.start("ivrd_not-a-key", json!({"to": "+4915112345678"}));
    assert_eq!(s, 401);

    // Numbers and channels, each refused with its reason.
    let (s, _, body) = api.start(&key, json!({"to": "12"}));
    assert_eq!(
        (s, body["code"].as_str()),
        (400, Some("invalid_number")),
        "{body}"
    );
    let (s, _, body) = api.start(&key, json!({"to": "+49 30 12345678"}));
    assert_eq!(
        (s, body["code"].as_str()),
        (400, Some("not_mobile")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("fixed line"),
        "{body}"
    );
    let (s, _, body) = api.start(&key, json!({"to": "+49 30 12345678", "channel": "auto"}));
    assert_eq!(
        (s, body["code"].as_str()),
        (501, Some("voice_unavailable")),
        "{body}"
    );
    let (s, _, body) = api.start(&key, json!({"to": "+4915112345678", "channel": "fax"}));
    assert_eq!(
        (s, body["code"].as_str()),
        (400, Some("invalid_channel")),
        "{body}"
    );
    let (s, _, body) = api.start(&key, json!({"to": "+4915112345678", "locale": "fr"}));
    assert_eq!(
        (s, body["code"].as_str()),
        (400, Some("unknown_template")),
        "{body}"
    );
    let (s, _, body) = api.start(&key, json!({"to": "+4915112345678", "pin": "1"}));
    assert_eq!(
        (s, body["code"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    assert!(rig.sms.posts().is_empty(), "nothing refused was sent");

    // pending -> approved, with a wrong code in between; a sign-up number is no customer.
    let (s, _, v) = api.start(&key, json!({"to": "015112345678", "template": "signup"}));
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["status"], "pending");
    assert_eq!(
        v["to"], "+4915112345678",
        "national numbers in [store] default_region"
    );
    let id = v["id"].as_str().unwrap().to_string();
    let posts = rig.sms.wait_posts(1, Duration::from_secs(10));
    assert_eq!(posts[0].field("to"), "+4915112345678");
    assert!(
        posts[0].text().starts_with("Shop code "),
        "{:?}",
        posts[0].text()
    );
    let code = code_in(&posts[0]);
    let (s, v) = api.check(&key, &id, &wrong_pin(&code));
    assert_eq!(
        (s, v["status"].as_str(), v["tries_left"].as_u64()),
        (200, Some("pending"), Some(2)),
        "{v}"
    );
    let (s, _, body) = api.call(
        "POST",
        &format!("/v1/verifications/{id}/check"),
        Some(&key),
        Some(json!({"code": "12ab"})),
    );
    assert_eq!(
        (s, body["code"].as_str()),
        (400, Some("invalid_code")),
        "{body}"
    );
    // Another key does not see it.
    let (s, v) = api.check(&other, &id, &code);
    assert_eq!((s, v["code"].as_str()), (404, Some("not_found")), "{v}");
    let (s, v) = api.check(&key, &id, &code);
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    assert_eq!(v["checks"], 2);
    let (s, v) = api.check(&key, &id, &code);
    assert_eq!((s, v["code"].as_str()), (409, Some("not_pending")), "{v}");
    let (s, _, v) = api.call("GET", &format!("/v1/verifications/{id}"), Some(&key), None);
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");

    // pending -> canceled; a start while one is pending resends its code (200, same id).
    let (s, _, v) = api.start(&key, json!({"to": "+4915112345679"}));
    assert_eq!(s, 201, "{v}");
    let id2 = v["id"].as_str().unwrap().to_string();
    let (s, _, v) = api.start(&key, json!({"to": "+4915112345679"}));
    assert_eq!(
        (s, v["id"].as_str(), v["sends"].as_u64()),
        (200, Some(id2.as_str()), Some(2)),
        "{v}"
    );
    let posts = rig.sms.wait_posts(3, Duration::from_secs(10));
    assert_eq!(
        code_in(&posts[1]),
        code_in(&posts[2]),
        "the same code while it is valid"
    );
    let (s, _, v) = api.call(
        "POST",
        &format!("/v1/verifications/{id2}/resend"),
        Some(&key),
        None,
    );
    assert_eq!((s, v["sends"].as_u64()), (200, Some(3)), "{v}");
    // The fourth send within the window is over [limits] sms_per_customer = 3.
    let (s, retry, v) = api.call(
        "POST",
        &format!("/v1/verifications/{id2}/resend"),
        Some(&key),
        None,
    );
    assert_eq!(
        (s, v["code"].as_str()),
        (429, Some("number_rate_limited")),
        "{v}"
    );
    assert_eq!(retry.as_deref(), Some("600"), "Retry-After: the SMS window");
    let (s, _, v) = api.call(
        "POST",
        &format!("/v1/verifications/{id2}/cancel"),
        Some(&key),
        None,
    );
    assert_eq!((s, v["status"].as_str()), (200, Some("canceled")), "{v}");
    let (s, v) = api.check(&key, &id2, &code_in(&posts[2]));
    assert_eq!((s, v["code"].as_str()), (409, Some("not_pending")), "{v}");

    // pending -> max_attempts_reached, for a customer's number: the customer is locked out
    // for the IVR too ([limits] failures_before_lockout = 3 in the rig).
    let (s, _, v) = api.start(&key, json!({"to": "+491701234567", "locale": "de"}));
    assert_eq!(s, 201, "{v}");
    let id3 = v["id"].as_str().unwrap().to_string();
    let posts = rig.sms.wait_posts(5, Duration::from_secs(10));
    assert!(
        posts[4].text().starts_with("Ihr Bestätigungscode"),
        "{:?}",
        posts[4].text()
    );
    let wrong = wrong_pin(&code_in(&posts[4]));
    for _ in 0..2 {
        assert_eq!(api.check(&key, &id3, &wrong).1["status"], "pending");
    }
    let (_, v) = api.check(&key, &id3, &wrong);
    assert_eq!(v["status"], "max_attempts_reached", "{v}");
    let store = Store::open_read_only(&db).unwrap();
    let (until, _) = store
        .lockout("123456")
        .unwrap()
        .expect("Erika is locked out");
    assert!(
        until > SystemTime::now(),
        "the lock-out holds on the phone path"
    );
    let (s, retry, v) = api.start(&key, json!({"to": "+491701234567"}));
    assert_eq!((s, v["code"].as_str()), (429, Some("locked_out")), "{v}");
    assert!(retry.is_some());

    // Every verification that ended has its audit row, named after the key.
    let rows = rig.wait_audit(3, Duration::from_secs(5));
    let by_id = |id: &str| {
        rows.iter()
            .find(|r| r.call_id == id)
            .cloned()
            .unwrap_or_else(|| panic!("no audit row for {id}: {rows:#?}"))
    };
    let r = by_id(&id);
    assert_eq!(
        (r.outcome.as_str(), r.caller.as_str(), r.dialed.as_str()),
        ("verified", "api:web", "+4915112345678")
    );
    assert_eq!(r.customer_id, None);
    assert_eq!(by_id(&id2).outcome, "completed");
    let r = by_id(&id3);
    assert_eq!(
        (r.outcome.as_str(), r.customer_id.as_deref()),
        ("wrong-pin", Some("123456"))
    );

    // A reload keeps a pending code good.
    let (s, _, v) = api.start(&other, json!({"to": "+4915112340000"}));
    assert_eq!(s, 201, "{v}");
    let id4 = v["id"].as_str().unwrap().to_string();
    let posts = rig.sms.wait_posts(6, Duration::from_secs(10));
    let code4 = code_in(&posts[5]);
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) };
    daemon.expect_log("reloaded", Duration::from_secs(10));
    let (_, v) = api.check(&other, &id4, &code4);
    assert_eq!(v["status"], "approved", "{v}");

    // Revoked: 401 from now on.
    let out = Command::new(env!("CARGO_BIN_EXE_ivrd"))
        .args(["api-keys", "revoke", "web", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success());
    let (s, _, _) = api.call("GET", &format!("/v1/verifications/{id}"), Some(&key), None);
    assert_eq!(s, 401);

    // No code in the log, at any point.
    for c in [&code, &code4] {
        common::verify::assert_pin_not_logged(&daemon, c);
    }
}

/// Status callbacks: each status change is POSTed to `[api] webhook_url`, signed with the
/// secret from `webhook_secret_file` (HMAC-SHA256 of `t.body`), retried with back-off while
/// the receiver fails, and delivered in order (the later change waits for the earlier).
#[test]
fn status_callbacks_are_signed_retried_and_in_order() {
    use hmac::{Hmac, Mac};
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hooks = rt.block_on(async {
        let server = MockServer::start().await;
        // The receiver is down for the first two tries.
        Mock::given(method("POST"))
            .and(path("/hook"))
            .respond_with(ResponseTemplate::new(503))
            .up_to_n_times(2)
            .with_priority(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/hook"))
            .respond_with(ResponseTemplate::new(204))
            .with_priority(5)
            .mount(&server)
            .await;
        server
    });
    let rig = Rig::new(200, free_udp_port());
    let secret = rig.state.path().join("hook-secret");
    std::fs::write(&secret, "hook s3cret\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let port = free_tcp_port();
    let _daemon = rig.daemon(&format!(
        "[api]\nlisten = {}\nwebhook_url = {}\nwebhook_secret_file = {}\n",
        toml_str(&format!("127.0.0.1:{port}")),
        toml_str(&format!("{}/hook", hooks.uri())),
        toml_str(&secret.display().to_string()),
    ));
    let key = make_key(&rig.db_path(), "web");
    let api = Api::new(port);
    let (s, _, v) = api.start(&key, json!({"to": "+4915112345678"}));
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let code = code_in(&rig.sms.wait_posts(1, Duration::from_secs(10))[0]);
    let (_, v) = api.check(&key, &id, &code);
    assert_eq!(v["status"], "approved");

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let requests = loop {
        let r = rt.block_on(hooks.received_requests()).unwrap_or_default();
        if r.len() >= 4 || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let seen: Vec<(String, String)> = requests
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            (
                body["id"].as_str().unwrap().to_string(),
                body["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = ["pending", "pending", "pending", "approved"]
        .iter()
        .map(|s| (id.clone(), s.to_string()))
        .collect();
    assert_eq!(seen, want, "two refused tries, then pending, then approved");
    for r in &requests {
        let sig = r.headers.get("x-ivrd-signature").unwrap().to_str().unwrap();
        let (t, v1) = sig
            .strip_prefix("t=")
            .and_then(|s| s.split_once(",v1="))
            .unwrap_or_else(|| panic!("signature {sig:?}"));
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"hook s3cret").unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(&r.body);
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            v1,
            hex,
            "the signature of {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // The retries waited: 1 s, then 2 s.
    let first = &requests[0];
    let third = &requests[2];
    let t = |r: &wiremock::Request| -> u64 {
        r.headers.get("x-ivrd-signature").unwrap().to_str().unwrap()[2..12]
            .parse()
            .unwrap()
    };
    assert!(t(third) >= t(first) + 2, "back-off between tries");
    let store = Store::open_read_only(rig.db_path()).unwrap();
    assert_eq!(store.webhooks_waiting().unwrap(), 0, "the outbox is empty");
}

/// `[api] tls = true`: HTTPS with `[tls]`'s certificate (a client that trusts its CA gets
/// JSON answers); plain HTTP to the same port gets nothing.
#[test]
fn the_api_speaks_https_with_the_tls_certificate() {
    let rig = Rig::new(200, free_udp_port());
    let pki = TestPki::new();
    let (cert, key_pem, ca) = pki.write_server(rig.state.path());
    let port = free_tcp_port();
    let _daemon = rig.daemon(&format!(
        "[tls]\ncert = {}\nkey = {}\n[api]\nlisten = {}\ntls = true\n",
        toml_str(&cert.display().to_string()),
        toml_str(&key_pem.display().to_string()),
        toml_str(&format!("127.0.0.1:{port}")),
    ));
    let key = make_key(&rig.db_path(), "web");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    let https = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let (status, body) = rt.block_on(async {
        let r = https
            .post(format!("https://127.0.0.1:{port}/v1/verifications"))
            .bearer_auth(&key)
            .json(&json!({"to": "+4915112345678"}))
            .send()
            .await
            .expect("HTTPS request");
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    });
    assert_eq!(
        (status, body["status"].as_str()),
        (201, Some("pending")),
        "{body}"
    );
    let plain = rt.block_on(async {
        reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/v1/verifications/x"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
    });
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
}

/// The two statuses the first test cannot reach quickly: `expired` (a code past its validity,
/// `[limits] pin_ttl_secs = 2` here, noticed on the next request) and `failed` (the SMS
/// provider refused: 502 `sms_failed`, and the verification is kept as failed). Both end in
/// an audit row.
#[test]
fn codes_expire_and_a_send_the_provider_refuses_fails() {
    let rig = Rig::new(200, free_udp_port());
    let port = free_tcp_port();
    let _daemon = rig.daemon(&format!(
        "[api]\nlisten = {}\n[limits]\npin_ttl_secs = 2\n",
        toml_str(&format!("127.0.0.1:{port}"))
    ));
    let key = make_key(&rig.db_path(), "web");
    let api = Api::new(port);
    let (s, _, v) = api.start(&key, json!({"to": "+4915112345678"}));
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let code = code_in(&rig.sms.wait_posts(1, Duration::from_secs(10))[0]);
    std::thread::sleep(Duration::from_millis(2500));
    let (s, _, v) = api.call("GET", &format!("/v1/verifications/{id}"), Some(&key), None);
    assert_eq!((s, v["status"].as_str()), (200, Some("expired")), "{v}");
    let (s, v) = api.check(&key, &id, &code);
    assert_eq!((s, v["code"].as_str()), (409, Some("not_pending")), "{v}");
    assert!(
        v["message"].as_str().unwrap().ends_with("is expired"),
        "{v}"
    );

    rig.sms.set_status(500);
    let (s, _, v) = api.start(&key, json!({"to": "+4915112345679"}));
    assert_eq!((s, v["code"].as_str()), (502, Some("sms_failed")), "{v}");
    rig.sms.set_status(200);

    let rows = rig.wait_audit(2, Duration::from_secs(5));
    let outcomes: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.dialed.as_str(), r.outcome.as_str()))
        .collect();
    assert!(
        outcomes.contains(&("+4915112345678", "pin-expired")),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&("+4915112345679", "sms-failed")),
        "{outcomes:?}"
    );
}
