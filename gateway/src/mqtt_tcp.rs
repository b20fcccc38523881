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
//! [`drive`] is generic over the byte stream (`AsyncRead + AsyncWrite`,
//! unsplit): the TLS and WebSocket listeners (`crate::stream_listeners`)
//! run the same driver over their streams.
//!
//! An idle connection is what this module costs most of, so its task is
//! kept small (docs/benchmarks.md has the figures): set-up happens before
//! the task is spawned, the task's future holds one `Conn` and a timer,
//! the wait is a single `poll` over state the connection already has (the
//! socket, the session's [`ConnectionSignal`], the timer), reads go through
//! a stack buffer so no read buffer is kept, and every rarer wait
//! (authentication, backpressure, a full socket, a store commit, shutdown
//! before a session exists) lives on the heap only while it lasts.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::time::Sleep;
use tracing::{debug, info, warn, Instrument};
use tributary_core::session::{ConnectionSignal, Session};
use tributary_core::Broker;
use tributary_mqtt::channel::{Channel, ChannelConfig};
use tributary_mqtt::codec::{decode, encode};

use crate::listener_stats::ListenerStats;
use crate::transport::{poll_read_available, LINGER, READ_CHUNK};

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
        if ctx.nodelay {
            // Without it, small-message latency tails reach 40 ms (Nagle).
            let _ = stream.set_nodelay(true);
        }
        // The slot goes back when the connection's state is dropped (`Slot`).
        permit.forget();
        // The connection's future is spawned as it is, not wrapped in
        // another future (which would keep its own copy of what it moves
        // in). The span is a debug one, attached only when debug logging is
        // on: an idle connection carries no span otherwise, and info-level
        // events name their client.
        let conn = drive(stream, peer, ctx.clone(), None, Some(ctx.slots.clone()));
        let span = tracing::debug_span!("conn", proto = "mqtt", transport = "tcp", %peer);
        if span.is_disabled() {
            tokio::spawn(conn);
        } else {
            tokio::spawn(conn.instrument(span));
        }
    }
    info!(listener = %name, "listener stopped");
}

/// Serve one MQTT connection over any byte stream until it closes. `peer`
/// is the client's address (for WebSocket behind a proxy, the forwarded
/// one); `transport_username` is the user name the transport proved (TLS
/// client certificate CN), replacing the CONNECT's; `slots`, when given,
/// gets back the connection slot the caller took (and forgot) for it when
/// the connection ends.
///
/// Set-up happens here, outside the future, and the future keeps one
/// [`Conn`] and nothing else that lives as long: what an idle connection
/// costs is that struct, the timer, and the small wait below.
pub(crate) fn drive<S: AsyncRead + AsyncWrite + Unpin + Send>(
    stream: S,
    peer: SocketAddr,
    ctx: ListenerContext,
    transport_username: Option<String>,
    slots: Option<Arc<Semaphore>>,
) -> impl Future<Output = ()> + Send {
    let metrics = ctx.broker.metrics();
    metrics.inc(&metrics.connections);
    metrics.inc(&metrics.connections_total);
    ctx.stats.opened();
    let mut channel = Channel::new(ctx.broker.clone(), ctx.channel.clone(), Some(peer), now());
    channel.set_transport_username(transport_username);
    let mut conn = Conn {
        stream,
        channel,
        stats: ctx.stats,
        shutdown_wait: Some(Box::pin(async move {
            let mut shutdown = ctx.shutdown;
            let _ = shutdown.changed().await;
        })),
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        signal: None,
        paused: None,
        armed: false,
        peer_closed: false,
        _slot: Slot(slots),
    };
    async move {
        // One timer for the connection's deadlines, re-armed lazily:
        // keep-alive deadlines only move later as packets arrive, so the
        // timer is left at the earlier instant and, when it fires early, the
        // channel finds nothing due and the timer is set again. That keeps
        // timer-wheel work off the per-packet path.
        let timer = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(timer);
        while conn.step(timer.as_mut()).await {}
        conn.close().await;
    }
}

