//! The egress proxy end to end: the REAL egress-warden binary under the local Lambda
//! emulator, a Python function runtime started through the real exec wrapper (so `requests`
//! and `boto3` find the proxy through HTTP_PROXY / HTTPS_PROXY / NO_PROXY as in Lambda), real
//! TLS upstreams and moto's CloudWatch server on loopback, curl and raw sockets.
//!
//! Loopback is denied by default, so the extension runs with `EGRESS_WARDEN_ALLOW=127.0.0.0/8`;
//! upstreams listen on 127.0.0.2 because the wrapper's NO_PROXY keeps 127.0.0.1 direct.
//! Needs: python3 with requests, boto3 and moto[server]; curl; openssl.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use warden_tests::dnsmasq::Dnsmasq;
use warden_tests::emulator::{Emulator, EmulatorConfig, Runtime, ShutdownReason};
use warden_tests::moto::MotoServer;
use warden_tests::one_at_a_time;
use warden_tests::process::KillOnDrop;
use warden_tests::python::{make_certs, proxy_dir, python3 as python, upstream};
use warden_tests::warden::{
    emf_function_total, free_port, shut_down_cleanly, started_through_init, workspace_root,
    ExtensionsDir, EXTENSION_NAME,
};

const LIMIT: Duration = Duration::from_secs(120);

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    one_at_a_time(LIMIT, f).await
}

