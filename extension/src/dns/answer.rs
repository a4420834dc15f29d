//! A prepared answer: an upstream response turned into the exact bytes we send, with the TTL
//! clamps and negative-caching rules applied once, so answering from the cache is a copy
//! plus a few patches (ID, flags, the client's spelling of the name, TTLs, OPT).

use super::wire::{self, Query, HEADER_LEN, OPT_LEN};
use hickory_proto::op::{HeaderCounts, Message, MessageType, Metadata, OpCode};
use hickory_proto::op::{Query as Question, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The TTL on answers served stale (RFC 8767 §4 recommends 30 s).
pub(super) const STALE_ANSWER_TTL: u32 = 30;
/// Below this TTL an answer is not prefetched: it would be refreshed nearly as often as asked.
const PREFETCH_MIN_TTL_S: u32 = 5;

/// How cached TTLs are bounded (from `EGRESS_WARDEN_DNS_*`), in seconds.
#[derive(Debug, Clone, Copy)]
pub(super) struct TtlPolicy {
    pub min: u32,
    pub max: u32,
    pub negative: u32,
    pub stale: Duration,
}

impl TtlPolicy {
    pub(super) fn new(min: Duration, max: Duration, negative: Duration, stale: Duration) -> Self {
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        let min = secs(min);
        TtlPolicy {
            min,
            // A max below the min would make `clamp` panic; the min wins.
            max: secs(max).max(min),
            negative: secs(negative),
            stale,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Records of the asked type (or a CNAME chain ending in them).
    Positive,
    /// NXDOMAIN or NODATA (RFC 2308).
    Negative,
    /// No usable answer (SERVFAIL, REFUSED, upstream unreachable): never cached.
    Failure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Freshness {
    Fresh {
        prefetch_due: bool,
    },
    /// Expired, but may still be served if the upstreams fail (RFC 8767).
    Stale,
    Expired,
}

/// One cached answer. A hit reads the first 64 bytes (`block` to `refreshing`) and the block
/// they point to, nothing else: the layout keeps a lookup to two cache lines, because between
/// two hits on a name the kernel's datagram work evicts most of what the last one touched.
#[repr(C, align(64))]
pub(super) struct Answer {
    /// The response with ID 0, the question in lower case, and no OPT record (`wire_len`
    /// bytes), then the table of its records' TTLs: per record, the TTL field's offset (u16)
    /// and the stored value (u32), big-endian, [`TTL_ENTRY`] bytes each.
    block: Box<[u8]>,
    stored_at: Instant,
    wire_len: u16,
    qname_len: u16,
    /// Freshness lifetime in seconds; 0 means "use once, do not cache".
    ttl: u32,
    pub kind: Kind,
    /// CLOCK's second-chance bit, set by every hit.
    referenced: AtomicBool,
    /// A refresh (prefetch) has been started for this answer.
    refreshing: AtomicBool,
    stale_until: Instant,
    /// When the last refresh failed, as ms after `stored_at` plus one; 0 = never.
    refresh_failed_at: AtomicU64,
}

// What a hit reads stays within the first cache line.
const _: () = assert!(std::mem::offset_of!(Answer, refreshing) < 64);

/// Bytes per entry of an answer's TTL table.
const TTL_ENTRY: usize = 6;

impl Answer {
    /// Prepares an upstream response to `question` (which must be the one sent upstream, name
    /// in lower case).
    pub(super) fn from_upstream(
        question: &Question,
        response: &Message,
        policy: &TtlPolicy,
        now: Instant,
    ) -> Answer {
        let rcode = response.metadata.response_code;
        if rcode != ResponseCode::NoError && rcode != ResponseCode::NXDomain {
            return Answer::failure(question, rcode, now);
        }
        let qtype = question.query_type();
        let has_final = matches!(qtype, RecordType::ANY | RecordType::CNAME)
            || response.answers.iter().any(|r| r.record_type() == qtype);
        let negative = rcode == ResponseCode::NXDomain || !has_final;
        let clamp = |ttl: u32| ttl.clamp(policy.min, policy.max);

        let mut msg = Message::response(0, OpCode::Query);
        msg.metadata.response_code = rcode;
        msg.metadata.recursion_available = true;
        msg.add_query(question.clone());
        msg.answers = response.answers.clone();
        msg.authorities = response.authorities.clone();
        msg.additionals = response.additionals.clone();

        let ttl = if negative {
            // RFC 2308 §5: the SOA's own TTL or its MINIMUM, whichever is less; capped low.
            let soa_ttl = msg.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            });
            let chain = msg.answers.iter().map(|r| clamp(r.ttl)).min();
            let ttl = soa_ttl.unwrap_or(policy.negative).min(policy.negative);
            chain.map_or(ttl, |c| c.min(ttl))
        } else {
            msg.answers.iter().map(|r| clamp(r.ttl)).min().unwrap_or(0)
        };
        let sections = [&mut msg.answers, &mut msg.authorities, &mut msg.additionals];
        for record in sections.into_iter().flat_map(|s| s.iter_mut()) {
            record.ttl = if negative {
                clamp(record.ttl).min(ttl)
            } else {
                clamp(record.ttl)
            };
            if negative && matches!(record.data, RData::SOA(_)) {
                record.ttl = ttl;
            }
        }
        let kind = if negative {
            Kind::Negative
        } else {
            Kind::Positive
        };
        match Answer::from_message(&msg, kind, ttl, policy.stale, now) {
            Some(answer) => answer,
            None => Answer::failure(question, ResponseCode::ServFail, now),
        }
    }

    /// An uncacheable answer carrying just `rcode` (SERVFAIL when nothing better is known).
    pub(super) fn failure(question: &Question, rcode: ResponseCode, now: Instant) -> Answer {
        // Extended RCODEs need an OPT of their own; a client gets plain SERVFAIL instead.
        let rcode = if rcode.high() != 0 {
            ResponseCode::ServFail
        } else {
            rcode
        };
        let mut msg = Message::error_msg(0, OpCode::Query, rcode);
        msg.metadata.recursion_available = true;
        msg.add_query(question.clone());
        Answer::from_message(&msg, Kind::Failure, 0, Duration::ZERO, now).unwrap_or_else(|| {
            // Only reachable if hickory cannot encode a one-question message: answer with a
            // bare header, which render() still fills in.
            let header = header_only(rcode);
            Answer::assemble(&header, 0, &[], Kind::Failure, 0, now, now)
        })
    }

    fn from_message(
        msg: &Message,
        kind: Kind,
        ttl: u32,
        stale: Duration,
        now: Instant,
    ) -> Option<Answer> {
        let wire = msg.to_vec().ok()?;
        if wire.len() > usize::from(u16::MAX) {
            return None;
        }
        // An upstream record that reads but does not write back readably (a type-0 record
        // with empty data, say) would be served to every client as a malformed answer: such
        // a response becomes a SERVFAIL instead. Once per upstream answer, not per hit.
        Message::from_vec(&wire).ok()?;
        let qname_len = wire::question_name_end(&wire, HEADER_LEN)? - HEADER_LEN;
        let ttls: Vec<(u16, u32)> = wire::records(&wire)?
            .into_iter()
            .filter(|(_, r)| r.rtype != RecordType::OPT)
            .map(|(_, r)| (r.ttl_offset() as u16, r.ttl))
            .collect();
        let fresh_for = Duration::from_secs(u64::from(ttl));
        let stale_until = now + fresh_for + if ttl > 0 { stale } else { Duration::ZERO };
        Some(Answer::assemble(
            &wire,
            qname_len as u16,
            &ttls,
            kind,
            ttl,
            now,
            stale_until,
        ))
    }

    /// Packs the wire bytes and the TTL table into one block (`wire` is at most 64 KiB).
    fn assemble(
        wire: &[u8],
        qname_len: u16,
        ttls: &[(u16, u32)],
        kind: Kind,
        ttl: u32,
        stored_at: Instant,
        stale_until: Instant,
    ) -> Answer {
        let mut block = Vec::with_capacity(wire.len() + ttls.len() * TTL_ENTRY);
        block.extend_from_slice(wire);
        for &(offset, value) in ttls {
            block.extend_from_slice(&offset.to_be_bytes());
            block.extend_from_slice(&value.to_be_bytes());
        }
        Answer {
            block: block.into_boxed_slice(),
            stored_at,
            wire_len: u16::try_from(wire.len()).unwrap_or(u16::MAX),
            qname_len,
            ttl,
            kind,
            referenced: AtomicBool::new(false),
            refreshing: AtomicBool::new(false),
            stale_until,
            refresh_failed_at: AtomicU64::new(0),
        }
    }

    fn wire(&self) -> &[u8] {
        &self.block[..usize::from(self.wire_len).min(self.block.len())]
    }

    /// The stored TTLs: (offset of the field in the wire bytes, value).
    fn ttls(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        let table = self.block.get(usize::from(self.wire_len)..).unwrap_or(&[]);
        table.chunks_exact(TTL_ENTRY).map(|e| {
            (
                usize::from(u16::from_be_bytes([e[0], e[1]])),
                u32::from_be_bytes([e[2], e[3], e[4], e[5]]),
            )
        })
    }

    /// The cache key this answer belongs to (its question in wire form).
    pub(super) fn key(&self) -> &[u8] {
        let wire = self.wire();
        let end = (HEADER_LEN + usize::from(self.qname_len) + 4).min(wire.len());
        &wire[HEADER_LEN.min(end)..end]
    }

    pub(super) fn cacheable(&self) -> bool {
        self.ttl > 0 && self.kind != Kind::Failure
    }

    pub(super) fn rcode(&self) -> ResponseCode {
        wire::read_header(self.wire()).map_or(ResponseCode::ServFail, |h| h.response_code)
    }

    pub(super) fn freshness(&self, now: Instant) -> Freshness {
        let age = now.saturating_duration_since(self.stored_at);
        let lifetime = Duration::from_secs(u64::from(self.ttl));
        if age < lifetime {
            let left = lifetime - age;
            let prefetch_due = self.ttl >= PREFETCH_MIN_TTL_S && left * 10 <= lifetime;
            Freshness::Fresh { prefetch_due }
        } else if now < self.stale_until {
            Freshness::Stale
        } else {
            Freshness::Expired
        }
    }

    /// Marks the answer as recently used (CLOCK eviction); cheap when already marked.
    pub(super) fn touch(&self) {
        if !self.referenced.load(Ordering::Relaxed) {
            self.referenced.store(true, Ordering::Relaxed);
        }
    }

    /// Clears the used mark, telling whether it was set (CLOCK's second chance).
    pub(super) fn take_reference(&self) -> bool {
        self.referenced.swap(false, Ordering::Relaxed)
    }

    /// True once per answer: the caller starts its prefetch.
    pub(super) fn claim_refresh(&self) -> bool {
        !self.refreshing.load(Ordering::Relaxed) && !self.refreshing.swap(true, Ordering::Relaxed)
    }

    pub(super) fn note_refresh_failure(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.stored_at).as_millis() as u64 + 1;
        self.refresh_failed_at.store(ms, Ordering::Relaxed);
    }

    /// Whether a refresh failed less than `window` ago (RFC 8767's failure recheck timer:
    /// meanwhile stale answers go out at once instead of waiting on a dead upstream).
    pub(super) fn refresh_failed_within(&self, now: Instant, window: Duration) -> bool {
        let at = self.refresh_failed_at.load(Ordering::Relaxed);
        if at == 0 {
            return false;
        }
        let failed = self.stored_at + Duration::from_millis(at - 1);
        now.saturating_duration_since(failed) < window
    }

    pub(super) fn addresses(&self) -> Vec<IpAddr> {
        wire::answer_addresses(self.wire())
    }

    /// Writes the answer to `query` into `out`: ID, flags and the question's spelling from
    /// the query, TTLs counted down (or the stale TTL), an OPT if the client sent one, and
    /// TC with empty sections if it exceeds `limit` bytes.
    pub(super) fn render(
        &self,
        query: &Query<'_>,
        now: Instant,
        stale: bool,
        limit: usize,
        out: &mut Vec<u8>,
    ) {
        out.clear();
        out.extend_from_slice(self.wire());
        let Some(stored) = wire::read_header(out) else {
            // Never: every stored answer starts with a header.
            return;
        };
        let qname_len = usize::from(self.qname_len);
        let qname_end = HEADER_LEN + qname_len;
        if query.qname.len() == qname_len && out.len() >= qname_end {
            out[HEADER_LEN..qname_end].copy_from_slice(query.qname);
        }
        let age = u32::try_from(now.saturating_duration_since(self.stored_at).as_secs())
            .unwrap_or(u32::MAX);
        for (offset, ttl) in self.ttls() {
            let ttl = if stale {
                STALE_ANSWER_TTL
            } else {
                ttl.saturating_sub(age)
            };
            wire::write_u32(out, offset, ttl);
        }
        let mut counts = stored.counts;
        let opt_len = if query.edns.is_some() { OPT_LEN } else { 0 };
        let truncated = out.len() + opt_len > limit && out.len() >= qname_end + 4;
        if truncated {
            out.truncate(qname_end + 4);
            counts = HeaderCounts {
                queries: counts.queries,
                ..HeaderCounts::default()
            };
        }
        if let Some(edns) = query.edns {
            wire::append_opt(out, 0, edns.dnssec_ok);
            counts.additionals = counts.additionals.saturating_add(1);
        }
        let mut header = wire::response_header(&query.request, stored.response_code, counts);
        header.metadata.truncation = truncated;
        wire::write_header(out, &header);
    }
}

fn header_only(rcode: ResponseCode) -> Box<[u8]> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    let request = Metadata::new(0, MessageType::Query, OpCode::Query);
    wire::write_reject(&mut out, &request, rcode, None, None);
    out.into_boxed_slice()
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::wire::{parse_query, Parsed};
    use hickory_proto::rr::rdata::{A, CNAME, SOA, TXT};
    use hickory_proto::rr::{Name, Record};

    fn policy() -> TtlPolicy {
        TtlPolicy::new(
            Duration::from_secs(0),
            Duration::from_secs(300),
            Duration::from_secs(5),
            Duration::from_secs(3600),
        )
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).expect("valid name")
    }

    fn upstream(
        question: &Question,
        rcode: ResponseCode,
        answers: Vec<Record>,
        soa_ttl: Option<u32>,
    ) -> Message {
        let mut m = Message::response(99, OpCode::Query);
        m.metadata.response_code = rcode;
        m.add_query(question.clone());
        m.answers = answers;
        if let Some(ttl) = soa_ttl {
            let soa = SOA::new(name("ns.test."), name("admin.test."), 1, 60, 60, 600, 30);
            m.authorities
                .push(Record::from_rdata(name("test."), ttl, RData::SOA(soa)));
        }
        m
    }

    fn client_query(qname: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
        let labels: Vec<&str> = qname.trim_end_matches('.').split('.').collect();
        wire::tests_support::query_packet(0x4242, &labels, qtype, edns.then_some((1232, 0)))
    }

    /// Found by the `dns_answer` fuzz target: an authority record of type 0 with empty data
    /// reads, but hickory writes it back in a form no parser reads.
    #[test]
    fn a_response_that_does_not_write_back_readably_becomes_servfail() {
        let response = "12342c000001000000010000076578616d706c6503636f6d00000f00000000000000\
            00000000000000000000000000000000000000000000000000000000000000000000000001c00c0006\
            00010000fd7bf821026e73c00c0561646d696ec00c0000000100001c2000000384001275000000003c";
        let bytes: Vec<u8> = (0..response.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&response[i..i + 2], 16).expect("hex"))
            .collect();
        let response = Message::from_vec(&bytes).expect("hickory reads the upstream's bytes");
        let q = Question::query(name("example.com."), RecordType::MX);
        let now = Instant::now();
        let a = Answer::from_upstream(&q, &response, &policy(), now);
        assert_eq!(a.rcode(), ResponseCode::ServFail);
        let packet = client_query("example.com.", RecordType::MX, false);
        let Parsed::Query(query) = parse_query(&packet) else {
            panic!("query")
        };
        let mut out = Vec::new();
        a.render(&query, now, false, 512, &mut out);
        Message::from_vec(&out).expect("what is served parses");
    }

    #[test]
    fn positive_answer_counts_down_and_echoes_the_question() {
        let q = Question::query(name("www.test."), RecordType::A);
        let answers = vec![
            Record::from_rdata(
                name("www.test."),
                600,
                RData::CNAME(CNAME(name("web.test."))),
            ),
            Record::from_rdata(name("web.test."), 120, RData::A(A::new(10, 0, 0, 1))),
        ];
        let now = Instant::now();
        let a = Answer::from_upstream(
            &q,
            &upstream(&q, ResponseCode::NoError, answers, None),
            &policy(),
            now,
        );
        assert_eq!(a.kind, Kind::Positive);
        assert_eq!(a.ttl, 120);
        assert_eq!(a.addresses(), vec![IpAddr::from([10, 0, 0, 1])]);
        let packet = client_query("WWW.Test.", RecordType::A, true);
        let Parsed::Query(query) = parse_query(&packet) else {
            panic!("query")
        };
        let mut out = Vec::new();
        a.render(&query, now + Duration::from_secs(7), false, 512, &mut out);
        let msg = Message::from_vec(&out).expect("parses");
        assert_eq!(msg.metadata.id, 0x4242);
        assert_eq!(msg.queries[0].name().to_ascii(), "WWW.Test.");
        // The CNAME was clamped to 300 s, the A kept its 120 s; both aged 7 s.
        assert_eq!(msg.answers[0].ttl, 293);
        assert_eq!(msg.answers[1].ttl, 113);
        assert!(msg.edns.is_some());
        assert!(matches!(
            a.freshness(now + Duration::from_secs(119)),
            Freshness::Fresh { prefetch_due: true }
        ));
        assert!(matches!(
            a.freshness(now + Duration::from_secs(60)),
            Freshness::Fresh {
                prefetch_due: false
            }
        ));
        assert_eq!(
            a.freshness(now + Duration::from_secs(121)),
            Freshness::Stale
        );
        assert_eq!(
            a.freshness(now + Duration::from_secs(121 + 3600)),
            Freshness::Expired
        );
    }

    #[test]
    fn negative_answer_uses_soa_minimum_capped_by_negative_ttl() {
        let q = Question::query(name("nope.test."), RecordType::A);
        let now = Instant::now();
        let msg = upstream(&q, ResponseCode::NXDomain, vec![], Some(3600));
        let a = Answer::from_upstream(&q, &msg, &policy(), now);
        assert_eq!(
            (a.kind, a.ttl, a.rcode()),
            (Kind::Negative, 5, ResponseCode::NXDomain)
        );
        let mut p = policy();
        p.negative = 600;
        let a = Answer::from_upstream(&q, &msg, &p, now);
        assert_eq!(a.ttl, 30, "the SOA MINIMUM (30) wins over its TTL");
        let nodata = upstream(&q, ResponseCode::NoError, vec![], Some(2));
        let a = Answer::from_upstream(&q, &nodata, &p, now);
        assert_eq!(
            (a.kind, a.ttl, a.rcode()),
            (Kind::Negative, 2, ResponseCode::NoError)
        );
    }

    #[test]
    fn failures_are_not_cacheable() {
        let q = Question::query(name("x.test."), RecordType::A);
        let msg = upstream(&q, ResponseCode::ServFail, vec![], None);
        let a = Answer::from_upstream(&q, &msg, &policy(), Instant::now());
        assert_eq!(a.kind, Kind::Failure);
        assert!(!a.cacheable());
        assert_eq!(a.rcode(), ResponseCode::ServFail);
    }

    #[test]
    fn oversized_answers_are_truncated_for_udp() {
        let q = Question::query(name("big.test."), RecordType::TXT);
        let answers = (0..20)
            .map(|i| {
                Record::from_rdata(
                    name("big.test."),
                    60,
                    RData::TXT(TXT::new(vec![format!("{i:0>200}")])),
                )
            })
            .collect();
        let now = Instant::now();
        let a = Answer::from_upstream(
            &q,
            &upstream(&q, ResponseCode::NoError, answers, None),
            &policy(),
            now,
        );
        let packet = client_query("big.test.", RecordType::TXT, false);
        let Parsed::Query(query) = parse_query(&packet) else {
            panic!("query")
        };
        let mut out = Vec::new();
        a.render(&query, now, false, query.udp_limit(), &mut out);
        let msg = Message::from_vec(&out).expect("parses");
        assert!(msg.metadata.truncation);
        assert!(msg.answers.is_empty());
        assert_eq!(msg.queries.len(), 1);
        a.render(&query, now, false, 65535, &mut out);
        let msg = Message::from_vec(&out).expect("parses");
        assert!(!msg.metadata.truncation);
        assert_eq!(msg.answers.len(), 20);
    }

    #[test]
    fn stale_answers_carry_the_stale_ttl() {
        let q = Question::query(name("s.test."), RecordType::A);
        let answers = vec![Record::from_rdata(
            name("s.test."),
            10,
            RData::A(A::new(1, 2, 3, 4)),
        )];
        let now = Instant::now();
        let a = Answer::from_upstream(
            &q,
            &upstream(&q, ResponseCode::NoError, answers, None),
            &policy(),
            now,
        );
        let packet = client_query("s.test.", RecordType::A, false);
        let Parsed::Query(query) = parse_query(&packet) else {
            panic!("query")
        };
        let mut out = Vec::new();
        a.render(&query, now + Duration::from_secs(100), true, 512, &mut out);
        let msg = Message::from_vec(&out).expect("parses");
        assert_eq!(msg.answers[0].ttl, STALE_ANSWER_TTL);
        assert!(!a.refresh_failed_within(now, Duration::from_secs(30)));
        a.note_refresh_failure(now + Duration::from_secs(100));
        assert!(a.refresh_failed_within(now + Duration::from_secs(110), Duration::from_secs(30)));
        assert!(!a.refresh_failed_within(now + Duration::from_secs(131), Duration::from_secs(30)));
    }
}
