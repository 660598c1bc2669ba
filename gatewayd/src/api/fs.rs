//! `/v1/fs/*`: stat, list, read, write and delete on canonical virtual paths.

use std::sync::Arc;

use agentfs::path::VPath;
use agentfs::wire::{Entry, Listing};
use axum::body::Body;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::header::{
    AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;

use super::audit::{Metered, Pending};
use super::error::ApiError;
use crate::audit::Operation;
use crate::ops::Caller;
use crate::{ops, Gateway};

/// `?path=/domain/...`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathQuery {
    path: String,
}

/// The caller: an agent when the request carries `Authorization: Bearer <token>`, else the
/// owner (the socket admits only the owner's uid). The audit records the agent the token
/// names; the operation itself verifies the token. Refused while the audit log cannot be
/// written.
pub(super) fn caller(headers: &HeaderMap, audit: &mut Pending) -> Result<Caller, ApiError> {
    audit.admit()?;
    let Some(value) = headers.get(AUTHORIZATION) else { return Ok(Caller::Owner) };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                agentfs::wire::ErrorCode::PermissionDenied,
                "gatewayd: the Authorization header is not `Bearer <token>`",
            )
        })?;
    let claimed = audit.gateway().auth.claimed_agent(token);
    audit.agent(claimed.unwrap_or_else(|| "unknown".to_owned()));
    Ok(Caller::Agent(token.to_owned()))
}

fn parse(q: Result<Query<PathQuery>, QueryRejection>) -> Result<VPath, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(format!("gatewayd: {e}")))?;
    Ok(VPath::parse(&q.path)?)
}

pub async fn stat(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    q: Result<Query<PathQuery>, QueryRejection>,
) -> Result<Json<Entry>, ApiError> {
    let mut audit = Pending::start(&gw, Operation::Stat);
    let who = caller(&headers, &mut audit);
    let who = audit.check(who)?;
    let path = audit.path(parse(q))?;
    audit.finish(ops::stat(&gw, &who, &path).map(Json))
}

pub async fn list(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    q: Result<Query<PathQuery>, QueryRejection>,
) -> Result<Json<Listing>, ApiError> {
    let mut audit = Pending::start(&gw, Operation::List);
    let who = caller(&headers, &mut audit);
    let who = audit.check(who)?;
    let path = audit.path(parse(q))?;
    audit.finish(ops::list(&gw, &who, &path).await.map(Json))
}

/// Streams the upstream body; a body that grows past the cap is cut off with an error.
pub async fn read(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    q: Result<Query<PathQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let mut audit = Pending::start(&gw, Operation::Read);
    let who = caller(&headers, &mut audit);
    let who = audit.check(who)?;
    let path = audit.path(parse(q))?;
    let validators = crate::upstream::Validators {
        if_none_match: headers.get(IF_NONE_MATCH).cloned(),
        if_modified_since: headers.get(IF_MODIFIED_SINCE).cloned(),
    };
    match read_one(&gw, &who, &path, validators, audit).await {
        ReadOne::Failed(e) => Err(e),
        done => Ok(done.into_response()),
    }
}

/// What a read of one path says before its body: the headers of `GET /v1/fs/read`.
#[derive(Debug, Default)]
pub(super) struct ReadHead {
    /// The upstream's status (`304` for a current body); none for a generated file or a
    /// JSON-RPC result.
    pub upstream_status: Option<u16>,
    /// The body's media type (none on a `304`).
    pub content_type: Option<HeaderValue>,
    /// The upstream's `ETag`, unless it holds the credential.
    pub etag: Option<HeaderValue>,
    /// The upstream's `Last-Modified`, unless it holds the credential.
    pub last_modified: Option<HeaderValue>,
    /// The exact length of the body, when known before it is sent.
    pub length: Option<u64>,
}

/// The outcome of reading one path: what `GET /v1/fs/read` and each item of
/// `POST /v1/fs/read-batch` answer.
pub(super) enum ReadOne {
    /// The whole body is in hand (a generated file, a JSON-RPC result, a small upstream
    /// body); its record is written.
    Whole {
        /// The head.
        head: ReadHead,
        /// The body, masked.
        body: Bytes,
    },
    /// The body streams on; the stream records the operation when it ends, fails or is
    /// dropped. A `304` (head's `upstream_status`) streams nothing.
    Streamed {
        /// The head.
        head: ReadHead,
        /// The body, masked, capped at `upstream.max_body_bytes`.
        body: Metered,
    },
    /// The read failed; its record is written.
    Failed(ApiError),
}

