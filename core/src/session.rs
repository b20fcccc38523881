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
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::message::{ClientId, Delivery, Message, QoS};
use crate::metrics::Metrics;
use crate::storage::{later, CommitTicket, Persistence, SessionRecord, StoreOp};

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

/// Why a connection is told to go away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum KickReason {
    /// Another connection took the session over (MQTT 5: 0x8E).
    Takeover = 1,
    /// An administrator kicked the client (0x98).
    Administrative = 2,
    /// The server is shutting down (0x8B).
    ServerShutdown = 3,
}

/// The per-connection wake-up and kick signal shared between the core and
/// the connection's driver task. A wake is remembered until the driver
/// sees it (like a stored permit); the driver can poll for it directly
/// ([`poll_notified`](Self::poll_notified)), so waiting for it keeps no
/// future in the connection's state. One task waits on a signal.
#[derive(Debug, Default)]
pub struct ConnectionSignal {
    woken: AtomicBool,
    waker: atomic_waker::AtomicWaker,
    kicked: AtomicU8,
}

impl ConnectionSignal {
    /// A fresh signal.
    pub fn new() -> Arc<ConnectionSignal> {
        Arc::new(ConnectionSignal::default())
    }

    /// Wake the connection (remembered if it is not waiting).
    pub fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready (and the wake consumed) once [`wake`](Self::wake) was called
    /// since the last time; otherwise registers `cx` to be woken.
    pub fn poll_notified(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.woken.swap(false, Ordering::AcqRel) {
            return std::task::Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.woken.swap(false, Ordering::AcqRel) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }

    /// Wait until woken.
    pub async fn notified(&self) {
        std::future::poll_fn(|cx| self.poll_notified(cx)).await;
    }

    /// Tell the connection to close for `reason`, and wake it.
    pub fn kick(&self, reason: KickReason) {
        self.kicked.store(reason as u8, Ordering::Release);
        self.wake();
    }

    /// Why the connection was kicked, if it was.
    pub fn kicked(&self) -> Option<KickReason> {
        match self.kicked.load(Ordering::Acquire) {
            1 => Some(KickReason::Takeover),
            2 => Some(KickReason::Administrative),
            3 => Some(KickReason::ServerShutdown),
            _ => None,
        }
    }
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
    /// Whether QoS 0 messages are queued while the client is offline.
    pub store_qos0: bool,
    /// What to drop when full.
    pub overflow: Overflow,
}

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

/// A queued delivery with its store sequence number (0 = not stored).
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) seq: u64,
    pub(crate) delivery: Delivery,
}

/// A map inside a session: a fixed hasher instead of a random one saves
/// its two words in every session, and the keys (a client's own filters and
/// packet ids) only ever collide with that client's own.
pub(crate) type SessionMap<K, V> =
    HashMap<K, V, std::hash::BuildHasherDefault<std::hash::DefaultHasher>>;

