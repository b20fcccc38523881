//! The message scenarios: point-to-point, fan-in and fan-out.
//!
//! ```text
//!  setup ──▶ warm-up ──▶ measured window ──▶ drain ──▶ report
//!  connect    publish      publish; sample     publishers wait for acks;
//!  all,       (counted     broker CPU/RSS at   subscribers read until all
//!  subscribe  for loss     both ends; count    expected messages arrived,
//!             only)        deliveries and      1 s of silence, or the
//!                          latency             drain timeout
//! ```
//!
//! Every connection gets its own task. A publisher splits its socket: the
//! writer paces (or not) and batches PUBLISH packets, the reader takes
//! PUBACK / PUBREC / PUBCOMP and returns inflight permits (a semaphore of
//! `--inflight` permits, capped by an MQTT 5 broker's Receive Maximum). A
//! subscriber reads, stamps each batch with one clock reading, records
//! sequence numbers and latency, and answers with PUBACK / PUBREC /
//! PUBCOMP in one write per read.
//!
//! Bounds: publishing stops at the end of the window; every later wait
//! (acks, deliveries, socket writes, task joins) has a deadline derived
//! from `--drain-timeout`; channels between a publisher's reader and writer
//! hold at most one entry per inflight message.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::BytesMut;
use hdrhistogram::Histogram;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tributary_mqtt::codec::decode;
use tributary_mqtt::packet::{Disconnect, Packet, Properties, ProtocolVersion, QoS};

use crate::options::{source_address, TrafficOptions};
use crate::payload::Stamp;
use crate::procstat::{self, Pid, ProcSample};
use crate::report::{unix_time, BenchResult, ErrorLog, Latency, PairErrors};
use crate::seqcheck::SeqTracker;
use crate::wire::{self, encode_into, Conn, PublishTemplate, MAX_PACKET, READ_CHUNK};

/// How connections are wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `pairs` publishers, each with its own topic and its own subscriber.
    P2p {
        /// Publisher/subscriber pairs.
        pairs: usize,
    },
    /// Many publishers on distinct topics, few subscribers on a wildcard
    /// (each gets everything) or on one shared subscription (the group
    /// gets everything once).
    FanIn {
        /// Publishers.
        publishers: usize,
        /// Subscribers.
        subscribers: usize,
        /// Subscribe with `$share/<group>/...`.
        shared: bool,
    },
    /// Few publishers on one topic, many subscribers each getting
    /// everything.
    FanOut {
        /// Publishers.
        publishers: usize,
        /// Subscribers.
        subscribers: usize,
    },
}

impl Shape {
    /// The scenario kind in reports.
    pub fn kind(self) -> &'static str {
        match self {
            Shape::P2p { .. } => "p2p",
            Shape::FanIn { .. } => "fanin",
            Shape::FanOut { .. } => "fanout",
        }
    }
}

/// Longest wait for one connection's CONNACK or SUBACK during setup.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections opened at the same time during setup.
const SETUP_CONCURRENCY: usize = 64;

/// A drain ends early after this long without a new delivery.
const QUIET: Duration = Duration::from_secs(1);

/// Topics, filters and who should receive what.
#[derive(Debug)]
struct Plan {
    /// Topic of each publisher.
    pub_topics: Vec<String>,
    /// Filter of each subscriber.
    sub_filters: Vec<String>,
    /// Receiver index of each subscriber (the group, for shared ones).
    sub_receiver: Vec<usize>,
    /// Publishers each receiver should hear from (every message once).
    receiver_pubs: Vec<Vec<usize>>,
    shared: bool,
}

impl Plan {
    fn new(shape: Shape, run: &str) -> anyhow::Result<Plan> {
        let plan = match shape {
            Shape::P2p { pairs } => Plan {
                pub_topics: (0..pairs).map(|i| format!("bench/{run}/p2p/{i}")).collect(),
                sub_filters: (0..pairs).map(|i| format!("bench/{run}/p2p/{i}")).collect(),
                sub_receiver: (0..pairs).collect(),
                receiver_pubs: (0..pairs).map(|i| vec![i]).collect(),
                shared: false,
            },
            Shape::FanIn {
                publishers,
                subscribers,
                shared,
            } => {
                let filter = if shared {
                    format!("$share/g{run}/bench/{run}/fanin/+")
                } else {
                    format!("bench/{run}/fanin/+")
                };
                let receivers = if shared { 1 } else { subscribers };
                Plan {
                    pub_topics: (0..publishers)
                        .map(|i| format!("bench/{run}/fanin/{i}"))
                        .collect(),
                    sub_filters: vec![filter; subscribers],
                    sub_receiver: (0..subscribers)
                        .map(|i| if shared { 0 } else { i })
                        .collect(),
                    receiver_pubs: vec![(0..publishers).collect(); receivers],
                    shared,
                }
            }
            Shape::FanOut {
                publishers,
                subscribers,
            } => {
                let topic = format!("bench/{run}/fanout");
                Plan {
                    pub_topics: vec![topic.clone(); publishers],
                    sub_filters: vec![topic; subscribers],
                    sub_receiver: (0..subscribers).collect(),
                    receiver_pubs: vec![(0..publishers).collect(); subscribers],
                    shared: false,
                }
            }
        };
        if plan.pub_topics.is_empty() || plan.sub_filters.is_empty() {
            bail!("a scenario needs at least one publisher and one subscriber");
        }
        if plan.pub_topics.len() > 100_000 || plan.sub_filters.len() > 100_000 {
            bail!("at most 100000 publishers and 100000 subscribers");
        }
        Ok(plan)
    }
}

