//! Violations: an ERROR frame with a `message` header (and the offending
//! frame's `receipt-id`), then the connection closes.

mod support;

use std::time::Instant;

use support::*;
use tributary_stomp::{ChannelConfig, Command, Limits};

fn error_after(frame: tributary_stomp::Frame) -> tributary_stomp::Frame {
    let b = broker();
    let mut c = Client::new(&b, config(), Instant::now());
    c.connect12();
    let out = c.frames(frame);
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(c.channel.is_closed());
    out.into_iter().next().expect("ERROR")
}

#[test]
fn send_without_destination() {
    let e = error_after(f(Command::Send, &[("receipt", "r9")], b"x"));
    assert_eq!(e.command, Command::Error);
    assert_eq!(e.header("message"), Some("missing destination"));
    assert_eq!(e.header("receipt-id"), Some("r9"));
    assert_eq!(e.header("content-type"), Some("text/plain"));
    assert_eq!(
        e.header("content-length"),
        Some(e.body.len().to_string().as_str())
    );
}

#[test]
fn send_to_a_wildcard() {
    let e = error_after(f(Command::Send, &[("destination", "a/#")], b"x"));
    assert_eq!(e.header("message"), Some("invalid destination"));
}

#[test]
fn subscribe_problems() {
    let e = error_after(f(Command::Subscribe, &[("destination", "a")], b""));
    assert_eq!(e.header("message"), Some("missing id"));
    let e = error_after(f(
        Command::Subscribe,
        &[("id", "1"), ("destination", "a/#/b")],
        b"",
    ));
    assert_eq!(e.header("message"), Some("invalid destination"));
    let e = error_after(f(
        Command::Subscribe,
        &[("id", "1"), ("destination", "a"), ("ack", "sometimes")],
        b"",
    ));
    assert_eq!(e.header("message"), Some("invalid ack mode"));
}

#[test]
fn duplicate_subscription_id() {
    let b = broker();
    let mut c = Client::new(&b, config(), Instant::now());
    c.connect12();
    c.subscribe("1", "a", "auto");
    let out = c.subscribe("1", "b", "auto");
    assert_eq!(out[0].header("message"), Some("duplicate subscription id"));
    assert!(c.channel.is_closed());
}

#[test]
fn server_frames_from_a_client() {
    let e = error_after(f(Command::Message, &[], b""));
    assert_eq!(e.header("message"), Some("unexpected frame"));
}

#[test]
fn malformed_bytes() {
    let b = broker();
    let mut c = Client::new(&b, config(), Instant::now());
    c.connect12();
    let out = only_frames(c.feed(b"SEND\ndestination:a\nbad\\q:x\n\n\0"));
    assert_eq!(out[0].command, Command::Error);
    assert_eq!(out[0].header("message"), Some("malformed frame"));
    assert!(c.channel.is_closed());
    assert_eq!(
        tributary_core::metrics::Metrics::get(&b.metrics().packets_malformed),
        1
    );
}

#[test]
fn frame_limits_from_config() {
    let b = broker();
    let cfg = ChannelConfig {
        limits: Limits {
            max_headers: 2,
            max_header_length: 64,
            max_body_length: 4,
        },
        ..config()
    };
    let mut c = Client::new(&b, cfg, Instant::now());
    c.connect12();
    let out = only_frames(c.feed(b"SEND\ndestination:a\n\n12345\0"));
    assert_eq!(out[0].command, Command::Error);
    assert!(String::from_utf8_lossy(&out[0].body).contains("body longer than 4"));
}

#[test]
fn subscription_count_is_bounded() {
    let b = broker();
    let cfg = ChannelConfig {
        max_subscriptions: 1,
        ..config()
    };
    let mut c = Client::new(&b, cfg, Instant::now());
    c.connect12();
    c.subscribe("1", "a", "auto");
    let out = c.subscribe("2", "b", "auto");
    assert_eq!(out[0].header("message"), Some("too many subscriptions"));
}

#[test]
fn shutdown_sends_error() {
    let b = broker();
    let mut c = Client::new(&b, config(), Instant::now());
    c.connect12();
    c.channel.shutdown();
    let out = only_frames(c.out());
    assert_eq!(out[0].header("message"), Some("server shutting down"));
    assert!(c.channel.is_closed());
}
