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
//!
//! Every PUBLISH enters the core through [`Broker::admit`] (the one intake:
//! ACL, rates, retained, routing, durable commit, backpressure); the
//! admission's verdict becomes the PUBACK / PUBREC reason (0x87 denied,
//! 0x10 no subscribers, 0x96 rate exceeded in disconnect mode).
//!
//! Durability (DESIGN.md §1): a PUBACK / PUBREC for a message that a durable
//! store must keep (queued for a persistent session, retained), the PUBREC /
//! PUBCOMP for incoming QoS 2 state, and the PUBREL for outgoing QoS 2
//! state are held until the store's commit ticket resolves (the core's
//! [`HeldAcks`]; the driver waits through the connection contract); the
//! connection keeps serving other packets meanwhile. Acknowledgements after
//! a held one queue behind it, so they leave in the order the client sent
//! its packets [MQTT-4.6.0-2..4]. A failed write turns a held PUBACK /
//! PUBREC into 0x97 (quota exceeded) for MQTT 5 and closes a 3.x connection
//! (its client resends).
//!
//! The connect timeout and keep alive are enforced by the driver
//! ([`tributary_core::connection::Watchdog`]) from what the channel reports
//! (`connection.rs`): it calls [`Channel::handle_limit`] when one trips.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info};
use tributary_core::ack::HeldAcks;
use tributary_core::auth::{
    Action, AuthCheck, AuthFuture, AuthOutcome, EnhancedAuth, EnhancedStart, EnhancedStep,
};
use tributary_core::connection::Limit;
use tributary_core::intake::{Publisher, Verdict};
use tributary_core::session::IncomingQos2;
use tributary_core::storage::{CommitTicket, Commits, TicketState};
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
            max_subscriptions: 0,
        }
    }
}

/// How many deliveries one wake-up turns into packets at most, so one busy
/// session cannot starve the socket reader.
const SEND_BATCH: usize = 256;

struct Connected {
    /// The client, with its side of the core's intake (rates, congestion).
    intake: Publisher,
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
    /// When unacknowledged messages are next due for retransmission (3.x only).
    retry_at: Option<Instant>,
    /// The client's Maximum Packet Size (MQTT 5), `u32::MAX` when unset.
    peer_max_packet_size: u32,
    /// How the session ends when the connection closes.
    close_kind: CloseKind,
    /// An authentication decision for the driver to await.
    pending_auth: Option<AuthFuture>,
    /// Acknowledgements waiting for their store commit, oldest first.
    held: HeldAcks<Packet>,
}

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
    /// A channel for a new connection accepted at `now` (the driver's
    /// watchdog counts the connect timeout from then).
    pub fn new(
        broker: Arc<Broker>,
        config: Arc<ChannelConfig>,
        peer: Option<SocketAddr>,
        _now: Instant,
    ) -> Channel {
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
            retry_at: None,
            peer_max_packet_size: u32::MAX,
            close_kind: CloseKind::Abnormal,
            pending_auth: None,
            held: HeldAcks::new(broker.persistence().commits()),
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

    /// Input from the client is paused until then (over its rate, throttle
    /// mode); the driver stops reading and calls
    /// [`Channel::handle_timeout`] at that time.
    pub fn read_paused_until(&self) -> Option<Instant> {
        match &self.state {
            State::Connected(c) => c.intake.throttled_until(),
            _ => None,
        }
    }

    /// The version to decode and encode with.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// Time allowed from the connection's start to its CONNACK.
    pub fn connect_timeout(&self) -> Duration {
        self.config.connect_timeout
    }

    /// Largest packet accepted from the client.
    pub fn max_packet_size(&self) -> usize {
        self.config.max_packet_size as usize
    }

    /// The client id once connected.
    pub fn client_id(&self) -> Option<&str> {
        match &self.state {
            State::Connected(c) => Some(&c.intake.client().client_id),
            _ => None,
        }
    }

    /// True once the CONNACK accepted the client.
    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Connected(_))
    }

    /// How long the client may stay silent once connected (keep alive ×
    /// the multiplier); `None` with keep alive 0.
    pub fn keep_alive_window(&self) -> Option<Duration> {
        match &self.state {
            State::Connected(c) => c.keep_alive_window,
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

    /// When the driver must call [`Channel::handle_timeout`]: in-session
    /// retransmission (3.x) and the end of a rate pause.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.is_closed() {
            return None;
        }
        [self.retry_at, self.read_paused_until()]
            .into_iter()
            .flatten()
            .min()
    }

    /// True when the driver should stop decoding and reading: a publish
    /// filled a subscriber's mailbox ([`Channel::take_backpressure`]).
    pub fn is_backpressured(&self) -> bool {
        matches!(&self.state, State::Connected(c) if c.intake.is_congested())
    }

    /// The sessions to wait for (each until it has room, goes offline, or
    /// the broker's `max_pause` passes) before reading more from this client.
    pub fn take_backpressure(&mut self) -> Vec<Arc<tributary_core::session::Session>> {
        match &mut self.state {
            State::Connected(c) => c.intake.take_congestion(),
            _ => Vec::new(),
        }
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
        self.held.commits()
    }

    /// The commit ticket the connection waits for: its oldest held
    /// acknowledgement's, or the session's spilled queue to read back.
    pub fn held_ticket(&self) -> Option<CommitTicket> {
        let refill = self.handle.as_ref().and_then(|h| h.refill_ticket());
        match (self.held.oldest(), refill) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// True when so many acknowledgements wait for the store that the
    /// driver should stop reading.
    pub fn holds_too_many(&self) -> bool {
        self.held.is_full()
    }

    /// Release the held acknowledgements whose commits are done, in order,
    /// and take deliveries a spilled queue was waiting to read back.
    pub fn release_durable(&mut self, now: Instant) {
        while let Some((packet, state)) = self.held.release() {
            self.send_ack(packet, state);
            if self.is_closed() {
                self.held.clear();
                return;
            }
        }
        if self
            .handle
            .as_ref()
            .is_some_and(|h| h.refill_ticket().is_some())
        {
            self.poll_deliveries(now);
        }
    }

    /// Queue an acknowledgement that must not leave before `ticket` is
    /// durable (nor before any acknowledgement already held).
    fn push_ack(&mut self, packet: Packet, ticket: Option<CommitTicket>) {
        if let Some((packet, state)) = self.held.hold(packet, ticket) {
            self.send_ack(packet, state);
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
        if let State::Connected(c) = &mut self.state {
            c.intake.resume(now);
        }
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retransmit(now);
        }
    }

    /// The driver's watchdog tripped `limit`: close, saying why where MQTT
    /// can (a keep-alive timeout to an MQTT 5 client: DISCONNECT 0x8D).
    pub fn handle_limit(&mut self, limit: Limit, _now: Instant) {
        match limit {
            Limit::PreAuthTimeout | Limit::PreAuthBytes => {
                debug!(
                    limit = limit.name(),
                    "no CONNECT (or authentication) within the budget"
                );
                self.close_now();
            }
            Limit::IdleTimeout => {
                debug!("keep alive expired [MQTT-3.1.2-24]");
                self.violation(rc::KEEP_ALIVE_TIMEOUT, "keep alive timeout");
            }
            Limit::WriteStall => {
                // Nothing can reach the client any more.
                self.output.clear();
                self.close_kind = CloseKind::Abnormal;
                self.state = State::Closed;
            }
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

mod connect;
mod publish;
mod subscribe;

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
