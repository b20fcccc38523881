//! Session scenarios: clean start and resume, offline queueing, resend of
//! inflight messages, mailbox bounds, takeover, expiry of sessions and of
//! messages, administrative kicks and authorization.

mod common;

use tributary_core::intake::Verdict;
use tributary_core::session::DropReason;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use common::*;
use tributary_core::auth::{
    AclRule, Action, AllowAll, Permission, RuleAction, RuleAuthorizer, Who,
};
use tributary_core::cluster::SingleNode;
use tributary_core::session::Overflow;
use tributary_core::storage::MemoryPersistence;
use tributary_core::{Broker, BrokerConfig, CloseKind, KickReason, Message, QoS, Resend};

#[test]
fn clean_start_discards_subscriptions_and_queue() {
    let t0 = Instant::now();
    let b = broker();
    let first = connect_persistent(&b, "c", 3600, t0);
    subscribe(&b, &first, "t", QoS::AtLeastOnce, t0);
    b.close_session(
        &first,
        CloseKind::Normal {
            publish_will: false,
        },
        t0,
    );
    publish(&b, "t", "while offline", QoS::AtLeastOnce, t0);
    assert_eq!(first.session.queue_len(), 1);

    let opened = open(&b, "c", true, 3600, None, t0 + secs(1));
    assert!(!opened.session_present);
    assert!(opened.handle.session.subscriptions().is_empty());
    assert!(drain_all(&b, &opened.handle, t0 + secs(1)).is_empty());
    assert_eq!(count(&b.metrics().subscriptions), 0);
    assert_eq!(publish(&b, "t", "after", QoS::AtLeastOnce, t0 + secs(1)), 0);
    assert_eq!(b.session_count(), 1);
}

#[test]
fn resume_keeps_subscriptions_and_delivers_qos1_queued_offline() {
    let t0 = Instant::now();
    let b = broker();
    let first = connect_persistent(&b, "c", 3600, t0);
    subscribe(&b, &first, "t/#", QoS::AtLeastOnce, t0);
    b.close_session(
        &first,
        CloseKind::Normal {
            publish_will: false,
        },
        t0,
    );
    assert!(!first.is_owner());

    assert_eq!(publish(&b, "t/1", "one", QoS::AtLeastOnce, t0 + secs(1)), 1);
    assert_eq!(publish(&b, "t/2", "two", QoS::AtLeastOnce, t0 + secs(2)), 1);

    let t3 = t0 + secs(3);
    let opened = open(&b, "c", false, 3600, None, t3);
    assert!(opened.session_present);
    assert!(opened.resend.is_empty());
    assert_eq!(opened.handle.session.subscriptions().len(), 1);
    let out = drain_all(&b, &opened.handle, t3);
    assert_eq!(payloads(&out), ["one", "two"]);
    assert!(out.iter().all(|o| o.packet_id.is_some() && !o.dup));
    assert_eq!(b.session_count(), 1);
}

