//! Running one tool: spawned in a process group of its own with exactly the environment it is
//! given, stdin fed from the caller, stdout and stderr masked and framed as they come, and
//! the whole group killed at the timeout, at the output cap, when the caller goes away, and
//! after the tool exits (nothing it started outlives it).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::frame::{self, Kind};
use super::mask::{Masker, Patterns};
use super::wire::{ExitReason, ExitStatus};

/// How long the exit frame may wait for a caller that stopped reading.
const EXIT_FRAME_WAIT: Duration = Duration::from_secs(30);

/// Everything a run needs, decided before the tool starts.
pub struct Prepared {
    /// The binary (absolute, resolved when gatewayd started).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its whole environment.
    pub env: Vec<(String, OsString)>,
    /// Its home and working directory, removed after the run.
    pub scratch: super::Scratch,
    /// What to mask in its output.
    pub patterns: Patterns,
    /// Longest run.
    pub timeout: Duration,
    /// Most output bytes (stdout and stderr together).
    pub max_output: u64,
    /// Time between SIGTERM and SIGKILL.
    pub grace: Duration,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("program", &self.program)
            .field("args", &self.args.len())
            .field("env", &self.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Kills the process group when dropped (the task driving a run was cancelled).
struct Group(Pid);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = killpg(self.0, Signal::SIGKILL);
    }
}

/// A started tool.
pub struct Running {
    child: Child,
    group: Group,
    stdin: Option<ChildStdin>,
    prepared: Prepared,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("pgid", &self.group.0).finish_non_exhaustive()
    }
}

/// How a run ended, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// It ended; the caller was told with the exit frame.
    Status(ExitStatus),
    /// The caller went away; the group was killed.
    CallerGone {
        /// Output bytes produced until then.
        output_bytes: u64,
    },
}

/// Starts the tool in a new process group.
pub fn spawn(prepared: Prepared) -> std::io::Result<Running> {
    let mut cmd = Command::new(&prepared.program);
    cmd.args(&prepared.args)
        .env_clear()
        .envs(prepared.env.iter().map(|(k, v)| (k, v)))
        .current_dir(prepared.scratch.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let pid = child.id().ok_or_else(|| std::io::Error::other("the tool exited before its pid was read"))?;
    let group = Group(Pid::from_raw(i32::try_from(pid).map_err(std::io::Error::other)?));
    let stdin = child.stdin.take();
    Ok(Running { child, group, stdin, prepared })
}

/// Feeds the tool's stdin from the caller; ends (closing stdin) at `None` or when the
/// channel closes.
async fn pump_stdin(mut stdin: ChildStdin, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(chunk) = rx.recv().await {
        if stdin.write_all(&chunk).await.is_err() || stdin.flush().await.is_err() {
            return;
        }
    }
}

/// One output stream being read.
struct Stream {
    reader: Option<Box<dyn AsyncRead + Unpin + Send>>,
    masker: Masker,
    kind: Kind,
}

impl Stream {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.reader.as_mut() {
            Some(r) => r.read(buf).await,
            None => std::future::pending().await,
        }
    }
}

