//! MQTT-SN 1.2 messages as plain data (§5.3, §5.4, §5.5).
//!
//! Every field the wire carries is here, so `decode(encode(p)) == p` for
//! every packet the encoder accepts. Flags bits that a message type does
//! not use (§5.3.4: "not used" cells) are dropped on decode and written
//! as zero.

use bytes::Bytes;

/// Message type octets (§5.2.2, Table 3).
pub mod msg_type {
    /// ADVERTISE.
    pub const ADVERTISE: u8 = 0x00;
    /// SEARCHGW.
    pub const SEARCHGW: u8 = 0x01;
    /// GWINFO.
    pub const GWINFO: u8 = 0x02;
    /// CONNECT.
    pub const CONNECT: u8 = 0x04;
    /// CONNACK.
    pub const CONNACK: u8 = 0x05;
    /// WILLTOPICREQ.
    pub const WILLTOPICREQ: u8 = 0x06;
    /// WILLTOPIC.
    pub const WILLTOPIC: u8 = 0x07;
    /// WILLMSGREQ.
    pub const WILLMSGREQ: u8 = 0x08;
    /// WILLMSG.
    pub const WILLMSG: u8 = 0x09;
    /// REGISTER.
    pub const REGISTER: u8 = 0x0A;
    /// REGACK.
    pub const REGACK: u8 = 0x0B;
    /// PUBLISH.
    pub const PUBLISH: u8 = 0x0C;
    /// PUBACK.
    pub const PUBACK: u8 = 0x0D;
    /// PUBCOMP.
    pub const PUBCOMP: u8 = 0x0E;
    /// PUBREC.
    pub const PUBREC: u8 = 0x0F;
    /// PUBREL.
    pub const PUBREL: u8 = 0x10;
    /// SUBSCRIBE.
    pub const SUBSCRIBE: u8 = 0x12;
    /// SUBACK.
    pub const SUBACK: u8 = 0x13;
    /// UNSUBSCRIBE.
    pub const UNSUBSCRIBE: u8 = 0x14;
    /// UNSUBACK.
    pub const UNSUBACK: u8 = 0x15;
    /// PINGREQ.
    pub const PINGREQ: u8 = 0x16;
    /// PINGRESP.
    pub const PINGRESP: u8 = 0x17;
    /// DISCONNECT.
    pub const DISCONNECT: u8 = 0x18;
    /// WILLTOPICUPD.
    pub const WILLTOPICUPD: u8 = 0x1A;
    /// WILLTOPICRESP.
    pub const WILLTOPICRESP: u8 = 0x1B;
    /// WILLMSGUPD.
    pub const WILLMSGUPD: u8 = 0x1C;
    /// WILLMSGRESP.
    pub const WILLMSGRESP: u8 = 0x1D;
    /// Encapsulated message (§5.5).
    pub const ENCAPSULATED: u8 = 0xFE;
}

/// Return codes (§5.3.10, Table 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReturnCode {
    /// 0x00 Accepted.
    Accepted,
    /// 0x01 Rejected: congestion.
    Congestion,
    /// 0x02 Rejected: invalid topic ID.
    InvalidTopicId,
    /// 0x03 Rejected: not supported.
    NotSupported,
    /// 0x04–0xFF: reserved.
    Reserved(u8),
}

impl ReturnCode {
    /// From the wire octet.
    pub fn from_u8(v: u8) -> ReturnCode {
        match v {
            0 => ReturnCode::Accepted,
            1 => ReturnCode::Congestion,
            2 => ReturnCode::InvalidTopicId,
            3 => ReturnCode::NotSupported,
            other => ReturnCode::Reserved(other),
        }
    }

    /// The wire octet.
    pub fn to_u8(self) -> u8 {
        match self {
            ReturnCode::Accepted => 0,
            ReturnCode::Congestion => 1,
            ReturnCode::InvalidTopicId => 2,
            ReturnCode::NotSupported => 3,
            ReturnCode::Reserved(v) => v,
        }
    }
}

/// QoS as MQTT-SN encodes it (§5.3.4): 0, 1, 2, and −1 ("QoS 3", publish
/// without connection, §6.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QoS {
    /// QoS 0.
    AtMostOnce,
    /// QoS 1.
    AtLeastOnce,
    /// QoS 2.
    ExactlyOnce,
    /// QoS −1 (flag bits `0b11`).
    NoConnection,
}

impl QoS {
    pub(crate) fn from_bits(bits: u8) -> QoS {
        match bits & 0b11 {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            _ => QoS::NoConnection,
        }
    }

    pub(crate) fn bits(self) -> u8 {
        match self {
            QoS::AtMostOnce => 0,
            QoS::AtLeastOnce => 1,
            QoS::ExactlyOnce => 2,
            QoS::NoConnection => 3,
        }
    }
}

