//! The codec against the message formats of MQTT-SN 1.2 §5.4, written out
//! octet by octet, and the malformed datagrams of §5.2.

use bytes::{Bytes, BytesMut};
use tributary_mqttsn::codec::{decode, encode, DecodeError};
use tributary_mqttsn::packet::{
    Connect, Encapsulated, Packet, Publish, QoS, ReturnCode, SubTopic, Subscribe, TopicIdType,
    WillTopic,
};

fn wire(p: &Packet) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode(p, &mut b).expect("encodes");
    b.to_vec()
}

/// Decodes `bytes` to `packet` and encodes `packet` back to `bytes`.
fn both_ways(bytes: &[u8], packet: Packet) {
    assert_eq!(decode(&Bytes::copy_from_slice(bytes)), Ok(packet.clone()));
    assert_eq!(wire(&packet), bytes, "{packet:?}");
}

#[test]
fn discovery_messages() {
    // §5.4.1 ADVERTISE: Length 5, MsgType 0x00, GwId, Duration.
    both_ways(
        &[5, 0x00, 7, 0x03, 0x84],
        Packet::Advertise {
            gw_id: 7,
            duration: 900,
        },
    );
    // §5.4.2 SEARCHGW: Length 3, 0x01, Radius.
    both_ways(&[3, 0x01, 1], Packet::SearchGw { radius: 1 });
    // §5.4.3 GWINFO from the gateway: no GwAdd.
    both_ways(
        &[3, 0x02, 9],
        Packet::GwInfo {
            gw_id: 9,
            gw_addr: Bytes::new(),
        },
    );
    // ... and from a client, with the gateway's address.
    both_ways(
        &[7, 0x02, 9, 10, 0, 0, 1],
        Packet::GwInfo {
            gw_id: 9,
            gw_addr: Bytes::from_static(&[10, 0, 0, 1]),
        },
    );
}

#[test]
fn connect_and_will_messages() {
    // §5.4.4 CONNECT: Flags (Will 0x08 | CleanSession 0x04), ProtocolId 0x01, Duration, ClientId.
    both_ways(
        &[10, 0x04, 0x0C, 0x01, 0x00, 0x3C, b'd', b'e', b'v', b'1'],
        Packet::Connect(Connect {
            will: true,
            clean_session: true,
            protocol_id: 1,
            duration: 60,
            client_id: "dev1".into(),
        }),
    );
    // §5.4.5 CONNACK.
    both_ways(
        &[3, 0x05, 0x00],
        Packet::ConnAck {
            code: ReturnCode::Accepted,
        },
    );
    both_ways(
        &[3, 0x05, 0x01],
        Packet::ConnAck {
            code: ReturnCode::Congestion,
        },
    );
    both_ways(&[2, 0x06], Packet::WillTopicReq);
    // §5.4.7 WILLTOPIC: QoS 1 (0x20) | Retain (0x10).
    both_ways(
        &[5, 0x07, 0x30, b'w', b'/'],
        Packet::WillTopic(Some(WillTopic {
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "w/".into(),
        })),
    );
    // An empty WILLTOPIC (no Flags, no WillTopic) means "no will".
    both_ways(&[2, 0x07], Packet::WillTopic(None));
    both_ways(&[2, 0x08], Packet::WillMsgReq);
    both_ways(
        &[4, 0x09, b'b', b'y'],
        Packet::WillMsg {
            payload: Bytes::from_static(b"by"),
        },
    );
    both_ways(
        &[4, 0x1A, 0x00, b't'],
        Packet::WillTopicUpd(Some(WillTopic {
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "t".into(),
        })),
    );
    both_ways(&[2, 0x1A], Packet::WillTopicUpd(None));
    both_ways(
        &[3, 0x1B, 0x00],
        Packet::WillTopicResp {
            code: ReturnCode::Accepted,
        },
    );
    both_ways(
        &[3, 0x1C, b'x'],
        Packet::WillMsgUpd {
            payload: Bytes::from_static(b"x"),
        },
    );
    both_ways(
        &[3, 0x1D, 0x03],
        Packet::WillMsgResp {
            code: ReturnCode::NotSupported,
        },
    );
}

