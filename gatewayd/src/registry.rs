//! Registered services: each one's spec, base URL and tree, loaded once and kept in memory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use agentfs::path::Name;
use agentfs::spec::{self, ServiceSpec, SpecError};
use agentfs::tree::Tree;
use agentfs::wire::{DocumentFormat, RegisterRequest, ServiceInfo};
use rusqlite::{params, Connection};
use url::Url;

use crate::ssrf::PrivateHosts;

/// Why a registration failed or the registry could not load.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The document could not be ingested.
    #[error("registry: {0}")]
    Spec(#[from] SpecError),
    /// The domain is not a valid folder name / host.
    #[error("registry: `{0}` is not a valid domain (a host name, optionally with :port)")]
    InvalidDomain(String),
    /// The base URL is unusable.
    #[error("registry: base URL `{url}`: {why}")]
    InvalidBaseUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// No such service.
    #[error("registry: no service `{0}` is registered (see `nkmc services list`)")]
    Unknown(String),
    /// The database failed.
    #[error("registry: database error: {0}")]
    Db(#[from] rusqlite::Error),
    /// A stored spec no longer reads (written by another version).
    #[error("registry: the stored spec of {domain} is unreadable: {message}")]
    Stored {
        /// The service.
        domain: String,
        /// The decode error.
        message: String,
    },
}

/// One registered service.
#[derive(Debug)]
pub struct Service {
    /// The folder name and identity of the service.
    pub domain: String,
    /// Every request goes to this origin, under this path.
    pub base_url: Url,
    /// The ingested document.
    pub spec: ServiceSpec,
    /// The tree, built once.
    pub tree: Tree,
    /// The generated `skill.md`, built once (it is listed, stat'ed and read often).
    pub skill: String,
    /// Set when the service is not registered here but borrowed from peers: who lends it.
    pub borrowed: Option<Vec<crate::federation::borrow::Offer>>,
}

impl Service {
    fn new(domain: String, base_url: Url, spec: ServiceSpec) -> Self {
        let tree = Tree::build(&spec);
        let skill = agentfs::skill::generate(&domain, &spec, &tree);
        Service { domain, base_url, spec, tree, skill, borrowed: None }
    }

    /// A service only peers can serve: its tree from the lender's spec, its `skill.md`
    /// saying whose access it uses and at what price. It has no origin of its own here.
    pub fn borrowed(domain: String, spec: ServiceSpec, offers: Vec<crate::federation::borrow::Offer>) -> Self {
        let tree = Tree::build(&spec);
        let mut skill = agentfs::skill::generate(&domain, &spec, &tree);
        skill.push_str(&crate::federation::borrow::skill_section(&offers));
        #[allow(clippy::expect_used)] // a constant URL
        let base_url = Url::parse("nkmc-peer://borrowed/").expect("a valid URL");
        Service { domain, base_url, spec, tree, skill, borrowed: Some(offers) }
    }

    /// What listings say of it.
    pub fn info(&self) -> ServiceInfo {
        ServiceInfo {
            domain: self.domain.clone(),
            base_url: self.base_url.to_string(),
            title: self.spec.title.clone(),
            operations: self.spec.operations.len(),
        }
    }
}

/// All services, by domain.
#[derive(Debug, Default)]
pub struct Registry {
    services: BTreeMap<String, Arc<Service>>,
    /// Hosts the owner registered as private (`localhost`), shared with the SSRF guard.
    private_hosts: PrivateHosts,
}

impl Registry {
    /// Loads every stored service and builds its tree.
    pub fn load(conn: &Connection, private_hosts: PrivateHosts) -> Result<Self, RegistryError> {
        let mut stmt = conn.prepare("SELECT domain, base_url, spec_json FROM services")?;
        let rows =
            stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?;
        let mut services = BTreeMap::new();
        for row in rows {
            let (domain, base, json) = row?;
            let stored = |message: String| RegistryError::Stored { domain: domain.clone(), message };
            let spec: ServiceSpec = serde_json::from_str(&json).map_err(|e| stored(e.to_string()))?;
            let base_url = Url::parse(&base).map_err(|e| stored(e.to_string()))?;
            note_private(&private_hosts, &base_url);
            services.insert(domain.clone(), Arc::new(Service::new(domain, base_url, spec)));
        }
        Ok(Registry { services, private_hosts })
    }

    /// Parses, validates and stores a service; replaces one of the same domain.
    /// `found_at` is where a discovered document came from: relative server URLs (`/v3`)
    /// resolve against it, and with no server at all its origin is the base URL.
    pub fn register(
        &mut self,
        conn: &Connection,
        document: &str,
        found_at: Option<&Url>,
        req: &RegisterRequest,
    ) -> Result<ServiceInfo, RegistryError> {
        let spec = match req.format {
            Some(DocumentFormat::Skill) => agentfs::skill::parse(document)?,
            Some(DocumentFormat::Openrpc) => spec::parse_openrpc(document.as_bytes())?,
            Some(DocumentFormat::Openapi) => spec::parse_openapi(document.as_bytes())?,
            None => spec::parse_any(document.as_bytes())?,
        };
        let base = match (&req.base_url, spec.servers.first(), found_at) {
            (Some(b), _, _) => b.clone(),
            (None, Some(server), Some(at)) => at.join(server).map(|u| u.to_string()).unwrap_or_else(|_| server.clone()),
            (None, Some(server), None) => server.clone(),
            (None, None, Some(at)) => at.join("/").map(|u| u.to_string()).unwrap_or_else(|_| at.to_string()),
            (None, None, None) => return Err(SpecError::NoServer.into()),
        };
        let base_url = parse_base_url(&base)?;
        let domain = match &req.domain {
            Some(d) => validate_domain(d)?,
            None => domain_of(&base_url)?,
        };
        let json = serde_json::to_string(&spec)
            .map_err(|e| RegistryError::Stored { domain: domain.clone(), message: e.to_string() })?;
        conn.execute(
            "INSERT INTO services (domain, base_url, title, spec_json, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (domain) DO UPDATE SET base_url = excluded.base_url, title = excluded.title, spec_json = excluded.spec_json",
            params![domain, base_url.as_str(), spec.title, json, unix_now()],
        )?;
        note_private(&self.private_hosts, &base_url);
        let service = Arc::new(Service::new(domain.clone(), base_url, spec));
        let info = service.info();
        self.services.insert(domain, service);
        Ok(info)
    }

    /// Removes a service registered here (a borrowed one goes when its lenders stop
    /// offering it).
    pub fn remove(&mut self, conn: &Connection, domain: &str) -> Result<(), RegistryError> {
        if self.services.get(domain).is_none_or(|s| s.borrowed.is_some()) {
            return Err(RegistryError::Unknown(domain.to_owned()));
        }
        self.services.remove(domain);
        conn.execute("DELETE FROM services WHERE domain = ?1", params![domain])?;
        Ok(())
    }

    /// Shows `service`, borrowed from peers, unless a service of that domain is registered
    /// here (a local registration always wins); replaces an earlier borrowed one.
    pub fn insert_borrowed(&mut self, service: Service) {
        match self.services.get(&service.domain) {
            Some(existing) if existing.borrowed.is_none() => {}
            _ => {
                self.services.insert(service.domain.clone(), Arc::new(service));
            }
        }
    }

    /// Forgets borrowed services no peer offers any more (`offered` answers per domain).
    pub fn drop_borrowed(&mut self, offered: impl Fn(&str) -> bool) {
        self.services.retain(|domain, s| s.borrowed.is_none() || offered(domain));
    }

    /// The service of `domain`.
    pub fn get(&self, domain: &str) -> Option<Arc<Service>> {
        self.services.get(domain).cloned()
    }

    /// Every service, sorted by domain.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    /// Number of services.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Whether none is registered.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

/// A `localhost` base URL lets that name reach loopback through the SSRF guard.
fn note_private(hosts: &PrivateHosts, url: &Url) {
    if crate::ssrf::explicitly_private(url) {
        if let (Some(host), Ok(mut set)) = (url.host_str(), hosts.write()) {
            set.insert(host.to_ascii_lowercase());
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// An absolute http(s) URL without credentials, query or fragment.
fn parse_base_url(s: &str) -> Result<Url, RegistryError> {
    let bad = |why: &str| RegistryError::InvalidBaseUrl { url: s.to_owned(), why: why.to_owned() };
    let url = Url::parse(s).map_err(|e| match e {
        url::ParseError::RelativeUrlWithoutBase => bad("is relative; pass an absolute --base-url"),
        e => bad(&e.to_string()),
    })?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(bad("only http and https are supported"));
    }
    if url.host_str().is_none() {
        return Err(bad("has no host"));
    }
    if crate::ssrf::is_metadata(&url) {
        return Err(bad("is a cloud metadata address, which nkmc never calls"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry credentials; store them with `nkmc keys set`"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not carry a query or fragment"));
    }
    Ok(url)
}

/// `host` or `host:port` of a URL (the port only when not the scheme's default).
fn domain_of(url: &Url) -> Result<String, RegistryError> {
    let host = url.host_str().unwrap_or_default();
    let d = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    validate_domain(&d)
}

/// A domain is a lower-case host name or address, optionally with `:port`.
fn validate_domain(d: &str) -> Result<String, RegistryError> {
    let bad = || RegistryError::InvalidDomain(d.to_owned());
    let d = d.to_ascii_lowercase();
    Name::parse(&d).map_err(|_| bad())?;
    let ok_chars = d.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if d.is_empty() || !ok_chars || d.starts_with('.') || d.starts_with('-') {
        return Err(bad());
    }
    let parsed = Url::parse(&format!("http://{d}/")).map_err(|_| bad())?;
    if parsed.host_str().is_none() {
        return Err(bad());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_and_base_urls() {
        assert_eq!(domain_of(&parse_base_url("https://api.openai.com/v1").unwrap()).unwrap(), "api.openai.com");
        assert_eq!(domain_of(&parse_base_url("http://127.0.0.1:8080/").unwrap()).unwrap(), "127.0.0.1:8080");
        assert!(parse_base_url("/v3").unwrap_err().to_string().contains("relative"));
        assert!(parse_base_url("file:///etc/passwd").is_err());
        assert!(parse_base_url("https://u:p@x.example/").is_err());
        assert!(parse_base_url("http://169.254.169.254/latest/meta-data/")
            .unwrap_err()
            .to_string()
            .contains("metadata"));
        for bad in ["..", "a/b", "", "-x", "a b", "x\0"] {
            assert!(validate_domain(bad).is_err(), "{bad:?}");
        }
        assert_eq!(validate_domain("API.Example.test").unwrap(), "api.example.test");
    }
}
