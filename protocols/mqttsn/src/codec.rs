//! Datagram ⇄ [`Packet`] (§5.2 message header, §5.3 fields, §5.4 message
//! formats, §5.5 forwarder encapsulation).
//!
//! MQTT-SN runs over datagrams: one datagram carries exactly one message
//! (or one encapsulation header followed by one message). So unlike the
//! stream codecs there is no "need more": a datagram shorter than its
//! Length field is [`DecodeError::Truncated`], a longer one
//! [`DecodeError::TrailingBytes`].
//!
//! Invariants: decoding never panics and never allocates more than the
//! datagram; payloads are `Bytes` slices of the datagram (no copy);
//! `decode(encode(p)) == p` for every packet `encode` accepts.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::packet::{
    msg_type as t, Connect, Encapsulated, Packet, Publish, QoS, ReturnCode, SubTopic, Subscribe,
    TopicIdType, WillTopic,
};

/// Largest message the Length field can describe (§5.2.1: 3-octet form).
pub const MAX_MESSAGE_LEN: usize = 65535;

/// Why a datagram could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The datagram is empty or too short for a header (§5.2).
    #[error("datagram shorter than a message header (§5.2)")]
    Header,
    /// The Length field is 0, or smaller than the header it is part of (§5.2.1).
    #[error("invalid Length field {0} (§5.2.1)")]
    BadLength(usize),
    /// The datagram is shorter than its Length field says.
    #[error("datagram truncated: Length {declared}, {actual} octets received (§5.2.1)")]
    Truncated {
        /// What the Length field says.
        declared: usize,
        /// What arrived.
        actual: usize,
    },
    /// The datagram is longer than its Length field says.
    #[error("{0} octets after the message (§5.2.1)")]
    TrailingBytes(usize),
    /// A reserved or unknown MsgType (§5.2.2).
    #[error("unknown message type {0:#04x} (§5.2.2)")]
    UnknownType(u8),
    /// A field runs past the end of the message.
    #[error("{0} truncated (§5.4)")]
    ShortBody(&'static str),
    /// Octets after the last field of a fixed-size message.
    #[error("{0}: unexpected octets after the last field (§5.4)")]
    LongBody(&'static str),
    /// TopicIdType 0b11 is reserved (§5.3.4).
    #[error("reserved TopicIdType 0b11 (§5.3.4)")]
    ReservedTopicIdType,
    /// A client id or topic that is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    Utf8(&'static str),
    /// An Encapsulated message inside an Encapsulated message (§5.5).
    #[error("nested encapsulation (§5.5)")]
    NestedEncapsulation,
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// Longer than the Length field can describe.
    #[error("message of {0} octets exceeds {MAX_MESSAGE_LEN} (§5.2.1)")]
    TooLarge(usize),
    /// Encapsulated messages cannot nest (§5.5).
    #[error("nested encapsulation (§5.5)")]
    NestedEncapsulation,
}

/// Decode one datagram.
pub fn decode(datagram: &Bytes) -> Result<Packet, DecodeError> {
    decode_message(datagram, true)
}

/// The message header: (total Length, header size including MsgType position).
fn header(data: &[u8]) -> Result<(usize, usize), DecodeError> {
    match data {
        [] | [_] => Err(DecodeError::Header),
        [0x01, rest @ ..] => {
            // 3-octet form: 0x01 then the length in two octets (§5.2.1).
            let [hi, lo, _type, ..] = rest else {
                return Err(DecodeError::Header);
            };
            let len = usize::from(u16::from_be_bytes([*hi, *lo]));
            if len < 4 {
                return Err(DecodeError::BadLength(len));
            }
            Ok((len, 3))
        }
        [0x00, ..] => Err(DecodeError::BadLength(0)),
        [len, ..] => Ok((usize::from(*len), 1)),
    }
}

fn decode_message(data: &Bytes, allow_encapsulated: bool) -> Result<Packet, DecodeError> {
    let (len, hdr) = header(data)?;
    let kind = data[hdr];
    if kind == t::ENCAPSULATED {
        if !allow_encapsulated {
            return Err(DecodeError::NestedEncapsulation);
        }
        // The Length covers the encapsulation header only; the
        // encapsulated message follows it (§5.5).
        if len > data.len() {
            return Err(DecodeError::Truncated {
                declared: len,
                actual: data.len(),
            });
        }
        if len < hdr + 2 {
            return Err(DecodeError::ShortBody("Encapsulated Ctrl"));
        }
        let ctrl = data[hdr + 1];
        let node_id = data.slice(hdr + 2..len);
        let inner = decode_message(&data.slice(len..), false)?;
        return Ok(Packet::Encapsulated(Encapsulated {
            radius: ctrl & 0b11,
            node_id,
            packet: Box::new(inner),
        }));
    }
    if len > data.len() {
        return Err(DecodeError::Truncated {
            declared: len,
            actual: data.len(),
        });
    }
    if len < data.len() {
        return Err(DecodeError::TrailingBytes(data.len() - len));
    }
    let mut r = Reader {
        buf: data.slice(hdr + 1..len),
        pos: 0,
    };
    decode_body(kind, &mut r)
}

struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or(DecodeError::ShortBody(what))?;
        self.pos += 1;
        Ok(b)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        let hi = self.u8(what)?;
        let lo = self.u8(what)?;
        Ok(u16::from_be_bytes([hi, lo]))
    }

    fn rest(&mut self) -> Bytes {
        let out = self.buf.slice(self.pos..);
        self.pos = self.buf.len();
        out
    }

    fn rest_string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let bytes = self.rest();
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Utf8(what))
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn end(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::LongBody(what))
        }
    }
}

