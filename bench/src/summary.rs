//! Summaries over a JSON-lines file of results (what `compare.sh`
//! collects): for each scenario name and broker label, the median of the
//! rounds with min–max, and the ratio of the baseline broker's median to
//! each peer's.
//!
//! Ratios are always baseline / peer, whatever the metric's direction; the
//! `better` column says which way is good (`↑` higher, `↓` lower), so a
//! throughput ratio of 3.0 and a CPU-per-message ratio of 0.5 are both
//! wins.

use std::collections::BTreeMap;

use anyhow::Context;

use crate::report::BenchResult;

/// One metric extracted from a result.
struct Metric {
    name: &'static str,
    higher_is_better: bool,
    get: fn(&BenchResult) -> Option<f64>,
}

const METRICS: &[Metric] = &[
    Metric {
        name: "delivered msgs/s",
        higher_is_better: true,
        get: |r| (r.scenario != "conns").then_some(r.delivered_per_s),
    },
    Metric {
        name: "p50 latency µs",
        higher_is_better: false,
        get: |r| r.latency_us.map(|l| l.p50),
    },
    Metric {
        name: "p99 latency µs",
        higher_is_better: false,
        get: |r| r.latency_us.map(|l| l.p99),
    },
    Metric {
        name: "p99.9 latency µs",
        higher_is_better: false,
        get: |r| r.latency_us.map(|l| l.p999),
    },
    Metric {
        name: "broker CPU µs/msg",
        higher_is_better: false,
        get: |r| r.broker_cpu_us_per_msg,
    },
    Metric {
        name: "lost",
        higher_is_better: false,
        get: |r| (r.scenario != "conns").then_some(r.lost as f64),
    },
    Metric {
        name: "duplicated",
        higher_is_better: false,
        get: |r| (r.scenario != "conns").then_some(r.duplicated as f64),
    },
    Metric {
        name: "out of order",
        higher_is_better: false,
        get: |r| (r.scenario != "conns").then_some(r.out_of_order as f64),
    },
    Metric {
        name: "drain cut (1 = yes)",
        higher_is_better: false,
        get: |r| (r.scenario != "conns").then_some(f64::from(u8::from(r.drain_end == "deadline"))),
    },
    Metric {
        name: "connections held",
        higher_is_better: true,
        get: |r| (r.scenario == "conns").then_some(r.connections as f64),
    },
    Metric {
        name: "connect rate conn/s",
        higher_is_better: true,
        get: |r| (r.scenario == "conns").then_some(r.connect_rate),
    },
    Metric {
        name: "broker RSS B/conn",
        higher_is_better: false,
        get: |r| r.broker_rss_per_conn_bytes,
    },
    Metric {
        name: "bench CPU (cores)",
        higher_is_better: false,
        get: |r| (r.scenario != "conns").then_some(r.bench_cpu_util),
    },
    Metric {
        name: "errors",
        higher_is_better: false,
        get: |r| Some(r.errors as f64),
    },
];

/// Median, minimum and maximum of some values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// Median (mean of the two middle values for an even count).
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// How many values.
    pub n: usize,
}

impl Spread {
    /// `None` for no values.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }
}

/// Parse a JSON-lines file; lines that are not results are skipped with a
/// warning on stderr.
pub fn load(path: &std::path::Path) -> anyhow::Result<Vec<BenchResult>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut results = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str::<BenchResult>(line) {
            Ok(r) => results.push(r),
            Err(e) => eprintln!("{}:{}: skipped: {e}", path.display(), n + 1),
        }
    }
    Ok(results)
}

/// Compact number formatting for the table.
fn fmt(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The summary table: one row per (scenario name, metric), one column per
/// broker label, then baseline/peer ratios.
pub fn table(results: &[BenchResult], baseline: &str) -> String {
    let mut labels: Vec<String> = Vec::new();
    if results.iter().any(|r| r.label == baseline) {
        labels.push(baseline.to_owned());
    }
    let mut names: Vec<String> = Vec::new();
    for r in results {
        if !labels.contains(&r.label) {
            labels.push(r.label.clone());
        }
        if !names.contains(&r.name) {
            names.push(r.name.clone());
        }
    }
    let peers: Vec<&String> = labels.iter().filter(|l| *l != baseline).collect();
    let mut header = vec![
        String::from("scenario"),
        String::from("metric"),
        String::from("better"),
    ];
    for l in &labels {
        header.push(format!("{l} median [min–max] (n)"));
    }
    for p in &peers {
        header.push(format!("{baseline}/{p}"));
    }
    let mut rows = vec![header];
    for name in &names {
        let mut by_label: BTreeMap<&str, Vec<&BenchResult>> = BTreeMap::new();
        for r in results.iter().filter(|r| &r.name == name) {
            by_label.entry(r.label.as_str()).or_default().push(r);
        }
        for metric in METRICS {
            let spreads: Vec<Option<Spread>> = labels
                .iter()
                .map(|l| {
                    let values: Vec<f64> = by_label
                        .get(l.as_str())
                        .map(|rs| rs.iter().filter_map(|r| (metric.get)(r)).collect())
                        .unwrap_or_default();
                    Spread::of(&values)
                })
                .collect();
            if spreads.iter().all(Option::is_none) {
                continue;
            }
            let mut row = vec![
                name.clone(),
                metric.name.to_owned(),
                String::from(if metric.higher_is_better {
                    "↑"
                } else {
                    "↓"
                }),
            ];
            for s in &spreads {
                row.push(match s {
                    Some(s) => format!(
                        "{} [{}–{}] ({})",
                        fmt(s.median),
                        fmt(s.min),
                        fmt(s.max),
                        s.n
                    ),
                    None => String::from("-"),
                });
            }
            let base = spreads.first().copied().flatten();
            for (i, _) in peers.iter().enumerate() {
                let peer = spreads.get(i + 1).copied().flatten();
                row.push(match (base, peer) {
                    (Some(b), Some(p)) if p.median != 0.0 => format!("{:.2}", b.median / p.median),
                    _ => String::from("-"),
                });
            }
            rows.push(row);
        }
    }
    render(&rows)
}

/// Align columns with two spaces between them.
fn render(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let pad = widths[c].saturating_sub(cell.chars().count());
            line.push_str(cell);
            line.push_str(&" ".repeat(pad + 2));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, label: &str, rate: f64) -> BenchResult {
        BenchResult {
            name: name.to_owned(),
            scenario: String::from("p2p"),
            label: label.to_owned(),
            delivered_per_s: rate,
            ..BenchResult::default()
        }
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(
            Spread::of(&[3.0, 1.0, 2.0]).map(|s| (s.median, s.min, s.max)),
            Some((2.0, 1.0, 3.0))
        );
        assert_eq!(Spread::of(&[1.0, 4.0]).map(|s| s.median), Some(2.5));
        assert_eq!(Spread::of(&[]), None);
        let results = vec![
            result("p2p-q0", "mosquitto", 100.0),
            result("p2p-q0", "tributary", 300.0),
            result("p2p-q0", "tributary", 310.0),
            result("p2p-q0", "tributary", 290.0),
        ];
        let t = table(&results, "tributary");
        let line = t
            .lines()
            .find(|l| l.contains("delivered"))
            .expect("throughput row");
        assert!(line.contains("300 [290–310] (3)"), "{line}");
        assert!(line.trim_end().ends_with("3.00"), "{line}");
    }
}
