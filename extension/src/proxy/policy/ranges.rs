//! Built-in address classes the proxy never connects to unless a range in
//! `EGRESS_WARDEN_ALLOW` lifts them, and the IPv4 addresses hidden inside IPv6 ones.
//!
//! An IPv6 address can carry an IPv4 address that a NAT64 gateway, a 6to4 relay, a Teredo
//! server or the kernel (IPv4-mapped) turns back into IPv4: `::ffff:169.254.169.254`
//! reaches the metadata service as surely as the IPv4 form does, so every embedding is
//! checked as well as the address itself.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is denied by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BuiltinClass {
    /// 127.0.0.0/8, ::1, and the "this host" addresses 0.0.0.0/8 and :: (Linux connects
    /// those to the local host).
    Loopback,
    /// 169.254.0.0/16 and fe80::/10, where the instance metadata and Lambda's own
    /// endpoints live.
    LinkLocal,
    /// fd00:ec2::/32: the IPv6 instance metadata, DNS and time services.
    Metadata,
}

impl BuiltinClass {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            BuiltinClass::Loopback => "loopback",
            BuiltinClass::LinkLocal => "link_local",
            BuiltinClass::Metadata => "metadata",
        }
    }
}

/// The class of one address, without looking inside it.
fn direct_class(ip: IpAddr) -> Option<BuiltinClass> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if o[0] == 127 || o[0] == 0 {
                Some(BuiltinClass::Loopback)
            } else if o[0] == 169 && o[1] == 254 {
                Some(BuiltinClass::LinkLocal)
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6 == Ipv6Addr::LOCALHOST || v6 == Ipv6Addr::UNSPECIFIED {
                Some(BuiltinClass::Loopback)
            } else if s[0] & 0xffc0 == 0xfe80 {
                Some(BuiltinClass::LinkLocal)
            } else if s[0] == 0xfd00 && s[1] == 0x0ec2 {
                Some(BuiltinClass::Metadata)
            } else {
                None
            }
        }
    }
}

/// IPv4 addresses an IPv6 address may be translated to on its way.
pub(crate) fn embedded_v4(ip: IpAddr) -> Vec<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else {
        return Vec::new();
    };
    let s = v6.segments();
    let o = v6.octets();
    let last32 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    let mut found = Vec::new();
    // IPv4-mapped ::ffff:0:0/96 and the deprecated IPv4-compatible ::/96.
    if s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0) && v6 != Ipv6Addr::LOCALHOST {
        found.push(last32);
    }
    // NAT64 well-known prefix 64:ff9b::/96 and the local-use 64:ff9b:1::/48 (RFC 8215).
    if s[0] == 0x64 && s[1] == 0xff9b {
        found.push(last32);
    }
    // 6to4 2002:AABB:CCDD::/48 carries AA.BB.CC.DD.
    if s[0] == 0x2002 {
        found.push(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    // Teredo 2001:0000::/32: server address in bits 32..64, client address inverted in the last 32.
    if s[0] == 0x2001 && s[1] == 0 {
        found.push(Ipv4Addr::new(o[4], o[5], o[6], o[7]));
        found.push(Ipv4Addr::new(!o[12], !o[13], !o[14], !o[15]));
    }
    found
}

/// Every (address, class) pair that makes `ip` a built-in denial: the address itself and
/// any IPv4 address embedded in it. Empty for ordinary addresses.
pub(crate) fn builtin_hits(ip: IpAddr) -> Vec<(IpAddr, BuiltinClass)> {
    let mut hits = Vec::new();
    if let Some(class) = direct_class(ip) {
        hits.push((ip, class));
    }
    for v4 in embedded_v4(ip) {
        if let Some(class) = direct_class(IpAddr::V4(v4)) {
            hits.push((IpAddr::V4(v4), class));
        }
    }
    hits
}

/// Whether a connection to `ip` would reach this host (where the proxy's own listeners are).
pub(crate) fn reaches_local_host(ip: IpAddr) -> bool {
    builtin_hits(ip)
        .iter()
        .any(|(_, class)| *class == BuiltinClass::Loopback)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class_of(s: &str) -> Option<BuiltinClass> {
        let ip: IpAddr = s.parse().unwrap();
        builtin_hits(ip).first().map(|(_, c)| *c)
    }

    #[test]
    fn direct_ranges() {
        assert_eq!(class_of("127.0.0.1"), Some(BuiltinClass::Loopback));
        assert_eq!(class_of("127.255.0.9"), Some(BuiltinClass::Loopback));
        assert_eq!(class_of("0.0.0.0"), Some(BuiltinClass::Loopback));
        assert_eq!(class_of("::1"), Some(BuiltinClass::Loopback));
        assert_eq!(class_of("::"), Some(BuiltinClass::Loopback));
        assert_eq!(class_of("169.254.169.254"), Some(BuiltinClass::LinkLocal));
        assert_eq!(class_of("fe80::1"), Some(BuiltinClass::LinkLocal));
        assert_eq!(class_of("fd00:ec2::254"), Some(BuiltinClass::Metadata));
        assert_eq!(class_of("8.8.8.8"), None);
        assert_eq!(class_of("10.0.0.1"), None);
        assert_eq!(class_of("2600:1f18::1"), None);
    }

    #[test]
    fn embeddings_of_denied_ranges_are_denied() {
        // IPv4-mapped and IPv4-compatible
        assert_eq!(class_of("::ffff:127.0.0.1"), Some(BuiltinClass::Loopback));
        assert_eq!(
            class_of("::ffff:169.254.169.254"),
            Some(BuiltinClass::LinkLocal)
        );
        assert_eq!(class_of("::169.254.169.254"), Some(BuiltinClass::LinkLocal));
        // NAT64
        assert_eq!(
            class_of("64:ff9b::a9fe:a9fe"),
            Some(BuiltinClass::LinkLocal)
        );
        assert_eq!(class_of("64:ff9b::7f00:1"), Some(BuiltinClass::Loopback));
        assert_eq!(
            class_of("64:ff9b:1::a9fe:a9fe"),
            Some(BuiltinClass::LinkLocal)
        );
        // 6to4: 2002:a9fe:a9fe:: carries 169.254.169.254
        assert_eq!(class_of("2002:a9fe:a9fe::1"), Some(BuiltinClass::LinkLocal));
        // Teredo: client 169.254.169.254 inverted is 5601:5601
        assert_eq!(
            class_of("2001:0:4136:e378:8000:63bf:5601:5601"),
            Some(BuiltinClass::LinkLocal)
        );
        // Ordinary NAT64 / 6to4 addresses of public IPv4 stay allowed.
        assert_eq!(class_of("64:ff9b::808:808"), None);
        assert_eq!(class_of("2002:808:808::1"), None);
    }

    #[test]
    fn local_host_detection() {
        for s in [
            "127.0.0.1",
            "127.0.0.2",
            "0.0.0.0",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:0.0.0.0",
        ] {
            assert!(reaches_local_host(s.parse().unwrap()), "{s}");
        }
        assert!(!reaches_local_host("169.254.169.254".parse().unwrap()));
    }
}
