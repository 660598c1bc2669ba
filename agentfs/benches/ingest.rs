//! Ingest benchmarks (doc/BENCHMARKS.md): registering the 3 MB OpenAI document, building
//! its tree, resolving paths in it and parsing virtual paths, each next to a baseline
//! measured in the same run so that the ratio, not the absolute time, is the figure.
//!
//! Run with `cargo bench -p agentfs --bench ingest` (scripts/bench runs it and prints the
//! ratios). Benchmark ids are `group/name`; scripts/bench reads criterion's
//! `target/criterion/<group>/<name>/new/estimates.json`, so renaming one means updating it.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use agentfs::path::{Name, VPath};
use agentfs::spec::{parse_any, parse_document, parse_openapi, ServiceSpec};
use agentfs::tree::{Tree, View};
use criterion::{Criterion, SamplingMode};

/// The OpenAI document of the test fixtures (OpenAPI 3.1, YAML, about 3 MB).
const OPENAI_YAML: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/openapi/openai.yaml");

/// A deep path (five names, three of them `.d` directories with ids) and a shallow one.
const DEEP: &str = "threads.d/thread_1.d/runs.d/run_1.d/steps";
const SHALLOW: &str = "models.d/gpt-4o";

/// A typical full virtual path as gatewayd receives it from mountd.
const VPATH: &str = "/api.openai.com/threads.d/thread_abc123.d/runs.d/run_abc123.d/steps";

fn openai_yaml() -> Vec<u8> {
    std::fs::read(OPENAI_YAML).expect("tests/fixtures/openapi/openai.yaml")
}

/// The same document as JSON, converted once (JSON registration is as common as YAML).
fn openai_json(yaml: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&parse_document(yaml).unwrap()).unwrap()
}

fn openai_spec() -> ServiceSpec {
    parse_openapi(&openai_yaml()).unwrap()
}

/// (a) Parsing: the OpenAPI layer against a plain parse of the same bytes into a value, and
/// `parse_any` (format sniffed from the content, as `nkmc register --spec` does) against it.
fn parse(c: &mut Criterion) {
    let yaml = openai_yaml();
    let json = openai_json(&yaml);
    let mut g = c.benchmark_group("parse");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    g.bench_function("yaml_document", |b| b.iter(|| parse_document(black_box(&yaml)).unwrap()));
    g.bench_function("yaml_openapi", |b| b.iter(|| parse_openapi(black_box(&yaml)).unwrap()));
    // What gatewayd runs when the format is not given: it sniffs the document first.
    g.bench_function("yaml_any", |b| b.iter(|| parse_any(black_box(&yaml)).unwrap()));
    g.bench_function("json_document", |b| b.iter(|| parse_document(black_box(&json)).unwrap()));
    g.bench_function("json_openapi", |b| b.iter(|| parse_openapi(black_box(&json)).unwrap()));
    g.finish();
}

/// (b) Building the tree, against cloning the spec it is built from (the cheapest pass over
/// the same operations that allocates).
fn tree(c: &mut Criterion) {
    let spec = openai_spec();
    let mut g = c.benchmark_group("tree");
    g.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    g.bench_function("spec_clone", |b| b.iter(|| black_box(&spec).clone()));
    g.bench_function("build", |b| b.iter(|| Tree::build(black_box(&spec))));
    g.finish();
}

fn names(path: &str) -> Vec<Name> {
    VPath::parse(path).unwrap().names().to_vec()
}

/// (c) Resolving names to a node, against one hash lookup of the whole path string.
fn resolve(c: &mut Criterion) {
    let spec = openai_spec();
    let tree = Tree::build(&spec);
    let (deep, shallow) = (names(DEEP), names(SHALLOW));
    assert_eq!(tree.resolve(&deep).unwrap().view, View::File, "{DEEP}");
    assert_eq!(tree.resolve(&shallow).unwrap().view, View::File, "{SHALLOW}");
    // A map as large as the spec, so the baseline is not a lookup in a tiny table.
    let mut map: HashMap<String, usize> =
        spec.operations.iter().enumerate().map(|(i, o)| (o.path.clone(), i)).collect();
    map.insert(DEEP.to_owned(), 1);
    map.insert(SHALLOW.to_owned(), 2);
    let mut g = c.benchmark_group("resolve");
    g.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    g.bench_function("hashmap_deep", |b| b.iter(|| map.get(black_box(DEEP)).copied()));
    g.bench_function("tree_deep", |b| b.iter(|| tree.resolve(black_box(&deep)).unwrap()));
    g.bench_function("hashmap_shallow", |b| b.iter(|| map.get(black_box(SHALLOW)).copied()));
    g.bench_function("tree_shallow", |b| b.iter(|| tree.resolve(black_box(&shallow)).unwrap()));
    g.finish();
}

/// (d) Parsing a virtual path, against splitting it into owned strings (the least any
/// owned path form costs).
fn path(c: &mut Criterion) {
    let mut g = c.benchmark_group("path");
    g.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    g.bench_function("split_owned", |b| {
        b.iter(|| black_box(VPATH).split('/').filter(|s| !s.is_empty()).map(str::to_owned).collect::<Vec<_>>())
    });
    g.bench_function("vpath_parse", |b| b.iter(|| VPath::parse(black_box(VPATH)).unwrap()));
    g.finish();
}

/// What `criterion_group!` and `criterion_main!` expand to, without their undocumented `pub fn`.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    parse(&mut c);
    tree(&mut c);
    resolve(&mut c);
    path(&mut c);
    c.final_summary();
}
