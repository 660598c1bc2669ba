//! An upstream that echoes the credential it was sent: in an error body, in a successful
//! body, in a collection's ids, in every encoding. Nothing of it leaves gatewayd: not in
//! `nkmc` output or errors, not in listings or grep matches, not in the trace log, the
//! audit log or any file of the data dir.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use nkmc_e2e::{assert_no_secret, base64, canary, fixture, http, json, Nkmc, Upstream};

const MARKER: &str = "[masked by nkmc]";

/// Every way an upstream might quote `s`: as is, JSON-escaped, base64 (both alphabets, at
/// each alignment), hex, percent-encoded (every byte, both cases) and form-encoded.
fn echoes(s: &str) -> Vec<String> {
    let b = s.as_bytes();
    let mut out = vec![s.to_owned(), serde_json::to_string(s).unwrap()];
    for prefix in ["", "a", "ab"] {
        let shifted = format!("{prefix}{s}");
        out.push(base64(shifted.as_bytes(), false));
        out.push(base64(shifted.as_bytes(), true));
    }
    out.push(b.iter().map(|c| format!("{c:02x}")).collect());
    out.push(b.iter().map(|c| format!("{c:02X}")).collect());
    out.push(b.iter().map(|c| format!("%{c:02X}")).collect());
    out.push(b.iter().map(|c| format!("%{c:02x}")).collect());
    out.push(
        b.iter()
            .map(|&c| match c {
                b' ' => "+".to_owned(),
                c if c.is_ascii_alphanumeric() || b"-._~".contains(&c) => char::from(c).to_string(),
                c => format!("%{c:02X}"),
            })
            .collect(),
    );
    out
}

