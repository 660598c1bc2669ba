//! The ciphertext format, sealed with associated data that binds it to its row.
//!
//! Version 2 (written today):
//! `2 | algorithm(1) | master key id(4) | nonce(12 or 24) | ciphertext+tag`, with associated
//! data `"nkmc-vault" | 2 | algorithm | master key id | key id | domain | scope | owner |
//! placement` (strings length-prefixed; the placement as a presence byte and its JSON), so
//! a ciphertext moved to another row, or a row whose placement was edited, fails to decrypt.
//! The master key id says which master key sealed the blob (rotation, see [`super::rotation`]).
//!
//! Version 1 (read only): `1 | 1 (AES-256-GCM) | nonce(12) | ciphertext+tag`, associated data
//! `"nkmc-vault" | 1 | key id | domain | scope | owner` (no placement, no master key id). Such
//! blobs still decrypt; any write or rotation rewrites them as version 2.

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::Aes256Gcm;
use chacha20poly1305::XChaCha20Poly1305;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::VaultError;

/// The format version written today.
pub const VERSION: u8 = 2;
/// The first format: AES-256-GCM, no placement in the associated data, no master key id.
const VERSION_1: u8 = 1;
/// Length of a master key in bytes.
pub const KEY_LEN: usize = 32;
/// Length of a master key id in bytes.
pub const MASTER_ID_LEN: usize = 4;
const TAG_LEN: usize = 16;

/// The AEAD a blob is sealed with; its byte is in the blob, so either decrypts whatever the
/// configuration says today.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Cipher {
    /// AES-256-GCM, 96-bit random nonces (the default).
    #[default]
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
    /// XChaCha20-Poly1305, 192-bit random nonces.
    #[serde(rename = "xchacha20-poly1305")]
    XChaCha20Poly1305,
}

impl Cipher {
    fn byte(self) -> u8 {
        match self {
            Cipher::Aes256Gcm => 1,
            Cipher::XChaCha20Poly1305 => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Cipher> {
        match b {
            1 => Some(Cipher::Aes256Gcm),
            2 => Some(Cipher::XChaCha20Poly1305),
            _ => None,
        }
    }

    fn nonce_len(self) -> usize {
        match self {
            Cipher::Aes256Gcm => 12,
            Cipher::XChaCha20Poly1305 => 24,
        }
    }

    /// Its name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::Aes256Gcm => "aes-256-gcm",
            Cipher::XChaCha20Poly1305 => "xchacha20-poly1305",
        }
    }

    fn seal(self, key: &[u8; KEY_LEN], nonce: &[u8], payload: Payload<'_, '_>) -> Result<Vec<u8>, ()> {
        match self {
            Cipher::Aes256Gcm => Aes256Gcm::new(key.into()).encrypt(nonce.into(), payload).map_err(|_| ()),
            Cipher::XChaCha20Poly1305 => {
                XChaCha20Poly1305::new(key.into()).encrypt(nonce.into(), payload).map_err(|_| ())
            }
        }
    }

    fn open(self, key: &[u8; KEY_LEN], nonce: &[u8], payload: Payload<'_, '_>) -> Result<Vec<u8>, ()> {
        match self {
            Cipher::Aes256Gcm => Aes256Gcm::new(key.into()).decrypt(nonce.into(), payload).map_err(|_| ()),
            Cipher::XChaCha20Poly1305 => {
                XChaCha20Poly1305::new(key.into()).decrypt(nonce.into(), payload).map_err(|_| ())
            }
        }
    }
}

/// A master key and its id (the first bytes of a SHA-256 of the key, domain-separated):
/// the id tells which master key sealed a blob without revealing anything of the key.
pub struct MasterKey {
    id: [u8; MASTER_ID_LEN],
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey {{ id: {}, bytes: <redacted> }}", self.id_hex())
    }
}

impl MasterKey {
    /// Wraps key bytes.
    pub fn new(bytes: Zeroizing<[u8; KEY_LEN]>) -> Self {
        let digest = Sha256::new().chain_update(b"nkmc master key id\0").chain_update(bytes.as_slice()).finalize();
        let mut id = [0u8; MASTER_ID_LEN];
        id.copy_from_slice(&digest[..MASTER_ID_LEN]);
        MasterKey { id, bytes }
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        OsRng.fill_bytes(bytes.as_mut_slice());
        MasterKey::new(bytes)
    }

    /// The key's id.
    pub fn id(&self) -> [u8; MASTER_ID_LEN] {
        self.id
    }

