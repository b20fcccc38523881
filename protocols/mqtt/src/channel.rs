//! The MQTT channel: one connection's protocol state machine, sans-IO.
//!
//! The driver feeds it decoded packets, decode errors, wake-ups and the
//! current time; the channel calls into the core [`Broker`] (the only
//! place routing, sessions and retained messages live) and queues packets
//! for the driver to encode and write. It never touches a socket or reads
//! a clock.
//!
//! ```text
//!            CONNECT ok                      DISCONNECT / error / kick
//!  Awaiting ───────────▶ Connected ──────────────────────────────▶ Closing
//!     │ other packet, timeout, bad CONNECT                             ▲
//!     └────────────────────────────────────────────────────────────────┘
//! ```
//!
//! Errors are mapped to reason codes in one place, [`Channel::violation`]:
//! MQTT 5 clients get a DISCONNECT with the reason first, 3.x clients are
//! closed (they have no way to hear a reason).
//!
//! Authentication may take time (an HTTP backend): the CONNECT is then
//! parked and [`Channel::take_auth_future`] hands the driver a future to
//! await; the driver decodes nothing more until it calls
//! [`Channel::handle_auth_result`]. MQTT 5 enhanced authentication (§4.12)
//! parks the CONNECT the same way while AUTH packets go back and forth.
//! Per-client message and byte rates are token buckets refilled from the
//! `now` the driver passes in; over the rate the channel either asks the
//! driver to stop reading until [`Channel::read_paused_until`], or
//! disconnects with 0x96.
//!
//! Durability (DESIGN.md §1): a PUBACK / PUBREC for a message that a durable
//! store must keep (queued for a persistent session, retained), the PUBREC /
//! PUBCOMP for incoming QoS 2 state, and the PUBREL for outgoing QoS 2
//! state are held until the store's commit ticket resolves
//! ([`Channel::held_ticket`], [`Channel::release_durable`]); the
//! connection keeps serving other packets meanwhile. Acknowledgements after
//! a held one queue behind it, so they leave in the order the client sent
//! its packets [MQTT-4.6.0-2..4]. A failed write turns a held PUBACK /
//! PUBREC into 0x97 (quota exceeded) for MQTT 5 and closes a 3.x connection
//! (its client resends).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info};
use tributary_core::auth::{
    Action, AuthCheck, AuthFuture, AuthOutcome, EnhancedAuth, EnhancedStart, EnhancedStep,
};
use tributary_core::session::IncomingQos2;
use tributary_core::storage::{later, CommitTicket, Commits, TicketState};
use tributary_core::{
    Broker, ClientInfo, CloseKind, ConnectionSignal, Delivery, KickReason, Message,
    MessageProperties, Outgoing, Resend, SessionHandle, SessionRequest, SubOptions, Will,
};

use crate::codec::{encoded_len, DecodeError};
use crate::packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, Properties, PropertyValues, ProtocolVersion,
    PubResponse, Publish, QoS, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use crate::reason::{self as rc, connack_v3};

/// Channel settings, shared by every connection of a listener.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// Largest packet accepted from clients (also announced in CONNACK).
    pub max_packet_size: u32,
    /// Server Receive Maximum: QoS 2 messages a client may have awaiting PUBREL.
    pub receive_maximum: u16,
    /// Cap on server→client unacknowledged QoS 1/2 messages.
    pub max_inflight: u16,
    /// Topic Alias Maximum announced to clients.
    pub topic_alias_maximum: u16,
    /// Overrides the client's keep alive when set (MQTT 5 Server Keep Alive).
    pub server_keep_alive: Option<u16>,
    /// Caps an MQTT 5 client's keep alive (a longer or zero one is replaced
    /// by this, announced as Server Keep Alive).
    pub max_keep_alive: Option<u16>,
    /// Keep alive is enforced at this multiple of the interval.
    pub keepalive_multiplier: f64,
    /// Highest QoS accepted.
    pub max_qos: QoS,
    /// Retained messages supported.
    pub retain_available: bool,
    /// Wildcard subscriptions supported.
    pub wildcard_subscription: bool,
    /// Shared subscriptions supported.
    pub shared_subscription: bool,
    /// Longest client id accepted.
    pub max_clientid_len: usize,
    /// Incoming QoS 2 messages awaiting PUBREL per session (3.x bound).
    pub max_awaiting_rel: usize,
    /// Time allowed from connection to a complete CONNECT.
    pub connect_timeout: Duration,
    /// Session expiry used for 3.x persistent sessions, seconds.
    pub v3_session_expiry: u32,
    /// Close the connection on a denied publish (instead of PUBACK/PUBREC
    /// 0x87 for MQTT 5, or silently dropping it for 3.x).
    pub disconnect_on_denied_publish: bool,
    /// SUBACK reason for a denied MQTT 5 subscription (0x87 or 0x80).
    pub subscribe_denied_reason: u8,
    /// In-session retransmission interval for MQTT 3.x (MQTT 5 resends only
    /// on reconnect [MQTT-4.4.0-1]).
    pub retry_interval: Duration,
    /// How long an incoming QoS 2 id may wait for PUBREL before it can be forgotten.
    pub await_rel_timeout: Duration,
    /// Per-client PUBLISH packets per second; 0 = unlimited.
    pub messages_rate: u32,
    /// Per-client PUBLISH bytes per second; 0 = unlimited.
    pub bytes_rate: u32,
    /// Over the rate: disconnect (MQTT 5: 0x96) instead of pausing input.
    pub disconnect_on_rate_exceeded: bool,
    /// Most subscriptions per client; 0 = unlimited.
    pub max_subscriptions: usize,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            max_packet_size: 1024 * 1024,
            receive_maximum: 32,
            max_inflight: 32,
            topic_alias_maximum: 65535,
            server_keep_alive: None,
            max_keep_alive: None,
            keepalive_multiplier: 1.5,
            max_qos: QoS::ExactlyOnce,
            retain_available: true,
            wildcard_subscription: true,
            shared_subscription: true,
            max_clientid_len: 65535,
            max_awaiting_rel: 100,
            connect_timeout: Duration::from_secs(10),
            v3_session_expiry: 7200,
            disconnect_on_denied_publish: false,
            subscribe_denied_reason: rc::NOT_AUTHORIZED,
            retry_interval: Duration::from_secs(30),
            await_rel_timeout: Duration::from_secs(300),
            messages_rate: 0,
            bytes_rate: 0,
            disconnect_on_rate_exceeded: false,
            max_subscriptions: 0,
        }
    }
}

/// How many deliveries one wake-up turns into packets at most, so one busy
/// session cannot starve the socket reader.
const SEND_BATCH: usize = 256;

struct Connected {
    client: ClientInfo,
    /// How long the client may stay silent (keep alive × the configured
    /// multiplier), worked out once at CONNECT; `None` when keep alive is 0.
    keep_alive_window: Option<Duration>,
    /// Client's Receive Maximum: our outgoing QoS 1/2 window.
    client_receive_maximum: u16,
    /// Client's Maximum Packet Size.
    client_max_packet_size: u32,
    /// Client's Topic Alias Maximum (server→client aliases).
    client_topic_alias_max: u16,
    /// Topic aliases both ways, on the heap once the first is used.
    aliases: Option<Box<TopicAliases>>,
    /// Whether reason strings may be sent on acks.
    problem_information: bool,
    /// Session expiry requested in CONNECT was zero.
    connect_expiry_zero: bool,
}

