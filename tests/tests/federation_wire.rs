//! The borrower's peer calls on the wire: A reaches B through a relay on 127.0.0.1 that
//! records every byte both ways and can close connections, answer with a redirect, or cut
//! an answer short. A keeps a pooled keep-alive connection to its peer, replaces one the
//! peer closed while idle without the agent seeing it, refuses a redirect, reports an answer
//! that broke off, and nothing secret (B's key, the pair's secret) is ever in the traffic.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use nkmc_e2e::{canary, contains, eventually, json, Nkmc, Upstream};

const SECRET_AB: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00123456789abcdef0123456789abcdef";
const PETS: &str = r#"[{"id":1,"name":"rex"},{"id":2,"name":"tom"}]"#;

/// What the relay does with a new connection.
#[derive(Clone)]
enum Mode {
    /// Passes the bytes both ways.
    Pass,
    /// Answers every request itself with `307` to this base URL (B's own).
    Redirect(String),
    /// Passes the request, and of the answer its head and three bytes of its body, then
    /// closes both sides.
    Cut,
}

#[derive(Default)]
struct Shared {
    mode: Mutex<Option<Mode>>,
    /// Every byte in either direction.
    traffic: Mutex<Vec<u8>>,
    accepted: AtomicUsize,
    /// The borrower's side of every connection, to close them.
    open: Mutex<Vec<TcpStream>>,
}

impl Shared {
    fn record(&self, bytes: &[u8]) {
        self.traffic.lock().unwrap().extend_from_slice(bytes);
    }
}

struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Relay {
    fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared { mode: Mutex::new(Some(Mode::Pass)), ..Shared::default() });
        let s = shared.clone();
        std::thread::spawn(move || {
            for a in listener.incoming() {
                let Ok(a) = a else { return };
                s.accepted.fetch_add(1, Ordering::SeqCst);
                s.open.lock().unwrap().push(a.try_clone().unwrap());
                let mode = s.mode.lock().unwrap().clone().unwrap();
                let s = s.clone();
                std::thread::spawn(move || match mode {
                    Mode::Pass => pass(a, target, &s, None),
                    Mode::Cut => pass(a, target, &s, Some(3)),
                    Mode::Redirect(to) => redirect(a, &to, &s),
                });
            }
        });
        Relay { addr, shared }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Closes every connection, as a peer closing its idle keep-alive connections does.
    fn close_all(&self) {
        for s in self.shared.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// New connections get `mode`; the open ones are closed.
    fn set(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = Some(mode);
        self.close_all();
    }

    fn traffic(&self) -> Vec<u8> {
        self.shared.traffic.lock().unwrap().clone()
    }
}

/// Relays `a` to `target`; with `cut`, the answer stops that many bytes into its body and
/// both sides are closed.
fn pass(a: TcpStream, target: SocketAddr, shared: &Arc<Shared>, cut: Option<usize>) {
    let Ok(b) = TcpStream::connect(target) else { return };
    let (mut a_in, mut b_out) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    let s = shared.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n @ 1..) = a_in.read(&mut buf) {
            s.record(&buf[..n]);
            if b_out.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = b_out.shutdown(Shutdown::Both);
        let _ = a_in.shutdown(Shutdown::Both);
    });
    let (mut b_in, mut a_out) = (b, a);
    let mut buf = [0u8; 16 * 1024];
    let mut head = Vec::new();
    let mut allowed: Option<usize> = None;
    let mut sent = 0usize;
    while let Ok(n @ 1..) = b_in.read(&mut buf) {
        shared.record(&buf[..n]);
        let mut chunk = &buf[..n];
        if let Some(body_bytes) = cut {
            if allowed.is_none() {
                head.extend_from_slice(chunk);
                allowed = head.windows(4).position(|w| w == b"\r\n\r\n").map(|end| end + 4 + body_bytes);
            }
            if let Some(limit) = allowed {
                chunk = &chunk[..chunk.len().min(limit.saturating_sub(sent))];
            }
        }
        sent += chunk.len();
        if a_out.write_all(chunk).is_err() || allowed.is_some_and(|l| sent >= l) {
            break;
        }
    }
    let _ = a_out.shutdown(Shutdown::Both);
    let _ = b_in.shutdown(Shutdown::Both);
}

