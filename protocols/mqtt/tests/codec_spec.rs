//! The codec against the examples and rules of the MQTT 3.1, 3.1.1 and 5.0
//! specifications: one test per example or per error branch, bytes written
//! out by hand.

#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use tributary_mqtt::codec::{decode, encode, encoded_len, DecodeError, EncodeError};
use tributary_mqtt::packet::{
    Auth, ConnAck, Connect, Disconnect, LastWill, Packet, Properties, PropertyValues,
    ProtocolVersion, PubResponse, Publish, QoS, SubAck, Subscribe, SubscriptionOptions, UnsubAck,
    Unsubscribe,
};

use ProtocolVersion::{V3_1, V3_1_1, V5};

const ALL: [ProtocolVersion; 3] = [V3_1, V3_1_1, V5];

/// Bytes from hex pairs and 'quoted' ASCII, e.g. `"10 0C 00 04 'MQTT' 04"`.
fn wire(spec: &str) -> BytesMut {
    let mut out = BytesMut::new();
    let mut rest = spec;
    while let Some(c) = rest.chars().next() {
        if c.is_whitespace() {
            rest = &rest[1..];
        } else if c == '\'' {
            let end = rest[1..].find('\'').unwrap() + 1;
            out.extend_from_slice(&rest.as_bytes()[1..end]);
            rest = &rest[end + 1..];
        } else {
            out.extend_from_slice(&[u8::from_str_radix(&rest[..2], 16).unwrap()]);
            rest = &rest[2..];
        }
    }
    out
}

/// Decodes exactly one packet that fills `spec`.
fn decode_one(spec: &str, version: ProtocolVersion) -> Packet {
    let mut buf = wire(spec);
    let packet = decode(&mut buf, version, usize::MAX).unwrap().unwrap();
    assert!(buf.is_empty(), "bytes left over: {buf:?}");
    packet
}

fn decode_err(spec: &str, version: ProtocolVersion) -> DecodeError {
    decode(&mut wire(spec), version, usize::MAX).unwrap_err()
}

fn encode_vec(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(packet, version, &mut buf).unwrap();
    assert_eq!(encoded_len(packet, version), Ok(buf.len()));
    buf.to_vec()
}

/// `spec` decodes to `packet`, and `packet` encodes back to `spec`.
fn both_ways(spec: &str, version: ProtocolVersion, packet: &Packet) {
    assert_eq!(&decode_one(spec, version), packet);
    assert_eq!(encode_vec(packet, version), wire(spec).to_vec());
}

fn malformed(e: DecodeError) {
    assert!(matches!(e, DecodeError::Malformed(_)), "{e:?}");
}

fn protocol(e: DecodeError) {
    assert!(matches!(e, DecodeError::Protocol(_)), "{e:?}");
}

fn ack(packet_id: u16, reason: u8) -> PubResponse {
    PubResponse {
        packet_id,
        reason,
        properties: Properties::default(),
    }
}

// ---- fixed header ----------------------------------------------------------

#[test]
fn pingreq_pingresp_disconnect() {
    for v in ALL {
        both_ways("C0 00", v, &Packet::PingReq);
        both_ways("D0 00", v, &Packet::PingResp);
        let normal = Packet::Disconnect(Disconnect {
            reason: 0,
            properties: Properties::default(),
        });
        both_ways("E0 00", v, &normal);
        malformed(decode_err("C0 01 00", v));
        malformed(decode_err("D0 01 00", v));
    }
    malformed(decode_err("E0 01 00", V3_1_1));
}