/// Reads `path` for `who`, recording the operation in `audit` (whose caller is checked):
/// the one implementation behind `GET /v1/fs/read` and `POST /v1/fs/read-batch`.
/// `validators` (the caller's `If-None-Match`/`If-Modified-Since`) go to the upstream.
pub(super) async fn read_one(
    gw: &Gateway,
    who: &Caller,
    path: &VPath,
    validators: crate::upstream::Validators,
    audit: Pending,
) -> ReadOne {
    let started = std::time::Instant::now();
    match ops::read(gw, who, path, validators).await {
        Ok(out) => {
            if let ops::Output::Upstream(resp) = &out {
                let ms = started.elapsed().as_millis() as u64;
                tracing::debug!(path = %path, status = resp.status().as_u16(), ms, "read");
            }
            outcome(gw, out, audit).await
        }
        Err(e) => {
            tracing::info!(path = %path, error = %e, "read failed");
            ReadOne::Failed(audit.fail(e))
        }
    }
}

/// What a completed operation answers; `audit` records it once its body is sent.
async fn outcome(gw: &Gateway, out: ops::Output, audit: Pending) -> ReadOne {
    match out {
        ops::Output::Upstream(resp) => answer(gw, resp, audit).await,
        ops::Output::Whole { body, content_type } => {
            audit.sent(body.len());
            let head = ReadHead {
                content_type: Some(HeaderValue::from_static(content_type)),
                length: Some(body.len() as u64),
                ..ReadHead::default()
            };
            ReadOne::Whole { head, body }
        }
    }
}

impl IntoResponse for ReadOne {
    fn into_response(self) -> Response {
        match self {
            ReadOne::Failed(e) => e.into_response(),
            ReadOne::Whole { head, body } => read_response(head, Body::from(body)),
            ReadOne::Streamed { head, body } => read_response(head, Body::from_stream(body)),
        }
    }
}

/// The response to a read, or to a write or delete the upstream answered: `304` for an
/// upstream's `304`, else `200`, with the head as headers.
fn read_response(head: ReadHead, body: Body) -> Response {
    let ours = if head.upstream_status == Some(304) { 304 } else { 200 };
    let mut builder = Response::builder().status(ours);
    if let Some(status) = head.upstream_status {
        builder = builder.header(UPSTREAM_STATUS, status);
    }
    for (name, value) in [(ETAG, head.etag), (LAST_MODIFIED, head.last_modified), (CONTENT_TYPE, head.content_type)] {
        if let Some(v) = value {
            builder = builder.header(name, v);
        }
    }
    if let Some(len) = head.length {
        builder = builder.header(CONTENT_LENGTH, len);
    }
    builder
        .body(body)
        .unwrap_or_else(|e| ApiError::new(agentfs::wire::ErrorCode::Internal, format!("gatewayd: {e}")).into_response())
}

/// Upstream bodies announced (`Content-Length`) at most this long are read whole and
/// answered in one piece with their length, instead of streamed: one buffer instead of a
/// chunked stream through the masker and the audit meter, and a length even when a
/// credential was sent (masking may change it, but the masked body is known before the
/// answer starts). A body that fails part way then fails the whole read (`upstream_failed`).
pub const WHOLE_BODY_MAX: u64 = 64 * 1024;

/// Passes an upstream response on (see [`stream_response`]): small bodies whole
/// ([`WHOLE_BODY_MAX`]), others streamed.
async fn answer(gw: &Gateway, resp: crate::upstream::Answer, mut audit: Pending) -> ReadOne {
    if let Some(peer) = resp.peer() {
        // The record names who asked here and the lender that served it.
        audit.peer_used(peer);
    }
    let status = resp.status().as_u16();
    let limit = gw.upstream.config().max_body_bytes;
    if status == 304 || resp.announced_len().is_none_or(|n| n > WHOLE_BODY_MAX) {
        return stream_response(gw, resp, audit);
    }
    let mut head = ReadHead {
        upstream_status: Some(status),
        etag: resp.validator(&ETAG),
        last_modified: resp.validator(&LAST_MODIFIED),
        content_type: resp.content_type(),
        length: None,
    };
    audit.upstream_status(status);
    let body = match resp.bytes().await {
        Ok(body) if body.len() as u64 > limit => {
            tracing::warn!(limit, "read: the masked upstream body is over upstream.max_body_bytes");
            let message = format!("gatewayd: upstream body over the limit of {limit} bytes (upstream.max_body_bytes)");
            return failed(audit, status, ApiError::new(agentfs::wire::ErrorCode::TooLarge, message));
        }
        Ok(body) => body,
        Err(e) => {
            let message = format!("gatewayd: the upstream body failed part way: {}", e.without_url());
            return failed(audit, status, ApiError::new(agentfs::wire::ErrorCode::UpstreamFailed, message));
        }
    };
    audit.sent(body.len());
    head.length = Some(body.len() as u64);
    ReadOne::Whole { head, body }
}

