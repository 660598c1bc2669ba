//! OAuth2 client credentials (RFC 6749 §4.4): a key stored as `client_id:client_secret` is
//! exchanged at the token URL for an access token, which is sent as a bearer token, cached
//! until shortly before it expires, then fetched again.
//!
//! The token URL must be on the service's registered origin, or on an origin the owner
//! listed in `[vault] oauth2_token_origins`: the client secret goes nowhere else. The
//! exchange uses the outbound client (SSRF guard, same-origin redirects only, deadlines).

use std::collections::HashMap;

use reqwest::header::ACCEPT;
use url::Url;

use crate::audit::Clock;
use crate::vault::Secret;

/// A cached token is fetched again this long before it expires.
pub const REFRESH_MARGIN_MS: i64 = 30_000;
/// Lifetime assumed when the token endpoint gives no `expires_in`.
pub const DEFAULT_LIFETIME_SECS: i64 = 300;
/// Largest token response read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// Why no access token could be had.
#[derive(Debug, thiserror::Error)]
pub enum OAuth2Error {
    /// The token URL is not allowed or not a URL.
    #[error("oauth2 {domain}: {message}")]
    TokenUrl {
        /// The service.
        domain: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The stored key is not `client_id:client_secret`.
    #[error(
        "oauth2 {0}: the stored key is not `client_id:client_secret`; store it again with \
         `nkmc keys set DOMAIN --oauth2 -`"
    )]
    NotClientCredentials(String),
    /// The token endpoint failed or answered something unusable.
    #[error("oauth2 {domain}: the token endpoint {message}")]
    Endpoint {
        /// The service.
        domain: String,
        /// What happened (never with a secret).
        message: String,
    },
}

/// One exchange to make (or answer from the cache).
#[derive(Debug)]
pub struct Exchange<'a> {
    /// The service.
    pub domain: &'a str,
    /// The stored key's id: a replaced key never reuses a token fetched with the old one.
    pub key_id: &'a str,
    /// `client_id:client_secret`.
    pub client: &'a Secret,
    /// The checked token URL ([`check_token_url`]).
    pub token_url: &'a Url,
}

#[derive(Debug)]
struct Cached {
    token: Secret,
    /// Milliseconds since the epoch after which the token is fetched again.
    refresh_at_ms: i64,
}

/// Access tokens by (domain, key id), with an injected clock.
#[derive(Debug)]
pub struct TokenCache {
    entries: tokio::sync::Mutex<HashMap<(String, String), Cached>>,
    clock: Box<dyn Clock>,
}

/// The token endpoint's answer (RFC 6749 §5.1); other members are ignored.
#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<i64>,
}

