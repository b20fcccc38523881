//! Retained-message scenarios: store, replace and clear; delivery on
//! subscribe under each retain-handling option; never for shared
//! subscriptions; expiry; and the `$`-topic rule on the retained lookup.

mod common;

use std::time::Instant;

use bytes::Bytes;
use common::*;
use tributary_core::{Message, QoS, SubOptions};

fn handling(rh: u8) -> SubOptions {
    SubOptions {
        retain_handling: rh,
        ..SubOptions::at(QoS::AtLeastOnce)
    }
}

#[test]
fn retained_set_replace_and_clear_with_empty_payload() {
    let t0 = Instant::now();
    let b = broker();
    publish_retained(&b, "dev/1/state", "on", QoS::AtLeastOnce, t0);
    let stored = b.retained("dev/1/state", t0).expect("stored");
    assert_eq!(&stored.payload[..], b"on");
    assert_eq!(count(&b.metrics().retained), 1);

    publish_retained(&b, "dev/1/state", "off", QoS::AtLeastOnce, t0);
    let stored = b.retained("dev/1/state", t0).expect("replaced");
    assert_eq!(&stored.payload[..], b"off");
    assert_eq!(count(&b.metrics().retained), 1, "replaced, not added");

    // A non-retained publish leaves the retained message alone.
    publish(&b, "dev/1/state", "blink", QoS::AtLeastOnce, t0);
    assert_eq!(
        &b.retained("dev/1/state", t0).expect("kept").payload[..],
        b"off"
    );

    b.publish(
        Message::new("dev/1/state", Bytes::new(), QoS::AtLeastOnce, true),
        t0,
    );
    assert!(
        b.retained("dev/1/state", t0).is_none(),
        "empty payload clears"
    );
    assert_eq!(count(&b.metrics().retained), 0);

    let s = connect(&b, "s", t0);
    assert_eq!(
        b.subscribe(&s, "dev/#", handling(0), t0)
            .expect("ok")
            .retained_sent,
        0
    );
    assert!(drain_all(&b, &s, t0).is_empty());
}

#[test]
fn retained_delivered_on_subscribe_with_retain_flag() {
    let t0 = Instant::now();
    let b = broker();
    publish_retained(&b, "dev/1/state", "one", QoS::AtLeastOnce, t0);
    publish_retained(&b, "dev/2/state", "two", QoS::AtMostOnce, t0);
    publish_retained(&b, "dev/2/other", "nope", QoS::AtMostOnce, t0);

    let s = connect(&b, "s", t0);
    let options = SubOptions {
        subscription_id: Some(9),
        ..SubOptions::at(QoS::AtLeastOnce)
    };
    let outcome = b.subscribe(&s, "dev/+/state", options, t0).expect("ok");
    assert!(!outcome.existed);
    assert_eq!(outcome.retained_sent, 2);

    let mut out = drain_all(&b, &s, t0);
    out.sort_by_key(|o| o.delivery.message.topic.to_string());
    assert_eq!(payloads(&out), ["one", "two"]);
    assert!(
        out.iter().all(|o| o.delivery.retain),
        "retain flag set on subscribe"
    );
    assert!(out.iter().all(|o| o.delivery.subscription_ids == [9]));
    assert_eq!(out[0].delivery.qos, QoS::AtLeastOnce);
    assert_eq!(
        out[1].delivery.qos,
        QoS::AtMostOnce,
        "min(retained QoS, granted)"
    );
}

#[test]
fn retain_handling_0_sends_on_every_subscribe() {
    let t0 = Instant::now();
    let b = broker();
    publish_retained(&b, "r", "kept", QoS::AtLeastOnce, t0);
    let s = connect(&b, "s", t0);

    assert_eq!(
        b.subscribe(&s, "r", handling(0), t0)
            .expect("ok")
            .retained_sent,
        1
    );
    let again = b.subscribe(&s, "r", handling(0), t0).expect("ok");
    assert!(again.existed);
    assert_eq!(again.retained_sent, 1);
    assert_eq!(payloads(&drain_all(&b, &s, t0)), ["kept", "kept"]);
}

