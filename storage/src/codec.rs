//! The on-disk record format: keys and values of the store, as bytes.
//!
//! One ordered key space; the first byte says what a key holds:
//!
//! ```text
//!   V                                  format version ("tributary-store/1")
//!   S <client>                         session record
//!   M <len:u16> <client> <seq:u64 BE>  queued QoS 1/2 delivery
//!   F <len:u16> <client> <seq:u64 BE>  its inflight state (packet id, phase)
//!   Q <len:u16> <client> <pid:u16 BE>  incoming QoS 2 id awaiting PUBREL
//!   R <topic>                          retained message
//! ```
//!
//! The client id is length-prefixed so one client's keys never prefix
//! another's, and sequence numbers are big-endian so a prefix scan returns a
//! session's messages in queue order. Values are a small hand-written
//! binary format (big-endian integers, u32-length-prefixed byte strings);
//! decoding never panics and reports [`CodecError`] on anything malformed.
//! Instants are stored as Unix milliseconds.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use tributary_core::session::InflightPhase;
use tributary_core::storage::{instant_of, unix_ms_of, SessionRecord};
use tributary_core::{Delivery, Message, MessageProperties, QoS, SubOptions, Will};

/// Value of the `V` key.
pub const FORMAT: &[u8] = b"tributary-store/1";
/// Key of the format version.
pub const VERSION_KEY: &[u8] = b"V";

/// A record that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("malformed record: {0}")]
pub struct CodecError(pub &'static str);

/// Key of a session record.
pub fn session_key(client: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + client.len());
    k.push(b'S');
    k.extend_from_slice(client.as_bytes());
    k
}

/// Prefix of one client's keys of `kind` (`M`, `F` or `Q`).
pub fn client_prefix(kind: u8, client: &str) -> Vec<u8> {
    let len = u16::try_from(client.len()).unwrap_or(u16::MAX);
    let mut k = Vec::with_capacity(3 + client.len() + 8);
    k.push(kind);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(client.as_bytes());
    k
}

/// Key of a queued message (`M`) or its inflight state (`F`).
pub fn seq_key(kind: u8, client: &str, seq: u64) -> Vec<u8> {
    let mut k = client_prefix(kind, client);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Key of an incoming QoS 2 id.
pub fn qos2_key(client: &str, packet_id: u16) -> Vec<u8> {
    let mut k = client_prefix(b'Q', client);
    k.extend_from_slice(&packet_id.to_be_bytes());
    k
}

/// Key of a retained message.
pub fn retained_key(topic: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + topic.len());
    k.push(b'R');
    k.extend_from_slice(topic.as_bytes());
    k
}

/// A decoded key.
#[derive(Debug, PartialEq, Eq)]
pub enum Key {
    /// `V`.
    Version,
    /// `S`.
    Session(String),
    /// `M`.
    Message(String, u64),
    /// `F`.
    Inflight(String, u64),
    /// `Q`.
    Qos2(String, u16),
    /// `R`.
    Retained(String),
}

/// Decode a key.
pub fn parse_key(key: &[u8]) -> Result<Key, CodecError> {
    let (&kind, rest) = key.split_first().ok_or(CodecError("empty key"))?;
    let utf8 = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| CodecError("key is not UTF-8"))
    };
    match kind {
        b'V' if rest.is_empty() => Ok(Key::Version),
        b'S' => Ok(Key::Session(utf8(rest)?)),
        b'R' => Ok(Key::Retained(utf8(rest)?)),
        b'M' | b'F' | b'Q' => {
            let mut r = Reader::new(rest);
            let len = usize::from(r.u16()?);
            let client = utf8(r.take(len)?)?;
            let key = match kind {
                b'M' => Key::Message(client, r.u64()?),
                b'F' => Key::Inflight(client, r.u64()?),
                _ => Key::Qos2(client, r.u16()?),
            };
            r.end()?;
            Ok(key)
        }
        _ => Err(CodecError("unknown key kind")),
    }
}

