//! Test support for the channel scenarios: a packet-builder DSL and an
//! in-memory [`Harness`] that drives several [`Channel`]s against one
//! [`Broker`] with virtual time, in the spirit of quinn-proto's `Pair` and
//! h2's `h2-support`.
//!
//! The harness plays the driver's part for every client:
//!
//! - packets a test sends are encoded with the real codec and decoded the
//!   way the server's reader would (the channel's version and maximum
//!   packet size), so a decode error reaches
//!   [`Channel::handle_decode_error`] exactly as it would on a socket;
//! - after every input, every live channel gets `handle_wake(now)` until
//!   nothing moves any more (the core wakes subscribers on routing, kicks
//!   on takeover, and publishes wills when a connection is finished);
//! - every packet a channel emits is encoded and decoded again for the
//!   channel's version (MQTT 5: it must come back equal), must fit the
//!   client's Maximum Packet Size, and a wake that produced packets must
//!   have been preceded by the core's signal (no lost wake-ups);
//! - a channel that reports `is_closed()` has its output collected and is
//!   then `finish`ed, as the driver does after writing the last bytes.
//!
//! Time is an `Instant` taken once plus an offset moved only by
//! [`Harness::advance`], which fires `handle_timeout` on every channel and
//! `Broker::tick`. Each connection has the drivers' [`Watchdog`] (connect
//! timeout, keep alive), fed and checked as the drivers do.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tributary_core::connection::Watchdog;
use tributary_core::{Broker, BrokerConfig, ConnectionSignal};
use tributary_mqtt::channel::{Channel, ChannelConfig};
use tributary_mqtt::codec::{decode, encode, DecodeError};
pub use tributary_mqtt::packet::{
    ConnAck, Connect, Disconnect, LastWill, Packet, Properties, ProtocolVersion, PubResponse,
    Publish, QoS, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};
pub use tributary_mqtt::reason as rc;

// ---------------------------------------------------------------------------
// Packet DSL
// ---------------------------------------------------------------------------

fn qos(level: u8) -> QoS {
    QoS::from_u8(level).expect("QoS 0..=2")
}

/// CONNECT builder. Defaults: clean start, keep alive 0 (off), no will.
#[derive(Debug, Clone)]
pub struct ConnectBuilder(Connect);

