//! Shared pieces of the SMS tests: a sample message, short back-off timings, a URL nobody
//! listens on, and helpers to read what a loopback server received.

use super::{Backoff, SmsMessage};
use std::collections::HashMap;
use std::time::Duration;

/// The PIN inside [`message`]'s text; tests assert it never shows up where it must not.
pub(crate) const PIN: &str = "493817";

pub(crate) fn message() -> SmsMessage {
    SmsMessage {
        to: "+4915112345678".into(),
        text: format!("Your ivrd code is {PIN}. It expires in 5 minutes."),
        reference: "ref-1".into(),
        ttl: Duration::from_secs(300),
    }
}

/// Back-off short enough for tests; the `Retry-After` cap (200 ms) is well above `max` so a
/// test can tell that the header, not the exponential wait, set the delay.
pub(crate) fn fast() -> Backoff {
    Backoff {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(20),
        retry_after_cap: Duration::from_millis(200),
    }
}

/// An `http://127.0.0.1:<port>` where nothing listens (the port was just released), so a
/// connection is refused.
pub(crate) fn refused_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// The fields of an `application/x-www-form-urlencoded` body.
pub(crate) fn form(body: &[u8]) -> HashMap<String, String> {
    let body = std::str::from_utf8(body).unwrap();
    let url = reqwest::Url::parse(&format!("http://x/?{body}")).unwrap();
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The JSON body of a request.
pub(crate) fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap()
}

/// A header of a received request as text.
pub(crate) fn header<'a>(req: &'a wiremock::Request, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The requests a server got so far.
pub(crate) async fn received(server: &wiremock::MockServer) -> Vec<wiremock::Request> {
    server.received_requests().await.unwrap_or_default()
}
