//! The HTTP/1.1 client of upstream calls: hyper's bare connection API with a small pool of
//! its own, each connection driven in the task of the request that uses it.
//!
//! A pooled client (hyper-util's, under reqwest) runs every connection in a task of its
//! own: the request goes to that task through a channel and the answer and every body chunk
//! come back through others, each a task wake-up, often on the other worker thread. Here
//! the request's own task polls the connection while it waits for the answer and while it
//! reads the body ([`DrivenBody`]); a connection whose body was read to its end goes back
//! to the pool, one dropped part way is closed.
//!
//! What reqwest gave and this keeps: every name resolved through the SSRF guard
//! ([`crate::ssrf::resolve`]; the address checked is the address connected to; a metadata
//! address is never reached, even as a literal), the connect deadline (resolution, TCP and
//! TLS) and the whole-request deadline (until the last byte of the body), redirects followed
//! only within the first URL's origin (at most 4), HTTPS with rustls and the platform's
//! verifier, `TCP_NODELAY`, no proxy, HTTP/1.1 only, no decompression.
//!
//! [`Client::for_peers`] is the same client with the rules of calls to peer gateways and
//! the coordinator ([`crate::federation::client`]): their URLs are the owner's explicit
//! choice, so names and addresses are reached as given (no SSRF guard), and a redirect is
//! never followed (it is the answer, which the peer client refuses).

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION, USER_AGENT};
use hyper::http::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use url::Url;

use crate::ssrf::{AddrClass, PrivateHosts};

/// How long a connection may wait in the pool before it is closed (reqwest's default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Idle connections kept per origin.
const IDLE_PER_ORIGIN: usize = 32;

/// Redirects followed at most (reqwest's policy in upstream.rs stopped at the fifth URL).
const MAX_REDIRECTS: usize = 4;

/// The `User-Agent` of every upstream call.
const AGENT: &str = concat!("nkmc-gatewayd/", env!("CARGO_PKG_VERSION"));

/// The `User-Agent` of every peer call (as the peer client had it under reqwest).
const PEER_AGENT: &str = concat!("nkmc-gatewayd/", env!("CARGO_PKG_VERSION"), " federation");

/// Where a client may connect.
enum Reach {
    /// Names through the SSRF guard with these private hosts; no metadata address (upstreams).
    Guarded(PrivateHosts),
    /// Every name and address as given: the owner chose the URL (peers, the coordinator).
    AsGiven,
}

/// Why a call failed, before [`super::UpstreamError`] names the service.
#[derive(Debug)]
pub enum Failure {
    /// The whole-request deadline passed.
    Timeout,
    /// The connect deadline passed, or no address could be connected to.
    Connect(String),
    /// The SSRF guard refused the destination (the message starts with `ssrf guard:`).
    Refused(String),
    /// The exchange failed after connecting, or the request could not be sent.
    Transport(String),
}

/// A scheme, host and port: what a pooled connection may serve.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Origin {
    https: bool,
    host: String,
    port: u16,
}

impl Origin {
    fn of(url: &Url) -> Result<Origin, Failure> {
        let https = match url.scheme() {
            "http" => false,
            "https" => true,
            other => return Err(Failure::Transport(format!("the scheme {other} is not http or https"))),
        };
        let host = url.host_str().ok_or_else(|| Failure::Transport("the URL has no host".into()))?;
        let port = url.port_or_known_default().unwrap_or(if https { 443 } else { 80 });
        Ok(Origin { https, host: host.to_owned(), port })
    }
}

/// A TCP stream, or TLS over one.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One HTTP/1.1 connection: the handle requests are sent on and the connection state that
/// must be polled for anything to move.
struct Conn {
    send: http1::SendRequest<Full<Bytes>>,
    drive: http1::Connection<TokioIo<Stream>, Full<Bytes>>,
    idle_since: Instant,
}

