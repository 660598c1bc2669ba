//! Federation over HTTP. On the TCP listener, for peers (signed, no bearer token):
//! `/federation/query`, `/federation/exec`, `/federation/announce`. On the socket, for the
//! owner: `/v1/peers` and `/v1/rules`. Unknown peers and bad signatures get one terse 401;
//! the reason is only logged.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use agentfs::wire::ErrorCode;
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::audit::Pending;
use super::error::{code_of_body_error, ApiError};
use crate::audit::Operation;
use crate::federation::client::answer_headers;
use crate::federation::lend::{self, Refusal};
use crate::federation::protocol::{route, Announce, ExecOp, ExecRefusal, ExecRequest, QueryRequest, QueryResponse};
use crate::federation::rules::{self, PricingMode, Rule};
use crate::federation::sign::{self, Envelope, SignedHeaders};
use crate::federation::{borrow, peers};
use crate::ops::{self, Caller};
use crate::payments;
use crate::payments::credit;
use crate::vault::{KeyOwner, Secret, PEER_DOMAIN};
use crate::Gateway;

/// A verified peer request.
struct Verified {
    peer: String,
    nonce: String,
    secret: Secret,
}

fn terse() -> Response {
    (StatusCode::UNAUTHORIZED, "federation: refused").into_response()
}

/// Checks the signature headers of a request to `path` with `body`.
/// `None`: refused (the reason is logged); answer [`terse`].
fn verify(gw: &Gateway, path: &str, headers: &HeaderMap, body: &[u8]) -> Option<Verified> {
    let Some(SignedHeaders { sender, recipient, timestamp, nonce, signature }) = SignedHeaders::from(headers) else {
        tracing::info!(path, "federation: an unsigned request was refused");
        return None;
    };
    let secret = match borrow::secret_of(gw, sender) {
        Ok(Some(s)) if gw.federation.tables.is_peer(&gw.db(), sender).unwrap_or(false) => s,
        _ => {
            tracing::info!(path, "federation: a request from an unknown peer was refused");
            return None;
        }
    };
    let envelope = Envelope { method: "POST", path, body, timestamp, nonce, sender, recipient };
    if let Err(e) = envelope.accept(
        &gw.identity.id,
        secret.expose().as_bytes(),
        signature,
        SystemTime::now(),
        &gw.federation.nonces,
    ) {
        tracing::info!(peer = sender, path, error = %e, "federation: a request was refused");
        return None;
    }
    Some(Verified { peer: sender.to_owned(), nonce: nonce.to_owned(), secret })
}

/// A signed answer.
fn answer(
    gw: &Gateway,
    v: &Verified,
    status: u16,
    content_type: &str,
    extra: &[(&str, String)],
    body: Vec<u8>,
) -> Response {
    let mut resp = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(CONTENT_TYPE, content_type);
    for (k, val) in answer_headers(&gw.identity, &v.peer, v.secret.expose().as_bytes(), &v.nonce, status, &body) {
        resp = resp.header(k, val);
    }
    for (k, val) in extra {
        resp = resp.header(*k, val);
    }
    resp.body(axum::body::Body::from(body)).unwrap_or_else(|_| terse())
}

fn json_answer<T: serde::Serialize>(gw: &Gateway, v: &Verified, status: u16, value: &T) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    answer(gw, v, status, "application/json", &[], body)
}

fn refusal(
    gw: &Gateway,
    v: &Verified,
    status: u16,
    code: ErrorCode,
    message: String,
    upstream: Option<u16>,
) -> Response {
    json_answer(gw, v, status, &ExecRefusal { code, message, upstream_status: upstream, payment_response: None })
}

/// `POST /federation/query`.
pub async fn query(State(gw): State<Arc<Gateway>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(v) = verify(&gw, route::QUERY, &headers, &body) else { return terse() };
    let Ok(req) = serde_json::from_slice::<QueryRequest>(&body) else {
        return refusal(&gw, &v, 400, ErrorCode::BadRequest, "federation: malformed query".into(), None);
    };
    let Some(domain) = req.domain else {
        let domains = lend::lent_domains(&gw, &v.peer);
        return json_answer(&gw, &v, 200, &QueryResponse { available: true, domains, ..unavailable() });
    };
    let rules_now = gw.federation.tables.rules(&gw.db()).unwrap_or_default();
    let service = gw.registry().get(&domain).filter(|s| s.borrowed.is_none());
    let (Some(service), Some(rule)) = (service, rules::lends_domain(&rules_now, &v.peer, &domain)) else {
        return json_answer(&gw, &v, 200, &unavailable());
    };
    let resp = QueryResponse {
        available: true,
        domains: Vec::new(),
        ops: rule.ops.clone(),
        pricing: Some(rule.pricing),
        amount: rule.amount.clone(),
        prepaid_tokens: (rule.pricing == PricingMode::PerToken).then_some(gw.config.payments.prepaid_tokens),
        rate_per_min: rule.rate_per_min,
        spec: serde_json::to_value(&service.spec).ok(),
    };
    json_answer(&gw, &v, 200, &resp)
}

