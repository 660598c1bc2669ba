//! The borrower's side: which peers lend a domain to us, keeping borrowed services in the
//! registry, and sending one typed operation to a lender (the next one when a lender fails).
//! Lookup order per request (see `ops`): the caller's own key, the pool key, then peers.

use agentfs::path::VPath;
use agentfs::wire::ErrorCode;
use serde::{Deserialize, Serialize};

use super::client::{PeerAnswer, PeerTarget};
use super::protocol::{route, ExecOp, ExecRefusal, ExecRequest, QueryRequest, QueryResponse};
use super::rules::PricingMode;
use super::{peers, FederationError};
use crate::ops::OpError;
use crate::payments;
use crate::vault::{KeyOwner, PEER_DOMAIN};
use crate::Gateway;

/// One peer's offer for a domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// The lender's id.
    pub peer: String,
    /// Its name.
    pub name: String,
    /// The price.
    pub pricing: PricingMode,
    /// The amount, when paid (per request, or per thousand tokens).
    pub amount: Option<String>,
    /// Per-token pricing: the tokens one payment buys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepaid_tokens: Option<u64>,
    /// The operations lent.
    pub ops: Vec<crate::auth::Op>,
}

/// What a borrowed service's `skill.md` adds: whose access it uses, at what price.
pub fn skill_section(offers: &[Offer]) -> String {
    let mut s = String::from("\n## Access\n\nThis service is not registered on this gateway: it is borrowed from a peer, which\nmakes each call with its own key (the key never comes here).\n\n");
    for o in offers {
        let price = match (&o.pricing, &o.amount, o.prepaid_tokens) {
            (PricingMode::Free, ..) => "free".to_owned(),
            (PricingMode::PerToken, Some(a), Some(n)) => {
                format!("per-token {a} per 1000 tokens, paid in advance for {n} tokens at a time")
            }
            (p, Some(a), _) => format!("{} {a}", p.as_str()),
            (p, None, _) => p.as_str().to_owned(),
        };
        let ops: Vec<&str> = o.ops.iter().map(|op| op.as_str()).collect();
        s.push_str(&format!("- peer `{}` ({}): {}; lends {}\n", o.peer, o.name, price, ops.join(", ")));
    }
    s
}

/// The secret shared with `peer`.
pub(crate) fn secret_of(gw: &Gateway, peer: &str) -> Result<Option<crate::vault::Secret>, FederationError> {
    let conn = gw.db();
    Ok(gw.vault.key(&conn, KeyOwner::Peer(peer), PEER_DOMAIN)?.map(|c| c.secret))
}

/// Sends `body` to `route` of `peer_id`, signed; records how the peer answered.
pub(crate) async fn call(
    gw: &Gateway,
    peer_id: &str,
    route: &str,
    body: Vec<u8>,
) -> Result<PeerAnswer, FederationError> {
    call_with(gw, peer_id, route, body, &[]).await
}

/// [`call`] with extra (unsigned) headers: `X-PAYMENT`, itself signed by the wallet.
async fn call_with(
    gw: &Gateway,
    peer_id: &str,
    route: &str,
    body: Vec<u8>,
    extra: &[(&str, String)],
) -> Result<PeerAnswer, FederationError> {
    let url = { gw.federation.tables.peer_url(&gw.db(), peer_id)? }
        .ok_or_else(|| FederationError::UnknownPeer(peer_id.to_owned()))?;
    let secret = secret_of(gw, peer_id)?.ok_or_else(|| FederationError::UnknownPeer(peer_id.to_owned()))?;
    let target = PeerTarget { id: peer_id, url: &url, secret: secret.expose().as_bytes() };
    let started = std::time::Instant::now();
    let answer = gw.federation.client.post(&gw.identity, &target, route, body, extra).await;
    gw.federation.latency.observe(peer_id, answer.is_ok().then(|| started.elapsed()));
    let status = match &answer {
        Ok(a) if a.status == 401 => "refused",
        Ok(_) => "online",
        Err(_) => "unreachable",
    };
    let now_ms = gw.audit.now_ms();
    gw.federation.statuses.note(|| peers::set_status(&gw.db(), peer_id, status, now_ms), peer_id, status);
    Ok(answer?)
}

