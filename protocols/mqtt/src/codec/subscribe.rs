//! SUBSCRIBE (§3.8), SUBACK (§3.9), UNSUBSCRIBE (§3.10) and UNSUBACK
//! (§3.11).
//!
//! Topic filters are decoded as UTF-8 strings only; wildcard syntax is the
//! core's to judge. SUBSCRIBE and UNSUBSCRIBE need at least one filter
//! [MQTT-3.8.3-2] [MQTT-3.10.3-2], and SUBACK and MQTT 5 UNSUBACK at least
//! one reason code; anything else is a protocol error.
//!
//! Subscription options (§3.8.3.1): in MQTT 5, reserved bits 6–7 set is
//! malformed [MQTT-3.8.3-5]; Maximum QoS 3 and Retain Handling 3 are
//! protocol errors, as §3.8.3.1 says. In 3.x the byte is a requested QoS
//! whose upper six bits must be 0 and whose value 3 is malformed
//! (3.1.1 [MQTT-3-8.3-4]). 3.x UNSUBACK has no payload; the reason codes
//! of [`UnsubAck`] are left out when encoding for it.

use crate::packet::{
    Packet, ProtocolVersion, QoS, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};

use super::primitives::{put_string, Reader, Sink};
use super::properties::{self, Context};
use super::{DecodeError, EncodeError};

pub(super) fn decode_subscribe(
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = if version.is_v5() {
        properties::decode(r, Context::Subscribe)?
    } else {
        Default::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        let options = decode_options(r.u8()?, version)?;
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol(
            "SUBSCRIBE without a topic filter [MQTT-3.8.3-2]",
        ));
    }
    Ok(Packet::Subscribe(Subscribe {
        packet_id,
        properties,
        filters,
    }))
}

fn decode_options(byte: u8, version: ProtocolVersion) -> Result<SubscriptionOptions, DecodeError> {
    if !version.is_v5() {
        if byte & 0xFC != 0 {
            return Err(DecodeError::Malformed(
                "reserved bits of the requested QoS byte set [MQTT-3-8.3-4]",
            ));
        }
        let qos =
            QoS::from_u8(byte).ok_or(DecodeError::Malformed("requested QoS 3 [MQTT-3-8.3-4]"))?;
        return Ok(SubscriptionOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
        });
    }
    if byte & 0xC0 != 0 {
        return Err(DecodeError::Malformed(
            "reserved subscription option bits set [MQTT-3.8.3-5]",
        ));
    }
    let qos = QoS::from_u8(byte & 0b11).ok_or(DecodeError::Protocol(
        "subscription Maximum QoS 3 (§3.8.3.1)",
    ))?;
    let retain_handling = (byte >> 4) & 0b11;
    if retain_handling == 3 {
        return Err(DecodeError::Protocol("Retain Handling 3 (§3.8.3.1)"));
    }
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0b0100 != 0,
        retain_as_published: byte & 0b1000 != 0,
        retain_handling,
    })
}

pub(super) fn encode_subscribe<S: Sink>(
    p: &Subscribe,
    version: ProtocolVersion,
    s: &mut S,
) -> Result<(), EncodeError> {
    s.put_u16(p.packet_id);
    if version.is_v5() {
        properties::encode(s, &p.properties, Context::Subscribe)?;
    }
    for (filter, options) in &p.filters {
        put_string(s, filter)?;
        let mut byte = options.qos as u8;
        if version.is_v5() {
            if options.retain_handling > 2 {
                return Err(EncodeError::Invalid("Retain Handling above 2"));
            }
            byte |= u8::from(options.no_local) << 2;
            byte |= u8::from(options.retain_as_published) << 3;
            byte |= options.retain_handling << 4;
        }
        s.put_u8(byte);
    }
    Ok(())
}

pub(super) fn decode_suback(
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = if version.is_v5() {
        properties::decode(r, Context::SubAck)?
    } else {
        Default::default()
    };
    let reasons = r.rest().to_vec();
    if reasons.is_empty() {
        return Err(DecodeError::Protocol("SUBACK without a reason code"));
    }
    Ok(Packet::SubAck(SubAck {
        packet_id,
        properties,
        reasons,
    }))
}

pub(super) fn encode_suback<S: Sink>(
    p: &SubAck,
    version: ProtocolVersion,
    s: &mut S,
) -> Result<(), EncodeError> {
    s.put_u16(p.packet_id);
    if version.is_v5() {
        properties::encode(s, &p.properties, Context::SubAck)?;
    }
    s.put_slice(&p.reasons);
    Ok(())
}

pub(super) fn decode_unsubscribe(
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = if version.is_v5() {
        properties::decode(r, Context::Unsubscribe)?
    } else {
        Default::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string()?);
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol(
            "UNSUBSCRIBE without a topic filter [MQTT-3.10.3-2]",
        ));
    }
    Ok(Packet::Unsubscribe(Unsubscribe {
        packet_id,
        properties,
        filters,
    }))
}

pub(super) fn encode_unsubscribe<S: Sink>(
    p: &Unsubscribe,
    version: ProtocolVersion,
    s: &mut S,
) -> Result<(), EncodeError> {
    s.put_u16(p.packet_id);
    if version.is_v5() {
        properties::encode(s, &p.properties, Context::Unsubscribe)?;
    }
    for filter in &p.filters {
        put_string(s, filter)?;
    }
    Ok(())
}

pub(super) fn decode_unsuback(
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    let packet_id = r.packet_id()?;
    let mut unsuback = UnsubAck {
        packet_id,
        properties: Default::default(),
        reasons: Vec::new(),
    };
    if version.is_v5() {
        unsuback.properties = properties::decode(r, Context::UnsubAck)?;
        unsuback.reasons = r.rest().to_vec();
        if unsuback.reasons.is_empty() {
            return Err(DecodeError::Protocol("UNSUBACK without a reason code"));
        }
    }
    r.finish()?;
    Ok(Packet::UnsubAck(unsuback))
}

pub(super) fn encode_unsuback<S: Sink>(
    p: &UnsubAck,
    version: ProtocolVersion,
    s: &mut S,
) -> Result<(), EncodeError> {
    s.put_u16(p.packet_id);
    if version.is_v5() {
        properties::encode(s, &p.properties, Context::UnsubAck)?;
        s.put_slice(&p.reasons);
    }
    Ok(())
}
