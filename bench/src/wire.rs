//! The load generator's own MQTT client, just enough of it: open a TCP
//! connection (optionally from a chosen loopback source address), CONNECT
//! and wait for CONNACK, SUBSCRIBE and wait for SUBACK, read packets, and
//! write PUBLISH packets from a pre-encoded template.
//!
//! Everything goes through `tributary_mqtt::codec`; the template is encoded
//! by the codec once, then only the packet identifier and the payload stamp
//! are patched per message, so the generator spends its core on the
//! broker's traffic rather than on re-encoding the same topic. The template
//! checks its own layout by decoding a patched copy when it is built.
//!
//! Every wait on the network has a timeout given by the caller, and nothing
//! the broker sends can panic the client: malformed input is an error.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tributary_mqtt::codec::{decode, encode};
use tributary_mqtt::packet::{
    Connect, Packet, Properties, PropertyValues, ProtocolVersion, PubResponse, Publish, QoS,
    Subscribe, SubscriptionOptions,
};

use crate::payload::{Stamp, PADDING, STAMP_LEN};

/// Largest packet accepted from the broker: the largest payload the tool
/// sends (16 MiB) plus generous room for headers.
pub const MAX_PACKET: usize = 17 * 1024 * 1024;

/// Read buffer growth step for connections that carry traffic.
pub const READ_CHUNK: usize = 64 * 1024;

/// An open MQTT connection after a successful CONNACK.
#[derive(Debug)]
pub struct Conn {
    /// The socket (TCP_NODELAY set).
    pub stream: TcpStream,
    /// Bytes read but not decoded yet.
    pub rbuf: BytesMut,
    /// Negotiated protocol version.
    pub version: ProtocolVersion,
    /// The broker's Receive Maximum (MQTT 5 CONNACK; 65535 when absent or
    /// for 3.1.1, which has no flow control).
    pub receive_maximum: u16,
}

/// Open a TCP connection to `target` (from `source` when given) and
/// complete the MQTT handshake with a clean session.
pub async fn open(
    target: SocketAddr,
    source: Option<IpAddr>,
    version: ProtocolVersion,
    client_id: &str,
    keep_alive: u16,
    timeout: Duration,
) -> anyhow::Result<Conn> {
    open_with(
        target, source, version, client_id, keep_alive, timeout, true,
    )
    .await
}

/// [`open`], choosing clean start: `false` asks for a persistent session
/// (MQTT 5: session expiry of one hour).
pub async fn open_with(
    target: SocketAddr,
    source: Option<IpAddr>,
    version: ProtocolVersion,
    client_id: &str,
    keep_alive: u16,
    timeout: Duration,
    clean_start: bool,
) -> anyhow::Result<Conn> {
    if !crate::options::is_allowed_target(target.ip()) {
        bail!("refusing non-loopback target {target}");
    }
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .context("socket")?;
    if let Some(source) = source {
        socket
            .bind(SocketAddr::new(source, 0))
            .with_context(|| format!("bind {source}:0"))?;
    }
    let stream = tokio::time::timeout(timeout, socket.connect(target))
        .await
        .map_err(|_| anyhow!("TCP connect to {target} timed out"))?
        .with_context(|| format!("TCP connect to {target}"))?;
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    let mut conn = Conn {
        stream,
        rbuf: BytesMut::with_capacity(256),
        version,
        receive_maximum: u16::MAX,
    };
    let connect = Packet::Connect(Box::new(Connect {
        protocol: version,
        clean_start,
        keep_alive,
        client_id: client_id.to_owned(),
        will: None,
        username: None,
        password: None,
        properties: PropertyValues {
            session_expiry_interval: (!clean_start).then_some(3600),
            ..PropertyValues::default()
        }
        .into(),
    }));
    conn.send(&connect).await?;
    let reply = tokio::time::timeout(timeout, conn.read())
        .await
        .map_err(|_| anyhow!("no CONNACK within {timeout:?}"))??;
    match reply {
        Some(Packet::ConnAck(ack)) if ack.code == 0 => {
            if let Some(max) = ack.properties.receive_maximum {
                conn.receive_maximum = max.max(1);
            }
            Ok(conn)
        }
        Some(Packet::ConnAck(ack)) => bail!("CONNACK refused with code 0x{:02X}", ack.code),
        Some(other) => bail!("expected CONNACK, got {}", packet_name(&other)),
        None => bail!("connection closed before CONNACK"),
    }
}

