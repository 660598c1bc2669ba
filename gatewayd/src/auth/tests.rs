//! The token rules, with injected time: attenuation never widens, expiry, foreign keys,
//! revocation, tampering, sealing, hostile Datalog, visibility, and no token in errors.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant, SystemTime};

use agentfs::path::VPath;
use biscuit_auth::builder::BlockBuilder;
use biscuit_auth::format::SerializedBiscuit;
use biscuit_auth::UnverifiedBiscuit;

use super::authorize::{self, run};
use super::token::{attenuate, inspect, mint, parse_ttl, seal};
use super::*;

const SVC: &str = "api.example.test";

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

fn req(service: Option<&str>, path: &str, op: Op) -> Request {
    Request { service: service.map(str::to_owned), path: path.to_owned(), operation: op, now: t0() }
}

fn never(_: &[Vec<u8>]) -> bool {
    false
}

fn auth(root: &RootKey, token: &str, r: &Request) -> Result<AgentId, AuthError> {
    authorize::authorize(&root.public(), token, r, &never)
}

fn allows(specs: &[&str]) -> Vec<Allow> {
    specs.iter().map(|s| s.parse().unwrap()).collect()
}

/// Appends a hand-written block, as any holder of a token can.
fn append_code(token: &str, code: &str) -> String {
    let block = BlockBuilder::new().code(code).unwrap();
    UnverifiedBiscuit::from_base64(token).unwrap().append(block).unwrap().to_base64().unwrap()
}

fn b64(bytes: &[u8]) -> String {
    UnverifiedBiscuit::from(bytes).unwrap().to_base64().unwrap()
}

#[test]
fn a_minted_token_allows_everything_and_names_its_agent() {
    let root = RootKey::generate();
    let token = mint(&root, "a1", t0()).unwrap();
    for (svc, path, op) in [
        (Some(SVC), "/models", Op::Read),
        (Some("other.test"), "/x.d/1", Op::Delete),
        (None, "/", Op::List),
        (None, "/README.md", Op::Read),
    ] {
        assert_eq!(auth(&root, &token, &req(svc, path, op)).unwrap().as_str(), "a1");
    }
    assert!(matches!(mint(&root, "bad name", t0()), Err(AuthError::InvalidAgent(_))));
    assert!(matches!(mint(&root, "", t0()), Err(AuthError::InvalidAgent(_))));
}

#[test]
fn an_allow_covers_its_prefix_and_nothing_else() {
    let root = RootKey::generate();
    let full = mint(&root, "a1", t0()).unwrap();
    let token = attenuate(&full, &allows(&["api.example.test:read/models"]), None, t0()).unwrap();
    let ok = |svc: Option<&str>, path: &str, op: Op| auth(&root, &token, &req(svc, path, op)).is_ok();

    for path in ["/models", "/models.d", "/models.d/gpt-4o", "/models?limit=5", "/models.json", "/models/x"] {
        assert!(ok(Some(SVC), path, Op::Read), "read {path}");
        assert!(ok(Some(SVC), path, Op::Lookup), "lookup {path}");
    }
    assert!(ok(Some(SVC), "/models.d", Op::List), "read implies list");
    for path in ["/chat", "/models-x", "/modelsx", "/", "/mod"] {
        assert!(!ok(Some(SVC), path, Op::Read), "read {path}");
    }
    for op in [Op::Write, Op::Delete, Op::Run] {
        assert!(!ok(Some(SVC), "/models", op), "{op}");
    }
    assert!(!ok(Some("other.test"), "/models", Op::Read));
    // The way there: the mount root, the service folder.
    assert!(ok(None, "/", Op::List) && ok(None, "/", Op::Lookup));
    assert!(ok(Some(SVC), "/", Op::List) && ok(Some(SVC), "/", Op::Lookup));
    assert!(!ok(Some(SVC), "/", Op::Read));
    // Generated files beside the services are not reachable.
    assert!(!ok(None, "/README.md", Op::Read) && !ok(None, "/README.md", Op::Lookup));
}

