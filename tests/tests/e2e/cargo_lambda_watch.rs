//! An outside check of the Extensions API protocol: the real `egress-warden` binary against
//! `cargo lambda watch` (the cargo-lambda pip package), a Lambda emulator we did not write.
//!
//! What `cargo lambda watch` offers, and so what this test relies on (cargo-lambda 1.9):
//! * `--invoke-address 127.0.0.1 --invoke-port P` serves the invoke API
//!   (`POST /2015-03-31/functions/<name>/invocations`) and, under the base path `/.rt`, the
//!   Runtime and Extensions APIs. Extensions are started by hand with
//!   `AWS_LAMBDA_RUNTIME_API=http://127.0.0.1:P/.rt` (its documented form: a scheme and a base
//!   path, unlike Lambda's bare `127.0.0.1:9001`); `127.0.0.1:P` without `/.rt` answers 404.
//! * It starts the function itself (`cargo run --bin bootstrap` in the workspace, on the first
//!   invoke) and sends INVOKE to every registered extension on each invoke.
//! * On SIGINT it stops the function and sends SHUTDOWN to the extensions, then exits. With
//!   `--only-lambda-apis` it does not send SHUTDOWN, so the function is left to watch here.
//! * It has no Telemetry/Logs API data and no INIT phase ordering: extensions may register at
//!   any time, and an extension that registers after an invoke simply misses that INVOKE.
//!   So the test invokes until the extension's first EMF line shows up.
//!
//! Checked: the extension registers for INVOKE and SHUTDOWN (it receives both; watch does not
//! show the registered name, which the emulator tests check), flushes EMF with `invocations`
//! on INVOKE, proxies the function's request to a local origin and counts it in `requests`,
//! writes only EMF on stdout, and exits cleanly after SHUTDOWN. Network: 127.0.0.1 only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warden_tests::emf::function_total;
use warden_tests::exclusive;
use warden_tests::process::Captured;
use warden_tests::wait::wait_until;
use warden_tests::warden::{free_port, warden_binary, workspace_root};

/// The whole test must finish within this (it includes watch compiling the demo function).
const OVERALL: Duration = Duration::from_secs(420);

/// A local origin server answering `200 pong`; counts requests and keeps their request lines.
struct Origin {
    port: u16,
    hits: Arc<AtomicUsize>,
    request_lines: Arc<Mutex<Vec<String>>>,
}

fn start_origin() -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let request_lines = Arc::new(Mutex::new(Vec::new()));
    let (h, rl) = (hits.clone(), request_lines.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { break };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut first = String::new();
            if reader.read_line(&mut first).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line == "\r\n" || line == "\n" => break,
                    Ok(_) => {}
                }
            }
            rl.lock().unwrap().push(first.trim_end().to_string());
            h.fetch_add(1, Ordering::SeqCst);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\npong",
            );
        }
    });
    Origin {
        port,
        hits,
        request_lines,
    }
}

