//! `tributary-bench`: a load generator that measures MQTT brokers, not
//! client libraries.
//!
//! It speaks MQTT 3.1.1 and 5 itself, on tokio, through the workspace's own
//! sans-IO codec (`tributary_mqtt::codec`), so the only third party in a
//! measurement is the broker. Scenarios follow the Open MQTT Benchmark
//! Suite: point-to-point, fan-in, fan-out and connection scale. Every run is
//! bounded in time and only ever targets a loopback address.
//!
//! # Layout
//! - [`options`]: run options, the loopback-only target check, duration and
//!   protocol parsing.
//! - [`payload`]: the 16-byte stamp (sequence number, publisher id, send
//!   time) at the front of every payload.
//! - [`wire`]: the minimal MQTT client: connect, subscribe, read packets,
//!   a pre-encoded PUBLISH template patched per message.
//! - [`seqcheck`]: per (publisher, receiver) sequence tracking: lost,
//!   duplicated and out-of-order messages.
//! - [`procstat`]: broker CPU time and RSS from `/proc`.
//! - [`traffic`]: the message scenarios (p2p, fan-in, fan-out): publishers,
//!   subscribers, warm-up, measured window and drain.
//! - [`gateway_in`]: the gateway ingress scenarios (`mqttsn-in`,
//!   `coap-in`): UDP publishers → the gateway → MQTT subscribers, with the
//!   receivers and accounting of [`traffic`].
//! - [`mqttsn`], [`coap`]: the datagrams those publishers send, written
//!   from the specifications (MQTT-SN 1.2, RFC 7252).
//! - [`conns`]: the connection-scale scenario (idle connections with
//!   keep-alive from several 127.0.0.x source addresses).
//! - [`store_eval`]: the embedded-engine evaluation (ADR 0015): the
//!   broker's storage write pattern against fjall and redb, no broker.
//! - [`report`]: the result record (one JSON line) and the human table.
//! - [`summary`]: medians, min–max and ratios over a JSON-lines file, for
//!   `compare.sh`.

#![warn(missing_docs)]

pub mod coap;
pub mod conns;
pub mod gateway_in;
pub mod mqttsn;
pub mod options;
pub mod payload;
pub mod procstat;
pub mod report;
pub mod seqcheck;
pub mod store_eval;
pub mod summary;
pub mod traffic;
pub mod wire;

pub use conns::{run_conns, ConnsOptions};
pub use gateway_in::{run_ingress, Ingress, IngressOptions};
pub use options::{parse_duration, resolve_loopback, Protocol, TrafficOptions};
pub use report::BenchResult;
pub use traffic::{run_traffic, Shape};
