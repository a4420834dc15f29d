//! Correct answers from the DNS listener to real clients (dig, dnspython), against a real
//! authoritative upstream on loopback: record types, ID and question echo, TTL countdown,
//! cache hits that never reach the upstream, and the proxy's own lookups.

use crate::support::*;
use egress_warden::metrics::{Counter, Timing};
use hickory_proto::rr::RecordType;
use std::net::IpAddr;
use std::time::Duration;

#[test]
fn answers_each_record_type_like_the_upstream() {
    let h = Harness::start(Setup::default());
    let a = dig_answers(h.port, &["www.test", "A"]);
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(
        (a[0].0.as_str(), a[0].2.as_str(), a[0].3.as_str()),
        ("www.test.", "A", "192.0.2.1")
    );

    let aaaa = dig_answers(h.port, &["www.test", "AAAA"]);
    assert_eq!(aaaa[0].3, "2001:db8::1");

    // The CNAME chain is kept whole, in order.
    let chain = dig_answers(h.port, &["alias.test", "A"]);
    let kinds: Vec<_> = chain.iter().map(|r| (r.0.as_str(), r.2.as_str())).collect();
    assert_eq!(kinds, [("alias.test.", "CNAME"), ("www.test.", "A")]);
    assert_eq!(chain[0].3, "www.test.");

    let txt = dnspython(h.port, &["--name", "txt.test.", "--type", "TXT"]);
    assert_eq!(txt["rcode"], "NOERROR");
    assert_eq!(txt["answer"][0]["data"], "\"v=spf1 -all\" \"hello world\"");

    let mx = dnspython(h.port, &["--name", "test.", "--type", "MX"]);
    assert_eq!(mx["answer"][0]["data"], "10 mail.test.");

    // A recursive server's flags: RA set, AA cleared (we are not the authority).
    let flags = dnspython(h.port, &["--name", "www.test."]);
    let flags: Vec<&str> = flags["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    assert!(
        flags.contains(&"RA") && flags.contains(&"RD") && !flags.contains(&"AA"),
        "{flags:?}"
    );
}

#[test]
fn keeps_the_id_and_echoes_the_question_as_asked() {
    let h = Harness::start(Setup::default());
    // First a miss (answered from the upstream path), then a hit (the in-memory path).
    for _ in 0..2 {
        let r = dnspython(h.port, &["--name", "WwW.TeSt.", "--id", "4660"]);
        assert_eq!(r["id"], 4660);
        assert_eq!(r["question"][0], "WwW.TeSt. IN A", "{r}");
        assert_eq!(r["answer"][0]["data"], "192.0.2.1");
    }
    assert_eq!(h.upstream.count("www.test.", RecordType::A), 1);
}

#[test]
fn cache_hits_never_reach_the_upstream() {
    let h = Harness::start(Setup::default());
    for _ in 0..20 {
        assert_eq!(dig_answers(h.port, &["www.test", "A"]).len(), 1);
    }
    for _ in 0..5 {
        let r = dnspython(h.port, &["--name", "alias.test."]);
        assert_eq!(r["answer"].as_array().map(Vec::len), Some(2));
    }
    assert_eq!(h.upstream.count("www.test.", RecordType::A), 1);
    assert_eq!(h.upstream.count("alias.test.", RecordType::A), 1);
    let status = h.status();
    assert_eq!(status["misses"], 2, "{status}");
    assert_eq!(status["hits"], 23, "{status}");
    assert_eq!(h.recorder.peek(Counter::DnsCacheHits), 23);
    assert_eq!(h.recorder.peek(Counter::DnsCacheMisses), 2);
}

#[test]
fn ttls_count_down_from_when_the_answer_was_cached() {
    let h = Harness::start(Setup::default());
    let first = dig_answers(h.port, &["www.test", "A"]);
    assert_eq!(first[0].1, 300);
    std::thread::sleep(Duration::from_millis(2100));
    let later = dnspython(h.port, &["--name", "www.test."]);
    let ttl = later["answer"][0]["ttl"].as_u64().expect("ttl");
    assert!((297..=298).contains(&ttl), "ttl {ttl} after 2.1 s");
    assert_eq!(h.upstream.count("www.test.", RecordType::A), 1);
}

