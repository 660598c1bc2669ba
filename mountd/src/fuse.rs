//! The thin adapter between the kernel (fuser) and [`crate::fs::Fs`]: each callback is
//! handed to the async runtime and answered from there, so slow upstreams never block
//! the FUSE worker threads.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use agentfs::wire::EntryKind;
use fuser::{
    BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, Notifier, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use crate::fs::{Access, Fs, FsError, Inode};

/// How long the kernel may trust a name → inode answer.
const ENTRY_TTL: Duration = Duration::from_secs(1);
/// The most the kernel may trust names and attributes answered from a cached listing.
const MAX_LISTED_TTL: Duration = Duration::from_secs(60);
/// How long the kernel may trust attributes without asking (`stat`, `ls -l`, and reads that
/// reach the end of a file ask nothing within it). A size that changes is always learnt on
/// an open, and that open tells the kernel to drop the attributes it holds before it
/// answers; a write through the mount sets the size the kernel believes itself.
const ATTR_TTL: Duration = Duration::from_secs(1);

/// Files of at least this size tell programs to read them in pieces this large (`st_blksize`):
/// the most one FUSE request carries (256 pages, the kernel's default `max_pages_limit`).
const LARGE_FILE: u64 = 1024 * 1024;

/// The fuser file system.
pub struct NkmcFuse {
    fs: Arc<Fs>,
    rt: Handle,
    attrs: AttrMaker,
    notifier: Arc<OnceLock<Notifier>>,
    /// How long the kernel may trust names and attributes answered from a cached listing:
    /// the cache TTL (mountd would answer the same from the listing meanwhile), at least
    /// [`ENTRY_TTL`], at most [`MAX_LISTED_TTL`].
    listed_ttl: Duration,
}

impl NkmcFuse {
    /// Serves `fs`, running async work on `rt`; files belong to `uid`:`gid`. `notifier` is
    /// set once the session runs, to tell the kernel when attributes it caches go stale.
    /// Names from a listing cached for `cache_ttl` are trusted as long (within bounds).
    pub fn new(
        fs: Arc<Fs>,
        rt: Handle,
        uid: u32,
        gid: u32,
        notifier: Arc<OnceLock<Notifier>>,
        cache_ttl: Duration,
    ) -> Self {
        let listed_ttl = cache_ttl.clamp(ENTRY_TTL, MAX_LISTED_TTL);
        NkmcFuse { fs, rt, attrs: AttrMaker { uid, gid, started: SystemTime::now() }, notifier, listed_ttl }
    }
}

/// Builds kernel attributes from what the table knows.
#[derive(Clone, Copy)]
struct AttrMaker {
    uid: u32,
    gid: u32,
    started: SystemTime,
}

impl AttrMaker {
    fn make(&self, ino: u64, node: &Inode) -> FileAttr {
        let (kind, nlink) = match node.kind {
            EntryKind::Dir => (FileType::Directory, 2),
            EntryKind::File => (FileType::RegularFile, 1),
        };
        let size = node.size.unwrap_or(0);
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            crtime: self.started,
            kind,
            perm: (node.mode & 0o7777) as u16,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            flags: 0,
            // Programs size their reads by it (`cat`: at least 128 KiB); a large file is
            // read in the largest pieces FUSE carries.
            blksize: if size >= LARGE_FILE { LARGE_FILE as u32 } else { 4096 },
        }
    }
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

/// Answers an open; first, when the size differs from the one told before, drops the
/// attributes the kernel holds: a listing (READDIRPLUS) told it a size it caches for the
/// entry TTL. Only the attributes (offset -1), not the pages, so the next read asks for the
/// real size. No direct I/O (but for a large body read while it arrives): the kernel asks
/// the size again when a read passes what it knew, and keeps its pages only while the body
/// is the one it saw.
///
/// A reader's close has nothing to send, so readers get `FOPEN_NOFLUSH`: no FLUSH round trip.
fn reply_opened(
    notifier: &OnceLock<Notifier>,
    ino: INodeNo,
    opened: crate::fs::Opened,
    access: Access,
    reply: ReplyOpen,
) {
    if opened.size_changed {
        if let Some(n) = notifier.get() {
            if let Err(e) = n.inval_inode(ino, -1, 0) {
                tracing::debug!(ino = ino.0, error = %e, "attribute invalidation");
            }
        }
    }
    // A small body the kernel does not hold: stored in its page cache now (overwriting
    // whatever pages an older body left; never a body shorter than the size the kernel
    // believes, see `preload_of`), and kept by the open, so the reads that follow are
    // answered by the kernel alone.
    let stored = match (&opened.preload, notifier.get()) {
        (Some(body), Some(n)) => match n.store(ino, 0, body) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(ino = ino.0, error = %e, "page cache store");
                false
            }
        },
        _ => false,
    };
    let mut flags = if opened.keep_cache || stored { FopenFlags::FOPEN_KEEP_CACHE } else { FopenFlags::empty() };
    if access == Access::Read {
        flags |= FopenFlags::FOPEN_NOFLUSH;
    }
    if opened.direct_io {
        flags |= FopenFlags::FOPEN_DIRECT_IO;
    }
    reply.opened(FileHandle(opened.fh), flags)
}

