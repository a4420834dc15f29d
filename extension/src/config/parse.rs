//! The parsers behind [`super::Config::from_vars`]: one reader that collects every problem.

use super::*;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::str::FromStr;

pub(super) const KNOWN: &[&str] = &[
    "DISABLE",
    "STRICT",
    "LOG_LEVEL",
    "PROXY_PORT",
    "DNS_PORT",
    "DNS_UPSTREAMS",
    "DNS_MIN_TTL_S",
    "DNS_MAX_TTL_S",
    "DNS_NEGATIVE_TTL_S",
    "DNS_STALE_S",
    "ALLOW",
    "DENY",
    "POLICY",
    "CA_BUNDLE",
    "VPC_CIDRS",
    "ROUTES",
    "WARM",
    "WARM_BUDGET_MS",
    "CONNECT_TIMEOUT_MS",
    "POOL_IDLE_S",
    "RETRY_MAX",
    "MAX_CONNECTIONS",
    "METRICS_SINK",
    "METRICS_NAMESPACE",
    "CLOUDWATCH_ENDPOINT",
    "FLUSH_INTERVAL_S",
    "RESTORE_BUDGET_MS",
];

const DEFAULT_VPC_CIDRS: &str = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10";

/// Normalises a host name the way both policy rules and requests are compared: brackets
/// and one trailing dot removed, IP literals in canonical form, names lower-cased and
/// IDNA-encoded. Equal hosts always normalise to equal strings, so `EXAMPLE.com.` cannot
/// slip past a rule for `example.com`.
pub fn normalize_host(raw: &str) -> Result<String, String> {
    let trimmed = raw.trim();
    let unbracketed = trimmed
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(trimmed);
    if let Ok(ip) = IpAddr::from_str(unbracketed) {
        return Ok(ip.to_string());
    }
    let name = unbracketed.strip_suffix('.').unwrap_or(unbracketed);
    if name.is_empty() {
        return Err("an empty host name".into());
    }
    let ascii =
        idna::domain_to_ascii(name).map_err(|_| format!("{raw:?} is not a valid host name"))?;
    // RFC 1035 §2.3.4: labels of 1 to 63 octets, 253 in all (without the root's dot).
    let labels_ok = ascii
        .split('.')
        .all(|label| (1..=63).contains(&label.len()));
    if !labels_ok || ascii.len() > 253 {
        return Err(format!("{raw:?} is not a valid host name"));
    }
    Ok(ascii)
}

struct Reader<'a> {
    vars: HashMap<&'a str, &'a str>,
    problems: Vec<Problem>,
}

impl<'a> Reader<'a> {
    fn get(&self, suffix: &str) -> Option<(String, &'a str)> {
        let name = format!("{PREFIX}{suffix}");
        let value = self.vars.get(name.as_str()).copied()?;
        Some((name, value))
    }

    /// Records a bad variable. Every text is masked ([`redact`]): a rejected URL may carry
    /// the very credentials it was rejected for, and the value is quoted in the messages too.
    fn problem(&mut self, variable: &str, value: &str, expected: &str, effect: &str) {
        self.problems.push(Problem {
            variable: variable.to_owned(),
            value: redact(value),
            expected: redact(expected),
            effect: redact(effect),
        });
    }

    fn bool(&mut self, suffix: &str, default: bool) -> bool {
        let Some((name, value)) = self.get(suffix) else {
            return default;
        };
        // Exactly `true`/`false` (any case): the exec wrapper reads EGRESS_WARDEN_DISABLE the
        // same way, so the two can never disagree on whether the proxy is there.
        match value.trim().to_ascii_lowercase().as_str() {
            "true" => true,
            "false" | "" => false,
            _ => {
                let effect = format!("using the default ({default})");
                self.problem(&name, value, "true or false", &effect);
                default
            }
        }
    }

