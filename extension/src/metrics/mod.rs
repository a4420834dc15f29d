//! Metrics: the one recorder every part of the extension writes to, the windows it hands
//! out, and the writers that turn a window into EMF lines or PutMetricData requests.
//!
//! Counters are lock-free atomics (the DNS fast path bumps them per query); latency
//! histograms and per-destination figures sit behind short mutexes. A flush takes the whole
//! window out atomically per metric (`swap`/`mem::take`), so an observation lands either in
//! this flush or the next one — never in neither.

pub mod cloudwatch;
mod connections;
mod egress;
mod emf;
mod flat;
mod histogram;
mod names;
pub mod observations;
mod recorder;
mod snapshot;

pub use connections::OpenConnection;
pub use egress::{Direction, EgressPath, PathClass};
pub use emf::{
    EmfWriter, EMF_MAX_EVENT_BYTES, EMF_MAX_METRICS_PER_DIRECTIVE, EMF_MAX_VALUES_PER_METRIC,
};
pub use histogram::Histogram;
pub use names::{known_metric_names, Counter, Gauge, Timing, EGRESS_COST_METRIC};
pub use observations::{
    ConnectOutcome, ConnectPurpose, DnsOutcome, Event, JournalRead, Observation,
};
pub use recorder::Recorder;
pub use snapshot::{DestinationWindow, Snapshot, MAX_DESTINATIONS, OTHER_DESTINATION};

/// Milliseconds as log lines show them: rounded to the microsecond, so a line reads
/// `tcp_connect_ms=0.722` rather than every digit of the float, and stays a number in JSON
/// (log filters compare it).
pub fn log_ms(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::log_ms;

    #[test]
    fn logged_milliseconds_have_at_most_three_decimals() {
        assert_eq!(format!("{:?}", log_ms(0.7222510000000001)), "0.722");
        assert_eq!(format!("{:?}", log_ms(12.0)), "12.0");
        assert_eq!(format!("{:?}", log_ms(0.0004)), "0.0");
        assert_eq!(format!("{}", log_ms(1234.56789)), "1234.568");
        for i in 0..20_000u32 {
            let ms = f64::from(i) * 0.0137 + 0.1 + 0.2;
            let shown = format!("{:?}", log_ms(ms));
            let decimals = shown.split_once('.').map_or(0, |(_, d)| d.len());
            assert!(decimals <= 3, "{ms} shown as {shown}");
        }
    }
}