fn connect_with(protocol: ProtocolVersion, id: &str) -> ConnectBuilder {
    ConnectBuilder(Connect {
        protocol,
        clean_start: true,
        keep_alive: 0,
        client_id: id.to_string(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    })
}

/// An MQTT 3.1 (`MQIsdp`, level 3) CONNECT.
pub fn connect_v31(id: &str) -> ConnectBuilder {
    connect_with(ProtocolVersion::V3_1, id)
}

/// An MQTT 3.1.1 CONNECT.
pub fn connect(id: &str) -> ConnectBuilder {
    connect_with(ProtocolVersion::V3_1_1, id)
}

/// An MQTT 5 CONNECT.
pub fn connect_v5(id: &str) -> ConnectBuilder {
    connect_with(ProtocolVersion::V5, id)
}

impl ConnectBuilder {
    pub fn keep_alive(mut self, seconds: u16) -> Self {
        self.0.keep_alive = seconds;
        self
    }
    pub fn clean_start(mut self, clean: bool) -> Self {
        self.0.clean_start = clean;
        self
    }
    /// A QoS 0, non-retained will.
    pub fn will(mut self, topic: &str, payload: &[u8]) -> Self {
        self.0.will = Some(LastWill {
            topic: topic.to_string(),
            payload: Bytes::copy_from_slice(payload),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::default(),
        });
        self
    }
    pub fn will_qos(mut self, level: u8) -> Self {
        self.will_mut().qos = qos(level);
        self
    }
    pub fn will_retain(mut self) -> Self {
        self.will_mut().retain = true;
        self
    }
    pub fn will_delay(mut self, seconds: u32) -> Self {
        self.will_mut().properties.will_delay_interval = Some(seconds);
        self
    }
    fn will_mut(&mut self) -> &mut LastWill {
        self.0.will.as_mut().expect("call .will(..) first")
    }
    pub fn username(mut self, name: &str) -> Self {
        self.0.username = Some(name.to_string());
        self
    }
    pub fn password(mut self, password: &[u8]) -> Self {
        self.0.password = Some(Bytes::copy_from_slice(password));
        self
    }
    pub fn session_expiry(mut self, seconds: u32) -> Self {
        self.0.properties.session_expiry_interval = Some(seconds);
        self
    }
    pub fn receive_maximum(mut self, n: u16) -> Self {
        self.0.properties.receive_maximum = Some(n);
        self
    }
    pub fn topic_alias_maximum(mut self, n: u16) -> Self {
        self.0.properties.topic_alias_maximum = Some(n);
        self
    }
    pub fn maximum_packet_size(mut self, n: u32) -> Self {
        self.0.properties.maximum_packet_size = Some(n);
        self
    }
    pub fn auth_method(mut self, method: &str) -> Self {
        self.0.properties.authentication_method = Some(method.to_string());
        self
    }
    pub fn build(self) -> Packet {
        Packet::Connect(Box::new(self.0))
    }
}

impl From<ConnectBuilder> for Packet {
    fn from(b: ConnectBuilder) -> Packet {
        b.build()
    }
}

/// PUBLISH builder. Defaults: QoS 0, no packet id, no flags.
#[derive(Debug, Clone)]
pub struct PublishBuilder(Publish);

/// A PUBLISH of `payload` to `topic`.
pub fn publish(topic: &str, payload: &[u8]) -> PublishBuilder {
    PublishBuilder(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: topic.into(),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(payload),
    })
}

impl PublishBuilder {
    pub fn qos(mut self, level: u8) -> Self {
        self.0.qos = qos(level);
        self
    }
    pub fn id(mut self, packet_id: u16) -> Self {
        self.0.packet_id = Some(packet_id);
        self
    }
    pub fn dup(mut self) -> Self {
        self.0.dup = true;
        self
    }
    pub fn retain(mut self) -> Self {
        self.0.retain = true;
        self
    }
    pub fn alias(mut self, alias: u16) -> Self {
        self.0.properties.topic_alias = Some(alias);
        self
    }
    pub fn expiry(mut self, seconds: u32) -> Self {
        self.0.properties.message_expiry_interval = Some(seconds);
        self
    }
    /// A Subscription Identifier (only servers may send one on PUBLISH).
    pub fn sub_id(mut self, id: u32) -> Self {
        self.0.properties.subscription_identifiers.push(id);
        self
    }
    pub fn build(self) -> Packet {
        Packet::Publish(self.0)
    }
}

impl From<PublishBuilder> for Packet {
    fn from(b: PublishBuilder) -> Packet {
        b.build()
    }
}

/// SUBSCRIBE builder; options set with the methods apply to every filter.
#[derive(Debug, Clone)]
pub struct SubscribeBuilder(Subscribe);

/// SUBSCRIBE with packet id `id` to `(filter, maximum QoS)` pairs.
pub fn subscribe(id: u16, filters: &[(&str, u8)]) -> SubscribeBuilder {
    SubscribeBuilder(Subscribe {
        packet_id: id,
        properties: Properties::default(),
        filters: filters
            .iter()
            .map(|&(f, q)| {
                (
                    f.to_string(),
                    SubscriptionOptions {
                        qos: qos(q),
                        no_local: false,
                        retain_as_published: false,
                        retain_handling: 0,
                    },
                )
            })
            .collect(),
    })
}

impl SubscribeBuilder {
    pub fn no_local(mut self) -> Self {
        for (_, o) in &mut self.0.filters {
            o.no_local = true;
        }
        self
    }
    pub fn retain_handling(mut self, n: u8) -> Self {
        for (_, o) in &mut self.0.filters {
            o.retain_handling = n;
        }
        self
    }
    pub fn sub_id(mut self, id: u32) -> Self {
        self.0.properties.subscription_identifiers = vec![id];
        self
    }
    pub fn build(self) -> Packet {
        Packet::Subscribe(self.0)
    }
}

