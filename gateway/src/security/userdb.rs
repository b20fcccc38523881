//! The built-in user database: a text file with one user per line,
//!
//! ```text
//! # comments and blank lines are ignored
//! alice:$pbkdf2-sha256$i=4096$<salt, base64>$<hash, base64>
//! ```
//!
//! The hash is PBKDF2-HMAC-SHA256 (RFC 8018) of the password with a random
//! 16-byte salt, 32 bytes long, in the PHC string style (unpadded
//! standard base64). PBKDF2-SHA256 is exactly SCRAM-SHA-256's `Hi()`
//! (RFC 5802 §2.2), so the same entry serves plain CONNECT passwords and
//! MQTT 5 enhanced authentication (ADR 0012). `tributary users add` writes
//! entries; the file is re-read when its modification time changes (checked
//! at most every [`RECHECK`]) and on SIGHUP.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use parking_lot::Mutex;
use ring::pbkdf2;
use tracing::{info, warn};

/// Default PBKDF2 iteration count for new entries (SCRAM's recommended minimum).
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// How often, at most, the file's modification time is looked at.
pub const RECHECK: Duration = Duration::from_secs(2);

/// Unpadded standard base64 on output; padding optional on input.
pub const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a users file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum UserDbError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A line is not `user:$pbkdf2-sha256$i=N$salt$hash`.
    #[error("{path}:{line}: {reason}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Bad input to `users add`.
    #[error("{0}")]
    Invalid(String),
}

/// One user's stored credential.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// PBKDF2 iterations.
    pub iterations: NonZeroU32,
    /// Salt.
    pub salt: Vec<u8>,
    /// PBKDF2-HMAC-SHA256(password, salt, iterations), 32 bytes (SCRAM's SaltedPassword).
    pub hash: Vec<u8>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// A new credential for `password` with a random salt.
    pub fn new(password: &[u8], iterations: u32) -> Result<Credential, UserDbError> {
        let iterations = NonZeroU32::new(iterations)
            .ok_or_else(|| UserDbError::Invalid("iterations must be at least 1".into()))?;
        let salt: [u8; 16] = rand::random();
        let mut hash = vec![0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            &salt,
            password,
            &mut hash,
        );
        Ok(Credential {
            iterations,
            salt: salt.to_vec(),
            hash,
        })
    }

    /// Constant-time check of `password`.
    pub fn verify(&self, password: &[u8]) -> bool {
        pbkdf2::verify(
            pbkdf2::PBKDF2_HMAC_SHA256,
            self.iterations,
            &self.salt,
            password,
            &self.hash,
        )
        .is_ok()
    }

    /// The PHC-style encoding written to the file.
    pub fn encode(&self) -> String {
        format!(
            "$pbkdf2-sha256$i={}${}${}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(&self.hash)
        )
    }

    /// Parse the PHC-style encoding.
    pub fn decode(text: &str) -> Result<Credential, String> {
        let parts: Vec<&str> = text.split('$').collect();
        let ["", "pbkdf2-sha256", iterations, salt, hash] = parts.as_slice() else {
            return Err("expected $pbkdf2-sha256$i=N$salt$hash".into());
        };
        let iterations = iterations
            .strip_prefix("i=")
            .and_then(|n| n.parse::<u32>().ok())
            .and_then(NonZeroU32::new)
            .ok_or("bad iteration count (expected i=N, N >= 1)")?;
        let salt = B64.decode(salt).map_err(|e| format!("bad salt: {e}"))?;
        let hash = B64.decode(hash).map_err(|e| format!("bad hash: {e}"))?;
        if hash.len() != 32 {
            return Err(format!("hash must be 32 bytes, got {}", hash.len()));
        }
        Ok(Credential {
            iterations,
            salt,
            hash,
        })
    }
}