#[test]
fn listings_show_only_what_the_token_can_reach() {
    let root = RootKey::generate();
    let full = mint(&root, "a1", t0()).unwrap();
    let token = attenuate(&full, &allows(&["api.example.test:read/models"]), None, t0()).unwrap();
    let vis = |svc: Option<&str>, path: &str| authorize::visible(&root.public(), &token, svc, path, t0(), &never);
    assert!(vis(None, "/"));
    assert!(vis(Some(SVC), "/"));
    assert!(vis(Some(SVC), "/models"));
    assert!(vis(Some(SVC), "/models.d"));
    assert!(vis(Some(SVC), "/models.d/gpt-4o"));
    assert!(!vis(Some(SVC), "/chat"));
    assert!(!vis(Some(SVC), "/chat.d"));
    assert!(!vis(Some("other.test"), "/"));

    // A deep prefix: its ancestors are listable, its siblings are not.
    let deep = attenuate(&full, &allows(&["api.example.test:write/repos/o/r.d/issues"]), None, t0()).unwrap();
    let ok = |path: &str, op: Op| auth(&root, &deep, &req(Some(SVC), path, op)).is_ok();
    for dir in ["/", "/repos", "/repos/o", "/repos/o/r.d"] {
        assert!(ok(dir, Op::List) && ok(dir, Op::Lookup), "{dir}");
        assert!(!ok(dir, Op::Write), "{dir}");
    }
    assert!(!ok("/repos/o/r", Op::Lookup), "the sibling file r is not on the way");
    assert!(ok("/repos/o/r.d/issues", Op::Write) && ok("/repos/o/r.d/issues", Op::Lookup));
    assert!(!ok("/repos/o/r.d/issues", Op::Read), "write does not imply read");
    assert!(!ok("/repos/o/r.d/issues.d", Op::List), "write does not imply list");
    assert!(!ok("/repos/o/r.d/pulls", Op::Lookup));
}

#[test]
fn several_allows_are_a_union_and_blocks_an_intersection() {
    let root = RootKey::generate();
    let full = mint(&root, "a1", t0()).unwrap();
    let t1 = attenuate(&full, &allows(&["api.example.test:read", "b.test:write/x"]), None, t0()).unwrap();
    let ok = |t: &str, svc: &str, path: &str, op: Op| auth(&root, t, &req(Some(svc), path, op)).is_ok();
    assert!(ok(&t1, SVC, "/anything", Op::Read) && ok(&t1, "b.test", "/x", Op::Write));
    assert!(!ok(&t1, SVC, "/anything", Op::Write) && !ok(&t1, "b.test", "/y", Op::Write));

    // A second block that "allows" everything cannot exceed the first.
    let t2 = attenuate(&t1, &allows(&["*"]), None, t0()).unwrap();
    assert!(ok(&t2, SVC, "/anything", Op::Read));
    assert!(!ok(&t2, SVC, "/anything", Op::Write));
    assert!(!ok(&t2, "c.test", "/", Op::Lookup));

    // Narrower again: only the intersection remains.
    let t3 = attenuate(&t2, &allows(&["api.example.test:read,write/a"]), None, t0()).unwrap();
    assert!(ok(&t3, SVC, "/a", Op::Read));
    assert!(!ok(&t3, SVC, "/b", Op::Read) && !ok(&t3, SVC, "/a", Op::Write) && !ok(&t3, "b.test", "/x", Op::Write));

    // `*` with operations: every service, read only.
    let ro = attenuate(&full, &allows(&["*:read"]), None, t0()).unwrap();
    assert!(ok(&ro, "z.test", "/q", Op::Read) && !ok(&ro, "z.test", "/q", Op::Write));
}

