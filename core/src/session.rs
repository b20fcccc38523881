//! Sessions: what the core keeps for one client across its connections —
//! subscriptions, the bounded mailbox of pending deliveries, the outgoing
//! inflight window with packet ids, incoming QoS 2 ids awaiting release,
//! the will, and expiry.
//!
//! A session is owned by at most one connection at a time, represented by
//! its [`ConnectionSignal`]. Publishers push into the mailbox under the
//! session's mutex (held only for the push) and wake the owner; the owner's
//! channel pulls deliveries through its [`SessionHandle`]. A handle whose
//! connection was taken over or kicked is inert: every mutating call checks
//! ownership first.
//!
//! ```text
//!   open_session ──▶ Online(owner) ──close──▶ Offline ──expiry──▶ gone
//!        ▲                │ takeover               │
//!        └────────────────┴────────────────────────┘ reconnect (clean_start = false)
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::Notify;

pub(crate) use crate::mailbox::Pending;
use crate::mailbox::{delivery_bytes, Mailbox, Refill};
pub use crate::mailbox::{DropCounts, DropReason};
use crate::message::{ClientId, Delivery, Message, QoS};
use crate::metrics::Metrics;
pub use crate::signal::{ConnectionSignal, KickReason};
use crate::storage::{later, CommitTicket, Persistence, SessionRecord, StoreOp, TicketState};

/// What a protocol channel tells the core about who is connecting.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// Client identifier (after mountpoint/assignment).
    pub client_id: ClientId,
    /// User name, if given.
    pub username: Option<String>,
    /// Remote address, when the transport has one.
    pub peer: Option<SocketAddr>,
    /// Protocol name for logs and APIs (`mqtt`, `mqtt-sn`, `coap`, …).
    pub protocol: &'static str,
}

/// Options of one subscription, protocol-neutral (MQTT 5 semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOptions {
    /// Maximum QoS granted.
    pub qos: QoS,
    /// Do not deliver the subscriber's own publishes.
    pub no_local: bool,
    /// Keep the published retain flag on delivery.
    pub retain_as_published: bool,
    /// 0 = send retained on subscribe, 1 = only if new, 2 = never.
    pub retain_handling: u8,
    /// MQTT 5 subscription identifier.
    pub subscription_id: Option<u32>,
}

impl SubOptions {
    /// Plain options at a QoS.
    pub fn at(qos: QoS) -> SubOptions {
        SubOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
            subscription_id: None,
        }
    }
}

/// A will message with its delay.
#[derive(Debug, Clone)]
pub struct Will {
    /// The message to publish.
    pub message: Message,
    /// Seconds to wait after an abnormal close before publishing.
    pub delay_interval: u32,
    /// Message expiry interval in seconds, applied when the will is published.
    pub message_expiry_interval: Option<u32>,
}

/// Where an outgoing QoS 1/2 message is in its acknowledgement flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflightPhase {
    /// QoS 1 PUBLISH sent, waiting for PUBACK.
    AwaitingAck,
    /// QoS 2 PUBLISH sent, waiting for PUBREC.
    AwaitingRec,
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitingComp,
}

/// One outgoing message awaiting acknowledgement.
#[derive(Debug, Clone)]
pub struct Inflight {
    /// Packet identifier used on the wire.
    pub packet_id: u16,
    /// Store sequence number (0 when the message is not stored).
    pub seq: u64,
    /// The delivery.
    pub delivery: Delivery,
    /// Where the flow stands.
    pub phase: InflightPhase,
    /// When it was last sent, for in-session retransmission (MQTT 3.x).
    pub sent_at: Instant,
}

/// Bounds and policies for a session's mailbox.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Maximum pending deliveries.
    pub max_len: usize,
    /// Maximum bytes (topic and payload) of pending deliveries; 0 = no byte bound.
    pub max_bytes: u64,
    /// Whether QoS 0 messages are queued while the client is offline.
    pub store_qos0: bool,
    /// What to drop when full.
    pub overflow: Overflow,
    /// Longest a publisher waits for a full mailbox of an online session;
    /// a mailbox that made no progress for this long is not waited for.
    pub max_pause: Duration,
}

