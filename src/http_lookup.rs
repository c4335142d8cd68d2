//! The IO half of a dialplan `http` step: one request to the admin's own service (a CRM, a
//! ticket system), its answer mapped into variables.
//!
//! The interpreter renders the step's templates and calls [`HttpClient::send`]; this module
//! owns what must hold whatever the templates and the remote server do:
//! - a caller's input can only land in the path, query or body: [`check_url_prefix`] refuses
//!   templates whose scheme or host is not fixed text, [`url_encode`] and [`json_escape`] make
//!   a value inert where it is put, and header values with line breaks are refused;
//! - the request cannot be steered elsewhere: redirects are answers, never followed;
//! - the remote server cannot hold a call or the daemon's memory: the whole exchange is bounded
//!   by the step's timeout and the body by [`MAX_BODY`], read chunk by chunk;
//! - what comes back into variables is a scalar of at most [`MAX_VALUE`] bytes ([`extract`]).
//!
//! `ivrd simulate` must never reach the real service: it answers from [`HttpFakes`], a TOML
//! file with one table per step.

use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Largest response body read; more is an error, never a bigger allocation.
pub const MAX_BODY: usize = 64 * 1024;

/// Largest value [`extract`] puts into a variable: variables end up in prompts, SMS texts, the
/// audit and further requests, none of which has room for a document.
pub const MAX_VALUE: usize = 1024;

/// How long connecting may take, whatever the step's timeout: a host that does not answer
/// SYNs is reported as such rather than as a slow answer (the step's timeout still bounds
/// the whole exchange when it is shorter).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest `delay` a fake may have: longer is a typo, and would overflow a simulated clock.
const MAX_FAKE_DELAY: Duration = Duration::from_secs(24 * 60 * 60);

/// The request method of an `http` step; only the two a lookup needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    Get,
    Post,
}

/// One request, with every template already rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: HttpMethod,
    /// An `http://` or `https://` URL.
    pub url: String,
    /// Sent in this order; a name may repeat.
    pub headers: Vec<(String, String)>,
    /// Sent as it is, as `application/json` unless `headers` set a content type.
    pub body: Option<String>,
    /// Bounds the whole exchange: connecting, sending and reading the whole body.
    pub timeout: Duration,
}

/// Any answer the server gave, whatever its status: the step decides what a 404 means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// At most [`MAX_BODY`] bytes.
    pub body: Vec<u8>,
}

/// Why a request got no answer. The texts are for the admin (logs, `ivrd simulate`), and never
/// contain the URL or a header value: both may carry a caller's data or a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// No complete answer within the step's timeout.
    #[error("no answer within the step's timeout")]
    Timeout,
    /// No connection (refused, unreachable, name not found, TLS failed); nothing was sent.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The body is larger than [`MAX_BODY`].
    #[error("the answer is larger than {} KiB", MAX_BODY / 1024)]
    TooLarge,
    /// The URL is not an `http://` or `https://` URL.
    #[error("not a usable URL: {0}")]
    BadUrl(String),
    /// A header's name or value cannot be sent: the text names the header and says why.
    #[error("bad header {0}")]
    BadHeader(String),
    /// Anything else (the connection broke off mid-answer, the answer was not HTTP).
    #[error("the request failed: {0}")]
    Other(String),
}

/// One client for the whole daemon (connection reuse), cheap to clone.
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: reqwest::Client,
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient::new()
    }
}

impl HttpClient {
    /// The daemon's client: no redirects followed (a redirect is an answer, not a place to
    /// go, so nobody can steer the request elsewhere), `ivrd/<version>` as the user agent,
    /// connecting bounded by [`CONNECT_TIMEOUT`].
    ///
    /// # Panics
    /// If the TLS backend cannot be set up, which is a broken build rather than a
    /// configuration problem (the SMS providers' clients are built the same way at start-up).
    pub fn new() -> HttpClient {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ivrd/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .expect("the HTTP client (TLS backend) could not be set up");
        HttpClient { client }
    }

    /// Sends `req` and reads the whole answer, within `req.timeout`. Any status is `Ok`.
    pub async fn send(&self, req: &HttpRequest) -> Result<HttpResponse, HttpError> {
        let url = parse_url(&req.url)?;
        let headers = header_map(&req.headers, req.body.is_some())?;
        let mut builder = match req.method {
            HttpMethod::Get => self.client.get(url),
            HttpMethod::Post => self.client.post(url),
        }
        .headers(headers);
        match (&req.body, req.method) {
            (Some(body), _) => builder = builder.body(body.clone()),
            // Said explicitly, as the client leaves the length of an empty body out: some
            // servers refuse a POST without one (411 Length Required).
            (None, HttpMethod::Post) => {
                builder = builder.header(CONTENT_LENGTH, HeaderValue::from_static("0"))
            }
            (None, HttpMethod::Get) => {}
        }
        match tokio::time::timeout(req.timeout, exchange(builder)).await {
            Ok(result) => result,
            Err(_) => Err(HttpError::Timeout),
        }
    }
}