/// Parse a users file's text.
pub fn parse(path: &Path, text: &str) -> Result<HashMap<String, Credential>, UserDbError> {
    let mut users = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let syntax = |reason: String| UserDbError::Syntax {
            path: path.to_owned(),
            line: i + 1,
            reason,
        };
        let Some((user, cred)) = line.split_once(':') else {
            return Err(syntax("expected user:$pbkdf2-sha256$...".into()));
        };
        if user.is_empty() {
            return Err(syntax("empty user name".into()));
        }
        let cred = Credential::decode(cred).map_err(syntax)?;
        if users.insert(user.to_owned(), cred).is_some() {
            return Err(syntax(format!("user {user:?} appears twice")));
        }
    }
    Ok(users)
}

fn read(path: &Path) -> Result<(HashMap<String, Credential>, Option<SystemTime>), UserDbError> {
    let io = |source| UserDbError::Io {
        path: path.to_owned(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(io)?;
    let stamp = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    Ok((parse(path, &text)?, stamp))
}

#[derive(Debug)]
struct Loaded {
    users: Arc<HashMap<String, Credential>>,
    /// The iteration count most users have, for made-up credentials.
    typical_iterations: NonZeroU32,
    stamp: Option<SystemTime>,
    checked: Instant,
}

impl Loaded {
    fn set_users(&mut self, users: HashMap<String, Credential>) {
        self.typical_iterations = super::decoy::typical_iterations(&users);
        self.users = Arc::new(users);
    }
}

/// The users file, re-read when it changes.
#[derive(Debug)]
pub struct UserDb {
    path: PathBuf,
    state: Mutex<Loaded>,
    decoy: super::decoy::Decoy,
}

impl UserDb {
    /// Load `path`; an unreadable or malformed file is an error at start-up.
    pub fn open(path: &Path) -> Result<UserDb, UserDbError> {
        let (users, stamp) = read(path)?;
        Ok(UserDb {
            decoy: super::decoy::Decoy::for_users_file(path),
            path: path.to_owned(),
            state: Mutex::new(Loaded {
                typical_iterations: super::decoy::typical_iterations(&users),
                users: Arc::new(users),
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    /// The users, re-read first if the file changed (looked at no more
    /// often than [`RECHECK`]). A file that became unreadable or malformed
    /// keeps the previous users and is logged.
    pub fn users(&self) -> Arc<HashMap<String, Credential>> {
        let mut st = self.state.lock();
        if st.checked.elapsed() >= RECHECK {
            st.checked = Instant::now();
            let stamp = std::fs::metadata(&self.path)
                .and_then(|m| m.modified())
                .ok();
            if stamp != st.stamp {
                st.stamp = stamp;
                match read(&self.path) {
                    Ok((users, _)) => {
                        info!(file = %self.path.display(), users = users.len(), "users file reloaded");
                        st.set_users(users);
                    }
                    Err(e) => {
                        warn!(error = %e, "users file not reloaded; keeping the previous users")
                    }
                }
            }
        }
        st.users.clone()
    }

    /// The credential of `user`.
    pub fn get(&self, user: &str) -> Option<Credential> {
        self.users().get(user).cloned()
    }

    /// What SCRAM announces for `user`, who does not exist: a salt no one
    /// can compute without this installation's secret, and the iteration
    /// count real users have ([`super::decoy`]).
    pub fn decoy(&self, user: &str) -> (Vec<u8>, NonZeroU32) {
        let _ = self.users(); // re-read first if the file changed
        let iterations = self.state.lock().typical_iterations;
        (self.decoy.salt(user), iterations)
    }

    /// Re-read the file now (SIGHUP), whatever its modification time says.
    pub fn reload(&self) {
        let mut st = self.state.lock();
        match read(&self.path) {
            Ok((users, stamp)) => {
                info!(file = %self.path.display(), users = users.len(), "users file reloaded");
                st.set_users(users);
                st.stamp = stamp;
                st.checked = Instant::now();
            }
            Err(e) => warn!(error = %e, "users file not reloaded; keeping the previous users"),
        }
    }
}

/// Re-read `db` on every SIGHUP until it is dropped (with its broker).
pub async fn reload_on_hangup(db: std::sync::Weak<UserDb>) {
    let mut hangups = crate::tls::Hangups::new();
    loop {
        hangups.next().await;
        let Some(db) = db.upgrade() else {
            return;
        };
        db.reload();
    }
}

/// Add or replace `user` in the file at `path` (created if missing),
/// keeping every other line as it is.
pub fn add_user(
    path: &Path,
    user: &str,
    password: &str,
    iterations: u32,
) -> Result<(), UserDbError> {
    if user.is_empty() || user.contains(':') || user.contains(char::is_whitespace) {
        return Err(UserDbError::Invalid(
            "user name must be non-empty, without `:` or whitespace".into(),
        ));
    }
    if password.is_empty() {
        return Err(UserDbError::Invalid("password must not be empty".into()));
    }
    let io = |source| UserDbError::Io {
        path: path.to_owned(),
        source,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    parse(path, &text)?;
    let cred = Credential::new(password.as_bytes(), iterations)?;
    let entry = format!("{user}:{}", cred.encode());
    let mut lines: Vec<String> = Vec::new();
    let mut replaced = false;
    for line in text.lines() {
        if line.trim().split_once(':').is_some_and(|(u, _)| u == user) {
            lines.push(entry.clone());
            replaced = true;
        } else {
            lines.push(line.to_owned());
        }
    }
    if !replaced {
        lines.push(entry);
    }
    let mut out = lines.join("\n");
    out.push('\n');
    // Write beside and rename, so a reader never sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, out).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Remove `user` from the file; false if it was not there.
pub fn delete_user(path: &Path, user: &str) -> Result<bool, UserDbError> {
    let io = |source| UserDbError::Io {
        path: path.to_owned(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(io)?;
    let before = text.lines().count();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| l.trim().split_once(':').is_none_or(|(u, _)| u != user))
        .collect();
    if kept.len() == before {
        return Ok(false);
    }
    let mut out = kept.join("\n");
    out.push('\n');
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, out).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_round_trip_and_verify() {
        let c = Credential::new(b"s3cret", 64).expect("cred");
        let back = Credential::decode(&c.encode()).expect("decode");
        assert_eq!(back, c);
        assert!(back.verify(b"s3cret"));
        assert!(!back.verify(b"s3cret!"));
    }

    #[test]
    fn rfc7677_style_vector() {
        // SCRAM-SHA-256 test vector (RFC 7677 §3): SaltedPassword for
        // "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096 iterations.
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
        let mut out = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            NonZeroU32::new(4096).expect("nz"),
            &salt,
            b"pencil",
            &mut out,
        );
        let c = Credential {
            iterations: NonZeroU32::new(4096).expect("nz"),
            salt,
            hash: out.to_vec(),
        };
        assert!(c.verify(b"pencil"));
    }

    #[test]
    fn file_add_replace_delete() {
        let dir = std::env::temp_dir().join(format!("tributary-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("users.txt");
        let _ = std::fs::remove_file(&path);
        add_user(&path, "alice", "one", 8).expect("add");
        add_user(&path, "bob", "two", 8).expect("add");
        add_user(&path, "alice", "three", 8).expect("replace");
        let db = UserDb::open(&path).expect("open");
        assert!(db.get("alice").expect("alice").verify(b"three"));
        assert!(db.get("bob").expect("bob").verify(b"two"));
        assert!(delete_user(&path, "bob").expect("delete"));
        assert!(!delete_user(&path, "bob").expect("delete again"));
        let users = parse(&path, &std::fs::read_to_string(&path).expect("read")).expect("parse");
        assert_eq!(users.len(), 1);
        assert!(add_user(&path, "a:b", "x", 8).is_err());
        let bad = parse(Path::new("u"), "x:$md5$1$2$3\n");
        assert!(matches!(bad, Err(UserDbError::Syntax { line: 1, .. })));
    }
}
