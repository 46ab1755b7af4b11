//! Signed tokens: `base64url(payload) "." base64url(HMAC-SHA256(secret, payload))`.
//!
//! A rater token (`r1:<rater>`) is the rater's credential; a pair token (`t1:<task>:<rater>:<nonce>`)
//! names one shown pair. The server keeps the nonce with the task and accepts one answer per
//! task, so a forged token fails the MAC, and a replayed or duplicated one finds its task
//! answered. The payloads hold no method name.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Length of the secret in bytes.
pub const SECRET_LEN: usize = 32;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not `<payload>.<mac>` in base64url, or a payload of another kind.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The MAC does not match: not issued by this arena.
    #[error("the token's signature does not match: it was not issued by this arena")]
    Forged,
}

/// What a pair token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskClaim {
    /// The task's row id.
    pub task_id: i64,
    /// The rater it was shown to.
    pub rater: String,
    /// The nonce stored with the task.
    pub nonce: String,
}

/// Signs and verifies tokens with the arena's secret.
#[derive(Clone)]
pub struct Signer {
    key: [u8; SECRET_LEN],
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(…)")
    }
}

/// `n` random bytes as lowercase hex, from the thread's CSPRNG.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::fill(&mut bytes[..]);
    hex::encode(bytes)
}

fn is_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Signer {
    /// A signer with `key`.
    pub fn new(key: [u8; SECRET_LEN]) -> Self {
        Signer { key }
    }

    fn mac(&self, payload: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(payload);
        mac
    }

    /// `payload` signed.
    pub fn sign(&self, payload: &str) -> String {
        let tag = self.mac(payload.as_bytes()).finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// The payload of `token`, if its MAC matches (compared in constant time).
    pub fn verify(&self, token: &str) -> Result<String, TokenError> {
        let bad = |m: &str| TokenError::Malformed(m.to_string());
        if token.len() > 512 {
            return Err(bad("longer than any token this arena issues"));
        }
        let (payload, tag) = token
            .split_once('.')
            .ok_or_else(|| bad("expected `<payload>.<signature>`"))?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| bad("the payload is not base64url"))?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| bad("the signature is not base64url"))?;
        self.mac(&payload)
            .verify_slice(&tag)
            .map_err(|_| TokenError::Forged)?;
        String::from_utf8(payload).map_err(|_| bad("the payload is not UTF-8"))
    }

    /// A rater's credential.
    pub fn rater_token(&self, rater: &str) -> String {
        self.sign(&format!("r1:{rater}"))
    }

    /// The rater named by a rater token.
    pub fn verify_rater(&self, token: &str) -> Result<String, TokenError> {
        let payload = self.verify(token)?;
        match payload.strip_prefix("r1:") {
            Some(r) if is_id(r) => Ok(r.to_string()),
            _ => Err(TokenError::Malformed(
                "not a rater token (a pair token where the rater's is expected?)".into(),
            )),
        }
    }

    /// The token of a shown pair.
    pub fn task_token(&self, claim: &TaskClaim) -> String {
        self.sign(&format!(
            "t1:{}:{}:{}",
            claim.task_id, claim.rater, claim.nonce
        ))
    }

    /// The task a pair token names.
    pub fn verify_task(&self, token: &str) -> Result<TaskClaim, TokenError> {
        let payload = self.verify(token)?;
        let not_task = || {
            TokenError::Malformed(
                "not a pair token (the rater's token where a pair's is expected?)".into(),
            )
        };
        let rest = payload.strip_prefix("t1:").ok_or_else(not_task)?;
        let mut parts = rest.split(':');
        let (Some(id), Some(rater), Some(nonce), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(not_task());
        };
        let task_id = id.parse::<i64>().map_err(|_| not_task())?;
        if !is_id(rater) || !is_id(nonce) {
            return Err(not_task());
        }
        Ok(TaskClaim {
            task_id,
            rater: rater.to_string(),
            nonce: nonce.to_string(),
        })
    }

    /// A stable opaque id for an image path, so image URLs do not name methods.
    pub fn image_id(&self, path: &str) -> String {
        let tag = self
            .mac(format!("img:{path}").as_bytes())
            .finalize()
            .into_bytes();
        hex::encode(&tag[..12])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_tampering() {
        let s = Signer::new([7; SECRET_LEN]);
        let claim = TaskClaim {
            task_id: 42,
            rater: "ab12".into(),
            nonce: "ff00".into(),
        };
        let t = s.task_token(&claim);
        assert_eq!(s.verify_task(&t).unwrap(), claim);
        // Another key, a changed payload, a truncated signature (valid base64, wrong length).
        let other = Signer::new([8; SECRET_LEN]);
        assert_eq!(other.verify_task(&t), Err(TokenError::Forged));
        let (p, tag) = t.split_once('.').unwrap();
        let forged_payload = URL_SAFE_NO_PAD.encode("t1:43:ab12:ff00");
        assert_eq!(
            s.verify_task(&format!("{forged_payload}.{tag}")),
            Err(TokenError::Forged)
        );
        assert_eq!(
            s.verify_task(&format!("{p}.{}", &tag[..8])),
            Err(TokenError::Forged)
        );
        assert!(matches!(
            s.verify_task("nodot"),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            s.verify_task("a.b!"),
            Err(TokenError::Malformed(_))
        ));
        // Kinds are not interchangeable.
        let r = s.rater_token("ab12");
        assert_eq!(s.verify_rater(&r).unwrap(), "ab12");
        assert!(matches!(s.verify_task(&r), Err(TokenError::Malformed(_))));
        assert!(matches!(s.verify_rater(&t), Err(TokenError::Malformed(_))));
        assert_ne!(s.image_id("a.png"), s.image_id("b.png"));
        assert_eq!(s.image_id("a.png").len(), 24);
    }
}
