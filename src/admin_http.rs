//! The admin listener: `GET /metrics` (Prometheus), `/health` and `/status` (JSON), the live
//! page at `/` (HTML, see [`crate::live_page`]) and its numbers at `/live.json`, and
//! `POST /reload`, on loopback by default. Also the client side of `ivrd status` and
//! `ivrd reload`.
//!
//! A few lines of HTTP/1.1 by hand instead of a web framework: a handful of routes, one request per
//! connection, `Connection: close`. Anything else gets 404/405, a slow or huge request is cut
//! off, and nothing here can block SIP or RTP (own tasks, bounded reads).
//!
//! `POST /reload` exists so that `systemctl reload` can fail when the reload fails: SIGHUP
//! tells its sender nothing, and `Type=notify-reload` needs systemd 253 (Debian 12 has 252).
//! The unit's `ExecReload=ivrd reload` posts here and waits for the daemon's verdict.

use crate::dialplan::Dialplan;
use crate::live::Live;
use crate::media::engine::MediaStats;
use crate::metrics::Metrics;
use crate::sip::core::CoreStats;
use crate::sip::transport::TransportStatsHandle;
use crate::store::Store;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// How the last reload went, for `/health`, `/status` and `ivrd status`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ReloadRecord {
    /// Unix time, seconds.
    pub at: u64,
    pub ok: bool,
    /// "reloaded", or why not; plus the settings that changed but need a restart.
    pub message: String,
}

/// A reload asked for over the admin listener: the verdict goes back on `reply`.
pub struct ReloadRequest {
    pub reply: tokio::sync::oneshot::Sender<ReloadRecord>,
}

/// What the admin routes read.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub core: Arc<CoreStats>,
    pub transport: TransportStatsHandle,
    pub media: Arc<MediaStats>,
    pub started: SystemTime,
    /// Names of the dialplans loaded now (changes on reload).
    pub dialplans: Arc<std::sync::RwLock<Vec<String>>>,
    /// The last reload's verdict (none yet: `None`).
    pub last_reload: Arc<std::sync::RwLock<Option<ReloadRecord>>>,
    /// Where `POST /reload` asks the daemon to reload (`None`: the route answers 503).
    pub reload: Option<tokio::sync::mpsc::Sender<ReloadRequest>>,
    /// The dialplans loaded now, for the live page's pictures (changes on reload).
    pub plans: Arc<std::sync::RwLock<Vec<Arc<Dialplan>>>>,
    /// The live counts: transitions and outcomes over the last hour, steps of calls now.
    pub live: Arc<Live>,
    /// The database, for the live page's recent audit rows (`None`: not shown).
    pub store: Option<Arc<Store>>,
    /// What `POST /drain` and `POST /resume` act on (`None`: the routes answer 503).
    pub drain: Option<DrainControl>,
}

/// A node taken out of service for maintenance and put back: `ivrd drain` and `ivrd resume`.
#[derive(Clone)]
pub struct DrainControl {
    pub core: crate::sip::core::CoreHandle,
    /// The Retry-After of the 503s while drained.
    pub retry_after_secs: u32,
    /// Cancelled when the daemon is stopping: a stopping node cannot be resumed.
    pub stopping: tokio_util::sync::CancellationToken,
}

/// The `/status` document.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub version: String,
    pub status: String,
    pub uptime_seconds: u64,
    pub dialplans: Vec<String>,
    #[serde(default)]
    pub last_reload: Option<ReloadRecord>,
    pub active_calls: Vec<StatusCall>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct StatusCall {
    pub call_id: String,
    pub caller: String,
    pub dialed: String,
    pub dialplan: String,
    #[serde(default)]
    pub transport: String,
    pub seconds: u64,
    /// The SRTP suite of the call's media; `null` for plain RTP.
    #[serde(default)]
    pub srtp: Option<String>,
}

