//! Federation: gateways lend and borrow API access under rules, and keys never move.
//!
//! - [`sign`]: HMAC-SHA256 signatures of every peer message and answer, the time window and
//!   the replay cache.
//! - [`rules`]: what this gateway lends, to whom, for which operations, at what price and rate.
//! - [`identity`], [`peers`]: who we are, whom we know; [`held`]: the peers and rules tables
//!   held in memory between writes.
//! - [`protocol`]: the messages; [`client`]: a signed call and its verified answer.
//! - [`lend`]: answering a peer; [`borrow`]: asking peers, borrowed services.

pub mod borrow;
pub mod client;
pub mod coordinator;
pub mod frames;
pub mod held;
pub mod identity;
pub mod latency;
pub mod lend;
pub mod peers;
pub mod protocol;
pub mod rules;
pub mod sign;
pub mod tunnel;

/// Why a federation step failed.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// The database failed.
    #[error("federation: database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The peers table failed.
    #[error(transparent)]
    Peers(#[from] peers::PeerError),
    /// The rules failed.
    #[error(transparent)]
    Rules(#[from] rules::RuleError),
    /// The vault failed.
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultError),
    /// A call to a peer failed.
    #[error(transparent)]
    Call(#[from] client::PeerCallError),
    /// No such peer, or no secret for it.
    #[error("federation: no peer `{0}`; add it with `nkmc peers add`")]
    UnknownPeer(String),
    /// The peer refused.
    #[error("federation: peer {peer} refused (HTTP {status})")]
    Refused {
        /// The peer.
        peer: String,
        /// Its status.
        status: u16,
    },
    /// A message that does not follow the protocol.
    #[error("federation: {0}")]
    Protocol(String),
}

/// The federation state a gateway keeps in memory.
#[derive(Debug)]
pub struct Federation {
    /// Signed calls to peers.
    pub client: client::PeerClient,
    /// Nonces seen from peers (replay protection).
    pub nonces: sign::NonceCache,
    /// Request rates per peer and domain.
    pub rates: rules::RateLimiter,
    /// One heartbeat to the coordinator at a time, so a later one (with a newer public URL)
    /// is never overtaken by an earlier one.
    pub heartbeat: tokio::sync::Mutex<()>,
    /// The peers and rules tables, held between writes.
    pub tables: held::HeldTables,
    /// Each peer's status as last written.
    pub statuses: peers::StatusBook,
    /// How fast each peer answers.
    pub latency: latency::Latency,
    /// Payments being served and money being paid (x402).
    pub payments: crate::payments::Payments,
}

impl Federation {
    /// With the upstream timeouts and answer cap.
    pub fn new(config: &crate::config::UpstreamConfig) -> Self {
        Federation {
            client: client::PeerClient::new(
                config.timeout(),
                std::time::Duration::from_millis(config.connect_timeout_ms),
                config.max_body_bytes,
            ),
            nonces: sign::NonceCache::default(),
            rates: rules::RateLimiter::default(),
            heartbeat: tokio::sync::Mutex::new(()),
            tables: held::HeldTables::default(),
            statuses: peers::StatusBook::default(),
            latency: latency::Latency::default(),
            payments: crate::payments::Payments::default(),
        }
    }
}
