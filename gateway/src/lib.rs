//! The Tributary gateway: wiring, listeners and the two connection drivers.
//!
//! # Layout
//! - [`wiring`]: configuration → core and channel settings.
//! - [`listen`]: admission and the one connection count; the one TCP
//!   accept loop.
//! - [`drive`]: the stream driver and the datagram driver every protocol
//!   runs on (ADR 0018).
//! - [`transport`], [`tls`], [`ws`], [`hixie76`], [`stomp_transport`]:
//!   what the stream driver reads and writes (TCP, TLS, WebSocket,
//!   SockJS).
//! - [`mqtt`]: MQTT's listeners (tcp, ssl, ws, wss).
//! - [`stomp`], [`stomp_http`]: STOMP over TCP and TLS (61613), and over
//!   WebSocket and SockJS on the HTTP listener (61614).
//! - [`udp`]: MQTT-SN, CoAP and LwM2M over UDP (their demultiplexers).
//! - [`security`]: the authentication chain (users file, JWT, HTTP, client
//!   rules, SCRAM) and the ACL file.
//! - [`api`]: the HTTP API on 18083 (EMQX v5 paths), Prometheus, `/status`.
//! - [`listener_stats`]: per-listener counters and connection-rate buckets.
//! - [`storage`]: opens the durable store and restores what it held.
//! - [`start`] / [`Gateway`]: start every listener and the housekeeping
//!   task; shut down gracefully (MQTT 5 clients get DISCONNECT 0x8B).
//!
//! `start` takes a configuration and returns once every listener is bound,
//! so tests can start a real gateway on port 0.

pub mod api;
pub mod banner;
pub mod ctl;
pub mod der;
pub mod drive;
pub mod hixie76;
pub mod listen;
pub mod listener_stats;
pub mod logging;
pub mod mqtt;
pub mod reload;
pub mod security;
pub mod stomp;
pub mod stomp_http;
pub mod stomp_transport;
pub mod storage;
pub mod sys;
pub mod tls;
pub mod transport;
pub mod udp;
pub mod wiring;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::info;
use tributary_config::Config;
use tributary_core::{Broker, KickReason};

/// A running gateway.
pub struct Gateway {
    /// The core, for inspection.
    pub broker: Arc<Broker>,
    /// Bound MQTT/TCP addresses, by listener name.
    pub mqtt_tcp: Vec<(String, SocketAddr)>,
    /// Bound MQTT-SN/UDP address, when enabled.
    pub mqttsn_udp: Option<SocketAddr>,
    /// Bound CoAP/UDP address, when enabled.
    pub coap_udp: Option<SocketAddr>,
    /// Bound LwM2M/UDP address, when enabled.
    pub lwm2m_udp: Option<SocketAddr>,
    /// The UDP gateways' counters.
    pub udp_stats: Arc<udp::UdpStats>,
    /// Every MQTT stream listener (tcp, ssl, ws, wss) with its counters.
    pub listeners: Vec<Arc<listener_stats::ListenerStats>>,
    /// Bound HTTP API address, when enabled.
    pub api: Option<SocketAddr>,
    /// Bound STOMP/TCP address, when enabled.
    pub stomp_tcp: Option<SocketAddr>,
    /// Bound STOMP/TLS address, when a certificate is configured.
    pub stomp_ssl: Option<SocketAddr>,
    /// Bound STOMP HTTP (WebSocket, SockJS) address, when enabled.
    pub stomp_http: Option<SocketAddr>,
    /// Set while draining: `GET /status` answers 503.
    draining: Arc<std::sync::atomic::AtomicBool>,
    /// The HTTP API server, stopped after the drain.
    api_task: Option<tokio::task::JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// The durable store, closed (pending writes synced) after the drain.
    store: Option<Arc<tributary_storage::DurableStore>>,
}

