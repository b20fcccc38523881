//! MQTT over WebSocket (RFC 6455; MQTT 5 §6): the upgrade and an adapter
//! that turns WebSocket messages into the byte stream the MQTT driver reads.
//!
//! Handshake rules (DESIGN §2): the request path must be the listener's
//! `path` (404 otherwise); of the subprotocols the client offers, the first
//! one we support (`mqtt`, `mqttv3.1`, `mqtt-v3`, `mqtt-v3.1.1`, `mqtt-v5`)
//! is echoed; a client that offers none is accepted without one (some
//! clients send no header), a client that offers only unsupported ones is
//! refused with 400 (RFC 6455 §4.2.2 would leave it to fail the connection).
//! With `proxy_address_header` set, on a connection from one of the
//! `trusted_proxies`, the rightmost address of that header that is not a
//! trusted proxy becomes the client's address ([`forwarded_address`]).
//!
//! Data: binary messages only [MQTT-6.0.0-1]; a text message closes the
//! connection. Messages are concatenated into one byte stream, so a packet
//! may span messages and a message may hold several packets
//! [MQTT-6.0.0-2]. Each driver flush becomes one binary message.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Subprotocols accepted, as EMQX and MQTT.js / paho use them.
pub const SUBPROTOCOLS: &[&str] = &["mqtt", "mqttv3.1", "mqtt-v3", "mqtt-v3.1.1", "mqtt-v5"];

/// What the upgrade needs from the listener's configuration.
#[derive(Debug, Clone)]
pub struct WsSettings {
    /// The endpoint path, e.g. `/mqtt`.
    pub path: String,
    /// Lower-case header name carrying the client address, if one is set.
    pub proxy_address_header: Option<String>,
    /// The proxies (address, prefix length) whose header is believed.
    pub trusted_proxies: Vec<(IpAddr, u8)>,
    /// Largest message accepted.
    pub max_frame_size: usize,
}

/// What to answer to the offered subprotocols.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subprotocol {
    /// Echo this one: the first supported one offered.
    Chosen(String),
    /// The client offered none: answer without one.
    NoneOffered,
    /// The client offered only protocols we do not speak.
    Unsupported,
}

/// The answer for the offered `Sec-WebSocket-Protocol` header values.
pub fn choose_subprotocol<'a>(offered: impl Iterator<Item = &'a str>) -> Subprotocol {
    let mut any = false;
    for value in offered {
        for p in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            any = true;
            if let Some(ours) = SUBPROTOCOLS.iter().find(|s| s.eq_ignore_ascii_case(p)) {
                return Subprotocol::Chosen((*ours).to_owned());
            }
        }
    }
    if any {
        Subprotocol::Unsupported
    } else {
        Subprotocol::NoneOffered
    }
}

/// The client's address in a forwarding header: `X-Forwarded-For: client,
/// proxy1` or RFC 7239 `Forwarded: for=client, for="[2001:db8::1]:4711"`.
/// Each proxy appends what it saw, so only the right end is vouched for:
/// the client is the rightmost address that is not a trusted proxy (the
/// leftmost when all are). `None` when an entry there is not an address.
pub fn forwarded_address(value: &str, trusted: &[(IpAddr, u8)]) -> Option<IpAddr> {
    let mut entries: Vec<&str> = value.split(',').map(str::trim).collect();
    let is_trusted = |ip: &IpAddr| {
        trusted
            .iter()
            .any(|(net, prefix)| tributary_core::auth::ip_in_net(*ip, *net, *prefix))
    };
    let mut leftmost = None;
    while let Some(entry) = entries.pop() {
        let ip = entry_address(entry)?;
        if !is_trusted(&ip) {
            return Some(ip);
        }
        leftmost = Some(ip);
    }
    leftmost
}

