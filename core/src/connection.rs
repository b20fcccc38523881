//! The connection contract: the one shape every protocol channel has, so
//! the gateway needs one stream driver and one datagram driver (ADR 0018).
//!
//! A channel is a sans-IO state machine. Its driver feeds it input (bytes
//! or datagrams), ticks, the answer of an authentication backend, store
//! commits and deliveries (the session's wake-up), and asks it for what to
//! transmit, its next protocol deadline, and whether reads must wait. The
//! limits that are the same whatever the protocol — the pre-authentication
//! budget, the idle (keep-alive) timeout, the write-stall limit, the pause
//! for a full subscriber — are enforced by the driver from what the
//! channel reports here; when one trips, the driver tells the channel
//! ([`Connection::handle_limit`]) so it can say goodbye in its protocol.
//!
//! ```text
//!   driver ── bytes / datagram ─▶ ┌─────────┐ ── transmit (units) ─▶ driver
//!          ── tick, wake ───────▶ │ channel │ ── next_deadline ────▶
//!          ── auth, commit ─────▶ │ sans-IO │ ── read_hold, idle ──▶
//!          ── limit tripped ────▶ └─────────┘ ── congestion, commit wait
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::auth::{AuthFuture, AuthOutcome};
use crate::metrics::Metrics;
use crate::session::{ConnectionSignal, Session};
use crate::storage::{CommitTicket, Commits};

/// Whether the driver may read more input now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadHold {
    /// Read.
    Open,
    /// Do not read before this instant (a rate throttle); the channel's
    /// deadline covers it.
    Until(Instant),
    /// Do not read until something else happens (an authentication
    /// answer, held acknowledgements released).
    Held,
}

/// A limit the driver enforces for every protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// No successful authentication within the pre-authentication time.
    PreAuthTimeout,
    /// More bytes than the pre-authentication budget before authenticating.
    PreAuthBytes,
    /// Nothing from the peer for its idle (keep-alive) window.
    IdleTimeout,
    /// The peer stopped reading what we write: nothing more can be sent.
    WriteStall,
}

impl Limit {
    /// The limit's name in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Limit::PreAuthTimeout => "preauth_timeout",
            Limit::PreAuthBytes => "preauth_bytes",
            Limit::IdleTimeout => "idle_timeout",
            Limit::WriteStall => "write_stall",
        }
    }
}

/// What the pre-authentication phase may cost before it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreAuthBudget {
    /// From the connection's start (trickled bytes do not extend it).
    pub time: Duration,
    /// Bytes received before the connection authenticated.
    pub bytes: usize,
}

/// A store commit a connection waits for.
#[derive(Debug, Clone)]
pub struct CommitWait {
    /// The store's commit progress.
    pub commits: Arc<Commits>,
    /// The ticket.
    pub ticket: CommitTicket,
}

/// Output of a channel: encoded units (packets, frames, datagrams) one
/// after the other in one buffer, with where each ends, so a byte stream
/// writes them at once and a message transport sends one message each.
///
/// A byte stream needs no unit ends: [`Transmit::byte_run`] keeps none, so
/// an idle connection holds no memory for them.
#[derive(Debug)]
pub struct Transmit {
    buf: BytesMut,
    /// Where each unit ends; `None` for a byte run.
    ends: Option<Vec<usize>>,
}

impl Default for Transmit {
    /// Output whose units are told apart.
    fn default() -> Transmit {
        Transmit {
            buf: BytesMut::new(),
            ends: Some(Vec::new()),
        }
    }
}

impl Transmit {
    /// Output for a byte stream: units are not told apart.
    pub fn byte_run() -> Transmit {
        Transmit {
            buf: BytesMut::new(),
            ends: None,
        }
    }

    /// The buffer to encode the next unit into (append).
    pub fn buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// The unit encoded since the last call ends here.
    pub fn end_unit(&mut self) {
        let len = self.buf.len();
        if let Some(ends) = self.ends.as_mut() {
            if ends.last() != Some(&len) {
                ends.push(len);
            }
        }
    }

