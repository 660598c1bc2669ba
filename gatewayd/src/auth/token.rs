//! Minting, attenuating, sealing and inspecting tokens. Only minting needs the root key;
//! the rest works offline from the token alone (the CLI calls these directly).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use agentfs::path::VPath;
pub use agentfs::wire::{TokenBlock, TokenInfo};
use biscuit_auth::builder::{date, set, string, BlockBuilder, Check, Op as ExprOp, Term};
use biscuit_auth::error::Token;
use biscuit_auth::macros::biscuit;
use biscuit_auth::{PublicKey, UnverifiedBiscuit};

use super::authorize::{Op, MAX_BLOCKS, MAX_TOKEN_BYTES};
use super::keys::RootKey;
use super::{rfc3339, unix_secs, AuthError};

/// Longest agent name.
pub const MAX_AGENT_LEN: usize = 64;

/// Checks an agent name: 1 to 64 characters among ASCII letters, digits and `. _ @ -`.
pub fn validate_agent(agent: &str) -> Result<(), AuthError> {
    let ok = !agent.is_empty()
        && agent.len() <= MAX_AGENT_LEN
        && agent.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'));
    if ok {
        Ok(())
    } else {
        Err(AuthError::InvalidAgent(agent.chars().take(MAX_AGENT_LEN + 1).collect()))
    }
}

/// A new token for `agent` (base64), signed with the root key. Its authority block is
/// `agent("NAME"); issued_at(NOW);`: every right, until attenuated.
pub fn mint(root: &RootKey, agent: &str, now: SystemTime) -> Result<String, AuthError> {
    validate_agent(agent)?;
    let issued = SystemTime::UNIX_EPOCH + Duration::from_secs(unix_secs(now));
    biscuit!(r#"agent({agent}); issued_at({issued});"#)
        .build(root.pair())
        .and_then(|b| b.to_base64())
        .map_err(|e| AuthError::Internal(format!("cannot build a token: {e}")))
}

/// What an `--allow` grants: operations on a service (or every service) under a path prefix.
///
/// Written `DOMAIN[:OPS][/PREFIX]`: `api.openai.com`, `api.openai.com:read/models`,
/// `localhost:8080:read,write/pets`, `*:read`. OPS is a comma-separated list of `read`,
/// `list`, `write`, `delete`, `run` (all of them when absent); `read` implies `list`, and
/// every operation implies `lookup` (finding names). PREFIX is a canonical path inside the
/// service (`/` when absent); it covers the name itself, `NAME.d/` and everything below,
/// `NAME?query` and `NAME.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    service: Option<String>,
    ops: BTreeSet<Op>,
    prefix: String,
}

impl Allow {
    /// An allow from its parts; `ops` is expanded (`lookup` always, `list` with `read`).
    pub fn new(service: Option<&str>, ops: &[Op], prefix: &str) -> Result<Self, AuthError> {
        let spec = format!("{}{prefix}", service.unwrap_or("*"));
        let service = match service {
            None | Some("*") => None,
            Some(d) => Some(parse_domain(d).map_err(|reason| invalid(&spec, reason))?),
        };
        let prefix = parse_prefix(prefix).map_err(|reason| invalid(&spec, reason))?;
        let mut set: BTreeSet<Op> = ops.iter().copied().collect();
        if set.is_empty() {
            return Err(invalid(&spec, "no operation".to_owned()));
        }
        set.insert(Op::Lookup);
        if set.contains(&Op::Read) {
            set.insert(Op::List);
        }
        Ok(Allow { service, ops: set, prefix })
    }

    /// The service's domain; `None` for every service (`*`).
    pub fn service(&self) -> Option<&str> {
        self.service.as_deref()
    }

    /// The operations granted, expanded.
    pub fn ops(&self) -> &BTreeSet<Op> {
        &self.ops
    }

    /// The canonical path prefix inside the service (`/` for all of it).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The operations as written (`lookup` left out, and `list` when `read` is there).
    fn written_ops(&self) -> Vec<Op> {
        self.ops
            .iter()
            .copied()
            .filter(|op| *op != Op::Lookup && !(*op == Op::List && self.ops.contains(&Op::Read)))
            .collect()
    }
}

impl fmt::Display for Allow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.service.as_deref().unwrap_or("*"))?;
        if self.ops.len() != Op::ALL.len() {
            let ops: Vec<&str> = self.written_ops().into_iter().map(Op::as_str).collect();
            write!(f, ":{}", ops.join(","))?;
        }
        if self.prefix != "/" {
            f.write_str(&self.prefix)?;
        }
        Ok(())
    }
}

