// A minimal Lambda runtime in Node.js (Runtime API over node:http, no dependencies) whose
// handler makes the outbound calls an event lists with Node's own clients, as a function on
// the nodejs20.x / nodejs22.x / nodejs24.x runtimes would. Started through the egress-warden
// exec wrapper, so the clients see HTTP_PROXY / HTTPS_PROXY / NO_PROXY / NODE_USE_ENV_PROXY
// exactly as in Lambda. HTTPS origins are trusted through NODE_EXTRA_CA_CERTS.
//
// Event: {"calls": [{"client": CLIENT, "url": "..."}, ...]}; CLIENT is one of
//   fetch, http, https   the built-in fetch, node:http / node:https with the global agent
//   agent                node:http with an http.Agent of its own (as most SDKs make)
//   agent-proxyenv       the same, given `proxyEnv: process.env` (Node.js 22.21+ / 24.5+)
// Answer: {"node": "v22.21.0", "results": [{"status": N, "via": "...", "body": "..."} | {"error": "..."}]}
'use strict';
const http = require('node:http');
const https = require('node:https');

const api = process.env.AWS_LAMBDA_RUNTIME_API;
// Its own agent: the Runtime API is never a proxied call, whatever the environment says.
const runtimeAgent = new http.Agent({ keepAlive: false });

function runtime(method, path, body) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      `http://${api}/2018-06-01/runtime${path}`,
      { method, agent: runtimeAgent },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ res, body: Buffer.concat(chunks).toString() }));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

// node:http / node:https; the global agent (the one NODE_USE_ENV_PROXY configures) unless
// `agent` is given.
function get(module, url, agent) {
  return new Promise((resolve) => {
    const options = agent ? { timeout: 10000, agent } : { timeout: 10000 };
    const req = module.get(url, options, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (e) => resolve({ error: `${e.code || ''} ${e.message}`.trim() }));
  });
}

async function oneCall(call) {
  switch (call.client) {
    case 'fetch':
      try {
        const r = await fetch(call.url, { signal: AbortSignal.timeout(10000) });
        return { status: r.status, body: await r.text() };
      } catch (e) {
        return { error: `${e.message} ${e.cause ? e.cause.message : ''}`.trim() };
      }
    case 'http':
      return get(http, call.url);
    case 'https':
      return get(https, call.url);
    case 'agent':
      return get(http, call.url, new http.Agent());
    case 'agent-proxyenv':
      return get(http, call.url, new http.Agent({ proxyEnv: process.env }));
    default:
      return { error: `unknown client ${call.client}` };
  }
}

async function main() {
  for (;;) {
    const next = await runtime('GET', '/invocation/next');
    const id = next.res.headers['lambda-runtime-aws-request-id'];
    const event = JSON.parse(next.body || '{}');
    const results = [];
    for (const call of event.calls || []) {
      const r = await oneCall(call);
      if (r.body) {
        // upstream.py answers JSON carrying the Via header it saw.
        try {
          r.via = JSON.parse(r.body).via;
        } catch (_) {
          // not JSON: keep the body as it is
        }
      }
      results.push(r);
    }
    const answer = JSON.stringify({ node: process.version, results });
    await runtime('POST', `/invocation/${id}/response`, answer);
  }
}

main().catch((e) => {
  console.error(`runtime.js: ${e.stack || e}`);
  process.exit(1);
});
