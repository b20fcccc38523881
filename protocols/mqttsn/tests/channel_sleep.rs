//! Sleeping clients (MQTT-SN 1.2 §6.14).

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use support::*;
use tributary_core::QoS as CoreQoS;
use tributary_mqttsn::packet::{Packet, Publish, QoS, ReturnCode, SubTopic};

fn payloads(out: &[Packet]) -> Vec<Bytes> {
    out.iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.payload.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn buffered_while_asleep_delivered_on_pingreq_then_pingresp() {
    let t0 = Instant::now();
    let b = broker();
    let peer = Peer::new(&b, "mqtt", t0);
    let mut c = Sn::new(&b, config(), t0);
    c.connect("dev1", true, 30);
    c.send(subscribe(SubTopic::Short(*b"ab"), 1, QoS::AtMostOnce));
    assert_eq!(
        c.send(Packet::Disconnect { duration: Some(60) }),
        vec![Packet::Disconnect { duration: None }]
    );
    assert!(c.ch.is_asleep());
    peer.publish("ab", b"1", CoreQoS::AtMostOnce, t0);
    peer.publish("ab", b"2", CoreQoS::AtMostOnce, t0);
    // Asleep: nothing is sent, nothing is lost (not even after its keep alive).
    assert_eq!(c.wake(), vec![]);
    assert_eq!(c.advance(Duration::from_secs(50)), vec![]);
    assert!(!c.ch.is_closed());
    let out = c.send(Packet::PingReq {
        client_id: Some("dev1".into()),
    });
    assert_eq!(
        payloads(&out),
        vec![Bytes::from_static(b"1"), Bytes::from_static(b"2")]
    );
    assert_eq!(out.last(), Some(&Packet::PingResp));
    assert!(c.ch.is_asleep());
    // Nothing waiting: PINGRESP straight away.
    assert_eq!(
        c.send(Packet::PingReq {
            client_id: Some("dev1".into())
        }),
        vec![Packet::PingResp]
    );
}

#[test]
fn awake_client_gets_pingresp_after_its_qos1_messages_are_acknowledged() {
    let t0 = Instant::now();
    let b = broker();
    let peer = Peer::new(&b, "mqtt", t0);
    let mut c = Sn::new(&b, config(), t0);
    c.connect("dev1", true, 30);
    c.send(subscribe(SubTopic::Short(*b"ab"), 1, QoS::AtLeastOnce));
    c.send(Packet::Disconnect { duration: Some(60) });
    peer.publish("ab", b"1", CoreQoS::AtLeastOnce, t0);
    peer.publish("ab", b"2", CoreQoS::AtLeastOnce, t0);
    let out = c.send(Packet::PingReq {
        client_id: Some("dev1".into()),
    });
    let [Packet::Publish(Publish {
        msg_id, topic_id, ..
    })] = out.as_slice()
    else {
        panic!("{out:?}")
    };
    let out = c.send(Packet::PubAck {
        topic_id: *topic_id,
        msg_id: *msg_id,
        code: ReturnCode::Accepted,
    });
    let [Packet::Publish(Publish {
        msg_id, topic_id, ..
    })] = out.as_slice()
    else {
        panic!("{out:?}")
    };
    let out = c.send(Packet::PubAck {
        topic_id: *topic_id,
        msg_id: *msg_id,
        code: ReturnCode::Accepted,
    });
    assert_eq!(out, vec![Packet::PingResp]);
    assert!(c.ch.is_asleep());
}

#[test]
fn missed_sleep_duration_is_a_lost_client_and_its_will_is_sent() {
    let t0 = Instant::now();
    let b = broker();
    let watcher = Peer::new(&b, "watcher", t0);
    watcher.subscribe("will", CoreQoS::AtMostOnce, t0);
    let mut c = Sn::new(&b, config(), t0);
    c.send(connect("dev1", true, 30, true));
    c.send(will_topic("will", QoS::AtMostOnce));
    c.send(Packet::WillMsg {
        payload: Bytes::from_static(b"asleep forever"),
    });
    c.send(Packet::Disconnect {
        duration: Some(100),
    });
    // Sleep 100 s, supervised at 1.5 x; a plain PINGREQ (no client id) keeps it asleep.
    assert_eq!(c.advance(Duration::from_secs(140)), vec![]);
    assert_eq!(
        c.send(Packet::PingReq { client_id: None }),
        vec![Packet::PingResp]
    );
    c.advance(Duration::from_secs(149));
    assert!(!c.ch.is_closed());
    c.advance(Duration::from_secs(2));
    assert!(c.ch.is_closed());
    c.finish();
    assert_eq!(
        watcher.received(c.now),
        vec![(
            "will".into(),
            Bytes::from_static(b"asleep forever"),
            CoreQoS::AtMostOnce
        )]
    );
}

#[test]
fn connect_wakes_a_sleeping_client_and_delivers() {
    let t0 = Instant::now();
    let b = broker();
    let peer = Peer::new(&b, "mqtt", t0);
    let mut c = Sn::new(&b, config(), t0);
    c.connect("dev1", false, 30);
    c.send(subscribe(SubTopic::Short(*b"ab"), 1, QoS::AtMostOnce));
    c.send(Packet::Disconnect { duration: Some(60) });
    peer.publish("ab", b"kept", CoreQoS::AtMostOnce, t0);
    let out = c.send(connect("dev1", false, 30, false));
    assert_eq!(
        out[0],
        Packet::ConnAck {
            code: ReturnCode::Accepted
        }
    );
    assert_eq!(payloads(&out), vec![Bytes::from_static(b"kept")]);
    assert!(!c.ch.is_asleep());
}
