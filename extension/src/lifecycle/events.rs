//! The event loop after INIT: Lambda's events (INVOKE, SHUTDOWN), the Telemetry API's
//! platform records, the flush timer and SIGTERM, handled one at a time on one task.
//!
//! - INVOKE (on-demand, provisioned concurrency, SnapStart): count it, check connections after
//!   a pause, refresh the findings, flush.
//! - The timer (`EGRESS_WARDEN_FLUSH_INTERVAL_S`): refresh and flush; where no INVOKE comes
//!   (Managed Instances) it also checks idle connections and tops the warm targets up.
//! - Telemetry: invocations where there are no INVOKE events, function timeouts, restores.
//! - A restore, however it is noticed ([`super::restore`]): every connection from before it is
//!   let go, the DNS cache ages by the time the monotonic clock missed, the warm-up runs again.
//! - SHUTDOWN or SIGTERM: stop accepting and drain the requests in flight, refresh, the final
//!   flush, exit.
//!
//! `/event/next` stays one pending request across the loop's turns (a dropped request could
//! lose the event Lambda was about to hand it), and is called again only after an event was
//! dealt with: that call tells Lambda the extension is done with the invoke.

use super::extensions_api::{Event, ExtensionsApi};
use super::flusher::Flusher;
use super::logging;
use super::restore::{Restore, RestoreWatch};
use crate::clock::{epoch_ms, InvocationClock};
use crate::diagnose::Diagnosis;
use crate::dns::DnsCache;
use crate::metrics::{self, Counter, Gauge, Recorder};
use crate::proxy::Warmer;
use crate::shutdown::ShutdownTrigger;
use crate::telemetry::{Delivery, PlatformEvent};
use crate::warm;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// The longest the drain at SHUTDOWN may take: Lambda gives the extensions 2 s in all, and the
/// final CloudWatch send and the exit come after it.
const DRAIN_MAX: Duration = Duration::from_millis(800);
/// Kept after the drain before the SHUTDOWN deadline: the final send's budget and the exit.
const AFTER_DRAIN: Duration = Duration::from_millis(800);
const DRAIN_POLL: Duration = Duration::from_millis(5);

/// The drain's budget: [`DRAIN_MAX`], less whatever would eat into [`AFTER_DRAIN`].
fn drain_budget(deadline_ms: Option<u64>, now_ms: u64) -> Duration {
    match deadline_ms {
        None => DRAIN_MAX,
        Some(deadline) => Duration::from_millis(deadline.saturating_sub(now_ms))
            .saturating_sub(AFTER_DRAIN)
            .min(DRAIN_MAX),
    }
}

/// The flush interval where no INVOKE events come and none is configured.
const DEFAULT_TIMER_FLUSH: Duration = Duration::from_secs(30);

/// What the loop acts on besides the Extensions API.
/// What the loop reads and writes besides the Extensions API.
pub(super) struct Parts {
    pub clock: Arc<InvocationClock>,
    pub recorder: Recorder,
    /// Run before each flush, so the flush carries the findings' counts.
    pub diagnosis: Arc<Diagnosis>,
    /// Tells the listeners to stop accepting and drain.
    pub shutdown: ShutdownTrigger,
    pub warmup: warm::Warmup,
    /// `EGRESS_WARDEN_FLUSH_INTERVAL_S`.
    pub flush_interval: Option<Duration>,
    /// `EGRESS_WARDEN_POOL_IDLE_S`: unseen time past it retires every connection.
    pub pool_idle: Duration,
}

pub(super) struct Inputs {
    /// Delivered telemetry batches (none when the subscription failed).
    pub telemetry: Option<mpsc::UnboundedReceiver<Delivery>>,
    pub warmer: Option<Warmer>,
    pub dns: Option<Arc<DnsCache>>,
    /// Registered for INVOKE: invocations come from events, not from telemetry.
    pub invoke_events: bool,
}

pub(super) struct EventLoop<'a> {
    api: &'a ExtensionsApi,
    parts: Parts,
    flusher: Flusher,
    inputs: Inputs,
    restore: RestoreWatch,
    rewarm: warm::Rewarm,
}

