//! `POST /v1/fs/read-batch` through a real gatewayd: each path answered as its own
//! `GET /v1/fs/read` (rights, audit record, masking, limits, errors), framed; and mountd's
//! prefetch reading a collection through it.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::process::Command;

use agentfs::wire::batch::{Decoder, Event, ItemHead, ItemTracker, CONTENT_TYPE, MAX_PATHS, ROUTE};
use agentfs::wire::ErrorBody;
use nkmc_e2e::{assert_no_secret, canary, fixture, fuse_available, http, json, wait_until, Mountd, Nkmc, Upstream};
use serde_json::Value;

/// One item of a batch answer: its head and body, or its error.
type Item = Result<(ItemHead, Vec<u8>), ErrorBody>;

/// The items of a framed answer, checked strictly: every item complete, nothing left over.
fn items(body: &[u8], count: usize) -> Vec<Item> {
    let mut decoder = Decoder::default();
    decoder.push(body);
    let mut tracker = ItemTracker::new(count);
    let mut heads: BTreeMap<usize, (ItemHead, Vec<u8>)> = BTreeMap::new();
    let mut out: Vec<Option<Item>> = (0..count).map(|_| None).collect();
    while let Some(frame) = decoder.next_frame().unwrap() {
        match tracker.accept(frame).unwrap() {
            Event::Head(i, head) => {
                heads.insert(i, (head, Vec::new()));
            }
            Event::Data(i, bytes) => heads.get_mut(&i).unwrap().1.extend_from_slice(&bytes),
            Event::End(i) => out[i] = Some(Ok(heads.remove(&i).unwrap())),
            Event::Failed(i, e) => out[i] = Some(Err(e)),
        }
    }
    decoder.finish().unwrap();
    assert_eq!(tracker.unfinished().count(), 0, "every item complete");
    out.into_iter().map(Option::unwrap).collect()
}

fn code(item: &Item) -> String {
    match item {
        Ok(_) => "ok".to_owned(),
        Err(e) => e.code.as_str().to_owned(),
    }
}

/// `Bearer TOKEN` for a token of the current agent attenuated to `allow`, valid an hour.
fn bearer(n: &Nkmc, allow: &str) -> String {
    let token = n.ok(&["token", "attenuate", "--allow", allow, "--ttl", "1h"]);
    format!("Bearer {}", token.trim())
}

fn batch_body(paths: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "paths": paths })).unwrap()
}

/// The audit's read records of `agent`, by target: their outcomes.
fn reads_by_target(n: &Nkmc, agent: &str) -> BTreeMap<String, Vec<String>> {
    let out = n.ok(&["audit", "tail", "-n", "1000", "--json"]);
    let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in out.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()) {
        if r["operation"] == "read" && r["agent"] == agent {
            by.entry(r["target"].as_str().unwrap().to_owned())
                .or_default()
                .push(r["outcome"].as_str().unwrap().to_owned());
        }
    }
    by
}

/// Every `read` record so far, oldest first.
fn read_records(n: &Nkmc) -> Vec<Value> {
    let out = n.ok(&["audit", "tail", "-n", "1000", "--json"]);
    out.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).filter(|r| r["operation"] == "read").collect()
}

