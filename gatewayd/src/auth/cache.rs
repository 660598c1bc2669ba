//! Agent tokens already verified: parsing a biscuit and checking its signatures costs far more
//! than evaluating its Datalog, and an agent sends the same token with every request. The
//! cache keeps the parsed, verified [`Biscuit`] per token string (bounded, least recently used
//! out first). Revocation is checked on every request.
//!
//! Each entry also keeps the Datalog's last answers ([`Decisions`]) per (service, path,
//! operation), with the second they were evaluated at: the authorizer's only other input is
//! the `time` fact, which has a resolution of one second, so a request in the same second
//! gets exactly the answer the evaluation would give; a request in another second evaluates
//! again (expiry is decided with each request's own time).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use biscuit_auth::{Biscuit, PublicKey};

use super::authorize::{AgentId, Op, Request};
use super::{authorize, unix_secs, AuthError};

/// Answers kept per token; when full, they are all forgotten.
pub const DECISIONS_PER_TOKEN: usize = 64;

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
    /// The earliest expiry (Unix seconds) among the expiry checks nkmc generates
    /// ([`super::token::inspect`]); a check of other Datalog is not read here.
    pub expires_at: Option<u64>,
    /// The Datalog's answers for this token.
    pub decisions: Decisions,
}

/// What the Datalog answered for one request of a token (deterministic answers only: a
/// refusal for hitting the authorizer's time limit is never kept).
#[derive(Debug, Clone)]
pub enum Decision {
    /// Allowed, for this agent.
    Allowed(AgentId),
    /// [`AuthError::Denied`].
    Denied,
    /// [`AuthError::Expired`].
    Expired,
}

impl Decision {
    /// The decision of an evaluation, if it is one to keep.
    pub fn of(result: &Result<AgentId, AuthError>) -> Option<Decision> {
        match result {
            Ok(agent) => Some(Decision::Allowed(agent.clone())),
            Err(AuthError::Denied) => Some(Decision::Denied),
            Err(AuthError::Expired) => Some(Decision::Expired),
            Err(_) => None,
        }
    }

    /// Back to what the evaluation returned.
    pub fn result(self) -> Result<AgentId, AuthError> {
        match self {
            Decision::Allowed(agent) => Ok(agent),
            Decision::Denied => Err(AuthError::Denied),
            Decision::Expired => Err(AuthError::Expired),
        }
    }
}

/// (service, path, operation) → (the second of the evaluation, its decision).
type DecisionMap = HashMap<(Option<String>, String, Op), (u64, Decision)>;

/// The Datalog answers of one token, by request and second (bounded by
/// [`DECISIONS_PER_TOKEN`]).
#[derive(Debug, Default)]
pub struct Decisions(Mutex<DecisionMap>);

impl Decisions {
    fn lock(&self) -> std::sync::MutexGuard<'_, DecisionMap> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The answer for `req` if one was evaluated in the same second as `req.now`.
    pub fn get(&self, req: &Request) -> Option<Decision> {
        let map = self.lock();
        let key = (req.service.clone(), req.path.clone(), req.operation);
        match map.get(&key) {
            Some((secs, d)) if *secs == unix_secs(req.now) => Some(d.clone()),
            _ => None,
        }
    }

    /// Keeps the answer evaluated for `req`.
    pub fn keep(&self, req: &Request, decision: Decision) {
        let mut map = self.lock();
        let key = (req.service.clone(), req.path.clone(), req.operation);
        if map.len() >= DECISIONS_PER_TOKEN && !map.contains_key(&key) {
            map.clear();
        }
        map.insert(key, (unix_secs(req.now), decision));
    }

    /// How many answers are kept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
        let revocation_ids = biscuit.revocation_identifiers().iter().map(hex::encode).collect();
        let (agent, expires_at) = match super::token::inspect(token, None) {
            Ok(info) => (info.agent, info.expires_at),
            Err(_) => (None, None),
        };
        let verified =
            Arc::new(Verified { biscuit, revocation_ids, agent, expires_at, decisions: Decisions::default() });
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
