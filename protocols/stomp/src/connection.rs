//! The STOMP channel behind the core's connection contract
//! ([`tributary_core::connection`]): bytes in are decoded here with the
//! negotiated version and the frame limits, frames and heart-beats out are
//! encoded here, one unit each (a WebSocket or SockJS message per frame),
//! and any byte from the client is a sign of life (1.2 §"Heart-beating").

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tributary_core::auth::{AuthFuture, AuthOutcome};
use tributary_core::connection::{
    CommitWait, Connection, Limit, PreAuthBudget, ReadHold, StreamConnection, Transmit,
};
use tributary_core::session::Session;
use tributary_core::ConnectionSignal;

use crate::channel::{Channel, Output};
use crate::codec::{self, Item, Limits};

/// Most bytes one acceptable frame can take (headers, body, framing), so
/// a read buffer never needs more.
pub fn max_frame_bytes(l: &Limits) -> usize {
    l.max_body_length
        .saturating_add((l.max_headers + 1).saturating_mul(l.max_header_length + 2))
        .saturating_add(64)
}

impl Connection for Channel {
    fn protocol(&self) -> &'static str {
        "stomp"
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
        if self.is_authenticating() || self.holds_too_many() {
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
        self.is_connected()
    }

    fn preauth_budget(&self) -> PreAuthBudget {
        PreAuthBudget {
            time: self.connect_timeout(),
            // A CONNECT frame is far smaller; two frames' worth covers any
            // heart-beat EOLs before it.
            bytes: max_frame_bytes(self.limits()).saturating_mul(2),
        }
    }

    fn idle_timeout(&self) -> Option<Duration> {
        self.receive_window()
    }
}

impl StreamConnection for Channel {
    const UNIT_MESSAGES: bool = true;

    fn handle_input(&mut self, input: &mut BytesMut, now: Instant) -> bool {
        let alive = !input.is_empty();
        loop {
            if self.is_closed()
                || self.is_authenticating()
                || self.is_backpressured()
                || self.holds_too_many()
                || self.read_paused_until().is_some()
            {
                // The rest waits until the hold is released.
                break;
            }
            let limits = *self.limits();
            match codec::decode(input, self.version(), &limits) {
                Ok(Some(Item::Frame(frame))) => self.handle_frame(frame, now),
                Ok(Some(Item::HeartBeat)) => {}
                Ok(None) => break,
                Err(e) => {
                    self.handle_decode_error(&e, now);
                    input.clear();
                    break;
                }
            }
        }
        alive
    }

    fn max_unit(&self) -> usize {
        max_frame_bytes(self.limits())
    }

    fn poll_transmit(&mut self, now: Instant, out: &mut Transmit) {
        let version = self.version();
        for item in self.take_output(now) {
            match item {
                Output::Frame(f) => codec::encode(&f, version, out.buf()),
                Output::HeartBeat => codec::encode_heartbeat(out.buf()),
            }
            out.end_unit();
        }
    }
}
