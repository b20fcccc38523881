//! RFC 7641 Observe through the channel: registration, notifications from
//! the core, sequence numbers, flow control, cancellation and removal.

mod support;

use std::time::Duration;

use proptest::prelude::*;
use support::*;
use tributary_coap::msg::opt;
use tributary_coap::{ChannelConfig, Code, MessageType, NotifyType};
use tributary_core::{Message as CoreMessage, MessageProperties, QoS};

fn observe(p: &mut Peer, uri: &str, token: &[u8], mid: u16) -> tributary_coap::Message {
    let r = p.one(&con(Code::GET, uri).mid(mid).token(token).observe(0));
    assert_eq!(r.code, Code::CONTENT, "{r:?}");
    assert!(observe_seq(&r).is_some());
    r
}

#[test]
fn observe_without_token_is_bad_request() {
    let mut p = Peer::new(ChannelConfig::default());
    let r = p.one(&con(Code::GET, "ps/t").token(&[]).observe(0));
    assert_eq!(r.code, Code::BAD_REQUEST);
    assert_eq!(p.channel.observer_count(), 0);
}

#[test]
fn notifications_follow_publishes_in_order() {
    let mut p = Peer::new(ChannelConfig::default());
    let reg = observe(&mut p, "ps/room/+/temp", &[1, 2], 1);
    let reg_seq = observe_seq(&reg).expect("seq");
    for i in 0..5 {
        p.publish(
            &format!("room/{i}/temp"),
            &format!("{i}"),
            QoS::AtMostOnce,
            false,
        );
    }
    p.publish("room/1/humidity", "no", QoS::AtMostOnce, false);
    let out = p.wake();
    assert_eq!(out.len(), 5);
    let mut last = reg_seq;
    for (i, n) in out.iter().enumerate() {
        assert_eq!(
            n.mtype,
            MessageType::Non,
            "QoS 0 → NON under notify_type qos"
        );
        assert_eq!(n.code, Code::CONTENT);
        assert_eq!(n.token.as_bytes(), &[1, 2]);
        assert_eq!(&n.payload[..], format!("{i}").as_bytes());
        let seq = observe_seq(n).expect("seq");
        assert!(seq > last, "sequence numbers increase");
        last = seq;
    }
}

#[test]
fn one_con_in_flight_queue_keeps_the_newest() {
    let config = ChannelConfig {
        notify_queue_len: 2,
        ..ChannelConfig::default()
    };
    let mut p = Peer::new(config);
    observe(&mut p, "ps/q", &[7], 1);
    for i in 0..5 {
        p.publish("q", &format!("m{i}"), QoS::AtLeastOnce, false);
    }
    let out = p.wake();
    assert_eq!(out.len(), 1, "one CON in flight");
    assert_eq!(out[0].mtype, MessageType::Con);
    assert_eq!(&out[0].payload[..], b"m0");
    // m1, m2 were dropped to keep the two newest.
    let next = p.send(&empty(MessageType::Ack, out[0].message_id));
    assert_eq!(next.len(), 1);
    assert_eq!(&next[0].payload[..], b"m3");
    let next2 = p.send(&empty(MessageType::Ack, next[0].message_id));
    assert_eq!(&next2[0].payload[..], b"m4");
    assert!(observe_seq(&next2[0]) > observe_seq(&next[0]));
    assert!(p
        .send(&empty(MessageType::Ack, next2[0].message_id))
        .is_empty());
}

#[test]
fn unacknowledged_con_notification_removes_the_observer() {
    let mut p = Peer::new(ChannelConfig {
        notify_type: NotifyType::Con,
        ..ChannelConfig::default()
    });
    observe(&mut p, "ps/lost", &[3], 1);
    p.publish("lost", "x", QoS::AtMostOnce, false);
    let first = p.wake();
    assert_eq!(first[0].mtype, MessageType::Con);
    let retransmissions = p.advance(Duration::from_secs(100));
    assert_eq!(retransmissions.len(), 4);
    assert!(retransmissions
        .iter()
        .all(|m| m.message_id == first[0].message_id));
    assert_eq!(p.channel.observer_count(), 0);
    // Its core session is gone with it: nothing is routed to it any more.
    assert!(p.channel.signal().is_none());
    assert_eq!(p.broker.subscription_list().len(), 0);
}

#[test]
fn rst_to_a_notification_cancels() {
    let mut p = Peer::new(ChannelConfig::default());
    observe(&mut p, "ps/r", &[4], 1);
    p.publish("r", "x", QoS::AtMostOnce, false);
    let n = p.wake();
    assert_eq!(n[0].mtype, MessageType::Non);
    assert!(p.send(&empty(MessageType::Rst, n[0].message_id)).is_empty());
    assert_eq!(p.channel.observer_count(), 0);
    p.publish("r", "y", QoS::AtMostOnce, false);
    assert!(p.wake().is_empty());
}

#[test]
fn observe_one_deregisters() {
    let mut p = Peer::new(ChannelConfig::default());
    observe(&mut p, "ps/d/#", &[5], 1);
    let r = p.one(&con(Code::GET, "ps/d/#").mid(2).token(&[5]).observe(1));
    assert_eq!(r.code, Code::CONTENT);
    assert!(observe_seq(&r).is_none());
    assert_eq!(p.channel.observer_count(), 0);
    assert_eq!(p.broker.subscription_list().len(), 0);
}

