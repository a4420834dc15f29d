//! Where traffic may go. Checked twice per new connection: on the host name before any DNS
//! look-up (deny rules only; allow rules may still match the address), then on every
//! resolved address, whose verdict is final — the proxy connects to that very address and
//! never resolves again in between (no DNS-rebinding window).
//!
//! Order: the proxy's own listeners (never liftable) → built-in ranges (loopback,
//! link-local, metadata, and their IPv6 embeddings; lifted only by a CIDR in ALLOW) → the
//! user's DENY, then ALLOW lists, which `observe` mode only reports.

pub(crate) mod explain;
pub(crate) mod host;
pub(crate) mod ranges;

use crate::config::{PolicyMode, PolicyRule, PolicySettings};
use host::Target;
use ranges::{builtin_hits, reaches_local_host};
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allow,
    /// Would be denied by the user's lists; `observe` mode lets it through.
    Observe(&'static str),
    Deny(&'static str),
}

pub(crate) const REASON_LOOP: &str = "loop";
pub(crate) const REASON_DENY_RULE: &str = "deny_rule";
pub(crate) const REASON_NOT_ALLOWED: &str = "not_allowed";

pub(crate) struct Policy {
    settings: PolicySettings,
    /// Ports of this process's listeners on the local host (proxy, DNS).
    own_ports: Vec<u16>,
}

impl Policy {
    pub(crate) fn new(settings: PolicySettings, own_ports: Vec<u16>) -> Policy {
        let own_ports = own_ports.into_iter().filter(|p| *p != 0).collect();
        Policy {
            settings,
            own_ports,
        }
    }

    /// Before resolving: a DENY host rule settles it (saves the look-up in `enforce` mode).
    pub(crate) fn check_host(&self, target: &Target) -> Verdict {
        if self
            .settings
            .deny
            .iter()
            .any(|r| host_rule_matches(r, target))
        {
            return self.user_verdict(REASON_DENY_RULE);
        }
        Verdict::Allow
    }

    /// The final verdict for connecting to `addr` on behalf of `target`.
    pub(crate) fn check_addr(&self, target: &Target, addr: SocketAddr) -> Verdict {
        let ip = addr.ip();
        if self.own_ports.contains(&addr.port()) && reaches_local_host(ip) {
            return Verdict::Deny(REASON_LOOP);
        }
        for (hit, class) in builtin_hits(ip) {
            if !self.allow_cidr_contains(ip) && !self.allow_cidr_contains(hit) {
                return Verdict::Deny(class.reason());
            }
        }
        let deny = self
            .settings
            .deny
            .iter()
            .any(|r| rule_matches(r, target, ip));
        if deny {
            return self.user_verdict(REASON_DENY_RULE);
        }
        let allowed = self.settings.allow.is_empty()
            || self
                .settings
                .allow
                .iter()
                .any(|r| rule_matches(r, target, ip));
        if !allowed {
            return self.user_verdict(REASON_NOT_ALLOWED);
        }
        Verdict::Allow
    }

    fn user_verdict(&self, reason: &'static str) -> Verdict {
        match self.settings.mode {
            PolicyMode::Observe => Verdict::Observe(reason),
            PolicyMode::Enforce => Verdict::Deny(reason),
        }
    }

    fn allow_cidr_contains(&self, ip: IpAddr) -> bool {
        self.settings
            .allow
            .iter()
            .any(|r| matches!(r, PolicyRule::Cidr(net) if net_contains(net, ip)))
    }

    /// Rules as written, for the status page.
    pub(crate) fn describe(&self) -> serde_json::Value {
        let show = |rules: &[PolicyRule]| -> Vec<String> { rules.iter().map(show_rule).collect() };
        serde_json::json!({
            "mode": match self.settings.mode { PolicyMode::Observe => "observe", PolicyMode::Enforce => "enforce" },
            "allow": show(&self.settings.allow),
            "deny": show(&self.settings.deny),
            "own_ports": self.own_ports,
        })
    }
}

/// A rule as written in ALLOW or DENY.
fn show_rule(rule: &PolicyRule) -> String {
    match rule {
        PolicyRule::Host {
            pattern,
            port: Some(p),
        } => format!("{pattern}:{p}"),
        PolicyRule::Host {
            pattern,
            port: None,
        } => pattern.clone(),
        PolicyRule::Cidr(net) => net.to_string(),
    }
}

/// An IPv4 rule also covers the IPv4-mapped form of its addresses.
fn net_contains(net: &ipnet::IpNet, ip: IpAddr) -> bool {
    if net.contains(&ip) {
        return true;
    }
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .is_some_and(|v4| net.contains(&IpAddr::V4(v4))),
        IpAddr::V4(_) => false,
    }
}

fn rule_matches(rule: &PolicyRule, target: &Target, ip: IpAddr) -> bool {
    match rule {
        PolicyRule::Cidr(net) => net_contains(net, ip),
        PolicyRule::Host { .. } => host_rule_matches(rule, target),
    }
}

fn host_rule_matches(rule: &PolicyRule, target: &Target) -> bool {
    let PolicyRule::Host { pattern, port } = rule else {
        return false;
    };
    if port.is_some_and(|p| p != target.port) {
        return false;
    }
    glob_matches(pattern, &target.host)
}

