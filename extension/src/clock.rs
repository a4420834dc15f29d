//! The current invocation as the Extensions API announced it: how many have begun, when the
//! latest one did, and its deadline. Written only by the lifecycle; read everywhere.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, the clock of EMF timestamps and of Lambda's deadlines;
/// 0 if the system clock is set before 1970.
pub fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
        Some(Duration::from_millis(deadline.saturating_sub(epoch_ms())))
    }
}