#[test]
fn inflight_messages_resent_with_dup_after_reconnect() {
    let t0 = Instant::now();
    let b = broker();
    let first = connect_persistent(&b, "c", 3600, t0);
    subscribe(&b, &first, "t", QoS::ExactlyOnce, t0);
    publish(&b, "t", "q1", QoS::AtLeastOnce, t0);
    publish(&b, "t", "q2-rec", QoS::ExactlyOnce, t0);
    publish(&b, "t", "q2-comp", QoS::ExactlyOnce, t0);
    publish(&b, "t", "acked", QoS::AtLeastOnce, t0);
    publish(&b, "t", "unsent", QoS::AtLeastOnce, t0);

    let sent = drain(&b, &first, t0, 4);
    assert_eq!(payloads(&sent), ["q1", "q2-rec", "q2-comp", "acked"]);
    let id = |i: usize| sent[i].packet_id.expect("packet id");
    assert!(first.received(id(2), true), "PUBREL phase for q2-comp");
    assert!(first.acknowledge(id(3)));
    b.close_session(&first, CloseKind::Abnormal, t0);

    let t1 = t0 + secs(1);
    let opened = open(&b, "c", false, 3600, None, t1);
    assert!(opened.session_present);
    assert_eq!(opened.resend.len(), 3);
    match &opened.resend[0] {
        Resend::Publish(o) => {
            assert_eq!(o.packet_id, Some(id(0)));
            assert!(o.dup);
            assert_eq!(&o.delivery.message.payload[..], b"q1");
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    match &opened.resend[1] {
        Resend::Publish(o) => {
            assert_eq!(o.packet_id, Some(id(1)));
            assert!(o.dup);
            assert_eq!(o.delivery.qos, QoS::ExactlyOnce);
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    assert!(matches!(opened.resend[2], Resend::PubRel(p) if p == id(2)));

    // The new connection completes the flows with the same ids.
    let h = &opened.handle;
    assert!(h.acknowledge(id(0)));
    assert!(h.received(id(1), true));
    assert!(h.complete_qos2(id(1)));
    assert!(h.complete_qos2(id(2)));
    assert_eq!(h.inflight_len(), 0);
    assert_eq!(payloads(&drain_all(&b, h, t1)), ["unsent"]);
}

#[test]
fn queue_bound_drop_oldest_keeps_newest() {
    let t0 = Instant::now();
    let b = broker_with_queue(3, true, Overflow::DropOldest);
    let s = connect(&b, "s", t0);
    subscribe(&b, &s, "t", QoS::AtLeastOnce, t0);
    // QoS 0: the overflow policy applies (QoS 1/2 to an online session
    // applies backpressure instead; see the test below).
    for i in 0..5 {
        assert_eq!(
            publish(&b, "t", &i.to_string(), QoS::AtMostOnce, t0),
            1,
            "the new one is kept"
        );
    }
    assert_eq!(s.session.queue_len(), 3);
    assert_eq!(count(&b.metrics().messages_dropped_queue_full), 2);
    assert_eq!(payloads(&drain_all(&b, &s, t0)), ["2", "3", "4"]);
}

#[test]
fn queue_bound_drop_newest_keeps_oldest() {
    let t0 = Instant::now();
    let b = broker_with_queue(3, true, Overflow::DropNewest);
    let s = connect(&b, "s", t0);
    subscribe(&b, &s, "t", QoS::AtLeastOnce, t0);
    let queued: Vec<usize> = (0..5)
        .map(|i| publish(&b, "t", &i.to_string(), QoS::AtMostOnce, t0))
        .collect();
    assert_eq!(queued, [1, 1, 1, 0, 0]);
    assert_eq!(count(&b.metrics().messages_dropped_queue_full), 2);
    assert_eq!(payloads(&drain_all(&b, &s, t0)), ["0", "1", "2"]);
}

#[test]
fn online_qos1_over_the_bound_is_kept_and_asks_the_publisher_to_pause() {
    let t0 = Instant::now();
    let b = broker_with_queue(3, true, Overflow::DropNewest);
    let limits = b.config().queue;
    let s = connect(&b, "s", t0);
    subscribe(&b, &s, "t", QoS::AtLeastOnce, t0);
    let mut p = b.publisher(client("p"));
    for i in 0..3 {
        let m = Message::new("t", Bytes::from(i.to_string()), QoS::AtLeastOnce, false);
        assert_eq!(b.admit(&mut p, m, t0).verdict, Verdict::Accepted);
    }
    assert!(!p.is_congested(), "within the bound nobody pauses");
    // Over the bound: kept (it was acknowledged), and the publisher is told
    // to pause on this session, once.
    for i in 3..5 {
        let m = Message::new("t", Bytes::from(i.to_string()), QoS::AtLeastOnce, false);
        assert_eq!(b.admit(&mut p, m, t0).verdict, Verdict::Accepted);
    }
    let congested = p.take_congestion();
    assert_eq!(congested.len(), 1);
    assert!(Arc::ptr_eq(&congested[0], &s.session));
    assert!(s.session.is_congested(&limits, t0));
    assert_eq!(count(&b.metrics().messages_dropped_queue_full), 0);
    assert_eq!(count(&b.metrics().publish_backpressure), 2);
    // Twice the bound is the hard limit: past it the policy applies.
    for i in 5..7 {
        publish(&b, "t", &i.to_string(), QoS::AtLeastOnce, t0);
    }
    assert_eq!(s.session.queue_len(), 6);
    assert_eq!(count(&b.metrics().messages_dropped_queue_full), 1);
    assert_eq!(s.session.drop_counts().get(DropReason::QueueFull), 1);
    // Draining frees room and wakes paused publishers.
    let mut room = std::pin::pin!(s.session.room());
    room.as_mut().enable();
    assert_eq!(
        payloads(&drain_all(&b, &s, t0)),
        ["0", "1", "2", "3", "4", "5"]
    );
    assert!(!s.session.is_congested(&limits, t0));
    assert!(futures_ready(room.as_mut()));
}

#[test]
fn a_subscriber_that_stopped_taking_messages_is_not_waited_for() {
    let t0 = Instant::now();
    let b = broker_with_queue(3, true, Overflow::DropOldest);
    let limits = b.config().queue;
    let s = connect(&b, "s", t0);
    subscribe(&b, &s, "t", QoS::AtLeastOnce, t0);
    let mut p = b.publisher(client("p"));
    let admit = |p: &mut tributary_core::intake::Publisher, i: usize, at: Instant| {
        let m = Message::new("t", Bytes::from(i.to_string()), QoS::AtLeastOnce, false);
        b.admit(p, m, at).verdict
    };
    for i in 0..4 {
        assert_eq!(admit(&mut p, i, t0), Verdict::Accepted);
    }
    assert_eq!(
        p.take_congestion().len(),
        1,
        "a live subscriber is waited for"
    );
    // Nothing taken for max_pause: the mailbox is stalled, publishers go on
    // and the overflow policy applies, counted.
    let later = t0 + limits.max_pause;
    assert!(!s.session.is_congested(&limits, later));
    for i in 4..10 {
        assert_eq!(admit(&mut p, i, later), Verdict::Accepted);
    }
    assert!(!p.is_congested());
    assert_eq!(s.session.queue_len(), 3);
    assert_eq!(s.session.drop_counts().get(DropReason::QueueFull), 7);
    assert_eq!(payloads(&drain_all(&b, &s, later)), ["7", "8", "9"]);
    // Taking mail again is progress: it is waited for again.
    for i in 10..14 {
        admit(&mut p, i, later);
    }
    assert_eq!(p.take_congestion().len(), 1);
}

#[test]
fn offline_qos1_follows_the_overflow_policy() {
    let t0 = Instant::now();
    let b = broker_with_queue(2, true, Overflow::DropNewest);
    let s = connect_persistent(&b, "s", 3600, t0);
    subscribe(&b, &s, "t", QoS::AtLeastOnce, t0);
    b.close_session(
        &s,
        CloseKind::Normal {
            publish_will: false,
        },
        t0,
    );
    let queued: Vec<usize> = (0..4)
        .map(|i| publish(&b, "t", &i.to_string(), QoS::AtLeastOnce, t0))
        .collect();
    assert_eq!(queued, [1, 1, 0, 0]);
    assert_eq!(count(&b.metrics().messages_dropped_queue_full), 2);
}

/// Poll a future once with a no-op waker: true when it is ready.
fn futures_ready<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> bool {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    f.poll(&mut cx).is_ready()
}

#[test]
fn inflight_messages_do_not_count_against_the_queue_bound() {
    let t0 = Instant::now();
    let b = broker_with_queue(2, true, Overflow::DropNewest);
    let s = connect(&b, "s", t0);
    subscribe(&b, &s, "t", QoS::AtLeastOnce, t0);
    publish(&b, "t", "0", QoS::AtLeastOnce, t0);
    publish(&b, "t", "1", QoS::AtLeastOnce, t0);
    assert_eq!(drain_all(&b, &s, t0).len(), 2);
    publish(&b, "t", "2", QoS::AtLeastOnce, t0);
    publish(&b, "t", "3", QoS::AtLeastOnce, t0);
    assert_eq!(count(&b.metrics().messages_dropped_queue_full), 0);
    assert_eq!(payloads(&drain_all(&b, &s, t0)), ["2", "3"]);
}

#[test]
fn offline_qos0_not_queued_when_store_qos0_is_false() {
    let t0 = Instant::now();
    let b = broker_with_queue(100, false, Overflow::DropOldest);
    let s = connect_persistent(&b, "s", 3600, t0);
    subscribe(&b, &s, "t", QoS::AtLeastOnce, t0);

    // Online, QoS 0 is queued as usual.
    publish(&b, "t", "online", QoS::AtMostOnce, t0);
    assert_eq!(s.session.queue_len(), 1);
    assert_eq!(payloads(&drain_all(&b, &s, t0)), ["online"]);

    b.close_session(
        &s,
        CloseKind::Normal {
            publish_will: false,
        },
        t0,
    );
    assert_eq!(publish(&b, "t", "q0", QoS::AtMostOnce, t0), 0);
    assert_eq!(publish(&b, "t", "q1", QoS::AtLeastOnce, t0), 1);
    assert_eq!(count(&b.metrics().messages_dropped_offline_qos0), 1);

    let opened = open(&b, "s", false, 3600, None, t0 + secs(1));
    assert_eq!(
        payloads(&drain_all(&b, &opened.handle, t0 + secs(1))),
        ["q1"]
    );
}

#[test]
fn offline_qos0_queued_when_store_qos0_is_true() {
    let t0 = Instant::now();
    let b = broker_with_queue(100, true, Overflow::DropOldest);
    let s = connect_persistent(&b, "s", 3600, t0);
    subscribe(&b, &s, "t", QoS::AtMostOnce, t0);
    b.close_session(
        &s,
        CloseKind::Normal {
            publish_will: false,
        },
        t0,
    );
    assert_eq!(publish(&b, "t", "q0", QoS::AtMostOnce, t0), 1);

    let opened = open(&b, "s", false, 3600, None, t0 + secs(1));
    assert_eq!(
        payloads(&drain_all(&b, &opened.handle, t0 + secs(1))),
        ["q0"]
    );
    assert_eq!(count(&b.metrics().messages_dropped_offline_qos0), 0);
}

#[test]
fn takeover_kicks_first_connection_and_old_handle_becomes_inert() {
    let t0 = Instant::now();
    let b = broker();
    let old = connect_persistent(&b, "dup", 3600, t0);
    subscribe(&b, &old, "t", QoS::AtLeastOnce, t0);
    publish(&b, "t", "sent", QoS::AtLeastOnce, t0);
    let sent = drain_all(&b, &old, t0);
    let id = sent[0].packet_id.expect("packet id");
    publish(&b, "t", "pending", QoS::AtLeastOnce, t0);
    assert!(old.is_owner());
    assert_eq!(old.signal.kicked(), None);

    let new = open(&b, "dup", false, 3600, None, t0 + secs(1));
    assert_eq!(old.signal.kicked(), Some(KickReason::Takeover));
    assert!(!old.is_owner());
    assert!(new.handle.is_owner());
    assert_eq!(new.handle.signal.kicked(), None);
    assert!(new.session_present);
    assert_eq!(b.session_count(), 1);

    // The old handle can no longer act on the session.
    assert!(drain_all(&b, &old, t0 + secs(1)).is_empty());
    assert!(!old.acknowledge(id));
    b.close_session(&old, CloseKind::Abnormal, t0 + secs(1));
    assert!(
        new.handle.is_owner(),
        "a late close from the old connection is ignored"
    );
    assert!(new.handle.session.is_online());

    // The new one resends the inflight message and gets the pending one.
    assert!(matches!(&new.resend[..], [Resend::Publish(o)] if o.packet_id == Some(id) && o.dup));
    assert_eq!(
        payloads(&drain_all(&b, &new.handle, t0 + secs(1))),
        ["pending"]
    );
    assert!(new.handle.acknowledge(id));
}

#[test]
fn takeover_with_clean_start_starts_a_new_session() {
    let t0 = Instant::now();
    let b = broker();
    let old = connect_persistent(&b, "dup", 3600, t0);
    subscribe(&b, &old, "t", QoS::AtLeastOnce, t0);

    let new = open(&b, "dup", true, 3600, None, t0);
    assert_eq!(old.signal.kicked(), Some(KickReason::Takeover));
    assert!(!new.session_present);
    assert!(new.handle.session.subscriptions().is_empty());
    assert_eq!(publish(&b, "t", "m", QoS::AtLeastOnce, t0), 0);
    assert_eq!(b.session_count(), 1);
    assert_eq!(count(&b.metrics().sessions), 1);
}

#[test]
fn offline_session_expires_after_its_interval() {
    let t0 = Instant::now();
    let b = broker();
    let s = connect_persistent(&b, "c", 10, t0);
    subscribe(&b, &s, "t", QoS::AtLeastOnce, t0);
    b.close_session(
        &s,
        CloseKind::Normal {
            publish_will: false,
        },
        t0,
    );

    assert_eq!(
        b.tick(t0 + secs(9)),
        Some(t0 + secs(10)),
        "next deadline is the expiry"
    );
    assert_eq!(b.session_count(), 1);
    assert_eq!(b.tick(t0 + secs(10)), None);
    assert_eq!(b.session_count(), 0);
    assert_eq!(count(&b.metrics().sessions), 0);
    assert_eq!(count(&b.metrics().subscriptions), 0);
    assert_eq!(publish(&b, "t", "m", QoS::AtLeastOnce, t0 + secs(10)), 0);

    let again = open(&b, "c", false, 10, None, t0 + secs(11));
    assert!(!again.session_present);
    assert!(again.handle.session.subscriptions().is_empty());
}

#[test]
fn offline_session_resumed_before_expiry_is_kept() {
    let t0 = Instant::now();
    let b = broker();
    let s = connect_persistent(&b, "c", 10, t0);
    b.close_session(
        &s,
        CloseKind::Normal {
            publish_will: false,
        },
        t0,
    );
    b.tick(t0 + secs(5));
    let again = open(&b, "c", false, 10, None, t0 + secs(9));
    assert!(again.session_present);
    b.tick(t0 + secs(30));
    assert_eq!(b.session_count(), 1, "online sessions do not expire");
}

#[test]
fn expired_session_not_resumed_even_before_tick() {
    let t0 = Instant::now();
    let b = broker();
    let s = connect_persistent(&b, "c", 10, t0);
    subscribe(&b, &s, "t", QoS::AtLeastOnce, t0);
    b.close_session(
        &s,
        CloseKind::Normal {
            publish_will: false,
        },
        t0,
    );
    let again = open(&b, "c", false, 10, None, t0 + secs(10));
    assert!(!again.session_present);
    assert!(again.handle.session.subscriptions().is_empty());
    assert_eq!(b.session_count(), 1);
}

#[test]
fn session_expiry_zero_removes_at_close() {
    let t0 = Instant::now();
    let b = broker();
    let s = connect(&b, "c", t0);
    subscribe(&b, &s, "t", QoS::AtLeastOnce, t0);
    assert_eq!(b.session_count(), 1);
    b.close_session(
        &s,
        CloseKind::Normal {
            publish_will: false,
        },
        t0,
    );
    assert_eq!(b.session_count(), 0);
    assert_eq!(count(&b.metrics().sessions), 0);
    assert_eq!(count(&b.metrics().subscriptions), 0);
    assert_eq!(publish(&b, "t", "m", QoS::AtLeastOnce, t0), 0);
    assert!(!open(&b, "c", false, 0, None, t0).session_present);
}

#[test]
fn disconnect_can_lower_expiry_to_zero() {
    let t0 = Instant::now();
    let b = broker();
    let s = connect_persistent(&b, "c", 3600, t0);
    s.set_expiry_interval(0);
    assert_eq!(s.expiry_interval(), 0);
    b.close_session(
        &s,
        CloseKind::Normal {
            publish_will: false,
        },
        t0,
    );
    assert_eq!(b.session_count(), 0);
}

#[test]
fn queued_message_expiring_before_take_is_dropped_and_counted() {
    let t0 = Instant::now();
    let b = broker();
    let s = connect(&b, "s", t0);
    subscribe(&b, &s, "t", QoS::AtLeastOnce, t0);
    b.publish(
        message("t", "short", QoS::AtLeastOnce, false).with_expiry_interval(Some(5), t0),
        t0,
    );
    b.publish(
        message("t", "long", QoS::AtLeastOnce, false).with_expiry_interval(Some(60), t0),
        t0,
    );
    publish(&b, "t", "forever", QoS::AtLeastOnce, t0);

    let t5 = t0 + secs(5);
    let out = drain_all(&b, &s, t5);
    assert_eq!(payloads(&out), ["long", "forever"]);
    assert_eq!(count(&b.metrics().messages_dropped_expired), 1);
    assert_eq!(
        out[0].packet_id,
        Some(1),
        "the dropped message used no packet id"
    );
    assert_eq!(out[0].delivery.message.remaining_expiry(t5), Some(55));
    assert_eq!(out[1].delivery.message.remaining_expiry(t5), None);
}

#[test]
fn remaining_expiry_counts_down() {
    let t0 = Instant::now();
    let m = message("t", "m", QoS::AtLeastOnce, false).with_expiry_interval(Some(10), t0);
    assert_eq!(m.remaining_expiry(t0), Some(10));
    assert_eq!(m.remaining_expiry(t0 + secs(4)), Some(6));
    assert_eq!(
        m.remaining_expiry(t0 + std::time::Duration::from_millis(4500)),
        Some(6),
        "rounded up"
    );
    assert_eq!(
        m.remaining_expiry(t0 + std::time::Duration::from_millis(9999)),
        Some(1)
    );
    assert!(!m.is_expired(t0 + std::time::Duration::from_millis(9999)));
    assert!(m.is_expired(t0 + secs(10)));
    assert_eq!(
        message("t", "m", QoS::AtLeastOnce, false).remaining_expiry(t0),
        None
    );
}

#[test]
fn administrative_kick_signals_the_owner() {
    let t0 = Instant::now();
    let b = broker();
    let s = connect_persistent(&b, "c", 3600, t0);
    let bystander = connect(&b, "other", t0);
    assert!(b.kick("c", KickReason::Administrative));
    assert_eq!(s.signal.kicked(), Some(KickReason::Administrative));
    assert_eq!(bystander.signal.kicked(), None);
    assert!(!b.kick("nobody", KickReason::Administrative));

    b.close_session(
        &s,
        CloseKind::Normal {
            publish_will: false,
        },
        t0,
    );
    assert!(
        !b.kick("c", KickReason::Administrative),
        "offline sessions have no connection to kick"
    );
}

#[test]
fn kick_all_signals_every_connection() {
    let t0 = Instant::now();
    let b = broker();
    let a = connect(&b, "a", t0);
    let c = connect(&b, "c", t0);
    b.kick_all(KickReason::ServerShutdown);
    assert_eq!(a.signal.kicked(), Some(KickReason::ServerShutdown));
    assert_eq!(c.signal.kicked(), Some(KickReason::ServerShutdown));
}

#[test]
fn subscribe_denied_by_rule_authorizer_is_counted() {
    let authorizer = RuleAuthorizer {
        rules: vec![AclRule {
            permission: Permission::Deny,
            who: vec![Who::All],
            action: RuleAction::Subscribe,
            topics: vec!["test/nosubscribe".into()],
        }],
        no_match: Permission::Allow,
    };
    let b = Broker::with_seams(
        BrokerConfig::default(),
        Box::new(AllowAll),
        Box::new(authorizer),
        Box::new(MemoryPersistence),
        Box::new(SingleNode),
    );
    let c = client("c");
    assert!(!b.authorize(&c, Action::Subscribe, "test/nosubscribe"));
    assert_eq!(count(&b.metrics().subscribe_denied), 1);
    assert!(b.authorize(&c, Action::Subscribe, "test/other"));
    assert!(
        b.authorize(&c, Action::Publish, "test/nosubscribe"),
        "publishing is not covered by the rule"
    );
    assert_eq!(count(&b.metrics().subscribe_denied), 1);
    assert_eq!(count(&b.metrics().publish_denied), 0);
}
