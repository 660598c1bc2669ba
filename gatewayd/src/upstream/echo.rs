//! What an upstream says, with the credential that was sent to it masked out.
//!
//! An upstream may echo the request back: a 401 that quotes the `Authorization` header, a
//! debug endpoint, a key-management API that returns the key itself. Whatever it echoes
//! would leave gatewayd in an error message (and from there in `.nkmc/last_error`, the
//! log and the audit outcome), in a file's content, in a listing's names or in a grep
//! match. DESIGN says keys never reach the agent or the mount, so every byte of an
//! upstream's answer, successful or not, goes through the masker of `nkmc run`
//! ([`crate::run::mask`]): the credential, its base64 (standard and URL-safe, at every
//! alignment), hex, URL-encoded and JSON-escaped forms become `[masked by nkmc]`.
//!
//! A masked body may be shorter or longer than the upstream announced, so its length is
//! only passed on when nothing can be masked (no credential was sent).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;

use crate::run::mask::{mask_all, mask_bytes, Masker, Patterns};
use crate::vault::Secret;

/// The patterns standing for `credential`: the value sent and, for a `user:password`
/// basic credential, the password on its own (an upstream may quote either).
pub fn patterns(credential: Option<&Secret>) -> Option<Patterns> {
    let value = credential?.expose();
    if value.is_empty() {
        return None;
    }
    let mut secrets: Vec<&[u8]> = vec![value.as_bytes()];
    if let Some((_, password)) = value.split_once(':') {
        if password.len() >= crate::run::mask::MIN_SECRET_LEN {
            secrets.push(password.as_bytes());
        }
    }
    Some(Patterns::new(secrets))
}

/// How many credentials' patterns are kept (see [`shared_patterns`]).
const KEPT_PATTERNS: usize = 32;

/// Patterns built for recently sent credentials, by the SHA-256 of the credential (the
/// patterns hold its forms anyway; the digest adds nothing to what memory holds).
static KEPT: std::sync::Mutex<Vec<([u8; 32], Arc<Patterns>)>> = std::sync::Mutex::new(Vec::new());

/// [`patterns`], built once per credential: building them (every encoding at every
/// alignment, one searcher each) cost more than the rest of a small read. The most recent
/// [`KEPT_PATTERNS`] credentials' are kept; a credential that changes is another digest.
pub fn shared_patterns(credential: Option<&Secret>) -> Option<Arc<Patterns>> {
    use sha2::Digest;
    let value = credential?.expose();
    if value.is_empty() {
        return None;
    }
    let digest: [u8; 32] = sha2::Sha256::digest(value.as_bytes()).into();
    let kept = |k: &mut Vec<([u8; 32], Arc<Patterns>)>| k.iter().find(|(d, _)| *d == digest).map(|(_, p)| p.clone());
    if let Some(p) = kept(&mut KEPT.lock().unwrap_or_else(|p| p.into_inner())) {
        return Some(p);
    }
    let built = Arc::new(patterns(credential)?);
    let mut k = KEPT.lock().unwrap_or_else(|p| p.into_inner());
    if kept(&mut k).is_none() {
        if k.len() >= KEPT_PATTERNS {
            k.remove(0);
        }
        k.push((digest, built.clone()));
    }
    Some(built)
}

