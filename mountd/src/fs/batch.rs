//! Prefetch through `POST /v1/fs/read-batch`: the files ahead of a sequential reader asked
//! for in one request instead of one request each. gatewayd reads each path exactly as its
//! own `GET /v1/fs/read` (rights, audit, masking, limits, errors) and answers with frames
//! ([`agentfs::wire::batch`]), parsed strictly here: a body goes to the cache only once its
//! end frame arrived in order and at its announced length; a frame out of order, a malformed
//! one or an answer that breaks off drops every item not yet complete (its open asks again).
//! A batch holds one `--max-inflight` slot per read gatewayd may run for it, and gives them
//! back as its items end.
//!
//! Against a gatewayd without the route (an older one: [`agentfs::wire::NO_SUCH_ROUTE`]), the
//! paths are fetched one by one, and a batch is tried again after [`NO_ROUTE_RETRY`]; after
//! an answer that broke the protocol (not one that merely broke off), for [`PROTOCOL_PAUSE`].

use std::time::Duration;

use agentfs::client::ClientError;
use agentfs::wire::batch::{self as wire, Decoder, Event, FrameError, ItemTracker, ReadBatchRequest};
use agentfs::wire::{ErrorCode, NO_SUCH_ROUTE};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, StatusCode};
use tokio::sync::{watch, SemaphorePermit};

use super::body::Collector;
use super::cache::{Ticket, Validators};
use super::Fs;

/// A path being prefetched, and the sender that tells the opens waiting for it.
pub(super) type Waited = (String, watch::Sender<bool>);

/// An item's body as it arrives.
type Arriving = Option<(Collector, Validators)>;

/// After gatewayd answered that it has no batch route: prefetch one by one for this long,
/// then ask in a batch again (gatewayd may have been upgraded meanwhile).
pub const NO_ROUTE_RETRY: Duration = Duration::from_secs(10 * 60);

/// After a batch's answer broke the protocol (a frame this mountd does not understand):
/// prefetch one by one for this long.
pub const PROTOCOL_PAUSE: Duration = Duration::from_secs(5 * 60);

/// Whether `error` is what every gatewayd answers for a route it does not have.
fn no_such_route(error: &ClientError) -> bool {
    matches!(error, ClientError::Api { status: 400, body }
        if body.code == ErrorCode::BadRequest && body.message == NO_SUCH_ROUTE)
}

/// Gives back the slots held beyond one per item not yet complete.
fn give_back(slots: &mut Option<SemaphorePermit<'_>>, unfinished: usize) {
    if let Some(held) = slots.as_mut() {
        let extra = held.num_permits().saturating_sub(unfinished);
        if extra > 0 {
            drop(held.split(extra));
        }
    }
}

impl Fs {
    /// Whether prefetch asks in batches: unless a pause is running ([`NO_ROUTE_RETRY`],
    /// [`PROTOCOL_PAUSE`]).
    pub(super) fn batches(&self) -> bool {
        let mut off = self.batch_off.lock().unwrap_or_else(|p| p.into_inner());
        match *off {
            Some(until) if self.cache.now() < until => false,
            Some(_) => {
                *off = None;
                true
            }
            None => true,
        }
    }

    /// Prefetch one by one for `pause`.
    fn pause_batches(&self, pause: Duration) {
        *self.batch_off.lock().unwrap_or_else(|p| p.into_inner()) = Some(self.cache.now() + pause);
    }

