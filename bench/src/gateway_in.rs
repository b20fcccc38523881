//! Gateway ingress scenarios: UDP publishers speaking MQTT-SN (`mqttsn-in`)
//! or CoAP (`coap-in`) → the gateway → MQTT subscribers.
//!
//! ```text
//!  N UDP sockets, each on its own        the gateway's        K MQTT subscribers on the
//!  127.0.0.1 ephemeral port      ──UDP──▶ MQTT-SN or CoAP ──▶ run's topics (each gets
//!  (stamped payloads, paced or            port, routed by      everything), the same
//!  flat out; QoS 1 / CON: a window        the core             receiver code as p2p,
//!  of unacknowledged publishes)                                fan-in and fan-out
//! ```
//!
//! The timeline, the subscribers, the stamps (sequence number, publisher,
//! send time), the loss/duplicate/order accounting and the report are the
//! ones of the MQTT scenarios ([`crate::traffic`]); only the publishers
//! differ. Each publisher has a writer (the scenario's pacing, one
//! datagram per message) and a reader for the gateway's answers (MQTT-SN
//! PUBACK, CoAP ACK or NON response): answers free window slots and error
//! codes are counted as errors. The tool does not retransmit: a QoS 1 or
//! CON publish unanswered after `--ack-timeout` frees its slot and counts
//! as unacked (and its message, if it never arrives, as lost).
//!
//! Setup checks the gateway first: MQTT-SN CONNECT/CONNACK (QoS 0 and 1),
//! or SEARCHGW/GWINFO (QoS −1); REGISTER/REGACK for normal topic ids; a
//! CoAP ping (empty CON → RST). Each is tried 3 times, 1 s apart.
//!
//! Loss on UDP has three places to happen before the core: the kernel
//! (the gateway socket's receive buffer; the result's `gateway_udp_drops`,
//! read from /proc/net/udp), the gateway's per-client inbox, and then the
//! subscriber's session queue in the core (`mqtt.max_mqueue_len`,
//! `mqtt.mqueue_overflow`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tokio::net::UdpSocket;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tributary_mqtt::packet::QoS;

use crate::coap::{self, MsgType, PostTemplate};
use crate::mqttsn::{self, Reply, SnQos, TopicKind};
use crate::options::{is_allowed_target, TrafficOptions};
use crate::payload::Stamp;
use crate::procstat::{self, Pid};
use crate::report::{unix_time, BenchResult};
use crate::traffic::{
    apply_usage, finish_errors, join_subscribers, open_all, progress_lines, run_id, subscriber,
    summarize_deliveries, wait_for_deliveries, Inflight, Shared, SETUP_TIMEOUT,
};

/// What the UDP publishers speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    /// MQTT-SN 1.2 PUBLISH.
    MqttSn {
        /// −1 (no connection), 0 or 1 (PUBACK window).
        qos: SnQos,
        /// How topics are named: registered ids, predefined ids, short names.
        topics: TopicKind,
        /// Predefined id of publisher 0 (publisher `i` uses `base + i`).
        predefined_base: u16,
    },
    /// CoAP `POST /ps/{topic}`, connectionless.
    Coap {
        /// CON (a window of unanswered requests) rather than NON.
        confirmable: bool,
        /// `qos=` query; `None` leaves it to the gateway's `publish_qos`
        /// (by default NON → 0, CON → 1).
        qos: Option<u8>,
        /// Add No-Response 2 (RFC 7967): no 2.xx answer to a NON.
        no_response: bool,
    },
}

impl Ingress {
    /// The scenario kind in reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Ingress::MqttSn { .. } => "mqttsn-in",
            Ingress::Coap { .. } => "coap-in",
        }
    }

    /// A one-line description for reports.
    pub fn describe(&self) -> String {
        match *self {
            Ingress::MqttSn { qos, topics, .. } => {
                let how = match topics {
                    TopicKind::Normal => "normal topic ids (REGISTER)",
                    TopicKind::Predefined => "predefined topic ids",
                    TopicKind::Short => "short topic names",
                };
                format!("MQTT-SN QoS {}, {how}", qos.name())
            }
            Ingress::Coap {
                confirmable,
                qos,
                no_response,
            } => format!(
                "CoAP {} POST /ps/{{topic}}{}{}",
                if confirmable { "CON" } else { "NON" },
                qos.map(|q| format!("?qos={q}")).unwrap_or_default(),
                if no_response { " + No-Response" } else { "" }
            ),
        }
    }

    /// True when publishes are answered and limited by a window.
    fn windowed(&self) -> bool {
        matches!(
            self,
            Ingress::MqttSn {
                qos: SnQos::One,
                ..
            } | Ingress::Coap {
                confirmable: true,
                ..
            }
        )
    }

    /// QoS of the MQTT subscriptions: what the gateway publishes at.
    fn mqtt_qos(&self) -> QoS {
        let q = match *self {
            Ingress::MqttSn { qos, .. } => qos.mqtt_qos(),
            Ingress::Coap { qos: Some(q), .. } => q,
            Ingress::Coap { confirmable, .. } => u8::from(confirmable),
        };
        QoS::from_u8(q).unwrap_or(QoS::AtMostOnce)
    }
}

