//! Replays the seed corpus of the `ingest` fuzz target (`agentfs/fuzz/corpus/ingest/`) in
//! the ordinary `cargo test`, so the seeds (and any crash input added to them) stay
//! panic-free without nightly or cargo-fuzz.
//!
//! [`ingest`] and [`browse`] are a copy of the fuzz target's body
//! (`agentfs/fuzz/fuzz_targets/ingest.rs`): the fuzz crate is a workspace of its own and the
//! library exports no helper for it, so keep the two copies the same.

#![allow(clippy::unwrap_used)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use agentfs::path::Name;
use agentfs::spec::ServiceSpec;
use agentfs::tree::Tree;

/// The body shared (by copy) with `agentfs/fuzz/fuzz_targets/ingest.rs`.
fn ingest(data: &[u8]) {
    if let Ok(spec) = agentfs::spec::parse_any(data) {
        browse(&spec);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(spec) = agentfs::skill::parse(text) {
            browse(&spec);
        }
    }
}

/// Builds the tree, lists its root and resolves every name the listing shows.
fn browse(spec: &ServiceSpec) {
    let tree = Tree::build(spec);
    for entry in tree.list(tree.root()) {
        if let Ok(name) = Name::parse(&entry.name) {
            let _ = tree.resolve(&[name]);
        }
        let _ = tree.list(entry.node);
    }
}

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/ingest");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_seed_ingests_without_panicking() {
    let files = corpus();
    assert!(files.len() >= 10, "the seed corpus shrank to {} files", files.len());
    let panicked: Vec<String> = files
        .iter()
        .filter(|f| catch_unwind(AssertUnwindSafe(|| ingest(&std::fs::read(f).unwrap()))).is_err())
        .map(|f| f.display().to_string())
        .collect();
    assert!(panicked.is_empty(), "ingest panicked on: {panicked:#?}");
}

/// The seeds are meant to reach past the parsers: some of them must become browsable trees.
#[test]
fn the_valid_seeds_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/ingest");
    for name in ["petstore.yaml", "openapi31.json", "openrpc.json", "numeric-keys.yaml", "deep-schema.json"] {
        let spec =
            agentfs::spec::parse_any(&std::fs::read(dir.join(name)).unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            !{
                let t = Tree::build(&spec);
                t.list(t.root())
            }
            .is_empty(),
            "{name}: empty root"
        );
    }
    let skill = std::fs::read_to_string(dir.join("skill.md")).unwrap();
    assert_eq!(agentfs::skill::parse(&skill).unwrap().operations.len(), 3);
}
