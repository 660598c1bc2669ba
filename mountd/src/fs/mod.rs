//! The file system as plain async logic, testable without a kernel: every decision
//! lives here; [`crate::fuse`] only translates.

pub mod cache;
pub mod control;
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
pub use inode::{Inode, Inodes, ROOT};

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

/// What an open file holds: the body fetched on open (readers), or the bytes written so
/// far (writers), sent on the flush that follows written data.
#[derive(Debug)]
struct FileHandle {
    ino: u64,
    path: String,
    body: Bytes,
    write: Option<WriteBuffer>,
}

#[derive(Debug, Default)]
struct WriteBuffer {
    data: Vec<u8>,
    dirty: bool,
}

/// An open file: its handle, and whether the kernel may keep the pages it has of it.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    /// The handle.
    pub fh: u64,
    /// The body is the one the kernel last saw: `FOPEN_KEEP_CACHE`.
    pub keep_cache: bool,
}

/// How a file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `O_RDONLY`.
    Read,
    /// `O_WRONLY` (or `O_RDWR` with `O_TRUNC`): starts empty.
    Write,
    /// `O_RDWR` without `O_TRUNC`: starts with the current body.
    ReadWrite,
}

/// Largest body a single file write may build up.
pub const MAX_WRITE_BYTES: usize = 16 * 1024 * 1024;

/// Most write responses remembered for reading back POST-only files.
const MAX_LAST_RESPONSES: usize = 256;

/// The file system over one gatewayd.
#[derive(Debug)]
pub struct Fs {
    client: GatewayClient,
    inodes: Mutex<Inodes>,
    files: Mutex<HashMap<u64, FileHandle>>,
    dirs: Mutex<HashMap<u64, Vec<DirEntry>>>,
    /// The last response to this mount's write to each path.
    last: Mutex<HashMap<String, Bytes>>,
    /// `.nkmc/last` and `.nkmc/last_error`.
    control: control::Control,
    /// Bodies by path, for a short TTL.
    cache: cache::ContentCache,
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

impl FileHandle {
    fn size(&self) -> u64 {
        match &self.write {
            Some(w) => w.data.len() as u64,
            None => self.body.len() as u64,
        }
    }
}

impl Fs {
    /// A file system that asks `client` for everything, keeping bodies in `cache`.
    pub fn new(client: GatewayClient, cache: cache::ContentCache) -> Self {
        Fs {
            client,
            inodes: Mutex::new(Inodes::default()),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            last: Mutex::new(HashMap::new()),
            control: control::Control::default(),
            cache,
            next_handle: AtomicU64::new(1),
        }
    }

    fn inodes(&self) -> std::sync::MutexGuard<'_, Inodes> {
        self.inodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path_of(&self, ino: u64) -> Result<Inode, FsError> {
        if let Some(node) = control::inode(ino, &self.control) {
            return Ok(node);
        }
        self.inodes().get(ino).cloned().ok_or(FsError::Stale)
    }

    /// Runs `f`, recording a failure in `.nkmc/last_error`.
    fn noted<T>(&self, op: &str, path: &str, r: Result<T, FsError>) -> Result<T, FsError> {
        if let Err(e) = &r {
            self.control.error(op, path, e);
        }
        r
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
        let text = name.to_str().ok_or(PathError::ControlChar)?;
        if parent == ROOT && text == control::DIR_NAME {
            return self.path_of(control::DIR_INO).map(|n| (control::DIR_INO, n));
        }
        if parent == control::DIR_INO {
            let ino = control::child(text).ok_or(FsError::NoSuchControlFile)?;
            return self.path_of(ino).map(|n| (ino, n));
        }
        let name = Name::parse(text)?;
        let path = child_path(&dir.path, &name);
        let entry = match self.client.get_json::<Entry>(&fs_route("stat", &path)).await {
            Ok(entry) => entry,
            // A missing name is routine (shells probe names); anything else is worth telling.
            Err(e) if e.code() == agentfs::wire::ErrorCode::NotFound => return Err(e.into()),
            Err(e) => return self.noted("LOOKUP", &path, Err(e.into())),
        };
        Ok(self.inodes().remember(path, entry.kind, entry.mode, entry.size))
    }

