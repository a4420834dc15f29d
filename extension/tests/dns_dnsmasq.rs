//! Against a real, independent upstream: dnsmasq from Debian on loopback, its query log
//! telling how often the cache asked it.

mod dns_support;

use dns_support::*;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A dnsmasq answering `real.test` from its own records, logging every query to a file.
struct Dnsmasq {
    child: Child,
    log: PathBuf,
    addr: SocketAddr,
}

impl Dnsmasq {
    fn start() -> Dnsmasq {
        let port = free_port();
        let log =
            std::env::temp_dir().join(format!("warden-dnsmasq-{}-{port}.log", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--user=root",
                "--pid-file=",
                "--local=/test/",
                "--local-ttl=120",
                "--host-record=real.test,192.0.2.7,2001:db8::7",
                "--txt-record=txt.real.test,hello from dnsmasq",
                "--mx-host=real.test,mail.real.test,10",
                "--log-queries",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--log-facility={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq is installed (apt-get install dnsmasq)");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let ready = eventually(Duration::from_secs(5), || {
            udp_exchange(
                port,
                &query_bytes(1, "real.test.", hickory_proto::rr::RecordType::A, None),
                Duration::from_millis(200),
            )
            .is_some()
        });
        assert!(ready, "dnsmasq did not start");
        Dnsmasq { child, log, addr }
    }

    /// How many `query[TYPE] name` lines dnsmasq logged.
    fn queries(&self, rtype: &str, name: &str) -> usize {
        let needle = format!("query[{rtype}] {name} from");
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

#[test]
fn caches_answers_from_a_real_dnsmasq_upstream() {
    let dnsmasq = Dnsmasq::start();
    let before = dnsmasq.queries("A", "real.test");
    let h = Harness::start(Setup {
        only_upstreams: Some(vec![dnsmasq.addr]),
        ..Setup::default()
    });
    for _ in 0..10 {
        let a = dig_answers(h.port, &["real.test", "A"]);
        assert_eq!(a[0].3, "192.0.2.7");
        assert!(a[0].1 <= 120);
    }
    let aaaa = dnspython(h.port, &["--name", "REAL.test.", "--type", "AAAA"]);
    assert_eq!(aaaa["answer"][0]["data"], "2001:db8::7");
    assert_eq!(aaaa["question"][0], "REAL.test. IN AAAA");
    let txt = dnspython(h.port, &["--name", "txt.real.test.", "--type", "TXT"]);
    assert_eq!(txt["answer"][0]["data"], "\"hello from dnsmasq\"");
    let mx = dnspython(h.port, &["--name", "real.test.", "--type", "MX"]);
    assert_eq!(mx["answer"][0]["data"], "10 mail.real.test.");
    // dnsmasq answers NXDOMAIN without an SOA: cached for the default negative TTL (5 s).
    for _ in 0..3 {
        assert_eq!(
            dnspython(h.port, &["--name", "gone.test."])["rcode"],
            "NXDOMAIN"
        );
    }
    assert!(eventually(Duration::from_secs(2), || dnsmasq
        .queries("A", "gone.test")
        == 1));
    assert_eq!(
        dnsmasq.queries("A", "real.test") - before,
        1,
        "ten asks, one upstream query"
    );
    assert_eq!(dnsmasq.queries("AAAA", "real.test"), 1);
    h.upstream.stop();
}
