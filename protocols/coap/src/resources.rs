//! The resources of EMQX's CoAP scheme on top of the channel:
//! `/ps/{topic}` (publish, Observe-subscribe, retained read),
//! `/mqtt/connection` (create, heartbeat, close) and `/.well-known/core`
//! (RFC 6690 link format).
//!
//! Every handler returns `Ok(Some(response))`, or `Err(Reject)` which
//! [`Channel::rescue`](crate::channel::Channel) turns into an error
//! response; none writes an error response itself.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tracing::{debug, info};
use tributary_core::auth::{Action, AuthCheck, AuthOutcome};
use tributary_core::intake::Verdict;
use tributary_core::topic::has_wildcard;
use tributary_core::{ClientInfo, CloseKind, Delivery, SessionRequest, SubOptions};

use crate::block::{slice, Assembled, BlockError, BlockValue, Representation};
use crate::channel::{AuthKey, Channel, Connection, ObsKey, PeerSession, Reject};
use crate::content;
use crate::layer::response;
use crate::msg::{opt, Code, Message, MessageType};
use crate::observe::RegisterError;
use crate::query::{percent_decode, Query};

/// Options this server understands in requests. Any other critical option
/// is answered 4.02 (RFC 7252 §5.4.1); Proxy-Uri/Proxy-Scheme get 5.05.
const RECOGNIZED: &[u16] = &[
    opt::URI_HOST,
    opt::OBSERVE,
    opt::URI_PORT,
    opt::URI_PATH,
    opt::CONTENT_FORMAT,
    opt::URI_QUERY,
    opt::ACCEPT,
    opt::BLOCK2,
    opt::BLOCK1,
    opt::SIZE2,
    opt::SIZE1,
    opt::NO_RESPONSE,
];

/// The link-format description of the resources (RFC 6690).
const WELL_KNOWN_CORE: &str =
    "</ps>;rt=\"core.ps\";ct=0;obs,</mqtt/connection>;rt=\"core.connection\"";

type Handled = Result<Option<Message>, Reject>;

fn bad(why: &'static str) -> Reject {
    Reject::new(Code::BAD_REQUEST, why)
}

/// A client's identity for one request.
struct Identity {
    client: ClientInfo,
    mountpoint: String,
}

fn expand_mountpoint(template: &str, client: &ClientInfo) -> String {
    if !template.contains("${") {
        return template.to_string();
    }
    template
        .replace("${clientid}", &client.client_id)
        .replace("${username}", client.username.as_deref().unwrap_or(""))
}

impl Channel {
    pub(crate) fn route(&mut self, m: &Message, now: Instant) -> Handled {
        if let Some(&(number, _)) = m
            .options
            .iter()
            .find(|(n, _)| opt::is_critical(*n) && !RECOGNIZED.contains(n))
        {
            if number == opt::PROXY_URI || number == opt::PROXY_SCHEME {
                return Err(Reject::new(
                    Code::PROXYING_NOT_SUPPORTED,
                    "this server is not a proxy",
                ));
            }
            return Err(Reject::new(
                Code::BAD_OPTION,
                "unrecognized critical option [RFC 7252 §5.4.1]",
            ));
        }
        let path = m.path();
        let segs: Vec<&str> = path.iter().map(String::as_str).collect();
        match segs.as_slice() {
            ["ps", rest @ ..] => self.ps(m, rest, now),
            ["mqtt", "connection"] => self.connection(m, now),
            [".well-known", "core"] => {
                if m.code != Code::GET {
                    return Err(Reject::new(Code::METHOD_NOT_ALLOWED, "GET only"));
                }
                let mut r = response(Code::CONTENT);
                r.add_uint_option(opt::CONTENT_FORMAT, 40);
                r.payload = Bytes::from_static(WELL_KNOWN_CORE.as_bytes());
                Ok(Some(r))
            }
            _ => Err(Reject::new(Code::NOT_FOUND, "no such resource")),
        }
    }

