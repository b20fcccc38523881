//! SUBSCRIBE / UNSUBSCRIBE (§3.8–§3.11): SUBACK and UNSUBACK reason
//! codes per version, authorization, subscription identifiers, no local,
//! and shared subscriptions.

mod support;

use support::*;
use tributary_core::auth::{AclRule, AllowAll, Permission, RuleAction, RuleAuthorizer, Who};
use tributary_core::cluster::SingleNode;
use tributary_core::storage::MemoryPersistence;
use tributary_core::{Broker, BrokerConfig};
use tributary_mqtt::channel::ChannelConfig;

/// A broker that denies subscribing to `secret/#` to everybody.
fn acl_harness() -> Harness {
    let authorizer = RuleAuthorizer {
        rules: vec![AclRule {
            permission: Permission::Deny,
            who: vec![Who::All],
            action: RuleAction::Subscribe,
            topics: vec!["secret/#".into()],
        }],
        no_match: Permission::Allow,
    };
    let broker = Broker::with_seams(
        BrokerConfig::default(),
        Box::new(AllowAll),
        Box::new(authorizer),
        Box::new(MemoryPersistence),
        Box::new(SingleNode),
    );
    Harness::with_broker(broker, ChannelConfig::default())
}

#[test]
fn suback_grants_requested_qos_per_filter() {
    let mut h = Harness::new();
    let c = h.connected(connect_v5("c"));
    h.send(c, subscribe(10, &[("a", 0), ("b/+", 1), ("c/#", 2)]));
    let ack = h.expect_one(c).suback();
    assert_eq!(ack.packet_id, 10);
    assert_eq!(ack.reasons, vec![0, 1, 2]);
}

#[test]
fn suback_caps_qos_at_server_maximum() {
    let config = ChannelConfig {
        max_qos: QoS::AtLeastOnce,
        ..ChannelConfig::default()
    };
    let mut h = Harness::with_config(config);
    let c = h.connected(connect_v5("c"));
    h.send(c, subscribe(1, &[("a", 2)]));
    assert_eq!(h.expect_one(c).suback().reasons, vec![1]);
}

#[test]
fn suback_0x8f_for_invalid_filter_v5() {
    let mut h = Harness::new();
    let c = h.connected(connect_v5("c"));
    h.send(c, subscribe(2, &[("a/#/b", 1), ("ok/+", 1), ("x+/y", 0)]));
    let ack = h.expect_one(c).suback();
    assert_eq!(
        ack.reasons,
        vec![rc::TOPIC_FILTER_INVALID, 1, rc::TOPIC_FILTER_INVALID]
    );
    assert!(!h.is_closed(c));
}

#[test]
fn suback_0x87_for_acl_denied_filter_v5() {
    let mut h = acl_harness();
    let c = h.connected(connect_v5("c"));
    h.send(c, subscribe(3, &[("secret/x", 1), ("public/x", 1)]));
    assert_eq!(
        h.expect_one(c).suback().reasons,
        vec![rc::NOT_AUTHORIZED, 1]
    );

    // The denied subscription really does not exist.
    let p = h.connected(connect_v5("p"));
    h.send(p, publish("secret/x", b"hidden"));
    h.assert_silent(c);
}

#[test]
fn suback_0x80_for_invalid_and_denied_filters_v3() {
    // 3.1.1 §3.9.3: the only failure return code is 0x80.
    let mut h = acl_harness();
    let c = h.connected(connect("c"));
    h.send(c, subscribe(4, &[("a/#/b", 1), ("secret/x", 1), ("ok", 2)]));
    assert_eq!(h.expect_one(c).suback().reasons, vec![0x80, 0x80, 2]);
}

#[test]
fn unsuback_v5_success_and_0x11_for_unknown_filter() {
    let mut h = Harness::new();
    let c = h.connected(connect_v5("c"));
    h.subscribed(c, 1, &[("a", 1)]);
    h.send(c, unsubscribe(2, &["a", "never"]));
    let ack = h.expect_one(c).unsuback();
    assert_eq!(ack.packet_id, 2);
    assert_eq!(ack.reasons, vec![rc::SUCCESS, rc::NO_SUBSCRIPTION_EXISTED]);

    let p = h.connected(connect_v5("p"));
    h.send(p, publish("a", b"x"));
    h.assert_silent(c);
}

#[test]
fn unsuback_v3_has_no_reason_codes() {
    let mut h = Harness::new();
    let c = h.connected(connect("c"));
    h.send(c, unsubscribe(5, &["never"]));
    let ack = h.expect_one(c).unsuback();
    assert_eq!(ack.packet_id, 5);
    assert!(ack.reasons.is_empty());
}

