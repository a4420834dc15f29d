//! Warm-up: connections ready before the function needs them, and kept honest across freezes.
//!
//! - During INIT ([`during_init`]): every `EGRESS_WARDEN_WARM` target is resolved (filling the
//!   DNS cache), connected and, for routes, TLS-handshaked, in parallel, within
//!   `EGRESS_WARDEN_WARM_BUDGET_MS`. The proxy parks the connections where the next `CONNECT`
//!   or route request looks first. A slow or failing target never fails INIT: it is logged and
//!   its connect attempts are in the journal; what is still running when the budget is spent
//!   finishes in the background.
//! - After a freeze ([`after_thaw`]): on an INVOKE that follows a long gap, idle connections
//!   are checked and dead ones dropped before a request can get one, and the targets are
//!   topped up again in the background. A target whose top-up failed sits out the next
//!   thaws, twice as many after each consecutive failure ([`Rewarm`]).
//!
//! - After a SnapStart restore ([`after_restore`]): the lifecycle has let every connection
//!   from before the snapshot go; the targets are warmed again within the restore budget.
//!
//! This module drives; the proxy owns the sockets ([`Warmer`]).

use crate::config::Config;
use crate::config::WarmTarget;
use crate::metrics::{Counter, Recorder, Timing};
use crate::proxy::{WarmError, Warmed, Warmer};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// An INVOKE this long after the previous one may follow a freeze: long enough for peers to
/// close idle connections, so they are all checked. Back-to-back invokes (well under a second
/// apart) skip the check; a check costs one non-blocking peek per open connection.
pub const THAW_GAP: Duration = Duration::from_secs(1);

/// How the warm-up of one target went.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetReport {
    /// `host:port` or the route name, as configured.
    pub target: String,
    pub wanted: u32,
    pub ready: u32,
    /// Time until the last of its connections was ready or failed (`warm_ms` records the
    /// time until the last one was ready).
    pub ms: f64,
    /// The first failure, if any connection failed.
    pub error: Option<String>,
}

/// What INIT's warm-up achieved within the budget. Targets still running when the budget
/// was spent are missing here (they log their own line when they finish).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WarmReport {
    pub targets: Vec<TargetReport>,
    pub timed_out: usize,
}

/// What the warm-up works from: the targets, its time budgets and where it counts.
#[derive(Clone)]
pub struct Warmup {
    /// `EGRESS_WARDEN_WARM`.
    pub targets: Arc<[WarmTarget]>,
    /// `EGRESS_WARDEN_WARM_BUDGET_MS`: INIT's share.
    pub init_budget: Duration,
    /// `EGRESS_WARDEN_RESTORE_BUDGET_MS`: after a SnapStart restore.
    pub restore_budget: Duration,
    pub recorder: Recorder,
}

impl Warmup {
    pub fn new(config: &Config, recorder: Recorder) -> Warmup {
        Warmup {
            targets: config.warm.clone().into(),
            init_budget: config.warm_budget,
            restore_budget: config.restore_budget,
            recorder,
        }
    }
}

/// Warms every configured target, returning when all are done or the budget is spent.
pub async fn during_init(plan: &Warmup, warmer: &Warmer) -> WarmReport {
    warm_all(plan, warmer, plan.init_budget, "warm-up done").await
}

/// After a restore from a snapshot (every connection from before it was let go): warms every
/// configured target again, within `EGRESS_WARDEN_RESTORE_BUDGET_MS`.
pub async fn after_restore(plan: &Warmup, warmer: &Warmer) -> WarmReport {
    warm_all(
        plan,
        warmer,
        plan.restore_budget,
        "warm-up after the restore done",
    )
    .await
}

async fn warm_all(plan: &Warmup, warmer: &Warmer, budget: Duration, done: &str) -> WarmReport {
    let targets = &plan.targets[..];
    let mut report = WarmReport::default();
    if targets.is_empty() {
        return report;
    }
    let deadline = tokio::time::Instant::now() + budget;
    let running: Vec<JoinHandle<TargetReport>> = targets
        .iter()
        .map(|target| {
            let (plan, warmer, target) = (plan.clone(), warmer.clone(), target.clone());
            tokio::spawn(async move {
                warm_target(&plan, &warmer, &target, wanted(&target), Phase::Init).await
            })
        })
        .collect();
    for handle in running {
        // A handle dropped on timeout detaches its task: it finishes in the background.
        match tokio::time::timeout_at(deadline, handle).await {
            Ok(Ok(done)) => report.targets.push(done),
            Ok(Err(err)) => tracing::warn!("a warm-up task failed: {err}"),
            Err(_) => report.timed_out += 1,
        }
    }
    let ready: u32 = report.targets.iter().map(|t| t.ready).sum();
    tracing::info!(
        targets = targets.len(),
        connections = ready,
        unfinished = report.timed_out,
        budget_ms = budget.as_millis() as u64,
        "{done}"
    );
    report
}

