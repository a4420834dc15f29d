//! The board of findings that currently hold. Whoever names a symptom (the diagnosis, the
//! CloudWatch sink for its own endpoint) raises and clears it here; the board logs every
//! change (one JSON line on stderr) and the status page and the EMF flush read it.

use std::io::Write;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

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

/// The findings that currently hold. The board logs every change (one JSON line on stderr),
/// so a finding is logged once when it appears and once when it clears, whoever reports it.
pub struct Findings {
    active: Mutex<Vec<ActiveFinding>>,
    /// Asks whoever keeps the board current (the diagnosis task) to catch up; each request
    /// carries the sender its answer goes to.
    refresh: mpsc::UnboundedSender<oneshot::Sender<()>>,
    requests: Mutex<Option<RefreshRequests>>,
}

/// The receiving end of [`Findings::refresh`]: one request per caller, answered once the
/// board reflects everything observed before the request.
pub type RefreshRequests = mpsc::UnboundedReceiver<oneshot::Sender<()>>;

/// How long a reader waits for the board to catch up before reading it as it stands.
const REFRESH_WAIT: Duration = Duration::from_secs(1);

impl Default for Findings {
    fn default() -> Self {
        let (refresh, requests) = mpsc::unbounded_channel();
        Findings {
            active: Mutex::default(),
            refresh,
            requests: Mutex::new(Some(requests)),
        }
    }
}

impl Findings {
    fn active(&self) -> MutexGuard<'_, Vec<ActiveFinding>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The refresh requests, for the one task that keeps the board current; None once taken.
    pub fn take_refresh_requests(&self) -> Option<RefreshRequests> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Waits (up to a second) until the board reflects everything observed so far. Without
    /// a task keeping it current, returns at once.
    pub async fn refresh(&self) {
        let kept = self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none();
        if !kept {
            return;
        }
        let (done, caught_up) = oneshot::channel();
        if self.refresh.send(done).is_ok() {
            let _ = tokio::time::timeout(REFRESH_WAIT, caught_up).await;
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

    #[test]
    fn the_board_changes_once_per_change() {
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
    }
}

#[cfg(test)]
mod refresh_tests {
    use super::*;

    #[tokio::test]
    async fn refresh_waits_for_the_keeper_and_returns_without_one() {
        let board = std::sync::Arc::new(Findings::default());
        let started = std::time::Instant::now();
        board.refresh().await; // nobody took the requests: nothing to wait for
        assert!(started.elapsed() < REFRESH_WAIT / 2);
        let mut requests = board.take_refresh_requests().unwrap();
        assert!(board.take_refresh_requests().is_none(), "one keeper");
        let keeper = tokio::spawn(async move {
            let done = requests.recv().await.unwrap();
            let _ = done.send(());
            requests
        });
        board.refresh().await;
        let requests = keeper.await.unwrap();
        drop(requests); // no keeper any more: refresh must not wait
        let started = std::time::Instant::now();
        board.refresh().await;
        assert!(started.elapsed() < REFRESH_WAIT / 2);
    }
}
