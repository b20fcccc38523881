//! MQTT over TCP: the accept loop and the per-connection driver.
//!
//! The driver is the only code here that touches the socket and the clock.
//! It reads bytes, decodes packets (the maximum packet size is checked from
//! the fixed header before the body is buffered), feeds them to the sans-IO
//! [`Channel`], writes what the channel queued, and waits on three things:
//! the socket, the session's wake-up signal, and the channel's deadline
//! (connect timeout, then keep alive).
//!
//! Acknowledgements the channel holds for the durable store (DESIGN.md §1)
//! are released when their commit ticket resolves: one more branch of the
//! same wait, so the connection keeps reading and delivering meanwhile; it
//! stops reading only when [`tributary_mqtt::channel::MAX_HELD_ACKS`] wait.
//!
//! [`drive`] is generic over the transport ([`ConnRead`] plus `AsyncWrite`):
//! the TLS and WebSocket listeners (`crate::stream_listeners`) run the same
//! driver over their streams. Plain TCP reads with `readable()` +
//! `try_read` into a stack buffer, so an idle connection holds no buffer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn, Instrument};
use tributary_core::session::Session;
use tributary_core::Broker;
use tributary_mqtt::channel::{Channel, ChannelConfig};
use tributary_mqtt::codec::{decode, encode};

use crate::listener_stats::ListenerStats;
use crate::transport::{ConnRead, READ_CHUNK};

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
    /// This listener's counters and its connection-rate bucket.
    pub stats: Arc<ListenerStats>,
}

impl ListenerContext {
    /// Admit a new connection: a free slot and room in the connection rate,
    /// else `None` (counted as refused).
    pub fn admit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if !self.stats.take_conn_token() {
            self.refuse();
            return None;
        }
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                self.refuse();
                None
            }
        }
    }

    fn refuse(&self) {
        let metrics = self.broker.metrics();
        metrics.inc(&metrics.connections_refused);
        self.stats.refused();
    }
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
        let Some(permit) = ctx.admit() else {
            debug!(listener = %name, %peer, "connection limit or rate reached; refusing");
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
    let (reader, writer) = stream.into_split();
    drive(reader, writer, peer, ctx, None).await;
}

impl ConnRead for tokio::net::tcp::OwnedReadHalf {
    async fn read_into(&mut self, rbuf: &mut BytesMut, cap: usize) -> bool {
        self.readable().await.is_ok() && read_available(self, rbuf, cap)
    }

    async fn linger(&mut self) {
        linger(self).await
    }
}

