//! Upstream connections open now, and the most open at once in each flush window
//! (`connections_peak`), for the function and per destination. A NAT gateway allows 55,000
//! simultaneous connections to one destination (IP, port, protocol): the fleet's sum of these
//! peaks is how close the function comes to that limit.

use super::Recorder;
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Default, Clone, Copy)]
struct Live {
    open: u64,
    peak: u64,
}

impl Live {
    fn opened(&mut self) {
        self.open += 1;
        self.peak = self.peak.max(self.open);
    }

    fn closed(&mut self) {
        self.open = self.open.saturating_sub(1);
    }

    /// The window's peak; the next window starts from what is open now.
    fn take_peak(&mut self) -> u64 {
        std::mem::replace(&mut self.peak, self.open)
    }
}

#[derive(Default)]
struct State {
    total: Live,
    by_destination: HashMap<String, Live>,
}

#[derive(Default)]
pub(super) struct LiveConnections {
    state: Mutex<State>,
}

/// One window's peaks: the function's total and each destination's (those with any).
#[derive(Debug, Default, PartialEq)]
pub(super) struct Peaks {
    pub total: u64,
    pub by_destination: Vec<(String, u64)>,
}

impl LiveConnections {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn opened(&self, destination: &str) {
        self.with(|s| {
            s.total.opened();
            match s.by_destination.get_mut(destination) {
                Some(live) => live.opened(),
                None => {
                    let mut live = Live::default();
                    live.opened();
                    s.by_destination.insert(destination.to_owned(), live);
                }
            }
        });
    }

    fn closed(&self, destination: &str) {
        self.with(|s| {
            s.total.closed();
            if let Some(live) = s.by_destination.get_mut(destination) {
                live.closed();
            }
        });
    }

    pub(super) fn open_now(&self) -> u64 {
        self.with(|s| s.total.open)
    }

    /// Takes the window's peaks; destinations with nothing open are forgotten after.
    pub(super) fn take_peaks(&self) -> Peaks {
        self.with(|s| {
            let total = s.total.take_peak();
            let mut by_destination: Vec<(String, u64)> = s
                .by_destination
                .iter_mut()
                .map(|(dest, live)| (dest.clone(), live.take_peak()))
                .filter(|(_, peak)| *peak > 0)
                .collect();
            by_destination.sort();
            s.by_destination.retain(|_, live| live.open > 0);
            Peaks {
                total,
                by_destination,
            }
        })
    }
}

/// Held by an open upstream connection: dropping it (the connection closing) is counted.
pub struct OpenConnection {
    recorder: Recorder,
    destination: String,
}

impl OpenConnection {
    pub(super) fn new(recorder: Recorder, destination: String) -> OpenConnection {
        recorder.inner.live.opened(&destination);
        OpenConnection {
            recorder,
            destination,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.recorder.inner.live.closed(&self.destination);
    }
}

impl std::fmt::Debug for OpenConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenConnection")
            .field("destination", &self.destination)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Counter;

    #[test]
    fn the_peak_is_the_most_open_at_once_per_window() {
        let r = Recorder::new();
        let a: Vec<_> = (0..40).map(|_| r.connection_opened("a:443")).collect();
        let b = r.connection_opened("b:443");
        drop(a);
        let _c = r.connection_opened("a:443");
        let w = r.take();
        assert_eq!(w.counters.get(&Counter::ConnectionsPeak), Some(&41));
        assert_eq!(
            w.destinations["a:443"].counters[&Counter::ConnectionsPeak],
            40
        );
        assert_eq!(
            w.destinations["b:443"].counters[&Counter::ConnectionsPeak],
            1
        );
        // The next window starts from what is still open.
        drop(b);
        let w = r.take();
        assert_eq!(w.counters.get(&Counter::ConnectionsPeak), Some(&2));
        assert_eq!(
            w.destinations["a:443"].counters[&Counter::ConnectionsPeak],
            1
        );
        assert_eq!(
            w.destinations["b:443"].counters[&Counter::ConnectionsPeak],
            1
        );
        let w = r.take();
        assert_eq!(w.counters.get(&Counter::ConnectionsPeak), Some(&1));
        assert!(
            !w.destinations.contains_key("b:443"),
            "forgotten once closed"
        );
    }
}
