//! Writes everything recorded since the previous flush, and decides where it goes: EMF on
//! stdout, CloudWatch, or both (`EGRESS_WARDEN_METRICS_SINK`). The CloudWatch sink only sends;
//! what it could not send comes back here, and this decides what becomes of it.
//!
//! Every flush runs on the lifecycle's one event loop (INVOKE, the timer, SHUTDOWN), so two
//! never run at once, and each takes the window out of the recorder whole: an observation
//! lands in exactly one flush. A window that cannot be written is put back for the next.

use crate::clock::{epoch_ms, InvocationClock};
use crate::config::{Config, MetricsSink};
use crate::findings::Findings;
use crate::metrics::cloudwatch::{self, CloudWatchSink, Undelivered};
use crate::metrics::{EmfWriter, Recorder, Snapshot};
use std::sync::Arc;

/// Where windows go.
enum Route {
    Off,
    Emf,
    /// EMF only for what CloudWatch did not take.
    CloudWatch(CloudWatchSink),
    /// Every window to EMF first, then to CloudWatch; what CloudWatch did not take is already
    /// on stdout.
    Both(CloudWatchSink),
}

pub(super) struct Flusher {
    recorder: Recorder,
    stdout: Stdout,
    route: Route,
    /// SnapStart between INIT and the restore: the snapshot may be taken at any moment, with
    /// no credentials to call CloudWatch, so nothing is flushed; the data waits in the
    /// recorder for the first flush after the restore.
    held: bool,
}

impl Flusher {
    /// The flusher with the writers `config` asks for; the key metrics also per function
    /// version unless `EGRESS_WARDEN_VERSION_DIMENSION=false`.
    pub(super) fn configured(
        config: &Config,
        recorder: &Recorder,
        clock: &Arc<InvocationClock>,
        findings: &Arc<Findings>,
    ) -> Flusher {
        let function_version =
            (config.lambda.function_version.clone()).filter(|_| config.metrics.version_dimension);
        let emf = EmfWriter::new(&*config.metrics.namespace, &*config.lambda.function_name)
            .with_version(function_version.clone());
        let cloudwatch = cloudwatch::Settings {
            namespace: config.metrics.namespace.clone(),
            function_name: config.lambda.function_name.clone(),
            function_version,
            region: config.lambda.region.clone(),
            endpoint: config.metrics.cloudwatch_endpoint.clone(),
        };
        Flusher::new(recorder.clone(), emf, config.metrics.sink, |undelivered| {
            CloudWatchSink::start(
                cloudwatch,
                recorder.clone(),
                clock.clone(),
                findings.clone(),
                undelivered,
            )
        })
    }

    /// `start_cloudwatch` is called for `cloudwatch` and `both` with what should become of
    /// the windows the sink could not send; `None` back (a build without the sink) means EMF.
    pub(super) fn new(
        recorder: Recorder,
        emf: EmfWriter,
        sink: MetricsSink,
        start_cloudwatch: impl FnOnce(Undelivered) -> Option<CloudWatchSink>,
    ) -> Flusher {
        let stdout = Stdout {
            emf,
            recorder: recorder.clone(),
        };
        let route = match sink {
            MetricsSink::Off => Route::Off,
            MetricsSink::Emf => Route::Emf,
            MetricsSink::Both => match start_cloudwatch(Arc::new(|_already_on_stdout| {})) {
                Some(cw) => {
                    tracing::info!("metrics go to CloudWatch and to EMF on stdout");
                    Route::Both(cw)
                }
                None => Route::Emf,
            },
            MetricsSink::CloudWatch => {
                let fallback = stdout.clone();
                let undelivered: Undelivered = Arc::new(move |window| {
                    fallback.write(window);
                });
                match start_cloudwatch(undelivered) {
                    Some(cw) => {
                        tracing::info!(
                            "metrics go to CloudWatch (to EMF on stdout when it cannot be reached)"
                        );
                        Route::CloudWatch(cw)
                    }
                    None => Route::Emf,
                }
            }
        };
        Flusher {
            recorder,
            stdout,
            route,
            held: false,
        }
    }

    /// Holds every flush until [`Flusher::release`].
    pub(super) fn hold(&mut self) {
        self.held = true;
    }

    pub(super) fn release(&mut self) {
        self.held = false;
    }

    /// On INVOKE and on the timer. The CloudWatch send runs in the background: this returns
    /// without waiting on the network, so `/event/next` is never delayed.
    pub(super) fn flush(&self) {
        if self.held || matches!(self.route, Route::Off) {
            return;
        }
        let window = self.recorder.take();
        if window.is_empty() {
            return;
        }
        match &self.route {
            Route::Off => {}
            Route::Emf => {
                self.stdout.write(window);
            }
            Route::CloudWatch(cw) => cw.submit(window),
            // A window EMF could not take is put back whole and sent with the next.
            Route::Both(cw) => {
                if let Some(window) = self.stdout.write(window) {
                    cw.submit(window);
                }
            }
        }
    }

    /// At SHUTDOWN or SIGTERM: everything left, the final CloudWatch send bounded by the
    /// deadline (epoch ms, when Lambda gave one).
    pub(super) async fn finish(&mut self, deadline_ms: Option<u64>) {
        self.held = false;
        let (cw, window) = match &self.route {
            Route::Off => return,
            Route::Emf => return self.flush(),
            Route::CloudWatch(cw) => (cw, self.recorder.take()),
            // A window EMF could not take is back in the recorder, for the last take below.
            Route::Both(cw) => (
                cw,
                self.stdout.write(self.recorder.take()).unwrap_or_default(),
            ),
        };
        let budget = cloudwatch::shutdown_budget(deadline_ms, epoch_ms());
        cw.finish(window, budget).await;
        // The sink's failure counts, and whatever a send that failed meanwhile counted, came
        // after the take above; CloudWatch has had its chance, so they go to EMF.
        self.stdout.write(self.recorder.take());
    }
}

/// EMF on stdout; a window it cannot write goes back into the recorder for the next flush.
#[derive(Clone)]
struct Stdout {
    emf: EmfWriter,
    recorder: Recorder,
}

impl Stdout {
    /// Returns the window when it was written.
    fn write(&self, window: Snapshot) -> Option<Snapshot> {
        let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.emf
                .write(&window, epoch_ms(), &mut std::io::stdout().lock())
        }));
        match written {
            Ok(Ok(())) => return Some(window),
            Ok(Err(err)) => {
                tracing::warn!("writing EMF failed, keeping the metrics for the next flush: {err}");
            }
            // The panic hook has logged and counted it.
            Err(_) => {}
        }
        self.recorder.restore(window);
        None
    }
}