/// State shared by all tasks of a run.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Time zero for payload stamps; publishing starts here.
    pub(crate) epoch: Instant,
    /// Start of the measured window.
    pub(crate) window_start: Instant,
    /// End of the measured window; publishing stops here.
    pub(crate) window_end: Instant,
    /// Hard deadline for anything after the window.
    pub(crate) drain_deadline: Instant,
    /// Messages each publisher has written (announced before the write, so
    /// a subscriber can reject sequence numbers that were never sent).
    pub(crate) sent: Vec<AtomicU32>,
    /// Deliveries received, all subscribers (progress and drain).
    pub(crate) delivered: AtomicU64,
    /// Publishes written, all publishers (progress).
    pub(crate) published: AtomicU64,
    pub(crate) errors: Mutex<ErrorLog>,
}

impl Shared {
    /// The shared state of a run whose publishing starts now: `warmup`,
    /// then the measured window of `duration`, then at most
    /// `drain_timeout`.
    pub(crate) fn new(
        publishers: usize,
        warmup: Duration,
        duration: Duration,
        drain_timeout: Duration,
    ) -> Shared {
        let epoch = Instant::now();
        let window_start = epoch + warmup;
        let window_end = window_start + duration;
        Shared {
            epoch,
            window_start,
            window_end,
            drain_deadline: window_end + drain_timeout,
            sent: (0..publishers).map(|_| AtomicU32::new(0)).collect(),
            delivered: AtomicU64::new(0),
            published: AtomicU64::new(0),
            errors: Mutex::new(ErrorLog::default()),
        }
    }

    /// Nanoseconds since the epoch, for payload stamps.
    pub(crate) fn now_ns(&self) -> u64 {
        Instant::now().duration_since(self.epoch).as_nanos() as u64
    }

    pub(crate) fn error(&self, message: String) {
        let mut log = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        log.push(message);
    }
}

/// What one subscriber saw.
#[derive(Debug)]
pub(crate) struct SubOutcome {
    /// Per publisher (indexed by publisher id).
    trackers: Vec<SeqTracker>,
    /// Latency in ns of deliveries received inside the window.
    latency: Histogram<u64>,
    /// Deliveries received inside the window.
    in_window: u64,
    misrouted: u64,
    corrupt: u64,
}

/// What one publisher did.
#[derive(Debug, Default)]
struct PubOutcome {
    /// Messages written.
    sent: u32,
    /// Messages written inside the window.
    sent_in_window: u64,
    /// QoS 1/2 messages never acknowledged.
    unacked: u64,
}

/// Per-publisher settings derived from the options.
#[derive(Debug, Clone)]
struct PubSettings {
    qos: QoS,
    /// Messages per second for this publisher; `None` = flat out.
    rate: Option<f64>,
    batch: usize,
    inflight: usize,
    keep_alive: Duration,
}