    /// Who sends this request: the peer's connection (checked against
    /// `clientid`/`token`), or a connectionless client authenticated from
    /// the query.
    fn identify(&mut self, q: &Query) -> Result<Identity, Reject> {
        let unauthorized = |why| Reject::new(Code::UNAUTHORIZED, why);
        if let (Some(conn), Some(s)) = (&self.conn, &self.session) {
            let given = (q.clientid.as_deref(), q.token.as_deref());
            let valid = given.0 == Some(&*s.client.client_id) && given.1 == Some(&conn.token);
            if valid || (given == (None, None) && !self.config.connection_required) {
                let identity = Identity {
                    client: s.client.clone(),
                    mountpoint: s.mountpoint.clone(),
                };
                self.proved = true;
                return Ok(identity);
            }
            return Err(unauthorized("bad clientid or token"));
        }
        if self.config.connection_required {
            return Err(unauthorized(
                "connection required: POST /mqtt/connection first",
            ));
        }
        let client_id: Arc<str> = match (&q.clientid, &self.session) {
            (Some(c), _) if !c.is_empty() => c.as_str().into(),
            (_, Some(s)) => s.client.client_id.clone(),
            _ => format!("coap-{}", self.peer).into(),
        };
        let client = ClientInfo {
            client_id,
            username: q.username.clone(),
            peer: Some(self.peer),
            protocol: "coap",
        };
        self.authenticate(&client, q)?;
        let mountpoint = expand_mountpoint(&self.config.mountpoint, &client);
        Ok(Identity { client, mountpoint })
    }

    /// Authenticate through the core's chain. A backend that answers later
    /// parks the request ([`Reject::parked`]); it is handled again with the
    /// answer ([`Channel::handle_auth_result`]).
    fn authenticate(&mut self, client: &ClientInfo, q: &Query) -> Result<(), Reject> {
        let password = q.password.as_deref().map(str::as_bytes);
        let key: AuthKey = (
            client.client_id.clone(),
            client.username.clone(),
            password.map(<[u8]>::to_vec),
        );
        let outcome = match self.auth.answer.take() {
            Some((k, outcome)) if k == key => outcome,
            _ => match self.broker.authenticator().check(client, password) {
                AuthCheck::Ready(outcome) => outcome,
                AuthCheck::Pending(decision) => {
                    self.auth.future = Some(decision);
                    self.auth.key = Some(key);
                    return Err(Reject::parked());
                }
            },
        };
        match outcome {
            AuthOutcome::Allow => Ok(()),
            AuthOutcome::BadCredentials => {
                Err(Reject::new(Code::UNAUTHORIZED, "bad username or password"))
            }
            AuthOutcome::NotAuthorized => Err(Reject::new(Code::UNAUTHORIZED, "not authorized")),
        }
    }

    fn ps(&mut self, m: &Message, rest: &[&str], now: Instant) -> Handled {
        let q = Query::parse(m.option_values(opt::URI_QUERY)).map_err(|e| bad(e.0))?;
        let topic = rest
            .iter()
            .map(|s| percent_decode(s))
            .collect::<Vec<_>>()
            .join("/");
        let path = std::iter::once("ps")
            .chain(rest.iter().copied())
            .collect::<Vec<_>>()
            .join("/");
        match m.code {
            Code::POST | Code::PUT => self.publish(m, &topic, &q, now),
            Code::GET => match m.uint_option(opt::OBSERVE) {
                Some(Ok(0)) => self.subscribe(m, &topic, path, &q, now),
                Some(Ok(1)) => self.unsubscribe(m, &topic, &q, now),
                Some(Err(_)) => Err(bad("malformed Observe option")),
                _ => self.read(m, &topic, &path, &q, now),
            },
            _ => Err(Reject::new(
                Code::METHOD_NOT_ALLOWED,
                "POST/PUT publish, GET observes or reads",
            )),
        }
    }

