//! Online rotation of the master key file, safe against a kill at any moment.
//!
//! 1. A new key is written to `master.key.next` (temp file, fsync, rename, fsync of the dir).
//! 2. Every row is re-encrypted under it in **one** SQLite transaction. Each blob names the
//!    master key that sealed it (its id), so the rows say whether step 2 committed.
//! 3. `master.key.next` is renamed over `master.key` (atomic), and the directory fsynced.
//!
//! On start ([`recover`]), a leftover `master.key.next` means a rotation was interrupted: if
//! any row is still sealed under another key, step 2 did not commit and the file is removed
//! (rolled back; `master.key` still opens every row); otherwise step 3 is redone (finished).
//! At every moment each row is sealed under a key that one of the two files holds, and the
//! database mutex is held throughout, so no key is written under a key about to be dropped.
//!
//! A master key from `NKMC_ENCRYPTION_KEY` cannot be replaced by gatewayd: see
//! [`super::VaultError::EnvRotation`] for what to do instead.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::OsRng;
use rusqlite::Connection;

use super::blob::{self, MasterKey};
use super::{all_rows, keyfile, MasterSource, Vault, VaultError};

/// Fault injection for the kill -9 tests: when set (milliseconds), rotation pauses after
/// writing `master.key.next` and again after the re-encryption commits, so a test can kill
/// gatewayd inside each step. Unset in normal use.
pub const PAUSE_VAR: &str = "NKMC_TEST_ROTATE_PAUSE_MS";

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// How many keys were re-encrypted.
    pub keys: usize,
    /// The id of the master key retired (hex).
    pub old_master_id: String,
    /// The id of the master key now in use (hex).
    pub new_master_id: String,
}

/// The file a rotation writes the new key to before it becomes `master.key`.
pub fn next_path(key_path: &Path) -> PathBuf {
    let mut name = key_path.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "master.key".into());
    name.push(".next");
    key_path.with_file_name(name)
}

fn sync_dir(path: &Path) -> Result<(), VaultError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| keyfile::io(dir, e))
}

fn pause() {
    if let Some(ms) = std::env::var(PAUSE_VAR).ok().and_then(|v| v.parse::<u64>().ok()) {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// Loads the master key file (creating it on first run), first finishing or rolling back a
/// rotation that a crash interrupted.
pub fn recover(key_path: &Path, conn: &Connection) -> Result<MasterKey, VaultError> {
    let stored = all_rows(conn)?.len();
    if stored > 0 && !key_path.exists() && !next_path(key_path).exists() {
        return Err(VaultError::KeyFile {
            path: key_path.to_path_buf(),
            message: format!(
                "is missing but {stored} keys are stored under it; restore it from a backup (a new key would \
                 open none of them), or set NKMC_ENCRYPTION_KEY if the key is kept there"
            ),
        });
    }
    let current = MasterKey::new(keyfile::load_or_create(key_path, |b| OsRng.fill_bytes(b))?);
    let next_file = next_path(key_path);
    if !next_file.exists() {
        return Ok(current);
    }
    let next = MasterKey::new(keyfile::read(&next_file)?);
    let behind = all_rows(conn)?.iter().filter(|r| blob::master_id_of(&r.ciphertext) != Some(next.id())).count();
    if behind > 0 {
        std::fs::remove_file(&next_file).map_err(|e| keyfile::io(&next_file, e))?;
        sync_dir(key_path)?;
        tracing::warn!(master_id = %current.id_hex(), "vault: an interrupted rotation was rolled back");
        Ok(current)
    } else {
        std::fs::rename(&next_file, key_path).map_err(|e| keyfile::io(key_path, e))?;
        sync_dir(key_path)?;
        tracing::warn!(master_id = %next.id_hex(), "vault: an interrupted rotation was finished");
        Ok(next)
    }
}

impl Vault {
    /// Re-encrypts every key under a new master key and replaces the key file (see the
    /// module doc for why a kill at any moment leaves every key readable). `conn` must be
    /// the gateway's connection, held for the whole call so no key is stored meanwhile.
    pub fn rotate(&self, conn: &Connection) -> Result<Rotation, VaultError> {
        let MasterSource::File(key_path) = &self.source else {
            return Err(VaultError::EnvRotation);
        };
        let old_id = self.ring().current.id();
        let new = loop {
            let k = MasterKey::generate();
            if k.id() != old_id {
                break k;
            }
        };
        let next_file = next_path(key_path);
        keyfile::write_atomically(&next_file, new.bytes())?;
        pause();
        let keys = match self.reseal_all(conn, &new) {
            Ok(n) => n,
            Err(e) => {
                // Nothing committed: the old key still opens every row.
                let _ = std::fs::remove_file(&next_file);
                return Err(e);
            }
        };
        pause();
        let rotation = Rotation { keys, old_master_id: hex::encode(old_id), new_master_id: new.id_hex() };
        {
            let mut ring = self.ring.write().unwrap_or_else(|p| p.into_inner());
            // Until the rename below lands, the old key file is still `master.key`: keep both.
            let old = std::mem::replace(&mut ring.current, new);
            ring.previous = vec![old];
        }
        std::fs::rename(&next_file, key_path).map_err(|e| keyfile::io(key_path, e))?;
        sync_dir(key_path)?;
        self.ring.write().unwrap_or_else(|p| p.into_inner()).previous.clear();
        self.held.forget_all();
        tracing::info!(keys, old = %rotation.old_master_id, new = %rotation.new_master_id, "vault: master key rotated");
        Ok(rotation)
    }
}
