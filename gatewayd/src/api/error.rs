//! Errors into API responses: one exhaustive mapping to a wire code and HTTP status.

use agentfs::path::PathError;
use agentfs::tree::TreeError;
use agentfs::wire::{ErrorBody, ErrorCode};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::ops::OpError;
use crate::registry::RegistryError;
use crate::upstream::UpstreamError;
use crate::vault::VaultError;

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
    upstream_status: Option<u16>,
}

impl ApiError {
    /// An error of a given class.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), upstream_status: None }
    }

    /// A malformed request to gatewayd.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::BadRequest, message)
    }

    /// The class (what the audit log records; never the message).
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The message (what failed and what to do).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The HTTP status this error answers with.
    pub fn http_status(&self) -> u16 {
        status_of(self.code).as_u16()
    }

    /// The upstream's HTTP status, when the upstream answered.
    pub fn upstream_status(&self) -> Option<u16> {
        self.upstream_status
    }
}

/// The HTTP status gatewayd answers with for each class.
fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidPath | ErrorCode::BadRequest | ErrorCode::InvalidInput => StatusCode::BAD_REQUEST,
        ErrorCode::NameTooLong => StatusCode::URI_TOO_LONG,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::NotADirectory | ErrorCode::IsADirectory | ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorCode::NotSupported => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::UpstreamFailed | ErrorCode::Unreachable => StatusCode::BAD_GATEWAY,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorCode::PaymentRequired => StatusCode::PAYMENT_REQUIRED,
    }
}

/// The class of an upstream HTTP status.
/// The class of an upstream body that failed part way (the stream's I/O error): over the
/// size cap, or the upstream's fault. A streamed answer's error frame and its audit record
/// both take it from here.
pub(crate) fn code_of_body_error(e: &std::io::Error) -> ErrorCode {
    match e.kind() {
        std::io::ErrorKind::FileTooLarge => ErrorCode::TooLarge,
        _ => ErrorCode::UpstreamFailed,
    }
}

fn code_of_upstream_status(status: u16) -> ErrorCode {
    match status {
        400 | 422 => ErrorCode::InvalidInput,
        401 | 403 => ErrorCode::PermissionDenied,
        404 | 410 => ErrorCode::NotFound,
        405 => ErrorCode::NotSupported,
        409 => ErrorCode::Conflict,
        413 => ErrorCode::TooLarge,
        429 => ErrorCode::RateLimited,
        300..=399 | 500..=599 => ErrorCode::UpstreamFailed,
        _ => ErrorCode::InvalidInput,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { code: self.code, message: self.message, upstream_status: self.upstream_status };
        (status_of(body.code), Json(body)).into_response()
    }
}

impl From<PathError> for ApiError {
    fn from(e: PathError) -> Self {
        let code = match e {
            PathError::DotSegment(_) | PathError::ControlChar => ErrorCode::InvalidPath,
            PathError::NameTooLong(_) | PathError::PathTooLong(_) => ErrorCode::NameTooLong,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<UpstreamError> for ApiError {
    fn from(e: UpstreamError) -> Self {
        let (code, upstream_status) = match &e {
            UpstreamError::Timeout { .. } => (ErrorCode::Timeout, None),
            UpstreamError::Unreachable { .. } => (ErrorCode::Unreachable, None),
            UpstreamError::Transport { .. } => (ErrorCode::UpstreamFailed, None),
            UpstreamError::Status { status, .. } => (code_of_upstream_status(*status), Some(*status)),
            UpstreamError::TooLarge { .. } => (ErrorCode::TooLarge, None),
            UpstreamError::Invalid { .. } => (ErrorCode::Internal, None),
            UpstreamError::Refused { .. } => (ErrorCode::PermissionDenied, None),
        };
        ApiError { code, message: e.to_string(), upstream_status }
    }
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        tracing::error!(error = %e, "vault failure");
        ApiError::new(ErrorCode::Internal, e.to_string())
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Path(p) => p.into(),
            OpError::Tree(t) => {
                let code = match t {
                    TreeError::NotFound(_) | TreeError::QueryNotLast(_) => ErrorCode::NotFound,
                    TreeError::NotADirectory(_) => ErrorCode::NotADirectory,
                };
                ApiError::new(code, t.to_string())
            }
            OpError::NoService(_) => ApiError::new(ErrorCode::NotFound, e.to_string()),
            OpError::IsADirectory(_) => ApiError::new(ErrorCode::IsADirectory, e.to_string()),
            OpError::NotADirectory(_) => ApiError::new(ErrorCode::NotADirectory, e.to_string()),
            OpError::NoOperation { .. } => ApiError::new(ErrorCode::NotSupported, e.to_string()),
            OpError::Generated(_) => ApiError::new(ErrorCode::NotSupported, e.to_string()),
            OpError::InvalidPattern(_) => ApiError::new(ErrorCode::InvalidInput, e.to_string()),
            OpError::Peer { code, message, upstream_status } => ApiError { code, message, upstream_status },
            OpError::Hidden(_) => ApiError::new(ErrorCode::NotFound, e.to_string()),
            OpError::Auth(ref a) if a.is_refusal() => ApiError::new(ErrorCode::PermissionDenied, e.to_string()),
            OpError::Auth(_) => ApiError::new(ErrorCode::Internal, e.to_string()),
            OpError::NotJson { .. } => ApiError::new(ErrorCode::InvalidInput, e.to_string()),
            OpError::Rpc { code, .. } => {
                let class = match code {
                    -32700 | -32600 | -32602 => ErrorCode::InvalidInput,
                    -32601 => ErrorCode::NotFound,
                    _ => ErrorCode::UpstreamFailed,
                };
                ApiError::new(class, e.to_string())
            }
            OpError::Upstream(u) => u.into(),
            OpError::Vault(v) => v.into(),
            OpError::OAuth2(crate::oauth2::OAuth2Error::Endpoint { .. }) => {
                ApiError::new(ErrorCode::UpstreamFailed, e.to_string())
            }
            OpError::OAuth2(_) => ApiError::new(ErrorCode::PermissionDenied, e.to_string()),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let code = match &e {
            RegistryError::Spec(_) | RegistryError::InvalidDomain(_) | RegistryError::InvalidBaseUrl { .. } => {
                ErrorCode::BadRequest
            }
            RegistryError::Unknown(_) => ErrorCode::NotFound,
            RegistryError::Db(_) | RegistryError::Stored { .. } => ErrorCode::Internal,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        ApiError::new(ErrorCode::Internal, format!("gatewayd: database error: {e}"))
    }
}
