//! [`super::Config::from_vars`]: one reader that collects every problem; the parsers of single
//! values and list items are in [`super::items`].

use super::items::{
    parse_cidr, parse_dns_upstream, parse_level, parse_route, parse_rule, parse_warm,
};
use super::*;
use std::collections::{BTreeSet, HashMap};

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
        parse_cidr,
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
