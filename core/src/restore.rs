//! Start-up: what a durable store held is put back into the broker —
//! offline persistent sessions with their subscriptions, the head of their
//! queues (the rest stays in the store, ADR 0018) and their inflight
//! state, and retained messages.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::broker::Broker;
use crate::routing::insert_into_trie;
use crate::session::{ClientInfo, Session, SessionWill};
use crate::storage::{Restored, StoreOp};
use crate::topic::parse_filter;

impl Broker {
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
                // A session resumed with expiry 0 ends with its connection.
                self.persistence.submit(StoreOp::SessionDelete(client_id));
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
            let session = Arc::new(Session::restored(info, rec.expiry_interval, store, now));
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
                    st.will = Some(Box::new(SessionWill {
                        will,
                        due: Some(due),
                    }));
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
                if let Some(spilled) = rs.spilled {
                    // The rest of the queue stays in the store until the
                    // session gets that far.
                    counts.1 += spilled.count;
                    st.mailbox
                        .restore_spill(spilled.count, spilled.bytes, spilled.first_seq);
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
}

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
