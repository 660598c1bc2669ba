//! The peer protocol's messages, all strict JSON (unknown members refused). Requests go to
//! the lender's TCP listener, signed (see [`super::sign`]); answers come back signed.
//!
//! - `POST /federation/query` [`QueryRequest`] → [`QueryResponse`]: may I borrow this domain,
//!   for what, at what price; and its spec, so my mount can show its tree.
//! - `POST /federation/exec` [`ExecRequest`] → the upstream's body, with
//!   `x-nkmc-upstream-status` and its content type; errors as [`ExecRefusal`].
//! - `POST /federation/announce` [`Announce`] → 204: the domains the sender lends me now.

use serde::{Deserialize, Serialize};

use super::rules::PricingMode;
use crate::auth::Op;

/// The routes, on the lender's TCP listener.
pub mod route {
    /// Availability and price of a domain.
    pub const QUERY: &str = "/federation/query";
    /// One typed operation.
    pub const EXEC: &str = "/federation/exec";
    /// The domains a peer lends.
    pub const ANNOUNCE: &str = "/federation/announce";
    /// `nkmc run` of a tool whose key the lender holds: the body is the run's request frames
    /// (request, stdin, end), the answer the run's output frames (masked by the lender).
    pub const RUN: &str = "/federation/run";
}

/// The largest request body a lender reads.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// `POST /federation/query`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// The domain asked about; absent: which domains do you lend me?
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

/// The answer to a query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryResponse {
    /// Whether the asker may borrow the domain at all.
    pub available: bool,
    /// For a query without a domain: every domain lent to the asker.
    #[serde(default)]
    pub domains: Vec<String>,
    /// The operations lent (`read` includes listing).
    #[serde(default)]
    pub ops: Vec<Op>,
    /// The price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<PricingMode>,
    /// The amount, as a decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    /// Per-token pricing: how many tokens one payment buys (the amount is per thousand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepaid_tokens: Option<u64>,
    /// Requests per minute allowed to the asker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_min: Option<u32>,
    /// The service's parsed spec (agentfs `ServiceSpec` as JSON), when available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
}

/// The operations a borrower may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecOp {
    /// A directory's entries.
    List,
    /// A file's body.
    Read,
    /// A file's POST/PUT/PATCH with `body`.
    Write,
    /// A file's DELETE.
    Delete,
    /// `grep -r` under the path, inside the domain.
    Grep,
}

impl ExecOp {
    /// Its name on the wire (`read`, `list`...).
    pub fn as_str(self) -> &'static str {
        match self {
            ExecOp::List => "list",
            ExecOp::Read => "read",
            ExecOp::Write => "write",
            ExecOp::Delete => "delete",
            ExecOp::Grep => "grep",
        }
    }

    /// The token/rule operation it needs.
    pub fn op(self) -> Op {
        match self {
            ExecOp::List => Op::List,
            ExecOp::Read | ExecOp::Grep => Op::Read,
            ExecOp::Write => Op::Write,
            ExecOp::Delete => Op::Delete,
        }
    }
}

/// `POST /federation/exec`: one typed operation on a canonical path — never a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// What to do.
    pub op: ExecOp,
    /// The canonical virtual path, starting with the domain: `/api.example.test/items`.
    pub path: String,
    /// The JSON body of a write (UTF-8 text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The pattern of a grep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// With a paid call's `X-PAYMENT` header: the header's hex SHA-256, which binds the
    /// payment to this signed request (a payment lifted onto another request is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_sha256: Option<String>,
}

/// Why a lender refused or failed, as the borrower sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRefusal {
    /// The wire error code (`permission_denied`, `not_found`, `rate_limited`...).
    pub code: agentfs::wire::ErrorCode,
    /// A message for people; never a secret of the lender's.
    pub message: String,
    /// The upstream's status, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    /// A paid write or delete is settled before it runs: when it then failed, the
    /// settlement (`X-PAYMENT-RESPONSE` value), so the borrower records the charge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_response: Option<String>,
}

/// `POST /federation/announce`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Announce {
    /// The domains the sender lends to the recipient now (the whole list, not a change).
    pub domains: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_requests_are_strict_and_typed() {
        let ok: ExecRequest = serde_json::from_str(r#"{"op":"read","path":"/x.test/items"}"#).unwrap();
        assert_eq!(ok.op, ExecOp::Read);
        for bad in [
            r#"{"op":"shell","path":"/x.test"}"#,
            r#"{"op":"read","path":"/x.test","command":"rm -rf /"}"#,
            r#"{"op":"read"}"#,
        ] {
            assert!(serde_json::from_str::<ExecRequest>(bad).is_err(), "{bad}");
        }
        assert_eq!(ExecOp::Grep.op(), Op::Read);
    }
}
