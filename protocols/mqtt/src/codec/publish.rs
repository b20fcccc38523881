//! PUBLISH (§3.3) and its acknowledgements PUBACK, PUBREC, PUBREL and
//! PUBCOMP (§3.4–§3.7), which share one shape.
//!
//! The PUBLISH flags (DUP, QoS, RETAIN) were checked with the fixed header
//! [MQTT-3.3.1-2] [MQTT-3.3.1-4]. The topic is only decoded: it may be
//! empty in MQTT 5 when a Topic Alias supplies it, and topic-name rules are
//! the channel's. The payload is a slice of the received packet, not a
//! copy. A packet identifier is present iff QoS > 0 and is never 0.
//!
//! MQTT 5 acknowledgements have three forms (§3.4.2.1): remaining length 2
//! (reason 0, no properties), 3 (reason, no properties) and ≥ 4 (reason and
//! properties); the encoder picks the shortest that holds the packet.

use crate::packet::{Packet, ProtocolVersion, PubResponse, Publish, QoS};

use super::primitives::{put_string, Reader, Sink};
use super::properties::{self, Context};
use super::{DecodeError, EncodeError};

pub(super) fn decode_publish(
    r: &mut Reader,
    flags: u8,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    let qos = QoS::from_u8((flags >> 1) & 0b11)
        .ok_or(DecodeError::Malformed("PUBLISH with QoS 3 [MQTT-3.3.1-4]"))?;
    let topic = r.shared_string()?;
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce | QoS::ExactlyOnce => Some(r.packet_id()?),
    };
    let properties = if version.is_v5() {
        properties::decode(r, Context::Publish)?
    } else {
        Default::default()
    };
    Ok(Packet::Publish(Publish {
        dup: flags & 0b1000 != 0,
        qos,
        retain: flags & 0b0001 != 0,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    }))
}

pub(super) fn encode_publish<S: Sink>(
    p: &Publish,
    version: ProtocolVersion,
    s: &mut S,
) -> Result<(), EncodeError> {
    put_string(s, &p.topic)?;
    match (p.qos, p.packet_id) {
        (QoS::AtMostOnce, None) => {}
        (QoS::AtMostOnce, Some(_)) => {
            return Err(EncodeError::Invalid(
                "packet identifier on a QoS 0 PUBLISH [MQTT-2.2.1-2]",
            ))
        }
        (_, Some(id)) => s.put_u16(id),
        (_, None) => {
            return Err(EncodeError::Invalid(
                "QoS 1 or 2 PUBLISH without a packet identifier",
            ))
        }
    }
    if version.is_v5() {
        properties::encode(s, &p.properties, Context::Publish)?;
    }
    s.put_slice(&p.payload);
    Ok(())
}

pub(super) fn decode_response(
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<PubResponse, DecodeError> {
    let packet_id = r.packet_id()?;
    let mut response = PubResponse {
        packet_id,
        reason: 0,
        properties: Default::default(),
    };
    if version.is_v5() {
        if !r.is_empty() {
            response.reason = r.u8()?;
        }
        if !r.is_empty() {
            response.properties = properties::decode(r, Context::PubResponse)?;
        }
    }
    r.finish()?;
    Ok(response)
}

pub(super) fn encode_response<S: Sink>(
    p: &PubResponse,
    version: ProtocolVersion,
    s: &mut S,
) -> Result<(), EncodeError> {
    s.put_u16(p.packet_id);
    if version.is_v5() {
        let has_properties = properties::entries_len(&p.properties, Context::PubResponse)? > 0;
        if p.reason != 0 || has_properties {
            s.put_u8(p.reason);
        }
        if has_properties {
            properties::encode(s, &p.properties, Context::PubResponse)?;
        }
    }
    Ok(())
}
