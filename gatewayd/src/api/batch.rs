//! `POST /v1/fs/read-batch`: several reads in one request (mountd's prefetch). Each path is
//! read by [`super::fs::read_one`], exactly as its own `GET /v1/fs/read`: the caller's rights
//! checked per path, one audit record per path, the same masking, limits and errors; an
//! error of one path is that path's answer. The reads run concurrently (a bound per
//! request) and each is written as framed items ([`agentfs::wire::batch`]) as it completes.

use std::convert::Infallible;
use std::sync::Arc;

use agentfs::path::VPath;
use agentfs::wire::batch::{self as wire, FrameKind, ItemHead, ReadBatchRequest};
use agentfs::wire::{ErrorBody, ErrorCode};
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::audit::Pending;
use super::error::ApiError;
use super::fs::{caller, read_one, ReadHead, ReadOne};
use crate::audit::Operation;
use crate::ops::Caller;
use crate::Gateway;

/// Answer pieces (one or more frames each) queued ahead of a slow reader of the answer.
const QUEUED: usize = 32;

/// `POST /v1/fs/read-batch`. A malformed request (not the JSON, over [`wire::MAX_PATHS`]
/// paths, a malformed `Authorization` header) is refused whole, with one record; an accepted
/// one is answered `200` with the frames, and recorded per path.
pub async fn read_batch(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    req: Result<Json<ReadBatchRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let mut audit = Pending::start(&gw, Operation::Read);
    let who = caller(&headers, &mut audit);
    let who = audit.check(who)?;
    let Json(req) = audit.check(req.map_err(|e| ApiError::bad_request(format!("gatewayd: {}", e.body_text()))))?;
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
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUED);
    tokio::spawn(run(gw, who, agent, req.paths, concurrency, tx));
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|piece| (Ok::<_, Infallible>(piece), rx))
    });
    let mut resp = Body::from_stream(frames).into_response();
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(wire::CONTENT_TYPE));
    Ok(resp)
}

/// Reads every path, `concurrency` at a time, sending each item's frames to `tx`. Once the
/// answer's reader is gone, paths not yet started are not read.
async fn run(
    gw: Arc<Gateway>,
    who: Caller,
    agent: String,
    paths: Vec<String>,
    concurrency: usize,
    tx: mpsc::Sender<Bytes>,
) {
    let started = std::time::Instant::now();
    let count = paths.len();
    futures_util::stream::iter(paths.into_iter().enumerate())
        .for_each_concurrent(concurrency, |(index, raw)| {
            let (gw, who, agent, tx) = (&gw, &who, &agent, &tx);
            async move {
                if tx.is_closed() {
                    return;
                }
                // At most MAX_PATHS items, so the index fits.
                let index = u16::try_from(index).unwrap_or(u16::MAX);
                item(gw, who, agent, index, &raw, tx).await;
            }
        })
        .await;
    tracing::debug!(paths = count, ms = started.elapsed().as_millis() as u64, "read batch");
}

/// Reads one path and sends its frames: the whole item at once when its body is in hand,
/// else the head, then the body's pieces as they arrive, then its end (or its error).
async fn item(gw: &Arc<Gateway>, who: &Caller, agent: &str, index: u16, raw: &str, tx: &mpsc::Sender<Bytes>) {
    let mut audit = Pending::start(gw, Operation::Read);
    audit.agent(agent.to_owned());
    if let Err(e) = audit.admit() {
        let _ = tx.send(error_frame(index, &e)).await;
        return;
    }
    let path = match audit.path(VPath::parse(raw).map_err(ApiError::from)) {
        Ok(path) => path,
        Err(e) => {
            let _ = tx.send(error_frame(index, &e)).await;
            return;
        }
    };
    let (head, mut body) = match read_one(gw, who, &path, crate::upstream::Validators::default(), audit).await {
        ReadOne::Failed(e) => {
            let _ = tx.send(error_frame(index, &e)).await;
            return;
        }
        ReadOne::Whole { head, body } => {
            let mut out = Vec::with_capacity(body.len() + 256);
            wire::encode(FrameKind::Head, index, &head_json(&head), &mut out);
            for piece in body.chunks(wire::MAX_DATA) {
                wire::encode(FrameKind::Data, index, piece, &mut out);
            }
            wire::encode(FrameKind::End, index, &[], &mut out);
            let _ = tx.send(out.into()).await;
            return;
        }
        ReadOne::Streamed { head, body } => (head, body),
    };
    let status = head.upstream_status;
    if tx.send(frame(FrameKind::Head, index, &head_json(&head))).await.is_err() {
        return;
    }
    loop {
        // A reader that went away drops `body`: its record says so.
        match body.next().await {
            Some(Ok(chunk)) => {
                for piece in chunk.chunks(wire::MAX_DATA) {
                    if tx.send(frame(FrameKind::Data, index, piece)).await.is_err() {
                        return;
                    }
                }
            }
            Some(Err(e)) => {
                let code = match e.kind() {
                    std::io::ErrorKind::FileTooLarge => ErrorCode::TooLarge,
                    _ => ErrorCode::UpstreamFailed,
                };
                let message = format!("gatewayd: the upstream body failed part way: {e}");
                let body = ErrorBody { code, message, upstream_status: status };
                let _ = tx.send(frame(FrameKind::Error, index, &json(&body))).await;
                return;
            }
            None => {
                let _ = tx.send(frame(FrameKind::End, index, &[])).await;
                return;
            }
        }
    }
}

fn frame(kind: FrameKind, index: u16, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(wire::FRAME_HEADER_LEN + payload.len());
    wire::encode(kind, index, payload, &mut out);
    out.into()
}

/// The error an item answers with: the body `GET /v1/fs/read` would answer with.
fn error_frame(index: u16, e: &ApiError) -> Bytes {
    let mut message = e.message().to_owned();
    // A frame's payload is capped; messages are far shorter (an upstream's excerpt is 2 KiB).
    if message.len() > wire::MAX_META / 2 {
        let mut cut = wire::MAX_META / 2;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    let body = ErrorBody { code: e.code(), message, upstream_status: e.upstream_status() };
    frame(FrameKind::Error, index, &json(&body))
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
