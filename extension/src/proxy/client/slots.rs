//! Client connection slots under `EGRESS_WARDEN_MAX_CONNECTIONS`. At the cap, the connection
//! that has waited longest for its next request (or never sent one), for a second at least, is
//! closed to admit the newcomer, so a leaky pool of idle clients cannot lock the function out
//! of its own proxy. No request under way is cut, and one already in the socket is served
//! first. Only when no connection has been idle that long does a new client get 503.

use crate::metrics::{Counter, Gauge, Recorder};
use crate::proxy::client::limits::{idle_clock_ms, ConnPhase};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

type Live = Arc<Mutex<HashMap<u64, Arc<ConnPhase>>>>;

/// How long a connection must have waited before it may be closed for a newcomer: one that
/// has just connected (its request may be on the way) or just been answered keeps its place.
const MIN_IDLE_MS: u64 = 1000;

pub(crate) struct Slots {
    max: usize,
    active: Arc<AtomicUsize>,
    live: Live,
    next_id: AtomicU64,
    recorder: Recorder,
}

/// A client connection's place; released on drop (when both the HTTP connection and any
/// tunnel it became are gone).
pub(crate) struct ConnSlot {
    id: u64,
    live: Live,
    active: Arc<AtomicUsize>,
    recorder: Recorder,
    pub phase: Arc<ConnPhase>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        lock(&self.live).remove(&self.id);
        if self.phase.was_closed_for_room() {
            self.recorder.incr(Counter::IdleClientsClosed);
        }
        self.active.fetch_sub(1, Ordering::Relaxed);
        self.recorder.gauge_add(Gauge::ActiveConnections, -1);
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
        let phase = Arc::new(ConnPhase::default());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.live).insert(id, phase.clone());
        Some(Arc::new(ConnSlot {
            id,
            live: self.live.clone(),
            active: self.active.clone(),
            recorder: self.recorder.clone(),
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
        let idle_before = idle_clock_ms().saturating_sub(MIN_IDLE_MS);
        // A candidate that starts a request between the look and the close is skipped; each
        // turn looks at fewer idle connections, so this ends.
        for _ in 0..live.len() {
            let Some((_, phase)) = live
                .values()
                .filter_map(|phase| Some((phase.idle_since()?, phase)))
                .filter(|(since, _)| *since <= idle_before)
                .min_by_key(|(since, _)| *since)
            else {
                return false;
            };
            if phase.close_if_idle() {
                return true;
            }
        }
        false
    }
}
