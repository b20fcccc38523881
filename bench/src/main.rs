//! `tributary-bench`: the command line around the library.
//!
//! Each scenario subcommand runs once, prints progress lines and a table on
//! stderr and one JSON line on stdout. `summarize` turns a JSON-lines file
//! of many runs into medians and ratios.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tributary_bench::gateway_in::predefined_env;
use tributary_bench::mqttsn::{SnQos, TopicKind};
use tributary_bench::options::{parse_qos, Protocol};
use tributary_bench::{
    parse_duration, resolve_loopback, run_conns, run_ingress, run_traffic, summary, BenchResult,
    ConnsOptions, Ingress, IngressOptions, Shape, TrafficOptions,
};
use tributary_mqtt::packet::QoS;

/// Load generator for MQTT brokers (loopback targets only).
#[derive(Debug, Parser)]
#[command(name = "tributary-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Point-to-point: N publishers each with its own topic and subscriber.
    P2p {
        /// Publisher/subscriber pairs.
        #[arg(long, default_value_t = 10)]
        pairs: usize,
        #[command(flatten)]
        common: Common,
    },
    /// Fan-in: many publishers on distinct topics, few subscribers on a
    /// wildcard (or one shared subscription).
    Fanin {
        /// Publishers.
        #[arg(long, default_value_t = 100)]
        publishers: usize,
        /// Subscribers.
        #[arg(long, default_value_t = 1)]
        subscribers: usize,
        /// Subscribe through `$share/<group>/...` (each message to one
        /// subscriber of the group).
        #[arg(long)]
        shared: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Fan-out: one topic, many subscribers each receiving every message.
    Fanout {
        /// Subscribers.
        #[arg(long, default_value_t = 50)]
        subscribers: usize,
        /// Publishers (all on the same topic).
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        #[command(flatten)]
        common: Common,
    },
    /// Connection scale: K idle connections with keep-alive.
    Conns {
        /// Connections to open.
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Loopback source addresses 127.0.0.1..=127.0.0.N (about 28000
        /// connections per address).
        #[arg(long, default_value_t = 1)]
        sources: usize,
        /// Hold the connections idle this long before the final sample.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        hold: Duration,
        /// Connects in progress at once.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Keep-alive in seconds (a PINGREQ every half).
        #[arg(long, default_value_t = 60)]
        keep_alive: u16,
        #[command(flatten)]
        target: Target,
    },
    /// MQTT-SN publishers over UDP → the gateway → MQTT subscribers (each
    /// receiving every message).
    MqttsnIn {
        /// UDP publishers, each on its own 127.0.0.1 port.
        #[arg(long, default_value_t = 10)]
        publishers: usize,
        /// MQTT subscribers.
        #[arg(long, default_value_t = 1)]
        subscribers: usize,
        /// QoS of the publishes: -1 (no connection; needs --topic-type
        /// predefined or short), 0, or 1 (PUBACK, window of --inflight).
        #[arg(long, default_value = "0", allow_hyphen_values = true)]
        qos: SnQos,
        /// Topic ids: normal (CONNECT + REGISTER, no gateway configuration),
        /// predefined (configured in the gateway: see --print-predefined)
        /// or short (two-character topic names).
        #[arg(long, default_value = "normal")]
        topic_type: TopicKind,
        /// Predefined id of publisher 0; publisher i uses base + i, topic
        /// bench/sn/{i}.
        #[arg(long, default_value_t = 1)]
        predefined_base: u16,
        /// Print the TRIBUTARY_MQTTSN__PREDEFINED setting the predefined
        /// ids need (for --publishers and --predefined-base) and exit.
        #[arg(long)]
        print_predefined: bool,
        #[command(flatten)]
        gateway: Gateway,
    },
    /// CoAP publishers (POST /ps/{topic}, connectionless) over UDP → the
    /// gateway → MQTT subscribers (each receiving every message).
    CoapIn {
        /// UDP publishers, each on its own 127.0.0.1 port.
        #[arg(long, default_value_t = 10)]
        publishers: usize,
        /// MQTT subscribers.
        #[arg(long, default_value_t = 1)]
        subscribers: usize,
        /// Confirmable requests, a window of --inflight unanswered per
        /// publisher (default: NON).
        #[arg(long)]
        con: bool,
        /// Add ?qos=N (default: the gateway's publish_qos, NON → 0, CON → 1).
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2))]
        qos: Option<u8>,
        /// Add No-Response 2 (RFC 7967, NON only): the gateway sends no 2.04.
        #[arg(long)]
        no_response: bool,
        #[command(flatten)]
        gateway: Gateway,
    },
    /// The embedded-store evaluation of ADR 0015: the broker's storage write
    /// pattern (queue appends, deletes on ack, group commits, restore)
    /// against each engine, no broker. Prints a Markdown table.
    StoreEval {
        /// Engines, comma-separated: fjall, redb.
        #[arg(long, default_value = "fjall,redb", value_delimiter = ',')]
        engines: Vec<String>,
        /// Scratch directory (each engine gets a fresh store under it).
        #[arg(long, default_value = "target/store-eval")]
        dir: PathBuf,
        /// Persistent sessions the records are spread over.
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
        /// Records per phase.
        #[arg(long, default_value_t = 20_000)]
        records: usize,
        /// Records per group commit.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Payload bytes.
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// Sync per commit: fsync, os (written to the OS), none.
        #[arg(long, default_value = "fsync")]
        sync: String,
    },
    /// Medians, min–max and ratios over a JSON-lines file of results.
    Summarize {
        /// The JSON-lines file.
        file: PathBuf,
        /// Label of the broker the ratios are computed for.
        #[arg(long, default_value = "tributary")]
        baseline: String,
    },
}

