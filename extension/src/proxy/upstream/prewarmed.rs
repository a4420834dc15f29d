//! Connections opened ahead of need (by the warm-up) and parked until a request takes one:
//! TCP sockets for `CONNECT host:port`, ready TLS connections for route mode. Each is checked
//! alive when taken; a dead one is noted as stale (caught) and never handed out.

use crate::metrics::{Event, Recorder};
use crate::proxy::upstream::liveness::{probe, Liveness};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Something that can be parked: says where it goes and whether it is still alive.
pub(crate) trait Parkable {
    fn host(&self) -> &str;
    fn addr(&self) -> SocketAddr;
    fn liveness(&self) -> Liveness;
}

/// A pre-connected TCP socket for a `CONNECT` target.
pub(crate) struct ParkedSocket {
    pub dialed: crate::proxy::upstream::connect::Dialed,
    pub host: String,
    pub parked_at: Instant,
}

impl ParkedSocket {
    fn fd(&self) -> BorrowedFd<'_> {
        self.dialed.stream.as_fd()
    }
}

impl Parkable for ParkedSocket {
    fn host(&self) -> &str {
        &self.host
    }

    fn addr(&self) -> SocketAddr {
        self.dialed.addr
    }

    fn liveness(&self) -> Liveness {
        probe(self.fd())
    }
}

struct Entry<T> {
    item: T,
    since: Instant,
}

/// Parked connections by key (`host:port` for sockets, the pool key for route connections).
pub(crate) struct Prewarmed<T> {
    entries: Mutex<HashMap<String, VecDeque<Entry<T>>>>,
    /// Older entries are closed rather than handed out: the same bound as idle pooled
    /// connections, below the NAT gateway's idle timeout.
    max_age: Duration,
    recorder: Recorder,
}

impl<T: Parkable> Prewarmed<T> {
    pub(crate) fn new(max_age: Duration, recorder: Recorder) -> Self {
        Prewarmed {
            entries: Mutex::new(HashMap::new()),
            max_age,
            recorder,
        }
    }

    pub(crate) fn park(&self, key: String, item: T) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.entry(key).or_default().push_back(Entry {
            item,
            since: Instant::now(),
        });
    }

    /// The oldest live connection for `key`, if any; dead and expired ones are dropped.
    pub(crate) fn take(&self, key: &str) -> Option<T> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let queue = entries.get_mut(key)?;
        let mut found = None;
        while let Some(entry) = queue.pop_front() {
            if self.usable(&entry) {
                found = Some(entry.item);
                break;
            }
        }
        if queue.is_empty() {
            entries.remove(key);
        }
        found
    }

    pub(crate) fn count(&self, key: &str) -> usize {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(key).map_or(0, VecDeque::len)
    }

    /// Parked connections by key, for the status page (not checked: a peek per entry on
    /// every status request would cost more than it tells).
    pub(crate) fn describe(&self) -> serde_json::Value {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let by_key: serde_json::Map<String, serde_json::Value> = entries
            .iter()
            .map(|(key, queue)| (key.clone(), queue.len().into()))
            .collect();
        serde_json::Value::Object(by_key)
    }

    /// Checks everything parked and drops what is dead or too old: (checked, dropped).
    pub(crate) fn purge(&self) -> (usize, usize) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (mut checked, mut dropped) = (0, 0);
        for queue in entries.values_mut() {
            let before = queue.len();
            let kept: VecDeque<_> = queue.drain(..).filter(|e| self.usable(e)).collect();
            checked += before;
            dropped += before - kept.len();
            *queue = kept;
        }
        entries.retain(|_, q| !q.is_empty());
        (checked, dropped)
    }

    /// Drops everything parked, unchecked (after a restore nothing parked is trusted).
    pub(crate) fn clear(&self) -> usize {
        let drained = std::mem::take(&mut *self.entries.lock().unwrap_or_else(|p| p.into_inner()));
        drained.values().map(VecDeque::len).sum()
    }

    fn usable(&self, entry: &Entry<T>) -> bool {
        let idle = entry.since.elapsed();
        if idle >= self.max_age {
            return false;
        }
        let found = entry.item.liveness();
        if matches!(found, Liveness::Closed | Liveness::Reset) {
            tracing::debug!(
                host = entry.item.host(),
                addr = %entry.item.addr(),
                "pre-connected upstream connection found {found:?}; not used"
            );
            self.recorder.note(Event::StaleConnection {
                host: entry.item.host().to_owned(),
                addr: entry.item.addr(),
                idle,
                reset: found == Liveness::Reset,
                caught: true,
            });
        }
        found == Liveness::Alive
    }
}
