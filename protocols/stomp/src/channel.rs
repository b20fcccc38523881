//! The STOMP channel: one connection's protocol state machine, sans-IO.
//!
//! The driver (TCP, WebSocket or SockJS) feeds it decoded frames, decode
//! errors, "bytes arrived" notices, wake-ups and the current time; the
//! channel calls the core [`Broker`] and queues [`Output`] (frames and
//! heart-beats) for the driver to encode and write. It never touches a
//! socket or reads a clock.
//!
//! ```text
//!            CONNECT / STOMP ok                  DISCONNECT / ERROR / kick
//!  Awaiting ───────────────────▶ Connected ──────────────────────────▶ Closed
//!     │  │ backend answers later   ▲                                     ▲
//!     │  └──────▶ Authenticating ──┘ (refused, timeout) ─────────────────┤
//!     │ other frame, timeout, bad CONNECT                                 │
//!     └───────────────────────────────────────────────────────────────────┘
//! ```
//!
//! Authentication goes through the core's
//! [`tributary_core::auth::Authenticator::check`]: when a
//! backend answers later (HTTP, say) the CONNECT is parked and
//! [`Channel::take_auth_future`] hands the driver the decision to await;
//! the driver decodes nothing more until it calls
//! [`Channel::handle_auth_result`] (ADR 0011).
//!
//! SEND at QoS 1/2 uses [`Broker::publish_with_backpressure`]: a subscriber
//! whose mailbox that filled is reported through
//! [`Channel::take_backpressure`], and the driver stops reading until it has
//! room (ADR 0009), instead of the overflow policy dropping messages.
//!
//! Mapping onto the core (see `docs/protocol-mapping.md`, `## STOMP`):
//! - `destination` = MQTT topic with the mountpoint prepended; SUBSCRIBE
//!   accepts MQTT wildcards and `$share/{group}/…`.
//! - Each STOMP subscription gets a process-unique number, passed to the
//!   core as the MQTT 5 subscription identifier, so a merged core delivery
//!   tells which STOMP subscriptions it is for. Two STOMP subscriptions on
//!   the same destination share one core subscription.
//! - SEND and SUBSCRIBE use the configured QoS (0 by default, as EMQX).
//!   QoS 1 deliveries stay in the core's inflight window until the STOMP
//!   client acknowledges them (immediately in `auto` mode), so unacked
//!   messages are redelivered or dropped by [`UnackedPolicy`] when the
//!   connection ends.
//!
//! Errors become an ERROR frame (with a `message` header) followed by
//! closing, in one place: [`Channel::violation`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info};
use tributary_core::auth::{Action, AuthCheck, AuthFuture, AuthOutcome};
use tributary_core::topic::matches;
use tributary_core::{
    Broker, ClientInfo, CloseKind, ConnectionSignal, KickReason, Message, MessageProperties,
    Outgoing, QoS, Resend, SessionHandle, SessionRequest, SubOptions,
};

use crate::codec::{DecodeError, Limits, Version};
use crate::frame::{Command, Frame};

/// What happens to messages sent on `client` / `client-individual`
/// subscriptions and not acknowledged when the connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnackedPolicy {
    /// Delivered again: shared-subscription messages to another member of
    /// the group at once; others to the same client when it reconnects with
    /// the same `client-id` within the session expiry and subscribes to a
    /// matching destination (QoS 1 subscriptions only: QoS 0 is at most once).
    Redeliver,
    /// Discarded.
    Drop,
}

/// Channel settings, shared by every connection of a listener.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// Frame limits.
    pub limits: Limits,
    /// Topic prefix added to destinations and stripped from deliveries.
    pub mountpoint: String,
    /// QoS of messages published by SEND.
    pub send_qos: QoS,
    /// QoS granted to SUBSCRIBE.
    pub subscribe_qos: QoS,
    /// Deliver retained messages on every SUBSCRIBE (otherwise only when
    /// the frame has `retain:true`).
    pub retained_on_subscribe: bool,
    /// Server side of the heart-beat header: how often we can send.
    pub heartbeat_send: Duration,
    /// Server side of the heart-beat header: how often we want to hear.
    pub heartbeat_receive: Duration,
    /// A client silent for its heart-beat interval times this is closed.
    pub heartbeat_grace: f64,
    /// Time allowed from connection to a complete CONNECT.
    pub connect_timeout: Duration,
    /// Most unacknowledged messages per connection (QoS 1 window and
    /// `client` / `client-individual` messages awaiting ACK).
    pub max_inflight: usize,
    /// Most subscriptions per connection.
    pub max_subscriptions: usize,
    /// Most open transactions per connection.
    pub max_transactions: usize,
    /// Most frames buffered in one transaction.
    pub max_transaction_frames: usize,
    /// Unacknowledged messages on disconnect.
    pub unacked_on_disconnect: UnackedPolicy,
    /// Seconds a session of a client that sent `client-id` outlives its
    /// connection (under [`UnackedPolicy::Redeliver`]).
    pub session_expiry: u32,
    /// `server` header of CONNECTED.
    pub server_name: String,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            limits: Limits::default(),
            mountpoint: String::new(),
            send_qos: QoS::AtMostOnce,
            subscribe_qos: QoS::AtMostOnce,
            retained_on_subscribe: false,
            heartbeat_send: Duration::from_secs(10),
            heartbeat_receive: Duration::from_secs(10),
            heartbeat_grace: 1.5,
            connect_timeout: Duration::from_secs(10),
            max_inflight: 32,
            max_subscriptions: 100,
            max_transactions: 16,
            max_transaction_frames: 1000,
            unacked_on_disconnect: UnackedPolicy::Redeliver,
            session_expiry: 300,
            server_name: concat!("Tributary/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// Something for the driver to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A frame.
    Frame(Frame),
    /// A heart-beat (one EOL).
    HeartBeat,
}

