//! Status callbacks: every change of a verification's status (`pending` when its code went
//! out, then `approved`, `canceled`, `max_attempts_reached`, `expired` or `failed`) is POSTed
//! as JSON to `[api] webhook_url`, signed, and retried until the receiver takes it.
//!
//! - **Signed.** `X-Ivrd-Signature: t=UNIX,v1=HEX`, where HEX is the HMAC-SHA256, keyed by
//!   `[api] webhook_secret`, of `UNIX.BODY` (the timestamp, a dot, the body as sent), as
//!   Stripe signs its events. A receiver recomputes it, compares in constant time and refuses
//!   an old `t`, so a forged or replayed callback is told apart.
//! - **Nothing lost.** Callbacks go through an outbox table first (written with the change),
//!   then out: a restart or a receiver that is down delays them, in order. A 2xx answer
//!   delivers one; anything else is tried again after 1, 2, 4, ... seconds (at most 10
//!   minutes apart), [`MAX_ATTEMPTS`] times in all (about an hour and a half), then dropped with
//!   a warning.
//! - **Bounded.** Each try has [`TRY_TIMEOUT`]; redirects are not followed (the client is
//!   [`crate::http_lookup::HttpClient`]); a URL must be `https://` (or `http://` on loopback).

use crate::http_lookup::{HttpClient, HttpMethod, HttpRequest};
use crate::store::{OutboxEvent, Store, Verification};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Tries per callback before it is dropped.
pub const MAX_ATTEMPTS: u32 = 16;
/// One try's bound, connection and answer included.
pub const TRY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the outbox is looked at.
const TICK: Duration = Duration::from_millis(250);
/// Events claimed per round.
const CLAIM: u32 = 32;
/// How long a claimed event is this node's: longer than a round's tries take (they run one
/// after another), so no other node sends it meanwhile; a node that dies with it leaves it
/// to the others after this.
const LEASE: Duration = Duration::from_secs(CLAIM as u64 * TRY_TIMEOUT.as_secs() + 60);

/// The callback body of `v`'s current status.
pub fn body(v: &Verification, at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    serde_json::json!({
        "type": "verification.status",
        "id": v.id,
        "to": v.to,
        "channel": v.channel,
        "status": v.status.as_str(),
        "sends": v.sends,
        "checks": v.checks,
        "delivery": v.delivery,
        "at": secs,
    })
    .to_string()
}

/// The `X-Ivrd-Signature` value for `body` sent at `timestamp` (Unix seconds).
pub fn signature(secret: &str, timestamp: u64, body: &str) -> String {
    let t = timestamp.to_string();
    let hex = hmac_hex(secret, &[t.as_bytes(), b".", body.as_bytes()]);
    format!("t={timestamp},v1={hex}")
}

/// HMAC-SHA256 of the concatenated `parts`, lower-case hex.
fn hmac_hex(secret: &str, parts: &[&[u8]]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The wait before try `attempts + 1`: 1 s, doubling, at most 10 minutes.
pub fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.min(10)).min(Duration::from_secs(600))
}

/// Where callbacks go now (the configuration may change on reload), if anywhere.
pub struct Target {
    pub url: String,
    pub secret: String,
}

/// Delivers the outbox until `shutdown`. `target` reads the current configuration.
pub async fn run(
    store: Arc<Store>,
    target: impl Fn() -> Option<Target> + Send + 'static,
    shutdown: CancellationToken,
) {
    let client = HttpClient::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        let Some(t) = target() else {
            continue;
        };
        let due = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || {
                store.claim_webhooks(SystemTime::now(), LEASE, CLAIM)
            })
            .await
        };
        let due = match due {
            Ok(Ok(due)) => due,
            Ok(Err(e)) => {
                warn!(error = %e, "cannot read the webhook outbox");
                continue;
            }
            Err(_) => continue,
        };
        // One verification's callbacks in order: after a failure, its later ones wait.
        let mut held: Vec<String> = Vec::new();
        // Claimed but not tried this round: handed back at its end rather than left to the
        // lease, so a stop or a failure delays them for no node.
        let mut untried: Vec<i64> = Vec::new();
        for event in due {
            if held.contains(&event.verification_id) || shutdown.is_cancelled() {
                untried.push(event.id);
                continue;
            }
            // A try in flight is not cut short by a stop (it is bounded by TRY_TIMEOUT): a
            // callback the receiver took is not sent again by another node.
            let delivered = deliver(&client, &t, &event).await;
            let store = store.clone();
            let id = event.verification_id.clone();
            let outcome =
                tokio::task::spawn_blocking(move || settle(&store, &event, delivered)).await;
            match outcome {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => held.push(id),
                Ok(Err(e)) => warn!(error = %e, "cannot update the webhook outbox"),
                Err(_) => {}
            }
        }
        if !untried.is_empty() {
            let store = store.clone();
            let released = tokio::task::spawn_blocking(move || {
                store.release_webhooks(&untried, SystemTime::now())
            })
            .await;
            if let Ok(Err(e)) = released {
                warn!(error = %e, "cannot hand back webhook claims (they come due after their lease)");
            }
        }
    }
}

