//! The ciphertext format: `version(1) | algorithm(1) | nonce | ciphertext+tag`, sealed
//! with associated data that binds it to its row (version, key id, domain, scope, owner).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use zeroize::Zeroizing;

use super::VaultError;

/// The format version written today.
pub const VERSION: u8 = 1;
const ALG_AES_256_GCM: u8 = 1;
const NONCE_LEN: usize = 12;

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
}

impl RowBinding<'_> {
    /// Length-prefixed fields, so no two bindings encode alike.
    fn aad(&self, version: u8) -> Vec<u8> {
        let mut out = b"nkmc-vault".to_vec();
        out.push(version);
        for field in [self.key_id, self.domain, self.scope, self.owner] {
            out.extend_from_slice(&(field.len() as u32).to_be_bytes());
            out.extend_from_slice(field.as_bytes());
        }
        out
    }
}

/// Encrypts `plaintext` for `row` under `key` with a fresh random nonce.
pub fn seal(
    key: &[u8; 32],
    row: RowBinding<'_>,
    plaintext: &[u8],
    nonce: [u8; NONCE_LEN],
) -> Result<Vec<u8>, VaultError> {
    let cipher = Aes256Gcm::new(key.into());
    let ct = cipher
        .encrypt((&nonce).into(), Payload { msg: plaintext, aad: &row.aad(VERSION) })
        .map_err(|_| VaultError::Crypto("encryption failed".into()))?;
    let mut out = Vec::with_capacity(2 + NONCE_LEN + ct.len());
    out.push(VERSION);
    out.push(ALG_AES_256_GCM);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Decrypts a blob sealed for `row`; any change to the blob or the row fails.
pub fn open(key: &[u8; 32], row: RowBinding<'_>, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    let bad = |why: &str| VaultError::Crypto(format!("key {} for {}: {why}", row.key_id, row.domain));
    let (&version, rest) = blob.split_first().ok_or_else(|| bad("empty ciphertext"))?;
    if version != VERSION {
        return Err(bad(&format!("unknown format version {version} (plaintext or foreign rows are never accepted)")));
    }
    let (&alg, rest) = rest.split_first().ok_or_else(|| bad("truncated ciphertext"))?;
    if alg != ALG_AES_256_GCM {
        return Err(bad(&format!("unknown algorithm {alg}")));
    }
    if rest.len() < NONCE_LEN + 16 {
        return Err(bad("truncated ciphertext"));
    }
    let (nonce, ct) = rest.split_at(NONCE_LEN);
    let cipher = Aes256Gcm::new(key.into());
    cipher
        .decrypt(nonce.into(), Payload { msg: ct, aad: &row.aad(version) })
        .map(Zeroizing::new)
        .map_err(|_| bad("does not decrypt: wrong master key, or the ciphertext was altered or moved from another row"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [9; 32];
    fn row(domain: &str) -> RowBinding<'_> {
        RowBinding { key_id: "k1", domain, scope: "pool", owner: "" }
    }

    #[test]
    fn round_trip_and_binding() {
        let blob = seal(&KEY, row("a.example"), b"CANARY_x", [1; 12]).unwrap();
        assert_eq!(open(&KEY, row("a.example"), &blob).unwrap().as_slice(), b"CANARY_x");
        assert!(open(&KEY, row("b.example"), &blob).is_err(), "moved to another domain");
        let other = RowBinding { scope: "byok", owner: "agent", ..row("a.example") };
        assert!(open(&KEY, other, &blob).is_err(), "moved to another scope");
        assert!(open(&[8; 32], row("a.example"), &blob).is_err(), "wrong master key");
        assert!(!blob.windows(8).any(|w| w == b"CANARY_x"));
    }

    #[test]
    fn every_flipped_byte_and_truncation_fails() {
        let blob = seal(&KEY, row("a"), b"secret", [2; 12]).unwrap();
        for i in 0..blob.len() {
            let mut b = blob.clone();
            b[i] ^= 0x01;
            assert!(open(&KEY, row("a"), &b).is_err(), "byte {i}");
        }
        for n in 0..blob.len() {
            assert!(open(&KEY, row("a"), &blob[..n]).is_err(), "len {n}");
        }
    }
}
