//! CONNECT (MQTT 5 §3.1, 3.1.1 §3.1, 3.1 §3.1) and CONNACK (§3.2).
//!
//! CONNECT carries its own version: protocol name `MQTT` with level 4
//! (3.1.1) or 5, or `MQIsdp` with level 3 (3.1). Levels 0x84 and 0x83 —
//! the "bridge" bit some 3.x brokers set — are read as 4 and 3. Any other
//! name or level is [`DecodeError::UnsupportedProtocol`], reported before
//! anything else in the packet is looked at, so the channel can answer
//! with the right CONNACK code.
//!
//! The connect flags obey [MQTT-3.1.2-3] (reserved bit 0),
//! [MQTT-3.1.2-11]/[MQTT-3.1.2-13] (no will QoS or retain without a will),
//! will QoS 3 is malformed, and in 3.x a password needs a user name
//! [MQTT-3.1.2-22] (MQTT 5 lifted that rule). The client identifier is only
//! decoded; its length and characters are the channel's business.

use crate::packet::{ConnAck, Connect, LastWill, Packet, ProtocolVersion, QoS};

use super::primitives::{put_binary, put_string, Reader, Sink};
use super::properties::{self, Context};
use super::{DecodeError, EncodeError};

pub(super) fn decode_connect(r: &mut Reader) -> Result<Packet, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    let protocol = match (&name[..], level) {
        (b"MQTT", 4 | 0x84) => ProtocolVersion::V3_1_1,
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQIsdp", 3 | 0x83) => ProtocolVersion::V3_1,
        _ => return Err(DecodeError::UnsupportedProtocol { level }),
    };
    let v5 = protocol.is_v5();

    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed(
            "reserved CONNECT flag set [MQTT-3.1.2-3]",
        ));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = QoS::from_u8((flags >> 3) & 0b11)
        .ok_or(DecodeError::Malformed("will QoS 3 [MQTT-3.1.2-12]"))?;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
        return Err(DecodeError::Malformed(
            "will QoS or will retain set without the will flag [MQTT-3.1.2-11] [MQTT-3.1.2-13]",
        ));
    }
    if password_flag && !username_flag && !v5 {
        return Err(DecodeError::Malformed(
            "password flag without user name flag [MQTT-3.1.2-22]",
        ));
    }

    let keep_alive = r.u16()?;
    let properties = if v5 {
        properties::decode(r, Context::Connect)?
    } else {
        Default::default()
    };
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = if v5 {
            properties::decode(r, Context::Will)?
        } else {
            Default::default()
        };
        let topic = r.string()?;
        let payload = r.binary()?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string()?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary()?)
    } else {
        None
    };
    r.finish()?;
    Ok(Packet::Connect(Box::new(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })))
}

pub(super) fn encode_connect<S: Sink>(c: &Connect, s: &mut S) -> Result<(), EncodeError> {
    let v5 = c.protocol.is_v5();
    if c.password.is_some() && c.username.is_none() && !v5 {
        return Err(EncodeError::Invalid(
            "MQTT 3.x CONNECT with a password but no user name",
        ));
    }
    let name = match c.protocol {
        ProtocolVersion::V3_1 => "MQIsdp",
        ProtocolVersion::V3_1_1 | ProtocolVersion::V5 => "MQTT",
    };
    put_string(s, name)?;
    s.put_u8(c.protocol.level());

    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(will) = &c.will {
        flags |= 0x04 | ((will.qos as u8) << 3) | (u8::from(will.retain) << 5);
    }
    flags |= u8::from(c.password.is_some()) << 6;
    flags |= u8::from(c.username.is_some()) << 7;
    s.put_u8(flags);
    s.put_u16(c.keep_alive);
    if v5 {
        properties::encode(s, &c.properties, Context::Connect)?;
    }
    put_string(s, &c.client_id)?;
    if let Some(will) = &c.will {
        if v5 {
            properties::encode(s, &will.properties, Context::Will)?;
        }
        put_string(s, &will.topic)?;
        put_binary(s, &will.payload)?;
    }
    if let Some(username) = &c.username {
        put_string(s, username)?;
    }
    if let Some(password) = &c.password {
        put_binary(s, password)?;
    }
    Ok(())
}

pub(super) fn decode_connack(
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    let ack_flags = r.u8()?;
    if ack_flags & 0xFE != 0 {
        return Err(DecodeError::Malformed(
            "reserved CONNACK acknowledge flags set [MQTT-3.2.2-1]",
        ));
    }
    let code = r.u8()?;
    let properties = if version.is_v5() {
        properties::decode(r, Context::ConnAck)?
    } else {
        Default::default()
    };
    r.finish()?;
    Ok(Packet::ConnAck(ConnAck {
        session_present: ack_flags & 0x01 != 0,
        code,
        properties,
    }))
}

pub(super) fn encode_connack<S: Sink>(
    c: &ConnAck,
    version: ProtocolVersion,
    s: &mut S,
) -> Result<(), EncodeError> {
    s.put_u8(u8::from(c.session_present));
    s.put_u8(c.code);
    if version.is_v5() {
        properties::encode(s, &c.properties, Context::ConnAck)?;
    }
    Ok(())
}
