//! Parsing the variables as a whole: defaults, every problem reported, nothing secret shown.

use super::variables::Var;
use super::*;
use std::collections::BTreeSet;

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_match_the_interface() {
    let (c, problems) = Config::from_vars(&[]);
    assert!(problems.is_empty());
    assert_eq!(c.proxy_port, 3128);
    assert_eq!(c.dns_port, 1053);
    assert_eq!(c.dns.max_ttl, Duration::from_secs(300));
    assert_eq!(c.dns.negative_ttl, Duration::from_secs(5));
    assert_eq!(c.dns.stale, Duration::from_secs(3600));
    assert_eq!(c.policy.mode, PolicyMode::Observe);
    assert_eq!(c.vpc_cidrs.len(), 4);
    assert_eq!(c.warm_budget, Duration::from_millis(1000));
    assert_eq!(c.connect_timeout, Duration::from_millis(3000));
    assert_eq!(c.pool_idle, Duration::from_secs(60));
    assert_eq!(c.retry_max, 3);
    assert_eq!(c.max_connections, 1024);
    assert_eq!(c.metrics.sink, MetricsSink::Emf);
    assert_eq!(c.metrics.namespace, "EgressWarden");
}

#[test]
fn every_problem_is_reported_at_once_and_the_feature_switched_off() {
    let (c, problems) = Config::from_vars(&vars(&[
        ("EGRESS_WARDEN_PROXY_PORT", "abc"),
        ("EGRESS_WARDEN_POLICY", "maybe"),
        ("EGRESS_WARDEN_POOL_IDLE_S", "400"),
        (
            "EGRESS_WARDEN_ALLOW",
            "good.example.com, bad*glob.com ,10.0.0.0/8",
        ),
    ]));
    let names: Vec<_> = problems.iter().map(|p| p.variable.as_str()).collect();
    assert_eq!(
        names,
        [
            "EGRESS_WARDEN_PROXY_PORT",
            "EGRESS_WARDEN_ALLOW",
            "EGRESS_WARDEN_POLICY",
            "EGRESS_WARDEN_POOL_IDLE_S",
        ]
    );
    assert_eq!(c.proxy_port, 0);
    assert_eq!(c.policy.mode, PolicyMode::Observe);
    assert_eq!(c.pool_idle, Duration::from_secs(60));
    assert_eq!(c.policy.allow.len(), 2);
    let line = problems[0].to_string();
    assert!(
        line.contains("EGRESS_WARDEN_PROXY_PORT")
            && line.contains("\"abc\"")
            && line.contains("0 to 65535")
    );
}

#[test]
fn unknown_variables_are_reported() {
    let (_, problems) = Config::from_vars(&vars(&[("EGRESS_WARDEN_PROXYPORT", "1")]));
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].variable, "EGRESS_WARDEN_PROXYPORT");
}

#[test]
fn the_variable_table_names_each_variable_once_under_the_prefix() {
    let names: BTreeSet<&str> = Var::ALL.iter().map(|var| var.name()).collect();
    assert_eq!(names.len(), Var::ALL.len(), "a name is in the table twice");
    for name in names {
        let suffix = name.strip_prefix(PREFIX).unwrap_or_default();
        assert!(
            !suffix.is_empty()
                && suffix
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'),
            "{name}"
        );
    }
}

#[test]
fn every_variable_in_the_table_is_read() {
    // A value no variable accepts: a variable the parser never reads would raise no problem.
    for var in Var::ALL {
        let (_, problems) = Config::from_vars(&vars(&[(var.name(), "ü:x")]));
        assert!(
            problems.iter().any(|p| p.variable == var.name()),
            "{} is in the table but not read: {problems:?}",
            var.name()
        );
    }
}

#[test]
fn hosts_normalise_against_known_bypasses() {
    for raw in [
        "Example.COM",
        "example.com.",
        "[example.com]",
        " example.com ",
    ] {
        assert_eq!(normalize_host(raw).as_deref(), Ok("example.com"), "{raw}");
    }
    assert_eq!(
        normalize_host("bücher.de").as_deref(),
        Ok("xn--bcher-kva.de")
    );
    assert_eq!(
        normalize_host("[::FFFF:169.254.169.254]").as_deref(),
        Ok("::ffff:169.254.169.254")
    );
    assert!(normalize_host("a..b").is_err());
    // Found by the `host` fuzz target: an empty first label slipped past `*.` rules.
    assert!(normalize_host(".evil.example").is_err());
    assert!(normalize_host(&format!("{}.example", "a".repeat(64))).is_err());
    assert!(normalize_host(&format!("{}.example", "a".repeat(63))).is_ok());
    assert!(normalize_host(".").is_err());
}

