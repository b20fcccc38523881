//! Routing scenarios: filter matching through the broker, fan-out without
//! copies, QoS downgrade, packet ids and the inflight window, and how
//! overlapping subscriptions of one session collapse into one delivery.

mod common;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use common::*;
use tributary_core::{Message, QoS, SubOptions};

#[test]
fn exact_filter_matches_only_its_topic() {
    let t0 = Instant::now();
    let b = broker();
    let s = connect(&b, "s", t0);
    subscribe(&b, &s, "sport/tennis", QoS::AtMostOnce, t0);

    assert_eq!(publish(&b, "sport/tennis", "hit", QoS::AtMostOnce, t0), 1);
    assert_eq!(
        publish(&b, "sport/tennis/player1", "miss", QoS::AtMostOnce, t0),
        0
    );
    assert_eq!(publish(&b, "sport", "miss", QoS::AtMostOnce, t0), 0);
    assert_eq!(publish(&b, "Sport/tennis", "miss", QoS::AtMostOnce, t0), 0);

    let out = drain_all(&b, &s, t0);
    assert_eq!(payloads(&out), ["hit"]);
    assert_eq!(count(&b.metrics().messages_no_subscribers), 3);
    assert_eq!(count(&b.metrics().messages_received), 4);
}

#[test]
fn plus_matches_exactly_one_level() {
    let t0 = Instant::now();
    let b = broker();
    let s = connect(&b, "s", t0);
    subscribe(&b, &s, "sport/+/score", QoS::AtMostOnce, t0);

    for topic in [
        "sport/tennis/score",
        "sport//score",
        "sport/score",
        "sport/a/b/score",
        "sport/tennis/score/x",
    ] {
        publish(&b, topic, topic, QoS::AtMostOnce, t0);
    }
    assert_eq!(
        topics(&drain_all(&b, &s, t0)),
        ["sport/tennis/score", "sport//score"]
    );
}

#[test]
fn hash_matches_parent_and_all_descendants() {
    let t0 = Instant::now();
    let b = broker();
    let s = connect(&b, "s", t0);
    subscribe(&b, &s, "sport/#", QoS::AtMostOnce, t0);

    for topic in [
        "sport",
        "sport/tennis",
        "sport/tennis/player1/score",
        "sports",
        "other/sport",
    ] {
        publish(&b, topic, topic, QoS::AtMostOnce, t0);
    }
    assert_eq!(
        topics(&drain_all(&b, &s, t0)),
        ["sport", "sport/tennis", "sport/tennis/player1/score"]
    );
}

#[test]
fn dollar_topics_not_matched_by_leading_wildcards() {
    let t0 = Instant::now();
    let b = broker();
    let all = connect(&b, "all", t0);
    let plus = connect(&b, "plus", t0);
    let sys = connect(&b, "sys", t0);
    subscribe(&b, &all, "#", QoS::AtMostOnce, t0);
    subscribe(&b, &plus, "+/x", QoS::AtMostOnce, t0);
    subscribe(&b, &sys, "$SYS/#", QoS::AtMostOnce, t0);

    assert_eq!(publish(&b, "$SYS/x", "sys", QoS::AtMostOnce, t0), 1);
    assert_eq!(publish(&b, "a/x", "plain", QoS::AtMostOnce, t0), 2);

    assert_eq!(payloads(&drain_all(&b, &all, t0)), ["plain"]);
    assert_eq!(payloads(&drain_all(&b, &plus, t0)), ["plain"]);
    assert_eq!(payloads(&drain_all(&b, &sys, t0)), ["sys"]);
}

#[test]
fn payload_is_shared_across_subscribers_without_copy() {
    let t0 = Instant::now();
    let b = broker();
    let s1 = connect(&b, "s1", t0);
    let s2 = connect(&b, "s2", t0);
    subscribe(&b, &s1, "fan/out", QoS::AtLeastOnce, t0);
    subscribe(&b, &s2, "fan/+", QoS::AtMostOnce, t0);

    let payload = Bytes::from(vec![7u8; 4096]);
    let original = payload.as_ptr();
    assert_eq!(
        b.publish(
            Message::new("fan/out", payload, QoS::AtLeastOnce, false),
            t0
        ),
        2
    );

    let o1 = drain_all(&b, &s1, t0);
    let o2 = drain_all(&b, &s2, t0);
    assert_eq!((o1.len(), o2.len()), (1, 1));
    let (m1, m2) = (&o1[0].delivery.message, &o2[0].delivery.message);
    assert!(Arc::ptr_eq(m1, m2), "one Message shared by both deliveries");
    assert_eq!(m1.payload.as_ptr(), original);
    assert_eq!(m2.payload.as_ptr(), original);
    assert_eq!(m1.payload.len(), 4096);
}