/// Everything one MQTT connection keeps between packets.
struct Conn<S> {
    stream: S,
    channel: Channel,
    stats: Arc<ListenerStats>,
    /// The wait for the listener's shutdown, on the heap, until there is a
    /// session: connections with one are told through their signal (the
    /// broker kicks them all).
    shutdown_wait: Option<BoxedWait>,
    /// Input not yet decoded; holds no memory while empty.
    rbuf: BytesMut,
    /// Output being written.
    wbuf: BytesMut,
    /// The session's wake-up signal, once there is a session.
    signal: Option<Arc<ConnectionSignal>>,
    /// Backpressure: sessions this connection's publishes filled, and since when.
    paused: Option<Box<Paused>>,
    /// Whether the timer is set (to its deadline).
    armed: bool,
    peer_closed: bool,
    _slot: Slot,
}

/// A connection slot taken from the listener's semaphore (its permit
/// forgotten), given back when the connection's state is dropped, however
/// the task ends. One pointer, where a permit would be two words.
struct Slot(Option<Arc<Semaphore>>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(slots) = self.0.take() {
            slots.add_permits(1);
        }
    }
}

/// A connection that stopped reading because its QoS 1/2 publishes filled
/// subscribers' mailboxes (ADR 0009).
struct Paused {
    sessions: Vec<Arc<Session>>,
    since: Instant,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Conn<S> {
    /// One turn: write what is queued, then wait for the next thing to do.
    /// False once the connection is over.
    async fn step(&mut self, mut timer: Pin<&mut Sleep>) -> bool {
        if self.channel.has_output() && self.flush().await.is_err() {
            return false;
        }
        if self.channel.is_closed() {
            return false;
        }
        if let Some(decision) = self.channel.take_auth_future() {
            // An authentication backend is deciding (HTTP, say): nothing
            // more is decoded until it answers. Rare, so on the heap.
            Box::pin(self.await_auth(decision)).await;
            return true;
        }
        if self.signal.is_none() {
            self.signal = self.channel.signal();
            if self.signal.is_some() {
                // Did shutdown come before the session (and so miss the
                // broker's kick)? One look, then the wait goes.
                let mut look = Context::from_waker(std::task::Waker::noop());
                let shut = poll_boxed(&mut self.shutdown_wait, &mut look).is_ready();
                self.shutdown_wait = None;
                if shut {
                    self.channel.shutdown();
                    return true;
                }
            }
        }
        if self.channel.is_backpressured() {
            let paused = self.paused.get_or_insert_with(|| {
                Box::new(Paused {
                    sessions: Vec::new(),
                    since: now(),
                })
            });
            paused.sessions.extend(self.channel.take_backpressure());
        }
        if self.paused.is_some() {
            Box::pin(self.await_room()).await;
            return true;
        }
        match self.channel.next_deadline() {
            Some(due) if self.armed && timer.deadline().into_std() <= due => {}
            Some(due) => {
                timer.as_mut().reset(tokio::time::Instant::from_std(due));
                self.armed = true;
            }
            None => self.armed = false,
        }
        let before = self.rbuf.len();
        let mut commit = self.commit_wait();
        let woke = poll_fn(|cx| self.poll_wake(timer.as_mut(), &mut commit, before, cx)).await;
        drop(commit);
        match self.handle(woke, before) {
            Next::Go => true,
            Next::Yield => {
                // More is probably waiting: let the tasks we just fed run.
                tokio::task::yield_now().await;
                true
            }
            Next::Stop => false,
        }
    }

    /// One poll over what the connection waits for, all state it already
    /// has: the wait adds a few words to the future. The cheap sources go
    /// first; each turn handles one, so none starves another.
    fn poll_wake(
        &mut self,
        mut timer: Pin<&mut Sleep>,
        commit: &mut Option<BoxedWait>,
        before: usize,
        cx: &mut Context<'_>,
    ) -> Poll<Woke> {
        if poll_boxed(commit, cx).is_ready() {
            return Poll::Ready(Woke::Commit);
        }
        if let Some(s) = self.signal.as_deref() {
            if s.poll_notified(cx).is_ready() {
                return Poll::Ready(Woke::Signal);
            }
        }
        if self.armed && timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Woke::Timer);
        }
        if self.channel.read_paused_until().is_none() && !self.channel.holds_too_many() {
            let cap = (before + READ_BATCH)
                .min(self.channel.max_packet_size().saturating_add(READ_CHUNK));
            if let Poll::Ready(alive) =
                poll_read_available(&mut self.stream, cx, &mut self.rbuf, cap)
            {
                return Poll::Ready(Woke::Read(alive));
            }
        }
        // Only without a session: with one, shutdown comes as a kick.
        if poll_boxed(&mut self.shutdown_wait, cx).is_ready() {
            return Poll::Ready(Woke::Shutdown);
        }
        Poll::Pending
    }

    /// Act on what ended the wait.
    fn handle(&mut self, woke: Woke, before: usize) -> Next {
        let (channel, rbuf) = (&mut self.channel, &mut self.rbuf);
        match woke {
            Woke::Commit => {
                channel.release_durable(now());
                if !rbuf.is_empty() && !channel.holds_too_many() {
                    // Reads stopped on too many held acknowledgements: what
                    // is buffered goes first.
                    decode_all(channel, rbuf);
                }
            }
            Woke::Read(alive) => {
                let metrics = channel.metrics();
                metrics.add(&metrics.bytes_received, (rbuf.len() - before) as u64);
                if !alive {
                    self.peer_closed = true;
                    // Whatever arrived before the close still counts.
                    decode_all(channel, rbuf);
                    return Next::Stop;
                }
                let batch = rbuf.len() - before;
                decode_all(channel, rbuf);
                if rbuf.is_empty() {
                    *rbuf = BytesMut::new();
                }
                if batch >= READ_BATCH {
                    return Next::Yield;
                }
            }
            Woke::Signal => channel.handle_wake(now()),
            Woke::Timer => {
                self.armed = false;
                channel.handle_timeout(now());
                if !rbuf.is_empty() && channel.read_paused_until().is_none() {
                    // A rate pause ended: packets already buffered go first.
                    decode_all(channel, rbuf);
                }
            }
            Woke::Shutdown => channel.shutdown(),
        }
        Next::Go
    }

    /// The store commit the oldest held acknowledgement waits for, as a
    /// future on the heap (only while one is held); none otherwise.
    fn commit_wait(&self) -> Option<BoxedWait> {
        match (self.channel.commits().cloned(), self.channel.held_ticket()) {
            (Some(commits), Some(ticket)) => Some(Box::pin(async move {
                commits.wait(ticket).await;
            })),
            _ => None,
        }
    }

    /// Wait for the authentication backend's answer (or the connect
    /// deadline, or shutdown), then go on decoding.
    async fn await_auth(&mut self, decision: tributary_core::auth::AuthFuture) {
        let deadline = self.channel.next_deadline();
        tokio::select! {
            outcome = decision => self.channel.handle_auth_result(outcome, now()),
            _ = sleep_until(deadline) => self.channel.handle_timeout(now()),
            () = poll_fn(|cx| poll_boxed(&mut self.shutdown_wait, cx)) => self.channel.shutdown(),
        }
        decode_all(&mut self.channel, &mut self.rbuf);
    }

    /// Acknowledged QoS 1/2 messages are not dropped for an online
    /// subscriber; instead this publisher stops reading until the
    /// subscriber's mailbox has room (ADR 0009), at most [`MAX_PAUSE`].
    async fn await_room(&mut self) {
        let Some(paused) = self.paused.as_ref() else {
            return;
        };
        let mailbox_bound = self.channel.broker().config().queue.max_len;
        let pause_end = paused.since + MAX_PAUSE;
        let deadline = self
            .channel
            .next_deadline()
            .map_or(pause_end, |d| d.min(pause_end));
        let mut commit = self.commit_wait();
        let signal = self.signal.as_deref();
        let mut resume = false;
        tokio::select! {
            _ = wait_for_room(&paused.sessions, mailbox_bound) => resume = true,
            () = poll_fn(|cx| poll_boxed(&mut commit, cx)) => self.channel.release_durable(now()),
            () = poll_fn(|cx| poll_signal(signal, cx)) => self.channel.handle_wake(now()),
            _ = sleep_until(Some(deadline)) => {
                if now() >= pause_end {
                    debug!("subscriber mailbox still full; resuming reads");
                    resume = true;
                }
                self.channel.handle_timeout(now());
            }
        }
        if resume {
            self.paused = None;
            decode_all(&mut self.channel, &mut self.rbuf);
        }
    }

    /// Encode what the channel queued and write it: one write per batch.
    /// A socket that takes it at once costs no future; one that is full
    /// gets a heap-allocated wait bounded by [`WRITE_STALL`].
    async fn flush(&mut self) -> std::io::Result<()> {
        encode_output(&mut self.channel, &mut self.wbuf);
        let metrics = self.channel.metrics();
        metrics.add(&metrics.bytes_sent, self.wbuf.len() as u64);
        let (stream, wbuf) = (&mut self.stream, &mut self.wbuf);
        let first = poll_fn(|cx| Poll::Ready(poll_write_all(stream, cx, wbuf))).await;
        let result = match first {
            Poll::Ready(r) => r,
            Poll::Pending => {
                // A client that stops reading must not hold this task forever.
                let rest = poll_fn(|cx| poll_write_all(stream, cx, wbuf));
                match Box::pin(tokio::time::timeout(WRITE_STALL, rest)).await {
                    Ok(r) => r,
                    Err(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "client stopped reading",
                    )),
                }
            }
        };
        self.wbuf.clear();
        result
    }

    /// After the loop: last output, the session's end, then a graceful close.
    async fn close(&mut self) {
        if self.channel.has_output() {
            let _ = self.flush().await;
        }
        self.channel.finish(now());
        let _ = self.stream.shutdown().await;
        if !self.peer_closed {
            Box::pin(linger(&mut self.stream)).await;
        }
        let metrics = self.channel.metrics();
        metrics.dec(&metrics.connections);
        self.stats.closed();
    }
}

