//! Malformed and hostile API documents, replayed against `agentfs::spec::parse_openapi`.
//!
//! Every document must give `Ok` (where it is valid) or an `Err(SpecError::...)` whose
//! message says what is wrong and, where it can, where — never a panic, never a stack
//! overflow (which would abort gatewayd), and never a long stall. Each parse runs on a
//! caller thread with a deliberately small stack and under a time limit.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use agentfs::spec::{parse_document, parse_openapi, ServiceSpec, SpecError, MAX_DOCUMENT_BYTES};

/// Generous for a debug build on a loaded machine; every case here takes well under it.
const TIME_LIMIT: Duration = Duration::from_secs(10);

/// Smaller than any thread a caller would parse on (tokio workers have 2 MiB).
const CALLER_STACK: usize = 256 * 1024;

/// Runs `f` on a small-stack thread; fails the test if it panics or takes too long.
fn bounded<T: Send + 'static>(label: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    std::thread::Builder::new()
        .name(label.to_owned())
        .stack_size(CALLER_STACK)
        .spawn(move || {
            let _ = tx.send(f());
        })
        .unwrap();
    match rx.recv_timeout(TIME_LIMIT) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{label}: still parsing after {TIME_LIMIT:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            panic!("{label}: the parser panicked after {:?}", start.elapsed())
        }
    }
}

fn parse(label: &str, doc: impl Into<Vec<u8>>) -> Result<ServiceSpec, SpecError> {
    let doc = doc.into();
    bounded(label, move || parse_openapi(&doc))
}

/// The error of a document that must be refused; its message must name the layer.
fn refused(label: &str, doc: impl Into<Vec<u8>>) -> SpecError {
    match parse(label, doc) {
        Ok(spec) => panic!("{label}: accepted with {} operations", spec.operations.len()),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("spec: ") && msg.len() > 12, "{label}: unclear message {msg:?}");
            e
        }
    }
}

fn accepted(label: &str, doc: impl Into<Vec<u8>>) -> ServiceSpec {
    parse(label, doc).unwrap_or_else(|e| panic!("{label}: refused: {e}"))
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/openapi").join(name)).unwrap()
}

/// The petstore fixture as JSON.
fn petstore_json() -> Vec<u8> {
    serde_json::to_vec_pretty(&parse_document(&fixture("petstore.yaml")).unwrap()).unwrap()
}

const HEAD_30: &str = "openapi: 3.0.3\ninfo: {title: t, version: '1'}\n";
const HEAD_31: &str = "openapi: 3.1.0\ninfo: {title: t, version: '1'}\n";

#[test]
fn truncated_yaml_never_panics() {
    let doc = fixture("petstore.yaml");
    let mut refusals = 0;
    for cut in (0..doc.len()).step_by(23).chain([1, doc.len() - 1]) {
        match parse(&format!("petstore.yaml[..{cut}]"), &doc[..cut]) {
            Ok(spec) => assert!(spec.operations.len() <= 3),
            Err(e) => {
                assert!(e.to_string().starts_with("spec: "), "{e}");
                refusals += 1;
            }
        }
    }
    assert!(refusals > 10, "only {refusals} truncations were refused");
    // Cut in the middle of a quoted scalar: a syntax error.
    let open_quote = doc.windows(5).position(|w| w == b"\"3.0.").unwrap() + 3;
    assert!(matches!(refused("cut in a quote", &doc[..open_quote]), SpecError::Syntax(_)));
    // Cut before the title: the document is incomplete, and the message says where.
    let title = doc.windows(8).position(|w| w == b"  title:").unwrap();
    let e = refused("cut before the title", &doc[..title]);
    assert!(e.to_string().contains("title"), "{e}");
}

#[test]
fn truncated_utf8_is_a_syntax_error() {
    let doc = format!("{HEAD_30}paths: {{}}\nx-note: caf\u{e9}");
    let bytes = doc.as_bytes();
    let e = refused("half a character", &bytes[..bytes.len() - 1]);
    assert!(matches!(e, SpecError::Syntax(_)), "{e}");
}

#[test]
fn truncated_json_is_always_a_syntax_error() {
    let doc = petstore_json();
    assert_eq!(accepted("petstore.json", doc.clone()).operations.len(), 3);
    let end = doc.iter().rposition(|b| !b.is_ascii_whitespace()).unwrap();
    bounded("petstore.json cuts", move || {
        for cut in 1..=end {
            match parse_openapi(&doc[..cut]) {
                Err(SpecError::Syntax(m)) => assert!(m.starts_with("JSON, "), "{m}"),
                other => panic!("petstore.json[..{cut}]: {other:?}"),
            }
        }
    });
}

