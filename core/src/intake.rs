//! The one intake: every message a client sends, whatever its protocol,
//! enters the core through [`Broker::admit`].
//!
//! Admitting a message applies, in this order and in this one place:
//! the client's message and byte rates, the per-protocol metrics, the
//! authorizer, the retained store, routing into the subscribers'
//! mailboxes (with backpressure), and the durable commit. The answer is an
//! [`Admission`]: a [`Verdict`] the adapter turns into its protocol's
//! acknowledgement (MQTT PUBACK/PUBREC reason, MQTT-SN return code, CoAP
//! response code, STOMP RECEIPT or ERROR) and a commit ticket that the
//! acknowledgement must wait for ([`crate::ack::HeldAcks`]).
//!
//! What a connection accumulates while it publishes — its rate buckets,
//! the sessions its QoS 1/2 messages filled (the driver stops reading
//! until they have room, for at most `max_pause`), a throttle pause — is
//! kept in its [`Publisher`], which the driver reads through the
//! connection contract ([`crate::connection`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::Action;
use crate::broker::Broker;
use crate::message::Message;
use crate::session::{ClientInfo, Session};
use crate::storage::CommitTicket;

/// Per-client rates, the same for every protocol.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RateLimits {
    /// Messages per second (0 = unlimited).
    pub messages_rate: u32,
    /// Topic and payload bytes per second (0 = unlimited).
    pub bytes_rate: u32,
    /// Over the rate: refuse the message (the adapter disconnects) instead
    /// of pausing the client's input.
    pub disconnect: bool,
}

/// What the core decided about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Routed to at least one session (or retained).
    Accepted,
    /// Accepted, but no session matched.
    NoSubscribers,
    /// The authorizer refused it (counted in `publish_denied`).
    Denied,
    /// Over the client's rate in disconnect mode: not routed (counted in
    /// `rate_limited`); the adapter closes the connection.
    RateExceeded,
}

/// The answer of [`Broker::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "the acknowledgement must wait for the admission's ticket"]
pub struct Admission {
    /// What happened to the message.
    pub verdict: Verdict,
    /// The commit every store write of this message belongs to: the
    /// publisher's acknowledgement must not leave before it resolves.
    pub ticket: Option<CommitTicket>,
}

impl Admission {
    /// True when the message was taken (routed, retained, or simply had no
    /// subscriber).
    pub fn accepted(&self) -> bool {
        matches!(self.verdict, Verdict::Accepted | Verdict::NoSubscribers)
    }
}

/// A token bucket refilled at `rate` per second up to one second's worth;
/// it may go into debt (a message larger than the burst), repaid by waiting.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl Bucket {
    fn new(rate: u32) -> Bucket {
        Bucket {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            at: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(at) = self.at {
            let elapsed = now.saturating_duration_since(at).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        }
        self.at = Some(now);
    }

    /// Whether `cost` fits now (after refilling).
    fn fits(&mut self, cost: f64, now: Instant) -> bool {
        self.refill(now);
        // A message larger than the burst fits a full bucket (and leaves a debt).
        self.rate <= 0.0 || self.tokens >= cost.min(self.rate)
    }

    /// Take `cost`; returns when the bucket is out of debt again, if it is in debt.
    fn take(&mut self, cost: f64, now: Instant) -> Option<Instant> {
        if self.rate <= 0.0 {
            return None;
        }
        self.refill(now);
        self.tokens -= cost;
        (self.tokens < 0.0).then(|| now + Duration::from_secs_f64(-self.tokens / self.rate))
    }
}

#[derive(Debug)]
struct Buckets {
    messages: Bucket,
    bytes: Bucket,
    /// Input paused until then (rate exceeded, throttle mode).
    throttled_until: Option<Instant>,
}

/// One connection's side of the intake.
#[derive(Debug)]
pub struct Publisher {
    client: ClientInfo,
    /// What may make the driver stop reading, on the heap once there is
    /// any: most connections never have a rate or fill a mailbox.
    pressure: Option<Box<Pressure>>,
}

/// The reasons a publisher may have to stop reading.
#[derive(Debug, Default)]
struct Pressure {
    /// Only when a rate is configured.
    buckets: Option<Buckets>,
    /// Sessions this connection's QoS 1/2 messages pushed over their bound.
    congested: Vec<Arc<Session>>,
}