#[test]
fn remaining_length_examples_in_headers() {
    // §1.5.5: 0, 127, 128, 16383, 16384, 2097151, 2097152, 268435455.
    let cases: &[(usize, &str)] = &[
        (0, "00"),
        (127, "7F"),
        (128, "80 01"),
        (16_383, "FF 7F"),
        (16_384, "80 80 01"),
        (2_097_151, "FF FF 7F"),
        (2_097_152, "80 80 80 01"),
        (268_435_455, "FF FF FF 7F"),
    ];
    for &(len, bytes) in cases {
        let header = wire(&format!("30 {bytes}"));
        let total = header.len() + len;
        // Only the header has arrived: need more, unless it fits already.
        let mut buf = header.clone();
        let got = decode(&mut buf, V3_1_1, usize::MAX);
        if len == 0 {
            malformed(got.unwrap_err()); // no room for the topic length
        } else {
            assert_eq!(got, Ok(None));
            assert_eq!(buf, header);
        }
        // One byte under the limit is refused from the header alone.
        let mut buf = header.clone();
        assert_eq!(
            decode(&mut buf, V3_1_1, total - 1),
            Err(DecodeError::TooLarge {
                size: total,
                max: total - 1
            })
        );
        assert_eq!(buf, header, "buffer untouched by TooLarge");
    }
    // A payload of exactly 127 and 128 bytes of body round-trips.
    for body in [127usize, 128, 16_384] {
        let publish = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "t".into(),
            packet_id: None,
            properties: Properties::default(),
            payload: Bytes::from(vec![7; body - 3]),
        });
        let bytes = encode_vec(&publish, V3_1_1);
        assert_eq!(
            bytes.len(),
            1 + if body < 128 {
                1
            } else if body < 16_384 {
                2
            } else {
                3
            } + body
        );
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(decode(&mut buf, V3_1_1, usize::MAX), Ok(Some(publish)));
    }
}

#[test]
fn remaining_length_of_five_bytes_is_malformed() {
    malformed(decode_err("30 FF FF FF FF 01", V5));
    // Refused as soon as the fourth byte asks for a fifth.
    malformed(decode_err("30 80 80 80 80", V5));
}

#[test]
fn incomplete_header_needs_more() {
    for spec in ["", "30", "30 80", "30 80 80", "30 80 80 80"] {
        let mut buf = wire(spec);
        assert_eq!(decode(&mut buf, V5, usize::MAX), Ok(None), "{spec}");
        assert_eq!(buf, wire(spec));
    }
}

#[test]
fn too_large_before_the_body_arrives() {
    // Declares 268435455 bytes; only five have arrived.
    let mut buf = wire("30 FF FF FF 7F");
    let e = decode(&mut buf, V5, 1024).unwrap_err();
    assert_eq!(
        e,
        DecodeError::TooLarge {
            size: 268_435_460,
            max: 1024
        }
    );
    assert_eq!(e.reason_code(), 0x95);
    assert_eq!(buf.len(), 5);
    // The limit counts the fixed header: PINGREQ is 2 bytes.
    assert!(matches!(
        decode(&mut wire("C0 00"), V5, 1),
        Err(DecodeError::TooLarge { size: 2, max: 1 })
    ));
    assert_eq!(decode(&mut wire("C0 00"), V5, 2), Ok(Some(Packet::PingReq)));
}

#[test]
fn reserved_packet_types() {
    for v in ALL {
        malformed(decode_err("00 00", v));
    }
    malformed(decode_err("F0 00", V3_1));
    malformed(decode_err("F0 00", V3_1_1));
    assert!(matches!(decode_one("F0 00", V5), Packet::Auth(_)));
}

#[test]
fn fixed_header_flags() {
    for v in ALL {
        // PUBREL, SUBSCRIBE, UNSUBSCRIBE need 0010.
        malformed(decode_err("60 02 00 01", v));
        malformed(decode_err("63 02 00 01", v));
        malformed(decode_err("80 06 00 01 00 01 'a' 00", v));
        malformed(decode_err("A0 05 00 01 00 01 'a'", v));
        // Everything else but PUBLISH needs 0000.
        malformed(decode_err("C1 00", v));
        malformed(decode_err("D8 00", v));
        malformed(decode_err("E2 00", v));
        malformed(decode_err("42 02 00 01", v));
        malformed(decode_err("1F 00", v));
        // PUBLISH QoS 3 [MQTT-3.3.1-4], DUP on QoS 0 [MQTT-3.3.1-2].
        malformed(decode_err("36 05 00 01 't' 00 01", v));
        malformed(decode_err("38 03 00 01 't'", v));
        assert_eq!(decode_one("62 02 00 01", v), Packet::PubRel(ack(1, 0)));
    }
    // MQTT 3.1 set DUP on retransmitted PUBREL / SUBSCRIBE / UNSUBSCRIBE.
    assert_eq!(decode_one("6A 02 00 01", V3_1), Packet::PubRel(ack(1, 0)));
    malformed(decode_err("6A 02 00 01", V3_1_1));
    malformed(decode_err("6A 02 00 01", V5));
}

