//! The broker: the synchronous port every protocol channel calls into.
//!
//! It owns the session registry, the subscription trie and the retained
//! store. There is no router task: the publisher's own task calls
//! [`Broker::publish`], which updates the retained store, matches the trie
//! under a read lock and pushes a [`Delivery`] into each subscriber
//! session's bounded mailbox, waking its connection.
//!
//! Lock order (never reversed, never held across `.await`):
//! `sessions` → `subscriptions` → `retained` → a session's state.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use rand::Rng;

use crate::auth::{Action, AllowAll, Authenticator, Authorizer, Permission, RuleAuthorizer};
use crate::cluster::{ClusterBackend, SingleNode};
use crate::message::{ClientId, Delivery, Message, QoS};
use crate::metrics::Metrics;
use crate::session::{
    resend_list, ClientInfo, ConnectionSignal, KickReason, Overflow, Pending, QueueLimits, Queued,
    Resend, Session, SessionHandle, SubOptions, Will,
};
use crate::storage::{later, CommitTicket, MemoryPersistence, Persistence, Restored, StoreOp};
use crate::topic::{parse_filter, TopicError};
use crate::trie::Trie;

/// How a shared-subscription group picks the member for a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedStrategy {
    /// Members in turn.
    RoundRobin,
    /// A random member.
    Random,
    /// The same member while it stays online.
    Sticky,
    /// By hash of the publisher's client id.
    HashClientId,
    /// By hash of the topic.
    HashTopic,
}

/// Core settings (filled from the gateway's configuration).
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Maximum topic levels in names and filters.
    pub max_topic_levels: usize,
    /// Per-session mailbox limits.
    pub queue: QueueLimits,
    /// Shared-subscription dispatch.
    pub shared_strategy: SharedStrategy,
    /// Whether retained messages are stored.
    pub retain_available: bool,
    /// Maximum retained messages (0 = unlimited).
    pub max_retained: usize,
    /// Maximum retained payload in bytes (0 = unlimited).
    pub max_retained_payload: usize,
    /// Upper bound for session expiry intervals, seconds.
    pub max_session_expiry: u32,
    /// Deliver at the subscription's QoS even when the message's is lower.
    pub upgrade_qos: bool,
    /// Node name for `$SYS/brokers/{node}/clients/{id}/connected|disconnected`
    /// events; `None` publishes no events.
    pub sys_node: Option<Arc<str>>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            max_topic_levels: 128,
            queue: QueueLimits {
                max_len: 1000,
                store_qos0: true,
                overflow: Overflow::DropOldest,
            },
            shared_strategy: SharedStrategy::RoundRobin,
            retain_available: true,
            max_retained: 0,
            max_retained_payload: 0,
            max_session_expiry: u32::MAX,
            upgrade_qos: false,
            sys_node: None,
        }
    }
}

#[derive(Debug, Default)]
struct SharedGroup {
    members: Vec<(ClientId, Arc<Session>, SubOptions)>,
    cursor: AtomicUsize,
}

#[derive(Debug)]
struct FilterEntry {
    filter: Arc<str>,
    direct: HashMap<ClientId, (Arc<Session>, SubOptions)>,
    shared: HashMap<Arc<str>, SharedGroup>,
}

impl FilterEntry {
    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.shared.is_empty()
    }
}

/// What opening a session produced.
#[derive(Debug)]
pub struct OpenedSession {
    /// The connection's handle on its session.
    pub handle: SessionHandle,
    /// True when an existing session was resumed.
    pub session_present: bool,
    /// Inflight messages to resend, in order.
    pub resend: Vec<Resend>,
}

/// A request to open (or resume) a session.
#[derive(Debug, Clone)]
pub struct SessionRequest {
    /// Who connects.
    pub client: ClientInfo,
    /// Discard any existing session first.
    pub clean_start: bool,
    /// Seconds the session outlives its connection (`u32::MAX` = forever).
    pub expiry_interval: u32,
    /// The will, if any.
    pub will: Option<Will>,
}

/// How a connection ended, as far as the session is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseKind {
    /// The client disconnected properly; `publish_will` is MQTT 5's
    /// "disconnect with will message" (0x04).
    Normal {
        /// Publish the will anyway.
        publish_will: bool,
    },
    /// The connection was lost or closed on error: the will applies.
    Abnormal,
}

/// Result of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeOutcome {
    /// The subscription replaced an existing one with the same filter.
    pub existed: bool,
    /// Retained messages queued for the subscriber.
    pub retained_sent: usize,
}

/// The broker.
#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
    sessions: Mutex<HashMap<ClientId, Arc<Session>>>,
    subscriptions: RwLock<Trie<FilterEntry>>,
    retained: RwLock<Trie<Arc<Message>>>,
    metrics: Metrics,
    authenticator: Box<dyn Authenticator>,
    authorizer: Box<dyn Authorizer>,
    persistence: Arc<dyn Persistence>,
    cluster: Box<dyn ClusterBackend>,
}

