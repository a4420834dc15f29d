//! What a denial tells the person who has to act on it: the rule that denied, in words, and
//! the variable that would allow the destination. The reason token (`loopback`,
//! `deny_rule`…) stays the machine-readable part; this is the readable one, for the log line
//! and the client's answer.

use super::host::Target;
use super::ranges::builtin_hits;
use super::{host_rule_matches, rule_matches, show_rule, Policy};
use super::{REASON_DENY_RULE, REASON_LOOP, REASON_NOT_ALLOWED};
use std::net::{IpAddr, SocketAddr};

/// A denial in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Explained {
    /// What denied it: `169.254.169.254 is link-local (a built-in protection)`.
    pub rule: String,
    /// What would allow it, naming the variable; none when nothing can.
    pub fix: Option<String>,
}

impl Policy {
    /// Explains the denial `reason` of `target` (at `addr`, once resolved).
    pub(crate) fn explain(
        &self,
        reason: &str,
        target: &Target,
        addr: Option<SocketAddr>,
    ) -> Explained {
        let ip = addr.map(|a| a.ip()).or(target.ip);
        match reason {
            REASON_LOOP => Explained {
                rule: format!(
                    "{} is egress-warden's own listener (a request to it would loop)",
                    addr.map_or_else(|| target.to_string(), |a| a.to_string())
                ),
                fix: Some(
                    "nothing allows it: call the proxy directly, not through itself".to_owned(),
                ),
            },
            REASON_DENY_RULE => {
                let rule = self
                    .settings
                    .deny
                    .iter()
                    .find(|r| match ip {
                        Some(ip) => rule_matches(r, target, ip),
                        None => host_rule_matches(r, target),
                    })
                    .map(show_rule)
                    .unwrap_or_default();
                Explained {
                    rule: format!("{target} matches `{rule}` in EGRESS_WARDEN_DENY"),
                    fix: Some(format!(
                        "to allow it remove `{rule}` from EGRESS_WARDEN_DENY"
                    )),
                }
            }
            REASON_NOT_ALLOWED => {
                let entry = match target.ip {
                    Some(ip) => single(ip),
                    None => target.host.clone(),
                };
                Explained {
                    rule: format!("{target} matches nothing in EGRESS_WARDEN_ALLOW"),
                    fix: Some(format!("to allow it add {entry} to EGRESS_WARDEN_ALLOW")),
                }
            }
            builtin => {
                let hit = ip.and_then(|ip| {
                    builtin_hits(ip)
                        .into_iter()
                        .find(|(_, class)| class.reason() == builtin)
                });
                let Some((hit, _)) = hit else {
                    return Explained {
                        rule: format!("{target}: {builtin}"),
                        fix: None,
                    };
                };
                let what = match builtin {
                    "loopback" => "a loopback address",
                    "link_local" => "link-local (instance metadata and Lambda's own endpoints)",
                    _ => "the IPv6 instance metadata range fd00:ec2::/32",
                };
                Explained {
                    rule: format!("{hit} is {what}, a built-in protection"),
                    fix: Some(self.allow_fix(&single(hit))),
                }
            }
        }
    }

    /// Adding a range to ALLOW; an empty ALLOW list starts limiting everything else.
    fn allow_fix(&self, entry: &str) -> String {
        if self.settings.allow.is_empty() {
            format!(
                "to allow it set EGRESS_WARDEN_ALLOW={entry} (listing the other destinations \
                 too: a non-empty list limits them in enforce mode)"
            )
        } else {
            format!("to allow it add {entry} to EGRESS_WARDEN_ALLOW")
        }
    }
}

