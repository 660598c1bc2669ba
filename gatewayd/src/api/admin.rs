//! Owner operations: status, shutdown, services and keys.

use std::sync::Arc;

use agentfs::wire::{KeyInfo, KeyList, RegisterRequest, ServiceInfo, ServiceList, SetKeyRequest, Status};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use agentfs::path::VPath;
use axum::http::HeaderMap;

use super::audit::Pending;
use super::error::ApiError;
use super::fs::caller;
use crate::audit::Operation;
use crate::auth::AgentId;
use crate::ops::Caller;
use crate::vault::{KeyOwner, Secret};
use crate::Gateway;

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(t)| t).map_err(|e| ApiError::bad_request(format!("gatewayd: invalid request body: {}", e.body_text())))
}

pub async fn status(State(gw): State<Arc<Gateway>>) -> Json<Status> {
    Pending::start(&gw, Operation::Status).ok();
    Json(Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        data_dir: gw.paths.data_dir.display().to_string(),
        socket: gw.paths.socket.display().to_string(),
        services: gw.registry().len(),
        uptime_secs: gw.uptime().as_secs(),
        gateway_id: gw.identity.id.clone(),
        gateway_name: gw.identity.name.clone(),
        tcp: gw.tcp_addr().map(|a| a.to_string()),
        public_url: gw.public_url(),
    })
}

pub async fn shutdown(State(gw): State<Arc<Gateway>>) -> StatusCode {
    Pending::start(&gw, Operation::Shutdown).ok();
    gw.request_shutdown();
    StatusCode::ACCEPTED
}

pub async fn list_services(State(gw): State<Arc<Gateway>>) -> Json<ServiceList> {
    Pending::start(&gw, Operation::ServicesList).ok();
    Json(ServiceList { services: gw.registry().iter().map(|s| s.info()).collect() })
}

pub async fn register(
    State(gw): State<Arc<Gateway>>,
    req: Result<Json<RegisterRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<ServiceInfo>), ApiError> {
    let mut audit = Pending::start(&gw, Operation::Register);
    let result = register_service(&gw, req, &mut audit).await;
    audit.finish(result)
}

/// The target recorded for a registration: the domain asked for, or the URL's host and port
/// (never its user, path or query, which may carry a token).
fn registration_target(req: &RegisterRequest) -> String {
    let host = |u: &url::Url| u.host_str().map(|h| u.port().map_or(h.to_owned(), |p| format!("{h}:{p}")));
    match (&req.domain, &req.url) {
        (Some(d), _) => d.clone(),
        (None, Some(u)) => url::Url::parse(u).ok().and_then(|u| host(&u)).unwrap_or_default(),
        (None, None) => String::new(),
    }
}

async fn register_service(
    gw: &Arc<Gateway>,
    req: Result<Json<RegisterRequest>, JsonRejection>,
    audit: &mut Pending,
) -> Result<(StatusCode, Json<ServiceInfo>), ApiError> {
    let mut req = body(req)?;
    audit.target(registration_target(&req));
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
    audit.bytes(document.len() as u64);
    let info = {
        let conn = gw.db();
        gw.registry_mut().register(&conn, &document, found_at.as_ref(), &req)?
    };
    tracing::info!(domain = %info.domain, operations = info.operations, "service registered");
    audit.target(&info.domain);
    Ok((StatusCode::CREATED, Json(info)))
}

pub async fn remove_service(
    State(gw): State<Arc<Gateway>>,
    Path(domain): Path<String>,
) -> Result<StatusCode, ApiError> {
    let mut audit = Pending::start(&gw, Operation::ServicesRemove);
    audit.target(&domain);
    let removed = {
        let conn = gw.db();
        gw.registry_mut().remove(&conn, &domain)
    };
    audit.finish(removed.map(|()| StatusCode::NO_CONTENT))
}

