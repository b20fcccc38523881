//! `[authentication]`: who may connect — the anonymous switch, client-id / address
//! rules, and the backends of the authentication chain (built-in user database,
//! JWT, HTTP), in that fixed order.
//!
//! Anonymous access follows EMQX: while no backend is enabled, clients without
//! credentials are let in (the gateway warns at start-up when a non-loopback
//! listener is open that way); enabling any backend turns anonymous access off
//! unless `allow_anonymous = true` says otherwise. Checks in
//! [`AuthenticationConfig::check`], keyed under `authentication.`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration;
use crate::ConfigProblem;

/// `[authentication]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthenticationConfig {
    /// Accept clients whose credentials no backend recognises (and clients without any).
    /// Unset (the default): allowed while no backend is enabled, refused once one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_anonymous: Option<bool>,
    /// Client-id and address rules checked before any backend, first match wins:
    /// `deny` refuses the connection, `allow` lets it continue to the backends.
    pub client_rules: Vec<ClientRule>,
    /// `[authentication.built_in_database]`: users file with salted password hashes.
    pub built_in_database: BuiltInDatabase,
    /// `[authentication.jwt]`: JSON Web Tokens in the password (or user name).
    pub jwt: JwtAuth,
    /// `[authentication.http]`: ask an HTTP service.
    pub http: HttpAuth,
}

impl AuthenticationConfig {
    /// Whether any authentication backend is enabled.
    pub fn any_backend(&self) -> bool {
        self.built_in_database.enabled || self.jwt.enabled || self.http.enabled
    }

    /// The anonymous switch in force: the explicit value, else true exactly while no
    /// backend is enabled.
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous.unwrap_or(!self.any_backend())
    }
}

/// `"allow"` or `"deny"` for a client rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientRulePermission {
    /// `"allow"`: continue to the backends.
    Allow,
    /// `"deny"`: refuse the connection (CONNACK 0x87 / 0x05).
    Deny,
}

/// One `[[authentication.client_rules]]` entry. All given conditions must match; at least one is required.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRule {
    /// Allow or deny.
    pub permission: ClientRulePermission,
    /// Client id pattern; `*` matches any run of characters (`"sensor-*"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clientid: Option<String>,
    /// Client address or CIDR range (`"10.0.0.0/8"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipaddr: Option<String>,
}

/// `[authentication.built_in_database]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BuiltInDatabase {
    /// Whether this backend is in the chain. Default false.
    pub enabled: bool,
    /// Users file: one `username:$pbkdf2-sha256$i=N$salt$hash` line per user, written by
    /// `tributary users add`. Re-read when it changes. Required when enabled. Default `""`.
    pub users_file: String,
    /// Offer MQTT 5 enhanced authentication with SCRAM-SHA-256 against these users. Default false.
    pub scram: bool,
}

/// JWT signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JwtAlgorithm {
    /// `"hs256"`: HMAC-SHA256 with `secret` (default).
    #[default]
    Hs256,
    /// `"rs256"`: RSA PKCS#1 v1.5 SHA-256 with the public key in `public_key`.
    Rs256,
}

/// Where the token is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JwtFrom {
    /// `"password"` (default).
    #[default]
    Password,
    /// `"username"`.
    Username,
}

/// `[authentication.jwt]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtAuth {
    /// Whether this backend is in the chain. Default false.
    pub enabled: bool,
    /// `"hs256"` or `"rs256"`. Default `"hs256"`.
    pub algorithm: JwtAlgorithm,
    /// HS256 secret. Required for hs256. Default `""`.
    pub secret: String,
    /// The secret is base64 text. Default false.
    pub secret_base64_encoded: bool,
    /// RS256: PEM file with the public key (`BEGIN PUBLIC KEY`). Required for rs256. Default `""`.
    pub public_key: String,
    /// Where the token is: `"password"` or `"username"`. Default `"password"`.
    pub from: JwtFrom,
    /// Claims that must equal these values; `${clientid}` and `${username}` expand to the
    /// client's. E.g. `{ sub = "${clientid}" }`. `exp` and `nbf` are always checked when present.
    /// Default none.
    pub verify_claims: BTreeMap<String, String>,
    /// Refuse a token without an `exp` claim (one that would never expire). Default true.
    pub require_exp: bool,
    /// How far the issuer's clock may run ahead of ours: a token whose `nbf` is at most this
    /// far in the future is accepted. At most 5 min. Default 30 s.
    #[serde(with = "duration")]
    pub clock_skew: Duration,
}

impl Default for JwtAuth {
    fn default() -> Self {
        Self {
            enabled: false,
            algorithm: JwtAlgorithm::Hs256,
            secret: String::new(),
            secret_base64_encoded: false,
            public_key: String::new(),
            from: JwtFrom::Password,
            verify_claims: BTreeMap::new(),
            require_exp: true,
            clock_skew: Duration::from_secs(30),
        }
    }
}

/// `[authentication.http]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpAuth {
    /// Whether this backend is in the chain. Default false.
    pub enabled: bool,
    /// `http://host:port/path` or `https://…` the JSON body is POSTed to. Required when
    /// enabled. Default `""`.
    pub url: String,
    /// PEM bundle of CAs an `https://` server's certificate must chain to; `""` = the
    /// system bundle (`/etc/ssl/certs/ca-certificates.crt`). Default `""`.
    pub cacertfile: String,
    /// A request that has not answered within this counts as `ignore`. Non-zero. Default 5 s.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Extra request headers. Default none.
    pub headers: BTreeMap<String, String>,
    /// JSON body fields; `${clientid}`, `${username}`, `${password}`, `${peerhost}`,
    /// `${protocol}` expand. Default clientid, username, password, peerhost.
    pub body: BTreeMap<String, String>,
    /// How long an `allow` or `deny` answer is reused for the same credentials; `"0s"` = no cache.
    /// Default 60 s.
    #[serde(with = "duration")]
    pub cache_ttl: Duration,
    /// Most cached answers. Default 10000.
    pub cache_size: u32,
}

