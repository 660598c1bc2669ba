//! Golden trees: each OpenAPI fixture in `tests/fixtures/openapi` becomes a tree whose
//! listing is checked in under `agentfs/tests/golden/<fixture>.txt`.
//!
//! A golden file has two parts:
//! - the fixed listing, walked through `Tree::list` from the service root: one line per
//!   entry, indented two spaces per level, `name/` for a directory and `name  [GET, POST]`
//!   for a file with the methods its node has. Templated children (`{model}`) are not
//!   listed — `list` only shows literal children; their items come from the collection's
//!   GET at run time;
//! - every operation of the document and the mount path that reaches it, with each
//!   templated segment filled by a sample value (`x-` + the parameter name), so the
//!   parts of the tree below templated segments are reviewed too.
//!
//! To regenerate after a deliberate change, run
//! `UPDATE_GOLDEN=1 cargo test -p agentfs --test golden` and review the diff.
//!
//! Targeted assertions check DESIGN's rules on named entries independently of the goldens.

#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::PathBuf;

use agentfs::path::VPath;
use agentfs::spec::{parse_openapi, Method, ServiceSpec};
use agentfs::tree::{NodeId, Resolved, Tree, View};

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/openapi").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn load(name: &str) -> (ServiceSpec, Tree) {
    let spec = parse_openapi(&fixture(name)).unwrap();
    let tree = Tree::build(&spec);
    (spec, tree)
}

fn methods(tree: &Tree, node: NodeId) -> String {
    tree.methods(node).map(Method::as_str).collect::<Vec<_>>().join(", ")
}

/// The fixed listing below `dir`, depth first.
fn render_dir(tree: &Tree, dir: NodeId, depth: usize, out: &mut String) {
    for e in tree.list(dir) {
        let indent = "  ".repeat(depth);
        match e.view {
            View::Dir => {
                writeln!(out, "{indent}{}/", e.name).unwrap();
                render_dir(tree, e.node, depth + 1, out);
            }
            View::File => writeln!(out, "{indent}{}  [{}]", e.name, methods(tree, e.node)).unwrap(),
        }
    }
}

/// The upstream segments of an operation's path, templated parts filled with samples.
fn sample_segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|seg| {
            let mut out = String::new();
            let mut rest = seg;
            while let Some(open) = rest.find('{') {
                let Some(close) = rest[open..].find('}').map(|c| c + open) else { break };
                out.push_str(&rest[..open]);
                out.push_str("x-");
                out.push_str(&rest[open + 1..close]);
                rest = &rest[close + 1..];
            }
            out.push_str(rest);
            out
        })
        .collect()
}

/// Walks the mount names for `segments` the way a user would: a segment whose node shows
/// as a file but has children is entered through its `name.d/` directory.
fn reach(tree: &Tree, segments: &[String]) -> Result<(String, Resolved), String> {
    let mut names: Vec<String> = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        // The plain name first: a node without operations is a directory under it.
        let mut try_names = vec![seg.clone()];
        if !last {
            try_names.push(format!("{seg}.d"));
        }
        let mut found = false;
        for n in try_names {
            let mut candidate = names.clone();
            candidate.push(n.clone());
            let p = VPath::parse(&candidate.join("/")).map_err(|e| e.to_string())?;
            if let Ok(r) = tree.resolve(p.names()) {
                if last || r.view == View::Dir {
                    names.push(n);
                    found = true;
                    break;
                }
            }
        }
        if !found {
            return Err(format!("`{seg}` not reachable after `{}`", names.join("/")));
        }
    }
    let shown = names.join("/");
    let p = VPath::parse(&shown).map_err(|e| e.to_string())?;
    let r = tree.resolve(p.names()).map_err(|e| e.to_string())?;
    Ok((shown, r))
}

fn render(spec: &ServiceSpec, tree: &Tree) -> String {
    let mut out = String::new();
    writeln!(out, "# {} {}", spec.title, spec.version).unwrap();
    writeln!(out, "# servers: {}", spec.servers.join(" ")).unwrap();
    writeln!(out, "# {} operations", spec.operations.len()).unwrap();
    writeln!(out).unwrap();
    writeln!(out, "## listing").unwrap();
    render_dir(tree, tree.root(), 0, &mut out);
    writeln!(out).unwrap();
    writeln!(out, "## operations").unwrap();
    for op in &spec.operations {
        let query = op.fixed_query.as_deref().map(|q| format!("?{q}")).unwrap_or_default();
        let at = match reach(tree, &sample_segments(&op.path)) {
            Ok((shown, r)) => {
                let view = if r.view == View::File { "" } else { "/" };
                format!("{shown}{view}")
            }
            Err(e) => format!("UNREACHABLE: {e}"),
        };
        writeln!(out, "{:<6} {}{query}  ->  {at}", op.method.as_str(), op.path).unwrap();
    }
    out
}

/// Compares with the checked-in golden file, or rewrites it with `UPDATE_GOLDEN=1`.
fn check_golden(fixture_name: &str, golden_name: &str) {
    let (spec, tree) = load(fixture_name);
    let got = render(&spec, &tree);
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(golden_name);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1 to create it)", path.display()));
    if got != want {
        let first = got
            .lines()
            .zip(want.lines())
            .position(|(g, w)| g != w)
            .unwrap_or(got.lines().count().min(want.lines().count()));
        panic!(
            "{} differs from the tree at line {}:\n  got:  {:?}\n  want: {:?}\n(run with UPDATE_GOLDEN=1 to rewrite it, then review the diff)",
            path.display(),
            first + 1,
            got.lines().nth(first),
            want.lines().nth(first),
        );
    }
}