    /// A number in `min..=max`; on a bad value `fallback` (the feature's off switch or its
    /// default), described by `effect`.
    fn number(
        &mut self,
        suffix: &str,
        default: u64,
        min: u64,
        max: u64,
        fallback: u64,
        effect: &str,
    ) -> u64 {
        let Some((name, value)) = self.get(suffix) else {
            return default;
        };
        match value.trim().parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => n,
            _ => {
                let expected = format!("a whole number from {min} to {max}");
                self.problem(&name, value, &expected, effect);
                fallback
            }
        }
    }

    fn port(&mut self, suffix: &str, default: u16, feature: &str) -> u16 {
        let effect = format!("the {feature} is disabled");
        let Some((name, value)) = self.get(suffix) else {
            return default;
        };
        match value.trim().parse::<u16>() {
            Ok(port) => port,
            Err(_) => {
                self.problem(
                    &name,
                    value,
                    "a port number from 0 to 65535 (0 disables)",
                    &effect,
                );
                0
            }
        }
    }

    /// Splits a comma list, parses each item and reports each bad item on its own.
    fn list<T>(
        &mut self,
        suffix: &str,
        default: &str,
        expected: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Vec<T> {
        let (name, value) = match self.get(suffix) {
            Some((name, value)) => (name, value.to_owned()),
            None => (format!("{PREFIX}{suffix}"), default.to_owned()),
        };
        let mut items = Vec::new();
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match parse(item) {
                Ok(parsed) => items.push(parsed),
                Err(why) => {
                    let expected = format!("{expected} ({why})");
                    let effect = format!("the entry {item:?} is ignored");
                    self.problem(&name, item, &expected, &effect);
                }
            }
        }
        items
    }
}

