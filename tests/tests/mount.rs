//! mountd's own guarantees on a real mount: a cap on requests in flight, revalidation of
//! stale bodies with their validators, listing caches and READDIRPLUS, new items in a
//! collection, large bodies in bounded memory, and clean unmounts.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nkmc_e2e::{fuse_available, is_mounted, json, vm_hwm_kib, wait_until, Mountd, Nkmc, Upstream};

const SPEC: &str = r#"
openapi: 3.0.3
info: {title: Shop, version: "1"}
servers: [{url: "https://shop.example.test/v1"}]
paths:
  /pets:
    get: {summary: List pets, responses: {"200": {description: ok}}}
    post: {summary: Add a pet, responses: {"201": {description: ok}}}
  /pets/{id}:
    get: {summary: One pet, responses: {"200": {description: ok}}}
    delete: {summary: Remove a pet, responses: {"204": {description: ok}}}
  /tags:
    get: {summary: List tags, responses: {"200": {description: ok}}}
  /tags/{tag}:
    get: {summary: One tag, responses: {"200": {description: ok}}}
  /status:
    get: {summary: Status, responses: {"200": {description: ok}}}
  /dated:
    get: {summary: A dated page, responses: {"200": {description: ok}}}
  /big:
    get: {summary: A large body, responses: {"200": {description: ok}}}
"#;

fn setup(config: &str, up: &Upstream) -> Nkmc {
    let n = Nkmc::new(config);
    n.up();
    let spec = n.dir.path().join("shop.yaml");
    std::fs::write(&spec, SPEC).unwrap();
    n.ok(&["register", "--spec", spec.to_str().unwrap(), "--base-url", &up.url("/v1"), "--domain", "shop.test"]);
    n
}

