//! Types that cross gatewayd's socket API (JSON bodies), shared by gatewayd, mountd and nkmc.
//!
//! Requests are strict (`deny_unknown_fields`) so a typo is an error, not a silent default.

use serde::{Deserialize, Serialize};

pub mod batch;

/// API version prefix of every route.
pub const API_PREFIX: &str = "/v1";

/// File or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// What `stat` and each listing entry say of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The name (escaped form).
    pub name: String,
    /// File or directory.
    pub kind: EntryKind,
    /// Permission bits: 0o444 read-only, 0o644 readable and writable, 0o755 directory.
    pub mode: u32,
    /// Size in bytes, when known without a request upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// A directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listing {
    /// The entries, sorted by name.
    pub entries: Vec<Entry>,
}

/// `POST /v1/fs/grep`: search the files under a path, as `grep -r` on the mount would.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrepRequest {
    /// Where to start: a directory (searched recursively) or one file.
    pub path: String,
    /// A regular expression (Rust `regex` syntax, linear time), or a literal with `fixed`.
    pub pattern: String,
    /// The pattern is a literal string (`grep -F`).
    #[serde(default)]
    pub fixed: bool,
    /// Case-insensitive (`grep -i`).
    #[serde(default)]
    pub ignore_case: bool,
    /// Stop after this many files (default 1000, at most 10000); `truncated` says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_files: Option<u32>,
}

/// One matching line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrepMatch {
    /// The file's canonical virtual path.
    pub path: String,
    /// The line number, from 1.
    pub line: u64,
    /// The line (lossy UTF-8, without its newline; cut at 4096 bytes).
    pub text: String,
}

/// What a search found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrepResult {
    /// Matching lines, by path then line.
    pub matches: Vec<GrepMatch>,
    /// Files read.
    pub files_searched: u64,
    /// Files that could not be read (their errors, as `grep -s` would hide them).
    pub files_failed: u64,
    /// The search stopped at a limit (files, depth, or bytes per file).
    pub truncated: bool,
}

/// The machine-readable class of an error; each maps to one errno in mountd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The path is malformed (`..`, NUL, control characters).
    InvalidPath,
    /// A name or path is too long.
    NameTooLong,
    /// Nothing by that name (also: not visible to this caller).
    NotFound,
    /// A file used as a directory.
    NotADirectory,
    /// A directory used as a file.
    IsADirectory,
    /// The upstream refused the credential (401/403), or the caller may not do this.
    PermissionDenied,
    /// The request was malformed (400/422, or a bad body).
    InvalidInput,
    /// The node has no operation for this (a write to a read-only file, 405).
    NotSupported,
    /// The item exists already (409).
    Conflict,
    /// A body over a size limit (413, or the gateway's cap).
    TooLarge,
    /// The upstream asked to slow down (429).
    RateLimited,
    /// The upstream failed (5xx, or an unexpected status).
    UpstreamFailed,
    /// The upstream did not answer within the configured timeout.
    Timeout,
    /// The upstream could not be reached (connection refused, no route).
    Unreachable,
    /// The request to gatewayd itself was refused (bad admin input, unknown service).
    BadRequest,
    /// gatewayd failed internally (its database, its vault).
    Internal,
    /// A request over TCP without a usable `Authorization: Bearer <token>` header (401).
    Unauthenticated,
    /// A peer asks for a payment this gateway will not make (no wallet, over the budget,
    /// or terms it does not accept); HTTP 402.
    PaymentRequired,
}

impl ErrorCode {
    /// The code as it appears on the wire (`not_found`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidPath => "invalid_path",
            ErrorCode::NameTooLong => "name_too_long",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NotADirectory => "not_a_directory",
            ErrorCode::IsADirectory => "is_a_directory",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::NotSupported => "not_supported",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::UpstreamFailed => "upstream_failed",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Unreachable => "unreachable",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Internal => "internal",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PaymentRequired => "payment_required",
        }
    }

    /// Every code, for checks against the schema.
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::InvalidPath,
        ErrorCode::NameTooLong,
        ErrorCode::NotFound,
        ErrorCode::NotADirectory,
        ErrorCode::IsADirectory,
        ErrorCode::PermissionDenied,
        ErrorCode::InvalidInput,
        ErrorCode::NotSupported,
        ErrorCode::Conflict,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::UpstreamFailed,
        ErrorCode::Timeout,
        ErrorCode::Unreachable,
        ErrorCode::BadRequest,
        ErrorCode::Internal,
        ErrorCode::Unauthenticated,
        ErrorCode::PaymentRequired,
    ];
}

