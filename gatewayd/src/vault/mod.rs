//! The vault: credentials encrypted at rest under the master key.
//!
//! Each row's ciphertext is bound to the row (see [`blob`]); there is no plaintext
//! fallback. Secrets leave the vault only as [`Secret`], which never prints itself.
//!
//! Keys belong to the owner (`pool`, used for every caller) or to one agent (`byok`, used
//! only for that agent's requests, before the pool key). The master key comes from
//! `NKMC_ENCRYPTION_KEY` ([`envkey`]) or from the key file `master.key` ([`keyfile`]); with
//! the key file it can be rotated online ([`rotation`]).

mod blob;
pub mod envkey;
pub mod held;
pub mod keyfile;
pub mod rotation;
mod secret;

use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::OsRng;
use agentfs::spec::SecurityScheme;
use rusqlite::{params, Connection, OptionalExtension};

pub use blob::{Cipher, MasterKey, RowBinding};
pub use rotation::Rotation;
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
    /// `NKMC_ENCRYPTION_KEY` (or `NKMC_ENCRYPTION_KEY_OLD`) is not a usable key.
    #[error("vault: {0}")]
    EnvKey(String),
    /// Online rotation asked for while the master key comes from the environment.
    #[error(
        "vault: the master key comes from NKMC_ENCRYPTION_KEY, which gatewayd cannot replace; to rotate, \
         stop gatewayd, set NKMC_ENCRYPTION_KEY_OLD to the current key and NKMC_ENCRYPTION_KEY to a new one \
         (`openssl rand -hex 32`), start gatewayd (it re-encrypts every key at start), then unset \
         NKMC_ENCRYPTION_KEY_OLD"
    )]
    EnvRotation,
    /// No stored key was sealed under any master key gatewayd holds: the wrong key was given.
    #[error(
        "vault: the master key ({source_name}) is not the one the {keys} stored keys were sealed with \
         (they name master key {sealed_with}); give the right key, or to move them to this one set \
         NKMC_ENCRYPTION_KEY_OLD to the key they were sealed with"
    )]
    WrongMasterKey {
        /// Where the key came from (`master.key` or `NKMC_ENCRYPTION_KEY`).
        source_name: &'static str,
        /// How many keys are stored.
        keys: usize,
        /// The master key id the first of them names (`unknown` for format 1).
        sealed_with: String,
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
/// Scope of an agent's own key.
pub const BYOK: &str = "byok";
/// Scope of a federation peer's shared secret (domain [`PEER_DOMAIN`], owner: the peer id).
pub const PEER: &str = "peer";
/// The `domain` column of peer secrets: empty, which no service domain can be.
pub const PEER_DOMAIN: &str = "";
/// Scope of the wallet key that signs x402 payments to peers (domain [`WALLET_DOMAIN`]).
pub const WALLET: &str = "wallet";
/// The `domain` column of the wallet key.
pub const WALLET_DOMAIN: &str = "";

/// Whose key: the owner's pool key or one agent's own (BYOK).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOwner<'a> {
    /// The owner's key, used for every caller without a key of its own.
    Pool,
    /// The key an agent uploaded, used for that agent only.
    Agent(&'a str),
    /// The secret shared with a federation peer (stored under [`PEER_DOMAIN`]).
    Peer(&'a str),
    /// The key of the wallet that pays peers (x402), stored under [`WALLET_DOMAIN`].
    Wallet,
}

impl KeyOwner<'_> {
    /// The `scope` column.
    pub fn scope(&self) -> &'static str {
        match self {
            KeyOwner::Pool => POOL,
            KeyOwner::Agent(_) => BYOK,
            KeyOwner::Peer(_) => PEER,
            KeyOwner::Wallet => WALLET,
        }
    }

    /// The `owner` column (empty for the pool).
    pub fn owner(&self) -> &str {
        match self {
            KeyOwner::Pool | KeyOwner::Wallet => "",
            KeyOwner::Agent(a) | KeyOwner::Peer(a) => a,
        }
    }
}

/// A decrypted credential and where it goes.
#[derive(Debug, Clone)]
pub struct Credential {
    /// The secret.
    pub secret: Secret,
    /// Where the owner said it goes; `None` follows the document's security schemes.
    pub placement: Option<SecurityScheme>,
    /// The key's id (for the audit log).
    pub key_id: String,
    /// `pool` or `byok`.
    pub scope: &'static str,
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
    /// The agent a `byok` key belongs to (empty for the pool key).
    pub owner: String,
    /// Seconds since the epoch.
    pub created_at: i64,
}

