//! A window: everything recorded between two flushes.

use super::{Counter, Gauge, Histogram, Timing};
use std::collections::BTreeMap;

/// How many distinct `Destination` dimension values one flush window keeps; the rest are
/// folded into [`OTHER_DESTINATION`] so a function calling thousands of hosts cannot grow
/// memory or the EMF document without bound.
pub const MAX_DESTINATIONS: usize = 32;
pub const OTHER_DESTINATION: &str = "other";

/// Figures kept per destination (`host:port`) for the `[FunctionName, Destination]` set.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DestinationWindow {
    pub counters: BTreeMap<Counter, u64>,
    pub timings: BTreeMap<Timing, Histogram>,
}

impl DestinationWindow {
    fn merge(&mut self, other: DestinationWindow) {
        for (c, n) in other.counters {
            *self.counters.entry(c).or_default() += n;
        }
        for (t, h) in other.timings {
            self.timings.entry(t).or_default().merge(&h);
        }
    }
}

/// Everything recorded between two flushes.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Snapshot {
    pub counters: BTreeMap<Counter, u64>,
    pub timings: BTreeMap<Timing, Histogram>,
    pub gauges: BTreeMap<Gauge, i64>,
    /// Metrics named at run time, e.g. `symptom_<finding>` (unit `Count`).
    pub named_counts: BTreeMap<String, u64>,
    pub destinations: BTreeMap<String, DestinationWindow>,
    /// Route-mode figures per route and upstream region (`[FunctionName, Route, Region]`):
    /// bounded by the configured routes, two regions each.
    pub routes: BTreeMap<RouteRegion, DestinationWindow>,
    /// What the window's bytes cost by their paths, in USD.
    pub egress_cost_usd: f64,
}

/// A route's name and the region of the upstream that served it.
pub(crate) type RouteRegion = (String, String);

impl Snapshot {
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
            && self.timings.is_empty()
            && self.gauges.is_empty()
            && self.named_counts.is_empty()
            && self.destinations.is_empty()
            && self.routes.is_empty()
            && self.egress_cost_usd == 0.0
    }

    /// Adds another window into this one (used to put back a window that could not be sent).
    pub fn merge(&mut self, other: Snapshot) {
        for (c, n) in other.counters {
            *self.counters.entry(c).or_default() += n;
        }
        for (t, h) in other.timings {
            self.timings.entry(t).or_default().merge(&h);
        }
        for (g, v) in other.gauges {
            let level = self.gauges.entry(g).or_insert(v);
            *level = (*level).max(v);
        }
        for (name, n) in other.named_counts {
            *self.named_counts.entry(name).or_default() += n;
        }
        for (dest, window) in other.destinations {
            self.destinations.entry(dest).or_default().merge(window);
        }
        for (key, window) in other.routes {
            self.routes.entry(key).or_default().merge(window);
        }
        self.egress_cost_usd += other.egress_cost_usd;
    }
    /// [`Snapshot::merge`], then folds destinations beyond [`MAX_DESTINATIONS`] into
    /// [`OTHER_DESTINATION`] as the recorder does: windows merged while a send is in flight
    /// or put back into the recorder must not grow without bound either.
    pub fn merge_bounded(&mut self, other: Snapshot) {
        self.merge(other);
        if self.destinations.len() <= MAX_DESTINATIONS {
            return;
        }
        let overflow: Vec<String> = self
            .destinations
            .keys()
            .filter(|k| k.as_str() != OTHER_DESTINATION)
            .skip(MAX_DESTINATIONS - 1)
            .cloned()
            .collect();
        let mut other = Snapshot::default();
        for key in overflow {
            if let Some(window) = self.destinations.remove(&key) {
                other
                    .destinations
                    .insert(OTHER_DESTINATION.to_owned(), window);
                self.merge(std::mem::take(&mut other));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Counter, Recorder};

    #[test]
    fn merged_destinations_stay_bounded() {
        let mut pending = Snapshot::default();
        for round in 0..3 {
            let r = Recorder::new();
            for i in 0..MAX_DESTINATIONS {
                r.count_for(&format!("r{round}-h{i}:443"), Counter::Requests, 1);
            }
            pending.merge_bounded(r.take());
        }
        assert_eq!(pending.destinations.len(), MAX_DESTINATIONS);
        let total: u64 = pending
            .destinations
            .values()
            .map(|d| d.counters[&Counter::Requests])
            .sum();
        assert_eq!(total, 3 * MAX_DESTINATIONS as u64);
        assert_eq!(
            pending.counters[&Counter::Requests],
            3 * MAX_DESTINATIONS as u64
        );
    }
}
