//! `[stomp]`: the STOMP gateway on TCP, and STOMP over WebSocket and SockJS
//! on HTTP (DESIGN §2).
//!
//! Like every section: `#[serde(default, deny_unknown_fields)]`, defaults in
//! the `Default` impls mirrored in `src/default.toml`, ranges checked by
//! [`StompConfig::problems`] with `stomp.`-prefixed key paths.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::listeners::{check_tls, TlsOptions};
use crate::{duration, sections::bind_addr, ConfigProblem};

/// What happens to unacknowledged messages when a STOMP connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StompUnacked {
    /// `"redeliver"` (default): shared-subscription messages go to another
    /// member; others to the same `client-id` when it reconnects within
    /// `session_expiry` (QoS 1 subscriptions).
    #[default]
    Redeliver,
    /// `"drop"`: discarded.
    Drop,
}

/// `[stomp]`: the STOMP gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StompConfig {
    /// Whether the STOMP TCP listener is started. Default true.
    pub enabled: bool,
    /// TCP address of STOMP (`"ip:port"` or a bare port). Default `0.0.0.0:61613`.
    #[serde(with = "bind_addr")]
    pub bind: SocketAddr,
    /// Whether the STOMP-over-TLS listener is started (only when
    /// `ssl_options.certfile` is set). Default true.
    pub ssl_enabled: bool,
    /// TCP address of STOMP over TLS. Default `0.0.0.0:61612`.
    #[serde(with = "bind_addr")]
    pub ssl_bind: SocketAddr,
    /// Certificates and client verification of the TLS listener (as
    /// `listeners.ssl.<name>.ssl_options`; `peer_cert_as_username = "cn"`
    /// replaces the CONNECT's `login`).
    pub ssl_options: TlsOptions,
    /// Whether the HTTP listener (STOMP over WebSocket at `/stomp/websocket`,
    /// SockJS at `/stomp`) is started. Default true.
    pub ws_enabled: bool,
    /// HTTP address of STOMP over WebSocket and SockJS. Default `0.0.0.0:61614`.
    #[serde(with = "bind_addr")]
    pub ws_bind: SocketAddr,
    /// Most STOMP connections at once on each listener (SockJS sessions count). Default 100000.
    pub max_connections: u32,
    /// Topic prefix added to destinations, hidden from clients (no `+` or `#`). Default `""`.
    pub mountpoint: String,
    /// Most headers in one frame. Default 32.
    pub max_headers: u32,
    /// Longest header line in bytes. Default 1024.
    pub max_header_length: u32,
    /// Longest frame body in bytes. Default 65536.
    pub max_body_length: u32,
    /// QoS of messages published by SEND (0, 1 or 2). Default 0, as EMQX.
    pub send_qos: u8,
    /// QoS of subscriptions (0 or 1); 1 keeps messages until the client acknowledges
    /// them (and makes redelivery possible). Default 0, as EMQX.
    pub subscribe_qos: u8,
    /// Deliver retained messages on every SUBSCRIBE; otherwise only when the frame
    /// has `retain:true`. Default false.
    pub retained_on_subscribe: bool,
    /// How often the server can send heart-beats (`heart-beat` header, first value);
    /// 0 = never. Default 10 s.
    #[serde(with = "duration")]
    pub heartbeat_send: Duration,
    /// How often the server wants to hear from the client (second value); 0 = never.
    /// Default 10 s.
    #[serde(with = "duration")]
    pub heartbeat_receive: Duration,
    /// A client silent for its negotiated heart-beat interval times this is closed.
    /// At least 1.0. Default 1.5.
    pub heartbeat_grace: f64,
    /// Time from connection to a complete CONNECT frame. Non-zero. Default 10 s.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Unacknowledged messages per connection (QoS 1 window, and `client` /
    /// `client-individual` messages awaiting ACK). At least 1. Default 32.
    pub max_inflight: u32,
    /// Subscriptions per connection. At least 1. Default 100.
    pub max_subscriptions: u32,
    /// Open transactions per connection. At least 1. Default 16.
    pub max_transactions: u32,
    /// Frames buffered in one transaction. At least 1. Default 1000.
    pub max_transaction_frames: u32,
    /// Unacknowledged messages when a connection ends: `"redeliver"` or `"drop"`.
    pub unacked_on_disconnect: StompUnacked,
    /// How long the session of a client that sent a `client-id` header outlives its
    /// connection under `"redeliver"` (0 = not at all). Default 5 min.
    #[serde(with = "duration")]
    pub session_expiry: Duration,
    /// SockJS transport settings.
    pub sockjs: SockJsConfig,
}

impl Default for StompConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 61613)),
            ssl_enabled: true,
            ssl_bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 61612)),
            ssl_options: TlsOptions::default(),
            ws_enabled: true,
            ws_bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 61614)),
            max_connections: 100_000,
            mountpoint: String::new(),
            max_headers: 32,
            max_header_length: 1024,
            max_body_length: 65536,
            send_qos: 0,
            subscribe_qos: 0,
            retained_on_subscribe: false,
            heartbeat_send: Duration::from_secs(10),
            heartbeat_receive: Duration::from_secs(10),
            heartbeat_grace: 1.5,
            connect_timeout: Duration::from_secs(10),
            max_inflight: 32,
            max_subscriptions: 100,
            max_transactions: 16,
            max_transaction_frames: 1000,
            unacked_on_disconnect: StompUnacked::Redeliver,
            session_expiry: Duration::from_secs(300),
            sockjs: SockJsConfig::default(),
        }
    }
}

