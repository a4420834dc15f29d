#!/usr/bin/env python3
"""An upstream for the network-lab tests, run inside the lab's namespace (stdlib only).

    upstream.py --host IP --port N [--tls CERT KEY] [--name NAME]
                [--idle-close-ms MS [--rst] | --idle-forget-ms MS]

Prints {"port": N} on its first stdout line once listening. Every request gets 200 with JSON
{name, method, path, conn, served}: `conn` numbers the connection, `served` counts requests on
it, so a test sees whether a connection was reused. With --idle-close-ms a connection that sits
idle that long is closed (FIN), or reset with --rst (SO_LINGER 0), like a NAT gateway or load
balancer dropping idle flows. With --idle-forget-ms the connection is instead forgotten
silently, as a NAT gateway forgets a flow idle for 350 s: nothing is sent until the client's
next packet, which is answered with a reset. The TLS handshake runs on the connection's own thread, so a slow
or stopped client never holds up the others.
"""
import argparse
import itertools
import json
import socket
import ssl
import struct
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONNECTIONS = itertools.count(1)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "warden-lab-upstream"

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        self.conn_id = next(CONNECTIONS)
        self.served = 0

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.served += 1
        payload = json.dumps({
            "name": self.server.name,
            "method": self.command,
            "path": self.path,
            "conn": self.conn_id,
            "served": self.served,
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        # Head and body in one write: over a delay line, a second small segment would wait
        # for an ACK and add round trips that have nothing to do with what is measured.
        self._headers_buffer.append(b"\r\n" + payload)
        self.flush_headers()

    do_GET = do_POST = do_PUT = do_DELETE = _answer


class Server(ThreadingHTTPServer):
    daemon_threads = True
    tls = None
    idle_s = None
    rst = False
    forget = False

    def finish_request(self, request, client_address):
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request.settimeout(self.idle_s)
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError):
                self.shutdown_request(request)
                return
        # BaseHTTPRequestHandler ends a keep-alive connection when a read times out: that
        # is the idle close.
        Handler.timeout = self.idle_s
        try:
            Handler(request, client_address, self)
        finally:
            self.close_connection(request)

    def close_connection(self, request):
        if request.fileno() < 0:
            return
        if self.forget:
            # Silent until the client sends again (or gives up), then a reset.
            try:
                request.settimeout(120)
                request.recv(1)
            except (OSError, ssl.SSLError):
                pass
        if self.rst or self.forget:
            try:
                request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            request.close()
            return
        super().shutdown_request(request)

    def shutdown_request(self, request):
        # finish_request closed it already (a TLS connection is a new socket object).
        self.close_connection(request)

    def handle_error(self, request, client_address):
        pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    p.add_argument("--name", default="upstream")
    p.add_argument("--idle-close-ms", type=int)
    p.add_argument("--rst", action="store_true")
    p.add_argument("--idle-forget-ms", type=int)
    a = p.parse_args()
    server = Server((a.host, a.port), Handler)
    server.name = a.name
    server.rst = a.rst
    if a.idle_close_ms:
        server.idle_s = a.idle_close_ms / 1000.0
    if a.idle_forget_ms:
        server.idle_s = a.idle_forget_ms / 1000.0
        server.forget = True
    if a.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls[0], a.tls[1])
        server.tls = ctx
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
