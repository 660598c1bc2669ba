//! `/healthz` (the process answers) and `/readyz` (it can serve: database, registry and
//! audit log usable). Both answer without a token, on the socket and over TCP, and say
//! nothing about services, keys or agents.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

use crate::Gateway;

/// A probe's answer.
#[derive(Debug, Serialize)]
pub struct Health {
    /// `ok`, or `unavailable`.
    status: &'static str,
    /// Why not ready (absent when ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok", reason: None })
}

pub async fn readyz(State(gw): State<Arc<Gateway>>) -> (StatusCode, Json<Health>) {
    match gw.readiness() {
        Ok(()) => (StatusCode::OK, Json(Health { status: "ok", reason: None })),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, Json(Health { status: "unavailable", reason: Some(reason) })),
    }
}