fn unavailable() -> QueryResponse {
    QueryResponse {
        available: false,
        domains: Vec::new(),
        ops: Vec::new(),
        pricing: None,
        amount: None,
        prepaid_tokens: None,
        rate_per_min: None,
        spec: None,
    }
}

/// `POST /federation/announce`: the sender lends us exactly these domains now.
pub async fn announce(State(gw): State<Arc<Gateway>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(v) = verify(&gw, route::ANNOUNCE, &headers, &body) else { return terse() };
    let Ok(req) = serde_json::from_slice::<Announce>(&body) else {
        return refusal(&gw, &v, 400, ErrorCode::BadRequest, "federation: malformed announcement".into(), None);
    };
    if let Err(e) = borrow::apply_domains(&gw, &v.peer, &req.domains).await {
        tracing::warn!(peer = %v.peer, error = %e, "federation: an announcement could not be applied");
        return refusal(&gw, &v, 500, ErrorCode::Internal, "federation: the announcement was not applied".into(), None);
    }
    answer(&gw, &v, 200, "application/json", &[], b"{}".to_vec())
}

/// `POST /federation/exec`: one typed operation, re-checked here, done with our key.
pub async fn exec(State(gw): State<Arc<Gateway>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(v) = verify(&gw, route::EXEC, &headers, &body) else { return terse() };
    let Ok(req) = serde_json::from_slice::<ExecRequest>(&body) else {
        return refusal(&gw, &v, 400, ErrorCode::BadRequest, "federation: malformed operation".into(), None);
    };
    let operation = match req.op {
        ExecOp::List => Operation::List,
        ExecOp::Read => Operation::Read,
        ExecOp::Write => Operation::Write,
        ExecOp::Delete => Operation::Delete,
        ExecOp::Grep => Operation::Grep,
    };
    let mut audit = Pending::start(&gw, operation);
    audit.peer(&v.peer);
    audit.target(&req.path);
    let path = match lend::canonical_path(&req.path) {
        Ok(p) => p,
        Err(r) => return refused(&gw, &v, audit, r),
    };
    let grant = match lend::admit(&gw, &v.peer, &path, req.op.op(), Instant::now()) {
        Ok(g) => g,
        Err(r) => return refused(&gw, &v, audit, r),
    };
    // Per-token lending: a call starts on the peer's prepaid credit; without credit left,
    // the payment asked for is a top-up, settled at once.
    let topping_up = match (&grant.price, grant.metered) {
        (Some(_), true) => match credit::tokens(&gw.db(), &grant.peer, &grant.domain) {
            Ok(left) => left <= 0,
            Err(e) => return refused(&gw, &v, audit, Refusal::Invalid(format!("credit: {e}"))),
        },
        _ => false,
    };
    let charge = match (&grant.price, grant.metered) {
        (Some(per_thousand), true) if topping_up => {
            let cfg = &gw.config.payments;
            match credit::top_up_price(per_thousand, cfg.prepaid_tokens, cfg.decimals) {
                Ok(atomic) => Some(payments::amount::to_decimal(atomic, cfg.decimals)),
                Err(e) => return refused(&gw, &v, audit, Refusal::Invalid(e.to_string())),
            }
        }
        (_, true) => None,
        (price, false) => price.clone(),
    };
    if grant.metered && !topping_up {
        if let Err(r) = lend::count_rate(&gw, &grant, Instant::now()) {
            return refused(&gw, &v, audit, r);
        }
    }
    let paid = match &charge {
        None => None,
        Some(price) => match take_payment(&gw, &v, &headers, &req, price).await {
            Ok(accepted) => Some(accepted),
            Err(answer) => {
                let _ = audit.check::<(), _>(Err(ApiError::new(ErrorCode::PaymentRequired, "payment not taken")));
                return answer;
            }
        },
    };
    // A paid call counts against the rate once its payment is accepted (the unpaid 402
    // probe does not); refused here, the payment is void and not settled.
    if paid.is_some() {
        if let Err(r) = lend::count_rate(&gw, &grant, Instant::now()) {
            return refused(&gw, &v, audit, r);
        }
    }
    let mut extra = Vec::new();
    let mut settlement = None;
    // A paid write or delete is settled before it is carried out: a change is never made
    // without payment, nor paid twice when a failure makes the borrower try again.
    let paid = match paid {
        Some((accepted, requirements)) if grant.metered || matches!(req.op, ExecOp::Write | ExecOp::Delete) => {
            match accepted.settle().await {
                Ok(s) => {
                    settlement = Some(s.to_header());
                    if grant.metered {
                        let tokens = i64::try_from(gw.config.payments.prepaid_tokens).unwrap_or(i64::MAX);
                        if let Err(e) = credit::add(&gw.db(), &grant.peer, &grant.domain, tokens) {
                            tracing::error!(peer = %grant.peer, error = %e, "federation: a paid top-up was not credited");
                        }
                    }
                    None
                }
                Err(e) => return unsettled(&gw, &v, audit, requirements, &e),
            }
        }
        other => other,
    };
    let meter = grant.metered.then(|| Meter { gw: gw.clone(), peer: grant.peer.clone(), domain: grant.domain.clone() });
    let who = Caller::Peer(grant);
    let result: Result<Lent, ApiError> = match req.op {
        ExecOp::Read => match ops::read(&gw, &who, &path, Default::default()).await {
            Ok(out) => lent(&gw, out, paid.is_some() || settlement.is_some()).await,
            Err(e) => Err(e.into()),
        },
        ExecOp::Write => {
            let body = Bytes::from(req.body.unwrap_or_default());
            audit.bytes(body.len() as u64);
            match ops::write(&gw, &who, &path, body).await {
                Ok(out) => lent(&gw, out, paid.is_some() || settlement.is_some()).await,
                Err(e) => Err(e.into()),
            }
        }
        ExecOp::Delete => match ops::delete(&gw, &who, &path).await {
            Ok(out) => lent(&gw, out, paid.is_some() || settlement.is_some()).await,
            Err(e) => Err(e.into()),
        },
        ExecOp::List => match ops::list(&gw, &who, &path).await {
            Ok(l) => Ok(Lent::Whole(200, "application/json".into(), serde_json::to_vec(&l).unwrap_or_default())),
            Err(e) => Err(e.into()),
        },
        ExecOp::Grep => {
            let g = agentfs::wire::GrepRequest {
                path: req.path.clone(),
                pattern: req.pattern.unwrap_or_default(),
                fixed: false,
                ignore_case: false,
                max_files: None,
            };
            match crate::grep::grep(&gw, &who, &path, &g).await {
                Ok(r) => Ok(Lent::Whole(200, "application/json".into(), serde_json::to_vec(&r).unwrap_or_default())),
                Err(e) => Err(e.into()),
            }
        }
    };
    // A paid read is settled once the upstream answered 2xx, before its body is sent (as
    // x402 servers do); a failed read costs nothing (dropping the payment voids it).
    let result = match (result, paid) {
        (Ok(out), Some((accepted, requirements))) if (200..300).contains(&out.upstream_status()) => {
            match accepted.settle().await {
                Ok(s) => {
                    settlement = Some(s.to_header());
                    Ok(out)
                }
                Err(e) => return unsettled(&gw, &v, audit, requirements, &e),
            }
        }
        (r, _) => r,
    };
    if let Some(s) = &settlement {
        extra.push((payments::x402::PAYMENT_RESPONSE_HEADER, s.clone()));
    }
    match result {
        Ok(Lent::Stream(resp)) => framed(&gw, &v, audit, resp, extra, settlement, meter),
        Ok(Lent::Whole(status, content_type, body)) => {
            if let Some(m) = meter {
                let mut tokens = credit::TokenMeter::default();
                tokens.push(&body);
                m.used(tokens.finish());
            }
            audit.sent(body.len());
            extra.push((super::UPSTREAM_STATUS_HEADER, status.to_string()));
            answer(&gw, &v, 200, &content_type, &extra, body)
        }
        Err(e) => {
            let e = audit.fail(e);
            let body = ExecRefusal {
                code: e.code(),
                message: e.message().to_owned(),
                upstream_status: e.upstream_status(),
                payment_response: settlement,
            };
            json_answer(&gw, &v, e.http_status(), &body)
        }
    }
}

