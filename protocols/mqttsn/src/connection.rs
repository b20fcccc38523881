//! The MQTT-SN channel behind the core's connection contract
//! ([`tributary_core::connection`]): the gateway's datagram driver hands
//! it messages its demultiplexer decoded, and sends what it encodes here —
//! wrapped for the forwarder (§5.5) when the client sits behind one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;
use tributary_core::auth::{AuthFuture, AuthOutcome};
use tributary_core::connection::{
    CommitWait, Connection, DatagramConnection, Limit, PreAuthBudget, ReadHold, Transmit,
};
use tributary_core::session::Session;
use tributary_core::ConnectionSignal;

use crate::channel::Channel;
use crate::codec::{encode, MAX_MESSAGE_LEN};
use crate::packet::{Encapsulated, Packet};

impl Connection for Channel {
    fn protocol(&self) -> &'static str {
        "mqtt-sn"
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

    fn shutdown(&mut self, _now: Instant) {
        Channel::shutdown(self);
    }

    fn finish(&mut self, now: Instant) {
        Channel::finish(self, now);
    }

    fn is_closed(&self) -> bool {
        Channel::is_closed(self)
    }

    fn has_output(&self) -> bool {
        Channel::has_output(self)
    }

    fn next_deadline(&self) -> Option<Instant> {
        Channel::next_deadline(self)
    }

    fn read_hold(&self) -> ReadHold {
        if self.is_authenticating() || self.holds_too_many() || self.is_backpressured() {
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
        let (commits, ticket) = Channel::commit_wait(self)?;
        Some(CommitWait { commits, ticket })
    }

    fn signal(&self) -> Option<Arc<ConnectionSignal>> {
        Channel::signal(self)
    }

    fn is_authenticated(&self) -> bool {
        self.is_connected()
    }

    fn preauth_budget(&self) -> PreAuthBudget {
        PreAuthBudget {
            time: self.connect_window(),
            // CONNECT, WILLTOPIC, WILLMSG, and their resends.
            bytes: MAX_MESSAGE_LEN.saturating_mul(4),
        }
    }

    fn idle_timeout(&self) -> Option<Duration> {
        self.silence_window()
    }
}

impl DatagramConnection for Channel {
    type Input = Packet;

    fn handle_datagram(&mut self, input: Packet, now: Instant) -> bool {
        // Any message counts (§6.14: also while asleep).
        self.handle_packet(input, now);
        true
    }

    fn poll_transmit(&mut self, _now: Instant, out: &mut Transmit) {
        let forwarder = self.forwarder().cloned();
        for packet in self.take_output() {
            let packet = match &forwarder {
                Some(node_id) => Packet::Encapsulated(Encapsulated {
                    radius: 0,
                    node_id: node_id.clone(),
                    packet: Box::new(packet),
                }),
                None => packet,
            };
            match encode(&packet, out.buf()) {
                Ok(()) => out.end_unit(),
                Err(e) => warn!(error = %e, packet = packet.name(), "cannot encode; dropped"),
            }
        }
    }

    fn is_idle(&self) -> bool {
        Channel::is_closed(self)
    }

    fn evict(&mut self, _now: Instant) {
        Channel::evict(self);
    }
}
