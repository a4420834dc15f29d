//! [`super::Config::from_vars`]: one small reader per concern, called in a fixed order so
//! the problems always come out in the same order (unknown names first).

use super::items::{
    parse_cidr, parse_dns_upstream, parse_drill, parse_level, parse_rate_limit, parse_route,
    parse_rule, parse_warm,
};
use super::prices::{parse_price, regional_defaults};
use super::reader::Reader;
use super::variables::Var;
use super::{
    Config, DnsSettings, InitType, LambdaEnv, LogLevel, MetricsSettings, MetricsSink, PolicyMode,
    PolicySettings, Prices, Problem, RateLimit, Route, WarmTarget, NAT_IDLE_TIMEOUT_S,
};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

const DEFAULT_VPC_CIDRS: &str = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10";
const DEFAULT_NAMESPACE: &str = "EgressWarden";
const HOST_RULES: &str = "host globs with optional :port, or CIDR ranges";

pub(super) fn parse(vars: &[(String, String)]) -> (Config, Vec<Problem>) {
    let mut r = Reader::new(vars);
    r.report_unknown();
    let lambda = lambda_env(&r);
    let disable = r.bool(Var::Disable, false);
    let strict = r.bool(Var::Strict, false);
    let (log_level, log_json) = logging(&mut r);
    let proxy_port = r.port(Var::ProxyPort, 3128, "proxy");
    let dns_port = r.port(Var::DnsPort, 1053, "DNS listener");
    let dns = dns(&mut r);
    let policy = policy(&mut r);
    let ca_bundle = ca_bundle(&mut r);
    let vpc_cidrs = r.list(
        Var::VpcCidrs,
        DEFAULT_VPC_CIDRS,
        "a comma list of CIDR ranges",
        parse_cidr,
    );
    let routes = routes(&mut r);
    let drills = r.list(
        Var::Drill,
        "",
        "route[@START/DURATION] (START in RFC 3339, DURATION like 10m), a route with a fallback",
        |item| parse_drill(item, &routes),
    );
    let lifecycle = lifecycle(&mut r, &routes, lambda.initialization_type);
    let limits = limits(&mut r);
    let shaping = shaping(&mut r);
    let prices = prices(&mut r, lambda.region.as_deref());
    let metrics = metrics(&mut r);

    let config = Config {
        disable,
        strict,
        log_level,
        log_json,
        proxy_port,
        dns_port,
        dns,
        policy,
        ca_bundle,
        vpc_cidrs,
        routes,
        drills,
        warm: lifecycle.warm,
        warm_budget: lifecycle.warm_budget,
        restore_budget: lifecycle.restore_budget,
        flush_interval: lifecycle.flush_interval,
        connect_timeout: limits.connect_timeout,
        pool_idle: limits.pool_idle,
        retry_max: limits.retry_max,
        max_connections: limits.max_connections,
        rate_limits: shaping.rate_limits,
        rate_limit_wait: shaping.wait,
        prices,
        metrics,
        lambda,
    };
    (config, r.into_problems())
}

/// What Lambda itself sets; never a problem (Lambda, not the user, wrote it).
fn lambda_env(r: &Reader) -> LambdaEnv {
    let initialization_type = match r.lambda_var("AWS_LAMBDA_INITIALIZATION_TYPE") {
        Some("provisioned-concurrency") => InitType::ProvisionedConcurrency,
        Some("snap-start") => InitType::SnapStart,
        Some("lambda-managed-instances") => InitType::ManagedInstances,
        _ => InitType::OnDemand,
    };
    LambdaEnv {
        function_name: r
            .lambda_var("AWS_LAMBDA_FUNCTION_NAME")
            .unwrap_or("unknown")
            .to_owned(),
        function_version: r
            .lambda_var("AWS_LAMBDA_FUNCTION_VERSION")
            .map(str::to_owned),
        region: r
            .lambda_var("AWS_REGION")
            .or_else(|| r.lambda_var("AWS_DEFAULT_REGION"))
            .map(str::to_owned),
        initialization_type,
    }
}

/// The level (ours, else the function's, else info) and whether lines are JSON (as the
/// function's own logs are).
fn logging(r: &mut Reader) -> (LogLevel, bool) {
    let log_json = r
        .lambda_var("AWS_LAMBDA_LOG_FORMAT")
        .is_some_and(|format| format.eq_ignore_ascii_case("json"));
    let log_level = match r.get(Var::LogLevel) {
        Some(value) => parse_level(value).unwrap_or_else(|| {
            r.problem(
                Var::LogLevel.name(),
                value,
                "trace, debug, info, warn or error",
                "using info",
            );
            LogLevel::Info
        }),
        None => r
            .lambda_var("AWS_LAMBDA_LOG_LEVEL")
            .and_then(parse_level)
            .unwrap_or(LogLevel::Info),
    };
    (log_level, log_json)
}

