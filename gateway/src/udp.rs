//! The UDP protocols' demultiplexers for the datagram driver
//! ([`crate::drive::datagram`]): MQTT-SN (`[mqttsn]`), CoAP (`[coap]`)
//! and LwM2M (`[lwm2m]`), and their start-up. Each only says what a
//! datagram is and opens channels; the table, the inboxes, the limits and
//! the connection count are the driver's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};
use tributary_config::Config;
use tributary_mqttsn::codec::{decode, encode};
use tributary_mqttsn::gateway::{unattached, Advertiser, ClientKey, Stats, Unattached};
use tributary_mqttsn::packet::{Encapsulated, Packet, ReturnCode};

use crate::drive::datagram::{
    serve, Classified, DatagramListener, DatagramStats, Demux, Peers, Unknown,
};
use crate::drive::{now, DriveContext};
use crate::listen::{Connections, Gate};
use crate::listener_stats::ListenerStats;

/// Counters of the UDP gateways, for the API and Prometheus.
#[derive(Debug, Default)]
pub struct UdpStats {
    /// MQTT-SN: the driver's counters.
    pub mqttsn: Arc<DatagramStats>,
    /// MQTT-SN: what the gateway answered or dropped itself.
    pub mqttsn_gateway: Arc<Stats>,
    /// CoAP: the driver's counters.
    pub coap: Arc<DatagramStats>,
    /// LwM2M: the driver's counters.
    pub lwm2m: Arc<DatagramStats>,
}

/// Where the UDP gateways are bound.
#[derive(Debug, Default, Clone, Copy)]
pub struct UdpAddrs {
    /// MQTT-SN.
    pub mqttsn: Option<SocketAddr>,
    /// CoAP.
    pub coap: Option<SocketAddr>,
    /// LwM2M.
    pub lwm2m: Option<SocketAddr>,
}

async fn bind(key: &str, addr: SocketAddr) -> anyhow::Result<(UdpSocket, SocketAddr)> {
    let socket = UdpSocket::bind(addr)
        .await
        .with_context(|| format!("{key}: cannot bind {addr}"))?;
    let local = socket.local_addr()?;
    Ok((socket, local))
}

fn gate(
    label: &'static str,
    addr: SocketAddr,
    max: usize,
    connections: &Arc<Connections>,
) -> Arc<Gate> {
    let stats = Arc::new(ListenerStats::new(
        "udp",
        label,
        addr,
        "plain UDP".to_owned(),
        0,
    ));
    Gate::new(stats, max, connections)
}

