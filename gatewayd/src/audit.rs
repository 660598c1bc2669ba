//! The audit log: one record per operation, hash-chained, with its head anchored in a file.
//!
//! # Records
//!
//! A record ([`AuditRecord`]) says who (`agent`), what (`operation`), on what (`target`: the
//! canonical virtual path, or the domain for service and key operations), how it ended
//! (`outcome`: `ok`, `cancelled`, or the wire error code — never an error message), the
//! upstream's HTTP status, the body bytes, the duration, the federated peer and the id of the
//! credential stored (never the credential). Records live in the `audit` table of the
//! database; `seq` numbers them from 1 without gaps.
//!
//! # The chain
//!
//! `hash` is the lower-case hex SHA-256 of this byte string (big-endian integers; `str` is a
//! u64 byte length then the UTF-8 bytes; `opt` is a 0 byte for none, or a 1 byte then the
//! value):
//!
//! ```text
//! "nkmc-audit-v1" 0x00
//! seq u64 | time_ms i64 | agent str | operation str | target str | outcome str
//! upstream_status opt(u16) | bytes u64 | duration_ms u64 | peer opt(str) | key_id opt(str)
//! prev_hash str
//! ```
//!
//! Every field has a fixed place and a length or a fixed width, so no two records encode
//! alike. `prev_hash` is the previous record's `hash`; the first record's is [`GENESIS`].
//! Editing any field breaks that record's hash; rewriting a record together with its hash
//! breaks the next record's link; deleting or moving a record leaves a gap in `seq` or a
//! record whose hash only fits another position.
//!
//! # The anchor: truncation
//!
//! Deleting the *last* records leaves a shorter chain that is still valid. So the head (`seq`
//! and `hash` of the last record) is also kept in [`ANCHOR_FILE`] in the data dir, as JSON,
//! replaced atomically (temp file 0600, fsync, rename). `verify` fails when the anchor names a
//! record the table does not have (truncated), a record whose hash differs (rewritten), or
//! when the anchor is missing while records exist.
//!
//! # The writer thread
//!
//! An append only queues its event: nothing on the request path waits for the database.
//! A thread of its own (`audit-writer`), with a database connection of its own, numbers and
//! chains the queued events in the order they were appended and commits them together, one
//! transaction per batch (it takes what has queued, at most every [`COMMIT_INTERVAL`], so a
//! steady stream costs a few hundred commits a second, not one per operation). Its commits
//! do not wait for an fsync (`synchronous=NORMAL` on its connection: a record is in the WAL,
//! safe from a crash of gatewayd, not yet from a power loss). At most every
//! [`ANCHOR_INTERVAL`], or at once when someone waits, the same thread fsyncs the WAL
//! (making every record committed so far durable) and then writes the last committed head
//! to the anchor. SQLite's automatic WAL checkpoints run on its connection too (gatewayd's
//! main connection has them turned off), so no checkpoint runs under the mutex requests
//! take. So the anchor can only lag behind the durable table (by the records of the last
//! 50 ms before a power loss), never run ahead of it; hence the directory is not fsynced
//! either: a lost rename leaves the previous, still valid anchor. `verify`, `GET /v1/audit`
//! and gatewayd's exit wait for the writer (`verify` and exit for the anchor too), so a
//! reader sees every operation that finished before it asked.
//!
//! A batch that cannot be committed is tried again one record per transaction: a record that
//! can be written is, one that cannot is logged and left out (the chain goes on from the last
//! record committed, as if it had never been appended). The writer's last result is the
//! refusing state ([`AuditLog::is_failing`]): gatewayd refuses operations and `/readyz` says
//! 503 while the last record could not be written. No operation waits for its own record:
//! none of them answers with something that only the record would make true (a minted token,
//! a stored key, a revocation are committed by their own handlers, with `synchronous=FULL`,
//! before they answer), and the record of an operation whose answer is already on its way
//! could not change that answer anyway.
//!
//! When gatewayd starts and finds the anchor ahead of the table, it goes
//! on numbering after the anchor, so a truncation made while it was stopped stays visible as
//! a gap. A running gatewayd also checks against the head it holds in memory.
//!
//! What this does not catch: someone who can write the data dir and recomputes every hash
//! after an edit, and rewrites the anchor too. Keep the `last_hash` that `nkmc audit verify`
//! prints somewhere else to detect that.

use std::fmt;
use std::io::Write;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use agentfs::wire::{AuditProblem, AuditProblemKind, AuditRecord, AuditVerification};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The anchor file's name in the data dir.
pub const ANCHOR_FILE: &str = "audit.anchor";

/// The agent of every operation until agent tokens exist: the owner, over the socket.
pub const OWNER: &str = "owner";

/// Longest text stored in a field, in bytes; longer text is cut at a character boundary.
pub const MAX_TEXT: usize = 4096;

/// Domain separation of the hash input (format version 1).
const HASH_TAG: &[u8] = b"nkmc-audit-v1\0";

/// The anchor is written at most once per this interval (unless someone waits for it), so a
/// steady stream of appends costs a few fsyncs a second, not one each.
const ANCHOR_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// Records appended within this interval are committed together (one transaction), so a
/// steady stream of appends costs a few hundred commits a second at most, not one each.
const COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(2);

/// Records read from the database at a time while verifying.
const VERIFY_BATCH: i64 = 1000;