#[test]
fn facts_in_appended_blocks_grant_nothing() {
    let root = RootKey::generate();
    let full = mint(&root, "a1", t0()).unwrap();
    let narrow = attenuate(&full, &allows(&["api.example.test:read/models"]), None, t0()).unwrap();
    let forged = append_code(
        &narrow,
        r#"agent("root"); right("api.stripe.com", "write"); service("api.stripe.com"); operation("read");
           path("/models"); time(2000-01-01T00:00:00Z); mount_root(true);"#,
    );
    let r = req(Some("api.stripe.com"), "/charges", Op::Write);
    assert!(matches!(auth(&root, &forged, &r), Err(AuthError::Denied)));
    // Still the same agent where it is allowed: the policy reads the authority block only.
    let agent = auth(&root, &forged, &req(Some(SVC), "/models", Op::Read)).unwrap();
    assert_eq!(agent.as_str(), "a1");

    // A block with a rule deriving agent() cannot satisfy the policy either.
    let t = mint(&root, "a2", t0()).unwrap();
    let blocked = attenuate(&t, &allows(&["x.test:read"]), None, t0()).unwrap();
    let ruled = append_code(&blocked, r#"agent("root") <- operation($op);"#);
    assert!(auth(&root, &ruled, &req(Some(SVC), "/", Op::Read)).is_err());
}

#[test]
fn an_expired_token_is_refused_and_time_is_required() {
    let root = RootKey::generate();
    let full = mint(&root, "a1", t0()).unwrap();
    let token = attenuate(&full, &[], Some(Duration::from_secs(3600)), t0()).unwrap();
    let at = |secs: u64, with_time: bool| {
        let mut r = req(Some(SVC), "/models", Op::Read);
        r.now = t0() + Duration::from_secs(secs);
        run(&root.public(), &token, &r, &never, with_time)
    };
    assert!(at(0, true).is_ok());
    assert!(at(3600, true).is_ok());
    assert!(matches!(at(3601, true), Err(AuthError::Expired)));
    assert!(matches!(at(86_400, true), Err(AuthError::Expired)));
    // An authorizer that forgot the time fact denies (the check cannot be satisfied).
    assert!(at(0, false).is_err());
    // A token without a time limit does not depend on the time fact.
    let r = req(Some(SVC), "/models", Op::Read);
    assert!(run(&root.public(), &full, &r, &never, false).is_ok());

    // A time fact in a later block is not seen by an earlier block's expiry check.
    let faked = append_code(&token, "time(2000-01-01T00:00:00Z);");
    let mut late = req(Some(SVC), "/models", Op::Read);
    late.now = t0() + Duration::from_secs(7200);
    assert!(matches!(auth(&root, &faked, &late), Err(AuthError::Expired)));

    // The earliest limit wins, whatever the order of blocks.
    let longer = attenuate(&token, &[], Some(Duration::from_secs(7200)), t0()).unwrap();
    let mut r = req(Some(SVC), "/models", Op::Read);
    r.now = t0() + Duration::from_secs(5000);
    assert!(matches!(auth(&root, &longer, &r), Err(AuthError::Expired)));
}

#[test]
fn usable_says_whether_a_token_can_do_anything_whatever_it_allows() {
    let dir = tempfile::tempdir().unwrap();
    let conn = crate::db::open(&dir.path().join("t.db")).unwrap();
    let authority = Authority::new(RootKey::generate(), RevocationList::default());
    let full = authority.mint("a1", t0()).unwrap();
    let at = |secs: u64| t0() + Duration::from_secs(secs);
    // Usable however little it allows: the rights are each path's business.
    let narrow = attenuate(&full, &allows(&["nothing.test:read"]), Some(Duration::from_secs(3600)), t0()).unwrap();
    assert!(authority.usable(&full, at(86_400 * 365)).is_ok());
    assert!(authority.usable(&narrow, at(0)).is_ok());
    assert!(authority.usable(&narrow, at(3600)).is_ok());
    // The earliest expiry of its blocks, as the Datalog decides it.
    assert!(matches!(authority.usable(&narrow, at(3601)), Err(AuthError::Expired)));
    let longer = attenuate(&narrow, &[], Some(Duration::from_secs(7200)), t0()).unwrap();
    assert!(matches!(authority.usable(&longer, at(5000)), Err(AuthError::Expired)));
    // Not issued here, not a token, revoked.
    let foreign = mint(&RootKey::generate(), "a1", t0()).unwrap();
    assert!(matches!(authority.usable(&foreign, at(0)), Err(AuthError::NotIssuedHere)));
    assert!(matches!(authority.usable("not-a-token", at(0)), Err(AuthError::Malformed)));
    authority.revoke(&conn, &narrow, RevokeScope::Token, t0()).unwrap();
    assert!(matches!(authority.usable(&narrow, at(0)), Err(AuthError::Revoked)));
    assert!(authority.usable(&full, at(0)).is_ok(), "its parent is not revoked");
}

#[test]
fn a_token_from_another_root_key_is_refused() {
    let ours = RootKey::generate();
    let theirs = RootKey::generate();
    let token = mint(&theirs, "a1", t0()).unwrap();
    let r = req(Some(SVC), "/models", Op::Read);
    assert!(matches!(auth(&ours, &token, &r), Err(AuthError::NotIssuedHere)));
    let attenuated = attenuate(&token, &allows(&["api.example.test"]), None, t0()).unwrap();
    assert!(matches!(auth(&ours, &attenuated, &r), Err(AuthError::NotIssuedHere)));
    assert!(auth(&theirs, &attenuated, &r).is_ok());
}

#[test]
fn removed_reordered_or_spliced_blocks_fail_the_signature() {
    let root = RootKey::generate();
    let full = mint(&root, "a1", t0()).unwrap();
    let t1 = attenuate(&full, &allows(&["api.example.test:read/models"]), None, t0()).unwrap();
    let t2 = attenuate(&t1, &[], Some(Duration::from_secs(60)), t0()).unwrap();
    let raw = |t: &str| SerializedBiscuit::from_slice(&decode(t), root.public()).unwrap();
    let r = req(Some(SVC), "/chat", Op::Write);

    let mut removed = raw(&t2);
    removed.blocks.pop();
    let removed = b64(&removed.to_vec().unwrap());
    assert!(matches!(auth(&root, &removed, &r), Err(AuthError::NotIssuedHere | AuthError::Malformed)));

    let mut reordered = raw(&t2);
    reordered.blocks.swap(0, 1);
    let reordered = b64(&reordered.to_vec().unwrap());
    assert!(matches!(auth(&root, &reordered, &r), Err(AuthError::NotIssuedHere | AuthError::Malformed)));

    // A block taken from another token of the same gateway.
    let other = attenuate(&mint(&root, "a2", t0()).unwrap(), &allows(&["*"]), None, t0()).unwrap();
    let mut spliced = raw(&t1);
    spliced.blocks[0] = raw(&other).blocks[0].clone();
    let spliced = b64(&spliced.to_vec().unwrap());
    assert!(matches!(auth(&root, &spliced, &r), Err(AuthError::NotIssuedHere | AuthError::Malformed)));

    // Dropping every attenuation block to get back the full token is the same failure.
    let mut stripped = raw(&t2);
    stripped.blocks.clear();
    let stripped = b64(&stripped.to_vec().unwrap());
    assert!(matches!(auth(&root, &stripped, &r), Err(AuthError::NotIssuedHere | AuthError::Malformed)));
}

/// URL-safe base64 (with or without padding) to bytes, for tampering in tests.
fn decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' | b'+' => 62,
        _ => 63,
    };
    let digits: Vec<u8> = s.bytes().filter(|c| *c != b'=').map(val).collect();
    let mut out = Vec::new();
    for chunk in digits.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, d)| acc | (u32::from(*d) << (18 - 6 * i)));
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

