//! The configuration sections: one struct per top-level TOML table.
//!
//! Every struct is `#[serde(default, deny_unknown_fields)]`: any subset of keys
//! is a valid file (missing keys take the documented default) and a misspelt
//! key is an error rather than silently ignored. Field names are the TOML keys.
//! Defaults live in the `Default` impls below and are mirrored, with a comment
//! per key, in `src/default.toml` (a test keeps the two equal).
//!
//! Ranges and cross-field rules are not enforced here but in
//! [`Config::validate`](crate::Config::validate), so that every problem in a
//! file is reported at once.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration;

/// `[node]`: identity of this broker node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Node name, EMQX style `name@host`; appears in `$SYS/brokers/{name}/…` topics,
    /// so it must not contain `/`, `+` or `#`. Default `"tributary@127.0.0.1"`.
    pub name: String,
    /// How often `$SYS` topics are published. Zero turns `$SYS` publishing off. Default 60 s.
    #[serde(with = "duration")]
    pub sys_interval: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: "tributary@127.0.0.1".to_owned(),
            sys_interval: Duration::from_secs(60),
        }
    }
}

/// `[log]`: logging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A level (`trace`, `debug`, `info`, `warn`, `error`) or a `tracing` `EnvFilter`
    /// directive string such as `"info,tributary_mqtt=debug"`. Default `"info"`.
    pub level: String,
    /// `"text"` (human-readable lines) or `"json"` (one JSON object per line). Default `"text"`.
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// `"text"`: human-readable lines (default).
    #[default]
    Text,
    /// `"json"`: one JSON object per line.
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// What a full per-session message queue does with one more message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MqueueOverflow {
    /// `"drop_oldest"`: evict the oldest queued message to make room (default).
    #[default]
    DropOldest,
    /// `"drop_newest"`: discard the arriving message.
    DropNewest,
}

/// How a message published to a shared subscription group picks its one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedStrategy {
    /// `"round_robin"`: each member in turn (default).
    #[default]
    RoundRobin,
    /// `"random"`: a uniformly random member.
    Random,
    /// `"sticky"`: keep the member picked last until it leaves the group.
    Sticky,
    /// `"hash_clientid"`: hash of the publisher's client id, so one publisher always reaches one member.
    HashClientid,
    /// `"hash_topic"`: hash of the topic, so one topic always reaches one member.
    HashTopic,
}

