//! The load generator's CoAP side, just enough of it: a `POST
//! /ps/{topic}` request (EMQX's publish resource, connectionless mode)
//! encoded once and patched per message, and the header of the answers.
//!
//! Written from RFC 7252 §3, not with the gateway's codec, so a run is
//! also a small interoperability check.
//!
//! ```text
//!  0   Ver=1 | T (CON 0, NON 1, ACK 2, RST 3) | TKL
//!  1   Code (class << 5 | detail): POST = 0.02, Changed = 2.04
//!  2-3 Message ID
//!      Token (TKL octets), Options (delta-encoded, ascending numbers),
//!      0xFF, Payload
//! ```
//!
//! Options written: Uri-Path (11) per topic level after `ps`, Uri-Query
//! (15) for `qos=`, and No-Response (258, RFC 7967) when asked.

use anyhow::bail;

use crate::payload::{Stamp, PADDING, STAMP_LEN};

/// Message types (RFC 7252 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgType {
    /// Confirmable.
    Con,
    /// Non-confirmable.
    Non,
    /// Acknowledgement.
    Ack,
    /// Reset.
    Rst,
}

impl MsgType {
    fn bits(self) -> u8 {
        match self {
            MsgType::Con => 0,
            MsgType::Non => 1,
            MsgType::Ack => 2,
            MsgType::Rst => 3,
        }
    }

    fn from_bits(bits: u8) -> MsgType {
        match bits & 0b11 {
            0 => MsgType::Con,
            1 => MsgType::Non,
            2 => MsgType::Ack,
            _ => MsgType::Rst,
        }
    }
}

/// Option numbers used here (RFC 7252 §5.10, RFC 7967).
pub mod opt {
    /// Uri-Path.
    pub const URI_PATH: u16 = 11;
    /// Uri-Query.
    pub const URI_QUERY: u16 = 15;
    /// No-Response.
    pub const NO_RESPONSE: u16 = 258;
}

/// Code 0.02 POST.
pub const POST: u8 = 0x02;
/// Code 2.04 Changed: a publish accepted.
pub const CHANGED: u8 = 0x44;

/// No-Response value: not interested in 2.xx answers (RFC 7967 §2.1).
pub const NO_RESPONSE_2XX: u8 = 2;

/// An empty CON (a "ping", RFC 7252 §4.3): the server answers with a RST
/// of the same Message ID, so it tells whether a CoAP server listens.
pub fn ping(message_id: u16) -> [u8; 4] {
    let [hi, lo] = message_id.to_be_bytes();
    [0x40, 0x00, hi, lo]
}

/// `c.dd` form of a code.
pub fn code_name(code: u8) -> String {
    format!("{}.{:02}", code >> 5, code & 0x1F)
}

/// Append one option: delta and length nibbles with their extensions
/// (RFC 7252 §3.1), then the value.
fn put_option(out: &mut Vec<u8>, delta: u16, value: &[u8]) -> anyhow::Result<()> {
    fn nibble(v: usize) -> (u8, Vec<u8>) {
        if v < 13 {
            (v as u8, Vec::new())
        } else if v < 269 {
            (13, vec![(v - 13) as u8])
        } else {
            (14, ((v - 269) as u16).to_be_bytes().to_vec())
        }
    }
    if value.len() > 65_535 + 269 {
        bail!("CoAP option value of {} bytes is too long", value.len());
    }
    let (d, d_ext) = nibble(usize::from(delta));
    let (l, l_ext) = nibble(value.len());
    out.push((d << 4) | l);
    out.extend_from_slice(&d_ext);
    out.extend_from_slice(&l_ext);
    out.extend_from_slice(value);
    Ok(())
}

/// A `POST /ps/{topic}` request encoded once; each message copies it and
/// patches the Message ID and the payload stamp.
#[derive(Debug, Clone)]
pub struct PostTemplate {
    frame: Vec<u8>,
    /// Offset of the payload.
    payload_at: usize,
}

