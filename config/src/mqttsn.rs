//! `[mqttsn]`: the MQTT-SN 1.2 gateway over UDP (DESIGN §2).
//!
//! Like every section: `#[serde(default, deny_unknown_fields)]`, defaults in
//! the `Default` impls mirrored in `src/default.toml`, ranges checked in
//! [`MqttSnConfig::check`] with key paths under `mqttsn.`.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration;
use crate::ConfigProblem;

/// `[mqttsn]`: the MQTT-SN gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttSnConfig {
    /// Whether the gateway is started. Default true.
    pub enabled: bool,
    /// UDP address to bind: `"ip:port"`, `"[v6]:port"`, or a bare port. Port 0 picks a free port (tests).
    /// Default `0.0.0.0:1884`.
    #[serde(with = "crate::sections::bind_addr")]
    pub bind: SocketAddr,
    /// GwId sent in GWINFO and ADVERTISE (0..=255). Default 1.
    pub gateway_id: u8,
    /// Prefix added to every MQTT-SN topic on the way in and stripped on the way out;
    /// clients never see it. Must not contain `+` or `#`. Default `""`.
    pub mountpoint: String,
    /// Predefined topic ids shared by every client, as `[[mqttsn.predefined]]` tables
    /// with `id` (1..=65534, unique) and `topic` (a topic name, no wildcards). Default none.
    pub predefined: Vec<PredefinedTopic>,
    /// Accept QoS −1 publishes (no connection; predefined ids and short names), routed as QoS 0.
    /// Default true.
    pub enable_qos3: bool,
    /// While anonymous access is off (a backend is configured, or `allow_anonymous = false`),
    /// QoS −1 publishes are accepted only from these addresses or CIDR ranges
    /// (`"10.1.0.0/16"`), and pass the ACL like any publish. Empty turns QoS −1 off whenever
    /// anonymous access is off. Default empty.
    pub qos3_sources: Vec<String>,
    /// Tretry: unacknowledged PUBLISH, PUBREL and REGISTER are resent after this. Non-zero. Default 10 s.
    #[serde(with = "duration")]
    pub retry_interval: Duration,
    /// Nretry: resends before a client is considered lost (its will is published). At least 1. Default 5.
    pub max_retries: u32,
    /// Most clients known at once (connected or asleep). When full, the longest-idle client idle for
    /// at least `idle_timeout` is evicted for a new CONNECT, else the CONNECT is refused. At least 1.
    /// Default 100000.
    pub max_clients: u32,
    /// A CONNECT's will flow must complete within this; clients that asked for no keep-alive are
    /// supervised at this interval; clients idle this long may be evicted from a full table. Non-zero.
    /// Default 30 s.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Gateway→client QoS 1/2 messages awaiting acknowledgement per client. At least 1. Default 1.
    pub max_inflight: u16,
    /// Topics one client may register (REGISTER from the client or the gateway). At least 1. Default 1000.
    pub max_registered_topics: u32,
    /// Longest client id accepted, in bytes (the spec says 1–23 characters). 1..=65535. Default 64.
    pub max_clientid_len: u16,
    /// Periodic ADVERTISE.
    pub advertise: AdvertiseConfig,
}

impl Default for MqttSnConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 1884)),
            gateway_id: 1,
            mountpoint: String::new(),
            predefined: Vec::new(),
            enable_qos3: true,
            qos3_sources: Vec::new(),
            retry_interval: Duration::from_secs(10),
            max_retries: 5,
            max_clients: 100_000,
            idle_timeout: Duration::from_secs(30),
            max_inflight: 1,
            max_registered_topics: 1000,
            max_clientid_len: 64,
            advertise: AdvertiseConfig::default(),
        }
    }
}

/// One `[[mqttsn.predefined]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredefinedTopic {
    /// The topic id (1..=65534).
    pub id: u16,
    /// The topic name as the client sees it (the mountpoint is added).
    pub topic: String,
}

/// `[mqttsn.advertise]`: periodic ADVERTISE broadcasts (§6.1 of the MQTT-SN spec).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdvertiseConfig {
    /// Whether ADVERTISE is sent. Default false.
    pub enabled: bool,
    /// Time between ADVERTISE messages; sent as the Duration field in seconds, so 1 s..=65535 s.
    /// Default 900 s.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Where ADVERTISE is sent (a broadcast or multicast address). Default `255.255.255.255:1884`.
    #[serde(with = "crate::sections::bind_addr")]
    pub broadcast: SocketAddr,
}

impl Default for AdvertiseConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            interval: Duration::from_secs(900),
            broadcast: SocketAddr::from((Ipv4Addr::BROADCAST, 1884)),
        }
    }
}