#[test]
fn qos_is_downgraded_to_min_of_published_and_granted() {
    let t0 = Instant::now();
    let levels = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
    for granted in levels {
        for published in levels {
            let b = broker();
            let s = connect(&b, "s", t0);
            subscribe(&b, &s, "q", granted, t0);
            publish(&b, "q", "m", published, t0);
            let out = drain_all(&b, &s, t0);
            assert_eq!(out.len(), 1);
            assert_eq!(
                out[0].delivery.qos,
                granted.min(published),
                "granted {granted:?}, published {published:?}"
            );
            assert_eq!(
                out[0].delivery.message.qos, published,
                "the message keeps its own QoS"
            );
        }
    }
}

#[test]
fn packet_ids_assigned_only_to_qos1_and_qos2() {
    let t0 = Instant::now();
    let b = broker();
    let s = connect(&b, "s", t0);
    subscribe(&b, &s, "q", QoS::ExactlyOnce, t0);
    publish(&b, "q", "0", QoS::AtMostOnce, t0);
    publish(&b, "q", "1", QoS::AtLeastOnce, t0);
    publish(&b, "q", "2", QoS::ExactlyOnce, t0);
    publish(&b, "q", "0b", QoS::AtMostOnce, t0);

    let out = drain_all(&b, &s, t0);
    let ids: Vec<Option<u16>> = out.iter().map(|o| o.packet_id).collect();
    assert_eq!(ids, [None, Some(1), Some(2), None]);
    assert!(out.iter().all(|o| !o.dup));
    assert_eq!(s.inflight_len(), 2, "only QoS 1/2 are inflight");
}

#[test]
fn window_limits_how_many_qos1_and_qos2_are_taken() {
    let t0 = Instant::now();
    let b = broker();
    let s = connect(&b, "s", t0);
    subscribe(&b, &s, "q", QoS::ExactlyOnce, t0);
    publish(&b, "q", "a", QoS::AtLeastOnce, t0);
    publish(&b, "q", "b", QoS::ExactlyOnce, t0);
    publish(&b, "q", "c", QoS::AtLeastOnce, t0);
    publish(&b, "q", "d", QoS::AtLeastOnce, t0);

    let first = drain(&b, &s, t0, 2);
    assert_eq!(payloads(&first), ["a", "b"]);
    assert_eq!(s.inflight_len(), 2);
    assert_eq!(s.session.queue_len(), 2);
    assert!(!s.has_sendable(2));
    assert!(drain(&b, &s, t0, 2).is_empty(), "window full: nothing more");
}

#[test]
fn qos0_is_not_limited_by_the_window() {
    let t0 = Instant::now();
    let b = broker();
    let s = connect(&b, "s", t0);
    subscribe(&b, &s, "q", QoS::AtLeastOnce, t0);
    for p in ["a", "b", "c"] {
        publish(&b, "q", p, QoS::AtMostOnce, t0);
    }
    assert_eq!(payloads(&drain(&b, &s, t0, 0)), ["a", "b", "c"]);
    assert_eq!(s.inflight_len(), 0);
}

#[test]
fn puback_frees_the_window() {
    let t0 = Instant::now();
    let b = broker();
    let s = connect(&b, "s", t0);
    subscribe(&b, &s, "q", QoS::AtLeastOnce, t0);
    for p in ["a", "b", "c"] {
        publish(&b, "q", p, QoS::AtLeastOnce, t0);
    }

    let first = drain(&b, &s, t0, 1);
    assert_eq!(payloads(&first), ["a"]);
    assert!(drain(&b, &s, t0, 1).is_empty());

    let id = first[0].packet_id.expect("QoS 1 has a packet id");
    assert!(s.acknowledge(id));
    assert_eq!(s.inflight_len(), 0);
    assert!(s.has_sendable(1));
    let second = drain(&b, &s, t0, 1);
    assert_eq!(payloads(&second), ["b"]);
    assert_ne!(
        second[0].packet_id,
        Some(id),
        "ids are not reused right away"
    );
}

