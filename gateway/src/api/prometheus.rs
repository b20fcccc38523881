//! `GET /api/v5/prometheus/stats`: the Prometheus text exposition format
//! (version 0.0.4). Counters end in `_total`; gauges do not. Per-listener
//! series carry `listener` (`tcp:default`) and `transport` labels; online
//! clients are counted per protocol.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::ApiState;

/// Metrics that are gauges (current values); the rest are counters.
const GAUGES: &[&str] = &[
    "connections",
    "sessions",
    "subscriptions",
    "retained",
    "store_disk_bytes",
];

fn help(name: &str) -> String {
    name.replace('_', " ")
}

/// Render every series.
pub fn render(state: &ApiState) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# HELP tributary_info Build information.");
    let _ = writeln!(out, "# TYPE tributary_info gauge");
    let _ = writeln!(
        out,
        "tributary_info{{version=\"{}\",node=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        escape(&state.node)
    );
    let _ = writeln!(out, "# HELP tributary_uptime_seconds Seconds since start.");
    let _ = writeln!(out, "# TYPE tributary_uptime_seconds gauge");
    let _ = writeln!(
        out,
        "tributary_uptime_seconds {}",
        state.started.elapsed().as_secs()
    );
    for (name, value) in state.broker.metrics().snapshot() {
        if GAUGES.contains(&name) {
            let _ = writeln!(out, "# HELP tributary_{name} {}.", help(name));
            let _ = writeln!(out, "# TYPE tributary_{name} gauge");
            let _ = writeln!(out, "tributary_{name} {value}");
        } else {
            let _ = writeln!(out, "# HELP tributary_{name}_total {}.", help(name));
            let _ = writeln!(out, "# TYPE tributary_{name}_total counter");
            let _ = writeln!(out, "tributary_{name}_total {value}");
        }
    }
    let mut by_protocol: BTreeMap<&str, u64> = BTreeMap::new();
    for (info, online, _) in state.broker.clients() {
        if online {
            *by_protocol.entry(info.protocol).or_default() += 1;
        }
    }
    let _ = writeln!(
        out,
        "# HELP tributary_clients_online Online clients by protocol."
    );
    let _ = writeln!(out, "# TYPE tributary_clients_online gauge");
    for (protocol, n) in &by_protocol {
        let _ = writeln!(
            out,
            "tributary_clients_online{{protocol=\"{protocol}\"}} {n}"
        );
    }
    let m = state.broker.metrics();
    family(
        &mut out,
        "messages_dropped_total",
        "counter",
        "Messages dropped, by reason.",
    );
    for (reason, counter) in [
        ("queue_full", &m.messages_dropped_queue_full),
        ("offline_qos0", &m.messages_dropped_offline_qos0),
        ("expired", &m.messages_dropped_expired),
        ("too_large", &m.messages_dropped_too_large),
        ("no_subscribers", &m.messages_no_subscribers),
        ("publish_denied", &m.publish_denied),
    ] {
        let _ = writeln!(
            out,
            "tributary_messages_dropped_total{{reason=\"{reason}\"}} {}",
            counter.load(Ordering::Relaxed)
        );
    }
    let by_protocol = m.by_protocol.snapshot();
    for (name, text, pick) in [
        (
            "protocol_messages_received_total",
            "Messages received from clients, by protocol and QoS.",
            0usize,
        ),
        (
            "protocol_messages_sent_total",
            "Messages sent to clients, by protocol and QoS.",
            1,
        ),
    ] {
        family(&mut out, name, "counter", text);
        for (protocol, qos, received, sent) in &by_protocol {
            let v = if pick == 0 { received } else { sent };
            let _ = writeln!(
                out,
                "tributary_{name}{{protocol=\"{protocol}\",qos=\"{qos}\"}} {v}"
            );
        }
    }
    let depths = state.broker.queue_depths();
    family(
        &mut out,
        "queued_messages",
        "gauge",
        "Messages waiting in session queues, by the sessions' protocol.",
    );
    for (protocol, queued, _) in &depths {
        let _ = writeln!(
            out,
            "tributary_queued_messages{{protocol=\"{protocol}\"}} {queued}"
        );
    }
    family(
        &mut out,
        "inflight_messages",
        "gauge",
        "Messages sent and awaiting acknowledgement, by the sessions' protocol.",
    );
    for (protocol, _, inflight) in &depths {
        let _ = writeln!(
            out,
            "tributary_inflight_messages{{protocol=\"{protocol}\"}} {inflight}"
        );
    }
    // One family per counter name, whichever gateways have it.
    type Series<'a> = (&'a str, Vec<(&'a str, u64)>);
    let mut gateway_series: BTreeMap<String, Series> = BTreeMap::new();
    for g in &state.gateways {
        for (name, gauge, value) in (g.snapshot)() {
            let (metric, kind) = if gauge {
                (format!("gateway_{name}"), "gauge")
            } else {
                (format!("gateway_{name}_total"), "counter")
            };
            gateway_series
                .entry(metric)
                .or_insert((kind, Vec::new()))
                .1
                .push((g.gateway, value));
        }
    }
    for (metric, (kind, values)) in &gateway_series {
        family(
            &mut out,
            metric,
            kind,
            &format!("Gateway counter {}.", help(metric)),
        );
        for (gateway, value) in values {
            let _ = writeln!(out, "tributary_{metric}{{gateway=\"{gateway}\"}} {value}");
        }
    }
    type Getter = fn(&crate::listener_stats::ListenerStats) -> u64;
    let series: [(&str, &str, &str, Getter); 4] = [
        (
            "listener_connections",
            "gauge",
            "Connections open on the listener.",
            |l| l.connections.load(Ordering::Relaxed),
        ),
        (
            "listener_accepted_total",
            "counter",
            "Connections served by the listener.",
            |l| l.accepted.load(Ordering::Relaxed),
        ),
        (
            "listener_refused_total",
            "counter",
            "Connections refused by the listener's limit or rate.",
            |l| l.refused.load(Ordering::Relaxed),
        ),
        (
            "listener_handshake_failures_total",
            "counter",
            "Failed TLS handshakes or WebSocket upgrades.",
            |l| l.handshake_failures.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, text, get) in series {
        let _ = writeln!(out, "# HELP tributary_{name} {text}");
        let _ = writeln!(out, "# TYPE tributary_{name} {kind}");
        for l in &state.listeners {
            let _ = writeln!(
                out,
                "tributary_{name}{{listener=\"{}\",transport=\"{}\"}} {}",
                escape(&l.label()),
                l.transport,
                get(l)
            );
        }
    }
    out
}

/// The HELP and TYPE lines of one metric family.
fn family(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP tributary_{name} {text}");
    let _ = writeln!(out, "# TYPE tributary_{name} {kind}");
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The handler.
pub async fn handler(State(state): State<ApiState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&state),
    )
        .into_response()
}
