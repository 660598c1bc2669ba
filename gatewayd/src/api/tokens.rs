//! Agent tokens: the root public key, minting, revoking, inspecting. The socket only accepts
//! its owner, so whoever reaches these routes may mint. Tokens are never logged (their
//! revocation ids may be).

use std::sync::Arc;
use std::time::SystemTime;

use agentfs::wire::{
    ErrorCode, InspectTokenRequest, MintTokenRequest, RevokeResponse, RevokeTokenRequest, TokenInfo, TokenResponse,
};
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;

use super::audit::Pending;
use super::error::ApiError;
use crate::audit::Operation;
use crate::auth::{AuthError, RevokeScope};
use crate::Gateway;

/// The class of each token failure, for these routes.
fn token_error(e: AuthError) -> ApiError {
    let code = match &e {
        AuthError::Malformed
        | AuthError::TooLarge(_)
        | AuthError::TooComplex(_)
        | AuthError::NotIssuedHere
        | AuthError::ThirdParty
        | AuthError::Sealed
        | AuthError::InvalidAgent(_)
        | AuthError::InvalidAllow { .. }
        | AuthError::NothingToAttenuate
        | AuthError::InvalidRequest(_) => ErrorCode::BadRequest,
        AuthError::Revoked | AuthError::Expired | AuthError::Denied | AuthError::Limits => ErrorCode::NotFound,
        AuthError::KeyFile { .. } | AuthError::Db(_) | AuthError::Internal(_) => {
            tracing::error!(error = %e, "token failure");
            ErrorCode::Internal
        }
    };
    ApiError::new(code, e.to_string())
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    // The rejection text can quote the body, which holds a token: never echo it.
    b.map(|Json(t)| t).map_err(|e| {
        let why = match e {
            JsonRejection::JsonDataError(_) => "unexpected or missing members",
            JsonRejection::JsonSyntaxError(_) => "not JSON",
            JsonRejection::MissingJsonContentType(_) => "the content type is not application/json",
            _ => "unreadable",
        };
        ApiError::bad_request(format!("gatewayd: invalid request body ({why})"))
    })
}

/// `GET /.well-known/nkmc/biscuit-public-key`: `ed25519/<64 hex digits>`, plain text.
pub async fn public_key(State(gw): State<Arc<Gateway>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], gw.auth.public_key_text())
}

/// `POST /v1/tokens`: a new token for an agent, with every right.
pub async fn mint(
    State(gw): State<Arc<Gateway>>,
    req: Result<Json<MintTokenRequest>, JsonRejection>,
) -> Result<Json<TokenResponse>, ApiError> {
    let mut audit = Pending::start(&gw, Operation::TokenMint);
    let req = audit.check(body(req))?;
    audit.target(format!("agent:{}", req.agent));
    let token = audit.check(gw.auth.mint(&req.agent, SystemTime::now()).map_err(token_error))?;
    let id = audit.check(crate::auth::revocation::revocation_ids(&token).map_err(token_error))?;
    let id = id.first().map(String::as_str).unwrap_or("");
    tracing::info!(agent = %req.agent, revocation_id = %id, "token minted");
    // The revocation id names the token in the record; it grants nothing.
    audit.key_id(id);
    audit.ok();
    Ok(Json(TokenResponse { token }))
}

/// `POST /v1/tokens/revoke`: blocks a token (and what derives from it).
pub async fn revoke(
    State(gw): State<Arc<Gateway>>,
    req: Result<Json<RevokeTokenRequest>, JsonRejection>,
) -> Result<Json<RevokeResponse>, ApiError> {
    let mut audit = Pending::start(&gw, Operation::TokenRevoke);
    let req = audit.check(body(req))?;
    if let Some(id) = crate::auth::revocation::revocation_ids(&req.token).ok().and_then(|ids| ids.last().cloned()) {
        audit.key_id(&id);
    }
    // The owner acts; the target is the agent the token was minted for.
    if let Some(agent) = gw.auth.inspect(&req.token).ok().and_then(|i| i.agent) {
        audit.target(format!("agent:{agent}"));
    }
    let scope = if req.lineage { RevokeScope::Lineage } else { RevokeScope::Token };
    let revoked = {
        let conn = gw.db();
        gw.auth.revoke(&conn, &req.token, scope, SystemTime::now()).map_err(token_error)
    };
    let revoked = audit.finish(revoked)?;
    tracing::info!(revoked, lineage = req.lineage, "token revoked");
    Ok(Json(RevokeResponse { revoked: revoked as u64 }))
}

/// `POST /v1/tokens/inspect`: what a token allows, verified with this gateway's key.
pub async fn inspect(
    State(gw): State<Arc<Gateway>>,
    req: Result<Json<InspectTokenRequest>, JsonRejection>,
) -> Result<Json<TokenInfo>, ApiError> {
    let req = body(req)?;
    gw.auth.inspect(&req.token).map(Json).map_err(token_error)
}
