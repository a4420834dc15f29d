//! Just enough of the DNS wire format (RFC 1035 §4.1, RFC 6891) to answer from the cache
//! without decoding whole messages: the header, the one question, the OPT record, and where
//! each record's TTL sits. Everything here is bounds-checked and allocation-free, because it
//! runs for every packet, including hostile ones.

use std::net::IpAddr;

pub const HEADER_LEN: usize = 12;
/// Queries larger than this are not queries we answer (RFC 1035 names fit in 255 bytes; a
/// question plus OPT with a few options is well under 1 KiB).
pub const MAX_QUERY_LEN: usize = 4096;
/// The UDP payload size we advertise and honour at most (DNS flag day 2020).
pub const OUR_UDP_PAYLOAD: u16 = 1232;
/// What a client without EDNS can receive over UDP (RFC 1035 §4.2.1).
pub const CLASSIC_UDP_LIMIT: usize = 512;
/// The largest UDP answer we send, whatever size a client advertises: beyond this, fragments
/// get lost, and TCP is the better road (RFC 9715).
pub const MAX_UDP_ANSWER: u16 = 4096;

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_IXFR: u16 = 251;
pub const TYPE_AXFR: u16 = 252;
pub const CLASS_IN: u16 = 1;

// Header flag bits.
pub const FLAG_QR: u16 = 0x8000;
pub const FLAG_TC: u16 = 0x0200;
pub const FLAG_RD: u16 = 0x0100;
pub const FLAG_RA: u16 = 0x0080;
pub const FLAG_CD: u16 = 0x0010;
const OPCODE_MASK: u16 = 0x7800;
const RCODE_MASK: u16 = 0x000f;

pub const RCODE_FORMERR: u16 = 1;
pub const RCODE_NXDOMAIN: u16 = 3;
pub const RCODE_NOTIMP: u16 = 4;
pub const RCODE_REFUSED: u16 = 5;
/// Extended RCODE 16: the client's EDNS version is not one we speak (RFC 6891 §6.1.3).
pub const RCODE_BADVERS: u16 = 16;

/// The client's EDNS(0) OPT record, as far as an answer depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub udp_payload: u16,
    pub dnssec_ok: bool,
}

/// A well-formed standard query, borrowing its name from the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query<'a> {
    pub id: u16,
    pub flags: u16,
    /// The question name in wire form, as the client spelled it (case kept for the echo).
    pub qname: &'a [u8],
    /// The whole question (name, type, class) in wire form.
    pub question: &'a [u8],
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<Edns>,
}

impl Query<'_> {
    /// The largest answer this client accepts over UDP.
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            Some(edns) => usize::from(edns.udp_payload.clamp(512, MAX_UDP_ANSWER)),
            None => CLASSIC_UDP_LIMIT,
        }
    }

    /// The cache key: the question (name lower-cased, type, class) in wire form.
    pub fn write_key(&self, key: &mut Vec<u8>) {
        key.clear();
        // Length octets are ≤ 63, below b'A', so lower-casing the whole name is safe.
        key.extend(self.qname.iter().map(u8::to_ascii_lowercase));
        key.extend_from_slice(&self.qtype.to_be_bytes());
        key.extend_from_slice(&self.qclass.to_be_bytes());
    }
}

/// What to do with an incoming packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    Query(Query<'a>),
    /// Answer with just a header (and the question, when it could be read) carrying this
    /// (possibly extended) RCODE.
    Reject {
        id: u16,
        flags: u16,
        rcode: u16,
        question: Option<&'a [u8]>,
        edns: Option<Edns>,
    },
    /// Not worth an answer: too short to carry an ID, or itself a response (answering
    /// responses invites loops and reflection).
    Drop,
}

impl Parsed<'_> {
    /// For a reject: writes its answer (see [`write_reject`]) into `out` and returns its RCODE.
    pub fn write_reject_into(&self, out: &mut Vec<u8>) -> Option<u16> {
        let Parsed::Reject {
            id,
            flags,
            rcode,
            question,
            edns,
        } = *self
        else {
            return None;
        };
        write_reject(out, id, flags, rcode, question, edns);
        Some(rcode)
    }
}