/// TopicIdType flag bits (§5.3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicIdType {
    /// 0b00: a topic id from REGISTER/REGACK (or a topic name in SUBSCRIBE).
    Normal,
    /// 0b01: a predefined topic id.
    Predefined,
    /// 0b10: a two-octet short topic name.
    Short,
}

/// The topic of a SUBSCRIBE or UNSUBSCRIBE (§5.4.15).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubTopic {
    /// A topic name or filter (TopicIdType 0b00).
    Name(String),
    /// A predefined topic id (0b01).
    Predefined(u16),
    /// A short topic name (0b10).
    Short([u8; 2]),
}

/// CONNECT (§5.4.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Will flag: the client will be asked for its will topic and message.
    pub will: bool,
    /// CleanSession flag.
    pub clean_session: bool,
    /// ProtocolId, 0x01 for MQTT-SN 1.2.
    pub protocol_id: u8,
    /// Keep alive duration in seconds.
    pub duration: u16,
    /// ClientId (1–23 characters per the spec).
    pub client_id: String,
}

/// A will topic as carried by WILLTOPIC and WILLTOPICUPD (§5.4.7, §5.4.22).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WillTopic {
    /// QoS of the will message.
    pub qos: QoS,
    /// Retain flag of the will message.
    pub retain: bool,
    /// The will topic name.
    pub topic: String,
}

/// PUBLISH (§5.4.12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// DUP flag: a retransmission.
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// How `topic_id` is to be read.
    pub topic_id_type: TopicIdType,
    /// Topic id, predefined id, or the two octets of a short name.
    pub topic_id: u16,
    /// Message id (0x0000 for QoS 0 and −1).
    pub msg_id: u16,
    /// The payload.
    pub payload: Bytes,
}

/// SUBSCRIBE (§5.4.15).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// DUP flag.
    pub dup: bool,
    /// Requested QoS.
    pub qos: QoS,
    /// Message id.
    pub msg_id: u16,
    /// What to subscribe to.
    pub topic: SubTopic,
}

/// Forwarder encapsulation (§5.5): a message relayed for a wireless node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encapsulated {
    /// Ctrl octet's Radius (bits 0–1): broadcast radius, gateway → forwarder.
    pub radius: u8,
    /// Wireless Node Id: the node's address on the forwarder's network.
    pub node_id: Bytes,
    /// The encapsulated message (never itself encapsulated).
    pub packet: Box<Packet>,
}

/// One MQTT-SN message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// ADVERTISE (§5.4.1).
    Advertise {
        /// Gateway id.
        gw_id: u8,
        /// Seconds until the next ADVERTISE.
        duration: u16,
    },
    /// SEARCHGW (§5.4.2).
    SearchGw {
        /// Broadcast radius.
        radius: u8,
    },
    /// GWINFO (§5.4.3); `gw_addr` is only present when a client answers.
    GwInfo {
        /// Gateway id.
        gw_id: u8,
        /// Gateway address (empty when the gateway itself answers).
        gw_addr: Bytes,
    },
    /// CONNECT (§5.4.4).
    Connect(Connect),
    /// CONNACK (§5.4.5).
    ConnAck {
        /// Outcome.
        code: ReturnCode,
    },
    /// WILLTOPICREQ (§5.4.6).
    WillTopicReq,
    /// WILLTOPIC (§5.4.7); `None` is the empty WILLTOPIC (no will).
    WillTopic(Option<WillTopic>),
    /// WILLMSGREQ (§5.4.8).
    WillMsgReq,
    /// WILLMSG (§5.4.9).
    WillMsg {
        /// The will payload.
        payload: Bytes,
    },
    /// REGISTER (§5.4.10).
    Register {
        /// Topic id (0x0000 when sent by a client).
        topic_id: u16,
        /// Message id.
        msg_id: u16,
        /// The topic name.
        topic_name: String,
    },
    /// REGACK (§5.4.11).
    RegAck {
        /// The assigned (or acknowledged) topic id.
        topic_id: u16,
        /// Message id of the REGISTER.
        msg_id: u16,
        /// Outcome.
        code: ReturnCode,
    },
    /// PUBLISH (§5.4.12).
    Publish(Publish),
    /// PUBACK (§5.4.13).
    PubAck {
        /// Topic id of the PUBLISH.
        topic_id: u16,
        /// Message id of the PUBLISH.
        msg_id: u16,
        /// Outcome.
        code: ReturnCode,
    },
    /// PUBCOMP (§5.4.14).
    PubComp {
        /// Message id.
        msg_id: u16,
    },
    /// PUBREC (§5.4.14).
    PubRec {
        /// Message id.
        msg_id: u16,
    },
    /// PUBREL (§5.4.14).
    PubRel {
        /// Message id.
        msg_id: u16,
    },
    /// SUBSCRIBE (§5.4.15).
    Subscribe(Subscribe),
    /// SUBACK (§5.4.16).
    SubAck {
        /// Granted QoS.
        qos: QoS,
        /// Topic id (0x0000 for wildcards and short names).
        topic_id: u16,
        /// Message id of the SUBSCRIBE.
        msg_id: u16,
        /// Outcome.
        code: ReturnCode,
    },
    /// UNSUBSCRIBE (§5.4.17).
    Unsubscribe {
        /// Message id.
        msg_id: u16,
        /// What to unsubscribe from.
        topic: SubTopic,
    },
    /// UNSUBACK (§5.4.18).
    UnsubAck {
        /// Message id of the UNSUBSCRIBE.
        msg_id: u16,
    },
    /// PINGREQ (§5.4.19); a client id means "awake, send what you kept".
    PingReq {
        /// ClientId of a sleeping client that wakes up.
        client_id: Option<String>,
    },
    /// PINGRESP (§5.4.20).
    PingResp,
    /// DISCONNECT (§5.4.21); a duration means "going to sleep".
    Disconnect {
        /// Sleep duration in seconds.
        duration: Option<u16>,
    },
    /// WILLTOPICUPD (§5.4.22); `None` deletes the will.
    WillTopicUpd(Option<WillTopic>),
    /// WILLTOPICRESP (§5.4.23).
    WillTopicResp {
        /// Outcome.
        code: ReturnCode,
    },
    /// WILLMSGUPD (§5.4.24).
    WillMsgUpd {
        /// The new will payload.
        payload: Bytes,
    },
    /// WILLMSGRESP (§5.4.25).
    WillMsgResp {
        /// Outcome.
        code: ReturnCode,
    },
    /// Encapsulated message (§5.5).
    Encapsulated(Encapsulated),
}