/// Where the tokens a per-token call used are taken from.
struct Meter {
    gw: Arc<Gateway>,
    peer: String,
    domain: String,
}

impl Meter {
    fn used(&self, tokens: u64) {
        let delta = i64::try_from(tokens).map_or(i64::MIN, |t| -t);
        match credit::add(&self.gw.db(), &self.peer, &self.domain, delta) {
            Ok(()) => tracing::debug!(peer = %self.peer, domain = %self.domain, tokens, "federation: tokens used"),
            Err(e) => tracing::error!(peer = %self.peer, error = %e, "federation: used tokens not counted"),
        }
    }
}

/// A streamed per-token answer's tokens, counted when the stream ends, breaks off or is
/// dropped (the borrower went away): they were used either way.
struct Metering {
    meter: Meter,
    tokens: credit::TokenMeter,
}

impl Drop for Metering {
    fn drop(&mut self) {
        self.meter.used(std::mem::take(&mut self.tokens).finish());
    }
}

/// A paid call whose settlement failed: nothing is served (402 with the reason).
fn unsettled(
    gw: &Gateway,
    v: &Verified,
    mut audit: Pending,
    requirements: payments::x402::Requirements,
    e: &payments::PaymentError,
) -> Response {
    tracing::warn!(peer = %v.peer, error = %e, "federation: a paid call was not settled; nothing is served");
    let _ = audit.check::<(), _>(Err(ApiError::new(ErrorCode::PaymentRequired, "payment not settled")));
    let reason = match e {
        payments::PaymentError::Refused(_) | payments::PaymentError::Facilitator(_) => e.to_string(),
        _ => "payments: the payment could not be settled here".to_owned(),
    };
    json_answer(gw, v, 402, &payments::lender::required(requirements, &reason))
}

