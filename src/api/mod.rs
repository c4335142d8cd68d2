//! The HTTP API: verifications of phone numbers by a code sent by SMS, for web sign-ups and
//! other applications (the second use case ivrd came from). JSON over HTTP/1.1 on
//! `[api] listen`, off by default (HTTPS with `[api] tls`); `docs/openapi.yaml` describes it.
//!
//! | route | does |
//! |---|---|
//! | `POST /v1/verifications` | start (`to`, `channel`, `locale`, `template`): 201, or 200 with the pending one whose code went out again |
//! | `GET /v1/verifications/{id}` | read |
//! | `POST /v1/verifications/{id}/check` | check a `code`: the status says how it went |
//! | `POST /v1/verifications/{id}/resend` | send the code again |
//! | `POST /v1/verifications/{id}/cancel` | cancel |
//!
//! Every request carries `Authorization: Bearer KEY`, a key made by `ivrd api-keys create`
//! ([`keys`]); the store keeps its hash. Every error is a JSON body `{"code", "message"}`
//! with a stable code; limits answer 429 with `Retry-After`.
//!
//! The listener holds at most `[api] max_connections` connections (more are closed at
//! once), gives a client [`HEADER_TIMEOUT`] to send a request's head, reads at most
//! [`MAX_BODY`] of a body, answers within [`REQUEST_TIMEOUT`] and closes a connection after
//! [`CONNECTION_LIFETIME`]: an idle or slow client holds nothing for long. hyper speaks the
//! HTTP, axum routes; the accept loop is ours so that those bounds are.

pub mod keys;
pub mod service;
pub mod webhooks;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use service::{Answer, ApiContext, StartRequest};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// How long a client has to send a request's head (and, on a kept-alive connection, the
/// next one's).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request body read.
pub const MAX_BODY: usize = 16 * 1024;
/// How long a request may take, an SMS send included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection lives, however busy.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// An error as the API answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    /// Stable, for programs: `invalid_number`, `number_rate_limited`, `not_found`, ...
    pub code: &'static str,
    /// For people.
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: String) -> ApiError {
        ApiError {
            status,
            code,
            message,
            retry_after: None,
        }
    }

    pub fn bad(code: &'static str, message: String) -> ApiError {
        ApiError::new(400, code, message)
    }

    pub fn limited(code: &'static str, message: String, retry_after: Duration) -> ApiError {
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(429, code, message)
        }
    }

    pub fn store(e: crate::store::StoreError) -> ApiError {
        tracing::error!(error = %e, "API: store failed");
        ApiError::new(
            503,
            "unavailable",
            "the database is not available; try again".into(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = Json(serde_json::json!({"code": self.code, "message": self.message}));
        let mut resp = (status, body).into_response();
        if let Some(after) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&after.as_secs().max(1).to_string())
        {
            resp.headers_mut().insert("retry-after", v);
        }
        resp
    }
}

/// Where the API finds what it works with: the configuration current for each request (a
/// reload changes texts and limits for the next one).
pub type ContextSource = Arc<dyn Fn() -> ApiContext + Send + Sync>;

#[derive(Clone)]
struct AppState {
    context: ContextSource,
}

