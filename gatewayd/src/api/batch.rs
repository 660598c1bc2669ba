//! `POST /v1/fs/read-batch`: several reads in one request (mountd's prefetch). Each path is
//! read by [`super::fs::read_one`], exactly as its own `GET /v1/fs/read`: the caller's rights
//! checked per path, one audit record per path, the same masking, limits and errors; an
//! error of one path is that path's answer. The reads run concurrently (a bound per
//! request) and each is written as framed items ([`agentfs::wire::batch`]) as it completes.
//!
//! The reads run in a task of their own, which the answer's body aborts when it is dropped
//! (the caller went away): the reads in flight stop there, recorded `cancelled` as a single
//! read whose caller went away, and the paths not yet started are never read. The answer
//! queued ahead of a slow reader is bounded in bytes ([`QUEUED_BYTES`]).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use agentfs::path::VPath;
use agentfs::wire::batch::{self as wire, FrameKind, ItemHead, ReadBatchRequest};
use agentfs::wire::ErrorBody;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::audit::Pending;
use super::error::{code_of_body_error, ApiError};
use super::fs::{caller, read_one, ReadHead, ReadOne};
use crate::audit::Operation;
use crate::ops::{self, Caller};
use crate::Gateway;

/// Most bytes of one answer queued ahead of its reader; an item waits for room before it
/// queues more. (A piece is never held back for being larger than this: it waits for the
/// whole budget instead.)
pub const QUEUED_BYTES: usize = 4 * 1024 * 1024;

/// Pieces queued ahead of a slow reader (the byte budget is the real bound).
const QUEUED: usize = 64;

/// A payload at most this long is copied behind its frame's header into one piece; a longer
/// one is queued as it is (a slice of the body it belongs to), after a piece holding the header.
const COPY_MAX: usize = 16 * 1024;

/// `POST /v1/fs/read-batch`. A request refused whole is answered with one error and one
/// record with no target: a token that is not usable at all (not issued here, revoked,
/// expired: the code a single read gives), a malformed request (not the JSON, no paths or
/// over [`wire::MAX_PATHS`], a concurrency of 0, a malformed `Authorization` header). An
/// accepted one is answered `200` with the frames, and recorded per path.
pub async fn read_batch(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    req: Result<Json<ReadBatchRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let mut audit = Pending::start(&gw, Operation::Read);
    let who = caller(&headers, &mut audit);
    let who = audit.check(who)?;
    // Once for the batch: a token refused whatever the path would otherwise be refused once
    // per path. What it allows is still checked per path.
    audit.check(ops::usable(&gw, &who).map_err(ApiError::from))?;
    let Json(req) = audit.check(req.map_err(|e| ApiError::bad_request(format!("gatewayd: {}", e.body_text()))))?;
    if req.paths.is_empty() {
        return Err(audit.fail(ApiError::bad_request("gatewayd: a read batch names at least one path")));
    }
    if req.paths.len() > wire::MAX_PATHS {
        let message =
            format!("gatewayd: a read batch holds at most {} paths, not {}", wire::MAX_PATHS, req.paths.len());
        return Err(audit.fail(ApiError::bad_request(message)));
    }
    let concurrency = match req.concurrency {
        None => wire::MAX_CONCURRENT,
        Some(0) => return Err(audit.fail(ApiError::bad_request("gatewayd: a read batch's concurrency is at least 1"))),
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX).min(wire::MAX_CONCURRENT),
    };
    let agent = audit.agent_name().to_owned();
    // Accepted: each path gets its own record instead.
    audit.withdraw();
    let (queue, rx) = Queue::new(QUEUED_BYTES);
    let task = tokio::spawn(run(gw, who, agent, req.paths, concurrency, queue));
    let answer = Answer { rx, tail: None, _task: AbortOnDrop(task) };
    let mut resp = Body::from_stream(answer).into_response();
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(wire::CONTENT_TYPE));
    Ok(resp)
}

/// Reads every path, `concurrency` at a time, queueing each item's frames. Aborted (with
/// every read in flight) when the answer's reader goes away.
async fn run(gw: Arc<Gateway>, who: Caller, agent: String, paths: Vec<String>, concurrency: usize, queue: Queue) {
    let started = std::time::Instant::now();
    let count = paths.len();
    futures_util::stream::iter(paths.into_iter().enumerate())
        .for_each_concurrent(concurrency, |(index, raw)| {
            let (gw, who, agent, queue) = (&gw, &who, &agent, &queue);
            async move {
                // At most MAX_PATHS items, so the index fits.
                let index = u16::try_from(index).unwrap_or(u16::MAX);
                // The reader went away: the answer's body, once dropped, aborts this task;
                // until then the items that notice it stop on their own.
                if item(gw, who, agent, index, &raw, queue).await.is_err() {
                    tracing::debug!(index, "read batch: the reader went away");
                }
            }
        })
        .await;
    tracing::debug!(paths = count, ms = started.elapsed().as_millis() as u64, "read batch");
}

