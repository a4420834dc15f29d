//! Writes everything recorded since the previous flush, to EMF on stdout and/or CloudWatch.
//!
//! Every flush runs on the lifecycle's one event loop (INVOKE, the timer, SHUTDOWN), so two
//! never run at once, and each takes the window out of the recorder whole: an observation
//! lands in exactly one flush. A window that cannot be written is put back for the next.

use crate::config::MetricsSink;
use crate::metrics::cloudwatch::{self, CloudWatchSink};
use crate::metrics::{epoch_ms, EmfWriter, Recorder, Snapshot};

pub(super) struct Flusher {
    recorder: Recorder,
    emf: EmfWriter,
    sink: MetricsSink,
    /// Set for `cloudwatch` and `both` (in builds with the `cloudwatch` feature).
    cloudwatch: Option<CloudWatchSink>,
    /// SnapStart between INIT and the restore: the snapshot may be taken at any moment, with
    /// no credentials to call CloudWatch, so nothing is flushed; the data waits in the
    /// recorder for the first flush after the restore.
    held: bool,
}

impl Flusher {
    pub(super) fn new(
        recorder: Recorder,
        emf: EmfWriter,
        sink: MetricsSink,
        cloudwatch: Option<CloudWatchSink>,
    ) -> Flusher {
        Flusher {
            recorder,
            emf,
            sink,
            cloudwatch,
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
        if self.held || self.sink == MetricsSink::Off {
            return;
        }
        let snapshot = self.recorder.take();
        if snapshot.is_empty() {
            return;
        }
        match (&self.cloudwatch, self.sink) {
            (Some(cw), MetricsSink::CloudWatch) => cw.submit(snapshot),
            // `both`: a window EMF could not take is put back whole and sent with the next.
            (Some(cw), _) => {
                if let Some(snapshot) = self.write_emf(snapshot) {
                    cw.submit(snapshot);
                }
            }
            (None, _) => {
                self.write_emf(snapshot);
            }
        }
    }

    /// At SHUTDOWN or SIGTERM: everything left, the final CloudWatch send bounded by the
    /// deadline (epoch ms, when Lambda gave one).
    pub(super) async fn finish(&mut self, deadline_ms: Option<u64>) {
        self.held = false;
        let Some(cw) = &self.cloudwatch else {
            return self.flush();
        };
        if self.sink == MetricsSink::Off {
            return;
        }
        let mut snapshot = self.recorder.take();
        if self.sink == MetricsSink::Both && !snapshot.is_empty() {
            snapshot = self.write_emf(snapshot).unwrap_or_default();
        }
        let budget = cloudwatch::shutdown_budget(deadline_ms, epoch_ms());
        cw.finish(snapshot, budget).await;
    }

    /// Returns the window when EMF took it; otherwise it is back in the recorder.
    fn write_emf(&self, snapshot: Snapshot) -> Option<Snapshot> {
        let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.emf
                .write(&snapshot, epoch_ms(), &mut std::io::stdout().lock())
        }));
        match written {
            Ok(Ok(())) => return Some(snapshot),
            Ok(Err(err)) => {
                tracing::warn!("writing EMF failed, keeping the metrics for the next flush: {err}");
            }
            Err(_) => {}
        }
        self.recorder.restore(snapshot);
        None
    }
}
