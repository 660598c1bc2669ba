//! Row h of doc/BENCHMARKS.md: starts gatewayd, waits until `/readyz` over its Unix socket
//! answers 200, then kills it (SIGKILL, so that no shutdown work is timed) and waits for it.
//! scripts/bench runs it under `hyperfine -N`.
//!
//! ```text
//! nkmc-bench-startup SOCKET GATEWAYD [ARGS...]
//! ```
//!
//! gatewayd inherits the environment (`NKMC_DATA_DIR`, `NKMC_CONFIG`, ...); SOCKET is where it
//! listens. Readiness is polled every 100 µs for at most 10 s.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Whether gatewayd answers `/readyz` with 200 on `socket`.
fn ready(socket: &str) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else { return false };
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: gatewayd\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && &head[..] == b"HTTP/1.1 200"
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(socket), Some(gatewayd)) = (args.next(), args.next()) else {
        bail!("nkmc-bench-startup: usage: nkmc-bench-startup SOCKET GATEWAYD [ARGS...]");
    };
    let started = Instant::now();
    let mut child = Command::new(&gatewayd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("nkmc-bench-startup: cannot start {gatewayd}"))?;
    let outcome = loop {
        if ready(&socket) {
            break Ok(());
        }
        if let Some(status) = child.try_wait().context("nkmc-bench-startup: waiting for gatewayd")? {
            break Err(anyhow::anyhow!("nkmc-bench-startup: gatewayd exited ({status}) before it was ready"));
        }
        if started.elapsed() > Duration::from_secs(10) {
            break Err(anyhow::anyhow!("nkmc-bench-startup: gatewayd was not ready on {socket} after 10 s"));
        }
        std::thread::sleep(Duration::from_micros(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    outcome
}