/// Sends the request and reads the body, chunk by chunk, up to [`MAX_BODY`].
async fn exchange(builder: reqwest::RequestBuilder) -> Result<HttpResponse, HttpError> {
    let mut resp = builder.send().await.map_err(classify)?;
    let status = resp.status().as_u16();
    // Refused before reading anything when the server says it is too much; the announced size
    // is never used to allocate (it may be a lie either way).
    if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
        return Err(HttpError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(classify)? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(HttpError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(HttpResponse { status, body })
}

/// A reqwest error as an [`HttpError`], its text without the URL.
fn classify(e: reqwest::Error) -> HttpError {
    if e.is_connect() {
        HttpError::Connect(describe(&e))
    } else if e.is_timeout() {
        HttpError::Timeout
    } else if e.is_builder() {
        HttpError::BadUrl(describe(&e))
    } else {
        HttpError::Other(describe(&e))
    }
}

/// An error and its causes as one line, without the URL (which may carry a caller's data).
fn describe(e: &reqwest::Error) -> String {
    let mut text = String::new();
    crate::verify::sms::retry::push_causes(e, &mut text);
    if text.is_empty() {
        // reqwest's own text names the URL; without it, what kind of failure it was.
        text = if e.is_connect() {
            "connection failed".to_string()
        } else if e.is_body() || e.is_decode() {
            "the answer broke off".to_string()
        } else {
            "request failed".to_string()
        };
    }
    text
}

/// Parses `url`, which must be `http://` or `https://` with a host.
fn parse_url(url: &str) -> Result<reqwest::Url, HttpError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| HttpError::BadUrl(e.to_string()))?;
    match parsed.scheme() {
        "http" | "https" if parsed.host_str().is_some_and(|h| !h.is_empty()) => Ok(parsed),
        "http" | "https" => Err(HttpError::BadUrl("it has no host".to_string())),
        other => Err(HttpError::BadUrl(format!(
            "only http:// and https:// are allowed, not {other}://"
        ))),
    }
}

/// The step's headers as a [`HeaderMap`], with `Content-Type: application/json` added for a
/// body unless one is set. The framing headers are refused: the client sets them from the body,
/// and a second, different length would make the request ambiguous to the server.
fn header_map(headers: &[(String, String)], has_body: bool) -> Result<HeaderMap, HttpError> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let shown = name.escape_debug();
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            HttpError::BadHeader(format!(
                "\"{shown}\": not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)"
            ))
        })?;
        if header == CONTENT_LENGTH || header == reqwest::header::TRANSFER_ENCODING {
            return Err(HttpError::BadHeader(format!(
                "{shown}: set by ivrd from the body, not by the step"
            )));
        }
        // Bytes, not visible ASCII only: a name with an umlaut is a value, a line break is not.
        let value = HeaderValue::from_bytes(value.as_bytes()).map_err(|_| {
            HttpError::BadHeader(format!(
                "{shown}: the value has a line break or another control character"
            ))
        })?;
        map.append(header, value);
    }
    if has_body && !map.contains_key(CONTENT_TYPE) {
        map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    Ok(map)
}

