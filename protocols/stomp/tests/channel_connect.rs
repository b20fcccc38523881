//! CONNECT / STOMP: version negotiation, heart-beating, authentication,
//! the connect timeout (STOMP 1.2 §"Connecting", §"Heart-beating").

mod support;

use std::time::{Duration, Instant};

use support::*;
use tributary_stomp::{ChannelConfig, Command, Output, Version};

#[test]
fn highest_common_version_is_chosen() {
    let b = broker();
    for (accept, want) in [
        ("1.0,1.1,1.2", "1.2"),
        ("1.1", "1.1"),
        ("1.0,1.1", "1.1"),
        ("1.2,9.9", "1.2"),
    ] {
        let mut c = Client::new(&b, config(), Instant::now());
        let connected = c.connect(Some(accept), &[]);
        assert_eq!(connected.command, Command::Connected);
        assert_eq!(connected.header("version"), Some(want), "{accept}");
        assert!(connected
            .header("server")
            .is_some_and(|s| s.starts_with("Tributary/")));
        assert!(connected.header("session").is_some());
    }
}

#[test]
fn no_accept_version_means_1_0() {
    let b = broker();
    let mut c = Client::new(&b, config(), Instant::now());
    let connected = c.connect(None, &[]);
    assert_eq!(connected.command, Command::Connected);
    assert_eq!(connected.header("version"), None);
    assert_eq!(c.channel.version(), Version::V1_0);
}

#[test]
fn stomp_frame_connects_too() {
    let b = broker();
    let mut c = Client::new(&b, config(), Instant::now());
    let out = c.frames(f(
        Command::Stomp,
        &[("accept-version", "1.2"), ("host", "h")],
        b"",
    ));
    assert_eq!(out[0].command, Command::Connected);
}

#[test]
fn unsupported_version_gets_error_with_supported_list() {
    let b = broker();
    let mut c = Client::new(&b, config(), Instant::now());
    let e = c.connect(Some("2.0,3.1"), &[]);
    assert_eq!(e.command, Command::Error);
    assert_eq!(e.header("version"), Some("1.0,1.1,1.2"));
    assert!(e.header("message").is_some());
    assert!(c.channel.is_closed());
}

#[test]
fn heart_beats_are_negotiated_both_ways() {
    let b = broker();
    let cfg = ChannelConfig {
        heartbeat_send: Duration::from_millis(4000),
        heartbeat_receive: Duration::from_millis(6000),
        ..config()
    };
    let t0 = Instant::now();
    let mut c = Client::new(&b, cfg, t0);
    // The client can send every 5 s and wants to hear every 3 s.
    let connected = c.connect(Some("1.2"), &[("heart-beat", "5000,3000")]);
    assert_eq!(connected.header("heart-beat"), Some("4000,6000"));
    // We send every max(4000, 3000) = 4 s when otherwise silent.
    assert_eq!(c.advance(Duration::from_millis(3999)), vec![]);
    assert_eq!(c.advance(Duration::from_millis(1)), vec![Output::HeartBeat]);
    // The client heart-beats every max(5000, 6000) = 6 s; grace 1.5 → 9 s.
    c.feed(b"\n");
    assert_eq!(
        c.advance(Duration::from_millis(4000)),
        vec![Output::HeartBeat]
    );
    c.feed(b"\n");
    assert_eq!(
        c.advance(Duration::from_millis(4000)),
        vec![Output::HeartBeat]
    );
    let out = only_frames(c.advance(Duration::from_millis(5000)));
    assert_eq!(out[0].command, Command::Error);
    assert_eq!(out[0].header("message"), Some("heart-beat timeout"));
    assert!(c.channel.is_closed());
}

#[test]
fn zero_heart_beat_on_either_side_disables_that_direction() {
    let b = broker();
    let cfg = ChannelConfig {
        heartbeat_send: Duration::from_secs(1),
        heartbeat_receive: Duration::from_secs(1),
        ..config()
    };
    let mut c = Client::new(&b, cfg, Instant::now());
    let connected = c.connect(Some("1.2"), &[("heart-beat", "0,0")]);
    assert_eq!(connected.header("heart-beat"), Some("1000,1000"));
    assert_eq!(c.deadline(), None);
    assert_eq!(c.advance(Duration::from_secs(3600)), vec![]);
    assert!(!c.channel.is_closed());
}

#[test]
fn invalid_heart_beat_header_is_an_error() {
    let b = broker();
    let mut c = Client::new(&b, config(), Instant::now());
    let e = c.connect(Some("1.2"), &[("heart-beat", "soon")]);
    assert_eq!(e.command, Command::Error);
    assert!(c.channel.is_closed());
}

#[test]
fn first_frame_must_be_connect() {
    let b = broker();
    let mut c = Client::new(&b, config(), Instant::now());
    let out = c.frames(f(
        Command::Send,
        &[("destination", "a"), ("receipt", "r1")],
        b"x",
    ));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].command, Command::Error);
    assert_eq!(out[0].header("receipt-id"), Some("r1"));
    assert!(c.channel.is_closed());
}

#[test]
fn login_goes_through_the_authenticator() {
    let b = strict_broker();
    let mut anon = Client::new(&b, config(), Instant::now());
    let e = anon.connect(Some("1.2"), &[]);
    assert_eq!(e.command, Command::Error);
    assert!(anon.channel.is_closed());
    let mut user = Client::new(&b, config(), Instant::now());
    let ok = user.connect(Some("1.2"), &[("login", "alice"), ("passcode", "secret")]);
    assert_eq!(ok.command, Command::Connected);
}

#[test]
fn connect_timeout_is_not_extended_by_trickled_bytes() {
    let b = broker();
    let t0 = Instant::now();
    let mut c = Client::new(&b, config(), t0);
    c.now += Duration::from_secs(5);
    c.feed(b"CONN");
    c.now += Duration::from_secs(4);
    c.feed(b"ECT\n");
    assert_eq!(c.deadline(), Some(t0 + Duration::from_secs(10)));
    c.advance(Duration::from_secs(1));
    assert!(c.channel.is_closed());
}

#[test]
fn second_connect_is_an_error() {
    let b = broker();
    let mut c = Client::new(&b, config(), Instant::now());
    c.connect12();
    let out = c.frames(f(Command::Connect, &[("accept-version", "1.2")], b""));
    assert_eq!(out[0].command, Command::Error);
    assert!(c.channel.is_closed());
}

#[test]
fn disconnect_with_receipt_then_close() {
    let b = broker();
    let mut c = Client::new(&b, config(), Instant::now());
    c.connect12();
    let out = c.frames(f(Command::Disconnect, &[("receipt", "77")], b""));
    assert_eq!(out, vec![receipt("77")]);
    assert!(c.channel.is_closed());
    c.finish();
    assert_eq!(b.session_count(), 0);
}

#[test]
fn client_id_header_names_the_session_and_takes_over() {
    let b = broker();
    let t0 = Instant::now();
    let mut first = Client::new(&b, config(), t0);
    let c1 = first.connect(Some("1.2"), &[("client-id", "web-1")]);
    assert_eq!(c1.header("session"), Some("web-1"));
    let mut second = Client::new(&b, config(), t0);
    second.connect(Some("1.2"), &[("client-id", "web-1")]);
    // The first connection is told and closed.
    let out = first.wake();
    assert_eq!(out[0].command, Command::Error);
    assert_eq!(out[0].header("message"), Some("session taken over"));
    assert!(first.channel.is_closed());
}