impl MqttSnConfig {
    /// Every problem in this section, keyed under `mqttsn.`.
    pub(crate) fn check(&self, out: &mut Vec<ConfigProblem>) {
        let mut push = |k: &str, m: String| out.push(ConfigProblem::new(format!("mqttsn.{k}"), m));
        if self.mountpoint.contains(['+', '#']) {
            push(
                "mountpoint",
                format!("must not contain `+` or `#`, got {:?}", self.mountpoint),
            );
        }
        for (i, source) in self.qos3_sources.iter().enumerate() {
            if crate::security::parse_ip_net(source).is_none() {
                push(
                    &format!("qos3_sources[{i}]"),
                    format!("must be an address or a CIDR range, got {source:?}"),
                );
            }
        }
        let mut seen = BTreeSet::new();
        for (i, p) in self.predefined.iter().enumerate() {
            if p.id == 0 || p.id == u16::MAX {
                push(
                    &format!("predefined[{i}].id"),
                    format!("must be between 1 and 65534, got {}", p.id),
                );
            } else if !seen.insert(p.id) {
                push(
                    &format!("predefined[{i}].id"),
                    format!("topic id {} is defined twice", p.id),
                );
            }
            if p.topic.is_empty() || p.topic.contains(['+', '#', '\0']) {
                push(
                    &format!("predefined[{i}].topic"),
                    format!(
                        "must be a non-empty topic name without wildcards, got {:?}",
                        p.topic
                    ),
                );
            }
        }
        if self.retry_interval.is_zero() {
            push("retry_interval", "must be greater than zero".into());
        }
        if self.idle_timeout.is_zero() {
            push("idle_timeout", "must be greater than zero".into());
        }
        for (key, value) in [
            ("max_retries", self.max_retries),
            ("max_clients", self.max_clients),
            ("max_inflight", u32::from(self.max_inflight)),
            ("max_registered_topics", self.max_registered_topics),
            ("max_clientid_len", u32::from(self.max_clientid_len)),
        ] {
            if value < 1 {
                push(key, format!("must be at least 1, got {value}"));
            }
        }
        let secs = self.advertise.interval.as_secs();
        if !(1..=u64::from(u16::MAX)).contains(&secs) || self.advertise.interval.subsec_nanos() != 0
        {
            push(
                "advertise.interval",
                format!(
                    "must be whole seconds between 1 s and 65535 s (ADVERTISE Duration is 16 bits), got {}",
                    duration::format_duration(self.advertise.interval)
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let mut out = Vec::new();
        MqttSnConfig::default().check(&mut out);
        assert_eq!(out, Vec::new());
    }

    #[test]
    fn problems_name_their_keys() {
        let c = MqttSnConfig {
            mountpoint: "a/+/".into(),
            predefined: vec![
                PredefinedTopic {
                    id: 1,
                    topic: "a".into(),
                },
                PredefinedTopic {
                    id: 1,
                    topic: "b/#".into(),
                },
                PredefinedTopic {
                    id: 0,
                    topic: "c".into(),
                },
            ],
            retry_interval: Duration::ZERO,
            max_inflight: 0,
            advertise: AdvertiseConfig {
                interval: Duration::from_secs(70_000),
                ..AdvertiseConfig::default()
            },
            ..MqttSnConfig::default()
        };
        let mut out = Vec::new();
        c.check(&mut out);
        let keys: Vec<_> = out.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "mqttsn.mountpoint",
                "mqttsn.predefined[1].id",
                "mqttsn.predefined[1].topic",
                "mqttsn.predefined[2].id",
                "mqttsn.retry_interval",
                "mqttsn.max_inflight",
                "mqttsn.advertise.interval",
            ]
        );
    }

    #[test]
    fn loads_from_toml_and_reports_key_paths() {
        let c = crate::Config::from_toml_str(
            "[mqttsn]\nbind = 11884\nmountpoint = \"sn/\"\n\n[[mqttsn.predefined]]\nid = 3\ntopic = \"a/b\"\n",
        )
        .expect("valid");
        assert_eq!(c.mqttsn.bind.port(), 11884);
        assert_eq!(
            c.mqttsn.predefined,
            vec![PredefinedTopic {
                id: 3,
                topic: "a/b".into()
            }]
        );
        let err = crate::Config::from_toml_str(
            "[mqttsn]\nmax_clients = 0\nretry = 1\n[mqttsn.advertise]\ninterval = \"0s\"\n",
        )
        .expect_err("invalid");
        let keys: Vec<_> = err.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "mqttsn.retry",
                "mqttsn.max_clients",
                "mqttsn.advertise.interval"
            ]
        );
    }
}
