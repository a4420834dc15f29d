//! The CloudWatch PutMetricData sink (`EGRESS_WARDEN_METRICS_SINK=cloudwatch|both`).
//!
//! EMF on stdout stays the default because it needs no network. This sink pushes the same
//! windows, with the same names, units and dimension sets, straight to CloudWatch — for
//! accounts without log-based extraction, or for high-resolution data. It is compiled with the
//! `cloudwatch` cargo feature (on by default and in the layer); without it [`CloudWatchSink::start`]
//! warns and the extension writes EMF.
//!
//! Protocol: the SDK (1.100 and later) speaks RPCv2 CBOR to CloudWatch; the end-to-end tests
//! run moto's server (5.2.6 or later, which serves CBOR) on loopback as CloudWatch.
//!
//! The sink only writes PutMetricData: which windows come here, and what becomes of one it
//! could not deliver ([`Undelivered`]), is the flusher's choice.
//!
//! Layout: `batch` turns a window into requests within the API limits, `client` talks to
//! CloudWatch (never through a proxy), `sink` decides when to send, `outage` how long to back
//! off and what to tell the operator.

use crate::clock::InvocationClock;
use crate::findings::Findings;
use crate::metrics::{Recorder, Snapshot};
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "cloudwatch")]
mod batch;
#[cfg(feature = "cloudwatch")]
mod client;
#[cfg(feature = "cloudwatch")]
mod outage;
#[cfg(feature = "cloudwatch")]
mod sink;

/// Counted (unit `Count`) for every PutMetricData call that failed and whose window went to
/// EMF instead.
pub const PUT_ERRORS_METRIC: &str = "cloudwatch_put_errors";
/// The finding an unreachable CloudWatch endpoint is reported as.
pub const FINDING: &str = "aws_endpoint_unreachable";
pub const SYMPTOM_METRIC: &str = "symptom_aws_endpoint_unreachable";

/// The final send at SHUTDOWN gets at most this: Lambda gives all external extensions 2 s
/// together, and the EMF fallback after a failed send must still fit.
pub const SHUTDOWN_BUDGET: Duration = Duration::from_millis(500);
/// Kept free before the SHUTDOWN deadline for the fallback write and the exit.
const SHUTDOWN_MARGIN: Duration = Duration::from_millis(300);

/// The budget for the final send, given the SHUTDOWN deadline (epoch ms) if known.
pub fn shutdown_budget(deadline_ms: Option<u64>, now_ms: u64) -> Duration {
    match deadline_ms {
        None => SHUTDOWN_BUDGET,
        Some(deadline) => Duration::from_millis(deadline.saturating_sub(now_ms))
            .saturating_sub(SHUTDOWN_MARGIN)
            .min(SHUTDOWN_BUDGET),
    }
}

/// Where and as what the sink sends, from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub namespace: String,
    pub function_name: String,
    /// Also send the key metrics under `[FunctionName, FunctionVersion]`.
    pub function_version: Option<String>,
    pub region: Option<String>,
    /// `EGRESS_WARDEN_CLOUDWATCH_ENDPOINT`; the SDK's regional endpoint when `None`.
    pub endpoint: Option<String>,
}

#[cfg(feature = "cloudwatch")]
impl Settings {
    fn function(&self) -> batch::Function<'_> {
        batch::Function {
            name: &self.function_name,
            version: self.function_version.as_deref(),
        }
    }
}

/// What becomes of a window, or the part of one, that CloudWatch did not take. Called from
/// the sink's background task as well as from [`CloudWatchSink::finish`].
pub type Undelivered = Arc<dyn Fn(Snapshot) + Send + Sync>;

/// The sink as the lifecycle sees it; exists in every build so the lifecycle has no `cfg`.
pub struct CloudWatchSink {
    #[cfg(feature = "cloudwatch")]
    sink: sink::Sink,
}

impl CloudWatchSink {
    /// The sink, in builds that have it. `recorder` gets the failure counts, `clock` tells a
    /// freeze from an outage, `findings` shows an unreachable endpoint, and `undelivered`
    /// takes what could not be sent.
    #[cfg(feature = "cloudwatch")]
    pub fn start(
        mut settings: Settings,
        recorder: Recorder,
        clock: Arc<InvocationClock>,
        findings: Arc<Findings>,
        undelivered: Undelivered,
    ) -> Option<CloudWatchSink> {
        if settings.function_name.is_empty() {
            // CloudWatch rejects an empty dimension value; Lambda always sets the name.
            settings.function_name = "unknown".to_owned();
        }
        tracing::info!(
            namespace = %settings.namespace,
            endpoint = %settings
                .endpoint
                .as_deref()
                .map_or_else(|| "SDK default".to_owned(), crate::config::redact),
            "sending metrics to CloudWatch PutMetricData"
        );
        Some(CloudWatchSink {
            sink: sink::Sink::new(settings, recorder, clock, findings, undelivered),
        })
    }

    #[cfg(not(feature = "cloudwatch"))]
    pub fn start(
        _settings: Settings,
        _recorder: Recorder,
        _clock: Arc<InvocationClock>,
        _findings: Arc<Findings>,
        _undelivered: Undelivered,
    ) -> Option<CloudWatchSink> {
        tracing::warn!(
            variable = "EGRESS_WARDEN_METRICS_SINK",
            "this build has no CloudWatch sink (built without the `cloudwatch` feature); \
             metrics go to EMF on stdout"
        );
        None
    }

    /// Queues a window for a background send; returns at once.
    pub fn submit(&self, window: Snapshot) {
        #[cfg(feature = "cloudwatch")]
        self.sink.submit(window);
        #[cfg(not(feature = "cloudwatch"))]
        drop(window);
    }

    /// SHUTDOWN: sends everything left within `budget`, else hands it to `undelivered`. The
    /// failure counts land in the recorder, for the caller's last take.
    pub async fn finish(&self, window: Snapshot, budget: Duration) {
        #[cfg(feature = "cloudwatch")]
        self.sink.finish(window, budget).await;
        #[cfg(not(feature = "cloudwatch"))]
        drop((window, budget));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_budget_stays_inside_the_deadline() {
        assert_eq!(shutdown_budget(None, 0), SHUTDOWN_BUDGET);
        assert_eq!(shutdown_budget(Some(10_000), 8_000), SHUTDOWN_BUDGET);
        assert_eq!(
            shutdown_budget(Some(10_000), 9_500),
            Duration::from_millis(200)
        );
        assert_eq!(shutdown_budget(Some(10_000), 11_000), Duration::ZERO);
    }
}
