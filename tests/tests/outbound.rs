//! Outbound calls: a credential goes only to its service's origin, and the SSRF guard
//! decides on the address actually connected to.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use nkmc_e2e::{canary, fixture, json, Nkmc, Upstream};

fn petstore(n: &Nkmc, domain: &str, base: &str) -> std::process::Output {
    let spec = fixture("openapi/petstore.yaml");
    n.run(&["register", "--spec", spec.to_str().unwrap(), "--domain", domain, "--base-url", base])
}

#[test]
fn a_redirect_to_another_origin_carries_no_credential() {
    let key = canary();
    let elsewhere = Upstream::start(|_| json(200, r#"{"stolen":true}"#));
    let target = elsewhere.url("/collect");
    let home = Upstream::start(move |req| match req.uri.as_str() {
        "/v1/pets" => (302, vec![("location".into(), target.clone())], Vec::new()),
        "/v1/pets/1" => (302, vec![("location".into(), "/v1/pets/2".into())], Vec::new()),
        "/v1/pets/2" => json(200, r#"{"id":2}"#),
        _ => json(404, "{}"),
    });
    let n = Nkmc::new("");
    n.ok(&["gateway", "start", "--daemon"]);
    assert!(petstore(&n, "pets.test", &home.url("/v1")).status.success());
    n.ok(&["keys", "set", "pets.test", "--token", &key]);

    let out = n.run(&["cat", "/pets.test/pets"]);
    assert!(!out.status.success(), "a cross-origin redirect is not followed");
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 302"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(elsewhere.seen().is_empty(), "the other origin saw nothing: {:?}", elsewhere.seen());

    // Within the origin, redirects are followed and keep the credential.
    assert_eq!(n.ok(&["cat", "/pets.test/pets.d/1"]), r#"{"id":2}"#);
    let hop = home.seen().into_iter().find(|s| s.uri == "/v1/pets/2").unwrap();
    assert_eq!(hop.headers.get("authorization"), Some(&format!("Bearer {key}")));
}

#[test]
fn metadata_and_names_resolving_to_loopback_are_refused() {
    let up = Upstream::start(|_| json(200, r#"[{"id":1}]"#));
    let n = Nkmc::new("");
    n.ok(&["gateway", "start", "--daemon"]);

    for base in ["http://169.254.169.254/latest/meta-data", "http://[::ffff:169.254.169.254]/", "http://0xa9fea9fe/"] {
        let out = petstore(&n, "meta.test", base);
        assert!(!out.status.success(), "{base} registered");
        assert!(String::from_utf8_lossy(&out.stderr).contains("metadata"), "{}", String::from_utf8_lossy(&out.stderr));
    }

    // `localhost` is the owner's explicit choice; another name that resolves to loopback (the
    // machine's own host name, through /etc/hosts) is refused by the guard at connect time.
    let port = up.addr.port();
    assert!(petstore(&n, "local.test", &format!("http://localhost:{port}/v1")).status.success());
    assert_eq!(n.ok(&["cat", "/local.test/pets"]), r#"[{"id":1}]"#);
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_owned();
    let loopback = std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), port))
        .map(|mut a| a.all(|a| a.ip().is_loopback()))
        .unwrap_or(false);
    if !loopback || name.eq_ignore_ascii_case("localhost") {
        eprintln!("skipping the rebinding half: the host name {name} does not resolve to loopback only");
        return;
    }
    assert!(petstore(&n, "sneaky.test", &format!("http://{name}:{port}/v1")).status.success());
    let before = up.seen().len();
    let out = n.run(&["cat", "/sneaky.test/pets"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ssrf guard"), "{err}");
    assert_eq!(up.seen().len(), before, "nothing reached the loopback server");
}

#[test]
fn idempotent_reads_are_retried_on_503_and_writes_are_not() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = calls.clone();
    let up = Upstream::start(move |req| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match (req.method.as_str(), n) {
            ("GET", 0) => (503, vec![("retry-after".into(), "0".into())], b"busy".to_vec()),
            ("GET", _) => json(200, r#"[{"id":1}]"#),
            _ => json(503, r#"{"error":"busy"}"#),
        }
    });
    let n = Nkmc::new("");
    n.ok(&["gateway", "start", "--daemon"]);
    assert!(petstore(&n, "pets.test", &up.url("/v1")).status.success());
    assert_eq!(n.ok(&["cat", "/pets.test/pets"]), r#"[{"id":1}]"#);
    assert_eq!(up.seen().len(), 2, "one retry after the 503");

    let before = up.seen().len();
    let out = n.run(&["write", "/pets.test/pets", r#"{"name":"rex"}"#]);
    assert!(!out.status.success());
    assert_eq!(up.seen().len(), before + 1, "a POST is sent once, never retried");
}

#[test]
fn keys_go_where_the_owner_says() {
    let up = Upstream::start(|req| {
        let header = req.headers.get("x-api-key").cloned().unwrap_or_default();
        let auth = req.headers.get("authorization").cloned().unwrap_or_default();
        json(200, &serde_json::json!({"uri": req.uri, "x-api-key": header, "authorization": auth}).to_string())
    });
    let n = Nkmc::new("");
    n.ok(&["gateway", "start", "--daemon"]);
    assert!(petstore(&n, "pets.test", &up.url("/v1")).status.success());
    // What the upstream received (its echo of it comes back masked: keys never reach the caller).
    let seen = |n: &Nkmc| -> serde_json::Value {
        let echoed = n.ok(&["cat", "/pets.test/pets"]);
        assert!(!echoed.contains("k-") && !echoed.contains("s3cret"), "{echoed}");
        let req = up.seen().pop().unwrap();
        let header = |name: &str| req.headers.get(name).cloned().unwrap_or_default();
        serde_json::json!({"uri": req.uri, "x-api-key": header("x-api-key"), "authorization": header("authorization")})
    };

    n.ok(&["keys", "set", "pets.test", "--header", "x-api-key", "--value", "k-header"]);
    let v = seen(&n);
    assert_eq!((v["x-api-key"].as_str(), v["authorization"].as_str()), (Some("k-header"), Some("")));

    let out = n.run_stdin(&["keys", "set", "pets.test", "--query", "api_key", "--value", "-"], b"k-query\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(seen(&n)["uri"], "/v1/pets?api_key=k-query");

    n.ok(&["keys", "set", "pets.test", "--basic", "alice:s3cret"]);
    assert_eq!(seen(&n)["authorization"], "Basic YWxpY2U6czNjcmV0");

    n.ok(&["keys", "set", "pets.test", "--token", "k-bearer"]);
    assert_eq!(seen(&n)["authorization"], "Bearer k-bearer", "petstore declares no scheme: bearer");
    let out = n.run(&["keys", "set", "pets.test", "--header", "x-api-key"]);
    assert!(!out.status.success(), "--header needs --value");
}

#[test]
fn pagination_links_to_another_origin_are_never_followed() {
    let key = canary();
    let elsewhere = Upstream::start(|_| json(200, r#"[{"id":99}]"#));
    let next = elsewhere.url("/v1/pets?page=2");
    let home = Upstream::start(move |req| match req.uri.as_str() {
        "/v1/pets" => {
            let body = format!(r#"[{{"id":1}},{{"id":2,"next":"{next}"}}]"#);
            let mut answer = json(200, &body);
            answer.1.push(("link".into(), format!(r#"<{next}>; rel="next""#)));
            answer.1.push(("x-next".into(), next.clone()));
            answer
        }
        _ => json(404, "{}"),
    });
    let n = Nkmc::new("");
    n.ok(&["gateway", "start", "--daemon"]);
    assert!(petstore(&n, "pets.test", &home.url("/v1")).status.success());
    n.ok(&["keys", "set", "pets.test", "--token", &key]);

    // A listing is the first page only; a file is the one response.
    assert_eq!(n.ok(&["ls", "/pets.test/pets.d"]).split_whitespace().collect::<Vec<_>>(), ["1", "2"]);
    assert!(n.ok(&["cat", "/pets.test/pets"]).contains("page=2"));
    n.ok(&["grep", "-l", "id", "/pets.test"]);
    assert!(elsewhere.seen().is_empty(), "no link was followed: {:?}", elsewhere.seen());
    // Nor on the service's own origin: the items are read (grep), no next page.
    assert!(home.seen().iter().all(|s| !s.uri.contains("page=")), "{:?}", home.seen());
}

#[test]
fn an_answer_over_the_size_cap_is_refused() {
    let home = Upstream::start(|req| match req.uri.as_str() {
        "/v1/pets" => json(200, &format!(r#"[{{"id":"{}"}}]"#, "x".repeat(5000))),
        _ => json(200, r#"{"id":1}"#),
    });
    let n = Nkmc::new("[upstream]\nmax_body_bytes = 1000\n");
    n.ok(&["gateway", "start", "--daemon"]);
    assert!(petstore(&n, "pets.test", &home.url("/v1")).status.success());
    let out = n.run(&["cat", "/pets.test/pets"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("over the limit of 1000") && err.contains("max_body_bytes"), "{err}");
    assert_eq!(n.ok(&["cat", "/pets.test/pets.d/1"]), r#"{"id":1}"#, "a small answer passes");
}

#[test]
fn a_key_in_the_query_never_shows_in_a_connection_error() {
    let key = canary();
    // A port with nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let n = Nkmc::new("[upstream]\nconnect_timeout_ms = 800\n");
    n.ok(&["gateway", "start", "--daemon"]);
    assert!(petstore(&n, "dead.test", &format!("http://{closed}/v1")).status.success());
    n.ok(&["keys", "set", "dead.test", "--query", "api_key", "--value", &key]);
    let out = n.run(&["cat", "/dead.test/pets"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect"), "{err}");
    assert!(!err.contains(&key) && !err.contains("api_key"), "no key, no query: {err}");
    n.ok(&["gateway", "stop"]);
    let log = std::fs::read_to_string(n.data_dir.join("gatewayd.log")).unwrap();
    assert!(!log.contains(&key), "the trace log holds no key");
}