/// Reads one path and queues its frames: the head, the body's pieces (slices of it, never
/// copied when large), then its end; or its error. `Err`: the reader went away.
async fn item(gw: &Arc<Gateway>, who: &Caller, agent: &str, index: u16, raw: &str, queue: &Queue) -> Result<(), Gone> {
    if queue.is_closed() {
        return Err(Gone);
    }
    let mut audit = Pending::start(gw, Operation::Read);
    audit.agent(agent.to_owned());
    if let Err(e) = audit.admit() {
        return queue.meta(FrameKind::Error, index, &error_json(&e)).await;
    }
    let path = match audit.path(VPath::parse(raw).map_err(ApiError::from)) {
        Ok(path) => path,
        Err(e) => return queue.meta(FrameKind::Error, index, &error_json(&e)).await,
    };
    let (head, mut body) = match read_one(gw, who, &path, crate::upstream::Validators::default(), audit).await {
        ReadOne::Failed(e) => return queue.meta(FrameKind::Error, index, &error_json(&e)).await,
        ReadOne::Whole { head, body } => {
            queue.meta(FrameKind::Head, index, &head_json(&head)).await?;
            queue.data(index, body).await?;
            return queue.meta(FrameKind::End, index, &[]).await;
        }
        ReadOne::Streamed { head, body } => (head, body),
    };
    let status = head.upstream_status;
    queue.meta(FrameKind::Head, index, &head_json(&head)).await?;
    loop {
        // Dropping `body` (the task aborted, the reader gone) records the read `cancelled`.
        match body.next().await {
            Some(Ok(chunk)) => queue.data(index, chunk).await?,
            Some(Err(e)) => {
                let code = code_of_body_error(&e);
                let message = format!("gatewayd: the upstream body failed part way: {e}");
                let body = ErrorBody { code, message, upstream_status: status };
                return queue.meta(FrameKind::Error, index, &error_body_json(body)).await;
            }
            None => return queue.meta(FrameKind::End, index, &[]).await,
        }
    }
}

/// The answer's reader went away.
#[derive(Debug)]
struct Gone;

/// Bytes queued for the answer: a frame's header (and a short payload), then possibly a
/// long payload as it is. Holds its share of the byte budget until it is taken.
struct Piece {
    head: Bytes,
    tail: Bytes,
    budget: OwnedSemaphorePermit,
}

/// The sending side of an answer: pieces whole frames at a time (a frame's pieces are never
/// split by another item's), within a byte budget.
struct Queue {
    tx: mpsc::Sender<Piece>,
    budget: Arc<Semaphore>,
    limit: usize,
}

impl Queue {
    /// A queue holding at most `limit` bytes not yet taken by its reader.
    fn new(limit: usize) -> (Queue, mpsc::Receiver<Piece>) {
        let (tx, rx) = mpsc::channel(QUEUED);
        let limit = limit.clamp(1, u32::MAX as usize);
        (Queue { tx, budget: Arc::new(Semaphore::new(limit)), limit }, rx)
    }

    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    async fn send(&self, head: Bytes, tail: Bytes) -> Result<(), Gone> {
        let want = u32::try_from((head.len() + tail.len()).min(self.limit)).unwrap_or(u32::MAX);
        // The semaphore is never closed.
        let budget = self.budget.clone().acquire_many_owned(want).await.map_err(|_| Gone)?;
        self.tx.send(Piece { head, tail, budget }).await.map_err(|_| Gone)
    }

    /// A head, end or error frame (payload at most [`wire::MAX_META`]).
    async fn meta(&self, kind: FrameKind, index: u16, payload: &[u8]) -> Result<(), Gone> {
        let mut out = Vec::with_capacity(wire::FRAME_HEADER_LEN + payload.len());
        wire::encode(kind, index, payload, &mut out);
        self.send(out.into(), Bytes::new()).await
    }

