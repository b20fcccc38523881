//! The authentication chain and the ACL, built from `[authentication]` and
//! `[authorization]`, behind the core's `Authenticator` / `Authorizer`
//! seams so every protocol gets the same decisions.
//!
//! # Layout
//! - [`Chain`]: client rules, then the enabled backends in a fixed order
//!   (built-in database, JWT, HTTP), then the anonymous switch.
//! - [`userdb`]: the users file (PBKDF2-SHA256) and `tributary users`.
//! - [`scram`]: SCRAM-SHA-256 enhanced authentication over the users file.
//! - [`jwt`], [`http`]: the other backends.
//! - [`acl_file`]: EMQX `acl.conf`-style rules file.
//!
//! Chain semantics (EMQX 4-style): a backend answers allow, deny or
//! ignore (user unknown, not a token, service unreachable). The first allow
//! or deny decides. When every backend ignores, the client is let in only
//! if anonymous access is on (`allow_anonymous`, which defaults to "on
//! while no backend is enabled"). With no backend at all and anonymous
//! access explicitly off, nothing can check a user name, so every client
//! is refused (the start-up banner says so).

pub mod acl_file;
pub mod acl_reload;
pub mod decoy;
pub mod http;
pub mod jwt;
pub mod scram;
pub mod userdb;

use std::path::Path;
use std::sync::Arc;

use tracing::{debug, warn};
use tributary_config::{ClientRule, ClientRulePermission, Config};
use tributary_core::auth::{ip_in_net, AuthCheck, AuthOutcome, Authenticator, EnhancedStart};
use tributary_core::ClientInfo;

use crate::listener_stats::ListenerStats;

