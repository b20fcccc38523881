//! Subscriptions and retained reads: the trie's writers (subscribe,
//! unsubscribe, a session's subscriptions dropped) and the retained
//! store's readers.

use std::sync::Arc;
use std::time::Instant;

use crate::broker::{Broker, SubscribeOutcome};
use crate::message::{ClientId, Delivery, Message};
use crate::routing::{insert_into_trie, remove_from_trie};
use crate::session::{Session, SessionHandle, SubOptions};
use crate::topic::{parse_filter, TopicError};

impl Broker {
    pub(crate) fn drop_subscriptions(&self, session: &Arc<Session>) {
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
                if session.deliver(delivery, &self.config.queue, &self.metrics, now) {
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
}
