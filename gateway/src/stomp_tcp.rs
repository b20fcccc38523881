//! STOMP over TCP (61613): the accept loop and the per-connection driver,
//! plus the decode/encode helpers the WebSocket and SockJS drivers share.
//!
//! The driver is the only code here that touches the socket and the clock.
//! It reads bytes (any byte counts as a heart-beat from the client),
//! decodes frames with the channel's negotiated version and limits, feeds
//! them to the sans-IO [`Channel`], writes what the channel queued, and
//! waits on four things: the socket, the session's wake-up signal, the
//! channel's deadline (connect timeout, heart-beats both ways) and shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn, Instrument};
use tributary_core::Broker;
use tributary_stomp::codec::{self, encode_heartbeat};
use tributary_stomp::{Channel, ChannelConfig, Item, Output};

use crate::mqtt_tcp::now;

/// Size of the stack buffer each read goes through.
const READ_CHUNK: usize = 16 * 1024;

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
}

/// Accept connections until shutdown.
pub async fn accept_loop(listener: TcpListener, ctx: StompContext) {
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(listener = "tcp:stomp", error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = ctx.slots.clone().try_acquire_owned() else {
            debug!(listener = "tcp:stomp", %peer, "connection limit reached; refusing");
            drop(stream);
            continue;
        };
        let ctx = ctx.clone();
        let span = tracing::info_span!("conn", proto = "stomp", transport = "tcp", %peer);
        tokio::spawn(
            async move {
                serve(stream, peer, ctx).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
    info!(listener = "tcp:stomp", "listener stopped");
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
    let metrics = ctx.broker.metrics();
    metrics.inc(&metrics.connections);
    metrics.inc(&metrics.connections_total);
    let (mut reader, mut writer) = stream.into_split();
    let mut channel = Channel::new(ctx.broker.clone(), ctx.channel.clone(), Some(peer), now());
    let cap = max_frame_bytes(&ctx.channel).saturating_add(READ_CHUNK);
    let mut shutdown = ctx.shutdown.clone();
    let mut rbuf = BytesMut::new();
    let mut wbuf = BytesMut::new();
    let mut signal = None;
    let mut peer_closed = false;
    loop {
        if channel.has_output() {
            encode_into(&mut channel, &mut wbuf);
            let r = writer.write_all(&wbuf).await;
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
        let deadline = channel.next_deadline();
        tokio::select! {
            ready = reader.readable() => {
                if ready.is_err() || !read_available(&reader, &mut rbuf, cap) {
                    peer_closed = true;
                    decode_all(&mut channel, &mut rbuf);
                    break;
                }
                decode_all(&mut channel, &mut rbuf);
                if rbuf.is_empty() {
                    rbuf = BytesMut::new();
                }
            },
            _ = async { match &signal { Some(s) => s.notified().await, None => std::future::pending().await } } => {
                channel.handle_wake(now());
            }
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending().await,
                }
            } => channel.handle_timeout(now()),
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
        linger(&mut reader).await;
    }
    metrics.dec(&metrics.connections);
}

/// After our FIN, read and discard until the peer closes or two seconds
/// pass, so the peer sees our ERROR or RECEIPT rather than a reset.
async fn linger(reader: &mut tokio::net::tcp::OwnedReadHalf) {
    let mut scratch = vec![0u8; 1024];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while let Ok(n) = reader.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Read what the socket has without waiting into `rbuf`, up to `cap`
/// bytes. Returns false when the peer closed or the socket failed.
fn read_available(
    reader: &tokio::net::tcp::OwnedReadHalf,
    rbuf: &mut BytesMut,
    cap: usize,
) -> bool {
    let mut chunk = [0u8; READ_CHUNK];
    while rbuf.len() < cap {
        match reader.try_read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => {
                rbuf.extend_from_slice(&chunk[..n]);
                if n < chunk.len() {
                    return true;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
    true
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
        if channel.is_closed() {
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

/// Bind the STOMP listeners `[stomp]` enables (TCP; HTTP for WebSocket and
/// SockJS) and spawn their tasks. Returns the bound addresses.
pub async fn start(
    config: &tributary_config::Config,
    broker: &Arc<Broker>,
    shutdown: &watch::Receiver<bool>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<(Option<SocketAddr>, Option<SocketAddr>)> {
    use anyhow::Context;
    let s = &config.stomp;
    let channel = crate::wiring::stomp_channel(config);
    let slots = (s.max_connections as usize).min(config.limits.max_connections as usize);
    let mut tcp = None;
    if s.enabled {
        let listener = TcpListener::bind(s.bind)
            .await
            .with_context(|| format!("stomp.bind: cannot bind {}", s.bind))?;
        let addr = listener.local_addr()?;
        info!(listener = "tcp:stomp", %addr, "STOMP listener started");
        tcp = Some(addr);
        let ctx = StompContext {
            broker: broker.clone(),
            channel: channel.clone(),
            shutdown: shutdown.clone(),
            slots: Arc::new(Semaphore::new(slots)),
            nodelay: true,
        };
        tasks.spawn(accept_loop(listener, ctx));
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
    Ok((tcp, http))
}