/// Where the broker is and what to call the result.
#[derive(Debug, Args)]
struct Target {
    /// Broker address: a loopback IP (127.0.0.0/8, ::1) or localhost.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// MQTT version: 3.1.1 or 5.
    #[arg(long, default_value = "3.1.1")]
    protocol: Protocol,
    /// Broker PID: sample its CPU time and RSS from /proc.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Broker label copied into the result.
    #[arg(long, default_value = "broker")]
    label: String,
    /// Scenario name copied into the result (default: the subcommand).
    #[arg(long)]
    name: Option<String>,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

/// Options of the gateway ingress scenarios.
#[derive(Debug, Args)]
struct Gateway {
    /// Gateway address: a loopback IP (127.0.0.0/8, ::1) or localhost.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The gateway's UDP port (default: 1884 for MQTT-SN, 5683 for CoAP).
    #[arg(long)]
    port: Option<u16>,
    /// The gateway's MQTT TCP port, where the subscribers connect.
    #[arg(long, default_value_t = 1883)]
    mqtt_port: u16,
    /// MQTT version of the subscribers: 3.1.1 or 5.
    #[arg(long, default_value = "3.1.1")]
    protocol: Protocol,
    /// Payload bytes (at least 16: sequence, publisher id, timestamp).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Aggregate publish rate in msgs/s, split evenly over the publishers
    /// and paced per publisher. Omit for flat out.
    #[arg(long)]
    rate: Option<u64>,
    /// Measured window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Publishing before the window (not measured, checked for loss).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Unanswered QoS 1 / CON publishes per publisher.
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// Most datagrams sent before yielding, flat out.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Keep-alive in seconds (MQTT CONNECT and MQTT-SN CONNECT Duration).
    #[arg(long, default_value_t = 60)]
    keep_alive: u16,
    /// Longest wait for answers and deliveries after publishing stops.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// A QoS 1 / CON publish unanswered this long frees its window slot
    /// (counted as unacked; the tool does not retransmit).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    ack_timeout: Duration,
    /// Gateway PID: sample its CPU time and RSS from /proc.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Gateway label copied into the result.
    #[arg(long, default_value = "broker")]
    label: String,
    /// Scenario name copied into the result (default: the subcommand).
    #[arg(long)]
    name: Option<String>,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

impl Gateway {
    fn options(
        &self,
        ingress: Ingress,
        default_port: u16,
        publishers: usize,
        subscribers: usize,
    ) -> anyhow::Result<IngressOptions> {
        let udp = resolve_loopback(&self.host, self.port.unwrap_or(default_port))?;
        let tcp = resolve_loopback(&self.host, self.mqtt_port)?;
        let mut o = IngressOptions::new(udp, tcp, ingress);
        o.publishers = publishers;
        o.subscribers = subscribers;
        o.ack_timeout = self.ack_timeout;
        let m = &mut o.mqtt;
        m.protocol = self.protocol;
        m.payload = self.payload;
        m.rate = self.rate;
        m.duration = self.duration;
        m.warmup = self.warmup;
        m.inflight = self.inflight;
        m.batch = self.batch;
        m.keep_alive = self.keep_alive;
        m.drain_timeout = self.drain_timeout;
        m.broker_pid = self.broker_pid;
        m.label = self.label.clone();
        m.name = self.name.clone();
        m.progress = !self.quiet;
        o.validate()?;
        Ok(o)
    }
}

/// Options of the message scenarios.
#[derive(Debug, Args)]
struct Common {
    #[command(flatten)]
    target: Target,
    /// QoS of publishes and subscriptions: 0, 1 or 2.
    #[arg(long, default_value = "0", value_parser = parse_qos)]
    qos: QoS,
    /// Payload bytes (at least 16: sequence, publisher id, timestamp).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Aggregate publish rate in msgs/s, split evenly over the publishers
    /// and paced per publisher. Omit for flat out.
    #[arg(long)]
    rate: Option<u64>,
    /// Measured window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Publishing before the window (not measured, checked for loss).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Unacknowledged QoS 1/2 publishes per publisher (MQTT 5: capped by
    /// the broker's Receive Maximum).
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// Most PUBLISH packets per socket write.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Keep-alive in seconds.
    #[arg(long, default_value_t = 60)]
    keep_alive: u16,
    /// Longest wait for acks and deliveries after publishing stops.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Loopback source addresses to spread connections over.
    #[arg(long, default_value_t = 1)]
    sources: usize,
    /// Persistent sessions (clean start = false): what a durable broker
    /// must store before acknowledging QoS 1/2 publishes.
    #[arg(long)]
    persistent: bool,
}

impl Common {
    fn options(&self) -> anyhow::Result<TrafficOptions> {
        let t = &self.target;
        let mut o = TrafficOptions::new(resolve_loopback(&t.host, t.port)?);
        o.protocol = t.protocol;
        o.qos = self.qos;
        o.payload = self.payload;
        o.rate = self.rate;
        o.duration = self.duration;
        o.warmup = self.warmup;
        o.inflight = self.inflight;
        o.batch = self.batch;
        o.keep_alive = self.keep_alive;
        o.drain_timeout = self.drain_timeout;
        o.sources = self.sources;
        o.persistent = self.persistent;
        o.broker_pid = t.broker_pid;
        o.label = t.label.clone();
        o.name = t.name.clone();
        o.progress = !t.quiet;
        o.validate()?;
        Ok(o)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Each connection is a descriptor: up to the hard limit, without a
    // `ulimit -n` first. What is left is reported by the run itself (its
    // connect failures).
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    if let Command::Summarize { file, baseline } = &cli.command {
        return match summary::load(file) {
            Ok(results) => {
                print!("{}", summary::table(&results, baseline));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tributary-bench: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    if let Command::StoreEval {
        engines,
        dir,
        sessions,
        records,
        batch,
        payload,
        sync,
    } = &cli.command
    {
        return store_eval(engines, dir, *sessions, *records, *batch, *payload, sync);
    }
    if let Command::MqttsnIn {
        print_predefined: true,
        publishers,
        predefined_base,
        ..
    } = &cli.command
    {
        println!(
            "TRIBUTARY_MQTTSN__PREDEFINED='{}'",
            predefined_env(*predefined_base, *publishers)
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tributary-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(result) => {
            eprint!("{}", result.table());
            println!("{}", result.to_json_line());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tributary-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn store_eval(
    engines: &[String],
    dir: &std::path::Path,
    sessions: usize,
    records: usize,
    batch: usize,
    payload: usize,
    sync: &str,
) -> ExitCode {
    use tributary_bench::store_eval::{run_engine, table, EvalOptions};
    use tributary_storage::backend::SyncMode;
    let sync = match sync {
        "fsync" => SyncMode::Fsync,
        "os" => SyncMode::Os,
        "none" => SyncMode::None,
        other => {
            eprintln!("tributary-bench: --sync {other:?}: expected fsync, os or none");
            return ExitCode::from(2);
        }
    };
    let o = EvalOptions {
        engines: engines.to_vec(),
        dir: dir.to_path_buf(),
        sessions: sessions.max(1),
        records,
        batch: batch.max(1),
        payload,
        sync,
    };
    let mut results = Vec::new();
    for engine in &o.engines {
        eprintln!("store-eval: {engine}…");
        match run_engine(engine, &o) {
            Ok(r) => results.push(r),
            Err(e) => {
                eprintln!("tributary-bench: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }
    print!("{}", table(&results, &o));
    ExitCode::SUCCESS
}

async fn run(command: Command) -> anyhow::Result<BenchResult> {
    match command {
        Command::P2p { pairs, common } => {
            run_traffic(Shape::P2p { pairs }, &common.options()?).await
        }
        Command::Fanin {
            publishers,
            subscribers,
            shared,
            common,
        } => {
            let shape = Shape::FanIn {
                publishers,
                subscribers,
                shared,
            };
            run_traffic(shape, &common.options()?).await
        }
        Command::Fanout {
            subscribers,
            publishers,
            common,
        } => {
            let shape = Shape::FanOut {
                publishers,
                subscribers,
            };
            run_traffic(shape, &common.options()?).await
        }
        Command::Conns {
            count,
            sources,
            hold,
            concurrency,
            keep_alive,
            target,
        } => {
            let mut o = ConnsOptions::new(resolve_loopback(&target.host, target.port)?, count);
            o.protocol = target.protocol;
            o.sources = sources;
            o.hold = hold;
            o.concurrency = concurrency;
            o.keep_alive = keep_alive;
            o.broker_pid = target.broker_pid;
            o.label = target.label;
            o.name = target.name;
            o.progress = !target.quiet;
            run_conns(&o).await
        }
        Command::MqttsnIn {
            publishers,
            subscribers,
            qos,
            topic_type,
            predefined_base,
            print_predefined: _,
            gateway,
        } => {
            let ingress = Ingress::MqttSn {
                qos,
                topics: topic_type,
                predefined_base,
            };
            run_ingress(&gateway.options(ingress, 1884, publishers, subscribers)?).await
        }
        Command::CoapIn {
            publishers,
            subscribers,
            con,
            qos,
            no_response,
            gateway,
        } => {
            let ingress = Ingress::Coap {
                confirmable: con,
                qos,
                no_response,
            };
            run_ingress(&gateway.options(ingress, 5683, publishers, subscribers)?).await
        }
        Command::Summarize { .. } | Command::StoreEval { .. } => {
            anyhow::bail!("runs without a runtime")
        }
    }
}
