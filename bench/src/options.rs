//! Run options shared by the message scenarios, and the checks that keep
//! the tool on this machine.
//!
//! The target must be a loopback address: `127.0.0.0/8` or `::1` (or the
//! name `localhost` when every address it resolves to is one of those).
//! Anything else is refused before a socket is opened: this tool generates
//! heavy traffic and must never point it at another host.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context};
use tributary_mqtt::packet::{ProtocolVersion, QoS};

/// MQTT protocol version spoken by the load generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1.1 (level 4).
    V311,
    /// MQTT 5.0 (level 5).
    V5,
}

impl Protocol {
    /// The codec's version value.
    pub fn version(self) -> ProtocolVersion {
        match self {
            Protocol::V311 => ProtocolVersion::V3_1_1,
            Protocol::V5 => ProtocolVersion::V5,
        }
    }

    /// Name used in reports: `3.1.1` or `5`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5",
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Protocol, String> {
        match s {
            "3.1.1" | "311" | "4" | "v4" => Ok(Protocol::V311),
            "5" | "5.0" | "v5" => Ok(Protocol::V5),
            other => Err(format!("unknown protocol {other:?}: use 3.1.1 or 5")),
        }
    }
}

/// Parse a QoS given on the command line (0, 1 or 2).
pub fn parse_qos(s: &str) -> Result<QoS, String> {
    s.parse::<u8>()
        .ok()
        .and_then(QoS::from_u8)
        .ok_or_else(|| format!("invalid QoS {s:?}: use 0, 1 or 2"))
}

