//! Row a3 of doc/BENCHMARKS.md for gatewayd: one `/v1/fs/read` of a 1 KiB resource over the
//! Unix socket with agentfs's client (a kept-alive connection, an agent token, nothing cached
//! in gatewayd: every read goes to the upstream), next to a keep-alive GET of the same bytes
//! straight to the upstream with reqwest, measured in the same run.
//!
//! It needs a running gatewayd and upstream, which scripts/bench starts and names in the
//! environment: `NKMC_BENCH_SOCKET` (gatewayd's socket), `NKMC_BENCH_TOKEN` (an agent token),
//! `NKMC_BENCH_PATH` (the virtual path, `/bench.test/small`) and `NKMC_BENCH_URL` (the same
//! resource on the upstream). Without them it says so and measures nothing. Ids:
//! `read/gatewayd_socket`, `read/upstream_keepalive`.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use agentfs::client::{fs_route, GatewayClient};
use criterion::Criterion;
use hyper::Method;

fn main() {
    let var = |k: &str| std::env::var(k).ok();
    let (Some(socket), Some(token), Some(path), Some(url)) =
        (var("NKMC_BENCH_SOCKET"), var("NKMC_BENCH_TOKEN"), var("NKMC_BENCH_PATH"), var("NKMC_BENCH_URL"))
    else {
        eprintln!(
            "gatewayd bench read: set NKMC_BENCH_SOCKET, NKMC_BENCH_TOKEN, NKMC_BENCH_PATH and NKMC_BENCH_URL \
             (scripts/bench does); nothing measured"
        );
        return;
    };
    // reqwest is built without a TLS provider of its own; gatewayd installs ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let gw = GatewayClient::new(socket, Duration::from_secs(10)).with_token(Some(token));
    let route = fs_route("read", &path);
    let http = reqwest::Client::new();

    // Both answer the same bytes before anything is measured.
    let through = rt.block_on(gw.call_ok(Method::GET, &route, None)).unwrap();
    let direct = rt.block_on(async { http.get(&url).send().await.unwrap().bytes().await.unwrap() });
    assert_eq!(through, direct, "gatewayd and the upstream answer the same bytes");

    let mut c = Criterion::default().configure_from_args().warm_up_time(Duration::from_secs(1));
    let mut g = c.benchmark_group("read");
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("gatewayd_socket", |b| {
        b.iter(|| rt.block_on(gw.call_ok(Method::GET, &route, None)).unwrap());
    });
    g.bench_function("upstream_keepalive", |b| {
        b.iter(|| rt.block_on(async { http.get(&url).send().await.unwrap().bytes().await.unwrap() }));
    });
    g.finish();
    c.final_summary();
}
