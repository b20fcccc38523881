//! SockJS 0.3 framing: the frames the server sends (`o`, `h`, `a[...]`,
//! `c[code,"reason"]`), how each HTTP transport wraps them, and parsing of
//! what clients send (a JSON array of strings, or one JSON string on the
//! WebSocket transport).
//!
//! Strings are JSON-encoded with the characters browsers mangle escaped as
//! `\uXXXX` (sockjs-protocol "JSON Unicode Encoding": `escapable_by_server`).

use thiserror::Error;

/// The open frame.
pub const OPEN: &str = "o";
/// The heartbeat frame.
pub const HEARTBEAT: &str = "h";

/// The close frame for `code` and `reason`: `c[3000,"Go away!"]`.
pub fn close(code: u16, reason: &str) -> String {
    format!("c[{code},{}]", quote(reason))
}

/// An array frame carrying `messages`: `a["m1","m2"]`.
pub fn messages<S: AsRef<str>>(messages: &[S]) -> String {
    let mut out =
        String::with_capacity(3 + messages.iter().map(|m| m.as_ref().len() + 3).sum::<usize>());
    out.push_str("a[");
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        quote_into(m.as_ref(), &mut out);
    }
    out.push(']');
    out
}

/// `text` as a JSON string literal, with SockJS's extra escapes.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    quote_into(text, &mut out);
    out
}

fn needs_unicode_escape(c: char) -> bool {
    matches!(c as u32,
        0x00..=0x1f | 0x7f..=0x9f | 0x200c..=0x200f | 0x2028..=0x202f | 0x2060..=0x206f | 0xfff0..=0xffff)
}

fn quote_into(text: &str, out: &mut String) {
    use std::fmt::Write;
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if needs_unicode_escape(c) => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Why a client payload was refused (the texts are the protocol's).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PayloadError {
    /// Nothing was sent.
    #[error("Payload expected.")]
    Empty,
    /// Not a JSON array of strings (or a string).
    #[error("Broken JSON encoding.")]
    BrokenJson,
}

/// Parse a client payload: a JSON array of strings; with `single_allowed`
/// (the WebSocket transport) a lone JSON string too. An empty body is
/// [`PayloadError::Empty`].
pub fn parse_messages(body: &[u8], single_allowed: bool) -> Result<Vec<String>, PayloadError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(PayloadError::Empty);
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => Ok(s),
                _ => Err(PayloadError::BrokenJson),
            })
            .collect(),
        Ok(serde_json::Value::String(s)) if single_allowed => Ok(vec![s]),
        _ => Err(PayloadError::BrokenJson),
    }
}

/// How one HTTP transport wraps a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wrap {
    /// xhr and xhr_streaming: the frame and a newline.
    Xhr,
    /// eventsource: `data: frame\r\n\r\n`.
    EventSource,
    /// htmlfile: a script tag calling `p(frame)`.
    HtmlFile,
    /// jsonp: `/**/callback("frame");\r\n`.
    Jsonp(String),
}

impl Wrap {
    /// `frame` as this transport writes it.
    pub fn wrap(&self, frame: &str) -> String {
        match self {
            Wrap::Xhr => format!("{frame}\n"),
            Wrap::EventSource => format!("data: {frame}\r\n\r\n"),
            Wrap::HtmlFile => format!("<script>\np({});\n</script>\r\n", quote(frame)),
            Wrap::Jsonp(callback) => format!("/**/{callback}({});\r\n", quote(frame)),
        }
    }
}

/// The xhr_streaming prelude: 2048 `h` and a newline (old browsers only
/// fire progress events after 2 KiB).
pub fn xhr_streaming_prelude() -> String {
    let mut s = "h".repeat(2048);
    s.push('\n');
    s
}

/// The eventsource prelude (an Opera quirk).
pub const EVENTSOURCE_PRELUDE: &str = "\r\n";

/// The htmlfile prelude for `callback`, padded past 1 KiB.
pub fn htmlfile_prelude(callback: &str) -> String {
    let mut s = format!(
        "<!doctype html>\n<html><head>\n  <meta http-equiv=\"X-UA-Compatible\" content=\"IE=edge\" />\n  <meta http-equiv=\"Content-Type\" content=\"text/html; charset=UTF-8\" />\n</head><body><h2>Don't panic!</h2>\n  <script>\n    document.domain = document.domain;\n    var c = parent.{callback};\n    c.start();\n    function p(d) {{c.message(d);}};\n    window.onload = function() {{c.stop();}};\n  </script>"
    );
    s.push_str(&" ".repeat(1024));
    s.push_str("\r\n\r\n");
    s
}

/// The iframe page loading the client script from `sockjs_url`.
pub fn iframe_page(sockjs_url: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html>\n<head>\n  <meta http-equiv=\"X-UA-Compatible\" content=\"IE=edge\" />\n  <meta http-equiv=\"Content-Type\" content=\"text/html; charset=UTF-8\" />\n  <script src=\"{sockjs_url}\"></script>\n  <script>\n    document.domain = document.domain;\n    SockJS.bootstrap_iframe();\n  </script>\n</head>\n<body>\n  <h2>Don't panic!</h2>\n  <p>This is a SockJS hidden iframe. It's used for cross domain magic.</p>\n</body>\n</html>"
    )
}

/// A JSONP / htmlfile callback name is `[a-zA-Z0-9-_.]+`.
pub fn valid_callback(callback: &str) -> bool {
    !callback.is_empty()
        && callback
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert_eq!(close(3000, "Go away!"), "c[3000,\"Go away!\"]");
        assert_eq!(messages(&["a", "b\"c"]), "a[\"a\",\"b\\\"c\"]");
        assert_eq!(messages::<&str>(&[]), "a[]");
    }

    #[test]
    fn escaping_matches_the_protocol_suite() {
        // EventSource test: `["  \u0000\n\r "]` comes back as below.
        assert_eq!(messages(&["  \u{0}\n\r "]), "a[\"  \\u0000\\n\\r \"]");
        assert_eq!(quote("\u{2028}\u{ffff}é"), "\"\\u2028\\uffffé\"");
    }

    #[test]
    fn payloads() {
        assert_eq!(
            parse_messages(b"[\"a\",\"b\"]", false),
            Ok(vec!["a".into(), "b".into()])
        );
        assert_eq!(parse_messages(b"[]", false), Ok(vec![]));
        assert_eq!(parse_messages(b"", false), Err(PayloadError::Empty));
        assert_eq!(
            parse_messages(b"[\"x", false),
            Err(PayloadError::BrokenJson)
        );
        assert_eq!(
            parse_messages(b"\"x\"", false),
            Err(PayloadError::BrokenJson)
        );
        assert_eq!(parse_messages(b"\"x\"", true), Ok(vec!["x".into()]));
        assert_eq!(parse_messages(b"[1]", false), Err(PayloadError::BrokenJson));
    }

    #[test]
    fn wraps() {
        assert_eq!(Wrap::Xhr.wrap("o"), "o\n");
        assert_eq!(Wrap::EventSource.wrap("o"), "data: o\r\n\r\n");
        assert_eq!(
            Wrap::HtmlFile.wrap("a[\"x\"]"),
            "<script>\np(\"a[\\\"x\\\"]\");\n</script>\r\n"
        );
        assert_eq!(Wrap::Jsonp("cb".into()).wrap("o"), "/**/cb(\"o\");\r\n");
        assert!(valid_callback("a.b-c_1"));
        assert!(!valid_callback("abc("));
        assert!(!valid_callback(""));
    }
}
