//! `nkmc register --url URL`: finding an API's document the way careful clients do.
//!
//! In order: the URL itself (if it is a document), its `Link` headers with
//! `rel="service-desc"` or `rel="describedby"`, well-known names relative to the URL and
//! to the host root (`openapi.json`, `openapi.yaml`, `.well-known/openapi.json`,
//! `swagger.json`, `v3/api-docs`...), and for JSON-RPC servers `rpc.discover`. A document is
//! recognised by its content (an `openapi` or `openrpc` member), whatever its content type.
//! When nothing is found, the error lists every URL tried and what it answered.

use agentfs::spec::MAX_DOCUMENT_BYTES;
use url::Url;

/// Names tried relative to the URL and to the host root.
const WELL_KNOWN: &[&str] = &[
    "openapi.json",
    "openapi.yaml",
    "openapi.yml",
    ".well-known/openapi.json",
    ".well-known/openapi.yaml",
    "swagger.json",
    "v3/api-docs",
    "api-docs",
    "openapi/v1.json",
    "docs/openapi.json",
    "openrpc.json",
];

/// What kind of document was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An OpenAPI 3.x document.
    OpenApi,
    /// An OpenRPC document.
    OpenRpc,
}

/// A found document.
#[derive(Debug)]
pub struct Found {
    /// Its text.
    pub text: String,
    /// Where it was found (relative server URLs resolve against it).
    pub url: Url,
    /// Its kind.
    pub kind: Kind,
    /// For `rpc.discover`, the JSON-RPC endpoint itself.
    pub rpc_endpoint: Option<Url>,
}

/// Why discovery failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The URL is not usable.
    #[error("discovery: `{0}` is not an http(s) URL")]
    BadUrl(String),
    /// Nothing was found.
    #[error("discovery: no OpenAPI or OpenRPC document found for {url}; tried:\n{tried}\nRegister the document itself with `nkmc register --spec FILE`")]
    NotFound {
        /// The URL given.
        url: String,
        /// One line per attempt.
        tried: String,
    },
}

/// Whether a document's text is OpenAPI or OpenRPC (by content, not content type).
pub fn sniff(text: &str) -> Option<Kind> {
    let value = agentfs::spec::parse_document(text.as_bytes()).ok()?;
    if value.get("openapi").and_then(|v| v.as_str()).is_some() {
        Some(Kind::OpenApi)
    } else if value.get("openrpc").and_then(|v| v.as_str()).is_some() {
        Some(Kind::OpenRpc)
    } else {
        None
    }
}

/// `Link: <...>; rel="service-desc"` targets, resolved against `base`.
fn link_targets(headers: &reqwest::header::HeaderMap, base: &Url) -> Vec<Url> {
    let mut out = Vec::new();
    for value in headers.get_all(reqwest::header::LINK) {
        let Ok(value) = value.to_str() else { continue };
        for link in value.split(',') {
            let mut parts = link.split(';');
            let Some(target) = parts.next().map(str::trim).and_then(|t| t.strip_prefix('<')?.strip_suffix('>')) else {
                continue;
            };
            let rel = parts.filter_map(|p| p.trim().strip_prefix("rel=")).map(|r| r.trim_matches('"')).any(|r| {
                r.split_whitespace()
                    .any(|r| r.eq_ignore_ascii_case("service-desc") || r.eq_ignore_ascii_case("describedby"))
            });
            if rel {
                if let Ok(u) = base.join(target) {
                    out.push(u);
                }
            }
        }
    }
    out
}

/// Reads a body up to the document size cap.
async fn capped_text(resp: reqwest::Response) -> Result<String, String> {
    if resp.content_length().is_some_and(|l| l > MAX_DOCUMENT_BYTES as u64) {
        return Err("larger than the document size limit".into());
    }
    let bytes = resp.bytes().await.map_err(|e| e.without_url().to_string())?;
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err("larger than the document size limit".into());
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| "not UTF-8 text".into())
}

