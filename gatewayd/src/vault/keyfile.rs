//! The master-key file: 32 random bytes, created 0600 from the first byte
//! (temp file, fsync, rename, fsync of the directory), refused if others can read it.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::VaultError;

pub use super::blob::KEY_LEN;

/// Reads the master key at `path`, creating it with fresh random bytes if absent.
pub fn load_or_create(path: &Path, random: impl FnOnce(&mut [u8])) -> Result<Zeroizing<[u8; KEY_LEN]>, VaultError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => read(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = Zeroizing::new([0u8; KEY_LEN]);
            random(key.as_mut_slice());
            write_atomically(path, key.as_slice())?;
            Ok(key)
        }
        Err(e) => Err(io(path, e)),
    }
}

/// Reads the master key at `path`: a regular file of exactly [`KEY_LEN`] bytes that only its
/// owner can read.
pub fn read(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>, VaultError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_file() {
                return Err(VaultError::KeyFile { path: path.to_path_buf(), message: "is not a regular file".into() });
            }
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(VaultError::KeyFile {
                    path: path.to_path_buf(),
                    message: format!(
                        "is readable by group or others (mode {:o}); run `chmod 600 {}`",
                        meta.permissions().mode() & 0o777,
                        path.display()
                    ),
                });
            }
            let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| io(path, e))?);
            let key: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| VaultError::KeyFile {
                path: path.to_path_buf(),
                message: format!("holds {} bytes, a master key is {KEY_LEN}", bytes.len()),
            })?;
            Ok(Zeroizing::new(key))
        }
        Err(e) => Err(io(path, e)),
    }
}

pub(super) fn io(path: &Path, e: std::io::Error) -> VaultError {
    VaultError::KeyFile { path: path.to_path_buf(), message: e.to_string() }
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the whole new one:
/// a 0600 temp file beside it, fsync, rename over `path`, fsync of the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), VaultError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp: PathBuf = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("key")));
    let _ = std::fs::remove_file(&tmp);
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(|e| io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| io(&tmp, e))?;
    f.sync_all().map_err(|e| io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io(dir, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master.key");
        let k1 = load_or_create(&p, |b| b.fill(7)).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let k2 = load_or_create(&p, |_| panic!("must not regenerate")).unwrap();
        assert_eq!(*k1, *k2);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(&p, |_| {}).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
