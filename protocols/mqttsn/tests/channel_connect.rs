//! Connect, the will flow and its updates, keep alive, takeover, and
//! persistent sessions (MQTT-SN 1.2 §6.3, §6.4, §6.6).

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use support::*;
use tributary_core::QoS as CoreQoS;
use tributary_mqttsn::packet::{Packet, QoS, ReturnCode, SubTopic, TopicIdType, WillTopic};

#[test]
fn connect_without_will_is_answered_with_connack() {
    let b = broker();
    let mut c = Sn::new(&b, config(), Instant::now());
    c.connect("dev1", true, 60);
    assert_eq!(c.ch.client_id(), Some("dev1"));
    assert_eq!(
        c.send(Packet::PingReq { client_id: None }),
        vec![Packet::PingResp]
    );
}

#[test]
fn bad_protocol_id_and_client_id_are_refused() {
    let b = broker();
    let mut c = Sn::new(&b, config(), Instant::now());
    let mut bad = connect("dev1", true, 60, false);
    if let Packet::Connect(ref mut c) = bad {
        c.protocol_id = 2;
    }
    assert_eq!(
        c.send(bad),
        vec![Packet::ConnAck {
            code: ReturnCode::NotSupported
        }]
    );
    assert!(c.ch.is_closed());
    let mut c = Sn::new(&b, config(), Instant::now());
    assert_eq!(
        c.send(connect("", true, 60, false)),
        vec![Packet::ConnAck {
            code: ReturnCode::NotSupported
        }]
    );
}

#[test]
fn messages_before_connect_are_dropped() {
    let b = broker();
    let mut c = Sn::new(&b, config(), Instant::now());
    assert_eq!(
        c.send(subscribe(SubTopic::Name("a".into()), 1, QoS::AtMostOnce)),
        vec![]
    );
    assert_eq!(
        c.send(Packet::WillMsg {
            payload: Bytes::new()
        }),
        vec![]
    );
    assert!(!c.ch.is_closed());
}

#[test]
fn will_flow_then_will_published_when_keep_alive_expires() {
    let t0 = Instant::now();
    let b = broker();
    let watcher = Peer::new(&b, "watcher", t0);
    watcher.subscribe("will/#", CoreQoS::AtLeastOnce, t0);
    let mut c = Sn::new(&b, config(), t0);
    assert_eq!(
        c.send(connect("dev1", true, 10, true)),
        vec![Packet::WillTopicReq]
    );
    assert_eq!(
        c.send(will_topic("will/dev1", QoS::AtLeastOnce)),
        vec![Packet::WillMsgReq]
    );
    assert_eq!(
        c.send(Packet::WillMsg {
            payload: Bytes::from_static(b"gone")
        }),
        vec![Packet::ConnAck {
            code: ReturnCode::Accepted
        }]
    );
    // Keep alive 10 s, supervised at 1.5 x.
    assert_eq!(c.advance(Duration::from_secs(14)), vec![]);
    assert!(!c.ch.is_closed());
    c.advance(Duration::from_secs(2));
    assert!(c.ch.is_closed());
    c.finish();
    assert_eq!(
        watcher.received(c.now),
        vec![(
            "will/dev1".into(),
            Bytes::from_static(b"gone"),
            CoreQoS::AtLeastOnce
        )]
    );
}

#[test]
fn empty_will_topic_means_no_will() {
    let b = broker();
    let mut c = Sn::new(&b, config(), Instant::now());
    assert_eq!(
        c.send(connect("dev1", true, 10, true)),
        vec![Packet::WillTopicReq]
    );
    assert_eq!(
        c.send(Packet::WillTopic(None)),
        vec![Packet::ConnAck {
            code: ReturnCode::Accepted
        }]
    );
}

#[test]
fn disconnect_discards_the_will() {
    let t0 = Instant::now();
    let b = broker();
    let watcher = Peer::new(&b, "watcher", t0);
    watcher.subscribe("will/#", CoreQoS::AtMostOnce, t0);
    let mut c = Sn::new(&b, config(), t0);
    c.send(connect("dev1", true, 10, true));
    c.send(will_topic("will/dev1", QoS::AtMostOnce));
    c.send(Packet::WillMsg {
        payload: Bytes::from_static(b"gone"),
    });
    assert_eq!(
        c.send(Packet::Disconnect { duration: None }),
        vec![Packet::Disconnect { duration: None }]
    );
    assert!(c.ch.is_closed());
    c.finish();
    assert_eq!(watcher.received(t0), vec![]);
}

