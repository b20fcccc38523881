//! Transactions: BEGIN / COMMIT / ABORT buffer SEND, ACK and NACK
//! (STOMP 1.2 §BEGIN, §COMMIT, §ABORT).

mod support;

use std::time::Instant;

use support::*;
use tributary_core::QoS;
use tributary_stomp::{ChannelConfig, Command};

#[test]
fn sends_are_published_on_commit_only() {
    let b = broker();
    let t0 = Instant::now();
    let mqtt = Peer::new(&b, "m", t0);
    mqtt.subscribe("t", QoS::AtMostOnce, t0);
    let mut c = Client::new(&b, config(), t0);
    c.connect12();
    assert_eq!(
        c.frames(f(
            Command::Begin,
            &[("transaction", "tx1"), ("receipt", "b")],
            b""
        )),
        vec![receipt("b")]
    );
    for body in [&b"1"[..], b"2"] {
        c.send(f(
            Command::Send,
            &[("destination", "t"), ("transaction", "tx1")],
            body,
        ));
    }
    assert!(mqtt.received(t0).is_empty());
    assert_eq!(
        c.frames(f(
            Command::Commit,
            &[("transaction", "tx1"), ("receipt", "c")],
            b""
        )),
        vec![receipt("c")]
    );
    let got: Vec<_> = mqtt
        .received(t0)
        .iter()
        .map(|m| m.payload.clone())
        .collect();
    assert_eq!(got, vec![&b"1"[..], b"2"]);
}

#[test]
fn abort_discards() {
    let b = broker();
    let t0 = Instant::now();
    let mqtt = Peer::new(&b, "m", t0);
    mqtt.subscribe("t", QoS::AtMostOnce, t0);
    let mut c = Client::new(&b, config(), t0);
    c.connect12();
    c.send(f(Command::Begin, &[("transaction", "x")], b""));
    c.send(f(
        Command::Send,
        &[("destination", "t"), ("transaction", "x")],
        b"1",
    ));
    c.send(f(Command::Abort, &[("transaction", "x")], b""));
    assert!(mqtt.received(t0).is_empty());
    // The transaction is gone.
    let out = c.frames(f(Command::Commit, &[("transaction", "x")], b""));
    assert_eq!(out[0].command, Command::Error);
}

#[test]
fn acks_in_a_transaction_apply_on_commit() {
    let b = broker();
    let t0 = Instant::now();
    let cfg = ChannelConfig {
        subscribe_qos: QoS::AtLeastOnce,
        max_inflight: 1,
        ..config()
    };
    let mut c = Client::new(&b, cfg, t0);
    c.connect12();
    c.subscribe("0", "q", "client-individual");
    let p = Peer::new(&b, "p", t0);
    p.publish("q", b"a", t0);
    p.publish("q", b"b", t0);
    assert_eq!(c.wake().len(), 1);
    c.send(f(Command::Begin, &[("transaction", "t")], b""));
    assert!(c
        .frames(f(Command::Ack, &[("id", "1"), ("transaction", "t")], b""))
        .is_empty());
    let out = c.frames(f(Command::Commit, &[("transaction", "t")], b""));
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0].body[..], b"b");
}

#[test]
fn unknown_or_duplicate_transactions_are_errors() {
    let b = broker();
    let t0 = Instant::now();
    let mut c = Client::new(&b, config(), t0);
    c.connect12();
    let out = c.frames(f(
        Command::Send,
        &[("destination", "t"), ("transaction", "nope")],
        b"",
    ));
    assert_eq!(out[0].command, Command::Error);
    assert_eq!(out[0].header("message"), Some("unknown transaction"));

    let mut c = Client::new(&b, config(), t0);
    c.connect12();
    c.send(f(Command::Begin, &[("transaction", "t")], b""));
    let out = c.frames(f(Command::Begin, &[("transaction", "t")], b""));
    assert_eq!(out[0].command, Command::Error);

    let mut c = Client::new(&b, config(), t0);
    c.connect12();
    let out = c.frames(f(Command::Begin, &[], b""));
    assert_eq!(out[0].command, Command::Error);
}

#[test]
fn transaction_size_is_bounded() {
    let b = broker();
    let t0 = Instant::now();
    let cfg = ChannelConfig {
        max_transaction_frames: 2,
        ..config()
    };
    let mut c = Client::new(&b, cfg, t0);
    c.connect12();
    c.send(f(Command::Begin, &[("transaction", "t")], b""));
    for _ in 0..2 {
        assert!(c
            .frames(f(
                Command::Send,
                &[("destination", "a"), ("transaction", "t")],
                b""
            ))
            .is_empty());
    }
    let out = c.frames(f(
        Command::Send,
        &[("destination", "a"), ("transaction", "t")],
        b"",
    ));
    assert_eq!(out[0].header("message"), Some("transaction too large"));
}
