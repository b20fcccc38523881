//! CoAP messages as plain data (RFC 7252 §3): type, code, message id,
//! token, options and payload.
//!
//! This is the model every other module works with; [`crate::codec`] turns
//! it into bytes and back (through `coap-lite`). Options are kept as a list
//! sorted by option number, repeated options in their order of appearance
//! (§3.1), so a message survives decode → encode unchanged.

use bytes::Bytes;

/// Message type (§3, the `T` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Confirmable: retransmitted until acknowledged.
    Con,
    /// Non-confirmable.
    Non,
    /// Acknowledgement of a CON.
    Ack,
    /// Reset: "I cannot process this CON/NON".
    Rst,
}

/// A message code: class (3 bits) and detail (5 bits), written `c.dd` (§3, §12.1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(pub u8);

impl Code {
    /// 0.00: an empty message (ping, empty ACK, RST).
    pub const EMPTY: Code = Code(0x00);
    /// 0.01 GET.
    pub const GET: Code = Code(0x01);
    /// 0.02 POST.
    pub const POST: Code = Code(0x02);
    /// 0.03 PUT.
    pub const PUT: Code = Code(0x03);
    /// 0.04 DELETE.
    pub const DELETE: Code = Code(0x04);
    /// 2.01 Created.
    pub const CREATED: Code = Code(0x41);
    /// 2.02 Deleted.
    pub const DELETED: Code = Code(0x42);
    /// 2.03 Valid.
    pub const VALID: Code = Code(0x43);
    /// 2.04 Changed.
    pub const CHANGED: Code = Code(0x44);
    /// 2.05 Content.
    pub const CONTENT: Code = Code(0x45);
    /// 2.31 Continue (RFC 7959 §2.9.1).
    pub const CONTINUE: Code = Code(0x5F);
    /// 4.00 Bad Request.
    pub const BAD_REQUEST: Code = Code(0x80);
    /// 4.01 Unauthorized.
    pub const UNAUTHORIZED: Code = Code(0x81);
    /// 4.02 Bad Option.
    pub const BAD_OPTION: Code = Code(0x82);
    /// 4.03 Forbidden.
    pub const FORBIDDEN: Code = Code(0x83);
    /// 4.04 Not Found.
    pub const NOT_FOUND: Code = Code(0x84);
    /// 4.05 Method Not Allowed.
    pub const METHOD_NOT_ALLOWED: Code = Code(0x85);
    /// 4.08 Request Entity Incomplete (RFC 7959 §2.9.2).
    pub const REQUEST_ENTITY_INCOMPLETE: Code = Code(0x88);
    /// 4.13 Request Entity Too Large.
    pub const REQUEST_ENTITY_TOO_LARGE: Code = Code(0x8D);
    /// 4.15 Unsupported Content-Format.
    pub const UNSUPPORTED_CONTENT_FORMAT: Code = Code(0x8F);
    /// 4.29 Too Many Requests (RFC 8516).
    pub const TOO_MANY_REQUESTS: Code = Code(0x9D);
    /// 5.00 Internal Server Error.
    pub const INTERNAL_SERVER_ERROR: Code = Code(0xA0);
    /// 5.01 Not Implemented.
    pub const NOT_IMPLEMENTED: Code = Code(0xA1);
    /// 5.03 Service Unavailable.
    pub const SERVICE_UNAVAILABLE: Code = Code(0xA3);
    /// 5.05 Proxying Not Supported.
    pub const PROXYING_NOT_SUPPORTED: Code = Code(0xA5);

    /// From class and detail.
    pub const fn new(class: u8, detail: u8) -> Code {
        Code((class << 5) | (detail & 0x1F))
    }

    /// The class (0 request, 2 success, 4 client error, 5 server error).
    pub fn class(self) -> u8 {
        self.0 >> 5
    }

    /// The detail.
    pub fn detail(self) -> u8 {
        self.0 & 0x1F
    }

    /// 0.00.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// A request method (0.01–0.31).
    pub fn is_request(self) -> bool {
        self.class() == 0 && self.0 != 0
    }

    /// A response (classes 2–5).
    pub fn is_response(self) -> bool {
        (2..=5).contains(&self.class())
    }
}

