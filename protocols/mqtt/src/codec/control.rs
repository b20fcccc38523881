//! The small control packets: PINGREQ (§3.12), PINGRESP (§3.13),
//! DISCONNECT (§3.14) and AUTH (§3.15, MQTT 5 only).
//!
//! PINGREQ, PINGRESP and 3.x DISCONNECT have no body; anything after the
//! fixed header is malformed. MQTT 5 DISCONNECT and AUTH may omit their
//! reason code (remaining length 0 → 0x00) and their property length
//! (remaining length 1 → no properties) (§3.14.2.1, §3.15.2.1). The encoder
//! writes remaining length 0 when the reason is 0 and there are no
//! properties, and for DISCONNECT also the one-byte form.

use crate::packet::{Auth, Disconnect, Packet, ProtocolVersion};

use super::primitives::{Reader, Sink};
use super::properties::{self, Context};
use super::{DecodeError, EncodeError};

pub(super) fn decode_empty(r: &mut Reader, packet: Packet) -> Result<Packet, DecodeError> {
    r.finish()?;
    Ok(packet)
}

/// Reason code and properties of MQTT 5 DISCONNECT and AUTH, each optional.
fn decode_reason_and_properties(
    r: &mut Reader,
    context: Context,
) -> Result<(u8, crate::packet::Properties), DecodeError> {
    let reason = if r.is_empty() { 0 } else { r.u8()? };
    let properties = if r.is_empty() {
        Default::default()
    } else {
        properties::decode(r, context)?
    };
    r.finish()?;
    Ok((reason, properties))
}

pub(super) fn decode_disconnect(
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    if !version.is_v5() {
        r.finish()?;
        return Ok(Packet::Disconnect(Disconnect {
            reason: 0,
            properties: Default::default(),
        }));
    }
    let (reason, properties) = decode_reason_and_properties(r, Context::Disconnect)?;
    Ok(Packet::Disconnect(Disconnect { reason, properties }))
}

pub(super) fn encode_disconnect<S: Sink>(
    p: &Disconnect,
    version: ProtocolVersion,
    s: &mut S,
) -> Result<(), EncodeError> {
    if !version.is_v5() {
        return Ok(());
    }
    // A non-zero reason is always followed by a property length (possibly
    // 0): the spec allows omitting it, but several clients (rumqttc 0.24,
    // older MQTT.js and paho.golang) cannot parse the 3-byte form.
    let has_properties = properties::entries_len(&p.properties, Context::Disconnect)? > 0;
    if p.reason != 0 || has_properties {
        s.put_u8(p.reason);
        properties::encode(s, &p.properties, Context::Disconnect)?;
    }
    Ok(())
}

pub(super) fn decode_auth(r: &mut Reader) -> Result<Packet, DecodeError> {
    let (reason, properties) = decode_reason_and_properties(r, Context::Auth)?;
    Ok(Packet::Auth(Auth { reason, properties }))
}

pub(super) fn encode_auth<S: Sink>(p: &Auth, s: &mut S) -> Result<(), EncodeError> {
    let has_properties = properties::entries_len(&p.properties, Context::Auth)? > 0;
    if p.reason != 0 || has_properties {
        // The spec only allows leaving out both fields (§3.15.2.2), so a
        // non-zero reason is always followed by a property length.
        s.put_u8(p.reason);
        properties::encode(s, &p.properties, Context::Auth)?;
    }
    Ok(())
}
