//! Semantic checks: ranges, formats and cross-field rules that serde types cannot express.
//!
//! [`Config::validate`] runs every check and returns every failure as a
//! [`ConfigProblem`] keyed by its dotted path, so a user fixes a file in one
//! pass. Checks never stop at the first failure and never panic.

use std::net::IpAddr;

use crate::{Config, ConfigProblem};

/// Largest MQTT packet: 268,435,455 bytes of remaining length plus a 5-byte fixed header.
pub(crate) const MAX_PACKET_SIZE_LIMIT: u32 = 268_435_460;

/// Collects problems under a path prefix.
struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigProblem::new(key, message));
    }

    fn at_least<T: PartialOrd + std::fmt::Display>(&mut self, key: &str, value: T, min: T) {
        if value < min {
            self.push(key, format!("must be at least {min}, got {value}"));
        }
    }

    fn between<T: PartialOrd + std::fmt::Display>(&mut self, key: &str, value: T, min: T, max: T) {
        if value < min || value > max {
            self.push(key, format!("must be between {min} and {max}, got {value}"));
        }
    }

    fn non_zero(&mut self, key: &str, value: std::time::Duration) {
        if value.is_zero() {
            self.push(key, "must be greater than zero");
        }
    }
}

impl Config {
    /// Every semantic problem (ranges, cross-field rules) as (key path, message); empty = valid.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut p = Problems(Vec::new());
        self.check_node(&mut p);
        if self.log.level.trim().is_empty() {
            p.push(
                "log.level",
                "must not be empty (e.g. \"info\" or \"info,tributary_mqtt=debug\")",
            );
        }
        self.check_mqtt(&mut p);
        self.check_listeners(&mut p);
        self.check_authorization(&mut p);
        p.at_least("limits.max_connections", self.limits.max_connections, 1);
        p.non_zero("limits.max_pause", self.limits.max_pause);
        if self.limits.max_pause > std::time::Duration::from_secs(5) {
            p.push(
                "limits.max_pause",
                "must be at most 5s: a publisher must not wait longer on one stuck subscriber",
            );
        }
        p.non_zero(
            "limits.write_stall_timeout",
            self.limits.write_stall_timeout,
        );
        self.mqttsn.check(&mut p.0);
        p.0.extend(self.coap.problems());
        p.0.extend(self.lwm2m.problems());
        p.0.extend(self.stomp.problems());
        p.0.extend(self.storage.problems());
        crate::listeners::check_listener_kinds(self, &mut p.0);
        self.authentication.check(&mut p.0);
        self.api.check(&mut p.0);
        p.0
    }

    fn check_node(&self, p: &mut Problems) {
        let name = &self.node.name;
        if name.trim().is_empty() {
            p.push("node.name", "must not be empty");
        } else if let Some(c) = name
            .chars()
            .find(|c| matches!(c, '/' | '+' | '#') || c.is_whitespace() || c.is_control())
        {
            p.push(
                "node.name",
                format!("must not contain {c:?}: the name is a level of `$SYS/brokers/{{name}}/…` topics"),
            );
        }
    }

    fn check_mqtt(&self, p: &mut Problems) {
        let m = &self.mqtt;
        p.between(
            "mqtt.max_packet_size",
            m.max_packet_size,
            2,
            MAX_PACKET_SIZE_LIMIT,
        );
        p.at_least("mqtt.max_clientid_len", m.max_clientid_len, 23);
        p.at_least("mqtt.max_topic_levels", m.max_topic_levels, 1);
        p.between("mqtt.max_qos_allowed", m.max_qos_allowed, 0, 2);
        p.at_least("mqtt.receive_maximum", m.receive_maximum, 1);
        p.at_least("mqtt.max_inflight", m.max_inflight, 1);
        p.at_least("mqtt.max_awaiting_rel", m.max_awaiting_rel, 1);
        p.at_least("mqtt.max_mqueue_len", m.max_mqueue_len, 1);
        p.at_least("mqtt.max_mqueue_bytes", m.max_mqueue_bytes, 1);
        p.non_zero("mqtt.await_rel_timeout", m.await_rel_timeout);
        if !(m.keepalive_multiplier.is_finite() && m.keepalive_multiplier >= 1.0) {
            p.push(
                "mqtt.keepalive_multiplier",
                format!(
                    "must be a finite number of at least 1.0, got {}",
                    m.keepalive_multiplier
                ),
            );
        }
        if m.max_session_expiry.as_secs() > u64::from(u32::MAX) {
            p.push(
                "mqtt.max_session_expiry",
                format!(
                    "must be at most {} seconds (MQTT Session Expiry Interval is 32 bits), got {}",
                    u32::MAX,
                    crate::duration::format_duration(m.max_session_expiry)
                ),
            );
        }
        p.non_zero("mqtt.connect_timeout", m.connect_timeout);
        p.non_zero("mqtt.retry_interval", m.retry_interval);
    }

    fn check_listeners(&self, p: &mut Problems) {
        let enabled: Vec<_> = self
            .listeners
            .tcp
            .iter()
            .filter(|(_, l)| l.enabled)
            .collect();
        for (name, l) in &self.listeners.tcp {
            let prefix = format!("listeners.tcp.{name}");
            if name.is_empty() {
                p.push(prefix.clone(), "listener name must not be empty");
            }
            if l.enabled {
                p.at_least(&format!("{prefix}.max_connections"), l.max_connections, 1);
            }
        }
        // Two enabled listeners on one port collide at bind time unless both name
        // distinct specific addresses; port 0 means "any free port" and never collides.
        for (i, (name, l)) in enabled.iter().enumerate() {
            let clash = enabled[..i].iter().find(|(_, earlier)| {
                let (a, b) = (earlier.bind, l.bind);
                a.port() == b.port()
                    && a.port() != 0
                    && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
            });
            if let Some((other, earlier)) = clash {
                p.push(
                    format!("listeners.tcp.{name}.bind"),
                    format!(
                        "{} collides with listeners.tcp.{other}.bind = {}",
                        l.bind, earlier.bind
                    ),
                );
            }
        }
    }

    fn check_authorization(&self, p: &mut Problems) {
        for (i, rule) in self.authorization.rules.iter().enumerate() {
            let prefix = format!("authorization.rules[{i}]");
            if rule.topics.is_empty() {
                p.push(
                    format!("{prefix}.topics"),
                    "must list at least one topic filter",
                );
            }
            for (j, topic) in rule.topics.iter().enumerate() {
                if let Err(why) = check_topic_filter(topic) {
                    p.push(format!("{prefix}.topics[{j}]"), why);
                }
            }
            for (key, value) in [("username", &rule.username), ("clientid", &rule.clientid)] {
                if value.as_deref().is_some_and(str::is_empty) {
                    p.push(format!("{prefix}.{key}"), "must not be empty when given");
                }
            }
            if let Some(ip) = &rule.ipaddr {
                if let Err(why) = check_ip_range(ip) {
                    p.push(format!("{prefix}.ipaddr"), why);
                }
            }
        }
    }
}

