//! `$SYS` topics, EMQX style: every `node.sys_interval` the gateway publishes
//! `$SYS/brokers/{node}/version`, `…/uptime` (seconds), `…/stats/{name}` for
//! the gauges and `…/metrics/{name}` for the counters. Client connected and
//! disconnected events are published by the core as they happen.
//!
//! Messages are QoS 0 and not retained; `#` and `+` at the first level never
//! match `$SYS` topics, so only subscribers that ask for them get them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use tributary_core::{Broker, Message, QoS};

/// Gauges (current values) published under `stats/`; every other metric is
/// a counter published under `metrics/`.
const GAUGES: &[&str] = &["connections", "sessions", "subscriptions", "retained"];

/// Publish the `$SYS` tree every `interval` until shutdown.
pub async fn publisher(
    broker: Arc<Broker>,
    node: String,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => publish_once(&broker, &node, started.elapsed()),
            _ = shutdown.changed() => return,
        }
    }
}

fn publish_once(broker: &Broker, node: &str, uptime: Duration) {
    let now = crate::drive::now();
    let publish = |suffix: &str, value: String| {
        let topic = format!("$SYS/brokers/{node}/{suffix}");
        broker.publish(
            Message::new(topic, Bytes::from(value), QoS::AtMostOnce, false),
            now,
        );
    };
    publish("version", env!("CARGO_PKG_VERSION").to_string());
    publish("uptime", uptime.as_secs().to_string());
    for (name, value) in broker.metrics().snapshot() {
        let section = if GAUGES.contains(&name) {
            "stats"
        } else {
            "metrics"
        };
        publish(&format!("{section}/{name}"), value.to_string());
    }
}
