//! Messages from addresses with no client: discovery (§6.1), QoS −1 (§6.8).

mod support;

use std::time::Instant;

use bytes::Bytes;
use support::*;
use tributary_core::QoS as CoreQoS;
use tributary_mqttsn::gateway::{unattached, Stats, Unattached};
use tributary_mqttsn::packet::{Packet, QoS, TopicIdType};

#[test]
fn searchgw_gets_gwinfo_and_connect_attaches() {
    let b = broker();
    let mut cfg = config();
    cfg.gateway_id = 42;
    let stats = Stats::default();
    let now = Instant::now();
    assert_eq!(
        unattached(&b, &cfg, &stats, None, &Packet::SearchGw { radius: 0 }, now),
        Unattached::Reply(Packet::GwInfo {
            gw_id: 42,
            gw_addr: Bytes::new()
        })
    );
    assert_eq!(
        unattached(&b, &cfg, &stats, None, &connect("c", true, 1, false), now),
        Unattached::Attach
    );
    assert_eq!(
        unattached(
            &b,
            &cfg,
            &stats,
            None,
            &Packet::PingReq {
                client_id: Some("c".into())
            },
            now
        ),
        Unattached::Reply(Packet::Disconnect { duration: None })
    );
    assert_eq!(
        unattached(&b, &cfg, &stats, None, &Packet::PingResp, now),
        Unattached::Done
    );
}

#[test]
fn qos_minus_one_publishes_predefined_and_short_topics_only() {
    let t0 = Instant::now();
    let b = broker();
    let peer = Peer::new(&b, "mqtt", t0);
    peer.subscribe("#", CoreQoS::AtLeastOnce, t0);
    let mut cfg = config();
    cfg.mountpoint = "m/".into();
    let stats = Stats::default();
    for p in [
        publish(TopicIdType::Predefined, 1, 0, QoS::NoConnection, b"pre"),
        publish(
            TopicIdType::Short,
            short("xy"),
            0,
            QoS::NoConnection,
            b"short",
        ),
        publish(TopicIdType::Normal, 1025, 0, QoS::NoConnection, b"normal"),
        publish(
            TopicIdType::Predefined,
            77,
            0,
            QoS::NoConnection,
            b"unknown",
        ),
    ] {
        assert_eq!(unattached(&b, &cfg, &stats, None, &p, t0), Unattached::Done);
    }
    assert_eq!(
        peer.received(t0),
        vec![
            (
                "m/pre/one".into(),
                Bytes::from_static(b"pre"),
                CoreQoS::AtMostOnce
            ),
            (
                "m/xy".into(),
                Bytes::from_static(b"short"),
                CoreQoS::AtMostOnce
            ),
        ]
    );
    let snap = stats.snapshot();
    assert!(
        snap.contains(&("qos_neg1_published", 2)) && snap.contains(&("qos_neg1_dropped", 2)),
        "{snap:?}"
    );

    // Switched off: nothing is published.
    cfg.enable_qos3 = false;
    unattached(
        &b,
        &cfg,
        &stats,
        None,
        &publish(TopicIdType::Predefined, 1, 0, QoS::NoConnection, b"off"),
        t0,
    );
    assert_eq!(peer.received(t0), vec![]);
}
