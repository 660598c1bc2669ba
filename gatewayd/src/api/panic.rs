//! A panic in a request handler answers that request with 500 `internal` and leaves
//! gatewayd serving every other one. The panic's message, which may hold whatever the
//! handler had in hand (a credential, an upstream body), is dropped unread: neither the
//! answer nor the log shows it (the process's panic hook, [`agentfs::panic`], prints only
//! the place). The audit record of the request, dropped while unwinding, says `internal`.
//!
//! Only the handler's future is covered: a panic while a response body streams ends that
//! connection (hyper drops it) and nothing else.

use std::panic::AssertUnwindSafe;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;

use super::ApiError;

/// The middleware: runs the rest of the stack and turns a panic into a 500.
pub async fn catch_panic(req: Request, next: Next) -> Response {
    let route = req.uri().path().to_owned();
    match AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(resp) => resp,
        Err(payload) => {
            // Dropped unread: the message may hold a secret.
            drop(payload);
            tracing::error!(route = %route, "a request handler panicked; answered 500 internal");
            ApiError::new(
                agentfs::wire::ErrorCode::Internal,
                "gatewayd: internal error while handling this request (a bug; gatewayd.log has the place); \
                 retry, and report it if it happens again",
            )
            .into_response()
        }
    }
}