/// Writes a value.
#[derive(Debug, Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(b);
    }
    fn opt<T>(&mut self, v: Option<T>, f: impl FnOnce(&mut Self, T)) {
        match v {
            Some(v) => {
                self.u8(1);
                f(self, v);
            }
            None => self.u8(0),
        }
    }
}

/// Reads a value.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Read from `buf`.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.buf.len() < n {
            return Err(CodecError("truncated"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, CodecError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, CodecError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, CodecError> {
        std::str::from_utf8(self.bytes()?)
            .map(str::to_owned)
            .map_err(|_| CodecError("string is not UTF-8"))
    }
    fn flag(&mut self) -> Result<bool, CodecError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(CodecError("bad flag")),
        }
    }
    fn qos(&mut self) -> Result<QoS, CodecError> {
        QoS::from_u8(self.u8()?).ok_or(CodecError("bad QoS"))
    }
    /// Fail unless everything was read.
    pub fn end(&self) -> Result<(), CodecError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(CodecError("trailing bytes"))
        }
    }
}

/// The wall clock and monotonic clock read together, to turn instants
/// into Unix milliseconds and back.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Monotonic now.
    pub now: Instant,
    /// Wall-clock now.
    pub wall: SystemTime,
}

impl Clock {
    /// Read both clocks.
    pub fn read() -> Clock {
        Clock {
            now: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

fn put_message(w: &mut Writer, m: &Message, clock: Clock) {
    w.bytes(m.topic.as_bytes());
    w.bytes(&m.payload);
    w.u8(m.qos as u8);
    w.u8(u8::from(m.retain));
    w.opt(m.publisher.as_deref(), |w, p| w.bytes(p.as_bytes()));
    let p = &m.properties;
    w.opt(p.payload_format_indicator, |w, v| w.u8(v));
    w.opt(p.content_type.as_deref(), |w, v| w.bytes(v.as_bytes()));
    w.opt(p.response_topic.as_deref(), |w, v| w.bytes(v.as_bytes()));
    w.opt(p.correlation_data.as_deref(), |w, v| w.bytes(v));
    w.u32(u32::try_from(p.user_properties.len()).unwrap_or(u32::MAX));
    for (k, v) in &p.user_properties {
        w.bytes(k.as_bytes());
        w.bytes(v.as_bytes());
    }
    w.opt(m.expires_at, |w, at| {
        w.u64(unix_ms_of(at, clock.now, clock.wall))
    });
}

fn get_message(r: &mut Reader<'_>, clock: Clock) -> Result<Message, CodecError> {
    let topic: Arc<str> = r.string()?.into();
    let payload = Bytes::copy_from_slice(r.bytes()?);
    let qos = r.qos()?;
    let retain = r.flag()?;
    let publisher = if r.flag()? {
        Some(Arc::from(r.string()?))
    } else {
        None
    };
    let payload_format_indicator = if r.flag()? { Some(r.u8()?) } else { None };
    let content_type = if r.flag()? { Some(r.string()?) } else { None };
    let response_topic = if r.flag()? { Some(r.string()?) } else { None };
    let correlation_data = if r.flag()? {
        Some(Bytes::copy_from_slice(r.bytes()?))
    } else {
        None
    };
    let n = r.u32()? as usize;
    let mut user_properties = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        user_properties.push((r.string()?, r.string()?));
    }
    let expires_at = if r.flag()? {
        Some(instant_of(r.u64()?, clock.now, clock.wall))
    } else {
        None
    };
    Ok(Message {
        topic,
        payload,
        qos,
        retain,
        publisher,
        properties: MessageProperties {
            payload_format_indicator,
            content_type,
            response_topic,
            correlation_data,
            user_properties,
        },
        expires_at,
    })
}

/// Encode a retained message.
pub fn encode_retained(m: &Message, clock: Clock) -> Vec<u8> {
    let mut w = Writer::default();
    put_message(&mut w, m, clock);
    w.0
}

/// Decode a retained message.
pub fn decode_retained(v: &[u8], clock: Clock) -> Result<Message, CodecError> {
    let mut r = Reader::new(v);
    let m = get_message(&mut r, clock)?;
    r.end()?;
    Ok(m)
}

/// Encode a queued delivery.
pub fn encode_delivery(d: &Delivery, clock: Clock) -> Vec<u8> {
    let mut w = Writer::default();
    put_message(&mut w, &d.message, clock);
    w.u8(d.qos as u8);
    w.u8(u8::from(d.retain));
    w.u32(u32::try_from(d.subscription_ids.len()).unwrap_or(u32::MAX));
    for id in &d.subscription_ids {
        w.u32(*id);
    }
    w.opt(d.shared.as_ref(), |w, (group, filter)| {
        w.bytes(group.as_bytes());
        w.bytes(filter.as_bytes());
    });
    w.0
}

/// Decode a queued delivery.
pub fn decode_delivery(v: &[u8], clock: Clock) -> Result<Delivery, CodecError> {
    let mut r = Reader::new(v);
    let message = Arc::new(get_message(&mut r, clock)?);
    let qos = r.qos()?;
    let retain = r.flag()?;
    let n = r.u32()? as usize;
    let mut subscription_ids = Vec::with_capacity(n.min(16));
    for _ in 0..n {
        subscription_ids.push(r.u32()?);
    }
    let shared = if r.flag()? {
        Some((Arc::from(r.string()?), Arc::from(r.string()?)))
    } else {
        None
    };
    r.end()?;
    Ok(Delivery {
        message,
        qos,
        retain,
        subscription_ids,
        shared,
    })
}

/// Encode an inflight state.
pub fn encode_inflight(packet_id: u16, phase: InflightPhase) -> Vec<u8> {
    let mut w = Writer::default();
    w.u16(packet_id);
    w.u8(match phase {
        InflightPhase::AwaitingAck => 1,
        InflightPhase::AwaitingRec => 2,
        InflightPhase::AwaitingComp => 3,
    });
    w.0
}

/// Decode an inflight state.
pub fn decode_inflight(v: &[u8]) -> Result<(u16, InflightPhase), CodecError> {
    let mut r = Reader::new(v);
    let id = r.u16()?;
    let phase = match r.u8()? {
        1 => InflightPhase::AwaitingAck,
        2 => InflightPhase::AwaitingRec,
        3 => InflightPhase::AwaitingComp,
        _ => return Err(CodecError("bad inflight phase")),
    };
    r.end()?;
    Ok((id, phase))
}

/// Encode a session record.
pub fn encode_session(s: &SessionRecord, clock: Clock) -> Vec<u8> {
    let mut w = Writer::default();
    w.bytes(s.client_id.as_bytes());
    w.opt(s.username.as_deref(), |w, u| w.bytes(u.as_bytes()));
    w.bytes(s.protocol.as_bytes());
    w.u32(s.expiry_interval);
    w.u32(u32::try_from(s.subscriptions.len()).unwrap_or(u32::MAX));
    for (filter, o) in &s.subscriptions {
        w.bytes(filter.as_bytes());
        w.u8(o.qos as u8);
        w.u8(u8::from(o.no_local) | (u8::from(o.retain_as_published) << 1));
        w.u8(o.retain_handling);
        w.opt(o.subscription_id, |w, id| w.u32(id));
    }
    w.opt(s.will.as_ref(), |w, will| {
        put_message(w, &will.message, clock);
        w.u32(will.delay_interval);
        w.opt(will.message_expiry_interval, |w, e| w.u32(e));
    });
    w.opt(s.will_due_ms, |w, v| w.u64(v));
    w.opt(s.expires_at_ms, |w, v| w.u64(v));
    w.0
}

/// Decode a session record.
pub fn decode_session(v: &[u8], clock: Clock) -> Result<SessionRecord, CodecError> {
    let mut r = Reader::new(v);
    let client_id: Arc<str> = r.string()?.into();
    let username = if r.flag()? { Some(r.string()?) } else { None };
    let protocol = r.string()?;
    let expiry_interval = r.u32()?;
    let n = r.u32()? as usize;
    let mut subscriptions = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let filter: Arc<str> = r.string()?.into();
        let qos = r.qos()?;
        let flags = r.u8()?;
        let retain_handling = r.u8()?;
        let subscription_id = if r.flag()? { Some(r.u32()?) } else { None };
        subscriptions.push((
            filter,
            SubOptions {
                qos,
                no_local: flags & 1 != 0,
                retain_as_published: flags & 2 != 0,
                retain_handling,
                subscription_id,
            },
        ));
    }
    let will = if r.flag()? {
        let message = get_message(&mut r, clock)?;
        let delay_interval = r.u32()?;
        let message_expiry_interval = if r.flag()? { Some(r.u32()?) } else { None };
        Some(Will {
            message,
            delay_interval,
            message_expiry_interval,
        })
    } else {
        None
    };
    let will_due_ms = if r.flag()? { Some(r.u64()?) } else { None };
    let expires_at_ms = if r.flag()? { Some(r.u64()?) } else { None };
    r.end()?;
    Ok(SessionRecord {
        client_id,
        username,
        protocol,
        expiry_interval,
        subscriptions,
        will,
        will_due_ms,
        expires_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_order_by_sequence() {
        let a = seq_key(b'M', "client", 2);
        let b = seq_key(b'M', "client", 256);
        assert!(a < b);
        assert_eq!(parse_key(&a).ok(), Some(Key::Message("client".into(), 2)));
        assert_eq!(
            parse_key(&qos2_key("c", 7)).ok(),
            Some(Key::Qos2("c".into(), 7))
        );
        // One client's prefix never covers another's keys.
        assert!(!seq_key(b'M', "ab", 1).starts_with(&client_prefix(b'M', "a")));
        assert!(parse_key(b"Zoops").is_err());
    }

    #[test]
    fn delivery_round_trips_with_properties_and_expiry() {
        let clock = Clock::read();
        let mut m = Message::new("a/b", Bytes::from_static(b"hello"), QoS::ExactlyOnce, true);
        m.publisher = Some("pub".into());
        m.properties.content_type = Some("text/plain".into());
        m.properties.correlation_data = Some(Bytes::from_static(b"\x00\x01"));
        m.properties.user_properties = vec![("k".into(), "v".into())];
        m.expires_at = Some(clock.now + std::time::Duration::from_secs(30));
        let d = Delivery {
            message: Arc::new(m),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![3, 9],
            shared: Some(("g".into(), "a/+".into())),
        };
        let bytes = encode_delivery(&d, clock);
        let back = decode_delivery(&bytes, clock).expect("decodes");
        assert_eq!(&*back.message.topic, "a/b");
        assert_eq!(back.message.payload, d.message.payload);
        assert_eq!(back.message.properties, d.message.properties);
        assert_eq!(back.subscription_ids, vec![3, 9]);
        assert_eq!(back.qos, QoS::AtLeastOnce);
        let left = back
            .message
            .expires_at
            .expect("expiry kept")
            .saturating_duration_since(clock.now);
        assert!(left.as_secs() >= 29 && left.as_secs() <= 30);
        // Every strict prefix is refused, never a panic.
        for n in 0..bytes.len() {
            assert!(decode_delivery(&bytes[..n], clock).is_err());
        }
    }

    #[test]
    fn session_round_trips() {
        let clock = Clock::read();
        let rec = SessionRecord {
            client_id: "c1".into(),
            username: Some("u".into()),
            protocol: "mqtt".into(),
            expiry_interval: 600,
            subscriptions: vec![("t/#".into(), SubOptions::at(QoS::ExactlyOnce))],
            will: Some(Will {
                message: Message::new("will", Bytes::from_static(b"bye"), QoS::AtLeastOnce, false),
                delay_interval: 5,
                message_expiry_interval: Some(9),
            }),
            will_due_ms: Some(123),
            expires_at_ms: None,
        };
        let back = decode_session(&encode_session(&rec, clock), clock).expect("decodes");
        assert_eq!(&*back.client_id, "c1");
        assert_eq!(back.subscriptions, rec.subscriptions);
        assert_eq!(back.will.as_ref().map(|w| w.delay_interval), Some(5));
        assert_eq!(back.will_due_ms, Some(123));
    }
}
