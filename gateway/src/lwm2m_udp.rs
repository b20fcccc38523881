//! LwM2M over UDP (5783): the datagram driver (ADR 0016, "lwm2m-gateway").
//!
//! The same shape as the CoAP driver (ADR 0007): one reader task owns the
//! socket's receive side and a bounded peer table (address → bounded
//! inbox); each peer with state has a task owning its sans-IO
//! [`Device`], waiting on its next datagram, its session's wake-up signal
//! (a command published to `dn/#` goes out at once), its deadline
//! (retransmissions, registration lifetime) and shutdown. A peer task ends
//! when its device is idle (not registered, nothing remembered) and its
//! inbox is empty, both checked under the table lock the reader enqueues
//! under.
//!
//! Some clients send Update and De-register from a fresh socket (a new
//! source port) while still listening on the one they registered from;
//! a [`PeerDirectory`] maps endpoint names to the peer holding the
//! registration, and such a request is handed to that peer's task.
//!
//! Bounds: `max_peers` table entries and `peer_queue_len` datagrams per
//! inbox; datagrams beyond either are dropped and counted in
//! [`Lwm2mStats`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn, Instrument};
use tributary_config::Config;
use tributary_core::Broker;
use tributary_lwm2m::{Device, DeviceConfig, Directory, Registry, Remote};

use crate::mqtt_tcp::now;

/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65535;

/// Datagrams a peer task handles before writing its answers.
const BATCH: usize = 32;

/// Counters of the LwM2M driver.
#[derive(Debug, Default)]
pub struct Lwm2mStats {
    /// Peers with state (a task) now.
    pub peers: AtomicU64,
    /// Datagrams dropped: peer table full, or the peer's inbox full.
    pub datagrams_dropped: AtomicU64,
}

/// Everything the LwM2M gateway's tasks share.
#[derive(Clone)]
pub struct Lwm2mContext {
    /// The core.
    pub broker: Arc<Broker>,
    /// Device settings.
    pub device: Arc<DeviceConfig>,
    /// Object definitions.
    pub registry: Arc<Registry>,
    /// Most peers with state at once.
    pub max_peers: usize,
    /// Datagrams queued per peer.
    pub peer_queue_len: usize,
    /// Counters.
    pub stats: Arc<Lwm2mStats>,
    /// Flips to true on shutdown.
    pub shutdown: watch::Receiver<bool>,
}

/// The object registry from `lwm2m.xml_dir`: files that fail are logged
/// and skipped; a missing directory leaves the registry empty (values are
/// then typed by guessing) with a warning.
pub fn load_registry(dir: &str) -> Registry {
    match Registry::load_dir(std::path::Path::new(dir)) {
        Ok((r, errors)) => {
            for e in errors {
                warn!(file = %e.file, reason = %e.reason, "LwM2M object definition skipped");
            }
            info!(xml_dir = %dir, objects = r.len(), "LwM2M object definitions loaded");
            r
        }
        Err(e) => {
            warn!(xml_dir = %dir, error = %e, "LwM2M object definitions not loaded; values will be typed by guessing");
            Registry::new()
        }
    }
}

/// Bind and serve `[lwm2m]` when enabled; returns the bound address.
pub async fn start(
    config: &Config,
    broker: &Arc<Broker>,
    shutdown: &watch::Receiver<bool>,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<Option<SocketAddr>> {
    let c = &config.lwm2m;
    if !c.enabled {
        return Ok(None);
    }
    let socket = UdpSocket::bind(c.bind)
        .await
        .with_context(|| format!("lwm2m.bind: cannot bind {}", c.bind))?;
    let addr = socket.local_addr()?;
    info!(listener = "udp:lwm2m", %addr, "LwM2M gateway started");
    let broker = broker.clone();
    let device = crate::wiring::lwm2m_device(config);
    let (max_peers, peer_queue_len) = (c.max_peers as usize, c.peer_queue_len as usize);
    let shutdown = shutdown.clone();
    let dir = c.xml_dir.clone();
    // The object files are read off the start-up path (start returns once
    // every listener is bound); datagrams wait in the socket meanwhile.
    tasks.spawn(async move {
        let registry = tokio::task::spawn_blocking(move || load_registry(&dir))
            .await
            .unwrap_or_default();
        let ctx = Lwm2mContext {
            broker,
            device,
            registry: Arc::new(registry),
            max_peers,
            peer_queue_len,
            stats: Arc::new(Lwm2mStats::default()),
            shutdown,
        };
        serve(socket, ctx).await;
    });
    Ok(Some(addr))
}

/// What a peer task receives.
enum Input {
    /// A datagram from the peer.
    Datagram(Bytes),
    /// An Update/De-register for its registration that came from another address.
    Remote(Remote),
}

type PeerTable = Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Input>>>>;

/// Endpoint name → the peer holding its registration.
pub struct PeerDirectory {
    peers: PeerTable,
    owners: Mutex<HashMap<String, SocketAddr>>,
}

impl Directory for PeerDirectory {
    fn claim(&self, ep: &str, owner: SocketAddr) {
        self.owners.lock().insert(ep.to_string(), owner);
    }

    fn release(&self, ep: &str, owner: SocketAddr) {
        let mut owners = self.owners.lock();
        if owners.get(ep) == Some(&owner) {
            owners.remove(ep);
        }
    }

    fn forward(&self, ep: &str, op: Remote) -> bool {
        let Some(owner) = self.owners.lock().get(ep).copied() else {
            return false;
        };
        let peers = self.peers.lock();
        peers
            .get(&owner)
            .is_some_and(|tx| tx.try_send(Input::Remote(op)).is_ok())
    }
}

/// Serve LwM2M on `socket` until shutdown, then wait for the peer tasks.
pub async fn serve(socket: UdpSocket, ctx: Lwm2mContext) {
    let socket = Arc::new(socket);
    let peers: PeerTable = Arc::new(Mutex::new(HashMap::new()));
    let directory = Arc::new(PeerDirectory {
        peers: peers.clone(),
        owners: Mutex::new(HashMap::new()),
    });
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut shutdown = ctx.shutdown.clone();
    loop {
        tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, peer)) => {
                    let data = Bytes::copy_from_slice(&buf[..n]);
                    dispatch(data, peer, &socket, &peers, &directory, &ctx, &mut tasks);
                }
                Err(e) => debug!(error = %e, "LwM2M receive failed"),
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    while tasks.join_next().await.is_some() {}
    info!(listener = "udp:lwm2m", "LwM2M gateway stopped");
}

