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
    /// The amount, when paid.
    pub amount: Option<String>,
    /// The operations lent.
    pub ops: Vec<crate::auth::Op>,
}

/// What a borrowed service's `skill.md` adds: whose access it uses, at what price.
pub fn skill_section(offers: &[Offer]) -> String {
    let mut s = String::from("\n## Access\n\nThis service is not registered on this gateway: it is borrowed from a peer, which\nmakes each call with its own key (the key never comes here).\n\n");
    for o in offers {
        let price = match (&o.pricing, &o.amount) {
            (PricingMode::Free, _) => "free".to_owned(),
            (p, Some(a)) => format!("{} {a}", p.as_str()),
            (p, None) => p.as_str().to_owned(),
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
    let peer = { peers::get(&gw.db(), peer_id)? }.ok_or_else(|| FederationError::UnknownPeer(peer_id.to_owned()))?;
    let secret = secret_of(gw, peer_id)?.ok_or_else(|| FederationError::UnknownPeer(peer_id.to_owned()))?;
    let target = PeerTarget { id: &peer.id, url: &peer.url, secret: secret.expose().as_bytes() };
    let answer = gw.federation.client.post(&gw.identity, &target, route, body, &[]).await;
    let status = match &answer {
        Ok(a) if a.status == 401 => "refused",
        Ok(_) => "online",
        Err(_) => "unreachable",
    };
    let _ = peers::set_status(&gw.db(), peer_id, status, gw.audit.now_ms());
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
        let mut offers: Vec<Offer> = gw
            .registry()
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
            ops: offer.ops.clone(),
        });
        offers.sort_by_key(|o| (o.pricing != PricingMode::Free, o.peer.clone()));
        gw.registry_mut().insert_borrowed(crate::registry::Service::borrowed(domain.clone(), spec, offers));
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

/// Refreshes every peer (at start, and when asked); failures are logged and left for later.
pub async fn refresh_all(gw: &Gateway) {
    let ids: Vec<String> = match peers::list(&gw.db()) {
        Ok(p) => p.into_iter().map(|p| p.id).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "federation: cannot read the peers");
            return;
        }
    };
    for id in ids {
        if let Err(e) = refresh(gw, &id).await {
            tracing::info!(peer = %id, error = %e, "federation: peer not refreshed");
        }
    }
}

/// The peers to ask for `domain`, cheapest first: for a borrowed service its offers; for a
/// service registered here (with no key for the caller) the peers advertising the domain.
pub fn lenders(gw: &Gateway, service: &crate::registry::Service) -> Vec<String> {
    if let Some(offers) = &service.borrowed {
        return offers.iter().map(|o| o.peer.clone()).collect();
    }
    match peers::lenders_of(&gw.db(), &service.domain) {
        Ok(p) => p.into_iter().map(|p| p.id).collect(),
        Err(_) => Vec::new(),
    }
}

/// Sends `op` on `path` to the first lender that serves it; the answer as if the upstream
/// had given it (its status, content type and body). A lender that is unreachable, answers
/// badly or refuses is skipped; when all fail, the last refusal is the error.
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
    let req = ExecRequest { op, path: path.to_string(), body: text, pattern: None };
    let payload = serde_json::to_vec(&req).map_err(|e| OpError::Peer {
        code: ErrorCode::Internal,
        message: format!("federation: {e}"),
        upstream_status: None,
    })?;
    let mut last = OpError::Peer {
        code: ErrorCode::PermissionDenied,
        message: format!("federation: no peer lends {domain} to this gateway"),
        upstream_status: None,
    };
    for peer in lenders {
        let answer = match call(gw, peer, route::EXEC, payload.clone()).await {
            Ok(a) => a,
            Err(e) => {
                tracing::info!(peer = %peer, error = %e, "federation: lender failed; trying the next");
                last = OpError::Peer { code: ErrorCode::Unreachable, message: e.to_string(), upstream_status: None };
                continue;
            }
        };
        if answer.status == 200 {
            return Ok(as_upstream(answer));
        }
        let refusal: Option<ExecRefusal> = serde_json::from_slice(&answer.body).ok();
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

/// The lender's answer as an upstream response: its `x-nkmc-upstream-status`, content type
/// and body (already masked by the lender; no credential was sent from here).
fn as_upstream(answer: PeerAnswer) -> crate::upstream::Answer {
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
    crate::upstream::Answer::new(reqwest::Response::from(resp), None)
}