#[test]
fn routes_and_warm_targets() {
    let (c, problems) = Config::from_vars(&vars(&[
        (
            "EGRESS_WARDEN_ROUTES",
            "api=https://api.example.com/v1/|https://backup.example.com:8443,x=http://insecure",
        ),
        (
            "EGRESS_WARDEN_WARM",
            "api*2,db.internal:5432,[::1]:443*3,nothing",
        ),
    ]));
    assert_eq!(problems.len(), 2, "{problems:?}");
    let api = c.route("api").map(|r| r.primary.clone());
    assert_eq!(api.as_ref().map(|u| u.base_path.as_str()), Some("/v1"));
    assert_eq!(
        c.route("api")
            .and_then(|r| r.fallback.as_ref())
            .map(|u| u.port),
        Some(8443)
    );
    assert_eq!(
        c.warm,
        vec![
            WarmTarget::Route {
                name: "api".into(),
                count: 2
            },
            WarmTarget::HostPort {
                host: "db.internal".into(),
                port: 5432,
                count: 1
            },
            WarmTarget::HostPort {
                host: "::1".into(),
                port: 443,
                count: 3
            },
        ]
    );
}

#[test]
fn route_options() {
    let (c, problems) = Config::from_vars(&vars(&[(
        "EGRESS_WARDEN_ROUTES",
        "pay=https://a.example.com|https://b.example.com;idempotency=auto;fallback=reads;regions=us-east-1/us-west-2,\
         plain=https://c.example.com,\
         one=https://d.example.com;regions=eu-west-1,\
         bad1=https://e.example.com;fallback=reads,\
         bad2=https://f.example.com;retries=9,\
         bad3=https://g.example.com;regions=us-east-1/us-west-2,\
         bad4=https://h.example.com|https://i.example.com;regions=US_EAST",
    )]));
    let pay = c
        .route("pay")
        .map(|r| r.options.clone())
        .unwrap_or_default();
    assert!(pay.idempotency_auto && pay.fallback_reads_only);
    assert_eq!(
        pay.regions,
        Some(RouteRegions {
            primary: "us-east-1".into(),
            fallback: Some("us-west-2".into())
        })
    );
    assert_eq!(
        c.route("plain").map(|r| r.options.clone()),
        Some(RouteOptions::default())
    );
    assert_eq!(
        c.route("one").and_then(|r| r.options.regions.clone()),
        Some(RouteRegions {
            primary: "eu-west-1".into(),
            fallback: None
        })
    );
    assert_eq!(problems.len(), 4, "{problems:?}");
    for name in ["bad1", "bad2", "bad3", "bad4"] {
        assert!(c.route(name).is_none(), "{name}");
    }
    let text = problems
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("fallback=reads needs a fallback"), "{text}");
    assert!(
        text.contains("unknown route option \"retries=9\""),
        "{text}"
    );
}

#[test]
fn drills_name_a_route_with_a_fallback_and_an_optional_window() {
    let routes = "pay=https://a.example.com|https://b.example.com,solo=https://c.example.com";
    let (c, problems) = Config::from_vars(&vars(&[
        ("EGRESS_WARDEN_ROUTES", routes),
        (
            "EGRESS_WARDEN_DRILL",
            "pay@2026-12-07T10:00:00Z/10m,solo,nope,pay@yesterday/10m,pay@2026-12-07T10:00:00+02:00/0s",
        ),
    ]));
    assert_eq!(c.drills.len(), 1, "{problems:?}");
    let window = c.drills[0].window.expect("a window");
    let start = window
        .start
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    assert_eq!(start, 1_796_637_600, "2026-12-07T10:00:00Z");
    assert_eq!(window.length, Duration::from_secs(600));
    assert_eq!(problems.len(), 4, "{problems:?}");
    let text = problems
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("has no fallback"), "{text}");
    assert!(text.contains("no route \"nope\""), "{text}");
    assert!(text.contains("RFC 3339"), "{text}");
    assert!(text.contains("more than zero"), "{text}");
    let (c, _) = Config::from_vars(&vars(&[
        ("EGRESS_WARDEN_ROUTES", routes),
        ("EGRESS_WARDEN_DRILL", "pay"),
    ]));
    assert_eq!(c.drills[0].window, None, "no window: from INIT on");
}

#[test]
fn provisioned_concurrency_gets_a_larger_budget() {
    let (c, _) = Config::from_vars(&vars(&[(
        "AWS_LAMBDA_INITIALIZATION_TYPE",
        "provisioned-concurrency",
    )]));
    assert_eq!(c.warm_budget, Duration::from_millis(5000));
}