impl std::fmt::Debug for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:02}", self.class(), self.detail())
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Option numbers this crate knows (RFC 7252 §5.10, RFC 7641, RFC 7959, RFC 7967).
pub mod opt {
    /// If-Match.
    pub const IF_MATCH: u16 = 1;
    /// Uri-Host.
    pub const URI_HOST: u16 = 3;
    /// ETag.
    pub const ETAG: u16 = 4;
    /// If-None-Match.
    pub const IF_NONE_MATCH: u16 = 5;
    /// Observe (RFC 7641).
    pub const OBSERVE: u16 = 6;
    /// Uri-Port.
    pub const URI_PORT: u16 = 7;
    /// Location-Path.
    pub const LOCATION_PATH: u16 = 8;
    /// OSCORE (RFC 8613), not supported.
    pub const OSCORE: u16 = 9;
    /// Uri-Path.
    pub const URI_PATH: u16 = 11;
    /// Content-Format.
    pub const CONTENT_FORMAT: u16 = 12;
    /// Max-Age.
    pub const MAX_AGE: u16 = 14;
    /// Uri-Query.
    pub const URI_QUERY: u16 = 15;
    /// Accept.
    pub const ACCEPT: u16 = 17;
    /// Location-Query.
    pub const LOCATION_QUERY: u16 = 20;
    /// Block2 (RFC 7959).
    pub const BLOCK2: u16 = 23;
    /// Block1 (RFC 7959).
    pub const BLOCK1: u16 = 27;
    /// Size2 (RFC 7959).
    pub const SIZE2: u16 = 28;
    /// Proxy-Uri.
    pub const PROXY_URI: u16 = 35;
    /// Proxy-Scheme.
    pub const PROXY_SCHEME: u16 = 39;
    /// Size1.
    pub const SIZE1: u16 = 60;
    /// No-Response (RFC 7967).
    pub const NO_RESPONSE: u16 = 258;

    /// Critical options have an odd number (§5.4.1).
    pub fn is_critical(number: u16) -> bool {
        number & 1 == 1
    }
}

/// A token: 0 to 8 opaque bytes chosen by the requester (§5.3.1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Token {
    len: u8,
    bytes: [u8; 8],
}

impl Token {
    /// The empty token.
    pub const EMPTY: Token = Token {
        len: 0,
        bytes: [0; 8],
    };

    /// From bytes; `None` when longer than 8.
    pub fn new(bytes: &[u8]) -> Option<Token> {
        if bytes.len() > 8 {
            return None;
        }
        let mut t = Token {
            len: bytes.len() as u8,
            bytes: [0; 8],
        };
        t.bytes[..bytes.len()].copy_from_slice(bytes);
        Some(t)
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Length 0.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("0x")?;
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// One CoAP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// CON, NON, ACK or RST.
    pub mtype: MessageType,
    /// Method or response code.
    pub code: Code,
    /// Message id, for deduplication and ACK/RST matching (§4.4).
    pub message_id: u16,
    /// Request/response matching (§5.3.1).
    pub token: Token,
    /// Options sorted by number; repeated options keep their order.
    pub options: Vec<(u16, Vec<u8>)>,
    /// Payload (empty when absent).
    pub payload: Bytes,
}

impl Message {
    /// A message with no options and no payload.
    pub fn new(mtype: MessageType, code: Code, message_id: u16, token: Token) -> Message {
        Message {
            mtype,
            code,
            message_id,
            token,
            options: Vec::new(),
            payload: Bytes::new(),
        }
    }

    /// An empty message (ACK, RST or ping) for `message_id`.
    pub fn empty(mtype: MessageType, message_id: u16) -> Message {
        Message::new(mtype, Code::EMPTY, message_id, Token::EMPTY)
    }

    /// Add an option, keeping the list sorted (stable for repeats).
    pub fn add_option(&mut self, number: u16, value: impl Into<Vec<u8>>) {
        let at = self.options.partition_point(|(n, _)| *n <= number);
        self.options.insert(at, (number, value.into()));
    }

    /// Add an unsigned-integer option in its shortest form (§3.2).
    pub fn add_uint_option(&mut self, number: u16, value: u32) {
        self.add_option(number, encode_uint(value));
    }

