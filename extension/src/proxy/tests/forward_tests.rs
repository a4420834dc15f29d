//! Absolute-form forwarding: keep-alive on both sides, pooled upstream connections, header
//! hygiene, loop prevention.

use super::upstream;
use super::{count, raw, read_reply, start};
use crate::metrics::Counter;
use std::sync::atomic::Ordering;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn keep_alive_requests_reuse_one_upstream_connection() {
    let up = upstream::http("fwd").await;
    let proxy = start(&[]).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    for i in 0..3 {
        let req = format!(
            "GET http://{}/item/{i}?q=1 HTTP/1.1\r\nHost: ignored\r\nProxy-Authorization: Basic c2VjcmV0\r\n\r\n",
            up.addr
        );
        client.write_all(req.as_bytes()).await.unwrap();
        let reply = read_reply(&mut client).await.expect("reply");
        assert_eq!(reply.status, 200);
        let expected = format!("fwd GET /item/{i} host={} via=1.1 egress-warden", up.addr);
        assert!(reply.body.starts_with(&expected), "{}", reply.body);
        assert!(
            reply.body.contains("auth=-"),
            "proxy credentials must not leak: {}",
            reply.body
        );
    }
    assert_eq!(up.connections.load(Ordering::Relaxed), 1);
    let snap = proxy.take();
    assert_eq!(count(&snap, Counter::Requests), 3);
    assert_eq!(count(&snap, Counter::ConnectionsOpened), 1);
    assert_eq!(count(&snap, Counter::ConnectionsReused), 2);
}

#[tokio::test]
async fn bodies_are_forwarded() {
    let up = upstream::http("fwd").await;
    let proxy = start(&[]).await;
    let req = format!(
        "POST http://{}/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world",
        up.addr
    );
    let reply = raw(proxy.addr, req.as_bytes()).await.expect("reply");
    assert_eq!(reply.status, 200);
    assert!(
        reply.body.contains("POST /upload") && reply.body.contains("body=11"),
        "{}",
        reply.body
    );
    let req = format!(
        "POST http://{}/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        up.addr
    );
    let reply = raw(proxy.addr, req.as_bytes()).await.expect("reply");
    assert!(reply.body.contains("body=5"), "{}", reply.body);
    let snap = proxy.take();
    assert_eq!(count(&snap, Counter::BytesOut), 16);
}

#[tokio::test]
async fn a_request_that_already_went_through_egress_warden_is_refused() {
    let up = upstream::http("fwd").await;
    let proxy = start(&[]).await;
    let req = format!(
        "GET http://{}/ HTTP/1.1\r\nHost: x\r\nVia: 1.1 egress-warden\r\n\r\n",
        up.addr
    );
    let reply = raw(proxy.addr, req.as_bytes()).await.expect("reply");
    assert_eq!(reply.status, 403);
    assert_eq!(reply.error(), Some("loop"));
    assert_eq!(up.connections.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn forwarding_to_the_proxy_itself_is_a_loop() {
    let proxy = start(&[("EGRESS_WARDEN_ALLOW", "0.0.0.0/0,::/0")]).await;
    for host in ["127.0.0.2", "0.0.0.0", "[::ffff:127.0.0.1]", "2130706433"] {
        let req = format!(
            "GET http://{host}:{}/x HTTP/1.1\r\nHost: x\r\n\r\n",
            proxy.port()
        );
        let reply = raw(proxy.addr, req.as_bytes()).await.expect("reply");
        assert_eq!(reply.status, 403, "{host}");
        assert_eq!(reply.error(), Some("loop"), "{host}");
    }
    let snap = proxy.take();
    assert_eq!(count(&snap, Counter::Requests), 4);
    assert_eq!(count(&snap, Counter::PolicyDenied), 4);
}

#[tokio::test]
async fn upstream_reset_is_502() {
    let up = upstream::http("fwd").await;
    let proxy = start(&[]).await;
    let req = format!(
        "GET http://{}/reset/1/a HTTP/1.1\r\nHost: x\r\n\r\n",
        up.addr
    );
    let reply = raw(proxy.addr, req.as_bytes()).await.expect("reply");
    assert_eq!(reply.status, 502);
    let snap = proxy.take();
    assert_eq!(count(&snap, Counter::Errors), 1);
}

#[tokio::test]
async fn a_malformed_chunked_body_is_the_clients_fault_400_not_an_upstream_error() {
    let up = upstream::http("fwd").await;
    let proxy = start(&[]).await;
    // A chunk size that is not hex, then one that overflows.
    for chunk in [
        "zz\r\nhello\r\n0\r\n\r\n",
        "fffffffffffffffffffff\r\nx\r\n0\r\n\r\n",
    ] {
        let req = format!(
            "POST http://{}/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n{chunk}",
            up.addr
        );
        let reply = raw(proxy.addr, req.as_bytes()).await.expect("reply");
        assert_eq!(reply.status, 400, "{chunk:?}: {reply:?}");
        assert_eq!(reply.header("x-egress-warden-error"), Some("bad_request"));
        assert!(reply.body.contains("request body"), "{}", reply.body);
        let snap = proxy.take();
        assert_eq!(count(&snap, Counter::Requests), 1, "{chunk:?}");
        assert_eq!(
            count(&snap, Counter::Errors),
            0,
            "{chunk:?}: not an upstream failure"
        );
        assert_eq!(count(&snap, Counter::ErrorsReset), 0);
    }
}

#[tokio::test]
async fn at_shutdown_a_request_in_flight_is_answered_with_connection_close() {
    use tokio::io::AsyncReadExt;
    // An upstream that takes 300 ms to answer.
    let slow = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_addr = slow.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = slow.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
                    .await;
            });
        }
    });
    let proxy = start(&[]).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    let req = format!("GET http://{slow_addr}/x HTTP/1.1\r\nHost: x\r\n\r\n");
    client.write_all(req.as_bytes()).await.unwrap();
    // An idle kept-alive connection as well.
    let mut idle = TcpStream::connect(proxy.addr).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    proxy.shutdown.trigger();
    let reply = read_reply(&mut client)
        .await
        .expect("the request in flight is answered");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("connection"), Some("close"), "{reply:?}");
    let mut rest = [0u8; 16];
    assert_eq!(
        client.read(&mut rest).await.unwrap_or(0),
        0,
        "then the connection ends"
    );
    assert_eq!(
        idle.read(&mut rest).await.unwrap_or(0),
        0,
        "an idle one ends at once"
    );
    assert_eq!(count(&proxy.take(), Counter::Requests), 1);
}
