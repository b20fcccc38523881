//! The connection-scale scenario: open K MQTT connections, keep them idle
//! (a PINGREQ every half keep-alive), and measure what they cost the
//! broker.
//!
//! ```text
//!  sample RSS ──▶ connect K (≤ concurrency at once, ──▶ sample ──▶ hold ──▶ sample ──▶ close
//!  and CPU         round robin over 127.0.0.1..N)        RSS/CPU    idle      RSS/CPU    all
//! ```
//!
//! One address has about 28 000 ephemeral ports (Linux default range
//! 32768–60999), so K beyond that needs `--sources N`: connection `i` binds
//! 127.0.0.(1 + i mod N) before connecting. All of 127.0.0.0/8 is local on
//! Linux; nothing needs configuring.
//!
//! Results: connect rate (connections through CONNACK per second), broker
//! RSS per idle connection ((RSS after the hold − RSS before) / K), broker
//! CPU per connect. Connections the broker refused or closed are counted
//! as failures. Every phase is bounded: each connect by a timeout, the
//! connect phase by [`CONNECT_PHASE_LIMIT`], the hold by `--hold`, and
//! closing by a few seconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tributary_mqtt::packet::{Disconnect, Packet, Properties};

use crate::options::{check_sources, is_allowed_target, source_address, Protocol};
use crate::procstat::{self, Pid, ProcSample};
use crate::report::{unix_time, BenchResult, ErrorLog};
use crate::wire::{self, Conn};

/// Longest the whole connect phase may take.
pub const CONNECT_PHASE_LIMIT: Duration = Duration::from_secs(600);

/// Options of the connection-scale scenario.
#[derive(Debug, Clone)]
pub struct ConnsOptions {
    /// Broker address (loopback only).
    pub target: std::net::SocketAddr,
    /// MQTT version.
    pub protocol: Protocol,
    /// Connections to open.
    pub count: usize,
    /// Loopback source addresses to spread them over.
    pub sources: usize,
    /// Keep-alive announced in CONNECT, seconds (PINGREQ at half).
    pub keep_alive: u16,
    /// How long to hold the connections idle before the final sample.
    pub hold: Duration,
    /// Connects in progress at once.
    pub concurrency: usize,
    /// Longest wait for one connection's CONNACK.
    pub connect_timeout: Duration,
    /// Broker process to sample.
    pub broker_pid: Option<u32>,
    /// Broker label for the result.
    pub label: String,
    /// Scenario name for the result.
    pub name: Option<String>,
    /// Print a progress line every second.
    pub progress: bool,
}

impl ConnsOptions {
    /// Defaults for everything but the target and count.
    pub fn new(target: std::net::SocketAddr, count: usize) -> ConnsOptions {
        ConnsOptions {
            target,
            protocol: Protocol::V311,
            count,
            sources: 1,
            keep_alive: 60,
            hold: Duration::from_secs(10),
            concurrency: 256,
            connect_timeout: Duration::from_secs(10),
            broker_pid: None,
            label: String::from("broker"),
            name: None,
            progress: true,
        }
    }
}

/// Counters shared by the connection tasks.
#[derive(Debug, Default)]
struct State {
    connected: AtomicU64,
    failed: AtomicU64,
    /// Connections the broker closed while they were held.
    dropped: AtomicU64,
    errors: Mutex<ErrorLog>,
}

impl State {
    fn error(&self, message: String) {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(message);
    }
}

