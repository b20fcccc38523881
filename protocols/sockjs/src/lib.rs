//! SockJS 0.3 for Tributary: framing and session state, transport-agnostic
//! and sans-IO (the gateway's HTTP server does the I/O and keeps the time).
//!
//! The annotated sockjs-protocol test suite is the specification; module
//! docs name the section each part implements.
//!
//! # Layout
//! - [`frame`]: server frames (`o`, `h`, `a[...]`, `c[...]`), JSON string
//!   escaping, per-transport wrapping and preludes, client payload parsing.
//! - [`route`]: the URL scheme below a service's base URL.
//! - [`session`]: one session's state: open frame, bounded outgoing queue,
//!   one receiver at a time, close and interruption, expiry.

#![warn(missing_docs)]

pub mod frame;
pub mod route;
pub mod session;

pub use frame::{parse_messages, PayloadError, Wrap};
pub use route::{route, Route, Transport};
pub use session::{Attach, Phase, QueueFull, Session};