/// Bind and serve every enabled UDP gateway.
pub async fn start(
    config: &Config,
    ctx: &Arc<DriveContext>,
    connections: &Arc<Connections>,
    stats: &UdpStats,
    tasks: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<UdpAddrs> {
    let mut addrs = UdpAddrs::default();
    if config.mqttsn.enabled {
        let sn = &config.mqttsn;
        let (socket, addr) = bind("mqttsn.bind", sn.bind).await?;
        let channel = crate::wiring::mqttsn_channel(config);
        let qos_neg1 = match (&channel.qos3_sources, channel.enable_qos3) {
            (_, false) => "off".to_owned(),
            (None, true) => "from any source (anonymous access is on)".to_owned(),
            (Some(nets), true) if nets.is_empty() => {
                "off (anonymous access is off and mqttsn.qos3_sources is empty)".to_owned()
            }
            (Some(nets), true) => format!("from {} configured source range(s)", nets.len()),
        };
        info!(listener = "udp:mqttsn", %addr, qos_neg1 = %qos_neg1, "MQTT-SN gateway started");
        addrs.mqttsn = Some(addr);
        let advertiser = sn.advertise.enabled.then(|| {
            let _ = socket.set_broadcast(true);
            (
                Advertiser::new(channel.gateway_id, sn.advertise.interval, now()),
                sn.advertise.broadcast,
            )
        });
        let demux = MqttSn {
            broker: ctx.broker.clone(),
            channel,
            stats: stats.mqttsn_gateway.clone(),
            advertiser,
        };
        let listener = DatagramListener {
            demux,
            peers: Peers::new(),
            ctx: ctx.clone(),
            gate: gate("mqttsn", addr, 0, connections),
            max_peers: sn.max_clients as usize,
            inbox_len: CLIENT_INBOX,
            stats: stats.mqttsn.clone(),
            label: "udp:mqttsn",
        };
        tasks.spawn(serve(socket, listener));
    }
    if config.coap.enabled {
        let c = &config.coap;
        let (socket, addr) = bind("coap.bind", c.bind).await?;
        info!(listener = "udp:coap", %addr, "CoAP gateway started");
        addrs.coap = Some(addr);
        let listener = DatagramListener {
            demux: Coap {
                broker: ctx.broker.clone(),
                channel: crate::wiring::coap_channel(config),
            },
            peers: Peers::new(),
            ctx: ctx.clone(),
            gate: gate("coap", addr, 0, connections),
            max_peers: c.max_peers as usize,
            inbox_len: c.peer_queue_len as usize,
            stats: stats.coap.clone(),
            label: "udp:coap",
        };
        tasks.spawn(serve(socket, listener));
    }
    if config.lwm2m.enabled {
        let c = &config.lwm2m;
        let (socket, addr) = bind("lwm2m.bind", c.bind).await?;
        info!(listener = "udp:lwm2m", %addr, "LwM2M gateway started");
        addrs.lwm2m = Some(addr);
        let device = crate::wiring::lwm2m_device(config);
        let dir = c.xml_dir.clone();
        let (max_peers, inbox_len) = (c.max_peers as usize, c.peer_queue_len as usize);
        let gate = gate("lwm2m", addr, 0, connections);
        let (ctx, stats) = (ctx.clone(), stats.lwm2m.clone());
        // The object files are read off the start-up path (start returns
        // once every listener is bound); datagrams wait in the socket.
        tasks.spawn(async move {
            let registry = tokio::task::spawn_blocking(move || load_registry(&dir))
                .await
                .unwrap_or_default();
            let peers = Peers::new();
            let directory = Arc::new(PeerDirectory {
                peers: peers.clone(),
                owners: Mutex::new(HashMap::new()),
            });
            let listener = DatagramListener {
                demux: Lwm2m {
                    broker: ctx.broker.clone(),
                    device,
                    registry: Arc::new(registry),
                    directory,
                },
                peers,
                ctx,
                gate,
                max_peers,
                inbox_len,
                stats,
                label: "udp:lwm2m",
            };
            serve(socket, listener).await;
        });
    }
    Ok(addrs)
}

// ------------------------------------------------------------------ MQTT-SN

/// Messages queued for one MQTT-SN client before further datagrams are dropped.
const CLIENT_INBOX: usize = 64;

/// MQTT-SN: clients by address and forwarder node id (§5.5).
struct MqttSn {
    broker: Arc<tributary_core::Broker>,
    channel: Arc<tributary_mqttsn::channel::ChannelConfig>,
    stats: Arc<Stats>,
    advertiser: Option<(Advertiser, SocketAddr)>,
}

/// `packet` for `key`, wrapped for its forwarder when it has one.
fn encode_for(key: &ClientKey, packet: Packet) -> Option<Bytes> {
    let packet = match &key.node_id {
        Some(node_id) => Packet::Encapsulated(Encapsulated {
            radius: 0,
            node_id: node_id.clone(),
            packet: Box::new(packet),
        }),
        None => packet,
    };
    let mut buf = BytesMut::new();
    match encode(&packet, &mut buf) {
        Ok(()) => Some(buf.freeze()),
        Err(e) => {
            warn!(error = %e, packet = packet.name(), "cannot encode; dropped");
            None
        }
    }
}

impl Demux for MqttSn {
    type Key = ClientKey;
    type Conn = tributary_mqttsn::channel::Channel;

    fn protocol(&self) -> &'static str {
        "mqtt-sn"
    }

    fn classify(
        &mut self,
        datagram: Bytes,
        from: SocketAddr,
        _now: Instant,
    ) -> Classified<ClientKey, Packet> {
        let packet = match decode(&datagram) {
            Ok(p) => p,
            Err(e) => {
                // Truncated, wrong length, unknown type: dropped and
                // counted; never affects any client.
                debug!(peer = %from, error = %e, "undecodable datagram dropped");
                Stats::inc(&self.stats.datagrams_malformed);
                let m = self.broker.metrics();
                m.inc(&m.packets_malformed);
                return Classified::Drop;
            }
        };
        let (key, packet) = match packet {
            Packet::Encapsulated(e) => (
                ClientKey {
                    peer: from,
                    node_id: Some(e.node_id),
                },
                *e.packet,
            ),
            p => (
                ClientKey {
                    peer: from,
                    node_id: None,
                },
                p,
            ),
        };
        if let Packet::SearchGw { .. } = packet {
            let reply = Packet::GwInfo {
                gw_id: self.channel.gateway_id,
                gw_addr: Bytes::new(),
            };
            return match encode_for(&key, reply) {
                Some(b) => Classified::Reply(b),
                None => Classified::Drop,
            };
        }
        Classified::Peer(key, packet)
    }

    fn unknown(&mut self, key: &ClientKey, input: &Packet, now: Instant) -> Unknown {
        match unattached(
            &self.broker,
            &self.channel,
            &self.stats,
            Some(key.peer),
            input,
            now,
        ) {
            Unattached::Attach => Unknown::Open,
            Unattached::Reply(p) => match encode_for(key, p) {
                Some(b) => Unknown::Reply(b),
                None => Unknown::Drop,
            },
            Unattached::Done => Unknown::Drop,
        }
    }

    fn open(&mut self, key: &ClientKey, now: Instant) -> Self::Conn {
        let mut channel = tributary_mqttsn::channel::Channel::new(
            self.broker.clone(),
            self.channel.clone(),
            Some(key.peer),
            now,
        );
        channel.set_forwarder(key.node_id.clone());
        channel
    }

    fn address(key: &ClientKey) -> SocketAddr {
        key.peer
    }

    fn refusal(&self, key: &ClientKey, input: &Packet) -> Option<Bytes> {
        matches!(input, Packet::Connect(_)).then(|| {
            encode_for(
                key,
                Packet::ConnAck {
                    code: ReturnCode::Congestion,
                },
            )
        })?
    }

    fn evict_after(&self) -> Option<Duration> {
        Some(self.channel.idle_timeout)
    }

    fn next_tick(&self) -> Option<Instant> {
        self.advertiser.as_ref().map(|(a, _)| a.next_due())
    }

    fn tick(&mut self, now: Instant) -> Option<(Bytes, SocketAddr)> {
        let (adv, to) = self.advertiser.as_mut()?;
        let to = *to;
        let packet = adv.poll(now)?;
        let key = ClientKey {
            peer: to,
            node_id: None,
        };
        Some((encode_for(&key, packet)?, to))
    }
}

