//! SEND and SUBSCRIBE mapped onto the core: destinations are topics (with
//! the mountpoint), custom headers are user properties, wildcards,
//! receipts, retained messages (STOMP 1.2 §SEND, §SUBSCRIBE, §MESSAGE).

mod support;

use std::time::Instant;

use support::*;
use tributary_core::QoS;
use tributary_stomp::{ChannelConfig, Command};

#[test]
fn send_reaches_a_core_subscriber_with_properties() {
    let b = broker();
    let t0 = Instant::now();
    let mqtt = Peer::new(&b, "mqtt-sub", t0);
    mqtt.subscribe("sensors/#", QoS::AtLeastOnce, t0);
    let mut c = Client::new(&b, config(), t0);
    c.connect12();
    let out = c.frames(f(
        Command::Send,
        &[
            ("destination", "sensors/t1"),
            ("content-type", "application/json"),
            ("x-unit", "celsius"),
            ("receipt", "s1"),
        ],
        b"{\"t\":21}",
    ));
    assert_eq!(out, vec![receipt("s1")]);
    let got = mqtt.received(t0);
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(&*m.topic, "sensors/t1");
    assert_eq!(&m.payload[..], b"{\"t\":21}");
    assert_eq!(m.qos, QoS::AtMostOnce, "SEND QoS defaults to 0 as EMQX");
    assert_eq!(
        m.properties.content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(
        m.properties.user_properties,
        vec![("x-unit".to_string(), "celsius".to_string())]
    );
    assert_eq!(
        m.publisher.as_deref().map(|p| p.starts_with("stomp-")),
        Some(true)
    );
}

#[test]
fn send_qos_and_mountpoint_come_from_config() {
    let b = broker();
    let t0 = Instant::now();
    let mqtt = Peer::new(&b, "m", t0);
    mqtt.subscribe("#", QoS::AtLeastOnce, t0);
    let cfg = ChannelConfig {
        mountpoint: "stomp/".into(),
        send_qos: QoS::AtLeastOnce,
        ..config()
    };
    let mut c = Client::new(&b, cfg, t0);
    c.connect12();
    c.send(f(Command::Send, &[("destination", "a/b")], b"x"));
    let got = mqtt.received(t0);
    assert_eq!(&*got[0].topic, "stomp/a/b");
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
}

#[test]
fn subscribe_with_wildcards_gets_message_frames() {
    let b = broker();
    let t0 = Instant::now();
    let cfg = ChannelConfig {
        mountpoint: "stomp/".into(),
        ..config()
    };
    let mut c = Client::new(&b, cfg, t0);
    c.connect12();
    assert_eq!(c.subscribe("0", "a/+/c", "auto"), vec![receipt("r-sub")]);
    let mqtt = Peer::new(&b, "m", t0);
    let mut m = tributary_core::Message::new(
        "stomp/a/b/c",
        bytes::Bytes::from_static(b"hi\0there"),
        QoS::AtMostOnce,
        false,
    );
    m.properties.content_type = Some("text/plain".into());
    m.properties.user_properties = vec![("k".into(), "v:1".into())];
    b.publish(m, t0);
    mqtt.publish("stomp/a/b/d", b"no", t0);
    let out = c.wake();
    assert_eq!(out.len(), 1, "{out:?}");
    let msg = &out[0];
    assert_eq!(msg.command, Command::Message);
    assert_eq!(msg.header("subscription"), Some("0"));
    assert_eq!(msg.header("destination"), Some("a/b/c"));
    assert_eq!(msg.header("message-id"), Some("1"));
    assert_eq!(msg.header("content-type"), Some("text/plain"));
    assert_eq!(msg.header("content-length"), Some("8"));
    assert_eq!(msg.header("ack"), None, "auto mode has no ack header");
    assert_eq!(msg.header("k"), Some("v:1"));
    assert_eq!(&msg.body[..], b"hi\0there");
}

#[test]
fn every_subscription_on_a_destination_gets_its_copy() {
    let b = broker();
    let t0 = Instant::now();
    let mut c = Client::new(&b, config(), t0);
    c.connect12();
    c.subscribe("s1", "t/x", "auto");
    c.subscribe("s2", "t/x", "auto");
    c.subscribe("s3", "t/#", "auto");
    Peer::new(&b, "m", t0).publish("t/x", b"1", t0);
    let mut subs: Vec<_> = c
        .wake()
        .iter()
        .map(|m| m.header("subscription").map(str::to_owned))
        .collect();
    subs.sort();
    assert_eq!(
        subs,
        vec![Some("s1".into()), Some("s2".into()), Some("s3".into())]
    );
    // Unsubscribing one sharer keeps the others.
    c.frames(f(Command::Unsubscribe, &[("id", "s1")], b""));
    Peer::new(&b, "m2", t0).publish("t/x", b"2", t0);
    let mut subs: Vec<_> = c
        .wake()
        .iter()
        .map(|m| m.header("subscription").map(str::to_owned))
        .collect();
    subs.sort();
    assert_eq!(subs, vec![Some("s2".into()), Some("s3".into())]);
}

#[test]
fn unsubscribe_stops_deliveries_with_receipt() {
    let b = broker();
    let t0 = Instant::now();
    let mut c = Client::new(&b, config(), t0);
    c.connect12();
    c.subscribe("0", "q", "auto");
    let out = c.frames(f(
        Command::Unsubscribe,
        &[("id", "0"), ("receipt", "u")],
        b"",
    ));
    assert_eq!(out, vec![receipt("u")]);
    assert_eq!(Peer::new(&b, "m", t0).publish("q", b"x", t0), 0);
    assert!(c.wake().is_empty());
}

#[test]
fn stomp_to_stomp_through_the_core() {
    let b = broker();
    let t0 = Instant::now();
    let mut sub = Client::new(&b, config(), t0);
    sub.connect(Some("1.1"), &[]);
    sub.subscribe("1", "/topic/chat", "auto");
    let mut publ = Client::new(&b, config(), t0);
    publ.connect(None, &[]);
    publ.send(f(
        Command::Send,
        &[("destination", "/topic/chat")],
        b"hello",
    ));
    let out = sub.wake();
    assert_eq!(out[0].header("destination"), Some("/topic/chat"));
    assert_eq!(&out[0].body[..], b"hello");
}

#[test]
fn retained_only_when_asked() {
    let b = broker();
    let t0 = Instant::now();
    Peer::new(&b, "m", t0).publish_retained("r/1", b"old", t0);
    let mut c = Client::new(&b, config(), t0);
    c.connect12();
    c.subscribe("plain", "r/#", "auto");
    assert!(c.wake().is_empty());
    let out = c.frames(f(
        Command::Subscribe,
        &[("id", "ret"), ("destination", "r/1"), ("retain", "true")],
        b"",
    ));
    let all: Vec<_> = out.into_iter().chain(c.wake()).collect();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].header("subscription"), Some("ret"));
    assert_eq!(all[0].header("retain"), Some("true"));
    assert_eq!(&all[0].body[..], b"old");
}