/// Options of a gateway ingress run.
#[derive(Debug, Clone)]
pub struct IngressOptions {
    /// The gateway's UDP address (MQTT-SN or CoAP port), loopback only.
    pub gateway: SocketAddr,
    /// What the publishers speak.
    pub ingress: Ingress,
    /// UDP publishers.
    pub publishers: usize,
    /// MQTT subscribers, each receiving every message.
    pub subscribers: usize,
    /// A QoS 1 / CON publish unanswered this long frees its window slot
    /// and counts as unacked.
    pub ack_timeout: Duration,
    /// The MQTT side and everything shared with the MQTT scenarios:
    /// `target` is the MQTT TCP address; `qos` and `sources` are ignored;
    /// `inflight` is the window of QoS 1 / CON publishes per publisher;
    /// `batch` the most datagrams sent before yielding when flat out.
    pub mqtt: TrafficOptions,
}

impl IngressOptions {
    /// Defaults: 10 publishers, 1 subscriber, 2 s ack timeout, and the
    /// defaults of [`TrafficOptions`] for the MQTT side at `mqtt`.
    pub fn new(gateway: SocketAddr, mqtt: SocketAddr, ingress: Ingress) -> IngressOptions {
        IngressOptions {
            gateway,
            ingress,
            publishers: 10,
            subscribers: 1,
            ack_timeout: Duration::from_secs(2),
            mqtt: TrafficOptions::new(mqtt),
        }
    }

    /// Refuse options that cannot work, with a reason.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut mqtt = self.mqtt.clone();
        mqtt.sources = 1;
        mqtt.validate()?;
        if !is_allowed_target(self.gateway.ip()) {
            bail!("refusing non-loopback target {}", self.gateway);
        }
        if self.publishers == 0 || self.publishers > 10_000 {
            bail!("--publishers must be between 1 and 10000");
        }
        if self.subscribers == 0 || self.subscribers > 1_000 {
            bail!("--subscribers must be between 1 and 1000");
        }
        if self.ack_timeout.is_zero() {
            bail!("--ack-timeout must be positive");
        }
        match self.ingress {
            Ingress::MqttSn {
                qos,
                topics,
                predefined_base,
            } => {
                if qos == SnQos::MinusOne && topics == TopicKind::Normal {
                    bail!("QoS -1 needs --topic-type predefined or short (no REGISTER without a connection)");
                }
                if topics == TopicKind::Short && self.publishers > mqttsn::MAX_SHORT_TOPICS {
                    bail!(
                        "at most {} publishers have distinct short topic names",
                        mqttsn::MAX_SHORT_TOPICS
                    );
                }
                if topics == TopicKind::Predefined
                    && (predefined_base == 0
                        || usize::from(predefined_base) + self.publishers - 1 > 65_534)
                {
                    bail!("predefined ids must lie in 1..=65534: lower --predefined-base or --publishers");
                }
                if self.mqtt.payload + 9 > mqttsn::MAX_MESSAGE_LEN {
                    bail!(
                        "an MQTT-SN PUBLISH holds at most {} payload bytes",
                        mqttsn::MAX_MESSAGE_LEN - 9
                    );
                }
            }
            Ingress::Coap {
                confirmable,
                qos,
                no_response,
            } => {
                if qos.is_some_and(|q| q > 2) {
                    bail!("CoAP --qos must be 0, 1 or 2");
                }
                if confirmable && no_response {
                    bail!("--no-response applies to NON requests (a CON is always acknowledged)");
                }
                if self.mqtt.payload > 60_000 {
                    bail!("a CoAP publish here fits one datagram: --payload at most 60000 (no block-wise)");
                }
            }
        }
        Ok(())
    }
}

/// MQTT topic of predefined id `base + index`.
pub fn predefined_topic(index: usize) -> String {
    format!("bench/sn/{index}")
}

/// The value of `TRIBUTARY_MQTTSN__PREDEFINED` (TOML, as the gateway
/// reads environment overrides) that defines the ids a predefined-id run
/// uses: `[{id=1,topic="bench/sn/0"},...]`.
pub fn predefined_env(base: u16, publishers: usize) -> String {
    let entries: Vec<String> = (0..publishers)
        .map(|i| {
            format!(
                "{{id={},topic=\"{}\"}}",
                usize::from(base) + i,
                predefined_topic(i)
            )
        })
        .collect();
    format!("[{}]", entries.join(","))
}

/// How each publisher names its topic, and what the subscribers subscribe to.
#[derive(Debug)]
struct Topics {
    /// MQTT topic of each publisher.
    names: Vec<String>,
    /// Filters every subscriber subscribes to.
    filters: Vec<String>,
}