/// A CONNECT that passed validation and waits for its authentication.
struct ParkedConnect {
    connect: Box<Connect>,
    client: ClientInfo,
    will: Option<Will>,
    assigned: Option<String>,
    /// The enhanced authentication exchange, when one is running.
    enhanced: Option<(String, Box<dyn EnhancedAuth>)>,
}

enum State {
    AwaitingConnect,
    /// CONNECT parked while an asynchronous backend or an AUTH exchange decides.
    Authenticating(Box<ParkedConnect>),
    Connected(Box<Connected>),
    Closed,
}

/// A token bucket refilled at `rate` per second up to one second's worth;
/// it may go into debt (a packet larger than the burst), repaid by waiting.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl Bucket {
    fn new(rate: u32) -> Bucket {
        Bucket {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            at: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(at) = self.at {
            let elapsed = now.saturating_duration_since(at).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        }
        self.at = Some(now);
    }

    /// Whether `cost` fits now (after refilling).
    fn fits(&mut self, cost: f64, now: Instant) -> bool {
        self.refill(now);
        // A packet larger than the burst fits a full bucket (and leaves a debt).
        self.rate <= 0.0 || self.tokens >= cost.min(self.rate)
    }

    /// Take `cost`; returns when the bucket is out of debt again, if it is in debt.
    fn take(&mut self, cost: f64, now: Instant) -> Option<Instant> {
        if self.rate <= 0.0 {
            return None;
        }
        self.refill(now);
        self.tokens -= cost;
        (self.tokens < 0.0).then(|| now + Duration::from_secs_f64(-self.tokens / self.rate))
    }
}

/// What a connection knows before its CONNECT and needs only for it.
#[derive(Debug)]
struct PreConnect {
    peer: Option<SocketAddr>,
    /// User name from the transport (TLS client certificate CN), replacing
    /// the CONNECT's.
    transport_username: Option<String>,
}

/// Topic aliases of one MQTT 5 connection (§3.3.2.3.4).
#[derive(Debug, Default)]
struct TopicAliases {
    /// Set by the client (client→server).
    inbound: HashMap<u16, Arc<str>>,
    /// Assigned by us (server→client).
    outbound: HashMap<Arc<str>, u16>,
}

/// A connection's message and byte rate buckets.
#[derive(Debug)]
struct RateBuckets {
    messages: Bucket,
    bytes: Bucket,
}

/// One connection's MQTT state.
pub struct Channel {
    broker: Arc<Broker>,
    config: Arc<ChannelConfig>,
    /// What only the CONNECT needs (peer address, transport user name),
    /// on the heap until then.
    pre_connect: Option<Box<PreConnect>>,
    version: ProtocolVersion,
    state: State,
    /// The session, from a successful CONNECT until `finish`.
    handle: Option<SessionHandle>,
    output: Vec<Packet>,
    /// Deadline for the next packet from the client (connect timeout, then keep alive).
    deadline: Option<Instant>,
    /// When unacknowledged messages are next due for retransmission (3.x only).
    retry_at: Option<Instant>,
    /// The client's Maximum Packet Size (MQTT 5), `u32::MAX` when unset.
    peer_max_packet_size: u32,
    /// Sessions whose mailboxes this connection's QoS 1/2 publishes pushed
    /// over their bound: the driver stops reading until they have room.
    backpressure: Vec<Arc<tributary_core::session::Session>>,
    /// How the session ends when the connection closes.
    close_kind: CloseKind,
    /// An authentication decision for the driver to await.
    pending_auth: Option<AuthFuture>,
    /// Per-client message and byte rate buckets.
    /// On the heap, and only when a rate is configured.
    buckets: Option<Box<RateBuckets>>,
    /// Input is paused until then (rate exceeded, throttle mode).
    paused_until: Option<Instant>,
    /// Acknowledgements waiting for their store commit, oldest first.
    held: VecDeque<(CommitTicket, Packet)>,
    /// The store's commit progress, when one is configured.
    commits: Option<Arc<Commits>>,
}

/// Held acknowledgements past which the driver stops reading: a publisher
/// outrunning the disk waits for it instead of piling up memory.
pub const MAX_HELD_ACKS: usize = 4096;

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("peer", &self.pre_connect.as_ref().map(|p| p.peer))
            .field("version", &self.version)
            .field("client_id", &self.client_id())
            .finish()
    }
}

impl Channel {
    /// A channel for a new connection accepted at `now`.
    pub fn new(
        broker: Arc<Broker>,
        config: Arc<ChannelConfig>,
        peer: Option<SocketAddr>,
        now: Instant,
    ) -> Channel {
        let deadline = Some(now + config.connect_timeout);
        let buckets = (config.messages_rate > 0 || config.bytes_rate > 0).then(|| {
            Box::new(RateBuckets {
                messages: Bucket::new(config.messages_rate),
                bytes: Bucket::new(config.bytes_rate),
            })
        });
        Channel {
            config,
            pre_connect: Some(Box::new(PreConnect {
                peer,
                transport_username: None,
            })),
            version: ProtocolVersion::V3_1_1,
            state: State::AwaitingConnect,
            handle: None,
            output: Vec::new(),
            deadline,
            retry_at: None,
            peer_max_packet_size: u32::MAX,
            backpressure: Vec::new(),
            close_kind: CloseKind::Abnormal,
            pending_auth: None,
            buckets,
            paused_until: None,
            held: VecDeque::new(),
            commits: broker.persistence().commits(),
            broker,
        }
    }

    /// The user name the transport proved (TLS client certificate CN); it
    /// replaces whatever the CONNECT says. Call before the first packet.
    pub fn set_transport_username(&mut self, username: Option<String>) {
        if let Some(pre) = self.pre_connect.as_deref_mut() {
            pre.transport_username = username;
        }
    }

    /// The core this channel talks to.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// The core's counters.
    pub fn metrics(&self) -> &tributary_core::metrics::Metrics {
        self.broker.metrics()
    }

    /// A pending authentication decision the driver must await, then pass
    /// to [`Channel::handle_auth_result`]. While one is pending (or was
    /// taken and not yet answered) the driver decodes no further packets.
    pub fn take_auth_future(&mut self) -> Option<AuthFuture> {
        self.pending_auth.take()
    }

    /// True while the CONNECT is parked waiting for an asynchronous
    /// authentication decision (not during an AUTH exchange, which needs
    /// packets from the client).
    pub fn awaiting_auth_result(&self) -> bool {
        matches!(&self.state, State::Authenticating(p) if p.enhanced.is_none())
    }

    /// The decision for the parked CONNECT.
    pub fn handle_auth_result(&mut self, outcome: AuthOutcome, now: Instant) {
        let State::Authenticating(parked) = std::mem::replace(&mut self.state, State::Closed)
        else {
            return;
        };
        let parked = *parked;
        if parked.enhanced.is_some() {
            self.state = State::Authenticating(Box::new(parked));
            return;
        }
        if self.accept_auth_outcome(outcome) {
            self.finish_connect(parked, None, now);
        }
    }