    /// Append a whole unit.
    pub fn push_unit(&mut self, unit: &[u8]) {
        self.buf.extend_from_slice(unit);
        self.end_unit();
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Everything waiting, as one run of bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Take everything waiting as one run of bytes.
    pub fn take_all(&mut self) -> BytesMut {
        if let Some(ends) = self.ends.as_mut() {
            ends.clear();
        }
        self.buf.split()
    }

    /// Take the waiting units one by one.
    pub fn take_units(&mut self) -> Vec<Bytes> {
        let mut all = self.buf.split();
        let mut out = Vec::with_capacity(self.ends.as_ref().map_or(0, Vec::len) + 1);
        if let Some(ends) = self.ends.as_mut() {
            let mut at = 0;
            for end in ends.drain(..) {
                out.push(all.split_to(end - at).freeze());
                at = end;
            }
        }
        if !all.is_empty() {
            out.push(all.freeze());
        }
        out
    }

    /// The first `n` bytes were written (a byte stream took part of the
    /// run): forget them, and the unit ends they pass.
    pub fn advance(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        // Moving the start keeps the buffer unshared (a split would give it
        // a reference count on the heap for as long as it lives).
        bytes::Buf::advance(&mut self.buf, n);
        let Some(ends) = self.ends.as_mut() else {
            return;
        };
        if self.buf.is_empty() {
            ends.clear();
        } else {
            ends.retain_mut(|end| {
                *end = end.saturating_sub(n);
                *end > 0
            });
        }
    }

    /// Take the first waiting unit (a message transport sends one at a time).
    pub fn pop_unit(&mut self) -> Option<Bytes> {
        if self.buf.is_empty() {
            return None;
        }
        let end = match self.ends.as_mut() {
            Some(ends) if !ends.is_empty() => {
                let end = ends.remove(0);
                for e in ends.iter_mut() {
                    *e -= end;
                }
                end
            }
            _ => self.buf.len(),
        };
        Some(self.buf.split_to(end).freeze())
    }

    /// Drop what is waiting and give the memory back.
    pub fn clear(&mut self) {
        self.buf = BytesMut::new();
        if let Some(ends) = self.ends.as_mut() {
            *ends = Vec::new();
        }
    }
}

/// What every protocol channel answers to its driver.
pub trait Connection: Send {
    /// The protocol, as in `ClientInfo::protocol`.
    fn protocol(&self) -> &'static str;

    /// The client id, once known (for logs).
    fn client_id(&self) -> Option<&str>;

    /// Protocol timers (retransmission, heart-beats to send, expiry of
    /// remembered state) are due.
    fn handle_timeout(&mut self, now: Instant);

    /// The session's signal fired: deliveries to send, or a kick.
    fn handle_wake(&mut self, now: Instant);

    /// A store commit this connection waited for is done
    /// ([`Connection::commit_wait`]).
    fn handle_commit(&mut self, now: Instant);

    /// The answer of the authentication backend
    /// ([`Connection::take_auth`]).
    fn handle_auth(&mut self, outcome: AuthOutcome, now: Instant);

    /// The driver enforced `limit`: say goodbye as the protocol does (if
    /// anything can still be sent) and close.
    fn handle_limit(&mut self, limit: Limit, now: Instant);

    /// The server shuts down: say so and close.
    fn shutdown(&mut self, now: Instant);

    /// The connection is over (after the last output was written): end
    /// the session's connection in the core. Idempotent.
    fn finish(&mut self, now: Instant);

    /// True once the connection must close (after writing its output).
    fn is_closed(&self) -> bool;

    /// True when output is waiting.
    fn has_output(&self) -> bool;

    /// When [`Connection::handle_timeout`] is next needed.
    fn next_deadline(&self) -> Option<Instant>;

    /// Whether the driver may read now.
    fn read_hold(&self) -> ReadHold;

    /// An authentication decision the driver must await.
    fn take_auth(&mut self) -> Option<AuthFuture>;

    /// Sessions this connection's messages filled: the driver stops reading
    /// until each has room, for at most the broker's `max_pause`.
    fn take_congestion(&mut self) -> Vec<Arc<Session>>;

    /// The oldest store commit the connection waits for (held
    /// acknowledgements, a spilled queue to read back).
    fn commit_wait(&self) -> Option<CommitWait>;

    /// The session's wake-up signal, once there is a session (it may
    /// change: ask again after every event).
    fn signal(&self) -> Option<Arc<ConnectionSignal>>;

    /// True once the peer has authenticated (or needs not: a CoAP peer
    /// whose every request is checked on its own).
    fn is_authenticated(&self) -> bool;