#[test]
fn several_packets_in_one_buffer() {
    let mut buf = wire("C0 00 30 04 00 01 't' 'x' D0");
    assert_eq!(decode(&mut buf, V3_1_1, 100), Ok(Some(Packet::PingReq)));
    let Some(Packet::Publish(p)) = decode(&mut buf, V3_1_1, 100).unwrap() else {
        panic!("expected PUBLISH");
    };
    assert_eq!(p.payload, Bytes::from_static(b"x"));
    assert_eq!(decode(&mut buf, V3_1_1, 100), Ok(None));
    assert_eq!(buf, wire("D0"));
}

#[test]
fn reason_codes() {
    assert_eq!(DecodeError::Malformed("x").reason_code(), 0x81);
    assert_eq!(DecodeError::Protocol("x").reason_code(), 0x82);
    assert_eq!(
        DecodeError::TooLarge { size: 2, max: 1 }.reason_code(),
        0x95
    );
    assert_eq!(
        DecodeError::UnsupportedProtocol { level: 9 }.reason_code(),
        0x84
    );
}

// ---- CONNECT / CONNACK -----------------------------------------------------

/// 3.1.1 §3.1.2.10, Figure 3.6: "MQTT", level 4, flags 0xCE, keep alive
/// 10, with a payload for every flag it sets.
const CONNECT_3_1_1: &str = "10 25 00 04 'MQTT' 04 CE 00 0A \
    00 03 'abc' 00 03 't/w' 00 03 'bye' 00 04 'user' 00 04 'pass'";

#[test]
fn connect_3_1_1_spec_example() {
    let expected = Packet::Connect(Box::new(Connect {
        protocol: V3_1_1,
        clean_start: true,
        keep_alive: 10,
        client_id: "abc".into(),
        will: Some(LastWill {
            topic: "t/w".into(),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
        }),
        username: Some("user".into()),
        password: Some(Bytes::from_static(b"pass")),
        properties: Properties::default(),
    }));
    both_ways(CONNECT_3_1_1, V3_1_1, &expected);
    // CONNECT declares its own version, whatever the connection says.
    assert_eq!(decode_one(CONNECT_3_1_1, V5), expected);
    assert_eq!(decode_one(CONNECT_3_1_1, V3_1), expected);
}

fn minimal_connect(protocol: ProtocolVersion, client_id: &str) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }))
}

#[test]
fn connect_3_1_mqisdp() {
    both_ways(
        "10 12 00 06 'MQIsdp' 03 02 00 3C 00 04 'test'",
        V3_1_1,
        &minimal_connect(V3_1, "test"),
    );
    // No 23-character limit on 3.1 client ids in the codec.
    let long = "a".repeat(40);
    let bytes = encode_vec(&minimal_connect(V3_1, &long), V3_1);
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        decode(&mut buf, V3_1, usize::MAX),
        Ok(Some(minimal_connect(V3_1, &long)))
    );
}

#[test]
fn connect_bridge_levels() {
    assert_eq!(
        decode_one("10 0C 00 04 'MQTT' 84 02 00 3C 00 00", V3_1_1),
        minimal_connect(V3_1_1, "")
    );
    assert_eq!(
        decode_one("10 0E 00 06 'MQIsdp' 83 02 00 3C 00 00", V3_1_1),
        minimal_connect(V3_1, "")
    );
}