/// What a lender sends back: a body it has whole, or the upstream's, streamed in frames.
enum Lent {
    Whole(u16, String, Vec<u8>),
    Stream(crate::upstream::Answer),
}

impl Lent {
    fn upstream_status(&self) -> u16 {
        match self {
            Lent::Whole(status, ..) => *status,
            Lent::Stream(resp) => resp.status().as_u16(),
        }
    }
}

/// An operation's output as lent: an upstream body over the size cap is refused up front; a
/// small one (announced at most [`super::fs::WHOLE_BODY_MAX`]) of an unpaid call is read
/// whole and sent signed in one piece (cheaper than frames); the rest streams in frames
/// (a paid call always does: its settlement rides in the signed head frame).
async fn lent(gw: &Gateway, out: ops::Output, paid: bool) -> Result<Lent, ApiError> {
    match out {
        ops::Output::Whole { body, content_type } => Ok(Lent::Whole(200, content_type.to_string(), body.to_vec())),
        ops::Output::Upstream(resp) => {
            let limit = gw.upstream.config().max_body_bytes;
            let announced = resp.announced_len();
            if announced.is_some_and(|l| l > limit) {
                return Err(ApiError::new(
                    ErrorCode::TooLarge,
                    format!("upstream body over the limit of {limit} bytes"),
                ));
            }
            if paid || announced.is_none_or(|l| l > super::fs::WHOLE_BODY_MAX) {
                return Ok(Lent::Stream(resp));
            }
            let status = resp.status().as_u16();
            let content_type = resp.content_type_text();
            let body = resp
                .bytes()
                .await
                .map_err(|e| ApiError::new(ErrorCode::UpstreamFailed, format!("upstream body: {}", e.without_url())))?;
            Ok(Lent::Whole(status, content_type, body.to_vec()))
        }
    }
}

/// The upstream's answer streamed to the borrower in signed frames (see
/// [`crate::federation::frames`]) as it arrives, capped at `upstream.max_body_bytes`; the
/// audit records the operation when the body ends.
fn framed(
    gw: &Gateway,
    v: &Verified,
    audit: Pending,
    resp: crate::upstream::Answer,
    extra: Vec<(&'static str, String)>,
    payment_response: Option<String>,
    meter: Option<Meter>,
) -> Response {
    use crate::federation::frames::{Binding, Encoder, Head};
    use futures_util::StreamExt;
    let status = resp.status().as_u16();
    let content_type = resp.content_type_text();
    let data = resp.capped_stream(gw.upstream.config().max_body_bytes);
    let metered = audit.streaming(status, None, data);
    let mut encoder = Encoder::new(Binding::new(v.secret.expose().as_bytes(), &v.nonce, &gw.identity.id, &v.peer));
    let head = encoder.head(&Head { upstream_status: status, content_type, payment_response });
    let tokens = meter.map(|meter| Metering { meter, tokens: credit::TokenMeter::default() });
    let rest = futures_util::stream::unfold(Some((metered, encoder, tokens)), move |state| async move {
        let (mut metered, mut encoder, mut tokens) = state?;
        let frame = match metered.next().await {
            Some(Ok(chunk)) => {
                if let Some(m) = tokens.as_mut() {
                    m.tokens.push(&chunk);
                }
                return Some((Ok::<_, std::io::Error>(encoder.data(&chunk)), Some((metered, encoder, tokens))));
            }
            Some(Err(e)) => {
                let code = code_of_body_error(&e);
                let refusal =
                    ExecRefusal { code, message: e.to_string(), upstream_status: Some(status), payment_response: None };
                encoder.error(&serde_json::to_vec(&refusal).unwrap_or_default())
            }
            None => encoder.end(),
        };
        drop(tokens);
        Some((Ok(frame), None))
    });
    let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(head) }).chain(rest);
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(crate::federation::frames::HEADER.0, crate::federation::frames::HEADER.1)
        .header(super::UPSTREAM_STATUS_HEADER, status);
    let marker = crate::federation::frames::MARKER;
    for (k, val) in answer_headers(&gw.identity, &v.peer, v.secret.expose().as_bytes(), &v.nonce, 200, marker) {
        builder = builder.header(k, val);
    }
    for (k, val) in extra {
        builder = builder.header(k, val);
    }
    builder.body(axum::body::Body::from_stream(body)).unwrap_or_else(|_| terse())
}

