//! The file system as plain async logic, testable without a kernel: every decision
//! lives here; [`crate::fuse`] only translates.

mod batch;
pub mod body;
pub mod cache;
pub mod control;
pub mod error;
pub mod inode;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use agentfs::client::{fs_route, GatewayClient};
use agentfs::path::{Name, PathError};
use agentfs::wire::{Entry, EntryKind, Listing};
use bytes::Bytes;
use hyper::header::{IF_MODIFIED_SINCE, IF_NONE_MATCH};
use hyper::{Method, StatusCode};
use tokio::sync::{watch, Semaphore, SemaphorePermit};

use body::{Collector, Content, Growing};
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

/// An open directory: its fixed entries (`.`, `..`, the control entries), then its listing's.
#[derive(Debug)]
struct DirHandle {
    fixed: Vec<DirEntry>,
    path: String,
    listing: Option<Arc<Listing>>,
}

#[derive(Debug, Default)]
struct WriteBuffer {
    data: Vec<u8>,
    dirty: bool,
}

/// An open file: its handle, and whether the kernel may keep the pages it has of it.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The handle.
    pub fh: u64,
    /// The body is the one the kernel last saw: `FOPEN_KEEP_CACHE`.
    pub keep_cache: bool,
    /// The size differs from the one told before (a listing may have told the kernel
    /// another, which it caches): the kernel must drop the attributes it holds.
    pub size_changed: bool,
    /// A small body the kernel does not hold yet, whole, for a reader: stored in the
    /// kernel's page cache before the open is answered (then with `FOPEN_KEEP_CACHE`), so
    /// the reads that follow need no round trip to mountd.
    pub preload: Option<Bytes>,
    /// A large body served while it arrives: the kernel passes each read to mountd as the
    /// reader asked it (`FOPEN_DIRECT_IO`), without its page cache in between.
    pub direct_io: bool,
}

/// Largest body pushed into the kernel's page cache on open ([`Opened::preload`]): the
/// kernel's first read of a file asks for about this much anyway (its readahead window).
pub const PRELOAD_MAX: u64 = 128 * 1024;

/// The body to push into the kernel's page cache for a reader's open (not `O_DIRECT`):
/// small, whole, in memory, not already held by the kernel, and at least as long as the
/// size the kernel was last told (`told`). A shorter body is not pushed: the kernel would
/// serve a read that stays within the old size from the old pages past the new end; the
/// read that asks mountd learns the new end instead. Nor while another handle of the file
/// is open (`shared`): the page cache is the file's, not the handle's, and a reader still
/// holding the older body would read pages of two versions.
fn preload_of(body: &Content, keep_cache: bool, told: Option<u64>, shared: bool) -> Option<Bytes> {
    match body {
        Content::Memory(b)
            if !keep_cache
                && !shared
                && !b.is_empty()
                && b.len() as u64 <= PRELOAD_MAX
                && told.is_some_and(|t| t <= b.len() as u64) =>
        {
            Some(b.clone())
        }
        _ => None,
    }
}

/// An open directory: its handle, and what the kernel may do with the entries it reads.
#[derive(Debug, Clone, Copy)]
pub struct OpenedDir {
    /// The handle.
    pub fh: u64,
    /// The listing comes from mountd's cache (not the root, not `--no-cache`): the kernel may
    /// cache the entries it reads (`FOPEN_CACHE_DIR`).
    pub cache_dir: bool,
    /// The listing is the one the kernel last read of this directory: it may serve
    /// `readdir` from its own cache without asking (`FOPEN_KEEP_CACHE`).
    pub keep_cache: bool,
}

/// How many files ahead of a sequential reader (`grep -r`) prefetch fetches.
const PREFETCH_WINDOW: usize = 64;

/// Where sequential opens in one directory are, and how far prefetch has gone.
#[derive(Debug)]
struct Sequence {
    /// The listing index of the file opened last.
    last: Option<usize>,
    /// Entries before this index have been prefetched (or were being read anyway).
    upto: usize,
}

