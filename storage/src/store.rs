//! The durable store: the core's [`Persistence`] on an embedded engine,
//! with one writer thread that group-commits.
//!
//! Connections never wait on the disk where they route: [`DurableStore::submit`]
//! appends the op to the open batch under a short mutex and returns the
//! batch number as a [`CommitTicket`]. The writer thread takes the whole
//! batch (every op from every connection since its last commit), folds it
//! (a message queued and acknowledged within one batch never reaches the
//! disk), writes it as one atomic engine batch, syncs it per the
//! durability mode, and resolves the tickets in [`Commits`]. While it
//! syncs, the next batch fills: the slower the disk, the bigger the batches.
//!
//! ```text
//!  submit ──▶ [open batch N] ──swap──▶ writer: fold → apply(batch, sync) → Commits::finish(N)
//! ```
//!
//! Durability modes (what a resolved ticket promises):
//! - `fsync`: the batch was fdatasync'ed: survives power loss.
//! - `batched`: the batch reached the operating system: survives a crash
//!   of the process (kill -9); a power loss or kernel crash can lose up to
//!   `sync_interval` of acknowledged writes.
//! - `none`: no ticket at all, acknowledgements never wait; a crash of the
//!   process loses what the engine had not yet written out.
//!
//! The open batch is bounded by what connections may have unacknowledged:
//! with `fsync` and `batched` every stored message holds its publisher's
//! acknowledgement (and a connection stops reading past 4096 held ones);
//! with `none`, past 65 536 ops in the open batch submitters get tickets
//! again, so a writer that falls behind paces the publishers.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tracing::{debug, error, info, warn};
use tributary_core::storage::{
    CommitTicket, Commits, LoadError, Persistence, Restored, RestoredMessage, RestoredSession,
    SpilledQueue, StoreOp, StoreStats,
};
use tributary_core::Delivery;

use crate::backend::{Backend, BackendError, BackendReader, KvOp, SyncMode};
use crate::codec::{self, Clock, Key};

/// What an acknowledgement waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync per batch.
    Fsync,
    /// Written to the OS per batch, fsync every `sync_interval`.
    Batched,
    /// Nothing waits.
    None,
}

/// Store settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Durability mode.
    pub durability: Durability,
    /// How long the writer lets a batch fill after its first op (0 = write
    /// as soon as the previous commit is done).
    pub batch_window: Duration,
    /// `batched` mode: how often the journal is fsync'ed.
    pub sync_interval: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durability: Durability::Fsync,
            batch_window: Duration::ZERO,
            sync_interval: Duration::from_secs(1),
        }
    }
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine could not open or read the store.
    #[error(transparent)]
    Engine(#[from] BackendError),
    /// A record does not decode.
    #[error("corrupt store in {path}: record {key}: {reason}")]
    Corrupt {
        /// Data directory.
        path: PathBuf,
        /// The key, escaped.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The store was written by an incompatible version.
    #[error("store in {path} has format {found:?}, expected {expected:?}")]
    Format {
        /// Data directory.
        path: PathBuf,
        /// Format found.
        found: String,
        /// Format this build writes.
        expected: String,
    },
    /// The writer thread could not be started.
    #[error("cannot start the store writer: {0}")]
    Thread(std::io::Error),
}

struct OpenBatch {
    ops: Vec<StoreOp>,
    number: u64,
}

struct Shared {
    open: Mutex<OpenBatch>,
    wake: Condvar,
    commits: Arc<Commits>,
    seq: AtomicU64,
    stop: AtomicBool,
    options: StoreOptions,
    disk_bytes: AtomicU64,
    commits_done: AtomicU64,
    failures: AtomicU64,
    ops_written: AtomicU64,
}

/// The durable store (see the module documentation).
pub struct DurableStore {
    shared: Arc<Shared>,
    /// Reads spilled queues back while the writer writes; dropped at close
    /// (it holds the engine open).
    reader: parking_lot::RwLock<Option<Arc<dyn BackendReader>>>,
    path: PathBuf,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for DurableStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableStore")
            .field("path", &self.path)
            .field("durability", &self.shared.options.durability)
            .finish()
    }
}

