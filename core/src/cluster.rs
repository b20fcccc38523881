//! The cluster seam: how a message routed on this node reaches the other
//! nodes. The default is a single node, so forwarding does nothing.

use std::sync::Arc;

use crate::message::Message;

/// Carries messages between nodes.
pub trait ClusterBackend: Send + Sync + std::fmt::Debug {
    /// A message was published locally; forward it to nodes that have
    /// matching subscriptions.
    fn forward(&self, message: &Arc<Message>);
}

/// A cluster of one.
#[derive(Debug, Default)]
pub struct SingleNode;

impl ClusterBackend for SingleNode {
    fn forward(&self, _message: &Arc<Message>) {}
}