    /// Replace every value of an option with one unsigned integer.
    pub fn set_uint_option(&mut self, number: u16, value: u32) {
        self.remove_option(number);
        self.add_uint_option(number, value);
    }

    /// Remove every value of an option.
    pub fn remove_option(&mut self, number: u16) {
        self.options.retain(|(n, _)| *n != number);
    }

    /// Every value of an option, in order.
    pub fn option_values(&self, number: u16) -> impl Iterator<Item = &[u8]> {
        self.options
            .iter()
            .filter(move |(n, _)| *n == number)
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of an option.
    pub fn option(&self, number: u16) -> Option<&[u8]> {
        self.option_values(number).next()
    }

    /// True when the option is present.
    pub fn has_option(&self, number: u16) -> bool {
        self.options.iter().any(|(n, _)| *n == number)
    }

    /// The first value of a uint option; `Some(Err(_))` when it is longer than 4 bytes.
    pub fn uint_option(&self, number: u16) -> Option<Result<u32, UintTooLong>> {
        self.option(number).map(decode_uint)
    }

    /// Uri-Path segments (§5.10.1), lossily decoded as UTF-8.
    pub fn path(&self) -> Vec<String> {
        self.option_values(opt::URI_PATH)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    }

    /// Set the Uri-Path from `a/b/c` (tests and clients).
    pub fn set_path(&mut self, path: &str) {
        self.remove_option(opt::URI_PATH);
        for seg in path.trim_start_matches('/').split('/') {
            if !seg.is_empty() {
                self.add_option(opt::URI_PATH, seg.as_bytes().to_vec());
            }
        }
    }

    /// Uri-Query items (§5.10.1).
    pub fn queries(&self) -> Vec<String> {
        self.option_values(opt::URI_QUERY)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    }

    /// Content-Format, when present and well formed.
    pub fn content_format(&self) -> Option<u16> {
        self.uint_option(opt::CONTENT_FORMAT)
            .and_then(Result::ok)
            .and_then(|v| u16::try_from(v).ok())
    }
}

/// An unsigned-integer option value longer than 4 bytes (RFC 7252 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("uint option value longer than 4 bytes")]
pub struct UintTooLong;

/// Encode an unsigned integer option value in the fewest bytes (0 = empty).
pub fn encode_uint(value: u32) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes[skip..].to_vec()
}

/// Decode an unsigned integer option value (at most 4 bytes).
pub fn decode_uint(bytes: &[u8]) -> Result<u32, UintTooLong> {
    if bytes.len() > 4 {
        return Err(UintTooLong);
    }
    Ok(bytes.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uint_round_trip() {
        for v in [0u32, 1, 255, 256, 65535, 65536, 0xFF_FFFF, u32::MAX] {
            assert_eq!(decode_uint(&encode_uint(v)), Ok(v));
        }
        assert!(encode_uint(0).is_empty());
        assert_eq!(decode_uint(&[1, 2, 3, 4, 5]), Err(UintTooLong));
    }

    #[test]
    fn options_stay_sorted() {
        let mut m = Message::new(MessageType::Con, Code::GET, 1, Token::EMPTY);
        m.add_option(opt::URI_QUERY, b"b".to_vec());
        m.add_option(opt::URI_PATH, b"ps".to_vec());
        m.add_option(opt::URI_PATH, b"t".to_vec());
        m.add_option(opt::OBSERVE, Vec::new());
        let numbers: Vec<u16> = m.options.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, vec![6, 11, 11, 15]);
        assert_eq!(m.path(), vec!["ps", "t"]);
    }

    #[test]
    fn codes() {
        assert_eq!(Code::CONTENT.to_string(), "2.05");
        assert_eq!(Code::new(4, 2), Code::BAD_OPTION);
        assert!(Code::GET.is_request());
        assert!(!Code::EMPTY.is_request());
        assert!(Code::CONTINUE.is_response());
    }

    #[test]
    fn tokens() {
        assert!(Token::new(&[0; 9]).is_none());
        let t = Token::new(&[1, 2, 3]).expect("token");
        assert_eq!(t.as_bytes(), &[1, 2, 3]);
        assert_eq!(format!("{t:?}"), "0x010203");
    }
}
