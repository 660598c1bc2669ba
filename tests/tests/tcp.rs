//! gatewayd's agent API over TCP (`NKMC_HOST`/`NKMC_PORT`): bearer tokens on every request
//! but the health checks, only the agent subset of routes, the same answers as the socket;
//! and the instance lock that keeps a second gatewayd off a data dir. No FUSE needed.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use nkmc_e2e::{canary, contains, fixture, http, json, Nkmc, Upstream};

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn agents_use_the_tcp_api_with_a_bearer_token_and_nothing_else() {
    let up = Upstream::start(|req| match (req.method.as_str(), req.uri.as_str()) {
        ("GET", "/v1/pets") => json(200, r#"[{"id":1,"name":"rex"}]"#),
        ("POST", "/v1/pets") => json(201, r#"{"id":2}"#),
        _ => json(404, "{}"),
    });
    let n = Nkmc::new("");
    n.ok(&["gateway", "start", "--daemon"]);
    let spec = fixture("openapi/petstore.yaml");
    n.ok(&["register", "--spec", spec.to_str().unwrap(), "--domain", "pets.test", "--base-url", &up.url("/v1")]);
    let secret = canary();
    n.run_stdin(&["keys", "set", "pets.test", "--token", "-"], secret.as_bytes());
    let addr = n.tcp_addr();
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");

    // Probes answer without a token.
    let health = http(addr, "GET", "/healthz", &[], b"");
    assert_eq!((health.status, health.text().as_str()), (200, r#"{"status":"ok"}"#));
    assert_eq!(http(addr, "GET", "/readyz", &[], b"").status, 200);

    // Without a bearer token nothing else answers, not even an unknown route.
    for (method, target) in [("GET", "/v1/fs/list?path=/"), ("GET", "/v1/keys"), ("GET", "/v1/nothing")] {
        let a = http(addr, method, target, &[], b"");
        assert_eq!(a.status, 401, "{method} {target}: {}", a.text());
        assert_eq!(a.headers.get("www-authenticate").map(String::as_str), Some("Bearer realm=\"nkmc\""));
        assert!(a.text().contains("\"code\":\"unauthenticated\""), "{}", a.text());
        assert!(a.text().contains("nkmc token mint"), "the error says what to do: {}", a.text());
    }
    let basic = http(addr, "GET", "/v1/fs/list?path=/", &[("Authorization", "Basic b3duZXI6eA==")], b"");
    assert_eq!(basic.status, 401);

    // A token that is not ours sees nothing; a real one sees the tree and reads through.
    let forged = http(addr, "GET", "/v1/fs/list?path=/", &[("Authorization", "Bearer not-a-token")], b"");
    assert!(forged.status == 403 || forged.status == 404, "{} {}", forged.status, forged.text());
    let token = n.ok(&["token", "mint", "--agent", "remote"]).trim().to_owned();
    let auth = bearer(&token);
    let root = http(addr, "GET", "/v1/fs/list?path=/", &[("Authorization", &auth)], b"");
    assert_eq!(root.status, 200, "{}", root.text());
    assert!(root.text().contains("\"pets.test\""), "{}", root.text());
    let pets = http(addr, "GET", "/v1/fs/read?path=/pets.test/pets", &[("Authorization", &auth)], b"");
    assert_eq!((pets.status, pets.text().as_str()), (200, r#"[{"id":1,"name":"rex"}]"#));
    assert_eq!(pets.headers.get("x-nkmc-upstream-status").map(String::as_str), Some("200"));
    let sent = up.seen().into_iter().find(|s| s.uri == "/v1/pets").unwrap();
    assert!(sent.headers.values().any(|v| v.contains(&secret)), "the upstream got the pool key");
    assert!(!contains(&pets.body, secret.as_bytes()));

    // `nkmc run`'s API is there for remote agents too.
    let tools = http(addr, "GET", "/v1/proxy/tools", &[("Authorization", &auth)], b"");
    assert_eq!(tools.status, 200, "{}", tools.text());
    assert!(tools.text().contains("\"name\":\"gh\""), "{}", tools.text());
    assert_eq!(http(addr, "GET", "/v1/proxy/tools", &[], b"").status, 401);

    // The same bytes as the socket's `nkmc cat`.
    assert_eq!(n.ok(&["cat", "/pets.test/pets"]).as_bytes(), &pets.body[..]);

    // Owner routes do not exist over TCP, whatever the token.
    for (method, target) in [
        ("GET", "/v1/keys"),
        ("GET", "/v1/status"),
        ("POST", "/v1/tokens"),
        ("GET", "/v1/audit"),
        ("POST", "/v1/shutdown"),
    ] {
        let a = http(addr, method, target, &[("Authorization", &auth)], b"{}");
        assert_eq!(a.status, 400, "{method} {target}: {}", a.text());
        assert!(a.text().contains("no such route"), "{}", a.text());
        assert!(!contains(&a.body, secret.as_bytes()));
    }

    // An attenuated read-only token cannot write over TCP either; the full token can.
    let ro = n.ok(&["token", "attenuate", "--token", &token, "--allow", "pets.test:read"]).trim().to_owned();
    let body = br#"{"name":"tcp"}"#;
    let refused = http(addr, "POST", "/v1/fs/write?path=/pets.test/pets", &[("Authorization", &bearer(&ro))], body);
    assert_eq!(refused.status, 404, "unauthorized looks like unknown: {}", refused.text());
    assert!(!up.seen().iter().any(|s| s.method == "POST"), "nothing reached the upstream");
    let written = http(addr, "POST", "/v1/fs/write?path=/pets.test/pets", &[("Authorization", &auth)], body);
    assert_eq!((written.status, written.text().as_str()), (200, r#"{"id":2}"#));

    // The audit log names the agent of each TCP request.
    let tail = n.ok(&["audit", "tail", "-n", "50"]);
    assert!(tail.contains("remote"), "{tail}");
    assert!(!tail.contains(&secret));

    // `nkmc down` stops the TCP listener with the socket.
    n.ok(&["down"]);
    assert!(std::net::TcpStream::connect(addr).is_err(), "the TCP listener is closed");
}

#[test]
fn a_port_the_user_chose_that_is_taken_stops_gatewayd_with_a_clear_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let n = Nkmc::new("");
    let out = n.cmd(&["gateway", "start", "--daemon"]).env("NKMC_PORT", &port).output().unwrap();
    assert!(!out.status.success());
    let log = std::fs::read_to_string(n.data_dir.join("gatewayd.log")).unwrap_or_default();
    let said = format!("{}{}{log}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(said.contains(&format!("cannot listen on 127.0.0.1:{port}")), "{said}");
    assert!(said.contains("NKMC_PORT=off"), "the message says what to do: {said}");

    // Off means off: no TCP listener, the socket works.
    n.cmd(&["gateway", "start", "--daemon"]).env("NKMC_PORT", "off").output().unwrap();
    let status = n.ok(&["gateway", "status"]);
    assert!(status.contains("tcp:      off"), "{status}");
}

#[test]
fn a_second_gatewayd_on_the_same_data_dir_refuses_to_start() {
    let n = Nkmc::new("");
    n.ok(&["gateway", "start", "--daemon"]);
    let second = std::process::Command::new(nkmc_e2e::bin("gatewayd"))
        .env("NKMC_DATA_DIR", &n.data_dir)
        .env("NKMC_CONFIG", &n.config)
        .env("NKMC_PORT", "0")
        .env("NKMC_SOCKET", n.dir.path().join("other.sock"))
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another gatewayd"), "{err}");
    // The first one still serves.
    n.ok(&["gateway", "status"]);
}
