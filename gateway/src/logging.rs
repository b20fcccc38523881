//! Logging set-up: text or JSON lines on stderr, with the filter held in a
//! reload layer so the HTTP API (`PUT /api/v5/log/level`) can change it at
//! runtime. `RUST_LOG`, when set, wins over `log.level` at start-up.

use std::sync::OnceLock;

use parking_lot::Mutex;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};
use tributary_config::LogFormat;

struct Control {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

static CONTROL: OnceLock<Control> = OnceLock::new();

/// Install the global subscriber (once; later calls do nothing).
pub fn init(level: &str, format: LogFormat) {
    let (filter, text) = match EnvFilter::try_from_default_env() {
        Ok(f) => {
            let text = std::env::var("RUST_LOG").unwrap_or_default();
            (f, text)
        }
        Err(_) => match EnvFilter::try_new(level) {
            Ok(f) => (f, level.to_owned()),
            Err(_) => (EnvFilter::new("info"), "info".to_owned()),
        },
    };
    let (layer, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(layer);
    let installed = match format {
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if installed.is_ok() {
        let _ = CONTROL.set(Control {
            handle,
            current: Mutex::new(text),
        });
    }
}

/// The filter in force (empty when logging was not set up here).
pub fn current() -> String {
    CONTROL
        .get()
        .map(|c| c.current.lock().clone())
        .unwrap_or_default()
}

/// Replace the filter (`"debug"`, `"info,tributary_mqtt=trace"`).
pub fn set(filter: &str) -> Result<(), String> {
    let control = CONTROL
        .get()
        .ok_or_else(|| "logging is not controlled by this process".to_owned())?;
    let parsed =
        EnvFilter::try_new(filter).map_err(|e| format!("invalid filter {filter:?}: {e}"))?;
    control
        .handle
        .reload(parsed)
        .map_err(|e| format!("cannot change the filter: {e}"))?;
    *control.current.lock() = filter.to_owned();
    tracing::info!(filter, "log filter changed");
    Ok(())
}
