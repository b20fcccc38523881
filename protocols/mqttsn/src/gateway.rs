//! Gateway-level MQTT-SN state: what belongs to no single client.
//!
//! - [`unattached`]: a message from an address with no client: SEARCHGW is
//!   answered with GWINFO (§6.1), a QoS −1 PUBLISH with a predefined id or
//!   short name is published as QoS 0 (§6.8), a CONNECT creates a client,
//!   anything needing a session is answered with DISCONNECT so the client
//!   knows to reconnect, the rest is dropped.
//! - [`ClientTable`]: clients by address (and forwarder node id, §5.5),
//!   bounded: when full, the longest-idle client idle for at least
//!   `idle_timeout` is evicted; if none is, the CONNECT is refused with
//!   "rejected: congestion". A flood of CONNECTs from spoofed addresses
//!   therefore costs at most `max_clients` entries.
//! - [`Advertiser`]: periodic ADVERTISE (§6.1) with the interval in seconds.
//! - [`Stats`]: datagrams dropped, refused, evicted — counted, never silent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::debug;
use tributary_core::auth::Action;
use tributary_core::{Broker, ClientInfo, Message};

use crate::channel::ChannelConfig;
use crate::packet::{Packet, Publish, QoS, TopicIdType};

/// Gateway-level counters (all monotonic).
#[derive(Debug, Default)]
pub struct Stats {
    /// Datagrams received.
    pub datagrams_received: AtomicU64,
    /// Datagrams that failed to decode (also counted in the core's `packets_malformed`).
    pub datagrams_malformed: AtomicU64,
    /// Datagrams dropped because the client's inbound queue was full.
    pub datagrams_dropped_busy: AtomicU64,
    /// Messages from unknown clients that were dropped or answered with DISCONNECT.
    pub unknown_client: AtomicU64,
    /// QoS −1 publishes routed.
    pub qos_neg1_published: AtomicU64,
    /// QoS −1 publishes dropped (disabled, unknown id, denied).
    pub qos_neg1_dropped: AtomicU64,
    /// Clients evicted from a full table.
    pub clients_evicted: AtomicU64,
    /// CONNECTs refused because the table was full.
    pub clients_refused: AtomicU64,
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
            ("datagrams_received", g(&self.datagrams_received)),
            ("datagrams_malformed", g(&self.datagrams_malformed)),
            ("datagrams_dropped_busy", g(&self.datagrams_dropped_busy)),
            ("unknown_client", g(&self.unknown_client)),
            ("qos_neg1_published", g(&self.qos_neg1_published)),
            ("qos_neg1_dropped", g(&self.qos_neg1_dropped)),
            ("clients_evicted", g(&self.clients_evicted)),
            ("clients_refused", g(&self.clients_refused)),
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
    if broker.check_topic_name(&topic).is_err()
        || !broker.authorize(&client, Action::Publish, &topic)
    {
        Stats::inc(&stats.qos_neg1_dropped);
        return false;
    }
    let message = Message::new(
        topic,
        p.payload.clone(),
        tributary_core::QoS::AtMostOnce,
        p.retain,
    );
    broker
        .metrics()
        .message_in("mqtt-sn", tributary_core::QoS::AtMostOnce);
    broker.publish(message, now);
    Stats::inc(&stats.qos_neg1_published);
    true
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

#[derive(Debug)]
struct Entry<V> {
    value: V,
    last_seen: Instant,
}

/// The table is full and nobody has been idle long enough to evict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableFull;

/// Clients by [`ClientKey`], at most `max` of them.
#[derive(Debug)]
pub struct ClientTable<V> {
    entries: HashMap<ClientKey, Entry<V>>,
    max: usize,
    idle_timeout: Duration,
}

impl<V> ClientTable<V> {
    /// An empty table.
    pub fn new(max: usize, idle_timeout: Duration) -> ClientTable<V> {
        ClientTable {
            entries: HashMap::new(),
            max: max.max(1),
            idle_timeout,
        }
    }

    /// The client at `key`, marked as heard from at `now`.
    pub fn touch(&mut self, key: &ClientKey, now: Instant) -> Option<&mut V> {
        self.entries.get_mut(key).map(|e| {
            e.last_seen = now;
            &mut e.value
        })
    }

    /// Add a client. When full, the longest-idle client idle for at least
    /// `idle_timeout` is evicted (returned) to make room.
    pub fn insert(
        &mut self,
        key: ClientKey,
        value: V,
        now: Instant,
    ) -> Result<Option<(ClientKey, V)>, TableFull> {
        let mut evicted = None;
        if self.entries.len() >= self.max && !self.entries.contains_key(&key) {
            let oldest = self
                .entries
                .iter()
                .filter(|(_, e)| now.saturating_duration_since(e.last_seen) >= self.idle_timeout)
                .min_by_key(|(_, e)| e.last_seen)
                .map(|(k, _)| k.clone());
            let Some(victim) = oldest else {
                return Err(TableFull);
            };
            evicted = self.entries.remove(&victim).map(|e| (victim, e.value));
        }
        self.entries.insert(
            key,
            Entry {
                value,
                last_seen: now,
            },
        );
        Ok(evicted)
    }

    /// Remove a client.
    pub fn remove(&mut self, key: &ClientKey) -> Option<V> {
        self.entries.remove(key).map(|e| e.value)
    }

    /// Keep only the clients for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) {
        self.entries.retain(|_, e| keep(&e.value));
    }

    /// Number of clients.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every client (shutdown).
    pub fn drain(&mut self) -> impl Iterator<Item = V> + '_ {
        self.entries.drain().map(|(_, e)| e.value)
    }
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

    fn key(port: u16) -> ClientKey {
        ClientKey {
            peer: SocketAddr::from(([127, 0, 0, 1], port)),
            node_id: None,
        }
    }

    #[test]
    fn full_table_evicts_only_idle_clients() {
        let t0 = Instant::now();
        let mut t = ClientTable::new(2, Duration::from_secs(10));
        assert_eq!(t.insert(key(1), 1, t0), Ok(None));
        assert_eq!(t.insert(key(2), 2, t0 + Duration::from_secs(5)), Ok(None));
        assert_eq!(
            t.insert(key(3), 3, t0 + Duration::from_secs(6)),
            Err(TableFull)
        );
        assert!(t.touch(&key(1), t0 + Duration::from_secs(7)).is_some());
        // key(2) idle since 5 s, key(1) since 7 s: at 16 s only key(2) qualifies.
        assert_eq!(
            t.insert(key(3), 3, t0 + Duration::from_secs(16)),
            Ok(Some((key(2), 2)))
        );
        assert_eq!(t.len(), 2);
    }

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