fn pet(id: &str) -> String {
    format!("{{\"id\":\"{id}\",\"name\":\"pet {id}\"}}")
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

/// 32 threads each reading three different items at once; every body checked.
fn thirty_two_readers(dir: &Path) {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..32)
            .map(|t| {
                scope.spawn(move || {
                    for round in 0..3 {
                        let id = format!("p{}", t + 32 * round);
                        let body = std::fs::read_to_string(dir.join(&id)).unwrap();
                        assert_eq!(body, pet(&id), "reader {t} round {round}");
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
}

#[test]
fn requests_in_flight_are_capped_per_mount() {
    if !fuse_available() {
        return;
    }
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (n2, p2) = (now.clone(), peak.clone());
    // 40 server threads: the upstream itself could hold 40 requests at once.
    let up = Upstream::start_threads(40, move |req| {
        let inside = n2.fetch_add(1, Ordering::SeqCst) + 1;
        p2.fetch_max(inside, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        n2.fetch_sub(1, Ordering::SeqCst);
        match req.uri.strip_prefix("/v1/pets/") {
            Some(id) => json(200, &pet(id)),
            None => json(404, "{}"),
        }
    });
    let n = setup("", &up);

    // The default mount: at most 16 at once, and more than 4 (the readers do overlap).
    thirty_two_readers(&n.mount.join("shop.test/pets.d"));
    let default_peak = peak.swap(0, Ordering::SeqCst);
    eprintln!("peak in flight: default mount {default_peak}");
    assert!(default_peak <= 16, "the default cap is 16; the upstream saw {default_peak} at once");
    assert!(default_peak > 4, "32 readers overlapped only {default_peak} deep");

    // A mount with --max-inflight 4: never more than 4, whatever the readers do.
    let capped = Mountd::start(&n, "capped", &["--max-inflight", "4", "--no-cache"]);
    thirty_two_readers(&capped.dir.join("shop.test/pets.d"));
    let capped_peak = peak.load(Ordering::SeqCst);
    eprintln!("peak in flight: --max-inflight 4 {capped_peak}");
    assert!((2..=4).contains(&capped_peak), "--max-inflight 4: the upstream saw {capped_peak} at once");
    assert_eq!(up.seen().len(), 2 * 96, "one GET per open");
}

#[test]
fn stale_bodies_are_revalidated_and_kept_on_304() {
    if !fuse_available() {
        return;
    }
    const DATE: &str = "Wed, 21 Oct 2015 07:28:00 GMT";
    let version = Arc::new(AtomicUsize::new(1));
    let v = version.clone();
    let up = Upstream::start(move |req| {
        let h = |name: &str| req.headers.get(name).cloned();
        match req.uri.as_str() {
            "/v1/status" => {
                let n = v.load(Ordering::SeqCst);
                let tag = format!("\"v{n}\"");
                if h("if-none-match").as_deref() == Some(&tag) {
                    return (304, vec![("etag".into(), tag)], Vec::new());
                }
                (200, vec![("etag".into(), tag)], format!("status v{n}\n").into_bytes())
            }
            "/v1/dated" => {
                if h("if-modified-since").as_deref() == Some(DATE) {
                    return (304, vec![("last-modified".into(), DATE.into())], Vec::new());
                }
                (200, vec![("last-modified".into(), DATE.into())], b"dated body\n".to_vec())
            }
            _ => json(404, "{}"),
        }
    });
    let n = setup("", &up);
    let m = Mountd::start(&n, "short", &["--cache-ttl", "0.2"]);
    let svc = m.dir.join("shop.test");
    let requests = |uri: &str, header: &str| -> (usize, usize) {
        let seen: Vec<_> = up.seen().into_iter().filter(|s| s.uri == uri).collect();
        let conditional = seen.iter().filter(|s| s.headers.contains_key(header)).count();
        (seen.len() - conditional, conditional)
    };

    for (file, uri, header, body) in [
        ("status", "/v1/status", "if-none-match", "status v1\n"),
        ("dated", "/v1/dated", "if-modified-since", "dated body\n"),
    ] {
        assert_eq!(std::fs::read_to_string(svc.join(file)).unwrap(), body);
        assert_eq!(requests(uri, header), (1, 0));
        // Past the TTL, the next open asks whether the body changed; the 304 keeps it.
        wait_until("a conditional request", || {
            assert_eq!(std::fs::read_to_string(svc.join(file)).unwrap(), body);
            requests(uri, header).1 > 0
        });
        assert_eq!(requests(uri, header).0, 1, "the body was sent once; the rest were 304s");
    }
    let last = std::fs::read_to_string(m.dir.join(".nkmc/last")).unwrap();
    assert!(last.contains("HTTP 304") && last.contains("not modified"), "{last}");

    // A changed body comes back whole in answer to the conditional request.
    version.store(2, Ordering::SeqCst);
    wait_until("the new body", || std::fs::read_to_string(svc.join("status")).unwrap() == "status v2\n");
    assert_eq!(requests("/v1/status", "if-none-match").0, 1, "the change came in answer to a conditional GET");
    let tags: Vec<_> = up.seen().into_iter().filter_map(|s| s.headers.get("if-none-match").cloned()).collect();
    assert!(tags.iter().all(|t| t == "\"v1\"" || t == "\"v2\""), "{tags:?}");
}

/// Counts the audit records of `operation` on `target`.
fn audited(n: &Nkmc, operation: &str, target: &str) -> usize {
    let out = n.ok(&["audit", "tail", "-n", "10000", "--json"]);
    out.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["operation"] == operation && r["target"] == target)
        .count()
}

#[test]
fn listings_are_cached_new_items_go_to_the_collection_and_ls_l_needs_no_lookups() {
    if !fuse_available() {
        return;
    }
    let pets: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    pets.lock().unwrap().insert("p1".into(), pet("p1"));
    pets.lock().unwrap().insert("p2".into(), pet("p2"));
    let store = pets.clone();
    let up = Upstream::start(move |req| {
        let mut pets = store.lock().unwrap();
        match (req.method.as_str(), req.uri.as_str()) {
            ("GET", "/v1/pets") => json(200, &format!("[{}]", pets.values().cloned().collect::<Vec<_>>().join(","))),
            ("POST", "/v1/pets") => {
                let id = format!("p{}", pets.len() + 1);
                pets.insert(id.clone(), pet(&id));
                json(201, &format!("{{\"id\":\"{id}\"}}"))
            }
            ("GET", "/v1/tags") => json(200, r#"[{"name":"cute"}]"#),
            ("GET", uri) => match uri.strip_prefix("/v1/pets/").and_then(|id| pets.get(id)) {
                Some(p) => json(200, p),
                None => json(404, "{}"),
            },
            ("DELETE", uri) => match uri.strip_prefix("/v1/pets/").and_then(|id| pets.remove(id)) {
                Some(_) => (204, Vec::new(), Vec::new()),
                None => json(404, "{}"),
            },
            _ => json(405, "{}"),
        }
    });
    let n = setup("", &up);
    // A TTL no slow step of the test outlives (the default is 2 s).
    let m = Mountd::start(&n, "long", &["--cache-ttl", "600"]);
    let dir = m.dir.join("shop.test/pets.d");
    let d = dir.display();
    let lists = || up.seen().iter().filter(|s| s.method == "GET" && s.uri == "/v1/pets").count();

    // `ls -l`: READDIRPLUS carries each entry's attributes; no lookup (stat) per entry.
    let long = ok(&format!("ls -l {d}"));
    assert!(long.contains(" p1\n") && long.contains(" p2\n") && long.contains("-r--r--r--"), "{long}");
    let _ = std::fs::metadata(dir.join("zzz")); // a name not listed: one lookup, our marker
    wait_until("the marker's stat in the audit", || audited(&n, "stat", "/shop.test/pets.d/zzz") > 0);
    assert_eq!(audited(&n, "stat", "/shop.test/pets.d/p1"), 0, "ls -l looked p1 up");
    assert_eq!(audited(&n, "stat", "/shop.test/pets.d/p2"), 0, "ls -l looked p2 up");
    // The listing told size 0 (unknown until read); the open that learns the real size
    // makes the kernel drop what it cached, so the body reads whole.
    assert_eq!(std::fs::read_to_string(dir.join("p1")).unwrap(), pet("p1"));
    assert_eq!(std::fs::metadata(dir.join("p1")).unwrap().len(), pet("p1").len() as u64);

    // `ls` again within the TTL: the cached listing, no request.
    assert_eq!(ok(&format!("ls {d}")), "p1\np2\n");
    assert_eq!(lists(), 1, "one listing request for `ls -l` then `ls` within the TTL");

    // A new file in the collection's directory: one POST to the collection with the body.
    ok(&format!(r#"echo '{{"name":"rex"}}' > {d}/new"#));
    let writes: Vec<_> = up.seen().into_iter().filter(|s| s.method != "GET").collect();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!((writes[0].method.as_str(), writes[0].uri.as_str()), ("POST", "/v1/pets"));
    assert_eq!(writes[0].body, b"{\"name\":\"rex\"}\n");
    let last = std::fs::read_to_string(m.dir.join(".nkmc/last")).unwrap();
    assert!(last.starts_with("WRITE /shop.test/pets\nHTTP 201\n") && last.contains(r#"{"id":"p3"}"#), "{last}");
    // The write dropped the cached listing: the new item shows at once.
    assert_eq!(ok(&format!("ls {d}")), "p1\np2\np3\n");
    assert_eq!(lists(), 2);

    // `rm` of an item: its DELETE, and the listing is fetched again.
    ok(&format!("rm {d}/p3"));
    assert!(up.seen().iter().any(|s| s.method == "DELETE" && s.uri == "/v1/pets/p3"));
    assert_eq!(ok(&format!("ls {d}")), "p1\np2\n");
    assert_eq!(lists(), 3);

    // Where nothing takes new items: EACCES, and last_error says why.
    let err = std::fs::write(m.dir.join("shop.test/tags.d/x"), "{}").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES));
    let why = std::fs::read_to_string(m.dir.join(".nkmc/last_error")).unwrap();
    assert!(why.starts_with("WRITE /shop.test/tags.d/x: EACCES") && why.contains("read-only"), "{why}");
    let err = std::fs::write(m.dir.join("shop.test/brand-new"), "{}").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES));
    let why = std::fs::read_to_string(m.dir.join(".nkmc/last_error")).unwrap();
    assert!(why.starts_with("CREATE /shop.test/brand-new: EACCES") && why.contains("cannot create here"), "{why}");
    assert_eq!(up.seen().iter().filter(|s| s.method != "GET").count(), 2, "nothing more was sent");

    // --no-cache: every listing is a request.
    let fresh = Mountd::start(&n, "fresh", &["--no-cache"]);
    let before = lists();
    for _ in 0..2 {
        assert_eq!(ok(&format!("ls {}", fresh.dir.join("shop.test/pets.d").display())), "p1\np2\n");
    }
    assert_eq!(lists(), before + 2);
}

/// A deterministic body of `len` bytes that no run of zeros or repeats could fake.
fn big_body(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha256(path: &Path) -> String {
    let out = ok(&format!("sha256sum {}", path.display()));
    out.split_whitespace().next().unwrap().to_owned()
}

fn daemon_pid(n: &Nkmc, which: &str) -> i32 {
    match which {
        "gatewayd" => {
            let status = n.ok(&["gateway", "status"]);
            let pid = status.split("pid ").nth(1).unwrap().split(|c: char| !c.is_ascii_digit()).next().unwrap();
            pid.parse().unwrap()
        }
        _ => {
            let dir = n.data_dir.join("run/mounts");
            let rec = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(rec).unwrap()).unwrap();
            v["pid"].as_i64().unwrap() as i32
        }
    }
}

#[test]
fn a_100_mib_body_reads_whole_in_bounded_memory() {
    if !fuse_available() {
        return;
    }
    const LEN: usize = 100 * 1024 * 1024;
    let body = Arc::new(big_body(LEN));
    let served = body.clone();
    let up = Upstream::start(move |req| match req.uri.as_str() {
        "/v1/big" => (200, vec![("content-type".into(), "application/octet-stream".into())], served.to_vec()),
        _ => json(404, "{}"),
    });
    let n = setup("[upstream]\nmax_body_bytes = 209715200\n", &up);
    let expected_file = n.dir.path().join("expected");
    std::fs::write(&expected_file, &*body).unwrap();
    drop(body);
    let file: PathBuf = n.mount.join("shop.test/big");
    assert_eq!(sha256(&file), sha256(&expected_file), "the body through the mount");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), LEN as u64, "the real size once read");

    // Neither daemon held the body whole: their peak resident memory stayed well under it.
    let mountd = vm_hwm_kib(daemon_pid(&n, "mountd"));
    let gatewayd = vm_hwm_kib(daemon_pid(&n, "gatewayd"));
    assert!(mountd < 48 * 1024, "mountd peaked at {mountd} KiB for a 100 MiB body");
    assert!(gatewayd < 64 * 1024, "gatewayd peaked at {gatewayd} KiB for a 100 MiB body");
    eprintln!("VmHWM after a 100 MiB read: mountd {mountd} KiB, gatewayd {gatewayd} KiB");
}

#[test]
fn a_large_body_read_while_it_arrives_maps_and_reads_in_large_pieces() {
    if !fuse_available() {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    const LEN: usize = 16 * 1024 * 1024;
    let body = Arc::new(big_body(LEN));
    let served = body.clone();
    let up = Upstream::start(move |req| match req.uri.as_str() {
        "/v1/big" => (200, vec![("content-type".into(), "application/octet-stream".into())], served.to_vec()),
        _ => json(404, "{}"),
    });
    let n = setup("", &up);
    let expected_file = n.dir.path().join("expected");
    std::fs::write(&expected_file, &*body).unwrap();
    // Every open fetches, so every open reads the body while it arrives (direct I/O).
    let m = Mountd::start(&n, "cold", &["--no-cache"]);
    let file = m.dir.join("shop.test/big");
    let meta = std::fs::File::open(&file).unwrap().metadata().unwrap();
    assert_eq!(meta.len(), LEN as u64);
    assert_eq!(meta.blksize(), 1024 * 1024, "programs read a large file in the largest pieces FUSE carries");
    assert_eq!(sha256(&file), sha256(&expected_file), "read whole");
    // A shared map of a body opened while it arrives reads the same bytes.
    let mapped = ok(&format!(
        "python3 -c 'import hashlib, mmap, sys; f = open(sys.argv[1], \"rb\"); \
         print(hashlib.sha256(mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED, mmap.PROT_READ)).hexdigest())' {}",
        file.display()
    ));
    assert_eq!(mapped.trim(), sha256(&expected_file), "through a shared map");
    // A small file keeps the usual block size.
    assert_eq!(std::fs::metadata(m.dir.join("shop.test/status")).map(|m| m.blksize()).unwrap_or(4096), 4096);
}

#[test]
fn a_small_body_pushed_into_the_page_cache_reads_whole_whatever_its_new_length() {
    if !fuse_available() {
        return;
    }
    use std::io::Read;
    let body = Arc::new(Mutex::new(b"a".repeat(100)));
    let served = body.clone();
    let up = Upstream::start(move |req| match req.uri.as_str() {
        "/v1/status" => (200, vec![("content-type".into(), "application/json".into())], served.lock().unwrap().clone()),
        _ => json(404, "{}"),
    });
    let set = |b: &[u8]| *body.lock().unwrap() = b.to_vec();
    let n = setup("", &up);
    // Every open fetches; a small body is stored in the kernel's page cache before the open
    // answers, over the pages an older body left.
    let m = Mountd::start(&n, "cold", &["--no-cache"]);
    let file = m.dir.join("shop.test/status");
    assert_eq!(std::fs::read(&file).unwrap(), b"a".repeat(100));
    set(&b"b".repeat(100));
    assert_eq!(std::fs::read(&file).unwrap(), b"b".repeat(100), "the same length, other bytes");
    let long = b"c".repeat(5000);
    set(&long);
    assert_eq!(std::fs::read(&file).unwrap(), long, "longer");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 5000);
    // Shorter: a read that stays within the old size ends at the new end.
    set(b"short");
    let mut f = std::fs::File::open(&file).unwrap();
    let mut buf = [0u8; 100];
    let got = f.read(&mut buf).unwrap();
    assert_eq!(&buf[..got], b"short", "no byte of the older, longer body after the new end");
    assert_eq!(f.read(&mut buf).unwrap(), 0);
    drop(f);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 5);
    // Longer again, past what one push carries: read from mountd as before.
    let large = big_body(300 * 1024);
    set(&large);
    assert_eq!(std::fs::read(&file).unwrap(), large);
    assert_eq!(gets(&up, "/v1/status"), 5, "one GET per open");
}

#[test]
fn umount_and_sigterm_end_a_mount_cleanly() {
    if !fuse_available() {
        return;
    }
    let up = Upstream::start(|_| json(200, r#"{"ok":true}"#));
    let n = setup("", &up);

    // `nkmc mount DIR` then `nkmc umount DIR`.
    let view = n.dir.path().join("view");
    n.ok(&["mount", view.to_str().unwrap()]);
    assert!(is_mounted(&view));
    assert_eq!(std::fs::read(view.join("shop.test/status")).unwrap(), br#"{"ok":true}"#);
    n.ok(&["umount", view.to_str().unwrap()]);
    assert!(!is_mounted(&view), "`nkmc umount` left the mount in place");
    assert!(is_mounted(&n.mount), "the main mount is untouched");

    // SIGTERM: mountd unmounts and exits 0.
    let mut m = Mountd::start(&n, "term", &[]);
    assert_eq!(std::fs::read(m.dir.join("shop.test/status")).unwrap(), br#"{"ok":true}"#);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(m.pid()), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = m.child.wait().unwrap();
    assert!(status.success(), "mountd exited with {status} on SIGTERM");
    assert!(!is_mounted(&m.dir), "SIGTERM left the mount in place");
}

/// An upstream with a collection `/v1/pets` of `p0`…`p{n-1}` that grows with each POST, and
/// records nothing itself (the harness records every request).
fn growing_shop(n: usize) -> Upstream {
    let pets: Arc<Mutex<BTreeMap<usize, String>>> =
        Arc::new(Mutex::new((0..n).map(|i| (i, pet(&format!("p{i}")))).collect()));
    Upstream::start(move |req| {
        let mut pets = pets.lock().unwrap();
        match (req.method.as_str(), req.uri.as_str()) {
            ("GET", "/v1/pets") => json(200, &format!("[{}]", pets.values().cloned().collect::<Vec<_>>().join(","))),
            ("POST", "/v1/pets") => {
                let i = pets.len();
                pets.insert(i, pet(&format!("p{i}")));
                json(201, &format!("{{\"id\":\"p{i}\"}}"))
            }
            ("GET", uri) => {
                match uri.strip_prefix("/v1/pets/p").and_then(|i| i.parse::<usize>().ok()).and_then(|i| pets.get(&i)) {
                    Some(p) => json(200, p),
                    None => json(404, "{}"),
                }
            }
            _ => json(405, "{}"),
        }
    })
}

fn gets(up: &Upstream, uri: &str) -> usize {
    up.seen().iter().filter(|s| s.method == "GET" && s.uri == uri).count()
}

#[test]
fn the_kernel_caches_attributes_but_a_write_or_a_new_size_shows_at_once() {
    if !fuse_available() {
        return;
    }
    let up = growing_shop(2);
    let n = setup("", &up);
    // A TTL longer than the test: only invalidation can show a change.
    let m = Mountd::start(&n, "long", &["--cache-ttl", "600"]);
    let pets = m.dir.join("shop.test/pets");
    let first = std::fs::read(&pets).unwrap();
    assert_eq!(std::fs::metadata(&pets).unwrap().len(), first.len() as u64, "stat tells the size learnt");
    // A write through the mount: the next read fetches the new, longer body, whole.
    std::fs::write(&pets, br#"{"name":"new"}"#).unwrap();
    let second = std::fs::read(&pets).unwrap();
    assert!(second.len() > first.len(), "{}", String::from_utf8_lossy(&second));
    assert!(second.ends_with(format!("{}]", pet("p2")).as_bytes()), "{}", String::from_utf8_lossy(&second));
    assert_eq!(std::fs::metadata(&pets).unwrap().len(), second.len() as u64);
    // An `O_TRUNC` open that writes nothing sends nothing; the kernel took the size as 0,
    // and the next read tells it the real one again.
    drop(std::fs::OpenOptions::new().write(true).truncate(true).open(&pets).unwrap());
    assert_eq!(std::fs::read(&pets).unwrap(), second);
    assert_eq!(std::fs::metadata(&pets).unwrap().len(), second.len() as u64);
    assert_eq!(up.seen().iter().filter(|s| s.method == "POST").count(), 1, "the empty O_TRUNC sent nothing");
    // Cached reads of the same body ask nothing: one GET for each body seen above.
    for _ in 0..3 {
        assert_eq!(std::fs::read(&pets).unwrap(), second);
    }
    assert_eq!(gets(&up, "/v1/pets"), 2);

    // A change made elsewhere (here `nkmc write`, not this mount), read well within the
    // kernel's attribute TTL by a mount that fetches on every open: the open learns the new
    // size and drops the kernel's attributes before it answers, so the read is whole.
    let cold = Mountd::start(&n, "cold", &["--no-cache"]);
    let pets = cold.dir.join("shop.test/pets");
    assert_eq!(std::fs::read(&pets).unwrap(), second);
    n.ok(&["write", "/shop.test/pets", r#"{"name":"elsewhere"}"#]);
    let third = std::fs::read(&pets).unwrap();
    assert!(third.ends_with(format!("{}]", pet("p3")).as_bytes()), "{}", String::from_utf8_lossy(&third));
    assert_eq!(std::fs::metadata(&pets).unwrap().len(), third.len() as u64);
}

#[test]
fn a_sequential_reader_gets_the_next_files_prefetched_within_its_rights() {
    if !fuse_available() {
        return;
    }
    let up = growing_shop(20);
    let n = setup("", &up);
    let dir = |m: &Path| m.join("shop.test/pets.d");

    // Reading p0 then p1 (the listing's order, as grep -r does) fetches the rest ahead:
    // the upstream sees every item without its open, and the opens then ask nothing.
    let m = Mountd::start(&n, "ahead", &["--cache-ttl", "600"]);
    let names: Vec<String> = (0..20).map(|i| format!("p{i}")).collect();
    let mut listed: Vec<String> =
        std::fs::read_dir(dir(&m.dir)).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    listed.sort();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(listed, sorted);
    let first_two: Vec<&String> = sorted.iter().take(2).collect();
    for name in &first_two {
        std::fs::read(dir(&m.dir).join(name)).unwrap();
    }
    wait_until("the rest of the listing prefetched", || {
        names.iter().all(|id| gets(&up, &format!("/v1/pets/{id}")) == 1)
    });
    let out = ok(&format!("grep -r -c pet {} | grep -c ':1$'", dir(&m.dir).display()));
    assert_eq!(out.trim(), "20", "grep -r read every item: {out}");
    for id in &names {
        assert_eq!(gets(&up, &format!("/v1/pets/{id}")), 1, "{id}: fetched once, by prefetch or its open");
    }
    drop(m);

    // --no-cache keeps nothing, so it fetches nothing ahead.
    let before = up.seen().len();
    let cold = Mountd::start(&n, "cold", &["--no-cache"]);
    for name in &first_two {
        std::fs::read(dir(&cold.dir).join(name)).unwrap();
    }
    let items = |from: usize| -> Vec<String> {
        let mut v: Vec<String> =
            up.seen()[from..].iter().map(|s| s.uri.clone()).filter(|u| u.starts_with("/v1/pets/")).collect();
        v.sort();
        v
    };
    assert_eq!(items(before), ["/v1/pets/p0", "/v1/pets/p1"], "--no-cache: only what was opened");
    drop(cold);

    // A token that may list the collection but read only p0, p1 and p5: prefetch asks with
    // the mount's token, so the upstream sees p5 fetched ahead, and no other item.
    n.ok(&["auth", "--agent", "reader"]);
    let token = n
        .ok(&[
            "token",
            "attenuate",
            "--allow",
            "shop.test:list",
            "--allow",
            "shop.test:read/pets.d/p0",
            "--allow",
            "shop.test:read/pets.d/p1",
            "--allow",
            "shop.test:read/pets.d/p5",
            "--ttl",
            "1h",
        ])
        .trim()
        .to_owned();
    let view = n.dir.path().join("view");
    n.ok(&["mount", view.to_str().unwrap(), "--token", &token]);
    let before = up.seen().len();
    assert_eq!(std::fs::read_dir(dir(&view)).unwrap().count(), 20, "the token lists every item");
    for name in &first_two {
        assert_eq!(std::fs::read(dir(&view).join(name)).unwrap(), pet(name).as_bytes());
    }
    wait_until("p5 prefetched", || up.seen()[before..].iter().any(|s| s.uri == "/v1/pets/p5"));
    assert_eq!(std::fs::read(dir(&view).join("p5")).unwrap(), pet("p5").as_bytes());
    let err = std::fs::read(dir(&view).join("p3")).unwrap_err();
    assert!(matches!(err.raw_os_error(), Some(libc::EACCES) | Some(libc::ENOENT)), "{err}");
    assert_eq!(items(before), ["/v1/pets/p0", "/v1/pets/p1", "/v1/pets/p5"], "nothing the token may not read");
    n.ok(&["umount", view.to_str().unwrap()]);
}

/// A raw HTTP/1.1 upstream for `/v1/big` of `len` bytes (content-length announced): the
/// first request sends `first` bytes, waits for `gate`, then the rest; later requests send
/// `first` bytes and close the connection (a body cut off).
fn gated_upstream(body: Arc<Vec<u8>>, first: usize, gate: std::sync::mpsc::Receiver<()>) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let gate = Arc::new(Mutex::new(Some(gate)));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let (body, gate) = (body.clone(), gate.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut out = stream;
                loop {
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    out.write_all(head.as_bytes()).unwrap();
                    out.write_all(&body[..first]).unwrap();
                    out.flush().unwrap();
                    let held = gate.lock().unwrap().take();
                    match held {
                        Some(gate) => {
                            let _ = gate.recv();
                            if out.write_all(&body[first..]).is_err() {
                                return;
                            }
                        }
                        None => return, // cut off: the connection closes mid-body
                    }
                }
            });
        }
    });
    url
}

#[test]
fn a_large_body_is_read_while_it_arrives_and_a_cut_one_fails() {
    if !fuse_available() {
        return;
    }
    use std::io::Read;
    const LEN: usize = 24 * 1024 * 1024;
    const FIRST: usize = 2 * 1024 * 1024;
    let body = Arc::new(big_body(LEN));
    let (release, gate) = std::sync::mpsc::channel();
    let url = gated_upstream(body.clone(), FIRST, gate);
    let n = Nkmc::new("");
    n.up();
    let spec = n.dir.path().join("shop.yaml");
    std::fs::write(&spec, SPEC).unwrap();
    n.ok(&["register", "--spec", spec.to_str().unwrap(), "--base-url", &url, "--domain", "shop.test"]);
    let m = Mountd::start(&n, "stream", &["--no-cache"]);
    let file = m.dir.join("shop.test/big");

    // The first bytes read while the upstream still holds the rest back: the open does not
    // wait for the whole body, and the size is the announced one.
    let (got, first_read) = std::sync::mpsc::channel();
    let reader = std::thread::spawn({
        let file = file.clone();
        move || {
            let mut f = std::fs::File::open(&file).unwrap();
            let size = f.metadata().unwrap().len();
            let mut start = vec![0u8; 1024 * 1024];
            f.read_exact(&mut start).unwrap();
            got.send((size, start)).unwrap();
            let mut rest = Vec::new();
            f.read_to_end(&mut rest).unwrap();
            rest
        }
    });
    let (size, start) =
        first_read.recv_timeout(Duration::from_secs(30)).expect("the first MiB while the rest is held back");
    assert_eq!(size, LEN as u64);
    assert_eq!(start, body[..start.len()]);
    release.send(()).unwrap();
    let rest = reader.join().unwrap();
    assert_eq!(rest.len(), LEN - 1024 * 1024);
    assert!(rest == body[1024 * 1024..], "the rest, byte for byte");

    // A body cut off mid-way: what arrived reads, the read past it fails with EIO.
    let mut f = std::fs::File::open(&file).unwrap();
    let mut all = Vec::new();
    let err = f.read_to_end(&mut all).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(all.len() < LEN);
}
