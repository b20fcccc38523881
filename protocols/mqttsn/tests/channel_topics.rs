//! Topic ids: REGISTER both ways, predefined ids, short names, wildcard
//! subscriptions, mountpoint and ACL (MQTT-SN 1.2 §6.5–§6.10).

mod support;

use std::time::Instant;

use bytes::Bytes;
use support::*;
use tributary_core::QoS as CoreQoS;
use tributary_mqttsn::packet::{Packet, Publish, QoS, ReturnCode, SubTopic, TopicIdType};

#[test]
fn client_register_ids_start_at_1025_and_publish_reaches_mqtt() {
    let t0 = Instant::now();
    let b = broker();
    let peer = Peer::new(&b, "mqtt", t0);
    peer.subscribe("a/#", CoreQoS::AtLeastOnce, t0);
    let mut c = Sn::new(&b, config(), t0);
    c.connect("dev1", true, 60);
    assert_eq!(c.register("a/b", 1), 1025);
    assert_eq!(c.register("a/c", 2), 1026);
    assert_eq!(c.register("a/b", 3), 1025);
    assert_eq!(
        c.send(publish(
            TopicIdType::Normal,
            1026,
            4,
            QoS::AtLeastOnce,
            b"x"
        )),
        vec![Packet::PubAck {
            topic_id: 1026,
            msg_id: 4,
            code: ReturnCode::Accepted
        }]
    );
    assert_eq!(
        peer.received(t0),
        vec![("a/c".into(), Bytes::from_static(b"x"), CoreQoS::AtLeastOnce)]
    );
}

#[test]
fn unknown_topic_ids_and_bad_names_get_the_right_codes() {
    let b = broker();
    let mut c = Sn::new(&b, config(), Instant::now());
    c.connect("dev1", true, 60);
    // Unregistered normal id and unknown predefined id: "invalid topic id", even at QoS 0.
    assert_eq!(
        c.send(publish(TopicIdType::Normal, 1030, 0, QoS::AtMostOnce, b"x")),
        vec![Packet::PubAck {
            topic_id: 1030,
            msg_id: 0,
            code: ReturnCode::InvalidTopicId
        }]
    );
    assert_eq!(
        c.send(publish(
            TopicIdType::Predefined,
            99,
            5,
            QoS::AtLeastOnce,
            b"x"
        )),
        vec![Packet::PubAck {
            topic_id: 99,
            msg_id: 5,
            code: ReturnCode::InvalidTopicId
        }]
    );
    // A wildcard cannot be registered.
    assert_eq!(
        c.send(Packet::Register {
            topic_id: 0,
            msg_id: 6,
            topic_name: "a/+".into()
        }),
        vec![Packet::RegAck {
            topic_id: 0,
            msg_id: 6,
            code: ReturnCode::NotSupported
        }]
    );
    assert_eq!(
        c.send(subscribe(SubTopic::Predefined(99), 7, QoS::AtMostOnce)),
        vec![Packet::SubAck {
            qos: QoS::AtMostOnce,
            topic_id: 0,
            msg_id: 7,
            code: ReturnCode::InvalidTopicId
        }]
    );
}

#[test]
fn full_registry_answers_congestion() {
    let b = broker();
    let mut cfg = config();
    cfg.max_registered_topics = 1;
    let mut c = Sn::new(&b, cfg, Instant::now());
    c.connect("dev1", true, 60);
    c.register("a", 1);
    assert_eq!(
        c.send(Packet::Register {
            topic_id: 0,
            msg_id: 2,
            topic_name: "b".into()
        }),
        vec![Packet::RegAck {
            topic_id: 0,
            msg_id: 2,
            code: ReturnCode::Congestion
        }]
    );
}

