//! The datagram driver: one reader task per UDP socket, a bounded peer
//! table, and one task per peer with state, for every protocol channel
//! that implements the core's [`DatagramConnection`] (MQTT-SN, CoAP,
//! LwM2M).
//!
//! What is protocol-specific is a [`Demux`]: it tells the driver which
//! peer a datagram belongs to (an address; for MQTT-SN behind a forwarder,
//! the address and the Wireless Node Id) and what it becomes, answers
//! what needs no peer state (MQTT-SN SEARCHGW, QoS −1), says whether an
//! unknown peer may start one, and opens its channel. Everything else is
//! here, once:
//! - the table holds at most `max_peers` entries; when full, the peer
//!   silent longest is evicted if the protocol allows it
//!   ([`Demux::evict_after`]), else the newcomer is refused (with the
//!   protocol's answer, [`Demux::refusal`]) and counted;
//! - every peer with state holds a place in the gateway-wide connection
//!   count ([`crate::listen`]) for as long as its task lives;
//! - each peer has a bounded inbox; a datagram to a full one is dropped
//!   and counted (UDP semantics);
//! - a peer task waits on its inbox, its session's wake-up signal, one
//!   deadline (the channel's and the [`Watchdog`]'s), a store commit it
//!   holds acknowledgements for, an authentication answer, room in the
//!   mailboxes its messages filled (at most `max_pause`), and shutdown;
//! - a peer task ends when its channel is closed, or idle with an empty
//!   inbox (checked under the table lock the reader enqueues under).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::task::JoinSet;
use tracing::{debug, info, Instrument};
use tributary_core::connection::{Connection, DatagramConnection, ReadHold, Transmit, Watchdog};
use tributary_core::session::Session;

use super::{now, sleep_until, wait_for_room, DriveContext};
use crate::listen::{ConnectionGuard, Gate};

/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65535;

/// Inputs a peer task handles before writing its answers.
const BATCH: usize = 32;

/// The input a peer's channel takes.
pub type InputOf<D> = <<D as Demux>::Conn as DatagramConnection>::Input;

/// What a datagram is, by the protocol's reading.
pub enum Classified<K, I> {
    /// Input for the peer `K`.
    Peer(K, I),
    /// Answer the sender with this; no peer state involved.
    Reply(Bytes),
    /// Nothing to do (the demux counted it).
    Drop,
}

/// What a datagram for a peer without state gets.
pub enum Unknown {
    /// Start the peer (its channel gets the input).
    Open,
    /// Answer with this, start nothing.
    Reply(Bytes),
    /// Nothing (counted by the demux).
    Drop,
}

/// The protocol-specific part of a datagram listener.
pub trait Demux: Send + 'static {
    /// Who a peer is.
    type Key: Hash + Eq + Clone + Send + Sync + std::fmt::Debug + 'static;
    /// The channel a peer runs.
    type Conn: DatagramConnection + 'static;

    /// `ClientInfo::protocol` of the channels, for logs.
    fn protocol(&self) -> &'static str;

    /// Read a datagram from `from`.
    fn classify(
        &mut self,
        datagram: Bytes,
        from: SocketAddr,
        now: Instant,
    ) -> Classified<Self::Key, InputOf<Self>>;

    /// A peer without state sent `input`.
    fn unknown(&mut self, _key: &Self::Key, _input: &InputOf<Self>, _now: Instant) -> Unknown {
        Unknown::Open
    }

    /// The channel for a new peer.
    fn open(&mut self, key: &Self::Key, now: Instant) -> Self::Conn;

    /// Where a peer's datagrams go.
    fn address(key: &Self::Key) -> SocketAddr;

    /// What a peer refused for want of room is told (MQTT-SN: CONNACK
    /// "congestion"); nothing by default.
    fn refusal(&self, _key: &Self::Key, _input: &InputOf<Self>) -> Option<Bytes> {
        None
    }

    /// When the table is full, a peer silent at least this long may be
    /// evicted to make room; `None`: newcomers are refused instead.
    fn evict_after(&self) -> Option<Duration> {
        None
    }

    /// When [`Demux::tick`] is next due (MQTT-SN ADVERTISE).
    fn next_tick(&self) -> Option<Instant> {
        None
    }

    /// Gateway-level datagrams due now, and where they go.
    fn tick(&mut self, _now: Instant) -> Option<(Bytes, SocketAddr)> {
        None
    }
}

