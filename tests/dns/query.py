#!/usr/bin/env python3
"""Asks a DNS server on loopback one question with dnspython and prints what came back as
one JSON object. Used by the dns_* tests as an independent, real client.

Only loopback servers are allowed: the tests never touch the machine's resolver.
"""
import argparse
import ipaddress
import json
import sys

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype


def records(section):
    out = []
    for rrset in section:
        for rdata in rrset:
            out.append({
                "name": rrset.name.to_text(),
                "ttl": rrset.ttl,
                "type": dns.rdatatype.to_text(rrset.rdtype),
                "data": rdata.to_text(),
            })
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--server", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name", default="www.test.")
    p.add_argument("--type", default="A")
    p.add_argument("--tcp", action="store_true", help="ask over TCP")
    p.add_argument("--fallback", action="store_true", help="UDP, retried over TCP if truncated")
    p.add_argument("--ignore-trunc", action="store_true", help="return a truncated UDP answer as is (dnspython's default)")
    p.add_argument("--no-edns", action="store_true")
    p.add_argument("--payload", type=int, default=1232)
    p.add_argument("--edns-version", type=int, default=0)
    p.add_argument("--dnssec-ok", action="store_true")
    p.add_argument("--opcode", default="QUERY")
    p.add_argument("--id", type=int)
    p.add_argument("--timeout", type=float, default=3.0)
    a = p.parse_args()
    if not ipaddress.ip_address(a.server).is_loopback:
        sys.exit("query.py only talks to loopback servers")

    q = dns.message.make_query(
        a.name,
        a.type,
        use_edns=False if a.no_edns else a.edns_version,
        payload=a.payload,
        want_dnssec=a.dnssec_ok,
    )
    q.set_opcode(dns.opcode.from_text(a.opcode))
    if a.id is not None:
        q.id = a.id
    report = {"id_sent": q.id, "question_sent": [r.to_text() for r in q.question]}
    try:
        if a.tcp:
            r = dns.query.tcp(q, a.server, port=a.port, timeout=a.timeout)
            report["transport"] = "tcp"
        elif a.fallback:
            r, used_tcp = dns.query.udp_with_fallback(q, a.server, port=a.port, timeout=a.timeout)
            report["transport"] = "tcp" if used_tcp else "udp"
        else:
            # dnspython returns a truncated answer as is unless asked to raise.
            r = dns.query.udp(q, a.server, port=a.port, timeout=a.timeout)
            report["transport"] = "udp"
    except Exception as e:  # reported, not raised: the test decides what it means
        report["error"] = f"{type(e).__name__}: {e}"
        print(json.dumps(report))
        return
    report.update({
        "id": r.id,
        "rcode": dns.rcode.to_text(r.rcode()),
        "opcode": dns.opcode.to_text(r.opcode()),
        "flags": dns.flags.to_text(r.flags).split(),
        "tc": bool(r.flags & dns.flags.TC),
        "question": [rr.to_text() for rr in r.question],
        "answer": records(r.answer),
        "authority": records(r.authority),
        "edns": None if r.edns < 0 else {"version": r.edns, "payload": r.payload,
                                         "do": bool(r.ednsflags & dns.flags.DO)},
        "size": len(r.to_wire()),
    })
    print(json.dumps(report))


if __name__ == "__main__":
    main()
