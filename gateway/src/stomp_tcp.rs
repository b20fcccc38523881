//! STOMP over TCP (61613) and over TLS (`stomp.ssl_bind`, started when a
//! certificate is configured): the accept loop and the per-connection
//! driver, plus what the WebSocket and SockJS drivers share with it
//! (decode/encode helpers and [`Holds`]).
//!
//! The driver is the only code here that touches the socket and the clock.
//! It reads bytes (any byte counts as a heart-beat from the client),
//! decodes frames with the channel's negotiated version and limits, feeds
//! them to the sans-IO [`Channel`], writes what the channel queued, and
//! waits on four things: the socket, the session's wake-up signal, the
//! channel's deadline (connect timeout, heart-beats both ways) and shutdown.
//! While an authentication backend decides, or while a subscriber's mailbox
//! that this connection's QoS 1/2 SENDs filled has no room, it reads nothing
//! ([`Holds`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn, Instrument};
use tributary_core::session::Session;
use tributary_core::{Broker, ConnectionSignal};
use tributary_stomp::codec::{self, encode_heartbeat};
use tributary_stomp::{Channel, ChannelConfig, Item, Output};

use crate::mqtt_tcp::{now, sleep_until, wait_for_room, MAX_PAUSE};
use crate::tls::TlsSource;
use crate::transport::{ConnRead, StreamRead, READ_CHUNK};

/// Everything a STOMP listener's connections share.
#[derive(Clone)]
pub struct StompContext {
    /// The core.
    pub broker: Arc<Broker>,
    /// Channel settings.
    pub channel: Arc<ChannelConfig>,
    /// Flips to true on shutdown.
    pub shutdown: watch::Receiver<bool>,
    /// Bounds concurrent connections on this listener.
    pub slots: Arc<Semaphore>,
    /// Set TCP_NODELAY on accepted sockets.
    pub nodelay: bool,
    /// TLS for the `ssl` listener; `None` for plain TCP.
    pub tls: Option<Arc<TlsSource>>,
}

impl StompContext {
    fn label(&self) -> &'static str {
        if self.tls.is_some() {
            "ssl:stomp"
        } else {
            "tcp:stomp"
        }
    }
}

