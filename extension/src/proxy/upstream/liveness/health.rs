//! One connection's health cell: when it was last active, whether it was found dead, and the
//! reader to wake when it is, so hyper's connection task drops it from the pool.

use super::{probe, Liveness, Registry, StaleConnection, IDLE_CHECK_AFTER};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Default)]
pub(super) struct Reader {
    pub(super) closed: bool,
    pub(super) waker: Option<Waker>,
}

/// One connection's health, shared by the connection and the registry.
pub(crate) struct Health {
    pub(super) registry: Arc<Registry>,
    pub(super) fd: RawFd,
    pub(super) host: String,
    pub(super) addr: SocketAddr,
    /// Set (under this lock) before the socket closes, so a peek never sees a reused fd.
    pub(super) closed: Mutex<Reader>,
    pub(super) dead: AtomicBool,
    /// Its reader saw EOF or an error: the connection is ending.
    pub(super) eof: AtomicBool,
    pub(super) last_active_ms: AtomicU64,
    pub(super) checked_generation: AtomicU64,
    /// A write went out after an idle period and nothing has come back yet: a reset or EOF
    /// now means the connection was stale and a request failed on it.
    pub(super) awaiting_reply: AtomicBool,
    pub(super) multiplexed: bool,
    /// The last bytes moved were written (a request is under way), not read.
    pub(super) last_op_write: AtomicBool,
    /// Signalled when the connection closes on our side.
    pub(super) gone: Notify,
    /// Waiting in the warm-up's parking, not (yet) in hyper's pool.
    pub(super) parked: AtomicBool,
}

impl Health {
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.lock().unwrap_or_else(|p| p.into_inner()).closed
    }

    /// Called before the socket is closed.
    pub(crate) fn close(&self) {
        {
            let mut reader = self.closed.lock().unwrap_or_else(|p| p.into_inner());
            reader.closed = true;
            reader.waker = None;
        }
        self.gone.notify_waiters();
    }

    pub(super) async fn wait_gone(&self, within: Duration) {
        // Created before the check, so a close in between still wakes it.
        let gone = self.gone.notified();
        if self.is_closed() {
            return;
        }
        let _ = tokio::time::timeout(within, gone).await;
    }

    /// Whether nothing can have been sent yet: a single-request (HTTP/1) connection whose
    /// last bytes moved were an answer read, so no request is part-way out.
    pub(super) fn nothing_sent(&self) -> bool {
        !self.multiplexed && !self.last_op_write.load(Ordering::Relaxed)
    }

    pub(super) fn idle(&self) -> Duration {
        let last = self.last_active_ms.load(Ordering::Relaxed);
        Duration::from_millis(self.registry.now_ms().saturating_sub(last))
    }

    pub(super) fn touch(&self) {
        self.last_active_ms
            .store(self.registry.now_ms(), Ordering::Relaxed);
    }

    pub(crate) fn set_parked(&self, parked: bool) {
        self.parked.store(parked, Ordering::Relaxed);
    }

    /// After bytes were written.
    pub(crate) fn wrote(&self) {
        self.last_op_write.store(true, Ordering::Relaxed);
        self.touch();
    }

    /// Peeks the socket now. None when it is already closed on our side. A connection found
    /// dead is marked, noted once (`caught`: before any request used it) and its reader woken.
    pub(crate) fn check(&self) -> Option<Liveness> {
        let (waker, found) = {
            let mut reader = self.closed.lock().unwrap_or_else(|p| p.into_inner());
            if reader.closed {
                return None;
            }
            if self.is_dead() {
                return Some(Liveness::Gone);
            }
            self.checked_generation.store(
                self.registry.generation.load(Ordering::Relaxed),
                Ordering::Relaxed,
            );
            // SAFETY: `reader.closed` is false and is set under this lock before the socket
            // closes, so `fd` is the connection's open socket while the lock is held.
            let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
            let found = match probe(fd) {
                // An HTTP/1 request is waiting for its answer, which may be in the socket ahead
                // of the peer's FIN (`Connection: close`): the reader gets both. (HTTP/2 writes
                // window updates and acks after answers too, so a write there says nothing; and
                // a FIN without GOAWAY ends its streams whatever the reader does.)
                Liveness::Closed
                    if !self.multiplexed && self.last_op_write.load(Ordering::Relaxed) =>
                {
                    Liveness::Alive
                }
                found => found,
            };
            if found == Liveness::Alive {
                return Some(found);
            }
            self.dead.store(true, Ordering::Relaxed);
            self.registry
                .note_stale(self, self.idle(), found == Liveness::Reset, true);
            (reader.waker.take(), found)
        };
        if let Some(w) = waker {
            w.wake();
        }
        Some(found)
    }

    /// Marks the connection dead and wakes its reader; false if it was closed or dead already.
    pub(super) fn retire(&self) -> bool {
        let waker = {
            let mut reader = self.closed.lock().unwrap_or_else(|p| p.into_inner());
            if reader.closed || self.dead.swap(true, Ordering::Relaxed) {
                return false;
            }
            reader.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Before a write: a connection idle for a while (or not checked since the last thaw) is
    /// peeked first; a dead one refuses the write with [`StaleConnection`].
    pub(crate) fn before_write(&self) -> io::Result<()> {
        if self.is_dead() {
            return Err(StaleConnection::io(false, !self.nothing_sent()));
        }
        let generation = self.registry.generation.load(Ordering::Relaxed);
        let unchecked = self.checked_generation.load(Ordering::Relaxed) < generation;
        if !unchecked && self.idle() < IDLE_CHECK_AFTER {
            return Ok(());
        }
        match self.check() {
            Some(Liveness::Alive) | None => {
                self.awaiting_reply.store(true, Ordering::Relaxed);
                Ok(())
            }
            Some(found) => Err(StaleConnection::io(
                found == Liveness::Reset,
                !self.nothing_sent(),
            )),
        }
    }

    /// Remembers who to wake when a revalidation finds this connection dead.
    pub(crate) fn before_read(&self, waker: &Waker) -> io::Result<()> {
        if self.is_dead() {
            // A request waiting on this connection's answer may have gone out.
            return Err(StaleConnection::io(false, true));
        }
        let mut reader = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        if !reader.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            reader.waker = Some(waker.clone());
        }
        Ok(())
    }

    /// After a read: data (`Ok(false)`), EOF (`Ok(true)`) or an error. Returns the error to
    /// report instead when a request written after an idle period got no answer at all.
    pub(crate) fn after_read(&self, outcome: Result<bool, &io::Error>) -> Option<io::Error> {
        let reset = match outcome {
            Ok(false) => {
                self.awaiting_reply.store(false, Ordering::Relaxed);
                self.last_op_write.store(false, Ordering::Relaxed);
                self.touch();
                return None;
            }
            Ok(true) => false,
            Err(err) => err.kind() == io::ErrorKind::ConnectionReset,
        };
        self.eof.store(true, Ordering::Relaxed);
        // The connection was stale and the check before the write could not tell.
        if !self.awaiting_reply.swap(false, Ordering::Relaxed)
            || self.dead.swap(true, Ordering::Relaxed)
        {
            return None;
        }
        self.registry.note_stale(self, self.idle(), reset, false);
        Some(StaleConnection::io(reset, true))
    }
}
