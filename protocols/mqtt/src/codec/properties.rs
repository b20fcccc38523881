//! MQTT 5 properties (§2.2.2): the property block that follows the
//! variable header of most v5 packets, and the will properties of CONNECT.
//!
//! Owns the table of §2.2.2.2 (which identifier is allowed in which
//! packet) and the value rules the spec states per property: single-valued
//! properties may appear once, User Property (0x26) may repeat, Subscription
//! Identifier (0x0B) may repeat in PUBLISH only; Receive Maximum, Maximum
//! Packet Size, Topic Alias and Subscription Identifier may not be 0; the
//! one-byte flags may only be 0 or 1. Breaking those rules is a protocol
//! error (0x82); a block that runs past its packet, or an unknown
//! identifier, is a malformed packet (0x81).
//!
//! Encoding writes properties in identifier order (user properties and
//! subscription identifiers keep their own order) and refuses a property
//! the packet may not carry, so we never send what we would reject.

use crate::packet::{Properties, PropertyValues};

use super::primitives::{put_binary, put_string, put_varint, Counter, Reader, Sink};
use super::{DecodeError, EncodeError};

/// Which packet (or part of CONNECT) a property block belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Context {
    Connect,
    ConnAck,
    Publish,
    /// Will properties in the CONNECT payload (§3.1.3.2).
    Will,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    PubResponse,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl Context {
    fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// Property identifiers of §2.2.2.2.
mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// The packets a property may appear in (§2.2.2.2), as a mask of
/// [`Context::bit`]s; `None` for an identifier the spec does not define.
fn allowed_in(property: u8) -> Option<u16> {
    use Context::*;
    let mask = |contexts: &[Context]| contexts.iter().fold(0, |m, c| m | c.bit());
    let all = mask(&[
        Connect,
        ConnAck,
        Publish,
        Will,
        PubResponse,
        Subscribe,
        SubAck,
        Unsubscribe,
        UnsubAck,
        Disconnect,
        Auth,
    ]);
    Some(match property {
        id::PAYLOAD_FORMAT_INDICATOR
        | id::MESSAGE_EXPIRY_INTERVAL
        | id::CONTENT_TYPE
        | id::RESPONSE_TOPIC
        | id::CORRELATION_DATA => mask(&[Publish, Will]),
        id::SUBSCRIPTION_IDENTIFIER => mask(&[Publish, Subscribe]),
        id::SESSION_EXPIRY_INTERVAL => mask(&[Connect, ConnAck, Disconnect]),
        id::ASSIGNED_CLIENT_IDENTIFIER
        | id::SERVER_KEEP_ALIVE
        | id::RESPONSE_INFORMATION
        | id::MAXIMUM_QOS
        | id::RETAIN_AVAILABLE
        | id::WILDCARD_SUBSCRIPTION_AVAILABLE
        | id::SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | id::SHARED_SUBSCRIPTION_AVAILABLE => ConnAck.bit(),
        id::AUTHENTICATION_METHOD | id::AUTHENTICATION_DATA => mask(&[Connect, ConnAck, Auth]),
        id::REQUEST_PROBLEM_INFORMATION | id::REQUEST_RESPONSE_INFORMATION => Connect.bit(),
        id::WILL_DELAY_INTERVAL => Will.bit(),
        id::SERVER_REFERENCE => mask(&[ConnAck, Disconnect]),
        id::REASON_STRING => mask(&[ConnAck, PubResponse, SubAck, UnsubAck, Disconnect, Auth]),
        id::RECEIVE_MAXIMUM | id::TOPIC_ALIAS_MAXIMUM | id::MAXIMUM_PACKET_SIZE => {
            mask(&[Connect, ConnAck])
        }
        id::TOPIC_ALIAS => Publish.bit(),
        id::USER_PROPERTY => all,
        _ => return None,
    })
}

/// Stores a single-valued property, refusing a second occurrence.
fn once<T>(slot: &mut Option<T>, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::Protocol(
            "property included more than once (§2.2.2.2)",
        ));
    }
    *slot = Some(value);
    Ok(())
}

/// A one-byte property whose only values are 0 and 1.
fn zero_or_one(value: u8) -> Result<u8, DecodeError> {
    if value > 1 {
        return Err(DecodeError::Protocol("property value other than 0 or 1"));
    }
    Ok(value)
}

