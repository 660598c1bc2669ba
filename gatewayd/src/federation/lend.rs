//! The lender's side: what a verified peer may do. A peer acts through a [`Grant`]: one
//! domain registered here, the operations a rule lends it — nothing at the mount root,
//! nothing in another service, nothing borrowed from a third gateway.

use agentfs::path::VPath;

use super::rules::{self, Decision};
use crate::auth::Op;
use crate::Gateway;

/// What a peer may do in this request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The peer's id.
    pub peer: String,
    /// The one domain it may touch.
    pub domain: String,
    /// The operations lent (`read` brings `lookup` and `list`).
    pub ops: Vec<Op>,
    /// The price of this call, when the rule lends it per request (a decimal of the asset's
    /// unit): it is served only once paid (x402).
    pub price: Option<String>,
    /// Per-token pricing: `price` is per thousand tokens, paid in advance by top-ups and
    /// used up by the tokens each answer reports.
    pub metered: bool,
    /// The rule's rate limit: counted at admission for free calls, once the payment is
    /// accepted for paid ones ([`count_rate`]).
    pub rate_per_min: Option<u32>,
}

impl Grant {
    /// Whether the grant covers `op` on `path`.
    pub fn allows(&self, path: &VPath, op: Op) -> bool {
        if path.service().map(|s| s.as_str()) != Some(self.domain.as_str()) {
            return false;
        }
        match op {
            Op::Lookup => !self.ops.is_empty(),
            Op::List | Op::Read => self.ops.iter().any(|o| matches!(o, Op::Read | Op::List)),
            Op::Write | Op::Delete | Op::Run => self.ops.contains(&op),
        }
    }
}

/// Why a peer's operation is refused before anything is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed or non-canonical request (400).
    Invalid(String),
    /// No such service here (404).
    Unknown(String),
    /// Not lent to this peer (403).
    NotLent,
    /// Over the rate (429), with seconds to wait.
    Rate(u64),
    /// Priced in a way that cannot be paid for this operation (per-token pricing, or a paid
    /// `run`), with the reason.
    Unpayable(String),
}

/// Parses the request's path: it must already be canonical (no `//`, `..`, `%2e`, trailing
/// `/`), inside a service.
pub fn canonical_path(raw: &str) -> Result<VPath, Refusal> {
    let path = VPath::parse(raw).map_err(|e| Refusal::Invalid(format!("the path is invalid: {e}")))?;
    if path.to_string() != raw {
        return Err(Refusal::Invalid("the path is not in canonical form".into()));
    }
    if path.service().is_none() {
        return Err(Refusal::Invalid("the path must be inside a service".into()));
    }
    Ok(path)
}

/// Checks `op` on `path` for `peer` against the registry and the rules, counts it against
/// the rate limit, and returns the grant to act under.
pub fn admit(gw: &Gateway, peer: &str, path: &VPath, op: Op, now: std::time::Instant) -> Result<Grant, Refusal> {
    let domain = path.service().map(|s| s.to_string()).unwrap_or_default();
    let local = gw.registry().get(&domain).is_some_and(|s| s.borrowed.is_none());
    if !local {
        return Err(Refusal::Unknown(domain));
    }
    let rules = { gw.federation.tables.rules(&gw.db()) }.map_err(|e| Refusal::Invalid(e.to_string()))?;
    let rule = match rules::decide(&rules, peer, &domain, op) {
        Decision::Lend(rule) => rule,
        Decision::Refuse => return Err(Refusal::NotLent),
    };
    let price = match rule.pricing {
        rules::PricingMode::Free => None,
        rules::PricingMode::PerRequest | rules::PricingMode::PerToken => rule.amount.clone(),
    };
    let metered = rule.pricing == rules::PricingMode::PerToken;
    let grant = Grant { peer: peer.to_owned(), domain, ops: rule.ops, price, metered, rate_per_min: rule.rate_per_min };
    if grant.price.is_none() {
        count_rate(gw, &grant, now)?;
    }
    Ok(grant)
}

