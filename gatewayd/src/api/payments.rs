//! The owner's side of x402 payments, on the socket: the wallet that pays peers
//! (`/v1/wallet`), the daily budget (`/v1/budget`) and the ledger of charges (`/v1/ledger`).

use std::sync::Arc;

use agentfs::wire::ErrorCode;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::audit::Pending;
use super::error::ApiError;
use crate::audit::Operation;
use crate::payments::payer::{self, Budget, SetBudget, WalletInfo};
use crate::payments::{amount, ledger, PaymentError};
use crate::vault::{KeyOwner, WALLET_DOMAIN};
use crate::Gateway;

impl From<PaymentError> for ApiError {
    fn from(e: PaymentError) -> Self {
        let code = match &e {
            PaymentError::Invalid(_) | PaymentError::NotConfigured => ErrorCode::BadRequest,
            PaymentError::Refused(_)
            | PaymentError::NoWallet { .. }
            | PaymentError::OverBudget { .. }
            | PaymentError::Terms { .. } => ErrorCode::PaymentRequired,
            PaymentError::Facilitator(_) => ErrorCode::UpstreamFailed,
            PaymentError::Db(_) | PaymentError::Vault(_) => ErrorCode::Internal,
        };
        ApiError::new(code, e.to_string())
    }
}

fn info(gw: &Gateway, address: String) -> WalletInfo {
    WalletInfo { address, network: gw.config.payments.network.clone(), asset: gw.config.payments.asset.clone() }
}

/// `GET /v1/wallet`: the wallet's address (never its key).
pub async fn show_wallet(State(gw): State<Arc<Gateway>>) -> Result<Json<WalletInfo>, ApiError> {
    match payer::wallet(&gw)? {
        Some(w) => Ok(Json(info(&gw, w.address().to_string()))),
        None => Err(ApiError::new(
            ErrorCode::NotFound,
            "gatewayd: no wallet; create one with `nkmc wallet create` or import one with `nkmc wallet import`",
        )),
    }
}

/// `POST /v1/wallet`: `{"create": true}` or `{"key": "0x…"}`. Its `Debug` never shows the key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetWallet {
    #[serde(default)]
    create: bool,
    #[serde(default)]
    key: Option<String>,
}

impl std::fmt::Debug for SetWallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetWallet").field("create", &self.create).field("key", &"<redacted>").finish()
    }
}

/// `POST /v1/wallet`: stores a new or given key as the wallet that pays peers.
pub async fn set_wallet(
    State(gw): State<Arc<Gateway>>,
    req: Result<Json<SetWallet>, JsonRejection>,
) -> Result<Json<WalletInfo>, ApiError> {
    let mut audit = Pending::start(&gw, Operation::WalletSet);
    audit.target("wallet");
    // The rejection text could quote the key: never echo it.
    let Json(req) = audit.check(req.map_err(|_| {
        ApiError::bad_request("gatewayd: invalid request body: expected {\"create\": true} or {\"key\": \"0x…\"}")
    }))?;
    let key = match (req.create, req.key) {
        (true, None) => None,
        (false, Some(k)) => Some(Zeroizing::new(k)),
        _ => return Err(audit.fail(ApiError::bad_request("gatewayd: give either create or key"))),
    };
    let address = audit.finish(payer::store_wallet(&gw, key).map_err(ApiError::from))?;
    Ok(Json(info(&gw, address.to_string())))
}

/// `DELETE /v1/wallet`.
pub async fn remove_wallet(State(gw): State<Arc<Gateway>>) -> Result<StatusCode, ApiError> {
    let mut audit = Pending::start(&gw, Operation::WalletRemove);
    audit.target("wallet");
    let removed = { gw.vault.remove_own(&gw.db(), KeyOwner::Wallet, WALLET_DOMAIN) };
    let removed = audit.check(removed.map_err(ApiError::from))?;
    if removed == 0 {
        return Err(audit.fail(ApiError::new(ErrorCode::NotFound, "gatewayd: there is no wallet to remove")));
    }
    audit.ok();
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/budget`.
pub async fn show_budget(State(gw): State<Arc<Gateway>>) -> Result<Json<Budget>, ApiError> {
    Ok(Json(payer::budget(&gw)?))
}

/// `PUT /v1/budget`: the most this gateway pays peers per UTC day.
pub async fn set_budget(
    State(gw): State<Arc<Gateway>>,
    req: Result<Json<SetBudget>, JsonRejection>,
) -> Result<Json<Budget>, ApiError> {
    let mut audit = Pending::start(&gw, Operation::BudgetSet);
    audit.target("budget");
    let Json(req) = audit.check(req.map_err(|e| ApiError::bad_request(format!("gatewayd: {}", e.body_text()))))?;
    let atomic = audit.check(amount::to_atomic(&req.daily, gw.config.payments.decimals).map_err(ApiError::from))?;
    audit.check({ payer::set_daily_budget(&gw.db(), atomic) }.map_err(ApiError::from))?;
    audit.ok();
    Ok(Json(payer::budget(&gw)?))
}

/// `?since_ms=&limit=`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerQuery {
    #[serde(default)]
    since_ms: i64,
    #[serde(default)]
    limit: Option<u32>,
}

/// `GET /v1/ledger`: charges, oldest first.
pub async fn ledger(
    State(gw): State<Arc<Gateway>>,
    q: Result<Query<LedgerQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<ledger::Entry>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(format!("gatewayd: {}", e.body_text())))?;
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let entries = { ledger::list(&gw.db(), q.since_ms, limit) }
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("gatewayd: the ledger: {e}")))?;
    Ok(Json(entries))
}
