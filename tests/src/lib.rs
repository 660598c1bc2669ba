//! The end-to-end harness: real `nkmc`, `gatewayd` and `mountd` processes on a temp data
//! dir, real FUSE mounts, and HTTP servers on 127.0.0.1 playing the upstream APIs.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;

/// The directory holding the built binaries (`target/debug`), or `NKMC_BIN_DIR`.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("NKMC_BIN_DIR") {
        return PathBuf::from(d);
    }
    // target/debug/deps/<test-binary> → target/debug
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
}

/// The path of a workspace binary; panics with the fix if it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(p.is_file(), "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)", p.display());
    p
}

/// Whether FUSE tests can run. Under `CI=true` a missing /dev/fuse is a failure, not a skip.
pub fn fuse_available() -> bool {
    let ok = Path::new("/dev/fuse").exists();
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but /dev/fuse is missing: FUSE tests cannot be skipped in CI"
        );
        eprintln!("skipping: /dev/fuse is missing");
    }
    ok
}

/// A fixture shipped in `tests/fixtures`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(rel)
}

/// One nkmc installation in a temp dir: data dir, config, mount point.
pub struct Nkmc {
    /// The temp dir holding everything.
    pub dir: tempfile::TempDir,
    /// `NKMC_DATA_DIR`.
    pub data_dir: PathBuf,
    /// `NKMC_MOUNT`.
    pub mount: PathBuf,
    /// `NKMC_CONFIG`.
    pub config: PathBuf,
}

impl Nkmc {
    /// A fresh installation with an optional `config.toml` body.
    pub fn new(config_toml: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("nkmc-e2e").tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        let mount = dir.path().join("mnt");
        let config = dir.path().join("config.toml");
        std::fs::write(&config, config_toml).expect("write config");
        Nkmc { dir, data_dir, mount, config }
    }

    /// The socket gatewayd listens on (under the data dir).
    pub fn socket(&self) -> PathBuf {
        self.data_dir.join("run").join("gatewayd.sock")
    }

