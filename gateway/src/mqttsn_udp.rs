//! MQTT-SN over UDP: the datagram driver (see `docs/adr/` "mqttsn-driver").
//!
//! One reader task owns the socket's receive side and the client table.
//! Each client has its own task that owns its sans-IO [`Channel`], fed by a
//! bounded mpsc of decoded messages from the reader. The client task waits
//! on four things, like the TCP driver: the next message, the session's
//! wake-up signal (so deliveries are flushed as soon as the core queues
//! them), the channel's deadline (keep alive, sleep, retransmission) and
//! shutdown. Every task sends through the shared socket (`send_to` takes
//! `&self`), so no task waits on another to write.
//!
//! Bounds: `max_clients` entries (idle eviction, then "congestion"), a
//! 64-message inbox per client (a datagram arriving to a full inbox is
//! dropped and counted: UDP semantics), one receive buffer.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn, Instrument};
use tributary_core::Broker;
use tributary_mqttsn::channel::{Channel, ChannelConfig};
use tributary_mqttsn::codec::{decode, encode};
use tributary_mqttsn::gateway::{
    unattached, Advertiser, ClientKey, ClientTable, Stats, Unattached,
};
use tributary_mqttsn::packet::{Encapsulated, Packet, ReturnCode};

use crate::mqtt_tcp::{now, sleep_until};

/// Messages queued for one client before further datagrams are dropped.
const CLIENT_INBOX: usize = 64;

/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65535;

/// How often closed client entries are swept from the table.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Everything the MQTT-SN gateway's tasks share.
#[derive(Clone)]
pub struct MqttSnContext {
    /// The core.
    pub broker: Arc<Broker>,
    /// Channel settings (also the gateway-level ones: gateway id, QoS −1).
    pub channel: Arc<ChannelConfig>,
    /// Most clients at once.
    pub max_clients: usize,
    /// ADVERTISE interval and destination, when enabled.
    pub advertise: Option<(std::time::Duration, SocketAddr)>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Flips to true on shutdown.
    pub shutdown: watch::Receiver<bool>,
}

/// Send `packet` to `key`, wrapped for the forwarder when the client sits
/// behind one (§5.5).
async fn send(socket: &UdpSocket, key: &ClientKey, packet: Packet, buf: &mut BytesMut) {
    let packet = match &key.node_id {
        Some(node_id) => Packet::Encapsulated(Encapsulated {
            radius: 0,
            node_id: node_id.clone(),
            packet: Box::new(packet),
        }),
        None => packet,
    };
    buf.clear();
    if let Err(e) = encode(&packet, buf) {
        warn!(error = %e, packet = packet.name(), "cannot encode; dropped");
        return;
    }
    if let Err(e) = socket.send_to(buf, key.peer).await {
        debug!(error = %e, peer = %key.peer, "send failed");
    }
}

/// Serve MQTT-SN on `socket` until shutdown.
pub async fn serve(socket: UdpSocket, ctx: MqttSnContext) {
    let socket = Arc::new(socket);
    let mut shutdown = ctx.shutdown.clone();
    let mut table: ClientTable<mpsc::Sender<Packet>> =
        ClientTable::new(ctx.max_clients, ctx.channel.idle_timeout);
    let mut advertiser = ctx
        .advertise
        .map(|(interval, to)| (Advertiser::new(ctx.channel.gateway_id, interval, now()), to));
    if advertiser.is_some() {
        let _ = socket.set_broadcast(true);
    }
    let mut rbuf = vec![0u8; MAX_DATAGRAM];
    let mut wbuf = BytesMut::new();
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let advertise_at = advertiser.as_ref().map(|(a, _)| a.next_due());
        tokio::select! {
            r = socket.recv_from(&mut rbuf) => match r {
                Ok((n, peer)) => {
                    let datagram = Bytes::copy_from_slice(&rbuf[..n]);
                    on_datagram(&socket, &ctx, &mut table, datagram, peer, &mut wbuf).await;
                }
                // ICMP port unreachable surfaces here on some systems: not fatal.
                Err(e) => debug!(error = %e, "recv_from failed"),
            },
            _ = async {
                match advertise_at {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some((adv, to)) = &mut advertiser {
                    if let Some(p) = adv.poll(now()) {
                        let key = ClientKey { peer: *to, node_id: None };
                        send(&socket, &key, p, &mut wbuf).await;
                    }
                }
            }
            _ = sweep.tick() => table.retain(|tx| !tx.is_closed()),
            _ = shutdown.changed() => break,
        }
    }
    // Client tasks see the same shutdown signal and say goodbye themselves.
    info!(clients = table.len(), "MQTT-SN gateway stopped");
}

