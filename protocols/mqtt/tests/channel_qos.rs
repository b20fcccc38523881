//! QoS 0, 1 and 2 flows in both directions (§4.3, §3.3–§3.7), duplicate
//! QoS 2 PUBLISH handling, and unknown packet identifiers.

mod support;

use support::*;
use tributary_core::auth::{AclRule, AllowAll, Permission, RuleAction, RuleAuthorizer, Who};
use tributary_core::cluster::SingleNode;
use tributary_core::storage::MemoryPersistence;
use tributary_core::{Broker, BrokerConfig};
use tributary_mqtt::channel::ChannelConfig;

/// A broker that denies publishing to `ro/#`.
fn read_only_harness() -> Harness {
    let authorizer = RuleAuthorizer {
        rules: vec![AclRule {
            permission: Permission::Deny,
            who: vec![Who::All],
            action: RuleAction::Publish,
            topics: vec!["ro/#".into()],
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

/// A subscriber on `t` at `sub_qos` and a publisher, both `version`.
fn pair(h: &mut Harness, v5: bool, sub_qos: u8) -> (Conn, Conn) {
    let (s, p) = if v5 {
        (connect_v5("sub"), connect_v5("pub"))
    } else {
        (connect("sub"), connect("pub"))
    };
    let sub = h.connected(s);
    h.subscribed(sub, 1, &[("t", sub_qos)]);
    let publ = h.connected(p);
    (sub, publ)
}

#[test]
fn qos0_both_directions() {
    let mut h = Harness::new();
    let (sub, publ) = pair(&mut h, false, 0);
    h.send(publ, publish("t", b"zero"));
    h.assert_silent(publ);
    let p = h.expect_one(sub).publish();
    assert_eq!(p.qos, QoS::AtMostOnce);
    assert_eq!(p.packet_id, None);
    assert_eq!(&*p.topic, "t");
    assert_eq!(&p.payload[..], b"zero");
    assert!(!p.dup && !p.retain);
}

#[test]
fn qos1_inbound_puback() {
    let mut h = Harness::new();
    let (sub, publ) = pair(&mut h, true, 1);
    h.send(publ, publish("t", b"one").qos(1).id(7));
    let ack = h.expect_one(publ).puback();
    assert_eq!(ack.packet_id, 7);
    assert_eq!(ack.reason, rc::SUCCESS);
    assert_eq!(h.expect_one(sub).publish().qos, QoS::AtLeastOnce);
}

#[test]
fn qos1_inbound_without_subscribers_v5_puback_0x10() {
    let mut h = Harness::new();
    let publ = h.connected(connect_v5("pub"));
    h.send(publ, publish("nobody", b"x").qos(1).id(3));
    let ack = h.expect_one(publ).puback();
    assert_eq!(ack.packet_id, 3);
    assert_eq!(ack.reason, rc::NO_MATCHING_SUBSCRIBERS);
}

#[test]
fn qos1_outbound_publish_and_puback() {
    let mut h = Harness::new();
    let (sub, publ) = pair(&mut h, false, 1);
    h.send(publ, publish("t", b"a").qos(1).id(1));
    h.send(publ, publish("t", b"b").qos(1).id(2));
    let packets = h.take(sub);
    assert_eq!(packets.len(), 2);
    let ids: Vec<_> = packets
        .into_iter()
        .map(|p| {
            let p = p.publish();
            assert_eq!(p.qos, QoS::AtLeastOnce);
            assert!(!p.dup);
            p.packet_id.expect("packet id")
        })
        .collect();
    assert_ne!(ids[0], ids[1], "distinct packet ids for inflight messages");
    h.send(sub, puback(ids[0]));
    h.send(sub, puback(ids[1]));
    h.assert_silent(sub);
}

#[test]
fn qos2_inbound_pubrec_pubrel_pubcomp() {
    let mut h = Harness::new();
    let (sub, publ) = pair(&mut h, true, 2);
    h.send(publ, publish("t", b"two").qos(2).id(9));
    let rec = h.expect_one(publ).pubrec();
    assert_eq!((rec.packet_id, rec.reason), (9, rc::SUCCESS));
    // Routed when the PUBLISH arrives, before PUBREL.
    assert_eq!(h.expect_one(sub).publish().qos, QoS::ExactlyOnce);

    h.send(publ, pubrel(9));
    let comp = h.expect_one(publ).pubcomp();
    assert_eq!((comp.packet_id, comp.reason), (9, rc::SUCCESS));
    h.assert_silent(sub);
}

#[test]
fn qos2_outbound_publish_pubrec_pubrel_pubcomp() {
    let mut h = Harness::new();
    let (sub, publ) = pair(&mut h, false, 2);
    h.send(publ, publish("t", b"two").qos(2).id(1));
    h.expect_one(publ).pubrec();
    let p = h.expect_one(sub).publish();
    assert_eq!(p.qos, QoS::ExactlyOnce);
    let id = p.packet_id.expect("packet id");

    h.send(sub, pubrec(id));
    let rel = h.expect_one(sub).pubrel();
    assert_eq!((rel.packet_id, rel.reason), (id, rc::SUCCESS));
    h.send(sub, pubcomp(id));
    h.assert_silent(sub);
}

#[test]
fn delivered_qos_is_min_of_published_and_granted() {
    let mut h = Harness::new();
    let (sub, publ) = pair(&mut h, false, 1);
    h.send(publ, publish("t", b"x").qos(2).id(4));
    let p = h.expect_one(sub).publish();
    assert_eq!(p.qos, QoS::AtLeastOnce);
    assert!(p.packet_id.is_some());

    h.send(publ, publish("t", b"y"));
    let p = h.expect_one(sub).publish();
    assert_eq!(p.qos, QoS::AtMostOnce);
}

#[test]
fn duplicate_qos2_publish_routed_once() {
    // [MQTT-4.3.3-10]: until PUBREL, a PUBLISH with the same id is not
    // delivered again, but PUBREC is repeated.
    let mut h = Harness::new();
    let (sub, publ) = pair(&mut h, true, 2);
    h.send(publ, publish("t", b"once").qos(2).id(5));
    assert_eq!(h.expect_one(publ).pubrec().packet_id, 5);
    h.send(publ, publish("t", b"once").qos(2).id(5).dup());
    let rec = h.expect_one(publ).pubrec();
    assert_eq!((rec.packet_id, rec.reason), (5, rc::SUCCESS));
    assert_eq!(h.take(sub).len(), 1, "routed exactly once");

    // After the release the id is free: a new message with it is routed.
    h.send(publ, pubrel(5));
    h.expect_one(publ).pubcomp();
    h.send(publ, publish("t", b"again").qos(2).id(5));
    h.expect_one(publ).pubrec();
    assert_eq!(&h.expect_one(sub).publish().payload[..], b"again");
}

#[test]
fn pubrel_for_unknown_id_v5_pubcomp_0x92() {
    let mut h = Harness::new();
    let c = h.connected(connect_v5("c"));
    h.send(c, pubrel(77));
    let comp = h.expect_one(c).pubcomp();
    assert_eq!(comp.packet_id, 77);
    assert_eq!(comp.reason, rc::PACKET_IDENTIFIER_NOT_FOUND);
    assert!(!h.is_closed(c));
}

#[test]
fn pubrel_for_unknown_id_v3_still_pubcomp() {
    // 3.1.1 §4.3.3: a PUBREL is always answered with PUBCOMP (no reason code).
    let mut h = Harness::new();
    let c = h.connected(connect("c"));
    h.send(c, pubrel(77));
    assert_eq!(h.expect_one(c).pubcomp().packet_id, 77);
}

#[test]
fn pubrec_for_unknown_id_v5_pubrel_0x92() {
    let mut h = Harness::new();
    let c = h.connected(connect_v5("c"));
    h.send(c, pubrec(12));
    let rel = h.expect_one(c).pubrel();
    assert_eq!(
        (rel.packet_id, rel.reason),
        (12, rc::PACKET_IDENTIFIER_NOT_FOUND)
    );
}

#[test]
fn retained_message_follows_suback() {
    // [MQTT-3.8.4-1] SUBACK first, then the retained message with RETAIN set.
    let mut h = Harness::new();
    let publ = h.connected(connect("pub"));
    h.send(publ, publish("r/1", b"kept").retain());
    let sub = h.connected(connect("sub"));
    h.send(sub, subscribe(3, &[("r/#", 1)]));
    let packets = h.take(sub);
    assert_eq!(packets.len(), 2, "{packets:?}");
    let mut it = packets.into_iter();
    assert_eq!(it.next().expect("suback").suback().reasons, vec![1]);
    let p = it.next().expect("publish").publish();
    assert!(p.retain);
    assert_eq!(&*p.topic, "r/1");
    assert_eq!(&p.payload[..], b"kept");
}

#[test]
fn duplicate_qos2_publish_after_reconnect_routed_once() {
    // [MQTT-4.3.3-10] holds across connections of a persistent session: the
    // client resends the unreleased PUBLISH with DUP after reconnecting.
    let mut h = Harness::new();
    let (sub, _) = pair(&mut h, true, 2);
    let p = h.connected(connect_v5("qos2pub").session_expiry(60));
    h.send(p, publish("t", b"once").qos(2).id(8));
    h.expect_one(p).pubrec();
    h.drop_connection(p);

    let (p2, ack) = h.connect(connect_v5("qos2pub").clean_start(false).session_expiry(60));
    assert!(ack.session_present);
    h.send(p2, publish("t", b"once").qos(2).id(8).dup());
    assert_eq!(h.expect_one(p2).pubrec().packet_id, 8);
    h.send(p2, pubrel(8));
    assert_eq!(h.expect_one(p2).pubcomp().reason, rc::SUCCESS);
    assert_eq!(h.take(sub).len(), 1, "routed exactly once");
}

#[test]
fn pubrec_with_error_reason_ends_qos2_flow() {
    // §4.3.3: a PUBREC with a reason >= 0x80 ends the flow; no PUBREL, and
    // the message no longer counts against the receive window.
    let mut h = Harness::new();
    let s = h.connected(connect_v5("s").receive_maximum(1));
    h.subscribed(s, 1, &[("t", 2)]);
    let p = h.connected(connect_v5("p"));
    h.send(p, publish("t", b"a").qos(2).id(1));
    h.send(p, publish("t", b"b").qos(2).id(2));
    let a = h.expect_one(s).publish();
    h.send(
        s,
        pubrec_with(a.packet_id.expect("id"), rc::UNSPECIFIED_ERROR),
    );
    let b = h.expect_one(s).publish();
    assert_eq!(&b.payload[..], b"b");
}

#[test]
fn publish_denied_v5_acks_0x87_and_drops() {
    let mut h = read_only_harness();
    let sub = h.connected(connect_v5("sub"));
    h.subscribed(sub, 1, &[("ro/#", 2)]);
    let p = h.connected(connect_v5("p"));
    h.send(p, publish("ro/x", b"1").qos(1).id(1));
    let ack = h.expect_one(p).puback();
    assert_eq!((ack.packet_id, ack.reason), (1, rc::NOT_AUTHORIZED));
    h.send(p, publish("ro/x", b"2").qos(2).id(2));
    let rec = h.expect_one(p).pubrec();
    assert_eq!((rec.packet_id, rec.reason), (2, rc::NOT_AUTHORIZED));
    h.send(p, publish("ro/x", b"3"));
    h.assert_silent(p);
    h.assert_silent(sub);
    assert!(!h.is_closed(p));
}

#[test]
fn publish_denied_v3_acked_and_dropped() {
    let mut h = read_only_harness();
    let sub = h.connected(connect("sub"));
    h.subscribed(sub, 1, &[("ro/#", 1)]);
    let p = h.connected(connect("p"));
    h.send(p, publish("ro/x", b"1").qos(1).id(1));
    assert_eq!(h.expect_one(p).puback().packet_id, 1);
    h.assert_silent(sub);
    assert!(!h.is_closed(p));
}
