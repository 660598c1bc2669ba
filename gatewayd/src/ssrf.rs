//! The SSRF guard: which addresses outbound calls may reach.
//!
//! Cloud metadata addresses are always refused. Private, loopback, link-local and other
//! special ranges are refused for host names, so a public name that resolves (or is made to
//! resolve, by DNS rebinding) to an internal address is never reached; the resolver below is
//! the one the HTTP client connects with, so the address checked is the address used. A
//! service whose base URL the owner gave as an address or as `localhost` is private by the
//! owner's choice and may reach it (that is how local test servers and sidecars work).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// What kind of address an IP is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrClass {
    /// A cloud metadata service: never reached.
    Metadata,
    /// Loopback, private, link-local, CGNAT, unique-local, multicast, unspecified and other
    /// special-purpose ranges.
    Private,
    /// Anything else.
    Public,
}

/// Classifies an address (IPv4-mapped IPv6 addresses as their IPv4 address).
pub fn classify(ip: IpAddr) -> AddrClass {
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddrClass {
    let [a, b, c, _] = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254)
        || ip == Ipv4Addr::new(100, 100, 100, 200)
        || ip == Ipv4Addr::new(169, 254, 170, 2)
    {
        return AddrClass::Metadata;
    }
    let special = ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 192 && b == 0 && c == 0) // 192.0.0/24
        || (a == 198 && (b == 18 || b == 19)) // benchmarking 198.18/15
        || a >= 240; // reserved
    if special {
        AddrClass::Private
    } else {
        AddrClass::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddrClass {
    if ip == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) {
        return AddrClass::Metadata;
    }
    let first = ip.segments()[0];
    let special = ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (first & 0xffc0) == 0xfe80 // link local fe80::/10
        || (first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
        || (first == 0x64 && ip.segments()[1] == 0xff9b); // NAT64 (embeds IPv4)
    if special {
        AddrClass::Private
    } else {
        AddrClass::Public
    }
}

/// Host names the owner registered as private (`localhost`); shared with the registry.
pub type PrivateHosts = Arc<RwLock<HashSet<String>>>;

/// The resolver the outbound client connects with.
#[derive(Debug, Clone, Default)]
pub struct GuardedResolver {
    private_hosts: PrivateHosts,
}

impl GuardedResolver {
    /// A resolver that lets `private_hosts` reach private addresses.
    pub fn new(private_hosts: PrivateHosts) -> Self {
        GuardedResolver { private_hosts }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let private_hosts = self.private_hosts.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            match resolve(&private_hosts, &host).await {
                Ok(allowed) => {
                    let addrs: Addrs = Box::new(allowed.into_iter());
                    Ok(addrs)
                }
                Err(ResolveError::Lookup(e)) => Err(e.into()),
                Err(ResolveError::Refused(m)) => {
                    let err: Box<dyn std::error::Error + Send + Sync> = m.into();
                    Err(err)
                }
            }
        })
    }
}

/// Why [`resolve`] gave no address.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The name could not be resolved.
    #[error("{0}")]
    Lookup(#[from] std::io::Error),
    /// The name resolves only to addresses the guard refuses (the message starts with
    /// `ssrf guard:`).
    #[error("{0}")]
    Refused(String),
}

/// The addresses of `host` (port 0) that outbound calls may reach: never a metadata
/// address; a private one only when the owner registered `host` as private.
pub async fn resolve(private_hosts: &PrivateHosts, host: &str) -> Result<Vec<SocketAddr>, ResolveError> {
    let host = host.to_ascii_lowercase();
    let private_ok = private_hosts.read().map(|h| h.contains(&host)).unwrap_or(false);
    let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
    let allowed: Vec<SocketAddr> = found
        .iter()
        .copied()
        .filter(|a| match classify(a.ip()) {
            AddrClass::Metadata => false,
            AddrClass::Private => private_ok,
            AddrClass::Public => true,
        })
        .collect();
    if allowed.is_empty() {
        return Err(ResolveError::Refused(format!(
            "ssrf guard: {host} resolves only to private or metadata addresses, which a host name may not reach"
        )));
    }
    Ok(allowed)
}

/// Whether a base URL's host is private by the owner's explicit choice: an address literal
/// (other than metadata) or `localhost`.
pub fn explicitly_private(url: &url::Url) -> bool {
    let Some(host) = url.host() else { return false };
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => classify(IpAddr::V4(ip)) == AddrClass::Private,
        url::Host::Ipv6(ip) => classify(IpAddr::V6(ip)) == AddrClass::Private,
    }
}

/// Whether a URL's host is a metadata address (refused at registration and at every call).
pub fn is_metadata(url: &url::Url) -> bool {
    let Some(host) = url.host() else { return false };
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("metadata.google.internal"),
        url::Host::Ipv4(ip) => classify(IpAddr::V4(ip)) == AddrClass::Metadata,
        url::Host::Ipv6(ip) => classify(IpAddr::V6(ip)) == AddrClass::Metadata,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_class(url: &str) -> AddrClass {
        let u = url::Url::parse(url).unwrap();
        match u.host().unwrap() {
            url::Host::Ipv4(ip) => classify(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => classify(IpAddr::V6(ip)),
            url::Host::Domain(d) => panic!("{url} parsed as the name {d}"),
        }
    }

    #[test]
    fn encodings_of_loopback_and_metadata() {
        for u in [
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://0.0.0.0/",
            "http://[::]/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
        ] {
            assert_eq!(host_class(u), AddrClass::Private, "{u}");
        }
        for u in
            ["http://169.254.169.254/", "http://[::ffff:a9fe:a9fe]/", "http://[fd00:ec2::254]/", "http://0xa9fea9fe/"]
        {
            assert_eq!(host_class(u), AddrClass::Metadata, "{u}");
        }
    }

    #[test]
    fn special_ranges() {
        for ip in [
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.1.1",
            "192.0.0.8",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
        ] {
            assert_eq!(classify(ip.parse().unwrap()), AddrClass::Private, "{ip}");
        }
        for ip in ["8.8.8.8", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "1.1.1.1"] {
            assert_eq!(classify(ip.parse().unwrap()), AddrClass::Public, "{ip}");
        }
    }

    #[test]
    fn explicit_private_hosts() {
        let h = |u: &str| url::Url::parse(u).unwrap();
        assert!(explicitly_private(&h("http://127.0.0.1:8080/")));
        assert!(explicitly_private(&h("http://LOCALHOST/")));
        assert!(!explicitly_private(&h("http://localhost./")));
        assert!(!explicitly_private(&h("http://api.example.test/")));
        assert!(is_metadata(&h("http://169.254.169.254/latest")));
        assert!(is_metadata(&h("http://[::ffff:169.254.169.254]/")));
        assert!(!explicitly_private(&h("http://169.254.169.254/")));
    }
}
