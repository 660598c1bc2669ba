//! The vault: credentials encrypted at rest under the master key.
//!
//! Each row's ciphertext is bound to the row (see [`blob`]); there is no plaintext
//! fallback. Secrets leave the vault only as [`Secret`], which never prints itself.

mod blob;
pub mod keyfile;
mod secret;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::OsRng;
use agentfs::spec::SecurityScheme;
use rusqlite::{params, Connection, OptionalExtension};
use zeroize::Zeroizing;

pub use blob::RowBinding;
pub use secret::Secret;

/// Why a vault operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The master-key file is missing, unreadable or unsafe.
    #[error("vault: master key file {path} {message}")]
    KeyFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Encryption or decryption failed.
    #[error("vault: {0}")]
    Crypto(String),
    /// The database failed.
    #[error("vault: database error: {0}")]
    Db(#[from] rusqlite::Error),
    /// A secret that is not valid text.
    #[error("vault: the stored secret is not valid UTF-8")]
    NotText,
}

/// Scope of the pool key (the owner's).
pub const POOL: &str = "pool";

/// A decrypted credential and where it goes.
#[derive(Debug, Clone)]
pub struct Credential {
    /// The secret.
    pub secret: Secret,
    /// Where the owner said it goes; `None` follows the document's security schemes.
    pub placement: Option<SecurityScheme>,
}

/// A stored key as listed: never the secret.
#[derive(Debug, Clone)]
pub struct StoredKey {
    /// The key id.
    pub key_id: String,
    /// The domain.
    pub domain: String,
    /// `pool` or `byok`.
    pub scope: String,
    /// Seconds since the epoch.
    pub created_at: i64,
}

/// The master key and the operations on encrypted rows.
pub struct Vault {
    master: Zeroizing<[u8; keyfile::KEY_LEN]>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault { master: <redacted> }")
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    OsRng.fill_bytes(&mut b);
    b
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl Vault {
    /// Opens the vault with the master key file at `key_path` (created on first use).
    pub fn open(key_path: &Path) -> Result<Self, VaultError> {
        let master = keyfile::load_or_create(key_path, |b| OsRng.fill_bytes(b))?;
        Ok(Vault { master })
    }

    /// Stores (or replaces) the pool key of `domain`; `placement` overrides the document's
    /// security schemes (where the key goes: a header, a query parameter, basic auth...).
    pub fn set_pool_key(
        &self,
        conn: &Connection,
        domain: &str,
        secret: &Secret,
        placement: Option<&SecurityScheme>,
    ) -> Result<String, VaultError> {
        let placement =
            placement.map(serde_json::to_string).transpose().map_err(|e| VaultError::Crypto(e.to_string()))?;
        let key_id = hex(&random_bytes::<12>());
        let row = RowBinding { key_id: &key_id, domain, scope: POOL, owner: "" };
        let ct = blob::seal(&self.master, row, secret.expose().as_bytes(), random_bytes())?;
        let tx = conn.unchecked_transaction()?;
        tx.execute("DELETE FROM keys WHERE domain = ?1 AND scope = ?2 AND owner = ''", params![domain, POOL])?;
        tx.execute(
            "INSERT INTO keys (key_id, domain, scope, owner, ciphertext, created_at, placement)
             VALUES (?1, ?2, ?3, '', ?4, ?5, ?6)",
            params![key_id, domain, POOL, ct, now(), placement],
        )?;
        tx.commit()?;
        Ok(key_id)
    }

    /// The pool key of `domain`, decrypted, if one is stored.
    pub fn pool_key(&self, conn: &Connection, domain: &str) -> Result<Option<Credential>, VaultError> {
        let row: Option<(String, Vec<u8>, Option<String>)> = conn
            .query_row(
                "SELECT key_id, ciphertext, placement FROM keys WHERE domain = ?1 AND scope = ?2 AND owner = ''",
                params![domain, POOL],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((key_id, ct, placement)) = row else {
            return Ok(None);
        };
        let placement = placement
            .map(|p| serde_json::from_str::<SecurityScheme>(&p))
            .transpose()
            .map_err(|e| VaultError::Crypto(format!("key {key_id} for {domain}: unreadable placement: {e}")))?;
        let plain = blob::open(&self.master, RowBinding { key_id: &key_id, domain, scope: POOL, owner: "" }, &ct)?;
        let text = std::str::from_utf8(&plain).map_err(|_| VaultError::NotText)?;
        Ok(Some(Credential { secret: Secret::new(text.to_owned()), placement }))
    }

    /// Removes every key of `domain`; returns how many.
    pub fn remove(&self, conn: &Connection, domain: &str) -> Result<usize, VaultError> {
        Ok(conn.execute("DELETE FROM keys WHERE domain = ?1", params![domain])?)
    }

    /// All stored keys, without secrets.
    pub fn list(&self, conn: &Connection) -> Result<Vec<StoredKey>, VaultError> {
        let mut stmt =
            conn.prepare("SELECT key_id, domain, scope, created_at FROM keys ORDER BY domain, scope, owner")?;
        let rows = stmt.query_map([], |r| {
            Ok(StoredKey { key_id: r.get(0)?, domain: r.get(1)?, scope: r.get(2)?, created_at: r.get(3)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swapped_ciphertexts_do_not_decrypt() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::db::open(&dir.path().join("db")).unwrap();
        let v = Vault::open(&dir.path().join("master.key")).unwrap();
        v.set_pool_key(&conn, "a.example", &Secret::new("CANARY_a".into()), None).unwrap();
        let basic = SecurityScheme::Basic;
        v.set_pool_key(&conn, "b.example", &Secret::new("CANARY_b".into()), Some(&basic)).unwrap();
        assert_eq!(v.pool_key(&conn, "a.example").unwrap().unwrap().secret.expose(), "CANARY_a");
        assert_eq!(v.pool_key(&conn, "b.example").unwrap().unwrap().placement, Some(SecurityScheme::Basic));
        conn.execute_batch(
            "UPDATE keys SET ciphertext = (SELECT ciphertext FROM keys WHERE domain = 'b.example') WHERE domain = 'a.example'",
        )
        .unwrap();
        let err = v.pool_key(&conn, "a.example").unwrap_err().to_string();
        assert!(err.contains("does not decrypt") && !err.contains("CANARY"), "{err}");
        assert_eq!(v.list(&conn).unwrap().len(), 2);
    }
}
