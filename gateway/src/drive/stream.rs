//! The stream driver: one task per connection over a [`Transport`], for
//! every protocol channel that implements the core's
//! [`StreamConnection`] (MQTT, STOMP).
//!
//! The driver is the only code that touches the transport and the clock.
//! It reads bytes into a buffer the channel decodes from, writes what the
//! channel encodes, and waits on: the transport, the session's wake-up
//! signal, one timer (the channel's deadline and the [`Watchdog`]'s:
//! pre-authentication time, idle window), a store commit the channel holds
//! acknowledgements for, and shutdown. The same rules hold for every
//! protocol:
//! - the pre-authentication budget and the idle window trip through the
//!   [`Watchdog`], a write that waits longer than the write-stall limit
//!   trips [`Limit::WriteStall`]; each is counted and the channel says
//!   goodbye in its protocol;
//! - an authentication backend's answer is awaited without reading;
//! - a publisher whose messages filled a subscriber's mailbox stops
//!   reading until it has room, for at most the broker's `max_pause`
//!   (ADR 0009); reads held by the driver never count as the peer's
//!   silence;
//! - acknowledgements held for the store are released when their commit
//!   resolves, one more branch of the same wait.
//!
//! An idle connection is what this module costs most of, so its task is
//! kept small (ADR 0017, docs/benchmarks.md): set-up happens before the
//! task is spawned, the task's future holds one `Conn` and a timer, the
//! wait is a single `poll` over state the connection already has, reads go
//! through a stack buffer, and every rarer wait (authentication, a full
//! subscriber, a full socket, a store commit, shutdown before a session
//! exists) lives on the heap only while it lasts.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::BytesMut;
use tokio::time::Sleep;
use tracing::debug;
use tributary_core::connection::{Limit, ReadHold, StreamConnection, Transmit, Watchdog};
use tributary_core::session::{ConnectionSignal, Session};

use super::{now, sleep_until, wait_for_room, DriveContext};
use crate::listen::ConnectionGuard;
use crate::transport::{Transport, READ_CHUNK};

/// Most bytes read per turn of the loop: units are decoded and routed in
/// batches of about this size, and the task yields between full batches so
/// a flat-out publisher cannot starve the subscribers it feeds.
const READ_BATCH: usize = 64 * 1024;

/// Serve one connection until it closes. Set-up happens here, outside the
/// future, and the future keeps one [`Conn`] and nothing else that lives
/// as long.
pub fn drive<C, T>(
    conn: C,
    transport: T,
    ctx: &Arc<DriveContext>,
    guard: ConnectionGuard,
) -> impl Future<Output = ()> + Send
where
    C: StreamConnection + 'static,
    T: Transport + 'static,
{
    let mut shutdown = ctx.shutdown.clone();
    let mut conn = Conn {
        transport,
        conn,
        ctx: ctx.clone(),
        watchdog: Watchdog::new(now()),
        shutdown_wait: Some(Box::pin(async move {
            let _ = shutdown.changed().await;
        })),
        rbuf: BytesMut::new(),
        out: if T::BYTE_RUN {
            Transmit::byte_run()
        } else {
            Transmit::default()
        },
        signal: None,
        paused: None,
        armed: false,
        own_output: false,
        peer_closed: false,
        stalled: false,
        _guard: guard,
    };
    async move {
        // One timer for the connection's deadlines, re-armed lazily:
        // keep-alive deadlines only move later as input arrives, so the
        // timer is left at the earlier instant and, when it fires early,
        // nothing is due and the timer is set again. That keeps
        // timer-wheel work off the per-packet path.
        let timer = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(timer);
        while conn.step(timer.as_mut()).await {}
        conn.close().await;
    }
}

/// Everything one connection keeps between events.
struct Conn<C, T> {
    transport: T,
    conn: C,
    ctx: Arc<DriveContext>,
    watchdog: Watchdog,
    /// The wait for shutdown, on the heap, until there is a session:
    /// connections with one are told through their signal (the broker
    /// kicks them all).
    shutdown_wait: Option<BoxedWait>,
    /// Input not yet decoded; holds no memory while empty.
    rbuf: BytesMut,
    /// Output being written.
    out: Transmit,
    /// The session's wake-up signal, once there is a session.
    signal: Option<Arc<ConnectionSignal>>,
    /// Sessions this connection's messages filled, and since when.
    paused: Option<Box<Paused>>,
    /// Whether the timer is set (to its deadline).
    armed: bool,
    /// The transport has output of its own (a heart-beat frame).
    own_output: bool,
    peer_closed: bool,
    /// A write stalled: nothing more is written.
    stalled: bool,
    _guard: ConnectionGuard,
}

/// A connection that stopped reading because its messages filled
/// subscribers' mailboxes (ADR 0009).
struct Paused {
    sessions: Vec<Arc<Session>>,
    since: Instant,
}

