//! Will scenarios (MQTT 5 §3.1.2.5, §3.1.3.2): which closes publish the
//! will, the will delay and its cancellation by a reconnect, and a will
//! brought forward by an earlier session expiry.

mod common;

use std::time::Instant;

use common::*;
use tributary_core::{Broker, CloseKind, QoS, SessionHandle};

/// A broker with a watcher subscribed to `will/#`.
fn watched(t0: Instant) -> (Broker, SessionHandle) {
    let b = broker();
    let watcher = connect(&b, "watcher", t0);
    subscribe(&b, &watcher, "will/#", QoS::AtLeastOnce, t0);
    (b, watcher)
}

#[test]
fn will_not_published_on_normal_disconnect() {
    let t0 = Instant::now();
    let (b, watcher) = watched(t0);
    let c = open(&b, "c", true, 0, Some(will("will/c", "gone", 0)), t0).handle;
    b.close_session(
        &c,
        CloseKind::Normal {
            publish_will: false,
        },
        t0,
    );
    b.tick(t0 + secs(100));
    assert!(drain_all(&b, &watcher, t0 + secs(100)).is_empty());
    assert_eq!(count(&b.metrics().wills_published), 0);
}

#[test]
fn will_published_on_abnormal_close() {
    let t0 = Instant::now();
    let (b, watcher) = watched(t0);
    let c = open(&b, "c", true, 3600, Some(will("will/c", "gone", 0)), t0).handle;
    b.close_session(&c, CloseKind::Abnormal, t0);
    let out = drain_all(&b, &watcher, t0);
    assert_eq!(payloads(&out), ["gone"]);
    assert_eq!(topics(&out), ["will/c"]);
    assert_eq!(out[0].delivery.qos, QoS::AtLeastOnce);
    assert_eq!(count(&b.metrics().wills_published), 1);

    // Published once only.
    b.tick(t0 + secs(10));
    assert!(drain_all(&b, &watcher, t0 + secs(10)).is_empty());
}

#[test]
fn will_published_on_normal_disconnect_with_will_message() {
    let t0 = Instant::now();
    let (b, watcher) = watched(t0);
    let c = open(&b, "c", true, 0, Some(will("will/c", "asked for", 0)), t0).handle;
    b.close_session(&c, CloseKind::Normal { publish_will: true }, t0);
    assert_eq!(payloads(&drain_all(&b, &watcher, t0)), ["asked for"]);
    assert_eq!(count(&b.metrics().wills_published), 1);
}

#[test]
fn retained_will_is_stored() {
    let t0 = Instant::now();
    let b = broker();
    let mut w = will("will/c", "offline", 0);
    w.message.retain = true;
    let c = open(&b, "c", true, 0, Some(w), t0).handle;
    b.close_session(&c, CloseKind::Abnormal, t0);
    assert_eq!(
        &b.retained("will/c", t0).expect("retained will").payload[..],
        b"offline"
    );
}

#[test]
fn will_message_expiry_counts_from_publication() {
    let t0 = Instant::now();
    let (b, watcher) = watched(t0);
    let mut w = will("will/c", "gone", 5);
    w.message_expiry_interval = Some(30);
    let c = open(&b, "c", true, 3600, Some(w), t0).handle;
    b.close_session(&c, CloseKind::Abnormal, t0);
    b.tick(t0 + secs(5));
    let out = drain_all(&b, &watcher, t0 + secs(5));
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].delivery.message.remaining_expiry(t0 + secs(5)),
        Some(30)
    );
}

#[test]
fn delayed_will_published_only_after_delay() {
    let t0 = Instant::now();
    let (b, watcher) = watched(t0);
    let c = open(&b, "c", true, 3600, Some(will("will/c", "late", 5)), t0).handle;
    b.close_session(&c, CloseKind::Abnormal, t0);
    assert!(drain_all(&b, &watcher, t0).is_empty(), "not at close");

    assert_eq!(
        b.tick(t0 + secs(4)),
        Some(t0 + secs(5)),
        "next deadline is the will"
    );
    assert!(drain_all(&b, &watcher, t0 + secs(4)).is_empty());
    assert_eq!(count(&b.metrics().wills_published), 0);

    b.tick(t0 + secs(5));
    assert_eq!(payloads(&drain_all(&b, &watcher, t0 + secs(5))), ["late"]);
    assert_eq!(count(&b.metrics().wills_published), 1);
    assert_eq!(b.session_count(), 2, "the session itself lives on");

    b.tick(t0 + secs(6));
    assert!(
        drain_all(&b, &watcher, t0 + secs(6)).is_empty(),
        "only once"
    );
}