/// Resolves `token_url` (relative URLs against the service's base URL) and checks that it is
/// http(s) on the service's origin or on one of `allowed_origins` (`https://auth.example.com`).
pub fn check_token_url(
    domain: &str,
    token_url: &str,
    base_url: &Url,
    allowed_origins: &[String],
) -> Result<Url, OAuth2Error> {
    let bad = |message: String| OAuth2Error::TokenUrl { domain: domain.to_owned(), message };
    let url = base_url.join(token_url).map_err(|e| bad(format!("the token URL `{token_url}` is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || !url.username().is_empty() || url.password().is_some() {
        return Err(bad(format!("the token URL `{url}` must be http(s) without credentials")));
    }
    if crate::ssrf::is_metadata(&url) {
        return Err(bad("ssrf guard: cloud metadata addresses are never reached".into()));
    }
    let origin = url.origin().ascii_serialization();
    let allowed = url.origin() == base_url.origin()
        || allowed_origins
            .iter()
            .any(|a| Url::parse(a).map(|a| a.origin().ascii_serialization() == origin).unwrap_or(false));
    if !allowed {
        return Err(bad(format!(
            "the token URL's origin {origin} is not the service's ({}); the client secret is only sent there \
             or to an origin listed in config.toml: [vault] oauth2_token_origins = [\"{origin}\"]",
            base_url.origin().ascii_serialization()
        )));
    }
    Ok(url)
}

impl TokenCache {
    /// An empty cache reading time from `clock`.
    pub fn new(clock: Box<dyn Clock>) -> Self {
        TokenCache { entries: tokio::sync::Mutex::new(HashMap::new()), clock }
    }

    /// The access token for `ex`: the cached one while it is fresh, else a new one from the
    /// token endpoint. Concurrent callers wait for one fetch.
    pub async fn access_token(&self, http: &reqwest::Client, ex: Exchange<'_>) -> Result<Secret, OAuth2Error> {
        let key = (ex.domain.to_owned(), ex.key_id.to_owned());
        let mut entries = self.entries.lock().await;
        if let Some(c) = entries.get(&key) {
            if self.clock.now_ms() < c.refresh_at_ms {
                return Ok(c.token.clone());
            }
        }
        let asked_at = self.clock.now_ms();
        let (token, lifetime_secs) = fetch(http, &ex).await?;
        let refresh_at_ms =
            asked_at.saturating_add(lifetime_secs.saturating_mul(1000)).saturating_sub(REFRESH_MARGIN_MS);
        entries.insert(key, Cached { token: token.clone(), refresh_at_ms });
        tracing::debug!(domain = %ex.domain, key_id = %ex.key_id, lifetime_secs, "oauth2 access token fetched");
        Ok(token)
    }
}

async fn fetch(http: &reqwest::Client, ex: &Exchange<'_>) -> Result<(Secret, i64), OAuth2Error> {
    let fail = |message: String| OAuth2Error::Endpoint { domain: ex.domain.to_owned(), message };
    let (id, secret) =
        ex.client.expose().split_once(':').ok_or_else(|| OAuth2Error::NotClientCredentials(ex.domain.to_owned()))?;
    // RFC 6749 §2.3.1: the client id and secret are form-encoded, then sent with HTTP basic.
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let resp = http
        .post(ex.token_url.clone())
        .basic_auth(enc(id), Some(zeroize::Zeroizing::new(enc(secret)).as_str()))
        .header(ACCEPT, "application/json")
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .map_err(|e| fail(format!("cannot be reached: {}", e.without_url())))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| fail(format!("answer cannot be read: {}", e.without_url())))?;
    if body.len() > MAX_TOKEN_RESPONSE {
        return Err(fail(format!("answered more than {MAX_TOKEN_RESPONSE} bytes")));
    }
    if !status.is_success() {
        // The token endpoint saw the secret (form-encoded, in base64 basic auth): every
        // form of it is masked.
        let excerpt = crate::upstream::echo::masked_excerpt(&body, 512, Some(&Secret::new(secret.to_owned())));
        return Err(fail(format!("answered HTTP {}: {excerpt} (check the client id and secret)", status.as_u16())));
    }
    let parsed: TokenResponse = serde_json::from_slice(&body)
        .map_err(|e| fail(format!("answer is not a token response (RFC 6749 §5.1): {}", e.classify_message())))?;
    if let Some(t) = parsed.token_type.as_deref().filter(|t| !t.eq_ignore_ascii_case("bearer")) {
        return Err(fail(format!("gave a `{t}` token; only bearer tokens can be sent")));
    }
    if parsed.access_token.is_empty() || parsed.access_token.chars().any(|c| c.is_control()) {
        return Err(fail("gave an empty or malformed access_token".into()));
    }
    let lifetime = parsed.expires_in.filter(|s| *s > 0).unwrap_or(DEFAULT_LIFETIME_SECS);
    Ok((Secret::new(parsed.access_token), lifetime))
}

/// A serde error's category, without the excerpt of the input it may quote.
trait ClassifyMessage {
    fn classify_message(&self) -> &'static str;
}

impl ClassifyMessage for serde_json::Error {
    fn classify_message(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Data => "no string `access_token`",
            serde_json::error::Category::Eof => "truncated JSON",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
    use std::sync::Arc;

    #[derive(Debug, Clone, Default)]
    struct ManualClock(Arc<AtomicI64>);
    impl Clock for ManualClock {
        fn now_ms(&self) -> i64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// A token endpoint on 127.0.0.1 that counts fetches and answers `AT-<n>`, valid 120 s.
    async fn token_endpoint(fetches: Arc<AtomicUsize>) -> Url {
        use axum::http::HeaderMap;
        let app = axum::Router::new().route(
            "/token",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let fetches = fetches.clone();
                async move {
                    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                    // base64("client:s3cret")
                    if auth != "Basic Y2xpZW50OnMzY3JldA==" || body != "grant_type=client_credentials" {
                        return (axum::http::StatusCode::UNAUTHORIZED, format!("bad client {auth}")).into_response();
                    }
                    let n = fetches.fetch_add(1, Ordering::SeqCst) + 1;
                    axum::Json(serde_json::json!({"access_token": format!("AT-{n}"), "token_type": "Bearer", "expires_in": 120}))
                        .into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Url::parse(&format!("http://{addr}/token")).unwrap()
    }
    use axum::response::IntoResponse;

    /// The gateway's own outbound client (SSRF guard, deadlines, rustls provider installed).
    fn http() -> reqwest::Client {
        let up = crate::upstream::Upstream::new(Default::default(), Default::default()).unwrap();
        up.http().clone()
    }

    #[tokio::test]
    async fn tokens_are_cached_until_shortly_before_expiry_then_refreshed() {
        let fetches = Arc::new(AtomicUsize::new(0));
        let url = token_endpoint(fetches.clone()).await;
        let clock = ManualClock::default();
        clock.0.store(1_000_000, Ordering::SeqCst);
        let cache = TokenCache::new(Box::new(clock.clone()));
        let http = http();
        let client = Secret::new("client:s3cret".into());
        let ex = || Exchange { domain: "api.test", key_id: "k1", client: &client, token_url: &url };
        assert_eq!(cache.access_token(&http, ex()).await.unwrap().expose(), "AT-1");
        assert_eq!(cache.access_token(&http, ex()).await.unwrap().expose(), "AT-1");
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "cached");
        // 120 s lifetime, refreshed 30 s early: still fresh at +89.999 s, refreshed at +90 s.
        clock.0.store(1_000_000 + 89_999, Ordering::SeqCst);
        assert_eq!(cache.access_token(&http, ex()).await.unwrap().expose(), "AT-1");
        clock.0.store(1_000_000 + 90_000, Ordering::SeqCst);
        assert_eq!(cache.access_token(&http, ex()).await.unwrap().expose(), "AT-2");
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        // Another key id (the key was replaced) never reuses the token.
        let other = Exchange { key_id: "k2", ..ex() };
        assert_eq!(cache.access_token(&http, other).await.unwrap().expose(), "AT-3");
    }

    #[tokio::test]
    async fn a_refused_exchange_says_so_without_the_secret() {
        let url = token_endpoint(Arc::new(AtomicUsize::new(0))).await;
        let cache = TokenCache::new(Box::new(ManualClock::default()));
        let client = Secret::new("client:CANARY_wrong".into());
        let ex = Exchange { domain: "api.test", key_id: "k1", client: &client, token_url: &url };
        let err = cache.access_token(&http(), ex).await.unwrap_err().to_string();
        assert!(err.contains("HTTP 401") && !err.contains("CANARY"), "{err}");
        let plain = Secret::new("no-colon".into());
        let ex = Exchange { domain: "api.test", key_id: "k1", client: &plain, token_url: &url };
        let err = cache.access_token(&http(), ex).await.unwrap_err().to_string();
        assert!(err.contains("--oauth2"), "{err}");
    }

    #[test]
    fn the_token_url_must_be_on_the_services_origin_or_allowed() {
        let base = Url::parse("https://api.example.com/v1/").unwrap();
        let ok = check_token_url("d", "https://api.example.com/oauth/token", &base, &[]).unwrap();
        assert_eq!(ok.as_str(), "https://api.example.com/oauth/token");
        assert_eq!(check_token_url("d", "/oauth/token", &base, &[]).unwrap().as_str(), ok.as_str());
        let err = check_token_url("d", "https://auth.example.com/token", &base, &[]).unwrap_err().to_string();
        assert!(err.contains("oauth2_token_origins = [\"https://auth.example.com\"]"), "{err}");
        let allowed = ["https://auth.example.com".to_owned()];
        assert!(check_token_url("d", "https://auth.example.com/token", &base, &allowed).is_ok());
        assert!(check_token_url("d", "http://api.example.com/token", &base, &[]).is_err(), "another scheme");
        assert!(check_token_url("d", "https://api.example.com:8443/token", &base, &[]).is_err(), "another port");
        assert!(check_token_url("d", "https://u:p@api.example.com/token", &base, &[]).is_err());
        let meta = Url::parse("http://169.254.169.254/").unwrap();
        assert!(check_token_url("d", "http://169.254.169.254/token", &meta, &[]).is_err());
    }
}
