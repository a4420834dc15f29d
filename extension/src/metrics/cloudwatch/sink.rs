//! When and what to send, and what to do when it fails.
//!
//! - INVOKE: the window joins `pending`; if no send is in flight and the sink is not cooling
//!   down, a background task sends `pending`, and then whatever gathered meanwhile, until it is
//!   empty. Nothing here waits on the network, so `/event/next` is never delayed. One send at a
//!   time: an unreachable endpoint costs one socket, not one per invoke.
//! - Failure: the parts not delivered are written as EMF (nothing is lost), the failure is
//!   counted (`cloudwatch_put_errors`), the first failure of an outage is reported as the
//!   `aws_endpoint_unreachable` finding with its fix, and the sink cools down (30 s doubling
//!   to 15 min) with windows going straight to EMF meanwhile. No window is retried forever.
//! - A send that spans a freeze (Lambda freezes the environment once the runtime and every
//!   extension wait for the next event, possibly mid-request) fails through no fault of the
//!   endpoint; its window is put back into `pending`, at most [`MAX_PUT_BACKS`] times in a row.
//! - SHUTDOWN: the send in flight and a final send of everything left run side by side within
//!   a budget well inside Lambda's 2 s deadline; whatever did not go out is written as EMF.

use super::batch::Plan;
use super::client::{ClientSettings, CloudWatch, FailureKind, PutError, ATTEMPT_TIMEOUT};
use super::{FINDING, PUT_ERRORS_METRIC, SYMPTOM_METRIC};
use crate::clock::InvocationClock;
use crate::findings::{self as context, FindingStatus};
use crate::metrics::{epoch_ms, EmfWriter, Recorder, Snapshot};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

/// How many times in a row a window interrupted by a freeze is put back before its failure
/// counts: bounds the delay when the endpoint is really unreachable and invokes are short.
pub const MAX_PUT_BACKS: u32 = 2;
const FIRST_COOL_DOWN: Duration = Duration::from_secs(30);
const MAX_COOL_DOWN: Duration = Duration::from_secs(15 * 60);

pub struct SinkSettings {
    pub namespace: String,
    pub function_name: String,
    pub client: ClientSettings,
    /// `both`: stdout already carries every window, so a failed send only adds its count.
    pub emf_has_data: bool,
}

#[derive(Clone)]
pub struct Sink {
    inner: Arc<Inner>,
}

struct Inner {
    settings: SinkSettings,
    recorder: Recorder,
    clock: Arc<InvocationClock>,
    emf: EmfWriter,
    client: OnceCell<CloudWatch>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    pending: Snapshot,
    in_flight: Option<InFlight>,
    consecutive_failures: u32,
    put_backs: u32,
    cool_down_until: Option<Instant>,
    /// The current outage has been reported (a finding is logged once per change).
    reported: Option<FailureKind>,
}

struct InFlight {
    task: JoinHandle<()>,
    /// A copy, so a send cut short at SHUTDOWN loses nothing.
    window: Snapshot,
}

