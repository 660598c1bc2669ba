//! `nkmc grep` and `nkmc pipe`: the same results as `grep -r` and shell pipes on the mount,
//! without one; bodies move byte for byte.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use nkmc_e2e::{fixture, fuse_available, json, Nkmc, Upstream};

fn petstore() -> Upstream {
    Upstream::start(|req| match (req.method.as_str(), req.uri.as_str()) {
        ("GET", "/v1/pets") => {
            json(200, "[{\"id\":1,\"name\":\"rex\"},\n{\"id\":2,\"name\":\"Rexa\"},\n{\"id\":3,\"name\":\"tom\"}]")
        }
        ("GET", "/v1/pets/1") => json(200, r#"{"id":1,"name":"rex","tag":"dog"}"#),
        ("GET", "/v1/pets/2") => json(200, r#"{"id":2,"name":"Rexa","tag":"cat"}"#),
        ("GET", "/v1/pets/3") => json(200, r#"{"id":3,"name":"tom","tag":"cat"}"#),
        ("POST", "/v1/pets") => json(201, r#"{"created":true}"#),
        _ => json(404, "{}"),
    })
}

fn setup(up: &Upstream) -> Nkmc {
    let n = Nkmc::new("");
    n.ok(&["gateway", "start", "--daemon"]);
    let spec = fixture("openapi/petstore.yaml");
    n.ok(&["register", "--spec", spec.to_str().unwrap(), "--domain", "pets.test", "--base-url", &up.url("/v1")]);
    n
}

#[test]
fn grep_without_a_mount_finds_what_grep_r_on_the_mount_finds() {
    let up = petstore();
    let n = setup(&up);

    let found = n.ok(&["grep", "-n", "rex", "/pets.test"]);
    assert_eq!(
        found,
        "/pets.test/pets:1:[{\"id\":1,\"name\":\"rex\"},\n/pets.test/pets.d/1:1:{\"id\":1,\"name\":\"rex\",\"tag\":\"dog\"}\n"
    );
    let files = n.ok(&["grep", "-l", "-i", "rex", "/pets.test"]);
    assert_eq!(files, "/pets.test/pets\n/pets.test/pets.d/1\n/pets.test/pets.d/2\n");
    let fixed = n.ok(&["grep", "-F", "-l", "\"tag\":\"cat\"", "/pets.test/pets.d"]);
    assert_eq!(fixed, "/pets.test/pets.d/2\n/pets.test/pets.d/3\n");

    // grep's exit codes: 1 for nothing found, 2 for an error (with what went wrong).
    assert_eq!(n.run(&["grep", "no-such-pet", "/pets.test"]).status.code(), Some(1));
    let bad = n.run(&["grep", "(", "/pets.test"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("pattern is invalid"));
    let missing = n.run(&["grep", "rex", "/nope.test"]);
    assert_eq!(missing.status.code(), Some(2));

    // A token that reaches only one item finds only there.
    n.ok(&["auth", "--agent", "a"]);
    let one = n.ok(&["token", "attenuate", "--allow", "pets.test:read/pets.d/1"]).trim().to_owned();
    let scoped = n.cmd(&["grep", "-l", "-i", "rex", "/"]).env("NKMC_TOKEN", &one).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&scoped.stdout), "/pets.test/pets.d/1\n");

    // The same lines as `grep -r` through a real mount.
    if fuse_available() {
        n.up();
        let mount = n.mount.to_str().unwrap().to_owned();
        let out = std::process::Command::new("grep")
            .args(["-r", "-i", "-n", "rex"])
            .arg(n.mount.join("pets.test"))
            .output()
            .unwrap();
        let mut on_mount: Vec<String> =
            String::from_utf8_lossy(&out.stdout).lines().map(|l| l.strip_prefix(&mount).unwrap().to_owned()).collect();
        on_mount.sort();
        let mut ours: Vec<String> =
            n.ok(&["grep", "-i", "-n", "rex", "/pets.test"]).lines().map(str::to_owned).collect();
        ours.sort();
        assert_eq!(ours, on_mount);
    }

    // One audit record for the search.
    let tail = n.ok(&["audit", "tail", "-n", "100"]);
    assert!(tail.contains("grep"), "{tail}");
}

#[test]
fn pipe_moves_the_body_not_an_envelope() {
    let up = petstore();
    let n = setup(&up);
    let out = n.ok(&["pipe", "cat /pets.test/pets.d/1 | write /pets.test/pets"]);
    assert_eq!(out, r#"{"created":true}"#, "the last stage's output is printed");
    let posted = up.seen().into_iter().find(|s| s.method == "POST").unwrap();
    assert_eq!(posted.body, br#"{"id":1,"name":"rex","tag":"dog"}"#, "exactly the bytes read");

    let kept = n.ok(&["pipe", "cat /pets.test/pets | grep -i rex"]);
    assert_eq!(kept, "[{\"id\":1,\"name\":\"rex\"},\n{\"id\":2,\"name\":\"Rexa\"},\n");

    // A malformed pipeline runs nothing.
    let before = up.seen().len();
    let bad = n.run(&["pipe", "cat /pets.test/pets | rm /pets.test/pets.d/1"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a pipe stage"));
    assert_eq!(up.seen().len(), before);
}
