//! Authorizing one request: the facts of the canonical request, one policy, explicit limits.
//!
//! ```text
//! service("api.example.test");   // or mount_root(true) when the request is at the mount root
//! path("/models.d/gpt-4o");       // canonical, inside the service
//! operation("read");
//! time(2025-01-01T00:00:00Z);     // injected: Request::now
//! allow if agent($a);             // trusts the authority block only
//! ```
//!
//! Before any Datalog runs, the token must verify with the root key, carry no third-party
//! block, not be revoked, and stay under structural caps; its evaluation cost is bounded
//! ([`COST_BUDGET`]) and then run under [`limits`].

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use agentfs::path::{Name, VPath};
use biscuit_auth::builder::{boolean, date, fact, string, Term};
use biscuit_auth::error::{Format, Logic, Token};
use biscuit_auth::macros::authorizer;
use biscuit_auth::{AuthorizerLimits, Biscuit, PublicKey};
use serde::{Deserialize, Serialize};

use super::cache::{Decision, VerifiedTokens};
use super::{token, unix_secs, AuthError};

/// Longest token accepted, in base64 characters.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Most blocks a token may have (the authority block included).
pub const MAX_BLOCKS: usize = 16;
/// Most facts a token may carry (all blocks together).
pub const MAX_TOKEN_FACTS: usize = 32;
/// Most rules a token may carry (all blocks together). nkmc's own blocks have none.
pub const MAX_TOKEN_RULES: usize = 8;
/// Most predicates in one rule body or check query.
pub const MAX_QUERY_PREDICATES: usize = 4;
/// Upper bound on the Datalog work a token may ask for, estimated before running it: for
/// every rule (times the iteration limit) and every check query, the product of how many
/// facts each body predicate can match (the fact limit for derived predicates), times one
/// plus the expression size. A token over it is refused without being evaluated.
pub const COST_BUDGET: u64 = 200_000;

/// The authorizer's runtime limits: fact count (token, authorizer and derived facts), rule
/// iterations, and wall-clock time of one evaluation.
pub fn limits() -> AuthorizerLimits {
    AuthorizerLimits { max_facts: 128, max_iterations: 16, max_time: Duration::from_millis(50) }
}

/// An operation on the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// See that a name exists: `stat`, a FUSE lookup, an entry in a listing. Implied by every
    /// allowed operation on its subtree and on the directories leading to it.
    Lookup,
    /// List a directory's entries (for a collection, the ids its GET returns).
    List,
    /// Read a file: its GET.
    Read,
    /// Write a file: its POST, PUT or PATCH.
    Write,
    /// Remove a file: its DELETE.
    Delete,
    /// Run a proxied tool (`nkmc run`).
    Run,
}

impl Op {
    /// Every operation, in display order.
    pub const ALL: [Op; 6] = [Op::Lookup, Op::List, Op::Read, Op::Write, Op::Delete, Op::Run];

    /// The name used in tokens and `--allow` (`read`).
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::List => "list",
            Op::Read => "read",
            Op::Write => "write",
            Op::Delete => "delete",
            Op::Run => "run",
        }
    }

    /// The operation of a name, if it is one.
    pub fn from_name(s: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.as_str() == s)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One request to authorize, in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The service (its domain, the first component of the virtual path); `None` at the
    /// mount root (the root itself and the generated files beside the services).
    pub service: Option<String>,
    /// The canonical path inside the service (or inside the mount root when `service` is
    /// `None`), starting with `/`: `/`, `/models.d/gpt-4o`.
    pub path: String,
    /// What is asked.
    pub operation: Op,
    /// The time of the request (injected, never read inside the logic).
    pub now: SystemTime,
}

impl Request {
    /// The request for `operation` on a canonical virtual path from the mount root, whose
    /// first component is a service: `/api.example.test/models` is service
    /// `api.example.test`, path `/models`; `/api.example.test` is its path `/`; `/` is the
    /// mount root. For a generated file beside the services (`/README.md`), use
    /// [`Request::at_root`].
    pub fn new(vpath: &VPath, operation: Op, now: SystemTime) -> Self {
        let names = vpath.names();
        let (service, rest) = match names.split_first() {
            Some((first, rest)) => (Some(first.as_str().to_owned()), rest),
            None => (None, names),
        };
        Request { service, path: join(rest), operation, now }
    }

    /// A request on a generated file at the mount root (`/README.md`): no service.
    pub fn at_root(path: &VPath, operation: Op, now: SystemTime) -> Self {
        Request { service: None, path: path.to_string(), operation, now }
    }
}

fn join(names: &[Name]) -> String {
    if names.is_empty() {
        return "/".to_owned();
    }
    names.iter().map(|n| format!("/{n}")).collect()
}

