//! The two connection drivers every protocol runs on (ADR 0018): the
//! [`stream`] driver for channels over a byte or message transport (MQTT
//! over TCP, TLS, WebSocket; STOMP over TCP, TLS, WebSocket, SockJS), and
//! the [`datagram`] driver for channels over UDP (MQTT-SN, CoAP, LwM2M).
//! Both are generic over the core's connection contract
//! ([`tributary_core::connection`]) and apply the same rules: the
//! pre-authentication budget, the idle window and the write-stall limit
//! (through the core's [`Watchdog`](tributary_core::connection::Watchdog)),
//! the bounded pause for a full subscriber, held acknowledgements released
//! on store commit, and one connection count ([`crate::listen`]).

pub mod datagram;
pub mod stream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tributary_core::session::Session;
use tributary_core::Broker;

/// The clock the drivers use: tokio's, so tests can pause it.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Sleep until `deadline`, or forever without one.
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

/// What every connection of a listener shares.
#[derive(Debug, Clone)]
pub struct DriveContext {
    /// The core.
    pub broker: Arc<Broker>,
    /// Flips to true on shutdown.
    pub shutdown: watch::Receiver<bool>,
    /// Longest a write may wait for a peer that does not read
    /// (`limits.write_stall_timeout`).
    pub write_stall: Duration,
}

/// Wait until every session has room in its mailbox (or went offline, or
/// is stalled: its bounds then apply, not the publisher's patience).
pub async fn wait_for_room(broker: &Broker, sessions: &[Arc<Session>]) {
    let limits = &broker.config().queue;
    for session in sessions {
        loop {
            let room = session.room();
            tokio::pin!(room);
            room.as_mut().enable();
            if !session.is_congested(limits, now()) {
                break;
            }
            room.await;
        }
    }
}