    /// The key's id in hex, for messages.
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }

    /// The key bytes (to write the key file).
    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }
}

/// Which row a ciphertext belongs to; all of it goes into the associated data.
#[derive(Debug, Clone, Copy)]
pub struct RowBinding<'a> {
    /// The key's id.
    pub key_id: &'a str,
    /// The service domain.
    pub domain: &'a str,
    /// `pool` or `byok`.
    pub scope: &'a str,
    /// The owning agent (empty for pool keys).
    pub owner: &'a str,
    /// The placement column as stored (JSON), if any. Bound from version 2 on.
    pub placement: Option<&'a str>,
}

impl RowBinding<'_> {
    /// Length-prefixed fields, so no two bindings encode alike.
    fn aad(&self, version: u8, header: &[u8]) -> Vec<u8> {
        let mut out = b"nkmc-vault".to_vec();
        out.push(version);
        out.extend_from_slice(header);
        let push = |out: &mut Vec<u8>, field: &str| {
            out.extend_from_slice(&(field.len() as u32).to_be_bytes());
            out.extend_from_slice(field.as_bytes());
        };
        for field in [self.key_id, self.domain, self.scope, self.owner] {
            push(&mut out, field);
        }
        if version >= VERSION {
            match self.placement {
                None => out.push(0),
                Some(p) => {
                    out.push(1);
                    push(&mut out, p);
                }
            }
        }
        out
    }
}

