//! Writes and removals through a real mount: each sends exactly one request, with the
//! method the spec gives and the bytes written; errors come back from `close`.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::Write;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use nkmc_e2e::{fixture, fuse_available, json, Nkmc, Upstream};

fn upstream() -> Upstream {
    Upstream::start(|req| match (req.method.as_str(), req.uri.as_str()) {
        ("POST", "/v1/embeddings") => json(200, r#"{"object":"list","data":[{"embedding":[0.5]}]}"#),
        ("POST", "/v1/chat/completions") => json(200, r#"{"id":"chatcmpl-1","object":"chat.completion"}"#),
        ("DELETE", "/v1/models/ft-1") => json(200, r#"{"id":"ft-1","deleted":true}"#),
        ("DELETE", _) => json(404, r#"{"error":"no such model"}"#),
        ("POST", "/v1/moderations") => json(400, r#"{"error":{"message":"input is required"}}"#),
        _ => json(404, "{}"),
    })
}

fn setup(up: &Upstream) -> Nkmc {
    let n = Nkmc::new("");
    n.up();
    let spec = fixture("openapi/openai.yaml");
    n.ok(&["register", "--spec", spec.to_str().unwrap(), "--domain", "api.openai.com", "--base-url", &up.url("/v1")]);
    n.ok(&["keys", "set", "api.openai.com", "--token", "sk-test"]);
    n
}

fn sh(script: &str) -> std::process::Output {
    Command::new("bash").args(["-c", script]).output().unwrap()
}

#[test]
fn echo_redirect_sends_one_post_and_the_file_then_reads_the_response() {
    if !fuse_available() {
        return;
    }
    let up = upstream();
    let n = setup(&up);
    let file = n.mount.join("api.openai.com/embeddings");

    // A POST-only file has nothing to read before this mount wrote to it.
    let err = std::fs::read(&file).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENODATA));

    let out = sh(&format!("echo '{{\"model\":\"m\",\"input\":\"hi\"}}' > '{}'", file.display()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let posts: Vec<_> = up.seen().into_iter().filter(|s| s.method == "POST").collect();
    assert_eq!(posts.len(), 1, "exactly one request: {posts:?}");
    assert_eq!(posts[0].uri, "/v1/embeddings");
    assert_eq!(posts[0].body, b"{\"model\":\"m\",\"input\":\"hi\"}\n");
    assert_eq!(posts[0].headers.get("content-type").map(String::as_str), Some("application/json"));
    assert_eq!(posts[0].headers.get("authorization").map(String::as_str), Some("Bearer sk-test"));

    let back = std::fs::read(&file).unwrap();
    assert_eq!(back, br#"{"object":"list","data":[{"embedding":[0.5]}]}"#, "reading returns the last response");

    // Python's open('w'): one request too; a file with GET and POST still reads its GET.
    let before = up.seen().len();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(n.mount.join("api.openai.com/chat/completions"))
        .unwrap();
    f.write_all(br#"{"model":"gpt-4o","#).unwrap();
    f.write_all(br#""messages":[]}"#).unwrap();
    drop(f);
    let new: Vec<_> = up.seen().into_iter().skip(before).collect();
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(new[0].body, br#"{"model":"gpt-4o","messages":[]}"#);
}

#[test]
fn bad_writes_fail_at_close_and_send_nothing() {
    if !fuse_available() {
        return;
    }
    let up = upstream();
    let n = setup(&up);
    let svc = n.mount.join("api.openai.com");

    // coreutils' echo checks close(); bash's builtin echo ignores close errors (SEMANTICS.md).
    let out = sh(&format!("env echo 'not json' > '{}'", svc.join("embeddings").display()));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Invalid argument"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(up.seen().is_empty(), "nothing was sent: {:?}", up.seen());

    // The upstream's 400 comes back from close() as EINVAL.
    let mut f = std::fs::OpenOptions::new().write(true).open(svc.join("moderations")).unwrap();
    f.write_all(b"{}").unwrap();
    let err = f.sync_all().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));

    // A file without POST/PUT/PATCH is read-only; directories cannot be made.
    let err = std::fs::OpenOptions::new().write(true).open(svc.join("models")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES));
    let err = std::fs::create_dir(svc.join("newdir")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    let err =
        std::fs::set_permissions(svc.join("models"), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
}

#[test]
fn rm_sends_delete() {
    if !fuse_available() {
        return;
    }
    let up = upstream();
    let n = setup(&up);
    let svc = n.mount.join("api.openai.com");
    std::fs::remove_file(svc.join("models.d/ft-1")).unwrap();
    let deletes: Vec<_> = up.seen().into_iter().filter(|s| s.method == "DELETE").collect();
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].uri, "/v1/models/ft-1");
    let err = std::fs::remove_file(svc.join("models.d/nope")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "404 → ENOENT");
    let out = n.run(&["rm", "/api.openai.com/models"]);
    assert!(!out.status.success(), "`models` has no DELETE");
}

#[test]
fn a_read_in_flight_during_a_write_does_not_bring_the_old_body_back() {
    if !fuse_available() {
        return;
    }
    // The upstream holds the first GET (its body already taken: the old name) until the
    // test lets it go; the POST changes the name.
    let name = Arc::new(Mutex::new("old"));
    let (arrived_tx, arrived_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (arrived_tx, release_rx) = (Mutex::new(arrived_tx), Mutex::new(release_rx));
    let gets = AtomicUsize::new(0);
    let state = name.clone();
    let up = Upstream::start_threads(4, move |req| match (req.method.as_str(), req.uri.as_str()) {
        ("GET", "/v1/assistants/asst_1") => {
            let body = format!(r#"{{"id":"asst_1","name":"{}"}}"#, state.lock().unwrap());
            if gets.fetch_add(1, Ordering::SeqCst) == 0 {
                arrived_tx.lock().unwrap().send(()).unwrap();
                let _ = release_rx.lock().unwrap().recv_timeout(Duration::from_secs(30));
            }
            json(200, &body)
        }
        ("POST", "/v1/assistants/asst_1") => {
            *state.lock().unwrap() = "new";
            json(200, r#"{"id":"asst_1","name":"new"}"#)
        }
        _ => json(404, "{}"),
    });
    let n = setup(&up);
    let file = n.mount.join("api.openai.com/assistants.d/asst_1");

    let reader = {
        let file = file.clone();
        std::thread::spawn(move || std::fs::read(file).unwrap())
    };
    arrived_rx.recv_timeout(Duration::from_secs(30)).expect("the read reached the upstream");
    let out = sh(&format!("env echo '{{\"name\":\"new\"}}' > '{}'", file.display()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    release_tx.send(()).unwrap();
    // The read that raced the write may give its reader the body from before it...
    assert_eq!(reader.join().unwrap(), br#"{"id":"asst_1","name":"old"}"#);
    // ...but the next read asks again and sees the write.
    assert_eq!(std::fs::read(&file).unwrap(), br#"{"id":"asst_1","name":"new"}"#);
    let gets: Vec<_> = up.seen().into_iter().filter(|s| s.method == "GET").collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
}