/// The answer to a body that failed after the upstream answered `status`: the error, and
/// the record with its code and that status.
fn failed(mut audit: Pending, status: u16, e: ApiError) -> ReadOne {
    let e = match audit.check(Err::<(), _>(e)) {
        Err(e) => e,
        Ok(()) => ApiError::new(agentfs::wire::ErrorCode::Internal, "gatewayd: unreachable"),
    };
    audit.upstream_status(status);
    ReadOne::Failed(e)
}

/// The header that carries the upstream's status on a successful write or delete.
pub const UPSTREAM_STATUS: &str = "x-nkmc-upstream-status";

/// Passes an upstream response on: its content type, its length when masking cannot change
/// it, its validators (`ETag`, `Last-Modified`), and its body streamed (cut off with an
/// error past `upstream.max_body_bytes`). An upstream `304 Not Modified` (to a conditional
/// read) is passed on as `304` with no body.
fn stream_response(gw: &Gateway, resp: crate::upstream::Answer, audit: Pending) -> ReadOne {
    let status = resp.status().as_u16();
    let mut head = ReadHead {
        upstream_status: Some(status),
        etag: resp.validator(&ETAG),
        last_modified: resp.validator(&LAST_MODIFIED),
        content_type: None,
        length: None,
    };
    if status == 304 {
        let nothing = audit.streaming(status, Some(0), futures_util::stream::empty());
        return ReadOne::Streamed { head, body: nothing };
    }
    head.content_type = resp.content_type();
    // Known only when nothing can be masked (a masked body may change length).
    head.length = resp.exact_len();
    let length = head.length;
    let stream = resp.capped_stream(gw.upstream.config().max_body_bytes);
    ReadOne::Streamed { head, body: audit.streaming(status, length, stream) }
}

/// `echo '{...}' > FILE`: the body is the JSON to send; the answer is the upstream's body.
pub async fn write(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    q: Result<Query<PathQuery>, QueryRejection>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let mut audit = Pending::start(&gw, Operation::Write);
    let who = caller(&headers, &mut audit);
    let who = audit.check(who)?;
    let path = audit.path(parse(q))?;
    let body = audit.check(body.map_err(|e| {
        ApiError::new(
            agentfs::wire::ErrorCode::TooLarge,
            format!("gatewayd: the body cannot be read: {}", e.body_text()),
        )
    }))?;
    audit.bytes(body.len() as u64);
    let resp = audit.check(
        ops::write(&gw, &who, &path, body)
            .await
            .inspect_err(|e| tracing::info!(path = %path, error = %e, "write failed")),
    )?;
    Ok(outcome(&gw, resp, audit).await.into_response())
}

/// `rm FILE`.
pub async fn delete(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    q: Result<Query<PathQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let mut audit = Pending::start(&gw, Operation::Delete);
    let who = caller(&headers, &mut audit);
    let who = audit.check(who)?;
    let path = audit.path(parse(q))?;
    let resp = audit.check(
        ops::delete(&gw, &who, &path).await.inspect_err(|e| tracing::info!(path = %path, error = %e, "delete failed")),
    )?;
    Ok(outcome(&gw, resp, audit).await.into_response())
}

/// `POST /v1/fs/grep`: `grep -r` under a path, with the caller's rights.
pub async fn grep(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    req: Result<Json<agentfs::wire::GrepRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<agentfs::wire::GrepResult>, ApiError> {
    let mut audit = Pending::start(&gw, Operation::Grep);
    let who = caller(&headers, &mut audit);
    let who = audit.check(who)?;
    let Json(req) = audit.check(req.map_err(|e| ApiError::bad_request(format!("gatewayd: {}", e.body_text()))))?;
    let path = audit.path(VPath::parse(&req.path).map_err(ApiError::from))?;
    let found = crate::grep::grep(&gw, &who, &path, &req).await;
    if let Ok(found) = &found {
        audit.bytes(found.files_searched);
    }
    audit.finish(found.map(Json))
}
