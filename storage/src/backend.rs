//! Embedded key-value engines behind one small trait: apply a batch
//! atomically with a given sync mode, visit everything in key order, read a
//! key range while the writer writes ([`BackendReader`]), report disk usage.
//!
//! [`FjallBackend`] (an LSM tree with a write-ahead journal) is what the
//! gateway runs; [`RedbBackend`] (a copy-on-write B-tree) exists, behind
//! the `redb` feature, for the evaluation in ADR 0015 so both engines run
//! the same code path.

use std::path::{Path, PathBuf};

/// Every key and value of a store, in key order.
pub type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// One key-value change in a batch.
#[derive(Debug, Clone)]
pub enum KvOp {
    /// Set a key.
    Put(Vec<u8>, Vec<u8>),
    /// Delete a key.
    Delete(Vec<u8>),
    /// Delete every key with this prefix (applied before the batch's puts).
    DeletePrefix(Vec<u8>),
}

/// How far a batch goes before [`Backend::apply`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// fsync (fdatasync) before returning: survives power loss.
    Fsync,
    /// Handed to the operating system: survives a process crash.
    Os,
    /// Left in the engine's buffers.
    None,
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The engine reported an error.
    #[error("{path}: {message}")]
    Engine {
        /// Data directory or file.
        path: PathBuf,
        /// What the engine said.
        message: String,
    },
}

/// A visitor of records in key order; `Break` stops the scan.
pub type Visit<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> std::ops::ControlFlow<()>;

/// Reads a committed key range while the writer thread owns the
/// [`Backend`] (the engines are multi-version: a read never waits for a
/// write).
pub trait BackendReader: Send + Sync {
    /// Up to `max` records with keys from `from` on that start with `prefix`.
    fn range(&self, prefix: &[u8], from: &[u8], max: usize) -> Result<Records, BackendError>;
}

/// An embedded engine.
pub trait Backend: Send + 'static {
    /// Apply `ops` atomically.
    fn apply(&mut self, ops: &[KvOp], sync: SyncMode) -> Result<(), BackendError>;
    /// Make everything applied so far durable.
    fn sync(&mut self) -> Result<(), BackendError>;
    /// Visit every key and value, in key order, one at a time (nothing is
    /// collected: a large store is never all in memory).
    fn scan(&self, visit: Visit<'_>) -> Result<(), BackendError>;
    /// A reader for ranges, usable from other threads.
    fn reader(&self) -> std::sync::Arc<dyn BackendReader>;
    /// Bytes the store occupies on disk.
    fn disk_bytes(&self) -> u64;
    /// Reclaim space held by deleted records now (engines also do it in
    /// the background).
    fn compact(&mut self) -> Result<(), BackendError>;
    /// Where the store lives.
    fn path(&self) -> &Path;
}

/// fjall: LSM tree, journal appends, tombstones folded away by background
/// compaction.
pub struct FjallBackend {
    path: PathBuf,
    db: fjall::Database,
    ks: fjall::Keyspace,
}

impl std::fmt::Debug for FjallBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallBackend")
            .field("path", &self.path)
            .finish()
    }
}

impl FjallBackend {
    /// Open (or create) the store in directory `path`.
    pub fn open(path: &Path) -> Result<FjallBackend, BackendError> {
        let db = fjall::Database::builder(path)
            // Journal persistence is ours to decide, batch by batch.
            .manual_journal_persist(true)
            // Journals are reclaimed once their memtables are flushed: past
            // this (the engine's minimum) the oldest memtables are flushed,
            // which bounds the disk a churning queue leaves behind.
            .max_journaling_size(64 * 1024 * 1024)
            .worker_threads(1)
            .open()
            .map_err(|e| eng(path, e))?;
        let ks = db
            .keyspace("tributary", fjall::KeyspaceCreateOptions::default)
            .map_err(|e| eng(path, e))?;
        Ok(FjallBackend {
            path: path.to_path_buf(),
            db,
            ks,
        })
    }
}