/// Why the audit log failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// SQLite failed.
    #[error("audit: database error: {0}")]
    Db(#[from] rusqlite::Error),
    /// The anchor file cannot be written.
    #[error("audit: cannot write the anchor file {path}: {source}")]
    Anchor {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The log's database is not a file (the writer thread opens it again).
    #[error("audit: the database is not a file, so the audit writer cannot open it")]
    NotAFile,
    /// A stored record does not decode (a field of the wrong type).
    #[error("audit: record {seq} cannot be read ({message}); `nkmc audit verify` says more")]
    Record {
        /// Its sequence number.
        seq: i64,
        /// The decoding error.
        message: String,
    },
}

/// Where the time of a record comes from (injected, so tests are deterministic).
pub trait Clock: Send + Sync + fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// The operations that are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `GET /v1/status`.
    Status,
    /// `POST /v1/shutdown`.
    Shutdown,
    /// `GET /v1/services`.
    ServicesList,
    /// `POST /v1/services`.
    Register,
    /// `DELETE /v1/services/{domain}`.
    ServicesRemove,
    /// `GET /v1/keys`.
    KeysList,
    /// `PUT /v1/keys/{domain}`.
    KeysSet,
    /// `DELETE /v1/keys/{domain}`.
    KeysRemove,
    /// `GET /v1/fs/stat`.
    Stat,
    /// `GET /v1/fs/list`.
    List,
    /// `GET /v1/fs/read`.
    Read,
    /// `POST /v1/fs/write`.
    Write,
    /// `POST /v1/fs/delete`.
    Delete,
    /// `POST /v1/fs/grep`.
    Grep,
    /// `POST /v1/peers`.
    PeersAdd,
    /// `DELETE /v1/peers/{id}`.
    PeersRemove,
    /// `PUT /v1/rules/{domain}`.
    RulesSet,
    /// `DELETE /v1/rules/{domain}`.
    RulesRemove,
    /// `POST /v1/tokens`.
    TokenMint,
    /// `POST /v1/tokens/revoke`.
    TokenRevoke,
    /// `POST /v1/vault/rotate`.
    VaultRotate,
    /// `GET /v1/vault/check`.
    VaultCheck,
    /// `POST /v1/proxy/exec`.
    Run,
    /// `GET /v1/proxy/tools`.
    ToolsList,
    /// `POST /v1/wallet`.
    WalletSet,
    /// `DELETE /v1/wallet`.
    WalletRemove,
    /// `PUT /v1/budget`.
    BudgetSet,
}

impl Operation {
    /// The name stored in the record.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Status => "status",
            Operation::Shutdown => "shutdown",
            Operation::ServicesList => "services.list",
            Operation::Register => "register",
            Operation::ServicesRemove => "services.remove",
            Operation::KeysList => "keys.list",
            Operation::KeysSet => "keys.set",
            Operation::KeysRemove => "keys.remove",
            Operation::Stat => "stat",
            Operation::List => "list",
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Delete => "delete",
            Operation::Grep => "grep",
            Operation::PeersAdd => "peers.add",
            Operation::PeersRemove => "peers.remove",
            Operation::RulesSet => "rules.set",
            Operation::RulesRemove => "rules.remove",
            Operation::TokenMint => "token.mint",
            Operation::TokenRevoke => "token.revoke",
            Operation::VaultRotate => "vault.rotate",
            Operation::VaultCheck => "vault.check",
            Operation::Run => "run",
            Operation::ToolsList => "tools.list",
            Operation::WalletSet => "wallet.set",
            Operation::WalletRemove => "wallet.remove",
            Operation::BudgetSet => "budget.set",
        }
    }
}

/// One completed operation, before it is numbered and chained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When it started (from the log's [`Clock`]), ms since the epoch.
    pub time_ms: i64,
    /// Who asked.
    pub agent: String,
    /// What was done.
    pub operation: Operation,
    /// The canonical path or domain (empty when none was valid).
    pub target: String,
    /// `ok`, `cancelled` or an error code.
    pub outcome: String,
    /// The upstream's status, if one answered.
    pub upstream_status: Option<u16>,
    /// Body bytes (see [`AuditRecord::bytes`]).
    pub bytes: u64,
    /// How long it took.
    pub duration_ms: u64,
    /// The federated peer, if any.
    pub peer: Option<String>,
    /// The id of the credential stored or used, if any.
    pub key_id: Option<String>,
}

/// The hash of a record: SHA-256 over the encoding in the module documentation. The
/// record's own `hash` field is not part of it.
pub fn record_hash(r: &AuditRecord) -> String {
    fn text(h: &mut Sha256, s: &str) {
        h.update((s.len() as u64).to_be_bytes());
        h.update(s.as_bytes());
    }
    fn opt_text(h: &mut Sha256, s: Option<&str>) {
        match s {
            None => h.update([0u8]),
            Some(s) => {
                h.update([1u8]);
                text(h, s);
            }
        }
    }
    let mut h = Sha256::new();
    h.update(HASH_TAG);
    h.update(r.seq.to_be_bytes());
    h.update(r.time_ms.to_be_bytes());
    text(&mut h, &r.agent);
    text(&mut h, &r.operation);
    text(&mut h, &r.target);
    text(&mut h, &r.outcome);
    match r.upstream_status {
        None => h.update([0u8]),
        Some(s) => {
            h.update([1u8]);
            h.update(s.to_be_bytes());
        }
    }
    h.update(r.bytes.to_be_bytes());
    h.update(r.duration_ms.to_be_bytes());
    opt_text(&mut h, r.peer.as_deref());
    opt_text(&mut h, r.key_id.as_deref());
    text(&mut h, &r.prev_hash);
    hex::encode(h.finalize())
}