#[test]
fn alias_bomb_is_refused() {
    // Billion laughs: nine levels of nine aliases each.
    let mut doc = format!("{HEAD_30}paths: {{}}\nx-a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    let mut prev = 'a';
    for c in 'b'..='j' {
        doc.push_str(&format!("x-{c}: &{c} [{}]\n", vec![format!("*{prev}"); 9].join(", ")));
        prev = c;
    }
    let e = refused("billion laughs", doc);
    assert!(matches!(e, SpecError::Syntax(_)), "{e}");
    assert!(e.to_string().contains("repetition limit"), "{e}");
}

#[test]
fn deep_nesting_is_refused() {
    let n = 100_000;
    let cases = [
        ("JSON [ 10^5", format!("{{\"a\":{}", "[".repeat(n))),
        ("JSON [ 10^5 closed", format!("{{\"a\":{}{}}}", "[".repeat(n), "]".repeat(n))),
        ("JSON { 10^5", "{\"a\":".repeat(n)),
        ("bare [ 10^5", "[".repeat(n)),
        ("YAML flow mappings 10^5", format!("a: {}", "{a: ".repeat(n))),
        ("YAML flow sequences 10^5", format!("{HEAD_30}paths: {}", "[".repeat(n))),
        ("YAML anchored flow 10^4", format!("a: {}", "&x [".repeat(10_000))),
    ];
    for (label, doc) in cases {
        let e = refused(label, doc);
        assert!(matches!(e, SpecError::Syntax(_)), "{label}: {e}");
        let msg = e.to_string();
        assert!(msg.contains("recursion limit") || msg.contains("nested deeper"), "{label}: {msg}");
    }
    // Block nesting needs indentation, so it is quadratic in size: 1,000 levels is ~1 MB.
    let mut block = String::from(HEAD_30);
    for level in 0..1000 {
        block.push_str(&" ".repeat(level));
        block.push_str("x:\n");
    }
    assert!(matches!(refused("YAML block 10^3", block), SpecError::Syntax(_)));
}

/// A schema nested nearly as deep as the parsers allow (128 levels) must parse without
/// exhausting the stack, whatever stack the caller has. (Before parsing moved to a thread
/// of its own, 80 levels of `items` overflowed a 2 MiB stack in a debug build.)
#[test]
fn deepest_accepted_schemas_do_not_overflow() {
    for levels in [60, 100, 120] {
        let schema = format!("{}{{\"type\":\"string\"}}{}", "{\"items\":".repeat(levels), "}".repeat(levels));
        for version in ["3.0.3", "3.1.0"] {
            let doc = format!(
                "{{\"openapi\":\"{version}\",\"info\":{{\"title\":\"t\",\"version\":\"1\"}},\"paths\":{{}},\
                 \"components\":{{\"schemas\":{{\"A\":{schema}}}}}}}"
            );
            let label = format!("items x{levels} in {version}");
            accepted(&label, doc.clone());
            // The same text read as YAML (a document marker first: YAML flow style).
            accepted(&format!("{label} (YAML)"), format!("---\n{doc}\n"));
        }
    }
    // Block-style YAML: `properties` maps add two levels per schema.
    let mut doc = format!("{HEAD_30}paths: {{}}\ncomponents:\n  schemas:\n    A:\n");
    for level in 0..60 {
        doc.push_str(&format!("{}properties:\n{}p:\n", "  ".repeat(3 + 2 * level), "  ".repeat(4 + 2 * level)));
    }
    doc.push_str(&format!("{}type: string\n", "  ".repeat(3 + 2 * 60)));
    accepted("properties x60 (YAML)", doc);
}

#[test]
fn self_referencing_refs_parse() {
    let components = "components:\n  schemas:\n    A: {$ref: '#/components/schemas/A'}\n    B: {properties: {b: {$ref: '#/components/schemas/B'}}}\n";
    let ops = "paths:\n  /a: {get: {responses: {'200': {description: ok, content: {application/json: {schema: {$ref: '#/components/schemas/A'}}}}}}}\n  /loop: {$ref: '#/paths/~1loop'}\n";
    for head in [HEAD_30, HEAD_31] {
        let spec = accepted("self $ref", format!("{head}{ops}{components}"));
        assert_eq!(spec.operations.len(), 1, "the $ref'd path item is not followed");
    }
}

#[test]
fn unsupported_kinds_and_versions_say_so() {
    let cases: &[(&str, &str, &str)] = &[
        ("swagger 2.0", "swagger: '2.0'\ninfo: {title: t, version: '1'}\npaths: {}", "Swagger 2.0"),
        ("openapi 4.0", "openapi: 4.0\ninfo: {title: t, version: '1'}\npaths: {}", "version 4.0 is not supported"),
        (
            "openapi '4.0.0'",
            "openapi: '4.0.0'\ninfo: {title: t, version: '1'}\npaths: {}",
            "version 4.0.0 is not supported",
        ),
        ("openapi 2", "openapi: 2\npaths: {}", "version 2 is not supported"),
        ("no version", "info: {title: t, version: '1'}\npaths: {}", "version field is missing"),
        ("list root", "[]", "a list, not a mapping"),
        ("JSON list root", "[{\"openapi\": \"3.0.0\"}]", "a list, not a mapping"),
        ("string root", "\"x\"", "a string, not a mapping"),
        ("number root", "42", "a number, not a mapping"),
        ("boolean root", "true", "a boolean, not a mapping"),
        ("empty", "", "empty, not a mapping"),
        ("whitespace", "  \n\n", "empty, not a mapping"),
        ("comment only", "# nothing here\n", "empty, not a mapping"),
        ("bare document marker", "---\n", "empty, not a mapping"),
        ("null", "~", "empty, not a mapping"),
    ];
    for (label, doc, want) in cases {
        let e = refused(label, *doc);
        assert!(matches!(e, SpecError::Unsupported(_)), "{label}: {e:?}");
        assert!(e.to_string().contains(want), "{label}: {e}");
    }
    // A version that is not a string or number names the field.
    let e = refused("openapi: [3]", "openapi: [3]\npaths: {}");
    assert!(matches!(&e, SpecError::Invalid { path, .. } if path == "openapi"), "{e:?}");
}

/// `openapi: 3.0` and `openapi: 3.1` unquoted are numbers in YAML; they are read as the
/// versions they spell.
#[test]
fn unquoted_versions_are_read() {
    for head in ["openapi: 3.0\n", "openapi: 3.1\n"] {
        let doc = format!("{head}info: {{title: t, version: '1'}}\npaths: {{/a: {{get: {{responses: {{}}}}}}}}");
        assert_eq!(accepted(head, doc).operations.len(), 1);
    }
}

#[test]
fn binary_garbage_is_refused() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 24) as u8
    };
    for round in 0..16 {
        let mut doc: Vec<u8> = (0..4096).map(|_| next()).collect();
        if round % 2 == 1 {
            doc[0] = b'{';
        }
        if round % 4 == 2 {
            doc.splice(0..0, b"\xef\xbb\xbf".iter().copied());
        }
        refused(&format!("garbage #{round}"), doc);
    }
    for (label, doc) in [
        ("NUL in YAML", format!("{HEAD_30}paths: {{}}\n\0\n").into_bytes()),
        ("NUL in JSON", b"{\"openapi\": \"3.0.3\", \0}".to_vec()),
        ("UTF-16 BOM", b"\xff\xfeo\0p\0e\0n\0".to_vec()),
        ("lone continuation bytes", b"openapi: \x80\x80\x80".to_vec()),
    ] {
        refused(label, doc);
    }
}