    /// `body` as data frames of at most [`wire::MAX_DATA`]; a long piece is a slice of
    /// `body`, not a copy.
    async fn data(&self, index: u16, body: Bytes) -> Result<(), Gone> {
        let mut at = 0;
        while at < body.len() {
            let end = body.len().min(at + wire::MAX_DATA);
            let payload = body.slice(at..end);
            at = end;
            if payload.len() <= COPY_MAX {
                let mut out = Vec::with_capacity(wire::FRAME_HEADER_LEN + payload.len());
                wire::encode(FrameKind::Data, index, &payload, &mut out);
                self.send(out.into(), Bytes::new()).await?;
            } else {
                let mut header = Vec::with_capacity(wire::FRAME_HEADER_LEN);
                wire::encode_header(FrameKind::Data, index, payload.len(), &mut header);
                self.send(header.into(), payload).await?;
            }
        }
        Ok(())
    }
}

/// Aborts the reads when the answer is dropped (its reader went away).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The answer's body: the queued pieces, each piece's budget given back once it is taken.
struct Answer {
    rx: mpsc::Receiver<Piece>,
    /// The long payload of the piece whose header was just taken, with the piece's budget.
    tail: Option<(Bytes, OwnedSemaphorePermit)>,
    /// The reads, aborted when this is dropped.
    _task: AbortOnDrop,
}

