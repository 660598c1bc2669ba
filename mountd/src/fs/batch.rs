//! Prefetch through `POST /v1/fs/read-batch`: the files ahead of a sequential reader asked
//! for in one request instead of one request each. gatewayd reads each path exactly as its
//! own `GET /v1/fs/read` (rights, audit, masking, limits, errors) and answers with frames
//! ([`agentfs::wire::batch`]), parsed strictly here: a body goes to the cache only once its
//! end frame arrived in order and at its announced length; a frame out of order, a malformed
//! one or an answer that breaks off drops every item not yet complete (its open asks again).
//! Against a gatewayd without the route, the paths are fetched one by one.

use std::sync::atomic::Ordering;

use agentfs::wire::batch::{self as wire, Decoder, Event, ItemTracker, ReadBatchRequest};
use agentfs::wire::ErrorCode;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, StatusCode};
use tokio::sync::watch;

use super::body::Collector;
use super::cache::Validators;
use super::Fs;

/// A path being prefetched, and the sender that tells the opens waiting for it.
pub(super) type Waited = (String, watch::Sender<bool>);

/// An item's body as it arrives.
type Arriving = Option<(Collector, Validators)>;

impl Fs {
    /// Whether prefetch asks in batches: until gatewayd answers that it has no such route.
    pub(super) fn batches(&self) -> bool {
        !self.no_batch.load(Ordering::Relaxed)
    }

