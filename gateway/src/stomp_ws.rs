//! STOMP over WebSocket and over SockJS: the connection drivers.
//!
//! Three drivers run the same sans-IO STOMP [`Channel`] as the TCP one:
//! - [`raw_stomp`]: a plain WebSocket (`/stomp/websocket`, subprotocols
//!   `v10.stomp` `v11.stomp` `v12.stomp`): WebSocket messages carry STOMP
//!   bytes (a frame may span messages and a message may hold several);
//!   every frame or heart-beat we send is one message, text when it is
//!   UTF-8, binary otherwise.
//! - [`sockjs_stomp_ws`]: SockJS's `websocket` transport: the same, with
//!   SockJS framing (`o`, `a[...]`, `h`, `c[...]`) around the messages.
//! - [`sockjs_stomp_session`]: a SockJS session carried by HTTP requests:
//!   messages arrive through a bounded queue from `xhr_send`/`jsonp_send`
//!   and leave through the session's outgoing queue, read by whichever
//!   receiving request is attached.
//!
//! Each waits on its input, the session's wake-up signal, the channel's
//! deadline and shutdown, like the TCP driver, and reads no input while
//! [`Holds`] says so (authentication pending, subscribers' mailboxes full).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tracing::debug;
use tributary_core::Broker;
use tributary_sockjs::frame as sockjs;
use tributary_stomp::{Channel, ChannelConfig};

use crate::hixie76::{Incoming, TextFrames};
use crate::mqtt_tcp::now;
use crate::stomp_http::SessionEntry;
use crate::stomp_tcp::{decode_all, encode_items, max_frame_bytes, wait_signal, Holds};

/// What a STOMP-over-HTTP connection needs.
#[derive(Clone)]
pub struct StompShared {
    /// The core.
    pub broker: Arc<Broker>,
    /// Channel settings.
    pub channel: Arc<ChannelConfig>,
    /// Flips to true on shutdown.
    pub shutdown: watch::Receiver<bool>,
}

impl StompShared {
    /// A channel for a new connection from `peer`, counted as open.
    fn open_channel(&self, peer: SocketAddr) -> Channel {
        let metrics = self.broker.metrics();
        metrics.inc(&metrics.connections);
        metrics.inc(&metrics.connections_total);
        Channel::new(self.broker.clone(), self.channel.clone(), Some(peer), now())
    }
}

/// Close code SockJS sends when the STOMP connection ends.
const NORMAL_CLOSURE: (u16, &str) = (1000, "Normal closure");

