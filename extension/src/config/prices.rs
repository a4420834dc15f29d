//! `EGRESS_WARDEN_PRICES`: USD per GB for each thing AWS charges on a byte's way out, with
//! defaults from AWS's public list prices for the function's region (first tier; the table
//! and its date are in docs/costs.md). A set entry overrides one price; the rest keep theirs.

use super::Prices;

/// NAT processing, internet transfer out, inter-region transfer out, interface-endpoint
/// processing (USD per GB), by region; regions not listed use US East's.
const REGIONAL: &[(&str, Prices)] = &[
    ("us-east-1", US_EAST),
    ("us-east-2", prices(0.045, 0.09, 0.02, 0.01)),
    ("us-west-1", prices(0.048, 0.09, 0.02, 0.01)),
    ("us-west-2", prices(0.045, 0.09, 0.02, 0.01)),
    ("ca-central-1", prices(0.05, 0.09, 0.02, 0.01)),
    ("eu-west-1", prices(0.048, 0.09, 0.02, 0.01)),
    ("eu-west-2", prices(0.05, 0.09, 0.02, 0.01)),
    ("eu-central-1", prices(0.052, 0.09, 0.02, 0.01)),
    ("eu-north-1", prices(0.046, 0.09, 0.02, 0.01)),
    ("ap-south-1", prices(0.056, 0.1093, 0.086, 0.01)),
    ("ap-southeast-1", prices(0.059, 0.12, 0.09, 0.01)),
    ("ap-southeast-2", prices(0.059, 0.114, 0.098, 0.01)),
    ("ap-northeast-1", prices(0.062, 0.114, 0.09, 0.01)),
    ("sa-east-1", prices(0.093, 0.15, 0.138, 0.01)),
];

/// US East's, also the default for regions not listed.
const US_EAST: Prices = prices(0.045, 0.09, 0.02, 0.01);

const fn prices(nat: f64, internet: f64, cross_region: f64, vpc_endpoint: f64) -> Prices {
    Prices {
        nat,
        internet,
        cross_region,
        vpc_endpoint,
    }
}

/// The defaults for `region` (US East's where unknown).
pub(super) fn regional_defaults(region: Option<&str>) -> Prices {
    let find = |name: &str| REGIONAL.iter().find(|(r, _)| *r == name).map(|(_, p)| *p);
    region.and_then(find).unwrap_or(US_EAST)
}

/// One `class=USD_per_GB` entry, checked.
pub(super) fn parse_price(item: &str) -> Result<(PriceClass, f64), String> {
    let (class, value) = item
        .split_once('=')
        .ok_or("class=USD_per_GB, like nat=0.045")?;
    let usd: f64 = value
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && (0.0..=100.0).contains(v))
        .ok_or("the price must be a number of USD per GB from 0 to 100")?;
    let class = match class.trim() {
        "nat" => PriceClass::Nat,
        "internet" => PriceClass::Internet,
        "cross_region" => PriceClass::CrossRegion,
        "vpc_endpoint" => PriceClass::VpcEndpoint,
        _ => return Err("the class is one of nat, internet, cross_region, vpc_endpoint".into()),
    };
    Ok((class, usd))
}

/// What a price in the table is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PriceClass {
    Nat,
    Internet,
    CrossRegion,
    VpcEndpoint,
}

impl Prices {
    pub(super) fn set(&mut self, class: PriceClass, usd_per_gb: f64) {
        let slot = match class {
            PriceClass::Nat => &mut self.nat,
            PriceClass::Internet => &mut self.internet,
            PriceClass::CrossRegion => &mut self.cross_region,
            PriceClass::VpcEndpoint => &mut self.vpc_endpoint,
        };
        *slot = usd_per_gb;
    }
}
