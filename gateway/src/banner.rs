//! The start-up banner: every listener and how it is secured, the
//! authentication chain and the ACL source, in one place an operator
//! reads first.

use std::net::SocketAddr;
use std::sync::Arc;

use tracing::{info, warn};
use tributary_config::Config;

use crate::listener_stats::ListenerStats;

/// Log the banner.
pub fn log(
    config: &Config,
    listeners: &[Arc<ListenerStats>],
    api: Option<SocketAddr>,
    udp: &[(&str, Option<SocketAddr>)],
    stomp: &crate::stomp::StompAddrs,
) {
    let a = &config.authentication;
    let mut backends = Vec::new();
    if a.built_in_database.enabled {
        backends.push(if a.built_in_database.scram {
            "built-in database (+SCRAM-SHA-256)"
        } else {
            "built-in database"
        });
    }
    if a.jwt.enabled {
        backends.push("JWT");
    }
    if a.http.enabled {
        backends.push("HTTP");
    }
    let auth = if backends.is_empty() {
        "no backend".to_owned()
    } else {
        backends.join(", ")
    };
    let acl = match (
        config.authorization.rules.len(),
        config.authorization.file.trim(),
    ) {
        (n, "") => format!("{n} inline rules"),
        (n, file) => format!("{n} inline rules + {file}"),
    };
    info!(
        node = %config.node.name,
        version = env!("CARGO_PKG_VERSION"),
        authentication = %auth,
        anonymous = a.anonymous_allowed(),
        client_rules = a.client_rules.len(),
        acl = %acl,
        "Tributary started"
    );
    if backends.is_empty() && !a.anonymous_allowed() {
        warn!(
            "no authentication backend and authentication.allow_anonymous = false: every client is refused"
        );
    }
    for l in listeners {
        info!(listener = %l.label(), addr = %l.addr, security = %l.security, "  MQTT");
    }
    for (name, addr) in udp {
        if let Some(addr) = addr {
            info!(listener = %name, %addr, security = "none (UDP)", "  gateway");
        }
    }
    if let Some(addr) = stomp.tcp {
        info!(listener = "tcp:stomp", %addr, security = "none", "  STOMP");
    }
    if let Some((addr, security)) = &stomp.ssl {
        info!(listener = "ssl:stomp", %addr, security = %security, "  STOMP");
    }
    if let Some(addr) = stomp.http {
        info!(listener = "http:stomp", %addr, security = "none (WebSocket, SockJS)", "  STOMP");
    }
    if let Some(addr) = api {
        info!(listener = "http:api", %addr, security = "HTTP Basic (API keys)", "  HTTP API");
    }
}
