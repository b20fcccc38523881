//! MQTT 3.1 / 3.1.1 / 5.0 for Tributary: a sans-IO codec and channel.
//!
//! # Layout
//! - [`packet`]: control packets as plain data.
//! - [`codec`]: bytes ⇄ packets, with the maximum packet size enforced
//!   before any allocation.
//! - [`reason`]: reason codes, and their 3.x CONNACK equivalents.
//! - [`channel`]: one connection's state machine (CONNECT and
//!   authentication, PUBLISH both ways with held acknowledgements,
//!   SUBSCRIBE, DISCONNECT), calling the core.
//! - `connection`: the channel behind the core's connection contract, so
//!   the gateway's one stream driver runs it.

#![warn(missing_docs)]

pub mod channel;
pub mod codec;
mod connection;
pub mod packet;
pub mod reason;
