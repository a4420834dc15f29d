//! One rule per finding: when it fires (over the window's events that still count towards
//! it) and when it clears (over the events since it fired), with the evidence either way.
//!
//! Thresholds keep noise out: every rule needs a minimum number of events *and* a share, so
//! a single timeout, reset or slow answer is never a finding. The numbers are in
//! `docs/findings.md`.

mod connects;
mod dns;
mod egress;
mod idle;
mod region;

use super::{AwsService, Entry, Events, Recent, Settings};
use crate::metrics::{ConnectOutcome, Event};
use connects::{eni_cold_path, nat_port_exhaustion, new_connections_work};
use dns::{dns_throttled, dns_works};
use egress::{aws_endpoint_unreachable, aws_endpoints_work, no_egress_route, public_egress_works};
use idle::{idle_reset, no_more_resets};
use region::{cross_region, cross_region_gone};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Instant;

/// What a rule reads besides the events.
pub(super) struct Inputs<'a> {
    pub settings: &'a Settings,
    /// Connect times of the cold phase (INIT and the first invoke).
    pub cold_connect_ms: &'a [f64],
    /// Upstream connections open now, for the NAT headroom in `nat_port_exhaustion`.
    pub open_connections: u64,
}

/// A rule's verdict: what was seen (one line), the numbers, and the fix.
pub(super) struct Report {
    pub summary: String,
    pub evidence: Value,
    pub fix: String,
}

pub(super) type Judge = fn(&Inputs, Recent) -> Option<Report>;

pub(super) struct Rule {
    pub name: &'static str,
    pub fires: Judge,
    pub clears: Judge,
}

pub(super) const RULES: [Rule; 7] = [
    Rule {
        name: "no_egress_route",
        fires: no_egress_route,
        clears: public_egress_works,
    },
    Rule {
        name: "aws_endpoint_unreachable",
        fires: aws_endpoint_unreachable,
        clears: aws_endpoints_work,
    },
    Rule {
        name: "eni_cold_path",
        fires: eni_cold_path,
        clears: never,
    },
    Rule {
        name: "nat_port_exhaustion",
        fires: nat_port_exhaustion,
        clears: new_connections_work,
    },
    Rule {
        name: "dns_throttled",
        fires: dns_throttled,
        clears: dns_works,
    },
    Rule {
        name: "idle_reset",
        fires: idle_reset,
        clears: no_more_resets,
    },
    Rule {
        name: "cross_region",
        fires: cross_region,
        clears: cross_region_gone,
    },
];

// no_egress_route / aws_endpoint_unreachable: connects that get no answer.
const MIN_TIMEOUTS: u64 = 3;
const TIMEOUT_SHARE: f64 = 0.8;
const CLEAR_CONNECTED: u64 = 2;
// eni_cold_path
const MIN_COLD_CONNECTS: usize = 2;
const MIN_STEADY_CONNECTS: usize = 3;
const COLD_RATIO: f64 = 3.0;
const COLD_EXTRA_MS: f64 = 50.0;
// nat_port_exhaustion
const MIN_ADDR_NOT_AVAILABLE: u64 = 3;
const BURST_CONNECTS: u64 = 100;
const BURST_SPAN_S: f64 = 60.0;
const MIN_BURST_TIMEOUTS: u64 = 5;
const BURST_TIMEOUT_SHARE: f64 = 0.02;
// dns_throttled
const MIN_DNS_FAILURES: u64 = 3;
const DNS_FAILURE_SHARE: f64 = 0.2;
const MIN_DNS_ANSWERS: usize = 10;
const DNS_P95_MS: f64 = 30.0;
// idle_reset
const MIN_RESETS: u64 = 2;
const RESET_SHARE: f64 = 0.5;
const CLEAR_REQUESTS: u64 = 10;
// cross_region
const MIN_REQUESTS: u64 = 10;
const MIN_CROSS_REGION: u64 = 2;
const CROSS_REGION_SHARE: f64 = 0.05;

/// INIT (0) and the first invoke (1): the phase `eni_cold_path` compares with the rest.
pub(super) fn is_cold(invocation: u64) -> bool {
    invocation <= 1
}

/// How a set of connect attempts ended.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    attempts: u64,
    connected: u64,
    timeouts: u64,
    unreachable: u64,
    refused: u64,
    addr_not_available: u64,
}

impl Tally {
    fn add(&mut self, outcome: ConnectOutcome) {
        self.attempts += 1;
        match outcome {
            ConnectOutcome::Connected => self.connected += 1,
            ConnectOutcome::Timeout => self.timeouts += 1,
            ConnectOutcome::Unreachable => self.unreachable += 1,
            ConnectOutcome::Refused => self.refused += 1,
            ConnectOutcome::AddrNotAvailable => self.addr_not_available += 1,
            ConnectOutcome::Other => {}
        }
    }

    /// Enough attempts timed out, nothing connected, and timeouts are most of the attempts.
    /// Only silence counts: a refusal (RST) or an ICMP unreachable is an answer from someone
    /// on the path (a closed port, a firewall's REJECT), and a VPC without a NAT route drops
    /// packets silently.
    fn unanswered_path(&self) -> bool {
        self.timeouts >= MIN_TIMEOUTS
            && self.connected == 0
            && share(self.timeouts, self.attempts) >= TIMEOUT_SHARE
    }
}

struct Connect<'a> {
    host: &'a str,
    addr: SocketAddr,
    outcome: ConnectOutcome,
    ms: f64,
    invocation: u64,
    at: Instant,
    /// Outside the VPC ranges.
    public: bool,
    aws: Option<&'a AwsService>,
}

fn connects(events: Events<'_>) -> impl Iterator<Item = Connect<'_>> {
    events
        .entries()
        .filter_map(|e: &Entry| match &e.observation.event {
            Event::Connect {
                host,
                addr,
                outcome,
                ms,
                ..
            } => Some(Connect {
                host,
                addr: *addr,
                outcome: *outcome,
                ms: *ms,
                invocation: e.observation.invocation,
                at: e.observation.at,
                public: e.facts.public,
                aws: e.facts.aws.as_ref(),
            }),
            _ => None,
        })
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Nearest-rank percentile; sorts `values`.
fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = (p * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// One decimal is all the evidence needs.
fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn percent(part: u64, whole: u64) -> f64 {
    round1(share(part, whole) * 100.0)
}

/// Adds `item` to a short list of examples for the evidence.
fn example(list: &mut Vec<String>, item: impl FnOnce() -> String) {
    const EXAMPLES: usize = 5;
    if list.len() < EXAMPLES {
        let item = item();
        if !list.contains(&item) {
            list.push(item);
        }
    }
}

fn never(_: &Inputs, _: Recent) -> Option<Report> {
    None
}
