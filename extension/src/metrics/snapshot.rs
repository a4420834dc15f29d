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

/// Everything recorded between two flushes.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Snapshot {
    pub counters: BTreeMap<Counter, u64>,
    pub timings: BTreeMap<Timing, Histogram>,
    pub gauges: BTreeMap<Gauge, i64>,
    /// Metrics named at run time, e.g. `symptom_<finding>` (unit `Count`).
    pub named_counts: BTreeMap<String, u64>,
    pub destinations: BTreeMap<String, DestinationWindow>,
}

impl Snapshot {
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
            && self.timings.is_empty()
            && self.gauges.is_empty()
            && self.named_counts.is_empty()
            && self.destinations.is_empty()
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
            let mine = self.destinations.entry(dest).or_default();
            for (c, n) in window.counters {
                *mine.counters.entry(c).or_default() += n;
            }
            for (t, h) in window.timings {
                mine.timings.entry(t).or_default().merge(&h);
            }
        }
    }
}
