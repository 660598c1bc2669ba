//! gatewayd's API: HTTP/1.1 + JSON, versioned under `/v1`, strict request types.
//! Every route is described in `schemas/gatewayd.openapi.yaml`.

mod admin;
mod audit;
mod batch;
pub mod error;
mod federation;
mod fs;
mod health;
mod panic;
mod payments;
mod proxy;
pub mod socket;
pub mod tcp;
mod tokens;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use axum::Router;

use crate::Gateway;
use error::ApiError;

pub use federation::{announce_all, heartbeat_to_coordinator};
pub use fs::UPSTREAM_STATUS as UPSTREAM_STATUS_HEADER;

/// A registration carries a whole document, JSON-escaped (so up to twice its size).
const REGISTER_BODY_LIMIT: usize = 2 * agentfs::spec::MAX_DOCUMENT_BYTES + 64 * 1024;
/// A write's body (the JSON sent upstream).
const WRITE_BODY_LIMIT: usize = 16 * 1024 * 1024;
/// Every other request body.
const BODY_LIMIT: usize = 1024 * 1024;

/// The owner's routes, served on the socket only, as (method, path template). The socket
/// serves these and [`AGENT_ROUTES`]; `schemas/gatewayd.openapi.yaml` describes exactly
/// those and [`PEER_ROUTES`]; a test holds table, router and schema in step.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/status"),
    ("POST", "/v1/shutdown"),
    ("GET", "/v1/services"),
    ("POST", "/v1/services"),
    ("DELETE", "/v1/services/{domain}"),
    ("GET", "/v1/keys"),
    ("PUT", "/v1/keys/{domain}"),
    ("DELETE", "/v1/keys/{domain}"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/audit/verify"),
    ("POST", "/v1/tokens"),
    ("POST", "/v1/tokens/revoke"),
    ("POST", "/v1/vault/rotate"),
    ("GET", "/v1/vault/check"),
    ("GET", "/v1/peers"),
    ("POST", "/v1/peers"),
    ("DELETE", "/v1/peers/{id}"),
    ("GET", "/v1/peers/discover"),
    ("GET", "/v1/rules"),
    ("PUT", "/v1/rules/{domain}"),
    ("DELETE", "/v1/rules/{domain}"),
    ("GET", "/v1/wallet"),
    ("POST", "/v1/wallet"),
    ("DELETE", "/v1/wallet"),
    ("GET", "/v1/budget"),
    ("PUT", "/v1/budget"),
    ("GET", "/v1/ledger"),
];

/// The agent routes: served on the socket and over TCP (where a bearer token
/// is required on all but the health checks). The schema marks them `x-nkmc-tcp: true`.
pub const AGENT_ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/v1/fs/stat"),
    ("GET", "/v1/fs/list"),
    ("GET", "/v1/fs/read"),
    ("POST", "/v1/fs/read-batch"),
    ("POST", "/v1/fs/write"),
    ("POST", "/v1/fs/delete"),
    ("POST", "/v1/fs/grep"),
    ("GET", "/.well-known/nkmc/biscuit-public-key"),
    ("POST", "/v1/tokens/inspect"),
    ("POST", "/v1/proxy/exec"),
    ("GET", "/v1/proxy/tools"),
];

/// The routes of [`AGENT_ROUTES`], without state.
fn agent_routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/v1/fs/stat", get(fs::stat))
        .route("/v1/fs/list", get(fs::list))
        .route("/v1/fs/read", get(fs::read))
        .route(agentfs::wire::batch::ROUTE, post(batch::read_batch))
        .route("/v1/fs/write", post(fs::write).layer(DefaultBodyLimit::max(WRITE_BODY_LIMIT)))
        .route("/v1/fs/delete", post(fs::delete))
        .route("/v1/fs/grep", post(fs::grep))
        .route("/.well-known/nkmc/biscuit-public-key", get(tokens::public_key))
        .route("/v1/tokens/inspect", post(tokens::inspect))
        .route("/v1/proxy/exec", post(proxy::exec))
        .route("/v1/proxy/tools", get(proxy::tools))
}

