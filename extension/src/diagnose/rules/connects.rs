//! `eni_cold_path` and `nat_port_exhaustion`: what opening new connections costs.

use super::{
    connects, example, is_cold, percentile, round1, share, Inputs, Report, Tally, BURST_CONNECTS,
    BURST_SPAN_S, BURST_TIMEOUT_SHARE, COLD_EXTRA_MS, COLD_RATIO, MIN_ADDR_NOT_AVAILABLE,
    MIN_BURST_TIMEOUTS, MIN_COLD_CONNECTS, MIN_STEADY_CONNECTS,
};
use crate::diagnose::Recent;
use crate::metrics::ConnectOutcome;
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

// ---- eni_cold_path -----------------------------------------------------------------------

pub(super) fn eni_cold_path(inputs: &Inputs, recent: Recent) -> Option<Report> {
    if inputs.cold_connect_ms.len() < MIN_COLD_CONNECTS {
        return None;
    }
    let mut steady: Vec<f64> = connects(recent.connects)
        .filter(|c| c.outcome == ConnectOutcome::Connected && !is_cold(c.invocation))
        .map(|c| c.ms)
        .collect();
    if steady.len() < MIN_STEADY_CONNECTS {
        return None;
    }
    let mut cold = inputs.cold_connect_ms.to_vec();
    let cold_p50 = percentile(&mut cold, 0.5);
    let cold_max = cold.last().copied().unwrap_or(0.0);
    let steady_p50 = percentile(&mut steady, 0.5);
    let steady_p95 = percentile(&mut steady, 0.95);
    if cold_p50 < COLD_RATIO * steady_p50 || cold_p50 - steady_p50 < COLD_EXTRA_MS {
        return None;
    }
    let ratio = round1(cold_p50 / steady_p50.max(0.1));
    Some(Report {
        summary: format!(
            "connects during INIT and the first invoke took {} ms (median of {}), {ratio}x the \
             steady state's {} ms",
            round1(cold_p50),
            cold.len(),
            round1(steady_p50)
        ),
        evidence: json!({
            "cold_connects": cold.len(),
            "cold_p50_ms": round1(cold_p50),
            "cold_max_ms": round1(cold_max),
            "steady_connects": steady.len(),
            "steady_p50_ms": round1(steady_p50),
            "steady_p95_ms": round1(steady_p95),
            "ratio": ratio,
        }),
        fix: "Use provisioned concurrency so new execution environments (and their first \
              connections) are set up before requests arrive; warm the connections the \
              function needs during INIT (EGRESS_WARDEN_WARM); keep the function's \
              subnet/security-group combinations few and stable, since each new combination \
              means new network interfaces."
            .to_owned(),
    })
}

// ---- nat_port_exhaustion -----------------------------------------------------------------

struct Destination {
    tally: Tally,
    first: Instant,
    last: Instant,
}

/// What a NAT gateway allows per destination (IP, port, protocol) and per public address.
const NAT_CONNECTIONS_PER_DESTINATION: u64 = 55_000;

/// This environment's share of the NAT's per-destination limit; the fleet's is the sum of
/// `connections_peak` over the function's environments.
fn headroom(open: u64) -> serde_json::Value {
    json!({
        "open_upstream_connections": open,
        "nat_limit_per_destination": NAT_CONNECTIONS_PER_DESTINATION,
        "fleet_view": "Sum of connections_peak per Destination over the function's environments, against the limit",
    })
}

pub(super) fn nat_port_exhaustion(inputs: &Inputs, recent: Recent) -> Option<Report> {
    let mut total = Tally::default();
    let mut exhausted = Vec::new();
    for c in connects(recent.connects) {
        total.add(c.outcome);
        if c.outcome == ConnectOutcome::AddrNotAvailable {
            example(&mut exhausted, || format!("{} ({})", c.host, c.addr));
        }
    }
    let fix = "Reuse connections: send the traffic through the proxy's route mode \
               (EGRESS_WARDEN_ROUTES, pooled keep-alive connections) or enable keep-alive in the \
               function's HTTP client; add secondary IPv4 addresses to the NAT gateway (each \
               allows about 55,000 simultaneous connections per destination IP and port) or \
               spread the traffic over more NAT gateways or destination addresses."
        .to_owned();
    if total.addr_not_available >= MIN_ADDR_NOT_AVAILABLE {
        return Some(Report {
            summary: format!(
                "{} of {} connects failed for lack of a local address or port",
                total.addr_not_available, total.attempts
            ),
            evidence: json!({
                "addr_not_available": total.addr_not_available,
            "headroom": headroom(inputs.open_connections),
                "attempts": total.attempts,
                "connected": total.connected,
                "destinations": exhausted,
                "headroom": headroom(inputs.open_connections),
            }),
            fix,
        });
    }
    // Timeouts concentrated on one busy destination that otherwise answers: its new
    // connections outgrow what the NAT can map to it. Per destination only when the totals
    // allow it, which keeps the usual evaluation to one pass.
    if total.attempts < BURST_CONNECTS || total.timeouts < MIN_BURST_TIMEOUTS {
        return None;
    }
    let mut by_addr: HashMap<SocketAddr, Destination> = HashMap::new();
    for c in connects(recent.connects) {
        let d = by_addr.entry(c.addr).or_insert(Destination {
            tally: Tally::default(),
            first: c.at,
            last: c.at,
        });
        d.tally.add(c.outcome);
        d.last = c.at;
    }
    let (addr, d) = by_addr.iter().find(|(_, d)| {
        let t = &d.tally;
        t.attempts >= BURST_CONNECTS
            && t.timeouts >= MIN_BURST_TIMEOUTS
            && share(t.timeouts, t.attempts) >= BURST_TIMEOUT_SHARE
            && share(t.connected, t.attempts) >= 0.5
            && share(t.timeouts, total.timeouts) >= 0.8
            && (d.last - d.first).as_secs_f64() <= BURST_SPAN_S
    })?;
    let span_s = round1((d.last - d.first).as_secs_f64());
    Some(Report {
        summary: format!(
            "{} of {} new connections to {addr} within {span_s} s timed out while the rest \
             connected",
            d.tally.timeouts, d.tally.attempts
        ),
        evidence: json!({
            "destination": addr.to_string(),
            "new_connections": d.tally.attempts,
            "timeouts": d.tally.timeouts,
            "connected": d.tally.connected,
            "span_s": span_s,
            "timeouts_elsewhere": total.timeouts - d.tally.timeouts,
            "addr_not_available": total.addr_not_available,
        }),
        fix,
    })
}

pub(super) fn new_connections_work(_: &Inputs, recent: Recent) -> Option<Report> {
    let mut total = Tally::default();
    for c in connects(recent.connects) {
        total.add(c.outcome);
    }
    let healthy = total.addr_not_available == 0
        && total.connected >= 20
        && share(total.timeouts, total.attempts) < 0.01;
    healthy.then(|| Report {
        summary: format!(
            "{} new connections opened without running out of ports",
            total.connected
        ),
        evidence: json!({ "connected": total.connected, "timeouts": total.timeouts }),
        fix: String::new(),
    })
}
