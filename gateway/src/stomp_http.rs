//! The STOMP HTTP listener (61614), served by axum: STOMP over a plain
//! WebSocket at `/stomp/websocket`, SockJS 0.3 at `/stomp`, and, when
//! `stomp.sockjs.test_endpoints` is set, the services the sockjs-protocol
//! test suite needs (`/echo`, `/close`, `/disabled_websocket_echo`,
//! `/cookie_needed_echo`).
//!
//! One fallback handler classifies the path with `tributary_sockjs::route`
//! (so 404/405 follow the protocol exactly) and answers:
//! - `/info`, the greeting, the iframe page, CORS preflights;
//! - WebSocket upgrades (raw and SockJS framing) → [`crate::stomp_ws`];
//!   the SockJS `websocket` transport also accepts the hixie-76 draft
//!   handshake ([`crate::hixie76`]);
//! - receiving transports (`xhr`, `xhr_streaming`, `eventsource`,
//!   `htmlfile`, `jsonp`): attach to the session (created on first use),
//!   write its frames wrapped for the transport, detach when done (polling:
//!   one frame; streaming: until `response_limit` bytes or a close frame).
//!   A request dropped mid-way closes the session (1002).
//! - sending transports (`xhr_send`, `jsonp_send`): parse the payload and
//!   hand the messages to the session's application.
//!
//! Sessions live in a registry per listener, swept once a second: a session
//! with no receiver for `disconnect_delay` is forgotten (its STOMP
//! connection ends). Every queue is bounded: a session's outgoing messages
//! (`max_queued_messages`, overflow closes the STOMP connection), its
//! inbound queue (a sender waits), and STOMP connections (`max_connections`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, info, Instrument};
use tributary_sockjs::frame::{self as sockjs, Wrap};
use tributary_sockjs::{route, Attach, Route, Session, Transport};

use crate::drive::now;
use crate::hixie76::{self, Hixie76, Incoming, TextFrames};
use crate::listen::Gate;
use crate::stomp_transport::{self as stomp_ws, StompShared};

/// SockJS settings of the listener.
#[derive(Debug, Clone)]
pub struct SockJsSettings {
    /// Serve SockJS at `/stomp`.
    pub enabled: bool,
    /// Idle receivers get an `h` frame this often.
    pub heartbeat: Duration,
    /// Sessions without a receiver this long are forgotten.
    pub disconnect_delay: Duration,
    /// Bytes per streaming response.
    pub response_limit: usize,
    /// Outgoing messages buffered per session.
    pub max_queued: usize,
    /// Client script for the iframe page.
    pub sockjs_url: String,
    /// `cookie_needed` for `/stomp`.
    pub cookie_needed: bool,
    /// Serve the sockjs-protocol test services.
    pub test_endpoints: bool,
}

/// Everything the HTTP listener's handlers share.
pub struct HttpContext {
    /// STOMP connection settings.
    pub stomp: StompShared,
    /// SockJS settings.
    pub sockjs: SockJsSettings,
    /// Admits STOMP connections (WebSocket and SockJS sessions).
    pub gate: Arc<Gate>,
    sessions: Mutex<HashMap<(Service, String), Arc<SessionEntry>>>,
}

impl HttpContext {
    /// A context for one listener.
    pub fn new(stomp: StompShared, sockjs: SockJsSettings, gate: Arc<Gate>) -> HttpContext {
        HttpContext {
            stomp,
            sockjs,
            gate,
            sessions: Mutex::new(HashMap::new()),
        }
    }
}

/// A SockJS service: a base URL and the application behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Service {
    /// STOMP at `/stomp`.
    Stomp,
    /// Test service: echo.
    Echo,
    /// Test service: closes every session at once with 3000 "Go away!".
    Close,
    /// Test service: echo without the websocket transport.
    DisabledWebsocketEcho,
    /// Test service: echo with `JSESSIONID` cookies.
    CookieNeededEcho,
}

impl Service {
    fn websocket(self) -> bool {
        self != Service::DisabledWebsocketEcho
    }

