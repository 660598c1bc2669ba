//! Agent identity: biscuit tokens (DESIGN "Agent identity: biscuit tokens").
//!
//! gatewayd holds a root key pair ([`keys`]); `POST /v1/tokens` mints a token for a named
//! agent ([`token::mint`]); anyone holding a token narrows it offline ([`token::attenuate`]);
//! gatewayd authorizes every operation against the canonical request ([`authorize`]) and
//! keeps a list of revoked tokens ([`revocation`]). Unauthorized looks like unknown: the
//! caller maps every refusal to "not found" and hides what a token cannot reach
//! ([`authorize::visible`]).
//!
//! # The Datalog
//!
//! **Authority block** (signed by the root key, [`token::mint`]):
//!
//! ```text
//! agent("NAME");
//! issued_at(2025-01-01T00:00:00Z);
//! ```
//!
//! It carries no right and no check: an unattenuated token may do everything.
//!
//! **Attenuation blocks** ([`token::attenuate`]) hold checks only, and every check of every
//! block must pass, so a block can only take rights away. `--allow` specs become one check
//! whose alternatives (`or`) are, in order:
//!
//! ```text
//! check if mount_root(true), path("/"), operation($op), {"list", "lookup"}.contains($op)
//!   // for each DOMAIN[:OPS]/PREFIX (PREFIX = "/" drops the path part; DOMAIN "*" is service($s)):
//!   or service(DOMAIN), operation($op), path($p), OPS.contains($op),
//!      $p == PREFIX || $p == PREFIX.d || $p == PREFIX.json
//!        || $p.starts_with(PREFIX/) || $p.starts_with(PREFIX.d/) || $p.starts_with(PREFIX?)
//!   or service(DOMAIN), operation($op), path($p), {"list", "lookup"}.contains($op),
//!      {ANCESTORS OF PREFIX}.contains($p)
//! ```
//!
//! so a prefix covers the name itself, its `NAME.d/` directory (DESIGN's children of a file),
//! its query forms (`NAME?q=...`) and its `.json` alias, and the directories on the way to it
//! can be listed (their entries are then filtered with [`authorize::visible`]). `--ttl` adds
//! `check if time($t), $t <= EXPIRY`.
//!
//! Operations ([`Op`]): `lookup` (see that a name exists: stat, lookup, an entry of a listing),
//! `list`, `read`, `write`, `delete`, `run`. Every allowed operation implies `lookup` on its
//! subtree (a file must be found before it is used) and `read` implies `list`; `list` alone
//! shows names without contents.
//!
//! **Authorizer** ([`authorize::authorize`]), built per request from the canonical path with
//! injected time:
//!
//! ```text
//! service("api.example.test");   // or mount_root(true) for the mount root
//! path("/models.d/gpt-4o");       // canonical, inside the service
//! operation("read");
//! time(2025-01-01T00:00:00Z);
//! allow if agent($a);
//! ```
//!
//! The policy and the agent query only see the authority block and the authorizer's facts
//! (biscuit's default scope): a fact such as `agent("root")` or `right(...)` in an appended
//! block grants nothing. A missing `time` fact makes every expiry check fail (fail closed).
//! Evaluation runs under explicit [`authorize::limits`], after structural caps on the token
//! ([`authorize::MAX_TOKEN_BYTES`], [`authorize::MAX_BLOCKS`], [`authorize::MAX_TOKEN_FACTS`],
//! [`authorize::MAX_TOKEN_RULES`], [`authorize::MAX_QUERY_PREDICATES`]). Third-party blocks are
//! refused.

pub mod authorize;
pub mod cache;
pub mod keys;
pub mod revocation;
pub mod token;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

use biscuit_auth::PublicKey;
use rusqlite::Connection;

pub use authorize::{AgentId, Op, Request};
pub use keys::RootKey;
pub use revocation::{RevocationList, RevokeScope};
pub use token::{Allow, TokenInfo};

/// The file holding a minted token for the CLI and mountd (`nkmc auth` writes it, 0600).
pub const TOKEN_FILE: &str = "agent.token";

/// Where `nkmc auth` saves the token of a data dir.
pub fn token_file(data_dir: &Path) -> PathBuf {
    data_dir.join(TOKEN_FILE)
}

