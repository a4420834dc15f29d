//! Route mode: TLS origination with the extra CA bundle, HTTP/2 by ALPN, pooling, safe
//! retries, breaker and fallback, and the status page.

use super::upstream;
use super::{ca_pem, closed_port, count, raw, read_reply, start};
use crate::metrics::Counter;
use std::sync::atomic::Ordering;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The proxy with `routes` (EGRESS_WARDEN_ROUTES) and the test CA trusted.
async fn with_routes(routes: &str) -> super::Harness {
    start(&[
        ("EGRESS_WARDEN_ROUTES", routes),
        ("EGRESS_WARDEN_CA_BUNDLE", &ca_pem()),
    ])
    .await
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
}

#[tokio::test]
async fn route_requests_use_tls_h2_and_one_pooled_connection() {
    let up = upstream::tls("api", true).await;
    let routes = format!("api=https://localhost:{}/v1", up.addr.port());
    let proxy = with_routes(&routes).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    for i in 0..3 {
        client
            .write_all(get(&format!("/api/users/{i}?x=1")).as_bytes())
            .await
            .unwrap();
        let reply = read_reply(&mut client).await.expect("reply");
        assert_eq!(reply.status, 200, "{reply:?}");
        let expected = format!("api GET /v1/users/{i} host=localhost:{}", up.addr.port());
        assert!(reply.body.starts_with(&expected), "{}", reply.body);
        assert!(reply.body.contains("proto=HTTP/2.0"), "{}", reply.body);
    }
    assert_eq!(up.connections.load(Ordering::Relaxed), 1);
    let snap = proxy.take();
    assert_eq!(count(&snap, Counter::Requests), 3);
    assert_eq!(count(&snap, Counter::ConnectionsOpened), 1);
    assert_eq!(count(&snap, Counter::ConnectionsReused), 2);
    assert_eq!(snap.timings[&crate::metrics::Timing::TlsMs].count(), 1);
}

#[tokio::test]
async fn http1_upstreams_work_too() {
    let up = upstream::tls("h1", false).await;
    let routes = format!("h1=https://127.0.0.1:{}", up.addr.port());
    let proxy = with_routes(&routes).await;
    let reply = raw(proxy.addr, get("/h1/").as_bytes())
        .await
        .expect("reply");
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("proto=HTTP/1.1"), "{}", reply.body);
}

#[tokio::test]
async fn safe_requests_are_retried_and_unsafe_ones_are_not() {
    let up = upstream::tls("api", true).await;
    let routes = format!("api=https://localhost:{}", up.addr.port());
    let proxy = with_routes(&routes).await;

    let reply = raw(proxy.addr, get("/api/fail/2/get").as_bytes())
        .await
        .expect("reply");
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "ok after 3 keys=-,-,-")
    );

    let post = |key: &str, extra: &str| {
        format!("POST /api/fail/2/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\n{extra}\r\nbody")
    };
    let reply = raw(proxy.addr, post("post", "").as_bytes())
        .await
        .expect("reply");
    assert_eq!(
        reply.status, 503,
        "POST without Idempotency-Key must not be retried"
    );
    let reply = raw(
        proxy.addr,
        post("keyed", "Idempotency-Key: k-1\r\n").as_bytes(),
    )
    .await
    .expect("reply");
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "ok after 3 keys=k-1,k-1,k-1")
    );

    // Retries stop at EGRESS_WARDEN_RETRY_MAX attempts.
    let reply = raw(proxy.addr, get("/api/fail/5/many").as_bytes())
        .await
        .expect("reply");
    assert_eq!(reply.status, 503);

    let snap = proxy.take();
    assert_eq!(count(&snap, Counter::Requests), 4);
    assert_eq!(count(&snap, Counter::RetryCount), 2 + 2 + 2);
}

