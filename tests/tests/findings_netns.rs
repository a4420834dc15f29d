//! Broken networks for real: each test builds a network namespace lab (`warden_tests::netns`)
//! with upstreams, its own DNS server and firewall rules, runs the REAL egress-warden under the
//! local Lambda emulator with the lab's DNS server as its upstream, sends requests through the
//! proxy with curl, and asserts the finding the diagnosis reports — on stderr (one JSON line
//! per change), in EMF (`symptom_<finding>`) and on `/_warden/status` — with its evidence.
//!
//! Needs root, iproute2, nftables, /dev/net/tun (for the delay line), curl, dig and python3
//! with dnspython. Without root or namespaces each test prints why it is skipped and passes.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use warden_tests::emf::EmfValidator;
use warden_tests::emulator::{Emulator, EmulatorConfig, ShutdownReason};
use warden_tests::netns::{self, Lab};
use warden_tests::warden::{free_port, ExtensionsDir, EXTENSION_NAME};

const LIMIT: Duration = Duration::from_secs(120);

/// One lab and one extension at a time: two cores, and the timings matter.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    let _turn = ONE_AT_A_TIME.lock().await;
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test took too long")
}

/// The reason to skip, printed, when labs cannot be built here.
fn skipped(test: &str) -> bool {
    match netns::unavailable() {
        Some(reason) => {
            eprintln!("{test}: skipped: {reason}");
            true
        }
        None => false,
    }
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
            .env("AWS_REGION", "us-east-1")
            .timeout(Duration::from_secs(60));
        for (k, v) in env {
            cfg = cfg.env(*k, v.clone());
        }
        let mut emu = Emulator::start(cfg).await.expect("emulator");
        emu.wait_init()
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", emu.stderr_lines(EXTENSION_NAME).join("\n")));
        (Warden { emu, proxy, dns }, d)
    }

    fn proxy_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.proxy)
    }

    /// curl through the proxy (absolute-form forwarding): the HTTP status (0 when curl got
    /// none) and the body.
    fn get(&self, url: &str) -> (u16, String) {
        curl(&["-x", &self.proxy_url(), url])
    }

    /// curl through a CONNECT tunnel.
    fn tunnel(&self, url: &str) -> (u16, String) {
        curl(&["-p", "-x", &self.proxy_url(), url])
    }

    fn status(&self) -> Value {
        let (code, body) = curl(&[&format!("{}/_warden/status", self.proxy_url())]);
        assert_eq!(code, 200, "status page: {body}");
        serde_json::from_str(&body).expect("status JSON")
    }

    /// Invokes once: the extension flushes EMF and evaluates the diagnosis on INVOKE.
    async fn invoke(&mut self) {
        let out = self.emu.invoke("{}").await.expect("invoke");
        assert!(out.is_success(), "{:?}", out.result);
    }

    /// The finding lines (JSON with a `finding` key) the extension wrote to stderr.
    fn finding_lines(&self) -> Vec<Value> {
        self.emu
            .stderr_lines(EXTENSION_NAME)
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("finding").is_some())
            .collect()
    }

    /// Waits (bounded) for the active line of `finding` on stderr.
    async fn wait_finding(&self, finding: &str) -> Option<Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let hit = self
                .finding_lines()
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
        let v = EmfValidator::new();
        self.emu
            .stdout_lines(EXTENSION_NAME)
            .iter()
            .filter_map(|l| v.validate_line(l).ok())
            .filter(|d| d.get("Destination").is_none())
            .filter_map(|d| d.metric_total(metric))
            .sum()
    }

    /// Every `symptom_*` metric name seen in EMF.
    fn symptom_metrics(&self) -> Vec<String> {
        let v = EmfValidator::new();
        let mut names: Vec<String> = self
            .emu
            .stdout_lines(EXTENSION_NAME)
            .iter()
            .filter_map(|l| v.validate_line(l).ok())
            .flat_map(|d| d.metrics())
            .map(|(name, _)| name)
            .filter(|n| n.starts_with("symptom_"))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    fn log(&self) -> String {
        self.emu.stderr_lines(EXTENSION_NAME).join("\n")
    }

    async fn shutdown(mut self) -> Emulator {
        let report = self.emu.shutdown(ShutdownReason::Spindown).await;
        let exit = report.extension(EXTENSION_NAME).expect("exit report");
        assert!(exit.before_deadline, "{exit:?}");
        self.emu
    }
}

