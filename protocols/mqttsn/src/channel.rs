//! One MQTT-SN client's state machine, sans-IO (§6 of the 1.2 spec).
//!
//! The driver feeds it decoded messages, wake-ups from the core and the
//! current time; the channel calls the core [`Broker`] (sessions, routing,
//! retained messages, ACL and wills live there) and queues messages for the
//! driver to send. It never reads a clock and never touches a socket.
//!
//! ```text
//!            CONNECT(will)        WILLTOPIC          WILLMSG
//!   Idle ─────────────────▶ WaitWillTopic ───▶ WaitWillMsg ─────┐
//!    │ CONNECT(no will)          │ empty WILLTOPIC               │
//!    └───────────────────────────┴──────────────────────────────▶ Active ◀─────┐
//!                                                          DISCONNECT(d) │     │ CONNECT
//!   PINGREQ(client id) ┌──────────────┐  all buffered sent,              ▼     │
//!            ┌────────▶│    Awake     │─── PINGRESP ─────────────────▶ Asleep ─┘
//!            │         └──────────────┘                                 │
//!            └──────────────────────────────────────────────────────────┘
//!   DISCONNECT ─▶ Closed (session closed normally, no will)
//!   keep alive / sleep duration missed, Nretry exhausted ─▶ Closed (lost: will published)
//! ```
//!
//! - §6.3 connect with the will flow (WILLTOPICREQ/WILLMSGREQ); a CONNECT
//!   on a live channel re-connects (same client id, CleanSession 0: the
//!   session and topic registry are kept in place).
//! - §6.5 REGISTER from the client; the gateway REGISTERs a topic before
//!   its first PUBLISH to the client and holds later deliveries until the
//!   REGACK (§6.10), so the client never sees an unknown topic id.
//! - §6.8 QoS −1 (as QoS 0), §6.9 QoS 0/1/2 publish from the client with
//!   QoS 2 duplicates detected by the core, §6.10 QoS 0/1/2 to the client.
//! - §6.13 retransmission: unacknowledged PUBLISH, PUBREL and REGISTER are
//!   resent every `retry_interval` (Tretry) with DUP set; after
//!   `max_retries` (Nretry) the client is considered lost.
//! - §6.14 sleeping clients: deliveries wait in the session's bounded
//!   mailbox in the core (its overflow is counted there); PINGREQ with
//!   the client id flushes them and the gateway answers PINGRESP once
//!   nothing is outstanding.
//! - §6.4 will updates (WILLTOPICUPD/WILLMSGUPD) replace the will in the core.
//!
//! Errors and refusals become return codes in one place per direction:
//! `Channel::refuse_connect` for CONNACK, and the `InvalidTopicId` /
//! `NotSupported` / `Congestion` codes chosen next to each handler.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info};
use tributary_core::ack::HeldAcks;
use tributary_core::auth::{Action, AuthCheck, AuthFuture, AuthOutcome};
use tributary_core::connection::Limit;
use tributary_core::intake::{Publisher, Verdict};
use tributary_core::session::IncomingQos2;
use tributary_core::storage::{CommitTicket, Commits, TicketState};
use tributary_core::topic::has_wildcard;
use tributary_core::{
    Broker, ClientInfo, CloseKind, ConnectionSignal, KickReason, Message, Outgoing, Resend,
    SessionHandle, SessionRequest, SubOptions, Will,
};

use crate::codec::MAX_MESSAGE_LEN;
use crate::packet::{
    Connect, Packet, Publish, QoS, ReturnCode, SubTopic, Subscribe, TopicIdType, WillTopic,
};
use crate::topics::{Predefined, Registry};

