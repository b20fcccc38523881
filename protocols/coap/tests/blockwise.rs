//! RFC 7959 block-wise transfers through the channel: Block1 publish
//! assembly, Block2 retained reads and block-wise notifications.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use support::*;
use tributary_coap::block::{Assembled, Assembler, BlockValue};
use tributary_coap::msg::opt;
use tributary_coap::{ChannelConfig, Code, MessageType};
use tributary_core::QoS;

fn body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Publish `data` in blocks of 2^(szx+4); returns the answers.
fn block1_publish(p: &mut Peer, uri: &str, data: &[u8], szx: u8) -> Vec<tributary_coap::Message> {
    let size = 1usize << (szx + 4);
    let chunks: Vec<&[u8]> = data.chunks(size).collect();
    let mut answers = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let more = i + 1 < chunks.len();
        let mut r = con(Code::POST, uri)
            .mid(1000 + i as u16)
            .token(&[(i % 200) as u8, 1]) // tokens may change between blocks
            .block1(i as u32, more, szx)
            .payload(Bytes::copy_from_slice(chunk));
        if i == 0 {
            r = r.uint(opt::SIZE1, data.len() as u32);
        }
        answers.push(p.one(&r));
    }
    answers
}

#[test]
fn block1_publish_of_64k() {
    let mut p = Peer::new(ChannelConfig::default());
    let sub = Subscriber::new(&p.broker, "s", "big", QoS::AtMostOnce);
    let data = body(64 * 1024);
    let answers = block1_publish(&mut p, "ps/big?qos=1", &data, 6);
    assert_eq!(answers.len(), 64);
    for a in &answers[..63] {
        assert_eq!(a.code, Code::CONTINUE);
        assert!(block(a, opt::BLOCK1).expect("block1").more);
    }
    let last = &answers[63];
    assert_eq!(last.code, Code::CHANGED);
    let b = block(last, opt::BLOCK1).expect("block1");
    assert_eq!((b.num, b.more), (63, false));
    let got = sub.take(p.now);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].message.payload[..], &data[..]);
    assert_eq!(got[0].message.qos, QoS::AtLeastOnce);
}

#[test]
fn block1_out_of_order_is_incomplete() {
    let mut p = Peer::new(ChannelConfig::default());
    let r = p.one(
        &con(Code::POST, "ps/x")
            .block1(0, true, 0)
            .payload(vec![0u8; 16]),
    );
    assert_eq!(r.code, Code::CONTINUE);
    let r = p.one(
        &con(Code::POST, "ps/x")
            .mid(2)
            .block1(2, false, 0)
            .payload(vec![0u8; 3]),
    );
    assert_eq!(r.code, Code::REQUEST_ENTITY_INCOMPLETE);
    let r = p.one(
        &con(Code::POST, "ps/x")
            .mid(3)
            .block1(5, false, 0)
            .payload(vec![0u8; 3]),
    );
    assert_eq!(r.code, Code::REQUEST_ENTITY_INCOMPLETE);
}

#[test]
fn block1_too_large_announces_size1() {
    let mut p = Peer::new(ChannelConfig {
        max_body_size: 100,
        ..ChannelConfig::default()
    });
    let r = p.one(
        &con(Code::POST, "ps/x")
            .block1(0, true, 2)
            .uint(opt::SIZE1, 1000)
            .payload(vec![0u8; 64]),
    );
    assert_eq!(r.code, Code::REQUEST_ENTITY_TOO_LARGE);
    assert_eq!(r.uint_option(opt::SIZE1), Some(Ok(100)));
    let r = p.one(
        &con(Code::POST, "ps/x")
            .mid(2)
            .block1(0, true, 2)
            .payload(vec![0u8; 64]),
    );
    assert_eq!(r.code, Code::CONTINUE);
    let r = p.one(
        &con(Code::POST, "ps/x")
            .mid(3)
            .block1(1, true, 2)
            .payload(vec![0u8; 64]),
    );
    assert_eq!(r.code, Code::REQUEST_ENTITY_TOO_LARGE);
}

#[test]
fn large_retained_read_in_blocks() {
    let mut p = Peer::new(ChannelConfig::default());
    let data = body(3000);
    p.broker.publish(
        tributary_core::Message::new("r/big", Bytes::from(data.clone()), QoS::AtMostOnce, true),
        p.now,
    );
    let mut got = Vec::new();
    let mut etag = None;
    for num in 0..10u32 {
        let r = p.one(
            &con(Code::GET, "ps/r/big")
                .mid(10 + num as u16)
                .token(&[num as u8])
                .block2(num, 6),
        );
        assert_eq!(r.code, Code::CONTENT);
        let b = block(&r, opt::BLOCK2).expect("block2");
        assert_eq!(b.num, num);
        if num == 0 {
            assert_eq!(r.uint_option(opt::SIZE2), Some(Ok(3000)));
        }
        let e = r.option(opt::ETAG).expect("etag").to_vec();
        assert_eq!(etag.get_or_insert(e.clone()), &e);
        got.extend_from_slice(&r.payload);
        if !b.more {
            break;
        }
    }
    assert_eq!(got, data);
}

