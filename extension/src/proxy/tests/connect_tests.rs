//! CONNECT tunnels: real TLS through the tunnel (curl), failures with their status codes,
//! and the metrics each one leaves.

use super::upstream;
use super::{ca_pem, closed_port, connect, count, start};
use crate::metrics::{Counter, Timing};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn curl_gets_through_a_tls_tunnel() {
    let up = upstream::tls("tls-up", true).await;
    let proxy = start(&[]).await;
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-x"])
        .arg(format!("http://{}", proxy.addr))
        .args(["--cacert", &ca_pem()])
        .arg(format!("https://localhost:{}/hello", up.addr.port()))
        .output()
        .await
        .expect("run curl");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(body.starts_with("tls-up GET /hello"), "{body}");
    // The tunnel's figures land when it closes; give the task a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let snap = proxy.take();
    assert_eq!(count(&snap, Counter::Requests), 1);
    assert_eq!(count(&snap, Counter::ConnectionsOpened), 1);
    assert_eq!(count(&snap, Counter::PolicyDenied), 0);
    assert!(count(&snap, Counter::BytesIn) > 0 && count(&snap, Counter::BytesOut) > 0);
    assert_eq!(snap.timings[&Timing::TcpConnectMs].count(), 1);
    assert_eq!(snap.timings[&Timing::TtfbMs].count(), 1);
    assert_eq!(snap.timings[&Timing::RequestMs].count(), 1);
    let dest = format!("localhost:{}", up.addr.port());
    assert_eq!(snap.destinations[&dest].counters[&Counter::Requests], 1);
}

#[tokio::test]
async fn a_tunnel_carries_bytes_both_ways_until_closed() {
    let up = upstream::http("plain").await;
    let proxy = start(&[]).await;
    let (reply, mut stream) = connect(proxy.addr, &up.addr.to_string()).await;
    assert_eq!(reply.status, 200);
    for i in 0..3 {
        let req = format!("GET /n{i} HTTP/1.1\r\nHost: x\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let r = super::read_reply(&mut stream)
            .await
            .expect("reply through tunnel");
        assert!(
            r.body.starts_with(&format!("plain GET /n{i}")),
            "{}",
            r.body
        );
    }
    drop(stream);
    assert_eq!(up.connections.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn refused_connect_is_502_and_counted_as_an_error() {
    let proxy = start(&[]).await;
    let (reply, _) = connect(proxy.addr, &format!("127.0.0.1:{}", closed_port())).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.error(), Some("connect_refused"));
    let snap = proxy.take();
    assert_eq!(count(&snap, Counter::Requests), 1);
    assert_eq!(count(&snap, Counter::Errors), 1);
    assert_eq!(count(&snap, Counter::ErrorsRefused), 1);
}

#[tokio::test]
async fn connect_timeout_is_504() {
    // A listener whose accept queue is full drops further SYNs: connects hang.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let target = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(target),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let proxy = start(&[("EGRESS_WARDEN_CONNECT_TIMEOUT_MS", "300")]).await;
    let (reply, _) = connect(proxy.addr, &target.to_string()).await;
    assert_eq!(reply.status, 504, "{reply:?}");
    assert_eq!(reply.error(), Some("connect_timeout"));
    let snap = proxy.take();
    assert_eq!(count(&snap, Counter::ConnectTimeouts), 1);
    assert_eq!(count(&snap, Counter::ErrorsTimeout), 1);
}

#[tokio::test]
async fn dns_failure_is_502() {
    let proxy = start(&[]).await;
    let (reply, _) = connect(proxy.addr, "no-such-host.invalid:443").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.error(), Some("dns_failure"));
    assert_eq!(count(&proxy.take(), Counter::ErrorsDns), 1);
}

#[tokio::test]
async fn a_server_that_speaks_first_works_through_the_tunnel() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        if let Ok((mut s, _)) = listener.accept().await {
            let _ = s.write_all(b"220 hello\r\n").await;
        }
    });
    let proxy = start(&[]).await;
    let (reply, mut stream) = connect(proxy.addr, &addr.to_string()).await;
    assert_eq!(reply.status, 200);
    let mut buf = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"220 hello\r\n");
}

#[tokio::test]
async fn another_regions_aws_endpoint_counts_as_cross_region() {
    let proxy = start(&[("AWS_REGION", "us-east-1")]).await;
    // DNS goes nowhere in tests, so these fail (502), but where they were going is known.
    for target in [
        "s3.eu-west-1.amazonaws.com:443",
        "dynamodb.us-east-1.amazonaws.com:443",
        "sts.amazonaws.com:443",
    ] {
        let _ = connect(proxy.addr, target).await;
    }
    let snap = proxy.take();
    assert_eq!(count(&snap, Counter::Requests), 3);
    assert_eq!(count(&snap, Counter::CrossRegionRequests), 1);
    let dest = &snap.destinations["s3.eu-west-1.amazonaws.com:443"];
    assert_eq!(dest.counters[&Counter::CrossRegionRequests], 1);
}

/// NAT headroom: the most upstream connections open at once in a window, per destination and
/// for the function (`connections_peak`), as a test drives them: 40 tunnels open together.
#[tokio::test]
async fn forty_parallel_tunnels_peak_at_forty() {
    let up = upstream::http("plain").await;
    let other = upstream::http("other").await;
    let proxy = start(&[]).await;
    let mut tunnels = Vec::new();
    for _ in 0..40 {
        let (reply, stream) = connect(proxy.addr, &up.addr.to_string()).await;
        assert_eq!(reply.status, 200);
        tunnels.push(stream);
    }
    let (reply, lone) = connect(proxy.addr, &other.addr.to_string()).await;
    assert_eq!(reply.status, 200);
    let snap = proxy.take();
    let peak = |dest: &str| snap.destinations[dest].counters[&Counter::ConnectionsPeak];
    assert_eq!(peak(&up.addr.to_string()), 40);
    assert_eq!(peak(&other.addr.to_string()), 1);
    assert_eq!(count(&snap, Counter::ConnectionsPeak), 41);
    // Closed tunnels release their upstream connections: the next window peaks at what is left.
    drop(tunnels);
    let mut left = u64::MAX;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let snap = proxy.take();
        left = count(&snap, Counter::ConnectionsPeak);
        if left == 1 {
            break;
        }
    }
    assert_eq!(left, 1, "only the lone tunnel stays open");
    drop(lone);
}
