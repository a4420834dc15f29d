use super::{connect, dns, request, stale, Fixture};
use crate::metrics::{ConnectOutcome::*, DnsOutcome};

const PUBLIC: &str = "203.0.113.10:443";
const PUBLIC_2: &str = "198.51.100.7:443";
const PRIVATE: &str = "10.0.3.4:5432";

// ---- no_egress_route ----

#[test]
fn public_timeouts_while_the_vpc_works_are_no_egress_route() {
    let mut f = Fixture::new();
    f.note_n(2, connect("db.internal", PRIVATE, Connected, 1.0));
    f.note_n(2, connect("api.example.com", PUBLIC, Timeout, 3000.0));
    assert!(f.evaluate().is_empty(), "two timeouts are not enough");
    f.note(connect("api.example.com", PUBLIC_2, Timeout, 3000.0));
    assert_eq!(f.evaluate(), ["no_egress_route"]);
    let evidence = f.evidence("no_egress_route");
    assert_eq!(evidence["public_timeouts"], 3);
    assert_eq!(evidence["public_connected"], 0);
    assert_eq!(evidence["private_connected"], 2);
    assert_eq!(evidence["destinations"].as_array().unwrap().len(), 2);
    assert_eq!(f.symptom_count("no_egress_route"), 1);
}

#[test]
fn function_timeouts_reported_by_telemetry_are_evidence_beside_unanswered_connects() {
    let mut f = Fixture::new();
    f.note_n(3, connect("api.example.com", PUBLIC, Timeout, 3000.0));
    f.note_n(2, crate::metrics::Event::FunctionTimeout);
    assert_eq!(f.evaluate(), ["no_egress_route"]);
    assert_eq!(f.evidence("no_egress_route")["function_timeouts"], 2);
}

#[test]
fn everything_timing_out_is_no_egress_route() {
    let mut f = Fixture::new();
    f.note_n(2, connect("db.internal", PRIVATE, Timeout, 3000.0));
    f.note_n(3, connect("api.example.com", PUBLIC, Timeout, 3000.0));
    assert_eq!(f.evaluate(), ["no_egress_route"]);
}

#[test]
fn refused_connects_are_never_no_egress_route() {
    let mut f = Fixture::new();
    f.note_n(50, connect("api.example.com", PUBLIC, Refused, 0.3));
    assert!(f.evaluate().is_empty());
    // Mostly refusals with a few timeouts: the path answers, so still no finding.
    f.note_n(3, connect("api.example.com", PUBLIC, Timeout, 3000.0));
    assert!(f.evaluate().is_empty());
    assert_eq!(f.symptom_count("no_egress_route"), 0);
}

#[test]
fn icmp_unreachable_answers_are_not_no_egress_route() {
    let mut f = Fixture::new();
    // A REJECT with icmp-host-unreachable: someone answered.
    f.note_n(10, connect("api.example.com", PUBLIC, Unreachable, 0.5));
    assert!(f.evaluate().is_empty());
}

#[test]
fn timeouts_beside_working_public_connects_are_not_no_egress_route() {
    let mut f = Fixture::new();
    f.note_n(5, connect("api.example.com", PUBLIC, Timeout, 3000.0));
    f.note(connect("other.example.com", PUBLIC_2, Connected, 20.0));
    assert!(f.evaluate().is_empty());
}

#[test]
fn a_finding_is_reported_once_per_change() {
    let mut f = Fixture::new();
    f.note_n(3, connect("api.example.com", PUBLIC, Timeout, 3000.0));
    assert_eq!(f.evaluate(), ["no_egress_route"]);
    // More of the same: still one report.
    f.note_n(10, connect("api.example.com", PUBLIC, Timeout, 3000.0));
    f.evaluate();
    assert_eq!(f.evaluate(), ["no_egress_route"]);
    assert_eq!(f.symptom_count("no_egress_route"), 1);

    // One success is not yet healthy evidence; two clear it.
    f.note(connect("api.example.com", PUBLIC, Connected, 20.0));
    assert_eq!(f.evaluate(), ["no_egress_route"]);
    f.note(connect("api.example.com", PUBLIC, Connected, 20.0));
    assert!(f.evaluate().is_empty());
    // The old timeouts are still in the window but no longer count.
    assert!(f.evaluate().is_empty());
    assert_eq!(f.symptom_count("no_egress_route"), 1);

    // It comes back: reported again.
    f.note_n(3, connect("api.example.com", PUBLIC, Timeout, 3000.0));
    assert_eq!(f.evaluate(), ["no_egress_route"]);
    assert_eq!(f.symptom_count("no_egress_route"), 2);
}

