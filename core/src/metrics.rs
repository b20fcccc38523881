//! Broker-wide counters and gauges, updated lock-free on the hot path and
//! read by the HTTP API, Prometheus exporter and `$SYS` publisher, plus the
//! messages in and out per protocol and QoS ([`ProtocolCounters`]).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::message::QoS;

/// The protocols whose messages are counted apart (`ClientInfo::protocol`
/// values; `"http"` is the HTTP API's publish); anything else is `"other"`.
pub const PROTOCOLS: [&str; 7] = ["mqtt", "mqtt-sn", "coap", "stomp", "lwm2m", "http", "other"];

fn protocol_index(protocol: &str) -> usize {
    PROTOCOLS
        .iter()
        .position(|p| *p == protocol)
        .unwrap_or(PROTOCOLS.len() - 1)
}

fn qos_index(qos: QoS) -> usize {
    match qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

/// Messages received from and sent to clients, by protocol and QoS.
#[derive(Debug, Default)]
pub struct ProtocolCounters {
    received: [[AtomicU64; 3]; PROTOCOLS.len()],
    sent: [[AtomicU64; 3]; PROTOCOLS.len()],
}

impl ProtocolCounters {
    /// Every non-zero series as (protocol, qos, received, sent).
    pub fn snapshot(&self) -> Vec<(&'static str, u8, u64, u64)> {
        let mut out = Vec::new();
        for (p, name) in PROTOCOLS.iter().enumerate() {
            for q in 0..3 {
                let r = self.received[p][q].load(Ordering::Relaxed);
                let s = self.sent[p][q].load(Ordering::Relaxed);
                if r != 0 || s != 0 {
                    out.push((*name, q as u8, r, s));
                }
            }
        }
        out
    }
}

macro_rules! metrics {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Counters and gauges; every field but `by_protocol` is an `AtomicU64`.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $($(#[$doc])* pub $name: AtomicU64,)*
            /// Messages in and out by protocol and QoS.
            pub by_protocol: ProtocolCounters,
        }

        impl Metrics {
            /// Every metric as (name, value), for export.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

metrics! {
    /// Connections currently open (all protocols).
    connections,
    /// Connections accepted since start.
    connections_total,
    /// Sessions currently held (online and offline).
    sessions,
    /// Subscriptions currently held.
    subscriptions,
    /// Retained messages currently stored.
    retained,
    /// Messages received from publishers.
    messages_received,
    /// Messages sent to subscribers.
    messages_sent,
    /// Messages routed to no subscriber.
    messages_no_subscribers,
    /// Messages dropped because a session's queue was full.
    messages_dropped_queue_full,
    /// QoS 0 messages not queued for an offline session.
    messages_dropped_offline_qos0,
    /// Messages dropped because they expired before delivery.
    messages_dropped_expired,
    /// Messages dropped because they exceed the receiver's maximum packet size.
    messages_dropped_too_large,
    /// Publishes refused by the authorizer.
    publish_denied,
    /// Subscriptions refused by the authorizer.
    subscribe_denied,
    /// Packets that failed to decode or violated the protocol.
    packets_malformed,
    /// Will messages published.
    wills_published,
    /// QoS 1/2 deliveries that made their publisher pause (mailbox over its bound).
    publish_backpressure,
    /// Clients whose credentials were accepted.
    auth_success,
    /// Clients refused by authentication (bad credentials or not authorized).
    auth_failure,
    /// Client connections refused by a listener's connection limit or rate.
    connections_refused,
    /// Bytes read from clients (stream transports).
    bytes_received,
    /// Bytes written to clients (stream transports).
    bytes_sent,
    /// QoS 0 messages received from clients (every protocol).
    messages_qos0_received,
    /// QoS 1 messages received from clients (every protocol).
    messages_qos1_received,
    /// QoS 2 messages received from clients (every protocol).
    messages_qos2_received,
    /// QoS 0 messages sent to clients (every protocol).
    messages_qos0_sent,
    /// QoS 1 messages sent to clients (every protocol).
    messages_qos1_sent,
    /// QoS 2 messages sent to clients (every protocol).
    messages_qos2_sent,
    /// Times a client went over its message or byte rate (throttled or disconnected).
    rate_limited,
    /// Subscriptions refused because the client holds the most allowed.
    subscriptions_refused_quota,
    /// Topic names or filters refused for having more than `max_topic_levels` levels.
    topic_levels_exceeded,
    /// Retained messages not stored: payload over `max_retained_payload`, or
    /// `max_retained` messages already stored.
    retained_refused,
    /// Bytes the durable store occupies on disk (0 with `storage = "memory"`).
    store_disk_bytes,
    /// Group commits written by the durable store.
    store_commits,
    /// Group commits that failed (disk full, I/O error).
    store_commit_failures,
    /// Changes written by the durable store.
    store_ops,
    /// Acknowledgements refused because their store write failed.
    store_refused,
    /// Reads of a spilled session queue back from the store that failed.
    store_read_failures,
    /// Connections closed for not authenticating within the pre-authentication time.
    limit_preauth_timeout,
    /// Connections closed for sending more than the pre-authentication byte budget.
    limit_preauth_bytes,
    /// Connections closed for silence past their keep-alive (idle) window.
    limit_idle_timeout,
    /// Connections closed because the peer stopped reading (write stall).
    limit_write_stall,
}

impl Metrics {
    /// Add one to a counter.
    pub fn inc(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtract one from a gauge.
    pub fn dec(&self, gauge: &AtomicU64) {
        gauge.fetch_sub(1, Ordering::Relaxed);
    }

    /// Add `n` to a counter.
    pub fn add(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Read one metric.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// A client of `protocol` sent a message at `qos` (before routing).
    pub fn message_in(&self, protocol: &str, qos: QoS) {
        let counter = match qos {
            QoS::AtMostOnce => &self.messages_qos0_received,
            QoS::AtLeastOnce => &self.messages_qos1_received,
            QoS::ExactlyOnce => &self.messages_qos2_received,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.by_protocol.received[protocol_index(protocol)][qos_index(qos)]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A message went out to a client of `protocol` at `qos`.
    pub fn message_out(&self, protocol: &str, qos: QoS) {
        self.messages_sent.fetch_add(1, Ordering::Relaxed);
        let counter = match qos {
            QoS::AtMostOnce => &self.messages_qos0_sent,
            QoS::AtLeastOnce => &self.messages_qos1_sent,
            QoS::ExactlyOnce => &self.messages_qos2_sent,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.by_protocol.sent[protocol_index(protocol)][qos_index(qos)]
            .fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_protocol_counts_add_up() {
        let m = Metrics::default();
        m.message_in("mqtt", QoS::AtLeastOnce);
        m.message_in("stomp", QoS::AtMostOnce);
        m.message_in("something-new", QoS::ExactlyOnce);
        m.message_out("coap", QoS::AtLeastOnce);
        m.message_out("coap", QoS::AtLeastOnce);
        assert_eq!(Metrics::get(&m.messages_qos1_received), 1);
        assert_eq!(Metrics::get(&m.messages_qos1_sent), 2);
        assert_eq!(Metrics::get(&m.messages_sent), 2);
        assert_eq!(
            m.by_protocol.snapshot(),
            vec![
                ("mqtt", 1, 1, 0),
                ("coap", 1, 0, 2),
                ("stomp", 0, 1, 0),
                ("other", 2, 1, 0),
            ]
        );
    }
}
