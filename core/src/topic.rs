//! Topic names and topic filters: validation per MQTT 3.1.1 §4.7 / MQTT 5
//! §4.7, shared-subscription parsing per MQTT 5 §4.8.2, and the brute-force
//! matcher that the trie is tested against.
//!
//! Invariants: a valid topic name is non-empty, has no `+`/`#`, no U+0000;
//! a valid filter uses `#` only as the whole last level and `+` only as a
//! whole level. Topics starting with `$` are never matched by a filter whose
//! first level is a wildcard [MQTT-4.7.2-1].

use thiserror::Error;

/// Why a topic name or filter was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopicError {
    /// Empty topic or filter [MQTT-4.7.3-1].
    #[error("topic is empty")]
    Empty,
    /// Longer than 65535 bytes.
    #[error("topic is longer than 65535 bytes")]
    TooLong,
    /// Contains U+0000 [MQTT-4.7.3-2].
    #[error("topic contains a null character")]
    NullCharacter,
    /// A wildcard character in a topic name [MQTT-3.3.2-2].
    #[error("topic name contains a wildcard")]
    WildcardInName,
    /// `#` not alone as the last level, or `+` not alone in a level [MQTT-4.7.1-2], [MQTT-4.7.1-3].
    #[error("invalid wildcard placement in topic filter")]
    BadWildcard,
    /// More levels than allowed.
    #[error("topic has more than {0} levels")]
    TooManyLevels(usize),
    /// `$share/` with a missing or invalid group name or filter [MQTT-4.8.2-1], [MQTT-4.8.2-2].
    #[error("invalid shared subscription")]
    BadShare,
}

fn check_common(s: &str, max_levels: usize) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > 65535 {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    if s.split('/').count() > max_levels {
        return Err(TopicError::TooManyLevels(max_levels));
    }
    Ok(())
}

/// Validate a topic name used in PUBLISH (no wildcards).
pub fn validate_topic_name(name: &str, max_levels: usize) -> Result<(), TopicError> {
    check_common(name, max_levels)?;
    if name.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Validate a plain topic filter (without any `$share/` prefix).
pub fn validate_topic_filter(filter: &str, max_levels: usize) -> Result<(), TopicError> {
    check_common(filter, max_levels)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !is_last) {
            return Err(TopicError::BadWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::BadWildcard);
        }
    }
    Ok(())
}

/// True when the filter contains `+` or `#`.
pub fn has_wildcard(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

/// A subscription filter as given by a client: plain or shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedFilter<'a> {
    /// Shared-subscription group name, when the filter was `$share/{group}/{filter}`.
    pub share_group: Option<&'a str>,
    /// The topic filter proper.
    pub filter: &'a str,
}

/// Split `$share/{group}/{filter}` and validate both parts; plain filters
/// are validated as they are.
pub fn parse_filter(raw: &str, max_levels: usize) -> Result<ParsedFilter<'_>, TopicError> {
    if let Some(rest) = raw.strip_prefix("$share/") {
        let (group, filter) = rest.split_once('/').ok_or(TopicError::BadShare)?;
        if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
            return Err(TopicError::BadShare);
        }
        validate_topic_filter(filter, max_levels)?;
        Ok(ParsedFilter {
            share_group: Some(group),
            filter,
        })
    } else if raw == "$share" {
        Err(TopicError::BadShare)
    } else {
        validate_topic_filter(raw, max_levels)?;
        Ok(ParsedFilter {
            share_group: None,
            filter: raw,
        })
    }
}

/// Brute-force matcher: does `topic` (a valid name) match `filter` (a valid
/// plain filter)? The trie must agree with this on every input.
pub fn matches(topic: &str, filter: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut t = topic.split('/');
    let mut f = filter.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples_match() {
        // MQTT 3.1.1 §4.7.1.2 and §4.7.1.3.
        assert!(matches("sport/tennis/player1", "sport/tennis/player1/#"));
        assert!(matches(
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/#"
        ));
        assert!(matches(
            "sport/tennis/player1/score/wimbledon",
            "sport/tennis/player1/#"
        ));
        assert!(matches("sport", "sport/#"));
        assert!(matches("sport/tennis/player1", "sport/tennis/+"));
        assert!(!matches("sport/tennis/player1/ranking", "sport/tennis/+"));
        assert!(!matches("sport", "sport/+"));
        assert!(matches("sport/", "sport/+"));
        assert!(matches("/finance", "+/+"));
        assert!(matches("/finance", "/+"));
        assert!(!matches("/finance", "+"));
        // §4.7.2: $ topics.
        assert!(!matches("$SYS/x", "#"));
        assert!(!matches("$SYS/monitor/Clients", "+/monitor/Clients"));
        assert!(matches("$SYS/monitor/Clients", "$SYS/#"));
        assert!(matches("$SYS/monitor/Clients", "$SYS/monitor/+"));
    }

    #[test]
    fn filter_validation() {
        assert!(validate_topic_filter("sport/tennis/#", 128).is_ok());
        assert!(validate_topic_filter("#", 128).is_ok());
        assert!(validate_topic_filter("+/tennis/#", 128).is_ok());
        assert_eq!(
            validate_topic_filter("sport/tennis#", 128),
            Err(TopicError::BadWildcard)
        );
        assert_eq!(
            validate_topic_filter("sport/tennis/#/ranking", 128),
            Err(TopicError::BadWildcard)
        );
        assert_eq!(
            validate_topic_filter("sport+", 128),
            Err(TopicError::BadWildcard)
        );
        assert_eq!(validate_topic_filter("", 128), Err(TopicError::Empty));
        assert_eq!(
            validate_topic_filter("a/b/c", 2),
            Err(TopicError::TooManyLevels(2))
        );
        assert_eq!(
            validate_topic_name("a/+", 128),
            Err(TopicError::WildcardInName)
        );
        assert_eq!(
            validate_topic_name("a\0b", 128),
            Err(TopicError::NullCharacter)
        );
    }

    #[test]
    fn shared_filters() {
        let p = parse_filter("$share/g1/a/+", 128).expect("valid");
        assert_eq!(p.share_group, Some("g1"));
        assert_eq!(p.filter, "a/+");
        assert_eq!(parse_filter("$share//a", 128), Err(TopicError::BadShare));
        assert_eq!(parse_filter("$share/g", 128), Err(TopicError::BadShare));
        assert_eq!(parse_filter("$share/g+/a", 128), Err(TopicError::BadShare));
        assert_eq!(parse_filter("a/b", 128).expect("valid").share_group, None);
    }
}
