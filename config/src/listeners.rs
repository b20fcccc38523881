//! `[listeners.ssl.<name>]`, `[listeners.ws.<name>]`, `[listeners.wss.<name>]`:
//! MQTT over TLS, WebSocket and secure WebSocket (DESIGN §2: 8883, 8083, 8084,
//! path `/mqtt`), and the TLS options they share (`ssl_options`, EMQX's name).
//!
//! A TLS listener (`ssl`, `wss`) is started only when its `ssl_options.certfile`
//! is set: the shipped defaults name no certificate, so they bind nothing.
//! Like every section: `#[serde(default, deny_unknown_fields)]`, defaults in
//! the `Default` impls mirrored in `src/default.toml`; checks in
//! [`check_listener_kinds`] with key paths under `listeners.`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration;
use crate::sections::bind_addr;
use crate::{Config, ConfigProblem};

/// Whether client certificates are asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsVerify {
    /// `"verify_none"`: no client certificate is requested (default).
    #[default]
    VerifyNone,
    /// `"verify_peer"`: client certificates are requested and checked against `cacertfile`.
    VerifyPeer,
}

/// Take the MQTT user name from the client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerCertAs {
    /// `"disabled"`: the user name is what the client sends (default).
    #[default]
    Disabled,
    /// `"cn"`: the certificate subject's Common Name replaces the user name.
    Cn,
}

/// `ssl_options` of a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsOptions {
    /// PEM file with the server certificate chain (leaf first). Empty = not configured:
    /// the listener is not started. Default `""`.
    pub certfile: String,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1). Required with `certfile`. Default `""`.
    pub keyfile: String,
    /// PEM bundle of CAs that client certificates must chain to. Required with `verify_peer`. Default `""`.
    pub cacertfile: String,
    /// `"verify_none"` or `"verify_peer"` (mutual TLS). Default `"verify_none"`.
    pub verify: TlsVerify,
    /// With `verify_peer`: refuse clients that present no certificate. Default true.
    pub fail_if_no_peer_cert: bool,
    /// Take the user name from the client certificate (`"cn"`). Default `"disabled"`.
    pub peer_cert_as_username: PeerCertAs,
    /// TLS versions offered: `"tlsv1.2"`, `"tlsv1.3"`. Default both.
    pub versions: Vec<String>,
    /// A TLS handshake must complete within this. Non-zero. Default 15 s.
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    /// How often the certificate, key and CA files are checked for changes and reloaded
    /// (new connections use the new files; existing ones are unaffected). SIGHUP reloads
    /// at once. `"0s"` = only on SIGHUP. Default 10 s.
    #[serde(with = "duration")]
    pub reload_interval: Duration,
}

impl Default for TlsOptions {
    fn default() -> Self {
        Self {
            certfile: String::new(),
            keyfile: String::new(),
            cacertfile: String::new(),
            verify: TlsVerify::VerifyNone,
            fail_if_no_peer_cert: true,
            peer_cert_as_username: PeerCertAs::Disabled,
            versions: vec!["tlsv1.2".to_owned(), "tlsv1.3".to_owned()],
            handshake_timeout: Duration::from_secs(15),
            reload_interval: Duration::from_secs(10),
        }
    }
}

impl TlsOptions {
    /// Whether a certificate is configured (the listener is started only then).
    pub fn is_configured(&self) -> bool {
        !self.certfile.trim().is_empty()
    }
}

/// `[listeners.ssl.<name>]`: one MQTT-over-TLS listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SslListener {
    /// Whether the listener is started (and only when `ssl_options.certfile` is set). Default true.
    pub enabled: bool,
    /// Address to bind, as for TCP listeners. Default `0.0.0.0:8883`.
    #[serde(with = "bind_addr")]
    pub bind: SocketAddr,
    /// Most concurrent connections on this listener. At least 1. Default 1024000.
    pub max_connections: u32,
    /// Most new connections accepted per second; further ones are closed at once. 0 = unlimited. Default 0.
    pub max_conn_rate: u32,
    /// Set `TCP_NODELAY` on accepted sockets. Default true.
    pub tcp_nodelay: bool,
    /// Certificates and client verification.
    pub ssl_options: TlsOptions,
}