#[test]
fn oversized_documents_are_refused_before_parsing() {
    let mut yaml = format!("{HEAD_30}paths: {{}}\n# ").into_bytes();
    yaml.resize(MAX_DOCUMENT_BYTES + 1, b'x');
    let e = refused("64 MiB + 1 of YAML comment", yaml);
    assert!(matches!(e, SpecError::TooLarge(n) if n == MAX_DOCUMENT_BYTES + 1), "{e:?}");
    let mut json = b"{\"x\": \"".to_vec();
    json.resize(MAX_DOCUMENT_BYTES + 10, b'y');
    assert!(matches!(refused("oversized JSON", json), SpecError::TooLarge(_)));
}

#[test]
fn non_scalar_mapping_keys_are_refused() {
    for (label, doc) in [
        ("sequence key at the root", "? [a, b]\n: 1\nopenapi: 3.0.3\n".to_owned()),
        ("mapping key at the root", "? {a: 1}\n: x\nopenapi: 3.0.3\n".to_owned()),
        ("sequence key in paths", format!("{HEAD_30}paths:\n  ? [/a, /b]\n  : {{}}\n")),
        ("flow sequence key", format!("{HEAD_30}paths: {{[/a]: {{}}}}\n")),
    ] {
        let e = refused(label, doc);
        assert!(matches!(e, SpecError::Syntax(_)), "{label}: {e:?}");
        assert!(e.to_string().contains("mapping key is not a scalar"), "{label}: {e}");
    }
    // Scalar keys of other types are read as strings (`200:` → "200").
    let spec = accepted(
        "numeric keys",
        format!("{HEAD_30}paths: {{/a: {{get: {{responses: {{200: {{description: ok}}, true: x}}}}}}}}"),
    );
    assert_eq!(spec.operations.len(), 1);
}

