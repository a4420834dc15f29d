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

mod health;
mod registry;

pub(crate) use health::Health;
pub(crate) use registry::Registry;
pub use registry::Revalidated;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::RecvFlags;
use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;
use std::time::Duration;

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
pub(crate) fn probe(fd: BorrowedFd<'_>) -> Liveness {
    let mut byte = [0u8; 1];
    match rustix::net::recv(fd, &mut byte, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
        Ok((_, 0)) => return Liveness::Closed,
        Ok(_) => {}
        Err(Errno::AGAIN | Errno::INTR) => return Liveness::Alive,
        Err(Errno::CONNRESET | Errno::PIPE | Errno::CONNABORTED | Errno::TIMEDOUT) => {
            return Liveness::Reset
        }
        Err(_) => return Liveness::Closed,
    }
    // Unread bytes (a TLS session ticket, an HTTP/2 SETTINGS frame, a close_notify) say nothing
    // about whether the peer closed after sending them; the poll flags do.
    let mut fds = [PollFd::new(&fd, PollFlags::IN | PollFlags::RDHUP)];
    if let Ok(1..) = rustix::event::poll(&mut fds, Some(&Timespec::default())) {
        let revents = fds[0].revents();
        if revents.contains(PollFlags::ERR) {
            return Liveness::Reset;
        }
        if revents.intersects(PollFlags::HUP | PollFlags::RDHUP) {
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
    crate::error_chain::sources(err).find_map(|e| {
        if let Some(stale) = e.downcast_ref::<StaleConnection>() {
            return Some(stale.sent);
        }
        let io = e.downcast_ref::<io::Error>()?;
        if let Some(stale) = io
            .get_ref()
            .and_then(|i| i.downcast_ref::<StaleConnection>())
        {
            return Some(stale.sent);
        }
        let message = io.to_string();
        if message.contains(STALE_UNSENT) {
            Some(false)
        } else if message.contains(STALE_SENT) {
            Some(true)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Event, Recorder};
    use std::io::Write;
    use std::os::fd::{AsFd, AsRawFd};
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    #[test]
    fn peeks_tell_alive_closed_and_reset_apart() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        assert_eq!(probe(client.as_fd()), Liveness::Alive);
        server.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(probe(client.as_fd()), Liveness::Alive, "data waiting");
        drop(server);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(probe(client.as_fd()), Liveness::Closed, "data then FIN");

        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        // Linger 0: close sends RST.
        socket_linger_zero(&server);
        drop(server);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(probe(client.as_fd()), Liveness::Reset);
    }

    fn socket_linger_zero(s: &std::net::TcpStream) {
        // Closing with a zero linger sends RST instead of FIN.
        rustix::net::sockopt::set_socket_linger(s, Some(Duration::ZERO)).unwrap();
    }

    fn registry() -> (Arc<Registry>, Recorder) {
        let recorder = Recorder::new();
        let registry = Registry::new(recorder.clone());
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