/// Encrypts `plaintext` for `row` under `master` with `cipher` and a fresh random nonce.
pub fn seal(master: &MasterKey, cipher: Cipher, row: RowBinding<'_>, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
    let mut nonce = [0u8; 24];
    let nonce = &mut nonce[..cipher.nonce_len()];
    OsRng.fill_bytes(nonce);
    let mut header = vec![cipher.byte()];
    header.extend_from_slice(&master.id);
    let aad = row.aad(VERSION, &header);
    let ct = cipher
        .seal(&master.bytes, nonce, Payload { msg: plaintext, aad: &aad })
        .map_err(|()| VaultError::Crypto("encryption failed".into()))?;
    let mut out = Vec::with_capacity(1 + header.len() + nonce.len() + ct.len());
    out.push(VERSION);
    out.extend_from_slice(&header);
    out.extend_from_slice(nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// The id of the master key that sealed `blob`; `None` for a version 1 blob (which names
/// none) or one too short to say.
pub fn master_id_of(blob: &[u8]) -> Option<[u8; MASTER_ID_LEN]> {
    match blob {
        [VERSION, _alg, id @ ..] if id.len() >= MASTER_ID_LEN => {
            let mut out = [0u8; MASTER_ID_LEN];
            out.copy_from_slice(&id[..MASTER_ID_LEN]);
            Some(out)
        }
        _ => None,
    }
}

/// Decrypts a blob sealed for `row` with whichever of `keys` sealed it; any change to the
/// blob or the row fails.
pub fn open(keys: &[&MasterKey], row: RowBinding<'_>, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    let bad = |why: &str| VaultError::Crypto(format!("key {} for {}: {why}", row.key_id, row.domain));
    let altered = "does not decrypt: wrong master key, or the ciphertext or its row (domain, scope, owner, \
                   placement) was altered or moved from another row";
    let (&version, rest) = blob.split_first().ok_or_else(|| bad("empty ciphertext"))?;
    let (&alg, rest) = rest.split_first().ok_or_else(|| bad("truncated ciphertext"))?;
    let cipher = Cipher::from_byte(alg).ok_or_else(|| bad(&format!("unknown algorithm {alg}")))?;
    match version {
        VERSION_1 if cipher == Cipher::Aes256Gcm => {
            if rest.len() < 12 + TAG_LEN {
                return Err(bad("truncated ciphertext"));
            }
            let (nonce, ct) = rest.split_at(12);
            let aad = row.aad(VERSION_1, &[]);
            keys.iter()
                .find_map(|k| cipher.open(&k.bytes, nonce, Payload { msg: ct, aad: &aad }).ok())
                .map(Zeroizing::new)
                .ok_or_else(|| bad(altered))
        }
        VERSION => {
            if rest.len() < MASTER_ID_LEN + cipher.nonce_len() + TAG_LEN {
                return Err(bad("truncated ciphertext"));
            }
            let (id, rest) = rest.split_at(MASTER_ID_LEN);
            let key = keys.iter().find(|k| k.id == id).ok_or_else(|| {
                bad(&format!(
                    "sealed under master key {}, which gatewayd does not hold (was master.key replaced, or \
                     NKMC_ENCRYPTION_KEY changed? set NKMC_ENCRYPTION_KEY_OLD to the previous key)",
                    hex::encode(id)
                ))
            })?;
            let (nonce, ct) = rest.split_at(cipher.nonce_len());
            let aad = row.aad(VERSION, &blob[1..2 + MASTER_ID_LEN]);
            cipher
                .open(&key.bytes, nonce, Payload { msg: ct, aad: &aad })
                .map(Zeroizing::new)
                .map_err(|()| bad(altered))
        }
        _ => Err(bad(&format!("unknown format version {version} (plaintext or foreign rows are never accepted)"))),
    }
}

/// A version 1 blob, as the first gatewayd wrote it (AES-256-GCM, no placement bound), for
/// tests that the old format still opens.
#[cfg(test)]
pub(super) fn seal_v1(k: &MasterKey, row: RowBinding<'_>, plaintext: &[u8]) -> Vec<u8> {
    let nonce = [3u8; 12];
    let ct = Cipher::Aes256Gcm.seal(&k.bytes, &nonce, Payload { msg: plaintext, aad: &row.aad(1, &[]) });
    [&[1u8, 1u8][..], &nonce, &ct.unwrap_or_default()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> MasterKey {
        MasterKey::new(Zeroizing::new([b; KEY_LEN]))
    }
    fn row(domain: &str) -> RowBinding<'_> {
        RowBinding { key_id: "k1", domain, scope: "pool", owner: "", placement: None }
    }

    #[test]
    fn round_trip_and_binding_for_both_ciphers() {
        let k = key(9);
        for cipher in [Cipher::Aes256Gcm, Cipher::XChaCha20Poly1305] {
            let blob = seal(&k, cipher, row("a.example"), b"CANARY_x").unwrap();
            assert_eq!(blob[1], cipher.byte());
            assert_eq!(open(&[&k], row("a.example"), &blob).unwrap().as_slice(), b"CANARY_x");
            assert!(open(&[&k], row("b.example"), &blob).is_err(), "moved to another domain");
            let other = RowBinding { scope: "byok", owner: "agent", ..row("a.example") };
            assert!(open(&[&k], other, &blob).is_err(), "moved to another scope");
            let placed = RowBinding { placement: Some(r#"{"kind":"basic"}"#), ..row("a.example") };
            let err = open(&[&k], placed, &blob).unwrap_err().to_string();
            assert!(err.contains("placement"), "placement edited: {err}");
            let err = open(&[&key(8)], row("a.example"), &blob).unwrap_err().to_string();
            assert!(err.contains("does not hold"), "wrong master key: {err}");
            assert!(!blob.windows(8).any(|w| w == b"CANARY_x"));
        }
    }

    #[test]
    fn the_right_master_key_is_picked_by_id() {
        let (old, new) = (key(1), key(2));
        let a = seal(&old, Cipher::Aes256Gcm, row("a"), b"one").unwrap();
        let b = seal(&new, Cipher::XChaCha20Poly1305, row("a"), b"two").unwrap();
        assert_eq!(master_id_of(&a), Some(old.id()));
        assert_eq!(open(&[&new, &old], row("a"), &a).unwrap().as_slice(), b"one");
        assert_eq!(open(&[&new, &old], row("a"), &b).unwrap().as_slice(), b"two");
    }

    #[test]
    fn version_1_blobs_still_decrypt() {
        let k = key(5);
        let blob = seal_v1(&k, row("a"), b"legacy");
        assert_eq!(master_id_of(&blob), None);
        assert_eq!(open(&[&key(6), &k], row("a"), &blob).unwrap().as_slice(), b"legacy");
        assert!(open(&[&k], row("b"), &blob).is_err());
    }

    #[test]
    fn every_flipped_byte_and_truncation_fails() {
        let k = key(9);
        for cipher in [Cipher::Aes256Gcm, Cipher::XChaCha20Poly1305] {
            let blob = seal(&k, cipher, row("a"), b"secret").unwrap();
            for i in 0..blob.len() {
                let mut b = blob.clone();
                b[i] ^= 0x01;
                assert!(open(&[&k], row("a"), &b).is_err(), "byte {i}");
            }
            for n in 0..blob.len() {
                assert!(open(&[&k], row("a"), &blob[..n]).is_err(), "len {n}");
            }
        }
    }
}