#[test]
fn retained_on_subscribe_by_config() {
    let b = broker();
    let t0 = Instant::now();
    Peer::new(&b, "m", t0).publish_retained("r/1", b"old", t0);
    let cfg = ChannelConfig {
        retained_on_subscribe: true,
        ..config()
    };
    let mut c = Client::new(&b, cfg, t0);
    c.connect12();
    let out: Vec<_> = c
        .subscribe("a", "r/+", "auto")
        .into_iter()
        .chain(c.wake())
        .collect();
    assert_eq!(
        out[0],
        receipt("r-sub"),
        "RECEIPT comes before the retained MESSAGE"
    );
    assert_eq!(&out[1].body[..], b"old");
}

#[test]
fn one_zero_subscribe_without_id_uses_the_destination() {
    let b = broker();
    let t0 = Instant::now();
    let mut c = Client::new(&b, config(), t0);
    c.connect(None, &[]);
    c.frames(f(Command::Subscribe, &[("destination", "d")], b""));
    Peer::new(&b, "m", t0).publish("d", b"x", t0);
    let out = c.wake();
    assert_eq!(out[0].header("subscription"), Some("d"));
    c.frames(f(Command::Unsubscribe, &[("destination", "d")], b""));
    assert_eq!(Peer::new(&b, "m2", t0).publish("d", b"x", t0), 0);
}

#[test]
fn header_escaping_survives_the_trip() {
    let b = broker();
    let t0 = Instant::now();
    let mqtt = Peer::new(&b, "m", t0);
    mqtt.subscribe("e", QoS::AtMostOnce, t0);
    let mut c = Client::new(&b, config(), t0);
    c.connect12();
    c.subscribe("0", "e", "auto");
    c.send(f(
        Command::Send,
        &[("destination", "e"), ("we:ird", "a\nb\\c\r")],
        b"",
    ));
    let got = mqtt.received(t0);
    assert_eq!(
        got[0].properties.user_properties,
        vec![("we:ird".to_string(), "a\nb\\c\r".to_string())]
    );
    let out = c.wake();
    assert_eq!(out[0].header("we:ird"), Some("a\nb\\c\r"));
}
