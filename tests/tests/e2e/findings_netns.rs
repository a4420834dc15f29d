//! Broken networks for real: each test builds a network namespace lab (`warden_tests::netns`)
//! with upstreams, its own DNS server and firewall rules, runs the REAL egress-warden under the
//! local Lambda emulator with the lab's DNS server as its upstream, sends requests through the
//! proxy with curl, and asserts the finding the diagnosis reports — on stderr (one JSON line
//! per change), in EMF (`symptom_<finding>`) and on `/_warden/status` — with its evidence.
//!
//! Needs root, iproute2, nftables, /dev/net/tun (for the delay line), curl, dig and python3
//! with dnspython. Without root or namespaces a test is skipped with a note, and fails under CI
//! (`warden_tests::prerequisite`).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use warden_tests::curl::curl;
use warden_tests::emf::EmfValidator;
use warden_tests::emulator::{Emulator, EmulatorConfig, ShutdownReason};
use warden_tests::netns::{self, Lab};
use warden_tests::warden::{
    emf_function_total, extension_log, findings, free_port, started_through_init, ExtensionsDir,
    EXTENSION_NAME,
};
use warden_tests::{exclusive, one_at_a_time, prerequisite};

const LIMIT: Duration = Duration::from_secs(120);

/// One lab and one extension at a time: two cores, and the timings matter.
async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    one_at_a_time(LIMIT, f).await
}

/// Whether labs can be built here (see [`prerequisite`]).
fn lab() -> bool {
    prerequisite("network-namespace lab", netns::available()).is_some()
}

/// Whether a lab's delay line can be built here (see [`prerequisite`]).
fn delay_line() -> bool {
    prerequisite("delay line", netns::delay_line_available()).is_some()
}

/// The extension's proxy and DNS ports, and the emulator running it.
struct Warden {
    emu: Emulator,
    proxy: u16,
    dns: u16,
}

impl Warden {
    /// Starts the extension with the lab's DNS server (`dns_ip`:53) as its upstream and
    /// `env` on top; waits for INIT.
    async fn start(dns_ip: std::net::Ipv4Addr, env: &[(&str, String)]) -> (Warden, ExtensionsDir) {
        let d = ExtensionsDir::with_warden();
        let (proxy, dns) = (free_port(), free_port());
        let mut cfg = EmulatorConfig::with_extensions_dir(d.path())
            .env("EGRESS_WARDEN_PROXY_PORT", proxy.to_string())
            .env("EGRESS_WARDEN_DNS_PORT", dns.to_string())
            .env("EGRESS_WARDEN_DNS_UPSTREAMS", format!("{dns_ip}:53"))
            .env("EGRESS_WARDEN_CONNECT_TIMEOUT_MS", "700")
            .timeout(Duration::from_secs(60));
        // The function's region, for cross_region (the emulator sets AWS_REGION from it).
        cfg.region = "us-east-1".to_string();
        for (k, v) in env {
            cfg = cfg.env(*k, v.clone());
        }
        let emu = started_through_init(cfg).await;
        (Warden { emu, proxy, dns }, d)
    }