/// The one-address range of `ip`, as ALLOW takes it.
fn single(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}/32"),
        IpAddr::V6(v6) => format!("{v6}/128"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PolicyMode, PolicyRule, PolicySettings};

    fn policy(allow: &[PolicyRule], deny: &[PolicyRule]) -> Policy {
        Policy::new(
            PolicySettings {
                allow: allow.to_vec(),
                deny: deny.to_vec(),
                mode: PolicyMode::Enforce,
            },
            vec![3128],
        )
    }

    fn host(pattern: &str) -> PolicyRule {
        PolicyRule::Host {
            pattern: pattern.into(),
            port: None,
        }
    }

    /// The verdict's reason and its explanation, as the dialer makes them.
    fn denied(p: &Policy, host: &str, addr: &str) -> (&'static str, Explained) {
        let sa: SocketAddr = addr.parse().unwrap();
        let t = Target::new(host, sa.port()).unwrap();
        let verdict = match p.check_host(&t) {
            super::super::Verdict::Allow => p.check_addr(&t, sa),
            v => v,
        };
        let super::super::Verdict::Deny(reason) = verdict else {
            panic!("{host} at {addr} is not denied: {verdict:?}");
        };
        (reason, p.explain(reason, &t, Some(sa)))
    }

    #[test]
    fn each_denial_names_its_rule_and_the_variable_that_allows_it() {
        let open = policy(&[], &[]);
        let (reason, e) = denied(&open, "x", "169.254.169.254:80");
        assert_eq!(reason, "link_local");
        assert!(e.rule.starts_with("169.254.169.254 is link-local"), "{e:?}");
        let fix = e.fix.unwrap();
        assert!(
            fix.starts_with("to allow it set EGRESS_WARDEN_ALLOW=169.254.169.254/32 "),
            "{fix}"
        );
        // The embedded IPv4 address is the one to name: lifting it lifts the IPv6 spelling.
        let (_, e) = denied(&open, "x", "[::ffff:127.0.0.1]:8080");
        assert!(
            e.rule.starts_with("127.0.0.1 is a loopback address"),
            "{e:?}"
        );
        let (_, e) = denied(&open, "x", "[fd00:ec2::254]:80");
        assert!(e.rule.contains("fd00:ec2::/32"), "{e:?}");
        assert!(e
            .fix
            .unwrap()
            .contains("EGRESS_WARDEN_ALLOW=fd00:ec2::254/128"));
        let (reason, e) = denied(&open, "127.0.0.1", "127.0.0.1:3128");
        assert_eq!(reason, "loop");
        assert!(e
            .rule
            .contains("127.0.0.1:3128 is egress-warden's own listener"));

        let listed = policy(&[host("*.example.com")], &[host("bad.example.com")]);
        let (reason, e) = denied(&listed, "bad.example.com", "93.184.216.34:443");
        assert_eq!(reason, "deny_rule");
        assert_eq!(
            e.rule,
            "bad.example.com:443 matches `bad.example.com` in EGRESS_WARDEN_DENY"
        );
        assert_eq!(
            e.fix.as_deref(),
            Some("to allow it remove `bad.example.com` from EGRESS_WARDEN_DENY")
        );
        let (reason, e) = denied(&listed, "other.org", "93.184.216.34:443");
        assert_eq!(reason, "not_allowed");
        assert_eq!(
            e.rule,
            "other.org:443 matches nothing in EGRESS_WARDEN_ALLOW"
        );
        assert_eq!(
            e.fix.as_deref(),
            Some("to allow it add other.org to EGRESS_WARDEN_ALLOW")
        );
        let (_, e) = denied(&listed, "169.254.169.254", "169.254.169.254:80");
        assert_eq!(
            e.fix.as_deref(),
            Some("to allow it add 169.254.169.254/32 to EGRESS_WARDEN_ALLOW")
        );
        let cidr = policy(&[], &[PolicyRule::Cidr("10.0.0.0/8".parse().unwrap())]);
        let (_, e) = denied(&cidr, "db.internal", "10.1.2.3:5432");
        assert!(
            e.rule
                .ends_with("matches `10.0.0.0/8` in EGRESS_WARDEN_DENY"),
            "{e:?}"
        );
    }
}