#[test]
fn subscription_identifiers_on_delivered_publish() {
    // [MQTT-3.3.4-3] / [MQTT-3.3.4-4]: one copy, carrying every matching id.
    let mut h = Harness::new();
    let s = h.connected(connect_v5("s"));
    h.send(s, subscribe(1, &[("a/+", 1)]).sub_id(7));
    h.expect_one(s).suback();
    h.send(s, subscribe(2, &[("a/#", 0)]).sub_id(9));
    h.expect_one(s).suback();
    h.send(s, subscribe(3, &[("+/b", 0)]));
    h.expect_one(s).suback();

    let p = h.connected(connect_v5("p"));
    h.send(p, publish("a/b", b"x").qos(1).id(1));
    let m = h.expect_one(s).publish();
    let mut ids = m.properties.subscription_identifiers.clone();
    ids.sort_unstable();
    assert_eq!(ids, vec![7, 9]);
    assert_eq!(
        m.qos,
        QoS::AtLeastOnce,
        "highest granted QoS of the overlap"
    );

    h.send(p, publish("a/c", b"y"));
    assert_eq!(
        h.expect_one(s)
            .publish()
            .properties
            .subscription_identifiers,
        vec![7, 9]
    );
    h.send(p, publish("z/b", b"z"));
    assert!(h
        .expect_one(s)
        .publish()
        .properties
        .subscription_identifiers
        .is_empty());
}

#[test]
fn no_local_suppresses_own_messages() {
    // [MQTT-3.8.3-3]
    let mut h = Harness::new();
    let c = h.connected(connect_v5("me"));
    h.send(c, subscribe(1, &[("t", 0)]).no_local());
    h.expect_one(c).suback();
    h.send(c, publish("t", b"mine"));
    h.assert_silent(c);

    let other = h.connected(connect_v5("other"));
    h.send(other, publish("t", b"theirs"));
    assert_eq!(&h.expect_one(c).publish().payload[..], b"theirs");
}

#[test]
fn shared_subscription_with_no_local_disconnect_0x82() {
    // [MQTT-3.8.3-4]
    let mut h = Harness::new();
    let c = h.connected(connect_v5("c"));
    h.send(c, subscribe(1, &[("$share/g/t", 1)]).no_local());
    let packets = h.take(c);
    assert_eq!(packets.len(), 1, "no SUBACK, only DISCONNECT: {packets:?}");
    assert_eq!(
        packets.into_iter().next().expect("one").disconnect().reason,
        rc::PROTOCOL_ERROR
    );
    assert!(h.is_closed(c));
}

#[test]
fn shared_subscription_delivers_to_one_member() {
    let mut h = Harness::new();
    let a = h.connected(connect_v5("a"));
    h.subscribed(a, 1, &[("$share/g/t", 1)]);
    let b = h.connected(connect_v5("b"));
    h.subscribed(b, 1, &[("$share/g/t", 1)]);
    let p = h.connected(connect_v5("p"));
    for i in 0..4u16 {
        h.send(p, publish("t", b"x").qos(1).id(i + 1));
    }
    let got_a = h.take(a).len();
    let got_b = h.take(b).len();
    assert_eq!(got_a + got_b, 4, "each message to exactly one member");
    assert_eq!((got_a, got_b), (2, 2), "round robin");
}

#[test]
fn shared_subscriptions_disabled_v5_0x9e() {
    let config = ChannelConfig {
        shared_subscription: false,
        ..ChannelConfig::default()
    };
    let mut h = Harness::with_config(config);
    let (c, ack) = h.connect(connect_v5("c"));
    assert_eq!(ack.properties.shared_subscription_available, Some(0));
    h.send(c, subscribe(1, &[("$share/g/t", 1)]));
    assert_eq!(
        h.expect_one(c).suback().reasons,
        vec![rc::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED]
    );
}

#[test]
fn retain_handling_controls_retained_on_subscribe() {
    // §3.8.3.1: 0 = always, 1 = only for a new subscription, 2 = never.
    let mut h = Harness::new();
    let p = h.connected(connect_v5("p"));
    h.send(p, publish("r", b"kept").retain());

    let c = h.connected(connect_v5("c"));
    h.send(c, subscribe(1, &[("r", 0)]).retain_handling(1));
    assert_eq!(h.take(c).len(), 2, "new subscription: SUBACK + retained");
    h.send(c, subscribe(2, &[("r", 0)]).retain_handling(1));
    assert_eq!(h.take(c).len(), 1, "existing subscription: SUBACK only");
    h.send(c, subscribe(3, &[("r", 0)]).retain_handling(0));
    assert_eq!(h.take(c).len(), 2, "retain handling 0: always");

    let d = h.connected(connect_v5("d"));
    h.send(d, subscribe(1, &[("r", 0)]).retain_handling(2));
    assert_eq!(h.take(d).len(), 1, "retain handling 2: never");
}

#[test]
fn shared_subscription_unacked_message_goes_to_other_member() {
    // §4.8.2: a message not acknowledged by a member that leaves is sent to
    // another member of the group.
    let mut h = Harness::new();
    let a = h.connected(connect_v5("a"));
    h.subscribed(a, 1, &[("$share/g/t", 1)]);
    let b = h.connected(connect_v5("b"));
    h.subscribed(b, 1, &[("$share/g/t", 1)]);
    let p = h.connected(connect_v5("p"));
    h.send(p, publish("t", b"job").qos(1).id(1));
    let (holder, other) = if h.take(a).is_empty() { (b, a) } else { (a, b) };
    h.assert_silent(holder);
    h.drop_connection(holder);
    let m = h.expect_one(other).publish();
    assert_eq!(&m.payload[..], b"job");
}