/// Accept connections until shutdown.
pub async fn accept_loop(listener: TcpListener, ctx: StompContext) {
    let mut shutdown = ctx.shutdown.clone();
    let label = ctx.label();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(listener = label, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = ctx.slots.clone().try_acquire_owned() else {
            debug!(listener = label, %peer, "connection limit reached; refusing");
            drop(stream);
            continue;
        };
        let ctx = ctx.clone();
        let transport = if ctx.tls.is_some() { "ssl" } else { "tcp" };
        let span = tracing::info_span!("conn", proto = "stomp", transport, %peer);
        tokio::spawn(
            async move {
                serve(stream, peer, ctx).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
    info!(listener = label, "listener stopped");
}

/// Most bytes one acceptable frame can take, so a read buffer never needs more.
pub fn max_frame_bytes(config: &ChannelConfig) -> usize {
    let l = &config.limits;
    l.max_body_length
        .saturating_add((l.max_headers + 1).saturating_mul(l.max_header_length + 2))
        .saturating_add(64)
}

async fn serve(stream: TcpStream, peer: SocketAddr, ctx: StompContext) {
    if ctx.nodelay {
        // Without it, small-message latency tails reach 40 ms (Nagle).
        let _ = stream.set_nodelay(true);
    }
    match ctx.tls.clone() {
        None => {
            let (reader, writer) = stream.into_split();
            drive(StreamRead(reader), writer, peer, ctx, None).await;
        }
        Some(tls) => match tls.accept(stream).await {
            Ok((tls_stream, cn)) => {
                let (reader, writer) = tokio::io::split(tls_stream);
                drive(StreamRead(reader), writer, peer, ctx, cn).await;
            }
            Err(e) => debug!(error = %e, "TLS handshake failed"),
        },
    }
}

/// Run one STOMP connection over any byte transport. `transport_username`
/// is a TLS client certificate's CN when the listener takes user names
/// from certificates.
async fn drive<R: ConnRead, W: AsyncWrite + Unpin + Send>(
    mut reader: R,
    mut writer: W,
    peer: SocketAddr,
    ctx: StompContext,
    transport_username: Option<String>,
) {
    let metrics = ctx.broker.metrics();
    metrics.inc(&metrics.connections);
    metrics.inc(&metrics.connections_total);
    let mut channel = Channel::new(ctx.broker.clone(), ctx.channel.clone(), Some(peer), now());
    channel.set_transport_username(transport_username);
    let cap = max_frame_bytes(&ctx.channel).saturating_add(READ_CHUNK);
    let mut shutdown = ctx.shutdown.clone();
    let mut rbuf = BytesMut::new();
    let mut wbuf = BytesMut::new();
    let mut signal = None;
    let mut holds = Holds::new(&ctx.broker);
    let mut peer_closed = false;
    loop {
        if channel.has_output() {
            encode_into(&mut channel, &mut wbuf);
            let r = async {
                writer.write_all(&wbuf).await?;
                writer.flush().await
            }
            .await;
            wbuf.clear();
            if r.is_err() {
                break;
            }
        }
        if channel.is_closed() {
            break;
        }
        if signal.is_none() {
            signal = channel.signal();
        }
        if holds
            .settle(&mut channel, &signal, &mut shutdown, &mut rbuf)
            .await
        {
            continue;
        }
        let deadline = channel.next_deadline();
        tokio::select! {
            alive = reader.read_into(&mut rbuf, cap) => {
                if !alive {
                    peer_closed = true;
                    decode_all(&mut channel, &mut rbuf);
                    break;
                }
                decode_all(&mut channel, &mut rbuf);
                if rbuf.is_empty() {
                    rbuf = BytesMut::new();
                }
            },
            _ = wait_signal(&signal) => channel.handle_wake(now()),
            _ = sleep_until(deadline) => channel.handle_timeout(now()),
            _ = shutdown.changed() => channel.shutdown(),
        }
    }
    if channel.has_output() {
        encode_into(&mut channel, &mut wbuf);
        let _ = writer.write_all(&wbuf).await;
    }
    channel.finish(now());
    let _ = writer.shutdown().await;
    if !peer_closed {
        // Let the peer read our ERROR or RECEIPT rather than see a reset.
        reader.linger().await;
    }
    metrics.dec(&metrics.connections);
}

/// Wait for the session's wake-up signal, or forever without one.
pub async fn wait_signal(signal: &Option<Arc<ConnectionSignal>>) {
    match signal {
        Some(s) => s.notified().await,
        None => std::future::pending().await,
    }
}

/// What stops a STOMP driver from reading more input: a CONNECT waiting
/// for an authentication backend (ADR 0011), or subscribers whose
/// mailboxes this connection's QoS 1/2 SENDs filled (ADR 0009; reading
/// resumes when they have room, or after [`MAX_PAUSE`]).
pub struct Holds {
    paused: Vec<Arc<Session>>,
    since: Instant,
    mailbox_bound: usize,
}

impl Holds {
    /// No holds yet, for a connection to `broker`.
    pub fn new(broker: &Broker) -> Holds {
        Holds {
            paused: Vec::new(),
            since: now(),
            mailbox_bound: broker.config().queue.max_len,
        }
    }

    /// True when the driver must call [`Holds::wait`] instead of reading.
    pub fn active(&mut self, channel: &mut Channel) -> bool {
        if channel.is_backpressured() {
            if self.paused.is_empty() {
                self.since = now();
            }
            self.paused.extend(channel.take_backpressure());
        }
        channel.is_authenticating() || !self.paused.is_empty()
    }

    /// When a hold is active, wait for one thing ([`Holds::wait`]) and,
    /// once nothing holds any more, decode what `rbuf` already has; true
    /// when the driver must go round its loop again (write output, check
    /// for close) instead of reading.
    pub async fn settle(
        &mut self,
        channel: &mut Channel,
        signal: &Option<Arc<ConnectionSignal>>,
        shutdown: &mut watch::Receiver<bool>,
        rbuf: &mut BytesMut,
    ) -> bool {
        if !self.active(channel) {
            return false;
        }
        self.wait(channel, signal, shutdown).await;
        if !self.active(channel) {
            decode_all(channel, rbuf);
        }
        true
    }

    /// Wait for one thing: the authentication answer, room in the paused
    /// subscribers' mailboxes, a wake-up, a deadline or shutdown. The driver
    /// writes any output and asks [`Holds::active`] again.
    pub async fn wait(
        &mut self,
        channel: &mut Channel,
        signal: &Option<Arc<ConnectionSignal>>,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        if channel.is_authenticating() {
            let deadline = channel.next_deadline();
            match channel.take_auth_future() {
                Some(decision) => tokio::select! {
                    outcome = decision => channel.handle_auth_result(outcome, now()),
                    _ = sleep_until(deadline) => channel.handle_timeout(now()),
                    _ = shutdown.changed() => channel.shutdown(),
                },
                None => tokio::select! {
                    _ = sleep_until(deadline) => channel.handle_timeout(now()),
                    _ = shutdown.changed() => channel.shutdown(),
                },
            }
            return;
        }
        let pause_end = self.since + MAX_PAUSE;
        let deadline = channel
            .next_deadline()
            .map_or(pause_end, |d| d.min(pause_end));
        tokio::select! {
            _ = wait_for_room(&self.paused, self.mailbox_bound) => self.paused.clear(),
            _ = wait_signal(signal) => channel.handle_wake(now()),
            _ = sleep_until(Some(deadline)) => {
                if now() >= pause_end {
                    debug!("subscriber mailbox still full; resuming reads");
                    self.paused.clear();
                }
                // The client's heart-beats wait unread because of us: it
                // is not silent.
                channel.handle_activity(now());
                channel.handle_timeout(now());
            }
            _ = shutdown.changed() => channel.shutdown(),
        }
        if channel.is_closed() {
            self.paused.clear();
        }
    }
}

/// Feed every complete frame in `rbuf` to the channel. Any bytes at all
/// count as a sign of life.
pub fn decode_all(channel: &mut Channel, rbuf: &mut BytesMut) {
    if !rbuf.is_empty() {
        channel.handle_activity(now());
    }
    loop {
        let limits = *channel.limits();
        match codec::decode(rbuf, channel.version(), &limits) {
            Ok(Some(Item::Frame(frame))) => channel.handle_frame(frame, now()),
            Ok(Some(Item::HeartBeat)) => {}
            Ok(None) => break,
            Err(e) => {
                channel.handle_decode_error(&e, now());
                rbuf.clear();
                break;
            }
        }
        if channel.is_closed() || channel.is_authenticating() || channel.is_backpressured() {
            // The rest waits until the driver's holds are released.
            break;
        }
    }
}

/// Encode everything the channel queued into `wbuf`.
pub fn encode_into(channel: &mut Channel, wbuf: &mut BytesMut) {
    let version = channel.version();
    for item in channel.take_output(now()) {
        match item {
            Output::Frame(f) => codec::encode(&f, version, wbuf),
            Output::HeartBeat => encode_heartbeat(wbuf),
        }
    }
}

/// Encode the channel's output one item per chunk (one WebSocket or SockJS
/// message each).
pub fn encode_items(channel: &mut Channel) -> Vec<Bytes> {
    let version = channel.version();
    channel
        .take_output(now())
        .into_iter()
        .map(|item| match item {
            Output::Frame(f) => codec::to_bytes(&f, version),
            Output::HeartBeat => Bytes::from_static(b"\n"),
        })
        .collect()
}

/// Where the STOMP listeners are bound (`None`: not started).
#[derive(Debug, Clone, Default)]
pub struct StompAddrs {
    /// STOMP over TCP.
    pub tcp: Option<SocketAddr>,
    /// STOMP over TLS, with how it is secured (for the banner).
    pub ssl: Option<(SocketAddr, String)>,
    /// STOMP over WebSocket and SockJS (HTTP).
    pub http: Option<SocketAddr>,
}

/// Bind the STOMP listeners `[stomp]` enables (TCP; TLS when a certificate
/// is configured; HTTP for WebSocket and SockJS) and spawn their tasks.
pub async fn start(
    config: &tributary_config::Config,
    broker: &Arc<Broker>,
    shutdown: &watch::Receiver<bool>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<StompAddrs> {
    use anyhow::Context;
    let s = &config.stomp;
    let channel = crate::wiring::stomp_channel(config);
    let slots = (s.max_connections as usize).min(config.limits.max_connections as usize);
    let context = |tls| StompContext {
        broker: broker.clone(),
        channel: channel.clone(),
        shutdown: shutdown.clone(),
        slots: Arc::new(Semaphore::new(slots)),
        nodelay: true,
        tls,
    };
    let mut tcp = None;
    if s.enabled {
        let listener = TcpListener::bind(s.bind)
            .await
            .with_context(|| format!("stomp.bind: cannot bind {}", s.bind))?;
        let addr = listener.local_addr()?;
        info!(listener = "tcp:stomp", %addr, "STOMP listener started");
        tcp = Some(addr);
        tasks.spawn(accept_loop(listener, context(None)));
    }
    let mut ssl = None;
    if s.ssl_enabled && s.ssl_options.is_configured() {
        let tls = Arc::new(
            TlsSource::load("ssl:stomp".to_owned(), &s.ssl_options).context("stomp.ssl_options")?,
        );
        let listener = TcpListener::bind(s.ssl_bind)
            .await
            .with_context(|| format!("stomp.ssl_bind: cannot bind {}", s.ssl_bind))?;
        let addr = listener.local_addr()?;
        info!(listener = "ssl:stomp", %addr, "STOMP over TLS started");
        ssl = Some((addr, tls.describe()));
        tasks.spawn(crate::tls::reloader(vec![tls.clone()], shutdown.clone()));
        tasks.spawn(accept_loop(listener, context(Some(tls))));
    }
    let mut http = None;
    if s.ws_enabled {
        let listener = TcpListener::bind(s.ws_bind)
            .await
            .with_context(|| format!("stomp.ws_bind: cannot bind {}", s.ws_bind))?;
        let addr = listener.local_addr()?;
        info!(listener = "http:stomp", %addr, "STOMP over WebSocket and SockJS started");
        http = Some(addr);
        let j = &s.sockjs;
        let ctx = Arc::new(crate::stomp_http::HttpContext::new(
            crate::stomp_ws::StompShared {
                broker: broker.clone(),
                channel,
                shutdown: shutdown.clone(),
            },
            crate::stomp_http::SockJsSettings {
                enabled: j.enabled,
                heartbeat: j.heartbeat,
                disconnect_delay: j.disconnect_delay,
                response_limit: j.response_limit as usize,
                max_queued: j.max_queued_messages as usize,
                sockjs_url: j.sockjs_url.clone(),
                cookie_needed: j.cookie_needed,
                test_endpoints: j.test_endpoints,
            },
            Arc::new(Semaphore::new(slots)),
        ));
        tasks.spawn(async move {
            if let Err(e) = crate::stomp_http::serve(listener, ctx, true).await {
                warn!(listener = "http:stomp", error = %e, "listener failed");
            }
        });
    }
    Ok(StompAddrs { tcp, ssl, http })
}
