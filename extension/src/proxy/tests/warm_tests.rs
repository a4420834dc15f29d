//! Warm-up during INIT and what happens to warmed connections the peer closed meanwhile:
//! real upstreams (plain echo, TLS h1/h2), a real DNS server on loopback, the real proxy.

use super::upstream::{self, TestUpstream};
use super::{ca_pem, closed_port, connect, count, raw, start, Harness};
use crate::metrics::{ConnectOutcome, ConnectPurpose, Counter, Event, Timing};
use crate::warm;
use hickory_proto::op::{Message, MessageType, OpCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// A DNS server on loopback answering every A query with 127.0.0.1 (and AAAA with none).
struct TestDns {
    port: u16,
    a_queries: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestDns {
    async fn start() -> TestDns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns");
        let port = socket.local_addr().expect("addr").port();
        let a_queries = Arc::new(AtomicU64::new(0));
        let counted = a_queries.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                if query.metadata.message_type != MessageType::Query {
                    continue;
                }
                let Some(q) = query.queries.first().cloned() else {
                    continue;
                };
                let mut response = Message::response(query.metadata.id, OpCode::Query);
                response.metadata.recursion_desired = query.metadata.recursion_desired;
                response.metadata.recursion_available = true;
                response.queries = query.queries.clone();
                if q.query_type() == RecordType::A {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let a = RData::A(A::from(Ipv4Addr::LOCALHOST));
                    response
                        .answers
                        .push(Record::from_rdata(q.name().clone(), 60, a));
                } else {
                    let soa = SOA::new(
                        Name::from_ascii("ns.test.").expect("name"),
                        Name::from_ascii("admin.test.").expect("name"),
                        1,
                        3600,
                        600,
                        86400,
                        60,
                    );
                    let zone = Name::from_ascii("test.").expect("name");
                    response
                        .authorities
                        .push(Record::from_rdata(zone, 60, RData::SOA(soa)));
                }
                if let Ok(bytes) = response.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        TestDns {
            port,
            a_queries,
            task,
        }
    }

    fn upstream(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}

fn accepted(up: &TestUpstream) -> u64 {
    up.connections.load(Ordering::SeqCst)
}

/// Through an open tunnel to an echo server: what goes out comes back.
async fn echoes(tunnel: &mut TcpStream, text: &[u8]) {
    tunnel.write_all(text).await.expect("write through tunnel");
    let mut back = vec![0u8; text.len()];
    tokio::time::timeout(Duration::from_secs(5), tunnel.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(back, text);
}

fn events(proxy: &Harness) -> Vec<Event> {
    proxy
        .recorder
        .observations_since(0)
        .events
        .into_iter()
        .map(|o| o.event)
        .collect()
}

fn stale_caught(proxy: &Harness) -> Vec<(String, bool)> {
    events(proxy)
        .into_iter()
        .filter_map(|e| match e {
            Event::StaleConnection {
                host,
                reset,
                caught: true,
                ..
            } => Some((host, reset)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn connect_takes_the_socket_warmed_during_init() {
    let dns = TestDns::start().await;
    let up = upstream::echo_closing_idle(Duration::from_secs(30)).await;
    let port = up.addr.port();
    let warm = format!("warm.test:{port}*2");
    let proxy = start(&[
        ("EGRESS_WARDEN_DNS_UPSTREAMS", &dns.upstream()),
        ("EGRESS_WARDEN_WARM", &warm),
    ])
    .await;

    let report = warm::during_init(&proxy.warmup(), &proxy.warmer()).await;
    assert_eq!(report.timed_out, 0);
    assert_eq!(report.targets.len(), 1);
    assert_eq!(report.targets[0].ready, 2, "{report:?}");
    assert!(eventually(Duration::from_secs(2), || accepted(&up) == 2).await);
    assert_eq!(dns.a_queries.load(Ordering::SeqCst), 1, "resolved once");
    let warm_connects = events(&proxy)
        .into_iter()
        .filter(|e| {
            matches!(e, Event::Connect { host, purpose: ConnectPurpose::Warm, outcome: ConnectOutcome::Connected, .. } if host == "warm.test")
        })
        .count();
    assert_eq!(warm_connects, 2);
    let snap = proxy.take();
    assert_eq!(count(&snap, Counter::WarmConnections), 2);
    assert_eq!(snap.timings[&Timing::WarmMs].count(), 1);
    let page = raw(
        proxy.addr,
        b"GET /_warden/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("status page");
    let page: serde_json::Value = serde_json::from_str(&page.body).expect("status JSON");
    let target = format!("warm.test:{port}");
    assert_eq!(page["warm"]["sockets"][&target], 2, "{page}");

    // The first two CONNECTs take the warmed sockets: no new connection upstream.
    let (reply, mut first) = connect(proxy.addr, &target).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    echoes(&mut first, b"hello").await;
    let (reply, mut second) = connect(proxy.addr, &target).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    echoes(&mut second, b"again").await;
    assert_eq!(accepted(&up), 2);
    let snap = proxy.take();
    assert_eq!(count(&snap, Counter::ConnectionsReused), 2);
    assert_eq!(count(&snap, Counter::ConnectionsOpened), 0);

    // The third dials, on the address the warm-up left in the DNS cache.
    let (reply, mut third) = connect(proxy.addr, &target).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    echoes(&mut third, b"third").await;
    assert_eq!(accepted(&up), 3);
    assert_eq!(
        dns.a_queries.load(Ordering::SeqCst),
        1,
        "served from the cache"
    );
    assert_eq!(count(&proxy.take(), Counter::ConnectionsOpened), 1);
}

#[tokio::test]
async fn a_warmed_route_serves_its_first_request_without_a_new_connection() {
    for h2 in [true, false] {
        let up = upstream::tls("api", h2).await;
        let routes = format!("api=https://localhost:{}/v1", up.addr.port());
        let proxy = start(&[
            ("EGRESS_WARDEN_ROUTES", &routes),
            ("EGRESS_WARDEN_CA_BUNDLE", &ca_pem()),
            ("EGRESS_WARDEN_WARM", "api"),
        ])
        .await;
        let report = warm::during_init(&proxy.warmup(), &proxy.warmer()).await;
        assert_eq!(report.targets[0].ready, 1, "{report:?}");
        assert_eq!(accepted(&up), 1);
        assert_eq!(count(&proxy.take(), Counter::WarmConnections), 1);

        let reply = raw(
            proxy.addr,
            b"GET /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        )
        .await
        .expect("reply");
        assert_eq!(reply.status, 200, "{reply:?}");
        let proto = if h2 {
            "proto=HTTP/2.0"
        } else {
            "proto=HTTP/1.1"
        };
        assert!(reply.body.contains(proto), "{}", reply.body);
        assert_eq!(accepted(&up), 1, "h2={h2}: the warmed connection was used");
        let snap = proxy.take();
        assert_eq!(count(&snap, Counter::ConnectionsOpened), 0, "h2={h2}");
        assert_eq!(count(&snap, Counter::ConnectionsReused), 1, "h2={h2}");
        assert!(!snap.timings.contains_key(&Timing::TlsMs), "h2={h2}");
    }
}

#[tokio::test]
async fn warm_up_stays_within_its_budget_and_failures_do_not_stop_it() {
    // Accepts TCP but never answers the TLS handshake: a target that is slow to get ready.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let good = upstream::echo_closing_idle(Duration::from_secs(30)).await;
    let refused = closed_port();
    let routes = format!("slow=https://localhost:{silent_port}");
    let warm = format!("slow,127.0.0.1:{refused},127.0.0.1:{}", good.addr.port());
    let proxy = start(&[
        ("EGRESS_WARDEN_ROUTES", &routes),
        ("EGRESS_WARDEN_CA_BUNDLE", &ca_pem()),
        ("EGRESS_WARDEN_WARM", &warm),
        ("EGRESS_WARDEN_WARM_BUDGET_MS", "300"),
        ("EGRESS_WARDEN_CONNECT_TIMEOUT_MS", "3000"),
    ])
    .await;

    let started = Instant::now();
    let report = warm::during_init(&proxy.warmup(), &proxy.warmer()).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(280), "{took:?}");
    assert!(took < Duration::from_millis(800), "over budget: {took:?}");
    assert_eq!(report.timed_out, 1, "{report:?}");
    let by_target = |t: &str| report.targets.iter().find(|r| r.target == t).cloned();
    let failed = by_target(&format!("127.0.0.1:{refused}")).expect("refused target");
    assert_eq!(failed.ready, 0);
    assert!(failed.error.is_some());
    let ready = by_target(&format!("127.0.0.1:{}", good.addr.port())).expect("good target");
    assert_eq!(ready.ready, 1);
    let refusals = events(&proxy)
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                Event::Connect {
                    purpose: ConnectPurpose::Warm,
                    outcome: ConnectOutcome::Refused,
                    ..
                }
            )
        })
        .count();
    assert_eq!(refusals, 1, "the failed target is evidence in the journal");
    assert_eq!(count(&proxy.take(), Counter::WarmConnections), 1);
    holder.abort();
}

#[tokio::test]
async fn a_warmed_socket_the_peer_closed_is_never_handed_out() {
    let up = upstream::echo_closing_idle(Duration::from_millis(150)).await;
    let target = format!("127.0.0.1:{}", up.addr.port());
    let proxy = start(&[("EGRESS_WARDEN_WARM", &target)]).await;
    let report = warm::during_init(&proxy.warmup(), &proxy.warmer()).await;
    assert_eq!(report.targets[0].ready, 1);
    // The peer closes the idle connection.
    tokio::time::sleep(Duration::from_millis(400)).await;

    let (reply, mut tunnel) = connect(proxy.addr, &target).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    echoes(&mut tunnel, b"fresh").await;
    assert_eq!(accepted(&up), 2, "a new connection replaced the dead one");
    assert_eq!(stale_caught(&proxy), vec![("127.0.0.1".to_owned(), false)]);
    let snap = proxy.take();
    assert_eq!(count(&snap, Counter::ConnectionsOpened), 1);
    assert_eq!(count(&snap, Counter::ConnectionsReused), 0);
    assert_eq!(count(&snap, Counter::Errors), 0);
}

#[tokio::test]
async fn a_warmed_socket_that_resets_on_first_use_is_replaced_without_the_client_noticing() {
    let up = upstream::reset_first_then_echo().await;
    let target = format!("127.0.0.1:{}", up.addr.port());
    let proxy = start(&[("EGRESS_WARDEN_WARM", &target)]).await;
    let report = warm::during_init(&proxy.warmup(), &proxy.warmer()).await;
    assert_eq!(report.targets[0].ready, 1);

    let (reply, mut tunnel) = connect(proxy.addr, &target).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    echoes(&mut tunnel, b"first flight").await;
    echoes(&mut tunnel, b"and more").await;
    assert_eq!(accepted(&up), 2);
    let stale: Vec<_> = events(&proxy)
        .into_iter()
        .filter_map(|e| match e {
            Event::StaleConnection { reset, caught, .. } => Some((reset, caught)),
            _ => None,
        })
        .collect();
    assert_eq!(stale, vec![(true, false)]);
    assert_eq!(count(&proxy.take(), Counter::ConnectionsReused), 1);
}

#[tokio::test]
async fn after_a_pause_dead_sockets_are_dropped_and_targets_warmed_again() {
    let up = upstream::echo_closing_idle(Duration::from_millis(500)).await;
    let target = format!("127.0.0.1:{}", up.addr.port());
    let proxy = start(&[("EGRESS_WARDEN_WARM", &format!("{target}*2"))]).await;
    let warmer = proxy.warmer();
    let rewarm = warm::Rewarm::default();
    warm::during_init(&proxy.warmup(), &warmer).await;
    assert_eq!(warmer.parked_host_port("127.0.0.1", up.addr.port()), 2);
    tokio::time::sleep(Duration::from_millis(900)).await;

    // Back-to-back invokes do nothing.
    assert!(!warm::after_thaw(
        &proxy.warmup(),
        &warmer,
        &rewarm,
        Some(Duration::from_millis(20))
    ));
    assert!(!warm::after_thaw(&proxy.warmup(), &warmer, &rewarm, None));
    assert!(stale_caught(&proxy).is_empty());

    assert!(warm::after_thaw(
        &proxy.warmup(),
        &warmer,
        &rewarm,
        Some(Duration::from_secs(30))
    ));
    assert_eq!(stale_caught(&proxy).len(), 2, "both dead sockets noted");
    // Topped up again in the background.
    assert!(eventually(Duration::from_secs(2), || accepted(&up) == 4).await);
    assert!(
        eventually(Duration::from_secs(2), || warmer
            .parked_host_port("127.0.0.1", up.addr.port())
            == 2)
        .await
    );
    let (reply, mut tunnel) = connect(proxy.addr, &target).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    echoes(&mut tunnel, b"rewarmed").await;
    assert_eq!(accepted(&up), 4, "the re-warmed socket was used");
    assert_eq!(count(&proxy.take(), Counter::ConnectionsReused), 1);
}

#[tokio::test]
async fn a_warmed_route_connection_the_peer_closed_is_replaced() {
    for h2 in [true, false] {
        let up = upstream::tls_closing_idle("api", h2, Duration::from_millis(400)).await;
        let routes = format!("api=https://localhost:{}", up.addr.port());
        let proxy = start(&[
            ("EGRESS_WARDEN_ROUTES", &routes),
            ("EGRESS_WARDEN_CA_BUNDLE", &ca_pem()),
            ("EGRESS_WARDEN_WARM", "api"),
        ])
        .await;
        let report = warm::during_init(&proxy.warmup(), &proxy.warmer()).await;
        assert_eq!(report.targets[0].ready, 1);
        tokio::time::sleep(Duration::from_millis(900)).await;

        let reply = raw(
            proxy.addr,
            b"GET /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        )
        .await
        .expect("reply");
        assert_eq!(reply.status, 200, "h2={h2}: {reply:?}");
        assert_eq!(accepted(&up), 2, "h2={h2}");
        assert_eq!(
            stale_caught(&proxy),
            vec![("localhost".to_owned(), false)],
            "h2={h2}"
        );
        assert_eq!(count(&proxy.take(), Counter::Errors), 0, "h2={h2}");
    }
}

/// A TLS upstream on its own thread and runtime, so it keeps running (and closing idle
/// connections) while the proxy's runtime is blocked.
struct OutsideUpstream {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OutsideUpstream {
    /// `tls`: TLS (HTTP/2 when `h2`), else plain HTTP/1.1.
    fn start(tls: bool, h2: bool, idle: Duration) -> OutsideUpstream {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let up = if tls {
                    upstream::tls_closing_idle("api", h2, idle).await
                } else {
                    upstream::http_closing_idle("api", idle).await
                };
                let _ = ready_tx.send((up.addr, up.connections.clone()));
                let _ = stopped.await;
            });
        });
        let (addr, connections) = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("upstream started");
        OutsideUpstream {
            addr,
            connections,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for OutsideUpstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The proxy's only worker thread is blocked (as Lambda freezes the sandbox) while the
/// upstream closes its idle pooled connection; a request sent meanwhile is answered once the
/// proxy runs again, on a fresh connection, without an error reaching the client. (No INVOKE
/// here: the check before the request is what finds the dead connection.) Route mode over
/// HTTP/2 and HTTP/1.1, and absolute-form forwarding.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_pooled_connection_closed_during_a_freeze_is_not_used() {
    for (case, tls, h2) in [
        ("route h2", true, true),
        ("route h1", true, false),
        ("forward", false, false),
    ] {
        let up = OutsideUpstream::start(tls, h2, Duration::from_millis(500));
        let routes = format!("api=https://localhost:{}", up.addr.port());
        let proxy = start(&[
            ("EGRESS_WARDEN_ROUTES", &routes),
            ("EGRESS_WARDEN_CA_BUNDLE", &ca_pem()),
        ])
        .await;
        let (path, host) = if tls {
            ("/api/x".to_owned(), "127.0.0.1".to_owned())
        } else {
            (format!("http://{}/x", up.addr), up.addr.to_string())
        };
        let get = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let reply = raw(proxy.addr, get.as_bytes()).await.expect("reply");
        assert_eq!(reply.status, 200, "{case}: {reply:?}");
        assert_eq!(up.connections.load(Ordering::SeqCst), 1, "{case}");

        let (frozen_tx, frozen_rx) = std::sync::mpsc::channel();
        let freeze = tokio::spawn(async move {
            let _ = frozen_tx.send(());
            // Blocks the runtime's only worker: nothing in the proxy runs meanwhile.
            std::thread::sleep(Duration::from_millis(1600));
        });
        frozen_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("frozen");
        // The upstream closes the idle connection while the proxy is frozen.
        std::thread::sleep(Duration::from_millis(900));
        let mut client = std::net::TcpStream::connect(proxy.addr).expect("connect");
        // A POST without Idempotency-Key may only go again if it was never sent: it succeeds
        // only if the dead connection is found before the request is written to it.
        let post = format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n");
        std::io::Write::write_all(&mut client, post.as_bytes()).expect("send");
        freeze.await.expect("thawed");

        client.set_nonblocking(true).expect("nonblocking");
        let mut client = TcpStream::from_std(client).expect("tokio stream");
        let reply = super::read_reply(&mut client).await.expect("reply");
        assert_eq!(reply.status, 200, "{case}: {reply:?}");
        assert_eq!(up.connections.load(Ordering::SeqCst), 2, "{case}");
        assert_eq!(count(&proxy.take(), Counter::Errors), 0, "{case}");
    }
}

#[tokio::test]
async fn after_a_restore_no_connection_from_before_is_used_even_a_live_one() {
    for h2 in [true, false] {
        let up = upstream::tls("api", h2).await;
        let routes = format!("api=https://localhost:{}", up.addr.port());
        let proxy = start(&[
            ("EGRESS_WARDEN_ROUTES", &routes),
            ("EGRESS_WARDEN_CA_BUNDLE", &ca_pem()),
            ("EGRESS_WARDEN_WARM", "api"),
        ])
        .await;
        let get = b"GET /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
        // One connection pooled after use, one parked by the warm-up.
        let reply = raw(proxy.addr, get).await.expect("reply");
        assert_eq!(reply.status, 200, "h2={h2}: {reply:?}");
        warm::during_init(&proxy.warmup(), &proxy.warmer()).await;
        let before = accepted(&up);
        assert!(before >= 1, "h2={h2}");
        proxy.take();

        let retired = proxy.warmer().retire_all();
        assert!(retired >= 1, "h2={h2}: {retired}");
        let reply = raw(proxy.addr, get).await.expect("reply");
        assert_eq!(reply.status, 200, "h2={h2}: {reply:?}");
        assert_eq!(
            accepted(&up),
            before + 1,
            "h2={h2}: a new connection served it"
        );
        let snap = proxy.take();
        assert_eq!(count(&snap, Counter::ConnectionsOpened), 1, "h2={h2}");
        assert_eq!(count(&snap, Counter::Errors), 0, "h2={h2}");
        assert!(
            stale_caught(&proxy).is_empty(),
            "h2={h2}: retiring is not a stale find"
        );
        assert_eq!(proxy.warmer().route_connections("api"), 1, "h2={h2}");
    }
}
