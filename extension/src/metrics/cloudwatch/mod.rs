//! The CloudWatch PutMetricData sink (`EGRESS_WARDEN_METRICS_SINK=cloudwatch|both`).
//!
//! EMF on stdout stays the default because it needs no network. This sink pushes the same
//! windows, with the same names, units and dimension sets, straight to CloudWatch — for
//! accounts without log-based extraction, or for high-resolution data. It is compiled with the
//! `cloudwatch` cargo feature (on by default and in the layer); without it [`CloudWatchSink::start`]
//! warns and the extension writes EMF.
//!
//! SDK version: aws-sdk-cloudwatch is pinned to 1.99.0, the last release on the awsQuery
//! protocol. 1.100 and later speak RPCv2 CBOR, which moto's server — the CloudWatch our
//! end-to-end tests run on loopback — does not (getmoto/moto#9195); CloudWatch accepts both,
//! so nothing is lost in production by staying on awsQuery.
//!
//! Layout: `batch` turns a window into requests within the API limits, `client` talks to
//! CloudWatch (never through a proxy), `sink` decides when to send and how to fail.

use crate::context::Context;
use crate::metrics::{EmfWriter, Snapshot};
use std::time::Duration;

#[cfg(feature = "cloudwatch")]
mod batch;
#[cfg(feature = "cloudwatch")]
mod client;
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

/// The sink as the lifecycle sees it; exists in every build so the lifecycle has no `cfg`.
pub struct CloudWatchSink {
    #[cfg(feature = "cloudwatch")]
    sink: sink::Sink,
}

impl CloudWatchSink {
    /// The sink, when the configuration asks for it (`cloudwatch` or `both`) and this build
    /// has it. `emf` writes the fallback (and, with `both`, is also the primary EMF sink).
    #[cfg(feature = "cloudwatch")]
    pub fn start(ctx: &Context, emf: EmfWriter) -> Option<CloudWatchSink> {
        use crate::config::MetricsSink;
        let metrics = &ctx.config.metrics;
        let emf_has_data = match metrics.sink {
            MetricsSink::CloudWatch => false,
            MetricsSink::Both => true,
            MetricsSink::Emf | MetricsSink::Off => return None,
        };
        let function_name = match ctx.config.lambda.function_name.as_str() {
            // CloudWatch rejects an empty dimension value; Lambda always sets the name.
            "" => "unknown".to_owned(),
            name => name.to_owned(),
        };
        let settings = sink::SinkSettings {
            namespace: metrics.namespace.clone(),
            function_name,
            client: client::ClientSettings {
                region: ctx.config.lambda.region.clone(),
                endpoint: metrics.cloudwatch_endpoint.clone(),
            },
            emf_has_data,
        };
        tracing::info!(
            namespace = %metrics.namespace,
            endpoint = %metrics
                .cloudwatch_endpoint
                .as_deref()
                .map_or_else(|| "SDK default".to_owned(), crate::config::redact),
            "metrics go to CloudWatch PutMetricData{}",
            if emf_has_data { " and EMF on stdout" } else { " (EMF on stdout if it fails)" }
        );
        Some(CloudWatchSink {
            sink: sink::Sink::new(settings, ctx.recorder.clone(), ctx.clock.clone(), emf),
        })
    }

    #[cfg(not(feature = "cloudwatch"))]
    pub fn start(ctx: &Context, _emf: EmfWriter) -> Option<CloudWatchSink> {
        use crate::config::MetricsSink;
        if matches!(
            ctx.config.metrics.sink,
            MetricsSink::CloudWatch | MetricsSink::Both
        ) {
            tracing::warn!(
                variable = "EGRESS_WARDEN_METRICS_SINK",
                "this build has no CloudWatch sink (built without the `cloudwatch` feature); \
                 metrics go to EMF on stdout"
            );
        }
        None
    }

    /// Queues a window for a background send; returns at once.
    pub fn submit(&self, window: Snapshot) {
        #[cfg(feature = "cloudwatch")]
        self.sink.submit(window);
        #[cfg(not(feature = "cloudwatch"))]
        drop(window);
    }

    /// SHUTDOWN: sends everything left within `budget`, else writes it as EMF.
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