/// Where the master key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterSource {
    /// The key file (created 0600 on first run); rotatable online.
    File(PathBuf),
    /// `NKMC_ENCRYPTION_KEY`.
    Env,
}

/// The master keys a gatewayd holds: the current one seals; every one of them opens.
#[derive(Debug)]
struct Keyring {
    current: MasterKey,
    previous: Vec<MasterKey>,
}

impl Keyring {
    fn all(&self) -> Vec<&MasterKey> {
        std::iter::once(&self.current).chain(&self.previous).collect()
    }
}

/// The master key and the operations on encrypted rows.
#[derive(Debug)]
pub struct Vault {
    ring: RwLock<Keyring>,
    cipher: Cipher,
    source: MasterSource,
    /// Credentials already decrypted ([`held`]).
    held: held::Held,
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// One row of the keys table, as needed to open it.
struct Row {
    key_id: String,
    domain: String,
    scope: String,
    owner: String,
    placement: Option<String>,
    ciphertext: Vec<u8>,
}

impl Row {
    fn binding(&self) -> RowBinding<'_> {
        RowBinding {
            key_id: &self.key_id,
            domain: &self.domain,
            scope: &self.scope,
            owner: &self.owner,
            placement: self.placement.as_deref(),
        }
    }
}

const ROW_COLUMNS: &str = "key_id, domain, scope, owner, placement, ciphertext";

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        key_id: r.get(0)?,
        domain: r.get(1)?,
        scope: r.get(2)?,
        owner: r.get(3)?,
        placement: r.get(4)?,
        ciphertext: r.get(5)?,
    })
}

fn all_rows(conn: &Connection) -> Result<Vec<Row>, VaultError> {
    let mut stmt = conn.prepare(&format!("SELECT {ROW_COLUMNS} FROM keys"))?;
    let rows = stmt.query_map([], read_row)?.collect::<Result<_, _>>()?;
    Ok(rows)
}

impl Vault {
    /// Opens the vault: the master key from `NKMC_ENCRYPTION_KEY` when it is set (moving rows
    /// sealed under `NKMC_ENCRYPTION_KEY_OLD`, if given), else from the key file at
    /// `key_path` (created on first use; an interrupted rotation is finished or rolled back).
    /// New keys are sealed with `cipher`.
    pub fn open(key_path: &Path, cipher: Cipher, conn: &Connection) -> Result<Self, VaultError> {
        match envkey::from_env(envkey::VAR)? {
            Some(current) => {
                let old = envkey::from_env(envkey::OLD_VAR)?;
                Vault::open_env(MasterKey::new(current), old.map(MasterKey::new), cipher, conn)
            }
            None => Vault::open_file(key_path, cipher, conn),
        }
    }

    /// Opens the vault with the key file at `key_path`, created on first use.
    pub fn open_file(key_path: &Path, cipher: Cipher, conn: &Connection) -> Result<Self, VaultError> {
        let current = rotation::recover(key_path, conn)?;
        let ring = Keyring { current, previous: Vec::new() };
        let vault = Vault {
            ring: RwLock::new(ring),
            cipher,
            source: MasterSource::File(key_path.to_path_buf()),
            held: held::Held::default(),
        };
        vault.check_master(conn)?;
        Ok(vault)
    }

    /// Opens the vault with a key given in the environment. With `old`, every row not yet
    /// sealed under `current` is re-encrypted under it, in one transaction, before anything
    /// else happens.
    pub fn open_env(
        current: MasterKey,
        old: Option<MasterKey>,
        cipher: Cipher,
        conn: &Connection,
    ) -> Result<Self, VaultError> {
        let vault = Vault {
            ring: RwLock::new(Keyring { current, previous: old.into_iter().collect() }),
            cipher,
            source: MasterSource::Env,
            held: held::Held::default(),
        };
        vault.check_master(conn)?;
        let stale = vault.rows_not_under_current(conn)?;
        if stale > 0 && !vault.ring().previous.is_empty() {
            let moved = vault.reseal_all(conn, &vault.ring().current)?;
            tracing::info!(keys = moved, "vault: every key re-encrypted under NKMC_ENCRYPTION_KEY");
        } else if stale > 0 {
            tracing::warn!(
                keys = stale,
                "vault: keys sealed under another master key will not decrypt; set NKMC_ENCRYPTION_KEY_OLD"
            );
        }
        Ok(vault)
    }

    fn ring(&self) -> RwLockReadGuard<'_, Keyring> {
        self.ring.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Where the master key comes from.
    pub fn source(&self) -> &MasterSource {
        &self.source
    }

    /// The cipher new keys are sealed with.
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// The id of the master key that seals new keys, in hex.
    pub fn master_id(&self) -> String {
        self.ring().current.id_hex()
    }