/// Run a message scenario and return its result. Errors only when setup
/// fails (a connection or subscription refused); problems during the run
/// are counted in the result.
pub async fn run_traffic(shape: Shape, opts: &TrafficOptions) -> anyhow::Result<BenchResult> {
    opts.validate()?;
    let run = run_id();
    let plan = Plan::new(shape, &run)?;
    let version = opts.protocol.version();
    let n_pubs = plan.pub_topics.len();
    let n_subs = plan.sub_filters.len();
    if let Some(limit) = procstat::open_files_limit() {
        if (n_pubs + n_subs) as u64 + 64 > limit {
            bail!(
                "{} connections need more open files than the limit {limit}: raise `ulimit -n`",
                n_pubs + n_subs
            );
        }
    }

    // Setup: open every connection, then subscribe.
    let connect_started = Instant::now();
    let mut ids = Vec::with_capacity(n_subs + n_pubs);
    ids.extend((0..n_subs).map(|i| format!("tb{run}-s{i}")));
    ids.extend((0..n_pubs).map(|i| format!("tb{run}-p{i}")));
    let mut conns = open_all(opts, version, ids).await?;
    let connect_elapsed = connect_started.elapsed();
    let pub_conns = conns.split_off(n_subs);
    let mut sub_conns = conns;
    let mut granted_lower = 0;
    {
        let mut set = JoinSet::new();
        for (i, mut conn) in sub_conns.drain(..).enumerate() {
            let filter = plan.sub_filters[i].clone();
            let qos = opts.qos;
            set.spawn(async move {
                let granted = conn.subscribe(&filter, qos, 1, SETUP_TIMEOUT).await;
                (i, conn, granted)
            });
        }
        let mut ordered: Vec<Option<Conn>> = (0..n_subs).map(|_| None).collect();
        while let Some(joined) = set.join_next().await {
            let (i, conn, granted) = joined.context("subscribe task")?;
            let granted = granted.with_context(|| format!("subscriber {i}"))?;
            if granted < opts.qos {
                granted_lower += 1;
            }
            ordered[i] = Some(conn);
        }
        sub_conns = ordered.into_iter().flatten().collect();
    }

    // Timeline.
    let shared = Arc::new(Shared::new(
        n_pubs,
        opts.warmup,
        opts.duration,
        opts.drain_timeout,
    ));
    let (window_start, window_end) = (shared.window_start, shared.window_end);
    if granted_lower > 0 {
        shared.error(format!(
            "{granted_lower} subscriptions granted below QoS {}",
            opts.qos as u8
        ));
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let keep_alive = Duration::from_secs(u64::from(opts.keep_alive));
    let mut subscribers = Vec::with_capacity(n_subs);
    for (i, conn) in sub_conns.into_iter().enumerate() {
        let expects = {
            let mut e = vec![false; n_pubs];
            for &p in &plan.receiver_pubs[plan.sub_receiver[i]] {
                e[p] = true;
            }
            e
        };
        subscribers.push(tokio::spawn(subscriber(
            shared.clone(),
            conn,
            expects,
            stop_rx.clone(),
            keep_alive,
        )));
    }
    let settings = PubSettings {
        qos: opts.qos,
        rate: opts.rate.map(|r| r as f64 / n_pubs as f64),
        batch: opts.batch,
        inflight: opts.inflight,
        keep_alive,
    };
    let mut publishers = Vec::with_capacity(n_pubs);
    for (i, conn) in pub_conns.into_iter().enumerate() {
        let template = PublishTemplate::new(&plan.pub_topics[i], opts.qos, opts.payload, version)?;
        publishers.push(tokio::spawn(publisher(
            shared.clone(),
            i,
            conn,
            template,
            settings.clone(),
        )));
    }
    let progress = opts
        .progress
        .then(|| tokio::spawn(progress_lines(shared.clone())));

    // Measured window.
    tokio::time::sleep_until(window_start.into()).await;
    let broker_start = opts.broker_pid.map(|p| procstat::sample(Pid::Other(p)));
    let self_start = procstat::sample(Pid::SelfProcess).ok();
    tokio::time::sleep_until(window_end.into()).await;
    let broker_end = opts.broker_pid.map(|p| procstat::sample(Pid::Other(p)));
    let self_end = procstat::sample(Pid::SelfProcess).ok();

    // Drain: publishers finish (acks), then subscribers until complete.
    let join_deadline = shared.drain_deadline + Duration::from_secs(2);
    let mut pub_outcomes = Vec::with_capacity(n_pubs);
    for (i, handle) in publishers.into_iter().enumerate() {
        match tokio::time::timeout_at(join_deadline.into(), handle).await {
            Ok(Ok(outcome)) => pub_outcomes.push(outcome),
            Ok(Err(e)) => {
                shared.error(format!("publisher {i} task failed: {e}"));
                pub_outcomes.push(PubOutcome {
                    sent: shared.sent[i].load(Ordering::Acquire),
                    ..PubOutcome::default()
                });
            }
            Err(_) => {
                shared.error(format!("publisher {i} did not finish in time"));
                pub_outcomes.push(PubOutcome {
                    sent: shared.sent[i].load(Ordering::Acquire),
                    ..PubOutcome::default()
                });
            }
        }
    }
    let sent: Vec<u32> = pub_outcomes.iter().map(|o| o.sent).collect();
    let expected: u64 = plan
        .receiver_pubs
        .iter()
        .flat_map(|pubs| pubs.iter().map(|&p| u64::from(sent[p])))
        .sum();
    let drain_end = wait_for_deliveries(&shared, expected).await;
    let drain_s = Instant::now()
        .saturating_duration_since(window_end)
        .as_secs_f64();
    let _ = stop_tx.send(true);
    let sub_outcomes = join_subscribers(&shared, subscribers).await;
    if let Some(p) = progress {
        p.abort();
    }

    // Results.
    let mut result = BenchResult {
        name: opts.name.clone().unwrap_or_else(|| shape.kind().to_owned()),
        scenario: shape.kind().to_owned(),
        label: opts.label.clone(),
        protocol: opts.protocol.name().to_owned(),
        qos: opts.qos as u8,
        payload: opts.payload,
        publishers: n_pubs,
        subscribers: n_subs,
        shared: plan.shared,
        rate_target: opts.rate,
        duration_s: opts.duration.as_secs_f64(),
        warmup_s: opts.warmup.as_secs_f64(),
        sent: sent.iter().map(|&s| u64::from(s)).sum(),
        expected,
        drain_s,
        drain_end: drain_end.to_owned(),
        connections: (n_pubs + n_subs) as u64,
        connect_rate: (n_pubs + n_subs) as f64 / connect_elapsed.as_secs_f64().max(1e-9),
        unix_time: unix_time(),
        ..BenchResult::default()
    };
    let window_s = opts.duration.as_secs_f64();
    result.sent_per_s = pub_outcomes
        .iter()
        .map(|o| o.sent_in_window as f64)
        .sum::<f64>()
        / window_s;
    result.unacked = pub_outcomes.iter().map(|o| o.unacked).sum();
    let in_window = summarize_deliveries(
        &mut result,
        &plan.receiver_pubs,
        &plan.sub_receiver,
        &sub_outcomes,
        &sent,
        &shared,
    );
    apply_usage(
        &mut result,
        broker_start,
        broker_end,
        self_start,
        self_end,
        in_window,
        window_s,
    );
    finish_errors(&mut result, &shared);
    Ok(result)
}

/// Stop-signalled subscribers' outcomes, each joined within 3 s.
pub(crate) async fn join_subscribers(
    shared: &Shared,
    subscribers: Vec<tokio::task::JoinHandle<SubOutcome>>,
) -> Vec<Option<SubOutcome>> {
    let mut sub_outcomes = Vec::with_capacity(subscribers.len());
    for (i, handle) in subscribers.into_iter().enumerate() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        match tokio::time::timeout_at(deadline, handle).await {
            Ok(Ok(outcome)) => sub_outcomes.push(Some(outcome)),
            Ok(Err(e)) => {
                shared.error(format!("subscriber {i} task failed: {e}"));
                sub_outcomes.push(None);
            }
            Err(_) => {
                shared.error(format!("subscriber {i} did not stop in time"));
                sub_outcomes.push(None);
            }
        }
    }
    sub_outcomes
}

