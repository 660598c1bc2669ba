//! The ledger: every charge, on both sides — `spent` when this gateway paid a peer,
//! `earned` when a peer paid it. A payment's nonce is unique per side, so a payment is never
//! taken (or counted) twice.
//!
//! A row is written **before** the money can move, as `pending`: the payer's when it sends a
//! signed authorization (counted against the budget until the authorization expires, since
//! the lender could submit it until then), the lender's when it accepts one (which claims
//! the nonce, across restarts too). It becomes `settled` with the transaction once the
//! facilitator settled it, or `void` when it provably was not taken (the lender's signed
//! refusal; the call failed before settlement).

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

/// Which side of a charge this gateway was on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// This gateway paid.
    Spent,
    /// This gateway was paid.
    Earned,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Spent => "spent",
            Direction::Earned => "earned",
        }
    }
}

/// Where a charge stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// The authorization is out (or being served); not known to be settled yet.
    Pending,
    /// Settled by the facilitator.
    Settled,
    /// Not taken: refused, or the call failed before settlement.
    Void,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Settled => "settled",
            State::Void => "void",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "settled" => State::Settled,
            "void" => State::Void,
            _ => State::Pending,
        }
    }
}

/// One charge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Milliseconds since the epoch.
    pub at_ms: i64,
    /// Paid or was paid.
    pub direction: Direction,
    /// Pending, settled or void.
    pub state: State,
    /// The other gateway.
    pub peer: String,
    /// The domain of the call.
    pub domain: String,
    /// The operation (`read`, `write`...).
    pub op: String,
    /// The virtual path.
    pub path: String,
    /// Atomic units of the asset, as a decimal string.
    pub amount: String,
    /// The same, in the asset's unit (`0.01`), for people.
    pub amount_display: String,
    /// The network.
    pub network: String,
    /// The token contract.
    pub asset: String,
    /// The payer's address.
    pub payer: String,
    /// The payee's address.
    pub pay_to: String,
    /// The payment's nonce (`0x` + 64 hex).
    pub nonce: String,
    /// The settlement's transaction hash (empty until settled).
    pub transaction: String,
    /// When the authorization expires (ms since the epoch): a pending payment counts until
    /// then.
    pub valid_until_ms: i64,
}

/// Records `entry` (normally `pending`); `false` when a row with the same direction and
/// nonce exists (the payment was already used).
pub fn claim(conn: &Connection, e: &Entry) -> Result<bool, rusqlite::Error> {
    let inserted = conn.execute(
        "INSERT INTO ledger (at_ms, direction, peer, domain, op, path, amount, amount_display, network, asset,
                             payer, pay_to, nonce, tx, state, valid_until_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
         ON CONFLICT (direction, nonce) DO NOTHING",
        params![
            e.at_ms,
            e.direction.as_str(),
            e.peer,
            e.domain,
            e.op,
            e.path,
            e.amount,
            e.amount_display,
            e.network,
            e.asset,
            e.payer,
            e.pay_to,
            e.nonce,
            e.transaction,
            e.state.as_str(),
            e.valid_until_ms
        ],
    )?;
    Ok(inserted == 1)
}

/// Marks the pending charge with `nonce` settled, with its transaction (and the payer the
/// facilitator names, when it names one).
pub fn settle(
    conn: &Connection,
    direction: Direction,
    nonce: &str,
    transaction: &str,
    payer: Option<&str>,
) -> Result<(), rusqlite::Error> {
    conn.execute(
        "UPDATE ledger SET state = 'settled', tx = ?3, payer = COALESCE(?4, payer)
         WHERE direction = ?1 AND nonce = ?2 AND state = 'pending'",
        params![direction.as_str(), nonce, transaction, payer],
    )?;
    Ok(())
}

/// Marks the pending charge with `nonce` void (not taken). Its nonce stays used.
pub fn void(conn: &Connection, direction: Direction, nonce: &str) -> Result<(), rusqlite::Error> {
    conn.execute(
        "UPDATE ledger SET state = 'void' WHERE direction = ?1 AND nonce = ?2 AND state = 'pending'",
        params![direction.as_str(), nonce],
    )?;
    Ok(())
}

/// The state of the charge with `nonce`, if there is one.
pub fn state_of(conn: &Connection, direction: Direction, nonce: &str) -> Result<Option<State>, rusqlite::Error> {
    let s: Option<String> = conn
        .query_row(
            "SELECT state FROM ledger WHERE direction = ?1 AND nonce = ?2",
            params![direction.as_str(), nonce],
            |r| r.get(0),
        )
        .optional()?;
    Ok(s.map(|s| State::parse(&s)))
}

