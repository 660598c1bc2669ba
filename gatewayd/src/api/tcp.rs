//! The agent API over TCP: bound where `[tcp]`, `NKMC_HOST` and `NKMC_PORT` say, and every
//! request but the health checks must carry `Authorization: Bearer <token>`. There is no
//! owner over TCP: a request without a token is refused before any handler runs, so the
//! socket's "no token means the owner" rule can never apply here.

use std::net::SocketAddr;

use axum::extract::Request;
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;

use super::error::ApiError;
use crate::config::TcpListen;
use agentfs::wire::ErrorCode;

/// Paths served over TCP without a token: liveness and readiness probes.
pub const UNAUTHENTICATED_PATHS: &[&str] = &["/healthz", "/readyz"];

/// Why the TCP listener could not be started.
#[derive(Debug, thiserror::Error)]
#[error(
    "gatewayd: cannot listen on {host}:{port} for the agent API: {source}; \
     set NKMC_PORT to a free port (0 picks one) or NKMC_PORT=off to run without TCP"
)]
pub struct TcpBindError {
    host: String,
    port: u16,
    source: std::io::Error,
}

/// Binds the listener.
pub async fn bind(listen: &TcpListen) -> Result<TcpListener, TcpBindError> {
    TcpListener::bind((listen.host.as_str(), listen.port)).await.map_err(|source| TcpBindError {
        host: listen.host.clone(),
        port: listen.port,
        source,
    })
}

/// Whether a bound address can be reached from other machines.
pub fn is_public(addr: &SocketAddr) -> bool {
    !addr.ip().is_loopback()
}

/// Refuses, with 401, any request that is not a health check and has no bearer token.
/// The token itself is verified by the operation, like on the socket.
pub async fn require_bearer(req: Request, next: Next) -> Response {
    // Probes need nothing; peer routes are signed instead (checked by their handlers).
    if UNAUTHENTICATED_PATHS.contains(&req.uri().path())
        || req.uri().path().starts_with("/federation/")
        || req.uri().path().starts_with("/coordinator/")
    {
        return next.run(req).await;
    }
    let has_token = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| !t.trim().is_empty());
    if has_token {
        return next.run(req).await;
    }
    let mut resp = ApiError::new(
        ErrorCode::Unauthenticated,
        "gatewayd: the TCP API needs `Authorization: Bearer <token>`; mint one with `nkmc token mint --agent NAME`",
    )
    .into_response();
    resp.headers_mut().insert(WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer realm=\"nkmc\""));
    resp
}
