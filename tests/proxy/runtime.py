#!/usr/bin/env python3
"""A minimal Lambda runtime (Runtime API over http.client) whose handler makes the outbound
calls an event lists, with the clients a Python function really uses: `requests` and
`boto3`. Started through the egress-warden exec wrapper, so both clients pick up
HTTP_PROXY / HTTPS_PROXY / NO_PROXY exactly as in Lambda.

Event: {"calls": [call, ...]}; each call is one outbound request:
  {"kind": "requests", "method": "GET", "url": "...", "verify": "ca.pem", "headers": {...}, "data": "..."}
  {"kind": "boto3", "op": "put_metric_data" | "list_metrics", "endpoint": "http://127.0.0.2:PORT"}
  {"kind": "tunnel", "host": "127.0.0.2", "port": N, "path": "/x"}: plain HTTP through a
      CONNECT tunnel of the proxy in HTTP_PROXY (http.client's set_tunnel)
Answer: {"results": [{"status": N} | {"error": "..."}], "proxies": {...}}

WARDEN_TEST_RUNTIME_WORKERS=N runs N loops at once, each with its own `next` (as a runtime on
Lambda Managed Instances serves several invocations at a time).
"""
import http.client
import json
import os
import sys
import threading
import urllib.parse

import boto3
import botocore.config
import requests

API = os.environ["AWS_LAMBDA_RUNTIME_API"]


def runtime(method, path, body=None):
    conn = http.client.HTTPConnection(API, timeout=900)
    conn.request(method, "/2018-06-01/runtime" + path, body=body)
    res = conn.getresponse()
    data = res.read()
    return res, data


def one_call(call):
    kind = call["kind"]
    if kind == "requests":
        # No session: every call opens its own connection (one CONNECT tunnel per https call).
        r = requests.request(
            call.get("method", "GET"),
            call["url"],
            headers=call.get("headers"),
            data=call.get("data"),
            verify=call.get("verify", True),
            timeout=30,
        )
        return {"status": r.status_code, "error_header": r.headers.get("X-Egress-Warden-Error"), "body": r.text[:300]}
    if kind == "boto3":
        cw = boto3.client(
            "cloudwatch",
            endpoint_url=call["endpoint"],
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
            # One HTTP request per call: no SDK retries to blur the count.
            config=botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"}),
        )
        if call["op"] == "put_metric_data":
            cw.put_metric_data(Namespace="WardenTest", MetricData=[{"MetricName": "m", "Value": 1.0}])
        else:
            cw.list_metrics(Namespace="WardenTest")
        return {"status": 200}
    if kind == "tunnel":
        proxy = urllib.parse.urlsplit(os.environ["HTTP_PROXY"])
        conn = http.client.HTTPConnection(proxy.hostname, proxy.port, timeout=30)
        conn.set_tunnel(call["host"], call["port"])
        try:
            conn.request("GET", call.get("path", "/"))
            r = conn.getresponse()
            return {"status": r.status, "body": r.read().decode(errors="replace")[:300]}
        finally:
            conn.close()
    return {"error": f"unknown kind {kind}"}


def main():
    workers = int(os.environ.get("WARDEN_TEST_RUNTIME_WORKERS") or 1)
    threads = [threading.Thread(target=serve, daemon=True) for _ in range(workers - 1)]
    for t in threads:
        t.start()
    serve()


def serve():
    proxies = {k: os.environ.get(k) for k in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")}
    while True:
        res, data = runtime("GET", "/invocation/next")
        request_id = res.getheader("Lambda-Runtime-Aws-Request-Id")
        event = json.loads(data or b"{}")
        results = []
        for call in event.get("calls", []):
            try:
                results.append(one_call(call))
            except Exception as e:  # report, do not crash the runtime
                results.append({"error": f"{type(e).__name__}: {e}"})
        body = json.dumps({"results": results, "proxies": proxies}).encode()
        runtime("POST", f"/invocation/{request_id}/response", body)


if __name__ == "__main__":
    sys.exit(main())
