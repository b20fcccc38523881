//! `tributary ctl`: operate a running gateway through its HTTP API
//! (clients list/show/kick, subscriptions, retained list/delete, log
//! level, status). The API address and the first API key come from the
//! configuration unless given on the command line.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// Where and as whom to call the API.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port`.
    pub addr: String,
    /// API key.
    pub key: String,
    /// API secret.
    pub secret: String,
}

/// One API call: method, path (with query), optional JSON body. Returns the
/// status and the body text.
pub async fn call(
    target: &Target,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(&target.addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let auth = STANDARD.encode(format!("{}:{}", target.key, target.secret));
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, target.addr.as_str())
        .header(AUTHORIZATION, format!("Basic {auth}"))
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    driver.abort();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// Percent-encode a path segment (topics and client ids may hold `/`, `#`, spaces).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Encode a topic for the retainer path: each level encoded, `/` kept.
pub fn encode_topic(topic: &str) -> String {
    topic
        .split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding() {
        assert_eq!(encode_segment("a b/c#"), "a%20b%2Fc%23");
        assert_eq!(encode_topic("a b/c"), "a%20b/c");
    }
}
