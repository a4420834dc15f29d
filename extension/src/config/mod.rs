//! Every `EGRESS_WARDEN_*` variable, parsed and validated once at start.
//!
//! Parsing never fails as a whole: each bad variable becomes a [`Problem`] that names the
//! variable, the value, the accepted form and what the extension does instead (the broken
//! feature is switched off or the default kept), so every problem is reported at once and
//! the function keeps running. `EGRESS_WARDEN_STRICT=true` turns problems into an INIT error.

mod items;
mod parse;
mod prices;
mod reader;
mod redact;
#[cfg(test)]
mod tests;
mod variables;

use ipnet::IpNet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

pub use items::normalize_host;
pub use redact::redact;

pub const PREFIX: &str = "EGRESS_WARDEN_";
/// The NAT gateway drops idle connections after 350 s and answers later packets with RST.
pub const NAT_IDLE_TIMEOUT_S: u64 = 350;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub disable: bool,
    pub strict: bool,
    pub log_level: LogLevel,
    pub log_json: bool,
    /// 0 = the proxy listener is off.
    pub proxy_port: u16,
    /// 0 = the DNS listener is off (the proxy still uses the cache).
    pub dns_port: u16,
    pub dns: DnsSettings,
    pub policy: PolicySettings,
    pub ca_bundle: Option<PathBuf>,
    pub vpc_cidrs: Vec<IpNet>,
    pub routes: Vec<Route>,
    pub drills: Vec<Drill>,
    pub warm: Vec<WarmTarget>,
    pub warm_budget: Duration,
    /// Time the warm-up may take after a SnapStart restore.
    pub restore_budget: Duration,
    /// Flush metrics on a timer as well; zero: only on INVOKE and SHUTDOWN; unset: 30 s where
    /// no INVOKE events come (Managed Instances), else zero.
    pub flush_interval: Option<Duration>,
    pub connect_timeout: Duration,
    pub pool_idle: Duration,
    pub retry_max: u32,
    pub max_connections: usize,
    /// Per-host token buckets (`EGRESS_WARDEN_RATE_LIMITS`), in the order written: the first
    /// matching entry applies.
    pub rate_limits: Vec<RateLimit>,
    /// The longest a request waits for its bucket before `429 rate_limited`.
    pub rate_limit_wait: Duration,
    /// USD per GB on each path (`EGRESS_WARDEN_PRICES` over the region's defaults).
    pub prices: Prices,
    pub metrics: MetricsSettings,
    pub lambda: LambdaEnv,
}

/// `hostglob=RATE/s[:BURST]`: requests to each matching host at most `per_second` on
/// average, `burst` at once.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    /// A host glob as in `EGRESS_WARDEN_ALLOW` (normalised; `*.` only as the leading label).
    pub pattern: String,
    pub per_second: f64,
    pub burst: u32,
}