impl Default for QueueLimits {
    /// Room for an hour of one message a second (ADR 0018).
    fn default() -> Self {
        QueueLimits {
            max_len: 10_000,
            max_bytes: 64 * 1024 * 1024,
            store_qos0: true,
            overflow: Overflow::DropOldest,
            max_pause: Duration::from_secs(1),
        }
    }
}

/// Deliveries a persistent session keeps in memory while online before the
/// rest of its queue goes to the store only.
const RESIDENT_ONLINE: usize = 1024;

/// Spilled deliveries read back from the store at a time.
const REFILL_BATCH: usize = 256;

/// Mailbox overflow policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Drop the oldest pending delivery to make room.
    DropOldest,
    /// Drop the new delivery.
    DropNewest,
}

/// What [`Session::deliver_flow`] did with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Queued within the bound.
    Yes,
    /// Queued beyond the bound: the publisher should pause.
    OverLimit,
    /// Dropped (and counted) by the overflow policy.
    Dropped,
}

/// Result of registering an incoming QoS 2 packet id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncomingQos2 {
    /// First time seen: route the message.
    New,
    /// Already awaiting PUBREL: answer PUBREC again, do not route.
    Duplicate,
    /// Too many awaiting release.
    Full,
}

/// A map inside a session: a fixed hasher instead of a random one saves
/// its two words in every session, and the keys (a client's own filters and
/// packet ids) only ever collide with that client's own.
pub(crate) type SessionMap<K, V> =
    HashMap<K, V, std::hash::BuildHasherDefault<std::hash::DefaultHasher>>;

#[derive(Debug)]
pub(crate) struct SessionState {
    pub(crate) subscriptions: SessionMap<Arc<str>, SubOptions>,
    pub(crate) mailbox: Mailbox,
    pub(crate) inflight: VecDeque<Inflight>,
    next_packet_id: u16,
    incoming_qos2: SessionMap<u16, Instant>,
    /// The durable store, while this session is persistent (expiry above
    /// zero and a store configured); `None` keeps it off the disk.
    pub(crate) store: Option<Arc<dyn Persistence>>,
    /// The latest commit ticket of this session's own changes (QoS 2
    /// state), for the connection to wait on before acknowledging.
    last_ticket: Option<CommitTicket>,
    pub(crate) owner: Option<Arc<ConnectionSignal>>,
    pub(crate) expiry_interval: u32,
    /// Boxed: most sessions have none, and a will is a few hundred bytes.
    pub(crate) will: Option<Box<SessionWill>>,
    pub(crate) expires_at: Option<Instant>,
    pub(crate) info: ClientInfo,
}

/// A session's will, and when it is due once the session is offline with
/// a delayed will (kept together: most sessions have neither).
#[derive(Debug)]
pub(crate) struct SessionWill {
    pub(crate) will: Will,
    pub(crate) due: Option<Instant>,
}

impl SessionWill {
    pub(crate) fn boxed(will: Will) -> Box<SessionWill> {
        Box::new(SessionWill { will, due: None })
    }
}

impl std::ops::Deref for SessionWill {
    type Target = Will;

    fn deref(&self) -> &Will {
        &self.will
    }
}

/// A client's session.
#[derive(Debug)]
pub struct Session {
    /// The client identifier.
    pub client_id: ClientId,
    online: AtomicBool,
    pub(crate) state: Mutex<SessionState>,
    /// Publishers paused on this session's full mailbox wait here.
    room: Notify,
}

impl Session {
    pub(crate) fn new(
        info: ClientInfo,
        owner: Arc<ConnectionSignal>,
        expiry_interval: u32,
        will: Option<Will>,
        now: Instant,
    ) -> Session {
        Session::build(info, Some(owner), expiry_interval, will, None, now)
    }

