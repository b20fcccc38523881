//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as MQTT 5 enhanced authentication
//! (§4.12) against the built-in user database, method `SCRAM-SHA-256`:
//!
//! ```text
//!  CONNECT  auth data = client-first   "n,,n=user,r=cnonce"
//!  AUTH 18  auth data = server-first   "r=cnonce+snonce,s=salt,i=4096"
//!  AUTH 18  auth data = client-final   "c=biws,r=cnonce+snonce,p=proof"
//!  CONNACK  auth data = server-final   "v=signature"
//! ```
//!
//! Channel binding is not supported (`p=` in the GS2 header is refused). An
//! unknown user gets a made-up salt and fails at the proof, so the exchange
//! does not reveal which users exist.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::{digest, hmac};
use tributary_core::auth::{AuthOutcome, EnhancedAuth, EnhancedStep};

use super::userdb::{Credential, UserDb};

/// The MQTT Authentication Method name.
pub const METHOD: &str = "SCRAM-SHA-256";

#[derive(Debug)]
enum Stage {
    /// Waiting for client-first.
    First,
    /// Sent server-first; waiting for client-final.
    Final {
        username: String,
        nonce: String,
        client_first_bare: String,
        server_first: String,
        /// None for an unknown user: the proof cannot match.
        credential: Option<Credential>,
    },
    Done,
}

/// One connection's SCRAM exchange.
#[derive(Debug)]
pub struct ScramExchange {
    db: Arc<UserDb>,
    stage: Stage,
}

impl ScramExchange {
    /// A new exchange against `db`.
    pub fn new(db: Arc<UserDb>) -> ScramExchange {
        ScramExchange {
            db,
            stage: Stage::First,
        }
    }
}

fn fail() -> EnhancedStep {
    EnhancedStep::Failure(AuthOutcome::BadCredentials)
}