async fn wait_deadline(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

/// Outgoing STOMP bytes as a WebSocket message.
fn ws_message(chunk: Bytes) -> Message {
    match String::from_utf8(chunk.to_vec()) {
        Ok(text) => Message::Text(text.into()),
        Err(_) => Message::Binary(chunk),
    }
}

/// STOMP over a plain WebSocket.
pub async fn raw_stomp(
    mut ws: WebSocket,
    peer: SocketAddr,
    shared: StompShared,
    _permit: OwnedSemaphorePermit,
) {
    let metrics = shared.broker.metrics();
    let mut channel = shared.open_channel(peer);
    let cap = max_frame_bytes(&shared.channel);
    let mut shutdown = shared.shutdown.clone();
    let mut rbuf = BytesMut::new();
    let mut signal = None;
    let mut holds = Holds::new(&shared.broker);
    loop {
        let mut failed = false;
        for chunk in encode_items(&mut channel) {
            if ws.send(ws_message(chunk)).await.is_err() {
                failed = true;
                break;
            }
        }
        if failed || channel.is_closed() {
            break;
        }
        if signal.is_none() {
            signal = channel.signal();
        }
        if holds
            .settle(&mut channel, &signal, &mut shutdown, &mut rbuf)
            .await
        {
            continue;
        }
        let deadline = channel.next_deadline();
        tokio::select! {
            msg = ws.recv() => {
                let data = match msg {
                    Some(Ok(Message::Text(t))) => Bytes::from(t),
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                };
                rbuf.extend_from_slice(&data);
                decode_all(&mut channel, &mut rbuf);
                if rbuf.len() > cap {
                    // A frame that can never fit: the decoder's limits
                    // would refuse it; do not keep buffering.
                    break;
                }
            }
            _ = wait_signal(&signal) => channel.handle_wake(now()),
            _ = wait_deadline(deadline) => channel.handle_timeout(now()),
            _ = shutdown.changed() => channel.shutdown(),
        }
    }
    for chunk in encode_items(&mut channel) {
        let _ = ws.send(ws_message(chunk)).await;
    }
    channel.finish(now());
    let _ = ws
        .send(Message::Close(Some(CloseFrame {
            code: NORMAL_CLOSURE.0,
            reason: NORMAL_CLOSURE.1.into(),
        })))
        .await;
    metrics.dec(&metrics.connections);
}

/// Outgoing STOMP chunks as one SockJS array frame.
fn sockjs_array(chunks: Vec<Bytes>) -> String {
    let texts: Vec<String> = chunks
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    sockjs::messages(&texts)
}

/// STOMP over SockJS's `websocket` transport (an RFC 6455 WebSocket, or a
/// hixie-76 one).
pub async fn sockjs_stomp_ws<T: TextFrames>(
    mut ws: T,
    peer: SocketAddr,
    shared: StompShared,
    heartbeat: Duration,
    _permit: OwnedSemaphorePermit,
) {
    let metrics = shared.broker.metrics();
    let mut channel = shared.open_channel(peer);
    let cap = max_frame_bytes(&shared.channel);
    let mut shutdown = shared.shutdown.clone();
    let mut rbuf = BytesMut::new();
    let mut signal = None;
    let mut holds = Holds::new(&shared.broker);
    let mut ok = ws.send_text(sockjs::OPEN.into()).await;
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    while ok {
        let chunks = encode_items(&mut channel);
        if !chunks.is_empty() && !ws.send_text(sockjs_array(chunks)).await {
            ok = false;
            break;
        }
        if channel.is_closed() {
            break;
        }
        if signal.is_none() {
            signal = channel.signal();
        }
        if holds
            .settle(&mut channel, &signal, &mut shutdown, &mut rbuf)
            .await
        {
            continue;
        }
        let deadline = channel.next_deadline();
        tokio::select! {
            msg = ws.recv_text() => {
                let text = match msg {
                    Incoming::Text(t) => t,
                    Incoming::Ignore => continue,
                    Incoming::Closed => { ok = false; break }
                };
                match sockjs::parse_messages(text.as_bytes(), true) {
                    Ok(msgs) => {
                        for m in msgs {
                            rbuf.extend_from_slice(m.as_bytes());
                        }
                        decode_all(&mut channel, &mut rbuf);
                        if rbuf.len() > cap {
                            ok = false;
                            break;
                        }
                    }
                    Err(sockjs::PayloadError::Empty) => {}
                    Err(sockjs::PayloadError::BrokenJson) => {
                        debug!("broken JSON on a SockJS websocket; closing");
                        ok = false;
                        break;
                    }
                }
            }
            _ = beat.tick() => {
                ok = ws.send_text(sockjs::HEARTBEAT.into()).await;
            }
            _ = wait_signal(&signal) => channel.handle_wake(now()),
            _ = wait_deadline(deadline) => channel.handle_timeout(now()),
            _ = shutdown.changed() => channel.shutdown(),
        }
    }
    if ok {
        let chunks = encode_items(&mut channel);
        if !chunks.is_empty() {
            let _ = ws.send_text(sockjs_array(chunks)).await;
        }
        let _ = ws
            .send_text(sockjs::close(NORMAL_CLOSURE.0, NORMAL_CLOSURE.1))
            .await;
        ws.close().await;
    }
    channel.finish(now());
    metrics.dec(&metrics.connections);
}

/// STOMP carried by a SockJS session over HTTP transports. Ends when the
/// STOMP connection closes or the session is forgotten (its inbound queue
/// closes).
pub async fn sockjs_stomp_session(
    entry: Arc<SessionEntry>,
    mut inbound: mpsc::Receiver<String>,
    peer: SocketAddr,
    shared: StompShared,
    _permit: OwnedSemaphorePermit,
) {
    let metrics = shared.broker.metrics();
    let mut channel = shared.open_channel(peer);
    let cap = max_frame_bytes(&shared.channel);
    let mut shutdown = shared.shutdown.clone();
    let mut rbuf = BytesMut::new();
    let mut signal = None;
    let mut holds = Holds::new(&shared.broker);
    loop {
        let chunks = encode_items(&mut channel);
        if !chunks.is_empty() && !entry.send_all(chunks) {
            debug!("SockJS session queue full; closing the STOMP connection");
            break;
        }
        if channel.is_closed() {
            break;
        }
        if signal.is_none() {
            signal = channel.signal();
        }
        if holds
            .settle(&mut channel, &signal, &mut shutdown, &mut rbuf)
            .await
        {
            continue;
        }
        let deadline = channel.next_deadline();
        tokio::select! {
            msg = inbound.recv() => {
                let Some(m) = msg else { break };
                rbuf.extend_from_slice(m.as_bytes());
                decode_all(&mut channel, &mut rbuf);
                if rbuf.len() > cap {
                    break;
                }
            }
            _ = wait_signal(&signal) => channel.handle_wake(now()),
            _ = wait_deadline(deadline) => channel.handle_timeout(now()),
            _ = shutdown.changed() => channel.shutdown(),
        }
    }
    let chunks = encode_items(&mut channel);
    if !chunks.is_empty() {
        entry.send_all(chunks);
    }
    entry.close(NORMAL_CLOSURE.0, NORMAL_CLOSURE.1);
    channel.finish(now());
    metrics.dec(&metrics.connections);
}
