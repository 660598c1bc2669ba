//! The borrower's side of the wire: one signed request to a peer, and the check of its
//! signed answer. Peer URLs are the owner's own choice (`nkmc peers add --url`), so they are
//! called as given (loopback included), without redirects, with the upstream timeouts.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, CONTENT_TYPE};

use super::frames;
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
        /// Whether the request may have reached it (it was not a failure to connect).
        sent: bool,
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
    /// The body (empty when it is [`PeerAnswer::framed`]).
    pub body: Bytes,
    /// A body streamed in signed frames (see [`frames`]): its head, and its data verified
    /// frame by frame as it arrives.
    pub framed: Option<Framed>,
}

/// A framed body: the head frame, read before the answer is returned, and the data.
pub struct Framed {
    /// The upstream's status and content type, as the lender signed them.
    pub head: frames::Head,
    /// The data; an error when a frame fails verification, the lender reports the body
    /// broke off, or the stream ends before its end frame.
    pub body: futures_util::stream::BoxStream<'static, Result<Bytes, std::io::Error>>,
}

impl std::fmt::Debug for Framed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Framed").field("head", &self.head).finish_non_exhaustive()
    }
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
        let mut builder = reqwest::Client::builder();
        if let Some(tls) = crate::upstream::tls::client_config() {
            builder = builder.tls_backend_preconfigured(tls);
        }
        let http = builder
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
            sent: !e.is_connect(),
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
        if headers.get(frames::HEADER.0).is_some_and(|v| v.as_bytes() == frames::HEADER.1.as_bytes()) {
            verify_answer(me, peer, &nonce, status, &headers, frames::MARKER)?;
            let binding = frames::Binding::new(peer.secret, &nonce, peer.id, &me.id);
            let framed = read_framed(peer.id, binding, resp, self.max_body).await?;
            return Ok(PeerAnswer { status, headers, body: Bytes::new(), framed: Some(framed) });
        }
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
        Ok(PeerAnswer { status, headers, body, framed: None })
    }
}

/// Reads a framed answer's head, and returns it with the rest of the body as a verified
/// stream of data (at most `max_body` bytes).
async fn read_framed(
    peer: &str,
    binding: frames::Binding,
    resp: reqwest::Response,
    max_body: u64,
) -> Result<Framed, PeerCallError> {
    use futures_util::StreamExt;
    let bad = |reason: String| PeerCallError::BadAnswer { peer: peer.to_owned(), reason };
    let mut decoder = frames::Decoder::new(binding);
    let mut chunks = resp.bytes_stream();
    let head = loop {
        match decoder.next_frame().map_err(|e| bad(e.to_string()))? {
            Some(frames::Frame::Head(h)) => break h,
            Some(_) => return Err(bad("the first frame is not the head".into())),
            None => match chunks.next().await {
                Some(Ok(b)) => decoder.push(&b),
                Some(Err(e)) => {
                    return Err(PeerCallError::Unreachable {
                        peer: peer.to_owned(),
                        message: e.without_url().to_string(),
                        sent: true,
                    })
                }
                None => return Err(bad(frames::FrameError::Truncated.to_string())),
            },
        }
    };
    let peer = peer.to_owned();
    let state = (chunks, decoder, 0u64, false);
    let body = futures_util::stream::unfold(state, move |(mut chunks, mut decoder, mut seen, done)| {
        let peer = peer.clone();
        async move {
            if done {
                return None;
            }
            let fail = |m: String| std::io::Error::other(format!("federation: peer {peer}: {m}"));
            loop {
                match decoder.next_frame() {
                    Ok(Some(frames::Frame::Data(d))) => {
                        seen += d.len() as u64;
                        if seen > max_body {
                            let e = std::io::Error::new(
                                std::io::ErrorKind::FileTooLarge,
                                format!("federation: peer {peer}'s answer is over the size cap"),
                            );
                            return Some((Err(e), (chunks, decoder, seen, true)));
                        }
                        return Some((Ok(d), (chunks, decoder, seen, false)));
                    }
                    Ok(Some(frames::Frame::End(_))) => return None,
                    Ok(Some(frames::Frame::Error(json))) => {
                        let why = serde_json::from_slice::<super::protocol::ExecRefusal>(&json)
                            .map(|r| r.message)
                            .unwrap_or_else(|_| "the body broke off".into());
                        return Some((Err(fail(why)), (chunks, decoder, seen, true)));
                    }
                    Ok(Some(frames::Frame::Head(_))) => {
                        return Some((Err(fail("a second head".into())), (chunks, decoder, seen, true)))
                    }
                    Err(e) => return Some((Err(fail(e.to_string())), (chunks, decoder, seen, true))),
                    Ok(None) => match chunks.next().await {
                        Some(Ok(b)) => decoder.push(&b),
                        Some(Err(e)) => {
                            let e = fail(format!("unreachable: {}", e.without_url()));
                            return Some((Err(e), (chunks, decoder, seen, true)));
                        }
                        None => {
                            let e = fail(frames::FrameError::Truncated.to_string());
                            return Some((Err(e), (chunks, decoder, seen, true)));
                        }
                    },
                }
            }
        }
    });
    Ok(Framed { head, body: Box::pin(body) })
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