fn dns(r: &mut Reader) -> DnsSettings {
    let upstreams = r.list(
        Var::DnsUpstreams,
        "",
        "a comma list of ip or ip:port",
        parse_dns_upstream,
    );
    let min_ttl = r.number(Var::DnsMinTtlS, 0, 0..=86_400, "using 0");
    let max_ttl = r.number(Var::DnsMaxTtlS, 300, 1..=86_400, "using 300");
    // A clamp whose maximum is below its minimum has no answer; the minimum wins.
    let max_ttl = if max_ttl < min_ttl {
        r.problem(
            Var::DnsMaxTtlS.name(),
            &max_ttl.to_string(),
            "a value not below EGRESS_WARDEN_DNS_MIN_TTL_S",
            "using the minimum TTL as the maximum",
        );
        min_ttl
    } else {
        max_ttl
    };
    let negative_ttl = r.number(Var::DnsNegativeTtlS, 5, 0..=3_600, "using 5");
    let stale = r.number(Var::DnsStaleS, 3_600, 0..=86_400 * 7, "using 3600");
    DnsSettings {
        upstreams,
        min_ttl: Duration::from_secs(min_ttl),
        max_ttl: Duration::from_secs(max_ttl),
        negative_ttl: Duration::from_secs(negative_ttl),
        stale: Duration::from_secs(stale),
    }
}

fn policy(r: &mut Reader) -> PolicySettings {
    let allow = r.list(Var::Allow, "", HOST_RULES, parse_rule);
    let deny = r.list(Var::Deny, "", HOST_RULES, parse_rule);
    // A bad mode never enforces: denying traffic the user did not ask to deny is worse.
    let mode = r.keyword(
        Var::Policy,
        PolicyMode::Observe,
        &[
            ("observe", PolicyMode::Observe),
            ("enforce", PolicyMode::Enforce),
        ],
        "observe or enforce",
        "ALLOW/DENY lists are only observed (logged and counted, not enforced)",
    );
    PolicySettings { allow, deny, mode }
}

/// Checked now, so a wrong path is reported at INIT rather than at the first TLS handshake.
fn ca_bundle(r: &mut Reader) -> Option<PathBuf> {
    let value = r.get(Var::CaBundle)?;
    if value.trim().is_empty() {
        return None;
    }
    let path = PathBuf::from(value.trim());
    if path.is_file() {
        return Some(path);
    }
    r.problem(
        Var::CaBundle.name(),
        value,
        "the path of a readable PEM file",
        "only the system roots are trusted",
    );
    None
}

/// A route is addressed by its name (`/<route>/<path>`), so a repeated name is dropped.
fn routes(r: &mut Reader) -> Vec<Route> {
    let routes = r.list(
        Var::Routes,
        "",
        "name=https://primary[|https://fallback][;idempotency=auto][;fallback=reads][;regions=PRIMARY/FALLBACK]",
        parse_route,
    );
    let mut seen = BTreeSet::new();
    let mut unique = Vec::with_capacity(routes.len());
    for route in routes {
        if seen.insert(route.name.clone()) {
            unique.push(route);
        } else {
            let effect = format!("the second route {:?} is ignored", route.name);
            r.problem(
                Var::Routes.name(),
                &route.name,
                "unique route names",
                &effect,
            );
        }
    }
    unique
}

/// Warm-up at INIT and after a restore, and the metrics flush timer.
struct Lifecycle {
    warm: Vec<WarmTarget>,
    warm_budget: Duration,
    flush_interval: Option<Duration>,
    restore_budget: Duration,
}