/// Serve one MQTT connection over any transport until it closes. `peer`
/// is the client's address (for WebSocket behind a proxy, the forwarded
/// one); `transport_username` is the user name the transport proved (TLS
/// client certificate CN), replacing the CONNECT's.
pub(crate) async fn drive<R: ConnRead, W: AsyncWrite + Unpin + Send>(
    mut reader: R,
    mut writer: W,
    peer: SocketAddr,
    ctx: ListenerContext,
    transport_username: Option<String>,
) {
    let metrics = ctx.broker.metrics();
    metrics.inc(&metrics.connections);
    metrics.inc(&metrics.connections_total);
    ctx.stats.opened();
    let mut channel = Channel::new(ctx.broker.clone(), ctx.channel.clone(), Some(peer), now());
    channel.set_transport_username(transport_username);
    let mut shutdown = ctx.shutdown.clone();
    // Both buffers hold no memory while the connection is idle: bytes are
    // read into a stack buffer and copied in only when they arrive.
    let mut rbuf = BytesMut::new();
    let mut wbuf = BytesMut::new();
    let mut signal = None;
    let mut peer_closed = false;
    // Backpressure: sessions this connection's publishes filled, and since when.
    let mut paused: Vec<Arc<Session>> = Vec::new();
    let mut paused_at = now();
    let mailbox_bound = ctx.broker.config().queue.max_len;
    // One timer for the connection's deadlines, re-armed lazily: keep-alive
    // deadlines only move later as packets arrive, so the timer is left at
    // the earlier instant and, when it fires early, the channel finds nothing
    // due and the timer is set again. That keeps timer-wheel work off the
    // per-packet path.
    let timer = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    loop {
        if channel.has_output()
            && flush(&mut channel, &mut wbuf, &mut writer, metrics)
                .await
                .is_err()
        {
            break;
        }
        if channel.is_closed() {
            break;
        }
        if let Some(decision) = channel.take_auth_future() {
            // An authentication backend is deciding (HTTP, say): nothing
            // more is decoded until it answers.
            let deadline = channel.next_deadline();
            tokio::select! {
                outcome = decision => channel.handle_auth_result(outcome, now()),
                _ = sleep_until(deadline) => channel.handle_timeout(now()),
                _ = shutdown.changed() => channel.shutdown(),
            }
            decode_all(&mut channel, &mut rbuf);
            continue;
        }
        if signal.is_none() {
            signal = channel.signal();
        }
        if channel.is_backpressured() {
            if paused.is_empty() {
                paused_at = now();
            }
            paused.extend(channel.take_backpressure());
        }
        if !paused.is_empty() {
            // Acknowledged QoS 1/2 messages are not dropped for an online
            // subscriber; instead this publisher stops reading until the
            // subscriber's mailbox has room (ADR 0009).
            let pause_end = paused_at + MAX_PAUSE;
            let deadline = channel
                .next_deadline()
                .map_or(pause_end, |d| d.min(pause_end));
            let held = channel.held_ticket();
            tokio::select! {
                _ = wait_for_room(&paused, mailbox_bound) => paused.clear(),
                _ = wait_commit(channel.commits().cloned(), held), if held.is_some() => {
                    channel.release_durable(now());
                }
                _ = async { match &signal { Some(s) => s.notified().await, None => std::future::pending().await } } => {
                    channel.handle_wake(now());
                }
                _ = sleep_until(Some(deadline)) => {
                    if now() >= pause_end {
                        debug!("subscriber mailbox still full; resuming reads");
                        paused.clear();
                    }
                    channel.handle_timeout(now());
                }
                _ = shutdown.changed() => channel.shutdown(),
            }
            if paused.is_empty() {
                decode_all(&mut channel, &mut rbuf);
            }
            continue;
        }
        match (channel.next_deadline(), armed) {
            (Some(due), Some(at)) if at <= due => {}
            (Some(due), _) => {
                timer.as_mut().reset(tokio::time::Instant::from_std(due));
                armed = Some(due);
            }
            (None, _) => armed = None,
        }
        let before = rbuf.len();
        let cap = (before + READ_BATCH).min(channel.max_packet_size().saturating_add(READ_CHUNK));
        let held = channel.held_ticket();
        let reading = channel.read_paused_until().is_none() && !channel.holds_too_many();
        tokio::select! {
            _ = wait_commit(channel.commits().cloned(), held), if held.is_some() => {
                channel.release_durable(now());
                if !rbuf.is_empty() && !channel.holds_too_many() {
                    // Reads stopped on too many held acknowledgements: what
                    // is buffered goes first.
                    decode_all(&mut channel, &mut rbuf);
                }
            }
            alive = reader.read_into(&mut rbuf, cap), if reading => {
                metrics.add(&metrics.bytes_received, (rbuf.len() - before) as u64);
                if !alive {
                    peer_closed = true;
                    // Whatever arrived before the close still counts.
                    decode_all(&mut channel, &mut rbuf);
                    break;
                }
                let batch = rbuf.len() - before;
                decode_all(&mut channel, &mut rbuf);
                if rbuf.is_empty() {
                    rbuf = BytesMut::new();
                }
                if batch >= READ_BATCH {
                    // More is probably waiting: let the tasks we just fed run.
                    tokio::task::yield_now().await;
                }
            },
            _ = async { match &signal { Some(s) => s.notified().await, None => std::future::pending().await } } => {
                channel.handle_wake(now());
            }
            _ = &mut timer, if armed.is_some() => {
                armed = None;
                channel.handle_timeout(now());
                if !rbuf.is_empty() && channel.read_paused_until().is_none() {
                    // A rate pause ended: packets already buffered go first.
                    decode_all(&mut channel, &mut rbuf);
                }
            }
            _ = shutdown.changed() => channel.shutdown(),
        }
    }
    if channel.has_output() {
        let _ = flush(&mut channel, &mut wbuf, &mut writer, metrics).await;
    }
    channel.finish(now());
    let _ = writer.shutdown().await;
    if !peer_closed {
        reader.linger().await;
    }
    metrics.dec(&metrics.connections);
    ctx.stats.closed();
}