impl Conn {
    /// Whether the connection can take a request now: it is driven once (a close or an
    /// error the peer sent while it was idle shows then) and asked whether it is ready.
    async fn usable(&mut self) -> bool {
        poll_fn(|cx| {
            if Pin::new(&mut self.drive).poll(cx).is_ready() {
                return Poll::Ready(false);
            }
            Poll::Ready(matches!(self.send.poll_ready(cx), Poll::Ready(Ok(()))))
        })
        .await
    }
}

/// Idle connections by origin, oldest first, and when all were last swept.
struct Idle {
    by_origin: HashMap<Origin, Vec<Conn>>,
    swept: Instant,
}

/// The pool and what connecting needs.
struct Inner {
    idle: Mutex<Idle>,
    reach: Reach,
    /// Whether same-origin redirects are followed (upstreams) or are the answer (peers).
    follow_redirects: bool,
    agent: &'static str,
    connect_timeout: Duration,
    tls: OnceLock<Result<tokio_rustls::TlsConnector, String>>,
}

impl Inner {
    /// Pools `conn`; when `origin` already has [`IDLE_PER_ORIGIN`] idle, the oldest is closed.
    /// Connections idle past [`IDLE_TIMEOUT`] are closed here and in [`Inner::take`], and
    /// every origin's at most once per [`IDLE_TIMEOUT`], so none lingers for an origin no
    /// longer called.
    fn put(&self, origin: Origin, mut conn: Conn) {
        let now = Instant::now();
        conn.idle_since = now;
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(idle.swept) >= IDLE_TIMEOUT {
            idle.swept = now;
            idle.by_origin.retain(|_, conns| {
                conns.retain(|c| now.duration_since(c.idle_since) < IDLE_TIMEOUT);
                !conns.is_empty()
            });
        }
        let conns = idle.by_origin.entry(origin).or_default();
        conns.retain(|c| now.duration_since(c.idle_since) < IDLE_TIMEOUT);
        if conns.len() >= IDLE_PER_ORIGIN {
            conns.remove(0);
        }
        conns.push(conn);
    }

    /// The most recently used idle connection to `origin` that is still young enough.
    fn take(&self, origin: &Origin) -> Option<Conn> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let conns = idle.by_origin.get_mut(origin)?;
        conns.retain(|c| now.duration_since(c.idle_since) < IDLE_TIMEOUT);
        conns.pop()
    }
}

/// The upstream client (cheap to clone: the pool is shared).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("upstream::Client").field("connect_timeout", &self.inner.connect_timeout).finish()
    }
}

/// A request to send: method, URL, headers (the client adds `Host`, `User-Agent`,
/// `Accept` and the body's length) and body.
pub struct Outgoing<'a> {
    /// The method.
    pub method: Method,
    /// The URL, with the query.
    pub url: &'a Url,
    /// The caller's headers (credential, content type, validators).
    pub headers: &'a HeaderMap,
    /// The body, if any.
    pub body: Option<Bytes>,
}

/// Shows neither the query (a key may ride in it) nor any header value (the credential).
impl std::fmt::Debug for Outgoing<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut url = self.url.clone();
        url.set_query(None);
        f.debug_struct("Outgoing")
            .field("method", &self.method)
            .field("url", &url.as_str())
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("body_bytes", &self.body.as_ref().map(Bytes::len))
            .finish()
    }
}

impl Client {
    /// A client whose names are resolved through the SSRF guard with `private_hosts`.
    pub fn new(private_hosts: PrivateHosts, connect_timeout: Duration) -> Self {
        Self::with(Reach::Guarded(private_hosts), true, AGENT, connect_timeout)
    }

    /// A client for peer gateways and the coordinator: every URL reached as given (loopback
    /// and private addresses included, no SSRF guard: the owner chose it), redirects never
    /// followed (a 3xx is the answer), `User-Agent: nkmc-gatewayd/V federation`.
    pub fn for_peers(connect_timeout: Duration) -> Self {
        Self::with(Reach::AsGiven, false, PEER_AGENT, connect_timeout)
    }