impl Default for SslListener {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8883)),
            max_connections: 1_024_000,
            max_conn_rate: 0,
            tcp_nodelay: true,
            ssl_options: TlsOptions::default(),
        }
    }
}

/// `[listeners.ws.<name>]`: one MQTT-over-WebSocket listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsListener {
    /// Whether the listener is started. Default true.
    pub enabled: bool,
    /// Address to bind, as for TCP listeners. Default `0.0.0.0:8083`.
    #[serde(with = "bind_addr")]
    pub bind: SocketAddr,
    /// Most concurrent connections on this listener. At least 1. Default 1024000.
    pub max_connections: u32,
    /// Most new connections accepted per second. 0 = unlimited. Default 0.
    pub max_conn_rate: u32,
    /// Set `TCP_NODELAY` on accepted sockets. Default true.
    pub tcp_nodelay: bool,
    /// HTTP path of the WebSocket endpoint; other paths get 404. Starts with `/`. Default `"/mqtt"`.
    pub path: String,
    /// Header naming the client's address when behind a proxy (`"x-forwarded-for"` or
    /// `"forwarded"`), for ACL and logs. Honoured only on connections from `trusted_proxies`;
    /// the client is the rightmost address in it that is not a trusted proxy. Empty = use the
    /// socket's peer. Default `""`.
    pub proxy_address_header: String,
    /// Addresses or CIDR ranges of the proxies whose `proxy_address_header` is believed.
    /// Default `["127.0.0.1", "::1"]` (a proxy on the same host).
    pub trusted_proxies: Vec<String>,
    /// Largest WebSocket message accepted, in bytes. At least 1024. Default 1 MiB plus 1 KiB
    /// (one maximum-size MQTT packet and framing).
    pub max_frame_size: u32,
}

impl Default for WsListener {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8083)),
            max_connections: 1_024_000,
            max_conn_rate: 0,
            tcp_nodelay: true,
            path: "/mqtt".to_owned(),
            proxy_address_header: String::new(),
            trusted_proxies: vec!["127.0.0.1".to_owned(), "::1".to_owned()],
            max_frame_size: 1024 * 1024 + 1024,
        }
    }
}

/// `[listeners.wss.<name>]`: one MQTT-over-secure-WebSocket listener: the WebSocket
/// keys plus `ssl_options`. Started only when `ssl_options.certfile` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WssListener {
    /// Whether the listener is started (and only when `ssl_options.certfile` is set). Default true.
    pub enabled: bool,
    /// Address to bind. Default `0.0.0.0:8084`.
    #[serde(with = "bind_addr")]
    pub bind: SocketAddr,
    /// Most concurrent connections on this listener. At least 1. Default 1024000.
    pub max_connections: u32,
    /// Most new connections accepted per second. 0 = unlimited. Default 0.
    pub max_conn_rate: u32,
    /// Set `TCP_NODELAY` on accepted sockets. Default true.
    pub tcp_nodelay: bool,
    /// HTTP path of the WebSocket endpoint. Default `"/mqtt"`.
    pub path: String,
    /// As for `ws` listeners. Default `""`.
    pub proxy_address_header: String,
    /// As for `ws` listeners. Default `["127.0.0.1", "::1"]`.
    pub trusted_proxies: Vec<String>,
    /// Largest WebSocket message accepted, in bytes. Default 1 MiB plus 1 KiB.
    pub max_frame_size: u32,
    /// Certificates and client verification.
    pub ssl_options: TlsOptions,
}

impl Default for WssListener {
    fn default() -> Self {
        let ws = WsListener::default();
        Self {
            enabled: true,
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8084)),
            max_connections: ws.max_connections,
            max_conn_rate: 0,
            tcp_nodelay: true,
            path: ws.path,
            proxy_address_header: String::new(),
            trusted_proxies: ws.trusted_proxies,
            max_frame_size: ws.max_frame_size,
            ssl_options: TlsOptions::default(),
        }
    }
}