/// Copy the error log into the result.
pub(crate) fn finish_errors(result: &mut BenchResult, shared: &Shared) {
    let log = shared.errors.lock().unwrap_or_else(|e| e.into_inner());
    result.errors += log.count;
    result.error_samples.extend(log.samples.iter().cloned());
}

/// Fill deliveries, latency, loss, duplication and order into `result`
/// from the subscribers' outcomes; returns the deliveries received inside
/// the window. `receiver_pubs[r]`: the publishers receiver `r` should hear
/// from; `sub_receiver[s]`: the receiver subscriber `s` belongs to;
/// `sent[p]`: messages publisher `p` sent.
pub(crate) fn summarize_deliveries(
    result: &mut BenchResult,
    receiver_pubs: &[Vec<usize>],
    sub_receiver: &[usize],
    sub_outcomes: &[Option<SubOutcome>],
    sent: &[u32],
    shared: &Shared,
) -> u64 {
    let window_s = result.duration_s;
    let mut latency = new_histogram();
    let mut in_window = 0;
    for outcome in sub_outcomes.iter().flatten() {
        in_window += outcome.in_window;
        result.misrouted += outcome.misrouted;
        result.corrupt += outcome.corrupt;
        result.received += outcome.trackers.iter().map(|t| t.received).sum::<u64>();
        if latency.add(&outcome.latency).is_err() {
            shared.error(String::from("latency histograms could not be merged"));
        }
    }
    result.delivered_per_s = in_window as f64 / window_s;
    if !latency.is_empty() {
        let us = |ns: u64| ns as f64 / 1000.0;
        result.latency_us = Some(Latency {
            p50: us(latency.value_at_quantile(0.50)),
            p99: us(latency.value_at_quantile(0.99)),
            p999: us(latency.value_at_quantile(0.999)),
            max: us(latency.max()),
            mean: latency.mean() / 1000.0,
        });
    }
    // Loss, duplication and order per (publisher, receiver).
    for (receiver, pubs) in receiver_pubs.iter().enumerate() {
        let members: Vec<&SubOutcome> = sub_outcomes
            .iter()
            .enumerate()
            .filter(|(s, _)| sub_receiver[*s] == receiver)
            .filter_map(|(_, o)| o.as_ref())
            .collect();
        for &p in pubs {
            let mut merged = SeqTracker::default();
            for m in &members {
                merged.merge(&m.trackers[p]);
            }
            let lost = merged.lost(sent[p]);
            result.lost += lost;
            result.duplicated += merged.duplicated;
            result.out_of_order += merged.out_of_order;
            if (lost > 0 || merged.duplicated > 0 || merged.out_of_order > 0)
                && result.pairs_with_errors.len() < 20
            {
                result.pairs_with_errors.push(PairErrors {
                    publisher: p,
                    receiver,
                    sent: u64::from(sent[p]),
                    lost,
                    duplicated: merged.duplicated,
                    out_of_order: merged.out_of_order,
                });
            }
        }
    }
    in_window
}

