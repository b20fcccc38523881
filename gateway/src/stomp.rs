//! STOMP's listeners: TCP (61613), TLS (`stomp.ssl_bind`, started when a
//! certificate is configured) through the one accept loop
//! ([`crate::listen::accept_loop`]), and the HTTP listener for WebSocket
//! and SockJS (61614, [`crate::stomp_http`]). Every STOMP connection runs
//! on the stream driver ([`crate::drive::stream`]).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn, Instrument};
use tributary_stomp::{Channel, ChannelConfig};

use crate::drive::{now, stream::drive, DriveContext};
use crate::listen::{accept_loop, ConnectionGuard, Connections, Gate, Serve};
use crate::listener_stats::ListenerStats;
use crate::tls::TlsSource;
use crate::transport::ByteStream;

/// Where the STOMP listeners are bound (`None`: not started).
#[derive(Debug, Clone, Default)]
pub struct StompAddrs {
    /// STOMP over TCP.
    pub tcp: Option<SocketAddr>,
    /// STOMP over TLS, with how it is secured (for the banner).
    pub ssl: Option<(SocketAddr, String)>,
    /// STOMP over WebSocket and SockJS (HTTP).
    pub http: Option<SocketAddr>,
}

/// A STOMP TCP or TLS listener's connections.
#[derive(Clone)]
struct StompServe {
    ctx: Arc<DriveContext>,
    channel: Arc<ChannelConfig>,
    tls: Option<Arc<TlsSource>>,
    stats: Arc<ListenerStats>,
}

impl StompServe {
    async fn run(self, stream: TcpStream, peer: SocketAddr, guard: ConnectionGuard) {
        let mut channel = Channel::new(
            self.ctx.broker.clone(),
            self.channel.clone(),
            Some(peer),
            now(),
        );
        match &self.tls {
            None => drive(channel, ByteStream(stream), &self.ctx, guard).await,
            Some(tls) => match tls.accept(stream).await {
                Ok((tls_stream, cn)) => {
                    channel.set_transport_username(cn);
                    drive(channel, ByteStream(tls_stream), &self.ctx, guard).await;
                }
                Err(e) => {
                    self.stats.handshake_failed();
                    debug!(error = %e, "TLS handshake failed");
                }
            },
        }
    }
}

impl Serve for StompServe {
    fn serve(&self, stream: TcpStream, peer: SocketAddr, guard: ConnectionGuard) {
        let transport = if self.tls.is_some() { "ssl" } else { "tcp" };
        let span = tracing::info_span!("conn", proto = "stomp", transport, %peer);
        tokio::spawn(self.clone().run(stream, peer, guard).instrument(span));
    }
}

/// Bind the STOMP listeners `[stomp]` enables and spawn their tasks.
pub async fn start(
    config: &tributary_config::Config,
    ctx: &Arc<DriveContext>,
    connections: &Arc<Connections>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<StompAddrs> {
    let s = &config.stomp;
    let channel = crate::wiring::stomp_channel(config);
    let max = s.max_connections as usize;
    let gate = |transport: &'static str, addr: SocketAddr, security: String| {
        let stats = Arc::new(ListenerStats::new(transport, "stomp", addr, security, 0));
        Gate::new(stats, max, connections)
    };
    let mut addrs = StompAddrs::default();
    if s.enabled {
        let listener = TcpListener::bind(s.bind)
            .await
            .with_context(|| format!("stomp.bind: cannot bind {}", s.bind))?;
        let addr = listener.local_addr()?;
        info!(listener = "tcp:stomp", %addr, "STOMP listener started");
        addrs.tcp = Some(addr);
        let gate = gate("tcp", addr, "plain TCP".to_owned());
        let serve = StompServe {
            ctx: ctx.clone(),
            channel: channel.clone(),
            tls: None,
            stats: gate.stats.clone(),
        };
        tasks.spawn(accept_loop(
            listener,
            gate,
            true,
            ctx.shutdown.clone(),
            serve,
        ));
    }
    if s.ssl_enabled && s.ssl_options.is_configured() {
        let tls = Arc::new(
            TlsSource::load("ssl:stomp".to_owned(), &s.ssl_options).context("stomp.ssl_options")?,
        );
        let listener = TcpListener::bind(s.ssl_bind)
            .await
            .with_context(|| format!("stomp.ssl_bind: cannot bind {}", s.ssl_bind))?;
        let addr = listener.local_addr()?;
        info!(listener = "ssl:stomp", %addr, "STOMP over TLS started");
        addrs.ssl = Some((addr, tls.describe()));
        tasks.spawn(crate::tls::reloader(
            vec![tls.clone()],
            ctx.shutdown.clone(),
        ));
        let gate = gate("ssl", addr, tls.describe());
        let serve = StompServe {
            ctx: ctx.clone(),
            channel: channel.clone(),
            tls: Some(tls),
            stats: gate.stats.clone(),
        };
        tasks.spawn(accept_loop(
            listener,
            gate,
            true,
            ctx.shutdown.clone(),
            serve,
        ));
    }
    if s.ws_enabled {
        let listener = TcpListener::bind(s.ws_bind)
            .await
            .with_context(|| format!("stomp.ws_bind: cannot bind {}", s.ws_bind))?;
        let addr = listener.local_addr()?;
        info!(listener = "http:stomp", %addr, "STOMP over WebSocket and SockJS started");
        addrs.http = Some(addr);
        let j = &s.sockjs;
        let http = Arc::new(crate::stomp_http::HttpContext::new(
            crate::stomp_transport::StompShared {
                ctx: ctx.clone(),
                channel,
            },
            crate::stomp_http::SockJsSettings {
                enabled: j.enabled,
                heartbeat: j.heartbeat,
                disconnect_delay: j.disconnect_delay,
                response_limit: j.response_limit as usize,
                max_queued: j.max_queued_messages as usize,
                sockjs_url: j.sockjs_url.clone(),
                cookie_needed: j.cookie_needed,
                test_endpoints: j.test_endpoints,
            },
            gate("http", addr, "plain HTTP".to_owned()),
        ));
        tasks.spawn(async move {
            if let Err(e) = crate::stomp_http::serve(listener, http, true).await {
                warn!(listener = "http:stomp", error = %e, "listener failed");
            }
        });
    }
    Ok(addrs)
}
