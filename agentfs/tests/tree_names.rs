//! Hostile names against a built tree: whatever name a user or an API client hands over,
//! the upstream segments a name resolves to are never `.`, `..` or empty, so a request
//! can never step outside the path template the document declared.

#![allow(clippy::unwrap_used)]

use agentfs::path::VPath;
use agentfs::spec::parse_openapi;
use agentfs::tree::{Tree, TreeError, View};
use proptest::prelude::*;

/// A tree built from a small document, so the test does not depend on `ServiceSpec`'s fields.
fn tree() -> Tree {
    let mut doc = String::from("openapi: 3.0.3\ninfo: {title: t, version: '1'}\npaths:\n");
    for (path, method) in [
        ("/models", "get"),
        ("/models/{model}", "get"),
        ("/models/{model}/versions", "get"),
        ("/files/{id}.json", "get"),
        ("/files/{id}.json/meta", "get"),
        ("/calls/{call_id}/accept", "post"),
        ("/v{version}/info", "get"),
        ("/dots/{a}.", "get"),
        ("/dots/{a}./x", "get"),
    ] {
        doc.push_str(&format!("  '{path}': {{{method}: {{responses: {{}}}}}}\n"));
    }
    Tree::build(&parse_openapi(doc.as_bytes()).unwrap())
}

fn resolve(t: &Tree, p: &str) -> Result<agentfs::tree::Resolved, TreeError> {
    t.resolve(VPath::parse(p).unwrap().names())
}

/// `..d` and `...d` strip to `.` and `..`; `..?q` carries a query on `..`. None of them
/// may reach a templated node with a dot segment.
#[test]
fn dot_values_never_fill_a_template() {
    let t = tree();
    for p in [
        "models.d/..d/versions",
        "models.d/...d/versions",
        "models.d/..?x=1",
        "models.d/.?x=1",
        "calls/..?x/accept",
        "dots/..d/x",
        "dots/.?q",
    ] {
        match resolve(&t, p) {
            Err(_) => {}
            Ok(r) => panic!("{p} resolved to segments {:?}", r.segments),
        }
    }
    // Ordinary ids that merely contain dots are fine.
    assert_eq!(resolve(&t, "models.d/gpt-4.5").unwrap().segments, vec!["models", "gpt-4.5"]);
    assert_eq!(resolve(&t, "models.d/a..b.d/versions").unwrap().segments, vec!["models", "a..b", "versions"]);
    assert_eq!(resolve(&t, "models.d/...x?q=1").unwrap().segments, vec!["models", "...x"]);
    // `...d` is not `..` plus `.d` here: `..` is refused, so it is the id `...d`.
    assert_eq!(resolve(&t, "models.d/...d").unwrap().segments, vec!["models", "...d"]);
    assert_eq!(resolve(&t, "files/..json").unwrap().segments, vec!["files", "..json"]);
}

#[test]
fn escaped_ids_and_queries() {
    let t = tree();
    let r = resolve(&t, "models.d/a%2Fb").unwrap();
    assert_eq!((r.view, r.segments), (View::File, vec!["models".to_owned(), "a/b".to_owned()]));
    let r = resolve(&t, "files/42.json").unwrap();
    assert_eq!(r.segments, vec!["files", "42.json"]);
    assert!(matches!(resolve(&t, "models?x/y"), Err(TreeError::QueryNotLast(_))));
    assert!(matches!(resolve(&t, "models/x"), Err(TreeError::NotADirectory(_))));
}

fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            ".", "..", "...", ".d", "..d", "...d", "?", "?q=1", "%2F", "%2E", "models", "models.d",
            "files", "42.json", "json", "v", "calls", "accept", "dots", "x", "{", "}",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z.?%{}]{1,8}",
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 1..4).prop_map(|ps| ps.concat())
}

/// A directory of the test tree, or a random start.
fn start() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["", "models.d", "models.d/abc.d", "files", "files/1.json.d", "calls", "calls/c1", "dots", "v1"])
            .prop_map(str::to_owned),
        1 => name(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any names, any tree position: resolved segments are never `.`, `..` or empty.
    #[test]
    fn resolved_segments_are_never_dot_or_empty(dir in start(), names in prop::collection::vec(name(), 1..3)) {
        let t = tree();
        let Ok(p) = VPath::parse(&format!("{dir}/{}", names.join("/"))) else { return Ok(()) };
        if let Ok(r) = t.resolve(p.names()) {
            for s in &r.segments {
                prop_assert!(!s.is_empty() && s != "." && s != "..", "{names:?} gave segments {:?}", r.segments);
            }
        }
    }
}