/// `[stomp.sockjs]`: the SockJS 0.3 transports at `/stomp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SockJsConfig {
    /// Whether SockJS is served at `/stomp` (the raw WebSocket at
    /// `/stomp/websocket` is always served). Default true.
    pub enabled: bool,
    /// Interval of `h` frames on an idle receiving connection. Non-zero. Default 25 s.
    #[serde(with = "duration")]
    pub heartbeat: Duration,
    /// A session with no receiving connection for this long is closed. Non-zero. Default 5 s.
    #[serde(with = "duration")]
    pub disconnect_delay: Duration,
    /// Bytes one streaming response carries before it is closed (the client
    /// reconnects). At least 1. Default 131072.
    pub response_limit: u32,
    /// Outgoing messages buffered per session while no receiver is attached. At least 1.
    /// Default 1000.
    pub max_queued_messages: u32,
    /// URL of the SockJS client script loaded by the iframe page.
    pub sockjs_url: String,
    /// Report `cookie_needed` in `/info` and set a `JSESSIONID` cookie. Default false.
    pub cookie_needed: bool,
    /// Also serve the sockjs-protocol test services `/echo`, `/close`,
    /// `/disabled_websocket_echo` and `/cookie_needed_echo` (response limit 4096).
    /// Default false.
    pub test_endpoints: bool,
}

impl Default for SockJsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            heartbeat: Duration::from_secs(25),
            disconnect_delay: Duration::from_secs(5),
            response_limit: 128 * 1024,
            max_queued_messages: 1000,
            sockjs_url: "https://cdn.jsdelivr.net/npm/sockjs-client@1/dist/sockjs.min.js".into(),
            cookie_needed: false,
            test_endpoints: false,
        }
    }
}

impl StompConfig {
    /// Every problem in this section, keyed under `stomp.`.
    pub(crate) fn problems(&self) -> Vec<ConfigProblem> {
        let mut p = Vec::new();
        let mut push =
            |key: &str, msg: String| p.push(ConfigProblem::new(format!("stomp.{key}"), msg));
        if self.mountpoint.contains(['+', '#']) {
            push(
                "mountpoint",
                format!("must not contain `+` or `#`, got {:?}", self.mountpoint),
            );
        }
        for (key, value) in [
            ("max_connections", self.max_connections),
            ("max_headers", self.max_headers),
            ("max_body_length", self.max_body_length),
            ("max_inflight", self.max_inflight),
            ("max_subscriptions", self.max_subscriptions),
            ("max_transactions", self.max_transactions),
            ("max_transaction_frames", self.max_transaction_frames),
            ("sockjs.response_limit", self.sockjs.response_limit),
            (
                "sockjs.max_queued_messages",
                self.sockjs.max_queued_messages,
            ),
        ] {
            if value < 1 {
                push(key, format!("must be at least 1, got {value}"));
            }
        }
        if self.max_header_length < 64 {
            push(
                "max_header_length",
                format!("must be at least 64, got {}", self.max_header_length),
            );
        }
        if self.send_qos > 2 {
            push(
                "send_qos",
                format!("must be 0, 1 or 2, got {}", self.send_qos),
            );
        }
        if self.subscribe_qos > 1 {
            push(
                "subscribe_qos",
                format!("must be 0 or 1, got {}", self.subscribe_qos),
            );
        }
        if !(self.heartbeat_grace.is_finite() && self.heartbeat_grace >= 1.0) {
            push(
                "heartbeat_grace",
                format!(
                    "must be a finite number of at least 1.0, got {}",
                    self.heartbeat_grace
                ),
            );
        }
        for (key, value) in [
            ("connect_timeout", self.connect_timeout),
            ("sockjs.heartbeat", self.sockjs.heartbeat),
            ("sockjs.disconnect_delay", self.sockjs.disconnect_delay),
        ] {
            if value.is_zero() {
                push(key, "must be greater than zero".into());
            }
        }
        if self.session_expiry.as_secs() > u64::from(u32::MAX) {
            push(
                "session_expiry",
                format!(
                    "must be at most {} seconds, got {}",
                    u32::MAX,
                    duration::format_duration(self.session_expiry)
                ),
            );
        }
        if self.enabled
            && self.ws_enabled
            && self.bind.port() == self.ws_bind.port()
            && self.bind.port() != 0
            && (self.bind.ip() == self.ws_bind.ip()
                || self.bind.ip().is_unspecified()
                || self.ws_bind.ip().is_unspecified())
        {
            push(
                "ws_bind",
                format!("{} collides with stomp.bind = {}", self.ws_bind, self.bind),
            );
        }
        if self.ssl_enabled {
            check_tls("stomp.ssl_options", &self.ssl_options, &mut p);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(StompConfig::default().problems(), Vec::new());
    }

    #[test]
    fn problems_name_their_keys() {
        let c = StompConfig {
            mountpoint: "a/#".into(),
            max_headers: 0,
            subscribe_qos: 2,
            heartbeat_grace: 0.5,
            ws_bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 61613)),
            sockjs: SockJsConfig {
                disconnect_delay: Duration::ZERO,
                ..SockJsConfig::default()
            },
            ..StompConfig::default()
        };
        let keys: Vec<_> = c.problems().into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "stomp.mountpoint",
                "stomp.max_headers",
                "stomp.subscribe_qos",
                "stomp.heartbeat_grace",
                "stomp.sockjs.disconnect_delay",
                "stomp.ws_bind",
            ]
        );
    }
}
