//! The per-path content cache: a body fetched by one open serves the opens that follow
//! within the TTL, without a request; past the TTL a body that came with a validator
//! (`ETag`, `Last-Modified`) is revalidated with a conditional request and kept on `304`.
//! The kernel may keep its page cache across opens only while the body is the one it last
//! saw (same generation). Directory listings are kept for the same TTL.
//!
//! A fetch takes a [`Ticket`] before it asks; what it brings back is kept only if nothing
//! was written or removed through this mount since. A read that raced a write may hand its
//! reader the body from before the write, but it cannot bring that body back into the cache
//! after the write's invalidation (it would be served for a whole TTL).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentfs::wire::Listing;
use hyper::header::{HeaderMap, HeaderValue, ETAG, LAST_MODIFIED};

use super::body::Content;

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

/// What identifies a version of a body to its upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    /// The `ETag` it came with.
    pub etag: Option<HeaderValue>,
    /// The `Last-Modified` it came with.
    pub last_modified: Option<HeaderValue>,
}

impl Validators {
    /// The validators of an answer.
    pub fn of(headers: &HeaderMap) -> Self {
        Validators { etag: headers.get(ETAG).cloned(), last_modified: headers.get(LAST_MODIFIED).cloned() }
    }

    /// Whether there is anything to revalidate with.
    pub fn any(&self) -> bool {
        self.etag.is_some() || self.last_modified.is_some()
    }
}

/// What the cache has for a path.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// A fresh body: serve it without a request.
    Fresh(Served),
    /// An expired body with validators: ask whether it changed.
    Stale(Validators),
    /// Nothing usable: fetch.
    Missing,
}

#[derive(Debug)]
struct Entry {
    body: Content,
    validators: Validators,
    fetched: Instant,
    generation: u64,
    /// The generation the kernel's page cache holds for this path, if any.
    kernel_has: Option<u64>,
}

/// A body served from the cache or just fetched, with what the kernel may keep.
#[derive(Debug, Clone)]
pub struct Served {
    /// The body.
    pub body: Content,
    /// Whether the kernel's page cache already holds exactly this body (FOPEN_KEEP_CACHE).
    pub keep_kernel_cache: bool,
}

/// Taken before a fetch, handed back with what it fetched: the cache keeps a body or a
/// listing only if no write or removal went through the mount after the ticket was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a fetch's ticket goes back to the cache with what it fetched"]
pub struct Ticket(u64);