#[test]
fn no_variable_shows_a_credential_in_its_problem() {
    let url = "https://deploy:hunter2@api.example.com/v1?api_key=s3cr3t";
    let values = [
        url.to_owned(),
        format!("api={url}"),
        format!("api=https://api.example.com|{url}"),
        format!("api.example.com:443,{url}*2"),
    ];
    // Every documented variable, and a typo (an unknown variable's value is echoed too).
    let mut names: Vec<String> = Var::ALL.iter().map(|var| var.name().to_owned()).collect();
    names.push(format!("{PREFIX}ROUTEZ"));
    let mut shown = 0;
    for name in &names {
        for value in &values {
            let (_, problems) = Config::from_vars(&vars(&[(name, value)]));
            for problem in problems {
                let line = problem.to_string();
                assert!(
                    !line.contains("hunter2") && !line.contains("s3cr3t"),
                    "{name}={value:?} → {line}"
                );
                shown += 1;
            }
        }
    }
    assert!(
        shown >= names.len(),
        "the values were rejected somewhere: {shown}"
    );
    let (_, problems) = Config::from_vars(&vars(&[("EGRESS_WARDEN_ROUTES", &values[1])]));
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0]
            .to_string()
            .contains("https://***@api.example.com/v1?api_key=***"),
        "{}",
        problems[0]
    );
}

#[test]
fn managed_instances_and_the_flush_timer_and_restore_budget() {
    let (c, problems) = Config::from_vars(&vars(&[(
        "AWS_LAMBDA_INITIALIZATION_TYPE",
        "lambda-managed-instances",
    )]));
    assert!(problems.is_empty());
    assert_eq!(c.lambda.initialization_type, InitType::ManagedInstances);
    assert!(!c.lambda.initialization_type.has_invoke_events());
    assert_eq!(c.flush_interval, None, "the model's default");
    assert_eq!(c.warm_budget, Duration::from_millis(5000));
    let (c, _) = Config::from_vars(&vars(&[("AWS_LAMBDA_INITIALIZATION_TYPE", "snap-start")]));
    assert_eq!(c.restore_budget, Duration::from_millis(1000));
    let (c, problems) = Config::from_vars(&vars(&[
        ("EGRESS_WARDEN_FLUSH_INTERVAL_S", "0"),
        ("EGRESS_WARDEN_RESTORE_BUDGET_MS", "250"),
    ]));
    assert!(problems.is_empty());
    assert_eq!(c.flush_interval, Some(Duration::ZERO));
    assert_eq!(c.restore_budget, Duration::from_millis(250));
    for bad in ["-1", "soon", "3601"] {
        let (c, problems) = Config::from_vars(&vars(&[("EGRESS_WARDEN_FLUSH_INTERVAL_S", bad)]));
        assert_eq!(problems.len(), 1, "{bad}");
        assert_eq!(problems[0].variable, "EGRESS_WARDEN_FLUSH_INTERVAL_S");
        assert_eq!(c.flush_interval, None, "{bad}: the default");
    }
}

#[test]
fn log_level_falls_back_to_lambda_setting() {
    let (c, _) = Config::from_vars(&vars(&[
        ("AWS_LAMBDA_LOG_LEVEL", "DEBUG"),
        ("AWS_LAMBDA_LOG_FORMAT", "JSON"),
    ]));
    assert_eq!(c.log_level, LogLevel::Debug);
    assert!(c.log_json);
}

#[test]
fn rate_limits_and_prices() {
    let (c, problems) = Config::from_vars(&vars(&[
        (
            "EGRESS_WARDEN_RATE_LIMITS",
            "API.Vendor.com=50/s, *.other.com=10/s:20, 10.0.0.0/8=5/s, x.com=fast, y.com=0/s, z.com:443=1/s",
        ),
        ("EGRESS_WARDEN_RATE_LIMIT_WAIT_MS", "500"),
        ("EGRESS_WARDEN_PRICES", "nat=0.05,internet=1e-2,vpc=0.01,cross_region=-1"),
        ("AWS_REGION", "eu-central-1"),
    ]));
    let limits: Vec<_> = c
        .rate_limits
        .iter()
        .map(|l| (l.pattern.as_str(), l.per_second, l.burst))
        .collect();
    assert_eq!(
        limits,
        [("api.vendor.com", 50.0, 1), ("*.other.com", 10.0, 20)]
    );
    assert_eq!(c.rate_limit_wait, Duration::from_millis(500));
    let bad: Vec<_> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(bad.len(), 6, "{bad:#?}");
    assert!(bad[0].contains("10.0.0.0/8=5/s") && bad[0].contains("host glob"));
    assert!(bad[1].contains("x.com=fast") && bad[1].contains("requests per second"));
    assert!(bad[4].contains("vpc=0.01") && bad[4].contains("nat, internet"));
    assert!(bad[5].contains("cross_region=-1") && bad[5].contains("from 0 to 100"));
    // Set entries override; the rest are eu-central-1's.
    assert_eq!(c.prices.nat, 0.05);
    assert_eq!(c.prices.internet, 0.01);
    assert_eq!(c.prices.cross_region, 0.02);
    assert_eq!(c.prices.vpc_endpoint, 0.01);
    let (c, _) = Config::from_vars(&[]);
    assert!(c.rate_limits.is_empty());
    assert_eq!(c.rate_limit_wait, Duration::from_millis(1000));
    assert_eq!(c.prices.nat, 0.045, "US East's where the region is unknown");
}
