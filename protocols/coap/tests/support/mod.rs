//! Test support: a message-builder DSL, a peer harness driving one
//! [`Channel`] with virtual time (with the drivers' [`Watchdog`] for the
//! `/mqtt/connection` heartbeat window, as the gateway's datagram driver
//! does), and an in-core MQTT-like subscriber.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tributary_coap::block::BlockValue;
use tributary_coap::codec::{decode, encode};
use tributary_coap::msg::opt;
use tributary_coap::{Channel, ChannelConfig, Code, Message, MessageType, Token};
use tributary_core::connection::{Connection, Limit, Watchdog};
use tributary_core::{
    Broker, BrokerConfig, ClientInfo, Delivery, Message as CoreMessage, QoS, SessionHandle,
    SessionRequest, SubOptions,
};

/// Builder for a request or reply: `req(Con, Code::POST, "ps/a?qos=1").mid(3).payload("x")`.
#[derive(Debug, Clone)]
pub struct Req(pub Message);

pub fn req(mtype: MessageType, code: Code, uri: &str) -> Req {
    let mut m = Message::new(mtype, code, 1, Token::new(&[0xAB]).expect("token"));
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        m.add_option(opt::URI_PATH, seg.as_bytes().to_vec());
    }
    for item in query.split('&').filter(|s| !s.is_empty()) {
        m.add_option(opt::URI_QUERY, item.as_bytes().to_vec());
    }
    Req(m)
}

pub fn con(code: Code, uri: &str) -> Req {
    req(MessageType::Con, code, uri)
}

pub fn non(code: Code, uri: &str) -> Req {
    req(MessageType::Non, code, uri)
}

/// An empty ACK or RST for `mid`.
pub fn empty(mtype: MessageType, mid: u16) -> Req {
    Req(Message::empty(mtype, mid))
}

impl Req {
    pub fn mid(mut self, mid: u16) -> Req {
        self.0.message_id = mid;
        self
    }
    pub fn token(mut self, t: &[u8]) -> Req {
        self.0.token = Token::new(t).expect("token");
        self
    }
    pub fn payload(mut self, p: impl Into<Bytes>) -> Req {
        self.0.payload = p.into();
        self
    }
    pub fn option(mut self, number: u16, value: &[u8]) -> Req {
        self.0.add_option(number, value.to_vec());
        self
    }
    pub fn uint(mut self, number: u16, value: u32) -> Req {
        self.0.add_uint_option(number, value);
        self
    }
    pub fn observe(self, v: u32) -> Req {
        self.uint(opt::OBSERVE, v)
    }
    pub fn block1(mut self, num: u32, more: bool, szx: u8) -> Req {
        let b = BlockValue::new(num, more, szx).expect("block");
        self.0.add_option(opt::BLOCK1, b.encode());
        self
    }
    pub fn block2(mut self, num: u32, szx: u8) -> Req {
        let b = BlockValue::new(num, false, szx).expect("block");
        self.0.add_option(opt::BLOCK2, b.encode());
        self
    }
    pub fn bytes(&self) -> Vec<u8> {
        encode(&self.0).expect("encode")
    }
}

/// One peer talking to a channel, with a virtual clock.
pub struct Peer {
    pub broker: Arc<Broker>,
    pub channel: Channel,
    /// The driver's limits (here: the heartbeat window).
    pub watchdog: Watchdog,
    /// Limits the watchdog tripped, in order.
    pub limits: Vec<Limit>,
    pub start: Instant,
    pub now: Instant,
}

pub fn addr() -> SocketAddr {
    "192.0.2.7:40000".parse().expect("addr")
}

impl Peer {
    pub fn new(config: ChannelConfig) -> Peer {
        Peer::with_broker(Arc::new(Broker::new(BrokerConfig::default())), config)
    }

    pub fn with_broker(broker: Arc<Broker>, config: ChannelConfig) -> Peer {
        let now = Instant::now();
        Peer {
            channel: Channel::new(broker.clone(), Arc::new(config), addr(), 42),
            broker,
            watchdog: Watchdog::new(now),
            limits: Vec::new(),
            start: now,
            now,
        }
    }

    /// Send a datagram; returns what the channel answered.
    pub fn send(&mut self, r: &Req) -> Vec<Message> {
        self.send_raw(&r.bytes())
    }