#[test]
fn connect_v5_with_properties_and_will() {
    // Session expiry 30, receive maximum 10, user property a=b; will with
    // delay 5 and payload format 1.
    let spec = "10 30 00 04 'MQTT' 05 AE 00 3C \
        0F 11 00 00 00 1E 21 00 0A 26 00 01 'a' 00 01 'b' \
        00 02 'id' \
        07 01 01 18 00 00 00 05 \
        00 01 'w' 00 02 'hi' \
        00 01 'u'";
    let packet = decode_one(spec, V3_1_1);
    let Packet::Connect(c) = &packet else {
        panic!("expected CONNECT");
    };
    assert_eq!(c.protocol, V5);
    assert_eq!(c.properties.session_expiry_interval, Some(30));
    assert_eq!(c.properties.receive_maximum, Some(10));
    assert_eq!(c.properties.user_properties, vec![("a".into(), "b".into())]);
    let will = c.will.as_ref().unwrap();
    assert_eq!(will.qos, QoS::AtLeastOnce);
    assert!(will.retain);
    assert_eq!(will.properties.will_delay_interval, Some(5));
    assert_eq!(will.properties.payload_format_indicator, Some(1));
    assert_eq!(c.username.as_deref(), Some("u"));
    assert_eq!(c.password, None);
    assert_eq!(encode_vec(&packet, V5), wire(spec).to_vec());
}

#[test]
fn connect_unsupported_protocol() {
    let cases = [
        ("10 0C 00 04 'MQTX' 04 02 00 3C 00 00", 4),
        ("10 0C 00 04 'MQTT' 03 02 00 3C 00 00", 3),
        ("10 0C 00 04 'MQTT' 06 02 00 3C 00 00", 6),
        ("10 0C 00 04 'MQTT' 85 02 00 3C 00 00", 0x85),
        ("10 0E 00 06 'MQIsdp' 04 02 00 3C 00 00", 4),
    ];
    for (spec, level) in cases {
        let e = decode_err(spec, V5);
        assert_eq!(e, DecodeError::UnsupportedProtocol { level });
        assert_eq!(e.reason_code(), 0x84);
    }
}

#[test]
fn connect_flag_rules() {
    let with_flags = |flags: &str| format!("10 0C 00 04 'MQTT' 04 {flags} 00 3C 00 00");
    // Reserved bit [MQTT-3.1.2-3].
    malformed(decode_err(&with_flags("03"), V3_1_1));
    // Will QoS 3 (with a will).
    malformed(decode_err(&with_flags("1E"), V3_1_1));
    // Will QoS or retain without the will flag.
    malformed(decode_err(&with_flags("0A"), V3_1_1));
    malformed(decode_err(&with_flags("22"), V3_1_1));
    // Password without user name: malformed in 3.1.1, allowed in 5.
    malformed(decode_err(
        "10 10 00 04 'MQTT' 04 42 00 3C 00 00 00 02 'pw'",
        V3_1_1,
    ));
    let Packet::Connect(c) = decode_one("10 11 00 04 'MQTT' 05 42 00 3C 00 00 00 00 02 'pw'", V5)
    else {
        panic!("expected CONNECT");
    };
    assert_eq!(c.username, None);
    assert_eq!(c.password, Some(Bytes::from_static(b"pw")));
    // Fields missing after the flags promise them.
    malformed(decode_err("10 0C 00 04 'MQTT' 04 82 00 3C 00 00", V3_1_1));
    malformed(decode_err("10 06 00 04 'MQTT' 04", V3_1_1));
    // Bytes after the last field.
    malformed(decode_err(
        "10 0D 00 04 'MQTT' 04 02 00 3C 00 00 00",
        V3_1_1,
    ));
}

#[test]
fn connect_strings_must_be_utf8_without_nul() {
    malformed(decode_err(
        "10 0E 00 04 'MQTT' 04 02 00 3C 00 02 C3 28",
        V3_1_1,
    ));
    malformed(decode_err(
        "10 0D 00 04 'MQTT' 04 02 00 3C 00 01 00",
        V3_1_1,
    ));
    // Empty client id is fine.
    assert_eq!(
        decode_one("10 0C 00 04 'MQTT' 04 02 00 3C 00 00", V3_1_1),
        minimal_connect(V3_1_1, "")
    );
}