impl Topics {
    fn new(ingress: &Ingress, publishers: usize, run: &str) -> anyhow::Result<Topics> {
        Ok(match *ingress {
            Ingress::MqttSn {
                topics: TopicKind::Normal,
                ..
            } => Topics {
                names: (0..publishers)
                    .map(|i| format!("bench/{run}/sn/{i}"))
                    .collect(),
                filters: vec![format!("bench/{run}/sn/+")],
            },
            Ingress::MqttSn {
                topics: TopicKind::Predefined,
                ..
            } => Topics {
                names: (0..publishers).map(predefined_topic).collect(),
                filters: vec![String::from("bench/sn/+")],
            },
            Ingress::MqttSn {
                topics: TopicKind::Short,
                ..
            } => {
                let names = (0..publishers)
                    .map(|i| {
                        mqttsn::short_topic(i)
                            .map(|s| String::from_utf8_lossy(&s).into_owned())
                            .ok_or_else(|| anyhow!("no short topic name for publisher {i}"))
                    })
                    .collect::<anyhow::Result<Vec<String>>>()?;
                Topics {
                    filters: names.clone(),
                    names,
                }
            }
            Ingress::Coap { .. } => Topics {
                names: (0..publishers)
                    .map(|i| format!("bench/{run}/coap/{i}"))
                    .collect(),
                filters: vec![format!("bench/{run}/coap/+")],
            },
        })
    }
}

/// Encodes one publish datagram.
#[derive(Debug, Clone)]
enum Encoder {
    MqttSn(mqttsn::PublishTemplate),
    Coap(PostTemplate),
}

impl Encoder {
    fn write(&self, out: &mut Vec<u8>, id: u16, stamp: &Stamp) {
        match self {
            Encoder::MqttSn(t) => t.write(out, id, stamp),
            Encoder::Coap(t) => t.write(out, id, stamp),
        }
    }

    fn len(&self) -> usize {
        match self {
            Encoder::MqttSn(t) => t.len(),
            Encoder::Coap(t) => t.len(),
        }
    }
}

/// A publisher after setup.
#[derive(Debug)]
struct UdpPub {
    socket: Arc<UdpSocket>,
    encoder: Encoder,
    /// MQTT-SN with a connection: PINGREQ when idle, DISCONNECT at the end.
    connected: bool,
}

/// Settings shared by the publishers.
#[derive(Debug, Clone)]
struct Settings {
    ingress: Ingress,
    /// Messages per second for one publisher; `None` = flat out.
    rate: Option<f64>,
    batch: usize,
    /// Unanswered publishes per publisher (0 = not windowed).
    window: usize,
    keep_alive: Duration,
    ack_timeout: Duration,
}

/// What one publisher did.
#[derive(Debug, Default)]
struct Outcome {
    sent: u32,
    sent_in_window: u64,
    unacked: u64,
    responses: u64,
}

