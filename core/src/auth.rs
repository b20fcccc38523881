//! Authentication and authorization seams, shared by every protocol, and
//! the built-in rule-based authorizer (first matching rule wins, in the
//! spirit of EMQX's `acl.conf`).
//!
//! Authentication has a synchronous entry ([`Authenticator::authenticate`])
//! and one that may answer later ([`Authenticator::check`], returning
//! [`AuthCheck::Pending`] with a future the connection's driver awaits, for
//! backends that ask a remote service). Protocol channels stay sans-IO: they
//! hand the future to their driver and resume when it resolves. MQTT 5
//! enhanced authentication (§4.12) is a sequence of [`EnhancedAuth::step`]s
//! obtained from [`Authenticator::enhanced`]. See ADR 0011.

use std::borrow::Cow;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use crate::session::ClientInfo;

/// Outcome of an authentication attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Credentials accepted.
    Allow,
    /// Bad user name or password.
    BadCredentials,
    /// Not authorized to connect.
    NotAuthorized,
}

/// An authentication decision still being made (a remote backend, say).
/// It owns everything it needs (`'static`) and is awaited by the driver.
pub type AuthFuture = Pin<Box<dyn Future<Output = AuthOutcome> + Send + 'static>>;

/// The answer of [`Authenticator::check`].
pub enum AuthCheck {
    /// Decided now.
    Ready(AuthOutcome),
    /// Decided when the future resolves.
    Pending(AuthFuture),
}

impl std::fmt::Debug for AuthCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthCheck::Ready(o) => f.debug_tuple("Ready").field(o).finish(),
            AuthCheck::Pending(_) => f.write_str("Pending"),
        }
    }
}

/// One step of an enhanced authentication exchange (MQTT 5 AUTH, §4.12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnhancedStep {
    /// Send this to the client (AUTH 0x18, Continue authentication) and wait.
    Continue(Vec<u8>),
    /// Authenticated as `username`; `data` (if any) goes in the CONNACK.
    Success {
        /// The authenticated user name (replaces the CONNECT's).
        username: String,
        /// Final server data (e.g. SCRAM's server-final-message).
        data: Option<Vec<u8>>,
    },
    /// Refused.
    Failure(AuthOutcome),
}

/// A running enhanced authentication exchange for one connection.
pub trait EnhancedAuth: Send + std::fmt::Debug {
    /// Feed the client's Authentication Data (from CONNECT, then each AUTH).
    fn step(&mut self, data: &[u8]) -> EnhancedStep;
}

/// How an enhanced authentication method request is answered.
#[derive(Debug)]
pub enum EnhancedStart {
    /// The method is not offered (CONNACK 0x8C, Bad authentication method).
    Unsupported,
    /// The client is refused before the exchange starts (client rules, say).
    Refused(AuthOutcome),
    /// The exchange starts.
    Started(Box<dyn EnhancedAuth>),
}

/// Decides whether a client may connect.
pub trait Authenticator: Send + Sync + std::fmt::Debug {
    /// Check the client's credentials, synchronously. Backends that can only
    /// answer asynchronously are skipped here (treated as having no opinion);
    /// callers that can wait use [`Authenticator::check`].
    fn authenticate(&self, client: &ClientInfo, password: Option<&[u8]>) -> AuthOutcome;

    /// Check the client's credentials, possibly asynchronously. Defaults to
    /// [`Authenticator::authenticate`].
    fn check(&self, client: &ClientInfo, password: Option<&[u8]>) -> AuthCheck {
        AuthCheck::Ready(self.authenticate(client, password))
    }

    /// Start MQTT 5 enhanced authentication with `method` (e.g. `SCRAM-SHA-256`).
    /// Defaults to unsupported.
    fn enhanced(&self, _method: &str, _client: &ClientInfo) -> EnhancedStart {
        EnhancedStart::Unsupported
    }
}

/// Lets everybody in (anonymous access).
#[derive(Debug, Default)]
pub struct AllowAll;

