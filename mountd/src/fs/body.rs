//! A fetched body: in memory when small, in an unlinked temporary file beyond a threshold,
//! so a large body never sits whole in mountd's memory. A large body whose length is
//! announced is served while it arrives ([`Growing`]): reads wait only for their own bytes.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

/// Why a body could not be kept.
#[derive(Debug, thiserror::Error)]
#[error("mountd: cannot keep a large body in a temporary file under {dir}: {source} (set TMPDIR to a writable directory with room)")]
pub struct SpillError {
    dir: String,
    source: std::io::Error,
}

/// A body, read by offset.
#[derive(Debug, Clone)]
pub enum Content {
    /// Held in memory.
    Memory(Bytes),
    /// Held in an unlinked temporary file of `len` bytes.
    Spilled {
        /// The file (gone from the directory; lives while referenced).
        file: Arc<File>,
        /// Its length.
        len: u64,
    },
    /// Arriving into an unlinked temporary file.
    Growing(Arc<Growing>),
}

/// How much of a [`Growing`] body is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// This many bytes from the start.
    Bytes(u64),
    /// All of it.
    Done,
    /// The stream broke off (or did not match its announced length): reads past what
    /// arrived fail.
    Failed,
}

/// A body of announced length arriving into an unlinked temporary file: the fetching task
/// appends and says how far it got; readers wait for the bytes they ask for.
#[derive(Debug)]
pub struct Growing {
    file: File,
    len: u64,
    arrival: watch::Sender<Arrival>,
}

impl Growing {
    /// An empty body that will hold `len` bytes, in a new unlinked file under TMPDIR.
    pub fn new(len: u64) -> Result<Arc<Self>, SpillError> {
        let dir = std::env::temp_dir();
        let file = unlinked_file(&dir).map_err(|source| SpillError { dir: dir.display().to_string(), source })?;
        Ok(Arc::new(Growing { file, len, arrival: watch::Sender::new(Arrival::Bytes(0)) }))
    }

    /// Writes `chunk` at `at` and tells readers it is there. Bytes past the announced
    /// length are an error (the body is then failed).
    pub fn append(&self, at: u64, chunk: &[u8]) -> std::io::Result<()> {
        let end = at + chunk.len() as u64;
        if end > self.len {
            self.fail();
            return Err(std::io::Error::other("the body is longer than its announced length"));
        }
        if let Err(e) = self.file.write_all_at(chunk, at) {
            self.fail();
            return Err(e);
        }
        self.arrival.send_replace(if end == self.len { Arrival::Done } else { Arrival::Bytes(end) });
        Ok(())
    }

    /// The stream ended: done if every announced byte came, else failed.
    pub fn end(&self) -> bool {
        let complete = self.len == 0 || *self.arrival.borrow() == Arrival::Done;
        self.arrival.send_replace(if complete { Arrival::Done } else { Arrival::Failed });
        complete
    }

    /// The stream broke off.
    pub fn fail(&self) {
        self.arrival.send_replace(Arrival::Failed);
    }

    /// Whether the stream broke off.
    #[cfg(test)]
    fn failed(&self) -> bool {
        *self.arrival.borrow() == Arrival::Failed
    }

    /// Whether the bytes up to `end` can be read now: `Some(true)` yes, `Some(false)` never
    /// (failed), `None` not yet.
    fn ready(&self, end: u64) -> Option<bool> {
        match *self.arrival.borrow() {
            Arrival::Done => Some(true),
            Arrival::Bytes(n) if n >= end => Some(true),
            Arrival::Bytes(_) => None,
            Arrival::Failed => Some(false),
        }
    }

    /// Waits until the bytes up to `end` (capped at the length) have arrived or the stream
    /// broke off.
    pub async fn wait(&self, end: u64) {
        let end = end.min(self.len);
        let mut rx = self.arrival.subscribe();
        let _ = rx
            .wait_for(|a| matches!(a, Arrival::Done | Arrival::Failed) || matches!(a, Arrival::Bytes(n) if *n >= end))
            .await;
    }
}

impl Default for Content {
    fn default() -> Self {
        Content::Memory(Bytes::new())
    }
}

