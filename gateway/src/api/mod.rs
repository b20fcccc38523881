//! The HTTP API on port 18083 (DESIGN §2): EMQX v5 paths, HTTP Basic auth
//! with API keys from `[api]`, JSON errors `{"code": ..., "message": ...}`,
//! and the OpenAPI description at `/api-docs/openapi.json`.
//!
//! | path | what |
//! | --- | --- |
//! | `GET /status` (no auth) | 200 while serving, 503 while draining |
//! | `GET /api-docs/openapi.json` (no auth) | this API, OpenAPI 3 |
//! | `POST /api/v5/publish`, `/api/v5/publish/bulk` | publish as the system |
//! | `GET /api/v5/clients[/{clientid}]`, `DELETE …/{clientid}` | sessions; kick |
//! | `GET /api/v5/subscriptions` | every subscription |
//! | `GET /api/v5/stats`, `/api/v5/metrics`, `/api/v5/prometheus/stats` | gauges, counters, Prometheus text |
//! | `GET /api/v5/status` | node status as JSON |
//! | `GET/DELETE /api/v5/mqtt/retainer/message[s]` | retained messages |
//! | `GET/PUT /api/v5/log/level` | the log filter, changed at runtime |
//! | `GET /api/v5/listeners` | listeners and their counters |
//!
//! Published messages go through `Broker::publish` like any client's
//! (retained store, routing), with no publisher id and no ACL check: the
//! API key holder is trusted. Concurrent API connections are bounded by
//! `api.max_connections` (further accepts wait).

mod handlers;
pub mod prometheus;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::hmac;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::info;
use tributary_config::Config;
use tributary_core::Broker;

use crate::listener_stats::ListenerStats;

/// What every handler sees.
#[derive(Clone)]
pub struct ApiState {
    /// The core.
    pub broker: Arc<Broker>,
    /// Node name.
    pub node: String,
    /// MQTT stream listeners and their counters.
    pub listeners: Vec<Arc<ListenerStats>>,
    /// Set while the gateway drains.
    pub draining: Arc<AtomicBool>,
    /// Start time, for uptime.
    pub started: Instant,
    /// Accepted (key, secret) pairs.
    keys: Arc<Vec<(String, String)>>,
    /// The UDP gateways' own counters.
    pub gateways: Vec<GatewayCounters>,
}

/// Reads one series of a gateway's counters: (name, is a gauge, value).
pub type CounterSnapshot = dyn Fn() -> Vec<(&'static str, bool, u64)> + Send + Sync;

/// A gateway's own counters (datagrams, peers, …), exported to Prometheus
/// as `tributary_gateway_{name}{gateway="…"}`.
#[derive(Clone)]
pub struct GatewayCounters {
    /// The gateway (`mqtt-sn`, `coap`).
    pub gateway: &'static str,
    /// Reads the counters.
    pub snapshot: Arc<CounterSnapshot>,
}

impl std::fmt::Debug for GatewayCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayCounters")
            .field("gateway", &self.gateway)
            .finish()
    }
}

impl ApiState {
    /// State for `config`.
    pub fn new(
        config: &Config,
        broker: Arc<Broker>,
        listeners: Vec<Arc<ListenerStats>>,
        draining: Arc<AtomicBool>,
    ) -> ApiState {
        ApiState {
            broker,
            node: config.node.name.clone(),
            listeners,
            draining,
            started: Instant::now(),
            keys: Arc::new(
                config
                    .api
                    .api_keys
                    .iter()
                    .map(|k| (k.key.clone(), k.secret.clone()))
                    .collect(),
            ),
            gateways: Vec::new(),
        }
    }

    /// Also export these gateways' counters.
    pub fn with_gateways(mut self, gateways: Vec<GatewayCounters>) -> ApiState {
        self.gateways = gateways;
        self
    }
}

/// A JSON error: `{"code": "...", "message": "..."}` with a status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "BAD_REQUEST",
            message: message.into(),
        }
    }

    /// 404 with a specific code.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"code": self.code, "message": self.message})),
        )
            .into_response()
    }
}