    /// Input from the client is paused until then (rate exceeded); the
    /// driver stops reading and calls [`Channel::handle_timeout`] at that time.
    pub fn read_paused_until(&self) -> Option<Instant> {
        self.paused_until
    }

    /// The version to decode and encode with.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// Largest packet accepted from the client.
    pub fn max_packet_size(&self) -> usize {
        self.config.max_packet_size as usize
    }

    /// The client id once connected.
    pub fn client_id(&self) -> Option<&str> {
        match &self.state {
            State::Connected(c) => Some(&c.client.client_id),
            _ => None,
        }
    }

    /// The signal that wakes this connection for deliveries and kicks.
    pub fn signal(&self) -> Option<Arc<ConnectionSignal>> {
        self.handle.as_ref().map(|h| h.signal.clone())
    }

    /// True once the connection must be closed (after writing the output).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// When the driver must call [`Channel::handle_timeout`].
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.is_closed() {
            return None;
        }
        [self.deadline, self.retry_at, self.paused_until]
            .into_iter()
            .flatten()
            .min()
    }

    /// True when the driver should stop decoding and reading: a publish
    /// filled a subscriber's mailbox ([`Channel::take_backpressure`]).
    pub fn is_backpressured(&self) -> bool {
        !self.backpressure.is_empty()
    }

    /// The sessions to wait for (each until it has room or goes offline)
    /// before reading more from this client.
    pub fn take_backpressure(&mut self) -> Vec<Arc<tributary_core::session::Session>> {
        std::mem::take(&mut self.backpressure)
    }

    /// Packets to write, in order. Reason strings and user properties are
    /// left out of any non-PUBLISH packet they would push past the client's
    /// Maximum Packet Size [MQTT-3.1.2-25] (e.g. [MQTT-3.14.2-3], [MQTT-3.4.2-2]).
    pub fn take_output(&mut self) -> Vec<Packet> {
        let mut out = std::mem::take(&mut self.output);
        if self.peer_max_packet_size != u32::MAX {
            let max = self.peer_max_packet_size as usize;
            for packet in &mut out {
                if !matches!(packet, Packet::Publish(_))
                    && encoded_len(packet, self.version).is_ok_and(|n| n > max)
                {
                    strip_diagnostics(packet);
                }
            }
        }
        out
    }

    /// True when packets are waiting to be written.
    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// The store's commit progress, to wait on [`Channel::held_ticket`].
    pub fn commits(&self) -> Option<&Arc<Commits>> {
        self.commits.as_ref()
    }

    /// The commit ticket the oldest held acknowledgement waits for.
    pub fn held_ticket(&self) -> Option<CommitTicket> {
        self.held.front().map(|(t, _)| *t)
    }

    /// True when so many acknowledgements wait for the store that the
    /// driver should stop reading.
    pub fn holds_too_many(&self) -> bool {
        self.held.len() >= MAX_HELD_ACKS
    }

    /// Release the held acknowledgements whose commits are done, in order.
    pub fn release_durable(&mut self, _now: Instant) {
        let Some(commits) = self.commits.clone() else {
            return;
        };
        while let Some((ticket, _)) = self.held.front() {
            let state = commits.state(*ticket);
            if state == TicketState::Pending {
                break;
            }
            let Some((_, packet)) = self.held.pop_front() else {
                break;
            };
            self.send_ack(packet, state);
            if self.is_closed() {
                self.held.clear();
                return;
            }
        }
    }

    /// Queue an acknowledgement that must not leave before `ticket` is
    /// durable (nor before any acknowledgement already held).
    fn push_ack(&mut self, packet: Packet, ticket: Option<CommitTicket>) {
        let ticket = later(ticket, self.held.back().map(|(t, _)| *t));
        let state = match (ticket, &self.commits) {
            (Some(t), Some(c)) => c.state(t),
            _ => TicketState::Durable,
        };
        match (state, ticket) {
            (TicketState::Pending, Some(t)) => self.held.push_back((t, packet)),
            _ => self.send_ack(packet, state),
        }
    }

    fn send_ack(&mut self, mut packet: Packet, state: TicketState) {
        if state == TicketState::Failed {
            let m = self.broker.metrics();
            m.inc(&m.store_refused);
            match &mut packet {
                Packet::PubAck(a) | Packet::PubRec(a)
                    if self.version.is_v5() && a.reason < 0x80 =>
                {
                    // The message is not durable: tell the publisher (its
                    // copy is what counts) [MQTT-3.4.2.1], [MQTT-3.5.2.1].
                    a.reason = rc::QUOTA_EXCEEDED;
                }
                _ => {
                    return self.violation(
                        rc::UNSPECIFIED_ERROR,
                        "store write failed; the client resends after reconnecting",
                    );
                }
            }
        }
        self.output.push(packet);
    }

    /// A packet from the client.
    pub fn handle_packet(&mut self, packet: Packet, now: Instant) {
        if self.is_closed() {
            return;
        }
        if let State::Connected(c) = &self.state {
            self.deadline = c.keep_alive_window.map(|w| now + w);
        }
        match (&self.state, packet) {
            (State::AwaitingConnect, Packet::Connect(connect)) => {
                self.handle_connect(*connect, now)
            }
            (State::Authenticating(p), Packet::Auth(auth)) if p.enhanced.is_some() => {
                self.handle_auth_packet(auth, now)
            }
            (State::Authenticating(_), _) => {
                // Only AUTH may follow a CONNECT with an Authentication
                // Method before the CONNACK [MQTT-4.12.0-3]... and nothing
                // is decoded while a backend decides.
                self.close_now();
            }
            (State::AwaitingConnect, _) => {
                // [MQTT-3.1.0-1]: the first packet must be CONNECT.
                debug!("first packet is not CONNECT [MQTT-3.1.0-1]");
                self.close_now();
            }
            (State::Connected(_), Packet::Connect(_)) => {
                self.violation(rc::PROTOCOL_ERROR, "second CONNECT [MQTT-3.1.0-2]");
            }
            (State::Connected(_), Packet::Publish(p)) => self.handle_publish(p, now),
            (State::Connected(_), Packet::PubAck(ack)) => {
                if let Some(h) = &self.handle {
                    h.acknowledge(ack.packet_id);
                }
                self.poll_deliveries(now);
            }
            (State::Connected(_), Packet::PubRec(rec)) => self.handle_pubrec(rec, now),
            (State::Connected(_), Packet::PubRel(rel)) => {
                let (known, ticket) = match &self.handle {
                    Some(h) => (h.release_incoming_qos2(rel.packet_id), h.take_ticket()),
                    None => (false, None),
                };
                let reason = if known {
                    rc::SUCCESS
                } else {
                    rc::PACKET_IDENTIFIER_NOT_FOUND
                };
                self.push_ack(Packet::PubComp(ack(rel.packet_id, reason)), ticket);
            }
            (State::Connected(_), Packet::PubComp(comp)) => {
                if let Some(h) = &self.handle {
                    h.complete_qos2(comp.packet_id);
                }
                self.poll_deliveries(now);
            }
            (State::Connected(_), Packet::Subscribe(s)) => self.handle_subscribe(s, now),
            (State::Connected(_), Packet::Unsubscribe(u)) => self.handle_unsubscribe(u),
            (State::Connected(_), Packet::PingReq) => self.output.push(Packet::PingResp),
            (State::Connected(_), Packet::Disconnect(d)) => self.handle_disconnect(d, now),
            (State::Connected(_), Packet::Auth(_)) => {
                // No enhanced authentication method was accepted at CONNECT,
                // so an AUTH packet is a protocol error [MQTT-4.12.0-1].
                self.violation(rc::PROTOCOL_ERROR, "AUTH without an authentication method");
            }
            (State::Connected(_), _) => {
                self.violation(rc::PROTOCOL_ERROR, "packet type not allowed from a client");
            }
            (State::Closed, _) => {}
        }
    }

    /// The decoder failed: answer per the spec and close.
    pub fn handle_decode_error(&mut self, error: &DecodeError, _now: Instant) {
        self.broker
            .metrics()
            .inc(&self.broker.metrics().packets_malformed);
        match (&self.state, error) {
            (State::AwaitingConnect, DecodeError::UnsupportedProtocol { level }) => {
                debug!(level, "unsupported protocol level");
                let v5 = *level == 5;
                if v5 {
                    self.version = ProtocolVersion::V5;
                }
                self.output.push(Packet::ConnAck(ConnAck {
                    session_present: false,
                    code: if v5 {
                        rc::UNSUPPORTED_PROTOCOL_VERSION
                    } else {
                        rc::V3_UNACCEPTABLE_PROTOCOL_VERSION
                    },
                    properties: Properties::default(),
                }));
                self.close_now();
            }
            (State::AwaitingConnect, e) => {
                debug!(error = %e, "bad CONNECT");
                if self.version.is_v5() {
                    self.output.push(Packet::ConnAck(ConnAck {
                        session_present: false,
                        code: e.reason_code(),
                        properties: Properties::default(),
                    }));
                }
                self.close_now();
            }
            (_, e) => self.violation(e.reason_code(), "undecodable packet"),
        }
    }

    /// The connection's keep-alive, connect or retransmission deadline may
    /// have passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.paused_until.is_some_and(|at| at <= now) {
            self.paused_until = None;
        }
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retransmit(now);
        }
        let Some(deadline) = self.deadline else {
            return;
        };
        if now < deadline || self.is_closed() {
            return;
        }
        match self.state {
            State::AwaitingConnect | State::Authenticating(_) => {
                debug!("no CONNECT (or authentication) within the connect timeout");
                self.close_now();
            }
            State::Connected(_) => {
                debug!("keep alive expired [MQTT-3.1.2-24]");
                self.violation(rc::KEEP_ALIVE_TIMEOUT, "keep alive timeout");
            }
            State::Closed => {}
        }
    }

    /// The core woke this connection: deliveries to send, or a kick.
    pub fn handle_wake(&mut self, now: Instant) {
        if !matches!(self.state, State::Connected(_)) {
            return;
        }
        match self.handle.as_ref().and_then(|h| h.signal.kicked()) {
            Some(reason) => self.handle_kick(reason),
            None => self.poll_deliveries(now),
        }
    }

    fn handle_kick(&mut self, reason: KickReason) {
        let (code, kind) = match reason {
            // The session now belongs to the new connection; nothing to close.
            KickReason::Takeover => (rc::SESSION_TAKEN_OVER, None),
            KickReason::Administrative => (rc::ADMINISTRATIVE_ACTION, Some(CloseKind::Abnormal)),
            KickReason::ServerShutdown => (
                rc::SERVER_SHUTTING_DOWN,
                Some(CloseKind::Normal {
                    publish_will: false,
                }),
            ),
        };
        info!(client_id = ?self.client_id(), ?reason, "disconnecting client");
        if self.version.is_v5() {
            self.output.push(Packet::Disconnect(Disconnect {
                reason: code,
                properties: Properties::default(),
            }));
        }
        match kind {
            Some(kind) => self.close_kind = kind,
            None => self.handle = None,
        }
        self.state = State::Closed;
    }

    /// The server is shutting down: say so and close.
    pub fn shutdown(&mut self) {
        if let State::Connected(_) = self.state {
            self.handle_kick(KickReason::ServerShutdown);
        } else {
            self.pending_auth = None;
            self.state = State::Closed;
        }
    }

    /// The transport is gone (or the driver closed it after writing the
    /// output): end the session's connection in the core. Idempotent.
    pub fn finish(&mut self, now: Instant) {
        self.state = State::Closed;
        if let Some(handle) = self.handle.take() {
            self.broker.close_session(&handle, self.close_kind, now);
        }
    }

    fn close_now(&mut self) {
        self.pending_auth = None;
        self.state = State::Closed;
    }

    /// A protocol violation: MQTT 5 clients get DISCONNECT with `reason`
    /// first; the will applies. This is the channel's one "rescue" point.
    fn violation(&mut self, reason: u8, why: &'static str) {
        debug!(client_id = ?self.client_id(), reason = format_args!("{reason:#04x}"), why, "closing connection");
        if self.version.is_v5() && matches!(self.state, State::Connected(_)) {
            let properties = PropertyValues {
                reason_string: Some(why.to_string()),
                ..PropertyValues::default()
            }
            .into();
            self.output
                .push(Packet::Disconnect(Disconnect { reason, properties }));
        }
        self.close_kind = CloseKind::Abnormal;
        self.state = State::Closed;
    }
}