#[test]
fn openai_golden() {
    check_golden("openai.yaml", "openai.txt");
}

#[test]
fn petstore_golden() {
    check_golden("petstore.yaml", "petstore.txt");
}

fn entries(tree: &Tree, dir: NodeId) -> Vec<(String, View)> {
    tree.list(dir).into_iter().map(|e| (e.name, e.view)).collect()
}

fn has(list: &[(String, View)], name: &str, view: View) -> bool {
    list.iter().any(|(n, v)| n == name && *v == view)
}

fn resolve(tree: &Tree, p: &str) -> Resolved {
    tree.resolve(VPath::parse(p).unwrap().names()).unwrap_or_else(|e| panic!("{p}: {e}"))
}

#[test]
fn openai_named_entries_follow_design() {
    let (spec, tree) = load("openai.yaml");
    let top = entries(&tree, tree.root());
    for (name, view) in [
        ("models", View::File),
        ("models.d", View::Dir),
        ("chat", View::Dir),
        ("responses", View::File),
        ("responses.d", View::Dir),
    ] {
        assert!(has(&top, name, view), "{name} ({view:?}) missing from {top:?}");
    }
    assert!(!has(&top, "chat", View::File), "chat has no operation of its own");
    assert!(!has(&top, "chat.d", View::Dir));

    let chat = resolve(&tree, "chat");
    assert_eq!(chat.view, View::Dir);
    let chat_entries = entries(&tree, chat.node);
    assert!(has(&chat_entries, "completions", View::File), "{chat_entries:?}");
    assert!(has(&chat_entries, "completions.d", View::Dir), "{chat_entries:?}");

    let models = resolve(&tree, "models");
    assert_eq!((models.view, models.segments.clone()), (View::File, vec!["models".to_owned()]));
    assert!(tree.operation(models.node, Method::Get).is_some());
    // Templated children are not in the fixed listing.
    assert!(entries(&tree, resolve(&tree, "models.d").node).is_empty());

    let one = resolve(&tree, "models.d/gpt-4o");
    assert_eq!(one.view, View::File);
    assert_eq!(one.segments, vec!["models", "gpt-4o"]);
    assert_eq!(one.query, None);
    let get = tree.operation(one.node, Method::Get).expect("GET on models.d/gpt-4o");
    assert_eq!(spec.operations[get].path, "/models/{model}");
    assert_eq!(spec.operations[get].method, Method::Get);

    let created = resolve(&tree, "responses");
    assert!(tree.operation(created.node, Method::Post).is_some());
    let read_back = resolve(&tree, "responses.d/resp_1");
    assert_eq!(read_back.segments, vec!["responses", "resp_1"]);
    assert!(tree.operation(read_back.node, Method::Get).is_some());
}

#[test]
fn petstore_named_entries_follow_design() {
    let (spec, tree) = load("petstore.yaml");
    let top = entries(&tree, tree.root());
    assert_eq!(top, vec![("pets".to_owned(), View::File), ("pets.d".to_owned(), View::Dir)]);
    let pets = resolve(&tree, "pets");
    assert_eq!(tree.methods(pets.node).collect::<Vec<_>>(), vec![Method::Get, Method::Post]);
    let one = resolve(&tree, "pets.d/42");
    assert_eq!((one.view, one.segments.clone()), (View::File, vec!["pets".to_owned(), "42".to_owned()]));
    assert_eq!(
        spec.operations[tree.operation(one.node, Method::Get).unwrap()].operation_id.as_deref(),
        Some("showPetById")
    );
    assert!(tree.resolve(VPath::parse("pets/42").unwrap().names()).is_err(), "pets is a file");
}

/// Every operation of both documents is reachable through the mount, at the node that
/// holds it, with the upstream segments it names.
#[test]
fn every_operation_is_reachable() {
    for name in ["openai.yaml", "petstore.yaml"] {
        let (spec, tree) = load(name);
        for (index, op) in spec.operations.iter().enumerate() {
            let segments = sample_segments(&op.path);
            let (shown, r) =
                reach(&tree, &segments).unwrap_or_else(|e| panic!("{name}: {} {}: {e}", op.method.as_str(), op.path));
            assert_eq!(r.segments, segments, "{name}: {shown}");
            let holder = tree.operation(r.node, op.method);
            assert!(holder.is_some(), "{name}: {shown} has no {}", op.method.as_str());
            let held = &spec.operations[holder.unwrap()];
            if holder != Some(index) {
                // Two templates of the same shape share a node; the first one wins.
                assert_eq!(sample_segments(&held.path).len(), segments.len(), "{name}: {} vs {}", held.path, op.path);
            }
        }
    }
}

/// Every listed name is a valid name and resolves to the node and view it was listed as.
#[test]
fn listed_entries_resolve_to_themselves() {
    fn walk(tree: &Tree, dir: NodeId, prefix: &str) {
        for e in tree.list(dir) {
            let shown = if prefix.is_empty() { e.name.clone() } else { format!("{prefix}/{}", e.name) };
            let name = agentfs::path::Name::parse(&e.name).unwrap();
            assert_eq!(name.as_str(), e.name);
            let r = resolve(tree, &shown);
            assert_eq!((r.node, r.view), (e.node, e.view), "{shown}");
            if e.view == View::Dir {
                walk(tree, e.node, &shown);
            }
        }
    }
    for name in ["openai.yaml", "petstore.yaml"] {
        let (_, tree) = load(name);
        walk(&tree, tree.root(), "");
    }
}
