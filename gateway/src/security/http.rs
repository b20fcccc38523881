//! The HTTP authentication backend: POST a JSON body to a configured URL
//! and read `{"result": "allow" | "deny" | "ignore"}` back (EMQX's
//! contract; 204 No Content also means allow). A timeout, a connection
//! error, a non-2xx status or an unreadable body count as `ignore`, so the
//! chain goes on (and, with nothing else to decide, anonymous rules apply).
//!
//! `allow` and `deny` answers are cached for `cache_ttl`, keyed by a SHA-256
//! digest of client id, user name, password and address (the password is
//! never stored). The cache is bounded by `cache_size`; when full, expired
//! entries are dropped and, if none were, the new answer is not cached.
//!
//! `https://` URLs are spoken over rustls, trusting `cacertfile` (or the
//! system CA bundle); the server name is checked against the URL's host.
//!
//! The request runs on the connection's own task (the driver awaits the
//! future the channel handed it): one slow auth server delays only the
//! clients that wait for it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use ring::digest;
use serde_json::Value;
use tracing::debug;
use tributary_config::HttpAuth;
use tributary_core::ClientInfo;

/// Largest response body read.
const MAX_RESPONSE: usize = 64 * 1024;

/// What the service said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVerdict {
    /// Let the client in.
    Allow,
    /// Refuse the client.
    Deny,
    /// No opinion (or no usable answer).
    Ignore,
}

/// Why the backend could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("authentication.http.{key}: {message}")]
pub struct HttpAuthError {
    key: &'static str,
    message: String,
}

fn url_error(message: String) -> HttpAuthError {
    HttpAuthError {
        key: "url",
        message,
    }
}

fn ca_error(message: String) -> HttpAuthError {
    HttpAuthError {
        key: "cacertfile",
        message,
    }
}

/// Where the service is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUrl {
    /// `https://`.
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// Port (80 or 443 unless given).
    pub port: u16,
    /// Path, `/` at least.
    pub path: String,
}

/// The system CA bundle on Debian and its derivatives.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The configured backend.
#[derive(Debug)]
pub struct HttpBackend {
    host: String,
    port: u16,
    path: String,
    /// TLS for an `https://` URL.
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    timeout: Duration,
    headers: Vec<(String, String)>,
    body: Vec<(String, String)>,
    cache_ttl: Duration,
    cache_size: usize,
    cache: Mutex<HashMap<[u8; 32], (HttpVerdict, Instant)>>,
}

/// `http[s]://host[:port][/path]`.
pub fn parse_url(url: &str) -> Result<ServiceUrl, HttpAuthError> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else {
        return Err(url_error(format!(
            "{url:?}: expected an http:// or https:// URL"
        )));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| url_error(format!("{url:?}: bad port")))?;
            (h, port)
        }
        _ => (authority, if tls { 443 } else { 80 }),
    };
    if host.is_empty() {
        return Err(url_error(format!("{url:?}: no host")));
    }
    Ok(ServiceUrl {
        tls,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port,
        path: path.to_owned(),
    })
}

/// A rustls client for `host`, trusting the CAs in `cacertfile` (or the
/// system bundle).
fn tls_client(
    host: &str,
    cacertfile: &str,
) -> Result<
    (
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    ),
    HttpAuthError,