impl Sink {
    pub fn new(
        settings: SinkSettings,
        recorder: Recorder,
        clock: Arc<InvocationClock>,
        emf: EmfWriter,
    ) -> Sink {
        // The SDK client (configuration, root certificates) is built by the first send, in the
        // background of the first INVOKE: building it now would compete for the CPU with INIT
        // (measured: +2 ms p50 to the extension's INIT, docs/PERFORMANCE.md).
        Sink {
            inner: Arc::new(Inner {
                settings,
                recorder,
                clock,
                emf,
                client: OnceCell::new(),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Queues a window and starts a background send if none is running. Never blocks on I/O.
    pub fn submit(&self, window: Snapshot) {
        let inner = &self.inner;
        let mut st = inner.state();
        st.pending.merge_bounded(window);
        if st.in_flight.as_ref().is_some_and(|f| !f.task.is_finished()) {
            return;
        }
        if st.cool_down_until.is_some_and(|t| Instant::now() < t) {
            let window = std::mem::take(&mut st.pending);
            drop(st);
            inner.fall_back(window, &[]);
            return;
        }
        let window = std::mem::take(&mut st.pending);
        if window.is_empty() {
            return;
        }
        let task_inner = inner.clone();
        let task_window = window.clone();
        let task = tokio::spawn(async move { task_inner.send_in_background(task_window).await });
        st.in_flight = Some(InFlight { task, window });
    }

    /// The SHUTDOWN path: everything left goes to CloudWatch within `budget`, or to EMF.
    ///
    /// The send already in flight and the final one run side by side under the same deadline.
    /// A send still unanswered at the deadline is abandoned and its window written as EMF: if
    /// CloudWatch did take it after all, that window is counted twice — the price of never
    /// losing one, and only when CloudWatch answers slower than the whole budget.
    pub async fn finish(&self, window: Snapshot, budget: Duration) {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + budget;
        let (in_flight, last, cooling) = {
            let mut st = inner.state();
            st.pending.merge_bounded(window);
            let cooling = st.cool_down_until.is_some_and(|t| Instant::now() < t);
            (
                st.in_flight.take(),
                std::mem::take(&mut st.pending),
                cooling,
            )
        };
        let started = Instant::now();
        let mut plan = Plan::new(last, &inner.settings.function_name);
        let final_send = async {
            if cooling || plan.requests.is_empty() {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, inner.put_plan(&mut plan)).await {
                Ok(result) => result,
                Err(_) => Err(PutError {
                    kind: FailureKind::Unreachable,
                    message: format!(
                        "no answer within the {} ms SHUTDOWN budget",
                        budget.as_millis()
                    ),
                }),
            }
        };
        let earlier_send = async {
            let mut flight = in_flight?;
            match tokio::time::timeout_at(deadline, &mut flight.task).await {
                Ok(_) => None,
                Err(_) => {
                    flight.task.abort();
                    Some(flight.window)
                }
            }
        };
        let (result, abandoned) = tokio::join!(final_send, earlier_send);
        let abandoned_too = abandoned.is_some();

        // Cooling down, nothing was attempted and all of it is unsent.
        let mut unsent = merged(plan.unsent(), abandoned.unwrap_or_default());
        // Put back by a send that ended (interrupted) while we waited.
        unsent = merged(unsent, std::mem::take(&mut inner.state().pending));
        let error = match result {
            Err(error) => Some(error),
            Ok(()) if abandoned_too => Some(PutError {
                kind: FailureKind::Unreachable,
                message: format!(
                    "the send in flight got no answer within the {} ms SHUTDOWN budget",
                    budget.as_millis()
                ),
            }),
            Ok(()) => None,
        };
        // The recorder has been flushed for the last time: the counts go with the fallback.
        let mut counts = Vec::new();
        if let Some(error) = &error {
            counts.push((PUT_ERRORS_METRIC, 1));
            if inner.report_failure(error, started.elapsed()) {
                counts.push((SYMPTOM_METRIC, 1));
            }
        } else if !cooling {
            tracing::debug!(
                "final PutMetricData done in {} ms",
                started.elapsed().as_millis()
            );
        }
        inner.fall_back(unsent, &counts);
        // Counted by a send that failed while we waited, after the recorder's last flush.
        let late = inner.recorder.take();
        if !late.is_empty() {
            inner.write_emf(late);
        }
    }
}

fn merged(mut a: Snapshot, b: Snapshot) -> Snapshot {
    a.merge_bounded(b);
    a
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic mid-update leaves plain data; losing metrics would be worse.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn client(&self) -> &CloudWatch {
        self.client
            .get_or_init(|| CloudWatch::new(&self.settings.client))
            .await
    }

    /// Sends the plan's requests in order; `plan.sent` tells how far it got.
    async fn put_plan(&self, plan: &mut Plan) -> Result<(), PutError> {
        let client = self.client().await;
        while let Some(request) = plan.requests.get(plan.sent) {
            client.put(&self.settings.namespace, &request.data).await?;
            plan.sent += 1;
        }
        Ok(())
    }

    /// Sends `window`, then whatever gathered in `pending` meanwhile (the environment is
    /// evidently running, and a fresher CloudWatch and a lighter SHUTDOWN are both better
    /// than waiting for the next INVOKE), until `pending` is empty or a send fails.
    async fn send_in_background(self: Arc<Self>, mut window: Snapshot) {
        loop {
            match self.send_once(window).await {
                Some(()) => match self.next_window() {
                    Some(next) => window = next,
                    None => return,
                },
                None => return,
            }
        }
    }

    /// One window; `None` when it failed (and was put back or written as EMF).
    async fn send_once(&self, window: Snapshot) -> Option<()> {
        let started = Instant::now();
        let invocations = self.clock.invocations();
        let mut plan = Plan::new(window, &self.settings.function_name);
        let result = self.put_plan(&mut plan).await;
        let elapsed = started.elapsed();
        let error = match result {
            Ok(()) => {
                self.recovered();
                return Some(());
            }
            Err(error) => error,
        };
        // An INVOKE during the send means the runtime finished the previous one, so the
        // environment may have been frozen mid-request; so does a send that took far longer
        // than its own timeout allows.
        let frozen = self.clock.invocations() != invocations || elapsed > ATTEMPT_TIMEOUT * 2;
        {
            let mut st = self.state();
            if frozen && st.put_backs < MAX_PUT_BACKS {
                st.put_backs += 1;
                let unsent = plan.unsent();
                st.pending.merge_bounded(unsent);
                tracing::debug!(
                    "PutMetricData interrupted (likely a freeze), window kept for the next send: {}",
                    error.message
                );
                return None;
            }
        }
        // Counted into the next window, which goes wherever windows go by then.
        self.recorder.count_named(PUT_ERRORS_METRIC, 1);
        if self.report_failure(&error, elapsed) {
            self.recorder.count_named(SYMPTOM_METRIC, 1);
        }
        self.fall_back(plan.unsent(), &[]);
        None
    }

    /// Takes `pending` for the same background task, keeping the in-flight copy current.
    fn next_window(&self) -> Option<Snapshot> {
        let mut st = self.state();
        if st.pending.is_empty() {
            return None;
        }
        // No in-flight record: SHUTDOWN has taken over (and `pending` with it).
        let next = std::mem::take(&mut st.pending);
        match st.in_flight.as_mut() {
            Some(flight) => {
                flight.window = next.clone();
                Some(next)
            }
            None => {
                st.pending = next;
                None
            }
        }
    }

    fn recovered(&self) {
        let mut st = self.state();
        st.put_backs = 0;
        st.consecutive_failures = 0;
        st.cool_down_until = None;
        if st.reported.take().is_some() {
            drop(st);
            tracing::info!("CloudWatch PutMetricData works again; metrics go to CloudWatch");
        }
    }

    /// Starts the cool-down and reports the outage once per change. Returns whether this
    /// failure raised the `aws_endpoint_unreachable` finding (the caller counts the symptom).
    fn report_failure(&self, error: &PutError, elapsed: Duration) -> bool {
        let mut st = self.state();
        st.put_backs = 0;
        st.consecutive_failures += 1;
        let cool_down = FIRST_COOL_DOWN
            .saturating_mul(1 << (st.consecutive_failures - 1).min(5))
            .min(MAX_COOL_DOWN);
        st.cool_down_until = Some(Instant::now() + cool_down);
        let first_of_its_kind = st.reported != Some(error.kind);
        st.reported = Some(error.kind);
        let failures = st.consecutive_failures;
        drop(st);
        if !first_of_its_kind {
            tracing::debug!(
                "PutMetricData failed again ({failures} in a row): {}",
                error.message
            );
            return false;
        }
        let region = self.settings.client.region.as_deref().unwrap_or("<region>");
        let endpoint = self
            .settings
            .client
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://monitoring.{region}.amazonaws.com"));
        let evidence = serde_json::json!({
            "endpoint": crate::config::redact(&endpoint),
            "error": crate::config::redact(truncate(&error.message, 400)),
            "elapsed_ms": elapsed.as_millis() as u64,
            "consecutive_failures": failures,
            "retry_in_s": cool_down.as_secs(),
            "fallback": "emf",
        });
        match error.kind {
            FailureKind::Unreachable => {
                finding_line(&evidence, &unreachable_fix(region));
                return true;
            }
            FailureKind::Rejected => tracing::error!(
                evidence = %evidence,
                "CloudWatch rejected PutMetricData; metrics go to EMF on stdout meanwhile. \
                 Fix: allow cloudwatch:PutMetricData on the function's role (for namespace {}), \
                 or set EGRESS_WARDEN_METRICS_SINK=emf",
                self.settings.namespace
            ),
            FailureKind::Setup => tracing::error!(
                evidence = %evidence,
                "cannot call CloudWatch (credentials or region missing); metrics go to EMF on \
                 stdout. Fix: run in Lambda (which provides both), or set \
                 EGRESS_WARDEN_METRICS_SINK=emf"
            ),
        }
        false
    }

    /// Writes what could not be delivered as EMF, with `counts` added to it.
    fn fall_back(&self, mut window: Snapshot, counts: &[(&str, u64)]) {
        if self.settings.emf_has_data {
            // `both`: stdout already has every window; only the counts are new.
            window = Snapshot::default();
        }
        for (name, n) in counts {
            *window.named_counts.entry((*name).to_owned()).or_default() += n;
        }
        self.write_emf(window);
    }

    fn write_emf(&self, window: Snapshot) {
        if window.is_empty() {
            return;
        }
        if let Err(err) = self
            .emf
            .write(&window, epoch_ms(), &mut std::io::stdout().lock())
        {
            tracing::warn!("writing the EMF fallback failed, keeping the metrics: {err}");
            self.recorder.restore(window);
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

/// The finding as one JSON line on stderr, in the same shape as the diagnosis's findings
/// (`message`, `finding`, `status`, `evidence`, `fix`), marked with its source.
fn finding_line(evidence: &serde_json::Value, fix: &str) {
    let mut line = context::finding_line(
        FindingStatus::Active,
        FINDING,
        "CloudWatch PutMetricData gets no answer; metrics go to EMF on stdout meanwhile",
        evidence,
        fix,
    );
    line["source"] = "cloudwatch_sink".into();
    context::write_line(&line);
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

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
