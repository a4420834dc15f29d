//! Is an idle upstream connection still there?
//!
//! Lambda freezes the sandbox between invokes, for seconds or hours. Meanwhile peers close
//! idle keep-alive connections and a NAT gateway forgets flows idle for 350 s (and answers
//! their next packet with RST). A connection that sat idle is therefore checked right
//! before it is used again: a non-blocking peek tells closed, reset and alive apart without
//! consuming anything.
//!
//! Every upstream connection carries a [`Health`] cell, listed in the [`Registry`]. hyper's
//! pool cannot be enumerated, so after a freeze [`Registry::revalidate`] peeks each listed
//! connection, marks the dead ones and wakes their readers: hyper's connection task then sees
//! an error and drops the connection from the pool. Before a request is sent on a pool that
//! sat idle, [`Registry::sweep`] does the same for that pool and waits until the dead
//! connections are gone, so hyper cannot hand one out.

use crate::clock::InvocationClock;
use crate::metrics::{Event, Recorder};
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Waker;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// A connection silent this long is peeked before its next write. Peers close idle
/// connections and NATs drop flows after seconds of silence at the earliest; checking sooner
/// would cost a syscall per write and find nothing.
pub(crate) const IDLE_CHECK_AFTER: Duration = Duration::from_secs(1);

/// How long a sweep waits for hyper to let go of a dead connection it was woken about.
const DROP_WAIT: Duration = Duration::from_millis(100);

/// Scheduler turns given to hyper's tasks after a dead connection was dropped.
const SETTLE_YIELDS: usize = 4;

/// What a peek found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Liveness {
    Alive,
    /// The peer closed (FIN).
    Closed,
    /// The peer reset the connection (RST).
    Reset,
    /// Already found dead (and noted) earlier.
    Gone,
}

/// Peeks a connected socket without blocking or consuming data.
pub(crate) fn probe(fd: RawFd) -> Liveness {
    let mut byte = 0u8;
    // SAFETY: `fd` is an open socket owned by the caller for the duration of the call, and the
    // kernel writes at most one byte into `byte`.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n == 0 {
        return Liveness::Closed;
    }
    if n < 0 {
        return match io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Liveness::Alive,
            Some(libc::ECONNRESET)
            | Some(libc::EPIPE)
            | Some(libc::ECONNABORTED)
            | Some(libc::ETIMEDOUT) => Liveness::Reset,
            _ => Liveness::Closed,
        };
    }
    // Unread bytes (a TLS session ticket, an HTTP/2 SETTINGS frame, a close_notify) say nothing
    // about whether the peer closed after sending them; the poll flags do.
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
    if ready > 0 {
        if pfd.revents & libc::POLLERR != 0 {
            return Liveness::Reset;
        }
        if pfd.revents & (libc::POLLHUP | libc::POLLRDHUP) != 0 {
            return Liveness::Closed;
        }
    }
    Liveness::Alive
}

/// The error a dead connection answers with. `sent: false`: found dead before a request was
/// written to it, so any request may go again on another connection. `sent: true`: a request
/// may have gone out (a write after an idle period broke before any answer, as when a NAT
/// forgot the flow; or part of a request was already written; or other requests share the
/// HTTP/2 connection and get the same error): only an idempotent request may go again.
#[derive(Debug)]
pub(crate) struct StaleConnection {
    pub reset: bool,
    pub sent: bool,
}

/// HTTP/2 keeps only the message of an I/O error, so the type is also recognised by these.
const STALE_UNSENT: &str = "stale upstream connection: closed while idle";
const STALE_SENT: &str = "stale upstream connection: broke after an idle period";

impl fmt::Display for StaleConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.sent { STALE_SENT } else { STALE_UNSENT };
        let how = if self.reset { "reset" } else { "closed" };
        write!(f, "{what} ({how} by the peer)")
    }
}

impl std::error::Error for StaleConnection {}

impl StaleConnection {
    fn io(reset: bool, sent: bool) -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionReset,
            StaleConnection { reset, sent },
        )
    }
}

