//! One LwM2M peer, sans-IO: its registration (TS Core 1.1 §6.2, the Client
//! Registration interface), the requests the gateway sends it on behalf of
//! MQTT applications, its observations and its queue-mode buffer.
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
use tributary_core::{
    Broker, ClientInfo, CloseKind, ConnectionSignal, KickReason, QoS, SessionHandle,
    SessionRequest, SubOptions,
};

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
    client: ClientInfo,
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
}

#[derive(Debug)]
struct Observation {
    req_id: Json,
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
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Not registered and nothing remembered: the driver may drop the peer.
    pub fn is_idle(&self) -> bool {
        self.reg.is_none() && self.layer.is_idle() && self.block1.is_empty()
    }

    fn publish(&self, suffix: &str, body: &Json) {
        let Some(r) = &self.reg else { return };
        let topic = format!("{}{}", r.mountpoint, suffix);
        if !self.broker.authorize(&r.client, Action::Publish, &topic) {
            debug!(ep = %r.ep, %topic, "publish not authorized; event dropped");
            return;
        }
        let payload = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
        let mut m = tributary_core::Message::new(topic, payload, self.config.publish_qos, false);
        m.publisher = Some(r.client.client_id.clone());
        self.broker.publish(m, self.clock);
    }

    /// One datagram from the peer.
    pub fn handle_datagram(&mut self, data: &[u8], now: Instant) {
        self.clock = now;
        let received = self.layer.receive(data, now);
        if let Some(r) = &mut self.reg {
            if !matches!(received, Received::Malformed(_) | Received::Ignored) {
                r.last_seen = now;
            }
        }
        match received {
            Received::Request(m) => self.handle_request(m, now),
            Received::Response(m) => self.handle_response(m, now),
            Received::Acknowledged { token, .. } => {
                if let Some(p) = self.pending.get(&token) {
                    // Empty ACK: the answer comes later as a separate response.
                    let body = json!({"reqID": p.cmd.req_id, "msgType": "ack",
                                      "data": {"reqPath": p.cmd.req_path}});
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
    }

    fn handle_request(&mut self, mut m: Message, now: Instant) {
        // A Register/Update whose object list arrives in blocks (RFC 7959
        // Block1; Wakaama does this with small block sizes): assembled with
        // the CoAP crate's Assembler, 2.31 Continue for each block but the last.
        if let Some(raw) = m.option(opt::BLOCK1) {
            let Some(block) = BlockValue::decode(raw) else {
                let mut r = response(Code::BAD_OPTION);
                r.payload = Bytes::from_static(b"malformed Block1 option");
                self.layer.respond(&m, r, now);
                return;
            };
            let key = format!("{}?{}", m.path().join("/"), m.queries().join("&"));
            let size1 = m.uint_option(opt::SIZE1).and_then(Result::ok);
            match self.block1.feed(&key, block, &m.payload, size1, now) {
                Ok(Assembled::NeedMore) => {
                    let mut r = response(Code::CONTINUE);
                    r.add_option(opt::BLOCK1, block.encode());
                    self.layer.respond(&m, r, now);
                    return;
                }
                Ok(Assembled::Complete(body)) => {
                    m.payload = body;
                }
                Err(e) => {
                    let code = match e {
                        BlockError::TooLarge => Code::REQUEST_ENTITY_TOO_LARGE,
                        _ => Code::REQUEST_ENTITY_INCOMPLETE,
                    };
                    self.layer.respond(&m, response(code), now);
                    return;
                }
            }
        }
        let path = m.path();
        let segs: Vec<&str> = path.iter().map(String::as_str).collect();
        let result = match (m.code, segs.as_slice()) {
            (Code::POST, ["rd"]) => self.register(&m, now),
            (Code::POST, ["rd", ep]) => self.update(&m, ep, now),
            (Code::DELETE, ["rd", ep]) => self.deregister(ep, now),
            (_, ["rd", ..]) => Err((Code::METHOD_NOT_ALLOWED, "POST or DELETE on /rd")),
            _ => Err((Code::NOT_FOUND, "this server only has /rd")),
        };
        let registered = result.is_ok() && segs == ["rd"];
        match result {
            Ok(mut r) => {
                if let Some(raw) = m.option(opt::BLOCK1) {
                    // The final block is acknowledged in the answer (RFC 7959 §2.3).
                    r.add_option(opt::BLOCK1, raw.to_vec());
                }
                self.layer.respond(&m, r, now)
            }
            Err((code, why)) => {
                debug!(peer = %self.peer, %code, why, "registration request refused");
                let mut r = response(code);
                r.payload = Bytes::from_static(why.as_bytes());
                self.layer.respond(&m, r, now);
            }
        }
        // The register event and the 2.01 go out first, then auto-observations.
        if registered {
            self.auto_observe(now);
        }
    }

    fn register(&mut self, m: &Message, now: Instant) -> Result<Message, Refusal> {
        let mut ep = None;
        let mut lt = 86400u32;
        let mut lwm2m = "1.0".to_string();
        let mut binding = "U".to_string();
        let mut sms = None;
        let mut q = false;
        for item in m.queries() {
            let (k, v) = item.split_once('=').unwrap_or((item.as_str(), ""));
            match k {
                "ep" => ep = Some(v.to_string()),
                "lt" => {
                    lt = v
                        .parse()
                        .map_err(|_| (Code::BAD_REQUEST, "lt is a number"))?
                }
                "lwm2m" => lwm2m = v.to_string(),
                "b" => binding = v.to_string(),
                "sms" => sms = Some(v.to_string()),
                "Q" => q = true,
                _ => {}
            }
        }
        let ep = ep
            .filter(|e| !e.is_empty() && !e.contains(['/', '+', '#']))
            .ok_or((
                Code::BAD_REQUEST,
                "ep (endpoint name) is missing or invalid",
            ))?;
        if !matches!(lwm2m.as_str(), "1.0" | "1" | "1.1" | "1.2") {
            // TS Core 1.1 §6.2.1: an unsupported version is 4.12.
            return Err((
                Code::new(4, 12),
                "LwM2M version not supported (1.0, 1.1, 1.2)",
            ));
        }
        let life = Duration::from_secs(u64::from(lt));
        if life < self.config.lifetime_min || life > self.config.lifetime_max {
            return Err((Code::BAD_REQUEST, "lifetime out of the accepted range"));
        }
        let text = std::str::from_utf8(&m.payload)
            .map_err(|_| (Code::BAD_REQUEST, "object list is not UTF-8"))?;
        let objects = link::object_list(text)
            .map_err(|_| (Code::BAD_REQUEST, "object list is not link format"))?;
        let client = ClientInfo {
            client_id: ep.as_str().into(),
            username: None,
            peer: Some(self.peer),
            protocol: "lwm2m",
        };
        match self.broker.authenticator().authenticate(&client, None) {
            AuthOutcome::Allow => {}
            _ => return Err((Code::FORBIDDEN, "endpoint not authorized")),
        }
        // A re-registration from this peer replaces its registration.
        self.drop_registration(
            Some(CloseKind::Normal {
                publish_will: false,
            }),
            "re-registered",
            now,
        );
        let opened = self.broker.open_session(
            SessionRequest {
                client: client.clone(),
                clean_start: true,
                expiry_interval: 0,
                will: None,
            },
            now,
        );
        let mountpoint = expand_mountpoint(&self.config.mountpoint, &ep);
        let filter = format!("{mountpoint}{}", self.config.topics.command);
        if self.broker.authorize(&client, Action::Subscribe, &filter) {
            if let Err(e) = self.broker.subscribe(
                &opened.handle,
                &filter,
                SubOptions::at(QoS::AtLeastOnce),
                now,
            ) {
                debug!(%ep, error = %e, "command topic not subscribable");
            }
        } else {
            debug!(%ep, %filter, "command subscription not authorized");
        }
        let queue_mode = q || binding.contains('Q');
        info!(%ep, lwm2m = %lwm2m, lt, binding = %binding, peer = %self.peer, "LwM2M device registered");
        self.reg = Some(Registration {
            ep: ep.clone(),
            lwm2m,
            lifetime: lt,
            binding,
            sms,
            queue_mode,
            objects,
            expires: now + life,
            last_seen: now,
            handle: opened.handle,
            client,
            mountpoint,
        });
        self.directory.claim(&ep, self.peer);
        let event = self.event("register", true);
        self.publish(&self.config.topics.register.clone(), &event);
        let mut r = response(Code::CREATED);
        r.add_option(opt::LOCATION_PATH, b"rd".to_vec());
        r.add_option(opt::LOCATION_PATH, ep.into_bytes());
        Ok(r)
    }

    fn event(&self, msg_type: &str, with_objects: bool) -> Json {
        let Some(r) = &self.reg else {
            return Json::Null;
        };
        let mut data = json!({
            "ep": r.ep, "lt": r.lifetime, "lwm2m": r.lwm2m, "b": r.binding,
            "alternatePath": r.objects.alternate_path,
        });
        if let Some(s) = &r.sms {
            data["sms"] = Json::from(s.as_str());
        }
        if with_objects {
            data["objectList"] = Json::from(r.objects.objects.clone());
        }
        json!({"msgType": msg_type, "data": data})
    }

    /// Validate an Update's parameters and object list before anything changes.
    fn parse_update(&self, queries: &[String], payload: &[u8]) -> Result<UpdateParams, Refusal> {
        let mut u = UpdateParams::default();
        for item in queries {
            let (k, v) = item.split_once('=').unwrap_or((item.as_str(), ""));
            match k {
                "lt" => {
                    let lt: u32 = v
                        .parse()
                        .map_err(|_| (Code::BAD_REQUEST, "lt is a number"))?;
                    let life = Duration::from_secs(u64::from(lt));
                    if life < self.config.lifetime_min || life > self.config.lifetime_max {
                        return Err((Code::BAD_REQUEST, "lifetime out of the accepted range"));
                    }
                    u.lifetime = Some(lt);
                }
                "b" => u.binding = Some(v.to_string()),
                "sms" => u.sms = Some(v.to_string()),
                "Q" => u.queue = true,
                _ => {}
            }
        }
        if !payload.is_empty() {
            let text = std::str::from_utf8(payload)
                .map_err(|_| (Code::BAD_REQUEST, "object list is not UTF-8"))?;
            u.objects = Some(
                link::object_list(text)
                    .map_err(|_| (Code::BAD_REQUEST, "object list is not link format"))?,
            );
        }
        Ok(u)
    }

    /// Apply a validated Update (from this peer or handed over by another).
    fn apply_update(&mut self, u: UpdateParams, now: Instant) {
        let Some(r) = &mut self.reg else { return };
        if let Some(lt) = u.lifetime {
            r.lifetime = lt;
        }
        if let Some(b) = u.binding {
            r.queue_mode = b.contains('Q');
            r.binding = b;
        }
        if u.queue {
            r.queue_mode = true;
        }
        if let Some(s) = u.sms {
            r.sms = Some(s);
        }
        let has_objects = u.objects.is_some();
        if let Some(o) = u.objects {
            r.objects = o;
        }
        r.last_seen = now;
        r.expires = now + Duration::from_secs(u64::from(r.lifetime));
        debug!(ep = %r.ep, lt = r.lifetime, "registration updated");
        if has_objects || self.config.update_publish == UpdatePublish::Always {
            let event = self.event("update", has_objects);
            self.publish(&self.config.topics.update.clone(), &event);
        }
    }

    fn update(&mut self, m: &Message, ep: &str, now: Instant) -> Result<Message, Refusal> {
        let u = self.parse_update(&m.queries(), &m.payload)?;
        if self.endpoint() == Some(ep) {
            self.apply_update(u, now);
            return Ok(response(Code::CHANGED));
        }
        // Registered through another address (clients that send Update
        // from a fresh socket): hand it to the peer holding the registration.
        let op = Remote::Update {
            queries: m.queries(),
            payload: m.payload.clone(),
        };
        if self.directory.forward(ep, op) {
            Ok(response(Code::CHANGED))
        } else {
            Err((Code::NOT_FOUND, "no such registration"))
        }
    }

    /// An Update or De-register for this peer's registration that arrived
    /// at another peer (see [`Directory`]).
    pub fn handle_remote(&mut self, op: Remote, now: Instant) {
        self.clock = now;
        match op {
            Remote::Update { queries, payload } => match self.parse_update(&queries, &payload) {
                Ok(u) => self.apply_update(u, now),
                Err((_, why)) => debug!(why, "handed-over update refused"),
            },
            Remote::Deregister => {
                info!(ep = ?self.endpoint(), "LwM2M device de-registered (through another address)");
                self.drop_registration(
                    Some(CloseKind::Normal {
                        publish_will: false,
                    }),
                    "deregistered",
                    now,
                );
            }
        }
        self.flush_queue(now);
    }

    fn deregister(&mut self, ep: &str, now: Instant) -> Result<Message, Refusal> {
        if self.endpoint() != Some(ep) {
            return if self.directory.forward(ep, Remote::Deregister) {
                Ok(response(Code::DELETED))
            } else {
                Err((Code::NOT_FOUND, "no such registration"))
            };
        }
        info!(%ep, "LwM2M device de-registered");
        self.drop_registration(
            Some(CloseKind::Normal {
                publish_will: false,
            }),
            "deregistered",
            now,
        );
        Ok(response(Code::DELETED))
    }

    /// End the registration: publish the de-register event (unless taken
    /// over), answer what is pending and queued, close the session.
    fn drop_registration(&mut self, close: Option<CloseKind>, reason: &str, _now: Instant) {
        if self.reg.is_none() {
            return;
        }
        if close.is_some() {
            let mut event = self.event("deregister", false);
            event["data"]["reason"] = Json::from(reason);
            self.publish(&self.config.topics.register.clone(), &event);
        }
        let pending: Vec<Pending> = self.pending.drain().map(|(_, p)| p).collect();
        for p in pending {
            self.layer.cancel(p.message_id);
            self.answer_locally(
                &p.cmd,
                Code::SERVICE_UNAVAILABLE,
                None,
                "device de-registered",
            );
        }
        let queued: Vec<Command> = self.queue.drain(..).collect();
        for c in queued {
            self.answer_locally(&c, Code::SERVICE_UNAVAILABLE, None, "device de-registered");
        }
        self.observations.clear();
        if let Some(r) = self.reg.take() {
            self.directory.release(&r.ep, self.peer);
            if let Some(kind) = close {
                self.broker.close_session(&r.handle, kind, _now);
            }
        }
    }

    fn answer_locally(&self, cmd: &Command, code: Code, code_msg: Option<&str>, why: &str) {
        let body = command::local_response(
            &cmd.req_id,
            &cmd.msg_type,
            &cmd.req_path,
            code,
            code_msg,
            why,
        );
        self.publish(&self.config.topics.response.clone(), &body);
    }

    fn handle_response(&mut self, m: Message, now: Instant) {
        if let Some(p) = self.pending.remove(&m.token) {
            let block = m.option(opt::BLOCK2).and_then(BlockValue::decode);
            match block {
                Some(b) if m.code.class() == 2 => self.block2(p, b, m, now),
                _ => self.answer(p.cmd, p.first_token, m, now),
            }
            return;
        }
        if let Some(o) = self.observations.get(&m.token) {
            let seq = m.uint_option(opt::OBSERVE).and_then(Result::ok);
            let data = self.decode_data(&o.req_path, &o.path, &m, false);
            let body = json!({"reqID": o.req_id, "msgType": "notify",
                              "seqNum": seq.map_or(Json::Null, Json::from), "data": data});
            self.publish(&self.config.topics.notify.clone(), &body);
            if !m.code.is_response() || m.code.class() != 2 || seq.is_none() {
                // An error or a final response ends the observation (RFC 7641 §3.2).
                self.observations.remove(&m.token);
            }
            return;
        }
        debug!(peer = %self.peer, token = ?m.token, "response to no request; ignored");
    }

    fn decode_data(&self, req_path: &str, path: &Path, m: &Message, discover: bool) -> Json {
        let mut data = json!({"reqPath": req_path, "code": m.code.to_string(),
                              "codeMsg": command::code_msg(m.code)});
        if m.payload.is_empty() {
            return data;
        }
        let cf = m.content_format();
        // Discover answers are link format even when a device omits the format.
        if cf == Some(content::LINK) || (discover && cf.is_none()) {
            let text = String::from_utf8_lossy(&m.payload);
            match link::parse(&text) {
                Ok(links) => {
                    data["content"] =
                        Json::from(links.iter().map(link::to_string).collect::<Vec<_>>());
                }
                Err(e) => data["error"] = Json::from(e.to_string()),
            }
            return data;
        }
        match content::decode(cf, &m.payload, path, &self.registry) {
            Ok(entries) => data["content"] = command::content_json(&entries),
            Err(e) => {
                debug!(error = %e, "device payload not decodable");
                data["error"] = Json::from(e.to_string());
            }
        }
        data
    }

    /// One block of a Block2 answer (RFC 7959 §2.4): assembled with the CoAP
    /// crate's [`Assembler`]; the next block is asked for with the same
    /// request (without Observe) and a fresh token.
    fn block2(&mut self, p: Pending, b: BlockValue, m: Message, now: Instant) {
        let key = p.first_token;
        let size2 = m.uint_option(opt::SIZE2).and_then(Result::ok);
        match self.blocks.feed(&key, b, &m.payload, size2, now) {
            Ok(Assembled::Complete(body)) => {
                let mut full = m;
                full.remove_option(opt::BLOCK2);
                full.payload = body;
                self.answer(p.cmd, p.first_token, full, now);
            }
            Ok(Assembled::NeedMore) => {
                let token = self.layer.new_token(4);
                let mut next = p.request.clone();
                next.token = token;
                next.mtype = MessageType::Con;
                next.remove_option(opt::OBSERVE);
                next.remove_option(opt::BLOCK2);
                let want = BlockValue {
                    num: b.num + 1,
                    more: false,
                    szx: b.szx,
                };
                next.add_option(opt::BLOCK2, want.encode());
                let message_id = self.layer.send(next.clone(), now);
                // An observation's first answer keeps its token for the notifications.
                if matches!(p.cmd.op, Op::Observe(_)) && m.has_option(opt::OBSERVE) && b.num == 0 {
                    self.first_blocks.insert(p.first_token, m.clone());
                }
                self.pending.insert(
                    token,
                    Pending {
                        message_id,
                        deadline: now + self.config.response_timeout,
                        request: next,
                        ..p
                    },
                );
            }
            Err(e) => {
                debug!(error = ?e, "block-wise answer abandoned");
                self.answer_locally(
                    &p.cmd,
                    Code::new(4, 8),
                    Some("request_entity_incomplete"),
                    "block-wise answer from the device could not be assembled",
                );
            }
        }
    }

    fn answer(&mut self, cmd: Command, token: Token, m: Message, _now: Instant) {
        debug!(msg_type = %cmd.msg_type, code = %m.code, cf = ?m.content_format(), bytes = m.payload.len(), "answer from the device");
        let data = self.decode_data(
            &cmd.req_path,
            cmd.path(),
            &m,
            matches!(cmd.op, Op::Discover(_)),
        );
        let first = self.first_blocks.remove(&token);
        let observing =
            m.has_option(opt::OBSERVE) || first.is_some_and(|f| f.has_option(opt::OBSERVE));
        if matches!(cmd.op, Op::Observe(_)) && m.code == Code::CONTENT && observing {
            // The observation lives on under the first request's token.
            self.observations.insert(
                token,
                Observation {
                    req_id: cmd.req_id.clone(),
                    req_path: cmd.req_path.clone(),
                    path: cmd.path().clone(),
                },
            );
        }
        let body = json!({"reqID": cmd.req_id, "msgType": cmd.msg_type, "data": data});
        self.publish(&self.config.topics.response.clone(), &body);
    }

    fn reachable(&self, now: Instant) -> bool {
        match &self.reg {
            Some(r) if r.queue_mode => now < r.last_seen + self.config.qmode_time_window,
            Some(_) => true,
            None => false,
        }
    }

    /// Buffer or send one command.
    fn submit(&mut self, cmd: Command, now: Instant) {
        if !self.reachable(now)
            || self.pending.len() >= self.config.max_inflight.max(1)
            || !self.queue.is_empty()
        {
            if self.queue.len() >= self.config.max_queued {
                self.answer_locally(
                    &cmd,
                    Code::SERVICE_UNAVAILABLE,
                    Some("queue_full"),
                    "command buffer full",
                );
                return;
            }
            debug!(ep = ?self.endpoint(), msg_type = %cmd.msg_type, "command buffered");
            self.queue.push_back(cmd);
            return;
        }
        self.send(cmd, now);
    }

    fn flush_queue(&mut self, now: Instant) {
        while !self.queue.is_empty()
            && self.reachable(now)
            && self.pending.len() < self.config.max_inflight.max(1)
        {
            if let Some(cmd) = self.queue.pop_front() {
                self.send(cmd, now);
            }
        }
    }

    fn send(&mut self, cmd: Command, now: Instant) {
        let Some(r) = &self.reg else { return };
        let mut token = self.layer.new_token(4);
        if let Op::CancelObserve(p) = &cmd.op {
            // RFC 7641 §3.6: cancel with a GET Observe=1 on the observation's token.
            if let Some(t) = self
                .observations
                .iter()
                .find(|(_, o)| &o.path == p)
                .map(|(t, _)| *t)
            {
                self.observations.remove(&t);
                token = t;
            }
        }
        let write_format = content::write_format(&r.lwm2m, &r.objects.content_formats);
        let v10 = r.lwm2m == "1.0" || r.lwm2m == "1";
        let target = Target {
            alternate_path: &r.objects.alternate_path,
            write_format,
            accept: (!v10 && !r.objects.content_formats.is_empty()).then_some(write_format),
            registry: &self.registry,
        };
        match cmd.request(&target, token) {
            Ok(m) => {
                debug!(msg_type = %cmd.msg_type, code = %m.code, path = ?m.path(), token = ?token, "request to the device");
                let message_id = self.layer.send(m.clone(), now);
                let deadline = now + self.config.response_timeout;
                self.pending.insert(
                    token,
                    Pending {
                        cmd,
                        message_id,
                        deadline,
                        request: m,
                        first_token: token,
                    },
                );
            }
            Err(why) => self.answer_locally(&cmd, Code::BAD_REQUEST, None, &why),
        }
    }

    fn auto_observe(&mut self, now: Instant) {
        let Some(r) = &self.reg else { return };
        let mut cmds = Vec::new();
        for p in &self.config.auto_observe {
            let Ok(path) = Path::parse(p) else { continue };
            let registered = r.objects.objects.iter().any(|o| {
                Path::parse(o).is_ok_and(|op| path.starts_with(&op) || op.starts_with(&path))
            });
            if registered && path.depth() > 0 {
                cmds.push(Command {
                    req_id: Json::from(0),
                    msg_type: "observe".into(),
                    req_path: path.to_string(),
                    op: Op::Observe(path),
                });
            }
        }
        for c in cmds {
            self.submit(c, now);
        }
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
