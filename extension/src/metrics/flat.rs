//! A window as the flat list of figures both writers read (EMF lines and PutMetricData
//! data), so the two cannot disagree on names, units, order or dimension sets.

use super::{DestinationWindow, Histogram, Snapshot, EGRESS_COST_METRIC};

pub(super) const FUNCTION_NAME_DIMENSION: &str = "FunctionName";
pub(super) const DESTINATION_DIMENSION: &str = "Destination";
pub(super) const FUNCTION_VERSION_DIMENSION: &str = "FunctionVersion";
pub(super) const ROUTE_DIMENSION: &str = "Route";
pub(super) const REGION_DIMENSION: &str = "Region";

/// The function's key figures, also written under `[FunctionName, FunctionVersion]`: what a
/// canary version is compared on. Few on purpose: every metric per version is billed apart.
const BY_VERSION: [&str; 8] = [
    "requests",
    "errors",
    "connect_timeouts",
    "request_ms",
    "ttfb_ms",
    "tcp_connect_ms",
    "dns_ms",
    "cold_starts",
];

/// Whether the function-level figure `name` is also written per function version.
pub(super) fn by_version(name: &str) -> bool {
    BY_VERSION.contains(&name)
}

/// What one metric holds in a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Reading<'a> {
    Count(u64),
    /// An amount that is not a count (USD).
    Amount(f64),
    /// A gauge's highest level in the window.
    Level(i64),
    /// Latencies in milliseconds; never empty.
    Distribution(&'a Histogram),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Figure<'a> {
    pub name: &'a str,
    pub unit: &'static str,
    pub reading: Reading<'a>,
}

/// What a group of figures is about, beyond the function.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Scope<'a> {
    /// `[FunctionName]`.
    Function,
    /// `[FunctionName, Destination]`.
    Destination(&'a str),
    /// `[FunctionName, Route, Region]`.
    Route { route: &'a str, region: &'a str },
}

impl<'a> Scope<'a> {
    /// The dimensions besides `FunctionName`, with their values.
    pub(super) fn dimensions(self) -> Vec<(&'static str, &'a str)> {
        match self {
            Scope::Function => Vec::new(),
            Scope::Destination(d) => vec![(DESTINATION_DIMENSION, d)],
            Scope::Route { route, region } => {
                vec![(ROUTE_DIMENSION, route), (REGION_DIMENSION, region)]
            }
        }
    }
}

/// The figures of one dimension set.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Group<'a> {
    pub scope: Scope<'a>,
    pub figures: Vec<Figure<'a>>,
}

/// The function's figures (counters, run-time counts, gauges, timings), then each
/// destination's and each route and region's (counters, timings). Empty histograms and empty
/// groups are left out.
pub(super) fn flatten(snapshot: &Snapshot) -> Vec<Group<'_>> {
    let mut function = Vec::new();
    for (counter, n) in &snapshot.counters {
        function.push(count(counter.metric_name(), counter.unit(), *n));
    }
    for (name, n) in &snapshot.named_counts {
        function.push(count(name, "Count", *n));
    }
    if snapshot.egress_cost_usd > 0.0 {
        function.push(Figure {
            name: EGRESS_COST_METRIC,
            unit: "None",
            reading: Reading::Amount(snapshot.egress_cost_usd),
        });
    }
    for (gauge, level) in &snapshot.gauges {
        function.push(Figure {
            name: gauge.metric_name(),
            unit: "Count",
            reading: Reading::Level(*level),
        });
    }
    function.extend(
        snapshot
            .timings
            .iter()
            .filter_map(|(t, h)| distribution(t.metric_name(), h)),
    );
    let mut groups = vec![Group {
        scope: Scope::Function,
        figures: function,
    }];
    for (destination, window) in &snapshot.destinations {
        groups.push(Group {
            scope: Scope::Destination(destination),
            figures: window_figures(window),
        });
    }
    for ((route, region), window) in &snapshot.routes {
        groups.push(Group {
            scope: Scope::Route { route, region },
            figures: window_figures(window),
        });
    }
    groups.retain(|g| !g.figures.is_empty());
    groups
}

fn window_figures(window: &DestinationWindow) -> Vec<Figure<'_>> {
    let mut figures: Vec<Figure<'_>> = window
        .counters
        .iter()
        .map(|(c, n)| count(c.metric_name(), c.unit(), *n))
        .collect();
    figures.extend(
        window
            .timings
            .iter()
            .filter_map(|(t, h)| distribution(t.metric_name(), h)),
    );
    figures
}

fn count<'a>(name: &'a str, unit: &'static str, n: u64) -> Figure<'a> {
    Figure {
        name,
        unit,
        reading: Reading::Count(n),
    }
}

fn distribution<'a>(name: &'a str, histogram: &'a Histogram) -> Option<Figure<'a>> {
    (histogram.count() > 0).then_some(Figure {
        name,
        unit: "Milliseconds",
        reading: Reading::Distribution(histogram),
    })
}

/// A tenth of a microsecond is finer than anything we time; more digits only lengthen the
/// EMF lines and PutMetricData bodies.
pub(super) fn round_ms(ms: f64) -> f64 {
    (ms * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Counter, Gauge, Recorder, Timing};

    fn names<'a>(group: &Group<'a>) -> Vec<&'a str> {
        group.figures.iter().map(|f| f.name).collect()
    }

    #[test]
    fn the_function_group_comes_first_then_each_destination() {
        let r = Recorder::new();
        r.count(Counter::Invocations, 2);
        r.count_named("symptom_idle_reset", 1);
        r.gauge_add(Gauge::ActiveConnections, 3);
        r.observe_ms_for("a:443", Timing::DnsMs, 1.0);
        r.count_for("a:443", Counter::Requests, 1);
        let window = r.take();
        let groups = flatten(&window);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].scope, Scope::Function);
        assert_eq!(
            names(&groups[0]),
            [
                "invocations",
                "requests",
                "symptom_idle_reset",
                "active_connections",
                "dns_ms"
            ]
        );
        assert_eq!(groups[1].scope, Scope::Destination("a:443"));
        assert_eq!(names(&groups[1]), ["requests", "dns_ms"]);
        assert_eq!(groups[0].figures[3].reading, Reading::Level(3));
        assert!(flatten(&Snapshot::default()).is_empty());
    }
}