#[test]
fn large_notification_first_block_then_fetch_the_rest_with_fresh_tokens() {
    let mut p = Peer::new(ChannelConfig {
        block_szx: 2, // 64-byte blocks
        ..ChannelConfig::default()
    });
    let r = p.one(&con(Code::GET, "ps/n/+").token(&[0xEE]).observe(0));
    assert_eq!(r.code, Code::CONTENT);
    let data = body(200);
    p.broker.publish(
        tributary_core::Message::new("n/1", Bytes::from(data.clone()), QoS::AtMostOnce, false),
        p.now,
    );
    let n = p.wake();
    assert_eq!(n.len(), 1);
    let first = &n[0];
    assert_eq!(first.token.as_bytes(), &[0xEE]);
    assert!(observe_seq(first).is_some());
    let b = block(first, opt::BLOCK2).expect("block2");
    assert_eq!((b.num, b.more, b.size()), (0, true, 64));
    assert_eq!(first.uint_option(opt::SIZE2), Some(Ok(200)));
    let etag = first.option(opt::ETAG).expect("etag").to_vec();
    let mut got = first.payload.to_vec();
    // RFC 7959 §3.4: the rest with plain GETs, fresh tokens, no Observe.
    for num in 1..4u32 {
        let r = p.one(
            &con(Code::GET, "ps/n/+")
                .mid(50 + num as u16)
                .token(&[num as u8, 9])
                .block2(num, 2),
        );
        assert_eq!(r.code, Code::CONTENT);
        assert_eq!(r.option(opt::ETAG), Some(&etag[..]));
        assert!(observe_seq(&r).is_none());
        got.extend_from_slice(&r.payload);
        let b = block(&r, opt::BLOCK2).expect("block2");
        assert_eq!(b.more, num < 3);
    }
    assert_eq!(got, data);
    // The observation is still there.
    assert_eq!(p.channel.observer_count(), 1);
}

#[test]
fn transfers_expire() {
    let mut p = Peer::new(ChannelConfig::default());
    let r = p.one(
        &con(Code::POST, "ps/x")
            .block1(0, true, 0)
            .payload(vec![0u8; 16]),
    );
    assert_eq!(r.code, Code::CONTINUE);
    p.advance(Duration::from_secs(300));
    assert!(p.channel.is_idle());
}

proptest! {
    /// Any body, any block size: assembling its blocks in order gives the body back.
    #[test]
    fn assembler_reassembles(len in 0usize..5000, szx in 0u8..=6) {
        let data = body(len);
        let size = 1usize << (szx + 4);
        let now = Instant::now();
        let mut a: Assembler<u8> = Assembler::new(4, 8192, Duration::from_secs(60));
        let chunks: Vec<&[u8]> = if data.is_empty() { vec![&data[..]] } else { data.chunks(size).collect() };
        let mut result = None;
        for (i, c) in chunks.iter().enumerate() {
            let more = i + 1 < chunks.len();
            let b = BlockValue::new(i as u32, more, szx).expect("block");
            match a.feed(&1, b, c, None, now) {
                Ok(Assembled::NeedMore) => prop_assert!(more),
                Ok(Assembled::Complete(body)) => { prop_assert!(!more); result = Some(body) }
                Err(e) => prop_assert!(false, "{:?}", e),
            }
        }
        prop_assert_eq!(result.expect("complete").to_vec(), data);
        prop_assert!(a.is_empty());
    }

    /// Block1 through the whole channel with any payload and size.
    #[test]
    fn block1_channel_round_trip(len in 1usize..3000, szx in 0u8..=6) {
        let mut p = Peer::new(ChannelConfig::default());
        let sub = Subscriber::new(&p.broker, "s", "p", QoS::AtMostOnce);
        let data = body(len);
        let answers = block1_publish(&mut p, "ps/p", &data, szx);
        prop_assert_eq!(answers.last().map(|a| a.code), Some(Code::CHANGED));
        let got = sub.take(p.now);
        prop_assert_eq!(got.len(), 1);
        prop_assert_eq!(&got[0].message.payload[..], &data[..]);
        prop_assert!(answers.iter().all(|a| a.mtype == MessageType::Ack));
    }
}
