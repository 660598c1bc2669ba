//! Memory held per registered service, in process (doc/BENCHMARKS.md): the resident set
//! growth of keeping N copies of the OpenAI spec and its tree alive, per copy, against the
//! size of the document itself as the baseline. Twice: services parsed from the document
//! (registration) and services read back from their stored spec JSON (a restart).
//!
//! Run with `cargo bench -p agentfs --bench memory` (scripts/bench runs it, and measures the
//! same thing on a real gatewayd). Prints `key=value` lines that scripts/bench reads.
//! Linux only: it reads `VmRSS` and `VmHWM` from `/proc/self/status`.

#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use agentfs::spec::{parse_openapi, ServiceSpec};
use agentfs::tree::Tree;

/// The OpenAI document of the test fixtures (OpenAPI 3.1, YAML, about 3 MB).
const OPENAI_YAML: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/openapi/openai.yaml");

/// Services kept alive at once.
const COPIES: usize = 20;

/// A field of `/proc/self/status`, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Resident set growth, in KiB, of keeping [`COPIES`] results of `make` alive, after one
/// result made and dropped first: the allocator's arenas then already hold what one call
/// needs at its peak, so the growth is what the services hold (and pin), not scratch.
fn growth_kib<T>(make: impl Fn() -> T) -> u64 {
    drop(black_box(make()));
    let before = status_kib("VmRSS");
    let held: Vec<T> = (0..COPIES).map(|_| make()).collect();
    let after = status_kib("VmRSS");
    black_box(&held);
    after.saturating_sub(before)
}

fn main() {
    let doc = std::fs::read(OPENAI_YAML).expect("tests/fixtures/openapi/openai.yaml");
    let spec = parse_openapi(&doc).unwrap();
    // What gatewayd stores in its database and reads back at start.
    let stored = serde_json::to_vec(&spec).unwrap();
    let rss_start = status_kib("VmRSS");
    // As after a restart: each service read back from its stored spec.
    let loaded = growth_kib(|| {
        let spec: ServiceSpec = serde_json::from_slice(black_box(&stored)).unwrap();
        let tree = Tree::build(&spec);
        (spec, tree)
    });
    // As after `nkmc register`: each service parsed from the document.
    let registered = growth_kib(|| {
        let spec = parse_openapi(black_box(&doc)).unwrap();
        let tree = Tree::build(&spec);
        (spec, tree)
    });
    let peak = status_kib("VmHWM");
    let per_service = |kib: u64| kib as f64 / COPIES as f64;
    println!("copies={COPIES}");
    println!("operations={}", spec.operations.len());
    println!("document_bytes={}", doc.len());
    println!("stored_spec_json_bytes={}", stored.len());
    println!("rss_start_kib={rss_start}");
    println!("rss_peak_kib={peak}");
    println!("registered_rss_per_service_mib={:.3}", per_service(registered) / 1024.0);
    println!("registered_rss_per_service_over_document={:.3}", per_service(registered) * 1024.0 / doc.len() as f64);
    println!("loaded_rss_per_service_mib={:.3}", per_service(loaded) / 1024.0);
    println!("loaded_rss_per_service_over_document={:.3}", per_service(loaded) * 1024.0 / doc.len() as f64);
}
