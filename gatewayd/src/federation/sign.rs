//! Signed peer messages: HMAC-SHA256 with the pair's shared secret over everything that
//! gives a message its meaning — method, path, a hash of the body, time, a nonce, who sends
//! and who must receive it. A message is accepted within ±[`MAX_SKEW`] of the receiver's
//! clock, once ([`NonceCache`]), by its recipient only; the MAC is compared in constant time.
//!
//! ```text
//! nkmc-federation-v1 \n METHOD \n PATH \n hex(sha256(body)) \n TIMESTAMP \n NONCE \n SENDER \n RECIPIENT
//! ```
//!
//! A response is signed the same way with method `RESPONSE`, the path `STATUS`, and the
//! request's nonce, with sender and recipient swapped: it cannot be replayed as a request,
//! nor as the answer to another request.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The most a message's timestamp may differ from the receiver's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(60);
/// Shortest shared secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;
/// Nonces remembered at most (older ones fall out of the skew window first).
pub const NONCE_CAPACITY: usize = 100_000;

/// Header names.
pub mod header {
    /// The sender's gateway id.
    pub const SENDER: &str = "x-nkmc-sender";
    /// The recipient's gateway id.
    pub const RECIPIENT: &str = "x-nkmc-recipient";
    /// Unix seconds.
    pub const TIMESTAMP: &str = "x-nkmc-timestamp";
    /// 32 hex digits, fresh per request.
    pub const NONCE: &str = "x-nkmc-nonce";
    /// Hex HMAC-SHA256.
    pub const SIGNATURE: &str = "x-nkmc-signature";
}

/// The signature headers of a message, as received.
#[derive(Debug, Clone, Copy)]
pub struct SignedHeaders<'a> {
    /// `x-nkmc-sender`.
    pub sender: &'a str,
    /// `x-nkmc-recipient`.
    pub recipient: &'a str,
    /// `x-nkmc-timestamp`.
    pub timestamp: u64,
    /// `x-nkmc-nonce`.
    pub nonce: &'a str,
    /// `x-nkmc-signature`.
    pub signature: &'a str,
}

impl<'a> SignedHeaders<'a> {
    /// All five headers, or `None` when one is missing or malformed.
    pub fn from(headers: &'a reqwest::header::HeaderMap) -> Option<Self> {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        Some(SignedHeaders {
            sender: get(header::SENDER)?,
            recipient: get(header::RECIPIENT)?,
            timestamp: get(header::TIMESTAMP)?.parse().ok()?,
            nonce: get(header::NONCE)?,
            signature: get(header::SIGNATURE)?,
        })
    }
}

/// Why a message was refused. Peers only ever see a terse refusal; the variant is logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// A header is missing or malformed.
    #[error("federation: the signature headers are missing or malformed")]
    Malformed,
    /// Sent to another gateway.
    #[error("federation: the message is addressed to another gateway")]
    WrongRecipient,
    /// Outside the time window.
    #[error("federation: the message's time is outside the accepted window")]
    Stale,
    /// Seen before.
    #[error("federation: the message was already received (replay)")]
    Replayed,
    /// The MAC does not match.
    #[error("federation: the signature does not match")]
    BadSignature,
    /// A secret too weak to use.
    #[error(
        "federation: a peer secret must be at least {MIN_SECRET_BYTES} bytes with at least 16 distinct byte \
         values; generate one with `openssl rand -hex 32`"
    )]
    WeakSecret,
}

/// Refuses secrets that are short or repetitive.
pub fn check_secret(secret: &[u8]) -> Result<(), SignError> {
    let distinct = secret.iter().collect::<std::collections::BTreeSet<_>>().len();
    if secret.len() < MIN_SECRET_BYTES || distinct < 16 {
        return Err(SignError::WeakSecret);
    }
    Ok(())
}

/// What is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// `POST`, or `RESPONSE` for an answer.
    pub method: &'a str,
    /// The request path (`/federation/exec`), or the status code of an answer.
    pub path: &'a str,
    /// The body.
    pub body: &'a [u8],
    /// Unix seconds.
    pub timestamp: u64,
    /// The request's nonce.
    pub nonce: &'a str,
    /// Who sends.
    pub sender: &'a str,
    /// Who must receive.
    pub recipient: &'a str,
}

impl Envelope<'_> {
    fn canonical(&self) -> Vec<u8> {
        let body_hash = hex::encode(Sha256::digest(self.body));
        format!(
            "nkmc-federation-v1\n{}\n{}\n{body_hash}\n{}\n{}\n{}\n{}",
            self.method, self.path, self.timestamp, self.nonce, self.sender, self.recipient
        )
        .into_bytes()
    }

    /// The hex MAC of this envelope under `secret`.
    pub fn sign(&self, secret: &[u8]) -> String {
        let mut mac = mac(secret);
        mac.update(&self.canonical());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Checks the MAC in constant time.
    pub fn verify(&self, secret: &[u8], signature: &str) -> Result<(), SignError> {
        let given = hex::decode(signature).map_err(|_| SignError::Malformed)?;
        let mut mac = mac(secret);
        mac.update(&self.canonical());
        mac.verify_slice(&given).map_err(|_| SignError::BadSignature)
    }

    /// The receiver's checks, in order: addressed to `me`, within the window around `now`,
    /// signed with `secret`, and (last, so forgeries cannot fill it) never seen before.
    pub fn accept(
        &self,
        me: &str,
        secret: &[u8],
        signature: &str,
        now: SystemTime,
        nonces: &NonceCache,
    ) -> Result<(), SignError> {
        if self.recipient != me {
            return Err(SignError::WrongRecipient);
        }
        let now_s = unix(now);
        if now_s.abs_diff(self.timestamp) > MAX_SKEW.as_secs() {
            return Err(SignError::Stale);
        }
        if self.nonce.len() != 32 || !self.nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SignError::Malformed);
        }
        self.verify(secret, signature)?;
        nonces.insert(self.sender, self.nonce, now_s)
    }
}