/// The message of gatewayd's answer to a route it does not have (`400`, code
/// `bad_request`): the same in every gatewayd since the first, so a client can tell an older
/// gatewayd from a refusal (mountd's read batches fall back to single reads on it alone).
pub const NO_SUCH_ROUTE: &str = "gatewayd: no such route";

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// The class.
    pub code: ErrorCode,
    /// What failed and what to do, naming the layer.
    pub message: String,
    /// The upstream's HTTP status, when the upstream answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
}

/// `POST /v1/services`: register a service from a document, given whole or found from a URL.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The document text (OpenAPI JSON or YAML). Exactly one of `document` and `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<String>,
    /// A URL to discover the document from (the API's base URL or the document's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// What `document` is; recognised from its content when absent (OpenAPI or OpenRPC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DocumentFormat>,
    /// The domain (folder name); defaults to the host of the document's first server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The base URL; defaults to the document's first server URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
}

/// The kinds of document a service is registered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocumentFormat {
    /// OpenAPI 3.0 or 3.1, JSON or YAML.
    Openapi,
    /// OpenRPC.
    Openrpc,
    /// An nkmc skill.md manifest.
    Skill,
}

/// A registered service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceInfo {
    /// The domain (folder name under the mount).
    pub domain: String,
    /// The base URL every request goes to.
    pub base_url: String,
    /// The document's title.
    pub title: String,
    /// Number of operations.
    pub operations: usize,
}

/// `GET /v1/services`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceList {
    /// Registered services, sorted by domain.
    pub services: Vec<ServiceInfo>,
}

/// `PUT /v1/keys/{domain}`: store a credential. Its `Debug` never shows the secret.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetKeyRequest {
    /// The secret. Travels only over the owner-only socket; never echoed back.
    pub secret: String,
    /// Where the key goes, overriding the document's security schemes: `{"kind":"bearer"}`,
    /// `{"kind":"basic"}` (the secret is `user:password`), or
    /// `{"kind":"api_key","location":"header"|"query"|"cookie","name":"x-api-key"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<crate::spec::SecurityScheme>,
}

impl std::fmt::Debug for SetKeyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetKeyRequest").field("secret", &"<redacted>").field("placement", &self.placement).finish()
    }
}

/// What `keys list` shows of a stored key: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyInfo {
    /// The domain the key is for.
    pub domain: String,
    /// `pool` (the owner's) or `byok` (an agent's own).
    pub scope: String,
    /// The key's id (random, not derived from the secret).
    pub key_id: String,
    /// Seconds since the Unix epoch.
    pub created_at: i64,
    /// The agent a `byok` key belongs to (absent for the pool key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// `POST /v1/vault/rotate`: what a master-key rotation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultRotation {
    /// How many keys were re-encrypted.
    pub keys: u64,
    /// The id of the retired master key (8 hex digits; not secret).
    pub old_master_id: String,
    /// The id of the master key now in use.
    pub new_master_id: String,
    /// The cipher the keys are now sealed with.
    pub cipher: String,
}

/// `GET /v1/vault/check`: every stored key decrypts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultCheck {
    /// How many keys are stored (all of them decrypted).
    pub keys: u64,
    /// The id of the master key new keys are sealed under (8 hex digits; not secret).
    pub master_id: String,
    /// Where the master key comes from: `file` or `env`.
    pub source: String,
}

/// `GET /v1/keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyList {
    /// Stored keys, sorted by domain.
    pub keys: Vec<KeyInfo>,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    /// gatewayd's version.
    pub version: String,
    /// gatewayd's process id.
    pub pid: u32,
    /// The data directory.
    pub data_dir: String,
    /// The socket path.
    pub socket: String,
    /// Number of registered services.
    pub services: usize,
    /// Seconds since gatewayd started.
    pub uptime_secs: u64,
    /// This gateway's id among peers.
    pub gateway_id: String,
    /// This gateway's display name.
    pub gateway_name: String,
    /// Where the agent API listens over TCP (`127.0.0.1:9090`); absent when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    /// Where peers reach this gateway (`[federation] public_url`, the tunnel's address, or
    /// the TCP address); absent without a TCP listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
}

