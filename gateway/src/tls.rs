//! TLS for the `ssl` and `wss` listeners: rustls with the ring provider,
//! certificates from PEM files, optional mutual TLS, the client
//! certificate's CN as user name, and reloading without a restart.
//!
//! A [`TlsSource`] holds the current `rustls::ServerConfig` behind a lock
//! that is read once per accepted connection. [`TlsSource::reload`] builds a
//! new one from the files and swaps it in; a handshake already under way
//! and every established connection keep the configuration they started
//! with (each TLS stream owns an `Arc` of it). A reload that fails (a
//! half-written file, say) keeps the old configuration and logs why.
//! Reloads happen on SIGHUP and when a file's modification time changes
//! (polled every `reload_interval`).

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::{Mutex, RwLock};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tracing::{info, warn};
use tributary_config::{PeerCertAs, TlsOptions, TlsVerify};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{key} ({path}): {reason}")]
    File {
        /// Which option names the file.
        key: &'static str,
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the combination.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("cacertfile: {0}")]
    Verifier(String),
}

/// A listener's TLS configuration, reloadable.
#[derive(Debug)]
pub struct TlsSource {
    /// Which listener, for logs.
    pub label: String,
    options: TlsOptions,
    current: RwLock<Arc<ServerConfig>>,
    /// Modification times of certfile, keyfile, cacertfile at the last load.
    stamps: Mutex<Vec<Option<SystemTime>>>,
}

impl TlsSource {
    /// Load the files named by `options`.
    pub fn load(label: String, options: &TlsOptions) -> Result<TlsSource, TlsError> {
        let config = build(options)?;
        Ok(TlsSource {
            label,
            stamps: Mutex::new(stamps(options)),
            options: options.clone(),
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// The configuration new connections use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().clone()
    }

    /// Take the user name from client certificates.
    pub fn cn_as_username(&self) -> bool {
        self.options.peer_cert_as_username == PeerCertAs::Cn
    }

    /// How long a handshake may take.
    pub fn handshake_timeout(&self) -> std::time::Duration {
        self.options.handshake_timeout
    }

    /// A short description for the start-up banner.
    pub fn describe(&self) -> String {
        let mut s = String::from("TLS");
        if self.options.verify == TlsVerify::VerifyPeer {
            s.push_str(if self.options.fail_if_no_peer_cert {
                ", client certificate required"
            } else {
                ", client certificate optional"
            });
        }
        if self.cn_as_username() {
            s.push_str(", username from certificate CN");
        }
        s
    }

    /// Rebuild from the files and swap in; on failure keep the old one.
    pub fn reload(&self) -> bool {
        let new_stamps = stamps(&self.options);
        match build(&self.options) {
            Ok(config) => {
                *self.current.write() = Arc::new(config);
                *self.stamps.lock() = new_stamps;
                info!(listener = %self.label, "TLS certificates reloaded");
                true
            }
            Err(e) => {
                // Remember the stamps anyway, so a broken file is not retried every tick.
                *self.stamps.lock() = new_stamps;
                warn!(listener = %self.label, error = %e, "TLS reload failed; keeping the previous certificates");
                false
            }
        }
    }

    /// Reload if any file's modification time changed since the last load.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamps(&self.options);
        if *self.stamps.lock() == now {
            return false;
        }
        self.reload()
    }

    /// Handshake over `tcp` with the current configuration, bounded by the
    /// handshake timeout. Returns the stream and, when configured, the
    /// user name from the client certificate's CN (a connection without
    /// one is refused then).
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> std::io::Result<(TlsStream<TcpStream>, Option<String>)> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.current());
        let stream = tokio::time::timeout(self.handshake_timeout(), acceptor.accept(tcp))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timeout")
            })??;
        if !self.cn_as_username() {
            return Ok((stream, None));
        }
        let cn = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| crate::der::subject_common_name(leaf.as_ref()));
        match cn {
            Some(cn) => Ok((stream, Some(cn))),
            // The user name must come from the certificate: without a CN
            // the client would get to pick its own.
            None => Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "peer_cert_as_username = \"cn\" but the client certificate has no CN",
            )),
        }
    }
}

fn stamps(o: &TlsOptions) -> Vec<Option<SystemTime>> {
    [&o.certfile, &o.keyfile, &o.cacertfile]
        .iter()
        .map(|p| {
            if p.is_empty() {
                None
            } else {
                std::fs::metadata(p.as_str())
                    .and_then(|m| m.modified())
                    .ok()
            }
        })
        .collect()
}

fn file_error(key: &'static str, path: &str, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        key,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn certs(key: &'static str, path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(Path::new(path))
        .map_err(|e| file_error(key, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(key, path, e))?;
    if certs.is_empty() {
        return Err(file_error(key, path, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

/// Build a rustls server configuration from `o`.
pub fn build(o: &TlsOptions) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs("certfile", &o.certfile)?;
    let key = PrivateKeyDer::from_pem_file(Path::new(&o.keyfile))
        .map_err(|e| file_error("keyfile", &o.keyfile, e))?;
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    if o.versions.iter().any(|v| v == "tlsv1.3") {
        versions.push(&rustls::version::TLS13);
    }
    if o.versions.iter().any(|v| v == "tlsv1.2") {
        versions.push(&rustls::version::TLS12);
    }
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(&versions)?;
    let builder = match o.verify {
        TlsVerify::VerifyNone => builder.with_no_client_auth(),
        TlsVerify::VerifyPeer => {
            let mut roots = RootCertStore::empty();
            for ca in certs("cacertfile", &o.cacertfile)? {
                roots
                    .add(ca)
                    .map_err(|e| file_error("cacertfile", &o.cacertfile, e))?;
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if !o.fail_if_no_peer_cert {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    Ok(builder.with_single_cert(chain, key)?)
}

/// Reload every source on SIGHUP, and each one whose files changed every
/// `reload_interval` (if non-zero), until shutdown.
///
/// (See [`Hangups`] for the signal.)
pub async fn reloader(sources: Vec<Arc<TlsSource>>, mut shutdown: watch::Receiver<bool>) {
    if sources.is_empty() {
        return;
    }
    let mut hangup = Hangups::new();
    let interval = sources
        .iter()
        .map(|s| s.options.reload_interval)
        .filter(|d| !d.is_zero())
        .min();
    loop {
        let sighup = hangup.next();
        let tick = async {
            match interval {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = sighup => {
                info!("SIGHUP: reloading TLS certificates");
                for s in &sources {
                    s.reload();
                }
            }
            _ = tick => {
                for s in &sources {
                    if !s.options.reload_interval.is_zero() {
                        s.reload_if_changed();
                    }
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// SIGHUP as a stream of futures (never firing where there are no signals,
/// or when the handler could not be installed). Every holder gets every
/// SIGHUP.
pub struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    /// Start listening for SIGHUP.
    pub fn new() -> Hangups {
        Hangups {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
        }
    }

    /// The next SIGHUP.
    pub async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(s) = self.signal.as_mut() {
            s.recv().await;
            return;
        }
        std::future::pending::<()>().await
    }
}

impl Default for Hangups {
    fn default() -> Self {
        Hangups::new()
    }
}