/// The agent a token was minted for (its authority block's `agent` fact).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AgentId(String);

impl AgentId {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a token and verifies its signatures with `root`, then applies the structural caps
/// that need no Datalog: size, block count, no third-party block.
pub(crate) fn parse_verified(root: &PublicKey, token: &str) -> Result<Biscuit, AuthError> {
    let token = token.trim();
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::TooLarge(token.len()));
    }
    let biscuit = Biscuit::from_base64(token, root).map_err(|e| match e {
        Token::Format(
            Format::Signature(_) | Format::SealedSignature | Format::UnknownPublicKey | Format::InvalidKey(_),
        ) => AuthError::NotIssuedHere,
        _ => AuthError::Malformed,
    })?;
    if biscuit.block_count() > MAX_BLOCKS {
        return Err(AuthError::TooComplex(format!("{} blocks, at most {MAX_BLOCKS}", biscuit.block_count())));
    }
    if biscuit.external_public_keys().iter().any(Option::is_some) {
        return Err(AuthError::ThirdParty);
    }
    Ok(biscuit)
}

/// Whether `token` was issued with `root` (signatures only: no expiry, no revocation).
pub fn verify(root: &PublicKey, token: &str) -> Result<(), AuthError> {
    parse_verified(root, token).map(|_| ())
}

/// Whether `token` may do `req`; the agent it was minted for. `revoked` answers whether any
/// of the token's revocation ids is on the revocation list (a failure to know must answer
/// `true`). Every refusal is an error; callers show them all as "not found".
pub fn authorize(
    root: &PublicKey,
    token: &str,
    req: &Request,
    revoked: &dyn Fn(&[Vec<u8>]) -> bool,
) -> Result<AgentId, AuthError> {
    run(root, token, req, revoked, true)
}

/// Whether `token` may see `path` of `service` (`None`: the mount root) at `now`: whether
/// some operation on it or below it may be allowed, so a listing shows the entry and a
/// lookup finds it. This is [`authorize`] for [`Op::Lookup`], as a yes or no.
pub fn visible(
    root: &PublicKey,
    token: &str,
    service: Option<&str>,
    path: &str,
    now: SystemTime,
    revoked: &dyn Fn(&[Vec<u8>]) -> bool,
) -> bool {
    let req = Request { service: service.map(str::to_owned), path: path.to_owned(), operation: Op::Lookup, now };
    authorize(root, token, &req, revoked).is_ok()
}

/// [`authorize`], with the `time` fact optional so a test can show that its absence denies.
pub(crate) fn run(
    root: &PublicKey,
    token: &str,
    req: &Request,
    revoked: &dyn Fn(&[Vec<u8>]) -> bool,
    with_time: bool,
) -> Result<AgentId, AuthError> {
    check_canonical(req)?;
    let biscuit = parse_verified(root, token)?;
    if revoked(&biscuit.revocation_identifiers()) {
        return Err(AuthError::Revoked);
    }
    evaluate(&biscuit, req, with_time)
}

/// [`authorize`] with the verified token taken from (or put in) `cache`: the signatures are
/// checked once per token string; revocation (`revoked` answers for hex ids, a failure to know
/// must answer `true`) on every call; the Datalog once per request and second of `req`'s
/// time (its `time` fact has a one-second resolution; see [`super::cache`]).
pub(crate) fn authorize_cached(
    cache: &VerifiedTokens,
    root: &PublicKey,
    token: &str,
    req: &Request,
    revoked: &dyn Fn(&[String]) -> bool,
) -> Result<AgentId, AuthError> {
    check_canonical(req)?;
    let verified = cache.get_or_verify(root, token)?;
    if revoked(&verified.revocation_ids) {
        return Err(AuthError::Revoked);
    }
    if let Some(decision) = verified.decisions.get(req) {
        return decision.result();
    }
    let result = evaluate(&verified.biscuit, req, true);
    if let Some(decision) = Decision::of(&result) {
        verified.decisions.keep(req, decision);
    }
    result
}

