//! The load generator's MQTT-SN 1.2 client side, just enough of it:
//! CONNECT, REGISTER, PUBLISH (QoS −1, 0, 1), PINGREQ and DISCONNECT
//! datagrams, and the replies it waits for (CONNACK, REGACK, PUBACK).
//!
//! Written from the specification (MQTT-SN 1.2, §5), not with the
//! gateway's codec, so a benchmark run is also a small interoperability
//! check: a gateway that mis-parses these datagrams shows up as errors.
//!
//! ```text
//!  PUBLISH (§5.4.12):  Length | 0x0C | Flags | TopicId u16 | MsgId u16 | Data
//!  Flags (§5.3.4):     DUP b7 | QoS b6-5 (0b11 = −1) | Retain b4 | Will b3
//!                      | CleanSession b2 | TopicIdType b1-0
//!  Length (§5.2.1):    one octet, or 0x01 then two octets when above 255
//! ```
//!
//! Like the MQTT template in [`crate::wire`], a PUBLISH is encoded once and
//! only the MsgId and the payload stamp are patched per message.

use anyhow::bail;

use crate::payload::{Stamp, PADDING, STAMP_LEN};

/// Message types used here (§5.2.2, Table 3).
pub mod msg_type {
    /// SEARCHGW.
    pub const SEARCHGW: u8 = 0x01;
    /// GWINFO.
    pub const GWINFO: u8 = 0x02;
    /// CONNECT.
    pub const CONNECT: u8 = 0x04;
    /// CONNACK.
    pub const CONNACK: u8 = 0x05;
    /// REGISTER.
    pub const REGISTER: u8 = 0x0A;
    /// REGACK.
    pub const REGACK: u8 = 0x0B;
    /// PUBLISH.
    pub const PUBLISH: u8 = 0x0C;
    /// PUBACK.
    pub const PUBACK: u8 = 0x0D;
    /// PINGREQ.
    pub const PINGREQ: u8 = 0x16;
    /// PINGRESP.
    pub const PINGRESP: u8 = 0x17;
    /// DISCONNECT.
    pub const DISCONNECT: u8 = 0x18;
}

/// Largest message the Length field can describe.
pub const MAX_MESSAGE_LEN: usize = 65535;

/// Protocol id of MQTT-SN 1.2 in CONNECT (§5.3.7).
const PROTOCOL_ID: u8 = 0x01;

/// QoS of the publishes (§5.3.4, §6.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnQos {
    /// QoS −1: no connection, predefined ids or short names only.
    MinusOne,
    /// QoS 0.
    Zero,
    /// QoS 1 (PUBACK).
    One,
}

impl SnQos {
    /// The two flag bits.
    fn bits(self) -> u8 {
        match self {
            SnQos::Zero => 0b00,
            SnQos::One => 0b01,
            SnQos::MinusOne => 0b11,
        }
    }

    /// As written on the command line and in reports: `-1`, `0`, `1`.
    pub fn name(self) -> &'static str {
        match self {
            SnQos::MinusOne => "-1",
            SnQos::Zero => "0",
            SnQos::One => "1",
        }
    }

    /// QoS of the matching MQTT subscription (−1 is routed as 0).
    pub fn mqtt_qos(self) -> u8 {
        match self {
            SnQos::MinusOne | SnQos::Zero => 0,
            SnQos::One => 1,
        }
    }
}

impl std::str::FromStr for SnQos {
    type Err = String;

    fn from_str(s: &str) -> Result<SnQos, String> {
        match s {
            "-1" | "3" => Ok(SnQos::MinusOne),
            "0" => Ok(SnQos::Zero),
            "1" => Ok(SnQos::One),
            other => Err(format!("invalid MQTT-SN QoS {other:?}: use -1, 0 or 1")),
        }
    }
}

/// How a PUBLISH names its topic (TopicIdType, §5.3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    /// 0b00: an id obtained with REGISTER/REGACK (needs a connection).
    Normal,
    /// 0b01: an id predefined in the gateway's configuration.
    Predefined,
    /// 0b10: a two-character short topic name carried in the TopicId field.
    Short,
}

impl TopicKind {
    fn bits(self) -> u8 {
        match self {
            TopicKind::Normal => 0b00,
            TopicKind::Predefined => 0b01,
            TopicKind::Short => 0b10,
        }
    }

    /// `normal`, `predefined` or `short`.
    pub fn name(self) -> &'static str {
        match self {
            TopicKind::Normal => "normal",
            TopicKind::Predefined => "predefined",
            TopicKind::Short => "short",
        }
    }
}

