//! Who the client is: the TCP peer, or, when the peer is a trusted proxy,
//! the right-most `X-Forwarded-For` address that no trusted proxy owns. A
//! header from an untrusted peer changes nothing, so it cannot be spoofed.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

use crate::config::TrustedProxies;

/// The client's address for a request that came from `peer`.
pub fn client_addr(proxies: &TrustedProxies, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let peer = peer.to_canonical();
    if !proxies.trusts(peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .collect();
    // Walk back from the hop nearest to us; stop at the first address no
    // trusted proxy owns, or at garbage, which only an untrusted hop adds.
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(addr) = parse_hop(hop.trim()) else { break };
        client = addr;
        if !proxies.trusts(addr) {
            break;
        }
    }
    client
}

/// An address as proxies write it: bare, or with a port.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|addr| addr.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append("x-forwarded-for", value.parse().unwrap());
        }
        map
    }

    fn proxies() -> TrustedProxies {
        TrustedProxies(vec!["10.0.0.0/8".parse().unwrap(), "127.0.0.1/32".parse().unwrap()])
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peers_are_the_client() {
        let spoofed = headers(&["1.2.3.4"]);
        assert_eq!(client_addr(&proxies(), ip("203.0.113.9"), &spoofed), ip("203.0.113.9"));
        assert_eq!(
            client_addr(&TrustedProxies::default(), ip("127.0.0.1"), &spoofed),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_hop_is_the_client() {
        let p = proxies();
        assert_eq!(
            client_addr(&p, ip("10.1.1.1"), &headers(&["198.51.100.7"])),
            ip("198.51.100.7")
        );
        // The client put a lie first; our proxies appended the real hops.
        let chain = headers(&["6.6.6.6, 198.51.100.7", "10.2.2.2"]);
        assert_eq!(client_addr(&p, ip("127.0.0.1"), &chain), ip("198.51.100.7"));
        assert_eq!(
            client_addr(&p, ip("10.1.1.1"), &headers(&["198.51.100.7:4711"])),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_addr(&p, ip("10.1.1.1"), &headers(&["[2001:db8::1]:80"])),
            ip("2001:db8::1")
        );
        // Garbage stops the walk at the last good hop.
        assert_eq!(
            client_addr(&p, ip("10.1.1.1"), &headers(&["198.51.100.7, junk, 10.3.3.3"])),
            ip("10.3.3.3")
        );
        // No header: the proxy itself.
        assert_eq!(client_addr(&p, ip("10.1.1.1"), &HeaderMap::new()), ip("10.1.1.1"));
        // Mapped IPv4 peers are matched as IPv4.
        assert_eq!(
            client_addr(&p, ip("::ffff:10.1.1.1"), &headers(&["198.51.100.7"])),
            ip("198.51.100.7")
        );
    }
}
