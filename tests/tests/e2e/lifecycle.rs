//! End-to-end lifecycle of the REAL egress-warden binary under the local Lambda emulator:
//! registration, INIT, invokes, SHUTDOWN, EMF on stdout, configuration errors, kill switch.
//!
//! The binary is found through `EGRESS_WARDEN_BIN`, else `$CARGO_TARGET_DIR/debug/egress-warden`,
//! else `<workspace>/target/debug/egress-warden` (build it first: `cargo build -p egress-warden`).

use std::time::Duration;

use serde_json::{json, Value};
use warden_tests::emf::{self, EmfValidator};
use warden_tests::emulator::{
    Emulator, EmulatorConfig, InitFailure, ProtocolEvent, ShutdownReason,
};
use warden_tests::warden::{
    emf_documents, extension_log, free_port, shut_down_cleanly, ExtensionsDir, EXTENSION_NAME,
};

const LIMIT: Duration = Duration::from_secs(60);
const FUNCTION: &str = "warden-lifecycle-fn";

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test took too long")
}

/// The extension with its listeners on free loopback ports (parallel tests never collide)
/// and no upstream but the loopback.
fn config(d: &ExtensionsDir) -> (EmulatorConfig, u16, u16) {
    let (proxy, dns) = (free_port(), free_port());
    let mut cfg = EmulatorConfig::with_extensions_dir(d.path())
        .env("EGRESS_WARDEN_PROXY_PORT", proxy.to_string())
        .env("EGRESS_WARDEN_DNS_PORT", dns.to_string())
        .env("EGRESS_WARDEN_DNS_UPSTREAMS", "127.0.0.1:1");
    cfg.function_name = FUNCTION.to_string();
    (cfg, proxy, dns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_serves_invokes_and_exits_well_before_the_deadline() {
    bounded(async {
        const N: usize = 5;
        let d = ExtensionsDir::with_warden();
        let (cfg, _, _) = config(&d);
        let mut emu = Emulator::start(cfg).await.unwrap();
        let init = emu
            .wait_init()
            .await
            .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", extension_log(&emu)));
        assert_eq!(emu.extension_names(), [EXTENSION_NAME]);
        let ext = &init.extensions[0];
        assert!(ext.external, "registered under its file name");
        let mut events = ext.events.clone();
        events.sort();
        assert_eq!(events, ["INVOKE", "SHUTDOWN"]);
        assert!(ext.registered_after.is_some() && ext.ready_after.is_some());
        assert!(emu.protocol_log().iter().any(|e| matches!(
            &e.event,
            ProtocolEvent::Register { name, external: true, .. } if name == EXTENSION_NAME
        )));

        let emf = EmfValidator::new();
        for k in 1..=N {
            let out = emu.invoke_json(&json!({"k": k})).await.unwrap();
            assert!(out.is_success(), "invoke {k}: {:?}", out.result);
            let ack = out.ack(EXTENSION_NAME).expect("INVOKE delivered");
            assert!(ack.latency.is_some(), "invoke {k} acknowledged: {ack:?}");
            // Flushed on the INVOKE, before next was called again: the line is already written
            // (allow the pipe reader a moment to catch up).
            let flushed = emu
                .wait_for_line(EXTENSION_NAME, Duration::from_secs(2), |_| {
                    let sum: f64 = emu_sum(&emu, &emf);
                    sum >= k as f64
                })
                .await;
            assert!(flushed.is_some(), "invocations flushed by invoke {k}");
        }

        let report = emu.shutdown(ShutdownReason::Spindown).await;
        let exit = report.extension(EXTENSION_NAME).unwrap();
        assert!(exit.received_shutdown, "{exit:?}");
        assert_eq!(
            exit.exit.and_then(|x| x.code),
            Some(0),
            "{exit:?}\n{}",
            extension_log(&emu)
        );
        assert!(exit.before_deadline && !exit.killed, "{exit:?}");
        let elapsed = exit.elapsed.unwrap();
        assert!(
            elapsed < report.grace / 2,
            "exit {elapsed:?} after SHUTDOWN should be well within the {:?} deadline",
            report.grace
        );

        let docs = emf_documents(&emu);
        assert!(!docs.is_empty());
        assert_eq!(
            emf::sum(&docs, "invocations"),
            N as f64,
            "sum of invocations over all lines"
        );
        assert!(docs.iter().any(|d| d.defines("extension_init_ms")));
        for d in &docs {
            assert_eq!(d.namespaces(), vec!["EgressWarden"; d.namespaces().len()]);
            assert!(d
                .dimension_sets()
                .contains(&vec!["FunctionName".to_string()]));
            assert_eq!(d.get("FunctionName"), Some(&json!(FUNCTION)));
            let ts = d.timestamp_ms().unwrap();
            let now = warden_tests::emulator::clock::epoch_ms();
            assert!(
                ts <= now && now - ts < 120_000,
                "Timestamp {ts} is now, in ms"
            );
        }
        let units: Vec<_> = docs.iter().flat_map(|d| d.metrics()).collect();
        assert!(units.contains(&("invocations".to_string(), Some("Count".to_string()))));
    })
    .await
}

fn emu_sum(emu: &Emulator, v: &EmfValidator) -> f64 {
    emu.stdout_lines(EXTENSION_NAME)
        .iter()
        .filter_map(|l| v.validate_line(l).ok())
        .filter_map(|d| d.metric_total("invocations"))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_follows_the_variable() {
    bounded(async {
        let d = ExtensionsDir::with_warden();
        let (cfg, _, _) = config(&d);
        let cfg = cfg.env("EGRESS_WARDEN_METRICS_NAMESPACE", "Team/Egress");
        let mut emu = Emulator::start(cfg).await.unwrap();
        emu.wait_init().await.unwrap();
        for _ in 0..2 {
            assert!(emu.invoke("{}").await.unwrap().is_success());
        }
        let report = emu.shutdown(ShutdownReason::Spindown).await;
        assert!(report.extension(EXTENSION_NAME).unwrap().before_deadline);
        let docs = emf_documents(&emu);
        assert_eq!(emf::sum(&docs, "invocations"), 2.0);
        for d in &docs {
            assert!(
                d.namespaces().iter().all(|n| n == "Team/Egress"),
                "{:?}",
                d.value
            );
        }
    })
    .await
}

/// Exactly one stderr line names each bad variable.
fn assert_one_line_per_bad_variable(emu: &Emulator, vars: &[&str]) {
    let stderr = emu.stderr_lines(EXTENSION_NAME);
    for var in vars {
        let lines: Vec<&String> = stderr.iter().filter(|l| l.contains(var)).collect();
        assert_eq!(
            lines.len(),
            1,
            "exactly one stderr line should name {var}; got {lines:#?}\nall stderr:\n{}",
            stderr.join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_in_default_mode_keeps_running_and_names_each_variable_once() {
    bounded(async {
        let d = ExtensionsDir::with_warden();
        let (cfg, _, _) = config(&d);
        let cfg = cfg
            .env("EGRESS_WARDEN_PROXY_PORT", "abc")
            .env("EGRESS_WARDEN_POLICY", "maybe");
        let mut emu = Emulator::start(cfg).await.unwrap();
        emu.wait_init()
            .await
            .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", extension_log(&emu)));
        for _ in 0..3 {
            let out = emu.invoke("{}").await.unwrap();
            assert!(out.is_success());
            assert!(out.ack(EXTENSION_NAME).unwrap().latency.is_some());
        }
        assert!(!emu
            .protocol_log()
            .iter()
            .any(|e| matches!(e.event, ProtocolEvent::ExtensionInitError { .. })));
        shut_down_cleanly(&mut emu).await;
        assert_one_line_per_bad_variable(
            &emu,
            &["EGRESS_WARDEN_PROXY_PORT", "EGRESS_WARDEN_POLICY"],
        );
        let stderr = emu.stderr_lines(EXTENSION_NAME).join("\n");
        assert!(
            stderr.contains("abc") && stderr.contains("maybe"),
            "the bad values are shown:\n{stderr}"
        );
        assert_eq!(emf::sum(&emf_documents(&emu), "invocations"), 3.0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_with_json_logs_is_json_and_names_each_variable_once() {
    bounded(async {
        let d = ExtensionsDir::with_warden();
        let (cfg, _, _) = config(&d);
        let cfg = cfg
            .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
            .env("EGRESS_WARDEN_PROXY_PORT", "abc")
            .env("EGRESS_WARDEN_POLICY", "maybe");
        let mut emu = Emulator::start(cfg).await.unwrap();
        emu.wait_init().await.unwrap();
        assert!(emu.invoke("{}").await.unwrap().is_success());
        emu.shutdown(ShutdownReason::Spindown).await;
        let stderr = emu.stderr_lines(EXTENSION_NAME);
        assert!(!stderr.is_empty());
        for l in &stderr {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| {
                panic!("AWS_LAMBDA_LOG_FORMAT=JSON: stderr line is not JSON ({e}): {l}")
            });
            assert!(v.is_object(), "{l}");
        }
        assert_one_line_per_bad_variable(
            &emu,
            &["EGRESS_WARDEN_PROXY_PORT", "EGRESS_WARDEN_POLICY"],
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_fails_init_with_config_invalid_and_exits_non_zero() {
    bounded(async {
        let d = ExtensionsDir::with_warden();
        let (cfg, _, _) = config(&d);
        let cfg = cfg
            .env("EGRESS_WARDEN_STRICT", "true")
            .env("EGRESS_WARDEN_PROXY_PORT", "abc")
            .env("EGRESS_WARDEN_POLICY", "maybe");
        let mut emu = Emulator::start(cfg).await.unwrap();
        let err = emu
            .wait_init()
            .await
            .expect_err("INIT must fail in strict mode");
        match &err.failure {
            InitFailure::ExtensionInitError {
                name, error_type, ..
            } => {
                assert_eq!(name, EXTENSION_NAME);
                assert_eq!(error_type, "Extension.ConfigInvalid");
            }
            other => panic!(
                "expected /extension/init/error, got {other:?}\nstderr:\n{}",
                extension_log(&emu)
            ),
        }
        assert!(emu.protocol_log().iter().any(|e| matches!(
            &e.event,
            ProtocolEvent::ExtensionInitError { name, error_type, .. }
                if name == EXTENSION_NAME && error_type == "Extension.ConfigInvalid"
        )));
        let exit = err.shutdown.extension(EXTENSION_NAME).unwrap();
        let status = exit.exit.expect("exited");
        assert!(
            status.code.is_some_and(|c| c != 0),
            "non-zero exit, got {status}"
        );
        assert!(!exit.killed, "it exited by itself: {exit:?}");
        // It never asked for an event.
        assert!(!emu.protocol_log().iter().any(|e| matches!(
            &e.event,
            ProtocolEvent::ExtensionNext { name } if name == EXTENSION_NAME
        )));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_switch_registers_acknowledges_and_exits_zero() {
    bounded(async {
        let d = ExtensionsDir::with_warden();
        let (cfg, proxy_port, _) = config(&d);
        let cfg = cfg.env("EGRESS_WARDEN_DISABLE", "true");
        let mut emu = Emulator::start(cfg).await.unwrap();
        let init = emu.wait_init().await.unwrap();
        assert_eq!(init.extensions[0].name, EXTENSION_NAME);
        // Nothing else: no proxy listener.
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", proxy_port)).is_err(),
            "EGRESS_WARDEN_DISABLE=true must not open the proxy"
        );
        for _ in 0..3 {
            let out = emu.invoke("{}").await.unwrap();
            assert!(out.is_success());
            assert!(out.ack(EXTENSION_NAME).unwrap().latency.is_some());
        }
        let report = emu.shutdown(ShutdownReason::Spindown).await;
        let exit = report.extension(EXTENSION_NAME).unwrap();
        assert!(exit.received_shutdown);
        assert_eq!(exit.exit.and_then(|x| x.code), Some(0));
        assert!(exit.before_deadline && !exit.killed);
        assert_eq!(
            emf::sum(&emf_documents(&emu), "invocations"),
            0.0,
            "no metrics when disabled"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_ready_when_init_ends_and_status_answers() {
    bounded(async {
        let d = ExtensionsDir::with_warden();
        let (cfg, proxy_port, dns_port) = config(&d);
        let mut emu = Emulator::start(cfg).await.unwrap();
        emu.wait_init().await.unwrap();
        // The runtime's INIT starts after registration: the proxy must already listen.
        let r = warden_tests::blocking_http::request(
            &format!("127.0.0.1:{proxy_port}"),
            "GET",
            "/_warden/status",
            &[],
            b"",
        )
        .unwrap_or_else(|e| panic!("proxy not listening on {proxy_port} after INIT: {e}"));
        assert_eq!(r.status, 200, "{}", r.text());
        let status: Value = serde_json::from_slice(&r.body).expect("status is JSON");
        assert!(status.is_object());
        assert!(
            std::net::UdpSocket::bind(("127.0.0.1", dns_port)).is_err(),
            "DNS listener bound on {dns_port}"
        );
        emu.shutdown(ShutdownReason::Spindown).await;
    })
    .await
}

/// Every metric the directive with `[FunctionName, FunctionVersion]` declares, in `doc`.
fn per_version_metrics(doc: &Value) -> Vec<String> {
    doc["_aws"]["CloudWatchMetrics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["Dimensions"] == json!([["FunctionName", "FunctionVersion"]]))
        .flat_map(|d| d["Metrics"].as_array().cloned().unwrap_or_default())
        .filter_map(|m| m["Name"].as_str().map(str::to_string))
        .collect()
}

/// A canary version is told apart from the stable one: the key metrics also carry
/// `[FunctionName, FunctionVersion]`, and every INIT counts one cold start, named in a log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_metrics_per_function_version_and_one_cold_start_per_init() {
    bounded(async {
        let origin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let origin_port = origin.local_addr().unwrap().port();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for mut s in origin.incoming().flatten().take(8) {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        for (switch, version_expected) in [(None, true), (Some("false"), false)] {
            let d = ExtensionsDir::with_warden();
            let (cfg, proxy, _) = config(&d);
            let mut cfg = cfg.env("EGRESS_WARDEN_ALLOW", "127.0.0.0/8");
            if let Some(value) = switch {
                cfg = cfg.env("EGRESS_WARDEN_VERSION_DIMENSION", value);
            }
            cfg.function_version = "7".to_string();
            let mut emu = Emulator::start(cfg).await.unwrap();
            emu.wait_init().await.unwrap();
            let url = format!("http://127.0.0.1:{origin_port}/canary");
            let out = tokio::task::spawn_blocking(move || {
                std::process::Command::new("curl")
                    .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-x"])
                    .arg(format!("http://127.0.0.1:{proxy}"))
                    .arg(url)
                    .output()
            })
            .await
            .unwrap()
            .expect("curl");
            assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
            assert!(emu.invoke("{}").await.unwrap().is_success());
            shut_down_cleanly(&mut emu).await;

            let docs = emf_documents(&emu);
            let log = extension_log(&emu);
            assert_eq!(emf::sum(&docs, "cold_starts"), 1.0, "{log}");
            assert!(
                log.lines().any(|l| l.contains("cold start")
                    && l.contains("initialization_type=\"on-demand\"")
                        | l.contains("initialization_type=on-demand")),
                "{log}"
            );
            let function_docs: Vec<&Value> = docs
                .iter()
                .map(|d| &d.value)
                .filter(|v| v.get("Destination").is_none())
                .collect();
            let declared: Vec<String> = function_docs
                .iter()
                .flat_map(|v| per_version_metrics(v))
                .collect();
            if version_expected {
                for name in [
                    "requests",
                    "cold_starts",
                    "request_ms",
                    "ttfb_ms",
                    "tcp_connect_ms",
                ] {
                    assert!(declared.iter().any(|n| n == name), "{name}: {declared:?}");
                }
                assert!(!declared.iter().any(|n| n == "invocations"), "{declared:?}");
                assert!(function_docs
                    .iter()
                    .filter(|v| !per_version_metrics(v).is_empty())
                    .all(|v| v["FunctionVersion"] == "7"));
            } else {
                assert_eq!(declared, Vec::<String>::new());
                assert!(function_docs
                    .iter()
                    .all(|v| v.get("FunctionVersion").is_none()));
            }
        }
    })
    .await
}
