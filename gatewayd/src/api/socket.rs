//! The Unix socket: a 0700 directory, a 0600 socket, and the peer's uid checked on
//! every accept (`SO_PEERCRED`), so even a chmod 0666 socket serves only its owner.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// A filesystem step failed.
    #[error("socket: {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Something unsafe is in the way.
    #[error("socket: {0}")]
    Unsafe(String),
    /// A gatewayd already answers there.
    #[error("socket: a gatewayd is already listening on {0}")]
    InUse(PathBuf),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SocketError + 'a {
    move |source| SocketError::Io { what, path: path.to_path_buf(), source }
}

/// Binds the socket at `path` safely.
pub fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    let uid = nix::unistd::geteuid().as_raw();
    let dir =
        path.parent().ok_or_else(|| SocketError::Unsafe(format!("{} has no parent directory", path.display())))?;
    match std::fs::symlink_metadata(dir) {
        Ok(meta) => {
            if !meta.is_dir() {
                return Err(SocketError::Unsafe(format!("{} is not a directory", dir.display())));
            }
            if meta.uid() != uid {
                return Err(SocketError::Unsafe(format!(
                    "{} belongs to uid {}, not to us ({uid})",
                    dir.display(),
                    meta.uid()
                )));
            }
            if meta.mode() & 0o077 != 0 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(io_err("chmod 0700", dir))?;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err("create", dir))?;
        }
        Err(e) => return Err(io_err("inspect", dir)(e)),
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(io_err("remove stale socket", path))?;
        }
        Ok(_) => {
            return Err(SocketError::Unsafe(format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspect", path)(e)),
    }
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(io_err("bind", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err("chmod 0600", path))?;
    Ok(listener)
}

/// A listener that drops every connection from another uid.
#[derive(Debug)]
pub struct OwnerOnly {
    inner: UnixListener,
    uid: u32,
}

impl OwnerOnly {
    /// Serves only the effective uid of this process.
    pub fn new(inner: UnixListener) -> Self {
        OwnerOnly { inner, uid: nix::unistd::geteuid().as_raw() }
    }
}

impl axum::serve::Listener for OwnerOnly {
    type Io = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => match stream.peer_cred() {
                    Ok(cred) if cred.uid() == self.uid => return (stream, addr),
                    Ok(cred) => tracing::warn!(peer_uid = cred.uid(), "socket: refused a connection from another uid"),
                    Err(e) => {
                        tracing::warn!(error = %e, "socket: cannot read the peer's credentials; refused")
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "socket: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}
