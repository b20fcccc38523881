//! Errors and endings: DISCONNECT from the client (§3.14) and the will it
//! does or does not trigger (§3.1.2.5), decode errors mapped to reason
//! codes (§4.13), and other protocol violations.

mod support;

use bytes::BytesMut;
use support::*;
use tributary_mqtt::channel::ChannelConfig;
use tributary_mqtt::codec::{decode, encode, DecodeError};

/// A client listening on `will/#`, to observe wills.
fn will_watcher(h: &mut Harness) -> Conn {
    let w = h.connected(connect("watcher"));
    h.subscribed(w, 1, &[("will/#", 0)]);
    w
}

#[test]
fn disconnect_session_expiry_after_zero_in_connect_0x82() {
    // [MQTT-3.14.2-2]
    let mut h = Harness::new();
    let c = h.connected(connect_v5("c"));
    h.send(c, disconnect().session_expiry(60));
    assert_eq!(h.expect_one(c).disconnect().reason, rc::PROTOCOL_ERROR);
    assert!(h.is_closed(c));
}

#[test]
fn disconnect_session_expiry_after_zero_is_abnormal_and_publishes_will() {
    let mut h = Harness::new();
    let w = will_watcher(&mut h);
    let c = h.connected(connect_v5("c").will("will/c", b"bye"));
    h.send(c, disconnect().session_expiry(60));
    h.expect_one(c).disconnect();
    assert_eq!(&*h.expect_one(w).publish().topic, "will/c");
}

#[test]
fn disconnect_may_shorten_session_expiry_to_zero() {
    let mut h = Harness::new();
    let c = h.connected(connect_v5("c").session_expiry(300));
    h.send(c, disconnect().session_expiry(0));
    h.assert_silent(c);
    assert!(h.is_closed(c));
    let (_, ack) = h.connect(connect_v5("c").clean_start(false));
    assert!(!ack.session_present, "session ended at disconnect");
}

#[test]
fn disconnect_with_will_0x04_publishes_will() {
    let mut h = Harness::new();
    let w = will_watcher(&mut h);
    let c = h.connected(connect_v5("c").will("will/c", b"on purpose"));
    h.send(c, disconnect().reason(rc::DISCONNECT_WITH_WILL));
    h.assert_silent(c);
    assert!(h.is_closed(c));
    let m = h.expect_one(w).publish();
    assert_eq!(&*m.topic, "will/c");
    assert_eq!(&m.payload[..], b"on purpose");
}

#[test]
fn normal_disconnect_discards_will() {
    // [MQTT-3.1.2-10] / [MQTT-3.14.4-3]
    let mut h = Harness::new();
    let w = will_watcher(&mut h);
    let c = h.connected(connect_v5("c").will("will/c", b"x"));
    h.send(c, disconnect());
    assert!(h.is_closed(c));
    h.assert_silent(c);
    h.assert_silent(w);

    let c3 = h.connected(connect("c3").will("will/c3", b"x"));
    h.send(c3, disconnect());
    assert!(h.is_closed(c3));
    h.assert_silent(w);
}

#[test]
fn lost_connection_publishes_will() {
    let mut h = Harness::new();
    let w = will_watcher(&mut h);
    let c = h.connected(connect("c").will("will/c", b"lost").will_qos(1));
    h.drop_connection(c);
    assert_eq!(&h.expect_one(w).publish().payload[..], b"lost");
}

#[test]
fn delayed_will_published_after_delay() {
    // §3.1.3.2.2 Will Delay Interval.
    let mut h = Harness::new();
    let w = will_watcher(&mut h);
    let c = h.connected(
        connect_v5("c")
            .session_expiry(60)
            .will("will/c", b"late")
            .will_delay(5),
    );
    h.drop_connection(c);
    h.advance(secs(4));
    h.assert_silent(w);
    h.advance(secs(1));
    assert_eq!(&h.expect_one(w).publish().payload[..], b"late");
}

#[test]
fn malformed_packet_v5_disconnect_0x81() {
    let mut h = Harness::new();
    let c = h.connected(connect_v5("c"));
    // PUBLISH with QoS 3 [MQTT-3.3.1-4].
    h.send_bytes(c, &[0x36, 0x00]);
    assert_eq!(h.expect_one(c).disconnect().reason, rc::MALFORMED_PACKET);
    assert!(h.is_closed(c));
}

#[test]
fn malformed_packet_v3_closes_silently() {
    let mut h = Harness::new();
    let c = h.connected(connect("c"));
    h.send_bytes(c, &[0x36, 0x00]);
    assert!(h.is_closed(c));
    h.assert_silent(c);
}

#[test]
fn protocol_error_from_decoder_v5_disconnect_0x82() {
    let mut h = Harness::new();
    let c = h.connected(connect_v5("c"));
    // PUBLISH QoS 1 with packet id 0.
    h.send_bytes(c, &[0x32, 0x06, 0x00, 0x01, b't', 0x00, 0x00, 0x00]);
    assert_eq!(h.expect_one(c).disconnect().reason, rc::PROTOCOL_ERROR);
}