impl Default for HttpAuth {
    fn default() -> Self {
        Self {
            enabled: false,
            url: String::new(),
            cacertfile: String::new(),
            timeout: Duration::from_secs(5),
            headers: BTreeMap::new(),
            body: BTreeMap::from(
                [
                    ("clientid", "${clientid}"),
                    ("username", "${username}"),
                    ("password", "${password}"),
                    ("peerhost", "${peerhost}"),
                ]
                .map(|(k, v)| (k.to_owned(), v.to_owned())),
            ),
            cache_ttl: Duration::from_secs(60),
            cache_size: 10_000,
        }
    }
}

impl AuthenticationConfig {
    /// Every problem in `[authentication]`.
    pub(crate) fn check(&self, out: &mut Vec<ConfigProblem>) {
        let mut push = |k: &str, m: &str| {
            out.push(ConfigProblem::new(
                format!("authentication.{k}"),
                m.to_owned(),
            ))
        };
        for (i, r) in self.client_rules.iter().enumerate() {
            if r.clientid.is_none() && r.ipaddr.is_none() {
                push(
                    &format!("client_rules[{i}]"),
                    "must name a clientid pattern or an ipaddr",
                );
            }
            if r.clientid.as_deref().is_some_and(str::is_empty) {
                push(
                    &format!("client_rules[{i}].clientid"),
                    "must not be empty when given",
                );
            }
            if let Some(ip) = &r.ipaddr {
                if let Err(why) = crate::validate::check_ip_range(ip) {
                    push(&format!("client_rules[{i}].ipaddr"), &why);
                }
            }
        }
        let db = &self.built_in_database;
        if db.enabled && db.users_file.trim().is_empty() {
            push(
                "built_in_database.users_file",
                "must name the users file when the backend is enabled",
            );
        }
        if db.scram && !db.enabled {
            push(
                "built_in_database.scram",
                "needs built_in_database.enabled = true",
            );
        }
        let jwt = &self.jwt;
        if jwt.clock_skew > Duration::from_secs(300) {
            push("jwt.clock_skew", "must be at most 5m");
        }
        if jwt.enabled {
            match jwt.algorithm {
                JwtAlgorithm::Hs256 if jwt.secret.is_empty() => {
                    push("jwt.secret", "must be set for algorithm \"hs256\"")
                }
                JwtAlgorithm::Rs256 if jwt.public_key.trim().is_empty() => push(
                    "jwt.public_key",
                    "must name a PEM public key file for algorithm \"rs256\"",
                ),
                _ => {}
            }
        }
        let http = &self.http;
        let has_host = |scheme: &str| {
            http.url
                .strip_prefix(scheme)
                .is_some_and(|rest| !rest.is_empty())
        };
        if http.enabled && !(has_host("http://") || has_host("https://")) {
            push(
                "http.url",
                "must be an http:// or https:// URL when the backend is enabled",
            );
        }
        if http.timeout.is_zero() {
            push("http.timeout", "must be greater than zero");
        }
    }
}

/// An address or CIDR range (`"10.0.0.0/8"`, `"::1"`) as (address, prefix
/// length); `None` when it is neither or the prefix is too long.
pub fn parse_ip_net(text: &str) -> Option<(std::net::IpAddr, u8)> {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let ip: std::net::IpAddr = addr.trim().parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
        None => max,
    };
    Some((ip, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_switch_follows_backends() {
        let mut a = AuthenticationConfig::default();
        assert!(a.anonymous_allowed());
        a.jwt.enabled = true;
        assert!(!a.anonymous_allowed());
        a.allow_anonymous = Some(true);
        assert!(a.anonymous_allowed());
        a.jwt.enabled = false;
        a.allow_anonymous = Some(false);
        assert!(!a.anonymous_allowed());
    }

    #[test]
    fn enabled_backends_need_their_keys() {
        let mut a = AuthenticationConfig::default();
        a.built_in_database.enabled = true;
        a.jwt.enabled = true;
        a.http.enabled = true;
        let mut out = Vec::new();
        a.check(&mut out);
        let keys: Vec<_> = out.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "authentication.built_in_database.users_file",
                "authentication.jwt.secret",
                "authentication.http.url"
            ]
        );
    }

    #[test]
    fn addresses_and_ranges_parse_and_bad_prefixes_do_not() {
        use std::net::IpAddr;
        let v4: IpAddr = "10.0.0.0".parse().expect("ip");
        assert_eq!(super::parse_ip_net("10.0.0.0/8"), Some((v4, 8)));
        assert_eq!(super::parse_ip_net("10.0.0.0"), Some((v4, 32)));
        assert_eq!(super::parse_ip_net("::1").map(|n| n.1), Some(128));
        assert_eq!(super::parse_ip_net("10.0.0.0/33"), None);
        assert_eq!(super::parse_ip_net("::/129"), None);
        assert_eq!(super::parse_ip_net("sensors"), None);
    }
}
