//! One LwM2M peer, sans-IO: its registration (TS Core 1.1 §6.2, the Client
//! Registration interface), the requests the gateway sends it on behalf of
//! MQTT applications, its observations and its queue-mode buffer. This file
//! holds the state and the entry points the driver calls; `registration`
//! the `/rd` interface, `requests` commands, answers and notifications.
//!
//! ```text
//!              POST /rd?ep=…            POST /rd/{ep} (update): lifetime renewed
//!   Unregistered ─────────▶ Registered ◀──────┐
//!        ▲                    │  │ └──────────┘
//!        │  DELETE /rd/{ep}   │  │ lifetime passed without update,
//!        └────────────────────┘  │ takeover (same ep elsewhere), kick
//!        └───────────────────────┘
//! ```
//!
//! The endpoint name is the core client id: registering opens a session
//! (a second registration of the same endpoint, from anywhere, takes the
//! first one over), subscribes it to `{mountpoint}dn/#`, and publishes the
//! register event. Commands delivered to that session become CoAP requests
//! through the CoAP crate's [`MessageLayer`] (CON, retransmitted); the
//! device's answer — piggy-backed, or an empty ACK (published as
//! `msgType "ack"`) then a separate response — is published on `up/resp`
//! with the command's reqID; notifications on `up/notify` with `seqNum`.
//!
//! Queue mode (binding `Q`/`UQ`, or the 1.1 `Q` parameter): the device is
//! reachable for `qmode_time_window` after anything it sends; commands
//! arriving outside that window wait in a buffer of `max_queued` (a
//! command arriving to a full buffer is refused with 5.03 on `up/resp`)
//! and go out when the device next talks (typically its Update). Requests
//! in flight are bounded by `max_inflight`; more wait in the same buffer.
//!
//! Everything the gateway publishes for the device goes through the core's
//! intake ([`Broker::admit`]) with the registration's [`Publisher`]: ACL,
//! rates, metrics and routing in one place; sessions the events filled are
//! the driver's to wait for ([`Device::take_congestion`]). `connection`
//! puts the device behind the core's connection contract.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value as Json};
use tracing::{debug, info};
use tributary_coap::block::{Assembled, Assembler, BlockError, BlockValue};
use tributary_coap::layer::{response, MessageLayer, Received, TransmissionParams};
use tributary_coap::msg::{opt, Code, Message, MessageType, Token};
use tributary_core::auth::{Action, AuthOutcome};
use tributary_core::intake::{Publisher, Verdict};
use tributary_core::session::Session;
use tributary_core::{
    Broker, ClientInfo, CloseKind, ConnectionSignal, KickReason, QoS, SessionHandle,
    SessionRequest, SubOptions,
};

mod connection;
mod registration;
mod requests;

pub use connection::DeviceInput;

use crate::command::{self, Command, Op, Target};
use crate::content;
use crate::link::{self, ObjectList};
use crate::model::Path;
use crate::objects::Registry;

/// When an Update is published on the update topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdatePublish {
    /// Every Update.
    Always,
    /// Only an Update that carries an object list (EMQX's default).
    ContainsObjectList,
}

/// Topic names under the mountpoint (EMQX's `translators`).
#[derive(Debug, Clone)]
pub struct Topics {
    /// Commands in (`dn/#`).
    pub command: String,
    /// Responses out (`up/resp`).
    pub response: String,
    /// Notifications out (`up/notify`).
    pub notify: String,
    /// Register event (`up/resp`).
    pub register: String,
    /// Update event (`up/update`).
    pub update: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            command: "dn/#".into(),
            response: "up/resp".into(),
            notify: "up/notify".into(),
            register: "up/resp".into(),
            update: "up/update".into(),
        }
    }
}

