//! When and what to send; [`super::outage`] says how a failure is reported.
//!
//! - INVOKE: the window joins `pending`; if no send is in flight and the sink is not cooling
//!   down, a background task sends `pending`, and then whatever gathered meanwhile, until it is
//!   empty. Nothing here waits on the network, so `/event/next` is never delayed. One send at a
//!   time: an unreachable endpoint costs one socket, not one per invoke.
//! - Failure: the parts not delivered go to the flusher's [`Undelivered`] (EMF, so nothing is
//!   lost), the failure is counted (`cloudwatch_put_errors`), an unreachable endpoint is
//!   reported as the `aws_endpoint_unreachable` finding with its fix, and the sink cools down
//!   (30 s doubling to 15 min) with windows handed straight back meanwhile. No window is
//!   retried forever.
//! - A send that spans a freeze (Lambda freezes the environment once the runtime and every
//!   extension wait for the next event, possibly mid-request) fails through no fault of the
//!   endpoint; its window is put back into `pending`, at most [`MAX_PUT_BACKS`] times in a row.
//! - SHUTDOWN: the send in flight and a final send of everything left run side by side within
//!   a budget well inside Lambda's 2 s deadline; whatever did not go out is handed back.

use super::batch::Plan;
use super::client::{CloudWatch, FailureKind, PutError, ATTEMPT_TIMEOUT};
use super::outage::{Backoff, Reporter};
use super::{Settings, Undelivered, PUT_ERRORS_METRIC, SYMPTOM_METRIC};
use crate::clock::InvocationClock;
use crate::findings::Findings;
use crate::metrics::{Recorder, Snapshot};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

/// How many times in a row a window interrupted by a freeze is put back before its failure
/// counts: bounds the delay when the endpoint is really unreachable and invokes are short.
pub(super) const MAX_PUT_BACKS: u32 = 2;

#[derive(Clone)]
pub(super) struct Sink {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    recorder: Recorder,
    clock: Arc<InvocationClock>,
    reporter: Reporter,
    undelivered: Undelivered,
    client: OnceCell<CloudWatch>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    pending: Snapshot,
    in_flight: Option<InFlight>,
    put_backs: u32,
    backoff: Backoff,
}

struct InFlight {
    task: JoinHandle<()>,
    /// A copy, so a send cut short at SHUTDOWN loses nothing.
    window: Snapshot,
}

impl Sink {
    pub(super) fn new(
        settings: Settings,
        recorder: Recorder,
        clock: Arc<InvocationClock>,
        findings: Arc<Findings>,
        undelivered: Undelivered,
    ) -> Sink {
        // The SDK client (configuration, root certificates) is built by the first send, in the
        // background of the first INVOKE: building it now would compete for the CPU with INIT
        // (measured: +2 ms p50 to the extension's INIT, docs/PERFORMANCE.md).
        Sink {
            inner: Arc::new(Inner {
                reporter: Reporter::new(&settings, findings),
                settings,
                recorder,
                clock,
                undelivered,
                client: OnceCell::new(),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Queues a window and starts a background send if none is running. Never blocks on I/O.
    pub(super) fn submit(&self, window: Snapshot) {
        let inner = &self.inner;
        let mut st = inner.state();
        st.pending.merge_bounded(window);
        if st.in_flight.as_ref().is_some_and(|f| !f.task.is_finished()) {
            return;
        }
        if st.backoff.cooling() {
            let window = std::mem::take(&mut st.pending);
            drop(st);
            inner.hand_back(window);
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

    /// The SHUTDOWN path: everything left goes to CloudWatch within `budget`, or is handed
    /// back. The failure counts go into the recorder, which the flusher takes once more
    /// after this returns.
    ///
    /// The send already in flight and the final one run side by side under the same deadline.
    /// A send still unanswered at the deadline is abandoned and its window handed back: if
    /// CloudWatch did take it after all, that window is counted twice — the price of never
    /// losing one, and only when CloudWatch answers slower than the whole budget.
    pub(super) async fn finish(&self, window: Snapshot, budget: Duration) {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + budget;
        let (in_flight, last, cooling) = {
            let mut st = inner.state();
            st.pending.merge_bounded(window);
            let cooling = st.backoff.cooling();
            (
                st.in_flight.take(),
                std::mem::take(&mut st.pending),
                cooling,
            )
        };
        let started = Instant::now();
        let mut plan = Plan::new(last, inner.settings.function());
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
        match &error {
            Some(error) => inner.failed(error, started.elapsed()),
            None if !cooling => tracing::debug!(
                "final PutMetricData done in {} ms",
                started.elapsed().as_millis()
            ),
            None => {}
        }
        inner.hand_back(unsent);
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
            .get_or_init(|| CloudWatch::new(&self.settings))
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

    /// One window; `None` when it failed (and was put back or handed back).
    async fn send_once(&self, window: Snapshot) -> Option<()> {
        let started = Instant::now();
        let invocations = self.clock.invocations();
        let mut plan = Plan::new(window, self.settings.function());
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
        self.failed(&error, elapsed);
        self.hand_back(plan.unsent());
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
        let reported = {
            let mut st = self.state();
            st.put_backs = 0;
            st.backoff.recovered()
        };
        if let Some(kind) = reported {
            self.reporter.recovered(kind);
        }
    }

    /// Starts the cool-down, reports the failure and counts it into the recorder: into the
    /// next window, or, at SHUTDOWN, into the flusher's last take.
    fn failed(&self, error: &PutError, elapsed: Duration) {
        let failure = {
            let mut st = self.state();
            st.put_backs = 0;
            st.backoff.failed(error.kind)
        };
        self.recorder.count_named(PUT_ERRORS_METRIC, 1);
        let invocation = self.clock.invocations();
        if self.reporter.failed(error, failure, elapsed, invocation) {
            self.recorder.count_named(SYMPTOM_METRIC, 1);
        }
    }

    /// What CloudWatch did not take goes back to the flusher's choice of fallback.
    fn hand_back(&self, window: Snapshot) {
        if !window.is_empty() {
            (self.undelivered)(window);
        }
    }
}
