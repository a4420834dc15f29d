//! Moves a CONNECT tunnel's bytes both ways until either side is done.
//!
//! When the client connection is the listener's own TCP socket (always, in practice), the
//! tunnel takes it back from hyper, still registered with tokio's event loop, and moves bulk
//! data with `splice(2)` through a pipe: the kernel hands pages from one socket to the other
//! without copying them through user space (what HAProxy does). Small messages
//! (request/response traffic) pass through one scratch buffer per thread instead (an open
//! tunnel holds no buffer of its own): a short read shows the socket is drained, and the next
//! wait needs no call that would only answer EAGAIN — a short splice does not show that (it
//! may be bounded by the pipe). A direction switches to splice after a read fills the buffer
//! and back after a short splice.
//! Anything else (another client io) falls back to tokio's buffered copy.
//!
//! The bytes go to the tunnel's meter while it is open, at most once a second per direction:
//! a keep-alive tunnel that lives for many invocations has its bytes counted in the flush
//! windows they moved in, not all at once when it closes.

use crate::metrics::Direction;
use crate::proxy::client::limits::GuardedIo;
use crate::proxy::request::egress::EgressMeter;
use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use rustix::pipe::{PipeFlags, SpliceFlags};
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

/// The scratch buffer's size for small messages (and the fallback copy's buffer): a read that
/// fills it marks a bulk flow.
const BUF: usize = 32 * 1024;
/// Pipe size asked for: more data per splice call (the default pipe holds 64 KiB).
const PIPE_SIZE: usize = 512 * 1024;
/// How often an open tunnel hands its bytes to the meter (and so to the metrics).
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// What a finished tunnel moved, and how it ended.
#[derive(Debug, Default)]
pub(crate) struct Relayed {
    /// Bytes from the client to the upstream.
    pub out: u64,
    /// Bytes from the upstream to the client.
    pub back: u64,
    pub client_first: Option<Instant>,
    pub upstream_first: Option<Instant>,
    /// Of `out + back`, the bytes moved by splice.
    pub spliced: u64,
    pub error: Option<io::Error>,
}

/// The io the listener gives hyper (see `listener.rs`).
type ClientIo = TokioIo<GuardedIo<TcpStream>>;

/// Relays until either side is done; every byte moved goes to `meter` (when given).
pub(crate) async fn relay(
    client: Upgraded,
    upstream: TcpStream,
    meter: Option<Arc<EgressMeter>>,
) -> Relayed {
    match client.downcast::<ClientIo>() {
        // The client's socket and the bytes hyper had read past the CONNECT head.
        Ok(parts) => {
            let client = parts.io.into_inner().into_inner();
            relay_sockets(client, parts.read_buf, upstream, meter).await
        }
        Err(client) => {
            let relayed = copy(client, upstream).await;
            if let Some(meter) = meter {
                meter.sent(relayed.out);
                meter.received(relayed.back);
            }
            relayed
        }
    }
}

/// Both directions at once, in this task (no cross-task wake-ups per message).
pub(crate) async fn relay_sockets(
    mut client: TcpStream,
    read_ahead: Bytes,
    mut upstream: TcpStream,
    meter: Option<Arc<EgressMeter>>,
) -> Relayed {
    let (client_read, client_write) = client.split();
    let (upstream_read, upstream_write) = upstream.split();
    let mut out = Flow::new(meter.clone(), Direction::Out);
    let mut back = Flow::new(meter, Direction::In);
    let ended = tokio::try_join!(
        pump(client_read, upstream_write, read_ahead, &mut out),
        pump(upstream_read, client_write, Bytes::new(), &mut back),
    );
    out.report();
    back.report();
    Relayed {
        out: out.bytes,
        back: back.bytes,
        client_first: out.first,
        upstream_first: back.first,
        spliced: out.spliced + back.spliced,
        error: ended.err(),
    }
}

/// One direction's bytes: counted as they move, handed to the meter now and then.
struct Flow {
    bytes: u64,
    spliced: u64,
    first: Option<Instant>,
    meter: Option<Arc<EgressMeter>>,
    direction: Direction,
    unreported: u64,
    reported_at: Instant,
}

impl Flow {
    fn new(meter: Option<Arc<EgressMeter>>, direction: Direction) -> Flow {
        Flow {
            bytes: 0,
            spliced: 0,
            first: None,
            meter,
            direction,
            unreported: 0,
            reported_at: Instant::now(),
        }
    }

