//! What every long-running part of the extension shares: the validated configuration, the
//! metrics recorder, the current invocation's clock, the board of current findings and the
//! shutdown signal. Only the lifecycle writes the clock and the signal, only the diagnosis
//! (and the CloudWatch sink, for its own endpoint) the findings; everything else reads them.

use crate::config::Config;
use crate::metrics::Recorder;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

#[derive(Clone)]
pub struct Context {
    pub config: Arc<Config>,
    pub recorder: Recorder,
    pub clock: Arc<InvocationClock>,
    pub findings: Arc<Findings>,
    pub shutdown: watch::Receiver<bool>,
}

impl Context {
    /// A context with an empty findings board.
    pub fn new(
        config: Arc<Config>,
        recorder: Recorder,
        clock: Arc<InvocationClock>,
        shutdown: watch::Receiver<bool>,
    ) -> Context {
        Context {
            config,
            recorder,
            clock,
            findings: Arc::new(Findings::default()),
            shutdown,
        }
    }

    /// Resolves when the extension is shutting down (or the sender is gone).
    pub async fn shutting_down(&self) {
        let mut rx = self.shutdown.clone();
        // An error means the lifecycle is gone, which is a shutdown too.
        let _ = rx.wait_for(|down| *down).await;
    }
}

/// The current invocation as the Extensions API announced it.
pub struct InvocationClock {
    started: Instant,
    /// Epoch ms of the current invocation's deadline; 0 outside an invocation.
    deadline_ms: AtomicU64,
    /// Monotonic ms (since `started`) at which the latest INVOKE arrived; 0 before the first.
    last_invoke_at_ms: AtomicU64,
    invocations: AtomicU64,
}

impl Default for InvocationClock {
    fn default() -> Self {
        Self::new()
    }
}

impl InvocationClock {
    pub fn new() -> Self {
        InvocationClock {
            started: Instant::now(),
            deadline_ms: AtomicU64::new(0),
            last_invoke_at_ms: AtomicU64::new(0),
            invocations: AtomicU64::new(0),
        }
    }

    /// Records an INVOKE; returns how long it has been since the previous one (None for the
    /// first), which tells a thaw after a long freeze apart from back-to-back invokes.
    pub fn begin_invocation(&self, deadline_ms: u64) -> Option<Duration> {
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let previous = self.last_invoke_at_ms.swap(now, Ordering::Relaxed);
        self.deadline_ms.store(deadline_ms, Ordering::Relaxed);
        self.invocations.fetch_add(1, Ordering::Relaxed);
        (previous != 0).then(|| Duration::from_millis(now.saturating_sub(previous)))
    }

    /// An invocation the extension learned of without an INVOKE event (Managed Instances run
    /// many at once, with no deadline the extension is told of).
    pub fn note_invocation(&self) {
        self.invocations.fetch_add(1, Ordering::Relaxed);
    }

    pub fn invocations(&self) -> u64 {
        self.invocations.load(Ordering::Relaxed)
    }

    /// Time left until the current invocation's deadline, if one is known.
    pub fn remaining(&self) -> Option<Duration> {
        let deadline = self.deadline_ms.load(Ordering::Relaxed);
        if deadline == 0 {
            return None;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Some(Duration::from_millis(deadline.saturating_sub(now)))
    }
}

/// A finding while it holds, as `/_warden/status` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveFinding {
    /// `no_egress_route`, `dns_throttled`…
    pub finding: &'static str,
    /// One line saying what was seen, with the key numbers.
    pub summary: String,
    /// The invocation count when it became active (0 = during INIT).
    pub since_invocation: u64,
    /// The numbers it is based on.
    pub evidence: serde_json::Value,
    /// What to change in the VPC or the function.
    pub fix: String,
}

impl ActiveFinding {
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "finding": self.finding,
            "status": "active",
            "since_invocation": self.since_invocation,
            "summary": self.summary,
            "evidence": self.evidence,
            "fix": self.fix,
        })
    }
}

/// Whatever keeps the board current; the status page asks it to look again before reading.
pub trait Evaluate: Send + Sync {
    fn evaluate(&self);
}

/// The findings that currently hold. The board logs every change (one JSON line on stderr),
/// so a finding is logged once when it appears and once when it clears, whoever reports it.
#[derive(Default)]
pub struct Findings {
    active: Mutex<Vec<ActiveFinding>>,
    /// Weak: the evaluator owns a handle to this board, not the other way round.
    evaluator: OnceLock<Weak<dyn Evaluate>>,
}

impl Findings {
    fn active(&self) -> MutexGuard<'_, Vec<ActiveFinding>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers what [`Findings::refresh`] runs; only the first registration counts.
    pub fn set_evaluator(&self, evaluator: Weak<dyn Evaluate>) {
        let _ = self.evaluator.set(evaluator);
    }