    fn with(reach: Reach, follow_redirects: bool, agent: &'static str, connect_timeout: Duration) -> Self {
        Client {
            inner: Arc::new(Inner {
                idle: Mutex::new(Idle { by_origin: HashMap::new(), swept: Instant::now() }),
                reach,
                follow_redirects,
                agent,
                connect_timeout,
                tls: OnceLock::new(),
            }),
        }
    }

    /// Sends `req`, following same-origin redirects, within `timeout` (which also bounds
    /// reading the body). A redirect to another origin, or past the limit, is the answer.
    pub async fn send(&self, req: Outgoing<'_>, timeout: Duration) -> Result<Response<DrivenBody>, Failure> {
        let mut deadline = Box::pin(tokio::time::sleep(timeout));
        let exchange = self.follow(req);
        tokio::select! {
            biased;
            resp = exchange => resp.map(|resp| resp.map(|body| body.with_deadline(deadline))),
            () = &mut deadline => Err(Failure::Timeout),
        }
    }

    async fn follow(&self, req: Outgoing<'_>) -> Result<Response<DrivenBody>, Failure> {
        let Outgoing { mut method, url, headers, mut body } = req;
        let mut url = std::borrow::Cow::Borrowed(url);
        let mut headers = std::borrow::Cow::Borrowed(headers);
        let mut followed = 0;
        loop {
            let resp = self.exchange(&method, &url, &headers, body.clone()).await?;
            let status = resp.status();
            if !status.is_redirection() || followed >= MAX_REDIRECTS || !self.inner.follow_redirects {
                return Ok(resp);
            }
            let Some(next) = resp
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| url.join(l).ok())
                .filter(|next| next.origin() == url.origin())
            else {
                return Ok(resp);
            };
            match status {
                StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND | StatusCode::SEE_OTHER => {
                    if method != Method::GET && method != Method::HEAD {
                        method = Method::GET;
                        body = None;
                        let h = headers.to_mut();
                        h.remove(CONTENT_TYPE);
                        h.remove(CONTENT_LENGTH);
                    }
                }
                StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT => {}
                _ => return Ok(resp),
            }
            tracing::debug!(status = status.as_u16(), "upstream: following a same-origin redirect");
            drop(resp);
            url = std::borrow::Cow::Owned(next);
            followed += 1;
        }
    }

    /// One request and its answer's head, on a pooled connection or a new one. A pooled
    /// connection that turns out closed before the request went out (or, for a method that
    /// may be repeated, before any answer came) is dropped and the request sent on a new one.
    async fn exchange(
        &self,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        body: Option<Bytes>,
    ) -> Result<Response<DrivenBody>, Failure> {
        let origin = Origin::of(url)?;
        let target = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let host = match url.port() {
            Some(port) => format!("{}:{port}", origin.host),
            None => origin.host.clone(),
        };
        let host =
            HeaderValue::from_str(&host).map_err(|_| Failure::Transport("the host is not a header value".into()))?;
        let make = || {
            let mut req = Request::builder()
                .method(method.clone())
                .uri(target.as_str())
                .body(Full::new(body.clone().unwrap_or_default()))
                .map_err(|e| Failure::Transport(format!("the request cannot be built: {e}")))?;
            let h = req.headers_mut();
            h.reserve(headers.len() + 3);
            h.insert(HOST, host.clone());
            h.insert(USER_AGENT, HeaderValue::from_static(self.inner.agent));
            h.insert(ACCEPT, HeaderValue::from_static("*/*"));
            for (name, value) in headers {
                h.append(name, value.clone());
            }
            Ok::<_, Failure>(req)
        };
        let repeatable = matches!(*method, Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS);
        // A pooled connection found closed before the request went out is skipped; one closed
        // before any answer came is retried once, on a new connection, and only for a method
        // that may be repeated (the upstream may have carried the first one out).
        while let Some(mut conn) = self.inner.take(&origin) {
            if !conn.usable().await {
                continue;
            }
            match self.roundtrip(conn, make()?, &origin).await {
                Ok(resp) => return Ok(resp),
                Err(e) if e.is_canceled() => {
                    tracing::debug!(error = %e, "upstream: a pooled connection was closed; trying another");
                }
                Err(e) if repeatable && e.is_incomplete_message() => {
                    tracing::debug!(error = %e, "upstream: a pooled connection closed unanswered; once more, on a new one");
                    break;
                }
                Err(e) => return Err(Failure::Transport(chain(&e))),
            }
        }
        let conn = self.connect(&origin).await?;
        self.roundtrip(conn, make()?, &origin).await.map_err(|e| Failure::Transport(chain(&e)))
    }

    /// Sends `req` on `conn`, driving the connection until the answer's head is in.
    async fn roundtrip(
        &self,
        conn: Conn,
        req: Request<Full<Bytes>>,
        origin: &Origin,
    ) -> Result<Response<DrivenBody>, hyper::Error> {
        let Conn { mut send, drive, idle_since } = conn;
        let mut drive = Some(drive);
        let mut answer = std::pin::pin!(send.send_request(req));
        let head = poll_fn(|cx| {
            let driven = match drive.as_mut() {
                Some(d) => Pin::new(d).poll(cx),
                None => Poll::Pending,
            };
            if let Poll::Ready(r) = answer.as_mut().poll(cx) {
                return Poll::Ready(r.map(|resp| (resp, driven.is_ready())));
            }
            match driven {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    // The connection ended without an answer: dropping it answers the
                    // request with hyper's reason.
                    drive = None;
                    match answer.as_mut().poll(cx) {
                        Poll::Ready(r) => Poll::Ready(r.map(|resp| (resp, true))),
                        Poll::Pending => Poll::Pending,
                    }
                }
            }
        })
        .await;
        let (resp, closed) = head?;
        let conn = match drive {
            Some(drive) if !closed => Some(Conn { send, drive, idle_since }),
            _ => None,
        };
        Ok(resp.map(|body| DrivenBody { body, conn, pool: self.inner.clone(), origin: origin.clone(), deadline: None }))
    }

    /// A new connection to `origin`, within the connect deadline: the SSRF guard's
    /// addresses tried in turn, then TLS for https, then the HTTP/1.1 handshake.
    async fn connect(&self, origin: &Origin) -> Result<Conn, Failure> {
        let inner = &self.inner;
        let connecting = async {
            let addrs = self.addresses(origin).await?;
            // Each address gets its share of the connect deadline, so one that drops packets
            // (an IPv6 route that goes nowhere) leaves time for the next.
            let share = inner.connect_timeout / u32::try_from(addrs.len().max(1)).unwrap_or(u32::MAX);
            let mut last = None;
            let mut tcp = None;
            for addr in addrs {
                match tokio::time::timeout(share, TcpStream::connect(addr)).await {
                    Ok(Ok(s)) => {
                        tcp = Some(s);
                        break;
                    }
                    Ok(Err(e)) => last = Some(e.to_string()),
                    Err(_) => last = Some(format!("{addr}: no answer within {} ms", share.as_millis())),
                }
            }
            let tcp =
                tcp.ok_or_else(|| Failure::Connect(last.unwrap_or_else(|| "no address to connect to".to_owned())))?;
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "upstream: cannot set TCP_NODELAY");
            }
            let stream = if origin.https {
                let tls = inner.tls.get_or_init(tls_connector).as_ref().map_err(|e| Failure::Connect(e.clone()))?;
                let name = server_name(&origin.host)?;
                let s = tls.connect(name, tcp).await.map_err(|e| Failure::Connect(format!("TLS: {e}")))?;
                Stream::Tls(Box::new(s))
            } else {
                Stream::Plain(tcp)
            };
            let (send, drive) =
                http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(|e| Failure::Connect(chain(&e)))?;
            Ok(Conn { send, drive, idle_since: Instant::now() })
        };
        match tokio::time::timeout(inner.connect_timeout, connecting).await {
            Ok(conn) => conn,
            Err(_) => Err(Failure::Connect(format!(
                "no connection within {} ms (upstream.connect_timeout_ms)",
                inner.connect_timeout.as_millis()
            ))),
        }
    }

    /// Where `origin` may be reached: an address literal as it is (for upstreams never a
    /// metadata one), a name through the SSRF guard (for peers, the system's resolver).
    async fn addresses(&self, origin: &Origin) -> Result<Vec<SocketAddr>, Failure> {
        let literal = origin.host.trim_start_matches('[').trim_end_matches(']');
        let private_hosts = match &self.inner.reach {
            Reach::Guarded(private_hosts) => private_hosts,
            Reach::AsGiven => {
                if let Ok(ip) = literal.parse::<IpAddr>() {
                    return Ok(vec![SocketAddr::new(ip, origin.port)]);
                }
                let found = tokio::net::lookup_host((origin.host.as_str(), origin.port))
                    .await
                    .map_err(|e| Failure::Connect(format!("dns error: {e}")))?;
                return Ok(found.collect());
            }
        };
        if let Ok(ip) = literal.parse::<IpAddr>() {
            if crate::ssrf::classify(ip) == AddrClass::Metadata {
                return Err(Failure::Refused("ssrf guard: cloud metadata addresses are never reached".into()));
            }
            return Ok(vec![SocketAddr::new(ip, origin.port)]);
        }
        let found = crate::ssrf::resolve(private_hosts, &origin.host).await.map_err(|e| match e {
            crate::ssrf::ResolveError::Refused(m) => Failure::Refused(m),
            crate::ssrf::ResolveError::Lookup(e) => Failure::Connect(format!("dns error: {e}")),
        })?;
        Ok(found.into_iter().map(|a| SocketAddr::new(a.ip(), origin.port)).collect())
    }
}

