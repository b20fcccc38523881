//! Per-listener counters (current and total connections, refusals) and the
//! listener's connection-rate token bucket; exported by the HTTP API and
//! the Prometheus endpoint with `listener` and `transport` labels.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

/// One listener's counters.
#[derive(Debug)]
pub struct ListenerStats {
    /// `tcp`, `ssl`, `ws`, `wss`.
    pub transport: &'static str,
    /// The listener's name in the configuration.
    pub name: String,
    /// Bound address.
    pub addr: SocketAddr,
    /// How it is secured, for the banner and `/api/v5/listeners`-style output.
    pub security: String,
    /// Connections open now.
    pub connections: AtomicU64,
    /// Connections served since start.
    pub accepted: AtomicU64,
    /// Connections refused (limit or rate) since start.
    pub refused: AtomicU64,
    /// TLS handshakes or WebSocket upgrades that failed.
    pub handshake_failures: AtomicU64,
    /// Connection-rate bucket: (tokens, last refill); `None` = unlimited.
    conn_rate: Option<(f64, Mutex<(f64, Instant)>)>,
}

impl ListenerStats {
    /// Counters for a listener allowing `max_conn_rate` new connections per
    /// second (0 = unlimited).
    pub fn new(
        transport: &'static str,
        name: &str,
        addr: SocketAddr,
        security: String,
        max_conn_rate: u32,
    ) -> ListenerStats {
        let rate = f64::from(max_conn_rate);
        ListenerStats {
            transport,
            name: name.to_owned(),
            addr,
            security,
            connections: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            handshake_failures: AtomicU64::new(0),
            conn_rate: (max_conn_rate > 0).then(|| (rate, Mutex::new((rate, Instant::now())))),
        }
    }

    /// Take one token from the connection-rate bucket (burst: one second's worth).
    pub fn take_conn_token(&self) -> bool {
        let Some((rate, bucket)) = &self.conn_rate else {
            return true;
        };
        let now = Instant::now();
        let mut b = bucket.lock();
        let elapsed = now.saturating_duration_since(b.1).as_secs_f64();
        b.0 = (b.0 + elapsed * rate).min(*rate);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }

    /// A connection started being served.
    pub fn opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection ended.
    pub fn closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// A connection was refused.
    pub fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// A handshake failed.
    pub fn handshake_failed(&self) {
        self.handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// `listener` label value: `transport:name`.
    pub fn label(&self) -> String {
        format!("{}:{}", self.transport, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_rate_bucket_refuses_past_the_burst() {
        let s = ListenerStats::new(
            "tcp",
            "t",
            "127.0.0.1:1".parse().expect("addr"),
            String::new(),
            3,
        );
        let taken = (0..10).filter(|_| s.take_conn_token()).count();
        assert_eq!(taken, 3);
        let unlimited = ListenerStats::new(
            "tcp",
            "t",
            "127.0.0.1:1".parse().expect("addr"),
            String::new(),
            0,
        );
        assert!((0..100).all(|_| unlimited.take_conn_token()));
    }
}