impl Content {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Content::Memory(b) => b.len() as u64,
            Content::Spilled { len, .. } => *len,
            Content::Growing(g) => g.len,
        }
    }

    /// Up to `size` bytes from `offset` (fewer at the end). For a body still arriving whose
    /// bytes are not all in yet: an error of kind `WouldBlock` ([`Content::wait`] first).
    pub fn read_at(&self, offset: u64, size: usize) -> std::io::Result<Bytes> {
        match self {
            Content::Growing(g) => {
                let end = offset.saturating_add(size as u64).min(g.len);
                match g.ready(end) {
                    Some(true) => pread(&g.file, g.len, offset, size),
                    Some(false) => Err(std::io::Error::other("the body was cut off before its end")),
                    None => Err(std::io::ErrorKind::WouldBlock.into()),
                }
            }
            Content::Memory(b) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
                let end = start.saturating_add(size).min(b.len());
                Ok(b.slice(start..end))
            }
            Content::Spilled { file, len } => pread(file, *len, offset, size),
        }
    }

    /// Hands `f` up to `size` bytes from `offset` (fewer at the end): a slice of a body in
    /// memory, or bytes read from the file into `buf` (grown as needed and reused, so a
    /// read allocates nothing). The same errors as [`Content::read_at`].
    pub fn read_with<R>(
        &self,
        offset: u64,
        size: usize,
        buf: &mut Vec<u8>,
        f: impl FnOnce(&[u8]) -> R,
    ) -> std::io::Result<R> {
        let (file, len) = match self {
            Content::Memory(b) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
                let end = start.saturating_add(size).min(b.len());
                return Ok(f(&b[start..end]));
            }
            Content::Spilled { file, len } => (&**file, *len),
            Content::Growing(g) => {
                match g.ready(offset.saturating_add(size as u64).min(g.len)) {
                    Some(true) => {}
                    Some(false) => return Err(std::io::Error::other("the body was cut off before its end")),
                    None => return Err(std::io::ErrorKind::WouldBlock.into()),
                }
                (&g.file, g.len)
            }
        };
        let want = usize::try_from(len.saturating_sub(offset)).unwrap_or(usize::MAX).min(size);
        if buf.len() < want {
            buf.resize(want, 0);
        }
        let filled = pread_into(file, offset, &mut buf[..want])?;
        Ok(f(&buf[..filled]))
    }

    /// Waits until a read of `size` bytes at `offset` can be answered (at once for bodies
    /// that are whole).
    pub async fn wait(&self, offset: u64, size: usize) {
        if let Content::Growing(g) = self {
            g.wait(offset.saturating_add(size as u64)).await;
        }
    }

    /// The whole body in memory (only for bodies known to be small enough).
    pub fn to_vec(&self) -> std::io::Result<Vec<u8>> {
        let len = usize::try_from(self.len()).unwrap_or(usize::MAX);
        self.read_at(0, len).map(|b| b.to_vec())
    }
}

fn pread(file: &File, len: u64, offset: u64, size: usize) -> std::io::Result<Bytes> {
    let want = usize::try_from(len.saturating_sub(offset)).unwrap_or(usize::MAX).min(size);
    let mut buf = vec![0u8; want];
    let filled = pread_into(file, offset, &mut buf)?;
    buf.truncate(filled);
    Ok(buf.into())
}

/// Fills `buf` from `offset` (less at the end of the file); returns how much.
fn pread_into(file: &File, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read_at(&mut buf[filled..], offset + filled as u64)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// Receives a body chunk by chunk; moves to a temporary file once it passes `threshold`.
#[derive(Debug)]
pub struct Collector {
    threshold: usize,
    memory: BytesMut,
    spill: Option<(File, u64)>,
}

impl Collector {
    /// A collector keeping up to `threshold` bytes in memory.
    pub fn new(threshold: usize) -> Self {
        Collector { threshold, memory: BytesMut::new(), spill: None }
    }

    /// A collector for a body announced as `expected` bytes: one larger than `threshold`
    /// goes to its temporary file from the first byte, never through memory.
    pub fn with_expected(threshold: usize, expected: Option<u64>) -> Result<Self, SpillError> {
        let mut c = Collector::new(threshold);
        match expected {
            Some(len) if len > threshold as u64 => c.start_spill()?,
            Some(len) => c.memory.reserve(usize::try_from(len).unwrap_or(0)),
            None => {}
        }
        Ok(c)
    }

    fn start_spill(&mut self) -> Result<(), SpillError> {
        let dir = std::env::temp_dir();
        let fail = |source| SpillError { dir: dir.display().to_string(), source };
        let mut file = unlinked_file(&dir).map_err(fail)?;
        file.write_all(&self.memory).map_err(fail)?;
        self.spill = Some((file, self.memory.len() as u64));
        self.memory = BytesMut::new();
        Ok(())
    }

    /// Adds a chunk.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), SpillError> {
        if self.spill.is_none() && self.memory.len() + chunk.len() <= self.threshold {
            self.memory.extend_from_slice(chunk);
            return Ok(());
        }
        if self.spill.is_none() {
            self.start_spill()?;
        }
        if let Some((file, len)) = self.spill.as_mut() {
            let fail = |source| SpillError { dir: std::env::temp_dir().display().to_string(), source };
            file.write_all(chunk).map_err(fail)?;
            *len += chunk.len() as u64;
        }
        Ok(())
    }

    /// The whole body.
    pub fn finish(self) -> Content {
        match self.spill {
            Some((file, len)) => Content::Spilled { file: Arc::new(file), len },
            None => Content::Memory(self.memory.freeze()),
        }
    }
}

