//! Outbound HTTP: the request URL built from the registered base URL and canonical
//! segments only, the credential injected by the spec's security scheme, and upstream
//! failures classified.

use agentfs::spec::{KeyLocation, Method, SecurityScheme};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{HeaderValue, AUTHORIZATION, COOKIE};
use url::Url;

use crate::config::UpstreamConfig;
use crate::vault::Secret;

pub mod client;
pub mod echo;
pub mod tls;

pub use echo::Answer;

/// Longest upstream error body kept for a message, in bytes.
const ERROR_BODY_EXCERPT: usize = 2048;

/// Why an upstream call failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No answer within the deadline.
    #[error("upstream {domain}: no answer within {timeout_ms} ms")]
    Timeout {
        /// The service.
        domain: String,
        /// The deadline.
        timeout_ms: u64,
    },
    /// The connection could not be made.
    #[error("upstream {domain}: cannot connect: {message}")]
    Unreachable {
        /// The service.
        domain: String,
        /// Why (never with the URL, which may carry a key).
        message: String,
    },
    /// The exchange failed after connecting.
    #[error("upstream {domain}: {message}")]
    Transport {
        /// The service.
        domain: String,
        /// Why.
        message: String,
    },
    /// The upstream answered with an error status.
    #[error("upstream {domain}: HTTP {status}: {body}{}", next_step(*status, domain))]
    Status {
        /// The service.
        domain: String,
        /// The status.
        status: u16,
        /// The start of the body, with any credential masked.
        body: String,
    },
    /// The body is larger than the configured cap.
    #[error("upstream {domain}: the response is {size} bytes, over the limit of {limit} (upstream.max_body_bytes)")]
    TooLarge {
        /// The service.
        domain: String,
        /// The announced size.
        size: u64,
        /// The cap.
        limit: u64,
    },
    /// The SSRF guard refused the destination.
    #[error("upstream {domain}: {message}")]
    Refused {
        /// The service.
        domain: String,
        /// Why.
        message: String,
    },
    /// The request could not be built.
    #[error("upstream {domain}: invalid request: {message}")]
    Invalid {
        /// The service.
        domain: String,
        /// Why.
        message: String,
    },
}

/// What to do about an error status, when nkmc can say: the key for 401/403, patience for
/// 429. Appended to the message after the upstream's own words.
fn next_step(status: u16, domain: &str) -> String {
    match status {
        401 => format!(
            " (the upstream did not accept the key: check it, or store another with `nkmc keys set {domain} ...`; \
             `nkmc keys list` shows what is stored)"
        ),
        403 => format!(
            " (the upstream refused this with the key sent: check what the key may do, or store another with \
             `nkmc keys set {domain} ...`)"
        ),
        429 => " (rate limited by the upstream: retry later)".to_owned(),
        _ => String::new(),
    }
}

/// A request to send: everything derived from validated input.
#[derive(Debug)]
pub struct Call<'a> {
    /// The service's domain (for messages).
    pub domain: &'a str,
    /// The method.
    pub method: Method,
    /// The registered base URL.
    pub base_url: &'a Url,
    /// Raw path segments below the base URL.
    pub segments: &'a [String],
    /// The operation's fixed query and the name's query, joined.
    pub query: Option<String>,
    /// How to present the credential, in preference order.
    pub schemes: Vec<&'a SecurityScheme>,
    /// Where the owner said the credential goes; wins over `schemes`.
    pub placement: Option<SecurityScheme>,
    /// The credential, if one is stored.
    pub credential: Option<Secret>,
    /// A JSON request body.
    pub body: Option<bytes::Bytes>,
    /// Validators of a body the caller already holds (a conditional `GET`).
    pub validators: Validators,
}

/// `If-None-Match` / `If-Modified-Since` passed on from the caller, so an unchanged body
/// comes back as `304 Not Modified` without being sent again.
#[derive(Debug, Clone, Default)]
pub struct Validators {
    /// `If-None-Match`: the ETag the caller holds.
    pub if_none_match: Option<HeaderValue>,
    /// `If-Modified-Since`: the `Last-Modified` the caller holds.
    pub if_modified_since: Option<HeaderValue>,
}

