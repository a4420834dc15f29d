//! A window as PutMetricData requests, each within the API's limits (checked against the
//! CloudWatch API reference for PutMetricData): at most 1000 data per request, 150 distinct
//! values per datum's `Values`/`Counts`, 30 dimensions per metric (we use at most two) and
//! 1 MB per HTTP POST.
//!
//! This module knows nothing about the SDK: it builds plain [`Datum`]s so the packing can be
//! tested exactly, and `client.rs` maps them onto the SDK's types.

use crate::metrics::flat::{
    self, by_version, round_ms, Reading, Scope, FUNCTION_NAME_DIMENSION, FUNCTION_VERSION_DIMENSION,
};
use crate::metrics::{Histogram, Snapshot};

pub(super) const MAX_DATA_PER_REQUEST: usize = 1000;
pub(super) const MAX_VALUES_PER_DATUM: usize = 150;
/// The API's limit is 1 MB for the (uncompressed, form-encoded) POST body; our estimate is
/// conservative per datum and we keep a tenth in reserve for the envelope and rounding.
pub(super) const MAX_REQUEST_BYTES: usize = 900_000;

/// What CloudWatch stores per datum; a histogram is `Values`/`Counts` so percentiles work.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Payload {
    Value(f64),
    Distribution { values: Vec<f64>, counts: Vec<f64> },
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Datum {
    pub name: String,
    pub unit: &'static str,
    /// `(name, value)` pairs: `FunctionName`, plus `Destination` for per-destination data.
    pub dimensions: Vec<(&'static str, String)>,
    pub payload: Payload,
}

impl Datum {
    /// An upper bound of this datum's size on the wire, taken from the bulkiest encoding
    /// CloudWatch accepts (the awsQuery form body: `MetricData.member.N.<Field>.member.M=<value>`,
    /// values percent-encoded, 3× at worst); the SDK's RPCv2 CBOR body is smaller.
    pub(super) fn estimated_bytes(&self) -> usize {
        const FIELD: usize = 64; // key prefix + '&' + '='
        const NUMBER: usize = 24; // f64 as text
        let mut bytes = FIELD * 4 + self.name.len() * 3 + self.unit.len();
        for (name, value) in &self.dimensions {
            bytes += FIELD * 2 + name.len() + value.len() * 3;
        }
        bytes += match &self.payload {
            Payload::Value(_) => FIELD + NUMBER,
            Payload::Distribution { values, .. } => values.len() * 2 * (FIELD + NUMBER),
        };
        bytes
    }
}

/// The function the data is about: its name, and its version when the key metrics are also
/// written per version.
#[derive(Debug, Clone, Copy)]
pub(super) struct Function<'a> {
    pub name: &'a str,
    pub version: Option<&'a str>,
}

/// Turns a window into data: counts and levels as single values, timings as values/counts
/// chunks of at most [`MAX_VALUES_PER_DATUM`], for `[FunctionName]`, `[FunctionName,
/// FunctionVersion]` (the key metrics, when a version is given) and each `[FunctionName,
/// Destination]` — the same figures and dimension sets as the EMF lines.
pub(super) fn data(snapshot: &Snapshot, function: Function<'_>) -> Vec<Datum> {
    let mut out = Vec::new();
    for group in flat::flatten(snapshot) {
        let mut dims = vec![(FUNCTION_NAME_DIMENSION, function.name.to_owned())];
        dims.extend(
            (group.scope.dimensions().into_iter()).map(|(name, value)| (name, value.to_owned())),
        );
        let version = function.version.filter(|_| group.scope == Scope::Function);
        let version_dims = version.map(|v| {
            vec![
                (FUNCTION_NAME_DIMENSION, function.name.to_owned()),
                (FUNCTION_VERSION_DIMENSION, v.to_owned()),
            ]
        });
        for figure in group.figures {
            let mut sets = vec![&dims];
            if let Some(v) = version_dims.as_ref().filter(|_| by_version(figure.name)) {
                sets.push(v);
            }
            for dims in sets {
                match figure.reading {
                    Reading::Count(n) => out.push(value(figure.name, figure.unit, dims, n as f64)),
                    Reading::Level(l) => out.push(value(figure.name, figure.unit, dims, l as f64)),
                    Reading::Amount(a) => out.push(value(figure.name, figure.unit, dims, a)),
                    Reading::Distribution(h) => distribution(figure.name, h, dims, &mut out),
                }
            }
        }
    }
    out
}

