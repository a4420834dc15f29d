//! How the sink fails: the cool-down between attempts while CloudWatch cannot be used, and
//! what the operator is told. An unreachable endpoint is the `aws_endpoint_unreachable`
//! finding on the board (logged, and listed on `/_warden/status`) until a send succeeds again;
//! a refusal or a missing setup is an error log once per change, since its fix is not in the
//! network.

use super::client::{FailureKind, PutError};
use super::{Settings, FINDING};
use crate::config::redact;
use crate::findings::{ActiveFinding, Findings};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const FIRST_COOL_DOWN: Duration = Duration::from_secs(30);
const MAX_COOL_DOWN: Duration = Duration::from_secs(15 * 60);

/// Consecutive failures and the cool-down they earned (30 s doubling to 15 min).
#[derive(Debug, Default)]
pub(super) struct Backoff {
    consecutive_failures: u32,
    cool_down_until: Option<Instant>,
    /// The kind of failure last reported, so each change is reported once.
    reported: Option<FailureKind>,
}

/// One failure as [`Backoff::failed`] counted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Failure {
    pub consecutive: u32,
    pub cool_down: Duration,
    /// The first failure of this kind in a row: the one to report.
    pub first_of_its_kind: bool,
}

impl Backoff {
    pub(super) fn cooling(&self) -> bool {
        self.cool_down_until.is_some_and(|t| Instant::now() < t)
    }

    pub(super) fn failed(&mut self, kind: FailureKind) -> Failure {
        self.consecutive_failures += 1;
        let cool_down = FIRST_COOL_DOWN
            .saturating_mul(1 << (self.consecutive_failures - 1).min(5))
            .min(MAX_COOL_DOWN);
        self.cool_down_until = Some(Instant::now() + cool_down);
        let first_of_its_kind = self.reported != Some(kind);
        self.reported = Some(kind);
        Failure {
            consecutive: self.consecutive_failures,
            cool_down,
            first_of_its_kind,
        }
    }

    /// A send succeeded; returns the failure kind that had been reported, if any.
    pub(super) fn recovered(&mut self) -> Option<FailureKind> {
        self.consecutive_failures = 0;
        self.cool_down_until = None;
        self.reported.take()
    }
}

/// Tells the operator about failures and recoveries.
pub(super) struct Reporter {
    findings: Arc<Findings>,
    /// The board entry is ours to clear. The diagnosis raises the same finding for AWS
    /// endpoints the function cannot reach; a CloudWatch send that works again says nothing
    /// about those.
    raised: AtomicBool,
    namespace: String,
    region: String,
    /// Redacted, for evidence.
    endpoint: String,
}

impl Reporter {
    pub(super) fn new(settings: &Settings, findings: Arc<Findings>) -> Reporter {
        let region = settings
            .region
            .clone()
            .unwrap_or_else(|| "<region>".to_owned());
        let endpoint = settings
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://monitoring.{region}.amazonaws.com"));
        Reporter {
            findings,
            raised: AtomicBool::new(false),
            namespace: settings.namespace.clone(),
            region,
            endpoint: redact(&endpoint),
        }
    }

    /// Reports a failure; returns whether it raised the `aws_endpoint_unreachable` finding
    /// (the caller counts the symptom). `invocation` is the number of INVOKEs so far.
    pub(super) fn failed(
        &self,
        error: &PutError,
        failure: Failure,
        elapsed: Duration,
        invocation: u64,
    ) -> bool {
        let evidence = json!({
            "endpoint": self.endpoint,
            "error": redact(truncate(&error.message, 400)),
            "elapsed_ms": elapsed.as_millis() as u64,
            "consecutive_failures": failure.consecutive,
            "retry_in_s": failure.cool_down.as_secs(),
            "fallback": "emf",
        });
        match error.kind {
            FailureKind::Unreachable => {
                // The board keeps it once, however often it is raised.
                let raised = self.findings.raise(ActiveFinding {
                    finding: FINDING,
                    summary: "CloudWatch PutMetricData gets no answer; metrics go to EMF on \
                              stdout meanwhile"
                        .to_owned(),
                    since_invocation: invocation,
                    evidence,
                    fix: unreachable_fix(&self.region),
                });
                if raised {
                    self.raised.store(true, Ordering::Relaxed);
                } else {
                    self.failed_again(error, failure);
                }
                raised
            }
            _ if !failure.first_of_its_kind => {
                self.failed_again(error, failure);
                false
            }
            FailureKind::Rejected => {
                tracing::error!(
                    evidence = %evidence,
                    "CloudWatch rejected PutMetricData; metrics go to EMF on stdout meanwhile. \
                     Fix: allow cloudwatch:PutMetricData on the function's role (for namespace \
                     {}), or set EGRESS_WARDEN_METRICS_SINK=emf",
                    self.namespace
                );
                false
            }
            FailureKind::Setup => {
                tracing::error!(
                    evidence = %evidence,
                    "cannot call CloudWatch (credentials or region missing); metrics go to EMF \
                     on stdout. Fix: run in Lambda (which provides both), or set \
                     EGRESS_WARDEN_METRICS_SINK=emf"
                );
                false
            }
        }
    }