/// For a call priced at `price`: the payment in `X-PAYMENT`, bound to `req` (its digest in
/// the signed body), verified and claimed, with the requirements it meets; otherwise the
/// answer to send (402 with the requirements, or why payments cannot be taken now).
async fn take_payment<'a>(
    gw: &'a Gateway,
    v: &Verified,
    headers: &HeaderMap,
    req: &ExecRequest,
    price: &str,
) -> Result<(payments::lender::Accepted<'a>, payments::x402::Requirements), Response> {
    let op = req.op.as_str();
    let requirements = payments::lender::requirements(gw, op, &req.path, price).map_err(|e| {
        tracing::warn!(error = %e, "federation: a paid rule cannot be served");
        let message = "federation: this gateway lends for a price but cannot take payments now".to_owned();
        refusal(gw, v, 503, ErrorCode::Unreachable, message, None)
    })?;
    let Some(header) = headers.get(payments::x402::PAYMENT_HEADER).and_then(|h| h.to_str().ok()) else {
        let body = payments::lender::required(requirements, "X-PAYMENT header is required");
        return Err(json_answer(gw, v, 402, &body));
    };
    if req.payment_sha256.as_deref() != Some(payments::lender::payment_digest(header).as_str()) {
        let body =
            payments::lender::required(requirements, "the payment is not bound to this request (payment_sha256)");
        return Err(json_answer(gw, v, 402, &body));
    }
    let now_s = u64::try_from(gw.audit.now_ms() / 1000).unwrap_or(0);
    match payments::lender::accept(gw, header, &requirements, &v.peer, op, &req.path, now_s).await {
        Ok(accepted) => Ok((accepted, requirements)),
        Err(e @ (payments::PaymentError::Refused(_) | payments::PaymentError::Invalid(_))) => {
            tracing::info!(peer = %v.peer, error = %e, "federation: a payment was refused");
            let body = payments::lender::required(requirements, &e.to_string());
            Err(json_answer(gw, v, 402, &body))
        }
        Err(e) => {
            tracing::warn!(peer = %v.peer, error = %e, "federation: a payment could not be verified");
            let message = "federation: the payment could not be verified now (the facilitator failed)".to_owned();
            Err(refusal(gw, v, 502, ErrorCode::UpstreamFailed, message, None))
        }
    }
}

/// A refusal before anything was done, recorded and answered.
fn refused(gw: &Gateway, v: &Verified, mut audit: Pending, r: Refusal) -> Response {
    let (status, code, message) = match r {
        Refusal::Invalid(m) => (400, ErrorCode::InvalidPath, format!("federation: {m}")),
        Refusal::Unknown(d) => (404, ErrorCode::NotFound, format!("federation: no service {d} to lend here")),
        Refusal::NotLent => (403, ErrorCode::PermissionDenied, "federation: not lent to this gateway".into()),
        Refusal::Rate(secs) => {
            (429, ErrorCode::RateLimited, format!("federation: over the rate limit; retry in {secs} s"))
        }
        Refusal::Unpayable(why) => (403, ErrorCode::PermissionDenied, format!("federation: {why}")),
    };
    let _ = audit.check::<(), _>(Err(ApiError::new(code, message.clone())));
    refusal(gw, v, status, code, message, None)
}

/// `POST /v1/peers`. Its `Debug` never shows the secret.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddPeer {
    id: String,
    name: String,
    url: String,
    secret: String,
}

impl std::fmt::Debug for AddPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddPeer")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .finish()
    }
}

fn json_body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    // The rejection text could quote the body, which holds a secret: never echo it.
    b.map(|Json(t)| t)
        .map_err(|_| ApiError::bad_request("gatewayd: invalid request body (unexpected or missing members)"))
}