/// The flags octet (§5.3.4).
#[derive(Debug, Clone, Copy)]
struct Flags(u8);

impl Flags {
    fn dup(self) -> bool {
        self.0 & 0x80 != 0
    }
    fn qos(self) -> QoS {
        QoS::from_bits(self.0 >> 5)
    }
    fn retain(self) -> bool {
        self.0 & 0x10 != 0
    }
    fn will(self) -> bool {
        self.0 & 0x08 != 0
    }
    fn clean_session(self) -> bool {
        self.0 & 0x04 != 0
    }
    fn topic_id_type(self) -> Result<TopicIdType, DecodeError> {
        match self.0 & 0b11 {
            0 => Ok(TopicIdType::Normal),
            1 => Ok(TopicIdType::Predefined),
            2 => Ok(TopicIdType::Short),
            _ => Err(DecodeError::ReservedTopicIdType),
        }
    }
    fn build(dup: bool, qos: QoS, retain: bool, will: bool, clean: bool, tit: u8) -> u8 {
        (u8::from(dup) << 7)
            | (qos.bits() << 5)
            | (u8::from(retain) << 4)
            | (u8::from(will) << 3)
            | (u8::from(clean) << 2)
            | (tit & 0b11)
    }
}

fn tit_bits(t: TopicIdType) -> u8 {
    match t {
        TopicIdType::Normal => 0,
        TopicIdType::Predefined => 1,
        TopicIdType::Short => 2,
    }
}

fn will_topic(r: &mut Reader, what: &'static str) -> Result<Option<WillTopic>, DecodeError> {
    // An empty WILLTOPIC / WILLTOPICUPD (no flags, no topic) deletes the will (§5.4.7).
    if r.is_empty() {
        return Ok(None);
    }
    let flags = Flags(r.u8(what)?);
    Ok(Some(WillTopic {
        qos: flags.qos(),
        retain: flags.retain(),
        topic: r.rest_string(what)?,
    }))
}

fn sub_topic(r: &mut Reader, flags: Flags, what: &'static str) -> Result<SubTopic, DecodeError> {
    let topic = match flags.topic_id_type()? {
        TopicIdType::Normal => SubTopic::Name(r.rest_string(what)?),
        TopicIdType::Predefined => SubTopic::Predefined(r.u16(what)?),
        TopicIdType::Short => {
            let a = r.u8(what)?;
            let b = r.u8(what)?;
            SubTopic::Short([a, b])
        }
    };
    r.end(what)?;
    Ok(topic)
}

