//! The ledger: every charge, on both sides — `spent` when this gateway paid a peer,
//! `earned` when a peer paid it. One row per settled payment; the payment's nonce is unique
//! per side, so a payment is never counted (or taken) twice.

use rusqlite::{params, Connection};
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

/// One charge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Milliseconds since the epoch.
    pub at_ms: i64,
    /// Paid or was paid.
    pub direction: Direction,
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
    /// The settlement's transaction hash.
    pub transaction: String,
}

/// Records `entry`; a second entry with the same direction and nonce is refused.
pub fn record(conn: &Connection, e: &Entry) -> Result<(), rusqlite::Error> {
    conn.execute(
        "INSERT INTO ledger (at_ms, direction, peer, domain, op, path, amount, amount_display, network, asset,
                             payer, pay_to, nonce, tx)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
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
            e.transaction
        ],
    )?;
    Ok(())
}

/// Whether a payment with `nonce` was already taken (`earned`).
pub fn nonce_taken(conn: &Connection, nonce: &str) -> Result<bool, rusqlite::Error> {
    conn.query_row("SELECT EXISTS (SELECT 1 FROM ledger WHERE direction = 'earned' AND nonce = ?1)", [nonce], |r| {
        r.get(0)
    })
}

/// The entries since `since_ms`, oldest first, at most `limit`.
pub fn list(conn: &Connection, since_ms: i64, limit: u32) -> Result<Vec<Entry>, rusqlite::Error> {
    let mut stmt = conn.prepare(
        "SELECT at_ms, direction, peer, domain, op, path, amount, amount_display, network, asset, payer, pay_to,
                nonce, tx
         FROM ledger WHERE at_ms >= ?1 ORDER BY id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![since_ms, limit], |r| {
        let direction: String = r.get(1)?;
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
        })
    })?;
    rows.collect()
}

/// Atomic units spent since `since_ms`.
pub fn spent_since(conn: &Connection, since_ms: i64) -> Result<u128, rusqlite::Error> {
    let mut stmt = conn.prepare("SELECT amount FROM ledger WHERE direction = 'spent' AND at_ms >= ?1")?;
    let amounts = stmt.query_map([since_ms], |r| r.get::<_, String>(0))?;
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
            transaction: "0xt".into(),
        }
    }

    #[test]
    fn a_nonce_is_taken_once_per_side_and_spending_sums_by_day() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(crate::db::LEDGER_TABLE).unwrap();
        let day = 20_000 * 86_400_000;
        record(&conn, &entry(Direction::Spent, "0x1", "10000", day - 1)).unwrap();
        record(&conn, &entry(Direction::Spent, "0x2", "10000", day + 5)).unwrap();
        record(&conn, &entry(Direction::Spent, "0x3", "2500", day + 6)).unwrap();
        assert!(record(&conn, &entry(Direction::Spent, "0x3", "2500", day + 7)).is_err());
        record(&conn, &entry(Direction::Earned, "0x3", "2500", day + 7)).unwrap();
        assert!(nonce_taken(&conn, "0x3").unwrap());
        assert!(!nonce_taken(&conn, "0x1").unwrap());
        assert_eq!(day_start_ms(day + 12_345), day);
        assert_eq!(spent_since(&conn, day_start_ms(day + 10)).unwrap(), 12_500);
        assert_eq!(list(&conn, 0, 10).unwrap().len(), 4);
        assert_eq!(list(&conn, day, 1).unwrap()[0].nonce, "0x2");
    }
}