/// Constant-time equality (HMAC both sides with a fixed key, verify).
fn same(a: &str, b: &str) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, b"tributary-api-compare");
    let tag = hmac::sign(&key, b.as_bytes());
    hmac::verify(&key, a.as_bytes(), tag.as_ref()).is_ok()
}

async fn require_key(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let supplied = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| STANDARD.decode(b64.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok());
    let ok = supplied
        .as_deref()
        .and_then(|s| s.split_once(':'))
        .is_some_and(|(k, s)| {
            // Check every key so the time taken does not tell which one matched.
            state.keys.iter().fold(false, |acc, (key, secret)| {
                (same(k, key) & same(s, secret)) | acc
            })
        });
    if !ok {
        let mut resp = ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: "BAD_API_KEY_OR_SECRET",
            message: "HTTP Basic auth with a configured API key and secret is required".into(),
        }
        .into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"tributary\""),
        );
        return resp;
    }
    next.run(req).await
}

async fn fallback() -> ApiError {
    ApiError::not_found("NOT_FOUND", "no such API path")
}

/// The router (exposed for tests).
pub fn router(state: ApiState, max_body: usize) -> Router {
    let api = Router::new()
        .route("/publish", post(handlers::publish))
        .route("/publish/bulk", post(handlers::publish_bulk))
        .route("/clients", get(handlers::clients))
        .route(
            "/clients/{clientid}",
            get(handlers::client).delete(handlers::kick),
        )
        .route("/subscriptions", get(handlers::subscriptions))
        .route("/stats", get(handlers::stats))
        .route("/metrics", get(handlers::metrics))
        .route("/prometheus/stats", get(prometheus::handler))
        .route("/status", get(handlers::api_status))
        .route("/listeners", get(handlers::listeners))
        .route("/mqtt/retainer/messages", get(handlers::retained))
        .route(
            "/mqtt/retainer/message/{*topic}",
            get(handlers::retained_one).delete(handlers::retained_delete),
        )
        .route(
            "/log/level",
            get(handlers::log_level).put(handlers::set_log_level),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_key,
        ));
    Router::new()
        .route("/status", get(handlers::status))
        .route("/api-docs/openapi.json", get(handlers::openapi))
        .nest("/api/v5", api)
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Bind and serve the API when enabled. The server runs until its task is
/// aborted (after the drain, so `/status` can say 503 meanwhile).
pub async fn start(
    config: &Config,
    state: ApiState,
) -> anyhow::Result<(Option<SocketAddr>, Option<tokio::task::JoinHandle<()>>)> {
    let c = &config.api;
    if !c.enabled {
        return Ok((None, None));
    }
    let listener = TcpListener::bind(c.bind)
        .await
        .with_context(|| format!("api.bind: cannot bind {}", c.bind))?;
    let addr = listener.local_addr()?;
    info!(listener = "http:api", %addr, keys = state.keys.len(), "HTTP API started");
    if state.keys.is_empty() {
        tracing::warn!("no api.api_keys configured: every /api/v5 request is refused (401)");
    }
    let app = router(state, c.max_body_size as usize);
    let limited = LimitedListener {
        inner: listener,
        slots: Arc::new(Semaphore::new(c.max_connections as usize)),
    };
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(limited, app).await {
            tracing::warn!(error = %e, "HTTP API stopped");
        }
    });
    Ok((Some(addr), Some(task)))
}

/// A TCP listener that holds a semaphore permit per open connection.
struct LimitedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
}

/// A connection and its permit.
struct LimitedIo {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (LimitedIo, SocketAddr) {
        loop {
            let Ok(permit) = self.slots.clone().acquire_owned().await else {
                std::future::pending::<()>().await;
                continue;
            };
            match self.inner.accept().await {
                Ok((inner, addr)) => {
                    let _ = inner.set_nodelay(true);
                    return (
                        LimitedIo {
                            inner,
                            _permit: permit,
                        },
                        addr,
                    );
                }
                Err(e) => {
                    tracing::debug!(error = %e, "API accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl AsyncRead for LimitedIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
