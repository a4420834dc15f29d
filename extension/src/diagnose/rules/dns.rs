//! `dns_throttled`: the upstream resolver failing or slow.

use super::{
    percentile, round1, share, Inputs, Report, DNS_FAILURE_SHARE, DNS_P95_MS, MIN_DNS_ANSWERS,
    MIN_DNS_FAILURES,
};
use crate::diagnose::{Events, Recent};
use crate::metrics::{DnsOutcome, Event};
use serde_json::{json, Value};

#[derive(Default)]
struct DnsTally {
    queries: u64,
    timeouts: u64,
    servfail: u64,
    errors: u64,
    answer_ms: Vec<f64>,
}

impl DnsTally {
    fn of(events: Events) -> DnsTally {
        let mut t = DnsTally::default();
        for o in events.iter() {
            if let Event::DnsUpstream { outcome, ms } = &o.event {
                t.queries += 1;
                match outcome {
                    DnsOutcome::Answered => t.answer_ms.push(*ms),
                    DnsOutcome::Timeout => t.timeouts += 1,
                    DnsOutcome::ServFail => t.servfail += 1,
                    DnsOutcome::Error => t.errors += 1,
                }
            }
        }
        t
    }

    fn failures(&self) -> u64 {
        self.timeouts + self.servfail
    }

    fn evidence(&mut self) -> Value {
        let p50 = percentile(&mut self.answer_ms, 0.5);
        let p95 = percentile(&mut self.answer_ms, 0.95);
        json!({
            "queries": self.queries,
            "answered": self.answer_ms.len(),
            "timeouts": self.timeouts,
            "servfail": self.servfail,
            "errors": self.errors,
            "upstream_p50_ms": round1(p50),
            "upstream_p95_ms": round1(p95),
        })
    }
}

pub(super) fn dns_throttled(_: &Inputs, recent: Recent) -> Option<Report> {
    let mut t = DnsTally::of(recent.dns);
    let failing =
        t.failures() >= MIN_DNS_FAILURES && share(t.failures(), t.queries) >= DNS_FAILURE_SHARE;
    let p95 = percentile(&mut t.answer_ms, 0.95);
    let slow = t.answer_ms.len() >= MIN_DNS_ANSWERS && p95 > DNS_P95_MS;
    if !failing && !slow {
        return None;
    }
    let summary = if failing {
        format!(
            "{} of {} upstream DNS queries timed out or got SERVFAIL",
            t.failures(),
            t.queries
        )
    } else {
        format!(
            "upstream DNS answers took {} ms at p95 over {} answers (over {DNS_P95_MS} ms)",
            round1(p95),
            t.answer_ms.len()
        )
    };
    Some(Report {
        summary,
        evidence: t.evidence(),
        fix: "The VPC resolver answers at most 1,024 packets per second per network interface, \
              shared by the environments behind it: send the function's lookups through this \
              cache (the exec wrapper's HTTP(S)_PROXY, or 127.0.0.1:EGRESS_WARDEN_DNS_PORT), \
              raise EGRESS_WARDEN_DNS_MIN_TTL_S (e.g. 30) for names with tiny TTLs, keep \
              EGRESS_WARDEN_DNS_STALE_S, and cut name churn (per-request host names)."
            .to_owned(),
    })
}

pub(super) fn dns_works(_: &Inputs, recent: Recent) -> Option<Report> {
    let mut t = DnsTally::of(recent.dns);
    let p95 = percentile(&mut t.answer_ms, 0.95);
    let healthy = t.answer_ms.len() >= MIN_DNS_ANSWERS
        && share(t.failures(), t.queries) < 0.05
        && p95 <= DNS_P95_MS;
    healthy.then(|| Report {
        summary: format!(
            "{} upstream DNS queries answered in time",
            t.answer_ms.len()
        ),
        evidence: t.evidence(),
        fix: String::new(),
    })
}
