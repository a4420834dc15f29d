//! The emulator checked against scriptable test doubles (`fake-extension`, `fake-runtime`):
//! phase rules, status codes, timeouts, SHUTDOWN deadline and SIGKILL, telemetry delivery.

use std::path::Path;
use std::time::Duration;

use hyper::Method;
use serde_json::{json, Value};
use warden_tests::emulator::{
    payload, Emulator, EmulatorConfig, EmulatorError, InitFailure, InitType, InvokeResult,
    ProtocolEvent, Runtime, ShutdownReason, RUNTIME_NAME,
};
use warden_tests::warden::ExtensionsDir;

const FAKE_EXT: &str = env!("CARGO_BIN_EXE_fake-extension");
const FAKE_RT: &str = env!("CARGO_BIN_EXE_fake-runtime");
const LIMIT: Duration = Duration::from_secs(30);

fn dir_with(names: &[&str]) -> ExtensionsDir {
    let d = ExtensionsDir::new().unwrap();
    for n in names {
        d.add(n, Path::new(FAKE_EXT)).unwrap();
    }
    d
}

/// method, path, headers, body, expected status, expected errorType
type Case = (
    Method,
    &'static str,
    Vec<(&'static str, &'static str)>,
    &'static str,
    u16,
    &'static str,
);

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test took too long")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_invokes_and_shutdown_with_two_extensions() {
    bounded(async {
        let d = dir_with(&["b-ext", "a-ext"]);
        let mut emu = Emulator::start(EmulatorConfig::with_extensions_dir(d.path()))
            .await
            .unwrap();
        let init = emu.wait_init().await.unwrap();
        let names: Vec<_> = init.extensions.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a-ext", "b-ext"], "launched in name order");
        for e in &init.extensions {
            assert!(e.external);
            assert_eq!(e.events, ["INVOKE", "SHUTDOWN"]);
            assert!(e.registered_after.unwrap() <= e.ready_after.unwrap());
        }
        // The runtime starts only after every extension registered.
        let log = emu.protocol_log();
        let last_register = log
            .iter()
            .filter(|e| matches!(e.event, ProtocolEvent::Register { .. }))
            .map(|e| e.at)
            .max()
            .unwrap();
        let runtime_start = emu
            .first_event(|e| matches!(e, ProtocolEvent::RuntimeStart { .. }))
            .unwrap();
        assert!(runtime_start >= last_register);

        for i in 0..3 {
            let out = emu.invoke_json(&json!({"n": i})).await.unwrap();
            assert_eq!(out.response_json().unwrap(), json!({"echo": {"n": i}}));
            assert_eq!(out.extension_acks.len(), 2);
            for a in &out.extension_acks {
                assert!(a.latency.is_some(), "{a:?} acknowledged");
            }
        }
        let line = emu
            .wait_for_line("a-ext", Duration::from_secs(2), |l| {
                l.text.starts_with("event ") && l.text.contains("INVOKE")
            })
            .await
            .unwrap();
        let ev: Value = serde_json::from_str(line.text.trim_start_matches("event ")).unwrap();
        assert_eq!(ev["eventType"], "INVOKE");
        assert_eq!(ev["tracing"]["type"], "X-Amzn-Trace-Id");
        assert!(ev["deadlineMs"].as_u64().unwrap() > 1_600_000_000_000);
        assert!(ev["invokedFunctionArn"]
            .as_str()
            .unwrap()
            .ends_with(":function:emulated-function"));
        let reg = emu
            .wait_for_line("b-ext", Duration::from_secs(2), |l| {
                l.text.starts_with("registered ")
            })
            .await
            .unwrap();
        let body: Value = serde_json::from_str(reg.text.trim_start_matches("registered ")).unwrap();
        assert_eq!(
            body,
            json!({"functionName": "emulated-function", "functionVersion": "$LATEST",
                   "handler": "bootstrap", "accountId": "123456789012"})
        );

        let report = emu.shutdown(ShutdownReason::Spindown).await;
        assert_eq!(report.extensions.len(), 2);
        for e in &report.extensions {
            assert!(e.received_shutdown, "{e:?}");
            assert_eq!(e.exit.unwrap().code, Some(0), "{e:?}");
            assert!(e.before_deadline && !e.killed, "{e:?}");
        }
        let shutdown_line = emu
            .stdout_lines("a-ext")
            .into_iter()
            .find(|l| l.contains("SHUTDOWN"))
            .unwrap();
        let ev: Value = serde_json::from_str(shutdown_line.trim_start_matches("event ")).unwrap();
        assert_eq!(ev["shutdownReason"], "spindown");
        assert_eq!(ev["deadlineMs"].as_u64().unwrap(), report.deadline_ms);
        assert_eq!(
            emu.stderr_lines("a-ext"),
            ["env AWS_LAMBDA_FUNCTION_NAME=emulated-function"]
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_refusals_match_lambda() {
    bounded(async {
        let d = dir_with(&["ext"]);
        let mut emu = Emulator::start(EmulatorConfig::with_extensions_dir(d.path()))
            .await
            .unwrap();
        emu.wait_init().await.unwrap();
        let c = emu.runtime_client();
        let next = "/2020-01-01/extension/event/next";
        let cases: Vec<Case> = vec![
            (Method::GET, next, vec![], "", 403, "Extension.MissingExtensionIdentifier"),
            (Method::GET, next, vec![("Lambda-Extension-Identifier", "nope")], "", 403, "Extension.InvalidExtensionIdentifier"),
            (Method::GET, next, vec![("Lambda-Extension-Identifier", "6f1c0b8e-2d5a-4c1e-9a3b-0c9d8e7f6a5b")], "", 403, "Extension.UnknownExtensionIdentifier"),
            (Method::POST, "/2020-01-01/extension/register", vec![], r#"{"events":["INVOKE"]}"#, 403, "Extension.InvalidExtensionName"),
            (Method::POST, "/2020-01-01/extension/register", vec![("Lambda-Extension-Name", "late")], r#"{"events":["INVOKE"]}"#, 403, "Extension.RegistrationClosed"),
            (Method::POST, "/2020-01-01/extension/register", vec![("Lambda-Extension-Name", "ext")], r#"{"events":["INVOKE"]}"#, 403, "Extension.InvalidExtensionState"),
            (Method::POST, "/2020-01-01/extension/register", vec![("Lambda-Extension-Name", "x")], "not json", 403, "InvalidRequestFormat"),
            (Method::POST, "/2020-01-01/extension/init/error", vec![("Lambda-Extension-Identifier", "6f1c0b8e-2d5a-4c1e-9a3b-0c9d8e7f6a5b"), ("Lambda-Extension-Function-Error-Type", "X.Y")], "", 403, "Extension.UnknownExtensionIdentifier"),
            (Method::POST, "/2018-06-01/runtime/invocation/abc/response", vec![], "{}", 400, "InvalidRequestID"),
            (Method::POST, "/2018-06-01/runtime/init/error", vec![], "{}", 403, "InvalidStateTransition"),
            (Method::PUT, "/2022-07-01/telemetry", vec![], "{}", 403, "Extension.MissingExtensionIdentifier"),
            (Method::GET, "/2018-06-01/nothing", vec![], "", 404, "NotFound"),
        ];
        for (m, path, headers, body, status, error_type) in cases {
            let r = c.request(m.clone(), path, &headers, body.to_string()).await.unwrap();
            assert_eq!(r.status.as_u16(), status, "{m} {path} {headers:?}: {:?}", r.body);
            assert_eq!(r.json().unwrap()["errorType"], error_type, "{m} {path}");
        }
        // Refusals are in the protocol log.
        assert!(emu
            .protocol_log()
            .iter()
            .any(|e| matches!(&e.event, ProtocolEvent::Rejected { error_type, status: 403, .. } if error_type == "Extension.UnknownExtensionIdentifier")));
        // The environment still works.
        assert!(emu.invoke("{}").await.unwrap().is_success());
        emu.shutdown(ShutdownReason::Spindown).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extension_init_error_fails_init_and_shuts_down() {
    bounded(async {
        let d = dir_with(&["bad", "good"]);
        let cfg = EmulatorConfig::with_extensions_dir(d.path()).env("FAKE_EXT_MODE", "init-error");
        let mut emu = Emulator::start(cfg).await.unwrap();
        let err = emu.wait_init().await.unwrap_err();
        let failed = match &err.failure {
            InitFailure::ExtensionInitError {
                name,
                error_type,
                body,
            } => {
                assert_eq!(error_type, "Extension.ConfigInvalid");
                assert!(body.as_deref().unwrap_or("").contains("bad config"));
                name.clone()
            }
            other => panic!("unexpected failure {other:?}"),
        };
        assert_eq!(err.shutdown.reason, "failure");
        // The one that posted /init/error exits by itself; the other one may still have been
        // registering when INIT failed (then it is refused or killed): either way, it is gone.
        let e = err.shutdown.extension(&failed).unwrap();
        assert_eq!(e.exit.unwrap().code, Some(3), "{e:?}");
        assert!(err.shutdown.extensions.iter().all(|e| e.exit.is_some()));
        assert!(emu
            .protocol_log()
            .iter()
            .any(|e| matches!(&e.event, ProtocolEvent::ExtensionInitError { error_type, .. } if error_type == "Extension.ConfigInvalid")));
        assert!(matches!(emu.invoke("{}").await, Err(EmulatorError::Init(_))));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_register_and_init_timeout() {
    bounded(async {
        let d = dir_with(&["crasher"]);
        let cfg = EmulatorConfig::with_extensions_dir(d.path()).env("FAKE_EXT_MODE", "crash-before-register");
        let mut emu = Emulator::start(cfg).await.unwrap();
        let err = emu.wait_init().await.unwrap_err();
        assert!(
            matches!(&err.failure, InitFailure::ExtensionCrash { name, exit } if name == "crasher" && exit.code == Some(7)),
            "{:?}",
            err.failure
        );

        let d = dir_with(&["sleeper"]);
        let mut cfg = EmulatorConfig::with_extensions_dir(d.path()).env("FAKE_EXT_MODE", "never-next");
        cfg.init_timeout = Duration::from_millis(500);
        cfg.shutdown_grace = Duration::from_millis(200);
        let mut emu = Emulator::start(cfg).await.unwrap();
        let err = emu.wait_init().await.unwrap_err();
        assert_eq!(
            err.failure,
            InitFailure::Timeout { waiting_for: vec!["sleeper".to_string()] }
        );
        let e = err.shutdown.extension("sleeper").unwrap();
        assert!(e.killed && !e.before_deadline, "{e:?}");
        assert_eq!(e.exit.unwrap().signal, Some(libc::SIGKILL));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_deadline_then_sigkill() {
    bounded(async {
        let d = dir_with(&["stubborn"]);
        let mut cfg =
            EmulatorConfig::with_extensions_dir(d.path()).env("FAKE_EXT_MODE", "ignore-shutdown");
        cfg.shutdown_grace = Duration::from_millis(300);
        let mut emu = Emulator::start(cfg).await.unwrap();
        emu.wait_init().await.unwrap();
        let report = emu.shutdown(ShutdownReason::Timeout).await;
        let e = report.extension("stubborn").unwrap();
        assert!(
            e.received_shutdown && e.killed && !e.before_deadline,
            "{e:?}"
        );
        assert!(e.elapsed.unwrap() >= Duration::from_millis(300));
        assert_eq!(e.exit.unwrap().signal, Some(libc::SIGKILL));
        // Idempotent.
        assert_eq!(
            emu.shutdown(ShutdownReason::Spindown).await.reason,
            "timeout"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_ack_lengthens_the_invoke_and_timeout_breaks_the_environment() {
    bounded(async {
        let d = dir_with(&["slow"]);
        let mut cfg = EmulatorConfig::with_extensions_dir(d.path())
            .env("FAKE_EXT_MODE", "slow-ack")
            .env("FAKE_EXT_ACK_MS", "120");
        cfg.timeout = Duration::from_millis(800);
        let mut emu = Emulator::start(cfg).await.unwrap();
        emu.wait_init().await.unwrap();
        let out = emu.invoke("{}").await.unwrap();
        assert!(out.is_success());
        let ack = out.ack("slow").unwrap();
        assert!(
            ack.latency.unwrap() >= Duration::from_millis(120),
            "{ack:?}"
        );
        assert!(out.duration >= Duration::from_millis(120));
        assert!(out.runtime_duration.unwrap() < Duration::from_millis(120));

        let out = emu.invoke_json(&json!({"sleepMs": 2000})).await.unwrap();
        assert_eq!(out.result, InvokeResult::Timeout);
        assert!(matches!(
            emu.invoke("{}").await,
            Err(EmulatorError::NotReady(_))
        ));
        let report = emu.shutdown(ShutdownReason::Timeout).await;
        assert!(report.extension("slow").unwrap().before_deadline);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_process_through_exec_wrapper() {
    bounded(async {
        let d = dir_with(&["ext"]);
        let wrapper = d.scratch().join("wrapper.sh");
        std::fs::write(&wrapper, "#!/bin/sh\nexport WRAPPED=1\nexec \"$@\"\n").unwrap();
        std::fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let cfg = EmulatorConfig::with_extensions_dir(d.path())
            .runtime(Runtime::command(FAKE_RT))
            .env("AWS_LAMBDA_EXEC_WRAPPER", wrapper.display().to_string())
            .env("USER_VAR", "u")
            .env("TZ", "Europe/Paris")
            .init_type(warden_tests::emulator::InitType::ProvisionedConcurrency);
        let mut emu = Emulator::start(cfg).await.unwrap();
        emu.wait_init().await.unwrap();
        let out = emu.invoke_json(&json!({"k": "v"})).await.unwrap();
        let body = out.response_json().unwrap();
        assert_eq!(body["echo"], json!({"k": "v"}));
        assert_eq!(body["env"]["WRAPPED"], "1");
        assert_eq!(body["env"]["USER_VAR"], "u");
        assert_eq!(body["env"]["TZ"], ":UTC", "reserved variables win");
        assert_eq!(
            body["env"]["AWS_LAMBDA_INITIALIZATION_TYPE"],
            "provisioned-concurrency"
        );
        assert!(body["traceId"].as_str().unwrap().starts_with("Root=1-"));
        assert!(emu
            .wait_for_line(RUNTIME_NAME, Duration::from_secs(2), |l| l
                .text
                .starts_with("invoke "))
            .await
            .is_some());

        let out = emu.invoke_json(&json!({"crash": true})).await.unwrap();
        assert!(
            matches!(out.result, InvokeResult::RuntimeExited(x) if x.code == Some(3)),
            "{:?}",
            out.result
        );
        let report = emu.shutdown(ShutdownReason::Failure).await;
        assert_eq!(report.runtime.unwrap().code, Some(3));
        assert!(report.extension("ext").unwrap().before_deadline);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_sigterm_at_shutdown_and_runtime_init_error() {
    bounded(async {
        let cfg = EmulatorConfig::default().runtime(Runtime::command(FAKE_RT));
        let mut emu = Emulator::start(cfg).await.unwrap();
        emu.wait_init().await.unwrap();
        assert!(emu.invoke("{}").await.unwrap().is_success());
        let report = emu.shutdown(ShutdownReason::Spindown).await;
        assert_eq!(report.runtime.unwrap().signal, Some(libc::SIGTERM));

        let cfg = EmulatorConfig::default()
            .runtime(Runtime::command(FAKE_RT))
            .env("FAKE_RT_MODE", "init-error");
        let mut emu = Emulator::start(cfg).await.unwrap();
        let err = emu.wait_init().await.unwrap_err();
        assert!(
            matches!(&err.failure, InitFailure::RuntimeInitError { error_type: Some(t), .. } if t == "Runtime.TestInit"),
            "{:?}",
            err.failure
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_error_during_invoke_and_shutdown_only_subscription() {
    bounded(async {
        let d = dir_with(&["quitter"]);
        let cfg = EmulatorConfig::with_extensions_dir(d.path()).env("FAKE_EXT_MODE", "exit-error-on-invoke");
        let mut emu = Emulator::start(cfg).await.unwrap();
        emu.wait_init().await.unwrap();
        let out = emu.invoke("{}").await.unwrap();
        assert!(matches!(&out.result, InvokeResult::ExtensionFailed { name, .. } if name == "quitter"), "{:?}", out.result);
        assert!(emu
            .protocol_log()
            .iter()
            .any(|e| matches!(&e.event, ProtocolEvent::ExtensionExitError { error_type, .. } if error_type == "Extension.Broken")));
        emu.shutdown(ShutdownReason::Failure).await;

        let d = dir_with(&["watcher"]);
        let cfg = EmulatorConfig::with_extensions_dir(d.path()).env("FAKE_EXT_EVENTS", "SHUTDOWN");
        let mut emu = Emulator::start(cfg).await.unwrap();
        emu.wait_init().await.unwrap();
        let out = emu.invoke("{}").await.unwrap();
        assert!(out.is_success() && out.extension_acks.is_empty());
        let report = emu.shutdown(ShutdownReason::Spindown).await;
        let e = report.extension("watcher").unwrap();
        assert!(e.received_shutdown && e.before_deadline && e.exit.unwrap().success());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_runtime_over_http() {
    bounded(async {
        let mut emu = Emulator::start(EmulatorConfig::default().runtime(Runtime::Manual))
            .await
            .unwrap();
        let client = emu.runtime_client();
        let rt = tokio::spawn(async move {
            let inv = client.next().await.unwrap();
            assert_eq!(&inv.payload[..], br#"{"a":1}"#);
            assert!(inv
                .invoked_function_arn
                .starts_with("arn:aws:lambda:us-east-1:"));
            assert_eq!(client.respond("wrong-id", "x").await.unwrap().as_u16(), 400);
            assert_eq!(
                client
                    .respond(&inv.request_id, r#"{"ok":true}"#)
                    .await
                    .unwrap()
                    .as_u16(),
                202
            );
            assert_eq!(
                client
                    .respond(&inv.request_id, "again")
                    .await
                    .unwrap()
                    .as_u16(),
                400
            );
            let inv = client.next().await.unwrap();
            client
                .error(&inv.request_id, "Handled.Oops", "oops")
                .await
                .unwrap()
        });
        emu.wait_init().await.unwrap();
        let out = emu.invoke(r#"{"a":1}"#).await.unwrap();
        assert_eq!(out.response_json().unwrap(), json!({"ok": true}));
        let out = emu.invoke("{}").await.unwrap();
        match out.result {
            InvokeResult::Error { error_type, body } => {
                assert_eq!(error_type.as_deref(), Some("Handled.Oops"));
                assert!(String::from_utf8_lossy(&body).contains("oops"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(rt.await.unwrap().as_u16(), 202);
        emu.shutdown(ShutdownReason::Spindown).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_records_reach_the_subscriber() {
    bounded(async {
        let d = dir_with(&["tele"]);
        let cfg = EmulatorConfig::with_extensions_dir(d.path()).env("FAKE_EXT_TELEMETRY", "1");
        let mut emu = Emulator::start(cfg).await.unwrap();
        emu.wait_init().await.unwrap();
        assert!(emu.invoke("{}").await.unwrap().is_success());
        let got = |t: &'static str| {
            let emu = &emu;
            async move {
                emu.wait_for_line("tele", Duration::from_secs(3), |l| {
                    l.text.starts_with("telemetry ") && l.text.contains(t)
                })
                .await
                .is_some()
            }
        };
        for t in [
            "platform.initStart",
            "platform.extension",
            "platform.telemetrySubscription",
            "platform.initRuntimeDone",
            "platform.initReport",
            "platform.start",
            "platform.runtimeDone",
            "platform.report",
        ] {
            assert!(
                got(t).await,
                "{t} delivered; got {:?}",
                emu.stdout_lines("tele")
            );
        }
        emu.shutdown(ShutdownReason::Spindown).await;
        assert!(emu
            .stdout_lines("tele")
            .iter()
            .any(|l| l.starts_with("telemetry subscribe -> 200 OK")));
        assert!(emu
            .telemetry_deliveries()
            .iter()
            .all(|d| d.status == Some(200)));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_instances_refuse_invoke_registrations_old_schemas_and_run_invocations_at_once() {
    bounded(async {
        // INVOKE is refused: the extension cannot register, INIT fails.
        let d = dir_with(&["eager"]);
        let cfg =
            EmulatorConfig::with_extensions_dir(d.path()).init_type(InitType::ManagedInstances);
        let mut emu = Emulator::start(cfg).await.unwrap();
        assert!(emu.wait_init().await.is_err());
        assert!(emu.protocol_log().iter().any(|e| matches!(&e.event,
            ProtocolEvent::Rejected { path, status: 403, error_type, .. }
                if path.ends_with("/register") && error_type == "Extension.InvalidEventType")));

        // SHUTDOWN only is fine; the Telemetry API refuses the schema of other models...
        let d = dir_with(&["old"]);
        let cfg = EmulatorConfig::with_extensions_dir(d.path())
            .init_type(InitType::ManagedInstances)
            .env("FAKE_EXT_EVENTS", "SHUTDOWN")
            .env("FAKE_EXT_TELEMETRY", "1");
        let mut emu = Emulator::start(cfg).await.unwrap();
        emu.wait_init().await.unwrap();
        let refused = emu
            .wait_for_line("old", Duration::from_secs(3), |l| {
                l.text.starts_with("telemetry subscribe -> 400")
            })
            .await;
        assert!(refused.is_some(), "{:?}", emu.stdout_lines("old"));
        emu.shutdown(ShutdownReason::Spindown).await;

        // ... and takes 2025-01-29.
        let d = dir_with(&["new"]);
        let cfg = EmulatorConfig::with_extensions_dir(d.path())
            .init_type(InitType::ManagedInstances)
            .env("FAKE_EXT_EVENTS", "SHUTDOWN")
            .env("FAKE_EXT_TELEMETRY", "1")
            .env("FAKE_EXT_SCHEMA", "2025-01-29")
            .runtime(Runtime::Manual);
        let mut emu = Emulator::start(cfg).await.unwrap();
        // Three runtime workers, each answering only once all three hold an invocation: the
        // invocations must be handed out at once.
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(3));
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let (client, barrier) = (emu.runtime_client(), barrier.clone());
                tokio::spawn(async move {
                    let inv = client.next().await.unwrap();
                    barrier.wait().await;
                    client
                        .respond(&inv.request_id, "{}")
                        .await
                        .unwrap()
                        .as_u16()
                })
            })
            .collect();
        emu.wait_init().await.unwrap();
        let outcomes = emu
            .invoke_many((0..3).map(|i| payload(&json!({ "i": i }))).collect())
            .await
            .unwrap();
        assert!(outcomes.iter().all(|o| o.is_success()), "{outcomes:?}");
        for w in workers {
            assert_eq!(w.await.unwrap(), 202);
        }
        let report = emu
            .wait_for_line("new", Duration::from_secs(3), |l| {
                l.text.starts_with("telemetry ") && l.text.contains("platform.report")
            })
            .await;
        assert!(report.is_some(), "{:?}", emu.stdout_lines("new"));
        emu.shutdown(ShutdownReason::Spindown).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snap_start_stops_every_process_for_the_snapshot_and_announces_the_restore() {
    bounded(async {
        let d = dir_with(&["tele"]);
        let cfg = EmulatorConfig::with_extensions_dir(d.path())
            .init_type(InitType::SnapStart)
            .env("FAKE_EXT_TELEMETRY", "1");
        let mut emu = Emulator::start(cfg).await.unwrap();
        emu.wait_init().await.unwrap();
        emu.snapshot().await.unwrap();
        let pid = emu.pid("tele").unwrap();
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let state = state
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next();
        assert_eq!(state, Some("T"), "stopped while the snapshot is stored");
        assert!(
            emu.invoke("{}").await.is_err(),
            "no invoke before the restore"
        );
        emu.restore().await.unwrap();
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let state = state
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next();
        assert_ne!(state, Some("T"));
        let restored = emu
            .wait_for_line("tele", Duration::from_secs(3), |l| {
                l.text.starts_with("telemetry ") && l.text.contains("platform.restoreStart")
            })
            .await;
        assert!(restored.is_some(), "{:?}", emu.stdout_lines("tele"));
        assert!(emu.invoke("{}").await.unwrap().is_success());
        let log = emu.protocol_log();
        let at = |pred: &dyn Fn(&ProtocolEvent) -> bool| log.iter().position(|e| pred(&e.event));
        assert!(
            at(&|e| matches!(e, ProtocolEvent::Snapshot))
                < at(&|e| matches!(e, ProtocolEvent::Restore))
        );
        let report = emu.shutdown(ShutdownReason::Spindown).await;
        assert!(report.extension("tele").unwrap().before_deadline);
    })
    .await
}
