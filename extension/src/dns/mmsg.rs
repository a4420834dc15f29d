//! UDP I/O for the listener without an event loop: recvmmsg(2) takes every query already
//! queued in one call, and sendmmsg(2) sends several answers in one; per query that replaces
//! a poll, a read and a write. System calls and the wake-ups between them are most of what a
//! cache hit costs.
//!
//! The only `unsafe` of the DNS module lives here: the kernel is handed pointers into buffers
//! this module owns and does not move or resize while a call is in progress.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;
use std::ptr;

/// Datagrams moved per system call at most.
pub const BATCH: usize = 32;

/// Received datagrams: `BATCH` buffers of `buf_len` bytes each, plus their senders.
pub struct Inbox {
    buf_len: usize,
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_in>,
    lens: [usize; BATCH],
    valid: [bool; BATCH],
    count: usize,
}

impl Inbox {
    pub fn new(buf_len: usize) -> Inbox {
        Inbox {
            buf_len,
            bufs: vec![0; buf_len * BATCH],
            // SAFETY: sockaddr_in is plain old data; all zeroes is a valid (unspecified) value.
            addrs: vec![unsafe { zeroed() }; BATCH],
            lens: [0; BATCH],
            valid: [false; BATCH],
            count: 0,
        }
    }

    /// Blocks until a datagram arrives (or the socket's read timeout passes), then takes
    /// whatever else is already queued, up to `most` (at most `BATCH`). Returns how many.
    pub fn receive(&mut self, fd: RawFd, most: usize) -> io::Result<usize> {
        // SAFETY: iovec and mmsghdr are plain old data; zeroed values are valid to fill in.
        let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for (i, (iov, header)) in iovs.iter_mut().zip(headers.iter_mut()).enumerate() {
            iov.iov_base = self.bufs[i * self.buf_len..].as_mut_ptr().cast();
            iov.iov_len = self.buf_len;
            header.msg_hdr.msg_name = ptr::from_mut(&mut self.addrs[i]).cast();
            header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            header.msg_hdr.msg_iov = iov;
            header.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at a live iovec and sockaddr_in above, and every iovec
        // at a distinct `buf_len`-byte slice of `self.bufs`; none moves until the call returns.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                headers.as_mut_ptr(),
                most.clamp(1, BATCH) as libc::c_uint,
                libc::MSG_WAITFORONE,
                ptr::null_mut(),
            )
        };
        if n < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        self.count = n as usize;
        for (i, header) in headers.iter().take(self.count).enumerate() {
            self.lens[i] = (header.msg_len as usize).min(self.buf_len);
            self.valid[i] = header.msg_hdr.msg_namelen as usize == size_of::<libc::sockaddr_in>()
                && self.addrs[i].sin_family == libc::AF_INET as libc::sa_family_t;
        }
        Ok(self.count)
    }

    /// The `i`th datagram of the last batch and its sender (`None` for a non-IPv4 sender,
    /// which a socket bound to 127.0.0.1 never has).
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddrV4)> {
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
pub struct Outbox {
    bufs: Vec<Vec<u8>>,
    addrs: Vec<libc::sockaddr_in>,
    count: usize,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox {
            bufs: (0..BATCH).map(|_| Vec::with_capacity(512)).collect(),
            // SAFETY: sockaddr_in is plain old data; all zeroes is a valid value.
            addrs: vec![unsafe { zeroed() }; BATCH],
            count: 0,
        }
    }
}

impl Outbox {
    /// The buffer the next answer is written into; it is sent only after [`Outbox::commit`].
    /// Full (never, when flushed after each batch of at most `BATCH` queries): reuses the last.
    pub fn next_buffer(&mut self) -> &mut Vec<u8> {
        &mut self.bufs[self.count.min(BATCH - 1)]
    }

    pub fn commit(&mut self, to: SocketAddrV4) {
        if self.count < BATCH {
            self.addrs[self.count] = to_sockaddr(to);
            self.count += 1;
        }
    }

    /// Sends every committed answer. UDP is lossy by contract: an answer the kernel refuses
    /// (a full buffer) is dropped and the client asks again.
    pub fn flush(&mut self, fd: RawFd) {
        let mut sent = 0;
        // Each pass sends at least one datagram or skips one, so this ends.
        while sent < self.count {
            sent += self.send_from(fd, sent);
        }
        self.count = 0;
    }

    fn send_from(&mut self, fd: RawFd, first: usize) -> usize {
        let pending = self.count - first;
        // SAFETY: plain old data, as above.
        let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for (i, (iov, header)) in iovs
            .iter_mut()
            .zip(headers.iter_mut())
            .take(pending)
            .enumerate()
        {
            let buf = &mut self.bufs[first + i];
            iov.iov_base = buf.as_mut_ptr().cast();
            iov.iov_len = buf.len();
            header.msg_hdr.msg_name = ptr::from_mut(&mut self.addrs[first + i]).cast();
            header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            header.msg_hdr.msg_iov = iov;
            header.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the first `pending` headers point at live iovecs, addresses and answer
        // buffers owned by `self`, unchanged until the call returns.
        let n = unsafe { libc::sendmmsg(fd, headers.as_mut_ptr(), pending as libc::c_uint, 0) };
        // On an error, skip the datagram the kernel refused and carry on with the rest.
        (n.max(1) as usize).min(pending)
    }
}

/// Sends one datagram without ever blocking (for answers finished on the async runtime);
/// UDP may drop it, and the client asks again.
pub fn send_now(fd: RawFd, data: &[u8], to: SocketAddrV4) -> io::Result<()> {
    let addr = to_sockaddr(to);
    // SAFETY: `data` and `addr` are live for the duration of the call; the lengths match.
    let n = unsafe {
        libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT,
            ptr::from_ref(&addr).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Asks for a larger socket receive buffer; the kernel caps it at `net.core.rmem_max`.
pub fn set_receive_buffer(fd: RawFd, bytes: usize) {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: `value` is a live c_int and the length passed is its size.
    let _ = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            ptr::from_ref(&value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

fn to_sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: plain old data, as above.
    let mut raw: libc::sockaddr_in = unsafe { zeroed() };
    raw.sin_family = libc::AF_INET as libc::sa_family_t;
    raw.sin_port = addr.port().to_be();
    raw.sin_addr = libc::in_addr {
        s_addr: u32::from(*addr.ip()).to_be(),
    };
    raw
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
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    #[test]
    fn batches_come_in_and_go_out_with_one_call_each() {
        let server = UdpSocket::bind("127.0.0.1:0").expect("bind");
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
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
                    send_now(server.as_raw_fd(), &answer, from).expect("send");
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
}