impl Broker {
    /// A broker allowing everything, in memory, single node.
    pub fn new(config: BrokerConfig) -> Broker {
        Broker::with_seams(
            config,
            Box::new(AllowAll),
            Box::new(RuleAuthorizer::allow_all()),
            Box::new(MemoryPersistence),
            Box::new(SingleNode),
        )
    }

    /// A broker with the given seams. What a durable `persistence` held is
    /// put back with [`Broker::restore`].
    pub fn with_seams(
        config: BrokerConfig,
        authenticator: Box<dyn Authenticator>,
        authorizer: Box<dyn Authorizer>,
        persistence: Box<dyn Persistence>,
        cluster: Box<dyn ClusterBackend>,
    ) -> Broker {
        Broker {
            config,
            sessions: Mutex::new(HashMap::new()),
            subscriptions: RwLock::new(Trie::new()),
            retained: RwLock::new(Trie::new()),
            metrics: Metrics::default(),
            authenticator,
            authorizer,
            persistence: Arc::from(persistence),
            cluster,
        }
    }

    /// The persistence seam in force.
    pub fn persistence(&self) -> &Arc<dyn Persistence> {
        &self.persistence
    }

    /// The store for a session with this expiry interval: persistent
    /// sessions (expiry above zero) go to disk when a store is configured.
    fn store_for(&self, expiry: u32) -> Option<Arc<dyn Persistence>> {
        (expiry > 0 && self.persistence.enabled()).then(|| self.persistence.clone())
    }

    /// The configuration in force.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Counters and gauges.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The authentication chain.
    pub fn authenticator(&self) -> &dyn Authenticator {
        self.authenticator.as_ref()
    }

    /// Check whether `client` may perform `action` on `topic`; denials are counted.
    pub fn authorize(&self, client: &ClientInfo, action: Action, topic: &str) -> bool {
        let allowed = self.authorizer.authorize(client, action, topic) == Permission::Allow;
        if !allowed {
            match action {
                Action::Publish => self.metrics.inc(&self.metrics.publish_denied),
                Action::Subscribe => self.metrics.inc(&self.metrics.subscribe_denied),
            }
        }
        allowed
    }

    /// Open a session for a new connection, taking over any connection that
    /// holds the same client id.
    pub fn open_session(&self, req: SessionRequest, now: Instant) -> OpenedSession {
        let signal = ConnectionSignal::new();
        let expiry = req.expiry_interval.min(self.config.max_session_expiry);
        let client_id = req.client.client_id.clone();
        let mut wills = Vec::new();
        let mut orphaned = Vec::new();
        let opened = {
            let mut sessions = self.sessions.lock();
            let existing = sessions.get(&client_id).cloned();
            let mut resumed = None;
            if let Some(old) = existing {
                let mut st = old.state.lock();
                if let Some(owner) = st.owner.take() {
                    owner.kick(KickReason::Takeover);
                    // The old connection ends now: its will applies. It is
                    // published at once unless the session continues and
                    // the will has a delay [MQTT-3.1.3-9].
                    if let Some(will) = st.will.take() {
                        if will.delay_interval == 0 || req.clean_start {
                            wills.push(will);
                        }
                    }
                } else if let Some(will) = st.will.take() {
                    // Offline with a delayed will pending: a new connection
                    // in time cancels it, unless the session ends now or
                    // the will (or the session's end) is already due.
                    let due = st.will_due.is_some_and(|d| d <= now)
                        || st.expires_at.is_some_and(|at| at <= now);
                    if req.clean_start || due {
                        wills.push(will);
                    }
                }
                st.will_due = None;
                old.set_online(false);
                let expired = st.expires_at.is_some_and(|at| at <= now);
                if req.clean_start || expired {
                    if st.store.is_some() {
                        st.emit(StoreOp::SessionDelete(client_id.clone()));
                        st.store = None;
                    }
                    drop(st);
                    sessions.remove(&client_id);
                    self.metrics.dec(&self.metrics.sessions);
                    orphaned = old.take_shared_unacked();
                    self.drop_subscriptions(&old);
                } else {
                    st.owner = Some(signal.clone());
                    st.expiry_interval = expiry;
                    st.will = req.will.clone().map(Box::new);
                    st.expires_at = None;
                    st.info = req.client.clone();
                    match self.store_for(expiry) {
                        Some(store) => {
                            st.store = Some(store);
                            old.save(&mut st, now);
                        }
                        None => {
                            if st.store.is_some() {
                                st.emit(StoreOp::SessionDelete(client_id.clone()));
                            }
                            st.store = None;
                        }
                    }
                    let resend = resend_list(&mut st, now);
                    drop(st);
                    old.set_online(true);
                    resumed = Some(OpenedSession {
                        handle: SessionHandle {
                            session: old.clone(),
                            signal: signal.clone(),
                        },
                        session_present: true,
                        resend,
                    });
                }
            }
            match resumed {
                Some(opened) => opened,
                None => {
                    let session = Arc::new(Session::new(
                        req.client.clone(),
                        signal.clone(),
                        expiry,
                        req.will.clone(),
                    ));
                    if let Some(store) = self.store_for(expiry) {
                        let mut st = session.state.lock();
                        st.store = Some(store);
                        session.save(&mut st, now);
                    }
                    sessions.insert(client_id, session.clone());
                    self.metrics.inc(&self.metrics.sessions);
                    OpenedSession {
                        handle: SessionHandle { session, signal },
                        session_present: false,
                        resend: Vec::new(),
                    }
                }
            }
        };
        let _ = self.redispatch(orphaned, None, now);
        for will in wills {
            self.publish_will(will, now);
        }
        self.client_event(&req.client, "connected", now);
        opened
    }