#[test]
fn delayed_will_cancelled_by_reconnect_before_delay() {
    let t0 = Instant::now();
    let (b, watcher) = watched(t0);
    let c = open(&b, "c", true, 3600, Some(will("will/c", "late", 5)), t0).handle;
    b.close_session(&c, CloseKind::Abnormal, t0);
    b.tick(t0 + secs(2));

    let again = open(&b, "c", false, 3600, None, t0 + secs(3));
    assert!(again.session_present);
    b.tick(t0 + secs(5));
    b.tick(t0 + secs(60));
    assert!(drain_all(&b, &watcher, t0 + secs(60)).is_empty());
    assert_eq!(count(&b.metrics().wills_published), 0);
}

#[test]
fn delayed_will_published_when_reconnect_uses_clean_start() {
    let t0 = Instant::now();
    let (b, watcher) = watched(t0);
    let c = open(&b, "c", true, 3600, Some(will("will/c", "late", 5)), t0).handle;
    b.close_session(&c, CloseKind::Abnormal, t0);

    // A clean start ends the old session now, so its will is due now.
    let again = open(&b, "c", true, 3600, None, t0 + secs(1));
    assert!(!again.session_present);
    assert_eq!(payloads(&drain_all(&b, &watcher, t0 + secs(1))), ["late"]);
}

#[test]
fn delayed_will_published_at_session_expiry_when_earlier() {
    let t0 = Instant::now();
    let (b, watcher) = watched(t0);
    let c = open(&b, "c", true, 10, Some(will("will/c", "expired", 30)), t0).handle;
    b.close_session(&c, CloseKind::Abnormal, t0);

    assert_eq!(b.tick(t0 + secs(9)), Some(t0 + secs(10)));
    assert!(drain_all(&b, &watcher, t0 + secs(9)).is_empty());
    b.tick(t0 + secs(10));
    assert_eq!(
        payloads(&drain_all(&b, &watcher, t0 + secs(10))),
        ["expired"]
    );
    assert_eq!(count(&b.metrics().wills_published), 1);
    assert_eq!(b.session_count(), 1, "only the watcher is left");

    b.tick(t0 + secs(30));
    assert!(
        drain_all(&b, &watcher, t0 + secs(30)).is_empty(),
        "only once"
    );
}

#[test]
fn delayed_will_published_at_once_when_session_expiry_is_zero() {
    let t0 = Instant::now();
    let (b, watcher) = watched(t0);
    let c = open(&b, "c", true, 0, Some(will("will/c", "now", 30)), t0).handle;
    b.close_session(&c, CloseKind::Abnormal, t0);
    assert_eq!(payloads(&drain_all(&b, &watcher, t0)), ["now"]);
}

#[test]
fn takeover_publishes_undelayed_will_of_the_old_connection() {
    let t0 = Instant::now();
    let (b, watcher) = watched(t0);
    open(
        &b,
        "c",
        true,
        3600,
        Some(will("will/c", "taken over", 0)),
        t0,
    );
    let new = open(&b, "c", false, 3600, None, t0 + secs(1));
    assert!(new.session_present);
    assert_eq!(
        payloads(&drain_all(&b, &watcher, t0 + secs(1))),
        ["taken over"]
    );
}

#[test]
fn takeover_resuming_session_suppresses_delayed_will() {
    let t0 = Instant::now();
    let (b, watcher) = watched(t0);
    open(
        &b,
        "c",
        true,
        3600,
        Some(will("will/c", "taken over", 5)),
        t0,
    );
    let new = open(&b, "c", false, 3600, None, t0 + secs(1));
    assert!(new.session_present);
    b.tick(t0 + secs(10));
    assert!(drain_all(&b, &watcher, t0 + secs(10)).is_empty());
}