/// Sends raw bytes to the proxy and returns (status, X-Egress-Warden-Error, body).
fn raw(port: u16, request: &[u8]) -> (u16, Option<String>, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect proxy");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(request).expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    // Read the head, then the Content-Length body; a reply that ends the connection (the
    // parser's 400/431) is read to EOF, as a client would, which also means the proxy is done
    // with it (it counts the request before closing).
    loop {
        let n = s.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let until_eof = head.contains("connection: close")
                || head.starts_with("http/1.1 400")
                || head.starts_with("http/1.1 431");
            if buf.len() >= end + 4 + len && !until_eof {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let error = head.lines().find_map(|l| {
        l.to_lowercase()
            .strip_prefix("x-egress-warden-error:")
            .map(|v| v.trim().to_string())
    });
    (status, error, body.to_string())
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl").args(args).output().expect("curl");
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn base_config(d: &ExtensionsDir, proxy: u16) -> EmulatorConfig {
    d.proxy_config(proxy).timeout(Duration::from_secs(60))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_requests_and_boto3_through_the_wrapper_are_proxied_and_every_request_counted() {
    bounded(async {
        let certs = tempfile::tempdir().expect("tmp");
        make_certs(certs.path());
        let ca = certs.path().join("ca.pem").display().to_string();
        let (_tls, tls_port) = upstream("tls", Some(certs.path()));
        let (_plain, plain_port) = upstream("plain", None);
        let (_fallback, fallback_port) = upstream("fallback", Some(certs.path()));
        let moto = MotoServer::start_on(Ipv4Addr::new(127, 0, 0, 2));
        let dead_port = free_port();

        let d = ExtensionsDir::with_warden();
        let proxy = free_port();
        let routes = format!(
            "api=https://127.0.0.2:{tls_port}/v1,svc=https://127.0.0.2:{dead_port}|https://127.0.0.2:{fallback_port}/fb"
        );
        let cfg = base_config(&d, proxy)
            .env("EGRESS_WARDEN_ROUTES", routes)
            .env("EGRESS_WARDEN_CA_BUNDLE", &ca)
            .env("EGRESS_WARDEN_POLICY", "enforce")
            .env("EGRESS_WARDEN_DENY", "127.0.0.3/32")
            .env(
                "AWS_LAMBDA_EXEC_WRAPPER",
                workspace_root().join("layer/egress-warden-wrapper").display().to_string(),
            )
            .runtime(Runtime::Command {
                program: PathBuf::from(python()),
                args: vec![proxy_dir().join("runtime.py").display().to_string()],
            });
        let mut emu = started_through_init(cfg).await;

        let route = |path: &str| format!("http://127.0.0.1:{proxy}/{path}");
        let https = format!("https://127.0.0.2:{tls_port}");
        let invokes: Vec<Value> = vec![
            // CONNECT tunnels (requests + HTTPS_PROXY), forward (HTTP_PROXY), boto3 to moto.
            json!({"calls": [
                {"kind": "requests", "url": format!("{https}/a"), "verify": ca},
                {"kind": "requests", "url": format!("{https}/b"), "verify": ca},
                {"kind": "requests", "url": format!("http://127.0.0.2:{plain_port}/c")},
                {"kind": "boto3", "op": "put_metric_data", "endpoint": moto.endpoint()},
                {"kind": "boto3", "op": "list_metrics", "endpoint": moto.endpoint()},
            ]}),
            // Route mode against an upstream failing its first attempts.
            json!({"calls": [
                {"kind": "requests", "url": route("api/fail/2/get")},
                {"kind": "requests", "method": "POST", "url": route("api/fail/2/post"), "data": "x"},
                {"kind": "requests", "method": "POST", "url": route("api/fail/2/keyed"), "data": "x",
                 "headers": {"Idempotency-Key": "k-1"}},
            ]}),
            // Breaker and fallback; a destination the DENY list refuses (enforce mode).
            json!({"calls": [
                {"kind": "requests", "url": route("svc/one")},
                {"kind": "requests", "url": route("svc/two")},
                {"kind": "requests", "url": route("svc/three")},
                {"kind": "requests", "url": format!("http://127.0.0.3:{plain_port}/denied")},
            ]}),
        ];
        let mut answers = Vec::new();
        let mut made = 0.0;
        for (k, event) in invokes.iter().enumerate() {
            let out = emu.invoke_json(event).await.expect("invoke");
            assert!(out.is_success(), "invoke {k}: {:?}", out.result);
            answers.push(out.response_json().expect("json answer"));
            // The requests of invoke k are flushed when invoke k+1 arrives.
            if k > 0 {
                let expected = made;
                let seen = emu
                    .wait_for_line(EXTENSION_NAME, Duration::from_secs(5), |_| {
                        emf_function_total(&emu, "requests") >= expected
                    })
                    .await;
                assert!(seen.is_some(), "EMF after invoke {k} counts {expected} requests");
                assert_eq!(emf_function_total(&emu, "requests"), expected, "EMF counts exactly the requests made");
            }
            made += event["calls"].as_array().map_or(0, |c| c.len()) as f64;
        }

        let results = |k: usize| answers[k]["results"].as_array().cloned().unwrap_or_default();
        let proxies = &answers[0]["proxies"];
        assert_eq!(proxies["HTTPS_PROXY"], json!(format!("http://127.0.0.1:{proxy}")));
        for (i, r) in results(0).iter().enumerate() {
            assert_eq!(r["status"], 200, "invoke 0 call {i}: {r}");
        }
        let first = results(0);
        assert!(first[2]["body"].as_str().unwrap_or("").contains("egress-warden"), "Via added: {}", first[2]);
        let routed = results(1);
        assert_eq!(routed[0]["status"], 200, "GET retried: {}", routed[0]);
        assert_eq!(routed[1]["status"], 503, "POST without Idempotency-Key not retried: {}\n{}", routed[1], emu.stderr_lines(EXTENSION_NAME).join("\n"));
        assert_eq!(routed[2]["status"], 200, "POST with Idempotency-Key retried: {}", routed[2]);
        let breaker = results(2);
        assert_eq!(breaker[0]["status"], 502, "{}", breaker[0]);
        assert_eq!(breaker[1]["status"], 200, "fallback after the breaker opened: {}", breaker[1]);
        assert!(breaker[1]["body"].as_str().unwrap_or("").contains("fallback"));
        assert_eq!(breaker[2]["status"], 200);
        assert_eq!(breaker[3]["status"], 403);
        assert_eq!(breaker[3]["error_header"], "deny_rule");

        shut_down_cleanly(&mut emu).await;
        assert_eq!(emf_function_total(&emu, "requests"), made, "every request is in the EMF by SHUTDOWN");
        assert_eq!(emf_function_total(&emu, "policy_denied"), 1.0);
        // GET and keyed POST: 2 each; svc/one: 2 refused connects; svc/two: 2 before the fallback.
        assert_eq!(emf_function_total(&emu, "retry_count"), 8.0);
        assert!(emf_function_total(&emu, "fallback_hits") >= 2.0);
        assert_eq!(emf_function_total(&emu, "circuit_open"), 1.0);
        let log = emu.stderr_lines(EXTENSION_NAME).join("\n");
        assert!(log.contains("forward denied 127.0.0.3"), "decision lines:\n{log}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_raw_clients_policy_and_limits_against_the_real_binary() {
    bounded(async {
        let certs = tempfile::tempdir().expect("tmp");
        make_certs(certs.path());
        let ca = certs.path().join("ca.pem").display().to_string();
        let (_tls, tls_port) = upstream("tls", Some(certs.path()));
        let (_plain, plain_port) = upstream("plain", None);
        let d = ExtensionsDir::with_warden();
        let proxy = free_port();
        let dns = free_port();
        let cfg = base_config(&d, proxy)
            .env("EGRESS_WARDEN_DNS_PORT", dns.to_string())
            .env("EGRESS_WARDEN_POLICY", "enforce")
            .env("EGRESS_WARDEN_DENY", "blocked.example,127.0.0.3/32");
        let mut emu = Emulator::start(cfg).await.expect("emulator");
        emu.wait_init().await.expect("init");
        let proxy_url = format!("http://127.0.0.1:{proxy}");
        let mut made = 0.0;

        // curl -x through a CONNECT tunnel, and absolute-form forwarding.
        let (out, err) = curl(&[
            "-sS",
            "--max-time",
            "10",
            "-x",
            &proxy_url,
            "--cacert",
            &ca,
            &format!("https://127.0.0.2:{tls_port}/curl-tls"),
        ]);
        assert!(out.contains("\"path\": \"/curl-tls\""), "{out} {err}");
        let (out, err) = curl(&[
            "-sS",
            "--max-time",
            "10",
            "-x",
            &proxy_url,
            &format!("http://127.0.0.2:{plain_port}/curl-plain"),
        ]);
        assert!(
            out.contains("/curl-plain") && out.contains("egress-warden"),
            "{out} {err}"
        );
        made += 2.0;

        // Denials: user rules in enforce mode (case and trailing-dot spellings), the proxy's
        // own listeners (loop), metadata.
        let cases: Vec<(String, &str)> = vec![
            ("BLOCKED.example.:443".into(), "deny_rule"),
            ("blocked.example:443".into(), "deny_rule"),
            (format!("127.0.0.3:{plain_port}"), "deny_rule"),
            (format!("127.0.0.1:{proxy}"), "loop"),
            (format!("localhost:{proxy}"), "loop"),
            (format!("[::ffff:127.0.0.1]:{proxy}"), "loop"),
            (format!("127.0.0.1:{dns}"), "loop"),
            ("169.254.169.254:80".into(), "link_local"),
            ("[fd00:ec2::254]:80".into(), "metadata"),
        ];
        for (target, reason) in &cases {
            let (status, error, _) = raw(
                proxy,
                format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes(),
            );
            assert_eq!((status, error.as_deref()), (403, Some(*reason)), "{target}");
        }
        made += cases.len() as f64;

        // Malformed and oversized requests get 400 / 431; the proxy keeps serving.
        assert_eq!(raw(proxy, b"NOT HTTP AT ALL\r\n\r\n").0, 400);
        let big = format!(
            "GET http://127.0.0.2:{plain_port}/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(70_000)
        );
        assert_eq!(raw(proxy, big.as_bytes()).0, 431);
        made += 2.0;
        let (status, _, body) = raw(
            proxy,
            b"GET /_warden/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status, 200);
        let doc: Value = serde_json::from_str(&body).expect("status JSON");
        assert_eq!(doc["findings"], json!([]));
        assert_eq!(doc["proxy"]["policy"]["mode"], "enforce");
        assert!(doc["pools"].is_array() && doc["dns"].is_object() && doc["breakers"].is_array());

        // Everything above is in EMF once the extension has flushed (INVOKE, then SHUTDOWN):
        // counts equal, nothing lost. (The per-invoke accounting is asserted by the test
        // above; here a rejected request's count can land one flush later.)
        assert!(emu.invoke("{}").await.expect("invoke").is_success());
        shut_down_cleanly(&mut emu).await;
        assert_eq!(
            emf_function_total(&emu, "requests"),
            made,
            "EMF counts every request"
        );
        assert_eq!(
            emf_function_total(&emu, "policy_denied"),
            cases.len() as f64
        );
    })
    .await
}

/// dnsmasq answering `denied.test` and `allowed.test` with 127.0.0.2 (where the upstreams
/// listen), so a DENY rule can name a host as users write them.
fn dnsmasq() -> Dnsmasq {
    Dnsmasq::start(&[
        "--host-record=denied.test,127.0.0.2".to_owned(),
        "--host-record=allowed.test,127.0.0.2".to_owned(),
    ])
    .expect("dnsmasq")
}

/// The extension with `EGRESS_WARDEN_DENY=denied.test` under `policy`, resolving through
/// dnsmasq; returns it with the proxy's and the plain upstream's ports, and what must outlive it.
async fn denied_host_under(
    policy: &str,
) -> (
    Emulator,
    u16,
    u16,
    (Vec<KillOnDrop>, Dnsmasq, ExtensionsDir),
) {
    let (plain, plain_port) = upstream("plain", None);
    let dns = dnsmasq();
    let dns_port = dns.port;
    let d = ExtensionsDir::with_warden();
    let proxy = free_port();
    let cfg = base_config(&d, proxy)
        .env(
            "EGRESS_WARDEN_DNS_UPSTREAMS",
            format!("127.0.0.1:{dns_port}"),
        )
        .env("EGRESS_WARDEN_POLICY", policy)
        .env("EGRESS_WARDEN_DENY", "denied.test");
    let emu = started_through_init(cfg).await;
    (emu, proxy, plain_port, (vec![plain], dns, d))
}

/// After the next INVOKE the EMF holds exactly `requests` requests, `denied` of them in
/// `policy_denied`.
async fn assert_flushed_on_invoke(emu: &mut Emulator, requests: f64, denied: f64) {
    assert!(emu.invoke("{}").await.expect("invoke").is_success());
    let seen = emu
        .wait_for_line(EXTENSION_NAME, Duration::from_secs(5), |_| {
            emf_function_total(emu, "requests") >= requests
        })
        .await;
    assert!(
        seen.is_some(),
        "EMF after the INVOKE counts {requests} requests"
    );
    assert_eq!(emf_function_total(emu, "requests"), requests);
    assert_eq!(emf_function_total(emu, "policy_denied"), denied);
}

/// The proxy's decision line for one request (`<kind> <decision> <host:port>`, `connect` for a
/// CONNECT tunnel). The line is written before the answer goes out, but reaches the emulator
/// through a pipe, so it may arrive after the client has its answer: waited for, briefly.
async fn decision_line(emu: &Emulator, prefix: &str) -> String {
    let found = emu
        .wait_for_line(EXTENSION_NAME, Duration::from_secs(5), |l| {
            l.text.contains(prefix)
        })
        .await;
    match found {
        Some(line) => line.text,
        None => panic!(
            "no {prefix:?} line in:\n{}",
            emu.stderr_lines(EXTENSION_NAME).join("\n")
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_mode_lets_a_denied_host_through_logs_and_counts_it() {
    bounded(async {
        let (mut emu, proxy, port, _helpers) = denied_host_under("observe").await;
        let proxy_url = format!("http://127.0.0.1:{proxy}");
        let fetch = |tunnel: bool, url: &str| {
            let mut args = vec!["-sS", "--max-time", "10", "-x", &proxy_url, url];
            if tunnel {
                // CONNECT even for http:// (curl's --proxytunnel).
                args.insert(0, "-p");
            }
            curl(&args)
        };
        let (out, err) = fetch(true, &format!("http://denied.test:{port}/through-tunnel"));
        assert!(out.contains("\"path\": \"/through-tunnel\""), "{out} {err}");
        // A tunnel carries the client's request untouched (no Via), forwarding adds it.
        assert!(!out.contains("egress-warden"), "{out}");
        let (out, err) = fetch(false, &format!("http://denied.test:{port}/forwarded"));
        assert!(
            out.contains("/forwarded") && out.contains("egress-warden"),
            "{out} {err}"
        );
        let (out, err) = fetch(false, &format!("http://allowed.test:{port}/allowed"));
        assert!(out.contains("/allowed"), "{out} {err}");

        let tunnel = decision_line(&emu, &format!("connect observed denied.test:{port}")).await;
        assert!(
            tunnel.contains(r#"reason="deny_rule""#) && tunnel.contains("status=200"),
            "{tunnel}"
        );
        let forward = decision_line(&emu, &format!("forward observed denied.test:{port}")).await;
        assert!(
            forward.contains(r#"reason="deny_rule""#) && forward.contains("status=200"),
            "{forward}"
        );
        let allowed = decision_line(&emu, &format!("forward allowed allowed.test:{port}")).await;
        assert!(
            !allowed.contains("reason=") && allowed.contains("status=200"),
            "{allowed}"
        );

        assert_flushed_on_invoke(&mut emu, 3.0, 2.0).await;
        shut_down_cleanly(&mut emu).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_mode_refuses_a_denied_host_with_403_and_the_rule() {
    bounded(async {
        let (mut emu, proxy, port, _helpers) = denied_host_under("enforce").await;
        let target = format!("denied.test:{port}");
        let (status, error, _) = raw(
            proxy,
            format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes(),
        );
        assert_eq!(
            (status, error.as_deref()),
            (403, Some("deny_rule")),
            "CONNECT"
        );
        let (status, error, _) = raw(
            proxy,
            format!("GET http://{target}/forwarded HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes(),
        );
        assert_eq!(
            (status, error.as_deref()),
            (403, Some("deny_rule")),
            "forward"
        );
        let allowed = format!("allowed.test:{port}");
        let (status, error, body) = raw(
            proxy,
            format!("GET http://{allowed}/allowed HTTP/1.1\r\nHost: {allowed}\r\n\r\n").as_bytes(),
        );
        assert_eq!((status, error), (200, None), "{body}");

        let tunnel = decision_line(&emu, &format!("connect denied {target}")).await;
        assert!(
            tunnel.contains(r#"reason="deny_rule""#) && tunnel.contains("status=403"),
            "{tunnel}"
        );
        let forward = decision_line(&emu, &format!("forward denied {target}")).await;
        assert!(
            forward.contains(r#"reason="deny_rule""#) && forward.contains("status=403"),
            "{forward}"
        );

        assert_flushed_on_invoke(&mut emu, 3.0, 2.0).await;
        shut_down_cleanly(&mut emu).await;
    })
    .await
}

/// How the extension is stopped after a burst of requests.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// Lambda's SHUTDOWN event.
    Shutdown,
    /// SIGTERM straight to the extension's process.
    Sigterm,
}

/// Ends the extension as `stop` says; it must exit by itself with code 0.
async fn stop_extension(emu: &mut Emulator, stop: Stop) {
    match stop {
        Stop::Shutdown => {
            shut_down_cleanly(emu).await;
        }
        Stop::Sigterm => {
            let pid = emu.pid(EXTENSION_NAME).expect("pid") as libc::pid_t;
            // SAFETY: kill(2) on the extension's own pid, a child of this test.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
            let exit = emu
                .wait_exit(EXTENSION_NAME, Duration::from_secs(10))
                .await
                .expect("exits on SIGTERM");
            assert_eq!(exit.code, Some(0), "{exit:?}");
        }
    }
}

/// Nothing logged is lost at the end: a burst of proxied requests, then the end of the
/// process right after the last answer, and every decision line is on stderr, whole, before
/// the line that says the extension is exiting (the last one it writes).
async fn every_decision_line_of_a_burst_is_on_stderr_at(stop: Stop) {
    const CLIENTS: usize = 4;
    const EACH: usize = 120;
    let (_plain, port) = upstream("plain", None);
    let d = ExtensionsDir::with_warden();
    let proxy = free_port();
    let mut emu = Emulator::start(base_config(&d, proxy))
        .await
        .expect("emulator");
    emu.wait_init().await.expect("init");
    let proxy_url = format!("http://127.0.0.1:{proxy}");
    // Each curl fetches its URLs one after the other on one kept-alive connection.
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let url = format!("http://127.0.0.2:{port}/burst/{c}/[1-{EACH}]");
            let proxy_url = proxy_url.clone();
            std::thread::spawn(move || curl(&["-sS", "--max-time", "60", "-x", &proxy_url, &url]))
        })
        .collect();
    for client in clients {
        let (out, err) = client.join().expect("curl thread");
        let head: String = out.chars().take(400).collect();
        assert_eq!(
            out.matches("\"path\": \"/burst/").count(),
            EACH,
            "stderr: {err}\nstdout starts: {head}"
        );
    }

    // Every answer is out, so every decision line has been logged: stop at once.
    stop_extension(&mut emu, stop).await;
    let last = match stop {
        Stop::Shutdown => "SHUTDOWN: flushing and exiting",
        Stop::Sigterm => "SIGTERM: flushing and exiting",
    };
    // The pipe reader may still be catching up with what the process wrote before it went.
    let seen = emu
        .wait_for_line(EXTENSION_NAME, Duration::from_secs(10), |l| {
            l.text.contains(last)
        })
        .await;
    let lines = emu.stderr_lines(EXTENSION_NAME);
    assert!(seen.is_some(), "{stop:?}: no {last:?} line");
    let decision = format!("forward allowed 127.0.0.2:{port}");
    let decisions = lines.iter().filter(|l| l.contains(&decision)).count();
    assert_eq!(decisions, CLIENTS * EACH, "{stop:?}: decision lines");
    let exiting = lines.iter().position(|l| l.contains(last));
    let last_decision = lines.iter().rposition(|l| l.contains(&decision));
    assert!(
        exiting > last_decision,
        "{stop:?}: {last:?} comes after every decision line: {exiting:?}, {last_decision:?}"
    );
    // Whole lines only: none was cut or run into another.
    for line in lines.iter().filter(|l| l.contains(&decision)) {
        assert!(
            line.matches(" INFO ").count() == 1 && line.matches(&decision).count() == 1,
            "{stop:?}: not one whole line: {line}"
        );
    }
    if let Stop::Sigterm = stop {
        emu.shutdown(ShutdownReason::Spindown).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_line_is_on_stderr_when_shutdown_ends_a_burst() {
    bounded(every_decision_line_of_a_burst_is_on_stderr_at(
        Stop::Shutdown,
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_line_is_on_stderr_when_sigterm_ends_a_burst() {
    bounded(every_decision_line_of_a_burst_is_on_stderr_at(
        Stop::Sigterm,
    ))
    .await
}

/// One answer read off a kept-alive connection: its status and whether the proxy closes the
/// connection after it. None when the connection ended instead.
fn read_answer(reader: &mut std::io::BufReader<TcpStream>) -> Option<(u16, bool)> {
    use std::io::BufRead;
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let status = line.split(' ').nth(1)?.parse().ok()?;
    let (mut length, mut close) = (0usize, false);
    loop {
        line.clear();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let header = line.trim_end().to_ascii_lowercase();
        if header.is_empty() {
            break;
        }
        if let Some(v) = header.strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
        close |= header == "connection: close";
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some((status, close))
}

/// Nothing answered is missing: 16 clients send requests back to back on kept-alive
/// connections, the end comes in the middle, and every answer any client got is in the
/// function-level `requests` total (and nothing more): the proxy drains before the final flush.
async fn every_answer_is_counted_when_the_end_comes_mid_burst(stop: Stop) {
    const CLIENTS: usize = 16;
    let (_plain, port) = upstream("plain", None);
    let d = ExtensionsDir::with_warden();
    let proxy = free_port();
    let mut emu = started_through_init(base_config(&d, proxy)).await;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            std::thread::spawn(move || {
                let (mut answered, mut closed_by_proxy) = (0usize, false);
                let Ok(stream) = TcpStream::connect(("127.0.0.1", proxy)) else {
                    return (answered, closed_by_proxy);
                };
                stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
                let mut writer = stream.try_clone().expect("clone");
                let mut reader = std::io::BufReader::new(stream);
                let started = Instant::now();
                for i in 0..100_000 {
                    let req = format!(
                        "GET http://127.0.0.2:{port}/drain/{c}/{i} HTTP/1.1\r\nHost: x\r\n\r\n"
                    );
                    if writer.write_all(req.as_bytes()).is_err() {
                        break;
                    }
                    match read_answer(&mut reader) {
                        Some((_, close)) => {
                            answered += 1;
                            if close {
                                closed_by_proxy = true;
                                break;
                            }
                        }
                        None => break,
                    }
                    if started.elapsed() > Duration::from_secs(20) {
                        break;
                    }
                }
                (answered, closed_by_proxy)
            })
        })
        .collect();
    // Mid-burst.
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop_extension(&mut emu, stop).await;
    let (mut answered, mut drained) = (0, 0);
    for client in clients {
        let (n, closed_by_proxy) = client.join().expect("client thread");
        assert!(n > 0, "{stop:?}: every client got answers");
        answered += n;
        drained += usize::from(closed_by_proxy);
    }
    // The pipe reader may still be catching up with the last EMF lines.
    let counted = || emf_function_total(&emu, "requests");
    let _ = emu
        .wait_for_line(EXTENSION_NAME, Duration::from_secs(5), |_| {
            counted() >= answered as f64
        })
        .await;
    assert_eq!(
        counted(),
        answered as f64,
        "{stop:?}: every answer counted, nothing else\n{}",
        emu.stderr_lines(EXTENSION_NAME).join("\n")
    );
    // Answers whose head went out before the drain began end with the connection instead of
    // a `Connection: close` header (the proxy's unit tests check the header).
    eprintln!("{stop:?}: {answered} answered, {drained} of {CLIENTS} told Connection: close");
    if let Stop::Sigterm = stop {
        emu.shutdown(ShutdownReason::Spindown).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_at_shutdown_are_answered_and_counted() {
    bounded(every_answer_is_counted_when_the_end_comes_mid_burst(
        Stop::Shutdown,
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_at_sigterm_are_answered_and_counted() {
    bounded(every_answer_is_counted_when_the_end_comes_mid_burst(
        Stop::Sigterm,
    ))
    .await
}

/// Relays TCP connections from a port on 127.0.0.2 to `upstream`, counting them: how many
/// connections (so handshakes) the proxy opened.
async fn counting_relay(upstream: u16) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::new(127, 0, 0, 2), 0))
        .await
        .expect("bind relay");
    let port = listener.local_addr().expect("relay addr").port();
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.2", upstream)).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                }
            });
        }
    });
    (port, count)
}

/// What a Python client (urllib3, boto3 underneath) reports for a refused CONNECT: the
/// status line, through `http.client`'s tunnel.
fn python_tunnel_error(proxy: u16, host: &str, port: u16) -> String {
    let script = format!(
        "import http.client\nc = http.client.HTTPConnection('127.0.0.1', {proxy}, timeout=10)\n\
         c.set_tunnel('{host}', {port})\ntry:\n    c.request('GET', '/')\n    print('no error')\n\
         except OSError as e:\n    print(e)\n"
    );
    let out = Command::new(python())
        .args(["-c", &script])
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Each answer of the proxy's own is one WARN line that names its cause and what to change,
/// the client is told the same, and a failure that would recur is not retried: a route to
/// an upstream whose certificate no trusted CA signed (one connection, UnknownIssuer and
/// EGRESS_WARDEN_CA_BUNDLE named), a route to a name that does not exist, a DENY rule, an
/// unknown route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_own_answers_are_warnings_naming_the_cause_and_the_fix() {
    bounded(async {
        let certs = tempfile::tempdir().expect("tmp");
        make_certs(certs.path());
        let (_tls, tls_port) = upstream("tls", Some(certs.path()));
        let (relay, handshakes) = counting_relay(tls_port).await;
        let (_plain, plain_port) = upstream("plain", None);
        let dns = dnsmasq();
        let d = ExtensionsDir::with_warden();
        let proxy = free_port();
        // No EGRESS_WARDEN_CA_BUNDLE: the test CA is unknown. `missing.test` is NXDOMAIN.
        let cfg = base_config(&d, proxy)
            .env("EGRESS_WARDEN_DNS_UPSTREAMS", format!("127.0.0.1:{}", dns.port))
            .env(
                "EGRESS_WARDEN_ROUTES",
                format!("tls=https://127.0.0.2:{relay},nx=https://missing.test"),
            )
            .env("EGRESS_WARDEN_RETRY_MAX", "3")
            .env("EGRESS_WARDEN_POLICY", "enforce")
            .env("EGRESS_WARDEN_DENY", "denied.test")
            .env("EGRESS_WARDEN_LOG_LEVEL", "debug");
        let mut emu = started_through_init(cfg).await;
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let warning = |line: &str| line.contains(" WARN ") && !line.contains(" INFO ");

        // Certificate from an unknown CA: one handshake, 502, the cause and the fix.
        let (status, error, body) = raw(proxy, get("/tls/x").as_bytes());
        assert_eq!((status, error.as_deref()), (502, Some("tls_error")), "{body}");
        assert!(body.contains("UnknownIssuer") && body.contains("EGRESS_WARDEN_CA_BUNDLE"), "{body}\n{}", emu.stderr_lines(EXTENSION_NAME).join("\n"));
        let line = decision_line(&emu, &format!("route failed 127.0.0.2:{relay}: TLS with 127.0.0.2:{relay} failed: invalid peer certificate: UnknownIssuer; set EGRESS_WARDEN_CA_BUNDLE to the CA that signed it")).await;
        assert!(warning(&line) && line.contains("retries=0") && line.contains(r#"decision="failed""#), "{line}");
        assert_eq!(handshakes.load(std::sync::atomic::Ordering::SeqCst), 1, "not retried");

        // A name that does not exist: 502, not retried.
        let (status, error, body) = raw(proxy, get("/nx/x").as_bytes());
        assert_eq!((status, error.as_deref()), (502, Some("dns_failure")), "{body}");
        let line = decision_line(&emu, "route failed missing.test:443: DNS look-up failed: missing.test does not exist (NXDOMAIN); check the host name").await;
        assert!(warning(&line) && line.contains("retries=0"), "{line}");

        // A DENY rule: the client sees the rule, even one that shows only the status line.
        let target = format!("denied.test:{plain_port}");
        let (status, error, body) = raw(
            proxy,
            format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes(),
        );
        assert_eq!((status, error.as_deref()), (403, Some("deny_rule")), "{body}");
        assert!(body.contains("matches `denied.test` in EGRESS_WARDEN_DENY"), "{body}");
        let shown = python_tunnel_error(proxy, "denied.test", plain_port);
        assert_eq!(shown, "Tunnel connection failed: 403 Forbidden (egress-warden: deny_rule)");
        let line = decision_line(&emu, &format!("connect denied {target}: denied by policy: {target} matches `denied.test` in EGRESS_WARDEN_DENY; to allow it remove `denied.test` from EGRESS_WARDEN_DENY")).await;
        assert!(warning(&line) && line.contains(r#"reason="deny_rule""#), "{line}");

        // An unknown route: 404, named with the known ones.
        let (status, error, body) = raw(proxy, get("/nope/x").as_bytes());
        assert_eq!((status, error.as_deref()), (404, Some("unknown_route")), "{body}");
        let line = decision_line(&emu, r#"route refused -: unknown route "nope"; known: tls, nx; set EGRESS_WARDEN_ROUTES"#).await;
        assert!(warning(&line) && !line.contains("allowed"), "{line}");

        shut_down_cleanly(&mut emu).await;
        for line in emu.stderr_lines(EXTENSION_NAME).iter().filter(|l| l.contains(" WARN ")) {
            eprintln!("{line}");
        }
        // One event, one line: at debug level too, every line starts as an event does.
        for line in emu.stderr_lines(EXTENSION_NAME) {
            let event = line.starts_with('{') || line.get(..2).is_some_and(|c| c == "20");
            assert!(event, "a line that is not an event of its own: {line:?}");
        }
        drop(dns);
    })
    .await
}