/// `POST /v1/peers`: adds (or replaces) a peer, its secret in the vault; then tells it what we
/// lend it and asks what it lends us (in the background).
pub async fn add_peer(
    State(gw): State<Arc<Gateway>>,
    req: Result<Json<AddPeer>, JsonRejection>,
) -> Result<Json<peers::Peer>, ApiError> {
    let mut audit = Pending::start(&gw, Operation::PeersAdd);
    let req = audit.check(json_body(req))?;
    audit.target(format!("peer:{}", req.id));
    let secret = Secret::new(req.secret);
    audit.check(sign::check_secret(secret.expose().as_bytes()).map_err(|e| ApiError::bad_request(e.to_string())))?;
    if req.id == gw.identity.id {
        return Err(audit.fail(ApiError::bad_request("gatewayd: a gateway cannot be its own peer")));
    }
    let peer = {
        let conn = gw.db();
        let stored = peers::upsert(&conn, &req.id, &req.name, &req.url, gw.audit.now_ms())
            .map_err(|e| ApiError::bad_request(e.to_string()))
            .and_then(|()| {
                gw.vault.set_key(&conn, KeyOwner::Peer(&req.id), PEER_DOMAIN, &secret, None).map_err(ApiError::from)
            })
            .and_then(|_| peers::get(&conn, &req.id).map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string())));
        audit.check(stored)?
    };
    let Some(peer) = peer else {
        return Err(audit.fail(ApiError::new(ErrorCode::Internal, "gatewayd: the peer was not stored")));
    };
    audit.ok();
    let bg = gw.clone();
    let id = peer.id.clone();
    tokio::spawn(async move {
        announce_to(&bg, &id).await;
        if let Err(e) = borrow::refresh(&bg, &id).await {
            tracing::info!(peer = %id, error = %e, "federation: the new peer did not answer yet");
        }
    });
    Ok(Json(peer))
}

/// Tells `peer` which domains we lend it now.
pub async fn announce_to(gw: &Gateway, peer: &str) {
    let domains = lend::lent_domains(gw, peer);
    let Ok(body) = serde_json::to_vec(&Announce { domains }) else { return };
    if let Err(e) = borrow::call(gw, peer, route::ANNOUNCE, body).await {
        tracing::info!(peer, error = %e, "federation: announcement not delivered");
    }
}

/// Tells every peer what we lend it (after a rules or registry change); waits for them.
pub async fn announce_all(gw: &Gateway) {
    let ids: Vec<String> = peers::list(&gw.db()).map(|p| p.into_iter().map(|p| p.id).collect()).unwrap_or_default();
    let calls = ids.iter().map(|id| announce_to(gw, id));
    futures_util::future::join_all(calls).await;
}

/// `GET /v1/peers`.
pub async fn list_peers(State(gw): State<Arc<Gateway>>) -> Result<Json<Vec<peers::Peer>>, ApiError> {
    peers::list(&gw.db()).map(Json).map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))
}

/// `DELETE /v1/peers/{id}`: the peer, its secret and what it lent us.
pub async fn remove_peer(State(gw): State<Arc<Gateway>>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let mut audit = Pending::start(&gw, Operation::PeersRemove);
    audit.target(format!("peer:{id}"));
    let removed = {
        let conn = gw.db();
        let r = peers::remove(&conn, &id).map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()));
        let _ = gw.vault.remove_own(&conn, KeyOwner::Peer(&id), PEER_DOMAIN);
        audit.check(r)?
    };
    if !removed {
        return Err(
            audit.fail(ApiError::new(ErrorCode::NotFound, format!("gatewayd: no peer `{id}`; see `nkmc peers list`")))
        );
    }
    let all = peers::list(&gw.db()).unwrap_or_default();
    gw.registry_mut().drop_borrowed(|d| all.iter().any(|p| p.domains.iter().any(|x| x == d)));
    audit.ok();
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/rules`.
pub async fn list_rules(State(gw): State<Arc<Gateway>>) -> Result<Json<Vec<Rule>>, ApiError> {
    rules::list(&gw.db()).map(Json).map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))
}

/// `PUT /v1/rules/{domain}`: sets the rule, then tells every peer what it may borrow now.
pub async fn set_rule(
    State(gw): State<Arc<Gateway>>,
    Path(domain): Path<String>,
    req: Result<Json<Rule>, JsonRejection>,
) -> Result<Json<Rule>, ApiError> {
    let mut audit = Pending::start(&gw, Operation::RulesSet);
    audit.target(&domain);
    let rule = audit.check(json_body(req))?;
    if rule.domain != domain {
        return Err(audit.fail(ApiError::bad_request("gatewayd: the rule's domain is not the one in the path")));
    }
    if rule.allow && rule.ops.is_empty() {
        return Err(audit.fail(ApiError::bad_request("gatewayd: an allow rule must lend at least one operation")));
    }
    if rule.pricing == PricingMode::Free && rule.amount.is_some() {
        return Err(audit.fail(ApiError::bad_request("gatewayd: free lending takes no amount")));
    }
    if rule.allow && rule.pricing != PricingMode::Free {
        let cfg = &gw.config.payments;
        audit.check(cfg.lending().map(|_| ()).map_err(|e| ApiError::bad_request(e.to_string())))?;
        let amount = rule.amount.as_deref().unwrap_or_default();
        let atomic = audit.check(
            payments::amount::to_atomic(amount, cfg.decimals).map_err(|e| ApiError::bad_request(e.to_string())),
        )?;
        if atomic == 0 {
            return Err(
                audit.fail(ApiError::bad_request("gatewayd: a paid rule needs an amount above 0; use --pricing free"))
            );
        }
    }
    audit.check(rules::set(&gw.db(), &rule).map_err(|e| ApiError::bad_request(e.to_string())))?;
    audit.ok();
    announce_all(&gw).await;
    heartbeat_to_coordinator(&gw).await;
    Ok(Json(rule))
}

/// `DELETE /v1/rules/{domain}`.
pub async fn remove_rule(State(gw): State<Arc<Gateway>>, Path(domain): Path<String>) -> Result<StatusCode, ApiError> {
    let mut audit = Pending::start(&gw, Operation::RulesRemove);
    audit.target(&domain);
    let removed =
        audit.check(rules::remove(&gw.db(), &domain).map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string())))?;
    if !removed {
        return Err(audit.fail(ApiError::new(ErrorCode::NotFound, format!("gatewayd: no rule for {domain}"))));
    }
    audit.ok();
    announce_all(&gw).await;
    heartbeat_to_coordinator(&gw).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /coordinator/heartbeat` (coordinator only): a gateway is online.
