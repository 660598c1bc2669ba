//! Masking throughput (doc/BENCHMARKS.md, "Masking"): an upstream body streamed through
//! [`Masker::push_bytes`] in 64 KiB chunks (as gatewayd streams an answer) with one credential's patterns (the key, its base64, hex,
//! URL-encoded and JSON-escaped forms), next to a plain copy of the same chunks as the
//! baseline, measured in the same run; and a whole 1 KiB body through `mask_all`.
//! The body is JSON text that never holds the key (the common case: nothing to replace).
//! Ids: `mask/stream_16MiB`, `mask/copy_16MiB`, `mask/all_1KiB`.

#![allow(clippy::unwrap_used, missing_docs)]

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use gatewayd::run::mask::{mask_all, Masker, Patterns};

const BODY: usize = 16 << 20;
const CHUNK: usize = 64 << 10;

fn body(len: usize) -> Vec<u8> {
    let item =
        br#"{"id":"item-0042","object":"model","created":1700000000,"owned_by":"system","tags":["alpha","beta"]},"#;
    item.iter().copied().cycle().take(len).collect()
}

fn main() {
    let key = b"sk-CANARY-bench-0123456789abcdefABCDEF";
    let patterns = std::sync::Arc::new(Patterns::new([&key[..]]));
    let chunks: Vec<Bytes> = body(BODY).chunks(CHUNK).map(Bytes::copy_from_slice).collect();
    let small = body(1024);
    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("mask");
    g.throughput(Throughput::Bytes(BODY as u64));
    g.bench_function("stream_16MiB", |b| {
        b.iter(|| {
            let mut m = Masker::new(patterns.clone());
            let mut n = 0;
            for chunk in &chunks {
                n += std::hint::black_box(m.push_bytes(chunk.clone())).len();
            }
            n + m.finish().len()
        })
    });
    g.bench_function("copy_16MiB", |b| {
        b.iter(|| chunks.iter().map(|chunk| std::hint::black_box(chunk.to_vec()).len()).sum::<usize>())
    });
    g.throughput(Throughput::Bytes(small.len() as u64));
    g.bench_function("all_1KiB", |b| b.iter(|| mask_all(&patterns, &small).len()));
    g.finish();
}