impl Authenticator for AllowAll {
    fn authenticate(&self, _client: &ClientInfo, _password: Option<&[u8]>) -> AuthOutcome {
        AuthOutcome::Allow
    }
}

/// The authentication chain while no backend is configured: clients with a
/// user name are accepted; clients without one only when anonymous access
/// is allowed.
#[derive(Debug, Clone, Copy)]
pub struct AnonymousGate {
    /// Accept clients that present no user name.
    pub allow_anonymous: bool,
}

impl Authenticator for AnonymousGate {
    fn authenticate(&self, client: &ClientInfo, _password: Option<&[u8]>) -> AuthOutcome {
        if client.username.is_none() && !self.allow_anonymous {
            AuthOutcome::NotAuthorized
        } else {
            AuthOutcome::Allow
        }
    }
}

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Publish to a topic name.
    Publish,
    /// Subscribe to a topic filter.
    Subscribe,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
}

/// Decides whether a client may publish or subscribe.
pub trait Authorizer: Send + Sync + std::fmt::Debug {
    /// Check one action on one topic (a name for publish, a filter for
    /// subscribe, without any `$share/` prefix).
    fn authorize(&self, client: &ClientInfo, action: Action, topic: &str) -> Permission;

    /// Whether a rule allows this action by name, not merely by a no-match
    /// default. Publishing to `$SYS` needs such a rule. No rules, no
    /// explicit allow.
    fn explicitly_allows(&self, _client: &ClientInfo, _action: Action, _topic: &str) -> bool {
        false
    }
}

/// Who a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// Every client.
    All,
    /// A user name.
    Username(String),
    /// A client id.
    ClientId(String),
    /// An address range: network address and prefix length.
    IpNet(IpAddr, u8),
}

/// Which actions a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAction {
    /// Publish only.
    Publish,
    /// Subscribe only.
    Subscribe,
    /// Both.
    All,
}

/// One rule. Topics may use `%u` (user name) and `%c` (client id); a topic
/// written `eq FILTER` matches only that exact filter string.
#[derive(Debug, Clone)]
pub struct AclRule {
    /// Allow or deny.
    pub permission: Permission,
    /// Subjects; all must match. Empty or `[Who::All]` = everybody.
    pub who: Vec<Who>,
    /// Actions.
    pub action: RuleAction,
    /// Topic filters.
    pub topics: Vec<String>,
}

/// Rules checked in order; the first match decides, else `no_match`.
#[derive(Debug, Clone)]
pub struct RuleAuthorizer {
    /// The rules.
    pub rules: Vec<AclRule>,
    /// Decision when no rule matches.
    pub no_match: Permission,
}

impl RuleAuthorizer {
    /// Allow everything.
    pub fn allow_all() -> RuleAuthorizer {
        RuleAuthorizer {
            rules: Vec::new(),
            no_match: Permission::Allow,
        }
    }
}

fn who_matches(who: &Who, client: &ClientInfo) -> bool {
    match who {
        Who::All => true,
        Who::Username(u) => client.username.as_deref() == Some(u.as_str()),
        Who::ClientId(c) => &*client.client_id == c.as_str(),
        Who::IpNet(net, prefix) => client
            .peer
            .is_some_and(|p| ip_in_net(p.ip(), *net, *prefix)),
    }
}

/// True when `ip` is inside `net/prefix`.
pub fn ip_in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let bits = u32::from(prefix.min(32));
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let bits = u32::from(prefix.min(128));
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// `target` is `topic` split into its levels (once per check, not per rule).
fn topic_matches(
    rule_topic: &str,
    client: &ClientInfo,
    action: Action,
    topic: &str,
    target: &[&str],
) -> bool {
    if let Some(exact) = rule_topic.strip_prefix("eq ") {
        return exact == topic;
    }
    let pattern = rule_levels(rule_topic, client);
    // A topic starting with '$' is not matched by a leading wildcard
    // [MQTT-4.7.2-1].
    if topic.starts_with('$') && matches!(pattern.first(), Some(Level::Plus | Level::Hash)) {
        return false;
    }
    // A subscription is allowed when the rule's filter covers every topic
    // it could match.
    covers(&pattern, target, action == Action::Subscribe)
}

