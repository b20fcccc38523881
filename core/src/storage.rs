//! The persistence seam: what the core tells a durable store, and what it
//! gets back on restart.
//!
//! The core describes every change a restart must see as a [`StoreOp`]
//! (session records, queued messages of persistent sessions, their inflight
//! state, incoming QoS 2 ids awaiting PUBREL, retained messages) and hands
//! it to [`Persistence::submit`]. A durable store appends it to its current
//! group-commit batch and returns a [`CommitTicket`]; the ticket resolves in
//! [`Commits`] once the batch is on disk. Submitting never blocks and never
//! does I/O, so it is called with the session's lock held: ops of one
//! session reach the store in the order they happened.
//!
//! Only persistent sessions (expiry interval above zero) and QoS 1/2
//! messages produce ops; [`MemoryPersistence`] is not `enabled` and the core
//! then builds no op at all. Retained messages are stored whatever their
//! QoS.
//!
//! Times on disk are wall-clock milliseconds since the Unix epoch
//! ([`unix_ms_of`], [`instant_of`]): an `Instant` means nothing after a
//! restart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::message::{ClientId, Delivery, Message};
use crate::session::{InflightPhase, SubOptions, Will};

/// A position in the store's sequence of group commits: it resolves when
/// the batch holding the op that produced it is durable (or failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommitTicket(pub u64);

/// Where a [`CommitTicket`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketState {
    /// Its batch is not written yet.
    Pending,
    /// Its batch is durable (per the configured durability mode).
    Durable,
    /// Its batch could not be written (disk full, I/O error).
    Failed,
}

/// Commit progress shared by the store's writer (which advances it) and
/// the connections waiting on tickets.
#[derive(Debug, Default)]
pub struct Commits {
    /// Highest batch finished (written or failed).
    done: AtomicU64,
    /// Batches that failed, most recent last (bounded).
    failed: Mutex<Vec<u64>>,
    /// Set once any batch failed: until then no ticket needs the list.
    any_failed: std::sync::atomic::AtomicBool,
    notify: Notify,
}

/// How many failed batch numbers are remembered; older failures read as
/// durable, which only matters to a connection that waited that long.
const FAILED_MEMORY: usize = 1024;

impl Commits {
    /// A fresh progress record.
    pub fn new() -> Arc<Commits> {
        Arc::new(Commits::default())
    }

    /// The writer finished batch `batch` (`ok` = durable).
    pub fn finish(&self, batch: u64, ok: bool) {
        if !ok {
            self.any_failed.store(true, Ordering::Release);
            let mut failed = self.failed.lock();
            failed.push(batch);
            if failed.len() > FAILED_MEMORY {
                failed.remove(0);
            }
        }
        self.done.fetch_max(batch, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    /// Where `ticket` stands.
    pub fn state(&self, ticket: CommitTicket) -> TicketState {
        if self.done.load(Ordering::Acquire) < ticket.0 {
            TicketState::Pending
        } else if self.any_failed.load(Ordering::Acquire) && self.failed.lock().contains(&ticket.0)
        {
            TicketState::Failed
        } else {
            TicketState::Durable
        }
    }

    /// Wait until `ticket` is no longer pending.
    pub async fn wait(&self, ticket: CommitTicket) -> TicketState {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.state(ticket) {
                TicketState::Pending => notified.await,
                done => return done,
            }
        }
    }
}

/// A persistent session as stored: enough to rebuild it offline.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// The client identifier.
    pub client_id: ClientId,
    /// User name of the last connection.
    pub username: Option<String>,
    /// Protocol of the last connection (`mqtt`, `mqtt-sn`, …).
    pub protocol: String,
    /// Session expiry interval, seconds.
    pub expiry_interval: u32,
    /// Subscriptions as (raw filter, options).
    pub subscriptions: Vec<(Arc<str>, SubOptions)>,
    /// The will, if one is pending.
    pub will: Option<Will>,
    /// When a delayed will falls due (Unix ms), once the client is offline.
    pub will_due_ms: Option<u64>,
    /// When the session expires (Unix ms), once the client is offline;
    /// `None` while online (on restore: expiry counts from the restart).
    pub expires_at_ms: Option<u64>,
}

/// One change for the durable store.
#[derive(Debug, Clone)]
pub enum StoreOp {
    /// Create or replace a persistent session's record (boxed: it is the
    /// rare, large variant).
    SessionPut(Box<SessionRecord>),
    /// Remove a session with its messages and incoming QoS 2 ids.
    SessionDelete(ClientId),
    /// A QoS 1/2 delivery queued for a persistent session, under its
    /// sequence number (order of the queue).
    MessagePut {
        /// The session.
        client_id: ClientId,
        /// Sequence number, increasing across the store.
        seq: u64,
        /// The delivery.
        delivery: Delivery,
    },
    /// A queued message was sent (`Some`: packet id and phase) or went
    /// back to the queue (`None`).
    InflightPut {
        /// The session.
        client_id: ClientId,
        /// The message's sequence number.
        seq: u64,
        /// Packet id and phase, or `None` when no longer inflight.
        state: Option<(u16, InflightPhase)>,
    },
    /// The message is done (acknowledged, dropped or expired).
    MessageDelete {
        /// The session.
        client_id: ClientId,
        /// The message's sequence number.
        seq: u64,
    },
    /// An incoming QoS 2 packet id now awaits PUBREL.
    Qos2Put {
        /// The session.
        client_id: ClientId,
        /// The packet id.
        packet_id: u16,
    },
    /// An incoming QoS 2 packet id was released.
    Qos2Delete {
        /// The session.
        client_id: ClientId,
        /// The packet id.
        packet_id: u16,
    },
    /// A retained message was set.
    RetainedPut(Arc<Message>),
    /// The retained message on a topic was cleared.
    RetainedDelete(Arc<str>),
}