/// `[mqtt]`: protocol limits and session behaviour. Every bound a client can push against lives here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Largest packet accepted or sent, in bytes (MQTT 5 Maximum Packet Size). 2..=268435460. Default 1 MiB.
    pub max_packet_size: u32,
    /// Longest client id accepted, in bytes. At least 23 (the spec's guaranteed minimum). Default 65535.
    pub max_clientid_len: u16,
    /// Most topic levels (`/`-separated) in a topic name or filter. At least 1. Default 128.
    pub max_topic_levels: u16,
    /// Highest QoS granted (MQTT 5 Maximum QoS). 0..=2. Default 2.
    pub max_qos_allowed: u8,
    /// Whether retained messages are supported (MQTT 5 Retain Available). Default true.
    pub retain_available: bool,
    /// Whether subscriptions may use `+` and `#`. Default true.
    pub wildcard_subscription: bool,
    /// Whether `$share/{group}/…` subscriptions are supported. Default true.
    pub shared_subscription: bool,
    /// Most topic aliases a client may use toward the server (MQTT 5 Topic Alias Maximum). Default 65535.
    pub max_topic_alias: u16,
    /// Server Receive Maximum: QoS 1/2 PUBLISH a client may have unacknowledged toward the server. At least 1. Default 32.
    pub receive_maximum: u16,
    /// Cap on server→client QoS 1/2 PUBLISH awaiting acknowledgement per session. At least 1. Default 32.
    pub max_inflight: u16,
    /// Most incoming QoS 2 PUBLISH awaiting PUBREL per session. At least 1. Default 100.
    pub max_awaiting_rel: u32,
    /// How long an incoming QoS 2 PUBLISH may wait for its PUBREL before it is dropped. Non-zero. Default 300 s.
    #[serde(with = "duration")]
    pub await_rel_timeout: Duration,
    /// A connection is closed after `keepalive_multiplier × keep-alive` without a packet. At least 1.0. Default 1.5.
    pub keepalive_multiplier: f64,
    /// Keep-alive imposed on clients (MQTT 5 Server Keep Alive), in seconds; absent = use the client's. Default absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_keep_alive: Option<u16>,
    /// Longest keep-alive accepted from MQTT 5 clients, in seconds: a client asking for more (or for none)
    /// is told this value as Server Keep Alive. Absent = no cap. Default absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_keep_alive: Option<u16>,
    /// Longest session expiry granted; longer requests are cut to this. At most 2^32−1 s. Default 2 h.
    #[serde(with = "duration")]
    pub max_session_expiry: Duration,
    /// A new connection must deliver a complete CONNECT within this; trickled bytes do not extend it. Non-zero. Default 10 s.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Bound on messages queued per session (offline, or inflight window full). At least 1. Default 10000
    /// (an hour of 1 msg/s). In durable mode a persistent session's offline queue lives in the store, not in memory.
    pub max_mqueue_len: u32,
    /// Bound on the bytes (topic + payload) queued per session; whichever bound is reached first applies. At least 1.
    /// Default 67108864 (64 MiB).
    pub max_mqueue_bytes: u64,
    /// Whether QoS 0 messages are queued for offline sessions too. Default true.
    pub mqueue_store_qos0: bool,
    /// What a full session queue does with one more message. Default `"drop_oldest"`.
    pub mqueue_overflow: MqueueOverflow,
    /// How a shared subscription group picks its subscriber. Default `"round_robin"`.
    pub shared_subscription_strategy: SharedStrategy,
    /// Unacknowledged QoS 1/2 PUBLISH (MQTT 3.1.1) and PUBREL are resent after this. Non-zero. Default 30 s.
    #[serde(with = "duration")]
    pub retry_interval: Duration,
    /// Deliver at the subscription's QoS even when the message was published at a lower one (EMQX's `upgrade_qos`). Default false.
    pub upgrade_qos: bool,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            max_packet_size: 1024 * 1024,
            max_clientid_len: 65535,
            max_topic_levels: 128,
            max_qos_allowed: 2,
            retain_available: true,
            wildcard_subscription: true,
            shared_subscription: true,
            max_topic_alias: 65535,
            receive_maximum: 32,
            max_inflight: 32,
            max_awaiting_rel: 100,
            await_rel_timeout: Duration::from_secs(300),
            keepalive_multiplier: 1.5,
            server_keep_alive: None,
            max_keep_alive: None,
            max_session_expiry: Duration::from_secs(2 * 3600),
            connect_timeout: Duration::from_secs(10),
            max_mqueue_len: 10_000,
            max_mqueue_bytes: 64 * 1024 * 1024,
            mqueue_store_qos0: true,
            mqueue_overflow: MqueueOverflow::DropOldest,
            shared_subscription_strategy: SharedStrategy::RoundRobin,
            retry_interval: Duration::from_secs(30),
            upgrade_qos: false,
        }
    }
}

/// `[retainer]`: the retained-message store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetainerConfig {
    /// Whether retained messages are stored at all. Default true.
    pub enabled: bool,
    /// Most retained messages kept; 0 = unlimited. Default 0.
    pub max_retained_messages: u32,
    /// Largest retained payload stored, in bytes. Default 1 MiB.
    pub max_payload_size: u32,
}

impl Default for RetainerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_retained_messages: 0,
            max_payload_size: 1024 * 1024,
        }
    }
}

