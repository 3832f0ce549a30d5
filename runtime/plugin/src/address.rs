//! Where a registration may point the host: the origin of a `base_url` (scheme, host, port)
//! and the rule that a plugin registers its own address.
//!
//! Used by the join policy (to check an operator's allow-list) and by the registry (to check
//! each registration); it reaches nothing itself.

use std::net::{IpAddr, SocketAddr};

use crate::Error;

/// The scheme, host and port of a URL, compared case-insensitively for the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    https: bool,
    host: String,
    port: u16,
}

impl Origin {
    /// The origin of an absolute `http://` or `https://` URL.
    ///
    /// # Errors
    /// `invalid_argument` naming what is wrong.
    pub(crate) fn parse(url: &str) -> Result<Self, Error> {
        let bad = |why: &str| {
            Error::invalid_argument(format!(
                "base URL {url:?} {why}: use an absolute URL such as http://10.0.0.7:8080"
            ))
        };
        let uri: http::Uri = url.parse().map_err(|_| bad("is not a URL"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("is not http:// or https://")),
        };
        let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("carries user information"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(Self { https, host, port })
    }

    /// Whether a plugin calling from `peer` may name this origin as its own: the host is the
    /// peer's IP address, or, from loopback, `localhost` or any loopback address.
    pub(crate) fn is_at(&self, peer: SocketAddr) -> bool {
        let peer_ip = peer.ip().to_canonical();
        match self.host.parse::<IpAddr>() {
            Ok(ip) => {
                let ip = ip.to_canonical();
                ip == peer_ip || (ip.is_loopback() && peer_ip.is_loopback())
            }
            Err(_) => self.host == "localhost" && peer_ip.is_loopback(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let a = Origin::parse("http://LOCALHOST:8080/x").unwrap();
        assert_eq!(a, Origin::parse("http://localhost:8080").unwrap());
        assert_ne!(a, Origin::parse("https://localhost:8080").unwrap());
        assert_ne!(a, Origin::parse("http://localhost:8081").unwrap());
        assert_eq!(
            Origin::parse("https://h").unwrap(),
            Origin::parse("https://h:443").unwrap()
        );
        for bad in ["", "/relative", "ftp://h", "http://u:p@h", "h:80"] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_plugin_owns_only_the_address_it_calls_from() {
        let loopback: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "10.0.0.7:5000".parse().unwrap();
        let at = |url: &str, peer| Origin::parse(url).unwrap().is_at(peer);
        assert!(at("http://127.0.0.1:9", loopback));
        assert!(at("http://localhost:9", loopback));
        assert!(at("http://[::1]:9", loopback));
        assert!(at("http://10.0.0.7:9", remote));
        assert!(!at("http://10.0.0.8:9", remote));
        assert!(!at("http://127.0.0.1:9", remote));
        assert!(!at("http://localhost:9", remote));
        assert!(!at("http://169.254.169.254", loopback));
        assert!(!at("http://example.com", loopback));
    }
}
