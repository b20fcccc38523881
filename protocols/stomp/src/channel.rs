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
//! SEND enters the core through [`Broker::admit`] (the one intake): a
//! subscriber whose mailbox a QoS 1/2 SEND filled is reported through
//! [`Channel::take_backpressure`], and the driver stops reading until it
//! has room or `max_pause` passes (ADR 0009, 0018). A SEND's RECEIPT
//! leaves only once what the message made the store write is durable (the
//! core's [`HeldAcks`]); RECEIPTs keep the order of their frames.
//!
//! The connect timeout and the client's heart-beat deadline are enforced
//! by the driver's [`tributary_core::connection::Watchdog`] from what the
//! channel reports (`connection.rs`); it calls [`Channel::handle_limit`].
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
use tributary_core::ack::HeldAcks;
use tributary_core::auth::{Action, AuthCheck, AuthFuture, AuthOutcome};
use tributary_core::connection::Limit;
use tributary_core::intake::{Publisher, Verdict};
use tributary_core::storage::{later, CommitTicket, Commits, TicketState};
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
    /// The client, with its side of the core's intake (rates, congestion).
    intake: Publisher,
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
    /// RECEIPTs waiting for the store, in the order of their frames.
    held: HeldAcks<Output>,
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
        _now: Instant,
    ) -> Channel {
        Channel {
            held: HeldAcks::new(broker.persistence().commits()),
            broker,
            config,
            peer,
            // CONNECT headers are never escaped and may end in CR LF: decode
            // with 1.2 rules until the version is negotiated.
            version: Version::V1_2,
            state: State::AwaitingConnect,
            handle: None,
            output: Vec::new(),
            send_interval: Duration::ZERO,
            heartbeat_at: None,
            close_kind: CloseKind::Abnormal,
            persistent: false,
            auth_future: None,
            transport_username: None,
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
        matches!(&self.state, State::Connected(c) if c.intake.is_congested())
    }

    /// The subscribers the driver must wait for (until each has room, or a
    /// bounded time) before reading more frames.
    pub fn take_backpressure(&mut self) -> Vec<Arc<tributary_core::session::Session>> {
        match &mut self.state {
            State::Connected(c) => c.intake.take_congestion(),
            _ => Vec::new(),
        }
    }

    /// Input is paused until then (over the client's rate, throttle mode).
    pub fn read_paused_until(&self) -> Option<Instant> {
        match &self.state {
            State::Connected(c) => c.intake.throttled_until(),
            _ => None,
        }
    }

    /// True once CONNECTED was sent.
    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Connected(_))
    }

    /// Time from the connection's start to its CONNECTED.
    pub fn connect_timeout(&self) -> Duration {
        self.config.connect_timeout
    }

    /// How long the client may stay silent: its heart-beat interval times
    /// the grace; `None` without client heart-beats.
    pub fn receive_window(&self) -> Option<Duration> {
        match &self.state {
            State::Connected(c) if !c.receive_interval.is_zero() => {
                Some(c.receive_interval.mul_f64(self.config.heartbeat_grace))
            }
            _ => None,
        }
    }

    /// The store's commit progress and the ticket the oldest held
    /// RECEIPT waits for.
    pub fn held_commit(&self) -> Option<(Arc<Commits>, CommitTicket)> {
        Some((self.held.commits()?.clone(), self.held.oldest()?))
    }

    /// True when so many RECEIPTs wait for the store that reads stop.
    pub fn holds_too_many(&self) -> bool {
        self.held.is_full()
    }

    /// Release the RECEIPTs whose commits are done, in order; one whose
    /// write failed becomes an ERROR (the message may be lost: the client
    /// must not take it as delivered).
    pub fn release_durable(&mut self, _now: Instant) {
        while let Some((receipt, state)) = self.held.release() {
            if state == TicketState::Failed {
                let m = self.broker.metrics();
                m.inc(&m.store_refused);
                self.held.clear();
                return self.violation(
                    "not stored",
                    "the message could not be written to the store".into(),
                    None,
                );
            }
            self.output.push(receipt);
        }
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
            State::Connected(c) => Some(&c.intake.client().client_id),
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

    /// When the driver must call [`Channel::handle_timeout`]: our next
    /// heart-beat, the end of a rate pause.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.is_closed() {
            return None;
        }
        match (self.heartbeat_at, self.read_paused_until()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A deadline may have passed: send a heart-beat, end a rate pause.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.is_closed() {
            return;
        }
        if let State::Connected(c) = &mut self.state {
            c.intake.resume(now);
        }
        if self.heartbeat_at.is_some_and(|d| d <= now) {
            self.output.push(Output::HeartBeat);
            self.heartbeat_at = Some(now + self.send_interval);
        }
    }

    /// The driver's watchdog tripped `limit`: ERROR (where it can still be
    /// written), then close.
    pub fn handle_limit(&mut self, limit: Limit, _now: Instant) {
        match (limit, &self.state) {
            (Limit::WriteStall, _) => {
                self.output.clear();
                self.close_kind = CloseKind::Abnormal;
                self.state = State::Closed;
            }
            (Limit::IdleTimeout, _) => self.violation(
                "heart-beat timeout",
                "no data from the client within its heart-beat interval".into(),
                None,
            ),
            (_, State::Authenticating(_)) => {
                debug!("authentication did not answer within the connect timeout");
                self.auth_future = None;
                self.violation("not authorized", "authentication timed out".into(), None);
            }
            _ => {
                debug!(
                    limit = limit.name(),
                    "no CONNECT within the pre-authentication budget"
                );
                self.state = State::Closed;
            }
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
        self.receipt_after(frame, None);
    }

    /// The RECEIPT `frame` asks for, once `ticket` (what the frame made the
    /// store write) is durable, and after every RECEIPT held before it.
    fn receipt_after(&mut self, frame: &Frame, ticket: Option<CommitTicket>) {
        if let Some(id) = frame.header("receipt") {
            let receipt = Output::Frame(Frame::new(Command::Receipt).with("receipt-id", id));
            if let Some((receipt, _)) = self.held.hold(receipt, ticket) {
                self.output.push(receipt);
            }
        }
    }

    /// A frame from the client.
    pub fn handle_frame(&mut self, frame: Frame, now: Instant) {
        if self.is_closed() {
            return;
        }
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
                if let Some(ticket) = self.handle_send(&frame, now) {
                    self.receipt_after(&frame, ticket);
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

mod ack;
mod connect;
mod deliver;
mod send;
mod subscribe;

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
