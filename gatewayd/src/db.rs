//! The SQLite database: WAL, full sync, versioned migrations, and the lock that keeps a
//! second gatewayd off the same data dir.

use std::fs::File;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite failed.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Another gatewayd holds the lock.
    #[error("database: another gatewayd is already running on {0} (stop it with `nkmc gateway stop`)")]
    Locked(PathBuf),
    /// The lock file cannot be opened.
    #[error("database: cannot open the lock file {path}: {source}")]
    LockFile {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The database is newer than this gatewayd.
    #[error("database: schema version {0} is newer than this gatewayd understands ({LATEST}); upgrade nkmc")]
    TooNew(i64),
}

/// Migrations, in order; `user_version` counts how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: services and credentials.
    "CREATE TABLE services (
        domain     TEXT PRIMARY KEY,
        base_url   TEXT NOT NULL,
        title      TEXT NOT NULL,
        spec_json  TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE keys (
        key_id     TEXT PRIMARY KEY,
        domain     TEXT NOT NULL,
        scope      TEXT NOT NULL CHECK (scope IN ('pool', 'byok')),
        owner      TEXT NOT NULL,
        ciphertext BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        UNIQUE (domain, scope, owner)
    );",
    // 2: the hash-chained audit log (see audit.rs for the hash and the anchor file).
    "CREATE TABLE audit (
        seq             INTEGER PRIMARY KEY,
        time_ms         INTEGER NOT NULL,
        agent           TEXT NOT NULL,
        operation       TEXT NOT NULL,
        target          TEXT NOT NULL,
        outcome         TEXT NOT NULL,
        upstream_status INTEGER,
        bytes           INTEGER NOT NULL,
        duration_ms     INTEGER NOT NULL,
        peer            TEXT,
        key_id          TEXT,
        prev_hash       TEXT NOT NULL,
        hash            TEXT NOT NULL
    );",
    // 3: revoked agent tokens: biscuit block revocation ids (hex), see auth/revocation.rs.
    "CREATE TABLE revoked_tokens (
        revocation_id TEXT PRIMARY KEY,
        revoked_at    INTEGER NOT NULL
    );",
    // 4: where a key goes when the owner said so (`keys set --header H`); JSON, never secret.
    "ALTER TABLE keys ADD COLUMN placement TEXT;",
    // 5: federation: this gateway's identity, its peers and its lending rules; peer secrets
    // are vault rows of scope `peer` (owner: the peer's id), so the keys table is rebuilt
    // with the wider CHECK.
    FEDERATION_TABLES,
    // 6: x402 payments: the ledger of charges on both sides, and per-token credit.
    LEDGER_TABLE,
    // 7: the wallet that pays peers is a vault row of scope `wallet`, so the keys table is
    // rebuilt with the wider CHECK.
    WALLET_SCOPE,
];

/// Migration 6: the ledger (also used by unit tests).
pub const LEDGER_TABLE: &str = "CREATE TABLE ledger (
        id             INTEGER PRIMARY KEY,
        at_ms          INTEGER NOT NULL,
        direction      TEXT NOT NULL CHECK (direction IN ('spent', 'earned')),
        peer           TEXT NOT NULL,
        domain         TEXT NOT NULL,
        op             TEXT NOT NULL,
        path           TEXT NOT NULL,
        amount         TEXT NOT NULL,
        amount_display TEXT NOT NULL,
        network        TEXT NOT NULL,
        asset          TEXT NOT NULL,
        payer          TEXT NOT NULL,
        pay_to         TEXT NOT NULL,
        nonce          TEXT NOT NULL,
        tx             TEXT NOT NULL,
        state          TEXT NOT NULL CHECK (state IN ('pending', 'settled', 'void')),
        valid_until_ms INTEGER NOT NULL,
        UNIQUE (direction, nonce)
    );
    CREATE INDEX ledger_at ON ledger (at_ms);
    CREATE TABLE credit (
        peer   TEXT NOT NULL,
        domain TEXT NOT NULL,
        tokens INTEGER NOT NULL,
        PRIMARY KEY (peer, domain)
    );";