impl Validators {
    /// Whether there is any validator to send.
    pub fn any(&self) -> bool {
        self.if_none_match.is_some() || self.if_modified_since.is_some()
    }
}

/// The outbound HTTP client.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Discovery and OAuth2 token exchanges (no credential of a service).
    client: reqwest::Client,
    /// Calls with a service's credential ([`Upstream::send`]).
    direct: client::Client,
    config: UpstreamConfig,
}

impl Upstream {
    /// A pooled client with the configured deadlines; no system proxy; redirects
    /// followed only within the same origin (a credential never leaves its origin); names
    /// resolved through the SSRF guard ([`crate::ssrf`]).
    pub fn new(config: UpstreamConfig, private_hosts: crate::ssrf::PrivateHosts) -> Result<Self, reqwest::Error> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let connect_timeout = std::time::Duration::from_millis(config.connect_timeout_ms);
        let direct = client::Client::new(private_hosts.clone(), connect_timeout);
        let mut builder = reqwest::Client::builder();
        if let Some(tls) = tls::client_config() {
            builder = builder.tls_backend_preconfigured(tls);
        }
        let client = builder
            .no_proxy()
            .dns_resolver(std::sync::Arc::new(crate::ssrf::GuardedResolver::new(private_hosts)))
            .timeout(config.timeout())
            .connect_timeout(std::time::Duration::from_millis(config.connect_timeout_ms))
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                let same =
                    attempt.previous().first().map(|first| first.origin() == attempt.url().origin()).unwrap_or(false);
                if same && attempt.previous().len() < 5 {
                    attempt.follow()
                } else {
                    attempt.stop()
                }
            }))
            .user_agent(concat!("nkmc-gatewayd/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Upstream { client, direct, config })
    }

    /// The pooled client itself, for calls that carry no credential (discovery).
    pub fn http(&self) -> &reqwest::Client {
        &self.client
    }

    /// The configured limits.
    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// Sends the call; a non-2xx status becomes [`UpstreamError::Status`]. Idempotent calls
    /// are retried on 429/502/503/504. The answer's body, and the excerpt of an error body,
    /// have every form of the credential sent masked ([`echo`]).
    pub async fn send(&self, call: Call<'_>) -> Result<Answer, UpstreamError> {
        let domain = call.domain.to_owned();
        if crate::ssrf::is_metadata(call.base_url) {
            return Err(UpstreamError::Refused {
                domain,
                message: "ssrf guard: cloud metadata addresses are never reached".into(),
            });
        }
        let mut url = call.base_url.clone();
        push_segments(&mut url, call.segments).map_err(|_| UpstreamError::Invalid {
            domain: domain.clone(),
            message: "the path cannot be sent: a base URL that takes no path, or an empty, `.` or `..` segment".into(),
        })?;
        url.set_query(call.query.as_deref().filter(|q| !q.is_empty()));
        let method = match call.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Patch => reqwest::Method::PATCH,
            Method::Delete => reqwest::Method::DELETE,
        };
        let scheme = call
            .placement
            .as_ref()
            .or_else(|| call.schemes.iter().copied().find(|s| !matches!(s, SecurityScheme::Unsupported { .. })));
        if let (Some(SecurityScheme::ApiKey { location: KeyLocation::Query, name }), Some(secret)) =
            (scheme, &call.credential)
        {
            url.query_pairs_mut().append_pair(name, secret.expose());
        }
        let idempotent = matches!(call.method, Method::Get | Method::Put | Method::Delete);
        let mut headers = reqwest::header::HeaderMap::new();
        if call.body.is_some() {
            headers.insert(reqwest::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(v) = &call.validators.if_none_match {
            headers.insert(reqwest::header::IF_NONE_MATCH, v.clone());
        }
        if let Some(v) = &call.validators.if_modified_since {
            headers.insert(reqwest::header::IF_MODIFIED_SINCE, v.clone());
        }
        if let Some(secret) = &call.credential {
            inject(&mut headers, scheme, secret)
                .map_err(|message| UpstreamError::Invalid { domain: domain.clone(), message })?;
        }
        let mut attempt = 0;
        let resp = loop {
            let out =
                client::Outgoing { method: method.clone(), url: &url, headers: &headers, body: call.body.clone() };
            let resp = self.direct.send(out, self.config.timeout()).await.map_err(|f| self.failure(&domain, f))?;
            let resp = reqwest::Response::from(resp.map(reqwest::Body::wrap));
            let retryable = matches!(resp.status().as_u16(), 429 | 502 | 503 | 504);
            if !(idempotent && retryable && attempt < self.config.max_retries) {
                break resp;
            }
            let wait = retry_wait(resp.headers(), attempt, self.config.retry_after_cap());
            tracing::debug!(domain = %domain, status = resp.status().as_u16(), attempt, wait_ms = wait.as_millis() as u64, "retrying");
            attempt += 1;
            tokio::time::sleep(wait).await;
        };
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_MODIFIED && call.validators.any() {
            return Ok(Answer::new(resp, call.credential.as_ref()));
        }
        if status.is_success() {
            if let Some(len) = resp.content_length() {
                if len > self.config.max_body_bytes {
                    return Err(UpstreamError::TooLarge { domain, size: len, limit: self.config.max_body_bytes });
                }
            }
            return Ok(Answer::new(resp, call.credential.as_ref()));
        }
        let body = error_excerpt(resp, call.credential.as_ref()).await;
        Err(UpstreamError::Status { domain, status: status.as_u16(), body })
    }

    fn failure(&self, domain: &str, f: client::Failure) -> UpstreamError {
        let domain = domain.to_owned();
        match f {
            client::Failure::Timeout => UpstreamError::Timeout { domain, timeout_ms: self.config.timeout_ms },
            client::Failure::Refused(message) => UpstreamError::Refused { domain, message },
            client::Failure::Connect(message) => UpstreamError::Unreachable { domain, message },
            client::Failure::Transport(message) => UpstreamError::Transport { domain, message },
        }
    }
}

/// Puts the credential where the scheme says; with no usable scheme, as a bearer token.
/// The header is marked sensitive.
fn inject(
    headers: &mut reqwest::header::HeaderMap,
    scheme: Option<&SecurityScheme>,
    secret: &Secret,
) -> Result<(), String> {
    // The formatted value is wiped once copied into the header (hyper's own copies are out of
    // reach).
    let sensitive = |v: String| {
        let v = zeroize::Zeroizing::new(v);
        HeaderValue::from_str(&v).map(|mut h| {
            h.set_sensitive(true);
            h
        })
    };
    let bad = |_| "the stored credential is not a valid header value".to_owned();
    match scheme {
        Some(SecurityScheme::Basic) => {
            use base64::Engine;
            let value = zeroize::Zeroizing::new(match secret.expose().split_once(':') {
                Some(_) => secret.expose().to_owned(),
                None => format!("{}:", secret.expose()),
            });
            let encoded = base64::engine::general_purpose::STANDARD.encode(value.as_bytes());
            headers
                .insert(AUTHORIZATION, sensitive(format!("Basic {}", *zeroize::Zeroizing::new(encoded))).map_err(bad)?);
        }
        Some(SecurityScheme::ApiKey { location: KeyLocation::Header, name }) => {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("the header name {name:?} of the security scheme is not valid"))?;
            headers.insert(name, sensitive(secret.expose().to_owned()).map_err(bad)?);
        }
        Some(SecurityScheme::ApiKey { location: KeyLocation::Cookie, name }) => {
            headers.insert(COOKIE, sensitive(format!("{name}={}", secret.expose())).map_err(bad)?);
        }
        Some(SecurityScheme::ApiKey { location: KeyLocation::Query, .. }) => {}
        Some(SecurityScheme::Bearer)
        | Some(SecurityScheme::OAuth2ClientCredentials { .. })
        | Some(SecurityScheme::Unsupported { .. })
        | None => {
            headers.insert(AUTHORIZATION, sensitive(format!("Bearer {}", secret.expose())).map_err(bad)?);
        }
    }
    Ok(())
}