/// Whether an error chain says a request failed on a stale connection: `Some(false)` when
/// nothing was sent, `Some(true)` when it was.
pub(crate) fn stale_in(err: &(dyn std::error::Error + 'static)) -> Option<bool> {
    let mut current = Some(err);
    // Error chains are short; the bound only guards against a cyclic `source()`.
    for _ in 0..16 {
        let e = current?;
        if let Some(stale) = e.downcast_ref::<StaleConnection>() {
            return Some(stale.sent);
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if let Some(stale) = io
                .get_ref()
                .and_then(|i| i.downcast_ref::<StaleConnection>())
            {
                return Some(stale.sent);
            }
            let message = io.to_string();
            if message.contains(STALE_UNSENT) {
                return Some(false);
            }
            if message.contains(STALE_SENT) {
                return Some(true);
            }
        }
        current = e.source();
    }
    None
}

/// Every upstream connection's health cell, so all of them can be checked after a freeze.
pub(crate) struct Registry {
    epoch: Instant,
    /// Bumped by each revalidation: every connection is checked before its next write then,
    /// whatever the monotonic clock says (it may not advance while the sandbox is frozen).
    generation: AtomicU64,
    /// By pool key, so the check before a request looks at its own pool only.
    conns: Mutex<HashMap<Arc<str>, Vec<Weak<Health>>>>,
    recorder: Recorder,
    clock: Arc<InvocationClock>,
}

/// What a revalidation found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Revalidated {
    pub checked: usize,
    pub dead: usize,
}

impl Registry {
    pub(crate) fn new(recorder: Recorder, clock: Arc<InvocationClock>) -> Arc<Registry> {
        Arc::new(Registry {
            epoch: Instant::now(),
            generation: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            recorder,
            clock,
        })
    }