/// Broker CPU and RSS over the window, and the generator's own CPU use.
pub(crate) fn apply_usage(
    result: &mut BenchResult,
    broker_start: Option<anyhow::Result<ProcSample>>,
    broker_end: Option<anyhow::Result<ProcSample>>,
    self_start: Option<ProcSample>,
    self_end: Option<ProcSample>,
    delivered: u64,
    window_s: f64,
) {
    match (broker_start, broker_end) {
        (Some(Ok(a)), Some(Ok(b))) => {
            let cpu = (b.cpu_s - a.cpu_s).max(0.0);
            result.broker_cpu_s = Some(cpu);
            if delivered > 0 {
                result.broker_cpu_us_per_msg = Some(cpu * 1e6 / delivered as f64);
            }
            result.broker_rss_start_kib = Some(a.rss_kib);
            result.broker_rss_end_kib = Some(b.rss_kib);
        }
        (Some(Err(e)), _) | (_, Some(Err(e))) => {
            result.errors += 1;
            result
                .error_samples
                .push(format!("cannot sample the broker: {e:#}"));
        }
        _ => {}
    }
    if let (Some(a), Some(b)) = (self_start, self_end) {
        result.bench_cpu_util = (b.cpu_s - a.cpu_s).max(0.0) / window_s;
    }
}

/// A latency histogram in nanoseconds, 1 µs to 60 s, 3 significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3)
        .expect("constant histogram bounds are valid")
}

/// A short identifier for topic and client id prefixes, so runs never see
/// each other's messages.
pub(crate) fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:x}{:05x}", std::process::id() & 0xfff, nanos & 0xfffff)
}

/// Open `ids.len()` connections, at most [`SETUP_CONCURRENCY`] at a time,
/// spread over the source addresses; results in the order of `ids`.
pub(crate) async fn open_all(
    opts: &TrafficOptions,
    version: ProtocolVersion,
    ids: Vec<String>,
) -> anyhow::Result<Vec<Conn>> {
    let total = ids.len();
    let limit = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let mut set = JoinSet::new();
    for (i, id) in ids.into_iter().enumerate() {
        let limit = limit.clone();
        let target: SocketAddr = opts.target;
        let source = source_address(target, i, opts.sources);
        let keep_alive = opts.keep_alive;
        let clean = !opts.persistent;
        set.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let conn = wire::open_with(
                target,
                source,
                version,
                &id,
                keep_alive,
                SETUP_TIMEOUT,
                clean,
            )
            .await
            .with_context(|| format!("connection {id}"));
            (i, conn)
        });
    }
    let mut conns: Vec<Option<Conn>> = (0..total).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (i, conn) = joined.context("connect task")?;
        conns[i] = Some(conn?);
    }
    Ok(conns.into_iter().flatten().collect())
}

/// Wait until `expected` deliveries arrived, no delivery came for
/// [`QUIET`], or the drain deadline passed; says which.
pub(crate) async fn wait_for_deliveries(shared: &Shared, expected: u64) -> &'static str {
    let mut last = shared.delivered.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    loop {
        let now = Instant::now();
        let delivered = shared.delivered.load(Ordering::Relaxed);
        if delivered >= expected {
            return "complete";
        }
        if now >= shared.drain_deadline {
            return "deadline";
        }
        if delivered != last {
            last = delivered;
            last_change = now;
        } else if now.duration_since(last_change) >= QUIET {
            return "quiet";
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One progress line per second on stderr until aborted.
pub(crate) async fn progress_lines(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut sent_before, mut got_before) = (0, 0);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let sent = shared.published.load(Ordering::Relaxed);
        let got = shared.delivered.load(Ordering::Relaxed);
        let errors = shared
            .errors
            .lock()
            .map(|l| l.count)
            .unwrap_or_else(|e| e.into_inner().count);
        let phase = if now < shared.window_start {
            "warm-up"
        } else if now < shared.window_end {
            "measure"
        } else {
            "drain"
        };
        eprintln!(
            "[{:>5.1}s {phase:<7}] sent {:>9}/s  delivered {:>9}/s  total sent {sent}  delivered {got}  errors {errors}",
            now.duration_since(shared.epoch).as_secs_f64(),
            sent - sent_before,
            got - got_before,
        );
        sent_before = sent;
        got_before = got;
    }
}

