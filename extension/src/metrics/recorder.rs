//! The recorder every part of the extension writes to.

use super::connections::{LiveConnections, OpenConnection};
use super::observations::{self, JournalRead};
use super::snapshot::RouteRegion;
use super::{Counter, DestinationWindow, Gauge, Snapshot, Timing};
use super::{MAX_DESTINATIONS, OTHER_DESTINATION};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

struct GaugeCell {
    current: AtomicI64,
    window_max: AtomicI64,
}

pub(super) struct Inner {
    counters: Vec<AtomicU64>,
    gauges: Vec<GaugeCell>,
    /// Timings, run-time counts and destinations; its counters and gauges stay empty (they
    /// are the atomics above).
    slow: Mutex<Snapshot>,
    /// Individual events for the diagnosis; a flush does not empty it.
    pub(super) journal: Mutex<observations::Journal>,
    /// Upstream connections open now, for `connections_peak`.
    pub(super) live: LiveConnections,
}

/// Cheap to clone; every clone writes to the same window.
#[derive(Clone)]
pub struct Recorder {
    pub(super) inner: Arc<Inner>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        let counters = Counter::ALL.iter().map(|_| AtomicU64::new(0)).collect();
        let gauges = Gauge::ALL
            .iter()
            .map(|_| GaugeCell {
                current: AtomicI64::new(0),
                window_max: AtomicI64::new(0),
            })
            .collect();
        Recorder {
            inner: Arc::new(Inner {
                counters,
                gauges,
                slow: Mutex::new(Snapshot::default()),
                journal: Mutex::new(observations::Journal::default()),
                live: LiveConnections::default(),
            }),
        }
    }

    /// A poisoned lock only means another thread panicked mid-update of plain maps; the data
    /// is still usable and losing metrics would be worse.
    pub(super) fn slow(&self) -> MutexGuard<'_, Snapshot> {
        self.inner.slow.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn count(&self, counter: Counter, n: u64) {
        if n > 0 {
            self.inner.counters[counter as usize].fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn incr(&self, counter: Counter) {
        self.count(counter, 1);
    }

    /// Counts for the function and for one destination.
    pub fn count_for(&self, destination: &str, counter: Counter, n: u64) {
        if n == 0 {
            return;
        }
        self.count(counter, n);
        let mut slow = self.slow();
        let window = destination_window(&mut slow.destinations, destination);
        *window.counters.entry(counter).or_default() += n;
    }

    /// Counts one each of `counters` for one route and upstream region only (the
    /// function-level figures are counted where the request is), under one lock.
    pub fn count_route(
        &self,
        route: &str,
        region: &str,
        counters: impl IntoIterator<Item = Counter>,
    ) {
        let mut slow = self.slow();
        let window = route_window(&mut slow.routes, route, region);
        for counter in counters {
            *window.counters.entry(counter).or_default() += 1;
        }
    }

    /// Records a latency for one route and upstream region only.
    pub fn observe_ms_route(&self, route: &str, region: &str, timing: Timing, ms: f64) {
        let mut slow = self.slow();
        let window = route_window(&mut slow.routes, route, region);
        window.timings.entry(timing).or_default().record(ms);
    }

    /// An upstream connection to `destination` opened; it counts as open until the returned
    /// value is dropped.
    pub fn connection_opened(&self, destination: &str) -> OpenConnection {
        OpenConnection::new(self.clone(), destination.to_owned())
    }

    /// Upstream connections open right now (all destinations).
    pub fn upstream_connections_open(&self) -> u64 {
        self.inner.live.open_now()
    }

    /// A metric whose name is only known at run time (unit `Count`).
    pub fn count_named(&self, name: &str, n: u64) {
        let mut slow = self.slow();
        match slow.named_counts.get_mut(name) {
            Some(total) => *total += n,
            None => {
                slow.named_counts.insert(name.to_owned(), n);
            }
        }
    }

    pub fn observe_ms(&self, timing: Timing, ms: f64) {
        self.slow().timings.entry(timing).or_default().record(ms);
    }

    /// Records a latency for the function and for one destination.
    pub fn observe_ms_for(&self, destination: &str, timing: Timing, ms: f64) {
        let mut slow = self.slow();
        slow.timings.entry(timing).or_default().record(ms);
        let window = destination_window(&mut slow.destinations, destination);
        window.timings.entry(timing).or_default().record(ms);
    }

    /// Records a latency for one destination only: for figures whose function-level value is
    /// recorded where they are measured (the DNS cache records `dns_ms` for every lookup).
    pub fn observe_ms_destination(&self, destination: &str, timing: Timing, ms: f64) {
        let mut slow = self.slow();
        let window = destination_window(&mut slow.destinations, destination);
        window.timings.entry(timing).or_default().record(ms);
    }

    pub fn gauge_add(&self, gauge: Gauge, delta: i64) {
        let cell = &self.inner.gauges[gauge as usize];
        let now = cell.current.fetch_add(delta, Ordering::Relaxed) + delta;
        cell.window_max.fetch_max(now, Ordering::Relaxed);
    }

    pub fn gauge_value(&self, gauge: Gauge) -> i64 {
        self.inner.gauges[gauge as usize]
            .current
            .load(Ordering::Relaxed)
    }

    /// The journal's events after `cursor` (0 for everything still held).
    pub fn observations_since(&self, cursor: u64) -> JournalRead {
        self.inner
            .journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .read_since(cursor)
    }

    /// The running total of a counter in the current window (for status pages and diagnosis).
    pub fn peek(&self, counter: Counter) -> u64 {
        self.inner.counters[counter as usize].load(Ordering::Relaxed)
    }

    /// Takes everything recorded since the previous call.
    pub fn take(&self) -> Snapshot {
        let mut snapshot = std::mem::take(&mut *self.slow());
        for (i, counter) in Counter::ALL.iter().enumerate() {
            let n = self.inner.counters[i].swap(0, Ordering::Relaxed);
            if n > 0 {
                snapshot.counters.insert(*counter, n);
            }
        }
        for (i, gauge) in Gauge::ALL.iter().enumerate() {
            let cell = &self.inner.gauges[i];
            let current = cell.current.load(Ordering::Relaxed);
            let max = cell
                .window_max
                .swap(current, Ordering::Relaxed)
                .max(current);
            if max != 0 {
                snapshot.gauges.insert(*gauge, max);
            }
        }
        let peaks = self.inner.live.take_peaks();
        if peaks.total > 0 {
            snapshot
                .counters
                .insert(Counter::ConnectionsPeak, peaks.total);
        }
        for (destination, peak) in peaks.by_destination {
            let window = destination_window(&mut snapshot.destinations, &destination);
            // Destinations folded into `other` add up: a bound on their connections together.
            *window.counters.entry(Counter::ConnectionsPeak).or_default() += peak;
        }
        snapshot
    }

    /// Puts back a window that could not be delivered, so the next flush carries it.
    pub fn restore(&self, mut window: Snapshot) {
        // Counters and gauges go back into their atomics so `peek` and the window's peak
        // still see them.
        for (counter, n) in std::mem::take(&mut window.counters) {
            self.count(counter, n);
        }
        for (gauge, level) in std::mem::take(&mut window.gauges) {
            self.inner.gauges[gauge as usize]
                .window_max
                .fetch_max(level, Ordering::Relaxed);
        }
        self.slow().merge_bounded(window);
    }
}

fn route_window<'a>(
    routes: &'a mut BTreeMap<RouteRegion, DestinationWindow>,
    route: &str,
    region: &str,
) -> &'a mut DestinationWindow {
    routes
        .entry((route.to_owned(), region.to_owned()))
        .or_default()
}

