#!/usr/bin/env python3
"""scripts/demo's summary: reads what the two runs left in WORK (the emulator's output, the
resolver's and API server's event lines, the extension's EMF totals) and prints the requests'
times, a side-by-side table and the finding explained.

    summary.py WORK
"""
import json
import re
import statistics
import sys
from pathlib import Path

work = Path(sys.argv[1])
RUNS = ("without", "with")
SHORT = {"/v1/orders": "orders", "/v1/prices": "prices"}


def run_output(name):
    """INIT ms, [[request result, …] per invoke], the extension's stderr lines."""
    init_ms, invokes, ext = None, [], []
    lines = (work / f"{name}.log").read_text(errors="replace").splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"== INIT ok in ([\d.]+) ms", line)
        if m:
            init_ms = float(m.group(1))
        if line.startswith("== invoke ") and i + 1 < len(lines):
            answer = json.loads(lines[i + 1])
            invokes.append(answer["results"])
        if line.startswith("[egress-warden:stderr] "):
            ext.append(line[len("[egress-warden:stderr] "):])
    return init_ms, invokes, ext


def events(name):
    out = []
    for line in (work / f"{name}.events").read_text().splitlines()[1:]:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def label(result):
    url = result["url"]
    if "sqs." in url:
        return "sqs"
    return next((v for k, v in SHORT.items() if k in url), url)


data = {}
for name in RUNS:
    init_ms, invokes, ext = run_output(name)
    ev = events(name)
    flat = [r for inv in invokes for r in inv]
    failed = [r for r in flat if r.get("status") != 200]
    if failed:
        sys.exit(f"scripts/demo: {name}: requests failed: {json.dumps(failed)}")
    data[name] = {
        "init_ms": init_ms,
        "invokes": invokes,
        "first": flat[0]["ms"],
        "later": statistics.median(r["ms"] for r in flat[1:]),
        "dns": sum(1 for e in ev if e.get("event") == "dns"),
        "tls": sum(1 for e in ev if e.get("event") == "tls"),
        "served": sum(1 for e in ev if e.get("event") == "request"),
        "findings": [json.loads(l) for l in ext if l.startswith("{") and '"finding"' in l],
    }

emf_path = work / "with-emf.json"
emf = json.loads(emf_path.read_text())["egress-warden"]["totals"] if emf_path.exists() else {}

# --- each request's time --------------------------------------------------------------------
w, l = data["without"], data["with"]
cols = [label(r) for r in w["invokes"][0]]
print("Each request, in ms (one new connection per request from the function):")
head = "  ".join(f"{c:>7}" for c in cols)
print(f"{'':10}{'without the layer':^{len(head)}}     {'with the layer':^{len(head)}}")
print(f"{'':10}{head}     {head}")
for i, (a, b) in enumerate(zip(w["invokes"], l["invokes"]), 1):
    ra = "  ".join(f"{r['ms']:7.1f}" for r in a)
    rb = "  ".join(f"{r['ms']:7.1f}" for r in b)
    print(f"invoke {i:<3}{ra}     {rb}")
print()

# --- the table ----------------------------------------------------------------------------------
active = [f for f in l["findings"] if f.get("status") == "active"]
rows = [
    ("INIT (the warm-up runs here)", f"{w['init_ms']:.0f} ms", f"{l['init_ms']:.0f} ms"),
    ("first request", f"{w['first']:.1f} ms", f"{l['first']:.1f} ms"),
    ("later requests, median", f"{w['later']:.1f} ms", f"{l['later']:.1f} ms"),
    ("DNS queries the resolver received", str(w["dns"]), str(l["dns"])),
    ("TLS handshakes (new connections)", str(w["tls"]), str(l["tls"])),
    ("requests the servers answered", str(w["served"]), str(l["served"])),
    ("DNS answers from egress-warden's cache", "-", f"{emf.get('dns_cache_hits', 0):.0f}"),
    ("connections egress-warden reused", "-", f"{emf.get('connections_reused', 0):.0f}"),
    ("finding", "none", ", ".join(f["finding"] for f in active) or "none"),
]
width = max(len(r[0]) for r in rows)
a_w = max(len("without the layer"), *(len(r[1]) for r in rows))
b_w = max(len("with the layer"), *(len(r[2]) for r in rows))
print(f"| {'':<{width}} | {'without the layer':>{a_w}} | {'with the layer':>{b_w}} |")
print(f"|{'-' * (width + 2)}|{'-' * (a_w + 1)}:|{'-' * (b_w + 1)}:|")
for name, a, b in rows:
    print(f"| {name:<{width}} | {a:>{a_w}} | {b:>{b_w}} |")

# --- the finding ---------------------------------------------------------------------------------
for f in active:
    print()
    print(f"Finding: {f.get('message', f['finding'])}")
    ev = f.get("evidence", {})
    if ev:
        print("  evidence: " + json.dumps(ev, separators=(", ", ": ")))
    if f.get("fix"):
        print(f"  fix: {f['fix']}")
if not active:
    sys.exit("scripts/demo: the extension raised no finding (expected cross_region)")
