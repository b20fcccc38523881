//! Bytes ⇄ [`Packet`]s for MQTT 3.1, 3.1.1 and 5.0, without I/O.
//!
//! This module owns the fixed header (MQTT 5 §2.1, 3.1.1 §2.2): packet
//! type, the per-type flag rules [MQTT-2.1.3-1], the remaining length, and
//! the maximum packet size, which is enforced from the fixed header alone,
//! before the body is waited for or buffered. Each packet body lives in its
//! own file:
//!
//! - `primitives`: integers, strings, binary data, variable byte integers
//!   (§1.5) and the `Sink` encoders write to, so that measuring and
//!   writing a packet share one code path.
//! - `properties`: MQTT 5 properties (§2.2.2).
//! - `connect`: CONNECT and CONNACK (§3.1, §3.2).
//! - `publish`: PUBLISH and PUBACK / PUBREC / PUBREL / PUBCOMP (§3.3–§3.7).
//! - `subscribe`: SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK (§3.8–§3.11).
//! - `control`: PINGREQ, PINGRESP, DISCONNECT and AUTH (§3.12–§3.15).
//!
//! Decoding is zero-copy for binary data: a complete packet is split off
//! the read buffer and frozen, and the PUBLISH payload, passwords, will
//! payloads, correlation and authentication data are slices of it.
//!
//! Every decoding failure is a [`DecodeError`] whose
//! [`reason_code`](DecodeError::reason_code) is the MQTT 5 reason code the
//! channel sends before closing. Arbitrary input never panics.
//!
//! The encoder checks only what it cannot represent or what the packet
//! type forbids outright (field lengths, property placement, fields that do
//! not exist in the version); semantic checks such as "receive maximum is
//! not 0" belong to whoever builds the packet.

mod connect;
mod control;
mod primitives;
mod properties;
mod publish;
mod subscribe;

use bytes::{Buf, BytesMut};

use crate::packet::{Packet, ProtocolVersion, QoS};
use primitives::{put_varint, remaining_length, varint_len, Counter, Reader, Sink, VARINT_MAX};

/// Errors decoding a packet. Each maps to an MQTT 5 reason code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Malformed packet (bad remaining length, truncated field inside a
    /// complete packet, bad flags, invalid UTF-8, QoS 3, …). Reason 0x81.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// Protocol error (property not allowed for this packet, duplicate
    /// property, packet identifier 0, receive maximum 0, empty SUBSCRIBE,
    /// …). Reason 0x82.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// Packet larger than the maximum allowed; detected from the fixed
    /// header before the body is buffered. Reason 0x95.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Total packet size declared by the fixed header.
        size: usize,
        /// The limit in force.
        max: usize,
    },
    /// CONNECT with an unknown protocol name or level. The channel answers
    /// CONNACK 0x01 (3.x) / 0x84 (5).
    #[error("unsupported protocol name or level {level}")]
    UnsupportedProtocol {
        /// The protocol level byte the client sent.
        level: u8,
    },
}

impl DecodeError {
    /// The MQTT 5 reason code for this error: 0x81 Malformed Packet, 0x82
    /// Protocol Error, 0x95 Packet too large, 0x84 Unsupported Protocol
    /// Version.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::Malformed(_) => 0x81,
            DecodeError::Protocol(_) => 0x82,
            DecodeError::TooLarge { .. } => 0x95,
            DecodeError::UnsupportedProtocol { .. } => 0x84,
        }
    }
}

/// Errors encoding a packet. Nothing is written to the buffer when encoding
/// fails.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    /// The remaining length would exceed 268 435 455 bytes (§1.5.5).
    #[error("remaining length {0} exceeds 268435455")]
    PacketTooLarge(usize),
    /// A string or binary field longer than 65 535 bytes (§1.5.4, §1.5.6).
    #[error("string or binary field of {0} bytes exceeds 65535")]
    StringTooLong(usize),
    /// The packet does not exist in the requested version (AUTH in 3.x).
    #[error("{0} does not exist in this protocol version")]
    NotInVersion(&'static str),
    /// A property set on a packet type that may not carry it (§2.2.2.2).
    #[error("property 0x{0:02X} is not allowed in this packet")]
    PropertyNotAllowed(u8),
    /// A field combination the wire format cannot represent or forbids
    /// outright (packet id on a QoS 0 PUBLISH, DUP on QoS 0, …).
    #[error("invalid packet: {0}")]
    Invalid(&'static str),
}

/// Decode one packet from the front of `buf`.
///
/// `Ok(None)`: more bytes are needed; `buf` is untouched. `Ok(Some)`: the
/// packet's bytes have been consumed from `buf`. On `Err` the connection
/// must be closed; `buf` may or may not have been consumed.
///
/// `version` is the connection's negotiated version; CONNECT ignores it
/// and declares its own. `max_packet_size` bounds the whole packet (fixed
/// header included) and is checked as soon as the fixed header is
/// readable, so an oversized packet is refused before its body arrives.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    check_first_byte(first, version)?;
    let Some((remaining, len_bytes)) = remaining_length(&buf[1..])? else {
        return Ok(None);
    };
    let header = 1 + len_bytes;
    let size = header + remaining;
    if size > max_packet_size {
        return Err(DecodeError::TooLarge {
            size,
            max: max_packet_size,
        });
    }
    if buf.len() < size {
        return Ok(None);
    }
    let mut frame = buf.split_to(size);
    frame.advance(header);
    let mut r = Reader::new(frame.freeze());
    let flags = first & 0x0F;
    let packet = match first >> 4 {
        1 => connect::decode_connect(&mut r)?,
        2 => connect::decode_connack(&mut r, version)?,
        3 => publish::decode_publish(&mut r, flags, version)?,
        4 => Packet::PubAck(publish::decode_response(&mut r, version)?),
        5 => Packet::PubRec(publish::decode_response(&mut r, version)?),
        6 => Packet::PubRel(publish::decode_response(&mut r, version)?),
        7 => Packet::PubComp(publish::decode_response(&mut r, version)?),
        8 => subscribe::decode_subscribe(&mut r, version)?,
        9 => subscribe::decode_suback(&mut r, version)?,
        10 => subscribe::decode_unsubscribe(&mut r, version)?,
        11 => subscribe::decode_unsuback(&mut r, version)?,
        12 => control::decode_empty(&mut r, Packet::PingReq)?,
        13 => control::decode_empty(&mut r, Packet::PingResp)?,
        14 => control::decode_disconnect(&mut r, version)?,
        // 15; 0 was refused by `check_first_byte`.
        _ => control::decode_auth(&mut r)?,
    };
    Ok(Some(packet))
}

