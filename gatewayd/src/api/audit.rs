//! `/v1/audit`: reading and verifying the audit log; and [`Pending`], with which every other
//! handler records its operation.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use agentfs::path::VPath;
use agentfs::wire::{AuditQuery, AuditRecords, AuditVerification, ErrorCode};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use bytes::Bytes;
use futures_util::Stream;

use super::error::{code_of_body_error, ApiError};
use crate::audit::{Event, Operation, OWNER};
use crate::Gateway;

/// Records returned when the query gives no limit.
const DEFAULT_LIMIT: u32 = 100;
/// The most records one answer holds.
const MAX_LIMIT: u32 = 1000;

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "audit failure");
    ApiError::new(ErrorCode::Internal, e.to_string())
}

/// `GET /v1/audit?after=SEQ&limit=N`.
pub async fn list(
    State(gw): State<Arc<Gateway>>,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditRecords>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(format!("gatewayd: {e}")))?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    // Records are committed by the audit's writer thread: wait for those appended so far, so
    // a reader sees every operation that finished before it asked.
    let records = tokio::task::spawn_blocking(move || {
        gw.audit.sync();
        crate::audit::list(&gw.db(), q.after, limit)
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    Ok(Json(AuditRecords { records }))
}

/// `GET /v1/audit/verify`: walks the chain off the async threads.
pub async fn verify(State(gw): State<Arc<Gateway>>) -> Result<Json<AuditVerification>, ApiError> {
    let result = tokio::task::spawn_blocking(move || gw.audit.verify(|| gw.db())).await.map_err(internal)?;
    result.map(Json).map_err(internal)
}

/// An operation under way. It is recorded exactly once: when it is finished, failed, or
/// dropped (a handler whose client went away records `cancelled`). Handlers call it at the
/// end, after releasing the database connection (recording takes it).
pub struct Pending {
    gw: Arc<Gateway>,
    agent: String,
    operation: Operation,
    target: String,
    key_id: Option<String>,
    peer: Option<String>,
    outcome: Option<Result<(), ErrorCode>>,
    /// An outcome in words (`exit 3`, `timeout`), taking precedence over `outcome`.
    outcome_text: Option<String>,
    upstream_status: Option<u16>,
    bytes: Option<u64>,
    sent: u64,
    time_ms: i64,
    started: Instant,
    /// Withdrawn: no record ([`Pending::withdraw`]).
    withdrawn: bool,
}

impl Pending {
    /// Starts timing `operation`.
    pub fn start(gw: &Arc<Gateway>, operation: Operation) -> Self {
        Pending {
            gw: gw.clone(),
            agent: OWNER.to_owned(),
            operation,
            target: String::new(),
            key_id: None,
            peer: None,
            outcome: None,
            outcome_text: None,
            upstream_status: None,
            bytes: None,
            sent: 0,
            time_ms: gw.audit.now_ms(),
            started: Instant::now(),
            withdrawn: false,
        }
    }

    /// Refuses the operation while the audit log cannot be written (fail closed): nothing
    /// reaches an upstream unless its record can be kept. The refusal's own record, once it
    /// can be written again, lifts the state. The state follows the audit writer's last
    /// result; while it says failing, the records queued so far are waited for first (a
    /// short, synchronous wait, only in that state), so a record that was written again
    /// lifts the state for the operations that follow it.
    pub fn admit(&mut self) -> Result<(), ApiError> {
        if self.gw.audit.is_failing() {
            self.gw.audit.sync();
        }
        if self.gw.audit.is_failing() {
            return self.check(Err(ApiError::new(
                ErrorCode::Internal,
                "gatewayd: the audit log cannot be written, so operations are refused; check the data dir's \
                 disk space and permissions (gatewayd.log says more), then retry",
            )));
        }
        Ok(())
    }

    /// The gateway the operation runs on.
    pub fn gateway(&self) -> &Gateway {
        &self.gw
    }

    /// Who acts: the agent a token names (the owner when there is no token).
    pub fn agent(&mut self, name: String) {
        self.agent = name;
    }

    /// Who acts, as recorded.
    pub fn agent_name(&self) -> &str {
        &self.agent
    }

    /// Drops the operation without a record: for a request accepted as a whole whose parts
    /// are each recorded on their own (`POST /v1/fs/read-batch`: one record per path).
    pub fn withdraw(mut self) {
        self.withdrawn = true;
    }

    /// The federation peer the operation was done for (the agent is `peer:ID`).
    pub fn peer(&mut self, id: &str) {
        self.agent = format!("peer:{id}");
        self.peer = Some(id.to_owned());
    }

    /// The federation peer that did the operation for us (the agent stays who asked).
    pub fn peer_used(&mut self, id: &str) {
        self.peer = Some(id.to_owned());
    }

    /// What the operation acts on: a canonical path or a domain.
    pub fn target(&mut self, target: impl ToString) {
        self.target = target.to_string();
    }

    /// The id of the credential stored or used (never the credential).
    pub fn key_id(&mut self, key_id: &str) {
        self.key_id = Some(key_id.to_owned());
    }

    /// The body bytes the operation carried, when they are not the bytes sent back.
    pub fn bytes(&mut self, bytes: u64) {
        self.bytes = Some(bytes);
    }

    /// The parsed path becomes the target; a path that did not parse is the outcome.
    pub fn path(&mut self, path: Result<VPath, ApiError>) -> Result<VPath, ApiError> {
        let path = self.check(path)?;
        self.target(&path);
        Ok(path)
    }

    /// Passes `result` on; an error becomes the outcome (its code, never its message).
    pub fn check<T, E: Into<ApiError>>(&mut self, result: Result<T, E>) -> Result<T, ApiError> {
        result.map_err(|e| {
            let e = e.into();
            self.outcome = Some(Err(e.code()));
            self.upstream_status = e.upstream_status();
            e
        })
    }

    /// Records the outcome of `result` and passes it on.
    pub fn finish<T, E: Into<ApiError>>(mut self, result: Result<T, E>) -> Result<T, ApiError> {
        let result = self.check(result);
        if result.is_ok() {
            self.outcome = Some(Ok(()));
        }
        result
    }

    /// Records a failure and returns it.
    pub fn fail(mut self, e: impl Into<ApiError>) -> ApiError {
        match self.check(Err::<(), _>(e)) {
            Err(e) => e,
            Ok(()) => ApiError::new(ErrorCode::Internal, "gatewayd: unreachable"),
        }
    }

    /// Records an outcome in words (a run's `exit 3`, `timeout`); never put a message that
    /// could hold a secret here.
    pub fn outcome_text(&mut self, text: String) {
        self.outcome_text = Some(text);
    }

    /// Records a success.
    pub fn ok(mut self) {
        self.outcome = Some(Ok(()));
    }

    /// The upstream answered with `status` (for an answer sent back whole).
    pub fn upstream_status(&mut self, status: u16) {
        self.upstream_status = Some(status);
    }

    /// Records a success whose whole body (`len` bytes) is being sent back.
    pub fn sent(mut self, len: usize) {
        self.sent = len as u64;
        self.outcome = Some(Ok(()));
    }

    /// The upstream answered with `status` and its body (of `length` bytes, when known) is
    /// streamed back through the returned stream, which records the operation when the body
    /// ends, fails or is dropped. A body whose announced length was sent in full counts as
    /// complete even if it is dropped before its end is polled (hyper stops at the length).
    pub fn streaming<S>(mut self, status: u16, length: Option<u64>, body: S) -> Metered
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        self.upstream_status = Some(status);
        Metered { body: Box::pin(body), length, pending: Some(self) }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.withdrawn {
            return;
        }
        let outcome = match self.outcome {
            _ if self.outcome_text.is_some() => self.outcome_text.take().unwrap_or_default(),
            Some(Ok(())) => "ok".to_owned(),
            Some(Err(code)) => serde_json::to_value(code)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "internal".to_owned()),
            None if std::thread::panicking() => "internal".to_owned(),
            None => "cancelled".to_owned(),
        };
        let event = Event {
            time_ms: self.time_ms,
            agent: std::mem::take(&mut self.agent),
            operation: self.operation,
            target: std::mem::take(&mut self.target),
            outcome,
            upstream_status: self.upstream_status,
            bytes: self.bytes.unwrap_or(self.sent),
            duration_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            peer: self.peer.take(),
            key_id: self.key_id.take(),
        };
        // Committed by the audit's writer thread; a record that cannot be written is logged
        // there and turns on the refusing state (see `admit`).
        self.gw.audit.append(event);
    }
}

/// A response body on its way back, counted; see [`Pending::streaming`].
pub struct Metered {
    body: Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>,
    length: Option<u64>,
    pending: Option<Pending>,
}

impl Stream for Metered {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let item = ready!(this.body.as_mut().poll_next(cx));
        match &item {
            Some(Ok(chunk)) => {
                if let Some(p) = this.pending.as_mut() {
                    p.sent += chunk.len() as u64;
                    if this.length.is_some_and(|len| p.sent >= len) {
                        p.outcome = Some(Ok(()));
                    }
                }
            }
            Some(Err(e)) => {
                if let Some(mut p) = this.pending.take() {
                    p.outcome = Some(Err(code_of_body_error(e)));
                }
            }
            None => {
                if let Some(mut p) = this.pending.take() {
                    p.outcome = Some(Ok(()));
                }
            }
        }
        Poll::Ready(item)
    }
}