/// rustls with the platform's verifier (as reqwest had it), HTTP/1.1 by ALPN: the trust
/// store every outbound client shares ([`super::tls`]).
fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    let config = super::tls::client_config()
        .ok_or_else(|| "TLS: the crypto provider cannot make a TLS 1.2/1.3 configuration".to_owned())?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

fn server_name(host: &str) -> Result<rustls::pki_types::ServerName<'static>, Failure> {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok(rustls::pki_types::ServerName::IpAddress(ip.into()));
    }
    rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| Failure::Connect(format!("TLS: {host} is not a server name: {e}")))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// An answer's body that drives its connection while it is read, within the request's
/// deadline; read to its end, the connection goes back to the pool.
pub struct DrivenBody {
    body: Incoming,
    /// The connection, while it can still serve another request.
    conn: Option<Conn>,
    pool: Arc<Inner>,
    origin: Origin,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl std::fmt::Debug for DrivenBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrivenBody").field("pooled", &self.conn.is_some()).finish()
    }
}

/// Why reading a body failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The whole-request deadline passed while the body arrived.
    #[error("upstream: the body did not arrive within the deadline (upstream.timeout_ms)")]
    Timeout,
    /// The connection failed.
    #[error("upstream: reading the body: {0}")]
    Read(String),
}

