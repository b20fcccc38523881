//! The result of one run: a flat record written as one JSON line on stdout
//! and as a human-readable table on stderr.
//!
//! Field meanings (units in the names): rates are per second of the
//! measured window; latency is end to end (publisher's send to
//! subscriber's read) in microseconds, over messages received inside the
//! window; lost / duplicated / out-of-order cover the whole run, warm-up
//! and drain included. `broker_*` fields are present when `--broker-pid`
//! was given.

use serde::{Deserialize, Serialize};

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// Errors of one (publisher, receiver) pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairErrors {
    /// Publisher index.
    pub publisher: usize,
    /// Receiver index (subscriber, or shared group).
    pub receiver: usize,
    /// Messages the publisher sent.
    pub sent: u64,
    /// Never received.
    pub lost: u64,
    /// Received more than once.
    pub duplicated: u64,
    /// Received after a higher sequence number.
    pub out_of_order: u64,
}

/// One run's result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BenchResult {
    /// Scenario name given with `--name` (compare.sh groups by it), else
    /// the scenario kind.
    pub name: String,
    /// `p2p`, `fanin`, `fanout`, `conns`, `mqttsn-in` or `coap-in`.
    pub scenario: String,
    /// Broker label given with `--label`.
    pub label: String,
    /// `3.1.1` or `5`.
    pub protocol: String,
    /// QoS of publishes and subscriptions.
    pub qos: u8,
    /// Payload bytes.
    pub payload: usize,
    /// Publishing connections.
    pub publishers: usize,
    /// Subscribing connections.
    pub subscribers: usize,
    /// Subscribers share one `$share/...` subscription.
    pub shared: bool,
    /// Target aggregate publish rate (msgs/s); `None` = flat out.
    pub rate_target: Option<u64>,
    /// Measured window, seconds.
    pub duration_s: f64,
    /// Warm-up, seconds.
    pub warmup_s: f64,
    /// Messages published over the whole run.
    pub sent: u64,
    /// Deliveries expected over the whole run (sent × receivers).
    pub expected: u64,
    /// Seconds from the end of the window until the drain ended.
    pub drain_s: f64,
    /// How the drain ended: `complete` (every expected delivery arrived),
    /// `quiet` (nothing arrived for a second: the rest is lost) or
    /// `deadline` (still receiving at `--drain-timeout`: `lost` then
    /// includes a backlog the broker had not delivered yet).
    pub drain_end: String,
    /// Deliveries received over the whole run, duplicates included.
    pub received: u64,
    /// Publishes per second in the window.
    pub sent_per_s: f64,
    /// Deliveries per second in the window.
    pub delivered_per_s: f64,
    /// End-to-end latency.
    pub latency_us: Option<Latency>,
    /// Expected deliveries never received.
    pub lost: u64,
    /// Deliveries received more than once.
    pub duplicated: u64,
    /// Deliveries received after a later message of the same publisher.
    pub out_of_order: u64,
    /// Deliveries from a publisher the subscriber should not hear from.
    pub misrouted: u64,
    /// Payloads without a valid stamp.
    pub corrupt: u64,
    /// QoS 1/2 publishes never acknowledged.
    pub unacked: u64,
    /// Pairs with any loss, duplication or reordering (at most 20).
    pub pairs_with_errors: Vec<PairErrors>,
    /// Connections opened (conns scenario: idle connections held).
    pub connections: u64,
    /// Connections that failed to open or were closed by the broker.
    pub connect_failures: u64,
    /// Connections per second while connecting (through CONNACK).
    pub connect_rate: f64,
    /// Broker CPU seconds (user + system) in the measured window.
    pub broker_cpu_s: Option<f64>,
    /// Broker CPU microseconds per delivered message in the window.
    pub broker_cpu_us_per_msg: Option<f64>,
    /// Broker RSS at the start (conns: before connecting), KiB.
    pub broker_rss_start_kib: Option<u64>,
    /// Broker RSS at the end (conns: after the hold), KiB.
    pub broker_rss_end_kib: Option<u64>,
    /// Broker RSS right after connecting (conns), KiB.
    pub broker_rss_connected_kib: Option<u64>,
    /// (RSS after holding the connections − RSS before) / connections.
    pub broker_rss_per_conn_bytes: Option<f64>,
    /// Broker CPU microseconds per connection while connecting (conns).
    pub broker_cpu_us_per_connect: Option<f64>,
    /// Gateway scenarios (`mqttsn-in`, `coap-in`): what the UDP
    /// publishers send, e.g. `MQTT-SN QoS 0, normal topic ids`; the MQTT
    /// side is `protocol` and `qos`.
    pub ingress: Option<String>,
    /// Gateway scenarios: datagrams the kernel dropped at the gateway's UDP
    /// socket during the run (its receive buffer was full), from the
    /// `drops` column of /proc/net/udp; `None` when the socket is not
    /// visible.
    pub gateway_udp_drops: Option<u64>,
    /// Gateway scenarios: answers to the publishes received by the
    /// publishers (MQTT-SN PUBACK, CoAP ACK or response), error answers
    /// included (those are also counted in `errors`).
    pub responses: Option<u64>,
    /// The load generator's CPU use in the window (1.0 = one full core).
    /// Near or above 1 with a single pinned core: the generator, not the
    /// broker, may have been the limit.
    pub bench_cpu_util: f64,
    /// Errors (connection failures, refused acks, early disconnects).
    pub errors: u64,
    /// The first few error messages.
    pub error_samples: Vec<String>,
    /// Seconds since the Unix epoch when the result was produced.
    pub unix_time: u64,
}

