//! Routing: a message from the intake (or the system) to every matching
//! session's mailbox. The publisher's own task does it: retained update,
//! one read-locked trie walk, overlapping subscriptions of a session
//! merged into one delivery, one member picked per shared group, and each
//! delivery pushed under its session's lock (ADR 0002).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rand::Rng;

use crate::broker::{Broker, SharedStrategy};
use crate::message::{ClientId, Delivery, Message, QoS};
use crate::session::{Pending, Queued, Session, SubOptions};
use crate::storage::{later, CommitTicket, StoreOp};
use crate::topic::parse_filter;
use crate::trie::Trie;

impl Broker {
    /// Route a message: retained update, trie match, push into mailboxes.
    /// Returns how many sessions it was queued for.
    pub fn publish(&self, message: Message, now: Instant) -> usize {
        self.publish_flow(message, now, None, &mut None)
    }

    /// Route a message and collect what its publisher needs: the online
    /// sessions whose mailboxes went over their bound with this QoS 1/2
    /// message (added to `congested`: the publisher stops reading until each
    /// has room, ADR 0009), and in `ticket` the commit ticket covering
    /// every store write the message caused (queued for persistent
    /// sessions, retained). Protocol adapters come through
    /// [`Broker::admit`]; this is its routing step.
    pub(crate) fn publish_flow(
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
        now: Instant,
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
            count += self.deliver_to(session, delivery, congested.as_deref_mut(), ticket, now);
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
            count += self.deliver_to(session, delivery, congested.as_deref_mut(), ticket, now);
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
        now: Instant,
    ) -> usize {
        let (queued, stored) =
            session.deliver_flow(delivery, &self.config.queue, &self.metrics, now);
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

    pub(crate) fn effective_qos(&self, granted: QoS, published: QoS) -> QoS {
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
    pub(crate) fn redispatch(
        &self,
        deliveries: Vec<Pending>,
        source: Option<&Arc<Session>>,
        now: Instant,
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
                session.deliver(d, &self.config.queue, &self.metrics, now);
                if let Some(source) = source {
                    source.forget_stored(seq);
                }
            } else {
                kept.push(pending);
            }
        }
        kept
    }
}

#[derive(Debug, Default)]
pub(crate) struct SharedGroup {
    members: Vec<(ClientId, Arc<Session>, SubOptions)>,
    cursor: AtomicUsize,
}

#[derive(Debug)]
pub(crate) struct FilterEntry {
    filter: Arc<str>,
    direct: HashMap<ClientId, (Arc<Session>, SubOptions)>,
    shared: HashMap<Arc<str>, SharedGroup>,
}

impl FilterEntry {
    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.shared.is_empty()
    }
}

/// Add (or update) `client_id`'s subscription to `filter` in the trie;
/// true when it replaced an existing one.
pub(crate) fn insert_into_trie(
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

pub(crate) fn remove_from_trie(
    trie: &mut Trie<FilterEntry>,
    raw: &str,
    client_id: &ClientId,
) -> bool {
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

fn hash_of(s: &str) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish() as usize
}