    /// `forget`: the kernel dropped references.
    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes().forget(ino, n);
    }

    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<u64, FileHandle>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `getattr`: from the table, no request; an open handle knows the real size.
    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<Inode, FsError> {
        let mut node = self.path_of(ino)?;
        if let Some(h) = fh.and_then(|fh| self.files().get(&fh).map(|h| h.size())) {
            node.size = Some(h);
        }
        Ok(node)
    }

    /// `open`: readers fetch the body now, so no file ever reads as empty; a file with no
    /// GET reads as the last response to this mount's write to it.
    pub async fn open(&self, ino: u64, access: Access, direct: bool) -> Result<Opened, FsError> {
        let node = self.path_of(ino)?;
        if node.kind == EntryKind::Dir {
            return Err(FsError::IsADirectory);
        }
        if access != Access::Read && node.mode & 0o200 == 0 {
            return self.noted("WRITE", &node.path, Err(FsError::ReadOnly));
        }
        if let Some(text) = self.control.content(ino) {
            let fh = self.handle();
            self.files().insert(fh, FileHandle { ino, path: node.path, body: text.into(), write: None });
            return Ok(Opened { fh, keep_cache: false });
        }
        let cached = (access == Access::Read && !direct).then(|| self.cache.get(&node.path)).flatten();
        let mut keep_cache = false;
        let body = match (access, cached) {
            (Access::Write, _) => Bytes::new(),
            (Access::Read, Some(served)) => {
                keep_cache = served.keep_kernel_cache;
                served.body
            }
            (Access::Read | Access::ReadWrite, _) => {
                let fetched = self.client.call_ok_with_headers(Method::GET, &fs_route("read", &node.path), None).await;
                match fetched {
                    Ok(answer) => {
                        self.control.ok("READ", &node.path, &answer);
                        self.cache.put(&node.path, answer.body).body
                    }
                    Err(e) if e.code() == agentfs::wire::ErrorCode::NotSupported => {
                        match self.last.lock().unwrap_or_else(|p| p.into_inner()).get(&node.path) {
                            Some(last) => last.clone(),
                            None if access == Access::ReadWrite => Bytes::new(),
                            None => return self.noted("READ", &node.path, Err(FsError::NoData)),
                        }
                    }
                    Err(e) => return self.noted("READ", &node.path, Err(e.into())),
                }
            }
        };
        if access == Access::Read {
            self.inodes().set_size(ino, body.len() as u64);
        }
        let write = match access {
            Access::Read => None,
            Access::Write => Some(WriteBuffer::default()),
            Access::ReadWrite => Some(WriteBuffer { data: body.to_vec(), dirty: false }),
        };
        let fh = self.handle();
        self.files().insert(fh, FileHandle { ino, path: node.path, body, write });
        Ok(Opened { fh, keep_cache })
    }

    /// `read`: a slice of the handle's body (or of what was written to it).
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Bytes, FsError> {
        let files = self.files();
        let h = files.get(&fh).ok_or(FsError::Stale)?;
        let content = match &h.write {
            Some(w) => Bytes::copy_from_slice(&w.data),
            None => h.body.clone(),
        };
        let len = content.len();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(len);
        let end = start.saturating_add(size as usize).min(len);
        Ok(content.slice(start..end))
    }

