//! The thin adapter between the kernel (fuser) and [`crate::fs::Fs`]: each callback is
//! handed to the async runtime and answered from there, so slow upstreams never block
//! the FUSE worker threads.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentfs::wire::EntryKind;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, Request,
};
use tokio::runtime::Handle;

use crate::fs::{Fs, FsError, Inode};

/// How long the kernel may trust a name → inode answer.
const ENTRY_TTL: Duration = Duration::from_secs(1);
/// Attributes are served from mountd's table without a request, so the kernel need
/// not cache them: sizes learnt on open show at once.
const ATTR_TTL: Duration = Duration::ZERO;

/// The fuser file system.
pub struct NkmcFuse {
    fs: Arc<Fs>,
    rt: Handle,
    attrs: AttrMaker,
}

impl NkmcFuse {
    /// Serves `fs`, running async work on `rt`; files belong to `uid`:`gid`.
    pub fn new(fs: Arc<Fs>, rt: Handle, uid: u32, gid: u32) -> Self {
        NkmcFuse { fs, rt, attrs: AttrMaker { uid, gid, started: SystemTime::now() } }
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
            blksize: 4096,
        }
    }
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

impl Filesystem for NkmcFuse {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let fs = self.fs.clone();
        let name = name.to_owned();
        let attrs = self.attrs;
        self.rt.spawn(async move {
            match fs.lookup(parent.0, &name).await {
                Ok((ino, node)) => reply.entry(&ENTRY_TTL, &attrs.make(ino, &node), Generation(0)),
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
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            // Writes arrive with their own issue; until then, files are read-only.
            return reply.error(Errno::from_i32(libc::EROFS));
        }
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.open(ino.0).await {
                // Direct I/O: the size was unknown when the kernel cached the attributes.
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
                Err(e) => {
                    tracing::debug!(ino = ino.0, error = %e, "open");
                    reply.error(errno(&e))
                }
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
        match self.fs.read(fh.0, offset, size) {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => reply.error(errno(&e)),
        }
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
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.opendir(ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => {
                    tracing::debug!(ino = ino.0, error = %e, "opendir");
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        match self.fs.readdir(fh.0, offset) {
            Ok(entries) => {
                for (next, e) in entries {
                    let kind = match e.kind {
                        EntryKind::Dir => FileType::Directory,
                        EntryKind::File => FileType::RegularFile,
                    };
                    if reply.add(INodeNo(e.ino), next, kind, &e.name) {
                        break;
                    }
                }
                reply.ok();
            }
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
