//! The wire protocol at the edges: TCP, truncation and the TCP retry, EDNS, and hostile or
//! unsupported input (malformed, truncated, oversized packets; other opcodes), after which
//! the next query must still be answered.

use crate::support::*;
use egress_warden::metrics::Counter;
use hickory_proto::rr::RecordType;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

#[test]
fn answers_over_tcp() {
    let h = Harness::start(Setup::default());
    let r = dnspython(h.port, &["--name", "www.test.", "--tcp"]);
    assert_eq!(
        (r["transport"].as_str(), r["answer"][0]["data"].as_str()),
        (Some("tcp"), Some("192.0.2.1"))
    );
    let a = dig_answers(h.port, &["+tcp", "alias.test", "A"]);
    assert_eq!(a.len(), 2);
    // Several queries on one connection, answered in order.
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, h.port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    for id in [1u16, 2, 3] {
        let q = query_bytes(id, "www.test.", RecordType::A, None);
        let mut frame = (q.len() as u16).to_be_bytes().to_vec();
        frame.extend_from_slice(&q);
        stream.write_all(&frame).expect("write");
    }
    for id in [1u16, 2, 3] {
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).expect("length");
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut reply).expect("reply");
        assert_eq!(reply[..2], id.to_be_bytes());
    }
}

#[test]
fn large_answers_are_truncated_on_udp_and_complete_on_tcp() {
    let h = Harness::start(Setup::default());
    // The upstream itself truncates ~6 KB over UDP, so the cache had to use TCP upstream too.
    let truncated = dnspython(
        h.port,
        &["--name", "big.test.", "--type", "TXT", "--ignore-trunc"],
    );
    assert_eq!(truncated["tc"], true, "{truncated}");
    assert_eq!(truncated["answer"].as_array().map(Vec::len), Some(0));
    assert!(truncated["size"].as_u64().expect("size") <= 1232);
    let classic = dnspython(
        h.port,
        &[
            "--name",
            "big.test.",
            "--type",
            "TXT",
            "--ignore-trunc",
            "--no-edns",
        ],
    );
    assert_eq!(classic["tc"], true);
    assert!(classic["size"].as_u64().expect("size") <= 512);
    let retried = dnspython(
        h.port,
        &["--name", "big.test.", "--type", "TXT", "--fallback"],
    );
    assert_eq!(retried["transport"], "tcp");
    assert_eq!(retried["answer"].as_array().map(Vec::len), Some(30));
    // dig does the same on its own.
    let out = dig(h.port, &["big.test", "TXT"]);
    assert!(out.contains("Truncated, retrying in TCP mode"), "{out}");
    assert!(out.contains("ANSWER: 30"), "{out}");
    assert_eq!(
        h.upstream.count("big.test.", RecordType::TXT),
        2,
        "one UDP try, one TCP retry"
    );
}

#[test]
fn edns_is_answered_with_our_payload_size() {
    let h = Harness::start(Setup::default());
    let r = dnspython(
        h.port,
        &["--name", "www.test.", "--payload", "4096", "--dnssec-ok"],
    );
    assert_eq!(r["edns"]["version"], 0);
    assert_eq!(r["edns"]["payload"], 1232);
    assert_eq!(r["edns"]["do"], true);
    let plain = dnspython(h.port, &["--name", "www.test.", "--no-edns"]);
    assert!(plain["edns"].is_null());
    let badvers = dnspython(h.port, &["--name", "www.test.", "--edns-version", "1"]);
    assert_eq!(badvers["rcode"], "BADVERS", "{badvers}");
}

#[test]
fn unsupported_opcodes_get_notimp_and_transfers_are_refused() {
    let h = Harness::start(Setup::default());
    let r = dnspython(h.port, &["--name", "www.test.", "--opcode", "STATUS"]);
    assert_eq!(r["rcode"], "NOTIMP", "{r}");
    let r = dnspython(h.port, &["--name", "www.test.", "--opcode", "UPDATE"]);
    assert_eq!(r["rcode"], "NOTIMP", "{r}");
    let r = dnspython(h.port, &["--name", "test.", "--type", "AXFR", "--tcp"]);
    assert_eq!(r["rcode"], "REFUSED", "{r}");
    assert_eq!(h.upstream.total(), 0);
}

