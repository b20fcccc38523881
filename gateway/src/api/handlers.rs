//! Handlers of the HTTP API; response shapes follow EMQX v5 where it
//! defines one (`data` + `meta` pages, dotted metric names).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use tributary_core::{ClientInfo, KickReason, Message, MessageProperties, QoS};

use super::{ApiError, ApiState};
use crate::drive::now;

/// Parse a JSON body, mapping every failure to a JSON 400.
fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// `payload_encoding`.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Encoding {
    #[default]
    Plain,
    Base64,
}

/// MQTT 5 properties accepted on publish (EMQX's names).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PublishProperties {
    payload_format_indicator: Option<u8>,
    message_expiry_interval: Option<u32>,
    response_topic: Option<String>,
    correlation_data: Option<String>,
    content_type: Option<String>,
    #[serde(default)]
    user_properties: BTreeMap<String, String>,
}

/// One publish request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    topic: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    payload_encoding: Encoding,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
    #[serde(default)]
    properties: PublishProperties,
    /// Accepted for EMQX compatibility (the message's publisher id).
    clientid: Option<String>,
}

fn message_id() -> String {
    let id: u128 = rand::random();
    format!("{id:032X}")
}

fn publish_one(state: &ApiState, req: PublishRequest) -> Result<Value, ApiError> {
    state
        .broker
        .check_topic_name(&req.topic)
        .map_err(|e| ApiError::bad_request(format!("invalid topic {:?}: {e}", req.topic)))?;
    let qos = QoS::from_u8(req.qos)
        .ok_or_else(|| ApiError::bad_request(format!("qos must be 0, 1 or 2, got {}", req.qos)))?;
    let payload = match req.payload_encoding {
        Encoding::Plain => Bytes::from(req.payload),
        Encoding::Base64 => Bytes::from(
            STANDARD
                .decode(req.payload.as_bytes())
                .map_err(|e| ApiError::bad_request(format!("payload is not base64: {e}")))?,
        ),
    };
    let p = req.properties;
    let mut message = Message::new(req.topic.as_str(), payload, qos, req.retain);
    message.publisher = req.clientid.map(|c| c.as_str().into());
    message.properties = MessageProperties {
        payload_format_indicator: p.payload_format_indicator,
        content_type: p.content_type,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data.map(Bytes::from),
        user_properties: p.user_properties.into_iter().collect(),
    };
    let now = now();
    let message = message.with_expiry_interval(p.message_expiry_interval, now);
    let id = message_id();
    state.broker.metrics().message_in("http", message.qos);
    if state.broker.publish(message, now) == 0 {
        Ok(json!({"id": id, "reason_code": 16, "message": "no_matching_subscribers"}))
    } else {
        Ok(json!({"id": id}))
    }
}

/// `POST /api/v5/publish`: 200 `{"id"}` when delivered to someone, 202
/// with reason code 16 when nobody matched.
pub async fn publish(State(state): State<ApiState>, body: Bytes) -> Result<Response, ApiError> {
    let req: PublishRequest = parse_body(&body)?;
    let result = publish_one(&state, req)?;
    let status = if result.get("reason_code").is_some() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(result)).into_response())
}

/// `POST /api/v5/publish/bulk`: an array of publish requests, one result each.
pub async fn publish_bulk(
    State(state): State<ApiState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let reqs: Vec<PublishRequest> = parse_body(&body)?;
    if reqs.is_empty() {
        return Err(ApiError::bad_request("empty request list"));
    }
    // Validate everything first: a bad entry publishes nothing.
    let levels = state.broker.config().max_topic_levels;
    for (i, r) in reqs.iter().enumerate() {
        tributary_core::topic::validate_topic_name(&r.topic, levels).map_err(|e| {
            ApiError::bad_request(format!("[{i}]: invalid topic {:?}: {e}", r.topic))
        })?;
    }
    let results = reqs
        .into_iter()
        .map(|r| publish_one(&state, r))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((StatusCode::OK, Json(Value::Array(results))).into_response())
}

/// Paging parameters.
#[derive(Debug, Deserialize)]
pub struct Page {
    page: Option<usize>,
    limit: Option<usize>,
    clientid: Option<String>,
    username: Option<String>,
    topic: Option<String>,
}

