//! Against a real, independent upstream: dnsmasq from Debian on loopback, its query log
//! telling how often the cache asked it.

use crate::support::*;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use warden_tests::dnsmasq::Dnsmasq;

/// A dnsmasq answering `real.test` (A, AAAA, TXT, MX) from its own records.
fn dnsmasq() -> Dnsmasq {
    let records = [
        "--local-ttl=120",
        "--host-record=real.test,192.0.2.7,2001:db8::7",
        "--txt-record=txt.real.test,hello from dnsmasq",
        "--mx-host=real.test,mail.real.test,10",
    ];
    Dnsmasq::start(&records.map(String::from)).expect("dnsmasq")
}

fn addr(dnsmasq: &Dnsmasq) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, dnsmasq.port))
}

#[test]
fn caches_answers_from_a_real_dnsmasq_upstream() {
    let dnsmasq = dnsmasq();
    let before = dnsmasq.queries("A", "real.test");
    let h = Harness::start(Setup {
        only_upstreams: Some(vec![addr(&dnsmasq)]),
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