impl Conn {
    /// Encode and write one packet.
    pub async fn send(&mut self, packet: &Packet) -> anyhow::Result<()> {
        let mut buf = BytesMut::new();
        encode_into(packet, self.version, &mut buf)?;
        self.stream.write_all(&buf).await.context("write")?;
        Ok(())
    }

    /// Read the next packet; `None` on a clean end of stream.
    pub async fn read(&mut self) -> anyhow::Result<Option<Packet>> {
        read_packet(&mut self.stream, &mut self.rbuf, self.version, 256).await
    }

    /// Subscribe to one filter and wait for its SUBACK; returns the granted
    /// QoS, or an error when the broker refused the subscription.
    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: QoS,
        packet_id: u16,
        timeout: Duration,
    ) -> anyhow::Result<QoS> {
        let subscribe = Packet::Subscribe(Subscribe {
            packet_id,
            properties: Properties::default(),
            filters: vec![(
                filter.to_owned(),
                SubscriptionOptions {
                    qos,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: 0,
                },
            )],
        });
        self.send(&subscribe).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        // Anything else the broker sends first (it should send nothing) is
        // skipped; the loop is bounded by the deadline.
        loop {
            let reply = tokio::time::timeout_at(deadline, self.read())
                .await
                .map_err(|_| anyhow!("no SUBACK for {filter:?} within {timeout:?}"))??;
            match reply {
                Some(Packet::SubAck(ack)) if ack.packet_id == packet_id => {
                    let code = ack.reasons.first().copied().unwrap_or(0x80);
                    return QoS::from_u8(code).ok_or_else(|| {
                        anyhow!("subscription to {filter:?} refused with code 0x{code:02X}")
                    });
                }
                Some(_) => continue,
                None => bail!("connection closed before SUBACK"),
            }
        }
    }
}

/// Encode `packet` for `version` at the end of `buf`.
pub fn encode_into(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> anyhow::Result<()> {
    encode(packet, version, buf).map_err(|e| anyhow!("cannot encode {}: {e}", packet_name(packet)))
}

/// Read from `reader` until `buf` holds a complete packet and decode it.
/// `None` on a clean end of stream; an error for a malformed packet or a
/// stream that ends inside one. `chunk` is how much room is made in `buf`
/// before each read.
pub async fn read_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    version: ProtocolVersion,
    chunk: usize,
) -> anyhow::Result<Option<Packet>> {
    loop {
        if let Some(packet) = decode(buf, version, MAX_PACKET)
            .map_err(|e| anyhow!("malformed packet from the broker: {e}"))?
        {
            return Ok(Some(packet));
        }
        if buf.capacity() - buf.len() < chunk / 2 {
            buf.reserve(chunk);
        }
        let n = reader.read_buf(buf).await.context("read")?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            bail!("connection closed inside a packet");
        }
    }
}

/// A PUBACK / PUBREC / PUBREL / PUBCOMP body with reason 0.
pub fn response(packet_id: u16) -> PubResponse {
    PubResponse {
        packet_id,
        reason: 0,
        properties: Properties::default(),
    }
}

/// Short name of a packet for error messages.
pub fn packet_name(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect(_) => "DISCONNECT",
        Packet::Auth(_) => "AUTH",
    }
}

/// A PUBLISH encoded once by the codec; each message copies it and patches
/// the packet identifier and the payload stamp.
#[derive(Debug, Clone)]
pub struct PublishTemplate {
    /// The whole encoded packet, fixed header included.
    frame: Vec<u8>,
    /// Offset of the two packet-identifier bytes (QoS 1/2 only).
    id_at: Option<usize>,
    /// Offset of the payload.
    payload_at: usize,
}