/// Counters of one datagram listener.
#[derive(Debug, Default)]
pub struct DatagramStats {
    /// Peers with state (a task) now.
    pub peers: AtomicU64,
    /// Datagrams received.
    pub datagrams_received: AtomicU64,
    /// Datagrams dropped because the peer's inbox was full.
    pub datagrams_dropped_busy: AtomicU64,
    /// Peers evicted from a full table.
    pub peers_evicted: AtomicU64,
    /// Peers refused: the table or the connection limit was full.
    pub peers_refused: AtomicU64,
}

impl DatagramStats {
    /// Every counter as (name, is a gauge, value).
    pub fn snapshot(&self) -> Vec<(&'static str, bool, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("peers", true, g(&self.peers)),
            ("datagrams_received", false, g(&self.datagrams_received)),
            (
                "datagrams_dropped_busy",
                false,
                g(&self.datagrams_dropped_busy),
            ),
            ("peers_evicted", false, g(&self.peers_evicted)),
            ("peers_refused", false, g(&self.peers_refused)),
        ]
    }

    fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A peer's inbox entry: (datagram bytes, input).
type Inbound<I> = (usize, I);

struct Entry<I> {
    inbox: mpsc::Sender<Inbound<I>>,
    last_seen: Instant,
    /// Which task the entry is for (a key may get a new task after its
    /// old one ended).
    id: u64,
}

/// The peer table: shared by the reader and the peer tasks (and by a
/// protocol that hands one peer's work to another, LwM2M).
pub struct Peers<K, I> {
    table: Mutex<HashMap<K, Entry<I>>>,
    next_id: AtomicU64,
}

impl<K: Hash + Eq + Clone, I> Peers<K, I> {
    /// An empty table.
    pub fn new() -> Arc<Peers<K, I>> {
        Arc::new(Peers {
            table: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        })
    }

    /// Hand `input` to the peer `key`; false when it has no task or its
    /// inbox is full.
    pub fn send(&self, key: &K, input: I) -> bool {
        self.table
            .lock()
            .get(key)
            .is_some_and(|e| e.inbox.try_send((0, input)).is_ok())
    }

    /// Peers with state now.
    pub fn len(&self) -> usize {
        self.table.lock().len()
    }

    /// True when no peer has state.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn remove_if(&self, key: &K, id: u64) {
        let mut table = self.table.lock();
        if table.get(key).is_some_and(|e| e.id == id) {
            table.remove(key);
        }
    }
}

/// What a datagram listener is configured with.
pub struct DatagramListener<D: Demux> {
    /// The protocol's part.
    pub demux: D,
    /// The peer table (create it first when the protocol needs a handle).
    pub peers: Arc<Peers<D::Key, InputOf<D>>>,
    /// Shared by every peer.
    pub ctx: Arc<DriveContext>,
    /// Admission into the connection count.
    pub gate: Arc<Gate>,
    /// Most peers with state.
    pub max_peers: usize,
    /// Inputs queued per peer.
    pub inbox_len: usize,
    /// Counters.
    pub stats: Arc<DatagramStats>,
    /// Name for logs (`udp:coap`).
    pub label: &'static str,
}

