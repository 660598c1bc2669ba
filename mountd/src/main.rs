//! `mountd`: the nkmc FUSE daemon. Kernel file operations become requests to gatewayd.

mod fs;
mod fuse;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use fuser::{Config, MountOption};

/// Mounts the gateway's tree at MOUNTPOINT until SIGTERM, SIGINT or an unmount.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Where to mount (an existing, empty directory).
    mountpoint: PathBuf,
    /// gatewayd's socket.
    #[arg(long)]
    socket: PathBuf,
    /// Give up on a gatewayd call after this many milliseconds.
    #[arg(long, default_value_t = 35_000)]
    timeout_ms: u64,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Seconds a fetched body serves later opens of the same file without a request.
    #[arg(long, default_value_t = 2.0)]
    cache_ttl: f64,
    /// Fetch on every open (the same as --cache-ttl 0).
    #[arg(long)]
    no_cache: bool,
    /// Most bytes of bodies kept in the cache.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    cache_bytes: usize,
    /// Most requests that may reach the upstream (reads, listings, writes, removals) in
    /// flight at once; more wait for a slot. Lookups, answered by gatewayd alone, take none.
    #[arg(long, default_value_t = 16)]
    max_inflight: usize,
    /// Bodies larger than this many bytes are kept in an unlinked temporary file (under
    /// TMPDIR) instead of memory.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    spill_bytes: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    agentfs::panic::install_quiet_hook("mountd");
    // The agent token comes in the environment (never argv, which `ps` shows) and leaves it
    // before any thread starts.
    let token = std::env::var("NKMC_TOKEN").ok();
    std::env::remove_var("NKMC_TOKEN");
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NKMC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    // One worker: the async side only waits on gatewayd (the FUSE threads do the rest), and
    // a single worker saves the wake-ups between workers that a fetch's tasks (the request,
    // hyper's connection, the reply) otherwise cross: a cold open 20 µs sooner, `grep -r`
    // over 1,000 cold files about a tenth faster, and less memory.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("mountd: cannot start the runtime")?;
    let client =
        agentfs::client::GatewayClient::new(&args.socket, Duration::from_millis(args.timeout_ms)).with_token(token);
    let ttl = if args.no_cache { Duration::ZERO } else { Duration::try_from_secs_f64(args.cache_ttl)? };
    let cache = fs::cache::ContentCache::new(ttl, args.cache_bytes, Box::new(fs::cache::SystemClock));
    let limits = fs::Limits { max_inflight: args.max_inflight.max(1), spill_bytes: args.spill_bytes };
    let filesystem = Arc::new(fs::Fs::new(client, cache, limits));
    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();
    let notifier = Arc::new(std::sync::OnceLock::new());
    let adapter = fuse::NkmcFuse::new(filesystem, rt.handle().clone(), uid, gid, notifier.clone(), ttl);

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("nkmc".into()),
        MountOption::Subtype("nkmc".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoExec,
        MountOption::NoAtime,
    ];
    config.n_threads = Some(args.threads.max(1));
    let session = fuser::spawn_mount(adapter, &args.mountpoint, &config)
        .with_context(|| format!("mountd: cannot mount at {}", args.mountpoint.display()))?;
    let _ = notifier.set(session.notifier());
    tracing::info!(mountpoint = %args.mountpoint.display(), socket = %args.socket.display(), "mounted");

    let externally_unmounted = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = term.recv() => return Ok::<bool, std::io::Error>(false),
                _ = tokio::signal::ctrl_c() => return Ok(false),
                _ = tick.tick() => if session.guard.is_finished() { return Ok(true) },
            }
        }
    })?;
    if externally_unmounted {
        tracing::info!("the file system was unmounted; exiting");
        session.join().context("mountd: the FUSE session failed")?;
    } else {
        tracing::info!("unmounting");
        session.umount_and_join().context("mountd: unmount failed")?;
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}
