//! The CoAP peer channel behind the core's connection contract
//! ([`tributary_core::connection`]), for the gateway's datagram driver.
//! Every request is authenticated and authorized on its own, so a peer
//! needs no pre-authentication budget; the idle window is the
//! `/mqtt/connection` heartbeat (1.5 × `heartbeat`), restarted only by
//! requests that prove the connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tributary_core::auth::{AuthFuture, AuthOutcome};
use tributary_core::connection::{
    CommitWait, Connection as Contract, DatagramConnection, Limit, PreAuthBudget, ReadHold,
    Transmit,
};
use tributary_core::session::Session;
use tributary_core::ConnectionSignal;

use crate::channel::Channel;

impl Contract for Channel {
    fn protocol(&self) -> &'static str {
        "coap"
    }

    fn client_id(&self) -> Option<&str> {
        Channel::client_id(self)
    }

    fn handle_timeout(&mut self, now: Instant) {
        Channel::handle_timeout(self, now);
    }

    fn handle_wake(&mut self, now: Instant) {
        Channel::handle_wake(self, now);
    }

    fn handle_commit(&mut self, now: Instant) {
        self.release_durable(now);
    }

    fn handle_auth(&mut self, outcome: AuthOutcome, now: Instant) {
        self.handle_auth_result(outcome, now);
    }

    fn handle_limit(&mut self, limit: Limit, now: Instant) {
        Channel::handle_limit(self, limit, now);
    }

    fn shutdown(&mut self, now: Instant) {
        Channel::shutdown(self, now);
    }

    fn finish(&mut self, now: Instant) {
        Channel::finish(self, now);
    }

    fn is_closed(&self) -> bool {
        // A peer is forgotten when idle, never "closed".
        false
    }

    fn has_output(&self) -> bool {
        Channel::has_output(self)
    }

    fn next_deadline(&self) -> Option<Instant> {
        Channel::next_deadline(self)
    }

    fn read_hold(&self) -> ReadHold {
        // A request parked for authentication holds later datagrams itself.
        if self.holds_too_many() || self.is_backpressured() {
            ReadHold::Held
        } else if let Some(until) = self.read_paused_until() {
            ReadHold::Until(until)
        } else {
            ReadHold::Open
        }
    }

    fn take_auth(&mut self) -> Option<AuthFuture> {
        self.take_auth_future()
    }

    fn take_congestion(&mut self) -> Vec<Arc<Session>> {
        self.take_backpressure()
    }

    fn commit_wait(&self) -> Option<CommitWait> {
        let (commits, ticket) = self.held_commit()?;
        Some(CommitWait { commits, ticket })
    }

    fn signal(&self) -> Option<Arc<ConnectionSignal>> {
        Channel::signal(self)
    }

    fn is_authenticated(&self) -> bool {
        true
    }

    fn preauth_budget(&self) -> PreAuthBudget {
        PreAuthBudget {
            time: Duration::MAX,
            bytes: usize::MAX,
        }
    }

    fn idle_timeout(&self) -> Option<Duration> {
        self.heartbeat_window()
    }
}

impl DatagramConnection for Channel {
    type Input = Bytes;

    fn handle_datagram(&mut self, input: Bytes, now: Instant) -> bool {
        Channel::handle_datagram(self, &input, now)
    }

    fn poll_transmit(&mut self, _now: Instant, out: &mut Transmit) {
        for datagram in self.take_output() {
            out.push_unit(&datagram);
        }
    }

    fn is_idle(&self) -> bool {
        Channel::is_idle(self) && self.held_commit().is_none()
    }

    fn evict(&mut self, now: Instant) {
        Channel::finish(self, now);
    }
}
