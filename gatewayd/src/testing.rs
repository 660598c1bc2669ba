//! Test support shared by the unit tests of several modules.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A raw HTTP/1.1 server on loopback, to see exactly what a client sends and how it reuses
/// connections.
pub struct RawServer {
    /// `127.0.0.1:PORT`.
    pub addr: std::net::SocketAddr,
    /// Connections accepted.
    pub accepted: Arc<AtomicUsize>,
    /// Requests read (over all connections).
    pub requests: Arc<AtomicUsize>,
}

/// Serves each request with `answer(n, request)`: `n` counts requests over all connections,
/// `request` is the head, a blank line and the body (by `Content-Length`). The answer's
/// bytes are written as they are; the connection is closed after them when it says so.
pub async fn raw_server(answer: impl Fn(usize, &str) -> (Vec<u8>, bool) + Send + Sync + 'static) -> RawServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (accepted, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, r, answer) = (accepted.clone(), requests.clone(), Arc::new(answer));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let (r, answer) = (r.clone(), answer.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        match s.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                    buf.drain(..end + 4 + len);
                    let n = r.fetch_add(1, Ordering::SeqCst);
                    let (bytes, close) = answer(n, &format!("{head}\r\n\r\n{body}"));
                    if s.write_all(&bytes).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    RawServer { addr, accepted, requests }
}
