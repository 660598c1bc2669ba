//! Lending rules: which domains this gateway lends, to which peers, for which operations,
//! at what price and rate. Nothing is lent without an allow rule; a deny rule that matches
//! wins over any allow (`*` rules apply to every domain).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::auth::Op;

/// Why a rule could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// The database failed.
    #[error("federation rules: database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The rule is not valid.
    #[error("federation rules: {0}")]
    Invalid(String),
}

/// What lending costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PricingMode {
    /// Free.
    Free,
    /// A fixed amount per request.
    PerRequest,
    /// An amount per thousand tokens of the upstream's reported usage (`usage.total_tokens`),
    /// bought in advance in top-ups of `[payments] prepaid_tokens` (see `payments::credit`).
    PerToken,
}

impl PricingMode {
    /// The name used on the command line and in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            PricingMode::Free => "free",
            PricingMode::PerRequest => "per-request",
            PricingMode::PerToken => "per-token",
        }
    }

    /// The mode of a name.
    pub fn parse(s: &str) -> Result<Self, RuleError> {
        match s {
            "free" => Ok(PricingMode::Free),
            "per-request" => Ok(PricingMode::PerRequest),
            "per-token" => Ok(PricingMode::PerToken),
            _ => Err(RuleError::Invalid(format!("pricing `{s}` is not free, per-request or per-token"))),
        }
    }
}

/// One rule, as stored and as shown by `nkmc rules list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The domain, or `*` for every domain.
    pub domain: String,
    /// Lend (`true`) or refuse (`false`).
    pub allow: bool,
    /// The peers it applies to (ids), or `["*"]` for every peer.
    pub peers: Vec<String>,
    /// The operations lent (an allow rule); `lookup` and `list` come with `read`.
    pub ops: Vec<Op>,
    /// The price.
    pub pricing: PricingMode,
    /// The amount per request or per thousand tokens, as a decimal string (`0.01`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    /// Requests per minute per peer (absent: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_min: Option<u32>,
}

impl Rule {
    /// Checks the rule's own consistency.
    pub fn validate(&self) -> Result<(), RuleError> {
        if self.domain.is_empty() || self.domain.contains('/') || self.domain.chars().any(char::is_whitespace) {
            return Err(RuleError::Invalid(format!("`{}` is not a domain (or `*`)", self.domain)));
        }
        if self.peers.is_empty() || self.peers.iter().any(|p| p.is_empty() || p.contains(',')) {
            return Err(RuleError::Invalid("--peers takes a comma-separated list of peer ids, or `*`".into()));
        }
        match (self.pricing, &self.amount) {
            (PricingMode::Free, Some(_)) => {
                return Err(RuleError::Invalid("free lending takes no --amount".into()));
            }
            (PricingMode::PerRequest | PricingMode::PerToken, None) => {
                return Err(RuleError::Invalid("paid lending needs --amount (a decimal, e.g. 0.01)".into()));
            }
            (_, Some(a)) if !is_decimal(a) => {
                return Err(RuleError::Invalid(format!("--amount `{a}` is not a positive decimal number")));
            }
            _ => {}
        }
        if self.allow && self.pricing != PricingMode::Free && self.ops.contains(&Op::Run) {
            return Err(RuleError::Invalid(
                "`run` is lent free or not at all (its output streams, so it cannot be settled after success); put it in a free rule".into(),
            ));
        }
        if self.rate_per_min == Some(0) {
            return Err(RuleError::Invalid("--rate 0/min lends nothing; use --deny".into()));
        }
        Ok(())
    }

    fn names(&self, peer: &str) -> bool {
        self.peers.iter().any(|p| p == "*" || p == peer)
    }

    fn covers(&self, domain: &str) -> bool {
        self.domain == "*" || self.domain == domain
    }

    fn lends(&self, op: Op) -> bool {
        let op = if matches!(op, Op::Lookup | Op::List) { Op::Read } else { op };
        self.ops.contains(&op) || (op == Op::Read && self.ops.contains(&Op::List))
    }
}

fn is_decimal(s: &str) -> bool {
    let mut parts = s.splitn(2, '.');
    let int = parts.next().unwrap_or("");
    let frac = parts.next().unwrap_or("0");
    !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && !frac.is_empty()
        && frac.bytes().all(|b| b.is_ascii_digit())
        && s.bytes().any(|b| (b'1'..=b'9').contains(&b))
}