pub fn parse_query(packet: &[u8]) -> Parsed<'_> {
    if packet.len() < HEADER_LEN {
        return Parsed::Drop;
    }
    let id = read_u16(packet, 0);
    let flags = read_u16(packet, 2);
    if flags & FLAG_QR != 0 {
        return Parsed::Drop;
    }
    let reject = |rcode| Parsed::Reject {
        id,
        flags,
        rcode,
        question: None,
        edns: None,
    };
    if packet.len() > MAX_QUERY_LEN {
        return reject(RCODE_FORMERR);
    }
    if flags & OPCODE_MASK != 0 {
        return reject(RCODE_NOTIMP);
    }
    let (qdcount, ancount, nscount, arcount) = (
        read_u16(packet, 4),
        read_u16(packet, 6),
        read_u16(packet, 8),
        read_u16(packet, 10),
    );
    if qdcount != 1 || ancount != 0 || nscount != 0 {
        return reject(RCODE_FORMERR);
    }
    let Some(name_end) = question_name_end(packet, HEADER_LEN) else {
        return reject(RCODE_FORMERR);
    };
    if packet.len() < name_end + 4 {
        return reject(RCODE_FORMERR);
    }
    let qtype = read_u16(packet, name_end);
    let qclass = read_u16(packet, name_end + 2);
    if qtype == TYPE_OPT {
        return reject(RCODE_FORMERR);
    }
    let mut pos = name_end + 4;
    let mut edns = None;
    for _ in 0..arcount {
        let Some(record) = read_record(packet, pos) else {
            return reject(RCODE_FORMERR);
        };
        if record.rtype == TYPE_OPT {
            // One OPT at most, owned by the root (RFC 6891 §6.1.1).
            if edns.is_some() || record.name_end != pos + 1 || packet[pos] != 0 {
                return reject(RCODE_FORMERR);
            }
            let version = (record.ttl >> 16) & 0xff;
            let found = Edns {
                udp_payload: record.class,
                dnssec_ok: record.ttl & 0x8000 != 0,
            };
            if version != 0 {
                return Parsed::Reject {
                    id,
                    flags,
                    rcode: RCODE_BADVERS,
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
        id,
        flags,
        qname: &packet[HEADER_LEN..name_end],
        question: &packet[HEADER_LEN..name_end + 4],
        qtype,
        qclass,
        edns,
    })
}

/// Where a question name that starts at `pos` ends. Question names are never compressed in
/// queries (there is nothing before them to point at), so a pointer is malformed.
pub fn question_name_end(packet: &[u8], mut pos: usize) -> Option<usize> {
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
pub struct RecordAt {
    pub name_end: usize,
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    pub rdata: usize,
    pub end: usize,
}

impl RecordAt {
    pub fn ttl_offset(&self) -> usize {
        self.name_end + 4
    }
}

pub fn read_record(packet: &[u8], pos: usize) -> Option<RecordAt> {
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
        rtype: read_u16(packet, name_end),
        class: read_u16(packet, name_end + 2),
        ttl: read_u32(packet, name_end + 4),
        rdata,
        end,
    })
}

/// Every resource record of a whole message (answer, authority, additional), in order.
/// `None` if the message is malformed.
pub fn records(message: &[u8]) -> Option<Vec<(Section, RecordAt)>> {
    if message.len() < HEADER_LEN {
        return None;
    }
    let mut pos = HEADER_LEN;
    for _ in 0..read_u16(message, 4) {
        pos = skip_name(message, pos)? + 4;
    }
    let sections = [
        (Section::Answer, read_u16(message, 6)),
        (Section::Authority, read_u16(message, 8)),
        (Section::Additional, read_u16(message, 10)),
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
pub enum Section {
    Answer,
    Authority,
    Additional,
}

/// The addresses in a message's answer section (CNAME targets included, as resolvers send
/// the whole chain), IPv4 first.
pub fn answer_addresses(message: &[u8]) -> Vec<IpAddr> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for (section, record) in records(message).unwrap_or_default() {
        if section != Section::Answer || record.class != CLASS_IN {
            continue;
        }
        let rdata = &message[record.rdata..record.end];
        match (record.rtype, rdata.len()) {
            (TYPE_A, 4) => {
                let octets: [u8; 4] = [rdata[0], rdata[1], rdata[2], rdata[3]];
                v4.push(IpAddr::from(octets));
            }
            (TYPE_AAAA, 16) => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(rdata);
                v6.push(IpAddr::from(octets));
            }
            _ => {}
        }
    }
    v4.extend(v6);
    v4
}