impl AdminState {
    fn status(&self) -> Status {
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            status: self.health_word().into(),
            uptime_seconds: self.started.elapsed().unwrap_or_default().as_secs(),
            dialplans: self.dialplans.read().expect("dialplans lock").clone(),
            last_reload: self.last_reload(),
            active_calls: self
                .metrics
                .active_calls()
                .into_iter()
                .map(|c| StatusCall {
                    call_id: c.call_id,
                    caller: c.caller,
                    dialed: c.dialed,
                    dialplan: c.dialplan,
                    transport: c.transport.to_string(),
                    seconds: c.seconds,
                    srtp: c.srtp.map(str::to_string),
                })
                .collect(),
        }
    }

    /// The `/live.json` document.
    fn live_doc(&self) -> crate::live_page::LiveDoc {
        let calls = self.metrics.active_calls();
        crate::live_page::LiveDoc {
            counts: self.live.snapshot(),
            active_calls: crate::live_page::call_rows(&calls, &self.live.steps()),
        }
    }

    /// The live page (reads the database: run it off the async threads).
    fn live_page(&self) -> String {
        let calls = self.metrics.active_calls();
        let rows = crate::live_page::call_rows(&calls, &self.live.steps());
        let plans = self.plans.read().expect("plans lock").clone();
        let counts = self.live.snapshot();
        let audit = self.store.as_ref().map(|s| {
            s.recent_audit(crate::live_page::AUDIT_ROWS)
                .map_err(|e| e.to_string())
        });
        crate::live_page::render(&crate::live_page::Page {
            version: env!("CARGO_PKG_VERSION"),
            health: self.health_word(),
            uptime_seconds: self.started.elapsed().unwrap_or_default().as_secs(),
            calls: &rows,
            plans: &plans,
            counts: &counts,
            audit,
            last_reload: self.last_reload(),
            now: SystemTime::now(),
        })
    }

    fn last_reload(&self) -> Option<ReloadRecord> {
        self.last_reload.read().expect("reload lock").clone()
    }

    fn health_word(&self) -> &'static str {
        if self
            .metrics
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            "draining"
        } else {
            "ok"
        }
    }
}

/// Binds the listener (errors surface at start-up, like every other socket) and serves it.
pub async fn serve(
    addr: &str,
    state: AdminState,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    info!(addr = %local, "admin listening (/, /live.json, /metrics, /health, /status)");
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(v) => v,
                    Err(e) => {
                        debug!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            let state = state.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut len = 0;
                // The request head within 2 s and 4 kB, or nothing.
                let read = tokio::time::timeout(Duration::from_secs(2), async {
                    while len < buf.len() {
                        let n = stream.read(&mut buf[len..]).await?;
                        if n == 0 {
                            break;
                        }
                        len += n;
                        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    Ok::<_, std::io::Error>(())
                })
                .await;
                if !matches!(read, Ok(Ok(()))) {
                    return;
                }
                let response = if buf[..len].starts_with(b"POST /reload ") {
                    reload(&state).await
                } else if buf[..len].starts_with(b"POST /drain ") {
                    drain(&state, true)
                } else if buf[..len].starts_with(b"POST /resume ") {
                    drain(&state, false)
                } else if is_page(&buf[..len]) {
                    // The page reads the audit from SQLite: not on an async worker.
                    let state = state.clone();
                    match tokio::task::spawn_blocking(move || state.live_page()).await {
                        Ok(page) => http(200, "text/html; charset=utf-8", page),
                        Err(_) => http(500, "text/plain", "the page failed\n".into()),
                    }
                } else {
                    respond(&state, &buf[..len])
                };
                let _ = stream.write_all(&response).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(local)
}

/// `POST /reload`: reloads and answers with the verdict (200, or 500 when the reload failed).
async fn reload(state: &AdminState) -> Vec<u8> {
    let Some(tx) = &state.reload else {
        return http(503, "text/plain", "reload is not available here\n".into());
    };
    let (reply, verdict) = tokio::sync::oneshot::channel();
    if tx.send(ReloadRequest { reply }).await.is_err() {
        return http(503, "text/plain", "the daemon is stopping\n".into());
    }
    // Prompts are resampled on reload: seconds on a small host, never minutes.
    match tokio::time::timeout(Duration::from_secs(120), verdict).await {
        Ok(Ok(record)) => {
            let code = if record.ok { 200 } else { 500 };
            let body = serde_json::to_string(&record).unwrap_or_default() + "\n";
            http(code, "application/json", body)
        }
        _ => http(503, "text/plain", "no verdict from the daemon\n".into()),
    }
}

/// `POST /drain` (`on`) and `POST /resume`: new calls get 503 (OPTIONS too, so a dispatcher
/// in front takes the node out of its rotation) while the calls up go on; or calls are taken
/// again. Answers the node's state and its calls up, like `/health`.
fn drain(state: &AdminState, on: bool) -> Vec<u8> {
    let Some(control) = &state.drain else {
        return http(503, "text/plain", "drain is not available here\n".into());
    };
    if !on && control.stopping.is_cancelled() {
        return http(
            409,
            "text/plain",
            "the daemon is shutting down: it cannot take calls again\n".into(),
        );
    }
    if on {
        control.core.drain(control.retry_after_secs);
    } else {
        control.core.resume();
    }
    state
        .metrics
        .draining
        .store(on, std::sync::atomic::Ordering::Relaxed);
    let body = serde_json::json!({
        "status": state.health_word(),
        "active_calls": state.metrics.active_count(),
    })
    .to_string()
        + "\n";
    http(200, "application/json", body)
}

/// `GET /` or `GET /live` (HEAD too).
fn is_page(request: &[u8]) -> bool {
    let line = request.split(|b| *b == b'\r').next().unwrap_or(b"");
    let mut parts = line.split(|b| *b == b' ');
    let (method, path) = (parts.next().unwrap_or(b""), parts.next().unwrap_or(b""));
    let path = path.split(|b| *b == b'?').next().unwrap_or(b"");
    matches!(method, b"GET" | b"HEAD") && matches!(path, b"/" | b"/live")
}

fn respond(state: &AdminState, request: &[u8]) -> Vec<u8> {
    let head = String::from_utf8_lossy(request);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return http(
            405,
            "text/plain",
            "only GET, and POST /reload, /drain or /resume\n".into(),
        );
    }
    match path {
        "/metrics" => http(
            200,
            "text/plain; version=0.0.4",
            state
                .metrics
                .render(&state.core, &state.transport, &state.media, state.started),
        ),
        "/health" => {
            // 503 while draining, so a load balancer or PBX health check moves traffic away.
            let word = state.health_word();
            let code = if word == "ok" { 200 } else { 503 };
            let body = serde_json::json!({
                "status": word,
                "active_calls": state.metrics.active_count(),
                "last_reload": state.last_reload(),
            })
            .to_string()
                + "\n";
            http(code, "application/json", body)
        }
        "/status" => {
            let body = serde_json::to_string_pretty(&state.status()).unwrap_or_default() + "\n";
            http(200, "application/json", body)
        }
        "/live.json" => {
            let body = serde_json::to_string_pretty(&state.live_doc()).unwrap_or_default() + "\n";
            http(200, "application/json", body)
        }
        _ => http(
            404,
            "text/plain",
            "try /, /live.json, /metrics, /health or /status\n".into(),
        ),
    }
}

fn http(code: u16, content_type: &str, body: String) -> Vec<u8> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        409 => "Conflict",
        500 => "Internal Server Error",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "",
    };
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends `request` (`GET /status`, `POST /drain`, ...) to the admin listener at `addr` and
/// returns the answer's status code and body; the error says why the daemon could not be asked.
fn admin_request(addr: &str, request: &str, wait: Duration) -> Result<(u16, String), String> {
    let not_running = |e: std::io::Error| {
        format!(
            "cannot reach ivrd's admin listener at {addr} ({e}): is ivrd running, and is [admin] listen set?"
        )
    };
    let sock: SocketAddr = addr
        .parse()
        .map_err(|_| format!("[admin] listen = {addr:?} is not an address"))?;
    let mut stream =
        std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2)).map_err(not_running)?;
    stream.set_read_timeout(Some(wait)).map_err(not_running)?;
    let (method, path) = request.split_once(' ').unwrap_or(("GET", request));
    let length = if method == "POST" {
        "Content-Length: 0\r\n"
    } else {
        ""
    };
    stream
        .write_all(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{length}Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .map_err(not_running)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(not_running)?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("");
    Ok((code, body.to_string()))
}

