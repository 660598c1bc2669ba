//! The file system as plain async logic, testable without a kernel: every decision
//! lives here; [`crate::fuse`] only translates.

pub mod body;
pub mod cache;
pub mod control;
pub mod error;
pub mod inode;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use agentfs::client::{fs_route, GatewayClient};
use agentfs::path::{Name, PathError};
use agentfs::wire::{Entry, EntryKind, Listing};
use bytes::Bytes;
use hyper::header::{IF_MODIFIED_SINCE, IF_NONE_MATCH};
use hyper::{Method, StatusCode};
use tokio::sync::{Semaphore, SemaphorePermit};

use body::{Collector, Content};
use cache::{Lookup, Validators};

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
    /// What the listing told of it (for `readdirplus`); `None` for `.`, `..` and the
    /// control files, which `readdirplus` leaves to `lookup`.
    pub listed: Option<Listed>,
}

/// An entry as a listing describes it: enough for the kernel's attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The canonical path.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Size, when known without a request.
    pub size: Option<u64>,
}

/// What an open file holds: the body fetched on open (readers), or the bytes written so
/// far (writers), sent on the flush that follows written data.
#[derive(Debug)]
struct FileHandle {
    ino: u64,
    path: String,
    /// Where the flush sends: the file itself, or for a new item written into `C.d/`,
    /// the collection `C`.
    target: String,
    body: Content,
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
    /// The size differs from the one told before (a listing may have told the kernel
    /// another, which it caches): the kernel must drop the attributes it holds.
    pub size_changed: bool,
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

/// How much one mount asks of gatewayd at once, and how much of a body it holds in memory.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most requests to gatewayd that may reach the upstream (reads, listings, writes,
    /// removals) in flight at once; more wait for a slot. Lookups take none.
    pub max_inflight: usize,
    /// Bodies larger than this go to an unlinked temporary file instead of memory.
    pub spill_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_inflight: 16, spill_bytes: 8 * 1024 * 1024 }
    }
}

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
    /// One permit per request to gatewayd in flight.
    inflight: Semaphore,
    limits: Limits,
    next_handle: AtomicU64,
}

/// What a read of a file brought back.
enum Fetched {
    /// A new body.
    Body { content: Content, validators: Validators },
    /// The cached body is still current (`304`).
    NotModified,
}

fn child_path(parent: &str, name: &Name) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// The collection a path in `C.d/` belongs to: `/svc/pets.d/new` → `/svc/pets`.
fn collection_of(path: &str) -> Option<&str> {
    let (parent, _) = path.rsplit_once('/')?;
    parent.strip_suffix(".d").filter(|c| c.len() > 1 && c.rsplit_once('/').is_some_and(|(_, n)| !n.is_empty()))
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
            None => self.body.len(),
        }
    }
}

impl Fs {
    /// A file system that asks `client` for everything, keeping bodies in `cache`.
    pub fn new(client: GatewayClient, cache: cache::ContentCache, limits: Limits) -> Self {
        Fs {
            client,
            inodes: Mutex::new(Inodes::default()),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            last: Mutex::new(HashMap::new()),
            control: control::Control::default(),
            cache,
            inflight: Semaphore::new(limits.max_inflight.max(1)),
            limits,
            next_handle: AtomicU64::new(1),
        }
    }

    fn inodes(&self) -> std::sync::MutexGuard<'_, Inodes> {
        self.inodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for one request to gatewayd; held until the answer (and its body) is in.
    async fn permit(&self) -> Option<SemaphorePermit<'_>> {
        // The semaphore is never closed, so acquiring only waits.
        self.inflight.acquire().await.ok()
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

