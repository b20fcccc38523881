//! What SCRAM answers for a user who does not exist: a salt and an
//! iteration count that look like a real user's, so the server-first
//! message does not tell an attacker which names are known (RFC 5802 §9
//! and RFC 7677 leave this to the server).
//!
//! The salt is an HMAC of the user name under a per-installation secret:
//! the same name gets the same salt on every try and after every restart
//! (a changing salt would give it away), and nobody without the secret can
//! compute it. The secret is 32 random bytes in a file next to the users
//! file (`<users_file>.scram-secret`, mode 0600), created on first use; when
//! it cannot be written, a secret for this process only is used and a
//! warning logged (salts then change across restarts). The iteration count
//! is the one most of the real users have.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use ring::hmac;
use tracing::warn;

use super::userdb::{Credential, DEFAULT_ITERATIONS};

/// The per-installation key for made-up salts.
pub struct Decoy {
    key: hmac::Key,
}

impl std::fmt::Debug for Decoy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decoy")
    }
}

impl Decoy {
    /// The decoy for the users file at `users_file` (its secret beside it).
    pub fn for_users_file(users_file: &Path) -> Decoy {
        let path = secret_path(users_file);
        let secret = match load_or_create(&path) {
            Ok(secret) => secret,
            Err(e) => {
                warn!(
                    file = %path.display(),
                    error = %e,
                    "SCRAM decoy secret not stored; using one for this process (unknown users' salts change across restarts)"
                );
                rand::random()
            }
        };
        Decoy {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
        }
    }

    /// The salt SCRAM announces for `user`, who does not exist.
    pub fn salt(&self, user: &str) -> Vec<u8> {
        hmac::sign(&self.key, user.as_bytes()).as_ref()[..16].to_vec()
    }
}

/// The iteration count most of `users` have (the default when there are
/// none), which a made-up credential announces too.
pub fn typical_iterations(users: &HashMap<String, Credential>) -> NonZeroU32 {
    let mut counts: HashMap<NonZeroU32, usize> = HashMap::new();
    for c in users.values() {
        *counts.entry(c.iterations).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(iterations, n)| (*n, *iterations))
        .map(|(iterations, _)| iterations)
        .or_else(|| NonZeroU32::new(DEFAULT_ITERATIONS))
        .unwrap_or(NonZeroU32::MIN)
}

fn secret_path(users_file: &Path) -> PathBuf {
    let mut name = users_file.as_os_str().to_owned();
    name.push(".scram-secret");
    PathBuf::from(name)
}

fn load_or_create(path: &Path) -> std::io::Result<[u8; 32]> {
    match std::fs::read(path) {
        Ok(bytes) => <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not 32 bytes: remove it to have a new one made",
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret: [u8; 32] = rand::random();
            write_private(path, &secret)?;
            Ok(secret)
        }
        Err(e) => Err(e),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_salt_is_stable_per_installation_and_differs_between_installations() {
        let dir = std::env::temp_dir().join(format!("tributary-decoy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let a = dir.join("a.users");
        let b = dir.join("b.users");
        let first = Decoy::for_users_file(&a).salt("mallory");
        assert_eq!(Decoy::for_users_file(&a).salt("mallory"), first);
        assert_ne!(Decoy::for_users_file(&a).salt("trudy"), first);
        assert_ne!(Decoy::for_users_file(&b).salt("mallory"), first);
        assert_eq!(first.len(), 16);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_typical_iteration_count_is_the_most_common_one() {
        let cred = |i: u32| Credential {
            iterations: NonZeroU32::new(i).expect("nz"),
            salt: vec![0; 16],
            hash: vec![0; 32],
        };
        let users: HashMap<String, Credential> = [("a", 10_000), ("b", 10_000), ("c", 4096)]
            .into_iter()
            .map(|(n, i)| (n.to_owned(), cred(i)))
            .collect();
        assert_eq!(typical_iterations(&users).get(), 10_000);
        assert_eq!(
            typical_iterations(&HashMap::new()).get(),
            DEFAULT_ITERATIONS
        );
    }
}
