//! INIT warm-up and freezes, over a real network path: a namespace lab (`warden_tests::netns`)
//! with a TLS upstream `api.lab.test` and its DNS server behind a TUN delay line (20 ms per
//! round trip, paid by the TCP handshake, the TLS handshake and the DNS query alike), the REAL
//! egress-warden under the local Lambda emulator, curl as the client.
//!
//! - The first request after INIT through a warmed route (`EGRESS_WARDEN_WARM=api`) takes at
//!   most a third of the cold one (DNS + TCP + TLS + request, four round trips, against one).
//!   `scripts/bench.d/warm` runs the same test with more repetitions and prints its figures.
//! - After a SIGSTOP/SIGCONT of the extension, with the peer resetting idle connections
//!   meanwhile, a CONNECT to a warmed host:port and a route request on a pooled connection
//!   both succeed: no reset reaches the client.
//!
//! Needs root, iproute2, nftables, /dev/net/tun, curl, openssl and python3 with dnspython.
//! Without a lab (root, namespaces, the TUN device) a test is skipped with a note, and fails
//! under CI (`warden_tests::prerequisite`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use warden_tests::curl::curl;
use warden_tests::emulator::{Emulator, EmulatorConfig, ShutdownReason};
use warden_tests::netns::{self, Lab};
use warden_tests::warden::{
    emf_function_total, free_port, started_through_init, ExtensionsDir, EXTENSION_NAME,
};
use warden_tests::{one_at_a_time, prerequisite};

const LIMIT: Duration = Duration::from_secs(180);
const RTT_MS: u32 = 20;

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    one_at_a_time(LIMIT, f).await
}

/// Whether a lab with a delay line can be built here (see [`prerequisite`]).
fn lab_with_delay_line() -> bool {
    prerequisite(
        "network-namespace lab with a delay line",
        netns::available().and_then(|()| netns::delay_line_available()),
    )
    .is_some()
}