/// `*` matches everything; `*.example.com` any name below example.com (not example.com
/// itself); anything else matches exactly. Both sides are already normalised.
pub(crate) fn glob_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1 && host.ends_with(suffix) && {
                let cut = host.len() - suffix.len() - 1;
                host.as_bytes()[cut] == b'.'
            }
        }
        None => pattern == host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PolicySettings;

    fn rule(s: &str) -> PolicyRule {
        if s.contains('/') {
            return PolicyRule::Cidr(s.parse().unwrap());
        }
        match s.rsplit_once(':') {
            Some((h, p)) => PolicyRule::Host {
                pattern: h.into(),
                port: Some(p.parse().unwrap()),
            },
            None => PolicyRule::Host {
                pattern: s.into(),
                port: None,
            },
        }
    }

    fn policy(allow: &[&str], deny: &[&str], mode: PolicyMode) -> Policy {
        Policy::new(
            PolicySettings {
                allow: allow.iter().map(|s| rule(s)).collect(),
                deny: deny.iter().map(|s| rule(s)).collect(),
                mode,
            },
            vec![3128, 1053],
        )
    }

    fn check(p: &Policy, host: &str, addr: &str) -> Verdict {
        let sa: SocketAddr = addr.parse().unwrap();
        let t = Target::new(host, sa.port()).unwrap();
        match p.check_host(&t) {
            Verdict::Allow => p.check_addr(&t, sa),
            v => v,
        }
    }

    #[test]
    fn builtins_deny_in_every_mode() {
        for mode in [PolicyMode::Observe, PolicyMode::Enforce] {
            let p = policy(&[], &[], mode);
            assert_eq!(
                check(&p, "localhost", "127.0.0.1:80"),
                Verdict::Deny("loopback")
            );
            assert_eq!(
                check(&p, "x", "169.254.169.254:80"),
                Verdict::Deny("link_local")
            );
            assert_eq!(
                check(&p, "x", "[fd00:ec2::254]:80"),
                Verdict::Deny("metadata")
            );
            assert_eq!(
                check(&p, "x", "[::ffff:169.254.169.254]:80"),
                Verdict::Deny("link_local")
            );
            assert_eq!(
                check(&p, "x", "[64:ff9b::a9fe:a9fe]:80"),
                Verdict::Deny("link_local")
            );
            assert_eq!(check(&p, "x", "0.0.0.0:80"), Verdict::Deny("loopback"));
            assert_eq!(
                check(&p, "example.com", "93.184.216.34:443"),
                Verdict::Allow
            );
        }
    }

    #[test]
    fn an_allowed_range_lifts_builtins_but_never_the_proxy_itself() {
        let p = policy(&["127.0.0.0/8"], &[], PolicyMode::Enforce);
        assert_eq!(check(&p, "127.0.0.1", "127.0.0.1:8080"), Verdict::Allow);
        assert_eq!(check(&p, "x", "[::ffff:127.0.0.1]:8080"), Verdict::Allow);
        assert_eq!(
            check(&p, "127.0.0.1", "127.0.0.1:3128"),
            Verdict::Deny("loop")
        );
        assert_eq!(
            check(&p, "localhost", "127.0.0.1:1053"),
            Verdict::Deny("loop")
        );
        assert_eq!(check(&p, "x", "0.0.0.0:3128"), Verdict::Deny("loop"));
        assert_eq!(
            check(&p, "x", "[::ffff:127.0.0.1]:3128"),
            Verdict::Deny("loop")
        );
        // Lifting loopback does not lift metadata.
        assert_eq!(
            check(&p, "x", "169.254.169.254:80"),
            Verdict::Deny("link_local")
        );
        let all = policy(&["0.0.0.0/0", "::/0"], &[], PolicyMode::Enforce);
        assert_eq!(check(&all, "x", "[::1]:3128"), Verdict::Deny("loop"));
    }

    #[test]
    fn user_lists_enforce_and_observe() {
        let p = policy(
            &["*.amazonaws.com", "api.vendor.com:443"],
            &["bad.amazonaws.com"],
            PolicyMode::Enforce,
        );
        assert_eq!(
            check(&p, "s3.eu-west-1.amazonaws.com", "52.1.1.1:443"),
            Verdict::Allow
        );
        assert_eq!(
            check(&p, "BAD.amazonaws.com.", "52.1.1.1:443"),
            Verdict::Deny("deny_rule")
        );
        assert_eq!(check(&p, "api.vendor.com", "1.2.3.4:443"), Verdict::Allow);
        assert_eq!(
            check(&p, "api.vendor.com", "1.2.3.4:80"),
            Verdict::Deny("not_allowed")
        );
        assert_eq!(
            check(&p, "amazonaws.com", "52.1.1.1:443"),
            Verdict::Deny("not_allowed")
        );
        assert_eq!(
            check(&p, "evilamazonaws.com", "52.1.1.1:443"),
            Verdict::Deny("not_allowed")
        );
        let o = policy(&["*.amazonaws.com"], &["10.0.0.0/8"], PolicyMode::Observe);
        assert_eq!(
            check(&o, "example.com", "1.2.3.4:443"),
            Verdict::Observe("not_allowed")
        );
        assert_eq!(
            check(&o, "x.amazonaws.com", "10.1.2.3:443"),
            Verdict::Observe("deny_rule")
        );
    }

    #[test]
    fn globs() {
        assert!(glob_matches("*.a.com", "b.a.com"));
        assert!(glob_matches("*.a.com", "c.b.a.com"));
        assert!(!glob_matches("*.a.com", "a.com"));
        assert!(!glob_matches("*.a.com", "ba.com"));
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("a.com", "a.com"));
    }
}