    /// gatewayd's `stat`: answered from the tree, never upstream, so it takes no slot —
    /// lookups go on while slow upstream reads hold every slot.
    async fn stat(&self, path: &str) -> Result<Entry, agentfs::client::ClientError> {
        self.client.get_json::<Entry>(&fs_route("stat", path)).await
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
        let entry = match self.stat(&path).await {
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

    /// GETs a file's body through gatewayd, streamed into memory or a temporary file;
    /// with `stale` validators, a conditional GET that may answer [`Fetched::NotModified`].
    async fn fetch(&self, path: &str, stale: Option<&Validators>) -> Result<Fetched, FsError> {
        let _slot = self.permit().await;
        let mut extra = Vec::new();
        if let Some(v) = stale {
            if let Some(etag) = &v.etag {
                extra.push((IF_NONE_MATCH, etag.clone()));
            }
            if let Some(lm) = &v.last_modified {
                extra.push((IF_MODIFIED_SINCE, lm.clone()));
            }
        }
        let mut answer = self.client.get_streamed(&fs_route("read", path), &extra).await?;
        if answer.status == StatusCode::NOT_MODIFIED && stale.is_some() {
            let headers = answer.headers.clone();
            answer.rest().await?;
            self.control.ok_parts("READ", path, &headers, b"(not modified: the cached body is current)");
            return Ok(Fetched::NotModified);
        }
        if !answer.status.is_success() {
            return Err(answer.into_error().await.into());
        }
        let validators = Validators::of(&answer.headers);
        let expected = answer
            .headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let mut collector = Collector::with_expected(self.limits.spill_bytes, expected)?;
        while let Some(chunk) = answer.chunk().await? {
            collector.push(&chunk)?;
        }
        let content = collector.finish();
        let start = content.read_at(0, control::MAX_BODY).map_err(FsError::Spilled)?;
        self.control.ok_parts("READ", path, &answer.headers, &start);
        Ok(Fetched::Body { content, validators })
    }

    /// The body a reader gets: from the cache while fresh, revalidated when stale with a
    /// validator, else fetched. Returns it and whether the kernel may keep its pages.
    async fn body_for_reading(&self, path: &str, direct: bool) -> Result<(Content, bool), FsError> {
        let lookup = if direct { Lookup::Missing } else { self.cache.lookup(path) };
        let stale = match lookup {
            Lookup::Fresh(served) => return Ok((served.body, served.keep_kernel_cache)),
            Lookup::Stale(v) => Some(v),
            Lookup::Missing => None,
        };
        match self.fetch(path, stale.as_ref()).await? {
            Fetched::NotModified => match self.cache.revalidated(path) {
                Some(served) => Ok((served.body, served.keep_kernel_cache)),
                // Evicted meanwhile: ask again without validators.
                None => match self.fetch(path, None).await? {
                    Fetched::Body { content, validators } => {
                        Ok((self.cache.put(path, content, validators).body, false))
                    }
                    Fetched::NotModified => Err(FsError::NoData),
                },
            },
            Fetched::Body { content, validators } => Ok((self.cache.put(path, content, validators).body, false)),
        }
    }

    /// Where a write to `node` goes: the file itself when it is writable; for a read-only
    /// item `C.d/NAME` of a collection `C` that is writable, the collection (a new item).
    async fn write_target(&self, node: &Inode) -> Result<String, FsError> {
        if node.mode & 0o200 != 0 {
            return Ok(node.path.clone());
        }
        self.collection_target(&node.path).await.ok_or(FsError::ReadOnly)
    }

    /// The collection a new item at `path` is created in, if its collection is writable.
    async fn collection_target(&self, path: &str) -> Option<String> {
        let collection = collection_of(path)?;
        match self.stat(collection).await {
            Ok(e) if e.kind == EntryKind::File && e.mode & 0o200 != 0 => Some(collection.to_owned()),
            Ok(_) | Err(_) => None,
        }
    }

    /// `open` without waiting, when it needs no request: a reader of a file whose body is
    /// fresh in the cache. `None`: take [`Fs::open`].
    pub fn open_cached(&self, ino: u64, access: Access, direct: bool) -> Option<Opened> {
        if access != Access::Read || direct || control::inode(ino, &self.control).is_some() {
            return None;
        }
        let node = self.path_of(ino).ok().filter(|n| n.kind == EntryKind::File)?;
        let Lookup::Fresh(served) = self.cache.lookup(&node.path) else { return None };
        let size = served.body.len();
        let size_changed = self.inodes().set_size(ino, size) != Some(size);
        let fh = self.handle();
        let handle = FileHandle { ino, target: node.path.clone(), path: node.path, body: served.body, write: None };
        self.files().insert(fh, handle);
        Some(Opened { fh, keep_cache: served.keep_kernel_cache, size_changed })
    }

    /// `lookup` without waiting, when it needs no request: a name in the parent's cached
    /// listing (`grep -r` over a listed directory looks up every entry). `None`: take
    /// [`Fs::lookup`].
    pub fn lookup_cached(&self, parent: u64, name: &OsStr) -> Option<(u64, Inode)> {
        let text = name.to_str()?;
        if parent == control::DIR_INO || (parent == ROOT && text == control::DIR_NAME) {
            return None;
        }
        let dir = self.path_of(parent).ok().filter(|d| d.kind == EntryKind::Dir)?;
        let listing = self.cache.listing(&dir.path)?;
        let i = listing.entries.binary_search_by(|e| e.name.as_str().cmp(text)).ok()?;
        let e = &listing.entries[i];
        let name = Name::parse(text).ok()?;
        Some(self.inodes().remember(child_path(&dir.path, &name), e.kind, e.mode, e.size))
    }

    /// `open`: readers fetch the body now, so no file ever reads as empty; a file with no
    /// GET reads as the last response to this mount's write to it.
    pub async fn open(&self, ino: u64, access: Access, direct: bool) -> Result<Opened, FsError> {
        let node = self.path_of(ino)?;
        if node.kind == EntryKind::Dir {
            return Err(FsError::IsADirectory);
        }
        let mut target = node.path.clone();
        if access != Access::Read {
            if control::inode(ino, &self.control).is_some() {
                return self.noted("WRITE", &node.path, Err(FsError::ReadOnly));
            }
            target = match self.write_target(&node).await {
                Ok(t) => t,
                Err(e) => return self.noted("WRITE", &node.path, Err(e)),
            };
        }
        if let Some(text) = self.control.content(ino) {
            let fh = self.handle();
            let body = Content::Memory(text.into());
            self.files().insert(fh, FileHandle { ino, path: node.path, target, body, write: None });
            return Ok(Opened { fh, keep_cache: false, size_changed: false });
        }
        let mut keep_cache = false;
        let body = match access {
            // A new item in a collection starts empty and has nothing to read.
            Access::Write => Content::default(),
            Access::ReadWrite if target != node.path => Content::default(),
            Access::Read | Access::ReadWrite => {
                let direct = direct || access == Access::ReadWrite;
                match self.body_for_reading(&node.path, direct).await {
                    Ok((body, keep)) => {
                        keep_cache = keep;
                        body
                    }
                    Err(e) if e.class() == Some(agentfs::wire::ErrorCode::NotSupported) => {
                        match self.last.lock().unwrap_or_else(|p| p.into_inner()).get(&node.path) {
                            Some(last) => Content::Memory(last.clone()),
                            None if access == Access::ReadWrite => Content::default(),
                            None => return self.noted("READ", &node.path, Err(FsError::NoData)),
                        }
                    }
                    Err(e) => return self.noted("READ", &node.path, Err(e)),
                }
            }
        };
        let mut size_changed = false;
        if access == Access::Read {
            size_changed = self.inodes().set_size(ino, body.len()) != Some(body.len());
        }
        let write = match access {
            Access::Read => None,
            Access::Write => Some(WriteBuffer::default()),
            Access::ReadWrite => {
                if body.len() > MAX_WRITE_BYTES as u64 {
                    return self.noted("WRITE", &node.path, Err(FsError::TooLarge));
                }
                let data = body.to_vec().map_err(FsError::Spilled)?;
                Some(WriteBuffer { data, dirty: false })
            }
        };
        let fh = self.handle();
        self.files().insert(fh, FileHandle { ino, path: node.path, target, body, write });
        Ok(Opened { fh, keep_cache, size_changed })
    }

    /// `create`: a name the tree does not have. Allowed only as a new item `C.d/NAME` of a
    /// writable collection `C`: the flush that follows sends the written body to `C`.
    pub async fn create(&self, parent: u64, name: &OsStr) -> Result<(u64, Inode, Opened), FsError> {
        let dir = self.path_of(parent)?;
        if dir.kind != EntryKind::Dir || control::inode(parent, &self.control).is_some() {
            return Err(FsError::NotPermitted);
        }
        let name = Name::parse(name.to_str().ok_or(PathError::ControlChar)?)?;
        let path = child_path(&dir.path, &name);
        let Some(target) = self.collection_target(&path).await else {
            return self.noted("CREATE", &path, Err(FsError::NotCreatable(dir.path)));
        };
        let (ino, node) = self.inodes().remember(path.clone(), EntryKind::File, 0o644, Some(0));
        let fh = self.handle();
        let handle = FileHandle { ino, path, target, body: Content::default(), write: Some(WriteBuffer::default()) };
        self.files().insert(fh, handle);
        Ok((ino, node, Opened { fh, keep_cache: false, size_changed: false }))
    }

    /// `read`: a slice of the handle's body (or of what was written to it).
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Bytes, FsError> {
        let files = self.files();
        let h = files.get(&fh).ok_or(FsError::Stale)?;
        match &h.write {
            Some(w) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(w.data.len());
                let end = start.saturating_add(size as usize).min(w.data.len());
                Ok(Bytes::copy_from_slice(&w.data[start..end]))
            }
            None => {
                let body = h.body.clone();
                drop(files);
                body.read_at(offset, size as usize).map_err(FsError::Spilled)
            }
        }
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
        let size = usize::try_from(size).ok().filter(|s| *s <= MAX_WRITE_BYTES).ok_or(FsError::TooLarge)?;
        let mut files = self.files();
        let handle = match fh {
            Some(fh) => files.get_mut(&fh),
            None => files.values_mut().find(|h| h.ino == ino && h.write.is_some()),
        };
        match handle.and_then(|h| h.write.as_mut()) {
            Some(w) if w.data.len() != size => {
                w.data.resize(size, 0);
                w.dirty = true;
            }
            Some(_) => {}
            // No writer: a read-only file cannot be truncated.
            None if node.mode & 0o200 == 0 => return Err(FsError::ReadOnly),
            None => {}
        }
        drop(files);
        self.getattr(ino, fh)
    }

    /// Whether a `flush` of `fh` has anything to send (a reader's never has).
    pub fn has_unsent(&self, fh: u64) -> bool {
        self.files().get(&fh).is_some_and(|h| h.write.as_ref().is_some_and(|w| w.dirty))
    }

    /// `flush` (each `close`): sends the written bytes, if any were written since the last
    /// send. An empty flush (bash's `>` before any write) sends nothing.
    pub async fn flush(&self, fh: u64) -> Result<(), FsError> {
        let (path, target, data) = {
            let mut files = self.files();
            let h = files.get_mut(&fh).ok_or(FsError::Stale)?;
            match h.write.as_mut() {
                Some(w) if w.dirty => {
                    w.dirty = false;
                    (h.path.clone(), h.target.clone(), Bytes::from(w.data.clone()))
                }
                _ => return Ok(()),
            }
        };
        let result = {
            let _slot = self.permit().await;
            self.client
                .call_ok_with_headers(Method::POST, &fs_route("write", &target), Some((data, "application/json")))
                .await
        };
        match result {
            Ok(answer) => {
                self.control.ok("WRITE", &target, &answer);
                self.cache.invalidate(&target);
                self.cache.invalidate(&path);
                self.cache.forget_listings();
                let response = answer.body;
                let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
                if last.len() >= MAX_LAST_RESPONSES && !last.contains_key(&target) {
                    let evict = last.keys().next().cloned();
                    if let Some(k) = evict {
                        last.remove(&k);
                    }
                }
                last.insert(target, response);
                Ok(())
            }
            Err(e) => self.noted("WRITE", &target, Err(e.into())),
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
        let answer = {
            let _slot = self.permit().await;
            self.client.call_ok_with_headers(Method::POST, &fs_route("delete", &path), None).await
        };
        let answer = self.noted("DELETE", &path, answer.map_err(FsError::from))?;
        self.control.ok("DELETE", &path, &answer);
        self.cache.invalidate(&path);
        self.cache.forget_listings();
        self.last.lock().unwrap_or_else(|p| p.into_inner()).remove(&path);
        Ok(())
    }

    /// A directory's listing: from the cache within the TTL, else one request. The root's
    /// is never cached: services come and go with `nkmc register`, which is no write
    /// through this mount, and `ls` right after it must show the new one (gatewayd answers
    /// it without any upstream request).
    async fn listing(&self, path: &str) -> Result<Arc<Listing>, FsError> {
        let cacheable = path != "/";
        if let Some(l) = self.cache.listing(path).filter(|_| cacheable) {
            return Ok(l);
        }
        let listing = {
            let _slot = self.permit().await;
            self.client.get_json::<Listing>(&fs_route("list", path)).await
        };
        let listing = Arc::new(self.noted("LIST", path, listing.map_err(FsError::from))?);
        if cacheable {
            self.cache.put_listing(path, listing.clone());
        }
        Ok(listing)
    }

    /// `opendir`: takes the listing once (cached for the TTL); `readdir` pages through it.
    pub async fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        let node = self.path_of(ino)?;
        if node.kind != EntryKind::Dir {
            return Err(FsError::NotADirectory);
        }
        let fixed = |ino, kind, name: &str| DirEntry { ino, kind, name: name.into(), listed: None };
        let mut entries = vec![fixed(ino, EntryKind::Dir, "."), fixed(ino, EntryKind::Dir, "..")];
        if ino == control::DIR_INO {
            entries.push(fixed(control::LAST_INO, EntryKind::File, "last"));
            entries.push(fixed(control::LAST_ERROR_INO, EntryKind::File, "last_error"));
            let fh = self.handle();
            self.dirs.lock().unwrap_or_else(|p| p.into_inner()).insert(fh, entries);
            return Ok(fh);
        }
        if ino == ROOT {
            entries.push(fixed(control::DIR_INO, EntryKind::Dir, control::DIR_NAME));
        }
        let listing = self.listing(&node.path).await?;
        for e in &listing.entries {
            let Ok(name) = Name::parse(&e.name) else {
                continue;
            };
            let path = child_path(&node.path, &name);
            let listed = Listed { path: path.clone(), mode: e.mode, size: e.size };
            entries.push(DirEntry {
                ino: listing_ino(&path),
                kind: e.kind,
                name: e.name.clone(),
                listed: Some(listed),
            });
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

    /// `readdirplus`: the kernel takes each listed entry as looked up, so it is entered in
    /// the inode table (one reference) and needs no `lookup` of its own. Returns the table
    /// number and node for each listed entry; [`Fs::unplus`] gives back a reference the
    /// kernel did not take (an entry that did not fit its buffer).
    pub fn plus(&self, e: &DirEntry) -> Option<(u64, Inode)> {
        let listed = e.listed.as_ref()?;
        Some(self.inodes().remember(listed.path.clone(), e.kind, listed.mode, listed.size))
    }

    /// Gives back a reference [`Fs::plus`] took for an entry the kernel did not receive.
    pub fn unplus(&self, ino: u64) {
        self.inodes().forget(ino, 1);
    }

    /// `releasedir`: drops the listing.
    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().unwrap_or_else(|p| p.into_inner()).remove(&fh);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_item_belongs_to_its_collection() {
        assert_eq!(collection_of("/svc/pets.d/new"), Some("/svc/pets"));
        assert_eq!(collection_of("/svc/a.d/b.d/c"), Some("/svc/a.d/b"));
        assert_eq!(collection_of("/svc/pets/new"), None);
        assert_eq!(collection_of("/.d/x"), None);
        assert_eq!(collection_of("/svc/.d/x"), None);
    }
}
