//! Publishing this gateway through a tunnel provider: `cloudflared tunnel --url` (a Cloudflare
//! quick tunnel) forwards a public `https://….trycloudflare.com` address to the TCP listener,
//! and that address becomes the gateway's public URL (shown by `nkmc gateway status`, sent to
//! the coordinator). The tunnel process lives as long as gatewayd: it is killed when gatewayd
//! stops, and if it dies first the public URL is forgotten.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::Gateway;

/// How long the provider may take to print its public address.
const URL_DEADLINE: Duration = Duration::from_secs(45);

/// Why the tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The provider's program could not be started.
    #[error("tunnel: cannot start `{command}` ({source}); install cloudflared (https://developers.cloudflare.com/cloudflare-one/connections/connect-networks/downloads/) or set [federation] tunnel_command, or publish the gateway yourself with [federation] public_url")]
    Spawn {
        /// The program.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// There is no TCP listener to publish.
    #[error("tunnel: the agent API over TCP is off, so there is nothing to publish; enable [tcp] (or NKMC_PORT)")]
    NoListener,
}

/// The public address in one line of the provider's output, if there is one.
pub fn public_url_in(line: &str) -> Option<&str> {
    let start = line.find("https://")?;
    let rest = &line[start..];
    let end = rest.find(|c: char| c.is_whitespace() || c == '|').unwrap_or(rest.len());
    let url = &rest[..end];
    let host = url.strip_prefix("https://")?.trim_end_matches('/');
    let ok = host.ends_with(".trycloudflare.com")
        && host.len() > ".trycloudflare.com".len()
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    ok.then_some(url.trim_end_matches('/'))
}

/// Starts the provider for `local` (the TCP listener): the program starts now (an error
/// if it cannot); its public address is read in the background and set on `gw`, which then
/// heartbeats to its coordinator with it.
pub fn open(gw: &Arc<Gateway>, command: &Path, local: Option<SocketAddr>) -> Result<(), TunnelError> {
    let local = local.ok_or(TunnelError::NoListener)?;
    tracing::warn!(
        "tunnel: publishing the whole TCP listener: the agent API (every request needs a token) and the peer protocol (signed)"
    );
    let mut child: Child = Command::new(command)
        .args(["tunnel", "--no-autoupdate", "--url", &format!("http://{local}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| TunnelError::Spawn { command: command.display().to_string(), source })?;
    let stderr = child.stderr.take();
    let gw = gw.clone();
    tokio::spawn(async move {
        let Some(stderr) = stderr else { return };
        let mut lines = BufReader::new(stderr).lines();
        let found = tokio::time::timeout(URL_DEADLINE, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = public_url_in(&line) {
                    return Some(url.to_owned());
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(url)) => {
                tracing::info!(%url, "tunnel: the gateway is published");
                gw.set_tunnel_url(Some(url));
                crate::api::heartbeat_to_coordinator(&gw).await;
            }
            Ok(None) => tracing::error!("tunnel: the provider exited without a public address"),
            Err(_) => tracing::error!(secs = URL_DEADLINE.as_secs(), "tunnel: no public address in time"),
        }
        // Keep reading (a full pipe would stall the provider) until it exits or gatewayd
        // stops (the child is killed with this task).
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::debug!(line, "tunnel");
        }
        let status = child.wait().await;
        gw.set_tunnel_url(None);
        tracing::warn!(?status, "tunnel: the provider exited; the gateway is no longer published");
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_address_is_found_in_cloudflared_s_banner_only() {
        let banner = "2026-11-23T10:00:00Z INF |  https://quiet-fox-sits-here.trycloudflare.com                                  |";
        assert_eq!(public_url_in(banner), Some("https://quiet-fox-sits-here.trycloudflare.com"));
        for other in [
            "2026-11-23T10:00:00Z INF Requesting new quick Tunnel on trycloudflare.com...",
            "INF see https://developers.cloudflare.com/ for more",
            "https://.trycloudflare.com",
            "https://evil.com/x.trycloudflare.com",
        ] {
            assert_eq!(public_url_in(other), None, "{other}");
        }
    }
}
