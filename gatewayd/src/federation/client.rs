//! The borrower's side of the wire: one signed request to a peer, and the check of its
//! signed answer. Peer URLs are the owner's own choice (`nkmc peers add --url`), so they are
//! called as given (loopback included), never redirected (a redirect is refused), with the
//! upstream timeouts, on gatewayd's own HTTP/1.1 client ([`crate::upstream::client`]): a
//! pooled keep-alive connection per peer, driven in the calling request's task.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::http::Method;

use crate::upstream::client::{self as wire, BodyError, DrivenBody, Failure};

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
    /// The peer (or whatever answers at its URL) answered with a redirect, which a peer call
    /// never follows.
    #[error(
        "federation: peer {peer} answered with a redirect (HTTP {status}), which a peer call never follows: \
         check its URL (`nkmc peers add --url`)"
    )]
    Redirected {
        /// The peer's id.
        peer: String,
        /// The 3xx status.
        status: u16,
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
    http: wire::Client,
    timeout: Duration,
    max_body: u64,
}

/// Why an unsigned call (to the coordinator, to a payment facilitator) failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PlainCallError(String);

impl PeerClient {
    /// A client with these timeouts (`timeout` bounds a whole call, its body included) and
    /// answer cap.
    pub fn new(timeout: Duration, connect_timeout: Duration, max_body: u64) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        PeerClient { http: wire::Client::for_peers(connect_timeout), timeout, max_body }
    }

    /// An unsigned call to a URL the owner configured (the coordinator, a payment
    /// facilitator): `body`, if any, sent as JSON; the answer's status and whole body (at
    /// most `max_answer` bytes). A redirect is not followed: it is the answer.
    pub async fn plain(
        &self,
        method: Method,
        url: &url::Url,
        body: Option<Vec<u8>>,
        max_answer: u64,
    ) -> Result<(u16, Bytes), PlainCallError> {
        let mut headers = HeaderMap::new();
        if body.is_some() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let out = wire::Outgoing { method, url, headers: &headers, body: body.map(Bytes::from) };
        let resp = self.http.send(out, self.timeout).await.map_err(|f| PlainCallError(self.failure(f)))?;
        let status = resp.status().as_u16();
        let body = capped(resp.into_body(), max_answer).await.map_err(|e| match e {
            Capped::Over => PlainCallError(format!("the answer is over {max_answer} bytes")),
            Capped::Body(e) => PlainCallError(body_failure(self.timeout, e)),
        })?;
        Ok((status, body))
    }

    /// What a failed exchange says (never with the URL).
    fn failure(&self, f: Failure) -> String {
        match f {
            Failure::Timeout => format!("no answer within {} ms (upstream.timeout_ms)", self.timeout.as_millis()),
            Failure::Connect(m) | Failure::Refused(m) | Failure::Transport(m) => m,
        }
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
        let unreachable =
            |message: String, sent: bool| PeerCallError::Unreachable { peer: peer.id.to_owned(), message, sent };
        let url = url::Url::parse(&format!("{}{route}", peer.url.trim_end_matches('/')))
            .map_err(|e| unreachable(format!("its URL is not a URL: {e}"), false))?;
        let mut headers = HeaderMap::with_capacity(6 + extra.len());
        let value = |v: &str| {
            HeaderValue::from_str(v)
                .map_err(|_| unreachable("a header of the request is not a header value".into(), false))
        };
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::SENDER, value(&me.id)?);
        headers.insert(header::RECIPIENT, value(peer.id)?);
        headers.insert(header::TIMESTAMP, value(&timestamp.to_string())?);
        headers.insert(header::NONCE, value(&nonce)?);
        headers.insert(header::SIGNATURE, value(&signature)?);
        for (k, v) in extra {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| unreachable(format!("{k} is not a header name"), false))?;
            headers.append(name, value(v)?);
        }
        let out = wire::Outgoing { method: Method::POST, url: &url, headers: &headers, body: Some(Bytes::from(body)) };
        let resp = self.http.send(out, self.timeout).await.map_err(|f| {
            let sent = matches!(f, Failure::Timeout | Failure::Transport(_));
            unreachable(self.failure(f), sent)
        })?;
        let status = resp.status();
        if status.is_redirection() {
            return Err(PeerCallError::Redirected { peer: peer.id.to_owned(), status: status.as_u16() });
        }
        let status = status.as_u16();
        let (parts, body) = resp.into_parts();
        let headers = parts.headers;
        if headers.get(frames::HEADER.0).is_some_and(|v| v.as_bytes() == frames::HEADER.1.as_bytes()) {
            verify_answer(me, peer, &nonce, status, &headers, frames::MARKER)?;
            let binding = frames::Binding::new(peer.secret, &nonce, peer.id, &me.id);
            let framed = read_framed(peer.id, binding, body, self.max_body, self.timeout).await?;
            return Ok(PeerAnswer { status, headers, body: Bytes::new(), framed: Some(framed) });
        }
        let over = || PeerCallError::BadAnswer { peer: peer.id.to_owned(), reason: "answer over the size cap".into() };
        if hyper::body::Body::size_hint(&body).exact().is_some_and(|l| l > self.max_body) {
            return Err(over());
        }
        let body = capped(body, self.max_body).await.map_err(|e| match e {
            Capped::Over => over(),
            Capped::Body(e) => unreachable(body_failure(self.timeout, e), true),
        })?;
        verify_answer(me, peer, &nonce, status, &headers, &body)?;
        Ok(PeerAnswer { status, headers, body, framed: None })
    }
}

