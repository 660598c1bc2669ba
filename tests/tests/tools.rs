//! Real tools on a real mount: coreutils, grep, find, jq, Python, many readers at once,
//! `.nkmc/last` and `.nkmc/last_error`, and recovery from killed daemons.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;

use nkmc_e2e::{fuse_available, json, Nkmc, Upstream};

const SPEC: &str = r#"
openapi: 3.0.3
info: {title: Zoo, version: "1"}
servers: [{url: "https://zoo.example.test/api"}]
components:
  securitySchemes:
    key: {type: apiKey, in: header, name: x-api-key}
security: [{key: []}]
paths:
  /animals:
    get: {summary: List animals, responses: {"200": {description: ok}}}
  /animals/{id}:
    get: {summary: One animal, responses: {"200": {description: ok}}}
  /status:
    get: {summary: Status, responses: {"200": {description: ok}}}
"#;

const ANIMALS: usize = 40;

fn animal(i: usize) -> String {
    format!("{{\"id\":\"a{i}\",\"name\":\"animal number {i}\",\"legs\":{}}}", i % 5)
}

fn zoo() -> Upstream {
    Upstream::start(|req| {
        if req.headers.get("x-api-key").map(String::as_str) != Some("zoo-key") {
            return json(401, r#"{"error":"who are you?"}"#);
        }
        match req.uri.as_str() {
            "/api/animals" => {
                let all: Vec<String> = (0..ANIMALS).map(animal).collect();
                json(200, &format!("[{}]", all.join(",")))
            }
            "/api/status" => (200, vec![("content-type".into(), "text/plain".into())], b"all good\n".to_vec()),
            uri => match uri.strip_prefix("/api/animals/a").and_then(|n| n.parse::<usize>().ok()) {
                Some(i) if i < ANIMALS => json(200, &animal(i)),
                _ => json(404, r#"{"error":"no such animal"}"#),
            },
        }
    })
}

fn setup(up: &Upstream) -> Nkmc {
    let n = Nkmc::new("");
    n.up();
    let spec = n.dir.path().join("zoo.yaml");
    std::fs::write(&spec, SPEC).unwrap();
    n.ok(&["register", "--spec", spec.to_str().unwrap(), "--base-url", &up.url("/api"), "--domain", "zoo.test"]);
    n.ok(&["keys", "set", "zoo.test", "--token", "zoo-key"]);
    n
}

fn sh(script: &str) -> (bool, String, String) {
    let out = Command::new("bash").args(["-c", script]).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(script: &str) -> String {
    let (success, out, err) = sh(script);
    assert!(success, "`{script}` failed: {err}");
    out
}

#[test]
fn coreutils_grep_find_jq_and_python() {
    if !fuse_available() {
        return;
    }
    let up = zoo();
    let n = setup(&up);
    let svc = n.mount.join("zoo.test");
    let s = svc.display();

    let listing = ok(&format!("ls -la {s}"));
    assert!(listing.contains("animals.d") && listing.contains("skill.md"), "{listing}");
    assert_eq!(ok(&format!("test -f {s}/animals && stat -c '%a' {s}/animals")).trim(), "444");
    assert_eq!(ok(&format!("stat -c '%F %a' {s}/animals.d")).trim(), "directory 755");

    assert_eq!(ok(&format!("cat {s}/status")), "all good\n");
    assert_eq!(ok(&format!("stat -c '%s' {s}/status")).trim(), "9", "the real size once a read has told it");
    assert_eq!(ok(&format!("head -c 4 {s}/status")), "all ");
    assert_eq!(ok(&format!("wc -c < {s}/animals.d/a7")).trim(), animal(7).len().to_string());
    let copy = n.dir.path().join("copy.json");
    ok(&format!("cp {s}/animals.d/a3 {}", copy.display()));
    assert_eq!(std::fs::read_to_string(&copy).unwrap(), animal(3));

    // grep -r walks the listing (ids from the collection's response) and reads every file.
    let hits = ok(&format!("timeout 120 grep -rl 'animal number 1[0-9]' {s}/animals.d"));
    let mut hits: Vec<&str> = hits.lines().map(|l| l.rsplit('/').next().unwrap()).collect();
    hits.sort();
    assert_eq!(
        hits,
        (10..20).map(|i| format!("a{i}")).collect::<Vec<_>>().iter().map(String::as_str).collect::<Vec<_>>()
    );

    let found = ok(&format!("find {s} -maxdepth 2 -name 'a1*' | sort"));
    assert!(found.lines().count() >= 11, "{found}");

    assert_eq!(ok(&format!("jq -r '.[5].name' {s}/animals")).trim(), "animal number 5");
    let py = ok(&format!("python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' {s}/animals"));
    assert_eq!(py.trim(), ANIMALS.to_string());

    // .nkmc/last holds the last response; .nkmc/last_error the last failure in full.
    let last = std::fs::read_to_string(n.mount.join(".nkmc/last")).unwrap();
    assert!(last.starts_with("READ /zoo.test/animals\nHTTP 200\n"), "{last}");
    assert!(last.contains("animal number 39"), "{last}");
    let err = std::fs::read(svc.join("animals.d/a99")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    let last_error = std::fs::read_to_string(n.mount.join(".nkmc/last_error")).unwrap();
    assert!(last_error.contains("READ /zoo.test/animals.d/a99: ENOENT"), "{last_error}");
    assert!(last_error.contains("upstream status: HTTP 404") && last_error.contains("no such animal"), "{last_error}");
    let hidden = ok(&format!("ls -a {}", n.mount.display()));
    assert!(hidden.contains(".nkmc") && !ok(&format!("ls {}", n.mount.display())).contains(".nkmc"));
}

#[test]
fn thirty_two_readers_at_once() {
    if !fuse_available() {
        return;
    }
    let up = zoo();
    let n = setup(&up);
    let svc = n.mount.join("zoo.test/animals.d");
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..32)
            .map(|t| {
                let svc = &svc;
                scope.spawn(move || {
                    for round in 0..3 {
                        let i = (t + round * 7) % ANIMALS;
                        let body = std::fs::read_to_string(svc.join(format!("a{i}"))).unwrap();
                        assert_eq!(body, animal(i), "reader {t} round {round}");
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
}

fn mountd_pid(n: &Nkmc) -> i32 {
    let dir = n.data_dir.join("run/mounts");
    let rec = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(rec).unwrap()).unwrap();
    v["pid"].as_i64().unwrap() as i32
}

fn wait_gone(pid: i32) {
    for _ in 0..500 {
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("process {pid} did not exit");
}

#[test]
fn a_killed_mountd_is_recovered_by_up_and_a_restarted_gatewayd_is_reconnected() {
    if !fuse_available() {
        return;
    }
    let up = zoo();
    let n = setup(&up);
    let status = n.mount.join("zoo.test/status");
    assert_eq!(std::fs::read(&status).unwrap(), b"all good\n");

    // kill -9 mountd: the mount is stale ("Transport endpoint is not connected").
    let pid = mountd_pid(&n);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_gone(pid);
    let err = std::fs::metadata(&n.mount).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN));
    n.up();
    assert_eq!(std::fs::read(&status).unwrap(), b"all good\n", "`nkmc up` recovered the stale mount");

    // gatewayd restarts; the mount keeps working without a remount.
    n.ok(&["gateway", "stop"]);
    let err = std::fs::read(&status).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "gatewayd down → EIO, not a hang");
    let last_error = std::fs::read_to_string(n.mount.join(".nkmc/last_error")).unwrap();
    assert!(last_error.contains("cannot connect to gatewayd"), "{last_error}");
    n.ok(&["gateway", "start", "--daemon"]);
    assert_eq!(std::fs::read(&status).unwrap(), b"all good\n");
    assert!(Path::new(&n.mount).join("zoo.test").is_dir());
}

#[test]
fn reopening_within_the_ttl_is_served_from_the_cache_and_o_direct_always_fetches() {
    if !fuse_available() {
        return;
    }
    let up = zoo();
    let n = setup(&up);
    let file = n.mount.join("zoo.test/animals.d/a5");
    let gets = || up.seen().iter().filter(|s| s.uri == "/api/animals/a5").count();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), animal(5));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), animal(5));
    assert_eq!(gets(), 1, "the second open within the TTL sent nothing");
    // O_DIRECT asks for the source: it always fetches.
    let out = sh(&format!("dd if={} iflag=direct bs=4096 status=none", file.display()));
    assert!(out.0, "{}", out.2);
    assert_eq!(out.1, animal(5));
    assert_eq!(gets(), 2, "O_DIRECT fetched");
}