    /// Brings the board up to date with everything observed so far.
    pub fn refresh(&self) {
        if let Some(evaluator) = self.evaluator.get().and_then(Weak::upgrade) {
            evaluator.evaluate();
        }
    }

    /// Marks a finding active and logs it; false (and nothing logged) if it already was.
    pub fn raise(&self, finding: ActiveFinding) -> bool {
        let mut active = self.active();
        if active.iter().any(|f| f.finding == finding.finding) {
            return false;
        }
        write_line(&finding_line(
            FindingStatus::Active,
            finding.finding,
            &finding.summary,
            &finding.evidence,
            &finding.fix,
        ));
        active.push(finding);
        true
    }

    /// Marks a finding cleared and logs it with the evidence that cleared it; false (and
    /// nothing logged) if it was not active.
    pub fn clear(&self, finding: &str, summary: &str, evidence: serde_json::Value) -> bool {
        let mut active = self.active();
        let Some(at) = active.iter().position(|f| f.finding == finding) else {
            return false;
        };
        let was = active.remove(at);
        write_line(&finding_line(
            FindingStatus::Cleared,
            was.finding,
            summary,
            &evidence,
            &was.fix,
        ));
        true
    }

    pub fn is_active(&self, finding: &str) -> bool {
        self.active().iter().any(|f| f.finding == finding)
    }

    pub fn list(&self) -> Vec<ActiveFinding> {
        self.active().clone()
    }

    /// The `findings` array of `/_warden/status`.
    pub fn describe(&self) -> serde_json::Value {
        self.active()
            .iter()
            .map(ActiveFinding::describe)
            .collect::<Vec<_>>()
            .into()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingStatus {
    Active,
    Cleared,
}

/// The log line of a finding's change: `{"level":"WARN","message":"<finding>: <summary>",
/// "finding","status","evidence","fix"}`. Written as is, whatever the log format, so Logs
/// Insights finds the same fields in JSON and text log groups.
pub fn finding_line(
    status: FindingStatus,
    finding: &str,
    summary: &str,
    evidence: &serde_json::Value,
    fix: &str,
) -> serde_json::Value {
    let status = match status {
        FindingStatus::Active => "active",
        FindingStatus::Cleared => "cleared",
    };
    serde_json::json!({
        "level": "WARN",
        "message": format!("{finding}: {summary}"),
        "finding": finding,
        "status": status,
        "evidence": evidence,
        "fix": fix,
    })
}

/// One line on stderr in a single write, so concurrent log output cannot split it.
pub fn write_line(line: &serde_json::Value) {
    let mut bytes = line.to_string().into_bytes();
    bytes.push(b'\n');
    let _ = std::io::stderr().lock().write_all(&bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_finding_line_has_the_contract_fields() {
        let evidence = serde_json::json!({"public_timeouts": 3});
        let line = finding_line(
            FindingStatus::Active,
            "no_egress_route",
            "3 connects timed out",
            &evidence,
            "add a NAT route",
        );
        assert_eq!(
            line,
            serde_json::json!({
                "level": "WARN",
                "message": "no_egress_route: 3 connects timed out",
                "finding": "no_egress_route",
                "status": "active",
                "evidence": {"public_timeouts": 3},
                "fix": "add a NAT route",
            })
        );
        let cleared = finding_line(FindingStatus::Cleared, "x", "ok", &evidence, "f");
        assert_eq!(cleared["status"], "cleared");
        assert!(!line.to_string().contains('\n'), "one line");
    }

    struct Counting(AtomicU64);

    impl Evaluate for Counting {
        fn evaluate(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn the_board_changes_once_per_change_and_refresh_runs_a_live_evaluator() {
        let board = Findings::default();
        let finding = || ActiveFinding {
            finding: "dns_throttled",
            summary: "slow".into(),
            since_invocation: 2,
            evidence: serde_json::json!({}),
            fix: "cache".into(),
        };
        assert!(board.raise(finding()));
        assert!(!board.raise(finding()), "already active");
        assert_eq!(board.describe()[0]["since_invocation"], 2);
        assert!(board.clear("dns_throttled", "fast again", serde_json::json!({})));
        assert!(!board.clear("dns_throttled", "fast again", serde_json::json!({})));
        assert!(board.list().is_empty());

        let evaluator = Arc::new(Counting(AtomicU64::new(0)));
        let weak: Weak<Counting> = Arc::downgrade(&evaluator);
        board.set_evaluator(weak);
        board.refresh();
        assert_eq!(evaluator.0.load(Ordering::Relaxed), 1);
        drop(evaluator);
        board.refresh(); // gone: nothing to run, no panic
    }
}