/// Packet type and flag rules of the first byte (§2.1.2, §2.1.3).
fn check_first_byte(first: u8, version: ProtocolVersion) -> Result<(), DecodeError> {
    let flags = first & 0x0F;
    match first >> 4 {
        0 => Err(DecodeError::Malformed("reserved packet type 0")),
        15 if !version.is_v5() => Err(DecodeError::Malformed(
            "packet type 15 (AUTH) exists only in MQTT 5",
        )),
        3 => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                Err(DecodeError::Malformed("PUBLISH with QoS 3 [MQTT-3.3.1-4]"))
            } else if qos == 0 && flags & 0b1000 != 0 {
                Err(DecodeError::Malformed(
                    "PUBLISH with QoS 0 and DUP set [MQTT-3.3.1-2]",
                ))
            } else {
                Ok(())
            }
        }
        6 | 8 | 10 => match flags {
            0b0010 => Ok(()),
            // MQTT 3.1 had DUP on these packets; tolerate it there.
            0b1010 if version == ProtocolVersion::V3_1 => Ok(()),
            _ => Err(DecodeError::Malformed(
                "PUBREL, SUBSCRIBE and UNSUBSCRIBE need flags 0010 [MQTT-2.1.3-1]",
            )),
        },
        _ if flags != 0 => Err(DecodeError::Malformed(
            "reserved fixed header flags set [MQTT-2.1.3-1]",
        )),
        _ => Ok(()),
    }
}

/// Encode `packet` for `version` into `buf`.
///
/// For 3.x the MQTT 5 parts (properties, reason codes in acks and
/// DISCONNECT, UNSUBACK reason codes) are omitted; AUTH is an error. For 5
/// the short forms of PUBACK / PUBREC / PUBREL / PUBCOMP / DISCONNECT / AUTH
/// are used when the reason is 0 and there are no properties. CONNECT is
/// encoded for its own [`protocol`](crate::packet::Connect::protocol),
/// whatever `version` says. On error nothing is written.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let first = first_byte(packet, version)?;
    let remaining = body_len(packet, version)?;
    buf.reserve(1 + varint_len(remaining) + remaining);
    Sink::put_u8(buf, first);
    put_varint(buf, remaining)?;
    body(packet, version, buf)
}

/// Exact encoded size of `packet` for `version`, fixed header included:
/// what [`encode`] would append. Used to respect a peer's Maximum Packet
/// Size.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    first_byte(packet, version)?;
    let remaining = body_len(packet, version)?;
    Ok(1 + varint_len(remaining) + remaining)
}

/// Remaining length of `packet`, refused above the variable byte integer
/// limit.
fn body_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let mut counter = Counter::default();
    body(packet, version, &mut counter)?;
    if counter.0 > VARINT_MAX as usize {
        return Err(EncodeError::PacketTooLarge(counter.0));
    }
    Ok(counter.0)
}

/// First byte of the fixed header: type and flags.
fn first_byte(packet: &Packet, version: ProtocolVersion) -> Result<u8, EncodeError> {
    Ok(match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => {
            if p.qos == QoS::AtMostOnce && p.dup {
                return Err(EncodeError::Invalid("DUP set on a QoS 0 PUBLISH"));
            }
            0x30 | (u8::from(p.dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain)
        }
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) if !version.is_v5() => return Err(EncodeError::NotInVersion("AUTH")),
        Packet::Auth(_) => 0xF0,
    })
}

/// Variable header and payload of `packet`.
fn body<S: Sink>(packet: &Packet, version: ProtocolVersion, s: &mut S) -> Result<(), EncodeError> {
    match packet {
        Packet::Connect(c) => connect::encode_connect(c, s),
        Packet::ConnAck(c) => connect::encode_connack(c, version, s),
        Packet::Publish(p) => publish::encode_publish(p, version, s),
        Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
            publish::encode_response(p, version, s)
        }
        Packet::Subscribe(p) => subscribe::encode_subscribe(p, version, s),
        Packet::SubAck(p) => subscribe::encode_suback(p, version, s),
        Packet::Unsubscribe(p) => subscribe::encode_unsubscribe(p, version, s),
        Packet::UnsubAck(p) => subscribe::encode_unsuback(p, version, s),
        Packet::PingReq | Packet::PingResp => Ok(()),
        Packet::Disconnect(p) => control::encode_disconnect(p, version, s),
        Packet::Auth(p) => control::encode_auth(p, s),
    }
}
