//! A panic in any task must not take the process down silently: tokio isolates task panics
//! (the release profile keeps `panic = "unwind"` for this), and this hook logs and counts
//! each one so it shows up in the logs and as `task_panics` in EMF.

use crate::metrics::{Counter, Recorder};

pub(super) fn install_hook(recorder: Recorder) {
    std::panic::set_hook(Box::new(move |info| {
        recorder.incr(Counter::TaskPanics);
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        tracing::error!(%location, "panic caught, the extension keeps serving: {message}");
    }));
}
