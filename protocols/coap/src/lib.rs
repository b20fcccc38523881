//! CoAP for Tributary (RFC 7252, RFC 7641 Observe, RFC 7959 block-wise),
//! with EMQX's `/ps` and `/mqtt/connection` resources. Sans-IO: datagrams
//! and time in, datagrams out.
//!
//! # Layout
//! Reusable layers (LwM2M builds on these; none knows about `/ps`):
//! - [`msg`]: messages, codes, options and tokens as plain data.
//! - [`codec`]: bytes ⇄ messages through `coap-lite`, with the format
//!   checks of RFC 7252 §3 and the ignore/reject classification of §4.
//! - [`layer`]: the per-peer message layer — deduplication, CON
//!   retransmission with back-off, ACK/RST matching, pings, ids, tokens.
//! - [`observe`]: per-peer observers, sequence numbers and notification
//!   flow control (one CON in flight, bounded queue keeping the newest).
//! - [`block`]: Block1/Block2 values, body assembly, and representations
//!   served block by block.
//!
//! The gateway on top:
//! - [`channel`]: one peer's state — its core session, its connection,
//!   its observers — and the single error-to-response point.
//! - `resources`: `/ps/{topic}`, `/mqtt/connection`, `/.well-known/core`.
//! - `connection`: the channel behind the core's connection contract, for
//!   the gateway's one datagram driver.
//! - [`query`]: query parameters (`clientid`/`c`, …) and percent-decoding.
//! - [`content`]: Content-Format ⇄ MQTT 5 content type and payload format.
#![warn(missing_docs)]

pub mod block;
pub mod channel;
pub mod codec;
mod connection;
pub mod content;
pub mod layer;
pub mod msg;
pub mod observe;
pub mod query;
mod resources;

pub use channel::{Channel, ChannelConfig, NotifyType, QosPolicy};
pub use layer::{MessageLayer, Received, TransmissionParams};
pub use msg::{Code, Message, MessageType, Token};
