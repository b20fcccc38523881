//! Connection admission, counted once for every protocol and transport:
//! a [`Gate`] per listener (its rate bucket and `max_connections`) in
//! front of the one gateway-wide [`Connections`] count
//! (`limits.max_connections`), and the [`ConnectionGuard`] that holds a
//! connection's place until it is dropped, however its task ends. Stream
//! connections take a guard when accepted; datagram peers while they have
//! state (a task). The `connections` gauge and `connections_total`
//! counter are kept here and nowhere else.
//!
//! [`accept_loop`] is the one TCP accept loop: every stream listener
//! (MQTT over TCP, TLS, WebSocket; STOMP over TCP and TLS) admits through
//! its gate, then hands the socket to its [`Serve`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};
use tributary_core::Broker;

use crate::listener_stats::ListenerStats;

/// The gateway-wide connection count and its bound.
#[derive(Debug)]
pub struct Connections {
    broker: Arc<Broker>,
    max: usize,
    open: AtomicUsize,
}

impl Connections {
    /// At most `max` connections at once across every listener.
    pub fn new(broker: Arc<Broker>, max: usize) -> Arc<Connections> {
        Arc::new(Connections {
            broker,
            max: max.max(1),
            open: AtomicUsize::new(0),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn take(&self) -> bool {
        take_slot(&self.open, self.max)
    }

    fn give_back(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Take one of `max` places counted by `count`.
fn take_slot(count: &AtomicUsize, max: usize) -> bool {
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

/// One listener's admission: its own bound and rate, then the global one.
#[derive(Debug)]
pub struct Gate {
    /// The listener's counters (and connection-rate bucket).
    pub stats: Arc<ListenerStats>,
    max: usize,
    open: AtomicUsize,
    connections: Arc<Connections>,
}

impl Gate {
    /// A gate admitting at most `max` connections at once on the listener
    /// `stats` counts (0 = only the global bound).
    pub fn new(stats: Arc<ListenerStats>, max: usize, connections: &Arc<Connections>) -> Arc<Gate> {
        Arc::new(Gate {
            stats,
            max: if max == 0 { usize::MAX } else { max },
            open: AtomicUsize::new(0),
            connections: connections.clone(),
        })
    }

    /// The core this gate admits into.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.connections.broker
    }

    /// Admit a new connection: room in the listener's rate and bound and
    /// in the global bound, else `None` (counted as refused).
    pub fn admit(self: &Arc<Gate>) -> Option<ConnectionGuard> {
        if !self.stats.take_conn_token() {
            self.refuse();
            return None;
        }
        if !take_slot(&self.open, self.max) {
            self.refuse();
            return None;
        }
        if !self.connections.take() {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.refuse();
            return None;
        }
        let metrics = self.broker().metrics();
        metrics.inc(&metrics.connections);
        metrics.inc(&metrics.connections_total);
        self.stats.opened();
        Some(ConnectionGuard(self.clone()))
    }

    fn refuse(&self) {
        let metrics = self.broker().metrics();
        metrics.inc(&metrics.connections_refused);
        self.stats.refused();
    }
}

/// A connection's place, given back when dropped. One pointer.
#[derive(Debug)]
pub struct ConnectionGuard(Arc<Gate>);

impl ConnectionGuard {
    /// The listener's counters.
    pub fn stats(&self) -> &ListenerStats {
        &self.0.stats
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let gate = &self.0;
        gate.open.fetch_sub(1, Ordering::AcqRel);
        gate.connections.give_back();
        let metrics = gate.broker().metrics();
        metrics.dec(&metrics.connections);
        gate.stats.closed();
    }
}

/// What a stream listener does with an admitted connection: spawn its
/// task (the handshake, then the stream driver).
pub trait Serve: Send + Sync + 'static {
    /// Serve `stream` from `peer`, holding `guard` until it ends.
    fn serve(&self, stream: TcpStream, peer: SocketAddr, guard: ConnectionGuard);
}

/// Accept connections on `listener` until shutdown.
pub async fn accept_loop<S: Serve>(
    listener: TcpListener,
    gate: Arc<Gate>,
    nodelay: bool,
    mut shutdown: watch::Receiver<bool>,
    serve: S,
) {
    let name = gate.stats.label();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(guard) = gate.admit() else {
            debug!(listener = %name, %peer, "connection limit or rate reached; refusing");
            drop(stream);
            continue;
        };
        if nodelay {
            // Without it, small-message latency tails reach 40 ms (Nagle).
            let _ = stream.set_nodelay(true);
        }
        serve.serve(stream, peer, guard);
    }
    info!(listener = %name, "listener stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_core::BrokerConfig;

    fn gate(connections: &Arc<Connections>, max: usize, name: &str) -> Arc<Gate> {
        let stats = Arc::new(ListenerStats::new(
            "tcp",
            name,
            "127.0.0.1:1".parse().expect("addr"),
            String::new(),
            0,
        ));
        Gate::new(stats, max, connections)
    }

    #[test]
    fn the_global_bound_holds_across_listeners_and_places_come_back() {
        let broker = Arc::new(Broker::new(BrokerConfig::default()));
        let all = Connections::new(broker.clone(), 3);
        let (a, b) = (gate(&all, 2, "a"), gate(&all, 0, "b"));
        let a1 = a.admit().expect("a1");
        let _a2 = a.admit().expect("a2");
        assert!(a.admit().is_none(), "listener bound");
        let b1 = b.admit().expect("b1");
        assert!(b.admit().is_none(), "global bound");
        assert_eq!(all.open(), 3);
        let m = broker.metrics();
        assert_eq!(m.connections.load(Ordering::Relaxed), 3);
        assert_eq!(m.connections_refused.load(Ordering::Relaxed), 2);
        drop(a1);
        drop(b1);
        assert_eq!(all.open(), 1);
        assert_eq!(m.connections.load(Ordering::Relaxed), 1);
        assert!(b.admit().is_some());
        assert_eq!(a.stats.accepted.load(Ordering::Relaxed), 2);
    }
}
