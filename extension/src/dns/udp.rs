//! The UDP listener. Cache hits are answered by a dedicated thread: it takes every queued
//! query in one recvmmsg and answers from memory (no async wake-ups or task switches on the
//! hot path). Misses are handed to the async runtime, which answers them when the upstream
//! does, so a slow upstream never holds up a hit.

use super::core::{Core, Handled, Transport};
use super::mmsg::{self, Inbox, Outbox, BATCH};
use super::wire::MAX_QUERY_LEN;
use crate::metrics::Counter;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

/// Socket receive buffer asked for: thousands of queued queries.
const RECEIVE_BUFFER: usize = 1 << 20;

/// Batches at least this large are answered with one sendmmsg.
const SEND_TOGETHER_FROM: usize = BATCH / 2;

/// How often an idle worker looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(200);

/// Starts `workers` threads answering on `socket` until `stop` is set.
pub(crate) fn spawn(
    core: Arc<Core>,
    socket: UdpSocket,
    workers: usize,
    runtime: Handle,
    stop: Arc<AtomicBool>,
) -> io::Result<()> {
    socket.set_read_timeout(Some(STOP_CHECK))?;
    // Room for bursts from many clients at once (best effort: the kernel caps it).
    mmsg::set_receive_buffer(&socket, RECEIVE_BUFFER);
    let socket = Arc::new(socket);
    for i in 0..workers.max(1) {
        let (core, socket, runtime, stop) =
            (core.clone(), socket.clone(), runtime.clone(), stop.clone());
        std::thread::Builder::new()
            .name(format!("warden-dns-udp-{i}"))
            .spawn(move || {
                // Prefetches and misses are spawned on the runtime from this thread.
                let _entered = runtime.enter();
                // A panic must not take the listener down with it: log, count, carry on.
                while !stop.load(Ordering::Relaxed) {
                    let run = panic::catch_unwind(AssertUnwindSafe(|| {
                        serve(&core, &socket, &runtime, &stop)
                    }));
                    if run.is_err() {
                        core.recorder().incr(Counter::TaskPanics);
                        tracing::error!("the DNS UDP worker panicked; restarting it");
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            })?;
    }
    Ok(())
}

fn serve(core: &Arc<Core>, socket: &Arc<UdpSocket>, runtime: &Handle, stop: &AtomicBool) {
    let fd = socket.as_raw_fd();
    // One byte more than we accept, so an oversized datagram is seen as such, not cut to fit.
    let mut inbox = Inbox::new(MAX_QUERY_LEN + 1);
    let mut outbox = Outbox::default();
    let mut key = Vec::with_capacity(260);
    while !stop.load(Ordering::Relaxed) {
        // Blocks until a query arrives, then takes every one already queued. Blocking, not
        // polling: on a shared CPU the yields cost more than the wake-ups.
        let received = match inbox.receive(fd, BATCH) {
            Ok(n) => n,
            Err(e) => {
                if !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) {
                    // Transient (memory pressure, say): never spin on it.
                    tracing::debug!(error = %e, "DNS UDP receive failed");
                    std::thread::sleep(Duration::from_millis(1));
                }
                continue;
            }
        };
        // Answers go out one by one, so clients never fall into step with the batches, unless
        // a backlog is queued: then together, in one system call, at less CPU each.
        let together = received >= SEND_TOGETHER_FROM;
        let now = core.cache_time(Instant::now());
        for i in 0..received {
            let Some((packet, peer)) = inbox.get(i) else {
                continue;
            };
            match core.handle(packet, Transport::Udp, now, &mut key, outbox.next_buffer()) {
                Handled::Reply => {
                    outbox.commit(peer);
                    if !together {
                        outbox.flush(fd);
                    }
                }
                Handled::Ignore => {}
                Handled::Miss(missed) => {
                    let Ok(slot) = core.miss_slots.clone().try_acquire_owned() else {
                        // Overloaded: drop, as a real resolver does; the client retries.
                        core.note_overload();
                        continue;
                    };
                    let (core, socket) = (core.clone(), socket.clone());
                    runtime.spawn(async move {
                        let mut out = Vec::new();
                        core.answer_miss(&missed, &mut out).await;
                        let _ = mmsg::send_now(&socket, &out, peer);
                        drop(slot);
                    });
                }
            }
        }
        outbox.flush(fd);
    }
}

/// Binds the UDP socket (IPv4 loopback only: the batch I/O speaks `sockaddr_in`).
pub(crate) fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    UdpSocket::bind(addr)
}
