//! `bare-relay`: the least a CONNECT proxy can do, as a reference row in the proxy bench.
//!
//! ```text
//! bare-relay [ADDR]     (default 127.0.0.5:0; prints the bound address on its first line)
//! ```
//!
//! It reads a `CONNECT ip:port` head, connects, answers 200 and copies bytes both ways with
//! tokio's `copy_bidirectional` on one thread (egress-warden's default of one worker). No policy,
//! no DNS, no logs, no metrics, no limits: what it costs per connection and per message is the
//! kernel's TCP work plus an event loop, the floor under any proxy on the same machine. Only
//! CONNECT, only numeric targets; anything else is closed. A bench tool, not for any network
//! but loopback.

use std::io;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX_HEAD: usize = 8 * 1024;

#[tokio::main(flavor = "current_thread")]
async fn main() -> io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.5:0".to_string());
    let listener = TcpListener::bind(&addr).await?;
    println!("{}", listener.local_addr()?);
    loop {
        let (client, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = relay(client).await;
        });
    }
}

async fn relay(mut client: TcpStream) -> io::Result<()> {
    client.set_nodelay(true)?;
    let mut head = Vec::with_capacity(1024);
    let end = loop {
        if head.len() >= MAX_HEAD {
            return Ok(());
        }
        if client.read_buf(&mut head).await? == 0 {
            return Ok(());
        }
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let Some(target) = connect_target(&head[..end]) else {
        return Ok(());
    };
    let mut upstream = TcpStream::connect(target).await?;
    upstream.set_nodelay(true)?;
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    // Bytes the client sent right behind its head go first.
    upstream.write_all(&head[end..]).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// `CONNECT 127.0.0.2:443 HTTP/1.1` → 127.0.0.2:443.
fn connect_target(head: &[u8]) -> Option<SocketAddr> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    match (parts.next(), parts.next()) {
        (Some("CONNECT"), Some(target)) => target.parse().ok(),
        _ => None,
    }
}