async fn query(gw: &Gateway, peer_id: &str, domain: Option<&str>) -> Result<QueryResponse, FederationError> {
    let body = serde_json::to_vec(&QueryRequest { domain: domain.map(str::to_owned) })
        .map_err(|e| FederationError::Protocol(e.to_string()))?;
    let answer = call(gw, peer_id, route::QUERY, body).await?;
    if answer.status != 200 {
        return Err(FederationError::Refused { peer: peer_id.to_owned(), status: answer.status });
    }
    serde_json::from_slice(&answer.body).map_err(|e| FederationError::Protocol(format!("peer {peer_id}: {e}")))
}

/// Asks `peer_id` what it lends us now, stores the list, and shows each domain it lends that
/// is not registered here as a borrowed service. Returns the domains.
pub async fn refresh(gw: &Gateway, peer_id: &str) -> Result<Vec<String>, FederationError> {
    let all = query(gw, peer_id, None).await?;
    let domains = all.domains.clone();
    apply_domains(gw, peer_id, &domains).await?;
    Ok(domains)
}

/// Records that `peer_id` lends exactly `domains` to us, and updates the borrowed services.
pub async fn apply_domains(gw: &Gateway, peer_id: &str, domains: &[String]) -> Result<(), FederationError> {
    peers::set_domains(&gw.db(), peer_id, domains, gw.audit.now_ms())?;
    let name = { peers::get(&gw.db(), peer_id)? }.map(|p| p.name).unwrap_or_default();
    for domain in domains {
        let local = gw.registry().get(domain).is_some_and(|s| s.borrowed.is_none());
        if local {
            continue;
        }
        let offer = match query(gw, peer_id, Some(domain)).await {
            Ok(q) if q.available => q,
            Ok(_) => continue,
            Err(e) => {
                tracing::info!(peer = peer_id, domain = %domain, error = %e, "federation: a lent domain could not be queried");
                continue;
            }
        };
        let Some(spec) = offer.spec.clone().and_then(|v| serde_json::from_value(v).ok()) else { continue };
        // Read and replace the offers under one lock: peers are refreshed concurrently.
        let mut registry = gw.registry_mut();
        let mut offers: Vec<Offer> = registry
            .get(domain)
            .and_then(|s| s.borrowed.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|o| o.peer != peer_id)
            .collect();
        offers.push(Offer {
            peer: peer_id.to_owned(),
            name: name.clone(),
            pricing: offer.pricing.unwrap_or(PricingMode::Free),
            amount: offer.amount.clone(),
            prepaid_tokens: offer.prepaid_tokens,
            ops: offer.ops.clone(),
        });
        offers.sort_by_key(|o| (o.pricing != PricingMode::Free, o.peer.clone()));
        registry.insert_borrowed(crate::registry::Service::borrowed(domain.clone(), spec, offers));
    }
    forget_unoffered(gw)?;
    Ok(())
}

/// Drops borrowed services (and offers) whose lenders no longer advertise them.
fn forget_unoffered(gw: &Gateway) -> Result<(), FederationError> {
    let all = peers::list(&gw.db())?;
    let offered = |domain: &str| all.iter().any(|p| p.domains.iter().any(|d| d == domain));
    gw.registry_mut().drop_borrowed(offered);
    Ok(())
}

/// Refreshes every peer at once (at start, then every 30 s); failures are logged and left for
/// later.
pub async fn refresh_all(gw: &Gateway) {
    let ids: Vec<String> = match peers::list(&gw.db()) {
        Ok(p) => p.into_iter().map(|p| p.id).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "federation: cannot read the peers");
            return;
        }
    };
    // Asked in parallel: one slow or dead peer does not hold the others' offers back.
    let refreshes = ids.iter().map(|id| async move {
        if let Err(e) = refresh(gw, id).await {
            tracing::info!(peer = %id, error = %e, "federation: peer not refreshed");
        }
    });
    futures_util::future::join_all(refreshes).await;
}