/// What the rules say about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Lent, under this rule (its price and rate).
    Lend(Rule),
    /// Refused: a deny rule matches, or no allow rule lends this operation to this peer.
    Refuse,
}

/// The decision for `peer` asking `op` on `domain`: deny wins; the exact domain's allow
/// rule is preferred over a `*` one.
pub fn decide(rules: &[Rule], peer: &str, domain: &str, op: Op) -> Decision {
    let matching: Vec<&Rule> = rules.iter().filter(|r| r.covers(domain) && r.names(peer)).collect();
    if matching.iter().any(|r| !r.allow) {
        return Decision::Refuse;
    }
    let mut allows: Vec<&&Rule> = matching.iter().filter(|r| r.allow && r.lends(op)).collect();
    allows.sort_by_key(|r| r.domain == "*");
    match allows.first() {
        Some(r) => Decision::Lend((**r).clone()),
        None => Decision::Refuse,
    }
}

/// Whether any rule lends `domain` to `peer` at all (what `/federation/query` and the
/// announcement say).
pub fn lends_domain(rules: &[Rule], peer: &str, domain: &str) -> Option<Rule> {
    match decide(rules, peer, domain, Op::Read) {
        Decision::Lend(r) => Some(r),
        Decision::Refuse => {
            [Op::Write, Op::Delete, Op::Run].into_iter().find_map(|op| match decide(rules, peer, domain, op) {
                Decision::Lend(r) => Some(r),
                Decision::Refuse => None,
            })
        }
    }
}

/// Stores (replaces) the rule for its domain.
pub fn set(conn: &Connection, rule: &Rule) -> Result<(), RuleError> {
    rule.validate()?;
    let peers = serde_json::to_string(&rule.peers).map_err(|e| RuleError::Invalid(e.to_string()))?;
    let ops = serde_json::to_string(&rule.ops).map_err(|e| RuleError::Invalid(e.to_string()))?;
    conn.execute(
        "INSERT INTO rules (domain, allow, peers, ops, pricing, amount, rate_per_min) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(domain) DO UPDATE SET allow = ?2, peers = ?3, ops = ?4, pricing = ?5, amount = ?6, rate_per_min = ?7",
        params![rule.domain, rule.allow, peers, ops, rule.pricing.as_str(), rule.amount, rule.rate_per_min],
    )?;
    Ok(())
}

/// Every rule, by domain.
pub fn list(conn: &Connection) -> Result<Vec<Rule>, RuleError> {
    let mut stmt = conn
        .prepare_cached("SELECT domain, allow, peers, ops, pricing, amount, rate_per_min FROM rules ORDER BY domain")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, bool>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, Option<String>>(5)?,
            r.get::<_, Option<u32>>(6)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (domain, allow, peers, ops, pricing, amount, rate_per_min) = row?;
        let bad = |what: &str| RuleError::Invalid(format!("the stored rule for {domain} has an unreadable {what}"));
        out.push(Rule {
            peers: serde_json::from_str(&peers).map_err(|_| bad("peer list"))?,
            ops: serde_json::from_str(&ops).map_err(|_| bad("operation list"))?,
            pricing: PricingMode::parse(&pricing)?,
            domain,
            allow,
            amount,
            rate_per_min,
        });
    }
    Ok(out)
}

/// Removes the rule for `domain`; whether there was one.
pub fn remove(conn: &Connection, domain: &str) -> Result<bool, RuleError> {
    Ok(conn.execute("DELETE FROM rules WHERE domain = ?1", params![domain])? > 0)
}

/// The rule for one domain.
pub fn get(conn: &Connection, domain: &str) -> Result<Option<Rule>, RuleError> {
    let found: Option<String> =
        conn.query_row("SELECT domain FROM rules WHERE domain = ?1", params![domain], |r| r.get(0)).optional()?;
    Ok(match found {
        Some(_) => list(conn)?.into_iter().find(|r| r.domain == domain),
        None => None,
    })
}

/// Per-(peer, domain) request rates over a sliding minute, with an injected clock.
#[derive(Debug, Default)]
pub struct RateLimiter {
    windows: Mutex<HashMap<(String, String), Vec<Instant>>>,
}