#[test]
fn ttls_are_clamped_to_the_configured_bounds() {
    let h = Harness::start(Setup {
        vars: vec![
            ("EGRESS_WARDEN_DNS_MIN_TTL_S", "30".into()),
            ("EGRESS_WARDEN_DNS_MAX_TTL_S", "100".into()),
        ],
        ..Setup::default()
    });
    assert_eq!(dig_answers(h.port, &["www.test", "A"])[0].1, 100);
    assert_eq!(dig_answers(h.port, &["short.test", "A"])[0].1, 30);
    // Raised to 30 s, so still cached after the upstream's 1 s.
    std::thread::sleep(Duration::from_millis(1100));
    dig_answers(h.port, &["short.test", "A"]);
    assert_eq!(h.upstream.count("short.test.", RecordType::A), 1);
}

#[test]
fn identical_questions_in_flight_reach_the_upstream_once() {
    let h = Harness::start(Setup::default());
    h.upstream
        .delay_ms
        .store(300, std::sync::atomic::Ordering::SeqCst);
    let threads: Vec<_> = (0..40u16)
        .map(|i| {
            let port = h.port;
            std::thread::spawn(move || {
                let reply = udp_exchange(
                    port,
                    &query_bytes(i, "txt.test.", RecordType::TXT, None),
                    Duration::from_secs(3),
                );
                reply.is_some_and(|r| r[..2] == i.to_be_bytes())
            })
        })
        .collect();
    let answered = threads
        .into_iter()
        .filter_map(|t| t.join().ok())
        .filter(|ok| *ok)
        .count();
    assert_eq!(answered, 40);
    assert_eq!(h.upstream.count("txt.test.", RecordType::TXT), 1);
}

#[test]
fn names_still_asked_are_prefetched_before_they_expire() {
    let h = Harness::start(Setup::default());
    assert_eq!(dig_answers(h.port, &["five.test", "A"])[0].1, 5);
    // Inside the last tenth of the 5 s TTL, a hit starts a refresh in the background.
    std::thread::sleep(Duration::from_millis(4600));
    dig_answers(h.port, &["five.test", "A"]);
    assert!(eventually(Duration::from_secs(2), || h
        .upstream
        .count("five.test.", RecordType::A)
        == 2));
    assert_eq!(h.status()["prefetches"], 1);
    // After the original expiry the refreshed answer is served, fresh, with no new query.
    std::thread::sleep(Duration::from_millis(900));
    let ttl = dig_answers(h.port, &["five.test", "A"])[0].1;
    assert!((3..=5).contains(&ttl), "ttl {ttl}");
    assert_eq!(h.upstream.count("five.test.", RecordType::A), 2);
    assert_eq!(h.status()["stale_served"], 0);
}

#[test]
fn the_cache_stays_within_its_capacity() {
    let mut setup = Setup::default();
    for i in 0..400 {
        setup.zone.add(
            &format!("n{i}.test."),
            300,
            hickory_proto::rr::RData::A(hickory_proto::rr::rdata::A::new(
                10,
                0,
                (i / 256) as u8,
                (i % 256) as u8,
            )),
        );
    }
    setup.tuning.capacity = 64;
    let h = Harness::start(setup);
    for i in 0..400u16 {
        let reply = udp_exchange(
            h.port,
            &query_bytes(i, &format!("n{i}.test."), RecordType::A, None),
            Duration::from_secs(2),
        );
        assert!(reply.is_some(), "n{i} unanswered");
    }
    let status = h.status();
    let entries = status["entries"].as_u64().expect("entries");
    assert!(
        entries <= status["capacity"].as_u64().expect("capacity"),
        "{status}"
    );
    assert!(
        status["evictions"].as_u64().expect("evictions") >= 300,
        "{status}"
    );
}

#[test]
fn proxy_lookups_share_the_cache_and_record_dns_ms() {
    let h = Harness::start(Setup::default());
    let ips =
        h.rt.block_on(h.cache.lookup_ip("www.test"))
            .expect("resolves");
    assert_eq!(
        ips,
        vec![
            "192.0.2.1".parse::<IpAddr>().expect("ip"),
            "2001:db8::1".parse().expect("ip")
        ]
    );
    // The listener now answers from the same cache.
    dig_answers(h.port, &["www.test", "AAAA"]);
    assert_eq!(h.upstream.count("www.test.", RecordType::AAAA), 1);
    let literal =
        h.rt.block_on(h.cache.lookup_ip("[2001:db8::5]"))
            .expect("literal");
    assert_eq!(literal, vec!["2001:db8::5".parse::<IpAddr>().expect("ip")]);
    let err =
        h.rt.block_on(h.cache.lookup_ip("missing.test"))
            .expect_err("nxdomain");
    assert!(err.to_string().contains("NXDOMAIN"), "{err}");
    let snapshot = h.recorder.take();
    assert_eq!(snapshot.timings[&Timing::DnsMs].count(), 2);
}
