//! MQTT 5 flow control and size features: Receive Maximum both ways
//! (§3.3.4, §4.9), Topic Alias both ways (§3.3.2.3.4), the client's
//! Maximum Packet Size (§3.1.2.11.4) and Message Expiry (§3.3.2.3.3).

mod support;

use support::*;
use tributary_mqtt::channel::ChannelConfig;

#[test]
fn client_receive_maximum_limits_unacked_qos1() {
    // [MQTT-3.3.4-7]: no more than Receive Maximum unacknowledged QoS 1/2 PUBLISH.
    let mut h = Harness::new();
    let s = h.connected(connect_v5("slow").receive_maximum(2));
    h.subscribed(s, 1, &[("t", 1)]);
    let p = h.connected(connect_v5("pub"));
    for (i, payload) in [b"m1", b"m2", b"m3", b"m4"].iter().enumerate() {
        h.send(p, publish("t", *payload).qos(1).id(i as u16 + 1));
        h.expect_one(p).puback();
    }
    let first = h.take(s);
    assert_eq!(first.len(), 2, "window of 2: {first:?}");
    let ids: Vec<u16> = first
        .into_iter()
        .map(|p| p.publish().packet_id.expect("id"))
        .collect();

    h.send(s, puback(ids[0]));
    let third = h.expect_one(s).publish();
    assert_eq!(&third.payload[..], b"m3");

    h.send(s, puback(ids[1]));
    let fourth = h.expect_one(s).publish();
    assert_eq!(&fourth.payload[..], b"m4");
    h.assert_silent(s);
}

#[test]
fn client_receive_maximum_counts_qos2_until_pubcomp() {
    let mut h = Harness::new();
    let s = h.connected(connect_v5("slow").receive_maximum(1));
    h.subscribed(s, 1, &[("t", 2)]);
    let p = h.connected(connect_v5("pub"));
    h.send(p, publish("t", b"a").qos(2).id(1));
    h.send(p, publish("t", b"b").qos(2).id(2));
    let a = h.expect_one(s).publish();
    let id = a.packet_id.expect("id");
    h.send(s, pubrec(id));
    assert_eq!(h.expect_one(s).pubrel().packet_id, id);
    // Still inflight until PUBCOMP.
    h.send(s, pingreq());
    assert_eq!(h.expect_one(s), Packet::PingResp);
    h.send(s, pubcomp(id));
    assert_eq!(&h.expect_one(s).publish().payload[..], b"b");
}

#[test]
fn qos0_not_limited_by_receive_maximum() {
    let mut h = Harness::new();
    let s = h.connected(connect_v5("slow").receive_maximum(1));
    h.subscribed(s, 1, &[("t", 1)]);
    let p = h.connected(connect_v5("pub"));
    h.send(p, publish("t", b"q1").qos(1).id(1));
    h.send(p, publish("t", b"q0"));
    let got = h.take(s);
    // The QoS 0 message is behind the unacked QoS 1 in the queue, but the
    // window only gates QoS 1/2.
    assert_eq!(got.len(), 2, "{got:?}");
}

#[test]
fn server_receive_maximum_exceeded_qos2_disconnect_0x93() {
    // [MQTT-3.3.4-9]
    let config = ChannelConfig {
        receive_maximum: 2,
        ..ChannelConfig::default()
    };
    let mut h = Harness::with_config(config);
    let (c, ack) = h.connect(connect_v5("greedy"));
    assert_eq!(ack.properties.receive_maximum, Some(2));
    h.send(c, publish("t", b"1").qos(2).id(1));
    h.expect_one(c).pubrec();
    h.send(c, publish("t", b"2").qos(2).id(2));
    h.expect_one(c).pubrec();
    h.send(c, publish("t", b"3").qos(2).id(3));
    assert_eq!(
        h.expect_one(c).disconnect().reason,
        rc::RECEIVE_MAXIMUM_EXCEEDED
    );
    assert!(h.is_closed(c));
}

#[test]
fn server_receive_maximum_frees_on_pubrel() {
    let config = ChannelConfig {
        receive_maximum: 1,
        ..ChannelConfig::default()
    };
    let mut h = Harness::with_config(config);
    let c = h.connected(connect_v5("ok"));
    for id in 1..=3 {
        h.send(c, publish("t", b"x").qos(2).id(id));
        h.expect_one(c).pubrec();
        h.send(c, pubrel(id));
        assert_eq!(h.expect_one(c).pubcomp().reason, rc::SUCCESS);
    }
    assert!(!h.is_closed(c));
}

#[test]
fn topic_alias_client_to_server_sets_and_uses() {
    let mut h = Harness::new();
    let s = h.connected(connect_v5("sub"));
    h.subscribed(s, 1, &[("a/b", 0)]);
    let p = h.connected(connect_v5("pub"));
    h.send(p, publish("a/b", b"1").alias(3));
    h.send(p, publish("", b"2").alias(3));
    let got = h.take(s);
    assert_eq!(got.len(), 2);
    for (packet, payload) in got.into_iter().zip([b"1", b"2"]) {
        let m = packet.publish();
        assert_eq!(&*m.topic, "a/b");
        assert_eq!(&m.payload[..], payload);
    }
    assert!(!h.is_closed(p));
}