/// Response flags for an answer to `query_flags` with `rcode`: recursion available, the
/// client's RD and CD echoed, never AA (we are not the authority) nor AD (we do not validate).
pub fn response_flags(query_flags: u16, rcode: u16) -> u16 {
    FLAG_QR | FLAG_RA | (query_flags & (OPCODE_MASK | FLAG_RD | FLAG_CD)) | (rcode & RCODE_MASK)
}

/// An answer without records (FORMERR, NOTIMP, REFUSED, BADVERS…): the header, the question
/// in wire form when known (so clients can match it), and an OPT if the client sent one.
pub fn write_reject(
    out: &mut Vec<u8>,
    id: u16,
    query_flags: u16,
    rcode: u16,
    question: Option<&[u8]>,
    edns: Option<Edns>,
) {
    out.clear();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&response_flags(query_flags, rcode).to_be_bytes());
    out.extend_from_slice(&u16::from(question.is_some()).to_be_bytes());
    out.extend_from_slice(&[0; 6]);
    if let Some(question) = question {
        out.extend_from_slice(question);
    }
    if let Some(edns) = edns {
        append_opt(out, (rcode >> 4) as u8, edns.dnssec_ok);
    }
}

/// Appends our OPT record (RFC 6891 §6.1.2) and counts it in ARCOUNT.
pub fn append_opt(out: &mut Vec<u8>, extended_rcode: u8, dnssec_ok: bool) {
    out.push(0); // root owner name
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&OUR_UDP_PAYLOAD.to_be_bytes());
    out.push(extended_rcode);
    out.push(0); // version 0
    out.extend_from_slice(&(if dnssec_ok { 0x8000u16 } else { 0 }).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes()); // no options
    let arcount = read_u16(out, 10).saturating_add(1);
    write_u16(out, 10, arcount);
}

pub fn read_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

pub fn read_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

pub fn write_u16(buf: &mut [u8], at: usize, value: u16) {
    buf[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

pub fn write_u32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A query for `labels` with the given type, optionally with an OPT record.
    pub(crate) fn query_packet(
        id: u16,
        labels: &[&str],
        qtype: u16,
        opt: Option<(u16, u32)>,
    ) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&FLAG_RD.to_be_bytes());
        p.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(opt.is_some())]);
        for label in labels {
            p.push(label.len() as u8);
            p.extend_from_slice(label.as_bytes());
        }
        p.push(0);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&CLASS_IN.to_be_bytes());
        if let Some((size, ttl)) = opt {
            p.push(0);
            p.extend_from_slice(&TYPE_OPT.to_be_bytes());
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
        let p = query_packet(0xbeef, &["WwW", "Example", "com"], TYPE_A, None);
        let Parsed::Query(q) = parse_query(&p) else {
            panic!("not a query")
        };
        assert_eq!(q.id, 0xbeef);
        assert_eq!(q.qtype, TYPE_A);
        assert_eq!(q.edns, None);
        assert_eq!(q.udp_limit(), 512);
        let mut key = Vec::new();
        q.write_key(&mut key);
        assert_eq!(&key[..4], b"\x03www");
        assert_eq!(&key[key.len() - 4..], &[0, 1, 0, 1]);
    }

    #[test]
    fn reads_edns_and_rejects_unknown_versions() {
        let p = query_packet(1, &["a"], TYPE_AAAA, Some((4096, 0x8000)));
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
        let p = query_packet(1, &["a"], TYPE_A, Some((1232, 1 << 16)));
        assert!(matches!(
            parse_query(&p),
            Parsed::Reject {
                rcode: RCODE_BADVERS,
                ..
            }
        ));
    }

    #[test]
    fn malformed_input_is_rejected_or_dropped_never_panics() {
        let good = query_packet(7, &["host", "example"], TYPE_A, Some((1232, 0)));
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
                rcode: RCODE_FORMERR,
                ..
            }
        ));
        let mut notimp = good.clone();
        notimp[2] |= 0x28; // opcode 5 (UPDATE)
        assert!(matches!(
            parse_query(&notimp),
            Parsed::Reject {
                rcode: RCODE_NOTIMP,
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
        write_reject(&mut out, 0x1234, FLAG_RD, RCODE_BADVERS, None, edns);
        assert_eq!(read_u16(&out, 0), 0x1234);
        assert_eq!(read_u16(&out, 2) & 0x000f, 0);
        assert_eq!(read_u16(&out, 10), 1);
        let records = records(&out).expect("well formed");
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].1.rtype, TYPE_OPT);
        assert_eq!(records[0].1.ttl >> 24, 1);
    }
}