#[test]
fn the_vpc_ranges_come_from_the_settings() {
    let mut f = Fixture::new();
    // 10.x is inside the default VPC ranges: timeouts there are not public egress.
    f.note_n(5, connect("db.internal", PRIVATE, Timeout, 3000.0));
    assert!(f.evaluate().is_empty());
}

// ---- aws_endpoint_unreachable ----

#[test]
fn aws_endpoint_timeouts_name_the_vpc_endpoint() {
    let mut f = Fixture::new();
    f.note_n(
        3,
        connect(
            "s3.eu-west-1.amazonaws.com",
            "52.218.1.1:443",
            Timeout,
            3000.0,
        ),
    );
    f.note_n(
        3,
        connect("sts.amazonaws.com", "10.0.9.9:443", Timeout, 3000.0),
    );
    // DynamoDB works: only the failing services are named.
    f.note(connect(
        "dynamodb.us-east-1.amazonaws.com",
        "3.218.180.1:443",
        Connected,
        2.0,
    ));
    let active = f.evaluate();
    assert!(active.contains(&"aws_endpoint_unreachable"), "{active:?}");
    let endpoints = f.evidence("aws_endpoint_unreachable")["endpoints"].clone();
    let endpoints = endpoints.as_array().unwrap();
    assert_eq!(endpoints.len(), 2, "{endpoints:?}");
    assert_eq!(endpoints[0]["vpc_endpoint"], "com.amazonaws.eu-west-1.s3");
    assert_eq!(endpoints[0]["endpoint_type"], "gateway");
    assert_eq!(endpoints[1]["vpc_endpoint"], "com.amazonaws.us-east-1.sts");
    assert_eq!(endpoints[1]["endpoint_type"], "interface");
    let fix = f
        .board
        .list()
        .into_iter()
        .find(|x| x.finding == "aws_endpoint_unreachable")
        .unwrap()
        .fix;
    assert!(fix.contains("com.amazonaws.us-east-1.sts"), "{fix}");
}

#[test]
fn refused_aws_endpoints_and_other_hosts_are_not_aws_endpoint_unreachable() {
    let mut f = Fixture::new();
    f.note_n(
        5,
        connect("sqs.us-east-1.amazonaws.com", "10.0.9.9:443", Refused, 0.2),
    );
    f.note_n(5, connect("db.internal", PRIVATE, Timeout, 3000.0));
    assert!(f.evaluate().is_empty());
}

#[test]
fn aws_endpoint_unreachable_clears_when_endpoints_connect() {
    let mut f = Fixture::new();
    f.note_n(
        3,
        connect(
            "sqs.us-east-1.amazonaws.com",
            "10.0.9.9:443",
            Timeout,
            3000.0,
        ),
    );
    assert_eq!(f.evaluate(), ["aws_endpoint_unreachable"]);
    f.note_n(
        2,
        connect(
            "sqs.us-east-1.amazonaws.com",
            "10.0.9.9:443",
            Connected,
            1.0,
        ),
    );
    assert!(f.evaluate().is_empty());
}

// ---- eni_cold_path ----

#[test]
fn slow_cold_connects_are_eni_cold_path() {
    let mut f = Fixture::new();
    f.note_n(2, connect("api.example.com", PUBLIC, Connected, 400.0));
    f.invoke_until(1);
    f.note(connect("api.example.com", PUBLIC, Connected, 350.0));
    f.invoke_until(2);
    f.note_n(2, connect("api.example.com", PUBLIC, Connected, 3.0));
    assert!(f.evaluate().is_empty(), "not enough steady samples yet");
    f.note(connect("api.example.com", PUBLIC, Connected, 4.0));
    assert_eq!(f.evaluate(), ["eni_cold_path"]);
    let e = f.evidence("eni_cold_path");
    assert_eq!(e["cold_connects"], 3);
    assert_eq!(e["cold_p50_ms"], 400.0);
    assert_eq!(e["steady_p50_ms"], 3.0);
    // It describes how this environment started: it stays.
    f.note_n(50, connect("api.example.com", PUBLIC, Connected, 3.0));
    assert_eq!(f.evaluate(), ["eni_cold_path"]);
    assert_eq!(f.symptom_count("eni_cold_path"), 1);
}

#[test]
fn a_slightly_slower_start_is_not_eni_cold_path() {
    let mut f = Fixture::new();
    // 4x slower, but only by 12 ms: noise, not a cold path.
    f.note_n(3, connect("api.example.com", PUBLIC, Connected, 16.0));
    f.invoke_until(2);
    f.note_n(10, connect("api.example.com", PUBLIC, Connected, 4.0));
    // A single slow cold connect is not enough either.
    let mut g = Fixture::new();
    g.note(connect("api.example.com", PUBLIC, Connected, 900.0));
    g.invoke_until(2);
    g.note_n(10, connect("api.example.com", PUBLIC, Connected, 4.0));
    assert!(f.evaluate().is_empty());
    assert!(g.evaluate().is_empty());
}