    /// `write`: into the handle's buffer; nothing is sent until the flush.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        let mut files = self.files();
        let h = files.get_mut(&fh).ok_or(FsError::Stale)?;
        let w = h.write.as_mut().ok_or(FsError::NotOpenForWriting)?;
        let start = usize::try_from(offset).map_err(|_| FsError::TooLarge)?;
        let end = start.checked_add(data.len()).filter(|e| *e <= MAX_WRITE_BYTES).ok_or(FsError::TooLarge)?;
        if w.data.len() < end {
            w.data.resize(end, 0);
        }
        w.data[start..end].copy_from_slice(data);
        w.dirty = true;
        Ok(data.len() as u32)
    }

    /// `truncate`/`O_TRUNC`: resizes an open writer's buffer; without one, nothing to do
    /// (the next write replaces the whole content anyway).
    pub fn truncate(&self, ino: u64, fh: Option<u64>, size: u64) -> Result<Inode, FsError> {
        let node = self.path_of(ino)?;
        if node.kind == EntryKind::Dir {
            return Err(FsError::IsADirectory);
        }
        if node.mode & 0o200 == 0 {
            return Err(FsError::ReadOnly);
        }
        let size = usize::try_from(size).ok().filter(|s| *s <= MAX_WRITE_BYTES).ok_or(FsError::TooLarge)?;
        let mut files = self.files();
        let handle = match fh {
            Some(fh) => files.get_mut(&fh),
            None => files.values_mut().find(|h| h.ino == ino && h.write.is_some()),
        };
        if let Some(w) = handle.and_then(|h| h.write.as_mut()) {
            if w.data.len() != size {
                w.data.resize(size, 0);
                w.dirty = true;
            }
        }
        drop(files);
        self.getattr(ino, fh)
    }

    /// `flush` (each `close`): sends the written bytes, if any were written since the last
    /// send. An empty flush (bash's `>` before any write) sends nothing.
    pub async fn flush(&self, fh: u64) -> Result<(), FsError> {
        let (path, data) = {
            let mut files = self.files();
            let h = files.get_mut(&fh).ok_or(FsError::Stale)?;
            match h.write.as_mut() {
                Some(w) if w.dirty => {
                    w.dirty = false;
                    (h.path.clone(), Bytes::from(w.data.clone()))
                }
                _ => return Ok(()),
            }
        };
        let result = self
            .client
            .call_ok_with_headers(Method::POST, &fs_route("write", &path), Some((data, "application/json")))
            .await;
        match result {
            Ok(answer) => {
                self.control.ok("WRITE", &path, &answer);
                self.cache.invalidate(&path);
                let response = answer.body;
                let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
                if last.len() >= MAX_LAST_RESPONSES && !last.contains_key(&path) {
                    let evict = last.keys().next().cloned();
                    if let Some(k) = evict {
                        last.remove(&k);
                    }
                }
                last.insert(path, response);
                Ok(())
            }
            Err(e) => self.noted("WRITE", &path, Err(e.into())),
        }
    }

    /// `release`: drops the handle (its data was sent by the flush before it).
    pub fn release(&self, fh: u64) {
        self.files().remove(&fh);
    }

    /// `unlink` (`rm`): the file's DELETE.
    pub async fn unlink(&self, parent: u64, name: &OsStr) -> Result<(), FsError> {
        let dir = self.path_of(parent)?;
        let name = Name::parse(name.to_str().ok_or(PathError::ControlChar)?)?;
        let path = child_path(&dir.path, &name);
        let answer = self.client.call_ok_with_headers(Method::POST, &fs_route("delete", &path), None).await;
        let answer = self.noted("DELETE", &path, answer.map_err(FsError::from))?;
        self.control.ok("DELETE", &path, &answer);
        self.cache.invalidate(&path);
        self.last.lock().unwrap_or_else(|p| p.into_inner()).remove(&path);
        Ok(())
    }

    /// `opendir`: fetches the listing once; `readdir` pages through it.
    pub async fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        let node = self.path_of(ino)?;
        if node.kind != EntryKind::Dir {
            return Err(FsError::NotADirectory);
        }
        let mut entries = vec![
            DirEntry { ino, kind: EntryKind::Dir, name: ".".into() },
            DirEntry { ino, kind: EntryKind::Dir, name: "..".into() },
        ];
        if ino == control::DIR_INO {
            entries.push(DirEntry { ino: control::LAST_INO, kind: EntryKind::File, name: "last".into() });
            entries.push(DirEntry { ino: control::LAST_ERROR_INO, kind: EntryKind::File, name: "last_error".into() });
            let fh = self.handle();
            self.dirs.lock().unwrap_or_else(|p| p.into_inner()).insert(fh, entries);
            return Ok(fh);
        }
        if ino == ROOT {
            entries.push(DirEntry { ino: control::DIR_INO, kind: EntryKind::Dir, name: control::DIR_NAME.into() });
        }
        let listing = self.client.get_json::<Listing>(&fs_route("list", &node.path)).await;
        let listing = self.noted("LIST", &node.path, listing.map_err(FsError::from))?;
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
