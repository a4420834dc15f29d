//! The metrics the extension emits: names, units and kinds.

use super::cloudwatch;

macro_rules! metric_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $metric:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The metric name as it appears in EMF and CloudWatch.
            pub const fn metric_name(self) -> &'static str {
                match self { $($name::$variant => $metric),+ }
            }
        }
    };
}

metric_enum!(
    /// Monotonic counts (unit `Count`, or `Bytes` for the byte counters).
    Counter {
        Invocations => "invocations",
        ColdStarts => "cold_starts",
        Restores => "restores",
        FunctionTimeouts => "function_timeouts",
        TelemetryRecordsIgnored => "telemetry_records_ignored",
        Requests => "requests",
        Errors => "errors",
        ErrorsTimeout => "errors_timeout",
        ErrorsRefused => "errors_refused",
        ErrorsReset => "errors_reset",
        ErrorsDns => "errors_dns",
        ErrorsTls => "errors_tls",
        ConnectTimeouts => "connect_timeouts",
        RetryCount => "retry_count",
        IdempotencyKeysAdded => "idempotency_keys_added",
        PolicyDenied => "policy_denied",
        ConnectionsOpened => "connections_opened",
        ConnectionsReused => "connections_reused",
        ConnectionsPeak => "connections_peak",
        IdleClientsClosed => "idle_clients_closed",
        CrossRegionRequests => "cross_region_requests",
        CircuitOpen => "circuit_open",
        FallbackHits => "fallback_hits",
        Responses5xx => "responses_5xx",
        BytesIn => "bytes_in",
        BytesOut => "bytes_out",
        EgressBytesPrivate => "egress_bytes_private",
        EgressBytesVpcEndpoint => "egress_bytes_vpc_endpoint",
        EgressBytesNat => "egress_bytes_nat",
        EgressBytesCrossRegion => "egress_bytes_cross_region",
        RateLimited => "rate_limited",
        DnsCacheHits => "dns_cache_hits",
        DnsCacheMisses => "dns_cache_misses",
        DnsStaleServed => "dns_stale_served",
        DnsPrefetches => "dns_prefetches",
        DnsUpstreamErrors => "dns_upstream_errors",
        DnsUpstreamTimeouts => "dns_upstream_timeouts",
        DnsMalformed => "dns_malformed",
        WarmConnections => "warm_connections",
        ConfigErrors => "config_errors",
        TaskPanics => "task_panics",
    }
);

metric_enum!(
    /// Latency distributions, in milliseconds.
    Timing {
        DnsMs => "dns_ms",
        DnsUpstreamMs => "dns_upstream_ms",
        TcpConnectMs => "tcp_connect_ms",
        TlsMs => "tls_ms",
        TtfbMs => "ttfb_ms",
        RequestMs => "request_ms",
        WarmMs => "warm_ms",
        ExtensionInitMs => "extension_init_ms",
        RateLimitWaitMs => "rate_limit_wait_ms",
    }
);

metric_enum!(
    /// Levels; a flush reports the highest level seen during the window.
    Gauge {
        ActiveConnections => "active_connections",
        DrillActive => "drill_active",
    }
);

/// The estimated cost of a window's egress in USD (unit `None`), from the bytes of each path
/// and the price table.
pub const EGRESS_COST_METRIC: &str = "egress_cost_usd";

impl Counter {
    pub const fn unit(self) -> &'static str {
        match self {
            Counter::BytesIn
            | Counter::BytesOut
            | Counter::EgressBytesPrivate
            | Counter::EgressBytesVpcEndpoint
            | Counter::EgressBytesNat
            | Counter::EgressBytesCrossRegion => "Bytes",
            _ => "Count",
        }
    }
}

/// Every metric name the extension can emit except the run-time `symptom_<finding>` names:
/// the source of truth for dashboards, alarms and their tests.
pub fn known_metric_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Counter::ALL.iter().map(|c| c.metric_name()).collect();
    names.extend(Timing::ALL.iter().map(|t| t.metric_name()));
    names.extend(Gauge::ALL.iter().map(|g| g.metric_name()));
    names.push(EGRESS_COST_METRIC);
    names.push(cloudwatch::PUT_ERRORS_METRIC);
    names
}
