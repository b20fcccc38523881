//! The EMQX-compatible resources: `/ps` publish and read, query
//! parameters, QoS policies, content formats, mountpoint, ACL,
//! `/mqtt/connection` and `/.well-known/core`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;
use tributary_coap::msg::opt;
use tributary_coap::{ChannelConfig, Code, MessageType, QosPolicy};
use tributary_core::auth::{AclRule, AllowAll, Permission, RuleAction, RuleAuthorizer, Who};
use tributary_core::cluster::SingleNode;
use tributary_core::connection::Limit;
use tributary_core::storage::MemoryPersistence;
use tributary_core::{Broker, BrokerConfig, QoS};

#[test]
fn publish_carries_qos_retain_expiry_and_content_format() {
    let mut p = Peer::new(ChannelConfig::default());
    let sub = Subscriber::new(&p.broker, "s", "a/#", QoS::ExactlyOnce);
    let r = p.one(
        &con(Code::POST, "ps/a/b?qos=2&retain=true&expiry=60")
            .uint(opt::CONTENT_FORMAT, 50)
            .payload("{\"t\":1}"),
    );
    assert_eq!((r.mtype, r.code), (MessageType::Ack, Code::CHANGED));
    let got = sub.take(p.now);
    assert_eq!(got.len(), 1);
    let m = &got[0].message;
    assert_eq!(&*m.topic, "a/b");
    assert_eq!(m.qos, QoS::ExactlyOnce);
    assert!(m.retain);
    assert_eq!(m.remaining_expiry(p.now), Some(60));
    assert_eq!(
        m.properties.content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(m.properties.payload_format_indicator, Some(1));
    assert_eq!(m.publisher.as_deref(), Some("coap-192.0.2.7:40000"));
    assert!(p.broker.retained("a/b", p.now).is_some());
}

#[test]
fn put_publishes_and_short_names_work() {
    let mut p = Peer::new(ChannelConfig::default());
    let sub = Subscriber::new(&p.broker, "s", "#", QoS::ExactlyOnce);
    let r = p.one(&non(Code::PUT, "ps/x/y?q=1&r=1&c=dev9").payload("v"));
    assert_eq!((r.mtype, r.code), (MessageType::Non, Code::CHANGED));
    let got = sub.take(p.now);
    assert_eq!(got[0].message.qos, QoS::AtLeastOnce);
    assert!(got[0].message.retain);
    assert_eq!(got[0].message.publisher.as_deref(), Some("dev9"));
}

#[test]
fn qos_policy_coap_follows_message_type() {
    let mut p = Peer::new(ChannelConfig::default());
    let sub = Subscriber::new(&p.broker, "s", "#", QoS::ExactlyOnce);
    p.one(&con(Code::POST, "ps/c").payload("c"));
    p.one(&non(Code::POST, "ps/n").mid(2).payload("n"));
    let got = sub.take(p.now);
    assert_eq!(got[0].message.qos, QoS::AtLeastOnce);
    assert_eq!(got[1].message.qos, QoS::AtMostOnce);

    let mut p = Peer::new(ChannelConfig {
        publish_qos: QosPolicy::Fixed(QoS::ExactlyOnce),
        ..ChannelConfig::default()
    });
    let sub = Subscriber::new(&p.broker, "s", "#", QoS::ExactlyOnce);
    p.one(&non(Code::POST, "ps/n").payload("n"));
    assert_eq!(sub.take(p.now)[0].message.qos, QoS::ExactlyOnce);
}

#[test]
fn bad_requests() {
    let mut p = Peer::new(ChannelConfig::default());
    for (i, uri) in [
        "ps?qos=1",
        "ps/a?qos=7",
        "ps/a?retain=maybe",
        "ps/a/+",
        "ps/a?expiry=-1",
    ]
    .iter()
    .enumerate()
    {
        let r = p.one(&con(Code::POST, uri).mid(i as u16).payload("x"));
        assert_eq!(r.code, Code::BAD_REQUEST, "{uri}");
        assert!(!r.payload.is_empty(), "diagnostic payload");
    }
    assert_eq!(
        p.one(&con(Code::GET, "nothing/here").mid(20)).code,
        Code::NOT_FOUND
    );
    assert_eq!(
        p.one(&con(Code::DELETE, "ps/a").mid(21)).code,
        Code::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        p.one(&con(Code::GET, "ps/a/#").mid(22)).code,
        Code::BAD_REQUEST
    );
}

#[test]
fn plain_get_returns_retained_or_not_found() {
    let mut p = Peer::new(ChannelConfig::default());
    assert_eq!(p.one(&con(Code::GET, "ps/r")).code, Code::NOT_FOUND);
    p.one(
        &con(Code::POST, "ps/r?retain=true")
            .mid(2)
            .uint(opt::CONTENT_FORMAT, 0)
            .payload("hello"),
    );
    let r = p.one(&con(Code::GET, "ps/r").mid(3));
    assert_eq!(r.code, Code::CONTENT);
    assert_eq!(&r.payload[..], b"hello");
    assert_eq!(r.content_format(), Some(0));
}

#[test]
fn percent_encoded_topic_segments_are_decoded() {
    let mut p = Peer::new(ChannelConfig::default());
    let sub = Subscriber::new(&p.broker, "s", "#", QoS::AtMostOnce);
    p.one(&con(Code::POST, "ps/a%20b/c").payload("x"));
    assert_eq!(&*sub.take(p.now)[0].message.topic, "a b/c");
}

#[test]
fn mountpoint_is_added_and_hidden() {
    let mut p = Peer::new(ChannelConfig {
        mountpoint: "coap/${clientid}/".into(),
        ..ChannelConfig::default()
    });
    let sub = Subscriber::new(&p.broker, "s", "#", QoS::AtMostOnce);
    p.one(&con(Code::POST, "ps/t?clientid=d1").payload("x"));
    assert_eq!(&*sub.take(p.now)[0].message.topic, "coap/d1/t");
    let r = p.one(
        &con(Code::GET, "ps/t?clientid=d1")
            .mid(2)
            .token(&[1])
            .observe(0),
    );
    assert_eq!(r.code, Code::CONTENT);
    p.publish("coap/d1/t", "in", QoS::AtMostOnce, false);
    let n = p.wake();
    assert_eq!(&n[0].payload[..], b"in");
}

#[test]
fn acl_denies_with_forbidden() {
    let authz = RuleAuthorizer {
        rules: vec![AclRule {
            permission: Permission::Deny,
            who: vec![Who::All],
            action: RuleAction::All,
            topics: vec!["secret/#".into()],
        }],
        no_match: Permission::Allow,
    };
    let broker = Arc::new(Broker::with_seams(
        BrokerConfig::default(),
        Box::new(AllowAll),
        Box::new(authz),
        Box::new(MemoryPersistence),
        Box::new(SingleNode),
    ));
    let mut p = Peer::with_broker(broker, ChannelConfig::default());
    assert_eq!(
        p.one(&con(Code::POST, "ps/secret/x").payload("x")).code,
        Code::FORBIDDEN
    );
    assert_eq!(
        p.one(&con(Code::GET, "ps/secret/#").mid(2).observe(0)).code,
        Code::FORBIDDEN
    );
    assert_eq!(
        p.one(&con(Code::POST, "ps/open").mid(3).payload("x")).code,
        Code::CHANGED
    );
}

#[test]
fn connection_mode_lifecycle() {
    let mut p = Peer::new(ChannelConfig {
        connection_required: true,
        heartbeat: Duration::from_secs(10),
        ..ChannelConfig::default()
    });
    let sub = Subscriber::new(&p.broker, "s", "#", QoS::AtMostOnce);
    // Without a connection: 4.01.
    assert_eq!(
        p.one(&con(Code::POST, "ps/t").payload("x")).code,
        Code::UNAUTHORIZED
    );
    // Create.
    let r = p.one(
        &con(
            Code::POST,
            "mqtt/connection?clientid=dev1&username=u&password=p",
        )
        .mid(2),
    );
    assert_eq!(r.code, Code::CREATED);
    let token = String::from_utf8(r.payload.to_vec()).expect("token");
    assert!(!token.is_empty());
    assert!(p.channel.is_connected());
    // Publish with the wrong token, then the right one (short names).
    assert_eq!(
        p.one(&con(Code::POST, "ps/t?c=dev1&t=nope").mid(3).payload("x"))
            .code,
        Code::UNAUTHORIZED
    );
    let ok = format!("ps/t?c=dev1&t={token}");
    assert_eq!(
        p.one(&con(Code::POST, &ok).mid(4).payload("x")).code,
        Code::CHANGED
    );
    assert_eq!(
        sub.take(p.now)[0].message.publisher.as_deref(),
        Some("dev1")
    );
    // Heartbeat keeps it alive past 1.5 × heartbeat.
    p.advance(Duration::from_secs(12));
    let hb = format!("mqtt/connection?clientid=dev1&token={token}");
    assert_eq!(p.one(&con(Code::PUT, &hb).mid(5)).code, Code::CHANGED);
    p.advance(Duration::from_secs(12));
    assert!(p.channel.is_connected());
    // Close.
    assert_eq!(p.one(&con(Code::DELETE, &hb).mid(6)).code, Code::DELETED);
    assert!(!p.channel.is_connected());
    assert_eq!(
        p.one(&con(Code::POST, &ok).mid(7).payload("x")).code,
        Code::UNAUTHORIZED
    );
}

#[test]
fn connection_expires_without_heartbeat() {
    let mut p = Peer::new(ChannelConfig {
        heartbeat: Duration::from_secs(10),
        ..ChannelConfig::default()
    });
    let r = p.one(&con(Code::POST, "mqtt/connection?c=dev2"));
    assert_eq!(r.code, Code::CREATED);
    let token = String::from_utf8(r.payload.to_vec()).expect("token");
    let obs = format!("ps/x?c=dev2&t={token}");
    assert_eq!(
        p.one(&con(Code::GET, &obs).mid(2).token(&[1]).observe(0))
            .code,
        Code::CONTENT
    );
    assert_eq!(p.broker.session_count(), 1);
    // Still inside 1.5 × heartbeat: nothing trips.
    p.advance(Duration::from_secs(14));
    assert!(p.channel.is_connected());
    assert!(p.limits.is_empty());
    let out = p.advance(Duration::from_secs(2));
    assert_eq!(p.limits, vec![Limit::IdleTimeout]);
    assert!(!p.channel.is_connected());
    assert_eq!(p.channel.observer_count(), 0);
    assert_eq!(p.broker.session_count(), 0);
    assert_eq!(p.broker.subscription_list().len(), 0);
    // The observer was told its observation ended.
    assert!(
        out.iter()
            .any(|m| m.code == Code::SERVICE_UNAVAILABLE && m.token.as_bytes() == [1]),
        "{out:?}"
    );
}

#[test]
fn connection_needs_clientid() {
    let mut p = Peer::new(ChannelConfig::default());
    assert_eq!(
        p.one(&con(Code::POST, "mqtt/connection")).code,
        Code::BAD_REQUEST
    );
    assert_eq!(
        p.one(&con(Code::PUT, "mqtt/connection?c=x&t=y").mid(2))
            .code,
        Code::UNAUTHORIZED
    );
}

#[test]
fn well_known_core_is_link_format() {
    let mut p = Peer::new(ChannelConfig::default());
    let r = p.one(&con(Code::GET, ".well-known/core"));
    assert_eq!(r.code, Code::CONTENT);
    assert_eq!(r.content_format(), Some(40));
    let text = String::from_utf8(r.payload.to_vec()).expect("utf-8");
    assert!(text.contains("</ps>"), "{text}");
    assert!(text.contains("</mqtt/connection>"), "{text}");
}

#[test]
fn idle_after_the_exchange_lifetime() {
    let mut p = Peer::new(ChannelConfig::default());
    p.one(&con(Code::POST, "ps/t").payload("x"));
    assert!(!p.channel.is_idle(), "the exchange is remembered for dedup");
    p.advance(Duration::from_secs(248));
    assert!(p.channel.is_idle());
}
