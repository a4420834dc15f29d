//! `bare-dns`: the least a UDP DNS server can do, as a reference row in the DNS bench.
//!
//! ```text
//! bare-dns ADDR       (e.g. 127.0.0.1:5353)
//! ```
//!
//! Every query gets the same A record (10.0.0.1, TTL 3600) for the name it asked, with no
//! cache, no lookup and no checks beyond finding the question's end. It receives and sends the
//! way egress-warden's UDP thread does (`recvmmsg` of everything queued; the answers together,
//! in one `sendmmsg`, when 16 or more queries were queued, else one by one), so what it costs per query is the kernel's datagram work plus the system calls:
//! the floor under egress-warden on the same machine. A bench tool, not for any network but
//! loopback.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;

const BATCH: usize = 32;
const TOGETHER: usize = BATCH / 2;
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
        let together = n >= TOGETHER;
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