    fn cookie_needed(self, ctx: &HttpContext) -> bool {
        match self {
            Service::Stomp => ctx.sockjs.cookie_needed,
            Service::CookieNeededEcho => true,
            _ => false,
        }
    }

    /// The test services use the 4096-byte limit the suite expects.
    fn response_limit(self, ctx: &HttpContext) -> usize {
        match self {
            Service::Stomp => ctx.sockjs.response_limit,
            _ => 4096,
        }
    }
}

/// What a session's messages go to.
enum App {
    Echo,
    Close,
    Stomp(mpsc::Sender<String>),
}

/// A SockJS session in the registry: its state, the wake-up of the
/// attached receiver, and its application.
pub struct SessionEntry {
    state: Mutex<Session>,
    notify: Notify,
    /// Signalled when a receiving request detaches.
    detached: Notify,
    app: Mutex<Option<App>>,
}

impl SessionEntry {
    /// Queue outgoing STOMP chunks as messages; false when the queue is full.
    pub fn send_all(&self, chunks: Vec<Bytes>) -> bool {
        let mut st = self.state.lock();
        for c in chunks {
            if st.send(String::from_utf8_lossy(&c).into_owned()).is_err() {
                return false;
            }
        }
        drop(st);
        self.notify.notify_one();
        true
    }

    /// The application closes the session.
    pub fn close(&self, code: u16, reason: &str) {
        self.state.lock().close(code, reason);
        self.notify.notify_one();
    }
}

/// Serve the listener until shutdown.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ctx: Arc<HttpContext>,
    nodelay: bool,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let mut shutdown = ctx.stomp.ctx.shutdown.clone();
    tokio::spawn(sweeper(ctx.clone()));
    let app = Router::new().fallback(handle).with_state(ctx);
    let listener = listener.tap_io(move |tcp| {
        if nodelay {
            let _ = tcp.set_nodelay(true);
        }
    });
    let r = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = shutdown.changed().await;
    })
    .await;
    info!(listener = "http:stomp", "listener stopped");
    r
}

/// Forget sessions nobody has received from for `disconnect_delay`.
async fn sweeper(ctx: Arc<HttpContext>) {
    let mut shutdown = ctx.stomp.ctx.shutdown.clone();
    let period = ctx
        .sockjs
        .disconnect_delay
        .min(Duration::from_secs(1))
        .max(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => {}
        }
        let stopping = *shutdown.borrow();
        let t = now();
        let gone: Vec<Arc<SessionEntry>> = {
            let mut sessions = ctx.sessions.lock();
            let expired: Vec<(Service, String)> = sessions
                .iter()
                .filter(|(_, e)| stopping || e.state.lock().expired(t, ctx.sockjs.disconnect_delay))
                .map(|(k, _)| k.clone())
                .collect();
            expired
                .into_iter()
                .filter_map(|k| sessions.remove(&k))
                .collect()
        };
        for entry in gone {
            // Dropping the application's inbound queue ends a STOMP session.
            entry.app.lock().take();
            entry.notify.notify_one();
        }
        if stopping {
            return;
        }
    }
}

// ------------------------------------------------------------------ dispatch