/// Starts fetching, in the background, the files a sequential reader of `ino`'s directory
/// will open next ([`Fs::prefetch_plan`]).
fn prefetch_after(fs: &Arc<Fs>, rt: &Handle, ino: INodeNo, access: Access) {
    if access != Access::Read {
        return;
    }
    let plan = fs.prefetch_plan(ino.0);
    if !plan.is_empty() {
        rt.spawn(fs.clone().prefetch(plan));
    }
}

/// Answers an opendir: the kernel may cache the entries of a cached listing
/// (`FOPEN_CACHE_DIR`) and keep them while the listing is the same (`FOPEN_KEEP_CACHE`),
/// serving `readdir` without asking.
fn reply_opened_dir(dir: crate::fs::OpenedDir, reply: ReplyOpen) {
    let mut flags = FopenFlags::empty();
    if dir.cache_dir {
        flags |= FopenFlags::FOPEN_CACHE_DIR;
    }
    if dir.keep_cache {
        flags |= FopenFlags::FOPEN_KEEP_CACHE;
    }
    reply.opened(FileHandle(dir.fh), flags)
}

fn file_type(kind: EntryKind) -> FileType {
    match kind {
        EntryKind::Dir => FileType::Directory,
        EntryKind::File => FileType::RegularFile,
    }
}