impl FromStr for Allow {
    type Err = AuthError;

    fn from_str(spec: &str) -> Result<Self, AuthError> {
        let (head, prefix) = match spec.find('/') {
            Some(i) => (&spec[..i], &spec[i..]),
            None => (spec, "/"),
        };
        if head.ends_with(':') {
            return Err(invalid(spec, "an empty list of operations after `:`".to_owned()));
        }
        // The operations follow the last `:` when it is followed by letters (a port is digits).
        let (domain, ops) = match head.rsplit_once(':') {
            Some((d, ops)) if ops.chars().all(|c| c.is_ascii_alphabetic() || c == ',') => (d, Some(ops)),
            _ => (head, None),
        };
        let ops = match ops {
            None => Op::ALL.to_vec(),
            Some(list) => list
                .split(',')
                .map(|name| match Op::from_name(name) {
                    Some(op) if op != Op::Lookup => Ok(op),
                    _ => Err(invalid(spec, format!("unknown operation {name:?} (use read, list, write, delete, run)"))),
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let service = if domain == "*" { None } else { Some(domain) };
        Allow::new(service, &ops, prefix).map_err(|e| match e {
            AuthError::InvalidAllow { reason, .. } => invalid(spec, reason),
            other => other,
        })
    }
}

fn invalid(spec: &str, reason: String) -> AuthError {
    AuthError::InvalidAllow { spec: spec.chars().take(300).collect(), reason }
}

fn parse_domain(d: &str) -> Result<String, String> {
    let d = d.to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.len() <= agentfs::path::NAME_MAX
        && d.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        && !d.starts_with('.')
        && !d.starts_with('-');
    if ok {
        Ok(d)
    } else {
        Err(format!("{d:?} is not a domain (letters, digits, `.`, `-`, a `:port`), nor `*`"))
    }
}

fn parse_prefix(p: &str) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err("the path prefix must start with `/`".to_owned());
    }
    VPath::parse(p).map(|v| v.to_string()).map_err(|e| e.to_string())
}

/// The strict ancestors of a canonical prefix other than `/`: `/a/b` → `/`, `/a`.
fn ancestors(prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::from(["/".to_owned()]);
    let mut at = 0;
    while let Some(i) = prefix[at + 1..].find('/') {
        at += 1 + i;
        out.insert(prefix[..at].to_owned());
    }
    out
}

fn str_set<'a>(items: impl IntoIterator<Item = &'a str>) -> Term {
    set(items.into_iter().map(string).collect())
}

/// The check of one attenuation: the mount root may be listed, and a request must match one
/// of `allows` (see the module documentation of [`crate::auth`] for the Datalog).
pub(crate) fn allow_check(allows: &[Allow]) -> Result<Check, AuthError> {
    let mut src = String::from(r#"check if mount_root(true), path("/"), operation($op), {see}.contains($op)"#);
    let mut params: HashMap<String, Term> = HashMap::new();
    params.insert("see".into(), str_set([Op::List.as_str(), Op::Lookup.as_str()]));
    for (i, a) in allows.iter().enumerate() {
        let service = match &a.service {
            Some(d) => {
                params.insert(format!("s{i}"), string(d));
                format!("service({{s{i}}})")
            }
            None => "service($s)".to_owned(),
        };
        params.insert(format!("o{i}"), str_set(a.ops.iter().map(|op| op.as_str())));
        if a.prefix == "/" {
            src.push_str(&format!(" or {service}, operation($op), {{o{i}}}.contains($op)"));
            continue;
        }
        let p = &a.prefix;
        for (k, v) in [
            ("p", p.clone()),
            ("pd", format!("{p}.d")),
            ("pj", format!("{p}.json")),
            ("ps", format!("{p}/")),
            ("pds", format!("{p}.d/")),
            ("pq", format!("{p}?")),
        ] {
            params.insert(format!("{k}{i}"), string(&v));
        }
        src.push_str(&format!(
            " or {service}, operation($op), path($p), {{o{i}}}.contains($op), \
             $p == {{p{i}}} || $p == {{pd{i}}} || $p == {{pj{i}}} \
             || $p.starts_with({{ps{i}}}) || $p.starts_with({{pds{i}}}) || $p.starts_with({{pq{i}}})"
        ));
        params.insert(format!("a{i}"), set(ancestors(p).iter().map(|s| string(s)).collect()));
        src.push_str(&format!(" or {service}, operation($op), path($p), {{see}}.contains($op), {{a{i}}}.contains($p)"));
    }
    let mut check: Check = src.parse().map_err(|e| AuthError::Internal(format!("allow check: {e}")))?;
    for (name, term) in params {
        check.set(&name, term).map_err(|e| AuthError::Internal(format!("allow check: {e}")))?;
    }
    Ok(check)
}

/// `check if time($t), $t <= EXPIRY`.
pub(crate) fn expiry_check(expires: u64) -> Result<Check, AuthError> {
    let mut check: Check =
        "check if time($t), $t <= {expires}".parse().map_err(|e| AuthError::Internal(format!("expiry check: {e}")))?;
    check
        .set("expires", date(&(SystemTime::UNIX_EPOCH + Duration::from_secs(expires))))
        .map_err(|e| AuthError::Internal(format!("expiry check: {e}")))?;
    Ok(check)
}

fn parse_unverified(token: &str) -> Result<UnverifiedBiscuit, AuthError> {
    let token = token.trim();
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::TooLarge(token.len()));
    }
    UnverifiedBiscuit::from_base64(token).map_err(|_| AuthError::Malformed)
}

