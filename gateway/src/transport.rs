//! What the stream driver reads from and writes to: the [`Transport`]
//! trait, and [`ByteStream`] for any `AsyncRead + AsyncWrite` (TCP, TLS,
//! the MQTT WebSocket adapter). Message transports (STOMP over WebSocket,
//! SockJS) implement it in `crate::stomp_transport`.
//!
//! Reads go through a chunk buffer that lives on the stack of one `poll`
//! call, so an idle connection holds no read buffer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tributary_core::connection::Transmit;

/// Size of the stack buffer each read goes through.
pub const READ_CHUNK: usize = 16 * 1024;

/// How long a connection the server closed keeps reading (and discarding)
/// so the peer sees our last packets rather than a reset.
pub const LINGER: Duration = Duration::from_secs(2);

/// A connection's transport, as the stream driver uses it. Every method
/// is a poll over state the transport owns, so waiting on it adds nothing
/// to the driver's future.
pub trait Transport: Send + Unpin {
    /// Units leave as one run of bytes, so their ends need not be kept
    /// ([`Transmit::byte_run`]); a message transport sends one each.
    const BYTE_RUN: bool = false;

    /// Append what input is available to `rbuf` (stopping once it holds
    /// `cap` bytes). Ready(true) once something arrived, Ready(false) when
    /// the peer closed or the transport failed.
    fn poll_read(&mut self, cx: &mut Context<'_>, rbuf: &mut BytesMut, cap: usize) -> Poll<bool>;

    /// Write what `out` holds (taking it as it goes), and whatever the
    /// transport queued itself, then flush.
    fn poll_write(&mut self, cx: &mut Context<'_>, out: &mut Transmit)
        -> Poll<std::io::Result<()>>;

    /// Ready when the transport has something of its own to write (a
    /// SockJS heart-beat frame); the driver then calls
    /// [`Transport::poll_write`].
    fn poll_own_output(&mut self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }

    /// Close our side (FIN, a close frame).
    fn close(&mut self) -> impl Future<Output = ()> + Send;

    /// After our close: discard input until the peer closes or [`LINGER`]
    /// passes (closing with unread input makes the kernel send RST, which
    /// can destroy a DISCONNECT or CONNACK still in flight).
    fn linger(&mut self) -> impl Future<Output = ()> + Send;
}

/// A byte stream: units leave as one run of bytes.
#[derive(Debug)]
pub struct ByteStream<S>(pub S);

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Transport for ByteStream<S> {
    const BYTE_RUN: bool = true;

    fn poll_read(&mut self, cx: &mut Context<'_>, rbuf: &mut BytesMut, cap: usize) -> Poll<bool> {
        poll_read_available(&mut self.0, cx, rbuf, cap)
    }

    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Transmit,
    ) -> Poll<std::io::Result<()>> {
        while !out.is_empty() {
            match Pin::new(&mut self.0).poll_write(cx, out.bytes()) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => out.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // TLS records and WebSocket frames leave on flush; for TCP it is free.
        Pin::new(&mut self.0).poll_flush(cx)
    }

    async fn close(&mut self) {
        let _ = self.0.shutdown().await;
    }

    async fn linger(&mut self) {
        // On the heap, and only while lingering.
        let mut scratch = vec![0u8; 1024];
        let _ = tokio::time::timeout(LINGER, async {
            while let Ok(n) = self.0.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }
}

/// One poll: read chunks while the stream has them. Ready(true) once at
/// least one byte arrived (or `rbuf` is full), Ready(false) on end of
/// stream or error, Pending when nothing was there.
pub(crate) fn poll_read_available<R: AsyncRead + Unpin>(
    reader: &mut R,
    cx: &mut Context<'_>,
    rbuf: &mut BytesMut,
    cap: usize,
) -> Poll<bool> {
    let mut chunk = [0u8; READ_CHUNK];
    let mut got = false;
    while rbuf.len() < cap {
        let mut buf = ReadBuf::new(&mut chunk);
        match Pin::new(&mut *reader).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                // End of stream; what arrived before it is still handled
                // by the caller.
                return Poll::Ready(false);
            }
            Poll::Ready(Ok(())) => {
                rbuf.extend_from_slice(buf.filled());
                got = true;
                if buf.filled().len() < READ_CHUNK {
                    return Poll::Ready(true);
                }
            }
            Poll::Ready(Err(_)) => return Poll::Ready(false),
            Poll::Pending if got => return Poll::Ready(true),
            Poll::Pending => return Poll::Pending,
        }
    }
    Poll::Ready(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    #[tokio::test]
    async fn a_byte_stream_reads_what_is_there_writes_all_and_sees_the_end() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut t = ByteStream(a);
        b.write_all(b"hello").await.expect("write");
        let mut rbuf = BytesMut::new();
        assert!(poll_fn(|cx| t.poll_read(cx, &mut rbuf, 1024)).await);
        assert_eq!(&rbuf[..], b"hello");
        let mut out = Transmit::default();
        out.push_unit(b"ab");
        out.push_unit(b"cd");
        poll_fn(|cx| t.poll_write(cx, &mut out))
            .await
            .expect("write");
        assert!(out.is_empty());
        let mut got = [0u8; 4];
        b.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"abcd");
        drop(b);
        assert!(!poll_fn(|cx| t.poll_read(cx, &mut rbuf, 1024)).await);
    }
}
