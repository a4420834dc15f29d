//! Where a request wants to go, normalised once so policy rules, pools, metrics and logs all
//! see the same name: `EXAMPLE.com.`, `[::1]`, `ｅｘａｍｐｌｅ.com` and `0x7f.1` cannot slip
//! past a rule written for the canonical form.

use crate::config::normalize_host;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

/// A normalised destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// Lower-case IDNA (punycode) name without trailing dot, or a canonical IP literal.
    pub host: String,
    pub port: u16,
    /// Set when the host is an IP literal in any spelling: no DNS look-up happens.
    pub ip: Option<IpAddr>,
}

impl Target {
    /// `host` as it came in a request line or Host header (brackets allowed).
    pub(crate) fn new(raw_host: &str, port: u16) -> Result<Target, String> {
        if raw_host.contains('%') {
            // Zone ids and percent-encoding have no business in a proxied host name.
            return Err(format!("{raw_host:?} is not a valid host"));
        }
        let host = normalize_host(raw_host)?;
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Target {
                host: ip.to_string(),
                port,
                ip: Some(ip),
            });
        }
        // Resolvers built on inet_aton read `2130706433`, `0x7f.1` and `0177.0.0.1` as
        // 127.0.0.1: treat them as the literal they are rather than as a name.
        if let Some(v4) = parse_inet_aton(&host) {
            let ip = IpAddr::V4(v4);
            return Ok(Target {
                host: ip.to_string(),
                port,
                ip: Some(ip),
            });
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return Err(format!("{raw_host:?} is not a valid host"));
        }
        if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            // All-numeric but not an address (e.g. 1.2.3.4.5): never a real name.
            return Err(format!("{raw_host:?} is not a valid host"));
        }
        Ok(Target {
            host,
            port,
            ip: None,
        })
    }

    /// `host:port` from an authority (`CONNECT` target, absolute URI), with a default port.
    pub(crate) fn from_authority(
        authority: &http::uri::Authority,
        default_port: Option<u16>,
    ) -> Result<Target, String> {
        if authority.as_str().contains('@') {
            return Err("credentials in the authority".into());
        }
        let port = match authority.port_u16().or(default_port) {
            Some(0) | None => return Err(format!("{authority} has no usable port")),
            Some(p) => p,
        };
        Target::new(authority.host(), port)
    }

    /// The host as it goes into a URI or Host header (IPv6 bracketed).
    pub(crate) fn uri_host(&self) -> String {
        match self.ip {
            Some(IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => self.host.clone(),
        }
    }

    /// The metrics dimension and log key.
    pub(crate) fn destination(&self) -> String {
        format!("{}:{}", self.uri_host(), self.port)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.uri_host(), self.port)
    }
}

/// The BSD `inet_aton` forms: 1 to 4 parts, each decimal, octal (leading 0) or hex (0x);
/// the last part fills the remaining bytes.
fn parse_inet_aton(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for part in &parts {
        values.push(parse_aton_part(part)?);
    }
    let (last, init) = values.split_last()?;
    let mut addr: u64 = 0;
    for (i, v) in init.iter().enumerate() {
        if *v > 0xff {
            return None;
        }
        addr |= v << (24 - 8 * i);
    }
    let room = 32 - 8 * init.len() as u32;
    if *last >= (1u64 << room) {
        return None;
    }
    addr |= last;
    Some(Ipv4Addr::from(addr as u32))
}

fn parse_aton_part(part: &str) -> Option<u64> {
    if part.is_empty() || part.len() > 12 {
        return None;
    }
    let (digits, radix) = if let Some(hex) = part.strip_prefix("0x") {
        (hex, 16)
    } else if part.len() > 1 && part.starts_with('0') {
        (&part[1..], 8)
    } else {
        (part, 10)
    };
    if digits.is_empty() {
        // "0x" alone is 0 for inet_aton.
        return (radix == 16).then_some(0);
    }
    u64::from_str_radix(digits, radix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Target::new(s, 443).unwrap().host
    }

    #[test]
    fn known_bypasses_normalise_to_the_canonical_form() {
        assert_eq!(norm("EXAMPLE.com"), "example.com");
        assert_eq!(norm("example.com."), "example.com");
        assert_eq!(norm("ExAmPle.CoM."), "example.com");
        assert_eq!(norm("[::1]"), "::1");
        assert_eq!(norm("[0:0:0:0:0:0:0:1]"), "::1");
        assert_eq!(norm("[::ffff:7f00:1]"), "::ffff:127.0.0.1");
        assert_eq!(norm("127.0.0.1."), "127.0.0.1");
        assert_eq!(norm("ｅｘａｍｐｌｅ.com"), "example.com");
        assert_eq!(norm("bücher.example"), "xn--bcher-kva.example");
        assert_eq!(norm("localhost."), "localhost");
    }

    #[test]
    fn inet_aton_spellings_are_ip_literals() {
        for s in [
            "2130706433",
            "0x7f000001",
            "0177.0.0.1",
            "127.1",
            "0x7f.1",
            "127.0.1",
            "017700000001",
        ] {
            let t = Target::new(s, 80).unwrap();
            assert_eq!(t.ip, Some("127.0.0.1".parse().unwrap()), "{s}");
        }
        assert_eq!(
            Target::new("169.254.43518", 80).unwrap().host,
            "169.254.169.254"
        );
        assert!(Target::new("256.1.1.1", 80).is_err());
        assert!(Target::new("1.2.3.4.5", 80).is_err());
    }

    #[test]
    fn garbage_is_rejected() {
        for s in [
            "",
            ".",
            "a..b",
            "exa mple.com",
            "[::1%25eth0]",
            "user@host",
            "ho/st",
        ] {
            assert!(Target::new(s, 80).is_err(), "{s:?}");
        }
    }

    #[test]
    fn names_stay_names() {
        let t = Target::new("s3.eu-west-1.amazonaws.com", 443).unwrap();
        assert_eq!(t.ip, None);
        assert_eq!(t.destination(), "s3.eu-west-1.amazonaws.com:443");
        let t = Target::new("[2001:db8::1]", 443).unwrap();
        assert_eq!(t.destination(), "[2001:db8::1]:443");
        // A hex-looking name that is not a number is a name.
        assert_eq!(Target::new("cafe.example", 80).unwrap().ip, None);
    }
}
