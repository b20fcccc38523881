//! RFC 7252 message layer behaviour: deduplication, retransmission with
//! back-off under virtual time, RST, pings, malformed input.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use support::*;
use tributary_coap::codec::{decode, encode};
use tributary_coap::layer::{MessageLayer, Received, TransmissionParams};
use tributary_coap::msg::opt;
use tributary_coap::{ChannelConfig, Code, Message, MessageType, Token};
use tributary_core::QoS;

#[test]
fn duplicate_con_publish_is_routed_once_and_answered_identically() {
    let mut p = Peer::new(ChannelConfig::default());
    let sub = Subscriber::new(&p.broker, "mqtt-sub", "dup/#", QoS::AtLeastOnce);
    let publish = con(Code::POST, "ps/dup/t").mid(0x1234).payload("once");
    let first = p.send(&publish);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].mtype, MessageType::Ack);
    assert_eq!(first[0].code, Code::CHANGED);
    assert_eq!(first[0].message_id, 0x1234);
    p.advance(Duration::from_secs(30));
    let again = p.send(&publish);
    assert_eq!(again, first, "a duplicate CON gets the same ACK");
    assert_eq!(sub.take(p.now).len(), 1, "published exactly once");
}

#[test]
fn duplicate_non_is_ignored() {
    let mut p = Peer::new(ChannelConfig::default());
    let sub = Subscriber::new(&p.broker, "mqtt-sub", "n", QoS::AtMostOnce);
    let publish = non(Code::POST, "ps/n").mid(9).payload("x");
    assert_eq!(p.send(&publish).len(), 1);
    assert!(p.send(&publish).is_empty());
    assert_eq!(sub.take(p.now).len(), 1);
}

#[test]
fn ping_gets_rst_and_stray_ack_is_ignored() {
    let mut p = Peer::new(ChannelConfig::default());
    let out = p.send(&empty(MessageType::Con, 77));
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].mtype, out[0].code, out[0].message_id),
        (MessageType::Rst, Code::EMPTY, 77)
    );
    assert!(p.send(&empty(MessageType::Ack, 78)).is_empty());
    assert!(p.send(&empty(MessageType::Rst, 79)).is_empty());
}

#[test]
fn malformed_con_is_reset_and_counted_malformed_non_ignored() {
    let mut p = Peer::new(ChannelConfig::default());
    // CON with token length 9 (reserved).
    let out = p.send_raw(&[0x49, 0x02, 0x00, 0x10, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].mtype, out[0].message_id), (MessageType::Rst, 0x10));
    // NON with a bad option: ignored.
    assert!(p.send_raw(&[0x50, 0x02, 0x00, 0x11, 0xF1, 0x00]).is_empty());
    // Version 2: silently ignored; too short: ignored.
    assert!(p.send_raw(&[0x80, 0x02, 0x00, 0x12]).is_empty());
    assert!(p.send_raw(&[0x40]).is_empty());
    let m = p.broker.metrics();
    assert_eq!(
        tributary_core::metrics::Metrics::get(&m.packets_malformed),
        4
    );
}

#[test]
fn unknown_critical_option_is_bad_option_elective_ignored() {
    let mut p = Peer::new(ChannelConfig::default());
    let r = p.one(&con(Code::POST, "ps/x").option(65001, b"v").payload("p"));
    assert_eq!(r.code, Code::BAD_OPTION);
    let r = p.one(
        &con(Code::POST, "ps/x")
            .mid(2)
            .option(65000, b"v")
            .payload("p"),
    );
    assert_eq!(r.code, Code::CHANGED);
    let r = p.one(
        &con(Code::GET, "ps/x")
            .mid(3)
            .option(opt::PROXY_URI, b"coap://a/b"),
    );
    assert_eq!(r.code, Code::PROXYING_NOT_SUPPORTED);
}

#[test]
fn tokens_of_every_length_are_echoed() {
    let mut p = Peer::new(ChannelConfig::default());
    for len in 0..=8u8 {
        let token: Vec<u8> = (0..len).collect();
        let r = p.one(
            &con(Code::POST, "ps/tok")
                .mid(100 + u16::from(len))
                .token(&token)
                .payload("x"),
        );
        assert_eq!(r.token.as_bytes(), &token[..]);
        assert_eq!(r.code, Code::CHANGED);
    }
}

#[test]
fn no_response_option_suppresses_success_but_still_acks() {
    let mut p = Peer::new(ChannelConfig::default());
    let out = p.send(
        &con(Code::POST, "ps/nr")
            .uint(opt::NO_RESPONSE, 2)
            .payload("x"),
    );
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].mtype, out[0].code), (MessageType::Ack, Code::EMPTY));
    assert!(p
        .send(
            &non(Code::POST, "ps/nr")
                .mid(2)
                .uint(opt::NO_RESPONSE, 2)
                .payload("x")
        )
        .is_empty());
}

fn con_notification() -> Message {
    Message::new(
        MessageType::Con,
        Code::CONTENT,
        0,
        Token::new(&[5]).expect("t"),
    )
}