/// `[listeners]`: sockets the broker accepts connections on, by transport then by name.
///
/// The built-in set is one TCP listener named `default` on `0.0.0.0:1883`.
/// A file that defines `[listeners.tcp.<name>]` tables replaces that set with
/// its own (disable the default with `enabled = false`, or simply omit it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Listeners {
    /// MQTT over TCP listeners, keyed by name (`listeners.tcp.<name>`).
    pub tcp: BTreeMap<String, TcpListener>,
    /// MQTT over TLS listeners (`listeners.ssl.<name>`), started when a certificate is set.
    pub ssl: BTreeMap<String, crate::listeners::SslListener>,
    /// MQTT over WebSocket listeners (`listeners.ws.<name>`).
    pub ws: BTreeMap<String, crate::listeners::WsListener>,
    /// MQTT over secure WebSocket listeners (`listeners.wss.<name>`), started when a certificate is set.
    pub wss: BTreeMap<String, crate::listeners::WssListener>,
}

impl Default for Listeners {
    fn default() -> Self {
        Self {
            tcp: BTreeMap::from([("default".to_owned(), TcpListener::default())]),
            ssl: crate::listeners::default_ssl(),
            ws: crate::listeners::default_ws(),
            wss: crate::listeners::default_wss(),
        }
    }
}

/// `[listeners.tcp.<name>]`: one MQTT-over-TCP listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TcpListener {
    /// Whether the listener is started. Default true.
    pub enabled: bool,
    /// Address to bind: `"ip:port"`, `"[v6]:port"`, or a bare port (`"1883"` or `1883`) meaning `0.0.0.0:port`.
    /// Port 0 picks a free port (tests). Default `0.0.0.0:1883`.
    #[serde(with = "bind_addr")]
    pub bind: SocketAddr,
    /// Most concurrent connections on this listener; further accepts are closed at once. At least 1. Default 1024000.
    pub max_connections: u32,
    /// Most new connections accepted per second; further ones are closed at once. 0 = unlimited. Default 0.
    pub max_conn_rate: u32,
    /// Set `TCP_NODELAY` on accepted sockets (lower latency for small packets). Default true.
    pub tcp_nodelay: bool,
}

impl Default for TcpListener {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 1883)),
            max_connections: 1_024_000,
            max_conn_rate: 0,
            tcp_nodelay: true,
        }
    }
}

/// Serde for listener addresses: `"ip:port"` or a bare port, written back as `"ip:port"`.
pub(crate) mod bind_addr {
    use std::fmt;
    use std::net::{Ipv4Addr, SocketAddr};

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(addr: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(addr)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        d.deserialize_any(AddrVisitor)
    }

    fn any_ip(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))
    }

    struct AddrVisitor;

    impl Visitor<'_> for AddrVisitor {
        type Value = SocketAddr;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a listen address such as \"0.0.0.0:1883\", \"[::]:1883\" or a port")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<SocketAddr, E> {
            let t = v.trim();
            if let Ok(addr) = t.parse::<SocketAddr>() {
                return Ok(addr);
            }
            if let Ok(port) = t.parse::<u16>() {
                return Ok(any_ip(port));
            }
            Err(E::custom(format!(
                "invalid listen address `{v}`: expected `ip:port` (e.g. \"0.0.0.0:1883\", \"[::]:1883\") or a port 0..=65535"
            )))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<SocketAddr, E> {
            u16::try_from(v)
                .map(any_ip)
                .map_err(|_| E::custom(format!("invalid listen port {v}: expected 0..=65535")))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<SocketAddr, E> {
            u16::try_from(v)
                .map(any_ip)
                .map_err(|_| E::custom(format!("invalid listen port {v}: expected 0..=65535")))
        }
    }
}

/// `"allow"` or `"deny"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// `"allow"` (the default for `no_match`).
    #[default]
    Allow,
    /// `"deny"`.
    Deny,
}

/// What happens to a client whose publish or subscribe is denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyAction {
    /// `"ignore"`: refuse the operation (reason code / failed SUBACK) and keep the connection (default).
    #[default]
    Ignore,
    /// `"disconnect"`: close the connection.
    Disconnect,
}

/// Which operations an ACL rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AclAction {
    /// `"publish"`.
    Publish,
    /// `"subscribe"`.
    Subscribe,
    /// `"all"`: publish and subscribe.
    All,
}

