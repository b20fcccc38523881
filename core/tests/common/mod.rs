//! Shared helpers for the broker scenario tests: build clients, open
//! sessions, publish, subscribe and drain a session's mailbox the way a
//! protocol channel would. Time is always passed in; nothing sleeps.
#![allow(dead_code)]

use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tributary_core::metrics::Metrics;
use tributary_core::session::{Overflow, QueueLimits};
use tributary_core::{
    Broker, BrokerConfig, ClientInfo, Message, OpenedSession, Outgoing, QoS, SessionHandle,
    SessionRequest, SubOptions, Will,
};

/// A large inflight window: nothing is held back by flow control.
pub const WIDE: usize = u16::MAX as usize;

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn broker() -> Broker {
    Broker::new(BrokerConfig::default())
}

pub fn broker_with_queue(max_len: usize, store_qos0: bool, overflow: Overflow) -> Broker {
    Broker::new(BrokerConfig {
        queue: QueueLimits {
            max_len,
            store_qos0,
            overflow,
            ..QueueLimits::default()
        },
        ..BrokerConfig::default()
    })
}

pub fn client(id: &str) -> ClientInfo {
    ClientInfo {
        client_id: id.into(),
        username: None,
        peer: None,
        protocol: "test",
    }
}

/// Open a session with full control over the request.
pub fn open(
    broker: &Broker,
    id: &str,
    clean_start: bool,
    expiry: u32,
    will: Option<Will>,
    now: Instant,
) -> OpenedSession {
    broker.open_session(
        SessionRequest {
            client: client(id),
            clean_start,
            expiry_interval: expiry,
            will,
        },
        now,
    )
}

/// A clean session that ends with its connection.
pub fn connect(broker: &Broker, id: &str, now: Instant) -> SessionHandle {
    open(broker, id, true, 0, None, now).handle
}

/// A clean session that outlives its connection by `expiry` seconds.
pub fn connect_persistent(broker: &Broker, id: &str, expiry: u32, now: Instant) -> SessionHandle {
    open(broker, id, true, expiry, None, now).handle
}

/// Everything sendable now within `window` inflight QoS 1/2 messages.
pub fn drain(
    broker: &Broker,
    handle: &SessionHandle,
    now: Instant,
    window: usize,
) -> Vec<Outgoing> {
    handle.take_for_send(now, usize::MAX, window, broker.metrics(), |_| true)
}

/// Everything sendable now, with no flow-control limit.
pub fn drain_all(broker: &Broker, handle: &SessionHandle, now: Instant) -> Vec<Outgoing> {
    drain(broker, handle, now, WIDE)
}

/// Payloads of `out`, as UTF-8 strings, in order.
pub fn payloads(out: &[Outgoing]) -> Vec<String> {
    out.iter()
        .map(|o| String::from_utf8(o.delivery.message.payload.to_vec()).expect("utf-8 payload"))
        .collect()
}

/// Topics of `out`, in order.
pub fn topics(out: &[Outgoing]) -> Vec<String> {
    out.iter()
        .map(|o| o.delivery.message.topic.to_string())
        .collect()
}

pub fn message(topic: &str, payload: &str, qos: QoS, retain: bool) -> Message {
    Message::new(
        topic,
        Bytes::copy_from_slice(payload.as_bytes()),
        qos,
        retain,
    )
}

/// Publish as the system (no publisher id). Returns the fan-out count.
pub fn publish(broker: &Broker, topic: &str, payload: &str, qos: QoS, now: Instant) -> usize {
    broker.publish(message(topic, payload, qos, false), now)
}

pub fn publish_retained(
    broker: &Broker,
    topic: &str,
    payload: &str,
    qos: QoS,
    now: Instant,
) -> usize {
    broker.publish(message(topic, payload, qos, true), now)
}

/// Publish as client `publisher`.
pub fn publish_from(
    broker: &Broker,
    publisher: &str,
    topic: &str,
    payload: &str,
    qos: QoS,
    now: Instant,
) -> usize {
    let mut m = message(topic, payload, qos, false);
    m.publisher = Some(publisher.into());
    broker.publish(m, now)
}

pub fn subscribe(broker: &Broker, handle: &SessionHandle, filter: &str, qos: QoS, now: Instant) {
    subscribe_with(broker, handle, filter, SubOptions::at(qos), now);
}

pub fn subscribe_with(
    broker: &Broker,
    handle: &SessionHandle,
    filter: &str,
    options: SubOptions,
    now: Instant,
) {
    broker
        .subscribe(handle, filter, options, now)
        .expect("valid filter");
}

pub fn will(topic: &str, payload: &str, delay_interval: u32) -> Will {
    Will {
        message: message(topic, payload, QoS::AtLeastOnce, false),
        delay_interval,
        message_expiry_interval: None,
    }
}

/// Read one counter.
pub fn count(counter: &AtomicU64) -> u64 {
    Metrics::get(counter)
}