/// `s` cut to at most [`MAX_TEXT`] bytes, at a character boundary.
fn capped(s: &str) -> String {
    if s.len() <= MAX_TEXT {
        return s.to_owned();
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// The last record: the next one chains from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Head {
    seq: u64,
    hash: String,
}

impl Head {
    fn genesis() -> Self {
        Head { seq: 0, hash: GENESIS.to_owned() }
    }
}

/// Reads the anchor file: `Ok(None)` when there is none.
fn read_anchor(path: &Path) -> Result<Option<Head>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("it is not a valid anchor: {e}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Makes the records committed so far durable: fsync of the database's WAL (appends commit
/// with `synchronous=NORMAL`, see [`AuditLog::append`]). Only the WAL is opened (and closed):
/// SQLite keeps its POSIX locks on the database and `-shm` files, which closing another
/// descriptor of those would drop. No WAL (nothing written yet, or not in WAL mode): nothing
/// to sync.
fn sync_wal(wal: &Path) -> Result<(), AuditError> {
    let err = |source| AuditError::Anchor { path: wal.to_path_buf(), source };
    match std::fs::File::open(wal) {
        Ok(f) => f.sync_all().map_err(err),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// Replaces the anchor file: temp file (0600), fsync, rename.
fn write_anchor(path: &Path, head: &Head) -> Result<(), AuditError> {
    // (The WAL holding the records up to `head` was synced by the caller.)
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let err = |source| AuditError::Anchor { path: path.to_path_buf(), source };
    let mut json = serde_json::to_vec(head).map_err(|e| err(std::io::Error::other(e)))?;
    json.push(b'\n');
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(err)?;
    f.write_all(&json).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)
}

const COLUMNS: &str =
    "seq, time_ms, agent, operation, target, outcome, upstream_status, bytes, duration_ms, peer, key_id, prev_hash, hash";

/// A row as stored, strictly typed: a field of the wrong type is an error.
fn decode(row: &Row<'_>) -> rusqlite::Result<AuditRecord> {
    let unsigned = |i: usize| -> rusqlite::Result<u64> {
        let v: i64 = row.get(i)?;
        u64::try_from(v)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Integer, e.into()))
    };
    Ok(AuditRecord {
        seq: unsigned(0)?,
        time_ms: row.get(1)?,
        agent: row.get(2)?,
        operation: row.get(3)?,
        target: row.get(4)?,
        outcome: row.get(5)?,
        upstream_status: row.get(6)?,
        bytes: unsigned(7)?,
        duration_ms: unsigned(8)?,
        peer: row.get(9)?,
        key_id: row.get(10)?,
        prev_hash: row.get(11)?,
        hash: row.get(12)?,
    })
}

/// Rows after `after` (by `seq`), each decoded or with why it does not decode.
type Decoded = (i64, Result<AuditRecord, String>);

fn rows_after(conn: &Connection, after: i64, limit: i64) -> rusqlite::Result<Vec<Decoded>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2"))?;
    let rows = stmt.query_map(params![after, limit], |row| {
        let seq: i64 = row.get(0)?;
        Ok((seq, decode(row).map_err(|e| e.to_string())))
    })?;
    rows.collect()
}

/// Records after `after` (oldest first), or the last `limit` records when `after` is `None`.
pub fn list(conn: &Connection, after: Option<u64>, limit: u32) -> Result<Vec<AuditRecord>, AuditError> {
    let limit = i64::from(limit);
    let after = match after {
        Some(a) => i64::try_from(a).unwrap_or(i64::MAX),
        None => {
            let from: Option<i64> = conn
                .query_row("SELECT seq FROM audit ORDER BY seq DESC LIMIT 1 OFFSET ?1", [limit], |r| r.get(0))
                .optional()?;
            from.unwrap_or(i64::MIN)
        }
    };
    rows_after(conn, after, limit)?
        .into_iter()
        .map(|(seq, r)| r.map_err(|message| AuditError::Record { seq, message }))
        .collect()
}

/// The writer thread's state, shared with the appenders under one mutex.
#[derive(Debug)]
struct Queue {
    /// Events appended and not taken by the writer yet, in order.
    events: Vec<Event>,
    /// Events ever appended (a ticket: the n-th append waits for `processed >= n`).
    appended: u64,
    /// Events the writer has finished with (committed, or failed and logged).
    processed: u64,
    /// `processed` when the anchor last named the durable head (or when nothing was left
    /// to anchor): `flush` waits for this.
    anchored: u64,
    /// The last record committed: the next one chains from it.
    head: Head,
    /// Someone waits: commit and anchor now, do not wait out an interval.
    urgent: bool,
    /// The writer waits with no event queued (for one, or for the anchor's interval): an
    /// append must wake it. While it waits out the commit interval, appends need not.
    idle: bool,
    stop: bool,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    changed: Condvar,
    /// Whether the writer's last record failed to be written (see [`AuditLog::is_failing`]).
    failing: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, Queue>) -> MutexGuard<'a, Queue> {
        self.changed.wait(guard).unwrap_or_else(|p| p.into_inner())
    }

    fn wait_until<'a>(&self, guard: MutexGuard<'a, Queue>, until: Instant) -> MutexGuard<'a, Queue> {
        let left = until.saturating_duration_since(Instant::now());
        self.changed.wait_timeout(guard, left).unwrap_or_else(|p| p.into_inner()).0
    }

    /// Waits until the writer has finished with every event appended so far, and, with
    /// `anchored`, until the anchor names the last of them that was committed.
    fn wait_for_appended(&self, anchored: bool) {
        let mut q = self.lock();
        let ticket = q.appended;
        while (if anchored { q.anchored } else { q.processed }) < ticket {
            q.urgent = true;
            self.changed.notify_all();
            q = self.wait(q);
        }
    }
}

/// The record that follows `head` for `event`.
fn chain(head: &Head, event: &Event) -> AuditRecord {
    let mut record = AuditRecord {
        seq: head.seq + 1,
        time_ms: event.time_ms,
        agent: capped(&event.agent),
        operation: event.operation.as_str().to_owned(),
        target: capped(&event.target),
        outcome: capped(&event.outcome),
        upstream_status: event.upstream_status,
        bytes: event.bytes.min(i64::MAX as u64),
        duration_ms: event.duration_ms.min(i64::MAX as u64),
        peer: event.peer.as_deref().map(capped),
        key_id: event.key_id.as_deref().map(capped),
        prev_hash: head.hash.clone(),
        hash: String::new(),
    };
    record.hash = record_hash(&record);
    record
}