    /// Publish a `$SYS` client event (EMQX style) as a JSON payload.
    fn client_event(&self, client: &ClientInfo, event: &str, now: Instant) {
        let Some(node) = &self.config.sys_node else {
            return;
        };
        let topic = format!("$SYS/brokers/{node}/clients/{}/{event}", client.client_id);
        let payload = format!(
            "{{\"clientid\":{},\"username\":{},\"ipaddress\":{},\"proto_name\":\"{}\"}}",
            json_string(&client.client_id),
            client
                .username
                .as_deref()
                .map_or_else(|| "null".to_string(), json_string),
            client
                .peer
                .map_or_else(|| "null".to_string(), |p| json_string(&p.ip().to_string())),
            client.protocol,
        );
        self.publish(
            Message::new(topic, payload.into_bytes().into(), QoS::AtMostOnce, false),
            now,
        );
    }

    fn drop_subscriptions(&self, session: &Arc<Session>) {
        let filters: Vec<Arc<str>> = {
            let mut st = session.state.lock();
            st.subscriptions.drain().map(|(k, _)| k).collect()
        };
        if filters.is_empty() {
            return;
        }
        let mut trie = self.subscriptions.write();
        for raw in filters {
            if remove_from_trie(&mut trie, &raw, &session.client_id) {
                self.metrics.dec(&self.metrics.subscriptions);
            }
        }
    }

    /// The connection owning `handle` ended. Applies the will, session
    /// expiry, and hands unacknowledged shared-subscription messages to
    /// other group members.
    pub fn close_session(&self, handle: &SessionHandle, kind: CloseKind, now: Instant) {
        let session = &handle.session;
        let (will, expiry, client) = {
            let mut st = session.state.lock();
            if !st
                .owner
                .as_ref()
                .is_some_and(|o| Arc::ptr_eq(o, &handle.signal))
            {
                return;
            }
            st.owner = None;
            session.set_online(false);
            if st.expiry_interval == 0 && st.store.is_some() {
                st.emit(StoreOp::SessionDelete(session.client_id.clone()));
                st.store = None;
            }
            let will = match kind {
                CloseKind::Normal {
                    publish_will: false,
                } => {
                    st.will = None;
                    None
                }
                _ => st.will.take(),
            };
            (will, st.expiry_interval, st.info.clone())
        };
        // Publishers paused on this mailbox: it now follows the offline policy.
        session.notify_room();
        self.client_event(&client, "disconnected", now);
        if expiry == 0 {
            {
                let mut sessions = self.sessions.lock();
                if sessions
                    .get(&session.client_id)
                    .is_some_and(|s| Arc::ptr_eq(s, session))
                {
                    sessions.remove(&session.client_id);
                    self.metrics.dec(&self.metrics.sessions);
                }
            }
            let shared = session.take_shared_unacked();
            self.drop_subscriptions(session);
            let _ = self.redispatch(shared, None, now);
            if let Some(will) = will {
                self.publish_will(will, now);
            }
            return;
        }
        let shared = session.take_shared_unacked();
        let kept = self.redispatch(shared, Some(session), now);
        session.requeue_front(kept);
        let mut publish_now = None;
        {
            let mut st = session.state.lock();
            if expiry != u32::MAX {
                st.expires_at = Some(now + Duration::from_secs(u64::from(expiry)));
            }
            if let Some(will) = will {
                if will.delay_interval == 0 {
                    publish_now = Some(will);
                } else {
                    let delay = will.delay_interval.min(expiry);
                    st.will_due = Some(now + Duration::from_secs(u64::from(delay)));
                    st.will = Some(will);
                }
            }
            session.save(&mut st, now);
        }
        if let Some(will) = publish_now {
            self.publish_will(will, now);
        }
    }

