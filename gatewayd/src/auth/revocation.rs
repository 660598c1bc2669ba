//! Revoked tokens: the revocation ids (hex) of blocks, in the `revoked_tokens` table and in
//! memory. Every block of a biscuit has a unique revocation id, and a token derived from
//! another carries all of its parent's ids plus its own; a token is refused when any of its
//! ids is on the list.

use std::collections::HashSet;
use std::time::SystemTime;

use biscuit_auth::UnverifiedBiscuit;
use rusqlite::{params, Connection};

use super::authorize::MAX_TOKEN_BYTES;
use super::{unix_secs, AuthError};

/// What revoking a token blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RevokeScope {
    /// The token and every token attenuated from it (its last block's id): the token it was
    /// attenuated from keeps working.
    #[default]
    Token,
    /// Every block's id: also the token it was attenuated from, up to the minted one, and
    /// everything derived from any of them.
    Lineage,
}

/// The revocation ids (hex) of `token`'s blocks, in order. Needs no key.
pub fn revocation_ids(token: &str) -> Result<Vec<String>, AuthError> {
    let token = token.trim();
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::TooLarge(token.len()));
    }
    let parsed = UnverifiedBiscuit::from_base64(token).map_err(|_| AuthError::Malformed)?;
    Ok(parsed.revocation_identifiers().iter().map(hex::encode).collect())
}

/// Records `token` as revoked (the ids `scope` says); returns the ids recorded. The caller
/// checks first that the token is one of its own.
pub fn revoke(conn: &Connection, token: &str, scope: RevokeScope, now: SystemTime) -> Result<Vec<String>, AuthError> {
    let mut ids = revocation_ids(token)?;
    if scope == RevokeScope::Token {
        ids = ids.split_off(ids.len().saturating_sub(1));
    }
    let tx = conn.unchecked_transaction()?;
    for id in &ids {
        tx.execute(
            "INSERT OR IGNORE INTO revoked_tokens (revocation_id, revoked_at) VALUES (?1, ?2)",
            params![id, unix_secs(now) as i64],
        )?;
    }
    tx.commit()?;
    Ok(ids)
}

/// Whether any of `token`'s revocation ids is in the table.
pub fn is_revoked(conn: &Connection, token: &str) -> Result<bool, AuthError> {
    let mut stmt = conn.prepare_cached("SELECT 1 FROM revoked_tokens WHERE revocation_id = ?1")?;
    for id in revocation_ids(token)? {
        if stmt.exists(params![id])? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The revoked ids in memory, for a check on every request without the database.
#[derive(Debug, Default, Clone)]
pub struct RevocationList {
    ids: HashSet<String>,
}

impl RevocationList {
    /// Loads every revoked id.
    pub fn load(conn: &Connection) -> Result<Self, AuthError> {
        let mut stmt = conn.prepare("SELECT revocation_id FROM revoked_tokens")?;
        let ids = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<HashSet<_>, _>>()?;
        Ok(RevocationList { ids })
    }

    /// Adds an id (hex); whether it was new.
    pub fn insert(&mut self, id: &str) -> bool {
        self.ids.insert(id.to_owned())
    }

    /// Whether any of these ids (bytes) is revoked.
    pub fn any_revoked(&self, ids: &[Vec<u8>]) -> bool {
        ids.iter().any(|id| self.ids.contains(&hex::encode(id)))
    }

    /// Whether any of these ids (hex) is revoked.
    pub fn any_revoked_hex<'a>(&self, mut ids: impl Iterator<Item = &'a str>) -> bool {
        ids.any(|id| self.ids.contains(id))
    }

    /// How many ids are revoked.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}