/// A subscriber: read, check, acknowledge, until told to stop.
pub(crate) async fn subscriber(
    shared: Arc<Shared>,
    conn: Conn,
    expects: Vec<bool>,
    mut stop: watch::Receiver<bool>,
    keep_alive: Duration,
) -> SubOutcome {
    let Conn {
        mut stream,
        mut rbuf,
        version,
        ..
    } = conn;
    let mut out = SubOutcome {
        trackers: vec![SeqTracker::default(); expects.len()],
        latency: new_histogram(),
        in_window: 0,
        misrouted: 0,
        corrupt: 0,
    };
    let mut wbuf = BytesMut::new();
    let ping_every = (keep_alive / 2).max(Duration::from_millis(500));
    let mut last_write = Instant::now();
    'run: while !*stop.borrow() {
        if rbuf.capacity() - rbuf.len() < READ_CHUNK / 2 {
            rbuf.reserve(READ_CHUNK);
        }
        let ping_at = tokio::time::Instant::from_std(last_write + ping_every);
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            read = tokio::io::AsyncReadExt::read_buf(&mut stream, &mut rbuf) => match read {
                Ok(0) => {
                    shared.error(String::from("subscriber: broker closed the connection"));
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    shared.error(format!("subscriber: read: {e}"));
                    break;
                }
            },
            _ = tokio::time::sleep_until(ping_at) => {
                let _ = encode_into(&Packet::PingReq, version, &mut wbuf);
            }
        }
        let now = Instant::now();
        let now_ns = now.duration_since(shared.epoch).as_nanos() as u64;
        let in_window = now >= shared.window_start && now < shared.window_end;
        let mut delivered = 0;
        loop {
            let packet = match decode(&mut rbuf, version, MAX_PACKET) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    shared.error(format!("subscriber: malformed packet from the broker: {e}"));
                    break 'run;
                }
            };
            match packet {
                Packet::Publish(p) => {
                    delivered += 1;
                    record(&shared, &mut out, &expects, &p.payload, now_ns, in_window);
                    let ack = match (p.qos, p.packet_id) {
                        (QoS::AtLeastOnce, Some(id)) => Some(Packet::PubAck(wire::response(id))),
                        (QoS::ExactlyOnce, Some(id)) => Some(Packet::PubRec(wire::response(id))),
                        _ => None,
                    };
                    if let Some(ack) = ack {
                        let _ = encode_into(&ack, version, &mut wbuf);
                    }
                }
                Packet::PubRel(r) => {
                    let _ = encode_into(
                        &Packet::PubComp(wire::response(r.packet_id)),
                        version,
                        &mut wbuf,
                    );
                }
                Packet::Disconnect(d) => {
                    shared.error(format!(
                        "subscriber: broker sent DISCONNECT 0x{:02X}",
                        d.reason
                    ));
                    break 'run;
                }
                _ => {}
            }
        }
        if delivered > 0 {
            shared.delivered.fetch_add(delivered, Ordering::Relaxed);
        }
        if !wbuf.is_empty() {
            let write = stream.write_all(&wbuf);
            match tokio::time::timeout_at(shared.drain_deadline.into(), write).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    shared.error(format!("subscriber: write: {e}"));
                    break;
                }
                Err(_) => {
                    shared.error(String::from("subscriber: write stalled past the deadline"));
                    break;
                }
            }
            wbuf.clear();
            last_write = now;
        }
    }
    say_goodbye(&mut stream, version).await;
    out
}

/// Check one delivered payload and record it.
fn record(
    shared: &Shared,
    out: &mut SubOutcome,
    expects: &[bool],
    payload: &[u8],
    now_ns: u64,
    in_window: bool,
) {
    let Some(stamp) = Stamp::read(payload) else {
        out.corrupt += 1;
        return;
    };
    let p = stamp.publisher as usize;
    let Some(sent) = shared.sent.get(p) else {
        out.corrupt += 1;
        return;
    };
    // A number the publisher has not announced was never sent: a corrupt
    // payload. Checking it also bounds the bitset's growth.
    if stamp.seq >= sent.load(Ordering::Acquire) {
        out.corrupt += 1;
        return;
    }
    if !expects.get(p).copied().unwrap_or(false) {
        out.misrouted += 1;
        return;
    }
    out.trackers[p].record(stamp.seq);
    if in_window {
        out.in_window += 1;
        let latency = now_ns.saturating_sub(stamp.sent_ns).max(1_000);
        out.latency.saturating_record(latency);
    }
}

/// Best-effort DISCONNECT and close, bounded by a short timeout.
pub(crate) async fn say_goodbye<W: tokio::io::AsyncWrite + Unpin>(
    stream: &mut W,
    version: ProtocolVersion,
) {
    let mut buf = BytesMut::new();
    let bye = Packet::Disconnect(Disconnect {
        reason: 0,
        properties: Properties::default(),
    });
    if encode_into(&bye, version, &mut buf).is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = stream.write_all(&buf).await;
            let _ = stream.shutdown().await;
        })
        .await;
    }
}