fn decode_body(kind: u8, r: &mut Reader) -> Result<Packet, DecodeError> {
    let p = match kind {
        t::ADVERTISE => {
            let gw_id = r.u8("ADVERTISE")?;
            let duration = r.u16("ADVERTISE")?;
            r.end("ADVERTISE")?;
            Packet::Advertise { gw_id, duration }
        }
        t::SEARCHGW => {
            let radius = r.u8("SEARCHGW")?;
            r.end("SEARCHGW")?;
            Packet::SearchGw { radius }
        }
        t::GWINFO => Packet::GwInfo {
            gw_id: r.u8("GWINFO")?,
            gw_addr: r.rest(),
        },
        t::CONNECT => {
            let flags = Flags(r.u8("CONNECT")?);
            let protocol_id = r.u8("CONNECT")?;
            let duration = r.u16("CONNECT")?;
            Packet::Connect(Connect {
                will: flags.will(),
                clean_session: flags.clean_session(),
                protocol_id,
                duration,
                client_id: r.rest_string("CONNECT client id")?,
            })
        }
        t::CONNACK => {
            let code = ReturnCode::from_u8(r.u8("CONNACK")?);
            r.end("CONNACK")?;
            Packet::ConnAck { code }
        }
        t::WILLTOPICREQ => {
            r.end("WILLTOPICREQ")?;
            Packet::WillTopicReq
        }
        t::WILLTOPIC => Packet::WillTopic(will_topic(r, "WILLTOPIC")?),
        t::WILLMSGREQ => {
            r.end("WILLMSGREQ")?;
            Packet::WillMsgReq
        }
        t::WILLMSG => Packet::WillMsg { payload: r.rest() },
        t::REGISTER => Packet::Register {
            topic_id: r.u16("REGISTER")?,
            msg_id: r.u16("REGISTER")?,
            topic_name: r.rest_string("REGISTER topic name")?,
        },
        t::REGACK => {
            let topic_id = r.u16("REGACK")?;
            let msg_id = r.u16("REGACK")?;
            let code = ReturnCode::from_u8(r.u8("REGACK")?);
            r.end("REGACK")?;
            Packet::RegAck {
                topic_id,
                msg_id,
                code,
            }
        }
        t::PUBLISH => {
            let flags = Flags(r.u8("PUBLISH")?);
            let topic_id_type = flags.topic_id_type()?;
            Packet::Publish(Publish {
                dup: flags.dup(),
                qos: flags.qos(),
                retain: flags.retain(),
                topic_id_type,
                topic_id: r.u16("PUBLISH")?,
                msg_id: r.u16("PUBLISH")?,
                payload: r.rest(),
            })
        }
        t::PUBACK => {
            let topic_id = r.u16("PUBACK")?;
            let msg_id = r.u16("PUBACK")?;
            let code = ReturnCode::from_u8(r.u8("PUBACK")?);
            r.end("PUBACK")?;
            Packet::PubAck {
                topic_id,
                msg_id,
                code,
            }
        }
        t::PUBCOMP | t::PUBREC | t::PUBREL | t::UNSUBACK => {
            let msg_id = r.u16("acknowledgement")?;
            r.end("acknowledgement")?;
            match kind {
                t::PUBCOMP => Packet::PubComp { msg_id },
                t::PUBREC => Packet::PubRec { msg_id },
                t::PUBREL => Packet::PubRel { msg_id },
                _ => Packet::UnsubAck { msg_id },
            }
        }
        t::SUBSCRIBE => {
            let flags = Flags(r.u8("SUBSCRIBE")?);
            let msg_id = r.u16("SUBSCRIBE")?;
            Packet::Subscribe(Subscribe {
                dup: flags.dup(),
                qos: flags.qos(),
                msg_id,
                topic: sub_topic(r, flags, "SUBSCRIBE")?,
            })
        }
        t::SUBACK => {
            let flags = Flags(r.u8("SUBACK")?);
            let topic_id = r.u16("SUBACK")?;
            let msg_id = r.u16("SUBACK")?;
            let code = ReturnCode::from_u8(r.u8("SUBACK")?);
            r.end("SUBACK")?;
            Packet::SubAck {
                qos: flags.qos(),
                topic_id,
                msg_id,
                code,
            }
        }
        t::UNSUBSCRIBE => {
            let flags = Flags(r.u8("UNSUBSCRIBE")?);
            let msg_id = r.u16("UNSUBSCRIBE")?;
            Packet::Unsubscribe {
                msg_id,
                topic: sub_topic(r, flags, "UNSUBSCRIBE")?,
            }
        }
        t::PINGREQ => {
            let client_id = if r.is_empty() {
                None
            } else {
                Some(r.rest_string("PINGREQ client id")?)
            };
            Packet::PingReq { client_id }
        }
        t::PINGRESP => {
            r.end("PINGRESP")?;
            Packet::PingResp
        }
        t::DISCONNECT => {
            let duration = if r.is_empty() {
                None
            } else {
                Some(r.u16("DISCONNECT")?)
            };
            r.end("DISCONNECT")?;
            Packet::Disconnect { duration }
        }
        t::WILLTOPICUPD => Packet::WillTopicUpd(will_topic(r, "WILLTOPICUPD")?),
        t::WILLTOPICRESP | t::WILLMSGRESP => {
            let code = ReturnCode::from_u8(r.u8("will response")?);
            r.end("will response")?;
            if kind == t::WILLTOPICRESP {
                Packet::WillTopicResp { code }
            } else {
                Packet::WillMsgResp { code }
            }
        }
        t::WILLMSGUPD => Packet::WillMsgUpd { payload: r.rest() },
        other => return Err(DecodeError::UnknownType(other)),
    };
    Ok(p)
}

