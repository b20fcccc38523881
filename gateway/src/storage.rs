//! Start-up and shutdown of the durable store (`[storage]`): open it, read
//! everything back, and hand the core its persistence seam.
//!
//! A store that cannot be opened or holds a record that does not decode
//! fails start-up with an error naming the data directory and the record;
//! the gateway never starts empty on top of data it could not read.

use std::path::Path;
use std::sync::Arc;

use tributary_config::{Config, DurabilityMode, StorageBackend};
use tributary_core::storage::{MemoryPersistence, Persistence, Restored};
use tributary_storage::{Durability, DurableStore, SharedStore, StoreError, StoreOptions};

/// The store for `config` (`None` with `backend = "memory"`), and what it held.
pub fn open(config: &Config) -> Result<Option<(Arc<DurableStore>, Restored)>, StoreError> {
    let s = &config.storage;
    match s.backend {
        StorageBackend::Memory => Ok(None),
        StorageBackend::Fjall => {
            let options = StoreOptions {
                durability: match s.durability {
                    DurabilityMode::Fsync => Durability::Fsync,
                    DurabilityMode::Batched => Durability::Batched,
                    DurabilityMode::None => Durability::None,
                },
                batch_window: s.batch_window,
                sync_interval: s.sync_interval,
            };
            tributary_storage::open_fjall(Path::new(s.data_dir.trim()), options).map(Some)
        }
    }
}

/// The core's persistence seam for an opened store.
pub fn persistence(store: Option<&Arc<DurableStore>>) -> Box<dyn Persistence> {
    match store {
        Some(store) => Box::new(SharedStore(store.clone())),
        None => Box::new(MemoryPersistence),
    }
}