pub async fn heartbeat(
    State(gw): State<Arc<Gateway>>,
    req: Result<Json<crate::federation::coordinator::Listing>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let listing = json_body(req)?;
    let Some(dir) = gw.directory.as_ref() else {
        return Err(ApiError::bad_request("gatewayd: this gateway is not a coordinator"));
    };
    dir.heartbeat(listing, Instant::now()).map_err(ApiError::bad_request)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `?domain=D`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainQuery {
    domain: Option<String>,
}

/// `GET /coordinator/gateways?domain=D` (coordinator only): who is online, offering what.
pub async fn gateways(
    State(gw): State<Arc<Gateway>>,
    q: axum::extract::Query<DomainQuery>,
) -> Result<Json<Vec<crate::federation::coordinator::Listing>>, ApiError> {
    let Some(dir) = gw.directory.as_ref() else {
        return Err(ApiError::bad_request("gatewayd: this gateway is not a coordinator"));
    };
    Ok(Json(dir.online(q.domain.as_deref(), Instant::now())))
}

/// `GET /v1/peers/discover?domain=D`: asks the configured coordinator who offers what.
/// Nothing is added: peering needs `nkmc peers add` with a secret.
pub async fn discover(
    State(gw): State<Arc<Gateway>>,
    q: axum::extract::Query<DomainQuery>,
) -> Result<Json<Vec<crate::federation::coordinator::Listing>>, ApiError> {
    let Some(base) = gw.config.federation.coordinator_url.as_deref() else {
        return Err(ApiError::bad_request(
            "gatewayd: no coordinator is configured; set [federation] coordinator_url in config.toml",
        ));
    };
    let mut url = url::Url::parse(base)
        .and_then(|u| u.join(crate::federation::coordinator::route::GATEWAYS))
        .map_err(|e| ApiError::bad_request(format!("gatewayd: coordinator_url: {e}")))?;
    if let Some(d) = &q.domain {
        url.query_pairs_mut().append_pair("domain", d);
    }
    let unreachable =
        |e| ApiError::new(ErrorCode::Unreachable, format!("gatewayd: the coordinator did not answer: {e}"));
    let max = gw.upstream.config().max_body_bytes;
    let (status, body) = gw.federation.client.plain(hyper::Method::GET, &url, None, max).await.map_err(unreachable)?;
    if !(200..300).contains(&status) {
        let status = hyper::StatusCode::from_u16(status).map(|s| s.to_string()).unwrap_or_else(|_| status.to_string());
        return Err(ApiError::new(ErrorCode::UpstreamFailed, format!("gatewayd: the coordinator answered {status}")));
    }
    let list = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(ErrorCode::UpstreamFailed, format!("gatewayd: the coordinator's answer: {e}")))?;
    Ok(Json(list))
}

/// The most of the coordinator's answer to a heartbeat that is read (it is not used).
const HEARTBEAT_ANSWER_MAX: u64 = 64 * 1024;

/// Tells the coordinator, if one is configured, that this gateway is online and which
/// domains it offers (those a rule lends to someone).
pub async fn heartbeat_to_coordinator(gw: &Gateway) {
    let Some(base) = gw.config.federation.coordinator_url.as_deref() else { return };
    let _in_order = gw.federation.heartbeat.lock().await;
    let Ok(url) = url::Url::parse(base).and_then(|u| u.join(crate::federation::coordinator::route::HEARTBEAT)) else {
        tracing::warn!("federation: coordinator_url is not a URL");
        return;
    };
    let Some(public) = gw.public_url() else { return };
    let rules_now = rules::list(&gw.db()).unwrap_or_default();
    let domains: Vec<String> = gw
        .registry()
        .iter()
        .filter(|s| s.borrowed.is_none())
        .filter(|s| rules_now.iter().any(|r| r.allow && (r.domain == s.domain || r.domain == "*")))
        .map(|s| s.domain.clone())
        .collect();
    let listing = crate::federation::coordinator::Listing {
        id: gw.identity.id.clone(),
        name: gw.identity.name.clone(),
        url: public,
        domains,
        seen_secs_ago: 0,
    };
    let Ok(body) = serde_json::to_vec(&listing) else { return };
    let sent = gw.federation.client.plain(hyper::Method::POST, &url, Some(body), HEARTBEAT_ANSWER_MAX).await;
    if let Err(e) = sent {
        tracing::info!(error = %e, "federation: the coordinator did not answer the heartbeat");
    }
}