    /// What the peer may cost before it authenticates.
    fn preauth_budget(&self) -> PreAuthBudget;

    /// How long the peer may stay silent once authenticated (keep-alive
    /// window); `None`: no limit.
    fn idle_timeout(&self) -> Option<Duration>;
}

/// A channel over a byte stream (TCP, TLS, WebSocket, SockJS).
pub trait StreamConnection: Connection {
    /// Whether each unit must travel in its own message on a message
    /// transport (STOMP frames); MQTT packets may span messages.
    const UNIT_MESSAGES: bool;

    /// Decode and handle the complete units in `input`, leaving a partial
    /// one (and stopping early while reads are held). True when the peer
    /// showed life: a complete unit, or whatever its protocol counts.
    fn handle_input(&mut self, input: &mut BytesMut, now: Instant) -> bool;

    /// The largest unit the peer may send: the driver's read buffer cap.
    fn max_unit(&self) -> usize;

    /// Encode what is waiting.
    fn poll_transmit(&mut self, now: Instant, out: &mut Transmit);
}

/// A channel over datagrams (UDP; DTLS later).
pub trait DatagramConnection: Connection {
    /// What the driver hands the channel: a datagram, or what the
    /// protocol's demultiplexer made of one.
    type Input: Send + 'static;

    /// One input. True when the peer showed life by its protocol's rules
    /// (it restarts the idle window).
    fn handle_datagram(&mut self, input: Self::Input, now: Instant) -> bool;

    /// Encode what is waiting, one datagram per unit.
    fn poll_transmit(&mut self, now: Instant, out: &mut Transmit);

    /// Nothing left to keep for this peer: the driver may forget it.
    fn is_idle(&self) -> bool;

    /// The driver drops this peer to make room for another (its table is
    /// full and this one was idle longest): say so if the protocol can,
    /// and close.
    fn evict(&mut self, now: Instant);
}

/// The limits every driver applies the same way (pre-authentication
/// time and bytes, the idle window), as a sans-IO clock the driver — or a
/// test harness playing the driver — feeds with input and asks for its
/// next deadline.
#[derive(Debug, Clone)]
pub struct Watchdog {
    /// When the connection started, or, once it authenticated, when it
    /// was first seen authenticated (the idle window starts no earlier).
    since: Instant,
    /// The last sign of life, in milliseconds after `since` (rounded up),
    /// so an idle connection carries one instant, not two.
    activity_ms: u32,
    /// Bytes received before the connection authenticated (saturating:
    /// a budget past 4 GiB does not trip).
    preauth_bytes: u32,
    authenticated: bool,
    tripped: bool,
}

impl Watchdog {
    /// A watchdog for a connection that starts at `now`.
    pub fn new(now: Instant) -> Watchdog {
        Watchdog {
            since: now,
            activity_ms: 0,
            preauth_bytes: 0,
            authenticated: false,
            tripped: false,
        }
    }

    /// `bytes` arrived; `activity` when the channel counted them as a sign
    /// of life.
    pub fn input(&mut self, bytes: usize, activity: bool, now: Instant) {
        if !self.authenticated {
            let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
            self.preauth_bytes = self.preauth_bytes.saturating_add(bytes);
        }
        if activity {
            let after = now.saturating_duration_since(self.since);
            let ms = after.as_nanos().div_ceil(1_000_000);
            match u32::try_from(ms) {
                Ok(ms) => self.activity_ms = ms,
                // Weeks of life: once authenticated, count from here (the
                // idle window starts no earlier anyway).
                Err(_) if self.authenticated => {
                    self.since = now;
                    self.activity_ms = 0;
                }
                Err(_) => self.activity_ms = u32::MAX,
            }
        }
    }

    /// The last sign of life (or `since`, if none came after it).
    fn last_activity(&self) -> Instant {
        self.since + Duration::from_millis(u64::from(self.activity_ms))
    }

    /// When a limit can next trip (for the driver's timer).
    pub fn deadline<C: Connection + ?Sized>(&self, conn: &C) -> Option<Instant> {
        if self.tripped || conn.is_closed() {
            return None;
        }
        if !conn.is_authenticated() {
            return self.since.checked_add(conn.preauth_budget().time);
        }
        let window = conn.idle_timeout()?;
        self.last_activity().checked_add(window)
    }