    pub fn send_raw(&mut self, data: &[u8]) -> Vec<Message> {
        let alive = self.channel.handle_datagram(data, self.now);
        self.watchdog.input(data.len(), alive, self.now);
        self.check();
        self.output()
    }

    /// The next instant something is due: the channel's or the watchdog's.
    pub fn deadline(&self) -> Option<Instant> {
        [
            Connection::next_deadline(&self.channel),
            self.watchdog.deadline(&self.channel),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Let the watchdog trip what is due now (as the driver does after
    /// every event). The peer stays in the driver's table afterwards (a
    /// CoAP channel is never closed), so a fresh watchdog watches it on.
    pub fn check(&mut self) {
        if let Some(limit) = self
            .watchdog
            .check(&mut self.channel, self.broker.metrics(), self.now)
        {
            self.limits.push(limit);
            self.watchdog = Watchdog::new(self.now);
        }
    }

    /// A store commit is done: what waited for it goes out (the driver's
    /// `handle_commit` once `commit_wait` resolves).
    pub fn commit(&mut self) -> Vec<Message> {
        Connection::handle_commit(&mut self.channel, self.now);
        self.output()
    }

    pub fn output(&mut self) -> Vec<Message> {
        self.channel
            .take_output()
            .iter()
            .map(|b| decode(b).expect("the channel sends valid messages"))
            .collect()
    }

    /// Send and expect exactly one answer.
    pub fn one(&mut self, r: &Req) -> Message {
        let mut out = self.send(r);
        assert_eq!(out.len(), 1, "expected one answer, got {out:?}");
        out.remove(0)
    }

    /// Deliver pending core deliveries (what the driver does on a wake-up).
    pub fn wake(&mut self) -> Vec<Message> {
        self.channel.handle_wake(self.now);
        self.output()
    }

    /// Advance the virtual clock by `d`, firing every deadline on the way
    /// (the channel's timers and the watchdog's limits).
    pub fn advance(&mut self, d: Duration) -> Vec<Message> {
        let end = self.now + d;
        let mut out = Vec::new();
        while let Some(at) = self.deadline().filter(|at| *at <= end) {
            self.now = at.max(self.now);
            self.tick();
            out.extend(self.output());
        }
        self.now = end;
        self.tick();
        out.extend(self.output());
        out
    }

    fn tick(&mut self) {
        self.channel.handle_timeout(self.now);
        self.check();
    }

    /// Publish from the core side (an MQTT client, say).
    pub fn publish(&self, topic: &str, payload: &str, qos: QoS, retain: bool) {
        self.broker.publish(
            CoreMessage::new(topic, Bytes::from(payload.to_string()), qos, retain),
            self.now,
        );
    }

    pub fn publish_message(&self, m: CoreMessage) {
        self.broker.publish(m, self.now);
    }
}

/// A core-side subscriber standing in for an MQTT client.
pub struct Subscriber {
    pub handle: SessionHandle,
    pub broker: Arc<Broker>,
}

impl Subscriber {
    pub fn new(broker: &Arc<Broker>, id: &str, filter: &str, qos: QoS) -> Subscriber {
        let now = Instant::now();
        let opened = broker.open_session(
            SessionRequest {
                client: ClientInfo {
                    client_id: id.into(),
                    username: None,
                    peer: None,
                    protocol: "mqtt",
                },
                clean_start: true,
                expiry_interval: 0,
                will: None,
            },
            now,
        );
        broker
            .subscribe(&opened.handle, filter, SubOptions::at(qos), now)
            .expect("subscribe");
        Subscriber {
            handle: opened.handle,
            broker: broker.clone(),
        }
    }

    pub fn take(&self, now: Instant) -> Vec<Delivery> {
        self.handle
            .take_for_send(now, 1000, 1000, self.broker.metrics(), |_| true)
            .into_iter()
            .map(|o| o.delivery)
            .collect()
    }
}

pub fn observe_seq(m: &Message) -> Option<u32> {
    m.uint_option(opt::OBSERVE).and_then(Result::ok)
}

pub fn block(m: &Message, number: u16) -> Option<BlockValue> {
    m.option(number).and_then(BlockValue::decode)
}