/// The peers to ask for `domain`, cheapest first, then fastest (a peer that just failed
/// goes last): for a borrowed service its offers; for a service registered here (with no key
/// for the caller) the peers advertising the domain.
pub fn lenders(gw: &Gateway, service: &crate::registry::Service) -> Vec<String> {
    let decimals = gw.config.payments.decimals;
    let mut ranked: Vec<(u128, String)> = match &service.borrowed {
        Some(offers) => offers
            .iter()
            .map(|o| {
                let price = match (o.pricing, &o.amount) {
                    (PricingMode::Free, _) => 0,
                    (_, Some(a)) => payments::amount::to_atomic(a, decimals).unwrap_or(u128::MAX),
                    (_, None) => u128::MAX,
                };
                (price, o.peer.clone())
            })
            .collect(),
        None => match gw.federation.tables.lenders_of(&gw.db(), &service.domain) {
            Ok(ids) => ids.into_iter().map(|id| (0, id)).collect(),
            Err(_) => Vec::new(),
        },
    };
    let now = std::time::Instant::now();
    ranked.sort_by_cached_key(|(price, peer)| (*price, gw.federation.latency.rank(peer, now), peer.clone()));
    ranked.into_iter().map(|(_, peer)| peer).collect()
}

/// Sends `op` on `path` to the first lender that serves it; the answer as if the upstream
/// had given it (its status, content type and body). A lender that refuses with a signed
/// answer is skipped, and so is one that is unreachable — except after a write or delete,
/// or a payment, may have reached it: then the error is final, so nothing is done or paid
/// twice. When all fail, the last refusal is the error.
pub async fn exec(
    gw: &Gateway,
    lenders: &[String],
    op: ExecOp,
    path: &VPath,
    body: Option<bytes::Bytes>,
) -> Result<crate::upstream::Answer, OpError> {
    let domain = path.service().map(|d| d.to_string()).unwrap_or_default();
    let text = match body {
        Some(b) if !b.is_empty() => Some(
            String::from_utf8(b.to_vec())
                .map_err(|_| OpError::NotJson { path: path.to_string(), message: "not UTF-8".into() })?,
        ),
        _ => None,
    };
    let req = ExecRequest { op, path: path.to_string(), body: text, pattern: None, payment_sha256: None };
    let payload = encode(&req)?;
    let mut last = OpError::Peer {
        code: ErrorCode::PermissionDenied,
        message: format!("federation: no peer lends {domain} to this gateway"),
        upstream_status: None,
    };
    let side_effects = matches!(op, ExecOp::Write | ExecOp::Delete);
    for peer in lenders {
        let mut answer = match call(gw, peer, route::EXEC, payload.clone()).await {
            Ok(a) => a,
            Err(e) => {
                last = OpError::Peer { code: ErrorCode::Unreachable, message: e.to_string(), upstream_status: None };
                if side_effects && reached(&e) {
                    return Err(last);
                }
                tracing::info!(peer = %peer, error = %e, "federation: lender failed; trying the next");
                continue;
            }
        };
        let mut paid = None;
        if answer.status == 402 {
            match pay_and_retry(gw, peer, &req, &answer.body).await {
                Ok((again, signed)) => {
                    answer = again;
                    paid = Some(signed);
                }
                Err(Retry::Next(e)) => {
                    tracing::info!(peer = %peer, error = %e, "federation: a lender's price was not paid");
                    last = e;
                    continue;
                }
                Err(Retry::Final(e)) => return Err(e),
            }
        }
        if answer.status == 200 {
            if let Some(signed) = &paid {
                let tx = settlement_of(&answer).and_then(|s| s.transaction).unwrap_or_default();
                if let Err(e) = signed.settled(gw, &tx) {
                    tracing::error!(peer = %peer, error = %e, "federation: a settled payment was not marked in the ledger");
                }
            }
            return Ok(as_upstream(answer, peer));
        }
        let refusal: Option<ExecRefusal> = serde_json::from_slice(&answer.body).ok();
        // A signed refusal: the payment was not taken, unless the refusal carries its
        // settlement (a paid write or delete is settled before it runs).
        if let Some(signed) = &paid {
            let settled = refusal
                .as_ref()
                .and_then(|r| r.payment_response.as_deref())
                .and_then(payments::x402::Settlement::from_header)
                .filter(|s| s.success);
            let marked = match settled {
                Some(s) => signed.settled(gw, s.transaction.as_deref().unwrap_or_default()),
                None => signed.not_taken(gw),
            };
            if let Err(e) = marked {
                tracing::error!(peer = %peer, error = %e, "federation: a payment's outcome was not recorded in the ledger");
            }
        }
        if answer.status == 402 {
            let why = serde_json::from_slice::<payments::x402::PaymentRequired>(&answer.body)
                .map(|r| r.error)
                .unwrap_or_default();
            last = OpError::Peer {
                code: ErrorCode::PaymentRequired,
                message: format!("peer {peer} did not take the payment: {why}"),
                upstream_status: None,
            };
            continue;
        }
        let (code, message, upstream_status) = match refusal {
            Some(r) => (r.code, format!("peer {peer}: {}", r.message), r.upstream_status),
            None => (ErrorCode::UpstreamFailed, format!("peer {peer}: HTTP {}", answer.status), None),
        };
        last = OpError::Peer { code, message, upstream_status };
        // An answer about the upstream itself (it answered 404, 409...) is final.
        if upstream_status.is_some() {
            return Err(last);
        }
    }
    Err(last)
}