/// Run the connection-scale scenario.
pub async fn run_conns(opts: &ConnsOptions) -> anyhow::Result<BenchResult> {
    if !is_allowed_target(opts.target.ip()) {
        bail!("refusing non-loopback target {}", opts.target);
    }
    check_sources(opts.target, opts.sources)?;
    if opts.count == 0 || opts.count > 1_000_000 {
        bail!("--count must be between 1 and 1000000");
    }
    if opts.concurrency == 0 {
        bail!("--concurrency must be positive");
    }
    if let Some(limit) = procstat::open_files_limit() {
        if opts.count as u64 + 64 > limit {
            bail!(
                "{} connections need more open files than this process may have ({limit}): \
                 raise `ulimit -n` (the hard limit caps it) or lower --count",
                opts.count
            );
        }
    }
    let ephemeral = 28_000 * opts.sources;
    if opts.count > ephemeral {
        eprintln!(
            "warning: {} connections from {} source address(es) may exhaust ephemeral ports \
             (about 28000 each); consider --sources {}",
            opts.count,
            opts.sources,
            opts.count.div_ceil(28_000)
        );
    }
    let version = opts.protocol.version();
    let run = format!(
        "{:x}{:04x}",
        std::process::id() & 0xfff,
        unix_time() & 0xffff
    );
    let broker = |what: &str| -> Option<ProcSample> {
        let pid = opts.broker_pid?;
        match procstat::sample(Pid::Other(pid)) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("warning: cannot sample the broker {what}: {e:#}");
                None
            }
        }
    };

    let before = broker("before connecting");
    let state = Arc::new(State::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let limit = Arc::new(Semaphore::new(opts.concurrency));
    let ping_every = Duration::from_secs(u64::from(opts.keep_alive.max(2)) / 2);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..opts.count {
        let state = state.clone();
        let limit = limit.clone();
        let stop = stop_rx.clone();
        let target = opts.target;
        let source = source_address(target, i, opts.sources);
        let client_id = format!("tb{run}-c{i}");
        let keep_alive = opts.keep_alive;
        let timeout = opts.connect_timeout;
        tasks.spawn(async move {
            let conn = {
                let _permit = limit.acquire_owned().await;
                wire::open(target, source, version, &client_id, keep_alive, timeout).await
            };
            match conn {
                Ok(conn) => {
                    state.connected.fetch_add(1, Ordering::Relaxed);
                    hold(conn, stop, ping_every, &state).await;
                }
                Err(e) => {
                    state.failed.fetch_add(1, Ordering::Relaxed);
                    state.error(format!("{client_id} via {source:?}: {e:#}"));
                }
            }
        });
    }

    // Connect phase.
    let deadline = started + CONNECT_PHASE_LIMIT;
    let mut next_progress = started + Duration::from_secs(1);
    loop {
        let done = state.connected.load(Ordering::Relaxed) + state.failed.load(Ordering::Relaxed);
        if done >= opts.count as u64 {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            state.error(format!(
                "connect phase cut at {} s with {done} of {} done",
                CONNECT_PHASE_LIMIT.as_secs(),
                opts.count
            ));
            break;
        }
        if opts.progress && now >= next_progress {
            progress(&state, started, "connect");
            next_progress += Duration::from_secs(1);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_elapsed = started.elapsed();
    let connected = state.connected.load(Ordering::Relaxed);
    let after_connect = broker("after connecting");

    // Hold.
    let hold_end = Instant::now() + opts.hold;
    let hold_started = Instant::now();
    while Instant::now() < hold_end {
        let step = hold_end
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(1));
        tokio::time::sleep(step).await;
        if opts.progress {
            progress(&state, hold_started, "hold");
        }
    }
    let after_hold = broker("after the hold");

    // Close everything, bounded.
    let _ = stop_tx.send(true);
    let close_deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !tasks.is_empty() {
        match tokio::time::timeout_at(close_deadline, tasks.join_next()).await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                state.error(format!("{} connections did not close in time", tasks.len()));
                tasks.abort_all();
                break;
            }
        }
    }

    let failed = state.failed.load(Ordering::Relaxed);
    let dropped = state.dropped.load(Ordering::Relaxed);
    let mut result = BenchResult {
        name: opts.name.clone().unwrap_or_else(|| String::from("conns")),
        scenario: String::from("conns"),
        label: opts.label.clone(),
        protocol: opts.protocol.name().to_owned(),
        duration_s: opts.hold.as_secs_f64(),
        connections: connected,
        connect_failures: failed + dropped,
        connect_rate: connected as f64 / connect_elapsed.as_secs_f64().max(1e-9),
        unix_time: unix_time(),
        ..BenchResult::default()
    };
    if let (Some(b), Some(c), Some(h)) = (before, after_connect, after_hold) {
        result.broker_rss_start_kib = Some(b.rss_kib);
        result.broker_rss_connected_kib = Some(c.rss_kib);
        result.broker_rss_end_kib = Some(h.rss_kib);
        result.broker_cpu_s = Some((h.cpu_s - b.cpu_s).max(0.0));
        if connected > 0 {
            let grown = h.rss_kib.saturating_sub(b.rss_kib) as f64 * 1024.0;
            result.broker_rss_per_conn_bytes = Some(grown / connected as f64);
            result.broker_cpu_us_per_connect =
                Some((c.cpu_s - b.cpu_s).max(0.0) * 1e6 / connected as f64);
        }
    }
    let log = state.errors.lock().unwrap_or_else(|e| e.into_inner());
    result.errors = log.count;
    result.error_samples = log.samples.clone();
    Ok(result)
}

fn progress(state: &State, since: Instant, phase: &str) {
    eprintln!(
        "[{:>5.1}s {phase:<7}] connected {}  failed {}  dropped by broker {}",
        since.elapsed().as_secs_f64(),
        state.connected.load(Ordering::Relaxed),
        state.failed.load(Ordering::Relaxed),
        state.dropped.load(Ordering::Relaxed),
    );
}

/// Keep one connection idle: PINGREQ every `ping_every`, read whatever
/// comes back, until told to stop or the broker closes it.
async fn hold(
    mut conn: Conn,
    mut stop: watch::Receiver<bool>,
    ping_every: Duration,
    state: &State,
) {
    let mut next_ping = tokio::time::Instant::now() + ping_every;
    loop {
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            read = conn.read() => match read {
                Ok(Some(Packet::Disconnect(d))) => {
                    state.dropped.fetch_add(1, Ordering::Relaxed);
                    state.error(format!("broker sent DISCONNECT 0x{:02X} to an idle connection", d.reason));
                    return;
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    state.dropped.fetch_add(1, Ordering::Relaxed);
                    state.error(String::from("broker closed an idle connection"));
                    return;
                }
                Err(e) => {
                    state.dropped.fetch_add(1, Ordering::Relaxed);
                    state.error(format!("idle connection: {e:#}"));
                    return;
                }
            },
            _ = tokio::time::sleep_until(next_ping) => {
                next_ping += ping_every;
                if let Err(e) = conn.send(&Packet::PingReq).await {
                    state.dropped.fetch_add(1, Ordering::Relaxed);
                    state.error(format!("idle connection: PINGREQ: {e:#}"));
                    return;
                }
            }
        }
    }
    let bye = Packet::Disconnect(Disconnect {
        reason: 0,
        properties: Properties::default(),
    });
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.send(&bye)).await;
}