impl WssListener {
    /// The WebSocket part of this listener.
    pub fn ws(&self) -> WsListener {
        WsListener {
            enabled: self.enabled,
            bind: self.bind,
            max_connections: self.max_connections,
            max_conn_rate: self.max_conn_rate,
            tcp_nodelay: self.tcp_nodelay,
            path: self.path.clone(),
            proxy_address_header: self.proxy_address_header.clone(),
            trusted_proxies: self.trusted_proxies.clone(),
            max_frame_size: self.max_frame_size,
        }
    }
}

/// Default `ssl` listener set: one named `default` (started once a certificate is set).
pub(crate) fn default_ssl() -> BTreeMap<String, SslListener> {
    BTreeMap::from([("default".to_owned(), SslListener::default())])
}

/// Default `ws` listener set: one named `default` on 8083.
pub(crate) fn default_ws() -> BTreeMap<String, WsListener> {
    BTreeMap::from([("default".to_owned(), WsListener::default())])
}

/// Default `wss` listener set: one named `default` (started once a certificate is set).
pub(crate) fn default_wss() -> BTreeMap<String, WssListener> {
    BTreeMap::from([("default".to_owned(), WssListener::default())])
}

pub(crate) fn check_tls(prefix: &str, t: &TlsOptions, out: &mut Vec<ConfigProblem>) {
    let mut push = |k: &str, m: String| out.push(ConfigProblem::new(format!("{prefix}.{k}"), m));
    if t.is_configured() && t.keyfile.trim().is_empty() {
        push("keyfile", "must be set when certfile is set".to_owned());
    }
    if !t.is_configured() && !t.keyfile.trim().is_empty() {
        push("certfile", "must be set when keyfile is set".to_owned());
    }
    if t.verify == TlsVerify::VerifyPeer && t.cacertfile.trim().is_empty() {
        push(
            "cacertfile",
            "must name a CA bundle when verify = \"verify_peer\"".to_owned(),
        );
    }
    if t.peer_cert_as_username == PeerCertAs::Cn && t.verify != TlsVerify::VerifyPeer {
        push(
            "peer_cert_as_username",
            "needs verify = \"verify_peer\" (an unverified certificate proves nothing)".to_owned(),
        );
    }
    if t.versions.is_empty() {
        push(
            "versions",
            "must list at least one of \"tlsv1.2\", \"tlsv1.3\"".to_owned(),
        );
    }
    for (i, v) in t.versions.iter().enumerate() {
        if !matches!(v.as_str(), "tlsv1.2" | "tlsv1.3") {
            push(
                &format!("versions[{i}]"),
                format!("must be \"tlsv1.2\" or \"tlsv1.3\", got {v:?}"),
            );
        }
    }
    if t.handshake_timeout.is_zero() {
        push("handshake_timeout", "must be greater than zero".to_owned());
    }
}

fn check_ws(prefix: &str, w: &WsListener, out: &mut Vec<ConfigProblem>) {
    let (path, header, frame) = (&w.path, &w.proxy_address_header, w.max_frame_size);
    for (i, p) in w.trusted_proxies.iter().enumerate() {
        if crate::security::parse_ip_net(p).is_none() {
            out.push(ConfigProblem::new(
                format!("{prefix}.trusted_proxies[{i}]"),
                format!("must be an address or a CIDR range, got {p:?}"),
            ));
        }
    }
    if !path.starts_with('/') {
        out.push(ConfigProblem::new(
            format!("{prefix}.path"),
            format!("must start with `/`, got {path:?}"),
        ));
    }
    if !header.is_empty()
        && !header
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        out.push(ConfigProblem::new(
            format!("{prefix}.proxy_address_header"),
            format!("must be an HTTP header name such as \"x-forwarded-for\", got {header:?}"),
        ));
    }
    if frame < 1024 {
        out.push(ConfigProblem::new(
            format!("{prefix}.max_frame_size"),
            format!("must be at least 1024, got {frame}"),
        ));
    }
}