#[test]
fn a_revoked_token_is_refused_and_its_parent_survives() {
    let dir = tempfile::tempdir().unwrap();
    let conn = crate::db::open(&dir.path().join("t.db")).unwrap();
    let authority = Authority::new(RootKey::generate(), RevocationList::default());
    let full = authority.mint("a1", t0()).unwrap();
    let child = attenuate(&full, &allows(&["api.example.test:read"]), None, t0()).unwrap();
    let grandchild = attenuate(&child, &[], Some(Duration::from_secs(60)), t0()).unwrap();
    let r = req(Some(SVC), "/models", Op::Read);

    assert_eq!(authority.revoke(&conn, &child, RevokeScope::Token, t0()).unwrap(), 1);
    assert_eq!(authority.revoke(&conn, &child, RevokeScope::Token, t0()).unwrap(), 0, "already revoked");
    assert!(matches!(authority.authorize(&child, &r), Err(AuthError::Revoked)));
    assert!(matches!(authority.authorize(&grandchild, &r), Err(AuthError::Revoked)), "derived tokens too");
    assert!(authority.authorize(&full, &r).is_ok(), "the parent keeps working");
    assert!(revocation::is_revoked(&conn, &child).unwrap());
    assert!(!revocation::is_revoked(&conn, &full).unwrap());
    assert_eq!(authority.inspect(&child).unwrap().revoked, Some(true));

    // The list survives a restart (it is loaded from the database).
    let reloaded = RevocationList::load(&conn).unwrap();
    assert!(reloaded.any_revoked(&UnverifiedBiscuit::from_base64(&child).unwrap().revocation_identifiers()));

    // Lineage: the whole family, from the minted token down.
    let other = attenuate(&full, &allows(&["b.test"]), None, t0()).unwrap();
    assert!(authority.revoke(&conn, &other, RevokeScope::Lineage, t0()).unwrap() >= 1);
    assert!(matches!(authority.authorize(&full, &r), Err(AuthError::Revoked)));

    // Tokens of another gateway are not recorded.
    let foreign = mint(&RootKey::generate(), "x", t0()).unwrap();
    assert!(matches!(authority.revoke(&conn, &foreign, RevokeScope::Token, t0()), Err(AuthError::NotIssuedHere)));
}

#[test]
fn a_sealed_token_cannot_be_attenuated() {
    let root = RootKey::generate();
    let full = mint(&root, "a1", t0()).unwrap();
    let narrow = attenuate(&full, &allows(&["api.example.test:read"]), None, t0()).unwrap();
    let sealed = seal(&narrow).unwrap();
    assert!(auth(&root, &sealed, &req(Some(SVC), "/m", Op::Read)).is_ok());
    assert!(auth(&root, &sealed, &req(Some(SVC), "/m", Op::Write)).is_err());
    let err = attenuate(&sealed, &allows(&["*"]), None, t0()).unwrap_err();
    assert!(matches!(err, AuthError::Sealed), "{err}");
    assert!(matches!(seal(&sealed), Err(AuthError::Sealed)));
}