// CONNECT (§3.1).
impl Channel {
    fn refuse_connect(&mut self, reason: u8, why: &'static str) {
        debug!(
            reason = format_args!("{reason:#04x}"),
            why, "CONNECT refused"
        );
        let code = if self.version.is_v5() {
            reason
        } else {
            connack_v3(reason)
        };
        let mut properties = Properties::default();
        if self.version.is_v5() {
            properties.reason_string = Some(why.to_string());
        }
        self.output.push(Packet::ConnAck(ConnAck {
            session_present: false,
            code,
            properties,
        }));
        self.close_now();
    }

    fn handle_connect(&mut self, connect: Connect, now: Instant) {
        self.version = connect.protocol;
        let v5 = self.version.is_v5();
        let cfg = self.config.clone();
        let props = &connect.properties;
        if v5 {
            self.peer_max_packet_size = props.maximum_packet_size.unwrap_or(u32::MAX);
        }

        // Client identifier rules: [MQTT-3.1.3-7], [MQTT-3.1.3-8]; 3.1 limits it to 23 bytes.
        let mut assigned = None;
        let client_id: Arc<str> = if connect.client_id.is_empty() {
            if !v5 && (!connect.clean_start || self.version == ProtocolVersion::V3_1) {
                return self.refuse_connect(
                    rc::CLIENT_IDENTIFIER_NOT_VALID,
                    "empty client id needs clean session",
                );
            }
            let id = generated_client_id();
            if v5 {
                assigned = Some(id.clone());
            }
            id.into()
        } else {
            if connect.client_id.len() > cfg.max_clientid_len
                || (self.version == ProtocolVersion::V3_1 && connect.client_id.len() > 23)
            {
                return self.refuse_connect(rc::CLIENT_IDENTIFIER_NOT_VALID, "client id too long");
            }
            connect.client_id.as_str().into()
        };

        // The will (§3.1.2.5): its topic must be a valid name.
        let mut will = None;
        if let Some(w) = &connect.will {
            if self.broker.check_topic_name(&w.topic).is_err() {
                return self.refuse_connect(rc::TOPIC_NAME_INVALID, "invalid will topic");
            }
            if w.qos > cfg.max_qos {
                return self.refuse_connect(rc::QOS_NOT_SUPPORTED, "will QoS not supported");
            }
            if w.retain && !cfg.retain_available {
                return self.refuse_connect(rc::RETAIN_NOT_SUPPORTED, "will retain not supported");
            }
            let mut message = Message::new(
                w.topic.as_str(),
                w.payload.clone(),
                core_qos(w.qos),
                w.retain,
            );
            message.publisher = Some(client_id.clone());
            message.properties = message_properties(&w.properties);
            will = Some(Will {
                message,
                delay_interval: w.properties.will_delay_interval.unwrap_or(0),
                message_expiry_interval: w.properties.message_expiry_interval,
            });
        }

        let pre = self.pre_connect.take();
        let client = ClientInfo {
            client_id: client_id.clone(),
            username: pre
                .as_ref()
                .and_then(|p| p.transport_username.clone())
                .or_else(|| connect.username.clone()),
            peer: pre.and_then(|p| p.peer),
            protocol: "mqtt",
        };
        let mut parked = ParkedConnect {
            connect: Box::new(connect),
            client,
            will,
            assigned,
            enhanced: None,
        };
        if let Some(method) = parked.connect.properties.authentication_method.clone() {
            // Enhanced authentication (§4.12).
            match self
                .broker
                .authenticator()
                .enhanced(&method, &parked.client)
            {
                EnhancedStart::Unsupported => {
                    return self.refuse_connect(
                        rc::BAD_AUTHENTICATION_METHOD,
                        "authentication method not supported",
                    )
                }
                EnhancedStart::Refused(outcome) => {
                    self.accept_auth_outcome(outcome);
                    return;
                }
                EnhancedStart::Started(exchange) => {
                    parked.enhanced = Some((method, exchange));
                    let data = parked
                        .connect
                        .properties
                        .authentication_data
                        .clone()
                        .unwrap_or_default();
                    self.state = State::Authenticating(Box::new(parked));
                    return self.enhanced_step(&data, now);
                }
            }
        }
        let check = self
            .broker
            .authenticator()
            .check(&parked.client, parked.connect.password.as_deref());
        match check {
            AuthCheck::Ready(outcome) => {
                if self.accept_auth_outcome(outcome) {
                    self.finish_connect(parked, None, now);
                }
            }
            AuthCheck::Pending(future) => {
                self.pending_auth = Some(future);
                self.state = State::Authenticating(Box::new(parked));
            }
        }
    }

