//! MQTT 3.1 / 3.1.1 / 5.0 for Tributary: a sans-IO codec and channel.
//!
//! # Layout
//! - [`packet`]: control packets as plain data.
//! - [`codec`]: bytes ⇄ packets, with the maximum packet size enforced
//!   before any allocation.

#![warn(missing_docs)]

pub mod channel;
pub mod codec;
pub mod packet;
pub mod reason;