/// The agent a keys request acts for: `None` for the owner; for a token, the agent it was
/// minted for, once the token is verified (not expired, not revoked, issued here) and reaches
/// `domain` (or, with no domain, the mount root). A token that cannot see the service gets
/// "not found", as everywhere else.
fn key_agent(gw: &Gateway, who: &Caller, domain: Option<&str>) -> Result<Option<AgentId>, ApiError> {
    if matches!(who, Caller::Owner) {
        return Ok(None);
    }
    let path = match domain {
        Some(d) => VPath::parse(&format!("/{d}"))?,
        None => VPath::root(),
    };
    Ok(crate::ops::authorize(gw, who, &path, crate::auth::Op::Lookup)?)
}

fn key_info(k: crate::vault::StoredKey) -> KeyInfo {
    let agent = (k.scope == crate::vault::BYOK).then_some(k.owner);
    KeyInfo { domain: k.domain, scope: k.scope, key_id: k.key_id, created_at: k.created_at, agent }
}

/// `GET /v1/keys`: every key for the owner; an agent's own keys only for a token.
pub async fn list_keys(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Result<Json<KeyList>, ApiError> {
    let mut audit = Pending::start(&gw, Operation::KeysList);
    let who = caller(&headers, &mut audit);
    let who = audit.check(who)?;
    let stored = key_agent(&gw, &who, None).and_then(|agent| {
        let conn = gw.db();
        let only = agent.as_ref().map(|a| KeyOwner::Agent(a.as_str()));
        gw.vault.list(&conn, only).map_err(ApiError::from)
    });
    let keys = audit.finish(stored)?.into_iter().map(key_info).collect();
    Ok(Json(KeyList { keys }))
}

/// `PUT /v1/keys/{domain}`: the owner sets the pool key; a token caller sets its own (BYOK).
pub async fn set_key(
    State(gw): State<Arc<Gateway>>,
    Path(domain): Path<String>,
    headers: HeaderMap,
    req: Result<Json<SetKeyRequest>, JsonRejection>,
) -> Result<Json<KeyInfo>, ApiError> {
    let mut audit = Pending::start(&gw, Operation::KeysSet);
    let who = caller(&headers, &mut audit);
    let who = audit.check(who)?;
    audit.target(domain.to_ascii_lowercase());
    let stored = store_key(&gw, &who, domain, req);
    if let Ok(info) = &stored {
        audit.key_id(&info.key_id);
    }
    audit.finish(stored.map(Json))
}

/// Stores a key. The audit record gets the domain and the key id, never the secret.
fn store_key(
    gw: &Gateway,
    who: &Caller,
    domain: String,
    req: Result<Json<SetKeyRequest>, JsonRejection>,
) -> Result<KeyInfo, ApiError> {
    let req = body(req)?;
    let secret = Secret::new(req.secret);
    if secret.expose().is_empty() {
        return Err(ApiError::bad_request("gatewayd: the secret is empty"));
    }
    if secret.expose().chars().any(|c| c.is_control()) {
        return Err(ApiError::bad_request("gatewayd: the secret contains control characters (a trailing newline?)"));
    }
    let domain = domain.to_ascii_lowercase();
    let agent = key_agent(gw, who, Some(&domain))?;
    let owner = agent.as_ref().map_or(KeyOwner::Pool, |a| KeyOwner::Agent(a.as_str()));
    match &req.placement {
        Some(agentfs::spec::SecurityScheme::Unsupported { .. }) => {
            return Err(ApiError::bad_request("gatewayd: a placement is bearer, basic, api_key or oauth2"));
        }
        Some(agentfs::spec::SecurityScheme::OAuth2ClientCredentials { token_url }) => {
            if !secret.expose().contains(':') {
                return Err(ApiError::bad_request(
                    "gatewayd: OAuth2 client credentials are stored as `client_id:client_secret`",
                ));
            }
            if !token_url.is_empty() && url::Url::parse(token_url).is_err() {
                return Err(ApiError::bad_request("gatewayd: the OAuth2 token URL is not an absolute URL"));
            }
        }
        _ => {}
    }
    let conn = gw.db();
    let key_id = gw.vault.set_key(&conn, owner, &domain, &secret, req.placement.as_ref())?;
    tracing::info!(domain = %domain, key_id = %key_id, scope = owner.scope(), "key stored");
    let created_at =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let scope = owner.scope().to_owned();
    Ok(KeyInfo { domain, scope, key_id, created_at, agent: agent.map(|a| a.as_str().to_owned()) })
}

/// `DELETE /v1/keys/{domain}`: the owner removes every key of the domain (the pool key and
/// the agents' own); a token caller removes its own key only.
pub async fn remove_key(
    State(gw): State<Arc<Gateway>>,
    Path(domain): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let mut audit = Pending::start(&gw, Operation::KeysRemove);
    let who = caller(&headers, &mut audit);
    let who = audit.check(who)?;
    let domain = domain.to_ascii_lowercase();
    audit.target(&domain);
    let removed = key_agent(&gw, &who, Some(&domain)).and_then(|agent| {
        let conn = gw.db();
        match &agent {
            None => gw.vault.remove(&conn, &domain),
            Some(a) => gw.vault.remove_own(&conn, KeyOwner::Agent(a.as_str()), &domain),
        }
        .map_err(ApiError::from)
    });
    audit.finish(match removed {
        Ok(0) => {
            Err(ApiError::new(agentfs::wire::ErrorCode::NotFound, format!("gatewayd: no key is stored for {domain}")))
        }
        Ok(_) => Ok(StatusCode::NO_CONTENT),
        Err(e) => Err(e),
    })
}

/// `POST /v1/vault/rotate`: re-encrypts every key under a new master key (owner only).
pub async fn rotate_vault(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
) -> Result<Json<agentfs::wire::VaultRotation>, ApiError> {
    let mut audit = Pending::start(&gw, Operation::VaultRotate);
    let who = caller(&headers, &mut audit);
    let who = audit.check(who)?;
    if matches!(who, Caller::Agent(_)) {
        return Err(audit.fail(ApiError::new(
            agentfs::wire::ErrorCode::PermissionDenied,
            "gatewayd: only the owner rotates the master key (run `nkmc vault rotate` without NKMC_TOKEN)",
        )));
    }
    let gw2 = gw.clone();
    let rotated = tokio::task::spawn_blocking(move || {
        let conn = gw2.db();
        gw2.vault.rotate(&conn)
    })
    .await
    .map_err(|e| ApiError::new(agentfs::wire::ErrorCode::Internal, format!("gatewayd: rotation task: {e}")))
    .and_then(|r| {
        r.map_err(|e| match e {
            crate::vault::VaultError::EnvRotation => ApiError::new(agentfs::wire::ErrorCode::Conflict, e.to_string()),
            e => e.into(),
        })
    });
    let r = audit.finish(rotated)?;
    Ok(Json(agentfs::wire::VaultRotation {
        keys: r.keys as u64,
        old_master_id: r.old_master_id,
        new_master_id: r.new_master_id,
        cipher: gw.vault.cipher().name().to_owned(),
    }))
}

/// `GET /v1/vault/check`: decrypts every stored key (owner only); the first that does not
/// decrypt is named in the error.
pub async fn check_vault(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
) -> Result<Json<agentfs::wire::VaultCheck>, ApiError> {
    let mut audit = Pending::start(&gw, Operation::VaultCheck);
    let who = caller(&headers, &mut audit);
    let who = audit.check(who)?;
    if matches!(who, Caller::Agent(_)) {
        return Err(audit.fail(ApiError::new(
            agentfs::wire::ErrorCode::PermissionDenied,
            "gatewayd: only the owner checks the vault (run `nkmc vault check` without NKMC_TOKEN)",
        )));
    }
    let checked = {
        let conn = gw.db();
        gw.vault.check_all(&conn)
    };
    let keys = audit.finish(checked)?;
    let source = match gw.vault.source() {
        crate::vault::MasterSource::File(_) => "file",
        crate::vault::MasterSource::Env => "env",
    };
    Ok(Json(agentfs::wire::VaultCheck { keys: keys as u64, master_id: gw.vault.master_id(), source: source.into() }))
}