/// Checks MQTT topic-filter syntax: non-empty, no NUL, `+` and `#` each fill a whole level, `#` only last.
fn check_topic_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("topic filter must not be empty".to_owned());
    }
    if filter.len() > usize::from(u16::MAX) {
        return Err("topic filter is longer than 65535 bytes".to_owned());
    }
    if filter.contains('\0') {
        return Err(format!("topic filter {filter:?} contains NUL"));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!(
                "invalid topic filter {filter:?}: `#` must be a whole level and the last one"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!(
                "invalid topic filter {filter:?}: `+` must be a whole level"
            ));
        }
    }
    Ok(())
}

/// Checks an address (`"10.0.0.1"`) or CIDR range (`"10.0.0.0/8"`, `"fd00::/8"`).
pub(crate) fn check_ip_range(text: &str) -> Result<(), String> {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let bad = || {
        format!(
            "invalid address {text:?}: expected an IP address or CIDR range such as \"10.0.0.0/8\""
        )
    };
    let ip: IpAddr = addr.trim().parse().map_err(|_| bad())?;
    if let Some(prefix) = prefix {
        let bits: u8 = prefix.trim().parse().map_err(|_| bad())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if bits > max {
            return Err(format!(
                "invalid CIDR range {text:?}: prefix length must be at most {max}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_filters() {
        for ok in ["a", "a/b", "+", "#", "a/+/b", "a/#", "$SYS/#", "/", "a//b"] {
            assert!(check_topic_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "#/a", "a+", "a/+b", "a\0b"] {
            assert!(check_topic_filter(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ip_ranges() {
        for ok in ["10.0.0.1", "10.0.0.0/8", "::1", "fd00::/8", "0.0.0.0/0"] {
            assert!(check_ip_range(ok).is_ok(), "{ok}");
        }
        for bad in ["", "10.0.0", "10.0.0.0/33", "::/129", "10.0.0.0/x", "host"] {
            assert!(check_ip_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_config_is_valid() {
        assert_eq!(Config::default().validate(), Vec::new());
    }
}