/// `[authorization]`: the built-in ACL. Rules are checked in order; the first that matches decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthorizationConfig {
    /// Decision when no rule matches. Default `"allow"`.
    pub no_match: Permission,
    /// What to do with a client after a denied publish. Default `"ignore"`.
    pub deny_action: DenyAction,
    /// Ordered rules, written as `[[authorization.rules]]`. Default none.
    pub rules: Vec<AclRule>,
    /// SUBACK reason code for a denied subscription from an MQTT 5 client. Default `"not_authorized"` (0x87).
    pub subscribe_denied_reason: SubscribeDeniedReason,
    /// ACL file in the syntax of EMQX's `acl.conf` (`{allow, {username, "u"}, publish, ["t/#"]}.`);
    /// its rules are checked after `rules`. Empty = none. Default `""`.
    pub file: String,
}

/// The MQTT 5 SUBACK reason code for a subscription the ACL denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscribeDeniedReason {
    /// `"not_authorized"`: 0x87 (the default, as EMQX).
    #[default]
    NotAuthorized,
    /// `"unspecified"`: 0x80, the only failure code 3.1.1 has (some test suites expect it from MQTT 5 too).
    Unspecified,
}

impl Default for AuthorizationConfig {
    fn default() -> Self {
        Self {
            no_match: Permission::Allow,
            deny_action: DenyAction::Ignore,
            rules: Vec::new(),
            subscribe_denied_reason: SubscribeDeniedReason::NotAuthorized,
            file: String::new(),
        }
    }
}

/// One `[[authorization.rules]]` entry.
///
/// `permission`, `action` and `topics` are required: a rule with a guessed
/// default would be a security hole. The optional `username`, `clientid` and
/// `ipaddr` narrow who the rule applies to; all given ones must match, and a
/// rule with none of them applies to every client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    /// Allow or deny.
    pub permission: Permission,
    /// Publish, subscribe or both.
    pub action: AclAction,
    /// Topic filters the rule covers (wildcards allowed). Must not be empty.
    pub topics: Vec<String>,
    /// Applies only to this username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Applies only to this client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clientid: Option<String>,
    /// Applies only to clients from this address or CIDR range (`"10.0.0.0/8"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipaddr: Option<String>,
}

/// `[limits]`: broker-wide bounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most concurrent client connections across all listeners. At least 1. Default 1024000.
    pub max_connections: u32,
    /// Per-client PUBLISH packets per second (token bucket, burst of one second's worth). 0 = unlimited. Default 0.
    pub messages_rate: u32,
    /// Per-client bytes of PUBLISH per second (token bucket, burst of one second's worth). 0 = unlimited. Default 0.
    pub bytes_rate: u32,
    /// What a client over its rate gets: `"throttle"` (its input is paused until it is back within the rate)
    /// or `"disconnect"` (MQTT 5 DISCONNECT 0x96, 3.x closed). Default `"throttle"`.
    pub rate_exceeded: RateExceeded,
    /// Most subscriptions one client may hold; further ones are refused (SUBACK 0x97 / 0x80). 0 = unlimited. Default 0.
    pub max_subscriptions: u32,
    /// Longest a publisher (any protocol) stops reading because its QoS 1/2 messages filled an online subscriber's
    /// queue; past it that subscriber's overflow policy applies. Non-zero, at most 5 s. Default 1 s.
    #[serde(with = "duration")]
    pub max_pause: Duration,
    /// Longest a write may wait for a peer that stopped reading (any protocol, any transport) before the connection
    /// is closed and counted (`limit_write_stall`). Non-zero. Default 30 s.
    #[serde(with = "duration")]
    pub write_stall_timeout: Duration,
}

/// What happens to a client that exceeds its message or byte rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateExceeded {
    /// `"throttle"`: stop reading from the client until its bucket refills (default).
    #[default]
    Throttle,
    /// `"disconnect"`: MQTT 5 DISCONNECT 0x96 (message rate too high); 3.x clients are closed.
    Disconnect,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 1_024_000,
            messages_rate: 0,
            bytes_rate: 0,
            rate_exceeded: RateExceeded::Throttle,
            max_subscriptions: 0,
            max_pause: Duration::from_secs(1),
            write_stall_timeout: Duration::from_secs(30),
        }
    }
}
