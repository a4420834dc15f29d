//! One host's token bucket, kept as the generic cell rate algorithm (GCRA): a single
//! "theoretical arrival time" instead of a token count refilled by a timer. A request
//! reserves the earliest slot the bucket allows, so requests that wait leave in order and
//! never sooner than the rate; a pause (an upstream's `Retry-After`) holds every slot until
//! it ends.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Rate {
    /// Time between two requests at the steady rate.
    pub interval: Duration,
    /// How far ahead of the steady rate a burst may run: `(burst - 1) × interval`.
    pub tolerance: Duration,
}

impl Rate {
    pub(super) fn new(per_second: f64, burst: u32) -> Rate {
        let interval = Duration::from_secs_f64(1.0 / per_second);
        Rate {
            interval,
            tolerance: interval.saturating_mul(burst.saturating_sub(1)),
        }
    }
}

/// What a request gets from its bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    /// Go at this time (now or later); the slot is reserved.
    At(Instant),
    /// No slot within the wait allowed: the earliest one is this far off (nothing reserved).
    TooFar(Duration),
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Bucket {
    rate: Rate,
    /// When the next request would be due at the steady rate (past: the bucket is full).
    due: Instant,
    /// No request leaves before this (an upstream asked to wait).
    paused_until: Instant,
}

impl Bucket {
    pub(super) fn new(rate: Rate, now: Instant) -> Bucket {
        Bucket {
            rate,
            due: now,
            paused_until: now,
        }
    }

    /// Reserves the earliest slot from `now`, if it is at most `max_wait` away.
    pub(super) fn reserve(&mut self, now: Instant, max_wait: Duration) -> Slot {
        let due = self.due.max(now);
        let earliest = due
            .checked_sub(self.rate.tolerance)
            .unwrap_or(now)
            .max(self.paused_until)
            .max(now);
        let wait = earliest - now;
        if wait > max_wait {
            return Slot::TooFar(wait);
        }
        self.due = due.max(earliest) + self.rate.interval;
        Slot::At(earliest)
    }

    /// Holds every request until `until`; after it the rate starts afresh.
    pub(super) fn pause(&mut self, until: Instant) {
        self.paused_until = self.paused_until.max(until);
    }

    /// When the next request would be due at the steady rate.
    pub(super) fn due(&self) -> Instant {
        self.due
    }

    pub(super) fn paused_until(&self) -> Instant {
        self.paused_until
    }

    /// A bucket with nothing reserved or held ahead of `now` is as good as a new one.
    pub(super) fn is_idle(&self, now: Instant) -> bool {
        self.due <= now && self.paused_until <= now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn at(slot: Slot, start: Instant) -> Duration {
        match slot {
            Slot::At(t) => t - start,
            Slot::TooFar(w) => panic!("no slot: {w:?} away"),
        }
    }

    #[test]
    fn requests_are_spaced_at_the_rate_and_none_leaves_early() {
        let start = Instant::now();
        let mut bucket = Bucket::new(Rate::new(20.0, 1), start);
        let slots: Vec<Duration> = (0..100)
            .map(|_| at(bucket.reserve(start, Duration::from_secs(10)), start))
            .collect();
        for (i, slot) in slots.iter().enumerate() {
            assert_eq!(*slot, ms(50) * i as u32);
        }
        // Later arrivals queue behind the reserved ones.
        assert_eq!(
            at(bucket.reserve(start + ms(10), ms(6000)), start),
            ms(5000)
        );
    }

    #[test]
    fn a_burst_goes_at_once_then_the_rate_holds() {
        let start = Instant::now();
        let mut bucket = Bucket::new(Rate::new(10.0, 5), start);
        let slots: Vec<Duration> = (0..7)
            .map(|_| at(bucket.reserve(start, ms(1000)), start))
            .collect();
        assert_eq!(slots, [ms(0), ms(0), ms(0), ms(0), ms(0), ms(100), ms(200)]);
        // After a quiet second the bucket is full again.
        let later = start + ms(2000);
        assert!(bucket.is_idle(later));
        assert_eq!(at(bucket.reserve(later, ms(0)), start), ms(2000));
    }

    #[test]
    fn beyond_the_wait_cap_nothing_is_reserved() {
        let start = Instant::now();
        let mut bucket = Bucket::new(Rate::new(20.0, 1), start);
        let granted = (0..100)
            .filter(|_| matches!(bucket.reserve(start, ms(500)), Slot::At(_)))
            .count();
        assert_eq!(granted, 11, "0, 50, … 500 ms");
        assert_eq!(bucket.reserve(start, ms(500)), Slot::TooFar(ms(550)));
    }

    #[test]
    fn a_pause_holds_every_request_then_the_rate_resumes() {
        let start = Instant::now();
        let mut bucket = Bucket::new(Rate::new(20.0, 1), start);
        bucket.reserve(start, ms(0));
        bucket.pause(start + ms(2000));
        assert_eq!(
            bucket.reserve(start + ms(100), ms(1000)),
            Slot::TooFar(ms(1900))
        );
        assert_eq!(
            at(bucket.reserve(start + ms(100), ms(5000)), start),
            ms(2000)
        );
        assert_eq!(
            at(bucket.reserve(start + ms(100), ms(5000)), start),
            ms(2050)
        );
        assert!(!bucket.is_idle(start + ms(1000)));
    }
}