/// A wait kept on the heap because it is rare or short-lived, so the
/// connection's future does not carry its size.
type BoxedWait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Ready once the boxed wait is done (which then goes away); never
/// without one.
fn poll_boxed(wait: &mut Option<BoxedWait>, cx: &mut Context<'_>) -> Poll<()> {
    let Some(w) = wait else {
        return Poll::Pending;
    };
    let done = w.as_mut().poll(cx);
    if done.is_ready() {
        *wait = None;
    }
    done
}

/// What a connection does after handling a wake.
enum Next {
    Go,
    /// Go on after letting other tasks run.
    Yield,
    Stop,
}

/// What ended a connection's wait.
enum Woke {
    Commit,
    Read(bool),
    Signal,
    Timer,
    Shutdown,
}

/// Ready once the session's signal fired; never without a session.
fn poll_signal(signal: Option<&ConnectionSignal>, cx: &mut Context<'_>) -> Poll<()> {
    match signal {
        Some(s) => s.poll_notified(cx),
        None => Poll::Pending,
    }
}

/// Write all of `wbuf` (consuming it), then flush: TLS records and
/// WebSocket frames leave on flush; for TCP it is free.
fn poll_write_all<S: AsyncWrite + Unpin>(
    stream: &mut S,
    cx: &mut Context<'_>,
    wbuf: &mut BytesMut,
) -> Poll<std::io::Result<()>> {
    while !wbuf.is_empty() {
        match Pin::new(&mut *stream).poll_write(cx, wbuf) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => wbuf.advance(n),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    }
    Pin::new(stream).poll_flush(cx)
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

/// Sleep until `deadline`, or forever without one.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

/// After our FIN, read and discard until the peer closes or [`LINGER`]
/// passes. Closing a socket with unread input makes the kernel send RST,
/// which can destroy a DISCONNECT or CONNACK still in flight.
async fn linger<S: AsyncRead + Unpin>(stream: &mut S) {
    // On the heap, and only while lingering: a buffer here would otherwise
    // live in every connection's future for its whole life.
    let mut scratch = vec![0u8; 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = stream.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_core::BrokerConfig;

    /// What an idle connection costs is mostly its task, which tokio
    /// allocates in 128-byte steps around this future (ADR 0017): 640 bytes
    /// with rustc 1.95, a 768-byte task. The bound leaves room for other
    /// compilers' layouts but not for a `select!` or a wrapper future in the
    /// steady state (those took it to 960 and 1,936).
    #[tokio::test]
    async fn the_connection_future_stays_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (_, peer) = listener.accept().await.expect("accept");
        let (_tx, shutdown) = watch::channel(false);
        let ctx = ListenerContext {
            broker: Arc::new(Broker::new(BrokerConfig::default())),
            channel: Arc::new(ChannelConfig::default()),
            shutdown,
            slots: Arc::new(Semaphore::new(1)),
            nodelay: true,
            stats: Arc::new(ListenerStats::new(
                "tcp",
                "test",
                addr,
                "plain TCP".to_owned(),
                0,
            )),
        };
        let conn = drive(client, peer, ctx, None, None);
        let size = std::mem::size_of_val(&conn);
        assert!(size <= 768, "connection future grew to {size} bytes");
    }
}