#[test]
fn wrong_types_name_the_place() {
    let cases: &[(&str, String, &str)] = &[
        ("path item is a number", format!("{HEAD_30}paths: {{/a: 5}}"), "paths./a"),
        ("path item is a number (3.1)", format!("{HEAD_31}paths: {{/a: 5}}"), "paths./a"),
        ("path item is a list", format!("{HEAD_30}paths: {{/a: [get]}}"), "paths./a"),
        ("operation is a string", format!("{HEAD_30}paths: {{/a: {{get: x}}}}"), "paths./a.get"),
        ("parameter is a number", format!("{HEAD_30}paths: {{/a: {{parameters: [5]}}}}"), "paths./a.parameters[0]"),
        ("paths is a number", format!("{HEAD_30}paths: 5"), "paths"),
        ("paths is a list", format!("{HEAD_31}paths: []"), "paths"),
        ("info is a string", "openapi: 3.0.3\ninfo: x\npaths: {}".to_owned(), "info"),
        ("servers is a mapping", format!("{HEAD_30}paths: {{}}\nservers: {{url: x}}"), "servers"),
        (
            "dot-dot segment",
            format!("{HEAD_30}paths: {{/a/../admin: {{get: {{responses: {{}}}}}}}}"),
            "paths./a/../admin",
        ),
        (
            "dot segment with a query",
            format!("{HEAD_30}paths: {{'/a/.?x=1': {{get: {{responses: {{}}}}}}}}"),
            "paths./a/.?x=1",
        ),
        ("NUL in a path", format!("{HEAD_30}paths: {{\"/a\\0b\": {{get: {{responses: {{}}}}}}}}"), "paths./a\0b"),
    ];
    for (label, doc, place) in cases {
        match refused(label, doc.clone()) {
            SpecError::Invalid { path, message } => {
                assert_eq!(&path, place, "{label}: {message}");
                assert!(!message.is_empty(), "{label}");
            }
            e => panic!("{label}: {e:?}"),
        }
    }
    let e = refused("missing info", "openapi: 3.0.3\npaths: {}");
    assert!(e.to_string().contains("missing field `info`"), "{e}");
}

/// Documents that look odd but are valid stay valid.
#[test]
fn odd_but_valid_documents_parse() {
    let spec = accepted(
        "dots inside names",
        format!("{HEAD_30}paths: {{/a/.well-known/x: {{get: {{responses: {{}}}}}}, /v1.2/.../b: {{get: {{responses: {{}}}}}}}}"),
    );
    assert_eq!(spec.operations.len(), 2);
    let spec = accepted("no paths at all (3.1)", "openapi: 3.1.0\ninfo: {title: t, version: '1'}\nwebhooks: {}");
    assert!(spec.operations.is_empty());
    let spec = accepted(
        "integers beyond 64 bits",
        format!(
            "{HEAD_31}paths: {{}}\ncomponents: {{schemas: {{A: {{type: integer, minimum: -9223372036854775809}}}}}}"
        ),
    );
    assert!(spec.operations.is_empty());
    let spec = accepted(
        "flow style with quotes and comments",
        format!("{HEAD_30}paths: {{'/a': {{get: {{summary: \"[[[ {{{{ \", responses: {{}}}}}}}} # [[[[\n"),
    );
    assert_eq!(spec.operations[0].summary.as_deref(), Some("[[[ {{ "));
}