    /// A `nkmc` command with this installation's environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("nkmc"));
        c.args(args)
            .env("NKMC_DATA_DIR", &self.data_dir)
            .env("NKMC_CONFIG", &self.config)
            .env("NKMC_MOUNT", &self.mount)
            .env("NKMC_LOG", "trace")
            // Any free port: tests run side by side, and 9090 may be a user's gatewayd.
            .env("NKMC_PORT", "0")
            // An error's message, not a backtrace, at the end of gatewayd's log.
            .env("RUST_LIB_BACKTRACE", "0")
            .env_remove("NKMC_HOST")
            .env_remove("NKMC_SOCKET");
        c
    }

    /// Where the running gatewayd's agent API listens over TCP (from `nkmc gateway status`).
    pub fn tcp_addr(&self) -> SocketAddr {
        let status = self.ok(&["gateway", "status"]);
        let line = status.lines().find_map(|l| l.trim().strip_prefix("tcp:")).expect("a tcp line in the status");
        line.trim().parse().unwrap_or_else(|e| panic!("tcp address `{line}`: {e}"))
    }

    /// Runs `nkmc ARGS` and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().expect("run nkmc")
    }

    /// Runs `nkmc ARGS` with `stdin` piped in.
    pub fn run_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nkmc");
        child.stdin.take().expect("stdin").write_all(stdin).expect("write stdin");
        child.wait_with_output().expect("wait nkmc")
    }

    /// Runs `nkmc ARGS` and panics with its output unless it succeeded; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "nkmc {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Registers the Petstore fixture as `pets.test` at `base` (e.g. an upstream's `/v1`) and
    /// stores `key` for it (the lender's side of the federation tests, among others).
    pub fn hold_pets(&self, base: &str, key: &str) {
        let spec = fixture("openapi/petstore.yaml");
        let spec = spec.to_str().expect("a UTF-8 path");
        self.ok(&["register", "--spec", spec, "--domain", "pets.test", "--base-url", base]);
        let out = self.run_stdin(&["keys", "set", "pets.test", "--token", "-"], key.as_bytes());
        assert!(out.status.success(), "keys set: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `nkmc up`, checked.
    pub fn up(&self) -> String {
        self.ok(&["up"])
    }

    /// Every regular file under the data dir (database, WAL, key file, logs).
    pub fn data_files(&self) -> Vec<PathBuf> {
        fn walk(p: &Path, out: &mut Vec<PathBuf>) {
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    let path = e.path();
                    match e.file_type() {
                        Ok(t) if t.is_dir() => walk(&path, out),
                        Ok(t) if t.is_file() => out.push(path),
                        _ => {}
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.data_dir, &mut out);
        out
    }
}

impl Drop for Nkmc {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
        // A failed test may leave a mount behind: never leave the temp dir busy.
        let _ = nix::mount::umount2(&self.mount, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A request the upstream saw.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Headers, names lower-cased.
    pub headers: HashMap<String, String>,
    /// The body.
    pub body: Vec<u8>,
}

type Handler = dyn Fn(&Seen) -> (u16, Vec<(String, String)>, Vec<u8>) + Send + Sync;

/// An HTTP server on 127.0.0.1 playing an upstream API; it records every request.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    _rt: tokio::runtime::Runtime,
}

impl Upstream {
    /// Serves `handler` on a free port.
    pub fn start(handler: impl Fn(&Seen) -> (u16, Vec<(String, String)>, Vec<u8>) + Send + Sync + 'static) -> Self {
        Self::start_threads(2, handler)
    }

    /// Serves `handler` to requests carrying `Authorization: Bearer KEY`; any other request
    /// gets 401 `{"error":"bad key"}` and never reaches `handler`.
    pub fn keyed(
        key: &str,
        handler: impl Fn(&Seen) -> (u16, Vec<(String, String)>, Vec<u8>) + Send + Sync + 'static,
    ) -> Self {
        let expected = format!("Bearer {key}");
        Self::start(move |req| {
            if req.headers.get("authorization") != Some(&expected) {
                return json(401, r#"{"error":"bad key"}"#);
            }
            handler(req)
        })
    }

    /// Serves `handler` on a free port with `workers` threads, so up to that many calls of
    /// a handler that blocks (to hold requests in flight) run at once.
    pub fn start_threads(
        workers: usize,
        handler: impl Fn(&Seen) -> (u16, Vec<(String, String)>, Vec<u8>) + Send + Sync + 'static,
    ) -> Self {
        let rt =
            tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build().expect("runtime");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let log = seen.clone();
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let handler = handler.clone();
            let log = log.clone();
            async move {
                let s = Seen {
                    method: method.to_string(),
                    uri: uri.to_string(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                        .collect(),
                    body: body.to_vec(),
                };
                // A handler that blocks (to hold a request in flight) must not hold up the
                // tasks queued on its worker: they move to another.
                let (status, hdrs, body) = tokio::task::block_in_place(|| handler(&s));
                log.lock().expect("log").push(s);
                let mut resp = (StatusCode::from_u16(status).expect("status"), body).into_response();
                for (k, v) in hdrs {
                    resp.headers_mut().insert(
                        axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                        axum::http::HeaderValue::from_str(&v).expect("value"),
                    );
                }
                resp
            }
        });
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Upstream { addr, seen, _rt: rt }
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("log").clone()
    }
}

/// A JSON response.
pub fn json(status: u16, body: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    (status, vec![("content-type".into(), "application/json".into())], body.as_bytes().to_vec())
}

/// A unique, high-entropy canary secret.
pub fn canary() -> String {
    let mut b = [0u8; 16];
    let f = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    f.expect("urandom");
    format!("CANARY_{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>())
}

/// Whether `hay` contains `needle`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// An HTTP answer: status, headers (names lower-cased), body.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: HashMap<String, String>,
    /// The body (chunked encoding undone).
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request over a fresh TCP connection (`Connection: close`), written by hand
/// so tests see exactly what goes over the wire.
pub fn http(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes()).expect("write head");
    s.write_all(body).expect("write body");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read answer");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).expect("status line");
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body);
    }
    Answer { status, headers, body }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else { return out };
        let size = usize::from_str_radix(String::from_utf8_lossy(&raw[..eol]).trim(), 16).expect("chunk size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[eol + 2 + size + 2..];
    }
}