    /// Refuses a master key that opens none of the stored keys (the wrong key file or
    /// `NKMC_ENCRYPTION_KEY`), before anything is written under it. A vault with no keys, or
    /// with at least one key a held master key opens, passes; single bad rows are reported
    /// when used (and by [`Vault::check_all`]).
    fn check_master(&self, conn: &Connection) -> Result<(), VaultError> {
        let rows = all_rows(conn)?;
        let ring = self.ring();
        let keys = ring.all();
        let held = |r: &Row| match blob::master_id_of(&r.ciphertext) {
            Some(id) => keys.iter().any(|k| k.id() == id),
            None => blob::open(&keys, r.binding(), &r.ciphertext).is_ok(),
        };
        if rows.is_empty() || rows.iter().any(held) {
            return Ok(());
        }
        let sealed_with =
            blob::master_id_of(&rows[0].ciphertext).map(hex::encode).unwrap_or_else(|| "unknown (format 1)".into());
        let source_name = match self.source {
            MasterSource::File(_) => "master.key",
            MasterSource::Env => "NKMC_ENCRYPTION_KEY",
        };
        Err(VaultError::WrongMasterKey { source_name, keys: rows.len(), sealed_with })
    }

    /// How many rows are not sealed under the current master key.
    fn rows_not_under_current(&self, conn: &Connection) -> Result<usize, VaultError> {
        let id = self.ring().current.id();
        Ok(all_rows(conn)?.iter().filter(|r| blob::master_id_of(&r.ciphertext) != Some(id)).count())
    }

    /// Re-encrypts every row under `target` in one transaction (all or nothing); returns how
    /// many. Rows are opened with every key held plus `target`.
    fn reseal_all(&self, conn: &Connection, target: &MasterKey) -> Result<usize, VaultError> {
        let tx = conn.unchecked_transaction()?;
        let rows = all_rows(&tx)?;
        {
            let ring = self.ring();
            let mut keys = ring.all();
            keys.push(target);
            let mut update = tx.prepare("UPDATE keys SET ciphertext = ?1 WHERE key_id = ?2")?;
            for row in &rows {
                let plain = blob::open(&keys, row.binding(), &row.ciphertext)?;
                let sealed = blob::seal(target, self.cipher, row.binding(), &plain)?;
                update.execute(params![sealed, row.key_id])?;
            }
        }
        tx.commit()?;
        self.held.forget_all();
        Ok(rows.len())
    }

    /// Stores (or replaces) `owner`'s key for `domain`; `placement` overrides the document's
    /// security schemes (where the key goes: a header, a query parameter, basic auth...).
    /// The placement is bound into the ciphertext's associated data.
    pub fn set_key(
        &self,
        conn: &Connection,
        owner: KeyOwner<'_>,
        domain: &str,
        secret: &Secret,
        placement: Option<&SecurityScheme>,
    ) -> Result<String, VaultError> {
        let placement =
            placement.map(serde_json::to_string).transpose().map_err(|e| VaultError::Crypto(e.to_string()))?;
        let mut id = [0u8; 12];
        OsRng.fill_bytes(&mut id);
        let key_id = hex::encode(id);
        let row = RowBinding {
            key_id: &key_id,
            domain,
            scope: owner.scope(),
            owner: owner.owner(),
            placement: placement.as_deref(),
        };
        let ct = blob::seal(&self.ring().current, self.cipher, row, secret.expose().as_bytes())?;
        let tx = conn.unchecked_transaction()?;
        tx.execute(
            "DELETE FROM keys WHERE domain = ?1 AND scope = ?2 AND owner = ?3",
            params![domain, owner.scope(), owner.owner()],
        )?;
        tx.execute(
            "INSERT INTO keys (key_id, domain, scope, owner, ciphertext, created_at, placement)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![key_id, domain, owner.scope(), owner.owner(), ct, now(), placement],
        )?;
        tx.commit()?;
        self.held.forget_all();
        Ok(key_id)
    }

    /// Stores (or replaces) the pool key of `domain` ([`Vault::set_key`] for the pool).
    pub fn set_pool_key(
        &self,
        conn: &Connection,
        domain: &str,
        secret: &Secret,
        placement: Option<&SecurityScheme>,
    ) -> Result<String, VaultError> {
        self.set_key(conn, KeyOwner::Pool, domain, secret, placement)
    }