#[derive(Debug)]
pub(crate) struct SessionState {
    pub(crate) subscriptions: SessionMap<Arc<str>, SubOptions>,
    queue: VecDeque<Pending>,
    inflight: VecDeque<Inflight>,
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
    pub(crate) will: Option<Box<Will>>,
    pub(crate) will_due: Option<Instant>,
    pub(crate) expires_at: Option<Instant>,
    pub(crate) info: ClientInfo,
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
    ) -> Session {
        Session::build(info, Some(owner), expiry_interval, will, None)
    }

    /// A session with an empty mailbox: online when it has an owner.
    fn build(
        info: ClientInfo,
        owner: Option<Arc<ConnectionSignal>>,
        expiry_interval: u32,
        will: Option<Will>,
        store: Option<Arc<dyn Persistence>>,
    ) -> Session {
        Session {
            client_id: info.client_id.clone(),
            online: AtomicBool::new(owner.is_some()),
            room: Notify::new(),
            state: Mutex::new(SessionState {
                subscriptions: SessionMap::default(),
                queue: VecDeque::new(),
                inflight: VecDeque::new(),
                next_packet_id: 1,
                incoming_qos2: SessionMap::default(),
                store,
                last_ticket: None,
                owner,
                expiry_interval,
                will: will.map(Box::new),
                will_due: None,
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
    ) -> bool {
        self.deliver_flow(delivery, limits, metrics).0 != Queued::Dropped
    }

    /// Queue a delivery and say whether the publisher should pause.
    ///
    /// QoS 0 deliveries, and any delivery to an offline session, follow the
    /// overflow policy once the mailbox is full. A QoS 1/2 delivery to an
    /// online session was acknowledged to its publisher (or is about to
    /// be), so it is queued beyond the bound instead — up to twice the
    /// bound — and [`Queued::OverLimit`] asks the publishing connection to
    /// stop reading until this session has room again.
    ///
    /// A QoS 1/2 delivery to a persistent session is also handed to the
    /// store; the returned ticket resolves when it is durable.
    pub(crate) fn deliver_flow(
        &self,
        delivery: Delivery,
        limits: &QueueLimits,
        metrics: &Metrics,
    ) -> (Queued, Option<CommitTicket>) {
        let mut st = self.state.lock();
        if st.owner.is_none() && delivery.qos == QoS::AtMostOnce && !limits.store_qos0 {
            metrics.inc(&metrics.messages_dropped_offline_qos0);
            return (Queued::Dropped, None);
        }
        let mut outcome = Queued::Yes;
        if st.queue.len() >= limits.max_len
            && st.owner.is_some()
            && delivery.qos != QoS::AtMostOnce
            && st.queue.len() < limits.max_len.saturating_mul(2)
        {
            metrics.inc(&metrics.publish_backpressure);
            outcome = Queued::OverLimit;
        } else if st.queue.len() >= limits.max_len {
            metrics.inc(&metrics.messages_dropped_queue_full);
            match limits.overflow {
                Overflow::DropNewest => return (Queued::Dropped, None),
                Overflow::DropOldest => {
                    if let Some(old) = st.queue.pop_front() {
                        st.forget(old.seq);
                    }
                }
            }
        }
        let mut ticket = None;
        let mut seq = 0;
        if delivery.qos != QoS::AtMostOnce {
            if let Some(store) = &st.store {
                seq = store.next_seq();
                ticket = store.submit(StoreOp::MessagePut {
                    client_id: self.client_id.clone(),
                    seq,
                    delivery: delivery.clone(),
                });
            }
        }
        // One wake-up per batch: a non-empty mailbox means the owner has
        // been woken already and will drain it (or is waiting for its
        // inflight window, and acknowledgements make it look again).
        let was_empty = st.queue.is_empty();
        st.queue.push_back(Pending { seq, delivery });
        if was_empty {
            if let Some(owner) = &st.owner {
                owner.wake();
            }
        }
        (outcome, ticket)
    }

    /// True while publishers should wait before adding to this session:
    /// it is online and its mailbox holds `max_len` or more.
    pub fn is_congested(&self, max_len: usize) -> bool {
        let st = self.state.lock();
        st.owner.is_some() && st.queue.len() >= max_len
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
        let mut st = self.state.lock();
        for d in deliveries.into_iter().rev() {
            st.queue.push_front(d);
        }
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
        let queue = std::mem::take(&mut st.queue);
        for d in queue {
            if d.delivery.shared.is_some() && d.delivery.qos != QoS::AtMostOnce {
                out.push(d);
            } else {
                st.queue.push_back(d);
            }
        }
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
            will: st.will.as_deref().cloned(),
            will_due_ms: st
                .will_due
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
    ) -> Session {
        Session::build(info, None, expiry_interval, None, Some(store))
    }

    /// Current number of pending (not yet sent) deliveries.
    pub fn queue_len(&self) -> usize {
        self.state.lock().queue.len()
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
        let mut out = Vec::with_capacity(st.queue.len().min(max));
        while out.len() < max {
            let Some(front) = st.queue.front() else { break };
            if front.delivery.qos != QoS::AtMostOnce && st.inflight.len() >= window {
                break;
            }
            let Some(Pending { seq, delivery }) = st.queue.pop_front() else {
                break;
            };
            if delivery.message.is_expired(now) {
                metrics.inc(&metrics.messages_dropped_expired);
                st.forget(seq);
                continue;
            }
            if !accept(&delivery) {
                metrics.inc(&metrics.messages_dropped_too_large);
                st.forget(seq);
                continue;
            }
            if delivery.qos == QoS::AtMostOnce {
                out.push(Outgoing {
                    packet_id: None,
                    delivery,
                    dup: false,
                });
                continue;
            }
            let Some(packet_id) = next_free_packet_id(&mut st) else {
                st.queue.push_front(Pending { seq, delivery });
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
        st.queue
            .front()
            .is_some_and(|d| d.delivery.qos == QoS::AtMostOnce || st.inflight.len() < window)
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
            st.will = will.map(Box::new);
            // Online: the record holds no instants, so any `now` will do.
            self.session.save(&mut st, Instant::now());
        }
    }
}

impl SessionState {
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
            None => self.queue.push_back(Pending { seq, delivery }),
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