/// A federation request signed as gatewayd signs them (see gatewayd's `federation::sign`):
/// the test plays a peer, honest or not.
pub struct PeerRequest<'a> {
    /// The route (`/federation/exec`).
    pub path: &'a str,
    /// The JSON body sent.
    pub body: &'a [u8],
    /// The body the signature covers (differs from `body` to tamper).
    pub signed_body: &'a [u8],
    /// Unix seconds.
    pub timestamp: u64,
    /// 32 hex digits.
    pub nonce: &'a str,
    /// Who claims to send.
    pub sender: &'a str,
    /// Who it is addressed to.
    pub recipient: &'a str,
    /// The shared secret.
    pub secret: &'a [u8],
}

impl PeerRequest<'_> {
    /// Sends it to `addr`.
    pub fn send(&self, addr: SocketAddr) -> Answer {
        self.send_with(addr, &[])
    }

    /// Sends it to `addr` with `extra` headers (outside the signature, as `X-PAYMENT` is).
    pub fn send_with(&self, addr: SocketAddr, extra: &[(&str, &str)]) -> Answer {
        use hmac::Mac;
        use sha2::Digest;
        let hash: String = sha2::Sha256::digest(self.signed_body).iter().map(|b| format!("{b:02x}")).collect();
        let canonical = format!(
            "nkmc-federation-v1\nPOST\n{}\n{hash}\n{}\n{}\n{}\n{}",
            self.path, self.timestamp, self.nonce, self.sender, self.recipient
        );
        let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(self.secret).expect("key");
        mac.update(canonical.as_bytes());
        let sig: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        let ts = self.timestamp.to_string();
        let mut headers = vec![
            ("Content-Type", "application/json"),
            ("x-nkmc-sender", self.sender),
            ("x-nkmc-recipient", self.recipient),
            ("x-nkmc-timestamp", &ts),
            ("x-nkmc-nonce", self.nonce),
            ("x-nkmc-signature", &sig),
        ];
        headers.extend_from_slice(extra);
        http(addr, "POST", self.path, &headers, self.body)
    }
}

/// A gatewayd of its own, started in the background, calling itself `id` among peers.
pub fn federated_gateway(id: &str, config: &str) -> Nkmc {
    let n = Nkmc::new(config);
    let out = n.cmd(&["gateway", "start", "--daemon"]).env("NKMC_GATEWAY_ID", id).output().expect("nkmc");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    n
}

/// Polls `cond` every 50 ms until it holds (peers announce in the background); panics with
/// `what` after 20 s.
pub fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Whether `/proc/self/mountinfo` lists a mount at `dir`.
pub fn is_mounted(dir: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let dir = dir.to_string_lossy();
    info.lines().any(|l| l.split(' ').nth(4) == Some(&*dir))
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after 10 s.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A `mountd` started directly (not through `nkmc`), for options `nkmc` does not pass.
pub struct Mountd {
    /// The process.
    pub child: std::process::Child,
    /// Where it is mounted.
    pub dir: PathBuf,
}

impl Mountd {
    /// Starts `mountd DIR --socket SOCKET ARGS` against `n`'s gatewayd; returns once the
    /// mount answers.
    pub fn start(n: &Nkmc, name: &str, args: &[&str]) -> Self {
        let dir = n.dir.path().join(name);
        std::fs::create_dir_all(&dir).expect("mount point");
        let log = std::fs::File::create(n.dir.path().join(format!("{name}.log"))).expect("log");
        let child = Command::new(bin("mountd"))
            .arg(&dir)
            .arg("--socket")
            .arg(n.socket())
            .args(args)
            .env_remove("NKMC_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn mountd");
        wait_until("the mount to answer", || is_mounted(&dir) && std::fs::read_dir(&dir).is_ok());
        Mountd { child, dir }
    }

    /// mountd's process id.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid")
    }
}