/// A small deterministic generator, so failures reproduce.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn malformed_truncated_and_oversized_packets_are_survived() {
    let h = Harness::start(Setup::default());
    let good = query_bytes(0x0101, "www.test.", RecordType::A, Some(1232));
    let rcode = |reply: &[u8]| reply[3] & 0x0f;

    // Too short for a header: dropped.
    for len in 0..12 {
        assert_eq!(
            udp_exchange(h.port, &good[..len], Duration::from_millis(100)),
            None
        );
    }
    // A header promising a question that is not there: FORMERR with the same ID.
    let formerr = udp_exchange(h.port, &good[..14], Duration::from_secs(1)).expect("formerr");
    assert_eq!((formerr[..2].to_vec(), rcode(&formerr)), (vec![1, 1], 1));
    // A compression pointer in the question (a loop onto itself).
    let mut looped = good[..12].to_vec();
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    assert_eq!(
        rcode(&udp_exchange(h.port, &looped, Duration::from_secs(1)).expect("reply")),
        1
    );
    // Two questions.
    let mut two = good.clone();
    two[5] = 2;
    assert_eq!(
        rcode(&udp_exchange(h.port, &two, Duration::from_secs(1)).expect("reply")),
        1
    );
    // An OPT record whose length runs past the end.
    let mut opt = good.clone();
    let at = opt.len() - 2;
    opt[at..].copy_from_slice(&[0xff, 0xff]);
    assert_eq!(
        rcode(&udp_exchange(h.port, &opt, Duration::from_secs(1)).expect("reply")),
        1
    );
    // Oversized: 9000 bytes behind a valid header.
    let mut huge = good.clone();
    huge.resize(9000, 0xab);
    assert_eq!(
        rcode(&udp_exchange(h.port, &huge, Duration::from_secs(1)).expect("reply")),
        1
    );
    // A response sent to us is not answered (no loops, no reflection).
    let mut response = good.clone();
    response[2] |= 0x80;
    assert_eq!(
        udp_exchange(h.port, &response, Duration::from_millis(100)),
        None
    );

    // Random garbage and random corruptions of a good query.
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    for i in 0..3000 {
        let packet: Vec<u8> = if i % 2 == 0 {
            (0..(rng.next() % 600) as usize)
                .map(|_| rng.next() as u8)
                .collect()
        } else {
            let mut p = good.clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() as usize) % p.len();
                p[at] = rng.next() as u8;
            }
            p.truncate(12 + (rng.next() as usize) % (p.len() - 11));
            p
        };
        let _ = socket.send_to(&packet, (Ipv4Addr::LOCALHOST, h.port));
    }

    // Garbage over TCP: a zero-length frame, a short frame, then a hang-up mid-frame.
    for bytes in [&[0u8, 0][..], &[0, 3, 1, 2, 3][..], &[0, 200, 1, 2][..]] {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, h.port)).expect("connect");
        let _ = stream.write_all(bytes);
    }

    // Still answering, on both transports.
    let ok = dnspython(h.port, &["--name", "www.test."]);
    assert_eq!(ok["answer"][0]["data"], "192.0.2.1", "{ok}");
    assert_eq!(
        dnspython(h.port, &["--name", "www.test.", "--tcp"])["rcode"],
        "NOERROR"
    );
    assert!(h.recorder.peek(Counter::DnsMalformed) >= 10);
}

#[test]
fn the_listener_stops_at_shutdown() {
    let h = Harness::start(Setup::default());
    assert_eq!(dig_answers(h.port, &["www.test", "A"]).len(), 1);
    h.shut_down();
    assert!(eventually(Duration::from_secs(2), || {
        udp_exchange(
            h.port,
            &query_bytes(9, "www.test.", RecordType::A, None),
            Duration::from_millis(100),
        )
        .is_none()
    }));
    assert!(eventually(Duration::from_secs(2), || TcpStream::connect((
        Ipv4Addr::LOCALHOST,
        h.port
    ))
    .is_err()));
}

/// One query over its own TCP connection; `None` when the listener closed or reset it.
fn tcp_query(port: u16, id: u16) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let q = query_bytes(id, "www.test.", RecordType::A, None);
    let mut frame = (q.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(&q);
    stream.write_all(&frame).ok()?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).ok()?;
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply).ok()?;
    Some(reply)
}

#[test]
fn at_the_tcp_connection_cap_a_freed_slot_takes_the_next_client_at_once() {
    let cap = 8;
    let h = Harness::start(Setup {
        tuning: egress_warden::dns::DnsTuning {
            tcp_max_connections: cap,
            ..quick_tuning()
        },
        ..Setup::default()
    });
    let held: Vec<TcpStream> = (0..cap)
        .map(|_| TcpStream::connect((Ipv4Addr::LOCALHOST, h.port)).expect("connect"))
        .collect();
    // Every slot is taken (by clients that send nothing): the next one is turned away.
    std::thread::sleep(Duration::from_millis(200));
    assert!(tcp_query(h.port, 7).is_none(), "over the cap");
    // They all leave; the very next client must be served, not reset.
    drop(held);
    let reply = tcp_query(h.port, 8).expect("served once slots are free");
    assert_eq!(reply[..2], 8u16.to_be_bytes());
    for id in 9..20u16 {
        assert!(tcp_query(h.port, id).is_some(), "query {id}");
    }
}
