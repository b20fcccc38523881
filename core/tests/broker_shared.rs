//! Shared-subscription scenarios (MQTT 5 §4.8.2): one member per message
//! per group, round robin, offline members skipped, and unacknowledged
//! messages handed to another member when a member's connection closes.

mod common;

use std::time::Instant;

use common::*;
use tributary_core::{CloseKind, QoS};

#[test]
fn round_robin_gives_each_message_to_exactly_one_member_alternating() {
    let t0 = Instant::now();
    let b = broker();
    let a = connect(&b, "a", t0);
    let c = connect(&b, "c", t0);
    subscribe(&b, &a, "$share/g/jobs", QoS::AtLeastOnce, t0);
    subscribe(&b, &c, "$share/g/jobs", QoS::AtLeastOnce, t0);

    for i in 0..6 {
        assert_eq!(
            publish(&b, "jobs", &i.to_string(), QoS::AtLeastOnce, t0),
            1,
            "one member per message"
        );
    }
    let got_a = payloads(&drain_all(&b, &a, t0));
    let got_c = payloads(&drain_all(&b, &c, t0));
    assert_eq!(got_a.len(), 3);
    assert_eq!(got_c.len(), 3);
    // Alternating: one member gets the even messages, the other the odd ones.
    let (even, odd) = if got_a[0] == "0" {
        (got_a, got_c)
    } else {
        (got_c, got_a)
    };
    assert_eq!(even, ["0", "2", "4"]);
    assert_eq!(odd, ["1", "3", "5"]);
}

#[test]
fn shared_deliveries_are_tagged_with_group_and_filter() {
    let t0 = Instant::now();
    let b = broker();
    let a = connect(&b, "a", t0);
    subscribe(&b, &a, "$share/g/jobs/+", QoS::AtLeastOnce, t0);
    publish(&b, "jobs/1", "x", QoS::ExactlyOnce, t0);
    let out = drain_all(&b, &a, t0);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].delivery.qos, QoS::AtLeastOnce);
    let (group, filter) = out[0].delivery.shared.clone().expect("shared tag");
    assert_eq!((&*group, &*filter), ("g", "jobs/+"));
}

#[test]
fn two_groups_on_the_same_filter_each_get_one_copy() {
    let t0 = Instant::now();
    let b = broker();
    let a1 = connect(&b, "a1", t0);
    let a2 = connect(&b, "a2", t0);
    let other = connect(&b, "other", t0);
    let plain = connect(&b, "plain", t0);
    subscribe(&b, &a1, "$share/g1/t", QoS::AtMostOnce, t0);
    subscribe(&b, &a2, "$share/g1/t", QoS::AtMostOnce, t0);
    subscribe(&b, &other, "$share/g2/t", QoS::AtMostOnce, t0);
    subscribe(&b, &plain, "t", QoS::AtMostOnce, t0);

    for i in 0..4 {
        assert_eq!(publish(&b, "t", &i.to_string(), QoS::AtMostOnce, t0), 3);
    }
    let n1 = drain_all(&b, &a1, t0).len();
    let n2 = drain_all(&b, &a2, t0).len();
    assert_eq!(n1 + n2, 4, "group g1 got each message once");
    assert_eq!((n1, n2), (2, 2));
    assert_eq!(payloads(&drain_all(&b, &other, t0)), ["0", "1", "2", "3"]);
    assert_eq!(payloads(&drain_all(&b, &plain, t0)), ["0", "1", "2", "3"]);
}

#[test]
fn offline_member_is_skipped_for_an_online_one() {
    let t0 = Instant::now();
    let b = broker();
    let gone = connect_persistent(&b, "gone", 3600, t0);
    let here = connect(&b, "here", t0);
    subscribe(&b, &gone, "$share/g/t", QoS::AtLeastOnce, t0);
    subscribe(&b, &here, "$share/g/t", QoS::AtLeastOnce, t0);
    b.close_session(
        &gone,
        CloseKind::Normal {
            publish_will: false,
        },
        t0,
    );
    assert!(!gone.session.is_online());

    for i in 0..4 {
        assert_eq!(publish(&b, "t", &i.to_string(), QoS::AtLeastOnce, t0), 1);
    }
    assert_eq!(payloads(&drain_all(&b, &here, t0)), ["0", "1", "2", "3"]);
    assert_eq!(
        gone.session.queue_len(),
        0,
        "nothing queued for the offline member"
    );
}