impl From<SubscribeBuilder> for Packet {
    fn from(b: SubscribeBuilder) -> Packet {
        b.build()
    }
}

/// UNSUBSCRIBE with packet id `id`.
pub fn unsubscribe(id: u16, filters: &[&str]) -> Packet {
    Packet::Unsubscribe(Unsubscribe {
        packet_id: id,
        properties: Properties::default(),
        filters: filters.iter().map(|f| f.to_string()).collect(),
    })
}

fn response(packet_id: u16) -> PubResponse {
    PubResponse {
        packet_id,
        reason: rc::SUCCESS,
        properties: Properties::default(),
    }
}

pub fn puback(id: u16) -> Packet {
    Packet::PubAck(response(id))
}
pub fn pubrec(id: u16) -> Packet {
    Packet::PubRec(response(id))
}
/// PUBREC with a reason code (MQTT 5; >= 0x80 refuses the message).
pub fn pubrec_with(id: u16, reason: u8) -> Packet {
    Packet::PubRec(PubResponse {
        reason,
        ..response(id)
    })
}
pub fn pubrel(id: u16) -> Packet {
    Packet::PubRel(response(id))
}
pub fn pubcomp(id: u16) -> Packet {
    Packet::PubComp(response(id))
}
pub fn pingreq() -> Packet {
    Packet::PingReq
}

/// DISCONNECT builder. Default: reason 0x00, no properties.
#[derive(Debug, Clone)]
pub struct DisconnectBuilder(Disconnect);

pub fn disconnect() -> DisconnectBuilder {
    DisconnectBuilder(Disconnect {
        reason: rc::SUCCESS,
        properties: Properties::default(),
    })
}

impl DisconnectBuilder {
    pub fn reason(mut self, reason: u8) -> Self {
        self.0.reason = reason;
        self
    }
    pub fn session_expiry(mut self, seconds: u32) -> Self {
        self.0.properties.session_expiry_interval = Some(seconds);
        self
    }
    pub fn build(self) -> Packet {
        Packet::Disconnect(self.0)
    }
}

impl From<DisconnectBuilder> for Packet {
    fn from(b: DisconnectBuilder) -> Packet {
        b.build()
    }
}

/// Unwrap a received packet as the expected type, or fail showing it.
pub trait PacketExt {
    fn connack(self) -> ConnAck;
    fn publish(self) -> Publish;
    fn puback(self) -> PubResponse;
    fn pubrec(self) -> PubResponse;
    fn pubrel(self) -> PubResponse;
    fn pubcomp(self) -> PubResponse;
    fn suback(self) -> SubAck;
    fn unsuback(self) -> UnsubAck;
    fn disconnect(self) -> Disconnect;
}

macro_rules! expect_variant {
    ($name:ident, $variant:ident, $ty:ty) => {
        fn $name(self) -> $ty {
            match self {
                Packet::$variant(p) => p,
                other => panic!(
                    concat!("expected ", stringify!($variant), ", got {:?}"),
                    other
                ),
            }
        }
    };
}

impl PacketExt for Packet {
    fn connack(self) -> ConnAck {
        match self {
            Packet::ConnAck(p) => p,
            other => panic!("expected ConnAck, got {other:?}"),
        }
    }
    expect_variant!(publish, Publish, Publish);
    expect_variant!(puback, PubAck, PubResponse);
    expect_variant!(pubrec, PubRec, PubResponse);
    expect_variant!(pubrel, PubRel, PubResponse);
    expect_variant!(pubcomp, PubComp, PubResponse);
    expect_variant!(suback, SubAck, SubAck);
    expect_variant!(unsuback, UnsubAck, UnsubAck);
    expect_variant!(disconnect, Disconnect, Disconnect);
}

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// One in-memory client connection, by index into the harness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn(usize);