/// Packet-id bookkeeping shared by a publisher's writer and reader.
#[derive(Debug)]
pub(crate) struct Inflight {
    /// Permits = free inflight slots.
    pub(crate) permits: Semaphore,
    /// `in_use[id]`: packet id `id` awaits its final ack.
    pub(crate) in_use: Vec<AtomicBool>,
    /// Messages fully acknowledged.
    pub(crate) acked: AtomicU64,
    /// Set by the writer before it disconnects: an end of stream is then
    /// expected.
    pub(crate) closing: AtomicBool,
}

impl Inflight {
    /// `window` free slots, every id free.
    pub(crate) fn new(window: usize) -> Inflight {
        Inflight {
            permits: Semaphore::new(window),
            in_use: (0..=usize::from(u16::MAX))
                .map(|_| AtomicBool::new(false))
                .collect(),
            acked: AtomicU64::new(0),
            closing: AtomicBool::new(false),
        }
    }

    /// Free `id` and return its permit; false when it was not in use.
    pub(crate) fn release(&self, id: u16) -> bool {
        let was = self.in_use[usize::from(id)].swap(false, Ordering::AcqRel);
        if was {
            self.permits.add_permits(1);
            self.acked.fetch_add(1, Ordering::Relaxed);
        }
        was
    }

    /// The next free packet id from `next` on (wrapping 65535 → 1).
    pub(crate) fn allocate(&self, next: &mut u16) -> Option<u16> {
        for _ in 0..u16::MAX {
            let id = *next;
            *next = if id == u16::MAX { 1 } else { id + 1 };
            if !self.in_use[usize::from(id)].swap(true, Ordering::AcqRel) {
                return Some(id);
            }
        }
        None
    }
}

/// A publisher: writes PUBLISH packets until the window ends, then waits
/// (bounded) for its acks.
async fn publisher(
    shared: Arc<Shared>,
    index: usize,
    conn: Conn,
    template: PublishTemplate,
    settings: PubSettings,
) -> PubOutcome {
    let Conn {
        stream,
        rbuf,
        version,
        receive_maximum,
    } = conn;
    let qos = settings.qos;
    let window = if qos == QoS::AtMostOnce {
        0
    } else {
        settings.inflight.min(usize::from(receive_maximum))
    };
    let inflight = Arc::new(Inflight::new(window));
    let (read_half, mut write_half) = stream.into_split();
    let (rel_tx, mut rel_rx) = mpsc::channel::<u16>(window.max(1));
    let reader = tokio::spawn(publisher_reader(
        shared.clone(),
        read_half,
        rbuf,
        version,
        inflight.clone(),
        rel_tx,
    ));

    let mut out = PubOutcome::default();
    let mut seq: u32 = 0;
    let mut next_id: u16 = 1;
    let mut wbuf = BytesMut::with_capacity(settings.batch * template.len() + 64);
    let mut last_write = Instant::now();
    let ping_every = (settings.keep_alive / 2).max(Duration::from_millis(500));
    let end = shared.window_end;
    'publish: loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let due = match settings.rate {
            None => settings.batch,
            Some(rate) => {
                // Message k is due at epoch + k / rate.
                let elapsed = now.duration_since(shared.epoch).as_secs_f64();
                let target = (elapsed * rate) as u64 + 1;
                (target.saturating_sub(u64::from(seq)) as usize).min(settings.batch)
            }
        };
        if due == 0 {
            let rate = settings.rate.unwrap_or(1.0);
            let next_at = shared.epoch + Duration::from_secs_f64(f64::from(seq) / rate);
            let wake = next_at.min(end).min(last_write + ping_every);
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                Some(id) = rel_rx.recv() => push_pubrel(&mut wbuf, id, version),
            }
            if Instant::now() >= last_write + ping_every {
                let _ = encode_into(&Packet::PingReq, version, &mut wbuf);
            }
        }
        let mut n = due;
        if qos != QoS::AtMostOnce && due > 0 {
            n = 0;
            if inflight.permits.available_permits() == 0 {
                // Window full: wait for an ack (or a PUBREC to answer).
                tokio::select! {
                    permit = inflight.permits.acquire() => match permit {
                        Ok(p) => {
                            p.forget();
                            n = 1;
                        }
                        Err(_) => break 'publish,
                    },
                    Some(id) = rel_rx.recv() => push_pubrel(&mut wbuf, id, version),
                    _ = tokio::time::sleep_until(end.into()) => {}
                }
            }
            while n < due {
                match inflight.permits.try_acquire() {
                    Ok(p) => {
                        p.forget();
                        n += 1;
                    }
                    Err(_) => break,
                }
            }
        }
        if n > 0 {
            let sent_ns = Instant::now().duration_since(shared.epoch).as_nanos() as u64;
            for _ in 0..n {
                let id = if qos == QoS::AtMostOnce {
                    None
                } else {
                    match inflight.allocate(&mut next_id) {
                        Some(id) => Some(id),
                        None => {
                            shared.error(format!("publisher {index}: no free packet id"));
                            break 'publish;
                        }
                    }
                };
                let stamp = Stamp {
                    seq,
                    publisher: index as u32,
                    sent_ns,
                };
                template.append(&mut wbuf, id, &stamp);
                seq = seq.wrapping_add(1);
            }
            shared.sent[index].store(seq, Ordering::Release);
            shared.published.fetch_add(n as u64, Ordering::Relaxed);
            if now >= shared.window_start {
                out.sent_in_window += n as u64;
            }
        }
        while let Ok(id) = rel_rx.try_recv() {
            push_pubrel(&mut wbuf, id, version);
        }
        if !wbuf.is_empty() {
            if let Err(e) = write_bounded(&shared, &mut write_half, &wbuf).await {
                shared.error(format!("publisher {index}: {e:#}"));
                break;
            }
            wbuf.clear();
            last_write = Instant::now();
        }
    }
    out.sent = seq;

    // Wait for outstanding acks, answering PUBREC with PUBREL meanwhile.
    if window > 0 {
        while inflight.permits.available_permits() < window
            && Instant::now() < shared.drain_deadline
            && !reader.is_finished()
        {
            tokio::select! {
                Some(id) = rel_rx.recv() => push_pubrel(&mut wbuf, id, version),
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
            if !wbuf.is_empty() {
                if let Err(e) = write_bounded(&shared, &mut write_half, &wbuf).await {
                    shared.error(format!("publisher {index}: {e:#}"));
                    break;
                }
                wbuf.clear();
            }
        }
        out.unacked = (window - inflight.permits.available_permits().min(window)) as u64;
    }
    inflight.closing.store(true, Ordering::Release);
    say_goodbye(&mut write_half, version).await;
    let mut reader = reader;
    if tokio::time::timeout(Duration::from_secs(2), &mut reader)
        .await
        .is_err()
    {
        // The broker did not close the connection after DISCONNECT.
        reader.abort();
    }
    out
}