    fn proxy_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.proxy)
    }

    /// curl through the proxy (absolute-form forwarding): the HTTP status (0 when curl got
    /// none) and the body.
    fn get(&self, url: &str) -> (u16, String) {
        let (code, _, body) = curl(&["-x", &self.proxy_url(), url]);
        (code, body)
    }

    /// curl through a CONNECT tunnel.
    fn tunnel(&self, url: &str) -> (u16, String) {
        let (code, _, body) = curl(&["-p", "-x", &self.proxy_url(), url]);
        (code, body)
    }

    fn status(&self) -> Value {
        let (code, _, body) = curl(&[&format!("{}/_warden/status", self.proxy_url())]);
        assert_eq!(code, 200, "status page: {body}");
        serde_json::from_str(&body).expect("status JSON")
    }

    /// Invokes once: the extension flushes EMF and evaluates the diagnosis on INVOKE.
    async fn invoke(&mut self) {
        let out = self.emu.invoke("{}").await.expect("invoke");
        assert!(out.is_success(), "{:?}", out.result);
    }

    /// Waits (bounded) for the active line of `finding` on stderr.
    async fn wait_finding(&self, finding: &str) -> Option<Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let hit = findings(&self.emu)
                .into_iter()
                .find(|v| v["finding"] == finding && v["status"] == "active");
            if hit.is_some() || Instant::now() >= deadline {
                return hit;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sum of `metric` over the function-level EMF documents written so far.
    fn emf_total(&self, metric: &str) -> f64 {
        emf_function_total(&self.emu, metric)
    }

    /// Waits (bounded) until the EMF written so far has `metric` ≥ `at_least`.
    async fn wait_emf(&self, metric: &str, at_least: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let total = self.emf_total(metric);
            if total >= at_least || Instant::now() >= deadline {
                return total;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        extension_log(&self.emu)
    }

    async fn shutdown(mut self) -> Emulator {
        let report = self.emu.shutdown(ShutdownReason::Spindown).await;
        let exit = report.extension(EXTENSION_NAME).expect("exit report");
        assert!(exit.before_deadline, "{exit:?}");
        self.emu
    }
}

/// Runs curl (bounded by --max-time) and returns (HTTP status, body).
/// Asserts that `finding` is reported everywhere the contract says, and returns its evidence.
async fn assert_finding(w: &Warden, finding: &str) -> Value {
    let line = w
        .wait_finding(finding)
        .await
        .unwrap_or_else(|| panic!("no active {finding} line on stderr:\n{}", w.log()));
    assert_eq!(line["level"], "WARN", "{line}");
    assert!(
        line["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{line}"
    );
    assert!(
        line["fix"].as_str().is_some_and(|f| !f.is_empty()),
        "{line}"
    );
    let evidence = line["evidence"].clone();
    assert!(
        evidence.as_object().is_some_and(|o| !o.is_empty()),
        "evidence: {line}"
    );
    let metric = format!("symptom_{finding}");
    assert!(
        w.wait_emf(&metric, 1.0).await >= 1.0,
        "{metric} in the EMF flushed on INVOKE: {:?}",
        w.emu.stdout_lines(EXTENSION_NAME)
    );
    let status = w.status();
    let listed = status["findings"]
        .as_array()
        .and_then(|f| f.iter().find(|x| x["finding"] == finding).cloned())
        .unwrap_or_else(|| panic!("{finding} on /_warden/status: {status}"));
    assert_eq!(listed["status"], "active", "{listed}");
    assert!(listed["since_invocation"].is_u64(), "{listed}");
    assert!(
        listed["fix"].as_str().is_some_and(|f| !f.is_empty()),
        "{listed}"
    );
    evidence
}

/// The names of every finding the extension reported anywhere.
fn reported(w: &Warden) -> Vec<String> {
    let mut names: Vec<String> = findings(&w.emu)
        .iter()
        .filter_map(|v| v["finding"].as_str().map(str::to_string))
        .collect();
    if let Some(listed) = w.status()["findings"].as_array() {
        names.extend(
            listed
                .iter()
                .filter_map(|v| v["finding"].as_str().map(str::to_string)),
        );
    }
    names.sort();
    names.dedup();
    names
}

fn mentions(evidence: &Value, needle: &str) -> bool {
    evidence.to_string().contains(needle)
}

#[test]
fn the_lab_really_drops_rejects_delays_and_answers_dns() {
    if !lab() {
        return;
    }
    let _turn = exclusive();
    let mut lab = Lab::new("self").expect("lab");
    let (public, private, dns) = (lab.public_ip(10), lab.private_ip(10), lab.private_ip(53));
    for a in [public, private, dns] {
        lab.add_address(a).expect("address");
    }
    lab.upstream(public, 80, "public", None, &[])
        .expect("public upstream");
    lab.upstream(private, 80, "private", None, &[])
        .expect("private upstream");
    lab.dns_server(dns, &[("api.lab.test", private)], 1)
        .expect("dns server");

    let connect = |ip: std::net::Ipv4Addr, port: u16| {
        let t = Instant::now();
        let r =
            std::net::TcpStream::connect_timeout(&(ip, port).into(), Duration::from_millis(500));
        (r.map(|_| ()).map_err(|e| e.kind()), t.elapsed())
    };
    assert!(connect(public, 80).0.is_ok());
    assert!(connect(private, 80).0.is_ok());
    let dig = |name: &str| {
        let out = Command::new("dig")
            .args([
                &format!("@{dns}"),
                "+short",
                "+tries=1",
                "+time=1",
                name,
                "A",
            ])
            .output()
            .expect("dig");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(dig("api.lab.test"), private.to_string());

    lab.drop_tcp(public, 80).expect("drop");
    let (r, took) = connect(public, 80);
    assert_eq!(
        r,
        Err(std::io::ErrorKind::TimedOut),
        "DROP: no answer at all"
    );
    assert!(took >= Duration::from_millis(450));
    assert!(
        connect(private, 80).0.is_ok(),
        "the private side still connects"
    );

    lab.clear_firewall().expect("flush");
    lab.reject_tcp(public, 80).expect("reject");
    let (r, took) = connect(public, 80);
    assert_eq!(
        r,
        Err(std::io::ErrorKind::ConnectionRefused),
        "REJECT: a reset"
    );
    assert!(
        took < Duration::from_millis(200),
        "refused at once: {took:?}"
    );

    lab.drop_dns().expect("drop dns");
    let dropped = dig("api.lab.test");
    assert!(dropped.contains("timed out"), "DNS dropped: {dropped}");
    lab.clear_firewall().expect("flush");
    assert_eq!(dig("api.lab.test"), private.to_string());

    if !delay_line() {
        return;
    }
    lab.delay_line(200).expect("delay line");
    let slow = lab.delayed_ip(130);
    lab.add_address(slow).expect("address");
    lab.upstream(slow, 80, "slow", None, &[])
        .expect("slow upstream");
    let (r, took) = connect(slow, 80);
    assert!(r.is_ok(), "{r:?}");
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_millis(450),
        "connect through a 200 ms delay line: {took:?}"
    );
    lab.delay().expect("line").set_enabled(false).expect("off");
    std::thread::sleep(Duration::from_millis(300));
    let (r, took) = connect(slow, 80);
    assert!(r.is_ok(), "{r:?}");
    assert!(took < Duration::from_millis(50), "delay off: {took:?}");
}

/// A lab with a DNS server on `private_ip(53)` answering `records`, already started.
fn lab_with_dns(tag: &str, records: &[(&str, std::net::Ipv4Addr)], ttl_s: u32) -> Lab {
    let mut lab = Lab::new(tag).expect("lab");
    let dns = lab.private_ip(53);
    lab.add_address(dns).expect("address");
    lab.dns_server(dns, records, ttl_s).expect("dns server");
    lab
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_public_egress_is_no_egress_route_while_the_private_upstream_connects() {
    if !lab() {
        return;
    }
    bounded(async {
        let mut lab = lab_with_dns("noroute", &[], 5);
        let (public, private) = (lab.public_ip(10), lab.private_ip(10));
        for a in [public, private] {
            lab.add_address(a).expect("address");
        }
        lab.upstream(public, 80, "public", None, &[])
            .expect("upstream");
        lab.upstream(private, 80, "private", None, &[])
            .expect("upstream");
        // A VPC without a NAT gateway: SYNs to public addresses vanish.
        lab.drop_tcp(public, 80).expect("drop");
        let (mut w, _dir) = Warden::start(lab.private_ip(53), &[]).await;

        for i in 0..3 {
            let (code, body) = w.get(&format!("http://{public}/p{i}"));
            assert_eq!(code, 504, "public call {i} times out at connect: {body}");
            let (code, body) = w.get(&format!("http://{private}/v{i}"));
            assert_eq!(code, 200, "private call {i}: {body}");
            assert!(body.contains("\"private\""), "{body}");
        }
        w.invoke().await;
        let evidence = assert_finding(&w, "no_egress_route").await;
        assert_eq!(evidence["public_timeouts"], 3, "{evidence}");
        assert_eq!(evidence["public_connected"], 0, "{evidence}");
        assert!(
            evidence["private_connected"].as_u64() >= Some(1),
            "the contrast: {evidence}"
        );
        assert!(
            mentions(&evidence["destinations"], &public.to_string()),
            "the public destination is named: {evidence}"
        );
        assert!(
            !mentions(&evidence["destinations"], &private.to_string()),
            "the private one is not: {evidence}"
        );
        assert!(w.emf_total("connect_timeouts") >= 3.0);
        w.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_connect_is_refused_and_counted_not_called_no_egress_route() {
    if !lab() {
        return;
    }
    bounded(async {
        let mut lab = lab_with_dns("reject", &[], 5);
        let public = lab.public_ip(10);
        lab.add_address(public).expect("address");
        lab.upstream(public, 80, "public", None, &[])
            .expect("upstream");
        // The path exists; the destination (or a firewall on it) answers with a reset.
        lab.reject_tcp(public, 80).expect("reject");
        let (mut w, _dir) = Warden::start(lab.private_ip(53), &[]).await;

        let started = Instant::now();
        for i in 0..3 {
            let (code, body) = w.get(&format!("http://{public}/r{i}"));
            assert_eq!(code, 502, "refused connect → 502: {body}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "refusals are immediate"
        );
        w.invoke().await;
        assert_eq!(w.wait_emf("requests", 3.0).await, 3.0);
        assert_eq!(w.emf_total("errors"), 3.0, "every refusal is an error");
        assert_eq!(w.emf_total("connect_timeouts"), 0.0);
        let names = reported(&w);
        assert!(
            !names.iter().any(|n| n == "no_egress_route"),
            "a refusal proves there is a route: {names:?}\n{}",
            w.log()
        );
        w.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_path_only_at_init_is_eni_cold_path() {
    if !lab() {
        return;
    }
    if !delay_line() {
        return;
    }
    bounded(async {
        let mut lab = lab_with_dns("cold", &[], 5);
        // 300 ms per round trip while the environment initialises, then none.
        lab.delay_line(300).expect("delay line");
        let slow = lab.delayed_ip(130);
        lab.add_address(slow).expect("address");
        lab.upstream(slow, 80, "cold", None, &[]).expect("upstream");
        let env = [
            ("EGRESS_WARDEN_WARM", format!("{slow}:80*2")),
            ("EGRESS_WARDEN_WARM_BUDGET_MS", "3000".to_string()),
            ("EGRESS_WARDEN_CONNECT_TIMEOUT_MS", "2000".to_string()),
        ];
        let (mut w, _dir) = Warden::start(lab.private_ip(53), &env).await;
        lab.delay()
            .expect("line")
            .set_enabled(false)
            .expect("delay off");
        // INIT and the first invoke are the cold phase; the tunnels below run in the steady one.
        w.invoke().await;
        w.invoke().await;
        tokio::time::sleep(Duration::from_millis(400)).await;

        // Tunnels: each one beyond the pre-connected sockets is a fresh connect, now fast.
        for i in 0..6 {
            let (code, body) = w.tunnel(&format!("http://{slow}/t{i}"));
            assert_eq!(code, 200, "tunnel {i}: {body}");
        }
        w.invoke().await;
        let evidence = assert_finding(&w, "eni_cold_path").await;
        assert!(
            evidence["cold_connects"].as_u64() >= Some(2),
            "the warm-up's connects: {evidence}"
        );
        assert!(
            evidence["steady_connects"].as_u64() >= Some(3),
            "{evidence}"
        );
        let cold = evidence["cold_p50_ms"].as_f64().unwrap_or(0.0);
        let steady = evidence["steady_p50_ms"].as_f64().unwrap_or(f64::MAX);
        assert!(
            cold >= 250.0,
            "cold connects paid the 300 ms path: {evidence}"
        );
        assert!(steady < 50.0, "later ones did not: {evidence}");
        w.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_upstream_dns_is_dns_throttled_and_stale_answers_are_served() {
    if !lab() {
        return;
    }
    bounded(async {
        let mut lab = Lab::new("dnsdrop").expect("lab");
        let (private, dns) = (lab.private_ip(10), lab.private_ip(53));
        for a in [private, dns] {
            lab.add_address(a).expect("address");
        }
        lab.upstream(private, 80, "svc", None, &[])
            .expect("upstream");
        let names: Vec<String> = (0..5).map(|i| format!("svc{i}.lab.test")).collect();
        let records: Vec<(&str, std::net::Ipv4Addr)> =
            names.iter().map(|n| (n.as_str(), private)).collect();
        // TTL 1 s: every later lookup has to go upstream again.
        lab.dns_server(dns, &records, 1).expect("dns server");
        let (mut w, _dir) = Warden::start(dns, &[]).await;

        for n in &names {
            let (code, body) = w.get(&format!("http://{n}/fresh"));
            assert_eq!(code, 200, "{n}: {body}");
        }
        // The resolver starts dropping queries (Route 53 Resolver's per-ENI limit), and the
        // cached answers expire.
        lab.drop_dns().expect("drop dns");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Tunnels, not forwarding: a pooled forward connection would need no lookup at all.
        for n in &names {
            let (code, body) = w.tunnel(&format!("http://{n}/stale"));
            assert_eq!(code, 200, "{n} answered from the stale cache: {body}");
            assert!(body.contains("\"svc\""), "{body}");
        }
        // The DNS listener serves the same stale answer, still correct.
        let out = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &w.dns.to_string(),
                "+short",
                "+tries=1",
                "+time=5",
            ])
            .arg(&names[0])
            .output()
            .expect("dig");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            private.to_string()
        );

        w.invoke().await;
        let evidence = assert_finding(&w, "dns_throttled").await;
        assert!(evidence["timeouts"].as_u64() >= Some(3), "{evidence}");
        assert!(
            evidence["answered"].as_u64() >= Some(5),
            "the fresh look-ups: {evidence}"
        );
        assert!(
            w.wait_emf("dns_stale_served", 5.0).await >= 5.0,
            "stale answers counted"
        );
        w.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_resetting_idle_connections_is_idle_reset_and_the_request_still_succeeds() {
    if !lab() {
        return;
    }
    bounded(async {
        let certs = tempfile::tempdir().expect("tmp");
        netns::make_lab_certs(certs.path()).expect("lab certificates");
        let mut lab = Lab::new("idle").expect("lab");
        let (private, dns) = (lab.private_ip(11), lab.private_ip(53));
        for a in [private, dns] {
            lab.add_address(a).expect("address");
        }
        // Like a NAT gateway: a flow idle for 1.5 s is forgotten without a word, and the next
        // packet on it gets a reset. (The proxy checks connections idle for 1 s or more.)
        let tls = (
            certs.path().join("server.pem"),
            certs.path().join("server.key"),
        );
        lab.upstream(
            private,
            8443,
            "api",
            Some(tls),
            &["--idle-forget-ms", "1500"],
        )
        .expect("upstream");
        lab.dns_server(dns, &[("api.lab.test", private)], 30)
            .expect("dns");
        let env = [
            (
                "EGRESS_WARDEN_ROUTES",
                "api=https://api.lab.test:8443".to_string(),
            ),
            (
                "EGRESS_WARDEN_CA_BUNDLE",
                certs.path().join("ca.pem").display().to_string(),
            ),
        ];
        let (mut w, _dir) = Warden::start(dns, &env).await;

        let route = |p: &str| format!("http://127.0.0.1:{}/api/{p}", w.proxy);
        for round in 0..4 {
            let (code, _, body) = curl(&[&route(&format!("r{round}"))]);
            assert_eq!(
                code,
                200,
                "round {round}: no reset reaches the client: {body}\n{}",
                w.log()
            );
            tokio::time::sleep(Duration::from_millis(2000)).await;
        }
        w.invoke().await;
        let evidence = assert_finding(&w, "idle_reset").await;
        assert!(evidence["resets"].as_u64() >= Some(2), "{evidence}");
        assert!(mentions(&evidence["hosts"], "api.lab.test"), "{evidence}");
        assert_eq!(w.emf_total("errors"), 0.0);
        w.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_another_regions_endpoint_are_cross_region() {
    if !lab() {
        return;
    }
    bounded(async {
        let mut lab = Lab::new("region").expect("lab");
        let (private, dns) = (lab.private_ip(10), lab.private_ip(53));
        for a in [private, dns] {
            lab.add_address(a).expect("address");
        }
        lab.upstream(private, 80, "sqs", None, &[])
            .expect("upstream");
        let records = [
            ("sqs.eu-west-1.amazonaws.com", private),
            ("sqs.us-east-1.amazonaws.com", private),
        ];
        lab.dns_server(dns, &records, 30).expect("dns");
        let (mut w, _dir) = Warden::start(dns, &[]).await;

        for i in 0..3 {
            let (code, body) = w.get(&format!("http://sqs.eu-west-1.amazonaws.com/q{i}"));
            assert_eq!(code, 200, "{body}");
        }
        // Most calls stay in the function's region: the share is what the rule judges.
        for i in 0..9 {
            let (code, _) = w.get(&format!("http://sqs.us-east-1.amazonaws.com/local{i}"));
            assert_eq!(code, 200);
        }
        w.invoke().await;
        let evidence = assert_finding(&w, "cross_region").await;
        assert_eq!(evidence["cross_region_requests"], 3, "{evidence}");
        assert_eq!(evidence["home_region"], "us-east-1", "{evidence}");
        assert!(
            mentions(&evidence["hosts"], "sqs.eu-west-1.amazonaws.com"),
            "the remote host is named: {evidence}"
        );
        assert!(
            !mentions(&evidence["hosts"], "us-east-1"),
            "the local one is not: {evidence}"
        );
        assert_eq!(w.wait_emf("cross_region_requests", 3.0).await, 3.0);
        w.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_lab_under_the_same_load_raises_no_finding() {
    if !lab() {
        return;
    }
    bounded(async {
        let certs = tempfile::tempdir().expect("tmp");
        netns::make_lab_certs(certs.path()).expect("lab certificates");
        let mut lab = Lab::new("healthy").expect("lab");
        let (public, private, api, dns) = (
            lab.public_ip(10),
            lab.private_ip(10),
            lab.private_ip(11),
            lab.private_ip(53),
        );
        for a in [public, private, api, dns] {
            lab.add_address(a).expect("address");
        }
        lab.upstream(public, 80, "public", None, &[])
            .expect("upstream");
        lab.upstream(private, 80, "private", None, &[])
            .expect("upstream");
        let tls = (
            certs.path().join("server.pem"),
            certs.path().join("server.key"),
        );
        lab.upstream(api, 8443, "api", Some(tls), &[])
            .expect("upstream");
        let names: Vec<String> = (0..5).map(|i| format!("svc{i}.lab.test")).collect();
        let mut records: Vec<(&str, std::net::Ipv4Addr)> =
            names.iter().map(|n| (n.as_str(), private)).collect();
        records.push(("api.lab.test", api));
        records.push(("sqs.us-east-1.amazonaws.com", private));
        lab.dns_server(dns, &records, 1).expect("dns");
        let env = [
            (
                "EGRESS_WARDEN_ROUTES",
                "api=https://api.lab.test:8443".to_string(),
            ),
            (
                "EGRESS_WARDEN_CA_BUNDLE",
                certs.path().join("ca.pem").display().to_string(),
            ),
            ("EGRESS_WARDEN_WARM", "api".to_string()),
        ];
        let (mut w, _dir) = Warden::start(dns, &env).await;

        // The load of the tests above, on a network that works.
        for _round in 0..2 {
            for i in 0..3 {
                assert_eq!(w.get(&format!("http://{public}/p{i}")).0, 200);
                assert_eq!(w.get(&format!("http://{private}/v{i}")).0, 200);
                assert_eq!(w.tunnel(&format!("http://{public}/t{i}")).0, 200);
            }
            for n in &names {
                assert_eq!(w.get(&format!("http://{n}/x")).0, 200);
            }
            assert_eq!(w.get("http://sqs.us-east-1.amazonaws.com/local").0, 200);
            for i in 0..3 {
                let (code, _, body) = curl(&[&format!("http://127.0.0.1:{}/api/h{i}", w.proxy)]);
                assert_eq!(code, 200, "{body}");
            }
            tokio::time::sleep(Duration::from_millis(1200)).await;
            w.invoke().await;
        }
        assert_eq!(reported(&w), Vec::<String>::new(), "{}", w.log());
        assert_eq!(w.emf_total("errors"), 0.0);
        let emu = w.shutdown().await;
        let lines: Vec<String> = emu
            .stderr_lines(EXTENSION_NAME)
            .into_iter()
            .filter(|l| l.contains("\"finding\""))
            .collect();
        assert!(lines.is_empty(), "no finding, also at SHUTDOWN: {lines:?}");
        let v = EmfValidator::new();
        let symptoms: Vec<String> = emu
            .stdout_lines(EXTENSION_NAME)
            .iter()
            .filter_map(|l| v.validate_line(l).ok())
            .flat_map(|d| d.metrics())
            .map(|(n, _)| n)
            .filter(|n| n.starts_with("symptom_"))
            .collect();
        assert!(symptoms.is_empty(), "{symptoms:?}");
    })
    .await
}
