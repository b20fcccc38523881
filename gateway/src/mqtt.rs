//! MQTT's stream listeners: plain TCP, TLS, WebSocket and secure
//! WebSocket (`[listeners.*]`). Each accepts through the one accept loop
//! ([`crate::listen::accept_loop`]), does its handshake (TLS, then the
//! WebSocket upgrade, as the listener needs) and runs the MQTT channel on
//! the stream driver ([`crate::drive::stream`]) over the resulting stream.
//!
//! A failed handshake is counted on the listener and logged at debug
//! level; handshakes are bounded by the TLS handshake timeout and the
//! MQTT connect timeout.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, Instrument};
use tributary_mqtt::channel::{Channel, ChannelConfig};

use crate::drive::{now, stream::drive, DriveContext};
use crate::listen::{accept_loop, ConnectionGuard, Connections, Gate, Serve};
use crate::listener_stats::ListenerStats;
use crate::tls::TlsSource;
use crate::transport::ByteStream;
use crate::ws::WsSettings;

/// What sits between the socket and MQTT.
#[derive(Debug, Clone)]
pub enum StreamKind {
    /// Plain TCP.
    Tcp,
    /// MQTT over TLS.
    Ssl(Arc<TlsSource>),
    /// MQTT over WebSocket.
    Ws(Arc<WsSettings>),
    /// MQTT over WebSocket over TLS.
    Wss(Arc<TlsSource>, Arc<WsSettings>),
}

impl StreamKind {
    fn transport(&self) -> &'static str {
        match self {
            StreamKind::Tcp => "tcp",
            StreamKind::Ssl(_) => "ssl",
            StreamKind::Ws(_) => "ws",
            StreamKind::Wss(..) => "wss",
        }
    }

    fn describe(&self) -> String {
        match self {
            StreamKind::Tcp => "plain TCP".to_owned(),
            StreamKind::Ssl(t) => t.describe(),
            StreamKind::Ws(s) => format!("plain WebSocket at {}", s.path),
            StreamKind::Wss(t, s) => format!("{} WebSocket at {}", t.describe(), s.path),
        }
    }
}

/// An MQTT listener's connections: handshake, then the stream driver.
#[derive(Clone)]
pub struct MqttServe {
    /// Shared by every connection.
    pub ctx: Arc<DriveContext>,
    /// Channel settings.
    pub channel: Arc<ChannelConfig>,
    /// The listener's transport.
    pub kind: StreamKind,
    /// The listener's counters.
    pub stats: Arc<ListenerStats>,
}

impl MqttServe {
    fn channel_for(&self, peer: SocketAddr, transport_username: Option<String>) -> Channel {
        let mut channel = Channel::new(
            self.ctx.broker.clone(),
            self.channel.clone(),
            Some(peer),
            now(),
        );
        channel.set_transport_username(transport_username);
        channel
    }

    /// Run the MQTT channel over an established stream.
    fn run<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        stream: S,
        peer: SocketAddr,
        transport_username: Option<String>,
        guard: ConnectionGuard,
    ) -> impl std::future::Future<Output = ()> + Send {
        let channel = self.channel_for(peer, transport_username);
        drive(channel, ByteStream(stream), &self.ctx, guard)
    }

    async fn handshake_then_run(self, stream: TcpStream, peer: SocketAddr, guard: ConnectionGuard) {
        match self.kind.clone() {
            StreamKind::Tcp => self.run(stream, peer, None, guard).await,
            StreamKind::Ssl(source) => {
                if let Some((s, cn)) = self.tls(&source, stream).await {
                    self.run(s, peer, cn, guard).await;
                }
            }
            StreamKind::Ws(settings) => {
                if let Some((s, client)) = self.upgrade(&settings, stream, peer).await {
                    self.run(s, client, None, guard).await;
                }
            }
            StreamKind::Wss(source, settings) => {
                let Some((s, cn)) = self.tls(&source, stream).await else {
                    return;
                };
                if let Some((s, client)) = self.upgrade(&settings, s, peer).await {
                    self.run(s, client, cn, guard).await;
                }
            }
        }
    }

    async fn tls(
        &self,
        source: &TlsSource,
        stream: TcpStream,
    ) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, Option<String>)> {
        match source.accept(stream).await {
            Ok(ok) => Some(ok),
            Err(e) => {
                self.stats.handshake_failed();
                debug!(error = %e, "TLS handshake failed");
                None
            }
        }
    }

    async fn upgrade<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        settings: &WsSettings,
        stream: S,
        peer: SocketAddr,
    ) -> Option<(crate::ws::WsStream<S>, SocketAddr)> {
        let upgrade = crate::ws::accept(stream, peer, settings);
        match tokio::time::timeout(self.channel.connect_timeout, upgrade).await {
            Ok(Ok(ok)) => Some(ok),
            Ok(Err(e)) => {
                self.stats.handshake_failed();
                debug!(error = %e, "WebSocket upgrade failed");
                None
            }
            Err(_) => {
                self.stats.handshake_failed();
                debug!("WebSocket upgrade timed out");
                None
            }
        }
    }
}