#[test]
fn register_and_publish_messages() {
    // §5.4.10 REGISTER: TopicId, MsgId, TopicName.
    both_ways(
        &[9, 0x0A, 0x00, 0x00, 0x00, 0x01, b'a', b'/', b'b'],
        Packet::Register {
            topic_id: 0,
            msg_id: 1,
            topic_name: "a/b".into(),
        },
    );
    // §5.4.11 REGACK: TopicId 1025, MsgId 1, ReturnCode.
    both_ways(
        &[7, 0x0B, 0x04, 0x01, 0x00, 0x01, 0x00],
        Packet::RegAck {
            topic_id: 1025,
            msg_id: 1,
            code: ReturnCode::Accepted,
        },
    );
    // §5.4.12 PUBLISH: DUP | QoS 2 | Retain | short topic "ab", MsgId 7.
    both_ways(
        &[9, 0x0C, 0b1101_0010, b'a', b'b', 0x00, 0x07, b'h', b'i'],
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic_id_type: TopicIdType::Short,
            topic_id: u16::from_be_bytes([b'a', b'b']),
            msg_id: 7,
            payload: Bytes::from_static(b"hi"),
        }),
    );
    // QoS -1 (0b11) to a predefined id.
    both_ways(
        &[7, 0x0C, 0b0110_0001, 0x00, 0x05, 0x00, 0x00],
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::NoConnection,
            retain: false,
            topic_id_type: TopicIdType::Predefined,
            topic_id: 5,
            msg_id: 0,
            payload: Bytes::new(),
        }),
    );
    // §5.4.13 PUBACK with "rejected: invalid topic ID".
    both_ways(
        &[7, 0x0D, 0x04, 0x01, 0x00, 0x09, 0x02],
        Packet::PubAck {
            topic_id: 1025,
            msg_id: 9,
            code: ReturnCode::InvalidTopicId,
        },
    );
    // §5.4.14 PUBREC, PUBREL, PUBCOMP.
    both_ways(&[4, 0x0F, 0x00, 0x07], Packet::PubRec { msg_id: 7 });
    both_ways(&[4, 0x10, 0x00, 0x07], Packet::PubRel { msg_id: 7 });
    both_ways(&[4, 0x0E, 0x00, 0x07], Packet::PubComp { msg_id: 7 });
}

#[test]
fn subscription_messages() {
    // §5.4.15 SUBSCRIBE with a topic name (wildcards allowed), QoS 1.
    both_ways(
        &[8, 0x12, 0x20, 0x00, 0x02, b'a', b'/', b'#'],
        Packet::Subscribe(Subscribe {
            dup: false,
            qos: QoS::AtLeastOnce,
            msg_id: 2,
            topic: SubTopic::Name("a/#".into()),
        }),
    );
    // ... with a predefined id.
    both_ways(
        &[7, 0x12, 0x01, 0x00, 0x03, 0x00, 0x0A],
        Packet::Subscribe(Subscribe {
            dup: false,
            qos: QoS::AtMostOnce,
            msg_id: 3,
            topic: SubTopic::Predefined(10),
        }),
    );
    // §5.4.16 SUBACK: granted QoS 2, TopicId 0 (wildcard), MsgId, ReturnCode.
    both_ways(
        &[8, 0x13, 0x40, 0x00, 0x00, 0x00, 0x02, 0x00],
        Packet::SubAck {
            qos: QoS::ExactlyOnce,
            topic_id: 0,
            msg_id: 2,
            code: ReturnCode::Accepted,
        },
    );
    // §5.4.17 UNSUBSCRIBE with a short topic name.
    both_ways(
        &[7, 0x14, 0x02, 0x00, 0x04, b'x', b'y'],
        Packet::Unsubscribe {
            msg_id: 4,
            topic: SubTopic::Short(*b"xy"),
        },
    );
    both_ways(&[4, 0x15, 0x00, 0x04], Packet::UnsubAck { msg_id: 4 });
}