/// How long connections get to say goodbye on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Bind every enabled listener and start serving.
pub async fn start(config: &Config) -> anyhow::Result<Gateway> {
    // First: from here on a SIGHUP reloads and never terminates.
    let hangups = tls::Hangups::new();
    let opened = storage::open(config).with_context(|| {
        format!(
            "storage: the store in {:?} cannot be used (another gateway may hold it; \
             otherwise fix or move it away: the gateway does not start empty over \
             data it cannot read)",
            config.storage.data_dir
        )
    })?;
    let (store, restored) = match opened {
        Some((store, restored)) => (Some(store), Some(restored)),
        None => (None, None),
    };
    let broker = Arc::new(wiring::broker_with(
        config,
        storage::persistence(store.as_ref()),
    )?);
    if let Some(restored) = restored {
        let (sessions, messages, retained) = broker.restore(restored, drive::now());
        info!(
            sessions,
            messages,
            retained,
            data_dir = %config.storage.data_dir,
            "restored from the store"
        );
    }
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tasks.spawn(reload::on_hangup(hangups, shutdown_rx.clone()));
    let ctx = Arc::new(drive::DriveContext {
        broker: broker.clone(),
        shutdown: shutdown_rx.clone(),
        write_stall: config.limits.write_stall_timeout,
    });
    let connections =
        listen::Connections::new(broker.clone(), config.limits.max_connections as usize);
    let (listeners, mqtt_tcp) = mqtt::start_all(config, &ctx, &connections, &mut tasks).await?;
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let udp_stats = Arc::new(udp::UdpStats::default());
    let mut gateways = Vec::new();
    if config.mqttsn.enabled {
        let s = udp_stats.clone();
        gateways.push(api::GatewayCounters {
            gateway: "mqtt-sn",
            snapshot: Arc::new(move || {
                let mut all = s.mqttsn.snapshot();
                all.extend(
                    s.mqttsn_gateway
                        .snapshot()
                        .into_iter()
                        .map(|(name, v)| (name, false, v)),
                );
                all
            }),
        });
    }
    if config.coap.enabled {
        let s = udp_stats.clone();
        gateways.push(api::GatewayCounters {
            gateway: "coap",
            snapshot: Arc::new(move || s.coap.snapshot()),
        });
    }
    if config.lwm2m.enabled {
        let s = udp_stats.clone();
        gateways.push(api::GatewayCounters {
            gateway: "lwm2m",
            snapshot: Arc::new(move || s.lwm2m.snapshot()),
        });
    }
    // The API runs outside `tasks` so `/status` can answer 503 while the
    // connections drain; it is stopped after the drain.
    let (api, api_task) = api::start(
        config,
        api::ApiState::new(config, broker.clone(), listeners.clone(), draining.clone())
            .with_gateways(gateways),
    )
    .await?;
    security::warn_if_open(config, &listeners);
    let udp = udp::start(config, &ctx, &connections, &udp_stats, &mut tasks).await?;
    if !config.node.sys_interval.is_zero() {
        tasks.spawn(sys::publisher(
            broker.clone(),
            config.node.name.clone(),
            config.node.sys_interval,
            shutdown_rx.clone(),
        ));
    }
    let stomp = stomp::start(config, &ctx, &connections, &mut tasks).await?;
    let (stomp_tcp, stomp_ssl, stomp_http) =
        (stomp.tcp, stomp.ssl.as_ref().map(|s| s.0), stomp.http);
    let (mqttsn_udp, coap_udp, lwm2m_udp) = (udp.mqttsn, udp.coap, udp.lwm2m);
    tasks.spawn(housekeeping(broker.clone(), shutdown_rx));
    banner::log(
        config,
        &listeners,
        api,
        &[
            ("udp:mqttsn", mqttsn_udp),
            ("udp:coap", coap_udp),
            ("udp:lwm2m", lwm2m_udp),
        ],
        &stomp,
    );
    Ok(Gateway {
        broker,
        mqtt_tcp,
        mqttsn_udp,
        udp_stats,
        listeners,
        api,
        stomp_tcp,
        stomp_ssl,
        stomp_http,
        draining,
        api_task,
        coap_udp,
        lwm2m_udp,
        shutdown: shutdown_tx,
        tasks,
        store,
    })
}

/// Delayed wills and session expiry, at one-second resolution or sooner.
async fn housekeeping(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let now = drive::now();
        let next = broker.tick(now);
        let wait = next
            .map(|at| at.saturating_duration_since(now))
            .unwrap_or(Duration::from_secs(1))
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

impl Gateway {
    /// Stop accepting, tell every client, and wait (bounded) for the
    /// connections to close.
    pub async fn shutdown(mut self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        self.broker.kick_all(KickReason::ServerShutdown);
        let drain = async {
            while self.tasks.join_next().await.is_some() {}
            while self
                .broker
                .metrics()
                .connections
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            info!("shutdown grace period over; closing remaining connections");
        }
        if let Some(api) = self.api_task.take() {
            api.abort();
        }
        if let Some(store) = self.store.take() {
            // Blocking: the writer syncs what is pending.
            let _ = tokio::task::spawn_blocking(move || store.close()).await;
        }
    }
}

/// Run until `signal` resolves, then shut down gracefully.
pub async fn run(
    config: &Config,
    signal: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let gateway = start(config).await?;
    signal.await;
    info!("shutting down");
    gateway.shutdown().await;
    Ok(())
}
