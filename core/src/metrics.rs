//! Broker-wide counters and gauges, updated lock-free on the hot path and
//! read by the HTTP API, Prometheus exporter and `$SYS` publisher.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! metrics {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Counters and gauges; every field is an `AtomicU64`.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $($(#[$doc])* pub $name: AtomicU64,)*
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
    /// QoS 0 PUBLISH received from MQTT clients.
    messages_qos0_received,
    /// QoS 1 PUBLISH received from MQTT clients.
    messages_qos1_received,
    /// QoS 2 PUBLISH received from MQTT clients.
    messages_qos2_received,
    /// Times a client went over its message or byte rate (throttled or disconnected).
    rate_limited,
    /// Subscriptions refused because the client holds the most allowed.
    subscriptions_refused_quota,
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
}