/// One try: whether the receiver took it (a 2xx answer).
async fn deliver(client: &HttpClient, t: &Target, event: &OutboxEvent) -> bool {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let req = HttpRequest {
        method: HttpMethod::Post,
        url: t.url.clone(),
        headers: vec![
            (
                "X-Ivrd-Signature".into(),
                signature(&t.secret, now, &event.body),
            ),
            ("X-Ivrd-Event".into(), event.id.to_string()),
        ],
        body: Some(event.body.clone()),
        timeout: TRY_TIMEOUT,
    };
    match client.send(&req).await {
        Ok(resp) if (200..300).contains(&resp.status) => {
            debug!(verification = %event.verification_id, "webhook delivered");
            true
        }
        Ok(resp) => {
            debug!(verification = %event.verification_id, status = resp.status, "webhook refused");
            false
        }
        Err(e) => {
            debug!(verification = %event.verification_id, error = %e, "webhook failed");
            false
        }
    }
}

/// Out of the outbox when delivered or given up; otherwise due again after the back-off.
/// Returns whether the event left the outbox delivered.
fn settle(
    store: &Store,
    event: &OutboxEvent,
    delivered: bool,
) -> Result<bool, crate::store::StoreError> {
    if delivered {
        store.remove_webhook(event.id)?;
        return Ok(true);
    }
    let attempts = event.attempts + 1;
    if attempts >= MAX_ATTEMPTS {
        warn!(
            verification = %event.verification_id,
            attempts,
            "webhook dropped: the receiver did not take it"
        );
        store.remove_webhook(event.id)?;
        return Ok(false);
    }
    store.retry_webhook(
        event.id,
        attempts,
        SystemTime::now() + backoff(event.attempts),
    )?;
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // RFC 4231, test case 2, split across parts as a signature splits its input.
        assert_eq!(
            hmac_hex("Jefe", &[b"what do ya want ", b"for nothing?"]),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            signature("s3cret", 1_700_000_000, r#"{"a":1}"#),
            format!(
                "t=1700000000,v1={}",
                hmac_hex("s3cret", &[br#"1700000000.{"a":1}"#])
            )
        );
        assert_ne!(
            signature("s3cret", 1_700_000_001, r#"{"a":1}"#),
            signature("s3cret", 1_700_000_000, r#"{"a":1}"#)
        );
    }

    /// A stop during a round: the try in flight ends (the receiver takes it), and the
    /// round's other claims are due again at once for another node, not after the lease.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_hands_back_the_claims_it_did_not_try() {
        use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path().join("ivrd.db")).unwrap());
        for v in ["VE1", "VE2", "VE3"] {
            store
                .enqueue_webhook(v, &format!("{v} pending"), SystemTime::now())
                .unwrap();
        }
        let receiver = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(204).set_delay(Duration::from_millis(700)))
            .mount(&receiver)
            .await;
        let shutdown = CancellationToken::new();
        let url = format!("{}/hook", receiver.uri());
        let task = tokio::spawn(run(
            store.clone(),
            move || {
                Some(Target {
                    url: url.clone(),
                    secret: "s3cret".into(),
                })
            },
            shutdown.clone(),
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while receiver.received_requests().await.unwrap().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "no callback came");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.cancel();
        tokio::time::timeout(TRY_TIMEOUT, task)
            .await
            .expect("the deliverer stops within a try")
            .unwrap();
        assert_eq!(receiver.received_requests().await.unwrap().len(), 1);
        assert_eq!(store.webhooks_waiting().unwrap(), 2, "the first delivered");
        let due: Vec<String> = store
            .claim_webhooks(SystemTime::now(), LEASE, CLAIM)
            .unwrap()
            .into_iter()
            .map(|e| e.body)
            .collect();
        assert_eq!(due, ["VE2 pending", "VE3 pending"]);
    }

    #[test]
    fn backoff_doubles_to_ten_minutes() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(12), Duration::from_secs(600));
        let total: u64 = (0..MAX_ATTEMPTS).map(|a| backoff(a).as_secs()).sum();
        assert!((3600..7200).contains(&total), "{total} s of retries");
    }
}
