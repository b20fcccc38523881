//! Regression scenarios for bugs found while the core was first written:
//! shared-subscription messages kept or handed on when a member leaves,
//! wills that fall due before the next tick, and handles that lost their
//! session to a takeover.

mod common;

use std::time::Instant;

use common::*;
use tributary_core::{CloseKind, QoS, SubOptions};

/// `close_session` takes the member's unacknowledged shared deliveries out
/// of its session before `redispatch` looks for another online member;
/// when there is none, `redispatch` drops them. QoS 1 messages are lost
/// although the session persists and the client may come back.
#[test]

fn shared_unacked_kept_when_no_other_member_is_online() {
    let t0 = Instant::now();
    let b = broker();
    let a = connect_persistent(&b, "a", 3600, t0);
    subscribe(&b, &a, "$share/g/t", QoS::AtLeastOnce, t0);
    publish(&b, "t", "inflight", QoS::AtLeastOnce, t0);
    publish(&b, "t", "queued", QoS::AtLeastOnce, t0);
    assert_eq!(drain(&b, &a, t0, 1).len(), 1);

    b.close_session(&a, CloseKind::Abnormal, t0);
    let again = open(&b, "a", false, 3600, None, t0 + secs(1));
    assert!(again.session_present);
    let resent = again.resend.len();
    let queued = drain_all(&b, &again.handle, t0 + secs(1)).len();
    assert_eq!(
        resent + queued,
        2,
        "both QoS 1 messages must survive (resent {resent}, queued {queued})"
    );
}

/// A redispatched delivery keeps the subscription identifiers (and retain
/// flag) of the member it was first routed to; the receiving client must
/// see the identifier of its own subscription [MQTT-3.3.4-3].
#[test]

fn redispatched_delivery_carries_the_new_members_subscription_id() {
    let t0 = Instant::now();
    let b = broker();
    let a = connect(&b, "a", t0);
    let c = connect(&b, "c", t0);
    let with_id = |id| SubOptions {
        subscription_id: Some(id),
        ..SubOptions::at(QoS::AtLeastOnce)
    };
    subscribe_with(&b, &a, "$share/g/t", with_id(1), t0);
    subscribe_with(&b, &c, "$share/g/t", with_id(2), t0);
    publish(&b, "t", "for a", QoS::AtLeastOnce, t0); // round robin: a first

    b.close_session(&a, CloseKind::Abnormal, t0);
    let out = drain_all(&b, &c, t0);
    assert_eq!(payloads(&out), ["for a"]);
    assert_eq!(out[0].delivery.subscription_ids, [2]);
}

/// Once the will delay has passed the will is due, even if `tick` has not
/// run yet; a reconnect after that instant must not cancel it. Today
/// `open_session` cancels any pending will unless `clean_start` is set.
#[test]

fn reconnect_after_will_delay_does_not_cancel_the_will() {
    let t0 = Instant::now();
    let b = broker();
    let watcher = connect(&b, "watcher", t0);
    subscribe(&b, &watcher, "will/#", QoS::AtLeastOnce, t0);
    let c = open(&b, "c", true, 3600, Some(will("will/c", "late", 5)), t0).handle;
    b.close_session(&c, CloseKind::Abnormal, t0);

    // No tick between t0 and t0 + 6 s.
    let again = open(&b, "c", false, 3600, None, t0 + secs(6));
    assert!(again.session_present);
    assert_eq!(payloads(&drain_all(&b, &watcher, t0 + secs(6))), ["late"]);
}

/// Same root cause: the session expired (and with it the will became due)
/// before the reconnect, but `tick` has not removed it yet. The session is
/// correctly not resumed, but the will is silently dropped.
#[test]

fn reconnect_after_session_expiry_publishes_the_will() {
    let t0 = Instant::now();
    let b = broker();
    let watcher = connect(&b, "watcher", t0);
    subscribe(&b, &watcher, "will/#", QoS::AtLeastOnce, t0);
    let c = open(&b, "c", true, 10, Some(will("will/c", "expired", 30)), t0).handle;
    b.close_session(&c, CloseKind::Abnormal, t0);

    let again = open(&b, "c", false, 10, None, t0 + secs(15));
    assert!(!again.session_present);
    assert_eq!(
        payloads(&drain_all(&b, &watcher, t0 + secs(15))),
        ["expired"]
    );
}

/// A handle is documented as inert once its connection was taken over,
/// but `Broker::subscribe` never checks ownership: a SUBSCRIBE still being
/// processed by the kicked connection adds a subscription. After a
/// clean-start takeover that subscription points at the discarded session:
/// it receives messages forever and is never removed.
#[test]

fn inert_handle_cannot_subscribe() {
    let t0 = Instant::now();
    let b = broker();
    let old = connect_persistent(&b, "dup", 3600, t0);
    let new = open(&b, "dup", true, 3600, None, t0).handle;
    assert!(!old.is_owner());

    let _ = b.subscribe(&old, "t", SubOptions::at(QoS::AtLeastOnce), t0);
    assert_eq!(
        publish(&b, "t", "m", QoS::AtLeastOnce, t0),
        0,
        "no subscriber: the old handle is inert"
    );
    assert_eq!(count(&b.metrics().subscriptions), 0);
    assert!(drain_all(&b, &new, t0).is_empty());
}

/// Same missing check on unsubscribe: the kicked connection can remove a
/// subscription of the session now owned by the new connection.
#[test]

fn inert_handle_cannot_unsubscribe() {
    let t0 = Instant::now();
    let b = broker();
    let old = connect_persistent(&b, "dup", 3600, t0);
    subscribe(&b, &old, "t", QoS::AtLeastOnce, t0);
    let new = open(&b, "dup", false, 3600, None, t0).handle;

    assert!(!b.unsubscribe(&old, "t"), "the old handle is inert");
    assert_eq!(publish(&b, "t", "m", QoS::AtLeastOnce, t0), 1);
    assert_eq!(payloads(&drain_all(&b, &new, t0)), ["m"]);
}

/// A clean-start takeover ends the old session; its unacknowledged shared
/// QoS 1 messages SHOULD go to another member [MQTT 5 §4.8.2], as they do
/// on `close_session`. Today they are discarded with the session.
#[test]

fn clean_start_takeover_redispatches_shared_unacked() {
    let t0 = Instant::now();
    let b = broker();
    let a = connect_persistent(&b, "a", 3600, t0);
    let c = connect(&b, "c", t0);
    subscribe(&b, &a, "$share/g/t", QoS::AtLeastOnce, t0);
    subscribe(&b, &c, "$share/g/t", QoS::AtLeastOnce, t0);
    publish(&b, "t", "for a", QoS::AtLeastOnce, t0);
    assert_eq!(drain_all(&b, &a, t0).len(), 1);

    open(&b, "a", true, 3600, None, t0 + secs(1));
    assert_eq!(payloads(&drain_all(&b, &c, t0 + secs(1))), ["for a"]);
}
