//! QoS −1/0/1/2 in both directions, duplicate detection, retransmission
//! with Tretry/Nretry (MQTT-SN 1.2 §6.8–§6.10, §6.13).

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use support::*;
use tributary_core::QoS as CoreQoS;
use tributary_mqttsn::packet::{Packet, Publish, QoS, ReturnCode, SubTopic, TopicIdType};

fn dup(p: Packet) -> Packet {
    match p {
        Packet::Publish(mut p) => {
            p.dup = true;
            Packet::Publish(p)
        }
        other => other,
    }
}

#[test]
fn qos2_from_the_client_is_routed_once() {
    let t0 = Instant::now();
    let b = broker();
    let peer = Peer::new(&b, "mqtt", t0);
    peer.subscribe("ab", CoreQoS::ExactlyOnce, t0);
    let mut c = Sn::new(&b, config(), t0);
    c.connect("dev1", true, 60);
    let p = publish(TopicIdType::Short, short("ab"), 7, QoS::ExactlyOnce, b"x");
    assert_eq!(c.send(p.clone()), vec![Packet::PubRec { msg_id: 7 }]);
    // The PUBREC was lost: the client resends; acknowledged, not routed again.
    assert_eq!(c.send(dup(p)), vec![Packet::PubRec { msg_id: 7 }]);
    assert_eq!(
        c.send(Packet::PubRel { msg_id: 7 }),
        vec![Packet::PubComp { msg_id: 7 }]
    );
    assert_eq!(peer.received(t0).len(), 1);
}

#[test]
fn qos1_duplicate_with_dup_flag_is_not_routed_twice() {
    let t0 = Instant::now();
    let b = broker();
    let peer = Peer::new(&b, "mqtt", t0);
    peer.subscribe("ab", CoreQoS::AtLeastOnce, t0);
    let mut c = Sn::new(&b, config(), t0);
    c.connect("dev1", true, 60);
    let p = publish(TopicIdType::Short, short("ab"), 9, QoS::AtLeastOnce, b"x");
    let ack = vec![Packet::PubAck {
        topic_id: short("ab"),
        msg_id: 9,
        code: ReturnCode::Accepted,
    }];
    assert_eq!(c.send(p.clone()), ack);
    assert_eq!(c.send(dup(p)), ack);
    assert_eq!(peer.received(t0).len(), 1);
}

#[test]
fn qos_minus_one_from_a_connected_client_is_qos0() {
    let t0 = Instant::now();
    let b = broker();
    let peer = Peer::new(&b, "mqtt", t0);
    peer.subscribe("pre/one", CoreQoS::ExactlyOnce, t0);
    let mut c = Sn::new(&b, config(), t0);
    c.connect("dev1", true, 60);
    assert_eq!(
        c.send(publish(
            TopicIdType::Predefined,
            1,
            0,
            QoS::NoConnection,
            b"m1"
        )),
        vec![]
    );
    assert_eq!(
        peer.received(t0),
        vec![(
            "pre/one".into(),
            Bytes::from_static(b"m1"),
            CoreQoS::AtMostOnce
        )]
    );
}

#[test]
fn qos1_to_the_client_is_resent_with_dup_then_the_client_is_lost() {
    let t0 = Instant::now();
    let b = broker();
    let watcher = Peer::new(&b, "watcher", t0);
    watcher.subscribe("will", CoreQoS::AtMostOnce, t0);
    let peer = Peer::new(&b, "mqtt", t0);
    let mut c = Sn::new(&b, config(), t0);
    c.send(connect("dev1", true, 600, true));
    c.send(will_topic("will", QoS::AtMostOnce));
    c.send(Packet::WillMsg {
        payload: Bytes::from_static(b"lost"),
    });
    c.send(subscribe(SubTopic::Short(*b"ab"), 1, QoS::AtLeastOnce));
    peer.publish("ab", b"x", CoreQoS::AtLeastOnce, t0);
    let out = c.wake();
    let [Packet::Publish(first)] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert!(!first.dup);
    assert_eq!(first.qos, QoS::AtLeastOnce);
    // Tretry = 10 s, Nretry = 3: three resends with DUP, then lost.
    for _ in 0..3 {
        assert_eq!(c.advance(Duration::from_secs(9)), vec![]);
        let out = c.advance(Duration::from_secs(1));
        let [Packet::Publish(again)] = out.as_slice() else {
            panic!("{out:?}")
        };
        assert!(again.dup);
        assert_eq!(again.msg_id, first.msg_id);
    }
    c.advance(Duration::from_secs(10));
    assert!(c.ch.is_closed());
    c.finish();
    assert_eq!(
        watcher.received(c.now),
        vec![(
            "will".into(),
            Bytes::from_static(b"lost"),
            CoreQoS::AtMostOnce
        )]
    );
}