// ------------------------------------------------------------------ CoAP

/// CoAP: one channel per source address.
struct Coap {
    broker: Arc<tributary_core::Broker>,
    channel: Arc<tributary_coap::ChannelConfig>,
}

impl Demux for Coap {
    type Key = SocketAddr;
    type Conn = tributary_coap::channel::Channel;

    fn protocol(&self) -> &'static str {
        "coap"
    }

    fn classify(
        &mut self,
        datagram: Bytes,
        from: SocketAddr,
        _now: Instant,
    ) -> Classified<SocketAddr, Bytes> {
        Classified::Peer(from, datagram)
    }

    fn open(&mut self, key: &SocketAddr, _now: Instant) -> Self::Conn {
        tributary_coap::channel::Channel::new(
            self.broker.clone(),
            self.channel.clone(),
            *key,
            rand::random(),
        )
    }

    fn address(key: &SocketAddr) -> SocketAddr {
        *key
    }
}

// ------------------------------------------------------------------ LwM2M

use tributary_lwm2m::{Device, DeviceConfig, DeviceInput, Directory, Registry, Remote};

/// LwM2M: one device per source address; Update and De-register from
/// another address go to the peer holding the registration.
struct Lwm2m {
    broker: Arc<tributary_core::Broker>,
    device: Arc<DeviceConfig>,
    registry: Arc<Registry>,
    directory: Arc<PeerDirectory>,
}