fn push_pubrel(buf: &mut BytesMut, id: u16, version: ProtocolVersion) {
    let _ = encode_into(&Packet::PubRel(wire::response(id)), version, buf);
}

/// Write `buf` fully, or fail at the drain deadline (a stalled broker).
async fn write_bounded(
    shared: &Shared,
    half: &mut tokio::net::tcp::OwnedWriteHalf,
    buf: &[u8],
) -> anyhow::Result<()> {
    match tokio::time::timeout_at(shared.drain_deadline.into(), half.write_all(buf)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(anyhow!("write: {e}")),
        Err(_) => Err(anyhow!("write stalled past the deadline")),
    }
}

/// A publisher's reader: acks in, permits back, PUBREL requests to the
/// writer.
async fn publisher_reader(
    shared: Arc<Shared>,
    mut half: OwnedReadHalf,
    mut rbuf: BytesMut,
    version: ProtocolVersion,
    inflight: Arc<Inflight>,
    rel_tx: mpsc::Sender<u16>,
) {
    loop {
        let packet = match wire::read_packet(&mut half, &mut rbuf, version, 4096).await {
            Ok(Some(p)) => p,
            Ok(None) => {
                if !inflight.closing.load(Ordering::Acquire) {
                    shared.error(String::from("publisher: broker closed the connection"));
                }
                return;
            }
            Err(e) => {
                if !inflight.closing.load(Ordering::Acquire) {
                    shared.error(format!("publisher: {e:#}"));
                }
                return;
            }
        };
        match packet {
            Packet::PubAck(ack) | Packet::PubComp(ack) => {
                if ack.reason >= 0x80 {
                    shared.error(format!("publisher: ack with reason 0x{:02X}", ack.reason));
                }
                if !inflight.release(ack.packet_id) {
                    shared.error(format!(
                        "publisher: ack for unknown packet id {}",
                        ack.packet_id
                    ));
                }
            }
            Packet::PubRec(rec) => {
                if rec.reason >= 0x80 {
                    shared.error(format!(
                        "publisher: PUBREC with reason 0x{:02X}",
                        rec.reason
                    ));
                    inflight.release(rec.packet_id);
                } else if rel_tx.try_send(rec.packet_id).is_err() {
                    shared.error(String::from(
                        "publisher: more PUBREC than inflight messages",
                    ));
                }
            }
            Packet::Disconnect(d) => {
                shared.error(format!(
                    "publisher: broker sent DISCONNECT 0x{:02X}",
                    d.reason
                ));
                return;
            }
            _ => {}
        }
    }
}
