//! Where webhooks may deliver: an operator's allow-list of hosts and networks, and by
//! default everything but link-local addresses and cloud metadata endpoints (a definition
//! that points there would let whoever may define reactors read from the host's
//! surroundings). Checked, without sending anything, when a definition is stored; and again
//! at every delivery, on the addresses a host name resolves to ([`CheckedResolver`]), so
//! that a name that resolves, or is rebound, to such an address gets nothing.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use crate::definition::{DefinitionError, Webhook, fault};

/// The IPv6 address of a cloud metadata service (fd00:ec2::254).
const EC2_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// Host names of cloud metadata services, refused unless allowed by name.
const METADATA_NAMES: [&str; 2] = ["metadata.google.internal", "metadata"];

/// Checks every webhook's destination against `allowed` (see
/// [`crate::ReactorConfig::webhook_hosts`]).
pub(crate) fn check(webhooks: &[Webhook], allowed: &[String]) -> Result<(), DefinitionError> {
    for (i, w) in webhooks.iter().enumerate() {
        let at = format!("webhooks[{i}]");
        let Some(host) = reqwest::Url::parse(&w.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
        else {
            return Err(fault(&at, "url has no host"));
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let ip = host.parse::<IpAddr>().ok();
        if !allowed.is_empty() {
            let covered = allowed
                .iter()
                .any(|a| Entry::parse(a).is_ok_and(|e| e.covers(&host, ip)));
            if !covered {
                return Err(fault(
                    &at,
                    format!(
                        "url: {host} is not among the allowed webhook destinations (reactors.webhook_hosts)"
                    ),
                ));
            }
            continue;
        }
        let special =
            ip.is_some_and(link_local_or_metadata) || METADATA_NAMES.contains(&host.as_str());
        if special {
            return Err(fault(
                &at,
                format!(
                    "url: {host} is a link-local or cloud metadata destination; allow it in reactors.webhook_hosts to use it"
                ),
            ));
        }
    }
    Ok(())
}

/// The webhook client's resolver: it resolves a host name as the system does, then keeps
/// only the addresses a webhook may reach (see [`allowed_addrs`]); a name left with none
/// fails the delivery, which is retried and dead-lettered as any failure.
#[derive(Debug, Clone)]
pub(crate) struct CheckedResolver {
    allowed: Arc<[String]>,
}

impl CheckedResolver {
    pub(crate) fn new(allowed: &[String]) -> Self {
        CheckedResolver {
            allowed: allowed.into(),
        }
    }
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_ascii_lowercase();
        let allowed = self.allowed.clone();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept = allowed_addrs(&host, found, &allowed)?;
            let addrs: reqwest::dns::Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

/// The addresses `host` resolved to that a webhook may reach: with an allow-list, all of
/// them if the name is on it, else those its addresses and networks cover; without one,
/// all but link-local and metadata addresses. None is an error naming the host.
pub(crate) fn allowed_addrs(
    host: &str,
    found: Vec<SocketAddr>,
    allowed: &[String],
) -> Result<Vec<SocketAddr>, String> {
    let entries: Vec<Entry> = allowed
        .iter()
        .filter_map(|a| Entry::parse(a).ok())
        .collect();
    let kept: Vec<SocketAddr> = found
        .into_iter()
        .filter(|a| {
            if entries.is_empty() {
                !link_local_or_metadata(a.ip())
            } else {
                entries.iter().any(|e| e.covers(host, Some(a.ip())))
            }
        })
        .collect();
    if kept.is_empty() {
        return Err(format!(
            "{host} resolves to no address a webhook may reach (link-local, metadata, or not in reactors.webhook_hosts)"
        ));
    }
    Ok(kept)
}

/// An entry of the allow-list.
enum Entry {
    /// A host name (lower case).
    Host(String),
    /// One address.
    Addr(IpAddr),
    /// A network: an address and the length of its prefix.
    Net(IpAddr, u32),
}

impl Entry {
    /// Reads an entry: a host name, an address, or a network as `address/bits`.
    fn parse(entry: &str) -> Result<Entry, &'static str> {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err("is empty");
        }
        if let Some((net, bits)) = entry.split_once('/') {
            let net: IpAddr = net
                .parse()
                .map_err(|_| "a network is an address and /bits")?;
            let max = if net.is_ipv4() { 32 } else { 128 };
            return match bits.parse::<u32>() {
                Ok(b) if b <= max => Ok(Entry::Net(net, b)),
                _ => Err("the prefix length is out of range"),
            };
        }
        if let Ok(addr) = entry.parse::<IpAddr>() {
            return Ok(Entry::Addr(addr));
        }
        if entry.contains([' ', ':']) {
            return Err("is neither a host name, an address nor a network");
        }
        Ok(Entry::Host(entry.to_ascii_lowercase()))
    }

    /// Whether the entry covers the destination.
    fn covers(&self, host: &str, ip: Option<IpAddr>) -> bool {
        match (self, ip) {
            (Entry::Host(h), _) => h == host,
            (Entry::Addr(a), Some(ip)) => *a == ip,
            (Entry::Net(net, bits), Some(ip)) => in_network(ip, *net, *bits),
            _ => false,
        }
    }
}

/// Checks an allow-list entry (see [`Entry::parse`]).
pub(crate) fn check_entry(entry: &str) -> Result<(), &'static str> {
    Entry::parse(entry).map(drop)
}