/// One entry: a bare address, `address:port`, or a `Forwarded` element
/// with `for=` (quoted, bracketed IPv6, with or without a port).
fn entry_address(entry: &str) -> Option<IpAddr> {
    let node = match entry.split(';').find_map(|pair| {
        pair.trim()
            .strip_prefix("for=")
            .or_else(|| pair.trim().strip_prefix("For="))
    }) {
        Some(node) => node.trim_matches('"'),
        None => entry,
    };
    node.parse::<IpAddr>()
        .ok()
        .or_else(|| node.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            let inner = node.strip_prefix('[')?.split(']').next()?;
            inner.parse::<IpAddr>().ok()
        })
}

fn reject(status: StatusCode, why: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(why.to_owned()));
    *r.status_mut() = status;
    r
}

/// Upgrade `stream` to a WebSocket per the rules above. Returns the
/// adapter and the client's address (forwarded or `peer`).
// tungstenite's handshake callback returns its (large) error response by value.
#[allow(clippy::result_large_err)]
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin + Send>(
    stream: S,
    peer: SocketAddr,
    settings: &WsSettings,
) -> Result<(WsStream<S>, SocketAddr), tokio_tungstenite::tungstenite::Error> {
    let mut client_addr = peer;
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != settings.path {
            return Err(reject(StatusCode::NOT_FOUND, "no WebSocket endpoint here"));
        }
        let offered = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok());
        match choose_subprotocol(offered) {
            Subprotocol::Chosen(p) => {
                if let Ok(v) = HeaderValue::from_str(&p) {
                    resp.headers_mut().insert("sec-websocket-protocol", v);
                }
            }
            Subprotocol::NoneOffered => {}
            Subprotocol::Unsupported => {
                return Err(reject(
                    StatusCode::BAD_REQUEST,
                    "no supported MQTT subprotocol offered",
                ))
            }
        }
        let from_proxy = settings
            .trusted_proxies
            .iter()
            .any(|(net, prefix)| tributary_core::auth::ip_in_net(peer.ip(), *net, *prefix));
        if let (Some(header), true) = (&settings.proxy_address_header, from_proxy) {
            if let Some(ip) = req
                .headers()
                .get(header.as_str())
                .and_then(|v| v.to_str().ok())
                .and_then(|v| forwarded_address(v, &settings.trusted_proxies))
            {
                client_addr = SocketAddr::new(ip, peer.port());
            }
        }
        Ok(resp)
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(settings.max_frame_size))
        .max_frame_size(Some(settings.max_frame_size));
    let ws =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await?;
    Ok((WsStream::new(ws), client_addr))
}

/// Byte-stream view of a WebSocket: `AsyncRead` yields the payloads of
/// binary messages in order; bytes written are sent as one binary message
/// per flush.
#[derive(Debug)]
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// Unread rest of the current message; empty while idle.
    pending: Bytes,
    /// Bytes written since the last flush.
    out: BytesMut,
    /// The peer closed (or sent text): reads return end of stream.
    eof: bool,
}

impl<S> WsStream<S> {
    fn new(inner: WebSocketStream<S>) -> WsStream<S> {
        WsStream {
            inner,
            pending: Bytes::new(),
            out: BytesMut::new(),
            eof: false,
        }
    }
}

