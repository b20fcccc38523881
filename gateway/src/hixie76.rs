//! WebSocket draft hixie-76 (draft-hixie-thewebsocketprotocol-76), the
//! pre-RFC 6455 protocol that SockJS 0.3 servers still accept on their
//! `websocket` transport: old browsers speak it, and proxies such as
//! HAProxy forward its handshake before the client's 8-byte key arrives.
//!
//! Owns the handshake arithmetic ([`key_number`], [`challenge`]), the
//! framing (text frames `0x00 … 0xFF`, closing frame `0xFF 0x00`;
//! [`decode_frame`]) and [`Hixie76`], a connection that sends and receives
//! text messages, so the SockJS drivers run over it as over an RFC 6455
//! WebSocket ([`TextFrames`]).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use bytes::{Buf, BytesMut};
use futures_util::{Sink, Stream};
use md5::{Digest, Md5};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The longest text frame accepted from a client.
pub const MAX_FRAME: usize = 1 << 20;

/// How long the client has to send its 8-byte key after our 101.
pub const KEY3_TIMEOUT: Duration = Duration::from_secs(10);

/// One received message of a text-message transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A text message.
    Text(String),
    /// Something to skip (binary, ping, pong).
    Ignore,
    /// The peer closed, or the transport failed.
    Closed,
}

/// A transport of text messages: an RFC 6455 WebSocket ([`Rfc6455`]) or
/// a hixie-76 one, as polls over state it owns (so the stream driver can
/// wait on it without a future of its own); [`send_text`], [`recv_text`]
/// and [`close`] are the async forms.
pub trait TextFrames: Send + Unpin {
    /// The next message.
    fn poll_recv_text(&mut self, cx: &mut Context<'_>) -> Poll<Incoming>;
    /// Queue one text message; [`TextFrames::poll_flush_text`] sends it.
    fn queue_text(&mut self, text: String);
    /// Send what is queued; false when the transport is gone.
    fn poll_flush_text(&mut self, cx: &mut Context<'_>) -> Poll<bool>;
    /// Send the transport's close.
    fn poll_close_text(&mut self, cx: &mut Context<'_>) -> Poll<()>;
}

/// Send one text message; false when the transport is gone.
pub async fn send_text<T: TextFrames>(t: &mut T, text: String) -> bool {
    t.queue_text(text);
    poll_fn(|cx| t.poll_flush_text(cx)).await
}

/// The next message. Cancel-safe.
pub async fn recv_text<T: TextFrames>(t: &mut T) -> Incoming {
    poll_fn(|cx| t.poll_recv_text(cx)).await
}

/// Send the transport's close.
pub async fn close<T: TextFrames>(t: &mut T) {
    poll_fn(|cx| t.poll_close_text(cx)).await;
}

/// An RFC 6455 WebSocket as a [`TextFrames`] transport.
pub struct Rfc6455 {
    ws: WebSocket,
    queued: VecDeque<Message>,
}

impl Rfc6455 {
    /// Wrap an upgraded WebSocket.
    pub fn new(ws: WebSocket) -> Rfc6455 {
        Rfc6455 {
            ws,
            queued: VecDeque::new(),
        }
    }

    fn poll_send_queued(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        while !self.queued.is_empty() {
            match Pin::new(&mut self.ws).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(false),
                Poll::Pending => return Poll::Pending,
            }
            let Some(m) = self.queued.pop_front() else {
                break;
            };
            if Pin::new(&mut self.ws).start_send(m).is_err() {
                return Poll::Ready(false);
            }
        }
        Pin::new(&mut self.ws).poll_flush(cx).map(|r| r.is_ok())
    }
}

impl TextFrames for Rfc6455 {
    fn poll_recv_text(&mut self, cx: &mut Context<'_>) -> Poll<Incoming> {
        Pin::new(&mut self.ws).poll_next(cx).map(|m| match m {
            Some(Ok(Message::Text(t))) => Incoming::Text(t.as_str().to_owned()),
            Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_))) => Incoming::Ignore,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => Incoming::Closed,
        })
    }

    fn queue_text(&mut self, text: String) {
        self.queued.push_back(Message::Text(text.into()));
    }

    fn poll_flush_text(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        self.poll_send_queued(cx)
    }

    fn poll_close_text(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.queued.iter().any(|m| matches!(m, Message::Close(_))) {
            self.queued.push_back(Message::Close(None));
        }
        self.poll_send_queued(cx).map(|_| ())
    }
}

