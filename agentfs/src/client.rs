//! The client side of gatewayd's socket API: HTTP/1.1 + JSON over a Unix socket.
//!
//! Connections are kept and reused (one request at a time each); a connection that
//! gatewayd closed is replaced transparently, so a restarted gatewayd is reconnected to.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

use crate::wire::{ErrorBody, ErrorCode};

/// Idle connections kept for reuse.
const MAX_IDLE: usize = 16;

/// Why a call to gatewayd failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// gatewayd is not listening on the socket.
    #[error(
        "gateway client: cannot connect to gatewayd at {socket} ({cause}); is it running? Start it with \
         `nkmc up` or `nkmc gateway start --daemon` (or set NKMC_SOCKET / NKMC_DATA_DIR to the ones it uses)"
    )]
    Connect {
        /// The socket path.
        socket: PathBuf,
        /// The connect error (shown in the message, not chained: printed once).
        cause: std::io::Error,
    },
    /// The HTTP exchange broke off.
    #[error("gateway client: the connection to gatewayd failed: {0}")]
    Http(#[from] hyper::Error),
    /// gatewayd stopped sending an answer part way: it cuts a body that goes over
    /// `upstream.max_body_bytes`, and passes on an upstream that breaks off.
    #[error(
        "gateway client: gatewayd stopped sending the answer part way ({cause}): the upstream's body went over \
         `upstream.max_body_bytes`, or the upstream broke off; `nkmc audit tail` says which (`too_large` or \
         `upstream_failed`)"
    )]
    Cut {
        /// The broken body (shown in the message, not chained).
        cause: hyper::Error,
    },
    /// gatewayd answered with an error.
    #[error("{}", .body.message)]
    Api {
        /// The HTTP status of the answer.
        status: u16,
        /// The error body.
        body: ErrorBody,
    },
    /// gatewayd's answer was not what the API describes.
    #[error("gateway client: unexpected answer from gatewayd: {0}")]
    Decode(String),
    /// No answer within the client's timeout.
    #[error("gateway client: gatewayd did not answer within {0:?}")]
    Timeout(Duration),
}

impl ClientError {
    /// The error class, for mapping to an errno or an exit code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ClientError::Api { body, .. } => body.code,
            ClientError::Timeout(_) => ErrorCode::Timeout,
            ClientError::Cut { .. } => ErrorCode::UpstreamFailed,
            ClientError::Connect { .. } | ClientError::Http(_) | ClientError::Decode(_) => ErrorCode::Internal,
        }
    }
}

/// A whole answer from gatewayd.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The headers.
    pub headers: hyper::HeaderMap,
    /// The body.
    pub body: Bytes,
}

fn api_error(status: StatusCode, bytes: &Bytes) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => ClientError::Api { status: status.as_u16(), body },
        Err(_) => ClientError::Decode(format!(
            "status {status} with a body that is not an error: {}",
            String::from_utf8_lossy(bytes)
        )),
    }
}

impl std::fmt::Debug for GatewayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayClient")
            .field("socket", &self.socket)
            .field("timeout", &self.timeout)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A client of one gatewayd socket.
pub struct GatewayClient {
    socket: PathBuf,
    timeout: Duration,
    /// An agent token sent with every request (`Authorization: Bearer`); none acts as the owner.
    token: Option<String>,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl GatewayClient {
    /// A client for the socket at `socket`; every call gives up after `timeout`.
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        GatewayClient { socket: socket.into(), timeout, token: None, idle: Mutex::new(Vec::new()) }
    }

