//! Tributary's protocol-neutral core: everything that exists once, whatever
//! protocol a client speaks.
//!
//! # Layout
//! - [`message`]: [`Message`] (Arc'd, `Bytes` payload) and [`Delivery`].
//! - [`topic`]: topic name/filter validation, `$share` parsing, the
//!   brute-force matcher.
//! - [`trie`]: the topic-level trie behind subscriptions and retained messages.
//! - [`session`]: sessions, their bounded mailboxes and inflight windows,
//!   and the handle a connection holds.
//! - [`broker`]: the synchronous port channels call: open/close sessions,
//!   publish, subscribe, tick for wills and expiry.
//! - [`auth`]: `Authenticator` / `Authorizer` seams and the rule authorizer.
//! - [`metrics`]: counters read by the HTTP API and `$SYS`.
//! - [`storage`], [`cluster`]: persistence and cluster seams with in-process defaults.
#![warn(missing_docs)]

pub mod ack;
pub mod auth;
pub mod broker;
pub mod cluster;
pub mod connection;
pub mod intake;
mod mailbox;
pub mod message;
pub mod metrics;
mod restore;
mod routing;
pub mod session;
pub mod signal;
pub mod storage;
mod subscribe;
pub mod topic;
pub mod trie;

pub use broker::{
    Broker, BrokerConfig, CloseKind, OpenedSession, QueueStats, SessionRequest, SharedStrategy,
    SubscribeOutcome,
};
pub use message::{ClientId, Delivery, Message, MessageProperties, QoS};
pub use session::{
    ClientInfo, ConnectionSignal, KickReason, Outgoing, Resend, SessionHandle, SubOptions, Will,
};
