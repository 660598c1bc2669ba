//! The benchmarks' upstream (`scripts/bench`, doc/BENCHMARKS.md): fixed bodies served as fast
//! as axum on tokio can, on 127.0.0.1 only, HTTP/1.1 keep-alive.
//!
//! ```text
//! nkmc-bench-upstream [--port N] [--small BYTES] [--items N] [--big BYTES] [--threads N]
//! ```
//!
//! Routes (under any prefix, so a spec's base URL can be `http://ADDR/v1`): `GET …/small`, a
//! JSON object of `--small` bytes (1 KiB); `GET …/items`, a JSON array of `--items` objects
//! (10,000); `GET …/items/ID`, the item `{"id":ID,"name":"item-ID"}` (the mount's `items.d/`);
//! `GET …/big`, `--big` bytes (100 MiB) of JSON, made on first request. Anything else is 404. It prints `http://127.0.0.1:PORT` on its first line once it listens, then serves
//! until killed.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

use anyhow::{bail, Context};
use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, Response, StatusCode, Uri};

/// What the command line asks for.
struct Args {
    port: u16,
    small: usize,
    items: usize,
    big: usize,
    threads: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args { port: 0, small: 1024, items: 10_000, big: 100 << 20, threads: 1 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("nkmc-bench-upstream: {flag} needs a value"))?;
        let n = || -> anyhow::Result<usize> {
            value.parse().with_context(|| format!("nkmc-bench-upstream: {flag} {value}: not a number"))
        };
        match flag.as_str() {
            "--port" => a.port = u16::try_from(n()?).context("nkmc-bench-upstream: --port is at most 65535")?,
            "--small" => a.small = n()?,
            "--items" => a.items = n()?,
            "--big" => a.big = n()?,
            "--threads" => a.threads = n()?.max(1),
            _ => bail!("nkmc-bench-upstream: unknown option {flag}; see the doc comment of tests/src/bin/nkmc-bench-upstream.rs"),
        }
    }
    Ok(a)
}

/// A JSON object of exactly `len` bytes (at least 12): `{"pad":"xxx…"}`.
fn object(len: usize) -> Vec<u8> {
    let head = br#"{"pad":""#;
    let mut v = Vec::with_capacity(len.max(12));
    v.extend_from_slice(head);
    v.resize(len.max(12) - 2, b'x');
    v.extend_from_slice(b"\"}");
    v
}

/// A JSON array of `n` objects with an id and a name.
fn listing(n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n * 32 + 2);
    v.push(b'[');
    for i in 0..n {
        if i > 0 {
            v.push(b',');
        }
        let _ = write!(v, r#"{{"id":{i},"name":"item-{i:05}"}}"#);
    }
    v.push(b']');
    v
}

/// The bodies, made once.
struct Bodies {
    small: Bytes,
    items: Bytes,
    big_len: usize,
    big: OnceLock<Bytes>,
}

fn json(body: Bytes) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn answer(bodies: &Bodies, uri: &Uri) -> Response<Body> {
    let path = uri.path();
    if path.ends_with("/small") {
        json(bodies.small.clone())
    } else if path.ends_with("/items") {
        json(bodies.items.clone())
    } else if let Some(id) = path.rsplit_once("/items/").map(|(_, id)| id).filter(|id| !id.contains('/')) {
        json(Bytes::from(format!(r#"{{"id":{id:?},"name":"item-{id}"}}"#)))
    } else if path.ends_with("/big") {
        json(bodies.big.get_or_init(|| Bytes::from(object(bodies.big_len))).clone())
    } else {
        let mut r = json(Bytes::from_static(b"{}"));
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    }
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    let bodies = Arc::new(Bodies {
        small: Bytes::from(object(a.small)),
        items: Bytes::from(listing(a.items)),
        big_len: a.big,
        big: OnceLock::new(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads)
        .enable_all()
        .build()
        .context("nkmc-bench-upstream: starting tokio")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, a.port)))
            .await
            .with_context(|| format!("nkmc-bench-upstream: cannot listen on 127.0.0.1:{}", a.port))?;
        let addr = listener.local_addr().context("nkmc-bench-upstream: local address")?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "http://{addr}").and_then(|()| out.flush()).context("nkmc-bench-upstream: stdout")?;
        drop(out);
        let app = axum::Router::new().fallback(move |uri: Uri| {
            let bodies = bodies.clone();
            async move { answer(&bodies, &uri) }
        });
        axum::serve(listener, app).await.context("nkmc-bench-upstream: serving")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_the_asked_sizes_and_are_json() {
        for len in [12, 13, 1024, 4096] {
            let o = object(len);
            assert_eq!(o.len(), len);
            serde_json::from_slice::<serde_json::Value>(&o).unwrap_or_else(|e| panic!("{len}: {e}"));
        }
        let l: serde_json::Value = serde_json::from_slice(&listing(3)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l[2]["name"], "item-00002");
        assert_eq!(l.as_array().map(Vec::len), Some(3));
    }
}
