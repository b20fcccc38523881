//! STOMP 1.0 / 1.1 / 1.2 for Tributary: a sans-IO codec and channel.
//!
//! # Layout
//! - [`frame`]: commands and frames as plain data.
//! - [`codec`]: bytes ⇄ frames per version (header escaping, `content-length`
//!   bodies with NULs, heart-beat EOLs), frame limits checked while the
//!   frame arrives.
//! - [`channel`]: one connection's state machine: CONNECT and version /
//!   heart-beat negotiation, SEND, SUBSCRIBE, ACK/NACK with the three ack
//!   modes, receipts, transactions, ERROR-then-close on violations.
//!
//! - [`connection`]: the channel behind the core's connection contract
//!   (decoding, encoding, what the driver waits for).
//!
//! Transports (TCP, TLS, WebSocket, SockJS) live in the gateway; its one
//! stream driver runs the same [`channel::Channel`] over each.

#![warn(missing_docs)]

pub mod channel;
pub mod codec;
pub mod connection;
pub mod frame;

pub use channel::{AckMode, Channel, ChannelConfig, Output, UnackedPolicy};
pub use codec::{decode, encode, DecodeError, Item, Limits, Version};
pub use frame::{Command, Frame};