impl std::str::FromStr for TopicKind {
    type Err = String;

    fn from_str(s: &str) -> Result<TopicKind, String> {
        match s {
            "normal" | "registered" => Ok(TopicKind::Normal),
            "predefined" => Ok(TopicKind::Predefined),
            "short" => Ok(TopicKind::Short),
            other => Err(format!(
                "invalid topic id type {other:?}: use normal, predefined or short"
            )),
        }
    }
}

/// Characters of short topic names: publisher `i` gets two of them.
const SHORT_ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// Most publishers with distinct short topic names.
pub const MAX_SHORT_TOPICS: usize = SHORT_ALPHABET.len() * SHORT_ALPHABET.len();

/// The two-character short topic name of publisher `index` (`"00"`,
/// `"01"`, …), or `None` past [`MAX_SHORT_TOPICS`].
pub fn short_topic(index: usize) -> Option<[u8; 2]> {
    let n = SHORT_ALPHABET.len();
    if index >= n * n {
        return None;
    }
    Some([SHORT_ALPHABET[index / n], SHORT_ALPHABET[index % n]])
}

/// Append the Length field and MsgType, then `body` (§5.2).
fn frame(kind: u8, body: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
    let short = 2 + body.len();
    if short <= 255 {
        out.push(short as u8);
    } else {
        let long = 4 + body.len();
        if long > MAX_MESSAGE_LEN {
            bail!("MQTT-SN message of {long} octets exceeds {MAX_MESSAGE_LEN}");
        }
        out.push(0x01);
        out.extend_from_slice(&(long as u16).to_be_bytes());
    }
    out.push(kind);
    out.extend_from_slice(body);
    Ok(())
}

/// CONNECT with CleanSession set, no will (§5.4.4).
pub fn connect(client_id: &str, duration: u16) -> anyhow::Result<Vec<u8>> {
    let mut body = vec![0x04, PROTOCOL_ID];
    body.extend_from_slice(&duration.to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut out = Vec::with_capacity(body.len() + 4);
    frame(msg_type::CONNECT, &body, &mut out)?;
    Ok(out)
}

/// REGISTER from a client: TopicId 0, `msg_id`, the topic name (§5.4.10).
pub fn register(msg_id: u16, topic: &str) -> anyhow::Result<Vec<u8>> {
    let mut body = vec![0, 0];
    body.extend_from_slice(&msg_id.to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    let mut out = Vec::with_capacity(body.len() + 4);
    frame(msg_type::REGISTER, &body, &mut out)?;
    Ok(out)
}

/// SEARCHGW with radius 0 (§5.4.2): answered with GWINFO, so it tells
/// whether a gateway listens without creating any state there.
pub fn searchgw() -> Vec<u8> {
    vec![0x03, msg_type::SEARCHGW, 0x00]
}

/// PINGREQ without a client id (§5.4.19).
pub fn pingreq() -> Vec<u8> {
    vec![0x02, msg_type::PINGREQ]
}

/// DISCONNECT without a duration (§5.4.21).
pub fn disconnect() -> Vec<u8> {
    vec![0x02, msg_type::DISCONNECT]
}

/// A reply from the gateway, as far as the load generator cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// CONNACK with its return code.
    ConnAck {
        /// 0 accepted, 1 congestion, 2 invalid topic id, 3 not supported.
        code: u8,
    },
    /// REGACK.
    RegAck {
        /// The id assigned.
        topic_id: u16,
        /// The REGISTER's MsgId.
        msg_id: u16,
        /// Return code.
        code: u8,
    },
    /// PUBACK.
    PubAck {
        /// The PUBLISH's TopicId.
        topic_id: u16,
        /// The PUBLISH's MsgId.
        msg_id: u16,
        /// Return code.
        code: u8,
    },
    /// GWINFO (answer to SEARCHGW).
    GwInfo,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT (the gateway does not know this client, or ends it).
    Disconnect,
    /// Anything else, by MsgType.
    Other(u8),
}

/// Decode a datagram from the gateway; `None` when it is not a well-formed
/// MQTT-SN message (wrong Length, truncated fields).
pub fn decode_reply(datagram: &[u8]) -> Option<Reply> {
    let (len, header) = match datagram {
        [0x01, hi, lo, ..] => (usize::from(u16::from_be_bytes([*hi, *lo])), 3),
        [0x00, ..] | [] => return None,
        [len, ..] => (usize::from(*len), 1),
    };
    if len != datagram.len() || len <= header {
        return None;
    }
    let kind = datagram[header];
    let body = &datagram[header + 1..];
    let u16_at = |at: usize| -> Option<u16> {
        Some(u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]))
    };
    Some(match kind {
        msg_type::CONNACK if body.len() == 1 => Reply::ConnAck { code: body[0] },
        msg_type::REGACK | msg_type::PUBACK if body.len() == 5 => {
            let topic_id = u16_at(0)?;
            let msg_id = u16_at(2)?;
            let code = body[4];
            if kind == msg_type::REGACK {
                Reply::RegAck {
                    topic_id,
                    msg_id,
                    code,
                }
            } else {
                Reply::PubAck {
                    topic_id,
                    msg_id,
                    code,
                }
            }
        }
        msg_type::CONNACK | msg_type::REGACK | msg_type::PUBACK => return None,
        msg_type::GWINFO if !body.is_empty() => Reply::GwInfo,
        msg_type::PINGRESP => Reply::PingResp,
        msg_type::DISCONNECT => Reply::Disconnect,
        other => Reply::Other(other),
    })
}

