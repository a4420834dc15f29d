//! Just enough of the DNS wire format (RFC 1035 §4.1, RFC 6891) to answer from the cache
//! without decoding whole messages: the header, the one question, the OPT record, and where
//! each record's TTL sits. Everything here is bounds-checked and allocation-free, because it
//! runs for every packet, including hostile ones. Numbers become hickory's types as they are
//! read; the bytes stay where they are.

use hickory_proto::op::{
    EdnsFlags, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
    DEFAULT_MAX_PAYLOAD_LEN,
};
use hickory_proto::rr::{DNSClass, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use std::net::IpAddr;

pub(super) const HEADER_LEN: usize = 12;
/// Queries larger than this are not queries we answer (RFC 1035 names fit in 255 bytes; a
/// question plus OPT with a few options is well under 1 KiB).
pub(super) const MAX_QUERY_LEN: usize = 4096;
/// The UDP payload size we advertise and honour at most (DNS flag day 2020).
pub(super) const OUR_UDP_PAYLOAD: u16 = DEFAULT_MAX_PAYLOAD_LEN;
/// What a client without EDNS can receive over UDP (RFC 1035 §4.2.1).
pub(super) const CLASSIC_UDP_LIMIT: usize = 512;
/// The largest UDP answer we send, whatever size a client advertises: beyond this, fragments
/// get lost, and TCP is the better road (RFC 9715).
pub(super) const MAX_UDP_ANSWER: u16 = 4096;
/// Bytes of our OPT record: root name, type, class, TTL, empty RDATA.
pub(super) const OPT_LEN: usize = 11;

/// The client's EDNS(0) OPT record, as far as an answer depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Edns {
    pub udp_payload: u16,
    pub dnssec_ok: bool,
}

/// A well-formed standard query, borrowing its name from the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Query<'a> {
    /// ID, opcode and flags, which the answer echoes in part.
    pub request: Metadata,
    /// The question name in wire form, as the client spelled it (case kept for the echo).
    pub qname: &'a [u8],
    /// The whole question (name, type, class) in wire form.
    pub question: &'a [u8],
    pub qtype: RecordType,
    pub edns: Option<Edns>,
}

impl Query<'_> {
    /// The largest answer this client accepts over UDP.
    pub(super) fn udp_limit(&self) -> usize {
        match self.edns {
            Some(edns) => usize::from(edns.udp_payload.clamp(512, MAX_UDP_ANSWER)),
            None => CLASSIC_UDP_LIMIT,
        }
    }

    /// The cache key: the question (name lower-cased, type, class) in wire form.
    pub(super) fn write_key(&self, key: &mut Vec<u8>) {
        key.clear();
        // Length octets are ≤ 63, below b'A', so lower-casing the whole name is safe.
        key.extend(self.qname.iter().map(u8::to_ascii_lowercase));
        key.extend_from_slice(&self.question[self.qname.len()..]);
    }
}

/// What to do with an incoming packet.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Parsed<'a> {
    Query(Query<'a>),
    /// Answer with just a header (and the question, when it could be read) carrying this
    /// (possibly extended) RCODE.
    Reject {
        request: Metadata,
        rcode: ResponseCode,
        question: Option<&'a [u8]>,
        edns: Option<Edns>,
    },
    /// Not worth an answer: too short to carry an ID, or itself a response (answering
    /// responses invites loops and reflection).
    Drop,
}

impl Parsed<'_> {
    /// For a reject: writes its answer (see [`write_reject`]) into `out` and returns its RCODE.
    pub(super) fn write_reject_into(&self, out: &mut Vec<u8>) -> Option<ResponseCode> {
        let Parsed::Reject {
            request,
            rcode,
            question,
            edns,
        } = *self
        else {
            return None;
        };
        write_reject(out, &request, rcode, question, edns);
        Some(rcode)
    }
}

