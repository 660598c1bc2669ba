//! The gateway's state: database, vault, registry, outbound client.

use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use rusqlite::Connection;
use tokio::sync::Notify;

use crate::audit::{AuditError, AuditLog, SystemClock};
use crate::auth::{AuthError, Authority};
use crate::config::{Config, Paths};
use crate::db::{self, DbError, InstanceLock};
use crate::registry::{Registry, RegistryError};
use crate::upstream::Upstream;
use crate::vault::{Vault, VaultError};

/// Why gatewayd could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory cannot be created.
    #[error("gatewayd: cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The vault failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The registry failed to load.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The HTTP client could not be built.
    #[error("gatewayd: cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// The audit log could not be opened.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The token root key or the revocation list could not be loaded.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The gateway's federation identity is invalid.
    #[error(transparent)]
    Identity(#[from] crate::federation::identity::IdentityError),
    /// The `[run]` tool configuration is not usable.
    #[error(transparent)]
    Tools(#[from] crate::run::tools::ToolConfigError),
}

/// Everything the API handlers share.
#[derive(Debug)]
pub struct Gateway {
    /// Where things live.
    pub paths: Paths,
    /// Tunables.
    pub config: Config,
    /// Outbound HTTP.
    pub upstream: Upstream,
    /// The vault.
    pub vault: Vault,
    /// OAuth2 access tokens fetched with stored client credentials.
    pub oauth2: crate::oauth2::TokenCache,
    /// The audit log (its records are in the database).
    pub audit: AuditLog,
    /// Agent tokens: the root key pair (`biscuit.key`, created on first run) and the
    /// revocation list.
    pub auth: Authority,
    /// Who this gateway is to its peers.
    pub identity: crate::federation::identity::Identity,
    /// Peer calls, replay cache, lending rates.
    pub federation: crate::federation::Federation,
    /// The directory of online gateways, when this one is a coordinator.
    pub directory: Option<crate::federation::coordinator::Directory>,
    /// The tools of `nkmc run`, their binaries resolved at start.
    pub tools: crate::run::tools::Tools,
    /// The runs under way (stopped at shutdown).
    pub runs: crate::run::Runs,
    db: Mutex<Connection>,
    registry: RwLock<Registry>,
    started: Instant,
    tcp_addr: std::sync::OnceLock<std::net::SocketAddr>,
    tunnel_url: Mutex<Option<String>>,
    shutdown: Notify,
    _lock: InstanceLock,
}

impl Gateway {
    /// Opens the data dir: lock, database, vault, registry.
    pub fn open(paths: Paths, config: Config) -> Result<Arc<Self>, StartError> {
        create_private_dir(&paths.data_dir)?;
        let lock = db::lock_instance(&paths.lock_file(), &paths.data_dir)?;
        let conn = db::open(&paths.database())?;
        let vault = Vault::open(&paths.master_key(), config.vault.cipher, &conn)?;
        let private_hosts = crate::ssrf::PrivateHosts::default();
        let registry = Registry::load(&conn, private_hosts.clone())?;
        let audit = AuditLog::open(&conn, paths.data_dir.join(crate::audit::ANCHOR_FILE), Box::new(SystemClock))?;
        // The WAL is checkpointed by the audit's writer thread (its connection commits nearly
        // every write), never inside a commit on this connection, whose mutex requests take.
        conn.pragma_update(None, "wal_autocheckpoint", 0).map_err(crate::db::DbError::from)?;
        let upstream = Upstream::new(config.upstream.clone(), private_hosts)?;
        let auth = Authority::open(&paths.data_dir, &conn)?;
        let identity = crate::federation::identity::settle(
            &conn,
            std::env::var("NKMC_GATEWAY_ID").ok().as_deref(),
            std::env::var("NKMC_GATEWAY_NAME").ok().as_deref(),
            || crate::federation::sign::nonce().chars().take(16).collect(),
            || std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned()),
        )?;
        let tools = crate::run::tools::Tools::resolve(&config.run)?;
        let run_slots = config.run.max_concurrent;
        let federation = crate::federation::Federation::new(&config.upstream);
        let directory = config.federation.coordinator.then(Default::default);
        Ok(Arc::new(Gateway {
            paths,
            config,
            upstream,
            vault,
            oauth2: crate::oauth2::TokenCache::new(Box::new(SystemClock)),
            audit,
            auth,
            identity,
            directory,
            federation,
            tools,
            runs: crate::run::Runs::new(run_slots),
            db: Mutex::new(conn),
            registry: RwLock::new(registry),
            started: Instant::now(),
            tcp_addr: std::sync::OnceLock::new(),
            tunnel_url: Mutex::new(None),
            shutdown: Notify::new(),
            _lock: lock,
        }))
    }

    /// The database connection (short, synchronous uses only).
    pub fn db(&self) -> MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The registry, for reading.
    pub fn registry(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The registry, for changing.
    pub fn registry_mut(&self) -> RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Time since start.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Records the tunnel's public address (`None`: the tunnel is down).
    pub fn set_tunnel_url(&self, url: Option<String>) {
        *self.tunnel_url.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = url;
    }

    /// The URL peers reach this gateway at: `[federation] public_url`, else the tunnel's
    /// address while it is up, else `http://` + the TCP listener's address.
    pub fn public_url(&self) -> Option<String> {
        if let Some(u) = &self.config.federation.public_url {
            return Some(u.clone());
        }
        let tunnel = self.tunnel_url.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        tunnel.or_else(|| self.tcp_addr().map(|a| format!("http://{a}")))
    }

    /// Records where the agent API listens over TCP (once, at start).
    pub fn set_tcp_addr(&self, addr: std::net::SocketAddr) {
        let _ = self.tcp_addr.set(addr);
    }

    /// Where the agent API listens over TCP, if it does.
    pub fn tcp_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp_addr.get().copied()
    }

    /// Whether gatewayd can serve: the database answers and the audit log accepts records.
    /// The reason when not, without any secret or path of the caller's.
    pub fn readiness(&self) -> Result<(), String> {
        if let Err(e) = self.db().query_row("SELECT 1", [], |r| r.get::<_, i64>(0)) {
            return Err(format!("gatewayd: the database does not answer: {e}"));
        }
        if self.audit.is_failing() {
            return Err("gatewayd: the audit log cannot be written; operations are refused until it can".to_owned());
        }
        Ok(())
    }

    /// Asks the server to stop.
    pub fn request_shutdown(&self) {
        self.shutdown.notify_one();
    }

    /// Resolves when a shutdown was requested.
    pub async fn shutdown_requested(&self) {
        self.shutdown.notified().await;
    }
}

/// Creates `dir` (and parents) with mode 0700 when missing.
pub fn create_private_dir(dir: &std::path::Path) -> Result<(), StartError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StartError::DataDir { path: dir.to_path_buf(), source })
}
