//! Test support: a channel driven with virtual time (with the drivers'
//! [`Watchdog`] for the connect window, keep alive and sleep), a message
//! DSL, and an MQTT-side peer that talks to the core directly.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tributary_core::auth::{AclRule, AllowAll, Permission, RuleAction, RuleAuthorizer, Who};
use tributary_core::cluster::SingleNode;
use tributary_core::connection::{Connection, Watchdog};
use tributary_core::storage::MemoryPersistence;
use tributary_core::{
    Broker, BrokerConfig, ClientInfo, Message, SessionHandle, SessionRequest, SubOptions,
};
use tributary_mqttsn::channel::{Channel, ChannelConfig};
use tributary_mqttsn::packet::{
    Connect, Packet, Publish, QoS, ReturnCode, SubTopic, Subscribe, TopicIdType, WillTopic,
};
use tributary_mqttsn::topics::Predefined;

pub fn broker() -> Arc<Broker> {
    Arc::new(Broker::new(BrokerConfig::default()))
}

/// A broker whose ACL denies publish and subscribe on `denied/#`.
pub fn broker_denying(filter: &str) -> Arc<Broker> {
    let authz = RuleAuthorizer {
        rules: vec![AclRule {
            permission: Permission::Deny,
            who: vec![Who::All],
            action: RuleAction::All,
            topics: vec![filter.to_string()],
        }],
        no_match: Permission::Allow,
    };
    Arc::new(Broker::with_seams(
        BrokerConfig::default(),
        Box::new(AllowAll),
        Box::new(authz),
        Box::new(MemoryPersistence),
        Box::new(SingleNode),
    ))
}

pub fn config() -> ChannelConfig {
    ChannelConfig {
        predefined: Arc::new(Predefined::new([
            (1, "pre/one".to_string()),
            (2, "ab".to_string()),
        ])),
        retry_interval: Duration::from_secs(10),
        max_retries: 3,
        ..ChannelConfig::default()
    }
}

/// One MQTT-SN client's channel with a virtual clock.
pub struct Sn {
    pub ch: Channel,
    pub now: Instant,
    pub watchdog: Watchdog,
    broker: Arc<Broker>,
}

impl Sn {
    pub fn new(broker: &Arc<Broker>, config: ChannelConfig, t0: Instant) -> Sn {
        let ch = Channel::new(
            broker.clone(),
            Arc::new(config),
            Some("127.0.0.1:5000".parse().expect("addr")),
            t0,
        );
        Sn {
            ch,
            now: t0,
            watchdog: Watchdog::new(t0),
            broker: broker.clone(),
        }
    }

    /// Send one message; returns what the gateway answered.
    pub fn send(&mut self, p: Packet) -> Vec<Packet> {
        self.watchdog.input(1, true, self.now);
        self.ch.handle_packet(p, self.now);
        self.out()
    }

    /// Deliveries waiting in the core are flushed (the driver's wake-up).
    pub fn wake(&mut self) -> Vec<Packet> {
        self.ch.handle_wake(self.now);
        self.out()
    }

    /// Advance the clock by `d` and fire what is due (the channel's
    /// deadline, the watchdog's).
    pub fn advance(&mut self, d: Duration) -> Vec<Packet> {
        self.now += d;
        if self.ch.next_deadline().is_some_and(|at| at <= self.now) {
            self.ch.handle_timeout(self.now);
        }
        self.out()
    }

    /// The next instant something is due: the channel's or the watchdog's.
    pub fn deadline(&self) -> Option<Instant> {
        [
            Connection::next_deadline(&self.ch),
            self.watchdog.deadline(&self.ch),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The output, after the watchdog had its look (as the driver does).
    fn out(&mut self) -> Vec<Packet> {
        self.watchdog
            .check(&mut self.ch, self.broker.metrics(), self.now);
        self.ch.take_output()
    }

    /// Connect (no will) and check the CONNACK.
    pub fn connect(&mut self, client_id: &str, clean: bool, duration: u16) {
        let out = self.send(connect(client_id, clean, duration, false));
        assert_eq!(
            out.first(),
            Some(&Packet::ConnAck {
                code: ReturnCode::Accepted
            }),
            "{out:?}"
        );
    }

    /// REGISTER `name` from the client; returns the assigned id.
    pub fn register(&mut self, name: &str, msg_id: u16) -> u16 {
        match self
            .send(Packet::Register {
                topic_id: 0,
                msg_id,
                topic_name: name.into(),
            })
            .as_slice()
        {
            [Packet::RegAck {
                topic_id,
                msg_id: m,
                code: ReturnCode::Accepted,
            }] if *m == msg_id => *topic_id,
            other => panic!("expected REGACK, got {other:?}"),
        }
    }

    pub fn finish(&mut self) {
        self.ch.finish(self.now);
    }
}

pub fn connect(client_id: &str, clean: bool, duration: u16, will: bool) -> Packet {
    Packet::Connect(Connect {
        will,
        clean_session: clean,
        protocol_id: 1,
        duration,
        client_id: client_id.into(),
    })
}

pub fn will_topic(topic: &str, qos: QoS) -> Packet {
    Packet::WillTopic(Some(WillTopic {
        qos,
        retain: false,
        topic: topic.into(),
    }))
}

pub fn publish(
    kind: TopicIdType,
    topic_id: u16,
    msg_id: u16,
    qos: QoS,
    payload: &'static [u8],
) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic_id_type: kind,
        topic_id,
        msg_id,
        payload: Bytes::from_static(payload),
    })
}

pub fn subscribe(topic: SubTopic, msg_id: u16, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        dup: false,
        qos,
        msg_id,
        topic,
    })
}

pub fn short(name: &str) -> u16 {
    let b = name.as_bytes();
    u16::from_be_bytes([b[0], b[1]])
}

/// An MQTT-side client talking to the core directly.
pub struct Peer {
    pub broker: Arc<Broker>,
    pub handle: SessionHandle,
}

impl Peer {
    pub fn new(broker: &Arc<Broker>, client_id: &str, now: Instant) -> Peer {
        let opened = broker.open_session(
            SessionRequest {
                client: ClientInfo {
                    client_id: client_id.into(),
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

    pub fn subscribe(&self, filter: &str, qos: tributary_core::QoS, now: Instant) {
        self.broker
            .subscribe(&self.handle, filter, SubOptions::at(qos), now)
            .expect("subscribe");
    }

    /// Everything delivered so far as (topic, payload, qos), acknowledged.
    pub fn received(&self, now: Instant) -> Vec<(String, Bytes, tributary_core::QoS)> {
        let out = self
            .handle
            .take_for_send(now, 1000, 1000, self.broker.metrics(), |_| true);
        out.into_iter()
            .map(|o| {
                if let Some(id) = o.packet_id {
                    self.handle.acknowledge(id);
                    if self.handle.received(id, true) {
                        self.handle.complete_qos2(id);
                    }
                }
                (
                    o.delivery.message.topic.to_string(),
                    o.delivery.message.payload.clone(),
                    o.delivery.qos,
                )
            })
            .collect()
    }

    pub fn publish(
        &self,
        topic: &str,
        payload: &'static [u8],
        qos: tributary_core::QoS,
        now: Instant,
    ) {
        self.broker.publish(
            Message::new(topic, Bytes::from_static(payload), qos, false),
            now,
        );
    }
}