/// How long to wait before retry `attempt`: the upstream's `Retry-After` (seconds) when it
/// gives one, else 100 ms doubling; never more than `cap`.
fn retry_wait(headers: &reqwest::header::HeaderMap, attempt: u32, cap: std::time::Duration) -> std::time::Duration {
    let asked = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(std::time::Duration::from_secs);
    asked.unwrap_or_else(|| std::time::Duration::from_millis(100 << attempt.min(10))).min(cap)
}

async fn error_excerpt(resp: reqwest::Response, credential: Option<&Secret>) -> String {
    let bytes = resp.bytes().await.unwrap_or_default();
    echo::masked_excerpt(&bytes, ERROR_BODY_EXCERPT, credential)
}

/// A path that cannot be sent: a base URL that takes no path, or an empty, `.` or `..` segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("upstream: the path cannot be sent (a base URL that takes no path, or an empty, `.` or `..` segment)")]
pub struct UnsendablePath;

/// Appends raw segments to `base`'s path, each one encoded as exactly one segment: `/`,
/// `%`, `?`, `#` and every other reserved character are percent-encoded, so no id can
/// change the path's shape. The dot segments `.` and `..` (which URLs resolve even when
/// encoded as `%2E`) and empty segments are refused; canonical names never produce them.
pub fn push_segments(base: &mut Url, segments: &[String]) -> Result<(), UnsendablePath> {
    if base.cannot_be_a_base() || segments.iter().any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(UnsendablePath);
    }
    let mut path = base.path().trim_end_matches('/').to_owned();
    for s in segments {
        path.push('/');
        path.extend(utf8_percent_encode(s, SEGMENT));
    }
    if path.is_empty() {
        path.push('/');
    }
    base.set_path(&path);
    Ok(())
}