pub(super) fn parse(vars: &[(String, String)]) -> (Config, Vec<Problem>) {
    let mut r = Reader {
        vars: vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
        problems: Vec::new(),
    };
    let lambda_var = |name: &str| r.vars.get(name).map(|v| v.to_string());
    let function_name = lambda_var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|| "unknown".into());
    let region = lambda_var("AWS_REGION").or_else(|| lambda_var("AWS_DEFAULT_REGION"));
    let initialization_type = match lambda_var("AWS_LAMBDA_INITIALIZATION_TYPE").as_deref() {
        Some("provisioned-concurrency") => InitType::ProvisionedConcurrency,
        Some("snap-start") => InitType::SnapStart,
        Some("lambda-managed-instances") => InitType::ManagedInstances,
        _ => InitType::OnDemand,
    };
    let log_json =
        lambda_var("AWS_LAMBDA_LOG_FORMAT").is_some_and(|f| f.eq_ignore_ascii_case("json"));
    let lambda_log_level = lambda_var("AWS_LAMBDA_LOG_LEVEL");

    let unknown: BTreeSet<String> = r
        .vars
        .keys()
        .filter_map(|k| k.strip_prefix(PREFIX))
        .filter(|suffix| !KNOWN.contains(suffix))
        .map(|suffix| format!("{PREFIX}{suffix}"))
        .collect();
    for name in unknown {
        let value = r.vars.get(name.as_str()).copied().unwrap_or_default();
        r.problem(
            &name,
            value,
            "one of the variables documented in the README",
            "it is ignored",
        );
    }

    let disable = r.bool("DISABLE", false);
    let strict = r.bool("STRICT", false);

    let log_level = match r.get("LOG_LEVEL") {
        Some((name, value)) => parse_level(value).unwrap_or_else(|| {
            r.problem(
                &name,
                value,
                "trace, debug, info, warn or error",
                "using info",
            );
            LogLevel::Info
        }),
        None => lambda_log_level
            .as_deref()
            .and_then(parse_level)
            .unwrap_or(LogLevel::Info),
    };

    let proxy_port = r.port("PROXY_PORT", 3128, "proxy");
    let dns_port = r.port("DNS_PORT", 1053, "DNS listener");

    let upstreams = r.list(
        "DNS_UPSTREAMS",
        "",
        "a comma list of ip or ip:port",
        parse_dns_upstream,
    );
    let min_ttl = r.number("DNS_MIN_TTL_S", 0, 0, 86_400, 0, "using 0");
    let max_ttl = r.number("DNS_MAX_TTL_S", 300, 1, 86_400, 300, "using 300");
    let max_ttl = if max_ttl < min_ttl {
        let value = max_ttl.to_string();
        r.problem(
            "EGRESS_WARDEN_DNS_MAX_TTL_S",
            &value,
            "a value not below EGRESS_WARDEN_DNS_MIN_TTL_S",
            "using the minimum TTL as the maximum",
        );
        min_ttl
    } else {
        max_ttl
    };
    let negative_ttl = r.number("DNS_NEGATIVE_TTL_S", 5, 0, 3_600, 5, "using 5");
    let stale = r.number("DNS_STALE_S", 3_600, 0, 86_400 * 7, 3_600, "using 3600");

    let allow = r.list(
        "ALLOW",
        "",
        "host globs with optional :port, or CIDR ranges",
        parse_rule,
    );
    let deny = r.list(
        "DENY",
        "",
        "host globs with optional :port, or CIDR ranges",
        parse_rule,
    );
    let mode = match r.get("POLICY") {
        None => PolicyMode::Observe,
        Some((name, value)) => match value.trim().to_ascii_lowercase().as_str() {
            "observe" | "" => PolicyMode::Observe,
            "enforce" => PolicyMode::Enforce,
            _ => {
                r.problem(
                    &name,
                    value,
                    "observe or enforce",
                    "ALLOW/DENY lists are only observed (logged and counted, not enforced)",
                );
                PolicyMode::Observe
            }
        },
    };

    let ca_bundle = match r.get("CA_BUNDLE") {
        None => None,
        Some((_, value)) if value.trim().is_empty() => None,
        Some((name, value)) => {
            let path = PathBuf::from(value.trim());
            if path.is_file() {
                Some(path)
            } else {
                r.problem(
                    &name,
                    value,
                    "the path of a readable PEM file",
                    "only the system roots are trusted",
                );
                None
            }
        }
    };

    let vpc_cidrs = r.list(
        "VPC_CIDRS",
        DEFAULT_VPC_CIDRS,
        "a comma list of CIDR ranges",
        |s| IpNet::from_str(s).map_err(|_| "not a CIDR range".into()),
    );

    let routes = r.list(
        "ROUTES",
        "",
        "name=https://primary[|https://fallback]",
        parse_route,
    );
    let mut seen = BTreeSet::new();
    let mut unique_routes = Vec::new();
    for route in routes {
        if seen.insert(route.name.clone()) {
            unique_routes.push(route);
        } else {
            let name = format!("{PREFIX}ROUTES");
            let effect = format!("the second route {:?} is ignored", route.name);
            r.problem(&name, &route.name, "unique route names", &effect);
        }
    }
    let routes = unique_routes;

    let warm = r.list("WARM", "", "host:port[*n] or route[*n]", |s| {
        parse_warm(s, &routes)
    });
    let default_budget = match initialization_type {
        InitType::OnDemand => 1_000,
        InitType::ProvisionedConcurrency | InitType::SnapStart | InitType::ManagedInstances => {
            5_000
        }
    };
    let warm_budget = r.number(
        "WARM_BUDGET_MS",
        default_budget,
        0,
        60_000,
        default_budget,
        "using the default",
    );
    // Unset: the execution model decides (the lifecycle knows once registered whether INVOKE
    // events will come).
    let flush_interval = match r.get("FLUSH_INTERVAL_S") {
        None => None,
        Some(_) => {
            let seconds = r.number(
                "FLUSH_INTERVAL_S",
                0,
                0,
                3_600,
                u64::MAX,
                "using the default (30 where no INVOKE events come, else 0)",
            );
            (seconds != u64::MAX).then(|| Duration::from_secs(seconds))
        }
    };
    let restore_budget = r.number("RESTORE_BUDGET_MS", 1_000, 0, 10_000, 1_000, "using 1000");
    let connect_timeout = r.number("CONNECT_TIMEOUT_MS", 3_000, 1, 120_000, 3_000, "using 3000");
    let pool_idle = r.number(
        "POOL_IDLE_S",
        60,
        1,
        NAT_IDLE_TIMEOUT_S - 1,
        60,
        "using 60 (it must stay below the NAT gateway's 350 s idle timeout)",
    );
    let retry_max = r.number("RETRY_MAX", 3, 1, 10, 3, "using 3") as u32;
    let max_connections = r.number("MAX_CONNECTIONS", 1024, 1, 65_536, 1024, "using 1024") as usize;

    let sink = match r.get("METRICS_SINK") {
        None => MetricsSink::Emf,
        Some((name, value)) => match value.trim().to_ascii_lowercase().as_str() {
            "emf" | "" => MetricsSink::Emf,
            "cloudwatch" => MetricsSink::CloudWatch,
            "both" => MetricsSink::Both,
            "off" => MetricsSink::Off,
            _ => {
                r.problem(&name, value, "emf, cloudwatch, both or off", "using emf");
                MetricsSink::Emf
            }
        },
    };
    let namespace = match r.get("METRICS_NAMESPACE") {
        None => "EgressWarden".to_owned(),
        Some((name, value)) => {
            let value = value.trim();
            if !value.is_empty()
                && value.len() <= 255
                && !value.starts_with(':')
                && value.is_ascii()
            {
                value.to_owned()
            } else {
                r.problem(
                    &name,
                    value,
                    "1 to 255 ASCII characters, not starting with ':'",
                    "using EgressWarden",
                );
                "EgressWarden".to_owned()
            }
        }
    };
    let cloudwatch_endpoint = match r.get("CLOUDWATCH_ENDPOINT") {
        None => None,
        Some((_, value)) if value.trim().is_empty() => None,
        Some((name, value)) => match value.trim().parse::<http::Uri>() {
            Ok(uri) if uri.scheme().is_some() && uri.host().is_some() => {
                Some(value.trim().to_owned())
            }
            _ => {
                r.problem(
                    &name,
                    value,
                    "an http:// or https:// URL",
                    "using the SDK's default endpoint",
                );
                None
            }
        },
    };

    let config = Config {
        disable,
        strict,
        log_level,
        log_json,
        proxy_port,
        dns_port,
        dns: DnsSettings {
            upstreams,
            min_ttl: Duration::from_secs(min_ttl),
            max_ttl: Duration::from_secs(max_ttl),
            negative_ttl: Duration::from_secs(negative_ttl),
            stale: Duration::from_secs(stale),
        },
        policy: PolicySettings { allow, deny, mode },
        ca_bundle,
        vpc_cidrs,
        routes,
        warm,
        warm_budget: Duration::from_millis(warm_budget),
        restore_budget: Duration::from_millis(restore_budget),
        flush_interval,
        connect_timeout: Duration::from_millis(connect_timeout),
        pool_idle: Duration::from_secs(pool_idle),
        retry_max,
        max_connections,
        metrics: MetricsSettings {
            sink,
            namespace,
            cloudwatch_endpoint,
        },
        lambda: LambdaEnv {
            function_name,
            region,
            initialization_type,
        },
    };
    (config, r.problems)
}

