//! `[coap]`: the CoAP gateway (EMQX's scheme: `/ps/{topic}`, `/mqtt/connection`).
//!
//! Like every section: `#[serde(default, deny_unknown_fields)]`, defaults in
//! the `Default` impl mirrored in `src/default.toml`, ranges checked by
//! [`CoapConfig::problems`] (called from [`Config::validate`](crate::Config::validate))
//! with `coap.`-prefixed key paths.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{duration, sections::bind_addr, ConfigProblem};

/// CoAP message type of notifications (`notify_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CoapNotifyType {
    /// `"qos"`: QoS 0 messages as NON, QoS 1 and 2 as CON (default).
    #[default]
    Qos,
    /// `"con"`: always confirmable.
    Con,
    /// `"non"`: always non-confirmable.
    Non,
}

/// QoS of a publish or subscription that has no `qos` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CoapQos {
    /// `"coap"`: from the request's type, NON = QoS 0, CON = QoS 1 (default).
    #[default]
    Coap,
    /// `"qos0"`.
    Qos0,
    /// `"qos1"`.
    Qos1,
    /// `"qos2"`.
    Qos2,
}

/// `[coap]`: the CoAP gateway on UDP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoapConfig {
    /// Whether the CoAP listener is started. Default true.
    pub enabled: bool,
    /// UDP address to bind (`"ip:port"` or a bare port). Default `0.0.0.0:5683`.
    #[serde(with = "bind_addr")]
    pub bind: SocketAddr,
    /// Topic prefix added to every topic (clients never see it); `${clientid}` and
    /// `${username}` expand. Default `""`.
    pub mountpoint: String,
    /// Every request must carry the `clientid` and `token` of a connection made with
    /// `POST /mqtt/connection`. Default false.
    pub connection_required: bool,
    /// Notification type: `"qos"` (QoS 0 → NON, 1/2 → CON), `"con"` or `"non"`. Default `"qos"`.
    pub notify_type: CoapNotifyType,
    /// QoS of a publish without `qos=`: `"coap"` (NON → 0, CON → 1), `"qos0"`, `"qos1"`, `"qos2"`.
    /// Default `"coap"`.
    pub publish_qos: CoapQos,
    /// QoS of a subscription without `qos=`, same choices. Default `"coap"`.
    pub subscribe_qos: CoapQos,
    /// A connection with no request (or heartbeat `PUT`) for 1.5 × this is closed. Non-zero. Default 30 s.
    #[serde(with = "duration")]
    pub heartbeat: Duration,
    /// Most peers (client addresses) with state at once; datagrams from further ones are dropped.
    /// At least 1. Default 100000.
    pub max_peers: u32,
    /// Most observations per peer. At least 1. Default 100.
    pub max_observers: u32,
    /// Notifications queued per observer behind an unacknowledged CON; the oldest is dropped
    /// when full. At least 1. Default 100.
    pub notify_queue_len: u32,
    /// Datagrams queued per peer while it is busy; further ones are dropped. At least 1. Default 64.
    pub peer_queue_len: u32,
    /// Block size for responses and notifications (RFC 7959): 16, 32, … 1024. Default 1024.
    pub block_size: u32,
    /// Largest request body accepted (block-wise publish), in bytes. At least `block_size`.
    /// Default 1 MiB.
    pub max_body_size: u32,
    /// ACK_TIMEOUT (RFC 7252 §4.8): first retransmission of a CON after this (times a random
    /// factor). Non-zero. Default 2 s.
    #[serde(with = "duration")]
    pub ack_timeout: Duration,
    /// ACK_RANDOM_FACTOR: at least 1.0. Default 1.5.
    pub ack_random_factor: f64,
    /// MAX_RETRANSMIT: retransmissions of a CON before giving up (an observer is then removed).
    /// At most 20. Default 4.
    pub max_retransmit: u32,
    /// EXCHANGE_LIFETIME: how long a CON's message id is remembered for deduplication.
    /// Non-zero. Default 247 s.
    #[serde(with = "duration")]
    pub exchange_lifetime: Duration,
    /// NON_LIFETIME: how long a NON's message id is remembered. Non-zero. Default 145 s.
    #[serde(with = "duration")]
    pub non_lifetime: Duration,
    /// Most message ids remembered per peer for deduplication. At least 1. Default 256.
    pub max_dedup_entries: u32,
}