/// One level of a rule's filter after `%u` / `%c` were filled in.
#[derive(Debug, PartialEq)]
enum Level<'a> {
    Plus,
    Hash,
    /// Text to match exactly: what the rule wrote, or what a client's
    /// identity put there (where `+` and `#` are plain characters, so an
    /// identity can never widen a rule).
    Literal(Cow<'a, str>),
}

fn rule_levels<'a>(rule_topic: &'a str, client: &ClientInfo) -> Vec<Level<'a>> {
    let mut out = Vec::new();
    for level in rule_topic.split('/') {
        match level {
            "+" => out.push(Level::Plus),
            "#" => out.push(Level::Hash),
            l if l.contains("%u") || l.contains("%c") => {
                let filled = l
                    .replace("%u", client.username.as_deref().unwrap_or("%u"))
                    .replace("%c", &client.client_id);
                // An identity with '/' spans levels, as it always did.
                out.extend(
                    filled
                        .split('/')
                        .map(|p| Level::Literal(Cow::Owned(p.to_owned()))),
                );
            }
            l => out.push(Level::Literal(Cow::Borrowed(l))),
        }
    }
    out
}

/// Whether `pattern` covers `target`: a topic name, or (`filter`) a
/// subscription filter, whose own wildcards only a rule's wildcards cover.
fn covers(pattern: &[Level<'_>], target: &[&str], filter: bool) -> bool {
    match (pattern.split_first(), target.split_first()) {
        (Some((Level::Hash, _)), _) | (None, None) => true,
        (Some((Level::Plus, rest)), Some((t, more))) => {
            !(filter && *t == "#") && covers(rest, more, filter)
        }
        (Some((Level::Literal(l), rest)), Some((t, more))) => {
            !(filter && (*t == "+" || *t == "#")) && l == t && covers(rest, more, filter)
        }
        _ => false,
    }
}

impl RuleAuthorizer {
    /// The permission of the first rule that matches, if any does.
    fn first_match(&self, client: &ClientInfo, action: Action, topic: &str) -> Option<Permission> {
        let target: Vec<&str> = topic.split('/').collect();
        for rule in &self.rules {
            let action_ok = matches!(
                (rule.action, action),
                (RuleAction::All, _)
                    | (RuleAction::Publish, Action::Publish)
                    | (RuleAction::Subscribe, Action::Subscribe)
            );
            // Every subject the rule names must match (user name and address, say).
            if !action_ok || !rule.who.iter().all(|w| who_matches(w, client)) {
                continue;
            }
            if rule
                .topics
                .iter()
                .any(|t| topic_matches(t, client, action, topic, &target))
            {
                return Some(rule.permission);
            }
        }
        None
    }
}

impl Authorizer for RuleAuthorizer {
    fn authorize(&self, client: &ClientInfo, action: Action, topic: &str) -> Permission {
        self.first_match(client, action, topic)
            .unwrap_or(self.no_match)
    }

    fn explicitly_allows(&self, client: &ClientInfo, action: Action, topic: &str) -> bool {
        self.first_match(client, action, topic) == Some(Permission::Allow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(user: Option<&str>) -> ClientInfo {
        ClientInfo {
            client_id: "c1".into(),
            username: user.map(String::from),
            peer: Some("10.1.2.3:5000".parse().expect("addr")),
            protocol: "mqtt",
        }
    }

    #[test]
    fn a_wildcard_in_an_identity_never_widens_a_rule() {
        let own = RuleAuthorizer {
            rules: vec![AclRule {
                permission: Permission::Allow,
                who: vec![Who::All],
                action: RuleAction::All,
                topics: vec!["clients/%c/#".into(), "users/%u/+".into()],
            }],
            no_match: Permission::Deny,
        };
        let named = |id: &str, user: &str| ClientInfo {
            client_id: id.into(),
            username: Some(user.into()),
            peer: None,
            protocol: "mqtt",
        };
        let allowed =
            |c: &ClientInfo, action, topic| own.authorize(c, action, topic) == Permission::Allow;
        let honest = named("c1", "u1");
        assert!(allowed(&honest, Action::Publish, "clients/c1/x"));
        assert!(allowed(&honest, Action::Subscribe, "clients/c1/#"));
        assert!(allowed(&honest, Action::Subscribe, "users/u1/+"));
        assert!(!allowed(&honest, Action::Publish, "clients/c2/x"));
        // A rule's own '+' does not cover a subscription's '#'.
        assert!(!allowed(&honest, Action::Subscribe, "users/u1/#"));
        let publishes = ["clients/c1/x", "users/u1/x"].map(|t| (Action::Publish, t));
        let subscribes = [
            "clients/#",
            "clients/+/#",
            "clients/c1/#",
            "users/+/+",
            "users/#",
        ]
        .map(|t| (Action::Subscribe, t));
        for wild in [named("#", "#"), named("+", "+")] {
            for (action, topic) in publishes.iter().chain(&subscribes) {
                assert!(
                    !allowed(&wild, *action, topic),
                    "{} {topic}",
                    wild.client_id
                );
            }
        }
    }

    #[test]
    fn only_a_matching_allow_rule_allows_explicitly() {
        let authz = RuleAuthorizer {
            rules: vec![AclRule {
                permission: Permission::Allow,
                who: vec![Who::Username("monitor".into())],
                action: RuleAction::Publish,
                topics: vec!["$SYS/external/#".into()],
            }],
            no_match: Permission::Allow,
        };
        let monitor = client(Some("monitor"));
        let other = client(Some("other"));
        let topic = "$SYS/external/x";
        assert!(authz.explicitly_allows(&monitor, Action::Publish, topic));
        // Allowed by the no-match default, but not by name.
        assert_eq!(
            authz.authorize(&other, Action::Publish, topic),
            Permission::Allow
        );
        assert!(!authz.explicitly_allows(&other, Action::Publish, topic));
        assert!(!authz.explicitly_allows(&monitor, Action::Subscribe, topic));
    }

    #[test]
    fn first_match_wins_and_placeholders() {
        let authz = RuleAuthorizer {
            rules: vec![
                AclRule {
                    permission: Permission::Deny,
                    who: vec![Who::All],
                    action: RuleAction::Subscribe,
                    topics: vec!["test/nosubscribe".into(), "eq #".into()],
                },
                AclRule {
                    permission: Permission::Allow,
                    who: vec![Who::Username("u".into())],
                    action: RuleAction::All,
                    topics: vec!["users/%u/#".into()],
                },
                AclRule {
                    permission: Permission::Deny,
                    who: vec![Who::IpNet("10.0.0.0".parse().expect("ip"), 8)],
                    action: RuleAction::Publish,
                    topics: vec!["#".into()],
                },
            ],
            no_match: Permission::Allow,
        };
        let c = client(Some("u"));
        assert_eq!(
            authz.authorize(&c, Action::Subscribe, "test/nosubscribe"),
            Permission::Deny
        );
        assert_eq!(
            authz.authorize(&c, Action::Subscribe, "#"),
            Permission::Deny
        );
        assert_eq!(
            authz.authorize(&c, Action::Subscribe, "a/#"),
            Permission::Allow
        );
        assert_eq!(
            authz.authorize(&c, Action::Publish, "users/u/x"),
            Permission::Allow
        );
        assert_eq!(
            authz.authorize(&c, Action::Publish, "other"),
            Permission::Deny
        );
        assert_eq!(
            authz.authorize(&client(None), Action::Publish, "users/u/x"),
            Permission::Deny
        );
    }

    #[test]
    fn ip_ranges() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!(ip_in_net(ip("192.168.1.7"), ip("192.168.1.0"), 24));
        assert!(!ip_in_net(ip("192.168.2.7"), ip("192.168.1.0"), 24));
        assert!(ip_in_net(ip("::1"), ip("::1"), 128));
        assert!(ip_in_net(ip("1.2.3.4"), ip("0.0.0.0"), 0));
    }
}
