//! `cross_region`: requests to AWS endpoints of other regions.

use super::{percent, share, Inputs, Report, CROSS_REGION_SHARE, MIN_CROSS_REGION, MIN_REQUESTS};
use crate::aws::aws_region_of;
use crate::diagnose::{Events, Recent};
use crate::metrics::Event;
use serde_json::{json, Value};

struct RegionTally<'a> {
    requests: u64,
    cross: u64,
    /// host → requests, for the cross-region hosts.
    hosts: Vec<(&'a str, u64)>,
}

impl<'a> RegionTally<'a> {
    fn of(events: Events<'a>) -> RegionTally<'a> {
        let mut t = RegionTally {
            requests: 0,
            cross: 0,
            hosts: Vec::new(),
        };
        for o in events.iter() {
            if let Event::Request { host, cross_region } = &o.event {
                t.requests += 1;
                if *cross_region {
                    t.cross += 1;
                    match t.hosts.iter_mut().find(|(h, _)| h == host) {
                        Some((_, n)) => *n += 1,
                        None => t.hosts.push((host, 1)),
                    }
                }
            }
        }
        t
    }
}

pub(super) fn cross_region(inputs: &Inputs, recent: Recent) -> Option<Report> {
    let mut t = RegionTally::of(recent.requests);
    if t.requests < MIN_REQUESTS
        || t.cross < MIN_CROSS_REGION
        || share(t.cross, t.requests) <= CROSS_REGION_SHARE
    {
        return None;
    }
    let home = inputs.settings.home_region.as_deref().unwrap_or("unknown");
    t.hosts.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let hosts: Vec<Value> = t
        .hosts
        .iter()
        .take(5)
        .map(|(host, n)| {
            json!({
                "host": host,
                "region": aws_region_of(host),
                "requests": n,
            })
        })
        .collect();
    let named: Vec<String> = t
        .hosts
        .iter()
        .take(3)
        .map(|(host, _)| {
            let region = aws_region_of(host).unwrap_or("?");
            format!("{host} ({region})")
        })
        .collect();
    Some(Report {
        summary: format!(
            "{} of {} requests ({}%) went to AWS endpoints outside {home}: {}",
            t.cross,
            t.requests,
            percent(t.cross, t.requests),
            named.join(", ")
        ),
        evidence: json!({
            "requests": t.requests,
            "cross_region_requests": t.cross,
            "share_pct": percent(t.cross, t.requests),
            "home_region": inputs.settings.home_region,
            "hosts": hosts,
        }),
        fix: format!(
            "Use endpoints in the function's region ({home}): let the SDK clients take the \
             region from the environment (AWS_REGION) instead of a hard-coded one, and call the \
             regional endpoint of each resource (an S3 bucket lives in one region: replicate it \
             to {home} or move the function); for an API served in several regions, use route \
             mode with the local region as primary (EGRESS_WARDEN_ROUTES)."
        ),
    })
}

pub(super) fn cross_region_gone(_: &Inputs, recent: Recent) -> Option<Report> {
    let t = RegionTally::of(recent.requests);
    let healthy =
        t.requests >= 2 * MIN_REQUESTS && share(t.cross, t.requests) <= CROSS_REGION_SHARE / 2.0;
    healthy.then(|| Report {
        summary: format!(
            "{} of {} requests went to other regions",
            t.cross, t.requests
        ),
        evidence: json!({
            "requests": t.requests,
            "cross_region_requests": t.cross,
            "share_pct": percent(t.cross, t.requests),
        }),
        fix: String::new(),
    })
}