// ---- nat_port_exhaustion ----

#[test]
fn address_not_available_is_nat_port_exhaustion() {
    let mut f = Fixture::new();
    f.note_n(100, connect("api.example.com", PUBLIC, Connected, 2.0));
    f.note_n(2, connect("api.example.com", PUBLIC, AddrNotAvailable, 0.1));
    assert!(f.evaluate().is_empty());
    f.note(connect("api.example.com", PUBLIC, AddrNotAvailable, 0.1));
    assert_eq!(f.evaluate(), ["nat_port_exhaustion"]);
    let e = f.evidence("nat_port_exhaustion");
    assert_eq!(e["addr_not_available"], 3);
    // The evidence names the headroom: what this environment holds of the NAT's limit.
    assert_eq!(e["headroom"]["nat_limit_per_destination"], 55_000);
    assert!(e["headroom"]["open_upstream_connections"].is_u64(), "{e}");
    f.note_n(30, connect("api.example.com", PUBLIC, Connected, 2.0));
    assert!(
        f.evaluate().is_empty(),
        "cleared by new connections working"
    );
}

#[test]
fn timeouts_concentrated_on_one_busy_destination_are_nat_port_exhaustion() {
    let mut f = Fixture::new();
    f.note_n(140, connect("api.example.com", PUBLIC, Connected, 2.0));
    f.note_n(8, connect("api.example.com", PUBLIC, Timeout, 3000.0));
    f.note_n(20, connect("other.example.com", PUBLIC_2, Connected, 2.0));
    assert_eq!(f.evaluate(), ["nat_port_exhaustion"]);
    let e = f.evidence("nat_port_exhaustion");
    assert_eq!(e["destination"], PUBLIC);
    assert_eq!(e["timeouts"], 8);
}

#[test]
fn a_few_timeouts_under_moderate_load_are_not_nat_port_exhaustion() {
    let mut f = Fixture::new();
    // Too few new connections to exhaust anything.
    f.note_n(40, connect("api.example.com", PUBLIC, Connected, 2.0));
    f.note_n(6, connect("api.example.com", PUBLIC, Timeout, 3000.0));
    // Timeouts spread over destinations are not concentrated.
    f.note_n(150, connect("x.example.com", PUBLIC_2, Connected, 2.0));
    f.note_n(6, connect("x.example.com", PUBLIC_2, Timeout, 3000.0));
    assert!(f.evaluate().is_empty());
}

// ---- dns_throttled ----

#[test]
fn upstream_dns_failures_are_dns_throttled() {
    let mut f = Fixture::new();
    f.note_n(2, dns(DnsOutcome::Timeout, 2000.0));
    f.note_n(5, dns(DnsOutcome::Answered, 2.0));
    assert!(f.evaluate().is_empty(), "two failures are noise");
    f.note(dns(DnsOutcome::ServFail, 5.0));
    assert_eq!(f.evaluate(), ["dns_throttled"]);
    let e = f.evidence("dns_throttled");
    assert_eq!(e["timeouts"], 2);
    assert_eq!(e["servfail"], 1);
    assert_eq!(e["queries"], 8);
    // Healthy answers clear it.
    f.note_n(9, dns(DnsOutcome::Answered, 2.0));
    assert_eq!(f.evaluate(), ["dns_throttled"]);
    f.note(dns(DnsOutcome::Answered, 2.0));
    assert!(f.evaluate().is_empty());
}

#[test]
fn slow_upstream_dns_is_dns_throttled() {
    let mut f = Fixture::new();
    f.note_n(9, dns(DnsOutcome::Answered, 45.0));
    assert!(f.evaluate().is_empty(), "too few answers to judge p95");
    f.note(dns(DnsOutcome::Answered, 45.0));
    assert_eq!(f.evaluate(), ["dns_throttled"]);
    assert_eq!(f.evidence("dns_throttled")["upstream_p95_ms"], 45.0);
}

#[test]
fn rare_dns_failures_and_fast_answers_are_not_dns_throttled() {
    let mut f = Fixture::new();
    f.note_n(3, dns(DnsOutcome::Timeout, 2000.0));
    f.note_n(60, dns(DnsOutcome::Answered, 3.0));
    // Errors (refused, unreachable resolver) are not throttling.
    f.note_n(10, dns(DnsOutcome::Error, 1.0));
    assert!(f.evaluate().is_empty());
}