    fn now_ms(&self) -> u64 {
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
    fn live(&self, pool_key: Option<&str>) -> Vec<Arc<Health>> {
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

    fn note_stale(&self, health: &Health, idle: Duration, reset: bool, caught: bool) {
        tracing::debug!(
            host = %health.host,
            addr = %health.addr,
            idle_ms = idle.as_millis() as u64,
            reset,
            caught,
            "stale upstream connection"
        );
        self.recorder.note(
            self.clock.invocations(),
            Event::StaleConnection {
                host: health.host.clone(),
                addr: health.addr,
                idle,
                reset,
                caught,
            },
        );
    }
}

#[derive(Default)]
struct Reader {
    closed: bool,
    waker: Option<Waker>,
}

/// One connection's health, shared by the connection and the registry.
pub(crate) struct Health {
    registry: Arc<Registry>,
    fd: RawFd,
    host: String,
    addr: SocketAddr,
    /// Set (under this lock) before the socket closes, so a peek never sees a reused fd.
    closed: Mutex<Reader>,
    dead: AtomicBool,
    /// Its reader saw EOF or an error: the connection is ending.
    eof: AtomicBool,
    last_active_ms: AtomicU64,
    checked_generation: AtomicU64,
    /// A write went out after an idle period and nothing has come back yet: a reset or EOF
    /// now means the connection was stale and a request failed on it.
    awaiting_reply: AtomicBool,
    multiplexed: bool,
    /// The last bytes moved were written (a request is under way), not read.
    last_op_write: AtomicBool,
    /// Signalled when the connection closes on our side.
    gone: Notify,
    /// Waiting in the warm-up's parking, not (yet) in hyper's pool.
    parked: AtomicBool,
}

impl Health {
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }

    fn is_closed(&self) -> bool {
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

    async fn wait_gone(&self, within: Duration) {
        // Created before the check, so a close in between still wakes it.
        let gone = self.gone.notified();
        if self.is_closed() {
            return;
        }
        let _ = tokio::time::timeout(within, gone).await;
    }

    /// Whether nothing can have been sent yet: a single-request (HTTP/1) connection whose
    /// last bytes moved were an answer read, so no request is part-way out.
    fn nothing_sent(&self) -> bool {
        !self.multiplexed && !self.last_op_write.load(Ordering::Relaxed)
    }

    fn idle(&self) -> Duration {
        let last = self.last_active_ms.load(Ordering::Relaxed);
        Duration::from_millis(self.registry.now_ms().saturating_sub(last))
    }

    fn touch(&self) {
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
            let found = match probe(self.fd) {
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
    fn retire(&self) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn peeks_tell_alive_closed_and_reset_apart() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        assert_eq!(probe(client.as_raw_fd()), Liveness::Alive);
        server.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(probe(client.as_raw_fd()), Liveness::Alive, "data waiting");
        drop(server);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(probe(client.as_raw_fd()), Liveness::Closed, "data then FIN");

        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        // Linger 0: close sends RST.
        socket_linger_zero(&server);
        drop(server);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(probe(client.as_raw_fd()), Liveness::Reset);
    }

    fn socket_linger_zero(s: &std::net::TcpStream) {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: valid socket and option struct.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
    }

    fn registry() -> (Arc<Registry>, Recorder) {
        let recorder = Recorder::new();
        let registry = Registry::new(recorder.clone(), Arc::new(InvocationClock::new()));
        (registry, recorder)
    }

    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    fn stale_events(recorder: &Recorder) -> Vec<(bool, bool)> {
        recorder
            .observations_since(0)
            .events
            .into_iter()
            .filter_map(|o| match o.event {
                Event::StaleConnection { reset, caught, .. } => Some((reset, caught)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_connection_closed_while_idle_refuses_the_next_write() {
        let (registry, recorder) = registry();
        let (client, server) = pair();
        let addr = client.peer_addr().unwrap();
        let health = registry.track(client.as_raw_fd(), "up.test", addr, Arc::from("k"), false);
        assert!(health.before_write().is_ok(), "fresh: no check");
        drop(server);
        std::thread::sleep(Duration::from_millis(20));
        // Recently active: not checked yet (the write would go out).
        assert!(health.before_write().is_ok());
        // A thaw makes every connection due for a check, whatever the clock says.
        registry.generation.fetch_add(1, Ordering::Relaxed);
        let err = health.before_write().expect_err("stale");
        assert_eq!(stale_in(&err), Some(false), "nothing was sent");
        assert!(health.is_dead());
        assert_eq!(stale_events(&recorder), vec![(false, true)]);
        // Dead stays dead, noted once; reads fail too.
        assert!(health.before_write().is_err());
        assert_eq!(stale_events(&recorder).len(), 1);
        assert_eq!(registry.open_for("k"), 0);
    }

    #[test]
    fn an_answer_waiting_ahead_of_the_peers_close_is_left_to_the_reader() {
        let (registry, recorder) = registry();
        let (client, mut server) = pair();
        let addr = client.peer_addr().unwrap();
        let health = registry.track(client.as_raw_fd(), "up.test", addr, Arc::from("k"), false);
        health.wrote();
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        drop(server);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(health.check(), Some(Liveness::Alive));
        assert!(stale_events(&recorder).is_empty());
        // Once the answer was read, the same close makes it dead.
        health.after_read(Ok(false));
        assert_eq!(health.check(), Some(Liveness::Closed));
    }

    #[test]
    fn revalidation_finds_dead_connections_and_skips_closed_ones() {
        let (registry, recorder) = registry();
        let (alive, _alive_peer) = pair();
        let (dead, dead_peer) = pair();
        let (closed, _closed_peer) = pair();
        let addr = alive.peer_addr().unwrap();
        let _a = registry.track(alive.as_raw_fd(), "up.test", addr, Arc::from("k"), false);
        let _d = registry.track(dead.as_raw_fd(), "up.test", addr, Arc::from("k"), false);
        let c = registry.track(closed.as_raw_fd(), "up.test", addr, Arc::from("k"), false);
        c.close();
        drop(closed);
        drop(dead_peer);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(registry.open_for("k"), 2);
        let found = registry.revalidate();
        assert_eq!(
            found,
            Revalidated {
                checked: 2,
                dead: 1
            }
        );
        assert_eq!(registry.open_for("k"), 1);
        assert_eq!(stale_events(&recorder), vec![(false, true)]);
    }

    #[test]
    fn a_request_that_breaks_after_an_idle_period_is_reported_as_sent_on_a_stale_connection() {
        let (registry, recorder) = registry();
        let (client, _server) = pair();
        let addr = client.peer_addr().unwrap();
        let health = registry.track(client.as_raw_fd(), "up.test", addr, Arc::from("k"), false);
        registry.generation.fetch_add(1, Ordering::Relaxed);
        assert!(health.before_write().is_ok(), "alive when checked");
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        let err = health.after_read(Err(&reset)).expect("reported as stale");
        assert_eq!(stale_in(&err), Some(true), "the request had gone out");
        assert_eq!(stale_events(&recorder), vec![(true, false)]);

        // Without an idle period before the write, a reset is just a reset.
        let (client, _server) = pair();
        let fresh = registry.track(client.as_raw_fd(), "up.test", addr, Arc::from("k"), false);
        assert!(fresh.before_write().is_ok());
        assert!(fresh.after_read(Err(&reset)).is_none());
        // An answer clears it.
        registry.generation.fetch_add(1, Ordering::Relaxed);
        assert!(fresh.before_write().is_ok());
        assert!(fresh.after_read(Ok(false)).is_none());
        assert!(fresh.after_read(Ok(true)).is_none());
    }

    #[test]
    fn stale_errors_are_recognised_through_wrapping() {
        for sent in [false, true] {
            let err = StaleConnection::io(true, sent);
            assert_eq!(stale_in(&err), Some(sent));
            let flattened = io::Error::new(io::ErrorKind::ConnectionReset, err.to_string());
            assert_eq!(stale_in(&flattened), Some(sent));
        }
        assert_eq!(
            stale_in(&io::Error::from(io::ErrorKind::ConnectionReset)),
            None
        );
    }
}
