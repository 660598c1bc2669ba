//! Where nkmc keeps its files, and its tunables.
//!
//! Defaults follow DESIGN ("Files and folders on disk"): data in `~/.local/share/nkmc`
//! (`NKMC_DATA_DIR`), config in `~/.config/nkmc/config.toml` (`NKMC_CONFIG`), socket in
//! `$XDG_RUNTIME_DIR/nkmc/gatewayd.sock` (`NKMC_SOCKET`). When `NKMC_DATA_DIR` is set and
//! `NKMC_SOCKET` is not, the socket lives under the data dir (`run/gatewayd.sock`), so two
//! gateways with different data dirs never share a socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No home directory to derive defaults from.
    #[error("config: cannot find a home directory; set NKMC_DATA_DIR")]
    NoHome,
    /// The config file exists but cannot be read.
    #[error("config: cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The config file is not valid.
    #[error("config: {path} is invalid: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The files and folders nkmc uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The data directory (database, master key, logs, run state).
    pub data_dir: PathBuf,
    /// gatewayd's Unix socket.
    pub socket: PathBuf,
    /// The config file (may not exist).
    pub config_file: PathBuf,
    /// The default mount point.
    pub mount: PathBuf,
}

impl Paths {
    /// Paths from the environment, falling back to DESIGN's defaults.
    pub fn from_env() -> Result<Self, ConfigError> {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let explicit_data = var("NKMC_DATA_DIR");
        let data_dir = match &explicit_data {
            Some(d) => absolute(d),
            None => dirs::data_dir().ok_or(ConfigError::NoHome)?.join("nkmc"),
        };
        let socket = match var("NKMC_SOCKET") {
            Some(s) => absolute(&s),
            None => match (&explicit_data, dirs::runtime_dir()) {
                (None, Some(rt)) => rt.join("nkmc").join("gatewayd.sock"),
                _ => data_dir.join("run").join("gatewayd.sock"),
            },
        };
        let config_file = match var("NKMC_CONFIG") {
            Some(c) => absolute(&c),
            None => dirs::config_dir().ok_or(ConfigError::NoHome)?.join("nkmc").join("config.toml"),
        };
        let mount = match var("NKMC_MOUNT") {
            Some(m) => absolute(&m),
            None if nix::unistd::geteuid().is_root() => PathBuf::from("/mnt/nkmc"),
            None => dirs::home_dir().ok_or(ConfigError::NoHome)?.join("nkmc"),
        };
        Ok(Paths { data_dir, socket, config_file, mount })
    }

    /// The SQLite database.
    pub fn database(&self) -> PathBuf {
        self.data_dir.join("nkmc.db")
    }

    /// The master-key file.
    pub fn master_key(&self) -> PathBuf {
        self.data_dir.join("master.key")
    }

    /// The lock that keeps a second gatewayd off this data dir.
    pub fn lock_file(&self) -> PathBuf {
        self.data_dir.join("gatewayd.lock")
    }

    /// gatewayd's log when started by `nkmc`.
    pub fn gatewayd_log(&self) -> PathBuf {
        self.data_dir.join("gatewayd.log")
    }

    /// Where `nkmc` records the mounts it started.
    pub fn mounts_dir(&self) -> PathBuf {
        self.data_dir.join("run").join("mounts")
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Tunables from `config.toml`; every field has a default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Outbound calls.
    pub upstream: UpstreamConfig,
    /// The agent API over TCP.
    pub tcp: TcpConfig,
    /// The vault.
    pub vault: VaultConfig,
    /// `nkmc run`: tools, timeouts, output cap.
    pub run: crate::run::tools::RunConfig,
    /// Federation discovery.
    pub federation: FederationConfig,
    /// x402 payments: the facilitator, the payee, the asset (`[payments]`).
    pub payments: crate::payments::config::PaymentsConfig,
}

/// `[federation]`: discovery through a coordinator.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    /// Run the coordinator's directory on this gateway's TCP listener (`gatewayd --coordinator`).
    pub coordinator: bool,
    /// Register with this coordinator and heartbeat (`gatewayd --coordinator-url`).
    pub coordinator_url: Option<String>,
    /// The URL peers reach this gateway's TCP API at (default: the tunnel's address when
    /// there is one, else `http://` + its TCP address).
    pub public_url: Option<String>,
    /// Publish the TCP listener through a tunnel provider (`gatewayd --tunnel`).
    pub tunnel: bool,
    /// The provider's program: `cloudflared` (on PATH) unless set.
    pub tunnel_command: Option<std::path::PathBuf>,
}

/// `[vault]`: how keys are sealed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// The AEAD new keys are sealed with: `aes-256-gcm` (default) or `xchacha20-poly1305`.
    /// Keys sealed with either decrypt whatever this says.
    pub cipher: crate::vault::Cipher,
    /// Origins besides a service's own where an OAuth2 client secret may be sent to fetch
    /// an access token (`["https://auth.example.com"]`).
    pub oauth2_token_origins: Vec<String>,
}

/// `[tcp]`: the agent subset of the API over TCP (`Authorization: Bearer <token>` on every
/// request but the health checks). `NKMC_HOST` and `NKMC_PORT` override the file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpConfig {
    /// Whether to listen at all.
    pub enabled: bool,
    /// The address or host name to bind.
    pub host: String,
    /// The port (0: any free port, shown by `nkmc gateway status`).
    pub port: u16,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig { enabled: true, host: "127.0.0.1".to_owned(), port: 9090 }
    }
}

/// Where the TCP listener binds, once the file and the environment are combined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpListen {
    /// The address or host name.
    pub host: String,
    /// The port.
    pub port: u16,
    /// Whether the user asked for this address (file or environment): then a failure to bind
    /// stops gatewayd; the built-in default only logs a warning and runs without TCP.
    pub explicit: bool,
}