/// Appends a block that narrows `token` to `allows` (if any) and to `ttl` from `now` (if
/// given). Needs no key: attenuation is offline. The result never allows more than `token`.
pub fn attenuate(token: &str, allows: &[Allow], ttl: Option<Duration>, now: SystemTime) -> Result<String, AuthError> {
    if allows.is_empty() && ttl.is_none() {
        return Err(AuthError::NothingToAttenuate);
    }
    let parsed = parse_unverified(token)?;
    if parsed.block_count() >= MAX_BLOCKS {
        return Err(AuthError::TooComplex(format!("already {} blocks, at most {MAX_BLOCKS}", parsed.block_count())));
    }
    let mut block = BlockBuilder::new();
    if !allows.is_empty() {
        block = block.check(allow_check(allows)?).map_err(|e| AuthError::Internal(format!("block: {e}")))?;
    }
    if let Some(ttl) = ttl {
        let expires = unix_secs(now).saturating_add(ttl.as_secs());
        block = block.check(expiry_check(expires)?).map_err(|e| AuthError::Internal(format!("block: {e}")))?;
    }
    let appended = parsed.append(block).map_err(|e| match e {
        Token::AppendOnSealed | Token::AlreadySealed => AuthError::Sealed,
        _ => AuthError::Malformed,
    })?;
    appended.to_base64().map_err(|_| AuthError::Malformed)
}

/// Seals `token`: it stays valid, and no block can be appended any more.
pub fn seal(token: &str) -> Result<String, AuthError> {
    let parsed = parse_unverified(token)?;
    let sealed = parsed.seal().map_err(|e| match e {
        Token::AlreadySealed => AuthError::Sealed,
        _ => AuthError::Malformed,
    })?;
    sealed.to_base64().map_err(|_| AuthError::Malformed)
}

/// What `token` says, block by block. With `root`, `verified` tells whether its signatures
/// verify with that key; without, nothing is verified (offline inspection). `revoked` is
/// left unknown (`None`): only gatewayd knows its list.
pub fn inspect(token: &str, root: Option<&PublicKey>) -> Result<TokenInfo, AuthError> {
    let parsed = parse_unverified(token)?;
    let verified = match root {
        Some(key) => super::authorize::verify(key, token).is_ok(),
        None => false,
    };
    let ids = parsed.revocation_identifiers();
    let mut info = TokenInfo {
        agent: None,
        issued_at: None,
        expires_at: None,
        verified,
        revoked: None,
        blocks: Vec::with_capacity(parsed.block_count()),
    };
    for index in 0..parsed.block_count() {
        let source = parsed.print_block_source(index).map_err(|_| AuthError::Malformed)?;
        let builder = BlockBuilder::new().code(&source).map_err(|_| AuthError::Malformed)?;
        let mut block = TokenBlock {
            index: index as u32,
            revocation_id: ids.get(index).map(hex::encode).unwrap_or_default(),
            rights: Vec::new(),
            custom: false,
            source,
        };
        if index == 0 {
            describe_authority(&builder, &mut info, &mut block);
        } else {
            describe_attenuation(&builder, &mut info, &mut block);
        }
        info.blocks.push(block);
    }
    Ok(info)
}