impl Serve for MqttServe {
    fn serve(&self, stream: TcpStream, peer: SocketAddr, guard: ConnectionGuard) {
        let transport = self.kind.transport();
        if let StreamKind::Tcp = self.kind {
            // The connection's future is spawned as it is, not wrapped in
            // another future (which would keep its own copy of what it
            // moves in). The span is a debug one, attached only when debug
            // logging is on: an idle connection carries no span otherwise,
            // and info-level events name their client.
            let conn = self.run(stream, peer, None, guard);
            let span = tracing::debug_span!("conn", proto = "mqtt", transport, %peer);
            if span.is_disabled() {
                tokio::spawn(conn);
            } else {
                tokio::spawn(conn.instrument(span));
            }
            return;
        }
        let span = tracing::info_span!("conn", proto = "mqtt", transport, %peer);
        tokio::spawn(
            self.clone()
                .handshake_then_run(stream, peer, guard)
                .instrument(span),
        );
    }
}

/// One planned MQTT listener.
struct Planned<'a> {
    name: &'a str,
    bind: SocketAddr,
    max_connections: u32,
    max_conn_rate: u32,
    nodelay: bool,
    kind: StreamKind,
}

/// Bind and start every enabled MQTT listener (TLS ones only when a
/// certificate is configured) and the certificate reloader. Returns the
/// listeners' counters and the plain TCP listeners' addresses by name.
pub async fn start_all(
    config: &tributary_config::Config,
    ctx: &Arc<DriveContext>,
    connections: &Arc<Connections>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<(Vec<Arc<ListenerStats>>, Vec<(String, SocketAddr)>)> {
    let channel = crate::wiring::mqtt_channel(config);
    let l = &config.listeners;
    let mut tls_sources = Vec::new();
    let mut planned = Vec::new();
    for (name, t) in &l.tcp {
        if t.enabled {
            planned.push(Planned {
                name,
                bind: t.bind,
                max_connections: t.max_connections,
                max_conn_rate: t.max_conn_rate,
                nodelay: t.tcp_nodelay,
                kind: StreamKind::Tcp,
            });
        }
    }
    for (name, s) in &l.ssl {
        if !(s.enabled && s.ssl_options.is_configured()) {
            continue;
        }
        let tls = Arc::new(
            TlsSource::load(format!("ssl:{name}"), &s.ssl_options)
                .with_context(|| format!("listeners.ssl.{name}.ssl_options"))?,
        );
        tls_sources.push(tls.clone());
        planned.push(Planned {
            name,
            bind: s.bind,
            max_connections: s.max_connections,
            max_conn_rate: s.max_conn_rate,
            nodelay: s.tcp_nodelay,
            kind: StreamKind::Ssl(tls),
        });
    }
    for (name, w) in &l.ws {
        if w.enabled {
            let settings = ws_settings(w);
            planned.push(Planned {
                name,
                bind: w.bind,
                max_connections: w.max_connections,
                max_conn_rate: w.max_conn_rate,
                nodelay: w.tcp_nodelay,
                kind: StreamKind::Ws(Arc::new(settings)),
            });
        }
    }
    for (name, w) in &l.wss {
        if !(w.enabled && w.ssl_options.is_configured()) {
            continue;
        }
        let tls = Arc::new(
            TlsSource::load(format!("wss:{name}"), &w.ssl_options)
                .with_context(|| format!("listeners.wss.{name}.ssl_options"))?,
        );
        tls_sources.push(tls.clone());
        let settings = ws_settings(&w.ws());
        planned.push(Planned {
            name,
            bind: w.bind,
            max_connections: w.max_connections,
            max_conn_rate: w.max_conn_rate,
            nodelay: w.tcp_nodelay,
            kind: StreamKind::Wss(tls, Arc::new(settings)),
        });
    }
    let mut stats_out = Vec::new();
    let mut tcp_addrs = Vec::new();
    for p in planned {
        let transport = p.kind.transport();
        let listener = TcpListener::bind(p.bind).await.with_context(|| {
            format!(
                "listeners.{transport}.{}.bind: cannot bind {}",
                p.name, p.bind
            )
        })?;
        let addr = listener.local_addr()?;
        let security = p.kind.describe();
        info!(listener = %format!("{transport}:{}", p.name), %addr, security = %security, "MQTT listener started");
        if let StreamKind::Tcp = p.kind {
            tcp_addrs.push((p.name.to_owned(), addr));
        }
        let stats = Arc::new(ListenerStats::new(
            transport,
            p.name,
            addr,
            security,
            p.max_conn_rate,
        ));
        stats_out.push(stats.clone());
        let gate = Gate::new(stats.clone(), p.max_connections as usize, connections);
        let serve = MqttServe {
            ctx: ctx.clone(),
            channel: channel.clone(),
            kind: p.kind,
            stats,
        };
        tasks.spawn(accept_loop(
            listener,
            gate,
            p.nodelay,
            ctx.shutdown.clone(),
            serve,
        ));
    }
    tasks.spawn(crate::tls::reloader(tls_sources, ctx.shutdown.clone()));
    Ok((stats_out, tcp_addrs))
}

fn ws_settings(w: &tributary_config::WsListener) -> WsSettings {
    let header = &w.proxy_address_header;
    WsSettings {
        path: w.path.clone(),
        proxy_address_header: (!header.is_empty()).then(|| header.to_ascii_lowercase()),
        trusted_proxies: w
            .trusted_proxies
            .iter()
            .filter_map(|p| tributary_config::security::parse_ip_net(p))
            .collect(),
        max_frame_size: w.max_frame_size as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::watch;
    use tributary_core::{Broker, BrokerConfig};

    /// What an idle connection costs is mostly its task, which tokio
    /// allocates in 128-byte steps around this future (ADR 0017). Up to
    /// 656 bytes the task fits a 768-byte cell (rustc 1.95); at 720 it
    /// took the next step, 128 bytes more for every connection (found
    /// while measuring issue 15). A `select!` or a wrapper future in the
    /// steady state took it to 960 and 1,936.
    #[tokio::test]
    async fn the_connection_future_stays_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (_, peer) = listener.accept().await.expect("accept");
        let (_tx, shutdown) = watch::channel(false);
        let broker = Arc::new(Broker::new(BrokerConfig::default()));
        let ctx = Arc::new(DriveContext {
            broker: broker.clone(),
            shutdown,
            write_stall: std::time::Duration::from_secs(30),
        });
        let stats = Arc::new(ListenerStats::new("tcp", "test", addr, String::new(), 0));
        let connections = Connections::new(broker, 10);
        let gate = Gate::new(stats.clone(), 0, &connections);
        let serve = MqttServe {
            ctx,
            channel: Arc::new(ChannelConfig::default()),
            kind: StreamKind::Tcp,
            stats,
        };
        let guard = gate.admit().expect("admitted");
        let conn = serve.run(client, peer, None, guard);
        let size = std::mem::size_of_val(&conn);
        assert!(
            size <= 656,
            "connection future grew to {size} bytes: past 656 its task takes a larger cell"
        );
    }
}
