//! The registry of every upstream connection's health cell: hyper's pool cannot be
//! enumerated, so this is how all of them are checked after a freeze, and how one pool's idle
//! connections are swept before a request is sent on it.

use super::health::Reader;
use super::{Health, Liveness, DROP_WAIT, IDLE_CHECK_AFTER, SETTLE_YIELDS};
use crate::metrics::{Event, Recorder};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Every upstream connection's health cell, so all of them can be checked after a freeze.
pub(crate) struct Registry {
    pub(super) epoch: Instant,
    /// Bumped by each revalidation: every connection is checked before its next write then,
    /// whatever the monotonic clock says (it may not advance while the sandbox is frozen).
    pub(super) generation: AtomicU64,
    /// By pool key, so the check before a request looks at its own pool only.
    pub(super) conns: Mutex<HashMap<Arc<str>, Vec<Weak<Health>>>>,
    pub(super) recorder: Recorder,
}

/// What a revalidation found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Revalidated {
    pub checked: usize,
    pub dead: usize,
}

impl Registry {
    pub(crate) fn new(recorder: Recorder) -> Arc<Registry> {
        Arc::new(Registry {
            epoch: Instant::now(),
            generation: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            recorder,
        })
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Lists a new connection; `fd` must stay open until [`Health::close`] is called.
    /// `multiplexed`: HTTP/2, where one connection carries several requests at once.
    pub(crate) fn track(
        self: &Arc<Self>,
        fd: RawFd,
        host: &str,
        addr: SocketAddr,
        pool_key: Arc<str>,
        multiplexed: bool,
    ) -> Arc<Health> {
        let health = Arc::new(Health {
            registry: self.clone(),
            fd,
            host: host.to_owned(),
            addr,
            closed: Mutex::new(Reader::default()),
            dead: AtomicBool::new(false),
            eof: AtomicBool::new(false),
            last_active_ms: AtomicU64::new(self.now_ms()),
            checked_generation: AtomicU64::new(self.generation.load(Ordering::Relaxed)),
            awaiting_reply: AtomicBool::new(false),
            multiplexed,
            last_op_write: AtomicBool::new(false),
            gone: Notify::new(),
            parked: AtomicBool::new(false),
        });
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let pool = conns.entry(pool_key).or_default();
        // Forget closed connections now and then so the list stays as long as the pool.
        if pool.len() >= 16 && pool.len().is_power_of_two() {
            pool.retain(|w| w.strong_count() > 0);
        }
        pool.push(Arc::downgrade(&health));
        health
    }

    /// Open connections of one pool, or of all (`None`).
    pub(super) fn live(&self, pool_key: Option<&str>) -> Vec<Arc<Health>> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        match pool_key {
            Some(key) => conns.get_mut(key).map_or_else(Vec::new, |pool| {
                pool.retain(|w| w.strong_count() > 0);
                pool.iter().filter_map(Weak::upgrade).collect()
            }),
            None => {
                conns.retain(|_, pool| {
                    pool.retain(|w| w.strong_count() > 0);
                    !pool.is_empty()
                });
                conns.values().flatten().filter_map(Weak::upgrade).collect()
            }
        }
    }

    /// Peeks every open connection but the parked ones; dead ones are marked, noted and their
    /// readers woken.
    pub(crate) fn revalidate(&self) -> Revalidated {
        self.generation.fetch_add(1, Ordering::Relaxed);
        let mut found = Revalidated::default();
        // Parked connections are checked by their parking, when purged or taken.
        for health in self
            .live(None)
            .iter()
            .filter(|h| !h.parked.load(Ordering::Relaxed))
        {
            match health.check() {
                None | Some(Liveness::Gone) => {}
                Some(Liveness::Alive) => found.checked += 1,
                Some(Liveness::Closed | Liveness::Reset) => {
                    found.checked += 1;
                    found.dead += 1;
                }
            }
        }
        found
    }

    /// Before a request goes to `pool_key`: peeks that pool's connections that sat idle (or
    /// were not checked since the last freeze) and waits, briefly, until hyper has dropped
    /// the dead ones. Returns how many were found dead.
    pub(crate) async fn sweep(&self, pool_key: &str) -> usize {
        let generation = self.generation.load(Ordering::Relaxed);
        let dead: Vec<Arc<Health>> = self
            .live(Some(pool_key))
            .into_iter()
            .filter(|h| {
                // Already seen ending (by its reader or an earlier check), not yet dropped:
                // hyper may still hand it out, so it is waited for like a fresh find.
                if h.is_dead() || h.eof.load(Ordering::Relaxed) {
                    return !h.is_closed();
                }
                (h.checked_generation.load(Ordering::Relaxed) < generation
                    || h.idle() >= IDLE_CHECK_AFTER)
                    && matches!(h.check(), Some(Liveness::Closed | Liveness::Reset))
            })
            .collect();
        // Parked connections are not hyper's: they are dropped when next taken.
        for health in dead.iter().filter(|h| !h.parked.load(Ordering::Relaxed)) {
            health.wait_gone(DROP_WAIT).await;
        }
        if !dead.is_empty() {
            // Once the connection is dropped, hyper's dispatch task (HTTP/2: a second task)
            // still has to run before the pool stops offering it; let them run first.
            for _ in 0..SETTLE_YIELDS {
                tokio::task::yield_now().await;
            }
        }
        dead.len()
    }

    /// Marks every open connection dead without a peek (the snapshot they were made before
    /// was restored, maybe on another host): hyper drops the idle ones, and one it hands out
    /// anyway refuses its first write as unsent, so the request goes again on a fresh
    /// connection. Not noted as stale: nothing was seen to fail. Returns how many.
    pub(crate) fn retire_all(&self) -> usize {
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.live(None).iter().filter(|h| h.retire()).count()
    }

    /// Open, not known dead connections for a pool key (pooled, busy or parked).
    pub(crate) fn open_for(&self, pool_key: &str) -> usize {
        self.live(Some(pool_key))
            .iter()
            .filter(|h| !h.is_dead() && !h.is_closed())
            .count()
    }

    pub(super) fn note_stale(&self, health: &Health, idle: Duration, reset: bool, caught: bool) {
        tracing::debug!(
            host = %health.host,
            addr = %health.addr,
            idle_ms = idle.as_millis() as u64,
            reset,
            caught,
            "stale upstream connection"
        );
        self.recorder.note(Event::StaleConnection {
            host: health.host.clone(),
            addr: health.addr,
            idle,
            reset,
            caught,
        });
    }
}