pub(super) fn parse_query(packet: &[u8]) -> Parsed<'_> {
    let Some(header) = read_header(packet) else {
        return Parsed::Drop;
    };
    if header.message_type == MessageType::Response {
        return Parsed::Drop;
    }
    let request = header.metadata;
    let reject = |rcode| Parsed::Reject {
        request,
        rcode,
        question: None,
        edns: None,
    };
    if packet.len() > MAX_QUERY_LEN {
        return reject(ResponseCode::FormErr);
    }
    if request.op_code != OpCode::Query {
        return reject(ResponseCode::NotImp);
    }
    let counts = header.counts;
    if counts.queries != 1 || counts.answers != 0 || counts.authorities != 0 {
        return reject(ResponseCode::FormErr);
    }
    let Some(name_end) = question_name_end(packet, HEADER_LEN) else {
        return reject(ResponseCode::FormErr);
    };
    if packet.len() < name_end + 4 {
        return reject(ResponseCode::FormErr);
    }
    let qtype = RecordType::from(read_u16(packet, name_end));
    if qtype == RecordType::OPT {
        return reject(ResponseCode::FormErr);
    }
    let mut pos = name_end + 4;
    let mut edns = None;
    for _ in 0..counts.additionals {
        let Some(record) = read_record(packet, pos) else {
            return reject(ResponseCode::FormErr);
        };
        if record.rtype == RecordType::OPT {
            // One OPT at most, owned by the root (RFC 6891 §6.1.1).
            if edns.is_some() || record.name_end != pos + 1 || packet[pos] != 0 {
                return reject(ResponseCode::FormErr);
            }
            // The OPT's TTL field: extended RCODE (8 bits), version (8), flags (16).
            let version = (record.ttl >> 16) as u8;
            let found = Edns {
                udp_payload: record.class,
                dnssec_ok: EdnsFlags::from(record.ttl as u16).dnssec_ok,
            };
            if version != 0 {
                return Parsed::Reject {
                    request,
                    rcode: ResponseCode::BADVERS,
                    question: Some(&packet[HEADER_LEN..name_end + 4]),
                    edns: Some(found),
                };
            }
            edns = Some(found);
        }
        // Other additional records (a TSIG, say) are ignored: we sign nothing.
        pos = record.end;
    }
    Parsed::Query(Query {
        request,
        qname: &packet[HEADER_LEN..name_end],
        question: &packet[HEADER_LEN..name_end + 4],
        qtype,
        edns,
    })
}

/// The header of a message; `None` if it is shorter than one.
pub(super) fn read_header(message: &[u8]) -> Option<Header> {
    Header::read(&mut BinDecoder::new(message)).ok()
}

/// Writes `header` over the first [`HEADER_LEN`] bytes of `out`.
pub(super) fn write_header(out: &mut Vec<u8>, header: &Header) {
    if out.len() < HEADER_LEN {
        out.resize(HEADER_LEN, 0);
    }
    // Twelve bytes at offset 0 of a buffer already that long: the encoder cannot run out of
    // room, so there is no error to handle.
    let _ = header.emit(&mut BinEncoder::new(out));
}

/// The header of our answer to `request`: its ID and opcode, RD and CD echoed, recursion
/// available, never AA (we are not the authority) nor AD (we do not validate).
pub(super) fn response_header(
    request: &Metadata,
    rcode: ResponseCode,
    counts: HeaderCounts,
) -> Header {
    let mut metadata = Metadata::response_from_request(request);
    metadata.recursion_available = true;
    metadata.response_code = rcode;
    Header { metadata, counts }
}

/// Where a question name that starts at `pos` ends. Question names are never compressed in
/// queries (there is nothing before them to point at), so a pointer is malformed.
pub(super) fn question_name_end(packet: &[u8], mut pos: usize) -> Option<usize> {
    let start = pos;
    loop {
        let len = usize::from(*packet.get(pos)?);
        if len == 0 {
            pos += 1;
            return (pos - start <= 255).then_some(pos);
        }
        if len > 63 {
            return None;
        }
        pos += 1 + len;
        if pos - start > 255 {
            return None;
        }
    }
}

/// Where a possibly compressed name that starts at `pos` ends (the pointer is not followed:
/// only its two bytes belong to this name).
fn skip_name(packet: &[u8], mut pos: usize) -> Option<usize> {
    let start = pos;
    loop {
        let len = *packet.get(pos)?;
        match len {
            0 => return Some(pos + 1),
            1..=63 => pos += 1 + usize::from(len),
            0xc0..=0xff => {
                packet.get(pos + 1)?;
                return Some(pos + 2);
            }
            _ => return None,
        }
        if pos - start > 255 {
            return None;
        }
    }
}

/// The fixed fields of one resource record.
#[derive(Debug, Clone, Copy)]
pub(super) struct RecordAt {
    pub name_end: usize,
    pub rtype: RecordType,
    /// The CLASS field as sent: in an OPT record it is a payload size, not a class.
    pub class: u16,
    pub ttl: u32,
    pub rdata: usize,
    pub end: usize,
}