/// `GET /v1/audit?after=SEQ&limit=N`: which audit records to return.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Records after this sequence number, oldest first; absent: the last `limit` records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// At most this many records (default 100, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// One record of the audit log: one operation, after it completed. Holds no secret (key ids
/// only, error codes and never error messages); text fields are data, escaped in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Position in the chain, from 1, without gaps.
    pub seq: u64,
    /// When the operation started, in milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// Who asked (`owner` until agent tokens exist).
    pub agent: String,
    /// `stat`, `list`, `read`, `write`, `delete`, `register`, `keys.set`, ...
    pub operation: String,
    /// The canonical virtual path, or the domain for service and key operations; empty when
    /// the request was refused before a valid one was known.
    pub target: String,
    /// `ok`, `cancelled` (the client went away first), or the error code.
    pub outcome: String,
    /// The upstream's HTTP status, when an upstream answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    /// Bytes of the body the operation carried: returned for reads and deletes, written for
    /// writes, the document for a registration; 0 otherwise.
    pub bytes: u64,
    /// How long the operation took, in milliseconds.
    pub duration_ms: u64,
    /// The federated peer involved, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The id of the credential stored or used, if any (never the credential).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The previous record's hash (hex SHA-256); the genesis value for the first record.
    pub prev_hash: String,
    /// SHA-256 (hex) over this record's fields and `prev_hash`.
    pub hash: String,
}

/// `GET /v1/audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecords {
    /// The records, oldest first.
    pub records: Vec<AuditRecord>,
}

/// What is wrong with the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditProblemKind {
    /// A record's content no longer matches its hash, or the next record's link to it.
    Edited,
    /// Records are missing from the middle (or the start) of the chain.
    Missing,
    /// A record was written at another position.
    Reordered,
    /// Records are missing from the end (the anchor names a later record).
    Truncated,
    /// The anchor file is missing or unreadable, so truncation cannot be checked.
    Anchor,
}

/// The first problem `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditProblem {
    /// The sequence number of the first bad (or first missing) record.
    pub seq: u64,
    /// What is wrong.
    pub kind: AuditProblemKind,
    /// In words.
    pub message: String,
}

/// `GET /v1/audit/verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditVerification {
    /// Whether the whole chain is intact.
    pub ok: bool,
    /// Records checked and found intact before the first problem (all of them when `ok`).
    pub records: u64,
    /// The last record's sequence number, if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
    /// The last record's hash; keep a copy elsewhere to detect a rewrite of the whole log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_hash: Option<String>,
    /// The sequence number the anchor file names, if it was readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor_seq: Option<u64>,
    /// The first problem, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<AuditProblem>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_key_requests_never_print_their_secret() {
        let req = SetKeyRequest { secret: "CANARY_debug".into(), placement: None };
        assert!(!format!("{req:?}").contains("CANARY"));
    }

    #[test]
    fn as_str_is_the_serde_name() {
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), serde_json::Value::String(code.as_str().into()));
        }
    }
}

/// `POST /v1/tokens`: mint an agent token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintTokenRequest {
    /// The agent's name: 1 to 64 characters among letters, digits and `. _ @ -`.
    pub agent: String,
}

/// A token (the answer of `POST /v1/tokens`): biscuit, URL-safe base64.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenResponse {
    /// The token. A bearer credential: keep it out of logs and URLs.
    pub token: String,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse").field("token", &"<redacted>").finish()
    }
}

/// `POST /v1/tokens/inspect`: a token to describe.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InspectTokenRequest {
    /// The token.
    pub token: String,
}

impl std::fmt::Debug for InspectTokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InspectTokenRequest").field("token", &"<redacted>").finish()
    }
}

/// `POST /v1/tokens/revoke`: a token to revoke.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeTokenRequest {
    /// The token (it must have been issued by this gateway).
    pub token: String,
    /// Also revoke the tokens it was attenuated from (every block's revocation id), and so
    /// everything derived from them; otherwise only this token and the tokens derived from it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lineage: bool,
}

impl std::fmt::Debug for RevokeTokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevokeTokenRequest").field("token", &"<redacted>").field("lineage", &self.lineage).finish()
    }
}

/// The answer of `POST /v1/tokens/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeResponse {
    /// How many revocation ids were newly recorded (0: the token was already revoked).
    pub revoked: u64,
}

/// What a token says (`POST /v1/tokens/inspect`, `nkmc token inspect`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenInfo {
    /// The agent it was minted for (the authority block's `agent` fact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// When it was minted, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<u64>,
    /// The earliest expiry among the blocks' time limits, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Whether its signatures verify with the gateway's root key (false offline).
    pub verified: bool,
    /// Whether it is revoked (only gatewayd knows; absent offline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<bool>,
    /// Its blocks, authority first: every block must allow a request.
    pub blocks: Vec<TokenBlock>,
}

/// One block of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBlock {
    /// Its position (0: the authority block, signed by the root key).
    pub index: u32,
    /// Its revocation id (hex).
    pub revocation_id: String,
    /// What it allows, in words (`only api.example.test:read/models`, `until 2025-...Z`).
    pub rights: Vec<String>,
    /// Whether it holds Datalog that nkmc did not generate (read `source` for it).
    pub custom: bool,
    /// Its Datalog.
    pub source: String,
}
