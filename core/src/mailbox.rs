//! A session's mailbox: the deliveries waiting to be sent, bounded in
//! messages and in bytes, with the overflow policy, the drop counts, and —
//! for a persistent session in durable mode — the part of the queue that
//! lives only in the store.
//!
//! ```text
//!   resident (memory, oldest first) ──▶ spilled (store only, seq order)
//!        ▲ take_for_send pops here            │ refill: read a batch once
//!        └────────────────────────────────────┘ its last write is committed
//! ```
//!
//! Invariants: every resident delivery is older than every spilled one
//! (once a session spills, new deliveries spill too until the spill is
//! read back); the length and byte figures count both parts; a spilled
//! message dropped by `drop_oldest` is only counted at once ("skipped")
//! and deleted from the store when the refill reaches it, so dropping
//! never reads the disk on a publisher's routing path.
//!
//! The mailbox also remembers when it last made progress for its owner (a
//! delivery taken, or mail arriving in an empty box): a mailbox over its
//! bound that has made none for `max_pause` belongs to a subscriber that
//! stopped reading, and publishers stop waiting for it (ADR 0018).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::message::Delivery;
use crate::metrics::Metrics;
use crate::storage::CommitTicket;

/// A queued delivery with its store sequence number (0 = not stored).
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) seq: u64,
    pub(crate) delivery: Delivery,
}

/// Why a message was dropped from a session (per-session counts, the
/// `messages_dropped_*` metrics and the client API use these names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The mailbox was at its bound and the overflow policy dropped it.
    QueueFull,
    /// It expired before it could be delivered.
    Expired,
    /// It is larger than the client accepts.
    TooLarge,
    /// QoS 0 for an offline session that does not queue QoS 0.
    OfflineQos0,
}

impl DropReason {
    /// Every reason, in the order of [`DropCounts::counts`].
    pub const ALL: [DropReason; 4] = [
        DropReason::QueueFull,
        DropReason::Expired,
        DropReason::TooLarge,
        DropReason::OfflineQos0,
    ];

    /// The reason's name in metrics and APIs.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Expired => "expired",
            DropReason::TooLarge => "too_large",
            DropReason::OfflineQos0 => "offline_qos0",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn global(self, metrics: &Metrics) -> &std::sync::atomic::AtomicU64 {
        match self {
            DropReason::QueueFull => &metrics.messages_dropped_queue_full,
            DropReason::Expired => &metrics.messages_dropped_expired,
            DropReason::TooLarge => &metrics.messages_dropped_too_large,
            DropReason::OfflineQos0 => &metrics.messages_dropped_offline_qos0,
        }
    }
}

/// Messages a session lost, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts {
    /// Indexed as [`DropReason::ALL`].
    pub counts: [u64; 4],
}

impl DropCounts {
    /// The count for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.counts[reason.index()]
    }

    /// Every reason.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Drops of one session, with the rate limit of its warning; on the heap,
/// and only once the session lost something.
#[derive(Debug, Default)]
struct Drops {
    counts: DropCounts,
    /// Dropped since the last warning was logged.
    unreported: u64,
    warned_at: Option<Instant>,
}

/// At most one drop warning per session this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What a mailbox keeps once it overflowed its memory or its bounds, on
/// the heap: most mailboxes never do.
#[derive(Debug, Default)]
struct Overflow {
    spill: Option<Spill>,
    drops: Drops,
}

/// Queued messages that live only in the store.
#[derive(Debug)]
struct Spill {
    /// Messages in the store from `next_seq` on, skipped ones included.
    count: usize,
    /// Of those, the oldest ones dropped by `drop_oldest`.
    skip: usize,
    /// Their topic and payload bytes (an estimate once some are skipped).
    bytes: u64,
    /// The first sequence number not yet read back.
    next_seq: u64,
    /// Every spilled message can be read once this batch is done.
    fence: Option<CommitTicket>,
    /// The fence the last refill found pending: deliveries wait for it.
    blocked: Option<CommitTicket>,
}

/// Size of a delivery for the byte bound: topic and payload.
#[inline]
pub(crate) fn delivery_bytes(d: &Delivery) -> u64 {
    (d.message.topic.len() + d.message.payload.len()) as u64
}