/// The forms of the header the upstream received and of the key in it.
fn all_echoes(authorization: &str) -> Vec<String> {
    let key = authorization.strip_prefix("Bearer ").unwrap_or(authorization);
    let mut out = echoes(authorization);
    out.extend(echoes(key));
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn an_upstream_echoing_the_credential_never_gets_it_out() {
    // `/`, `+` and `=`-free but not URL-safe: percent- and JSON-encodings differ from it.
    let key = format!("{}/+Zz", canary());
    let home = Upstream::start(|req| {
        let auth = req.headers.get("authorization").cloned().unwrap_or_default();
        let forms = all_echoes(&auth);
        match (req.method.as_str(), req.uri.as_str()) {
            // A collection whose ids and fields are the echoes (a key-management API).
            ("GET", "/v1/pets") => {
                let items: Vec<serde_json::Value> =
                    forms.iter().map(|f| serde_json::json!({"id": f, "name": f})).collect();
                json(200, &serde_json::Value::Array(items).to_string())
            }
            // A 401 that quotes what it was sent.
            ("GET", "/v1/pets/1") => (401, vec![], forms.join("\n").into_bytes()),
            // An answer whose content type quotes the key, too.
            ("POST", "/v1/pets") => {
                (201, vec![("content-type".into(), format!("text/plain; echo={auth}"))], forms.join("\n").into_bytes())
            }
            _ => json(404, "{}"),
        }
    });
    let n = Nkmc::new("");
    n.ok(&["gateway", "start", "--daemon"]);
    let spec = fixture("openapi/petstore.yaml");
    n.ok(&["register", "--spec", spec.to_str().unwrap(), "--domain", "pets.test", "--base-url", &home.url("/v1")]);
    n.ok(&["keys", "set", "pets.test", "--token", &key]);

    let mut outputs: Vec<(String, Vec<u8>)> = Vec::new();
    // A successful body: masked, the rest of it intact.
    let listing = n.run(&["cat", "/pets.test/pets"]);
    assert!(listing.status.success(), "{}", text(&listing.stderr));
    let body: serde_json::Value = serde_json::from_slice(&listing.stdout).expect("still JSON once masked");
    assert_eq!(body.as_array().map(Vec::len), Some(all_echoes("Bearer x").len()));
    assert!(text(&listing.stdout).contains(MARKER), "{}", text(&listing.stdout));
    outputs.push(("cat (200)".into(), [listing.stdout, listing.stderr].concat()));

    // An error body: the message says what the upstream said, masked.
    let denied = n.run(&["cat", "/pets.test/pets.d/1"]);
    assert!(!denied.status.success());
    let err = text(&denied.stderr);
    assert!(err.contains("HTTP 401") && err.contains(MARKER), "{err}");
    outputs.push(("cat (401)".into(), [denied.stdout, denied.stderr].concat()));

    // A write's answer.
    let wrote = n.run(&["write", "/pets.test/pets", r#"{"name":"rex"}"#]);
    assert!(wrote.status.success(), "{}", text(&wrote.stderr));
    assert!(text(&wrote.stdout).contains(MARKER), "{}", text(&wrote.stdout));
    outputs.push(("write".into(), [wrote.stdout, wrote.stderr].concat()));

    // Names in a listing come from the masked body.
    let ls = n.run(&["ls", "/pets.test/pets.d"]);
    outputs.push(("ls".into(), [ls.stdout, ls.stderr].concat()));
    // Grep reads the masked bodies: a match on the marker, none on the key.
    let grep = n.run(&["grep", "-F", "masked by nkmc", "/pets.test/pets"]);
    assert!(grep.status.success(), "{}", text(&grep.stderr));
    assert!(!n.run(&["grep", "-F", &key, "/pets.test"]).status.success(), "grep finds no key");
    outputs.push(("grep".into(), [grep.stdout, grep.stderr].concat()));
    // The same over TCP, as an agent.
    let token = n.ok(&["token", "mint", "--agent", "bot"]);
    let auth = format!("Bearer {}", token.trim());
    for path in ["/pets.test/pets", "/pets.test/pets.d/1"] {
        let answer = http(n.tcp_addr(), "GET", &format!("/v1/fs/read?path={path}"), &[("authorization", &auth)], b"");
        assert!(answer.text().contains(MARKER), "{path}: {}", answer.text());
        if answer.status == 200 {
            // A small body is answered whole, with the masked body's own length.
            let length = answer.headers.get("content-length");
            assert_eq!(length, Some(&answer.body.len().to_string()), "{path}: {:?}", answer.headers);
        }
        outputs.push((format!("tcp read {path} (HTTP {})", answer.status), answer.body));
    }
    let answer = http(n.tcp_addr(), "POST", "/v1/fs/write?path=/pets.test/pets", &[("authorization", &auth)], b"{}");
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.headers.get("content-type").map(String::as_str), Some("application/octet-stream"));
    outputs.push(("tcp write (headers)".into(), format!("{:?}", answer.headers).into_bytes()));
    outputs.push(("tcp write".into(), answer.body));
    let audit = n.ok(&["audit", "tail", "-n", "1000", "--json"]);
    outputs.push(("audit tail".into(), audit.into_bytes()));

    // The upstream did receive the key each time (the test is not vacuous).
    let seen = home.seen();
    assert!(seen.len() >= 7, "{seen:?}");
    assert!(seen.iter().all(|s| s.headers.get("authorization") == Some(&format!("Bearer {key}"))));

    for (what, out) in &outputs {
        assert_no_secret(what, out, &key);
    }
    n.ok(&["gateway", "stop"]);
    let files = n.data_files();
    assert!(files.iter().any(|f| f.ends_with("gatewayd.log")), "{files:?}");
    for f in files {
        assert_no_secret(&f.display().to_string(), &nkmc_e2e::read_if_present(&f), &key);
    }
}

#[test]
fn a_key_split_across_chunks_is_masked_and_a_stream_past_the_cap_is_cut() {
    let key = canary();
    let addr = nkmc_e2e::chunked_upstream();
    let n = Nkmc::new("[upstream]\nmax_body_bytes = 1000\n");
    n.ok(&["gateway", "start", "--daemon"]);
    n.hold_pets(&format!("http://{addr}/v1"), &key);

    let out = n.ok(&["cat", "/pets.test/pets"]);
    assert_eq!(out, format!(r#"[{{"id":"{MARKER}"}}]"#));
    let ls = n.ok(&["ls", "/pets.test/pets.d"]);
    assert!(!ls.contains("CANARY"), "{ls}");

    // No announced length: the cap cuts the stream once it is passed.
    let big = n.run(&["cat", "/pets.test/pets.d/1"]);
    assert!(!big.status.success(), "{}", text(&big.stdout));
    assert!(big.stdout.len() <= 1000, "at most the cap was passed on: {}", big.stdout.len());
    let err = text(&big.stderr);
    assert!(err.contains("part way") && err.contains("upstream.max_body_bytes"), "{err}");
    assert!(err.matches("error reading a body").count() <= 1, "the cause once: {err}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let audit = n.ok(&["audit", "tail", "-n", "100", "--json"]);
        let cut = audit.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).any(|r| {
            r["target"] == "/pets.test/pets.d/1" && r["outcome"] == "too_large" && r["upstream_status"] == 200
        });
        if cut {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "a `too_large` read in the audit log:\n{audit}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
