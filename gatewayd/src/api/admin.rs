//! Owner operations: status, shutdown, services and keys.

use std::sync::Arc;

use agentfs::wire::{KeyInfo, KeyList, RegisterRequest, ServiceInfo, ServiceList, SetKeyRequest, Status};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::error::ApiError;
use crate::vault::Secret;
use crate::Gateway;

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(t)| t).map_err(|e| ApiError::bad_request(format!("gatewayd: invalid request body: {}", e.body_text())))
}

pub async fn status(State(gw): State<Arc<Gateway>>) -> Json<Status> {
    Json(Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        data_dir: gw.paths.data_dir.display().to_string(),
        socket: gw.paths.socket.display().to_string(),
        services: gw.registry().len(),
        uptime_secs: gw.uptime().as_secs(),
    })
}

pub async fn shutdown(State(gw): State<Arc<Gateway>>) -> StatusCode {
    gw.request_shutdown();
    StatusCode::ACCEPTED
}

pub async fn list_services(State(gw): State<Arc<Gateway>>) -> Json<ServiceList> {
    Json(ServiceList { services: gw.registry().iter().map(|s| s.info()).collect() })
}

pub async fn register(
    State(gw): State<Arc<Gateway>>,
    req: Result<Json<RegisterRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<ServiceInfo>), ApiError> {
    let mut req = body(req)?;
    let (document, found_at) = match (&req.document, &req.url) {
        (Some(doc), None) => (doc.clone(), None),
        (None, Some(url)) => {
            let found = crate::discovery::discover(gw.upstream.http(), url)
                .await
                .map_err(|e| ApiError::new(agentfs::wire::ErrorCode::NotFound, e.to_string()))?;
            tracing::info!(url = %found.url, kind = ?found.kind, "document discovered");
            // A service that described itself by rpc.discover is called where it answered,
            // whatever servers its document names.
            if let (Some(endpoint), None) = (&found.rpc_endpoint, &req.base_url) {
                req.base_url = Some(endpoint.to_string());
            }
            (found.text, Some(found.url))
        }
        _ => return Err(ApiError::bad_request("gatewayd: give exactly one of `document` and `url`")),
    };
    let info = {
        let conn = gw.db();
        gw.registry_mut().register(&conn, &document, found_at.as_ref(), &req)?
    };
    tracing::info!(domain = %info.domain, operations = info.operations, "service registered");
    Ok((StatusCode::CREATED, Json(info)))
}

pub async fn remove_service(
    State(gw): State<Arc<Gateway>>,
    Path(domain): Path<String>,
) -> Result<StatusCode, ApiError> {
    let conn = gw.db();
    gw.registry_mut().remove(&conn, &domain)?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_keys(State(gw): State<Arc<Gateway>>) -> Result<Json<KeyList>, ApiError> {
    let conn = gw.db();
    let keys = gw
        .vault
        .list(&conn)?
        .into_iter()
        .map(|k| KeyInfo { domain: k.domain, scope: k.scope, key_id: k.key_id, created_at: k.created_at })
        .collect();
    Ok(Json(KeyList { keys }))
}

pub async fn set_key(
    State(gw): State<Arc<Gateway>>,
    Path(domain): Path<String>,
    req: Result<Json<SetKeyRequest>, JsonRejection>,
) -> Result<Json<KeyInfo>, ApiError> {
    let req = body(req)?;
    let secret = Secret::new(req.secret);
    if secret.expose().is_empty() {
        return Err(ApiError::bad_request("gatewayd: the secret is empty"));
    }
    if secret.expose().chars().any(|c| c.is_control()) {
        return Err(ApiError::bad_request("gatewayd: the secret contains control characters (a trailing newline?)"));
    }
    let domain = domain.to_ascii_lowercase();
    let conn = gw.db();
    let key_id = gw.vault.set_pool_key(&conn, &domain, &secret)?;
    tracing::info!(domain = %domain, key_id = %key_id, "pool key stored");
    let created_at =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    Ok(Json(KeyInfo { domain, scope: crate::vault::POOL.to_owned(), key_id, created_at }))
}

pub async fn remove_key(State(gw): State<Arc<Gateway>>, Path(domain): Path<String>) -> Result<StatusCode, ApiError> {
    let conn = gw.db();
    match gw.vault.remove(&conn, &domain.to_ascii_lowercase())? {
        0 => Err(ApiError::new(agentfs::wire::ErrorCode::NotFound, format!("gatewayd: no key is stored for {domain}"))),
        _ => Ok(StatusCode::NO_CONTENT),
    }
}
