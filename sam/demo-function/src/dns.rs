//! One `A` query over UDP to a resolver named by `DEMO_DNS_SERVER`: the demo's stand-in for
//! the system resolver, so that `scripts/demo` can point the function at a local one. Like
//! glibc, Node and Python's socket module, it caches nothing: every lookup is a query.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;

const TIMEOUT: Duration = Duration::from_secs(2);

fn query(id: u16, host: &str) -> Result<Vec<u8>, String> {
    // Header: id, RD set, one question.
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in host.trim_end_matches('.').split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|l| (1..64).contains(l))
            .ok_or_else(|| format!("{host:?} is not a DNS name"))?;
        q.push(len);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    Ok(q)
}

/// The offset just past the (possibly compressed) name at `i`.
fn skip_name(buf: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let len = *buf.get(i)?;
        if len == 0 {
            return Some(i + 1);
        }
        if len & 0xC0 == 0xC0 {
            return Some(i + 2);
        }
        i += 1 + usize::from(len);
    }
}

fn u16_at(buf: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*buf.get(i)?, *buf.get(i + 1)?]))
}

/// The first `A` record of an answer to query `id`.
pub(crate) fn parse_answer(buf: &[u8], id: u16) -> Result<Ipv4Addr, String> {
    let bad = || "malformed DNS answer".to_string();
    if u16_at(buf, 0) != Some(id) {
        return Err("answer to another query".into());
    }
    let rcode = buf.get(3).ok_or_else(bad)? & 0x0F;
    if rcode != 0 {
        let name = if rcode == 3 { " (NXDOMAIN)" } else { "" };
        return Err(format!("DNS rcode {rcode}{name}"));
    }
    let answers = u16_at(buf, 6).ok_or_else(bad)?;
    let mut i = skip_name(buf, 12).ok_or_else(bad)? + 4;
    for _ in 0..answers {
        i = skip_name(buf, i).ok_or_else(bad)?;
        let rtype = u16_at(buf, i).ok_or_else(bad)?;
        let rdlen = usize::from(u16_at(buf, i + 8).ok_or_else(bad)?);
        let data = buf.get(i + 10..i + 10 + rdlen).ok_or_else(bad)?;
        if rtype == 1 && rdlen == 4 {
            return Ok(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        i += 10 + rdlen;
    }
    Err("no A record in the answer".into())
}

/// `host`'s IPv4 address, asked of `server`.
pub(crate) async fn resolve_a(server: SocketAddr, host: &str) -> Result<IpAddr, String> {
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| format!("DNS socket: {e}"))?;
    socket
        .connect(server)
        .await
        .map_err(|e| format!("DNS {server}: {e}"))?;
    // Unpredictable enough for a demo: the low bits of the clock.
    let id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u16)
        .unwrap_or(0x4242);
    socket
        .send(&query(id, host)?)
        .await
        .map_err(|e| format!("DNS {server}: {e}"))?;
    let mut buf = [0u8; 1500];
    // A stray datagram (an answer to an earlier, timed-out query) is skipped, a few at most.
    for _ in 0..4 {
        let n = tokio::time::timeout(TIMEOUT, socket.recv(&mut buf))
            .await
            .map_err(|_| format!("DNS {server}: no answer within {TIMEOUT:?}"))?
            .map_err(|e| format!("DNS {server}: {e}"))?;
        match parse_answer(&buf[..n], id) {
            Err(e) if e == "answer to another query" => continue,
            other => return other.map(IpAddr::V4),
        }
    }
    Err(format!("DNS {server}: no answer to our query"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_answer_round_trip() {
        let q = query(7, "api.demo.internal").unwrap();
        // The answer: the query with QR set and one A record pointing back at the name.
        let mut a = q.clone();
        a[2] |= 0x80;
        a[7] = 1;
        a.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 2]);
        assert_eq!(parse_answer(&a, 7), Ok(Ipv4Addr::new(127, 0, 0, 2)));
        assert!(parse_answer(&a, 8).is_err());
        let mut nx = q;
        nx[3] = 3;
        assert!(parse_answer(&nx, 7).unwrap_err().contains("NXDOMAIN"));
        assert!(query(1, "bad..name").is_err());
    }
}
