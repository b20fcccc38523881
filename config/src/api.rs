//! `[api]`: the HTTP API, metrics and health endpoint (DESIGN §2: port 18083,
//! EMQX v5 paths, Basic auth with API keys from config).
//!
//! `GET /status` needs no credentials; every `/api/v5/...` path needs one of
//! `api_keys` (HTTP Basic: key as user name, secret as password). With no
//! keys configured the API paths answer 401 to everybody. Checks in
//! [`ApiConfig::check`], keyed under `api.`.

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::sections::bind_addr;
use crate::ConfigProblem;

/// `[api]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Whether the HTTP API listener is started. Default true.
    pub enabled: bool,
    /// Address to bind. Default `0.0.0.0:18083`.
    #[serde(with = "bind_addr")]
    pub bind: SocketAddr,
    /// Credentials accepted by HTTP Basic auth, as `[[api.api_keys]]` tables. Default none.
    pub api_keys: Vec<ApiKey>,
    /// Largest request body accepted (bulk publish), in bytes. At least 1024. Default 4 MiB.
    pub max_body_size: u32,
    /// Most concurrent API connections. At least 1. Default 256.
    pub max_connections: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 18083)),
            api_keys: Vec::new(),
            max_body_size: 4 * 1024 * 1024,
            max_connections: 256,
        }
    }
}

/// One `[[api.api_keys]]` entry.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// The key (Basic auth user name).
    pub key: String,
    /// The secret (Basic auth password).
    pub secret: String,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl ApiConfig {
    /// Every problem in `[api]`.
    pub(crate) fn check(&self, out: &mut Vec<ConfigProblem>) {
        for (i, k) in self.api_keys.iter().enumerate() {
            if k.key.is_empty() || k.key.contains(':') {
                out.push(ConfigProblem::new(
                    format!("api.api_keys[{i}].key"),
                    "must be non-empty and contain no `:`",
                ));
            }
            if k.secret.len() < 8 {
                out.push(ConfigProblem::new(
                    format!("api.api_keys[{i}].secret"),
                    "must be at least 8 characters",
                ));
            }
        }
        if self.max_body_size < 1024 {
            out.push(ConfigProblem::new(
                "api.max_body_size",
                format!("must be at least 1024, got {}", self.max_body_size),
            ));
        }
        if self.max_connections < 1 {
            out.push(ConfigProblem::new(
                "api.max_connections",
                format!("must be at least 1, got {}", self.max_connections),
            ));
        }
    }
}