/// Inserts `records` in one transaction.
fn insert_all(conn: &mut Connection, records: &[AuditRecord]) -> Result<(), AuditError> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(&format!(
            "INSERT INTO audit ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
        ))?;
        for r in records {
            stmt.execute(params![
                r.seq as i64,
                r.time_ms,
                r.agent,
                r.operation,
                r.target,
                r.outcome,
                r.upstream_status,
                r.bytes as i64,
                r.duration_ms as i64,
                r.peer,
                r.key_id,
                r.prev_hash,
                r.hash,
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// The writer thread's own side: its connection, the files it syncs and writes.
struct Writer {
    conn: Connection,
    anchor: PathBuf,
    wal: PathBuf,
    shared: Arc<Shared>,
}

impl Writer {
    /// Writes `events` after `head` (one transaction for all of them; if that fails, one
    /// transaction each, so a record that can be written is, and each one that cannot is
    /// logged and left out of the chain, which goes on from the last record committed).
    /// Returns whether the last one was written.
    fn write(&mut self, head: &mut Head, events: &[Event]) -> bool {
        let mut next = head.clone();
        let records: Vec<AuditRecord> = events
            .iter()
            .map(|e| {
                let r = chain(&next, e);
                next = Head { seq: r.seq, hash: r.hash.clone() };
                r
            })
            .collect();
        match insert_all(&mut self.conn, &records) {
            Ok(()) => {
                *head = next;
                return true;
            }
            Err(e) if events.len() == 1 => {
                tracing::error!(error = %e, operation = events[0].operation.as_str(), "the audit record was not written");
                return false;
            }
            Err(_) => {}
        }
        let mut last = false;
        for event in events {
            let record = chain(head, event);
            match insert_all(&mut self.conn, std::slice::from_ref(&record)) {
                Ok(()) => {
                    *head = Head { seq: record.seq, hash: record.hash };
                    last = true;
                }
                Err(e) => {
                    tracing::error!(error = %e, operation = event.operation.as_str(), "the audit record was not written");
                    last = false;
                }
            }
        }
        last
    }

    /// Makes the records committed so far durable (fsync of the WAL) and names the last one
    /// in the anchor file.
    fn anchor(&self, head: &Head) {
        if let Err(e) = sync_wal(&self.wal).and_then(|()| write_anchor(&self.anchor, head)) {
            tracing::error!(error = %e, "audit: the anchor was not written");
        }
    }

    fn run(mut self) {
        let shared = self.shared.clone();
        let mut q = shared.lock();
        let mut anchored_seq = q.head.seq;
        // The first commit and anchor need not wait out an interval.
        let start = Instant::now();
        let mut last_commit = start.checked_sub(COMMIT_INTERVAL).unwrap_or(start);
        let mut last_anchor = start.checked_sub(ANCHOR_INTERVAL).unwrap_or(start);
        loop {
            let dirty = q.head.seq != anchored_seq;
            let commit_at = last_commit + COMMIT_INTERVAL;
            let anchor_at = last_anchor + ANCHOR_INTERVAL;
            let now = Instant::now();
            let commit_due = !q.events.is_empty() && (q.urgent || q.stop || now >= commit_at);
            let anchor_due = dirty && (q.urgent || q.stop || now >= anchor_at);
            if commit_due {
                let events = std::mem::take(&mut q.events);
                let mut head = q.head.clone();
                drop(q);
                let ok = self.write(&mut head, &events);
                shared.failing.store(!ok, std::sync::atomic::Ordering::Relaxed);
                last_commit = Instant::now();
                q = shared.lock();
                q.head = head;
                q.processed += events.len() as u64;
                if q.head.seq == anchored_seq {
                    // Nothing new to anchor (every record failed).
                    q.anchored = q.processed;
                }
                shared.changed.notify_all();
            } else if anchor_due {
                let (head, processed) = (q.head.clone(), q.processed);
                drop(q);
                self.anchor(&head);
                last_anchor = Instant::now();
                anchored_seq = head.seq;
                q = shared.lock();
                q.anchored = processed;
                if q.events.is_empty() {
                    q.urgent = false;
                }
                shared.changed.notify_all();
            } else if q.stop && q.events.is_empty() && !dirty {
                return;
            } else if !q.events.is_empty() {
                q = shared.wait_until(q, commit_at);
            } else if dirty {
                q.idle = true;
                q = shared.wait_until(q, anchor_at);
                q.idle = false;
            } else {
                q.urgent = false;
                q.anchored = q.processed;
                shared.changed.notify_all();
                q.idle = true;
                q = shared.wait(q);
                q.idle = false;
            }
        }
    }
}

/// The audit log of one data dir: the clock, the anchor file, and the writer thread that
/// commits the records and writes the anchor.
#[derive(Debug)]
pub struct AuditLog {
    clock: Box<dyn Clock>,
    anchor: PathBuf,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AuditLog {
    /// Opens the log whose records are in `conn`'s database (a file: the writer thread opens
    /// a connection of its own to it) and whose anchor file is `anchor`.
    ///
    /// The next record chains from the last one in the table, or from the anchor when the
    /// anchor is further along (the table was truncated: the gap stays visible).
    pub fn open(conn: &Connection, anchor: PathBuf, clock: Box<dyn Clock>) -> Result<Self, AuditError> {
        let last: Option<(i64, String)> = conn
            .query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let mut head = match last {
            Some((seq, hash)) => Head { seq: u64::try_from(seq).unwrap_or(0), hash },
            None => Head::genesis(),
        };
        match read_anchor(&anchor) {
            Ok(Some(a)) if a.seq > head.seq => {
                tracing::warn!(
                    anchored = a.seq,
                    last = head.seq,
                    "audit: records are missing from the end of the log; numbering goes on after the anchor \
                     (`nkmc audit verify`)"
                );
                head = a;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(file = %anchor.display(), error = %e, "audit: the anchor file is unreadable"),
        }
        let Some(db) = conn.path().filter(|p| !p.is_empty()).map(PathBuf::from) else {
            return Err(AuditError::NotAFile);
        };
        // The writer's connection: its commits do not wait for an fsync (it syncs the WAL
        // before it writes the anchor), and SQLite's automatic checkpoints run on it, so on
        // the writer thread.
        let writer_conn = Connection::open(&db)?;
        writer_conn.pragma_update(None, "synchronous", "NORMAL")?;
        writer_conn.pragma_update(None, "secure_delete", "ON")?;
        writer_conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let wal = PathBuf::from(format!("{}-wal", db.display()));
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                events: Vec::new(),
                appended: 0,
                processed: 0,
                anchored: 0,
                head,
                urgent: false,
                idle: false,
                stop: false,
            }),
            changed: Condvar::new(),
            failing: Default::default(),
        });
        let writer = Writer { conn: writer_conn, anchor: anchor.clone(), wal, shared: shared.clone() };
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run())
            .map_err(|source| AuditError::Anchor { path: anchor.clone(), source })?;
        Ok(AuditLog { clock, anchor, shared, thread: Some(thread) })
    }

    /// The current time from the log's clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The anchor file.
    pub fn anchor_path(&self) -> &Path {
        &self.anchor
    }

    /// Waits until every record appended so far is committed (or failed) and the anchor
    /// names the last one committed (gatewayd calls it before it exits; dropping the log
    /// does it too).
    pub fn flush(&self) {
        self.shared.wait_for_appended(true);
    }

    /// Waits until every record appended so far is committed (or failed): readers of the
    /// table see them all.
    pub fn sync(&self) {
        self.shared.wait_for_appended(false);
    }

    /// Whether the writer's last record failed to be written: gatewayd then refuses
    /// operations (fail closed) until a record is written again.
    pub fn is_failing(&self) -> bool {
        self.shared.failing.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Hands `event` to the writer thread, which numbers it, chains it and commits it with
    /// the others queued (one transaction), within [`COMMIT_INTERVAL`]; nothing here waits
    /// for the database. Records keep the order of their appends.
    pub fn append(&self, event: Event) {
        let mut q = self.shared.lock();
        q.events.push(event);
        q.appended += 1;
        if q.idle {
            self.shared.changed.notify_all();
        }
    }

    /// The last record committed (after [`AuditLog::sync`]: the last appended that could
    /// be written).
    fn head(&self) -> Head {
        self.shared.lock().head.clone()
    }

    /// Walks the whole chain and reports the first problem. `db` is called once per batch
    /// of records, so appends go on while a long log is verified.
    pub fn verify<C: Deref<Target = Connection>>(&self, db: impl Fn() -> C) -> Result<AuditVerification, AuditError> {
        self.flush();
        let held = self.head();
        let anchor = read_anchor(&self.anchor);
        let anchored = anchor.as_ref().ok().and_then(Option::as_ref);
        let mut walk = Walk { expected: 1, prev: GENESIS.to_owned(), checked: 0, last: None };
        let mut problem = None;
        let mut cursor = i64::MIN;
        'walk: loop {
            let batch = rows_after(&db(), cursor, VERIFY_BATCH)?;
            if batch.is_empty() {
                break;
            }
            for (seq, decoded) in batch {
                cursor = seq;
                if let Some(p) = walk.step(seq, decoded, &[anchored, Some(&held)], || all_seqs(&db()))? {
                    problem = Some(p);
                    break 'walk;
                }
            }
        }
        let last_seq = walk.last.as_ref().map(|h| h.seq);
        if problem.is_none() {
            let bound = anchored.map_or(0, |a| a.seq).max(held.seq);
            let last = last_seq.unwrap_or(0);
            if bound > last {
                let what = if bound == last + 1 {
                    format!("record {bound} is missing")
                } else {
                    format!("records {} to {bound} are missing", last + 1)
                };
                problem = Some(AuditProblem {
                    seq: last + 1,
                    kind: AuditProblemKind::Truncated,
                    message: format!("{what} from the end of the log (the anchor names record {bound})"),
                });
            }
        }
        if problem.is_none() {
            let file = self.anchor.display();
            problem = match (&anchor, last_seq) {
                (Err(e), last) => Some(AuditProblem {
                    seq: last.unwrap_or(0),
                    kind: AuditProblemKind::Anchor,
                    message: format!("the anchor file {file} is unreadable ({e}): truncation cannot be checked"),
                }),
                (Ok(None), Some(last)) => Some(AuditProblem {
                    seq: last,
                    kind: AuditProblemKind::Anchor,
                    message: format!("the anchor file {file} is missing: truncation cannot be checked"),
                }),
                _ => None,
            };
        }
        Ok(AuditVerification {
            ok: problem.is_none(),
            records: walk.checked,
            last_seq,
            last_hash: walk.last.map(|h| h.hash),
            anchor_seq: anchored.map(|a| a.seq),
            problem,
        })
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            // It commits what is queued and anchors it before it stops.
            let _ = thread.join();
        }
    }
}

