//! A panic in a request handler, with the credential in hand and in its message: that
//! request gets 500 `internal`, gatewayd keeps serving, and neither the answer, the log nor
//! the audit log holds the credential. The panic is injected with
//! `NKMC_TEST_PANIC_WITH_CREDENTIAL` (inert unless set).
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::{Duration, Instant};

use nkmc_e2e::{assert_no_secret, canary, fixture, http, json, Nkmc, Upstream};

const PANIC_VAR: &str = "NKMC_TEST_PANIC_WITH_CREDENTIAL";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_panicking_handler_answers_500_and_shows_no_secret() {
    let key = canary();
    let up = Upstream::start(|_| json(200, r#"[{"id":1,"name":"rex"}]"#));
    let n = Nkmc::new("");
    let started = n.cmd(&["gateway", "start", "--daemon"]).env(PANIC_VAR, "doomed.test").output().unwrap();
    assert!(started.status.success(), "{}", text(&started.stderr));
    let spec = fixture("openapi/petstore.yaml");
    for domain in ["doomed.test", "fine.test"] {
        n.ok(&["register", "--spec", spec.to_str().unwrap(), "--domain", domain, "--base-url", &up.url("/v1")]);
        n.ok(&["keys", "set", domain, "--token", &key]);
    }

    // Over the socket, through the CLI.
    let out = n.run(&["cat", "/doomed.test/pets"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("internal error"), "{err}");
    // Over TCP, as an agent: the status and the error code.
    let token = n.ok(&["token", "mint", "--agent", "bot"]);
    let auth = format!("Bearer {}", token.trim());
    let answer = http(n.tcp_addr(), "GET", "/v1/fs/read?path=/doomed.test/pets", &[("authorization", &auth)], b"");
    assert_eq!(answer.status, 500, "{}", answer.text());
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body["code"], "internal", "{body}");

    // gatewayd is still there, serving the other service and the same one without the fault.
    assert_eq!(n.ok(&["cat", "/fine.test/pets"]), r#"[{"id":1,"name":"rex"}]"#);
    assert!(up.seen().iter().all(|s| s.uri == "/v1/pets"), "the panicking calls sent nothing");
    assert_eq!(up.seen().len(), 1);

    // The audit log records both panicked reads as `internal`.
    let deadline = Instant::now() + Duration::from_secs(10);
    let audit = loop {
        let audit = n.ok(&["audit", "tail", "-n", "100", "--json"]);
        let internal = audit
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| r["target"] == "/doomed.test/pets" && r["outcome"] == "internal")
            .count();
        if internal == 2 {
            break audit;
        }
        assert!(Instant::now() < deadline, "two `internal` reads expected:\n{audit}");
        std::thread::sleep(Duration::from_millis(100));
    };

    n.ok(&["gateway", "stop"]);
    let log = std::fs::read(n.data_dir.join("gatewayd.log")).unwrap();
    let log_text = text(&log);
    assert!(log_text.contains("gatewayd: internal error: thread"), "the hook reported the panic:\n{log_text}");
    assert!(log_text.contains("a request handler panicked"), "{log_text}");
    assert!(!log_text.contains("fault injection"), "the panic's message is never printed:\n{log_text}");
    for (what, hay) in [("cat", out.stderr.clone()), ("tcp answer", answer.body.clone()), ("audit", audit.into_bytes())]
    {
        assert_no_secret(what, &hay, &key);
    }
    for f in n.data_files() {
        assert_no_secret(&f.display().to_string(), &nkmc_e2e::read_if_present(&f), &key);
    }
}
