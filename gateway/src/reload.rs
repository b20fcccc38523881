//! SIGHUP: what `systemctl reload` or `kill -HUP` asks of a running
//! gateway. The handler is installed first thing at start-up, whatever the
//! configuration, so a hang-up never terminates the process (the default
//! action would). On each one the gateway re-reads what it can without a
//! restart: TLS certificates and the ACL file (their own watchers, see
//! [`crate::tls`] and [`crate::security::acl_reload`]), the users file
//! ([`crate::security::userdb`]), and the log filter from the configuration
//! file it was started with (unless `RUST_LOG` set it). Everything else in
//! the file takes a restart; a file that no longer loads is logged and the
//! running configuration kept.

use std::path::PathBuf;
use std::sync::OnceLock;

use tokio::sync::watch;
use tracing::{info, warn};
use tributary_config::Config;

use crate::tls::Hangups;

static CONFIG_PATH: OnceLock<Option<PathBuf>> = OnceLock::new();

/// The configuration file the process was started with (`--config`), for
/// SIGHUP to re-read; call once, before [`crate::start`].
pub fn set_config_path(path: Option<PathBuf>) {
    let _ = CONFIG_PATH.set(path);
}

/// React to every SIGHUP until shutdown. `hangups` is created before
/// anything else starts, so the handler is in place from the beginning.
pub async fn on_hangup(mut hangups: Hangups, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = hangups.next() => reload(),
            _ = shutdown.changed() => return,
        }
    }
}

fn reload() {
    info!("SIGHUP: reloading certificates, ACL, users and the log filter");
    let Some(Some(path)) = CONFIG_PATH.get() else {
        return;
    };
    match Config::load(path) {
        Ok(config) => apply_log_level(&config.log.level),
        Err(e) => warn!(
            file = %path.display(),
            error = %e,
            "SIGHUP: the configuration file does not load; keeping the running configuration"
        ),
    }
}

fn apply_log_level(level: &str) {
    if std::env::var_os("RUST_LOG").is_some() || crate::logging::current() == level {
        return;
    }
    if let Err(e) = crate::logging::set(level) {
        warn!(error = %e, "SIGHUP: log filter not changed");
    }
}