/// Run `mqttsn-in` or `coap-in` and return its result. Errors only when
/// setup fails; problems during the run are counted in the result.
pub async fn run_ingress(opts: &IngressOptions) -> anyhow::Result<BenchResult> {
    opts.validate()?;
    let m = &opts.mqtt;
    let ingress = opts.ingress;
    let run = run_id();
    let topics = Topics::new(&ingress, opts.publishers, &run)?;
    let (n_pubs, n_subs) = (opts.publishers, opts.subscribers);
    if let Some(limit) = procstat::open_files_limit() {
        if (n_pubs + n_subs) as u64 + 64 > limit {
            bail!(
                "{} sockets need more open files than the limit {limit}: raise `ulimit -n`",
                n_pubs + n_subs
            );
        }
    }
    if let Ingress::MqttSn {
        topics: TopicKind::Predefined,
        predefined_base,
        ..
    } = ingress
    {
        eprintln!(
            "mqttsn-in: predefined topic ids {predefined_base}..={} must be configured in the gateway, e.g.\n  TRIBUTARY_MQTTSN__PREDEFINED='{}'",
            usize::from(predefined_base) + n_pubs - 1,
            predefined_env(predefined_base, n_pubs)
        );
    }
    let version = m.protocol.version();
    let sub_qos = ingress.mqtt_qos();
    let drops_before = procstat::udp_drops(opts.gateway.port());

    // Setup: subscribers first (nothing may be published before they are
    // subscribed), then the UDP publishers.
    let connect_started = Instant::now();
    let ids: Vec<String> = (0..n_subs).map(|i| format!("tb{run}-s{i}")).collect();
    let mut sub_conns = open_all(m, version, ids).await?;
    let mut granted_lower = 0;
    {
        let mut set = JoinSet::new();
        for (i, mut conn) in sub_conns.drain(..).enumerate() {
            let filters = topics.filters.clone();
            set.spawn(async move {
                let mut granted = Ok(sub_qos);
                for (j, filter) in filters.iter().enumerate() {
                    let packet_id = u16::try_from(j % 65_535 + 1).unwrap_or(1);
                    match conn
                        .subscribe(filter, sub_qos, packet_id, SETUP_TIMEOUT)
                        .await
                    {
                        Ok(g) => {
                            if let Ok(lowest) = &mut granted {
                                *lowest = (*lowest).min(g);
                            }
                        }
                        Err(e) => {
                            granted = Err(e);
                            break;
                        }
                    }
                }
                (i, conn, granted)
            });
        }
        let mut ordered: Vec<Option<crate::wire::Conn>> = (0..n_subs).map(|_| None).collect();
        while let Some(joined) = set.join_next().await {
            let (i, conn, granted) = joined.context("subscribe task")?;
            let granted = granted.with_context(|| format!("subscriber {i}"))?;
            if granted < sub_qos {
                granted_lower += 1;
            }
            ordered[i] = Some(conn);
        }
        sub_conns = ordered.into_iter().flatten().collect();
    }
    let pubs = setup_publishers(opts, &run, &topics).await?;
    let connect_elapsed = connect_started.elapsed();

    let shared = Arc::new(Shared::new(n_pubs, m.warmup, m.duration, m.drain_timeout));
    if granted_lower > 0 {
        shared.error(format!(
            "{granted_lower} subscriptions granted below QoS {}",
            sub_qos as u8
        ));
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let keep_alive = Duration::from_secs(u64::from(m.keep_alive));
    let subscribers: Vec<_> = sub_conns
        .into_iter()
        .map(|conn| {
            tokio::spawn(subscriber(
                shared.clone(),
                conn,
                vec![true; n_pubs],
                stop_rx.clone(),
                keep_alive,
            ))
        })
        .collect();
    let settings = Settings {
        ingress,
        rate: m.rate.map(|r| r as f64 / n_pubs as f64),
        batch: m.batch,
        window: if ingress.windowed() { m.inflight } else { 0 },
        keep_alive,
        ack_timeout: opts.ack_timeout,
    };
    let publishers: Vec<_> = pubs
        .into_iter()
        .enumerate()
        .map(|(i, p)| tokio::spawn(udp_publisher(shared.clone(), i, p, settings.clone())))
        .collect();
    let progress = m
        .progress
        .then(|| tokio::spawn(progress_lines(shared.clone())));

    // Measured window.
    tokio::time::sleep_until(shared.window_start.into()).await;
    let broker_start = m.broker_pid.map(|p| procstat::sample(Pid::Other(p)));
    let self_start = procstat::sample(Pid::SelfProcess).ok();
    tokio::time::sleep_until(shared.window_end.into()).await;
    let broker_end = m.broker_pid.map(|p| procstat::sample(Pid::Other(p)));
    let self_end = procstat::sample(Pid::SelfProcess).ok();

    // Drain: publishers finish (answers), then subscribers until complete.
    let join_deadline = shared.drain_deadline + opts.ack_timeout + Duration::from_secs(2);
    let mut outcomes = Vec::with_capacity(n_pubs);
    for (i, handle) in publishers.into_iter().enumerate() {
        let outcome = match tokio::time::timeout_at(join_deadline.into(), handle).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                shared.error(format!("publisher {i} task failed: {e}"));
                Outcome::default()
            }
            Err(_) => {
                shared.error(format!("publisher {i} did not finish in time"));
                Outcome::default()
            }
        };
        let sent = if outcome.sent > 0 {
            outcome.sent
        } else {
            shared.sent[i].load(Ordering::Acquire)
        };
        outcomes.push(Outcome { sent, ..outcome });
    }
    let sent: Vec<u32> = outcomes.iter().map(|o| o.sent).collect();
    let expected: u64 = sent.iter().map(|&s| u64::from(s)).sum::<u64>() * n_subs as u64;
    let drain_end = wait_for_deliveries(&shared, expected).await;
    let drain_s = Instant::now()
        .saturating_duration_since(shared.window_end)
        .as_secs_f64();
    let _ = stop_tx.send(true);
    let sub_outcomes = join_subscribers(&shared, subscribers).await;
    if let Some(p) = progress {
        p.abort();
    }
    let drops_after = procstat::udp_drops(opts.gateway.port());

    let window_s = m.duration.as_secs_f64();
    // Publishes that get an answer: QoS 1, CON, and NON without No-Response.
    let answered = ingress.windowed()
        || matches!(
            ingress,
            Ingress::Coap {
                no_response: false,
                ..
            }
        );
    let mut result = BenchResult {
        name: m.name.clone().unwrap_or_else(|| ingress.kind().to_owned()),
        scenario: ingress.kind().to_owned(),
        label: m.label.clone(),
        protocol: m.protocol.name().to_owned(),
        qos: sub_qos as u8,
        payload: m.payload,
        publishers: n_pubs,
        subscribers: n_subs,
        shared: false,
        rate_target: m.rate,
        duration_s: window_s,
        warmup_s: m.warmup.as_secs_f64(),
        sent: sent.iter().map(|&s| u64::from(s)).sum(),
        expected,
        drain_s,
        drain_end: drain_end.to_owned(),
        connections: (n_pubs + n_subs) as u64,
        connect_rate: (n_pubs + n_subs) as f64 / connect_elapsed.as_secs_f64().max(1e-9),
        ingress: Some(ingress.describe()),
        gateway_udp_drops: match (drops_before, drops_after) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        },
        responses: answered.then(|| outcomes.iter().map(|o| o.responses).sum()),
        unix_time: unix_time(),
        ..BenchResult::default()
    };
    result.sent_per_s = outcomes
        .iter()
        .map(|o| o.sent_in_window as f64)
        .sum::<f64>()
        / window_s;
    result.unacked = outcomes.iter().map(|o| o.unacked).sum();
    let receiver_pubs = vec![(0..n_pubs).collect::<Vec<usize>>(); n_subs];
    let sub_receiver: Vec<usize> = (0..n_subs).collect();
    let in_window = summarize_deliveries(
        &mut result,
        &receiver_pubs,
        &sub_receiver,
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
    if result.received == 0 && result.sent > 0 {
        shared.error(String::from(match ingress {
            Ingress::MqttSn {
                topics: TopicKind::Predefined,
                ..
            } => "nothing delivered: are the predefined topic ids configured in the gateway (see above)?",
            Ingress::MqttSn {
                qos: SnQos::MinusOne,
                ..
            } => "nothing delivered: is QoS -1 enabled in the gateway (mqttsn.enable_qos3)?",
            _ => "nothing delivered",
        }));
    }
    finish_errors(&mut result, &shared);
    Ok(result)
}