/// Why the chain could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// The users file.
    #[error("authentication.built_in_database: {0}")]
    UserDb(#[from] userdb::UserDbError),
    /// JWT settings.
    #[error(transparent)]
    Jwt(#[from] jwt::JwtError),
    /// HTTP backend settings.
    #[error(transparent)]
    Http(#[from] http::HttpAuthError),
    /// The ACL file.
    #[error("authorization.file: {0}")]
    Acl(#[from] acl_file::AclFileError),
}

/// A compiled client rule.
#[derive(Debug)]
struct CompiledRule {
    allow: bool,
    clientid: Option<String>,
    net: Option<(std::net::IpAddr, u8)>,
}

/// `*` glob: any run of characters.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

fn compile_rule(r: &ClientRule) -> CompiledRule {
    let net = r.ipaddr.as_deref().and_then(|text| {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let ip: std::net::IpAddr = addr.trim().parse().ok()?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        Some((
            ip,
            prefix.and_then(|p| p.trim().parse().ok()).unwrap_or(max),
        ))
    });
    CompiledRule {
        allow: r.permission == ClientRulePermission::Allow,
        clientid: r.clientid.clone(),
        net,
    }
}

/// The authentication chain.
#[derive(Debug)]
pub struct Chain {
    rules: Vec<CompiledRule>,
    users: Option<Arc<userdb::UserDb>>,
    scram: bool,
    jwt: Option<jwt::JwtVerifier>,
    http: Option<Arc<http::HttpBackend>>,
    any_backend: bool,
    anonymous: bool,
}

/// One backend's answer.
enum Answer {
    Allow,
    Deny(AuthOutcome),
    Ignore,
}

impl Chain {
    /// Build from the configuration (reads the users file and keys).
    pub fn new(config: &Config) -> Result<Chain, SecurityError> {
        let a = &config.authentication;
        let users = if a.built_in_database.enabled {
            let db = Arc::new(userdb::UserDb::open(Path::new(
                &a.built_in_database.users_file,
            ))?);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(userdb::reload_on_hangup(Arc::downgrade(&db)));
            }
            Some(db)
        } else {
            None
        };
        let jwt = if a.jwt.enabled {
            Some(jwt::JwtVerifier::new(&a.jwt)?)
        } else {
            None
        };
        let http = if a.http.enabled {
            Some(Arc::new(http::HttpBackend::new(&a.http)?))
        } else {
            None
        };
        Ok(Chain {
            rules: a.client_rules.iter().map(compile_rule).collect(),
            scram: a.built_in_database.scram,
            users,
            jwt,
            http,
            any_backend: a.any_backend(),
            anonymous: a.anonymous_allowed(),
        })
    }

    /// Client-id / address rules: `Some(false)` = denied.
    fn rules_allow(&self, client: &ClientInfo) -> bool {
        for r in &self.rules {
            let id_ok = r
                .clientid
                .as_deref()
                .is_none_or(|p| glob_match(p, &client.client_id));
            let net_ok = r.net.is_none_or(|(net, prefix)| {
                client.peer.is_some_and(|p| ip_in_net(p.ip(), net, prefix))
            });
            if id_ok && net_ok {
                return r.allow;
            }
        }
        true
    }

    /// The synchronous backends, in order.
    fn sync_backends(&self, client: &ClientInfo, password: Option<&[u8]>) -> Answer {
        if let (Some(db), Some(user)) = (&self.users, client.username.as_deref()) {
            if let Some(cred) = db.get(user) {
                return match password {
                    Some(p) if cred.verify(p) => Answer::Allow,
                    _ => Answer::Deny(AuthOutcome::BadCredentials),
                };
            }
        }
        if let Some(jwt) = &self.jwt {
            match jwt.verify(client, password) {
                jwt::Verdict::Valid => return Answer::Allow,
                jwt::Verdict::Invalid(why) => {
                    debug!(client_id = %client.client_id, why, "JWT refused");
                    return Answer::Deny(AuthOutcome::BadCredentials);
                }
                jwt::Verdict::NotAToken => {}
            }
        }
        Answer::Ignore
    }

    /// Nobody decided: the anonymous switch.
    fn fallback(&self, client: &ClientInfo) -> AuthOutcome {
        if self.anonymous {
            return AuthOutcome::Allow;
        }
        match (self.any_backend, client.username.is_some()) {
            (true, true) => AuthOutcome::BadCredentials,
            // No backend: nothing can check a user name (see the module docs).
            (false, _) | (_, false) => AuthOutcome::NotAuthorized,
        }
    }

    fn http_outcome(&self, verdict: http::HttpVerdict, client: &ClientInfo) -> AuthOutcome {
        match verdict {
            http::HttpVerdict::Allow => AuthOutcome::Allow,
            http::HttpVerdict::Deny => AuthOutcome::BadCredentials,
            http::HttpVerdict::Ignore => self.fallback(client),
        }
    }
}

impl Authenticator for Chain {
    fn authenticate(&self, client: &ClientInfo, password: Option<&[u8]>) -> AuthOutcome {
        if !self.rules_allow(client) {
            return AuthOutcome::NotAuthorized;
        }
        match self.sync_backends(client, password) {
            Answer::Allow => AuthOutcome::Allow,
            Answer::Deny(o) => o,
            Answer::Ignore => match self.http.as_ref().and_then(|h| h.cached(client, password)) {
                Some(v) => self.http_outcome(v, client),
                None => self.fallback(client),
            },
        }
    }

    fn check(&self, client: &ClientInfo, password: Option<&[u8]>) -> AuthCheck {
        if !self.rules_allow(client) {
            return AuthCheck::Ready(AuthOutcome::NotAuthorized);
        }
        match self.sync_backends(client, password) {
            Answer::Allow => AuthCheck::Ready(AuthOutcome::Allow),
            Answer::Deny(o) => AuthCheck::Ready(o),
            Answer::Ignore => {
                let Some(http) = &self.http else {
                    return AuthCheck::Ready(self.fallback(client));
                };
                if let Some(v) = http.cached(client, password) {
                    return AuthCheck::Ready(self.http_outcome(v, client));
                }
                let ask = http.ask(client, password);
                let fallback = self.fallback(client);
                AuthCheck::Pending(Box::pin(async move {
                    match ask.await {
                        http::HttpVerdict::Allow => AuthOutcome::Allow,
                        http::HttpVerdict::Deny => AuthOutcome::BadCredentials,
                        http::HttpVerdict::Ignore => fallback,
                    }
                }))
            }
        }
    }

    fn enhanced(&self, method: &str, client: &ClientInfo) -> EnhancedStart {
        match (&self.users, self.scram) {
            (Some(db), true) if method == scram::METHOD => {
                if !self.rules_allow(client) {
                    return EnhancedStart::Refused(AuthOutcome::NotAuthorized);
                }
                EnhancedStart::Started(Box::new(scram::ScramExchange::new(db.clone())))
            }
            _ => EnhancedStart::Unsupported,
        }
    }
}

/// Warn at start-up when clients can connect anonymously on a listener
/// reachable from other hosts (EMQX's behaviour).
pub fn warn_if_open(config: &Config, listeners: &[Arc<ListenerStats>]) {
    if !config.authentication.anonymous_allowed() {
        return;
    }
    for l in listeners {
        if !l.addr.ip().is_loopback() {
            warn!(
                listener = %l.label(), addr = %l.addr,
                "anonymous access is allowed on a non-loopback listener: configure an \
                 authentication backend or set authentication.allow_anonymous = false"
            );
        }
    }
}

/// Check every file the configuration names (users file, keys, ACL file,
/// TLS certificates) the way start-up would use them.
pub fn check_files(config: &Config) -> Result<(), String> {
    Chain::new(config).map_err(|e| e.to_string())?;
    let acl = config.authorization.file.trim();
    if !acl.is_empty() {
        acl_file::load(Path::new(acl)).map_err(|e| format!("authorization.file: {e}"))?;
    }
    let l = &config.listeners;
    let tls = l
        .ssl
        .iter()
        .map(|(n, s)| (format!("listeners.ssl.{n}.ssl_options"), &s.ssl_options))
        .chain(
            l.wss
                .iter()
                .map(|(n, s)| (format!("listeners.wss.{n}.ssl_options"), &s.ssl_options)),
        );
    for (key, options) in tls {
        if options.is_configured() {
            crate::tls::build(options).map_err(|e| format!("{key}: {e}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("sensor-*", "sensor-12"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXcYYb"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exact2"));
        assert!(!glob_match("ab*ba", "aba"));
    }

    fn client(id: &str, user: Option<&str>) -> ClientInfo {
        ClientInfo {
            client_id: id.into(),
            username: user.map(String::from),
            peer: Some("10.0.0.5:1000".parse().expect("addr")),
            protocol: "mqtt",
        }
    }

    #[test]
    fn anonymous_switch_semantics() {
        let mut config = Config::default();
        let chain = Chain::new(&config).expect("chain");
        assert_eq!(
            chain.authenticate(&client("a", None), None),
            AuthOutcome::Allow
        );
        config.authentication.allow_anonymous = Some(false);
        let chain = Chain::new(&config).expect("chain");
        assert_eq!(
            chain.authenticate(&client("a", None), None),
            AuthOutcome::NotAuthorized
        );
        assert_eq!(
            chain.authenticate(&client("a", Some("u")), Some(b"any")),
            AuthOutcome::NotAuthorized
        );
        config.authentication.allow_anonymous = None;
        config.authentication.jwt.enabled = true;
        config.authentication.jwt.secret = "s".into();
        let chain = Chain::new(&config).expect("chain");
        assert_eq!(
            chain.authenticate(&client("a", None), None),
            AuthOutcome::NotAuthorized
        );
        assert_eq!(
            chain.authenticate(&client("a", Some("u")), Some(b"not-a-token")),
            AuthOutcome::BadCredentials
        );
    }

    #[test]
    fn client_rules_first_match() {
        let mut config = Config::default();
        config.authentication.client_rules = vec![
            ClientRule {
                permission: ClientRulePermission::Allow,
                clientid: Some("ok-*".into()),
                ipaddr: None,
            },
            ClientRule {
                permission: ClientRulePermission::Deny,
                clientid: None,
                ipaddr: Some("10.0.0.0/8".into()),
            },
        ];
        let chain = Chain::new(&config).expect("chain");
        assert_eq!(
            chain.authenticate(&client("ok-1", None), None),
            AuthOutcome::Allow
        );
        assert_eq!(
            chain.authenticate(&client("other", None), None),
            AuthOutcome::NotAuthorized
        );
    }
}