/// Reads a property block: its length, then properties until it ends.
pub(crate) fn decode(r: &mut Reader, context: Context) -> Result<Properties, DecodeError> {
    let len = r.varint()? as usize;
    if len > r.remaining() {
        return Err(DecodeError::Malformed(
            "property length exceeds the remaining packet",
        ));
    }
    let mut block = Reader::new(r.take(len)?);
    if block.is_empty() {
        // The common case, and no allocation.
        return Ok(Properties::default());
    }
    let mut p = PropertyValues::default();
    while !block.is_empty() {
        let property = u8::try_from(block.varint()?)
            .map_err(|_| DecodeError::Malformed("unknown property identifier"))?;
        let allowed =
            allowed_in(property).ok_or(DecodeError::Malformed("unknown property identifier"))?;
        if allowed & context.bit() == 0 {
            return Err(DecodeError::Protocol(
                "property not allowed in this packet (§2.2.2.2)",
            ));
        }
        let b = &mut block;
        match property {
            id::PAYLOAD_FORMAT_INDICATOR => {
                once(&mut p.payload_format_indicator, zero_or_one(b.u8()?)?)?
            }
            id::MESSAGE_EXPIRY_INTERVAL => once(&mut p.message_expiry_interval, b.u32()?)?,
            id::CONTENT_TYPE => once(&mut p.content_type, b.string()?)?,
            id::RESPONSE_TOPIC => once(&mut p.response_topic, b.string()?)?,
            id::CORRELATION_DATA => once(&mut p.correlation_data, b.binary()?)?,
            id::SUBSCRIPTION_IDENTIFIER => {
                let value = b.varint()?;
                if value == 0 {
                    return Err(DecodeError::Protocol(
                        "subscription identifier 0 (§3.8.2.1.2)",
                    ));
                }
                if context != Context::Publish && !p.subscription_identifiers.is_empty() {
                    return Err(DecodeError::Protocol(
                        "subscription identifier included more than once (§3.8.2.1.2)",
                    ));
                }
                p.subscription_identifiers.push(value);
            }
            id::SESSION_EXPIRY_INTERVAL => once(&mut p.session_expiry_interval, b.u32()?)?,
            id::ASSIGNED_CLIENT_IDENTIFIER => once(&mut p.assigned_client_identifier, b.string()?)?,
            id::SERVER_KEEP_ALIVE => once(&mut p.server_keep_alive, b.u16()?)?,
            id::AUTHENTICATION_METHOD => once(&mut p.authentication_method, b.string()?)?,
            id::AUTHENTICATION_DATA => once(&mut p.authentication_data, b.binary()?)?,
            id::REQUEST_PROBLEM_INFORMATION => {
                once(&mut p.request_problem_information, zero_or_one(b.u8()?)?)?
            }
            id::WILL_DELAY_INTERVAL => once(&mut p.will_delay_interval, b.u32()?)?,
            id::REQUEST_RESPONSE_INFORMATION => {
                once(&mut p.request_response_information, zero_or_one(b.u8()?)?)?
            }
            id::RESPONSE_INFORMATION => once(&mut p.response_information, b.string()?)?,
            id::SERVER_REFERENCE => once(&mut p.server_reference, b.string()?)?,
            id::REASON_STRING => once(&mut p.reason_string, b.string()?)?,
            id::RECEIVE_MAXIMUM => match b.u16()? {
                0 => return Err(DecodeError::Protocol("receive maximum 0 (§3.1.2.11.3)")),
                v => once(&mut p.receive_maximum, v)?,
            },
            id::TOPIC_ALIAS_MAXIMUM => once(&mut p.topic_alias_maximum, b.u16()?)?,
            id::TOPIC_ALIAS => match b.u16()? {
                0 => return Err(DecodeError::Protocol("topic alias 0 [MQTT-3.3.2-8]")),
                v => once(&mut p.topic_alias, v)?,
            },
            id::MAXIMUM_QOS => once(&mut p.maximum_qos, zero_or_one(b.u8()?)?)?,
            id::RETAIN_AVAILABLE => once(&mut p.retain_available, zero_or_one(b.u8()?)?)?,
            id::USER_PROPERTY => {
                let key = b.string()?;
                let value = b.string()?;
                p.user_properties.push((key, value));
            }
            id::MAXIMUM_PACKET_SIZE => match b.u32()? {
                0 => return Err(DecodeError::Protocol("maximum packet size 0 (§3.1.2.11.4)")),
                v => once(&mut p.maximum_packet_size, v)?,
            },
            id::WILDCARD_SUBSCRIPTION_AVAILABLE => once(
                &mut p.wildcard_subscription_available,
                zero_or_one(b.u8()?)?,
            )?,
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => once(
                &mut p.subscription_identifier_available,
                zero_or_one(b.u8()?)?,
            )?,
            id::SHARED_SUBSCRIPTION_AVAILABLE => {
                once(&mut p.shared_subscription_available, zero_or_one(b.u8()?)?)?
            }
            _ => return Err(DecodeError::Malformed("unknown property identifier")),
        }
    }
    Ok(p.into())
}

/// Writes a property block: its length, then the properties.
pub(crate) fn encode<S: Sink>(
    s: &mut S,
    p: &Properties,
    context: Context,
) -> Result<(), EncodeError> {
    let len = entries_len(p, context)?;
    put_varint(s, len)?;
    entries(s, p, context)
}

/// Length of the properties of a block, without its length prefix; 0 when
/// no property is set.
pub(crate) fn entries_len(p: &Properties, context: Context) -> Result<usize, EncodeError> {
    let mut counter = Counter::default();
    entries(&mut counter, p, context)?;
    Ok(counter.0)
}