/// Parse a duration: `500ms`, `10s`, `2m`, or a bare number of seconds
/// (fractions allowed: `1.5s`, `0.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(at) => s.split_at(at),
        None => (s, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 500ms, 10s, 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("invalid duration unit in {s:?}: use ms, s or m")),
    };
    if !seconds.is_finite() || !(0.0..=86_400.0).contains(&seconds) {
        return Err(format!("duration {s:?} out of range (0 to 24 h)"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// True for the addresses this tool may target: `127.0.0.0/8` and `::1`.
/// IPv4-mapped IPv6 addresses are refused rather than unwrapped.
pub fn is_allowed_target(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

/// Resolve `host:port` to a loopback socket address, refusing anything
/// else. `host` is an IP literal or `localhost`; other names are refused
/// without being looked up.
pub fn resolve_loopback(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<IpAddr>() {
        if !is_allowed_target(ip) {
            bail!(
                "refusing to target {ip}: only loopback addresses (127.0.0.0/8, ::1) are allowed"
            );
        }
        return Ok(SocketAddr::new(ip, port));
    }
    if !host.eq_ignore_ascii_case("localhost") {
        bail!(
            "refusing to target {host:?}: give a loopback IP address (127.0.0.1, ::1) or localhost"
        );
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}"))?
        .collect();
    if let Some(bad) = addrs.iter().find(|a| !is_allowed_target(a.ip())) {
        bail!("refusing to target {host}: it resolves to the non-loopback address {bad}");
    }
    // Prefer IPv4: several 127.0.0.x source addresses only exist there.
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .with_context(|| format!("{host} resolves to no address"))
}

/// Source address number `index` (0-based) out of `sources`: 127.0.0.1,
/// 127.0.0.2, … for an IPv4 target; always `::1` for IPv6 (there is only
/// one IPv6 loopback address, so `sources > 1` is refused there).
pub fn source_address(target: SocketAddr, index: usize, sources: usize) -> Option<IpAddr> {
    if sources <= 1 {
        return None;
    }
    match target {
        SocketAddr::V4(_) => {
            // `sources` is checked to be at most 254 by `check_sources`.
            let host = 1 + (index % sources) as u8;
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)))
        }
        SocketAddr::V6(_) => None,
    }
}

/// Validate a number of source addresses for `target`.
pub fn check_sources(target: SocketAddr, sources: usize) -> anyhow::Result<()> {
    if sources == 0 || sources > 254 {
        bail!("--sources must be between 1 and 254 (127.0.0.1 to 127.0.0.254)");
    }
    if target.is_ipv6() && sources > 1 {
        bail!("several source addresses need an IPv4 target (IPv6 has only ::1)");
    }
    Ok(())
}

/// Options of the message scenarios (p2p, fan-in, fan-out).
#[derive(Debug, Clone)]
pub struct TrafficOptions {
    /// Broker address (checked to be loopback by [`resolve_loopback`]).
    pub target: SocketAddr,
    /// MQTT version for every connection.
    pub protocol: Protocol,
    /// QoS of publishes and subscriptions.
    pub qos: QoS,
    /// Payload size in bytes, at least [`crate::payload::STAMP_LEN`].
    pub payload: usize,
    /// Aggregate publish rate in messages/s over all publishers, split
    /// evenly and paced per publisher; `None` = flat out.
    pub rate: Option<u64>,
    /// Length of the measured window.
    pub duration: Duration,
    /// Publishing before the measured window starts (not measured).
    pub warmup: Duration,
    /// Most unacknowledged QoS 1/2 PUBLISH per publisher (MQTT 5: also
    /// capped by the broker's Receive Maximum).
    pub inflight: usize,
    /// Most PUBLISH packets written per socket write.
    pub batch: usize,
    /// Keep-alive in seconds announced in CONNECT (PINGREQ sent at half).
    pub keep_alive: u16,
    /// Longest wait, after publishing stops, for outstanding acks and
    /// deliveries.
    pub drain_timeout: Duration,
    /// Loopback source addresses to spread connections over.
    pub sources: usize,
    /// Broker process to sample for CPU and RSS.
    pub broker_pid: Option<u32>,
    /// Free-form name of the broker under test, copied into the result.
    pub label: String,
    /// Free-form scenario name, copied into the result (compare.sh uses it
    /// to group rounds).
    pub name: Option<String>,
    /// Print a progress line to stderr every second.
    pub progress: bool,
    /// Connect with clean start = false: persistent sessions, which a
    /// durable broker writes to its store (`--persistent`).
    pub persistent: bool,
}

impl TrafficOptions {
    /// Defaults for everything but the target: MQTT 3.1.1, QoS 0, 64-byte
    /// payloads, flat out, 10 s measured after a 2 s warm-up.
    pub fn new(target: SocketAddr) -> TrafficOptions {
        TrafficOptions {
            target,
            protocol: Protocol::V311,
            qos: QoS::AtMostOnce,
            payload: 64,
            rate: None,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            inflight: 64,
            batch: 64,
            keep_alive: 60,
            drain_timeout: Duration::from_secs(10),
            sources: 1,
            broker_pid: None,
            label: String::from("broker"),
            name: None,
            progress: true,
            persistent: false,
        }
    }

    /// Refuse options that cannot work, with a reason.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !is_allowed_target(self.target.ip()) {
            bail!("refusing non-loopback target {}", self.target);
        }
        check_sources(self.target, self.sources)?;
        if self.payload < crate::payload::STAMP_LEN {
            bail!(
                "--payload must be at least {} bytes (sequence, publisher id, timestamp)",
                crate::payload::STAMP_LEN
            );
        }
        if self.payload > 16 * 1024 * 1024 {
            bail!("--payload above 16 MiB is not supported");
        }
        if self.inflight == 0 || self.inflight > 65_535 {
            bail!("--inflight must be between 1 and 65535");
        }
        if self.batch == 0 || self.batch > 65_536 {
            bail!("--batch must be between 1 and 65536");
        }
        if self.duration.is_zero() {
            bail!("--duration must be positive");
        }
        if self.rate == Some(0) {
            bail!("--rate must be positive (omit it for flat out)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_resolve() {
        assert!(resolve_loopback("127.0.0.1", 1883).is_ok());
        assert!(resolve_loopback("127.8.9.10", 1883).is_ok());
        assert!(resolve_loopback("::1", 1883).is_ok());
        assert!(resolve_loopback("[::1]", 1883).is_ok());
        for bad in [
            "10.0.0.1",
            "192.168.1.1",
            "8.8.8.8",
            "0.0.0.0",
            "::ffff:127.0.0.1",
            "example.com",
            "broker",
        ] {
            assert!(
                resolve_loopback(bad, 1883).is_err(),
                "{bad} must be refused"
            );
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5h").is_err());
    }

    #[test]
    fn sources_spread_over_127_0_0_x() {
        let target = SocketAddr::from(([127, 0, 0, 1], 1883));
        assert_eq!(source_address(target, 0, 1), None);
        assert_eq!(
            source_address(target, 5, 4),
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        );
        assert!(check_sources(target, 255).is_err());
        let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 1883));
        assert!(check_sources(v6, 2).is_err());
    }
}
