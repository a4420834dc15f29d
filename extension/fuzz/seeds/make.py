#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs into corpus/<target>/ (scripts/fuzz runs this when a
corpus is empty). One seed per shape the parsers are meant to accept, and a few they reject."""
import json
import os
import struct
import sys

import dns.edns
import dns.flags
import dns.message
import dns.rrset

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "corpus")


def write(target, name, data):
    folder = os.path.join(out, target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def query(name, rtype, **kw):
    q = dns.message.make_query(name, rtype, **kw)
    q.id = 0x1234
    return q


queries = {
    "a": query("api.example.com.", "A"),
    "aaaa_edns": query("Api.Example.COM.", "AAAA", use_edns=0, payload=1232, want_dnssec=True),
    "mx": query("example.com.", "MX"),
    "txt_edns_big": query("example.com.", "TXT", use_edns=0, payload=4096),
    "edns_v1": query("example.com.", "A", use_edns=1),
}
for label, q in queries.items():
    write("dns_query", label, q.to_wire())
write("dns_query", "response", dns.message.make_response(queries["a"]).to_wire())
write("dns_query", "short", b"\x12\x34\x01")


def response(q, *records, rcode=0, authority=()):
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    for text in records:
        r.answer.append(dns.rrset.from_text(*text))
    for text in authority:
        r.authority.append(dns.rrset.from_text(*text))
    return r.to_wire()


def pair(label, q, resp):
    wire = q.to_wire()
    write("dns_answer", label, bytes([len(wire)]) + wire + resp)


pair("a", queries["a"], response(queries["a"], ("api.example.com.", 60, "IN", "A", "192.0.2.1", "192.0.2.2")))
pair("cname", queries["a"], response(queries["a"],
     ("api.example.com.", 300, "IN", "CNAME", "edge.example.net."),
     ("edge.example.net.", 20, "IN", "A", "192.0.2.7")))
pair("aaaa_edns", queries["aaaa_edns"], response(queries["aaaa_edns"],
     ("api.example.com.", 30, "IN", "AAAA", "2001:db8::1")))
pair("nxdomain", queries["a"], response(queries["a"], rcode=3, authority=[
     ("example.com.", 900, "IN", "SOA", "ns.example.com. admin.example.com. 1 7200 900 1209600 86400")]))
pair("nodata", queries["mx"], response(queries["mx"], authority=[
     ("example.com.", 900, "IN", "SOA", "ns.example.com. admin.example.com. 1 7200 900 1209600 60")]))
pair("servfail", queries["a"], response(queries["a"], rcode=2))
r = dns.message.make_response(queries["txt_edns_big"])
r.answer.append(dns.rrset.from_text_list("example.com.", 60, "IN", "TXT", ['"%s"' % ("x" * 200 + str(i)) for i in range(12)]))
pair("txt_truncated", queries["txt_edns_big"], r.to_wire())

heads = {
    "connect": "CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n",
    "connect_v6": "CONNECT [::ffff:127.0.0.1]:443 HTTP/1.1\r\n\r\n",
    "forward": "GET http://API.Example.com./v1/x?q=1 HTTP/1.1\r\nHost: api.example.com\r\n"
               "Connection: keep-alive, X-Drop\r\nX-Drop: 1\r\nTE: trailers\r\n\r\n",
    "forward_https_port": "POST https://0x7f.1:8443/p HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    "forward_userinfo": "GET http://user:pw@example.com/ HTTP/1.1\r\n\r\n",
    "forward_looped": "GET http://example.com/ HTTP/1.1\r\nVia: 1.1 egress-warden\r\n\r\n",
    "route": "GET /payments/v1/charges?limit=3 HTTP/1.1\r\nHost: 127.0.0.1:9080\r\n\r\n",
    "route_query_only": "GET /payments?x=1 HTTP/1.1\r\n\r\n",
    "status": "GET /_warden/status HTTP/1.1\r\n\r\n",
}
for label, head in heads.items():
    write("request_head", label, head)

for label, host in {
    "name": "Api.Example.COM.", "unicode": "ｅｘａｍｐｌｅ.com", "idna": "xn--bcher-kva.example",
    "v6": "[::ffff:169.254.169.254]", "decimal": "2130706433", "octal": "0177.0.0.1",
    "hex": "0xa9.0xfe.0xa9.0xfe", "evil": "WWW.EVIL.EXAMPLE.", "zone": "fe80::1%eth0",
}.items():
    write("host", label, host)

write("config", "routes", "\x00ROUTES=payments=https://api.example.com/v1;fallback=https://api.eu.example.com/v1\n"
      "WARM=payments,https://example.com:8443\nPOLICY=enforce\nALLOW=*.example.com,10.0.0.0/8\n")
write("config", "dns", "\x01DNS_UPSTREAMS=127.0.0.1:5353,[::1]:53\nDNS_MIN_TTL_S=5\nDNS_MAX_TTL_S=3600\n"
      "DNS_STALE_S=300\nDNS_NEGATIVE_TTL_S=30\n")
write("config", "sink", "\x02METRICS_SINK=both\nCLOUDWATCH_ENDPOINT=http://127.0.0.1:5000\n"
      "FLUSH_INTERVAL_S=30\nRESTORE_BUDGET_MS=1000\nMAX_CONNECTIONS=1024\nLOG_LEVEL=debug\n")
write("config", "bad", "\x03PROXY_PORT=abc\nPROXYPORT=1\nDENY=::1/200\nVPC_CIDRS=10.0.0.0/33\n")

stamp = "2026-12-06T09:00:00.000Z"
batch = [
    {"time": stamp, "type": "platform.initStart", "record": {"initializationType": "snap-start", "phase": "init"}},
    {"time": stamp, "type": "platform.restoreStart", "record": {}},
    {"time": stamp, "type": "platform.start", "record": {"requestId": "r-1", "version": "$LATEST"}},
    {"time": stamp, "type": "platform.runtimeDone", "record": {"requestId": "r-1", "status": "timeout",
                                                               "metrics": {"durationMs": 3000.0}}},
    {"time": stamp, "type": "platform.report", "record": {"requestId": "r-1", "status": "success"}},
    {"time": stamp, "type": "platform.unknownThing", "record": 7},
]
write("telemetry", "batch", json.dumps(batch))
write("telemetry", "empty", "[]")
write("telemetry", "not_a_list", '{"type": "platform.start"}')
