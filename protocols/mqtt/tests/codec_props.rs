//! Properties of the codec over generated packets: round trip, exact
//! `encoded_len`, strict prefixes need more bytes, oversized packets are
//! refused from the fixed header, and arbitrary or corrupted bytes never
//! panic.

#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;
use tributary_mqtt::codec::{decode, encode, encoded_len, DecodeError};
use tributary_mqtt::packet::{
    Auth, ConnAck, Connect, Disconnect, LastWill, Packet, Properties, PropertyValues,
    ProtocolVersion, PubResponse, Publish, QoS, SubAck, Subscribe, SubscriptionOptions, UnsubAck,
    Unsubscribe,
};

// ---- strategies ------------------------------------------------------------

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![
        Just(ProtocolVersion::V3_1),
        Just(ProtocolVersion::V3_1_1),
        Just(ProtocolVersion::V5)
    ]
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

/// Any string the codec accepts: printable Unicode (no U+0000).
fn text() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn data() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn flag() -> impl Strategy<Value = Option<u8>> {
    of(0..=1u8)
}

/// Properties with every field set at random to a valid value; narrowed
/// to one packet type by [`only`].
fn any_properties() -> impl Strategy<Value = PropertyValues> {
    let a = (
        flag(),
        of(any::<u32>()),
        of(text()),
        of(text()),
        of(data()),
        vec(1..=268_435_455u32, 0..3),
        of(any::<u32>()),
        of(text()),
        of(any::<u16>()),
        of(text()),
    );
    let b = (
        of(data()),
        flag(),
        of(any::<u32>()),
        flag(),
        of(text()),
        of(text()),
        of(text()),
        of(1..=u16::MAX),
        of(any::<u16>()),
        of(1..=u16::MAX),
    );
    let c = (
        flag(),
        flag(),
        vec((text(), text()), 0..3),
        of(1..=u32::MAX),
        flag(),
        flag(),
        flag(),
    );
    (a, b, c).prop_map(|(a, b, c)| PropertyValues {
        payload_format_indicator: a.0,
        message_expiry_interval: a.1,
        content_type: a.2,
        response_topic: a.3,
        correlation_data: a.4,
        subscription_identifiers: a.5,
        session_expiry_interval: a.6,
        assigned_client_identifier: a.7,
        server_keep_alive: a.8,
        authentication_method: a.9,
        authentication_data: b.0,
        request_problem_information: b.1,
        will_delay_interval: b.2,
        request_response_information: b.3,
        response_information: b.4,
        server_reference: b.5,
        reason_string: b.6,
        receive_maximum: b.7,
        topic_alias_maximum: b.8,
        topic_alias: b.9,
        maximum_qos: c.0,
        retain_available: c.1,
        user_properties: c.2,
        maximum_packet_size: c.3,
        wildcard_subscription_available: c.4,
        subscription_identifier_available: c.5,
        shared_subscription_available: c.6,
    })
}

