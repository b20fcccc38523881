//! Bytes ⇄ frames for STOMP 1.0, 1.1 and 1.2.
//!
//! Grammar (1.2 §"Augmented BNF"): `command EOL *(header EOL) EOL *OCTET NULL *(EOL)`.
//! What differs by version:
//!
//! | | 1.0 | 1.1 | 1.2 |
//! |---|---|---|---|
//! | header escapes | none | `\n` `\c` `\\` | `\r` `\n` `\c` `\\` |
//! | EOL in headers | LF | LF | LF or CR LF |
//!
//! CONNECT, STOMP and CONNECTED headers are never escaped. An undefined
//! escape sequence is a fatal protocol error (1.2 §"Value Encoding").
//!
//! Bodies end at the first NUL unless the frame has a `content-length`
//! header, in which case exactly that many octets are read (NULs
//! included) and a NUL must follow. EOLs between frames are heart-beats
//! (1.2 §"Heart-beating") and decode as [`Item::HeartBeat`].
//!
//! Limits (header count, header line length, body length) are checked
//! while the frame is still arriving, so a peer cannot make us buffer
//! more than one acceptable frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::frame::{Command, Frame};

/// A STOMP protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// STOMP 1.0.
    V1_0,
    /// STOMP 1.1.
    V1_1,
    /// STOMP 1.2.
    V1_2,
}

impl Version {
    /// Every version, oldest first.
    pub const ALL: [Version; 3] = [Version::V1_0, Version::V1_1, Version::V1_2];

    /// As written in `accept-version` / `version` headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    /// Parse `1.0`, `1.1` or `1.2`.
    pub fn parse(text: &str) -> Option<Version> {
        Version::ALL.into_iter().find(|v| v.as_str() == text.trim())
    }
}

/// Frame limits, from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most header lines in one frame.
    pub max_headers: usize,
    /// Longest header line (`name:value`, escaped, without the EOL).
    pub max_header_length: usize,
    /// Longest body.
    pub max_body_length: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_headers: 32,
            max_header_length: 1024,
            max_body_length: 65536,
        }
    }
}

/// What the decoder produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A complete frame.
    Frame(Frame),
    /// One or more EOLs between frames: a heart-beat.
    HeartBeat,
}

/// Why bytes could not be decoded. Every variant is fatal for the connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The command line is not a STOMP command.
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    /// A header line has no colon.
    #[error("header line without a colon")]
    MalformedHeader,
    /// An undefined escape sequence in a header.
    #[error("undefined escape sequence in a header (1.2 §Value Encoding)")]
    InvalidEscape,
    /// Headers or command are not UTF-8.
    #[error("headers must be UTF-8")]
    InvalidUtf8,
    /// More header lines than allowed.
    #[error("more than {0} headers")]
    TooManyHeaders(usize),
    /// A header line (or the command line) is too long.
    #[error("header longer than {0} bytes")]
    HeaderTooLong(usize),
    /// The body is too long.
    #[error("body longer than {0} bytes")]
    BodyTooLarge(usize),
    /// `content-length` is not a number.
    #[error("invalid content-length {0:?}")]
    InvalidContentLength(String),
    /// The octet after a `content-length` body is not NUL.
    #[error("frame body not terminated by NUL after content-length octets")]
    MissingNul,
}

