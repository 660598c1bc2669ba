//! The peers and rules tables held in memory between writes. Every federated call reads
//! them (the lender: the sender and the rules; the borrower: the peer's URL); parsing them
//! from SQLite on each call cost more instructions than the call's own signing.
//!
//! A copy stays valid while the main connection's change counter
//! (`sqlite3_total_changes`) is unchanged. Every write of these tables goes through that
//! connection, so any write there, of any table, drops the copies: conservative, never
//! stale. Inside an open transaction (which may yet roll back) nothing is kept.

use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::Connection;

use super::peers::{self, Peer, PeerError};
use super::rules::{self, Rule, RuleError};

/// The tables' copies; read them with the guard of `Gateway::db` held.
#[derive(Debug, Default)]
pub struct HeldTables {
    peers: Memo<Vec<Peer>>,
    rules: Memo<Vec<Rule>>,
}

impl HeldTables {
    /// Every peer, by id ([`peers::list`]).
    pub fn peers(&self, conn: &Connection) -> Result<Arc<Vec<Peer>>, PeerError> {
        self.peers.get(conn, peers::list)
    }

    /// One peer's base URL, if it is known.
    pub fn peer_url(&self, conn: &Connection, id: &str) -> Result<Option<String>, PeerError> {
        Ok(self.peers(conn)?.iter().find(|p| p.id == id).map(|p| p.url.clone()))
    }

    /// Whether `id` is a known peer.
    pub fn is_peer(&self, conn: &Connection, id: &str) -> Result<bool, PeerError> {
        Ok(self.peers(conn)?.iter().any(|p| p.id == id))
    }

    /// The peers advertising `domain`, by id ([`peers::lenders_of`]).
    pub fn lenders_of(&self, conn: &Connection, domain: &str) -> Result<Vec<String>, PeerError> {
        Ok(self.peers(conn)?.iter().filter(|p| p.domains.iter().any(|d| d == domain)).map(|p| p.id.clone()).collect())
    }

    /// Every rule ([`rules::list`]).
    pub fn rules(&self, conn: &Connection) -> Result<Arc<Vec<Rule>>, RuleError> {
        self.rules.get(conn, rules::list)
    }
}

/// One table's copy and the change count it was read at.
#[derive(Debug)]
struct Memo<T> {
    slot: Mutex<Option<(u64, Arc<T>)>>,
}

impl<T> Default for Memo<T> {
    fn default() -> Self {
        Memo { slot: Mutex::new(None) }
    }
}

impl<T> Memo<T> {
    fn get<E>(&self, conn: &Connection, load: impl FnOnce(&Connection) -> Result<T, E>) -> Result<Arc<T>, E> {
        let version = conn.total_changes();
        let lock = || self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, held)) = &*lock() {
            if *at == version {
                return Ok(held.clone());
            }
        }
        let fresh = Arc::new(load(conn)?);
        if conn.is_autocommit() {
            *lock() = Some((version, fresh.clone()));
        }
        Ok(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(crate::db::FEDERATION_TABLES_NO_KEYS).unwrap();
        conn
    }

    #[test]
    fn a_write_is_seen_at_once() {
        let conn = conn();
        let held = HeldTables::default();
        assert!(!held.is_peer(&conn, "b").unwrap());
        peers::upsert(&conn, "b", "Bee", "http://127.0.0.1:9091", 1).unwrap();
        assert_eq!(held.peer_url(&conn, "b").unwrap().as_deref(), Some("http://127.0.0.1:9091"));
        let first = held.peers(&conn).unwrap();
        assert!(Arc::ptr_eq(&first, &held.peers(&conn).unwrap()), "read once between writes");
        peers::set_domains(&conn, "b", &["x.test".into()], 2).unwrap();
        assert_eq!(held.lenders_of(&conn, "x.test").unwrap(), vec!["b".to_owned()]);
        peers::remove(&conn, "b").unwrap();
        assert!(!held.is_peer(&conn, "b").unwrap());
        assert!(held.lenders_of(&conn, "x.test").unwrap().is_empty());
    }

    #[test]
    fn nothing_read_inside_a_transaction_outlives_its_rollback() {
        let mut conn = conn();
        let held = HeldTables::default();
        let tx = conn.transaction().unwrap();
        peers::upsert(&tx, "b", "Bee", "http://127.0.0.1:9091", 1).unwrap();
        assert!(held.is_peer(&tx, "b").unwrap(), "the transaction sees its own write");
        tx.rollback().unwrap();
        assert!(!held.is_peer(&conn, "b").unwrap());
    }
}