/// A variable's value made safe for a URL: percent-encodes everything but RFC 3986 unreserved
/// characters (ALPHA DIGIT - . _ ~), so a caller's input can never add a path segment, query
/// or fragment.
pub fn url_encode(value: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// A variable's value made safe inside a JSON string literal (without the quotes): escapes
/// `"`, `\` and control characters as JSON requires, so a caller's input can never end the
/// string and add keys of its own.
pub fn json_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// Whether a URL template's scheme and host are fixed: `template_prefix` is the literal text
/// before the first variable; returns Err(reason) unless it starts with http:// or https://
/// and contains the whole authority (a '/' after the host, or the template has no variable at
/// all). So a caller's input can only ever land in the path, query or body.
pub fn check_url_prefix(template_prefix: &str, has_vars: bool) -> Result<(), String> {
    let Some(rest) = ["https://", "http://"].into_iter().find_map(|scheme| {
        let head = template_prefix.as_bytes().get(..scheme.len())?;
        // ASCII matched, so the slice below is on a character boundary.
        head.eq_ignore_ascii_case(scheme.as_bytes())
            .then(|| &template_prefix[scheme.len()..])
    }) else {
        return Err("the URL must start with http:// or https:// (not a variable)".to_string());
    };
    // Where a URL parser ends the authority of an http(s) URL.
    let end = rest.find(['/', '\\', '?', '#']);
    let authority = &rest[..end.unwrap_or(rest.len())];
    let host = authority.rsplit('@').next().unwrap_or_default();
    // A URL parser drops tabs and line breaks anywhere, which would leave the host empty and
    // let the parser take it from the path, that is from a variable.
    if authority
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err("the host part has a space or control character".to_string());
    }
    if host.is_empty() || host.starts_with(':') {
        return Err(if has_vars && end.is_none() {
            "the host must be written out, not a variable".to_string()
        } else {
            "the URL has no host".to_string()
        });
    }
    if has_vars && !rest[authority.len()..].contains('/') {
        return Err(
            "the host must be followed by a '/' before the first variable, so that the \
             variable cannot change where the request goes"
                .to_string(),
        );
    }
    Ok(())
}

/// Maps a response into variables: `pointers` are (variable, JSON pointer) pairs; the body
/// must be JSON (else Err("the response is not JSON: ...")); each pointer must exist (else
/// Err("no /x in the response")); strings are taken as they are, numbers and booleans as their
/// JSON text, null as "", arrays/objects are an error ("/x is an object, not a value"). A value
/// longer than [`MAX_VALUE`] (1024) bytes is an error. Returns the pairs in the given order.
///
/// With no pointers at all, the body is not read: a step that maps nothing may call a service
/// that answers `204 No Content` or plain text.
pub fn extract(
    body: &[u8],
    pointers: &[(String, String)],
) -> Result<Vec<(String, String)>, String> {
    if pointers.is_empty() {
        return Ok(Vec::new());
    }
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the response is not JSON: {e}"))?;
    let mut out = Vec::with_capacity(pointers.len());
    for (var, pointer) in pointers {
        let value = doc
            .pointer(pointer)
            .ok_or_else(|| format!("no {pointer} in the response"))?;
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Null => String::new(),
            serde_json::Value::Array(_) => {
                return Err(format!("{pointer} is an array, not a value"));
            }
            serde_json::Value::Object(_) => {
                return Err(format!("{pointer} is an object, not a value"));
            }
        };
        if text.len() > MAX_VALUE {
            return Err(format!(
                "{pointer} is longer than {MAX_VALUE} bytes ({} bytes)",
                text.len()
            ));
        }
        out.push((var.clone(), text));
    }
    Ok(out)
}

/// Validates a JSON pointer (RFC 6901) at check time: "" or starting with '/', escapes ~0 ~1
/// only; so that a typo is found when the dialplan is loaded, not on a call.
pub fn valid_pointer(p: &str) -> bool {
    if !(p.is_empty() || p.starts_with('/')) {
        return false;
    }
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return false;
        }
    }
    true
}

/// One faked answer: what [`HttpClient::send`] would have returned, and after how long.
#[derive(Debug, Clone)]
struct Fake {
    answer: Result<HttpResponse, HttpError>,
    delay: Duration,
}

/// The answers `ivrd simulate` gives `http` steps instead of calling the real service: a TOML
/// file with one table per step name.
///
/// ```toml
/// [crm]
/// status = 200                 # default 200
/// body = '{"name": "Ada"}'     # or: json = { name = "Ada" }; neither = empty body
/// [other_step]
/// error = "timeout"            # "timeout", or any text: a connection failure
/// delay = "2s"                 # how long the answer takes on the simulated clock
/// ```
#[derive(Debug, Clone, Default)]
pub struct HttpFakes {
    steps: BTreeMap<String, Fake>,
}

/// The keys of a fake's table, in the order the error messages list them.
const FAKE_KEYS: &str = "status, body, json, error, delay";