#[test]
fn hostile_datalog_is_bounded_not_hung() {
    let root = RootKey::generate();
    let full = mint(&root, "a1", t0()).unwrap();
    let r = req(Some(SVC), "/models", Op::Read);
    let timed = |token: &str| {
        let start = Instant::now();
        let res = auth(&root, token, &r);
        assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
        res
    };

    // Recursion: a transitive closure over a chain, stopped by the fact or iteration limit.
    let chain: String = (0..24).map(|i| format!("e({i}, {}); ", i + 1)).collect();
    let recursive =
        append_code(&full, &format!("{chain} reach($x, $y) <- e($x, $y); reach($x, $z) <- e($x, $y), reach($y, $z);"));
    assert!(matches!(timed(&recursive), Err(AuthError::Limits)), "{:?}", timed(&recursive));

    // A rule whose facts multiply: 10 facts, 1000 derived.
    let ten: String = (0..10).map(|i| format!("p({i}); ")).collect();
    let product = append_code(&full, &format!("{ten} q($a, $b, $c) <- p($a), p($b), p($c);"));
    assert!(matches!(timed(&product), Err(AuthError::Limits)));

    // A cross product: refused before it runs.
    let facts: String = (0..30).map(|i| format!("p({i}); ")).collect();
    let cross = append_code(&full, &format!("{facts} q($a, $b, $c, $d) <- p($a), p($b), p($c), p($d);"));
    assert!(matches!(timed(&cross), Err(AuthError::TooComplex(_))));
    let join = append_code(&full, &format!("{facts} check if p($a), p($b), p($c), p($d), $a + $b + $c + $d == -1;"));
    assert!(matches!(timed(&join), Err(AuthError::TooComplex(_))));

    // Too many facts, too many rules, too long a body.
    let many: String = (0..40).map(|i| format!("f({i}); ")).collect();
    assert!(matches!(timed(&append_code(&full, &many)), Err(AuthError::TooComplex(_))));
    let rules: String = (0..9).map(|i| format!("r{i}($x) <- agent($x); ")).collect();
    assert!(matches!(timed(&append_code(&full, &rules)), Err(AuthError::TooComplex(_))));
    let long = append_code(&full, "check if time($a), time($b), time($c), time($d), time($e);");
    assert!(matches!(timed(&long), Err(AuthError::TooComplex(_))));

    // Too many blocks.
    let mut deep = full.clone();
    for _ in 1..authorize::MAX_BLOCKS {
        deep = attenuate(&deep, &allows(&["*"]), None, t0()).unwrap();
    }
    assert!(timed(&deep).is_ok());
    assert!(matches!(attenuate(&deep, &allows(&["*"]), None, t0()), Err(AuthError::TooComplex(_))));

    // An expression error (a type mismatch) fails closed.
    let bad_type = append_code(&full, r#"check if operation($op), $op > 3;"#);
    assert!(timed(&bad_type).is_err());

    // Oversized and garbage tokens.
    assert!(matches!(timed(&"A".repeat(authorize::MAX_TOKEN_BYTES + 1)), Err(AuthError::TooLarge(_))));
    assert!(matches!(timed("not a token"), Err(AuthError::Malformed)));
    assert!(matches!(timed(""), Err(AuthError::Malformed)));
}

#[test]
fn a_token_never_appears_in_errors() {
    let root = RootKey::generate();
    let full = mint(&root, "a1", t0()).unwrap();
    let narrow =
        attenuate(&full, &allows(&["api.example.test:read/models"]), Some(Duration::from_secs(1)), t0()).unwrap();
    let sealed = seal(&narrow).unwrap();
    let mut tail_cut = narrow.clone();
    tail_cut.truncate(narrow.len() - 7);
    let mut flipped = narrow.clone().into_bytes();
    let mid = flipped.len() / 2;
    flipped[mid] = if flipped[mid] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let mut late = req(Some(SVC), "/models", Op::Read);
    late.now = t0() + Duration::from_secs(10);

    let errors: Vec<(String, AuthError)> = vec![
        (narrow.clone(), auth(&root, &narrow, &req(Some(SVC), "/chat", Op::Write)).unwrap_err()),
        (narrow.clone(), auth(&root, &narrow, &late).unwrap_err()),
        (narrow.clone(), auth(&RootKey::generate(), &narrow, &late).unwrap_err()),
        (narrow.clone(), authorize::authorize(&root.public(), &narrow, &late, &|_| true).unwrap_err()),
        (tail_cut.clone(), auth(&root, &tail_cut, &late).unwrap_err()),
        (flipped.clone(), auth(&root, &flipped, &late).unwrap_err()),
        (sealed.clone(), attenuate(&sealed, &allows(&["*"]), None, t0()).unwrap_err()),
        (tail_cut.clone(), inspect(&tail_cut, None).unwrap_err()),
    ];
    for (token, err) in errors {
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(text.starts_with("auth:") || text.starts_with(|c: char| c.is_ascii_uppercase()), "{text}");
            // No 12-character window of the token is quoted.
            for w in token.as_bytes().windows(12).step_by(3) {
                assert!(!text.contains(std::str::from_utf8(w).unwrap()), "{text}");
            }
        }
        assert!(err.to_string().starts_with("auth:"), "{err}");
    }
}