/// `ivrd status`: asks a running daemon's admin listener and prints what it says.
pub fn status_command(addr: &str) -> Result<String, String> {
    let (_, body) = admin_request(addr, "GET /status", Duration::from_secs(5))?;
    let body = body.as_str();
    let status: Status =
        serde_json::from_str(body).map_err(|e| format!("unexpected answer from {addr}: {e}"))?;
    let mut out = format!(
        "ivrd {}: {}, up {}, dialplans: {}\n{} active call{}\n",
        status.version,
        status.status,
        fmt_duration(status.uptime_seconds),
        status.dialplans.join(", "),
        status.active_calls.len(),
        if status.active_calls.len() == 1 {
            ""
        } else {
            "s"
        },
    );
    if let Some(r) = &status.last_reload {
        let ago = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            .saturating_sub(r.at);
        out.push_str(&format!(
            "last reload {} ago: {}\n",
            fmt_duration(ago),
            r.message
        ));
    }
    for c in &status.active_calls {
        out.push_str(&format!(
            "  {:>6}  {:<16} -> {:<12} {:<10} {:<4} {:<4} {}\n",
            fmt_duration(c.seconds),
            c.caller,
            c.dialed,
            c.dialplan,
            c.transport,
            if c.srtp.is_some() { "srtp" } else { "rtp" },
            c.call_id
        ));
    }
    Ok(out)
}

/// Why `ivrd reload` did not end in a reload.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReloadError {
    /// The daemon kept its running configuration; the message says why.
    #[error("{0}")]
    Failed(String),
    /// The daemon could not be asked, or its answer could not be read.
    #[error("{0}")]
    Unreachable(String),
}