impl HttpFakes {
    /// Parses a fakes file; `file` names it in the errors. Unknown keys are errors (a typo
    /// would otherwise silently give the default answer), and so are `body` with `json`, an
    /// answer with `error`, and a body larger than [`MAX_BODY`] (the real client refuses it).
    pub fn parse(file: &str, src: &str) -> Result<HttpFakes, String> {
        let table: toml::Table = src.parse().map_err(|e: toml::de::Error| {
            let line = e.span().map(|s| {
                let at = s.start.min(src.len());
                src.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1
            });
            match line {
                Some(line) => format!("{file}:{line}: {}", e.message()),
                None => format!("{file}: {}", e.message()),
            }
        })?;
        let mut steps = BTreeMap::new();
        for (step, value) in table {
            let toml::Value::Table(entry) = value else {
                return Err(format!(
                    "{file}: {step} must be a table ([{step}] with {FAKE_KEYS})"
                ));
            };
            let fake = parse_fake(&entry).map_err(|e| format!("{file}: [{step}] {e}"))?;
            steps.insert(step, fake);
        }
        Ok(HttpFakes { steps })
    }

    /// Reads and parses a fakes file.
    pub fn load(path: &Path) -> Result<HttpFakes, String> {
        let src = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        HttpFakes::parse(&path.display().to_string(), &src)
    }

    /// The faked answer for `step`, and its delay (Duration::ZERO if none); None if the file
    /// has no entry for the step.
    pub fn answer(&self, step: &str) -> Option<(Result<HttpResponse, HttpError>, Duration)> {
        self.steps
            .get(step)
            .map(|fake| (fake.answer.clone(), fake.delay))
    }

    /// What a request of `step` gets in a simulation: the faked answer, a timeout when its
    /// delay is over the request's timeout (as the real client would give up), or, with no
    /// entry for the step, a failure that says how to give one (a simulation never calls out).
    pub fn respond(&self, step: &str, req: &HttpRequest) -> Result<HttpResponse, HttpError> {
        match self.answer(step) {
            Some((_, delay)) if delay > req.timeout => Err(HttpError::Timeout),
            Some((answer, _)) => answer,
            None => Err(HttpError::Other(format!(
                "the simulation has no answer for step \"{step}\" (ivrd simulate --http FILE)"
            ))),
        }
    }

    /// The steps the file has answers for, sorted: to tell the admin about fakes for steps the
    /// dialplan does not have.
    pub fn steps(&self) -> impl Iterator<Item = &str> {
        self.steps.keys().map(String::as_str)
    }
}

/// One step's table of a fakes file.
fn parse_fake(entry: &toml::Table) -> Result<Fake, String> {
    if let Some(key) = entry
        .keys()
        .find(|k| !matches!(k.as_str(), "status" | "body" | "json" | "error" | "delay"))
    {
        return Err(format!("unknown key {key:?}; allowed: {FAKE_KEYS}"));
    }
    let delay = match entry.get("delay") {
        None => Duration::ZERO,
        Some(toml::Value::String(s)) => {
            let d = humantime::parse_duration(s)
                .map_err(|e| format!("delay {s:?} is not a duration like \"2s\": {e}"))?;
            if d > MAX_FAKE_DELAY {
                return Err(format!("delay {s:?} is longer than a day"));
            }
            d
        }
        Some(_) => return Err("delay must be a string like \"2s\"".to_string()),
    };
    if let Some(error) = entry.get("error") {
        if let Some(key) = ["status", "body", "json"]
            .into_iter()
            .find(|k| entry.contains_key(*k))
        {
            return Err(format!(
                "error and {key} together: a request that fails has no answer"
            ));
        }
        let toml::Value::String(text) = error else {
            return Err("error must be a string: \"timeout\" or a reason".to_string());
        };
        let error = if text == "timeout" {
            HttpError::Timeout
        } else {
            HttpError::Connect(text.clone())
        };
        return Ok(Fake {
            answer: Err(error),
            delay,
        });
    }
    let status = match entry.get("status") {
        None => 200,
        Some(toml::Value::Integer(n)) if (100..=599).contains(n) => *n as u16,
        Some(_) => return Err("status must be a number from 100 to 599".to_string()),
    };
    let body = match (entry.get("body"), entry.get("json")) {
        (Some(_), Some(_)) => return Err("body and json together: give one of them".to_string()),
        (Some(toml::Value::String(s)), None) => s.clone().into_bytes(),
        (Some(_), None) => return Err("body must be a string".to_string()),
        (None, Some(value)) => {
            serde_json::to_vec(&toml_to_json(value)?).map_err(|e| format!("json: {e}"))?
        }
        (None, None) => Vec::new(),
    };
    if body.len() > MAX_BODY {
        return Err(format!(
            "the body is larger than {} KiB, which the real client refuses",
            MAX_BODY / 1024
        ));
    }
    Ok(Fake {
        answer: Ok(HttpResponse { status, body }),
        delay,
    })
}

