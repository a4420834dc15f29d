//! `bare-dns`: the least a UDP DNS server can do, as a reference row in the DNS bench.
//!
//! ```text
//! bare-dns ADDR       (e.g. 127.0.0.1:5353)
//! ```
//!
//! Every query gets the same A record (10.0.0.1, TTL 3600) for the name it asked, with no
//! cache, no lookup and no checks beyond finding the question's end. It receives and sends the
//! way egress-warden's UDP thread does (`recvmmsg` of everything queued; the answers together,
//! in one `sendmmsg`, when 16 or more queries were queued or the thread is short of CPU, else
//! one by one), so what it costs per query is the kernel's datagram work plus the system calls:
//! the floor under egress-warden on the same machine. A bench tool, not for any network but
//! loopback.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const BATCH: usize = 32;
const TOGETHER: usize = BATCH / 2;
const SHORT_FOR: Duration = Duration::from_millis(20);
const CHECK_EVERY: Duration = Duration::from_millis(10);
const SLICE_WAIT_NS: u64 = 100_000;
const MAX: usize = 512;
/// Name pointer to offset 12 (the question), type A, class IN, TTL 3600, 4 bytes: 10.0.0.1.
const ANSWER: [u8; 16] = [0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0x0e, 0x10, 0, 4, 10, 0, 0, 1];

fn main() -> io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .ok_or_else(|| io::Error::other("usage: bare-dns ADDR"))?;
    let socket = UdpSocket::bind(addr)?;
    let fd = socket.as_raw_fd();
    let mut bufs = vec![[0u8; MAX + ANSWER.len()]; BATCH];
    // SAFETY: plain C structs; all zeroes is a valid value for each.
    let mut addrs: Vec<libc::sockaddr_in> = vec![unsafe { zeroed() }; BATCH];
    let mut iovs: Vec<libc::iovec> = vec![unsafe { zeroed() }; BATCH];
    let mut headers: Vec<libc::mmsghdr> = vec![unsafe { zeroed() }; BATCH];
    // Short of CPU (see egress-warden's dns/cpu_share.rs): until `short_until`.
    let (mut last_check, mut short_until) = (Instant::now(), Instant::now());
    let schedstat = std::fs::File::open("/proc/thread-self/schedstat").ok();
    let mut waits = schedstat
        .as_ref()
        .and_then(read_schedstat)
        .unwrap_or_default();
    loop {
        for i in 0..BATCH {
            iovs[i].iov_base = bufs[i].as_mut_ptr().cast();
            iovs[i].iov_len = MAX;
            headers[i].msg_hdr.msg_iov = &mut iovs[i];
            headers[i].msg_hdr.msg_iovlen = 1;
            headers[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
            headers[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
        }
        // SAFETY: every header points at a live buffer and address of this loop.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                headers.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            continue;
        }
        let n = n as usize;
        let now = Instant::now();
        if now.duration_since(last_check) >= CHECK_EVERY {
            last_check = now;
            if let Some((wait, slices)) = schedstat.as_ref().and_then(read_schedstat) {
                let (waited, new_slices) =
                    (wait.saturating_sub(waits.0), slices.saturating_sub(waits.1));
                if new_slices > 0 && waited / new_slices >= SLICE_WAIT_NS {
                    short_until = now + SHORT_FOR;
                }
                waits = (wait, slices);
            }
        }
        let together = now < short_until || n >= TOGETHER;
        let mut ready = 0;
        for i in 0..n {
            let len = headers[i].msg_len as usize;
            let Some(answer_len) = answer(&mut bufs[i], len) else {
                continue;
            };
            // Compact the answers to the front, keeping each one's address.
            iovs[ready].iov_base = bufs[i].as_mut_ptr().cast();
            iovs[ready].iov_len = answer_len;
            headers[ready].msg_hdr.msg_iov = &mut iovs[ready];
            headers[ready].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
            headers[ready].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
            ready += 1;
            if !together {
                send(fd, &mut headers[ready - 1..ready]);
                ready = 0;
            }
        }
        send(fd, &mut headers[..ready]);
    }
}

/// This thread's (time waited for a CPU in ns, time slices), from its schedstat.
fn read_schedstat(file: &std::fs::File) -> Option<(u64, u64)> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 96];
    let len = file.read_at(&mut buf, 0).ok()?;
    let mut fields = std::str::from_utf8(buf.get(..len)?)
        .ok()?
        .split_ascii_whitespace();
    let _run = fields.next()?;
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

fn send(fd: i32, headers: &mut [libc::mmsghdr]) {
    if headers.is_empty() {
        return;
    }
    // SAFETY: the headers point at live buffers and addresses; lossy like any UDP server.
    unsafe { libc::sendmmsg(fd, headers.as_mut_ptr(), headers.len() as u32, 0) };
}

/// Turns the query in `buf[..len]` into its answer in place; its length, or None to drop it.
fn answer(buf: &mut [u8], len: usize) -> Option<usize> {
    if len < 12 || buf[2] & 0x80 != 0 || buf[4..6] != [0, 1] {
        return None;
    }
    let mut at = 12;
    while at < len && buf[at] != 0 {
        at += 1 + buf[at] as usize;
    }
    let end = at + 5;
    if end > len {
        return None;
    }
    buf[2] = 0x84 | (buf[2] & 0x01); // QR, AA, RD copied
    buf[3] = 0x80; // RA, NOERROR
    buf[6..12].copy_from_slice(&[0, 1, 0, 0, 0, 0]);
    buf[end..end + ANSWER.len()].copy_from_slice(&ANSWER);
    Some(end + ANSWER.len())
}
