//! JWT authentication (RFC 7519, JWS compact serialization RFC 7515):
//! HS256 (HMAC-SHA256 with a shared secret) or RS256 (RSASSA-PKCS1-v1_5
//! SHA-256 with a PEM public key), verified with ring.
//!
//! A password (or user name, per `from`) that is not three dot-separated
//! parts is not a token: the backend ignores it and the chain goes on. A
//! token is refused when its header names another algorithm, its signature
//! does not verify, `exp` has passed or is missing (unless `require_exp` is
//! off), `nbf` is further ahead than `clock_skew`, or a claim named in
//! `verify_claims` differs (`${clientid}` / `${username}` expand).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::{hmac, signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::SubjectPublicKeyInfoDer;
use serde_json::Value;
use tributary_config::{JwtAlgorithm, JwtAuth, JwtFrom};
use tributary_core::ClientInfo;

/// Why the JWT backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// The secret is not valid base64.
    #[error("authentication.jwt.secret: not valid base64: {0}")]
    Secret(String),
    /// The public key file is unusable.
    #[error("authentication.jwt.public_key ({path}): {reason}")]
    PublicKey {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// What a token said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not a token: no opinion.
    NotAToken,
    /// Valid.
    Valid,
    /// A token, but not acceptable (the reason, for the log).
    Invalid(&'static str),
}

enum Key {
    Hs256(hmac::Key),
    Rs256(Vec<u8>),
}

/// The configured verifier.
pub struct JwtVerifier {
    key: Key,
    from: JwtFrom,
    verify_claims: BTreeMap<String, String>,
    require_exp: bool,
    /// Seconds an `nbf` may be ahead of our clock.
    clock_skew: f64,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("from", &self.from)
            .field("verify_claims", &self.verify_claims)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Build from `[authentication.jwt]`.
    pub fn new(c: &JwtAuth) -> Result<JwtVerifier, JwtError> {
        let key = match c.algorithm {
            JwtAlgorithm::Hs256 => {
                let secret = if c.secret_base64_encoded {
                    STANDARD
                        .decode(c.secret.trim())
                        .map_err(|e| JwtError::Secret(e.to_string()))?
                } else {
                    c.secret.as_bytes().to_vec()
                };
                Key::Hs256(hmac::Key::new(hmac::HMAC_SHA256, &secret))
            }
            JwtAlgorithm::Rs256 => {
                let bad = |reason: String| JwtError::PublicKey {
                    path: c.public_key.clone(),
                    reason,
                };
                let spki = SubjectPublicKeyInfoDer::from_pem_file(&c.public_key)
                    .map_err(|e| bad(format!("{e} (expected a PEM `PUBLIC KEY`)")))?;
                let rsa = crate::der::spki_public_key(spki.as_ref())
                    .ok_or_else(|| bad("not an RSA SubjectPublicKeyInfo".into()))?;
                Key::Rs256(rsa.to_vec())
            }
        };
        Ok(JwtVerifier {
            key,
            from: c.from,
            verify_claims: c.verify_claims.clone(),
            require_exp: c.require_exp,
            clock_skew: c.clock_skew.as_secs_f64(),
        })
    }

    /// Check the client's token.
    pub fn verify(&self, client: &ClientInfo, password: Option<&[u8]>) -> Verdict {
        let token = match self.from {
            JwtFrom::Password => password.and_then(|p| std::str::from_utf8(p).ok()),
            JwtFrom::Username => client.username.as_deref(),
        };
        let Some(token) = token else {
            return Verdict::NotAToken;
        };
        self.verify_token(token, client, now_secs())
    }

    /// Check `token` at time `now` (seconds since the epoch).
    pub fn verify_token(&self, token: &str, client: &ClientInfo, now: f64) -> Verdict {
        let parts: Vec<&str> = token.split('.').collect();
        let [header, payload, sig] = parts.as_slice() else {
            return Verdict::NotAToken;
        };
        let (Ok(header_json), Ok(payload_json), Ok(sig)) = (
            URL_SAFE_NO_PAD.decode(header),
            URL_SAFE_NO_PAD.decode(payload),
            URL_SAFE_NO_PAD.decode(sig),
        ) else {
            return Verdict::Invalid("not base64url");
        };
        let signed = &token[..header.len() + 1 + payload.len()];
        let Ok(header) = serde_json::from_slice::<Value>(&header_json) else {
            return Verdict::Invalid("header is not JSON");
        };
        let expected_alg = match self.key {
            Key::Hs256(_) => "HS256",
            Key::Rs256(_) => "RS256",
        };
        if header.get("alg").and_then(Value::as_str) != Some(expected_alg) {
            return Verdict::Invalid("unexpected alg");
        }
        let ok = match &self.key {
            Key::Hs256(k) => hmac::verify(k, signed.as_bytes(), &sig).is_ok(),
            Key::Rs256(der) => {
                signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, der)
                    .verify(signed.as_bytes(), &sig)
                    .is_ok()
            }
        };
        if !ok {
            return Verdict::Invalid("bad signature");
        }
        let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(&payload_json) else {
            return Verdict::Invalid("claims are not a JSON object");
        };
        match claims.get("exp") {
            Some(exp) => match exp.as_f64() {
                Some(exp) if now < exp => {}
                _ => return Verdict::Invalid("expired"),
            },
            None if self.require_exp => return Verdict::Invalid("no exp claim"),
            None => {}
        }
        if let Some(nbf) = claims.get("nbf") {
            match nbf.as_f64() {
                Some(nbf) if now + self.clock_skew >= nbf => {}
                _ => return Verdict::Invalid("not yet valid"),
            }
        }
        for (name, expected) in &self.verify_claims {
            let expected = expected
                .replace("${clientid}", &client.client_id)
                .replace("${username}", client.username.as_deref().unwrap_or(""));
            let actual = match claims.get(name) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::Bool(b)) => b.to_string(),
                _ => return Verdict::Invalid("claim missing"),
            };
            if actual != expected {
                return Verdict::Invalid("claim mismatch");
            }
        }
        Verdict::Valid
    }
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs256(secret: &str, claims: &str) -> String {
        let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
        let p = URL_SAFE_NO_PAD.encode(claims);
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        let s = hmac::sign(&key, format!("{h}.{p}").as_bytes());
        format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(s.as_ref()))
    }

    fn client() -> ClientInfo {
        ClientInfo {
            client_id: "dev-1".into(),
            username: Some("alice".into()),
            peer: None,
            protocol: "mqtt",
        }
    }

    fn verifier(claims: &[(&str, &str)]) -> JwtVerifier {
        JwtVerifier::new(&JwtAuth {
            enabled: true,
            secret: "k3y".into(),
            verify_claims: claims
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..JwtAuth::default()
        })
        .expect("verifier")
    }

    #[test]
    fn hs256_signature_expiry_and_claims() {
        let v = verifier(&[("sub", "${clientid}")]);
        let c = client();
        let good = hs256("k3y", r#"{"sub":"dev-1","exp":2000}"#);
        assert_eq!(v.verify_token(&good, &c, 1000.0), Verdict::Valid);
        assert_eq!(
            v.verify_token(&good, &c, 2000.0),
            Verdict::Invalid("expired")
        );
        let wrong_key = hs256("other", r#"{"sub":"dev-1"}"#);
        assert_eq!(
            v.verify_token(&wrong_key, &c, 0.0),
            Verdict::Invalid("bad signature")
        );
        let wrong_sub = hs256("k3y", r#"{"sub":"dev-2","exp":2000}"#);
        assert_eq!(
            v.verify_token(&wrong_sub, &c, 0.0),
            Verdict::Invalid("claim mismatch")
        );
        let early = hs256("k3y", r#"{"sub":"dev-1","nbf":50,"exp":2000}"#);
        assert_eq!(
            v.verify_token(&early, &c, 10.0),
            Verdict::Invalid("not yet valid")
        );
        // Within the default 30 s of clock skew.
        assert_eq!(v.verify_token(&early, &c, 25.0), Verdict::Valid);
        assert_eq!(
            v.verify_token("plain-password", &c, 0.0),
            Verdict::NotAToken
        );
    }

    #[test]
    fn a_token_without_exp_is_refused_unless_configured() {
        let c = client();
        let forever = hs256("k3y", r#"{"sub":"dev-1"}"#);
        assert_eq!(
            verifier(&[]).verify_token(&forever, &c, 0.0),
            Verdict::Invalid("no exp claim")
        );
        let lenient = JwtVerifier::new(&JwtAuth {
            enabled: true,
            secret: "k3y".into(),
            require_exp: false,
            ..JwtAuth::default()
        })
        .expect("verifier");
        assert_eq!(lenient.verify_token(&forever, &c, 0.0), Verdict::Valid);
    }

    #[test]
    fn alg_none_is_refused() {
        let v = verifier(&[]);
        let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        let p = URL_SAFE_NO_PAD.encode(r#"{}"#);
        assert_eq!(
            v.verify_token(&format!("{h}.{p}."), &client(), 0.0),
            Verdict::Invalid("unexpected alg")
        );
    }
}