#[test]
fn connack() {
    for v in [V3_1, V3_1_1] {
        let accepted = Packet::ConnAck(ConnAck {
            session_present: true,
            code: 0,
            properties: Properties::default(),
        });
        both_ways("20 02 01 00", v, &accepted);
        let refused = Packet::ConnAck(ConnAck {
            session_present: false,
            code: 5,
            properties: Properties::default(),
        });
        both_ways("20 02 00 05", v, &refused);
        malformed(decode_err("20 02 02 00", v));
        malformed(decode_err("20 03 00 00 00", v));
    }
    let v5 = Packet::ConnAck(ConnAck {
        session_present: false,
        code: 0x84,
        properties: Properties::default(),
    });
    both_ways("20 03 00 84 00", V5, &v5);
    // Properties, including CONNACK-only ones.
    let Packet::ConnAck(c) = decode_one("20 0F 00 00 0C 24 01 25 00 27 00 00 10 00 13 00 1E", V5)
    else {
        panic!("expected CONNACK");
    };
    assert_eq!(c.properties.maximum_qos, Some(1));
    assert_eq!(c.properties.retain_available, Some(0));
    assert_eq!(c.properties.maximum_packet_size, Some(4096));
    assert_eq!(c.properties.server_keep_alive, Some(30));
    // MQTT 5 CONNACK always has a property length.
    malformed(decode_err("20 02 00 00", V5));
    // Maximum QoS 2 is a protocol error.
    protocol(decode_err("20 05 00 00 02 24 02", V5));
}

// ---- PUBLISH and acknowledgements ------------------------------------------

#[test]
fn publish_v3() {
    let p = Packet::Publish(Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        retain: true,
        topic: "a/b".into(),
        packet_id: Some(10),
        properties: Properties::default(),
        payload: Bytes::from_static(b"hello"),
    });
    both_ways("3D 0C 00 03 'a/b' 00 0A 'hello'", V3_1_1, &p);
    let q0 = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "a".into(),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::new(),
    });
    both_ways("30 03 00 01 'a'", V3_1, &q0);
    // Packet identifier 0 [MQTT-2.2.1-3].
    protocol(decode_err("32 05 00 01 'a' 00 00", V3_1_1));
    // Topic length runs past the packet.
    malformed(decode_err("30 03 00 05 'a'", V3_1_1));
    // Invalid UTF-8 in the topic.
    malformed(decode_err("30 03 00 01 FF", V3_1_1));
}

#[test]
fn publish_v5_with_properties() {
    // QoS 1, DUP, RETAIN; payload format 1, expiry 60, topic alias 5, user
    // property k=v, subscription identifiers 129 and 2.
    let spec = "3B 20 00 03 'a/b' 00 0A \
        16 01 01 02 00 00 00 3C 0B 81 01 0B 02 23 00 05 26 00 01 'k' 00 01 'v' \
        'hi'";
    let expected = Packet::Publish(Publish {
        dup: true,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: "a/b".into(),
        packet_id: Some(10),
        properties: PropertyValues {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            subscription_identifiers: vec![129, 2],
            topic_alias: Some(5),
            user_properties: vec![("k".into(), "v".into())],
            ..PropertyValues::default()
        }
        .into(),
        payload: Bytes::from_static(b"hi"),
    });
    both_ways(spec, V5, &expected);
    // Empty topic with a topic alias is fine for the codec.
    let Packet::Publish(p) = decode_one("30 06 00 00 03 23 00 01", V5) else {
        panic!("expected PUBLISH");
    };
    assert_eq!(&*p.topic, "");
    assert_eq!(p.properties.topic_alias, Some(1));
}

#[test]
fn publish_payload_is_zero_copy() {
    let mut buf = wire("32 0A 00 01 't' 00 07 00 'abcd'");
    let start = buf.as_ptr() as usize;
    let Some(Packet::Publish(p)) = decode(&mut buf, V5, usize::MAX).unwrap() else {
        panic!("expected PUBLISH");
    };
    assert_eq!(p.payload, Bytes::from_static(b"abcd"));
    assert_eq!(p.payload.as_ptr() as usize, start + 8);
}