fn all_seqs(conn: &Connection) -> rusqlite::Result<Vec<i64>> {
    let mut stmt = conn.prepare("SELECT seq FROM audit ORDER BY seq")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    rows.collect()
}

/// The state of a walk along the chain.
struct Walk {
    expected: u64,
    prev: String,
    checked: u64,
    last: Option<Head>,
}

impl Walk {
    /// Checks the next row; `heads` are the known heads (anchor, memory) a record must match.
    fn step(
        &mut self,
        seq: i64,
        decoded: Result<AuditRecord, String>,
        heads: &[Option<&Head>],
        seqs: impl FnOnce() -> rusqlite::Result<Vec<i64>>,
    ) -> Result<Option<AuditProblem>, AuditError> {
        let expected = self.expected;
        let problem = |seq: u64, kind, message| Ok(Some(AuditProblem { seq, kind, message }));
        match u64::try_from(seq) {
            Ok(s) if s == expected => {}
            Ok(s) if s > expected => {
                let what = if s == expected + 1 {
                    format!("record {expected} is missing")
                } else {
                    format!("records {expected} to {} are missing", s - 1)
                };
                return problem(expected, AuditProblemKind::Missing, what);
            }
            _ => {
                let message = format!("a record numbered {seq} stands where record {expected} belongs");
                return problem(expected, AuditProblemKind::Edited, message);
            }
        }
        let record = match decoded {
            Ok(r) => r,
            Err(e) => {
                return problem(
                    expected,
                    AuditProblemKind::Edited,
                    format!("record {expected} has a field of the wrong type ({e})"),
                )
            }
        };
        if record_hash(&record) != record.hash {
            let mut moved = record.clone();
            for candidate in seqs()? {
                let Ok(candidate) = u64::try_from(candidate) else { continue };
                if candidate == expected {
                    continue;
                }
                moved.seq = candidate;
                if record_hash(&moved) == record.hash {
                    let message = format!("record {expected} was written as record {candidate}");
                    return problem(expected, AuditProblemKind::Reordered, message);
                }
            }
            let message = format!("record {expected} does not match its hash: a field was changed");
            return problem(expected, AuditProblemKind::Edited, message);
        }
        if record.prev_hash != self.prev {
            return match expected {
                1 => problem(1, AuditProblemKind::Edited, "record 1 does not chain from the genesis value".into()),
                _ => {
                    let before = expected - 1;
                    let message = format!("record {before} was rewritten: record {expected} chains from another hash");
                    problem(before, AuditProblemKind::Edited, message)
                }
            };
        }
        for head in heads.iter().flatten() {
            if head.seq == expected && head.hash != record.hash {
                let message = format!("record {expected} was rewritten: its hash differs from the anchored one");
                return problem(expected, AuditProblemKind::Edited, message);
            }
        }
        self.checked += 1;
        self.expected += 1;
        self.prev.clone_from(&record.hash);
        self.last = Some(Head { seq: record.seq, hash: record.hash });
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;

    /// A clock that starts at a fixed time and advances 1 s per reading.
    #[derive(Debug)]
    struct StepClock(AtomicI64);

    impl Clock for StepClock {
        fn now_ms(&self) -> i64 {
            self.0.fetch_add(1000, Ordering::SeqCst)
        }
    }

    const T0: i64 = 1_700_000_000_000;

    struct Fixture {
        dir: tempfile::TempDir,
        conn: Connection,
        log: AuditLog,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let conn = crate::db::open(&dir.path().join("t.db")).unwrap();
            let log =
                AuditLog::open(&conn, dir.path().join(ANCHOR_FILE), Box::new(StepClock(AtomicI64::new(T0)))).unwrap();
            Fixture { dir, conn, log }
        }

        fn reopen(self) -> Self {
            let Fixture { dir, conn, log } = self;
            drop(log);
            let log = AuditLog::open(&conn, dir.path().join(ANCHOR_FILE), Box::new(SystemClock)).unwrap();
            Fixture { dir, conn, log }
        }

        /// Appends a record and waits for the anchor, so tests see a settled data dir.
        fn append(&self, i: u64) -> AuditRecord {
            let event = Event {
                time_ms: self.log.now_ms(),
                agent: OWNER.into(),
                operation: if i % 2 == 1 { Operation::KeysSet } else { Operation::Read },
                target: format!("/api.example.com/items.d/{i}"),
                outcome: if matches!(i % 3, 0) { "not_found".into() } else { "ok".into() },
                upstream_status: (i % 2 != 1).then_some(200),
                bytes: i * 10,
                duration_ms: i,
                peer: (i == 2).then(|| "peer-1".to_owned()),
                key_id: (i % 2 == 1).then(|| format!("k{i}")),
            };
            self.log.append(event);
            self.log.flush();
            self.last()
        }

        /// The last record in the table.
        fn last(&self) -> AuditRecord {
            list(&self.conn, None, 1).unwrap().remove(0)
        }

        fn fill(&self, n: u64) {
            for i in 1..=n {
                self.append(i);
            }
        }

        fn verify(&self) -> AuditVerification {
            self.log.verify(|| &self.conn).unwrap()
        }

        fn problem(&self) -> (u64, AuditProblemKind) {
            let v = self.verify();
            assert!(!v.ok, "{v:?}");
            let p = v.problem.unwrap();
            (p.seq, p.kind)
        }

        fn sql(&self, sql: &str) {
            self.conn.execute_batch(sql).unwrap();
        }
    }