fn parse_level(value: &str) -> Option<LogLevel> {
    match value.trim().to_ascii_lowercase().as_str() {
        "trace" => Some(LogLevel::Trace),
        "debug" => Some(LogLevel::Debug),
        "info" => Some(LogLevel::Info),
        "warn" | "warning" => Some(LogLevel::Warn),
        "error" | "fatal" => Some(LogLevel::Error),
        _ => None,
    }
}

fn parse_dns_upstream(item: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = SocketAddr::from_str(item) {
        return Ok(addr);
    }
    let ip = item
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(item);
    IpAddr::from_str(ip)
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| "not an IP address".into())
}

/// Splits `host[:port]`, accepting `[v6]:port` and bare IPv6 literals.
fn split_host_port(item: &str) -> Result<(&str, Option<u16>), String> {
    let bad_port = || format!("bad port in {item:?}");
    if let Some(rest) = item.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("unclosed '[' in {item:?}"))?;
        return match after.strip_prefix(':') {
            Some(port) => Ok((host, Some(port.parse().map_err(|_| bad_port())?))),
            None if after.is_empty() => Ok((host, None)),
            None => Err(format!("unexpected {after:?} after ']'")),
        };
    }
    if item.matches(':').count() > 1 {
        return Ok((item, None));
    }
    match item.split_once(':') {
        Some((host, port)) => Ok((host, Some(port.parse().map_err(|_| bad_port())?))),
        None => Ok((item, None)),
    }
}