/// The routes, over `context`.
pub fn router(context: ContextSource) -> Router {
    Router::new()
        .route("/v1/verifications", post(start))
        .route("/v1/verifications/{id}", get(read))
        .route("/v1/verifications/{id}/check", post(check))
        .route("/v1/verifications/{id}/resend", post(resend))
        .route("/v1/verifications/{id}/cancel", post(cancel))
        .fallback(|| async {
            ApiError::new(
                404,
                "not_found",
                "no such route; see docs/openapi.yaml".into(),
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(AppState { context })
}

/// The TLS configuration of the listener: `[tls]`'s certificate and key, HTTP/1.1 by ALPN,
/// no client certificate (the API's clients prove themselves with keys).
pub fn tls_config(
    mut files: crate::sip::tls::TlsFiles,
) -> Result<Arc<rustls::ServerConfig>, crate::sip::tls::TlsError> {
    files.client_ca = None;
    files.require_client_cert = false;
    let shared = crate::sip::tls::server_config(&files)?;
    let mut config = (*shared).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Binds `listen` and serves the API until `shutdown` (over TLS with `tls`).
pub async fn serve(
    listen: &str,
    max_connections: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
    context: ContextSource,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = router(context);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    info!(%addr, tls = acceptor.is_some(), "API listening");
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        debug!(error = %e, "API accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                debug!(%peer, "API: too many connections; closing a new one");
                continue;
            };
            // Answers are small and whole: send them at once, not after the peer's ACK.
            let _ = tcp.set_nodelay(true);
            let (app, shutdown, acceptor) = (app.clone(), shutdown.clone(), acceptor.clone());
            tokio::spawn(async move {
                let _slot = slot;
                match acceptor {
                    None => connection(tcp, app, shutdown).await,
                    Some(acceptor) => {
                        // The handshake is bounded like a request's head.
                        match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => connection(stream, app, shutdown).await,
                            Ok(Err(e)) => debug!(%peer, error = %e, "API: TLS handshake failed"),
                            Err(_) => debug!(%peer, "API: TLS handshake timed out"),
                        }
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// One connection: HTTP/1.1 with the header timeout, for at most [`CONNECTION_LIFETIME`].
async fn connection<I>(io: I, app: Router, shutdown: CancellationToken)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        use tower::ServiceExt;
        app.clone().oneshot(req)
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024);
    let conn = http.serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = &mut conn => {}
        _ = tokio::time::sleep(CONNECTION_LIFETIME) => {}
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

/// The key the request carries, by name; 401 otherwise.
async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(ApiContext, String), ApiError> {
    let unauthorized = || {
        ApiError::new(
            401,
            "unauthorized",
            "send Authorization: Bearer KEY with a key from `ivrd api-keys create`".into(),
        )
    };
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 128)
        .ok_or_else(unauthorized)?;
    let context = (state.context)();
    let hash = keys::hash(token);
    let store = context.shared.verifier.store().clone();
    let name = tokio::task::spawn_blocking(move || store.api_key_by_hash(&hash))
        .await
        .map_err(|_| ApiError::new(500, "internal", "the key lookup failed".into()))?
        .map_err(ApiError::store)?
        .ok_or_else(unauthorized)?;
    Ok((context, name))
}

/// Runs a request under [`REQUEST_TIMEOUT`] and answers with its verification (201 when it
/// created one) or its error.
async fn respond(work: impl std::future::Future<Output = Result<Answer, ApiError>>) -> Response {
    let result = tokio::time::timeout(REQUEST_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::new(
                504,
                "timeout",
                "the request took too long; its verification may have changed: read it".into(),
            ))
        });
    match result {
        Ok(a) => answer(a),
        Err(e) => e.into_response(),
    }
}

/// A JSON body, or a 400 that says what is wrong with it.
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad("invalid_request", format!("the JSON body: {e}")))
}

/// Every request body the API reads, as it reads them (for the `api_request` fuzz target):
/// a start's number is normalised and typed as a start does.
#[doc(hidden)]
pub fn parse_bodies(bytes: &[u8]) {
    if let Ok(req) = body::<StartRequest>(bytes)
        && let Ok(e164) = crate::store::normalize_phone(&req.to, "DE")
    {
        let _ = crate::store::not_mobile(&e164);
    }
    let _ = body::<CheckRequest>(bytes);
    let _ = body::<ResendRequest>(bytes);
}

fn time(t: std::time::SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|t| t.round(jiff::Unit::Second).unwrap_or(t).to_string())
        .unwrap_or_default()
}

fn answer(a: Answer) -> Response {
    let status = if a.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let v = &a.verification;
    let mut json = serde_json::json!({
        "id": v.id,
        "to": v.to,
        "channel": v.channel,
        "status": v.status.as_str(),
        "locale": v.locale,
        "template": v.template,
        "sends": v.sends,
        "checks": v.checks,
        "created_at": time(v.created_at),
        "updated_at": time(v.updated_at),
        "expires_at": time(v.expires_at),
        "delivery": v.delivery,
    });
    if let Some(t) = a.tries_left {
        json["tries_left"] = t.into();
    }
    (status, Json(json)).into_response()
}

async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    respond(async {
        let (ctx, key) = authorize(&state, &headers).await?;
        let req: StartRequest = body(&bytes)?;
        ctx.start(&key, req).await
    })
    .await
}

async fn read(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    respond(async {
        let (ctx, key) = authorize(&state, &headers).await?;
        ctx.get(&key, &id).await
    })
    .await
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckRequest {
    code: String,
}

async fn check(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Response {
    respond(async {
        let (ctx, key) = authorize(&state, &headers).await?;
        let req: CheckRequest = body(&bytes)?;
        let code = zeroize::Zeroizing::new(req.code);
        ctx.check(&key, &id, &code).await
    })
    .await
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResendRequest {
    #[serde(default)]
    channel: Option<String>,
}

async fn resend(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Response {
    respond(async {
        let (ctx, key) = authorize(&state, &headers).await?;
        let req: ResendRequest = if bytes.is_empty() {
            ResendRequest::default()
        } else {
            body(&bytes)?
        };
        ctx.resend(&key, &id, req.channel).await
    })
    .await
}

async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    respond(async {
        let (ctx, key) = authorize(&state, &headers).await?;
        ctx.cancel(&key, &id).await
    })
    .await
}