impl PublishTemplate {
    /// Encode the template for `topic` with a `payload_len`-byte payload
    /// (at least [`STAMP_LEN`]) and check its layout.
    pub fn new(
        topic: &str,
        qos: QoS,
        payload_len: usize,
        version: ProtocolVersion,
    ) -> anyhow::Result<PublishTemplate> {
        if payload_len < STAMP_LEN {
            bail!("payload must be at least {STAMP_LEN} bytes");
        }
        let packet = Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            packet_id: (qos != QoS::AtMostOnce).then_some(1),
            properties: Properties::default(),
            payload: Bytes::from(vec![PADDING; payload_len]),
        });
        let mut buf = BytesMut::new();
        encode_into(&packet, version, &mut buf)?;
        let payload_at = buf.len() - payload_len;
        // MQTT 5 puts a property length (one byte, 0) between the packet
        // identifier and the payload [§3.3.2.3].
        let properties_len = usize::from(version.is_v5());
        let id_at = (qos != QoS::AtMostOnce).then(|| payload_at - properties_len - 2);
        let template = PublishTemplate {
            frame: buf.to_vec(),
            id_at,
            payload_at,
        };
        template.self_check(topic, qos, payload_len, version)?;
        Ok(template)
    }

    /// Decode a patched copy and compare: catches a codec whose layout is
    /// not what the offsets assume.
    fn self_check(
        &self,
        topic: &str,
        qos: QoS,
        payload_len: usize,
        version: ProtocolVersion,
    ) -> anyhow::Result<()> {
        let stamp = Stamp {
            seq: 0x0102_0304,
            publisher: 0x0506_0708,
            sent_ns: 0x1112_1314_1516_1718,
        };
        let id = (qos != QoS::AtMostOnce).then_some(0xBEEF);
        let mut buf = BytesMut::new();
        self.append(&mut buf, id, &stamp);
        match decode(&mut buf, version, MAX_PACKET) {
            Ok(Some(Packet::Publish(p)))
                if &*p.topic == topic
                    && p.qos == qos
                    && p.packet_id == id
                    && p.payload.len() == payload_len
                    && Stamp::read(&p.payload) == Some(stamp)
                    && buf.is_empty() =>
            {
                Ok(())
            }
            other => bail!("PUBLISH template layout check failed: {other:?}"),
        }
    }

    /// Encoded size of one message.
    pub fn len(&self) -> usize {
        self.frame.len()
    }

    /// Always false: a PUBLISH has at least a fixed header.
    pub fn is_empty(&self) -> bool {
        self.frame.is_empty()
    }

    /// Append one PUBLISH with `packet_id` (ignored for QoS 0) and `stamp`.
    pub fn append(&self, out: &mut BytesMut, packet_id: Option<u16>, stamp: &Stamp) {
        let start = out.len();
        out.extend_from_slice(&self.frame);
        if let (Some(at), Some(id)) = (self.id_at, packet_id) {
            out[start + at..start + at + 2].copy_from_slice(&id.to_be_bytes());
        }
        stamp.write(&mut out[start + self.payload_at..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_decode_for_every_version_and_qos() {
        for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                for len in [16, 64, 200, 70_000] {
                    let t =
                        PublishTemplate::new("bench/x/p2p/3", qos, len, version).expect("template");
                    let mut buf = BytesMut::new();
                    let stamp = Stamp {
                        seq: 9,
                        publisher: 3,
                        sent_ns: 42,
                    };
                    t.append(&mut buf, Some(77), &stamp);
                    t.append(&mut buf, Some(78), &stamp);
                    for expected_id in [77, 78] {
                        let Ok(Some(Packet::Publish(p))) = decode(&mut buf, version, MAX_PACKET)
                        else {
                            panic!("template does not decode");
                        };
                        let want = (qos != QoS::AtMostOnce).then_some(expected_id);
                        assert_eq!(p.packet_id, want);
                        assert_eq!(Stamp::read(&p.payload), Some(stamp));
                    }
                    assert!(buf.is_empty());
                }
            }
        }
    }

    #[test]
    fn short_payloads_are_refused() {
        assert!(PublishTemplate::new("t", QoS::AtMostOnce, 15, ProtocolVersion::V5).is_err());
    }
}