/// The number a `Sec-WebSocket-Key1`/`Key2` header encodes: its digits read
/// as a decimal number, divided by its count of spaces. `None` when there
/// are no spaces, the division leaves a remainder, or it does not fit 32 bits.
pub fn key_number(key: &str) -> Option<u32> {
    let mut digits: u64 = 0;
    let mut spaces: u64 = 0;
    for c in key.chars() {
        if let Some(d) = c.to_digit(10) {
            digits = digits.checked_mul(10)?.checked_add(u64::from(d))?;
        } else if c == ' ' {
            spaces += 1;
        }
    }
    if spaces == 0 || !digits.is_multiple_of(spaces) {
        return None;
    }
    u32::try_from(digits / spaces).ok()
}

/// The 16 bytes the server answers the client's 8-byte key with: MD5 of
/// both key numbers (big-endian) followed by the key.
pub fn challenge(key1: u32, key2: u32, key3: &[u8; 8]) -> [u8; 16] {
    let mut md5 = Md5::new();
    md5.update(key1.to_be_bytes());
    md5.update(key2.to_be_bytes());
    md5.update(key3);
    md5.finalize().into()
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A text frame.
    Text(String),
    /// The closing handshake (`0xFF 0x00`).
    Close,
}

/// Why the client's bytes are not hixie-76 frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame type other than text (`0x00`) or close (`0xFF 0x00`).
    #[error("unsupported frame type {0:#04x}")]
    FrameType(u8),
    /// Text that is not UTF-8.
    #[error("text frame is not UTF-8")]
    Utf8,
    /// A text frame longer than [`MAX_FRAME`].
    #[error("text frame longer than {MAX_FRAME} bytes")]
    TooLong,
}

/// Take one complete frame from the front of `buf`; `Ok(None)` when more
/// bytes are needed.
pub fn decode_frame(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    match kind {
        0x00 => match buf[1..].iter().position(|&b| b == 0xFF) {
            Some(end) => {
                let text = std::str::from_utf8(&buf[1..1 + end])
                    .map_err(|_| FrameError::Utf8)?
                    .to_owned();
                buf.advance(end + 2);
                Ok(Some(Frame::Text(text)))
            }
            None if buf.len() > MAX_FRAME => Err(FrameError::TooLong),
            None => Ok(None),
        },
        0xFF => match buf.get(1) {
            None => Ok(None),
            Some(0x00) => {
                buf.advance(2);
                Ok(Some(Frame::Close))
            }
            Some(_) => Err(FrameError::FrameType(kind)),
        },
        other => Err(FrameError::FrameType(other)),
    }
}

/// Encode a text frame.
pub fn encode_text(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 2);
    out.push(0x00);
    out.extend_from_slice(text.as_bytes());
    out.push(0xFF);
    out
}

