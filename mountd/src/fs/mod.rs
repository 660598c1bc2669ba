//! The file system as plain async logic, testable without a kernel: every decision
//! lives here; [`crate::fuse`] only translates.

pub mod error;
pub mod inode;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use agentfs::client::{fs_route, GatewayClient};
use agentfs::path::{Name, PathError};
use agentfs::wire::{Entry, EntryKind, Listing};
use bytes::Bytes;
use hyper::Method;

pub use error::FsError;
pub use inode::{Inode, Inodes};

/// One directory entry as `readdir` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// An inode number for `d_ino` (stable per path).
    pub ino: u64,
    /// File or directory.
    pub kind: EntryKind,
    /// The name.
    pub name: String,
}

/// What an open file holds: the whole body, fetched on open.
#[derive(Debug)]
struct FileHandle {
    body: Bytes,
}

/// The file system over one gatewayd.
#[derive(Debug)]
pub struct Fs {
    client: GatewayClient,
    inodes: Mutex<Inodes>,
    files: Mutex<HashMap<u64, FileHandle>>,
    dirs: Mutex<HashMap<u64, Vec<DirEntry>>>,
    next_handle: AtomicU64,
}

fn child_path(parent: &str, name: &Name) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// A stable `d_ino` for entries not (yet) looked up: FNV-1a of the path, high bit set so
/// it never collides with a table number.
fn listing_ino(path: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h | (1 << 63)
}

impl Fs {
    /// A file system that asks `client` for everything.
    pub fn new(client: GatewayClient) -> Self {
        Fs {
            client,
            inodes: Mutex::new(Inodes::default()),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
        }
    }

    fn inodes(&self) -> std::sync::MutexGuard<'_, Inodes> {
        self.inodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path_of(&self, ino: u64) -> Result<Inode, FsError> {
        self.inodes().get(ino).cloned().ok_or(FsError::Stale)
    }

    fn handle(&self) -> u64 {
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }

    /// `lookup`: one name in a directory, checked with gatewayd.
    pub async fn lookup(&self, parent: u64, name: &OsStr) -> Result<(u64, Inode), FsError> {
        let dir = self.path_of(parent)?;
        if dir.kind != EntryKind::Dir {
            return Err(FsError::NotADirectory);
        }
        let name = Name::parse(name.to_str().ok_or(PathError::ControlChar)?)?;
        let path = child_path(&dir.path, &name);
        let entry: Entry = self.client.get_json(&fs_route("stat", &path)).await?;
        Ok(self.inodes().remember(path, entry.kind, entry.mode, entry.size))
    }

    /// `forget`: the kernel dropped references.
    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes().forget(ino, n);
    }

    /// `getattr`: from the table, no request; an open handle knows the real size.
    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<Inode, FsError> {
        let mut node = self.path_of(ino)?;
        if let Some(fh) = fh {
            if let Some(h) = self.files.lock().unwrap_or_else(|p| p.into_inner()).get(&fh) {
                node.size = Some(h.body.len() as u64);
            }
        }
        Ok(node)
    }

    /// `open`: fetches the body now, so no file ever reads as empty.
    pub async fn open(&self, ino: u64) -> Result<u64, FsError> {
        let node = self.path_of(ino)?;
        if node.kind == EntryKind::Dir {
            return Err(FsError::IsADirectory);
        }
        let body = self.client.call_ok(Method::GET, &fs_route("read", &node.path), None).await?;
        self.inodes().set_size(ino, body.len() as u64);
        let fh = self.handle();
        self.files.lock().unwrap_or_else(|p| p.into_inner()).insert(fh, FileHandle { body });
        Ok(fh)
    }

    /// `read`: a slice of the handle's body.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Bytes, FsError> {
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let h = files.get(&fh).ok_or(FsError::Stale)?;
        let len = h.body.len();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(len);
        let end = start.saturating_add(size as usize).min(len);
        Ok(h.body.slice(start..end))
    }

    /// `release`: drops the body.
    pub fn release(&self, fh: u64) {
        self.files.lock().unwrap_or_else(|p| p.into_inner()).remove(&fh);
    }

    /// `opendir`: fetches the listing once; `readdir` pages through it.
    pub async fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        let node = self.path_of(ino)?;
        if node.kind != EntryKind::Dir {
            return Err(FsError::NotADirectory);
        }
        let listing: Listing = self.client.get_json(&fs_route("list", &node.path)).await?;
        let mut entries = vec![
            DirEntry { ino, kind: EntryKind::Dir, name: ".".into() },
            DirEntry { ino, kind: EntryKind::Dir, name: "..".into() },
        ];
        for e in listing.entries {
            let Ok(name) = Name::parse(&e.name) else {
                continue;
            };
            let path = child_path(&node.path, &name);
            entries.push(DirEntry { ino: listing_ino(&path), kind: e.kind, name: e.name });
        }
        let fh = self.handle();
        self.dirs.lock().unwrap_or_else(|p| p.into_inner()).insert(fh, entries);
        Ok(fh)
    }

    /// `readdir`: entries from `offset` on.
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<Vec<(u64, DirEntry)>, FsError> {
        let dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        let entries = dirs.get(&fh).ok_or(FsError::Stale)?;
        Ok(entries
            .iter()
            .enumerate()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .map(|(i, e)| (i as u64 + 1, e.clone()))
            .collect())
    }

    /// `releasedir`: drops the listing.
    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().unwrap_or_else(|p| p.into_inner()).remove(&fh);
    }
}
