//! The ACL with `authorization.file` re-read while the gateway runs: the
//! inline `[[authorization.rules]]` first, then the file's rules, as at
//! start-up. [`watch`] polls the file's modification time every
//! [`RECHECK`] and re-reads it at once on SIGHUP (it ends when the broker,
//! and so the ACL, is dropped); a file that became
//! unreadable or malformed keeps the rules in force and is logged (start-up,
//! by contrast, refuses such a file).
//!
//! Every authorization reads the current rule set through a read lock and
//! an `Arc` clone; the lock is written only by a reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use tracing::{info, warn};
use tributary_core::auth::{Action, Authorizer, Permission, RuleAuthorizer};
use tributary_core::ClientInfo;

use super::acl_file::{self, AclFileError};
use crate::tls::Hangups;

/// How often the file's modification time is looked at.
pub const RECHECK: Duration = Duration::from_secs(2);

/// Inline rules plus the file's, swapped as a whole when the file changes.
#[derive(Debug)]
pub struct ReloadingAcl {
    path: PathBuf,
    inline: RuleAuthorizer,
    current: RwLock<Arc<RuleAuthorizer>>,
}

impl ReloadingAcl {
    /// Load `path` after the `inline` rules; an unreadable or malformed
    /// file is an error.
    pub fn open(inline: RuleAuthorizer, path: &Path) -> Result<ReloadingAcl, AclFileError> {
        let combined = combine(&inline, path)?;
        Ok(ReloadingAcl {
            path: path.to_owned(),
            inline,
            current: RwLock::new(Arc::new(combined)),
        })
    }

    /// Read the file again; keep the current rules when it cannot be used.
    pub fn reload(&self) {
        match combine(&self.inline, &self.path) {
            Ok(rules) => {
                info!(file = %self.path.display(), rules = rules.rules.len(), "ACL file reloaded");
                *self.current.write() = Arc::new(rules);
            }
            Err(e) => warn!(error = %e, "ACL file not reloaded; keeping the rules in force"),
        }
    }
}

fn combine(inline: &RuleAuthorizer, path: &Path) -> Result<RuleAuthorizer, AclFileError> {
    let file = acl_file::load(path)?;
    let mut rules = inline.clone();
    rules.rules.extend(file.rules);
    if let Some(catch_all) = file.catch_all {
        rules.no_match = catch_all;
    }
    Ok(rules)
}

impl Authorizer for ReloadingAcl {
    fn authorize(&self, client: &ClientInfo, action: Action, topic: &str) -> Permission {
        let rules = self.current.read().clone();
        rules.authorize(client, action, topic)
    }

    fn explicitly_allows(&self, client: &ClientInfo, action: Action, topic: &str) -> bool {
        let rules = self.current.read().clone();
        rules.explicitly_allows(client, action, topic)
    }
}

/// The broker's handle on a [`ReloadingAcl`] that [`watch`] also holds.
#[derive(Debug)]
pub struct SharedAcl(pub Arc<ReloadingAcl>);

impl Authorizer for SharedAcl {
    fn authorize(&self, client: &ClientInfo, action: Action, topic: &str) -> Permission {
        self.0.authorize(client, action, topic)
    }

    fn explicitly_allows(&self, client: &ClientInfo, action: Action, topic: &str) -> bool {
        self.0.explicitly_allows(client, action, topic)
    }
}

fn stamp(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reload `acl` when its file changes or on SIGHUP, until the ACL is
/// dropped (with its broker).
pub async fn watch(acl: std::sync::Weak<ReloadingAcl>) {
    let mut hangup = Hangups::new();
    let Some(path) = acl.upgrade().map(|a| a.path.clone()) else {
        return;
    };
    let mut last = stamp(&path);
    loop {
        let sighup = hangup.next();
        let hup = tokio::select! {
            _ = tokio::time::sleep(RECHECK) => false,
            _ = sighup => true,
        };
        let Some(acl) = acl.upgrade() else {
            return;
        };
        let now = stamp(&path);
        if hup || now != last {
            last = now;
            acl.reload();
        }
    }
}
