//! API documents in, one validated [`ServiceSpec`] out.
//!
//! The spec keeps only what the tree and the gateway act on: servers, operations
//! (method, path template, fixed query, id, summary, security) and security schemes.
//! It is what gatewayd stores at registration, so nothing is re-parsed per request.

mod openapi;
mod openapi31;
pub mod openrpc;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use openapi::{parse_document, parse_openapi};
pub use openrpc::{parse_openrpc, RpcMethod};

/// Parses an OpenAPI (3.0, 3.1) or OpenRPC document, recognised by its content. The
/// document is read once.
pub fn parse_any(bytes: &[u8]) -> Result<ServiceSpec, SpecError> {
    on_parse_stack(|| {
        let doc = parse_document(bytes)?;
        if doc.get("openrpc").is_some() {
            openrpc::parse_openrpc_value(doc)
        } else {
            openapi::parse_openapi_value(doc)
        }
    })
}

/// The stack of the thread that reads a document: room for the deepest nesting the parsers
/// accept, in a debug build, several times over (an async worker's 2 MiB is not).
const PARSE_STACK_BYTES: usize = 32 * 1024 * 1024;

/// Runs a parse on a thread with a stack deep enough for any document the parsers accept.
pub(crate) fn on_parse_stack<T: Send>(parse: impl FnOnce() -> Result<T, SpecError> + Send) -> Result<T, SpecError> {
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("nkmc-spec".into())
            .stack_size(PARSE_STACK_BYTES)
            .spawn_scoped(scope, parse);
        match worker {
            Ok(handle) => handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            // No thread to be had: fail clearly rather than risk the caller's stack.
            Err(e) => Err(SpecError::Unsupported(format!("cannot start the parser thread: {e}"))),
        }
    })
}

/// How the service is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// HTTP operations (OpenAPI): each file maps to requests on its path.
    #[default]
    Http,
    /// JSON-RPC 2.0 (OpenRPC): each file is a method, called on the base URL.
    JsonRpc,
}

/// Largest API document accepted, in bytes (the OpenAI document is about 3 MB).
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024 * 1024;

/// Why a document could not be ingested. Every message names the document layer and,
/// where known, the place in the document.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Larger than [`MAX_DOCUMENT_BYTES`].
    #[error("spec: the document is {0} bytes, the limit is {MAX_DOCUMENT_BYTES}")]
    TooLarge(usize),
    /// Neither JSON nor YAML.
    #[error("spec: the document is not valid JSON or YAML: {0}")]
    Syntax(String),
    /// Parsed, but not a document of a supported kind or version.
    #[error("spec: {0}")]
    Unsupported(String),
    /// A field has the wrong shape.
    #[error("spec: invalid document at `{path}`: {message}")]
    Invalid {
        /// Where in the document (a JSON path such as `paths./pets.get.responses`).
        path: String,
        /// What is wrong there.
        message: String,
    },
    /// The document has no usable server URL and none was given.
    #[error("spec: the document names no server URL; pass --base-url")]
    NoServer,
}

/// An HTTP method the tree maps to file operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// Read (`cat`).
    Get,
    /// Create or action (a write to a collection).
    Post,
    /// Replace (a write to an item).
    Put,
    /// Update (a write to an item).
    Patch,
    /// Remove (`rm`).
    Delete,
}

impl Method {
    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// One operation of the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    /// The HTTP method.
    pub method: Method,
    /// The path template after the server's base path, e.g. `/models/{model}`.
    pub path: String,
    /// A query string that the document's path key carries (`beta=true`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_query: Option<String>,
    /// The document's `operationId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<String>,
    /// The document's one-line summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Alternatives of required schemes (names into [`ServiceSpec::security_schemes`]);
    /// `None` means the document-wide default applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<Vec<Vec<String>>>,
}

/// Where an API key goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyLocation {
    /// A request header.
    Header,
    /// A query parameter.
    Query,
    /// A cookie.
    Cookie,
}

/// How the API expects a credential, from the document's `securitySchemes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SecurityScheme {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// `Authorization: Basic <base64(user:password)>`.
    Basic,
    /// An API key in a header, query parameter or cookie.
    ApiKey {
        /// Where the key goes.
        location: KeyLocation,
        /// The header, parameter or cookie name.
        name: String,
    },
    /// OAuth2 client credentials: a token fetched from `token_url`.
    OAuth2ClientCredentials {
        /// The token endpoint.
        token_url: String,
    },
    /// A scheme nkmc cannot inject (OpenID Connect, interactive OAuth2 flows, ...).
    Unsupported {
        /// What the document declared.
        description: String,
    },
}

/// Everything the gateway keeps of an API document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// The document's title.
    pub title: String,
    /// The document's own version string.
    #[serde(default)]
    pub version: String,
    /// Server URLs with variables substituted by their defaults, in document order.
    /// Relative URLs (`/v3`) are kept relative; the registrar resolves them.
    pub servers: Vec<String>,
    /// Every operation, in document order.
    pub operations: Vec<Operation>,
    /// Named security schemes.
    #[serde(default)]
    pub security_schemes: BTreeMap<String, SecurityScheme>,
    /// The document-wide security requirement (alternatives of scheme names).
    #[serde(default)]
    pub security: Vec<Vec<String>>,
    /// HTTP or JSON-RPC.
    #[serde(default)]
    pub protocol: Protocol,
    /// For JSON-RPC: the method behind each file path (`/list_pets`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rpc_methods: BTreeMap<String, RpcMethod>,
    /// The member that holds an item's id in a collection's GET response, where the
    /// document says so with `x-nkmc-id` on that GET (keyed by the collection's path).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub item_ids: BTreeMap<String, String>,
}

impl ServiceSpec {
    /// The security schemes that apply to `op`, in preference order.
    pub fn schemes_for(&self, op: &Operation) -> Vec<&SecurityScheme> {
        let reqs = op.security.as_ref().unwrap_or(&self.security);
        reqs.iter().flatten().filter_map(|name| self.security_schemes.get(name)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_documents_parse_on_a_small_caller_stack() {
        let mut schema = String::from(r#"{"type":"string"}"#);
        for _ in 0..120 {
            schema = format!(r#"{{"type":"array","items":{schema}}}"#);
        }
        let doc = format!(
            r#"{{"openapi":"3.0.0","info":{{"title":"t","version":"1"}},"paths":{{}},"components":{{"schemas":{{"D":{schema}}}}}}}"#
        );
        // An async worker has 2 MiB; this caller has far less.
        let parsed = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || parse_any(doc.as_bytes()).map(|s| s.title))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(parsed.unwrap(), "t");
    }
}