impl BenchResult {
    /// The JSON line.
    pub fn to_json_line(&self) -> String {
        // Serialising plain data cannot fail; keep a readable fallback.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A human-readable table of the interesting fields.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));
        if self.scenario == "conns" {
            row(
                "scenario",
                format!(
                    "{} ({}) against {}, MQTT {}",
                    self.name, self.scenario, self.label, self.protocol
                ),
            );
            row("connections", format!("{}", self.connections));
            row("connect failures", format!("{}", self.connect_failures));
            row("connect rate", format!("{:.0} conn/s", self.connect_rate));
            if let Some(v) = self.broker_rss_per_conn_bytes {
                row(
                    "broker RSS / conn",
                    format!("{:.0} B ({:.2} KiB)", v, v / 1024.0),
                );
            }
            if let (Some(a), Some(c), Some(b)) = (
                self.broker_rss_start_kib,
                self.broker_rss_connected_kib,
                self.broker_rss_end_kib,
            ) {
                row(
                    "broker RSS",
                    format!("{a} KiB before, {c} KiB connected, {b} KiB after hold"),
                );
            }
            if let Some(v) = self.broker_cpu_us_per_connect {
                row("broker CPU / connect", format!("{v:.1} µs"));
            }
        } else {
            row(
                "scenario",
                match &self.ingress {
                    Some(ingress) => format!(
                        "{} ({}) against {}: {} → MQTT {} QoS {}, {} B",
                        self.name,
                        self.scenario,
                        self.label,
                        ingress,
                        self.protocol,
                        self.qos,
                        self.payload
                    ),
                    None => format!(
                        "{} ({}) against {}, MQTT {}, QoS {}, {} B",
                        self.name, self.scenario, self.label, self.protocol, self.qos, self.payload
                    ),
                },
            );
            row(
                "clients",
                format!(
                    "{} publishers, {} subscribers{}",
                    self.publishers,
                    self.subscribers,
                    if self.shared { " (shared)" } else { "" }
                ),
            );
            row(
                "rate",
                match self.rate_target {
                    Some(r) => format!("fixed {r} msgs/s"),
                    None => String::from("flat out"),
                },
            );
            row(
                "window",
                format!(
                    "{:.1} s after {:.1} s warm-up",
                    self.duration_s, self.warmup_s
                ),
            );
            row("sent", format!("{:.0} msgs/s", self.sent_per_s));
            row("delivered", format!("{:.0} msgs/s", self.delivered_per_s));
            if let Some(l) = self.latency_us {
                row(
                    "latency",
                    format!(
                        "p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs",
                        l.p50, l.p99, l.p999, l.max
                    ),
                );
            }
            row(
                "integrity",
                format!(
                    "{} received of {} expected; lost {}, duplicated {}, out of order {}, \
                     misrouted {}, corrupt {}, unacked {}",
                    self.received,
                    self.expected,
                    self.lost,
                    self.duplicated,
                    self.out_of_order,
                    self.misrouted,
                    self.corrupt,
                    self.unacked
                ),
            );
            row(
                "drain",
                format!(
                    "{:.1} s, {}{}",
                    self.drain_s,
                    self.drain_end,
                    if self.drain_end == "deadline" {
                        " (still receiving: `lost` includes the undelivered backlog)"
                    } else {
                        ""
                    }
                ),
            );
            if let Some(v) = self.gateway_udp_drops {
                row(
                    "gateway UDP drops",
                    format!("{v} (kernel, receive buffer full)"),
                );
            }
            if let Some(v) = self.responses {
                row("responses", format!("{v}"));
            }
            if let Some(v) = self.broker_cpu_us_per_msg {
                row("broker CPU / msg", format!("{v:.2} µs"));
            }
            if let (Some(a), Some(b)) = (self.broker_rss_start_kib, self.broker_rss_end_kib) {
                row("broker RSS", format!("{a} KiB → {b} KiB"));
            }
            row("connect rate", format!("{:.0} conn/s", self.connect_rate));
        }
        if let Some(v) = self.broker_cpu_s {
            row("broker CPU", format!("{v:.2} s"));
        }
        if self.scenario != "conns" {
            row(
                "bench CPU",
                format!(
                    "{:.0} % of a core{}",
                    self.bench_cpu_util * 100.0,
                    if self.bench_cpu_util > 0.95 {
                        " (the load generator may be the limit)"
                    } else {
                        ""
                    }
                ),
            );
        }
        row("errors", format!("{}", self.errors));
        for e in &self.error_samples {
            row("  error", e.clone());
        }
        for p in &self.pairs_with_errors {
            row(
                "  pair",
                format!(
                    "publisher {} → receiver {}: sent {}, lost {}, dup {}, ooo {}",
                    p.publisher, p.receiver, p.sent, p.lost, p.duplicated, p.out_of_order
                ),
            );
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            out.push_str(&format!("  {k:<width$}  {v}\n"));
        }
        out
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Bounded list of error messages plus a total count.
#[derive(Debug, Default)]
pub struct ErrorLog {
    /// Total errors seen.
    pub count: u64,
    /// The first [`ErrorLog::KEEP`] messages.
    pub samples: Vec<String>,
}

impl ErrorLog {
    /// How many messages are kept.
    pub const KEEP: usize = 10;

    /// Count an error, keeping its message if there is room.
    pub fn push(&mut self, message: String) {
        self.count += 1;
        if self.samples.len() < Self::KEEP {
            self.samples.push(message);
        }
    }
}