/// Name of a return code (§5.3.10).
pub fn return_code_name(code: u8) -> &'static str {
    match code {
        0 => "accepted",
        1 => "rejected: congestion",
        2 => "rejected: invalid topic id",
        3 => "rejected: not supported",
        _ => "reserved",
    }
}

/// A PUBLISH encoded once; each message copies it and patches the MsgId
/// and the payload stamp.
#[derive(Debug, Clone)]
pub struct PublishTemplate {
    frame: Vec<u8>,
    /// Offset of the two MsgId octets.
    msg_id_at: usize,
    /// Offset of the payload.
    payload_at: usize,
}

impl PublishTemplate {
    /// A PUBLISH on `topic_id` (a registered or predefined id, or the two
    /// octets of a short name) with a `payload_len`-byte payload, at least
    /// [`STAMP_LEN`].
    pub fn new(
        qos: SnQos,
        kind: TopicKind,
        topic_id: u16,
        payload_len: usize,
    ) -> anyhow::Result<PublishTemplate> {
        if payload_len < STAMP_LEN {
            bail!("payload must be at least {STAMP_LEN} bytes");
        }
        if qos == SnQos::MinusOne && kind == TopicKind::Normal {
            bail!("QoS -1 needs a predefined topic id or a short topic name (§6.8)");
        }
        let flags = (qos.bits() << 5) | kind.bits();
        let mut body = Vec::with_capacity(5 + payload_len);
        body.push(flags);
        body.extend_from_slice(&topic_id.to_be_bytes());
        body.extend_from_slice(&[0, 0]);
        body.resize(5 + payload_len, PADDING);
        let mut bytes = Vec::with_capacity(body.len() + 4);
        frame(msg_type::PUBLISH, &body, &mut bytes)?;
        let header = bytes.len() - body.len();
        Ok(PublishTemplate {
            frame: bytes,
            msg_id_at: header + 3,
            payload_at: header + 5,
        })
    }

    /// Encoded size of one message.
    pub fn len(&self) -> usize {
        self.frame.len()
    }

    /// Always false: a PUBLISH has at least a header.
    pub fn is_empty(&self) -> bool {
        self.frame.is_empty()
    }