/// Settings shared by every device of a listener.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Topic prefix; `${endpoint}` (also `${endpoint_name}`, `${clientid}`)
    /// and `${username}` expand.
    pub mountpoint: String,
    /// Topic names.
    pub topics: Topics,
    /// QoS of what the gateway publishes.
    pub publish_qos: QoS,
    /// Shortest lifetime accepted.
    pub lifetime_min: Duration,
    /// Longest lifetime accepted.
    pub lifetime_max: Duration,
    /// How long a queue-mode device is reachable after it last sent something.
    pub qmode_time_window: Duration,
    /// Commands buffered per device.
    pub max_queued: usize,
    /// Requests awaiting the device's answer at once.
    pub max_inflight: usize,
    /// How long a request may wait for the device's answer, including a
    /// separate response after an empty ACK (then 5.04 timeout).
    pub response_timeout: Duration,
    /// Largest answer assembled from Block2 blocks.
    pub max_body_size: usize,
    /// SZX of the blocks requests larger than one block are sent in
    /// (6 = 1024 bytes); a device may ask for smaller ones.
    pub block_szx: u8,
    /// Paths observed automatically after registration (when the device
    /// has their object).
    pub auto_observe: Vec<String>,
    /// When Updates are published.
    pub update_publish: UpdatePublish,
    /// RFC 7252 §4.8 parameters.
    pub transmission: TransmissionParams,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            mountpoint: "lwm2m/${endpoint}/".into(),
            topics: Topics::default(),
            publish_qos: QoS::AtMostOnce,
            lifetime_min: Duration::from_secs(1),
            lifetime_max: Duration::from_secs(86400),
            qmode_time_window: Duration::from_secs(22),
            max_queued: 100,
            max_inflight: 16,
            response_timeout: Duration::from_secs(60),
            max_body_size: 1024 * 1024,
            block_szx: 6,
            auto_observe: Vec::new(),
            update_publish: UpdatePublish::ContainsObjectList,
            transmission: TransmissionParams::default(),
        }
    }
}

/// An Update or De-register that arrived from an address other than the
/// one the device registered from, for the peer holding the registration.
#[derive(Debug, Clone)]
pub enum Remote {
    /// Update with its query parameters and optional object list.
    Update {
        /// Uri-Query items.
        queries: Vec<String>,
        /// Object list (may be empty).
        payload: Bytes,
    },
    /// De-register.
    Deregister,
}

/// Which peer holds which endpoint's registration, across peers. The
/// driver implements it (it owns the peers' inboxes).
pub trait Directory: Send + Sync {
    /// `owner` now holds `ep`'s registration.
    fn claim(&self, ep: &str, owner: SocketAddr);
    /// `owner` no longer holds `ep` (no-op when another peer took it since).
    fn release(&self, ep: &str, owner: SocketAddr);
    /// Hand `op` to the peer holding `ep`; false when none does.
    fn forward(&self, ep: &str, op: Remote) -> bool;
}

/// A directory that knows no other peer (tests, single-peer use).
#[derive(Debug, Default)]
pub struct NoDirectory;

impl Directory for NoDirectory {
    fn claim(&self, _: &str, _: SocketAddr) {}
    fn release(&self, _: &str, _: SocketAddr) {}
    fn forward(&self, _: &str, _: Remote) -> bool {
        false
    }
}

#[derive(Debug, Default)]
struct UpdateParams {
    lifetime: Option<u32>,
    binding: Option<String>,
    sms: Option<String>,
    queue: bool,
    objects: Option<ObjectList>,
}

#[derive(Debug)]
struct Registration {
    ep: String,
    lwm2m: String,
    lifetime: u32,
    binding: String,
    sms: Option<String>,
    queue_mode: bool,
    objects: ObjectList,
    expires: Instant,
    last_seen: Instant,
    handle: SessionHandle,
    /// The registration's side of the core's intake (its client, rates,
    /// the sessions its events filled); dropped with the registration.
    publisher: Publisher,
    mountpoint: String,
}

#[derive(Debug)]
struct Pending {
    cmd: Command,
    message_id: u16,
    /// Answered with 5.04 when no response came by then.
    deadline: Instant,
    /// The request as sent, for asking the next block of a Block2 answer.
    request: Message,
    /// The token of the first request: an observation lives on under it.
    first_token: Token,
    /// A body going out in Block1 blocks: (body, block sent, SZX).
    block1: Option<(Bytes, u32, u8)>,
}

#[derive(Debug)]
struct Observation {
    echo: serde_json::Map<String, Json>,
    req_path: String,
    path: Path,
}

/// One LwM2M peer.
pub struct Device {
    broker: Arc<Broker>,
    config: Arc<DeviceConfig>,
    registry: Arc<Registry>,
    directory: Arc<dyn Directory>,
    peer: SocketAddr,
    layer: MessageLayer,
    reg: Option<Registration>,
    pending: HashMap<Token, Pending>,
    observations: HashMap<Token, Observation>,
    queue: VecDeque<Command>,
    /// Block2 answers being assembled, by the first request's token.
    blocks: Assembler<Token>,
    /// Block1 Register/Update payloads being assembled, by URI.
    block1: Assembler<String>,
    /// The first block of an observation's answer (it carries Observe).
    first_blocks: HashMap<Token, Message>,
    /// The time of the event being handled (set by every entry point).
    clock: Instant,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("peer", &self.peer)
            .field("endpoint", &self.endpoint())
            .field("pending", &self.pending.len())
            .field("queued", &self.queue.len())
            .finish()
    }
}

