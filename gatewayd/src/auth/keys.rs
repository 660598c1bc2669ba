//! The root key pair that signs agent tokens: `biscuit.key` in the data dir, the 32 bytes of
//! an Ed25519 private key, created 0600 from the first byte on first run (temp file, fsync,
//! rename, fsync of the directory, as the master key) and refused if others can read it.
//! The private key is never printed: [`RootKey`]'s `Debug` shows the public key only.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use biscuit_auth::builder::Algorithm;
use biscuit_auth::{KeyPair, PrivateKey, PublicKey};
use zeroize::Zeroizing;

use super::AuthError;

/// The key file's name in the data dir.
pub const KEY_FILE: &str = "biscuit.key";

/// Length of the stored private key.
const KEY_LEN: usize = 32;

/// Where the root key of a data dir lives.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILE)
}

/// The root key pair. Cloning is not offered; the private half never leaves this type
/// except to sign.
pub struct RootKey {
    pair: KeyPair,
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootKey").field("public", &self.public_text()).field("private", &"<redacted>").finish()
    }
}

impl RootKey {
    /// A fresh random key pair (not stored anywhere).
    pub fn generate() -> Self {
        RootKey { pair: KeyPair::new_with_algorithm(Algorithm::Ed25519) }
    }

    /// Reads the key at `path`, creating it on first run.
    pub fn load_or_create(path: &Path) -> Result<Self, AuthError> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) => {
                if !meta.file_type().is_file() {
                    return Err(key_error(path, "is not a regular file"));
                }
                let mode = meta.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(key_error(
                        path,
                        format!(
                            "is readable by group or others (mode {:o}); run `chmod 600 {}`",
                            mode & 0o777,
                            path.display()
                        ),
                    ));
                }
                let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| key_error(path, e))?);
                if bytes.len() != KEY_LEN {
                    return Err(key_error(path, format!("holds {} bytes, a root key is {KEY_LEN}", bytes.len())));
                }
                let private = PrivateKey::from_bytes(&bytes, Algorithm::Ed25519)
                    .map_err(|_| key_error(path, "is not an Ed25519 private key"))?;
                Ok(RootKey { pair: KeyPair::from(&private) })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = RootKey::generate();
                write_private_file(path, &key.pair.private().to_bytes())
                    .map_err(|e| key_error(path, format!("cannot be created: {e}")))?;
                tracing::info!(path = %path.display(), public = %key.public_text(), "root key created");
                Ok(key)
            }
            Err(e) => Err(key_error(path, e)),
        }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.pair.public()
    }

    /// The public half in biscuit's textual form, `ed25519/<64 hex digits>`.
    pub fn public_text(&self) -> String {
        self.pair.public().to_string()
    }

    /// The pair, to sign an authority block.
    pub(crate) fn pair(&self) -> &KeyPair {
        &self.pair
    }
}

fn key_error(path: &Path, message: impl ToString) -> AuthError {
    AuthError::KeyFile { path: path.to_path_buf(), message: message.to_string() }
}

/// Writes `bytes` to `path` atomically, mode 0600 from the first byte: a temp file beside it,
/// fsync, rename over `path`, fsync of the directory. Also used for saved tokens.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    drop(f);
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_0600_read_back_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let p = key_path(dir.path());
        let k1 = RootKey::load_or_create(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let k2 = RootKey::load_or_create(&p).unwrap();
        assert_eq!(k1.public(), k2.public());
        assert!(k1.public_text().starts_with("ed25519/"));

        let private_hex = hex::encode(k1.pair.private().to_bytes());
        let debug = format!("{k1:?}");
        assert!(debug.contains("<redacted>") && !debug.contains(&private_hex), "{debug}");

        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = RootKey::load_or_create(&p).unwrap_err().to_string();
        assert!(err.starts_with("auth:") && err.contains("chmod 600"), "{err}");

        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&p, b"short").unwrap();
        let err = RootKey::load_or_create(&p).unwrap_err().to_string();
        assert!(err.contains("holds 5 bytes"), "{err}");
    }
}