impl RecordAt {
    pub(super) fn ttl_offset(&self) -> usize {
        self.name_end + 4
    }
}

pub(super) fn read_record(packet: &[u8], pos: usize) -> Option<RecordAt> {
    let name_end = skip_name(packet, pos)?;
    if packet.len() < name_end + 10 {
        return None;
    }
    let rdlen = usize::from(read_u16(packet, name_end + 8));
    let rdata = name_end + 10;
    let end = rdata + rdlen;
    if packet.len() < end {
        return None;
    }
    Some(RecordAt {
        name_end,
        rtype: RecordType::from(read_u16(packet, name_end)),
        class: read_u16(packet, name_end + 2),
        ttl: read_u32(packet, name_end + 4),
        rdata,
        end,
    })
}

/// Every resource record of a whole message (answer, authority, additional), in order.
/// `None` if the message is malformed.
pub(super) fn records(message: &[u8]) -> Option<Vec<(Section, RecordAt)>> {
    let counts = read_header(message)?.counts;
    let mut pos = HEADER_LEN;
    for _ in 0..counts.queries {
        pos = skip_name(message, pos)? + 4;
    }
    let sections = [
        (Section::Answer, counts.answers),
        (Section::Authority, counts.authorities),
        (Section::Additional, counts.additionals),
    ];
    let mut out = Vec::new();
    for (section, count) in sections {
        for _ in 0..count {
            let record = read_record(message, pos)?;
            pos = record.end;
            out.push((section, record));
        }
    }
    Some(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    Answer,
    Authority,
    Additional,
}

/// The addresses in a message's answer section (CNAME targets included, as resolvers send
/// the whole chain), IPv4 first.
pub(super) fn answer_addresses(message: &[u8]) -> Vec<IpAddr> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for (section, record) in records(message).unwrap_or_default() {
        if section != Section::Answer || DNSClass::from(record.class) != DNSClass::IN {
            continue;
        }
        let rdata = &message[record.rdata..record.end];
        if let (RecordType::A, Ok(octets)) = (record.rtype, <[u8; 4]>::try_from(rdata)) {
            v4.push(IpAddr::from(octets));
        } else if let (RecordType::AAAA, Ok(octets)) = (record.rtype, <[u8; 16]>::try_from(rdata)) {
            v6.push(IpAddr::from(octets));
        }
    }
    v4.extend(v6);
    v4
}

/// An answer without records (FORMERR, NOTIMP, REFUSED, BADVERS…): the header, the question
/// in wire form when known (so clients can match it), and an OPT if the client sent one.
pub(super) fn write_reject(
    out: &mut Vec<u8>,
    request: &Metadata,
    rcode: ResponseCode,
    question: Option<&[u8]>,
    edns: Option<Edns>,
) {
    out.clear();
    out.resize(HEADER_LEN, 0);
    if let Some(question) = question {
        out.extend_from_slice(question);
    }
    if let Some(edns) = edns {
        append_opt(out, rcode.high(), edns.dnssec_ok);
    }
    let counts = HeaderCounts {
        queries: u16::from(question.is_some()),
        additionals: u16::from(edns.is_some()),
        ..HeaderCounts::default()
    };
    write_header(out, &response_header(request, rcode, counts));
}

/// Appends our OPT record (RFC 6891 §6.1.2); the caller counts it in ARCOUNT.
pub(super) fn append_opt(out: &mut Vec<u8>, extended_rcode: u8, dnssec_ok: bool) {
    out.push(0); // root owner name
    out.extend_from_slice(&u16::from(RecordType::OPT).to_be_bytes());
    out.extend_from_slice(&OUR_UDP_PAYLOAD.to_be_bytes());
    out.push(extended_rcode);
    out.push(0); // version 0
    out.extend_from_slice(&u16::from(EdnsFlags { dnssec_ok, z: 0 }).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes()); // no options
}

pub(super) fn read_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

pub(super) fn read_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

