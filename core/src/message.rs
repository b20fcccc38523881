//! The protocol-neutral message every adapter translates to and from.
//!
//! A [`Message`] is created once by the publishing channel, wrapped in an
//! `Arc`, and shared by every subscriber's [`Delivery`]; the payload is a
//! `Bytes` and is never copied on fan-out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Quality of service, protocol-neutral (MQTT numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    /// At most once.
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// From the numeric level; `None` for anything above 2.
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// Client identifier as shared across the core.
pub type ClientId = Arc<str>;

/// Metadata carried with a message (MQTT 5 PUBLISH properties, and what
/// other protocols map onto them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageProperties {
    /// Payload format indicator (0 = bytes, 1 = UTF-8).
    pub payload_format_indicator: Option<u8>,
    /// Content type.
    pub content_type: Option<String>,
    /// Response topic for request/response.
    pub response_topic: Option<String>,
    /// Correlation data for request/response.
    pub correlation_data: Option<Bytes>,
    /// User properties, order preserved.
    pub user_properties: Vec<(String, String)>,
}

/// A message as routed by the core.
#[derive(Debug, Clone)]
pub struct Message {
    /// Concrete topic name (mountpoint already applied).
    pub topic: Arc<str>,
    /// Payload, shared on fan-out.
    pub payload: Bytes,
    /// QoS the publisher used.
    pub qos: QoS,
    /// Retain flag as published.
    pub retain: bool,
    /// Publishing client, for no-local and logging; `None` for the system.
    pub publisher: Option<ClientId>,
    /// Metadata.
    pub properties: MessageProperties,
    /// When the message expires, if it has a message expiry interval.
    pub expires_at: Option<Instant>,
}

impl Message {
    /// A message with no metadata.
    pub fn new(topic: impl Into<Arc<str>>, payload: Bytes, qos: QoS, retain: bool) -> Message {
        Message {
            topic: topic.into(),
            payload,
            qos,
            retain,
            publisher: None,
            properties: MessageProperties::default(),
            expires_at: None,
        }
    }

    /// Set the expiry from an interval in seconds counted from `now`.
    pub fn with_expiry_interval(mut self, seconds: Option<u32>, now: Instant) -> Message {
        self.expires_at = seconds.map(|s| now + Duration::from_secs(u64::from(s)));
        self
    }

    /// True once the message's expiry has passed.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// Remaining expiry interval in whole seconds (rounded up, at least 1
    /// while not expired), to forward as MQTT 5 Message Expiry Interval.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
        })
    }
}

/// One message on its way to one subscriber session.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The shared message.
    pub message: Arc<Message>,
    /// Effective QoS for this subscriber (min of published and granted).
    pub qos: QoS,
    /// Retain flag to send: true for retained messages sent on subscribe,
    /// the published flag under retain-as-published, false otherwise.
    pub retain: bool,
    /// Subscription identifiers of every matching subscription (MQTT 5).
    pub subscription_ids: Vec<u32>,
    /// Set when the delivery came through a shared subscription: the group
    /// and plain filter, so it can be handed to another member if this
    /// session goes away before acknowledging it.
    pub shared: Option<(Arc<str>, Arc<str>)>,
}
