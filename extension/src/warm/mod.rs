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
//!   topped up again in the background.
//!
//! This module drives; the proxy owns the sockets ([`Warmer`]).

use crate::config::WarmTarget;
use crate::context::Context;
use crate::metrics::{Counter, Timing};
use crate::proxy::{WarmError, Warmed, Warmer};
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

/// Warms every configured target, returning when all are done or the budget is spent.
pub async fn during_init(ctx: &Context, warmer: &Warmer) -> WarmReport {
    let targets = &ctx.config.warm;
    let mut report = WarmReport::default();
    if targets.is_empty() {
        return report;
    }
    let budget = ctx.config.warm_budget;
    let deadline = tokio::time::Instant::now() + budget;
    let running: Vec<JoinHandle<TargetReport>> = targets
        .iter()
        .map(|target| {
            let (ctx, warmer, target) = (ctx.clone(), warmer.clone(), target.clone());
            tokio::spawn(async move {
                warm_target(&ctx, &warmer, &target, wanted(&target), Phase::Init).await
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
        "warm-up done"
    );
    report
}

/// Called on every INVOKE with the gap since the previous one. After a long gap: checks
/// every idle connection now (dead ones are dropped and noted), then tops the configured
/// targets up in the background. Returns whether it did.
pub fn after_thaw(ctx: &Context, warmer: &Warmer, gap: Option<Duration>) -> bool {
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
    for target in &ctx.config.warm {
        let missing = wanted(target).saturating_sub(open(warmer, target));
        if missing == 0 {
            continue;
        }
        let (ctx, warmer, target) = (ctx.clone(), warmer.clone(), target.clone());
        tokio::spawn(
            async move { warm_target(&ctx, &warmer, &target, missing, Phase::Thaw).await },
        );
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
    ctx: &Context,
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
    let recorder = &ctx.recorder;
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