/// `saslname` unescaping: `=2C` → `,`, `=3D` → `=`; any other `=` is an error.
fn unescape(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i + 1..i + 3) {
            Some("2C") => out.push(','),
            Some("3D") => out.push('='),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

fn attr(part: &str, key: char) -> Option<&str> {
    part.strip_prefix(key)?.strip_prefix('=')
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

impl EnhancedAuth for ScramExchange {
    fn step(&mut self, data: &[u8]) -> EnhancedStep {
        let Ok(text) = std::str::from_utf8(data) else {
            return fail();
        };
        match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::First => {
                // gs2-header: "n,," or "y,," (no channel binding), optional authzid.
                let mut parts = text.splitn(3, ',');
                let (Some(cb), Some(_authzid), Some(bare)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return fail();
                };
                if cb != "n" && cb != "y" {
                    return fail();
                }
                let mut fields = bare.split(',');
                let (Some(user), Some(cnonce)) = (
                    fields.next().and_then(|f| attr(f, 'n')).and_then(unescape),
                    fields.next().and_then(|f| attr(f, 'r')),
                ) else {
                    return fail();
                };
                if cnonce.is_empty() || cnonce.contains(',') {
                    return fail();
                }
                let snonce: [u8; 18] = rand::random();
                let nonce = format!("{cnonce}{}", STANDARD.encode(snonce));
                let credential = self.db.get(&user);
                let (salt, iterations) = match &credential {
                    Some(c) => (c.salt.clone(), c.iterations),
                    None => self.db.decoy(&user),
                };
                let server_first = format!("r={nonce},s={},i={iterations}", STANDARD.encode(salt));
                let out = server_first.clone().into_bytes();
                self.stage = Stage::Final {
                    username: user,
                    nonce,
                    client_first_bare: bare.to_owned(),
                    server_first,
                    credential,
                };
                EnhancedStep::Continue(out)
            }
            Stage::Final {
                username,
                nonce,
                client_first_bare,
                server_first,
                credential,
            } => {
                let Some((without_proof, proof)) = text.rsplit_once(",p=") else {
                    return fail();
                };
                let mut fields = without_proof.split(',');
                let (Some(cbind), Some(r)) = (
                    fields.next().and_then(|f| attr(f, 'c')),
                    fields.next().and_then(|f| attr(f, 'r')),
                ) else {
                    return fail();
                };
                // Only "n,," / "y,," headers: c= must be their base64.
                if !(cbind == "biws" || cbind == "eSws") || r != nonce {
                    return fail();
                }
                let (Some(cred), Ok(proof)) = (credential, STANDARD.decode(proof)) else {
                    return fail();
                };
                let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
                let client_key = hmac_sha256(&cred.hash, b"Client Key");
                let stored_key = digest::digest(&digest::SHA256, &client_key);
                let signature = hmac_sha256(stored_key.as_ref(), auth_message.as_bytes());
                if proof.len() != signature.len() {
                    return fail();
                }
                let recovered: Vec<u8> = proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
                let check = digest::digest(&digest::SHA256, &recovered);
                // Compare digests in constant time via HMAC verification.
                let key = hmac::Key::new(hmac::HMAC_SHA256, b"scram-compare");
                let tag = hmac::sign(&key, stored_key.as_ref());
                if hmac::verify(&key, check.as_ref(), tag.as_ref()).is_err() {
                    return fail();
                }
                let server_key = hmac_sha256(&cred.hash, b"Server Key");
                let server_signature = hmac_sha256(&server_key, auth_message.as_bytes());
                EnhancedStep::Success {
                    username,
                    data: Some(format!("v={}", STANDARD.encode(server_signature)).into_bytes()),
                }
            }
            Stage::Done => fail(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    /// A client side of the exchange, as a test oracle (RFC 5802 §3).
    fn client_final(
        password: &[u8],
        client_first_bare: &str,
        server_first: &str,
    ) -> (String, Vec<u8>) {
        let mut salt = None;
        let mut iterations = 0;
        let mut nonce = "";
        for f in server_first.split(',') {
            if let Some(v) = attr(f, 'r') {
                nonce = v;
            } else if let Some(v) = attr(f, 's') {
                salt = Some(STANDARD.decode(v).expect("salt"));
            } else if let Some(v) = attr(f, 'i') {
                iterations = v.parse().expect("i");
            }
        }
        let mut salted = [0u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            NonZeroU32::new(iterations).expect("nz"),
            &salt.expect("salt"),
            password,
            &mut salted,
        );
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored_key = digest::digest(&digest::SHA256, &client_key);
        let sig = hmac_sha256(stored_key.as_ref(), auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        let server_key = hmac_sha256(&salted, b"Server Key");
        let expected = hmac_sha256(&server_key, auth_message.as_bytes());
        (
            format!("{without_proof},p={}", STANDARD.encode(proof)),
            expected,
        )
    }

    fn db_with(user: &str, password: &str) -> Arc<UserDb> {
        let dir =
            std::env::temp_dir().join(format!("tributary-scram-{}-{user}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("users.txt");
        let _ = std::fs::remove_file(&path);
        super::super::userdb::add_user(&path, user, password, 4096).expect("add");
        Arc::new(UserDb::open(&path).expect("open"))
    }

    fn run(db: Arc<UserDb>, user: &str, password: &str) -> EnhancedStep {
        let mut x = ScramExchange::new(db);
        let bare = format!("n={user},r=fyko+d2lbbFgONRv9qkxdawL");
        let EnhancedStep::Continue(server_first) = x.step(format!("n,,{bare}").as_bytes()) else {
            panic!("expected server-first");
        };
        let server_first = String::from_utf8(server_first).expect("utf8");
        assert!(server_first.starts_with("r=fyko+d2lbbFgONRv9qkxdawL"));
        let (final_msg, expected) = client_final(password.as_bytes(), &bare, &server_first);
        match x.step(final_msg.as_bytes()) {
            EnhancedStep::Success { username, data } => {
                assert_eq!(username, user);
                assert_eq!(
                    data,
                    Some(format!("v={}", STANDARD.encode(expected)).into_bytes())
                );
                EnhancedStep::Success {
                    username,
                    data: None,
                }
            }
            other => other,
        }
    }

    #[test]
    fn right_password_succeeds_and_server_proves_itself() {
        let db = db_with("user", "pencil");
        assert!(matches!(
            run(db, "user", "pencil"),
            EnhancedStep::Success { .. }
        ));
    }

    #[test]
    fn wrong_password_and_unknown_user_fail_at_the_proof() {
        let db = db_with("user2", "pencil");
        assert_eq!(
            run(db.clone(), "user2", "crayon"),
            EnhancedStep::Failure(AuthOutcome::BadCredentials)
        );
        assert_eq!(
            run(db, "nobody", "pencil"),
            EnhancedStep::Failure(AuthOutcome::BadCredentials)
        );
    }

    #[test]
    fn channel_binding_and_garbage_are_refused() {
        let db = db_with("user3", "pencil");
        let mut x = ScramExchange::new(db.clone());
        assert!(matches!(
            x.step(b"p=tls-unique,,n=user3,r=abc"),
            EnhancedStep::Failure(_)
        ));
        let mut x = ScramExchange::new(db);
        assert!(matches!(x.step(b"\xff"), EnhancedStep::Failure(_)));
        assert_eq!(unescape("a=2Cb=3Dc").as_deref(), Some("a,b=c"));
        assert_eq!(unescape("a=x"), None);
    }
}
