//! UDP I/O for the listener without an event loop: recvmmsg(2) takes every query already
//! queued in one call, and sendmmsg(2) sends several answers in one; per query that replaces
//! a poll, a read and a write. System calls and the wake-ups between them are most of what a
//! cache hit costs.
//!
//! The only `unsafe` of the DNS module lives here, because neither the standard library nor
//! socket2 offers the two calls (rustix has sendmmsg, not recvmmsg): the kernel is handed
//! pointers into buffers this module owns and does not move or resize while a call is in
//! progress.

use socket2::{SockAddr, SockRef};
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::RawFd;
use std::ptr;

/// Datagrams moved per system call at most.
pub(super) const BATCH: usize = 32;

/// The kernel's view of a batch: one header and one iovec per datagram. Kept between calls
/// and refilled only for the entries used, not zeroed on every call (with answers sent one
/// at a time, that would be 2.5 KiB per answer).
struct Headers {
    iovs: Box<[libc::iovec; BATCH]>,
    headers: Box<[libc::mmsghdr; BATCH]>,
}

impl Headers {
    fn new() -> Headers {
        // SAFETY: iovec and mmsghdr are plain C structs of integers and raw pointers, for which
        // all zeroes is a valid value (null pointers, zero lengths).
        unsafe {
            Headers {
                iovs: Box::new(zeroed()),
                headers: Box::new(zeroed()),
            }
        }
    }

    /// Points entry `i` at `buf` (`len` bytes) and the address `addr`.
    fn set(&mut self, i: usize, buf: *mut u8, len: usize, addr: *mut libc::sockaddr_in) {
        self.iovs[i].iov_base = buf.cast();
        self.iovs[i].iov_len = len;
        let header = &mut self.headers[i].msg_hdr;
        header.msg_name = addr.cast();
        header.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        header.msg_iov = ptr::from_mut(&mut self.iovs[i]);
        header.msg_iovlen = 1;
    }
}

/// Received datagrams: `BATCH` buffers of `buf_len` bytes each, plus their senders.
pub(super) struct Inbox {
    buf_len: usize,
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_in>,
    kernel: Headers,
    lens: [usize; BATCH],
    valid: [bool; BATCH],
    count: usize,
}

impl Inbox {
    pub(super) fn new(buf_len: usize) -> Inbox {
        Inbox {
            buf_len,
            bufs: vec![0; buf_len * BATCH],
            addrs: vec![to_sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); BATCH],
            kernel: Headers::new(),
            lens: [0; BATCH],
            valid: [false; BATCH],
            count: 0,
        }
    }

    /// Blocks until a datagram arrives (or the socket's read timeout passes), then takes
    /// whatever else is already queued, up to `most` (at most `BATCH`). Returns how many.
    pub(super) fn receive(&mut self, fd: RawFd, most: usize) -> io::Result<usize> {
        let most = most.clamp(1, BATCH);
        for i in 0..most {
            let buf = self.bufs[i * self.buf_len..].as_mut_ptr();
            let addr = ptr::from_mut(&mut self.addrs[i]);
            self.kernel.set(i, buf, self.buf_len, addr);
        }
        // SAFETY: the first `most` headers (the count passed) point at live iovecs and
        // sockaddr_ins of `self` with their true sizes (set above), and every iovec at a
        // distinct `buf_len`-byte slice of `self.bufs`; `&mut self` keeps all of them from
        // moving or being touched otherwise until the call returns. The timeout is null.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.kernel.headers.as_mut_ptr(),
                most as libc::c_uint,
                libc::MSG_WAITFORONE,
                ptr::null_mut(),
            )
        };
        if n < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        self.count = n as usize;
        for (i, header) in self.kernel.headers.iter().take(self.count).enumerate() {
            self.lens[i] = (header.msg_len as usize).min(self.buf_len);
            self.valid[i] = header.msg_hdr.msg_namelen as usize == size_of::<libc::sockaddr_in>()
                && self.addrs[i].sin_family == libc::AF_INET as libc::sa_family_t;
        }
        Ok(self.count)
    }

    /// The `i`th datagram of the last batch and its sender (`None` for a non-IPv4 sender,
    /// which a socket bound to 127.0.0.1 never has).
    pub(super) fn get(&self, i: usize) -> Option<(&[u8], SocketAddrV4)> {
        if i >= self.count || !self.valid[i] {
            return None;
        }
        let start = i * self.buf_len;
        Some((
            &self.bufs[start..start + self.lens[i]],
            from_sockaddr(&self.addrs[i]),
        ))
    }
}

/// Answers waiting to be sent together.
pub(super) struct Outbox {
    bufs: Vec<Vec<u8>>,
    addrs: Vec<libc::sockaddr_in>,
    kernel: Headers,
    count: usize,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox {
            bufs: (0..BATCH).map(|_| Vec::with_capacity(512)).collect(),
            addrs: vec![to_sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); BATCH],
            kernel: Headers::new(),
            count: 0,
        }
    }
}

impl Outbox {
    /// The buffer the next answer is written into; it is sent only after [`Outbox::commit`].
    /// Full (never, when flushed after each batch of at most `BATCH` queries): reuses the last.
    pub(super) fn next_buffer(&mut self) -> &mut Vec<u8> {
        &mut self.bufs[self.count.min(BATCH - 1)]
    }

