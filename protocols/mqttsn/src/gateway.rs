//! Gateway-level MQTT-SN state: what belongs to no single client.
//!
//! - [`unattached`]: a message from an address with no client: SEARCHGW is
//!   answered with GWINFO (§6.1), a QoS −1 PUBLISH with a predefined id or
//!   short name is published as QoS 0 (§6.8), a CONNECT creates a client,
//!   anything needing a session is answered with DISCONNECT so the client
//!   knows to reconnect, the rest is dropped.
//! - [`ClientKey`]: who a client is (its address, and its forwarder's
//!   node id, §5.5); the gateway's datagram driver keeps the bounded
//!   table of clients by it.
//! - [`Advertiser`]: periodic ADVERTISE (§6.1) with the interval in seconds.
//! - [`Stats`]: what the gateway answered or dropped itself — counted, never silent.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::debug;
use tributary_core::{Broker, ClientInfo, Message};

use crate::channel::ChannelConfig;
use crate::packet::{Packet, Publish, QoS, TopicIdType};

/// Gateway-level counters (all monotonic).
#[derive(Debug, Default)]
pub struct Stats {
    /// Datagrams that failed to decode (also counted in the core's `packets_malformed`).
    pub datagrams_malformed: AtomicU64,
    /// Messages from unknown clients that were dropped or answered with DISCONNECT.
    pub unknown_client: AtomicU64,
    /// QoS −1 publishes routed.
    pub qos_neg1_published: AtomicU64,
    /// QoS −1 publishes dropped (disabled, unknown id, denied).
    pub qos_neg1_dropped: AtomicU64,
    /// Of those, connection-less ones from a source outside
    /// `qos3_sources` while anonymous access is off.
    pub qos_neg1_unauthenticated: AtomicU64,
}

impl Stats {
    /// Add one.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Every counter as (name, value).
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("datagrams_malformed", g(&self.datagrams_malformed)),
            ("unknown_client", g(&self.unknown_client)),
            ("qos_neg1_published", g(&self.qos_neg1_published)),
            ("qos_neg1_dropped", g(&self.qos_neg1_dropped)),
            (
                "qos_neg1_unauthenticated",
                g(&self.qos_neg1_unauthenticated),
            ),
        ]
    }
}

/// What to do with a message from an address that has no client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unattached {
    /// Send this back.
    Reply(Packet),
    /// Create a client (a CONNECT) and hand it the message.
    Attach,
    /// Nothing more to do (handled, or dropped and counted).
    Done,
}

/// Decide what a message from an unknown address gets.
pub fn unattached(
    broker: &Broker,
    config: &ChannelConfig,
    stats: &Stats,
    peer: Option<SocketAddr>,
    packet: &Packet,
    now: Instant,
) -> Unattached {
    match packet {
        Packet::SearchGw { .. } => Unattached::Reply(Packet::GwInfo {
            gw_id: config.gateway_id,
            gw_addr: Bytes::new(),
        }),
        Packet::Connect(_) => Unattached::Attach,
        Packet::Publish(p) if p.qos == QoS::NoConnection => {
            publish_qos_neg1(broker, config, stats, peer, p, now);
            Unattached::Done
        }
        Packet::Publish(_)
        | Packet::Register { .. }
        | Packet::Subscribe(_)
        | Packet::Unsubscribe { .. }
        | Packet::PingReq { .. }
        | Packet::Disconnect { .. }
        | Packet::WillTopicUpd(_)
        | Packet::WillMsgUpd { .. } => {
            // §6.3/§6.14: a client the gateway does not know must connect again.
            debug!(
                packet = packet.name(),
                "message from an unknown client; DISCONNECT"
            );
            Stats::inc(&stats.unknown_client);
            Unattached::Reply(Packet::Disconnect { duration: None })
        }
        other => {
            debug!(
                packet = other.name(),
                "message from an unknown client; dropped"
            );
            Stats::inc(&stats.unknown_client);
            Unattached::Done
        }
    }
}