/// Why [`capped`] stopped.
enum Capped {
    Over,
    Body(BodyError),
}

/// The whole of `body`, failing once it is over `max` bytes.
async fn capped(mut body: DrivenBody, max: u64) -> Result<Bytes, Capped> {
    let mut first: Option<Bytes> = None;
    let mut more: Vec<u8> = Vec::new();
    let mut seen: u64 = 0;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(Capped::Body)?.into_data() else { continue };
        seen += data.len() as u64;
        if seen > max {
            return Err(Capped::Over);
        }
        match &first {
            None => first = Some(data),
            Some(f) => {
                if more.is_empty() {
                    more.extend_from_slice(f);
                }
                more.extend_from_slice(&data);
            }
        }
    }
    Ok(if more.is_empty() { first.unwrap_or_default() } else { Bytes::from(more) })
}

/// What a body that failed to arrive within `timeout` says.
fn body_failure(timeout: Duration, e: BodyError) -> String {
    match e {
        BodyError::Timeout => {
            format!("the answer did not arrive whole within {} ms (upstream.timeout_ms)", timeout.as_millis())
        }
        BodyError::Read(m) => format!("the answer broke off: {m}"),
    }
}

/// Reads a framed answer's head, and returns it with the rest of the body as a verified
/// stream of data (at most `max_body` bytes).
async fn read_framed(
    peer: &str,
    binding: frames::Binding,
    body: DrivenBody,
    max_body: u64,
    timeout: Duration,
) -> Result<Framed, PeerCallError> {
    use futures_util::StreamExt;
    let bad = |reason: String| PeerCallError::BadAnswer { peer: peer.to_owned(), reason };
    let mut decoder = frames::Decoder::new(binding);
    let mut chunks = http_body_util::BodyDataStream::new(body);
    let head = loop {
        match decoder.next_frame().map_err(|e| bad(e.to_string()))? {
            Some(frames::Frame::Head(h)) => break h,
            Some(_) => return Err(bad("the first frame is not the head".into())),
            None => match chunks.next().await {
                Some(Ok(b)) => decoder.push(&b),
                Some(Err(e)) => {
                    return Err(PeerCallError::Unreachable {
                        peer: peer.to_owned(),
                        message: body_failure(timeout, e),
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
                    Ok(Some(frames::Frame::End(_))) => {
                        // What follows the end frame is the end of the HTTP body: read, it
                        // lets the connection go back to the pool.
                        let _ = tokio::time::timeout(Duration::from_millis(50), chunks.next()).await;
                        return None;
                    }
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
                            let e = fail(format!("unreachable: {}", body_failure(timeout, e)));
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    const SECRET: &[u8] = b"0f1e2d3c4b5a69788796a5b4c3d2e1f00123456789abcdef0123456789abcdef";

    /// A loopback peer, by a name, answering each request with `answer`'s bytes, closing
    /// the connection after it when told; counts connections and requests.
    async fn peer(
        answer: impl Fn(&str) -> (Vec<u8>, bool) + Send + Sync + 'static,
    ) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let served = crate::testing::raw_server(move |_, request| answer(request)).await;
        (format!("http://localhost:{}", served.addr.port()), served.accepted, served.requests)
    }

    fn me() -> Identity {
        Identity { id: "gw-a".into(), name: "A".into() }
    }

    fn client() -> PeerClient {
        PeerClient::new(Duration::from_secs(5), Duration::from_secs(2), 1 << 20)
    }

    async fn post(c: &PeerClient, url: &str) -> Result<PeerAnswer, PeerCallError> {
        let target = PeerTarget { id: "gw-b", url, secret: SECRET };
        c.post(&me(), &target, "/federation/query", b"{}".to_vec(), &[]).await
    }

    /// A signed answer to the request whose head is `head`, as gw-b.
    fn signed(head: &str, body: &str) -> Vec<u8> {
        let nonce = head.lines().find_map(|l| l.strip_prefix("x-nkmc-nonce: ")).unwrap_or_default().to_owned();
        let lender = Identity { id: "gw-b".into(), name: "B".into() };
        let mut out =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: application/json\r\n", body.len());
        for (k, v) in answer_headers(&lender, "gw-a", SECRET, &nonce, 200, body.as_bytes()) {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.push_str(body);
        out.into_bytes()
    }

    #[tokio::test]
    async fn signed_calls_share_one_kept_alive_connection_to_a_loopback_name() {
        let (url, accepted, _) = peer(|head| {
            assert!(head.starts_with("POST /federation/query HTTP/1.1"), "{head}");
            assert!(head.contains(" federation") && head.contains("x-nkmc-signature: "), "{head}");
            (signed(head, "{\"ok\":true}"), false)
        })
        .await;
        let c = client();
        for _ in 0..3 {
            let answer = post(&c, &url).await.unwrap();
            assert_eq!((answer.status, &answer.body[..]), (200, &b"{\"ok\":true}"[..]));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for three calls");
    }

    #[tokio::test]
    async fn a_redirect_is_refused_and_never_followed() {
        let (url, _, requests) = peer(|_| {
            (b"HTTP/1.1 307 Temporary Redirect\r\nlocation: /elsewhere\r\ncontent-length: 0\r\n\r\n".to_vec(), false)
        })
        .await;
        let c = client();
        match post(&c, &url).await {
            Err(e @ PeerCallError::Redirected { status: 307, .. }) => {
                assert!(e.to_string().starts_with("federation: peer gw-b answered with a redirect"), "{e}")
            }
            other => panic!("not refused: {other:?}"),
        }
        assert_eq!(requests.load(Ordering::SeqCst), 1);
        // An unsigned call takes a redirect as the answer.
        let plain = c.plain(Method::GET, &url::Url::parse(&url).unwrap(), None, 1024).await.unwrap();
        assert_eq!(plain.0, 307);
        assert_eq!(requests.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_answer_that_breaks_off_is_an_error_naming_the_peer() {
        let (url, _, _) = peer(|_| (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc".to_vec(), true)).await;
        match post(&client(), &url).await {
            Err(e @ PeerCallError::Unreachable { sent: true, .. }) => {
                let e = e.to_string();
                assert!(e.starts_with("federation: peer gw-b is unreachable: the answer broke off"), "{e}");
            }
            other => panic!("not an error: {other:?}"),
        }
    }
}