async fn handle(
    State(ctx): State<Arc<HttpContext>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let path = req.uri().path().to_owned();
    if path == "/stomp/websocket" {
        return raw_stomp_upgrade(ctx, peer, req).await;
    }
    let services: &[(&str, Service)] = &[
        ("/stomp", Service::Stomp),
        ("/echo", Service::Echo),
        ("/close", Service::Close),
        ("/disabled_websocket_echo", Service::DisabledWebsocketEcho),
        ("/cookie_needed_echo", Service::CookieNeededEcho),
    ];
    let found = services.iter().find_map(|(prefix, s)| {
        let rest = path.strip_prefix(prefix)?;
        (rest.is_empty() || rest.starts_with('/')).then_some((*s, rest.to_owned()))
    });
    let Some((service, rest)) = found else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let enabled = match service {
        Service::Stomp => ctx.sockjs.enabled,
        _ => ctx.sockjs.test_endpoints,
    };
    if !enabled {
        return StatusCode::NOT_FOUND.into_response();
    }
    match route(&rest) {
        Route::Greeting => match *req.method() {
            Method::GET => text(
                StatusCode::OK,
                "text/plain;charset=UTF-8",
                "Welcome to SockJS!\n",
            ),
            _ => not_allowed("GET"),
        },
        Route::Info => match *req.method() {
            Method::GET => info_response(&ctx, service, req.headers()),
            Method::OPTIONS => options(req.headers(), "OPTIONS, GET"),
            _ => not_allowed("OPTIONS, GET"),
        },
        Route::Iframe => match *req.method() {
            Method::GET => iframe(&ctx, req.headers()),
            _ => not_allowed("GET"),
        },
        Route::RawWebSocket => raw_websocket(ctx, service, peer, req).await,
        Route::Session { session, transport } => {
            let session = session.to_owned();
            session_request(ctx, service, peer, session, transport, req).await
        }
        Route::NotFound => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn session_request(
    ctx: Arc<HttpContext>,
    service: Service,
    peer: SocketAddr,
    session: String,
    transport: Transport,
    req: Request,
) -> Response {
    let method = req.method().clone();
    let (get_or_post, allow) = match transport {
        Transport::WebSocket => {
            if !service.websocket() {
                return StatusCode::NOT_FOUND.into_response();
            }
            return sockjs_websocket(ctx, service, peer, req).await;
        }
        Transport::Xhr | Transport::XhrSend | Transport::XhrStreaming => {
            (Method::POST, "OPTIONS, POST")
        }
        Transport::JsonpSend => (Method::POST, "OPTIONS, POST"),
        Transport::EventSource | Transport::HtmlFile | Transport::Jsonp => {
            (Method::GET, "OPTIONS, GET")
        }
    };
    if method == Method::OPTIONS {
        return options(req.headers(), allow);
    }
    if method != get_or_post {
        return not_allowed(allow);
    }
    let headers = req.headers().clone();
    let mut resp = match transport {
        Transport::Xhr => receive(&ctx, service, peer, &session, Wrap::Xhr, None, &headers).await,
        Transport::XhrStreaming => {
            receive(
                &ctx,
                service,
                peer,
                &session,
                Wrap::Xhr,
                Some(sockjs::xhr_streaming_prelude()),
                &headers,
            )
            .await
        }
        Transport::EventSource => {
            receive(
                &ctx,
                service,
                peer,
                &session,
                Wrap::EventSource,
                Some(sockjs::EVENTSOURCE_PRELUDE.to_string()),
                &headers,
            )
            .await
        }
        Transport::HtmlFile | Transport::Jsonp => {
            let callback = match query_param(req.uri().query(), "c") {
                None => {
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain;charset=UTF-8",
                        "\"callback\" parameter required",
                    )
                }
                Some(c) if !sockjs::valid_callback(&c) => {
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain;charset=UTF-8",
                        "invalid \"callback\" parameter",
                    )
                }
                Some(c) => c,
            };
            if transport == Transport::HtmlFile {
                let prelude = sockjs::htmlfile_prelude(&callback);
                receive(
                    &ctx,
                    service,
                    peer,
                    &session,
                    Wrap::HtmlFile,
                    Some(prelude),
                    &headers,
                )
                .await
            } else {
                receive(
                    &ctx,
                    service,
                    peer,
                    &session,
                    Wrap::Jsonp(callback),
                    None,
                    &headers,
                )
                .await
            }
        }
        Transport::XhrSend | Transport::JsonpSend => {
            incoming(&ctx, service, &session, transport, req).await
        }
        Transport::WebSocket => StatusCode::NOT_FOUND.into_response(),
    };
    if service.cookie_needed(&ctx) {
        set_cookie(&mut resp, &headers);
    }
    resp
}

