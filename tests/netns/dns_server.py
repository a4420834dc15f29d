#!/usr/bin/env python3
"""A tiny authoritative DNS server for the network-lab tests (dnspython), UDP and TCP.

    dns_server.py --host IP --port N --record NAME=IP [--record ...] [--ttl S]

Prints {"port": N} on its first stdout line once listening. Answers A queries for the given
names (case-insensitive) with the given TTL, NODATA for other types of a known name, NXDOMAIN
for anything else. (Not named dns.py: that would shadow the dnspython package.)
"""
import argparse
import json
import socket
import sys
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


def answer(wire, records, ttl):
    try:
        query = dns.message.from_wire(wire)
    except Exception:
        return None
    reply = dns.message.make_response(query)
    reply.flags |= dns.flags.AA
    if not query.question:
        reply.set_rcode(dns.rcode.FORMERR)
        return reply.to_wire()
    q = query.question[0]
    name = q.name.to_text().lower().rstrip(".")
    if name not in records:
        reply.set_rcode(dns.rcode.NXDOMAIN)
    elif q.rdtype == dns.rdatatype.A:
        reply.answer.append(dns.rrset.from_text(q.name, ttl, dns.rdataclass.IN, dns.rdatatype.A, records[name]))
    return reply.to_wire()


def serve_udp(sock, records, ttl):
    while True:
        wire, peer = sock.recvfrom(4096)
        out = answer(wire, records, ttl)
        if out:
            sock.sendto(out, peer)


def serve_tcp_client(conn, records, ttl):
    with conn:
        conn.settimeout(5)
        try:
            while True:
                head = conn.recv(2)
                if len(head) < 2:
                    return
                size = int.from_bytes(head, "big")
                wire = b""
                while len(wire) < size:
                    chunk = conn.recv(size - len(wire))
                    if not chunk:
                        return
                    wire += chunk
                out = answer(wire, records, ttl)
                if not out:
                    return
                conn.sendall(len(out).to_bytes(2, "big") + out)
        except OSError:
            return


def serve_tcp(sock, records, ttl):
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=serve_tcp_client, args=(conn, records, ttl), daemon=True).start()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=53)
    p.add_argument("--record", action="append", default=[])
    p.add_argument("--ttl", type=int, default=1)
    a = p.parse_args()
    records = {}
    for r in a.record:
        name, ip = r.split("=", 1)
        records[name.lower().rstrip(".")] = ip
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((a.host, a.port))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((a.host, udp.getsockname()[1]))
    tcp.listen(64)
    threading.Thread(target=serve_tcp, args=(tcp, records, a.ttl), daemon=True).start()
    print(json.dumps({"port": udp.getsockname()[1]}), flush=True)
    try:
        serve_udp(udp, records, a.ttl)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
