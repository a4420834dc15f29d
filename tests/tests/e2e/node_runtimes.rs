//! Real Node.js of each Lambda Node runtime (20.19, 22.21, 24.11; `scripts/setup` installs
//! them) behind the exec wrapper, with the real extension under the emulator: which of Node's
//! own clients (`fetch`, `node:http`, `node:https`, an `http.Agent` of the caller's own, with
//! and without `proxyEnv`) go through the proxy, which go direct, what
//! the wrapper says, and that route mode works from every version. The README's runtime table
//! states what these tests show.
//!
//! Each call has an origin of its own on 127.0.0.2 (the wrapper's NO_PROXY keeps 127.0.0.1
//! direct); a call went through the proxy when the extension's EMF counts a request to its
//! origin. Node's `fetch` tunnels even plain HTTP through CONNECT; `node:http` sends an
//! absolute-form request, which the origin sees with the proxy's `Via`.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use warden_tests::emf::EmfValidator;
use warden_tests::emulator::{Runtime, RUNTIME_NAME};
use warden_tests::node::{node_binary, node_runtime_script, LAMBDA_NODE_VERSIONS};
use warden_tests::prerequisite;
use warden_tests::python::{make_certs, upstream};
use warden_tests::warden::{
    free_port, shut_down_cleanly, started_through_init, wrapper_script, ExtensionsDir,
    EXTENSION_NAME,
};

const LIMIT: Duration = Duration::from_secs(120);

/// What one Node version did: each call's answer, the extension's per-origin request counts
/// and the wrapper's lines.
struct Run {
    answer: Value,
    proxied_requests: Vec<(u16, f64)>,
    wrapper_lines: Vec<String>,
}

impl Run {
    fn result(&self, i: usize) -> &Value {
        &self.answer["results"][i]
    }

