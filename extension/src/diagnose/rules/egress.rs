//! `no_egress_route` and `aws_endpoint_unreachable`: connects that get no answer.

use super::{connects, example, share, Inputs, Report, Tally, CLEAR_CONNECTED};
use crate::aws::AwsEndpoint;
use crate::diagnose::{Events, Recent};
use crate::metrics::ConnectOutcome;
use serde_json::{json, Value};

pub(super) fn no_egress_route(inputs: &Inputs, recent: Recent) -> Option<Report> {
    let (mut public, mut private) = (Tally::default(), Tally::default());
    let mut destinations = Vec::new();
    for c in connects(recent.connects) {
        if c.public {
            public.add(c.outcome);
            if c.outcome == ConnectOutcome::Timeout {
                example(&mut destinations, || format!("{} ({})", c.host, c.addr));
            }
        } else {
            private.add(c.outcome);
        }
    }
    if !public.unanswered_path() {
        return None;
    }
    let inside = if private.connected > 0 {
        format!(
            ", while {} connects inside the VPC ranges succeeded",
            private.connected
        )
    } else {
        String::new()
    };
    Some(Report {
        summary: format!(
            "{} of {} connects to public addresses timed out and none succeeded{inside}",
            public.timeouts, public.attempts
        ),
        evidence: json!({
            "public_attempts": public.attempts,
            "public_timeouts": public.timeouts,
            "public_unreachable": public.unreachable,
            "public_refused": public.refused,
            "public_connected": public.connected,
            "private_attempts": private.attempts,
            "private_connected": private.connected,
            "destinations": destinations,
            "vpc_cidrs": inputs.settings.vpc_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "function_timeouts": recent.timeouts.len(),
        }),
        fix: "Give the function's subnets a route 0.0.0.0/0 to a NAT gateway (placed in a \
              public subnet with an internet gateway route), or add VPC endpoints for the AWS \
              services the function calls; if the function needs nothing inside the VPC, \
              remove its VPC configuration."
            .to_owned(),
    })
}

pub(super) fn public_egress_works(_: &Inputs, recent: Recent) -> Option<Report> {
    let mut public = Tally::default();
    for c in connects(recent.connects).filter(|c| c.public) {
        public.add(c.outcome);
    }
    (public.connected >= CLEAR_CONNECTED).then(|| Report {
        summary: format!(
            "{} connects to public addresses succeeded",
            public.connected
        ),
        evidence: json!({
            "public_connected": public.connected,
            "public_timeouts": public.timeouts,
        }),
        fix: String::new(),
    })
}

// ---- aws_endpoint_unreachable ------------------------------------------------------------

struct ServiceTally<'a> {
    service: &'a str,
    region: Option<&'a str>,
    host: &'a str,
    tally: Tally,
}

fn aws_tallies<'a>(events: Events<'a>) -> Vec<ServiceTally<'a>> {
    let mut services: Vec<ServiceTally<'a>> = Vec::new();
    for c in connects(events) {
        let Some(endpoint) = c.aws else {
            continue;
        };
        let (service, region) = (endpoint.service.as_str(), endpoint.region.as_deref());
        let at = services
            .iter()
            .position(|s| s.service == service && s.region == region);
        let entry = match at {
            Some(i) => &mut services[i],
            None => {
                services.push(ServiceTally {
                    service,
                    region,
                    host: c.host,
                    tally: Tally::default(),
                });
                let last = services.len() - 1;
                &mut services[last]
            }
        };
        entry.tally.add(c.outcome);
    }
    services
}

pub(super) fn aws_endpoint_unreachable(inputs: &Inputs, recent: Recent) -> Option<Report> {
    let home = inputs.settings.home_region.as_deref();
    let failing: Vec<ServiceTally> = aws_tallies(recent.connects)
        .into_iter()
        .filter(|s| s.tally.unanswered_path())
        .collect();
    if failing.is_empty() {
        return None;
    }
    let mut names = Vec::new();
    let mut fixes = Vec::new();
    let endpoints: Vec<Value> = failing
        .iter()
        .map(|s| {
            let endpoint = AwsEndpoint {
                service: s.service,
                region: s.region,
            };
            let name = endpoint.vpc_endpoint_name(home);
            let kind = if endpoint.has_gateway_endpoint() {
                "gateway"
            } else {
                "interface"
            };
            names.push(format!("{} ({})", s.service, s.host));
            fixes.push(format!("{name} ({kind} endpoint)"));
            json!({
                "service": s.service,
                "region": s.region.or(home),
                "host": s.host,
                "attempts": s.tally.attempts,
                "timeouts": s.tally.timeouts,
                "unreachable": s.tally.unreachable,
                "connected": s.tally.connected,
                "vpc_endpoint": name,
                "endpoint_type": kind,
            })
        })
        .collect();
    let timeouts: u64 = failing.iter().map(|s| s.tally.timeouts).sum();
    Some(Report {
        summary: format!(
            "{timeouts} connects to AWS endpoints timed out and none succeeded: {}",
            names.join(", ")
        ),
        evidence: json!({ "endpoints": endpoints, "function_timeouts": recent.timeouts.len() }),
        fix: format!(
            "Create the VPC endpoint for each service: {}. A gateway endpoint (S3, DynamoDB) is \
             associated with the subnets' route tables; an interface endpoint goes in the \
             function's subnets with private DNS enabled and a security group allowing TCP 443 \
             from the function's security group. Or give the subnets a route 0.0.0.0/0 to a \
             NAT gateway.",
            fixes.join(", ")
        ),
    })
}

pub(super) fn aws_endpoints_work(_: &Inputs, recent: Recent) -> Option<Report> {
    let mut total = Tally::default();
    for s in aws_tallies(recent.connects) {
        total.connected += s.tally.connected;
        total.attempts += s.tally.attempts;
        total.timeouts += s.tally.timeouts;
        total.unreachable += s.tally.unreachable;
    }
    (total.connected >= CLEAR_CONNECTED && share(total.timeouts, total.attempts) < 0.2).then(|| {
        Report {
            summary: format!("{} connects to AWS endpoints succeeded", total.connected),
            evidence: json!({
                "connected": total.connected,
                "timeouts": total.timeouts,
                "unreachable": total.unreachable,
            }),
            fix: String::new(),
        }
    })
}
