//! The diagnosis behind the real proxy on loopback: refused connects never read as a missing
//! route, and the status page shows what the diagnosis found.

use super::connect;
use crate::clock::InvocationClock;
use crate::config::Config;
use crate::diagnose::Diagnosis;
use crate::diagnose::Settings;
use crate::dns::DnsCache;
use crate::metrics::{ConnectOutcome, Recorder};
use crate::shutdown;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A loopback port with nothing listening.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// One request on a fresh connection; returns the status code and the body (as long as its
/// `Content-Length` says, so a kept-alive connection does not hold the test).
async fn exchange(proxy: SocketAddr, request: String) -> (u16, String) {
    let mut stream = TcpStream::connect(proxy)
        .await
        .expect("connect to the proxy");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut reply = Vec::new();
    let mut chunk = [0u8; 8192];
    let complete = |reply: &[u8]| {
        let text = String::from_utf8_lossy(reply);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return false;
        };
        let length = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        body.len() >= length
    };
    while !complete(&reply) {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await;
        match read {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => reply.extend_from_slice(&chunk[..n]),
            Ok(Err(err)) => panic!("reading the reply: {err}"),
            Err(_) => panic!("the proxy did not answer in time"),
        }
    }
    let reply = String::from_utf8_lossy(&reply).to_string();
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn status_findings(proxy: SocketAddr) -> Vec<serde_json::Value> {
    let (status, body) = exchange(
        proxy,
        "GET /_warden/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("status is JSON");
    doc["findings"].as_array().expect("findings list").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_traffic_is_no_finding_and_the_status_page_lists_findings() {
    let vars: Vec<(String, String)> = [
        ("EGRESS_WARDEN_PROXY_PORT", "0"),
        ("EGRESS_WARDEN_DNS_PORT", "0"),
        ("EGRESS_WARDEN_DNS_UPSTREAMS", "127.0.0.1:9"),
        // Loopback is lifted so requests reach the closed port; it is outside the VPC
        // ranges, so it counts as public egress.
        ("EGRESS_WARDEN_ALLOW", "127.0.0.0/8"),
        ("EGRESS_WARDEN_CONNECT_TIMEOUT_MS", "500"),
        ("AWS_REGION", "us-east-1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let (config, problems) = Config::from_vars(&vars);
    assert!(problems.is_empty(), "{problems:?}");
    let (_shutdown, shutdown_rx) = shutdown::channel();
    let recorder = Recorder::new();
    let cache = DnsCache::new(&config.dns, config.dns_port, recorder.clone()).expect("DNS cache");
    let ctx = crate::proxy::ProxyDeps {
        config: Arc::new(config),
        recorder,
        clock: Arc::new(InvocationClock::new()),
        findings: Default::default(),
        shutdown: shutdown_rx,
        dns: cache,
    };
    let _diagnosis: Arc<Diagnosis> = Diagnosis::start(
        ctx.recorder.clone(),
        ctx.clock.clone(),
        ctx.findings.clone(),
        Settings::from_config(&ctx.config),
    );
    let handle = crate::proxy::bind(ctx.clone())
        .await
        .expect("bind the proxy");
    let proxy = handle.local_addr();

    let port = closed_port();
    for _ in 0..6 {
        let (status, _) = exchange(
            proxy,
            format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 502, "a refused connect is a 502");
        let (status, _) = exchange(
            proxy,
            format!(
                "GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
                 Connection: close\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(status, 502, "a refused forward is a 502");
    }
    let refused = ctx
        .recorder
        .observations_since(0)
        .events
        .iter()
        .filter(|o| {
            matches!(
                o.event,
                crate::metrics::Event::Connect {
                    outcome: ConnectOutcome::Refused,
                    ..
                }
            )
        })
        .count();
    assert!(refused >= 12, "the dialer noted the refusals ({refused})");
    let findings = status_findings(proxy).await;
    assert!(findings.is_empty(), "{findings:?}");
    assert!(!ctx.findings.is_active("no_egress_route"));

    // An interface endpoint whose security group drops the function's packets, as the
    // dialer would note it: the page shows the finding at once.
    ctx.clock.begin_invocation(0);
    ctx.recorder.begin_invocation(1);
    for _ in 0..3 {
        ctx.recorder.note(connect(
            "sqs.us-east-1.amazonaws.com",
            "10.0.5.5:443",
            ConnectOutcome::Timeout,
            500.0,
        ));
    }
    let findings = status_findings(proxy).await;
    assert_eq!(findings.len(), 1, "{findings:?}");
    let finding = &findings[0];
    assert_eq!(finding["finding"], "aws_endpoint_unreachable");
    assert_eq!(finding["status"], "active");
    assert_eq!(finding["since_invocation"], 1);
    let endpoint = &finding["evidence"]["endpoints"][0];
    assert_eq!(endpoint["timeouts"], 3);
    assert_eq!(endpoint["vpc_endpoint"], "com.amazonaws.us-east-1.sqs");
    assert!(finding["fix"]
        .as_str()
        .unwrap()
        .contains("com.amazonaws.us-east-1.sqs"));
    // Counted once, for the next flush.
    let _ = status_findings(proxy).await;
    let snapshot = ctx.recorder.take();
    assert_eq!(
        snapshot
            .named_counts
            .get("symptom_aws_endpoint_unreachable"),
        Some(&1)
    );
    assert!(!snapshot
        .named_counts
        .contains_key("symptom_no_egress_route"));
}
