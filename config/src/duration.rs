//! Human-readable durations: `"500ms"`, `"10s"`, `"5m"`, `"2h"`, `"1d"`, `"1h30m"`.
//!
//! Every duration in the configuration is written this way. A bare integer
//! (TOML integer `30` or string `"30"`) means seconds. Units are `ns`, `us`,
//! `ms`, `s`, `m`, `h` and `d`; several number–unit pairs may follow each other
//! and are added (`"1h30m"`, `"1m 30s"`). Fractions and negative values are
//! rejected rather than rounded, so what is written is exactly what runs.
//!
//! [`format_duration`] writes the shortest single-unit form that is exact
//! (`7200s` → `"2h"`, `90s` → `"90s"`), and [`parse_duration`] reads it back
//! unchanged: the round trip is lossless for every `Duration` that fits.
//!
//! [`serialize`] and [`deserialize`] plug into `#[serde(with = "duration")]`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Units accepted by [`parse_duration`], largest first, with their length in nanoseconds.
const UNITS: [(&str, u128); 7] = [
    ("d", 86_400 * NANOS_PER_SEC),
    ("h", 3_600 * NANOS_PER_SEC),
    ("m", 60 * NANOS_PER_SEC),
    ("s", NANOS_PER_SEC),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

/// Why a duration string was rejected. Its `Display` names the input and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration `{input}`: {reason}")]
pub struct ParseDurationError {
    input: String,
    reason: String,
}

impl ParseDurationError {
    fn new(input: &str, reason: impl Into<String>) -> Self {
        Self {
            input: input.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Parses `"10s"`, `"500ms"`, `"5m"`, `"2h"`, `"1d"`, `"1h30m"` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, ParseDurationError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(ParseDurationError::new(text, "empty"));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| ParseDurationError::new(text, "too large"));
    }

    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(ParseDurationError::new(
                text,
                "expected a whole number followed by a unit (ns, us, ms, s, m, h, d)",
            ));
        }
        let number: u128 = rest[..digits]
            .parse()
            .map_err(|_| ParseDurationError::new(text, "too large"))?;
        rest = rest[digits..].trim_start();
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        let Some(&(_, nanos)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            let reason = if unit.is_empty() {
                format!("missing unit after `{number}` (ns, us, ms, s, m, h, d)")
            } else {
                format!("unknown unit `{unit}` (expected ns, us, ms, s, m, h or d)")
            };
            return Err(ParseDurationError::new(text, reason));
        };
        total = number
            .checked_mul(nanos)
            .and_then(|n| total.checked_add(n))
            .ok_or_else(|| ParseDurationError::new(text, "too large"))?;
        rest = rest[unit_len..].trim_start();
    }

    let secs = u64::try_from(total / NANOS_PER_SEC)
        .map_err(|_| ParseDurationError::new(text, "too large"))?;
    // The remainder is below one second, so it always fits in u32.
    let subsec = u32::try_from(total % NANOS_PER_SEC)
        .map_err(|_| ParseDurationError::new(text, "too large"))?;
    Ok(Duration::new(secs, subsec))
}

/// Formats a duration in the largest single unit that represents it exactly (`"2h"`, `"90s"`, `"1500ms"`).
pub fn format_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    for (unit, len) in UNITS {
        if nanos.is_multiple_of(len) {
            return format!("{}{unit}", nanos / len);
        }
    }
    // Unreachable: every value is a multiple of 1 ns.
    format!("{nanos}ns")
}

/// Serializes a duration as its [`format_duration`] string (for `#[serde(with = "...")]`).
pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_duration(*duration))
}

/// Deserializes a duration from a string ([`parse_duration`]) or a non-negative integer of seconds.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    deserializer.deserialize_any(DurationVisitor)
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as \"10s\", \"500ms\", \"5m\", \"2h\", \"1d\" or an integer number of seconds")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Ok(Duration::from_secs(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        u64::try_from(v)
            .map(Duration::from_secs)
            .map_err(|_| E::custom(format!("invalid duration `{v}`: must not be negative")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Duration {
        parse_duration(s).expect(s)
    }

    #[test]
    fn parses_every_unit() {
        assert_eq!(ok("10s"), Duration::from_secs(10));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("5m"), Duration::from_secs(300));
        assert_eq!(ok("2h"), Duration::from_secs(7200));
        assert_eq!(ok("1d"), Duration::from_secs(86_400));
        assert_eq!(ok("250us"), Duration::from_micros(250));
        assert_eq!(ok("7ns"), Duration::from_nanos(7));
    }

    #[test]
    fn bare_number_is_seconds() {
        assert_eq!(ok("30"), Duration::from_secs(30));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok(" 42 "), Duration::from_secs(42));
    }

    #[test]
    fn compound_and_spacing() {
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("1m 30s"), Duration::from_secs(90));
        assert_eq!(ok("10 s"), Duration::from_secs(10));
        assert_eq!(ok("1s500ms"), Duration::from_millis(1500));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "", "  ", "s", "10x", "1.5s", "-1s", "10S", "ten", "1h30", "1h 30", "10s!",
        ] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.to_string().contains("invalid duration"), "{bad}: {err}");
        }
        let err = parse_duration("10x").expect_err("unknown unit");
        assert!(err.to_string().contains("unknown unit `x`"), "{err}");
    }

    #[test]
    fn rejects_overflow() {
        assert!(parse_duration("99999999999999999999999").is_err());
        assert!(parse_duration("999999999999999999999d").is_err());
        assert!(parse_duration("213503982334602d").is_err());
    }

    #[test]
    fn formats_in_largest_exact_unit() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(86_400)), "1d");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_micros(3)), "3us");
        assert_eq!(
            format_duration(Duration::from_nanos(1_000_001)),
            "1000001ns"
        );
    }

    #[test]
    fn format_then_parse_round_trips() {
        for d in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_millis(10),
            Duration::from_secs(59),
            Duration::from_secs(3600 * 25),
            Duration::new(12, 345),
            Duration::from_secs(u64::MAX / 1_000),
        ] {
            assert_eq!(ok(&format_duration(d)), d, "{d:?}");
        }
    }
}