/// Migration 7: the keys table with the `wallet` scope.
const WALLET_SCOPE: &str = "CREATE TABLE keys_v7 (
        key_id     TEXT PRIMARY KEY,
        domain     TEXT NOT NULL,
        scope      TEXT NOT NULL CHECK (scope IN ('pool', 'byok', 'peer', 'wallet')),
        owner      TEXT NOT NULL,
        ciphertext BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        placement  TEXT,
        UNIQUE (domain, scope, owner)
    );
    INSERT INTO keys_v7 (key_id, domain, scope, owner, ciphertext, created_at, placement)
        SELECT key_id, domain, scope, owner, ciphertext, created_at, placement FROM keys;
    DROP TABLE keys;
    ALTER TABLE keys_v7 RENAME TO keys;";

/// The tables of migration 5 (also used by unit tests).
pub const FEDERATION_TABLES: &str = "CREATE TABLE settings (
        name  TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE peers (
        id           TEXT PRIMARY KEY,
        name         TEXT NOT NULL,
        url          TEXT NOT NULL,
        added_ms     INTEGER NOT NULL,
        last_seen_ms INTEGER,
        status       TEXT NOT NULL DEFAULT 'unknown',
        domains      TEXT NOT NULL DEFAULT '[]'
    );
    CREATE TABLE rules (
        domain       TEXT PRIMARY KEY,
        allow        INTEGER NOT NULL,
        peers        TEXT NOT NULL,
        ops          TEXT NOT NULL,
        pricing      TEXT NOT NULL,
        amount       TEXT,
        rate_per_min INTEGER
    );
    CREATE TABLE keys_v5 (
        key_id     TEXT PRIMARY KEY,
        domain     TEXT NOT NULL,
        scope      TEXT NOT NULL CHECK (scope IN ('pool', 'byok', 'peer')),
        owner      TEXT NOT NULL,
        ciphertext BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        placement  TEXT,
        UNIQUE (domain, scope, owner)
    );
    INSERT INTO keys_v5 (key_id, domain, scope, owner, ciphertext, created_at, placement)
        SELECT key_id, domain, scope, owner, ciphertext, created_at, placement FROM keys;
    DROP TABLE keys;
    ALTER TABLE keys_v5 RENAME TO keys;";

/// The rules table alone (unit tests of the rules).
#[cfg(test)]
pub const RULES_TABLE: &str = "CREATE TABLE rules (
        domain TEXT PRIMARY KEY, allow INTEGER NOT NULL, peers TEXT NOT NULL, ops TEXT NOT NULL,
        pricing TEXT NOT NULL, amount TEXT, rate_per_min INTEGER
    );";

/// The settings and peers tables alone (unit tests).
#[cfg(test)]
pub const FEDERATION_TABLES_NO_KEYS: &str = "CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE peers (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, url TEXT NOT NULL, added_ms INTEGER NOT NULL,
        last_seen_ms INTEGER, status TEXT NOT NULL DEFAULT 'unknown', domains TEXT NOT NULL DEFAULT '[]'
    );";

const LATEST: i64 = MIGRATIONS.len() as i64;

/// Holds the single-instance lock for as long as it lives.
#[derive(Debug)]
pub struct InstanceLock {
    _lock: nix::fcntl::Flock<File>,
}

/// Takes the data dir's exclusive lock, or says who holds it.
pub fn lock_instance(lock_path: &Path, data_dir: &Path) -> Result<InstanceLock, DbError> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path)
        .map_err(|source| DbError::LockFile { path: lock_path.to_path_buf(), source })?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(InstanceLock { _lock: lock }),
        Err((_, _)) => Err(DbError::Locked(data_dir.to_path_buf())),
    }
}

/// Opens (creating if needed) and migrates the database.
pub fn open(path: &Path) -> Result<Connection, DbError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "secure_delete", "ON")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    migrate(&conn)?;
    Ok(conn)
}

fn migrate(conn: &Connection) -> Result<(), DbError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > LATEST {
        return Err(DbError::TooNew(version));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_locks() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        drop(open(&db).unwrap());
        let conn = open(&db).unwrap();
        let v: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(v, LATEST);
        let lock = dir.path().join("l");
        let held = lock_instance(&lock, dir.path()).unwrap();
        assert!(matches!(lock_instance(&lock, dir.path()), Err(DbError::Locked(_))));
        drop(held);
        lock_instance(&lock, dir.path()).unwrap();
    }
}
