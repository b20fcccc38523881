//! STOMP's message transports for the stream driver
//! ([`crate::drive::stream`]), and the entry points the HTTP listener
//! (`crate::stomp_http`) hands its upgraded connections to:
//! - [`raw_stomp`]: a plain WebSocket (`/stomp/websocket`): WebSocket
//!   messages carry STOMP bytes (a frame may span messages and a message
//!   may hold several); every frame or heart-beat we send is one message,
//!   text when it is UTF-8, binary otherwise;
//! - [`sockjs_stomp_ws`]: SockJS's `websocket` transport (RFC 6455 or
//!   hixie-76): the same, with SockJS framing (`o`, `a[...]`, `h`,
//!   `c[...]`) around the messages and SockJS heart-beats;
//! - [`sockjs_stomp_session`]: a SockJS session carried by HTTP requests:
//!   messages arrive through a bounded queue from `xhr_send`/`jsonp_send`
//!   and leave through the session's outgoing queue.
//!
//! Each is only a [`Transport`]: the connection runs on the same driver,
//! with the same limits, as STOMP over TCP.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::{Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::sync::mpsc;
use tributary_core::connection::Transmit;
use tributary_sockjs::frame as sockjs;
use tributary_stomp::Channel;

use crate::drive::{now, stream::drive, DriveContext};
use crate::hixie76::{Incoming, TextFrames};
use crate::listen::ConnectionGuard;
use crate::stomp_http::SessionEntry;
use crate::transport::Transport;

/// What a STOMP-over-HTTP connection needs.
#[derive(Clone)]
pub struct StompShared {
    /// Shared by every connection of the listener.
    pub ctx: Arc<DriveContext>,
    /// Channel settings.
    pub channel: Arc<tributary_stomp::ChannelConfig>,
}

impl StompShared {
    fn open_channel(&self, peer: SocketAddr) -> Channel {
        Channel::new(
            self.ctx.broker.clone(),
            self.channel.clone(),
            Some(peer),
            now(),
        )
    }
}

/// Close code SockJS and WebSocket get when the STOMP connection ends.
const NORMAL_CLOSURE: (u16, &str) = (1000, "Normal closure");

/// STOMP over a plain WebSocket.
pub async fn raw_stomp(
    ws: WebSocket,
    peer: SocketAddr,
    shared: StompShared,
    guard: ConnectionGuard,
) {
    let channel = shared.open_channel(peer);
    drive(channel, RawWs { ws, closed: false }, &shared.ctx, guard).await;
}

/// STOMP over SockJS's `websocket` transport.
pub async fn sockjs_stomp_ws<T: TextFrames + 'static>(
    ws: T,
    peer: SocketAddr,
    shared: StompShared,
    heartbeat: Duration,
    guard: ConnectionGuard,
) {
    let channel = shared.open_channel(peer);
    let mut transport = SockJsWs {
        ws,
        beat: tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat),
        own: true,
        failed: false,
    };
    transport.ws.queue_text(sockjs::OPEN.into());
    drive(channel, transport, &shared.ctx, guard).await;
}

/// STOMP carried by a SockJS session over HTTP transports. Ends when the
/// STOMP connection closes or the session is forgotten (its inbound queue
/// closes).
pub async fn sockjs_stomp_session(
    entry: Arc<SessionEntry>,
    inbound: mpsc::Receiver<String>,
    peer: SocketAddr,
    shared: StompShared,
    guard: ConnectionGuard,
) {
    let channel = shared.open_channel(peer);
    drive(
        channel,
        SockJsSession { entry, inbound },
        &shared.ctx,
        guard,
    )
    .await;
}

/// Outgoing STOMP bytes as a WebSocket message.
fn ws_message(unit: Bytes) -> Message {
    match String::from_utf8(unit.to_vec()) {
        Ok(text) => Message::Text(text.into()),
        Err(_) => Message::Binary(unit),
    }
}

/// A plain WebSocket carrying STOMP bytes.
struct RawWs {
    ws: WebSocket,
    closed: bool,
}

impl Transport for RawWs {
    fn poll_read(&mut self, cx: &mut Context<'_>, rbuf: &mut BytesMut, cap: usize) -> Poll<bool> {
        let mut got = false;
        while rbuf.len() < cap {
            match Pin::new(&mut self.ws).poll_next(cx) {
                Poll::Ready(Some(Ok(Message::Text(t)))) => {
                    rbuf.extend_from_slice(t.as_bytes());
                    got = true;
                }
                Poll::Ready(Some(Ok(Message::Binary(b)))) => {
                    rbuf.extend_from_slice(&b);
                    got = true;
                }
                Poll::Ready(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                Poll::Ready(Some(Ok(Message::Close(_)) | Err(_)) | None) => {
                    self.closed = true;
                    return Poll::Ready(false);
                }
                Poll::Pending if got => return Poll::Ready(true),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(true)
    }

    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Transmit,
    ) -> Poll<std::io::Result<()>> {
        while !out.is_empty() {
            match Pin::new(&mut self.ws).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(std::io::Error::other(e))),
                Poll::Pending => return Poll::Pending,
            }
            let Some(unit) = out.pop_unit() else { break };
            if let Err(e) = Pin::new(&mut self.ws).start_send(ws_message(unit)) {
                return Poll::Ready(Err(std::io::Error::other(e)));
            }
        }
        Pin::new(&mut self.ws)
            .poll_flush(cx)
            .map_err(std::io::Error::other)
    }

