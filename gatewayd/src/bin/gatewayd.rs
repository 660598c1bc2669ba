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
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NKMC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let mut paths = Paths::from_env()?;
    if let Some(d) = args.data_dir {
        paths.data_dir = std::path::absolute(d)?;
    }
    if let Some(s) = args.socket {
        paths.socket = std::path::absolute(s)?;
    }
    let config = Config::load(&paths.config_file)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("gatewayd: cannot start the runtime")?;
    rt.block_on(async {
        let gw = gatewayd::Gateway::open(paths.clone(), config)?;
        let listener = gatewayd::api::socket::bind(&paths.socket)?;
        tracing::info!(socket = %paths.socket.display(), data_dir = %paths.data_dir.display(), services = gw.registry().len(), "gatewayd ready");
        gatewayd::api::serve(gw.clone(), gatewayd::api::socket::OwnerOnly::new(listener)).await?;
        gw.audit.flush();
        let _ = std::fs::remove_file(&paths.socket);
        tracing::info!("gatewayd stopped");
        Ok(())
    })
}
