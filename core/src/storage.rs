//! The persistence seam: where sessions and retained messages go when a
//! durable store is configured. The default keeps everything in memory
//! (the broker's own structures), so its methods do nothing; a durable
//! store implements the same trait without touching protocol crates.

use std::sync::Arc;

use crate::message::Message;

/// Receives every change that a durable store would have to write.
pub trait Persistence: Send + Sync + std::fmt::Debug {
    /// A retained message was set (`Some`) or cleared (`None`) on `topic`.
    fn retained_changed(&self, topic: &str, message: Option<&Arc<Message>>);
    /// Retained messages to restore at start-up.
    fn load_retained(&self) -> Vec<Message>;
}

/// Memory only: nothing survives a restart.
#[derive(Debug, Default)]
pub struct MemoryPersistence;

impl Persistence for MemoryPersistence {
    fn retained_changed(&self, _topic: &str, _message: Option<&Arc<Message>>) {}

    fn load_retained(&self) -> Vec<Message> {
        Vec::new()
    }
}