/// Bind, connect and prepare every publisher, at most 64 at a time.
async fn setup_publishers(
    opts: &IngressOptions,
    run: &str,
    topics: &Topics,
) -> anyhow::Result<Vec<UdpPub>> {
    let limit = Arc::new(Semaphore::new(64));
    let mut set = JoinSet::new();
    for i in 0..opts.publishers {
        let limit = limit.clone();
        let opts = opts.clone();
        let client_id = format!("tb{run}-u{i}");
        let topic = topics.names[i].clone();
        set.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let p = setup_publisher(&opts, i, &client_id, &topic)
                .await
                .with_context(|| format!("publisher {i} ({client_id})"));
            (i, p)
        });
    }
    let mut pubs: Vec<Option<UdpPub>> = (0..opts.publishers).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (i, p) = joined.context("publisher setup task")?;
        pubs[i] = Some(p?);
    }
    Ok(pubs.into_iter().flatten().collect())
}

async fn setup_publisher(
    opts: &IngressOptions,
    index: usize,
    client_id: &str,
    topic: &str,
) -> anyhow::Result<UdpPub> {
    let local = match opts.gateway.ip() {
        IpAddr::V4(_) => SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
    };
    let socket = UdpSocket::bind(local)
        .await
        .with_context(|| format!("bind {local}"))?;
    socket
        .connect(opts.gateway)
        .await
        .with_context(|| format!("connect to {}", opts.gateway))?;
    let payload = opts.mqtt.payload;
    let gateway = opts.gateway;
    match opts.ingress {
        Ingress::MqttSn {
            qos,
            topics,
            predefined_base,
        } => {
            let connected = qos != SnQos::MinusOne;
            if connected {
                let connect = mqttsn::connect(client_id, opts.mqtt.keep_alive)?;
                let code = exchange(
                    &socket,
                    &connect,
                    "CONNACK",
                    |d| match mqttsn::decode_reply(d) {
                        Some(Reply::ConnAck { code }) => Some(code),
                        _ => None,
                    },
                )
                .await?;
                if code != 0 {
                    bail!("CONNACK {}", mqttsn::return_code_name(code));
                }
            } else {
                exchange(&socket, &mqttsn::searchgw(), "GWINFO", |d| {
                    matches!(mqttsn::decode_reply(d), Some(Reply::GwInfo)).then_some(())
                })
                .await
                .with_context(|| format!("no MQTT-SN gateway answers at {gateway}"))?;
            }
            let topic_id = match topics {
                TopicKind::Normal => {
                    let register = mqttsn::register(1, topic)?;
                    let (id, code) =
                        exchange(
                            &socket,
                            &register,
                            "REGACK",
                            |d| match mqttsn::decode_reply(d) {
                                Some(Reply::RegAck {
                                    topic_id,
                                    msg_id: 1,
                                    code,
                                }) => Some((topic_id, code)),
                                _ => None,
                            },
                        )
                        .await?;
                    if code != 0 {
                        bail!(
                            "REGISTER {topic:?}: REGACK {}",
                            mqttsn::return_code_name(code)
                        );
                    }
                    id
                }
                TopicKind::Predefined => {
                    u16::try_from(usize::from(predefined_base) + index).unwrap_or(u16::MAX)
                }
                TopicKind::Short => {
                    let s = mqttsn::short_topic(index)
                        .ok_or_else(|| anyhow!("no short topic name for publisher {index}"))?;
                    u16::from_be_bytes(s)
                }
            };
            let template = mqttsn::PublishTemplate::new(qos, topics, topic_id, payload)?;
            Ok(UdpPub {
                socket: Arc::new(socket),
                encoder: Encoder::MqttSn(template),
                connected,
            })
        }
        Ingress::Coap {
            confirmable,
            qos,
            no_response,
        } => {
            let mid = ping_id(index);
            exchange(&socket, &coap::ping(mid), "RST", |d| {
                coap::decode_header(d)
                    .filter(|h| h.mtype == MsgType::Rst && h.message_id == mid)
                    .map(|_| ())
            })
            .await
            .with_context(|| format!("no CoAP server answers at {gateway}"))?;
            let levels: Vec<&str> = topic.split('/').collect();
            let token = (index as u32).to_be_bytes();
            let mtype = if confirmable {
                MsgType::Con
            } else {
                MsgType::Non
            };
            let template = PostTemplate::new(mtype, &levels, qos, no_response, &token, payload)?;
            Ok(UdpPub {
                socket: Arc::new(socket),
                encoder: Encoder::Coap(template),
                connected: false,
            })
        }
    }
}