/// Told a body as soon as it starts to arrive (a large body of announced length, served while
/// it streams in), before the fetch ends.
pub type OnArrival<'a> = &'a mut (dyn FnMut(Content) + Send);

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

/// Largest read buffer kept between reads ([`Fs::read_with`]): one FUSE read.
const READ_BUFFER_KEPT: usize = 1024 * 1024;

/// Most read buffers kept between reads.
const READ_BUFFERS_KEPT: usize = 4;

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
    dirs: Mutex<HashMap<u64, DirHandle>>,
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
    /// Sequential readers per directory path, for prefetch.
    sequences: Mutex<HashMap<String, Sequence>>,
    /// Bodies being prefetched: an open of one waits for it instead of asking again.
    pending: Mutex<HashMap<String, watch::Receiver<bool>>>,
    /// The listing each directory's kernel cache holds (`FOPEN_CACHE_DIR`); weak, so an
    /// expired listing's entries are freed (its address stays taken, so it is never
    /// mistaken for a new one).
    kernel_dirs: Mutex<HashMap<u64, Weak<Listing>>>,
    /// Buffers for reads from temporary files, reused ([`Fs::read_with`]).
    read_buffers: Mutex<Vec<Vec<u8>>>,
    /// Until when prefetch asks one by one instead of in read batches: gatewayd answered that
    /// it has no `POST /v1/fs/read-batch`, or a batch's answer broke the protocol
    /// ([`batch`]); by the cache's clock.
    batch_off: Mutex<Option<std::time::Instant>>,
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
            sequences: Mutex::default(),
            pending: Mutex::default(),
            kernel_dirs: Mutex::default(),
            read_buffers: Mutex::default(),
            batch_off: Mutex::new(None),
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
        let size = entry.size.or_else(|| self.cache.fresh_len(&path));
        Ok(self.inodes().remember(path, entry.kind, entry.mode, size))
    }

    /// Records the size a reader's open learnt: returns the size the kernel was told before
    /// ([`Inodes::told`]) and the one the table knew.
    fn tell_size(&self, ino: u64, size: u64) -> (Option<u64>, Option<u64>) {
        let mut inodes = self.inodes();
        let told = inodes.told(ino);
        (told, inodes.set_size(ino, size))
    }

    /// `forget`: the kernel dropped references.
    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes().forget(ino, n);
    }

    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<u64, FileHandle>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether any handle of `ino` is open.
    fn is_open(&self, ino: u64) -> bool {
        self.files().values().any(|h| h.ino == ino)
    }

    /// `getattr`: from the table, no request; an open handle knows the real size.
    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<Inode, FsError> {
        let mut node = self.path_of(ino)?;
        let handle = fh.and_then(|fh| self.files().get(&fh).map(|h| (h.size(), h.write.is_some())));
        if let Some((size, writer)) = handle {
            // A writer's size is what the kernel is told now; the table's no longer matches
            // what the kernel believes, so the next read tells it the size again. A reader's
            // older body is told too: no body is pushed into the page cache until a read or
            // lookup tells the table's size again.
            if writer && node.size != Some(size) {
                self.inodes().unset_size(ino);
            } else if node.size != Some(size) {
                self.inodes().doubt_size(ino);
            }
            node.size = Some(size);
        }
        Ok(node)
    }

    /// GETs a file's body through gatewayd, streamed into memory or a temporary file;
    /// with `stale` validators, a conditional GET that may answer [`Fetched::NotModified`].
    /// `record`: the answer goes to `.nkmc/last` (not for prefetch, which no caller asked for).
    /// `arriving`: a body announced larger than `--spill-bytes` is handed to it as soon as its
    /// first bytes are in, and then streams into its temporary file while readers read.
    async fn fetch(
        &self,
        path: &str,
        stale: Option<&Validators>,
        record: bool,
        arriving: Option<OnArrival<'_>>,
    ) -> Result<Fetched, FsError> {
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
            if record {
                self.control.ok_parts("READ", path, &headers, b"(not modified: the cached body is current)");
            }
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
        let large = expected.filter(|len| *len > self.limits.spill_bytes as u64);
        if let (Some(len), Some(arriving)) = (large, arriving) {
            let growing = Growing::new(len)?;
            let content = Content::Growing(growing.clone());
            let mut at = 0u64;
            let mut record_first = record;
            loop {
                let chunk = match answer.chunk().await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break,
                    Err(e) => {
                        growing.fail();
                        return Err(e.into());
                    }
                };
                let n = chunk.len() as u64;
                growing.append(at, &chunk).map_err(FsError::Spilled)?;
                at += n;
                if record_first {
                    record_first = false;
                    let start = &chunk[..chunk.len().min(control::MAX_BODY)];
                    self.control.ok_parts("READ", path, &answer.headers, start);
                    arriving(content.clone());
                }
            }
            if !growing.end() {
                return Err(FsError::Spilled(std::io::Error::other(format!(
                    "the body ended after {at} of its announced {len} bytes"
                ))));
            }
            if record_first {
                arriving(content.clone());
            }
            return Ok(Fetched::Body { content, validators });
        }
        let mut collector = Collector::with_expected(self.limits.spill_bytes, expected)?;
        while let Some(chunk) = answer.chunk().await? {
            collector.push(&chunk)?;
        }
        let content = collector.finish();
        if record {
            let start = content.read_at(0, control::MAX_BODY).map_err(FsError::Spilled)?;
            self.control.ok_parts("READ", path, &answer.headers, &start);
        }
        Ok(Fetched::Body { content, validators })
    }

    /// The body a reader gets: from the cache while fresh, revalidated when stale with a
    /// validator, else fetched. Returns it and whether the kernel may keep its pages.
    async fn body_for_reading(
        &self,
        path: &str,
        direct: bool,
        arriving: Option<OnArrival<'_>>,
    ) -> Result<(Content, bool), FsError> {
        if !direct {
            self.prefetched(path).await;
        }
        let lookup = if direct { Lookup::Missing } else { self.cache.lookup(path) };
        let stale = match lookup {
            Lookup::Fresh(served) => return Ok((served.body, served.keep_kernel_cache)),
            Lookup::Stale(v) => Some(v),
            Lookup::Missing => None,
        };
        let ticket = self.cache.ticket();
        match self.fetch(path, stale.as_ref(), true, arriving).await? {
            Fetched::NotModified => match self.cache.revalidated(path) {
                Some(served) => Ok((served.body, served.keep_kernel_cache)),
                // Evicted (or changed) meanwhile: ask again without validators.
                None => {
                    let ticket = self.cache.ticket();
                    match self.fetch(path, None, true, None).await? {
                        Fetched::Body { content, validators } => {
                            Ok((self.cache.put(path, content, validators, ticket).body, false))
                        }
                        Fetched::NotModified => Err(FsError::NoData),
                    }
                }
            },
            Fetched::Body { content, validators } => {
                Ok((self.cache.put(path, content, validators, ticket).body, false))
            }
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
        let (told, before) = self.tell_size(ino, size);
        let fh = self.handle();
        let preload = preload_of(&served.body, served.keep_kernel_cache, told, self.is_open(ino));
        let size_changed = before != Some(size);
        let handle = FileHandle { ino, target: node.path.clone(), path: node.path, body: served.body, write: None };
        self.files().insert(fh, handle);
        Some(Opened { fh, keep_cache: served.keep_kernel_cache, size_changed, preload, direct_io: false })
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
        let path = child_path(&dir.path, &name);
        let size = e.size.or_else(|| self.cache.fresh_len(&path));
        Some(self.inodes().remember(path, e.kind, e.mode, size))
    }

    /// `open`: readers fetch the body now, so no file ever reads as empty; a file with no
    /// GET reads as the last response to this mount's write to it.
    ///
    /// A reader of a large body of announced length is opened as soon as the body starts
    /// to arrive: `opened_early` is then told the open (the handle reads while the rest
    /// streams in), and the returned result is only the end of the stream.
    pub async fn open(
        &self,
        ino: u64,
        access: Access,
        direct: bool,
        mut opened_early: Option<&mut (dyn FnMut(Opened) + Send)>,
    ) -> Result<Opened, FsError> {
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
            return Ok(Opened { fh, keep_cache: false, size_changed: false, preload: None, direct_io: false });
        }
        let mut keep_cache = false;
        let body = match access {
            // A new item in a collection starts empty and has nothing to read.
            Access::Write => Content::default(),
            Access::ReadWrite if target != node.path => Content::default(),
            Access::Read | Access::ReadWrite => {
                let direct = direct || access == Access::ReadWrite;
                let stream = access == Access::Read && opened_early.is_some();
                let mut early: Option<Opened> = None;
                let mut on_arrival = |content: Content| {
                    let size_changed = self.inodes().set_size(ino, content.len()) != Some(content.len());
                    let fh = self.handle();
                    let (path, target) = (node.path.clone(), target.clone());
                    self.files().insert(fh, FileHandle { ino, path, target, body: content, write: None });
                    let opened = Opened { fh, keep_cache: false, size_changed, preload: None, direct_io: true };
                    early = Some(opened.clone());
                    if let Some(tell) = opened_early.as_deref_mut() {
                        tell(opened);
                    }
                };
                let arriving: Option<OnArrival<'_>> = if stream { Some(&mut on_arrival) } else { None };
                let result = self.body_for_reading(&node.path, direct, arriving).await;
                if let Some(opened) = early {
                    // Already answered; the stream's end is all that is left to tell.
                    return self.noted("READ", &node.path, result.map(|_| opened));
                }
                match result {
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
        let mut preload = None;
        if access == Access::Read {
            let (told, before) = self.tell_size(ino, body.len());
            size_changed = before != Some(body.len());
            if !direct {
                preload = preload_of(&body, keep_cache, told, self.is_open(ino));
            }
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
        Ok(Opened { fh, keep_cache, size_changed, preload, direct_io: false })
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
        Ok((ino, node, Opened { fh, keep_cache: false, size_changed: false, preload: None, direct_io: false }))
    }

    /// `read`: hands `f` a slice of the handle's body (or of what was written to it). Bytes
    /// read from a temporary file go through a buffer taken from a small pool and given back
    /// ([`READ_BUFFERS_KEPT`] of at most [`READ_BUFFER_KEPT`] bytes), so a read allocates
    /// nothing and only as many buffers exist as reads run at once.
    pub fn read_with<R>(&self, fh: u64, offset: u64, size: u32, f: impl FnOnce(&[u8]) -> R) -> Result<R, FsError> {
        let files = self.files();
        let h = files.get(&fh).ok_or(FsError::Stale)?;
        let body = match &h.write {
            Some(w) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(w.data.len());
                let end = start.saturating_add(size as usize).min(w.data.len());
                return Ok(f(&w.data[start..end]));
            }
            None => h.body.clone(),
        };
        drop(files);
        if let Content::Memory(_) = body {
            return body.read_with(offset, size as usize, &mut Vec::new(), f).map_err(FsError::Spilled);
        }
        let mut buffer = self.read_buffers().pop().unwrap_or_default();
        let result = body.read_with(offset, size as usize, &mut buffer, f).map_err(FsError::Spilled);
        if buffer.len() <= READ_BUFFER_KEPT {
            let mut pool = self.read_buffers();
            if pool.len() < READ_BUFFERS_KEPT {
                pool.push(buffer);
            }
        }
        result
    }

    fn read_buffers(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.read_buffers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until a read of the handle's body at `offset` can be answered (a body still
    /// arriving); at once otherwise.
    pub async fn wait_readable(&self, fh: u64, offset: u64, size: u32) {
        let body = self.files().get(&fh).map(|h| h.body.clone());
        if let Some(body) = body {
            body.wait(offset, size as usize).await;
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
        let (ino, path, target, data) = {
            let mut files = self.files();
            let h = files.get_mut(&fh).ok_or(FsError::Stale)?;
            match h.write.as_mut() {
                Some(w) if w.dirty => {
                    w.dirty = false;
                    (h.ino, h.path.clone(), h.target.clone(), Bytes::from(w.data.clone()))
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
                // The kernel took the written length as the size; the next read tells the
                // real one.
                self.inodes().unset_size(ino);
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
        let ticket = self.cache.ticket();
        let listing = {
            let _slot = self.permit().await;
            self.client.get_json::<Listing>(&fs_route("list", path)).await
        };
        let listing = Arc::new(self.noted("LIST", path, listing.map_err(FsError::from))?);
        if cacheable {
            self.cache.put_listing(path, listing.clone(), ticket);
        }
        Ok(listing)
    }

    /// `opendir`: takes the listing once (cached for the TTL); `readdir` pages through it.
    pub async fn opendir(&self, ino: u64) -> Result<OpenedDir, FsError> {
        let node = self.path_of(ino)?;
        if node.kind != EntryKind::Dir {
            return Err(FsError::NotADirectory);
        }
        let listing = match ino {
            control::DIR_INO => None,
            _ => Some(self.listing(&node.path).await?),
        };
        Ok(self.open_dir_with(ino, node.path, listing))
    }

    /// `opendir` without waiting, when it needs no request: a directory whose listing is
    /// cached (the root's never is). `None`: take [`Fs::opendir`].
    pub fn opendir_cached(&self, ino: u64) -> Option<OpenedDir> {
        if ino == ROOT || ino == control::DIR_INO {
            return None;
        }
        let node = self.path_of(ino).ok().filter(|n| n.kind == EntryKind::Dir)?;
        let listing = self.cache.listing(&node.path)?;
        Some(self.open_dir_with(ino, node.path, Some(listing)))
    }

    fn open_dir_with(&self, ino: u64, path: String, listing: Option<Arc<Listing>>) -> OpenedDir {
        let fixed = |ino, kind, name: &str| DirEntry { ino, kind, name: name.into(), listed: None };
        let mut entries = vec![fixed(ino, EntryKind::Dir, "."), fixed(ino, EntryKind::Dir, "..")];
        if ino == control::DIR_INO {
            entries.push(fixed(control::LAST_INO, EntryKind::File, "last"));
            entries.push(fixed(control::LAST_ERROR_INO, EntryKind::File, "last_error"));
        }
        if ino == ROOT {
            entries.push(fixed(control::DIR_INO, EntryKind::Dir, control::DIR_NAME));
        }
        // The kernel may keep what it read of this directory while the listing is the same
        // cached one (the root's is never cached: services come and go).
        let cache_dir = ino != ROOT && listing.is_some() && self.cache.enabled();
        let mut keep_cache = false;
        if let Some(listing) = listing.as_ref().filter(|_| cache_dir) {
            let mut kernel = self.kernel_dirs.lock().unwrap_or_else(|p| p.into_inner());
            let now = Arc::downgrade(listing);
            keep_cache = kernel.get(&ino).is_some_and(|held| Weak::ptr_eq(held, &now));
            if kernel.len() > 4096 && !kernel.contains_key(&ino) {
                kernel.retain(|_, held| held.strong_count() > 0);
            }
            kernel.insert(ino, now);
        }
        let fh = self.handle();
        self.dirs.lock().unwrap_or_else(|p| p.into_inner()).insert(fh, DirHandle { fixed: entries, path, listing });
        OpenedDir { fh, cache_dir, keep_cache }
    }

    /// `readdir`: the entries from `offset` on, each with the offset of the one after it,
    /// handed to `add` until it answers that the kernel's buffer is full.
    pub fn readdir(&self, fh: u64, offset: u64, mut add: impl FnMut(u64, DirEntry) -> bool) -> Result<(), FsError> {
        let (fixed, path, listing) = {
            let dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
            let d = dirs.get(&fh).ok_or(FsError::Stale)?;
            (d.fixed.clone(), d.path.clone(), d.listing.clone())
        };
        let from = usize::try_from(offset).unwrap_or(usize::MAX);
        let n_fixed = fixed.len();
        for (i, e) in fixed.into_iter().enumerate().skip(from) {
            if add(i as u64 + 1, e) {
                return Ok(());
            }
        }
        let listed = listing.as_ref().map(|l| l.entries.as_slice()).unwrap_or_default();
        // Index arithmetic, not an iterator's skip: only the entries handed out are built.
        for (j, e) in listed.iter().enumerate().skip(from.saturating_sub(n_fixed)) {
            // A name the path rules refuse is not shown (its offset stays taken).
            let Ok(name) = Name::parse(&e.name) else { continue };
            let path = child_path(&path, &name);
            let listed = Listed { path: path.clone(), mode: e.mode, size: e.size };
            let entry = DirEntry { ino: listing_ino(&path), kind: e.kind, name: e.name.clone(), listed: Some(listed) };
            if add((n_fixed + j) as u64 + 1, entry) {
                break;
            }
        }
        Ok(())
    }

    /// After a reader opened file `ino`: when it is the entry after the one opened before in
    /// the same cached listing (a sequential reader such as `grep -r`), the paths of the next
    /// files to fetch ahead of it, up to [`PREFETCH_WINDOW`] past it, each once. Empty
    /// otherwise (and always with `--no-cache`, which would keep nothing).
    pub fn prefetch_plan(&self, ino: u64) -> Vec<String> {
        if !self.cache.enabled() || control::inode(ino, &self.control).is_some() {
            return Vec::new();
        }
        let Some(node) = self.path_of(ino).ok().filter(|n| n.kind == EntryKind::File) else { return Vec::new() };
        let Some((parent, name)) = node.path.rsplit_once('/') else { return Vec::new() };
        let parent = if parent.is_empty() { "/" } else { parent };
        let Some(listing) = self.cache.listing(parent) else { return Vec::new() };
        let Ok(i) = listing.entries.binary_search_by(|e| e.name.as_str().cmp(name)) else { return Vec::new() };
        let (start, end) = {
            let mut sequences = self.sequences.lock().unwrap_or_else(|p| p.into_inner());
            if sequences.len() > 1024 && !sequences.contains_key(parent) {
                sequences.clear();
            }
            let seq = sequences.entry(parent.to_owned()).or_insert(Sequence { last: None, upto: 0 });
            let sequential = seq.last.is_some_and(|last| last + 1 == i);
            seq.last = Some(i);
            let start = seq.upto.max(i + 1);
            let end = listing.entries.len().min(i + 1 + PREFETCH_WINDOW);
            // Ask in batches of half a window, so a reader never waits on one at a time.
            if !sequential || start >= end || (end - start < PREFETCH_WINDOW / 2 && end < listing.entries.len()) {
                return Vec::new();
            }
            seq.upto = end;
            (start, end)
        };
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        listing.entries[start..end]
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .filter_map(|e| Name::parse(&e.name).ok().map(|n| child_path(parent, &n)))
            .filter(|p| !pending.contains_key(p) && self.cache.fresh_len(p).is_none())
            .collect()
    }

    /// How many reads a prefetch runs at once: half of `--max-inflight`, so opens and
    /// listings always find slots.
    pub(super) fn prefetch_width(&self) -> usize {
        (self.limits.max_inflight / 2).max(1)
    }

    /// Fetches `paths` into the cache ahead of their opens, with the mount's own token:
    /// gatewayd refuses what it may not read, exactly as it would refuse the open. They are
    /// asked for in batches (`POST /v1/fs/read-batch`, [`batch`]), each holding a slot of
    /// `--max-inflight` per read gatewayd runs for it (half of `--max-inflight`, at most one
    /// per path, given back as paths end); against a gatewayd without that route (or for a
    /// while after an answer mountd cannot read), one request each, at most half of
    /// `--max-inflight` at a time (each also takes a slot, so the cap holds for the mount). A
    /// failure is dropped (the open that follows asks again and reports it); nothing goes to
    /// `.nkmc/last`. An open of a path in flight waits for it.
    pub async fn prefetch(self: Arc<Self>, paths: Vec<String>) {
        let mut done = Vec::new();
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for path in paths {
                if pending.contains_key(&path) {
                    continue;
                }
                let (tx, rx) = watch::channel(false);
                pending.insert(path.clone(), rx);
                done.push((path, tx));
            }
        }
        let (fresh, mut done): (Vec<_>, Vec<_>) =
            done.into_iter().partition(|(p, _)| self.cache.fresh_len(p).is_some());
        fresh.into_iter().for_each(|w| self.prefetch_done(w));
        if self.batches() {
            done = self.prefetch_batched(done).await;
        }
        if done.is_empty() {
            return;
        }
        let slots = Arc::new(Semaphore::new(self.prefetch_width()));
        let mut tasks = tokio::task::JoinSet::new();
        for (path, tx) in done {
            let fs = self.clone();
            let slots = slots.clone();
            tasks.spawn(async move {
                let _slot = slots.acquire_owned().await;
                if fs.cache.fresh_len(&path).is_none() {
                    let ticket = fs.cache.ticket();
                    match fs.fetch(&path, None, false, None).await {
                        Ok(Fetched::Body { content, validators }) => {
                            fs.cache.put_prefetched(&path, content, validators, ticket)
                        }
                        Ok(Fetched::NotModified) => {}
                        Err(e) => tracing::debug!(path, error = %e, "prefetch"),
                    }
                }
                fs.prefetch_done((path, tx));
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Waits for a prefetch of `path` in flight, if any.
    async fn prefetched(&self, path: &str) {
        let rx = self.pending.lock().unwrap_or_else(|p| p.into_inner()).get(path).cloned();
        if let Some(mut rx) = rx {
            // The sender goes away (the task ended) or says done: either way, go on.
            let _ = rx.wait_for(|done| *done).await;
        }
    }

    /// `readdirplus`: the kernel takes each listed entry as looked up, so it is entered in
    /// the inode table (one reference) and needs no `lookup` of its own. Returns the table
    /// number and node for each listed entry; [`Fs::unplus`] gives back a reference the
    /// kernel did not take (an entry that did not fit its buffer).
    pub fn plus(&self, e: &DirEntry) -> Option<(u64, Inode)> {
        let listed = e.listed.as_ref()?;
        let size = listed.size.or_else(|| self.cache.fresh_len(&listed.path));
        Some(self.inodes().remember(listed.path.clone(), e.kind, listed.mode, size))
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

    #[test]
    fn a_body_is_pushed_into_the_page_cache_only_when_nothing_else_holds_the_file() {
        let body = Content::Memory(Bytes::from_static(b"{\"a\":1}"));
        assert!(preload_of(&body, false, Some(0), false).is_some());
        assert!(preload_of(&body, false, Some(0), true).is_none(), "another handle of the file is open");
        assert!(preload_of(&body, true, Some(0), false).is_none(), "the kernel holds it");
        assert!(preload_of(&body, false, Some(100), false).is_none(), "shorter than the size the kernel was told");
        assert!(preload_of(&body, false, None, false).is_none(), "the kernel may believe another size");
    }
}
