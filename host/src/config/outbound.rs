//! Where a component may send HTTP requests: `allowed_outbound_hosts`, a
//! list of `scheme://host[:port]` patterns. The scheme is `http`, `https` or
//! `*`; the host a name, an address, `*.example.com` (any subdomain) or `*`;
//! a missing port means the scheme's default. `http://<component>.internal`
//! names another component, served in process. Nothing is allowed unless
//! listed.

use std::fmt;
use std::str::FromStr;

/// The suffix of a host that names a component.
pub const INTERNAL_SUFFIX: &str = ".internal";

/// One allowed destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// `None` for any scheme.
    scheme: Option<String>,
    host: Host,
    /// `None` for the scheme's default port.
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Any,
    /// `*.example.com`: any name ending in `.example.com`.
    SubdomainOf(String),
    Exact(String),
}

impl FromStr for HostPattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |why: &str| {
            format!(
                "{text:?} is not a destination such as \"https://api.example.com\" or \"http://users.internal\": {why}"
            )
        };
        let (scheme, rest) = text.split_once("://").ok_or_else(|| invalid("it needs a scheme"))?;
        let scheme = match scheme {
            "*" => None,
            "http" | "https" => Some(scheme.to_string()),
            _ => return Err(invalid("the scheme is http, https or *")),
        };
        if rest.contains(['/', '?', '#', '@']) {
            return Err(invalid("give a scheme, a host and a port, no path"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || rest.starts_with('[') => {
                let port = port.parse::<u16>().map_err(|_| invalid("the port is a number"))?;
                (host, Some(port))
            }
            _ => (rest, None),
        };
        let host = host.to_ascii_lowercase();
        let plain = |h: &str| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || "-.[]:".contains(c));
        let host = match host.as_str() {
            "*" => Host::Any,
            h if h.starts_with("*.") && plain(&h[2..]) => Host::SubdomainOf(h[1..].to_string()),
            h if plain(h) => Host::Exact(h.to_string()),
            _ => return Err(invalid("the host is a name, an address, *.domain or *")),
        };
        Ok(HostPattern { scheme, host, port })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme.as_deref().unwrap_or("*"))?;
        match &self.host {
            Host::Any => f.write_str("*")?,
            Host::SubdomainOf(suffix) => write!(f, "*{suffix}")?,
            Host::Exact(host) => f.write_str(host)?,
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

/// The port a scheme uses when none is given.
pub fn default_port(scheme: &str) -> u16 {
    if scheme == "https" { 443 } else { 80 }
}

impl HostPattern {
    /// Whether a request to `scheme://host:port` may go out.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        self.scheme.as_deref().is_none_or(|s| s == scheme)
            && self.port.unwrap_or_else(|| default_port(scheme)) == port
            && match &self.host {
                Host::Any => true,
                Host::SubdomainOf(suffix) => host.ends_with(suffix.as_str()) && host.len() > suffix.len(),
                Host::Exact(exact) => *exact == host,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> HostPattern {
        text.parse().unwrap()
    }

    #[test]
    fn destinations_match_scheme_host_and_port() {
        let api = pattern("https://api.example.com");
        assert!(api.allows("https", "API.example.com", 443));
        assert!(!api.allows("http", "api.example.com", 80));
        assert!(!api.allows("https", "api.example.com", 8443));
        assert!(!api.allows("https", "api.example.com.evil", 443));
        let local = pattern("http://127.0.0.1:8080");
        assert!(local.allows("http", "127.0.0.1", 8080) && !local.allows("http", "127.0.0.1", 80));
        let sub = pattern("*://*.example.com:9000");
        assert!(sub.allows("https", "a.example.com", 9000) && sub.allows("http", "b.c.example.com", 9000));
        assert!(!sub.allows("https", "example.com", 9000) && !sub.allows("https", "xexample.com", 9000));
        assert!(pattern("http://users.internal").allows("http", "users.internal", 80));
        assert_eq!(pattern("https://*.example.com").to_string(), "https://*.example.com");
    }

    #[test]
    fn malformed_destinations_are_refused() {
        for bad in [
            "api.example.com",
            "ftp://x",
            "https://x/path",
            "https://x:port",
            "https://",
            "https://a b",
            "https://u@x",
        ] {
            assert!(bad.parse::<HostPattern>().is_err(), "{bad}");
        }
    }
}
