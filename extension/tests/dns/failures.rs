//! What the cache does when answers are negative or upstreams fail: negative caching capped
//! by the negative TTL, serve-stale after the upstream is gone (RFC 8767), rotation past a
//! dead upstream, SERVFAIL when there is nothing to serve.

use crate::support::*;
use egress_warden::metrics::Counter;
use hickory_proto::rr::RecordType;
use std::time::{Duration, Instant};

#[test]
fn nxdomain_is_cached_for_at_most_the_negative_ttl() {
    let h = Harness::start(Setup {
        vars: vec![("EGRESS_WARDEN_DNS_NEGATIVE_TTL_S", "2".into())],
        ..Setup::default()
    });
    let first = dnspython(h.port, &["--name", "nope.test."]);
    assert_eq!(first["rcode"], "NXDOMAIN");
    // The SOA says 60 s; the cap says 2 s, and the SOA's TTL tells clients so.
    let soa = &first["authority"][0];
    assert_eq!(soa["type"], "SOA");
    assert_eq!(soa["ttl"], 2);
    let again = dnspython(h.port, &["--name", "nope.test."]);
    assert_eq!(again["rcode"], "NXDOMAIN");
    assert_eq!(h.upstream.count("nope.test.", RecordType::A), 1);
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(
        dnspython(h.port, &["--name", "nope.test."])["rcode"],
        "NXDOMAIN"
    );
    assert_eq!(h.upstream.count("nope.test.", RecordType::A), 2);
}

#[test]
fn nodata_is_cached_as_a_negative_answer() {
    let h = Harness::start(Setup::default());
    for _ in 0..3 {
        let r = dnspython(h.port, &["--name", "txt.test.", "--type", "AAAA"]);
        assert_eq!(r["rcode"], "NOERROR");
        assert_eq!(r["answer"].as_array().map(Vec::len), Some(0));
        assert!(r["authority"][0]["ttl"].as_u64().expect("soa ttl") <= 5);
    }
    assert_eq!(h.upstream.count("txt.test.", RecordType::AAAA), 1);
}

#[test]
fn stale_answers_are_served_after_the_upstream_is_stopped() {
    let h = Harness::start(Setup::default());
    assert_eq!(dig_answers(h.port, &["short.test", "A"])[0].3, "192.0.2.9");
    h.upstream.stop();
    std::thread::sleep(Duration::from_millis(1200)); // the 1 s TTL runs out
    let started = Instant::now();
    let r = dnspython(h.port, &["--name", "short.test."]);
    assert_eq!(r["rcode"], "NOERROR", "{r}");
    assert_eq!(r["answer"][0]["data"], "192.0.2.9");
    assert_eq!(r["answer"][0]["ttl"], 30, "RFC 8767's stale TTL");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Within the failure recheck window the stale answer goes out at once.
    let started = Instant::now();
    assert_eq!(dig_answers(h.port, &["short.test", "A"])[0].1, 30);
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    assert!(h.recorder.peek(Counter::DnsStaleServed) >= 2);
    assert!(h.recorder.peek(Counter::DnsUpstreamTimeouts) >= 1);
    // A name never cached has nothing stale to fall back on.
    assert_eq!(
        dnspython(h.port, &["--name", "www.test."])["rcode"],
        "SERVFAIL"
    );
}

#[test]
fn stale_answers_stop_after_the_stale_window() {
    let h = Harness::start(Setup {
        vars: vec![("EGRESS_WARDEN_DNS_STALE_S", "1".into())],
        ..Setup::default()
    });
    dig_answers(h.port, &["short.test", "A"]);
    h.upstream
        .silent
        .store(true, std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(2200)); // 1 s TTL + 1 s stale window
    assert_eq!(
        dnspython(h.port, &["--name", "short.test."])["rcode"],
        "SERVFAIL"
    );
}

#[test]
fn a_dead_first_upstream_is_passed_over_and_then_avoided() {
    let (_held, dead) = dead_upstream();
    let h = Harness::start(Setup {
        upstreams_before: vec![dead],
        ..Setup::default()
    });
    let r = dnspython(h.port, &["--name", "www.test."]);
    assert_eq!(r["answer"][0]["data"], "192.0.2.1", "{r}");
    let status = h.status();
    let upstreams = status["upstreams"].as_array().expect("upstreams");
    assert_eq!(upstreams[0]["timeouts"], 1, "{status}");
    assert_eq!(upstreams[1]["in_use"], true, "{status}");
    // Later misses go straight to the working upstream: fast, and the dead one is not asked.
    for (id, name, rtype) in [
        (1, "txt.test.", RecordType::TXT),
        (2, "test.", RecordType::MX),
    ] {
        let started = Instant::now();
        let reply = udp_exchange(
            h.port,
            &query_bytes(id, name, rtype, None),
            Duration::from_secs(2),
        );
        assert!(reply.is_some_and(|r| r[3] & 0x0f == 0), "{name} unanswered");
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(h.status()["upstreams"][0]["queries"], 1);
}

#[test]
fn no_upstream_answering_means_servfail_not_silence() {
    let (_held, dead) = dead_upstream();
    let h = Harness::start(Setup {
        upstreams_before: vec![dead],
        ..Setup::default()
    });
    h.upstream
        .silent
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let r = dnspython(h.port, &["--name", "www.test."]);
    assert_eq!(r["rcode"], "SERVFAIL", "{r}");
    assert_eq!(h.recorder.peek(Counter::DnsUpstreamTimeouts), 2);
}

#[test]
fn after_a_restore_answers_age_by_the_time_the_monotonic_clock_missed() {
    let h = Harness::start(Setup::default());
    let first = dig_answers(h.port, &["www.test", "A"]);
    assert_eq!(first[0].3, "192.0.2.1");
    assert!(first[0].1 > 290, "fresh: {first:?}");
    assert_eq!(h.upstream.count("www.test.", RecordType::A), 1);
    // Restored after 100 s the monotonic clock did not see: the TTL counts them.
    h.cache.age_by(Duration::from_secs(100));
    let aged = dig_answers(h.port, &["www.test", "A"]);
    assert!((195..=200).contains(&aged[0].1), "{aged:?}");
    assert_eq!(
        h.upstream.count("www.test.", RecordType::A),
        1,
        "still cached"
    );
    // Days later: expired, asked again; the upstream being there, the answer is fresh.
    h.cache.age_by(Duration::from_secs(3 * 86_400));
    let renewed = dig_answers(h.port, &["www.test", "A"]);
    assert_eq!(h.upstream.count("www.test.", RecordType::A), 2);
    assert!(renewed[0].1 > 290, "{renewed:?}");
}
