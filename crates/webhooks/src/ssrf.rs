//! The SSRF guard: endpoints may only reach public addresses unless config allows a
//! network. The check runs in the resolver the HTTP client dials through, so the
//! addresses checked are the addresses connected to (no DNS-rebinding window).

use hyper_util::client::legacy::connect::dns::Name;
use ipnet::IpNet;
use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

/// Which addresses endpoints may connect to.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allowed: Arc<Vec<IpNet>>,
}

/// An address the policy refuses.
#[derive(Debug, thiserror::Error)]
#[error(
    "{host} resolves to {addr}, a {kind} address; allow it in webhooks.allow_networks to deliver there"
)]
pub struct Refused {
    /// The host name or literal in the URL.
    pub host: String,
    /// The refused address.
    pub addr: IpAddr,
    /// Why it is not public, e.g. `loopback`.
    pub kind: &'static str,
}

impl AddressPolicy {
    /// A policy that also allows `allowed` networks.
    pub fn new(allowed: Vec<IpNet>) -> Self {
        Self {
            allowed: Arc::new(allowed),
        }
    }

    /// Ok if `addr` is public or in an allowed network.
    pub fn check(&self, host: &str, addr: IpAddr) -> Result<(), Refused> {
        let addr = canonical(addr);
        match non_public_kind(addr) {
            Some(kind) if !self.allowed.iter().any(|net| net.contains(&addr)) => Err(Refused {
                host: host.to_string(),
                addr,
                kind,
            }),
            _ => Ok(()),
        }
    }
}

/// IPv4-mapped IPv6 (`::ffff:127.0.0.1`) is the IPv4 address it maps.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Why an address is not a public unicast address, or None if it is.
fn non_public_kind(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => v6_kind(v6),
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if a == 100 && (64..128).contains(&b) {
        Some("CGNAT")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() || ip.is_unspecified() || a == 0 {
        Some("unspecified or broadcast")
    } else if a >= 240
        || ip.is_documentation()
        || (a == 198 && (b == 18 || b == 19))
        || (a, b, c) == (192, 0, 0)
    {
        Some("reserved")
    } else {
        None
    }
}

fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified or broadcast")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if first & 0xfe00 == 0xfc00 {
        Some("private")
    } else if first == 0x2001 && ip.segments()[1] == 0x0db8 {
        Some("reserved")
    } else if let Some(v4) = embedded_v4(ip) {
        // IPv4-compatible, NAT64 and 6to4 addresses still reach an IPv4 host (through
        // a translator or relay): judge that host.
        v4_kind(v4).map(|_| "IPv4-embedding")
    } else if ip.segments()[..3] == [0x64, 0xff9b, 0x0001] {
        // 64:ff9b:1::/48, NAT64 for local networks (RFC 8215): never a public endpoint.
        Some("private")
    } else {
        None
    }
}

/// The IPv4 host an IPv6 address reaches: `::a.b.c.d` (IPv4-compatible),
/// `64:ff9b::a.b.c.d` (NAT64, RFC 6052) or `2002:aabb:ccdd::/48` (6to4, RFC 3056).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let v4 = |high: u16, low: u16| {
        let [a, b] = high.to_be_bytes();
        let [c, d] = low.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        Some(v4(s[6], s[7]))
    } else if s[0] == 0x2002 {
        Some(v4(s[1], s[2]))
    } else {
        ip.to_ipv4()
    }
}

/// The resolver the webhook client dials through: system DNS, then the policy.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: AddressPolicy,
}

impl GuardedResolver {
    /// A resolver enforcing `policy`.
    pub fn new(policy: AddressPolicy) -> Self {
        Self { policy }
    }
}

/// What the resolver failed with: a lookup error, or a [`Refused`] address.
pub type ResolveError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = ResolveError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ResolveError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ResolveError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for addr in &addrs {
                policy.check(&host, addr.ip())?;
            }
            Ok(addrs.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(policy: &AddressPolicy, ip: &str) -> Option<&'static str> {
        policy
            .check("host", ip.parse().unwrap())
            .err()
            .map(|e| e.kind)
    }

    #[test]
    fn refuses_every_non_public_range() {
        let policy = AddressPolicy::default();
        for (ip, kind) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "CGNAT"),
            ("100.127.255.254", "CGNAT"),
            ("224.0.0.1", "multicast"),
            ("0.0.0.0", "unspecified or broadcast"),
            ("255.255.255.255", "unspecified or broadcast"),
            ("240.0.0.1", "reserved"),
            ("198.18.0.1", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified or broadcast"),
            ("fe80::1", "link-local"),
            ("fd00::1", "private"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("::127.0.0.1", "IPv4-embedding"),
            ("64:ff9b::127.0.0.1", "IPv4-embedding"),
            ("64:ff9b::a9fe:a9fe", "IPv4-embedding"),
            ("64:ff9b::10.0.0.1", "IPv4-embedding"),
            ("64:ff9b:1::1", "private"),
            ("2002:7f00:1::1", "IPv4-embedding"),
            ("2002:c0a8:101::1", "IPv4-embedding"),
            ("2002:a9fe:a9fe::", "IPv4-embedding"),
        ] {
            assert_eq!(refused(&policy, ip), Some(kind), "{ip}");
        }
        for public in [
            "93.184.216.34",
            "100.128.0.1",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
        ] {
            assert_eq!(refused(&policy, public), None, "{public}");
        }
    }

    #[test]
    fn allowed_networks_pass_and_others_stay_refused() {
        let policy = AddressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert_eq!(refused(&policy, "127.0.0.1"), None);
        assert_eq!(refused(&policy, "::ffff:127.0.0.1"), None);
        assert_eq!(refused(&policy, "10.0.0.1"), Some("private"));
        assert_eq!(refused(&policy, "::1"), Some("loopback"));
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_that_resolve_to_loopback() {
        use tower_service::Service as _;
        let mut resolver = GuardedResolver::new(AddressPolicy::default());
        let name: Name = "localhost".parse().unwrap();
        let err = resolver.call(name).await.err().unwrap();
        assert!(err.to_string().contains("loopback"), "{err}");
    }
}
