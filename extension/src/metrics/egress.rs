//! Bytes by the path they take out of the VPC, and what they cost. Every proxied byte is
//! counted here once, in `bytes_in`/`bytes_out` and in exactly one path class, so the classes
//! always sum to the two.

use super::{Counter, Recorder};

/// The way a connection leaves the function's VPC, which decides what its bytes cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathClass {
    /// An address inside `EGRESS_WARDEN_VPC_CIDRS` that is not an AWS endpoint.
    Private,
    /// An AWS endpoint of the home region answered from a VPC address: an interface endpoint.
    VpcEndpoint,
    /// A public address: through the NAT gateway.
    Nat,
    /// An AWS endpoint of another region (through the NAT gateway unless its address is private).
    CrossRegion,
}

impl PathClass {
    pub const ALL: [PathClass; 4] = [
        PathClass::Private,
        PathClass::VpcEndpoint,
        PathClass::Nat,
        PathClass::CrossRegion,
    ];

    pub const fn counter(self) -> Counter {
        match self {
            PathClass::Private => Counter::EgressBytesPrivate,
            PathClass::VpcEndpoint => Counter::EgressBytesVpcEndpoint,
            PathClass::Nat => Counter::EgressBytesNat,
            PathClass::CrossRegion => Counter::EgressBytesCrossRegion,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            PathClass::Private => "private",
            PathClass::VpcEndpoint => "vpc_endpoint",
            PathClass::Nat => "nat",
            PathClass::CrossRegion => "cross_region",
        }
    }
}

/// Which way bytes went: `Out` to the upstream (requests), `In` back from it (responses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
}

/// One connection's path: its class and its price per byte each way (what the price table
/// charges on that path: NAT processing, internet or inter-region transfer, endpoint
/// processing).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EgressPath {
    pub class: PathClass,
    pub usd_per_byte_in: f64,
    pub usd_per_byte_out: f64,
}

impl EgressPath {
    pub fn usd_per_byte(&self, direction: Direction) -> f64 {
        match direction {
            Direction::In => self.usd_per_byte_in,
            Direction::Out => self.usd_per_byte_out,
        }
    }
}

impl Recorder {
    /// Counts `bytes` moved on `path` for the function and for `destination` (empty: the
    /// function only): `bytes_in` or `bytes_out`, the path's class and its cost. (A flush
    /// between the adds puts them in neighbouring windows; nothing is lost.)
    pub fn count_egress(
        &self,
        destination: &str,
        path: &EgressPath,
        direction: Direction,
        bytes: u64,
    ) {
        if bytes == 0 {
            return;
        }
        let total = match direction {
            Direction::In => Counter::BytesIn,
            Direction::Out => Counter::BytesOut,
        };
        let class = path.class.counter();
        self.count(total, bytes);
        self.count(class, bytes);
        let mut slow = self.slow();
        slow.egress_cost_usd += bytes as f64 * path.usd_per_byte(direction);
        if !destination.is_empty() {
            let window = super::recorder::destination_window(&mut slow.destinations, destination);
            *window.counters.entry(total).or_default() += bytes;
            *window.counters.entry(class).or_default() += bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_lands_in_one_class_and_is_priced_once() {
        let r = Recorder::new();
        let nat = EgressPath {
            class: PathClass::Nat,
            usd_per_byte_in: 1e-9,
            usd_per_byte_out: 3e-9,
        };
        let private = EgressPath {
            class: PathClass::Private,
            usd_per_byte_in: 0.0,
            usd_per_byte_out: 0.0,
        };
        r.count_egress("api.test:443", &nat, Direction::Out, 1_000);
        r.count_egress("api.test:443", &nat, Direction::In, 4_000);
        r.count_egress("db.test:5432", &private, Direction::In, 500);
        r.count_egress("", &private, Direction::Out, 0);
        let window = r.take();
        assert_eq!(window.counters[&Counter::BytesOut], 1_000);
        assert_eq!(window.counters[&Counter::BytesIn], 4_500);
        assert_eq!(window.counters[&Counter::EgressBytesNat], 5_000);
        assert_eq!(window.counters[&Counter::EgressBytesPrivate], 500);
        let api = &window.destinations["api.test:443"].counters;
        assert_eq!(api[&Counter::EgressBytesNat], 5_000);
        assert!(!api.contains_key(&Counter::EgressBytesPrivate));
        assert!((window.egress_cost_usd - 7e-6).abs() < 1e-15);
        assert_eq!(r.take().egress_cost_usd, 0.0);
    }
}