#[test]
fn two_observers_one_subscription() {
    let mut p = Peer::new(ChannelConfig::default());
    observe(&mut p, "ps/s", &[1], 1);
    observe(&mut p, "ps/s", &[2], 2);
    assert_eq!(p.broker.subscription_list().len(), 1);
    p.publish("s", "x", QoS::AtMostOnce, false);
    let out = p.wake();
    assert_eq!(out.len(), 2);
    p.one(&con(Code::GET, "ps/s").mid(3).token(&[1]).observe(1));
    assert_eq!(p.broker.subscription_list().len(), 1);
    p.one(&con(Code::GET, "ps/s").mid(4).token(&[2]).observe(1));
    assert_eq!(p.broker.subscription_list().len(), 0);
}

#[test]
fn retained_message_is_notified_after_registration() {
    let mut p = Peer::new(ChannelConfig::default());
    p.publish("ret/a", "kept", QoS::AtLeastOnce, true);
    let out = p.send(&con(Code::GET, "ps/ret/a").token(&[9]).observe(0));
    assert_eq!(out.len(), 2);
    assert_eq!(
        (out[0].mtype, out[0].code),
        (MessageType::Ack, Code::CONTENT)
    );
    assert_eq!(out[1].mtype, MessageType::Con, "QoS 1 → CON");
    assert_eq!(&out[1].payload[..], b"kept");
    assert!(observe_seq(&out[1]) > observe_seq(&out[0]));
}

#[test]
fn notification_carries_content_format_and_max_age() {
    let mut p = Peer::new(ChannelConfig::default());
    observe(&mut p, "ps/cf", &[1], 1);
    let mut m = CoreMessage::new(
        "cf",
        bytes::Bytes::from_static(b"{}"),
        QoS::AtMostOnce,
        false,
    )
    .with_expiry_interval(Some(30), p.now);
    m.properties = MessageProperties {
        content_type: Some("application/json".into()),
        ..MessageProperties::default()
    };
    p.publish_message(m);
    let out = p.wake();
    assert_eq!(out[0].content_format(), Some(50));
    assert_eq!(out[0].uint_option(opt::MAX_AGE), Some(Ok(30)));
}

#[test]
fn observer_limit() {
    let mut p = Peer::new(ChannelConfig {
        max_observers: 2,
        ..ChannelConfig::default()
    });
    observe(&mut p, "ps/a", &[1], 1);
    observe(&mut p, "ps/b", &[2], 2);
    let r = p.one(&con(Code::GET, "ps/c").mid(3).token(&[3]).observe(0));
    assert_eq!(r.code, Code::SERVICE_UNAVAILABLE);
    assert_eq!(p.broker.subscription_list().len(), 2);
}

#[test]
fn shutdown_ends_observations_with_503() {
    let mut p = Peer::new(ChannelConfig::default());
    observe(&mut p, "ps/a", &[1], 1);
    p.channel.shutdown(p.now);
    let out = p.output();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].code, Code::SERVICE_UNAVAILABLE);
    assert!(p.channel.signal().is_none());
}

proptest! {
    /// Whatever mix of QoS levels and ACK timing, an observer sees its
    /// notifications in publish order (minus drops), with strictly
    /// increasing sequence numbers, and never two CONs in flight.
    #[test]
    fn ordering_and_single_con_in_flight(
        steps in proptest::collection::vec((0u8..3, any::<bool>()), 1..40),
    ) {
        let mut p = Peer::new(ChannelConfig { notify_queue_len: 1000, ..ChannelConfig::default() });
        observe(&mut p, "ps/o", &[1], 1);
        let mut inflight: Option<u16> = None;
        let mut received: Vec<u32> = Vec::new();
        let mut seqs: Vec<u32> = Vec::new();
        let handle = |out: Vec<tributary_coap::Message>, inflight: &mut Option<u16>, received: &mut Vec<u32>, seqs: &mut Vec<u32>| {
            for n in out {
                if n.mtype == MessageType::Con {
                    prop_assert!(inflight.is_none(), "two CONs in flight");
                    *inflight = Some(n.message_id);
                }
                received.push(String::from_utf8_lossy(&n.payload).parse().expect("num"));
                seqs.push(observe_seq(&n).expect("seq"));
            }
            Ok(())
        };
        for (i, (qos, ack)) in steps.iter().enumerate() {
            let qos = QoS::from_u8(*qos).expect("qos");
            p.publish("o", &i.to_string(), qos, false);
            let out = p.wake();
            handle(out, &mut inflight, &mut received, &mut seqs)?;
            if *ack {
                if let Some(mid) = inflight.take() {
                    let out = p.send(&empty(MessageType::Ack, mid));
                    handle(out, &mut inflight, &mut received, &mut seqs)?;
                }
            }
        }
        while let Some(mid) = inflight.take() {
            let out = p.send(&empty(MessageType::Ack, mid));
            handle(out, &mut inflight, &mut received, &mut seqs)?;
        }
        let expected: Vec<u32> = (0..steps.len() as u32).collect();
        prop_assert_eq!(received, expected);
        prop_assert!(seqs.windows(2).all(|w| w[1] > w[0]));
        let _ = p.advance(Duration::from_secs(1));
    }
}