impl TcpConfig {
    /// The listener to start, given `NKMC_HOST` and `NKMC_PORT` (`off` disables TCP);
    /// `None` when TCP is disabled.
    pub fn resolve(&self, host: Option<&str>, port: Option<&str>) -> Result<Option<TcpListen>, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid { path: PathBuf::from("NKMC_PORT"), message };
        let port = match port.map(str::trim).filter(|p| !p.is_empty()) {
            Some("off" | "none" | "disabled") => return Ok(None),
            Some(p) => Some(p.parse::<u16>().map_err(|_| {
                invalid(format!("`{p}` is not a port number (0-65535), or `off` to disable the TCP listener"))
            })?),
            None => None,
        };
        let host = host.map(str::trim).filter(|h| !h.is_empty());
        if port.is_none() && host.is_none() && !self.enabled {
            return Ok(None);
        }
        let explicit = port.is_some() || host.is_some() || *self != TcpConfig::default();
        Ok(Some(TcpListen { host: host.unwrap_or(&self.host).to_owned(), port: port.unwrap_or(self.port), explicit }))
    }

    /// [`TcpConfig::resolve`] with the process environment.
    pub fn from_env(&self) -> Result<Option<TcpListen>, ConfigError> {
        let host = std::env::var("NKMC_HOST").ok();
        let port = std::env::var("NKMC_PORT").ok();
        self.resolve(host.as_deref(), port.as_deref())
    }
}

/// `[upstream]`: outbound HTTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Whole-request deadline, in milliseconds.
    pub timeout_ms: u64,
    /// TCP/TLS connect deadline, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Largest response body passed on, in bytes.
    pub max_body_bytes: u64,
    /// Retries of an idempotent call (GET, PUT, DELETE) answered 429, 502, 503 or 504.
    pub max_retries: u32,
    /// Longest wait between retries, in milliseconds, whatever `Retry-After` asks.
    pub retry_after_cap_ms: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            timeout_ms: 30_000,
            connect_timeout_ms: 5_000,
            max_body_bytes: 64 * 1024 * 1024,
            max_retries: 2,
            retry_after_cap_ms: 5_000,
        }
    }
}

impl UpstreamConfig {
    /// The whole-request deadline.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The longest wait between retries.
    pub fn retry_after_cap(&self) -> Duration {
        Duration::from_millis(self.retry_after_cap_ms)
    }
}

impl Config {
    /// Reads the config file; a missing file means defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => return Err(ConfigError::Read { path: path.to_path_buf(), source }),
        };
        let config: Config = toml::from_str(&text)
            .map_err(|e| ConfigError::Invalid { path: path.to_path_buf(), message: e.to_string() })?;
        config
            .payments
            .validate()
            .map_err(|e| ConfigError::Invalid { path: path.to_path_buf(), message: e.to_string() })?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_strictness() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Config::load(&dir.path().join("none.toml")).unwrap();
        assert_eq!(missing.upstream.timeout_ms, 30_000);
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[upstream]\ntimeout_ms = 1500\n").unwrap();
        assert_eq!(Config::load(&f).unwrap().upstream.timeout(), Duration::from_millis(1500));
        std::fs::write(&f, "[vault]\ncipher = \"xchacha20-poly1305\"\n").unwrap();
        assert_eq!(Config::load(&f).unwrap().vault.cipher, crate::vault::Cipher::XChaCha20Poly1305);
        std::fs::write(&f, "[vault]\ncipher = \"rot13\"\n").unwrap();
        let err = Config::load(&f).unwrap_err().to_string();
        assert!(err.contains("aes-256-gcm"), "{err}");
        std::fs::write(&f, "[payments]\nnetwork = \"moon\"\n").unwrap();
        let err = Config::load(&f).unwrap_err().to_string();
        assert!(err.contains("[payments] network `moon`"), "{err}");
        std::fs::write(&f, "[payments]\nnetwork = \"base\"\n").unwrap();
        let err = Config::load(&f).unwrap_err().to_string();
        assert!(err.contains("needs its own asset"), "{err}");
        std::fs::write(&f, "[payments]\npay_to = \"0x12\"\n").unwrap();
        let err = Config::load(&f).unwrap_err().to_string();
        assert!(err.contains("pay_to"), "{err}");
        std::fs::write(&f, "[upstream]\ntimeout = 1\n").unwrap();
        let err = Config::load(&f).unwrap_err().to_string();
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn tcp_listener_from_file_and_environment() {
        let default = TcpConfig::default();
        let listen = default.resolve(None, None).unwrap().unwrap();
        assert_eq!((listen.host.as_str(), listen.port, listen.explicit), ("127.0.0.1", 9090, false));
        let listen = default.resolve(Some("0.0.0.0"), Some("0")).unwrap().unwrap();
        assert_eq!((listen.host.as_str(), listen.port, listen.explicit), ("0.0.0.0", 0, true));
        assert_eq!(default.resolve(None, Some("off")).unwrap(), None);
        let err = default.resolve(None, Some("http")).unwrap_err().to_string();
        assert!(err.contains("not a port number"), "{err}");
        let disabled = TcpConfig { enabled: false, ..TcpConfig::default() };
        assert_eq!(disabled.resolve(None, None).unwrap(), None);
        assert!(disabled.resolve(None, Some("9191")).unwrap().is_some(), "the environment wins over the file");
        let from_file = TcpConfig { port: 9191, ..TcpConfig::default() };
        assert!(from_file.resolve(None, None).unwrap().unwrap().explicit);
    }
}