/// Answers every request on `a` with a redirect to the same path under `to`.
fn redirect(mut a: TcpStream, to: &str, shared: &Arc<Shared>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match a.read(&mut chunk) {
                Ok(n @ 1..) => {
                    shared.record(&chunk[..n]);
                    buf.extend_from_slice(&chunk[..n]);
                    continue;
                }
                _ => return,
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let len: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < end + 4 + len {
            match a.read(&mut chunk) {
                Ok(n @ 1..) => {
                    shared.record(&chunk[..n]);
                    buf.extend_from_slice(&chunk[..n]);
                }
                _ => return,
            }
        }
        buf.drain(..end + 4 + len);
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let answer = format!("HTTP/1.1 307 Temporary Redirect\r\nlocation: {to}{path}\r\ncontent-length: 0\r\n\r\n");
        shared.record(answer.as_bytes());
        if a.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn peer_calls_keep_a_connection_refuse_redirects_report_a_broken_answer_and_carry_no_secret() {
    let key = canary();
    let k = key.clone();
    let up = Upstream::keyed(&key, move |req| match (req.method.as_str(), req.uri.as_str()) {
        ("GET", "/v1/pets") => json(200, PETS),
        // An upstream that echoes the key: B masks it before it crosses to A.
        ("GET", "/v1/pets/1") => json(200, &format!("{{\"id\":1,\"echo\":\"{k}\"}}")),
        _ => json(404, "{}"),
    });
    let (a, b) = (nkmc_e2e::federated_gateway("gw-a", ""), nkmc_e2e::federated_gateway("gw-b", ""));
    b.hold_pets(&up.url("/v1"), &key);
    b.ok(&["rules", "set", "pets.test", "--allow", "--peers", "gw-a", "--ops", "read"]);

    // A reaches B through the relay; B reaches A directly.
    let relay = Relay::start(b.tcp_addr());
    a.ok(&["peers", "add", "--id", "gw-b", "--name", "B", "--url", &relay.url(), "--secret", SECRET_AB]);
    b.ok(&[
        "peers",
        "add",
        "--id",
        "gw-a",
        "--name",
        "A",
        "--url",
        &format!("http://{}", a.tcp_addr()),
        "--secret",
        SECRET_AB,
    ]);
    eventually("A sees pets.test", || a.run(&["ls", "/"]).stdout.windows(10).any(|w| w == b"pets.test/"));
    let cat = |n: &Nkmc| n.run(&["cat", "/pets.test/pets"]);
    assert_eq!(a.ok(&["cat", "/pets.test/pets"]), PETS);

    // Keep-alive: reads one after another share a pooled connection (a background refresh
    // may open one more), not one connection each.
    let before = relay.accepted();
    for _ in 0..5 {
        assert_eq!(a.ok(&["cat", "/pets.test/pets"]), PETS);
    }
    assert!(relay.accepted() <= before + 1, "{} connections for 5 reads", relay.accepted() - before);

    // B closes its idle connections: A replaces its pooled one, the agent sees no error.
    for _ in 0..3 {
        relay.close_all();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let out = cat(&a);
        assert!(out.status.success(), "a closed idle connection reached the agent: {}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), PETS);
    }
    assert!(relay.accepted() > before, "new connections replaced the closed ones");

    // A redirect is refused, naming the layer, and never followed: B is not asked.
    relay.set(Mode::Redirect(format!("http://{}", b.tcp_addr())));
    let seen = up.seen().len();
    let out = cat(&a);
    assert!(!out.status.success());
    let why = stderr(&out);
    assert!(why.contains("federation: peer gw-b answered with a redirect (HTTP 307)"), "{why}");
    assert!(why.contains("never follows"), "{why}");
    assert_eq!(up.seen().len(), seen, "the redirect was followed to B");

    // An answer that breaks off: a clear error naming the peer, not a truncated body.
    relay.set(Mode::Cut);
    let out = cat(&a);
    assert!(!out.status.success(), "a cut answer was taken: {}", String::from_utf8_lossy(&out.stdout));
    assert!(!contains(&out.stdout, PETS.as_bytes()));
    let why = stderr(&out);
    assert!(why.contains("federation: peer gw-b") && why.contains("broke off"), "{why}");

    // Back to normal: a new connection, and the read works again.
    relay.set(Mode::Pass);
    assert_eq!(a.ok(&["cat", "/pets.test/pets"]), PETS);
    assert_eq!(a.ok(&["cat", "/pets.test/pets.d/1"]), r#"{"id":1,"echo":"[masked by nkmc]"}"#);

    // Everything A and B said to each other through the relay: signed, never secret.
    let traffic = relay.traffic();
    assert!(contains(&traffic, b"x-nkmc-signature") && contains(&traffic, PETS.as_bytes()));
    assert!(contains(&traffic, b"POST /federation/exec"), "the reads went through the relay");
    assert!(contains(&traffic, b"[masked by nkmc]"), "the echoed key crossed masked");
    nkmc_e2e::assert_no_secret("the peer traffic (B's key)", &traffic, &key);
    nkmc_e2e::assert_no_secret("the peer traffic (the pair's secret)", &traffic, SECRET_AB);
}