fn expand_mountpoint(template: &str, ep: &str) -> String {
    template
        .replace("${endpoint_name}", ep)
        .replace("${endpoint}", ep)
        .replace("${clientid}", ep)
        .replace("${username}", "")
}

/// A refused registration request.
type Refusal = (Code, &'static str);

impl Device {
    /// A peer first heard from at `now`; `seed` feeds its message ids and tokens.
    pub fn new(
        broker: Arc<Broker>,
        config: Arc<DeviceConfig>,
        registry: Arc<Registry>,
        directory: Arc<dyn Directory>,
        peer: SocketAddr,
        seed: u64,
        now: Instant,
    ) -> Device {
        Device {
            layer: MessageLayer::new(config.transmission, seed),
            blocks: Assembler::new(
                config.max_inflight.max(1),
                config.max_body_size,
                config.response_timeout,
            ),
            block1: Assembler::new(
                2,
                config.max_body_size,
                config.transmission.exchange_lifetime,
            ),
            broker,
            config,
            registry,
            directory,
            peer,
            reg: None,
            pending: HashMap::new(),
            observations: HashMap::new(),
            queue: VecDeque::new(),
            first_blocks: HashMap::new(),
            clock: now,
        }
    }

    /// The registered endpoint name.
    pub fn endpoint(&self) -> Option<&str> {
        self.reg.as_ref().map(|r| r.ep.as_str())
    }

    /// Commands buffered (queue mode, or beyond `max_inflight`).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The session's wake-up signal (changes on (re-)registration).
    pub fn signal(&self) -> Option<Arc<ConnectionSignal>> {
        self.reg.as_ref().map(|r| r.handle.signal.clone())
    }

    /// Datagrams to send.
    pub fn take_output(&mut self) -> Vec<Bytes> {
        self.layer.take_output()
    }

    /// Datagrams waiting.
    pub fn has_output(&self) -> bool {
        self.layer.has_output()
    }

    /// When [`Device::handle_timeout`] is next needed.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.layer.next_deadline(),
            self.reg.as_ref().map(|r| r.expires),
            self.pending.values().map(|p| p.deadline).min(),
            self.block1.next_deadline(),
            self.blocks.next_deadline(),
            self.throttled_until(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Input is paused until then: the device's events exceeded the
    /// per-client rate (`limits.*`, throttle mode).
    pub fn throttled_until(&self) -> Option<Instant> {
        self.reg
            .as_ref()
            .and_then(|r| r.publisher.throttled_until())
    }

    /// Not registered and nothing remembered: the driver may drop the peer.
    pub fn is_idle(&self) -> bool {
        self.reg.is_none() && self.layer.is_idle() && self.block1.is_empty()
    }

    /// True when the device's events filled a subscriber's mailbox: the
    /// driver stops reading until [`Device::take_congestion`] has room.
    pub fn is_congested(&self) -> bool {
        self.reg
            .as_ref()
            .is_some_and(|r| r.publisher.is_congested())
    }

    /// The sessions the device's events filled (each to wait for until it
    /// has room, or the broker's `max_pause`).
    pub fn take_congestion(&mut self) -> Vec<Arc<Session>> {
        self.reg
            .as_mut()
            .map(|r| r.publisher.take_congestion())
            .unwrap_or_default()
    }

    /// Publish an event under the registration's mountpoint, through the
    /// core's intake.
    fn publish(&mut self, suffix: &str, body: &Json) {
        let Some(r) = &mut self.reg else { return };
        let topic = format!("{}{}", r.mountpoint, suffix);
        let payload = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
        let m = tributary_core::Message::new(topic, payload, self.config.publish_qos, false);
        // No acknowledgement of the device's waits for the store: the
        // admission's ticket is not needed.
        let admission = self.broker.admit(&mut r.publisher, m, self.clock);
        match admission.verdict {
            Verdict::Accepted | Verdict::NoSubscribers => {}
            Verdict::Denied => debug!(ep = %r.ep, "publish not authorized; event dropped"),
            Verdict::RateExceeded => debug!(ep = %r.ep, "message rate exceeded; event dropped"),
        }
    }

    /// One datagram from the peer. True when it was a well-formed message
    /// (the peer showed life).
    pub fn handle_datagram(&mut self, data: &[u8], now: Instant) -> bool {
        self.clock = now;
        let received = self.layer.receive(data, now);
        let alive = !matches!(received, Received::Malformed(_) | Received::Ignored);
        if let Some(r) = &mut self.reg {
            if alive {
                r.last_seen = now;
            }
        }
        match received {
            Received::Request(m) => self.handle_request(m, now),
            Received::Response(m) => self.handle_response(m, now),
            Received::Acknowledged { token, .. } => {
                if let Some(p) = self.pending.get(&token) {
                    // Empty ACK: the answer comes later as a separate response.
                    // EMQX: the command's fields, msgType "ack", data.path.
                    let body =
                        command::envelope(&p.cmd.echo, "ack", json!({"path": p.cmd.req_path}));
                    self.publish(&self.config.topics.response.clone(), &body);
                }
            }
            Received::Reset { token, .. } => {
                if let Some(p) = self.pending.remove(&token) {
                    self.answer_locally(
                        &p.cmd,
                        Code::SERVICE_UNAVAILABLE,
                        Some("reset"),
                        "the device reset the request",
                    );
                }
                if let Some(o) = self.observations.remove(&token) {
                    debug!(path = %o.path, "notification reset by the device; observation dropped");
                }
            }
            Received::Malformed(e) => {
                let m = self.broker.metrics();
                m.inc(&m.packets_malformed);
                debug!(peer = %self.peer, error = %e, "malformed CoAP message");
            }
            Received::Duplicate | Received::Ping | Received::Ignored => {}
        }
        self.flush_queue(now);
        alive
    }

    /// The core woke the peer: commands, or a kick.
    pub fn handle_wake(&mut self, now: Instant) {
        self.clock = now;
        let Some(r) = &self.reg else { return };
        match r.handle.signal.kicked() {
            None => self.poll_commands(now),
            Some(KickReason::Takeover) => {
                debug!(ep = ?self.endpoint(), "registration taken over");
                self.drop_registration(None, "taken over", now);
            }
            Some(KickReason::Administrative) => {
                self.drop_registration(Some(CloseKind::Abnormal), "kicked", now);
            }
            Some(KickReason::ServerShutdown) => self.shutdown(now),
        }
    }

    fn poll_commands(&mut self, now: Instant) {
        let Some(r) = &self.reg else { return };
        let handle = r.handle.clone();
        let broker = self.broker.clone();
        let metrics = broker.metrics();
        let out = handle.take_for_send(now, 64, usize::MAX, metrics, |_| true);
        if out.len() == 64 && handle.has_sendable(usize::MAX) {
            handle.signal.wake();
        }
        for o in out {
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
            match command::parse(&o.delivery.message.payload) {
                Ok(cmd) => self.submit(cmd, now),
                Err(bad) => {
                    debug!(why = %bad.why, "malformed command");
                    self.publish(
                        &self.config.topics.response.clone(),
                        &command::error_response(&bad),
                    );
                }
            }
        }
    }

    /// Retransmissions, requests given up on, lifetime expiry.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.clock = now;
        if let Some(r) = &mut self.reg {
            r.publisher.resume(now);
        }
        for gave_up in self.layer.handle_timeout(now) {
            if let Some(p) = self.pending.remove(&gave_up.token) {
                self.answer_locally(
                    &p.cmd,
                    Code::new(5, 4),
                    Some("timeout"),
                    "the device did not answer",
                );
            }
        }
        self.block1.expire(now);
        self.blocks.expire(now);
        let late: Vec<Token> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for t in late {
            if let Some(p) = self.pending.remove(&t) {
                self.layer.cancel(p.message_id);
                self.answer_locally(
                    &p.cmd,
                    Code::new(5, 4),
                    Some("timeout"),
                    "no response from the device in time",
                );
            }
        }
        if self.reg.as_ref().is_some_and(|r| r.expires <= now) {
            info!(ep = ?self.endpoint(), "lifetime expired without update; de-registered");
            self.drop_registration(Some(CloseKind::Abnormal), "lifetime expired", now);
        }
        self.flush_queue(now);
    }

    /// Server shutdown: close the session (the registration is lost, as in EMQX).
    pub fn shutdown(&mut self, now: Instant) {
        self.clock = now;
        self.drop_registration(
            Some(CloseKind::Normal {
                publish_will: false,
            }),
            "server shutting down",
            now,
        );
    }

    /// The driver drops the peer. Idempotent.
    pub fn finish(&mut self, now: Instant) {
        self.shutdown(now);
    }
}