    async fn close(&mut self) {
        if self.closed {
            return;
        }
        let _ = self
            .ws
            .send(Message::Close(Some(CloseFrame {
                code: NORMAL_CLOSURE.0,
                reason: NORMAL_CLOSURE.1.into(),
            })))
            .await;
    }

    async fn linger(&mut self) {}
}

/// SockJS framing over a text-message WebSocket.
struct SockJsWs<T> {
    ws: T,
    beat: tokio::time::Interval,
    /// Frames of our own are queued (the open frame, a heart-beat).
    own: bool,
    failed: bool,
}

impl<T: TextFrames> Transport for SockJsWs<T> {
    fn poll_read(&mut self, cx: &mut Context<'_>, rbuf: &mut BytesMut, cap: usize) -> Poll<bool> {
        let mut got = false;
        while rbuf.len() < cap {
            match self.ws.poll_recv_text(cx) {
                Poll::Ready(Incoming::Text(text)) => {
                    match sockjs::parse_messages(text.as_bytes(), true) {
                        Ok(messages) => {
                            for m in messages {
                                rbuf.extend_from_slice(m.as_bytes());
                                got = true;
                            }
                        }
                        Err(sockjs::PayloadError::Empty) => {}
                        Err(sockjs::PayloadError::BrokenJson) => {
                            tracing::debug!("broken JSON on a SockJS websocket; closing");
                            self.failed = true;
                            return Poll::Ready(false);
                        }
                    }
                }
                Poll::Ready(Incoming::Ignore) => {}
                Poll::Ready(Incoming::Closed) => {
                    self.failed = true;
                    return Poll::Ready(false);
                }
                Poll::Pending if got => return Poll::Ready(true),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(true)
    }

    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Transmit,
    ) -> Poll<std::io::Result<()>> {
        if !out.is_empty() {
            let texts: Vec<String> = out
                .take_units()
                .iter()
                .map(|u| String::from_utf8_lossy(u).into_owned())
                .collect();
            self.ws.queue_text(sockjs::messages(&texts));
        }
        self.own = false;
        match self.ws.poll_flush_text(cx) {
            Poll::Ready(true) => Poll::Ready(Ok(())),
            Poll::Ready(false) => {
                self.failed = true;
                Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_own_output(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.beat.poll_tick(cx).is_ready() {
            self.ws.queue_text(sockjs::HEARTBEAT.into());
            self.own = true;
        }
        if self.own {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    async fn close(&mut self) {
        if self.failed {
            return;
        }
        let text = sockjs::close(NORMAL_CLOSURE.0, NORMAL_CLOSURE.1);
        let _ = crate::hixie76::send_text(&mut self.ws, text).await;
        crate::hixie76::close(&mut self.ws).await;
    }

    async fn linger(&mut self) {}
}

/// A SockJS session's queues.
struct SockJsSession {
    entry: Arc<SessionEntry>,
    inbound: mpsc::Receiver<String>,
}

impl Transport for SockJsSession {
    fn poll_read(&mut self, cx: &mut Context<'_>, rbuf: &mut BytesMut, cap: usize) -> Poll<bool> {
        let mut got = false;
        while rbuf.len() < cap {
            match self.inbound.poll_recv(cx) {
                Poll::Ready(Some(m)) => {
                    rbuf.extend_from_slice(m.as_bytes());
                    got = true;
                }
                Poll::Ready(None) => return Poll::Ready(false),
                Poll::Pending if got => return Poll::Ready(true),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(true)
    }

    fn poll_write(
        &mut self,
        _cx: &mut Context<'_>,
        out: &mut Transmit,
    ) -> Poll<std::io::Result<()>> {
        if out.is_empty() || self.entry.send_all(out.take_units()) {
            Poll::Ready(Ok(()))
        } else {
            tracing::debug!("SockJS session queue full; closing the STOMP connection");
            Poll::Ready(Err(std::io::Error::other("SockJS session queue full")))
        }
    }

    async fn close(&mut self) {
        self.entry.close(NORMAL_CLOSURE.0, NORMAL_CLOSURE.1);
    }

    async fn linger(&mut self) {}
}