/// Message ID of a publisher's setup ping, outside the range its first
/// requests use.
fn ping_id(index: usize) -> u16 {
    first_message_id(index).wrapping_sub(1000)
}

/// First CoAP Message ID of a NON publisher: spread so that publishers do
/// not start on the same ids (they are deduplicated per peer anyway).
fn first_message_id(index: usize) -> u16 {
    (index as u16).wrapping_mul(4099)
}

/// Send `request` and wait for the answer `accept` recognises; 3 tries,
/// 1 s apart. Other datagrams are skipped.
async fn exchange<T>(
    socket: &UdpSocket,
    request: &[u8],
    what: &str,
    accept: impl Fn(&[u8]) -> Option<T>,
) -> anyhow::Result<T> {
    let mut buf = vec![0u8; 2048];
    for _ in 0..3 {
        socket.send(request).await.context("send")?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    // ICMP port unreachable: nothing listens there.
                    bail!("waiting for {what}: {e}");
                }
                Ok(Ok(n)) => {
                    if let Some(answer) = accept(&buf[..n]) {
                        return Ok(answer);
                    }
                }
            }
        }
    }
    bail!("no {what} after 3 tries")
}

/// Counters a publisher's reader shares with its writer.
#[derive(Debug, Default)]
struct ReaderState {
    responses: AtomicU64,
    /// Set before the writer ends the exchange: DISCONNECT is expected then.
    closing: AtomicBool,
    /// The gateway answered the MQTT-SN DISCONNECT.
    disconnected: Notify,
}

