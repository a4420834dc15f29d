#!/usr/bin/env python3
"""The world outside the demo function, on loopback (scripts/demo starts one per run):

  - a DNS resolver (UDP and TCP) that answers after --dns-delay-ms, as a resolver does that
    has to ask the authoritative servers: each --record NAME=IP gets an A record (TTL 300 s),
    AAAA questions get an empty answer, other names NXDOMAIN;
  - an HTTPS API (HTTP/1.1 keep-alive, the certificate given) standing in for a server
    --rtt-ms away: a new connection waits two round trips before its TLS handshake (TCP's and
    TLS 1.3's), every response one.

    upstreams.py --cert PEM --key PEM --record api.demo.internal=127.0.0.2 ... \
                 [--dns-delay-ms 80] [--rtt-ms 12]

Prints {"dns_port": N, "https_port": M} on its first stdout line once both listen, then one
JSON line per event: {"event": "dns", "name", "type"}, {"event": "tls"} (a handshake done),
{"event": "request", "host", "path"}. Ends on SIGTERM.
"""
import argparse
import json
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

LOCK = threading.Lock()


def emit(**event):
    with LOCK:
        print(json.dumps(event), flush=True)


def answer_dns(wire, records, delay):
    query = dns.message.from_wire(wire)
    q = query.question[0]
    name = q.name.to_text().rstrip(".").lower()
    emit(event="dns", name=name, type=dns.rdatatype.to_text(q.rdtype))
    time.sleep(delay)
    reply = dns.message.make_response(query)
    reply.flags |= dns.flags.RA
    if name not in records:
        reply.set_rcode(dns.rcode.NXDOMAIN)
    elif q.rdtype == dns.rdatatype.A:
        reply.answer.append(dns.rrset.from_text(q.name, 300, "IN", "A", records[name]))
    return reply.to_wire()


def serve_udp(sock, records, delay):
    while True:
        wire, peer = sock.recvfrom(4096)

        def one(wire=wire, peer=peer):
            try:
                sock.sendto(answer_dns(wire, records, delay), peer)
            except Exception as e:  # a malformed query: no answer, as a resolver would
                print(json.dumps({"event": "dns_error", "error": str(e)}), file=sys.stderr)

        threading.Thread(target=one, daemon=True).start()


class DnsTcp(socketserver.BaseRequestHandler):
    def handle(self):
        f = self.request.makefile("rb")
        while True:
            head = f.read(2)
            if len(head) < 2:
                return
            wire = f.read(int.from_bytes(head, "big"))
            out = answer_dns(wire, self.server.records, self.server.delay)
            self.request.sendall(len(out).to_bytes(2, "big") + out)


class Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demo-api"

    def log_message(self, *args):
        pass

    def do_GET(self):
        host = (self.headers.get("Host") or "").split(":")[0]
        emit(event="request", host=host, path=self.path)
        time.sleep(self.server.rtt)
        body = json.dumps({"host": host, "path": self.path, "ok": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class TlsServer(ThreadingHTTPServer):
    daemon_threads = True

    def finish_request(self, request, client_address):
        # In the connection's own thread, so that slow handshakes do not queue behind each other.
        # No Nagle: http.server writes head and body apart, and the body would otherwise wait
        # for the client's delayed ACK (40 ms) on every response.
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        time.sleep(2 * self.rtt)
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        emit(event="tls")
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--record", action="append", default=[])
    p.add_argument("--dns-delay-ms", type=float, default=80)
    p.add_argument("--rtt-ms", type=float, default=12)
    p.add_argument("--https-host", default="127.0.0.2")
    a = p.parse_args()
    records = dict(r.lower().split("=", 1) for r in a.record)
    delay = a.dns_delay_ms / 1000

    # UDP and TCP on one port number.
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(20):
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        try:
            tcp = socketserver.ThreadingTCPServer(("127.0.0.1", port), DnsTcp)
            break
        except OSError:
            udp.close()
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    else:
        sys.exit("no port free for both UDP and TCP")
    tcp.daemon_threads = True
    tcp.records, tcp.delay = records, delay
    threading.Thread(target=serve_udp, args=(udp, records, delay), daemon=True).start()
    threading.Thread(target=tcp.serve_forever, daemon=True).start()

    api = TlsServer((a.https_host, 0), Api)
    api.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    api.ctx.load_cert_chain(a.cert, a.key)
    api.rtt = a.rtt_ms / 1000
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    emit(dns_port=port, https_port=api.server_address[1])
    api.serve_forever()


if __name__ == "__main__":
    main()