    fn counted(&self, port: u16) -> f64 {
        self.proxied_requests
            .iter()
            .filter(|(p, _)| *p == port)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Runs `runtime.js` on Node `version` behind the wrapper (AWS_EXECUTION_ENV of `lambda`)
/// and invokes it once with the calls: fetch and node:http to plain origins, node:https and
/// fetch to TLS origins, fetch to a route of the proxy, node:http with its own agents. Returns
/// the origins' ports (all but the route's) in that order.
async fn run(lambda: &str, version: &str, node: &Path) -> (Run, [u16; 6]) {
    let certs = tempfile::tempdir().expect("tmp");
    make_certs(certs.path());
    let ca = certs.path().join("ca.pem").display().to_string();
    let (_plain_fetch, plain_fetch) = upstream("plain-fetch", None);
    let (_plain_http, plain_http) = upstream("plain-http", None);
    let (_tls_https, tls_https) = upstream("tls-https", Some(certs.path()));
    let (_tls_fetch, tls_fetch) = upstream("tls-fetch", Some(certs.path()));
    let (_own_agent, own_agent) = upstream("own-agent", None);
    let (_proxy_env, proxy_env) = upstream("proxy-env", None);
    let (_routed, routed) = upstream("routed", Some(certs.path()));

    let d = ExtensionsDir::with_warden();
    let proxy = free_port();
    let cfg = d
        .proxy_config(proxy)
        .timeout(Duration::from_secs(60))
        .env("AWS_EXECUTION_ENV", format!("AWS_Lambda_{lambda}"))
        .env(
            "AWS_LAMBDA_EXEC_WRAPPER",
            wrapper_script().display().to_string(),
        )
        .env("NODE_EXTRA_CA_CERTS", &ca)
        .env(
            "EGRESS_WARDEN_ROUTES",
            format!("api=https://127.0.0.2:{routed}"),
        )
        .env("EGRESS_WARDEN_CA_BUNDLE", &ca)
        .runtime(Runtime::Command {
            program: node.to_path_buf(),
            args: vec![node_runtime_script().display().to_string()],
        });
    let mut emu = started_through_init(cfg).await;
    let calls = json!({ "calls": [
        { "client": "fetch", "url": format!("http://127.0.0.2:{plain_fetch}/fetch") },
        { "client": "http", "url": format!("http://127.0.0.2:{plain_http}/http") },
        { "client": "https", "url": format!("https://127.0.0.2:{tls_https}/https") },
        { "client": "fetch", "url": format!("https://127.0.0.2:{tls_fetch}/fetch") },
        { "client": "fetch", "url": format!("http://127.0.0.1:{proxy}/api/routed") },
        { "client": "agent", "url": format!("http://127.0.0.2:{own_agent}/agent") },
        { "client": "agent-proxyenv", "url": format!("http://127.0.0.2:{proxy_env}/agent") },
    ]});
    let out = emu.invoke_json(&calls).await.expect("invoke");
    let answer = out.response_json().unwrap_or_else(|| {
        panic!(
            "node {version}: {:?}\nruntime: {:?}",
            out.result,
            emu.output(RUNTIME_NAME)
        )
    });
    assert_eq!(answer["node"], format!("v{version}"), "{answer}");
    shut_down_cleanly(&mut emu).await;

    let v = EmfValidator::new();
    let proxied_requests = emu
        .stdout_lines(EXTENSION_NAME)
        .iter()
        .filter_map(|l| v.validate_line(l).ok())
        .filter_map(|doc| {
            let dest = doc.get("Destination")?.as_str()?.to_string();
            let port = dest.rsplit(':').next()?.parse::<u16>().ok()?;
            Some((port, doc.metric_total("requests")?))
        })
        .collect();
    let wrapper_lines = emu
        .stderr_lines(RUNTIME_NAME)
        .into_iter()
        .filter(|l| l.starts_with("egress-warden-wrapper:"))
        .collect();
    (
        Run {
            answer,
            proxied_requests,
            wrapper_lines,
        },
        [
            plain_fetch,
            plain_http,
            tls_https,
            tls_fetch,
            own_agent,
            proxy_env,
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_clients_behind_the_wrapper_per_lambda_runtime() {
    tokio::time::timeout(LIMIT, async {
        for (lambda, version) in LAMBDA_NODE_VERSIONS {
            let Some(node) = prerequisite(&format!("Node.js {version}"), node_binary(version))
            else {
                return;
            };
            let (run, origins) = run(lambda, version, &node).await;
            let a = &run.answer;
            for i in 0..7 {
                assert_eq!(
                    run.result(i)["status"],
                    200,
                    "node {version}, call {i}: {a}"
                );
            }
            // Route mode needs nothing from the client: it works on every version.
            assert!(
                run.result(4)["body"]
                    .as_str()
                    .is_some_and(|b| b.contains("\"routed\"")),
                "node {version}: route mode reaches the route's upstream: {a}"
            );
            let proxied = !version.starts_with("20.");
            // An agent of the caller's own goes direct everywhere; given `proxyEnv` it follows
            // the variables where Node.js knows the option.
            let expected = [
                ("fetch http://", proxied),
                ("node:http", proxied),
                ("node:https", proxied),
                ("fetch https://", proxied),
                ("own http.Agent", false),
                ("own http.Agent with proxyEnv", proxied),
            ];
            for ((name, through), port) in expected.into_iter().zip(origins) {
                assert_eq!(
                    run.counted(port) >= 1.0,
                    through,
                    "node {version}: {name} through the proxy? counted: {:?}\n{a}",
                    run.proxied_requests
                );
            }
            assert_eq!(
                run.result(1)["via"].is_string(),
                proxied,
                "node {version}: node:http forwarded by the proxy: {a}"
            );
            // Only where the clients go direct does the wrapper say so, naming route mode.
            if proxied {
                assert_eq!(run.wrapper_lines, Vec::<String>::new(), "node {version}");
            } else {
                assert_eq!(run.wrapper_lines.len(), 1, "{:?}", run.wrapper_lines);
                let line = &run.wrapper_lines[0];
                assert!(
                    line.contains("nodejs20.x")
                        && line.contains("ignores HTTP_PROXY")
                        && line.contains("route mode"),
                    "{line}"
                );
            }
        }
    })
    .await
    .expect("the Node runtime tests took too long")
}