    /// A session with an empty mailbox: online when it has an owner.
    fn build(
        info: ClientInfo,
        owner: Option<Arc<ConnectionSignal>>,
        expiry_interval: u32,
        will: Option<Will>,
        store: Option<Arc<dyn Persistence>>,
        now: Instant,
    ) -> Session {
        Session {
            client_id: info.client_id.clone(),
            online: AtomicBool::new(owner.is_some()),
            room: Notify::new(),
            state: Mutex::new(SessionState {
                subscriptions: SessionMap::default(),
                mailbox: Mailbox::new(now),
                inflight: VecDeque::new(),
                next_packet_id: 1,
                incoming_qos2: SessionMap::default(),
                store,
                last_ticket: None,
                owner,
                expiry_interval,
                will: will.map(SessionWill::boxed),
                expires_at: None,
                info,
            }),
        }
    }

    /// True while a connection owns the session.
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }

    pub(crate) fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Release);
    }

    /// Queue a delivery, applying the bound and overflow policy, and wake
    /// the owner. Returns false when the delivery was dropped.
    pub(crate) fn deliver(
        &self,
        delivery: Delivery,
        limits: &QueueLimits,
        metrics: &Metrics,
        now: Instant,
    ) -> bool {
        self.deliver_flow(delivery, limits, metrics, now).0 != Queued::Dropped
    }

    /// Queue a delivery and say whether the publisher should pause.
    ///
    /// Past the bound (messages or bytes), a QoS 1/2 delivery to an online
    /// session whose mailbox is still making progress is queued anyway —
    /// up to twice the bound — and [`Queued::OverLimit`] asks the
    /// publishing connection to stop reading until this session has room,
    /// for at most `max_pause` (ADR 0009, ADR 0018). Everything else past
    /// the bound — QoS 0, offline sessions, and mailboxes that made no
    /// progress for `max_pause` (a subscriber that stopped reading) —
    /// follows the overflow policy, counted per session and globally.
    ///
    /// A QoS 1/2 delivery to a persistent session is handed to the store
    /// (and, while the session spills, any delivery); the returned ticket
    /// resolves when it is durable.
    pub(crate) fn deliver_flow(
        &self,
        delivery: Delivery,
        limits: &QueueLimits,
        metrics: &Metrics,
        now: Instant,
    ) -> (Queued, Option<CommitTicket>) {
        let mut st = self.state.lock();
        let online = st.owner.is_some();
        let qos0 = delivery.qos == QoS::AtMostOnce;
        if !online && qos0 && !limits.store_qos0 {
            st.mailbox
                .record_drop(DropReason::OfflineQos0, &self.client_id, metrics, now);
            return (Queued::Dropped, None);
        }
        let size = delivery_bytes(&delivery);
        let mut outcome = Queued::Yes;
        if st.mailbox.over(limits.max_len, limits.max_bytes, size, 1) {
            if online
                && !qos0
                && !st.mailbox.stalled(now, limits.max_pause)
                && !st.mailbox.over(limits.max_len, limits.max_bytes, size, 2)
            {
                metrics.inc(&metrics.publish_backpressure);
                outcome = Queued::OverLimit;
            } else {
                match limits.overflow {
                    Overflow::DropNewest => {
                        st.mailbox.record_drop(
                            DropReason::QueueFull,
                            &self.client_id,
                            metrics,
                            now,
                        );
                        return (Queued::Dropped, None);
                    }
                    Overflow::DropOldest => {
                        while st.mailbox.over(limits.max_len, limits.max_bytes, size, 1) {
                            let Some(old) = st.mailbox.drop_oldest() else {
                                break;
                            };
                            if let Some(old) = old {
                                st.forget(old.seq);
                            }
                            st.mailbox.record_drop(
                                DropReason::QueueFull,
                                &self.client_id,
                                metrics,
                                now,
                            );
                        }
                    }
                }
            }
        }
        // One wake-up per batch: a non-empty mailbox means the owner has
        // been woken already and will drain it (or is waiting for its
        // inflight window, and acknowledgements make it look again).
        let was_empty = st.mailbox.is_empty();
        let mut ticket = None;
        let spilling = st.store.is_some()
            && (!online
                || st.mailbox.is_spilling()
                || st.mailbox.resident_len() >= RESIDENT_ONLINE);
        if let (true, Some(store)) = (spilling, st.store.clone()) {
            // Only in the store: memory does not grow with the queue.
            let seq = store.next_seq();
            let (ack, fence) = store.submit_fenced(StoreOp::MessagePut {
                client_id: self.client_id.clone(),
                seq,
                delivery,
            });
            ticket = ack;
            st.mailbox.push_spilled(seq, size, fence, now);
        } else {
            let mut seq = 0;
            if !qos0 {
                if let Some(store) = &st.store {
                    seq = store.next_seq();
                    ticket = store.submit(StoreOp::MessagePut {
                        client_id: self.client_id.clone(),
                        seq,
                        delivery: delivery.clone(),
                    });
                }
            }
            st.mailbox.push(Pending { seq, delivery }, now);
        }
        if was_empty {
            if let Some(owner) = &st.owner {
                owner.wake();
            }
        }
        (outcome, ticket)
    }

    /// True while publishers should wait before adding to this session:
    /// it is online, its mailbox holds `max_len` or more (or `max_bytes`
    /// or more) and it is still making progress.
    pub fn is_congested(&self, limits: &QueueLimits, now: Instant) -> bool {
        let st = self.state.lock();
        st.owner.is_some()
            && st.mailbox.over(limits.max_len, limits.max_bytes, 0, 1)
            && !st.mailbox.stalled(now, limits.max_pause)
    }

    /// A future resolving when this session's mailbox drained below its
    /// bound or the session went offline. Create it, `enable` it, then
    /// check [`Session::is_congested`], so no wake-up is missed.
    pub fn room(&self) -> tokio::sync::futures::Notified<'_> {
        self.room.notified()
    }

    /// Wake publishers waiting for room.
    pub(crate) fn notify_room(&self) {
        self.room.notify_waiters();
    }

    /// Put deliveries back at the front of the mailbox, in order, ignoring the bound.
    pub(crate) fn requeue_front(&self, deliveries: Vec<Pending>) {
        self.state.lock().mailbox.push_front_all(deliveries);
    }

    /// Take back shared-subscription deliveries not yet completed, so they
    /// can go to another member of their group. Stored ones keep their
    /// sequence number and are back in the queued state.
    pub(crate) fn take_shared_unacked(&self) -> Vec<Pending> {
        let mut st = self.state.lock();
        let mut out = Vec::new();
        // Inflight first: they are older than anything still queued.
        let inflight = std::mem::take(&mut st.inflight);
        for i in inflight {
            if i.delivery.shared.is_some() && i.phase != InflightPhase::AwaitingComp {
                st.set_inflight_state(&self.client_id, i.seq, None);
                out.push(Pending {
                    seq: i.seq,
                    delivery: i.delivery,
                });
            } else {
                st.inflight.push_back(i);
            }
        }
        // Resident ones only: spilled shared deliveries wait in the store
        // for this session's return (or its expiry).
        let queue = st.mailbox.take_resident();
        let mut kept = Vec::new();
        for d in queue {
            if d.delivery.shared.is_some() && d.delivery.qos != QoS::AtMostOnce {
                out.push(d);
            } else {
                kept.push(d);
            }
        }
        st.mailbox.push_front_all(kept);
        out
    }

    /// A stored message of this session is gone (handed elsewhere).
    pub(crate) fn forget_stored(&self, seq: u64) {
        let mut st = self.state.lock();
        st.forget(seq);
    }

    /// The record a durable store keeps for this session.
    pub(crate) fn record(&self, st: &SessionState, now: Instant) -> SessionRecord {
        let wall = std::time::SystemTime::now();
        SessionRecord {
            client_id: self.client_id.clone(),
            username: st.info.username.clone(),
            protocol: st.info.protocol.to_string(),
            expiry_interval: st.expiry_interval,
            subscriptions: st
                .subscriptions
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            will: st.will.as_ref().map(|w| w.will.clone()),
            will_due_ms: st
                .will
                .as_ref()
                .and_then(|w| w.due)
                .map(|d| crate::storage::unix_ms_of(d, now, wall)),
            expires_at_ms: st
                .expires_at
                .map(|d| crate::storage::unix_ms_of(d, now, wall)),
        }
    }

    /// Write this session's record, when it is persistent.
    pub(crate) fn save(&self, st: &mut SessionState, now: Instant) {
        if st.store.is_some() {
            let record = self.record(st, now);
            st.emit(StoreOp::SessionPut(Box::new(record)));
        }
    }

    /// Build an offline session from the store.
    pub(crate) fn restored(
        info: ClientInfo,
        expiry_interval: u32,
        store: Arc<dyn Persistence>,
        now: Instant,
    ) -> Session {
        Session::build(info, None, expiry_interval, None, Some(store), now)
    }

    /// Current number of pending (not yet sent) deliveries, in memory and
    /// in the store.
    pub fn queue_len(&self) -> usize {
        self.state.lock().mailbox.len()
    }

    /// Bytes (topic and payload) of the pending deliveries.
    pub fn queue_bytes(&self) -> u64 {
        self.state.lock().mailbox.bytes()
    }

    /// Pending deliveries held in memory (the rest, if any, is in the store).
    pub fn resident_len(&self) -> usize {
        self.state.lock().mailbox.resident_len()
    }

    /// What this session lost, by reason.
    pub fn drop_counts(&self) -> DropCounts {
        self.state.lock().mailbox.drop_counts()
    }

    /// Current number of outgoing messages awaiting acknowledgement.
    pub fn inflight_len(&self) -> usize {
        self.state.lock().inflight.len()
    }

    /// The subscriptions as (raw filter, options).
    pub fn subscriptions(&self) -> Vec<(Arc<str>, SubOptions)> {
        self.state
            .lock()
            .subscriptions
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

/// What a connection holds to act on its session.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    /// The session.
    pub session: Arc<Session>,
    /// This connection's signal.
    pub signal: Arc<ConnectionSignal>,
}

