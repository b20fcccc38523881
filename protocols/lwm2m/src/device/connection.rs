//! The LwM2M [`Device`] behind the core's connection contract
//! ([`tributary_core::connection`]), for the gateway's datagram driver.
//!
//! A device needs no pre-authentication budget (registering is its
//! authentication, checked on the Register itself) and has no idle window
//! of the driver's: its registration lifetime is protocol logic, enforced
//! in [`Device::handle_timeout`]. What the driver hands it is a datagram,
//! or an Update / De-register the demultiplexer forwarded from another
//! address of the same endpoint ([`DeviceInput`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::debug;
use tributary_core::auth::{AuthFuture, AuthOutcome};
use tributary_core::connection::{
    CommitWait, Connection, DatagramConnection, Limit, PreAuthBudget, ReadHold, Transmit,
};
use tributary_core::session::Session;
use tributary_core::{CloseKind, ConnectionSignal};

use super::{Device, Remote};

/// What the datagram driver hands a [`Device`].
#[derive(Debug, Clone)]
pub enum DeviceInput {
    /// A datagram from the device's address.
    Datagram(Bytes),
    /// An Update or De-register for this device's registration that
    /// arrived from another address (see [`super::Directory`]).
    Remote(Remote),
}

impl Device {
    /// The driver enforced `limit`: the registration ends (its
    /// de-register event says why) and the session closes.
    pub fn handle_limit(&mut self, limit: Limit, now: Instant) {
        debug!(peer = %self.peer, ep = ?self.endpoint(), limit = limit.name(), "device dropped");
        self.clock = now;
        self.drop_registration(
            Some(CloseKind::Normal {
                publish_will: false,
            }),
            limit.name(),
            now,
        );
    }
}

impl Connection for Device {
    fn protocol(&self) -> &'static str {
        "lwm2m"
    }

    fn client_id(&self) -> Option<&str> {
        self.endpoint()
    }

    fn handle_timeout(&mut self, now: Instant) {
        Device::handle_timeout(self, now);
    }

    fn handle_wake(&mut self, now: Instant) {
        Device::handle_wake(self, now);
    }

    fn handle_commit(&mut self, _now: Instant) {
        // Nothing of the device's waits for the store.
    }

    fn handle_auth(&mut self, _outcome: AuthOutcome, _now: Instant) {
        // A Register is authenticated synchronously: no decision is awaited.
    }

    fn handle_limit(&mut self, limit: Limit, now: Instant) {
        Device::handle_limit(self, limit, now);
    }

    fn shutdown(&mut self, now: Instant) {
        Device::shutdown(self, now);
    }

    fn finish(&mut self, now: Instant) {
        Device::finish(self, now);
    }

    fn is_closed(&self) -> bool {
        // A peer is forgotten when idle, never "closed".
        false
    }

    fn has_output(&self) -> bool {
        Device::has_output(self)
    }

    fn next_deadline(&self) -> Option<Instant> {
        Device::next_deadline(self)
    }

    fn read_hold(&self) -> ReadHold {
        if self.is_congested() {
            ReadHold::Held
        } else if let Some(until) = self.throttled_until() {
            ReadHold::Until(until)
        } else {
            ReadHold::Open
        }
    }

    fn take_auth(&mut self) -> Option<AuthFuture> {
        None
    }

    fn take_congestion(&mut self) -> Vec<Arc<Session>> {
        Device::take_congestion(self)
    }

    fn commit_wait(&self) -> Option<CommitWait> {
        None
    }

    fn signal(&self) -> Option<Arc<ConnectionSignal>> {
        Device::signal(self)
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
        // The registration lifetime is the device's own timer.
        None
    }
}

impl DatagramConnection for Device {
    type Input = DeviceInput;

    fn handle_datagram(&mut self, input: DeviceInput, now: Instant) -> bool {
        match input {
            DeviceInput::Datagram(data) => Device::handle_datagram(self, &data, now),
            DeviceInput::Remote(op) => {
                // The device spoke, from another address.
                self.handle_remote(op, now);
                true
            }
        }
    }

    fn poll_transmit(&mut self, _now: Instant, out: &mut Transmit) {
        for datagram in self.take_output() {
            out.push_unit(&datagram);
        }
    }

    fn is_idle(&self) -> bool {
        Device::is_idle(self)
    }

    fn evict(&mut self, now: Instant) {
        Device::finish(self, now);
    }
}