/// Writes a property identifier after checking the packet may carry it.
fn head<S: Sink>(s: &mut S, context: Context, property: u8) -> Result<(), EncodeError> {
    match allowed_in(property) {
        Some(mask) if mask & context.bit() != 0 => {
            s.put_u8(property);
            Ok(())
        }
        _ => Err(EncodeError::PropertyNotAllowed(property)),
    }
}

fn entries<S: Sink>(s: &mut S, p: &Properties, c: Context) -> Result<(), EncodeError> {
    if let Some(v) = p.payload_format_indicator {
        head(s, c, id::PAYLOAD_FORMAT_INDICATOR)?;
        s.put_u8(v);
    }
    if let Some(v) = p.message_expiry_interval {
        head(s, c, id::MESSAGE_EXPIRY_INTERVAL)?;
        s.put_u32(v);
    }
    if let Some(v) = &p.content_type {
        head(s, c, id::CONTENT_TYPE)?;
        put_string(s, v)?;
    }
    if let Some(v) = &p.response_topic {
        head(s, c, id::RESPONSE_TOPIC)?;
        put_string(s, v)?;
    }
    if let Some(v) = &p.correlation_data {
        head(s, c, id::CORRELATION_DATA)?;
        put_binary(s, v)?;
    }
    if c == Context::Subscribe && p.subscription_identifiers.len() > 1 {
        return Err(EncodeError::Invalid(
            "SUBSCRIBE carries at most one subscription identifier",
        ));
    }
    for &v in &p.subscription_identifiers {
        head(s, c, id::SUBSCRIPTION_IDENTIFIER)?;
        put_varint(s, v as usize)?;
    }
    if let Some(v) = p.session_expiry_interval {
        head(s, c, id::SESSION_EXPIRY_INTERVAL)?;
        s.put_u32(v);
    }
    if let Some(v) = &p.assigned_client_identifier {
        head(s, c, id::ASSIGNED_CLIENT_IDENTIFIER)?;
        put_string(s, v)?;
    }
    if let Some(v) = p.server_keep_alive {
        head(s, c, id::SERVER_KEEP_ALIVE)?;
        s.put_u16(v);
    }
    if let Some(v) = &p.authentication_method {
        head(s, c, id::AUTHENTICATION_METHOD)?;
        put_string(s, v)?;
    }
    if let Some(v) = &p.authentication_data {
        head(s, c, id::AUTHENTICATION_DATA)?;
        put_binary(s, v)?;
    }
    if let Some(v) = p.request_problem_information {
        head(s, c, id::REQUEST_PROBLEM_INFORMATION)?;
        s.put_u8(v);
    }
    if let Some(v) = p.will_delay_interval {
        head(s, c, id::WILL_DELAY_INTERVAL)?;
        s.put_u32(v);
    }
    if let Some(v) = p.request_response_information {
        head(s, c, id::REQUEST_RESPONSE_INFORMATION)?;
        s.put_u8(v);
    }
    if let Some(v) = &p.response_information {
        head(s, c, id::RESPONSE_INFORMATION)?;
        put_string(s, v)?;
    }
    if let Some(v) = &p.server_reference {
        head(s, c, id::SERVER_REFERENCE)?;
        put_string(s, v)?;
    }
    if let Some(v) = &p.reason_string {
        head(s, c, id::REASON_STRING)?;
        put_string(s, v)?;
    }
    if let Some(v) = p.receive_maximum {
        head(s, c, id::RECEIVE_MAXIMUM)?;
        s.put_u16(v);
    }
    if let Some(v) = p.topic_alias_maximum {
        head(s, c, id::TOPIC_ALIAS_MAXIMUM)?;
        s.put_u16(v);
    }
    if let Some(v) = p.topic_alias {
        head(s, c, id::TOPIC_ALIAS)?;
        s.put_u16(v);
    }
    if let Some(v) = p.maximum_qos {
        head(s, c, id::MAXIMUM_QOS)?;
        s.put_u8(v);
    }
    if let Some(v) = p.retain_available {
        head(s, c, id::RETAIN_AVAILABLE)?;
        s.put_u8(v);
    }
    for (key, value) in &p.user_properties {
        head(s, c, id::USER_PROPERTY)?;
        put_string(s, key)?;
        put_string(s, value)?;
    }
    if let Some(v) = p.maximum_packet_size {
        head(s, c, id::MAXIMUM_PACKET_SIZE)?;
        s.put_u32(v);
    }
    if let Some(v) = p.wildcard_subscription_available {
        head(s, c, id::WILDCARD_SUBSCRIPTION_AVAILABLE)?;
        s.put_u8(v);
    }
    if let Some(v) = p.subscription_identifier_available {
        head(s, c, id::SUBSCRIPTION_IDENTIFIER_AVAILABLE)?;
        s.put_u8(v);
    }
    if let Some(v) = p.shared_subscription_available {
        head(s, c, id::SHARED_SUBSCRIPTION_AVAILABLE)?;
        s.put_u8(v);
    }
    Ok(())
}