#[test]
fn unacked_qos1_redispatched_to_other_member_on_close() {
    let t0 = Instant::now();
    let b = broker();
    let a = connect_persistent(&b, "a", 3600, t0);
    let c = connect(&b, "c", t0);
    subscribe(&b, &a, "$share/g/t", QoS::AtLeastOnce, t0);
    subscribe(&b, &c, "$share/g/t", QoS::AtLeastOnce, t0);

    // Round robin: a gets 0 and 2, c gets 1 and 3.
    for i in 0..4 {
        publish(&b, "t", &i.to_string(), QoS::AtLeastOnce, t0);
    }
    // a takes one (inflight, never acknowledged), the other stays queued.
    let taken = drain(&b, &a, t0, 1);
    assert_eq!(payloads(&taken), ["0"]);
    assert_eq!((a.inflight_len(), a.session.queue_len()), (1, 1));

    b.close_session(&a, CloseKind::Abnormal, t0);
    assert_eq!(a.session.inflight_len(), 0, "handed over, not kept");
    assert_eq!(a.session.queue_len(), 0);

    let mut got = payloads(&drain_all(&b, &c, t0));
    got.sort();
    assert_eq!(
        got,
        ["0", "1", "2", "3"],
        "c received its own and a's unacked messages"
    );

    // a resumes: nothing left to resend, the messages went to c.
    let resumed = open(&b, "a", false, 3600, None, t0 + secs(1));
    assert!(resumed.session_present);
    assert!(resumed.resend.is_empty());
    assert!(drain_all(&b, &resumed.handle, t0 + secs(1)).is_empty());
}

#[test]
fn acknowledged_and_qos0_shared_messages_are_not_redispatched() {
    let t0 = Instant::now();
    let b = broker();
    let a = connect(&b, "a", t0);
    let c = connect(&b, "c", t0);
    subscribe(&b, &a, "$share/g/t", QoS::AtLeastOnce, t0);
    subscribe(&b, &c, "$share/g/t", QoS::AtLeastOnce, t0);

    publish(&b, "t", "acked", QoS::AtLeastOnce, t0); // -> a
    publish(&b, "t", "c1", QoS::AtLeastOnce, t0); // -> c
    publish(&b, "t", "qos0", QoS::AtMostOnce, t0); // -> a
    let taken = drain(&b, &a, t0, WIDE);
    assert_eq!(payloads(&taken), ["acked", "qos0"]);
    assert!(a.acknowledge(taken[0].packet_id.expect("id")));

    b.close_session(&a, CloseKind::Abnormal, t0);
    assert_eq!(payloads(&drain_all(&b, &c, t0)), ["c1"]);
}

#[test]
fn closing_member_leaves_group_when_session_ends() {
    let t0 = Instant::now();
    let b = broker();
    let a = connect(&b, "a", t0);
    let c = connect(&b, "c", t0);
    subscribe(&b, &a, "$share/g/t", QoS::AtLeastOnce, t0);
    subscribe(&b, &c, "$share/g/t", QoS::AtLeastOnce, t0);
    publish(&b, "t", "0", QoS::AtLeastOnce, t0); // queued for a, never taken

    b.close_session(
        &a,
        CloseKind::Normal {
            publish_will: false,
        },
        t0,
    );
    assert_eq!(b.session_count(), 1);
    assert_eq!(
        payloads(&drain_all(&b, &c, t0)),
        ["0"],
        "a's queued message went to c"
    );
    for i in 1..4 {
        assert_eq!(publish(&b, "t", &i.to_string(), QoS::AtLeastOnce, t0), 1);
    }
    assert_eq!(payloads(&drain_all(&b, &c, t0)), ["1", "2", "3"]);
}