    pub(super) fn commit(&mut self, to: SocketAddrV4) {
        if self.count < BATCH {
            self.addrs[self.count] = to_sockaddr(to);
            self.count += 1;
        }
    }

    /// Sends every committed answer. UDP is lossy by contract: an answer the kernel refuses
    /// (a full buffer) is dropped and the client asks again.
    pub(super) fn flush(&mut self, fd: RawFd) {
        let mut sent = 0;
        // Each pass sends at least one datagram or skips one, so this ends.
        while sent < self.count {
            sent += self.send_from(fd, sent);
        }
        self.count = 0;
    }

    fn send_from(&mut self, fd: RawFd, first: usize) -> usize {
        let pending = self.count - first;
        for i in 0..pending {
            let buf = &mut self.bufs[first + i];
            let (data, len) = (buf.as_mut_ptr(), buf.len());
            let addr = ptr::from_mut(&mut self.addrs[first + i]);
            self.kernel.set(i, data, len, addr);
        }
        // SAFETY: the first `pending` headers (the count passed) point at live iovecs,
        // sockaddr_ins and answer buffers of `self` with their true lengths (set above);
        // `&mut self` keeps them unchanged until the call returns, and the kernel only reads.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                self.kernel.headers.as_mut_ptr(),
                pending as libc::c_uint,
                0,
            )
        };
        // On an error, skip the datagram the kernel refused and carry on with the rest.
        (n.max(1) as usize).min(pending)
    }
}

/// Sends one datagram without ever blocking (for answers finished on the async runtime);
/// UDP may drop it, and the client asks again.
pub(super) fn send_now(socket: &UdpSocket, data: &[u8], to: SocketAddrV4) -> io::Result<()> {
    SockRef::from(socket)
        .send_to_with_flags(data, &SockAddr::from(to), libc::MSG_DONTWAIT)
        .map(drop)
}

/// Asks for a larger socket receive buffer; the kernel caps it at `net.core.rmem_max`.
pub(super) fn set_receive_buffer(socket: &UdpSocket, bytes: usize) {
    let _ = SockRef::from(socket).set_recv_buffer_size(bytes);
}

fn to_sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn from_sockaddr(raw: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(raw.sin_addr.s_addr)),
        u16::from_be(raw.sin_port),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    /// A loopback socket whose reads give up after 2 s instead of hanging the test.
    fn loopback_socket() -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        socket
    }

    #[test]
    fn batches_come_in_and_go_out_with_one_call_each() {
        let server = loopback_socket();
        let client = loopback_socket();
        let to = server.local_addr().expect("addr");
        for i in 0..5u8 {
            client.send_to(&[i; 3], to).expect("send");
        }
        let mut inbox = Inbox::new(16);
        let mut outbox = Outbox::default();
        let mut got = 0;
        while got < 5 {
            let n = inbox.receive(server.as_raw_fd(), BATCH).expect("receive");
            for i in 0..n {
                let (data, from) = inbox.get(i).expect("ipv4 sender");
                assert_eq!(data.len(), 3);
                if i % 2 == 0 {
                    let mut answer = data.to_vec();
                    answer.push(0xff);
                    send_now(&server, &answer, from).expect("send");
                } else {
                    let out = outbox.next_buffer();
                    out.clear();
                    out.extend_from_slice(data);
                    out.push(0xff);
                    outbox.commit(from);
                }
            }
            outbox.flush(server.as_raw_fd());
            got += n;
        }
        let mut buf = [0u8; 16];
        let mut answers: Vec<Vec<u8>> = (0..5)
            .map(|_| {
                let (len, _) = client.recv_from(&mut buf).expect("answer");
                buf[..len].to_vec()
            })
            .collect();
        answers.sort();
        let expected: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i, i, i, 0xff]).collect();
        assert_eq!(answers, expected);
    }

    #[test]
    fn headers_kept_between_calls_describe_each_new_batch() {
        let server = loopback_socket();
        let to = server.local_addr().expect("addr");
        let clients = [loopback_socket(), loopback_socket()];
        let mut inbox = Inbox::new(64);
        let mut outbox = Outbox::default();
        // A batch of three from one client, then one longer datagram from another: the second
        // call must report its own length and sender, not what the first left behind.
        for round in 0..2 {
            let (client, sizes): (&UdpSocket, &[usize]) = if round == 0 {
                (&clients[0], &[3, 4, 5])
            } else {
                (&clients[1], &[40])
            };
            for &size in sizes {
                client.send_to(&vec![round as u8; size], to).expect("send");
            }
            let mut seen = Vec::new();
            while seen.len() < sizes.len() {
                let n = inbox.receive(server.as_raw_fd(), BATCH).expect("receive");
                for i in 0..n {
                    let (data, from) = inbox.get(i).expect("ipv4 sender");
                    assert_eq!(SocketAddr::V4(from), client.local_addr().expect("addr"));
                    assert!(data.iter().all(|&b| b == round as u8));
                    seen.push(data.len());
                    let out = outbox.next_buffer();
                    out.clear();
                    out.extend_from_slice(data);
                    outbox.commit(from);
                }
                outbox.flush(server.as_raw_fd());
            }
            assert_eq!(seen, sizes);
            let mut buf = [0u8; 64];
            for &size in sizes {
                let (len, from) = client.recv_from(&mut buf).expect("answer");
                assert_eq!((len, from), (size, to));
            }
        }
    }
}