impl Demux for Lwm2m {
    type Key = SocketAddr;
    type Conn = Device;

    fn protocol(&self) -> &'static str {
        "lwm2m"
    }

    fn classify(
        &mut self,
        datagram: Bytes,
        from: SocketAddr,
        _now: Instant,
    ) -> Classified<SocketAddr, DeviceInput> {
        Classified::Peer(from, DeviceInput::Datagram(datagram))
    }

    fn open(&mut self, key: &SocketAddr, now: Instant) -> Device {
        Device::new(
            self.broker.clone(),
            self.device.clone(),
            self.registry.clone(),
            self.directory.clone(),
            *key,
            rand::random(),
            now,
        )
    }

    fn address(key: &SocketAddr) -> SocketAddr {
        *key
    }
}

/// Endpoint name → the peer holding its registration.
struct PeerDirectory {
    peers: Arc<Peers<SocketAddr, DeviceInput>>,
    owners: Mutex<HashMap<String, SocketAddr>>,
}

impl Directory for PeerDirectory {
    fn claim(&self, ep: &str, owner: SocketAddr) {
        self.owners.lock().insert(ep.to_string(), owner);
    }

    fn release(&self, ep: &str, owner: SocketAddr) {
        let mut owners = self.owners.lock();
        if owners.get(ep) == Some(&owner) {
            owners.remove(ep);
        }
    }

    fn forward(&self, ep: &str, op: Remote) -> bool {
        let Some(owner) = self.owners.lock().get(ep).copied() else {
            return false;
        };
        self.peers.send(&owner, DeviceInput::Remote(op))
    }
}