/// The mailbox of one session.
#[derive(Debug)]
pub(crate) struct Mailbox {
    resident: VecDeque<Pending>,
    resident_bytes: u64,
    overflow: Option<Box<Overflow>>,
    /// Last progress for the owner (see the module documentation).
    progress_at: Instant,
}

/// What a refill attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refill {
    /// Nothing is spilled.
    Nothing,
    /// Deliveries were read back (or skipped ones deleted).
    Loaded,
    /// The last spilled write is not committed yet.
    Wait(CommitTicket),
}

impl Mailbox {
    pub(crate) fn new(now: Instant) -> Mailbox {
        Mailbox {
            resident: VecDeque::new(),
            resident_bytes: 0,
            overflow: None,
            progress_at: now,
        }
    }

    #[inline]
    fn spill(&self) -> Option<&Spill> {
        self.overflow.as_ref().and_then(|o| o.spill.as_ref())
    }

    #[inline]
    fn spill_mut(&mut self) -> Option<&mut Spill> {
        self.overflow.as_mut().and_then(|o| o.spill.as_mut())
    }

    fn end_spill(&mut self) {
        if let Some(o) = self.overflow.as_mut() {
            o.spill = None;
        }
    }

    /// Messages queued, in memory and in the store.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.resident.len() + self.spill().map_or(0, |s| s.count - s.skip)
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes queued, in memory and in the store.
    #[inline]
    pub(crate) fn bytes(&self) -> u64 {
        self.resident_bytes + self.spill().map_or(0, |s| s.bytes)
    }

    /// Messages held in memory.
    #[inline]
    pub(crate) fn resident_len(&self) -> usize {
        self.resident.len()
    }

    /// True while part of the queue lives only in the store.
    #[inline]
    pub(crate) fn is_spilling(&self) -> bool {
        self.spill().is_some()
    }

    /// Whether adding `size` bytes would take the mailbox past
    /// `max_len` messages or `max_bytes` bytes, scaled by `factor`.
    #[inline]
    pub(crate) fn over(&self, max_len: usize, max_bytes: u64, size: u64, factor: u64) -> bool {
        let len = self.len() as u64;
        len >= (max_len as u64).saturating_mul(factor)
            || (max_bytes > 0 && !self.is_empty() && self.bytes() + size > max_bytes * factor)
    }

    /// No progress for `max_pause` although mail is waiting: the owner
    /// stopped taking it.
    #[inline]
    pub(crate) fn stalled(&self, now: Instant, max_pause: Duration) -> bool {
        !self.is_empty() && now.saturating_duration_since(self.progress_at) >= max_pause
    }

    /// The owner took deliveries (or has just connected).
    #[inline]
    pub(crate) fn progressed(&mut self, now: Instant) {
        self.progress_at = now;
    }

    /// Add at the back, in memory.
    #[inline]
    pub(crate) fn push(&mut self, pending: Pending, now: Instant) {
        if self.is_empty() {
            self.progress_at = now;
        }
        self.resident_bytes += delivery_bytes(&pending.delivery);
        self.resident.push_back(pending);
    }

    /// Add at the back, in the store only (written under `seq`; readable
    /// once `fence` is done).
    pub(crate) fn push_spilled(
        &mut self,
        seq: u64,
        size: u64,
        fence: Option<CommitTicket>,
        now: Instant,
    ) {
        if self.is_empty() {
            self.progress_at = now;
        }
        let overflow = self.overflow.get_or_insert_with(Box::default);
        let spill = overflow.spill.get_or_insert(Spill {
            count: 0,
            skip: 0,
            bytes: 0,
            next_seq: seq,
            fence: None,
            blocked: None,
        });
        spill.count += 1;
        spill.bytes += size;
        if fence.is_some() {
            spill.fence = fence;
        }
    }

    /// Put spilled messages of a restored session back: `count` of them
    /// from `first_seq` on.
    pub(crate) fn restore_spill(&mut self, count: usize, bytes: u64, first_seq: u64) {
        if count == 0 {
            return;
        }
        self.overflow.get_or_insert_with(Box::default).spill = Some(Spill {
            count,
            skip: 0,
            bytes,
            next_seq: first_seq,
            fence: None,
            blocked: None,
        });
    }

    /// Put deliveries back at the front, in order, ignoring the bound.
    pub(crate) fn push_front_all(&mut self, deliveries: Vec<Pending>) {
        for d in deliveries.into_iter().rev() {
            self.resident_bytes += delivery_bytes(&d.delivery);
            self.resident.push_front(d);
        }
    }