#[test]
fn a_read_batch_answers_each_path_as_its_own_read() {
    let key = canary();
    let big = format!("{{\"pad\":\"{}\",\"key\":\"{key}\"}}", "x".repeat(100_000));
    let k = key.clone();
    let up = Upstream::keyed(&key, move |req| match req.uri.as_str() {
        "/v1/pets/1" => {
            let mut r = json(200, &format!("{{\"id\":1,\"echo\":\"{k}\"}}"));
            r.1.push(("etag".into(), "\"v1\"".into()));
            r
        }
        "/v1/pets/2" => json(404, r#"{"error":"no such pet"}"#),
        "/v1/pets/3" => json(200, r#"{"id":3}"#),
        "/v1/pets/large" => json(200, &big),
        "/v1/pets/huge" => json(200, &"y".repeat(300_000)),
        _ => json(404, "{}"),
    });
    let n = Nkmc::new("[upstream]\nmax_body_bytes = 200000\n");
    n.up();
    let spec = fixture("openapi/petstore.yaml");
    let spec = spec.to_str().unwrap();
    for domain in ["pets.test", "other.test"] {
        n.ok(&["register", "--spec", spec, "--domain", domain, "--base-url", &up.url("/v1")]);
        let out = n.run_stdin(&["keys", "set", domain, "--token", "-"], format!("{key}\n").as_bytes());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    n.ok(&["auth", "--agent", "reader"]);
    let bearer = bearer(&n, "pets.test:read");
    let addr = n.tcp_addr();
    let auth = [("Authorization", bearer.as_str()), ("Content-Type", "application/json")];

    let paths = [
        "/pets.test/pets.d/1",     // ok, with the key echoed (masked) and an ETag
        "/pets.test/pets.d/2",     // the upstream's 404
        "/other.test/pets.d/3",    // not this token's: looks like nothing is there
        "/pets.test/pets.d/huge",  // over upstream.max_body_bytes
        "/pets.test/../pets.d/3",  // a malformed path
        "/pets.test/skill.md",     // generated
        "/pets.test/pets.d/large", // over 64 KiB: streamed, the key masked
        "/pets.test/pets.d/3",     // ok
    ];
    let answer = http(addr, "POST", ROUTE, &auth, &batch_body(&paths));
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.headers.get("content-type").map(String::as_str), Some(CONTENT_TYPE));
    assert_no_secret("the batch answer", &answer.body, &key);
    let got = items(&answer.body, paths.len());
    let codes: Vec<String> = got.iter().map(code).collect();
    assert_eq!(codes, ["ok", "not_found", "not_found", "too_large", "invalid_path", "ok", "ok", "ok"], "{got:?}");

    // Each item is what its own read answers: the same bytes, validators and errors.
    for (i, path) in paths.iter().enumerate() {
        let target = format!("/v1/fs/read?path={}", path.replace('/', "%2F"));
        let single = http(addr, "GET", &target, &auth[..1], b"");
        match &got[i] {
            Ok((head, body)) => {
                assert_eq!(single.status, 200, "{path}: {}", single.text());
                assert_eq!(body, &single.body, "{path}: the same bytes as its own read");
                assert_eq!(head.etag.as_deref(), single.headers.get("etag").map(String::as_str), "{path}");
                assert_eq!(
                    head.upstream_status.map(|s| s.to_string()).as_deref(),
                    single.headers.get("x-nkmc-upstream-status").map(String::as_str),
                    "{path}"
                );
                assert_eq!(
                    head.length.map(|l| l.to_string()).as_deref(),
                    single.headers.get("content-length").map(String::as_str),
                    "{path}"
                );
            }
            Err(e) => {
                let expected: ErrorBody = serde_json::from_slice(&single.body).unwrap();
                assert_eq!(e.code, expected.code, "{path}: {}", single.text());
                assert_eq!(e.upstream_status, expected.upstream_status, "{path}");
            }
        }
    }
    let Ok((head, body)) = &got[0] else { unreachable!() };
    assert_eq!(head.etag.as_deref(), Some("\"v1\""));
    assert_eq!(String::from_utf8_lossy(body), "{\"id\":1,\"echo\":\"[masked by nkmc]\"}");
    let Ok((head, body)) = &got[6] else { unreachable!() };
    assert_eq!(head.length, None, "a masked streamed body has no length before it is sent");
    assert!(body.ends_with(b"\"key\":\"[masked by nkmc]\"}"), "{}", body.len());
    assert!(!got[5].as_ref().unwrap().1.is_empty(), "skill.md");

    // One record per path, as its own read makes; the malformed one has no target.
    let by = reads_by_target(&n, "reader");
    let expect = [
        ("/pets.test/pets.d/1", "ok"),
        ("/pets.test/pets.d/2", "not_found"),
        ("/other.test/pets.d/3", "not_found"),
        ("/pets.test/pets.d/huge", "too_large"),
        ("", "invalid_path"),
        ("/pets.test/skill.md", "ok"),
        ("/pets.test/pets.d/large", "ok"),
        ("/pets.test/pets.d/3", "ok"),
    ];
    for (target, outcome) in expect {
        // The batch's record, then the single read's.
        assert_eq!(by.get(target).map(Vec::as_slice), Some(&[outcome.to_owned(), outcome.to_owned()][..]), "{by:?}");
    }
    assert_eq!(up.seen().iter().filter(|s| s.uri == "/v1/pets/3").count(), 2, "other.test's read never left");

    // Malformed requests are refused whole.
    let many: Vec<String> = (0..=MAX_PATHS).map(|i| format!("/pets.test/pets.d/{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let before = up.seen().len();
    let refused = http(addr, "POST", ROUTE, &auth, &batch_body(&many));
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert!(refused.text().contains("bad_request"), "{}", refused.text());
    for body in [&br#"{"paths":["/pets.test/pets.d/1"],"extra":1}"#[..], br#"{"paths":"/pets.test"}"#, b"not json"] {
        let refused = http(addr, "POST", ROUTE, &auth, body);
        assert_eq!(refused.status, 400, "{}", refused.text());
    }
    let zero = br#"{"paths":["/pets.test/pets.d/1"],"concurrency":0}"#;
    assert_eq!(http(addr, "POST", ROUTE, &auth, zero).status, 400);
    assert_eq!(up.seen().len(), before, "nothing of a refused batch reached the upstream");
    let anonymous = http(addr, "POST", ROUTE, &auth[1..], &batch_body(&paths[..1]));
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());

    // A token that is not one: the batch is refused whole, as its own read is refused
    // (`a_batch_refused_whole_leaves_one_record_without_a_target` counts the records).
    let forged = [("Authorization", "Bearer not-a-token"), ("Content-Type", "application/json")];
    let answer = http(addr, "POST", ROUTE, &forged, &batch_body(&paths[..2]));
    let single = http(addr, "GET", "/v1/fs/read?path=%2Fpets.test%2Fpets.d%2F1", &forged[..1], b"");
    assert_eq!(answer.status, single.status, "{}", answer.text());
    let refused: ErrorBody = serde_json::from_slice(&answer.body).unwrap();
    let expected: ErrorBody = serde_json::from_slice(&single.body).unwrap();
    assert_eq!(refused.code, expected.code);
    assert_eq!(up.seen().len(), before, "a forged token reaches no upstream");
    let log = std::fs::read_to_string(n.data_dir.join("gatewayd.log")).unwrap();
    assert_no_secret("gatewayd.log", log.as_bytes(), &key);
}

fn sh(script: &str) -> String {
    let out = Command::new("bash").args(["-c", script]).output().unwrap();
    assert!(out.status.success(), "`{script}` failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The paths gatewayd read through batches so far (its debug log says so per batch).
fn batched_paths(n: &Nkmc) -> usize {
    let log = std::fs::read_to_string(n.data_dir.join("gatewayd.log")).unwrap();
    log.lines()
        .filter(|l| l.contains("read batch"))
        .filter_map(|l| l.split("paths=").nth(1))
        .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .filter_map(|d| d.parse::<usize>().ok())
        .sum()
}

#[test]
fn a_cold_grep_through_a_mount_reads_a_collection_in_batches() {
    if !fuse_available() {
        return;
    }
    const ITEMS: usize = 200;
    let body = |i: usize| format!("{{\"id\":\"p{i:03}\",\"name\":\"item {i}\"}}");
    let up = Upstream::start_threads(4, move |req| match req.uri.as_str() {
        "/v1/pets" => json(200, &format!("[{}]", (0..ITEMS).map(body).collect::<Vec<_>>().join(","))),
        uri => match uri.strip_prefix("/v1/pets/p").and_then(|i| i.parse::<usize>().ok()) {
            Some(i) if i < ITEMS => json(200, &body(i)),
            _ => json(404, "{}"),
        },
    });
    let n = Nkmc::new("");
    n.up();
    let spec = fixture("openapi/petstore.yaml");
    n.ok(&["register", "--spec", spec.to_str().unwrap(), "--domain", "shop.test", "--base-url", &up.url("/v1")]);
    let m = Mountd::start(&n, "grep", &["--cache-ttl", "600"]);
    let dir = m.dir.join("shop.test/pets.d");
    let out = sh(&format!("grep -r -c 'item' {} | sort", dir.display()));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), ITEMS, "{out}");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(*line, format!("{}:1", dir.join(format!("p{i:03}")).display()));
    }
    // Every body is the right one, whichever way it came.
    for i in [0, 1, 2, 63, 64, 100, ITEMS - 1] {
        assert_eq!(std::fs::read(dir.join(format!("p{i:03}"))).unwrap(), body(i).as_bytes());
    }
    // Each item went upstream once and was recorded once; most through batches.
    for i in 0..ITEMS {
        let uri = format!("/v1/pets/p{i:03}");
        assert_eq!(up.seen().iter().filter(|s| s.uri == uri).count(), 1, "{uri}");
    }
    let by = reads_by_target(&n, "owner");
    for i in 0..ITEMS {
        assert_eq!(by.get(&format!("/shop.test/pets.d/p{i:03}")).map(Vec::len), Some(1), "p{i:03}");
    }
    wait_until("the batches logged", || batched_paths(&n) >= ITEMS / 2);
    let batched = batched_paths(&n);
    assert!(batched <= ITEMS, "{batched}");
    drop(m);
}

#[test]
fn a_read_batch_of_borrowed_paths_reads_through_the_lender() {
    const SECRET: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00123456789abcdef0123456789abcdef";
    let key = canary();
    let k = key.clone();
    let up = Upstream::keyed(&key, move |req| match req.uri.as_str() {
        "/v1/pets" => json(200, r#"[{"id":1},{"id":2}]"#),
        "/v1/pets/1" => json(200, &format!("{{\"id\":1,\"echo\":\"{k}\"}}")),
        _ => json(404, "{}"),
    });
    let (a, b) = (nkmc_e2e::federated_gateway("gw-a", ""), nkmc_e2e::federated_gateway("gw-b", ""));
    b.hold_pets(&up.url("/v1"), &key);
    b.ok(&["rules", "set", "pets.test", "--allow", "--peers", "gw-a", "--ops", "read"]);
    let url = |n: &Nkmc| format!("http://{}", n.tcp_addr());
    a.ok(&["peers", "add", "--id", "gw-b", "--name", "B", "--url", &url(&b), "--secret", SECRET]);
    b.ok(&["peers", "add", "--id", "gw-a", "--name", "A", "--url", &url(&a), "--secret", SECRET]);
    nkmc_e2e::eventually("A sees pets.test", || a.run(&["ls", "/"]).stdout.windows(10).any(|w| w == b"pets.test/"));

    a.ok(&["auth", "--agent", "fed"]);
    let bearer = bearer(&a, "pets.test:read");
    let auth = [("Authorization", bearer.as_str()), ("Content-Type", "application/json")];
    let addr = a.tcp_addr();
    let paths = ["/pets.test/pets.d/1", "/pets.test/pets.d/9", "/pets.test/pets"];
    let answer = http(addr, "POST", ROUTE, &auth, &batch_body(&paths));
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_no_secret("the batch answer", &answer.body, &key);
    let got = items(&answer.body, paths.len());
    assert_eq!(got.iter().map(code).collect::<Vec<_>>(), ["ok", "not_found", "ok"], "{got:?}");
    for (i, path) in paths.iter().enumerate() {
        let single = http(addr, "GET", &format!("/v1/fs/read?path={}", path.replace('/', "%2F")), &auth[..1], b"");
        match &got[i] {
            Ok((_, body)) => assert_eq!(body, &single.body, "{path}"),
            Err(e) => {
                let expected: ErrorBody = serde_json::from_slice(&single.body).unwrap();
                assert_eq!((e.code, e.upstream_status), (expected.code, expected.upstream_status), "{path}");
            }
        }
    }
    let Ok((_, body)) = &got[0] else { unreachable!() };
    assert_eq!(String::from_utf8_lossy(body), "{\"id\":1,\"echo\":\"[masked by nkmc]\"}");
    // Every read went through B to the upstream: twice each (the batch, then the single read).
    assert_eq!(up.seen().iter().filter(|s| s.uri == "/v1/pets/1").count(), 2);
    // A records each path once per read, as its own read does: the batch's record, then the
    // single read's, alike in who, through which peer, what came back and how much.
    let records = read_records(&a);
    for path in paths {
        let of: Vec<&Value> = records.iter().filter(|r| r["target"] == path).collect();
        assert_eq!(of.len(), 2, "{path}: {records:?}");
        for field in ["agent", "peer", "bytes", "upstream_status", "outcome"] {
            assert_eq!(of[0][field], of[1][field], "{path}: {field} of the batch's record and the single read's");
        }
    }
    let Some(ok) = records.iter().find(|r| r["target"] == paths[0]) else { unreachable!() };
    assert_eq!(ok["bytes"], body.len() as u64, "the bytes sent back");
    assert_eq!(ok["upstream_status"], 200);
    assert_eq!(ok["peer"], "gw-b", "read through the lender");
}

#[test]
fn a_batch_refused_whole_leaves_one_record_without_a_target() {
    let up = Upstream::start(|_| json(200, r#"{"id":1}"#));
    let n = Nkmc::new("");
    n.up();
    let spec = fixture("openapi/petstore.yaml");
    n.ok(&["register", "--spec", spec.to_str().unwrap(), "--domain", "pets.test", "--base-url", &up.url("/v1")]);
    n.ok(&["auth", "--agent", "reader"]);
    let token = n.ok(&["token", "attenuate", "--allow", "pets.test:read", "--ttl", "1h"]).trim().to_owned();
    let revoked = n.ok(&["token", "attenuate", "--allow", "pets.test:read", "--ttl", "1h"]).trim().to_owned();
    let said = n.run_stdin(&["token", "revoke", "--token", "-"], revoked.as_bytes());
    assert!(said.status.success(), "{}", String::from_utf8_lossy(&said.stderr));
    let expired = n.ok(&["token", "attenuate", "--allow", "pets.test:read", "--ttl", "1s"]).trim().to_owned();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let addr = n.tcp_addr();
    let paths: Vec<String> = (0..40).map(|i| format!("/pets.test/pets.d/{i}")).collect();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let over: Vec<String> = (0..=MAX_PATHS).map(|i| format!("/pets.test/pets.d/{i}")).collect();
    let over: Vec<&str> = over.iter().map(String::as_str).collect();

    let cases: [(&str, &str, Vec<u8>); 8] = [
        ("over 64 paths", &token, batch_body(&over)),
        ("no path", &token, batch_body(&[])),
        ("not JSON", &token, b"not json".to_vec()),
        ("an unknown member", &token, br#"{"paths":["/pets.test/pets.d/1"],"extra":1}"#.to_vec()),
        ("a concurrency of 0", &token, br#"{"paths":["/pets.test/pets.d/1"],"concurrency":0}"#.to_vec()),
        ("a forged token", "not-a-token", batch_body(&paths)),
        ("a revoked token", &revoked, batch_body(&paths)),
        ("an expired token", &expired, batch_body(&paths)),
    ];
    for (what, token, body) in cases {
        let bearer = format!("Bearer {token}");
        let auth = [("Authorization", bearer.as_str()), ("Content-Type", "application/json")];
        let before = read_records(&n).len();
        let answer = http(addr, "POST", ROUTE, &auth, &body);
        let error: ErrorBody =
            serde_json::from_slice(&answer.body).unwrap_or_else(|_| panic!("{what}: {}", answer.text()));
        let records = read_records(&n);
        assert_eq!(records.len(), before + 1, "{what}: one record, not one per path: {:?}", &records[before..]);
        assert_eq!(records[before]["target"], "", "{what}: no target");
        assert_eq!(records[before]["outcome"], error.code.as_str(), "{what}");
        if what.ends_with("token") {
            // Refused as a single read with that token is.
            let single = http(addr, "GET", "/v1/fs/read?path=%2Fpets.test%2Fpets.d%2F1", &auth[..1], b"");
            let expected: ErrorBody = serde_json::from_slice(&single.body).unwrap();
            assert_eq!((answer.status, error.code), (single.status, expected.code), "{what}: {}", answer.text());
            assert_eq!(answer.status, 403, "{what}");
        } else {
            assert_eq!(answer.status, 400, "{what}: {}", answer.text());
        }
    }
    assert!(up.seen().is_empty(), "nothing of a refused batch reached the upstream");
}

#[test]
fn a_batch_whose_reader_goes_away_stops_its_reads() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    // Reads of `slow*` hold until released; the upstream notes each one as it starts.
    let started: Arc<Mutex<Vec<String>>> = Arc::default();
    let released = Arc::new(AtomicBool::new(false));
    let (log, gate) = (started.clone(), released.clone());
    let up = Upstream::start_threads(8, move |req| {
        if req.uri.starts_with("/v1/pets/slow") {
            log.lock().unwrap().push(req.uri.clone());
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            // The harness runs handlers off its async workers: other requests go on meanwhile.
            while !gate.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        json(200, r#"{"id":1}"#)
    });
    let n = Nkmc::new("");
    n.up();
    let spec = fixture("openapi/petstore.yaml");
    n.ok(&["register", "--spec", spec.to_str().unwrap(), "--domain", "pets.test", "--base-url", &up.url("/v1")]);
    n.ok(&["auth", "--agent", "leaver"]);
    let token = n.ok(&["token", "attenuate", "--allow", "pets.test:read", "--ttl", "1h"]).trim().to_owned();

    // Six paths, two at a time: two reads start, then the caller goes away.
    let paths: Vec<String> = (0..6).map(|i| format!("/pets.test/pets.d/slow{i}")).collect();
    let body = serde_json::to_vec(&serde_json::json!({ "paths": paths, "concurrency": 2 })).unwrap();
    let addr = n.tcp_addr();
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST {ROUTE} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).unwrap();
    conn.write_all(&body).unwrap();
    wait_until("two reads in flight", || started.lock().unwrap().len() == 2);
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut status = [0u8; 12];
    conn.read_exact(&mut status).unwrap();
    assert_eq!(&status, b"HTTP/1.1 200", "the answer had begun");
    drop(conn);

    // The reads in flight stop there, recorded as a single read whose caller went away is.
    let outcomes = || reads_by_target(&n, "leaver");
    wait_until("the reads in flight recorded", || outcomes().len() >= 2);
    let by = outcomes();
    assert_eq!(by.get(&paths[0]).map(Vec::as_slice), Some(&["cancelled".to_owned()][..]), "{by:?}");
    assert_eq!(by.get(&paths[1]).map(Vec::as_slice), Some(&["cancelled".to_owned()][..]), "{by:?}");

    // Released now, the upstream gets no further read of the batch: none was left running.
    released.store(true, Ordering::SeqCst);
    let fine = http(
        addr,
        "GET",
        "/v1/fs/read?path=%2Fpets.test%2Fpets.d%2F1",
        &[("Authorization", &format!("Bearer {token}"))],
        b"",
    );
    assert_eq!(fine.status, 200, "{}", fine.text());
    std::thread::sleep(std::time::Duration::from_millis(500));
    // The two in flight reach the upstream in either order.
    let mut seen = started.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen, ["/v1/pets/slow0", "/v1/pets/slow1"], "no read started after the caller left");
    let by = outcomes();
    assert_eq!(by.len(), 3, "the two cancelled and the single read; the paths never started have no record: {by:?}");
    assert_eq!(by.get("/pets.test/pets.d/1").map(Vec::as_slice), Some(&["ok".to_owned()][..]));
}

#[test]
fn a_large_json_rpc_result_comes_in_data_frames_of_at_most_a_mib() {
    // A result gatewayd holds whole (a JSON-RPC call's), far over one data frame.
    let names: Vec<String> = (0..60_000).map(|i| format!("pet number {i:06} of a long list")).collect();
    let list = serde_json::to_string(&names).unwrap();
    let up = Upstream::start(move |req| {
        let call: Value = serde_json::from_slice(&req.body).unwrap();
        let result: Value = match call["method"].as_str() {
            Some("list_pets") => serde_json::from_str(&list).unwrap(),
            _ => Value::Null,
        };
        json(200, &serde_json::json!({"jsonrpc": "2.0", "id": call["id"], "result": result}).to_string())
    });
    let n = Nkmc::new("");
    n.up();
    let spec = fixture("openrpc/petstore-openrpc.json");
    n.ok(&["register", "--spec", spec.to_str().unwrap(), "--domain", "rpc.test", "--base-url", &up.url("/rpc")]);
    n.ok(&["auth", "--agent", "rpc"]);
    let bearer = bearer(&n, "rpc.test:read");
    let auth = [("Authorization", bearer.as_str()), ("Content-Type", "application/json")];
    let addr = n.tcp_addr();
    let paths = ["/rpc.test/list_pets", "/rpc.test/skill.md", "/rpc.test/list_pets"];
    let answer = http(addr, "POST", ROUTE, &auth, &batch_body(&paths));
    assert_eq!(answer.status, 200, "{}", answer.text());
    // `items` refuses a data frame over 1 MiB.
    let got = items(&answer.body, paths.len());
    let single = http(addr, "GET", "/v1/fs/read?path=%2Frpc.test%2Flist_pets", &auth[..1], b"");
    assert_eq!(single.status, 200, "{}", single.text());
    assert!(single.body.len() > 2 * 1024 * 1024, "{}", single.body.len());
    for i in [0, 2] {
        let Ok((head, body)) = &got[i] else { panic!("{:?}", got[i]) };
        assert_eq!(body, &single.body, "item {i}: the same bytes as its own read");
        assert_eq!(head.length, Some(single.body.len() as u64));
    }
    assert!(got[1].is_ok(), "skill.md");
}

#[test]
fn a_body_cut_part_way_fails_its_item_after_its_head_and_the_others_complete() {
    let key = canary();
    let addr = nkmc_e2e::chunked_upstream();
    let n = Nkmc::new("[upstream]\nmax_body_bytes = 1000\n");
    n.ok(&["gateway", "start", "--daemon"]);
    n.hold_pets(&format!("http://{addr}/v1"), &key);
    n.ok(&["auth", "--agent", "reader"]);
    let bearer = bearer(&n, "pets.test:read");
    let auth = [("Authorization", bearer.as_str()), ("Content-Type", "application/json")];

    // Item 0 streams 3000 bytes without a length past the cap of 1000; item 1 is the key,
    // split across two chunks.
    let paths = ["/pets.test/pets.d/1", "/pets.test/pets"];
    let answer = http(n.tcp_addr(), "POST", ROUTE, &auth, &batch_body(&paths));
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_no_secret("the batch answer", &answer.body, &key);
    let mut decoder = Decoder::default();
    decoder.push(&answer.body);
    let mut tracker = ItemTracker::new(paths.len());
    let mut first = Vec::new();
    while let Some(frame) = decoder.next_frame().unwrap() {
        match tracker.accept(frame).unwrap() {
            Event::Head(0, head) => first.push(format!("head {:?}", head.upstream_status)),
            Event::Data(0, bytes) => first.push(format!("data {}", bytes.len())),
            Event::End(0) => first.push("end".to_owned()),
            Event::Failed(0, e) => first.push(format!("failed {} {}", e.code.as_str(), e.message)),
            _ => {}
        }
    }
    assert_eq!(first.first().map(String::as_str), Some("head Some(200)"), "{first:?}");
    let last = first.last().unwrap();
    assert!(last.starts_with("failed too_large") && last.contains("part way"), "{first:?}");
    let sent: usize = first.iter().filter_map(|e| e.strip_prefix("data ")).map(|n| n.parse::<usize>().unwrap()).sum();
    assert!(sent <= 1000, "at most the cap was passed on: {sent}");
    let got = items(&answer.body, paths.len());
    assert_eq!(code(&got[0]), "too_large");
    let Ok((_, body)) = &got[1] else { panic!("{got:?}") };
    assert_eq!(String::from_utf8_lossy(body), "[{\"id\":\"[masked by nkmc]\"}]");

    // Its record says so, as its own read's would.
    wait_until("the cut read is recorded", || {
        reads_by_target(&n, "reader").get("/pets.test/pets.d/1").is_some_and(|o| o == &["too_large".to_owned()])
    });
    assert_eq!(reads_by_target(&n, "reader").get("/pets.test/pets").map(Vec::as_slice), Some(&["ok".to_owned()][..]));
}
