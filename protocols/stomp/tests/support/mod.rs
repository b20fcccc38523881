//! Test support: a STOMP client driving a [`Channel`] in memory with
//! virtual time, through the connection contract and the drivers'
//! [`Watchdog`] as the gateway does, and a core-level peer standing in for
//! an MQTT client.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tributary_core::auth::{AnonymousGate, RuleAuthorizer};
use tributary_core::cluster::SingleNode;
use tributary_core::connection::{StreamConnection, Watchdog};
use tributary_core::storage::MemoryPersistence;
use tributary_core::{
    Broker, BrokerConfig, ClientInfo, Message, QoS, SessionHandle, SessionRequest, SubOptions,
};
use tributary_stomp::codec::{encode, Version};
use tributary_stomp::{Channel, ChannelConfig, Command, Frame, Output};

pub fn broker() -> Arc<Broker> {
    Arc::new(Broker::new(BrokerConfig::default()))
}

/// A broker that refuses clients without a login.
pub fn strict_broker() -> Arc<Broker> {
    Arc::new(Broker::with_seams(
        BrokerConfig::default(),
        Box::new(AnonymousGate {
            allow_anonymous: false,
        }),
        Box::new(RuleAuthorizer::allow_all()),
        Box::new(MemoryPersistence),
        Box::new(SingleNode),
    ))
}

pub fn config() -> ChannelConfig {
    ChannelConfig {
        heartbeat_send: Duration::ZERO,
        heartbeat_receive: Duration::ZERO,
        ..ChannelConfig::default()
    }
}

/// Frame builder shorthand: `f(Command::Send, &[("destination", "a")], b"x")`.
pub fn f(command: Command, headers: &[(&str, &str)], body: &[u8]) -> Frame {
    let mut frame = Frame::new(command);
    for (k, v) in headers {
        frame.push(*k, *v);
    }
    frame.body = Bytes::copy_from_slice(body);
    frame
}

/// A STOMP client: a channel plus the virtual clock.
pub struct Client {
    pub channel: Channel,
    pub now: Instant,
    /// The driver's limits: connect timeout, the client's heart-beats.
    pub watchdog: Watchdog,
    broker: Arc<Broker>,
    /// Bytes received and not yet decoded (a frame in pieces).
    rbuf: BytesMut,
}

impl Client {
    pub fn new(broker: &Arc<Broker>, config: ChannelConfig, now: Instant) -> Client {
        Client {
            channel: Channel::new(broker.clone(), Arc::new(config), None, now),
            now,
            watchdog: Watchdog::new(now),
            broker: broker.clone(),
            rbuf: BytesMut::new(),
        }
    }

    /// The connection's next deadline: the channel's or its watchdog's.
    pub fn deadline(&self) -> Option<Instant> {
        [
            self.channel.next_deadline(),
            self.watchdog.deadline(&self.channel),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Send a frame through the wire (encode, decode with the channel's
    /// version) and return everything the channel wrote.
    pub fn send(&mut self, frame: Frame) -> Vec<Output> {
        let version = self.channel.version();
        let mut buf = BytesMut::new();
        encode(&frame, version, &mut buf);
        self.feed(&buf)
    }

    /// Raw bytes from the client.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Output> {
        self.rbuf.extend_from_slice(bytes);
        let alive = self.channel.handle_input(&mut self.rbuf, self.now);
        self.watchdog.input(bytes.len(), alive, self.now);
        self.out()
    }

    /// Send and keep only frames.
    pub fn frames(&mut self, frame: Frame) -> Vec<Frame> {
        only_frames(self.send(frame))
    }

    pub fn out(&mut self) -> Vec<Output> {
        self.watchdog
            .check(&mut self.channel, self.broker.metrics(), self.now);
        self.channel.take_output(self.now)
    }

    /// Deliveries waiting in the core, as frames.
    pub fn wake(&mut self) -> Vec<Frame> {
        self.channel.handle_wake(self.now);
        only_frames(self.out())
    }

    pub fn advance(&mut self, d: Duration) -> Vec<Output> {
        self.now += d;
        self.channel.handle_timeout(self.now);
        self.out()
    }

    /// CONNECT with `accept-version` (None = a 1.0 client) and extra headers.
    pub fn connect(&mut self, accept: Option<&str>, extra: &[(&str, &str)]) -> Frame {
        let mut c = Frame::new(Command::Connect);
        if let Some(v) = accept {
            c.push("accept-version", v);
            c.push("host", "localhost");
        }
        for (k, v) in extra {
            c.push(*k, *v);
        }
        let out = self.frames(c);
        assert_eq!(out.len(), 1, "{out:?}");
        out.into_iter().next().expect("CONNECTED")
    }

    pub fn connect12(&mut self) -> Frame {
        let c = self.connect(Some("1.2"), &[]);
        assert_eq!(c.command, Command::Connected);
        c
    }

    pub fn subscribe(&mut self, id: &str, dest: &str, ack: &str) -> Vec<Frame> {
        self.frames(f(
            Command::Subscribe,
            &[
                ("id", id),
                ("destination", dest),
                ("ack", ack),
                ("receipt", "r-sub"),
            ],
            b"",
        ))
    }

    pub fn finish(&mut self) {
        self.channel.finish(self.now);
    }
}

pub fn only_frames(out: Vec<Output>) -> Vec<Frame> {
    out.into_iter()
        .filter_map(|o| match o {
            Output::Frame(f) => Some(f),
            Output::HeartBeat => None,
        })
        .collect()
}

pub fn receipt(id: &str) -> Frame {
    Frame::new(Command::Receipt).with("receipt-id", id)
}

/// A core-level peer (what an MQTT client is to the core).
pub struct Peer {
    pub broker: Arc<Broker>,
    pub handle: SessionHandle,
}

impl Peer {
    pub fn new(broker: &Arc<Broker>, id: &str, now: Instant) -> Peer {
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
        Peer {
            broker: broker.clone(),
            handle: opened.handle,
        }
    }

    pub fn subscribe(&self, filter: &str, qos: QoS, now: Instant) {
        self.broker
            .subscribe(&self.handle, filter, SubOptions::at(qos), now)
            .expect("subscribe");
    }

    pub fn publish(&self, topic: &str, payload: &[u8], now: Instant) -> usize {
        self.broker.publish(
            Message::new(
                topic,
                Bytes::copy_from_slice(payload),
                QoS::AtLeastOnce,
                false,
            ),
            now,
        )
    }

    pub fn publish_retained(&self, topic: &str, payload: &[u8], now: Instant) {
        self.broker.publish(
            Message::new(
                topic,
                Bytes::copy_from_slice(payload),
                QoS::AtMostOnce,
                true,
            ),
            now,
        );
    }

    /// Everything queued for the peer.
    pub fn received(&self, now: Instant) -> Vec<Arc<Message>> {
        let out =
            self.handle
                .take_for_send(now, usize::MAX, usize::MAX, self.broker.metrics(), |_| true);
        for o in &out {
            if let Some(id) = o.packet_id {
                self.handle.acknowledge(id);
            }
        }
        out.into_iter().map(|o| o.delivery.message).collect()
    }
}

pub const V12: Version = Version::V1_2;