    /// The oldest resident delivery.
    #[inline]
    pub(crate) fn front(&self) -> Option<&Pending> {
        self.resident.front()
    }

    /// Take the oldest resident delivery.
    #[inline]
    pub(crate) fn pop_front(&mut self) -> Option<Pending> {
        let p = self.resident.pop_front()?;
        self.resident_bytes = self
            .resident_bytes
            .saturating_sub(delivery_bytes(&p.delivery));
        Some(p)
    }

    /// Drop the oldest message for the overflow policy: the resident one
    /// is returned (its store copy is for the caller to delete); a spilled
    /// one is skipped, to be deleted when the refill reaches it. False
    /// when there is nothing to drop.
    pub(crate) fn drop_oldest(&mut self) -> Option<Option<Pending>> {
        if let Some(p) = self.pop_front() {
            return Some(Some(p));
        }
        let spill = self.spill_mut()?;
        let live = spill.count - spill.skip;
        if live == 0 {
            return None;
        }
        let estimate = spill.bytes / live as u64;
        spill.bytes -= estimate;
        spill.skip += 1;
        Some(None)
    }

    /// Take every resident delivery out (the caller puts back those it keeps).
    pub(crate) fn take_resident(&mut self) -> VecDeque<Pending> {
        self.resident_bytes = 0;
        std::mem::take(&mut self.resident)
    }

    /// Read the next batch of spilled messages back into memory. `load`
    /// reads the store from a sequence number; `done` says whether a
    /// commit ticket is no longer pending; `inflight` says whether a
    /// sequence number is already held inflight (it is not queued twice);
    /// `delete` is called with the sequence numbers of skipped messages.
    pub(crate) fn refill(
        &mut self,
        batch: usize,
        done: impl Fn(CommitTicket) -> bool,
        load: impl FnOnce(u64, usize) -> Result<Vec<(u64, Delivery)>, crate::storage::LoadError>,
        inflight: impl Fn(u64) -> bool,
        mut delete: impl FnMut(u64),
    ) -> Result<Refill, crate::storage::LoadError> {
        let Some(spill) = self.overflow.as_mut().and_then(|o| o.spill.as_mut()) else {
            return Ok(Refill::Nothing);
        };
        if let Some(fence) = spill.fence {
            if !done(fence) {
                spill.blocked = Some(fence);
                return Ok(Refill::Wait(fence));
            }
        }
        spill.blocked = None;
        let loaded = load(spill.next_seq, batch.max(1))?;
        if loaded.is_empty() {
            // Nothing more in the store: what was counted but never made it
            // to the disk (a failed commit) is gone; its publishers were
            // refused.
            self.end_spill();
            return Ok(Refill::Loaded);
        }
        for (seq, delivery) in loaded {
            spill.next_seq = seq + 1;
            spill.count = spill.count.saturating_sub(1);
            if spill.skip > 0 {
                spill.skip -= 1;
                delete(seq);
                continue;
            }
            if inflight(seq) {
                continue;
            }
            let size = delivery_bytes(&delivery);
            spill.bytes = spill.bytes.saturating_sub(size);
            self.resident_bytes += size;
            self.resident.push_back(Pending { seq, delivery });
        }
        if spill.count == 0 {
            self.end_spill();
        }
        Ok(Refill::Loaded)
    }

    /// The commit a refill found pending, until a refill gets past it.
    pub(crate) fn refill_blocked(&self) -> Option<CommitTicket> {
        self.spill().and_then(|s| s.blocked)
    }

    /// Count a drop: per session, globally, and in a warning at most every
    /// [`WARN_EVERY`] per session.
    pub(crate) fn record_drop(
        &mut self,
        reason: DropReason,
        client_id: &str,
        metrics: &Metrics,
        now: Instant,
    ) {
        metrics.inc(reason.global(metrics));
        let queued = self.len();
        let drops = &mut self.overflow.get_or_insert_with(Box::default).drops;
        drops.counts.counts[reason.index()] += 1;
        drops.unreported += 1;
        let due = drops
            .warned_at
            .is_none_or(|at| now.saturating_duration_since(at) >= WARN_EVERY);
        if due {
            tracing::warn!(
                client_id,
                reason = reason.name(),
                dropped = drops.unreported,
                total = drops.counts.total(),
                queued,
                "messages dropped for a client"
            );
            drops.unreported = 0;
            drops.warned_at = Some(now);
        }
    }