impl DurableStore {
    /// Read everything `backend` holds (failing on any record that does not
    /// decode), then start the writer. Returns the store and what to
    /// restore.
    pub fn open(
        mut backend: Box<dyn Backend>,
        options: StoreOptions,
    ) -> Result<(Arc<DurableStore>, Restored), StoreError> {
        let path = backend.path().to_path_buf();
        let clock = Clock::read();
        let (restored, max_seq, orphans) = decode_all(&path, &*backend, clock)?;
        let mut init = orphans;
        init.push(KvOp::Put(
            codec::VERSION_KEY.to_vec(),
            codec::FORMAT.to_vec(),
        ));
        backend.apply(&init, SyncMode::Fsync)?;
        info!(
            path = %path.display(),
            sessions = restored.sessions.len(),
            retained = restored.retained.len(),
            "store opened"
        );
        let shared = Arc::new(Shared {
            open: Mutex::new(OpenBatch {
                ops: Vec::new(),
                number: 1,
            }),
            wake: Condvar::new(),
            commits: Commits::new(),
            seq: AtomicU64::new(max_seq + 1),
            stop: AtomicBool::new(false),
            options,
            disk_bytes: AtomicU64::new(backend.disk_bytes()),
            commits_done: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            ops_written: AtomicU64::new(0),
        });
        let reader = backend.reader();
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("tributary-store".into())
            .spawn(move || write_loop(&writer_shared, backend))
            .map_err(StoreError::Thread)?;
        Ok((
            Arc::new(DurableStore {
                shared,
                reader: parking_lot::RwLock::new(Some(reader)),
                path,
                writer: Mutex::new(Some(writer)),
            }),
            restored,
        ))
    }

