//! `/v1/proxy/*`: `nkmc run` — the tool list, and running a tool with its output streamed
//! back in frames ([`crate::run::frame`]).

use std::sync::Arc;
use std::time::Duration;

use agentfs::path::VPath;
use agentfs::wire::ErrorCode;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::audit::Pending;
use super::error::ApiError;
use super::fs::caller;
use crate::audit::Operation;
use crate::ops::{Caller, OpError};
use crate::run::exec::{self, Ended};
use crate::run::frame::{self, Decoder, Kind};
use crate::run::tools::Tool;
use crate::run::wire::{ExecRequest, ExitReason, ToolInfo, ToolList};
use crate::run::RunError;
use crate::{auth, ops, Gateway};

/// How long the request frame may take to arrive.
const REQUEST_FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// Frames in flight towards a slow caller.
const OUT_FRAMES: usize = 32;

impl From<RunError> for ApiError {
    fn from(e: RunError) -> Self {
        let code = match &e {
            RunError::NoTool(_) | RunError::NoKey { .. } | RunError::NotInstalled { .. } => ErrorCode::NotFound,
            RunError::Refused(_) => ErrorCode::PermissionDenied,
            RunError::BadKey { .. } => ErrorCode::InvalidInput,
            RunError::Vault(_) | RunError::Home { .. } => ErrorCode::Internal,
        };
        ApiError::new(code, e.to_string())
    }
}

/// Whether `caller` may run tools of `domain`; a token without the right sees no such tool.
fn authorize(gw: &Gateway, caller: &Caller, tool: &Tool) -> Result<Option<auth::AgentId>, ApiError> {
    let path = VPath::parse(&format!("/{}", tool.spec.domain))
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("run: tool `{}`: {e}", tool.spec.name)))?;
    match ops::authorize(gw, caller, &path, auth::Op::Run) {
        Ok(agent) => Ok(agent),
        Err(OpError::Hidden(_)) => Err(RunError::NoTool(tool.spec.name.clone()).into()),
        Err(e) => Err(e.into()),
    }
}

fn info(tool: &Tool) -> ToolInfo {
    let s = &tool.spec;
    ToolInfo {
        name: s.name.clone(),
        domain: s.domain.clone(),
        path: tool.path.as_ref().map(|p| p.display().to_string()),
        binary: s.binary.clone(),
        inject: s.inject.keys().cloned().collect(),
        deny: s.deny.clone(),
        deny_flags: s.deny_flags.clone(),
        deny_env: s.deny_env.clone(),
        allow_env: s.allow_env.clone(),
        timeout_ms: s.timeout_ms,
        max_output_bytes: s.max_output_bytes,
        source: if s.builtin { "builtin" } else { "config" }.to_owned(),
    }
}