#[test]
fn predefined_and_short_topics_both_ways() {
    let t0 = Instant::now();
    let b = broker();
    let peer = Peer::new(&b, "mqtt", t0);
    peer.subscribe("#", CoreQoS::AtMostOnce, t0);
    let mut c = Sn::new(&b, config(), t0);
    c.connect("dev1", true, 60);
    assert_eq!(
        c.send(subscribe(SubTopic::Predefined(1), 1, QoS::AtLeastOnce)),
        vec![Packet::SubAck {
            qos: QoS::AtLeastOnce,
            topic_id: 1,
            msg_id: 1,
            code: ReturnCode::Accepted
        }]
    );
    assert_eq!(
        c.send(subscribe(SubTopic::Short(*b"zz"), 2, QoS::AtMostOnce)),
        vec![Packet::SubAck {
            qos: QoS::AtMostOnce,
            topic_id: 0,
            msg_id: 2,
            code: ReturnCode::Accepted
        }]
    );
    c.send(publish(
        TopicIdType::Predefined,
        1,
        0,
        QoS::AtMostOnce,
        b"p",
    ));
    c.send(publish(
        TopicIdType::Short,
        short("zz"),
        0,
        QoS::AtMostOnce,
        b"s",
    ));
    assert_eq!(
        peer.received(t0),
        vec![
            (
                "pre/one".into(),
                Bytes::from_static(b"p"),
                CoreQoS::AtMostOnce
            ),
            ("zz".into(), Bytes::from_static(b"s"), CoreQoS::AtMostOnce),
        ]
    );
    // Own messages come back too (no no-local in MQTT-SN): predefined id and short name.
    let back = c.wake();
    let ids: Vec<_> = back
        .iter()
        .map(|p| match p {
            Packet::Publish(p) => (p.topic_id_type, p.topic_id),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        ids,
        vec![
            (TopicIdType::Predefined, 1),
            (TopicIdType::Short, short("zz"))
        ]
    );
}

#[test]
fn wildcard_subscription_registers_each_topic_before_publishing() {
    let t0 = Instant::now();
    let b = broker();
    let peer = Peer::new(&b, "mqtt", t0);
    let mut c = Sn::new(&b, config(), t0);
    c.connect("dev1", true, 60);
    assert_eq!(
        c.send(subscribe(SubTopic::Name("s/+".into()), 1, QoS::AtMostOnce)),
        vec![Packet::SubAck {
            qos: QoS::AtMostOnce,
            topic_id: 0,
            msg_id: 1,
            code: ReturnCode::Accepted
        }]
    );
    peer.publish("s/one", b"1", CoreQoS::AtMostOnce, t0);
    peer.publish("s/one", b"2", CoreQoS::AtMostOnce, t0);
    peer.publish("s/two", b"3", CoreQoS::AtMostOnce, t0);
    // REGISTER first; the PUBLISHes wait for the REGACK.
    let out = c.wake();
    let [Packet::Register {
        topic_id,
        msg_id,
        topic_name,
    }] = out.as_slice()
    else {
        panic!("expected one REGISTER, got {out:?}");
    };
    assert_eq!((topic_name.as_str(), *topic_id), ("s/one", 1025));
    let out = c.send(Packet::RegAck {
        topic_id: *topic_id,
        msg_id: *msg_id,
        code: ReturnCode::Accepted,
    });
    assert_eq!(out.len(), 3, "{out:?}");
    assert!(matches!(
        &out[0],
        Packet::Publish(Publish { topic_id: 1025, .. })
    ));
    assert!(matches!(
        &out[1],
        Packet::Publish(Publish { topic_id: 1025, .. })
    ));
    let Packet::Register {
        topic_id: id2,
        msg_id: m2,
        topic_name: n2,
    } = &out[2]
    else {
        panic!("expected REGISTER for s/two, got {:?}", out[2]);
    };
    assert_eq!((n2.as_str(), *id2), ("s/two", 1026));
    // The client refuses this one: its delivery is dropped, nothing else sent.
    assert_eq!(
        c.send(Packet::RegAck {
            topic_id: *id2,
            msg_id: *m2,
            code: ReturnCode::NotSupported
        }),
        vec![]
    );
}

#[test]
fn concrete_subscription_gets_its_topic_id_in_suback() {
    let t0 = Instant::now();
    let b = broker();
    let peer = Peer::new(&b, "mqtt", t0);
    let mut c = Sn::new(&b, config(), t0);
    c.connect("dev1", true, 60);
    let out = c.send(subscribe(
        SubTopic::Name("room/temp".into()),
        1,
        QoS::AtMostOnce,
    ));
    assert_eq!(
        out,
        vec![Packet::SubAck {
            qos: QoS::AtMostOnce,
            topic_id: 1025,
            msg_id: 1,
            code: ReturnCode::Accepted
        }]
    );
    peer.publish("room/temp", b"21", CoreQoS::AtMostOnce, t0);
    let out = c.wake();
    assert!(
        matches!(
            &out[..],
            [Packet::Publish(Publish {
                topic_id: 1025,
                topic_id_type: TopicIdType::Normal,
                ..
            })]
        ),
        "{out:?}"
    );
    assert_eq!(
        c.send(Packet::Unsubscribe {
            msg_id: 2,
            topic: SubTopic::Name("room/temp".into())
        }),
        vec![Packet::UnsubAck { msg_id: 2 }]
    );
    peer.publish("room/temp", b"22", CoreQoS::AtMostOnce, t0);
    assert_eq!(c.wake(), vec![]);
}

#[test]
fn retained_message_follows_the_suback() {
    let t0 = Instant::now();
    let b = broker();
    let mut m = tributary_core::Message::new(
        "r/x",
        Bytes::from_static(b"kept"),
        CoreQoS::AtMostOnce,
        true,
    );
    m.retain = true;
    b.publish(m, t0);
    let mut c = Sn::new(&b, config(), t0);
    c.connect("dev1", true, 60);
    let out = c.send(subscribe(SubTopic::Name("r/x".into()), 1, QoS::AtMostOnce));
    assert!(matches!(out[0], Packet::SubAck { topic_id: 1025, .. }));
    assert!(
        matches!(
            &out[1],
            Packet::Publish(Publish {
                retain: true,
                topic_id: 1025,
                ..
            })
        ),
        "{out:?}"
    );
}

#[test]
fn mountpoint_is_added_in_and_stripped_out() {
    let t0 = Instant::now();
    let b = broker();
    let peer = Peer::new(&b, "mqtt", t0);
    peer.subscribe("sn/#", CoreQoS::AtMostOnce, t0);
    let mut cfg = config();
    cfg.mountpoint = "sn/".into();
    let mut c = Sn::new(&b, cfg, t0);
    c.connect("dev1", true, 60);
    c.send(subscribe(
        SubTopic::Name("down/+".into()),
        1,
        QoS::AtMostOnce,
    ));
    let id = c.register("up/t", 2);
    c.send(publish(TopicIdType::Normal, id, 0, QoS::AtMostOnce, b"u"));
    assert_eq!(
        peer.received(t0),
        vec![(
            "sn/up/t".into(),
            Bytes::from_static(b"u"),
            CoreQoS::AtMostOnce
        )]
    );
    peer.publish("down/x", b"not mounted", CoreQoS::AtMostOnce, t0);
    assert_eq!(c.wake(), vec![]);
    peer.publish("sn/down/x", b"d", CoreQoS::AtMostOnce, t0);
    let out = c.wake();
    assert!(
        matches!(&out[..], [Packet::Register { topic_name, .. }] if topic_name == "down/x"),
        "{out:?}"
    );
}

#[test]
fn acl_denials_are_not_supported() {
    let t0 = Instant::now();
    let b = broker_denying("denied/#");
    let peer = Peer::new(&b, "mqtt", t0);
    peer.subscribe("#", CoreQoS::AtMostOnce, t0);
    let mut c = Sn::new(&b, config(), t0);
    c.connect("dev1", true, 60);
    let id = c.register("denied/x", 1);
    assert_eq!(
        c.send(publish(TopicIdType::Normal, id, 2, QoS::AtLeastOnce, b"x")),
        vec![Packet::PubAck {
            topic_id: id,
            msg_id: 2,
            code: ReturnCode::NotSupported
        }]
    );
    assert_eq!(
        c.send(subscribe(
            SubTopic::Name("denied/#".into()),
            3,
            QoS::AtMostOnce
        )),
        vec![Packet::SubAck {
            qos: QoS::AtMostOnce,
            topic_id: 0,
            msg_id: 3,
            code: ReturnCode::NotSupported
        }]
    );
    assert_eq!(peer.received(t0), vec![]);
}
