//! A failover drill of the REAL extension under the emulator: two loopback HTTPS upstreams
//! stand for a route's home and fallback regions; `EGRESS_WARDEN_DRILL` opens a window a few
//! seconds into the run. Reads move to the fallback with the first request in the window and
//! the cutover is logged; `fallback=reads` keeps an unkeyed POST home (`503` with
//! `Retry-After`); the status page shows the drill; when the window closes, traffic returns
//! home and that is logged too.

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use warden_tests::blocking_http::{request, Response};
use warden_tests::emf;
use warden_tests::python::{make_certs, upstream};
use warden_tests::warden::{
    emf_documents, extension_log, free_port, shut_down_cleanly, started_through_init, ExtensionsDir,
};

const LIMIT: Duration = Duration::from_secs(60);

/// `secs` since the epoch as RFC 3339 UTC (`date -u`, so the test needs no date crate).
fn rfc3339(secs: u64) -> String {
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn epoch_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn sleep_until_epoch(secs: u64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let at = Duration::from_secs(secs);
    if at > now {
        tokio::time::sleep(at - now + Duration::from_millis(150)).await;
    }
}

async fn call(proxy: u16, method: &'static str, path: &'static str) -> Response {
    let addr = format!("127.0.0.1:{proxy}");
    tokio::task::spawn_blocking(move || request(&addr, method, path, &[], b""))
        .await
        .expect("join")
        .expect("request to the proxy")
}

/// Which upstream answered (upstream.py's JSON `name`).
fn served_by(r: &Response) -> String {
    serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| v["name"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{} {}", r.status, r.text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_moves_reads_to_the_fallback_keeps_writes_home_and_returns() {
    tokio::time::timeout(LIMIT, async {
        let certs = tempfile::tempdir().expect("tmp");
        make_certs(certs.path());
        let ca = certs.path().join("ca.pem").display().to_string();
        let (_home, home) = upstream("home", Some(certs.path()));
        let (_away, away) = upstream("away", Some(certs.path()));
        let start = epoch_secs() + 3;
        let length = 3;
        let d = ExtensionsDir::with_warden();
        let proxy = free_port();
        // Requests between invokes stay within the last invocation's deadline: a long one.
        let cfg = d
            .proxy_config(proxy)
            .timeout(Duration::from_secs(60))
            .env(
                "EGRESS_WARDEN_ROUTES",
                format!(
                    "pay=https://127.0.0.2:{home}|https://127.0.0.2:{away};fallback=reads;regions=us-east-1/us-west-2"
                ),
            )
            .env("EGRESS_WARDEN_CA_BUNDLE", &ca)
            .env("EGRESS_WARDEN_DRILL", format!("pay@{}/{length}s", rfc3339(start)));
        let mut emu = started_through_init(cfg).await;

        // Before the window: home.
        let before = call(proxy, "GET", "/pay/orders").await;
        assert_eq!(served_by(&before), "home", "{}", extension_log(&emu));
        assert!(emu.invoke("{}").await.expect("invoke").is_success());

        // In the window: the first read goes to the fallback; an unkeyed write stays home.
        sleep_until_epoch(start).await;
        let during = call(proxy, "GET", "/pay/orders").await;
        assert_eq!(served_by(&during), "away", "{}", extension_log(&emu));
        let write = call(proxy, "POST", "/pay/orders").await;
        assert_eq!(write.status, 503, "{}", write.text());
        assert_eq!(write.header("x-egress-warden-error"), Some("home_region_only"));
        let retry_after: u64 = write
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!((1..=length).contains(&retry_after), "Retry-After {retry_after}");
        let status = call(proxy, "GET", "/_warden/status").await;
        let doc: Value = serde_json::from_slice(&status.body).expect("status JSON");
        assert_eq!(doc["drills"][0]["route"], "pay", "{doc}");
        assert_eq!(doc["drills"][0]["state"], "active", "{doc}");
        let breakers = doc["breakers"].as_array().cloned().unwrap_or_default();
        assert!(breakers.iter().any(|b| b["state"] == "drill"), "{breakers:?}");
        assert!(emu.invoke("{}").await.expect("invoke").is_success());

        // After the window: home again.
        sleep_until_epoch(start + length).await;
        let after = call(proxy, "GET", "/pay/orders").await;
        assert_eq!(served_by(&after), "home", "{}", extension_log(&emu));
        assert!(emu.invoke("{}").await.expect("invoke").is_success());
        shut_down_cleanly(&mut emu).await;

        let log = extension_log(&emu);
        for line in [
            "drill started",
            "drill cutover",
            "drill window closed",
            "drill over",
        ] {
            assert!(log.contains(line), "{line}:\n{log}");
        }
        let cutover = log
            .lines()
            .find(|l| l.contains("drill cutover"))
            .unwrap_or_default();
        assert!(cutover.contains("cutover_ms="), "{cutover}");
        let docs = emf_documents(&emu);
        assert!(emf::sum(&docs, "fallback_hits") >= 1.0);
        let drill_active = docs
            .iter()
            .filter_map(|d| d.metric_total("drill_active"))
            .fold(0.0, f64::max);
        assert_eq!(drill_active, 1.0, "{log}");
        // Per route and region: the home region served before and after, the fallback's
        // region during, each with its request time.
        let per_region = |region: &str, metric: &str| -> f64 {
            docs.iter()
                .filter(|d| {
                    d.get("Route").and_then(Value::as_str) == Some("pay")
                        && d.get("Region").and_then(Value::as_str) == Some(region)
                })
                .filter_map(|d| d.metric_total(metric))
                .sum()
        };
        assert_eq!(per_region("us-east-1", "requests"), 2.0 + 1.0, "{log}");
        assert_eq!(per_region("us-east-1", "responses_5xx"), 1.0, "the write kept home");
        assert_eq!(per_region("us-west-2", "requests"), 1.0);
        assert_eq!(per_region("us-west-2", "fallback_hits"), 1.0);
        let timed = |region: &str| {
            docs.iter().any(|d| {
                d.get("Region").and_then(Value::as_str) == Some(region)
                    && d.get("request_ms").is_some()
            })
        };
        assert!(timed("us-east-1") && timed("us-west-2"), "request_ms per region");
    })
    .await
    .expect("the drill test took too long")
}
