//! The peers this gateway knows: id (the one each calls itself), name, URL, what each
//! advertises, and when it was last heard from. Their shared secrets live in the vault
//! (scope `peer`), never in this table.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::identity::{valid_id, valid_name};

/// Why a peer could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The database failed.
    #[error("federation peers: database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The peer is not valid.
    #[error("federation peers: {0}")]
    Invalid(String),
    /// No such peer.
    #[error("federation peers: no peer `{0}`; see `nkmc peers list`")]
    Unknown(String),
}

/// A peer as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// Its id.
    pub id: String,
    /// Its display name.
    pub name: String,
    /// Its TCP API's base URL.
    pub url: String,
    /// When it was added (Unix ms).
    pub added_ms: i64,
    /// When it last answered or called (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ms: Option<i64>,
    /// `unknown`, `online`, `unreachable` or `refused`.
    pub status: String,
    /// The domains it lends to this gateway.
    pub domains: Vec<String>,
}

/// Checks a new peer's fields.
pub fn validate(id: &str, name: &str, url: &str) -> Result<url::Url, PeerError> {
    if !valid_id(id) {
        return Err(PeerError::Invalid(format!("`{id}` is not a gateway id (1-64 of a-z, 0-9, `-`, `_`, `.`)")));
    }
    if !valid_name(name) {
        return Err(PeerError::Invalid("the name must be 1-100 printable characters".into()));
    }
    let parsed = url::Url::parse(url).map_err(|e| PeerError::Invalid(format!("--url `{url}`: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(PeerError::Invalid(format!("--url `{url}` must be an http(s) URL of the peer's TCP API")));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() || parsed.query().is_some() {
        return Err(PeerError::Invalid("--url must carry no credentials or query; the secret goes in --secret".into()));
    }
    Ok(parsed)
}

/// Adds or replaces a peer (its advertised domains are kept when it is replaced).
pub fn upsert(conn: &Connection, id: &str, name: &str, url: &str, now_ms: i64) -> Result<(), PeerError> {
    let url = validate(id, name, url)?;
    let url = url.as_str().trim_end_matches('/').to_owned();
    conn.execute(
        "INSERT INTO peers (id, name, url, added_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(id) DO UPDATE SET name = ?2, url = ?3",
        params![id, name, url, now_ms],
    )?;
    Ok(())
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Peer, String)> {
    Ok((
        Peer {
            id: r.get(0)?,
            name: r.get(1)?,
            url: r.get(2)?,
            added_ms: r.get(3)?,
            last_seen_ms: r.get(4)?,
            status: r.get(5)?,
            domains: Vec::new(),
        },
        r.get::<_, String>(6)?,
    ))
}

const COLUMNS: &str = "id, name, url, added_ms, last_seen_ms, status, domains";

fn with_domains((mut peer, domains): (Peer, String)) -> Peer {
    peer.domains = serde_json::from_str(&domains).unwrap_or_default();
    peer
}

/// Every peer, by id.
pub fn list(conn: &Connection) -> Result<Vec<Peer>, PeerError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM peers ORDER BY id"))?;
    let rows = stmt.query_map([], row)?;
    rows.map(|r| r.map(with_domains).map_err(PeerError::from)).collect()
}

/// One peer.
pub fn get(conn: &Connection, id: &str) -> Result<Option<Peer>, PeerError> {
    let found = conn.query_row(&format!("SELECT {COLUMNS} FROM peers WHERE id = ?1"), params![id], row).optional()?;
    Ok(found.map(with_domains))
}

/// Removes a peer; whether it existed.
pub fn remove(conn: &Connection, id: &str) -> Result<bool, PeerError> {
    Ok(conn.execute("DELETE FROM peers WHERE id = ?1", params![id])? > 0)
}

/// Records what a peer advertises (its whole list).
pub fn set_domains(conn: &Connection, id: &str, domains: &[String], now_ms: i64) -> Result<(), PeerError> {
    let json = serde_json::to_string(domains).map_err(|e| PeerError::Invalid(e.to_string()))?;
    let n = conn.execute(
        "UPDATE peers SET domains = ?2, last_seen_ms = ?3, status = 'online' WHERE id = ?1",
        params![id, json, now_ms],
    )?;
    if n == 0 {
        return Err(PeerError::Unknown(id.to_owned()));
    }
    Ok(())
}

/// Records how a call to a peer went.
pub fn set_status(conn: &Connection, id: &str, status: &str, now_ms: i64) -> Result<(), PeerError> {
    let seen = (status == "online").then_some(now_ms);
    conn.execute(
        "UPDATE peers SET status = ?2, last_seen_ms = COALESCE(?3, last_seen_ms) WHERE id = ?1",
        params![id, status, seen],
    )?;
    Ok(())
}

/// How often an unchanged status is written again (for `last seen`).
const STATUS_REFRESH: std::time::Duration = std::time::Duration::from_secs(10);

/// The status last written per peer, so a call writes the peers table (a durable commit)
/// only when a peer's status changes or its `last seen` is older than [`STATUS_REFRESH`],
/// not on every call.
#[derive(Debug, Default)]
pub struct StatusBook {
    written: std::sync::Mutex<std::collections::HashMap<String, (&'static str, std::time::Instant)>>,
}

impl StatusBook {
    /// Records that `id` answered with `status` at `now`; writes the table when needed.
    pub fn note(&self, conn: impl FnOnce() -> Result<(), PeerError>, id: &str, status: &'static str) {
        let now = std::time::Instant::now();
        {
            let mut written = self.written.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((s, at)) = written.get(id) {
                if *s == status && now.duration_since(*at) < STATUS_REFRESH {
                    return;
                }
            }
            written.insert(id.to_owned(), (status, now));
        }
        if let Err(e) = conn() {
            tracing::warn!(peer = id, error = %e, "federation: a peer's status was not recorded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_validated_stored_and_advertise() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(crate::db::FEDERATION_TABLES_NO_KEYS).unwrap();
        for (id, name, url) in [
            ("Bad", "b", "http://127.0.0.1:1"),
            ("b", "b", "ftp://x"),
            ("b", "b", "http://user:pw@127.0.0.1:1"),
            ("b", "", "http://127.0.0.1:1"),
        ] {
            assert!(upsert(&conn, id, name, url, 1).is_err(), "{id} {name} {url}");
        }
        upsert(&conn, "b", "Bee", "http://127.0.0.1:9091/", 1).unwrap();
        assert_eq!(get(&conn, "b").unwrap().unwrap().url, "http://127.0.0.1:9091");
        set_domains(&conn, "b", &["x.test".into()], 5).unwrap();
        let p = get(&conn, "b").unwrap().unwrap();
        assert_eq!((p.status.as_str(), p.last_seen_ms, p.domains.clone()), ("online", Some(5), vec!["x.test".into()]));
        assert!(matches!(set_domains(&conn, "zz", &[], 1), Err(PeerError::Unknown(_))));
        assert!(remove(&conn, "b").unwrap());
        assert!(list(&conn).unwrap().is_empty());
    }
}
