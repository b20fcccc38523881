//! The MQTT channel behind the core's connection contract
//! ([`tributary_core::connection`]): bytes in are decoded here (the
//! maximum packet size is checked from the fixed header before a body is
//! buffered), packets out are encoded here, and the driver learns from the
//! channel what it must wait for.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tracing::warn;
use tributary_core::auth::{AuthFuture, AuthOutcome};
use tributary_core::connection::{
    CommitWait, Connection, Limit, PreAuthBudget, ReadHold, StreamConnection, Transmit,
};
use tributary_core::session::Session;
use tributary_core::ConnectionSignal;

use crate::channel::Channel;
use crate::codec::{decode, encode};

impl Connection for Channel {
    fn protocol(&self) -> &'static str {
        "mqtt"
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
        if self.awaiting_auth_result() || self.holds_too_many() {
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
        Some(CommitWait {
            commits: self.commits()?.clone(),
            ticket: self.held_ticket()?,
        })
    }

    fn signal(&self) -> Option<Arc<ConnectionSignal>> {
        Channel::signal(self)
    }

    fn is_authenticated(&self) -> bool {
        self.is_connected()
    }

    fn preauth_budget(&self) -> PreAuthBudget {
        PreAuthBudget {
            time: self.connect_timeout(),
            // The CONNECT, and the AUTH packets of an enhanced
            // authentication exchange.
            bytes: self.max_packet_size().saturating_mul(2),
        }
    }

    fn idle_timeout(&self) -> Option<Duration> {
        self.keep_alive_window()
    }
}

impl StreamConnection for Channel {
    const UNIT_MESSAGES: bool = false;

    fn handle_input(&mut self, input: &mut BytesMut, now: Instant) -> bool {
        // One clock read per batch: packets that arrived together are
        // handled at the same instant.
        let mut packets = false;
        loop {
            if self.is_closed()
                || self.awaiting_auth_result()
                || self.is_backpressured()
                || self.holds_too_many()
                || self.read_paused_until().is_some()
            {
                // The rest stays buffered until the hold ends.
                break;
            }
            match decode(input, self.version(), self.max_packet_size()) {
                Ok(Some(packet)) => {
                    packets = true;
                    self.handle_packet(packet, now);
                }
                Ok(None) => break,
                Err(e) => {
                    self.handle_decode_error(&e, now);
                    input.clear();
                    break;
                }
            }
        }
        packets
    }

    fn max_unit(&self) -> usize {
        self.max_packet_size()
    }

    fn poll_transmit(&mut self, _now: Instant, out: &mut Transmit) {
        let version = self.version();
        // By reference: a packet is a few hundred bytes, and moving each one
        // out of the vector costs more than encoding a small PUBLISH.
        for packet in &self.take_output() {
            match encode(packet, version, out.buf()) {
                Ok(()) => out.end_unit(),
                Err(e) => warn!(error = %e, "cannot encode packet; dropped"),
            }
        }
    }
}