    /// The datagram for `msg_id` (0 for QoS −1 and 0) and `stamp`, written
    /// into `out` (resized to fit).
    pub fn write(&self, out: &mut Vec<u8>, msg_id: u16, stamp: &Stamp) {
        out.clear();
        out.extend_from_slice(&self.frame);
        out[self.msg_id_at..self.msg_id_at + 2].copy_from_slice(&msg_id.to_be_bytes());
        stamp.write(&mut out[self.payload_at..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAMP: Stamp = Stamp {
        seq: 0x0102_0304,
        publisher: 7,
        sent_ns: 0x1122_3344_5566_7788,
    };

    #[test]
    fn connect_and_register_bytes() {
        assert_eq!(
            connect("ab", 60).expect("connect"),
            [0x08, 0x04, 0x04, 0x01, 0x00, 0x3C, b'a', b'b']
        );
        assert_eq!(
            register(5, "a/b").expect("register"),
            [0x09, 0x0A, 0x00, 0x00, 0x00, 0x05, b'a', b'/', b'b']
        );
        assert_eq!(pingreq(), [0x02, 0x16]);
        assert_eq!(searchgw(), [0x03, 0x01, 0x00]);
        assert_eq!(disconnect(), [0x02, 0x18]);
    }

    #[test]
    fn publish_qos0_normal() {
        let t = PublishTemplate::new(SnQos::Zero, TopicKind::Normal, 0x0401, 16).expect("t");
        let mut out = Vec::new();
        t.write(&mut out, 0, &STAMP);
        assert_eq!(out.len(), 7 + 16);
        assert_eq!(t.len(), out.len());
        assert_eq!(&out[..7], &[23, 0x0C, 0x00, 0x04, 0x01, 0x00, 0x00]);
        assert_eq!(Stamp::read(&out[7..]), Some(STAMP));
    }

    #[test]
    fn publish_qos_minus_one_predefined_and_short() {
        let t = PublishTemplate::new(SnQos::MinusOne, TopicKind::Predefined, 1, 64).expect("t");
        let mut out = Vec::new();
        t.write(&mut out, 0, &STAMP);
        // QoS bits 0b11, TopicIdType 0b01.
        assert_eq!(&out[..7], &[71, 0x0C, 0x61, 0x00, 0x01, 0x00, 0x00]);
        assert_eq!(out[7 + 16..], [PADDING; 48]);
        let short = short_topic(1).expect("short");
        assert_eq!(&short, b"01");
        let t = PublishTemplate::new(
            SnQos::MinusOne,
            TopicKind::Short,
            u16::from_be_bytes(short),
            16,
        )
        .expect("t");
        t.write(&mut out, 0, &STAMP);
        assert_eq!(&out[..5], &[23, 0x0C, 0x62, b'0', b'1']);
        assert!(PublishTemplate::new(SnQos::MinusOne, TopicKind::Normal, 1, 16).is_err());
    }

    #[test]
    fn publish_qos1_patches_msg_id_and_long_length() {
        let t = PublishTemplate::new(SnQos::One, TopicKind::Normal, 0x0402, 300).expect("t");
        let mut out = Vec::new();
        t.write(&mut out, 0xBEEF, &STAMP);
        // 3-octet Length: 0x01, then 4 + 5 + 300 = 309.
        assert_eq!(&out[..4], &[0x01, 0x01, 0x35, 0x0C]);
        assert_eq!(out.len(), 309);
        assert_eq!(&out[4..9], &[0x20, 0x04, 0x02, 0xBE, 0xEF]);
        assert_eq!(Stamp::read(&out[9..]), Some(STAMP));
        assert!(PublishTemplate::new(SnQos::Zero, TopicKind::Normal, 1, 15).is_err());
        assert!(PublishTemplate::new(SnQos::Zero, TopicKind::Normal, 1, 65_530).is_err());
    }

    #[test]
    fn replies_decode() {
        assert_eq!(
            decode_reply(&[0x03, 0x05, 0x00]),
            Some(Reply::ConnAck { code: 0 })
        );
        assert_eq!(
            decode_reply(&[0x07, 0x0B, 0x04, 0x01, 0x00, 0x05, 0x00]),
            Some(Reply::RegAck {
                topic_id: 0x0401,
                msg_id: 5,
                code: 0
            })
        );
        assert_eq!(
            decode_reply(&[0x07, 0x0D, 0x00, 0x09, 0x12, 0x34, 0x02]),
            Some(Reply::PubAck {
                topic_id: 9,
                msg_id: 0x1234,
                code: 2
            })
        );
        assert_eq!(
            decode_reply(&[0x01, 0x00, 0x04, 0x17]),
            Some(Reply::PingResp)
        );
        assert_eq!(decode_reply(&[0x02, 0x18]), Some(Reply::Disconnect));
        assert_eq!(decode_reply(&[0x03, 0x02, 0x01]), Some(Reply::GwInfo));
        assert_eq!(decode_reply(&[0x02, 0x01]), Some(Reply::Other(0x01)));
        // Wrong lengths, truncated fields, empty.
        for bad in [
            &[][..],
            &[0x00, 0x05],
            &[0x04, 0x05, 0x00],
            &[0x02, 0x05],
            &[0x06, 0x0D, 0, 0, 0, 0],
            &[0x01, 0x00],
        ] {
            assert_eq!(decode_reply(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn short_topics_are_distinct() {
        let names: std::collections::HashSet<[u8; 2]> =
            (0..MAX_SHORT_TOPICS).filter_map(short_topic).collect();
        assert_eq!(names.len(), MAX_SHORT_TOPICS);
        assert_eq!(short_topic(MAX_SHORT_TOPICS), None);
        assert_eq!("-1".parse::<SnQos>(), Ok(SnQos::MinusOne));
        assert!("2".parse::<SnQos>().is_err());
        assert_eq!("short".parse::<TopicKind>(), Ok(TopicKind::Short));
    }
}
