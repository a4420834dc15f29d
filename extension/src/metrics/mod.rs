//! Metrics: the one recorder every part of the extension writes to, the windows it hands
//! out, and the writers that turn a window into EMF lines or PutMetricData requests.
//!
//! Counters are lock-free atomics (the DNS fast path bumps them per query); latency
//! histograms and per-destination figures sit behind short mutexes. A flush takes the whole
//! window out atomically per metric (`swap`/`mem::take`), so an observation lands either in
//! this flush or the next one — never in neither.

pub mod cloudwatch;
mod emf;
mod flat;
mod histogram;
mod names;
pub mod observations;
mod recorder;
mod snapshot;

pub use emf::{
    EmfWriter, EMF_MAX_EVENT_BYTES, EMF_MAX_METRICS_PER_DIRECTIVE, EMF_MAX_VALUES_PER_METRIC,
};
pub use histogram::Histogram;
pub use names::{known_metric_names, Counter, Gauge, Timing};
pub use observations::{
    ConnectOutcome, ConnectPurpose, DnsOutcome, Event, JournalRead, Observation,
};
pub use recorder::Recorder;
pub use snapshot::{DestinationWindow, Snapshot, MAX_DESTINATIONS, OTHER_DESTINATION};