    /// Count the outcome; refuse the CONNECT unless it is `Allow`.
    fn accept_auth_outcome(&mut self, outcome: AuthOutcome) -> bool {
        let metrics = self.broker.metrics();
        match outcome {
            AuthOutcome::Allow => {
                metrics.inc(&metrics.auth_success);
                true
            }
            AuthOutcome::BadCredentials => {
                metrics.inc(&metrics.auth_failure);
                self.refuse_connect(rc::BAD_USERNAME_OR_PASSWORD, "bad user name or password");
                false
            }
            AuthOutcome::NotAuthorized => {
                metrics.inc(&metrics.auth_failure);
                self.refuse_connect(rc::NOT_AUTHORIZED, "not authorized");
                false
            }
        }
    }

    /// An AUTH packet during enhanced authentication.
    fn handle_auth_packet(&mut self, auth: Auth, now: Instant) {
        let method_ok = match &self.state {
            State::Authenticating(p) => p.enhanced.as_ref().is_some_and(|(m, _)| {
                auth.properties.authentication_method.as_deref() == Some(m.as_str())
            }),
            _ => false,
        };
        if auth.reason != rc::CONTINUE_AUTHENTICATION || !method_ok {
            // [MQTT-4.12.0-5]: same method; only Continue before CONNACK.
            return self.refuse_connect(rc::PROTOCOL_ERROR, "bad AUTH during authentication");
        }
        let data = auth
            .properties
            .authentication_data
            .clone()
            .unwrap_or_default();
        self.enhanced_step(&data, now);
    }

    fn enhanced_step(&mut self, data: &[u8], now: Instant) {
        let State::Authenticating(parked) = &mut self.state else {
            return;
        };
        let Some((method, exchange)) = parked.enhanced.as_mut() else {
            return;
        };
        let method = method.clone();
        match exchange.step(data) {
            EnhancedStep::Continue(out) => {
                self.output.push(Packet::Auth(Auth {
                    reason: rc::CONTINUE_AUTHENTICATION,
                    properties: PropertyValues {
                        authentication_method: Some(method),
                        authentication_data: Some(out.into()),
                        ..PropertyValues::default()
                    }
                    .into(),
                }));
            }
            EnhancedStep::Success { username, data } => {
                let State::Authenticating(parked) =
                    std::mem::replace(&mut self.state, State::Closed)
                else {
                    return;
                };
                let mut parked = *parked;
                parked.enhanced = None;
                parked.client.username = Some(username);
                if self.accept_auth_outcome(AuthOutcome::Allow) {
                    self.finish_connect(parked, Some((method, data)), now);
                }
            }
            EnhancedStep::Failure(outcome) => {
                let outcome = if outcome == AuthOutcome::Allow {
                    AuthOutcome::NotAuthorized
                } else {
                    outcome
                };
                self.accept_auth_outcome(outcome);
            }
        }
    }