/// Settings shared by every client of the gateway.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// GwId in GWINFO and ADVERTISE.
    pub gateway_id: u8,
    /// Prefix added to every topic on the way in and stripped on the way out.
    pub mountpoint: String,
    /// Predefined topic ids (client-visible names, before the mountpoint).
    pub predefined: Arc<Predefined>,
    /// Accept QoS −1 publishes (published as QoS 0).
    pub enable_qos3: bool,
    /// Where connection-less QoS −1 publishes may come from, as (address,
    /// prefix length) ranges; `None`: from anywhere (anonymous access is
    /// on). Set while anonymous access is off, so an unauthenticated
    /// datagram publishes only from a source the operator vouched for.
    pub qos3_sources: Option<Vec<(std::net::IpAddr, u8)>>,
    /// Tretry: how long to wait for an acknowledgement before resending.
    pub retry_interval: Duration,
    /// Nretry: resends before the client is considered lost.
    pub max_retries: u32,
    /// Bound on the will flow, and keep-alive used when a client asks for none.
    pub idle_timeout: Duration,
    /// A client is lost after `keepalive_multiplier ×` its keep alive (or
    /// its sleep duration) without a message.
    pub keepalive_multiplier: f64,
    /// Gateway→client QoS 1/2 messages awaiting acknowledgement.
    pub max_inflight: u16,
    /// Topics one client may register (both directions).
    pub max_registered_topics: usize,
    /// Incoming QoS 2 messages awaiting PUBREL.
    pub max_awaiting_rel: usize,
    /// How long an incoming QoS 2 id may wait for PUBREL before it can be forgotten.
    pub await_rel_timeout: Duration,
    /// Session expiry of a CleanSession = 0 client, seconds.
    pub session_expiry: u32,
    /// Longest client id accepted (the spec says 1–23 characters).
    pub max_clientid_len: usize,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            gateway_id: 1,
            mountpoint: String::new(),
            predefined: Arc::new(Predefined::default()),
            enable_qos3: true,
            qos3_sources: None,
            retry_interval: Duration::from_secs(10),
            max_retries: 5,
            idle_timeout: Duration::from_secs(30),
            keepalive_multiplier: 1.5,
            max_inflight: 1,
            max_registered_topics: 1000,
            max_awaiting_rel: 100,
            await_rel_timeout: Duration::from_secs(300),
            session_expiry: 7200,
            max_clientid_len: 64,
        }
    }
}

impl ChannelConfig {
    /// The core topic for a client-visible topic name.
    pub fn mount(&self, name: &str) -> String {
        format!("{}{name}", self.mountpoint)
    }

    /// The core filter for a client filter; `$share/{group}/` stays in front.
    pub fn mount_filter(&self, filter: &str) -> String {
        if let Some(rest) = filter.strip_prefix("$share/") {
            if let Some((group, f)) = rest.split_once('/') {
                return format!("$share/{group}/{}{f}", self.mountpoint);
            }
        }
        self.mount(filter)
    }

    /// The client topic name of an incoming PUBLISH, from its topic id:
    /// `None` when the id is unknown (answered with "invalid topic id").
    pub fn inbound_name(
        &self,
        registry: Option<&Registry>,
        kind: TopicIdType,
        id: u16,
    ) -> Option<Arc<str>> {
        match kind {
            TopicIdType::Normal => registry.and_then(|r| r.name(id)).cloned(),
            TopicIdType::Predefined => self.predefined.name(id).cloned(),
            TopicIdType::Short => std::str::from_utf8(&id.to_be_bytes()).ok().map(Into::into),
        }
    }
}

/// How many deliveries one wake-up turns into messages at most.
const SEND_BATCH: usize = 64;

/// Incoming QoS 1 message ids remembered for duplicate detection.
const RECENT_QOS1: usize = 16;

#[derive(Debug)]
enum State {
    /// Created for a datagram; nothing accepted yet.
    Idle,
    /// WILLTOPICREQ sent.
    WaitWillTopic(Connect),
    /// WILLMSGREQ sent.
    WaitWillMsg(Connect, WillTopic),
    /// CONNECT (and will) complete; an authentication backend is deciding.
    Authenticating(Box<ParkedConnect>),
    /// Connected and awake.
    Active,
    /// Asleep for `duration` seconds (§6.14).
    Asleep(u16),
    /// Woken by PINGREQ(client id): flushing what was kept.
    Awake(u16),
    /// Done; the driver sends the output and calls [`Channel::finish`].
    Closed,
}