/// `ivrd reload`: asks a running daemon to reload, over its admin listener, and waits for the
/// verdict. `Ok` carries the daemon's message.
pub fn reload_command(addr: &str) -> Result<String, ReloadError> {
    let (_, body) = admin_request(addr, "POST /reload", Duration::from_secs(130))
        .map_err(ReloadError::Unreachable)?;
    let body = body.as_str();
    match serde_json::from_str::<ReloadRecord>(body) {
        Ok(r) if r.ok => Ok(r.message),
        Ok(r) => Err(ReloadError::Failed(r.message)),
        Err(_) => Err(ReloadError::Unreachable(format!(
            "unexpected answer from {addr}: {}",
            body.trim()
        ))),
    }
}

/// `ivrd drain` (`on`) and `ivrd resume`: takes the node out of service, or back in; with
/// `wait`, a drain then waits (up to that long) for the calls up to end. `Ok` says how the node
/// is.
pub fn drain_command(addr: &str, on: bool, wait: Option<Duration>) -> Result<String, String> {
    let path = if on { "POST /drain" } else { "POST /resume" };
    let (code, body) = admin_request(addr, path, Duration::from_secs(5))?;
    if code != 200 {
        return Err(format!("{addr} answered {code}: {}", body.trim()));
    }
    let calls = |body: &str| -> u64 {
        serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["active_calls"].as_u64())
            .unwrap_or(0)
    };
    let mut left = calls(&body);
    if let (true, Some(wait)) = (on, wait) {
        let deadline = std::time::Instant::now() + wait;
        while left > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
            let (_, body) = admin_request(addr, "GET /health", Duration::from_secs(5))?;
            left = calls(&body);
        }
        if left > 0 {
            return Err(format!(
                "drained, but {left} call{} still up after {} s",
                if left == 1 { " is" } else { "s are" },
                wait.as_secs()
            ));
        }
    }
    Ok(if on {
        format!(
            "draining: new calls get 503 (OPTIONS too); {left} call{} up",
            if left == 1 { "" } else { "s" }
        )
    } else {
        "taking calls again".to_string()
    })
}

fn fmt_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> AdminState {
        AdminState {
            metrics: Arc::new(Metrics::default()),
            core: Arc::new(CoreStats::default()),
            transport: TransportStatsHandle::default(),
            media: Arc::new(MediaStats::default()),
            started: SystemTime::now(),
            dialplans: Arc::new(std::sync::RwLock::new(vec!["verify".into()])),
            last_reload: Arc::default(),
            reload: None,
            plans: Arc::default(),
            live: Arc::default(),
            store: None,
            drain: None,
        }
    }

    #[tokio::test]
    async fn routes_answer_over_a_real_socket() {
        let st = state();
        let _guard = st
            .metrics
            .call_started("c9", "+491701234567", "100", "verify", "TLS");
        let addr = serve("127.0.0.1:0", st.clone(), CancellationToken::new())
            .await
            .unwrap();
        let out = tokio::task::spawn_blocking(move || status_command(&addr.to_string()))
            .await
            .unwrap()
            .unwrap();
        assert!(out.contains(": ok,"), "{out}");
        assert!(out.contains("1 active call\n"), "{out}");
        assert!(out.contains("+49********67") && out.contains("c9"), "{out}");
        assert!(out.contains(" TLS "), "{out}");
        let get = move |path: &str| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            write!(s, "GET {path} HTTP/1.1\r\n\r\n").unwrap();
            let mut r = String::new();
            s.read_to_string(&mut r).unwrap();
            r
        };
        let metrics = tokio::task::spawn_blocking(move || get("/metrics"))
            .await
            .unwrap();
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("ivrd_calls_active 1\n"), "{metrics}");
        st.metrics
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let health = tokio::task::spawn_blocking(move || get("/health"))
            .await
            .unwrap();
        assert!(
            health.starts_with("HTTP/1.1 503") && health.contains("draining"),
            "{health}"
        );
        let page = tokio::task::spawn_blocking(move || get("/")).await.unwrap();
        assert!(
            page.starts_with("HTTP/1.1 200") && page.contains("text/html"),
            "{page}"
        );
        assert!(
            page.contains("<span id=\"active-count\">1</span>") && page.contains("+49********67"),
            "{page}"
        );
        assert!(!page.contains("+491701234567"), "{page}");
        let json = tokio::task::spawn_blocking(move || get("/live.json"))
            .await
            .unwrap();
        let doc: crate::live_page::LiveDoc =
            serde_json::from_str(json.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(doc.active_calls.len(), 1);
        assert_eq!(doc.active_calls[0].caller, "+49********67");
        let missing = tokio::task::spawn_blocking(move || get("/nope"))
            .await
            .unwrap();
        assert!(missing.starts_with("HTTP/1.1 404"));
    }

    #[test]
    fn status_command_says_when_nobody_listens() {
        let err = status_command("127.0.0.1:1").unwrap_err();
        assert!(err.contains("is ivrd running"), "{err}");
    }
}
