//! Entry points for the fuzz targets (`extension/fuzz/`, built with the `fuzzing` feature):
//! the packet parser every client datagram meets, and the answer patcher every cache hit runs.
//! Each asserts what must hold for any input, so a wrong offset shows as a crash, not only a
//! panic on a bounds check.
#![allow(
    clippy::expect_used,
    reason = "a fuzz target's assertion: the panic is the finding"
)]

use super::answer::{Answer, TtlPolicy};
use super::fetch::question_of;
use super::wire::{self, Parsed};
use hickory_proto::op::Message;
use std::time::{Duration, Instant};

/// A client's packet, as the UDP and TCP listeners read it.
pub fn query(packet: &[u8]) {
    let _ = wire::records(packet);
    let _ = wire::answer_addresses(packet);
    let mut out = Vec::new();
    match wire::parse_query(packet) {
        Parsed::Query(query) => {
            let mut key = Vec::new();
            query.write_key(&mut key);
            assert!(query.udp_limit() >= wire::CLASSIC_UDP_LIMIT);
            assert!(query.udp_limit() <= usize::from(wire::MAX_UDP_ANSWER));
            // Every accepted question reads back as the question it stands for.
            if let Some(question) = question_of(&key) {
                assert_eq!(question.query_type(), query.qtype);
            }
        }
        reject @ Parsed::Reject { .. } => {
            reject.write_reject_into(&mut out);
            let reply = Message::from_vec(&out).expect("a reject is a well-formed message");
            let Parsed::Reject { request, .. } = reject else {
                return;
            };
            assert_eq!(reply.metadata.id, request.id);
        }
        Parsed::Drop => {}
    }
}

/// The first byte splits the input into a client query and an upstream response; the
/// response is prepared as the cache would and rendered for the query in every way a hit can
/// be (fresh, aged, stale, truncated to the client's limit).
pub fn answer(data: &[u8]) {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (query_bytes, response_bytes) = rest.split_at(usize::from(split).min(rest.len()));
    let Parsed::Query(query) = wire::parse_query(query_bytes) else {
        return;
    };
    let Ok(response) = Message::from_vec(response_bytes) else {
        return;
    };
    let mut key = Vec::new();
    query.write_key(&mut key);
    let Some(question) = question_of(&key) else {
        return;
    };
    let secs = Duration::from_secs;
    let policy = TtlPolicy::new(secs(5), secs(3600), secs(60), secs(300));
    let now = Instant::now();
    let answer = Answer::from_upstream(&question, &response, &policy, now);
    let _ = answer.addresses();
    let mut out = Vec::new();
    for (age, stale) in [(0, false), (7, false), (100_000, true)] {
        for limit in [wire::CLASSIC_UDP_LIMIT, query.udp_limit(), usize::MAX] {
            answer.render(&query, now + secs(age), stale, limit, &mut out);
            let reply = Message::from_vec(&out).expect("a rendered answer is well-formed");
            assert_eq!(reply.metadata.id, query.request.id);
            assert_eq!(reply.queries.len(), 1);
        }
    }
}