/// Counts one call under `grant` against its rule's rate limit.
pub fn count_rate(gw: &Gateway, grant: &Grant, now: std::time::Instant) -> Result<(), Refusal> {
    match grant.rate_per_min {
        Some(per_min) => gw
            .federation
            .rates
            .admit(&grant.peer, &grant.domain, per_min, now)
            .map_err(|wait| Refusal::Rate(wait.as_secs().max(1))),
        None => Ok(()),
    }
}

/// Checks that the rules lend `run` of `domain`'s tools to `peer`, and counts the run
/// against the rate limit.
pub fn admit_run(gw: &Gateway, peer: &str, domain: &str, now: std::time::Instant) -> Result<(), Refusal> {
    let rules = { gw.federation.tables.rules(&gw.db()) }.map_err(|e| Refusal::Invalid(e.to_string()))?;
    let rule = match rules::decide(&rules, peer, domain, Op::Run) {
        Decision::Lend(rule) => rule,
        Decision::Refuse => return Err(Refusal::NotLent),
    };
    if let Some(per_min) = rule.rate_per_min {
        gw.federation.rates.admit(peer, domain, per_min, now).map_err(|wait| Refusal::Rate(wait.as_secs().max(1)))?;
    }
    if rule.pricing != rules::PricingMode::Free {
        return Err(Refusal::Unpayable(
            "`run` is lent free or not at all: a run's output streams, so it cannot be settled after success".into(),
        ));
    }
    Ok(())
}

/// The domains the rules lend to `peer`: services registered here, and domains whose tools
/// it may `run` with a pool key held here.
pub fn lent_domains(gw: &Gateway, peer: &str) -> Vec<String> {
    let Ok(rules) = gw.federation.tables.rules(&gw.db()) else { return Vec::new() };
    let mut domains: Vec<String> = gw
        .registry()
        .iter()
        .filter(|s| s.borrowed.is_none())
        .filter(|s| rules::lends_domain(&rules, peer, &s.domain).is_some())
        .map(|s| s.domain.clone())
        .collect();
    let keys = { gw.vault.list(&gw.db(), Some(crate::vault::KeyOwner::Pool)) }.unwrap_or_default();
    for k in keys {
        if !domains.contains(&k.domain) && matches!(rules::decide(&rules, peer, &k.domain, Op::Run), Decision::Lend(_))
        {
            domains.push(k.domain);
        }
    }
    domains.sort();
    domains
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_reaches_one_domain_and_the_lent_operations_only() {
        let g = Grant {
            peer: "a".into(),
            domain: "x.test".into(),
            ops: vec![Op::Read],
            price: None,
            metered: false,
            rate_per_min: None,
        };
        let p = |s: &str| VPath::parse(s).unwrap();
        assert!(g.allows(&p("/x.test/items"), Op::Read));
        assert!(g.allows(&p("/x.test"), Op::List));
        assert!(g.allows(&p("/x.test/items.d/1"), Op::Lookup));
        assert!(!g.allows(&p("/x.test/items"), Op::Write));
        assert!(!g.allows(&p("/x.test/items.d/1"), Op::Delete));
        assert!(!g.allows(&p("/y.test/items"), Op::Read));
        assert!(!g.allows(&p("/"), Op::List));
        assert!(!g.allows(&p("/README.md"), Op::Read));
    }

    #[test]
    fn only_canonical_paths_inside_a_service_are_accepted() {
        assert!(canonical_path("/x.test/items").is_ok());
        // `%2e%2e` is a literal name (no decoding happens), so it cannot climb: it is canonical.
        assert_eq!(canonical_path("/x.test/%2e%2e/y").unwrap().names().len(), 3);
        for bad in ["/", "//x.test/items", "/x.test/../y.test", "/x.test/items/", "x.test/items", "/x.test/./y"] {
            assert!(canonical_path(bad).is_err(), "{bad}");
        }
    }
}