impl Running {
    /// Drives the run to its end: `stdin` feeds the tool, frames go to `out` (the last one
    /// is the exit frame, unless the caller went away).
    /// `stop` turning true (gatewayd shuts down) ends it too.
    pub async fn drive(
        mut self,
        stdin: mpsc::Receiver<Bytes>,
        out: mpsc::Sender<Bytes>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Ended {
        let pump = self.stdin.take().map(|s| tokio::spawn(pump_stdin(s, stdin)));
        let ended = self.run_loop(&out, stop).await;
        if let Some(p) = pump {
            p.abort();
        }
        ended
    }

    async fn run_loop(&mut self, out: &mpsc::Sender<Bytes>, mut stop: tokio::sync::watch::Receiver<bool>) -> Ended {
        let deadline = Instant::now() + self.prepared.timeout;
        let mut stdout = Stream {
            reader: self.child.stdout.take().map(|r| Box::new(r) as Box<dyn AsyncRead + Unpin + Send>),
            masker: Masker::new(self.prepared.patterns.clone()),
            kind: Kind::Stdout,
        };
        let mut stderr = Stream {
            reader: self.child.stderr.take().map(|r| Box::new(r) as Box<dyn AsyncRead + Unpin + Send>),
            masker: Masker::new(self.prepared.patterns.clone()),
            kind: Kind::Stderr,
        };
        let mut total: u64 = 0;
        let mut exited: Option<std::process::ExitStatus> = None;
        let mut buf_out = vec![0u8; 16 * 1024];
        let mut buf_err = vec![0u8; 16 * 1024];
        loop {
            if let Some(status) = exited {
                if stdout.reader.is_none() && stderr.reader.is_none() {
                    return self.exit_frame(out, status_of(status, total), total).await;
                }
            }
            let (which, read) = tokio::select! {
                r = stdout.read(&mut buf_out) => (0, r),
                r = stderr.read(&mut buf_err) => (1, r),
                status = self.child.wait(), if exited.is_none() => {
                    match status {
                        Ok(s) => {
                            exited = Some(s);
                            // Whatever the tool left running goes with it.
                            let _ = killpg(self.group.0, Signal::SIGKILL);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "run: cannot wait for the tool");
                            self.terminate().await;
                            return Ended::CallerGone { output_bytes: total };
                        }
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if let Some(status) = exited {
                        // It exited but something holds its pipes open: stop reading.
                        return self.exit_frame(out, status_of(status, total), total).await;
                    }
                    self.terminate().await;
                    let secs = self.prepared.timeout.as_secs_f64();
                    let status = stopped(ExitReason::Timeout, total, format!("killed after the timeout of {secs} s"));
                    return self.exit_frame(out, status, total).await;
                }
                () = async { if stop.wait_for(|s| *s).await.is_err() {
                        std::future::pending::<()>().await;
                    } } => {
                    self.terminate().await;
                    let status = stopped(ExitReason::Shutdown, total, "killed: gatewayd is shutting down".to_owned());
                    return self.exit_frame(out, status, total).await;
                }
                _ = out.closed() => {
                    self.terminate().await;
                    return Ended::CallerGone { output_bytes: total };
                }
            };
            let (stream, buf) = if which == 0 { (&mut stdout, &buf_out) } else { (&mut stderr, &buf_err) };
            let n = match read {
                Ok(0) | Err(_) => {
                    stream.reader = None;
                    let rest = stream.masker.finish();
                    if !rest.is_empty() && !send(out, stream.kind, &rest, deadline).await {
                        self.terminate().await;
                        return Ended::CallerGone { output_bytes: total };
                    }
                    continue;
                }
                Ok(n) => n,
            };
            total += n as u64;
            if total > self.prepared.max_output {
                self.terminate().await;
                let cap = self.prepared.max_output;
                let status =
                    stopped(ExitReason::OutputLimit, total, format!("killed: output over the cap of {cap} bytes"));
                return self.exit_frame(out, status, total).await;
            }
            let masked = stream.masker.push(&buf[..n]);
            if !masked.is_empty() && !send(out, stream.kind, &masked, deadline).await {
                self.terminate().await;
                return Ended::CallerGone { output_bytes: total };
            }
        }
    }

    /// SIGTERM to the group, SIGKILL after the grace period, then reaps the tool.
    async fn terminate(&mut self) {
        let _ = killpg(self.group.0, Signal::SIGTERM);
        if tokio::time::timeout(self.prepared.grace, self.child.wait()).await.is_err() {
            tracing::info!("run: the tool ignored SIGTERM; killing its process group");
        }
        let _ = killpg(self.group.0, Signal::SIGKILL);
        let _ = self.child.wait().await;
    }

    async fn exit_frame(&mut self, out: &mpsc::Sender<Bytes>, status: ExitStatus, total: u64) -> Ended {
        let json = serde_json::to_vec(&status).unwrap_or_default();
        // A caller that stopped reading does not keep the run (and its slot) forever.
        let sent = tokio::time::timeout(EXIT_FRAME_WAIT, out.send(frame::encode(Kind::Exit, &json))).await;
        if !matches!(sent, Ok(Ok(()))) {
            return Ended::CallerGone { output_bytes: total };
        }
        Ended::Status(status)
    }
}

fn stopped(reason: ExitReason, total: u64, message: String) -> ExitStatus {
    ExitStatus { reason, code: None, signal: Some(Signal::SIGKILL as i32), output_bytes: total, message: Some(message) }
}

fn status_of(s: std::process::ExitStatus, total: u64) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(code), _) => ExitStatus {
            reason: ExitReason::Exited,
            code: Some(code),
            signal: None,
            output_bytes: total,
            message: None,
        },
        (None, signal) => {
            ExitStatus { reason: ExitReason::Signaled, code: None, signal, output_bytes: total, message: None }
        }
    }
}

/// Sends output as frames; `false` when the caller went away (or stopped reading past the
/// deadline).
async fn send(out: &mpsc::Sender<Bytes>, kind: Kind, bytes: &[u8], deadline: Instant) -> bool {
    for f in frame::encode_all(kind, bytes) {
        match tokio::time::timeout_at(deadline, out.send(f)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return false,
        }
    }
    true
}