/// Decode one item from the front of `buf`. `Ok(None)`: more bytes are
/// needed (nothing is consumed). On error the connection must be closed.
pub fn decode(
    buf: &mut BytesMut,
    version: Version,
    limits: &Limits,
) -> Result<Option<Item>, DecodeError> {
    // Heart-beats: any run of EOLs before a frame.
    let mut eols = 0;
    loop {
        match buf.get(eols..) {
            Some([b'\n', ..]) => eols += 1,
            Some([b'\r', b'\n', ..]) => eols += 2,
            _ => break,
        }
    }
    if eols > 0 {
        buf.advance(eols);
        return Ok(Some(Item::HeartBeat));
    }
    if buf.is_empty() {
        return Ok(None);
    }

    // Command and header lines, checked line by line as they arrive.
    let line_limit = limits.max_header_length;
    let mut pos = 0;
    let mut lines: Vec<(usize, usize)> = Vec::new();
    let header_end = loop {
        let rest = &buf[pos..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() > line_limit.saturating_add(1) {
                return Err(DecodeError::HeaderTooLong(line_limit));
            }
            return Ok(None);
        };
        let mut end = pos + nl;
        // The command line may always end in CR LF; header lines only in 1.2.
        if (lines.is_empty() || version == Version::V1_2) && end > pos && buf[end - 1] == b'\r' {
            end -= 1;
        }
        if end - pos > line_limit {
            return Err(DecodeError::HeaderTooLong(line_limit));
        }
        if end == pos && !lines.is_empty() {
            break pos + nl + 1;
        }
        lines.push((pos, end));
        if lines.len() > limits.max_headers.saturating_add(1) {
            return Err(DecodeError::TooManyHeaders(limits.max_headers));
        }
        pos += nl + 1;
    };

    let (cs, ce) = lines[0];
    let command = Command::parse(&buf[cs..ce]).ok_or_else(|| {
        DecodeError::UnknownCommand(String::from_utf8_lossy(&buf[cs..ce]).into_owned())
    })?;
    let escaped = version != Version::V1_0 && command.escapes_headers();
    let mut headers = Vec::with_capacity(lines.len() - 1);
    for &(s, e) in &lines[1..] {
        let line = &buf[s..e];
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(DecodeError::MalformedHeader)?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let (name, value) = if escaped {
            (unescape(name, version)?, unescape(value, version)?)
        } else {
            (utf8(name)?, utf8(value)?)
        };
        headers.push((name, value));
    }

    // The body: by content-length, or up to the first NUL.
    let content_length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| DecodeError::InvalidContentLength(v.clone()))
        })
        .transpose()?;
    let body_len = match content_length {
        Some(n) => {
            if n > limits.max_body_length {
                return Err(DecodeError::BodyTooLarge(limits.max_body_length));
            }
            if buf.len() - header_end <= n {
                return Ok(None);
            }
            if buf[header_end + n] != 0 {
                return Err(DecodeError::MissingNul);
            }
            n
        }
        None => match buf[header_end..].iter().position(|&b| b == 0) {
            Some(n) if n > limits.max_body_length => {
                return Err(DecodeError::BodyTooLarge(limits.max_body_length))
            }
            Some(n) => n,
            None if buf.len() - header_end > limits.max_body_length => {
                return Err(DecodeError::BodyTooLarge(limits.max_body_length))
            }
            None => return Ok(None),
        },
    };
    let mut frame_bytes = buf.split_to(header_end + body_len + 1);
    frame_bytes.advance(header_end);
    frame_bytes.truncate(body_len);
    Ok(Some(Item::Frame(Frame {
        command,
        headers,
        body: frame_bytes.freeze(),
    })))
}

fn utf8(bytes: &[u8]) -> Result<String, DecodeError> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| DecodeError::InvalidUtf8)
}