#[test]
fn publish_v5_property_rules() {
    // Topic alias 0.
    protocol(decode_err("30 07 00 01 't' 03 23 00 00", V5));
    // Payload format indicator 2.
    protocol(decode_err("30 06 00 01 't' 02 01 02", V5));
    // Subscription identifier 0.
    protocol(decode_err("30 06 00 01 't' 02 0B 00", V5));
    // Duplicate message expiry.
    protocol(decode_err(
        "30 0E 00 01 't' 0A 02 00 00 00 01 02 00 00 00 01",
        V5,
    ));
    // Session expiry is not a PUBLISH property.
    protocol(decode_err("30 09 00 01 't' 05 11 00 00 00 01", V5));
    // Unknown property identifier.
    malformed(decode_err("30 06 00 01 't' 02 05 00", V5));
    // Property length beyond the packet.
    malformed(decode_err("30 06 00 01 't' 09 01 01", V5));
    // Property value cut short by the property length.
    malformed(decode_err("30 07 00 01 't' 02 23 00 01", V5));
}

#[test]
fn pub_responses_v3() {
    for v in [V3_1, V3_1_1] {
        both_ways("40 02 00 01", v, &Packet::PubAck(ack(1, 0)));
        both_ways("50 02 FF FF", v, &Packet::PubRec(ack(65_535, 0)));
        both_ways("62 02 00 07", v, &Packet::PubRel(ack(7, 0)));
        both_ways("70 02 00 07", v, &Packet::PubComp(ack(7, 0)));
        malformed(decode_err("40 03 00 01 00", v));
        malformed(decode_err("40 01 00", v));
        protocol(decode_err("40 02 00 00", v));
    }
    // 3.x never carries the reason code.
    assert_eq!(
        encode_vec(&Packet::PubAck(ack(1, 0x80)), V3_1_1),
        wire("40 02 00 01").to_vec()
    );
}

#[test]
fn pub_responses_v5_short_forms() {
    both_ways("40 02 00 01", V5, &Packet::PubAck(ack(1, 0)));
    both_ways("50 03 00 01 10", V5, &Packet::PubRec(ack(1, 0x10)));
    // Reason and an empty property block decode; encode picks the short form.
    assert_eq!(
        decode_one("70 04 00 01 92 00", V5),
        Packet::PubComp(ack(1, 0x92))
    );
    assert_eq!(
        decode_one("62 04 00 01 00 00", V5),
        Packet::PubRel(ack(1, 0))
    );
    let with_reason_string = Packet::PubAck(PubResponse {
        packet_id: 1,
        reason: 0,
        properties: PropertyValues {
            reason_string: Some("ok".into()),
            ..PropertyValues::default()
        }
        .into(),
    });
    both_ways("40 09 00 01 00 05 1F 00 02 'ok'", V5, &with_reason_string);
    // Topic alias is not allowed in an acknowledgement.
    protocol(decode_err("40 07 00 01 00 03 23 00 01", V5));
}

// ---- SUBSCRIBE / SUBACK / UNSUBSCRIBE / UNSUBACK ---------------------------

fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        no_local: false,
        retain_as_published: false,
        retain_handling: 0,
    }
}

#[test]
fn subscribe_3_1_1_spec_example() {
    // 3.1.1 §3.8.3.1, Figure 3.22: "a/b" QoS 1, "c/d" QoS 2, packet id 10.
    let p = Packet::Subscribe(Subscribe {
        packet_id: 10,
        properties: Properties::default(),
        filters: vec![
            ("a/b".into(), opts(QoS::AtLeastOnce)),
            ("c/d".into(), opts(QoS::ExactlyOnce)),
        ],
    });
    both_ways("82 0E 00 0A 00 03 'a/b' 01 00 03 'c/d' 02", V3_1_1, &p);
    both_ways("82 0E 00 0A 00 03 'a/b' 01 00 03 'c/d' 02", V3_1, &p);
    malformed(decode_err("82 06 00 0A 00 01 'a' 03", V3_1_1));
    malformed(decode_err("82 06 00 0A 00 01 'a' 04", V3_1_1));
    malformed(decode_err("82 05 00 0A 00 01 'a'", V3_1_1));
    protocol(decode_err("82 02 00 0A", V3_1_1));
    protocol(decode_err("82 06 00 00 00 01 'a' 00", V3_1_1));
}

