//! Scoped views: a mount or a command acting as an attenuated agent token sees only what the
//! token reaches; everything else looks like nothing is there.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::os::unix::fs::PermissionsExt;

use nkmc_e2e::{fixture, fuse_available, json, Nkmc, Upstream};

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

#[test]
fn a_read_only_token_mounts_a_read_only_view_of_one_service() {
    if !fuse_available() {
        return;
    }
    let up = Upstream::start(|req| match (req.method.as_str(), req.uri.as_str()) {
        ("GET", "/v1/pets") => json(200, r#"[{"id":1,"name":"rex"}]"#),
        ("GET", "/v1/pets/1") => json(200, r#"{"id":1,"name":"rex"}"#),
        ("POST", "/v1/pets") => json(201, r#"{"id":2}"#),
        _ => json(404, "{}"),
    });
    let n = Nkmc::new("");
    n.up();
    let spec = fixture("openapi/petstore.yaml");
    let spec = spec.to_str().unwrap();
    n.ok(&["register", "--spec", spec, "--domain", "pets.test", "--base-url", &up.url("/v1")]);
    n.ok(&["register", "--spec", spec, "--domain", "other.test", "--base-url", &up.url("/v1")]);

    // The owner's own mount shows both services and a writable collection.
    assert_eq!(names(&n.mount), vec![".nkmc", "README.md", "other.test", "pets.test"]);
    let mode = std::fs::metadata(n.mount.join("pets.test/pets")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);

    n.ok(&["auth", "--agent", "reader"]);
    let ro = n.ok(&["token", "attenuate", "--allow", "pets.test:read", "--ttl", "1h"]).trim().to_owned();
    let view = n.dir.path().join("view");
    n.ok(&["mount", view.to_str().unwrap(), "--token", &ro]);

    assert_eq!(names(&view), vec![".nkmc", "pets.test"], "other services and the root README are hidden");
    let pets = view.join("pets.test");
    assert_eq!(std::fs::read(pets.join("pets")).unwrap(), br#"[{"id":1,"name":"rex"}]"#);
    assert_eq!(std::fs::read(pets.join("pets.d/1")).unwrap(), br#"{"id":1,"name":"rex"}"#);
    let mode = std::fs::metadata(pets.join("pets")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o444, "a read-only token sees no writable files");
    let err = std::fs::OpenOptions::new().write(true).open(pets.join("pets")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES));
    let err = std::fs::read(view.join("other.test/pets")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "unauthorized looks like unknown");
    assert!(up.seen().iter().all(|s| s.method == "GET"), "no write reached the upstream");

    // The same token on the command line, without a mount.
    let as_reader = |args: &[&str]| n.cmd(args).env("NKMC_TOKEN", &ro).output().unwrap();
    let out = as_reader(&["write", "/pets.test/pets", r#"{"name":"x"}"#]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such file or directory"));
    assert!(up.seen().iter().all(|s| s.method == "GET"));
    let out = as_reader(&["ls", "/"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "pets.test/\n");

    // The audit log names the agent.
    let tail = n.ok(&["audit", "tail", "-n", "200", "--json"]);
    assert!(tail.lines().any(|l| l.contains(r#""agent":"reader""#) && l.contains("/pets.test/pets")), "{tail}");

    // A revoked token can do nothing: EACCES, not a view of nothing. (A body this mount
    // fetched before the revocation may still be served for the cache TTL; see SEMANTICS.md.)
    n.ok(&["token", "revoke", "--token", &ro]);
    let err = std::fs::read(pets.join("pets.d/2")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES));
    let out = as_reader(&["cat", "/pets.test/pets.d/1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoked"), "{}", String::from_utf8_lossy(&out.stderr));
}
