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
const GAUGES: &[&str] = &["connections", "sessions", "subscriptions", "retained"];

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