fn encode(req: &ExecRequest) -> Result<Vec<u8>, OpError> {
    serde_json::to_vec(req).map_err(|e| OpError::Peer {
        code: ErrorCode::Internal,
        message: format!("federation: {e}"),
        upstream_status: None,
    })
}

/// Whether a failed call may have reached the lender (it was sent, then the answer failed;
/// a redirect is an answer from whatever serves the lender's URL, which may have acted).
fn reached(e: &FederationError) -> bool {
    match e {
        FederationError::Call(super::client::PeerCallError::Unreachable { sent, .. }) => *sent,
        FederationError::Call(
            super::client::PeerCallError::BadAnswer { .. } | super::client::PeerCallError::Redirected { .. },
        ) => true,
        _ => false,
    }
}

/// The settlement a paid answer carries: in its signed head frame, else its header.
fn settlement_of(answer: &PeerAnswer) -> Option<payments::x402::Settlement> {
    if let Some(s) = answer.framed.as_ref().and_then(|f| f.head.payment_response.as_deref()) {
        return payments::x402::Settlement::from_header(s);
    }
    let header = answer.headers.get(payments::x402::PAYMENT_RESPONSE_HEADER)?.to_str().ok()?;
    payments::x402::Settlement::from_header(header)
}

/// How paying failed: try the next lender, or stop (the payment may have been taken).
enum Retry {
    Next(OpError),
    Final(OpError),
}