struct Client {
    channel: Channel,
    /// The driver's limits: connect timeout, keep alive.
    watchdog: Watchdog,
    /// Packets the server wrote to this client, not yet taken by the test.
    inbox: VecDeque<Packet>,
    /// The driver called `finish` (transport closed).
    finished: bool,
    /// Maximum Packet Size from the client's CONNECT, checked on every
    /// packet the server writes [MQTT-3.1.2-24].
    max_packet_size: Option<u32>,
    /// Wake-ups the core signalled and the harness consumed.
    signalled_wakes: usize,
}

/// One broker, several channels, virtual time.
pub struct Harness {
    broker: Arc<Broker>,
    config: Arc<ChannelConfig>,
    base: Instant,
    elapsed: Duration,
    clients: Vec<Client>,
}

impl Default for Harness {
    fn default() -> Self {
        Harness::new()
    }
}

impl Harness {
    /// Default broker and channel settings.
    pub fn new() -> Harness {
        Harness::with_config(ChannelConfig::default())
    }

    /// Default broker, the given channel settings.
    pub fn with_config(config: ChannelConfig) -> Harness {
        Harness::with_broker(Broker::new(BrokerConfig::default()), config)
    }

    /// The given broker (e.g. built with `Broker::with_seams`) and settings.
    pub fn with_broker(broker: Broker, config: ChannelConfig) -> Harness {
        Harness {
            broker: Arc::new(broker),
            config: Arc::new(config),
            base: Instant::now(),
            elapsed: Duration::ZERO,
            clients: Vec::new(),
        }
    }