/// How many deliveries one wake-up turns into frames at most, so one busy
/// session cannot starve the socket reader.
const SEND_BATCH: usize = 256;

/// Subscription numbers are unique in the process, so a delivery left over
/// from an earlier connection of a resumed session never matches a new
/// subscription by accident.
static NEXT_SUBSCRIPTION: AtomicU32 = AtomicU32::new(1);

/// STOMP ack modes (1.2 §SUBSCRIBE "ack Header").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// Acknowledged when sent.
    Auto,
    /// Cumulative: an ACK covers every earlier message of the subscription.
    Client,
    /// Each message acknowledged on its own.
    ClientIndividual,
}

impl AckMode {
    fn parse(text: &str) -> Option<AckMode> {
        match text {
            "auto" => Some(AckMode::Auto),
            "client" => Some(AckMode::Client),
            "client-individual" => Some(AckMode::ClientIndividual),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Subscription {
    id: String,
    num: u32,
    /// The core filter, mountpoint applied (with any `$share/{group}/`).
    filter: String,
    ack: AckMode,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    sub: u32,
    packet_id: Option<u16>,
}

struct Connected {
    client: ClientInfo,
    /// By STOMP subscription id.
    subs: HashMap<String, Subscription>,
    /// Subscription number → STOMP id.
    by_num: HashMap<u32, String>,
    /// Core filter → numbers of the STOMP subscriptions on it; the first
    /// is the one registered with the core.
    filters: HashMap<String, Vec<u32>>,
    /// Messages awaiting ACK/NACK, by message sequence number.
    pending: BTreeMap<u64, Pending>,
    /// Core packet id → STOMP messages still unacknowledged for it.
    packet_refs: HashMap<u16, usize>,
    /// Core deliveries (QoS 1) whose subscription is gone: redelivered to
    /// the next matching SUBSCRIBE. Bounded by the inflight window.
    orphans: VecDeque<Outgoing>,
    next_message: u64,
    transactions: HashMap<String, Vec<Frame>>,
    /// Client must show life at this interval (0 = never).
    receive_interval: Duration,
}

enum State {
    AwaitingConnect,
    /// CONNECT parked while an authentication backend decides.
    Authenticating(Box<ParkedConnect>),
    Connected(Box<Connected>),
    Closed,
}

/// What a CONNECT negotiated before authentication answered.
struct ParkedConnect {
    client: ClientInfo,
    given_id: Option<String>,
    host: Option<String>,
    /// Heart-beat values we announce (`sx,sy`) and the negotiated intervals.
    announce: (u64, u64),
    outgoing: u64,
    incoming: u64,
}

/// One connection's STOMP state.
pub struct Channel {
    broker: Arc<Broker>,
    config: Arc<ChannelConfig>,
    peer: Option<SocketAddr>,
    version: Version,
    state: State,
    handle: Option<SessionHandle>,
    output: Vec<Output>,
    /// Connect timeout, then the client's heart-beat deadline.
    read_deadline: Option<Instant>,
    /// Our heart-beat interval (0 = none) and when the next one is due.
    send_interval: Duration,
    heartbeat_at: Option<Instant>,
    close_kind: CloseKind,
    /// The session outlives the connection (client-id under Redeliver).
    persistent: bool,
    /// An authentication decision for the driver to await.
    auth_future: Option<AuthFuture>,
    /// User name fixed by the transport (a TLS client certificate's CN).
    transport_username: Option<String>,
    /// Subscribers whose mailboxes this connection's QoS 1/2 SENDs filled.
    backpressure: Vec<Arc<tributary_core::session::Session>>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("peer", &self.peer)
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
        let read_deadline = Some(now + config.connect_timeout);
        Channel {
            broker,
            config,
            peer,
            // CONNECT headers are never escaped and may end in CR LF: decode
            // with 1.2 rules until the version is negotiated.
            version: Version::V1_2,
            state: State::AwaitingConnect,
            handle: None,
            output: Vec::new(),
            read_deadline,
            send_interval: Duration::ZERO,
            heartbeat_at: None,
            close_kind: CloseKind::Abnormal,
            persistent: false,
            auth_future: None,
            transport_username: None,
            backpressure: Vec::new(),
        }
    }

    /// Fix the user name from the transport (a TLS client certificate's
    /// CN): the CONNECT's `login` is then ignored.
    pub fn set_transport_username(&mut self, username: Option<String>) {
        self.transport_username = username;
    }

    /// An authentication decision the driver must await and pass to
    /// [`Channel::handle_auth_result`]. While the CONNECT is parked
    /// ([`Channel::is_authenticating`]) the driver feeds no frames.
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
        self.complete_connect(*parked, outcome, now);
    }

    /// True when a QoS 1/2 SEND filled a subscriber's mailbox
    /// ([`Channel::take_backpressure`]).
    pub fn is_backpressured(&self) -> bool {
        !self.backpressure.is_empty()
    }

    /// The subscribers the driver must wait for (until each has room, or a
    /// bounded time) before reading more frames.
    pub fn take_backpressure(&mut self) -> Vec<Arc<tributary_core::session::Session>> {
        std::mem::take(&mut self.backpressure)
    }

    /// The version to decode and encode with.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Frame limits for the decoder.
    pub fn limits(&self) -> &Limits {
        &self.config.limits
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

    /// True when output is waiting.
    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// Output to write, in order; `now` is when it is written (it restarts
    /// our heart-beat interval: any data counts as a heart-beat).
    pub fn take_output(&mut self, now: Instant) -> Vec<Output> {
        if !self.output.is_empty() && !self.send_interval.is_zero() {
            self.heartbeat_at = Some(now + self.send_interval);
        }
        std::mem::take(&mut self.output)
    }

    /// When the driver must call [`Channel::handle_timeout`].
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.is_closed() {
            return None;
        }
        match (self.read_deadline, self.heartbeat_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Bytes arrived from the client (a frame, part of one, or a heart-beat):
    /// the client is alive. Does not extend the connect timeout.
    pub fn handle_activity(&mut self, now: Instant) {
        if let State::Connected(c) = &self.state {
            if !c.receive_interval.is_zero() {
                self.read_deadline =
                    Some(now + c.receive_interval.mul_f64(self.config.heartbeat_grace));
            }
        }
    }

    /// A deadline may have passed: send a heart-beat, or close a silent client.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.is_closed() {
            return;
        }
        if self.read_deadline.is_some_and(|d| d <= now) {
            match self.state {
                State::AwaitingConnect => {
                    debug!("no CONNECT within the connect timeout");
                    self.state = State::Closed;
                }
                State::Authenticating(_) => {
                    debug!("authentication did not answer within the connect timeout");
                    self.auth_future = None;
                    self.violation("not authorized", "authentication timed out".into(), None);
                }
                _ => self.violation(
                    "heart-beat timeout",
                    "no data from the client within its heart-beat interval".into(),
                    None,
                ),
            }
            return;
        }
        if self.heartbeat_at.is_some_and(|d| d <= now) {
            self.output.push(Output::HeartBeat);
            self.heartbeat_at = Some(now + self.send_interval);
        }
    }

    /// The decoder failed: ERROR, then close.
    pub fn handle_decode_error(&mut self, error: &DecodeError, _now: Instant) {
        self.broker
            .metrics()
            .inc(&self.broker.metrics().packets_malformed);
        self.violation("malformed frame", error.to_string(), None);
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

    /// The server is shutting down: say so and close.
    pub fn shutdown(&mut self) {
        if matches!(self.state, State::Connected(_)) {
            self.handle_kick(KickReason::ServerShutdown);
        } else {
            self.state = State::Closed;
        }
    }

    /// The transport is gone (or the driver closed it after writing the
    /// output): end the session's connection in the core. Idempotent.
    pub fn finish(&mut self, now: Instant) {
        let state = std::mem::replace(&mut self.state, State::Closed);
        let Some(handle) = self.handle.take() else {
            return;
        };
        if let State::Connected(mut conn) = state {
            match self.config.unacked_on_disconnect {
                UnackedPolicy::Drop => {
                    for pid in conn.packet_refs.keys() {
                        handle.acknowledge(*pid);
                    }
                    for o in conn.orphans.drain(..) {
                        if let Some(pid) = o.packet_id {
                            handle.acknowledge(pid);
                        }
                    }
                }
                UnackedPolicy::Redeliver if self.persistent => {
                    // STOMP subscriptions end with their connection: only
                    // what was sent and not acknowledged survives.
                    for filter in conn.filters.keys() {
                        self.broker.unsubscribe(&handle, filter);
                    }
                }
                UnackedPolicy::Redeliver => {}
            }
        }
        self.broker.close_session(&handle, self.close_kind, now);
    }

    fn handle_kick(&mut self, reason: KickReason) {
        let (message, kind) = match reason {
            // The session now belongs to the new connection; nothing to close.
            KickReason::Takeover => ("session taken over", None),
            KickReason::Administrative => ("kicked by an administrator", Some(CloseKind::Abnormal)),
            KickReason::ServerShutdown => (
                "server shutting down",
                Some(CloseKind::Normal {
                    publish_will: false,
                }),
            ),
        };
        info!(client_id = ?self.client_id(), ?reason, "disconnecting client");
        self.output
            .push(Output::Frame(error_frame(message, String::new(), None)));
        match kind {
            Some(kind) => self.close_kind = kind,
            None => self.handle = None,
        }
        self.state = State::Closed;
    }

    /// A protocol violation: ERROR with `message` (and the offending frame's
    /// receipt id), then close. The channel's one "rescue" point.
    fn violation(&mut self, message: &str, detail: String, receipt: Option<&str>) {
        debug!(client_id = ?self.client_id(), message, detail = %detail, "closing connection with ERROR");
        self.output
            .push(Output::Frame(error_frame(message, detail, receipt)));
        self.close_kind = CloseKind::Abnormal;
        self.state = State::Closed;
    }

    fn receipt(&mut self, frame: &Frame) {
        if let Some(id) = frame.header("receipt") {
            self.output.push(Output::Frame(
                Frame::new(Command::Receipt).with("receipt-id", id),
            ));
        }
    }

    /// A frame from the client.
    pub fn handle_frame(&mut self, frame: Frame, now: Instant) {
        if self.is_closed() {
            return;
        }
        self.handle_activity(now);
        match (&self.state, frame.command) {
            (State::AwaitingConnect, Command::Connect | Command::Stomp) => {
                self.handle_connect(frame, now)
            }
            (State::Authenticating(_), _) => self.violation(
                "not connected",
                "a frame arrived while the CONNECT was being authenticated".into(),
                frame.header("receipt"),
            ),
            (State::AwaitingConnect, _) => self.violation(
                "not connected",
                format!(
                    "the first frame must be CONNECT or STOMP, got {}",
                    frame.command
                ),
                frame.header("receipt"),
            ),
            (State::Connected(_), Command::Connect | Command::Stomp) => {
                self.violation("already connected", String::new(), frame.header("receipt"))
            }
            (State::Connected(_), Command::Send | Command::Ack | Command::Nack)
                if frame.header("transaction").is_some() =>
            {
                self.buffer_in_transaction(frame)
            }
            (State::Connected(_), Command::Send) => {
                if self.handle_send(&frame, now) {
                    self.receipt(&frame);
                }
            }
            (State::Connected(_), Command::Subscribe) => self.handle_subscribe(frame, now),
            (State::Connected(_), Command::Unsubscribe) => self.handle_unsubscribe(frame, now),
            (State::Connected(_), Command::Ack | Command::Nack) => {
                if self.handle_ack(&frame) {
                    self.receipt(&frame);
                    self.poll_deliveries(now);
                }
            }
            (State::Connected(_), Command::Begin | Command::Commit | Command::Abort) => {
                self.handle_transaction(frame, now)
            }
            (State::Connected(_), Command::Disconnect) => {
                self.receipt(&frame);
                debug!(client_id = ?self.client_id(), "client disconnected");
                self.close_kind = CloseKind::Normal {
                    publish_will: false,
                };
                self.state = State::Closed;
            }
            (State::Connected(_), cmd) => self.violation(
                "unexpected frame",
                format!("{cmd} is not a client frame"),
                frame.header("receipt"),
            ),
            (State::Closed, _) => {}
        }
    }
}

// CONNECT / STOMP (1.2 §"Connecting").
impl Channel {
    fn handle_connect(&mut self, frame: Frame, now: Instant) {
        let cfg = self.config.clone();
        // Version negotiation: the highest common version; none given = 1.0.
        let version = match frame.header("accept-version") {
            None => Version::V1_0,
            Some(list) => match list.split(',').filter_map(Version::parse).max() {
                Some(v) => v,
                None => {
                    self.version = Version::V1_2;
                    self.output.push(Output::Frame(
                        error_frame(
                            "unsupported protocol version",
                            format!("supported protocol versions are 1.0 1.1 1.2, got {list:?}"),
                            None,
                        )
                        .with("version", "1.0,1.1,1.2"),
                    ));
                    self.state = State::Closed;
                    return;
                }
            },
        };
        self.version = version;

        // Heart-beating (1.2 §"Heart-beating"): cx,cy from the client.
        let (cx, cy) = match frame.header("heart-beat") {
            None => (0, 0),
            Some(hb) => match parse_heartbeat(hb) {
                Some(v) => v,
                None => {
                    return self.violation(
                        "invalid heart-beat header",
                        format!("expected two comma-separated integers, got {hb:?}"),
                        None,
                    )
                }
            },
        };
        let sx = millis(cfg.heartbeat_send);
        let sy = millis(cfg.heartbeat_receive);
        let outgoing = if sx == 0 || cy == 0 { 0 } else { sx.max(cy) };
        let incoming = if sy == 0 || cx == 0 { 0 } else { sy.max(cx) };

        let given_id = frame
            .header("client-id")
            .filter(|c| !c.is_empty())
            .map(str::to_owned);
        let client_id: Arc<str> = given_id.clone().unwrap_or_else(generated_client_id).into();
        let client = ClientInfo {
            client_id: client_id.clone(),
            username: self
                .transport_username
                .clone()
                .or_else(|| frame.header("login").map(str::to_owned)),
            peer: self.peer,
            protocol: "stomp",
        };
        let password = frame.header("passcode").map(str::as_bytes);
        let parked = ParkedConnect {
            client,
            given_id,
            host: frame.header("host").map(str::to_owned),
            announce: (sx, sy),
            outgoing,
            incoming,
        };
        match self.broker.authenticator().check(&parked.client, password) {
            AuthCheck::Ready(outcome) => self.complete_connect(parked, outcome, now),
            AuthCheck::Pending(decision) => {
                debug!(client_id = %parked.client.client_id, "waiting for the authentication backend");
                self.auth_future = Some(decision);
                self.state = State::Authenticating(Box::new(parked));
            }
        }
    }

    /// Authentication answered: refuse, or open the session and reply CONNECTED.
    fn complete_connect(&mut self, parked: ParkedConnect, outcome: AuthOutcome, now: Instant) {
        let cfg = self.config.clone();
        let version = self.version;
        let ParkedConnect {
            client,
            given_id,
            host,
            announce: (sx, sy),
            outgoing,
            incoming,
        } = parked;
        let client_id = client.client_id.clone();
        match outcome {
            AuthOutcome::Allow => {}
            AuthOutcome::BadCredentials => {
                return self.violation("login failed", "bad login or passcode".into(), None)
            }
            AuthOutcome::NotAuthorized => {
                return self.violation("not authorized", "connection refused".into(), None)
            }
        }

        self.persistent = given_id.is_some()
            && cfg.unacked_on_disconnect == UnackedPolicy::Redeliver
            && cfg.session_expiry > 0;
        let opened = self.broker.open_session(
            SessionRequest {
                client: client.clone(),
                clean_start: !self.persistent,
                expiry_interval: if self.persistent {
                    cfg.session_expiry
                } else {
                    0
                },
                will: None,
            },
            now,
        );
        info!(client_id = %client_id, version = version.as_str(), host = ?host,
              session_present = opened.session_present, "STOMP client connected");

        let mut connected = Frame::new(Command::Connected);
        if version != Version::V1_0 {
            connected.push("version", version.as_str());
            connected.push("heart-beat", format!("{sx},{sy}"));
        }
        connected.push("server", cfg.server_name.clone());
        connected.push("session", client_id.to_string());
        self.output.push(Output::Frame(connected));

        self.send_interval = Duration::from_millis(outgoing);
        self.heartbeat_at = (outgoing > 0).then(|| now + self.send_interval);
        let receive_interval = Duration::from_millis(incoming);
        self.read_deadline =
            (incoming > 0).then(|| now + receive_interval.mul_f64(cfg.heartbeat_grace));
        // Messages left unacknowledged by an earlier connection wait for a
        // matching SUBSCRIBE.
        let orphans = opened
            .resend
            .into_iter()
            .filter_map(|r| match r {
                Resend::Publish(o) => Some(o),
                Resend::PubRel(_) => None,
            })
            .collect();
        self.handle = Some(opened.handle);
        self.state = State::Connected(Box::new(Connected {
            client,
            subs: HashMap::new(),
            by_num: HashMap::new(),
            filters: HashMap::new(),
            pending: BTreeMap::new(),
            packet_refs: HashMap::new(),
            orphans,
            next_message: 1,
            transactions: HashMap::new(),
            receive_interval,
        }));
        self.poll_deliveries(now);
    }
}

// SEND (1.2 §SEND).
impl Channel {
    /// Publish; false when the frame was refused (the connection is closing).
    fn handle_send(&mut self, frame: &Frame, now: Instant) -> bool {
        let State::Connected(conn) = &self.state else {
            return false;
        };
        let receipt = frame.header("receipt");
        let Some(destination) = frame.header("destination") else {
            self.violation(
                "missing destination",
                "SEND requires a destination header".into(),
                receipt,
            );
            return false;
        };
        let topic = format!("{}{destination}", self.config.mountpoint);
        if self.broker.check_topic_name(&topic).is_err() {
            self.violation(
                "invalid destination",
                format!("{destination:?} is not a valid topic name (no wildcards)"),
                receipt,
            );
            return false;
        }
        let client = conn.client.clone();
        if !self.broker.authorize(&client, Action::Publish, &topic) {
            self.violation(
                "not authorized",
                format!("publishing to {destination:?} is denied"),
                receipt,
            );
            return false;
        }
        let mut properties = MessageProperties {
            content_type: frame.header("content-type").map(str::to_owned),
            ..MessageProperties::default()
        };
        let mut seen = Vec::new();
        for (k, v) in &frame.headers {
            if !is_control_header(k) && !seen.contains(&k) {
                seen.push(k);
                properties.user_properties.push((k.clone(), v.clone()));
            }
        }
        let retain = frame.header("retain") == Some("true");
        let mut message = Message::new(topic, frame.body.clone(), self.config.send_qos, retain);
        message.publisher = Some(client.client_id.clone());
        message.properties = properties;
        self.broker.metrics().message_in("stomp", message.qos);
        if message.qos == QoS::AtMostOnce {
            self.broker.publish(message, now);
        } else {
            self.broker
                .publish_with_backpressure(message, now, &mut self.backpressure);
        }
        true
    }
}

// SUBSCRIBE / UNSUBSCRIBE (1.2 §SUBSCRIBE, §UNSUBSCRIBE).
impl Channel {
    fn handle_subscribe(&mut self, frame: Frame, now: Instant) {
        let receipt = frame.header("receipt");
        let Some(destination) = frame.header("destination") else {
            return self.violation(
                "missing destination",
                "SUBSCRIBE requires a destination header".into(),
                receipt,
            );
        };
        // 1.0 makes the id optional: the destination then identifies it.
        let id = match (frame.header("id"), self.version) {
            (Some(id), _) => id.to_owned(),
            (None, Version::V1_0) => destination.to_owned(),
            (None, _) => {
                return self.violation(
                    "missing id",
                    "SUBSCRIBE requires an id header".into(),
                    receipt,
                )
            }
        };
        let ack = match frame.header("ack").map(AckMode::parse) {
            None => AckMode::Auto,
            Some(Some(a)) => a,
            Some(None) => {
                return self.violation(
                    "invalid ack mode",
                    "ack must be auto, client or client-individual".into(),
                    receipt,
                )
            }
        };
        let filter = mount_filter(&self.config.mountpoint, destination);
        let plain = match self.broker.check_filter(&filter) {
            Ok(p) => p.filter.to_owned(),
            Err(e) => {
                return self.violation(
                    "invalid destination",
                    format!("{destination:?} is not a valid topic filter: {e}"),
                    receipt,
                )
            }
        };
        let Some(handle) = self.handle.clone() else {
            return;
        };
        let cfg = self.config.clone();
        let State::Connected(conn) = &mut self.state else {
            return;
        };
        if conn.subs.contains_key(&id) {
            return self.violation(
                "duplicate subscription id",
                format!("subscription {id:?} exists"),
                receipt,
            );
        }
        if conn.subs.len() >= cfg.max_subscriptions {
            return self.violation(
                "too many subscriptions",
                format!(
                    "at most {} subscriptions per connection",
                    cfg.max_subscriptions
                ),
                receipt,
            );
        }
        let client = conn.client.clone();
        if !self.broker.authorize(&client, Action::Subscribe, &plain) {
            return self.violation(
                "not authorized",
                format!("subscribing to {destination:?} is denied"),
                receipt,
            );
        }
        let want_retained = cfg.retained_on_subscribe || frame.header("retain") == Some("true");
        let num = NEXT_SUBSCRIPTION.fetch_add(1, Ordering::Relaxed);
        let State::Connected(conn) = &mut self.state else {
            return;
        };
        let sharing = conn.filters.get(&filter).is_some_and(|v| !v.is_empty());
        conn.filters.entry(filter.clone()).or_default().push(num);
        conn.by_num.insert(num, id.clone());
        conn.subs.insert(
            id.clone(),
            Subscription {
                id: id.clone(),
                num,
                filter: filter.clone(),
                ack,
            },
        );
        let mut retained_direct = Vec::new();
        if sharing {
            // The core subscription exists already (another STOMP id on the
            // same destination): retained messages come straight from the store.
            if want_retained && !filter.starts_with("$share/") {
                retained_direct = self.broker.retained_matching(&plain, now);
            }
        } else {
            let mut options = SubOptions::at(cfg.subscribe_qos);
            options.subscription_id = Some(num);
            options.retain_handling = if want_retained { 0 } else { 2 };
            if let Err(e) = self.broker.subscribe(&handle, &filter, options, now) {
                return self.violation("invalid destination", e.to_string(), receipt);
            }
        }
        debug!(client_id = %client.client_id, id = %id, filter = %filter, ?ack, "subscribed");
        self.receipt(&frame);
        for message in retained_direct {
            let out = Outgoing {
                packet_id: None,
                delivery: tributary_core::Delivery {
                    message,
                    qos: QoS::AtMostOnce,
                    retain: true,
                    subscription_ids: vec![num],
                    shared: None,
                },
                dup: false,
            };
            self.dispatch(&handle, out, now);
        }
        // Redeliveries from an earlier connection that this destination matches.
        if let State::Connected(conn) = &mut self.state {
            let (take, keep): (Vec<_>, Vec<_>) = conn
                .orphans
                .drain(..)
                .partition(|o| matches(&o.delivery.message.topic, &plain));
            conn.orphans = keep.into();
            for mut o in take {
                o.delivery.subscription_ids = vec![num];
                self.dispatch(&handle, o, now);
            }
        }
        self.poll_deliveries(now);
    }

    fn handle_unsubscribe(&mut self, frame: Frame, now: Instant) {
        let receipt = frame.header("receipt");
        let id = match (
            frame.header("id"),
            frame.header("destination"),
            self.version,
        ) {
            (Some(id), _, _) => id.to_owned(),
            (None, Some(dest), Version::V1_0) => dest.to_owned(),
            _ => {
                return self.violation(
                    "missing id",
                    "UNSUBSCRIBE requires an id header".into(),
                    receipt,
                )
            }
        };
        let Some(handle) = self.handle.clone() else {
            return;
        };
        let State::Connected(conn) = &mut self.state else {
            return;
        };
        if let Some(sub) = conn.subs.remove(&id) {
            conn.by_num.remove(&sub.num);
            let nums = conn.filters.entry(sub.filter.clone()).or_default();
            let was_primary = nums.first() == Some(&sub.num);
            nums.retain(|n| *n != sub.num);
            let next = nums.first().copied();
            if next.is_none() {
                conn.filters.remove(&sub.filter);
            }
            // Messages still awaiting ACK on this subscription are dropped.
            let gone: Vec<u64> = conn
                .pending
                .iter()
                .filter(|(_, p)| p.sub == sub.num)
                .map(|(k, _)| *k)
                .collect();
            let mut done = Vec::new();
            for seq in gone {
                if let Some(p) = conn.pending.remove(&seq) {
                    release(&mut conn.packet_refs, p.packet_id, &mut done);
                }
            }
            for pid in done {
                handle.acknowledge(pid);
            }
            match next {
                None => {
                    self.broker.unsubscribe(&handle, &sub.filter);
                }
                Some(n) if was_primary => {
                    let mut options = SubOptions::at(self.config.subscribe_qos);
                    options.subscription_id = Some(n);
                    options.retain_handling = 2;
                    let _ = self.broker.subscribe(&handle, &sub.filter, options, now);
                }
                Some(_) => {}
            }
            debug!(id = %sub.id, "unsubscribed");
        }
        self.receipt(&frame);
        self.poll_deliveries(now);
    }
}

// ACK / NACK (1.2 §ACK, §NACK) and transactions (§BEGIN, §COMMIT, §ABORT).
impl Channel {
    /// Apply an ACK or NACK; false when refused (the connection is closing).
    fn handle_ack(&mut self, frame: &Frame) -> bool {
        let Some(id) = frame.header("id").or_else(|| frame.header("message-id")) else {
            self.violation(
                "missing id",
                format!(
                    "{} requires an id (1.2) or message-id (1.0, 1.1) header",
                    frame.command
                ),
                frame.header("receipt"),
            );
            return false;
        };
        let Some(handle) = self.handle.clone() else {
            return false;
        };
        let State::Connected(conn) = &mut self.state else {
            return false;
        };
        // Unknown ids (already acknowledged, auto mode) are ignored.
        let Some(seq) = id.parse::<u64>().ok() else {
            return true;
        };
        let Some(p) = conn.pending.get(&seq).copied() else {
            return true;
        };
        let cumulative = conn
            .by_num
            .get(&p.sub)
            .and_then(|sid| conn.subs.get(sid))
            .is_some_and(|s| s.ack == AckMode::Client);
        let acked: Vec<u64> = if cumulative {
            conn.pending
                .range(..=seq)
                .filter(|(_, q)| q.sub == p.sub)
                .map(|(k, _)| *k)
                .collect()
        } else {
            vec![seq]
        };
        let mut done = Vec::new();
        for k in acked {
            if let Some(q) = conn.pending.remove(&k) {
                release(&mut conn.packet_refs, q.packet_id, &mut done);
            }
        }
        // NACK: the message is discarded (1.2 allows discarding); either way
        // the core's delivery is complete.
        for pid in done {
            handle.acknowledge(pid);
        }
        true
    }

    fn buffer_in_transaction(&mut self, frame: Frame) {
        let max = self.config.max_transaction_frames;
        let State::Connected(conn) = &mut self.state else {
            return;
        };
        let tx = frame.header("transaction").unwrap_or_default().to_owned();
        match conn.transactions.get_mut(&tx) {
            None => self.violation(
                "unknown transaction",
                format!("transaction {tx:?} was not begun"),
                frame.header("receipt"),
            ),
            Some(frames) if frames.len() >= max => self.violation(
                "transaction too large",
                format!("at most {max} frames per transaction"),
                frame.header("receipt"),
            ),
            Some(frames) => {
                let receipt = frame.header("receipt").map(str::to_owned);
                frames.push(frame);
                if let Some(id) = receipt {
                    self.output.push(Output::Frame(
                        Frame::new(Command::Receipt).with("receipt-id", id),
                    ));
                }
            }
        }
    }

    fn handle_transaction(&mut self, frame: Frame, now: Instant) {
        let receipt = frame.header("receipt");
        let Some(tx) = frame.header("transaction") else {
            return self.violation(
                "missing transaction",
                format!("{} requires a transaction header", frame.command),
                receipt,
            );
        };
        let max = self.config.max_transactions;
        let State::Connected(conn) = &mut self.state else {
            return;
        };
        match frame.command {
            Command::Begin => {
                if conn.transactions.contains_key(tx) {
                    return self.violation(
                        "transaction exists",
                        format!("transaction {tx:?} is already open"),
                        receipt,
                    );
                }
                if conn.transactions.len() >= max {
                    return self.violation(
                        "too many transactions",
                        format!("at most {max} open transactions"),
                        receipt,
                    );
                }
                conn.transactions.insert(tx.to_owned(), Vec::new());
            }
            Command::Commit => {
                let Some(frames) = conn.transactions.remove(tx) else {
                    return self.violation(
                        "unknown transaction",
                        format!("transaction {tx:?} was not begun"),
                        receipt,
                    );
                };
                for f in frames {
                    let ok = match f.command {
                        Command::Send => self.handle_send(&f, now),
                        _ => self.handle_ack(&f),
                    };
                    if !ok {
                        return;
                    }
                }
                self.poll_deliveries(now);
            }
            _ => {
                if conn.transactions.remove(tx).is_none() {
                    return self.violation(
                        "unknown transaction",
                        format!("transaction {tx:?} was not begun"),
                        receipt,
                    );
                }
            }
        }
        self.receipt(&frame);
    }
}

// Deliveries → MESSAGE frames.
impl Channel {
    /// Turn pending deliveries into MESSAGE frames within the window.
    pub fn poll_deliveries(&mut self, now: Instant) {
        let Some(handle) = self.handle.clone() else {
            return;
        };
        let window = self.config.max_inflight;
        let mut taken = 0;
        // Auto-mode deliveries complete as they are written, freeing the
        // window again: keep taking until nothing more fits this turn.
        while taken < SEND_BATCH {
            let State::Connected(conn) = &self.state else {
                return;
            };
            let acking = conn.subs.values().any(|s| s.ack != AckMode::Auto);
            let room = if acking {
                window.saturating_sub(conn.pending.len())
            } else {
                SEND_BATCH
            };
            let max = (SEND_BATCH - taken).min(room);
            if max == 0 {
                return;
            }
            let outgoing = handle.take_for_send(now, max, window, self.broker.metrics(), |_| true);
            if outgoing.is_empty() {
                return;
            }
            taken += outgoing.len();
            for out in outgoing {
                self.dispatch(&handle, out, now);
            }
        }
        if handle.has_sendable(window) {
            // More is waiting: come back after the socket has had its turn.
            handle.signal.wake();
        }
    }

    /// One core delivery → a MESSAGE per STOMP subscription it is for.
    fn dispatch(&mut self, handle: &SessionHandle, out: Outgoing, _now: Instant) {
        let redeliver = self.config.unacked_on_disconnect == UnackedPolicy::Redeliver;
        let mountpoint_len = self.config.mountpoint.len();
        let State::Connected(conn) = &mut self.state else {
            return;
        };
        let mut targets: Vec<u32> = Vec::new();
        for id in &out.delivery.subscription_ids {
            let Some(sub) = conn.by_num.get(id).and_then(|sid| conn.subs.get(sid)) else {
                continue;
            };
            for n in conn.filters.get(&sub.filter).into_iter().flatten() {
                if !targets.contains(n) {
                    targets.push(*n);
                }
            }
        }
        if targets.is_empty() {
            // Its subscription is gone: keep a QoS 1 message for a later
            // matching SUBSCRIBE (redeliver), or complete it.
            if let Some(pid) = out.packet_id {
                if redeliver && conn.orphans.len() < self.config.max_inflight {
                    conn.orphans.push_back(out);
                } else {
                    handle.acknowledge(pid);
                }
            }
            return;
        }
        let message = &out.delivery.message;
        let topic = &message.topic;
        let destination =
            if topic.len() >= mountpoint_len && topic.starts_with(&self.config.mountpoint) {
                &topic[mountpoint_len..]
            } else {
                &topic[..]
            };
        let mut refs = 0;
        for num in targets {
            let Some(sub) = conn.by_num.get(&num).and_then(|sid| conn.subs.get(sid)) else {
                continue;
            };
            let seq = conn.next_message;
            conn.next_message += 1;
            let message_id = seq.to_string();
            let mut f = Frame::new(Command::Message)
                .with("subscription", sub.id.clone())
                .with("message-id", message_id.clone())
                .with("destination", destination);
            if sub.ack != AckMode::Auto {
                if self.version == Version::V1_2 {
                    f.push("ack", message_id);
                }
                conn.pending.insert(
                    seq,
                    Pending {
                        sub: num,
                        packet_id: out.packet_id,
                    },
                );
                refs += 1;
            }
            if let Some(ct) = &message.properties.content_type {
                f.push("content-type", ct.clone());
            }
            f.push("content-length", message.payload.len().to_string());
            if out.dup {
                f.push("redelivered", "true");
            }
            if out.delivery.retain {
                f.push("retain", "true");
            }
            for (k, v) in &message.properties.user_properties {
                if !is_control_header(k) && !f.headers.iter().any(|(n, _)| n == k) {
                    f.push(k.clone(), v.clone());
                }
            }
            f.body = message.payload.clone();
            self.broker.metrics().message_out("stomp", out.delivery.qos);
            self.output.push(Output::Frame(f));
        }
        match out.packet_id {
            Some(pid) if refs > 0 => {
                *conn.packet_refs.entry(pid).or_default() += refs;
            }
            Some(pid) => {
                handle.acknowledge(pid);
            }
            None => {}
        }
    }
}

/// One fewer STOMP message outstanding for `packet_id`; collects ids whose
/// core delivery is now complete.
fn release(refs: &mut HashMap<u16, usize>, packet_id: Option<u16>, done: &mut Vec<u16>) {
    let Some(pid) = packet_id else { return };
    if let Some(n) = refs.get_mut(&pid) {
        *n -= 1;
        if *n == 0 {
            refs.remove(&pid);
            done.push(pid);
        }
    }
}

/// Headers that steer STOMP itself and are not carried as user properties.
fn is_control_header(name: &str) -> bool {
    matches!(
        name,
        "destination"
            | "content-length"
            | "content-type"
            | "receipt"
            | "transaction"
            | "retain"
            | "subscription"
            | "message-id"
            | "ack"
            | "redelivered"
    )
}

/// The core filter for a destination: the mountpoint goes after any
/// `$share/{group}/` prefix.
fn mount_filter(mountpoint: &str, destination: &str) -> String {
    if let Some(rest) = destination.strip_prefix("$share/") {
        if let Some((group, filter)) = rest.split_once('/') {
            return format!("$share/{group}/{mountpoint}{filter}");
        }
    }
    format!("{mountpoint}{destination}")
}

fn parse_heartbeat(text: &str) -> Option<(u64, u64)> {
    let (a, b) = text.split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// An ERROR frame: `message` header, plain-text body with the detail.
pub fn error_frame(message: &str, detail: String, receipt: Option<&str>) -> Frame {
    let mut f = Frame::new(Command::Error).with("message", message);
    if let Some(r) = receipt {
        f.push("receipt-id", r);
    }
    f.push("content-type", "text/plain");
    f.push("content-length", detail.len().to_string());
    f.body = detail.into_bytes().into();
    f
}

fn generated_client_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("stomp-{:x}-{n}", std::process::id())
}
