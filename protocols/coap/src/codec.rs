//! Bytes ⇄ [`Message`], with `coap-lite` doing the wire format (RFC 7252 §3).
//!
//! `coap-lite` parses the header, token and options; this module adds the
//! format checks it leaves out and classifies failures the way §4.2/§4.3
//! want them handled:
//! - fewer than 4 bytes or an unknown version: silently ignored (§3);
//! - anything else malformed once the header is readable (token length
//!   9–15, a bad option delta/length, a payload marker with no payload, an
//!   Empty message with content): a message format error — a CON is
//!   rejected with a matching RST, a NON ignored (§4.2, §4.3).
//!
//! Decoding never panics on any input (proptest and the `coap_decode`
//! fuzz target check it).

use bytes::Bytes;
use coap_lite::{CoapOption, Header, HeaderRaw, Packet};
use thiserror::Error;

use crate::msg::{Code, Message, MessageType, Token};

/// Why a datagram is not a valid CoAP message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Shorter than the 4-byte header: nothing to answer (§3).
    #[error("datagram shorter than the CoAP header")]
    TooShort,
    /// Version other than 1: silently ignored (§3).
    #[error("unknown CoAP version {0}")]
    BadVersion(u8),
    /// The header is readable but the rest is not (§3, §4.1): a CON is
    /// rejected with a RST for `message_id`.
    #[error("message format error: {why}")]
    Format {
        /// Type from the header.
        mtype: MessageType,
        /// Message id from the header.
        message_id: u16,
        /// What is wrong.
        why: &'static str,
    },
}