/// Longest a write may wait for a client that does not read.
const WRITE_STALL: Duration = Duration::from_secs(30);

/// Most bytes read per turn of the loop: packets are decoded and routed in
/// batches of about this size, and the task yields between full batches so
/// a flat-out publisher cannot starve the subscribers it feeds.
const READ_BATCH: usize = 64 * 1024;

/// Longest a connection stops reading because its QoS 1/2 publishes filled
/// a subscriber's mailbox. Past it the overflow policy applies again (the
/// subscriber is probably stuck; its keep-alive will tell).
pub(crate) const MAX_PAUSE: Duration = Duration::from_secs(5);

/// Wait until every session has room in its mailbox (or went offline).
pub(crate) async fn wait_for_room(sessions: &[Arc<Session>], max_len: usize) {
    for session in sessions {
        loop {
            let room = session.room();
            tokio::pin!(room);
            room.as_mut().enable();
            if !session.is_congested(max_len) {
                break;
            }
            room.await;
        }
    }
}

/// Wait until the store's commit `ticket` resolves (forever without one).
async fn wait_commit(
    commits: Option<Arc<tributary_core::storage::Commits>>,
    ticket: Option<tributary_core::storage::CommitTicket>,
) {
    match (commits, ticket) {
        (Some(c), Some(t)) => {
            c.wait(t).await;
        }
        _ => std::future::pending().await,
    }
}

/// Sleep until `deadline`, or forever without one.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

use crate::transport::LINGER;

/// After our FIN, read and discard until the peer closes or [`LINGER`]
/// passes. Closing a socket with unread input makes the kernel send RST,
/// which can destroy a DISCONNECT or CONNACK still in flight.
async fn linger(reader: &mut tokio::net::tcp::OwnedReadHalf) {
    // On the heap, and only while lingering: a buffer here would otherwise
    // live in every connection's future for its whole life.
    let mut scratch = vec![0u8; 1024];
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
    // One clock read per batch: packets that arrived together are handled
    // at the same instant.
    let at = now();
    loop {
        match decode(rbuf, channel.version(), channel.max_packet_size()) {
            Ok(Some(packet)) => channel.handle_packet(packet, at),
            Ok(None) => break,
            Err(e) => {
                channel.handle_decode_error(&e, at);
                break;
            }
        }
        // A rate pause (limits.messages_rate / bytes_rate) also stops
        // decoding: the rest stays buffered until the pause ends.
        if channel.is_closed()
            || channel.awaiting_auth_result()
            || channel.is_backpressured()
            || channel.holds_too_many()
            || channel.read_paused_until().is_some()
        {
            break;
        }
    }
}

async fn flush<W: AsyncWrite + Unpin>(
    channel: &mut Channel,
    wbuf: &mut BytesMut,
    writer: &mut W,
    metrics: &tributary_core::metrics::Metrics,
) -> std::io::Result<()> {
    encode_output(channel, wbuf);
    metrics.add(&metrics.bytes_sent, wbuf.len() as u64);
    // TLS records and WebSocket frames leave on flush; for TCP it is free.
    // A client that stops reading must not hold this task forever.
    let write = async {
        writer.write_all(wbuf).await?;
        writer.flush().await
    };
    let result = match tokio::time::timeout(WRITE_STALL, write).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "client stopped reading",
        )),
    };
    wbuf.clear();
    result
}

/// Encode everything the channel queued into `wbuf`: one write per batch.
/// A plain function so no packet lives in the connection's future.
fn encode_output(channel: &mut Channel, wbuf: &mut BytesMut) {
    let version = channel.version();
    // By reference: a packet is a few hundred bytes, and moving each one out
    // of the vector costs more than encoding a small PUBLISH.
    for packet in &channel.take_output() {
        if let Err(e) = encode(packet, version, wbuf) {
            warn!(error = %e, "cannot encode packet; dropped");
        }
    }
}