    fn moved(&mut self, n: usize) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.bytes += n as u64;
        self.unreported += n as u64;
        if now.saturating_duration_since(self.reported_at) >= REPORT_EVERY {
            self.reported_at = now;
            self.report();
        }
    }

    /// Hands the bytes not reported yet to the meter.
    fn report(&mut self) {
        let n = std::mem::take(&mut self.unreported);
        match (&self.meter, self.direction) {
            (Some(meter), Direction::Out) => meter.sent(n),
            (Some(meter), Direction::In) => meter.received(n),
            (None, _) => {}
        }
    }
}

/// One direction: `from` → `to` until `from` ends, then half-closes `to`.
async fn pump(
    from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    read_ahead: Bytes,
    flow: &mut Flow,
) -> io::Result<()> {
    if !read_ahead.is_empty() {
        flow.moved(read_ahead.len());
        to.write_all(&read_ahead).await?;
    }
    // Made on the first bulk read; None after a failure (then buffered for good).
    let mut pipe: Option<Pipe> = None;
    let mut splice_ok = true;
    let mut bulk = false;
    loop {
        if bulk && splice_ok {
            if pipe.is_none() {
                pipe = Pipe::new().ok();
            }
            if let Some(p) = &pipe {
                match splice_in(from.as_ref(), p).await {
                    Ok(0) => break,
                    Ok(n) => {
                        flow.moved(n);
                        flow.spliced += n as u64;
                        splice_out(p, to.as_ref(), n).await?;
                        bulk = n >= BUF;
                        continue;
                    }
                    Err(err) if unsupported(&err) => splice_ok = false,
                    Err(err) => return Err(err),
                }
            } else {
                splice_ok = false;
            }
        }
        let n = move_some(from.as_ref(), &mut to).await?;
        if n == 0 {
            break;
        }
        flow.moved(n);
        bulk = n >= BUF;
    }
    // The other side may still talk: pass the end on, as a TCP half-close.
    match to.shutdown().await {
        Err(err) if err.kind() != io::ErrorKind::NotConnected => Err(err),
        _ => Ok(()),
    }
}

thread_local! {
    /// Where small messages pass through: one buffer per thread, not one per tunnel, so a
    /// thousand open tunnels (idle most of the time) hold no buffer at all.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(BUF));
}

/// Moves one read's worth from `from` to `to` once `from` is readable: read into this
/// thread's scratch buffer and written straight on; only what `to` cannot take at once is
/// copied out to wait for it. A short read means the socket is drained: its readiness is
/// cleared under the same event, as tokio's own reads do, so the next call waits instead of
/// reading EAGAIN. Returns the bytes moved; 0 at the end of the stream.
async fn move_some(from: &TcpStream, to: &mut WriteHalf<'_>) -> io::Result<usize> {
    loop {
        from.readable().await?;
        let moved = SCRATCH.with_borrow_mut(|buf| -> io::Result<Option<(usize, Vec<u8>)>> {
            buf.clear();
            let mut got = 0;
            let read = from.try_io(Interest::READABLE, || {
                got = rustix::io::read(from, rustix::buffer::spare_capacity(buf))?;
                if got > 0 && got < BUF {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(())
            });
            match read {
                // The end of the stream: nothing to pass on.
                Ok(()) if got == 0 => return Ok(Some((0, Vec::new()))),
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock && got > 0 => {}
                // Woken without data: wait again.
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(err) => return Err(err),
            }
            let written = match to.as_ref().try_write(&buf[..got]) {
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => 0,
                Err(err) => return Err(err),
            };
            Ok(Some((got, buf[written..got].to_vec())))
        })?;
        let Some((got, rest)) = moved else {
            continue;
        };
        if !rest.is_empty() {
            to.write_all(&rest).await?;
        }
        return Ok(got);
    }
}

/// splice(2) refused for these descriptors (not for this moment).
fn unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
    )
}

/// Socket → pipe: what the socket holds, up to the pipe's size (the pipe is empty here).
async fn splice_in(from: &TcpStream, pipe: &Pipe) -> io::Result<usize> {
    loop {
        from.readable().await?;
        // tokio clears the readiness on EAGAIN, so the next `readable()` waits for an event.
        match from.try_io(Interest::READABLE, || splice(from, &pipe.write, pipe.size)) {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            moved => return moved,
        }
    }
}

/// Pipe → socket: all `n` bytes the pipe holds.
async fn splice_out(pipe: &Pipe, to: &TcpStream, mut n: usize) -> io::Result<()> {
    while n > 0 {
        to.writable().await?;
        match to.try_io(Interest::WRITABLE, || splice(&pipe.read, to, n)) {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(m) => n -= m,
        }
    }
    Ok(())
}