fn parse_rule(item: &str) -> Result<PolicyRule, String> {
    if item.contains('/') {
        return IpNet::from_str(item)
            .map(|net| PolicyRule::Cidr(net.trunc()))
            .map_err(|_| "not a CIDR range".into());
    }
    let (host, port) = split_host_port(item)?;
    let pattern = match host.strip_prefix("*.") {
        Some(rest) => format!("*.{}", normalize_host(rest)?),
        None if host == "*" => "*".to_owned(),
        None => {
            if host.contains('*') {
                return Err("'*' is only allowed as a leading '*.' label".into());
            }
            normalize_host(host)?
        }
    };
    Ok(PolicyRule::Host { pattern, port })
}

fn parse_upstream(raw: &str) -> Result<Upstream, String> {
    let uri: http::Uri = raw.parse().map_err(|_| format!("{raw:?} is not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{raw:?} must start with https://"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{raw:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("{raw:?} must not carry credentials"));
    }
    let host = normalize_host(authority.host())?;
    let port = authority.port_u16().unwrap_or(443);
    if uri.query().is_some() {
        return Err(format!("{raw:?} must not have a query"));
    }
    let base_path = uri.path().trim_end_matches('/').to_owned();
    Ok(Upstream {
        host,
        port,
        base_path,
        uri: raw.to_owned(),
    })
}

fn parse_route(item: &str) -> Result<Route, String> {
    let (name, targets) = item.split_once('=').ok_or("missing '='")?;
    let name = name.trim();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "route name {name:?} must be letters, digits, '-' or '_'"
        ));
    }
    if name.starts_with('_') {
        return Err("route names starting with '_' are reserved".into());
    }
    let mut parts = targets.split('|').map(str::trim);
    let primary = parse_upstream(parts.next().unwrap_or_default())?;
    let fallback = parts.next().map(parse_upstream).transpose()?;
    if parts.next().is_some() {
        return Err("at most one fallback".into());
    }
    Ok(Route {
        name: name.to_owned(),
        primary,
        fallback,
    })
}

fn parse_warm(item: &str, routes: &[Route]) -> Result<WarmTarget, String> {
    let (target, count) = match item.rsplit_once('*') {
        Some((target, count)) => {
            let count: u32 = count
                .trim()
                .parse()
                .map_err(|_| "bad count after '*'".to_string())?;
            if !(1..=64).contains(&count) {
                return Err("the count must be 1 to 64".into());
            }
            (target.trim(), count)
        }
        None => (item, 1),
    };
    if routes.iter().any(|r| r.name == target) {
        return Ok(WarmTarget::Route {
            name: target.to_owned(),
            count,
        });
    }
    match split_host_port(target)? {
        (host, Some(port)) => Ok(WarmTarget::HostPort {
            host: normalize_host(host)?,
            port,
            count,
        }),
        (_, None) => Err(format!("{target:?} is neither host:port nor a route name")),
    }
}