/// What a path segment keeps unencoded: RFC 3986 unreserved characters and the
/// sub-delimiters APIs use in ids (`@`, `:`, `+`, `,`, `;`, `=`...). `%` is always encoded,
/// so an id is never decoded twice.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'@')
    .remove(b':')
    .remove(b'+')
    .remove(b'!')
    .remove(b'$')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b',')
    .remove(b';')
    .remove(b'=');

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_what_to_do_next() {
        let status = |status| UpstreamError::Status { domain: "pets.test".into(), status, body: "{}".into() };
        assert!(status(401).to_string().ends_with("`nkmc keys list` shows what is stored)"), "{}", status(401));
        assert!(status(403).to_string().contains("`nkmc keys set pets.test ...`"), "{}", status(403));
        assert!(status(429).to_string().contains("retry later"));
        assert_eq!(status(404).to_string(), "upstream pets.test: HTTP 404: {}");
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap() {
        let cap = std::time::Duration::from_secs(5);
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_wait(&h, 0, cap), std::time::Duration::from_millis(100));
        assert_eq!(retry_wait(&h, 2, cap), std::time::Duration::from_millis(400));
        h.insert(reqwest::header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_wait(&h, 0, cap), std::time::Duration::from_secs(2));
        h.insert(reqwest::header::RETRY_AFTER, "999999".parse().unwrap());
        assert_eq!(retry_wait(&h, 0, cap), cap);
    }

    #[test]
    fn segments_never_change_the_path_shape() {
        let mut base = Url::parse("https://api.example.test/v1/").unwrap();
        let segs: Vec<String> =
            ["a/b", "%2E%2E", "x?y#z", "ok-name_1.json", "ünï", "a b", "..."].iter().map(|s| s.to_string()).collect();
        push_segments(&mut base, &segs).unwrap();
        assert_eq!(
            base.as_str(),
            "https://api.example.test/v1/a%2Fb/%252E%252E/x%3Fy%23z/ok-name_1.json/%C3%BCn%C3%AF/a%20b/..."
        );
        assert_eq!(base.host_str(), Some("api.example.test"));
        for bad in ["..", ".", ""] {
            let mut base = Url::parse("https://api.example.test/v1").unwrap();
            assert!(push_segments(&mut base, &["x".into(), bad.into()]).is_err(), "{bad:?}");
        }
        let mut root = Url::parse("http://127.0.0.1:8080").unwrap();
        push_segments(&mut root, &["pets".into()]).unwrap();
        assert_eq!(root.as_str(), "http://127.0.0.1:8080/pets");
    }
}
