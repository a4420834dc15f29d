//! egress-warden on every execution model, end to end: the REAL binary under the local Lambda
//! emulator in Managed Instances mode (INVOKE refused, invocations at once, no freezes,
//! telemetry schema 2025-01-29) and SnapStart mode (INIT, snapshot, restore), with the
//! Python runtime of the proxy tests (`tests/proxy/runtime.py`, through the real exec wrapper)
//! calling real upstreams on loopback, and telemetry batches holding records it never saw.
//! Needs: python3 with requests and boto3.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use warden_tests::emulator::{payload, Emulator, EmulatorConfig, InitType, ProtocolEvent, Runtime};
use warden_tests::one_at_a_time;
use warden_tests::python::{proxy_dir, python3, upstream};
use warden_tests::warden::{
    emf_function_total, extension_log, free_port, shut_down_cleanly, started_through_init,
    workspace_root, ExtensionsDir, EXTENSION_NAME,
};

const LIMIT: Duration = Duration::from_secs(120);

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    one_at_a_time(LIMIT, f).await
}

/// The Python runtime of the proxy tests, started through the exec wrapper.
fn python_runtime(cfg: EmulatorConfig, workers: usize) -> EmulatorConfig {
    cfg.env(
        "AWS_LAMBDA_EXEC_WRAPPER",
        workspace_root()
            .join("layer/egress-warden-wrapper")
            .display()
            .to_string(),
    )
    .env("WARDEN_TEST_RUNTIME_WORKERS", workers.to_string())
    .runtime(Runtime::Command {
        program: PathBuf::from(python3()),
        args: vec![proxy_dir().join("runtime.py").display().to_string()],
    })
}