/// A window split for sending: `parts` are the function-level figures and one part per
/// destination; each request records which parts it finishes, so after a failure exactly the
/// parts not yet fully sent go to the fallback.
#[derive(Debug, Default)]
pub(super) struct Plan {
    pub parts: Vec<Snapshot>,
    pub requests: Vec<Request>,
    /// Requests that succeeded, in order.
    pub sent: usize,
}

#[derive(Debug, Default)]
pub(super) struct Request {
    pub data: Vec<Datum>,
    /// Indices into `parts` whose last datum is in this request.
    pub completes: Vec<usize>,
}

impl Plan {
    pub(super) fn new(snapshot: Snapshot, function: Function<'_>) -> Plan {
        let mut parts = Vec::new();
        let Snapshot {
            counters,
            timings,
            gauges,
            named_counts,
            destinations,
            routes,
            egress_cost_usd,
        } = snapshot;
        // Route figures are few (routes × regions): they travel with the function's.
        let function_part = Snapshot {
            counters,
            timings,
            gauges,
            named_counts,
            destinations: Default::default(),
            routes,
            egress_cost_usd,
        };
        if !function_part.is_empty() {
            parts.push(function_part);
        }
        for (destination, window) in destinations {
            let mut part = Snapshot::default();
            part.destinations.insert(destination, window);
            parts.push(part);
        }
        let mut requests: Vec<Request> = Vec::new();
        let mut bytes = 0;
        for (index, part) in parts.iter().enumerate() {
            for datum in data(part, function) {
                let size = datum.estimated_bytes();
                let full = requests.last().is_none_or(|last| {
                    last.data.len() >= MAX_DATA_PER_REQUEST || bytes + size > MAX_REQUEST_BYTES
                });
                if full {
                    requests.push(Request::default());
                    bytes = 0;
                }
                bytes += size;
                if let Some(last) = requests.last_mut() {
                    last.data.push(datum);
                }
            }
            if let Some(last) = requests.last_mut() {
                last.completes.push(index);
            }
        }
        Plan {
            parts,
            requests,
            sent: 0,
        }
    }

    /// Everything not fully sent yet, as one window. A part that spans several requests
    /// (only a single destination or function window beyond 1000 data or 900 KB) is
    /// counted as unsent even if its first requests got through.
    pub(super) fn unsent(self) -> Snapshot {
        let mut done = vec![false; self.parts.len()];
        for request in self.requests.iter().take(self.sent) {
            for &i in &request.completes {
                done[i] = true;
            }
        }
        let mut rest = Snapshot::default();
        for (part, done) in self.parts.into_iter().zip(done) {
            if !done {
                rest.merge(part);
            }
        }
        rest
    }
}

fn value(name: &str, unit: &'static str, dims: &[(&'static str, String)], v: f64) -> Datum {
    Datum {
        name: name.to_owned(),
        unit,
        dimensions: dims.to_vec(),
        payload: Payload::Value(v),
    }
}

