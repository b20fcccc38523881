//! Reading from a byte transport without keeping a read buffer: the
//! STOMP driver's [`ConnRead`] ("wait for input, then take what is there",
//! with [`StreamRead`] for any `AsyncRead`) and the MQTT driver's
//! `poll_read_available`. Either polls the stream with a chunk buffer
//! that lives on the stack of one `poll` call, so an idle connection holds
//! no read buffer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// Size of the stack buffer each read goes through.
pub const READ_CHUNK: usize = 16 * 1024;

/// How long a connection the server closed keeps reading (and discarding)
/// so the peer sees our last packets rather than a reset.
pub const LINGER: Duration = Duration::from_secs(2);

/// The read half of a connection, as the driver uses it.
pub trait ConnRead: Send {
    /// Wait for input, then append what is available to `rbuf` (stopping
    /// once it holds `cap` bytes). False when the peer closed or the
    /// transport failed. Cancel-safe: input is consumed only by a poll that
    /// completes the future.
    fn read_into(&mut self, rbuf: &mut BytesMut, cap: usize) -> impl Future<Output = bool> + Send;

    /// After our close: discard input until the peer closes or [`LINGER`]
    /// passes (closing with unread input makes the kernel send RST, which
    /// can destroy a DISCONNECT or CONNACK still in flight).
    fn linger(&mut self) -> impl Future<Output = ()> + Send;
}

/// [`ConnRead`] for any `AsyncRead` (TLS, the WebSocket adapter).
#[derive(Debug)]
pub struct StreamRead<R>(pub R);

impl<R: AsyncRead + Unpin + Send> ConnRead for StreamRead<R> {
    fn read_into(&mut self, rbuf: &mut BytesMut, cap: usize) -> impl Future<Output = bool> + Send {
        std::future::poll_fn(move |cx| poll_read_available(&mut self.0, cx, rbuf, cap))
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
                // End of stream; what arrived before it is still delivered
                // by the caller's final decode.
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
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn stream_read_takes_what_is_there_and_sees_the_end() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut r = StreamRead(a);
        b.write_all(b"hello").await.expect("write");
        let mut rbuf = BytesMut::new();
        assert!(r.read_into(&mut rbuf, 1024).await);
        assert_eq!(&rbuf[..], b"hello");
        drop(b);
        assert!(!r.read_into(&mut rbuf, 1024).await);
    }
}