fn to_io(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::other(e)
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Text(_))) => {
                    // [MQTT-6.0.0-1]: MQTT travels in binary frames only.
                    tracing::debug!("text WebSocket frame; closing [MQTT-6.0.0-1]");
                    this.eof = true;
                }
                Some(Ok(Message::Close(_))) | None => this.eof = true,
                // Pings are answered by tungstenite itself.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.out.is_empty() {
            ready!(Pin::new(&mut this.inner).poll_ready(cx)).map_err(to_io)?;
            let message = Message::Binary(this.out.split().freeze());
            // Give the buffer's memory back while idle.
            this.out = BytesMut::new();
            Pin::new(&mut this.inner)
                .start_send(message)
                .map_err(to_io)?;
        }
        Pin::new(&mut this.inner).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut *this).poll_flush(cx))?;
        Pin::new(&mut this.inner).poll_close(cx).map_err(to_io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_supported_offered_subprotocol_is_chosen() {
        let pick = |v: &[&str]| choose_subprotocol(v.iter().copied());
        let chosen = |s: &str| Subprotocol::Chosen(s.into());
        assert_eq!(pick(&["mqtt"]), chosen("mqtt"));
        assert_eq!(pick(&["wamp, mqttv3.1, mqtt"]), chosen("mqttv3.1"));
        assert_eq!(pick(&["chat", "mqtt-v5"]), chosen("mqtt-v5"));
        assert_eq!(pick(&["MQTT"]), chosen("mqtt"));
        assert_eq!(pick(&[]), Subprotocol::NoneOffered);
        assert_eq!(pick(&["chat"]), Subprotocol::Unsupported);
    }

    #[test]
    fn the_client_is_the_rightmost_address_no_trusted_proxy_wrote() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
        let trusted = [("10.0.0.0".parse().expect("ip"), 8)];
        // A client that sends its own header cannot choose its address: the
        // proxy appended the one it saw.
        assert_eq!(
            forwarded_address("6.6.6.6, 203.0.113.7", &trusted),
            ip("203.0.113.7")
        );
        assert_eq!(
            forwarded_address("203.0.113.7, 10.0.0.1", &trusted),
            ip("203.0.113.7")
        );
        assert_eq!(
            forwarded_address("10.0.0.2, 10.0.0.1", &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(forwarded_address("2001:db8::1", &[]), ip("2001:db8::1"));
        assert_eq!(
            forwarded_address(
                r#"for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711""#,
                &[]
            ),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(forwarded_address("unknown", &[]), None);
    }

    #[tokio::test]
    async fn packets_span_messages_and_messages_hold_packets() {
        use futures_util::SinkExt;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (server_io, client_io) = tokio::io::duplex(1 << 16);
        let settings = WsSettings {
            path: "/mqtt".into(),
            proxy_address_header: Some("x-forwarded-for".into()),
            trusted_proxies: vec![("127.0.0.1".parse().expect("ip"), 32)],
            max_frame_size: 1 << 20,
        };
        let peer: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let server = tokio::spawn(async move { accept(server_io, peer, &settings).await });
        let req = tokio_tungstenite::tungstenite::http::Request::builder()
            .uri("ws://localhost/mqtt")
            .header("host", "localhost")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-protocol", "foo, mqtt-v3.1.1")
            .header("x-forwarded-for", "198.51.100.4")
            .body(())
            .expect("request");
        let (mut client, resp) = tokio_tungstenite::client_async(req, client_io)
            .await
            .expect("client handshake");
        assert_eq!(
            resp.headers()
                .get("sec-websocket-protocol")
                .map(|v| v.as_bytes()),
            Some(&b"mqtt-v3.1.1"[..])
        );
        let (mut ws, addr) = server.await.expect("join").expect("server handshake");
        assert_eq!(addr.ip().to_string(), "198.51.100.4");
        client
            .send(Message::Binary(Bytes::from_static(b"\x10\x02")))
            .await
            .expect("send");
        client
            .send(Message::Binary(Bytes::from_static(b"ab\xc0\x00")))
            .await
            .expect("send");
        let mut got = [0u8; 6];
        ws.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"\x10\x02ab\xc0\x00");
        ws.write_all(b"\xd0\x00").await.expect("write");
        ws.write_all(b"\xd0\x00").await.expect("write");
        ws.flush().await.expect("flush");
        use futures_util::StreamExt;
        let m = client.next().await.expect("message").expect("ok");
        assert_eq!(m, Message::Binary(Bytes::from_static(b"\xd0\x00\xd0\x00")));
        client
            .send(Message::Text("oops".into()))
            .await
            .expect("send");
        let mut rest = Vec::new();
        assert_eq!(ws.read_to_end(&mut rest).await.expect("eof"), 0);
    }
}
