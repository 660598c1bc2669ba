//! gatewayd's API: HTTP/1.1 + JSON, versioned under `/v1`, strict request types.
//! Every route is described in `schemas/gatewayd.openapi.yaml`.

mod admin;
mod audit;
pub mod error;
mod fs;
mod proxy;
pub mod socket;
mod tokens;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use axum::Router;

use crate::Gateway;
use error::ApiError;

/// A registration carries a whole document, JSON-escaped (so up to twice its size).
const REGISTER_BODY_LIMIT: usize = 2 * agentfs::spec::MAX_DOCUMENT_BYTES + 64 * 1024;
/// A write's body (the JSON sent upstream).
const WRITE_BODY_LIMIT: usize = 16 * 1024 * 1024;
/// Every other request body.
const BODY_LIMIT: usize = 1024 * 1024;

/// Every route the router serves, as (method, path template). `schemas/gatewayd.openapi.yaml`
/// describes exactly these; a test holds the three (table, router, schema) in step.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/status"),
    ("POST", "/v1/shutdown"),
    ("GET", "/v1/services"),
    ("POST", "/v1/services"),
    ("DELETE", "/v1/services/{domain}"),
    ("GET", "/v1/keys"),
    ("PUT", "/v1/keys/{domain}"),
    ("DELETE", "/v1/keys/{domain}"),
    ("GET", "/v1/fs/stat"),
    ("GET", "/v1/fs/list"),
    ("GET", "/v1/fs/read"),
    ("POST", "/v1/fs/write"),
    ("POST", "/v1/fs/delete"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/audit/verify"),
    ("GET", "/.well-known/nkmc/biscuit-public-key"),
    ("POST", "/v1/tokens"),
    ("POST", "/v1/tokens/revoke"),
    ("POST", "/v1/tokens/inspect"),
    ("POST", "/v1/proxy/exec"),
    ("GET", "/v1/proxy/tools"),
];

/// Every route, for the socket.
pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/status", get(admin::status))
        .route("/v1/shutdown", post(admin::shutdown))
        .route(
            "/v1/services",
            get(admin::list_services).post(admin::register).layer(DefaultBodyLimit::max(REGISTER_BODY_LIMIT)),
        )
        .route("/v1/services/{domain}", axum::routing::delete(admin::remove_service))
        .route("/v1/keys", get(admin::list_keys))
        .route("/v1/keys/{domain}", put(admin::set_key).delete(admin::remove_key))
        .route("/v1/fs/stat", get(fs::stat))
        .route("/v1/fs/list", get(fs::list))
        .route("/v1/fs/read", get(fs::read))
        .route("/v1/fs/write", post(fs::write).layer(DefaultBodyLimit::max(WRITE_BODY_LIMIT)))
        .route("/v1/fs/delete", post(fs::delete))
        .route("/v1/audit", get(audit::list))
        .route("/v1/audit/verify", get(audit::verify))
        .route("/.well-known/nkmc/biscuit-public-key", get(tokens::public_key))
        .route("/v1/tokens", post(tokens::mint))
        .route("/v1/tokens/revoke", post(tokens::revoke))
        .route("/v1/tokens/inspect", post(tokens::inspect))
        .route("/v1/proxy/exec", post(proxy::exec))
        .route("/v1/proxy/tools", get(proxy::tools))
        .fallback(|| async { ApiError::new(agentfs::wire::ErrorCode::BadRequest, "gatewayd: no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(agentfs::wire::ErrorCode::BadRequest, "gatewayd: method not allowed on this route")
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(gw)
}

/// Serves the API on the socket until a shutdown is requested or SIGTERM/SIGINT arrives.
pub async fn serve(gw: Arc<Gateway>, listener: socket::OwnerOnly) -> std::io::Result<()> {
    let app = router(gw.clone());
    let stop = {
        let gw = gw.clone();
        async move {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    gw.shutdown_requested().await;
                    gw.runs.stop_all();
                    return;
                }
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
                _ = gw.shutdown_requested() => tracing::info!("shutdown requested over the API"),
            }
            gw.runs.stop_all();
        }
    };
    axum::serve(listener, app).with_graceful_shutdown(stop).await
}