#[test]
fn qos2_pubrec_then_pubcomp_frees_the_window() {
    let t0 = Instant::now();
    let b = broker();
    let s = connect(&b, "s", t0);
    subscribe(&b, &s, "q", QoS::ExactlyOnce, t0);
    publish(&b, "q", "a", QoS::ExactlyOnce, t0);
    publish(&b, "q", "b", QoS::ExactlyOnce, t0);

    let first = drain(&b, &s, t0, 1);
    let id = first[0].packet_id.expect("QoS 2 has a packet id");
    assert!(
        !s.acknowledge(id),
        "PUBACK is not an answer to a QoS 2 PUBLISH"
    );
    assert!(!s.complete_qos2(id), "PUBCOMP before PUBREC is unknown");

    assert!(s.received(id, true), "PUBREC: send PUBREL");
    assert!(s.received(id, true), "duplicate PUBREC: send PUBREL again");
    assert_eq!(s.inflight_len(), 1, "still inflight until PUBCOMP");
    assert!(drain(&b, &s, t0, 1).is_empty());

    assert!(s.complete_qos2(id));
    assert_eq!(s.inflight_len(), 0);
    assert_eq!(payloads(&drain(&b, &s, t0, 1)), ["b"]);
}

#[test]
fn pubrec_with_error_reason_ends_the_flow() {
    let t0 = Instant::now();
    let b = broker();
    let s = connect(&b, "s", t0);
    subscribe(&b, &s, "q", QoS::ExactlyOnce, t0);
    publish(&b, "q", "a", QoS::ExactlyOnce, t0);
    let id = drain_all(&b, &s, t0)[0].packet_id.expect("packet id");

    assert!(!s.received(id, false), "no PUBREL after an error PUBREC");
    assert_eq!(s.inflight_len(), 0);
    assert!(!s.complete_qos2(id));
}

#[test]
fn unknown_packet_ids_return_false() {
    let t0 = Instant::now();
    let b = broker();
    let s = connect(&b, "s", t0);
    subscribe(&b, &s, "q", QoS::AtLeastOnce, t0);
    assert!(!s.acknowledge(1));
    assert!(!s.received(1, true));
    assert!(!s.complete_qos2(1));

    publish(&b, "q", "a", QoS::AtLeastOnce, t0);
    let id = drain_all(&b, &s, t0)[0].packet_id.expect("packet id");
    assert!(!s.acknowledge(id.wrapping_add(100)));
    assert!(
        !s.received(id, true),
        "PUBREC is not an answer to a QoS 1 PUBLISH"
    );
    assert!(!s.complete_qos2(id));
    assert!(s.acknowledge(id));
    assert!(!s.acknowledge(id), "second PUBACK for the same id");
}

#[test]
fn overlapping_subscriptions_deliver_once_at_max_qos_with_all_ids() {
    let t0 = Instant::now();
    let b = broker();
    let s = connect(&b, "s", t0);
    let with_id = |qos, id| SubOptions {
        subscription_id: Some(id),
        ..SubOptions::at(qos)
    };
    subscribe_with(&b, &s, "a/b/c", with_id(QoS::AtMostOnce, 7), t0);
    subscribe_with(&b, &s, "a/+/c", with_id(QoS::ExactlyOnce, 3), t0);
    subscribe_with(&b, &s, "a/#", with_id(QoS::AtLeastOnce, 5), t0);
    subscribe(&b, &s, "+/b/#", QoS::AtMostOnce, t0);

    assert_eq!(
        publish(&b, "a/b/c", "m", QoS::ExactlyOnce, t0),
        1,
        "queued for one session"
    );
    let out = drain_all(&b, &s, t0);
    assert_eq!(out.len(), 1, "exactly one delivery");
    assert_eq!(out[0].delivery.qos, QoS::ExactlyOnce);
    assert_eq!(out[0].delivery.subscription_ids, [3, 5, 7]);

    // Published at QoS 1: the maximum granted is capped by the publish.
    publish(&b, "a/b/c", "m", QoS::AtLeastOnce, t0);
    let out = drain_all(&b, &s, t0);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].delivery.qos, QoS::AtLeastOnce);

    // Only the filters that match contribute their identifiers.
    publish(&b, "a/x", "m", QoS::ExactlyOnce, t0);
    let out = drain_all(&b, &s, t0);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].delivery.qos, QoS::AtLeastOnce);
    assert_eq!(out[0].delivery.subscription_ids, [5]);
}