    /// Prefetch is over for `item`: the opens waiting for it go on (to the cache, or to ask).
    pub(super) fn prefetch_done(&self, (path, tx): Waited) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&path);
        let _ = tx.send(true);
    }

    /// Fetches `items` into the cache in batches of at most [`wire::MAX_PATHS`]. Returns the
    /// items to fetch one by one instead: those not asked for once gatewayd answered that it
    /// has no batch route (an older gatewayd), or refused a batch as a whole.
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

    /// One batch request, holding half of `--max-inflight` (gatewayd runs that many of its
    /// reads at once). `Err`: gatewayd refused the batch as a whole; its items are returned.
    async fn read_batch(&self, items: Vec<Waited>) -> Result<(), Vec<Waited>> {
        let concurrency = (self.limits.max_inflight / 2).clamp(1, wire::MAX_CONCURRENT);
        let n_slots = u32::try_from(concurrency).unwrap_or(1);
        // The semaphore is never closed, so acquiring only waits.
        let _slots = self.inflight.acquire_many(n_slots).await.ok();
        let request =
            ReadBatchRequest { paths: items.iter().map(|(p, _)| p.clone()).collect(), concurrency: Some(n_slots) };
        let payload = match serde_json::to_vec(&request) {
            Ok(p) => p,
            Err(_) => return Err(items),
        };
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
            // An older gatewayd answers an unknown route `bad_request` (or 404/405).
            if matches!(status, StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED)
                || error.code() == ErrorCode::BadRequest
            {
                self.no_batch.store(true, Ordering::Relaxed);
            }
            tracing::debug!(status = status.as_u16(), error = %error, "prefetch: read batch refused; one by one");
            return Err(items);
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
                    Ok(None) => break decoder.finish().map_err(|e| e.to_string()),
                    Err(e) => break Err(e.to_string()),
                };
                decoder.push(&chunk);
                if let Err(e) = self.take_frames(&mut decoder, &mut tracker, &mut bodies, &mut waiting) {
                    break Err(e.to_string());
                }
            };
            if let Err(e) = outcome {
                tracing::debug!(error = %e, "prefetch: the read batch broke off");
            }
        } else {
            tracing::debug!("prefetch: the read batch's answer is not framed");
        }
        // Every item not complete is dropped: its open asks again.
        waiting.into_iter().flatten().for_each(|w| self.prefetch_done(w));
        Ok(())
    }

    /// Applies every whole frame that has arrived.
    fn take_frames(
        &self,
        decoder: &mut Decoder,
        tracker: &mut ItemTracker,
        bodies: &mut [Arriving],
        waiting: &mut [Option<Waited>],
    ) -> Result<(), wire::FrameError> {
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
                        self.cache.put_prefetched(path, collector.finish(), validators);
                    }
                    if let Some(w) = waiting[i].take() {
                        self.prefetch_done(w);
                    }
                }
                Event::Failed(i, error) => {
                    bodies[i] = None;
                    if let Some(w) = waiting[i].take() {
                        tracing::debug!(path = %w.0, error = %error.message, "prefetch");
                        self.prefetch_done(w);
                    }
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
    use std::sync::Arc;
    use std::time::Duration;

    use agentfs::client::GatewayClient;
    use agentfs::wire::batch::{self as wire, encode, FrameKind, ItemHead};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    use super::super::cache::{ContentCache, Lookup, SystemClock};
    use super::super::{Fs, Limits};

    /// How the fake gatewayd answers a read batch.
    #[derive(Clone, Copy)]
    enum Batch {
        /// An older gatewayd: no such route.
        Missing,
        /// Item 0 whole; item 1 cut inside its data, the answer ending there.
        Truncated,
        /// Item 0 whole, then data of item 1 before its head.
        OutOfOrder,
    }

    /// A gatewayd on a Unix socket: single reads answer `single:PATH`; read batches as `mode`
    /// says. Counts the batch requests.
    fn fake_gatewayd(dir: &std::path::Path, mode: Batch) -> (std::path::PathBuf, Arc<AtomicUsize>) {
        let socket = dir.join("gw.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = batches.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else { return };
                let counted = counted.clone();
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
                    let answer = if target.starts_with("/v1/fs/read-batch") {
                        counted.fetch_add(1, Ordering::SeqCst);
                        batch_answer(mode)
                    } else {
                        let path = target.split("path=").nth(1).unwrap().replace("%2F", "/");
                        let body = format!("single:{path}");
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
                            .into_bytes()
                    };
                    let _ = conn.write_all(&answer).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        (socket, batches)
    }

    fn batch_answer(mode: Batch) -> Vec<u8> {
        if let Batch::Missing = mode {
            let body = r#"{"code":"bad_request","message":"gatewayd: no such route"}"#;
            return format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes();
        }
        let head =
            |len| serde_json::to_vec(&ItemHead { upstream_status: Some(200), length: len, ..ItemHead::default() });
        let mut frames = Vec::new();
        encode(FrameKind::Head, 0, &head(Some(5)).unwrap(), &mut frames);
        encode(FrameKind::Data, 0, b"batch", &mut frames);
        encode(FrameKind::End, 0, &[], &mut frames);
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
            Batch::Missing => {}
        }
        let mut out = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            wire::CONTENT_TYPE,
            frames.len()
        )
        .into_bytes();
        out.extend_from_slice(&frames);
        out
    }

    fn fs(socket: &std::path::Path) -> Arc<Fs> {
        let client = GatewayClient::new(socket, Duration::from_secs(5));
        let cache = ContentCache::new(Duration::from_secs(60), 1 << 20, Box::new(SystemClock));
        Arc::new(Fs::new(client, cache, Limits::default()))
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
    async fn without_the_batch_route_prefetch_reads_one_by_one_from_then_on() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, batches) = fake_gatewayd(dir.path(), Batch::Missing);
        let fs = fs(&socket);
        fs.clone().prefetch(vec!["/s/a".into(), "/s/b".into()]).await;
        assert_eq!(cached(&fs, "/s/a").unwrap(), b"single:/s/a");
        assert_eq!(cached(&fs, "/s/b").unwrap(), b"single:/s/b");
        fs.clone().prefetch(vec!["/s/c".into()]).await;
        assert_eq!(cached(&fs, "/s/c").unwrap(), b"single:/s/c");
        assert_eq!(batches.load(Ordering::SeqCst), 1, "asked once, then known to be missing");
        assert!(nothing_pending(&fs));
    }

    #[tokio::test]
    async fn a_truncated_batch_keeps_the_complete_items_only() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, batches) = fake_gatewayd(dir.path(), Batch::Truncated);
        let fs = fs(&socket);
        fs.clone().prefetch(vec!["/s/a".into(), "/s/b".into()]).await;
        assert_eq!(cached(&fs, "/s/a").unwrap(), b"batch");
        assert_eq!(cached(&fs, "/s/b"), None, "a cut body is never kept");
        assert!(nothing_pending(&fs), "its open asks again");
        assert!(fs.batches(), "a broken answer is no reason to stop batching");
        assert_eq!(batches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_frame_out_of_order_drops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, _) = fake_gatewayd(dir.path(), Batch::OutOfOrder);
        let fs = fs(&socket);
        fs.clone().prefetch(vec!["/s/a".into(), "/s/b".into()]).await;
        assert_eq!(cached(&fs, "/s/a").unwrap(), b"batch");
        assert_eq!(cached(&fs, "/s/b"), None);
        assert!(nothing_pending(&fs));
    }
}