/// One UDP publisher: writes publishes until the window ends, waits
/// (bounded) for its answers, then says goodbye.
async fn udp_publisher(
    shared: Arc<Shared>,
    index: usize,
    publisher: UdpPub,
    settings: Settings,
) -> Outcome {
    let UdpPub {
        socket,
        encoder,
        connected,
    } = publisher;
    let window = settings.window;
    let inflight = Arc::new(Inflight::new(window));
    let state = Arc::new(ReaderState::default());
    let reader = tokio::spawn(udp_reader(
        shared.clone(),
        socket.clone(),
        settings.ingress,
        inflight.clone(),
        state.clone(),
        window > 0,
    ));

    let mut out = Outcome::default();
    let mut seq: u32 = 0;
    let mut next_id: u16 = 1;
    let mut next_mid = first_message_id(index);
    let coap = matches!(settings.ingress, Ingress::Coap { .. });
    let mut buf = Vec::with_capacity(encoder.len());
    // Send time of each unanswered id (windowed only).
    let mut outstanding: HashMap<u16, Instant> = HashMap::new();
    let mut last_scan = Instant::now();
    let mut last_send = Instant::now();
    let ping_every = (settings.keep_alive / 2).max(Duration::from_millis(500));
    let end = shared.window_end;
    'publish: loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if window > 0 && now.duration_since(last_scan) >= Duration::from_millis(100) {
            out.unacked += expire(&inflight, &mut outstanding, settings.ack_timeout, now);
            last_scan = now;
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
            let mut wake = next_at.min(end);
            if connected {
                wake = wake.min(last_send + ping_every);
            }
            tokio::time::sleep_until(wake.into()).await;
            if connected && Instant::now() >= last_send + ping_every {
                let _ = socket.send(&mqttsn::pingreq()).await;
                last_send = Instant::now();
            }
            continue;
        }
        let mut n = due;
        if window > 0 {
            n = 0;
            if inflight.permits.available_permits() == 0 {
                // Window full: wait for an answer, a little at a time so
                // that expired slots are reclaimed.
                let wait = (now + Duration::from_millis(50)).min(end);
                if let Ok(Ok(p)) =
                    tokio::time::timeout_at(wait.into(), inflight.permits.acquire()).await
                {
                    p.forget();
                    n = 1;
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
            if n == 0 {
                continue;
            }
        }
        // Announce before sending, so a subscriber never sees an
        // unannounced sequence number.
        shared.sent[index].store(seq.wrapping_add(n as u32), Ordering::Release);
        let sent_ns = shared.now_ns();
        let stamped_at = Instant::now();
        let mut written = 0;
        for _ in 0..n {
            let id = if window > 0 {
                match inflight.allocate(&mut next_id) {
                    Some(id) => {
                        outstanding.insert(id, stamped_at);
                        id
                    }
                    None => {
                        shared.error(format!("publisher {index}: no free message id"));
                        break;
                    }
                }
            } else if coap {
                let id = next_mid;
                next_mid = next_mid.wrapping_add(1);
                id
            } else {
                0
            };
            let stamp = Stamp {
                seq,
                publisher: index as u32,
                sent_ns,
            };
            encoder.write(&mut buf, id, &stamp);
            if let Err(e) = socket.send(&buf).await {
                shared.sent[index].store(seq, Ordering::Release);
                shared.error(format!("publisher {index}: send: {e}"));
                if window > 0 {
                    outstanding.remove(&id);
                    inflight.release(id);
                }
                break 'publish;
            }
            seq = seq.wrapping_add(1);
            written += 1;
        }
        shared.sent[index].store(seq, Ordering::Release);
        shared.published.fetch_add(written, Ordering::Relaxed);
        if now >= shared.window_start {
            out.sent_in_window += written;
        }
        last_send = stamped_at;
        if written < n as u64 {
            break;
        }
        if settings.rate.is_none() {
            // Flat out: UDP sends rarely wait, so let the other tasks on
            // this core (subscribers, readers) run.
            tokio::task::yield_now().await;
        }
    }
    out.sent = seq;

    // Wait for outstanding answers; unanswered ones expire.
    if window > 0 {
        while inflight.permits.available_permits() < window
            && Instant::now() < shared.drain_deadline
            && !reader.is_finished()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
            out.unacked += expire(
                &inflight,
                &mut outstanding,
                settings.ack_timeout,
                Instant::now(),
            );
        }
        out.unacked += (window - inflight.permits.available_permits().min(window)) as u64;
    }
    state.closing.store(true, Ordering::Release);
    if connected {
        // The gateway answers DISCONNECT with DISCONNECT; a lost one
        // (its receive buffer may still be full) is sent again, so the
        // session does not linger until its keep-alive runs out.
        for _ in 0..3 {
            let answered = state.disconnected.notified();
            let _ = socket.send(&mqttsn::disconnect()).await;
            if tokio::time::timeout(Duration::from_millis(500), answered)
                .await
                .is_ok()
            {
                break;
            }
        }
    }
    // Late answers to NON requests are still counted for a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    reader.abort();
    out.responses = state.responses.load(Ordering::Relaxed);
    out
}

/// Free the window slots of publishes unanswered for `timeout`; forget
/// answered ones. Returns how many expired.
fn expire(
    inflight: &Inflight,
    outstanding: &mut HashMap<u16, Instant>,
    timeout: Duration,
    now: Instant,
) -> u64 {
    let mut expired = 0;
    outstanding.retain(|&id, &mut at| {
        if !inflight.in_use[usize::from(id)].load(Ordering::Acquire) {
            return false;
        }
        if now.saturating_duration_since(at) < timeout {
            return true;
        }
        if inflight.release(id) {
            expired += 1;
        }
        false
    });
    expired
}