fn lifecycle(r: &mut Reader, routes: &[Route], initialization_type: InitType) -> Lifecycle {
    let warm = r.list(Var::Warm, "", "host:port[*n] or route[*n]", |item| {
        parse_warm(item, routes)
    });
    // On demand, warm-up delays the first invocation; elsewhere INIT is not on a request's path.
    let default_budget_ms = match initialization_type {
        InitType::OnDemand => 1_000,
        InitType::ProvisionedConcurrency | InitType::SnapStart | InitType::ManagedInstances => {
            5_000
        }
    };
    let warm_budget_ms = r.number(
        Var::WarmBudgetMs,
        default_budget_ms,
        0..=60_000,
        "using the default",
    );
    // Unset (or bad): the execution model decides, once registration tells whether INVOKE
    // events will come.
    let flush_interval_s = r.optional_number(
        Var::FlushIntervalS,
        0..=3_600,
        "using the default (30 where no INVOKE events come, else 0)",
    );
    let restore_budget_ms = r.number(Var::RestoreBudgetMs, 1_000, 0..=10_000, "using 1000");
    Lifecycle {
        warm,
        warm_budget: Duration::from_millis(warm_budget_ms),
        flush_interval: flush_interval_s.map(Duration::from_secs),
        restore_budget: Duration::from_millis(restore_budget_ms),
    }
}

struct Limits {
    connect_timeout: Duration,
    pool_idle: Duration,
    retry_max: u32,
    max_connections: usize,
}

fn limits(r: &mut Reader) -> Limits {
    let connect_timeout_ms = r.number(Var::ConnectTimeoutMs, 3_000, 1..=120_000, "using 3000");
    // Closed before the NAT gateway drops them, which would answer the next request with RST.
    let pool_idle_s = r.number(
        Var::PoolIdleS,
        60,
        1..=NAT_IDLE_TIMEOUT_S - 1,
        "using 60 (it must stay below the NAT gateway's 350 s idle timeout)",
    );
    Limits {
        connect_timeout: Duration::from_millis(connect_timeout_ms),
        pool_idle: Duration::from_secs(pool_idle_s),
        retry_max: r.number(Var::RetryMax, 3, 1..=10, "using 3"),
        max_connections: r.number(Var::MaxConnections, 1024, 1..=65_536, "using 1024"),
    }
}

struct Shaping {
    rate_limits: Vec<RateLimit>,
    wait: Duration,
}

fn shaping(r: &mut Reader) -> Shaping {
    let rate_limits = r.list(
        Var::RateLimits,
        "",
        "hostglob=RATE/s[:BURST], comma separated",
        parse_rate_limit,
    );
    let wait_ms = r.number(Var::RateLimitWaitMs, 1_000, 0..=60_000, "using 1000");
    Shaping {
        rate_limits,
        wait: Duration::from_millis(wait_ms),
    }
}

/// The region's defaults, with each entry set overriding one price.
fn prices(r: &mut Reader, region: Option<&str>) -> Prices {
    let mut prices = regional_defaults(region);
    let set = r.list(
        Var::Prices,
        "",
        "class=USD_per_GB for nat, internet, cross_region or vpc_endpoint",
        parse_price,
    );
    for (class, usd) in set {
        prices.set(class, usd);
    }
    prices
}

fn metrics(r: &mut Reader) -> MetricsSettings {
    let sink = r.keyword(
        Var::MetricsSink,
        MetricsSink::Emf,
        &[
            ("emf", MetricsSink::Emf),
            ("cloudwatch", MetricsSink::CloudWatch),
            ("both", MetricsSink::Both),
            ("off", MetricsSink::Off),
        ],
        "emf, cloudwatch, both or off",
        "using emf",
    );
    MetricsSettings {
        sink,
        namespace: namespace(r),
        cloudwatch_endpoint: cloudwatch_endpoint(r),
        version_dimension: r.bool(Var::VersionDimension, true),
    }
}

/// CloudWatch's rules for a namespace, checked here so a bad one is not rejected on every flush.
fn namespace(r: &mut Reader) -> String {
    let Some(value) = r.get(Var::MetricsNamespace) else {
        return DEFAULT_NAMESPACE.to_owned();
    };
    let value = value.trim();
    if !value.is_empty() && value.len() <= 255 && !value.starts_with(':') && value.is_ascii() {
        return value.to_owned();
    }
    r.problem(
        Var::MetricsNamespace.name(),
        value,
        "1 to 255 ASCII characters, not starting with ':'",
        "using EgressWarden",
    );
    DEFAULT_NAMESPACE.to_owned()
}

fn cloudwatch_endpoint(r: &mut Reader) -> Option<String> {
    let value = r.get(Var::CloudwatchEndpoint)?;
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return None;
    }
    match trimmed.parse::<http::Uri>() {
        Ok(uri) if uri.scheme().is_some() && uri.host().is_some() => Some(trimmed.to_owned()),
        _ => {
            r.problem(
                Var::CloudwatchEndpoint.name(),
                value,
                "an http:// or https:// URL",
                "using the SDK's default endpoint",
            );
            None
        }
    }
}