/// Values are the histogram's bucket values (2 % wide, clamped to the exact min and max), so
/// CloudWatch's percentiles are within the bucket precision and `SampleCount` is exact.
/// A StatisticSet would keep the exact sum but lose the percentiles the dashboard and the
/// alarms are built on, so it is not used for timings.
fn distribution(
    name: &str,
    histogram: &Histogram,
    dims: &[(&'static str, String)],
    out: &mut Vec<Datum>,
) {
    for chunk in histogram.values_and_counts().chunks(MAX_VALUES_PER_DATUM) {
        out.push(Datum {
            name: name.to_owned(),
            unit: "Milliseconds",
            dimensions: dims.to_vec(),
            payload: Payload::Distribution {
                values: chunk.iter().map(|(v, _)| round_ms(*v)).collect(),
                counts: chunk.iter().map(|(_, n)| *n as f64).collect(),
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Counter, Recorder, Timing};

    const FN: Function<'static> = Function {
        name: "fn",
        version: None,
    };

    #[test]
    fn key_metrics_are_also_sent_per_function_version() {
        let r = Recorder::new();
        r.count(Counter::Invocations, 3);
        r.count_for("a:443", Counter::Requests, 2);
        r.observe_ms(Timing::TtfbMs, 4.0);
        let function = Function {
            name: "fn",
            version: Some("7"),
        };
        let data = data(&r.take(), function);
        let per_version: Vec<&str> = data
            .iter()
            .filter(|d| {
                d.dimensions
                    == [
                        ("FunctionName", "fn".to_owned()),
                        ("FunctionVersion", "7".to_owned()),
                    ]
            })
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(per_version, ["requests", "ttfb_ms"]);
        assert!(data
            .iter()
            .any(|d| d.name == "invocations" && d.dimensions.len() == 1));
    }

    fn counts_of(data: &[Datum], name: &str) -> f64 {
        data.iter()
            .filter(|d| d.name == name && d.dimensions.len() == 1)
            .map(|d| match &d.payload {
                Payload::Value(v) => *v,
                Payload::Distribution { counts, .. } => counts.iter().sum(),
            })
            .sum()
    }

    #[test]
    fn counters_and_timings_become_data_with_the_emf_dimension_sets() {
        let r = Recorder::new();
        r.count(Counter::Invocations, 3);
        r.count_for("api.example.com:443", Counter::Requests, 2);
        r.observe_ms_for("api.example.com:443", Timing::DnsMs, 1.25);
        r.count_named("symptom_idle_reset", 1);
        let data = data(&r.take(), FN);
        assert_eq!(counts_of(&data, "invocations"), 3.0);
        assert_eq!(counts_of(&data, "requests"), 2.0);
        assert_eq!(counts_of(&data, "symptom_idle_reset"), 1.0);
        let dns: Vec<_> = data.iter().filter(|d| d.name == "dns_ms").collect();
        assert_eq!(dns.len(), 2, "function and destination sets");
        assert_eq!(
            dns[0].payload,
            Payload::Distribution {
                values: vec![1.25],
                counts: vec![1.0]
            },
            "one observation is exact"
        );
        assert_eq!(dns[0].dimensions, vec![("FunctionName", "fn".to_owned())]);
        assert_eq!(dns[1].dimensions[1].0, "Destination");
        assert_eq!(dns[1].dimensions[1].1, "api.example.com:443");
    }

    #[test]
    fn wide_histograms_split_at_150_values_without_losing_counts() {
        let r = Recorder::new();
        let mut v = 0.01;
        let mut recorded = 0.0;
        while v < 50_000.0 {
            r.observe_ms(Timing::RequestMs, v);
            recorded += 1.0;
            v *= 1.01;
        }
        let data = data(&r.take(), FN);
        assert!(data.len() > 2);
        for d in &data {
            if let Payload::Distribution { values, counts } = &d.payload {
                assert!(values.len() <= MAX_VALUES_PER_DATUM);
                assert_eq!(values.len(), counts.len());
                assert!(values.iter().all(|v| v.is_finite() && *v >= 0.0));
            }
        }
        assert_eq!(counts_of(&data, "request_ms"), recorded);
    }

    #[test]
    fn requests_respect_count_and_size_limits() {
        let r = Recorder::new();
        for i in 0..2500 {
            r.count_named(&format!("m{i}"), 1);
        }
        let plan = Plan::new(r.take(), FN);
        let sizes: Vec<_> = plan.requests.iter().map(|q| q.data.len()).collect();
        assert_eq!(sizes, [1000, 1000, 500]);

        let r = Recorder::new();
        for i in 0..30 {
            let mut v = 0.001;
            while v < 900_000.0 {
                r.observe_ms_for(&format!("host{i}:443"), Timing::RequestMs, v);
                v *= 1.02;
            }
        }
        let plan = Plan::new(
            r.take(),
            Function {
                name: &"f".repeat(64),
                version: None,
            },
        );
        assert!(plan.requests.len() > 1);
        for req in &plan.requests {
            let bytes: usize = req.data.iter().map(Datum::estimated_bytes).sum();
            assert!(bytes <= MAX_REQUEST_BYTES, "{bytes}");
            assert!(req.data.len() <= MAX_DATA_PER_REQUEST);
        }
        assert!(Plan::new(Snapshot::default(), FN).requests.is_empty());
    }

    #[test]
    fn unsent_keeps_exactly_the_parts_not_delivered() {
        let r = Recorder::new();
        r.count(Counter::Invocations, 4);
        for i in 0..20 {
            let mut v = 0.001;
            while v < 900_000.0 {
                r.observe_ms_for(&format!("host{i:02}:443"), Timing::TtfbMs, v);
                v *= 1.02;
            }
        }
        let window = r.take();
        let mut plan = Plan::new(window.clone(), FN);
        assert!(plan.requests.len() >= 2);
        assert_eq!(Plan::new(window.clone(), FN).unsent(), window);
        plan.sent = 1;
        let first = plan.requests[0].completes.clone();
        let parts = plan.parts.clone();
        let rest = plan.unsent();
        let mut expected = Snapshot::default();
        for (i, part) in parts.into_iter().enumerate() {
            if !first.contains(&i) {
                expected.merge(part);
            }
        }
        assert_eq!(rest, expected);
        assert!(!first.is_empty() && rest.destinations.len() < 20);
    }
}
