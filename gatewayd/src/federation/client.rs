//! The borrower's side of the wire: one signed request to a peer, and the check of its
//! signed answer. Peer URLs are the owner's own choice (`nkmc peers add --url`), so they are
//! called as given (loopback included), without redirects, with the upstream timeouts.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, CONTENT_TYPE};

use super::identity::Identity;
use super::sign::{self, header, Envelope};

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerCallError {
    /// The peer could not be reached or did not answer in time.
    #[error("federation: peer {peer} is unreachable: {message}")]
    Unreachable {
        /// The peer's id.
        peer: String,
        /// Why.
        message: String,
    },
    /// The answer was not signed by the peer, or not for this request.
    #[error("federation: peer {peer}'s answer failed verification ({reason}); it was discarded")]
    BadAnswer {
        /// The peer's id.
        peer: String,
        /// Why.
        reason: String,
    },
}

/// A peer as the borrower calls it.
#[derive(Clone)]
pub struct PeerTarget<'a> {
    /// Its id (the recipient).
    pub id: &'a str,
    /// Its base URL (`http://127.0.0.1:9091`).
    pub url: &'a str,
    /// The pair's shared secret.
    pub secret: &'a [u8],
}

impl std::fmt::Debug for PeerTarget<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTarget")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A verified answer.
#[derive(Debug)]
pub struct PeerAnswer {
    /// The HTTP status.
    pub status: u16,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// A client for peer calls.
#[derive(Debug, Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    max_body: u64,
}

impl PeerClient {
    /// A client with these timeouts and answer cap.
    pub fn new(timeout: Duration, connect_timeout: Duration, max_body: u64) -> Result<Self, reqwest::Error> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("nkmc-gatewayd/", env!("CARGO_PKG_VERSION"), " federation"))
            .build()?;
        Ok(PeerClient { http, max_body })
    }

    /// The HTTP client itself (coordinator calls: unsigned, public).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// POSTs `body` (JSON) to `route` of `peer`, signed as `me`; returns the answer once its
    /// signature, recipient, time and request nonce check out.
    pub async fn post(
        &self,
        me: &Identity,
        peer: &PeerTarget<'_>,
        route: &str,
        body: Vec<u8>,
        extra: &[(&str, String)],
    ) -> Result<PeerAnswer, PeerCallError> {
        let nonce = sign::nonce();
        let timestamp = sign::unix(SystemTime::now());
        let envelope = Envelope {
            method: "POST",
            path: route,
            body: &body,
            timestamp,
            nonce: &nonce,
            sender: &me.id,
            recipient: peer.id,
        };
        let signature = envelope.sign(peer.secret);
        let url = format!("{}{route}", peer.url.trim_end_matches('/'));
        let unreachable = |e: reqwest::Error| PeerCallError::Unreachable {
            peer: peer.id.to_owned(),
            message: e.without_url().to_string(),
        };
        let mut req = self
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .header(header::SENDER, &me.id)
            .header(header::RECIPIENT, peer.id)
            .header(header::TIMESTAMP, timestamp.to_string())
            .header(header::NONCE, &nonce)
            .header(header::SIGNATURE, signature);
        for (k, v) in extra {
            req = req.header(*k, v);
        }
        let resp = req.body(body).send().await.map_err(unreachable)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        if resp.content_length().is_some_and(|l| l > self.max_body) {
            return Err(PeerCallError::BadAnswer {
                peer: peer.id.to_owned(),
                reason: "answer over the size cap".into(),
            });
        }
        let body = resp.bytes().await.map_err(unreachable)?;
        if body.len() as u64 > self.max_body {
            return Err(PeerCallError::BadAnswer {
                peer: peer.id.to_owned(),
                reason: "answer over the size cap".into(),
            });
        }
        verify_answer(me, peer, &nonce, status, &headers, &body)?;
        Ok(PeerAnswer { status, headers, body })
    }
}

fn verify_answer(
    me: &Identity,
    peer: &PeerTarget<'_>,
    nonce: &str,
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), PeerCallError> {
    let bad = |reason: &str| PeerCallError::BadAnswer { peer: peer.id.to_owned(), reason: reason.to_owned() };
    let Some(sign::SignedHeaders { sender, recipient, timestamp: ts, nonce: their_nonce, signature: sig }) =
        sign::SignedHeaders::from(headers)
    else {
        return Err(bad("unsigned"));
    };
    if sender != peer.id || recipient != me.id || their_nonce != nonce {
        return Err(bad("not the answer to this request"));
    }
    if sign::unix(SystemTime::now()).abs_diff(ts) > sign::MAX_SKEW.as_secs() {
        return Err(bad("stale"));
    }
    let status = status.to_string();
    let envelope =
        Envelope { method: "RESPONSE", path: &status, body, timestamp: ts, nonce, sender: peer.id, recipient: &me.id };
    envelope.verify(peer.secret, sig).map_err(|e| bad(&e.to_string()))
}

/// The headers a lender adds to sign its answer to the request with `nonce` from `borrower`.
pub fn answer_headers(
    me: &Identity,
    borrower: &str,
    secret: &[u8],
    nonce: &str,
    status: u16,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let timestamp = sign::unix(SystemTime::now());
    let status_text = status.to_string();
    let envelope = Envelope {
        method: "RESPONSE",
        path: &status_text,
        body,
        timestamp,
        nonce,
        sender: &me.id,
        recipient: borrower,
    };
    vec![
        (header::SENDER, me.id.clone()),
        (header::RECIPIENT, borrower.to_owned()),
        (header::TIMESTAMP, timestamp.to_string()),
        (header::NONCE, nonce.to_owned()),
        (header::SIGNATURE, envelope.sign(secret)),
    ]
}