/// Finds the document for `url`.
pub async fn discover(client: &reqwest::Client, url: &str) -> Result<Found, DiscoveryError> {
    let start = Url::parse(url).map_err(|_| DiscoveryError::BadUrl(url.to_owned()))?;
    if start.scheme() != "http" && start.scheme() != "https" {
        return Err(DiscoveryError::BadUrl(url.to_owned()));
    }
    let mut tried: Vec<String> = Vec::new();
    let mut queue: Vec<Url> = vec![start.clone()];
    let dir =
        if start.path().ends_with('/') { start.clone() } else { start.join("./").unwrap_or_else(|_| start.clone()) };
    let root = start.join("/").unwrap_or_else(|_| start.clone());
    let mut candidates: Vec<Url> = Vec::new();
    for base in [&dir, &root] {
        for name in WELL_KNOWN {
            if let Ok(u) = base.join(name) {
                if !candidates.contains(&u) {
                    candidates.push(u);
                }
            }
        }
    }
    let mut i = 0;
    while i < queue.len() + candidates.len() {
        let target = if i < queue.len() { queue[i].clone() } else { candidates[i - queue.len()].clone() };
        i += 1;
        if tried.iter().any(|t| t.starts_with(&format!("{target} "))) {
            continue;
        }
        let resp = client
            .get(target.clone())
            .header(reqwest::header::ACCEPT, "application/openapi+json, application/json, application/yaml, */*")
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                tried.push(format!("{target} → {}", e.without_url()));
                continue;
            }
        };
        let status = resp.status();
        // Links are followed before the body is judged, and from the first URL only.
        if i == 1 {
            for link in link_targets(resp.headers(), &target) {
                if !queue.contains(&link) {
                    queue.push(link);
                }
            }
        }
        if !status.is_success() {
            tried.push(format!("{target} → HTTP {}", status.as_u16()));
            continue;
        }
        match capped_text(resp).await {
            Ok(text) => match sniff(&text) {
                Some(kind) => return Ok(Found { text, url: target, kind, rpc_endpoint: None }),
                None => tried.push(format!("{target} → HTTP {}, not an OpenAPI or OpenRPC document", status.as_u16())),
            },
            Err(why) => tried.push(format!("{target} → {why}")),
        }
    }
    // A JSON-RPC server describes itself with rpc.discover.
    let call = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "rpc.discover", "params": []});
    let rpc =
        client.post(start.clone()).header(reqwest::header::CONTENT_TYPE, "application/json").body(call.to_string());
    match rpc.send().await {
        Ok(resp) if resp.status().is_success() => match capped_text(resp).await {
            Ok(text) => {
                let result =
                    serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| v.get("result").cloned());
                match result.filter(|r| r.get("openrpc").is_some()) {
                    Some(doc) => {
                        return Ok(Found {
                            text: doc.to_string(),
                            url: start.clone(),
                            kind: Kind::OpenRpc,
                            rpc_endpoint: Some(start),
                        })
                    }
                    None => tried.push(format!("{start} rpc.discover → not an OpenRPC document")),
                }
            }
            Err(why) => tried.push(format!("{start} rpc.discover → {why}")),
        },
        Ok(resp) => tried.push(format!("{start} rpc.discover → HTTP {}", resp.status().as_u16())),
        Err(e) => tried.push(format!("{start} rpc.discover → {}", e.without_url())),
    }
    Err(DiscoveryError::NotFound {
        url: url.to_owned(),
        tried: tried.iter().map(|t| format!("  {t}")).collect::<Vec<_>>().join("\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers() {
        let mut h = reqwest::header::HeaderMap::new();
        h.append(
            reqwest::header::LINK,
            r#"</openapi.json>; rel="service-desc", </docs>; rel="service-doc""#.parse().unwrap(),
        );
        h.append(reqwest::header::LINK, r#"<https://x.test/spec.yaml>; rel="describedby""#.parse().unwrap());
        let base = Url::parse("http://api.test/v1/").unwrap();
        let got: Vec<String> = link_targets(&h, &base).into_iter().map(|u| u.to_string()).collect();
        assert_eq!(got, vec!["http://api.test/openapi.json", "https://x.test/spec.yaml"]);
    }

    #[test]
    fn sniffs_by_content() {
        assert_eq!(sniff("openapi: 3.0.0\ninfo: {}"), Some(Kind::OpenApi));
        assert_eq!(sniff(r#"{"openrpc":"1.2.6"}"#), Some(Kind::OpenRpc));
        assert_eq!(sniff("<html></html>"), None);
    }
}