impl<'a> EventLoop<'a> {
    pub(super) fn new(
        api: &'a ExtensionsApi,
        parts: Parts,
        mut flusher: Flusher,
        inputs: Inputs,
        restore: RestoreWatch,
    ) -> Self {
        if restore.awaiting_restore() {
            flusher.hold();
        }
        EventLoop {
            api,
            parts,
            flusher,
            inputs,
            restore,
            rewarm: warm::Rewarm::default(),
        }
    }

    /// Runs until SHUTDOWN or SIGTERM.
    pub(super) async fn run(mut self) -> ExitCode {
        let mut sigterm = match signal(SignalKind::terminate()) {
            Ok(s) => Some(s),
            Err(err) => {
                tracing::warn!("cannot watch SIGTERM: {err}");
                None
            }
        };
        let interval = match self.parts.flush_interval {
            Some(interval) => interval,
            None if self.inputs.invoke_events => Duration::ZERO,
            // Nothing else would flush before SHUTDOWN.
            None => DEFAULT_TIMER_FLUSH,
        };
        let mut timer = (!interval.is_zero()).then(|| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let api = self.api;
        let mut next = Box::pin(api.next_event());
        loop {
            tokio::select! {
                event = &mut next => {
                    match event {
                        Event::Invoke { deadline_ms, request_id } => {
                            self.on_invoke(deadline_ms, &request_id);
                        }
                        Event::Shutdown { deadline_ms, reason } => {
                            self.finish(Some(deadline_ms), "SHUTDOWN", &reason).await;
                            return ExitCode::SUCCESS;
                        }
                    }
                    // Only now: this call acknowledges the invoke.
                    next = Box::pin(api.next_event());
                }
                Some(delivery) = recv(&mut self.inputs.telemetry) => self.on_telemetry(delivery),
                _ = tick(&mut timer) => self.on_tick(interval),
                Some(()) = recv_signal(&mut sigterm) => {
                    self.finish(None, "SIGTERM", "signal").await;
                    return ExitCode::SUCCESS;
                }
            }
        }
    }

    fn on_invoke(&mut self, deadline_ms: u64, request_id: &str) {
        let restore = self.restore.event();
        let gap = self.parts.clock.begin_invocation(deadline_ms);
        self.parts
            .recorder
            .begin_invocation(self.parts.clock.invocations());
        match (restore, &self.inputs.warmer) {
            // The restore handling checks and warms instead.
            (Some(restore), _) => self.restored(restore, None),
            (None, Some(warmer)) => {
                warm::after_thaw(&self.parts.warmup, warmer, &self.rewarm, gap);
            }
            (None, None) => {}
        }
        self.parts.recorder.incr(Counter::Invocations);
        tracing::debug!(%request_id, "INVOKE");
        self.parts.diagnosis.run();
        self.flusher.flush();
    }

    fn on_tick(&mut self, interval: Duration) {
        match (self.restore.tick(), &self.inputs.warmer) {
            (Some(restore), _) => self.restored(restore, None),
            // No INVOKE comes to check idle connections: the timer does it.
            (None, Some(warmer)) if !self.inputs.invoke_events => {
                warm::after_thaw(&self.parts.warmup, warmer, &self.rewarm, Some(interval));
            }
            _ => {}
        }
        self.parts.diagnosis.run();
        self.flusher.flush();
    }

    fn on_telemetry(&mut self, delivery: Delivery) {
        let Delivery { batch, done } = delivery;
        let recorder = self.parts.recorder.clone();
        if batch.ignored > 0 {
            recorder.count(Counter::TelemetryRecordsIgnored, batch.ignored as u64);
        }
        let mut done = Some(done);
        for event in batch.events {
            match event {
                PlatformEvent::Start { request_id } if !self.inputs.invoke_events => {
                    self.parts.clock.note_invocation();
                    recorder.begin_invocation(self.parts.clock.invocations());
                    recorder.incr(Counter::Invocations);
                    tracing::debug!(%request_id, "invocation started");
                }
                PlatformEvent::RuntimeDone { request_id, status } if status == "timeout" => {
                    recorder.incr(Counter::FunctionTimeouts);
                    // Evidence for the findings whose connects got no answer.
                    recorder.note(metrics::Event::FunctionTimeout);
                    // The proxy's own lines before this one say which calls were still open.
                    tracing::warn!(
                        %request_id,
                        open_client_connections = recorder.gauge_value(Gauge::ActiveConnections),
                        "the function timed out"
                    );
                }
                PlatformEvent::RestoreStart => match self.restore.restore_record() {
                    Some(restore) => self.restored(restore, done.take()),
                    None => tracing::debug!("restore record after the restore was handled"),
                },
                PlatformEvent::InitStart { .. } => {
                    tracing::debug!("platform.initStart after INIT (the snapshot's own), ignored");
                }
                other => tracing::trace!(?other, "platform record"),
            }
        }
    }

    /// After a restore from a snapshot: lets every connection from before it go, ages the
    /// DNS cache, and warms the targets again in the background; `done` is answered when that
    /// warm-up ends. After a clock jump alone (time passed that `Instant` did not see, no
    /// snapshot): the DNS cache ages, and connections are let go only if the unseen time
    /// alone is past the pool's idle limit (they would have been closed by now); otherwise
    /// they are checked as after any pause.
    fn restored(&mut self, restore: Restore, done: Option<tokio::sync::oneshot::Sender<()>>) {
        self.flusher.release();
        if let Some(dns) = &self.inputs.dns {
            dns.age_by(restore.unseen);
        }
        let retire = restore.from_snapshot || restore.unseen >= self.parts.pool_idle;
        if restore.from_snapshot {
            self.parts.recorder.incr(Counter::Restores);
        }
        let Some(warmer) = self.inputs.warmer.clone() else {
            return;
        };
        if !retire {
            tracing::info!(
                cause = restore.cause.as_str(),
                unseen_ms = restore.unseen.as_millis() as u64,
                "time passed unseen by the monotonic clock: checking every connection"
            );
            warm::after_thaw(
                &self.parts.warmup,
                &warmer,
                &self.rewarm,
                Some(restore.unseen),
            );
            return;
        }
        let retired = warmer.retire_all();
        tracing::info!(
            cause = restore.cause.as_str(),
            unseen_ms = restore.unseen.as_millis() as u64,
            retired_connections = retired,
            "restored: connections from before are let go and the warm-up runs again"
        );
        let warmup = self.parts.warmup.clone();
        tokio::spawn(async move {
            warm::after_restore(&warmup, &warmer).await;
            drop(done);
        });
    }

    /// SHUTDOWN or SIGTERM: drain, then record and flush everything. The listeners stop
    /// accepting and every client connection finishes the request under way (answered with
    /// `Connection: close`) within [`drain_budget`]; only then is the final window taken, so
    /// a request is either answered and counted, or refused.
    async fn finish(&mut self, deadline_ms: Option<u64>, why: &str, reason: &str) {
        self.parts.shutdown.trigger();
        let drain_started = tokio::time::Instant::now();
        let until = drain_started + drain_budget(deadline_ms, epoch_ms());
        let recorder = &self.parts.recorder;
        while recorder.gauge_value(Gauge::ActiveConnections) > 0
            && tokio::time::Instant::now() < until
        {
            tokio::time::sleep(DRAIN_POLL).await;
        }
        let left = deadline_ms.map(|d| d.saturating_sub(epoch_ms()));
        tracing::info!(
            %reason,
            drained_ms = drain_started.elapsed().as_millis() as u64,
            still_open = recorder.gauge_value(Gauge::ActiveConnections),
            ms_before_deadline = left,
            "{why}: flushing and exiting"
        );
        logging::flush_all();
        // Records delivered before SHUTDOWN (the last invocations' starts) count in the final
        // flush.
        if let Some(rx) = self.inputs.telemetry.as_mut() {
            let mut delivered = Vec::new();
            while let Ok(delivery) = rx.try_recv() {
                delivered.push(delivery);
            }
            for delivery in delivered {
                self.on_telemetry(delivery);
            }
        }
        self.parts.diagnosis.run();
        self.flusher.finish(deadline_ms).await;
    }
}

async fn recv<T>(rx: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn recv_signal(sigterm: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match sigterm {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// The kill switch: acknowledge every event and do nothing else.
pub(super) async fn idle(api: &ExtensionsApi) -> ExitCode {
    loop {
        if let Event::Shutdown { .. } = api.next_event().await {
            return ExitCode::SUCCESS;
        }
    }
}
