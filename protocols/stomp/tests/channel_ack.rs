//! Ack modes, NACK, the inflight window and unacknowledged messages on
//! disconnect (STOMP 1.2 §SUBSCRIBE "ack Header", §ACK, §NACK).

mod support;

use std::time::Instant;

use support::*;
use tributary_core::QoS;
use tributary_stomp::{ChannelConfig, Command, Frame, UnackedPolicy};

fn qos1() -> ChannelConfig {
    ChannelConfig {
        subscribe_qos: QoS::AtLeastOnce,
        max_inflight: 3,
        ..config()
    }
}

fn ids(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f.command == Command::Message)
        .map(|f| String::from_utf8_lossy(&f.body).into_owned())
        .collect()
}

fn publish_n(b: &std::sync::Arc<tributary_core::Broker>, topic: &str, n: usize, t0: Instant) {
    let p = Peer::new(b, "publisher", t0);
    for i in 0..n {
        p.publish(topic, i.to_string().as_bytes(), t0);
    }
}

#[test]
fn client_mode_is_cumulative_and_bounded_by_the_window() {
    let b = broker();
    let t0 = Instant::now();
    let mut c = Client::new(&b, qos1(), t0);
    c.connect12();
    c.subscribe("0", "q", "client");
    publish_n(&b, "q", 5, t0);
    let first = c.wake();
    assert_eq!(ids(&first), ["0", "1", "2"], "window of 3");
    assert_eq!(first[2].header("ack"), Some("3"));
    // ACK of the third acknowledges the first two as well.
    let out = c.frames(f(Command::Ack, &[("id", "3"), ("receipt", "a")], b""));
    assert_eq!(out[0], receipt("a"));
    assert_eq!(ids(&out), ["3", "4"]);
}

#[test]
fn client_individual_acks_one_message() {
    let b = broker();
    let t0 = Instant::now();
    let mut c = Client::new(&b, qos1(), t0);
    c.connect12();
    c.subscribe("0", "q", "client-individual");
    publish_n(&b, "q", 4, t0);
    assert_eq!(ids(&c.wake()), ["0", "1", "2"]);
    // Acknowledging the last frees exactly one slot.
    assert_eq!(ids(&c.frames(f(Command::Ack, &[("id", "3")], b""))), ["3"]);
    assert!(ids(&c.frames(f(Command::Ack, &[("id", "3")], b""))).is_empty());
    let handle_inflight = b.session_count();
    assert_eq!(handle_inflight, 2);
}

#[test]
fn nack_completes_the_delivery_too() {
    let b = broker();
    let t0 = Instant::now();
    let mut c = Client::new(&b, qos1(), t0);
    c.connect12();
    c.subscribe("0", "q", "client-individual");
    publish_n(&b, "q", 4, t0);
    c.wake();
    assert_eq!(ids(&c.frames(f(Command::Nack, &[("id", "1")], b""))), ["3"]);
}

#[test]
fn one_one_acks_use_message_id_and_subscription() {
    let b = broker();
    let t0 = Instant::now();
    let mut c = Client::new(&b, qos1(), t0);
    c.connect(Some("1.1"), &[]);
    c.subscribe("s", "q", "client");
    publish_n(&b, "q", 4, t0);
    let out = c.wake();
    assert_eq!(out[0].header("ack"), None, "1.1 has no ack header");
    let mid = out[2].header("message-id").expect("message-id").to_owned();
    let out = c.frames(f(
        Command::Ack,
        &[("message-id", &mid), ("subscription", "s")],
        b"",
    ));
    assert_eq!(ids(&out), ["3"]);
}

#[test]
fn auto_mode_never_waits() {
    let b = broker();
    let t0 = Instant::now();
    let mut c = Client::new(&b, qos1(), t0);
    c.connect12();
    c.subscribe("0", "q", "auto");
    publish_n(&b, "q", 10, t0);
    assert_eq!(ids(&c.wake()).len(), 10);
}

#[test]
fn ack_without_id_is_an_error() {
    let b = broker();
    let mut c = Client::new(&b, qos1(), Instant::now());
    c.connect12();
    let out = c.frames(f(Command::Ack, &[], b""));
    assert_eq!(out[0].command, Command::Error);
}

#[test]
fn unacked_are_redelivered_to_the_same_client_id() {
    let b = broker();
    let t0 = Instant::now();
    let mut c = Client::new(&b, qos1(), t0);
    c.connect(Some("1.2"), &[("client-id", "dur")]);
    c.subscribe("0", "q", "client-individual");
    publish_n(&b, "q", 2, t0);
    assert_eq!(ids(&c.wake()), ["0", "1"]);
    c.frames(f(Command::Ack, &[("id", "1")], b""));
    c.finish();
    // Nothing new is queued for the session while it is offline.
    publish_n(&b, "q", 1, t0);
    let mut again = Client::new(&b, qos1(), t0);
    again.connect(Some("1.2"), &[("client-id", "dur")]);
    let out = again.subscribe("n", "q", "client-individual");
    let msgs: Vec<_> = out
        .iter()
        .filter(|f| f.command == Command::Message)
        .collect();
    assert_eq!(msgs.len(), 1, "{out:?}");
    assert_eq!(&msgs[0].body[..], b"1");
    assert_eq!(msgs[0].header("redelivered"), Some("true"));
    assert_eq!(msgs[0].header("subscription"), Some("n"));
}

#[test]
fn unacked_are_dropped_by_policy() {
    let b = broker();
    let t0 = Instant::now();
    let cfg = ChannelConfig {
        unacked_on_disconnect: UnackedPolicy::Drop,
        ..qos1()
    };
    let mut c = Client::new(&b, cfg.clone(), t0);
    c.connect(Some("1.2"), &[("client-id", "dur")]);
    c.subscribe("0", "q", "client");
    publish_n(&b, "q", 2, t0);
    assert_eq!(ids(&c.wake()).len(), 2);
    c.finish();
    let mut again = Client::new(&b, cfg, t0);
    again.connect(Some("1.2"), &[("client-id", "dur")]);
    let out = again.subscribe("n", "q", "client");
    assert!(ids(&out).is_empty());
    assert!(ids(&again.wake()).is_empty());
}

#[test]
fn shared_subscription_unacked_go_to_another_member() {
    let b = broker();
    let t0 = Instant::now();
    let mut a = Client::new(&b, qos1(), t0);
    a.connect12();
    a.subscribe("0", "$share/g/jobs", "client-individual");
    let mut other = Client::new(&b, qos1(), t0);
    other.connect12();
    other.subscribe("0", "$share/g/jobs", "client-individual");
    publish_n(&b, "jobs", 2, t0);
    let got_a = ids(&a.wake());
    let got_o = ids(&other.wake());
    assert_eq!(got_a.len() + got_o.len(), 2);
    // `a` leaves without acknowledging: its message goes to `other`.
    a.finish();
    let after = ids(&other.wake());
    let mut all: Vec<_> = got_o.into_iter().chain(after).collect();
    all.sort();
    assert_eq!(all, ["0", "1"]);
}
