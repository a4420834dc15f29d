//! A circuit breaker per route upstream, fed by connect failures and timeouts (an upstream
//! that answers, even with 5xx, is reachable). Closed → after `threshold` failures in a row,
//! open: requests go to the route's fallback (or get 503 at once) for `open_for` → half-open:
//! one probe request goes through; its success closes the breaker, its failure reopens it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(crate) const FAILURES_TO_OPEN: u32 = 5;
pub(crate) const OPEN_FOR: Duration = Duration::from_secs(10);
/// Upstreams tracked (routes are few; this only bounds memory against surprises).
const MAX_BREAKERS: usize = 64;

#[derive(Debug, Clone, Copy)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is out since `since`; if it never reports (its client went away), another
    /// is let through after `open_for`.
    HalfOpen {
        since: Instant,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Closed: go ahead.
    Pass,
    /// Half-open: this request is the probe.
    Probe,
    /// Open: use the fallback or fail fast.
    Reject,
}

pub(crate) struct Breakers {
    threshold: u32,
    open_for: Duration,
    states: Mutex<BTreeMap<String, State>>,
}

impl Breakers {
    pub(crate) fn new(threshold: u32, open_for: Duration) -> Breakers {
        Breakers {
            threshold: threshold.max(1),
            open_for,
            states: Mutex::new(BTreeMap::new()),
        }
    }

    fn with<R>(&self, key: &str, f: impl FnOnce(&mut State) -> R) -> R {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if !states.contains_key(key) && states.len() >= MAX_BREAKERS {
            // Untracked upstreams behave as closed breakers.
            return f(&mut State::Closed { failures: 0 });
        }
        f(states
            .entry(key.to_owned())
            .or_insert(State::Closed { failures: 0 }))
    }

    pub(crate) fn admit(&self, key: &str) -> Admission {
        let now = Instant::now();
        let open_for = self.open_for;
        self.with(key, |state| match *state {
            State::Closed { .. } => Admission::Pass,
            State::Open { until } if now < until => Admission::Reject,
            State::HalfOpen { since } if now.saturating_duration_since(since) < open_for => {
                Admission::Reject
            }
            State::Open { .. } | State::HalfOpen { .. } => {
                *state = State::HalfOpen { since: now };
                Admission::Probe
            }
        })
    }

    /// How long until an open breaker lets a probe through (zero when it would now).
    pub(crate) fn retry_in(&self, key: &str) -> Duration {
        let now = Instant::now();
        let open_for = self.open_for;
        self.with(key, |state| match *state {
            State::Open { until } => until.saturating_duration_since(now),
            State::HalfOpen { since } => (since + open_for).saturating_duration_since(now),
            State::Closed { .. } => Duration::ZERO,
        })
    }

    /// The probe was never sent: the next request may probe at once.
    pub(crate) fn probe_unsent(&self, key: &str) {
        let now = Instant::now();
        self.with(key, |state| {
            if let State::HalfOpen { .. } = *state {
                *state = State::Open { until: now };
            }
        });
    }

    pub(crate) fn success(&self, key: &str) {
        self.with(key, |state| *state = State::Closed { failures: 0 });
    }

    /// Records a connect failure or timeout; returns true when this opened the breaker.
    pub(crate) fn failure(&self, key: &str) -> bool {
        let now = Instant::now();
        let (threshold, open_for) = (self.threshold, self.open_for);
        self.with(key, |state| match *state {
            State::Closed { failures } if failures + 1 < threshold => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::Closed { .. } | State::HalfOpen { .. } => {
                *state = State::Open {
                    until: now + open_for,
                };
                true
            }
            // Requests admitted before it opened report late; the breaker stays open.
            State::Open { .. } => false,
        })
    }

    pub(crate) fn describe(&self) -> serde_json::Value {
        let now = Instant::now();
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let list: Vec<_> = states
            .iter()
            .map(|(key, state)| match *state {
                State::Closed { failures } => {
                    serde_json::json!({"upstream": key, "state": "closed", "consecutive_failures": failures})
                }
                State::Open { until } => serde_json::json!({
                    "upstream": key,
                    "state": "open",
                    "retry_in_ms": until.saturating_duration_since(now).as_millis() as u64,
                }),
                State::HalfOpen { .. } => serde_json::json!({"upstream": key, "state": "half_open"}),
            })
            .collect();
        serde_json::Value::Array(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_probes_then_closes() {
        let b = Breakers::new(3, Duration::from_millis(30));
        assert_eq!(b.admit("a"), Admission::Pass);
        assert!(!b.failure("a"));
        assert!(!b.failure("a"));
        assert!(b.failure("a"));
        assert_eq!(b.admit("a"), Admission::Reject);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.admit("a"), Admission::Probe);
        // Only one probe at a time.
        assert_eq!(b.admit("a"), Admission::Reject);
        assert!(b.failure("a"), "a failed probe reopens");
        assert_eq!(b.admit("a"), Admission::Reject);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.admit("a"), Admission::Probe);
        b.success("a");
        assert_eq!(b.admit("a"), Admission::Pass);
        // Other upstreams are independent.
        assert_eq!(b.admit("b"), Admission::Pass);
    }

    #[test]
    fn success_resets_the_count() {
        let b = Breakers::new(2, Duration::from_secs(10));
        assert!(!b.failure("a"));
        b.success("a");
        assert!(!b.failure("a"));
        assert_eq!(b.admit("a"), Admission::Pass);
    }

    #[test]
    fn a_lost_probe_is_replaced() {
        let b = Breakers::new(1, Duration::from_millis(20));
        assert!(b.failure("a"));
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(b.admit("a"), Admission::Probe);
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(b.admit("a"), Admission::Probe);
    }

    #[test]
    fn a_probe_never_sent_goes_to_the_next_request() {
        let b = Breakers::new(1, Duration::from_secs(10));
        assert!(b.failure("a"));
        b.probe_unsent("a");
        assert_eq!(
            b.admit("a"),
            Admission::Reject,
            "an open breaker stays open"
        );
        let b = Breakers::new(1, Duration::from_millis(20));
        assert!(b.failure("a"));
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(b.admit("a"), Admission::Probe);
        b.probe_unsent("a");
        assert_eq!(b.admit("a"), Admission::Probe);
    }
}
