//! The one table of `EGRESS_WARDEN_*` variables. The parser can only read a variable named
//! here ([`Var`] is the reader's key), and a variable set in the environment but not named
//! here is reported as unknown, so the two can never drift apart.

/// Declares [`Var`] and [`Var::ALL`] from a single list of `Variant => "NAME"` rows.
macro_rules! known_variables {
    ($($variant:ident => $name:literal,)+) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(super) enum Var {
            $($variant,)+
        }

        impl Var {
            pub(super) const ALL: &'static [Var] = &[$(Var::$variant,)+];

            /// The full variable name, prefix included (greppable as written in the docs).
            pub(super) fn name(self) -> &'static str {
                match self {
                    $(Var::$variant => $name,)+
                }
            }
        }
    };
}

known_variables! {
    Disable => "EGRESS_WARDEN_DISABLE",
    Strict => "EGRESS_WARDEN_STRICT",
    LogLevel => "EGRESS_WARDEN_LOG_LEVEL",
    ProxyPort => "EGRESS_WARDEN_PROXY_PORT",
    DnsPort => "EGRESS_WARDEN_DNS_PORT",
    DnsUpstreams => "EGRESS_WARDEN_DNS_UPSTREAMS",
    DnsMinTtlS => "EGRESS_WARDEN_DNS_MIN_TTL_S",
    DnsMaxTtlS => "EGRESS_WARDEN_DNS_MAX_TTL_S",
    DnsNegativeTtlS => "EGRESS_WARDEN_DNS_NEGATIVE_TTL_S",
    DnsStaleS => "EGRESS_WARDEN_DNS_STALE_S",
    Allow => "EGRESS_WARDEN_ALLOW",
    Deny => "EGRESS_WARDEN_DENY",
    Policy => "EGRESS_WARDEN_POLICY",
    CaBundle => "EGRESS_WARDEN_CA_BUNDLE",
    VpcCidrs => "EGRESS_WARDEN_VPC_CIDRS",
    Routes => "EGRESS_WARDEN_ROUTES",
    Warm => "EGRESS_WARDEN_WARM",
    WarmBudgetMs => "EGRESS_WARDEN_WARM_BUDGET_MS",
    FlushIntervalS => "EGRESS_WARDEN_FLUSH_INTERVAL_S",
    RestoreBudgetMs => "EGRESS_WARDEN_RESTORE_BUDGET_MS",
    ConnectTimeoutMs => "EGRESS_WARDEN_CONNECT_TIMEOUT_MS",
    PoolIdleS => "EGRESS_WARDEN_POOL_IDLE_S",
    RetryMax => "EGRESS_WARDEN_RETRY_MAX",
    MaxConnections => "EGRESS_WARDEN_MAX_CONNECTIONS",
    MetricsSink => "EGRESS_WARDEN_METRICS_SINK",
    MetricsNamespace => "EGRESS_WARDEN_METRICS_NAMESPACE",
    CloudwatchEndpoint => "EGRESS_WARDEN_CLOUDWATCH_ENDPOINT",
    VersionDimension => "EGRESS_WARDEN_VERSION_DIMENSION",
    Drill => "EGRESS_WARDEN_DRILL",
    RateLimits => "EGRESS_WARDEN_RATE_LIMITS",
    RateLimitWaitMs => "EGRESS_WARDEN_RATE_LIMIT_WAIT_MS",
    Prices => "EGRESS_WARDEN_PRICES",
}

impl Var {
    /// Whether `name` is in the table.
    pub(super) fn is_known(name: &str) -> bool {
        Var::ALL.iter().any(|var| var.name() == name)
    }
}
