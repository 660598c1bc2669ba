//! The per-path content cache: a body fetched by one open serves the opens that follow
//! within the TTL, without a request; and the kernel may keep its page cache across opens
//! only while the body is the one it last saw (same generation).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// The time source, injected so freshness is testable without sleeping.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now(&self) -> Instant;
}

/// The real clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

#[derive(Debug)]
struct Entry {
    body: Bytes,
    fetched: Instant,
    generation: u64,
    /// The generation the kernel's page cache holds for this path, if any.
    kernel_has: Option<u64>,
}

/// A body served from the cache or just fetched, with what the kernel may keep.
#[derive(Debug, Clone)]
pub struct Served {
    /// The body.
    pub body: Bytes,
    /// Whether the kernel's page cache already holds exactly this body (FOPEN_KEEP_CACHE).
    pub keep_kernel_cache: bool,
}

/// Bodies by canonical path.
#[derive(Debug)]
pub struct ContentCache {
    ttl: Duration,
    max_bytes: usize,
    clock: Box<dyn Clock>,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    bytes: usize,
    next_generation: u64,
}

impl ContentCache {
    /// A cache keeping bodies for `ttl` (zero disables it), up to `max_bytes` in all.
    pub fn new(ttl: Duration, max_bytes: usize, clock: Box<dyn Clock>) -> Self {
        ContentCache { ttl, max_bytes, clock, inner: Mutex::new(Inner::default()) }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh body for `path`, if one is cached; the kernel is then told it may keep its
    /// pages when they hold this same body.
    pub fn get(&self, path: &str) -> Option<Served> {
        if self.ttl.is_zero() {
            return None;
        }
        let now = self.clock.now();
        let mut inner = self.inner();
        let entry = inner.entries.get_mut(path)?;
        if now.duration_since(entry.fetched) >= self.ttl {
            return None;
        }
        let keep = entry.kernel_has == Some(entry.generation);
        entry.kernel_has = Some(entry.generation);
        Some(Served { body: entry.body.clone(), keep_kernel_cache: keep })
    }

    /// Stores a body just fetched; the kernel must drop older pages of this path.
    pub fn put(&self, path: &str, body: Bytes) -> Served {
        let served = Served { body: body.clone(), keep_kernel_cache: false };
        if self.ttl.is_zero() || body.len() > self.max_bytes {
            self.invalidate(path);
            return served;
        }
        let now = self.clock.now();
        let mut inner = self.inner();
        inner.next_generation += 1;
        let generation = inner.next_generation;
        if let Some(old) = inner.entries.remove(path) {
            inner.bytes -= old.body.len();
        }
        // Make room: drop the oldest entries first.
        while inner.bytes + body.len() > self.max_bytes {
            let Some(oldest) = inner.entries.iter().min_by_key(|(_, e)| e.fetched).map(|(k, _)| k.clone()) else {
                break;
            };
            if let Some(e) = inner.entries.remove(&oldest) {
                inner.bytes -= e.body.len();
            }
        }
        inner.bytes += body.len();
        inner.entries.insert(path.to_owned(), Entry { body, fetched: now, generation, kernel_has: Some(generation) });
        served
    }

    /// Forgets `path` (after a write or removal).
    pub fn invalidate(&self, path: &str) {
        let mut inner = self.inner();
        if let Some(old) = inner.entries.remove(path) {
            inner.bytes -= old.body.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Debug, Clone)]
    struct FakeClock(Arc<Mutex<Instant>>);
    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            *self.0.lock().unwrap()
        }
    }

    fn cache(ttl_ms: u64, max: usize) -> (ContentCache, Arc<Mutex<Instant>>) {
        let t = Arc::new(Mutex::new(Instant::now()));
        (ContentCache::new(Duration::from_millis(ttl_ms), max, Box::new(FakeClock(t.clone()))), t)
    }

    #[test]
    fn fresh_entries_serve_and_expire() {
        let (c, t) = cache(1000, 1 << 20);
        assert!(c.get("/a").is_none());
        let s = c.put("/a", Bytes::from_static(b"one"));
        assert!(!s.keep_kernel_cache, "a new body: the kernel drops its pages");
        let s = c.get("/a").unwrap();
        assert_eq!(&s.body[..], b"one");
        assert!(s.keep_kernel_cache, "the same body the kernel saw");
        *t.lock().unwrap() += Duration::from_millis(1000);
        assert!(c.get("/a").is_none(), "expired at the TTL");
        c.put("/a", Bytes::from_static(b"two"));
        c.invalidate("/a");
        assert!(c.get("/a").is_none());
    }

    #[test]
    fn zero_ttl_disables_and_size_is_capped() {
        let (off, _) = cache(0, 1 << 20);
        off.put("/a", Bytes::from_static(b"x"));
        assert!(off.get("/a").is_none());
        let (c, t) = cache(10_000, 10);
        c.put("/old", Bytes::from_static(b"123456"));
        *t.lock().unwrap() += Duration::from_millis(1);
        c.put("/new", Bytes::from_static(b"abcdef"));
        assert!(c.get("/old").is_none(), "the oldest entry made room");
        assert!(c.get("/new").is_some());
        c.put("/huge", Bytes::from(vec![0u8; 11]));
        assert!(c.get("/huge").is_none(), "larger than the whole cache");
    }
}
