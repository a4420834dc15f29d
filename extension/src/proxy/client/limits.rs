//! Per-connection limits on the client side.
//!
//! hyper's own header-read timer also runs while a keep-alive connection waits for its next
//! request, so it cannot give a short header deadline and a long idle allowance at once.
//! [`GuardedIo`] does both from the connection's phase: waiting (idle allowance), reading a
//! request head (header deadline), busy with a request or tunnelling (no limit).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Request heads (request line + headers) above this get 431.
pub(crate) const MAX_HEADER_BYTES: usize = 64 * 1024;
/// More header fields than this get 431 too.
pub(crate) const MAX_HEADERS: usize = 128;
/// A client must send a whole request head within this once it has started one.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle keep-alive client connection is closed after this. Long, because a frozen
/// function's pooled connections should still work after a thaw, and short enough that
/// abandoned connections do not hold `EGRESS_WARDEN_MAX_CONNECTIONS` slots for ever.
pub(crate) const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

const IDLE: u8 = 0;
const HEAD: u8 = 1;
const BUSY: u8 = 2;
const TUNNEL: u8 = 3;
/// Closed to make room for another client: unless a request is already waiting in the
/// socket, the next read is the end of the stream.
const CLOSING: u8 = 4;

/// Milliseconds on a process-wide monotonic clock, for idle ages.
pub(crate) fn idle_clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Where a client connection is in its request cycle, shared by the IO wrapper and the
/// request handler. The reader parks its waker while busy: a response usually completes
/// after hyper last polled the socket, and the idle deadline must start then, not at the
/// next byte.
pub(crate) struct ConnPhase {
    state: AtomicU8,
    reader: Mutex<Option<Waker>>,
    /// When the connection last became idle ([`idle_clock_ms`]).
    idle_mark: AtomicU64,
}

impl Default for ConnPhase {
    /// A new connection is idle until its first request.
    fn default() -> Self {
        ConnPhase {
            state: AtomicU8::new(IDLE),
            reader: Mutex::new(None),
            idle_mark: AtomicU64::new(idle_clock_ms()),
        }
    }
}

impl ConnPhase {
    /// A request head was parsed: the handler runs. A connection being closed stays so: the
    /// request hyper had already read is answered, then the connection ends.
    pub(crate) fn busy(&self) {
        let _ = self
            .state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                matches!(s, IDLE | HEAD).then_some(BUSY)
            });
    }

    /// The response was written: waiting for the next request.
    pub(crate) fn idle(&self) {
        // The mark first: it is read only while the state says idle.
        self.idle_mark.store(idle_clock_ms(), Ordering::Relaxed);
        // A tunnel never goes back to waiting for requests.
        let became_idle = self
            .state
            .compare_exchange(BUSY, IDLE, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if became_idle {
            self.wake_reader();
        }
    }

    /// Since when ([`idle_clock_ms`]) the connection has waited for a request; None while a
    /// request is under way, in a tunnel or closing.
    pub(crate) fn idle_since(&self) -> Option<u64> {
        (self.get() == IDLE).then(|| self.idle_mark.load(Ordering::Relaxed))
    }

    /// Closes the connection if it is still waiting for a request (its reader sees the end
    /// of the stream, and hyper ends it cleanly). False if a request started meanwhile.
    pub(crate) fn close_if_idle(&self) -> bool {
        let closed = self
            .state
            .compare_exchange(IDLE, CLOSING, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if closed {
            self.wake_reader();
        }
        closed
    }

    fn wake_reader(&self) {
        let parked = self.reader.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(waker) = parked {
            waker.wake();
        }
    }

    fn forget_reader(&self) {
        self.reader.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    fn park_reader(&self, waker: &Waker) {
        let mut slot = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }

    /// The connection became a tunnel: no more HTTP on it.
    pub(crate) fn tunnel(&self) {
        self.state.store(TUNNEL, Ordering::Relaxed);
    }

    fn get(&self) -> u8 {
        self.state.load(Ordering::Relaxed)
    }

    /// Whether the connection ended because it was closed to make room.
    pub(crate) fn was_closed_for_room(&self) -> bool {
        self.get() == CLOSING
    }

    /// Bytes came in on a connection being closed: it serves that request after all.
    fn reopen(&self) {
        let _ = self
            .state
            .compare_exchange(CLOSING, HEAD, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn head_started(&self) {
        let _ = self
            .state
            .compare_exchange(IDLE, HEAD, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// Client-side deadlines: a started request head must arrive within `header_read`; an idle
/// keep-alive connection is closed after `idle`.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header_read: HEADER_READ_TIMEOUT,
            idle: CLIENT_IDLE_TIMEOUT,
        }
    }
}

/// The client socket with the phase-dependent deadline.
pub(crate) struct GuardedIo<T> {
    inner: T,
    phase: Arc<ConnPhase>,
    timeouts: Timeouts,
    /// The phase the deadline was set for.
    armed_for: u8,
    deadline: Pin<Box<Sleep>>,
}

impl<T> GuardedIo<T> {
    pub(crate) fn new(inner: T, phase: Arc<ConnPhase>, timeouts: Timeouts) -> GuardedIo<T> {
        GuardedIo {
            inner,
            phase,
            timeouts,
            armed_for: IDLE,
            deadline: Box::pin(tokio::time::sleep(timeouts.idle)),
        }
    }

    /// The io itself, for a tunnel that takes the connection over.
    pub(crate) fn into_inner(self) -> T {
        self.inner
    }

    /// Re-arms the deadline when the phase changed since the last read.
    fn track_phase(&mut self) {
        let phase = self.phase.get();
        if phase == self.armed_for {
            return;
        }
        self.armed_for = phase;
        let limit = match phase {
            IDLE => self.timeouts.idle,
            // Closing: what is left to write gets as long as a request head would.
            HEAD | CLOSING => self.timeouts.header_read,
            _ => return,
        };
        self.deadline.as_mut().reset(Instant::now() + limit);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        if this.phase.get() == CLOSING {
            // A request already in the socket is served, not reset; otherwise: end of stream.
            return match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) if buf.filled().len() > before => {
                    this.phase.reopen();
                    this.track_phase();
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
                _ => Poll::Ready(Ok(())),
            };
        }
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.phase.head_started();
                    // The waker parked while idle is stale now: left there, the end of this
                    // request would wake the connection for nothing.
                    this.phase.forget_reader();
                }
                this.track_phase();
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                this.track_phase();
                // hyper may not read again until the next byte: be woken when the response
                // is done (so the idle deadline starts) or when the connection is closed to
                // make room.
                this.phase.park_reader(cx.waker());
                // The response may have finished, or a close come, in between: look again.
                this.track_phase();
                if this.phase.get() == CLOSING {
                    return Poll::Ready(Ok(()));
                }
                if matches!(this.armed_for, IDLE | HEAD)
                    && this.deadline.as_mut().poll(cx).is_ready()
                {
                    let what = if this.armed_for == HEAD {
                        "request head not received in time"
                    } else {
                        "idle client connection"
                    };
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<T> GuardedIo<T> {
    /// A write that waits on a client that stopped reading, on a connection being closed
    /// to make room: past the deadline it fails, and the slot is freed.
    fn stuck_while_closing<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if polled.is_pending() {
            self.track_phase();
            if self.armed_for == CLOSING && self.deadline.as_mut().poll(cx).is_ready() {
                let err = io::Error::new(io::ErrorKind::TimedOut, "closing client not reading");
                return Poll::Ready(Err(err));
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.stuck_while_closing(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.stuck_while_closing(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.stuck_while_closing(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.stuck_while_closing(cx, polled)
    }
}