fn paged(items: Vec<Value>, q: &Page) -> Value {
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let page = q.page.unwrap_or(1).max(1);
    let count = items.len();
    let data: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * limit)
        .take(limit)
        .collect();
    json!({"data": data, "meta": {"page": page, "limit": limit, "count": count, "hasnext": page * limit < count}})
}

fn client_json(state: &ApiState, info: &ClientInfo, online: bool, subscriptions: usize) -> Value {
    let mut v = json!({
        "clientid": &*info.client_id,
        "username": info.username,
        "connected": online,
        "ip_address": info.peer.map(|p| p.ip().to_string()),
        "port": info.peer.map(|p| p.port()),
        "proto_name": info.protocol,
        "subscriptions_cnt": subscriptions,
    });
    if let Some(q) = state.broker.client_queue(&info.client_id) {
        let limits = &state.broker.config().queue;
        let by_reason: serde_json::Map<String, Value> = tributary_core::session::DropReason::ALL
            .iter()
            .map(|r| (r.name().to_owned(), json!(q.dropped.get(*r))))
            .collect();
        // EMQX's names where it has them (mqueue_len, mqueue_max,
        // mqueue_dropped, inflight_cnt); the rest are ours.
        v["mqueue_len"] = json!(q.len);
        v["mqueue_max"] = json!(limits.max_len);
        v["mqueue_bytes"] = json!(q.bytes);
        v["mqueue_bytes_max"] = json!(limits.max_bytes);
        v["mqueue_resident"] = json!(q.resident);
        v["mqueue_dropped"] = json!(q.dropped.total());
        v["mqueue_dropped_by_reason"] = Value::Object(by_reason);
        v["inflight_cnt"] = json!(q.inflight);
    }
    v
}

/// `GET /api/v5/clients`.
pub async fn clients(State(state): State<ApiState>, Query(q): Query<Page>) -> Json<Value> {
    let mut all = state.broker.clients();
    all.sort_by(|a, b| a.0.client_id.cmp(&b.0.client_id));
    let items = all
        .iter()
        .filter(|(i, _, _)| q.clientid.as_deref().is_none_or(|c| *i.client_id == *c))
        .filter(|(i, _, _)| {
            q.username
                .as_deref()
                .is_none_or(|u| i.username.as_deref() == Some(u))
        })
        .map(|(i, online, subs)| client_json(&state, i, *online, *subs))
        .collect();
    Json(paged(items, &q))
}

/// `GET /api/v5/clients/{clientid}`.
pub async fn client(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state
        .broker
        .clients()
        .iter()
        .find(|(i, _, _)| *i.client_id == *id)
        .map(|(i, online, subs)| Json(client_json(&state, i, *online, *subs)))
        .ok_or_else(|| ApiError::not_found("CLIENTID_NOT_FOUND", format!("no client {id:?}")))
}

/// `DELETE /api/v5/clients/{clientid}`: kick (MQTT 5: DISCONNECT 0x98).
pub async fn kick(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.broker.kick(&id, KickReason::Administrative) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(
            "CLIENTID_NOT_FOUND",
            format!("no connected client {id:?}"),
        ))
    }
}

/// `GET /api/v5/subscriptions`.
pub async fn subscriptions(State(state): State<ApiState>, Query(q): Query<Page>) -> Json<Value> {
    let mut all = state.broker.subscription_list();
    all.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let items = all
        .iter()
        .filter(|(c, _, _)| q.clientid.as_deref().is_none_or(|id| **c == *id))
        .filter(|(_, f, _)| q.topic.as_deref().is_none_or(|t| **f == *t))
        .map(|(c, f, o)| {
            json!({
                "clientid": &**c, "topic": &**f, "qos": o.qos as u8,
                "nl": u8::from(o.no_local), "rap": u8::from(o.retain_as_published),
                "rh": o.retain_handling,
            })
        })
        .collect();
    Json(paged(items, &q))
}

/// Gauges, EMQX-named.
pub fn stats_json(state: &ApiState) -> Value {
    let m = state.broker.metrics();
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let clients = state.broker.clients();
    let live = clients.iter().filter(|c| c.1).count();
    json!({
        "node": state.node,
        "connections.count": get(&m.connections),
        "live_connections.count": live,
        "sessions.count": get(&m.sessions),
        "subscriptions.count": get(&m.subscriptions),
        "retained.count": get(&m.retained),
    })
}

/// `GET /api/v5/stats`.
pub async fn stats(State(state): State<ApiState>) -> Json<Value> {
    Json(stats_json(&state))
}