/// `bytes` as text with every form of `credential` masked.
pub fn mask_text(bytes: &[u8], credential: Option<&Secret>) -> String {
    match patterns(credential) {
        Some(p) => String::from_utf8_lossy(&mask_all(&p, bytes)).into_owned(),
        None => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// The start of `bytes` (at most `limit` bytes of output) as text, masked; an occurrence
/// of the credential cut by the limit is not shown in part: what could be the beginning
/// of a secret is held back by the masker and dropped.
pub fn masked_excerpt(bytes: &[u8], limit: usize, credential: Option<&Secret>) -> String {
    let Some(p) = patterns(credential) else {
        return String::from_utf8_lossy(&bytes[..bytes.len().min(limit)]).into_owned();
    };
    let window = limit.saturating_add(p.longest());
    let mut masker = Masker::new(p);
    let mut out = masker.push(&bytes[..bytes.len().min(window)]);
    if bytes.len() <= window {
        out.extend(masker.finish());
    }
    out.truncate(limit);
    String::from_utf8_lossy(&out).into_owned()
}

/// A successful upstream response whose body is masked against the credential sent.
#[derive(Debug)]
pub struct Answer {
    resp: reqwest::Response,
    /// Shared: built once per credential ([`shared_patterns`]).
    patterns: Option<Arc<Patterns>>,
    /// The peer that made the call, when a lender served it (for the audit's `peer`).
    peer: Option<Box<str>>,
}

impl Answer {
    /// Wraps `resp`, the answer to a request that carried `credential`.
    pub fn new(resp: reqwest::Response, credential: Option<&Secret>) -> Self {
        Answer { resp, patterns: shared_patterns(credential), peer: None }
    }

    /// Marks the answer as made by `peer` (a federation lender).
    pub fn served_by(mut self, peer: &str) -> Self {
        self.peer = Some(peer.into());
        self
    }

    /// The peer that made the call, if one did.
    pub fn peer(&self) -> Option<&str> {
        self.peer.as_deref()
    }

    /// The upstream's status.
    pub fn status(&self) -> reqwest::StatusCode {
        self.resp.status()
    }

    /// The upstream's content type, the one header gatewayd passes on; one that holds the
    /// credential in any form is replaced by `application/octet-stream`.
    pub fn content_type(&self) -> Option<reqwest::header::HeaderValue> {
        let value = self.resp.headers().get(reqwest::header::CONTENT_TYPE)?;
        match &self.patterns {
            Some(p) if p.occurs_in(value.as_bytes()) => {
                Some(reqwest::header::HeaderValue::from_static("application/octet-stream"))
            }
            _ => Some(value.clone()),
        }
    }

    /// A validator header (`ETag`, `Last-Modified`) of the upstream's answer, unless it
    /// holds the credential in some form (then it is dropped).
    pub fn validator(&self, name: &reqwest::header::HeaderName) -> Option<reqwest::header::HeaderValue> {
        let value = self.resp.headers().get(name)?;
        match &self.patterns {
            Some(p) if p.occurs_in(value.as_bytes()) => None,
            _ => Some(value.clone()),
        }
    }

    /// The length the upstream announced, for size caps.
    pub fn announced_len(&self) -> Option<u64> {
        self.resp.content_length()
    }

    /// The exact length of the body [`Answer::bytes_stream`] yields, when it is known:
    /// only when no credential was sent, as masking may change it.
    pub fn exact_len(&self) -> Option<u64> {
        if self.patterns.is_some() {
            None
        } else {
            self.resp.content_length()
        }
    }

    /// The whole body, masked.
    pub async fn bytes(self) -> Result<Bytes, reqwest::Error> {
        let body = self.resp.bytes().await?;
        Ok(match &self.patterns {
            Some(p) => mask_bytes(p, body),
            None => body,
        })
    }

    /// [`Answer::bytes_stream`] as I/O results, failing with `FileTooLarge` once more than
    /// `limit` bytes (`upstream.max_body_bytes`) arrived from the upstream (counted before
    /// masking): the body a response streams on.
    pub fn capped_stream(self, limit: u64) -> futures_util::stream::BoxStream<'static, std::io::Result<Bytes>> {
        let mut seen: u64 = 0;
        let chunks = self.resp.bytes_stream().map(move |chunk| {
            let chunk = chunk.map_err(|e| std::io::Error::other(format!("upstream body: {}", e.without_url())))?;
            seen += chunk.len() as u64;
            if seen > limit {
                tracing::warn!(limit, "the upstream body went over upstream.max_body_bytes; cut off");
                let message = format!("upstream body over the limit of {limit} bytes");
                return Err(std::io::Error::new(std::io::ErrorKind::FileTooLarge, message));
            }
            Ok(chunk)
        });
        masked(chunks, self.patterns)
    }

    /// The content type to pass on ([`Answer::content_type`]) as text, or
    /// `application/octet-stream`.
    pub fn content_type_text(&self) -> String {
        self.content_type()
            .and_then(|v| v.to_str().ok().map(str::to_owned))
            .unwrap_or_else(|| "application/octet-stream".to_owned())
    }

    /// The body as it arrives, masked chunk by chunk (a credential split between chunks is
    /// still masked; the masker holds back less than one pattern's length).
    pub fn bytes_stream(self) -> futures_util::stream::BoxStream<'static, Result<Bytes, reqwest::Error>> {
        masked(self.resp.bytes_stream(), self.patterns)
    }
}