/// The object registry from `lwm2m.xml_dir`: files that fail are logged
/// and skipped; a missing directory leaves the registry empty (values are
/// then typed by guessing) with a warning.
pub fn load_registry(dir: &str) -> Registry {
    match Registry::load_dir(std::path::Path::new(dir)) {
        Ok((r, errors)) => {
            for e in errors {
                warn!(file = %e.file, reason = %e.reason, "LwM2M object definition skipped");
            }
            info!(xml_dir = %dir, objects = r.len(), "LwM2M object definitions loaded");
            r
        }
        Err(e) => {
            warn!(xml_dir = %dir, error = %e, "LwM2M object definitions not loaded; values will be typed by guessing");
            Registry::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use tokio::sync::watch;
    use tributary_coap::codec::{decode, encode};
    use tributary_coap::msg::opt;
    use tributary_coap::{Code, Message, MessageType, Token};
    use tributary_core::{Broker, BrokerConfig, QoS};

    use super::*;

    struct Running {
        addr: SocketAddr,
        broker: Arc<tributary_core::Broker>,
        shutdown: watch::Sender<bool>,
        stats: Arc<DatagramStats>,
        connections: Arc<Connections>,
    }

    /// The CoAP demux on the datagram driver, on a loopback port.
    async fn start(max_peers: usize, max_connections: usize) -> Running {
        let broker = Arc::new(Broker::new(BrokerConfig::default()));
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        let (shutdown, rx) = watch::channel(false);
        let ctx = Arc::new(DriveContext {
            broker: broker.clone(),
            shutdown: rx,
            write_stall: Duration::from_secs(30),
        });
        let connections = Connections::new(broker.clone(), max_connections);
        let stats = Arc::new(DatagramStats::default());
        let listener = DatagramListener {
            demux: Coap {
                broker: broker.clone(),
                channel: Arc::new(tributary_coap::ChannelConfig::default()),
            },
            peers: Peers::new(),
            ctx,
            gate: gate("coap", addr, 0, &connections),
            max_peers,
            inbox_len: 8,
            stats: stats.clone(),
            label: "udp:coap",
        };
        tokio::spawn(serve(socket, listener));
        Running {
            addr,
            broker,
            shutdown,
            stats,
            connections,
        }
    }

    fn request(mtype: MessageType, code: Code, path: &str, mid: u16, token: &[u8]) -> Message {
        let mut m = Message::new(mtype, code, mid, Token::new(token).expect("token"));
        m.set_path(path);
        m
    }

    async fn peer(addr: SocketAddr) -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        s.connect(addr).await.expect("connect");
        s
    }

    async fn exchange(client: &UdpSocket, m: &Message) -> Message {
        client
            .send(&encode(m).expect("encode"))
            .await
            .expect("send");
        recv(client).await
    }

    async fn recv(client: &UdpSocket) -> Message {
        let mut buf = vec![0u8; 2048];
        let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
            .await
            .expect("answer in time")
            .expect("recv");
        decode(&buf[..n]).expect("decode")
    }

    async fn silent(client: &UdpSocket) -> bool {
        let mut buf = [0u8; 64];
        tokio::time::timeout(Duration::from_millis(300), client.recv(&mut buf))
            .await
            .is_err()
    }

    #[tokio::test]
    async fn publish_observe_notify_over_udp() {
        let gw = start(10, 100).await;
        let client = peer(gw.addr).await;
        let mut obs = request(MessageType::Con, Code::GET, "ps/t/+", 1, &[7]);
        obs.add_uint_option(opt::OBSERVE, 0);
        let r = exchange(&client, &obs).await;
        assert_eq!((r.mtype, r.code), (MessageType::Ack, Code::CONTENT));
        // Another peer publishes; the wake-up flushes the notification.
        let other = peer(gw.addr).await;
        let mut publish = request(MessageType::Con, Code::POST, "ps/t/1", 9, &[1]);
        publish.payload = Bytes::from_static(b"hello");
        let r = exchange(&other, &publish).await;
        assert_eq!(r.code, Code::CHANGED);
        let n = recv(&client).await;
        assert_eq!((n.mtype, n.code), (MessageType::Con, Code::CONTENT));
        assert_eq!(&n.payload[..], b"hello");
        let ack = Message::empty(MessageType::Ack, n.message_id);
        client
            .send(&encode(&ack).expect("enc"))
            .await
            .expect("send");
        // An MQTT-side publish reaches the observer too.
        gw.broker.publish(
            tributary_core::Message::new("t/2", Bytes::from_static(b"m"), QoS::AtMostOnce, false),
            now(),
        );
        let n = recv(&client).await;
        assert_eq!((n.mtype, &n.payload[..]), (MessageType::Non, &b"m"[..]));
        // Both peers hold a place in the one connection count.
        assert_eq!(gw.connections.open(), 2);
        assert_eq!(gw.stats.peers.load(Ordering::Relaxed), 2);
        // Shutdown ends the observation with 5.03.
        gw.shutdown.send(true).expect("shutdown");
        let end = recv(&client).await;
        assert_eq!(end.code, Code::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn a_full_peer_table_refuses_new_peers_and_counts_them() {
        let gw = start(1, 100).await;
        let a = peer(gw.addr).await;
        let r = exchange(&a, &request(MessageType::Con, Code::POST, "ps/x", 1, &[])).await;
        assert_eq!(r.code, Code::CHANGED);
        let b = peer(gw.addr).await;
        let m = encode(&request(MessageType::Con, Code::POST, "ps/x", 1, &[])).expect("enc");
        b.send(&m).await.expect("send");
        assert!(silent(&b).await, "no answer beyond the peer limit");
        assert_eq!(gw.stats.peers_refused.load(Ordering::Relaxed), 1);
        assert_eq!(gw.stats.peers.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn the_global_connection_bound_holds_for_datagram_peers() {
        let gw = start(10, 1).await;
        let a = peer(gw.addr).await;
        let r = exchange(&a, &request(MessageType::Con, Code::POST, "ps/x", 1, &[])).await;
        assert_eq!(r.code, Code::CHANGED);
        let b = peer(gw.addr).await;
        let m = encode(&request(MessageType::Con, Code::POST, "ps/x", 1, &[])).expect("enc");
        b.send(&m).await.expect("send");
        assert!(silent(&b).await, "no answer beyond limits.max_connections");
        let metrics = gw.broker.metrics();
        assert_eq!(metrics.connections_refused.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.connections.load(Ordering::Relaxed), 1);
    }

    async fn start_mqttsn(
        max_clients: usize,
        idle: Duration,
    ) -> (SocketAddr, Arc<DatagramStats>, watch::Sender<bool>) {
        let broker = Arc::new(Broker::new(BrokerConfig::default()));
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        let (shutdown, rx) = watch::channel(false);
        let ctx = Arc::new(DriveContext {
            broker: broker.clone(),
            shutdown: rx,
            write_stall: Duration::from_secs(30),
        });
        let connections = Connections::new(broker.clone(), 100);
        let stats = Arc::new(DatagramStats::default());
        let channel = tributary_mqttsn::channel::ChannelConfig {
            idle_timeout: idle,
            ..tributary_mqttsn::channel::ChannelConfig::default()
        };
        let listener = DatagramListener {
            demux: MqttSn {
                broker: broker.clone(),
                channel: Arc::new(channel),
                stats: Arc::new(Stats::default()),
                advertiser: None,
            },
            peers: Peers::new(),
            ctx,
            gate: gate("mqttsn", addr, 0, &connections),
            max_peers: max_clients,
            inbox_len: CLIENT_INBOX,
            stats: stats.clone(),
            label: "udp:mqttsn",
        };
        tokio::spawn(serve(socket, listener));
        (addr, stats, shutdown)
    }

    /// MQTT-SN CONNECT (clean session, keep-alive 60 s); the CONNACK's return code.
    async fn sn_connect(client: &UdpSocket, id: &str) -> u8 {
        let mut m = vec![0u8, 0x04, 0x04, 0x01, 0, 60];
        m.extend_from_slice(id.as_bytes());
        m[0] = m.len() as u8;
        client.send(&m).await.expect("send");
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
            .await
            .expect("CONNACK in time")
            .expect("recv");
        assert_eq!(
            &buf[..2],
            &[3, 0x05],
            "CONNACK expected, got {:?}",
            &buf[..n]
        );
        buf[2]
    }

    #[tokio::test]
    async fn a_full_mqttsn_table_refuses_with_congestion_then_evicts_the_idle() {
        let (addr, stats, _shutdown) = start_mqttsn(1, Duration::from_millis(300)).await;
        let a = peer(addr).await;
        assert_eq!(sn_connect(&a, "a").await, 0);
        let b = peer(addr).await;
        // Nobody idle long enough: "rejected: congestion".
        assert_eq!(sn_connect(&b, "b").await, 1);
        assert_eq!(stats.peers_refused.load(Ordering::Relaxed), 1);
        tokio::time::sleep(Duration::from_millis(400)).await;
        // `a` has been silent past the idle time: it makes room.
        assert_eq!(sn_connect(&b, "b").await, 0);
        assert_eq!(stats.peers_evicted.load(Ordering::Relaxed), 1);
    }
}