    fn failed_again(&self, error: &PutError, failure: Failure) {
        tracing::debug!(
            "PutMetricData failed again ({} in a row): {}",
            failure.consecutive,
            error.message
        );
    }

    /// A send succeeded after a failure of kind `reported` had been reported.
    pub(super) fn recovered(&self, reported: FailureKind) {
        let cleared = self.raised.swap(false, Ordering::Relaxed)
            && self.findings.clear(
                FINDING,
                "CloudWatch PutMetricData answers again; metrics go to CloudWatch",
                json!({ "endpoint": self.endpoint }),
            );
        if !cleared {
            tracing::info!(
                "CloudWatch PutMetricData works again after {reported:?}; metrics go to CloudWatch"
            );
        }
    }
}

fn unreachable_fix(region: &str) -> String {
    format!(
        "The extension cannot reach CloudWatch to PutMetricData. In a VPC without a NAT gateway, \
         add an interface VPC endpoint for com.amazonaws.{region}.monitoring with private DNS \
         enabled, in the function's subnets, with a security group that allows HTTPS (443) from \
         the function's security group; or give the subnets a route to a NAT gateway; or set \
         EGRESS_WARDEN_METRICS_SINK=emf (metrics through CloudWatch Logs, no network needed). \
         Until then every window is written as EMF to stdout, so nothing is lost."
    )
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            namespace: "ns".into(),
            function_name: "fn".into(),
            function_version: None,
            region: Some("eu-west-1".into()),
            endpoint: None,
        }
    }

    fn unreachable() -> PutError {
        PutError {
            kind: FailureKind::Unreachable,
            message: "connect timed out".into(),
        }
    }

    #[test]
    fn the_cool_down_doubles_up_to_its_cap_and_a_success_resets_it() {
        let mut backoff = Backoff::default();
        let first = backoff.failed(FailureKind::Unreachable);
        assert_eq!(first.cool_down, FIRST_COOL_DOWN);
        assert!(first.first_of_its_kind && backoff.cooling());
        let second = backoff.failed(FailureKind::Unreachable);
        assert_eq!(second.cool_down, FIRST_COOL_DOWN * 2);
        assert!(!second.first_of_its_kind);
        for _ in 0..10 {
            backoff.failed(FailureKind::Unreachable);
        }
        assert_eq!(
            backoff.failed(FailureKind::Unreachable).cool_down,
            MAX_COOL_DOWN
        );
        assert_eq!(backoff.recovered(), Some(FailureKind::Unreachable));
        assert!(!backoff.cooling());
        assert_eq!(backoff.recovered(), None);
    }

    #[test]
    fn an_unreachable_endpoint_is_on_the_board_until_a_send_succeeds() {
        let board = Arc::new(Findings::default());
        let reporter = Reporter::new(&settings(), board.clone());
        let mut backoff = Backoff::default();
        let error = unreachable();
        let failure = backoff.failed(error.kind);
        assert!(reporter.failed(&error, failure, Duration::from_millis(1), 3));
        let failure = backoff.failed(error.kind);
        assert!(
            !reporter.failed(&error, failure, Duration::from_millis(1), 4),
            "raised once per outage"
        );
        let listed = board.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].finding, FINDING);
        assert_eq!(listed[0].since_invocation, 3);
        assert!(listed[0].fix.contains("com.amazonaws.eu-west-1.monitoring"));
        assert_eq!(
            listed[0].evidence["endpoint"],
            "https://monitoring.eu-west-1.amazonaws.com"
        );
        reporter.recovered(FailureKind::Unreachable);
        assert_eq!(backoff.recovered(), Some(FailureKind::Unreachable));
        assert!(!board.is_active(FINDING));
    }

    #[test]
    fn a_recovery_leaves_the_diagnosis_entry_alone() {
        let board = Arc::new(Findings::default());
        let reporter = Reporter::new(&settings(), board.clone());
        board.raise(ActiveFinding {
            finding: FINDING,
            summary: "sts unreachable".into(),
            since_invocation: 1,
            evidence: json!({}),
            fix: "add an endpoint".into(),
        });
        let error = unreachable();
        let failure = Backoff::default().failed(error.kind);
        assert!(!reporter.failed(&error, failure, Duration::ZERO, 2));
        reporter.recovered(FailureKind::Unreachable);
        assert!(board.is_active(FINDING), "not the sink's to clear");
    }

    #[test]
    fn a_refusal_is_not_the_unreachable_finding() {
        let board = Arc::new(Findings::default());
        let reporter = Reporter::new(&settings(), board.clone());
        let error = PutError {
            kind: FailureKind::Rejected,
            message: "AccessDenied".into(),
        };
        let failure = Backoff::default().failed(error.kind);
        assert!(!reporter.failed(&error, failure, Duration::ZERO, 1));
        assert!(board.list().is_empty());
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