#[test]
fn will_updates_replace_topic_and_message() {
    let t0 = Instant::now();
    let b = broker();
    let watcher = Peer::new(&b, "watcher", t0);
    watcher.subscribe("#", CoreQoS::AtMostOnce, t0);
    let mut c = Sn::new(&b, config(), t0);
    c.send(connect("dev1", true, 10, true));
    c.send(will_topic("will/old", QoS::AtMostOnce));
    c.send(Packet::WillMsg {
        payload: Bytes::from_static(b"old"),
    });
    let upd = Packet::WillTopicUpd(Some(WillTopic {
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "will/new".into(),
    }));
    assert_eq!(
        c.send(upd),
        vec![Packet::WillTopicResp {
            code: ReturnCode::Accepted
        }]
    );
    assert_eq!(
        c.send(Packet::WillMsgUpd {
            payload: Bytes::from_static(b"new")
        }),
        vec![Packet::WillMsgResp {
            code: ReturnCode::Accepted
        }]
    );
    c.advance(Duration::from_secs(16));
    c.finish();
    assert_eq!(
        watcher.received(c.now),
        vec![(
            "will/new".into(),
            Bytes::from_static(b"new"),
            CoreQoS::AtMostOnce
        )]
    );

    // Deleting the will: nothing is published when the client is lost.
    let mut d = Sn::new(&b, config(), c.now);
    d.send(connect("dev2", true, 10, true));
    d.send(will_topic("will/dev2", QoS::AtMostOnce));
    d.send(Packet::WillMsg {
        payload: Bytes::from_static(b"x"),
    });
    assert_eq!(
        d.send(Packet::WillTopicUpd(None)),
        vec![Packet::WillTopicResp {
            code: ReturnCode::Accepted
        }]
    );
    // WILLMSGUPD without a will topic is not supported.
    assert_eq!(
        d.send(Packet::WillMsgUpd {
            payload: Bytes::new()
        }),
        vec![Packet::WillMsgResp {
            code: ReturnCode::NotSupported
        }]
    );
    d.advance(Duration::from_secs(16));
    d.finish();
    assert_eq!(watcher.received(d.now), vec![]);
}

#[test]
fn same_client_id_elsewhere_takes_over() {
    let t0 = Instant::now();
    let b = broker();
    let mut old = Sn::new(&b, config(), t0);
    old.connect("dev1", true, 60);
    let mut new = Sn::new(&b, config(), t0);
    new.connect("dev1", true, 60);
    // The old channel is kicked: DISCONNECT, and it no longer owns the session.
    assert_eq!(old.wake(), vec![Packet::Disconnect { duration: None }]);
    assert!(old.ch.is_closed());
    old.finish();
    assert_eq!(b.session_count(), 1);
    assert_eq!(
        new.send(Packet::PingReq { client_id: None }),
        vec![Packet::PingResp]
    );
}

#[test]
fn persistent_session_keeps_subscriptions_and_queues_messages() {
    let t0 = Instant::now();
    let b = broker();
    let mut c = Sn::new(&b, config(), t0);
    c.connect("dev1", false, 60);
    c.send(subscribe(SubTopic::Short(*b"xy"), 1, QoS::AtLeastOnce));
    c.send(Packet::Disconnect { duration: None });
    c.finish();
    let peer = Peer::new(&b, "pub", t0);
    peer.publish("xy", b"while away", CoreQoS::AtLeastOnce, t0);
    let mut again = Sn::new(&b, config(), t0);
    let out = again.send(connect("dev1", false, 60, false));
    assert_eq!(
        out[0],
        Packet::ConnAck {
            code: ReturnCode::Accepted
        }
    );
    match &out[1] {
        Packet::Publish(p) => {
            assert_eq!(
                (p.topic_id_type, p.topic_id, p.qos),
                (TopicIdType::Short, short("xy"), QoS::AtLeastOnce)
            );
            assert_eq!(p.payload, Bytes::from_static(b"while away"));
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    // A clean session starts afresh.
    again.send(Packet::Disconnect { duration: None });
    again.finish();
    let mut clean = Sn::new(&b, config(), t0);
    clean.connect("dev1", true, 60);
    peer.publish("xy", b"nobody", CoreQoS::AtLeastOnce, t0);
    assert_eq!(clean.wake(), vec![]);
}

#[test]
fn reconnect_on_the_same_channel_resumes_in_place() {
    let t0 = Instant::now();
    let b = broker();
    let mut c = Sn::new(&b, config(), t0);
    c.connect("dev1", false, 60);
    let id = c.register("a/b", 1);
    // The CONNACK was lost: the client sends CONNECT again.
    c.connect("dev1", false, 60);
    // The registry survives.
    assert_eq!(c.register("a/b", 2), id);
}
