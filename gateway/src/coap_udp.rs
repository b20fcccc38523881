//! CoAP over UDP: the datagram driver (ADR 0007, "coap-udp-driver").
//!
//! One reader task owns the socket's receive side and the peer table
//! (address → bounded inbox). Each peer with state has its own task owning
//! its sans-IO [`Channel`]; it waits, like the TCP driver, on the next
//! datagram, the session's wake-up signal (notifications go out as soon as
//! the core queues a delivery), the channel's deadline (retransmissions,
//! heartbeat, deduplication expiry) and shutdown. Every task sends through
//! the shared socket (`send_to` takes `&self`).
//!
//! A peer task ends when its channel is idle (no session, no exchange
//! remembered, no transfer) and its inbox is empty; both are checked under
//! the table lock, the same lock the reader holds to enqueue, so no
//! datagram is lost to that race.
//!
//! Bounds: `max_peers` table entries (datagrams from further peers are
//! dropped), `peer_queue_len` datagrams per inbox (a datagram arriving to
//! a full inbox is dropped: UDP semantics), both counted in [`CoapStats`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, Instrument};
use tributary_coap::{Channel, ChannelConfig};
use tributary_core::Broker;

use crate::mqtt_tcp::now;

/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65535;

/// Datagrams a peer task handles before writing its answers.
const BATCH: usize = 32;

/// Counters of the CoAP driver.
#[derive(Debug, Default)]
pub struct CoapStats {
    /// Peers with state (a task) now.
    pub peers: AtomicU64,
    /// Datagrams dropped: peer table full, or the peer's inbox full.
    pub datagrams_dropped: AtomicU64,
}

impl CoapStats {
    /// Every counter as (name, is a gauge, value).
    pub fn snapshot(&self) -> Vec<(&'static str, bool, u64)> {
        vec![
            ("peers", true, self.peers.load(Ordering::Relaxed)),
            (
                "datagrams_dropped",
                false,
                self.datagrams_dropped.load(Ordering::Relaxed),
            ),
        ]
    }
}

/// Everything the CoAP gateway's tasks share.
#[derive(Clone)]
pub struct CoapContext {
    /// The core.
    pub broker: Arc<Broker>,
    /// Channel settings.
    pub channel: Arc<ChannelConfig>,
    /// Most peers with state at once.
    pub max_peers: usize,
    /// Datagrams queued per peer.
    pub peer_queue_len: usize,
    /// Counters.
    pub stats: Arc<CoapStats>,
    /// Flips to true on shutdown.
    pub shutdown: watch::Receiver<bool>,
}

type PeerTable = Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Bytes>>>>;

/// Serve CoAP on `socket` until shutdown, then wait for the peer tasks
/// (they end their observations and close their sessions).
pub async fn serve(socket: UdpSocket, ctx: CoapContext) {
    let socket = Arc::new(socket);
    let peers: PeerTable = Arc::new(Mutex::new(HashMap::new()));
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut shutdown = ctx.shutdown.clone();
    loop {
        tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, peer)) => {
                    let data = Bytes::copy_from_slice(&buf[..n]);
                    dispatch(data, peer, &socket, &peers, &ctx, &mut tasks);
                }
                // ICMP port unreachable from an earlier send, and the like.
                Err(e) => debug!(error = %e, "CoAP receive failed"),
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    while tasks.join_next().await.is_some() {}
    info!(listener = "udp:coap", "CoAP gateway stopped");
}

fn dispatch(
    data: Bytes,
    peer: SocketAddr,
    socket: &Arc<UdpSocket>,
    peers: &PeerTable,
    ctx: &CoapContext,
    tasks: &mut JoinSet<()>,
) {
    let mut table = peers.lock();
    let data = match table.get(&peer) {
        Some(tx) => match tx.try_send(data) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => {
                ctx.stats.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
                debug!(%peer, "peer busy; datagram dropped");
                return;
            }
            // The task ended without removing itself (it panicked): start afresh.
            Err(TrySendError::Closed(data)) => data,
        },
        None => data,
    };
    if table.len() >= ctx.max_peers && !table.contains_key(&peer) {
        ctx.stats.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
        debug!(%peer, "CoAP peer limit reached; datagram dropped");
        return;
    }
    let (tx, rx) = mpsc::channel(ctx.peer_queue_len.max(1));
    // A fresh channel has room for one.
    let _ = tx.try_send(data);
    table.insert(peer, tx);
    drop(table);
    ctx.stats.peers.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("conn", proto = "coap", transport = "udp", %peer);
    tasks.spawn(
        peer_task(
            socket.clone(),
            peer,
            rx,
            ctx.clone(),
            peers.clone(),
            rand::random(),
        )
        .instrument(span),
    );
}