impl RateLimiter {
    /// Counts a request at `now` if fewer than `per_min` were admitted in the minute before;
    /// otherwise refuses it and says how long until one slot frees.
    pub fn admit(&self, peer: &str, domain: &str, per_min: u32, now: Instant) -> Result<(), Duration> {
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let times = w.entry((peer.to_owned(), domain.to_owned())).or_default();
        let minute = Duration::from_secs(60);
        times.retain(|t| now.saturating_duration_since(*t) < minute);
        if times.len() >= per_min as usize {
            let oldest = times.first().copied().unwrap_or(now);
            return Err(minute.saturating_sub(now.saturating_duration_since(oldest)));
        }
        times.push(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(domain: &str, allow: bool, peers: &[&str], ops: &[Op]) -> Rule {
        Rule {
            domain: domain.into(),
            allow,
            peers: peers.iter().map(|p| (*p).to_owned()).collect(),
            ops: ops.to_vec(),
            pricing: PricingMode::Free,
            amount: None,
            rate_per_min: None,
        }
    }

    #[test]
    fn nothing_is_lent_without_a_rule_and_deny_wins() {
        assert_eq!(decide(&[], "a", "x.test", Op::Read), Decision::Refuse);
        let rules = vec![rule("x.test", true, &["*"], &[Op::Read]), rule("x.test", false, &["c"], &[])];
        assert!(matches!(decide(&rules, "a", "x.test", Op::Read), Decision::Lend(_)));
        assert!(matches!(decide(&rules, "a", "x.test", Op::List), Decision::Lend(_)), "read lends listing");
        assert_eq!(decide(&rules, "a", "x.test", Op::Write), Decision::Refuse, "only read is lent");
        assert_eq!(decide(&rules, "a", "x.test", Op::Delete), Decision::Refuse);
        assert_eq!(decide(&rules, "c", "x.test", Op::Read), Decision::Refuse, "deny wins");
        assert_eq!(decide(&rules, "a", "y.test", Op::Read), Decision::Refuse);
        let star = vec![rule("*", false, &["*"], &[]), rule("x.test", true, &["a"], &[Op::Read])];
        assert_eq!(decide(&star, "a", "x.test", Op::Read), Decision::Refuse, "a * deny wins too");
    }

    #[test]
    fn rules_are_validated() {
        let mut r = rule("x.test", true, &["*"], &[Op::Read]);
        assert!(r.validate().is_ok());
        r.pricing = PricingMode::PerRequest;
        assert!(r.validate().unwrap_err().to_string().contains("--amount"));
        r.amount = Some("0.01".into());
        assert!(r.validate().is_ok());
        for bad in ["-1", "1e3", "0", "0.00", ".5", "abc"] {
            r.amount = Some(bad.into());
            assert!(r.validate().is_err(), "{bad}");
        }
        let r = rule("a/b", true, &["*"], &[Op::Read]);
        assert!(r.validate().is_err());
    }

    #[test]
    fn rates_are_enforced_over_a_sliding_minute() {
        let limiter = RateLimiter::default();
        let t0 = Instant::now();
        for i in 0..3 {
            limiter.admit("a", "x.test", 3, t0 + Duration::from_secs(i)).unwrap();
        }
        let wait = limiter.admit("a", "x.test", 3, t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        limiter.admit("b", "x.test", 3, t0 + Duration::from_secs(10)).unwrap();
        limiter.admit("a", "x.test", 3, t0 + Duration::from_secs(60)).unwrap();
    }

    #[test]
    fn rules_round_trip_through_the_database() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(crate::db::RULES_TABLE).unwrap();
        let mut r = rule("x.test", true, &["a", "b"], &[Op::Read, Op::Write]);
        r.pricing = PricingMode::PerRequest;
        r.amount = Some("0.25".into());
        r.rate_per_min = Some(30);
        set(&conn, &r).unwrap();
        assert_eq!(list(&conn).unwrap(), vec![r.clone()]);
        assert_eq!(get(&conn, "x.test").unwrap(), Some(r));
        assert!(remove(&conn, "x.test").unwrap());
        assert!(!remove(&conn, "x.test").unwrap());
    }
}
