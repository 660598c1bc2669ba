//! Federation with three real gatewayd processes on 127.0.0.1, each with its own data dir:
//! A borrows a domain from B (B's key, B's upstream), C is refused by B's rules, and the
//! lender refuses replayed, re-timed, tampered, cross-directed and bypassing requests.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use nkmc_e2e::{canary, contains, eventually, fixture, fuse_available, json, unix_now, Nkmc, PeerRequest, Upstream};

const SECRET_AB: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00123456789abcdef0123456789abcdef";
const SECRET_BC: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90f1e2d3c4b5a6978812345678deadbeef";
const PETS: &str = r#"[{"id":1,"name":"rex"},{"id":2,"name":"tom"}]"#;

fn gateway(id: &str) -> Nkmc {
    nkmc_e2e::federated_gateway(id, "")
}

fn url(n: &Nkmc) -> String {
    format!("http://{}", n.tcp_addr())
}

#[test]
fn a_borrows_from_b_c_is_refused_and_the_lender_cannot_be_fooled() {
    let key = canary();
    let up = Upstream::keyed(&key, move |req| match (req.method.as_str(), req.uri.as_str()) {
        ("GET", "/v1/pets") => json(200, PETS),
        ("GET", "/v1/pets/1") => json(200, r#"{"id":1,"name":"rex"}"#),
        _ => json(404, "{}"),
    });
    let (a, b, c) = (gateway("gw-a"), gateway("gw-b"), gateway("gw-c"));

    // B holds the service and the key, and lends read access to A only.
    b.hold_pets(&up.url("/v1"), &key);
    b.ok(&["rules", "set", "pets.test", "--allow", "--peers", "gw-a", "--ops", "read"]);
    let weak = b.run(&["peers", "add", "--id", "gw-a", "--name", "A", "--url", &url(&a), "--secret", "short"]);
    assert!(!weak.status.success() && String::from_utf8_lossy(&weak.stderr).contains("at least 32 bytes"));

    // The pair adds each other with one secret; C and B likewise.
    a.ok(&["peers", "add", "--id", "gw-b", "--name", "B", "--url", &url(&b), "--secret", SECRET_AB]);
    b.ok(&["peers", "add", "--id", "gw-a", "--name", "A", "--url", &url(&a), "--secret", SECRET_AB]);
    c.ok(&["peers", "add", "--id", "gw-b", "--name", "B", "--url", &url(&b), "--secret", SECRET_BC]);
    b.ok(&["peers", "add", "--id", "gw-c", "--name", "C", "--url", &url(&c), "--secret", SECRET_BC]);
    assert!(b.ok(&["gateway", "status"]).contains("gateway:  gw-b"));

    // A sees the borrowed domain like any other, and reads through B with B's key.
    eventually("A sees pets.test", || a.run(&["ls", "/"]).stdout.windows(10).any(|w| w == b"pets.test/"));
    assert_eq!(a.ok(&["cat", "/pets.test/pets"]), PETS);
    assert_eq!(a.ok(&["ls", "/pets.test/pets.d"]), "1\n2\n");
    assert_eq!(a.ok(&["cat", "/pets.test/pets.d/1"]), r#"{"id":1,"name":"rex"}"#);
    let skill = a.ok(&["cat", "/pets.test/skill.md"]);
    assert!(skill.contains("borrowed from a peer") && skill.contains("`gw-b` (B): free; lends read"), "{skill}");
    assert!(a.ok(&["peers", "list"]).contains("lends: pets.test"));
    if fuse_available() {
        a.up();
        assert_eq!(std::fs::read_to_string(a.mount.join("pets.test/pets")).unwrap(), PETS);
    }

    // Only read is lent: A's write is refused by B and never reaches the upstream.
    let w = a.run(&["write", "/pets.test/pets", r#"{"name":"x"}"#]);
    assert!(!w.status.success());
    assert!(String::from_utf8_lossy(&w.stderr).contains("not lent"), "{}", String::from_utf8_lossy(&w.stderr));
    assert!(up.seen().iter().all(|s| s.method == "GET"));

    // B's audit names the peer; B's key is nowhere on A's side.
    let b_audit = b.ok(&["audit", "tail", "-n", "100"]);
    assert!(b_audit.contains("peer:gw-a"), "{b_audit}");
    for f in a.data_files() {
        assert!(!contains(&std::fs::read(&f).unwrap_or_default(), key.as_bytes()), "B's key is in {}", f.display());
    }
    assert!(!a.ok(&["audit", "tail", "-n", "100"]).contains(&key));

    // C is refused by B's rules: B lends C nothing, C sees nothing, the upstream saw nothing.
    let seen_before = up.seen().len();
    b.ok(&["rules", "set", "*", "--deny", "--peers", "gw-c"]);
    eventually("C has heard from B", || c.ok(&["peers", "list"]).contains("online"));
    assert!(!c.ok(&["ls", "/"]).contains("pets.test"));
    assert!(!c.run(&["cat", "/pets.test/pets"]).status.success());
    let b_addr = b.tcp_addr();
    let exec = |op: &str, path: &str| format!(r#"{{"op":"{op}","path":"{path}"}}"#);
    let body = exec("read", "/pets.test/pets");
    let signed = |sender: &'static str, secret: &'static str, body: &str, nonce: &str| {
        PeerRequest {
            path: "/federation/exec",
            body: body.as_bytes(),
            signed_body: body.as_bytes(),
            timestamp: unix_now(),
            nonce,
            sender,
            recipient: "gw-b",
            secret: secret.as_bytes(),
        }
        .send(b_addr)
    };
    let from_c = signed("gw-c", SECRET_BC, &body, "00000000000000000000000000000c01");
    assert_eq!(from_c.status, 403, "{}", from_c.text());
    assert!(from_c.text().contains("not lent"));
    assert_eq!(up.seen().len(), seen_before, "nothing reached the upstream for C");

    // A correctly signed request from A works once; every forgery of it is refused.
    let good_nonce = "00000000000000000000000000000a01";
    let ok = signed("gw-a", SECRET_AB, &body, good_nonce);
    // A small body comes whole and signed (large ones stream in signed frames: see
    // a_large_lent_body_streams_through_both_gateways_in_bounded_memory).
    assert_eq!((ok.status, ok.text().as_str()), (200, PETS));
    assert_eq!(ok.headers.get("x-nkmc-body"), None);
    let seen_after_ok = up.seen().len();
    let base = PeerRequest {
        path: "/federation/exec",
        body: body.as_bytes(),
        signed_body: body.as_bytes(),
        timestamp: unix_now(),
        nonce: good_nonce,
        sender: "gw-a",
        recipient: "gw-b",
        secret: SECRET_AB.as_bytes(),
    };
    let delete = exec("delete", "/pets.test/pets.d/1");
    let forgeries = [
        ("replayed", PeerRequest { ..base }),
        ("re-timed", PeerRequest { timestamp: unix_now() - 120, nonce: "00000000000000000000000000000a02", ..base }),
        ("tampered", PeerRequest { body: delete.as_bytes(), nonce: "00000000000000000000000000000a03", ..base }),
        ("cross-directed", PeerRequest { recipient: "gw-c", nonce: "00000000000000000000000000000a04", ..base }),
        (
            "wrong secret",
            PeerRequest { secret: SECRET_BC.as_bytes(), nonce: "00000000000000000000000000000a05", ..base },
        ),
        ("unknown peer", PeerRequest { sender: "gw-x", nonce: "00000000000000000000000000000a06", ..base }),
    ];
    for (what, req) in forgeries {
        let a = req.send(b_addr);
        assert_eq!((a.status, a.text().as_str()), (401, "federation: refused"), "{what}");
    }
    // Bypass forms, correctly signed: refused before any upstream call.
    for (i, (op, path, status)) in [
        ("grep", "/", 400),
        ("list", "/", 400),
        ("read", "//pets.test/pets", 400),
        ("read", "/pets.test/../pets.test/pets", 400),
        ("read", "/pets.test/pets/", 400),
        ("read", "/pets.test/%2e%2e/pets", 404),
        ("read", "/README.md", 404),
        ("write", "/pets.test/pets", 403),
        ("delete", "/pets.test/pets.d/1", 403),
    ]
    .into_iter()
    .enumerate()
    {
        let nonce = format!("{:032x}", 0xb000 + i);
        let a = signed("gw-a", SECRET_AB, &exec(op, path), &nonce);
        assert_eq!(a.status, status, "{op} {path}: {}", a.text());
        assert!(!contains(&a.body, key.as_bytes()));
    }
    let shell = signed(
        "gw-a",
        SECRET_AB,
        r#"{"op":"read","path":"/pets.test/pets","command":"id"}"#,
        &format!("{:032x}", 0xc001),
    );
    assert_eq!(shell.status, 400, "unknown members are refused");
    assert_eq!(up.seen().len(), seen_after_ok, "no bypass reached the upstream");

    // Removing the rule: B tells A, and the domain disappears from A.
    b.ok(&["rules", "remove", "pets.test"]);
    eventually("A forgets pets.test", || !a.ok(&["ls", "/"]).contains("pets.test"));
}

#[test]
fn a_coordinator_lists_who_offers_what_and_never_adds_a_peer() {
    let k = Nkmc::new("[federation]\ncoordinator = true\n");
    k.ok(&["gateway", "start", "--daemon"]);
    let k_addr = k.tcp_addr();
    let config = format!("[federation]\ncoordinator_url = \"http://{k_addr}\"\n");
    let start = |id: &str| {
        let n = Nkmc::new(&config);
        let out = n.cmd(&["gateway", "start", "--daemon"]).env("NKMC_GATEWAY_ID", id).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        n
    };
    let (a, b) = (start("gw-a"), start("gw-b"));
    let up = Upstream::start(|_| json(200, "[]"));
    let spec = fixture("openapi/petstore.yaml");
    b.ok(&["register", "--spec", spec.to_str().unwrap(), "--domain", "pets.test", "--base-url", &up.url("/v1")]);
    b.ok(&["rules", "set", "pets.test", "--allow"]);

    eventually("the coordinator lists B offering pets.test", || {
        a.ok(&["peers", "discover", "--domain", "pets.test"]).contains("gw-b")
    });
    let found = a.ok(&["peers", "discover", "--domain", "pets.test"]);
    assert!(found.contains(&url(&b)) && found.contains("offers: pets.test"), "{found}");
    assert!(!found.contains("gw-a"), "A offers nothing: {found}");
    assert!(a.ok(&["peers", "discover"]).contains("gw-a"), "every online gateway without --domain");
    assert!(a.ok(&["peers", "discover", "--domain", "nope.test"]).contains("no gateway online"));
    // Discovery adds nobody: peering needs each owner's `peers add` and a secret.
    assert!(a.ok(&["peers", "list"]).contains("no peers"));
    assert!(!a.ok(&["ls", "/"]).contains("pets.test"));

    // The directory refuses malformed entries; it is not an agent API (no token needed).
    let bad = nkmc_e2e::http(
        k_addr,
        "POST",
        "/coordinator/heartbeat",
        &[("Content-Type", "application/json")],
        br#"{"id":"Evil Id","name":"x","url":"http://127.0.0.1:1","domains":[]}"#,
    );
    assert_eq!(bad.status, 400, "{}", bad.text());
    // A gateway that is not a coordinator has no directory.
    let not = nkmc_e2e::http(a.tcp_addr(), "GET", "/coordinator/gateways", &[], b"");
    assert_eq!(not.status, 400, "{}", not.text());
}

#[test]
fn nkmc_run_on_a_peer_that_lends_the_tool_s_domain() {
    let key = canary();
    let dir = tempfile::tempdir().unwrap();
    let tool = dir.path().join("leaky");
    std::fs::write(&tool, "#!/bin/bash\necho \"token=$LEAKY_TOKEN\"\necho \"stdin=$(cat)\"\nexit 3\n").unwrap();
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = format!(
        "[run.tools.leaky]\nbinary = \"{}\"\ndomain = \"tools.test\"\ninject = {{ LEAKY_TOKEN = \"secret\" }}\n",
        tool.display()
    );
    let start = |id: &str| {
        let n = Nkmc::new(&config);
        let out = n.cmd(&["gateway", "start", "--daemon"]).env("NKMC_GATEWAY_ID", id).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        n
    };
    let (a, b) = (start("gw-a"), start("gw-b"));
    assert!(b.run_stdin(&["keys", "set", "tools.test", "--token", "-"], key.as_bytes()).status.success());

    // Not lent yet: A has no key and no lender, so the tool cannot run.
    a.ok(&["peers", "add", "--id", "gw-b", "--name", "B", "--url", &url(&b), "--secret", SECRET_AB]);
    b.ok(&["peers", "add", "--id", "gw-a", "--name", "A", "--url", &url(&a), "--secret", SECRET_AB]);
    let refused = a.run_stdin(&["run", "leaky"], b"x");
    assert!(!refused.status.success());

    // B lends `run` of tools.test to A: the tool runs on B, with B's key, masked on B.
    b.ok(&["rules", "set", "tools.test", "--allow", "--peers", "gw-a", "--ops", "run"]);
    eventually("A learns B lends tools.test", || a.ok(&["peers", "list"]).contains("lends: tools.test"));
    let out = a.run_stdin(&["run", "leaky"], b"hello");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "the tool's exit code: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("token=[masked by nkmc]"), "{stdout}");
    assert!(stdout.contains("stdin=hello"), "{stdout}");
    assert!(!contains(&out.stdout, key.as_bytes()) && !contains(&out.stderr, key.as_bytes()));
    for f in a.data_files() {
        assert!(!contains(&std::fs::read(&f).unwrap_or_default(), key.as_bytes()), "B's key is in {}", f.display());
    }
    assert!(b.ok(&["audit", "tail", "-n", "50"]).contains("peer:gw-a"));
}

#[test]
fn a_tunnel_publishes_the_gateway_to_the_coordinator_and_stops_with_it() {
    use std::os::unix::fs::PermissionsExt;
    let k = Nkmc::new("[federation]\ncoordinator = true\n");
    k.ok(&["gateway", "start", "--daemon"]);
    // A stand-in for cloudflared: prints a quick tunnel's banner as cloudflared does, records
    // its arguments and pid, and runs until it is killed.
    let bin = tempfile::tempdir().unwrap();
    let (args_file, pid_file) = (bin.path().join("args"), bin.path().join("pid"));
    let script = bin.path().join("cloudflared");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$@\" > {args}\necho $$ > {pid}\n\
             echo '2026-11-23T10:00:00Z INF Requesting new quick Tunnel on trycloudflare.com...' >&2\n\
             echo '2026-11-23T10:00:01Z INF |  https://quiet-fox-sits-here.trycloudflare.com  |' >&2\n\
             exec sleep 600\n",
            args = args_file.display(),
            pid = pid_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = format!(
        "[federation]\ncoordinator_url = \"http://{}\"\ntunnel_command = \"{}\"\n",
        k.tcp_addr(),
        script.display()
    );
    let b = Nkmc::new(&config);
    let out = b.cmd(&["gateway", "start", "--daemon", "--tunnel"]).env("NKMC_GATEWAY_ID", "gw-b").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let public = "https://quiet-fox-sits-here.trycloudflare.com";
    eventually("B's status shows the tunnel", || b.ok(&["gateway", "status"]).contains(public));
    let args = std::fs::read_to_string(&args_file).unwrap();
    assert_eq!(args.trim(), format!("tunnel --no-autoupdate --url http://{}", b.tcp_addr()));
    eventually("the coordinator lists B at its public URL", || b.ok(&["peers", "discover"]).contains(public));
    let again = b.run(&["gateway", "start", "--daemon", "--tunnel"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already running"));

    // Stopping gatewayd stops the tunnel.
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    b.ok(&["gateway", "stop"]);
    eventually("the tunnel process is gone", || {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
    });

    // Without the provider installed, --tunnel fails with what to do.
    let c = Nkmc::new("[federation]\ntunnel_command = \"/nonexistent/cloudflared\"\n");
    let out = c.cmd(&["gateway", "start", "--daemon", "--tunnel"]).output().unwrap();
    assert!(!out.status.success());
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains("install cloudflared") && why.contains("public_url"), "{why}");
}

fn gatewayd_pid(n: &Nkmc) -> i32 {
    let status = n.ok(&["gateway", "status"]);
    let pid = status.split("(pid ").nth(1).and_then(|r| r.split(',').next()).unwrap();
    pid.parse().unwrap()
}

#[test]
fn a_large_lent_body_streams_through_both_gateways_in_bounded_memory() {
    const BIG: usize = 96 * 1024 * 1024;
    let key = canary();
    let big: std::sync::Arc<Vec<u8>> = std::sync::Arc::new((0..BIG).map(|i| b"0123456789abcdef"[i % 16]).collect());
    let body = big.clone();
    let up = Upstream::keyed(&key, move |_| {
        (200, vec![("content-type".into(), "application/octet-stream".into())], body.to_vec())
    });
    let config = "[upstream]\nmax_body_bytes = 209715200\n";
    let start = |id: &str| {
        let n = Nkmc::new(config);
        let out = n.cmd(&["gateway", "start", "--daemon"]).env("NKMC_GATEWAY_ID", id).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        n
    };
    let (a, b) = (start("gw-a"), start("gw-b"));
    b.hold_pets(&up.url("/v1"), &key);
    b.ok(&["rules", "set", "pets.test", "--allow", "--peers", "gw-a"]);
    a.ok(&["peers", "add", "--id", "gw-b", "--name", "B", "--url", &url(&b), "--secret", SECRET_AB]);
    b.ok(&["peers", "add", "--id", "gw-a", "--name", "A", "--url", &url(&a), "--secret", SECRET_AB]);
    eventually("A sees pets.test", || a.run(&["ls", "/"]).stdout.windows(10).any(|w| w == b"pets.test/"));

    let out = a.run(&["cat", "/pets.test/pets.d/7"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout.len(), BIG);
    assert!(out.stdout == *big, "the body arrived changed");
    // Neither gateway held the body whole: each streamed it in frames.
    for (name, n) in [("A", &a), ("B", &b)] {
        let hwm_mib = nkmc_e2e::vm_hwm_kib(gatewayd_pid(n)) / 1024;
        assert!(hwm_mib < 80, "gatewayd {name} peaked at {hwm_mib} MiB for a {} MiB body", BIG >> 20);
    }
    // A's record names who asked (the owner, here) and the lender that served it.
    let tail = a.ok(&["audit", "tail", "-n", "20"]);
    assert!(
        tail.lines().any(|l| l.contains("/pets.test/pets.d/7") && l.contains("peer gw-b") && !l.contains("peer:gw-b")),
        "{tail}"
    );
}

#[test]
fn when_a_lender_is_down_a_fails_over_to_the_next_then_fails_with_a_clear_error() {
    let (key_b, key_c) = (canary(), canary());
    let (kb, kc) = (format!("Bearer {key_b}"), format!("Bearer {key_c}"));
    let up = Upstream::start(move |req| match req.headers.get("authorization") {
        Some(k) if *k == kb || *k == kc => json(200, PETS),
        _ => json(401, "{}"),
    });
    let (a, b, c) = (gateway("gw-a"), gateway("gw-b"), gateway("gw-c"));
    for (lender, key, secret) in [(&b, &key_b, SECRET_AB), (&c, &key_c, SECRET_BC)] {
        lender.hold_pets(&up.url("/v1"), key);
        lender.ok(&["rules", "set", "pets.test", "--allow", "--peers", "gw-a"]);
        let id = if std::ptr::eq(lender, &b) { "gw-b" } else { "gw-c" };
        a.ok(&["peers", "add", "--id", id, "--name", id, "--url", &url(lender), "--secret", secret]);
        lender.ok(&["peers", "add", "--id", "gw-a", "--name", "A", "--url", &url(&a), "--secret", secret]);
    }
    eventually("A knows both lenders", || {
        let skill = a.run(&["cat", "/pets.test/skill.md"]);
        let skill = String::from_utf8_lossy(&skill.stdout);
        skill.contains("`gw-b`") && skill.contains("`gw-c`")
    });
    assert_eq!(a.ok(&["cat", "/pets.test/pets"]), PETS);

    // One lender down: the read goes to the other.
    b.ok(&["gateway", "stop"]);
    let before = up.seen().len();
    assert_eq!(a.ok(&["cat", "/pets.test/pets"]), PETS);
    let last = up.seen().last().cloned().unwrap();
    assert_eq!(up.seen().len(), before + 1);
    assert_eq!(last.headers.get("authorization"), Some(&format!("Bearer {key_c}")), "C's key served it");
    assert!(a.ok(&["audit", "tail", "-n", "5"]).contains("peer gw-c"));

    // Both down: a clear error naming the lender, and nothing upstream.
    c.ok(&["gateway", "stop"]);
    let out = a.run(&["cat", "/pets.test/pets"]);
    assert!(!out.status.success());
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains("unreachable") && why.contains("peer gw-"), "{why}");
    assert_eq!(up.seen().len(), before + 1);
}