    /// The second half of CONNECT, once the client is authenticated: will
    /// ACL, session, CONNACK. `enhanced` = (method, final data) for CONNACK.
    fn finish_connect(
        &mut self,
        parked: ParkedConnect,
        enhanced: Option<(String, Option<Vec<u8>>)>,
        now: Instant,
    ) {
        let ParkedConnect {
            connect,
            client,
            will,
            assigned,
            ..
        } = parked;
        let connect = *connect;
        let v5 = self.version.is_v5();
        let cfg = self.config.clone();
        let props = &connect.properties;
        let client_id = client.client_id.clone();
        if let Some(w) = &will {
            if !self
                .broker
                .authorize(&client, Action::Publish, &w.message.topic)
            {
                return self.refuse_connect(rc::NOT_AUTHORIZED, "will topic not authorized");
            }
        }

        let requested_expiry = if v5 {
            props.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            cfg.v3_session_expiry
        };
        let max_expiry = self.broker.config().max_session_expiry;
        let expiry = requested_expiry.min(max_expiry);
        let keep_alive = match (v5, cfg.server_keep_alive, cfg.max_keep_alive) {
            (true, Some(imposed), _) => imposed,
            (true, None, Some(max)) if connect.keep_alive == 0 || connect.keep_alive > max => max,
            _ => connect.keep_alive,
        };

        let opened = self.broker.open_session(
            SessionRequest {
                client: client.clone(),
                clean_start: connect.clean_start,
                expiry_interval: expiry,
                will,
            },
            now,
        );
        info!(client_id = %client_id, peer = ?client.peer, version = ?self.version,
              clean_start = connect.clean_start, session_present = opened.session_present,
              "client connected");

        let mut properties = Properties::default();
        if v5 {
            properties.assigned_client_identifier = assigned;
            properties.receive_maximum = Some(cfg.receive_maximum).filter(|&r| r != 65535);
            properties.topic_alias_maximum = Some(cfg.topic_alias_maximum).filter(|&t| t > 0);
            properties.maximum_packet_size = Some(cfg.max_packet_size).filter(|&m| m < 268_435_460);
            if cfg.max_qos < QoS::ExactlyOnce {
                properties.maximum_qos = Some(cfg.max_qos as u8);
            }
            if !cfg.retain_available {
                properties.retain_available = Some(0);
            }
            if !cfg.wildcard_subscription {
                properties.wildcard_subscription_available = Some(0);
            }
            if !cfg.shared_subscription {
                properties.shared_subscription_available = Some(0);
            }
            if expiry != requested_expiry {
                properties.session_expiry_interval = Some(expiry);
            }
            if keep_alive != connect.keep_alive || cfg.server_keep_alive.is_some() {
                properties.server_keep_alive = Some(keep_alive);
            }
            if let Some((method, data)) = enhanced {
                properties.authentication_method = Some(method);
                properties.authentication_data = data.map(Into::into);
            }
        }
        self.output.push(Packet::ConnAck(ConnAck {
            session_present: opened.session_present,
            code: rc::SUCCESS,
            properties,
        }));

        let keep_alive_window = keep_alive_window(keep_alive, cfg.keepalive_multiplier);
        self.deadline = keep_alive_window.map(|w| now + w);
        self.handle = Some(opened.handle);
        self.state = State::Connected(Box::new(Connected {
            client,
            keep_alive_window,
            client_receive_maximum: props.receive_maximum.unwrap_or(65535),
            client_max_packet_size: props.maximum_packet_size.unwrap_or(u32::MAX),
            client_topic_alias_max: if v5 {
                props.topic_alias_maximum.unwrap_or(0)
            } else {
                0
            },
            aliases: None,
            problem_information: props.request_problem_information.unwrap_or(1) == 1,
            connect_expiry_zero: requested_expiry == 0,
        }));

        // Resume: resend unacknowledged messages first, in order [MQTT-4.4.0-1].
        for resend in opened.resend {
            match resend {
                Resend::Publish(out) => {
                    self.push_publish(&out, now);
                }
                Resend::PubRel(id) => self.output.push(Packet::PubRel(ack(id, rc::SUCCESS))),
            }
        }
        self.poll_deliveries(now);
    }
}

// PUBLISH and its acknowledgements (§3.3–§3.7, §4.3).
impl Channel {
    /// Per-client message and byte rates (token buckets). Returns false
    /// when the connection was closed for it.
    fn within_rate(&mut self, publish: &Publish, now: Instant) -> bool {
        let Some(buckets) = self.buckets.as_deref_mut() else {
            return true;
        };
        let bytes = (publish.payload.len() + publish.topic.len()) as f64;
        let metrics = self.broker.metrics();
        if self.config.disconnect_on_rate_exceeded
            && !(buckets.messages.fits(1.0, now) && buckets.bytes.fits(bytes, now))
        {
            metrics.inc(&metrics.rate_limited);
            self.violation(rc::MESSAGE_RATE_TOO_HIGH, "message rate too high");
            return false;
        }
        let until = buckets
            .messages
            .take(1.0, now)
            .max(buckets.bytes.take(bytes, now));
        if let Some(until) = until {
            if self.paused_until.is_none() {
                metrics.inc(&metrics.rate_limited);
                debug!(client_id = ?self.client_id(), "rate exceeded; input paused");
            }
            self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
        }
        true
    }

    fn handle_publish(&mut self, publish: Publish, now: Instant) {
        if !self.within_rate(&publish, now) {
            return;
        }
        self.broker
            .metrics()
            .message_in("mqtt", core_qos(publish.qos));
        let v5 = self.version.is_v5();
        if !publish.properties.subscription_identifiers.is_empty() {
            return self.violation(
                rc::PROTOCOL_ERROR,
                "subscription identifier on a client PUBLISH [MQTT-3.3.4-6]",
            );
        }
        if publish.qos > self.config.max_qos {
            return self.violation(rc::QOS_NOT_SUPPORTED, "QoS not supported [MQTT-3.2.2-11]");
        }
        if publish.retain && !self.config.retain_available {
            return self.violation(
                rc::RETAIN_NOT_SUPPORTED,
                "retain not supported [MQTT-3.2.2-14]",
            );
        }
        let alias_max = self.config.topic_alias_maximum;
        let State::Connected(conn) = &mut self.state else {
            return;
        };
        // Topic alias, client→server (§3.3.2.3.4).
        let topic: Arc<str> = match publish.properties.topic_alias {
            Some(alias) if alias == 0 || alias > alias_max => {
                return self.violation(
                    rc::TOPIC_ALIAS_INVALID,
                    "topic alias out of range [MQTT-3.3.2-9]",
                );
            }
            Some(alias) if publish.topic.is_empty() => {
                match conn.aliases.as_ref().and_then(|a| a.inbound.get(&alias)) {
                    Some(t) => t.clone(),
                    None => return self.violation(rc::PROTOCOL_ERROR, "unknown topic alias"),
                }
            }
            Some(alias) => {
                conn.aliases
                    .get_or_insert_with(Box::default)
                    .inbound
                    .insert(alias, publish.topic.clone());
                publish.topic.clone()
            }
            None => publish.topic.clone(),
        };
        if self.broker.check_topic_name(&topic).is_err() {
            return self.violation(rc::TOPIC_NAME_INVALID, "invalid topic name [MQTT-3.3.2-2]");
        }
        let Some(handle) = self.handle.clone() else {
            return;
        };
        let problem_information = conn.problem_information;
        let client = conn.client.clone();

        let allowed = self.broker.authorize(&client, Action::Publish, &topic);
        if !allowed {
            debug!(client_id = %client.client_id, topic = %topic, "publish denied");
            if self.config.disconnect_on_denied_publish {
                return self.violation(rc::NOT_AUTHORIZED, "publish not authorized");
            }
        }

        let mut message = Message::new(
            topic,
            publish.payload,
            core_qos(publish.qos),
            publish.retain,
        );
        message.publisher = Some(client.client_id.clone());
        message.properties = message_properties(&publish.properties);
        let message = message.with_expiry_interval(publish.properties.message_expiry_interval, now);

        match (publish.qos, publish.packet_id) {
            (QoS::AtMostOnce, _) => {
                if allowed {
                    self.broker.publish(message, now);
                }
            }
            (QoS::AtLeastOnce, Some(id)) => {
                let mut ticket = None;
                let reason = if !allowed {
                    rc::NOT_AUTHORIZED
                } else if self.broker.publish_durable(
                    message,
                    now,
                    &mut self.backpressure,
                    &mut ticket,
                ) == 0
                {
                    rc::NO_MATCHING_SUBSCRIBERS
                } else {
                    rc::SUCCESS
                };
                self.push_ack(
                    Packet::PubAck(ack_with(id, reason, problem_information)),
                    ticket,
                );
            }
            (QoS::ExactlyOnce, Some(id)) => {
                if !allowed {
                    self.push_ack(
                        Packet::PubRec(ack_with(id, rc::NOT_AUTHORIZED, problem_information)),
                        None,
                    );
                    return;
                }
                let limit = if v5 {
                    usize::from(self.config.receive_maximum)
                } else {
                    self.config.max_awaiting_rel
                };
                match handle.begin_incoming_qos2(id, limit, now, self.config.await_rel_timeout) {
                    IncomingQos2::New => {
                        let mut ticket = handle.take_ticket();
                        let reason = if self.broker.publish_durable(
                            message,
                            now,
                            &mut self.backpressure,
                            &mut ticket,
                        ) == 0
                        {
                            rc::NO_MATCHING_SUBSCRIBERS
                        } else {
                            rc::SUCCESS
                        };
                        self.push_ack(
                            Packet::PubRec(ack_with(id, reason, problem_information)),
                            ticket,
                        );
                    }
                    // A resent PUBLISH: acknowledge again, never route twice [MQTT-4.3.3-10].
                    IncomingQos2::Duplicate => {
                        self.push_ack(Packet::PubRec(ack(id, rc::SUCCESS)), None)
                    }
                    IncomingQos2::Full if v5 => self.violation(
                        rc::RECEIVE_MAXIMUM_EXCEEDED,
                        "receive maximum exceeded [MQTT-3.3.4-9]",
                    ),
                    IncomingQos2::Full => self.violation(
                        rc::QUOTA_EXCEEDED,
                        "too many QoS 2 messages awaiting PUBREL",
                    ),
                }
            }
            (_, None) => self.violation(rc::PROTOCOL_ERROR, "QoS > 0 without packet id"),
        }
    }