impl Packet {
    /// The message type octet.
    pub fn msg_type(&self) -> u8 {
        use msg_type as t;
        match self {
            Packet::Advertise { .. } => t::ADVERTISE,
            Packet::SearchGw { .. } => t::SEARCHGW,
            Packet::GwInfo { .. } => t::GWINFO,
            Packet::Connect(_) => t::CONNECT,
            Packet::ConnAck { .. } => t::CONNACK,
            Packet::WillTopicReq => t::WILLTOPICREQ,
            Packet::WillTopic(_) => t::WILLTOPIC,
            Packet::WillMsgReq => t::WILLMSGREQ,
            Packet::WillMsg { .. } => t::WILLMSG,
            Packet::Register { .. } => t::REGISTER,
            Packet::RegAck { .. } => t::REGACK,
            Packet::Publish(_) => t::PUBLISH,
            Packet::PubAck { .. } => t::PUBACK,
            Packet::PubComp { .. } => t::PUBCOMP,
            Packet::PubRec { .. } => t::PUBREC,
            Packet::PubRel { .. } => t::PUBREL,
            Packet::Subscribe(_) => t::SUBSCRIBE,
            Packet::SubAck { .. } => t::SUBACK,
            Packet::Unsubscribe { .. } => t::UNSUBSCRIBE,
            Packet::UnsubAck { .. } => t::UNSUBACK,
            Packet::PingReq { .. } => t::PINGREQ,
            Packet::PingResp => t::PINGRESP,
            Packet::Disconnect { .. } => t::DISCONNECT,
            Packet::WillTopicUpd(_) => t::WILLTOPICUPD,
            Packet::WillTopicResp { .. } => t::WILLTOPICRESP,
            Packet::WillMsgUpd { .. } => t::WILLMSGUPD,
            Packet::WillMsgResp { .. } => t::WILLMSGRESP,
            Packet::Encapsulated(_) => t::ENCAPSULATED,
        }
    }

    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Advertise { .. } => "ADVERTISE",
            Packet::SearchGw { .. } => "SEARCHGW",
            Packet::GwInfo { .. } => "GWINFO",
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck { .. } => "CONNACK",
            Packet::WillTopicReq => "WILLTOPICREQ",
            Packet::WillTopic(_) => "WILLTOPIC",
            Packet::WillMsgReq => "WILLMSGREQ",
            Packet::WillMsg { .. } => "WILLMSG",
            Packet::Register { .. } => "REGISTER",
            Packet::RegAck { .. } => "REGACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck { .. } => "PUBACK",
            Packet::PubComp { .. } => "PUBCOMP",
            Packet::PubRec { .. } => "PUBREC",
            Packet::PubRel { .. } => "PUBREL",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck { .. } => "SUBACK",
            Packet::Unsubscribe { .. } => "UNSUBSCRIBE",
            Packet::UnsubAck { .. } => "UNSUBACK",
            Packet::PingReq { .. } => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect { .. } => "DISCONNECT",
            Packet::WillTopicUpd(_) => "WILLTOPICUPD",
            Packet::WillTopicResp { .. } => "WILLTOPICRESP",
            Packet::WillMsgUpd { .. } => "WILLMSGUPD",
            Packet::WillMsgResp { .. } => "WILLMSGRESP",
            Packet::Encapsulated(_) => "ENCAPSULATED",
        }
    }
}