/// Pays `peer`'s 402 (`answer`) to `req` (if the owner's wallet, budget and the peer's
/// advertised price allow) and sends the operation again with the payment, bound to it by
/// its digest in the signed body.
async fn pay_and_retry(
    gw: &Gateway,
    peer: &str,
    req: &ExecRequest,
    answer: &[u8],
) -> Result<(PeerAnswer, payments::payer::Signed), Retry> {
    let refused = |code: ErrorCode, message: String| OpError::Peer { code, message, upstream_status: None };
    let required: payments::x402::PaymentRequired = serde_json::from_slice(answer).map_err(|_| {
        Retry::Next(refused(
            ErrorCode::UpstreamFailed,
            format!("federation: peer {peer} answered 402 without x402 requirements"),
        ))
    })?;
    let domain = req.path.split('/').nth(1).unwrap_or_default();
    let offered = advertised_price(gw, peer, domain).await;
    let signed = payments::payer::pay(gw, peer, offered.as_deref(), &required, req.op.as_str(), &req.path)
        .map_err(|e| Retry::Next(refused(ErrorCode::PaymentRequired, e.to_string())))?;
    let bound = ExecRequest { payment_sha256: Some(payments::lender::payment_digest(&signed.header)), ..req.clone() };
    let payload = encode(&bound).map_err(Retry::Next)?;
    let extra = [(payments::x402::PAYMENT_HEADER, signed.header.clone())];
    match call_with(gw, peer, route::EXEC, payload, &extra).await {
        Ok(again) => Ok((again, signed)),
        // The payment may have reached the lender: it stays pending (counted against the
        // budget until it expires) and no other lender is paid for this call.
        Err(e) => Err(Retry::Final(refused(
            ErrorCode::Unreachable,
            format!("{e}; a payment was sent and is counted until it expires"),
        ))),
    }
}

/// The most `peer` may ask for one payment for `domain`, as it advertises it (its offer, or
/// its answer to a query now): the amount per request, or the price of a per-token top-up.
async fn advertised_price(gw: &Gateway, peer: &str, domain: &str) -> Option<String> {
    let known = gw
        .registry()
        .get(domain)
        .and_then(|s| s.borrowed.clone())
        .and_then(|offers| offers.into_iter().find(|o| o.peer == peer));
    let (pricing, amount, prepaid) = match known {
        Some(o) => (o.pricing, o.amount, o.prepaid_tokens),
        None => {
            let q = query(gw, peer, Some(domain)).await.ok().filter(|q| q.available)?;
            (q.pricing.unwrap_or(PricingMode::Free), q.amount, q.prepaid_tokens)
        }
    };
    let amount = amount?;
    match (pricing, prepaid) {
        (PricingMode::PerToken, Some(tokens)) => {
            let decimals = gw.config.payments.decimals;
            let atomic = payments::credit::top_up_price(&amount, tokens, decimals).ok()?;
            Some(payments::amount::to_decimal(atomic, decimals))
        }
        _ => Some(amount),
    }
}

/// The lender's answer as an upstream response: its `x-nkmc-upstream-status`, content type
/// and body (already masked by the lender; no credential was sent from here), marked as
/// served by `peer`.
fn as_upstream(answer: PeerAnswer, peer: &str) -> crate::upstream::Answer {
    if let Some(framed) = answer.framed {
        // The head frame's status and content type are the signed ones.
        let content_type = reqwest::header::HeaderValue::from_str(&framed.head.content_type)
            .unwrap_or(reqwest::header::HeaderValue::from_static("application/octet-stream"));
        let mut resp = axum::http::Response::new(reqwest::Body::wrap_stream(framed.body));
        *resp.status_mut() =
            reqwest::StatusCode::from_u16(framed.head.upstream_status).unwrap_or(reqwest::StatusCode::BAD_GATEWAY);
        resp.headers_mut().insert(reqwest::header::CONTENT_TYPE, content_type);
        return crate::upstream::Answer::new(reqwest::Response::from(resp), None).served_by(peer);
    }
    let status = answer
        .headers
        .get(crate::api::UPSTREAM_STATUS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u16>().ok())
        .unwrap_or(200);
    let mut builder = axum::http::Response::builder().status(status);
    if let Some(ct) = answer.headers.get(reqwest::header::CONTENT_TYPE) {
        builder = builder.header(reqwest::header::CONTENT_TYPE, ct.clone());
    }
    let resp = builder.body(answer.body).unwrap_or_else(|_| axum::http::Response::new(bytes::Bytes::new()));
    crate::upstream::Answer::new(reqwest::Response::from(resp), None).served_by(peer)
}
