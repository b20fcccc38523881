//! The CoAP gateway channel: one peer's state, sans-IO.
//!
//! The driver feeds it datagrams, core wake-ups and the time; it answers
//! through the [`MessageLayer`] and calls the core [`Broker`] for
//! publishing, subscribing, retained messages, authentication and ACL. It
//! never touches a socket or reads a clock.
//!
//! ```text
//!                 POST /mqtt/connection            DELETE / heartbeat timeout / kick
//!   Connectionless ─────────────────────▶ Connected ────────────────────────────▶ Connectionless
//!     │ GET+Observe=0: a session is opened for the observers,
//!     │ closed again when the last observer goes
//!     ▼
//!   idle (no session, nothing remembered): the driver may drop the peer
//! ```
//!
//! One peer has at most one core session: the connection's, or the one
//! opened for its observers in connectionless mode. Deliveries are taken
//! from the session at once and completed in the core; from there the
//! CoAP layer is the reliability layer (CON notifications retransmitted,
//! one in flight per observer, a bounded queue behind it).
//!
//! Errors become responses in one place, [`Channel::rescue`]: a code and a
//! diagnostic payload (RFC 7252 §5.5.2).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::debug;
use tributary_core::ack::HeldAcks;
use tributary_core::auth::{AuthFuture, AuthOutcome};
use tributary_core::connection::Limit;
use tributary_core::intake::Publisher;
use tributary_core::storage::{CommitTicket, Commits, TicketState};
use tributary_core::{
    Broker, ClientInfo, CloseKind, ConnectionSignal, KickReason, QoS, SessionHandle,
};

use crate::block::{Assembler, Block2Store};
use crate::layer::{response, MessageLayer, Received, TransmissionParams};
use crate::msg::{opt, Code, Message, MessageType};
use crate::observe::Observers;

/// How notifications are sent (`notify_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyType {
    /// QoS 0 → NON, QoS 1/2 → CON.
    Qos,
    /// Always CON.
    Con,
    /// Always NON.
    Non,
}

/// QoS of a publish or subscription without a `qos` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosPolicy {
    /// From the request's type: NON → QoS 0, CON → QoS 1.
    Coap,
    /// Always this QoS.
    Fixed(QoS),
}

impl QosPolicy {
    /// The QoS for a request of type `mtype`.
    pub fn for_request(self, mtype: MessageType) -> QoS {
        match self {
            QosPolicy::Coap if mtype == MessageType::Con => QoS::AtLeastOnce,
            QosPolicy::Coap => QoS::AtMostOnce,
            QosPolicy::Fixed(q) => q,
        }
    }
}

/// Channel settings, shared by every peer of a listener.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// Topic prefix added on the way in (`${clientid}` and `${username}` expand).
    pub mountpoint: String,
    /// Every request must belong to a connection (`/mqtt/connection`).
    pub connection_required: bool,
    /// Notification message type.
    pub notify_type: NotifyType,
    /// Default publish QoS.
    pub publish_qos: QosPolicy,
    /// Default subscription QoS.
    pub subscribe_qos: QosPolicy,
    /// A connection without a request for 1.5 × this is closed.
    pub heartbeat: Duration,
    /// Observations per peer.
    pub max_observers: usize,
    /// Notifications queued per observer behind an unacknowledged CON.
    pub notify_queue_len: usize,
    /// SZX of the blocks we send (6 = 1024 bytes).
    pub block_szx: u8,
    /// Largest request body (Block1 assembly) accepted.
    pub max_body_size: usize,
    /// Block transfers (each direction) in progress per peer.
    pub max_block_transfers: usize,
    /// RFC 7252 §4.8 parameters.
    pub transmission: TransmissionParams,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            mountpoint: String::new(),
            connection_required: false,
            notify_type: NotifyType::Qos,
            publish_qos: QosPolicy::Coap,
            subscribe_qos: QosPolicy::Coap,
            heartbeat: Duration::from_secs(30),
            max_observers: 100,
            notify_queue_len: 100,
            block_szx: 6,
            max_body_size: 1024 * 1024,
            max_block_transfers: 4,
            transmission: TransmissionParams::default(),
        }
    }
}

/// What an observer watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObsKey {
    /// Filter as subscribed in the core (mountpoint applied, maybe `$share/…`).
    pub(crate) filter: Arc<str>,
    /// Plain filter, for matching delivered topics.
    pub(crate) plain: Arc<str>,
    /// The observed path (`ps/a/b`): where later blocks of a large
    /// notification are requested.
    pub(crate) path: String,
}