pub(super) fn destination_window<'a>(
    destinations: &'a mut BTreeMap<String, DestinationWindow>,
    destination: &str,
) -> &'a mut DestinationWindow {
    let key = if destinations.contains_key(destination) || destinations.len() < MAX_DESTINATIONS - 1
    {
        destination
    } else {
        OTHER_DESTINATION
    };
    destinations.entry(key.to_owned()).or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_empties_the_window_and_nothing_is_lost() {
        let r = Recorder::new();
        r.count(Counter::Requests, 3);
        r.observe_ms(Timing::DnsMs, 1.5);
        r.count_named("symptom_idle_reset", 1);
        let first = r.take();
        assert_eq!(first.counters.get(&Counter::Requests), Some(&3));
        assert_eq!(first.timings[&Timing::DnsMs].count(), 1);
        assert_eq!(first.named_counts["symptom_idle_reset"], 1);
        r.incr(Counter::Requests);
        let second = r.take();
        assert_eq!(second.counters.get(&Counter::Requests), Some(&1));
        assert!(second.timings.is_empty());
        assert!(r.take().is_empty());
    }

    #[test]
    fn destinations_are_bounded() {
        let r = Recorder::new();
        for i in 0..(MAX_DESTINATIONS * 3) {
            r.count_for(&format!("host{i}:443"), Counter::Requests, 1);
        }
        let snap = r.take();
        assert_eq!(snap.destinations.len(), MAX_DESTINATIONS);
        let total: u64 = snap
            .destinations
            .values()
            .map(|d| d.counters[&Counter::Requests])
            .sum();
        assert_eq!(total, (MAX_DESTINATIONS * 3) as u64);
        assert_eq!(
            snap.counters[&Counter::Requests],
            (MAX_DESTINATIONS * 3) as u64
        );
    }

    #[test]
    fn gauge_reports_window_peak() {
        let r = Recorder::new();
        r.gauge_add(Gauge::ActiveConnections, 5);
        r.gauge_add(Gauge::ActiveConnections, -4);
        assert_eq!(r.take().gauges[&Gauge::ActiveConnections], 5);
        assert_eq!(r.take().gauges[&Gauge::ActiveConnections], 1);
        r.gauge_add(Gauge::ActiveConnections, -1);
        assert_eq!(r.take().gauges.get(&Gauge::ActiveConnections), Some(&1));
        assert!(!r.take().gauges.contains_key(&Gauge::ActiveConnections));
    }

    #[test]
    fn restore_puts_a_window_back() {
        let r = Recorder::new();
        r.count_for("a:443", Counter::Errors, 2);
        let snap = r.take();
        r.restore(snap.clone());
        r.incr(Counter::Errors);
        let again = r.take();
        assert_eq!(again.counters[&Counter::Errors], 3);
        assert_eq!(again.destinations["a:443"].counters[&Counter::Errors], 2);

        r.gauge_add(Gauge::ActiveConnections, 4);
        r.observe_ms(Timing::DnsMs, 2.0);
        let snap = r.take();
        r.gauge_add(Gauge::ActiveConnections, -4);
        r.restore(snap.clone());
        assert_eq!(
            r.take(),
            snap,
            "the peak and the histograms come back as they were"
        );
    }
}
