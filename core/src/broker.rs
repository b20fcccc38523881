//! The broker: the synchronous port every protocol channel calls into.
//!
//! It owns the session registry, the subscription trie and the retained
//! store. This file holds the sessions' lifecycle (open, close, takeover,
//! wills, expiry, kicks); messages from clients come in through
//! [`Broker::admit`] (`intake.rs`), are routed by the publisher's own task
//! (`routing.rs`: retained update, a read-locked trie match, a push into
//! each subscriber session's bounded mailbox, waking its connection);
//! subscriptions are in `subscribe.rs`, start-up restore in `restore.rs`.
//!
//! Lock order (never reversed, never held across `.await`):
//! `sessions` → `subscriptions` → `retained` → a session's state.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::auth::{Action, AllowAll, Authenticator, Authorizer, Permission, RuleAuthorizer};
use crate::cluster::{ClusterBackend, SingleNode};
use crate::message::{ClientId, Message, QoS};
use crate::metrics::Metrics;
use crate::routing::FilterEntry;
use crate::session::{
    resend_list, ClientInfo, ConnectionSignal, KickReason, QueueLimits, Resend, Session,
    SessionHandle, SessionWill, Will,
};
use crate::storage::{MemoryPersistence, Persistence, StoreOp};
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
    /// Per-client message and byte rates, applied by the intake.
    pub rates: crate::intake::RateLimits,
    /// Node name for `$SYS/brokers/{node}/clients/{id}/connected|disconnected`
    /// events; `None` publishes no events.
    pub sys_node: Option<Arc<str>>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            max_topic_levels: 128,
            queue: QueueLimits::default(),
            shared_strategy: SharedStrategy::RoundRobin,
            retain_available: true,
            max_retained: 0,
            max_retained_payload: 0,
            max_session_expiry: u32::MAX,
            upgrade_qos: false,
            rates: crate::intake::RateLimits::default(),
            sys_node: None,
        }
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
    pub(crate) config: BrokerConfig,
    pub(crate) sessions: Mutex<HashMap<ClientId, Arc<Session>>>,
    pub(crate) subscriptions: RwLock<Trie<FilterEntry>>,
    pub(crate) retained: RwLock<Trie<Arc<Message>>>,
    pub(crate) metrics: Metrics,
    authenticator: Box<dyn Authenticator>,
    authorizer: Box<dyn Authorizer>,
    pub(crate) persistence: Arc<dyn Persistence>,
    pub(crate) cluster: Box<dyn ClusterBackend>,
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
    pub(crate) fn store_for(&self, expiry: u32) -> Option<Arc<dyn Persistence>> {
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
        let allowed = if action == Action::Publish && is_sys_topic(topic) {
            // `$SYS` is the broker's: a client publishes (or leaves a will)
            // there only where a rule says so by name.
            self.authorizer.explicitly_allows(client, action, topic)
        } else {
            self.authorizer.authorize(client, action, topic) == Permission::Allow
        };
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
                    let due = will.due.is_some_and(|d| d <= now)
                        || st.expires_at.is_some_and(|at| at <= now);
                    if req.clean_start || due {
                        wills.push(will);
                    }
                }
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
                    st.will = req.will.clone().map(SessionWill::boxed);
                    st.expires_at = None;
                    st.info = req.client.clone();
                    st.mailbox.progressed(now);
                    match self.store_for(expiry) {
                        Some(store) => {
                            st.store = Some(store);
                            old.save(&mut st, now);
                        }
                        // Part of the queue is only in the store: it stays
                        // attached until the connection ends (the record
                        // says expiry 0, so a restart drops the session).
                        None if st.mailbox.is_spilling() => old.save(&mut st, now),
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
                        now,
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
            if let Some(mut will) = will {
                if will.delay_interval == 0 {
                    publish_now = Some(will);
                } else {
                    let delay = will.delay_interval.min(expiry);
                    will.due = Some(now + Duration::from_secs(u64::from(delay)));
                    st.will = Some(will);
                }
            }
            session.save(&mut st, now);
        }
        if let Some(will) = publish_now {
            self.publish_will(will, now);
        }
    }

    fn publish_will(&self, will: Box<SessionWill>, now: Instant) {
        self.metrics.inc(&self.metrics.wills_published);
        // The will's expiry interval counts from its publication.
        let will = will.will;
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
                if let Some(due) = st.will.as_ref().and_then(|w| w.due) {
                    if due <= now {
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

    /// The queue of `client_id`'s session: its length and bytes, what is
    /// in flight, and what it lost, by reason (for the HTTP API).
    pub fn client_queue(&self, client_id: &str) -> Option<QueueStats> {
        let session = self.sessions.lock().get(client_id).cloned()?;
        let st = session.state.lock();
        Some(QueueStats {
            len: st.mailbox.len(),
            bytes: st.mailbox.bytes(),
            resident: st.mailbox.resident_len(),
            inflight: st.inflight.len(),
            dropped: st.mailbox.drop_counts(),
        })
    }

    /// Number of sessions held.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }
}

/// One session's queue, as [`Broker::client_queue`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Deliveries waiting (in memory and, for a spilled queue, in the store).
    pub len: usize,
    /// Their bytes (topic and payload).
    pub bytes: u64,
    /// Of them, held in memory.
    pub resident: usize,
    /// Sent and not yet acknowledged.
    pub inflight: usize,
    /// What the session lost, by reason.
    pub dropped: crate::mailbox::DropCounts,
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

/// `$SYS` or below it.
fn is_sys_topic(topic: &str) -> bool {
    topic
        .strip_prefix("$SYS")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}