    /// MQTT 3.x: resend what has waited `retry_interval` for its
    /// acknowledgement, with DUP set.
    fn retransmit(&mut self, now: Instant) {
        let Some(handle) = self.handle.clone() else {
            self.retry_at = None;
            return;
        };
        let (due, next) = handle.retry_due(now, self.config.retry_interval);
        self.retry_at = next;
        for resend in due {
            match resend {
                Resend::Publish(out) => {
                    self.push_publish(&out, now);
                }
                Resend::PubRel(id) => self.output.push(Packet::PubRel(ack(id, rc::SUCCESS))),
            }
        }
    }

    fn handle_pubrec(&mut self, rec: PubResponse, now: Instant) {
        let Some(handle) = self.handle.clone() else {
            return;
        };
        let known = handle.received(rec.packet_id, rec.reason < 0x80);
        if rec.reason < 0x80 {
            let reason = if known {
                rc::SUCCESS
            } else {
                rc::PACKET_IDENTIFIER_NOT_FOUND
            };
            // Released only once durable: a restart must not send the
            // message again after its PUBREL.
            let ticket = handle.take_ticket();
            self.push_ack(Packet::PubRel(ack(rec.packet_id, reason)), ticket);
        }
        self.poll_deliveries(now);
    }

    /// Turn pending deliveries into PUBLISH packets within the client's
    /// receive window and maximum packet size.
    pub fn poll_deliveries(&mut self, now: Instant) {
        let Some(handle) = self.handle.clone() else {
            return;
        };
        let State::Connected(conn) = &self.state else {
            return;
        };
        let window = usize::from(conn.client_receive_maximum.min(self.config.max_inflight));
        let max_size = conn.client_max_packet_size as usize;
        // Most clients announce no Maximum Packet Size: skip sizing then.
        let unlimited = conn.client_max_packet_size == u32::MAX;
        let version = self.version;
        let outgoing = handle.take_for_send(now, SEND_BATCH, window, self.broker.metrics(), |d| {
            unlimited || publish_size(d, version, now) <= max_size
        });
        if outgoing.len() == SEND_BATCH && handle.has_sendable(window) {
            // More is waiting: come back after the socket has had its turn.
            handle.signal.wake();
        }
        for out in outgoing {
            if out.packet_id.is_some() && !version.is_v5() && self.retry_at.is_none() {
                self.retry_at = Some(now + self.config.retry_interval);
            }
            self.push_publish(&out, now);
        }
    }

    /// Queue the PUBLISH for `out`, built in place in the output queue.
    fn push_publish(&mut self, out: &Outgoing, now: Instant) {
        let State::Connected(conn) = &mut self.state else {
            return;
        };
        let d = &out.delivery;
        // MQTT 3.x carries no properties: nothing to build for it.
        let mut properties = if self.version.is_v5() {
            publish_properties(d, now)
        } else {
            Properties::default()
        };
        let mut topic = d.message.topic.clone();
        // Topic alias, server→client: assign while there is room, then reuse.
        if conn.client_topic_alias_max > 0 {
            match conn
                .aliases
                .as_ref()
                .and_then(|a| a.outbound.get(&d.message.topic))
            {
                Some(&alias) => {
                    properties.topic_alias = Some(alias);
                    topic = no_topic();
                }
                None => {
                    let aliases = conn.aliases.get_or_insert_with(Box::default);
                    let next = aliases.outbound.len() + 1;
                    if next <= usize::from(conn.client_topic_alias_max) {
                        let alias = next as u16;
                        aliases.outbound.insert(d.message.topic.clone(), alias);
                        properties.topic_alias = Some(alias);
                    }
                }
            }
        }
        self.broker.metrics().message_out("mqtt", d.qos);
        self.output.push(Packet::Publish(Publish {
            dup: out.dup,
            qos: mqtt_qos(d.qos),
            retain: d.retain,
            topic,
            packet_id: out.packet_id,
            properties,
            payload: d.message.payload.clone(),
        }));
    }
}