impl DrivenBody {
    fn with_deadline(mut self, deadline: Pin<Box<Sleep>>) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The connection is done with this answer: back to the pool.
    fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.put(self.origin.clone(), conn);
        }
    }
}

impl Body for DrivenBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(conn) = this.conn.as_mut() {
            if Pin::new(&mut conn.drive).poll(cx).is_ready() {
                // Closed or failed: what it read is in the body; an error too.
                this.conn = None;
            }
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if this.body.is_end_stream() {
                    this.release();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.release();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.conn = None;
                Poll::Ready(Some(Err(BodyError::Read(chain(&e)))))
            }
            Poll::Pending => {
                if let Some(deadline) = this.deadline.as_mut() {
                    if deadline.as_mut().poll(cx).is_ready() {
                        this.conn = None;
                        return Poll::Ready(Some(Err(BodyError::Timeout)));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A loopback server answering each request with `answer(n, request)` (n counts
    /// requests over all connections), closing the connection after it when told; counts
    /// the connections it accepted.
    async fn server(
        answer: impl Fn(usize, &str) -> (String, bool) + Send + Sync + 'static,
    ) -> (String, Arc<AtomicUsize>) {
        let served = crate::testing::raw_server(move |n, request| {
            let (text, close) = answer(n, request);
            (text.into_bytes(), close)
        })
        .await;
        (format!("http://{}", served.addr), served.accepted)
    }

    fn ok(body: &str) -> String {
        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len())
    }

    fn client() -> Client {
        Client::new(PrivateHosts::default(), Duration::from_secs(2))
    }

    async fn get(c: &Client, url: &str, method: Method, body: Option<&str>) -> Result<(u16, String), Failure> {
        let url = Url::parse(url).unwrap();
        let headers = HeaderMap::new();
        let out = Outgoing { method, url: &url, headers: &headers, body: body.map(|b| Bytes::from(b.to_owned())) };
        let resp = c.send(out, Duration::from_secs(2)).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| Failure::Transport(e.to_string()))?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    #[tokio::test]
    async fn a_connection_read_to_its_end_is_reused() {
        let (url, accepted) = server(|n, head| {
            assert!(head.contains("host: 127.0.0.1:"), "{head}");
            assert!(head.contains("user-agent: nkmc-gatewayd/"), "{head}");
            (ok(&format!("answer {n}")), false)
        })
        .await;
        let c = client();
        for n in 0..3 {
            assert_eq!(
                get(&c, &format!("{url}/x?q=1"), Method::GET, None).await.unwrap(),
                (200, format!("answer {n}"))
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for three calls");
    }

    #[tokio::test]
    async fn a_pooled_connection_the_server_closed_is_replaced() {
        // The server closes every connection after its answer, without saying so.
        let (url, accepted) = server(|n, _| (ok(&format!("answer {n}")), true)).await;
        let c = client();
        assert_eq!(get(&c, &url, Method::GET, None).await.unwrap().1, "answer 0");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(get(&c, &url, Method::GET, None).await.unwrap().1, "answer 1");
        assert_eq!(get(&c, &url, Method::POST, Some("{}")).await.unwrap().1, "answer 2");
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_request_never_debug_prints_its_key() {
        let url = Url::parse("http://127.0.0.1:1/v1/x?api_key=CANARY-query").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", HeaderValue::from_static("CANARY-header"));
        let out = Outgoing { method: Method::GET, url: &url, headers: &headers, body: None };
        let shown = format!("{out:?}");
        assert!(!shown.contains("CANARY"), "{shown}");
        assert!(shown.contains("/v1/x") && shown.contains("x-api-key"), "{shown}");
    }

    #[tokio::test]
    async fn a_request_closed_unanswered_is_sent_at_most_twice() {
        // Three calls at once leave three pooled connections; from then on the server reads
        // each request and closes without answering.
        let seen = Arc::new(AtomicUsize::new(0));
        let counted = seen.clone();
        let (url, accepted) = server(move |n, _| {
            counted.fetch_add(1, Ordering::SeqCst);
            if n < 3 {
                (ok("fine"), false)
            } else {
                (String::new(), true)
            }
        })
        .await;
        let c = client();
        let (a, b, d) = tokio::join!(
            get(&c, &url, Method::GET, None),
            get(&c, &url, Method::GET, None),
            get(&c, &url, Method::GET, None)
        );
        assert!(a.is_ok() && b.is_ok() && d.is_ok());
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        let put = get(&c, &url, Method::PUT, Some("{}")).await;
        assert!(matches!(put, Err(Failure::Transport(_))), "{put:?}");
        // One pooled connection and one new: the PUT reached the server twice, not once per
        // pooled connection and once more.
        assert_eq!(seen.load(Ordering::SeqCst), 3 + 2);
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
        // A POST is never sent again once it went out.
        let post = get(&c, &url, Method::POST, Some("{}")).await;
        assert!(matches!(post, Err(Failure::Transport(_))), "{post:?}");
        assert_eq!(seen.load(Ordering::SeqCst), 3 + 2 + 1);
    }

    #[tokio::test]
    async fn redirects_are_followed_within_the_origin_only() {
        let (other, _) = server(|_, _| (ok("elsewhere"), false)).await;
        let loops = Arc::new(AtomicUsize::new(0));
        let looped = loops.clone();
        let (url, _) = server(move |_, head| {
            let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
            let method = head.split_whitespace().next().unwrap_or("").to_owned();
            let redirect = |status: &str, to: &str| {
                (format!("HTTP/1.1 {status}\r\nlocation: {to}\r\ncontent-length: 0\r\n\r\n"), false)
            };
            match path.as_str() {
                "/same" => redirect("302 Found", "/target"),
                "/keep" => redirect("307 Temporary Redirect", "/target"),
                "/away" => redirect("302 Found", &format!("{other}/x")),
                "/loop" => {
                    looped.fetch_add(1, Ordering::SeqCst);
                    redirect("302 Found", "/loop")
                }
                _ => {
                    let body = head.split("\r\n\r\n").nth(1).unwrap_or("");
                    (ok(&format!("{method} {path} {body}")), false)
                }
            }
        })
        .await;
        let c = client();
        assert_eq!(get(&c, &format!("{url}/same"), Method::GET, None).await.unwrap(), (200, "GET /target ".into()));
        assert_eq!(get(&c, &format!("{url}/same"), Method::POST, Some("{}")).await.unwrap().1, "GET /target ");
        assert_eq!(
            get(&c, &format!("{url}/keep"), Method::POST, Some("{\"a\":1}")).await.unwrap().1,
            "POST /target {\"a\":1}"
        );
        assert_eq!(
            get(&c, &format!("{url}/away"), Method::GET, None).await.unwrap().0,
            302,
            "another origin: not followed"
        );
        assert_eq!(get(&c, &format!("{url}/loop"), Method::GET, None).await.unwrap().0, 302, "stops after the limit");
        assert_eq!(loops.load(Ordering::SeqCst), 1 + MAX_REDIRECTS, "the request, then at most 4 redirects");
    }

    #[tokio::test]
    async fn the_deadline_covers_the_body() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/slow", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc").await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let c = client();
        let url = Url::parse(&url).unwrap();
        let headers = HeaderMap::new();
        let out = Outgoing { method: Method::GET, url: &url, headers: &headers, body: None };
        let started = Instant::now();
        let resp = c.send(out, Duration::from_millis(300)).await.unwrap();
        let err = resp.into_body().collect().await.unwrap_err();
        assert!(matches!(err, BodyError::Timeout), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn https_speaks_tls_before_any_http() {
        assert!(tls_connector().is_ok(), "the platform verifier is available");
        // A server that answers plain HTTP to the ClientHello: the handshake fails, and
        // nothing is taken as an answer.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap_or(0);
            assert!(n > 0 && buf[0] == 0x16, "a TLS ClientHello comes first");
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nno").await;
        });
        match get(&client(), &format!("https://127.0.0.1:{port}/"), Method::GET, None).await {
            Err(Failure::Connect(m)) => assert!(m.starts_with("TLS:"), "{m}"),
            other => panic!("not refused: {:?}", other.map(|r| r.0)),
        }
    }

    #[tokio::test]
    async fn names_are_resolved_through_the_ssrf_guard() {
        let (url, accepted) = server(|_, _| (ok("reached"), false)).await;
        let port = Url::parse(&url).unwrap().port().unwrap();
        let c = client();
        match get(&c, &format!("http://localhost:{port}/"), Method::GET, None).await {
            Err(Failure::Refused(m)) => assert!(m.starts_with("ssrf guard:"), "{m}"),
            other => panic!("not refused: {:?}", other.map(|r| r.0)),
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 0);
        let allowed = PrivateHosts::default();
        allowed.write().unwrap().insert("localhost".into());
        let c = Client::new(allowed, Duration::from_secs(2));
        assert_eq!(get(&c, &format!("http://localhost:{port}/"), Method::GET, None).await.unwrap().1, "reached");
        match get(&c, "http://169.254.169.254/latest", Method::GET, None).await {
            Err(Failure::Refused(m)) => assert!(m.contains("metadata"), "{m}"),
            other => panic!("not refused: {:?}", other.map(|r| r.0)),
        }
    }
}
