//! The gatewayd process and its socket: no core file, no system proxy, no symlink followed
//! at the socket path.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use nkmc_e2e::{canary, fixture, json, Nkmc, Upstream};

#[test]
fn gatewayd_can_write_no_core_file() {
    let n = Nkmc::new("");
    let started = n.ok(&["gateway", "start", "--daemon"]);
    let pid: u32 = started.split("pid ").nth(1).and_then(|s| s.split(')').next()).unwrap().parse().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap();
    assert_eq!(core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(), ["0", "0"], "{core}");
}

#[test]
fn proxy_variables_are_ignored() {
    let key = canary();
    let proxy = Upstream::start(|_| json(200, r#"{"via":"proxy"}"#));
    let home = Upstream::start(|_| json(200, r#"[{"id":1}]"#));
    let n = Nkmc::new("");
    let mut start = n.cmd(&["gateway", "start", "--daemon"]);
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
        start.env(var, proxy.url(""));
    }
    let out = start.env_remove("NO_PROXY").env_remove("no_proxy").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let spec = fixture("openapi/petstore.yaml");
    n.ok(&["register", "--spec", spec.to_str().unwrap(), "--domain", "pets.test", "--base-url", &home.url("/v1")]);
    n.ok(&["keys", "set", "pets.test", "--token", &key]);
    assert_eq!(n.ok(&["cat", "/pets.test/pets"]), r#"[{"id":1}]"#);
    assert!(proxy.seen().is_empty(), "the proxy saw: {:?}", proxy.seen());
    assert_eq!(home.seen().len(), 1);
}

#[test]
fn a_symlink_at_the_socket_path_is_refused_and_its_target_untouched() {
    let n = Nkmc::new("");
    let run = n.socket().parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&run).unwrap();
    std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let victim = n.dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, n.socket()).unwrap();

    // (No backtrace in the log: nkmc quotes the log's last lines.)
    let mut start = n.cmd(&["gateway", "start", "--daemon"]);
    let out = start.env_remove("RUST_BACKTRACE").env_remove("RUST_LIB_BACKTRACE").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a socket") && err.contains("refusing"), "{err}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(std::fs::symlink_metadata(n.socket()).unwrap().file_type().is_symlink(), "left in place");
}