fn splice(from: impl AsFd, to: impl AsFd, len: usize) -> io::Result<usize> {
    // No offsets: neither end is seekable.
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    Ok(rustix::pipe::splice(from, None, to, None, len, flags)?)
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    size: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        // A refusal (above /proc/sys/fs/pipe-max-size) keeps the default size.
        let _ = rustix::pipe::fcntl_setpipe_size(&write, PIPE_SIZE);
        let size = rustix::pipe::fcntl_getpipe_size(&write).unwrap_or(64 * 1024);
        Ok(Pipe {
            read,
            write,
            size: size.max(4096),
        })
    }
}

/// tokio's buffered copy through hyper's `Upgraded`.
async fn copy(client: Upgraded, upstream: TcpStream) -> Relayed {
    let mut client = FirstByte::new(TokioIo::new(client));
    let mut upstream = FirstByte::new(upstream);
    let copied =
        tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUF, BUF).await;
    Relayed {
        out: client.bytes,
        back: upstream.bytes,
        client_first: client.first,
        upstream_first: upstream.first,
        spliced: 0,
        error: copied.err(),
    }
}

/// Notes when the first byte was read, and how many bytes were.
struct FirstByte<T> {
    inner: T,
    first: Option<Instant>,
    bytes: u64,
}

impl<T> FirstByte<T> {
    fn new(inner: T) -> Self {
        FirstByte {
            inner,
            first: None,
            bytes: 0,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FirstByte<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            if self.first.is_none() {
                self.first = Some(Instant::now());
            }
            self.bytes += n as u64;
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FirstByte<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Counter;
    use crate::proxy::tests::{count, start};
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    const LIMIT: Duration = Duration::from_secs(30);

    fn meter(recorder: &crate::metrics::Recorder) -> Arc<EgressMeter> {
        let path = crate::metrics::EgressPath {
            class: crate::metrics::PathClass::Nat,
            usd_per_byte_in: 0.0,
            usd_per_byte_out: 0.0,
        };
        let meter = EgressMeter::new(recorder.clone(), "up.test:443".into(), path);
        meter.settle(path);
        meter
    }

    #[tokio::test]
    async fn an_open_tunnel_reports_its_bytes_as_they_move() {
        let (mut client, client_end) = pair().await;
        let (mut upstream, upstream_end) = pair().await;
        let recorder = crate::metrics::Recorder::new();
        let relay = tokio::spawn(relay_sockets(
            client_end,
            Bytes::new(),
            upstream_end,
            Some(meter(&recorder)),
        ));
        let mut buf = [0u8; 16];
        client.write_all(b"ping").await.unwrap();
        upstream.read_exact(&mut buf[..4]).await.unwrap();
        tokio::time::sleep(REPORT_EVERY + Duration::from_millis(100)).await;
        client.write_all(b"ping").await.unwrap();
        upstream.read_exact(&mut buf[..4]).await.unwrap();
        // The relay counts a message just after passing it on.
        for _ in 0..100 {
            if recorder.peek(Counter::BytesOut) == 8 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            recorder.peek(Counter::BytesOut),
            8,
            "counted while the tunnel is open"
        );
        drop((client, upstream));
        let relayed = tokio::time::timeout(LIMIT, relay).await.unwrap().unwrap();
        assert_eq!(relayed.out, 8);
        assert_eq!(recorder.peek(Counter::BytesOut), 8, "and only once");
    }

    /// A connected loopback pair: (the end the test drives, the end the relay gets).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (far, _) = listener.accept().await.unwrap();
        (near, far)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Writes `data`, half-closes, and reads the peer to EOF, at the same time.
    async fn exchange(stream: TcpStream, data: Vec<u8>) -> Vec<u8> {
        let (mut r, mut w) = stream.into_split();
        let writer = tokio::spawn(async move {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        got
    }

    #[tokio::test]
    async fn bulk_both_ways_is_spliced_intact_with_read_ahead_first_and_half_closes_passed_on() {
        let (client, client_end) = pair().await;
        let (upstream, upstream_end) = pair().await;
        let recorder = crate::metrics::Recorder::new();
        let relay = tokio::spawn(relay_sockets(
            client_end,
            Bytes::from_static(b"ahead:"),
            upstream_end,
            Some(meter(&recorder)),
        ));
        let up_data = pattern(8 << 20, 7);
        let client_data = pattern(6 << 20, 3);
        let (to_client, to_upstream) = tokio::time::timeout(LIMIT, async {
            tokio::join!(
                exchange(client, client_data.clone()),
                exchange(upstream, up_data.clone())
            )
        })
        .await
        .expect("relay finished");
        assert!(to_client == up_data, "upstream → client intact");
        assert_eq!(&to_upstream[..6], b"ahead:");
        assert!(
            to_upstream[6..] == client_data[..],
            "client → upstream intact"
        );
        let relayed = relay.await.unwrap();
        assert!(relayed.error.is_none(), "{:?}", relayed.error);
        assert_eq!(relayed.out, (6 << 20) + 6);
        assert_eq!(relayed.back, 8 << 20);
        // Every byte reached the meter once, whether reported on the way or at the end.
        assert_eq!(recorder.peek(Counter::BytesOut), relayed.out);
        assert_eq!(recorder.peek(Counter::BytesIn), relayed.back);
        assert_eq!(
            recorder.peek(Counter::EgressBytesNat),
            relayed.out + relayed.back
        );
        assert!(relayed.client_first.is_some() && relayed.upstream_first.is_some());
        assert!(
            relayed.spliced > (8 << 20),
            "bulk went through splice: {relayed:?}"
        );
    }

    #[tokio::test]
    async fn small_messages_go_back_and_forth_through_the_buffer() {
        let (mut client, client_end) = pair().await;
        let (mut upstream, upstream_end) = pair().await;
        let relay = tokio::spawn(relay_sockets(client_end, Bytes::new(), upstream_end, None));
        tokio::time::timeout(LIMIT, async {
            let mut buf = [0u8; 64];
            for i in 0..200u32 {
                let ping = format!("ping {i}");
                client.write_all(ping.as_bytes()).await.unwrap();
                let n = upstream.read(&mut buf).await.unwrap();
                assert_eq!(&buf[..n], ping.as_bytes());
                upstream.write_all(b"pong").await.unwrap();
                let n = client.read(&mut buf).await.unwrap();
                assert_eq!(&buf[..n], b"pong");
            }
            // The server closes first; the client still gets its EOF.
            drop(upstream);
            assert_eq!(client.read(&mut buf).await.unwrap(), 0);
            drop(client);
        })
        .await
        .expect("ping-pong finished");
        let relayed = relay.await.unwrap();
        assert_eq!(relayed.spliced, 0, "{relayed:?}");
        assert_eq!(relayed.back, 200 * 4);
    }

    #[tokio::test]
    async fn a_reset_on_one_side_ends_the_tunnel() {
        let (client, client_end) = pair().await;
        let (upstream, upstream_end) = pair().await;
        let relay = tokio::spawn(relay_sockets(client_end, Bytes::new(), upstream_end, None));
        // RST from the upstream while the client stays silent and open.
        #[allow(deprecated)]
        upstream.set_linger(Some(Duration::ZERO)).unwrap();
        drop(upstream);
        let relayed = tokio::time::timeout(LIMIT, relay)
            .await
            .expect("the relay ends")
            .unwrap();
        drop(client);
        assert_eq!(relayed.out + relayed.back, 0);
    }

    /// Through the real listener: the bytes a client sends right behind its CONNECT (before
    /// the 200) reach the upstream first, bulk data arrives intact, the counters add up.
    #[tokio::test]
    async fn the_listeners_tunnels_take_over_the_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap().to_string();
        let up_data = pattern(4 << 20, 11);
        let sent = up_data.clone();
        let upstream = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            exchange(s, sent).await
        });
        let proxy = start(&[]).await;
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        let head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\nearly bytes|");
        client.write_all(head.as_bytes()).await.unwrap();
        let client_data = pattern(3 << 20, 5);
        let got = tokio::time::timeout(LIMIT, async {
            let mut reply = Vec::new();
            while !reply.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                assert_eq!(
                    client.read(&mut byte).await.unwrap(),
                    1,
                    "reply ended early"
                );
                reply.push(byte[0]);
            }
            assert!(reply.starts_with(b"HTTP/1.1 200"), "{reply:?}");
            exchange(client, client_data.clone()).await
        })
        .await
        .expect("tunnel finished");
        assert!(got == up_data, "upstream → client intact");
        let at_upstream = upstream.await.unwrap();
        assert_eq!(&at_upstream[..12], b"early bytes|");
        assert!(
            at_upstream[12..] == client_data[..],
            "client → upstream intact"
        );
        // The tunnel's figures land when its task ends.
        let mut snap = proxy.take();
        for _ in 0..50 {
            if count(&snap, Counter::BytesIn) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            snap = proxy.take();
        }
        assert_eq!(count(&snap, Counter::BytesIn), 4 << 20);
        assert_eq!(count(&snap, Counter::BytesOut), (3 << 20) + 12);
    }
}
