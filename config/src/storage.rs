//! `[storage]`: where sessions, their queued messages and retained messages
//! survive a restart, and what an acknowledgement waits for.
//!
//! Like every section: `#[serde(default, deny_unknown_fields)]`, defaults in
//! the `Default` impl mirrored in `src/default.toml`, ranges checked by
//! [`StorageConfig::problems`] (called from [`Config::validate`](crate::Config::validate))
//! with `storage.`-prefixed key paths. The modes and their windows of loss
//! are explained in `docs/storage.md`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{duration, ConfigProblem};

/// Which store keeps persistent sessions and retained messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageBackend {
    /// `"fjall"`: the embedded, crash-safe store in `data_dir` (default).
    #[default]
    Fjall,
    /// `"memory"`: nothing survives a restart.
    Memory,
}

/// What a PUBACK / PUBREC for a stored message waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DurabilityMode {
    /// `"fsync"`: each group commit is fsync'ed first; nothing acknowledged is
    /// lost, even on power loss (default).
    #[default]
    Fsync,
    /// `"batched"`: written to the OS per group commit, fsync'ed every
    /// `sync_interval`; survives a crash of the process, a power loss can
    /// lose up to `sync_interval` of acknowledged messages.
    Batched,
    /// `"none"`: acknowledgements do not wait; a crash loses what the store
    /// had not written yet.
    None,
}

/// `[storage]`: the durable store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `"fjall"` (embedded, on disk) or `"memory"`. Default `"fjall"`.
    pub backend: StorageBackend,
    /// Directory of the store, created if missing; relative paths are from the
    /// working directory. Default `"data"`.
    pub data_dir: String,
    /// `"fsync"`, `"batched"` or `"none"`. Default `"fsync"`.
    pub durability: DurabilityMode,
    /// How long a group commit collects writes after the first one; 0 = write as
    /// soon as the previous commit is done. Default 0 s.
    #[serde(with = "duration")]
    pub batch_window: Duration,
    /// `"batched"` only: how often the store is fsync'ed. Default 1 s.
    #[serde(with = "duration")]
    pub sync_interval: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: StorageBackend::Fjall,
            data_dir: "data".to_owned(),
            durability: DurabilityMode::Fsync,
            batch_window: Duration::ZERO,
            sync_interval: Duration::from_secs(1),
        }
    }
}

impl StorageConfig {
    /// Range and consistency problems, with `storage.` key paths.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut p = Vec::new();
        if self.backend == StorageBackend::Fjall && self.data_dir.trim().is_empty() {
            p.push(ConfigProblem::new(
                "storage.data_dir",
                "must not be empty with backend = \"fjall\"",
            ));
        }
        if self.batch_window > Duration::from_secs(1) {
            p.push(ConfigProblem::new(
                "storage.batch_window",
                format!(
                    "must be at most 1s (acknowledgements wait for it), got {}",
                    duration::format_duration(self.batch_window)
                ),
            ));
        }
        if self.sync_interval.is_zero() || self.sync_interval > Duration::from_secs(60) {
            p.push(ConfigProblem::new(
                "storage.sync_interval",
                format!(
                    "must be between 1ms and 60s, got {}",
                    duration::format_duration(self.sync_interval)
                ),
            ));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    #[test]
    fn storage_keys_are_checked_by_name() {
        let err = Config::from_toml_str(
            "[storage]\nbackend = \"fjall\"\ndata_dir = \" \"\nbatch_window = \"2s\"\nsync_interval = \"0s\"\n",
        )
        .expect_err("invalid");
        let text = err.to_string();
        assert!(
            text.contains("storage.data_dir: must not be empty"),
            "{text}"
        );
        assert!(
            text.contains("storage.batch_window: must be at most 1s"),
            "{text}"
        );
        assert!(
            text.contains("storage.sync_interval: must be between"),
            "{text}"
        );
        let err =
            Config::from_toml_str("[storage]\ndurability = \"sometimes\"\n").expect_err("bad");
        assert!(err.to_string().contains("storage.durability"), "{err}");
        let ok = Config::from_toml_str("[storage]\nbackend = \"memory\"\ndata_dir = \"\"\n")
            .expect("memory needs no directory");
        assert_eq!(ok.storage.backend, super::StorageBackend::Memory);
    }
}