impl PostTemplate {
    /// A CON or NON `POST /ps/{levels joined by /}` with `token` (at most
    /// 8 bytes), an optional `qos=` query, an optional No-Response (2.xx
    /// suppressed) and a `payload_len`-byte payload, at least
    /// [`STAMP_LEN`]. Levels must not be empty or contain `/`, `?`, `%`.
    pub fn new(
        mtype: MsgType,
        levels: &[&str],
        qos: Option<u8>,
        no_response: bool,
        token: &[u8],
        payload_len: usize,
    ) -> anyhow::Result<PostTemplate> {
        if payload_len < STAMP_LEN {
            bail!("payload must be at least {STAMP_LEN} bytes");
        }
        if token.len() > 8 {
            bail!("a CoAP token has at most 8 bytes");
        }
        if levels.is_empty() {
            bail!("a publish needs a topic");
        }
        if let Some(bad) = levels
            .iter()
            .find(|l| l.is_empty() || l.contains(['/', '?', '%']))
        {
            bail!("topic level {bad:?} cannot be sent as a Uri-Path segment as is");
        }
        if qos.is_some_and(|q| q > 2) {
            bail!("qos= must be 0, 1 or 2");
        }
        let mut frame = Vec::with_capacity(64 + payload_len);
        frame.push((1 << 6) | (mtype.bits() << 4) | token.len() as u8);
        frame.push(POST);
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(token);
        let mut last = 0;
        for segment in std::iter::once("ps").chain(levels.iter().copied()) {
            put_option(&mut frame, opt::URI_PATH - last, segment.as_bytes())?;
            last = opt::URI_PATH;
        }
        if let Some(q) = qos {
            put_option(
                &mut frame,
                opt::URI_QUERY - last,
                format!("qos={q}").as_bytes(),
            )?;
            last = opt::URI_QUERY;
        }
        if no_response {
            put_option(&mut frame, opt::NO_RESPONSE - last, &[NO_RESPONSE_2XX])?;
        }
        frame.push(0xFF);
        let payload_at = frame.len();
        frame.resize(payload_at + payload_len, PADDING);
        Ok(PostTemplate { frame, payload_at })
    }

    /// Encoded size of one message.
    pub fn len(&self) -> usize {
        self.frame.len()
    }

    /// Always false: a request has at least a header.
    pub fn is_empty(&self) -> bool {
        self.frame.is_empty()
    }

    /// The datagram for `message_id` and `stamp`, written into `out`.
    pub fn write(&self, out: &mut Vec<u8>, message_id: u16, stamp: &Stamp) {
        out.clear();
        out.extend_from_slice(&self.frame);
        out[2..4].copy_from_slice(&message_id.to_be_bytes());
        stamp.write(&mut out[self.payload_at..]);
    }
}

/// The header of a message from the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Type.
    pub mtype: MsgType,
    /// Code (class << 5 | detail).
    pub code: u8,
    /// Message ID.
    pub message_id: u16,
}

