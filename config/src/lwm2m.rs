//! `[lwm2m]`: the LwM2M gateway (UDP 5783; EMQX's topics and JSON payloads).
//!
//! Like every section: `#[serde(default, deny_unknown_fields)]`, defaults in
//! the `Default` impl mirrored in `src/default.toml`, ranges checked by
//! [`Lwm2mConfig::problems`] (called from [`Config::validate`](crate::Config::validate))
//! with `lwm2m.`-prefixed key paths.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{duration, sections::bind_addr, ConfigProblem};

/// When a registration Update is published on the update topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdatePublishCondition {
    /// `"contains_object_list"`: only Updates carrying an object list (EMQX's default).
    #[default]
    ContainsObjectList,
    /// `"always"`: every Update.
    Always,
}

/// `[lwm2m.topics]`: topic names under the mountpoint (EMQX's `translators`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Lwm2mTopics {
    /// Commands from applications. Default `"dn/#"`.
    pub command: String,
    /// Command responses. Default `"up/resp"`.
    pub response: String,
    /// Notifications of observations. Default `"up/notify"`.
    pub notify: String,
    /// Register (and de-register) events. Default `"up/resp"`.
    pub register: String,
    /// Update events. Default `"up/update"`.
    pub update: String,
}

impl Default for Lwm2mTopics {
    fn default() -> Self {
        Self {
            command: "dn/#".into(),
            response: "up/resp".into(),
            notify: "up/notify".into(),
            register: "up/resp".into(),
            update: "up/update".into(),
        }
    }
}

/// `[lwm2m]`: the LwM2M gateway on UDP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Lwm2mConfig {
    /// Whether the LwM2M listener is started. Default true.
    pub enabled: bool,
    /// UDP address to bind. Default `0.0.0.0:5783`.
    #[serde(with = "bind_addr")]
    pub bind: SocketAddr,
    /// Topic prefix; `${endpoint}` (or `${endpoint_name}`) expands to the endpoint name.
    /// Default `"lwm2m/${endpoint}/"`.
    pub mountpoint: String,
    /// Directory of OMA object definition XML files. Default `"config/lwm2m_xml"`.
    pub xml_dir: String,
    /// Shortest registration lifetime accepted. Default 1 s.
    #[serde(with = "duration")]
    pub lifetime_min: Duration,
    /// Longest registration lifetime accepted. Default 86400 s.
    #[serde(with = "duration")]
    pub lifetime_max: Duration,
    /// How long a queue-mode device is reachable after it last sent something. Default 22 s.
    #[serde(with = "duration")]
    pub qmode_time_window: Duration,
    /// Commands buffered per device while it is unreachable (further ones are refused). Default 100.
    pub max_queued: u32,
    /// Requests awaiting a device's answer at once (further ones wait in the buffer). Default 16.
    pub max_inflight: u32,
    /// How long a command waits for the device's answer (also a separate response after an
    /// empty ACK) before `5.04 timeout` is published. Default 60 s.
    #[serde(with = "duration")]
    pub response_timeout: Duration,
    /// Largest device answer assembled from Block2 blocks, in bytes (at least 16). Default 1 MiB.
    pub max_body_size: u32,
    /// Block size for requests larger than one block (Block1): 16, 32, … 1024. Default 1024.
    pub block_size: u32,
    /// Paths observed automatically after registration (when the device has the object).
    /// Default none.
    pub auto_observe: Vec<String>,
    /// When an Update is published: `"contains_object_list"` or `"always"`.
    pub update_msg_publish_condition: UpdatePublishCondition,
    /// QoS of what the gateway publishes (0, 1 or 2). Default 0.
    pub publish_qos: u8,
    /// Most peers with state at once; datagrams from further ones are dropped. Default 100000.
    pub max_peers: u32,
    /// Datagrams queued per peer while it is busy. Default 64.
    pub peer_queue_len: u32,
    /// ACK_TIMEOUT for requests to devices. Default 2 s.
    #[serde(with = "duration")]
    pub ack_timeout: Duration,
    /// MAX_RETRANSMIT for requests to devices (at most 20). Default 4.
    pub max_retransmit: u32,
    /// Topic names.
    pub topics: Lwm2mTopics,
}