#[test]
fn allows_parse_display_and_refuse_nonsense() {
    let a: Allow = "API.Example.test:read/models/".parse().unwrap();
    assert_eq!(a.service(), Some("api.example.test"));
    assert_eq!(a.prefix(), "/models");
    assert_eq!(a.ops().iter().map(|o| o.as_str()).collect::<Vec<_>>(), ["lookup", "list", "read"]);
    assert_eq!(a.to_string(), "api.example.test:read/models");

    for (spec, shown) in [
        ("api.example.test", "api.example.test"),
        ("localhost:8080", "localhost:8080"),
        ("localhost:8080:write,delete/pets", "localhost:8080:write,delete/pets"),
        ("127.0.0.1:9:list", "127.0.0.1:9:list"),
        ("*:read", "*:read"),
        ("*", "*"),
        ("a.test:read,list,write,delete,run", "a.test"),
        ("a.test:list,read", "a.test:read"),
        ("a.test/models.d/gpt-4o", "a.test/models.d/gpt-4o"),
        ("a.test//x//y", "a.test/x/y"),
    ] {
        let parsed: Allow = spec.parse().unwrap();
        assert_eq!(parsed.to_string(), shown, "{spec}");
        assert_eq!(shown.parse::<Allow>().unwrap(), parsed, "{spec} round trip");
    }
    for (spec, needle) in [
        ("", "not a domain"),
        ("a.test:", "empty list"),
        ("a.test:frobnicate", "unknown operation"),
        ("a.test:lookup", "unknown operation"),
        ("a.test:read,", "unknown operation"),
        ("a.test/../etc", "path:"),
        ("a.test/x\u{1}", "path:"),
        ("a test", "not a domain"),
        (".a.test", "not a domain"),
        ("/models", "not a domain"),
    ] {
        let err = spec.parse::<Allow>().unwrap_err().to_string();
        assert!(err.starts_with("auth: invalid allow") && err.contains(needle), "{spec}: {err}");
    }
}

#[test]
fn inspect_describes_blocks_and_verifies_with_a_key() {
    let root = RootKey::generate();
    let full = mint(&root, "a1", t0()).unwrap();
    let narrow =
        attenuate(&full, &allows(&["api.example.test:read/models", "*:list"]), Some(Duration::from_secs(3600)), t0())
            .unwrap();
    let custom = append_code(&narrow, r#"check if operation("read");"#);

    let info = inspect(&custom, Some(&root.public())).unwrap();
    assert!(info.verified);
    assert_eq!(info.revoked, None);
    assert_eq!(info.agent.as_deref(), Some("a1"));
    assert_eq!(info.issued_at, Some(1_750_000_000));
    assert_eq!(info.expires_at, Some(1_750_003_600));
    assert_eq!(info.blocks.len(), 3);
    assert!(!info.blocks[0].custom && info.blocks[0].rights[0].contains("every operation"));
    assert!(!info.blocks[1].custom, "{:?}", info.blocks[1]);
    assert_eq!(
        info.blocks[1].rights,
        vec!["only api.example.test:read/models or *:list".to_owned(), format!("until {}", rfc3339(1_750_003_600))]
    );
    assert!(info.blocks[2].custom && info.blocks[2].source.contains("operation(\"read\")"));
    let ids: Vec<&str> = info.blocks.iter().map(|b| b.revocation_id.as_str()).collect();
    assert!(ids.iter().all(|id| id.len() == 128 && id.chars().all(|c| c.is_ascii_hexdigit())), "{ids:?}");

    assert!(!inspect(&custom, None).unwrap().verified);
    assert!(!inspect(&custom, Some(&RootKey::generate().public())).unwrap().verified);
}

#[test]
fn requests_are_canonical() {
    let p = VPath::parse("/api.example.test/models.d/gpt-4o").unwrap();
    let r = Request::new(&p, Op::Read, t0());
    assert_eq!((r.service.as_deref(), r.path.as_str()), (Some(SVC), "/models.d/gpt-4o"));
    let r = Request::new(&VPath::parse("/api.example.test").unwrap(), Op::Lookup, t0());
    assert_eq!((r.service.as_deref(), r.path.as_str()), (Some(SVC), "/"));
    let r = Request::new(&VPath::root(), Op::List, t0());
    assert_eq!((r.service.as_deref(), r.path.as_str()), (None, "/"));
    let r = Request::at_root(&VPath::parse("/README.md").unwrap(), Op::Read, t0());
    assert_eq!((r.service.as_deref(), r.path.as_str()), (None, "/README.md"));

    let root = RootKey::generate();
    let full = mint(&root, "a1", t0()).unwrap();
    for (svc, path) in [(Some(SVC), "/models/../chat"), (Some(SVC), "models"), (Some(SVC), "/a//b"), (Some("a/b"), "/")]
    {
        assert!(matches!(auth(&root, &full, &req(svc, path, Op::Read)), Err(AuthError::InvalidRequest(_))), "{path}");
    }
}

#[test]
fn ttls_parse() {
    assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
    assert_eq!(parse_ttl("1h30m").unwrap(), Duration::from_secs(5400));
    assert_eq!(parse_ttl("90s").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_ttl("2d").unwrap(), Duration::from_secs(172_800));
    for bad in ["", "1", "h", "1x", "-1h", "99999999999999999999d"] {
        assert!(parse_ttl(bad).is_err(), "{bad}");
    }
}

#[test]
fn an_authorization_is_fast() {
    let root = RootKey::generate();
    let full = mint(&root, "a1", t0()).unwrap();
    let token = attenuate(
        &full,
        &allows(&["api.example.test:read/models", "b.test:write"]),
        Some(Duration::from_secs(60)),
        t0(),
    )
    .unwrap();
    let start = Instant::now();
    for _ in 0..100 {
        assert!(auth(&root, &token, &req(Some(SVC), "/models.d/x", Op::Read)).is_ok());
    }
    let each = start.elapsed() / 100;
    assert!(each < Duration::from_millis(20), "{each:?} per authorization");
}

/// URL-safe base64 with padding, as biscuit writes it.
fn encode(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn biscuit_sample_vectors_with_bad_signatures_are_refused() {
    let root = biscuit_auth::PublicKey::from_bytes_hex(
        "1055c750b1a1505937af1537c626ba3263995c33a64758aaafb1275b0312e284",
        biscuit_auth::builder::Algorithm::Ed25519,
    )
    .unwrap();
    let sample = |name: &str| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/biscuit-samples").join(name);
        encode(&std::fs::read(path).unwrap())
    };
    assert_eq!(
        decode(&sample("test001_basic.bc")),
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/biscuit-samples/test001_basic.bc")
        )
        .unwrap()
    );
    // A well-signed token verifies, but grants nothing here: it names no agent.
    let basic = sample("test001_basic.bc");
    authorize::verify(&root, &basic).unwrap();
    assert!(matches!(
        authorize::authorize(&root, &basic, &req(Some(SVC), "/", Op::Read), &never),
        Err(AuthError::Denied)
    ));
    for name in [
        "test002_different_root_key.bc",
        "test003_invalid_signature_format.bc",
        "test004_random_block.bc",
        "test005_invalid_signature.bc",
        "test006_reordered_blocks.bc",
    ] {
        let err = authorize::authorize(&root, &sample(name), &req(Some(SVC), "/", Op::Read), &never).unwrap_err();
        assert!(matches!(err, AuthError::NotIssuedHere | AuthError::Malformed), "{name}: {err}");
    }
}

