//! Tributary's durable storage: persistent sessions, their queues and
//! inflight state, and retained messages on an embedded engine, behind the
//! core's [`tributary_core::storage::Persistence`] seam.
//!
//! # Layout
//! - [`codec`]: the key layout and the record format.
//! - [`backend`]: the engines (fjall; redb for the evaluation, feature
//!   `redb`) behind one trait.
//! - [`store`]: [`DurableStore`], the group-committing writer thread and
//!   the restore at start-up.
//!
//! Why fjall, and the measurements behind it: `docs/adr/0015-embedded-store.md`.
#![warn(missing_docs)]

pub mod backend;
pub mod codec;
pub mod store;

pub use backend::{Backend, BackendError, FjallBackend, KvOp, SyncMode};
pub use store::{Durability, DurableStore, SharedStore, StoreError, StoreOptions};

use std::path::Path;
use std::sync::Arc;

use tributary_core::storage::Restored;

/// Open the fjall store in directory `dir` (created if missing) and read
/// it back.
pub fn open_fjall(
    dir: &Path,
    options: StoreOptions,
) -> Result<(Arc<DurableStore>, Restored), StoreError> {
    let backend = FjallBackend::open(dir)?;
    DurableStore::open(Box::new(backend), options)
}
