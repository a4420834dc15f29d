#!/usr/bin/env python3
"""A loopback upstream for the proxy's end-to-end tests (stdlib only).

    upstream.py --host 127.0.0.2 [--tls CERT KEY] [--name NAME]

Prints {"port": N} on its first stdout line once listening. Paths:
  .../fail/<n>/<key> 503 for the first n requests with that key, then 200
  .../throttle/<s>/<key>  429 with Retry-After: s for the first request with that key, then 200
  anything else     200 with JSON {name, method, path, via, key, body_len}
"""
import argparse
import json
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HITS = {}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "warden-test-upstream"

    def log_message(self, *args):
        pass

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = self.path.split("?")[0].strip("/").split("/")
        status = 200
        # ".../fail/<n>/<key>" anywhere in the path (route base paths come first).
        at = parts.index("fail") if "fail" in parts else -1
        if at >= 0 and len(parts) >= at + 3:
            n, key = int(parts[at + 1]), parts[at + 2]
            with LOCK:
                HITS[key] = HITS.get(key, 0) + 1
                seen = HITS[key]
            if seen <= n:
                status = 503
        retry_after = None
        at = parts.index("throttle") if "throttle" in parts else -1
        if at >= 0 and len(parts) >= at + 3:
            secs, key = parts[at + 1], "throttle/" + parts[at + 2]
            with LOCK:
                HITS[key] = HITS.get(key, 0) + 1
                first = HITS[key] == 1
            if first:
                status, retry_after = 429, secs
        payload = json.dumps({
            "name": self.server.name,
            "method": self.command,
            "path": self.path,
            "via": self.headers.get("Via"),
            "key": self.headers.get("Idempotency-Key"),
            "body_len": len(body),
        }).encode()
        self.send_response(status)
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.2")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    p.add_argument("--name", default="upstream")
    a = p.parse_args()
    server = ThreadingHTTPServer((a.host, a.port), Handler)
    server.daemon_threads = True
    server.name = a.name
    if a.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls[0], a.tls[1])
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