    fn publish(&mut self, m: &Message, topic: &str, q: &Query, now: Instant) -> Handled {
        let id = self.identify(q)?;
        let mut block1_done = None;
        let payload = match m.option(opt::BLOCK1) {
            Some(raw) => {
                let block = BlockValue::decode(raw).ok_or(bad("malformed Block1 option"))?;
                let size1 = m.uint_option(opt::SIZE1).and_then(Result::ok);
                let key = format!("{}?{}", topic, m.queries().join("&"));
                let max = self.block1.max_body();
                match self.block1.feed(&key, block, &m.payload, size1, now) {
                    Ok(Assembled::NeedMore) => {
                        let mut r = response(Code::CONTINUE);
                        r.add_option(
                            opt::BLOCK1,
                            BlockValue {
                                more: true,
                                ..block
                            }
                            .encode(),
                        );
                        return Ok(Some(r));
                    }
                    Ok(Assembled::Complete(body)) => {
                        block1_done = Some(block);
                        body
                    }
                    Err(BlockError::Incomplete) => {
                        return Err(Reject::new(
                            Code::REQUEST_ENTITY_INCOMPLETE,
                            "block out of sequence [RFC 7959 §2.9.2]",
                        ))
                    }
                    Err(BlockError::TooLarge) => {
                        return Err(Reject {
                            code: Code::REQUEST_ENTITY_TOO_LARGE,
                            why: "body too large",
                            size1: Some(u32::try_from(max).unwrap_or(u32::MAX)),
                            parked: false,
                        })
                    }
                    Err(BlockError::BadSize) => {
                        return Err(bad("block payload does not match its size [RFC 7959 §2.2]"))
                    }
                }
            }
            None => {
                if m.payload.len() > self.config.max_body_size {
                    return Err(Reject {
                        code: Code::REQUEST_ENTITY_TOO_LARGE,
                        why: "body too large",
                        size1: Some(u32::try_from(self.config.max_body_size).unwrap_or(u32::MAX)),
                        parked: false,
                    });
                }
                m.payload.clone()
            }
        };
        if topic.is_empty() {
            return Err(bad("no topic: POST /ps/{topic}"));
        }
        let full = format!("{}{}", id.mountpoint, topic);
        if self.broker.check_topic_name(&full).is_err() {
            return Err(bad("invalid topic name"));
        }
        let qos = q
            .qos
            .unwrap_or_else(|| self.config.publish_qos.for_request(m.mtype));
        let mut message =
            tributary_core::Message::new(full, payload, qos, q.retain.unwrap_or(false));
        message.properties = content::to_properties(m.content_format());
        let message = message.with_expiry_interval(q.expiry, now);
        if self
            .intake
            .as_ref()
            .is_none_or(|p| p.client().client_id != id.client.client_id)
        {
            self.intake = Some(self.broker.publisher(id.client.clone()));
        }
        let Some(intake) = self.intake.as_mut() else {
            return Err(Reject::new(Code::INTERNAL_SERVER_ERROR, "no intake"));
        };
        let admission = self.broker.admit(intake, message, now);
        match admission.verdict {
            Verdict::Accepted | Verdict::NoSubscribers => {}
            Verdict::Denied => return Err(Reject::new(Code::FORBIDDEN, "publish not authorized")),
            Verdict::RateExceeded => {
                return Err(Reject::new(
                    Code::TOO_MANY_REQUESTS,
                    "message rate exceeded",
                ))
            }
        }
        // The response waits for what the store must keep.
        self.admitted = admission.ticket;
        let mut r = response(Code::CHANGED);
        if let Some(block) = block1_done {
            r.add_option(
                opt::BLOCK1,
                BlockValue {
                    more: false,
                    ..block
                }
                .encode(),
            );
        }
        Ok(Some(r))
    }

    /// Make sure the peer has a session for `id` (connectionless observers).
    fn ensure_session(&mut self, id: &Identity, now: Instant) {
        if self.session.is_some() {
            return;
        }
        let opened = self.broker.open_session(
            SessionRequest {
                client: id.client.clone(),
                clean_start: true,
                expiry_interval: 0,
                will: None,
            },
            now,
        );
        self.session = Some(PeerSession {
            handle: opened.handle,
            client: id.client.clone(),
            mountpoint: id.mountpoint.clone(),
        });
    }

    fn subscribe(
        &mut self,
        m: &Message,
        topic: &str,
        path: String,
        q: &Query,
        now: Instant,
    ) -> Handled {
        if m.token.is_empty() {
            // As EMQX: an observation is identified by its token.
            return Err(bad("Observe needs a non-empty token"));
        }
        let id = self.identify(q)?;
        if topic.is_empty() {
            return Err(bad("no topic filter: GET /ps/{filter}"));
        }
        let full = format!("{}{}", id.mountpoint, topic);
        let plain: Arc<str> = match self.broker.check_filter(&full) {
            Ok(p) => p.filter.into(),
            Err(_) => return Err(bad("invalid topic filter")),
        };
        if !self.broker.authorize(&id.client, Action::Subscribe, &plain) {
            return Err(Reject::new(Code::FORBIDDEN, "subscribe not authorized"));
        }
        let qos = q
            .qos
            .unwrap_or_else(|| self.config.subscribe_qos.for_request(m.mtype));
        let key = ObsKey {
            filter: full.as_str().into(),
            plain,
            path,
        };
        // A re-registration on another resource leaves the old one.
        let previous = self
            .observers
            .iter()
            .find(|(t, _)| *t == m.token)
            .map(|(_, k)| k.clone());
        if let Some(old) = previous.filter(|old| *old != key) {
            self.observers.deregister(m.token, &mut self.layer);
            self.release(&old, now);
        }
        self.ensure_session(&id, now);
        let watched = self.observers.watches(&key);
        let seq = match self.observers.register(m.token, key.clone()) {
            Ok(seq) => seq,
            Err(RegisterError::TooMany) => {
                self.release(&key, now);
                return Err(Reject::new(
                    Code::SERVICE_UNAVAILABLE,
                    "too many observations",
                ));
            }
        };
        if !watched {
            let subscribed = match &self.session {
                Some(s) => self
                    .broker
                    .subscribe(&s.handle, &full, SubOptions::at(qos), now)
                    .is_ok(),
                None => false,
            };
            if !subscribed {
                self.observers.deregister(m.token, &mut self.layer);
                self.release(&key, now);
                return Err(bad("invalid topic filter"));
            }
        }
        debug!(peer = %self.peer, client_id = %id.client.client_id, filter = %full, ?qos, "observing");
        let mut r = response(Code::CONTENT);
        r.add_uint_option(opt::OBSERVE, seq);
        Ok(Some(r))
    }

