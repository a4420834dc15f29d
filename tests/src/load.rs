//! Load pieces shared by the memory test and the soak: an echo upstream, CONNECT tunnels
//! through the proxy, and what /proc says about a process.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream on 127.0.0.2 that sends back whatever it receives.
pub async fn echo_upstream() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.2:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}

/// What became of one tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tunnel {
    /// No answer to the CONNECT (refused, reset, timed out).
    Unanswered,
    /// Answered with this status (not 200).
    Refused(u16),
    /// 200, but the echo did not come back whole.
    Broken,
    Echoed,
}

/// CONNECT to `to` through the proxy on 127.0.0.1:`proxy`, then `bytes` sent and read back.
/// Returns the open stream with the outcome, so a caller can hold many at once.
pub async fn tunnel(proxy: u16, to: SocketAddr, bytes: usize) -> (Tunnel, Option<TcpStream>) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", proxy)).await else {
        return (Tunnel::Unanswered, None);
    };
    let head = format!("CONNECT {to} HTTP/1.1\r\nHost: {to}\r\n\r\n");
    if s.write_all(head.as_bytes()).await.is_err() {
        return (Tunnel::Unanswered, None);
    }
    let mut buf = vec![0u8; 4096];
    let mut got = 0;
    while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf[got..])).await {
            Ok(Ok(n)) if n > 0 && got + n < buf.len() => got += n,
            _ => return (Tunnel::Unanswered, None),
        }
    }
    let status = std::str::from_utf8(&buf[..got])
        .ok()
        .and_then(|h| h.split_whitespace().nth(1)?.parse::<u16>().ok())
        .unwrap_or(0);
    if status != 200 {
        return (Tunnel::Refused(status), None);
    }
    let payload = vec![b'x'; bytes];
    let mut back = vec![0u8; bytes];
    let echoed = async {
        s.write_all(&payload).await?;
        s.read_exact(&mut back).await
    };
    match tokio::time::timeout(Duration::from_secs(15), echoed).await {
        Ok(Ok(_)) if back == payload => (Tunnel::Echoed, Some(s)),
        _ => (Tunnel::Broken, Some(s)),
    }
}

/// Resident memory of `pid` in KiB (0 when it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Open file descriptors of `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Room for a thousand tunnels in one process: the soft limit on open files raised to the
/// hard one.
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit for this process.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
