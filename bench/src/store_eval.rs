//! `store-eval`: the embedded-engine evaluation behind ADR 0015. Runs the
//! broker's own storage write pattern against each engine through the same
//! code the gateway uses (`tributary_storage::store::fold` → `Backend`):
//!
//! 1. **append**: QoS 1 deliveries of `--payload` bytes queued round-robin
//!    for `--sessions` offline persistent sessions, `--batch` per group
//!    commit, each commit synced per `--sync`;
//! 2. **steady**: each commit appends `--batch` new deliveries and deletes
//!    (acknowledges) the `--batch` oldest: a queue that drains as fast as it
//!    fills, the pattern of online persistent subscribers;
//! 3. **drain**: every remaining delivery deleted, `--batch` per commit;
//! 4. **restore**: the store closed, reopened and scanned, as at start-up
//!    (after `--restore-records` appended again).
//!
//! Records per second for each phase and the disk bytes after each (blocks
//! allocated, as `du` counts them) are printed as a Markdown table (stdout) — no broker and no network.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use tributary_core::storage::StoreOp;
use tributary_core::{Delivery, Message, QoS};
use tributary_storage::backend::{Backend, FjallBackend, RedbBackend, SyncMode};
use tributary_storage::codec::Clock;
use tributary_storage::store::fold;

/// Options of one evaluation.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Engines to run: `fjall`, `redb`.
    pub engines: Vec<String>,
    /// Directory under which each engine gets a fresh store.
    pub dir: PathBuf,
    /// Persistent sessions the deliveries are spread over.
    pub sessions: usize,
    /// Deliveries per phase.
    pub records: usize,
    /// Deliveries per group commit.
    pub batch: usize,
    /// Payload bytes.
    pub payload: usize,
    /// Sync per commit.
    pub sync: SyncMode,
}