/// `idempotency=auto`: an unkeyed POST gets one key, sent with every attempt, so it is retried
/// like a keyed one; without the option it goes once. A client's own key is kept.
#[tokio::test]
async fn idempotency_auto_makes_posts_retryable_with_one_key() {
    let up = upstream::tls("api", true).await;
    let routes = format!(
        "auto=https://localhost:{0};idempotency=auto,plain=https://localhost:{0}",
        up.addr.port()
    );
    let proxy = with_routes(&routes).await;
    let post = |path: &str, extra: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\n{extra}\r\nbody")
    };

    let reply = raw(proxy.addr, post("/auto/fail/2/a", "").as_bytes())
        .await
        .expect("reply");
    assert_eq!(reply.status, 200, "{reply:?}");
    let keys: Vec<&str> = reply
        .body
        .strip_prefix("ok after 3 keys=")
        .unwrap_or_default()
        .split(',')
        .collect();
    assert_eq!(keys.len(), 3, "{}", reply.body);
    assert!(
        keys[0].len() == 36 && keys.iter().all(|k| *k == keys[0]),
        "{keys:?}"
    );

    let reply = raw(proxy.addr, post("/plain/fail/2/b", "").as_bytes())
        .await
        .expect("reply");
    assert_eq!(reply.status, 503, "one attempt without the option");

    let reply = raw(
        proxy.addr,
        post("/auto/fail/1/c", "Idempotency-Key: mine\r\n").as_bytes(),
    )
    .await
    .expect("reply");
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "ok after 2 keys=mine,mine")
    );

    let snap = proxy.take();
    assert_eq!(count(&snap, Counter::IdempotencyKeysAdded), 1);
    assert_eq!(count(&snap, Counter::RetryCount), 2 + 1);
}