#[test]
fn topic_alias_above_maximum_disconnect_0x94() {
    // [MQTT-3.3.2-9]
    let config = ChannelConfig {
        topic_alias_maximum: 5,
        ..ChannelConfig::default()
    };
    let mut h = Harness::with_config(config);
    let c = h.connected(connect_v5("c"));
    h.send(c, publish("a", b"x").alias(6));
    assert_eq!(h.expect_one(c).disconnect().reason, rc::TOPIC_ALIAS_INVALID);
    assert!(h.is_closed(c));
}

#[test]
fn topic_alias_when_server_announced_none_disconnect_0x94() {
    let config = ChannelConfig {
        topic_alias_maximum: 0,
        ..ChannelConfig::default()
    };
    let mut h = Harness::with_config(config);
    let c = h.connected(connect_v5("c"));
    h.send(c, publish("a", b"x").alias(1));
    assert_eq!(h.expect_one(c).disconnect().reason, rc::TOPIC_ALIAS_INVALID);
}

#[test]
fn unknown_topic_alias_with_empty_topic_disconnect_0x82() {
    // §3.3.4: an empty topic with an alias that has no mapping is a
    // Protocol Error.
    let mut h = Harness::new();
    let c = h.connected(connect_v5("c"));
    h.send(c, publish("", b"x").alias(2));
    assert_eq!(h.expect_one(c).disconnect().reason, rc::PROTOCOL_ERROR);
    assert!(h.is_closed(c));
}

#[test]
fn empty_topic_without_alias_disconnect_0x90() {
    let mut h = Harness::new();
    let c = h.connected(connect_v5("c"));
    h.send(c, publish("", b"x"));
    let d = h.expect_one(c).disconnect();
    assert!(
        d.reason == rc::TOPIC_NAME_INVALID || d.reason == rc::PROTOCOL_ERROR,
        "{d:?}"
    );
}

#[test]
fn topic_alias_server_to_client_topic_then_alias_only() {
    let mut h = Harness::new();
    let s = h.connected(connect_v5("sub").topic_alias_maximum(2));
    h.subscribed(s, 1, &[("t/#", 0)]);
    let p = h.connected(connect_v5("pub"));
    for topic in ["t/1", "t/1", "t/2", "t/3", "t/2"] {
        h.send(p, publish(topic, b"x"));
    }
    let got: Vec<Publish> = h.take(s).into_iter().map(|p| p.publish()).collect();
    let seen: Vec<(&str, Option<u16>)> = got
        .iter()
        .map(|p| (&*p.topic, p.properties.topic_alias))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("t/1", Some(1)), // first use: topic + alias
            ("", Some(1)),    // then the alias alone
            ("t/2", Some(2)),
            ("t/3", None), // no alias left: full topic, no alias [MQTT-3.3.2-12]
            ("", Some(2)),
        ]
    );
}

#[test]
fn no_server_aliases_without_client_topic_alias_maximum() {
    let mut h = Harness::new();
    let s = h.connected(connect_v5("sub"));
    h.subscribed(s, 1, &[("t", 0)]);
    let p = h.connected(connect_v5("pub"));
    h.send(p, publish("t", b"x"));
    h.send(p, publish("t", b"x"));
    for m in h.take(s) {
        let m = m.publish();
        assert_eq!(&*m.topic, "t");
        assert_eq!(m.properties.topic_alias, None);
    }
}

#[test]
fn client_maximum_packet_size_skips_too_large_message() {
    // [MQTT-3.1.2-24] / [MQTT-3.1.2-25]: a PUBLISH too large for the client
    // is discarded as if delivered; the next one goes through.
    let mut h = Harness::new();
    let s = h.connected(connect_v5("small").maximum_packet_size(64));
    h.subscribed(s, 1, &[("t", 1)]);
    let p = h.connected(connect_v5("pub"));
    h.send(p, publish("t", &[0xAB; 200]).qos(1).id(1));
    h.expect_one(p).puback();
    h.assert_silent(s);
    h.send(p, publish("t", b"fits").qos(1).id(2));
    h.expect_one(p).puback();
    let m = h.expect_one(s).publish();
    assert_eq!(&m.payload[..], b"fits");
    // The skipped message did not take a slot in the window.
    h.send(s, puback(m.packet_id.expect("id")));
    h.assert_silent(s);
}

#[test]
fn client_maximum_packet_size_boundary() {
    // A message whose PUBLISH is exactly the client's maximum is delivered.
    let mut h = Harness::new();
    let s = h.connected(connect_v5("exact").maximum_packet_size(20));
    h.subscribed(s, 1, &[("t", 0)]);
    let p = h.connected(connect_v5("pub"));
    // QoS 0 PUBLISH "t": 1 (type) + 1 (len) + 3 (topic) + 1 (props) + payload
    // = 6 + payload; 14 bytes of payload makes 20.
    h.send(p, publish("t", &[b'x'; 14]));
    let m = h.expect_one(s).publish();
    assert_eq!(m.payload.len(), 14);
    h.send(p, publish("t", &[b'x'; 15]));
    h.assert_silent(s);
}