async fn on_datagram(
    socket: &Arc<UdpSocket>,
    ctx: &MqttSnContext,
    table: &mut ClientTable<mpsc::Sender<Packet>>,
    datagram: Bytes,
    peer: SocketAddr,
    wbuf: &mut BytesMut,
) {
    Stats::inc(&ctx.stats.datagrams_received);
    let packet = match decode(&datagram) {
        Ok(p) => p,
        Err(e) => {
            // Truncated, wrong length, unknown type: dropped and counted;
            // never affects any client (the "bad datagrams").
            debug!(%peer, error = %e, "undecodable datagram dropped");
            Stats::inc(&ctx.stats.datagrams_malformed);
            let m = ctx.broker.metrics();
            m.inc(&m.packets_malformed);
            return;
        }
    };
    let (key, packet) = match packet {
        Packet::Encapsulated(e) => (
            ClientKey {
                peer,
                node_id: Some(e.node_id),
            },
            *e.packet,
        ),
        p => (
            ClientKey {
                peer,
                node_id: None,
            },
            p,
        ),
    };
    let now = now();
    if let Packet::SearchGw { .. } = packet {
        let reply = Packet::GwInfo {
            gw_id: ctx.channel.gateway_id,
            gw_addr: Bytes::new(),
        };
        return send(socket, &key, reply, wbuf).await;
    }
    if let Some(tx) = table.touch(&key, now) {
        match tx.try_send(packet) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(_)) => {
                debug!(%peer, "client inbox full; datagram dropped");
                Stats::inc(&ctx.stats.datagrams_dropped_busy);
                return;
            }
            // The client's task has ended: start afresh below.
            Err(mpsc::error::TrySendError::Closed(p)) => {
                table.remove(&key);
                return on_datagram_unattached(socket, ctx, table, key, p, wbuf).await;
            }
        }
    }
    on_datagram_unattached(socket, ctx, table, key, packet, wbuf).await
}

async fn on_datagram_unattached(
    socket: &Arc<UdpSocket>,
    ctx: &MqttSnContext,
    table: &mut ClientTable<mpsc::Sender<Packet>>,
    key: ClientKey,
    packet: Packet,
    wbuf: &mut BytesMut,
) {
    let now = now();
    match unattached(
        &ctx.broker,
        &ctx.channel,
        &ctx.stats,
        Some(key.peer),
        &packet,
        now,
    ) {
        Unattached::Done => {}
        Unattached::Reply(p) => send(socket, &key, p, wbuf).await,
        Unattached::Attach => {
            let (tx, rx) = mpsc::channel(CLIENT_INBOX);
            match table.insert(key.clone(), tx.clone(), now) {
                Ok(evicted) => {
                    if let Some((victim, _)) = evicted {
                        // Dropping its sender ends the victim's task.
                        debug!(peer = %victim.peer, "idle client evicted to make room");
                        Stats::inc(&ctx.stats.clients_evicted);
                    }
                }
                Err(_) => {
                    debug!(peer = %key.peer, "client table full; CONNECT refused");
                    Stats::inc(&ctx.stats.clients_refused);
                    let reply = Packet::ConnAck {
                        code: ReturnCode::Congestion,
                    };
                    return send(socket, &key, reply, wbuf).await;
                }
            }
            let _ = tx.try_send(packet);
            let span = tracing::info_span!(
                "conn",
                proto = "mqtt-sn",
                transport = "udp",
                peer = %key.peer,
                client_id = tracing::field::Empty
            );
            tokio::spawn(client_task(socket.clone(), ctx.clone(), key, rx).instrument(span));
        }
    }
}

/// One client: owns its channel until it disconnects, is lost, evicted,
/// taken over, or the gateway shuts down.
async fn client_task(
    socket: Arc<UdpSocket>,
    ctx: MqttSnContext,
    key: ClientKey,
    mut rx: mpsc::Receiver<Packet>,
) {
    let metrics = ctx.broker.metrics();
    metrics.inc(&metrics.connections);
    metrics.inc(&metrics.connections_total);
    let mut channel = Channel::new(
        ctx.broker.clone(),
        ctx.channel.clone(),
        Some(key.peer),
        now(),
    );
    let mut shutdown = ctx.shutdown.clone();
    let mut wbuf = BytesMut::new();
    let mut named = false;
    let mut pending_auth = None;
    loop {
        for p in channel.take_output() {
            send(&socket, &key, p, &mut wbuf).await;
        }
        if !named {
            if let Some(id) = channel.client_id() {
                tracing::Span::current().record("client_id", id);
                named = true;
            }
        }
        if channel.is_closed() {
            break;
        }
        if pending_auth.is_none() {
            pending_auth = channel.take_auth_future();
        }
        if let Some(decision) = pending_auth.as_mut() {
            // An authentication backend is deciding (HTTP, say): this
            // client's datagrams wait in its inbox until it answers.
            let deadline = channel.next_deadline();
            tokio::select! {
                outcome = decision => {
                    pending_auth = None;
                    channel.handle_auth_result(outcome, now());
                }
                _ = sleep_until(deadline) => channel.handle_timeout(now()),
                _ = shutdown.changed() => channel.shutdown(),
            }
            if !channel.is_authenticating() {
                pending_auth = None;
            }
            continue;
        }
        // Re-read every turn: a re-CONNECT may have opened a new session.
        let wake = channel.signal();
        let deadline = channel.next_deadline();
        tokio::select! {
            m = rx.recv() => match m {
                Some(p) => channel.handle_packet(p, now()),
                // Evicted from the table (or the reader stopped).
                None => channel.evict(),
            },
            _ = async { match &wake { Some(s) => s.notified().await, None => std::future::pending().await } } => {
                channel.handle_wake(now());
            }
            _ = sleep_until(deadline) => channel.handle_timeout(now()),
            _ = shutdown.changed() => channel.shutdown(),
        }
    }
    for p in channel.take_output() {
        send(&socket, &key, p, &mut wbuf).await;
    }
    channel.finish(now());
    metrics.dec(&metrics.connections);
}