    fn event(target: &str) -> Event {
        Event {
            time_ms: T0,
            agent: OWNER.into(),
            operation: Operation::Read,
            target: target.into(),
            outcome: "ok".into(),
            upstream_status: None,
            bytes: 0,
            duration_ms: 0,
            peer: None,
            key_id: None,
        }
    }

    #[test]
    fn the_writer_commits_in_order_and_its_last_result_is_the_refusing_state() {
        let f = Fixture::new();
        let level = |c: &Connection| c.pragma_query_value(None, "synchronous", |r| r.get::<_, i64>(0)).unwrap();
        // Many appends at once: committed in batches, numbered and chained in append order.
        for i in 0..300 {
            f.log.append(event(&format!("/a/{i}")));
        }
        f.log.sync();
        let records = list(&f.conn, None, 1000).unwrap();
        assert_eq!(records.len(), 300);
        for (i, r) in records.iter().enumerate() {
            assert_eq!((r.seq, r.target.as_str()), (i as u64 + 1, format!("/a/{i}").as_str()));
        }
        assert_eq!(level(&f.conn), 2, "the caller's connection keeps synchronous=FULL");
        assert!(f.dir.path().join("t.db-wal").exists(), "the WAL the writer syncs is the database's");
        assert!(!f.log.is_failing());
        f.log.flush();
        assert!(f.verify().ok);

        // Inserts fail: the refusing state is on once the writer has tried.
        f.sql("CREATE TRIGGER full BEFORE INSERT ON audit BEGIN SELECT RAISE(FAIL, 'disk full'); END;");
        f.log.append(event("/lost"));
        f.log.sync();
        assert!(f.log.is_failing());
        // A batch with a record the trigger refuses and others it accepts: the others are
        // written, chained without the refused one, and the state follows the last.
        f.sql(
            "DROP TRIGGER full; CREATE TRIGGER full BEFORE INSERT ON audit WHEN NEW.target = '/bad' \
             BEGIN SELECT RAISE(FAIL, 'no'); END;",
        );
        {
            // Queue all three before the writer can take any (it waits on this lock).
            let mut q = f.log.shared.lock();
            for target in ["/b1", "/bad", "/b2"] {
                q.events.push(event(target));
                q.appended += 1;
            }
            f.log.shared.changed.notify_all();
        }
        f.log.sync();
        assert!(!f.log.is_failing());
        let tail: Vec<_> = list(&f.conn, Some(300), 10).unwrap().into_iter().map(|r| (r.seq, r.target)).collect();
        assert_eq!(tail, vec![(301, "/b1".to_owned()), (302, "/b2".to_owned())]);
        f.log.append(event("/bad"));
        f.log.sync();
        assert!(f.log.is_failing());
        f.sql("DROP TRIGGER full");
        f.log.append(event("/ok"));
        f.log.sync();
        assert!(!f.log.is_failing());
        f.log.flush();
        assert!(f.verify().ok, "{:?}", f.verify());
        assert_eq!(f.verify().records, 303);
    }