fn unescape(bytes: &[u8], version: Version) -> Result<String, DecodeError> {
    if !bytes.contains(&b'\\') {
        return utf8(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut it = bytes.iter();
    while let Some(&b) = it.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match it.next() {
            Some(b'n') => out.push(b'\n'),
            Some(b'c') => out.push(b':'),
            Some(b'\\') => out.push(b'\\'),
            Some(b'r') if version == Version::V1_2 => out.push(b'\r'),
            _ => return Err(DecodeError::InvalidEscape),
        }
    }
    String::from_utf8(out).map_err(|_| DecodeError::InvalidUtf8)
}

fn escape_into(text: &str, version: Version, escaped: bool, out: &mut BytesMut) {
    if !escaped {
        if version == Version::V1_0 || !text.contains(['\n', '\r']) {
            // 1.0 has no escapes: characters that would break the frame
            // structure are replaced rather than sent raw.
            for b in text.bytes() {
                out.put_u8(if b == b'\n' || b == b'\r' { b' ' } else { b });
            }
        } else {
            out.put_slice(text.replace(['\n', '\r'], " ").as_bytes());
        }
        return;
    }
    for b in text.bytes() {
        match b {
            b'\\' => out.put_slice(b"\\\\"),
            b'\n' => out.put_slice(b"\\n"),
            b':' => out.put_slice(b"\\c"),
            b'\r' if version == Version::V1_2 => out.put_slice(b"\\r"),
            b => out.put_u8(b),
        }
    }
}

/// Append `frame` to `out`, escaping headers for `version`. Headers are
/// written as given: the caller adds `content-length` when the body may
/// contain NUL (the channel always does for MESSAGE and ERROR).
pub fn encode(frame: &Frame, version: Version, out: &mut BytesMut) {
    let escaped = version != Version::V1_0 && frame.command.escapes_headers();
    out.reserve(encoded_len_hint(frame));
    out.put_slice(frame.command.as_str().as_bytes());
    out.put_u8(b'\n');
    for (name, value) in &frame.headers {
        if version == Version::V1_0 || !frame.command.escapes_headers() {
            // A colon in a name cannot be represented unescaped.
            escape_into(&name.replace(':', "_"), version, false, out);
        } else {
            escape_into(name, version, escaped, out);
        }
        out.put_u8(b':');
        escape_into(value, version, escaped, out);
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.put_slice(&frame.body);
    out.put_u8(0);
}

/// `frame` encoded as bytes.
pub fn to_bytes(frame: &Frame, version: Version) -> Bytes {
    let mut out = BytesMut::new();
    encode(frame, version, &mut out);
    out.freeze()
}

/// A heart-beat: one EOL.
pub fn encode_heartbeat(out: &mut BytesMut) {
    out.put_u8(b'\n');
}

fn encoded_len_hint(frame: &Frame) -> usize {
    frame.command.as_str().len()
        + 3
        + frame
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>()
        + frame.body.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(bytes: &[u8], version: Version) -> Result<Option<Item>, DecodeError> {
        decode(&mut BytesMut::from(bytes), version, &Limits::default())
    }

    fn frame(bytes: &[u8], version: Version) -> Frame {
        match dec(bytes, version) {
            Ok(Some(Item::Frame(f))) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[test]
    fn spec_example_send() {
        let f = frame(
            b"SEND\ndestination:/queue/a\ncontent-type:text/plain\n\nhello queue a\0",
            Version::V1_2,
        );
        assert_eq!(f.command, Command::Send);
        assert_eq!(f.header("destination"), Some("/queue/a"));
        assert_eq!(&f.body[..], b"hello queue a");
    }

    #[test]
    fn escapes_per_version() {
        let raw = b"MESSAGE\nk\\c:a\\nb\\\\c\\r\n\n\0";
        assert_eq!(dec(raw, Version::V1_1), Err(DecodeError::InvalidEscape));
        let f = frame(raw, Version::V1_2);
        assert_eq!(f.headers, vec![("k:".into(), "a\nb\\c\r".into())]);
        let f = frame(b"MESSAGE\nk\\c:a\\nb\n\n\0", Version::V1_1);
        assert_eq!(f.headers, vec![("k:".into(), "a\nb".into())]);
        // 1.0: backslashes are plain characters.
        let f = frame(b"MESSAGE\nk:a\\nb\\t\n\n\0", Version::V1_0);
        assert_eq!(f.headers, vec![("k".into(), "a\\nb\\t".into())]);
        assert_eq!(
            dec(b"SEND\nk:\\t\n\n\0", Version::V1_2),
            Err(DecodeError::InvalidEscape)
        );
    }

    #[test]
    fn connect_headers_are_not_unescaped() {
        let f = frame(b"CONNECT\nlogin:a\\cb\n\n\0", Version::V1_2);
        assert_eq!(f.header("login"), Some("a\\cb"));
    }

    #[test]
    fn content_length_body_with_nuls() {
        let f = frame(
            b"SEND\ndestination:a\ncontent-length:5\n\na\0b\0c\0",
            Version::V1_1,
        );
        assert_eq!(&f.body[..], b"a\0b\0c");
        assert_eq!(
            dec(b"SEND\ncontent-length:2\n\nabc\0", Version::V1_2),
            Err(DecodeError::MissingNul)
        );
        assert_eq!(
            dec(b"SEND\ncontent-length:x\n\n\0", Version::V1_2),
            Err(DecodeError::InvalidContentLength("x".into()))
        );
    }

    #[test]
    fn heartbeats_and_crlf() {
        let mut buf = BytesMut::from(&b"\n\r\n\nSEND\r\na:b\r\n\r\nx\0\n"[..]);
        let l = Limits::default();
        assert_eq!(
            decode(&mut buf, Version::V1_2, &l),
            Ok(Some(Item::HeartBeat))
        );
        let Ok(Some(Item::Frame(f))) = decode(&mut buf, Version::V1_2, &l) else {
            panic!("frame expected")
        };
        assert_eq!(f.headers, vec![("a".into(), "b".into())]);
        assert_eq!(
            decode(&mut buf, Version::V1_2, &l),
            Ok(Some(Item::HeartBeat))
        );
        assert!(buf.is_empty());
        assert_eq!(decode(&mut buf, Version::V1_2, &l), Ok(None));
        // A lone CR waits for its LF.
        let mut cr = BytesMut::from(&b"\r"[..]);
        assert_eq!(decode(&mut cr, Version::V1_2, &l), Ok(None));
    }

    #[test]
    fn limits() {
        let l = Limits {
            max_headers: 2,
            max_header_length: 10,
            max_body_length: 4,
        };
        let mut b = BytesMut::from(&b"SEND\na:1\nb:2\nc:3\n\n\0"[..]);
        assert_eq!(
            decode(&mut b, Version::V1_2, &l),
            Err(DecodeError::TooManyHeaders(2))
        );
        let mut b = BytesMut::from(&b"SEND\na:12345678901\n\n\0"[..]);
        assert_eq!(
            decode(&mut b, Version::V1_2, &l),
            Err(DecodeError::HeaderTooLong(10))
        );
        // Detected before the line is complete.
        let mut b = BytesMut::from(&b"SEND\na:123456789012345"[..]);
        assert_eq!(
            decode(&mut b, Version::V1_2, &l),
            Err(DecodeError::HeaderTooLong(10))
        );
        let mut b = BytesMut::from(&b"SEND\n\n12345"[..]);
        assert_eq!(
            decode(&mut b, Version::V1_2, &l),
            Err(DecodeError::BodyTooLarge(4))
        );
        let mut b = BytesMut::from(&b"SEND\ncontent-length:5\n\n"[..]);
        let l = Limits {
            max_header_length: 64,
            ..l
        };
        assert_eq!(
            decode(&mut b, Version::V1_2, &l),
            Err(DecodeError::BodyTooLarge(4))
        );
    }

    #[test]
    fn unknown_command_and_bad_header() {
        assert_eq!(
            dec(b"send\n\n\0", Version::V1_2),
            Err(DecodeError::UnknownCommand("send".into()))
        );
        assert_eq!(
            dec(b"SEND\nnocolon\n\n\0", Version::V1_2),
            Err(DecodeError::MalformedHeader)
        );
    }

    #[test]
    fn encode_escapes_per_version() {
        let f = Frame::new(Command::Message)
            .with("a:b", "x\ny\\z\r")
            .with_body(&b"hi"[..]);
        assert_eq!(
            &to_bytes(&f, Version::V1_2)[..],
            b"MESSAGE\na\\cb:x\\ny\\\\z\\r\n\nhi\0"
        );
        assert_eq!(
            &to_bytes(&f, Version::V1_1)[..],
            b"MESSAGE\na\\cb:x\\ny\\\\z\r\n\nhi\0"
        );
        assert_eq!(
            &to_bytes(&f, Version::V1_0)[..],
            b"MESSAGE\na_b:x y\\z \n\nhi\0"
        );
        let c = Frame::new(Command::Connected).with("version", "1.2");
        assert_eq!(
            &to_bytes(&c, Version::V1_2)[..],
            b"CONNECTED\nversion:1.2\n\n\0"
        );
    }
}
