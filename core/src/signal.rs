//! The per-connection wake-up and kick signal the core shares with a
//! connection's driver: the only way the core reaches a connection (it has
//! no async code of its own, ADR 0001).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

/// Why a connection is told to go away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum KickReason {
    /// Another connection took the session over (MQTT 5: 0x8E).
    Takeover = 1,
    /// An administrator kicked the client (0x98).
    Administrative = 2,
    /// The server is shutting down (0x8B).
    ServerShutdown = 3,
}

/// The per-connection wake-up and kick signal shared between the core and
/// the connection's driver task. A wake is remembered until the driver
/// sees it (like a stored permit); the driver can poll for it directly
/// ([`poll_notified`](Self::poll_notified)), so waiting for it keeps no
/// future in the connection's state. One task waits on a signal.
#[derive(Debug, Default)]
pub struct ConnectionSignal {
    woken: AtomicBool,
    waker: atomic_waker::AtomicWaker,
    kicked: AtomicU8,
}

impl ConnectionSignal {
    /// A fresh signal.
    pub fn new() -> Arc<ConnectionSignal> {
        Arc::new(ConnectionSignal::default())
    }

    /// Wake the connection (remembered if it is not waiting).
    pub fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready (and the wake consumed) once [`wake`](Self::wake) was called
    /// since the last time; otherwise registers `cx` to be woken.
    pub fn poll_notified(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.woken.swap(false, Ordering::AcqRel) {
            return std::task::Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.woken.swap(false, Ordering::AcqRel) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }

    /// Wait until woken.
    pub async fn notified(&self) {
        std::future::poll_fn(|cx| self.poll_notified(cx)).await;
    }

    /// Tell the connection to close for `reason`, and wake it.
    pub fn kick(&self, reason: KickReason) {
        self.kicked.store(reason as u8, Ordering::Release);
        self.wake();
    }

    /// Why the connection was kicked, if it was.
    pub fn kicked(&self) -> Option<KickReason> {
        match self.kicked.load(Ordering::Acquire) {
            1 => Some(KickReason::Takeover),
            2 => Some(KickReason::Administrative),
            3 => Some(KickReason::ServerShutdown),
            _ => None,
        }
    }
}