/// Runs curl (bounded by --max-time) and returns (HTTP status, body).
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "15", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Asserts that `finding` is reported everywhere the contract says, and returns its evidence.
async fn assert_finding(w: &Warden, finding: &str) -> Value {
    let line = w
        .wait_finding(finding)
        .await
        .unwrap_or_else(|| panic!("no active {finding} line on stderr:\n{}", w.log()));
    assert_eq!(line["level"], "WARN", "{line}");
    assert!(line["message"].as_str().is_some_and(|m| !m.is_empty()), "{line}");
    assert!(line["fix"].as_str().is_some_and(|f| !f.is_empty()), "{line}");
    let evidence = line["evidence"].clone();
    assert!(
        evidence.as_object().is_some_and(|o| !o.is_empty()),
        "evidence: {line}"
    );
    let metric = format!("symptom_{finding}");
    assert!(
        w.emf_total(&metric) >= 1.0,
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
    assert!(listed["fix"].as_str().is_some_and(|f| !f.is_empty()), "{listed}");
    evidence
}

/// The names of every finding the extension reported anywhere.
fn reported(w: &Warden) -> Vec<String> {
    let mut names: Vec<String> = w
        .finding_lines()
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
    if skipped("the_lab_really_drops_rejects_delays_and_answers_dns") {
        return;
    }
    let _turn = ONE_AT_A_TIME.blocking_lock();
    let mut lab = Lab::new("self").expect("lab");
    let (public, private, dns) = (lab.public_ip(10), lab.private_ip(10), lab.private_ip(53));
    for a in [public, private, dns] {
        lab.add_address(a).expect("address");
    }
    lab.upstream(public, 80, "public", None, &[]).expect("public upstream");
    lab.upstream(private, 80, "private", None, &[]).expect("private upstream");
    lab.dns_server(dns, &[("api.lab.test", private)], 1)
        .expect("dns server");

    let connect = |ip: std::net::Ipv4Addr, port: u16| {
        let t = Instant::now();
        let r = std::net::TcpStream::connect_timeout(&(ip, port).into(), Duration::from_millis(500));
        (r.map(|_| ()).map_err(|e| e.kind()), t.elapsed())
    };
    assert!(connect(public, 80).0.is_ok());
    assert!(connect(private, 80).0.is_ok());
    let dig = |name: &str| {
        let out = Command::new("dig")
            .args([&format!("@{dns}"), "+short", "+tries=1", "+time=1", name, "A"])
            .output()
            .expect("dig");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(dig("api.lab.test"), private.to_string());

    lab.drop_tcp(public, 80).expect("drop");
    let (r, took) = connect(public, 80);
    assert_eq!(r, Err(std::io::ErrorKind::TimedOut), "DROP: no answer at all");
    assert!(took >= Duration::from_millis(450));
    assert!(connect(private, 80).0.is_ok(), "the private side still connects");

    lab.clear_firewall().expect("flush");
    lab.reject_tcp(public, 80).expect("reject");
    let (r, took) = connect(public, 80);
    assert_eq!(r, Err(std::io::ErrorKind::ConnectionRefused), "REJECT: a reset");
    assert!(took < Duration::from_millis(200), "refused at once: {took:?}");

    lab.drop_dns().expect("drop dns");
    let dropped = dig("api.lab.test");
    assert!(dropped.contains("timed out"), "DNS dropped: {dropped}");
    lab.clear_firewall().expect("flush");
    assert_eq!(dig("api.lab.test"), private.to_string());

    if let Some(reason) = netns::delay_line_unavailable() {
        eprintln!("delay line part skipped: {reason}");
        return;
    }
    lab.delay_line(200).expect("delay line");
    let slow = lab.delayed_ip(130);
    lab.add_address(slow).expect("address");
    lab.upstream(slow, 80, "slow", None, &[]).expect("slow upstream");
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