#[derive(Clone, Copy)]
enum Kind {
    Connect,
    ConnAck,
    Publish,
    Will,
    PubResponse,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

/// Keeps only what MQTT 5 §2.2.2.2 allows in `kind`.
fn only(p: PropertyValues, kind: Kind) -> Properties {
    let user_properties = p.user_properties.clone();
    let none = PropertyValues {
        user_properties,
        ..PropertyValues::default()
    };
    let kept = match kind {
        Kind::Connect => PropertyValues {
            session_expiry_interval: p.session_expiry_interval,
            authentication_method: p.authentication_method,
            authentication_data: p.authentication_data,
            request_problem_information: p.request_problem_information,
            request_response_information: p.request_response_information,
            receive_maximum: p.receive_maximum,
            topic_alias_maximum: p.topic_alias_maximum,
            maximum_packet_size: p.maximum_packet_size,
            ..none
        },
        Kind::ConnAck => PropertyValues {
            session_expiry_interval: p.session_expiry_interval,
            assigned_client_identifier: p.assigned_client_identifier,
            server_keep_alive: p.server_keep_alive,
            authentication_method: p.authentication_method,
            authentication_data: p.authentication_data,
            response_information: p.response_information,
            server_reference: p.server_reference,
            reason_string: p.reason_string,
            receive_maximum: p.receive_maximum,
            topic_alias_maximum: p.topic_alias_maximum,
            maximum_qos: p.maximum_qos,
            retain_available: p.retain_available,
            maximum_packet_size: p.maximum_packet_size,
            wildcard_subscription_available: p.wildcard_subscription_available,
            subscription_identifier_available: p.subscription_identifier_available,
            shared_subscription_available: p.shared_subscription_available,
            ..none
        },
        Kind::Publish | Kind::Will => PropertyValues {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            subscription_identifiers: if matches!(kind, Kind::Publish) {
                p.subscription_identifiers
            } else {
                Vec::new()
            },
            topic_alias: if matches!(kind, Kind::Publish) {
                p.topic_alias
            } else {
                None
            },
            will_delay_interval: if matches!(kind, Kind::Will) {
                p.will_delay_interval
            } else {
                None
            },
            ..none
        },
        Kind::PubResponse | Kind::SubAck | Kind::UnsubAck => PropertyValues {
            reason_string: p.reason_string,
            ..none
        },
        Kind::Subscribe => PropertyValues {
            subscription_identifiers: p.subscription_identifiers.into_iter().take(1).collect(),
            ..none
        },
        Kind::Unsubscribe => none,
        Kind::Disconnect => PropertyValues {
            session_expiry_interval: p.session_expiry_interval,
            server_reference: p.server_reference,
            reason_string: p.reason_string,
            ..none
        },
        Kind::Auth => PropertyValues {
            authentication_method: p.authentication_method,
            authentication_data: p.authentication_data,
            reason_string: p.reason_string,
            ..none
        },
    };
    kept.into()
}

/// Properties for `kind` in `v`: empty before MQTT 5.
fn props(v: ProtocolVersion, kind: Kind) -> BoxedStrategy<Properties> {
    if v.is_v5() {
        any_properties().prop_map(move |p| only(p, kind)).boxed()
    } else {
        Just(Properties::default()).boxed()
    }
}

/// A reason code: any byte in MQTT 5, always 0 before.
fn reason(v: ProtocolVersion) -> BoxedStrategy<u8> {
    if v.is_v5() {
        any::<u8>().boxed()
    } else {
        Just(0).boxed()
    }
}

fn connect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let will = (text(), data(), qos(), any::<bool>(), props(v, Kind::Will)).prop_map(
        |(topic, payload, qos, retain, properties)| LastWill {
            topic,
            payload,
            qos,
            retain,
            properties,
        },
    );
    (
        any::<bool>(),
        any::<u16>(),
        text(),
        of(will),
        of(text()),
        of(data()),
        props(v, Kind::Connect),
    )
        .prop_map(
            move |(
                clean_start,
                keep_alive,
                client_id,
                will,
                mut username,
                password,
                properties,
            )| {
                if password.is_some() && !v.is_v5() && username.is_none() {
                    username = Some(String::new());
                }
                Packet::Connect(Box::new(Connect {
                    protocol: v,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
}

fn publish(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        text(),
        packet_id(),
        props(v, Kind::Publish),
        data(),
    )
        .prop_map(|(dup, qos, retain, topic, id, properties, payload)| {
            let at_most_once = qos == QoS::AtMostOnce;
            Packet::Publish(Publish {
                dup: dup && !at_most_once,
                qos,
                retain,
                topic: topic.into(),
                packet_id: (!at_most_once).then_some(id),
                properties,
                payload,
            })
        })
}

fn response(v: ProtocolVersion) -> impl Strategy<Value = PubResponse> {
    (packet_id(), reason(v), props(v, Kind::PubResponse)).prop_map(
        |(packet_id, reason, properties)| PubResponse {
            packet_id,
            reason,
            properties,
        },
    )
}

fn options(v: ProtocolVersion) -> BoxedStrategy<SubscriptionOptions> {
    if v.is_v5() {
        (qos(), any::<bool>(), any::<bool>(), 0..=2u8)
            .prop_map(
                |(qos, no_local, retain_as_published, retain_handling)| SubscriptionOptions {
                    qos,
                    no_local,
                    retain_as_published,
                    retain_handling,
                },
            )
            .boxed()
    } else {
        qos()
            .prop_map(|qos| SubscriptionOptions {
                qos,
                no_local: false,
                retain_as_published: false,
                retain_handling: 0,
            })
            .boxed()
    }
}

fn packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let reasons = vec(any::<u8>(), 1..5);
    let unsuback_reasons = if v.is_v5() {
        vec(any::<u8>(), 1..5).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    let mut choices: Vec<BoxedStrategy<Packet>> = vec![
        connect(v).boxed(),
        (any::<bool>(), any::<u8>(), props(v, Kind::ConnAck))
            .prop_map(|(session_present, code, properties)| {
                Packet::ConnAck(ConnAck {
                    session_present,
                    code,
                    properties,
                })
            })
            .boxed(),
        publish(v).boxed(),
        response(v).prop_map(Packet::PubAck).boxed(),
        response(v).prop_map(Packet::PubRec).boxed(),
        response(v).prop_map(Packet::PubRel).boxed(),
        response(v).prop_map(Packet::PubComp).boxed(),
        (
            packet_id(),
            props(v, Kind::Subscribe),
            vec((text(), options(v)), 1..4),
        )
            .prop_map(|(packet_id, properties, filters)| {
                Packet::Subscribe(Subscribe {
                    packet_id,
                    properties,
                    filters,
                })
            })
            .boxed(),
        (packet_id(), props(v, Kind::SubAck), reasons)
            .prop_map(|(packet_id, properties, reasons)| {
                Packet::SubAck(SubAck {
                    packet_id,
                    properties,
                    reasons,
                })
            })
            .boxed(),
        (packet_id(), props(v, Kind::Unsubscribe), vec(text(), 1..4))
            .prop_map(|(packet_id, properties, filters)| {
                Packet::Unsubscribe(Unsubscribe {
                    packet_id,
                    properties,
                    filters,
                })
            })
            .boxed(),
        (packet_id(), props(v, Kind::UnsubAck), unsuback_reasons)
            .prop_map(|(packet_id, properties, reasons)| {
                Packet::UnsubAck(UnsubAck {
                    packet_id,
                    properties,
                    reasons,
                })
            })
            .boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        (reason(v), props(v, Kind::Disconnect))
            .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties }))
            .boxed(),
    ];
    if v.is_v5() {
        choices.push(
            (any::<u8>(), props(v, Kind::Auth))
                .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }))
                .boxed(),
        );
    }
    proptest::strategy::Union::new(choices).boxed()
}

fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    version().prop_flat_map(|v| (Just(v), packet(v)))
}

fn encoded(packet: &Packet, v: ProtocolVersion) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(packet, v, &mut buf).unwrap();
    buf
}

/// Decodes until the buffer is used up, needs more, or fails; every packet
/// it gets must encode (whatever we accept we can send) and decode again to
/// the same packet.
fn decode_all(mut buf: BytesMut, v: ProtocolVersion, max: usize) {
    while let Ok(Some(packet)) = decode(&mut buf, v, max) {
        let mut again = BytesMut::new();
        assert_eq!(encode(&packet, v, &mut again), Ok(()));
        assert_eq!(encoded_len(&packet, v), Ok(again.len()));
        assert_eq!(decode(&mut again, v, usize::MAX), Ok(Some(packet)));
        assert!(again.is_empty());
    }
}

// ---- properties --------------------------------------------------------------

proptest! {
    #[test]
    fn round_trip((v, packet) in versioned_packet()) {
        let mut buf = encoded(&packet, v);
        prop_assert_eq!(decode(&mut buf, v, usize::MAX), Ok(Some(packet)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn encoded_len_is_exact((v, packet) in versioned_packet()) {
        let buf = encoded(&packet, v);
        prop_assert_eq!(encoded_len(&packet, v), Ok(buf.len()));
    }

    #[test]
    fn strict_prefixes_need_more((v, packet) in versioned_packet()) {
        let full = encoded(&packet, v);
        for len in 0..full.len() {
            let mut prefix = BytesMut::from(&full[..len]);
            prop_assert_eq!(decode(&mut prefix, v, usize::MAX), Ok(None), "prefix of {}", len);
            prop_assert_eq!(prefix.len(), len);
        }
    }

    #[test]
    fn too_large_from_the_header((v, packet) in versioned_packet(), cut in 0usize..8) {
        let full = encoded(&packet, v);
        let size = full.len();
        let max = size - 1;
        // Whatever part of the packet has arrived, as long as the fixed
        // header is complete.
        let header = 1 + full[1..].iter().take_while(|b| **b & 0x80 != 0).count() + 1;
        let arrived = (header + cut).min(size);
        let mut buf = BytesMut::from(&full[..arrived]);
        prop_assert_eq!(decode(&mut buf, v, max), Err(DecodeError::TooLarge { size, max }));
        prop_assert_eq!(buf.len(), arrived);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..300), v in version()) {
        decode_all(BytesMut::from(&bytes[..]), v, usize::MAX);
        decode_all(BytesMut::from(&bytes[..]), v, 64);
    }

    #[test]
    fn corrupted_packets_never_panic(
        (v, packet) in versioned_packet(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        other in version(),
    ) {
        let mut bytes = encoded(&packet, v);
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        decode_all(bytes.clone(), v, usize::MAX);
        decode_all(bytes, other, usize::MAX);
    }
}