/// The most thaws a failing target sits out in a row: after 1, 2, 4 … failures it skips 1, 2,
/// 4 … thaws, up to this. Counted in thaws, not time, so the retry rate follows the function's
/// own traffic: a dead target costs at most one connect attempt per 64 thaws once it has
/// failed seven times in a row (about one an hour for a function woken every minute), and a
/// target that comes back is warm again within 64 thaws. A request never waits for this: the
/// proxy connects on demand whatever the warm-up did.
pub const MAX_SKIPPED_THAWS: u32 = 64;

/// Backoff of one target's re-warm after thaws.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Backoff {
    /// Consecutive failed re-warms.
    failures: u32,
    /// Thaws still to sit out.
    skip: u32,
    /// A re-warm is running (a thaw may come before the previous one's connects end).
    busy: bool,
}

impl Backoff {
    /// On a thaw where the target needs connections: whether to re-warm it now. A thaw sat
    /// out counts down the backoff.
    fn try_now(&mut self) -> bool {
        if self.busy {
            return false;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        self.busy = true;
        true
    }

    /// The re-warm ended: with at least one connection ready (success), or none.
    fn done(&mut self, success: bool) {
        self.busy = false;
        if success {
            self.failures = 0;
            self.skip = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            let doublings = (self.failures - 1).min(MAX_SKIPPED_THAWS.trailing_zeros());
            self.skip = 1 << doublings;
        }
    }
}

/// The re-warm state of every warm target, for the extension's life (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Rewarm {
    /// By index in `EGRESS_WARDEN_WARM`.
    targets: Arc<Mutex<Vec<Backoff>>>,
}

impl Rewarm {
    fn lock(&self) -> MutexGuard<'_, Vec<Backoff>> {
        self.targets.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn try_now(&self, index: usize) -> bool {
        let mut targets = self.lock();
        if targets.len() <= index {
            targets.resize(index + 1, Backoff::default());
        }
        targets[index].try_now()
    }

    fn done(&self, index: usize, success: bool) -> u32 {
        let mut targets = self.lock();
        match targets.get_mut(index) {
            Some(b) => {
                b.done(success);
                b.skip
            }
            None => 0,
        }
    }
}

/// Called on every INVOKE with the gap since the previous one. After a long gap: checks
/// every idle connection now (dead ones are dropped and noted), then tops the configured
/// targets up in the background, except those backing off after failed re-warms
/// (`rewarm`). Returns whether it did.
pub fn after_thaw(plan: &Warmup, warmer: &Warmer, rewarm: &Rewarm, gap: Option<Duration>) -> bool {
    if gap.is_none_or(|g| g < THAW_GAP) {
        return false;
    }
    let found = warmer.revalidate();
    if found.dead > 0 {
        tracing::info!(
            checked = found.checked,
            dead = found.dead,
            "after a pause: dropped upstream connections the peer had closed"
        );
    }
    for (index, target) in plan.targets.iter().enumerate() {
        let missing = wanted(target).saturating_sub(open(warmer, target));
        if missing == 0 {
            continue;
        }
        if !rewarm.try_now(index) {
            tracing::debug!(host = %label(target), "warm-up target backing off after failures");
            continue;
        }
        let (plan, warmer, target, rewarm) =
            (plan.clone(), warmer.clone(), target.clone(), rewarm.clone());
        tokio::spawn(async move {
            let report = warm_target(&plan, &warmer, &target, missing, Phase::Thaw).await;
            let skip = rewarm.done(index, report.ready > 0);
            if skip > 0 {
                tracing::debug!(host = %report.target, skip, "warm-up target: next thaws skipped");
            }
        });
    }
    true
}

fn wanted(target: &WarmTarget) -> u32 {
    match target {
        WarmTarget::HostPort { count, .. } | WarmTarget::Route { count, .. } => *count,
    }
}

fn label(target: &WarmTarget) -> String {
    match target {
        WarmTarget::HostPort { host, port, .. } if host.contains(':') => format!("[{host}]:{port}"),
        WarmTarget::HostPort { host, port, .. } => format!("{host}:{port}"),
        WarmTarget::Route { name, .. } => name.clone(),
    }
}

/// Connections a target already has open (parked, pooled or busy).
fn open(warmer: &Warmer, target: &WarmTarget) -> u32 {
    let n = match target {
        WarmTarget::HostPort { host, port, .. } => warmer.parked_host_port(host, *port),
        WarmTarget::Route { name, .. } => warmer.route_connections(name),
    };
    u32::try_from(n).unwrap_or(u32::MAX)
}

