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
