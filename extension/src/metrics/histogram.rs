//! A latency histogram with bounded memory: log-spaced buckets 2 % wide, so a window holds
//! at most a few hundred buckets whatever the traffic, while min, max, sum and count stay exact.

use std::collections::BTreeMap;

const GROWTH: f64 = 1.02;
/// Values at or below this (in ms) share the lowest bucket: 1 µs is below anything we time.
const FLOOR_MS: f64 = 0.001;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    buckets: BTreeMap<i32, u64>,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

fn bucket_of(ms: f64) -> i32 {
    (ms.max(FLOOR_MS).ln() / GROWTH.ln()).round() as i32
}

fn bucket_value(bucket: i32) -> f64 {
    GROWTH.powi(bucket)
}

impl Histogram {
    pub fn record(&mut self, ms: f64) {
        let ms = if ms.is_finite() { ms.max(0.0) } else { 0.0 };
        *self.buckets.entry(bucket_of(ms)).or_default() += 1;
        if self.count == 0 {
            self.min = ms;
            self.max = ms;
        } else {
            self.min = self.min.min(ms);
            self.max = self.max.max(ms);
        }
        self.count += 1;
        self.sum += ms;
    }

    pub fn merge(&mut self, other: &Histogram) {
        if other.count == 0 {
            return;
        }
        for (b, n) in &other.buckets {
            *self.buckets.entry(*b).or_default() += n;
        }
        if self.count == 0 {
            self.min = other.min;
            self.max = other.max;
        } else {
            self.min = self.min.min(other.min);
            self.max = self.max.max(other.max);
        }
        self.count += other.count;
        self.sum += other.sum;
    }

    pub fn count(&self) -> u64 {
        self.count
    }
    pub fn sum(&self) -> f64 {
        self.sum
    }
    pub fn min(&self) -> f64 {
        self.min
    }
    pub fn max(&self) -> f64 {
        self.max
    }

    /// (representative value, count) pairs in ascending order.
    pub fn values_and_counts(&self) -> Vec<(f64, u64)> {
        self.buckets
            .iter()
            .map(|(b, n)| (bucket_value(*b).clamp(self.min, self.max), *n))
            .collect()
    }

    /// The value at quantile `q` (0..=1), within the bucket precision.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (value, n) in self.values_and_counts() {
            seen += n;
            if seen >= rank {
                return Some(value);
            }
        }
        Some(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_stats_and_close_quantiles() {
        let mut h = Histogram::default();
        for i in 1..=1000 {
            h.record(i as f64 / 10.0);
        }
        assert_eq!(h.count(), 1000);
        assert!((h.sum() - 50_050.0).abs() < 1e-6);
        assert_eq!(h.min(), 0.1);
        assert_eq!(h.max(), 100.0);
        let p50 = h.quantile(0.5).unwrap_or_default();
        assert!((p50 - 50.0).abs() / 50.0 < 0.02, "p50 {p50}");
        let p99 = h.quantile(0.99).unwrap_or_default();
        assert!((p99 - 99.0).abs() / 99.0 < 0.02, "p99 {p99}");
    }

    #[test]
    fn memory_is_bounded() {
        let mut h = Histogram::default();
        let mut v = 0.0005;
        while v < 10_000_000.0 {
            h.record(v);
            v *= 1.001;
        }
        assert!(h.values_and_counts().len() < 1200);
    }

    #[test]
    fn junk_values_do_not_poison() {
        let mut h = Histogram::default();
        h.record(f64::NAN);
        h.record(-3.0);
        h.record(f64::INFINITY);
        assert_eq!(h.count(), 3);
        assert_eq!(h.max(), 0.0);
    }
}
