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
use tributary_core::auth::{Action, AuthCheck, AuthFuture, AuthOutcome};
use tributary_core::session::IncomingQos2;
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
    /// Connect/will-flow bound, keep alive, or end of sleep.
    deadline: Option<Instant>,
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
        let deadline = Some(now + config.idle_timeout);
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
            deadline,
            retry_at: None,
            pending: VecDeque::new(),
            registering: None,
            retries: HashMap::new(),
            next_msg_id: 1,
            recent_qos1: VecDeque::new(),
            close_kind: CloseKind::Abnormal,
        }
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
        match (self.deadline, self.retry_at) {
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

    fn keep_alive_deadline(&self, now: Instant) -> Instant {
        let base = if self.keep_alive == 0 {
            self.config.idle_timeout
        } else {
            Duration::from_secs(u64::from(self.keep_alive))
        };
        now + base.mul_f64(self.config.keepalive_multiplier)
    }

    fn sleep_deadline(&self, duration: u16, now: Instant) -> Instant {
        now + Duration::from_secs(u64::from(duration)).mul_f64(self.config.keepalive_multiplier)
    }

    /// A message from the client.
    pub fn handle_packet(&mut self, packet: Packet, now: Instant) {
        if self.is_closed() {
            return;
        }
        if matches!(self.state, State::Active | State::Awake(_)) {
            self.deadline = Some(self.keep_alive_deadline(now));
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
                if let Some(h) = &self.handle {
                    h.release_incoming_qos2(msg_id);
                }
                self.output.push(Packet::PubComp { msg_id });
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

    /// The keep alive, will flow, sleep or retransmission deadline may have passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retransmit(now);
        }
        if self.is_closed() || self.deadline.is_none_or(|d| now < d) {
            return;
        }
        match self.state {
            State::Idle | State::WaitWillTopic(_) | State::WaitWillMsg(..) => {
                debug!("connection not completed in time");
                self.state = State::Closed;
            }
            State::Authenticating(_) => {
                self.auth_future = None;
                self.refuse_connect(
                    ReturnCode::NotSupported,
                    "authentication did not answer in time",
                    now,
                );
            }
            State::Active | State::Awake(_) => {
                info!(client_id = ?self.client_id(), "keep alive expired; client lost (§6.3)");
                self.lost();
            }
            State::Asleep(_) => {
                info!(client_id = ?self.client_id(), "sleep duration missed; client lost (§6.14)");
                self.lost();
            }
            State::Closed => {}
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

// CONNECT and the will (§6.3, §6.4).
impl Channel {
    /// The one place a CONNECT is refused: CONNACK with `code`, then close.
    fn refuse_connect(&mut self, code: ReturnCode, why: &'static str, now: Instant) {
        debug!(?code, why, "CONNECT refused");
        self.output.push(Packet::ConnAck { code });
        if let Some(old) = self.handle.take() {
            self.broker.close_session(&old, CloseKind::Abnormal, now);
        }
        self.state = State::Closed;
    }

    fn handle_connect(&mut self, c: Connect, now: Instant) {
        if c.protocol_id != 0x01 {
            return self.refuse_connect(
                ReturnCode::NotSupported,
                "unknown ProtocolId (§5.3.8)",
                now,
            );
        }
        if c.client_id.is_empty() || c.client_id.len() > self.config.max_clientid_len {
            return self.refuse_connect(ReturnCode::NotSupported, "client id length (§5.3.1)", now);
        }
        self.deadline = Some(now + self.config.idle_timeout);
        if c.will {
            self.state = State::WaitWillTopic(c);
            self.output.push(Packet::WillTopicReq);
        } else {
            self.complete_connect(c, None, now);
        }
    }

    fn core_will(&self, client: &ClientInfo, w: &WillTopic, payload: Bytes) -> Option<Will> {
        let topic = self.config.mount(&w.topic);
        self.broker.check_topic_name(&topic).ok()?;
        if !self.broker.authorize(client, Action::Publish, &topic) {
            return None;
        }
        let mut message = Message::new(topic, payload, core_qos(w.qos), w.retain);
        message.publisher = Some(client.client_id.clone());
        Some(Will {
            message,
            delay_interval: 0,
            message_expiry_interval: None,
        })
    }

    fn complete_connect(&mut self, c: Connect, will: Option<(WillTopic, Bytes)>, now: Instant) {
        let client = ClientInfo {
            client_id: c.client_id.as_str().into(),
            username: None,
            peer: self.peer,
            protocol: "mqtt-sn",
        };
        match self.broker.authenticator().check(&client, None) {
            AuthCheck::Ready(outcome) => self.connect_authenticated(c, will, client, outcome, now),
            AuthCheck::Pending(decision) => {
                debug!(client_id = %client.client_id, "waiting for the authentication backend");
                self.auth_future = Some(decision);
                self.state = State::Authenticating(Box::new(ParkedConnect {
                    connect: c,
                    will,
                    client,
                }));
            }
        }
    }

    /// An authentication decision the driver must await and pass to
    /// [`Channel::handle_auth_result`]; meanwhile it feeds no messages.
    pub fn take_auth_future(&mut self) -> Option<AuthFuture> {
        self.auth_future.take()
    }

    /// True while a CONNECT waits for an authentication backend.
    pub fn is_authenticating(&self) -> bool {
        matches!(self.state, State::Authenticating(_))
    }

    /// The authentication backend answered for the parked CONNECT.
    pub fn handle_auth_result(&mut self, outcome: AuthOutcome, now: Instant) {
        let State::Authenticating(parked) = std::mem::replace(&mut self.state, State::Closed)
        else {
            return;
        };
        let ParkedConnect {
            connect,
            will,
            client,
        } = *parked;
        self.connect_authenticated(connect, will, client, outcome, now);
    }

    fn connect_authenticated(
        &mut self,
        c: Connect,
        will: Option<(WillTopic, Bytes)>,
        client: ClientInfo,
        outcome: AuthOutcome,
        now: Instant,
    ) {
        if outcome != AuthOutcome::Allow {
            return self.refuse_connect(ReturnCode::NotSupported, "not authorized", now);
        }
        let core_will = match &will {
            Some((w, payload)) => match self.core_will(&client, w, payload.clone()) {
                Some(cw) => Some(cw),
                None => {
                    return self.refuse_connect(
                        ReturnCode::NotSupported,
                        "will topic invalid or not authorized",
                        now,
                    )
                }
            },
            None => None,
        };
        let same_client = self
            .client
            .as_ref()
            .is_some_and(|old| old.client_id == client.client_id);
        let resume_in_place =
            same_client && !c.clean_session && self.handle.as_ref().is_some_and(|h| h.is_owner());
        if resume_in_place {
            if let Some(h) = &self.handle {
                h.set_will(core_will);
            }
        } else {
            if let Some(old) = self.handle.take() {
                self.broker.close_session(
                    &old,
                    CloseKind::Normal {
                        publish_will: false,
                    },
                    now,
                );
            }
            self.pending.clear();
            self.registering = None;
            self.retries.clear();
            self.registry = Registry::new(self.config.max_registered_topics);
            let opened = self.broker.open_session(
                SessionRequest {
                    client: client.clone(),
                    clean_start: c.clean_session,
                    expiry_interval: if c.clean_session {
                        0
                    } else {
                        self.config.session_expiry
                    },
                    will: core_will,
                },
                now,
            );
            info!(client_id = %client.client_id, clean_session = c.clean_session,
                  session_present = opened.session_present, "client connected");
            self.handle = Some(opened.handle);
            for resend in opened.resend {
                match resend {
                    Resend::Publish(out) => self.pending.push_back(out),
                    Resend::PubRel(msg_id) => {
                        self.output.push(Packet::PubRel { msg_id });
                        self.arm_retry(now);
                    }
                }
            }
        }
        self.client = Some(client);
        self.will = will;
        self.keep_alive = c.duration;
        self.output.push(Packet::ConnAck {
            code: ReturnCode::Accepted,
        });
        self.state = State::Active;
        self.deadline = Some(self.keep_alive_deadline(now));
        self.flush_pending(now);
        self.poll_deliveries(now);
    }

    fn handle_will_topic_update(&mut self, w: Option<WillTopic>) {
        let code = match (w, self.client.clone(), self.handle.clone()) {
            (None, _, Some(h)) => {
                self.will = None;
                h.set_will(None);
                ReturnCode::Accepted
            }
            (Some(w), Some(client), Some(h)) => {
                let payload = self
                    .will
                    .as_ref()
                    .map(|(_, p)| p.clone())
                    .unwrap_or_default();
                match self.core_will(&client, &w, payload.clone()) {
                    Some(cw) => {
                        h.set_will(Some(cw));
                        self.will = Some((w, payload));
                        ReturnCode::Accepted
                    }
                    None => ReturnCode::NotSupported,
                }
            }
            _ => ReturnCode::NotSupported,
        };
        self.output.push(Packet::WillTopicResp { code });
    }

    fn handle_will_msg_update(&mut self, payload: Bytes) {
        let code = match (self.will.clone(), self.client.clone(), self.handle.clone()) {
            (Some((w, _)), Some(client), Some(h)) => {
                match self.core_will(&client, &w, payload.clone()) {
                    Some(cw) => {
                        h.set_will(Some(cw));
                        self.will = Some((w, payload));
                        ReturnCode::Accepted
                    }
                    None => ReturnCode::NotSupported,
                }
            }
            // No will topic to attach the message to.
            _ => ReturnCode::NotSupported,
        };
        self.output.push(Packet::WillMsgResp { code });
    }
}

// REGISTER, PUBLISH from the client (§6.5, §6.8, §6.9).
impl Channel {
    fn handle_register(&mut self, msg_id: u16, name: &str) {
        let full = self.config.mount(name);
        let valid = !name.is_empty() && self.broker.check_topic_name(&full).is_ok();
        let (topic_id, code) = if !valid {
            (0, ReturnCode::NotSupported)
        } else {
            match self.registry.register(name) {
                Some(id) => (id, ReturnCode::Accepted),
                None => (0, ReturnCode::Congestion),
            }
        };
        self.output.push(Packet::RegAck {
            topic_id,
            msg_id,
            code,
        });
    }

    fn handle_publish(&mut self, p: Publish, now: Instant) {
        if p.qos == QoS::NoConnection && !self.config.enable_qos3 {
            debug!("QoS -1 publish disabled; dropped");
            return;
        }
        let reject = |code| Packet::PubAck {
            topic_id: p.topic_id,
            msg_id: p.msg_id,
            code,
        };
        let Some(name) =
            self.config
                .inbound_name(Some(&self.registry), p.topic_id_type, p.topic_id)
        else {
            debug!(
                topic_id = p.topic_id,
                "PUBLISH with an unknown topic id (§6.9)"
            );
            self.output.push(reject(ReturnCode::InvalidTopicId));
            return;
        };
        let topic = self.config.mount(&name);
        if self.broker.check_topic_name(&topic).is_err() {
            self.output.push(reject(ReturnCode::NotSupported));
            return;
        }
        let (Some(client), Some(handle)) = (self.client.clone(), self.handle.clone()) else {
            return;
        };
        let allowed = self.broker.authorize(&client, Action::Publish, &topic);
        if !allowed {
            debug!(client_id = %client.client_id, %topic, "publish denied");
        }
        let mut message = Message::new(topic, p.payload, core_qos(p.qos), p.retain);
        message.publisher = Some(client.client_id.clone());
        self.broker.metrics().message_in("mqtt-sn", message.qos);
        match p.qos {
            QoS::AtMostOnce | QoS::NoConnection => {
                if allowed {
                    self.broker.publish(message, now);
                }
            }
            QoS::AtLeastOnce => {
                if !allowed {
                    self.output.push(reject(ReturnCode::NotSupported));
                    return;
                }
                let duplicate = p.dup && self.recent_qos1.contains(&p.msg_id);
                if !duplicate {
                    self.broker.publish(message, now);
                    if self.recent_qos1.len() == RECENT_QOS1 {
                        self.recent_qos1.pop_front();
                    }
                    self.recent_qos1.push_back(p.msg_id);
                }
                self.output.push(reject(ReturnCode::Accepted));
            }
            QoS::ExactlyOnce => {
                if !allowed {
                    self.output.push(reject(ReturnCode::NotSupported));
                    return;
                }
                match handle.begin_incoming_qos2(
                    p.msg_id,
                    self.config.max_awaiting_rel,
                    now,
                    self.config.await_rel_timeout,
                ) {
                    IncomingQos2::New => {
                        self.broker.publish(message, now);
                        self.output.push(Packet::PubRec { msg_id: p.msg_id });
                    }
                    // A resent PUBLISH: acknowledge again, never route twice.
                    IncomingQos2::Duplicate => {
                        self.output.push(Packet::PubRec { msg_id: p.msg_id })
                    }
                    IncomingQos2::Full => self.output.push(reject(ReturnCode::Congestion)),
                }
            }
        }
    }
}

// SUBSCRIBE, UNSUBSCRIBE (§6.9), PINGREQ and sleep (§6.14), DISCONNECT (§6.6).
impl Channel {
    /// The client name and core filter of a SUBSCRIBE/UNSUBSCRIBE topic.
    fn sub_filter(&self, topic: &SubTopic) -> Option<(String, String)> {
        let name = match topic {
            SubTopic::Name(n) => n.clone(),
            SubTopic::Predefined(id) => self.config.predefined.name(*id)?.to_string(),
            SubTopic::Short(b) => std::str::from_utf8(b).ok()?.to_string(),
        };
        let filter = self.config.mount_filter(&name);
        Some((name, filter))
    }

    fn handle_subscribe(&mut self, s: Subscribe, now: Instant) {
        let suback = |qos, topic_id, code| Packet::SubAck {
            qos,
            topic_id,
            msg_id: s.msg_id,
            code,
        };
        let (Some(client), Some(handle)) = (self.client.clone(), self.handle.clone()) else {
            return;
        };
        if s.qos == QoS::NoConnection {
            self.output
                .push(suback(QoS::AtMostOnce, 0, ReturnCode::NotSupported));
            return;
        }
        let Some((name, filter)) = self.sub_filter(&s.topic) else {
            self.output
                .push(suback(s.qos, 0, ReturnCode::InvalidTopicId));
            return;
        };
        let allowed = match self.broker.check_filter(&filter) {
            Ok(parsed) => self
                .broker
                .authorize(&client, Action::Subscribe, parsed.filter),
            Err(_) => false,
        };
        if name.is_empty()
            || !allowed
            || self
                .broker
                .subscribe(&handle, &filter, SubOptions::at(core_qos(s.qos)), now)
                .is_err()
        {
            debug!(client_id = %client.client_id, %filter, "subscription refused");
            self.output.push(suback(s.qos, 0, ReturnCode::NotSupported));
            return;
        }
        let topic_id = match &s.topic {
            SubTopic::Predefined(id) => *id,
            SubTopic::Short(_) => 0,
            // A concrete name gets its topic id now (§6.9); wildcards get
            // 0x0000 and each matching topic is REGISTERed before its
            // first PUBLISH.
            SubTopic::Name(n) if has_wildcard(n) || n.starts_with("$share/") => 0,
            SubTopic::Name(n) => self.registry.register(n).unwrap_or(0),
        };
        self.output
            .push(suback(s.qos, topic_id, ReturnCode::Accepted));
        // Retained messages go out after the SUBACK.
        self.poll_deliveries(now);
    }

    fn handle_unsubscribe(&mut self, msg_id: u16, topic: SubTopic) {
        if let (Some((_, filter)), Some(handle)) = (self.sub_filter(&topic), self.handle.clone()) {
            self.broker.unsubscribe(&handle, &filter);
        }
        self.output.push(Packet::UnsubAck { msg_id });
    }

    fn handle_pingreq(&mut self, client_id: Option<String>, now: Instant) {
        match (&self.state, client_id) {
            (State::Asleep(duration), Some(id)) if Some(id.as_str()) == self.client_id() => {
                let duration = *duration;
                debug!(client_id = %id, "sleeping client awake (§6.14)");
                self.state = State::Awake(duration);
                self.deadline = Some(self.keep_alive_deadline(now));
                // What waited unacknowledged while it slept goes first.
                if let Some(h) = self.handle.clone() {
                    let (due, _) = h.retry_due(now, Duration::ZERO);
                    self.resend(due, now, false);
                }
                self.flush_pending(now);
                self.poll_deliveries(now);
                self.maybe_finish_awake(now);
            }
            (State::Asleep(duration), _) => {
                let duration = *duration;
                self.output.push(Packet::PingResp);
                self.deadline = Some(self.sleep_deadline(duration, now));
            }
            _ => self.output.push(Packet::PingResp),
        }
    }

    /// Awake and nothing left to deliver: PINGRESP, back to sleep (§6.14).
    fn maybe_finish_awake(&mut self, now: Instant) {
        let State::Awake(duration) = self.state else {
            return;
        };
        let Some(h) = &self.handle else { return };
        if self.registering.is_none()
            && self.pending.is_empty()
            && h.inflight_len() == 0
            && h.session.queue_len() == 0
        {
            self.output.push(Packet::PingResp);
            self.state = State::Asleep(duration);
            self.deadline = Some(self.sleep_deadline(duration, now));
            self.retry_at = None;
        }
    }

    fn handle_disconnect(&mut self, duration: Option<u16>, now: Instant) {
        self.output.push(Packet::Disconnect { duration: None });
        match duration {
            Some(d) if d > 0 => {
                debug!(client_id = ?self.client_id(), duration = d, "client asleep (§6.14)");
                self.state = State::Asleep(d);
                self.deadline = Some(self.sleep_deadline(d, now));
                // Retransmission pauses while the client sleeps.
                self.retry_at = None;
            }
            _ => {
                debug!(client_id = ?self.client_id(), "client disconnected");
                self.close_kind = CloseKind::Normal {
                    publish_will: false,
                };
                self.state = State::Closed;
            }
        }
    }
}

// Deliveries to the client, REGISTER/REGACK from the gateway, retransmission (§6.10, §6.13).
impl Channel {
    fn can_send(&self) -> bool {
        matches!(self.state, State::Active | State::Awake(_))
    }

    /// Turn pending deliveries into PUBLISH messages within the window.
    pub fn poll_deliveries(&mut self, now: Instant) {
        if !self.can_send() || self.registering.is_some() {
            return;
        }
        let Some(handle) = self.handle.clone() else {
            return;
        };
        let window = usize::from(self.config.max_inflight.max(1));
        let outgoing = handle.take_for_send(now, SEND_BATCH, window, self.broker.metrics(), |d| {
            // PUBLISH header is at most 4 + 5 octets.
            d.message.payload.len() + 9 <= MAX_MESSAGE_LEN
        });
        if outgoing.len() == SEND_BATCH && handle.has_sendable(window) {
            handle.signal.wake();
        }
        self.pending.extend(outgoing);
        self.flush_pending(now);
    }

    fn out_topic(&self, topic: &str) -> OutTopic {
        let Some(name) = topic.strip_prefix(self.config.mountpoint.as_str()) else {
            return OutTopic::Unsendable;
        };
        if name.is_empty() {
            return OutTopic::Unsendable;
        }
        if let Some(id) = self.config.predefined.id(name) {
            return OutTopic::Ready(TopicIdType::Predefined, id);
        }
        if let [a, b] = name.as_bytes() {
            return OutTopic::Ready(TopicIdType::Short, u16::from_be_bytes([*a, *b]));
        }
        match self.registry.id(name) {
            Some(id) => OutTopic::Ready(TopicIdType::Normal, id),
            None => OutTopic::NeedsRegister(name.into()),
        }
    }

    /// Send what was held, until a topic needs registering first.
    fn flush_pending(&mut self, now: Instant) {
        while self.can_send() && self.registering.is_none() {
            let Some(front) = self.pending.front() else {
                break;
            };
            match self.out_topic(&front.delivery.message.topic) {
                OutTopic::Ready(kind, id) => {
                    if let Some(out) = self.pending.pop_front() {
                        self.send_publish(&out, kind, id, now);
                    }
                }
                OutTopic::NeedsRegister(name) => match self.registry.register(&name) {
                    Some(topic_id) => {
                        let msg_id = self.next_msg_id();
                        self.output.push(Packet::Register {
                            topic_id,
                            msg_id,
                            topic_name: name.to_string(),
                        });
                        self.registering = Some(Registering {
                            topic_id,
                            msg_id,
                            name,
                            sent_at: now,
                            retries: 0,
                        });
                        self.arm_retry(now);
                    }
                    None => {
                        debug!(topic = %name, "topic registry full; delivery dropped");
                        if let Some(out) = self.pending.pop_front() {
                            self.abandon(&out);
                        }
                    }
                },
                OutTopic::Unsendable => {
                    if let Some(out) = self.pending.pop_front() {
                        self.abandon(&out);
                    }
                }
            }
        }
    }

    fn next_msg_id(&mut self) -> u16 {
        let id = self.next_msg_id;
        self.next_msg_id = if id == u16::MAX { 1 } else { id + 1 };
        id
    }

    fn send_publish(&mut self, out: &Outgoing, kind: TopicIdType, topic_id: u16, now: Instant) {
        let d = &out.delivery;
        self.broker.metrics().message_out("mqtt-sn", d.qos);
        self.output.push(Packet::Publish(Publish {
            dup: out.dup,
            qos: sn_qos(d.qos),
            retain: d.retain,
            topic_id_type: kind,
            topic_id,
            msg_id: out.packet_id.unwrap_or(0),
            payload: d.message.payload.clone(),
        }));
        if out.packet_id.is_some() {
            self.arm_retry(now);
        }
    }

    /// A delivery that cannot be sent: release it in the core.
    fn abandon(&self, out: &Outgoing) {
        let (Some(h), Some(id)) = (&self.handle, out.packet_id) else {
            return;
        };
        match out.delivery.qos {
            tributary_core::QoS::AtLeastOnce => {
                h.acknowledge(id);
            }
            tributary_core::QoS::ExactlyOnce => {
                h.received(id, false);
            }
            tributary_core::QoS::AtMostOnce => {}
        }
    }

    fn handle_regack(&mut self, topic_id: u16, msg_id: u16, code: ReturnCode, now: Instant) {
        let Some(reg) = self.registering.take_if(|r| r.msg_id == msg_id) else {
            debug!(msg_id, topic_id, "REGACK for no pending REGISTER; ignored");
            return;
        };
        if code != ReturnCode::Accepted {
            debug!(topic = %reg.name, ?code, "client refused REGISTER; its deliveries dropped");
            self.registry.remove(reg.topic_id);
            let (drop, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
                .into_iter()
                .partition(|o| {
                    self.out_topic(&o.delivery.message.topic)
                        .is_named(&reg.name)
                });
            for out in &drop {
                self.abandon(out);
            }
            self.pending = keep.into();
        }
        self.after_ack(now);
    }

    fn after_ack(&mut self, now: Instant) {
        self.flush_pending(now);
        self.poll_deliveries(now);
        self.maybe_finish_awake(now);
    }

    fn arm_retry(&mut self, now: Instant) {
        if self.retry_at.is_none() && !self.is_asleep() {
            self.retry_at = Some(now + self.config.retry_interval);
        }
    }

    /// Resend PUBLISH/PUBREL/REGISTER that waited `retry_interval` (§6.13).
    fn retransmit(&mut self, now: Instant) {
        self.retry_at = None;
        if !self.can_send() {
            return;
        }
        let interval = self.config.retry_interval;
        let mut next: Option<Instant> = None;
        if let Some(reg) = &mut self.registering {
            if now.saturating_duration_since(reg.sent_at) >= interval {
                reg.retries += 1;
                reg.sent_at = now;
                let (topic_id, msg_id, name, retries) =
                    (reg.topic_id, reg.msg_id, reg.name.to_string(), reg.retries);
                if retries > self.config.max_retries {
                    info!(client_id = ?self.client_id(), "REGISTER unanswered; client lost (§6.13)");
                    return self.lost();
                }
                self.output.push(Packet::Register {
                    topic_id,
                    msg_id,
                    topic_name: name,
                });
            }
            if let Some(reg) = &self.registering {
                next = Some(reg.sent_at + interval);
            }
        }
        if let Some(h) = self.handle.clone() {
            let (due, core_next) = h.retry_due(now, interval);
            if !self.resend(due, now, true) {
                return;
            }
            next = match (next, core_next) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        self.retry_at = next;
    }

    /// Resend inflight messages; with `count`, each resend counts toward
    /// Nretry. Returns false when the client was declared lost.
    fn resend(&mut self, due: Vec<Resend>, now: Instant, count: bool) -> bool {
        for r in due {
            let msg_id = match &r {
                Resend::Publish(out) => out.packet_id.unwrap_or(0),
                Resend::PubRel(id) => *id,
            };
            if self.pending.iter().any(|o| o.packet_id == Some(msg_id)) {
                continue; // Never sent yet: waits behind a REGISTER.
            }
            if count {
                let n = self.retries.entry(msg_id).or_insert(0);
                *n += 1;
                if *n > self.config.max_retries {
                    info!(client_id = ?self.client_id(), msg_id, "no acknowledgement after Nretry resends; client lost (§6.13)");
                    self.lost();
                    return false;
                }
            }
            match r {
                Resend::PubRel(msg_id) => self.output.push(Packet::PubRel { msg_id }),
                Resend::Publish(mut out) => {
                    out.dup = true;
                    match self.out_topic(&out.delivery.message.topic) {
                        OutTopic::Ready(kind, id) => self.send_publish(&out, kind, id, now),
                        OutTopic::NeedsRegister(_) => self.pending.push_back(out),
                        OutTopic::Unsendable => self.abandon(&out),
                    }
                }
            }
        }
        self.flush_pending(now);
        true
    }
}

impl OutTopic {
    fn is_named(&self, name: &str) -> bool {
        matches!(self, OutTopic::NeedsRegister(n) if &**n == name)
    }
}