/// Answers for unknown routes and methods, then the body limit, a panic in a handler
/// answered as 500 `internal` ([`panic`]), and the state.
fn finish(routes: Router<Arc<Gateway>>, gw: Arc<Gateway>) -> Router {
    routes
        .fallback(|| async { ApiError::new(agentfs::wire::ErrorCode::BadRequest, agentfs::wire::NO_SUCH_ROUTE) })
        .method_not_allowed_fallback(|| async {
            ApiError::new(agentfs::wire::ErrorCode::BadRequest, "gatewayd: method not allowed on this route")
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(panic::catch_panic))
        .with_state(gw)
}

/// The peer protocol, on the TCP listener only: signed by the peer, no bearer token.
pub const PEER_ROUTES: &[(&str, &str)] = &[
    ("POST", "/federation/query"),
    ("POST", "/federation/exec"),
    ("POST", "/federation/announce"),
    ("POST", "/federation/run"),
    ("POST", "/coordinator/heartbeat"),
    ("GET", "/coordinator/gateways"),
];

/// The TCP listener: [`AGENT_ROUTES`] behind [`tcp::require_bearer`], and [`PEER_ROUTES`].
pub fn tcp_router(gw: Arc<Gateway>) -> Router {
    let peers = Router::new()
        .route("/federation/query", post(federation::query))
        .route("/federation/exec", post(federation::exec))
        .route("/federation/announce", post(federation::announce))
        .route("/federation/run", post(federation::run))
        .route("/coordinator/heartbeat", post(federation::heartbeat))
        .route("/coordinator/gateways", get(federation::gateways))
        .layer(DefaultBodyLimit::max(crate::federation::protocol::MAX_REQUEST_BYTES));
    finish(agent_routes().merge(peers), gw).layer(axum::middleware::from_fn(tcp::require_bearer))
}

/// Every route, for the socket.
pub fn router(gw: Arc<Gateway>) -> Router {
    let admin = Router::new()
        .route("/v1/status", get(admin::status))
        .route("/v1/shutdown", post(admin::shutdown))
        .route(
            "/v1/services",
            get(admin::list_services).post(admin::register).layer(DefaultBodyLimit::max(REGISTER_BODY_LIMIT)),
        )
        .route("/v1/services/{domain}", axum::routing::delete(admin::remove_service))
        .route("/v1/keys", get(admin::list_keys))
        .route("/v1/keys/{domain}", put(admin::set_key).delete(admin::remove_key))
        .route("/v1/audit", get(audit::list))
        .route("/v1/audit/verify", get(audit::verify))
        .route("/v1/tokens", post(tokens::mint))
        .route("/v1/tokens/revoke", post(tokens::revoke))
        .route("/v1/vault/rotate", post(admin::rotate_vault))
        .route("/v1/vault/check", get(admin::check_vault))
        .route("/v1/peers", get(federation::list_peers).post(federation::add_peer))
        .route("/v1/peers/{id}", axum::routing::delete(federation::remove_peer))
        .route("/v1/peers/discover", get(federation::discover))
        .route("/v1/rules", get(federation::list_rules))
        .route("/v1/rules/{domain}", put(federation::set_rule).delete(federation::remove_rule))
        .route("/v1/wallet", get(payments::show_wallet).post(payments::set_wallet).delete(payments::remove_wallet))
        .route("/v1/budget", get(payments::show_budget).put(payments::set_budget))
        .route("/v1/ledger", get(payments::ledger));
    finish(agent_routes().merge(admin), gw)
}

/// Serves the API on the socket, and the agent API on `tcp` when given, until a shutdown is
/// requested or SIGTERM/SIGINT arrives; both stop together.
pub async fn serve(
    gw: Arc<Gateway>,
    listener: socket::OwnerOnly,
    tcp: Option<tokio::net::TcpListener>,
) -> std::io::Result<()> {
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
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    tokio::spawn(async move {
        stop.await;
        let _ = tx.send(true);
    });
    let socket = axum::serve(listener, app).with_graceful_shutdown(stopped(rx.clone()));
    match tcp {
        Some(tcp) => {
            use axum::serve::ListenerExt;
            let tcp = tcp.tap_io(|stream| {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "tcp: cannot set TCP_NODELAY");
                }
            });
            let agents = axum::serve(tcp, tcp_router(gw.clone())).with_graceful_shutdown(stopped(rx));
            let (a, b) = tokio::join!(
                std::future::IntoFuture::into_future(socket),
                std::future::IntoFuture::into_future(agents)
            );
            a.and(b)
        }
        None => socket.await,
    }
}