impl Stream for Answer {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some((tail, _budget)) = this.tail.take() {
            return Poll::Ready(Some(Ok(tail)));
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(Piece { head, tail, budget })) => {
                if !tail.is_empty() {
                    this.tail = Some((tail, budget));
                }
                Poll::Ready(Some(Ok(head)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The error an item answers with: the body `GET /v1/fs/read` would answer with.
fn error_json(e: &ApiError) -> Vec<u8> {
    error_body_json(ErrorBody { code: e.code(), message: e.message().to_owned(), upstream_status: e.upstream_status() })
}

/// `body` as its frame carries it: its message cut (at a character) so that the encoded
/// payload fits in a frame ([`wire::MAX_META`]); escaping may make a message up to six times
/// longer than it is. Messages are far shorter (an upstream's excerpt is 2 KiB).
fn error_body_json(mut body: ErrorBody) -> Vec<u8> {
    let out = json(&body);
    if out.len() <= wire::MAX_META {
        return out;
    }
    let message_len: usize = body.message.chars().map(escaped_len).sum();
    let mut room = wire::MAX_META.saturating_sub(out.len().saturating_sub(message_len));
    let mut cut = body.message.len();
    for (at, c) in body.message.char_indices() {
        match room.checked_sub(escaped_len(c)) {
            Some(left) => room = left,
            None => {
                cut = at;
                break;
            }
        }
    }
    body.message.truncate(cut);
    let out = json(&body);
    if out.len() <= wire::MAX_META {
        return out;
    }
    body.message.clear();
    json(&body)
}

/// The bytes `c` takes in a JSON string as `serde_json` writes it.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 2,
        c if u32::from(c) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// The head as its frame carries it; a header value that is not text is left out, and all
/// three are when together they would not fit in a frame ([`wire::MAX_META`]).
fn head_json(head: &ReadHead) -> Vec<u8> {
    let text = |v: &Option<HeaderValue>| v.as_ref().and_then(|v| v.to_str().ok()).map(str::to_owned);
    let item = ItemHead {
        upstream_status: head.upstream_status,
        content_type: text(&head.content_type),
        etag: text(&head.etag),
        last_modified: text(&head.last_modified),
        length: head.length,
    };
    let out = json(&item);
    if out.len() <= wire::MAX_META {
        return out;
    }
    json(&ItemHead { upstream_status: item.upstream_status, length: item.length, ..ItemHead::default() })
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of strings and numbers always serialize.
    serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use agentfs::wire::ErrorCode;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use agentfs::wire::batch::{Decoder, Event, ItemTracker};

    use super::*;

    /// An answer whose reads are `task`.
    fn answer(rx: mpsc::Receiver<Piece>, task: JoinHandle<()>) -> Answer {
        Answer { rx, tail: None, _task: AbortOnDrop(task) }
    }

    #[test]
    fn an_error_frame_fits_whatever_its_message_escapes_to() {
        let long = ["\u{1}".repeat(60_000), "\"".repeat(40_000), "é\u{1}\n".repeat(20_000), "x".repeat(70_000)];
        for message in long {
            let e = ApiError::new(ErrorCode::UpstreamFailed, message.clone());
            let payload = error_json(&e);
            assert!(payload.len() <= wire::MAX_META, "{} bytes", payload.len());
            assert!(payload.len() + 6 > wire::MAX_META, "cut no more than needed: {} bytes", payload.len());
            let back: ErrorBody = serde_json::from_slice(&payload).unwrap();
            assert_eq!(back.code, ErrorCode::UpstreamFailed);
            assert!(message.starts_with(&back.message), "a prefix of the message");
        }
        let e = ApiError::new(ErrorCode::NotFound, "gatewayd: \"x\" is not there\n");
        let back: ErrorBody = serde_json::from_slice(&error_json(&e)).unwrap();
        assert_eq!(back.message, e.message(), "a short message whole");
        for c in ['"', '\\', '\n', '\u{1}', '\u{1f}', 'é', '€', '😀', 'a', '\u{7f}'] {
            assert_eq!(escaped_len(c), serde_json::to_string(&c.to_string()).unwrap().len() - 2, "{c:?}");
        }
    }

    #[tokio::test]
    async fn a_whole_body_goes_out_as_slices_of_itself() {
        let body: Bytes = (0..3 * wire::MAX_DATA + 12_345).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
        let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
        let (queue, mut rx) = Queue::new(QUEUED_BYTES);
        let sent = body.clone();
        let task = tokio::spawn(async move {
            queue
                .meta(FrameKind::Head, 3, &json(&ItemHead { length: Some(sent.len() as u64), ..ItemHead::default() }))
                .await
                .unwrap();
            queue.data(3, sent).await.unwrap();
            queue.meta(FrameKind::End, 3, &[]).await.unwrap();
        });
        let mut wire_bytes = Vec::new();
        let mut long = 0;
        while let Some(piece) = rx.recv().await {
            if !piece.tail.is_empty() {
                long += 1;
                let at = piece.tail.as_ptr() as usize;
                assert!(range.contains(&at) && range.contains(&(at + piece.tail.len() - 1)), "not a copy");
                assert_eq!(piece.head.len(), wire::FRAME_HEADER_LEN);
            }
            wire_bytes.extend_from_slice(&piece.head);
            wire_bytes.extend_from_slice(&piece.tail);
        }
        task.await.unwrap();
        // Three of 1 MiB as they are; the last, of 12,345 bytes, copied behind its header.
        assert_eq!(long, 3);
        let mut decoder = Decoder::default();
        decoder.push(&wire_bytes);
        let mut tracker = ItemTracker::new(4);
        let mut got = Vec::new();
        while let Some(frame) = decoder.next_frame().unwrap() {
            assert!(frame.payload.len() <= wire::MAX_DATA);
            if let Event::Data(3, bytes) = tracker.accept(frame).unwrap() {
                got.extend_from_slice(&bytes);
            }
        }
        decoder.finish().unwrap();
        assert_eq!(got, body);
    }

    #[tokio::test]
    async fn the_queue_holds_at_most_its_byte_budget() {
        const PIECE: usize = 30_000;
        let (queue, rx) = Queue::new(100_000);
        let queued = Arc::new(AtomicUsize::new(0));
        let counted = queued.clone();
        let task = tokio::spawn(async move {
            for _ in 0..10 {
                queue.data(0, Bytes::from(vec![7u8; PIECE])).await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
        let settle = || async {
            for _ in 0..20 {
                tokio::task::yield_now().await;
            }
        };
        let mut answer = answer(rx, task);
        settle().await;
        assert_eq!(queued.load(Ordering::SeqCst), 3, "three pieces fit in 100,000 bytes, not four");
        // A piece taken (its header, then its payload) makes room for one more.
        let head = answer.next().await.unwrap().unwrap();
        assert_eq!(head.len(), wire::FRAME_HEADER_LEN);
        settle().await;
        assert_eq!(queued.load(Ordering::SeqCst), 3, "not before its payload is taken too");
        assert_eq!(answer.next().await.unwrap().unwrap().len(), PIECE);
        settle().await;
        assert_eq!(queued.load(Ordering::SeqCst), 4);
        let mut total = wire::FRAME_HEADER_LEN + PIECE;
        while let Some(piece) = answer.next().await {
            total += piece.unwrap().len();
        }
        assert_eq!(total, 10 * (wire::FRAME_HEADER_LEN + PIECE));
    }

    #[tokio::test]
    async fn dropping_the_answer_stops_the_reads() {
        let (queue, rx) = Queue::new(QUEUED_BYTES);
        let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
        let (dropped_tx, dropped) = tokio::sync::oneshot::channel::<()>();
        struct Flag(Option<tokio::sync::oneshot::Sender<()>>);
        impl Drop for Flag {
            fn drop(&mut self) {
                if let Some(tx) = self.0.take() {
                    let _ = tx.send(());
                }
            }
        }
        let task = tokio::spawn(async move {
            let _flag = Flag(Some(dropped_tx));
            let _queue = queue;
            let _ = started_tx.send(());
            // A read that never ends on its own.
            std::future::pending::<()>().await;
        });
        let answer = answer(rx, task);
        started.await.unwrap();
        drop(answer);
        dropped.await.unwrap();
    }
}