pub(super) fn write_u32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A query (RD set) for `labels` with the given type, optionally with an OPT record.
    pub(crate) fn query_packet(
        id: u16,
        labels: &[&str],
        qtype: RecordType,
        opt: Option<(u16, u32)>,
    ) -> Vec<u8> {
        let mut metadata = Metadata::new(id, MessageType::Query, OpCode::Query);
        metadata.recursion_desired = true;
        let counts = HeaderCounts {
            queries: 1,
            additionals: u16::from(opt.is_some()),
            ..HeaderCounts::default()
        };
        let mut p = Vec::new();
        write_header(&mut p, &Header { metadata, counts });
        for label in labels {
            p.push(label.len() as u8);
            p.extend_from_slice(label.as_bytes());
        }
        p.push(0);
        p.extend_from_slice(&u16::from(qtype).to_be_bytes());
        p.extend_from_slice(&u16::from(DNSClass::IN).to_be_bytes());
        if let Some((size, ttl)) = opt {
            p.push(0);
            p.extend_from_slice(&u16::from(RecordType::OPT).to_be_bytes());
            p.extend_from_slice(&size.to_be_bytes());
            p.extend_from_slice(&ttl.to_be_bytes());
            p.extend_from_slice(&[0, 0]);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::query_packet;
    use super::*;

    #[test]
    fn parses_a_plain_query_and_its_key() {
        let p = query_packet(0xbeef, &["WwW", "Example", "com"], RecordType::A, None);
        let Parsed::Query(q) = parse_query(&p) else {
            panic!("not a query")
        };
        assert_eq!(q.request.id, 0xbeef);
        assert_eq!(q.qtype, RecordType::A);
        assert_eq!(q.edns, None);
        assert_eq!(q.udp_limit(), 512);
        let mut key = Vec::new();
        q.write_key(&mut key);
        assert_eq!(&key[..4], b"\x03www");
        assert_eq!(&key[key.len() - 4..], &[0, 1, 0, 1]);
    }

    #[test]
    fn reads_edns_and_rejects_unknown_versions() {
        let p = query_packet(1, &["a"], RecordType::AAAA, Some((4096, 0x8000)));
        let Parsed::Query(q) = parse_query(&p) else {
            panic!("not a query")
        };
        assert_eq!(
            q.edns,
            Some(Edns {
                udp_payload: 4096,
                dnssec_ok: true
            })
        );
        let p = query_packet(1, &["a"], RecordType::A, Some((1232, 1 << 16)));
        assert!(matches!(
            parse_query(&p),
            Parsed::Reject {
                rcode: ResponseCode::BADVERS,
                ..
            }
        ));
    }

    #[test]
    fn malformed_input_is_rejected_or_dropped_never_panics() {
        let good = query_packet(7, &["host", "example"], RecordType::A, Some((1232, 0)));
        // Every truncation of a good query, and every single-byte corruption of it.
        for len in 0..good.len() {
            let _ = parse_query(&good[..len]);
        }
        for i in 0..good.len() {
            for b in [0u8, 0x3f, 0x40, 0xc0, 0xff] {
                let mut bad = good.clone();
                bad[i] = b;
                let _ = parse_query(&bad);
                let _ = records(&bad);
                let _ = answer_addresses(&bad);
            }
        }
        assert_eq!(parse_query(&good[..5]), Parsed::Drop);
        assert!(matches!(
            parse_query(&good[..14]),
            Parsed::Reject {
                rcode: ResponseCode::FormErr,
                ..
            }
        ));
        let mut notimp = good.clone();
        notimp[2] |= 0x28; // opcode 5 (UPDATE)
        assert!(matches!(
            parse_query(&notimp),
            Parsed::Reject {
                rcode: ResponseCode::NotImp,
                ..
            }
        ));
        let mut response = good;
        response[2] |= 0x80;
        assert_eq!(parse_query(&response), Parsed::Drop);
    }

    #[test]
    fn reject_echoes_id_and_carries_extended_rcode_in_opt() {
        let mut out = Vec::new();
        let edns = Some(Edns {
            udp_payload: 512,
            dnssec_ok: false,
        });
        let mut request = Metadata::new(0x1234, MessageType::Query, OpCode::Query);
        request.recursion_desired = true;
        write_reject(&mut out, &request, ResponseCode::BADVERS, None, edns);
        let header = read_header(&out).expect("a header");
        assert_eq!(header.id, 0x1234);
        assert!(header.recursion_desired && header.recursion_available);
        assert_eq!(
            header.response_code,
            ResponseCode::NoError,
            "the low bits of 16"
        );
        assert_eq!(header.counts.additionals, 1);
        let records = records(&out).expect("well formed");
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].1.rtype, RecordType::OPT);
        assert_eq!(records[0].1.ttl >> 24, 1);
    }
}
