//! The DNS cache of the REAL egress-warden binary under the local Lambda emulator, with a real
//! dnsmasq as its upstream and real clients (dig, dnspython): the listener is up before
//! registration, answers and caches, shows its figures on `/_warden/status` and in EMF, and
//! stops at SHUTDOWN.
//!
//! Needs `dig`, `dnsmasq` and python3 with dnspython (see .ci/run); the binary is found like
//! the lifecycle tests find it (`EGRESS_WARDEN_BIN`, else the target directory).

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use warden_tests::blocking_http;
use warden_tests::dnsmasq::Dnsmasq;
use warden_tests::emf::EmfValidator;
use warden_tests::emulator::{EmulatorConfig, ShutdownReason};
use warden_tests::wait::wait_until;
use warden_tests::warden::{
    free_port, started_through_init, workspace_root, ExtensionsDir, EXTENSION_NAME,
};

const LIMIT: Duration = Duration::from_secs(90);

/// dnsmasq answering `real.test` from its own records.
fn dnsmasq() -> Dnsmasq {
    Dnsmasq::start(&[
        "--local-ttl=120".to_owned(),
        "--host-record=real.test,192.0.2.7".to_owned(),
    ])
    .expect("dnsmasq")
}

/// A raw `real.test A` query on 127.0.0.1:`port`; the answer, if one comes within 300 ms.
fn ask(port: u16, id: u16) -> Option<Vec<u8>> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 4]);
    q.extend_from_slice(b"real\x04test\x00\x00\x01\x00\x01");
    let socket = UdpSocket::bind("127.0.0.1:0").ok()?;
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .ok()?;
    socket.send_to(&q, ("127.0.0.1", port)).ok()?;
    let mut buf = [0u8; 512];
    let (len, _) = socket.recv_from(&mut buf).ok()?;
    (buf[..2] == id.to_be_bytes()).then(|| buf[..len].to_vec())
}

fn dig_short(port: u16, name: &str) -> String {
    let out = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            "+short",
            "+tries=1",
            "+time=3",
            name,
            "A",
        ])
        .output()
        .expect("dig is installed (apt-get install dnsutils)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn dnspython(port: u16, name: &str) -> Value {
    let script = workspace_root().join("tests/dns/query.py");
    let out = Command::new("python3")
        .arg(script)
        .args(["--port", &port.to_string(), "--name", name])
        .output()
        .expect("python3 runs");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("query.py: {e}: {}", String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_extension_caches_dns_reports_it_and_stops_at_shutdown() {
    tokio::time::timeout(LIMIT, async {
        let upstream = tokio::task::spawn_blocking(dnsmasq).await.expect("dnsmasq");
        // The readiness probe asked once already.
        let probes = upstream.queries("A", "real.test");
        let d = ExtensionsDir::with_warden();
        let (proxy, dns) = (free_port(), free_port());
        let cfg = EmulatorConfig::with_extensions_dir(d.path())
            .env("EGRESS_WARDEN_PROXY_PORT", proxy.to_string())
            .env("EGRESS_WARDEN_DNS_PORT", dns.to_string())
            .env(
                "EGRESS_WARDEN_DNS_UPSTREAMS",
                format!("127.0.0.1:{}", upstream.port),
            );
        let mut emu = started_through_init(cfg).await;

        let (answers, python) = tokio::task::spawn_blocking(move || {
            let answers: Vec<String> = (0..5).map(|_| dig_short(dns, "real.test")).collect();
            (answers, dnspython(dns, "REAL.Test."))
        })
        .await
        .expect("clients");
        assert!(answers.iter().all(|a| a == "192.0.2.7"), "{answers:?}");
        assert_eq!(python["id"], python["id_sent"]);
        assert_eq!(python["question"][0], "REAL.Test. IN A");
        assert_eq!(python["answer"][0]["data"], "192.0.2.7");
        // dnsmasq may write its log a moment late.
        wait_until(Duration::from_secs(2), || {
            upstream.queries("A", "real.test") > probes
        });
        assert_eq!(
            upstream.queries("A", "real.test") - probes,
            1,
            "six asks, one upstream query"
        );

        let status = tokio::task::spawn_blocking(move || {
            blocking_http::request(
                &format!("127.0.0.1:{proxy}"),
                "GET",
                "/_warden/status",
                &[],
                b"",
            )
        })
        .await
        .expect("join")
        .expect("status page");
        let status: Value = serde_json::from_slice(&status.body).expect("status JSON");
        assert_eq!(status["dns"]["hits"], 5, "{status}");
        assert_eq!(status["dns"]["misses"], 1, "{status}");
        assert_eq!(
            status["dns"]["upstreams"][0]["address"],
            format!("127.0.0.1:{}", upstream.port)
        );

        assert!(emu.invoke("{}").await.expect("invoke").is_success());
        let emf = EmfValidator::new();
        let flushed = emu
            .wait_for_line(EXTENSION_NAME, Duration::from_secs(3), |l| {
                emf.validate_line(&l.text)
                    .ok()
                    .and_then(|d| d.metric_total("dns_cache_hits"))
                    .is_some()
            })
            .await;
        let line = flushed.expect("an EMF line with dns_cache_hits");
        let doc = emf.validate_line(&line.text).expect("EMF");
        assert_eq!(doc.metric_total("dns_cache_hits"), Some(5.0));
        assert_eq!(doc.metric_total("dns_cache_misses"), Some(1.0));

        let report = emu.shutdown(ShutdownReason::Spindown).await;
        let exit = report.extension(EXTENSION_NAME).expect("exit report");
        assert_eq!(exit.exit.and_then(|x| x.code), Some(0), "{exit:?}");
        let gone = tokio::task::spawn_blocking(move || {
            wait_until(Duration::from_secs(2), || ask(dns, 9).is_none())
        })
        .await
        .expect("join");
        assert!(gone, "the DNS listener stopped with the extension");
    })
    .await
    .expect("test took too long");
}