// ------------------------------------------------------------------ sessions

/// The session `id` of `service`, created (with its application) when a
/// receiving request names an unknown one.
fn session_for(
    ctx: &Arc<HttpContext>,
    service: Service,
    peer: SocketAddr,
    id: &str,
    create: bool,
) -> Option<Arc<SessionEntry>> {
    let mut sessions = ctx.sessions.lock();
    if let Some(e) = sessions.get(&(service, id.to_owned())) {
        return Some(e.clone());
    }
    if !create {
        return None;
    }
    let mut state = Session::new(now(), ctx.sockjs.max_queued);
    let app = match service {
        Service::Close => {
            state.close(3000, "Go away!");
            App::Close
        }
        Service::Stomp => {
            let Some(permit) = ctx.gate.admit() else {
                debug!(%peer, "STOMP connection limit reached; refusing a SockJS session");
                state.close(1013, "Too many connections");
                let entry = Arc::new(SessionEntry {
                    state: Mutex::new(state),
                    notify: Notify::new(),
                    detached: Notify::new(),
                    app: Mutex::new(Some(App::Close)),
                });
                sessions.insert((service, id.to_owned()), entry.clone());
                return Some(entry);
            };
            let (tx, rx) = mpsc::channel(64);
            let entry = Arc::new(SessionEntry {
                state: Mutex::new(state),
                notify: Notify::new(),
                detached: Notify::new(),
                app: Mutex::new(Some(App::Stomp(tx))),
            });
            let span = tracing::info_span!("conn", proto = "stomp", transport = "sockjs", %peer);
            tokio::spawn(
                stomp_ws::sockjs_stomp_session(entry.clone(), rx, peer, ctx.stomp.clone(), permit)
                    .instrument(span),
            );
            sessions.insert((service, id.to_owned()), entry.clone());
            return Some(entry);
        }
        _ => App::Echo,
    };
    let entry = Arc::new(SessionEntry {
        state: Mutex::new(state),
        notify: Notify::new(),
        detached: Notify::new(),
        app: Mutex::new(Some(app)),
    });
    sessions.insert((service, id.to_owned()), entry.clone());
    Some(entry)
}

/// Detaches the receiver when the response ends; a response dropped
/// before it ended (the client went away) closes the session (1002).
struct Attached {
    entry: Arc<SessionEntry>,
    done: bool,
}

impl Attached {
    /// The response ended normally.
    fn finish(&mut self) {
        self.done = true;
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.entry.state.lock().detach(now(), !self.done);
        self.entry.detached.notify_waiters();
    }
}

/// How long a receiving request waits for an attached one to end before
/// answering "another connection still open".
const ATTACH_GRACE: Duration = Duration::from_millis(100);

