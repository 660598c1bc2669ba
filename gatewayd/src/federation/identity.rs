//! This gateway's stable identity among peers: an id and a display name, from
//! `NKMC_GATEWAY_ID` / `NKMC_GATEWAY_NAME`, else from the database, else generated and
//! stored on first run.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

/// Why the identity could not be settled.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The database failed.
    #[error("federation identity: database: {0}")]
    Db(#[from] rusqlite::Error),
    /// An id that peers could not use.
    #[error(
        "federation identity: `{0}` is not a usable gateway id (1-64 of a-z, 0-9, `-`, `_`, `.`); \
         fix NKMC_GATEWAY_ID"
    )]
    InvalidId(String),
    /// A name that cannot be shown on one line.
    #[error("federation identity: the gateway name must be 1-100 printable characters; fix NKMC_GATEWAY_NAME")]
    InvalidName,
}

/// Who this gateway is to its peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The id peers add it under (`peers add --id`).
    pub id: String,
    /// A name for people.
    pub name: String,
}

/// Whether `id` is a valid gateway (or peer) id.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
}

/// Whether `name` is a valid display name.
pub fn valid_name(name: &str) -> bool {
    (1..=100).contains(&name.chars().count()) && !name.chars().any(char::is_control)
}

fn setting(conn: &Connection, name: &str) -> Result<Option<String>, rusqlite::Error> {
    conn.query_row("SELECT value FROM settings WHERE name = ?1", params![name], |r| r.get(0)).optional()
}

fn store(conn: &Connection, name: &str, value: &str) -> Result<(), rusqlite::Error> {
    conn.execute(
        "INSERT INTO settings (name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = ?2",
        params![name, value],
    )?;
    Ok(())
}

/// Settles the identity: the environment's values win (and are stored, so the next run
/// without them keeps the same identity); otherwise the stored ones; otherwise a fresh id
/// from `random_hex` and the host name.
pub fn settle(
    conn: &Connection,
    env_id: Option<&str>,
    env_name: Option<&str>,
    random_hex: impl FnOnce() -> String,
    host_name: impl FnOnce() -> Option<String>,
) -> Result<Identity, IdentityError> {
    let id = match env_id.map(str::trim).filter(|s| !s.is_empty()) {
        Some(id) if valid_id(id) => id.to_owned(),
        Some(id) => return Err(IdentityError::InvalidId(id.to_owned())),
        None => match setting(conn, "gateway_id")? {
            Some(id) => id,
            None => format!("gw-{}", random_hex()),
        },
    };
    let name = match env_name.map(str::trim).filter(|s| !s.is_empty()) {
        Some(n) if valid_name(n) => n.to_owned(),
        Some(_) => return Err(IdentityError::InvalidName),
        None => match setting(conn, "gateway_name")? {
            Some(n) => n,
            None => host_name().filter(|h| valid_name(h)).unwrap_or_else(|| "nkmc".to_owned()),
        },
    };
    store(conn, "gateway_id", &id)?;
    store(conn, "gateway_name", &name)?;
    Ok(Identity { id, name })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);").unwrap();
        conn
    }

    #[test]
    fn generated_once_then_stable_and_the_environment_wins() {
        let conn = db();
        let first = settle(&conn, None, None, || "abc123".into(), || Some("box".into())).unwrap();
        assert_eq!(first, Identity { id: "gw-abc123".into(), name: "box".into() });
        let again = settle(&conn, None, None, || "zzz".into(), || None).unwrap();
        assert_eq!(again, first, "persisted");
        let named = settle(&conn, Some("alpha"), Some("Alpha GW"), || "x".into(), || None).unwrap();
        assert_eq!(named, Identity { id: "alpha".into(), name: "Alpha GW".into() });
        assert_eq!(settle(&conn, None, None, || "x".into(), || None).unwrap(), named);
        assert!(settle(&conn, Some("Bad Id!"), None, || "x".into(), || None).is_err());
        assert!(settle(&conn, None, Some("a\nb"), || "x".into(), || None).is_err());
    }
}