    /// Prefetch is over for `item`: the opens waiting for it go on (to the cache, or to ask).
    pub(super) fn prefetch_done(&self, (path, tx): Waited) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&path);
        let _ = tx.send(true);
    }

    /// Fetches `items` into the cache in batches of at most [`wire::MAX_PATHS`]. Returns the
    /// items to fetch one by one instead: those not asked for once gatewayd answered that it
    /// has no batch route (an older gatewayd).
    pub(super) async fn prefetch_batched(&self, items: Vec<Waited>) -> Vec<Waited> {
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            let batch: Vec<Waited> = items.by_ref().take(wire::MAX_PATHS).collect();
            if let Err(mut back) = self.read_batch(batch).await {
                back.extend(items);
                return back;
            }
        }
        Vec::new()
    }

    /// One batch request, holding a slot of `--max-inflight` per read gatewayd runs at once
    /// for it (up to half of `--max-inflight`, at most one per item), given back as items
    /// end. `Err`: gatewayd has no batch route; its items are returned. A batch refused
    /// otherwise is dropped, as a refused prefetch is (each open asks and reports).
    async fn read_batch(&self, items: Vec<Waited>) -> Result<(), Vec<Waited>> {
        let wanted = self.prefetch_width().min(wire::MAX_CONCURRENT).min(items.len().max(1));
        // One slot waited for in turn with the mount's other requests (the semaphore serves
        // waiters in order: waiting for many at once would hold up every open queued after
        // it), then as many more as are free now. The semaphore is never closed, so
        // acquiring only waits.
        let mut slots = self.inflight.acquire().await.ok();
        if let Some(held) = slots.as_mut() {
            while held.num_permits() < wanted {
                match self.inflight.try_acquire() {
                    Ok(more) => held.merge(more),
                    Err(_) => break,
                }
            }
        }
        let n_slots = slots.as_ref().map_or(1, |s| u32::try_from(s.num_permits()).unwrap_or(1));
        let request =
            ReadBatchRequest { paths: items.iter().map(|(p, _)| p.clone()).collect(), concurrency: Some(n_slots) };
        let payload = match serde_json::to_vec(&request) {
            Ok(p) => p,
            Err(_) => return Err(items),
        };
        let ticket = self.cache.ticket();
        let answer =
            self.client.send_streamed(Method::POST, wire::ROUTE, Some((payload.into(), "application/json")), &[]).await;
        let mut answer = match answer {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "prefetch: the read batch failed");
                items.into_iter().for_each(|w| self.prefetch_done(w));
                return Ok(());
            }
        };
        if answer.status != StatusCode::OK {
            let status = answer.status;
            let error = answer.into_error().await;
            if no_such_route(&error) {
                tracing::debug!("prefetch: gatewayd has no read batch; one by one for a while");
                self.pause_batches(NO_ROUTE_RETRY);
                return Err(items);
            }
            tracing::debug!(status = status.as_u16(), error = %error, "prefetch: read batch refused");
            items.into_iter().for_each(|w| self.prefetch_done(w));
            return Ok(());
        }
        let framed = answer.headers.get(CONTENT_TYPE).is_some_and(|v| v.as_bytes() == wire::CONTENT_TYPE.as_bytes());
        let mut waiting: Vec<Option<Waited>> = items.into_iter().map(Some).collect();
        if framed {
            let mut bodies: Vec<Arriving> = waiting.iter().map(|_| None).collect();
            let mut decoder = Decoder::default();
            let mut tracker = ItemTracker::new(waiting.len());
            let outcome = loop {
                let chunk = match answer.chunk().await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break decoder.finish(),
                    Err(e) => {
                        tracing::debug!(error = %e, "prefetch: the read batch broke off");
                        break Ok(());
                    }
                };
                decoder.push(&chunk);
                let taken = self.take_frames(&mut decoder, &mut tracker, &mut bodies, &mut waiting, &mut slots, ticket);
                if let Err(e) = taken {
                    break Err(e);
                }
            };
            match outcome {
                Ok(()) => {}
                Err(e @ FrameError::Truncated(_)) => tracing::debug!(error = %e, "prefetch: the read batch broke off"),
                Err(e) => {
                    tracing::warn!(error = %e, "prefetch: a read batch answer this mountd cannot read; one by one for a while");
                    self.pause_batches(PROTOCOL_PAUSE);
                }
            }
        } else {
            tracing::warn!("prefetch: the read batch's answer is not framed; one by one for a while");
            self.pause_batches(PROTOCOL_PAUSE);
        }
        // Every item not complete is dropped: its open asks again.
        waiting.into_iter().flatten().for_each(|w| self.prefetch_done(w));
        Ok(())
    }

    /// Applies every whole frame that has arrived; gives back a slot as each item ends.
    fn take_frames(
        &self,
        decoder: &mut Decoder,
        tracker: &mut ItemTracker,
        bodies: &mut [Arriving],
        waiting: &mut [Option<Waited>],
        slots: &mut Option<SemaphorePermit<'_>>,
        ticket: Ticket,
    ) -> Result<(), FrameError> {
        while let Some(frame) = decoder.next_frame()? {
            match tracker.accept(frame)? {
                Event::Head(i, head) => {
                    let header = |v: Option<String>| v.and_then(|v| HeaderValue::from_str(&v).ok());
                    let validators = Validators { etag: header(head.etag), last_modified: header(head.last_modified) };
                    // A `304` is never the answer to a batch (it sends no validators); it would
                    // carry no body to keep.
                    bodies[i] = match Collector::with_expected(self.limits.spill_bytes, head.length) {
                        Ok(c) if head.upstream_status != Some(304) => Some((c, validators)),
                        Ok(_) => None,
                        Err(e) => {
                            tracing::debug!(error = %e, "prefetch: no room for a body");
                            None
                        }
                    };
                }
                Event::Data(i, bytes) => {
                    if let Some((collector, _)) = bodies[i].as_mut() {
                        if let Err(e) = collector.push(&bytes) {
                            tracing::debug!(error = %e, "prefetch: no room for a body");
                            bodies[i] = None;
                        }
                    }
                }
                Event::End(i) => {
                    if let (Some((collector, validators)), Some((path, _))) = (bodies[i].take(), waiting[i].as_ref()) {
                        self.cache.put_prefetched(path, collector.finish(), validators, ticket);
                    }
                    if let Some(w) = waiting[i].take() {
                        self.prefetch_done(w);
                    }
                    give_back(slots, waiting.iter().flatten().count());
                }
                Event::Failed(i, error) => {
                    bodies[i] = None;
                    if let Some(w) = waiting[i].take() {
                        tracing::debug!(path = %w.0, error = %error.message, "prefetch");
                        self.prefetch_done(w);
                    }
                    give_back(slots, waiting.iter().flatten().count());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use agentfs::client::GatewayClient;
    use agentfs::wire::batch::{self as wire, encode, FrameKind, ItemHead};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;
    use tokio::sync::Notify;

    use super::super::cache::{Clock, ContentCache, Lookup};
    use super::super::{Fs, Limits};
    use super::{NO_ROUTE_RETRY, PROTOCOL_PAUSE};

    /// How the fake gatewayd answers a read batch.
    #[derive(Clone, Copy)]
    enum Batch {
        /// An older gatewayd: no such route (its exact answer).
        Missing,
        /// Refused whole for another reason (a `400` that is not the missing route).
        Refused,
        /// Item 0 whole; item 1 cut inside its data, the answer ending there.
        Truncated,
        /// Item 0 whole, then data of item 1 before its head.
        OutOfOrder,
        /// Both items whole, their heads carrying a member this mountd does not know.
        Newer,
        /// Item 0 whole; item 1 only once the test says so.
        Paused,
    }

    /// What the fake gatewayd saw, and the test's hold on a paused answer.
    #[derive(Default)]
    struct Fake {
        batches: AtomicUsize,
        singles: AtomicUsize,
        /// A batch request arrived.
        asked: Notify,
        /// The rest of a paused answer may go.
        resume: Notify,
    }

    /// A clock the test moves.
    #[derive(Debug, Clone)]
    struct TestClock(Arc<Mutex<Instant>>);

    impl Clock for TestClock {
        fn now(&self) -> Instant {
            *self.0.lock().unwrap()
        }
    }

    impl TestClock {
        fn advance(&self, by: Duration) {
            *self.0.lock().unwrap() += by;
        }
    }

    /// A gatewayd on a Unix socket: single reads answer `single:PATH`; read batches as `mode`
    /// says.
    fn fake_gatewayd(dir: &std::path::Path, mode: Batch) -> (std::path::PathBuf, Arc<Fake>) {
        let socket = dir.join("gw.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let fake = Arc::new(Fake::default());
        let seen = fake.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else { return };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut raw = Vec::new();
                    let mut buf = [0u8; 4096];
                    let head_end = loop {
                        let n = conn.read(&mut buf).await.unwrap();
                        if n == 0 {
                            return;
                        }
                        raw.extend_from_slice(&buf[..n]);
                        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
                    let target = head.split(' ').nth(1).unwrap().to_owned();
                    if target.starts_with("/v1/fs/read-batch") {
                        seen.batches.fetch_add(1, Ordering::SeqCst);
                        seen.asked.notify_one();
                        let (first, rest) = batch_answer(mode);
                        let _ = conn.write_all(&first).await;
                        if !rest.is_empty() {
                            seen.resume.notified().await;
                            let _ = conn.write_all(&rest).await;
                        }
                    } else {
                        seen.singles.fetch_add(1, Ordering::SeqCst);
                        let path = target.split("path=").nth(1).unwrap().replace("%2F", "/");
                        let body = format!("single:{path}");
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = conn.write_all(answer.as_bytes()).await;
                    }
                    let _ = conn.shutdown().await;
                });
            }
        });
        (socket, fake)
    }

    fn error_answer(message: &str) -> Vec<u8> {
        let body = format!(r#"{{"code":"bad_request","message":"{message}"}}"#);
        format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// The answer to a batch of two paths: what is written at once, and what is written
    /// once the test resumes it (nothing, unless paused).
    fn batch_answer(mode: Batch) -> (Vec<u8>, Vec<u8>) {
        match mode {
            // Exactly what every gatewayd without the route answers.
            Batch::Missing => return (error_answer("gatewayd: no such route"), Vec::new()),
            Batch::Refused => {
                return (error_answer("gatewayd: a read batch holds at most 64 paths, not 65"), Vec::new())
            }
            _ => {}
        }
        let head =
            |len| serde_json::to_vec(&ItemHead { upstream_status: Some(200), length: len, ..ItemHead::default() });
        let mut frames = Vec::new();
        if let Batch::Newer = mode {
            encode(FrameKind::Head, 0, br#"{"upstream_status":200,"length":5,"served_by":"gw-9"}"#, &mut frames);
        } else {
            encode(FrameKind::Head, 0, &head(Some(5)).unwrap(), &mut frames);
        }
        encode(FrameKind::Data, 0, b"batch", &mut frames);
        encode(FrameKind::End, 0, &[], &mut frames);
        let mut rest = Vec::new();
        match mode {
            Batch::Truncated => {
                encode(FrameKind::Head, 1, &head(Some(6)).unwrap(), &mut frames);
                encode(FrameKind::Data, 1, b"abc", &mut frames);
                // The next frame's first bytes only.
                frames.extend_from_slice(&[2, 0, 1, 0]);
            }
            Batch::OutOfOrder => {
                encode(FrameKind::Data, 1, b"abc", &mut frames);
                encode(FrameKind::Head, 1, &head(None).unwrap(), &mut frames);
                encode(FrameKind::End, 1, &[], &mut frames);
            }
            Batch::Newer => {
                encode(FrameKind::Head, 1, br#"{"length":3,"tier":{"x":[1]}}"#, &mut frames);
                encode(FrameKind::Data, 1, b"new", &mut frames);
                encode(FrameKind::End, 1, &[], &mut frames);
            }
            Batch::Paused => {
                encode(FrameKind::Head, 1, &head(Some(6)).unwrap(), &mut rest);
                encode(FrameKind::Data, 1, b"paused", &mut rest);
                encode(FrameKind::End, 1, &[], &mut rest);
            }
            Batch::Missing | Batch::Refused => {}
        }
        let mut first = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            wire::CONTENT_TYPE,
            frames.len() + rest.len()
        )
        .into_bytes();
        first.extend_from_slice(&frames);
        (first, rest)
    }

    /// A mount's `Fs` against a fake gatewayd answering batches as `mode` says (its socket
    /// in the returned directory).
    fn against(mode: Batch) -> (tempfile::TempDir, Arc<Fake>, Arc<Fs>, TestClock) {
        let dir = tempfile::tempdir().unwrap();
        let (socket, fake) = fake_gatewayd(dir.path(), mode);
        let (fs, clock) = fs(&socket);
        (dir, fake, fs, clock)
    }

    fn fs(socket: &std::path::Path) -> (Arc<Fs>, TestClock) {
        let client = GatewayClient::new(socket, Duration::from_secs(5));
        let clock = TestClock(Arc::new(Mutex::new(Instant::now())));
        let cache = ContentCache::new(Duration::from_secs(3600), 1 << 20, Box::new(clock.clone()));
        (Arc::new(Fs::new(client, cache, Limits::default())), clock)
    }

    fn cached(fs: &Fs, path: &str) -> Option<Vec<u8>> {
        match fs.cache.lookup(path) {
            Lookup::Fresh(served) => Some(served.body.to_vec().unwrap()),
            _ => None,
        }
    }

    fn nothing_pending(fs: &Fs) -> bool {
        fs.pending.lock().unwrap().is_empty()
    }

    #[tokio::test]
    async fn without_the_batch_route_prefetch_reads_one_by_one_then_asks_again_later() {
        let (_dir, fake, fs, clock) = against(Batch::Missing);
        fs.clone().prefetch(vec!["/s/a".into(), "/s/b".into()]).await;
        assert_eq!(cached(&fs, "/s/a").unwrap(), b"single:/s/a");
        assert_eq!(cached(&fs, "/s/b").unwrap(), b"single:/s/b");
        fs.clone().prefetch(vec!["/s/c".into()]).await;
        assert_eq!(cached(&fs, "/s/c").unwrap(), b"single:/s/c");
        assert_eq!(fake.batches.load(Ordering::SeqCst), 1, "asked once, then known to be missing");
        clock.advance(NO_ROUTE_RETRY - Duration::from_secs(1));
        fs.clone().prefetch(vec!["/s/d".into()]).await;
        assert_eq!(fake.batches.load(Ordering::SeqCst), 1, "still known to be missing");
        clock.advance(Duration::from_secs(1));
        fs.clone().prefetch(vec!["/s/e".into()]).await;
        assert_eq!(fake.batches.load(Ordering::SeqCst), 2, "asked again: gatewayd may have been upgraded");
        assert_eq!(cached(&fs, "/s/e").unwrap(), b"single:/s/e");
        assert_eq!(fake.singles.load(Ordering::SeqCst), 5);
        assert!(nothing_pending(&fs));
    }

    #[tokio::test]
    async fn a_batch_refused_otherwise_is_dropped_and_batching_goes_on() {
        let (_dir, fake, fs, _) = against(Batch::Refused);
        fs.clone().prefetch(vec!["/s/a".into(), "/s/b".into()]).await;
        assert_eq!(cached(&fs, "/s/a"), None, "a refused prefetch is dropped; the open asks");
        assert!(nothing_pending(&fs));
        assert!(fs.batches(), "a refusal is not a missing route");
        fs.clone().prefetch(vec!["/s/c".into()]).await;
        assert_eq!(fake.batches.load(Ordering::SeqCst), 2);
        assert_eq!(fake.singles.load(Ordering::SeqCst), 0, "nothing asked one by one");
    }

    #[tokio::test]
    async fn a_truncated_batch_keeps_the_complete_items_only() {
        let (_dir, fake, fs, _) = against(Batch::Truncated);
        fs.clone().prefetch(vec!["/s/a".into(), "/s/b".into()]).await;
        assert_eq!(cached(&fs, "/s/a").unwrap(), b"batch");
        assert_eq!(cached(&fs, "/s/b"), None, "a cut body is never kept");
        assert!(nothing_pending(&fs), "its open asks again");
        assert!(fs.batches(), "a broken answer is no reason to stop batching");
        assert_eq!(fake.batches.load(Ordering::SeqCst), 1);
        assert_eq!(fs.inflight.available_permits(), Limits::default().max_inflight, "every slot given back");
    }

    #[tokio::test]
    async fn a_frame_out_of_order_drops_the_rest_and_pauses_batching() {
        let (_dir, fake, fs, clock) = against(Batch::OutOfOrder);
        fs.clone().prefetch(vec!["/s/a".into(), "/s/b".into()]).await;
        assert_eq!(cached(&fs, "/s/a").unwrap(), b"batch");
        assert_eq!(cached(&fs, "/s/b"), None);
        assert!(nothing_pending(&fs));
        assert!(!fs.batches(), "an answer this mountd cannot read: one by one for a while");
        fs.clone().prefetch(vec!["/s/c".into()]).await;
        assert_eq!(cached(&fs, "/s/c").unwrap(), b"single:/s/c");
        assert_eq!(fake.batches.load(Ordering::SeqCst), 1);
        clock.advance(PROTOCOL_PAUSE);
        assert!(fs.batches(), "then batches again");
    }

    #[tokio::test]
    async fn members_a_newer_gatewayd_adds_to_a_head_are_ignored() {
        let (_dir, fake, fs, _) = against(Batch::Newer);
        fs.clone().prefetch(vec!["/s/a".into(), "/s/b".into()]).await;
        assert_eq!(cached(&fs, "/s/a").unwrap(), b"batch");
        assert_eq!(cached(&fs, "/s/b").unwrap(), b"new");
        assert!(fs.batches());
        assert_eq!(fake.singles.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_batch_holds_a_slot_per_item_and_gives_them_back_as_items_end() {
        let (_dir, fake, fs, _) = against(Batch::Paused);
        let all = Limits::default().max_inflight;
        assert!(all / 2 > 2, "more slots than the batch has items");
        let asked = fake.asked.notified();
        let prefetch = tokio::spawn(fs.clone().prefetch(vec!["/s/a".into(), "/s/b".into()]));
        asked.await;
        assert_eq!(fs.inflight.available_permits(), all - 2, "two items: two slots, not half of all");
        let mut polls = 0;
        while cached(&fs, "/s/a").is_none() {
            polls += 1;
            assert!(polls < 10_000, "item 0 never arrived");
            tokio::task::yield_now().await;
        }
        assert_eq!(fs.inflight.available_permits(), all - 1, "item 0 ended: its slot is back");
        fake.resume.notify_one();
        prefetch.await.unwrap();
        assert_eq!(cached(&fs, "/s/b").unwrap(), b"paused");
        assert_eq!(fs.inflight.available_permits(), all);
        assert!(nothing_pending(&fs));
    }

    #[tokio::test]
    async fn a_batch_takes_the_slots_that_are_free_and_never_waits_for_more() {
        let (_dir, fake, fs, _) = against(Batch::Paused);
        let all = Limits::default().max_inflight;
        // Opens hold all slots but one: the batch goes with that one (waiting for two would
        // also hold up every open queued after it).
        let busy = fs.inflight.acquire_many(u32::try_from(all - 1).unwrap()).await.unwrap();
        let asked = fake.asked.notified();
        let prefetch = tokio::spawn(fs.clone().prefetch(vec!["/s/a".into(), "/s/b".into()]));
        tokio::time::timeout(Duration::from_secs(10), asked).await.expect("the batch went with the one free slot");
        assert_eq!(fs.inflight.available_permits(), 0);
        drop(busy);
        fake.resume.notify_one();
        prefetch.await.unwrap();
        assert_eq!(cached(&fs, "/s/b").unwrap(), b"paused");
        assert_eq!(fs.inflight.available_permits(), all);
    }
}