impl Filesystem for NkmcFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // READDIRPLUS: a listing carries each entry's attributes, so `ls -l` needs no
        // lookup per entry; AUTO lets the kernel use it only where entries are then looked
        // at (plain `ls` does not pay for 10,000 inodes). A kernel without it keeps READDIR.
        let plus = InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO;
        if let Err(missing) = config.add_capabilities(plus) {
            tracing::info!(?missing, "the kernel has no READDIRPLUS; listings use READDIR");
        }
        // A body read while it arrives is opened with direct I/O; shared maps of it still
        // work where the kernel allows it (6.6 and later).
        let _ = config.add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if let Some((ino, node)) = self.fs.lookup_cached(parent.0, name) {
            let ttl = self.listed_ttl;
            return reply.entry_with_ttls(&ttl, &ttl, &self.attrs.make(ino, &node), Generation(0));
        }
        let fs = self.fs.clone();
        let name = name.to_owned();
        let attrs = self.attrs;
        self.rt.spawn(async move {
            match fs.lookup(parent.0, &name).await {
                Ok((ino, node)) => reply.entry_with_ttls(&ATTR_TTL, &ENTRY_TTL, &attrs.make(ino, &node), Generation(0)),
                Err(e) => {
                    tracing::debug!(name = ?name, error = %e, "lookup");
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0, fh.map(|h| h.0)) {
            Ok(node) => reply.attr(&ATTR_TTL, &self.attrs.make(ino.0, &node)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let access = match flags.0 & libc::O_ACCMODE {
            libc::O_RDONLY => Access::Read,
            libc::O_RDWR if flags.0 & libc::O_TRUNC == 0 => Access::ReadWrite,
            _ => Access::Write,
        };
        let direct = flags.0 & libc::O_DIRECT != 0;
        let notifier = self.notifier.clone();
        // A fresh cached body: answered at once, no trip through the runtime.
        if let Some(opened) = self.fs.open_cached(ino.0, access, direct) {
            reply_opened(&notifier, ino, opened, access, reply);
            return prefetch_after(&self.fs, &self.rt, ino, access);
        }
        let fs = self.fs.clone();
        let rt = self.rt.clone();
        self.rt.spawn(async move {
            // A large body is answered as soon as it starts to arrive (reads then wait only
            // for their own bytes); the open's result is then only the end of its stream.
            let mut reply = Some(reply);
            let mut early = |opened: crate::fs::Opened| {
                if let Some(reply) = reply.take() {
                    reply_opened(&notifier, ino, opened, access, reply);
                }
            };
            let result = fs.open(ino.0, access, direct, Some(&mut early)).await;
            match (result, reply.take()) {
                (Ok(opened), Some(reply)) => {
                    reply_opened(&notifier, ino, opened, access, reply);
                    prefetch_after(&fs, &rt, ino, access);
                }
                (Err(e), Some(reply)) => {
                    tracing::debug!(ino = ino.0, error = %e, "open");
                    reply.error(errno(&e))
                }
                (Ok(_), None) => {}
                (Err(e), None) => tracing::debug!(ino = ino.0, error = %e, "a body being read broke off"),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut reply = Some(reply);
        let read = self.fs.read_with(fh.0, offset, size, |bytes| reply.take().map(|r| r.data(bytes)));
        let Some(reply) = reply else { return };
        match read {
            // Answered above.
            Ok(_) => {}
            // A body still arriving: wait for these bytes off the FUSE thread.
            Err(FsError::Spilled(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let fs = self.fs.clone();
                self.rt.spawn(async move {
                    fs.wait_readable(fh.0, offset, size).await;
                    let mut reply = Some(reply);
                    let read = fs.read_with(fh.0, offset, size, |bytes| reply.take().map(|r| r.data(bytes)));
                    if let (Err(e), Some(reply)) = (read, reply) {
                        reply.error(errno(&e));
                    }
                });
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.fs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // A reader's close (most of them) has nothing to send: answered at once.
        if !self.fs.has_unsent(fh.0) {
            return reply.ok();
        }
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.flush(fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => {
                    tracing::debug!(ino = ino.0, error = %e, "flush");
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn fsync(&self, req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.flush(req, ino, fh, LockOwner(0), reply);
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // Modes and owners come from the API and the token, not from chmod/chown.
        if mode.is_some() || uid.is_some() || gid.is_some() {
            return reply.error(errno(&FsError::NotPermitted));
        }
        let result = match size {
            Some(size) => self.fs.truncate(ino.0, fh.map(|h| h.0), size),
            // touch: times are not kept; answer with the attributes as they are.
            None => self.fs.getattr(ino.0, fh.map(|h| h.0)),
        };
        match result {
            Ok(node) => reply.attr(&ATTR_TTL, &self.attrs.make(ino.0, &node)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let fs = self.fs.clone();
        let name = name.to_owned();
        self.rt.spawn(async move {
            match fs.unlink(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => {
                    tracing::debug!(name = ?name, error = %e, "unlink");
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn mkdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, _mode: u32, _umask: u32, reply: ReplyEntry) {
        reply.error(errno(&FsError::NotPermitted));
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(errno(&FsError::NotPermitted));
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let fs = self.fs.clone();
        let name = name.to_owned();
        let attrs = self.attrs;
        self.rt.spawn(async move {
            match fs.create(parent.0, &name).await {
                Ok((ino, node, opened)) => reply.created(
                    &ENTRY_TTL,
                    &attrs.make(ino, &node),
                    Generation(0),
                    FileHandle(opened.fh),
                    FopenFlags::empty(),
                ),
                Err(e) => {
                    tracing::debug!(name = ?name, error = %e, "create");
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(errno(&FsError::NotPermitted));
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(errno(&FsError::NotPermitted));
    }

    fn symlink(&self, _req: &Request, _parent: INodeNo, _link_name: &OsStr, _target: &Path, reply: ReplyEntry) {
        reply.error(errno(&FsError::NotPermitted));
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _newparent: INodeNo, _newname: &OsStr, reply: ReplyEntry) {
        reply.error(errno(&FsError::NotPermitted));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // A cached listing: answered at once, no trip through the runtime.
        if let Some(dir) = self.fs.opendir_cached(ino.0) {
            return reply_opened_dir(dir, reply);
        }
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.opendir(ino.0).await {
                Ok(dir) => reply_opened_dir(dir, reply),
                Err(e) => {
                    tracing::debug!(ino = ino.0, error = %e, "opendir");
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let listed =
            self.fs.readdir(fh.0, offset, |next, e| reply.add(INodeNo(e.ino), next, file_type(e.kind), &e.name));
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(&self, _req: &Request, dir: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        // The root's listing is never cached (services come and go): its names for 1 s.
        let listed_ttl = if dir.0 == crate::fs::ROOT { ENTRY_TTL } else { self.listed_ttl };
        let listed = self.fs.readdir(fh.0, offset, |next, e| {
            // A listed entry enters the inode table (the kernel counts it as a lookup) and is
            // trusted for the entry TTL (an open that learns another size invalidates it).
            // `.`, `..` and the control entries are the nodes themselves, whose sizes change:
            // not cached at all.
            let (ino, node, taken, ttl) = match self.fs.plus(&e) {
                Some((ino, node)) => (ino, node, true, listed_ttl),
                None => match self.fs.getattr(e.ino, None) {
                    Ok(node) => (e.ino, node, false, Duration::ZERO),
                    Err(_) => return false,
                },
            };
            let attr = self.attrs.make(ino, &node);
            let full = reply.add(INodeNo(ino), next, &e.name, &ttl, &attr, Generation(0));
            if full && taken {
                self.fs.unplus(ino);
            }
            full
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, 4096, agentfs::path::NAME_MAX as u32, 4096);
    }
}