    /// Trip whatever limit is due at `now`: the channel says goodbye, the
    /// limit is counted. Returns the limit tripped, if any.
    pub fn check<C: Connection + ?Sized>(
        &mut self,
        conn: &mut C,
        metrics: &Metrics,
        now: Instant,
    ) -> Option<Limit> {
        if self.tripped || conn.is_closed() {
            return None;
        }
        if self.authenticated && !conn.is_authenticated() {
            // Authenticating again (an MQTT-SN re-CONNECT with a will flow):
            // a fresh pre-authentication budget from now.
            self.since = now;
            self.activity_ms = 0;
            self.preauth_bytes = 0;
            self.authenticated = false;
        }
        let limit = if !conn.is_authenticated() {
            let budget = conn.preauth_budget();
            if self.preauth_bytes as usize > budget.bytes {
                Some(Limit::PreAuthBytes)
            } else if self
                .since
                .checked_add(budget.time)
                .is_some_and(|d| now >= d)
            {
                Some(Limit::PreAuthTimeout)
            } else {
                None
            }
        } else {
            if !self.authenticated {
                // The idle window starts now at the earliest.
                let last = self.last_activity();
                self.authenticated = true;
                self.since = now;
                self.activity_ms = 0;
                if last > now {
                    self.input(0, true, last);
                }
            }
            self.deadline(conn)
                .filter(|d| now >= *d)
                .map(|_| Limit::IdleTimeout)
        };
        if let Some(limit) = limit {
            self.trip(conn, limit, metrics, now);
        }
        limit
    }