/// A TOML value as JSON: tables become objects, dates their RFC 3339 text.
fn toml_to_json(value: &toml::Value) -> Result<serde_json::Value, String> {
    Ok(match value {
        toml::Value::String(s) => serde_json::Value::String(s.clone()),
        toml::Value::Integer(n) => serde_json::Value::from(*n),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .ok_or_else(|| format!("json: {f} has no JSON form"))?,
        toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        toml::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(toml_to_json).collect::<Result<_, _>>()?)
        }
        toml::Value::Table(table) => serde_json::Value::Object(
            table
                .iter()
                .map(|(k, v)| Ok((k.clone(), toml_to_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use wiremock::matchers::{body_string, header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn get(url: String) -> HttpRequest {
        HttpRequest {
            method: HttpMethod::Get,
            url,
            headers: Vec::new(),
            body: None,
            timeout: Duration::from_secs(5),
        }
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn get_returns_status_and_body() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/api/customers/42"))
            .and(header(
                "user-agent",
                concat!("ivrd/", env!("CARGO_PKG_VERSION")),
            ))
            .respond_with(ResponseTemplate::new(200).set_body_string(r#"{"name":"Ada"}"#))
            .expect(1)
            .mount(&server)
            .await;
        let resp = HttpClient::new()
            .send(&get(format!("{}/api/customers/42", server.uri())))
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, br#"{"name":"Ada"}"#);
        server.verify().await;
    }

    #[tokio::test]
    async fn post_sends_json_body_content_type_and_headers() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/lookup"))
            .and(header("content-type", "application/json"))
            .and(header("authorization", "Bearer t0k"))
            .and(body_string(r#"{"id": "42"}"#))
            .respond_with(ResponseTemplate::new(201))
            .expect(1)
            .mount(&server)
            .await;
        let req = HttpRequest {
            method: HttpMethod::Post,
            url: format!("{}/lookup", server.uri()),
            headers: pairs(&[("Authorization", "Bearer t0k"), ("X-Name", "Müller")]),
            body: Some(r#"{"id": "42"}"#.to_string()),
            timeout: Duration::from_secs(5),
        };
        let resp = HttpClient::new().send(&req).await.unwrap();
        assert_eq!(resp.status, 201);
        assert!(resp.body.is_empty());
        server.verify().await;
        let received = server.received_requests().await.unwrap();
        assert_eq!(
            received[0].headers.get_all("content-type").iter().count(),
            1
        );
        let name = received[0].headers.get("x-name").unwrap();
        assert_eq!(name.as_bytes(), "Müller".as_bytes());
    }

    #[tokio::test]
    async fn a_content_type_of_the_step_is_kept() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200))
            .mount(&server)
            .await;
        let req = HttpRequest {
            method: HttpMethod::Post,
            url: format!("{}/form", server.uri()),
            headers: pairs(&[("content-TYPE", "application/x-www-form-urlencoded")]),
            body: Some("id=42".to_string()),
            timeout: Duration::from_secs(5),
        };
        HttpClient::new().send(&req).await.unwrap();
        let received = server.received_requests().await.unwrap();
        let types: Vec<_> = received[0].headers.get_all("content-type").iter().collect();
        assert_eq!(types, ["application/x-www-form-urlencoded"]);
        assert_eq!(received[0].body, b"id=42");
    }

    #[tokio::test]
    async fn a_post_without_body_says_its_length() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(header("content-length", "0"))
            .respond_with(ResponseTemplate::new(204))
            .expect(1)
            .mount(&server)
            .await;
        let mut req = get(format!("{}/ping", server.uri()));
        req.method = HttpMethod::Post;
        assert_eq!(HttpClient::new().send(&req).await.unwrap().status, 204);
        server.verify().await;
        let received = server.received_requests().await.unwrap();
        assert!(received[0].headers.get("content-type").is_none());
    }

    #[tokio::test]
    async fn a_404_is_an_answer() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(404).set_body_string("no such customer"))
            .mount(&server)
            .await;
        let resp = HttpClient::new()
            .send(&get(format!("{}/api/customers/7", server.uri())))
            .await
            .unwrap();
        assert_eq!(resp.status, 404);
        assert_eq!(resp.body, b"no such customer");
    }

    #[tokio::test]
    async fn a_slow_server_times_out_on_time() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(10)))
            .mount(&server)
            .await;
        let mut req = get(format!("{}/slow", server.uri()));
        req.timeout = Duration::from_millis(500);
        let start = Instant::now();
        let result = HttpClient::new().send(&req).await;
        let elapsed = start.elapsed();
        assert_eq!(result, Err(HttpError::Timeout));
        assert!(elapsed >= req.timeout, "{elapsed:?}");
        assert!(
            elapsed < req.timeout + Duration::from_secs(1),
            "{elapsed:?}"
        );
        assert_eq!(
            HttpError::Timeout.to_string(),
            "no answer within the step's timeout"
        );
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused() {
        let server = MockServer::start().await;
        Mock::given(path("/big"))
            .respond_with(ResponseTemplate::new(200).set_body_bytes(vec![b'x'; MAX_BODY + 1]))
            .mount(&server)
            .await;
        Mock::given(path("/full"))
            .respond_with(ResponseTemplate::new(200).set_body_bytes(vec![b'x'; MAX_BODY]))
            .mount(&server)
            .await;
        let client = HttpClient::new();
        let big = client.send(&get(format!("{}/big", server.uri()))).await;
        assert_eq!(big, Err(HttpError::TooLarge));
        let full = client.send(&get(format!("{}/full", server.uri()))).await;
        assert_eq!(full.unwrap().body.len(), MAX_BODY);
    }

    /// A chunked answer that never ends (no Content-Length to refuse early): the read must stop
    /// at the limit, long before the timeout.
    #[tokio::test]
    async fn an_endless_chunked_body_stops_at_the_limit() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut buf).await.unwrap();
                assert!(n > 0, "the request ended early");
                request.extend_from_slice(&buf[..n]);
            }
            sock.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            let chunk = format!("1000\r\n{}\r\n", "y".repeat(0x1000));
            let mut sent = 0usize;
            // Until the client hangs up; bounded in case it never does.
            while sent < 100 * MAX_BODY && sock.write_all(chunk.as_bytes()).await.is_ok() {
                sent += 0x1000;
            }
            sent
        });
        let mut req = get(format!("http://{addr}/endless"));
        req.timeout = Duration::from_secs(10);
        let start = Instant::now();
        let result = HttpClient::new().send(&req).await;
        assert_eq!(result, Err(HttpError::TooLarge));
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        let sent = server.await.unwrap();
        assert!(sent < 100 * MAX_BODY, "the client read on after the limit");
    }

    #[tokio::test]
    async fn a_redirect_is_returned_not_followed() {
        let server = MockServer::start().await;
        Mock::given(path("/old"))
            .respond_with(
                ResponseTemplate::new(302)
                    .insert_header("location", format!("{}/elsewhere", server.uri()).as_str()),
            )
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(path("/elsewhere"))
            .respond_with(ResponseTemplate::new(200).set_body_string("steered"))
            .expect(0)
            .mount(&server)
            .await;
        let resp = HttpClient::new()
            .send(&get(format!("{}/old", server.uri())))
            .await
            .unwrap();
        assert_eq!(resp.status, 302);
        server.verify().await;
        let received = server.received_requests().await.unwrap();
        assert!(received.iter().all(|r| r.url.path() != "/elsewhere"));
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let result = HttpClient::new()
            .send(&get(format!("http://127.0.0.1:{port}/x")))
            .await;
        match result {
            Err(HttpError::Connect(reason)) => {
                assert!(!reason.contains("127.0.0.1"), "the URL leaked: {reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn only_http_and_https_urls() {
        let client = HttpClient::new();
        for url in [
            "ftp://crm.example.com/x",
            "file:///etc/passwd",
            "crm.example.com/x",
            "",
        ] {
            let result = client.send(&get(url.to_string())).await;
            assert!(
                matches!(result, Err(HttpError::BadUrl(_))),
                "{url}: {result:?}"
            );
        }
        let ftp = client.send(&get("ftp://x/".to_string())).await.unwrap_err();
        assert!(ftp.to_string().contains("ftp://"), "{ftp}");
    }

    #[tokio::test]
    async fn bad_headers_are_refused_by_name() {
        let client = HttpClient::new();
        let mut req = get("http://127.0.0.1:9/x".to_string());
        req.headers = pairs(&[("X-Customer", "42\r\nX-Admin: yes")]);
        match client.send(&req).await {
            Err(HttpError::BadHeader(text)) => {
                assert!(text.starts_with("X-Customer:"), "{text}");
                assert!(!text.contains("X-Admin"), "the value leaked: {text}");
            }
            other => panic!("{other:?}"),
        }
        req.headers = pairs(&[("X-Customer", "bell\u{7}")]);
        assert!(matches!(
            client.send(&req).await,
            Err(HttpError::BadHeader(_))
        ));
        req.headers = pairs(&[("Bad Name", "v")]);
        assert!(
            matches!(client.send(&req).await, Err(HttpError::BadHeader(t)) if t.contains("Bad Name"))
        );
        req.headers = pairs(&[("Content-Length", "5")]);
        assert!(matches!(
            client.send(&req).await,
            Err(HttpError::BadHeader(_))
        ));
    }

    #[test]
    fn url_encode_leaves_only_unreserved_characters() {
        let encoded = url_encode("../a b?c#d&e=1");
        for c in ['/', '?', '#', '&', ' ', '='] {
            assert!(!encoded.contains(c), "{encoded}");
        }
        assert_eq!(encoded, "..%2Fa%20b%3Fc%23d%26e%3D1");
        assert_eq!(url_encode("AZaz09-._~"), "AZaz09-._~");
        assert_eq!(url_encode("ä%"), "%C3%A4%25");
    }

    #[test]
    fn json_escape_round_trips() {
        for s in [
            r#"say "hi""#,
            r"back\slash\",
            "line\nbreak\r\ttab",
            "\u{1}\u{8}\u{c}\u{1f}",
            "\"}, \"admin\": true, \"x\": \"",
            "ünïcödé \u{2028}",
        ] {
            let literal = format!("\"{}\"", json_escape(s));
            let back: String =
                serde_json::from_str(&literal).unwrap_or_else(|e| panic!("{literal}: {e}"));
            assert_eq!(back, s);
        }
    }

    #[test]
    fn url_prefix_must_fix_scheme_and_host() {
        assert_eq!(
            check_url_prefix("https://crm.example.com/api/", true),
            Ok(())
        );
        assert_eq!(check_url_prefix("HTTP://crm:8080/", true), Ok(()));
        assert_eq!(check_url_prefix("https://crm.example.com", false), Ok(()));
        for (prefix, has_vars) in [
            ("https://", true),
            ("https://crm", true),
            ("https://crm.example.com", true),
            ("", true),
            ("ftp://x/", true),
            ("ftp://x/", false),
            ("https:///api/", true),
            ("https://user@/api/", true),
            ("https://\t/api/", true),
            ("//crm.example.com/", true),
        ] {
            let result = check_url_prefix(prefix, has_vars);
            assert!(result.is_err(), "{prefix:?} {has_vars}");
        }
    }

    #[test]
    fn extract_maps_scalars() {
        let body = br#"{"name": "Ada", "age": 36, "vip": true, "note": null, "ratio": 0.5,
            "account": {"tier": "gold"}, "tags": ["a"], "a/b": "slash", "m~n": "tilde"}"#;
        let got = extract(
            body,
            &pairs(&[
                ("n", "/name"),
                ("a", "/age"),
                ("v", "/vip"),
                ("x", "/note"),
                ("r", "/ratio"),
                ("t", "/account/tier"),
                ("s", "/a~1b"),
                ("m", "/m~0n"),
                ("f", "/tags/0"),
            ]),
        )
        .unwrap();
        assert_eq!(
            got,
            pairs(&[
                ("n", "Ada"),
                ("a", "36"),
                ("v", "true"),
                ("x", ""),
                ("r", "0.5"),
                ("t", "gold"),
                ("s", "slash"),
                ("m", "tilde"),
                ("f", "a"),
            ])
        );
    }

    #[test]
    fn extract_errors() {
        let body = br#"{"account": {"tier": "gold"}, "tags": [1]}"#;
        assert_eq!(
            extract(body, &pairs(&[("x", "/missing")])),
            Err("no /missing in the response".to_string())
        );
        assert_eq!(
            extract(body, &pairs(&[("x", "/account")])),
            Err("/account is an object, not a value".to_string())
        );
        assert_eq!(
            extract(body, &pairs(&[("x", "/tags")])),
            Err("/tags is an array, not a value".to_string())
        );
        let not_json = extract(b"<html>", &pairs(&[("x", "/a")])).unwrap_err();
        assert!(
            not_json.starts_with("the response is not JSON: "),
            "{not_json}"
        );
        let long = format!(
            r#"{{"a": "{}", "b": "{}"}}"#,
            "x".repeat(MAX_VALUE),
            "x".repeat(MAX_VALUE + 1)
        );
        assert_eq!(
            extract(long.as_bytes(), &pairs(&[("a", "/a")])).unwrap()[0]
                .1
                .len(),
            MAX_VALUE
        );
        let too_long = extract(long.as_bytes(), &pairs(&[("a", "/a"), ("b", "/b")])).unwrap_err();
        assert!(
            too_long.starts_with("/b is longer than 1024 bytes"),
            "{too_long}"
        );
        // Nothing to map: the body need not be JSON.
        assert_eq!(extract(b"", &[]), Ok(Vec::new()));
    }

    #[test]
    fn pointers_are_checked() {
        for p in ["", "/", "/a", "/a/0", "/a~0b~1c", "/~1"] {
            assert!(valid_pointer(p), "{p}");
        }
        for p in ["a", "/a~", "/a~2", "~0", "/~x"] {
            assert!(!valid_pointer(p), "{p}");
        }
    }

    #[test]
    fn fakes_parse_every_kind() {
        let fakes = HttpFakes::parse(
            "fakes.toml",
            r#"
            [crm]
            body = '{"name": "Ada"}'
            [tier]
            status = 404
            json = { name = "Ada", account = { tier = "gold" }, n = [1, 2.5, true] }
            [down]
            error = "timeout"
            delay = "2s"
            [refused]
            error = "connection refused"
            delay = "150ms"
            [empty]
            "#,
        )
        .unwrap();
        assert_eq!(
            fakes.steps().collect::<Vec<_>>(),
            ["crm", "down", "empty", "refused", "tier"]
        );
        let (crm, delay) = fakes.answer("crm").unwrap();
        assert_eq!(
            crm.unwrap(),
            HttpResponse {
                status: 200,
                body: br#"{"name": "Ada"}"#.to_vec()
            }
        );
        assert_eq!(delay, Duration::ZERO);
        let (tier, _) = fakes.answer("tier").unwrap();
        let tier = tier.unwrap();
        assert_eq!(tier.status, 404);
        assert_eq!(
            extract(&tier.body, &pairs(&[("t", "/account/tier"), ("n", "/n/1")])).unwrap(),
            pairs(&[("t", "gold"), ("n", "2.5")])
        );
        assert_eq!(
            fakes.answer("down"),
            Some((Err(HttpError::Timeout), Duration::from_secs(2)))
        );
        assert_eq!(
            fakes.answer("refused"),
            Some((
                Err(HttpError::Connect("connection refused".to_string())),
                Duration::from_millis(150)
            ))
        );
        assert_eq!(
            fakes.answer("empty"),
            Some((
                Ok(HttpResponse {
                    status: 200,
                    body: Vec::new()
                }),
                Duration::ZERO
            ))
        );
        assert_eq!(fakes.answer("nothing"), None);
    }

    #[test]
    fn fakes_errors_name_file_step_and_keys() {
        let unknown = HttpFakes::parse("f.toml", "[crm]\nstatus = 200\nbdy = 'x'\n").unwrap_err();
        assert!(unknown.starts_with("f.toml: [crm]"), "{unknown}");
        assert!(unknown.contains("\"bdy\""), "{unknown}");
        assert!(unknown.contains(FAKE_KEYS), "{unknown}");
        let both =
            HttpFakes::parse("f.toml", "[crm]\nbody = '{}'\njson = { a = 1 }\n").unwrap_err();
        assert!(both.starts_with("f.toml: [crm] body and json"), "{both}");
        for (src, what) in [
            ("[a]\nerror = 'timeout'\nstatus = 500\n", "error and status"),
            ("[a]\nstatus = 99\n", "status"),
            ("[a]\nstatus = '200'\n", "status"),
            ("[a]\ndelay = 'soon'\n", "delay"),
            ("[a]\ndelay = '1000d'\n", "delay"),
            ("a = 1\n", "must be a table"),
            ("[a]\njson = { x = nan }\n", "json"),
            ("[a\n", "f.toml:1"),
        ] {
            let e = HttpFakes::parse("f.toml", src).unwrap_err();
            assert!(e.starts_with("f.toml") && e.contains(what), "{src:?}: {e}");
        }
        let big = format!("[a]\nbody = '{}'\n", "x".repeat(MAX_BODY + 1));
        assert!(
            HttpFakes::parse("f.toml", &big)
                .unwrap_err()
                .contains("larger than 64 KiB")
        );
        let fits = format!("[a]\nbody = '{}'\n", "x".repeat(MAX_BODY));
        assert!(HttpFakes::parse("f.toml", &fits).is_ok());
    }

    #[test]
    fn fakes_load_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fakes.toml");
        std::fs::write(&file, "[crm]\nstatus = 503\n").unwrap();
        let fakes = HttpFakes::load(&file).unwrap();
        assert_eq!(fakes.answer("crm").unwrap().0.unwrap().status, 503);
        let missing = HttpFakes::load(&dir.path().join("nope.toml")).unwrap_err();
        assert!(missing.contains("nope.toml"), "{missing}");
    }
}
