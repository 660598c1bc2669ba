//! Agent tokens already verified: parsing a biscuit and checking its signatures costs far more
//! than evaluating its Datalog, and an agent sends the same token with every request. The
//! cache keeps the parsed, verified [`Biscuit`] per token string (bounded, least recently used
//! out first). Only what depends on the token's bytes alone is kept: revocation is checked
//! and the Datalog (expiry included) evaluated on every request, with the request's time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use biscuit_auth::{Biscuit, PublicKey};

use super::{authorize, hex, AuthError};

/// Tokens kept by default. Tokens are a few hundred bytes (at most
/// [`authorize::MAX_TOKEN_BYTES`]); a gateway serves a handful of agents.
pub const DEFAULT_CAPACITY: usize = 256;

/// A token whose signatures verified with the root key and that passed the structural caps.
#[derive(Debug)]
pub struct Verified {
    /// The parsed token.
    pub biscuit: Biscuit,
    /// Its blocks' revocation ids, in hex (as the revocation list holds them).
    pub revocation_ids: Vec<String>,
    /// The agent its authority block names ([`super::token::inspect`]).
    pub agent: Option<String>,
}

/// The bounded cache of verified tokens of one root key.
#[derive(Debug)]
pub struct VerifiedTokens {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Token string → entry and the tick of its last use.
    entries: HashMap<String, (Arc<Verified>, u64)>,
    tick: u64,
}

impl VerifiedTokens {
    /// An empty cache holding at most `capacity` tokens (at least one).
    pub fn new(capacity: usize) -> Self {
        VerifiedTokens { capacity: capacity.max(1), inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The verified token for `token`: from the cache, else parsed and verified with `root`
    /// ([`authorize::parse_verified`]) and kept. A token that fails is not kept.
    pub fn get_or_verify(&self, root: &PublicKey, token: &str) -> Result<Arc<Verified>, AuthError> {
        let token = token.trim();
        if let Some(v) = self.get(token) {
            return Ok(v);
        }
        let biscuit = authorize::parse_verified(root, token)?;
        let revocation_ids = biscuit.revocation_identifiers().iter().map(|id| hex(id)).collect();
        let agent = super::token::inspect(token, None).ok().and_then(|i| i.agent);
        let verified = Arc::new(Verified { biscuit, revocation_ids, agent });
        self.insert(token, verified.clone());
        Ok(verified)
    }

    fn get(&self, token: &str) -> Option<Arc<Verified>> {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        inner.entries.get_mut(token).map(|(v, used)| {
            *used = tick;
            v.clone()
        })
    }

    fn insert(&self, token: &str, verified: Arc<Verified>) {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        if !inner.entries.contains_key(token) && inner.entries.len() >= self.capacity {
            let oldest = inner.entries.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                inner.entries.remove(&oldest);
            }
        }
        inner.entries.insert(token.to_owned(), (verified, tick));
    }

    /// How many tokens are kept.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no token is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `token` is kept (tests).
    pub fn contains(&self, token: &str) -> bool {
        self.lock().entries.contains_key(token.trim())
    }
}

impl Default for VerifiedTokens {
    fn default() -> Self {
        VerifiedTokens::new(DEFAULT_CAPACITY)
    }
}