#[test]
fn subscribe_v5_options() {
    let p = Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: PropertyValues {
            subscription_identifiers: vec![300],
            ..PropertyValues::default()
        }
        .into(),
        filters: vec![(
            "x/#".into(),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: 2,
            },
        )],
    });
    both_ways("82 0C 00 01 03 0B AC 02 00 03 'x/#' 2D", V5, &p);
    // Reserved bits 6-7 [MQTT-3.8.3-5].
    malformed(decode_err("82 07 00 01 00 00 01 'a' 40", V5));
    // Maximum QoS 3 and Retain Handling 3 (§3.8.3.1).
    protocol(decode_err("82 07 00 01 00 00 01 'a' 03", V5));
    protocol(decode_err("82 07 00 01 00 00 01 'a' 30", V5));
    // No filter; two subscription identifiers; identifier 0.
    protocol(decode_err("82 03 00 01 00", V5));
    protocol(decode_err("82 0B 00 01 04 0B 01 0B 02 00 01 'a' 00", V5));
    protocol(decode_err("82 09 00 01 02 0B 00 00 01 'a' 00", V5));
    // Reason string belongs to acknowledgements.
    protocol(decode_err("82 0A 00 01 03 1F 00 00 00 01 'a' 00", V5));
}

#[test]
fn suback() {
    // 3.1.1 §3.9.3, Figure 3.26: granted QoS 0, granted QoS 2, failure.
    let p = Packet::SubAck(SubAck {
        packet_id: 10,
        properties: Properties::default(),
        reasons: vec![0x00, 0x02, 0x80],
    });
    both_ways("90 05 00 0A 00 02 80", V3_1_1, &p);
    both_ways("90 06 00 0A 00 00 02 80", V5, &p);
    protocol(decode_err("90 02 00 0A", V3_1_1));
    protocol(decode_err("90 03 00 0A 00", V5));
}

#[test]
fn unsubscribe_and_unsuback() {
    let p = Packet::Unsubscribe(Unsubscribe {
        packet_id: 10,
        properties: Properties::default(),
        filters: vec!["a/b".into(), "c/d".into()],
    });
    both_ways("A2 0C 00 0A 00 03 'a/b' 00 03 'c/d'", V3_1_1, &p);
    both_ways("A2 0D 00 0A 00 00 03 'a/b' 00 03 'c/d'", V5, &p);
    protocol(decode_err("A2 02 00 0A", V3_1_1));
    protocol(decode_err("A2 03 00 0A 00", V5));
    protocol(decode_err("A2 05 00 00 00 01 'a'", V3_1_1));

    let v3 = Packet::UnsubAck(UnsubAck {
        packet_id: 10,
        properties: Properties::default(),
        reasons: vec![],
    });
    both_ways("B0 02 00 0A", V3_1_1, &v3);
    malformed(decode_err("B0 03 00 0A 00", V3_1_1));
    let v5 = Packet::UnsubAck(UnsubAck {
        packet_id: 10,
        properties: Properties::default(),
        reasons: vec![0x00, 0x11],
    });
    both_ways("B0 05 00 0A 00 00 11", V5, &v5);
    protocol(decode_err("B0 03 00 0A 00", V5));
    // 3.x UNSUBACK has no payload: the reasons are left out.
    assert_eq!(encode_vec(&v5, V3_1_1), wire("B0 02 00 0A").to_vec());
}

// ---- DISCONNECT / AUTH -----------------------------------------------------

