//! Discovery: a gateway started as a coordinator keeps a directory of online gateways (id,
//! name, public URL, advertised domains), each entry kept alive by heartbeats and dropped
//! when they stop. A listing is information only: peering still needs each owner's
//! `nkmc peers add` with a shared secret, so the coordinator can never add a peer.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::identity::{valid_id, valid_name};

/// Routes served on a coordinator's TCP listener (no token: the directory is public).
pub mod route {
    /// A gateway says it is online (and what it advertises).
    pub const HEARTBEAT: &str = "/coordinator/heartbeat";
    /// Who is online, optionally offering a domain.
    pub const GATEWAYS: &str = "/coordinator/gateways";
}

/// How long an entry lives without a heartbeat.
pub const EXPIRY: Duration = Duration::from_secs(90);
/// The most entries a coordinator keeps.
pub const MAX_ENTRIES: usize = 10_000;
/// The most domains one entry advertises.
pub const MAX_DOMAINS: usize = 1_000;

/// One gateway in the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listing {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its public URL (its TCP API).
    pub url: String,
    /// The domains it offers to lend.
    pub domains: Vec<String>,
    /// Seconds since its last heartbeat (set by the coordinator when listing).
    #[serde(default)]
    pub seen_secs_ago: u64,
}

impl Listing {
    /// Checks a heartbeat's fields.
    pub fn validate(&self) -> Result<(), String> {
        if !valid_id(&self.id) || !valid_name(&self.name) {
            return Err("coordinator: invalid id or name".into());
        }
        let url = url::Url::parse(&self.url).map_err(|e| format!("coordinator: invalid url: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || !url.username().is_empty() || url.password().is_some() {
            return Err("coordinator: the url must be http(s) without credentials".into());
        }
        if self.domains.len() > MAX_DOMAINS || self.domains.iter().any(|d| d.is_empty() || d.len() > 253) {
            return Err("coordinator: invalid domains".into());
        }
        Ok(())
    }
}

/// The directory.
#[derive(Debug, Default)]
pub struct Directory {
    entries: Mutex<BTreeMap<String, (Listing, Instant)>>,
}

impl Directory {
    /// Records a heartbeat at `now`.
    pub fn heartbeat(&self, listing: Listing, now: Instant) -> Result<(), String> {
        listing.validate()?;
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.retain(|_, (_, at)| now.saturating_duration_since(*at) < EXPIRY);
        if e.len() >= MAX_ENTRIES && !e.contains_key(&listing.id) {
            return Err("coordinator: the directory is full".into());
        }
        e.insert(listing.id.clone(), (listing, now));
        Ok(())
    }

    /// The gateways online at `now`, those offering `domain` when given, by id.
    pub fn online(&self, domain: Option<&str>, now: Instant) -> Vec<Listing> {
        let e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.values()
            .filter(|(_, at)| now.saturating_duration_since(*at) < EXPIRY)
            .filter(|(l, _)| domain.is_none_or(|d| l.domains.iter().any(|x| x == d)))
            .map(|(l, at)| Listing { seen_secs_ago: now.saturating_duration_since(*at).as_secs(), ..l.clone() })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(id: &str, domains: &[&str]) -> Listing {
        Listing {
            id: id.into(),
            name: id.to_uppercase(),
            url: format!("http://127.0.0.1:1/{id}"),
            domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            seen_secs_ago: 0,
        }
    }

    #[test]
    fn entries_live_by_heartbeat_and_filter_by_domain() {
        let d = Directory::default();
        let t0 = Instant::now();
        d.heartbeat(listing("a", &["x.test"]), t0).unwrap();
        d.heartbeat(listing("b", &["y.test"]), t0 + Duration::from_secs(60)).unwrap();
        let ids = |v: Vec<Listing>| v.into_iter().map(|l| l.id).collect::<Vec<_>>();
        assert_eq!(ids(d.online(None, t0 + Duration::from_secs(61))), vec!["a", "b"]);
        assert_eq!(ids(d.online(Some("x.test"), t0 + Duration::from_secs(61))), vec!["a"]);
        assert_eq!(ids(d.online(None, t0 + EXPIRY + Duration::from_secs(1))), vec!["b"], "a expired");
        let mut bad = listing("c", &[]);
        bad.url = "http://u:p@h/".into();
        assert!(d.heartbeat(bad, t0).is_err());
        assert!(d.heartbeat(listing("Bad Id", &[]), t0).is_err());
    }
}