/// `POST /federation/run`: a peer runs one of our tools with our key. The body is the run's
/// request frames; the answer is its output frames, masked here, where the key is.
pub async fn run(State(gw): State<Arc<Gateway>>, headers: HeaderMap, body: Bytes) -> Response {
    use crate::run::frame::{self, Decoder, Kind};
    let Some(v) = verify(&gw, route::RUN, &headers, &body) else { return terse() };
    let mut audit = Pending::start(&gw, Operation::Run);
    audit.peer(&v.peer);
    let mut decoder = Decoder::default();
    decoder.push(&body);
    let req: Option<crate::run::wire::ExecRequest> = match decoder.next_frame() {
        Ok(Some((Kind::Request, payload))) => serde_json::from_slice(&payload).ok(),
        _ => None,
    };
    let Some(req) = req else {
        let _ = audit.check::<(), _>(Err(ApiError::bad_request("federation: malformed run")));
        return refusal(&gw, &v, 400, ErrorCode::BadRequest, "federation: malformed run".into(), None);
    };
    let mut stdin = Vec::new();
    loop {
        match decoder.next_frame() {
            Ok(Some((Kind::Stdin, payload))) => stdin.push(payload),
            Ok(Some((Kind::StdinEnd, _)) | None) => break,
            _ => return refusal(&gw, &v, 400, ErrorCode::BadRequest, "federation: malformed run".into(), None),
        }
    }
    audit.target(crate::run::audit_target(&req));
    let Some(tool) = gw.tools.get(&req.tool).cloned() else {
        let _ = audit.check::<(), _>(Err(ApiError::new(ErrorCode::NotFound, "no such tool")));
        return refusal(&gw, &v, 404, ErrorCode::NotFound, format!("federation: no tool `{}` here", req.tool), None);
    };
    if let Err(r) = lend::admit_run(&gw, &v.peer, &tool.spec.domain, Instant::now()) {
        return refused(&gw, &v, audit, r);
    }
    let Some(slot) = gw.runs.slot() else {
        return refusal(&gw, &v, 429, ErrorCode::RateLimited, "federation: too many runs under way".into(), None);
    };
    let prepared = match crate::run::prepare(&gw, None, &tool, req) {
        Ok(p) => p,
        Err(e) => {
            let e = ApiError::from(e);
            let (status, code, message) = (e.http_status(), e.code(), e.message().to_owned());
            let _ = audit.check::<(), _>(Err(e));
            return refusal(&gw, &v, status, code, message, None);
        }
    };
    let running = match crate::run::exec::spawn(prepared) {
        Ok(r) => r,
        Err(e) => {
            let _ = audit.check::<(), _>(Err(ApiError::new(ErrorCode::Internal, "cannot start")));
            return refusal(&gw, &v, 500, ErrorCode::Internal, format!("federation: cannot start the tool: {e}"), None);
        }
    };
    let (stdin_tx, stdin_rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    tokio::spawn(async move {
        for chunk in stdin {
            if stdin_tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let driver = tokio::spawn(running.drive(stdin_rx, out_tx, gw.runs.stopping()));
    let mut frames = Vec::new();
    while let Some(b) = out_rx.recv().await {
        frames.extend_from_slice(&b);
    }
    if let Ok(ended) = driver.await {
        let (outcome, bytes) = super::proxy::outcome_of(&ended);
        audit.outcome_text(outcome);
        audit.bytes(bytes);
    }
    drop(slot);
    answer(&gw, &v, 200, frame::MEDIA_TYPE, &[], frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_request_never_debug_prints_its_secret() {
        let req: AddPeer = serde_json::from_str(
            r#"{"id":"gw-b","name":"B","url":"http://127.0.0.1:1","secret":"CANARY-0123456789abcdef0123456789abcdef"}"#,
        )
        .unwrap();
        let shown = format!("{req:?}");
        assert!(!shown.contains("CANARY") && shown.contains("<redacted>"), "{shown}");
        let target = crate::federation::client::PeerTarget { id: "gw-b", url: "http://x", secret: b"CANARY-xyz" };
        assert!(!format!("{target:?}").contains("CANARY"));
    }
}