/// A receiving request: polling (`prelude` None) answers with one frame;
/// streaming writes the prelude, then frames until the response limit or a
/// close frame.
async fn receive(
    ctx: &Arc<HttpContext>,
    service: Service,
    peer: SocketAddr,
    id: &str,
    wrap: Wrap,
    prelude: Option<String>,
    headers: &HeaderMap,
) -> Response {
    let Some(entry) = session_for(ctx, service, peer, id, true) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let content_type = match wrap {
        Wrap::Xhr | Wrap::Jsonp(_) => "application/javascript;charset=UTF-8",
        Wrap::EventSource => "text/event-stream",
        Wrap::HtmlFile => "text/html;charset=UTF-8",
    };
    let busy = Attach::Refused(sockjs::close(
        tributary_sockjs::session::ANOTHER_CONNECTION.0,
        tributary_sockjs::session::ANOTHER_CONNECTION.1,
    ));
    // The attached request may belong to a client that has just gone away,
    // which the HTTP server notices a moment later: then this request must
    // see the interruption (1002), not "another connection" (2010). So a
    // busy session is given ATTACH_GRACE for its receiver to detach.
    let detached = entry.detached.notified();
    tokio::pin!(detached);
    detached.as_mut().enable();
    let mut attach = entry.state.lock().attach();
    if attach == busy && tokio::time::timeout(ATTACH_GRACE, detached).await.is_ok() {
        attach = entry.state.lock().attach();
    }
    let heartbeat = ctx.sockjs.heartbeat;
    let mut shutdown = ctx.stomp.ctx.shutdown.clone();
    let body = match (attach, prelude) {
        (Attach::Refused(frame), None) => Body::from(wrap.wrap(&frame)),
        (Attach::Refused(frame), Some(prelude)) => {
            let chunks: Vec<Result<Bytes, Infallible>> =
                vec![Ok(prelude.into()), Ok(wrap.wrap(&frame).into())];
            Body::from_stream(futures_util::stream::iter(chunks))
        }
        (Attach::Attached, None) => {
            let mut guard = Attached {
                entry: entry.clone(),
                done: false,
            };
            let frame = next_frame(&entry, heartbeat, &mut shutdown).await;
            guard.finish();
            drop(guard);
            Body::from(wrap.wrap(&frame))
        }
        (Attach::Attached, Some(prelude)) => {
            let limit = service.response_limit(ctx);
            let guard = Attached {
                entry: entry.clone(),
                done: false,
            };
            let stream = futures_util::stream::unfold(
                (Some(prelude), guard, 0usize, false, shutdown),
                move |(prelude, mut guard, sent, finished, mut shutdown)| {
                    let wrap = wrap.clone();
                    async move {
                        if let Some(p) = prelude {
                            return Some((
                                Ok::<Bytes, Infallible>(p.into()),
                                (None, guard, sent, false, shutdown),
                            ));
                        }
                        if finished {
                            guard.finish();
                            return None;
                        }
                        let frame = next_frame(&guard.entry, heartbeat, &mut shutdown).await;
                        let closing = frame.starts_with('c');
                        let chunk = wrap.wrap(&frame);
                        let sent = sent
                            + if frame == sockjs::HEARTBEAT {
                                0
                            } else {
                                chunk.len()
                            };
                        let finished = closing || sent >= limit || *shutdown.borrow();
                        Some((Ok(chunk.into()), (None, guard, sent, finished, shutdown)))
                    }
                },
            );
            Body::from_stream(stream)
        }
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    no_cache(h);
    cors(h, headers);
    resp
}

/// Wait for the next frame for the attached receiver: a session frame, a
/// heartbeat after `heartbeat` of silence, or a close frame on shutdown.
async fn next_frame(
    entry: &SessionEntry,
    heartbeat: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> String {
    let deadline = tokio::time::Instant::now() + heartbeat;
    loop {
        if let Some(frame) = entry.state.lock().poll() {
            return frame;
        }
        if *shutdown.borrow() {
            return sockjs::close(1001, "Server shutting down");
        }
        tokio::select! {
            _ = entry.notify.notified() => {}
            _ = tokio::time::sleep_until(deadline) => return sockjs::HEARTBEAT.to_string(),
            _ = shutdown.changed() => {}
        }
    }
}

/// `xhr_send` / `jsonp_send`: messages from the client.
async fn incoming(
    ctx: &Arc<HttpContext>,
    service: Service,
    id: &str,
    transport: Transport,
    req: Request,
) -> Response {
    let req_headers = req.headers().clone();
    let Some(entry) = session_for(ctx, service, SocketAddr::from(([0, 0, 0, 0], 0)), id, false)
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let form = transport == Transport::JsonpSend
        && req_headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let limit =
        (tributary_stomp::connection::max_frame_bytes(&ctx.stomp.channel.limits) * 8).max(1 << 20);
    let Ok(body) = axum::body::to_bytes(req.into_body(), limit).await else {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "text/plain;charset=UTF-8",
            "Payload too large.",
        );
    };
    let payload: Vec<u8> = if form {
        let text = String::from_utf8_lossy(&body);
        match query_param(Some(&text), "d") {
            Some(d) => d.into_bytes(),
            None => Vec::new(),
        }
    } else {
        body.to_vec()
    };
    let messages = match sockjs::parse_messages(&payload, false) {
        Ok(m) => m,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain;charset=UTF-8",
                &e.to_string(),
            )
        }
    };
    let stomp = match &*entry.app.lock() {
        Some(App::Stomp(tx)) => Some(tx.clone()),
        Some(App::Echo) => {
            let mut st = entry.state.lock();
            for m in messages.iter() {
                let _ = st.send(m.clone());
            }
            drop(st);
            entry.notify.notify_one();
            None
        }
        _ => None,
    };
    if let Some(tx) = stomp {
        for m in messages {
            // Bounded: a client sending faster than STOMP consumes waits here.
            if tx.send(m).await.is_err() {
                break;
            }
        }
    }
    let mut resp = if transport == Transport::XhrSend {
        let mut r = StatusCode::NO_CONTENT.into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain;charset=UTF-8"),
        );
        r
    } else {
        text(StatusCode::OK, "text/plain;charset=UTF-8", "ok")
    };
    no_cache(resp.headers_mut());
    cors(resp.headers_mut(), &req_headers);
    resp
}