#[test]
fn message_expiry_forwarded_as_remaining_seconds() {
    // [MQTT-3.3.2-6]: the forwarded interval is the received one minus
    // the time the message waited.
    let mut h = Harness::new();
    let s = h.connected(connect_v5("away").session_expiry(300));
    h.subscribed(s, 1, &[("t", 1)]);
    h.drop_connection(s);

    let p = h.connected(connect_v5("pub"));
    h.send(p, publish("t", b"short").qos(1).id(1).expiry(3));
    h.send(p, publish("t", b"long").qos(1).id(2).expiry(10));
    h.send(p, publish("t", b"forever").qos(1).id(3));
    h.advance(secs(4));

    let (s2, ack) = h.connect(connect_v5("away").clean_start(false).session_expiry(300));
    assert!(ack.session_present);
    let got: Vec<Publish> = h.take(s2).into_iter().map(|p| p.publish()).collect();
    let seen: Vec<(&[u8], Option<u32>)> = got
        .iter()
        .map(|p| (&p.payload[..], p.properties.message_expiry_interval))
        .collect();
    assert_eq!(
        seen,
        vec![(&b"long"[..], Some(6)), (&b"forever"[..], None)],
        "expired message dropped [MQTT-3.3.2-5], remaining time forwarded"
    );
}

#[test]
fn message_expiry_forwarded_unchanged_when_delivered_at_once() {
    let mut h = Harness::new();
    let s = h.connected(connect_v5("s"));
    h.subscribed(s, 1, &[("t", 0)]);
    let p = h.connected(connect_v5("p"));
    h.send(p, publish("t", b"x").expiry(30));
    assert_eq!(
        h.expect_one(s).publish().properties.message_expiry_interval,
        Some(30)
    );
}

#[test]
fn server_max_inflight_caps_large_client_receive_maximum() {
    let config = ChannelConfig {
        max_inflight: 3,
        ..ChannelConfig::default()
    };
    let mut h = Harness::with_config(config);
    let s = h.connected(connect_v5("s"));
    h.subscribed(s, 1, &[("t", 1)]);
    let p = h.connected(connect_v5("p"));
    for id in 1..=5 {
        h.send(p, publish("t", b"x").qos(1).id(id));
    }
    let got = h.take(s);
    assert_eq!(got.len(), 3, "{got:?}");
}

#[test]
fn publish_with_subscription_identifier_from_client_disconnect_0x82() {
    // [MQTT-3.3.4-6]: a PUBLISH from a client must not carry a
    // Subscription Identifier; receiving one is a Protocol Error (§4.13).
    let mut h = Harness::new();
    let c = h.connected(connect_v5("c"));
    h.send(c, publish("t", b"x").sub_id(4));
    let packets = h.take(c);
    assert!(
        matches!(packets.as_slice(), [Packet::Disconnect(d)] if d.reason == rc::PROTOCOL_ERROR),
        "{packets:?}"
    );
}

#[test]
fn publish_qos_above_maximum_disconnect_0x9b() {
    // [MQTT-3.2.2-11]
    let config = ChannelConfig {
        max_qos: QoS::AtLeastOnce,
        ..ChannelConfig::default()
    };
    let mut h = Harness::with_config(config);
    let c = h.connected(connect_v5("c"));
    h.send(c, publish("t", b"x").qos(2).id(1));
    assert_eq!(h.expect_one(c).disconnect().reason, rc::QOS_NOT_SUPPORTED);
}

#[test]
fn publish_retain_when_unsupported_disconnect_0x9a() {
    // [MQTT-3.2.2-14]
    let config = ChannelConfig {
        retain_available: false,
        ..ChannelConfig::default()
    };
    let mut h = Harness::with_config(config);
    let c = h.connected(connect_v5("c"));
    h.send(c, publish("t", b"x").retain());
    assert_eq!(
        h.expect_one(c).disconnect().reason,
        rc::RETAIN_NOT_SUPPORTED
    );
}

#[test]
fn server_topic_aliases_do_not_survive_reconnect() {
    // [MQTT-3.3.2-7]: alias mappings last one network connection.
    let mut h = Harness::new();
    let s = h.connected(connect_v5("s").session_expiry(60).topic_alias_maximum(5));
    h.subscribed(s, 1, &[("t", 1)]);
    let p = h.connected(connect_v5("p"));
    h.send(p, publish("t", b"1").qos(1).id(1));
    let first = h.expect_one(s).publish();
    assert_eq!(
        (&*first.topic, first.properties.topic_alias),
        ("t", Some(1))
    );
    h.drop_connection(s);

    let s2 = h.connected(
        connect_v5("s")
            .clean_start(false)
            .session_expiry(60)
            .topic_alias_maximum(5),
    );
    let resent = h.expect_one(s2).publish();
    assert!(resent.dup);
    assert_eq!(
        &*resent.topic, "t",
        "a new connection starts without aliases"
    );
}