#[test]
fn no_local_skips_own_publishes() {
    let t0 = Instant::now();
    let b = broker();
    let me = connect(&b, "me", t0);
    let other = connect(&b, "other", t0);
    let no_local = SubOptions {
        no_local: true,
        ..SubOptions::at(QoS::AtLeastOnce)
    };
    subscribe_with(&b, &me, "chat", no_local, t0);
    subscribe_with(&b, &other, "chat", no_local, t0);

    assert_eq!(
        publish_from(&b, "me", "chat", "from me", QoS::AtLeastOnce, t0),
        1
    );
    assert_eq!(
        publish_from(&b, "other", "chat", "from other", QoS::AtLeastOnce, t0),
        1
    );
    assert_eq!(publish(&b, "chat", "from system", QoS::AtLeastOnce, t0), 2);

    assert_eq!(
        payloads(&drain_all(&b, &me, t0)),
        ["from other", "from system"]
    );
    assert_eq!(
        payloads(&drain_all(&b, &other, t0)),
        ["from me", "from system"]
    );
}

#[test]
fn no_local_on_one_overlapping_subscription_leaves_the_other() {
    let t0 = Instant::now();
    let b = broker();
    let me = connect(&b, "me", t0);
    let no_local = SubOptions {
        no_local: true,
        subscription_id: Some(1),
        ..SubOptions::at(QoS::AtLeastOnce)
    };
    subscribe_with(&b, &me, "chat", no_local, t0);
    subscribe_with(
        &b,
        &me,
        "#",
        SubOptions {
            subscription_id: Some(2),
            ..SubOptions::at(QoS::AtMostOnce)
        },
        t0,
    );

    publish_from(&b, "me", "chat", "own", QoS::AtLeastOnce, t0);
    let out = drain_all(&b, &me, t0);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].delivery.subscription_ids, [2]);
    assert_eq!(out[0].delivery.qos, QoS::AtMostOnce);
}

#[test]
fn retain_as_published_keeps_retain_flag_otherwise_cleared() {
    let t0 = Instant::now();
    let b = broker();
    let rap = connect(&b, "rap", t0);
    let plain = connect(&b, "plain", t0);
    subscribe_with(
        &b,
        &rap,
        "r",
        SubOptions {
            retain_as_published: true,
            ..SubOptions::at(QoS::AtMostOnce)
        },
        t0,
    );
    subscribe(&b, &plain, "r", QoS::AtMostOnce, t0);

    publish_retained(&b, "r", "retained", QoS::AtMostOnce, t0);
    publish(&b, "r", "live", QoS::AtMostOnce, t0);

    let flags = |out: Vec<tributary_core::Outgoing>| {
        out.iter().map(|o| o.delivery.retain).collect::<Vec<_>>()
    };
    assert_eq!(flags(drain_all(&b, &rap, t0)), [true, false]);
    assert_eq!(flags(drain_all(&b, &plain, t0)), [false, false]);
}

#[test]
fn unsubscribe_stops_delivery() {
    let t0 = Instant::now();
    let b = broker();
    let s = connect(&b, "s", t0);
    subscribe(&b, &s, "a/+", QoS::AtMostOnce, t0);
    assert_eq!(count(&b.metrics().subscriptions), 1);
    assert!(b.unsubscribe(&s, "a/+"));
    assert!(!b.unsubscribe(&s, "a/+"), "already gone");
    assert_eq!(count(&b.metrics().subscriptions), 0);
    assert_eq!(publish(&b, "a/b", "m", QoS::AtMostOnce, t0), 0);
    assert!(drain_all(&b, &s, t0).is_empty());
}
