//! The SDK side: a CloudWatch client that never goes through a proxy, and one PutMetricData
//! call per packed request.
//!
//! Why a hand-built HTTP client: the SDK's default HTTPS client needs aws-lc-rs (a cmake and
//! C build) and, from behavior version 2025-08-07, honours `HTTPS_PROXY`. The exec wrapper
//! sets that variable for the runtime so the function's traffic goes through our proxy;
//! extensions don't get the wrapper's environment, but a user may set `HTTPS_PROXY` on the
//! function itself — and the extension's own metrics must never loop through its own proxy
//! (nor depend on it being up at SHUTDOWN). So: hyper 1 + rustls with ring (the provider the
//! proxy already links), proxying explicitly disabled.

use super::batch::{Datum, Payload};
use super::Settings;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_cloudwatch::config::ConfigBag;
use aws_sdk_cloudwatch::error::{DisplayErrorContext, SdkError};
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use aws_smithy_http_client::Connector;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::runtime_components::{
    RuntimeComponents, RuntimeComponentsBuilder,
};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Per TCP connect: long enough for a cross-AZ handshake, short enough that a VPC without a
/// route (SYNs dropped) is recognised within one invoke.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// One PutMetricData attempt, end to end.
pub(super) const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(2500);

/// Why a request failed, as far as the operator's fix is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FailureKind {
    /// No answer: connect refused or timed out, DNS failure, attempt timeout. In a VPC this
    /// is the missing NAT route or `monitoring` interface endpoint.
    Unreachable,
    /// CloudWatch answered with an error (e.g. AccessDenied: the role lacks
    /// `cloudwatch:PutMetricData`, or a throttle).
    Rejected,
    /// The request could not be built: no region, no credentials.
    Setup,
}

#[derive(Debug, Clone)]
pub(super) struct PutError {
    pub kind: FailureKind,
    pub message: String,
}

pub(super) struct CloudWatch {
    client: aws_sdk_cloudwatch::Client,
}

impl CloudWatch {
    /// Loads the SDK configuration: credentials from the default chain (in Lambda, the
    /// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN` environment), region
    /// from `AWS_REGION`, endpoint from `EGRESS_WARDEN_CLOUDWATCH_ENDPOINT`. No I/O happens here
    /// beyond reading the environment and profile files; credentials resolve on first use.
    pub(super) async fn new(settings: &Settings) -> CloudWatch {
        let mut loader = aws_config::defaults(BehaviorVersion::v2026_11_17())
            .http_client(DirectHttpClient::default())
            // We never retry inside the SDK: a failed window goes to EMF (nothing is lost) and
            // the sink backs off; retries would only stretch the time a send is in flight.
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .operation_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            );
        if let Some(region) = &settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &settings.endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        let shared = loader.load().await;
        CloudWatch {
            client: aws_sdk_cloudwatch::Client::new(&shared),
        }
    }

    /// One PutMetricData call for one packed request.
    pub(super) async fn put(&self, namespace: &str, data: &[Datum]) -> Result<(), PutError> {
        let timestamp = DateTime::from(SystemTime::now());
        let metric_data = data.iter().map(|d| datum(d, timestamp)).collect();
        self.client
            .put_metric_data()
            .namespace(namespace)
            .set_metric_data(Some(metric_data))
            .send()
            .await
            .map(|_| ())
            .map_err(classify)
    }
}

fn datum(d: &Datum, timestamp: DateTime) -> MetricDatum {
    let dimensions = d
        .dimensions
        .iter()
        .map(|(name, value)| Dimension::builder().name(*name).value(value).build())
        .collect();
    let builder = MetricDatum::builder()
        .metric_name(&d.name)
        .set_dimensions(Some(dimensions))
        .timestamp(timestamp)
        .unit(StandardUnit::from(d.unit))
        // High resolution: sub-minute periods are one reason to push directly instead of
        // through log extraction; it costs nothing extra per datum.
        .storage_resolution(1);
    match &d.payload {
        Payload::Value(v) => builder.value(*v),
        Payload::Distribution { values, counts } => builder
            .set_values(Some(values.clone()))
            .set_counts(Some(counts.clone())),
    }
    .build()
}

fn classify<R: std::fmt::Debug>(
    err: SdkError<aws_sdk_cloudwatch::operation::put_metric_data::PutMetricDataError, R>,
) -> PutError {
    let kind = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => FailureKind::Unreachable,
        SdkError::ConstructionFailure(_) => FailureKind::Setup,
        // A response that is not CloudWatch's (e.g. an HTML error page from a middlebox) is
        // as good as no answer.
        SdkError::ResponseError(_) => FailureKind::Unreachable,
        _ => FailureKind::Rejected,
    };
    PutError {
        kind,
        message: DisplayErrorContext(&err).to_string(),
    }
}

/// hyper 1 + rustls (ring), no proxy. One connector per distinct timeout setting, so the
/// connection pool is shared across requests.
#[derive(Debug, Default)]
struct DirectHttpClient {
    connectors: Mutex<Vec<(TimeoutKey, SharedHttpConnector)>>,
}

type TimeoutKey = (Option<Duration>, Option<Duration>);

impl HttpClient for DirectHttpClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let key = (settings.connect_timeout(), settings.read_timeout());
        let mut connectors = self.connectors.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, found)) = connectors.iter().find(|(k, _)| *k == key) {
            return found.clone();
        }
        let mut builder = Connector::builder()
            .connector_settings(settings.clone())
            .proxy_config(ProxyConfig::disabled());
        builder.set_sleep_impl(components.sleep_impl());
        let connector = builder
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build();
        let shared = SharedHttpConnector::new(connector);
        connectors.push((key, shared.clone()));
        shared
    }

    /// Called when the client is built: the system's root certificates are loaded then (once
    /// per process) rather than inside the first request's timeouts.
    fn validate_base_client_config(
        &self,
        _: &RuntimeComponentsBuilder,
        _: &ConfigBag,
    ) -> Result<(), BoxError> {
        drop(
            Connector::builder()
                .proxy_config(ProxyConfig::disabled())
                .tls_provider(Provider::Rustls(CryptoMode::Ring))
                .build(),
        );
        Ok(())
    }
}
