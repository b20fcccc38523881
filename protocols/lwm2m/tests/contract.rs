//! The device behind the core's connection contract: its events go through
//! the intake (ACL, congestion), inputs from the datagram driver (datagrams,
//! forwarded Updates / De-registers), limits and eviction.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use support::*;
use tributary_coap::Code;
use tributary_core::auth::{AclRule, AllowAll, Permission, RuleAction, RuleAuthorizer, Who};
use tributary_core::cluster::SingleNode;
use tributary_core::connection::{Connection, DatagramConnection, Limit, ReadHold};
use tributary_core::metrics::Metrics;
use tributary_core::session::QueueLimits;
use tributary_core::storage::MemoryPersistence;
use tributary_core::{Broker, BrokerConfig, QoS};
use tributary_lwm2m::{DeviceConfig, DeviceInput, Remote};

/// A broker whose ACL denies publishing on `filter`.
fn broker_denying_publish(filter: &str) -> Arc<Broker> {
    let authz = RuleAuthorizer {
        rules: vec![AclRule {
            permission: Permission::Deny,
            who: vec![Who::All],
            action: RuleAction::Publish,
            topics: vec![filter.to_string()],
        }],
        no_match: Permission::Allow,
    };
    Arc::new(Broker::with_seams(
        BrokerConfig::default(),
        Box::new(AllowAll),
        Box::new(authz),
        Box::new(MemoryPersistence),
        Box::new(SingleNode),
    ))
}

#[test]
fn events_the_acl_denies_are_not_published() {
    let broker = broker_denying_publish("lwm2m/+/up/resp");
    let mut h = Harness::with_broker(broker, DeviceConfig::default(), QoS::AtMostOnce);
    // The device registers all the same; only its register event is refused.
    h.register("ep=ep1&lt=60");
    assert_eq!(h.device.endpoint(), Some("ep1"));
    assert!(h.published().is_empty());
    let denied = |h: &Harness| Metrics::get(&h.broker.metrics().publish_denied);
    assert_eq!(denied(&h), 1);
    // Topics the ACL allows still get through: an Update with an object list.
    let out = h.request(Code::POST, "rd/ep1", "</3/0>");
    assert_eq!(out[0].code, Code::CHANGED);
    let p = h.published();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0, "lwm2m/ep1/up/update");
    assert_eq!(p[0].1["msgType"], "update");
    assert_eq!(denied(&h), 1);
}

#[test]
fn events_that_fill_a_subscriber_congest_the_device() {
    let broker = Arc::new(Broker::new(BrokerConfig {
        queue: QueueLimits {
            max_len: 1,
            ..QueueLimits::default()
        },
        ..BrokerConfig::default()
    }));
    let config = DeviceConfig {
        publish_qos: QoS::AtLeastOnce,
        ..DeviceConfig::default()
    };
    let mut h = Harness::with_broker(broker, config, QoS::AtLeastOnce);
    h.register("ep=ep1&lt=60");
    // The register event fits the application's mailbox.
    assert_eq!(h.device.read_hold(), ReadHold::Open);
    assert!(Connection::take_congestion(&mut h.device).is_empty());
    // The update event goes over its bound: the driver must stop reading.
    h.request(Code::POST, "rd/ep1", "</3/0>");
    assert_eq!(h.device.read_hold(), ReadHold::Held);
    let congested = Connection::take_congestion(&mut h.device);
    assert_eq!(congested.len(), 1);
    assert!(Arc::ptr_eq(&congested[0], &h.app.session));
    assert_eq!(h.device.read_hold(), ReadHold::Open);
    // Over the bound, not dropped: the application gets both events.
    let kinds: Vec<_> = h
        .published()
        .into_iter()
        .map(|(_, j)| j["msgType"].clone())
        .collect();
    assert_eq!(kinds, vec!["register", "update"]);
}