fn describe_authority(b: &BlockBuilder, info: &mut TokenInfo, block: &mut TokenBlock) {
    let mut known = 0;
    for f in &b.facts {
        match (f.predicate.name.as_str(), f.predicate.terms.as_slice()) {
            ("agent", [Term::Str(name)]) if info.agent.is_none() => {
                info.agent = Some(name.clone());
                known += 1;
            }
            ("issued_at", [Term::Date(secs)]) if info.issued_at.is_none() => {
                info.issued_at = Some(*secs);
                known += 1;
            }
            _ => {}
        }
    }
    block.custom = known != b.facts.len() || !b.rules.is_empty() || !b.checks.is_empty() || !b.scopes.is_empty();
    let who = info.agent.as_deref().unwrap_or("?");
    block.rights.push(format!("agent {who}: every operation on every service"));
    if block.custom {
        block.rights.push("and more Datalog (see the source)".to_owned());
    }
}

fn describe_attenuation(b: &BlockBuilder, info: &mut TokenInfo, block: &mut TokenBlock) {
    block.custom = !b.facts.is_empty() || !b.rules.is_empty() || !b.scopes.is_empty();
    for check in &b.checks {
        if let Some(expires) = recognise_expiry(check) {
            info.expires_at = Some(info.expires_at.map_or(expires, |e| e.min(expires)));
            block.rights.push(format!("until {}", rfc3339(expires)));
        } else if let Some(allows) = recognise_allows(check) {
            let list: Vec<String> = allows.iter().map(ToString::to_string).collect();
            if list.is_empty() {
                block.rights.push("only listing the mount root".to_owned());
            } else {
                block.rights.push(format!("only {}", list.join(" or ")));
            }
        } else {
            block.custom = true;
        }
    }
    if block.custom {
        block.rights.push("custom Datalog (see the source)".to_owned());
    }
}

/// The expiry of a check nkmc generated with [`expiry_check`], if it is one.
pub(crate) fn recognise_expiry(check: &Check) -> Option<u64> {
    let [query] = check.queries.as_slice() else { return None };
    let [expr] = query.expressions.as_slice() else { return None };
    let expires = expr.ops.iter().find_map(|op| match op {
        ExprOp::Value(Term::Date(d)) => Some(*d),
        _ => None,
    })?;
    let regenerated = expiry_check(expires).ok()?;
    (regenerated.to_string() == check.to_string()).then_some(expires)
}

/// The allows of a check nkmc generated with [`allow_check`], if it is one: candidates are
/// read off the queries, then the check is regenerated from them and must be identical.
fn recognise_allows(check: &Check) -> Option<Vec<Allow>> {
    let mut allows = Vec::new();
    for query in check.queries.iter().skip(1) {
        let service = match query.body.first()?.terms.as_slice() {
            [Term::Str(d)] if query.body.first()?.name == "service" => Some(d.as_str()),
            [Term::Variable(_)] if query.body.first()?.name == "service" => None,
            _ => return None,
        };
        let ops: Vec<Op> = match query.expressions.first()?.ops.first()? {
            ExprOp::Value(Term::Set(names)) => names
                .iter()
                .map(|t| match t {
                    Term::Str(s) => Op::from_name(s),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?,
            _ => return None,
        };
        let prefix = match query.expressions.get(1).map(|e| e.ops.as_slice()) {
            None => "/".to_owned(),
            // The ancestors' alternative: derived from the previous one.
            Some([ExprOp::Value(Term::Set(_)), ..]) => continue,
            Some([ExprOp::Value(Term::Variable(_)), ExprOp::Value(Term::Str(p)), ..]) => p.clone(),
            Some(_) => return None,
        };
        let user_ops: Vec<Op> = ops.into_iter().filter(|op| *op != Op::Lookup).collect();
        allows.push(Allow::new(service, &user_ops, &prefix).ok()?);
    }
    let regenerated = allow_check(&allows).ok()?;
    (regenerated.to_string() == check.to_string()).then_some(allows)
}

/// Parses a duration such as `90s`, `15m`, `1h`, `2d` or `1h30m`.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("an empty duration".to_owned());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(format!("{s:?}: unknown unit {c:?} (use s, m, h, d, as in 1h30m)")),
        };
        let n: u64 = digits.parse().map_err(|_| format!("{s:?}: a number must come before {c:?}"))?;
        total = total.checked_add(n.checked_mul(unit).ok_or("too long")?).ok_or("too long")?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!("{s:?}: give a unit (s, m, h, d), as in 1h"));
    }
    Ok(Duration::from_secs(total))
}
