//! Client connection slots under `EGRESS_WARDEN_MAX_CONNECTIONS`. At the cap, the connection
//! that has waited longest for its next request (or never sent one) is closed to admit the
//! newcomer, so a leaky pool of idle clients cannot lock the function out of its own proxy,
//! and no request under way is cut. Only when every connection is busy or tunnelling does a
//! new client get 503.
//!
//! When a burst of connections has passed (the count falls to a quarter of its peak), the
//! memory they used is handed back to the system: glibc keeps freed memory in its arenas, and
//! a function's memory is what it pays for (docs/soak.md has the figures).

use super::limits::ConnPhase;
use crate::metrics::{Counter, Gauge, Recorder};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

type Live = Arc<Mutex<HashMap<u64, Arc<ConnPhase>>>>;

/// Below this peak a burst is too small to leave much behind.
const TRIM_MIN_PEAK: usize = 128;

/// The most connections open at once since memory was last handed back.
#[derive(Default)]
struct Peak {
    high: AtomicUsize,
    trimming: AtomicBool,
}

impl Peak {
    fn saw(&self, active: usize) {
        self.high.fetch_max(active, Ordering::Relaxed);
    }

    /// After a close: once the count is a quarter of a large peak, hands freed memory back
    /// (off the async threads) and starts a new peak from here.
    fn after_close(self: &Arc<Self>, active: usize) {
        let high = self.high.load(Ordering::Relaxed);
        if high < TRIM_MIN_PEAK || active > high / 4 {
            return;
        }
        if self.trimming.swap(true, Ordering::AcqRel) {
            return;
        }
        self.high.store(active, Ordering::Relaxed);
        let peak = self.clone();
        let trim = move || {
            give_back_memory();
            peak.trimming.store(false, Ordering::Release);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(trim)),
            Err(_) => trim(),
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn give_back_memory() {
    // SAFETY: malloc_trim only walks glibc's own arenas and madvises their free pages.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn give_back_memory() {}

pub(crate) struct Slots {
    max: usize,
    active: Arc<AtomicUsize>,
    live: Live,
    next_id: AtomicU64,
    recorder: Recorder,
    peak: Arc<Peak>,
}

/// A client connection's place; released on drop (when both the HTTP connection and any
/// tunnel it became are gone).
pub(crate) struct ConnSlot {
    id: u64,
    live: Live,
    active: Arc<AtomicUsize>,
    recorder: Recorder,
    peak: Arc<Peak>,
    pub phase: Arc<ConnPhase>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        lock(&self.live).remove(&self.id);
        let before = self.active.fetch_sub(1, Ordering::Relaxed);
        self.recorder.gauge_add(Gauge::ActiveConnections, -1);
        self.peak.after_close(before.saturating_sub(1));
    }
}

fn lock(live: &Live) -> MutexGuard<'_, HashMap<u64, Arc<ConnPhase>>> {
    live.lock().unwrap_or_else(|p| p.into_inner())
}

impl Slots {
    pub(crate) fn new(max: usize, recorder: Recorder) -> Slots {
        Slots {
            max: max.max(1),
            active: Arc::new(AtomicUsize::new(0)),
            live: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(0),
            recorder,
            peak: Arc::default(),
        }
    }

    /// A slot for a new client connection, or None when at the cap with no idle connection
    /// to close. The closed one keeps its slot until its task has ended, so the count may
    /// pass the cap by the connections being closed.
    pub(crate) fn admit(&self) -> Option<Arc<ConnSlot>> {
        let previous = self.active.fetch_add(1, Ordering::Relaxed);
        if previous >= self.max && !self.close_longest_idle() {
            self.active.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        self.recorder.gauge_add(Gauge::ActiveConnections, 1);
        self.peak.saw(previous + 1);
        let phase = Arc::new(ConnPhase::default());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.live).insert(id, phase.clone());
        Some(Arc::new(ConnSlot {
            id,
            live: self.live.clone(),
            active: self.active.clone(),
            recorder: self.recorder.clone(),
            peak: self.peak.clone(),
            phase,
        }))
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    fn close_longest_idle(&self) -> bool {
        let live = lock(&self.live);
        // A candidate that starts a request between the look and the close is skipped; each
        // turn looks at fewer idle connections, so this ends.
        for _ in 0..live.len() {
            let Some(candidate) = live
                .values()
                .filter_map(|phase| Some((phase.idle_since()?, phase)))
                .min_by_key(|(since, _)| *since)
            else {
                return false;
            };
            if candidate.1.close_if_idle() {
                self.recorder.incr(Counter::IdleClientsClosed);
                return true;
            }
        }
        false
    }
}