#[test]
fn disconnect_v5() {
    let shutting_down = Packet::Disconnect(Disconnect {
        reason: 0x8B,
        properties: Properties::default(),
    });
    // We always write the property length after a non-zero reason, and
    // accept the 3-byte form the spec allows.
    both_ways("E0 02 8B 00", V5, &shutting_down);
    assert_eq!(decode_one("E0 01 8B", V5), shutting_down);
    let moved = Packet::Disconnect(Disconnect {
        reason: 0x9D,
        properties: PropertyValues {
            server_reference: Some("b".into()),
            session_expiry_interval: Some(0),
            ..PropertyValues::default()
        }
        .into(),
    });
    both_ways("E0 0B 9D 09 11 00 00 00 00 1C 00 01 'b'", V5, &moved);
    // Receive maximum does not belong in DISCONNECT.
    protocol(decode_err("E0 05 00 03 21 00 01", V5));
    // 3.x drops reason and properties.
    assert_eq!(encode_vec(&moved, V3_1_1), wire("E0 00").to_vec());
}

#[test]
fn auth() {
    let success = Packet::Auth(Auth {
        reason: 0,
        properties: Properties::default(),
    });
    both_ways("F0 00", V5, &success);
    let cont = Packet::Auth(Auth {
        reason: 0x18,
        properties: PropertyValues {
            authentication_method: Some("PLAIN".into()),
            ..PropertyValues::default()
        }
        .into(),
    });
    both_ways("F0 0A 18 08 15 00 05 'PLAIN'", V5, &cont);
    // A non-zero reason always gets a property length when encoded.
    let bare = Packet::Auth(Auth {
        reason: 0x19,
        properties: Properties::default(),
    });
    both_ways("F0 02 19 00", V5, &bare);
    assert_eq!(decode_one("F0 01 19", V5), bare);
    protocol(decode_err("F0 04 18 02 17 01", V5));
    let mut buf = BytesMut::new();
    assert_eq!(
        encode(&success, V3_1_1, &mut buf),
        Err(EncodeError::NotInVersion("AUTH"))
    );
    assert_eq!(
        encoded_len(&success, V3_1),
        Err(EncodeError::NotInVersion("AUTH"))
    );
    assert!(buf.is_empty());
}

// ---- Encoder errors ----------------------------------------------------------

#[test]
fn encode_errors() {
    let mut buf = BytesMut::new();
    let long_topic = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "x".repeat(65_536).into(),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::new(),
    });
    assert_eq!(
        encode(&long_topic, V5, &mut buf),
        Err(EncodeError::StringTooLong(65_536))
    );
    let q0_with_id = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".into(),
        packet_id: Some(1),
        properties: Properties::default(),
        payload: Bytes::new(),
    });
    assert!(matches!(
        encode(&q0_with_id, V5, &mut buf),
        Err(EncodeError::Invalid(_))
    ));
    let q1_without_id = Packet::Publish(Publish {
        qos: QoS::AtLeastOnce,
        packet_id: None,
        ..match &q0_with_id {
            Packet::Publish(p) => p.clone(),
            _ => unreachable!(),
        }
    });
    assert!(matches!(
        encode(&q1_without_id, V5, &mut buf),
        Err(EncodeError::Invalid(_))
    ));
    let dup_q0 = Packet::Publish(Publish {
        dup: true,
        packet_id: None,
        ..match &q0_with_id {
            Packet::Publish(p) => p.clone(),
            _ => unreachable!(),
        }
    });
    assert!(matches!(
        encode(&dup_q0, V5, &mut buf),
        Err(EncodeError::Invalid(_))
    ));
    // A property the packet may not carry.
    let mut connect = minimal_connect(V5, "c");
    if let Packet::Connect(c) = &mut connect {
        c.properties.topic_alias = Some(1);
    }
    assert_eq!(
        encode(&connect, V5, &mut buf),
        Err(EncodeError::PropertyNotAllowed(0x23))
    );
    // Remaining length above 268435455 (the zeroed payload is never touched).
    let huge = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".into(),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::from(vec![0u8; 268_435_453]),
    });
    assert_eq!(
        encoded_len(&huge, V3_1_1),
        Err(EncodeError::PacketTooLarge(268_435_456))
    );
    assert!(buf.is_empty(), "nothing written on error");
}
