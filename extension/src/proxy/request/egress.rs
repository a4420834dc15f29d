//! Which way a request's bytes leave the VPC — private, an interface endpoint, the NAT
//! gateway, another region — and so what they cost; and the meter that counts them on that
//! path once the connection's address is known.
//!
//! A request body can finish before the response says which connection carried it, so the
//! meter holds sent bytes until the path is settled. Bytes still held when the request ends
//! without an address (an upstream gone mid-request) go to the path the host name alone
//! implies: every byte lands in exactly one class.

use crate::aws::aws_endpoint_of;
use crate::config::Prices;
use crate::metrics::{Direction, EgressPath, PathClass, Recorder};
use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// AWS bills data transfer per GB of 2^30 bytes.
const BYTES_PER_GB: f64 = (1u64 << 30) as f64;

/// Classifies connections by host and address, and prices their bytes.
pub(crate) struct Paths {
    vpc_cidrs: Vec<IpNet>,
    home_region: Option<String>,
    prices: Prices,
}

impl Paths {
    pub(crate) fn new(vpc_cidrs: Vec<IpNet>, home_region: Option<String>, prices: Prices) -> Paths {
        Paths {
            vpc_cidrs,
            home_region,
            prices,
        }
    }

    /// The path to `host` at `ip` (None: not known yet; an IP-literal host is its own).
    ///
    /// NAT processing and interface-endpoint processing are charged both ways, inter-region
    /// transfer both ways (the other region bills what it sends), internet transfer only out
    /// and only to hosts outside AWS.
    pub(crate) fn classify(&self, host: &str, ip: Option<IpAddr>) -> EgressPath {
        let ip = ip.or_else(|| host.parse().ok());
        let private = ip.is_some_and(|ip| self.vpc_cidrs.iter().any(|net| net.contains(&ip)));
        let aws = aws_endpoint_of(host);
        let foreign = match (aws.and_then(|e| e.region), self.home_region.as_deref()) {
            (Some(region), Some(home)) => region != home,
            _ => false,
        };
        let p = &self.prices;
        let nat = if private { 0.0 } else { p.nat };
        let (class, usd_in, usd_out) = if foreign {
            let both = p.cross_region + nat;
            (PathClass::CrossRegion, both, both)
        } else if private && aws.is_some() {
            (PathClass::VpcEndpoint, p.vpc_endpoint, p.vpc_endpoint)
        } else if private {
            (PathClass::Private, 0.0, 0.0)
        } else {
            let internet = if aws.is_some() { 0.0 } else { p.internet };
            (PathClass::Nat, p.nat, p.nat + internet)
        };
        EgressPath {
            class,
            usd_per_byte_in: usd_in / BYTES_PER_GB,
            usd_per_byte_out: usd_out / BYTES_PER_GB,
        }
    }
}

/// Counts one request's bytes (or one attempt's, in route mode) towards its destination, on
/// its path. Shared by the request body, the response body and the handler.
pub(crate) struct EgressMeter {
    recorder: Recorder,
    destination: String,
    /// The path the host name alone implies, for bytes whose connection stays unknown.
    guess: EgressPath,
    state: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    path: Option<EgressPath>,
    sent: u64,
}