#[test]
fn a_dropped_publish_is_recovered_by_retransmission() {
    let t0 = Instant::now();
    let b = broker();
    let peer = Peer::new(&b, "mqtt", t0);
    let mut c = Sn::new(&b, config(), t0);
    c.connect("dev1", true, 600);
    c.send(subscribe(SubTopic::Short(*b"ab"), 1, QoS::AtLeastOnce));
    peer.publish("ab", b"1", CoreQoS::AtLeastOnce, t0);
    peer.publish("ab", b"2", CoreQoS::AtLeastOnce, t0);
    // Window 1: only the first goes out; the client "drops" it.
    let out = c.wake();
    assert_eq!(out.len(), 1);
    let out = c.advance(Duration::from_secs(10));
    let [Packet::Publish(p)] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert!(p.dup);
    // Acknowledged: the second follows at once.
    let out = c.send(Packet::PubAck {
        topic_id: p.topic_id,
        msg_id: p.msg_id,
        code: ReturnCode::Accepted,
    });
    let [Packet::Publish(second)] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(second.payload, Bytes::from_static(b"2"));
    assert!(!second.dup);
}

#[test]
fn qos2_to_the_client_with_lost_pubrel() {
    let t0 = Instant::now();
    let b = broker();
    let peer = Peer::new(&b, "mqtt", t0);
    let mut c = Sn::new(&b, config(), t0);
    c.connect("dev1", true, 600);
    c.send(subscribe(SubTopic::Short(*b"ab"), 1, QoS::ExactlyOnce));
    peer.publish("ab", b"x", CoreQoS::ExactlyOnce, t0);
    let out = c.wake();
    let [Packet::Publish(Publish {
        msg_id,
        qos: QoS::ExactlyOnce,
        ..
    })] = out.as_slice()
    else {
        panic!("{out:?}")
    };
    let msg_id = *msg_id;
    assert_eq!(
        c.send(Packet::PubRec { msg_id }),
        vec![Packet::PubRel { msg_id }]
    );
    // PUBREL lost: resent after Tretry.
    assert_eq!(
        c.advance(Duration::from_secs(10)),
        vec![Packet::PubRel { msg_id }]
    );
    assert_eq!(c.send(Packet::PubComp { msg_id }), vec![]);
    assert_eq!(c.advance(Duration::from_secs(30)), vec![]);
}

#[test]
fn register_is_retransmitted_until_acknowledged() {
    let t0 = Instant::now();
    let b = broker();
    let peer = Peer::new(&b, "mqtt", t0);
    let mut c = Sn::new(&b, config(), t0);
    c.connect("dev1", true, 600);
    c.send(subscribe(SubTopic::Name("#".into()), 1, QoS::AtMostOnce));
    peer.publish("some/topic", b"x", CoreQoS::AtMostOnce, t0);
    let out = c.wake();
    let [reg @ Packet::Register {
        topic_id, msg_id, ..
    }] = out.as_slice()
    else {
        panic!("{out:?}")
    };
    assert_eq!(c.advance(Duration::from_secs(10)), vec![reg.clone()]);
    let out = c.send(Packet::RegAck {
        topic_id: *topic_id,
        msg_id: *msg_id,
        code: ReturnCode::Accepted,
    });
    assert!(matches!(&out[..], [Packet::Publish(_)]), "{out:?}");
}

#[test]
fn puback_invalid_topic_id_forgets_the_registration() {
    let t0 = Instant::now();
    let b = broker();
    let peer = Peer::new(&b, "mqtt", t0);
    let mut c = Sn::new(&b, config(), t0);
    c.connect("dev1", true, 600);
    c.send(subscribe(SubTopic::Name("t/x".into()), 1, QoS::AtLeastOnce));
    peer.publish("t/x", b"1", CoreQoS::AtLeastOnce, t0);
    let out = c.wake();
    let [Packet::Publish(p)] = out.as_slice() else {
        panic!("{out:?}")
    };
    c.send(Packet::PubAck {
        topic_id: p.topic_id,
        msg_id: p.msg_id,
        code: ReturnCode::InvalidTopicId,
    });
    peer.publish("t/x", b"2", CoreQoS::AtLeastOnce, t0);
    let out = c.wake();
    assert!(
        matches!(&out[..], [Packet::Register { topic_name, .. }] if topic_name == "t/x"),
        "{out:?}"
    );
}