> {
    use rustls::pki_types::pem::PemObject;
    let file = if cacertfile.trim().is_empty() {
        SYSTEM_CA_BUNDLE
    } else {
        cacertfile.trim()
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ca_error(format!("{file:?}: {e}")))?;
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| ca_error(format!("{file:?}: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ca_error(format!("{file:?}: no CA certificate in the file")));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ca_error(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| url_error(format!("host {host:?}: {e}")))?;
    Ok((Arc::new(config), name))
}

impl HttpBackend {
    /// Build from `[authentication.http]`.
    pub fn new(c: &HttpAuth) -> Result<HttpBackend, HttpAuthError> {
        let url = parse_url(&c.url)?;
        let tls = if url.tls {
            Some(tls_client(&url.host, &c.cacertfile)?)
        } else {
            None
        };
        Ok(HttpBackend {
            host: url.host,
            port: url.port,
            path: url.path,
            tls,
            timeout: c.timeout,
            headers: c
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            body: c.body.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            cache_ttl: c.cache_ttl,
            cache_size: c.cache_size as usize,
            cache: Mutex::new(HashMap::new()),
        })
    }

    fn cache_key(client: &ClientInfo, password: Option<&[u8]>) -> [u8; 32] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        for part in [
            client.client_id.as_bytes(),
            client.username.as_deref().unwrap_or("\u{0}").as_bytes(),
            password.unwrap_or(b"\x00"),
            client
                .peer
                .map(|p| p.ip().to_string())
                .unwrap_or_default()
                .as_bytes(),
        ] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// A cached answer for these credentials, if fresh.
    pub fn cached(&self, client: &ClientInfo, password: Option<&[u8]>) -> Option<HttpVerdict> {
        if self.cache_ttl.is_zero() {
            return None;
        }
        let key = Self::cache_key(client, password);
        let cache = self.cache.lock();
        cache
            .get(&key)
            .filter(|(_, at)| at.elapsed() < self.cache_ttl)
            .map(|(v, _)| *v)
    }

    fn remember(&self, key: [u8; 32], verdict: HttpVerdict) {
        if self.cache_ttl.is_zero() || verdict == HttpVerdict::Ignore || self.cache_size == 0 {
            return;
        }
        let mut cache = self.cache.lock();
        if cache.len() >= self.cache_size && !cache.contains_key(&key) {
            let ttl = self.cache_ttl;
            cache.retain(|_, (_, at)| at.elapsed() < ttl);
            if cache.len() >= self.cache_size {
                return;
            }
        }
        cache.insert(key, (verdict, Instant::now()));
    }

    /// The JSON body for this client.
    pub fn body_for(&self, client: &ClientInfo, password: Option<&[u8]>) -> Value {
        let password = password.map(String::from_utf8_lossy).unwrap_or_default();
        let peerhost = client.peer.map(|p| p.ip().to_string()).unwrap_or_default();
        let map = self
            .body
            .iter()
            .map(|(k, template)| {
                let v = template
                    .replace("${clientid}", &client.client_id)
                    .replace("${username}", client.username.as_deref().unwrap_or(""))
                    .replace("${password}", &password)
                    .replace("${peerhost}", &peerhost)
                    .replace("${protocol}", client.protocol);
                (k.clone(), Value::String(v))
            })
            .collect();
        Value::Object(map)
    }

    /// Ask the service (bounded by the timeout), and cache the answer.
    pub fn ask(
        self: &Arc<Self>,
        client: &ClientInfo,
        password: Option<&[u8]>,
    ) -> impl std::future::Future<Output = HttpVerdict> + Send + 'static {
        let this = self.clone();
        let key = Self::cache_key(client, password);
        let body = self.body_for(client, password).to_string();
        let client_id = client.client_id.clone();
        async move {
            let verdict = match tokio::time::timeout(this.timeout, this.request(body)).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    debug!(%client_id, error = %e, "HTTP auth request failed; ignoring");
                    HttpVerdict::Ignore
                }
                Err(_) => {
                    debug!(%client_id, "HTTP auth request timed out; ignoring");
                    HttpVerdict::Ignore
                }
            };
            this.remember(key, verdict);
            verdict
        }
    }

    async fn request(
        &self,
        body: String,
    ) -> Result<HttpVerdict, Box<dyn std::error::Error + Send + Sync>> {
        let addr: SocketAddr = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .next()
            .ok_or("host name did not resolve")?;
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        match &self.tls {
            None => self.exchange(TokioIo::new(stream), body).await,
            Some((config, name)) => {
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let tls = connector.connect(name.clone(), stream).await?;
                self.exchange(TokioIo::new(tls), body).await
            }
        }
    }

    /// One POST over an open connection (plain or TLS).
    async fn exchange<T>(
        &self,
        io: T,
        body: String,
    ) -> Result<HttpVerdict, Box<dyn std::error::Error + Send + Sync>>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let default_port = if self.tls.is_some() { 443 } else { 80 };
        let host = if self.port == default_port {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let mut req = Request::post(self.path.as_str())
            .header(HOST, host)
            .header(CONTENT_TYPE, "application/json");
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = sender
            .send_request(req.body(Full::new(Bytes::from(body)))?)
            .await?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await?
            .to_bytes();
        driver.abort();
        if status.as_u16() == 204 {
            return Ok(HttpVerdict::Allow);
        }
        if !status.is_success() {
            return Ok(HttpVerdict::Ignore);
        }
        let json: Value = serde_json::from_slice(&bytes)?;
        Ok(match json.get("result").and_then(Value::as_str) {
            Some("allow") => HttpVerdict::Allow,
            Some("deny") => HttpVerdict::Deny,
            _ => HttpVerdict::Ignore,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let url = |tls, host: &str, port, path: &str| ServiceUrl {
            tls,
            host: host.into(),
            port,
            path: path.into(),
        };
        assert_eq!(
            parse_url("http://127.0.0.1:8080/auth").expect("url"),
            url(false, "127.0.0.1", 8080, "/auth")
        );
        assert_eq!(
            parse_url("http://auth.local").expect("url"),
            url(false, "auth.local", 80, "/")
        );
        assert_eq!(
            parse_url("https://auth.example/check").expect("url"),
            url(true, "auth.example", 443, "/check")
        );
        assert_eq!(
            parse_url("https://[::1]:8443/").expect("url"),
            url(true, "::1", 8443, "/")
        );
        assert!(parse_url("ftp://x/").is_err());
        assert!(parse_url("http://:80/").is_err());
    }

    #[test]
    fn body_placeholders() {
        let b = HttpBackend::new(&HttpAuth {
            url: "http://h/".into(),
            ..HttpAuth::default()
        })
        .expect("backend");
        let c = ClientInfo {
            client_id: "c1".into(),
            username: Some("u".into()),
            peer: Some("10.0.0.9:1234".parse().expect("addr")),
            protocol: "mqtt",
        };
        let v = b.body_for(&c, Some(b"pw"));
        assert_eq!(v["clientid"], "c1");
        assert_eq!(v["username"], "u");
        assert_eq!(v["password"], "pw");
        assert_eq!(v["peerhost"], "10.0.0.9");
    }

    #[tokio::test]
    async fn asks_a_real_server_and_caches() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            let mut served = 0;
            // One request only: the second ask must come from the cache.
            if let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.expect("read");
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(text.starts_with("POST /auth HTTP/1.1"), "{text}");
                let body = r#"{"result":"deny"}"#;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(resp.as_bytes()).await.expect("write");
                served += 1;
            }
            served
        });
        let b = Arc::new(
            HttpBackend::new(&HttpAuth {
                url: format!("http://127.0.0.1:{port}/auth"),
                ..HttpAuth::default()
            })
            .expect("backend"),
        );
        let c = ClientInfo {
            client_id: "c1".into(),
            username: Some("u".into()),
            peer: None,
            protocol: "mqtt",
        };
        assert_eq!(b.ask(&c, Some(b"pw")).await, HttpVerdict::Deny);
        assert_eq!(b.cached(&c, Some(b"pw")), Some(HttpVerdict::Deny));
        assert_eq!(b.cached(&c, Some(b"other")), None);
        assert_eq!(server.await.expect("join"), 1);
    }
}
