use super::*;
use crate::spec::Operation;

fn spec(ops: &[(Method, &str)]) -> ServiceSpec {
    ServiceSpec {
        title: "t".into(),
        version: "1".into(),
        servers: vec![],
        operations: ops
            .iter()
            .map(|(m, p)| Operation {
                method: *m,
                path: (*p).into(),
                fixed_query: None,
                operation_id: None,
                summary: None,
                security: None,
            })
            .collect(),
        security_schemes: Default::default(),
        security: vec![],
        protocol: Default::default(),
        rpc_methods: Default::default(),
        item_ids: Default::default(),
    }
}

fn names(p: &str) -> Vec<Name> {
    crate::path::VPath::parse(p).unwrap().names().to_vec()
}

#[test]
fn file_plus_dir_convention() {
    let t = Tree::build(&spec(&[
        (Method::Get, "/models"),
        (Method::Get, "/models/{model}"),
        (Method::Delete, "/models/{model}"),
        (Method::Post, "/chat/completions"),
    ]));
    let top: Vec<_> = t.list(t.root()).into_iter().map(|e| (e.name, e.view)).collect();
    assert_eq!(top, vec![("chat".into(), View::Dir), ("models".into(), View::File), ("models.d".into(), View::Dir)]);

    let r = t.resolve(&names("models")).unwrap();
    assert_eq!((r.view, r.segments.clone()), (View::File, vec!["models".to_string()]));
    let r = t.resolve(&names("models.d/gpt-4o")).unwrap();
    assert_eq!(r.view, View::File);
    assert_eq!(r.segments, vec!["models", "gpt-4o"]);
    assert!(t.operation(r.node, Method::Delete).is_some());
    assert_eq!(t.resolve(&names("models/x")), Err(TreeError::NotADirectory("models".into())));
    assert_eq!(t.resolve(&names("nope")), Err(TreeError::NotFound("nope".into())));
}

#[test]
fn escaped_ids_and_queries_reach_the_segments() {
    let t = Tree::build(&spec(&[(Method::Get, "/repos/{id}"), (Method::Get, "/search")]));
    let r = t.resolve(&names("repos/a%2Fb")).unwrap();
    assert_eq!(r.segments, vec!["repos", "a/b"]);
    let r = t.resolve(&names("search?q=fuse&per_page=5")).unwrap();
    assert_eq!(r.query.as_deref(), Some("q=fuse&per_page=5"));
    assert_eq!(r.segments, vec!["search"]);
}

#[test]
fn json_aliases_are_hidden_and_resolve_to_the_file() {
    let t = Tree::build(&spec(&[(Method::Get, "/models"), (Method::Get, "/models/{model}"), (Method::Get, "/a/b")]));
    let r = t.resolve(&names("models.json")).unwrap();
    assert_eq!((r.view, r.segments.clone()), (View::File, vec!["models".to_string()]));
    let r = t.resolve(&names("models.d/gpt-4o.json")).unwrap();
    assert_eq!(r.segments, vec!["models", "gpt-4o.json"], "a templated name keeps its text: the id may end in .json");
    assert!(t.resolve(&names("a.json")).is_err(), "directories have no alias");
    assert!(t.list(t.root()).iter().all(|e| !e.name.ends_with(".json")));
}
