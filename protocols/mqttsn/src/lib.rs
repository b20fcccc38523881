//! MQTT-SN 1.2 for Tributary: a sans-IO codec, the per-client channel and
//! the gateway-level state, per *MQTT For Sensor Networks (MQTT-SN)
//! Protocol Specification Version 1.2* (IBM, 2013).
//!
//! # Layout
//! - [`packet`]: the 28 message types of §5.4 (and the forwarder
//!   encapsulation of §5.5) as plain data, with the flags of §5.3.4.
//! - [`codec`]: datagram ⇄ [`packet::Packet`], including the 3-byte long
//!   length form (§5.2.1). One datagram is one message: a truncated or
//!   over-long datagram is an error, never "need more".
//! - [`topics`]: the per-client topic registry (§6.5) and the global
//!   predefined topic ids.
//! - [`channel`]: one client's state machine: connect and will flow,
//!   QoS −1/0/1/2 both ways with retransmission, sleeping clients (§6.14),
//!   will updates, keep-alive; it calls the core [`tributary_core::Broker`].
//! - `connection`: the channel behind the core's connection contract, for
//!   the gateway's one datagram driver.
//! - [`gateway`]: what is not one client's: SEARCHGW/GWINFO (§6.1),
//!   ADVERTISE, QoS −1 publishes (§6.8), and the bounded client table
//!   with idle eviction.
//!
//! Nothing here reads a clock or touches a socket: time is passed in and
//! datagrams come and go through the gateway's UDP driver.

#![warn(missing_docs)]

pub mod channel;
pub mod codec;
mod connection;
pub mod gateway;
pub mod packet;
pub mod topics;