/// The peer's core session.
#[derive(Debug)]
pub(crate) struct PeerSession {
    pub(crate) handle: SessionHandle,
    pub(crate) client: ClientInfo,
    pub(crate) mountpoint: String,
}

/// A `/mqtt/connection` connection; the driver's watchdog closes it after
/// 1.5 × `heartbeat` without a request that proves it.
#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) token: String,
}

/// A refused request: the response code and a diagnostic (RFC 7252 §5.5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// Response code.
    pub code: Code,
    /// Diagnostic payload.
    pub why: &'static str,
    /// Size1 to announce (4.13).
    pub size1: Option<u32>,
    /// Not a refusal: the request waits for an authentication backend.
    pub(crate) parked: bool,
}

impl Reject {
    /// The request is parked until authentication answers (no response yet).
    pub(crate) fn parked() -> Reject {
        Reject {
            code: Code::UNAUTHORIZED,
            why: "waiting for authentication",
            size1: None,
            parked: true,
        }
    }

    /// A rejection with `code` and a diagnostic.
    pub fn new(code: Code, why: &'static str) -> Reject {
        Reject {
            code,
            why,
            size1: None,
            parked: false,
        }
    }
}

/// How many deliveries one wake-up turns into notifications at most.
const SEND_BATCH: usize = 256;

/// One peer's CoAP state.
pub struct Channel {
    pub(crate) broker: Arc<Broker>,
    pub(crate) config: Arc<ChannelConfig>,
    pub(crate) peer: SocketAddr,
    pub(crate) layer: MessageLayer,
    pub(crate) observers: Observers<ObsKey>,
    pub(crate) block1: Assembler<String>,
    pub(crate) block2: Block2Store<String>,
    pub(crate) session: Option<PeerSession>,
    pub(crate) conn: Option<Connection>,
    pub(crate) etag: u32,
    /// Authentication that answers later (ADR 0011): the decision for the
    /// driver, the request it holds and the credentials it is about, the
    /// answer once known, and datagrams that arrived meanwhile.
    pub(crate) auth: AuthWait,
    /// The side of the core's intake of the client publishing now (rates,
    /// congestion); replaced when another client id publishes.
    pub(crate) intake: Option<Publisher>,
    /// Responses to publishes, held until their store writes are durable.
    pub(crate) held: HeldAcks<(Message, Message)>,
    /// The ticket of the publish being handled, for its response.
    pub(crate) admitted: Option<CommitTicket>,
    /// The datagram being handled proved the peer's connection (or showed
    /// life without one): it restarts the driver's idle window.
    pub(crate) proved: bool,
}

/// A request parked while an authentication backend decides.
#[derive(Default)]
pub(crate) struct AuthWait {
    pub(crate) future: Option<AuthFuture>,
    pub(crate) request: Option<Message>,
    pub(crate) key: Option<AuthKey>,
    pub(crate) answer: Option<(AuthKey, AuthOutcome)>,
    pub(crate) held: VecDeque<Bytes>,
}

/// The credentials an authentication answer is for.
pub(crate) type AuthKey = (Arc<str>, Option<String>, Option<Vec<u8>>);

/// Datagrams kept while a request waits for authentication; more are dropped.
const HELD_DATAGRAMS: usize = 64;

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("peer", &self.peer)
            .field("client_id", &self.client_id())
            .field("observers", &self.observers.len())
            .finish()
    }
}