/// Every problem in the `ssl`, `ws` and `wss` listener tables, plus bind collisions between
/// any two enabled stream listeners (TCP included).
pub(crate) fn check_listener_kinds(config: &Config, out: &mut Vec<ConfigProblem>) {
    let l = &config.listeners;
    let mut binds: Vec<(String, SocketAddr)> = l
        .tcp
        .iter()
        .filter(|(_, t)| t.enabled)
        .map(|(n, t)| (format!("listeners.tcp.{n}"), t.bind))
        .collect();
    for (name, s) in &l.ssl {
        let prefix = format!("listeners.ssl.{name}");
        if s.max_connections < 1 {
            out.push(ConfigProblem::new(
                format!("{prefix}.max_connections"),
                format!("must be at least 1, got {}", s.max_connections),
            ));
        }
        check_tls(&format!("{prefix}.ssl_options"), &s.ssl_options, out);
        if s.enabled && s.ssl_options.is_configured() {
            binds.push((prefix, s.bind));
        }
    }
    for (name, w) in &l.ws {
        let prefix = format!("listeners.ws.{name}");
        if w.max_connections < 1 {
            out.push(ConfigProblem::new(
                format!("{prefix}.max_connections"),
                format!("must be at least 1, got {}", w.max_connections),
            ));
        }
        check_ws(&prefix, w, out);
        if w.enabled {
            binds.push((prefix, w.bind));
        }
    }
    for (name, w) in &l.wss {
        let prefix = format!("listeners.wss.{name}");
        if w.max_connections < 1 {
            out.push(ConfigProblem::new(
                format!("{prefix}.max_connections"),
                format!("must be at least 1, got {}", w.max_connections),
            ));
        }
        check_ws(&prefix, &w.ws(), out);
        check_tls(&format!("{prefix}.ssl_options"), &w.ssl_options, out);
        if w.enabled && w.ssl_options.is_configured() {
            binds.push((prefix, w.bind));
        }
    }
    if config.api.enabled {
        binds.push(("api".to_owned(), config.api.bind));
    }
    // TCP-vs-TCP clashes are reported by the TCP check; report each other pair once.
    for (i, (key, addr)) in binds.iter().enumerate() {
        let clash = binds[..i].iter().find(|(other, earlier)| {
            !(key.starts_with("listeners.tcp.") && other.starts_with("listeners.tcp."))
                && earlier.port() == addr.port()
                && addr.port() != 0
                && (earlier.ip() == addr.ip()
                    || earlier.ip().is_unspecified()
                    || addr.ip().is_unspecified())
        });
        if let Some((other, earlier)) = clash {
            out.push(ConfigProblem::new(
                format!("{key}.bind"),
                format!("{addr} collides with {other}.bind = {earlier}"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_needs_key_and_ca_for_mtls() {
        let mut out = Vec::new();
        let t = TlsOptions {
            certfile: "c.pem".into(),
            verify: TlsVerify::VerifyPeer,
            versions: vec!["sslv3".into()],
            ..TlsOptions::default()
        };
        check_tls("x", &t, &mut out);
        let keys: Vec<_> = out.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["x.keyfile", "x.cacertfile", "x.versions[0]"]);
    }

    #[test]
    fn ws_path_and_header() {
        let mut out = Vec::new();
        let w = WsListener {
            path: "mqtt".into(),
            proxy_address_header: "x forwarded".into(),
            max_frame_size: 10,
            trusted_proxies: vec!["10.0.0.0/8".into(), "proxy.example".into()],
            ..WsListener::default()
        };
        check_ws("w", &w, &mut out);
        let keys: Vec<_> = out.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "w.trusted_proxies[1]",
                "w.path",
                "w.proxy_address_header",
                "w.max_frame_size"
            ]
        );
    }
}