async fn warm_one(warmer: &Warmer, target: &WarmTarget) -> Result<Warmed, WarmError> {
    match target {
        WarmTarget::HostPort { host, port, .. } => warmer.warm_host_port(host, *port).await,
        WarmTarget::Route { name, .. } => warmer.warm_route(name).await,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Init,
    /// Topping up after a pause: logged at debug, as it may repeat on every invoke.
    Thaw,
}

/// Opens `n` connections to one target in parallel; counts, times and logs the outcome.
async fn warm_target(
    plan: &Warmup,
    warmer: &Warmer,
    target: &WarmTarget,
    n: u32,
    phase: Phase,
) -> TargetReport {
    let started = Instant::now();
    let attempts: Vec<JoinHandle<(Result<Warmed, WarmError>, Duration)>> = (0..n)
        .map(|_| {
            let (warmer, target) = (warmer.clone(), target.clone());
            tokio::spawn(async move {
                let warmed = warm_one(&warmer, &target).await;
                (warmed, started.elapsed())
            })
        })
        .collect();
    let mut ready = 0;
    let mut error = None;
    let mut addr = None;
    // Until the last connection that got ready was: failures take as long as they take.
    let mut ready_after = Duration::ZERO;
    for attempt in attempts {
        match attempt.await {
            Ok((Ok(warmed), after)) => {
                ready += 1;
                addr.get_or_insert(warmed.addr);
                ready_after = ready_after.max(after);
            }
            Ok((Err(err), _)) => {
                error.get_or_insert(err.0);
            }
            Err(err) => {
                error.get_or_insert(format!("warm-up task failed: {err}"));
            }
        }
    }
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let recorder = &plan.recorder;
    if ready > 0 {
        recorder.count(Counter::WarmConnections, u64::from(ready));
        recorder.observe_ms(Timing::WarmMs, ready_after.as_secs_f64() * 1000.0);
    }
    let report = TargetReport {
        target: label(target),
        wanted: n,
        ready,
        ms,
        error,
    };
    let outcome = match (ready, n) {
        (r, w) if r == w => "ready",
        (0, _) => "failed",
        _ => "partial",
    };
    let addr = addr.map(|a| a.to_string()).unwrap_or_default();
    let error = report.error.as_deref().unwrap_or("");
    if phase == Phase::Thaw {
        tracing::debug!(host = %report.target, outcome, ready, wanted = n, ms = ms.round(), addr, error, "warm-up target (after a pause)");
    } else if ready == n {
        tracing::info!(host = %report.target, outcome, ready, wanted = n, ms = ms.round(), addr, "warm-up target");
    } else {
        tracing::warn!(host = %report.target, outcome, ready, wanted = n, ms = ms.round(), addr, error, "warm-up target");
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which of `thaws` consecutive thaws try the target, each try ending as `outcome` says.
    fn tries(b: &mut Backoff, thaws: u32, mut outcome: impl FnMut(u32) -> bool) -> Vec<u32> {
        let mut tried = Vec::new();
        for thaw in 0..thaws {
            if b.try_now() {
                tried.push(thaw);
                b.done(outcome(thaw));
            }
        }
        tried
    }

    #[test]
    fn a_failing_target_sits_out_1_2_4_and_up_to_64_thaws() {
        let mut b = Backoff::default();
        let tried = tries(&mut b, 200, |_| false);
        assert_eq!(tried, [0, 2, 5, 10, 19, 36, 69, 134, 199]);
        let gaps: Vec<u32> = tried.windows(2).map(|w| w[1] - w[0] - 1).collect();
        assert_eq!(gaps, [1, 2, 4, 8, 16, 32, 64, 64]);
        assert_eq!(b.failures, 9);
    }

    #[test]
    fn a_healthy_target_is_tried_on_every_thaw() {
        let mut b = Backoff::default();
        assert_eq!(tries(&mut b, 5, |_| true), [0, 1, 2, 3, 4]);
        assert_eq!(b, Backoff::default());
    }

    #[test]
    fn success_resets_the_backoff() {
        let mut b = Backoff::default();
        // Fails on thaws 0, 2, 5 and 10; succeeds from thaw 19 on.
        let tried = tries(&mut b, 25, |thaw| thaw >= 19);
        assert_eq!(tried, [0, 2, 5, 10, 19, 20, 21, 22, 23, 24]);
        b.done(false);
        assert_eq!(
            b.skip, 1,
            "one failure after a success: back to a skip of 1"
        );
    }

    #[test]
    fn a_thaw_during_a_running_rewarm_neither_starts_another_nor_counts_down() {
        let mut b = Backoff::default();
        assert!(b.try_now());
        assert!(!b.try_now(), "still running");
        assert!(!b.try_now());
        b.done(false);
        assert_eq!(b.skip, 1);
        assert!(!b.try_now());
        assert!(b.try_now());
    }

    #[test]
    fn targets_back_off_independently() {
        let rewarm = Rewarm::default();
        assert!(rewarm.try_now(1));
        assert!(rewarm.try_now(0));
        assert_eq!(rewarm.done(1, false), 1);
        assert_eq!(rewarm.done(0, true), 0);
        assert!(!rewarm.try_now(1));
        assert!(rewarm.try_now(0));
        assert_eq!(rewarm.done(7, false), 0, "an unknown index is ignored");
    }
}