/// `GET /v1/proxy/tools`: the tools the caller may run.
pub async fn tools(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Result<Json<ToolList>, ApiError> {
    let mut audit = Pending::start(&gw, Operation::ToolsList);
    let who = caller(&headers, &mut audit);
    let who = audit.check(who)?;
    let mut tools = Vec::new();
    for t in gw.tools.iter() {
        match authorize(&gw, &who, t) {
            Ok(_) => tools.push(info(t)),
            // Hidden from this token.
            Err(e) if e.code() == ErrorCode::NotFound => {}
            // The token itself is unusable (revoked, expired...): say so.
            Err(e) => return Err(audit.fail(e)),
        }
    }
    audit.finish(Ok::<_, ApiError>(Json(ToolList { tools })))
}

/// Reads the request frame off the front of the body; returns the decoder holding whatever
/// followed it.
async fn request_frame(
    body: &mut (impl futures_util::Stream<Item = Result<Bytes, axum::Error>> + Unpin),
) -> Result<(ExecRequest, Decoder), ApiError> {
    let bad = |m: String| ApiError::bad_request(format!("run: {m}"));
    let mut decoder = Decoder::default();
    let read = async {
        loop {
            if let Some((kind, payload)) = decoder.next_frame().map_err(|e| bad(e.to_string()))? {
                if kind != Kind::Request {
                    return Err(bad("the body must start with the request frame".into()));
                }
                let req: ExecRequest =
                    serde_json::from_slice(&payload).map_err(|e| bad(format!("the request frame: {e}")))?;
                return Ok(req);
            }
            match body.next().await {
                Some(Ok(chunk)) => decoder.push(&chunk),
                Some(Err(e)) => return Err(bad(format!("the body cannot be read: {e}"))),
                None => return Err(bad("the body ended before the request frame".into())),
            }
        }
    };
    let req = tokio::time::timeout(REQUEST_FRAME_TIMEOUT, read)
        .await
        .map_err(|_| ApiError::new(ErrorCode::Timeout, "run: the request frame did not arrive in time"))??;
    Ok((req, decoder))
}

/// Feeds the rest of the body (stdin frames) to the tool, until `StdinEnd` or its end.
async fn forward_stdin(
    mut body: impl futures_util::Stream<Item = Result<Bytes, axum::Error>> + Unpin,
    mut decoder: Decoder,
    tx: mpsc::Sender<Bytes>,
) {
    loop {
        loop {
            match decoder.next_frame() {
                Ok(Some((Kind::Stdin, payload))) => {
                    if tx.send(payload).await.is_err() {
                        return;
                    }
                }
                Ok(Some((Kind::StdinEnd, _))) => return,
                Ok(Some((kind, _))) => {
                    tracing::info!(?kind, "run: unexpected frame in the request body; closing stdin");
                    return;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(error = %e, "run: bad stdin frame; closing stdin");
                    return;
                }
            }
        }
        match body.next().await {
            Some(Ok(chunk)) => decoder.push(&chunk),
            Some(Err(_)) | None => return,
        }
    }
}

/// `POST /v1/proxy/exec`: runs a tool; see [`crate::run::frame`] for both bodies. Errors
/// before the tool starts are ordinary JSON errors; once it runs, the answer is 200 and the
/// exit frame says how it ended.
pub async fn exec(State(gw): State<Arc<Gateway>>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let mut audit = Pending::start(&gw, Operation::Run);
    let who = caller(&headers, &mut audit);
    let who = audit.check(who)?;
    let mut body = body.into_data_stream();
    let (req, decoder) = audit.check(request_frame(&mut body).await)?;
    audit.target(crate::run::audit_target(&req));
    let tool = audit.check(gw.tools.get(&req.tool).cloned().ok_or_else(|| RunError::NoTool(req.tool.clone())))?;
    let agent = audit.check(authorize(&gw, &who, &tool))?;
    // No key here for this caller (own or pool): a peer that lends the domain runs it.
    if matches!(crate::run::credential(&gw, agent.as_ref(), &tool.spec.domain), Ok(None)) {
        let lenders = gw.federation.tables.lenders_of(&gw.db(), &tool.spec.domain).unwrap_or_default();
        if !lenders.is_empty() {
            return run_on_peer(gw.clone(), audit, req, decoder, body, lenders);
        }
    }
    let slot = audit.check(gw.runs.slot().ok_or_else(|| {
        ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "run: {} runs are already under way ([run] max_concurrent); try again when one ends",
                gw.config.run.max_concurrent
            ),
        )
    }))?;
    let prepared = audit.check(crate::run::prepare(&gw, agent.as_ref(), &tool, req))?;
    let program = prepared.program.clone();
    let running = audit
        .check(exec::spawn(prepared).map_err(|e| {
            ApiError::new(ErrorCode::Internal, format!("run: cannot start {}: {e}", program.display()))
        }))?;
    tracing::debug!(tool = %tool.spec.name, "run: started");
    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(8);
    let (out_tx, out_rx) = mpsc::channel::<Bytes>(OUT_FRAMES);
    let stdin_task = tokio::spawn(forward_stdin(body, decoder, stdin_tx));
    let name = tool.spec.name.clone();
    let stopping = gw.runs.stopping();
    tokio::spawn(async move {
        let ended = running.drive(stdin_rx, out_tx, stopping).await;
        stdin_task.abort();
        drop(slot);
        let (outcome, bytes) = outcome_of(&ended);
        tracing::info!(tool = %name, outcome = %outcome, bytes, "run: ended");
        audit.outcome_text(outcome);
        audit.bytes(bytes);
        drop(audit);
    });
    let stream = tokio_stream(out_rx);
    Response::builder()
        .status(200)
        .header(CONTENT_TYPE, frame::MEDIA_TYPE)
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("gatewayd: {e}")))
        .map(IntoResponse::into_response)
}