    fn publish_will(&self, will: Box<Will>, now: Instant) {
        self.metrics.inc(&self.metrics.wills_published);
        // The will's expiry interval counts from its publication.
        let message = will
            .message
            .with_expiry_interval(will.message_expiry_interval, now);
        self.publish(message, now);
    }

    /// Fire delayed wills and end expired offline sessions. Returns the
    /// next instant something is due, if any.
    pub fn tick(&self, now: Instant) -> Option<Instant> {
        if self.persistence.enabled() {
            let s = self.persistence.stats();
            let m = &self.metrics;
            m.store_disk_bytes.store(s.disk_bytes, Ordering::Relaxed);
            m.store_commits.store(s.commits, Ordering::Relaxed);
            m.store_commit_failures.store(s.failures, Ordering::Relaxed);
            m.store_ops.store(s.ops, Ordering::Relaxed);
        }
        let mut wills = Vec::new();
        let mut ended = Vec::new();
        let mut next: Option<Instant> = None;
        {
            let mut sessions = self.sessions.lock();
            sessions.retain(|_, session| {
                if session.is_online() {
                    return true;
                }
                let mut st = session.state.lock();
                if st.owner.is_some() {
                    return true;
                }
                if let Some(due) = st.will_due {
                    if due <= now {
                        st.will_due = None;
                        if let Some(w) = st.will.take() {
                            wills.push(w);
                        }
                        session.save(&mut st, now);
                    } else {
                        next = Some(next.map_or(due, |n| n.min(due)));
                    }
                }
                if let Some(at) = st.expires_at {
                    if at <= now {
                        if let Some(w) = st.will.take() {
                            wills.push(w);
                        }
                        if st.store.is_some() {
                            st.emit(StoreOp::SessionDelete(session.client_id.clone()));
                            st.store = None;
                        }
                        drop(st);
                        ended.push(session.clone());
                        return false;
                    }
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
                true
            });
        }
        for session in ended {
            self.metrics.dec(&self.metrics.sessions);
            self.drop_subscriptions(&session);
        }
        for will in wills {
            self.publish_will(will, now);
        }
        next
    }

    /// Kick the connection of `client_id` (administrative). Returns false
    /// when no such client is online.
    pub fn kick(&self, client_id: &str, reason: KickReason) -> bool {
        let sessions = self.sessions.lock();
        let Some(session) = sessions.get(client_id) else {
            return false;
        };
        let st = session.state.lock();
        match &st.owner {
            Some(owner) => {
                owner.kick(reason);
                true
            }
            None => false,
        }
    }

    /// Kick every online connection (shutdown).
    pub fn kick_all(&self, reason: KickReason) {
        let sessions = self.sessions.lock();
        for session in sessions.values() {
            if let Some(owner) = &session.state.lock().owner {
                owner.kick(reason);
            }
        }
    }

    /// Check a topic name against the rules and `max_topic_levels`; a name
    /// with too many levels is counted (`topic_levels_exceeded`).
    pub fn check_topic_name(&self, topic: &str) -> Result<(), crate::topic::TopicError> {
        crate::topic::validate_topic_name(topic, self.config.max_topic_levels)
            .inspect_err(|e| self.count_topic_error(e))
    }

    /// Parse a topic filter (`$share/…` too) against the rules and
    /// `max_topic_levels`, counting one with too many levels.
    pub fn check_filter<'a>(
        &self,
        raw: &'a str,
    ) -> Result<crate::topic::ParsedFilter<'a>, crate::topic::TopicError> {
        crate::topic::parse_filter(raw, self.config.max_topic_levels)
            .inspect_err(|e| self.count_topic_error(e))
    }

    fn count_topic_error(&self, e: &crate::topic::TopicError) {
        if matches!(e, crate::topic::TopicError::TooManyLevels(_)) {
            self.metrics.inc(&self.metrics.topic_levels_exceeded);
        }
    }

    /// Messages waiting in session queues and awaiting acknowledgement,
    /// summed per protocol of the sessions' clients: (protocol, queued,
    /// inflight). Walks every session: for scrapes, not the hot path.
    pub fn queue_depths(&self) -> Vec<(&'static str, usize, usize)> {
        let sessions = self.sessions.lock();
        let mut by: std::collections::BTreeMap<&'static str, (usize, usize)> =
            std::collections::BTreeMap::new();
        for s in sessions.values() {
            let protocol = s.state.lock().info.protocol;
            let e = by.entry(protocol).or_default();
            e.0 += s.queue_len();
            e.1 += s.inflight_len();
        }
        by.into_iter().map(|(p, (q, i))| (p, q, i)).collect()
    }

    /// Every session as (client, online, subscription count).
    pub fn clients(&self) -> Vec<(ClientInfo, bool, usize)> {
        let sessions = self.sessions.lock();
        sessions
            .values()
            .map(|s| {
                let st = s.state.lock();
                (st.info.clone(), st.owner.is_some(), st.subscriptions.len())
            })
            .collect()
    }

    /// Route a message: retained update, trie match, push into mailboxes.
    /// Returns how many sessions it was queued for.
    pub fn publish(&self, message: Message, now: Instant) -> usize {
        self.publish_flow(message, now, None, &mut None)
    }

    /// [`Broker::publish`], also collecting the online sessions whose
    /// mailboxes went over their bound with this QoS 1/2 message: the
    /// publishing connection should stop reading until each has room
    /// ([`crate::session::Session::room`]) rather than have acknowledged
    /// messages dropped (ADR 0009).
    pub fn publish_with_backpressure(
        &self,
        message: Message,
        now: Instant,
        congested: &mut Vec<Arc<Session>>,
    ) -> usize {
        self.publish_flow(message, now, Some(congested), &mut None)
    }

    /// [`Broker::publish_with_backpressure`], also returning in `ticket`
    /// the commit ticket covering every store write the message caused
    /// (queued for persistent sessions, retained): its publisher must not
    /// be acknowledged before the ticket resolves.
    pub fn publish_durable(
        &self,
        message: Message,
        now: Instant,
        congested: &mut Vec<Arc<Session>>,
        ticket: &mut Option<CommitTicket>,
    ) -> usize {
        self.publish_flow(message, now, Some(congested), ticket)
    }

    fn publish_flow(
        &self,
        message: Message,
        now: Instant,
        congested: Option<&mut Vec<Arc<Session>>>,
        ticket: &mut Option<CommitTicket>,
    ) -> usize {
        self.metrics.inc(&self.metrics.messages_received);
        let message = Arc::new(message);
        if message.retain && self.config.retain_available {
            *ticket = later(*ticket, self.store_retained(&message));
        }
        self.cluster.forward(&message);
        let count = self.route(&message, now, congested, ticket);
        if count == 0 {
            self.metrics.inc(&self.metrics.messages_no_subscribers);
        }
        count
    }

    fn store_retained(&self, message: &Arc<Message>) -> Option<CommitTicket> {
        let mut retained = self.retained.write();
        let mut ticket = None;
        if message.payload.is_empty() {
            if retained.remove(&message.topic).is_some() && self.persistence.enabled() {
                ticket = self
                    .persistence
                    .submit(StoreOp::RetainedDelete(message.topic.clone()));
            }
        } else {
            let payload_ok = self.config.max_retained_payload == 0
                || message.payload.len() <= self.config.max_retained_payload;
            let room = self.config.max_retained == 0
                || retained.len() < self.config.max_retained
                || retained.get(&message.topic).is_some();
            if payload_ok && room {
                retained.insert(&message.topic, message.clone());
                if self.persistence.enabled() {
                    ticket = self
                        .persistence
                        .submit(StoreOp::RetainedPut(message.clone()));
                }
            } else {
                self.metrics.inc(&self.metrics.retained_refused);
            }
        }
        self.metrics
            .retained
            .store(retained.len() as u64, Ordering::Relaxed);
        ticket
    }

    fn route(
        &self,
        message: &Arc<Message>,
        _now: Instant,
        mut congested: Option<&mut Vec<Arc<Session>>>,
        ticket: &mut Option<CommitTicket>,
    ) -> usize {
        let trie = self.subscriptions.read();
        let mut direct: Vec<(&Arc<Session>, &SubOptions)> = Vec::new();
        let mut shared: Vec<SharedPick<'_>> = Vec::new();
        let publisher = message.publisher.as_deref();
        // Filters that contributed direct subscribers: a session can appear
        // twice only when more than one did.
        let mut direct_filters = 0usize;
        trie.for_each_filter_matching(&message.topic, &mut |entry: &FilterEntry| {
            direct_filters += usize::from(!entry.direct.is_empty());
            direct.reserve(entry.direct.len());
            for (client_id, (session, opts)) in &entry.direct {
                if opts.no_local && publisher == Some(&**client_id) {
                    continue;
                }
                direct.push((session, opts));
            }
            for (group_name, group) in &entry.shared {
                if let Some((session, opts)) = self.pick_member(group, message) {
                    shared.push((session, *opts, group_name.clone(), entry.filter.clone()));
                }
            }
        });
        let mut count = 0;
        // One copy per session for overlapping subscriptions, at the highest
        // granted QoS, carrying every subscription identifier.
        if direct_filters > 1 && direct.len() > 1 {
            direct.sort_by_key(|(s, _)| Arc::as_ptr(s) as usize);
        }
        let mut i = 0;
        while i < direct.len() {
            let (session, first) = direct[i];
            let mut qos = first.qos;
            let mut rap = first.retain_as_published;
            let mut ids: Vec<u32> = first.subscription_id.into_iter().collect();
            let mut j = i + 1;
            while j < direct.len() && Arc::ptr_eq(direct[j].0, session) {
                let o = direct[j].1;
                qos = qos.max(o.qos);
                rap |= o.retain_as_published;
                ids.extend(o.subscription_id);
                j += 1;
            }
            ids.sort_unstable();
            let delivery = Delivery {
                message: message.clone(),
                qos: self.effective_qos(qos, message.qos),
                retain: rap && message.retain,
                subscription_ids: ids,
                shared: None,
            };
            count += self.deliver_to(session, delivery, congested.as_deref_mut(), ticket);
            i = j;
        }
        for (session, opts, group, filter) in shared {
            let delivery = Delivery {
                message: message.clone(),
                qos: self.effective_qos(opts.qos, message.qos),
                retain: opts.retain_as_published && message.retain,
                subscription_ids: opts.subscription_id.into_iter().collect(),
                shared: Some((group, filter)),
            };
            count += self.deliver_to(session, delivery, congested.as_deref_mut(), ticket);
        }
        count
    }

    /// Queue one delivery; 1 if it was queued. Sessions that want the
    /// publisher to pause are added to `congested` (once each).
    fn deliver_to(
        &self,
        session: &Arc<Session>,
        delivery: Delivery,
        congested: Option<&mut Vec<Arc<Session>>>,
        ticket: &mut Option<CommitTicket>,
    ) -> usize {
        let (queued, stored) = session.deliver_flow(delivery, &self.config.queue, &self.metrics);
        *ticket = later(*ticket, stored);
        match queued {
            Queued::Yes => 1,
            Queued::OverLimit => {
                if let Some(list) = congested {
                    if !list.iter().any(|s| Arc::ptr_eq(s, session)) {
                        list.push(session.clone());
                    }
                }
                1
            }
            Queued::Dropped => 0,
        }
    }

    fn effective_qos(&self, granted: QoS, published: QoS) -> QoS {
        if self.config.upgrade_qos {
            granted
        } else {
            granted.min(published)
        }
    }

    fn pick_member<'a>(
        &self,
        group: &'a SharedGroup,
        message: &Message,
    ) -> Option<(&'a Arc<Session>, &'a SubOptions)> {
        let n = group.members.len();
        if n == 0 {
            return None;
        }
        let start = match self.config.shared_strategy {
            SharedStrategy::RoundRobin => group.cursor.fetch_add(1, Ordering::Relaxed) % n,
            SharedStrategy::Random => rand::thread_rng().gen_range(0..n),
            SharedStrategy::Sticky => group.cursor.load(Ordering::Relaxed) % n,
            SharedStrategy::HashClientId => hash_of(message.publisher.as_deref().unwrap_or("")) % n,
            SharedStrategy::HashTopic => hash_of(&message.topic) % n,
        };
        // Prefer an online member, starting at the chosen one.
        for k in 0..n {
            let idx = (start + k) % n;
            let (_, session, opts) = &group.members[idx];
            if session.is_online() {
                if self.config.shared_strategy == SharedStrategy::Sticky {
                    group.cursor.store(idx, Ordering::Relaxed);
                }
                return Some((session, opts));
            }
        }
        let (_, session, opts) = &group.members[start];
        Some((session, opts))
    }

    /// Hand shared deliveries to an online member of their group; returns
    /// those no member could take. Stored ones handed on are deleted from
    /// `source`, the session they came from (if it still exists).
    fn redispatch(
        &self,
        deliveries: Vec<Pending>,
        source: Option<&Arc<Session>>,
        _now: Instant,
    ) -> Vec<Pending> {
        let mut kept = Vec::new();
        if deliveries.is_empty() {
            return kept;
        }
        let trie = self.subscriptions.read();
        for pending in deliveries {
            let Some((group_name, filter)) = pending.delivery.shared.clone() else {
                kept.push(pending);
                continue;
            };
            let target = trie
                .get(&filter)
                .and_then(|entry| entry.shared.get(&group_name))
                .and_then(|group| group.members.iter().find(|(_, s, _)| s.is_online()));
            if let Some((_, session, opts)) = target {
                let Pending { seq, delivery } = pending;
                let mut d = delivery;
                d.qos = self.effective_qos(opts.qos, d.message.qos);
                d.retain = opts.retain_as_published && d.message.retain;
                d.subscription_ids = opts.subscription_id.into_iter().collect();
                session.deliver(d, &self.config.queue, &self.metrics);
                if let Some(source) = source {
                    source.forget_stored(seq);
                }
            } else {
                kept.push(pending);
            }
        }
        kept
    }

    /// Subscribe `handle`'s session to `raw_filter` (plain or
    /// `$share/{group}/{filter}`). Retained messages are queued per the
    /// retain handling option (never for shared subscriptions).
    pub fn subscribe(
        &self,
        handle: &SessionHandle,
        raw_filter: &str,
        options: SubOptions,
        now: Instant,
    ) -> Result<SubscribeOutcome, TopicError> {
        let parsed = parse_filter(raw_filter, self.config.max_topic_levels)?;
        let session = &handle.session;
        let client_id = session.client_id.clone();
        let existed = {
            let mut trie = self.subscriptions.write();
            {
                // Checked and recorded under the session lock, so a takeover
                // either sees this subscription (and drops it) or refuses it.
                let mut st = session.state.lock();
                if !handle.owns(&st) {
                    return Ok(SubscribeOutcome {
                        existed: false,
                        retained_sent: 0,
                    });
                }
                st.subscriptions.insert(raw_filter.into(), options);
                session.save(&mut st, now);
            }
            insert_into_trie(
                &mut trie,
                parsed.filter,
                parsed.share_group,
                &client_id,
                session,
                options,
            )
        };
        if !existed {
            self.metrics.inc(&self.metrics.subscriptions);
        }
        let mut retained_sent = 0;
        let send_retained = parsed.share_group.is_none()
            && match options.retain_handling {
                0 => true,
                1 => !existed,
                _ => false,
            };
        if send_retained {
            let mut found = Vec::new();
            {
                let retained = self.retained.read();
                retained.for_each_topic_matched_by(parsed.filter, &mut |m: &Arc<Message>| {
                    found.push(m.clone())
                });
            }
            for message in found {
                if message.is_expired(now) {
                    continue;
                }
                let delivery = Delivery {
                    qos: self.effective_qos(options.qos, message.qos),
                    message,
                    retain: true,
                    subscription_ids: options.subscription_id.into_iter().collect(),
                    shared: None,
                };
                if session.deliver(delivery, &self.config.queue, &self.metrics) {
                    retained_sent += 1;
                }
            }
        }
        Ok(SubscribeOutcome {
            existed,
            retained_sent,
        })
    }

    /// Remove a subscription. Returns false when it did not exist.
    pub fn unsubscribe(&self, handle: &SessionHandle, raw_filter: &str) -> bool {
        let session = &handle.session;
        let mut trie = self.subscriptions.write();
        let had = {
            let mut st = session.state.lock();
            let had = handle.owns(&st) && st.subscriptions.remove(raw_filter).is_some();
            if had {
                // Online: the record holds no instants.
                session.save(&mut st, Instant::now());
            }
            had
        };
        if had && remove_from_trie(&mut trie, raw_filter, &session.client_id) {
            self.metrics.dec(&self.metrics.subscriptions);
        }
        had
    }

    /// Every subscription as (client id, raw filter, options).
    pub fn subscription_list(&self) -> Vec<(ClientId, Arc<str>, SubOptions)> {
        let sessions: Vec<Arc<Session>> = self.sessions.lock().values().cloned().collect();
        let mut out = Vec::new();
        for s in sessions {
            for (filter, opts) in s.subscriptions() {
                out.push((s.client_id.clone(), filter, opts));
            }
        }
        out
    }

    /// The retained message on `topic`, if any and not expired.
    pub fn retained(&self, topic: &str, now: Instant) -> Option<Arc<Message>> {
        self.retained
            .read()
            .get(topic)
            .filter(|m| !m.is_expired(now))
            .cloned()
    }

    /// Retained messages matching `filter`.
    pub fn retained_matching(&self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        let mut out = Vec::new();
        self.retained
            .read()
            .for_each_topic_matched_by(filter, &mut |m: &Arc<Message>| {
                if !m.is_expired(now) {
                    out.push(m.clone());
                }
            });
        out
    }

    /// Put back what a durable store held at start-up: offline persistent
    /// sessions (subscriptions active, queued and inflight messages, incoming
    /// QoS 2 ids, pending will) and retained messages. Expired sessions and
    /// messages are dropped (and deleted from the store), not delivered.
    /// Sessions that were online when the store was last written count as
    /// closed abnormally now: their expiry and will delay start here.
    /// Returns (sessions, messages, retained) restored.
    pub fn restore(&self, restored: Restored, now: Instant) -> (usize, usize, usize) {
        let wall = std::time::SystemTime::now();
        let mut counts = (0, 0, 0);
        for rs in restored.sessions {
            let rec = rs.record;
            let client_id = rec.client_id.clone();
            let expires_at = match rec.expires_at_ms {
                Some(ms) => Some(crate::storage::instant_of(ms, now, wall)),
                None if rec.expiry_interval == u32::MAX => None,
                None => Some(now + Duration::from_secs(u64::from(rec.expiry_interval))),
            };
            let Some(store) = self.store_for(rec.expiry_interval) else {
                continue;
            };
            if expires_at.is_some_and(|at| at <= now) {
                store.submit(StoreOp::SessionDelete(client_id));
                continue;
            }
            let info = ClientInfo {
                client_id: client_id.clone(),
                username: rec.username.clone(),
                peer: None,
                protocol: protocol_name(&rec.protocol),
            };
            let session = Arc::new(Session::restored(info, rec.expiry_interval, store));
            {
                let mut st = session.state.lock();
                st.expires_at = expires_at;
                if let Some(will) = rec.will.clone() {
                    let due = match rec.will_due_ms {
                        Some(ms) => crate::storage::instant_of(ms, now, wall),
                        None => {
                            let delay = will.delay_interval.min(rec.expiry_interval);
                            now + Duration::from_secs(u64::from(delay))
                        }
                    };
                    st.will = Some(Box::new(will));
                    st.will_due = Some(due);
                }
                for m in rs.messages {
                    if m.delivery.message.is_expired(now) {
                        self.metrics.inc(&self.metrics.messages_dropped_expired);
                        st.emit(StoreOp::MessageDelete {
                            client_id: client_id.clone(),
                            seq: m.seq,
                        });
                        continue;
                    }
                    counts.1 += 1;
                    st.restore_message(m.seq, m.delivery, m.inflight, now);
                }
                for id in rs.incoming_qos2 {
                    st.restore_incoming_qos2(id, now);
                }
                // The record now carries the instants set above.
                session.save(&mut st, now);
            }
            {
                let mut trie = self.subscriptions.write();
                let mut st = session.state.lock();
                for (raw, options) in rec.subscriptions {
                    let Ok(parsed) = parse_filter(&raw, self.config.max_topic_levels) else {
                        continue;
                    };
                    if !insert_into_trie(
                        &mut trie,
                        parsed.filter,
                        parsed.share_group,
                        &client_id,
                        &session,
                        options,
                    ) {
                        self.metrics.inc(&self.metrics.subscriptions);
                    }
                    st.subscriptions.insert(raw, options);
                }
            }
            if self.sessions.lock().insert(client_id, session).is_none() {
                self.metrics.inc(&self.metrics.sessions);
            }
            counts.0 += 1;
        }
        let mut retained = self.retained.write();
        for m in restored.retained {
            if m.is_expired(now) {
                self.persistence
                    .submit(StoreOp::RetainedDelete(m.topic.clone()));
                continue;
            }
            let topic = m.topic.clone();
            retained.insert(&topic, Arc::new(m));
            counts.2 += 1;
        }
        self.metrics
            .retained
            .store(retained.len() as u64, Ordering::Relaxed);
        counts
    }

    /// Number of sessions held.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }
}