impl Default for Lwm2mConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 5783)),
            mountpoint: "lwm2m/${endpoint}/".into(),
            xml_dir: "config/lwm2m_xml".into(),
            lifetime_min: Duration::from_secs(1),
            lifetime_max: Duration::from_secs(86400),
            qmode_time_window: Duration::from_secs(22),
            max_queued: 100,
            max_inflight: 16,
            response_timeout: Duration::from_secs(60),
            max_body_size: 1024 * 1024,
            block_size: 1024,
            auto_observe: Vec::new(),
            update_msg_publish_condition: UpdatePublishCondition::ContainsObjectList,
            publish_qos: 0,
            max_peers: 100_000,
            peer_queue_len: 64,
            ack_timeout: Duration::from_secs(2),
            max_retransmit: 4,
            topics: Lwm2mTopics::default(),
        }
    }
}

impl Lwm2mConfig {
    /// Every range problem, keyed `lwm2m.<field>`.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut p = Vec::new();
        let mut push =
            |key: &str, msg: String| p.push(ConfigProblem::new(format!("lwm2m.{key}"), msg));
        for (key, value) in [
            ("max_queued", self.max_queued),
            ("max_inflight", self.max_inflight),
            ("max_peers", self.max_peers),
            ("peer_queue_len", self.peer_queue_len),
        ] {
            if value < 1 {
                push(key, format!("must be at least 1, got {value}"));
            }
        }
        for (key, value) in [
            ("lifetime_min", self.lifetime_min),
            ("lifetime_max", self.lifetime_max),
            ("qmode_time_window", self.qmode_time_window),
            ("ack_timeout", self.ack_timeout),
            ("response_timeout", self.response_timeout),
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
        if self.max_body_size < 16 {
            push(
                "max_body_size",
                format!("must be at least 16, got {}", self.max_body_size),
            );
        }
        if self.lifetime_min > self.lifetime_max {
            push(
                "lifetime_min",
                "must not be greater than lifetime_max".to_owned(),
            );
        }
        if self.publish_qos > 2 {
            push(
                "publish_qos",
                format!("must be 0, 1 or 2, got {}", self.publish_qos),
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
        for (key, t) in [
            ("response", &self.topics.response),
            ("notify", &self.topics.notify),
            ("register", &self.topics.register),
            ("update", &self.topics.update),
        ] {
            if t.is_empty() || t.contains(['+', '#', '\0']) {
                push(
                    &format!("topics.{key}"),
                    format!("must be a non-empty topic name without wildcards, got {t:?}"),
                );
            }
        }
        if self.topics.command.is_empty() || self.topics.command.contains('\0') {
            push("topics.command", "must be a non-empty topic filter".into());
        }
        for (i, path) in self.auto_observe.iter().enumerate() {
            let ok = path.starts_with('/')
                && path
                    .trim_matches('/')
                    .split('/')
                    .all(|s| s.parse::<u16>().is_ok())
                && path.trim_matches('/').split('/').count() <= 4;
            if !ok {
                push(
                    &format!("auto_observe[{i}]"),
                    format!("must be an LwM2M path such as \"/3/0/9\", got {path:?}"),
                );
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert!(Lwm2mConfig::default().problems().is_empty());
    }

    #[test]
    fn ranges_are_reported_with_key_paths() {
        let c = Lwm2mConfig {
            lifetime_min: Duration::from_secs(100),
            lifetime_max: Duration::from_secs(10),
            max_queued: 0,
            publish_qos: 3,
            mountpoint: "a/#/".into(),
            auto_observe: vec!["/3/x".into()],
            topics: Lwm2mTopics {
                notify: "up/+".into(),
                ..Lwm2mTopics::default()
            },
            ..Lwm2mConfig::default()
        };
        let keys: Vec<String> = c.problems().into_iter().map(|p| p.key).collect();
        for k in [
            "lwm2m.lifetime_min",
            "lwm2m.max_queued",
            "lwm2m.publish_qos",
            "lwm2m.mountpoint",
            "lwm2m.auto_observe[0]",
            "lwm2m.topics.notify",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
        }
    }
}