/// The audit outcome of a run, and its output bytes.
pub(super) fn outcome_of(ended: &Ended) -> (String, u64) {
    match ended {
        Ended::Status(s) => {
            let text = match s.reason {
                ExitReason::Exited if s.code == Some(0) => "ok".to_owned(),
                ExitReason::Exited => format!("exit {}", s.code.unwrap_or(-1)),
                ExitReason::Signaled => format!("signal {}", s.signal.unwrap_or(0)),
                ExitReason::Timeout => "timeout".to_owned(),
                ExitReason::OutputLimit => "output_limit".to_owned(),
                ExitReason::Shutdown => "shutdown".to_owned(),
            };
            (text, s.output_bytes)
        }
        Ended::CallerGone { output_bytes } => ("cancelled".to_owned(), *output_bytes),
    }
}

/// Runs the tool on a peer that lends its domain (no key here): answers 200 at once (the
/// CLI sends stdin only then), gathers stdin, sends the run to the first lender that takes
/// it, and passes its output frames on — masked by the lender, which holds the key. When no
/// lender takes it, the frames say why and the exit status is 1.
fn run_on_peer(
    gw: Arc<Gateway>,
    mut audit: Pending,
    req: ExecRequest,
    decoder: Decoder,
    body: axum::body::BodyDataStream,
    lenders: Vec<String>,
) -> Result<Response, ApiError> {
    let (out_tx, out_rx) = mpsc::channel::<Bytes>(OUT_FRAMES);
    tokio::spawn(async move {
        let (stdin_tx, mut stdin_rx) = mpsc::channel::<Bytes>(8);
        tokio::spawn(forward_stdin(body, decoder, stdin_tx));
        let mut frames: Vec<u8> = frame::encode(Kind::Request, &serde_json::to_vec(&req).unwrap_or_default()).to_vec();
        while let Some(chunk) = stdin_rx.recv().await {
            for f in frame::encode_all(Kind::Stdin, &chunk) {
                frames.extend_from_slice(&f);
            }
        }
        frames.extend_from_slice(&frame::encode(Kind::StdinEnd, b""));
        let mut why = String::new();
        for peer in &lenders {
            match crate::federation::borrow::call(&gw, peer, crate::federation::protocol::route::RUN, frames.clone())
                .await
            {
                Ok(a) if a.status == 200 => {
                    audit.peer_used(peer);
                    audit.outcome_text(format!("run on peer {peer}"));
                    audit.bytes(a.body.len() as u64);
                    let _ = out_tx.send(a.body).await;
                    return;
                }
                Ok(a) => {
                    let said: Option<crate::federation::protocol::ExecRefusal> = serde_json::from_slice(&a.body).ok();
                    why = format!(
                        "peer {peer}: {}",
                        said.map(|r| r.message).unwrap_or_else(|| format!("HTTP {}", a.status))
                    );
                }
                Err(e) => why = e.to_string(),
            }
        }
        let message = format!("nkmc: run: no key here and no peer ran it ({why})\n");
        let _ = out_tx.send(frame::encode(Kind::Stderr, message.as_bytes())).await;
        let exit = crate::run::wire::ExitStatus {
            reason: ExitReason::Exited,
            code: Some(1),
            signal: None,
            output_bytes: 0,
            message: Some(why),
        };
        let _ = out_tx.send(frame::encode(Kind::Exit, &serde_json::to_vec(&exit).unwrap_or_default())).await;
        audit.outcome_text("permission_denied".to_owned());
    });
    Response::builder()
        .status(200)
        .header(CONTENT_TYPE, frame::MEDIA_TYPE)
        .body(Body::from_stream(tokio_stream(out_rx)))
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("gatewayd: {e}")))
        .map(IntoResponse::into_response)
}

/// The frames of a run as a body stream; dropping it (the caller went away) closes the
/// channel, which stops the run.
fn tokio_stream(rx: mpsc::Receiver<Bytes>) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok(b), rx)) })
}