/// A message of a restored session, in queue order.
#[derive(Debug, Clone)]
pub struct RestoredMessage {
    /// Its sequence number.
    pub seq: u64,
    /// The delivery.
    pub delivery: Delivery,
    /// Packet id and phase when it was inflight.
    pub inflight: Option<(u16, InflightPhase)>,
}

/// A session read back from the store.
#[derive(Debug, Clone)]
pub struct RestoredSession {
    /// The record.
    pub record: SessionRecord,
    /// Its inflight messages and the head of its queue, by sequence number.
    pub messages: Vec<RestoredMessage>,
    /// The rest of its queue, left in the store ([`Persistence::load_queue`]
    /// reads it when the session gets that far).
    pub spilled: Option<SpilledQueue>,
    /// Incoming QoS 2 packet ids awaiting PUBREL.
    pub incoming_qos2: Vec<u16>,
}

/// Queued messages of a session that stay in the store, not in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpilledQueue {
    /// How many.
    pub count: usize,
    /// Their topic and payload bytes.
    pub bytes: u64,
    /// The sequence number of the first one.
    pub first_seq: u64,
}

/// Everything a store held at start-up.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    /// Persistent sessions.
    pub sessions: Vec<RestoredSession>,
    /// Retained messages.
    pub retained: Vec<Message>,
}

/// Receives every change that a durable store has to write.
pub trait Persistence: Send + Sync + std::fmt::Debug {
    /// False for stores that keep nothing: the core then builds no op.
    fn enabled(&self) -> bool;
    /// Queue `op` for the next group commit; never blocks. `None` when
    /// nothing will be written, or when the durability mode makes nobody
    /// wait for it.
    fn submit(&self, op: StoreOp) -> Option<CommitTicket>;
    /// [`Persistence::submit`], also returning the batch the op went into
    /// whatever the durability mode: once that batch is done, the op can
    /// be read back ([`Persistence::load_queue`]). (ack ticket, fence).
    fn submit_fenced(&self, op: StoreOp) -> (Option<CommitTicket>, Option<CommitTicket>) {
        let ticket = self.submit(op);
        (ticket, ticket)
    }
    /// Read up to `max` queued messages of `client_id` with sequence
    /// numbers from `from_seq` on, in order, from what is committed. A
    /// blocking read of the embedded engine (page cache, usually), done
    /// by the subscriber's own task when its in-memory queue runs dry.
    fn load_queue(
        &self,
        _client_id: &str,
        _from_seq: u64,
        _max: usize,
    ) -> Result<Vec<(u64, Delivery)>, LoadError> {
        Ok(Vec::new())
    }
    /// The next message sequence number.
    fn next_seq(&self) -> u64;
    /// Commit progress, for waiting on tickets.
    fn commits(&self) -> Option<Arc<Commits>>;
    /// Figures for metrics.
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }
}

/// Why queued messages could not be read back from the store.
#[derive(Debug, Clone, thiserror::Error)]
#[error("store read failed: {0}")]
pub struct LoadError(pub String);

/// A store's figures, exported as metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Bytes on disk.
    pub disk_bytes: u64,
    /// Batches committed.
    pub commits: u64,
    /// Batches that failed.
    pub failures: u64,
    /// Ops written.
    pub ops: u64,
}

/// Memory only: nothing survives a restart.
#[derive(Debug, Default)]
pub struct MemoryPersistence;

impl Persistence for MemoryPersistence {
    fn enabled(&self) -> bool {
        false
    }

    fn submit(&self, _op: StoreOp) -> Option<CommitTicket> {
        None
    }

    fn next_seq(&self) -> u64 {
        0
    }

    fn commits(&self) -> Option<Arc<Commits>> {
        None
    }
}

/// `at` as Unix milliseconds, given the current `now` / `wall_now` pair.
pub fn unix_ms_of(at: Instant, now: Instant, wall_now: SystemTime) -> u64 {
    let wall = if at >= now {
        wall_now + at.saturating_duration_since(now)
    } else {
        wall_now
            .checked_sub(now.saturating_duration_since(at))
            .unwrap_or(UNIX_EPOCH)
    };
    millis_since_epoch(wall)
}

/// The `Instant` for Unix milliseconds `ms`, given the current pair; times
/// in the past map to `now` (they are due).
pub fn instant_of(ms: u64, now: Instant, wall_now: SystemTime) -> Instant {
    let wall_ms = millis_since_epoch(wall_now);
    if ms <= wall_ms {
        now
    } else {
        now + Duration::from_millis(ms - wall_ms)
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn millis_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Merge two optional tickets: the later one covers both.
pub fn later(a: Option<CommitTicket>, b: Option<CommitTicket>) -> Option<CommitTicket> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}
