//! `idle_reset`: kept-alive connections reset after idling.

use super::{
    example, percentile, round1, share, Inputs, Report, CLEAR_REQUESTS, MIN_RESETS, RESET_SHARE,
};
use crate::diagnose::Recent;
use crate::metrics::{Event, Observation};
use serde_json::json;

pub(super) fn idle_reset(inputs: &Inputs, recent: Recent) -> Option<Report> {
    let (mut stale, mut resets, mut caught) = (0u64, 0u64, 0u64);
    let mut idle_s = Vec::new();
    let mut hosts = Vec::new();
    for o in recent.stale.iter() {
        if let Event::StaleConnection {
            host,
            idle,
            reset,
            caught: was_caught,
            ..
        } = &o.event
        {
            stale += 1;
            if *reset {
                resets += 1;
                caught += u64::from(*was_caught);
                idle_s.push(idle.as_secs_f64());
                example(&mut hosts, || host.clone());
            }
        }
    }
    if resets < MIN_RESETS || share(resets, stale) < RESET_SHARE {
        return None;
    }
    let idle_p50 = round1(percentile(&mut idle_s, 0.5));
    let idle_max = round1(idle_s.last().copied().unwrap_or(0.0));
    let pool_idle_s = inputs.settings.pool_idle.as_secs();
    Some(Report {
        summary: format!(
            "{resets} reused connections were reset after idling (median {idle_p50} s), {} of \
             them under a request",
            resets - caught
        ),
        evidence: json!({
            "resets": resets,
            "stale_connections": stale,
            "caught_before_use": caught,
            "failed_requests": resets - caught,
            "idle_p50_s": idle_p50,
            "idle_max_s": idle_max,
            "hosts": hosts,
            "pool_idle_s": pool_idle_s,
        }),
        fix: format!(
            "Keep every idle timeout below the NAT gateway's 350 s and below the server's \
             keep-alive timeout: EGRESS_WARDEN_POOL_IDLE_S (now {pool_idle_s} s) for the \
             proxy's pools, and the idle timeout of HTTP clients in the function that keep \
             their own connections (e.g. through CONNECT), or enable TCP keep-alive probes; \
             retry idempotent requests once on a reset (route mode does, \
             EGRESS_WARDEN_RETRY_MAX)."
        ),
    })
}

pub(super) fn no_more_resets(_: &Inputs, recent: Recent) -> Option<Report> {
    let reset = |o: &Observation| matches!(o.event, Event::StaleConnection { reset: true, .. });
    if recent.stale.iter().any(reset) {
        return None;
    }
    let requests = recent.requests.len() as u64;
    (requests >= CLEAR_REQUESTS).then(|| Report {
        summary: format!("{requests} requests without a reset connection"),
        evidence: json!({ "requests": requests, "resets": 0 }),
        fix: String::new(),
    })
}