    /// The virtual now.
    pub fn now(&self) -> Instant {
        self.base + self.elapsed
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// A new connection that has sent nothing yet.
    pub fn open(&mut self) -> Conn {
        let port = 40000 + self.clients.len() as u16;
        let peer: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
        let channel = Channel::new(
            self.broker.clone(),
            self.config.clone(),
            Some(peer),
            self.now(),
        );
        let watchdog = Watchdog::new(self.now());
        self.clients.push(Client {
            channel,
            watchdog,
            inbox: VecDeque::new(),
            finished: false,
            max_packet_size: None,
            signalled_wakes: 0,
        });
        Conn(self.clients.len() - 1)
    }

    /// Open a connection, send `connect`, and return the CONNACK (anything
    /// after it, e.g. resent messages, stays in the inbox).
    pub fn connect(&mut self, connect: impl Into<Packet>) -> (Conn, ConnAck) {
        let c = self.open();
        self.send(c, connect);
        let ack = self.next(c).connack();
        (c, ack)
    }

    /// Open a connection and complete a successful CONNECT.
    pub fn connected(&mut self, connect: impl Into<Packet>) -> Conn {
        let (c, ack) = self.connect(connect);
        assert_eq!(ack.code, rc::SUCCESS, "CONNACK refused: {ack:?}");
        assert!(!self.is_closed(c));
        c
    }

    /// Subscribe `c` and check every filter was granted the QoS asked for.
    pub fn subscribed(&mut self, c: Conn, id: u16, filters: &[(&str, u8)]) {
        self.send(c, subscribe(id, filters));
        let ack = self.next(c).suback();
        assert_eq!(ack.packet_id, id);
        let wanted: Vec<u8> = filters.iter().map(|&(_, q)| q).collect();
        assert_eq!(ack.reasons, wanted, "SUBACK");
    }

    /// Send a packet from the client through the codec (encoded for the
    /// channel's version, decoded as the server's reader would).
    pub fn send(&mut self, c: Conn, packet: impl Into<Packet>) {
        let packet = packet.into();
        let version = self.client(c).channel.version();
        if let Packet::Connect(connect) = &packet {
            self.client_mut(c).max_packet_size = connect.properties.maximum_packet_size;
        }
        let mut buf = BytesMut::new();
        encode(&packet, version, &mut buf)
            .unwrap_or_else(|e| panic!("client packet {packet:?} does not encode: {e}"));
        self.send_bytes(c, &buf);
    }

    /// Feed raw bytes to the server's reader for `c`.
    pub fn send_bytes(&mut self, c: Conn, bytes: &[u8]) {
        let now = self.now();
        self.client_mut(c).watchdog.input(bytes.len(), false, now);
        let mut buf = BytesMut::from(bytes);
        loop {
            let client = self.client(c);
            if client.finished || client.channel.is_closed() {
                break;
            }
            let version = client.channel.version();
            let max = client.channel.max_packet_size();
            match decode(&mut buf, version, max) {
                Ok(Some(packet)) => self.send_decoded(c, packet),
                Ok(None) => break,
                Err(e) => {
                    self.decode_error(c, e);
                    break;
                }
            }
        }
    }

    /// Hand a packet to the channel without the codec.
    pub fn send_decoded(&mut self, c: Conn, packet: Packet) {
        let now = self.now();
        let client = self.client_mut(c);
        client.watchdog.input(0, true, now);
        client.channel.handle_packet(packet, now);
        self.collect(c.0);
        self.pump();
    }

    /// The server's reader failed with `error`.
    pub fn decode_error(&mut self, c: Conn, error: DecodeError) {
        let now = self.now();
        self.client_mut(c).channel.handle_decode_error(&error, now);
        self.collect(c.0);
        self.pump();
    }

    /// The transport of `c` is gone (no DISCONNECT).
    pub fn drop_connection(&mut self, c: Conn) {
        let now = self.now();
        let client = self.client_mut(c);
        client.channel.finish(now);
        client.finished = true;
        self.pump();
    }

    /// The server shuts `c` down.
    pub fn shutdown(&mut self, c: Conn) {
        self.client_mut(c).channel.shutdown();
        self.collect(c.0);
        self.pump();
    }

    /// Move virtual time forward: timeouts on every channel, then the
    /// broker's tick (delayed wills, session expiry).
    pub fn advance(&mut self, by: Duration) {
        self.elapsed += by;
        let now = self.now();
        for i in 0..self.clients.len() {
            if !self.clients[i].finished {
                self.clients[i].channel.handle_timeout(now);
                self.collect(i);
            }
        }
        self.broker.tick(now);
        self.pump();
    }

    /// Run the drivers after something outside the channels (e.g. an
    /// administrative kick) signalled them.
    pub fn settle(&mut self) {
        self.pump();
    }

    /// Every packet the server wrote to `c` since the last call.
    pub fn take(&mut self, c: Conn) -> Vec<Packet> {
        self.client_mut(c).inbox.drain(..).collect()
    }

    /// The oldest packet the server wrote to `c`.
    pub fn next(&mut self, c: Conn) -> Packet {
        self.client_mut(c)
            .inbox
            .pop_front()
            .unwrap_or_else(|| panic!("client {c:?} received nothing"))
    }

    /// Exactly one packet was written to `c`.
    pub fn expect_one(&mut self, c: Conn) -> Packet {
        let mut packets = self.take(c);
        assert_eq!(packets.len(), 1, "expected one packet, got {packets:?}");
        packets.remove(0)
    }

    /// Nothing was written to `c`.
    pub fn assert_silent(&mut self, c: Conn) {
        let packets = self.take(c);
        assert!(packets.is_empty(), "expected nothing, got {packets:?}");
    }

    /// The server closed (or was told to close) the connection.
    pub fn is_closed(&self, c: Conn) -> bool {
        self.client(c).channel.is_closed()
    }

    pub fn channel(&self, c: Conn) -> &Channel {
        &self.client(c).channel
    }

    /// Direct access to the channel, as the driver has it (auth futures,
    /// transport user name); call [`Harness::settle`] afterwards.
    pub fn channel_mut(&mut self, c: Conn) -> &mut Channel {
        &mut self.client_mut(c).channel
    }

    /// Collect `c`'s output after direct channel calls, then settle.
    pub fn flush(&mut self, c: Conn) {
        self.collect(c.0);
        self.pump();
    }

    /// How many times the core signalled `c`'s driver so far.
    pub fn signalled_wakes(&self, c: Conn) -> usize {
        self.client(c).signalled_wakes
    }

    /// Time from now until the connection's next deadline (the channel's
    /// or its watchdog's).
    pub fn deadline_in(&self, c: Conn) -> Option<Duration> {
        let now = self.now();
        let client = self.client(c);
        [
            client.channel.next_deadline(),
            client.watchdog.deadline(&client.channel),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|d| d.saturating_duration_since(now))
    }

    fn client(&self, c: Conn) -> &Client {
        &self.clients[c.0]
    }

    fn client_mut(&mut self, c: Conn) -> &mut Client {
        &mut self.clients[c.0]
    }

    /// Move the channel's output to the client's inbox, checking each
    /// packet on the wire; finish a closed channel. Returns true if
    /// anything happened.
    fn collect(&mut self, i: usize) -> bool {
        let now = self.now();
        let client = &mut self.clients[i];
        if !client.finished {
            client
                .watchdog
                .check(&mut client.channel, self.broker.metrics(), now);
        }
        let output = client.channel.take_output();
        let moved = !output.is_empty();
        let version = client.channel.version();
        for packet in output {
            check_wire(&packet, version, client.max_packet_size);
            client.inbox.push_back(packet);
        }
        if client.channel.is_closed() && !client.finished {
            client.channel.finish(now);
            client.finished = true;
            return true;
        }
        moved
    }

    /// Wake every live channel until nothing moves.
    fn pump(&mut self) {
        for _round in 0..1000 {
            let now = self.now();
            let mut progressed = false;
            for i in 0..self.clients.len() {
                if self.clients[i].finished {
                    progressed |= self.collect(i);
                    continue;
                }
                let signalled = self.clients[i]
                    .channel
                    .signal()
                    .is_some_and(|s| take_wake(&s));
                self.clients[i].signalled_wakes += usize::from(signalled);
                self.clients[i].channel.handle_wake(now);
                let produced = self.clients[i].channel.has_output();
                assert!(
                    !produced || signalled,
                    "channel {i} produced output on a wake-up the core never signalled"
                );
                progressed |= self.collect(i);
            }
            if !progressed {
                return;
            }
        }
        panic!("harness did not settle");
    }
}

/// Consume a pending wake permit of `signal`, if any.
fn take_wake(signal: &ConnectionSignal) -> bool {
    let notified = std::pin::pin!(signal.notified());
    let mut cx = Context::from_waker(Waker::noop());
    notified.poll(&mut cx).is_ready()
}

/// What the channel emits must survive the codec for its version, and
/// respect the client's Maximum Packet Size.
fn check_wire(packet: &Packet, version: ProtocolVersion, max_packet_size: Option<u32>) {
    let mut buf = BytesMut::new();
    encode(packet, version, &mut buf).unwrap_or_else(|e| {
        panic!("server packet {packet:?} does not encode for {version:?}: {e}")
    });
    if let Some(max) = max_packet_size {
        assert!(
            buf.len() <= max as usize,
            "server packet of {} bytes exceeds the client's maximum packet size {max} [MQTT-3.1.2-24]: {packet:?}",
            buf.len()
        );
    }
    let bytes = buf.clone();
    let decoded = decode(&mut buf, version, usize::MAX)
        .unwrap_or_else(|e| panic!("server packet {packet:?} does not decode for {version:?}: {e}"))
        .expect("a complete packet");
    assert!(buf.is_empty(), "bytes left after decoding {packet:?}");
    if version.is_v5() {
        assert_eq!(&decoded, packet, "MQTT 5 round trip");
    } else {
        let mut again = BytesMut::new();
        encode(&decoded, version, &mut again).expect("re-encode");
        assert_eq!(again, bytes, "3.x round trip");
    }
}

/// Seconds as a `Duration`.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Milliseconds as a `Duration`.
pub fn millis(n: u64) -> Duration {
    Duration::from_millis(n)
}