impl Default for CoapConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 5683)),
            mountpoint: String::new(),
            connection_required: false,
            notify_type: CoapNotifyType::Qos,
            publish_qos: CoapQos::Coap,
            subscribe_qos: CoapQos::Coap,
            heartbeat: Duration::from_secs(30),
            max_peers: 100_000,
            max_observers: 100,
            notify_queue_len: 100,
            peer_queue_len: 64,
            block_size: 1024,
            max_body_size: 1024 * 1024,
            ack_timeout: Duration::from_secs(2),
            ack_random_factor: 1.5,
            max_retransmit: 4,
            exchange_lifetime: Duration::from_secs(247),
            non_lifetime: Duration::from_secs(145),
            max_dedup_entries: 256,
        }
    }
}

impl CoapConfig {
    /// Every range problem, keyed `coap.<field>`.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut p = Vec::new();
        let mut push =
            |key: &str, msg: String| p.push(ConfigProblem::new(format!("coap.{key}"), msg));
        for (key, value) in [
            ("max_peers", self.max_peers),
            ("max_observers", self.max_observers),
            ("notify_queue_len", self.notify_queue_len),
            ("peer_queue_len", self.peer_queue_len),
            ("max_dedup_entries", self.max_dedup_entries),
        ] {
            if value < 1 {
                push(key, format!("must be at least 1, got {value}"));
            }
        }
        for (key, value) in [
            ("heartbeat", self.heartbeat),
            ("ack_timeout", self.ack_timeout),
            ("exchange_lifetime", self.exchange_lifetime),
            ("non_lifetime", self.non_lifetime),
        ] {
            if value.is_zero() {
                push(key, "must be greater than zero".to_owned());
            }
        }
        if !(self.block_size.is_power_of_two() && (16..=1024).contains(&self.block_size)) {
            push(
                "block_size",
                format!(
                    "must be a power of two between 16 and 1024, got {}",
                    self.block_size
                ),
            );
        }
        if self.max_body_size < self.block_size {
            push(
                "max_body_size",
                format!(
                    "must be at least block_size ({}), got {}",
                    self.block_size, self.max_body_size
                ),
            );
        }
        if !(self.ack_random_factor.is_finite() && self.ack_random_factor >= 1.0) {
            push(
                "ack_random_factor",
                format!(
                    "must be a finite number of at least 1.0, got {}",
                    self.ack_random_factor
                ),
            );
        }
        if self.max_retransmit > 20 {
            push(
                "max_retransmit",
                format!("must be at most 20, got {}", self.max_retransmit),
            );
        }
        if let Some(c) = self
            .mountpoint
            .chars()
            .find(|c| matches!(c, '+' | '#' | '\0'))
        {
            push(
                "mountpoint",
                format!("must not contain {c:?}: it prefixes topic names"),
            );
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert!(CoapConfig::default().problems().is_empty());
    }

    #[test]
    fn ranges_are_reported_with_key_paths() {
        let c = CoapConfig {
            block_size: 100,
            max_body_size: 10,
            ack_random_factor: 0.5,
            max_observers: 0,
            heartbeat: Duration::ZERO,
            mountpoint: "a/#/".into(),
            max_retransmit: 21,
            ..CoapConfig::default()
        };
        let keys: Vec<String> = c.problems().into_iter().map(|p| p.key).collect();
        for k in [
            "coap.block_size",
            "coap.max_body_size",
            "coap.ack_random_factor",
            "coap.max_observers",
            "coap.heartbeat",
            "coap.mountpoint",
            "coap.max_retransmit",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
        }
    }
}
