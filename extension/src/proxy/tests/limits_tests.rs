//! Client limits: malformed requests, oversized heads, slow heads, idle connections, and
//! the connection cap. After each, the proxy keeps serving.

use super::{count, raw, read_reply, start, start_with};
use crate::metrics::Counter;
use crate::proxy::ClientTimeouts;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const STATUS: &[u8] = b"GET /_warden/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_proxy_keeps_serving() {
    let proxy = start(&[]).await;
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"\x16\x03\x01\x00\xff\r\n\r\n",
    ] {
        let reply = raw(proxy.addr, garbage).await.expect("a reply");
        assert_eq!(reply.status, 400);
    }
    let status = raw(proxy.addr, STATUS).await.expect("status");
    assert_eq!(status.status, 200);
    let doc: serde_json::Value = serde_json::from_str(&status.body).expect("json");
    assert_eq!(doc["findings"], serde_json::json!([]));
    assert!(doc["config"]["proxy_port"].is_number());
    assert!(doc["pools"].is_array() && doc["breakers"].is_array() && doc["dns"].is_object());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let snap = proxy.take();
    // Three malformed requests answered; the status page is not a proxied request.
    assert_eq!(count(&snap, Counter::Requests), 3);
}

#[tokio::test]
async fn oversized_heads_get_431() {
    let proxy = start(&[]).await;
    let big = "a".repeat(70 * 1024);
    let req = format!("GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let reply = raw(proxy.addr, req.as_bytes()).await.expect("a reply");
    assert_eq!(reply.status, 431);
    let mut many = String::from("GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: x\r\n");
    for i in 0..200 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(
        raw(proxy.addr, many.as_bytes())
            .await
            .expect("a reply")
            .status,
        431
    );
    assert_eq!(raw(proxy.addr, STATUS).await.expect("status").status, 200);
}

#[tokio::test]
async fn a_slow_head_is_cut_but_an_idle_connection_is_not() {
    let timeouts = ClientTimeouts {
        header_read: Duration::from_millis(300),
        idle: Duration::from_secs(30),
    };
    let proxy = start_with(&[], timeouts).await;
    let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
    slow.write_all(b"GET /_warden/status HTTP/1.1\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(3)).await,
        "slow head must be cut"
    );

    let mut idle = TcpStream::connect(proxy.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    idle.write_all(b"GET /_warden/status HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_reply(&mut idle).await.expect("reply").status, 200);
    // And between requests on a kept-alive connection.
    tokio::time::sleep(Duration::from_millis(700)).await;
    idle.write_all(b"GET /_warden/status HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_reply(&mut idle).await.expect("reply").status, 200);
}

#[tokio::test]
async fn idle_client_connections_are_closed() {
    let timeouts = ClientTimeouts {
        header_read: Duration::from_secs(5),
        idle: Duration::from_millis(300),
    };
    let proxy = start_with(&[], timeouts).await;
    let mut idle = TcpStream::connect(proxy.addr).await.unwrap();
    idle.write_all(b"GET /_warden/status HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_reply(&mut idle).await.expect("reply").status, 200);
    assert!(closed_within(&mut idle, Duration::from_secs(3)).await);
}

/// A request head under way (not idle, not closable).
async fn head_started(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /_warden/status HTTP/1.1\r\n")
        .await
        .unwrap();
    stream
}

#[tokio::test]
async fn over_capacity_with_no_idle_connection_gets_503_until_a_slot_frees() {
    let proxy = start(&[("EGRESS_WARDEN_MAX_CONNECTIONS", "2")]).await;
    let a = head_started(proxy.addr).await;
    let _b = head_started(proxy.addr).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let reply = raw(proxy.addr, STATUS).await.expect("a reply");
    assert_eq!(reply.status, 503);
    assert_eq!(reply.error(), Some("over_capacity"));
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(raw(proxy.addr, STATUS).await.expect("status").status, 200);
    let snap = proxy.take();
    assert_eq!(count(&snap, Counter::Requests), 1);
    assert_eq!(count(&snap, Counter::IdleClientsClosed), 0);
}

#[tokio::test]
async fn at_the_cap_the_longest_idle_connection_makes_room() {
    let proxy = start(&[("EGRESS_WARDEN_MAX_CONNECTIONS", "3")]).await;
    let mut never_sent = TcpStream::connect(proxy.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut keep_alive = TcpStream::connect(proxy.addr).await.unwrap();
    let keep_alive_status = b"GET /_warden/status HTTP/1.1\r\nHost: x\r\n\r\n";
    keep_alive.write_all(keep_alive_status).await.unwrap();
    assert_eq!(
        read_reply(&mut keep_alive).await.expect("reply").status,
        200
    );
    let _busy = head_started(proxy.addr).await;
    // Only connections idle for a second may make room.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // The cap is reached: the connection idle longest (it never sent a byte) is closed.
    assert_eq!(raw(proxy.addr, STATUS).await.expect("reply").status, 200);
    assert!(closed_within(&mut never_sent, Duration::from_secs(1)).await);
    // At the cap again: of the keep-alive connection (idle since its answer) and a newer
    // idle one, the keep-alive connection has waited longer and is closed.
    let _newer = TcpStream::connect(proxy.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(raw(proxy.addr, STATUS).await.expect("reply").status, 200);
    assert!(closed_within(&mut keep_alive, Duration::from_secs(1)).await);
    // Counted as each closed connection's task ends.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let snap = proxy.take();
    assert_eq!(count(&snap, Counter::IdleClientsClosed), 2);
    // Status page reads are not proxied requests, and nobody was refused.
    assert_eq!(count(&snap, Counter::Requests), 0);
}

/// 1,100 clients that connect and never send a byte hold every slot of the default cap;
/// once they have been idle a second, each new client is served.
#[tokio::test]
async fn idle_clients_cannot_lock_everyone_out() {
    warden_tests::load::raise_fd_limit();
    let proxy = start(&[]).await;
    let mut idle = Vec::new();
    for _ in 0..1_100 {
        idle.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let started = std::time::Instant::now();
    for _ in 0..5 {
        let reply = raw(proxy.addr, STATUS).await.expect("a reply");
        assert_eq!(reply.status, 200, "{:?}", reply.error());
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let snap = proxy.take();
    // Those beyond the cap that came before anyone had idled a second got 503 (counted as
    // requests); the newcomers after closed idle ones.
    let (refused, closed) = (
        count(&snap, Counter::Requests),
        count(&snap, Counter::IdleClientsClosed),
    );
    assert!(
        refused <= 76 && closed >= 1,
        "refused {refused}, closed {closed}"
    );
    drop(idle);
}
