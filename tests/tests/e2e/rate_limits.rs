//! Per-host rate shaping on the REAL extension under the emulator, against loopback upstreams
//! named through dnsmasq. With `api.vendor.test=20/s`: 100 requests sent at once are spread
//! over ~5 s and none is answered sooner than the bucket allows; with a 500 ms wait cap the
//! excess gets `429 rate_limited` with `Retry-After`; an upstream's `429 Retry-After: 2` holds
//! the next request of another client for 2 s; a route retries a `429` no sooner than its
//! `Retry-After`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use warden_tests::blocking_http::{request, Response};
use warden_tests::dnsmasq::Dnsmasq;
use warden_tests::prerequisite;
use warden_tests::python::{make_certs, upstream, upstream_on};
use warden_tests::warden::{
    emf_documents, emf_function_total, extension_log, free_port, shut_down_cleanly,
    started_through_init, ExtensionsDir,
};

const LIMIT: Duration = Duration::from_secs(90);
const BURST: usize = 100;

fn dnsmasq() -> Option<Dnsmasq> {
    prerequisite(
        "dnsmasq",
        Dnsmasq::start(&["--host-record=api.vendor.test,127.0.0.4".to_owned()]),
    )
}

/// `n` GETs to `url` through the proxy, all at once; each answer with when it came.
async fn burst(proxy: u16, url: String, n: usize) -> Vec<(Duration, Response)> {
    let start = Instant::now();
    let url = Arc::new(url);
    let mut tasks = Vec::new();
    for _ in 0..n {
        let url = url.clone();
        tasks.push(tokio::task::spawn_blocking(move || {
            let res = request(&format!("127.0.0.1:{proxy}"), "GET", &url, &[], b"");
            (start.elapsed(), res.expect("request through the proxy"))
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("join"));
    }
    answers.sort_by_key(|(at, _)| *at);
    answers
}

async fn get(proxy: u16, url: String) -> Response {
    tokio::task::spawn_blocking(move || {
        request(&format!("127.0.0.1:{proxy}"), "GET", &url, &[], b"")
    })
    .await
    .expect("join")
    .expect("request through the proxy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_limit_spreads_a_burst_and_an_upstream_retry_after_holds_every_client() {
    let Some(dns) = dnsmasq() else { return };
    tokio::time::timeout(LIMIT, async move {
        let (_vendor, port) = upstream_on("127.0.0.4", "vendor", None);
        let certs = tempfile::tempdir().expect("tmp");
        make_certs(certs.path());
        let (_routed, routed) = upstream("routed", Some(certs.path()));
        let d = ExtensionsDir::with_warden();
        let proxy = free_port();
        let cfg = d
            .proxy_config_resolving(proxy, dns.port)
            .env("EGRESS_WARDEN_RATE_LIMITS", "api.vendor.test=20/s")
            .env("EGRESS_WARDEN_RATE_LIMIT_WAIT_MS", "8000")
            .env(
                "EGRESS_WARDEN_ROUTES",
                format!("vendor=https://127.0.0.2:{routed}"),
            )
            .env(
                "EGRESS_WARDEN_CA_BUNDLE",
                certs.path().join("ca.pem").display().to_string(),
            );
        let mut emu = started_through_init(cfg).await;

        let answers = burst(proxy, format!("http://api.vendor.test:{port}/x"), BURST).await;
        for (i, (at, res)) in answers.iter().enumerate() {
            assert_eq!(res.status, 200, "{}\n{}", res.text(), extension_log(&emu));
            // The i-th slot is i × 50 ms after the first: no answer comes sooner.
            assert!(
                *at >= Duration::from_millis(50) * i as u32,
                "answer {i} after {at:?}"
            );
        }
        let spread = answers[BURST - 1].0;
        assert!(
            spread >= Duration::from_millis(4950) && spread < Duration::from_millis(7000),
            "100 requests at 20/s took {spread:?}"
        );

        // The vendor says 429, Retry-After: 2; another client's next request waits it out
        // (the pause starts when the 429 reaches the proxy, after this instant).
        let before_429 = Instant::now();
        let throttled = get(proxy, format!("http://api.vendor.test:{port}/throttle/2/a")).await;
        assert_eq!(throttled.status, 429);
        assert_eq!(throttled.header("retry-after"), Some("2"));
        let next = get(proxy, format!("http://api.vendor.test:{port}/x")).await;
        assert_eq!(next.status, 200);
        let held = before_429.elapsed();
        assert!(
            held >= Duration::from_secs(2) && held < Duration::from_millis(4000),
            "the next request was held {held:?}"
        );

        // Route mode retries the 429, no sooner than its Retry-After.
        let sent = Instant::now();
        let routed_answer = get(
            proxy,
            format!("http://127.0.0.1:{proxy}/vendor/throttle/1/b"),
        )
        .await;
        assert_eq!(routed_answer.status, 200, "{}", routed_answer.text());
        assert!(
            sent.elapsed() >= Duration::from_millis(1000),
            "{:?}",
            sent.elapsed()
        );

        assert!(emu.invoke("{}").await.expect("invoke").is_success());
        shut_down_cleanly(&mut emu).await;
        let docs = emf_documents(&emu);
        assert_eq!(emf_function_total(&emu, "rate_limited"), 0.0);
        let waited = docs
            .iter()
            .filter(|d| d.get("Destination").is_none())
            .any(|d| d.defines("rate_limit_wait_ms"));
        assert!(waited, "rate_limit_wait_ms is written");
        let log = extension_log(&emu);
        assert!(log.contains("asked to wait"), "{log}");
    })
    .await
    .expect("the rate limit test took too long")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_wait_cap_the_excess_gets_429_with_retry_after() {
    let Some(dns) = dnsmasq() else { return };
    tokio::time::timeout(LIMIT, async move {
        let (_vendor, port) = upstream_on("127.0.0.4", "vendor", None);
        let d = ExtensionsDir::with_warden();
        let proxy = free_port();
        let cfg = d
            .proxy_config_resolving(proxy, dns.port)
            .env("EGRESS_WARDEN_RATE_LIMITS", "*.vendor.test=20/s")
            .env("EGRESS_WARDEN_RATE_LIMIT_WAIT_MS", "500");
        let mut emu = started_through_init(cfg).await;

        let answers = burst(proxy, format!("http://api.vendor.test:{port}/x"), BURST).await;
        let passed = answers.iter().filter(|(_, r)| r.status == 200).count();
        let limited: Vec<&Response> = answers
            .iter()
            .map(|(_, r)| r)
            .filter(|r| r.status == 429)
            .collect();
        assert_eq!(passed + limited.len(), BURST, "{}", extension_log(&emu));
        // 0, 50, … 500 ms: 11 slots at least, more as the burst takes a while to arrive; most
        // of the burst is answered 429.
        assert!(
            passed >= 11 && limited.len() >= BURST / 2,
            "{passed} passed"
        );
        for r in &limited {
            assert_eq!(r.header("x-egress-warden-error"), Some("rate_limited"));
            let after: u64 = r
                .header("retry-after")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            assert!((1..=5).contains(&after), "Retry-After {after}");
            assert!(
                r.text().contains("EGRESS_WARDEN_RATE_LIMITS"),
                "{}",
                r.text()
            );
        }
        assert!(emu.invoke("{}").await.expect("invoke").is_success());
        shut_down_cleanly(&mut emu).await;
        // Every stdout line is valid EMF.
        emf_documents(&emu);
        let total = |metric: &str| emf_function_total(&emu, metric);
        assert_eq!(total("rate_limited"), limited.len() as f64);
        assert_eq!(
            total("errors"),
            0.0,
            "a rate limit is not an upstream failure"
        );
    })
    .await
    .expect("the rate limit test took too long")
}