#[test]
fn con_retransmission_backs_off_then_gives_up() {
    let params = TransmissionParams::default();
    let start = Instant::now();
    for seed in 0..20u64 {
        let mut l = MessageLayer::new(params, seed);
        let mid = l.send(con_notification(), start);
        assert_eq!(l.take_output().len(), 1);
        let first = l.next_deadline().expect("deadline") - start;
        // Initial timeout in [ACK_TIMEOUT, ACK_TIMEOUT × ACK_RANDOM_FACTOR] (§4.2).
        assert!(
            first >= Duration::from_secs(2) && first <= Duration::from_secs(3),
            "{first:?}"
        );
        let mut sends = vec![start];
        let mut now;
        let gave_up = loop {
            now = l.next_deadline().expect("deadline");
            let g = l.handle_timeout(now);
            if !g.is_empty() {
                break g;
            }
            assert_eq!(l.take_output().len(), 1, "one retransmission per timeout");
            sends.push(now);
        };
        assert_eq!(gave_up[0].message_id, mid);
        assert_eq!(
            sends.len(),
            5,
            "1 transmission + MAX_RETRANSMIT (4) retransmissions"
        );
        // Each interval doubles.
        let gaps: Vec<Duration> = sends.windows(2).map(|w| w[1] - w[0]).collect();
        for w in gaps.windows(2) {
            assert_eq!(w[1], w[0] * 2);
        }
        // Gave up within MAX_TRANSMIT_WAIT (93 s).
        assert!(now - start <= Duration::from_secs(93));
        assert!(l.next_deadline().is_none() || l.outstanding() == 0);
    }
}

#[test]
fn ack_stops_retransmission() {
    let start = Instant::now();
    let mut l = MessageLayer::new(TransmissionParams::default(), 1);
    let mid = l.send(con_notification(), start);
    l.take_output();
    let ack = encode(&Message::empty(MessageType::Ack, mid)).expect("enc");
    assert!(matches!(
        l.receive(&ack, start),
        Received::Acknowledged { .. }
    ));
    assert_eq!(l.outstanding(), 0);
    assert!(l
        .handle_timeout(start + Duration::from_secs(100))
        .is_empty());
    assert!(l.take_output().is_empty());
}

#[test]
fn jitter_comes_from_the_injected_seed() {
    let start = Instant::now();
    let deadline = |seed| {
        let mut l = MessageLayer::new(TransmissionParams::default(), seed);
        l.send(con_notification(), start);
        l.next_deadline()
    };
    assert_eq!(deadline(7), deadline(7));
    let spread: std::collections::HashSet<_> = (0..10).map(deadline).collect();
    assert!(spread.len() > 1);
}

fn arb_message() -> impl Strategy<Value = Message> {
    (
        prop_oneof![
            Just(MessageType::Con),
            Just(MessageType::Non),
            Just(MessageType::Ack),
            Just(MessageType::Rst)
        ],
        1u8..=255,
        any::<u16>(),
        proptest::collection::vec(any::<u8>(), 0..=8),
        proptest::collection::vec(
            (0u16..2000, proptest::collection::vec(any::<u8>(), 0..300)),
            0..6,
        ),
        proptest::collection::vec(any::<u8>(), 0..1500),
    )
        .prop_map(|(mtype, code, mid, token, options, payload)| {
            let mut m = Message::new(mtype, Code(code), mid, Token::new(&token).expect("t"));
            for (n, v) in options {
                m.add_option(n, v);
            }
            m.payload = Bytes::from(payload);
            m
        })
}

proptest! {
    #[test]
    fn encode_decode_round_trip(m in arb_message()) {
        let bytes = encode(&m).expect("encode");
        prop_assert_eq!(decode(&bytes), Ok(m));
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode(&data);
        let mut p = Peer::new(ChannelConfig::default());
        p.channel.handle_datagram(&data, p.now);
        for out in p.channel.take_output() {
            prop_assert!(decode(&out).is_ok());
        }
        p.advance(Duration::from_secs(300));
    }

    #[test]
    fn mutated_valid_requests_never_panic(flips in proptest::collection::vec((0usize..64, any::<u8>()), 1..6)) {
        let mut bytes = con(Code::POST, "ps/a/b?qos=1&retain=true").token(&[1, 2, 3]).block1(0, true, 0).payload(vec![7u8; 16]).bytes();
        for (i, b) in flips {
            let i = i % bytes.len();
            bytes[i] = b;
        }
        let mut p = Peer::new(ChannelConfig::default());
        p.channel.handle_datagram(&bytes, p.now);
        let _ = p.channel.take_output();
    }

    /// Whatever order ids arrive in, each request is processed once while
    /// its id is remembered, and every duplicate CON gets the first answer.
    #[test]
    fn dedup_processes_each_message_id_once(ids in proptest::collection::vec(0u16..20, 1..60)) {
        let mut p = Peer::new(ChannelConfig::default());
        let sub = Subscriber::new(&p.broker, "s", "d", QoS::AtMostOnce);
        let mut answers = std::collections::HashMap::new();
        for id in &ids {
            let out = p.send(&con(Code::POST, "ps/d").mid(*id).payload("x"));
            prop_assert_eq!(out.len(), 1);
            let first = answers.entry(*id).or_insert_with(|| out[0].clone());
            prop_assert_eq!(&out[0], first);
            p.advance(Duration::from_millis(100));
        }
        prop_assert_eq!(sub.take(p.now).len(), answers.len());
    }
}