#[test]
fn too_large_packet_v5_disconnect_0x95() {
    let config = ChannelConfig {
        max_packet_size: 1024,
        ..ChannelConfig::default()
    };
    let mut h = Harness::with_config(config);
    let c = h.connected(connect_v5("c"));
    // A PUBLISH header announcing 2 MB; refused before the body arrives.
    h.send_bytes(c, &[0x30, 0x80, 0x80, 0x80, 0x01]);
    assert_eq!(h.expect_one(c).disconnect().reason, rc::PACKET_TOO_LARGE);
    assert!(h.is_closed(c));
}

#[test]
fn unsupported_protocol_level_connack_0x01() {
    // 3.1.1 [MQTT-3.1.2-2]: unacceptable protocol level → return code 0x01.
    let mut h = Harness::new();
    let c = h.open();
    // CONNECT, protocol "MQTT", level 6.
    let bytes = [
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x06, 0x02, 0x00, 0x00, 0x00, 0x01, b'x',
    ];
    h.send_bytes(c, &bytes);
    let ack = h.expect_one(c).connack();
    assert_eq!(ack.code, rc::V3_UNACCEPTABLE_PROTOCOL_VERSION);
    assert!(!ack.session_present);
    assert!(h.is_closed(c));
}

#[test]
fn unsupported_protocol_level_5_connack_0x84_readable_by_v5_client() {
    // MQTT 5 §3.2.2.2: 0x84 is an MQTT 5 CONNACK reason code; a client that
    // announced level 5 reads the CONNACK as MQTT 5, with a property length
    // (§3.2.2.3). The driver encodes with `channel.version()`.
    let mut h = Harness::new();
    let c = h.open();
    h.decode_error(c, DecodeError::UnsupportedProtocol { level: 5 });
    let ack = h.expect_one(c);
    assert_eq!(ack.clone().connack().code, rc::UNSUPPORTED_PROTOCOL_VERSION);
    assert!(h.is_closed(c));

    let mut wire = BytesMut::new();
    encode(&ack, h.channel(c).version(), &mut wire).expect("encode");
    let as_v5 = decode(&mut wire, ProtocolVersion::V5, usize::MAX);
    assert!(
        matches!(&as_v5, Ok(Some(Packet::ConnAck(a))) if a.code == rc::UNSUPPORTED_PROTOCOL_VERSION),
        "an MQTT 5 client cannot read the CONNACK: {as_v5:?}"
    );
}

#[test]
fn malformed_connect_closes() {
    let mut h = Harness::new();
    let c = h.open();
    // CONNECT 3.1.1 with the reserved flag bit set [MQTT-3.1.2-3].
    let bytes = [
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x03, 0x00, 0x00, 0x00, 0x01, b'x',
    ];
    h.send_bytes(c, &bytes);
    assert!(h.is_closed(c));
    h.assert_silent(c);
}

#[test]
fn auth_packet_without_method_disconnect_0x82() {
    let mut h = Harness::new();
    let c = h.connected(connect_v5("c"));
    h.send(
        c,
        Packet::Auth(tributary_mqtt::packet::Auth {
            reason: 0x19,
            properties: Properties::default(),
        }),
    );
    assert_eq!(h.expect_one(c).disconnect().reason, rc::PROTOCOL_ERROR);
}

#[test]
fn server_only_packet_from_client_disconnect_0x82() {
    let mut h = Harness::new();
    let c = h.connected(connect_v5("c"));
    h.send(c, Packet::PingResp);
    assert_eq!(h.expect_one(c).disconnect().reason, rc::PROTOCOL_ERROR);
}

#[test]
fn invalid_topic_name_v5_disconnect_0x90() {
    let mut h = Harness::new();
    let c = h.connected(connect_v5("c"));
    h.send(c, publish("a/+", b"x").qos(1).id(1));
    assert_eq!(h.expect_one(c).disconnect().reason, rc::TOPIC_NAME_INVALID);
}

#[test]
fn violation_disconnect_fits_client_maximum_packet_size() {
    // [MQTT-3.14.2-3]: the Reason String is left out when it would make
    // the DISCONNECT exceed the client's Maximum Packet Size. The harness
    // checks every packet the server writes against that maximum.
    let mut h = Harness::new();
    let c = h.connected(connect_v5("c").maximum_packet_size(20));
    h.send(c, publish("", b"x").alias(9));
    assert_eq!(h.expect_one(c).disconnect().reason, rc::PROTOCOL_ERROR);
}

#[test]
fn packets_after_close_are_ignored() {
    let mut h = Harness::new();
    let c = h.connected(connect_v5("c"));
    h.send(c, disconnect());
    h.send_decoded(c, pingreq());
    h.assert_silent(c);
}