/// QoS −1 (§6.8): publish without a connection, predefined ids and short
/// names only, routed as QoS 0. Returns true when it was routed.
pub fn publish_qos_neg1(
    broker: &Broker,
    config: &ChannelConfig,
    stats: &Stats,
    peer: Option<SocketAddr>,
    p: &Publish,
    now: Instant,
) -> bool {
    if config.enable_qos3 && !source_allowed(config, peer) {
        debug!(
            ?peer,
            "QoS -1 publish from a source not in mqttsn.qos3_sources; dropped"
        );
        Stats::inc(&stats.qos_neg1_unauthenticated);
        Stats::inc(&stats.qos_neg1_dropped);
        return false;
    }
    let name = match p.topic_id_type {
        _ if !config.enable_qos3 => None,
        TopicIdType::Normal => None,
        kind => config.inbound_name(None, kind, p.topic_id),
    };
    let Some(name) = name else {
        debug!(
            topic_id = p.topic_id,
            "QoS -1 publish dropped (disabled or unknown topic)"
        );
        Stats::inc(&stats.qos_neg1_dropped);
        return false;
    };
    let topic = config.mount(&name);
    let client = ClientInfo {
        client_id: "".into(),
        username: None,
        peer,
        protocol: "mqtt-sn",
    };
    if broker.check_topic_name(&topic).is_err() {
        Stats::inc(&stats.qos_neg1_dropped);
        return false;
    }
    let message = Message::new(
        topic,
        p.payload.clone(),
        tributary_core::QoS::AtMostOnce,
        p.retain,
    );
    // Through the one intake like any publish (ACL, rates, metrics).
    let mut intake = broker.publisher(client);
    if !broker.admit(&mut intake, message, now).accepted() {
        Stats::inc(&stats.qos_neg1_dropped);
        return false;
    }
    Stats::inc(&stats.qos_neg1_published);
    true
}

/// Whether a connection-less QoS −1 publish may come from `peer`.
fn source_allowed(config: &ChannelConfig, peer: Option<SocketAddr>) -> bool {
    match (&config.qos3_sources, peer) {
        (None, _) => true,
        (Some(nets), Some(peer)) => nets
            .iter()
            .any(|(net, prefix)| tributary_core::auth::ip_in_net(peer.ip(), *net, *prefix)),
        (Some(_), None) => false,
    }
}

/// Who a client is: its address, and for clients behind a forwarder the
/// Wireless Node Id (§5.5).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// The datagram's source address.
    pub peer: SocketAddr,
    /// The forwarder's Wireless Node Id, when encapsulated.
    pub node_id: Option<Bytes>,
}

/// Periodic ADVERTISE (§6.1, §5.4.1): sent at start, then every `interval`.
#[derive(Debug)]
pub struct Advertiser {
    gw_id: u8,
    interval: Duration,
    next: Instant,
}

impl Advertiser {
    /// First ADVERTISE due at `now`.
    pub fn new(gw_id: u8, interval: Duration, now: Instant) -> Advertiser {
        Advertiser {
            gw_id,
            interval: interval.max(Duration::from_secs(1)),
            next: now,
        }
    }

    /// When the next ADVERTISE is due.
    pub fn next_due(&self) -> Instant {
        self.next
    }

    /// The ADVERTISE to send, if one is due.
    pub fn poll(&mut self, now: Instant) -> Option<Packet> {
        if now < self.next {
            return None;
        }
        self.next = now + self.interval;
        let duration = u16::try_from(self.interval.as_secs()).unwrap_or(u16::MAX);
        Some(Packet::Advertise {
            gw_id: self.gw_id,
            duration,
        })
    }
}

/// Shared handle on the counters.
pub type SharedStats = Arc<Stats>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertiser_cadence() {
        let t0 = Instant::now();
        let mut a = Advertiser::new(7, Duration::from_secs(900), t0);
        assert_eq!(
            a.poll(t0),
            Some(Packet::Advertise {
                gw_id: 7,
                duration: 900
            })
        );
        assert_eq!(a.poll(t0 + Duration::from_secs(899)), None);
        assert!(a.poll(t0 + Duration::from_secs(900)).is_some());
    }
}