#[tokio::test]
async fn connect_failures_open_the_breaker_and_the_fallback_answers() {
    let fallback = upstream::tls("fallback", true).await;
    let routes = format!(
        "svc=https://127.0.0.1:{}|https://localhost:{}/fb",
        closed_port(),
        fallback.addr.port()
    );
    let proxy = with_routes(&routes).await;
    let first = raw(proxy.addr, get("/svc/a").as_bytes())
        .await
        .expect("reply");
    assert_eq!(first.status, 502);
    assert_eq!(first.error(), Some("connect_refused"));
    // 3 failed attempts so far; the breaker opens at 5, during the next request.
    let second = raw(proxy.addr, get("/svc/b").as_bytes())
        .await
        .expect("reply");
    assert_eq!(second.status, 200, "{second:?}");
    assert!(
        second.body.starts_with("fallback GET /fb/b"),
        "{}",
        second.body
    );
    let third = raw(proxy.addr, get("/svc/c").as_bytes())
        .await
        .expect("reply");
    assert_eq!(third.status, 200);
    let snap = proxy.take();
    assert_eq!(count(&snap, Counter::CircuitOpen), 1);
    assert_eq!(count(&snap, Counter::FallbackHits), 2);
    let status = raw(
        proxy.addr,
        b"GET /_warden/status HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .expect("status");
    let doc: serde_json::Value = serde_json::from_str(&status.body).expect("json");
    let breakers = doc["breakers"].as_array().expect("breakers");
    assert!(
        breakers.iter().any(|b| b["state"] == "open"),
        "{breakers:?}"
    );
}

/// `fallback=reads`: with the primary's breaker open, reads and keyed writes go to the
/// fallback; an unkeyed write stays home: `503 home_region_only` with a `Retry-After`.
#[tokio::test]
async fn with_fallback_reads_unkeyed_writes_stay_home() {
    let fallback = upstream::tls("fallback", true).await;
    let routes = format!(
        "svc=https://127.0.0.1:{}|https://localhost:{};fallback=reads;idempotency=auto",
        closed_port(),
        fallback.addr.port()
    );
    let proxy = with_routes(&routes).await;
    // Five refused connects open the breaker (3 attempts, then 2 of the next request).
    let _ = raw(proxy.addr, get("/svc/a").as_bytes()).await;
    let read = raw(proxy.addr, get("/svc/b").as_bytes())
        .await
        .expect("reply");
    assert_eq!(read.status, 200, "{read:?}");
    assert!(read.body.starts_with("fallback GET /b"), "{}", read.body);
    let write = |extra: &str| {
        format!("POST /svc/w HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n{extra}\r\nhi")
    };
    // idempotency=auto adds a key, but a write the client did not key still stays home.
    let home = raw(proxy.addr, write("").as_bytes()).await.expect("reply");
    assert_eq!(home.status, 503, "{home:?}");
    assert_eq!(home.error(), Some("home_region_only"));
    let after: u64 = home
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((1..=10).contains(&after), "{home:?}");
    assert!(home.body.contains("fallback=reads"), "{}", home.body);
    let keyed = raw(proxy.addr, write("Idempotency-Key: k\r\n").as_bytes())
        .await
        .expect("reply");
    assert_eq!(keyed.status, 200, "{keyed:?}");
    assert!(keyed.body.starts_with("fallback POST /w"), "{}", keyed.body);
    let delete = raw(proxy.addr, b"DELETE /svc/d HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("reply");
    assert_eq!(delete.error(), Some("home_region_only"));
}

#[tokio::test]
async fn unknown_routes_are_404_naming_the_known_ones() {
    let proxy = start(&[(
        "EGRESS_WARDEN_ROUTES",
        "api=https://127.0.0.1:9,pay=https://127.0.0.1:10",
    )])
    .await;
    let reply = raw(proxy.addr, get("/nope/x").as_bytes())
        .await
        .expect("reply");
    assert_eq!(reply.status, 404);
    assert_eq!(reply.error(), Some("unknown_route"));
    assert!(
        reply.body.starts_with(
            r#"egress-warden: unknown route "nope"; known: api, pay; set EGRESS_WARDEN_ROUTES"#
        ),
        "{}",
        reply.body
    );
    assert_eq!(count(&proxy.take(), Counter::Requests), 1);
}

/// A certificate no trusted CA signed fails the same way on every handshake: one attempt,
/// and the answer says which variable fixes it.
#[tokio::test]
async fn a_certificate_from_an_unknown_ca_is_not_retried_and_names_the_ca_bundle() {
    let up = upstream::tls("api", true).await;
    let routes = format!("api=https://localhost:{}", up.addr.port());
    let proxy = start(&[
        ("EGRESS_WARDEN_ROUTES", &routes),
        ("EGRESS_WARDEN_RETRY_MAX", "3"),
    ])
    .await;
    let reply = raw(proxy.addr, get("/api/x").as_bytes())
        .await
        .expect("reply");
    assert_eq!(reply.status, 502, "{reply:?}");
    assert_eq!(reply.error(), Some("tls_error"));
    assert!(
        reply.body.contains("UnknownIssuer")
            && reply
                .body
                .contains("set EGRESS_WARDEN_CA_BUNDLE to the CA that signed it"),
        "{}",
        reply.body
    );
    assert_eq!(
        up.connections.load(Ordering::Relaxed),
        1,
        "one handshake, no retries"
    );
    let snap = proxy.take();
    assert_eq!(count(&snap, Counter::RetryCount), 0);
    assert_eq!(count(&snap, Counter::ErrorsTls), 1);
}

/// Refused connects may succeed on the next attempt: still retried.
#[tokio::test]
async fn a_refused_connect_is_still_retried() {
    let routes = format!("dead=https://127.0.0.1:{}", closed_port());
    let proxy = start(&[
        ("EGRESS_WARDEN_ROUTES", &routes),
        ("EGRESS_WARDEN_RETRY_MAX", "3"),
    ])
    .await;
    let reply = raw(proxy.addr, get("/dead/x").as_bytes())
        .await
        .expect("reply");
    assert_eq!(
        (reply.status, reply.error()),
        (502, Some("connect_refused"))
    );
    assert!(
        reply.body.contains("nothing listens there"),
        "{}",
        reply.body
    );
    assert_eq!(count(&proxy.take(), Counter::RetryCount), 2);
}

#[tokio::test]
async fn route_requests_end_before_the_invocation_deadline() {
    let up = upstream::tls("api", true).await;
    let routes = format!("api=https://localhost:{}", up.addr.port());
    let proxy = with_routes(&routes).await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // 1 s left in the invocation; the proxy keeps 200 ms of it for the function.
    proxy.clock.begin_invocation(now_ms + 1000);
    let started = std::time::Instant::now();
    let reply = raw(proxy.addr, get("/api/slow/5000").as_bytes())
        .await
        .expect("reply");
    let took = started.elapsed();
    assert_eq!(reply.status, 504, "{reply:?}");
    assert_eq!(reply.error(), Some("upstream_timeout"));
    assert!(
        took < std::time::Duration::from_millis(1000),
        "answered after the deadline: {took:?}"
    );
    assert!(
        took >= std::time::Duration::from_millis(600),
        "gave up too early: {took:?}"
    );
}