/// The Datalog of one request against a verified, unrevoked token.
fn evaluate(biscuit: &Biscuit, req: &Request, with_time: bool) -> Result<AgentId, AuthError> {
    let mut builder = authorizer!(r#"allow if agent($a);"#).set_limits(limits());
    let mut facts = vec![fact("path", &[string(&req.path)]), fact("operation", &[string(req.operation.as_str())])];
    match &req.service {
        Some(s) => facts.push(fact("service", &[string(s)])),
        None => facts.push(fact("mount_root", &[boolean(true)])),
    }
    if with_time {
        facts.push(fact("time", &[date_of(req.now)]));
    }
    for f in facts {
        builder = builder.fact(f).map_err(|e| AuthError::Internal(format!("authorizer fact: {e}")))?;
    }
    let mut authorizer = builder.build(biscuit).map_err(|_| AuthError::Malformed)?;
    check_cost(&authorizer.dump())?;

    match authorizer.authorize() {
        Ok(_) => {}
        Err(Token::RunLimit(_)) => return Err(AuthError::Limits),
        Err(Token::FailedLogic(Logic::Unauthorized { checks, .. } | Logic::NoMatchingPolicy { checks }))
            if !checks.is_empty() && checks.iter().all(is_expiry_failure) =>
        {
            return Err(AuthError::Expired)
        }
        Err(_) => return Err(AuthError::Denied),
    }
    let agents: Vec<(String,)> = authorizer.query("agent_name($a) <- agent($a)").map_err(|e| match e {
        Token::RunLimit(_) => AuthError::Limits,
        _ => AuthError::Denied,
    })?;
    match agents.as_slice() {
        [(name,)] => Ok(AgentId(name.clone())),
        _ => Err(AuthError::Denied),
    }
}

fn date_of(t: SystemTime) -> Term {
    date(&(SystemTime::UNIX_EPOCH + Duration::from_secs(unix_secs(t))))
}

fn is_expiry_failure(c: &biscuit_auth::error::FailedCheck) -> bool {
    match c {
        biscuit_auth::error::FailedCheck::Block(b) => b
            .rule
            .parse::<biscuit_auth::builder::Check>()
            .ok()
            .and_then(|check| token::recognise_expiry(&check))
            .is_some(),
        biscuit_auth::error::FailedCheck::Authorizer(_) => false,
    }
}

/// The request must be what [`Request::new`] makes of a canonical path.
fn check_canonical(req: &Request) -> Result<(), AuthError> {
    if !req.path.starts_with('/') {
        return Err(AuthError::InvalidRequest("the path must start with `/`"));
    }
    match VPath::parse(&req.path) {
        Ok(p) if p.to_string() == req.path => {}
        _ => return Err(AuthError::InvalidRequest("the path is not in canonical form")),
    }
    if let Some(s) = &req.service {
        match Name::parse(s) {
            Ok(n) if n.as_str() == s && !s.contains('/') => {}
            _ => return Err(AuthError::InvalidRequest("the service is not a single name")),
        }
    }
    Ok(())
}

type Dump = (
    Vec<biscuit_auth::builder::Fact>,
    Vec<biscuit_auth::builder::Rule>,
    Vec<biscuit_auth::builder::Check>,
    Vec<biscuit_auth::builder::Policy>,
);

/// Refuses a token whose Datalog could be expensive, before evaluating it.
fn check_cost((facts, rules, checks, policies): &Dump) -> Result<(), AuthError> {
    // The authorizer adds at most 4 facts of its own.
    let token_facts = facts.len().saturating_sub(4);
    if token_facts > MAX_TOKEN_FACTS {
        return Err(AuthError::TooComplex(format!("{token_facts} facts, at most {MAX_TOKEN_FACTS}")));
    }
    if rules.len() > MAX_TOKEN_RULES {
        return Err(AuthError::TooComplex(format!("{} rules, at most {MAX_TOKEN_RULES}", rules.len())));
    }
    let limits = limits();
    let mut counts: HashMap<(&str, usize), u64> = HashMap::new();
    for f in facts {
        *counts.entry((f.predicate.name.as_str(), f.predicate.terms.len())).or_default() += 1;
    }
    for r in rules {
        counts.insert((r.head.name.as_str(), r.head.terms.len()), limits.max_facts);
    }
    let query_cost = |q: &biscuit_auth::builder::Rule| -> Result<u64, AuthError> {
        if q.body.len() > MAX_QUERY_PREDICATES {
            return Err(AuthError::TooComplex(format!(
                "a query with {} predicates, at most {MAX_QUERY_PREDICATES}",
                q.body.len()
            )));
        }
        let matches = q.body.iter().fold(1u64, |acc, p| {
            acc.saturating_mul(counts.get(&(p.name.as_str(), p.terms.len())).copied().unwrap_or(0).max(1))
        });
        let size: usize = q.expressions.iter().map(|e| e.ops.len()).sum();
        Ok(matches.saturating_mul(1 + size as u64))
    };
    let mut cost = 0u64;
    for r in rules {
        cost = cost.saturating_add(query_cost(r)?.saturating_mul(limits.max_iterations));
    }
    for q in checks.iter().flat_map(|c| &c.queries).chain(policies.iter().flat_map(|p| &p.queries)) {
        cost = cost.saturating_add(query_cost(q)?);
    }
    if cost > COST_BUDGET {
        return Err(AuthError::TooComplex(format!("an estimated cost of {cost}, at most {COST_BUDGET}")));
    }
    Ok(())
}