/// Serve `socket` until shutdown, then wait for the peer tasks.
pub async fn serve<D: Demux>(socket: UdpSocket, mut l: DatagramListener<D>) {
    let socket = Arc::new(socket);
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut shutdown = l.ctx.shutdown.clone();
    loop {
        let tick_at = l.demux.next_tick();
        tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    let datagram = Bytes::copy_from_slice(&buf[..n]);
                    dispatch(&mut l, &socket, &mut tasks, datagram, from).await;
                }
                // ICMP port unreachable surfaces here on some systems: not fatal.
                Err(e) => debug!(listener = l.label, error = %e, "receive failed"),
            },
            _ = sleep_until(tick_at) => {
                if let Some((datagram, to)) = l.demux.tick(now()) {
                    send(&socket, &datagram, to).await;
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    // Peer tasks see the same shutdown and say goodbye themselves.
    while tasks.join_next().await.is_some() {}
    info!(listener = l.label, "listener stopped");
}

async fn send(socket: &UdpSocket, datagram: &[u8], to: SocketAddr) {
    if let Err(e) = socket.send_to(datagram, to).await {
        debug!(error = %e, peer = %to, "send failed");
    }
}

async fn dispatch<D: Demux>(
    l: &mut DatagramListener<D>,
    socket: &Arc<UdpSocket>,
    tasks: &mut JoinSet<()>,
    datagram: Bytes,
    from: SocketAddr,
) {
    DatagramStats::inc(&l.stats.datagrams_received);
    let at = now();
    let len = datagram.len();
    let metrics = l.ctx.broker.metrics();
    metrics.add(&metrics.bytes_received, len as u64);
    let (key, input) = match l.demux.classify(datagram, from, at) {
        Classified::Peer(key, input) => (key, input),
        Classified::Reply(reply) => return send(socket, &reply, from).await,
        Classified::Drop => return,
    };
    let reply = match admit(l, socket, tasks, key, (len, input), at) {
        Ok(()) => return,
        Err(reply) => reply,
    };
    if let Some(reply) = reply {
        send(socket, &reply, from).await;
    }
}

/// Queue `input` for its peer, starting the peer when it has none;
/// `Err` with what to answer when it is refused or answered statelessly.
fn admit<D: Demux>(
    l: &mut DatagramListener<D>,
    socket: &Arc<UdpSocket>,
    tasks: &mut JoinSet<()>,
    key: D::Key,
    input: Inbound<InputOf<D>>,
    at: Instant,
) -> Result<(), Option<Bytes>> {
    let peers = l.peers.clone();
    let mut table = peers.table.lock();
    let input = match table.get_mut(&key) {
        Some(entry) => match entry.inbox.try_send(input) {
            Ok(()) => {
                entry.last_seen = at;
                return Ok(());
            }
            Err(TrySendError::Full(_)) => {
                DatagramStats::inc(&l.stats.datagrams_dropped_busy);
                debug!(listener = l.label, peer = ?key, "peer busy; datagram dropped");
                return Ok(());
            }
            // The peer's task has ended: start afresh.
            Err(TrySendError::Closed(input)) => {
                table.remove(&key);
                input
            }
        },
        None => input,
    };
    match l.demux.unknown(&key, &input.1, at) {
        Unknown::Open => {}
        Unknown::Reply(reply) => return Err(Some(reply)),
        Unknown::Drop => return Ok(()),
    }
    if table.len() >= l.max_peers {
        let victim = l.demux.evict_after().and_then(|after| {
            table
                .iter()
                .filter(|(_, e)| at.saturating_duration_since(e.last_seen) >= after)
                .min_by_key(|(_, e)| e.last_seen)
                .map(|(k, _)| k.clone())
        });
        match victim {
            Some(victim) => {
                // Dropping its inbox's sender ends the victim's task.
                table.remove(&victim);
                DatagramStats::inc(&l.stats.peers_evicted);
                debug!(listener = l.label, peer = ?victim, "idle peer evicted to make room");
            }
            None => {
                DatagramStats::inc(&l.stats.peers_refused);
                debug!(listener = l.label, peer = ?key, "peer table full; refused");
                return Err(l.demux.refusal(&key, &input.1));
            }
        }
    }
    let Some(guard) = l.gate.admit() else {
        DatagramStats::inc(&l.stats.peers_refused);
        debug!(listener = l.label, peer = ?key, "connection limit reached; refused");
        return Err(l.demux.refusal(&key, &input.1));
    };
    let (tx, rx) = mpsc::channel(l.inbox_len.max(1));
    // A fresh channel has room for one.
    let _ = tx.try_send(input);
    let id = peers.next_id.fetch_add(1, Ordering::Relaxed);
    table.insert(
        key.clone(),
        Entry {
            inbox: tx,
            last_seen: at,
            id,
        },
    );
    drop(table);
    let conn = l.demux.open(&key, at);
    let addr = D::address(&key);
    let span =
        tracing::debug_span!("conn", proto = l.demux.protocol(), transport = "udp", peer = %addr);
    let peer = Peer::<D> {
        conn,
        key,
        id,
        addr,
        socket: socket.clone(),
        peers: l.peers.clone(),
        ctx: l.ctx.clone(),
        stats: l.stats.clone(),
        _guard: guard,
    };
    tasks.spawn(peer.run(rx).instrument(span));
    Ok(())
}

/// One peer with state, owned by its task.
struct Peer<D: Demux> {
    conn: D::Conn,
    key: D::Key,
    id: u64,
    addr: SocketAddr,
    socket: Arc<UdpSocket>,
    peers: Arc<Peers<D::Key, InputOf<D>>>,
    ctx: Arc<DriveContext>,
    stats: Arc<DatagramStats>,
    _guard: ConnectionGuard,
}

impl<D: Demux> Peer<D> {
    async fn run(mut self, mut rx: mpsc::Receiver<Inbound<InputOf<D>>>) {
        self.stats.peers.fetch_add(1, Ordering::Relaxed);
        let mut watchdog = Watchdog::new(now());
        let mut out = Transmit::default();
        let mut auth = None;
        let mut paused: Option<(Vec<Arc<Session>>, Instant)> = None;
        let mut shutdown = self.ctx.shutdown.clone();
        let broker = self.ctx.broker.clone();
        loop {
            self.flush(&mut out).await;
            if self.conn.is_closed() {
                break;
            }
            if auth.is_none() {
                auth = self.conn.take_auth();
            }
            let congested = self.conn.take_congestion();
            if !congested.is_empty() {
                paused
                    .get_or_insert_with(|| (Vec::new(), now()))
                    .0
                    .extend(congested);
            }
            if self.conn.is_idle() && auth.is_none() {
                // Under the lock the reader enqueues under: nothing can
                // slip into the inbox between the look and the removal.
                let mut table = self.peers.table.lock();
                if rx.is_empty() {
                    if table.get(&self.key).is_some_and(|e| e.id == self.id) {
                        table.remove(&self.key);
                    }
                    break;
                }
            }
            let signal = self.conn.signal();
            let pause_end = paused
                .as_ref()
                .map(|(_, since)| *since + broker.config().queue.max_pause);
            let deadline = [
                self.conn.next_deadline(),
                watchdog.deadline(&self.conn),
                pause_end,
            ]
            .into_iter()
            .flatten()
            .min();
            let commit = self.conn.commit_wait();
            let reading = paused.is_none() && self.conn.read_hold() == ReadHold::Open;
            tokio::select! {
                outcome = async {
                    match auth.as_mut() {
                        Some(decision) => decision.await,
                        None => std::future::pending().await,
                    }
                } => {
                    auth = None;
                    self.conn.handle_auth(outcome, now());
                }
                input = rx.recv(), if reading => match input {
                    Some(input) => {
                        self.input(&mut watchdog, input);
                        for _ in 1..BATCH {
                            if self.conn.read_hold() != ReadHold::Open {
                                break;
                            }
                            match rx.try_recv() {
                                Ok(input) => self.input(&mut watchdog, input),
                                Err(_) => break,
                            }
                        }
                    }
                    None => {
                        // Evicted from the table to make room.
                        self.conn.evict(now());
                        break;
                    }
                },
                _ = async {
                    match &signal {
                        Some(s) => s.notified().await,
                        None => std::future::pending().await,
                    }
                } => self.conn.handle_wake(now()),
                _ = async {
                    match &commit {
                        Some(w) => { w.commits.wait(w.ticket).await; }
                        None => std::future::pending().await,
                    }
                } => self.conn.handle_commit(now()),
                _ = async {
                    match &paused {
                        Some((sessions, _)) => wait_for_room(&broker, sessions).await,
                        None => std::future::pending().await,
                    }
                } => paused = None,
                _ = sleep_until(deadline) => {
                    let at = now();
                    self.conn.handle_timeout(at);
                    if !reading {
                        // We are not reading: its datagrams wait in the inbox.
                        watchdog.input(0, true, at);
                    }
                    if pause_end.is_some_and(|end| at >= end) {
                        debug!(client_id = self.conn.client_id().unwrap_or(""), "subscriber mailbox still full; resuming reads");
                        paused = None;
                    }
                    self.check(&mut watchdog, at);
                }
                _ = shutdown.changed() => {
                    self.conn.shutdown(now());
                    break;
                }
            }
        }
        self.flush(&mut out).await;
        self.peers.remove_if(&self.key, self.id);
        self.conn.finish(now());
        self.flush(&mut out).await;
        self.stats.peers.fetch_sub(1, Ordering::Relaxed);
    }

    fn input(&mut self, watchdog: &mut Watchdog, (len, input): Inbound<InputOf<D>>) {
        let at = now();
        let activity = self.conn.handle_datagram(input, at);
        watchdog.input(len, activity, at);
        self.check(watchdog, at);
    }

    /// Trip what limit is due. A datagram peer outlives a tripped limit
    /// when its protocol says so (a CoAP peer whose connection expired may
    /// open another): its next connection gets a fresh watchdog.
    fn check(&mut self, watchdog: &mut Watchdog, at: Instant) {
        if watchdog
            .check(&mut self.conn, self.ctx.broker.metrics(), at)
            .is_some()
            && !self.conn.is_closed()
        {
            *watchdog = Watchdog::new(at);
        }
    }

    async fn flush(&mut self, out: &mut Transmit) {
        if !self.conn.has_output() {
            return;
        }
        self.conn.poll_transmit(now(), out);
        let metrics = self.ctx.broker.metrics();
        metrics.add(&metrics.bytes_sent, out.len() as u64);
        while let Some(datagram) = out.pop_unit() {
            send(&self.socket, &datagram, self.addr).await;
        }
    }
}
