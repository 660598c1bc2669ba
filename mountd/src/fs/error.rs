//! Every failure becomes one errno; one exhaustive mapping, no catch-all arm.

use agentfs::client::ClientError;
use agentfs::path::PathError;
use agentfs::wire::ErrorCode;

/// Why a file-system operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// gatewayd refused or failed.
    #[error(transparent)]
    Gateway(#[from] ClientError),
    /// A name the kernel handed over is not a valid name.
    #[error("mountd: {0}")]
    Name(#[from] PathError),
    /// An inode or handle the kernel named is unknown (forgotten or never issued).
    #[error("mountd: unknown inode or handle")]
    Stale,
    /// A file used as a directory.
    #[error("mountd: not a directory")]
    NotADirectory,
    /// A directory used as a file.
    #[error("mountd: is a directory")]
    IsADirectory,
    /// A write to a file that has no write operation.
    #[error("mountd: the file is read-only (its API has no POST, PUT or PATCH)")]
    ReadOnly,
    /// A write on a handle opened for reading.
    #[error("mountd: the file was not opened for writing")]
    NotOpenForWriting,
    /// A write past the size a single write may reach.
    #[error("mountd: a write may not exceed {} bytes", super::MAX_WRITE_BYTES)]
    TooLarge,
    /// A POST-only file read before this mount wrote to it.
    #[error("mountd: nothing to read yet: write to the file first, then read its response")]
    NoData,
    /// A name under `.nkmc/` that is not a control file.
    #[error("mountd: .nkmc holds only `last` and `last_error`")]
    NoSuchControlFile,
    /// The operation has no meaning on this file system (mkdir, rename, chmod, links).
    #[error("mountd: not permitted on an nkmc mount")]
    NotPermitted,
    /// A new name where no writable collection takes new items.
    #[error("mountd: cannot create here: new files are made only as `C.d/NAME` of a collection `C` that can be written (`{0}` is not one); write to an existing file instead")]
    NotCreatable(String),
    /// A large body could not be kept in its temporary file.
    #[error(transparent)]
    Spill(#[from] super::body::SpillError),
    /// Reading a large body back from its temporary file failed.
    #[error("mountd: cannot read the temporary file holding a large body: {0}")]
    Spilled(std::io::Error),
}

impl FsError {
    /// The errno the kernel passes to the caller.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Gateway(ClientError::Connect { .. }) => libc::EIO,
            FsError::Gateway(ClientError::Http(_)) => libc::EIO,
            FsError::Gateway(ClientError::Cut { .. }) => libc::EIO,
            FsError::Gateway(ClientError::Decode(_)) => libc::EIO,
            FsError::Gateway(ClientError::Timeout(_)) => libc::ETIMEDOUT,
            FsError::Gateway(ClientError::Api { body, .. }) => errno_of(body.code),
            FsError::Name(PathError::DotSegment(_)) | FsError::Name(PathError::ControlChar) => libc::EINVAL,
            FsError::Name(PathError::NameTooLong(_)) | FsError::Name(PathError::PathTooLong(_)) => libc::ENAMETOOLONG,
            FsError::Stale => libc::ESTALE,
            FsError::NotADirectory => libc::ENOTDIR,
            FsError::IsADirectory => libc::EISDIR,
            FsError::ReadOnly => libc::EACCES,
            FsError::NotOpenForWriting => libc::EBADF,
            FsError::TooLarge => libc::EFBIG,
            FsError::NoData => libc::ENODATA,
            FsError::NoSuchControlFile => libc::ENOENT,
            FsError::NotPermitted => libc::EPERM,
            FsError::NotCreatable(_) => libc::EACCES,
            FsError::Spill(_) | FsError::Spilled(_) => libc::EIO,
        }
    }

    /// gatewayd's error class, when gatewayd answered with one.
    pub fn class(&self) -> Option<ErrorCode> {
        match self {
            FsError::Gateway(e) => Some(e.code()),
            _ => None,
        }
    }
}

/// DESIGN's errno table ("Reads, writes, errors").
pub fn errno_of(code: ErrorCode) -> i32 {
    match code {
        ErrorCode::InvalidPath => libc::EINVAL,
        ErrorCode::NameTooLong => libc::ENAMETOOLONG,
        ErrorCode::NotFound => libc::ENOENT,
        ErrorCode::NotADirectory => libc::ENOTDIR,
        ErrorCode::IsADirectory => libc::EISDIR,
        ErrorCode::PermissionDenied => libc::EACCES,
        ErrorCode::InvalidInput => libc::EINVAL,
        ErrorCode::NotSupported => libc::ENOTSUP,
        ErrorCode::Conflict => libc::EEXIST,
        ErrorCode::TooLarge => libc::EFBIG,
        ErrorCode::RateLimited => libc::EAGAIN,
        ErrorCode::UpstreamFailed => libc::EIO,
        ErrorCode::Timeout => libc::ETIMEDOUT,
        ErrorCode::Unreachable => libc::ECONNREFUSED,
        ErrorCode::BadRequest => libc::EINVAL,
        ErrorCode::Internal => libc::EIO,
        ErrorCode::Unauthenticated => libc::EACCES,
        ErrorCode::PaymentRequired => libc::EACCES,
    }
}