// SUBSCRIBE, UNSUBSCRIBE, DISCONNECT (§3.8–§3.14).
impl Channel {
    fn handle_subscribe(&mut self, subscribe: Subscribe, now: Instant) {
        let v5 = self.version.is_v5();
        let Some(handle) = self.handle.clone() else {
            return;
        };
        let State::Connected(conn) = &self.state else {
            return;
        };
        let client = conn.client.clone();
        let subscription_id = subscribe
            .properties
            .subscription_identifiers
            .first()
            .copied();
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        // Filters held, for the per-client subscription quota.
        let mut held: Option<std::collections::HashSet<Arc<str>>> =
            (self.config.max_subscriptions > 0).then(|| {
                handle
                    .session
                    .subscriptions()
                    .into_iter()
                    .map(|(f, _)| f)
                    .collect()
            });
        for (raw, opts) in &subscribe.filters {
            let parsed = match self.broker.check_filter(raw) {
                Ok(p) => p,
                Err(_) => {
                    reasons.push(if v5 {
                        rc::TOPIC_FILTER_INVALID
                    } else {
                        rc::UNSPECIFIED_ERROR
                    });
                    continue;
                }
            };
            if parsed.share_group.is_some() && opts.no_local && v5 {
                // [MQTT-3.8.3-4]
                return self.violation(rc::PROTOCOL_ERROR, "no local on a shared subscription");
            }
            if parsed.share_group.is_some() && !self.config.shared_subscription {
                reasons.push(if v5 {
                    rc::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
                } else {
                    rc::UNSPECIFIED_ERROR
                });
                continue;
            }
            if tributary_core::topic::has_wildcard(parsed.filter)
                && !self.config.wildcard_subscription
            {
                reasons.push(if v5 {
                    rc::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED
                } else {
                    rc::UNSPECIFIED_ERROR
                });
                continue;
            }
            if !self
                .broker
                .authorize(&client, Action::Subscribe, parsed.filter)
            {
                reasons.push(if v5 {
                    self.config.subscribe_denied_reason
                } else {
                    rc::UNSPECIFIED_ERROR
                });
                continue;
            }
            if let Some(held) = held.as_mut() {
                if !held.contains(raw.as_str()) {
                    if held.len() >= self.config.max_subscriptions {
                        let m = self.broker.metrics();
                        m.inc(&m.subscriptions_refused_quota);
                        reasons.push(if v5 {
                            rc::QUOTA_EXCEEDED
                        } else {
                            rc::UNSPECIFIED_ERROR
                        });
                        continue;
                    }
                    held.insert(raw.as_str().into());
                }
            }
            let granted = opts.qos.min(self.config.max_qos);
            let options = SubOptions {
                qos: core_qos(granted),
                no_local: opts.no_local,
                retain_as_published: opts.retain_as_published,
                retain_handling: opts.retain_handling,
                subscription_id,
            };
            match self.broker.subscribe(&handle, raw, options, now) {
                Ok(_) => reasons.push(granted as u8),
                Err(_) => reasons.push(if v5 {
                    rc::TOPIC_FILTER_INVALID
                } else {
                    rc::UNSPECIFIED_ERROR
                }),
            }
        }
        // SUBACK goes out before any retained message it triggered [MQTT-3.8.4-1].
        self.output.push(Packet::SubAck(SubAck {
            packet_id: subscribe.packet_id,
            properties: Properties::default(),
            reasons,
        }));
        self.poll_deliveries(now);
    }

    fn handle_unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let Some(handle) = self.handle.clone() else {
            return;
        };
        let reasons = unsubscribe
            .filters
            .iter()
            .map(|f| {
                if self.broker.unsubscribe(&handle, f) {
                    rc::SUCCESS
                } else {
                    rc::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        self.output.push(Packet::UnsubAck(UnsubAck {
            packet_id: unsubscribe.packet_id,
            properties: Properties::default(),
            reasons: if self.version.is_v5() {
                reasons
            } else {
                Vec::new()
            },
        }));
    }

    fn handle_disconnect(&mut self, disconnect: Disconnect, _now: Instant) {
        let State::Connected(conn) = &self.state else {
            return;
        };
        if let Some(expiry) = disconnect.properties.session_expiry_interval {
            if conn.connect_expiry_zero && expiry != 0 {
                // [MQTT-3.14.2-2]
                return self.violation(
                    rc::PROTOCOL_ERROR,
                    "session expiry set on DISCONNECT after zero in CONNECT",
                );
            }
            if let Some(h) = &self.handle {
                h.set_expiry_interval(expiry.min(self.broker.config().max_session_expiry));
            }
        }
        debug!(client_id = %conn.client.client_id, reason = disconnect.reason, "client disconnected");
        self.close_kind = CloseKind::Normal {
            publish_will: disconnect.reason == rc::DISCONNECT_WITH_WILL,
        };
        self.state = State::Closed;
    }
}

/// Drop the optional diagnostics (reason string, user properties) from a
/// non-PUBLISH packet.
fn strip_diagnostics(packet: &mut Packet) {
    let props = match packet {
        Packet::ConnAck(p) => &mut p.properties,
        Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
            &mut p.properties
        }
        Packet::SubAck(p) => &mut p.properties,
        Packet::UnsubAck(p) => &mut p.properties,
        Packet::Disconnect(p) => &mut p.properties,
        Packet::Auth(p) => &mut p.properties,
        _ => return,
    };
    if !props.is_empty() {
        props.reason_string = None;
        props.user_properties.clear();
    }
}

/// The empty topic of a PUBLISH that names its topic by alias, shared.
fn no_topic() -> Arc<str> {
    static EMPTY: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
    EMPTY.clone()
}

fn keep_alive_window(keep_alive: u16, multiplier: f64) -> Option<Duration> {
    (keep_alive > 0).then(|| Duration::from_secs_f64(f64::from(keep_alive) * multiplier))
}

fn ack(packet_id: u16, reason: u8) -> PubResponse {
    PubResponse {
        packet_id,
        reason,
        properties: Properties::default(),
    }
}

fn ack_with(packet_id: u16, reason: u8, problem_information: bool) -> PubResponse {
    let mut r = ack(packet_id, reason);
    if problem_information && reason == rc::NOT_AUTHORIZED {
        r.properties.reason_string = Some("not authorized".into());
    }
    r
}

fn core_qos(q: QoS) -> tributary_core::QoS {
    match q {
        QoS::AtMostOnce => tributary_core::QoS::AtMostOnce,
        QoS::AtLeastOnce => tributary_core::QoS::AtLeastOnce,
        QoS::ExactlyOnce => tributary_core::QoS::ExactlyOnce,
    }
}

fn mqtt_qos(q: tributary_core::QoS) -> QoS {
    match q {
        tributary_core::QoS::AtMostOnce => QoS::AtMostOnce,
        tributary_core::QoS::AtLeastOnce => QoS::AtLeastOnce,
        tributary_core::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn message_properties(p: &Properties) -> MessageProperties {
    MessageProperties {
        payload_format_indicator: p.payload_format_indicator,
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone(),
        user_properties: p.user_properties.clone(),
    }
}

fn publish_properties(d: &Delivery, now: Instant) -> Properties {
    let m = &d.message;
    let message_expiry_interval = m.remaining_expiry(now);
    let p = &m.properties;
    if message_expiry_interval.is_none()
        && d.subscription_ids.is_empty()
        && p.payload_format_indicator.is_none()
        && p.content_type.is_none()
        && p.response_topic.is_none()
        && p.correlation_data.is_none()
        && p.user_properties.is_empty()
    {
        // Most messages: nothing to build and nothing to allocate.
        return Properties::default();
    }
    PropertyValues {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval,
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone(),
        user_properties: p.user_properties.clone(),
        subscription_identifiers: d.subscription_ids.clone(),
        ..PropertyValues::default()
    }
    .into()
}

/// Encoded size of the PUBLISH for `d`, to respect the client's Maximum
/// Packet Size [MQTT-3.1.2-25].
fn publish_size(d: &Delivery, version: ProtocolVersion, now: Instant) -> usize {
    let p = Packet::Publish(Publish {
        dup: false,
        qos: mqtt_qos(d.qos),
        retain: d.retain,
        topic: d.message.topic.clone(),
        packet_id: (d.qos != tributary_core::QoS::AtMostOnce).then_some(1),
        properties: publish_properties(d, now),
        payload: Bytes::new(),
    });
    // A topic alias can only shrink the packet; measured without one.
    encoded_len(&p, version).map_or(usize::MAX, |n| n + d.message.payload.len())
}

fn generated_client_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let salt = std::process::id();
    format!("tributary-{salt:x}-{n}")
}