/// Add (or update) `client_id`'s subscription to `filter` in the trie;
/// true when it replaced an existing one.
fn insert_into_trie(
    trie: &mut Trie<FilterEntry>,
    filter: &str,
    share_group: Option<&str>,
    client_id: &ClientId,
    session: &Arc<Session>,
    options: SubOptions,
) -> bool {
    let entry = trie.get_or_insert_with(filter, || FilterEntry {
        filter: filter.into(),
        direct: HashMap::new(),
        shared: HashMap::new(),
    });
    match share_group {
        None => entry
            .direct
            .insert(client_id.clone(), (session.clone(), options))
            .is_some(),
        Some(group) => {
            let group = entry.shared.entry(group.into()).or_default();
            match group.members.iter_mut().find(|(c, _, _)| c == client_id) {
                Some(member) => {
                    member.2 = options;
                    true
                }
                None => {
                    group
                        .members
                        .push((client_id.clone(), session.clone(), options));
                    false
                }
            }
        }
    }
}

fn remove_from_trie(trie: &mut Trie<FilterEntry>, raw: &str, client_id: &ClientId) -> bool {
    let Ok(parsed) = parse_filter(raw, usize::MAX) else {
        return false;
    };
    let mut removed = false;
    trie.update(parsed.filter, |slot| {
        if let Some(entry) = slot {
            match parsed.share_group {
                None => removed = entry.direct.remove(client_id).is_some(),
                Some(group) => {
                    if let Some(g) = entry.shared.get_mut(group) {
                        let before = g.members.len();
                        g.members.retain(|(c, _, _)| c != client_id);
                        removed = g.members.len() != before;
                        if g.members.is_empty() {
                            entry.shared.remove(group);
                        }
                    }
                }
            }
            if entry.is_empty() {
                *slot = None;
            }
        }
    });
    removed
}

/// A shared-subscription member chosen for a message: its session, its
/// options, the group name and the plain filter.
type SharedPick<'a> = (&'a Arc<Session>, SubOptions, Arc<str>, Arc<str>);

/// The static protocol name for a stored one.
fn protocol_name(stored: &str) -> &'static str {
    match stored {
        "mqtt-sn" => "mqtt-sn",
        "coap" => "coap",
        "stomp" => "stomp",
        "lwm2m" => "lwm2m",
        _ => "mqtt",
    }
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn hash_of(s: &str) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish() as usize
}