fn statuses(outcome_json: &Value) -> Vec<i64> {
    outcome_json["results"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|c| c["status"].as_i64().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default()
}

fn registered_events(emu: &Emulator) -> Vec<Vec<String>> {
    emu.protocol_log()
        .into_iter()
        .filter_map(|e| match e.event {
            ProtocolEvent::Register { name, events, .. } if name == EXTENSION_NAME => Some(events),
            _ => None,
        })
        .collect()
}

/// Runs `invocations` invocations at once, each making `calls` GETs through the proxy;
/// returns how many were answered 200.
async fn concurrent_round(
    emu: &mut Emulator,
    port: u16,
    invocations: usize,
    calls: usize,
) -> usize {
    let url = format!("http://127.0.0.2:{port}/mi");
    let event = json!({"calls": vec![json!({"kind": "requests", "url": url}); calls]});
    let outcomes = emu
        .invoke_many(vec![payload(&event); invocations])
        .await
        .expect("invoke_many");
    let mut ok = 0;
    for out in &outcomes {
        assert!(out.is_success(), "{:?}\n{}", out.result, extension_log(emu));
        let answer = out.response_json().expect("json answer");
        ok += statuses(&answer).iter().filter(|s| **s == 200).count();
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_instances_shutdown_only_concurrent_invocations_and_timer_flushes_count_everything()
{
    bounded(async {
        let (_up, port) = upstream("plain", None);
        let d = ExtensionsDir::with_warden();
        let cfg = d
            .proxy_config(free_port())
            .init_type(InitType::ManagedInstances)
            .timeout(Duration::from_secs(60))
            .env("EGRESS_WARDEN_FLUSH_INTERVAL_S", "1");
        let mut emu = started_through_init(python_runtime(cfg, 8)).await;
        assert_eq!(registered_events(&emu), vec![vec!["SHUTDOWN".to_string()]]);

        // Round one: 8 invocations at once, 13 requests each.
        let first = concurrent_round(&mut emu, port, 8, 13).await;
        assert_eq!(first, 104, "{}", extension_log(&emu));
        let delivered_before_any_answer = {
            let entries = emu.protocol_log();
            let first_answer = entries
                .iter()
                .position(|e| matches!(e.event, ProtocolEvent::RuntimeResponse { .. }))
                .expect("answers");
            entries[..first_answer]
                .iter()
                .filter(|e| matches!(e.event, ProtocolEvent::RuntimeInvokeDelivered { .. }))
                .count()
        };
        assert!(
            delivered_before_any_answer >= 2,
            "invocations ran at once ({delivered_before_any_answer} delivered before the first answer)"
        );
        // No event reaches the extension here: whatever EMF comes, the timer wrote it.
        let seen = emu
            .wait_for_line(EXTENSION_NAME, Duration::from_secs(6), |_| {
                emf_function_total(&emu, "requests") >= 104.0 && emf_function_total(&emu, "invocations") >= 8.0
            })
            .await;
        assert!(seen.is_some(), "timer flushes carry the first round\n{}", extension_log(&emu));
        assert_eq!(emf_function_total(&emu, "requests"), 104.0);
        assert_eq!(emf_function_total(&emu, "invocations"), 8.0);

        // Round two, then SHUTDOWN at once: the final flush carries the rest, nothing twice.
        let second = concurrent_round(&mut emu, port, 8, 4).await;
        assert_eq!(second, 32);
        shut_down_cleanly(&mut emu).await;
        assert_eq!(emf_function_total(&emu, "requests"), (first + second) as f64, "{}", extension_log(&emu));
        assert_eq!(emf_function_total(&emu, "invocations"), 16.0, "{}", extension_log(&emu));
        assert_eq!(emf_function_total(&emu, "errors"), 0.0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_instances_with_the_kill_switch_pass_init_and_shut_down_cleanly() {
    bounded(async {
        let d = ExtensionsDir::with_warden();
        let cfg = d
            .proxy_config(free_port())
            .init_type(InitType::ManagedInstances)
            .env("EGRESS_WARDEN_DISABLE", "true");
        let mut emu = started_through_init(cfg).await;
        assert_eq!(registered_events(&emu), vec![vec!["SHUTDOWN".to_string()]]);
        let outcomes = emu
            .invoke_many(vec![payload(&json!({"n": 1})), payload(&json!({"n": 2}))])
            .await
            .expect("invoke_many");
        assert!(outcomes.iter().all(|o| o.is_success()), "{outcomes:?}");
        shut_down_cleanly(&mut emu).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_invoke_registration_is_retried_for_shutdown_only_and_invocations_still_count() {
    bounded(async {
        let d = ExtensionsDir::with_warden();
        let mut cfg = d.proxy_config(free_port());
        cfg.refuse_invoke_registration = true;
        let mut emu = started_through_init(cfg).await;
        assert_eq!(registered_events(&emu), vec![vec!["SHUTDOWN".to_string()]]);
        assert!(
            extension_log(&emu).contains("registering for SHUTDOWN only"),
            "{}",
            extension_log(&emu)
        );
        for n in 0..2 {
            let out = emu.invoke_json(&json!({"n": n})).await.expect("invoke");
            assert!(out.is_success());
        }
        // The invocations' telemetry goes out before SHUTDOWN.
        shut_down_cleanly(&mut emu).await;
        assert_eq!(
            emf_function_total(&emu, "invocations"),
            2.0,
            "{}",
            extension_log(&emu)
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telemetry_batch_with_records_never_seen_is_answered_200_and_the_known_ones_used() {
    bounded(async {
        let d = ExtensionsDir::with_warden();
        let mut emu = started_through_init(d.proxy_config(free_port())).await;
        let out = emu.invoke_json(&json!({"n": 1})).await.expect("invoke");
        assert!(out.is_success());
        emu.flush_telemetry().await;
        let before = emu.telemetry_deliveries().len();
        emu.emit_platform(
            "platform.runtimeDone",
            json!({"requestId": "r-9", "status": "timeout"}),
        );
        emu.emit_platform(
            "platform.restoreStart",
            json!({"functionName": "f", "instanceId": "i"}),
        );
        emu.emit_platform("platform.restoreRuntimeDone", json!({"status": "success"}));
        emu.emit_platform(
            "platform.restoreReport",
            json!({"status": "success", "metrics": {"durationMs": 12.5}}),
        );
        emu.emit_platform("platform.neverSeenBefore", json!({"anything": [1, 2, 3]}));
        emu.flush_telemetry().await;
        let deliveries = emu.telemetry_deliveries();
        let ours: Vec<_> = deliveries
            .iter()
            .filter(|t| t.extension == EXTENSION_NAME)
            .collect();
        assert!(!ours.is_empty());
        assert!(ours.iter().all(|t| t.status == Some(200)), "{ours:?}");
        let batch = deliveries[before..]
            .iter()
            .find(|t| t.extension == EXTENSION_NAME)
            .expect("the batch was delivered");
        assert_eq!(batch.records, 5, "{batch:?}");

        shut_down_cleanly(&mut emu).await;
        assert_eq!(
            emf_function_total(&emu, "function_timeouts"),
            1.0,
            "{}",
            extension_log(&emu)
        );
        assert_eq!(
            emf_function_total(&emu, "restores"),
            1.0,
            "{}",
            extension_log(&emu)
        );
        assert!(emf_function_total(&emu, "telemetry_records_ignored") >= 1.0);
        assert_eq!(
            emf_function_total(&emu, "invocations"),
            1.0,
            "INVOKE events count, not telemetry"
        );
    })
    .await
}

/// Each accepted connection: when, and whether it went dead with the old host.
type Connections = Arc<Mutex<Vec<(Instant, Arc<AtomicBool>)>>>;

/// A plain HTTP/1.1 keep-alive server that answers `conn=<n>` and remembers when each
/// connection was accepted. [`HostMove::move_host`] makes it act as the old host would after
/// a restore elsewhere: every connection open until then is silently dead (nothing read,
/// nothing answered, no FIN, no RST).
struct HostMove {
    port: u16,
    conns: Connections,
    /// Requests that reached a connection after it went dead.
    lost: Arc<Mutex<Vec<usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HostMove {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HostMove {
    async fn start() -> HostMove {
        let listener = TcpListener::bind("127.0.0.2:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let conns: Connections = Arc::default();
        let lost: Arc<Mutex<Vec<usize>>> = Arc::default();
        let (c, l) = (conns.clone(), lost.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let dead = Arc::new(AtomicBool::new(false));
                let id = {
                    let mut all = c.lock().expect("conns");
                    all.push((Instant::now(), dead.clone()));
                    all.len() - 1
                };
                let lost = l.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = stream.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        if dead.load(Ordering::SeqCst) {
                            lost.lock().expect("lost").push(id);
                            // The old host: no answer, ever.
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let body = format!("conn={id}");
                            let reply = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if stream.write_all(reply.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        HostMove {
            port,
            conns,
            lost,
            task,
        }
    }

    fn move_host(&self) {
        for (_, dead) in self.conns.lock().expect("conns").iter() {
            dead.store(true, Ordering::SeqCst);
        }
    }

    fn accepted_at(&self, id: usize) -> Option<Instant> {
        self.conns.lock().expect("conns").get(id).map(|(at, _)| *at)
    }

    fn accepted(&self) -> usize {
        self.conns.lock().expect("conns").len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snap_start_after_a_restore_the_first_request_uses_a_connection_made_after_it() {
    bounded(async {
        let up = HostMove::start().await;
        let d = ExtensionsDir::with_warden();
        let cfg = d
            .proxy_config(free_port())
            .init_type(InitType::SnapStart)
            .timeout(Duration::from_secs(20))
            .env("EGRESS_WARDEN_WARM", format!("127.0.0.2:{}*2", up.port))
            .env("EGRESS_WARDEN_FLUSH_INTERVAL_S", "1");
        let mut emu = started_through_init(python_runtime(cfg, 1)).await;
        assert_eq!(
            up.accepted(),
            2,
            "the warm-up ran during INIT\n{}",
            extension_log(&emu)
        );
        assert_eq!(
            registered_events(&emu),
            vec![vec!["INVOKE".to_string(), "SHUTDOWN".to_string()]]
        );

        // Between INIT and the snapshot nothing is flushed, timer or not (no credentials then).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let early = emu.stdout_lines(EXTENSION_NAME);
        assert!(early.is_empty(), "{early:?}");
        emu.snapshot().await.expect("snapshot");
        // Stored for a while, then restored "elsewhere": the old connections are dead.
        tokio::time::sleep(Duration::from_millis(300)).await;
        up.move_host();
        let restored_at = Instant::now();
        let restore_phase = emu.restore().await.expect("restore");
        // The delivery that announced the restore is answered once the warm-up is done,
        // within the restore budget (1,000 ms) and its 100 ms of slack.
        eprintln!("restore phase (SIGCONT → telemetry answered): {restore_phase:?}");
        assert!(
            restore_phase < Duration::from_millis(1100),
            "{restore_phase:?}"
        );
        // The upstream registers connections in a task of this test, which a loaded machine
        // may run late: wait (before any request exists) until it has seen the warm-up's.
        let deadline = Instant::now() + Duration::from_secs(2);
        while up.accepted() < 4 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let before_invoke = up.accepted();
        assert_eq!(
            before_invoke,
            4,
            "two in INIT, two after the restore\n{}",
            extension_log(&emu)
        );

        let call =
            json!({"kind": "tunnel", "host": "127.0.0.2", "port": up.port, "path": "/first"});
        let out = emu
            .invoke_json(&json!({"calls": [call.clone(), call]}))
            .await
            .expect("invoke");
        assert!(
            out.is_success(),
            "{:?}\n{}",
            out.result,
            extension_log(&emu)
        );
        let answer = out.response_json().expect("json");
        let results = answer["results"].as_array().cloned().unwrap_or_default();
        assert_eq!(
            statuses(&answer),
            vec![200, 200],
            "{answer}\n{}",
            extension_log(&emu)
        );
        let first_conn: usize = results[0]["body"]
            .as_str()
            .and_then(|b| b.strip_prefix("conn="))
            .and_then(|n| n.parse().ok())
            .expect("conn=<n>");
        let opened = up.accepted_at(first_conn).expect("known connection");
        assert!(
            opened > restored_at,
            "opened after the restore\n{}",
            extension_log(&emu)
        );
        assert!(
            (2..before_invoke).contains(&first_conn),
            "served on a connection the upstream had before the invoke arrived (#{first_conn})\n{}",
            extension_log(&emu)
        );
        assert!(
            up.lost.lock().expect("lost").is_empty(),
            "no request met a pre-snapshot connection"
        );

        shut_down_cleanly(&mut emu).await;
        assert_eq!(
            emf_function_total(&emu, "restores"),
            1.0,
            "{}",
            extension_log(&emu)
        );
        assert_eq!(
            emf_function_total(&emu, "warm_connections"),
            4.0,
            "2 in INIT, 2 after the restore"
        );
        assert_eq!(emf_function_total(&emu, "requests"), 2.0);
        assert_eq!(emf_function_total(&emu, "errors"), 0.0);
        assert!(
            emf_function_total(&emu, "connections_reused") >= 1.0,
            "{}",
            extension_log(&emu)
        );
    })
    .await
}
