//! Fuzz target `ingest`: arbitrary bytes as an API document (OpenAPI, OpenRPC) and, when
//! they are UTF-8, as a skill.md manifest; whatever parses is built into a tree, listed and
//! resolved. Nothing may panic, abort or hang.
//!
//! `agentfs/tests/fuzz_corpus.rs` replays the seed corpus (`corpus/ingest/`) through a copy
//! of [`ingest`] in the ordinary `cargo test`: keep the two bodies the same.

#![no_main]

use agentfs::path::Name;
use agentfs::spec::ServiceSpec;
use agentfs::tree::Tree;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ingest(data));

/// The body shared (by copy) with `agentfs/tests/fuzz_corpus.rs`.
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