/// A message ready to be written: QoS 0 ones have no packet id.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Packet id for QoS 1/2.
    pub packet_id: Option<u16>,
    /// The delivery.
    pub delivery: Delivery,
    /// True when this is a retransmission (MQTT DUP flag).
    pub dup: bool,
}

/// Something to resend when a persistent session resumes.
#[derive(Debug, Clone)]
pub enum Resend {
    /// PUBLISH again with DUP set.
    Publish(Outgoing),
    /// PUBREL again.
    PubRel(u16),
}

impl SessionHandle {
    pub(crate) fn owns(&self, st: &SessionState) -> bool {
        st.owner
            .as_ref()
            .is_some_and(|o| Arc::ptr_eq(o, &self.signal))
    }

    /// True while this connection owns the session.
    pub fn is_owner(&self) -> bool {
        let st = self.session.state.lock();
        self.owns(&st)
    }

    /// Pull deliveries to send now: up to `max` messages; QoS 1/2 ones only
    /// while fewer than `window` are inflight (they get packet ids and are
    /// recorded inflight). `accept` may refuse a delivery (e.g. larger than
    /// the client's maximum packet size): it is then dropped and counted.
    /// Expired messages are dropped.
    pub fn take_for_send(
        &self,
        now: Instant,
        max: usize,
        window: usize,
        metrics: &Metrics,
        mut accept: impl FnMut(&Delivery) -> bool,
    ) -> Vec<Outgoing> {
        let mut st = self.session.state.lock();
        if !self.owns(&st) {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(st.mailbox.resident_len().min(max));
        while out.len() < max {
            if st.mailbox.front().is_none() && !st.refill(&self.session.client_id, metrics) {
                break;
            }
            let Some(front) = st.mailbox.front() else {
                break;
            };
            if front.delivery.qos != QoS::AtMostOnce && st.inflight.len() >= window {
                break;
            }
            let Some(Pending { seq, delivery }) = st.mailbox.pop_front() else {
                break;
            };
            if delivery.message.is_expired(now) {
                st.forget(seq);
                st.mailbox
                    .record_drop(DropReason::Expired, &self.session.client_id, metrics, now);
                continue;
            }
            if !accept(&delivery) {
                st.forget(seq);
                st.mailbox
                    .record_drop(DropReason::TooLarge, &self.session.client_id, metrics, now);
                continue;
            }
            if delivery.qos == QoS::AtMostOnce {
                // Stored only while the queue spilled: done once sent.
                st.forget(seq);
                out.push(Outgoing {
                    packet_id: None,
                    delivery,
                    dup: false,
                });
                continue;
            }
            let Some(packet_id) = next_free_packet_id(&mut st) else {
                st.mailbox.push_front_all(vec![Pending { seq, delivery }]);
                break;
            };
            let phase = if delivery.qos == QoS::AtLeastOnce {
                InflightPhase::AwaitingAck
            } else {
                InflightPhase::AwaitingRec
            };
            st.set_inflight_state(&self.session.client_id, seq, Some((packet_id, phase)));
            st.inflight.push_back(Inflight {
                packet_id,
                seq,
                delivery: delivery.clone(),
                phase,
                sent_at: now,
            });
            out.push(Outgoing {
                packet_id: Some(packet_id),
                delivery,
                dup: false,
            });
        }
        if !out.is_empty() {
            st.mailbox.progressed(now);
        }
        drop(st);
        if !out.is_empty() {
            // Publishers paused on this mailbox re-check it themselves.
            self.session.notify_room();
        }
        out
    }

    /// True when deliveries are waiting and could be sent within `window`.
    pub fn has_sendable(&self, window: usize) -> bool {
        let st = self.session.state.lock();
        match st.mailbox.front() {
            Some(d) => d.delivery.qos == QoS::AtMostOnce || st.inflight.len() < window,
            None => st.mailbox.is_spilling() && st.mailbox.refill_blocked().is_none(),
        }
    }

    /// The store commit a refill of this session's spilled queue waits
    /// for, if any: once it is done, deliveries can be taken again.
    pub fn refill_ticket(&self) -> Option<CommitTicket> {
        self.session.state.lock().mailbox.refill_blocked()
    }

    /// PUBACK received: completes a QoS 1 flow. False if unknown.
    pub fn acknowledge(&self, packet_id: u16) -> bool {
        self.complete(packet_id, InflightPhase::AwaitingAck)
    }

    /// PUBCOMP received: completes a QoS 2 flow. False if unknown.
    pub fn complete_qos2(&self, packet_id: u16) -> bool {
        self.complete(packet_id, InflightPhase::AwaitingComp)
    }

    /// PUBREC received; with `accepted` false (an MQTT 5 error reason) the
    /// flow ends there. Returns true when a PUBREL must be sent.
    pub fn received(&self, packet_id: u16, accepted: bool) -> bool {
        let mut st = self.session.state.lock();
        if !self.owns(&st) {
            return false;
        }
        let Some(pos) = st
            .inflight
            .iter()
            .position(|i| i.packet_id == packet_id && i.phase != InflightPhase::AwaitingAck)
        else {
            return false;
        };
        if !accepted {
            if let Some(entry) = st.inflight.remove(pos) {
                st.forget(entry.seq);
            }
            return false;
        }
        let mut seq = 0;
        if let Some(entry) = st.inflight.get_mut(pos) {
            entry.phase = InflightPhase::AwaitingComp;
            seq = entry.seq;
        }
        // PUBREL goes out once this is durable (see [`SessionHandle::take_ticket`]):
        // a restart must not send the message again after its release.
        st.set_inflight_state(
            &self.session.client_id,
            seq,
            Some((packet_id, InflightPhase::AwaitingComp)),
        );
        true
    }

    /// The latest commit ticket of this session's own changes (incoming
    /// QoS 2 ids, outgoing PUBREL state), taken: the connection holds its
    /// PUBREC / PUBREL / PUBCOMP until it resolves.
    pub fn take_ticket(&self) -> Option<CommitTicket> {
        self.session.state.lock().last_ticket.take()
    }

    fn complete(&self, packet_id: u16, phase: InflightPhase) -> bool {
        let mut st = self.session.state.lock();
        if !self.owns(&st) {
            return false;
        }
        match st
            .inflight
            .iter()
            .position(|i| i.packet_id == packet_id && i.phase == phase)
        {
            Some(pos) => {
                if let Some(entry) = st.inflight.remove(pos) {
                    st.forget(entry.seq);
                }
                true
            }
            None => false,
        }
    }

    /// Number of outgoing messages awaiting acknowledgement.
    pub fn inflight_len(&self) -> usize {
        self.session.inflight_len()
    }

    /// In-session retransmission (allowed by MQTT 3.x only): the inflight
    /// messages sent at least `interval` ago, marked sent now, and when the
    /// next one falls due.
    pub fn retry_due(&self, now: Instant, interval: Duration) -> (Vec<Resend>, Option<Instant>) {
        let mut st = self.session.state.lock();
        if !self.owns(&st) {
            return (Vec::new(), None);
        }
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        for i in st.inflight.iter_mut() {
            if now.saturating_duration_since(i.sent_at) >= interval {
                i.sent_at = now;
                due.push(resend_of(i));
            }
            let at = i.sent_at + interval;
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        (due, next)
    }

    /// Register an incoming QoS 2 packet id (PUBLISH received at `now`).
    /// Ids that have waited longer than `await_rel_timeout` for their PUBREL
    /// are forgotten first when the table is full.
    pub fn begin_incoming_qos2(
        &self,
        packet_id: u16,
        max_awaiting: usize,
        now: Instant,
        await_rel_timeout: Duration,
    ) -> IncomingQos2 {
        let mut st = self.session.state.lock();
        if st.incoming_qos2.contains_key(&packet_id) {
            return IncomingQos2::Duplicate;
        }
        if st.incoming_qos2.len() >= max_awaiting {
            st.incoming_qos2
                .retain(|_, since| now.saturating_duration_since(*since) < await_rel_timeout);
        }
        if st.incoming_qos2.len() >= max_awaiting {
            IncomingQos2::Full
        } else {
            st.incoming_qos2.insert(packet_id, now);
            if st.store.is_some() {
                // Submitted before the message is routed, so it is durable
                // no later than the message: a restart never routes a
                // resent PUBLISH twice.
                st.emit(StoreOp::Qos2Put {
                    client_id: self.session.client_id.clone(),
                    packet_id,
                });
            }
            IncomingQos2::New
        }
    }

    /// PUBREL received: forget the id. False if it was not known.
    pub fn release_incoming_qos2(&self, packet_id: u16) -> bool {
        let mut st = self.session.state.lock();
        let known = st.incoming_qos2.remove(&packet_id).is_some();
        if known && st.store.is_some() {
            st.emit(StoreOp::Qos2Delete {
                client_id: self.session.client_id.clone(),
                packet_id,
            });
        }
        known
    }

    /// Number of incoming QoS 2 ids awaiting PUBREL.
    pub fn incoming_qos2_len(&self) -> usize {
        self.session.state.lock().incoming_qos2.len()
    }

    /// Change the session expiry interval (MQTT 5 DISCONNECT).
    pub fn set_expiry_interval(&self, seconds: u32) {
        let mut st = self.session.state.lock();
        if self.owns(&st) {
            st.expiry_interval = seconds;
        }
    }

    /// The session expiry interval in force.
    pub fn expiry_interval(&self) -> u32 {
        self.session.state.lock().expiry_interval
    }

    /// Replace (or, with `None`, delete) the will while connected
    /// (MQTT-SN WILLTOPICUPD / WILLMSGUPD). Ignored once the session was
    /// taken over.
    pub fn set_will(&self, will: Option<Will>) {
        let mut st = self.session.state.lock();
        if self.owns(&st) {
            st.will = will.map(SessionWill::boxed);
            // Online: the record holds no instants, so any `now` will do.
            self.session.save(&mut st, Instant::now());
        }
    }
}

impl SessionState {
    /// Read spilled deliveries back into memory until one is there; false
    /// when none could be: nothing spilled, the last spilled write not yet
    /// committed ([`SessionHandle::refill_ticket`]), or a failed read
    /// (counted; tried again on the next take).
    pub(crate) fn refill(&mut self, client_id: &ClientId, metrics: &Metrics) -> bool {
        if !self.mailbox.is_spilling() {
            return false;
        }
        let Some(store) = self.store.clone() else {
            return false;
        };
        let commits = store.commits();
        let inflight: Vec<u64> = self.inflight.iter().map(|i| i.seq).collect();
        while self.mailbox.front().is_none() {
            let mut skipped = Vec::new();
            let r = self.mailbox.refill(
                REFILL_BATCH,
                |t| {
                    commits
                        .as_ref()
                        .is_none_or(|c| c.state(t) != TicketState::Pending)
                },
                |from, max| store.load_queue(client_id, from, max),
                |seq| inflight.contains(&seq),
                |seq| skipped.push(seq),
            );
            for seq in skipped {
                self.forget(seq);
            }
            match r {
                Ok(Refill::Loaded) => {}
                Ok(Refill::Nothing | Refill::Wait(_)) => return false,
                Err(e) => {
                    metrics.inc(&metrics.store_read_failures);
                    tracing::debug!(client_id = %client_id, error = %e, "spilled queue not read back; retried later");
                    return false;
                }
            }
        }
        true
    }

    /// Hand `op` to the store (if persistent), keeping the latest ticket.
    pub(crate) fn emit(&mut self, op: StoreOp) -> Option<CommitTicket> {
        let ticket = self.store.as_ref()?.submit(op);
        self.last_ticket = later(self.last_ticket, ticket);
        ticket
    }

    /// A stored message is done: delete it.
    fn forget(&mut self, seq: u64) {
        if seq != 0 && self.store.is_some() {
            let client_id = self.info.client_id.clone();
            self.emit(StoreOp::MessageDelete { client_id, seq });
        }
    }

    fn set_inflight_state(
        &mut self,
        client_id: &ClientId,
        seq: u64,
        state: Option<(u16, InflightPhase)>,
    ) {
        if seq != 0 && self.store.is_some() {
            self.emit(StoreOp::InflightPut {
                client_id: client_id.clone(),
                seq,
                state,
            });
        }
    }

    /// Put a restored message back: queued, or inflight under its packet id.
    pub(crate) fn restore_message(
        &mut self,
        seq: u64,
        delivery: Delivery,
        inflight: Option<(u16, InflightPhase)>,
        now: Instant,
    ) {
        match inflight {
            Some((packet_id, phase)) => {
                self.next_packet_id = packet_id.checked_add(1).unwrap_or(1).max(1);
                self.inflight.push_back(Inflight {
                    packet_id,
                    seq,
                    delivery,
                    phase,
                    sent_at: now,
                });
            }
            None => self.mailbox.push(Pending { seq, delivery }, now),
        }
    }

    /// Put a restored incoming QoS 2 id back.
    pub(crate) fn restore_incoming_qos2(&mut self, packet_id: u16, now: Instant) {
        self.incoming_qos2.insert(packet_id, now);
    }
}

fn next_free_packet_id(st: &mut SessionState) -> Option<u16> {
    if st.inflight.len() >= usize::from(u16::MAX) {
        return None;
    }
    loop {
        let id = st.next_packet_id;
        st.next_packet_id = if id == u16::MAX { 1 } else { id + 1 };
        // Ids are handed out in order and inflight keeps send order, so the
        // inflight ids lie on the circular range front..=back: an id outside
        // it is free without a scan (the scan is needed only after a wrap).
        let in_range = match (st.inflight.front(), st.inflight.back()) {
            (Some(front), Some(back)) => {
                let (lo, hi) = (front.packet_id, back.packet_id);
                if lo <= hi {
                    (lo..=hi).contains(&id)
                } else {
                    id >= lo || id <= hi
                }
            }
            _ => false,
        };
        if !in_range || !st.inflight.iter().any(|i| i.packet_id == id) {
            return Some(id);
        }
    }
}

/// Messages to resend on resume, in their original order, marked DUP.
pub(crate) fn resend_list(st: &mut SessionState, now: Instant) -> Vec<Resend> {
    st.inflight
        .iter_mut()
        .map(|i| {
            i.sent_at = now;
            resend_of(i)
        })
        .collect()
}

fn resend_of(i: &Inflight) -> Resend {
    match i.phase {
        InflightPhase::AwaitingComp => Resend::PubRel(i.packet_id),
        _ => Resend::Publish(Outgoing {
            packet_id: Some(i.packet_id),
            delivery: i.delivery.clone(),
            dup: true,
        }),
    }
}
