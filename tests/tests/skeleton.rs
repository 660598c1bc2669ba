//! The walking skeleton, end to end: real binaries, a real FUSE mount, a loopback upstream.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use nkmc_e2e::{canary, contains, fixture, fuse_available, json, Nkmc, Upstream};

const MODELS: &str =
    "{\"object\":\"list\",\"data\":[{\"id\":\"gpt-4o\",\"object\":\"model\"},{\"id\":\"o3\",\"note\":\"✓ ünïcode\"}]}";

/// An upstream playing api.openai.com/v1 that only answers the right bearer key.
fn openai_upstream(key: String) -> Upstream {
    Upstream::start(move |req| {
        if req.headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {key}")) {
            return json(401, r#"{"error":{"message":"Incorrect API key provided"}}"#);
        }
        match req.uri.as_str() {
            "/v1/models" => json(200, MODELS),
            "/v1/models?limit=1&order=asc" => json(200, r#"{"data":[{"id":"gpt-4o"}]}"#),
            "/v1/models/gpt-4o" => json(200, r#"{"id":"gpt-4o","object":"model"}"#),
            _ => json(404, r#"{"error":{"message":"not found"}}"#),
        }
    })
}

fn register_openai(n: &Nkmc, up: &Upstream) {
    let spec = fixture("openapi/openai.yaml");
    let out = n.ok(&[
        "register",
        "--spec",
        spec.to_str().unwrap(),
        "--domain",
        "api.openai.com",
        "--base-url",
        &up.url("/v1"),
    ]);
    assert!(out.contains("api.openai.com"), "{out}");
}

fn errno_of(r: std::io::Result<Vec<u8>>) -> i32 {
    r.expect_err("expected an error").raw_os_error().expect("an OS error")
}

#[test]
fn ls_and_cat_through_the_mount() {
    if !fuse_available() {
        return;
    }
    let key = canary();
    let up = openai_upstream(key.clone());
    let n = Nkmc::new("");
    let printed = n.up();
    assert_eq!(printed.trim(), n.mount.to_str().unwrap(), "nkmc up prints the mount point");
    register_openai(&n, &up);
    let out = n.run_stdin(&["keys", "set", "api.openai.com", "--token", "-"], format!("{key}\n").as_bytes());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let root: Vec<String> =
        std::fs::read_dir(&n.mount).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    let mut root = root;
    root.sort();
    assert_eq!(root, vec![".nkmc", "README.md", "api.openai.com"]);
    let readme = std::fs::read_to_string(n.mount.join("README.md")).unwrap();
    assert!(readme.contains("skill.md") && readme.contains("models.d/gpt-4o"), "{readme}");

    let svc = n.mount.join("api.openai.com");
    let top: Vec<(String, bool)> = std::fs::read_dir(&svc)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().into_string().unwrap(), e.file_type().unwrap().is_dir())
        })
        .collect();
    assert!(top.contains(&("models".into(), false)), "models is a file: {top:?}");
    assert!(top.contains(&("models.d".into(), true)), "models.d is a directory: {top:?}");
    assert!(top.contains(&("chat".into(), true)), "chat is a directory: {top:?}");

    let skill = std::fs::read_to_string(svc.join("skill.md")).unwrap();
    assert!(skill.starts_with("---\nname: \"api.openai.com\"\ngateway: nkmc\n"), "{skill}");
    assert!(skill.contains("`GET /models/{model}`\n\nFile: `api.openai.com/models.d/{model}`"), "{skill}");
    assert_eq!(std::fs::metadata(svc.join("skill.md")).unwrap().len(), skill.len() as u64, "real size");

    // The collection's items, from its GET response.
    let mut items: Vec<String> = std::fs::read_dir(svc.join("models.d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    items.sort();
    assert_eq!(items, vec!["gpt-4o", "o3"]);

    let body = std::fs::read(svc.join("models")).unwrap();
    assert_eq!(body, MODELS.as_bytes(), "the upstream body, byte for byte");
    let one = std::fs::read(svc.join("models.d/gpt-4o")).unwrap();
    assert_eq!(one, br#"{"id":"gpt-4o","object":"model"}"#);
    // Query strings are part of the name; `x.json` is a hidden alias of `x`.
    let some = std::fs::read(svc.join("models?limit=1&order=asc")).unwrap();
    assert_eq!(some, br#"{"data":[{"id":"gpt-4o"}]}"#);
    assert_eq!(std::fs::read(svc.join("models.json")).unwrap(), MODELS.as_bytes());

    let seen = up.seen();
    assert!(seen.iter().any(|s| s.method == "GET" && s.uri == "/v1/models"));
    assert!(seen.iter().all(|s| s.headers.get("authorization") == Some(&format!("Bearer {key}"))));

    // The same without a mount.
    let cat = n.cmd(&["cat", "/api.openai.com/models"]).output().unwrap();
    assert_eq!(cat.stdout, MODELS.as_bytes());
}

#[test]
fn failures_come_back_as_errno_quickly() {
    if !fuse_available() {
        return;
    }
    let key = canary();
    let up = openai_upstream(key.clone());
    // An upstream that accepts connections and never answers.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // A port with nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let n = Nkmc::new("[upstream]\ntimeout_ms = 800\nconnect_timeout_ms = 800\n");
    n.up();
    register_openai(&n, &up);
    n.ok(&["keys", "set", "api.openai.com", "--token", "sk-wrong-key"]);
    let svc = n.mount.join("api.openai.com");

    assert_eq!(errno_of(std::fs::read(svc.join("models"))), libc::EACCES, "401 → EACCES");
    let last = n.run(&["cat", "/api.openai.com/models"]);
    assert!(!last.status.success());
    assert!(String::from_utf8_lossy(&last.stderr).contains("401"), "the CLI says what the upstream said");

    n.ok(&["keys", "set", "api.openai.com", "--token", &key]);
    assert_eq!(errno_of(std::fs::read(svc.join("no-such-file"))), libc::ENOENT, "not in the tree → ENOENT");
    assert_eq!(errno_of(std::fs::read(svc.join("models.d/gpt-5"))), libc::ENOENT, "upstream 404 → ENOENT");

    let spec = fixture("openapi/petstore.yaml");
    let spec = spec.to_str().unwrap();
    n.ok(&["register", "--spec", spec, "--domain", "dead.test", "--base-url", &format!("http://{closed}/v1")]);
    let started = Instant::now();
    assert_eq!(errno_of(std::fs::read(n.mount.join("dead.test/pets"))), libc::ECONNREFUSED, "unreachable");
    assert!(started.elapsed() < Duration::from_secs(10), "no hang: {:?}", started.elapsed());

    let hung_url = format!("http://{}/v1", hung.local_addr().unwrap());
    n.ok(&["register", "--spec", spec, "--domain", "hung.test", "--base-url", &hung_url]);
    let started = Instant::now();
    assert_eq!(errno_of(std::fs::read(n.mount.join("hung.test/pets"))), libc::ETIMEDOUT, "timeout");
    assert!(started.elapsed() < Duration::from_secs(10), "no hang: {:?}", started.elapsed());
}

#[test]
fn the_vault_never_holds_the_key_in_plain_text() {
    if !fuse_available() {
        return;
    }
    let key = canary();
    let up = openai_upstream(key.clone());
    let n = Nkmc::new("");
    n.up();
    register_openai(&n, &up);
    n.run_stdin(&["keys", "set", "api.openai.com", "--token", "-"], key.as_bytes());
    // Use the key, so it has been decrypted and sent at least once.
    assert_eq!(std::fs::read(n.mount.join("api.openai.com/models")).unwrap(), MODELS.as_bytes());
    let listed = n.ok(&["keys", "list"]);
    assert!(listed.contains("api.openai.com") && !listed.contains(&key), "{listed}");

    let master = n.data_dir.join("master.key");
    assert_eq!(std::fs::metadata(&master).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(n.socket()).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(n.socket().parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);

    n.ok(&["down"]);
    let files = n.data_files();
    assert!(files.iter().any(|f| f.ends_with("nkmc.db")), "{files:?}");
    for f in files {
        let bytes = nkmc_e2e::read_if_present(&f);
        assert!(!contains(&bytes, key.as_bytes()), "{} contains the key in plain text", f.display());
    }
}

#[test]
fn up_status_down() {
    if !fuse_available() {
        return;
    }
    let n = Nkmc::new("");
    let stopped = n.run(&["gateway", "status"]);
    assert_eq!(stopped.status.code(), Some(3), "not running → exit 3");
    n.up();
    // A second `up` finds both running and changes nothing.
    n.up();
    let status = n.ok(&["gateway", "status"]);
    assert!(status.contains("running"), "{status}");
    assert!(status.contains(n.data_dir.to_str().unwrap()), "{status}");
    assert!(status.contains(&format!("{} (", n.mount.display())), "{status}");
    n.ok(&["down"]);
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!table.contains(n.mount.to_str().unwrap()), "unmounted");
    assert_eq!(n.run(&["gateway", "status"]).status.code(), Some(3));
}

#[test]
fn another_uid_is_refused_even_on_a_0666_socket() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: needs root to run a client as another uid");
        return;
    }
    let n = Nkmc::new("");
    n.ok(&["gateway", "start", "--daemon"]);
    // Open every door the file system has, so only the peer-uid check stands.
    for p in [n.dir.path(), &n.data_dir, &n.data_dir.join("run")] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(n.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let probe = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.settimeout(5)\ns.connect(sys.argv[1])\n\
                 try:\n  s.sendall(b'GET /v1/status HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n  print(len(s.recv(4096)))\n\
                 except (BrokenPipeError, ConnectionResetError):\n  print(0)";
    let as_uid = |uid: u32| {
        let out = std::process::Command::new("python3")
            .args(["-c", probe, n.socket().to_str().unwrap()])
            .uid(uid)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().parse::<usize>().unwrap()
    };
    use std::os::unix::process::CommandExt;
    assert_eq!(as_uid(65534), 0, "nobody gets a closed connection and no answer");
    assert!(as_uid(0) > 0, "the owner gets an answer");
}
