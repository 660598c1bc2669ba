//! The vault through the real binaries: agents' own keys (BYOK), the master key from the
//! environment, and kill -9 at varied moments of `keys set` and `vault rotate`.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nkmc_e2e::{canary, fixture, json, Nkmc, Upstream};

/// gatewayd's fault-injection pause inside a rotation (gatewayd::vault::rotation::PAUSE_VAR).
const PAUSE_VAR: &str = "NKMC_TEST_ROTATE_PAUSE_MS";

/// Runs one SQL statement with Python's sqlite3; the rows, one `repr` per line.
fn sql(db: &Path, statement: &str) -> String {
    let script = "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\n\
                  for r in c.execute(sys.argv[2]): print(repr(r))\nc.commit()\nc.close()";
    let out = Command::new("python3").args(["-c", script, db.to_str().unwrap(), statement]).output().unwrap();
    assert!(out.status.success(), "python3: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// An upstream that answers `/v1/pets` and records the Authorization header it got.
fn pets_upstream() -> Upstream {
    Upstream::start(|req| match (req.method.as_str(), req.uri.as_str()) {
        ("GET", "/v1/pets") => json(200, "[]"),
        _ => json(404, "{}"),
    })
}

fn last_authorization(up: &Upstream) -> String {
    up.seen().last().and_then(|s| s.headers.get("authorization").cloned()).unwrap_or_default()
}

fn register_pets(n: &Nkmc, up: &Upstream, domain: &str) {
    let spec = fixture("openapi/petstore.yaml");
    n.ok(&["register", "--spec", spec.to_str().unwrap(), "--domain", domain, "--base-url", &up.url("/v1")]);
}

/// No data file (database, WAL, logs at trace level, key files) holds any of `secrets`.
fn assert_nowhere_on_disk(n: &Nkmc, secrets: &[&str]) {
    let files = n.data_files();
    assert!(files.iter().any(|f| f.ends_with("gatewayd.log")), "{files:?}");
    for f in files {
        // A running gatewayd may replace a file (a temp file renamed) between listing and
        // reading: one gone is skipped, its successor is in the listing.
        let bytes = match std::fs::read(&f) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            read => read.unwrap(),
        };
        for s in secrets {
            assert!(!nkmc_e2e::contains(&bytes, s.as_bytes()), "{} holds a secret", f.display());
        }
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_agents_own_key_is_used_for_its_requests_only_and_seen_by_it_only() {
    let up = pets_upstream();
    let n = Nkmc::new("");
    n.ok(&["gateway", "start", "--daemon"]);
    register_pets(&n, &up, "pets.test");
    let (pool, own) = (canary(), canary());
    n.ok(&["keys", "set", "pets.test", "--token", &pool]);
    let alice = n.ok(&["token", "mint", "--agent", "alice"]).trim().to_owned();
    let bob = n.ok(&["token", "mint", "--agent", "bob"]).trim().to_owned();
    let as_agent = |token: &str, args: &[&str]| n.cmd(args).env("NKMC_TOKEN", token).output().unwrap();

    let out = as_agent(&alice, &["keys", "set", "pets.test", "--token", &own, "--byok"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("stored alice's own key"));

    // Per request and per caller: alice's key for alice, the pool key for everyone else.
    for (who, expected) in [(Some(&alice), &own), (Some(&bob), &pool), (None, &pool), (Some(&alice), &own)] {
        let out = match who {
            Some(t) => as_agent(t, &["cat", "/pets.test/pets"]),
            None => n.run(&["cat", "/pets.test/pets"]),
        };
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(last_authorization(&up), format!("Bearer {expected}"));
    }

    // Listings: each agent sees its own keys only; the owner sees all, with the agent named.
    let listed = String::from_utf8_lossy(&as_agent(&alice, &["keys", "list", "--byok"]).stdout).into_owned();
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.contains("pets.test\tbyok\t") && listed.trim_end().ends_with("\talice"), "{listed}");
    let listed = String::from_utf8_lossy(&as_agent(&bob, &["keys", "list", "--byok"]).stdout).into_owned();
    assert!(listed.starts_with("no keys stored"), "{listed}");
    let all = n.ok(&["keys", "list"]);
    assert!(all.contains("pets.test\tpool\t") && all.contains("\talice"), "{all}");
    assert!(!all.contains(&own) && !all.contains(&pool));

    // Bob cannot remove alice's key; alice can, and then gets the pool key.
    let out = as_agent(&bob, &["keys", "remove", "pets.test", "--byok"]);
    assert!(!out.status.success() && stderr(&out).contains("no key is stored"), "{}", stderr(&out));
    let out = as_agent(&alice, &["keys", "remove", "pets.test", "--byok"]);
    assert!(out.status.success(), "{}", stderr(&out));
    as_agent(&alice, &["cat", "/pets.test/pets"]);
    assert_eq!(last_authorization(&up), format!("Bearer {pool}"));
    assert!(n.ok(&["keys", "list"]).lines().count() == 1);

    // A token that cannot see the service cannot store a key for it: it looks unknown.
    let other_only = n.cmd(&["token", "attenuate", "--token", &alice, "--allow", "other.test:read"]).output().unwrap();
    let other_only = String::from_utf8_lossy(&other_only.stdout).trim().to_owned();
    let out = as_agent(&other_only, &["keys", "set", "pets.test", "--token", "x", "--byok"]);
    assert!(!out.status.success() && stderr(&out).contains("no such file or directory"), "{}", stderr(&out));

    // --byok needs a token; without --byok a saved agent token does not turn `keys set` into BYOK.
    let out = n.cmd(&["keys", "set", "pets.test", "--token", "x", "--byok"]).env_remove("NKMC_TOKEN").output().unwrap();
    assert!(!out.status.success() && stderr(&out).contains("NKMC_TOKEN"), "{}", stderr(&out));
    n.ok(&["auth", "--agent", "carol"]);
    let said = n.ok(&["keys", "set", "pets.test", "--token", &pool]);
    assert!(said.starts_with("stored the key for pets.test"), "{said}");
    assert!(!n.ok(&["keys", "list"]).contains("carol"));
    assert_nowhere_on_disk(&n, &[&own, &pool]);
}

#[test]
fn the_master_key_can_come_from_the_environment() {
    let up = pets_upstream();
    let n = Nkmc::new("[vault]\ncipher = \"xchacha20-poly1305\"\n");
    let start = |key: &str, old: Option<&str>| {
        let mut c = n.cmd(&["gateway", "start", "--daemon"]);
        c.env("NKMC_ENCRYPTION_KEY", key);
        match old {
            Some(o) => c.env("NKMC_ENCRYPTION_KEY_OLD", o),
            None => c.env_remove("NKMC_ENCRYPTION_KEY_OLD"),
        };
        c.output().unwrap()
    };
    let out = start("not-a-key", None);
    assert!(!out.status.success());
    let said = stderr(&out) + &std::fs::read_to_string(n.data_dir.join("gatewayd.log")).unwrap();
    assert!(said.contains("NKMC_ENCRYPTION_KEY is neither 64 hex digits nor base64"), "{said}");
    assert!(said.contains("openssl rand -hex 32") && !said.contains("not-a-key"), "the value is never echoed");

    let first = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let out = start(first, None);
    assert!(out.status.success(), "{}", stderr(&out));
    register_pets(&n, &up, "pets.test");
    let key = canary();
    n.ok(&["keys", "set", "pets.test", "--token", &key]);
    assert!(!n.data_dir.join("master.key").exists(), "no key file when the key comes from the environment");
    assert!(n.ok(&["vault", "check"]).contains("1 keys decrypt"));
    let ct = sql(&n.data_dir.join("nkmc.db"), "SELECT hex(substr(ciphertext, 1, 2)) FROM keys");
    assert_eq!(ct.trim(), "('0202',)", "format 2, XChaCha20-Poly1305 as configured");

    let out = n.run(&["vault", "rotate"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("NKMC_ENCRYPTION_KEY_OLD") && stderr(&out).contains("openssl rand -hex 32"));

    // Rotation with an environment key: the new key, the old one beside it, one restart.
    n.ok(&["gateway", "stop"]);
    let second = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="; // base64 of bytes 0..32
    let out = start(second, Some(first));
    assert!(out.status.success(), "{}", stderr(&out));
    n.ok(&["gateway", "stop"]);
    let out = start(second, None);
    assert!(out.status.success(), "{}", stderr(&out));
    n.ok(&["cat", "/pets.test/pets"]);
    assert_eq!(last_authorization(&up), format!("Bearer {key}"));
    n.ok(&["gateway", "stop"]);
    // The first key alone no longer opens it: gatewayd refuses to start, and says why.
    let out = start(first, None);
    assert!(!out.status.success());
    let said = stderr(&out) + &std::fs::read_to_string(n.data_dir.join("gatewayd.log")).unwrap();
    assert!(said.contains("(NKMC_ENCRYPTION_KEY) is not the one the 1 stored keys were sealed with"), "{said}");
    assert!(!said.contains(first) && !said.contains(&key));
}

/// gatewayd's pid, as `nkmc gateway status` reports it.
fn gatewayd_pid(n: &Nkmc) -> i32 {
    let out = n.ok(&["gateway", "status"]);
    out.split("(pid ").nth(1).and_then(|s| s.split(',').next()).unwrap().parse().unwrap()
}

fn kill9(pid: i32) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() {
        // A zombie still answers kill(0) until its parent reaps it; /proc says which.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state.is_empty() || state.contains(") Z ") {
            break;
        }
        assert!(Instant::now() < deadline, "gatewayd {pid} survived kill -9");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// After a restart: every key decrypts, the database is sound, the service's key is sent.
fn check_after_restart(n: &Nkmc, up: &Upstream, expected_keys: usize, service_key: &str) {
    let out = n.cmd(&["gateway", "start", "--daemon"]).env_remove(PAUSE_VAR).output();
    let out = out.unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let said = n.ok(&["vault", "check"]);
    assert!(said.contains(&format!("vault ok: {expected_keys} keys decrypt")), "{said}");
    assert_eq!(sql(&n.data_dir.join("nkmc.db"), "PRAGMA integrity_check").trim(), "('ok',)");
    n.ok(&["cat", "/pets.test/pets"]);
    assert_eq!(last_authorization(up), format!("Bearer {service_key}"));
    let key_file = n.data_dir.join("master.key");
    assert!(key_file.exists() && !n.data_dir.join("master.key.next").exists(), "rotation finished or rolled back");
}

fn ciphertexts(n: &Nkmc) -> Vec<String> {
    let mut v: Vec<String> =
        sql(&n.data_dir.join("nkmc.db"), "SELECT hex(ciphertext) FROM keys").lines().map(str::to_owned).collect();
    v.sort();
    v
}

#[test]
fn kill_9_at_any_moment_of_a_rotation_leaves_every_key_readable() {
    const KEYS: usize = 40;
    let up = pets_upstream();
    let n = Nkmc::new("");
    n.ok(&["gateway", "start", "--daemon"]);
    register_pets(&n, &up, "pets.test");
    let service_key = canary();
    n.ok(&["keys", "set", "pets.test", "--token", &service_key]);
    for i in 1..KEYS {
        n.ok(&["keys", "set", &format!("d{i}.test"), "--token", &format!("secret-{i}")]);
    }
    let mut outcomes = Vec::new();

    // Kills at fixed delays after the rotation was asked for.
    for delay_ms in [0u64, 1, 2, 4, 8, 16, 32, 64] {
        let before = std::fs::read(n.data_dir.join("master.key")).unwrap();
        let pid = gatewayd_pid(&n);
        let mut rotate = n.cmd(&["vault", "rotate"]).stdout(std::process::Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        kill9(pid);
        let acked = rotate.wait().unwrap().success();
        check_after_restart(&n, &up, KEYS, &service_key);
        let rotated = std::fs::read(n.data_dir.join("master.key")).unwrap() != before;
        assert!(rotated || !acked, "an acknowledged rotation was lost (delay {delay_ms} ms)");
        outcomes.push((delay_ms, acked, rotated));
    }

    // Kills inside each step, made deterministic by the fault-injection pause: after the new
    // key file is written (the transaction has not run), and after the commit (before the
    // rename).
    for phase in ["next key written", "rows committed"] {
        n.ok(&["gateway", "stop"]);
        let out = n.cmd(&["gateway", "start", "--daemon"]).env(PAUSE_VAR, "3000").output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let before = ciphertexts(&n);
        let pid = gatewayd_pid(&n);
        let mut rotate = n.cmd(&["vault", "rotate"]).stdout(std::process::Stdio::null()).spawn().unwrap();
        let next = n.data_dir.join("master.key.next");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let reached = match phase {
                "next key written" => next.exists(),
                _ => next.exists() && ciphertexts(&n).iter().all(|c| !before.contains(c)),
            };
            if reached {
                break;
            }
            assert!(Instant::now() < deadline, "rotation never reached `{phase}`");
            std::thread::sleep(Duration::from_millis(10));
        }
        kill9(pid);
        assert!(!rotate.wait().unwrap().success());
        check_after_restart(&n, &up, KEYS, &service_key);
        let after = ciphertexts(&n);
        match phase {
            "next key written" => assert_eq!(after, before, "rolled back: the rows are as they were"),
            _ => assert!(after.iter().all(|c| !before.contains(c)), "finished: every row re-encrypted"),
        }
    }
    eprintln!("rotation kills (delay ms, acknowledged, rotated): {outcomes:?}");
}

#[test]
fn kill_9_during_keys_set_loses_no_acknowledged_key() {
    let up = pets_upstream();
    let n = Nkmc::new("");
    n.ok(&["gateway", "start", "--daemon"]);
    register_pets(&n, &up, "pets.test");
    let first = canary();
    n.ok(&["keys", "set", "pets.test", "--token", &first]);
    let mut acked_domains = vec!["pets.test".to_owned()];
    let mut last_acked = first;
    for (round, delay_ms) in [0u64, 1, 3, 5, 10, 20, 40].into_iter().enumerate() {
        let pid = gatewayd_pid(&n);
        // Two concurrent writers: a new domain each time, and the service's key replaced.
        let domain = format!("r{round}.test");
        let value = format!("{}-{round}", canary());
        let mut new_domain =
            n.cmd(&["keys", "set", &domain, "--token", "v"]).stdout(std::process::Stdio::null()).spawn().unwrap();
        let mut replace = n
            .cmd(&["keys", "set", "pets.test", "--token", &value])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        kill9(pid);
        let domain_acked = new_domain.wait().unwrap().success();
        let replace_acked = replace.wait().unwrap().success();
        let out = n.cmd(&["gateway", "start", "--daemon"]).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(sql(&n.data_dir.join("nkmc.db"), "PRAGMA integrity_check").trim(), "('ok',)");
        let listed = n.ok(&["keys", "list"]);
        if domain_acked {
            acked_domains.push(domain.clone());
        }
        for d in &acked_domains {
            assert!(listed.contains(&format!("{d}\tpool\t")), "acknowledged key of {d} lost: {listed}");
        }
        let said = n.ok(&["vault", "check"]);
        assert!(said.contains("vault ok"), "{said}");
        n.ok(&["cat", "/pets.test/pets"]);
        let sent = last_authorization(&up);
        // The last acknowledged value, or the one in flight if it committed before the kill.
        if replace_acked {
            assert_eq!(sent, format!("Bearer {value}"));
            last_acked = value;
        } else {
            assert!(sent == format!("Bearer {last_acked}") || sent == format!("Bearer {value}"), "{sent}");
            last_acked = sent.trim_start_matches("Bearer ").to_owned();
        }
    }
}

#[test]
fn oauth2_client_credentials_are_exchanged_once_and_the_token_sent() {
    let access = canary();
    let token_answer = format!(r#"{{"access_token":"{access}","token_type":"Bearer","expires_in":3600}}"#);
    let up = Upstream::start(move |req| match (req.method.as_str(), req.uri.as_str()) {
        ("POST", "/oauth/token") => json(200, &token_answer),
        ("GET", "/v1/pets") => json(200, "[]"),
        _ => json(404, "{}"),
    });
    let n = Nkmc::new("");
    n.ok(&["gateway", "start", "--daemon"]);
    register_pets(&n, &up, "pets.test");
    let client_secret = canary();
    let creds = format!("my-client:{client_secret}");
    let out = n.run_stdin(
        &["keys", "set", "pets.test", "--oauth2", "-", "--oauth2-token-url", &up.url("/oauth/token")],
        creds.as_bytes(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    for _ in 0..3 {
        n.ok(&["cat", "/pets.test/pets"]);
        assert_eq!(last_authorization(&up), format!("Bearer {access}"));
    }
    let seen = up.seen();
    let fetches: Vec<_> = seen.iter().filter(|s| s.uri == "/oauth/token").collect();
    assert_eq!(fetches.len(), 1, "one exchange, then the cached token");
    let basic = fetches[0].headers.get("authorization").unwrap();
    assert!(basic.starts_with("Basic "), "{basic}");
    assert_eq!(fetches[0].body, b"grant_type=client_credentials");
    assert!(seen
        .iter()
        .filter(|s| s.uri == "/v1/pets")
        .all(|s| !String::from_utf8_lossy(&s.body).contains(&client_secret)));

    // A token URL on another origin is refused: the client secret goes nowhere else.
    let elsewhere = format!("http://localhost:{}/oauth/token", up.addr.port());
    let out =
        n.run_stdin(&["keys", "set", "pets.test", "--oauth2", "-", "--oauth2-token-url", &elsewhere], creds.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    let out = n.run(&["cat", "/pets.test/pets"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("oauth2_token_origins"), "{}", stderr(&out));
    assert_eq!(up.seen().iter().filter(|s| s.uri == "/oauth/token").count(), 1, "nothing sent there");
    assert_nowhere_on_disk(&n, &[&client_secret, &access]);
}

#[test]
fn requests_during_a_rotation_wait_for_it_and_succeed() {
    let up = pets_upstream();
    let n = Nkmc::new("");
    let out = n.cmd(&["gateway", "start", "--daemon"]).env(PAUSE_VAR, "300").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    register_pets(&n, &up, "pets.test");
    let key = canary();
    n.ok(&["keys", "set", "pets.test", "--token", &key]);
    let rotate = n.cmd(&["vault", "rotate"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let next = n.data_dir.join("master.key.next");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !next.exists() {
        assert!(Instant::now() < deadline, "the rotation never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Mid-rotation: a read with the key and a new key both go through once it is done.
    let read = n.cmd(&["cat", "/pets.test/pets"]).output().unwrap();
    let set = n.cmd(&["keys", "set", "during.test", "--token", "v"]).output().unwrap();
    assert!(read.status.success() && set.status.success(), "{}{}", stderr(&read), stderr(&set));
    assert_eq!(last_authorization(&up), format!("Bearer {key}"));
    let rotated = rotate.wait_with_output().unwrap();
    assert!(rotated.status.success());
    assert!(String::from_utf8_lossy(&rotated.stdout).contains("1 keys re-encrypted"));
    assert!(!next.exists());
    assert!(n.ok(&["vault", "check"]).contains("vault ok: 2 keys decrypt"));
}