#[test]
fn third_party_blocks_are_refused() {
    let root = RootKey::generate();
    let full = mint(&root, "a1", t0()).unwrap();
    let token = UnverifiedBiscuit::from_base64(&full).unwrap();
    let third = biscuit_auth::KeyPair::new();
    let block = token
        .third_party_request()
        .unwrap()
        .create_block(&third.private(), BlockBuilder::new().code(r#"note("from a third party")"#).unwrap())
        .unwrap();
    let with_third = token.append_third_party(&block.serialize().unwrap()).unwrap().to_base64().unwrap();
    let err = auth(&root, &with_third, &req(Some(SVC), "/m", Op::Read)).unwrap_err();
    assert!(matches!(err, AuthError::ThirdParty), "{err}");
    assert!(auth(&root, &full, &req(Some(SVC), "/m", Op::Read)).is_ok());
}

mod verified_cache {
    //! The cache of verified tokens: bounded, least recently used out first, and never a way
    //! around revocation, expiry, attenuation or a foreign key.
    use super::*;
    use crate::auth::cache::VerifiedTokens;

    fn authority(root: RootKey) -> Authority {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::db::open(&dir.path().join("t.db")).unwrap();
        Authority::new(root, RevocationList::load(&conn).unwrap())
    }

    #[test]
    fn it_keeps_at_most_its_capacity_and_evicts_the_least_recently_used() {
        let root = RootKey::generate();
        let cache = VerifiedTokens::new(2);
        let [a, b, c] = ["a", "b", "c"].map(|n| mint(&root, n, t0()).unwrap());
        cache.get_or_verify(&root.public(), &a).unwrap();
        cache.get_or_verify(&root.public(), &b).unwrap();
        // Using `a` again makes `b` the least recently used.
        assert_eq!(cache.get_or_verify(&root.public(), &a).unwrap().agent.as_deref(), Some("a"));
        cache.get_or_verify(&root.public(), &c).unwrap();
        assert_eq!(cache.len(), 2);
        assert!(cache.contains(&a) && cache.contains(&c) && !cache.contains(&b));
        // An evicted token verifies again, and evicts the next oldest.
        assert_eq!(cache.get_or_verify(&root.public(), &b).unwrap().agent.as_deref(), Some("b"));
        assert!(cache.contains(&b) && cache.contains(&c) && !cache.contains(&a));
    }

    #[test]
    fn a_token_that_fails_to_verify_is_not_kept() {
        let root = RootKey::generate();
        let other = RootKey::generate();
        let cache = VerifiedTokens::new(4);
        let foreign = mint(&other, "a", t0()).unwrap();
        assert!(matches!(cache.get_or_verify(&root.public(), &foreign), Err(AuthError::NotIssuedHere)));
        assert!(matches!(cache.get_or_verify(&root.public(), "garbage"), Err(AuthError::Malformed)));
        assert!(cache.is_empty());
    }

    #[test]
    fn revocation_is_honoured_for_a_token_already_cached() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::db::open(&dir.path().join("t.db")).unwrap();
        let a = Authority::new(RootKey::generate(), RevocationList::load(&conn).unwrap());
        let token = a.mint("a1", t0()).unwrap();
        let r = req(Some(SVC), "/models", Op::Read);
        assert_eq!(a.authorize(&token, &r).unwrap().as_str(), "a1");
        assert!(a.verified_tokens().contains(&token));
        a.revoke(&conn, &token, RevokeScope::Token, t0()).unwrap();
        assert!(a.verified_tokens().contains(&token), "still cached, and still refused:");
        assert!(matches!(a.authorize(&token, &r), Err(AuthError::Revoked)));
        assert!(!a.visible(&token, Some(SVC), "/models", t0()));
    }

    #[test]
    fn expiry_is_evaluated_with_each_requests_time_for_a_cached_token() {
        let a = authority(RootKey::generate());
        let full = a.mint("a1", t0()).unwrap();
        let short = attenuate(&full, &[], Some(Duration::from_secs(60)), t0()).unwrap();
        let at = |secs: u64| Request { now: t0() + Duration::from_secs(secs), ..req(Some(SVC), "/models", Op::Read) };
        assert!(a.authorize(&short, &at(0)).is_ok());
        assert!(a.verified_tokens().contains(&short));
        assert!(matches!(a.authorize(&short, &at(61)), Err(AuthError::Expired)));
        assert!(a.authorize(&short, &at(30)).is_ok(), "the same cached token, an earlier time");
    }

    #[test]
    fn attenuation_is_evaluated_per_request_for_a_cached_token() {
        let a = authority(RootKey::generate());
        let full = a.mint("a1", t0()).unwrap();
        let ro = attenuate(&full, &allows(&["api.example.test:read/models"]), None, t0()).unwrap();
        assert!(a.authorize(&ro, &req(Some(SVC), "/models", Op::Read)).is_ok());
        assert!(matches!(a.authorize(&ro, &req(Some(SVC), "/models", Op::Write)), Err(AuthError::Denied)));
        assert!(matches!(a.authorize(&ro, &req(Some(SVC), "/chat", Op::Read)), Err(AuthError::Denied)));
        assert_eq!(a.claimed_agent(&ro).as_deref(), Some("a1"));
        // A foreign token still names whom it claims to be, and is refused.
        let foreign = mint(&RootKey::generate(), "mallory", t0()).unwrap();
        assert_eq!(a.claimed_agent(&foreign).as_deref(), Some("mallory"));
        assert!(matches!(a.authorize(&foreign, &req(Some(SVC), "/models", Op::Read)), Err(AuthError::NotIssuedHere)));
        assert!(!a.verified_tokens().contains(&foreign));
    }

    #[test]
    fn decisions_are_kept_per_request_and_second_and_bounded() {
        let a = authority(RootKey::generate());
        let full = a.mint("a1", t0()).unwrap();
        let ro = attenuate(&full, &allows(&["api.example.test:read/models"]), None, t0()).unwrap();
        let read = req(Some(SVC), "/models", Op::Read);
        let write = req(Some(SVC), "/models", Op::Write);
        assert!(a.authorize(&ro, &read).is_ok());
        assert!(matches!(a.authorize(&ro, &write), Err(AuthError::Denied)));
        let decisions = || a.verified_tokens().get_or_verify(&a.public_key(), &ro).unwrap().decisions.len();
        assert_eq!(decisions(), 2);
        // The same answers from the kept decisions, in the same second.
        assert!(a.authorize(&ro, &read).is_ok());
        assert!(matches!(a.authorize(&ro, &write), Err(AuthError::Denied)));
        assert_eq!(decisions(), 2);
        // Bounded.
        for i in 0..crate::auth::cache::DECISIONS_PER_TOKEN + 3 {
            let _ = a.authorize(&ro, &req(Some(SVC), &format!("/models.d/{i}"), Op::Read));
        }
        assert!(decisions() <= crate::auth::cache::DECISIONS_PER_TOKEN, "{}", decisions());
    }

    #[test]
    fn a_kept_decision_is_not_used_in_another_second() {
        let a = authority(RootKey::generate());
        let full = a.mint("a1", t0()).unwrap();
        // Expires at t0 + 1 s: allowed during the second t0, refused two seconds later.
        let short = attenuate(&full, &[], Some(Duration::from_secs(1)), t0()).unwrap();
        let at = |ms: u64| Request { now: t0() + Duration::from_millis(ms), ..req(Some(SVC), "/models", Op::Read) };
        assert!(a.authorize(&short, &at(0)).is_ok());
        assert!(a.authorize(&short, &at(999)).is_ok(), "the same second");
        assert!(matches!(a.authorize(&short, &at(2_000)), Err(AuthError::Expired)));
        assert!(a.authorize(&short, &at(500)).is_ok(), "back in the first second: evaluated again");
    }
}