/// The charges since `since_ms`, oldest first, at most `limit`.
pub fn list(conn: &Connection, since_ms: i64, limit: u32) -> Result<Vec<Entry>, rusqlite::Error> {
    let mut stmt = conn.prepare(
        "SELECT at_ms, direction, peer, domain, op, path, amount, amount_display, network, asset, payer, pay_to,
                nonce, tx, state, valid_until_ms
         FROM ledger WHERE at_ms >= ?1 ORDER BY id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![since_ms, limit], |r| {
        let direction: String = r.get(1)?;
        let state: String = r.get(14)?;
        Ok(Entry {
            at_ms: r.get(0)?,
            direction: if direction == "earned" { Direction::Earned } else { Direction::Spent },
            peer: r.get(2)?,
            domain: r.get(3)?,
            op: r.get(4)?,
            path: r.get(5)?,
            amount: r.get(6)?,
            amount_display: r.get(7)?,
            network: r.get(8)?,
            asset: r.get(9)?,
            payer: r.get(10)?,
            pay_to: r.get(11)?,
            nonce: r.get(12)?,
            transaction: r.get(13)?,
            state: State::parse(&state),
            valid_until_ms: r.get(15)?,
        })
    })?;
    rows.collect()
}

/// Atomic units committed since `since_ms` as of `now_ms`: settled payments, and pending
/// ones whose authorization has not expired.
pub fn spent_since(conn: &Connection, since_ms: i64, now_ms: i64) -> Result<u128, rusqlite::Error> {
    let mut stmt = conn.prepare(
        "SELECT amount FROM ledger WHERE direction = 'spent' AND at_ms >= ?1
           AND (state = 'settled' OR (state = 'pending' AND valid_until_ms > ?2))",
    )?;
    let amounts = stmt.query_map(params![since_ms, now_ms], |r| r.get::<_, String>(0))?;
    let mut sum: u128 = 0;
    for a in amounts {
        sum = sum.saturating_add(a?.parse().unwrap_or(u128::MAX));
    }
    Ok(sum)
}

/// The start of the UTC day `now_ms` falls in.
pub fn day_start_ms(now_ms: i64) -> i64 {
    now_ms - now_ms.rem_euclid(86_400_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(direction: Direction, nonce: &str, amount: &str, at_ms: i64) -> Entry {
        Entry {
            at_ms,
            direction,
            state: State::Pending,
            peer: "gw-b".into(),
            domain: "x.test".into(),
            op: "read".into(),
            path: "/x.test/items".into(),
            amount: amount.into(),
            amount_display: "0.01".into(),
            network: "base-sepolia".into(),
            asset: "0xa".into(),
            payer: "0xp".into(),
            pay_to: "0xq".into(),
            nonce: nonce.into(),
            transaction: String::new(),
            valid_until_ms: at_ms + 60_000,
        }
    }

    #[test]
    fn a_nonce_is_claimed_once_per_side_and_pending_payments_count_until_they_expire() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(crate::db::LEDGER_TABLE).unwrap();
        let day = 20_000 * 86_400_000;
        assert!(claim(&conn, &entry(Direction::Spent, "0x1", "10000", day - 1)).unwrap());
        assert!(claim(&conn, &entry(Direction::Spent, "0x2", "10000", day + 5)).unwrap());
        assert!(claim(&conn, &entry(Direction::Spent, "0x3", "2500", day + 6)).unwrap());
        assert!(!claim(&conn, &entry(Direction::Spent, "0x3", "2500", day + 7)).unwrap(), "a nonce once per side");
        assert!(claim(&conn, &entry(Direction::Earned, "0x3", "2500", day + 7)).unwrap());
        settle(&conn, Direction::Spent, "0x2", "0xtx", Some("0xpayer")).unwrap();
        // Today: 0x2 settled and 0x3 pending, while 0x3's authorization is valid.
        assert_eq!(spent_since(&conn, day_start_ms(day + 10), day + 10).unwrap(), 12_500);
        // Once it expired, a pending payment no longer counts; a settled one always does.
        assert_eq!(spent_since(&conn, day, day + 61_000).unwrap(), 10_000);
        void(&conn, Direction::Spent, "0x3").unwrap();
        assert_eq!(spent_since(&conn, day, day + 10).unwrap(), 10_000);
        assert_eq!(state_of(&conn, Direction::Spent, "0x3").unwrap(), Some(State::Void));
        // A void or settled charge is never settled or voided again.
        settle(&conn, Direction::Spent, "0x3", "0xlate", None).unwrap();
        assert_eq!(state_of(&conn, Direction::Spent, "0x3").unwrap(), Some(State::Void));
        let all = list(&conn, 0, 10).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!((all[1].transaction.as_str(), all[1].payer.as_str()), ("0xtx", "0xpayer"));
        assert_eq!(list(&conn, day, 1).unwrap()[0].nonce, "0x2");
        assert_eq!(day_start_ms(day + 12_345), day);
    }
}