// ---- idle_reset ----

#[test]
fn resets_after_idle_are_idle_reset() {
    let mut f = Fixture::new();
    f.note(stale(400, true, false));
    assert!(f.evaluate().is_empty(), "one reset is noise");
    f.note(stale(380, true, true));
    assert_eq!(f.evaluate(), ["idle_reset"]);
    let e = f.evidence("idle_reset");
    assert_eq!(e["resets"], 2);
    assert_eq!(e["failed_requests"], 1);
    assert_eq!(e["pool_idle_s"], 60);
    f.note_n(10, request("api.example.com", false));
    assert!(
        f.evaluate().is_empty(),
        "cleared by requests without resets"
    );
}

#[test]
fn clean_closes_are_not_idle_reset() {
    let mut f = Fixture::new();
    // Servers closing idle keep-alive connections with a FIN is normal.
    f.note_n(10, stale(90, false, true));
    f.note_n(2, stale(90, true, true));
    assert!(f.evaluate().is_empty());
}

// ---- cross_region ----

#[test]
fn requests_to_other_regions_are_cross_region() {
    let mut f = Fixture::new();
    f.note_n(8, request("s3.us-east-1.amazonaws.com", false));
    f.note_n(2, request("s3.eu-west-1.amazonaws.com", true));
    assert_eq!(f.evaluate(), ["cross_region"]);
    let e = f.evidence("cross_region");
    assert_eq!(e["share_pct"], 20.0);
    assert_eq!(e["hosts"][0]["region"], "eu-west-1");
    assert_eq!(e["home_region"], "us-east-1");
    f.note_n(20, request("s3.us-east-1.amazonaws.com", false));
    assert!(f.evaluate().is_empty(), "cleared by regional requests");
}

#[test]
fn a_small_or_rare_cross_region_share_is_not_a_finding() {
    let mut f = Fixture::new();
    // 5 %: not above the threshold.
    f.note_n(38, request("s3.us-east-1.amazonaws.com", false));
    f.note_n(2, request("s3.eu-west-1.amazonaws.com", true));
    assert!(f.evaluate().is_empty());
    // All cross-region, but too few requests to judge.
    let mut g = Fixture::new();
    g.note_n(5, request("s3.eu-west-1.amazonaws.com", true));
    assert!(g.evaluate().is_empty());
}

// ---- all together ----

#[test]
fn a_healthy_network_under_load_gives_no_finding() {
    let mut f = Fixture::new();
    for i in 0..3000u64 {
        f.invoke_until(i / 100);
        let host = [
            "api.example.com",
            "s3.us-east-1.amazonaws.com",
            "db.internal",
        ][i as usize % 3];
        let addr = [PUBLIC, "52.216.1.1:443", PRIVATE][i as usize % 3];
        f.note(connect(host, addr, Connected, 1.0 + (i % 7) as f64));
        f.note(request(host, false));
        f.note(dns(DnsOutcome::Answered, 0.5 + (i % 11) as f64));
        if i % 50 == 0 {
            f.note(stale(70, false, true));
            f.note(connect(host, addr, Refused, 0.2));
        }
        if i % 400 == 0 {
            f.note(connect(host, addr, Timeout, 3000.0));
            f.note(dns(DnsOutcome::Timeout, 2000.0));
        }
        if i % 100 == 0 {
            assert!(f.evaluate().is_empty(), "at {i}: {:?}", f.board.list());
        }
    }
    assert!(f.evaluate().is_empty());
    assert!(f.symptoms.is_empty());
}

#[test]
fn evaluation_is_cheap() {
    let mut f = Fixture::new();
    f.invoke_until(2);
    f.evaluate();
    let mut times = Vec::new();
    for round in 0..21 {
        for i in 0..75 {
            let ms = 2.0 + (i % 5) as f64;
            f.note(connect("api.example.com", PUBLIC, Connected, ms));
            f.note(connect(
                "s3.us-east-1.amazonaws.com",
                PUBLIC_2,
                Connected,
                ms,
            ));
            f.note(request("api.example.com", false));
            f.note(dns(DnsOutcome::Answered, ms));
        }
        let started = std::time::Instant::now();
        f.diagnosis.run();
        if round > 0 {
            times.push(started.elapsed());
        }
    }
    times.sort();
    let median = times[times.len() / 2];
    // Tens of microseconds in release builds; generous here for debug builds on a busy
    // machine.
    assert!(median < std::time::Duration::from_millis(20), "{median:?}");
    assert!(f.evaluate().is_empty());
}