/// One engine's figures.
#[derive(Debug, Clone)]
pub struct EvalResult {
    /// Engine name.
    pub engine: String,
    /// (phase, records per second, disk bytes after the phase).
    pub phases: Vec<(&'static str, f64, u64)>,
}

fn open(engine: &str, dir: &Path) -> anyhow::Result<Box<dyn Backend>> {
    Ok(match engine {
        "fjall" => Box::new(FjallBackend::open(dir)?),
        "redb" => {
            std::fs::create_dir_all(dir)?;
            Box::new(RedbBackend::open(&dir.join("store.redb"))?)
        }
        other => anyhow::bail!("unknown engine {other:?} (fjall, redb)"),
    })
}

fn delivery(seq: usize, payload: &Bytes) -> Delivery {
    let mut m = Message::new(
        format!("eval/{}", seq % 1000),
        payload.clone(),
        QoS::AtLeastOnce,
        false,
    );
    m.publisher = Some(Arc::from("publisher"));
    Delivery {
        message: Arc::new(m),
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: Vec::new(),
        shared: None,
    }
}

fn put(seq: usize, clients: &[Arc<str>], payload: &Bytes) -> StoreOp {
    StoreOp::MessagePut {
        client_id: clients[seq % clients.len()].clone(),
        seq: seq as u64 + 1,
        delivery: delivery(seq, payload),
    }
}

fn delete(seq: usize, clients: &[Arc<str>]) -> StoreOp {
    StoreOp::MessageDelete {
        client_id: clients[seq % clients.len()].clone(),
        seq: seq as u64 + 1,
    }
}

/// Run the evaluation for one engine.
pub fn run_engine(engine: &str, o: &EvalOptions) -> anyhow::Result<EvalResult> {
    let dir = o.dir.join(engine);
    let _ = std::fs::remove_dir_all(&dir);
    let clients: Vec<Arc<str>> = (0..o.sessions)
        .map(|i| Arc::from(format!("session-{i:05}")))
        .collect();
    let payload = Bytes::from(vec![b'x'; o.payload]);
    let mut phases = Vec::new();
    let mut backend = open(engine, &dir).with_context(|| format!("open {engine}"))?;
    let clock = Clock::read();
    let batches = o.records.div_ceil(o.batch);

    // 1. append
    let start = Instant::now();
    for b in 0..batches {
        let ops = (b * o.batch..((b + 1) * o.batch).min(o.records))
            .map(|s| put(s, &clients, &payload))
            .collect();
        backend.apply(&fold(ops, clock), o.sync)?;
    }
    phases.push(("append", rate(o.records, start), du(&dir)));

    // 2. steady: append the next batch, acknowledge the oldest.
    let start = Instant::now();
    for b in 0..batches {
        let mut ops: Vec<StoreOp> = (o.records + b * o.batch..o.records + (b + 1) * o.batch)
            .map(|s| put(s, &clients, &payload))
            .collect();
        ops.extend((b * o.batch..(b + 1) * o.batch).map(|s| delete(s, &clients)));
        backend.apply(&fold(ops, clock), o.sync)?;
    }
    phases.push(("steady", rate(batches * o.batch, start), du(&dir)));

    // 3. drain what is left.
    let start = Instant::now();
    let first = batches * o.batch;
    for b in 0..batches {
        let ops = (first + b * o.batch..first + (b + 1) * o.batch)
            .map(|s| delete(s, &clients))
            .collect();
        backend.apply(&fold(ops, clock), o.sync)?;
    }
    phases.push(("drain", rate(batches * o.batch, start), du(&dir)));
    backend.compact()?;
    phases.push(("compacted", 0.0, du(&dir)));

    // 4. restore: append again, close, reopen, scan.
    let base = 3 * batches * o.batch;
    for b in 0..batches {
        let ops = (base + b * o.batch..base + (b + 1) * o.batch)
            .map(|s| put(s, &clients, &payload))
            .collect();
        backend.apply(&fold(ops, clock), o.sync)?;
    }
    backend.sync()?;
    drop(backend);
    let start = Instant::now();
    let backend = open(engine, &dir)?;
    let mut decoded = 0;
    backend.scan(&mut |k, v| {
        if k.first() == Some(&b'M') && tributary_storage::codec::decode_delivery(v, clock).is_ok() {
            decoded += 1;
        }
        std::ops::ControlFlow::Continue(())
    })?;
    anyhow::ensure!(
        decoded == batches * o.batch,
        "{engine}: restored {decoded} records, expected {}",
        batches * o.batch
    );
    phases.push(("restore", rate(decoded, start), du(&dir)));
    drop(backend);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(EvalResult {
        engine: engine.to_string(),
        phases,
    })
}

/// Bytes allocated on disk under `path` (blocks, as `du` counts them: a
/// preallocated journal counts only for what it really occupies).
fn du(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_dir() {
        std::fs::read_dir(path)
            .map(|entries| entries.flatten().map(|e| du(&e.path())).sum())
            .unwrap_or(0)
    } else {
        meta.blocks() * 512
    }
}

fn rate(n: usize, since: Instant) -> f64 {
    n as f64 / since.elapsed().as_secs_f64().max(1e-9)
}

/// The results as a Markdown table.
pub fn table(results: &[EvalResult], o: &EvalOptions) -> String {
    let mut out = format!(
        "sessions {} · records/phase {} · batch {} · payload {} B · sync {:?}\n\n\
         | engine | append rec/s | steady rec/s | drain rec/s | restore rec/s | disk after append | after steady | after drain | after compaction |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        o.sessions, o.records, o.batch, o.payload, o.sync
    );
    for r in results {
        let get = |name: &str| r.phases.iter().find(|p| p.0 == name).copied();
        let rate_of = |name: &str| get(name).map_or("-".to_string(), |p| format!("{:.0}", p.1));
        let disk_of = |name: &str| {
            get(name).map_or("-".to_string(), |p| {
                format!("{:.1} MiB", p.2 as f64 / 1048576.0)
            })
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.engine,
            rate_of("append"),
            rate_of("steady"),
            rate_of("drain"),
            rate_of("restore"),
            disk_of("append"),
            disk_of("steady"),
            disk_of("drain"),
            disk_of("compacted"),
        ));
    }
    out
}
