//! gatewayd: the only place where secrets exist.
//!
//! - [`config`]: where things live on disk and the tunables.
//! - [`db`]: the SQLite database (WAL, versioned migrations) and the single-instance lock.
//! - [`vault`]: the master key and the encrypted credentials.
//! - [`discovery`]: finding a document from a URL (`nkmc register --url`).
//! - [`registry`]: registered services, their specs and trees.
//! - [`ssrf`]: which addresses outbound calls may reach.
//! - [`timefmt`]: calendar dates for the times nkmc prints.
//! - [`upstream`]: outbound HTTP with credential injection.
//! - [`oauth2`]: OAuth2 client-credentials exchanges and their access-token cache.
//! - [`ops`]: the file-system operations (stat, list, read) as plain async logic.
//! - [`api`]: the HTTP/1.1 + JSON API on the Unix socket.
//! - [`audit`]: the hash-chained audit log of every operation, and its verification.
//! - [`run`]: `nkmc run`: existing CLIs with their credential injected, output masked.
//! - [`hardening`]: no core dumps, not dumpable.
//! - [`auth`]: agent tokens (biscuit): the root key, minting, attenuation, authorization, revocation.

pub mod api;
pub mod audit;
pub mod auth;
pub mod config;
pub mod db;
pub mod discovery;
pub mod federation;
pub mod gateway;
pub mod grep;
pub mod hardening;
pub mod oauth2;
pub mod ops;
pub mod payments;
pub mod registry;
pub mod run;
pub mod ssrf;
#[cfg(test)]
mod testing;
pub mod timefmt;
pub mod upstream;
pub mod vault;

pub use gateway::Gateway;