/// Encode `packet` as one datagram, appended to `out`.
pub fn encode(packet: &Packet, out: &mut BytesMut) -> Result<(), EncodeError> {
    if let Packet::Encapsulated(e) = packet {
        if matches!(*e.packet, Packet::Encapsulated(_)) {
            return Err(EncodeError::NestedEncapsulation);
        }
        let mut header = BytesMut::with_capacity(2 + e.node_id.len());
        header.put_u8(e.radius & 0b11);
        header.put_slice(&e.node_id);
        put_message(t::ENCAPSULATED, &header, out)?;
        return encode(&e.packet, out);
    }
    let mut body = BytesMut::new();
    encode_body(packet, &mut body);
    put_message(packet.msg_type(), &body, out)
}

/// Length (1 or 3 octets), MsgType, body.
fn put_message(kind: u8, body: &[u8], out: &mut BytesMut) -> Result<(), EncodeError> {
    let short = 2 + body.len();
    if short <= 255 {
        out.reserve(short);
        out.put_u8(short as u8);
    } else {
        let long = 4 + body.len();
        let len = u16::try_from(long).map_err(|_| EncodeError::TooLarge(long))?;
        out.reserve(long);
        out.put_u8(0x01);
        out.put_u16(len);
    }
    out.put_u8(kind);
    out.put_slice(body);
    Ok(())
}

fn put_will_topic(w: &Option<WillTopic>, b: &mut BytesMut) {
    if let Some(w) = w {
        b.put_u8(Flags::build(false, w.qos, w.retain, false, false, 0));
        b.put_slice(w.topic.as_bytes());
    }
}

fn put_sub_topic(dup: bool, qos: QoS, msg_id: u16, topic: &SubTopic, b: &mut BytesMut) {
    let tit = match topic {
        SubTopic::Name(_) => 0,
        SubTopic::Predefined(_) => 1,
        SubTopic::Short(_) => 2,
    };
    b.put_u8(Flags::build(dup, qos, false, false, false, tit));
    b.put_u16(msg_id);
    match topic {
        SubTopic::Name(n) => b.put_slice(n.as_bytes()),
        SubTopic::Predefined(id) => b.put_u16(*id),
        SubTopic::Short(s) => b.put_slice(s),
    }
}