    fn unsubscribe(&mut self, m: &Message, topic: &str, q: &Query, now: Instant) -> Handled {
        let id = self.identify(q)?;
        if let Some(key) = self.observers.deregister(m.token, &mut self.layer) {
            debug!(peer = %self.peer, filter = %key.filter, "observation cancelled");
            self.release(&key, now);
        } else {
            // EMQX cancels by topic: any observer of this filter goes.
            let full: Arc<str> = format!("{}{}", id.mountpoint, topic).into();
            let keys: Vec<ObsKey> = self
                .observers
                .iter()
                .filter(|(_, k)| k.filter == full)
                .map(|(_, k)| k.clone())
                .collect();
            if let Some(key) = keys.first() {
                debug!(peer = %self.peer, filter = %key.filter, "observation cancelled");
                self.observers.deregister_key(key, &mut self.layer);
                self.release(key, now);
            }
        }
        Ok(Some(response(Code::CONTENT)))
    }

    /// Plain GET: a later block of a representation being transferred,
    /// or the retained message on the topic.
    fn read(&mut self, m: &Message, topic: &str, path: &str, q: &Query, now: Instant) -> Handled {
        let block2 = match m.option(opt::BLOCK2) {
            Some(raw) => Some(BlockValue::decode(raw).ok_or(bad("malformed Block2 option"))?),
            None => None,
        };
        let szx = block2.map_or(self.config.block_szx, |b| b.szx.min(self.config.block_szx));
        let num = block2.map_or(0, |b| b.num);
        if num > 0 {
            if let Some(rep) = self.block2.get(&path.to_string(), now).cloned() {
                return self.serve(rep, num, szx, path, now).map(Some);
            }
        }
        let id = self.identify(q)?;
        if topic.is_empty() || has_wildcard(topic) {
            return Err(bad("GET without Observe reads one topic name"));
        }
        let full = format!("{}{}", id.mountpoint, topic);
        if self.broker.check_topic_name(&full).is_err() {
            return Err(bad("invalid topic name"));
        }
        if !self.broker.authorize(&id.client, Action::Subscribe, &full) {
            return Err(Reject::new(Code::FORBIDDEN, "read not authorized"));
        }
        let Some(retained) = self.broker.retained(&full, now) else {
            return Err(Reject::new(Code::NOT_FOUND, "no retained message"));
        };
        let rep = Representation {
            body: retained.payload.clone(),
            content_format: content::from_properties(&retained.properties),
            etag: Vec::new(),
            max_age: retained.remaining_expiry(now),
        };
        self.serve(rep, num, szx, path, now).map(Some)
    }

    fn next_etag(&mut self) -> Vec<u8> {
        self.etag = self.etag.wrapping_add(1);
        let salt = (self.layer.random_u64() & 0xFFFF_FFFF) as u32;
        (self.etag ^ salt).to_be_bytes().to_vec()
    }

    /// Block `num` of `rep` as a 2.05 response; a body larger than one
    /// block is kept (under `path`) for the following requests.
    fn serve(
        &mut self,
        mut rep: Representation,
        num: u32,
        szx: u8,
        path: &str,
        now: Instant,
    ) -> Result<Message, Reject> {
        let (chunk, block) = slice(&rep.body, num, szx).ok_or(Reject::new(
            Code::BAD_OPTION,
            "block number past the end [RFC 7959 §2.2]",
        ))?;
        let mut r = response(Code::CONTENT);
        let blockwise = num > 0 || block.more;
        if blockwise && rep.etag.is_empty() {
            rep.etag = self.next_etag();
        }
        fill_representation(&mut r, &rep, chunk, blockwise.then_some(block), num == 0);
        if block.more {
            self.block2.insert(path.to_string(), rep, now);
        } else if num > 0 {
            self.block2.remove(&path.to_string());
        }
        Ok(r)
    }