    /// Trip `limit` (the driver found it: a write stall): counted, and the
    /// channel told.
    pub fn trip<C: Connection + ?Sized>(
        &mut self,
        conn: &mut C,
        limit: Limit,
        metrics: &Metrics,
        now: Instant,
    ) {
        self.tripped = true;
        let counter = match limit {
            Limit::PreAuthTimeout => &metrics.limit_preauth_timeout,
            Limit::PreAuthBytes => &metrics.limit_preauth_bytes,
            Limit::IdleTimeout => &metrics.limit_idle_timeout,
            Limit::WriteStall => &metrics.limit_write_stall,
        };
        metrics.inc(counter);
        tracing::debug!(
            protocol = conn.protocol(),
            client_id = conn.client_id().unwrap_or(""),
            limit = limit.name(),
            "connection limit reached; closing"
        );
        conn.handle_limit(limit, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_come_out_one_by_one_or_all_at_once() {
        let mut t = Transmit::default();
        t.buf().extend_from_slice(b"ab");
        t.end_unit();
        t.push_unit(b"cde");
        t.end_unit();
        assert_eq!(t.len(), 5);
        let units = t.take_units();
        assert_eq!(
            units,
            vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cde")]
        );
        assert!(t.is_empty());
        t.push_unit(b"x");
        t.push_unit(b"y");
        assert_eq!(&t.take_all()[..], b"xy");
        assert!(t.take_units().is_empty());
        t.push_unit(b"abc");
        t.push_unit(b"de");
        t.advance(2);
        assert_eq!(t.pop_unit().as_deref(), Some(&b"c"[..]));
        assert_eq!(t.pop_unit().as_deref(), Some(&b"de"[..]));
        assert_eq!(t.pop_unit(), None);
    }

    #[test]
    fn a_byte_run_keeps_no_unit_ends_and_drains_in_place() {
        let mut t = Transmit::byte_run();
        t.push_unit(b"abc");
        t.push_unit(b"de");
        assert!(t.ends.is_none());
        t.advance(4);
        assert_eq!(t.bytes(), b"e");
        assert_eq!(t.pop_unit().as_deref(), Some(&b"e"[..]));
        assert!(t.is_empty());
        t.push_unit(b"xy");
        assert_eq!(t.take_units(), vec![Bytes::from_static(b"xy")]);
    }

    /// A channel that only reports what the watchdog asks.
    struct Probe {
        authenticated: bool,
        idle: Option<Duration>,
        tripped: Vec<Limit>,
    }

    impl Connection for Probe {
        fn protocol(&self) -> &'static str {
            "probe"
        }
        fn client_id(&self) -> Option<&str> {
            None
        }
        fn handle_timeout(&mut self, _: Instant) {}
        fn handle_wake(&mut self, _: Instant) {}
        fn handle_commit(&mut self, _: Instant) {}
        fn handle_auth(&mut self, _: AuthOutcome, _: Instant) {}
        fn handle_limit(&mut self, limit: Limit, _: Instant) {
            self.tripped.push(limit);
        }
        fn shutdown(&mut self, _: Instant) {}
        fn finish(&mut self, _: Instant) {}
        fn is_closed(&self) -> bool {
            !self.tripped.is_empty()
        }
        fn has_output(&self) -> bool {
            false
        }
        fn next_deadline(&self) -> Option<Instant> {
            None
        }
        fn read_hold(&self) -> ReadHold {
            ReadHold::Open
        }
        fn take_auth(&mut self) -> Option<AuthFuture> {
            None
        }
        fn take_congestion(&mut self) -> Vec<Arc<Session>> {
            Vec::new()
        }
        fn commit_wait(&self) -> Option<CommitWait> {
            None
        }
        fn signal(&self) -> Option<Arc<ConnectionSignal>> {
            None
        }
        fn is_authenticated(&self) -> bool {
            self.authenticated
        }
        fn preauth_budget(&self) -> PreAuthBudget {
            PreAuthBudget {
                time: Duration::from_secs(10),
                bytes: 100,
            }
        }
        fn idle_timeout(&self) -> Option<Duration> {
            self.idle
        }
    }

    fn probe(authenticated: bool, idle: Option<Duration>) -> Probe {
        Probe {
            authenticated,
            idle,
            tripped: Vec::new(),
        }
    }

    #[test]
    fn the_preauth_budget_trips_on_time_and_on_bytes_and_is_counted() {
        let metrics = Metrics::default();
        let t0 = Instant::now();
        let mut slow = probe(false, None);
        let mut w = Watchdog::new(t0);
        // Trickled bytes do not extend the time.
        w.input(1, true, t0 + Duration::from_secs(9));
        assert_eq!(w.deadline(&slow), Some(t0 + Duration::from_secs(10)));
        assert_eq!(
            w.check(&mut slow, &metrics, t0 + Duration::from_secs(9)),
            None
        );
        let at = t0 + Duration::from_secs(10);
        assert_eq!(
            w.check(&mut slow, &metrics, at),
            Some(Limit::PreAuthTimeout)
        );
        assert_eq!(slow.tripped, vec![Limit::PreAuthTimeout]);
        // Tripped once, then quiet.
        assert_eq!(w.check(&mut slow, &metrics, at), None);
        assert_eq!(w.deadline(&slow), None);

        let mut big = probe(false, None);
        let mut w = Watchdog::new(t0);
        w.input(101, false, t0);
        assert_eq!(w.check(&mut big, &metrics, t0), Some(Limit::PreAuthBytes));
        assert_eq!(
            metrics
                .limit_preauth_timeout
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(
            metrics
                .limit_preauth_bytes
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn the_idle_window_restarts_on_activity_only() {
        let metrics = Metrics::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut c = probe(false, Some(s(15)));
        let mut w = Watchdog::new(t0);
        c.authenticated = true;
        assert_eq!(w.check(&mut c, &metrics, t0 + s(1)), None);
        assert_eq!(w.deadline(&c), Some(t0 + s(16)));
        // Bytes that are not a sign of life do not move it; a unit does.
        w.input(10, false, t0 + s(10));
        assert_eq!(w.deadline(&c), Some(t0 + s(16)));
        w.input(10, true, t0 + s(12));
        assert_eq!(w.deadline(&c), Some(t0 + s(27)));
        assert_eq!(w.check(&mut c, &metrics, t0 + s(26)), None);
        assert_eq!(
            w.check(&mut c, &metrics, t0 + s(27)),
            Some(Limit::IdleTimeout)
        );
        // Authenticated bytes never count against the pre-auth budget.
        let mut big = probe(false, None);
        let mut w = Watchdog::new(t0);
        big.authenticated = true;
        assert_eq!(w.check(&mut big, &metrics, t0), None);
        w.input(1_000_000, true, t0);
        assert_eq!(w.check(&mut big, &metrics, t0), None);
        assert_eq!(w.deadline(&big), None, "no idle window, nothing due");
    }
}