/// `chunks` masked with `patterns` (none: as they are); the stream ends at its first error,
/// dropping what the masker held.
fn masked<E: Send + 'static>(
    chunks: impl futures_util::Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    patterns: Option<Arc<Patterns>>,
) -> futures_util::stream::BoxStream<'static, Result<Bytes, E>> {
    let Some(patterns) = patterns else { return chunks.boxed() };
    let masker = Masker::new(patterns);
    futures_util::stream::unfold(Some((chunks, masker)), |state| async move {
        let (mut chunks, mut masker) = state?;
        loop {
            match chunks.next().await {
                Some(Ok(chunk)) => {
                    let out = masker.push_bytes(chunk);
                    if !out.is_empty() {
                        return Some((Ok(out), Some((chunks, masker))));
                    }
                }
                Some(Err(e)) => return Some((Err(e), None)),
                None => {
                    let rest = masker.finish();
                    return (!rest.is_empty()).then(|| (Ok(rest.into()), None));
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_excerpt_never_shows_a_secret_cut_by_its_limit() {
        let key = Secret::new("CANARY_excerpt_0123456789".into());
        let body = format!("{}{}{}", "x".repeat(10), key.expose(), "y".repeat(200));
        // The limit falls inside the secret: not even its beginning is shown.
        let out = masked_excerpt(body.as_bytes(), 16, Some(&key));
        assert_eq!(out, "xxxxxxxxxx[maske");
        let out = masked_excerpt(body.as_bytes(), 40, Some(&key));
        assert_eq!(out, format!("{}[masked by nkmc]{}", "x".repeat(10), "y".repeat(14)));
        // A body cut inside a secret past the window: the partial secret is held back.
        let long = format!("{}{}", "x".repeat(60), key.expose());
        let out = masked_excerpt(long.as_bytes(), 64, Some(&key));
        assert!(!out.contains("CANA"), "{out}");
        assert_eq!(masked_excerpt(b"no secret here", 4, Some(&key)), "no s");
        assert_eq!(masked_excerpt(b"no credential", 100, None), "no credential");
    }

    #[test]
    fn patterns_are_built_once_per_credential() {
        let a = Secret::new("CANARY_shared_patterns_1".into());
        let b = Secret::new("CANARY_shared_patterns_2".into());
        let pa = shared_patterns(Some(&a)).unwrap();
        assert!(Arc::ptr_eq(&pa, &shared_patterns(Some(&a)).unwrap()), "kept");
        let pb = shared_patterns(Some(&b)).unwrap();
        assert!(!Arc::ptr_eq(&pa, &pb), "another credential, other patterns");
        assert_eq!(String::from_utf8_lossy(&mask_all(&pb, b"x CANARY_shared_patterns_2 y")), "x [masked by nkmc] y");
        assert_eq!(String::from_utf8_lossy(&mask_all(&pa, b"CANARY_shared_patterns_2")), "CANARY_shared_patterns_2");
        assert!(shared_patterns(None).is_none() && shared_patterns(Some(&Secret::new(String::new()))).is_none());
    }

    #[test]
    fn a_basic_password_is_masked_on_its_own() {
        let key = Secret::new("user:CANARY_password_42".into());
        let out = mask_text(b"bad password CANARY_password_42 for user:CANARY_password_42", Some(&key));
        assert!(!out.contains("CANARY"), "{out}");
    }
}