    /// The notification of `delivery` for an observer of `path` (block 0
    /// only when it is larger than one block, RFC 7959 §3.4).
    pub(crate) fn notification(
        &mut self,
        delivery: &Delivery,
        path: &str,
        now: Instant,
    ) -> Message {
        let mtype = match self.config.notify_type {
            crate::channel::NotifyType::Con => MessageType::Con,
            crate::channel::NotifyType::Non => MessageType::Non,
            crate::channel::NotifyType::Qos if delivery.qos == tributary_core::QoS::AtMostOnce => {
                MessageType::Non
            }
            crate::channel::NotifyType::Qos => MessageType::Con,
        };
        let msg = &delivery.message;
        let mut rep = Representation {
            body: msg.payload.clone(),
            content_format: content::from_properties(&msg.properties),
            etag: Vec::new(),
            max_age: msg.remaining_expiry(now),
        };
        let mut n = Message::new(mtype, Code::CONTENT, 0, crate::msg::Token::EMPTY);
        let szx = self.config.block_szx;
        match slice(&rep.body, 0, szx) {
            Some((chunk, block)) if block.more => {
                rep.etag = self.next_etag();
                fill_representation(&mut n, &rep, chunk, Some(block), true);
                self.block2.insert(path.to_string(), rep, now);
            }
            _ => {
                let body = rep.body.clone();
                fill_representation(&mut n, &rep, body, None, false);
            }
        }
        n
    }

    fn connection(&mut self, m: &Message, now: Instant) -> Handled {
        let q = Query::parse(m.option_values(opt::URI_QUERY)).map_err(|e| bad(e.0))?;
        let unauthorized = |why| Reject::new(Code::UNAUTHORIZED, why);
        match m.code {
            Code::POST => {
                let Some(client_id) = q.clientid.clone().filter(|c| !c.is_empty()) else {
                    return Err(bad("clientid is required"));
                };
                let client = ClientInfo {
                    client_id: client_id.as_str().into(),
                    username: q.username.clone(),
                    peer: Some(self.peer),
                    protocol: "coap",
                };
                self.authenticate(&client, &q)?;
                // A new connection replaces whatever the peer had.
                self.forget_session(
                    Some(CloseKind::Normal {
                        publish_will: false,
                    }),
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
                let token = format!("{:016x}", self.layer.random_u64());
                let mountpoint = expand_mountpoint(&self.config.mountpoint, &client);
                self.session = Some(PeerSession {
                    handle: opened.handle,
                    client,
                    mountpoint,
                });
                self.conn = Some(Connection {
                    token: token.clone(),
                });
                self.proved = true;
                info!(peer = %self.peer, client_id = %client_id, "CoAP connection created");
                let mut r = response(Code::CREATED);
                r.add_uint_option(opt::CONTENT_FORMAT, 0);
                r.payload = Bytes::from(token.into_bytes());
                Ok(Some(r))
            }
            Code::PUT | Code::DELETE => {
                let valid = match (&self.conn, &self.session) {
                    (Some(c), Some(s)) => {
                        q.clientid.as_deref() == Some(&*s.client.client_id)
                            && q.token.as_deref() == Some(c.token.as_str())
                    }
                    _ => false,
                };
                if !valid {
                    return Err(unauthorized("no such connection, or bad token"));
                }
                if m.code == Code::PUT {
                    // The heartbeat: the datagram proves the connection.
                    self.proved = true;
                    return Ok(Some(response(Code::CHANGED)));
                }
                info!(peer = %self.peer, client_id = ?self.client_id(), "CoAP connection closed");
                self.forget_session(
                    Some(CloseKind::Normal {
                        publish_will: false,
                    }),
                    now,
                );
                Ok(Some(response(Code::DELETED)))
            }
            _ => Err(Reject::new(
                Code::METHOD_NOT_ALLOWED,
                "POST creates, PUT refreshes, DELETE closes",
            )),
        }
    }
}

/// Content-Format, Max-Age, and for a block: Block2, ETag and (first
/// block) Size2.
fn fill_representation(
    r: &mut Message,
    rep: &Representation,
    chunk: Bytes,
    block: Option<BlockValue>,
    first: bool,
) {
    if let Some(cf) = rep.content_format {
        r.add_uint_option(opt::CONTENT_FORMAT, u32::from(cf));
    }
    if let Some(age) = rep.max_age {
        r.add_uint_option(opt::MAX_AGE, age);
    }
    if let Some(b) = block {
        r.add_option(opt::ETAG, rep.etag.clone());
        r.add_option(opt::BLOCK2, b.encode());
        if first {
            r.add_uint_option(
                opt::SIZE2,
                u32::try_from(rep.body.len()).unwrap_or(u32::MAX),
            );
        }
    }
    r.payload = chunk;
}