    /// Write what is pending, sync, and stop the writer. Later submits are
    /// not written.
    pub fn close(&self) {
        self.reader.write().take();
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        if let Some(handle) = self.writer.lock().take() {
            if handle.join().is_err() {
                error!("store writer panicked");
            }
        }
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DurableStore {
    fn drop(&mut self) {
        self.close();
    }
}

impl Persistence for DurableStore {
    fn enabled(&self) -> bool {
        true
    }

    fn submit(&self, op: StoreOp) -> Option<CommitTicket> {
        let (number, open_len) = {
            let mut open = self.shared.open.lock();
            open.ops.push(op);
            (open.number, open.ops.len())
        };
        let first = open_len == 1;
        if first {
            self.shared.wake.notify_one();
        }
        match self.shared.options.durability {
            // Nothing waits... unless the writer falls this far behind:
            // then acknowledgements wait too, which paces the publishers and
            // bounds the open batch.
            Durability::None if open_len < MAX_UNWAITED_OPS => None,
            _ => Some(CommitTicket(number)),
        }
    }

    fn submit_fenced(&self, op: StoreOp) -> (Option<CommitTicket>, Option<CommitTicket>) {
        let (number, open_len) = {
            let mut open = self.shared.open.lock();
            open.ops.push(op);
            (open.number, open.ops.len())
        };
        if open_len == 1 {
            self.shared.wake.notify_one();
        }
        let ack = match self.shared.options.durability {
            Durability::None if open_len < MAX_UNWAITED_OPS => None,
            _ => Some(CommitTicket(number)),
        };
        (ack, Some(CommitTicket(number)))
    }

    fn load_queue(
        &self,
        client_id: &str,
        from_seq: u64,
        max: usize,
    ) -> Result<Vec<(u64, Delivery)>, LoadError> {
        let prefix = codec::client_prefix(b'M', client_id);
        let from = codec::seq_key(b'M', client_id, from_seq);
        let reader = self
            .reader
            .read()
            .clone()
            .ok_or_else(|| LoadError("the store is closed".into()))?;
        let records = reader
            .range(&prefix, &from, max)
            .map_err(|e| LoadError(e.to_string()))?;
        let clock = Clock::read();
        let mut out = Vec::with_capacity(records.len());
        for (k, v) in records {
            let Ok(codec::Key::Message(_, seq)) = codec::parse_key(&k) else {
                return Err(LoadError(format!("bad key {}", k.escape_ascii())));
            };
            let d = codec::decode_delivery(&v, clock)
                .map_err(|e| LoadError(format!("record {}: {e}", k.escape_ascii())))?;
            out.push((seq, d));
        }
        Ok(out)
    }

    fn next_seq(&self) -> u64 {
        self.shared.seq.fetch_add(1, Ordering::Relaxed)
    }

    fn commits(&self) -> Option<Arc<Commits>> {
        Some(self.shared.commits.clone())
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            disk_bytes: self.shared.disk_bytes.load(Ordering::Relaxed),
            commits: self.shared.commits_done.load(Ordering::Relaxed),
            failures: self.shared.failures.load(Ordering::Relaxed),
            ops: self.shared.ops_written.load(Ordering::Relaxed),
        }
    }
}

/// `durability = "none"`: ops in the open batch past which submitters get
/// a ticket anyway (the bound of the open batch in that mode).
const MAX_UNWAITED_OPS: usize = 65_536;

/// How often the writer refreshes the disk usage figure.
const STATS_EVERY: Duration = Duration::from_secs(1);

fn write_loop(shared: &Shared, mut backend: Box<dyn Backend>) {
    let options = &shared.options;
    let sync_mode = match options.durability {
        Durability::Fsync => SyncMode::Fsync,
        Durability::Batched => SyncMode::Os,
        Durability::None => SyncMode::None,
    };
    let mut last_sync = Instant::now();
    let mut last_stats = Instant::now();
    let mut unsynced = false;
    loop {
        let mut open = shared.open.lock();
        if open.ops.is_empty() && !shared.stop.load(Ordering::Acquire) {
            shared.wake.wait_for(&mut open, Duration::from_millis(200));
        }
        if !open.ops.is_empty() && !options.batch_window.is_zero() {
            drop(open);
            std::thread::sleep(options.batch_window);
            open = shared.open.lock();
        }
        let stopping = shared.stop.load(Ordering::Acquire);
        let ops = std::mem::take(&mut open.ops);
        let number = open.number;
        if !ops.is_empty() {
            open.number += 1;
        }
        drop(open);
        if !ops.is_empty() {
            let count = ops.len() as u64;
            let kv = fold(ops, Clock::read());
            let result = if kv.is_empty() {
                Ok(())
            } else {
                backend.apply(&kv, sync_mode)
            };
            match &result {
                Ok(()) => {
                    shared.commits_done.fetch_add(1, Ordering::Relaxed);
                    shared.ops_written.fetch_add(count, Ordering::Relaxed);
                    unsynced |= sync_mode != SyncMode::Fsync;
                }
                Err(e) => {
                    shared.failures.fetch_add(1, Ordering::Relaxed);
                    error!(error = %e, ops = count, "store write failed; its publishes are refused");
                }
            }
            shared.commits.finish(number, result.is_ok());
        }
        let now = Instant::now();
        if unsynced
            && (stopping
                || (options.durability == Durability::Batched
                    && now.duration_since(last_sync) >= options.sync_interval))
        {
            if let Err(e) = backend.sync() {
                warn!(error = %e, "store sync failed");
            }
            unsynced = false;
            last_sync = now;
        }
        if now.duration_since(last_stats) >= STATS_EVERY {
            shared
                .disk_bytes
                .store(backend.disk_bytes(), Ordering::Relaxed);
            last_stats = now;
        }
        if stopping && shared.open.lock().ops.is_empty() {
            if let Err(e) = backend.sync() {
                warn!(error = %e, "store sync at shutdown failed");
            }
            debug!("store writer stopped");
            return;
        }
    }
}

/// One key's fate within a batch.
struct Slot {
    value: Option<Vec<u8>>,
    /// Created in this batch (a fresh message sequence number): deleting
    /// it again needs no tombstone.
    fresh: bool,
}

/// Fold a batch of ops into engine changes: later ops on a key win, a
/// message put and deleted within the batch vanishes, session deletes
/// become prefix deletes applied first.
pub fn fold(ops: Vec<StoreOp>, clock: Clock) -> Vec<KvOp> {
    let mut slots: BTreeMap<Vec<u8>, Slot> = BTreeMap::new();
    let mut prefixes: Vec<Vec<u8>> = Vec::new();
    let put = |slots: &mut BTreeMap<Vec<u8>, Slot>, k: Vec<u8>, v: Vec<u8>, fresh: bool| {
        let fresh = fresh || slots.get(&k).is_some_and(|s| s.fresh);
        slots.insert(
            k,
            Slot {
                value: Some(v),
                fresh,
            },
        );
    };
    let delete = |slots: &mut BTreeMap<Vec<u8>, Slot>, k: Vec<u8>| {
        if slots.get(&k).is_some_and(|s| s.fresh) {
            slots.remove(&k);
        } else {
            slots.insert(
                k,
                Slot {
                    value: None,
                    fresh: false,
                },
            );
        }
    };
    for op in ops {
        match op {
            StoreOp::SessionPut(rec) => {
                let k = codec::session_key(&rec.client_id);
                put(&mut slots, k, codec::encode_session(&rec, clock), false);
            }
            StoreOp::SessionDelete(client) => {
                delete(&mut slots, codec::session_key(&client));
                for kind in [b'M', b'F', b'Q'] {
                    let p = codec::client_prefix(kind, &client);
                    let doomed: Vec<Vec<u8>> = slots
                        .range(p.clone()..)
                        .take_while(|(k, _)| k.starts_with(&p))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in doomed {
                        slots.remove(&k);
                    }
                    prefixes.push(p);
                }
            }
            StoreOp::MessagePut {
                client_id,
                seq,
                delivery,
            } => {
                let k = codec::seq_key(b'M', &client_id, seq);
                put(
                    &mut slots,
                    k,
                    codec::encode_delivery(&delivery, clock),
                    true,
                );
            }
            StoreOp::InflightPut {
                client_id,
                seq,
                state,
            } => {
                let fresh = slots
                    .get(&codec::seq_key(b'M', &client_id, seq))
                    .is_some_and(|s| s.fresh);
                let k = codec::seq_key(b'F', &client_id, seq);
                match state {
                    Some((id, phase)) => {
                        put(&mut slots, k, codec::encode_inflight(id, phase), fresh)
                    }
                    None => delete(&mut slots, k),
                }
            }
            StoreOp::MessageDelete { client_id, seq } => {
                delete(&mut slots, codec::seq_key(b'M', &client_id, seq));
                delete(&mut slots, codec::seq_key(b'F', &client_id, seq));
            }
            StoreOp::Qos2Put {
                client_id,
                packet_id,
            } => put(
                &mut slots,
                codec::qos2_key(&client_id, packet_id),
                Vec::new(),
                false,
            ),
            StoreOp::Qos2Delete {
                client_id,
                packet_id,
            } => delete(&mut slots, codec::qos2_key(&client_id, packet_id)),
            StoreOp::RetainedPut(m) => put(
                &mut slots,
                codec::retained_key(&m.topic),
                codec::encode_retained(&m, clock),
                false,
            ),
            StoreOp::RetainedDelete(topic) => delete(&mut slots, codec::retained_key(&topic)),
        }
    }
    let mut out: Vec<KvOp> = prefixes.into_iter().map(KvOp::DeletePrefix).collect();
    for (k, slot) in slots {
        out.push(match slot.value {
            Some(v) => KvOp::Put(k, v),
            None => KvOp::Delete(k),
        });
    }
    out
}

/// What restore gives back: the sessions and retained messages, the
/// highest sequence number, and the deletions of records that belong to no
/// session.
type Decoded = (Restored, u64, Vec<KvOp>);

/// Queued messages per session decoded at start-up; the rest stays in the
/// store (counted) and is read back when the session gets there.
pub const RESTORE_RESIDENT: usize = 32;

/// One session's records as the scan meets them (inflight states come
/// first in key order, then messages, then QoS 2 ids, then the record).
#[derive(Default)]
struct Parts {
    record: Option<tributary_core::storage::SessionRecord>,
    inflight: HashMap<u64, (u16, tributary_core::session::InflightPhase)>,
    messages: Vec<RestoredMessage>,
    queued_kept: usize,
    spilled: Option<SpilledQueue>,
    qos2: Vec<u16>,
}

/// Visit every record once (nothing but the head of each queue is kept in
/// memory), failing on any record that does not decode.
fn decode_all(path: &Path, backend: &dyn Backend, clock: Clock) -> Result<Decoded, StoreError> {
    let corrupt = |key: &[u8], reason: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        key: key.escape_ascii().to_string(),
        reason,
    };
    let mut parts: BTreeMap<String, Parts> = BTreeMap::new();
    let mut restored = Restored::default();
    let mut max_seq = 0;
    let mut failure: Option<StoreError> = None;
    let mut visit = |k: &[u8], v: &[u8]| -> Result<(), StoreError> {
        let key = codec::parse_key(k).map_err(|e| corrupt(k, e.to_string()))?;
        let bad = |e: codec::CodecError| corrupt(k, e.to_string());
        match key {
            Key::Version => {
                if v != codec::FORMAT {
                    return Err(StoreError::Format {
                        path: path.to_path_buf(),
                        found: String::from_utf8_lossy(v).into_owned(),
                        expected: String::from_utf8_lossy(codec::FORMAT).into_owned(),
                    });
                }
            }
            Key::Session(c) => {
                parts.entry(c).or_default().record =
                    Some(codec::decode_session(v, clock).map_err(bad)?);
            }
            Key::Message(c, seq) => {
                max_seq = max_seq.max(seq);
                let delivery = codec::decode_delivery(v, clock).map_err(bad)?;
                let p = parts.entry(c).or_default();
                let inflight = p.inflight.remove(&seq);
                if inflight.is_some() || (p.queued_kept < RESTORE_RESIDENT && p.spilled.is_none()) {
                    p.queued_kept += usize::from(inflight.is_none());
                    p.messages.push(RestoredMessage {
                        seq,
                        delivery,
                        inflight,
                    });
                } else {
                    let size =
                        (delivery.message.topic.len() + delivery.message.payload.len()) as u64;
                    let s = p.spilled.get_or_insert(SpilledQueue {
                        count: 0,
                        bytes: 0,
                        first_seq: seq,
                    });
                    s.count += 1;
                    s.bytes += size;
                }
            }
            Key::Inflight(c, seq) => {
                max_seq = max_seq.max(seq);
                let state = codec::decode_inflight(v).map_err(bad)?;
                parts.entry(c).or_default().inflight.insert(seq, state);
            }
            Key::Qos2(c, id) => parts.entry(c).or_default().qos2.push(id),
            Key::Retained(_) => restored
                .retained
                .push(codec::decode_retained(v, clock).map_err(bad)?),
        }
        Ok(())
    };
    backend.scan(&mut |k, v| match visit(k, v) {
        Ok(()) => std::ops::ControlFlow::Continue(()),
        Err(e) => {
            failure = Some(e);
            std::ops::ControlFlow::Break(())
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    let mut orphans = Vec::new();
    for (client, p) in parts {
        let Some(record) = p.record else {
            // Records of no session: deleted, whatever they are.
            for kind in [b'M', b'F', b'Q'] {
                orphans.push(KvOp::DeletePrefix(codec::client_prefix(kind, &client)));
            }
            continue;
        };
        // Inflight states whose message is gone.
        for seq in p.inflight.into_keys() {
            orphans.push(KvOp::Delete(codec::seq_key(b'F', &client, seq)));
        }
        restored.sessions.push(RestoredSession {
            record,
            messages: p.messages,
            spilled: p.spilled,
            incoming_qos2: p.qos2,
        });
    }
    Ok((restored, max_seq, orphans))
}

/// A shared handle on a [`DurableStore`] that is itself a
/// [`Persistence`]: the broker owns one, the gateway keeps the store to
/// close it at shutdown.
#[derive(Debug, Clone)]
pub struct SharedStore(pub Arc<DurableStore>);

impl Persistence for SharedStore {
    fn enabled(&self) -> bool {
        self.0.enabled()
    }

    fn submit(&self, op: StoreOp) -> Option<CommitTicket> {
        self.0.submit(op)
    }

    fn submit_fenced(&self, op: StoreOp) -> (Option<CommitTicket>, Option<CommitTicket>) {
        self.0.submit_fenced(op)
    }

    fn load_queue(
        &self,
        client_id: &str,
        from_seq: u64,
        max: usize,
    ) -> Result<Vec<(u64, Delivery)>, LoadError> {
        self.0.load_queue(client_id, from_seq, max)
    }

    fn next_seq(&self) -> u64 {
        self.0.next_seq()
    }

    fn commits(&self) -> Option<Arc<Commits>> {
        self.0.commits()
    }

    fn stats(&self) -> StoreStats {
        self.0.stats()
    }
}