fn eng(path: &Path, e: impl std::fmt::Display) -> BackendError {
    BackendError::Engine {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl Backend for FjallBackend {
    fn apply(&mut self, ops: &[KvOp], sync: SyncMode) -> Result<(), BackendError> {
        let mut batch = self.db.batch().durability(match sync {
            SyncMode::Fsync => Some(fjall::PersistMode::SyncData),
            SyncMode::Os => Some(fjall::PersistMode::Buffer),
            SyncMode::None => None,
        });
        for op in ops {
            if let KvOp::DeletePrefix(prefix) = op {
                for guard in self.ks.prefix(prefix) {
                    let key = guard.key().map_err(|e| eng(&self.path, e))?;
                    batch.remove(&self.ks, key);
                }
            }
        }
        for op in ops {
            match op {
                KvOp::Put(k, v) => batch.insert(&self.ks, k.as_slice(), v.as_slice()),
                KvOp::Delete(k) => batch.remove(&self.ks, k.as_slice()),
                KvOp::DeletePrefix(_) => {}
            }
        }
        batch.commit().map_err(|e| eng(&self.path, e))
    }

    fn sync(&mut self) -> Result<(), BackendError> {
        self.db
            .persist(fjall::PersistMode::SyncAll)
            .map_err(|e| eng(&self.path, e))
    }

    fn scan(&self, visit: Visit<'_>) -> Result<(), BackendError> {
        for guard in self.ks.iter() {
            let (k, v) = guard.into_inner().map_err(|e| eng(&self.path, e))?;
            if visit(&k, &v).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn reader(&self) -> std::sync::Arc<dyn BackendReader> {
        std::sync::Arc::new(FjallReader {
            path: self.path.clone(),
            ks: self.ks.clone(),
        })
    }

    fn disk_bytes(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }

    fn compact(&mut self) -> Result<(), BackendError> {
        self.ks
            .rotate_memtable_and_wait()
            .map_err(|e| eng(&self.path, e))?;
        self.ks.major_compact().map_err(|e| eng(&self.path, e))
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

/// Range reads on a fjall keyspace (a cheap clone of the writer's).
struct FjallReader {
    path: PathBuf,
    ks: fjall::Keyspace,
}

impl BackendReader for FjallReader {
    fn range(&self, prefix: &[u8], from: &[u8], max: usize) -> Result<Records, BackendError> {
        let mut out = Vec::new();
        for guard in self.ks.range(from.to_vec()..) {
            let (k, v) = guard.into_inner().map_err(|e| eng(&self.path, e))?;
            if !k.starts_with(prefix) || out.len() >= max {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}

/// redb: copy-on-write B-tree in one file (evaluation only).
#[cfg(feature = "redb")]
pub struct RedbBackend {
    path: PathBuf,
    db: std::sync::Arc<redb::Database>,
}

#[cfg(feature = "redb")]
const TABLE: redb::TableDefinition<'static, &'static [u8], &'static [u8]> =
    redb::TableDefinition::new("tributary");

#[cfg(feature = "redb")]
impl RedbBackend {
    /// Open (or create) the store in file `path`.
    pub fn open(path: &Path) -> Result<RedbBackend, BackendError> {
        let db = redb::Database::create(path).map_err(|e| eng(path, e))?;
        let tx = db.begin_write().map_err(|e| eng(path, e))?;
        tx.open_table(TABLE).map_err(|e| eng(path, e))?;
        tx.commit().map_err(|e| eng(path, e))?;
        Ok(RedbBackend {
            path: path.to_path_buf(),
            db: std::sync::Arc::new(db),
        })
    }
}

#[cfg(feature = "redb")]
impl Backend for RedbBackend {
    fn apply(&mut self, ops: &[KvOp], sync: SyncMode) -> Result<(), BackendError> {
        let mut tx = self.db.begin_write().map_err(|e| eng(&self.path, e))?;
        tx.set_durability(match sync {
            SyncMode::Fsync => redb::Durability::Immediate,
            // redb has no "written but not synced" level: a non-durable
            // commit is rolled back by a crash.
            SyncMode::Os | SyncMode::None => redb::Durability::None,
        })
        .map_err(|e| eng(&self.path, e))?;
        {
            let mut table = tx.open_table(TABLE).map_err(|e| eng(&self.path, e))?;
            for op in ops {
                if let KvOp::DeletePrefix(prefix) = op {
                    let p = prefix.clone();
                    table
                        .retain_in(prefix.as_slice().., |k, _| !k.starts_with(&p))
                        .map_err(|e| eng(&self.path, e))?;
                }
            }
            for op in ops {
                match op {
                    KvOp::Put(k, v) => {
                        table
                            .insert(k.as_slice(), v.as_slice())
                            .map_err(|e| eng(&self.path, e))?;
                    }
                    KvOp::Delete(k) => {
                        table.remove(k.as_slice()).map_err(|e| eng(&self.path, e))?;
                    }
                    KvOp::DeletePrefix(_) => {}
                }
            }
        }
        tx.commit().map_err(|e| eng(&self.path, e))
    }

    fn sync(&mut self) -> Result<(), BackendError> {
        let mut tx = self.db.begin_write().map_err(|e| eng(&self.path, e))?;
        tx.set_durability(redb::Durability::Immediate)
            .map_err(|e| eng(&self.path, e))?;
        tx.commit().map_err(|e| eng(&self.path, e))
    }

    fn scan(&self, visit: Visit<'_>) -> Result<(), BackendError> {
        use redb::{ReadableDatabase, ReadableTable};
        let tx = self.db.begin_read().map_err(|e| eng(&self.path, e))?;
        let table = tx.open_table(TABLE).map_err(|e| eng(&self.path, e))?;
        for item in table.iter().map_err(|e| eng(&self.path, e))? {
            let (k, v) = item.map_err(|e| eng(&self.path, e))?;
            if visit(k.value(), v.value()).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn reader(&self) -> std::sync::Arc<dyn BackendReader> {
        std::sync::Arc::new(RedbReader {
            path: self.path.clone(),
            db: self.db.clone(),
        })
    }

    fn disk_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    fn compact(&mut self) -> Result<(), BackendError> {
        // Only while no reader holds the database (the evaluation's case).
        match std::sync::Arc::get_mut(&mut self.db) {
            Some(db) => db.compact().map(|_| ()).map_err(|e| eng(&self.path, e)),
            None => Ok(()),
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

/// Range reads on a redb database (a read transaction per call).
#[cfg(feature = "redb")]
struct RedbReader {
    path: PathBuf,
    db: std::sync::Arc<redb::Database>,
}

#[cfg(feature = "redb")]
impl BackendReader for RedbReader {
    fn range(&self, prefix: &[u8], from: &[u8], max: usize) -> Result<Records, BackendError> {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read().map_err(|e| eng(&self.path, e))?;
        let table = tx.open_table(TABLE).map_err(|e| eng(&self.path, e))?;
        let mut out = Vec::new();
        for item in table.range(from..).map_err(|e| eng(&self.path, e))? {
            let (k, v) = item.map_err(|e| eng(&self.path, e))?;
            if !k.value().starts_with(prefix) || out.len() >= max {
                break;
            }
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }
}