/// A wait kept on the heap because it is rare or short-lived, so the
/// connection's future does not carry its size.
type BoxedWait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What ended a connection's wait.
enum Woke {
    Commit,
    Read(bool),
    Signal,
    Timer,
    OwnOutput,
    Shutdown,
}

/// What a connection does after handling a wake.
enum Next {
    Go,
    /// Go on after letting other tasks run.
    Yield,
    Stop,
}

impl<C: StreamConnection, T: Transport> Conn<C, T> {
    /// One turn: write what is queued, then wait for the next thing to do.
    /// False once the connection is over.
    async fn step(&mut self, mut timer: Pin<&mut Sleep>) -> bool {
        if self.conn.has_output() || self.own_output {
            // The first attempt costs the future nothing; only a full
            // transport gets a wait, on the heap.
            let first = poll_fn(|cx| Poll::Ready(self.try_flush(cx))).await;
            let result = match first {
                Poll::Ready(r) => r,
                Poll::Pending => Box::pin(self.finish_flush()).await,
            };
            if result.is_err() {
                return false;
            }
        }
        if self.conn.is_closed() {
            return false;
        }
        if let Some(decision) = self.conn.take_auth() {
            // An authentication backend is deciding (HTTP, say): nothing
            // more is decoded until it answers. Rare, so on the heap.
            Box::pin(self.await_auth(decision)).await;
            return true;
        }
        if self.signal.is_none() {
            self.signal = self.conn.signal();
            if self.signal.is_some() {
                // Did shutdown come before the session (and so miss the
                // broker's kick)? One look, then the wait goes.
                let mut look = Context::from_waker(std::task::Waker::noop());
                let shut = poll_boxed(&mut self.shutdown_wait, &mut look).is_ready();
                self.shutdown_wait = None;
                if shut {
                    self.conn.shutdown(now());
                    return true;
                }
            }
        }
        let congested = self.conn.take_congestion();
        if !congested.is_empty() {
            let paused = self.paused.get_or_insert_with(|| {
                Box::new(Paused {
                    sessions: Vec::new(),
                    since: now(),
                })
            });
            paused.sessions.extend(congested);
        }
        if self.paused.is_some() {
            Box::pin(self.await_room()).await;
            return true;
        }
        let due = min_deadline(
            self.conn.next_deadline(),
            self.watchdog.deadline(&self.conn),
        );
        match due {
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
    /// has. The cheap sources go first; each turn handles one, so none
    /// starves another.
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
        if self.transport.poll_own_output(cx).is_ready() {
            return Poll::Ready(Woke::OwnOutput);
        }
        if self.conn.read_hold() == ReadHold::Open {
            let cap = (before + READ_BATCH).min(self.conn.max_unit().saturating_add(READ_CHUNK));
            if before < cap {
                if let Poll::Ready(alive) = self.transport.poll_read(cx, &mut self.rbuf, cap) {
                    return Poll::Ready(Woke::Read(alive));
                }
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
        let at = now();
        match woke {
            Woke::Commit => {
                self.conn.handle_commit(at);
                self.feed(at);
            }
            Woke::Read(alive) => {
                let batch = self.rbuf.len() - before;
                let metrics = self.ctx.broker.metrics();
                metrics.add(&metrics.bytes_received, batch as u64);
                // Whatever arrived before a close still counts.
                let activity = self.conn.handle_input(&mut self.rbuf, at);
                self.watchdog.input(batch, activity, at);
                self.watchdog.check(&mut self.conn, metrics, at);
                if !alive {
                    self.peer_closed = true;
                    return Next::Stop;
                }
                if self.rbuf.is_empty() {
                    self.rbuf = BytesMut::new();
                }
                if batch >= READ_BATCH {
                    return Next::Yield;
                }
            }
            Woke::Signal => self.conn.handle_wake(at),
            Woke::Timer => {
                self.armed = false;
                // While we do not read (a rate throttle, held
                // acknowledgements), the peer's keep-alives wait unread:
                // its silence is ours.
                let held = self.conn.read_hold() != ReadHold::Open;
                self.conn.handle_timeout(at);
                if held {
                    self.watchdog.input(0, true, at);
                }
                self.watchdog
                    .check(&mut self.conn, self.ctx.broker.metrics(), at);
                self.feed(at);
            }
            Woke::OwnOutput => self.own_output = true,
            Woke::Shutdown => self.conn.shutdown(at),
        }
        Next::Go
    }

    /// Decode what is buffered, once reads may go on (a hold ended).
    fn feed(&mut self, at: Instant) {
        if !self.rbuf.is_empty() && self.conn.read_hold() == ReadHold::Open {
            let activity = self.conn.handle_input(&mut self.rbuf, at);
            self.watchdog.input(0, activity, at);
        }
    }

    /// The store commit the oldest held acknowledgement waits for, as a
    /// future on the heap (only while one is held); none otherwise.
    fn commit_wait(&self) -> Option<BoxedWait> {
        let wait = self.conn.commit_wait()?;
        Some(Box::pin(async move {
            wait.commits.wait(wait.ticket).await;
        }))
    }

    /// Wait for the authentication backend's answer (or a deadline, or
    /// shutdown), then go on decoding.
    async fn await_auth(&mut self, decision: tributary_core::auth::AuthFuture) {
        let deadline = min_deadline(
            self.conn.next_deadline(),
            self.watchdog.deadline(&self.conn),
        );
        tokio::select! {
            outcome = decision => self.conn.handle_auth(outcome, now()),
            _ = sleep_until(deadline) => self.on_timer(),
            () = poll_fn(|cx| poll_boxed(&mut self.shutdown_wait, cx)) => self.conn.shutdown(now()),
        }
        self.feed(now());
    }

    /// Acknowledged QoS 1/2 messages are not dropped for an online
    /// subscriber; instead this publisher stops reading until the
    /// subscriber's mailbox has room (ADR 0009), at most `max_pause`.
    async fn await_room(&mut self) {
        let Some(paused) = self.paused.as_ref() else {
            return;
        };
        let pause_end = paused.since + self.ctx.broker.config().queue.max_pause;
        let deadline = min_deadline(self.conn.next_deadline(), Some(pause_end));
        let mut commit = self.commit_wait();
        let signal = self.signal.clone();
        let broker = self.ctx.broker.clone();
        let mut resume = false;
        tokio::select! {
            _ = wait_for_room(&broker, &paused.sessions) => resume = true,
            () = poll_fn(|cx| poll_boxed(&mut commit, cx)) => self.conn.handle_commit(now()),
            () = poll_fn(|cx| poll_signal(signal.as_deref(), cx)) => self.conn.handle_wake(now()),
            _ = sleep_until(deadline) => {
                if now() >= pause_end {
                    debug!(
                        client_id = self.conn.client_id().unwrap_or(""),
                        "subscriber mailbox still full; resuming reads"
                    );
                    resume = true;
                }
                self.on_timer();
            }
        }
        if resume || self.conn.is_closed() {
            self.paused = None;
            self.feed(now());
        }
    }

    /// A deadline passed while the driver held reads: the channel's timers,
    /// then the limits (the peer's silence is ours, not its).
    fn on_timer(&mut self) {
        let at = now();
        self.conn.handle_timeout(at);
        self.watchdog.input(0, true, at);
        self.watchdog
            .check(&mut self.conn, self.ctx.broker.metrics(), at);
    }

    /// Encode what the channel queued and write it: one write per batch.
    /// A transport that takes it at once is done here; one that is full
    /// leaves the rest to [`Conn::finish_flush`].
    fn try_flush(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.own_output = false;
        if self.stalled {
            self.out.clear();
            return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
        }
        self.conn.poll_transmit(now(), &mut self.out);
        let metrics = self.ctx.broker.metrics();
        metrics.add(&metrics.bytes_sent, self.out.len() as u64);
        let result = std::task::ready!(self.transport.poll_write(cx, &mut self.out));
        if result.is_err() {
            self.out.clear();
        }
        Poll::Ready(result)
    }

    /// Wait for a full transport to take the rest, bounded by the
    /// write-stall limit.
    async fn finish_flush(&mut self) -> std::io::Result<()> {
        let (transport, out) = (&mut self.transport, &mut self.out);
        let rest = poll_fn(|cx| transport.poll_write(cx, out));
        let result = match tokio::time::timeout(self.ctx.write_stall, rest).await {
            Ok(r) => r,
            Err(_) => {
                // A peer that stopped reading must not hold this task (or
                // its session's memory) forever.
                self.stalled = true;
                let metrics = self.ctx.broker.metrics();
                self.watchdog
                    .trip(&mut self.conn, Limit::WriteStall, metrics, now());
                Err(std::io::ErrorKind::TimedOut.into())
            }
        };
        if result.is_err() {
            self.out.clear();
        }
        result
    }

    /// Flush, first attempt then the wait.
    async fn flush(&mut self) -> std::io::Result<()> {
        match poll_fn(|cx| Poll::Ready(self.try_flush(cx))).await {
            Poll::Ready(r) => r,
            Poll::Pending => self.finish_flush().await,
        }
    }

    /// After the loop: last output, the session's end, then a graceful close.
    async fn close(&mut self) {
        if self.conn.has_output() && !self.stalled {
            let _ = Box::pin(self.flush()).await;
        }
        self.conn.finish(now());
        if self.stalled {
            return;
        }
        self.transport.close().await;
        if !self.peer_closed {
            Box::pin(self.transport.linger()).await;
        }
    }
}

/// The earlier of two optional deadlines.
fn min_deadline(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

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

/// Ready once the session's signal fired; never without a session.
fn poll_signal(signal: Option<&ConnectionSignal>, cx: &mut Context<'_>) -> Poll<()> {
    match signal {
        Some(s) => s.poll_notified(cx),
        None => Poll::Pending,
    }
}