// ------------------------------------------------------------------ websockets

fn bad_upgrade() -> Response {
    text(
        StatusCode::BAD_REQUEST,
        "text/plain;charset=UTF-8",
        "Can \"Upgrade\" only to \"WebSocket\". Not a valid websocket request.",
    )
}

async fn upgrade_of(ctx: &Arc<HttpContext>, req: Request) -> Result<WebSocketUpgrade, Response> {
    if req.method() != Method::GET {
        return Err(not_allowed("GET"));
    }
    let (mut parts, _) = req.into_parts();
    WebSocketUpgrade::from_request_parts(&mut parts, ctx)
        .await
        .map_err(|_| bad_upgrade())
}

async fn raw_stomp_upgrade(ctx: Arc<HttpContext>, peer: SocketAddr, req: Request) -> Response {
    let ws = match upgrade_of(&ctx, req).await {
        Ok(ws) => ws,
        Err(r) => return r,
    };
    let Some(permit) = ctx.gate.admit() else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let shared = ctx.stomp.clone();
    let max = tributary_stomp::connection::max_frame_bytes(&shared.channel.limits);
    ws.protocols(["v12.stomp", "v11.stomp", "v10.stomp"])
        .max_message_size(max)
        .on_upgrade(move |socket| {
            let span = tracing::info_span!("conn", proto = "stomp", transport = "ws", %peer);
            stomp_ws::raw_stomp(socket, peer, shared, permit).instrument(span)
        })
}

/// `/{service}/websocket`: a raw WebSocket for the test services.
async fn raw_websocket(
    ctx: Arc<HttpContext>,
    service: Service,
    _peer: SocketAddr,
    req: Request,
) -> Response {
    let ws = match upgrade_of(&ctx, req).await {
        Ok(ws) => ws,
        Err(r) => return r,
    };
    ws.on_upgrade(move |socket| test_raw_ws(socket, service == Service::Close))
}

async fn test_raw_ws(mut ws: WebSocket, close: bool) {
    if close {
        // Some clients (ws4py) fail when the close frame arrives in the
        // same read as the 101 response: let the response go first.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = ws
            .send(Message::Close(Some(CloseFrame {
                code: 3000,
                reason: "Go away!".into(),
            })))
            .await;
        return;
    }
    while let Some(Ok(msg)) = ws.recv().await {
        let echo = match msg {
            Message::Text(_) | Message::Binary(_) => msg,
            Message::Close(_) => break,
            _ => continue,
        };
        if ws.send(echo).await.is_err() {
            break;
        }
    }
}