#[test]
fn retain_handling_1_sends_only_when_subscription_is_new() {
    let t0 = Instant::now();
    let b = broker();
    publish_retained(&b, "r", "kept", QoS::AtLeastOnce, t0);
    let s = connect(&b, "s", t0);

    let first = b.subscribe(&s, "r", handling(1), t0).expect("ok");
    assert_eq!((first.existed, first.retained_sent), (false, 1));
    let second = b.subscribe(&s, "r", handling(1), t0).expect("ok");
    assert_eq!((second.existed, second.retained_sent), (true, 0));
    assert_eq!(payloads(&drain_all(&b, &s, t0)), ["kept"]);
}

#[test]
fn retain_handling_2_never_sends() {
    let t0 = Instant::now();
    let b = broker();
    publish_retained(&b, "r", "kept", QoS::AtLeastOnce, t0);
    let s = connect(&b, "s", t0);

    assert_eq!(
        b.subscribe(&s, "r", handling(2), t0)
            .expect("ok")
            .retained_sent,
        0
    );
    assert!(drain_all(&b, &s, t0).is_empty());
    // Live messages still flow.
    publish(&b, "r", "live", QoS::AtLeastOnce, t0);
    assert_eq!(payloads(&drain_all(&b, &s, t0)), ["live"]);
}

#[test]
fn retained_not_sent_for_shared_subscriptions() {
    let t0 = Instant::now();
    let b = broker();
    publish_retained(&b, "jobs/1", "kept", QoS::AtLeastOnce, t0);
    let s = connect(&b, "s", t0);

    let outcome = b
        .subscribe(&s, "$share/g/jobs/+", handling(0), t0)
        .expect("ok");
    assert_eq!(outcome.retained_sent, 0);
    assert!(drain_all(&b, &s, t0).is_empty());
}

#[test]
fn expired_retained_messages_not_delivered() {
    let t0 = Instant::now();
    let b = broker();
    b.publish(
        message("r/short", "short", QoS::AtLeastOnce, true).with_expiry_interval(Some(5), t0),
        t0,
    );
    b.publish(
        message("r/long", "long", QoS::AtLeastOnce, true).with_expiry_interval(Some(60), t0),
        t0,
    );

    let t1 = t0 + secs(5);
    assert!(b.retained("r/short", t1).is_none());
    assert!(b.retained("r/long", t1).is_some());
    assert_eq!(b.retained_matching("r/#", t1).len(), 1);

    let s = connect(&b, "s", t1);
    assert_eq!(
        b.subscribe(&s, "r/#", handling(0), t1)
            .expect("ok")
            .retained_sent,
        1
    );
    let out = drain_all(&b, &s, t1);
    assert_eq!(payloads(&out), ["long"]);
    assert_eq!(out[0].delivery.message.remaining_expiry(t1), Some(55));
}

#[test]
fn dollar_topics_not_in_wildcard_retained_lookup() {
    let t0 = Instant::now();
    let b = broker();
    publish_retained(&b, "$SYS/uptime", "sys", QoS::AtMostOnce, t0);
    publish_retained(&b, "a/b", "plain", QoS::AtMostOnce, t0);

    let s = connect(&b, "s", t0);
    subscribe(&b, &s, "#", QoS::AtMostOnce, t0);
    assert_eq!(payloads(&drain_all(&b, &s, t0)), ["plain"]);

    let plus = connect(&b, "plus", t0);
    subscribe(&b, &plus, "+/uptime", QoS::AtMostOnce, t0);
    assert!(drain_all(&b, &plus, t0).is_empty());

    let sys = connect(&b, "sys", t0);
    subscribe(&b, &sys, "$SYS/#", QoS::AtMostOnce, t0);
    assert_eq!(payloads(&drain_all(&b, &sys, t0)), ["sys"]);
}