impl Drop for Mountd {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
        let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A process's peak resident memory (`VmHWM`), in KiB.
pub fn vm_hwm_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

const BASE64_STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const BASE64_URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64 of `bytes` with `=` padding, standard or URL-safe alphabet (an encoder written
/// for the tests, independent of gatewayd's).
pub fn base64(bytes: &[u8], url_safe: bool) -> String {
    let alphabet = if url_safe { BASE64_URL } else { BASE64_STD };
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(alphabet[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The forms a leaked secret could take, named: plain, hex (both cases), every byte
/// percent-encoded (both cases), and base64 (standard and URL-safe) at each of the three
/// alignments it can have inside a longer encoded text (only the characters that depend on
/// the secret's bytes alone).
pub fn secret_forms(secret: &str) -> Vec<(String, String)> {
    let bytes = secret.as_bytes();
    let mut forms = vec![
        ("plain".to_owned(), secret.to_owned()),
        ("hex".to_owned(), bytes.iter().map(|b| format!("{b:02x}")).collect()),
        ("HEX".to_owned(), bytes.iter().map(|b| format!("{b:02X}")).collect()),
        ("percent-encoded".to_owned(), bytes.iter().map(|b| format!("%{b:02X}")).collect()),
        ("percent-encoded (lower)".to_owned(), bytes.iter().map(|b| format!("%{b:02x}")).collect()),
    ];
    for url_safe in [false, true] {
        for shift in 0..3 {
            let mut shifted = vec![b'x'; shift];
            shifted.extend_from_slice(bytes);
            shifted.extend_from_slice(b"xyz");
            let enc = base64(&shifted, url_safe);
            // Characters that mix in bits of the filler are left out.
            let first = (8 * shift).div_ceil(6);
            let last = (8 * (shift + bytes.len())) / 6;
            forms.push((format!("base64 (url-safe: {url_safe}, offset {shift})"), enc[first..last].to_owned()));
        }
    }
    forms
}

/// The bytes of a data file listed a moment ago, or nothing if it has gone since (SQLite
/// removes its journal and temporary files): a file that no longer exists holds no secret.
pub fn read_if_present(path: &Path) -> Vec<u8> {
    match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    }
}

/// Panics if `hay` holds any of [`secret_forms`] of `secret`.
pub fn assert_no_secret(what: &str, hay: &[u8], secret: &str) {
    for (form, needle) in secret_forms(secret) {
        assert!(!contains(hay, needle.as_bytes()), "{what} contains the key ({form})");
    }
}

/// A hand-written upstream that answers every request with a chunked body, one chunk per
/// write, a pause between them so they arrive as separate reads: for `/v1/pets` the key sent,
/// split in the middle across two chunks; for anything else 3000 bytes in 30 chunks.
pub fn chunked_upstream() -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("chunked upstream");
    let addr = listener.local_addr().expect("chunked upstream");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().expect("chunked upstream"));
            let (mut target, mut key) = (String::new(), String::new());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                if target.is_empty() {
                    target = line.split_whitespace().nth(1).unwrap_or_default().to_owned();
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("authorization: bearer ") {
                    key = line[line.len() - v.len()..].trim().to_owned();
                }
                line.clear();
            }
            let chunks: Vec<String> = if target == "/v1/pets" {
                let (a, b) = key.split_at(key.len() / 2);
                vec!["[{\"id\":\"".into(), a.into(), b.into(), "\"}]".into()]
            } else {
                (0..30).map(|_| "x".repeat(100)).collect()
            };
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n");
            for c in chunks {
                let _ = stream.write_all(format!("{:x}\r\n{c}\r\n", c.len()).as_bytes());
                let _ = stream.flush();
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = stream.write_all(b"0\r\n\r\n");
        }
    });
    addr
}