/// Bodies by canonical path.
#[derive(Debug)]
pub struct ContentCache {
    ttl: Duration,
    max_bytes: usize,
    clock: Box<dyn Clock>,
    inner: Mutex<Inner>,
    listings: Mutex<HashMap<String, (Instant, Arc<Listing>)>>,
    /// How many changes (writes, removals) went through the mount: bumped under the lock of
    /// the map it empties, read under the lock of the map a fetch stores into.
    changes: AtomicU64,
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
        ContentCache {
            ttl,
            max_bytes,
            clock,
            inner: Mutex::new(Inner::default()),
            listings: Mutex::default(),
            changes: AtomicU64::new(0),
        }
    }

    /// A ticket for a fetch about to start.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.changes.load(Ordering::SeqCst))
    }

    /// Whether a change went through the mount since `ticket` was taken.
    fn changed_since(&self, ticket: Ticket) -> bool {
        self.changes.load(Ordering::SeqCst) != ticket.0
    }

    /// Records a change; called with the lock of the map being emptied held.
    fn note_change(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
    }

    /// Now, by the cache's clock (the mount's one time source for pauses and retries).
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the cache holds for `path`: a fresh body (the kernel is then told it may keep
    /// its pages when they hold this same body), validators to revalidate an expired one
    /// with, or nothing.
    pub fn lookup(&self, path: &str) -> Lookup {
        if self.ttl.is_zero() {
            return Lookup::Missing;
        }
        let now = self.clock.now();
        let mut inner = self.inner();
        let Some(entry) = inner.entries.get_mut(path) else { return Lookup::Missing };
        if now.duration_since(entry.fetched) >= self.ttl {
            return match entry.validators.any() {
                true => Lookup::Stale(entry.validators.clone()),
                false => Lookup::Missing,
            };
        }
        let keep = entry.kernel_has == Some(entry.generation);
        entry.kernel_has = Some(entry.generation);
        Lookup::Fresh(Served { body: entry.body.clone(), keep_kernel_cache: keep })
    }

    /// A fresh body for `path`, if one is cached.
    #[cfg(test)]
    pub fn get(&self, path: &str) -> Option<Served> {
        match self.lookup(path) {
            Lookup::Fresh(s) => Some(s),
            Lookup::Stale(_) | Lookup::Missing => None,
        }
    }

    /// The upstream said the cached body of `path` is unchanged (`304`): it is fresh again
    /// for a TTL, and the kernel may keep pages it holds of it.
    pub fn revalidated(&self, path: &str) -> Option<Served> {
        let now = self.clock.now();
        let mut inner = self.inner();
        let entry = inner.entries.get_mut(path)?;
        entry.fetched = now;
        let keep = entry.kernel_has == Some(entry.generation);
        entry.kernel_has = Some(entry.generation);
        Some(Served { body: entry.body.clone(), keep_kernel_cache: keep })
    }

    /// Whether bodies and listings are kept at all (not `--no-cache`).
    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    /// The length of a fresh body of `path`, without serving it (for the sizes lookups tell).
    pub fn fresh_len(&self, path: &str) -> Option<u64> {
        if self.ttl.is_zero() {
            return None;
        }
        let now = self.clock.now();
        let inner = self.inner();
        let entry = inner.entries.get(path)?;
        (now.duration_since(entry.fetched) < self.ttl).then(|| entry.body.len())
    }

    /// Stores a body just fetched under `ticket`; the kernel must drop older pages of this
    /// path. Not kept if a change went through the mount since the ticket.
    pub fn put(&self, path: &str, body: Content, validators: Validators, ticket: Ticket) -> Served {
        self.store(path, body, validators, ticket, true)
    }

    /// Stores a body fetched ahead of any open (prefetch): no page the kernel holds is of
    /// it, so the open that serves it first tells the kernel to drop what it has.
    pub fn put_prefetched(&self, path: &str, body: Content, validators: Validators, ticket: Ticket) {
        self.store(path, body, validators, ticket, false);
    }

    fn store(&self, path: &str, body: Content, validators: Validators, ticket: Ticket, served_now: bool) -> Served {
        let served = Served { body: body.clone(), keep_kernel_cache: false };
        let size = usize::try_from(body.len()).unwrap_or(usize::MAX);
        let mut inner = self.inner();
        // Fetched before a write or removal (possibly the old body: the change counter is
        // for the whole mount, not this path), or not to be kept: the cache keeps nothing
        // of this path, so the next open asks.
        if self.changed_since(ticket) || self.ttl.is_zero() || size > self.max_bytes {
            Self::remove(&mut inner, path);
            return served;
        }
        let now = self.clock.now();
        inner.next_generation += 1;
        let generation = inner.next_generation;
        Self::remove(&mut inner, path);
        // Make room: drop the oldest entries first.
        while inner.bytes + size > self.max_bytes {
            let Some(oldest) = inner.entries.iter().min_by_key(|(_, e)| e.fetched).map(|(k, _)| k.clone()) else {
                break;
            };
            if let Some(e) = inner.entries.remove(&oldest) {
                inner.bytes -= e.body.len() as usize;
            }
        }
        inner.bytes += size;
        let kernel_has = served_now.then_some(generation);
        let entry = Entry { body, validators, fetched: now, generation, kernel_has };
        inner.entries.insert(path.to_owned(), entry);
        served
    }

    /// Forgets `path` after a write or removal through the mount; fetches in flight will
    /// not store what they bring.
    pub fn invalidate(&self, path: &str) {
        let mut inner = self.inner();
        Self::remove(&mut inner, path);
        self.note_change();
    }

    fn remove(inner: &mut Inner, path: &str) {
        if let Some(old) = inner.entries.remove(path) {
            inner.bytes -= old.body.len() as usize;
        }
    }

    fn listings(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Arc<Listing>)>> {
        self.listings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A listing of directory `path` fetched within the TTL.
    pub fn listing(&self, path: &str) -> Option<Arc<Listing>> {
        if self.ttl.is_zero() {
            return None;
        }
        let now = self.clock.now();
        let listings = self.listings();
        let (fetched, listing) = listings.get(path)?;
        (now.duration_since(*fetched) < self.ttl).then(|| listing.clone())
    }

    /// Keeps a listing fetched under `ticket`, unless a change went through the mount since.
    pub fn put_listing(&self, path: &str, listing: Arc<Listing>, ticket: Ticket) {
        if self.ttl.is_zero() {
            return;
        }
        let now = self.clock.now();
        let mut listings = self.listings();
        if self.changed_since(ticket) {
            return;
        }
        // Expired listings go whenever one is added, so the map stays as small as the
        // directories listed within one TTL.
        listings.retain(|_, (fetched, _)| now.duration_since(*fetched) < self.ttl);
        listings.insert(path.to_owned(), (now, listing));
    }

    /// Forgets every listing (after a write or removal: a collection's items may have
    /// changed, and the names they show are not known here).
    pub fn forget_listings(&self) {
        let mut listings = self.listings();
        listings.clear();
        self.note_change();
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

    fn mem(b: &'static [u8]) -> Content {
        Content::Memory(bytes::Bytes::from_static(b))
    }

    fn cache(ttl_ms: u64, max: usize) -> (ContentCache, Arc<Mutex<Instant>>) {
        let t = Arc::new(Mutex::new(Instant::now()));
        (ContentCache::new(Duration::from_millis(ttl_ms), max, Box::new(FakeClock(t.clone()))), t)
    }

    #[test]
    fn fresh_entries_serve_and_expire() {
        let (c, t) = cache(1000, 1 << 20);
        assert!(c.get("/a").is_none());
        let s = c.put("/a", mem(b"one"), Validators::default(), c.ticket());
        assert!(!s.keep_kernel_cache, "a new body: the kernel drops its pages");
        let s = c.get("/a").unwrap();
        assert_eq!(s.body.to_vec().unwrap(), b"one");
        assert!(s.keep_kernel_cache, "the same body the kernel saw");
        *t.lock().unwrap() += Duration::from_millis(1000);
        assert!(c.get("/a").is_none(), "expired at the TTL");
        c.put("/a", mem(b"two"), Validators::default(), c.ticket());
        c.invalidate("/a");
        assert!(c.get("/a").is_none());
    }

    #[test]
    fn prefetched_bodies_make_the_kernel_drop_its_pages_once() {
        let (c, _) = cache(1000, 1 << 20);
        c.put("/a", mem(b"old"), Validators::default(), c.ticket());
        assert!(c.get("/a").unwrap().keep_kernel_cache);
        c.put_prefetched("/a", mem(b"new!"), Validators::default(), c.ticket());
        assert_eq!(c.fresh_len("/a"), Some(4));
        let s = c.get("/a").unwrap();
        assert!(!s.keep_kernel_cache, "the kernel holds pages of the old body");
        assert_eq!(s.body.to_vec().unwrap(), b"new!");
        assert!(c.get("/a").unwrap().keep_kernel_cache, "now it holds this one");
        assert_eq!(c.fresh_len("/nothing"), None);
    }

    #[test]
    fn zero_ttl_disables_and_size_is_capped() {
        let (off, _) = cache(0, 1 << 20);
        off.put("/a", mem(b"x"), Validators::default(), off.ticket());
        assert!(off.get("/a").is_none());
        let (c, t) = cache(10_000, 10);
        c.put("/old", mem(b"123456"), Validators::default(), c.ticket());
        *t.lock().unwrap() += Duration::from_millis(1);
        c.put("/new", mem(b"abcdef"), Validators::default(), c.ticket());
        assert!(c.get("/old").is_none(), "the oldest entry made room");
        assert!(c.get("/new").is_some());
        c.put("/huge", Content::Memory(vec![0u8; 11].into()), Validators::default(), c.ticket());
        assert!(c.get("/huge").is_none(), "larger than the whole cache");
    }

    #[test]
    fn stale_bodies_with_validators_are_revalidated() {
        let (c, t) = cache(1000, 1 << 20);
        let v = Validators { etag: Some(HeaderValue::from_static("\"v1\"")), last_modified: None };
        c.put("/e", mem(b"tagged"), v.clone(), c.ticket());
        c.put("/p", mem(b"plain"), Validators::default(), c.ticket());
        *t.lock().unwrap() += Duration::from_millis(1500);
        assert!(matches!(c.lookup("/e"), Lookup::Stale(got) if got == v));
        assert!(matches!(c.lookup("/p"), Lookup::Missing), "no validator: fetch again");
        let s = c.revalidated("/e").unwrap();
        assert_eq!(s.body.to_vec().unwrap(), b"tagged");
        assert!(s.keep_kernel_cache, "unchanged: the kernel keeps its pages");
        assert!(matches!(c.lookup("/e"), Lookup::Fresh(_)), "fresh for another TTL");
    }

    #[test]
    fn listings_live_for_the_ttl_and_go_on_a_change() {
        let (c, t) = cache(1000, 1 << 20);
        let l = Arc::new(Listing { entries: Vec::new() });
        c.put_listing("/d", l, c.ticket());
        assert!(c.listing("/d").is_some());
        c.forget_listings();
        assert!(c.listing("/d").is_none());
        c.put_listing("/d", Arc::new(Listing { entries: Vec::new() }), c.ticket());
        *t.lock().unwrap() += Duration::from_millis(1000);
        assert!(c.listing("/d").is_none(), "expired");
        let (off, _) = cache(0, 1 << 20);
        off.put_listing("/d", Arc::new(Listing { entries: Vec::new() }), off.ticket());
        assert!(off.listing("/d").is_none(), "--no-cache keeps no listing");
    }

    #[test]
    fn a_fetch_that_raced_a_change_is_not_kept() {
        let (c, _) = cache(1000, 1 << 20);
        c.put("/a", mem(b"old"), Validators::default(), c.ticket());
        // A read starts, a write to the same path ends while it is in flight, the read
        // comes back with the body from before the write.
        let ticket = c.ticket();
        c.invalidate("/a");
        let s = c.put("/a", mem(b"old"), Validators::default(), ticket);
        assert_eq!(s.body.to_vec().unwrap(), b"old", "its reader still gets what it fetched");
        assert!(c.get("/a").is_none(), "but the cache does not keep it");
        c.put_prefetched("/a", mem(b"old"), Validators::default(), ticket);
        assert!(c.get("/a").is_none(), "nor a prefetch's");
        // A fetch that started after the write is kept; a late one leaves nothing of the
        // path (it may be older or newer: the next open asks).
        c.put("/a", mem(b"new"), Validators::default(), c.ticket());
        assert_eq!(c.get("/a").unwrap().body.to_vec().unwrap(), b"new");
        c.put("/a", mem(b"old"), Validators::default(), ticket);
        assert!(c.get("/a").is_none());
        // Listings: the same.
        let ticket = c.ticket();
        c.forget_listings();
        c.put_listing("/d", Arc::new(Listing { entries: Vec::new() }), ticket);
        assert!(c.listing("/d").is_none());
        c.put_listing("/d", Arc::new(Listing { entries: Vec::new() }), c.ticket());
        assert!(c.listing("/d").is_some());
        // Too large for the cache is no change: fetches in flight are still kept.
        let (small, _) = cache(1000, 4);
        let ticket = small.ticket();
        small.put("/huge", mem(b"12345"), Validators::default(), small.ticket());
        small.put("/b", mem(b"1234"), Validators::default(), ticket);
        assert!(small.get("/b").is_some());
    }
}