    /// What this session lost, by reason.
    pub(crate) fn drop_counts(&self) -> DropCounts {
        self.overflow
            .as_ref()
            .map_or_else(DropCounts::default, |o| o.drops.counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Message, QoS};
    use bytes::Bytes;
    use std::sync::Arc;

    fn delivery(payload: &'static [u8]) -> Delivery {
        Delivery {
            message: Arc::new(Message::new(
                "t",
                Bytes::from_static(payload),
                QoS::AtLeastOnce,
                false,
            )),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
            shared: None,
        }
    }

    #[test]
    fn lengths_and_bytes_cover_both_parts() {
        let now = Instant::now();
        let mut m = Mailbox::new(now);
        m.push(
            Pending {
                seq: 1,
                delivery: delivery(b"abc"),
            },
            now,
        );
        m.push_spilled(2, 4, Some(CommitTicket(7)), now);
        m.push_spilled(3, 4, Some(CommitTicket(8)), now);
        assert_eq!((m.len(), m.bytes(), m.resident_len()), (3, 12, 1));
        assert!(m.over(3, 0, 1, 1));
        assert!(!m.over(4, 0, 1, 1));
        assert!(m.over(10, 12, 1, 1));
    }

    #[test]
    fn refill_waits_for_the_fence_then_reads_in_order_and_deletes_skipped() {
        let now = Instant::now();
        let mut m = Mailbox::new(now);
        for seq in 10..14 {
            m.push_spilled(seq, 2, Some(CommitTicket(seq)), now);
        }
        // drop_oldest on an all-spilled queue skips without reading.
        assert!(matches!(m.drop_oldest(), Some(None)));
        assert_eq!(m.len(), 3);
        let r = m.refill(8, |t| t.0 < 13, |_, _| unreachable!(), |_| false, |_| {});
        assert_eq!(r.ok(), Some(Refill::Wait(CommitTicket(13))));
        let mut deleted = Vec::new();
        let r = m.refill(
            8,
            |_| true,
            |from, max| {
                assert_eq!((from, max), (10, 8));
                Ok((10..14).map(|s| (s, delivery(b"x"))).collect())
            },
            |seq| seq == 12,
            |seq| deleted.push(seq),
        );
        assert_eq!(r.ok(), Some(Refill::Loaded));
        assert_eq!(deleted, vec![10]);
        let seqs: Vec<u64> = std::iter::from_fn(|| m.pop_front().map(|p| p.seq)).collect();
        assert_eq!(seqs, vec![11, 13]);
        assert!(!m.is_spilling());
        assert!(m.is_empty());
    }

    #[test]
    fn a_mailbox_with_mail_and_no_progress_is_stalled() {
        let t0 = Instant::now();
        let mut m = Mailbox::new(t0);
        let pause = Duration::from_secs(1);
        assert!(
            !m.stalled(t0 + Duration::from_secs(5), pause),
            "empty is never stalled"
        );
        m.push(
            Pending {
                seq: 0,
                delivery: delivery(b"a"),
            },
            t0 + Duration::from_secs(5),
        );
        assert!(!m.stalled(t0 + Duration::from_millis(5500), pause));
        assert!(m.stalled(t0 + Duration::from_secs(6), pause));
        m.progressed(t0 + Duration::from_secs(6));
        assert!(!m.stalled(t0 + Duration::from_millis(6500), pause));
    }

    #[test]
    fn drops_are_counted_per_reason() {
        let now = Instant::now();
        let metrics = Metrics::default();
        let mut m = Mailbox::new(now);
        m.record_drop(DropReason::QueueFull, "c", &metrics, now);
        m.record_drop(DropReason::QueueFull, "c", &metrics, now);
        m.record_drop(DropReason::Expired, "c", &metrics, now);
        let d = m.drop_counts();
        assert_eq!(
            (
                d.get(DropReason::QueueFull),
                d.get(DropReason::Expired),
                d.total()
            ),
            (2, 1, 3)
        );
        assert_eq!(Metrics::get(&metrics.messages_dropped_queue_full), 2);
    }
}