/// A CONNECT waiting for an authentication backend's answer.
#[derive(Debug)]
struct ParkedConnect {
    connect: Connect,
    will: Option<(WillTopic, Bytes)>,
    client: ClientInfo,
}

/// A REGISTER sent to the client, awaiting its REGACK.
#[derive(Debug)]
struct Registering {
    topic_id: u16,
    msg_id: u16,
    name: Arc<str>,
    sent_at: Instant,
    retries: u32,
}

/// How an outgoing message's topic is named on the wire.
enum OutTopic {
    Ready(TopicIdType, u16),
    NeedsRegister(Arc<str>),
    Unsendable,
}

/// One client's MQTT-SN state.
pub struct Channel {
    broker: Arc<Broker>,
    config: Arc<ChannelConfig>,
    peer: Option<SocketAddr>,
    state: State,
    client: Option<ClientInfo>,
    keep_alive: u16,
    /// The session, from CONNACK until `finish`.
    handle: Option<SessionHandle>,
    /// The will as the client gave it, so one half can be updated.
    will: Option<(WillTopic, Bytes)>,
    registry: Registry,
    output: Vec<Packet>,
    /// An authentication decision for the driver to await.
    auth_future: Option<AuthFuture>,
    /// The client's side of the core's intake (rates, congestion), once
    /// connected.
    intake: Option<Publisher>,
    /// PUBACK / PUBREC / PUBCOMP waiting for the store.
    held: HeldAcks<Packet>,
    /// The forwarder's Wireless Node Id when the client sits behind one
    /// (§5.5): everything sent to it is encapsulated.
    forwarder: Option<Bytes>,
    /// When something unacknowledged is next due for resending.
    retry_at: Option<Instant>,
    /// Deliveries taken from the session but held behind a REGISTER.
    pending: VecDeque<Outgoing>,
    registering: Option<Registering>,
    /// Resends so far, by message id.
    retries: HashMap<u16, u32>,
    /// Message ids of gateway-initiated REGISTERs.
    next_msg_id: u16,
    /// Recently accepted incoming QoS 1 ids (DUP detection).
    recent_qos1: VecDeque<u16>,
    close_kind: CloseKind,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("peer", &self.peer)
            .field("state", &self.state)
            .field("client_id", &self.client_id())
            .finish()
    }
}

fn core_qos(q: QoS) -> tributary_core::QoS {
    match q {
        QoS::AtMostOnce | QoS::NoConnection => tributary_core::QoS::AtMostOnce,
        QoS::AtLeastOnce => tributary_core::QoS::AtLeastOnce,
        QoS::ExactlyOnce => tributary_core::QoS::ExactlyOnce,
    }
}

