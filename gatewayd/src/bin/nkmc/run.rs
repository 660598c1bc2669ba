//! `nkmc run TOOL ARGS...`: runs a tool inside gatewayd with its credential injected;
//! its output comes back as it is produced (masked), stdin goes through, and nkmc exits
//! with the tool's code. `nkmc run --list` shows the tools.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::pin::Pin;
use std::process::ExitCode;

use agentfs::wire::ErrorBody;
use anyhow::{bail, Context};
use bytes::Bytes;
use futures_util::Stream;
use gatewayd::run::frame::{self, Decoder, Kind};
use gatewayd::run::wire::{ExecRequest, ExitStatus, ToolList};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::Ctx;

/// `nkmc run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// List the tools this caller may run.
    #[arg(long)]
    list: bool,
    /// Set a variable for the tool, `NAME=VALUE` (only the names the tool allows; repeatable).
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// The tool and its arguments (everything after TOOL goes to the tool).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required_unless_present = "list",
        value_name = "TOOL [ARGS]"
    )]
    command: Vec<String>,
}

pub async fn run(ctx: &Ctx, args: RunArgs) -> anyhow::Result<ExitCode> {
    if args.list {
        return list(ctx).await;
    }
    let mut env = BTreeMap::new();
    for e in &args.env {
        let Some((k, v)) = e.split_once('=') else { bail!("--env wants NAME=VALUE, got `{e}`") };
        env.insert(k.to_owned(), v.to_owned());
    }
    let mut command = args.command.into_iter();
    let Some(tool) = command.next() else { bail!("name a tool: nkmc run TOOL [ARGS...]") };
    let req = ExecRequest { tool, args: command.collect(), env };
    exec(ctx, &req).await
}

async fn list(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let list: ToolList = ctx.client().get_json(&format!("{}/proxy/tools", agentfs::wire::API_PREFIX)).await?;
    if list.tools.is_empty() {
        println!("no tools (a token without the `run` right sees none)");
    }
    for t in list.tools {
        let path = t.path.unwrap_or_else(|| format!("not installed ({})", t.binary));
        println!("{}\t{}\t{}\t{}", t.name, t.domain, t.inject.join(","), path);
        if !t.deny.is_empty() || !t.deny_flags.is_empty() {
            let mut refused: Vec<String> = t.deny.clone();
            refused.extend(t.deny_flags.iter().cloned());
            println!("\trefused: {}", refused.join("; "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send>>;

/// Reads stdin on a thread of its own (a blocked read never holds up nkmc's exit) and sends
/// it as stdin frames, then the end-of-stdin frame.
fn stdin_frames(tx: mpsc::Sender<Bytes>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(frame::encode(Kind::Stdin, &buf[..n])).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.blocking_send(frame::encode(Kind::StdinEnd, &[]));
    });
}

async fn exec(ctx: &Ctx, req: &ExecRequest) -> anyhow::Result<ExitCode> {
    let socket = &ctx.paths.socket;
    let stream = UnixStream::connect(socket).await.with_context(|| {
        format!(
            "cannot connect to gatewayd at {}; is it running? Start it with `nkmc up` or `nkmc gateway start --daemon`",
            socket.display()
        )
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, StreamBody<FrameStream>>(TokioIo::new(stream))
        .await
        .context("the connection to gatewayd failed")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // The request frame goes first; stdin follows only once gatewayd has answered 200 (the
    // tool runs): a refusal answers at once and closes the connection, and a body still being
    // written then would turn the refusal into a broken pipe.
    let first = frame::encode(Kind::Request, &serde_json::to_vec(req)?);
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    stdin_frames(tx);
    let frames: FrameStream = Box::pin(futures_util::stream::unfold(
        (Some(first), Some(started_rx), rx),
        |(first, started, mut rx)| async move {
            if let Some(f) = first {
                return Some((Ok(Frame::data(f)), (None, started, rx)));
            }
            if let Some(started) = started {
                started.await.ok()?;
            }
            rx.recv().await.map(|b| (Ok(Frame::data(b)), (None, None, rx)))
        },
    ));
    let mut http = Request::builder()
        .method(Method::POST)
        .uri(format!("{}/proxy/exec", agentfs::wire::API_PREFIX))
        .header("host", "gatewayd")
        .header("content-type", frame::MEDIA_TYPE);
    if let Some(token) = crate::token::current_token(ctx) {
        http = http.header("authorization", format!("Bearer {token}"));
    }
    let resp = sender.send_request(http.body(StreamBody::new(frames))?).await.context("gatewayd did not answer")?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let bytes = body.collect().await.context("reading gatewayd's error")?.to_bytes();
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => bail!("{}", e.message),
            Err(_) => bail!("gatewayd answered {status}: {}", String::from_utf8_lossy(&bytes)),
        }
    }
    let _ = started_tx.send(());
    let mut decoder = Decoder::default();
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    while let Some(f) = body.frame().await {
        let f = f.context("the run's output broke off")?;
        let Ok(data) = f.into_data() else { continue };
        decoder.push(&data);
        while let Some((kind, payload)) = decoder.next_frame()? {
            match kind {
                Kind::Stdout => {
                    // A closed stdout (`| head`): leave as a tool would on SIGPIPE; the
                    // connection closing stops the tool.
                    if let Err(e) = stdout.write_all(&payload).and_then(|()| stdout.flush()) {
                        if e.kind() == std::io::ErrorKind::BrokenPipe {
                            return Ok(ExitCode::from(128 + 13));
                        }
                        return Err(e).context("writing the tool's output");
                    }
                }
                Kind::Stderr => {
                    let _ = stderr.write_all(&payload).and_then(|()| stderr.flush());
                }
                Kind::Exit => {
                    let status: ExitStatus = serde_json::from_slice(&payload).context("the exit frame")?;
                    if let Some(m) = &status.message {
                        eprintln!("nkmc: run: {}: {m}", req.tool);
                    }
                    let code = u8::try_from(status.shell_code().clamp(0, 255)).unwrap_or(1);
                    return Ok(ExitCode::from(code));
                }
                Kind::Request | Kind::Stdin | Kind::StdinEnd => bail!("gatewayd sent an unexpected {kind:?} frame"),
            }
        }
    }
    decoder.finish()?;
    bail!("the run of `{}` ended without an exit status (gatewayd stopped?)", req.tool)
}