    /// `owner`'s key for `domain`, decrypted, if one is stored: held in memory once read
    /// ([`held`]), until the next write of the keys table.
    pub fn key(&self, conn: &Connection, owner: KeyOwner<'_>, domain: &str) -> Result<Option<Credential>, VaultError> {
        let (held, generation) = self.held.get(owner.scope(), owner.owner(), domain);
        if let Some(answer) = held {
            return Ok(answer);
        }
        let answer = self.read_key(conn, owner, domain)?;
        self.held.keep(owner.scope(), owner.owner(), domain, generation, answer.clone());
        Ok(answer)
    }

    /// How many credential answers are held in memory (tests).
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// Forgets every credential held in memory, so the next lookups read the keys table
    /// again (after it was changed other than through the vault; tests).
    pub fn forget_held(&self) {
        self.held.forget_all();
    }

    fn read_key(&self, conn: &Connection, owner: KeyOwner<'_>, domain: &str) -> Result<Option<Credential>, VaultError> {
        let row = conn
            .query_row(
                &format!("SELECT {ROW_COLUMNS} FROM keys WHERE domain = ?1 AND scope = ?2 AND owner = ?3"),
                params![domain, owner.scope(), owner.owner()],
                read_row,
            )
            .optional()?;
        let Some(row) = row else {
            return Ok(None);
        };
        let placement =
            row.placement.as_deref().map(serde_json::from_str::<SecurityScheme>).transpose().map_err(|e| {
                VaultError::Crypto(format!("key {} for {domain}: unreadable placement: {e}", row.key_id))
            })?;
        let plain = blob::open(&self.ring().all(), row.binding(), &row.ciphertext)?;
        let text = std::str::from_utf8(&plain).map_err(|_| VaultError::NotText)?;
        Ok(Some(Credential {
            secret: Secret::new(text.to_owned()),
            placement,
            key_id: row.key_id,
            scope: owner.scope(),
        }))
    }

    /// The pool key of `domain`, decrypted, if one is stored.
    pub fn pool_key(&self, conn: &Connection, domain: &str) -> Result<Option<Credential>, VaultError> {
        self.key(conn, KeyOwner::Pool, domain)
    }

    /// The credential for a request to `domain` by `agent` (`None`: the owner): the agent's
    /// own key first, then the pool key.
    pub fn credential(
        &self,
        conn: &Connection,
        agent: Option<&str>,
        domain: &str,
    ) -> Result<Option<Credential>, VaultError> {
        if let Some(agent) = agent {
            if let Some(own) = self.key(conn, KeyOwner::Agent(agent), domain)? {
                return Ok(Some(own));
            }
        }
        self.key(conn, KeyOwner::Pool, domain)
    }

    /// Removes every key of `domain` (the pool key and every agent's); returns how many.
    pub fn remove(&self, conn: &Connection, domain: &str) -> Result<usize, VaultError> {
        let removed = conn.execute("DELETE FROM keys WHERE domain = ?1 AND scope IN ('pool', 'byok')", params![domain]);
        self.held.forget_all();
        Ok(removed?)
    }

    /// Removes `owner`'s key for `domain`; returns how many (0 or 1).
    pub fn remove_own(&self, conn: &Connection, owner: KeyOwner<'_>, domain: &str) -> Result<usize, VaultError> {
        let removed = conn.execute(
            "DELETE FROM keys WHERE domain = ?1 AND scope = ?2 AND owner = ?3",
            params![domain, owner.scope(), owner.owner()],
        );
        self.held.forget_all();
        Ok(removed?)
    }

    /// Stored API keys, without secrets: all of them (`None`), or only `owner`'s. Peer
    /// secrets and the wallet key are not API keys and are never listed here.
    pub fn list(&self, conn: &Connection, only: Option<KeyOwner<'_>>) -> Result<Vec<StoredKey>, VaultError> {
        let mut stmt = conn.prepare(
            "SELECT key_id, domain, scope, owner, created_at FROM keys
             WHERE scope NOT IN ('peer', 'wallet') AND (?1 IS NULL OR (scope = ?1 AND owner = ?2)) ORDER BY domain, scope, owner",
        )?;
        let rows = stmt.query_map(params![only.map(|o| o.scope()), only.map(|o| o.owner().to_owned())], |r| {
            Ok(StoredKey {
                key_id: r.get(0)?,
                domain: r.get(1)?,
                scope: r.get(2)?,
                owner: r.get(3)?,
                created_at: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Checks that every stored key decrypts; returns how many there are.
    pub fn check_all(&self, conn: &Connection) -> Result<usize, VaultError> {
        let rows = all_rows(conn)?;
        let ring = self.ring();
        for row in &rows {
            blob::open(&ring.all(), row.binding(), &row.ciphertext)?;
        }
        Ok(rows.len())
    }
}

#[cfg(test)]
mod tests;