    #[test]
    fn a_chain_verifies_and_times_come_from_the_clock() {
        let f = Fixture::new();
        let empty = f.verify();
        assert!(empty.ok && empty.records == 0 && empty.last_seq.is_none(), "{empty:?}");
        f.fill(5);
        let v = f.verify();
        assert!(v.ok, "{v:?}");
        assert_eq!((v.records, v.last_seq, v.anchor_seq), (5, Some(5), Some(5)));
        let records = list(&f.conn, None, 100).unwrap();
        assert_eq!(records.len(), 5);
        assert_eq!(records[0].prev_hash, GENESIS);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.seq, i as u64 + 1);
            assert_eq!(r.time_ms, T0 + 1000 * i as i64, "the injected clock");
            assert_eq!(r.hash, record_hash(r));
            if i > 0 {
                assert_eq!(r.prev_hash, records[i - 1].hash);
            }
        }
        assert_eq!(v.last_hash.as_deref(), Some(records[4].hash.as_str()));
        // Paging: after a seq, and the last N.
        let seqs = |rs: Vec<AuditRecord>| rs.iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(list(&f.conn, Some(2), 2).unwrap()), vec![3, 4]);
        assert_eq!(seqs(list(&f.conn, None, 2).unwrap()), vec![4, 5]);
        assert_eq!(seqs(list(&f.conn, Some(5), 10).unwrap()), Vec::<u64>::new());
    }

    #[test]
    fn the_hash_encoding_is_pinned_and_unambiguous() {
        let r = AuditRecord {
            seq: 1,
            time_ms: T0,
            agent: "owner".into(),
            operation: "read".into(),
            target: "/api.example.com/models".into(),
            outcome: "ok".into(),
            upstream_status: Some(200),
            bytes: 42,
            duration_ms: 7,
            peer: None,
            key_id: None,
            prev_hash: GENESIS.into(),
            hash: String::new(),
        };
        // The same bytes as the module documentation describes, built independently.
        let mut input = b"nkmc-audit-v1\0".to_vec();
        input.extend(1u64.to_be_bytes());
        input.extend(T0.to_be_bytes());
        for s in ["owner", "read", "/api.example.com/models", "ok"] {
            input.extend((s.len() as u64).to_be_bytes());
            input.extend(s.as_bytes());
        }
        input.push(1);
        input.extend(200u16.to_be_bytes());
        input.extend(42u64.to_be_bytes());
        input.extend(7u64.to_be_bytes());
        input.extend([0, 0]);
        input.extend(64u64.to_be_bytes());
        input.extend(GENESIS.as_bytes());
        assert_eq!(record_hash(&r), hex::encode(Sha256::digest(&input)));
        // And pinned (computed with Python's hashlib from the documented encoding).
        assert_eq!(record_hash(&r), "880ae74b934ffb428ef6a8a74366af1b3927b5350150ebf6492d289001683e51");
        // Moving text between neighbouring fields changes the hash.
        let mut moved = r.clone();
        moved.agent = "owne".into();
        moved.operation = "rread".into();
        assert_ne!(record_hash(&moved), record_hash(&r));
        let mut none_vs_empty = r.clone();
        none_vs_empty.peer = Some(String::new());
        assert_ne!(record_hash(&none_vs_empty), record_hash(&r));
    }

    #[test]
    fn editing_any_field_of_any_record_is_found_at_that_record() {
        let other_hash = format!("'{}'", "1".repeat(64));
        let edits = [
            ("time_ms", "time_ms + 1"),
            ("agent", "'root'"),
            ("operation", "'stat'"),
            ("target", "target || 'x'"),
            ("outcome", "'permission_denied'"),
            ("upstream_status", "403"),
            ("bytes", "bytes + 1"),
            ("duration_ms", "duration_ms + 1"),
            ("peer", "'peer-2'"),
            ("key_id", "'kX'"),
            ("prev_hash", other_hash.as_str()),
            ("hash", other_hash.as_str()),
        ];
        for seq in 1..=4 {
            for (column, value) in &edits {
                let f = Fixture::new();
                f.fill(4);
                f.sql(&format!("UPDATE audit SET {column} = {value} WHERE seq = {seq}"));
                assert_eq!(f.problem(), (seq, AuditProblemKind::Edited), "{column} of record {seq}");
            }
            // A field of the wrong type.
            let f = Fixture::new();
            f.fill(4);
            f.sql(&format!("UPDATE audit SET bytes = 'many' WHERE seq = {seq}"));
            assert_eq!(f.problem(), (seq, AuditProblemKind::Edited));
            assert!(list(&f.conn, None, 10).is_err(), "a record that does not decode is an error, not skipped");
        }
    }

    #[test]
    fn a_record_rewritten_with_a_fresh_hash_is_found() {
        // In the middle: the next record's link breaks.
        let f = Fixture::new();
        f.fill(4);
        let mut r = list(&f.conn, Some(1), 1).unwrap().remove(0);
        r.outcome = "ok".into();
        r.target = "/innocent".into();
        let hash = record_hash(&r);
        f.sql(&format!("UPDATE audit SET target = '/innocent', outcome = 'ok', hash = '{hash}' WHERE seq = 2"));
        assert_eq!(f.problem(), (2, AuditProblemKind::Edited));
        // The last one: only the anchor knows.
        let f = Fixture::new();
        f.fill(4);
        let mut r = list(&f.conn, Some(3), 1).unwrap().remove(0);
        r.target = "/innocent".into();
        let hash = record_hash(&r);
        f.sql(&format!("UPDATE audit SET target = '/innocent', hash = '{hash}' WHERE seq = 4"));
        assert_eq!(f.problem(), (4, AuditProblemKind::Edited));
        // Also after a restart (no head in memory, only the anchor file).
        let f = f.reopen();
        assert_eq!(f.problem(), (4, AuditProblemKind::Edited));
    }

    #[test]
    fn deleting_a_middle_or_first_record_is_found() {
        let f = Fixture::new();
        f.fill(5);
        f.sql("DELETE FROM audit WHERE seq = 3");
        assert_eq!(f.problem(), (3, AuditProblemKind::Missing));
        let f = Fixture::new();
        f.fill(5);
        f.sql("DELETE FROM audit WHERE seq IN (2, 3, 4)");
        let v = f.verify();
        assert_eq!(v.records, 1);
        assert_eq!(v.problem.unwrap().message, "records 2 to 4 are missing");
        let f = Fixture::new();
        f.fill(3);
        f.sql("DELETE FROM audit WHERE seq = 1");
        assert_eq!(f.problem(), (1, AuditProblemKind::Missing));
    }

    #[test]
    fn deleting_the_last_records_is_found_by_the_anchor() {
        let f = Fixture::new();
        f.fill(5);
        f.sql("DELETE FROM audit WHERE seq >= 4");
        assert_eq!(f.problem(), (4, AuditProblemKind::Truncated));
        // After a restart, the anchor alone finds it, and new records keep the gap visible.
        let f = f.reopen();
        assert_eq!(f.problem(), (4, AuditProblemKind::Truncated));
        let r = f.append(6);
        assert_eq!(r.seq, 6, "numbering goes on after the anchor");
        assert_eq!(f.problem(), (4, AuditProblemKind::Missing));
        // Everything deleted.
        let f = Fixture::new();
        f.fill(2);
        f.sql("DELETE FROM audit");
        let f = f.reopen();
        assert_eq!(f.problem(), (1, AuditProblemKind::Truncated));
    }

    #[test]
    fn reordering_is_found() {
        let f = Fixture::new();
        f.fill(5);
        f.sql(
            "UPDATE audit SET seq = -1 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 3;
             UPDATE audit SET seq = 3 WHERE seq = -1;",
        );
        let v = f.verify();
        let p = v.problem.unwrap();
        assert_eq!((p.seq, p.kind), (2, AuditProblemKind::Reordered), "{}", p.message);
        assert_eq!(p.message, "record 2 was written as record 3");
    }

    #[test]
    fn the_anchor_follows_the_head_off_the_append_path() {
        let f = Fixture::new();
        for i in 0..50 {
            f.log.append(event(&format!("/a/{i}")));
        }
        f.log.flush();
        let last = f.last();
        let anchor = read_anchor(f.log.anchor_path()).unwrap().unwrap();
        assert_eq!(anchor, Head { seq: 50, hash: last.hash });
        // Dropping the log commits and anchors what is queued too.
        f.log.append(event("/a/50"));
        let Fixture { dir, conn, log } = f;
        drop(log);
        assert_eq!(read_anchor(&dir.path().join(ANCHOR_FILE)).unwrap().unwrap().seq, 51);
        assert_eq!(list(&conn, None, 1).unwrap()[0].seq, 51);
    }

    #[test]
    fn a_missing_or_broken_anchor_is_reported() {
        let f = Fixture::new();
        f.fill(2);
        std::fs::remove_file(f.log.anchor_path()).unwrap();
        assert_eq!(f.problem(), (2, AuditProblemKind::Anchor));
        std::fs::write(f.log.anchor_path(), b"{\"seq\": \"x\"}").unwrap();
        assert_eq!(f.problem(), (2, AuditProblemKind::Anchor));
        // The next append writes it again.
        f.append(3);
        assert!(f.verify().ok);
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(f.log.anchor_path()).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn agent_text_is_stored_as_data_and_capped() {
        let f = Fixture::new();
        let nasty = "/x\r\n{\"seq\":99}\u{1b}[2J'; DROP TABLE audit; --";
        let event = Event {
            time_ms: 0,
            agent: OWNER.into(),
            operation: Operation::Stat,
            target: nasty.into(),
            outcome: "ok".into(),
            upstream_status: None,
            bytes: 0,
            duration_ms: 0,
            peer: None,
            key_id: None,
        };
        let long = Event { target: "é".repeat(MAX_TEXT), ..event.clone() };
        f.log.append(event);
        f.log.append(long);
        f.log.sync();
        let records = list(&f.conn, None, 10).unwrap();
        assert_eq!(records[0].target, nasty);
        assert!(records[1].target.len() <= MAX_TEXT && records[1].target.chars().all(|c| c == 'é'));
        let line = serde_json::to_string(&records[0]).unwrap();
        assert!(!line.contains('\n') && !line.contains('\r') && !line.contains('\u{1b}'), "{line}");
        assert!(f.verify().ok);
    }
}