async fn peer_task(
    socket: Arc<UdpSocket>,
    peer: SocketAddr,
    mut rx: mpsc::Receiver<Bytes>,
    ctx: CoapContext,
    peers: PeerTable,
    seed: u64,
) {
    let mut channel = Channel::new(ctx.broker.clone(), ctx.channel.clone(), peer, seed);
    let mut shutdown = ctx.shutdown.clone();
    // A request waiting for an authentication backend (ADR 0011); the
    // channel holds this peer's later datagrams until it answers.
    let mut pending_auth = None;
    loop {
        flush(&socket, &mut channel, peer).await;
        if pending_auth.is_none() {
            pending_auth = channel.take_auth_future();
        }
        if channel.is_idle() {
            let mut table = peers.lock();
            if rx.is_empty() {
                table.remove(&peer);
                break;
            }
        }
        let signal = channel.signal();
        let deadline = channel.next_deadline();
        tokio::select! {
            outcome = async {
                match pending_auth.as_mut() {
                    Some(decision) => decision.await,
                    None => std::future::pending().await,
                }
            } => {
                pending_auth = None;
                channel.handle_auth_result(outcome, now());
            }
            d = rx.recv() => match d {
                Some(d) => {
                    channel.handle_datagram(&d, now());
                    for _ in 1..BATCH {
                        match rx.try_recv() {
                            Ok(d) => channel.handle_datagram(&d, now()),
                            Err(_) => break,
                        }
                    }
                }
                None => break,
            },
            _ = async {
                match signal {
                    Some(s) => s.notified().await,
                    None => std::future::pending().await,
                }
            } => channel.handle_wake(now()),
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending().await,
                }
            } => channel.handle_timeout(now()),
            _ = shutdown.changed() => {
                channel.shutdown(now());
                flush(&socket, &mut channel, peer).await;
                peers.lock().remove(&peer);
                break;
            }
        }
    }
    channel.finish(now());
    ctx.stats.peers.fetch_sub(1, Ordering::Relaxed);
}

async fn flush(socket: &UdpSocket, channel: &mut Channel, peer: SocketAddr) {
    if !channel.has_output() {
        return;
    }
    for datagram in channel.take_output() {
        if let Err(e) = socket.send_to(&datagram, peer).await {
            debug!(error = %e, %peer, "CoAP send failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tributary_coap::codec::{decode, encode};
    use tributary_coap::msg::opt;
    use tributary_coap::{Code, Message, MessageType, Token};
    use tributary_core::{BrokerConfig, QoS};

    use super::*;

    async fn start(
        max_peers: usize,
    ) -> (SocketAddr, Arc<Broker>, watch::Sender<bool>, Arc<CoapStats>) {
        let broker = Arc::new(Broker::new(BrokerConfig::default()));
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        let (tx, rx) = watch::channel(false);
        let stats = Arc::new(CoapStats::default());
        let ctx = CoapContext {
            broker: broker.clone(),
            channel: Arc::new(ChannelConfig::default()),
            max_peers,
            peer_queue_len: 8,
            stats: stats.clone(),
            shutdown: rx,
        };
        tokio::spawn(serve(socket, ctx));
        (addr, broker, tx, stats)
    }

    fn request(mtype: MessageType, code: Code, path: &str, mid: u16, token: &[u8]) -> Message {
        let mut m = Message::new(mtype, code, mid, Token::new(token).expect("token"));
        m.set_path(path);
        m
    }

    async fn exchange(client: &UdpSocket, m: &Message) -> Message {
        client
            .send(&encode(m).expect("encode"))
            .await
            .expect("send");
        recv(client).await
    }

    async fn recv(client: &UdpSocket) -> Message {
        let mut buf = vec![0u8; 2048];
        let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
            .await
            .expect("answer in time")
            .expect("recv");
        decode(&buf[..n]).expect("decode")
    }

    #[tokio::test]
    async fn publish_observe_notify_over_udp() {
        let (addr, broker, shutdown, _) = start(10).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        client.connect(addr).await.expect("connect");
        let mut obs = request(MessageType::Con, Code::GET, "ps/t/+", 1, &[7]);
        obs.add_uint_option(opt::OBSERVE, 0);
        let r = exchange(&client, &obs).await;
        assert_eq!((r.mtype, r.code), (MessageType::Ack, Code::CONTENT));
        // Another peer publishes; the wake-up flushes the notification.
        let other = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        other.connect(addr).await.expect("connect");
        let mut publish = request(MessageType::Con, Code::POST, "ps/t/1", 9, &[1]);
        publish.payload = Bytes::from_static(b"hello");
        let r = exchange(&other, &publish).await;
        assert_eq!(r.code, Code::CHANGED);
        let n = recv(&client).await;
        assert_eq!((n.mtype, n.code), (MessageType::Con, Code::CONTENT));
        assert_eq!(&n.payload[..], b"hello");
        client
            .send(&encode(&Message::empty(MessageType::Ack, n.message_id)).expect("enc"))
            .await
            .expect("send");
        // An MQTT-side publish reaches the observer too.
        broker.publish(
            tributary_core::Message::new("t/2", Bytes::from_static(b"m"), QoS::AtMostOnce, false),
            now(),
        );
        let n = recv(&client).await;
        assert_eq!((n.mtype, &n.payload[..]), (MessageType::Non, &b"m"[..]));
        // Shutdown ends the observation with 5.03.
        shutdown.send(true).expect("shutdown");
        let end = recv(&client).await;
        assert_eq!(end.code, Code::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn peer_limit_drops_datagrams_from_new_peers() {
        let (addr, _broker, _shutdown, stats) = start(1).await;
        let a = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        a.connect(addr).await.expect("connect");
        let r = exchange(&a, &request(MessageType::Con, Code::POST, "ps/x", 1, &[])).await;
        assert_eq!(r.code, Code::CHANGED);
        let b = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        b.connect(addr).await.expect("connect");
        b.send(&encode(&request(MessageType::Con, Code::POST, "ps/x", 1, &[])).expect("enc"))
            .await
            .expect("send");
        let mut buf = [0u8; 64];
        assert!(
            tokio::time::timeout(Duration::from_millis(300), b.recv(&mut buf))
                .await
                .is_err(),
            "no answer beyond the peer limit"
        );
        assert_eq!(stats.datagrams_dropped.load(Ordering::Relaxed), 1);
        assert_eq!(stats.peers.load(Ordering::Relaxed), 1);
    }
}