#[test]
fn keep_alive_and_sleep_messages() {
    both_ways(&[2, 0x16], Packet::PingReq { client_id: None });
    // §5.4.19 PINGREQ with the ClientId of a sleeping client.
    both_ways(
        &[4, 0x16, b'c', b'1'],
        Packet::PingReq {
            client_id: Some("c1".into()),
        },
    );
    both_ways(&[2, 0x17], Packet::PingResp);
    both_ways(&[2, 0x18], Packet::Disconnect { duration: None });
    // §5.4.21 DISCONNECT with a sleep duration of 600 s.
    both_ways(
        &[4, 0x18, 0x02, 0x58],
        Packet::Disconnect {
            duration: Some(600),
        },
    );
}

#[test]
fn three_octet_length() {
    // §5.2.1: 0x01 then two octets of length, for messages of 256 octets or more.
    let payload = vec![0xAB; 300];
    let mut bytes = vec![0x01, 0x01, 0x35, 0x0C, 0x00, 0x04, 0x01, 0x00, 0x00];
    bytes.extend_from_slice(&payload);
    assert_eq!(bytes.len(), 0x135);
    both_ways(
        &bytes,
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic_id_type: TopicIdType::Normal,
            topic_id: 1025,
            msg_id: 0,
            payload: Bytes::from(payload),
        }),
    );
    // The 3-octet form is also accepted for short messages.
    assert_eq!(
        decode(&Bytes::from_static(&[0x01, 0x00, 0x04, 0x17])),
        Ok(Packet::PingResp)
    );
}

#[test]
fn encapsulated_message() {
    // §5.5: Length 5 covers Length, MsgType 0xFE, Ctrl, and a 2-octet
    // Wireless Node Id; the encapsulated PINGREQ follows.
    both_ways(
        &[5, 0xFE, 0x01, 0xBE, 0xEF, 2, 0x16],
        Packet::Encapsulated(Encapsulated {
            radius: 1,
            node_id: Bytes::from_static(&[0xBE, 0xEF]),
            packet: Box::new(Packet::PingReq { client_id: None }),
        }),
    );
    assert_eq!(
        decode(&Bytes::from_static(&[3, 0xFE, 0, 3, 0xFE, 0, 2, 0x16])),
        Err(DecodeError::NestedEncapsulation)
    );
}

#[test]
fn malformed_datagrams() {
    let d = |b: &'static [u8]| decode(&Bytes::from_static(b));
    assert_eq!(d(&[]), Err(DecodeError::Header));
    assert_eq!(d(&[2]), Err(DecodeError::Header));
    assert_eq!(d(&[0, 0x16]), Err(DecodeError::BadLength(0)));
    assert_eq!(
        d(&[4, 0x0F, 0x00]),
        Err(DecodeError::Truncated {
            declared: 4,
            actual: 3
        })
    );
    assert_eq!(d(&[2, 0x17, 0xFF]), Err(DecodeError::TrailingBytes(1)));
    assert_eq!(d(&[2, 0x03]), Err(DecodeError::UnknownType(0x03)));
    assert_eq!(d(&[2, 0x11]), Err(DecodeError::UnknownType(0x11)));
    assert_eq!(
        d(&[3, 0x0F, 0x00]),
        Err(DecodeError::ShortBody("acknowledgement"))
    );
    assert_eq!(d(&[3, 0x17, 0x00]), Err(DecodeError::LongBody("PINGRESP")));
    assert_eq!(
        d(&[7, 0x0C, 0x03, 0, 1, 0, 0]),
        Err(DecodeError::ReservedTopicIdType)
    );
    assert_eq!(
        d(&[4, 0x16, 0xFF, 0xFE]),
        Err(DecodeError::Utf8("PINGREQ client id"))
    );
    assert_eq!(d(&[0x01, 0x00, 0x02, 0x16]), Err(DecodeError::BadLength(2)));
}
