//! Tributary configuration: serde types, TOML loading, environment overrides and
//! validation that reports every error with its key path.
//!
//! A configuration is a TOML file whose tables are the sections of [`Config`].
//! Any subset of keys is valid — missing keys take their documented default —
//! and an unknown key is an error, so a typo never silently falls back to a
//! default. Durations are strings such as `"10s"` or `"2h"` ([`duration`]).
//!
//! ```
//! use tributary_config::Config;
//!
//! let config = Config::from_toml_str("[mqtt]\nmax_inflight = 64\n")?;
//! assert_eq!(config.mqtt.max_inflight, 64);
//! assert_eq!(config.mqtt.receive_maximum, 32); // default
//!
//! let err = Config::from_toml_str("[mqtt]\nmax_packet_size = 1\nmax_inflight = 0\n").unwrap_err();
//! assert_eq!(err.to_string(), "mqtt.max_packet_size: must be between 2 and 268435460, got 1\n\
//!                              mqtt.max_inflight: must be at least 1, got 0");
//! # Ok::<(), tributary_config::ConfigError>(())
//! ```
//!
//! # Layout
//!
//! - [`sections`]: one struct per TOML table (`[node]`, `[mqtt]`, `[listeners.tcp.<name>]`, …)
//!   with its defaults; re-exported at the crate root.
//! - [`duration`]: the `"10s"` / `"500ms"` duration format and its serde glue.
//! - `load`: TOML text → environment overrides (`TRIBUTARY_SECTION__KEY`) →
//!   typed config, collecting every unknown key and type error with its path;
//!   [`ConfigError`] and [`ConfigProblem`].
//! - `validate`: ranges and cross-field rules ([`Config::validate`]).
//! - `src/default.toml`: the commented default file ([`default_config_toml`]);
//!   a test keeps it equal to [`Config::default`].
#![warn(missing_docs)]

use serde::{Deserialize, Serialize};

pub mod api;
pub mod coap;
pub mod duration;
pub mod listeners;
mod load;
pub mod lwm2m;
pub mod mqttsn;
pub mod sections;
pub mod security;
pub mod stomp;
pub mod storage;
mod validate;

pub use api::{ApiConfig, ApiKey};
pub use coap::{CoapConfig, CoapNotifyType, CoapQos};
pub use duration::{format_duration, parse_duration, ParseDurationError};
pub use listeners::{PeerCertAs, SslListener, TlsOptions, TlsVerify, WsListener, WssListener};
pub use load::{ConfigError, ConfigProblem, ENV_PREFIX};
pub use lwm2m::{Lwm2mConfig, Lwm2mTopics, UpdatePublishCondition};
pub use mqttsn::{AdvertiseConfig, MqttSnConfig, PredefinedTopic};
pub use sections::{
    AclAction, AclRule, AuthorizationConfig, DenyAction, LimitsConfig, Listeners, LogConfig,
    LogFormat, MqttConfig, MqueueOverflow, NodeConfig, Permission, RateExceeded, RetainerConfig,
    SharedStrategy, SubscribeDeniedReason, TcpListener,
};
pub use security::{
    AuthenticationConfig, BuiltInDatabase, ClientRule, ClientRulePermission, HttpAuth,
    JwtAlgorithm, JwtAuth, JwtFrom,
};
pub use stomp::{SockJsConfig, StompConfig, StompUnacked};
pub use storage::{DurabilityMode, StorageBackend, StorageConfig};

/// The whole configuration. Each field is a top-level TOML table of the same name.
///
/// `Config::default()` is the documented default configuration, identical to
/// [`default_config_toml`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[node]`: node name and `$SYS` interval.
    pub node: NodeConfig,
    /// `[log]`: log level / filter.
    pub log: LogConfig,
    /// `[mqtt]`: protocol limits and session behaviour.
    pub mqtt: MqttConfig,
    /// `[retainer]`: the retained-message store.
    pub retainer: RetainerConfig,
    /// `[listeners]`: sockets to accept connections on.
    pub listeners: Listeners,
    /// `[authorization]`: the built-in ACL.
    pub authorization: AuthorizationConfig,
    /// `[authentication]`: who may connect.
    pub authentication: AuthenticationConfig,
    /// `[limits]`: broker-wide bounds.
    pub limits: LimitsConfig,
    /// `[mqttsn]`: the MQTT-SN 1.2 gateway over UDP.
    pub mqttsn: MqttSnConfig,
    /// `[coap]`: the CoAP gateway over UDP.
    pub coap: CoapConfig,
    /// `[lwm2m]`: the LwM2M gateway over UDP.
    pub lwm2m: Lwm2mConfig,
    /// `[api]`: the HTTP API, metrics and health endpoint.
    pub api: ApiConfig,
    /// `[stomp]`: the STOMP gateway (TCP, WebSocket, SockJS).
    pub stomp: StompConfig,
    /// `[storage]`: the durable store for sessions and retained messages.
    pub storage: StorageConfig,
}

/// The commented default configuration file, printed by `tributary print-default-config`.
/// Every key with its default and a one-line comment; parses to [`Config::default`].
pub fn default_config_toml() -> &'static str {
    include_str!("default.toml")
}