/// Link-local addresses (169.254.0.0/16, fe80::/10, where cloud metadata services answer)
/// and the IPv6 metadata address some clouds use (fd00:ec2::254).
fn link_local_or_metadata(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6 == EC2_METADATA_V6
                || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local())
        }
    }
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u32) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(url: &str) -> Webhook {
        Webhook {
            url: url.to_owned(),
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned(),
        }
    }

    #[test]
    fn link_local_and_metadata_destinations_are_refused_unless_allowed() {
        for url in [
            "http://169.254.169.254/latest/meta-data",
            "http://[fe80::1]/x",
            "http://[fd00:ec2::254]/x",
            "http://metadata.google.internal/computeMetadata/v1/",
        ] {
            let e = check(&[hook(url)], &[]).unwrap_err();
            assert!(
                e.message.contains("link-local or cloud metadata"),
                "{url}: {e:?}"
            );
        }
        for url in [
            "http://127.0.0.1:9/x",
            "http://hooks.local/x",
            "http://10.1.2.3/x",
        ] {
            assert!(check(&[hook(url)], &[]).is_ok(), "{url}");
        }
        assert!(
            check(
                &[hook("http://169.254.169.254/x")],
                &["169.254.0.0/16".into()]
            )
            .is_ok()
        );
    }

    #[test]
    fn resolved_addresses_are_filtered_at_delivery() {
        let at = |ip: &str| SocketAddr::new(ip.parse().unwrap(), 0);
        // A name that resolves to the metadata address (or was rebound to it) is refused.
        let e = allowed_addrs("hooks.example", vec![at("169.254.169.254")], &[]).unwrap_err();
        assert!(e.contains("hooks.example"), "{e}");
        assert!(allowed_addrs("h", vec![at("fe80::1"), at("fd00:ec2::254")], &[]).is_err());
        // Other addresses of the same name are kept.
        let kept = allowed_addrs("h", vec![at("169.254.169.254"), at("10.0.0.7")], &[]).unwrap();
        assert_eq!(kept, [at("10.0.0.7")]);
        // With an allow-list: a listed name keeps its addresses; networks filter them.
        let list = ["hooks.internal".to_owned(), "10.0.0.0/8".to_owned()];
        let any = vec![at("192.168.1.5")];
        assert!(allowed_addrs("hooks.internal", any.clone(), &list).is_ok());
        assert!(allowed_addrs("other.internal", any, &list).is_err());
        assert!(allowed_addrs("other.internal", vec![at("10.9.9.9")], &list).is_ok());
    }

    #[tokio::test]
    async fn the_resolver_resolves_what_it_may() {
        use reqwest::dns::Resolve;
        let r = CheckedResolver::new(&[]);
        let found: Vec<SocketAddr> = r
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(found.iter().all(|a| a.ip().is_loopback()), "{found:?}");
        assert!(!found.is_empty());
        let only = CheckedResolver::new(&["10.0.0.0/8".to_owned()]);
        assert!(only.resolve("localhost".parse().unwrap()).await.is_err());
    }

    #[test]
    fn allow_list_entries_are_checked() {
        for ok in [
            "hooks.internal",
            "10.0.0.0/8",
            "::1",
            "fd00::/8",
            "10.1.2.3",
        ] {
            assert!(check_entry(ok).is_ok(), "{ok}");
        }
        for bad in ["", "10.0.0.0/33", "x/8", "a b", "::1/129"] {
            assert!(check_entry(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_allow_list_admits_only_its_hosts_and_networks() {
        let allowed = [
            "hooks.internal".to_owned(),
            "10.0.0.0/8".to_owned(),
            "::1".to_owned(),
        ];
        for url in [
            "http://hooks.internal/x",
            "http://10.9.8.7:8080/x",
            "http://[::1]/x",
        ] {
            assert!(check(&[hook(url)], &allowed).is_ok(), "{url}");
        }
        for url in [
            "http://evil.example/x",
            "http://11.0.0.1/x",
            "http://127.0.0.1/x",
        ] {
            let e = check(&[hook(url)], &allowed).unwrap_err();
            assert!(e.message.contains("not among the allowed"), "{url}: {e:?}");
            assert_eq!(e.at, "webhooks[0]");
        }
    }
}