/// `/{service}/{server}/{session}/websocket`: SockJS framing over a WebSocket.
async fn sockjs_websocket(
    ctx: Arc<HttpContext>,
    service: Service,
    peer: SocketAddr,
    req: Request,
) -> Response {
    if req.method() == Method::GET
        && req.headers().contains_key("sec-websocket-key1")
        && req.headers().contains_key("sec-websocket-key2")
    {
        return hixie76_upgrade(ctx, service, peer, req);
    }
    let ws = match upgrade_of(&ctx, req).await {
        Ok(ws) => ws,
        Err(r) => return r,
    };
    let heartbeat = ctx.sockjs.heartbeat;
    match service {
        Service::Stomp => {
            let Some(permit) = ctx.gate.admit() else {
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            };
            let shared = ctx.stomp.clone();
            ws.on_upgrade(move |socket| {
                let span =
                    tracing::info_span!("conn", proto = "stomp", transport = "sockjs-ws", %peer);
                stomp_ws::sockjs_stomp_ws(
                    hixie76::Rfc6455::new(socket),
                    peer,
                    shared,
                    heartbeat,
                    permit,
                )
                .instrument(span)
            })
        }
        _ => {
            let close = service == Service::Close;
            ws.on_upgrade(move |socket| {
                test_sockjs_ws(hixie76::Rfc6455::new(socket), close, heartbeat)
            })
        }
    }
}

async fn test_sockjs_ws<T: TextFrames>(mut ws: T, close: bool, heartbeat: Duration) {
    if !hixie76::send_text(&mut ws, sockjs::OPEN.into()).await {
        return;
    }
    if close {
        let _ = hixie76::send_text(&mut ws, sockjs::close(3000, "Go away!")).await;
        hixie76::close(&mut ws).await;
        return;
    }
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    loop {
        tokio::select! {
            msg = hixie76::recv_text(&mut ws) => {
                let text = match msg {
                    Incoming::Text(t) => t,
                    Incoming::Closed => return,
                    Incoming::Ignore => continue,
                };
                match sockjs::parse_messages(text.as_bytes(), true) {
                    Ok(msgs) if msgs.is_empty() => {}
                    Ok(msgs) => {
                        if !hixie76::send_text(&mut ws, sockjs::messages(&msgs)).await {
                            return;
                        }
                    }
                    Err(sockjs::PayloadError::Empty) => {}
                    // Broken JSON: terminate abruptly.
                    Err(sockjs::PayloadError::BrokenJson) => return,
                }
            }
            _ = beat.tick() => {
                if !hixie76::send_text(&mut ws, sockjs::HEARTBEAT.into()).await {
                    return;
                }
            }
        }
    }
}