/// POSTs an invoke to watch; returns (status, body).
fn invoke(
    port: u16,
    function: &str,
    payload: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout)).unwrap();
    let req = format!(
        "POST /2015-03-31/functions/{function}/invocations HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP response: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {head:?}"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[test]
fn extension_works_under_cargo_lambda_watch() {
    // cargo (watch builds and runs the function) is a heavy neighbour for timed tests.
    let _turn = exclusive();
    let started = Instant::now();
    let overall = started + OVERALL;
    let root = workspace_root();
    let ext_bin = warden_binary();
    let version = Command::new("cargo").args(["lambda", "--version"]).output();
    assert!(
        matches!(&version, Ok(o) if o.status.success()),
        "cargo-lambda is not installed (pip install cargo-lambda): {version:?}"
    );

    let port = free_port();
    let proxy_port = free_port();
    let dns_port = free_port();
    let dead_dns = free_port(); // nothing listens here: DNS stays on loopback
    let origin = start_origin();

    // --- cargo lambda watch, serving sam/demo-function's `bootstrap` ---------------------
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root.join("sam/demo-function"))
        .args(["lambda", "watch", "--ignore-changes"])
        .args([
            "--invoke-address",
            "127.0.0.1",
            "--invoke-port",
            &port.to_string(),
        ])
        .args([
            "--env-var",
            &format!("HTTP_PROXY=http://127.0.0.1:{proxy_port}"),
        ]);
    for k in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "NO_PROXY",
        "no_proxy",
        "AWS_LAMBDA_RUNTIME_API",
        "AWS_LAMBDA_EXEC_WRAPPER",
    ] {
        cmd.env_remove(k);
    }
    // What cargo sets for this test process would change build-script fingerprints (ring
    // tracks CARGO_MANIFEST_DIR) and make watch's `cargo run` rebuild needlessly.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k == "CARGO_MANIFEST_DIR"
            || k == "CARGO_MANIFEST_PATH"
            || k == "CARGO_CRATE_NAME"
            || k == "CARGO_PRIMARY_PACKAGE"
            || k == "CARGO_TARGET_TMPDIR"
            || k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_")
        {
            cmd.env_remove(&*k);
        }
    }
    let mut watch = Captured::spawn("cargo lambda watch", cmd, true);
    let up = wait_until(Duration::from_secs(60), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(
        up,
        "cargo lambda watch did not listen on 127.0.0.1:{port}\n{}",
        watch.logs()
    );

    // --- the extension, as Lambda would start it, pointed at watch's APIs -------------------
    let mut cmd = Command::new(&ext_bin);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "AWS_LAMBDA_RUNTIME_API",
            format!("http://127.0.0.1:{port}/.rt"),
        )
        .env("AWS_LAMBDA_FUNCTION_NAME", "bootstrap")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
        .env("EGRESS_WARDEN_PROXY_PORT", proxy_port.to_string())
        .env("EGRESS_WARDEN_DNS_PORT", dns_port.to_string())
        .env(
            "EGRESS_WARDEN_DNS_UPSTREAMS",
            format!("127.0.0.1:{dead_dns}"),
        )
        // lift the built-in loopback denial for the origin server
        .env("EGRESS_WARDEN_ALLOW", "127.0.0.0/8")
        .env("EGRESS_WARDEN_METRICS_SINK", "emf")
        .env("EGRESS_WARDEN_LOG_LEVEL", "debug");
    let mut ext = Captured::spawn("egress-warden", cmd, false);
    let report = |what: &str, watch: &Captured, ext: &Captured| -> String {
        format!("{what}\n{}{}", watch.logs(), ext.logs())
    };

    // --- INVOKE until the extension's first EMF flush with `invocations` shows up ----------
    // (the first invoke also waits for watch to compile and start the function)
    let mut sent = 0u32;
    let mut seen = false;
    while !seen && Instant::now() < overall {
        let left = overall.saturating_duration_since(Instant::now());
        let (status, body) = invoke(port, "bootstrap", "{}", left.min(Duration::from_secs(300)))
            .unwrap_or_else(|e| panic!("{}", report(&format!("invoke failed: {e}"), &watch, &ext)));
        sent += 1;
        assert_eq!(
            status,
            200,
            "{}",
            report(&format!("invoke answered {status}: {body}"), &watch, &ext)
        );
        assert!(
            body.contains("hello from the egress-warden demo"),
            "unexpected response {body}"
        );
        seen = wait_until(Duration::from_secs(5), || {
            function_total(&ext.out.snapshot(), "invocations") >= 1.0
        });
        if let Ok(Some(st)) = ext.child.try_wait() {
            panic!(
                "{}",
                report(&format!("egress-warden exited early: {st}"), &watch, &ext)
            );
        }
        assert!(
            sent < 20,
            "{}",
            report("no EMF `invocations` after 20 invokes", &watch, &ext)
        );
    }
    assert!(
        seen,
        "{}",
        report("timed out waiting for EMF `invocations`", &watch, &ext)
    );

    // --- the function's request goes through the proxy to the origin -----------------------
    let url = format!("http://127.0.0.1:{}/ping", origin.port);
    let (status, body) = invoke(
        port,
        "bootstrap",
        &format!(r#"{{"urls":["{url}"]}}"#),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{}", report(&format!("invoke failed: {e}"), &watch, &ext)));
    sent += 1;
    assert_eq!(status, 200, "{body}");
    let resp: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let r = &resp["results"][0];
    assert_eq!(
        r["via"], "proxy",
        "the function did not use HTTP_PROXY: {body}"
    );
    assert_eq!(
        r["status"],
        200,
        "{}",
        report(
            &format!("request through egress-warden failed: {body}"),
            &watch,
            &ext
        )
    );
    assert_eq!(
        origin.hits.load(Ordering::SeqCst),
        1,
        "origin saw {:?}",
        origin.request_lines
    );
    assert_eq!(
        origin.request_lines.lock().unwrap()[0],
        "GET /ping HTTP/1.1",
        "the proxy must forward in origin-form"
    );

    // One more INVOKE: its flush carries what was measured during the previous invocation.
    // (Up to five: cargo-lambda drops an event that lands while the extension is not in `/next`.)
    let mut flushed = false;
    for _ in 0..5 {
        let (status, _) = invoke(port, "bootstrap", "{}", Duration::from_secs(60)).unwrap();
        sent += 1;
        assert_eq!(status, 200);
        flushed = wait_until(Duration::from_secs(5), || {
            function_total(&ext.out.snapshot(), "requests") >= 1.0
        });
        if flushed {
            break;
        }
    }
    assert!(
        flushed,
        "{}",
        report(
            "EMF `requests` did not count the proxied request",
            &watch,
            &ext
        )
    );

    // --- SHUTDOWN: SIGINT makes watch stop the function and send SHUTDOWN -----------------
    watch.signal("INT");
    let status = ext.wait_exit(Duration::from_secs(15));
    let watch_status = watch.wait_exit(Duration::from_secs(15));
    let Some(status) = status else {
        panic!(
            "{}",
            report(
                "egress-warden did not exit within 15 s of SHUTDOWN",
                &watch,
                &ext
            )
        );
    };
    assert!(
        status.success(),
        "{}",
        report(&format!("egress-warden exited with {status}"), &watch, &ext)
    );
    assert!(
        watch_status.is_some(),
        "cargo lambda watch did not exit on SIGINT"
    );

    let stdout = ext.out.snapshot();
    let invocations = function_total(&stdout, "invocations");
    // Every INVOKE the extension got was counted. cargo-lambda hands an event only to an
    // extension parked in `/next` at that moment (one channel per call, dropped after it),
    // so an invoke landing while the extension flushes never reaches it: compare with the
    // events the extension logged, not with the invokes sent.
    let received = ext
        .err
        .snapshot()
        .iter()
        .filter(|l| l.contains(" INVOKE request_id="))
        .count() as f64;
    assert!(
        invocations == received && invocations >= 2.0 && invocations <= f64::from(sent),
        "{}",
        report(
            &format!(
                "EMF invocations = {invocations}, INVOKE events logged = {received}, invokes sent = {sent}"
            ),
            &watch,
            &ext
        )
    );
    // stdout carries only EMF: logs go to stderr.
    for line in &stdout {
        let d: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|_| panic!("non-JSON line on the extension's stdout: {line:?}"));
        assert!(d.get("_aws").is_some(), "non-EMF line on stdout: {line}");
        assert_eq!(
            d["_aws"]["CloudWatchMetrics"][0]["Namespace"], "EgressWarden",
            "{d}"
        );
        assert!(d["_aws"]["Timestamp"].as_u64().is_some(), "{d}");
    }
    assert!(
        started.elapsed() < OVERALL,
        "took {:?} (limit {OVERALL:?})",
        started.elapsed()
    );
    drop(ext);
    drop(watch);
}