fn encode_body(packet: &Packet, b: &mut BytesMut) {
    match packet {
        Packet::Advertise { gw_id, duration } => {
            b.put_u8(*gw_id);
            b.put_u16(*duration);
        }
        Packet::SearchGw { radius } => b.put_u8(*radius),
        Packet::GwInfo { gw_id, gw_addr } => {
            b.put_u8(*gw_id);
            b.put_slice(gw_addr);
        }
        Packet::Connect(c) => {
            b.put_u8(Flags::build(
                false,
                QoS::AtMostOnce,
                false,
                c.will,
                c.clean_session,
                0,
            ));
            b.put_u8(c.protocol_id);
            b.put_u16(c.duration);
            b.put_slice(c.client_id.as_bytes());
        }
        Packet::ConnAck { code }
        | Packet::WillTopicResp { code }
        | Packet::WillMsgResp { code } => b.put_u8(code.to_u8()),
        Packet::WillTopicReq | Packet::WillMsgReq | Packet::PingResp => {}
        Packet::WillTopic(w) | Packet::WillTopicUpd(w) => put_will_topic(w, b),
        Packet::WillMsg { payload } | Packet::WillMsgUpd { payload } => b.put_slice(payload),
        Packet::Register {
            topic_id,
            msg_id,
            topic_name,
        } => {
            b.put_u16(*topic_id);
            b.put_u16(*msg_id);
            b.put_slice(topic_name.as_bytes());
        }
        Packet::RegAck {
            topic_id,
            msg_id,
            code,
        }
        | Packet::PubAck {
            topic_id,
            msg_id,
            code,
        } => {
            b.put_u16(*topic_id);
            b.put_u16(*msg_id);
            b.put_u8(code.to_u8());
        }
        Packet::Publish(p) => {
            b.put_u8(Flags::build(
                p.dup,
                p.qos,
                p.retain,
                false,
                false,
                tit_bits(p.topic_id_type),
            ));
            b.put_u16(p.topic_id);
            b.put_u16(p.msg_id);
            b.put_slice(&p.payload);
        }
        Packet::PubComp { msg_id }
        | Packet::PubRec { msg_id }
        | Packet::PubRel { msg_id }
        | Packet::UnsubAck { msg_id } => b.put_u16(*msg_id),
        Packet::Subscribe(s) => put_sub_topic(s.dup, s.qos, s.msg_id, &s.topic, b),
        Packet::SubAck {
            qos,
            topic_id,
            msg_id,
            code,
        } => {
            b.put_u8(Flags::build(false, *qos, false, false, false, 0));
            b.put_u16(*topic_id);
            b.put_u16(*msg_id);
            b.put_u8(code.to_u8());
        }
        Packet::Unsubscribe { msg_id, topic } => {
            put_sub_topic(false, QoS::AtMostOnce, *msg_id, topic, b)
        }
        Packet::PingReq { client_id } => {
            if let Some(id) = client_id {
                b.put_slice(id.as_bytes());
            }
        }
        Packet::Disconnect { duration } => {
            if let Some(d) = duration {
                b.put_u16(*d);
            }
        }
        // Handled by `encode` before the body is built.
        Packet::Encapsulated(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(p: &Packet) -> Vec<u8> {
        let mut b = BytesMut::new();
        encode(p, &mut b).expect("encodes");
        b.to_vec()
    }

    #[test]
    fn long_length_form() {
        let p = Packet::WillMsg {
            payload: Bytes::from(vec![7u8; 300]),
        };
        let wire = enc(&p);
        assert_eq!(&wire[..4], &[0x01, 0x01, 0x30, t::WILLMSG]);
        assert_eq!(wire.len(), 304);
        assert_eq!(decode(&Bytes::from(wire)), Ok(p));
    }

    #[test]
    fn too_large_is_refused() {
        let p = Packet::WillMsg {
            payload: Bytes::from(vec![0u8; 65532]),
        };
        let mut b = BytesMut::new();
        assert_eq!(encode(&p, &mut b), Err(EncodeError::TooLarge(65536)));
    }
}
