//! Parsed `scheme://location` addresses.
//!
//! An [`Address`] is a scheme plus a scheme-specific location. Host-and-port schemes
//! (tcp://, zmq://, tls://) parse their location with [`Address::host_port`]; others (inproc://,
//! unix://) use it as a name or path. A listener distinguishes its *listen* address (may be a
//! wildcard such as `tcp://0.0.0.0:0`) from its *contact* address (concrete and reachable).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use crate::error::CommError;

/// A parsed address: `scheme://location`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    scheme: String,
    location: String,
}

impl Address {
    /// Parses `scheme://location`. The scheme is lowercase ASCII letters, digits, `+`, `-`, `.`,
    /// starting with a letter; the location may be empty (e.g. `inproc://` for an auto name).
    pub fn parse(input: &str) -> Result<Self, CommError> {
        let Some((scheme, location)) = input.split_once("://") else {
            return Err(CommError::invalid_address(input, "expected scheme://location"));
        };
        let valid_scheme = scheme.chars().next().is_some_and(|c| c.is_ascii_lowercase())
            && scheme.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
        if !valid_scheme {
            return Err(CommError::invalid_address(
                input,
                format!("scheme {scheme:?} must be lowercase letters, digits, '+', '-' or '.'"),
            ));
        }
        if location.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(CommError::invalid_address(input, "location contains whitespace"));
        }
        Ok(Address { scheme: scheme.to_owned(), location: location.to_owned() })
    }

    /// An address from parts, validated as [`Address::parse`] would.
    pub fn new(scheme: &str, location: &str) -> Result<Self, CommError> {
        Self::parse(&format!("{scheme}://{location}"))
    }

    /// An address for a socket address, with IPv6 in brackets.
    pub fn from_socket_addr(scheme: &str, addr: SocketAddr) -> Self {
        Address { scheme: scheme.to_owned(), location: addr.to_string() }
    }

    /// The scheme, without `://`.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// Everything after `://`.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Parses the location as `host:port` (IPv4, bracketed IPv6, or a DNS name).
    pub fn host_port(&self) -> Result<HostPort, CommError> {
        HostPort::parse(&self.location).map_err(|why| CommError::invalid_address(&self.to_string(), why))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.location)
    }
}

impl FromStr for Address {
    type Err = CommError;
    fn from_str(s: &str) -> Result<Self, CommError> {
        Address::parse(s)
    }
}

/// The host part of a host-and-port location.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// An IPv4 or IPv6 literal.
    Ip(IpAddr),
    /// A DNS name, resolved when connecting or binding.
    Name(String),
}

/// A `host:port` location.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// The host.
    pub host: Host,
    /// The port; 0 asks the OS for a free one when listening.
    pub port: u16,
}

impl HostPort {
    fn parse(location: &str) -> Result<Self, String> {
        let (host, port) = if let Some(rest) = location.strip_prefix('[') {
            let (ip, after) = rest.split_once(']').ok_or("unclosed '[' in IPv6 host")?;
            let port = after.strip_prefix(':').ok_or("expected ':port' after ']'")?;
            let ip: std::net::Ipv6Addr = ip.parse().map_err(|_| format!("{ip:?} is not an IPv6 address"))?;
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = location.rsplit_once(':').ok_or("expected host:port")?;
            if host.contains(':') {
                return Err("IPv6 hosts must be in brackets, e.g. [::1]:8786".into());
            }
            let host = if let Ok(ip) = host.parse::<IpAddr>() {
                Host::Ip(ip)
            } else if is_dns_name(host) {
                Host::Name(host.to_owned())
            } else {
                return Err(format!("{host:?} is not a valid host"));
            };
            (host, port)
        };
        let port = port.parse::<u16>().map_err(|_| format!("{port:?} is not a port (0-65535)"))?;
        Ok(HostPort { host, port })
    }

    /// True for `0.0.0.0` and `::`, which listeners bind on every interface.
    pub fn is_wildcard(&self) -> bool {
        matches!(self.host, Host::Ip(ip) if ip.is_unspecified())
    }

    /// The host as a string suitable for resolution (`::1` without brackets).
    pub fn host_string(&self) -> String {
        match &self.host {
            Host::Ip(ip) => ip.to_string(),
            Host::Name(n) => n.clone(),
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(ip) => write!(f, "{ip}:{}", self.port),
            Host::Name(n) => write!(f, "{n}:{}", self.port),
        }
    }
}

fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn parses_and_prints_host_port_forms() {
        for (input, host, port) in [
            ("tcp://127.0.0.1:8786", "127.0.0.1", 8786),
            ("tcp://[::1]:0", "::1", 0),
            ("zmq://scheduler.local:1", "scheduler.local", 1),
            ("tcp://0.0.0.0:0", "0.0.0.0", 0),
        ] {
            let a = Address::parse(input).unwrap();
            assert_eq!(a.to_string(), input);
            let hp = a.host_port().unwrap();
            assert_eq!(hp.host_string(), host);
            assert_eq!(hp.port, port);
            assert_eq!(format!("{}://{hp}", a.scheme()), input);
        }
        assert!(Address::parse("tcp://0.0.0.0:0").unwrap().host_port().unwrap().is_wildcard());
        assert!(Address::parse("tcp://[::]:9").unwrap().host_port().unwrap().is_wildcard());
    }

    #[test]
    fn inproc_names_and_empty_locations() {
        let a = Address::parse("inproc://scheduler").unwrap();
        assert_eq!((a.scheme(), a.location()), ("inproc", "scheduler"));
        assert_eq!(Address::parse("inproc://").unwrap().location(), "");
    }

    #[test]
    fn malformed_inputs_are_invalid_address_naming_the_input() {
        for bad in ["", "127.0.0.1:80", "://x", "TCP://a:1", "1tcp://a:1", "tcp://a b:1"] {
            let e = Address::parse(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidAddress, "{bad}");
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        for bad in [
            "tcp://::1:80",
            "tcp://[::1]",
            "tcp://[::1:80",
            "tcp://[zz]:80",
            "tcp://host",
            "tcp://host:99999",
            "tcp://host:-1",
            "tcp://:80",
            "tcp://bad_host!:80",
            "tcp://-a:1",
        ] {
            let e = Address::parse(bad).unwrap().host_port().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidAddress, "{bad}");
            assert!(e.to_string().contains(bad), "{e}");
        }
    }
}
