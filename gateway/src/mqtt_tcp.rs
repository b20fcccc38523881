//! MQTT over TCP: the accept loop and the per-connection driver.
//!
//! The driver is the only code here that touches the socket and the clock.
//! It reads bytes, decodes packets (the maximum packet size is checked from
//! the fixed header before the body is buffered), feeds them to the sans-IO
//! [`Channel`], writes what the channel queued, and waits on three things:
//! the socket, the session's wake-up signal, and the channel's deadline
//! (connect timeout, then keep alive).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn, Instrument};
use tributary_core::Broker;
use tributary_mqtt::channel::{Channel, ChannelConfig};
use tributary_mqtt::codec::{decode, encode};

/// Size of the stack buffer each read goes through.
const READ_CHUNK: usize = 16 * 1024;

/// The clock the drivers use: tokio's, so tests can pause it.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Everything a listener's connections share.
#[derive(Clone)]
pub struct ListenerContext {
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
pub async fn accept_loop(listener: TcpListener, ctx: ListenerContext, name: String) {
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
                warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = ctx.slots.clone().try_acquire_owned() else {
            debug!(listener = %name, %peer, "connection limit reached; refusing");
            drop(stream);
            continue;
        };
        let ctx = ctx.clone();
        let span = tracing::info_span!("conn", proto = "mqtt", transport = "tcp", %peer);
        tokio::spawn(
            async move {
                serve(stream, peer, ctx).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
    info!(listener = %name, "listener stopped");
}

async fn serve(stream: TcpStream, peer: SocketAddr, ctx: ListenerContext) {
    if ctx.nodelay {
        // Without it, small-message latency tails reach 40 ms (Nagle).
        let _ = stream.set_nodelay(true);
    }
    let metrics = ctx.broker.metrics();
    metrics.inc(&metrics.connections);
    metrics.inc(&metrics.connections_total);
    let (mut reader, mut writer) = stream.into_split();
    let mut channel = Channel::new(ctx.broker.clone(), ctx.channel.clone(), Some(peer), now());
    let mut shutdown = ctx.shutdown.clone();
    // Both buffers hold no memory while the connection is idle: bytes are
    // read into a stack buffer and copied in only when they arrive.
    let mut rbuf = BytesMut::new();
    let mut wbuf = BytesMut::new();
    let mut signal = None;
    let mut peer_closed = false;
    loop {
        if channel.has_output() && flush(&mut channel, &mut wbuf, &mut writer).await.is_err() {
            break;
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
                let cap = channel.max_packet_size().saturating_add(READ_CHUNK);
                if ready.is_err() || !read_available(&reader, &mut rbuf, cap) {
                    peer_closed = true;
                    // Whatever arrived before the close still counts.
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
        let _ = flush(&mut channel, &mut wbuf, &mut writer).await;
    }
    channel.finish(now());
    let _ = writer.shutdown().await;
    if !peer_closed {
        linger(&mut reader).await;
    }
    metrics.dec(&metrics.connections);
}

/// How long a connection the server closed keeps reading (and discarding)
/// so the peer sees our last packets rather than a reset.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// After our FIN, read and discard until the peer closes or [`LINGER`]
/// passes. Closing a socket with unread input makes the kernel send RST,
/// which can destroy a DISCONNECT or CONNACK still in flight.
async fn linger(reader: &mut tokio::net::tcp::OwnedReadHalf) {
    let mut scratch = [0u8; 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = reader.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Read what the socket has without waiting, through a stack buffer, into
/// `rbuf`, stopping once `rbuf` holds `cap` bytes (more than any acceptable
/// packet, so the decoder can refuse it). Returns false when the peer closed
/// or the socket failed.
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

fn decode_all(channel: &mut Channel, rbuf: &mut BytesMut) {
    loop {
        match decode(rbuf, channel.version(), channel.max_packet_size()) {
            Ok(Some(packet)) => channel.handle_packet(packet, now()),
            Ok(None) => break,
            Err(e) => {
                channel.handle_decode_error(&e, now());
                break;
            }
        }
        if channel.is_closed() {
            break;
        }
    }
}

async fn flush(
    channel: &mut Channel,
    wbuf: &mut BytesMut,
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
) -> std::io::Result<()> {
    let version = channel.version();
    for packet in channel.take_output() {
        if let Err(e) = encode(&packet, version, wbuf) {
            warn!(error = %e, "cannot encode packet; dropped");
        }
    }
    let result = writer.write_all(wbuf).await;
    wbuf.clear();
    result
}