fn sn_qos(q: tributary_core::QoS) -> QoS {
    match q {
        tributary_core::QoS::AtMostOnce => QoS::AtMostOnce,
        tributary_core::QoS::AtLeastOnce => QoS::AtLeastOnce,
        tributary_core::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

impl Channel {
    /// A channel for a client first heard from at `now`.
    pub fn new(
        broker: Arc<Broker>,
        config: Arc<ChannelConfig>,
        peer: Option<SocketAddr>,
        now: Instant,
    ) -> Channel {
        let _ = now;
        let held = HeldAcks::new(broker.persistence().commits());
        let registry = Registry::new(config.max_registered_topics);
        Channel {
            broker,
            config,
            peer,
            state: State::Idle,
            client: None,
            keep_alive: 0,
            handle: None,
            will: None,
            registry,
            output: Vec::new(),
            auth_future: None,
            intake: None,
            held,
            forwarder: None,
            retry_at: None,
            pending: VecDeque::new(),
            registering: None,
            retries: HashMap::new(),
            next_msg_id: 1,
            recent_qos1: VecDeque::new(),
            close_kind: CloseKind::Abnormal,
        }
    }

    /// The client sits behind a forwarder with this Wireless Node Id (§5.5).
    pub fn set_forwarder(&mut self, node_id: Option<Bytes>) {
        self.forwarder = node_id;
    }

    /// The forwarder's Wireless Node Id, if any.
    pub fn forwarder(&self) -> Option<&Bytes> {
        self.forwarder.as_ref()
    }

    /// The client id once connected.
    pub fn client_id(&self) -> Option<&str> {
        self.client.as_ref().map(|c| &*c.client_id)
    }

    /// The signal that wakes this channel for deliveries and kicks.
    pub fn signal(&self) -> Option<Arc<ConnectionSignal>> {
        self.handle.as_ref().map(|h| h.signal.clone())
    }

    /// True once the channel is done (after its output is sent).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// True while the client sleeps (§6.14).
    pub fn is_asleep(&self) -> bool {
        matches!(self.state, State::Asleep(_))
    }

    /// When the driver must call [`Channel::handle_timeout`].
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.is_closed() {
            return None;
        }
        let throttle = self.intake.as_ref().and_then(Publisher::throttled_until);
        match (throttle, self.retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Messages to send, in order.
    pub fn take_output(&mut self) -> Vec<Packet> {
        std::mem::take(&mut self.output)
    }

    /// True when messages are waiting to be sent.
    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    fn metrics_malformed(&self) {
        self.broker
            .metrics()
            .inc(&self.broker.metrics().packets_malformed);
    }

    /// True once CONNACK accepted the client (awake or asleep).
    pub fn is_connected(&self) -> bool {
        matches!(
            self.state,
            State::Active | State::Awake(_) | State::Asleep(_)
        )
    }

    /// How long the client may stay silent: its keep alive (or
    /// `idle_timeout` when it asked for none) awake, its sleep duration
    /// asleep, times the multiplier (§6.14); `None` before CONNACK.
    pub fn silence_window(&self) -> Option<Duration> {
        let base = match self.state {
            State::Active | State::Awake(_) if self.keep_alive == 0 => self.config.idle_timeout,
            State::Active | State::Awake(_) => Duration::from_secs(u64::from(self.keep_alive)),
            State::Asleep(d) => Duration::from_secs(u64::from(d)),
            _ => return None,
        };
        Some(base.mul_f64(self.config.keepalive_multiplier))
    }

    /// The will flow and authentication must end within this.
    pub fn connect_window(&self) -> Duration {
        self.config.idle_timeout
    }

    /// Input is paused until then (over the client's rate, throttle mode).
    pub fn read_paused_until(&self) -> Option<Instant> {
        self.intake.as_ref().and_then(Publisher::throttled_until)
    }

    /// True when a publish filled a subscriber's mailbox.
    pub fn is_backpressured(&self) -> bool {
        self.intake.as_ref().is_some_and(Publisher::is_congested)
    }

    /// The sessions to wait for before reading more from this client.
    pub fn take_backpressure(&mut self) -> Vec<Arc<tributary_core::session::Session>> {
        self.intake
            .as_mut()
            .map(Publisher::take_congestion)
            .unwrap_or_default()
    }

    /// The store's commit progress and the ticket the connection waits for
    /// (its oldest held acknowledgement, or its session's spilled queue).
    pub fn commit_wait(&self) -> Option<(Arc<Commits>, CommitTicket)> {
        let commits = self.held.commits()?.clone();
        let refill = self.handle.as_ref().and_then(|h| h.refill_ticket());
        let ticket = match (self.held.oldest(), refill) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some((commits, ticket))
    }

    /// True when so many acknowledgements wait for the store that the
    /// driver should stop feeding datagrams.
    pub fn holds_too_many(&self) -> bool {
        self.held.is_full()
    }

    /// Release the acknowledgements whose commits are done, in order; a
    /// failed write turns a PUBACK into "congestion" (the client resends)
    /// and drops a PUBREC / PUBCOMP (the client retransmits).
    pub fn release_durable(&mut self, now: Instant) {
        while let Some((packet, state)) = self.held.release() {
            self.send_ack(packet, state);
        }
        if self
            .handle
            .as_ref()
            .is_some_and(|h| h.refill_ticket().is_some())
        {
            self.poll_deliveries(now);
        }
    }

    /// Queue an acknowledgement behind the store write it confirms.
    pub(crate) fn push_ack(&mut self, packet: Packet, ticket: Option<CommitTicket>) {
        if let Some((packet, state)) = self.held.hold(packet, ticket) {
            self.send_ack(packet, state);
        }
    }

    fn send_ack(&mut self, packet: Packet, state: TicketState) {
        if state != TicketState::Failed {
            return self.output.push(packet);
        }
        let m = self.broker.metrics();
        m.inc(&m.store_refused);
        if let Packet::PubAck {
            topic_id, msg_id, ..
        } = packet
        {
            self.output.push(Packet::PubAck {
                topic_id,
                msg_id,
                code: ReturnCode::Congestion,
            });
        }
    }

    /// The driver's watchdog tripped `limit`.
    pub fn handle_limit(&mut self, limit: Limit, now: Instant) {
        match (limit, &self.state) {
            (Limit::IdleTimeout, State::Asleep(_)) => {
                info!(client_id = ?self.client_id(), "sleep duration missed; client lost (§6.14)");
                self.lost();
            }
            (Limit::IdleTimeout, _) => {
                info!(client_id = ?self.client_id(), "keep alive expired; client lost (§6.3)");
                self.lost();
            }
            (Limit::WriteStall, _) => self.lost(),
            (_, State::Authenticating(_)) => {
                self.auth_future = None;
                self.refuse_connect(
                    ReturnCode::NotSupported,
                    "authentication did not answer in time",
                    now,
                );
            }
            _ => {
                debug!(limit = limit.name(), "connection not completed in time");
                self.state = State::Closed;
            }
        }
    }

    /// A message from the client.
    pub fn handle_packet(&mut self, packet: Packet, now: Instant) {
        if self.is_closed() {
            return;
        }
        let state = std::mem::replace(&mut self.state, State::Closed);
        match (state, packet) {
            (_, Packet::Connect(c)) => self.handle_connect(c, now),
            (State::WaitWillTopic(c), Packet::WillTopic(None)) => {
                self.complete_connect(c, None, now)
            }
            (State::WaitWillTopic(c) | State::WaitWillMsg(c, _), Packet::WillTopic(Some(w))) => {
                // A repeated WILLTOPIC means our WILLMSGREQ was lost.
                self.state = State::WaitWillMsg(c, w);
                self.output.push(Packet::WillMsgReq);
            }
            (State::WaitWillMsg(c, w), Packet::WillMsg { payload }) => {
                self.complete_connect(c, Some((w, payload)), now)
            }
            (
                state @ (State::Idle
                | State::WaitWillTopic(_)
                | State::WaitWillMsg(..)
                | State::Authenticating(_)),
                p,
            ) => {
                debug!(
                    packet = p.name(),
                    "message before the connection is set up; dropped"
                );
                self.metrics_malformed();
                self.state = state;
            }
            (state, p) => {
                self.state = state;
                self.handle_connected(p, now);
            }
        }
    }

    fn handle_connected(&mut self, packet: Packet, now: Instant) {
        match packet {
            Packet::Publish(p) => self.handle_publish(p, now),
            Packet::Register {
                msg_id, topic_name, ..
            } => self.handle_register(msg_id, &topic_name),
            Packet::RegAck {
                topic_id,
                msg_id,
                code,
            } => self.handle_regack(topic_id, msg_id, code, now),
            Packet::PubAck {
                msg_id,
                code,
                topic_id,
            } => {
                if let Some(h) = &self.handle {
                    h.acknowledge(msg_id);
                }
                self.retries.remove(&msg_id);
                if code == ReturnCode::InvalidTopicId {
                    // The client lost the registration: register again next time.
                    self.registry.remove(topic_id);
                }
                self.after_ack(now);
            }
            Packet::PubRec { msg_id } => {
                let known = self
                    .handle
                    .as_ref()
                    .is_some_and(|h| h.received(msg_id, true));
                self.retries.remove(&msg_id);
                // PUBREL again for a duplicate PUBREC too (our PUBREL was lost).
                self.output.push(Packet::PubRel { msg_id });
                if known {
                    self.arm_retry(now);
                }
                self.after_ack(now);
            }
            Packet::PubComp { msg_id } => {
                if let Some(h) = &self.handle {
                    h.complete_qos2(msg_id);
                }
                self.retries.remove(&msg_id);
                self.after_ack(now);
            }
            Packet::PubRel { msg_id } => {
                let ticket = self.handle.as_ref().and_then(|h| {
                    h.release_incoming_qos2(msg_id);
                    h.take_ticket()
                });
                self.push_ack(Packet::PubComp { msg_id }, ticket);
            }
            Packet::Subscribe(s) => self.handle_subscribe(s, now),
            Packet::Unsubscribe { msg_id, topic } => self.handle_unsubscribe(msg_id, topic),
            Packet::PingReq { client_id } => self.handle_pingreq(client_id, now),
            Packet::Disconnect { duration } => self.handle_disconnect(duration, now),
            Packet::WillTopicUpd(w) => self.handle_will_topic_update(w),
            Packet::WillMsgUpd { payload } => self.handle_will_msg_update(payload),
            other => {
                debug!(
                    packet = other.name(),
                    "message not expected from a client; dropped"
                );
                self.metrics_malformed();
            }
        }
    }

    /// A retransmission or the end of a rate pause may be due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(intake) = self.intake.as_mut() {
            intake.resume(now);
        }
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retransmit(now);
        }
    }

    /// The core woke this channel: deliveries, or a kick.
    pub fn handle_wake(&mut self, now: Instant) {
        if let Some(reason) = self.handle.as_ref().and_then(|h| h.signal.kicked()) {
            return self.handle_kick(reason);
        }
        // Asleep: deliveries stay in the session's mailbox until PINGREQ.
        self.poll_deliveries(now);
        self.maybe_finish_awake(now);
    }

    fn handle_kick(&mut self, reason: KickReason) {
        info!(client_id = ?self.client_id(), ?reason, "disconnecting client");
        self.output.push(Packet::Disconnect { duration: None });
        match reason {
            // The session now belongs to the new connection.
            KickReason::Takeover => self.handle = None,
            KickReason::Administrative => self.close_kind = CloseKind::Abnormal,
            KickReason::ServerShutdown => {
                self.close_kind = CloseKind::Normal {
                    publish_will: false,
                }
            }
        }
        self.state = State::Closed;
    }

    /// The gateway is shutting down: tell the client and close.
    pub fn shutdown(&mut self) {
        if self.handle.is_some() && !self.is_closed() {
            self.handle_kick(KickReason::ServerShutdown);
        } else {
            self.state = State::Closed;
        }
    }

    /// The client table evicted this client to make room: it is lost.
    pub fn evict(&mut self) {
        if self.handle.is_some() && !self.is_closed() {
            self.output.push(Packet::Disconnect { duration: None });
        }
        self.lost();
    }

    /// End the session's connection in the core. Idempotent.
    pub fn finish(&mut self, now: Instant) {
        self.state = State::Closed;
        if let Some(handle) = self.handle.take() {
            self.broker.close_session(&handle, self.close_kind, now);
        }
    }

    fn lost(&mut self) {
        self.close_kind = CloseKind::Abnormal;
        self.state = State::Closed;
    }
}

mod connect;
mod deliver;
mod publish;
mod subscribe;

impl OutTopic {
    fn is_named(&self, name: &str) -> bool {
        matches!(self, OutTopic::NeedsRegister(n) if &**n == name)
    }
}