impl Channel {
    /// A channel for `peer`; `seed` feeds its random generator (message
    /// ids, tokens, back-off jitter).
    pub fn new(
        broker: Arc<Broker>,
        config: Arc<ChannelConfig>,
        peer: SocketAddr,
        seed: u64,
    ) -> Channel {
        let lifetime = config.transmission.exchange_lifetime;
        Channel {
            layer: MessageLayer::new(config.transmission, seed),
            observers: Observers::new(config.max_observers, config.notify_queue_len),
            block1: Assembler::new(config.max_block_transfers, config.max_body_size, lifetime),
            block2: Block2Store::new(config.max_block_transfers, lifetime),
            session: None,
            conn: None,
            etag: 0,
            auth: AuthWait::default(),
            intake: None,
            held: HeldAcks::new(broker.persistence().commits()),
            admitted: None,
            proved: false,
            broker,
            config,
            peer,
        }
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The client id of the peer's session, if it has one.
    pub fn client_id(&self) -> Option<&str> {
        self.session.as_ref().map(|s| &*s.client.client_id)
    }

    /// Number of observations.
    pub fn observer_count(&self) -> usize {
        self.observers.len()
    }

    /// True while a `/mqtt/connection` connection is open.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// The wake-up signal of the peer's session; it changes when a session
    /// is opened or closed, so the driver asks again after every event.
    pub fn signal(&self) -> Option<Arc<ConnectionSignal>> {
        self.session.as_ref().map(|s| s.handle.signal.clone())
    }

    /// Datagrams to send to the peer, in order.
    pub fn take_output(&mut self) -> Vec<Bytes> {
        self.layer.take_output()
    }

    /// True when datagrams are waiting.
    pub fn has_output(&self) -> bool {
        self.layer.has_output()
    }

    /// When [`Channel::handle_timeout`] is next needed.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.layer.next_deadline(),
            self.intake.as_ref().and_then(Publisher::throttled_until),
            self.block1.next_deadline(),
            self.block2.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Nothing left for this peer: no session, no exchange remembered, no
    /// transfer in progress. The driver may forget it.
    pub fn is_idle(&self) -> bool {
        self.session.is_none()
            && !self.is_authenticating()
            && self.layer.is_idle()
            && self.block1.is_empty()
            && self.block2.is_empty()
    }

    /// An authentication decision the driver must await and pass to
    /// [`Channel::handle_auth_result`]. Until then the request that needs it
    /// gets no response and later datagrams are held, in order.
    pub fn take_auth_future(&mut self) -> Option<AuthFuture> {
        self.auth.future.take()
    }

    /// True while a request waits for an authentication backend.
    pub fn is_authenticating(&self) -> bool {
        self.auth.request.is_some()
    }

    /// The authentication backend answered: handle the parked request with
    /// that answer, then the datagrams held meanwhile.
    pub fn handle_auth_result(&mut self, outcome: AuthOutcome, now: Instant) {
        let (Some(request), Some(key)) = (self.auth.request.take(), self.auth.key.take()) else {
            return;
        };
        self.auth.answer = Some((key, outcome));
        self.handle_request(request, now);
        self.auth.answer = None;
        while !self.is_authenticating() {
            let Some(d) = self.auth.held.pop_front() else {
                break;
            };
            self.handle_datagram(&d, now);
        }
    }

    /// One datagram from the peer. True when it proved the peer's
    /// connection (a request with its clientid and token, or any request
    /// without a connection): the driver's idle window starts again.
    pub fn handle_datagram(&mut self, data: &[u8], now: Instant) -> bool {
        self.proved = false;
        self.receive(data, now);
        self.proved
    }

    fn receive(&mut self, data: &[u8], now: Instant) {
        if self.is_authenticating() {
            if self.auth.held.len() < HELD_DATAGRAMS {
                self.auth.held.push_back(Bytes::copy_from_slice(data));
            }
            return;
        }
        match self.layer.receive(data, now) {
            Received::Request(m) => {
                self.handle_request(m, now);
            }
            Received::Acknowledged { message_id, .. } => {
                self.observers.on_ack(message_id, &mut self.layer, now);
            }
            Received::Reset { message_id, token } => {
                if let Some((_, key)) =
                    self.observers
                        .on_failure(message_id, token, &mut self.layer)
                {
                    debug!(peer = %self.peer, filter = %key.filter, "observation reset by the client");
                    self.release(&key, now);
                }
            }
            Received::Malformed(e) => {
                let m = self.broker.metrics();
                m.inc(&m.packets_malformed);
                debug!(peer = %self.peer, error = %e, "malformed CoAP message");
            }
            Received::Duplicate => {
                debug!(peer = %self.peer, "duplicate message answered from the cache");
            }
            // This endpoint sends no requests, so a response is stray.
            Received::Response(_) | Received::Ping | Received::Ignored => {}
        }
    }

    fn handle_request(&mut self, m: Message, now: Instant) {
        self.admitted = None;
        match self.route(&m, now) {
            Ok(Some(r)) => match self.admitted.take() {
                // A publish the store must keep: answered once it is durable.
                Some(ticket) => {
                    if let Some(((m, r), state)) = self.held.hold((m.clone(), r), Some(ticket)) {
                        self.answer_durable(&m, r, state, now);
                    }
                }
                None => self.reply(&m, r, now),
            },
            Ok(None) => {}
            Err(reject) if reject.parked => {
                self.auth.request = Some(m);
                return;
            }
            Err(reject) => self.rescue(&m, reject, now),
        }
        // Retained messages queued by a new subscription go out after its response.
        self.poll_deliveries(now);
    }

    /// Send `r` for `request`, unless the client asked for no response of
    /// that class (RFC 7967: bit 2 = 2.xx, 8 = 4.xx, 16 = 5.xx).
    pub(crate) fn reply(&mut self, request: &Message, r: Message, now: Instant) {
        let suppress = request
            .uint_option(opt::NO_RESPONSE)
            .and_then(Result::ok)
            .unwrap_or(0);
        let bit = match r.code.class() {
            2 => 2,
            4 => 8,
            5 => 16,
            _ => 0,
        };
        if suppress & bit != 0 {
            self.layer.respond_nothing(request);
        } else {
            self.layer.respond(request, r, now);
        }
    }

    /// The one place a refusal becomes a response.
    pub(crate) fn rescue(&mut self, request: &Message, reject: Reject, now: Instant) {
        debug!(peer = %self.peer, code = %reject.code, why = reject.why, "request refused");
        let mut r = response(reject.code);
        if let Some(size) = reject.size1 {
            r.add_uint_option(opt::SIZE1, size);
        }
        r.payload = Bytes::from_static(reject.why.as_bytes());
        self.reply(request, r, now);
    }

    /// The core woke the peer: deliveries to notify, or a kick.
    pub fn handle_wake(&mut self, now: Instant) {
        let Some(s) = &self.session else { return };
        match s.handle.signal.kicked() {
            None => self.poll_deliveries(now),
            Some(KickReason::Takeover) => {
                debug!(peer = %self.peer, client_id = ?self.client_id(), "session taken over");
                self.end_observations("session taken over", now);
                // The session belongs to the new owner: nothing to close.
                self.forget_session(None, now);
            }
            Some(KickReason::Administrative) => {
                self.end_observations("kicked", now);
                self.forget_session(Some(CloseKind::Abnormal), now);
            }
            Some(KickReason::ServerShutdown) => self.shutdown(now),
        }
    }

    /// Retransmissions, observers given up on, heartbeat and transfer expiry.
    pub fn handle_timeout(&mut self, now: Instant) {
        for gave_up in self.layer.handle_timeout(now) {
            if let Some((_, key)) =
                self.observers
                    .on_failure(gave_up.message_id, gave_up.token, &mut self.layer)
            {
                debug!(peer = %self.peer, filter = %key.filter,
                       "notification never acknowledged; observer removed [RFC 7641 §4.5]");
                self.release(&key, now);
            }
        }
        if let Some(intake) = self.intake.as_mut() {
            intake.resume(now);
        }
        self.block1.expire(now);
        self.block2.expire(now);
    }

    /// The driver's watchdog tripped `limit`: a connection without
    /// heartbeat ends (its observers are told, 5.03).
    pub fn handle_limit(&mut self, limit: Limit, now: Instant) {
        debug!(peer = %self.peer, client_id = ?self.client_id(), limit = limit.name(), "connection closed");
        self.end_observations("connection expired", now);
        self.forget_session(Some(CloseKind::Abnormal), now);
    }

    /// How long a `/mqtt/connection` connection lives without a request
    /// that proves it; `None` without one.
    pub fn heartbeat_window(&self) -> Option<Duration> {
        self.conn
            .as_ref()
            .map(|_| self.config.heartbeat.mul_f64(1.5))
    }

    /// Responses waiting for the store, and the ticket of the oldest.
    pub fn held_commit(&self) -> Option<(Arc<Commits>, CommitTicket)> {
        let commits = self.held.commits()?.clone();
        let refill = self.session.as_ref().and_then(|s| s.handle.refill_ticket());
        let ticket = match (self.held.oldest(), refill) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some((commits, ticket))
    }

    /// True when so many responses wait for the store that the driver
    /// should stop feeding datagrams.
    pub fn holds_too_many(&self) -> bool {
        self.held.is_full()
    }

    /// Input is paused until then (over the client's rate, throttle mode).
    pub fn read_paused_until(&self) -> Option<Instant> {
        self.intake.as_ref().and_then(Publisher::throttled_until)
    }

    /// True when a publish filled a subscriber's mailbox.
    pub fn is_backpressured(&self) -> bool {
        self.intake.as_ref().is_some_and(Publisher::is_congested)
    }

    /// The sessions to wait for before reading more from this peer.
    pub fn take_backpressure(&mut self) -> Vec<Arc<tributary_core::session::Session>> {
        self.intake
            .as_mut()
            .map(Publisher::take_congestion)
            .unwrap_or_default()
    }

    /// Answer the publishes whose commits are done, in order, and take
    /// deliveries a spilled queue was waiting to read back.
    pub fn release_durable(&mut self, now: Instant) {
        while let Some(((request, response), state)) = self.held.release() {
            self.answer_durable(&request, response, state, now);
        }
        if self
            .session
            .as_ref()
            .is_some_and(|s| s.handle.refill_ticket().is_some())
        {
            self.poll_deliveries(now);
        }
    }

    /// The response to a publish whose store write is done; a failed
    /// write is refused (5.03): the message is not kept.
    fn answer_durable(
        &mut self,
        request: &Message,
        response: Message,
        state: TicketState,
        now: Instant,
    ) {
        if state == TicketState::Failed {
            let m = self.broker.metrics();
            m.inc(&m.store_refused);
            return self.rescue(
                request,
                Reject::new(Code::SERVICE_UNAVAILABLE, "the message could not be stored"),
                now,
            );
        }
        self.reply(request, response, now);
    }

    /// The server is shutting down: observers are told (5.03), the session closed.
    pub fn shutdown(&mut self, now: Instant) {
        self.end_observations("server shutting down", now);
        self.forget_session(
            Some(CloseKind::Normal {
                publish_will: false,
            }),
            now,
        );
    }

    /// The driver is dropping the peer: close the session. Idempotent.
    pub fn finish(&mut self, now: Instant) {
        self.forget_session(
            Some(CloseKind::Normal {
                publish_will: false,
            }),
            now,
        );
    }

    fn end_observations(&mut self, why: &'static str, now: Instant) {
        if self.observers.is_empty() {
            return;
        }
        let mut m = response(Code::SERVICE_UNAVAILABLE);
        m.payload = Bytes::from_static(why.as_bytes());
        self.observers.end_all(&m, &mut self.layer, now);
    }

    /// Drop the session (closing it in the core with `close`, if given),
    /// its connection and its observers.
    pub(crate) fn forget_session(&mut self, close: Option<CloseKind>, now: Instant) {
        let tokens: Vec<_> = self.observers.iter().map(|(t, _)| t).collect();
        for t in tokens {
            self.observers.deregister(t, &mut self.layer);
        }
        self.conn = None;
        if let Some(s) = self.session.take() {
            if let Some(kind) = close {
                self.broker.close_session(&s.handle, kind, now);
            }
        }
    }

    /// An observer of `key` went away: drop the core subscription when it
    /// was the last on that filter, and a connectionless session when it
    /// was the last observer.
    pub(crate) fn release(&mut self, key: &ObsKey, now: Instant) {
        let still_watched = self.observers.iter().any(|(_, k)| k.filter == key.filter);
        if !still_watched {
            if let Some(s) = &self.session {
                self.broker.unsubscribe(&s.handle, &key.filter);
            }
        }
        if self.observers.is_empty() && self.conn.is_none() {
            self.forget_session(
                Some(CloseKind::Normal {
                    publish_will: false,
                }),
                now,
            );
        }
    }

    /// Take deliveries from the session and notify the matching observers.
    pub fn poll_deliveries(&mut self, now: Instant) {
        let Some(s) = &self.session else { return };
        let handle = s.handle.clone();
        let broker = self.broker.clone();
        let metrics = broker.metrics();
        let out = handle.take_for_send(now, SEND_BATCH, usize::MAX, metrics, |_| true);
        if out.len() == SEND_BATCH && handle.has_sendable(usize::MAX) {
            handle.signal.wake();
        }
        for o in out {
            // The CoAP layer takes over reliability from here.
            if let Some(id) = o.packet_id {
                match o.delivery.qos {
                    QoS::AtLeastOnce => {
                        handle.acknowledge(id);
                    }
                    QoS::ExactlyOnce => {
                        handle.received(id, true);
                        handle.complete_qos2(id);
                    }
                    QoS::AtMostOnce => {}
                }
            }
            let topic = &o.delivery.message.topic;
            let targets: Vec<_> = self
                .observers
                .iter()
                .filter(|(_, k)| tributary_core::topic::matches(topic, &k.plain))
                .map(|(t, k)| (t, k.path.clone()))
                .collect();
            for (token, path) in targets {
                let n = self.notification(&o.delivery, &path, now);
                match self.observers.notify(token, n, &mut self.layer, now) {
                    crate::observe::Notified::Queued { dropped } if dropped > 0 => {
                        metrics.add(&metrics.messages_dropped_queue_full, dropped as u64);
                    }
                    _ => {}
                }
                metrics.message_out("coap", o.delivery.qos);
            }
        }
    }
}
