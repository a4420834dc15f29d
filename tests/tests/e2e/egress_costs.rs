//! Egress by path and its cost, on the REAL extension under the emulator. dnsmasq answers four
//! names with four loopback addresses, each with an upstream behind it; the classification is
//! configured onto them: two addresses are "in the VPC" (`EGRESS_WARDEN_VPC_CIDRS`), two are
//! "public". So `db.test` is private, `sqs.us-east-1.amazonaws.com` an interface endpoint of the
//! home region, `api.vendor.test` through the NAT gateway and `s3.eu-west-1.amazonaws.com`
//! cross-region (through NAT). Requests with bodies of known sizes go through the proxy in
//! forward mode and a `CONNECT` tunnel; the bytes must land in the right class and sum to
//! `bytes_in + bytes_out`, and `egress_cost_usd` must be the bytes × the configured prices.

use std::time::Duration;

use serde_json::Value;
use warden_tests::blocking_http::request;
use warden_tests::dnsmasq::Dnsmasq;
use warden_tests::emf::EmfDocument;
use warden_tests::prerequisite;
use warden_tests::python::upstream_on;
use warden_tests::warden::{
    emf_documents, emf_function_total, extension_log, free_port, shut_down_cleanly,
    started_through_init, ExtensionsDir,
};

const LIMIT: Duration = Duration::from_secs(60);
const GB: f64 = (1u64 << 30) as f64;

/// A figure of one destination (`host:port`) over all EMF documents.
fn of(docs: &[EmfDocument], destination: &str, metric: &str) -> f64 {
    docs.iter()
        .filter(|d| d.get("Destination").and_then(Value::as_str) == Some(destination))
        .filter_map(|d| d.metric_total(metric))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_land_in_their_path_class_and_cost_what_the_prices_say() {
    let Some(dns) = prerequisite(
        "dnsmasq",
        Dnsmasq::start(&[
            "--host-record=db.test,127.0.0.2".to_owned(),
            "--host-record=sqs.us-east-1.amazonaws.com,127.0.0.3".to_owned(),
            "--host-record=api.vendor.test,127.0.0.4".to_owned(),
            "--host-record=s3.eu-west-1.amazonaws.com,127.0.0.5".to_owned(),
        ]),
    ) else {
        return;
    };
    tokio::time::timeout(LIMIT, async move {
        let hosts = [
            ("db.test", "127.0.0.2", "private"),
            ("sqs.us-east-1.amazonaws.com", "127.0.0.3", "vpc_endpoint"),
            ("api.vendor.test", "127.0.0.4", "nat"),
            ("s3.eu-west-1.amazonaws.com", "127.0.0.5", "cross_region"),
        ];
        let mut upstreams = Vec::new();
        for (name, addr, _) in hosts {
            upstreams.push(upstream_on(addr, name, None));
        }
        let d = ExtensionsDir::with_warden();
        let proxy = free_port();
        let cfg = d
            .proxy_config_resolving(proxy, dns.port)
            .env("EGRESS_WARDEN_VPC_CIDRS", "127.0.0.2/32,127.0.0.3/32")
            .env(
                "EGRESS_WARDEN_PRICES",
                "nat=1,internet=2,cross_region=4,vpc_endpoint=8",
            );
        let mut emu = started_through_init(cfg).await;
        let proxy_addr = format!("127.0.0.1:{proxy}");
        for (i, ((name, _, _), (_, port))) in hosts.iter().zip(&upstreams).enumerate() {
            let url = format!("http://{name}:{port}/upload");
            let body = vec![b'x'; 1000 * (i + 1)];
            let addr = proxy_addr.clone();
            let res = tokio::task::spawn_blocking(move || request(&addr, "POST", &url, &[], &body))
                .await
                .expect("join")
                .expect("request through the proxy");
            assert_eq!(
                res.status,
                200,
                "{name}: {}\n{}",
                res.text(),
                extension_log(&emu)
            );
        }
        // A tunnel's bytes too: CONNECT to the NAT-class host, then a request inside it.
        let nat_port = upstreams[2].1;
        let addr = proxy_addr.clone();
        tokio::task::spawn_blocking(move || tunnel_request(&addr, nat_port))
            .await
            .expect("join");
        assert!(emu.invoke("{}").await.expect("invoke").is_success());
        shut_down_cleanly(&mut emu).await;

        let docs = emf_documents(&emu);
        let log = extension_log(&emu);
        let classes = ["private", "vpc_endpoint", "nat", "cross_region"];
        let mut expected_usd = 0.0;
        for (i, ((name, _, class), (_, port))) in hosts.iter().zip(&upstreams).enumerate() {
            let dest = format!("{name}:{port}");
            let (bytes_in, bytes_out) =
                (of(&docs, &dest, "bytes_in"), of(&docs, &dest, "bytes_out"));
            // The request body, and for the NAT host the request sent inside the tunnel.
            let mut sent = 1000.0 * (i + 1) as f64;
            if *class == "nat" {
                sent += INSIDE_TUNNEL.len() as f64;
            }
            assert_eq!(bytes_out, sent, "{dest}: bytes_out\n{log}");
            assert!(bytes_in > 0.0, "{dest}: bytes_in\n{log}");
            for other in classes {
                let counted = of(&docs, &dest, &format!("egress_bytes_{other}"));
                let want = if other == *class {
                    bytes_in + bytes_out
                } else {
                    0.0
                };
                assert_eq!(counted, want, "{dest}: egress_bytes_{other}\n{log}");
            }
            expected_usd += match *class {
                "private" => 0.0,
                "vpc_endpoint" => (bytes_in + bytes_out) * 8.0,
                "nat" => (bytes_in + bytes_out) * 1.0 + bytes_out * 2.0,
                _ => (bytes_in + bytes_out) * (4.0 + 1.0),
            } / GB;
        }
        // Function-level figures (destination documents repeat them split up).
        let total = |metric: &str| emf_function_total(&emu, metric);
        let by_class: f64 = classes
            .iter()
            .map(|c| total(&format!("egress_bytes_{c}")))
            .sum();
        assert_eq!(by_class, total("bytes_in") + total("bytes_out"), "{log}");
        let cost = total("egress_cost_usd");
        assert!(
            (cost - expected_usd).abs() <= expected_usd * 1e-9,
            "egress_cost_usd {cost} != {expected_usd}"
        );
        let unit = docs
            .iter()
            .flat_map(|d| d.metrics())
            .find(|(name, _)| name == "egress_cost_usd")
            .and_then(|(_, unit)| unit);
        assert_eq!(unit.as_deref(), Some("None"));
    })
    .await
    .expect("the egress cost test took too long")
}

/// What the client sends inside the tunnel.
const INSIDE_TUNNEL: &str =
    "GET /inside HTTP/1.1\r\nHost: api.vendor.test\r\nConnection: close\r\n\r\n";

/// `CONNECT api.vendor.test:PORT`, then a plain GET inside the tunnel.
fn tunnel_request(proxy: &str, port: u16) {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut s = std::net::TcpStream::connect(proxy).expect("proxy");
    write!(
        s,
        "CONNECT api.vendor.test:{port} HTTP/1.1\r\nHost: api.vendor.test:{port}\r\n\r\n"
    )
    .expect("write");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut line = String::new();
    r.read_line(&mut line).expect("status");
    assert!(line.contains(" 200"), "CONNECT answered {line:?}");
    while line.trim() != "" {
        line.clear();
        r.read_line(&mut line).expect("head");
    }
    s.write_all(INSIDE_TUNNEL.as_bytes()).expect("write");
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    assert!(String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 200"));
}