/// Decode the header of a datagram; `None` when it is not CoAP version 1
/// or is shorter than its header and token.
pub fn decode_header(datagram: &[u8]) -> Option<Header> {
    let [first, code, hi, lo, ..] = *datagram else {
        return None;
    };
    let tkl = usize::from(first & 0x0F);
    if first >> 6 != 1 || tkl > 8 || datagram.len() < 4 + tkl {
        return None;
    }
    Some(Header {
        mtype: MsgType::from_bits(first >> 4),
        code,
        message_id: u16::from_be_bytes([hi, lo]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAMP: Stamp = Stamp {
        seq: 42,
        publisher: 3,
        sent_ns: 987_654_321,
    };

    /// Options of an encoded request, decoded independently of the
    /// encoder: (number, value) in order, and the payload.
    fn parse(datagram: &[u8]) -> (Vec<(u16, Vec<u8>)>, Vec<u8>) {
        let tkl = usize::from(datagram[0] & 0x0F);
        let mut at = 4 + tkl;
        let mut number = 0u16;
        let mut options = Vec::new();
        let ext = |at: &mut usize, nibble: u8| -> usize {
            match nibble {
                13 => {
                    *at += 1;
                    usize::from(datagram[*at - 1]) + 13
                }
                14 => {
                    *at += 2;
                    usize::from(u16::from_be_bytes([datagram[*at - 2], datagram[*at - 1]])) + 269
                }
                n => usize::from(n),
            }
        };
        while datagram[at] != 0xFF {
            let byte = datagram[at];
            at += 1;
            let delta = ext(&mut at, byte >> 4);
            let len = ext(&mut at, byte & 0x0F);
            number += delta as u16;
            options.push((number, datagram[at..at + len].to_vec()));
            at += len;
        }
        (options, datagram[at + 1..].to_vec())
    }

    #[test]
    fn non_post_bytes() {
        let t = PostTemplate::new(MsgType::Non, &["t"], None, false, &[0xAB], 16).expect("t");
        let mut out = Vec::new();
        t.write(&mut out, 0x1234, &STAMP);
        assert_eq!(
            &out[..11],
            &[0x51, 0x02, 0x12, 0x34, 0xAB, 0xB2, b'p', b's', 0x01, b't', 0xFF]
        );
        assert_eq!(out.len(), 11 + 16);
        assert_eq!(t.len(), out.len());
        assert_eq!(Stamp::read(&out[11..]), Some(STAMP));
    }

    #[test]
    fn con_post_with_query_and_no_response() {
        let t = PostTemplate::new(
            MsgType::Con,
            &["bench", "r1", "coap", "7"],
            Some(1),
            true,
            &[1, 2, 3, 4],
            64,
        )
        .expect("t");
        let mut out = Vec::new();
        t.write(&mut out, 0xFFFE, &STAMP);
        assert_eq!(&out[..4], &[0x44, 0x02, 0xFF, 0xFE]);
        assert_eq!(&out[4..8], &[1, 2, 3, 4]);
        let (options, payload) = parse(&out);
        let want: Vec<(u16, Vec<u8>)> = vec![
            (11, b"ps".to_vec()),
            (11, b"bench".to_vec()),
            (11, b"r1".to_vec()),
            (11, b"coap".to_vec()),
            (11, b"7".to_vec()),
            (15, b"qos=1".to_vec()),
            (258, vec![2]),
        ];
        assert_eq!(options, want);
        assert_eq!(payload.len(), 64);
        assert_eq!(Stamp::read(&payload), Some(STAMP));
        // No-Response right after Uri-Path: delta 247 = 13 + 234.
        let t = PostTemplate::new(MsgType::Non, &["x"], None, true, &[], 16).expect("t");
        t.write(&mut out, 1, &STAMP);
        assert_eq!(
            &out[4..13],
            &[0xB2, b'p', b's', 0x01, b'x', 0xD1, 234, 2, 0xFF]
        );
    }

    #[test]
    fn long_segments_use_extended_lengths() {
        let mid = "m".repeat(20);
        let long = "l".repeat(300);
        let t = PostTemplate::new(MsgType::Non, &[&mid, &long], None, false, &[], 16).expect("t");
        let mut out = Vec::new();
        t.write(&mut out, 9, &STAMP);
        let (options, payload) = parse(&out);
        assert_eq!(options[1], (11, mid.into_bytes()));
        assert_eq!(options[2], (11, long.into_bytes()));
        assert_eq!(Stamp::read(&payload), Some(STAMP));
    }

    #[test]
    fn bad_templates_are_refused() {
        let ok = |levels: &[&str], qos, token: &[u8], len| {
            PostTemplate::new(MsgType::Non, levels, qos, false, token, len).is_ok()
        };
        assert!(ok(&["a"], Some(2), &[0; 8], 16));
        assert!(!ok(&["a"], None, &[], 15));
        assert!(!ok(&["a"], Some(3), &[], 16));
        assert!(!ok(&["a"], None, &[0; 9], 16));
        assert!(!ok(&[], None, &[], 16));
        assert!(!ok(&["a/b"], None, &[], 16));
        assert!(!ok(&[""], None, &[], 16));
    }

    #[test]
    fn headers_decode() {
        // Piggy-backed ACK 2.04 with a one-byte token.
        assert_eq!(
            decode_header(&[0x61, 0x44, 0x00, 0x07, 0xAA]),
            Some(Header {
                mtype: MsgType::Ack,
                code: CHANGED,
                message_id: 7
            })
        );
        assert_eq!(
            decode_header(&[0x50, 0x80, 0x01, 0x00]).map(|h| (h.mtype, code_name(h.code))),
            Some((MsgType::Non, String::from("4.00")))
        );
        assert_eq!(
            decode_header(&[0x70, 0, 0, 0]).map(|h| h.mtype),
            Some(MsgType::Rst)
        );
        assert_eq!(decode_header(&[0x61, 0x44, 0x00]), None);
        assert_eq!(decode_header(&[0x62, 0x44, 0x00, 0x07, 0xAA]), None);
        assert_eq!(decode_header(&[0x81, 0x44, 0x00, 0x07, 0xAA]), None);
        assert_eq!(
            decode_header(&[0x69, 0x44, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
            None
        );
        assert_eq!(code_name(0xA3), "5.03");
        assert_eq!(ping(0x0102), [0x40, 0x00, 0x01, 0x02]);
        assert_eq!(
            decode_header(&[0x70, 0x00, 0x01, 0x02]),
            Some(Header {
                mtype: MsgType::Rst,
                code: 0,
                message_id: 0x0102
            })
        );
    }
}
