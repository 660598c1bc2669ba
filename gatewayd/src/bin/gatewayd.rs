//! `gatewayd`: the nkmc gateway daemon.

use anyhow::Context;
use clap::Parser;
use gatewayd::config::{Config, Paths};

/// The nkmc gateway daemon: vault, registry and outbound calls behind a Unix socket.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Data directory (default: $NKMC_DATA_DIR or ~/.local/share/nkmc).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Socket path (default: $NKMC_SOCKET or $XDG_RUNTIME_DIR/nkmc/gatewayd.sock).
    #[arg(long)]
    socket: Option<std::path::PathBuf>,
    /// Also run a coordinator: a directory of online gateways on the TCP listener
    /// (`[federation] coordinator = true`).
    #[arg(long)]
    coordinator: bool,
    /// Register with this coordinator and heartbeat (`[federation] coordinator_url`).
    #[arg(long)]
    coordinator_url: Option<String>,
    /// The URL peers reach this gateway at (`[federation] public_url`).
    #[arg(long)]
    public_url: Option<String>,
    /// Publish the TCP listener through a tunnel (cloudflared; `[federation] tunnel = true`).
    #[arg(long)]
    tunnel: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    agentfs::panic::install_quiet_hook("gatewayd");
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NKMC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    // Before any key is loaded: no core file, no ptrace by same-uid processes.
    gatewayd::hardening::forbid_core_dumps().context("gatewayd: cannot forbid core dumps (setrlimit, prctl)")?;
    let mut paths = Paths::from_env()?;
    if let Some(d) = args.data_dir {
        paths.data_dir = std::path::absolute(d)?;
    }
    if let Some(s) = args.socket {
        paths.socket = std::path::absolute(s)?;
    }
    let mut config = Config::load(&paths.config_file)?;
    config.federation.coordinator |= args.coordinator;
    if args.coordinator_url.is_some() {
        config.federation.coordinator_url = args.coordinator_url;
    }
    if args.public_url.is_some() {
        config.federation.public_url = args.public_url;
    }
    config.federation.tunnel |= args.tunnel;
    // One worker thread unless TOKIO_WORKER_THREADS says otherwise: a request's task does
    // all of its work (its upstream connection is driven in it, upstream/client.rs), and a
    // second worker only adds wake-ups and migrations between threads (doc/BENCHMARKS.md,
    // rows e and a3); blocking work (audit reads, re-encryption) goes to the blocking pool,
    // the audit's writes to a thread of their own.
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        rt.worker_threads(1);
    }
    let rt = rt.enable_all().build().context("gatewayd: cannot start the runtime")?;
    rt.block_on(async {
        let gw = gatewayd::Gateway::open(paths.clone(), config)?;
        let listener = gatewayd::api::socket::bind(&paths.socket)?;
        let tcp = listen_tcp(&gw).await?;
        if gw.config.federation.tunnel {
            let command =
                gw.config.federation.tunnel_command.clone().unwrap_or_else(|| std::path::PathBuf::from("cloudflared"));
            gatewayd::federation::tunnel::open(&gw, &command, gw.tcp_addr())?;
        }
        tracing::info!(
            socket = %paths.socket.display(),
            tcp = %gw.tcp_addr().map_or_else(|| "off".to_owned(), |a| a.to_string()),
            data_dir = %paths.data_dir.display(),
            services = gw.registry().len(),
            "gatewayd ready"
        );
        // Peers: tell each what we lend it and learn what it lends us, now and every minute.
        let peers = gw.clone();
        tokio::spawn(async move {
            loop {
                gatewayd::api::heartbeat_to_coordinator(&peers).await;
                gatewayd::api::announce_all(&peers).await;
                gatewayd::federation::borrow::refresh_all(&peers).await;
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            }
        });
        gatewayd::api::serve(gw.clone(), gatewayd::api::socket::OwnerOnly::new(listener), tcp).await?;
        gw.audit.flush();
        let _ = std::fs::remove_file(&paths.socket);
        tracing::info!("gatewayd stopped");
        Ok(())
    })
}

/// The TCP listener for the agent API, where `[tcp]`, `NKMC_HOST` and `NKMC_PORT` say. The
/// built-in default (127.0.0.1:9090) being taken is a warning; an address the user chose
/// that cannot be bound stops gatewayd.
async fn listen_tcp(gw: &gatewayd::Gateway) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let Some(listen) = gw.config.tcp.from_env()? else {
        tracing::info!("tcp: the agent API over TCP is off");
        return Ok(None);
    };
    match gatewayd::api::tcp::bind(&listen).await {
        Ok(listener) => {
            let addr = listener.local_addr().context("gatewayd: the TCP listener has no address")?;
            if gatewayd::api::tcp::is_public(&addr) {
                tracing::warn!(%addr, "tcp: the agent API listens beyond loopback; every request needs a token");
            }
            gw.set_tcp_addr(addr);
            Ok(Some(listener))
        }
        Err(e) if !listen.explicit => {
            tracing::warn!(error = %e, "tcp: running without the agent API over TCP");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}