/// USD per GB: NAT gateway processing (both directions), internet transfer out, inter-region
/// transfer (both directions), interface-endpoint processing (both directions).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prices {
    pub nat: f64,
    pub internet: f64,
    pub cross_region: f64,
    pub vpc_endpoint: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DnsSettings {
    /// Empty: use the nameservers of `/etc/resolv.conf`.
    pub upstreams: Vec<SocketAddr>,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub negative_ttl: Duration,
    pub stale: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyMode {
    Observe,
    Enforce,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PolicyRule {
    /// `pattern` is normalised (lower case, IDNA, no trailing dot) and may start with `*.`.
    Host {
        pattern: String,
        port: Option<u16>,
    },
    Cidr(IpNet),
}

#[derive(Debug, Clone, PartialEq)]
pub struct PolicySettings {
    pub allow: Vec<PolicyRule>,
    pub deny: Vec<PolicyRule>,
    pub mode: PolicyMode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash ("" for the root).
    pub base_path: String,
    /// The URI as configured.
    pub uri: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub name: String,
    pub primary: Upstream,
    pub fallback: Option<Upstream>,
    pub options: RouteOptions,
}

/// A route's `;option`s.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteOptions {
    /// `idempotency=auto`: a POST or PATCH without an `Idempotency-Key` gets one, the same on
    /// every attempt, so the route's retries of it are safe.
    pub idempotency_auto: bool,
    /// `fallback=reads`: requests that are not safe to repeat stay on the primary (home)
    /// when it is down or drilled, answered `503 home_region_only` instead.
    pub fallback_reads_only: bool,
    /// `regions=PRIMARY/FALLBACK`: the upstreams' regions, for the per-region metrics.
    pub regions: Option<RouteRegions>,
}

/// `EGRESS_WARDEN_DRILL`: a route whose primary is treated as down on purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drill {
    pub route: String,
    /// `None`: from INIT on.
    pub window: Option<DrillWindow>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrillWindow {
    pub start: SystemTime,
    pub length: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRegions {
    pub primary: String,
    pub fallback: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WarmTarget {
    HostPort { host: String, port: u16, count: u32 },
    Route { name: String, count: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsSink {
    Emf,
    CloudWatch,
    Both,
    Off,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSettings {
    pub sink: MetricsSink,
    pub namespace: String,
    pub cloudwatch_endpoint: Option<String>,
    /// Also write the key metrics under `[FunctionName, FunctionVersion]`, so a canary
    /// version's egress can be compared with the stable one's.
    pub version_dimension: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitType {
    OnDemand,
    ProvisionedConcurrency,
    SnapStart,
    /// Lambda Managed Instances: many invocations at once, no INVOKE events for extensions.
    ManagedInstances,
}

impl InitType {
    /// `AWS_LAMBDA_INITIALIZATION_TYPE`'s spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            InitType::OnDemand => "on-demand",
            InitType::ProvisionedConcurrency => "provisioned-concurrency",
            InitType::SnapStart => "snap-start",
            InitType::ManagedInstances => "lambda-managed-instances",
        }
    }

    /// Lambda sends INVOKE events to extensions (everywhere but on Managed Instances).
    pub fn has_invoke_events(self) -> bool {
        self != InitType::ManagedInstances
    }
}

/// What Lambda tells the extension about the function through the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct LambdaEnv {
    pub function_name: String,
    /// `AWS_LAMBDA_FUNCTION_VERSION`: `$LATEST` or the published version's number.
    pub function_version: Option<String>,
    pub region: Option<String>,
    pub initialization_type: InitType,
}

/// One bad variable: enough to fix it without reading the docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub variable: String,
    pub value: String,
    pub expected: String,
    /// What the extension does instead.
    pub effect: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {}={:?}: expected {}; {}",
            self.variable, self.value, self.expected, self.effect
        )
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> (Config, Vec<Problem>) {
        let vars: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into_owned())))
            .collect();
        Self::from_vars(&vars)
    }

    /// Parses a set of variables (the environment, or a test's map).
    pub fn from_vars(vars: &[(String, String)]) -> (Config, Vec<Problem>) {
        parse::parse(vars)
    }

    pub fn route(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.name == name)
    }

    /// A summary safe to show on the status page (no credentials are ever configured here,
    /// but route URIs may carry user info, which is dropped).
    pub fn summary(&self) -> serde_json::Value {
        let routes: Vec<_> = self
            .routes
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name,
                    "primary": format!("https://{}:{}{}", r.primary.host, r.primary.port, r.primary.base_path),
                    "fallback": r.fallback.as_ref().map(|u| format!("https://{}:{}{}", u.host, u.port, u.base_path)),
                })
            })
            .collect();
        serde_json::json!({
            "proxy_port": self.proxy_port,
            "dns_port": self.dns_port,
            "dns_upstreams": self.dns.upstreams.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "policy": match self.policy.mode { PolicyMode::Observe => "observe", PolicyMode::Enforce => "enforce" },
            "allow_rules": self.policy.allow.len(),
            "deny_rules": self.policy.deny.len(),
            "routes": routes,
            "warm_targets": self.warm.len(),
            "warm_budget_ms": self.warm_budget.as_millis() as u64,
            "restore_budget_ms": self.restore_budget.as_millis() as u64,
            "flush_interval_s": self.flush_interval.map(|d| d.as_secs()),
            "connect_timeout_ms": self.connect_timeout.as_millis() as u64,
            "pool_idle_s": self.pool_idle.as_secs(),
            "retry_max": self.retry_max,
            "max_connections": self.max_connections,
            "rate_limits": self.rate_limits.iter().map(|l| format!("{}={}/s:{}", l.pattern, l.per_second, l.burst)).collect::<Vec<_>>(),
            "rate_limit_wait_ms": self.rate_limit_wait.as_millis() as u64,
            "prices_usd_per_gb": {
                "nat": self.prices.nat,
                "internet": self.prices.internet,
                "cross_region": self.prices.cross_region,
                "vpc_endpoint": self.prices.vpc_endpoint,
            },
            "metrics_sink": format!("{:?}", self.metrics.sink).to_lowercase(),
            "region": self.lambda.region,
        })
    }
}