#[test]
fn the_contract_describes_a_device() {
    let mut h = Harness::new(DeviceConfig::default());
    assert!(Connection::take_auth(&mut h.device).is_none());
    let d = &h.device;
    assert_eq!(d.protocol(), "lwm2m");
    assert_eq!(Connection::client_id(d), None);
    assert!(d.is_authenticated());
    assert_eq!(d.idle_timeout(), None);
    assert_eq!(d.preauth_budget().time, Duration::MAX);
    assert_eq!(d.preauth_budget().bytes, usize::MAX);
    assert!(Connection::signal(d).is_none());
    assert!(DatagramConnection::is_idle(d));
    // A malformed datagram shows no life; a well-formed one does.
    assert!(h.feed_raw(&[0x40]).is_empty());
    assert!(!h.alive);
    h.register("ep=ep1&lt=60");
    assert!(h.alive);
    assert_eq!(Connection::client_id(&h.device), Some("ep1"));
    assert!(Connection::signal(&h.device).is_some());
    assert!(Connection::commit_wait(&h.device).is_none());
    assert!(!Connection::is_closed(&h.device));
    assert!(!DatagramConnection::is_idle(&h.device));
}

#[test]
fn forwarded_inputs_reach_the_registration() {
    let mut h = Harness::new(DeviceConfig::default());
    h.register("ep=ep1&lt=60");
    h.published();
    // An Update that arrived from another address: the lifetime restarts.
    h.advance(Duration::from_secs(50));
    let out = h.input(DeviceInput::Remote(Remote::Update {
        queries: vec!["lt=60".into()],
        payload: Bytes::from_static(b"</3/0>"),
    }));
    assert!(out.is_empty());
    assert!(h.alive);
    let p = h.published();
    assert_eq!(p[0].1["msgType"], "update");
    assert_eq!(p[0].1["data"]["objectList"], serde_json::json!(["/3/0"]));
    h.advance(Duration::from_secs(50));
    assert_eq!(h.device.endpoint(), Some("ep1"));
    // A De-register from there ends it.
    h.input(DeviceInput::Remote(Remote::Deregister));
    let p = h.published();
    assert_eq!(p[0].1["msgType"], "deregister");
    assert_eq!(p[0].1["data"]["reason"], "deregistered");
    assert_eq!(h.device.endpoint(), None);
    assert_eq!(h.broker.session_count(), 1, "only the application's");
}

#[test]
fn a_limit_drops_the_registration_with_an_event() {
    let mut h = Harness::new(DeviceConfig::default());
    h.register("ep=ep1&lt=60");
    h.published();
    let now = h.now;
    Connection::handle_limit(&mut h.device, Limit::WriteStall, now);
    let p = h.published();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].1["msgType"], "deregister");
    assert_eq!(p[0].1["data"]["reason"], "write_stall");
    assert_eq!(h.device.endpoint(), None);
    assert_eq!(h.broker.session_count(), 1, "only the application's");
    assert!(Connection::take_congestion(&mut h.device).is_empty());
}

#[test]
fn eviction_ends_the_registration() {
    let mut h = Harness::new(DeviceConfig::default());
    h.register("ep=ep1&lt=60");
    h.published();
    let now = h.now;
    DatagramConnection::evict(&mut h.device, now);
    let p = h.published();
    assert_eq!(p[0].1["msgType"], "deregister");
    assert_eq!(h.device.endpoint(), None);
    assert_eq!(h.broker.session_count(), 1, "only the application's");
    // Idempotent, as the driver's `finish` after it may be.
    Connection::finish(&mut h.device, now);
    assert!(h.published().is_empty());
}

#[test]
fn events_over_the_per_client_rate_pause_the_device_until_the_rate_allows() {
    let config = BrokerConfig {
        rates: tributary_core::intake::RateLimits {
            messages_rate: 1,
            bytes_rate: 0,
            disconnect: false,
        },
        ..BrokerConfig::default()
    };
    let broker = Arc::new(Broker::new(config));
    let mut h = Harness::with_broker(broker.clone(), DeviceConfig::default(), QoS::AtMostOnce);
    h.register("ep=ep1&lt=60");
    assert_eq!(Connection::read_hold(&h.device), ReadHold::Open);
    // A second event within the second is over the rate: the device's
    // input pauses (throttle mode), counted; the event itself is kept.
    let out = h.request(Code::POST, "rd/ep1", "</3/0>");
    assert_eq!(out[0].code, Code::CHANGED);
    let ReadHold::Until(until) = Connection::read_hold(&h.device) else {
        panic!("not throttled: {:?}", Connection::read_hold(&h.device));
    };
    assert!(Connection::next_deadline(&h.device).is_some_and(|d| d <= until));
    assert_eq!(Metrics::get(&broker.metrics().rate_limited), 1);
    assert_eq!(h.published().len(), 2);
    // Once the pause is over, reads open again.
    h.advance(until - h.now);
    assert_eq!(Connection::read_hold(&h.device), ReadHold::Open);
}
