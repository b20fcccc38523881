//! Accept loops for MQTT over TLS, WebSocket and secure WebSocket. Each
//! connection gets its handshake (TLS, then the WebSocket upgrade, as the
//! listener needs) and then the same driver as plain TCP
//! ([`crate::mqtt_tcp::drive`]), over the resulting stream.
//!
//! Connection limits and rates are checked before any handshake work, so a
//! flood of handshakes costs a refusal each. A failed handshake is counted
//! on the listener and logged at debug level.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn, Instrument};

use crate::mqtt_tcp::{drive, ListenerContext};
use crate::tls::TlsSource;
use crate::ws::WsSettings;

/// What sits between the socket and MQTT.
#[derive(Debug, Clone)]
pub enum StreamKind {
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
            StreamKind::Ssl(_) => "ssl",
            StreamKind::Ws(_) => "ws",
            StreamKind::Wss(..) => "wss",
        }
    }
}

/// Accept connections until shutdown.
pub async fn accept_loop(listener: TcpListener, ctx: ListenerContext, kind: StreamKind) {
    let name = ctx.stats.label();
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(permit) = ctx.admit() else {
            debug!(listener = %name, %peer, "connection limit or rate reached; refusing");
            drop(stream);
            continue;
        };
        let ctx = ctx.clone();
        let kind = kind.clone();
        let span = tracing::info_span!("conn", proto = "mqtt", transport = kind.transport(), %peer);
        tokio::spawn(
            async move {
                serve(stream, peer, ctx, kind).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
    info!(listener = %name, "listener stopped");
}

async fn serve(stream: TcpStream, peer: SocketAddr, ctx: ListenerContext, kind: StreamKind) {
    if ctx.nodelay {
        let _ = stream.set_nodelay(true);
    }
    let stats = ctx.stats.clone();
    match kind {
        StreamKind::Ssl(tls) => match tls.accept(stream).await {
            Ok((tls_stream, cn)) => {
                drive(tls_stream, peer, ctx, cn, None).await;
            }
            Err(e) => {
                stats.handshake_failed();
                debug!(error = %e, "TLS handshake failed");
            }
        },
        StreamKind::Ws(settings) => {
            let upgrade = tokio::time::timeout(
                ctx.channel.connect_timeout,
                crate::ws::accept(stream, peer, &settings),
            )
            .await;
            match upgrade {
                Ok(Ok((ws, client))) => {
                    drive(ws, client, ctx, None, None).await;
                }
                Ok(Err(e)) => {
                    stats.handshake_failed();
                    debug!(error = %e, "WebSocket upgrade failed");
                }
                Err(_) => {
                    stats.handshake_failed();
                    debug!("WebSocket upgrade timed out");
                }
            }
        }
        StreamKind::Wss(tls, settings) => {
            let (tls_stream, cn) = match tls.accept(stream).await {
                Ok(ok) => ok,
                Err(e) => {
                    stats.handshake_failed();
                    debug!(error = %e, "TLS handshake failed");
                    return;
                }
            };
            let upgrade = tokio::time::timeout(
                ctx.channel.connect_timeout,
                crate::ws::accept(tls_stream, peer, &settings),
            )
            .await;
            match upgrade {
                Ok(Ok((ws, client))) => {
                    drive(ws, client, ctx, cn, None).await;
                }
                Ok(Err(e)) => {
                    stats.handshake_failed();
                    debug!(error = %e, "WebSocket upgrade failed");
                }
                Err(_) => {
                    stats.handshake_failed();
                    debug!("WebSocket upgrade timed out");
                }
            }
        }
    }
}

/// Bind and start every enabled `ssl`, `ws` and `wss` listener (TLS ones
/// only when a certificate is configured) and the certificate reloader.
/// Returns the listeners' counters.
pub async fn start_all(
    config: &tributary_config::Config,
    broker: &Arc<tributary_core::Broker>,
    channel: &Arc<tributary_mqtt::channel::ChannelConfig>,
    shutdown: &tokio::sync::watch::Receiver<bool>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<Vec<Arc<crate::listener_stats::ListenerStats>>> {
    use anyhow::Context;
    let l = &config.listeners;
    let global_slots = config.limits.max_connections as usize;
    let mut out = Vec::new();
    let mut tls_sources = Vec::new();
    // (transport, name, bind, max_connections, max_conn_rate, nodelay, kind)
    let mut planned = Vec::new();
    for (name, s) in &l.ssl {
        if !(s.enabled && s.ssl_options.is_configured()) {
            continue;
        }
        let tls = Arc::new(
            TlsSource::load(format!("ssl:{name}"), &s.ssl_options)
                .with_context(|| format!("listeners.ssl.{name}.ssl_options"))?,
        );
        tls_sources.push(tls.clone());
        let kind = StreamKind::Ssl(tls);
        planned.push((
            "ssl",
            name,
            s.bind,
            s.max_connections,
            s.max_conn_rate,
            s.tcp_nodelay,
            kind,
        ));
    }
    for (name, w) in &l.ws {
        if !w.enabled {
            continue;
        }
        let kind = StreamKind::Ws(Arc::new(ws_settings(
            &w.path,
            &w.proxy_address_header,
            w.max_frame_size,
        )));
        planned.push((
            "ws",
            name,
            w.bind,
            w.max_connections,
            w.max_conn_rate,
            w.tcp_nodelay,
            kind,
        ));
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
        let kind = StreamKind::Wss(
            tls,
            Arc::new(ws_settings(
                &w.path,
                &w.proxy_address_header,
                w.max_frame_size,
            )),
        );
        planned.push((
            "wss",
            name,
            w.bind,
            w.max_connections,
            w.max_conn_rate,
            w.tcp_nodelay,
            kind,
        ));
    }
    for (transport, name, bind, max_connections, max_conn_rate, nodelay, kind) in planned {
        let listener = TcpListener::bind(bind)
            .await
            .with_context(|| format!("listeners.{transport}.{name}.bind: cannot bind {bind}"))?;
        let addr = listener.local_addr()?;
        let security = match &kind {
            StreamKind::Ssl(t) => t.describe(),
            StreamKind::Ws(s) => format!("plain WebSocket at {}", s.path),
            StreamKind::Wss(t, s) => format!("{} WebSocket at {}", t.describe(), s.path),
        };
        info!(listener = %format!("{transport}:{name}"), %addr, security = %security, "MQTT listener started");
        let stats = Arc::new(crate::listener_stats::ListenerStats::new(
            transport,
            name,
            addr,
            security,
            max_conn_rate,
        ));
        out.push(stats.clone());
        let ctx = ListenerContext {
            broker: broker.clone(),
            channel: channel.clone(),
            shutdown: shutdown.clone(),
            slots: Arc::new(tokio::sync::Semaphore::new(
                (max_connections as usize).min(global_slots),
            )),
            nodelay,
            stats,
        };
        tasks.spawn(accept_loop(listener, ctx, kind));
    }
    tasks.spawn(crate::tls::reloader(tls_sources, shutdown.clone()));
    Ok(out)
}

fn ws_settings(path: &str, header: &str, max_frame_size: u32) -> WsSettings {
    WsSettings {
        path: path.to_owned(),
        proxy_address_header: (!header.is_empty()).then(|| header.to_ascii_lowercase()),
        max_frame_size: max_frame_size as usize,
    }
}