fn dispatch(
    data: Bytes,
    peer: SocketAddr,
    socket: &Arc<UdpSocket>,
    peers: &PeerTable,
    directory: &Arc<PeerDirectory>,
    ctx: &Lwm2mContext,
    tasks: &mut JoinSet<()>,
) {
    let mut table = peers.lock();
    let data = match table.get(&peer) {
        Some(tx) => match tx.try_send(Input::Datagram(data)) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => {
                ctx.stats.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
                debug!(%peer, "peer busy; datagram dropped");
                return;
            }
            Err(TrySendError::Closed(data)) => data,
        },
        None => Input::Datagram(data),
    };
    if table.len() >= ctx.max_peers && !table.contains_key(&peer) {
        ctx.stats.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
        debug!(%peer, "LwM2M peer limit reached; datagram dropped");
        return;
    }
    let (tx, rx) = mpsc::channel(ctx.peer_queue_len.max(1));
    // A fresh channel has room for one.
    let _ = tx.try_send(data);
    table.insert(peer, tx);
    drop(table);
    ctx.stats.peers.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("conn", proto = "lwm2m", transport = "udp", %peer);
    tasks.spawn(
        peer_task(
            socket.clone(),
            peer,
            rx,
            ctx.clone(),
            peers.clone(),
            directory.clone(),
            rand::random(),
        )
        .instrument(span),
    );
}

async fn peer_task(
    socket: Arc<UdpSocket>,
    peer: SocketAddr,
    mut rx: mpsc::Receiver<Input>,
    ctx: Lwm2mContext,
    peers: PeerTable,
    directory: Arc<PeerDirectory>,
    seed: u64,
) {
    let mut device = Device::new(
        ctx.broker.clone(),
        ctx.device.clone(),
        ctx.registry.clone(),
        directory,
        peer,
        seed,
        now(),
    );
    let mut shutdown = ctx.shutdown.clone();
    loop {
        flush(&socket, &mut device, peer).await;
        if device.is_idle() {
            let mut table = peers.lock();
            if rx.is_empty() {
                table.remove(&peer);
                break;
            }
        }
        let signal = device.signal();
        let deadline = device.next_deadline();
        tokio::select! {
            d = rx.recv() => match d {
                Some(d) => {
                    handle(&mut device, d);
                    for _ in 1..BATCH {
                        match rx.try_recv() {
                            Ok(d) => handle(&mut device, d),
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
            } => device.handle_wake(now()),
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending().await,
                }
            } => device.handle_timeout(now()),
            _ = shutdown.changed() => {
                device.shutdown(now());
                flush(&socket, &mut device, peer).await;
                peers.lock().remove(&peer);
                break;
            }
        }
    }
    device.finish(now());
    ctx.stats.peers.fetch_sub(1, Ordering::Relaxed);
}

fn handle(device: &mut Device, input: Input) {
    match input {
        Input::Datagram(d) => device.handle_datagram(&d, now()),
        Input::Remote(op) => device.handle_remote(op, now()),
    }
}

async fn flush(socket: &UdpSocket, device: &mut Device, peer: SocketAddr) {
    if !device.has_output() {
        return;
    }
    for datagram in device.take_output() {
        if let Err(e) = socket.send_to(&datagram, peer).await {
            debug!(error = %e, %peer, "LwM2M send failed");
        }
    }
}