impl EgressMeter {
    pub(crate) fn new(recorder: Recorder, destination: String, guess: EgressPath) -> Arc<Self> {
        Arc::new(EgressMeter {
            recorder,
            destination,
            guess,
            state: Mutex::new(Held::default()),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection's path is known: bytes held so far and from now on are counted on it.
    pub(crate) fn settle(&self, path: EgressPath) {
        let sent = {
            let mut held = self.held();
            held.path = Some(path);
            std::mem::take(&mut held.sent)
        };
        self.count(&path, Direction::Out, sent);
    }

    /// Bytes sent upstream.
    pub(crate) fn sent(&self, bytes: u64) {
        let path = {
            let mut held = self.held();
            if held.path.is_none() {
                held.sent += bytes;
            }
            held.path
        };
        if let Some(path) = path {
            self.count(&path, Direction::Out, bytes);
        }
    }

    /// Bytes received from upstream (after the response head, so the path is usually settled).
    pub(crate) fn received(&self, bytes: u64) {
        let path = self.held().path.unwrap_or(self.guess);
        self.count(&path, Direction::In, bytes);
    }

    fn count(&self, path: &EgressPath, direction: Direction, bytes: u64) {
        self.recorder
            .count_egress(&self.destination, path, direction, bytes);
    }
}

impl Drop for EgressMeter {
    fn drop(&mut self) {
        let held = std::mem::take(&mut *self.held());
        let path = held.path.unwrap_or(self.guess);
        self.count(&path, Direction::Out, held.sent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Counter;

    fn paths() -> Paths {
        let prices = Prices {
            nat: 0.045,
            internet: 0.09,
            cross_region: 0.02,
            vpc_endpoint: 0.01,
        };
        let cidrs = vec!["10.0.0.0/8".parse().unwrap()];
        Paths::new(cidrs, Some("us-east-1".into()), prices)
    }

    fn per_gb(path: EgressPath) -> (PathClass, f64, f64) {
        let round = |usd: f64| (usd * BYTES_PER_GB * 1e6).round() / 1e6;
        (
            path.class,
            round(path.usd_per_byte_in),
            round(path.usd_per_byte_out),
        )
    }

    #[test]
    fn classes_and_prices_by_host_and_address() {
        let p = paths();
        let private = Some("10.1.2.3".parse().unwrap());
        let public = Some("52.0.0.1".parse().unwrap());
        let cases = [
            ("db.internal", private, (PathClass::Private, 0.0, 0.0)),
            ("10.1.2.3", None, (PathClass::Private, 0.0, 0.0)),
            (
                "sqs.us-east-1.amazonaws.com",
                private,
                (PathClass::VpcEndpoint, 0.01, 0.01),
            ),
            ("api.vendor.com", public, (PathClass::Nat, 0.045, 0.135)),
            (
                "sqs.us-east-1.amazonaws.com",
                public,
                (PathClass::Nat, 0.045, 0.045),
            ),
            (
                "s3.eu-west-1.amazonaws.com",
                public,
                (PathClass::CrossRegion, 0.065, 0.065),
            ),
            (
                "s3.eu-west-1.amazonaws.com",
                private,
                (PathClass::CrossRegion, 0.02, 0.02),
            ),
            ("api.vendor.com", None, (PathClass::Nat, 0.045, 0.135)),
        ];
        for (host, ip, expected) in cases {
            assert_eq!(per_gb(p.classify(host, ip)), expected, "{host} at {ip:?}");
        }
    }

    #[test]
    fn bytes_sent_before_the_path_is_known_are_held_and_none_are_lost() {
        let p = paths();
        let recorder = Recorder::new();
        let guess = p.classify("db.internal", None);
        let meter = EgressMeter::new(recorder.clone(), "db.internal:80".into(), guess);
        meter.sent(100);
        assert_eq!(recorder.peek(Counter::BytesOut), 0, "held until settled");
        meter.settle(p.classify("db.internal", "10.0.0.9".parse().ok()));
        meter.sent(20);
        meter.received(300);
        drop(meter);
        let window = recorder.take();
        assert_eq!(window.counters[&Counter::BytesOut], 120);
        assert_eq!(window.counters[&Counter::EgressBytesPrivate], 420);
        assert!(!window.counters.contains_key(&Counter::EgressBytesNat));

        // Never settled: the guess from the name counts them when the request ends.
        let meter = EgressMeter::new(recorder.clone(), "db.internal:80".into(), guess);
        meter.sent(7);
        drop(meter);
        let window = recorder.take();
        assert_eq!(window.counters[&Counter::BytesOut], 7);
        assert_eq!(window.counters[&Counter::EgressBytesNat], 7);
    }
}