/// The extension with the lab's DNS server as its upstream, route `api` to
/// `https://api.lab.test:8443` trusting the lab CA, and `env` on top; INIT done.
async fn start_warden(
    dns: Ipv4Addr,
    ca: &Path,
    env: &[(&str, String)],
) -> (Emulator, u16, ExtensionsDir) {
    let d = ExtensionsDir::with_warden();
    let proxy = free_port();
    let mut cfg = EmulatorConfig::with_extensions_dir(d.path())
        .env("EGRESS_WARDEN_PROXY_PORT", proxy.to_string())
        .env("EGRESS_WARDEN_DNS_PORT", free_port().to_string())
        .env("EGRESS_WARDEN_DNS_UPSTREAMS", format!("{dns}:53"))
        .env("EGRESS_WARDEN_ROUTES", "api=https://api.lab.test:8443")
        .env("EGRESS_WARDEN_CA_BUNDLE", ca.display().to_string())
        .timeout(Duration::from_secs(60));
    for (k, v) in env {
        cfg = cfg.env(*k, v.clone());
    }
    let emu = started_through_init(cfg).await;
    (emu, proxy, d)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// First and second request after INIT, in ms, for one fresh extension.
async fn first_requests(dns: Ipv4Addr, ca: &Path, warm: bool) -> (f64, f64, f64) {
    let env: Vec<(&str, String)> = if warm {
        vec![("EGRESS_WARDEN_WARM", "api".to_string())]
    } else {
        vec![]
    };
    let (mut emu, proxy, _d) = start_warden(dns, ca, &env).await;
    let url = |p: &str| format!("http://127.0.0.1:{proxy}/api/{p}");
    let (code, first, body) = curl(&[&url("first")]);
    assert_eq!(code, 200, "first request (warm={warm}): {body}");
    let (code, second, body) = curl(&[&url("second")]);
    assert_eq!(code, 200, "second request: {body}");
    assert!(emu.invoke("{}").await.expect("invoke").is_success());
    emu.shutdown(ShutdownReason::Spindown).await;
    (
        first * 1000.0,
        second * 1000.0,
        emf_function_total(&emu, "warm_connections"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warmed_route_answers_its_first_request_in_a_third_of_the_cold_time() {
    if !lab_with_delay_line() {
        return;
    }
    bounded(async {
        let reps: usize = std::env::var("WARM_BENCH_REPS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(3)
            .clamp(1, 50);
        let certs = tempfile::tempdir().expect("tmp");
        netns::make_lab_certs(certs.path()).expect("lab certificates");
        let ca = certs.path().join("ca.pem");
        let mut lab = Lab::new("warm").expect("lab");
        lab.delay_line(RTT_MS).expect("delay line");
        let (api, dns) = (lab.delayed_ip(130), lab.delayed_ip(153));
        for a in [api, dns] {
            lab.add_address(a).expect("address");
        }
        let tls = (certs.path().join("server.pem"), certs.path().join("server.key"));
        lab.upstream(api, 8443, "api", Some(tls), &[]).expect("upstream");
        lab.dns_server(dns, &[("api.lab.test", api)], 60).expect("dns");

        let (mut cold, mut warm, mut steady) = (Vec::new(), Vec::new(), Vec::new());
        let mut warmed = 0.0;
        // Interleaved, so a busy moment on the machine hits both sides alike.
        for _ in 0..reps {
            let (first, second, _) = first_requests(dns, &ca, false).await;
            cold.push(first);
            steady.push(second);
            let (first, second, w) = first_requests(dns, &ca, true).await;
            warm.push(first);
            steady.push(second);
            warmed += w;
        }
        let (cold_ms, warm_ms, steady_ms) = (median(cold.clone()), median(warm.clone()), median(steady));
        // Markdown rows for scripts/bench.d/warm (printed with --nocapture).
        println!("| path RTT | repetitions | cold first request | warmed first request | later requests | warmed / cold |");
        println!("|---|---|---|---|---|---|");
        println!(
            "| {RTT_MS} ms | {reps} | {cold_ms:.1} ms | {warm_ms:.1} ms | {steady_ms:.1} ms | {:.2} |",
            warm_ms / cold_ms
        );
        assert!(
            warmed >= reps as f64,
            "the warm-up made connections (warm_connections in EMF): {warmed}"
        );
        assert!(
            cold_ms >= 3.0 * RTT_MS as f64,
            "the cold path pays DNS, TCP, TLS and the request: {cold:?}"
        );
        assert!(
            warm_ms <= cold_ms / 3.0,
            "warmed first request {warm_ms:.1} ms vs cold {cold_ms:.1} ms (cold {cold:?}, warm {warm:?})"
        );
    })
    .await
}

/// Sends SIGCONT when dropped, so a failing test never leaves the extension stopped.
struct Thaw(i32);

impl Drop for Thaw {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_freeze_connections_the_peer_reset_never_reach_the_client() {
    if !lab_with_delay_line() {
        return;
    }
    bounded(async {
        let certs = tempfile::tempdir().expect("tmp");
        netns::make_lab_certs(certs.path()).expect("lab certificates");
        let ca = certs.path().join("ca.pem");
        let mut lab = Lab::new("freeze").expect("lab");
        let (api, plain, dns) = (lab.private_ip(11), lab.private_ip(12), lab.private_ip(53));
        for a in [api, plain, dns] {
            lab.add_address(a).expect("address");
        }
        // Both peers reset connections idle for 1.5 s, as a NAT gateway does after 350 s.
        let idle = ["--idle-close-ms", "1500", "--rst"];
        let tls: Option<(PathBuf, PathBuf)> = Some((
            certs.path().join("server.pem"),
            certs.path().join("server.key"),
        ));
        lab.upstream(api, 8443, "api", tls, &idle)
            .expect("upstream");
        lab.upstream(plain, 80, "plain", None, &idle)
            .expect("upstream");
        lab.dns_server(dns, &[("api.lab.test", api)], 60)
            .expect("dns");
        let env = [("EGRESS_WARDEN_WARM", format!("api,{plain}:80"))];
        let (mut emu, proxy, _d) = start_warden(dns, &ca, &env).await;
        let route = format!("http://127.0.0.1:{proxy}/api/before");
        let (code, _, body) = curl(&[&route]);
        assert_eq!(code, 200, "{body}");
        assert!(emu.invoke("{}").await.expect("invoke").is_success());

        // Frozen between invocations while the peers reset every idle connection.
        let pid = emu.pid(EXTENSION_NAME).expect("extension pid") as i32;
        let thaw = Thaw(pid);
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        tokio::time::sleep(Duration::from_millis(3000)).await;
        drop(thaw);
        assert!(emu
            .invoke("{}")
            .await
            .expect("invoke after thaw")
            .is_success());

        let proxy_url = format!("http://127.0.0.1:{proxy}");
        let (code, _, body) = curl(&["-p", "-x", &proxy_url, &format!("http://{plain}/after")]);
        assert_eq!(
            code, 200,
            "CONNECT to the warmed host:port after the freeze: {body}"
        );
        assert!(body.contains("\"plain\""), "{body}");
        let (code, _, body) = curl(&[&format!("http://127.0.0.1:{proxy}/api/after")]);
        assert_eq!(code, 200, "route request after the freeze: {body}");

        emu.shutdown(ShutdownReason::Spindown).await;
        let log = emu.stderr_lines(EXTENSION_NAME).join("\n");
        assert!(
            emf_function_total(&emu, "warm_connections") >= 2.0,
            "the route and the host:port were warmed at INIT:\n{log}"
        );
        assert_eq!(
            emf_function_total(&emu, "errors"),
            0.0,
            "no failure reached a client:\n{log}"
        );
    })
    .await
}