/// A SockJS `websocket` request in the hixie-76 draft (`Sec-WebSocket-Key1`
/// and `Key2`): answer 101 with the draft's headers, then, on the upgraded
/// connection, read the client's 8-byte key, answer the challenge and run
/// the same SockJS session as over RFC 6455.
fn hixie76_upgrade(
    ctx: Arc<HttpContext>,
    service: Service,
    peer: SocketAddr,
    mut req: Request,
) -> Response {
    let headers = req.headers();
    let key = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(hixie76::key_number)
    };
    let (Some(key1), Some(key2)) = (key("sec-websocket-key1"), key("sec-websocket-key2")) else {
        return bad_upgrade();
    };
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("null")
        .to_owned();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost")
        .to_owned();
    let location = format!("ws://{host}{}", req.uri().path());
    let (Ok(origin_value), Ok(location_value)) = (
        HeaderValue::from_str(&origin),
        HeaderValue::from_str(&location),
    ) else {
        return bad_upgrade();
    };
    let permit = if service == Service::Stomp {
        match ctx.gate.admit() {
            Some(p) => Some(p),
            None => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
        }
    } else {
        None
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let heartbeat = ctx.sockjs.heartbeat;
    let shared = ctx.stomp.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let io = hyper_util::rt::TokioIo::new(upgraded);
        let ws = match Hixie76::accept(io, key1, key2).await {
            Ok(ws) => ws,
            Err(e) => {
                debug!(error = %e, "hixie-76 handshake not completed");
                return;
            }
        };
        match permit {
            Some(permit) => {
                let span = tracing::info_span!("conn", proto = "stomp", transport = "sockjs-hixie76", %peer);
                stomp_ws::sockjs_stomp_ws(ws, peer, shared, heartbeat, permit)
                    .instrument(span)
                    .await
            }
            None => test_sockjs_ws(ws, service == Service::Close, heartbeat).await,
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert("sec-websocket-origin", origin_value);
    h.insert("sec-websocket-location", location_value);
    response
}

// ------------------------------------------------------------------ static responses

fn info_response(ctx: &HttpContext, service: Service, headers: &HeaderMap) -> Response {
    let entropy: u32 = rand::random();
    let body = format!(
        "{{\"websocket\":{},\"cookie_needed\":{},\"origins\":[\"*:*\"],\"entropy\":{entropy}}}",
        service.websocket(),
        service.cookie_needed(ctx)
    );
    let mut r = text(StatusCode::OK, "application/json;charset=UTF-8", &body);
    no_cache(r.headers_mut());
    cors(r.headers_mut(), headers);
    r
}

fn iframe(ctx: &HttpContext, headers: &HeaderMap) -> Response {
    use std::hash::{Hash, Hasher};
    let page = sockjs::iframe_page(&ctx.sockjs.sockjs_url);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    page.hash(&mut h);
    let etag = format!("\"{:016x}\"", h.finish());
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let mut r = text(StatusCode::OK, "text/html;charset=UTF-8", &page);
    let h = r.headers_mut();
    cache_for_a_year(h);
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    r
}

/// CORS preflight: cacheable for a year.
fn options(req_headers: &HeaderMap, methods: &'static str) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    cache_for_a_year(h);
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("31536000"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(methods),
    );
    if let Some(v) = req_headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .filter(|v| !v.is_empty())
    {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
    }
    cors(h, req_headers);
    r
}

fn not_allowed(allow: &'static str) -> Response {
    let mut r = StatusCode::METHOD_NOT_ALLOWED.into_response();
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

fn text(status: StatusCode, content_type: &'static str, body: &str) -> Response {
    let mut r = Response::new(Body::from(body.to_owned()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn no_cache(h: &mut HeaderMap) {
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache, no-transform, must-revalidate, max-age=0"),
    );
}

fn cache_for_a_year(h: &mut HeaderMap) {
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000"),
    );
    let expires = SystemTime::now() + Duration::from_secs(31_536_000);
    if let Ok(v) = HeaderValue::from_str(&http_date(expires)) {
        h.insert(header::EXPIRES, v);
    }
}

/// Echo the request's `Origin` with credentials allowed, or `*` without.
fn cors(h: &mut HeaderMap, req_headers: &HeaderMap) {
    match req_headers.get(header::ORIGIN) {
        Some(origin) => {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        None => {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        }
    }
}

/// `JSESSIONID`: echoed when the client has one, `dummy` otherwise.
fn set_cookie(resp: &mut Response, req_headers: &HeaderMap) {
    let jsessionid = req_headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("JSESSIONID=").map(str::to_owned))
        .unwrap_or_else(|| "dummy".to_owned());
    if let Ok(v) = HeaderValue::from_str(&format!("JSESSIONID={jsessionid}; path=/")) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
}

/// The value of `name` in a query or form string, percent-decoded.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(b) = hex {
                    out.push(b);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 7231 IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let mon = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(month - 1) as usize];
    format!(
        "{weekday}, {day:02} {mon} {year} {:02}:{:02}:{:02} GMT",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(784_111_777)),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
    }

    #[test]
    fn query() {
        assert_eq!(
            query_param(Some("c=%63allback&x=1"), "c").as_deref(),
            Some("callback")
        );
        assert_eq!(
            query_param(Some("d=%5B%22x%22%5D"), "d").as_deref(),
            Some("[\"x\"]")
        );
        assert_eq!(query_param(Some("p=p"), "d"), None);
        assert_eq!(query_param(Some("d="), "d").as_deref(), Some(""));
        assert_eq!(percent_decode("a%2"), "a%2");
    }
}