/// A hixie-76 connection after the handshake.
#[derive(Debug)]
pub struct Hixie76<S> {
    io: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    closing: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Hixie76<S> {
    /// Finish the handshake on `io` (our 101 is already sent): read the
    /// client's 8-byte key and answer the challenge.
    pub async fn accept(mut io: S, key1: u32, key2: u32) -> std::io::Result<Hixie76<S>> {
        let mut key3 = [0u8; 8];
        tokio::time::timeout(KEY3_TIMEOUT, io.read_exact(&mut key3))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no hixie-76 key"))??;
        io.write_all(&challenge(key1, key2, &key3)).await?;
        io.flush().await?;
        Ok(Hixie76 {
            io,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            closing: false,
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Hixie76<S> {
    fn poll_write_queued(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        while !self.wbuf.is_empty() {
            match Pin::new(&mut self.io).poll_write(cx, &self.wbuf) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(false),
                Poll::Ready(Ok(n)) => self.wbuf.advance(n),
                Poll::Pending => return Poll::Pending,
            }
        }
        Pin::new(&mut self.io).poll_flush(cx).map(|r| r.is_ok())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> TextFrames for Hixie76<S> {
    fn poll_recv_text(&mut self, cx: &mut Context<'_>) -> Poll<Incoming> {
        loop {
            match decode_frame(&mut self.rbuf) {
                Ok(Some(Frame::Text(t))) => return Poll::Ready(Incoming::Text(t)),
                Ok(Some(Frame::Close)) | Err(_) => return Poll::Ready(Incoming::Closed),
                Ok(None) => {}
            }
            let mut chunk = [0u8; 4096];
            let mut buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    return Poll::Ready(Incoming::Closed)
                }
                Poll::Ready(Ok(())) => self.rbuf.extend_from_slice(buf.filled()),
                Poll::Ready(Err(_)) => return Poll::Ready(Incoming::Closed),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn queue_text(&mut self, text: String) {
        self.wbuf.extend_from_slice(&encode_text(&text));
    }

    fn poll_flush_text(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        self.poll_write_queued(cx)
    }

    fn poll_close_text(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.closing {
            self.closing = true;
            self.wbuf.extend_from_slice(&[0xFF, 0x00]);
        }
        if self.poll_write_queued(cx).is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut self.io).poll_shutdown(cx).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example handshake of draft-hixie-thewebsocketprotocol-76 §1.3
    // (also the one sockjs-protocol's test_haproxy sends).
    const KEY1: &str = "4 @1  46546xW%0l 1 5";
    const KEY2: &str = "12998 5 Y3 1  .P00";

    #[test]
    fn draft_example_challenge() {
        let k1 = key_number(KEY1).expect("key1");
        let k2 = key_number(KEY2).expect("key2");
        assert_eq!((k1, k2), (829_309_203, 259_970_620));
        let answer = challenge(k1, k2, b"^n:ds[4U");
        assert_eq!(&answer, b"8jKS'y:G*Co,Wxa-");
    }

    #[test]
    fn sockjs_haproxy_example_challenge() {
        let k1 = key_number(KEY1).expect("key1");
        let k2 = key_number(KEY2).expect("key2");
        assert_eq!(
            challenge(k1, k2, b"aaaaaaaa"),
            *b"\xca4\x00\xd8\xa5\x08G\x97,\xd5qZ\xba\xbfC{"
        );
    }

    #[test]
    fn keys_without_spaces_or_with_a_remainder_are_refused() {
        assert_eq!(key_number("12345"), None);
        assert_eq!(key_number("1 0"), Some(10));
        assert_eq!(key_number("1  1"), None); // 11 / 2
        assert_eq!(key_number("99999999999 9"), None); // does not fit 32 bits
    }

    #[test]
    fn frames_round_trip_and_need_their_end() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&encode_text("a[\"x\"]"));
        buf.extend_from_slice(&[0x00, b'h']);
        assert_eq!(
            decode_frame(&mut buf),
            Ok(Some(Frame::Text("a[\"x\"]".into())))
        );
        assert_eq!(decode_frame(&mut buf), Ok(None));
        buf.extend_from_slice(&[0xFF, 0xFF]);
        assert_eq!(decode_frame(&mut buf), Ok(Some(Frame::Text("h".into()))));
        assert_eq!(decode_frame(&mut buf), Ok(None));
        buf.extend_from_slice(&[0x00]);
        assert_eq!(decode_frame(&mut buf), Ok(Some(Frame::Close)));
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_frames_are_errors() {
        assert_eq!(
            decode_frame(&mut BytesMut::from(&[0x80u8, 1, 2][..])),
            Err(FrameError::FrameType(0x80))
        );
        assert_eq!(
            decode_frame(&mut BytesMut::from(&[0x00u8, 0xC3, 0x28, 0xFF][..])),
            Err(FrameError::Utf8)
        );
    }

    #[tokio::test]
    async fn handshake_then_text_both_ways() {
        let (server_io, mut client) = tokio::io::duplex(1024);
        let k1 = key_number(KEY1).expect("key1");
        let k2 = key_number(KEY2).expect("key2");
        let server = tokio::spawn(async move {
            let mut ws = Hixie76::accept(server_io, k1, k2).await.expect("accept");
            assert!(send_text(&mut ws, "o".into()).await);
            let got = recv_text(&mut ws).await;
            close(&mut ws).await;
            got
        });
        client.write_all(b"^n:ds[4U").await.expect("key3");
        let mut answer = [0u8; 16];
        client.read_exact(&mut answer).await.expect("challenge");
        assert_eq!(&answer, b"8jKS'y:G*Co,Wxa-");
        let mut open = [0u8; 3];
        client.read_exact(&mut open).await.expect("open frame");
        assert_eq!(open, [0x00, b'o', 0xFF]);
        client
            .write_all(&encode_text("[\"hi\"]"))
            .await
            .expect("send");
        assert_eq!(
            server.await.expect("join"),
            Incoming::Text("[\"hi\"]".into())
        );
        let mut close = Vec::new();
        client.read_to_end(&mut close).await.expect("close");
        assert_eq!(close, [0xFF, 0x00]);
    }
}
