//! Codec properties: every packet round-trips; any strict prefix of a
//! valid datagram is an error (datagrams have no "need more"); arbitrary
//! bytes never panic.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tributary_mqttsn::codec::{decode, encode};
use tributary_mqttsn::packet::{
    Connect, Encapsulated, Packet, Publish, QoS, ReturnCode, SubTopic, Subscribe, TopicIdType,
    WillTopic,
};

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce),
        Just(QoS::NoConnection)
    ]
}

fn code() -> impl Strategy<Value = ReturnCode> {
    any::<u8>().prop_map(ReturnCode::from_u8)
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn text(min: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::char::range('!', '~'), min..40)
        .prop_map(|v| v.into_iter().collect())
}

fn will_topic() -> impl Strategy<Value = Option<WillTopic>> {
    prop::option::of(
        (qos(), any::<bool>(), text(0)).prop_map(|(qos, retain, topic)| WillTopic {
            qos,
            retain,
            topic,
        }),
    )
}

fn sub_topic() -> impl Strategy<Value = SubTopic> {
    prop_oneof![
        text(0).prop_map(SubTopic::Name),
        any::<u16>().prop_map(SubTopic::Predefined),
        any::<[u8; 2]>().prop_map(SubTopic::Short),
    ]
}

fn topic_id_type() -> impl Strategy<Value = TopicIdType> {
    prop_oneof![
        Just(TopicIdType::Normal),
        Just(TopicIdType::Predefined),
        Just(TopicIdType::Short)
    ]
}

fn plain_packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        (any::<u8>(), any::<u16>())
            .prop_map(|(gw_id, duration)| Packet::Advertise { gw_id, duration }),
        any::<u8>().prop_map(|radius| Packet::SearchGw { radius }),
        (any::<u8>(), bytes(20)).prop_map(|(gw_id, gw_addr)| Packet::GwInfo { gw_id, gw_addr }),
        (
            any::<bool>(),
            any::<bool>(),
            any::<u8>(),
            any::<u16>(),
            text(0)
        )
            .prop_map(|(will, clean_session, protocol_id, duration, client_id)| {
                Packet::Connect(Connect {
                    will,
                    clean_session,
                    protocol_id,
                    duration,
                    client_id,
                })
            }),
        code().prop_map(|code| Packet::ConnAck { code }),
        Just(Packet::WillTopicReq),
        will_topic().prop_map(Packet::WillTopic),
        Just(Packet::WillMsgReq),
        bytes(300).prop_map(|payload| Packet::WillMsg { payload }),
        (any::<u16>(), any::<u16>(), text(0)).prop_map(|(topic_id, msg_id, topic_name)| {
            Packet::Register {
                topic_id,
                msg_id,
                topic_name,
            }
        }),
        (any::<u16>(), any::<u16>(), code()).prop_map(|(topic_id, msg_id, code)| Packet::RegAck {
            topic_id,
            msg_id,
            code
        }),
        (
            any::<bool>(),
            qos(),
            any::<bool>(),
            topic_id_type(),
            any::<u16>(),
            any::<u16>(),
            bytes(600)
        )
            .prop_map(
                |(dup, qos, retain, topic_id_type, topic_id, msg_id, payload)| {
                    Packet::Publish(Publish {
                        dup,
                        qos,
                        retain,
                        topic_id_type,
                        topic_id,
                        msg_id,
                        payload,
                    })
                }
            ),
        (any::<u16>(), any::<u16>(), code()).prop_map(|(topic_id, msg_id, code)| Packet::PubAck {
            topic_id,
            msg_id,
            code
        }),
        any::<u16>().prop_map(|msg_id| Packet::PubComp { msg_id }),
        any::<u16>().prop_map(|msg_id| Packet::PubRec { msg_id }),
        any::<u16>().prop_map(|msg_id| Packet::PubRel { msg_id }),
        (any::<bool>(), qos(), any::<u16>(), sub_topic()).prop_map(|(dup, qos, msg_id, topic)| {
            Packet::Subscribe(Subscribe {
                dup,
                qos,
                msg_id,
                topic,
            })
        }),
        (qos(), any::<u16>(), any::<u16>(), code()).prop_map(|(qos, topic_id, msg_id, code)| {
            Packet::SubAck {
                qos,
                topic_id,
                msg_id,
                code,
            }
        }),
        (any::<u16>(), sub_topic())
            .prop_map(|(msg_id, topic)| Packet::Unsubscribe { msg_id, topic }),
        any::<u16>().prop_map(|msg_id| Packet::UnsubAck { msg_id }),
        prop::option::of(text(1)).prop_map(|client_id| Packet::PingReq { client_id }),
        Just(Packet::PingResp),
        prop::option::of(any::<u16>()).prop_map(|duration| Packet::Disconnect { duration }),
        will_topic().prop_map(Packet::WillTopicUpd),
        code().prop_map(|code| Packet::WillTopicResp { code }),
        bytes(40).prop_map(|payload| Packet::WillMsgUpd { payload }),
        code().prop_map(|code| Packet::WillMsgResp { code }),
    ]
}

fn packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        4 => plain_packet(),
        1 => (0u8..4, bytes(300), plain_packet()).prop_map(|(radius, node_id, p)| {
            Packet::Encapsulated(Encapsulated {
                radius,
                node_id,
                packet: Box::new(p),
            })
        }),
    ]
}

fn encoded(p: &Packet) -> Bytes {
    let mut b = BytesMut::new();
    encode(p, &mut b).expect("encodes");
    b.freeze()
}

proptest! {
    #[test]
    fn round_trip(p in packet()) {
        let wire = encoded(&p);
        prop_assert_eq!(decode(&wire), Ok(p));
    }

    #[test]
    fn strict_prefix_is_an_error(p in packet(), cut in any::<prop::sample::Index>()) {
        let wire = encoded(&p);
        let n = cut.index(wire.len());
        prop_assert!(decode(&wire.slice(..n)).is_err(), "prefix of {} octets decoded", n);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(p) = decode(&Bytes::from(data)) {
            // Whatever decodes also encodes and decodes to itself.
            let wire = encoded(&p);
            prop_assert_eq!(decode(&wire), Ok(p));
        }
    }
}