impl Publisher {
    /// Who publishes.
    pub fn client(&self) -> &ClientInfo {
        &self.client
    }

    /// True when the driver should stop reading until the sessions of
    /// [`Publisher::take_congestion`] have room.
    pub fn is_congested(&self) -> bool {
        self.pressure
            .as_ref()
            .is_some_and(|p| !p.congested.is_empty())
    }

    /// The sessions to wait for (each until it has room, or `max_pause`).
    pub fn take_congestion(&mut self) -> Vec<Arc<Session>> {
        self.pressure
            .as_mut()
            .map(|p| std::mem::take(&mut p.congested))
            .unwrap_or_default()
    }

    /// Input is paused until then (over the rate, throttle mode).
    pub fn throttled_until(&self) -> Option<Instant> {
        self.pressure
            .as_ref()
            .and_then(|p| p.buckets.as_ref())
            .and_then(|b| b.throttled_until)
    }

    /// Lift a throttle pause that is over.
    pub fn resume(&mut self, now: Instant) {
        if let Some(b) = self.pressure.as_mut().and_then(|p| p.buckets.as_mut()) {
            if b.throttled_until.is_some_and(|at| at <= now) {
                b.throttled_until = None;
            }
        }
    }

    /// Apply the rates to a message of `bytes`; false when it must be
    /// refused (disconnect mode).
    fn within_rate(
        &mut self,
        bytes: usize,
        limits: &RateLimits,
        broker: &Broker,
        now: Instant,
    ) -> bool {
        let Some(b) = self.pressure.as_mut().and_then(|p| p.buckets.as_mut()) else {
            return true;
        };
        let bytes = bytes as f64;
        let metrics = broker.metrics();
        if limits.disconnect && !(b.messages.fits(1.0, now) && b.bytes.fits(bytes, now)) {
            metrics.inc(&metrics.rate_limited);
            return false;
        }
        let until = b.messages.take(1.0, now).max(b.bytes.take(bytes, now));
        if let Some(until) = until {
            if b.throttled_until.is_none() {
                metrics.inc(&metrics.rate_limited);
                tracing::debug!(client_id = %self.client.client_id, "rate exceeded; input paused");
            }
            b.throttled_until = Some(b.throttled_until.map_or(until, |p| p.max(until)));
        }
        true
    }
}

impl Broker {
    /// The intake side of a connection for `client` (after it authenticated).
    pub fn publisher(&self, client: ClientInfo) -> Publisher {
        let r = &self.config.rates;
        let pressure = (r.messages_rate > 0 || r.bytes_rate > 0).then(|| {
            Box::new(Pressure {
                buckets: Some(Buckets {
                    messages: Bucket::new(r.messages_rate),
                    bytes: Bucket::new(r.bytes_rate),
                    throttled_until: None,
                }),
                congested: Vec::new(),
            })
        });
        Publisher { client, pressure }
    }

    /// Admit one message from `from` (see the module documentation). The
    /// topic must already be a valid topic name (each protocol refuses a
    /// bad one with its own code); the message's publisher is set to the
    /// client when the adapter left it empty.
    pub fn admit(&self, from: &mut Publisher, mut message: Message, now: Instant) -> Admission {
        let refused = |verdict| Admission {
            verdict,
            ticket: None,
        };
        let size = message.topic.len() + message.payload.len();
        if !from.within_rate(size, &self.config.rates, self, now) {
            return refused(Verdict::RateExceeded);
        }
        self.metrics.message_in(from.client.protocol, message.qos);
        if !self.authorize(&from.client, Action::Publish, &message.topic) {
            tracing::debug!(client_id = %from.client.client_id, topic = %message.topic, "publish denied");
            return refused(Verdict::Denied);
        }
        if message.publisher.is_none() {
            message.publisher = Some(from.client.client_id.clone());
        }
        let mut ticket = None;
        let mut congested = Vec::new();
        let matched = self.publish_flow(message, now, Some(&mut congested), &mut ticket);
        if !congested.is_empty() {
            let waits = &mut from.pressure.get_or_insert_with(Box::default).congested;
            for session in congested {
                if !waits.iter().any(|s| Arc::ptr_eq(s, &session)) {
                    waits.push(session);
                }
            }
        }
        Admission {
            verdict: if matched == 0 {
                Verdict::NoSubscribers
            } else {
                Verdict::Accepted
            },
            ticket,
        }
    }
}