    /// This client acting as an agent token (or as the owner with `None`).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
        self
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect { socket: self.socket.clone(), cause: source })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // The connection ends when gatewayd closes it or the sender is dropped.
            let _ = conn.await;
        });
        Ok(sender)
    }

    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn put_idle(&self, s: SendRequest<Full<Bytes>>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(s);
        }
    }

    /// Sends one request; returns the status and the whole body.
    pub async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(Bytes, &'static str)>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        self.call_with_headers(method, path_and_query, body).await.map(|r| (r.status, r.body))
    }

    /// Sends one request; returns the status, the headers and the whole body.
    pub async fn call_with_headers(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(Bytes, &'static str)>,
    ) -> Result<Answer, ClientError> {
        match tokio::time::timeout(self.timeout, self.call_inner(method, path_and_query, body)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout(self.timeout)),
        }
    }

    /// Like [`GatewayClient::call_with_headers`], but an error status becomes [`ClientError::Api`].
    pub async fn call_ok_with_headers(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(Bytes, &'static str)>,
    ) -> Result<Answer, ClientError> {
        let answer = self.call_with_headers(method, path_and_query, body).await?;
        if answer.status.is_success() {
            return Ok(answer);
        }
        Err(api_error(answer.status, &answer.body))
    }

    async fn call_inner(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(Bytes, &'static str)>,
    ) -> Result<Answer, ClientError> {
        let (sender, resp) = self.send_head(method, path_and_query, body, &[]).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.map_err(|cause| ClientError::Cut { cause })?.to_bytes();
        self.put_idle(sender);
        Ok(Answer { status, headers, body })
    }

    /// Sends a `GET` with `extra` request headers (validators such as `If-None-Match`) and
    /// returns once the answer's head has arrived; its body is then read chunk by chunk
    /// with [`Streamed::chunk`], so a large body is never held whole. Any status is
    /// returned as it is (a `304 Not Modified` is not an error); the timeout applies to the
    /// head and to each chunk.
    pub async fn get_streamed(
        &self,
        path_and_query: &str,
        extra: &[(hyper::header::HeaderName, hyper::header::HeaderValue)],
    ) -> Result<Streamed<'_>, ClientError> {
        self.send_streamed(Method::GET, path_and_query, None, extra).await
    }

    /// Like [`GatewayClient::get_streamed`], with any method and an optional body (its bytes
    /// and content type): `POST /v1/fs/read-batch`, whose answer is a stream of frames.
    pub async fn send_streamed(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(Bytes, &'static str)>,
        extra: &[(hyper::header::HeaderName, hyper::header::HeaderValue)],
    ) -> Result<Streamed<'_>, ClientError> {
        let head = self.send_head(method, path_and_query, body, extra);
        let (sender, resp) = match tokio::time::timeout(self.timeout, head).await {
            Ok(r) => r?,
            Err(_) => return Err(ClientError::Timeout(self.timeout)),
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        Ok(Streamed { client: self, status, headers, body: resp.into_body(), sender: Some(sender) })
    }

    async fn send_head(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(Bytes, &'static str)>,
        extra: &[(hyper::header::HeaderName, hyper::header::HeaderValue)],
    ) -> Result<(SendRequest<Full<Bytes>>, hyper::Response<hyper::body::Incoming>), ClientError> {
        let build = || {
            let mut req = Request::builder().method(method.clone()).uri(path_and_query).header("host", "gatewayd");
            if let Some(token) = &self.token {
                req = req.header("authorization", format!("Bearer {token}"));
            }
            for (name, value) in extra {
                req = req.header(name, value);
            }
            let payload = match &body {
                Some((bytes, content_type)) => {
                    req = req.header("content-type", *content_type);
                    Full::new(bytes.clone())
                }
                None => Full::new(Bytes::new()),
            };
            req.body(payload).map_err(|e| ClientError::Decode(format!("bad request line: {e}")))
        };
        // A reused connection may have been closed by gatewayd meanwhile: retry once on a fresh one.
        let mut sender = match self.take_idle() {
            Some(s) => s,
            None => self.connect().await?,
        };
        let resp = match sender.ready().await {
            Ok(()) => sender.send_request(build()?).await,
            Err(e) => Err(e),
        };
        let resp = match resp {
            Ok(r) => r,
            Err(e) if e.is_canceled() || e.is_closed() || e.is_incomplete_message() => {
                sender = self.connect().await?;
                sender.send_request(build()?).await?
            }
            Err(e) => return Err(e.into()),
        };
        Ok((sender, resp))
    }

    /// Sends a request and returns the body of a success; an error status becomes
    /// [`ClientError::Api`].
    pub async fn call_ok(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(Bytes, &'static str)>,
    ) -> Result<Bytes, ClientError> {
        self.call_ok_with_headers(method, path_and_query, body).await.map(|a| a.body)
    }

    /// `GET` a JSON value.
    pub async fn get_json<T: DeserializeOwned>(&self, path_and_query: &str) -> Result<T, ClientError> {
        let bytes = self.call_ok(Method::GET, path_and_query, None).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Sends a JSON body and reads a JSON answer.
    pub async fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let payload = serde_json::to_vec(body).map_err(|e| ClientError::Decode(e.to_string()))?;
        let bytes = self.call_ok(method, path_and_query, Some((payload.into(), "application/json"))).await?;
        if bytes.is_empty() {
            return serde_json::from_slice(b"null").map_err(|e| ClientError::Decode(e.to_string()));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }
}

/// An answer whose body is read as it arrives ([`GatewayClient::get_streamed`]).
pub struct Streamed<'a> {
    client: &'a GatewayClient,
    /// The HTTP status.
    pub status: StatusCode,
    /// The headers.
    pub headers: hyper::HeaderMap,
    body: hyper::body::Incoming,
    /// Back to the idle pool once the body has been read to its end.
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl std::fmt::Debug for Streamed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streamed").field("status", &self.status).field("headers", &self.headers).finish()
    }
}

impl Streamed<'_> {
    /// The next piece of the body; `None` at its end. A body cut off by gatewayd (an
    /// upstream failing mid-body, or a body over the size cap) is an error.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        loop {
            let frame = match tokio::time::timeout(self.client.timeout, self.body.frame()).await {
                Ok(f) => f,
                Err(_) => return Err(ClientError::Timeout(self.client.timeout)),
            };
            match frame {
                None => {
                    if let Some(sender) = self.sender.take() {
                        self.client.put_idle(sender);
                    }
                    return Ok(None);
                }
                Some(Err(cause)) => return Err(ClientError::Cut { cause }),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            return Ok(Some(data));
                        }
                    }
                }
            }
        }
    }

    /// The whole remaining body (for error answers, which are small).
    pub async fn rest(mut self) -> Result<Bytes, ClientError> {
        let mut out = Vec::new();
        while let Some(c) = self.chunk().await? {
            out.extend_from_slice(&c);
        }
        Ok(out.into())
    }

    /// The answer as a [`ClientError::Api`] (for a status that is not a success).
    pub async fn into_error(self) -> ClientError {
        let status = self.status;
        match self.rest().await {
            Ok(body) => api_error(status, &body),
            Err(e) => e,
        }
    }
}

/// The route for a file-system operation on a virtual path: `/v1/fs/{op}?path=...`.
pub fn fs_route(op: &str, path: &str) -> String {
    let encoded: String = url::form_urlencoded::byte_serialize(path.as_bytes()).collect();
    format!("{}/fs/{op}?path={encoded}", crate::wire::API_PREFIX)
}
