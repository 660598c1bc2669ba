//! `up`, `down`, `gateway start|stop|status`, `mount`, `umount`: starting and stopping
//! gatewayd and mountd, and waiting until each one answers.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use agentfs::client::GatewayClient;
use agentfs::wire::Status;
use anyhow::{bail, Context};
use hyper::Method;

use crate::mounts::{self, MountRecord};
use crate::Ctx;

/// How long a daemon may take to answer after it was started.
const START_DEADLINE: Duration = Duration::from_secs(15);
/// How long a daemon may take to exit after it was asked to.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// How often a start or stop is checked on: a check is one connect or one read of
/// /proc/self/mountinfo, and `nkmc up` waits on two of them (issue 8: up to first read).
const POLL: Duration = Duration::from_millis(1);

/// A sibling binary of `nkmc` (as installed by cargo), else one on PATH.
fn binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(name)))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

async fn gateway_status(client: &GatewayClient) -> Option<Status> {
    client.get_json::<Status>("/v1/status").await.ok()
}

/// Starts gatewayd in the background unless one answers; returns its status.
async fn ensure_gateway(ctx: &Ctx) -> anyhow::Result<Status> {
    ensure_gateway_with(ctx, &[]).await
}

/// [`ensure_gateway`] with extra gatewayd flags (used only when it has to start one).
async fn ensure_gateway_with(ctx: &Ctx, flags: &[&str]) -> anyhow::Result<Status> {
    let client = GatewayClient::new(&ctx.paths.socket, Duration::from_secs(2));
    if let Some(s) = gateway_status(&client).await {
        return Ok(s);
    }
    gatewayd::gateway::create_private_dir(&ctx.paths.data_dir)?;
    let log_path = ctx.paths.gatewayd_log();
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    let mut child = Command::new(binary("gatewayd"))
        .arg("--data-dir")
        .arg(&ctx.paths.data_dir)
        .arg("--socket")
        .arg(&ctx.paths.socket)
        .args(flags)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("cannot start gatewayd (is it installed next to nkmc or on PATH?)")?;
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if let Some(s) = gateway_status(&client).await {
            return Ok(s);
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "gatewayd exited ({status}) before answering; its log ({}) ends with:\n{}",
                log_path.display(),
                log_tail(&log_path)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "gatewayd did not answer on {} within {START_DEADLINE:?}; see {}",
                ctx.paths.socket.display(),
                log_path.display()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

pub async fn gateway_start(ctx: &Ctx, daemon: bool, tunnel: bool) -> anyhow::Result<ExitCode> {
    let flags: &[&str] = if tunnel { &["--tunnel"] } else { &[] };
    let client = GatewayClient::new(&ctx.paths.socket, Duration::from_secs(2));
    if tunnel && gateway_status(&client).await.is_some() {
        bail!("gatewayd is already running; to publish it through a tunnel, stop it (`nkmc gateway stop`) and start it with --tunnel");
    }
    if daemon {
        let s = ensure_gateway_with(ctx, flags).await?;
        println!("gatewayd running (pid {}) on {}", s.pid, s.socket);
        if tunnel {
            println!("publishing through the tunnel; `nkmc gateway status` shows the public URL once it is up");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let err = Command::new(binary("gatewayd"))
        .arg("--data-dir")
        .arg(&ctx.paths.data_dir)
        .arg("--socket")
        .arg(&ctx.paths.socket)
        .args(flags)
        .exec();
    bail!("cannot run gatewayd: {err}")
}

pub async fn gateway_stop(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let client = GatewayClient::new(&ctx.paths.socket, Duration::from_secs(2));
    let Some(status) = gateway_status(&client).await else {
        println!("gatewayd is not running");
        return Ok(ExitCode::SUCCESS);
    };
    client.call_ok(Method::POST, "/v1/shutdown", None).await?;
    // Stopped means exited: its lock on the data dir is released, so a new one can start.
    let pid = i32::try_from(status.pid).context("gatewayd's pid")?;
    let deadline = Instant::now() + STOP_DEADLINE;
    while mounts::alive(pid) {
        if Instant::now() > deadline {
            bail!(
                "gatewayd (pid {pid}) did not exit within {STOP_DEADLINE:?}; see {}",
                ctx.paths.gatewayd_log().display()
            );
        }
        tokio::time::sleep(POLL).await;
    }
    println!("gatewayd stopped");
    Ok(ExitCode::SUCCESS)
}

pub async fn status(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let client = GatewayClient::new(&ctx.paths.socket, Duration::from_secs(2));
    let running = match gateway_status(&client).await {
        Some(s) => {
            println!("gatewayd: running (pid {}, up {}s, version {})", s.pid, s.uptime_secs, s.version);
            println!("  gateway:  {} ({})", s.gateway_id, s.gateway_name);
            println!("  socket:   {}", s.socket);
            println!("  tcp:      {}", s.tcp.as_deref().unwrap_or("off"));
            println!("  public:   {}", s.public_url.as_deref().unwrap_or("-"));
            println!("  data dir: {}", s.data_dir);
            println!("  services: {}", s.services);
            true
        }
        None => {
            println!("gatewayd: not running");
            println!("  socket:   {}", ctx.paths.socket.display());
            println!("  data dir: {}", ctx.paths.data_dir.display());
            false
        }
    };
    let recs = mounts::all(&ctx.paths.mounts_dir());
    if recs.is_empty() {
        println!("mounts: none");
    }
    for r in recs {
        let state = if !mounts::alive(r.pid) {
            "mountd not running"
        } else if mounts::is_nkmc_mount(&r.mountpoint) {
            "mounted"
        } else {
            "not mounted"
        };
        println!("mount: {} (mountd pid {}, {state})", r.mountpoint.display(), r.pid);
    }
    Ok(if running { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

/// Starts a mountd at `dir` acting as `token` (the owner without one) and waits until the
/// mount answers.
async fn start_mount(ctx: &Ctx, dir: &Path, token: Option<String>) -> anyhow::Result<()> {
    let dir = std::path::absolute(dir)?;
    if mounts::is_stale(&dir) {
        eprintln!("nkmc: {} is a stale mount (its mountd died); unmounting it", dir.display());
        mounts::detach(&dir)?;
    }
    if let Some(rec) = mounts::find(&ctx.paths.mounts_dir(), &dir) {
        if mounts::alive(rec.pid) && mounts::is_nkmc_mount(&dir) {
            return Ok(());
        }
    }
    if let Some(m) = mounts::mounted(&dir) {
        if m.is_nkmc() {
            // An nkmc mount whose mountd nkmc does not know of: replace it.
            mounts::detach(&dir)?;
        } else {
            bail!("{} already has a {} file system mounted; choose another mount point", dir.display(), m.fstype);
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create the mount point {}", dir.display()))?;
    let log_path = ctx.paths.data_dir.join(format!("mountd{}.log", dir.to_string_lossy().replace('/', "_")));
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    let mut mountd = Command::new(binary("mountd"));
    match token {
        Some(t) => mountd.env("NKMC_TOKEN", t),
        None => mountd.env_remove("NKMC_TOKEN"),
    };
    let timeout_ms = (ctx.config.upstream.timeout() + Duration::from_secs(5)).as_millis().to_string();
    let mut child = mountd
        .arg(&dir)
        .arg("--socket")
        .arg(&ctx.paths.socket)
        .arg("--timeout-ms")
        .arg(timeout_ms)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("cannot start mountd (is it installed next to nkmc or on PATH?)")?;
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if mounts::is_nkmc_mount(&dir) && std::fs::read_dir(&dir).is_ok() {
            break;
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "mountd exited ({status}) before the mount answered; its log ({}) ends with:\n{}",
                log_path.display(),
                log_tail(&log_path)
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "the mount at {} did not answer within {START_DEADLINE:?}; see {}",
                dir.display(),
                log_path.display()
            );
        }
        tokio::time::sleep(POLL).await;
    }
    let pid = i32::try_from(child.id()).context("mountd's pid")?;
    mounts::save(&ctx.paths.mounts_dir(), &MountRecord { pid, mountpoint: dir })?;
    Ok(())
}

/// Asks a mountd to unmount and waits for it; detaches the mount if it will not go.
async fn stop_mount(ctx: &Ctx, rec: &MountRecord) -> anyhow::Result<()> {
    if mounts::alive(rec.pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(rec.pid), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + STOP_DEADLINE;
        while mounts::alive(rec.pid) && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
    }
    if mounts::is_nkmc_mount(&rec.mountpoint) {
        mounts::detach(&rec.mountpoint)?;
    }
    mounts::forget(&ctx.paths.mounts_dir(), &rec.mountpoint);
    Ok(())
}

pub async fn up(ctx: &Ctx, mount: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    ensure_gateway(ctx).await?;
    let dir = mount.unwrap_or_else(|| ctx.paths.mount.clone());
    start_mount(ctx, &dir, crate::token::current_token(ctx)).await?;
    println!("{}", std::path::absolute(&dir)?.display());
    Ok(ExitCode::SUCCESS)
}

pub async fn mount(ctx: &Ctx, dir: &Path, token: Option<String>) -> anyhow::Result<ExitCode> {
    ensure_gateway(ctx).await?;
    let token = match token.as_deref() {
        Some("-") => {
            let mut t = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut t).context("cannot read the token from stdin")?;
            Some(t.trim().to_owned())
        }
        Some(t) => Some(t.to_owned()),
        None => crate::token::current_token(ctx),
    };
    start_mount(ctx, dir, token).await?;
    println!("{}", std::path::absolute(dir)?.display());
    Ok(ExitCode::SUCCESS)
}

pub async fn umount(ctx: &Ctx, dir: &Path) -> anyhow::Result<ExitCode> {
    let dir = std::path::absolute(dir)?;
    match mounts::find(&ctx.paths.mounts_dir(), &dir) {
        Some(rec) => stop_mount(ctx, &rec).await?,
        None if mounts::is_stale(&dir) || mounts::is_nkmc_mount(&dir) => mounts::detach(&dir)?,
        None => bail!("{} is not an nkmc mount (`nkmc gateway status` lists the mounts nkmc started)", dir.display()),
    }
    println!("unmounted {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

pub async fn down(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    for rec in mounts::all(&ctx.paths.mounts_dir()) {
        stop_mount(ctx, &rec).await?;
        println!("unmounted {}", rec.mountpoint.display());
    }
    gateway_stop(ctx).await
}