impl DecodeError {
    /// The message id to reject with a RST, when the message was a CON
    /// whose header could be read.
    pub fn reject_id(&self) -> Option<u16> {
        match self {
            DecodeError::Format {
                mtype: MessageType::Con,
                message_id,
                ..
            } => Some(*message_id),
            _ => None,
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// The wire library refused it (e.g. an option number out of range).
    #[error("cannot encode CoAP message: {0}")]
    Wire(String),
}

fn type_of(byte0: u8) -> MessageType {
    match (byte0 >> 4) & 0x3 {
        0 => MessageType::Con,
        1 => MessageType::Non,
        2 => MessageType::Ack,
        _ => MessageType::Rst,
    }
}

fn type_bits(t: MessageType) -> u8 {
    match t {
        MessageType::Con => 0,
        MessageType::Non => 1,
        MessageType::Ack => 2,
        MessageType::Rst => 3,
    }
}

/// Decode one datagram.
pub fn decode(data: &[u8]) -> Result<Message, DecodeError> {
    if data.len() < 4 {
        return Err(DecodeError::TooShort);
    }
    let version = data[0] >> 6;
    if version != 1 {
        return Err(DecodeError::BadVersion(version));
    }
    let mtype = type_of(data[0]);
    let message_id = u16::from_be_bytes([data[2], data[3]]);
    let tkl = data[0] & 0x0F;
    let format = |why| DecodeError::Format {
        mtype,
        message_id,
        why,
    };
    if tkl > 8 {
        return Err(format("token length 9-15 is reserved [RFC 7252 §3]"));
    }
    if data[1] == 0 && data.len() > 4 {
        // An Empty message has nothing after the header [RFC 7252 §4.1].
        return Err(format(
            "Empty message with token, options or payload [RFC 7252 §4.1]",
        ));
    }
    let packet = Packet::from_bytes(data).map_err(|e| {
        format(match e {
            coap_lite::error::MessageError::InvalidTokenLength => "truncated token",
            coap_lite::error::MessageError::InvalidOptionDelta => {
                "invalid option delta [RFC 7252 §3.1]"
            }
            coap_lite::error::MessageError::InvalidOptionLength => {
                "invalid option length [RFC 7252 §3.1]"
            }
            _ => "invalid message",
        })
    })?;
    let token = Token::new(packet.get_token()).ok_or_else(|| format("token too long"))?;
    let mut options = Vec::new();
    for (number, values) in packet.options() {
        for v in values {
            options.push((*number, v.clone()));
        }
    }
    let message = Message {
        mtype,
        code: Code(data[1]),
        message_id,
        token,
        options,
        payload: Bytes::from(packet.payload),
    };
    if message.payload.is_empty() && data.last() == Some(&0xFF) {
        // Either the last option value ends in 0xFF, or a payload marker
        // is followed by nothing, which is a format error [RFC 7252 §3].
        // Option encoding is unique, so re-encoding tells them apart.
        if encode(&message).map_or(true, |again| again.len() != data.len()) {
            return Err(format("payload marker without payload [RFC 7252 §3]"));
        }
    }
    Ok(message)
}

/// Encode a message.
pub fn encode(message: &Message) -> Result<Vec<u8>, EncodeError> {
    let tkl = message.token.len() as u8;
    let mid = message.message_id.to_be_bytes();
    let raw = [
        0x40 | (type_bits(message.mtype) << 4) | tkl,
        message.code.0,
        mid[0],
        mid[1],
    ];
    let header = HeaderRaw::try_from(&raw[..]).map_err(|e| EncodeError::Wire(e.to_string()))?;
    let mut packet = Packet::new();
    packet.header = Header::from_raw(&header);
    packet.set_token(message.token.as_bytes().to_vec());
    for (number, value) in &message.options {
        packet.add_option(CoapOption::from(*number), value.clone());
    }
    packet.payload = message.payload.to_vec();
    packet
        .to_bytes_unlimited()
        .map_err(|e| EncodeError::Wire(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::opt;

    #[test]
    fn rfc7252_figure_example_get() {
        // CON GET, mid 0x7d34, token none, Uri-Path "temperature" (§A example).
        let mut bytes = vec![0x40, 0x01, 0x7d, 0x34, 0xbb];
        bytes.extend_from_slice(b"temperature");
        let m = decode(&bytes).expect("decode");
        assert_eq!(m.mtype, MessageType::Con);
        assert_eq!(m.code, Code::GET);
        assert_eq!(m.message_id, 0x7d34);
        assert_eq!(m.path(), vec!["temperature"]);
        assert_eq!(encode(&m).expect("encode"), bytes);
    }

    #[test]
    fn piggybacked_response_with_payload() {
        let mut m = Message::new(
            MessageType::Ack,
            Code::CONTENT,
            0x7d34,
            Token::new(&[0x71]).expect("token"),
        );
        m.add_uint_option(opt::CONTENT_FORMAT, 0);
        m.payload = Bytes::from_static(b"22.3 C");
        let bytes = encode(&m).expect("encode");
        assert_eq!(&bytes[..5], &[0x61, 0x45, 0x7d, 0x34, 0x71]);
        assert_eq!(decode(&bytes), Ok(m));
    }

    #[test]
    fn format_errors() {
        // Token length 9.
        assert!(matches!(
            decode(&[0x49, 0x01, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(DecodeError::Format { message_id: 1, .. })
        ));
        // Empty message with a token.
        assert!(matches!(
            decode(&[0x41, 0x00, 0, 2, 0xAA]),
            Err(DecodeError::Format { .. })
        ));
        // Payload marker with nothing after it.
        assert!(matches!(
            decode(&[0x40, 0x02, 0, 3, 0xFF]),
            Err(DecodeError::Format { .. })
        ));
        // Option delta 15 that is not a payload marker.
        assert!(matches!(
            decode(&[0x40, 0x01, 0, 4, 0xF1, 0x00]),
            Err(DecodeError::Format { .. })
        ));
        assert_eq!(decode(&[0x40, 0x01]), Err(DecodeError::TooShort));
        assert_eq!(decode(&[0x80, 0x01, 0, 1]), Err(DecodeError::BadVersion(2)));
    }

    #[test]
    fn option_ending_in_ff_is_not_a_marker() {
        let mut m = Message::new(MessageType::Non, Code::POST, 9, Token::EMPTY);
        m.add_option(opt::URI_PATH, vec![b'a', 0xFF]);
        let bytes = encode(&m).expect("encode");
        assert_eq!(decode(&bytes), Ok(m));
    }

    #[test]
    fn long_options_round_trip() {
        let mut m = Message::new(MessageType::Con, Code::PUT, 7, Token::EMPTY);
        m.add_option(opt::URI_PATH, vec![b'x'; 300]);
        m.add_option(opt::NO_RESPONSE, vec![2]);
        m.add_option(2000, vec![1; 20]);
        m.payload = Bytes::from(vec![7u8; 2000]);
        let bytes = encode(&m).expect("encode");
        assert_eq!(decode(&bytes), Ok(m));
    }
}
