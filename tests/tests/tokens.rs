//! Agent tokens end to end: a real gatewayd, `nkmc auth`, `nkmc token mint | attenuate |
//! inspect | revoke`, the well-known public key. No FUSE needed.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::Output;

use nkmc_e2e::{contains, Nkmc};

/// `GET path` on gatewayd's socket with plain HTTP/1.1: (status line, body).
fn get(n: &Nkmc, path: &str) -> (String, String) {
    let mut s = UnixStream::connect(n.socket()).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: gatewayd\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

fn out(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Runs `nkmc ARGS` with `stdin`; panics unless it succeeded; returns stdout.
fn ok_stdin(n: &Nkmc, args: &[&str], stdin: &str) -> String {
    let o = n.run_stdin(args, stdin.as_bytes());
    assert!(o.status.success(), "nkmc {args:?} failed: {}", out(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn auth_attenuate_inspect_revoke() {
    let n = Nkmc::new("");
    n.ok(&["gateway", "start", "--daemon"]);

    // The root key exists from the first run, 0600, and its public half is served.
    let key_file = n.data_dir.join("biscuit.key");
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    let (status, public) = get(&n, "/.well-known/nkmc/biscuit-public-key");
    assert!(status.contains(" 200 "), "{status}");
    assert!(public.starts_with("ed25519/") && public.len() == 72, "{public}");

    // `nkmc auth` saves a token where nkmc (and mountd) find it.
    let said = n.ok(&["auth", "--agent", "a1"]);
    assert!(said.contains("agent a1"), "{said}");
    let saved = n.data_dir.join("agent.token");
    assert_eq!(std::fs::metadata(&saved).unwrap().permissions().mode() & 0o777, 0o600);
    let full = std::fs::read_to_string(&saved).unwrap().trim().to_owned();
    assert!(full.len() > 100, "{full}");

    // Attenuation of the saved token, with the gateway up and again with it stopped.
    let narrow = n.ok(&["token", "attenuate", "--allow", "api.example.test:read/models", "--ttl", "1h"]);
    let narrow = narrow.trim().to_owned();
    assert_ne!(narrow, full);
    let shown = ok_stdin(&n, &["token", "inspect", "--token", "-"], &narrow);
    assert!(shown.contains("agent:    a1"), "{shown}");
    assert!(shown.contains("only api.example.test:read/models"), "{shown}");
    assert!(shown.contains("verified: yes"), "{shown}");
    assert!(shown.contains("revoked:  no"), "{shown}");
    assert!(shown.contains("(in 59m)") || shown.contains("(in 60m)"), "{shown}");

    let json = ok_stdin(&n, &["token", "inspect", "--token", "-", "--json"], &narrow);
    let info: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(info["agent"], "a1");
    assert_eq!(info["verified"], true);
    assert_eq!(info["blocks"].as_array().unwrap().len(), 2);
    assert_eq!(info["blocks"][1]["custom"], false);

    // NKMC_TOKEN takes precedence over the saved token.
    let o = n.cmd(&["token", "inspect"]).env("NKMC_TOKEN", &narrow).output().unwrap();
    assert!(out(&o).contains("only api.example.test:read/models"), "{}", out(&o));

    // A second attenuation narrows further; an invalid one explains itself.
    let narrower =
        ok_stdin(&n, &["token", "attenuate", "--token", "-", "--allow", "api.example.test:read/models.d"], &narrow);
    let shown = ok_stdin(&n, &["token", "inspect", "--token", "-"], narrower.trim());
    assert!(shown.contains("block 2") && shown.contains("only api.example.test:read/models.d"), "{shown}");
    let o = n.run(&["token", "attenuate", "--allow", "api.example.test:frobnicate"]);
    assert!(!o.status.success() && out(&o).contains("unknown operation"), "{}", out(&o));
    let o = n.run(&["token", "attenuate"]);
    assert!(!o.status.success() && out(&o).contains("nothing to attenuate"), "{}", out(&o));

    // `token mint` prints to stdout and saves nothing.
    let other = n.ok(&["token", "mint", "--agent", "a2"]).trim().to_owned();
    assert_ne!(other, full);
    assert_eq!(std::fs::read_to_string(&saved).unwrap().trim(), full);
    let o = n.run(&["token", "mint", "--agent", "not valid"]);
    assert!(!o.status.success() && out(&o).contains("invalid agent name"), "{}", out(&o));

    // Revoking the narrowed token: it and what derives from it are revoked, the parent is not.
    let said = ok_stdin(&n, &["token", "revoke", "--token", "-"], &narrow);
    assert!(said.contains("revoked (1 revocation id recorded)"), "{said}");
    assert!(ok_stdin(&n, &["token", "revoke", "--token", "-"], &narrow).contains("already revoked"));
    assert!(ok_stdin(&n, &["token", "inspect", "--token", "-"], &narrow).contains("revoked:  YES"));
    assert!(ok_stdin(&n, &["token", "inspect", "--token", "-"], narrower.trim()).contains("revoked:  YES"));
    assert!(n.ok(&["token", "inspect"]).contains("revoked:  no"));

    // Across a restart: the same key (old tokens verify) and the same revocation list.
    n.ok(&["gateway", "stop"]);
    let offline = n.ok(&["token", "attenuate", "--allow", "*:list", "--seal"]);
    let shown = ok_stdin(&n, &["token", "inspect", "--token", "-"], offline.trim());
    assert!(shown.contains("verified: unknown: gatewayd is not running"), "{shown}");
    assert!(shown.contains("only *:list"), "{shown}");
    let o = n.run_stdin(&["token", "attenuate", "--token", "-", "--ttl", "1m"], offline.trim().as_bytes());
    assert!(!o.status.success() && out(&o).contains("sealed"), "{}", out(&o));
    n.ok(&["gateway", "start", "--daemon"]);
    assert_eq!(get(&n, "/.well-known/nkmc/biscuit-public-key").1, public);
    assert!(ok_stdin(&n, &["token", "inspect", "--token", "-"], offline.trim()).contains("verified: yes"));
    assert!(ok_stdin(&n, &["token", "inspect", "--token", "-"], &narrow).contains("revoked:  YES"));

    // Minting and revoking are audited: who, for which agent, the token's revocation id.
    let tail = n.ok(&["audit", "tail", "-n", "200"]);
    let mints: Vec<&str> = tail.lines().filter(|l| l.contains("token.mint")).collect();
    assert!(mints.iter().any(|l| l.contains("agent:a1")), "{tail}");
    assert!(tail.lines().any(|l| l.contains("token.revoke") && l.contains("agent:a1")), "{tail}");

    // No token is ever written anywhere but the saved token file (logs, database, WAL, audit).
    for t in [&full, &narrow, &other] {
        let needle = &t.as_bytes()[..48];
        for f in n.data_files() {
            if f == saved {
                continue;
            }
            assert!(!contains(&nkmc_e2e::read_if_present(&f), needle), "a token is in {}", f.display());
        }
    }
}

#[test]
fn another_gateways_tokens_are_not_ours() {
    let a = Nkmc::new("");
    let b = Nkmc::new("");
    a.ok(&["gateway", "start", "--daemon"]);
    b.ok(&["gateway", "start", "--daemon"]);
    assert_ne!(get(&a, "/.well-known/nkmc/biscuit-public-key").1, get(&b, "/.well-known/nkmc/biscuit-public-key").1);
    let from_b = b.ok(&["token", "mint", "--agent", "b1"]).trim().to_owned();

    let shown = ok_stdin(&a, &["token", "inspect", "--token", "-"], &from_b);
    assert!(shown.contains("verified: NO"), "{shown}");
    let o = a.run_stdin(&["token", "revoke", "--token", "-"], from_b.as_bytes());
    let text = out(&o);
    assert!(!o.status.success() && text.contains("not issued by this gateway"), "{text}");
    assert!(!text.contains(&from_b[..40]), "the token is not echoed: {text}");

    // An expired token says so.
    let short = b.run_stdin(&["token", "attenuate", "--token", "-", "--ttl", "1s"], from_b.as_bytes());
    assert!(short.status.success(), "{}", out(&short));
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let shown = ok_stdin(&b, &["token", "inspect", "--token", "-"], String::from_utf8_lossy(&short.stdout).trim());
    assert!(shown.contains("(expired)") && shown.contains("verified: yes"), "{shown}");

    // Without a token at all, the commands say what to do.
    let o = a.run(&["token", "inspect"]);
    assert!(!o.status.success() && out(&o).contains("nkmc auth"), "{}", out(&o));
}

#[test]
fn tokens_never_enter_the_log_or_the_audit() {
    let n = Nkmc::new("");
    n.ok(&["gateway", "start", "--daemon"]);
    let token = n.ok(&["token", "mint", "--agent", "bot"]).trim().to_owned();
    let narrow = ok_stdin(&n, &["token", "attenuate", "--token", "-", "--allow", "pets.test:read"], &token);
    let narrow = narrow.trim().to_owned();
    // Used over the socket (valid, then revoked) and over TCP (valid, then a mangled copy).
    let as_agent = |t: &str, args: &[&str]| n.cmd(args).env("NKMC_TOKEN", t).output().unwrap();
    assert!(as_agent(&token, &["ls", "/"]).status.success());
    assert!(!as_agent(&narrow, &["cat", "/pets.test/pets"]).status.success(), "no such service");
    ok_stdin(&n, &["token", "revoke", "--token", "-"], &narrow);
    let refused = as_agent(&narrow, &["ls", "/"]);
    assert!(!refused.status.success() && out(&refused).contains("revoked"), "{}", out(&refused));
    let addr = n.tcp_addr();
    let ok = nkmc_e2e::http(addr, "GET", "/v1/fs/list?path=/", &[("authorization", &format!("Bearer {token}"))], b"");
    assert_eq!(ok.status, 200, "{}", ok.text());
    let mangled = format!("{}x{}", &token[..token.len() / 2], &token[token.len() / 2..]);
    let bad =
        nkmc_e2e::http(addr, "GET", "/v1/fs/list?path=/", &[("authorization", &format!("Bearer {mangled}"))], b"");
    assert_ne!(bad.status, 200);

    let audit = n.ok(&["audit", "tail", "-n", "1000", "--json"]);
    assert!(audit.contains("\"agent\":\"bot\""), "the agent is named: {audit}");
    n.ok(&["gateway", "stop"]);
    let mut hay = audit.into_bytes();
    hay.extend(std::fs::read(n.data_dir.join("gatewayd.log")).unwrap());
    hay.extend(bad.body);
    hay.extend(refused.stderr);
    for (name, t) in [("minted", &token), ("attenuated", &narrow), ("mangled", &mangled)] {
        // Any 40-character stretch of the token (they are long base64 strings).
        for start in (0..t.len().saturating_sub(40)).step_by(40) {
            assert!(!contains(&hay, &t.as_bytes()[start..start + 40]), "the {name} token leaked");
        }
    }
}