/// A publisher's reader: answers in, window slots back, error codes
/// counted. Runs until aborted.
async fn udp_reader(
    shared: Arc<Shared>,
    socket: Arc<UdpSocket>,
    ingress: Ingress,
    inflight: Arc<Inflight>,
    state: Arc<ReaderState>,
    windowed: bool,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = match socket.recv(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                if !state.closing.load(Ordering::Acquire) {
                    shared.error(format!("publisher: receive: {e}"));
                }
                // An ICMP error is reported once per datagram; keep going
                // but do not spin on a dead socket.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let datagram = &buf[..n];
        match ingress {
            Ingress::MqttSn { topics, .. } => match mqttsn::decode_reply(datagram) {
                Some(Reply::PubAck { msg_id, code, .. }) => {
                    state.responses.fetch_add(1, Ordering::Relaxed);
                    if code != 0 {
                        let hint = if code == 2 && topics == TopicKind::Predefined {
                            " (are the predefined topic ids configured in the gateway?)"
                        } else {
                            ""
                        };
                        shared.error(format!(
                            "publisher: PUBACK {}{hint}",
                            mqttsn::return_code_name(code)
                        ));
                    }
                    if windowed {
                        inflight.release(msg_id);
                    }
                }
                Some(Reply::Disconnect) => {
                    if state.closing.load(Ordering::Acquire) {
                        state.disconnected.notify_one();
                    } else {
                        shared.error(String::from("publisher: the gateway sent DISCONNECT"));
                    }
                }
                Some(_) => {}
                None => shared.error(String::from("publisher: malformed MQTT-SN datagram")),
            },
            Ingress::Coap { .. } => match coap::decode_header(datagram) {
                Some(h) if h.mtype == MsgType::Rst => {
                    shared.error(format!("publisher: RST for message id {}", h.message_id));
                    if windowed {
                        inflight.release(h.message_id);
                    }
                }
                Some(h) => {
                    state.responses.fetch_add(1, Ordering::Relaxed);
                    if h.code != coap::CHANGED {
                        shared.error(format!("publisher: answer {}", coap::code_name(h.code)));
                    }
                    if windowed && h.mtype == MsgType::Ack {
                        inflight.release(h.message_id);
                    }
                }
                None => shared.error(String::from("publisher: malformed CoAP datagram")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(ingress: Ingress) -> IngressOptions {
        IngressOptions::new(
            SocketAddr::from(([127, 0, 0, 1], 1884)),
            SocketAddr::from(([127, 0, 0, 1], 1883)),
            ingress,
        )
    }

    const SN0: Ingress = Ingress::MqttSn {
        qos: SnQos::Zero,
        topics: TopicKind::Normal,
        predefined_base: 1,
    };

    #[test]
    fn predefined_env_is_toml_for_the_gateway() {
        assert_eq!(
            predefined_env(7, 2),
            r#"[{id=7,topic="bench/sn/0"},{id=8,topic="bench/sn/1"}]"#
        );
    }

    #[test]
    fn options_are_checked() {
        assert!(opts(SN0).validate().is_ok());
        let neg1_normal = Ingress::MqttSn {
            qos: SnQos::MinusOne,
            topics: TopicKind::Normal,
            predefined_base: 1,
        };
        assert!(opts(neg1_normal).validate().is_err());
        let mut far = opts(SN0);
        far.gateway = SocketAddr::from(([10, 0, 0, 1], 1884));
        assert!(far.validate().is_err());
        let high = Ingress::MqttSn {
            qos: SnQos::MinusOne,
            topics: TopicKind::Predefined,
            predefined_base: 65_530,
        };
        assert!(opts(high).validate().is_err());
        let con_no_response = Ingress::Coap {
            confirmable: true,
            qos: None,
            no_response: true,
        };
        assert!(opts(con_no_response).validate().is_err());
        let mut none = opts(SN0);
        none.publishers = 0;
        assert!(none.validate().is_err());
    }

    #[test]
    fn subscription_qos_follows_the_gateway_mapping() {
        assert_eq!(SN0.mqtt_qos(), QoS::AtMostOnce);
        let con = Ingress::Coap {
            confirmable: true,
            qos: None,
            no_response: false,
        };
        assert_eq!(con.mqtt_qos(), QoS::AtLeastOnce);
        assert!(con.windowed());
        let non_q2 = Ingress::Coap {
            confirmable: false,
            qos: Some(2),
            no_response: false,
        };
        assert_eq!(non_q2.mqtt_qos(), QoS::ExactlyOnce);
        assert!(!non_q2.windowed());
        assert_eq!(non_q2.describe(), "CoAP NON POST /ps/{topic}?qos=2");
    }

    #[test]
    fn topics_per_kind() {
        let t = Topics::new(&SN0, 3, "r").expect("topics");
        assert_eq!(t.names[2], "bench/r/sn/2");
        assert_eq!(t.filters, ["bench/r/sn/+"]);
        let short = Ingress::MqttSn {
            qos: SnQos::MinusOne,
            topics: TopicKind::Short,
            predefined_base: 1,
        };
        let t = Topics::new(&short, 2, "r").expect("topics");
        assert_eq!(t.names, ["00", "01"]);
        assert_eq!(t.filters, t.names);
        let coap = Ingress::Coap {
            confirmable: false,
            qos: None,
            no_response: false,
        };
        let t = Topics::new(&coap, 1, "r").expect("topics");
        assert_eq!(
            (t.names[0].as_str(), t.filters[0].as_str()),
            ("bench/r/coap/0", "bench/r/coap/+")
        );
    }

    #[test]
    fn expired_slots_are_freed() {
        let inflight = Inflight::new(4);
        let mut next = 1;
        let mut outstanding = HashMap::new();
        let t0 = Instant::now();
        for _ in 0..3 {
            let p = inflight.permits.try_acquire().expect("permit");
            p.forget();
            let id = inflight.allocate(&mut next).expect("id");
            outstanding.insert(id, t0);
        }
        // Id 2 answered; 1 and 3 not.
        assert!(inflight.release(2));
        let timeout = Duration::from_secs(2);
        assert_eq!(expire(&inflight, &mut outstanding, timeout, t0), 0);
        assert_eq!(outstanding.len(), 2);
        let later = t0 + Duration::from_secs(3);
        assert_eq!(expire(&inflight, &mut outstanding, timeout, later), 2);
        assert!(outstanding.is_empty());
        assert_eq!(inflight.permits.available_permits(), 4);
    }
}