/// `GET /api/v5/metrics`: counters, `first_word.rest` names (`messages.received`).
pub async fn metrics(State(state): State<ApiState>) -> Json<Value> {
    let mut out = serde_json::Map::new();
    out.insert("node".into(), json!(state.node));
    for (name, value) in state.broker.metrics().snapshot() {
        let dotted = name.replacen('_', ".", 1);
        out.insert(dotted, json!(value));
    }
    Json(Value::Object(out))
}

/// `GET /status` (no auth): 200 while serving, 503 while draining (EMQX's text).
pub async fn status(State(state): State<ApiState>) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Node {} is stopping\ntributary is draining\n", state.node),
        )
            .into_response()
    } else {
        (
            StatusCode::OK,
            format!("Node {} is started\ntributary is running\n", state.node),
        )
            .into_response()
    }
}

/// `GET /api/v5/status`.
pub async fn api_status(State(state): State<ApiState>) -> Json<Value> {
    let draining = state.draining.load(Ordering::Relaxed);
    Json(json!({
        "node": state.node,
        "status": if draining { "draining" } else { "running" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime": state.started.elapsed().as_secs(),
    }))
}

/// `GET /api/v5/listeners`.
pub async fn listeners(State(state): State<ApiState>) -> Json<Value> {
    let items: Vec<Value> = state
        .listeners
        .iter()
        .map(|l| {
            json!({
                "id": l.label(), "type": l.transport, "name": l.name, "bind": l.addr.to_string(),
                "security": l.security,
                "current_connections": l.connections.load(Ordering::Relaxed),
                "accepted": l.accepted.load(Ordering::Relaxed),
                "refused": l.refused.load(Ordering::Relaxed),
                "handshake_failures": l.handshake_failures.load(Ordering::Relaxed),
            })
        })
        .collect();
    Json(Value::Array(items))
}

fn retained_json(m: &Message) -> Value {
    json!({
        "topic": &*m.topic,
        "qos": m.qos as u8,
        "payload": STANDARD.encode(&m.payload),
        "from_clientid": m.publisher.as_deref(),
    })
}

/// `GET /api/v5/mqtt/retainer/messages?topic=filter`.
pub async fn retained(State(state): State<ApiState>, Query(q): Query<Page>) -> Json<Value> {
    let filter = q.topic.clone().unwrap_or_else(|| "#".into());
    let mut items: Vec<Value> = state
        .broker
        .retained_matching(&filter, now())
        .iter()
        .map(|m| retained_json(m))
        .collect();
    if q.topic.is_none() {
        // `#` does not match `$`-topics; list those too.
        items.extend(
            state
                .broker
                .retained_matching("$SYS/#", now())
                .iter()
                .map(|m| retained_json(m)),
        );
    }
    Json(paged(items, &q))
}

/// `GET /api/v5/mqtt/retainer/message/{topic}`.
pub async fn retained_one(
    State(state): State<ApiState>,
    Path(topic): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state
        .broker
        .retained(&topic, now())
        .map(|m| Json(retained_json(&m)))
        .ok_or_else(|| {
            ApiError::not_found("NOT_FOUND", format!("no retained message on {topic:?}"))
        })
}

/// `DELETE /api/v5/mqtt/retainer/message/{topic}`.
pub async fn retained_delete(
    State(state): State<ApiState>,
    Path(topic): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.broker.retained(&topic, now()).is_none() {
        return Err(ApiError::not_found(
            "NOT_FOUND",
            format!("no retained message on {topic:?}"),
        ));
    }
    // An empty retained message clears the topic (MQTT §3.3.1.3).
    state.broker.publish(
        Message::new(topic.as_str(), Bytes::new(), QoS::AtMostOnce, true),
        now(),
    );
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v5/log/level`.
pub async fn log_level() -> Json<Value> {
    Json(json!({"level": crate::logging::current()}))
}

/// `PUT /api/v5/log/level` with `{"level": "debug"}` (or any filter directive).
pub async fn set_log_level(body: Bytes) -> Result<Json<Value>, ApiError> {
    #[derive(Deserialize)]
    struct Level {
        level: String,
    }
    let req: Level = parse_body(&body)?;
    crate::logging::set(&req.level).map_err(ApiError::bad_request)?;
    Ok(Json(json!({"level": req.level})))
}

/// `GET /api-docs/openapi.json`.
pub async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}