/// HMAC-SHA256 keyed with `secret`.
#[allow(clippy::expect_used)] // HMAC takes keys of any length
pub(crate) fn mac(secret: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts any key length")
}

/// Unix seconds of `t` (0 before the epoch).
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A fresh nonce: 16 random bytes in hex.
pub fn nonce() -> String {
    use aes_gcm::aead::rand_core::RngCore;
    let mut b = [0u8; 16];
    aes_gcm::aead::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// Nonces seen within the skew window, per sender: a replay inside the window is refused,
/// one outside it is refused as stale.
#[derive(Debug, Default)]
pub struct NonceCache {
    inner: Mutex<Nonces>,
}

#[derive(Debug, Default)]
struct Nonces {
    seen: HashMap<(String, String), u64>,
    order: VecDeque<(u64, String, String)>,
}

impl NonceCache {
    fn insert(&self, sender: &str, nonce: &str, now: u64) -> Result<(), SignError> {
        let mut n = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Forget what the window no longer accepts (timestamps up to MAX_SKEW ahead).
        let horizon = now.saturating_sub(2 * MAX_SKEW.as_secs());
        while let Some((t, _, _)) = n.order.front() {
            if *t >= horizon && n.order.len() < NONCE_CAPACITY {
                break;
            }
            if let Some((_, s, k)) = n.order.pop_front() {
                n.seen.remove(&(s, k));
            }
        }
        let key = (sender.to_owned(), nonce.to_owned());
        if n.seen.contains_key(&key) {
            return Err(SignError::Replayed);
        }
        n.seen.insert(key.clone(), now);
        n.order.push_back((now, key.0, key.1));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789ABCDEF-xyz";

    fn env<'a>(body: &'a [u8], nonce: &'a str, ts: u64) -> Envelope<'a> {
        Envelope { method: "POST", path: "/federation/exec", body, timestamp: ts, nonce, sender: "a", recipient: "b" }
    }

    #[test]
    fn a_signed_message_is_accepted_once_by_its_recipient_within_the_window() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let n = nonce();
        let e = env(b"{}", &n, 1_000_000);
        let sig = e.sign(SECRET);
        let cache = NonceCache::default();
        assert_eq!(e.accept("c", SECRET, &sig, now, &cache), Err(SignError::WrongRecipient));
        assert_eq!(e.accept("b", SECRET, &sig, now, &cache), Ok(()));
        assert_eq!(e.accept("b", SECRET, &sig, now, &cache), Err(SignError::Replayed));
        let late = now + MAX_SKEW + Duration::from_secs(1);
        let e2 = env(b"{}", "00000000000000000000000000000000", 1_000_000);
        assert_eq!(e2.accept("b", SECRET, &e2.sign(SECRET), late, &cache), Err(SignError::Stale));
    }

    #[test]
    fn every_field_is_covered_by_the_signature() {
        let n = nonce();
        let e = env(b"{\"op\":\"read\"}", &n, 42);
        let sig = e.sign(SECRET);
        let other_nonce = nonce();
        let changed = [
            Envelope { method: "GET", ..e.clone() },
            Envelope { path: "/federation/query", ..e.clone() },
            Envelope { body: b"{\"op\":\"delete\"}", ..e.clone() },
            Envelope { timestamp: 43, ..e.clone() },
            Envelope { nonce: &other_nonce, ..e.clone() },
            Envelope { sender: "c", ..e.clone() },
            Envelope { recipient: "c", ..e.clone() },
        ];
        for c in changed {
            assert_eq!(c.verify(SECRET, &sig), Err(SignError::BadSignature), "{c:?}");
        }
        assert_eq!(e.verify(b"another secret, just as long as the first", &sig), Err(SignError::BadSignature));
        assert_eq!(e.verify(SECRET, "zz"), Err(SignError::Malformed));
        assert_eq!(e.verify(SECRET, &sig), Ok(()));
    }

    #[test]
    fn weak_secrets_are_refused() {
        assert_eq!(check_secret(b"short"), Err(SignError::WeakSecret));
        assert_eq!(check_secret(&[b'a'; 64]), Err(SignError::WeakSecret));
        assert_eq!(check_secret(b"abababababababababababababababababab"), Err(SignError::WeakSecret));
        assert_eq!(check_secret(SECRET), Ok(()));
    }

    #[test]
    fn the_nonce_cache_forgets_only_what_the_window_refuses_anyway() {
        let cache = NonceCache::default();
        cache.insert("a", "n1", 1000).unwrap();
        assert_eq!(cache.insert("a", "n1", 1100), Err(SignError::Replayed));
        assert_eq!(cache.insert("b", "n1", 1100), Ok(()), "nonces are per sender");
        cache.insert("a", "n2", 1000 + 2 * MAX_SKEW.as_secs() + 1).unwrap();
        assert_eq!(cache.insert("a", "n1", 1000 + 2 * MAX_SKEW.as_secs() + 1), Ok(()), "n1 fell out of the window");
    }
}