/// A read-write file in `dir` that no name refers to: `O_TMPFILE` where the file system has
/// it, else a fresh name removed at once. Only this process can reach it (mode 0600).
fn unlinked_file(dir: &Path) -> std::io::Result<File> {
    let tmpfile =
        std::fs::OpenOptions::new().read(true).write(true).mode(0o600).custom_flags(libc::O_TMPFILE).open(dir);
    if let Ok(f) = tmpfile {
        return Ok(f);
    }
    for attempt in 0..16u32 {
        let name = dir.join(format!(".nkmc-mountd-{}-{}-{attempt}", std::process::id(), nanos()));
        match std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&name) {
            Ok(f) => {
                std::fs::remove_file(&name)?;
                return Ok(f);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free temporary file name"))
}

fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_bodies_stay_in_memory_and_large_ones_spill() {
        let mut c = Collector::new(8);
        c.push(b"abcd").unwrap();
        c.push(b"efgh").unwrap();
        let small = c.finish();
        assert!(matches!(small, Content::Memory(_)));
        assert_eq!(&small.read_at(2, 3).unwrap()[..], b"cde");

        let mut c = Collector::new(8);
        c.push(b"abcdef").unwrap();
        c.push(b"ghijkl").unwrap();
        c.push(b"mn").unwrap();
        let big = c.finish();
        assert!(matches!(big, Content::Spilled { len: 14, .. }));
        let mut buf = Vec::new();
        assert_eq!(big.read_with(5, 4, &mut buf, |b| b.to_vec()).unwrap(), b"fghi");
        assert_eq!(big.read_with(12, 4, &mut buf, |b| b.to_vec()).unwrap(), b"mn", "short at the end");
        assert_eq!(small.read_with(2, 3, &mut buf, |b| b.to_vec()).unwrap(), b"cde");
        assert_eq!(&big.read_at(0, 100).unwrap()[..], b"abcdefghijklmn");
        assert_eq!(&big.read_at(5, 4).unwrap()[..], b"fghi");
        assert!(big.read_at(14, 4).unwrap().is_empty());
        assert!(big.read_at(99, 4).unwrap().is_empty());
        assert_eq!(big.to_vec().unwrap(), b"abcdefghijklmn");

        let mut c = Collector::with_expected(8, Some(9)).unwrap();
        assert!(c.spill.is_some(), "announced larger than the threshold: spilled from the start");
        c.push(b"123456789").unwrap();
        assert!(matches!(c.finish(), Content::Spilled { len: 9, .. }));
        let mut c = Collector::with_expected(8, Some(3)).unwrap();
        c.push(b"abc").unwrap();
        assert!(matches!(c.finish(), Content::Memory(_)));
    }

    #[tokio::test]
    async fn a_growing_body_serves_what_arrived_and_waits_for_the_rest() {
        let g = Growing::new(10).unwrap();
        let c = Content::Growing(g.clone());
        assert_eq!(c.len(), 10);
        g.append(0, b"abcd").unwrap();
        assert_eq!(&c.read_at(1, 3).unwrap()[..], b"bcd");
        assert_eq!(c.read_at(2, 4).unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
        let mut buf = Vec::new();
        assert_eq!(c.read_with(1, 3, &mut buf, |b| b.to_vec()).unwrap(), b"bcd");
        assert_eq!(c.read_with(2, 4, &mut buf, |b| b.len()).unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
        let reader = tokio::spawn({
            let c = c.clone();
            async move {
                c.wait(2, 4).await;
                c.read_at(2, 4).unwrap()
            }
        });
        g.append(4, b"efgh").unwrap();
        assert_eq!(&reader.await.unwrap()[..], b"cdef");
        g.append(8, b"ij").unwrap();
        assert!(g.end());
        assert_eq!(&c.read_at(0, 100).unwrap()[..], b"abcdefghij");
        assert!(g.append(10, b"k").is_err(), "past the announced length");
        assert!(g.failed());

        let short = Growing::new(10).unwrap();
        short.append(0, b"abc").unwrap();
        assert!(!short.end(), "ended before its length");
        assert!(short.failed());
        let c = Content::Growing(short);
        c.wait(0, 10).await;
        assert!(c.read_at(0, 2).is_err(), "a broken body is not served at all");
        assert!(c.read_at(0, 10).is_err());
    }
}