/// Why a token operation failed. Messages start with `auth:` and never include a token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Not a biscuit token (bad base64, bad encoding, unsupported version).
    #[error(
        "auth: the token is not a valid biscuit token (was all of it copied?); `nkmc token mint --agent NAME` \
         mints one"
    )]
    Malformed,
    /// Over [`authorize::MAX_TOKEN_BYTES`].
    #[error("auth: the token is {0} bytes long; the limit is {max}", max = authorize::MAX_TOKEN_BYTES)]
    TooLarge(usize),
    /// Over a structural cap (blocks, facts, rules, predicates per query).
    #[error("auth: the token is more complex than gatewayd evaluates ({0})")]
    TooComplex(String),
    /// Signed by another root key, or a block was removed, reordered or altered.
    #[error(
        "auth: the token was not issued by this gateway (its signatures do not verify with this gateway's root key); \
         mint one here with `nkmc token mint --agent NAME`"
    )]
    NotIssuedHere,
    /// A block signed by a third party; not accepted.
    #[error("auth: tokens with third-party blocks are not accepted")]
    ThirdParty,
    /// On the revocation list.
    #[error("auth: the token has been revoked; ask the owner for a new one (`nkmc token mint --agent NAME`)")]
    Revoked,
    /// An expiry check failed (and nothing else did).
    #[error(
        "auth: the token has expired; ask the owner for a new one (`nkmc token mint --agent NAME`), or attenuate \
         one with a longer `--ttl`"
    )]
    Expired,
    /// A check or the policy refused the request.
    #[error("auth: the token does not allow this operation")]
    Denied,
    /// Evaluation hit the authorizer's limits (facts, iterations, time).
    #[error("auth: evaluating the token's Datalog exceeded the authorizer's limits")]
    Limits,
    /// The request given to the authorizer is not canonical (a bug in the caller).
    #[error("auth: the request is not canonical: {0}")]
    InvalidRequest(&'static str),
    /// The token is sealed: no block can be appended.
    #[error("auth: the token is sealed; it cannot be attenuated further")]
    Sealed,
    /// An agent name outside `[A-Za-z0-9._@-]{1,64}`.
    #[error("auth: invalid agent name {0:?}: use 1 to 64 characters among letters, digits and . _ @ -")]
    InvalidAgent(String),
    /// A `DOMAIN[:OPS][/PREFIX]` that does not parse.
    #[error("auth: invalid allow {spec:?}: {reason}")]
    InvalidAllow {
        /// The spec as given.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// `attenuate` with neither an allow nor a time limit.
    #[error("auth: nothing to attenuate: give at least one allow or a time limit")]
    NothingToAttenuate,
    /// The root key file cannot be created or read.
    #[error("auth: root key file {path}: {message}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The revocation table failed.
    #[error("auth: database: {0}")]
    Db(#[from] rusqlite::Error),
    /// Building a token or an authorizer failed (never caused by a token's content).
    #[error("auth: internal error: {0}")]
    Internal(String),
}

impl AuthError {
    /// Whether this says "the token may not do this" (to be shown as "not found": hidden),
    /// rather than a bad argument or a failure of gatewayd itself.
    pub fn is_refusal(&self) -> bool {
        match self {
            AuthError::Malformed
            | AuthError::TooLarge(_)
            | AuthError::TooComplex(_)
            | AuthError::NotIssuedHere
            | AuthError::ThirdParty
            | AuthError::Revoked
            | AuthError::Expired
            | AuthError::Denied
            | AuthError::Limits => true,
            AuthError::InvalidRequest(_)
            | AuthError::Sealed
            | AuthError::InvalidAgent(_)
            | AuthError::InvalidAllow { .. }
            | AuthError::NothingToAttenuate
            | AuthError::KeyFile { .. }
            | AuthError::Db(_)
            | AuthError::Internal(_) => false,
        }
    }
}

/// What gatewayd's API handlers use: the root key and the revocation list.
#[derive(Debug)]
pub struct Authority {
    root: RootKey,
    revoked: RwLock<RevocationList>,
    /// Tokens whose signatures already verified ([`cache`]).
    verified: cache::VerifiedTokens,
}

impl Authority {
    /// Loads (creating on first run) `biscuit.key` in `data_dir` and the revocation list.
    pub fn open(data_dir: &Path, conn: &Connection) -> Result<Self, AuthError> {
        let root = RootKey::load_or_create(&keys::key_path(data_dir))?;
        let revoked = RevocationList::load(conn)?;
        Ok(Authority { root, revoked: RwLock::new(revoked), verified: cache::VerifiedTokens::default() })
    }

    /// An authority over a given key and list (tests).
    pub fn new(root: RootKey, revoked: RevocationList) -> Self {
        Authority { root, revoked: RwLock::new(revoked), verified: cache::VerifiedTokens::default() }
    }

    /// The root public key: tokens verify with it.
    pub fn public_key(&self) -> PublicKey {
        self.root.public()
    }

    /// The root public key in biscuit's textual form, `ed25519/<64 hex digits>`.
    pub fn public_key_text(&self) -> String {
        self.root.public_text()
    }

    /// A new token for `agent`, with every right ([`token::mint`]).
    pub fn mint(&self, agent: &str, now: SystemTime) -> Result<String, AuthError> {
        token::mint(&self.root, agent, now)
    }

    /// Whether `token` may do `req` ([`authorize::authorize`]); the agent it was minted for.
    /// The token's signatures are verified once and kept ([`cache`]); revocation and the
    /// Datalog, expiry included, are checked on every call.
    pub fn authorize(&self, token: &str, req: &Request) -> Result<AgentId, AuthError> {
        let revoked = |ids: &[String]| self.is_revoked(ids);
        authorize::authorize_cached(&self.verified, &self.root.public(), token, req, &revoked)
    }

    /// Whether any of a token's revocation ids (hex) is revoked.
    fn is_revoked(&self, ids: &[String]) -> bool {
        let list = self.revoked.read().unwrap_or_else(|p| p.into_inner());
        list.any_revoked_hex(ids.iter().map(String::as_str))
    }

    /// Whether `token` is usable at all at `now`, whatever it is asked to do: issued here
    /// (its signatures verify), not revoked, and not past an expiry nkmc set on it
    /// (`token attenuate --ttl`). What it allows is not looked at (a usable token may still
    /// be refused every path); an expiry in custom Datalog is found only by [`Self::authorize`].
    pub fn usable(&self, token: &str, now: SystemTime) -> Result<(), AuthError> {
        let verified = self.verified.get_or_verify(&self.root.public(), token)?;
        if self.is_revoked(&verified.revocation_ids) {
            return Err(AuthError::Revoked);
        }
        // The expiry check is `time <= expires`, with the time in whole seconds.
        if verified.expires_at.is_some_and(|expires| unix_secs(now) > expires) {
            return Err(AuthError::Expired);
        }
        Ok(())
    }

    /// Whether `token` may see `path` of `service` at all ([`authorize::visible`]).
    pub fn visible(&self, token: &str, service: Option<&str>, path: &str, now: SystemTime) -> bool {
        let req = Request { service: service.map(str::to_owned), path: path.to_owned(), operation: Op::Lookup, now };
        self.authorize(token, &req).is_ok()
    }

    /// The agent a token names, verified or not (a token that does not verify still names
    /// whom it claims to be); `None` when it does not parse. For the audit's `agent` column
    /// before the operation authorizes the token. A token that verifies is kept in the
    /// cache of verified tokens, so the operation that follows does not verify it again.
    pub fn claimed_agent(&self, token: &str) -> Option<String> {
        match self.verified.get_or_verify(&self.root.public(), token) {
            Ok(verified) => verified.agent.clone(),
            Err(_) => token::inspect(token, None).ok().and_then(|i| i.agent),
        }
    }

    /// The cache of verified tokens (tests and benchmarks look at it).
    pub fn verified_tokens(&self) -> &cache::VerifiedTokens {
        &self.verified
    }

    /// What `token` allows, verified against this gateway's key, with its revocation state.
    pub fn inspect(&self, token: &str) -> Result<TokenInfo, AuthError> {
        let mut info = token::inspect(token, Some(&self.root.public()))?;
        let list = self.revoked.read().unwrap_or_else(|p| p.into_inner());
        info.revoked = Some(list.any_revoked_hex(info.blocks.iter().map(|b| b.revocation_id.as_str())));
        Ok(info)
    }

    /// Revokes `token` (which must verify with this gateway's key); returns how many
    /// revocation ids were newly recorded (0: it already was).
    pub fn revoke(
        &self,
        conn: &Connection,
        token: &str,
        scope: RevokeScope,
        now: SystemTime,
    ) -> Result<usize, AuthError> {
        authorize::verify(&self.root.public(), token)?;
        let ids = revocation::revoke(conn, token, scope, now)?;
        let mut list = self.revoked.write().unwrap_or_else(|p| p.into_inner());
        let added = ids.iter().filter(|id| list.insert(id)).count();
        Ok(added)
    }
}

/// Seconds since the Unix epoch (0 before it).
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `2025-01-02T03:04:05Z` for seconds since the Unix epoch.
pub fn rfc3339(secs: u64) -> String {
    crate::timefmt::utc(i64::try_from(secs).unwrap_or(i64::MAX / 1000).saturating_mul(1000), false)
}

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn formats_dates_and_hex() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_735_787_045), "2025-01-02T03:04:05Z");
    }
}
