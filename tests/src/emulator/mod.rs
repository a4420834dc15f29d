//! A local Lambda execution environment on 127.0.0.1: Runtime API, Extensions API and
//! Telemetry API over HTTP, with Lambda's phase rules (INIT, INVOKE, SHUTDOWN), child
//! processes launched with Lambda's environment, their output captured line by line, and a
//! timestamped protocol log.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use warden_tests::emulator::{Emulator, EmulatorConfig, ShutdownReason};
//! let mut emu = Emulator::start(EmulatorConfig::with_extensions_dir("/tmp/exts")).await?;
//! emu.wait_init().await?;
//! let out = emu.invoke(r#"{"hello":1}"#).await?;
//! assert!(out.is_success());
//! let report = emu.shutdown(ShutdownReason::Spindown).await;
//! assert!(report.extensions.iter().all(|e| e.before_deadline));
//! # Ok(()) }
//! ```

mod api;
pub mod clock;
mod config;
mod models;
mod process;
mod runtime_client;
mod state;
mod telemetry;
mod types;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use config::{EmulatorConfig, HandlerFn, InitType, Runtime, ShutdownReason};
pub use models::payload;
pub use runtime_client::{Invocation, RawResponse, RuntimeClient};
pub use types::{
    EmulatorError, ExitInfo, ExtensionAck, ExtensionExit, ExtensionInit, InitError, InitFailure,
    InitReport, InvokeOutcome, InvokeResult, LogEntry, OutputLine, ProtocolEvent, ShutdownReport,
    Stream, TelemetryDelivery,
};

use state::{CurrentInvoke, ExtSlot, ExtState, InvocationMsg, PendingEvent, Phase, Shared, State};

/// The name under which the runtime process's output and exit are recorded.
pub const RUNTIME_NAME: &str = "runtime";

/// One emulated execution environment. Dropping it kills whatever it launched.
pub struct Emulator {
    shared: Arc<Shared>,
    server: JoinHandle<()>,
    driver: JoinHandle<()>,
    init_result: Option<Result<InitReport, InitError>>,
    shutdown_report: Option<ShutdownReport>,
}

/// Executable files of `dir`, in name order (as Lambda launches `/opt/extensions/*`).
pub fn discover_extensions(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
            found.push((entry.file_name().to_string_lossy().into_owned(), path));
        }
    }
    found.sort();
    Ok(found)
}

fn random_hex(n: usize) -> String {
    let mut s = String::new();
    while s.len() < n {
        s.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    s.truncate(n);
    s
}

fn trace_id() -> String {
    format!(
        "Root=1-{:08x}-{};Parent={};Sampled=0",
        clock::epoch_ms() / 1000,
        random_hex(24),
        random_hex(16)
    )
}

/// The environment Lambda gives the runtime and every extension.
fn build_env(cfg: &EmulatorConfig, addr: SocketAddr) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert(
        "PATH".to_string(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin/:/bin:/opt/bin".into()),
    );
    for k in ["LLVM_PROFILE_FILE", "RUST_BACKTRACE"] {
        if let Ok(v) = std::env::var(k) {
            env.insert(k.to_string(), v);
        }
    }
    env.insert("LANG".to_string(), "en_US.UTF-8".to_string());
    env.extend(cfg.env.clone());
    // Reserved variables: the function's configuration cannot override them.
    let now = clock::epoch_ms();
    let reserved = [
        ("AWS_LAMBDA_RUNTIME_API", addr.to_string()),
        ("AWS_LAMBDA_FUNCTION_NAME", cfg.function_name.clone()),
        ("AWS_LAMBDA_FUNCTION_VERSION", cfg.function_version.clone()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", cfg.memory_mb.to_string()),
        ("AWS_REGION", cfg.region.clone()),
        ("AWS_DEFAULT_REGION", cfg.region.clone()),
        (
            "AWS_LAMBDA_INITIALIZATION_TYPE",
            cfg.init_type.as_str().to_string(),
        ),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{}", cfg.function_name),
        ),
        (
            "AWS_LAMBDA_LOG_STREAM_NAME",
            format!(
                "{}/[{}]{}",
                clock::ymd_slashes(now),
                cfg.function_version,
                random_hex(32)
            ),
        ),
        ("LAMBDA_TASK_ROOT", cfg.task_root.display().to_string()),
        ("LAMBDA_RUNTIME_DIR", "/var/runtime".to_string()),
        ("_HANDLER", cfg.handler.clone()),
        ("TZ", ":UTC".to_string()),
    ];
    for (k, v) in reserved {
        env.insert(k.to_string(), v);
    }
    env
}

impl Emulator {
    /// Binds the APIs on 127.0.0.1 (a free port), launches the extensions and, once they have
    /// all registered, the runtime. INIT goes on in the background: see [`Emulator::wait_init`].
    pub async fn start(cfg: EmulatorConfig) -> io::Result<Emulator> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let exts = match &cfg.extensions_dir {
            Some(d) => discover_extensions(d)?,
            None => Vec::new(),
        };
        let env = build_env(&cfg, addr);
        let shared = Arc::new(Shared::new(cfg, addr, env));
        let server = tokio::spawn(api::serve(listener, shared.clone()));
        {
            let mut st = shared.lock();
            shared.log(&mut st, ProtocolEvent::InitStart);
            for (name, _) in &exts {
                st.extensions.push(ExtSlot::new(name.clone(), true));
            }
        }
        let cfg = &shared.cfg;
        shared.telemetry.platform(
            "platform.initStart",
            json!({
                "initializationType": cfg.init_type.as_str(),
                "phase": "init",
                "runtimeVersion": "emulated",
                "runtimeVersionArn": "arn:aws:lambda:local::runtime:emulated",
                "functionName": cfg.function_name,
                "functionVersion": cfg.function_version,
            }),
        );
        for (name, path) in &exts {
            if let Err(e) = process::spawn(&shared, name, path, &[], &shared.env, None) {
                let mut st = shared.lock();
                shared.log(
                    &mut st,
                    ProtocolEvent::SpawnFailed {
                        name: name.clone(),
                        error: e.to_string(),
                    },
                );
                if st.init_failure.is_none() {
                    st.init_failure = Some(InitFailure::SpawnFailed {
                        name: name.clone(),
                        error: e.to_string(),
                    });
                }
            }
        }
        shared.bump();
        let driver = tokio::spawn(init_driver(shared.clone()));
        Ok(Emulator {
            shared,
            server,
            driver,
            init_result: None,
            shutdown_report: None,
        })
    }

    /// `127.0.0.1:PORT`, the value of `AWS_LAMBDA_RUNTIME_API`.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    pub fn runtime_api(&self) -> String {
        self.shared.addr.to_string()
    }

    /// The environment every child got.
    pub fn child_env(&self) -> &BTreeMap<String, String> {
        &self.shared.env
    }

    pub fn config(&self) -> &EmulatorConfig {
        &self.shared.cfg
    }

    /// A client of the Runtime API (for [`Runtime::Manual`], or raw requests in tests).
    pub fn runtime_client(&self) -> RuntimeClient {
        RuntimeClient::new(self.shared.addr)
    }

    /// Waits until INIT ends: the runtime and every registered extension have called next.
    /// On failure the environment is shut down (reason `failure`), as Lambda does.
    pub async fn wait_init(&mut self) -> Result<InitReport, InitError> {
        if let Some(r) = &self.init_result {
            return r.clone();
        }
        let deadline = self.shared.t0 + self.shared.cfg.init_timeout;
        let status = self.shared.wait_until(Some(deadline), init_status).await;
        let result = match status {
            Some(Ok(())) => Ok(self.finish_init()),
            Some(Err(f)) => Err(f),
            None => {
                let waiting_for = waiting_for(&self.shared.lock());
                Err(InitFailure::Timeout { waiting_for })
            }
        };
        let result = match result {
            Ok(r) => Ok(r),
            Err(failure) => {
                {
                    let mut st = self.shared.lock();
                    if st.init_failure.is_none() {
                        st.init_failure = Some(failure.clone());
                    }
                    self.shared.log(
                        &mut st,
                        ProtocolEvent::InitFailed {
                            reason: failure.to_string(),
                        },
                    );
                }
                self.shared.telemetry.platform(
                    "platform.initReport",
                    json!({"initializationType": self.shared.cfg.init_type.as_str(), "phase": "init",
                           "status": "error", "errorType": "Extension.InitError",
                           "metrics": {"durationMs": ms(self.shared.t0.elapsed())}}),
                );
                let shutdown = self.shutdown(ShutdownReason::Failure).await;
                Err(InitError { failure, shutdown })
            }
        };
        self.init_result = Some(result.clone());
        result
    }

    fn finish_init(&self) -> InitReport {
        let sh = &self.shared;
        let now = Instant::now();
        let mut st = sh.lock();
        st.phase = Phase::Idle;
        st.init_done_at = Some(now);
        sh.log(&mut st, ProtocolEvent::InitDone);
        let rel = |i: Option<Instant>| i.map(|i| sh.since_start(i));
        let report = InitReport {
            duration: sh.since_start(now),
            extensions: st
                .extensions
                .iter()
                .map(|e| ExtensionInit {
                    name: e.name.clone(),
                    external: e.external,
                    events: e.events.clone(),
                    spawned_after: rel(e.spawned_at),
                    registered_after: rel(e.registered_at),
                    ready_after: rel(e.first_next_at),
                })
                .collect(),
            runtime_ready_after: rel(st.runtime.first_next_at),
        };
        drop(st);
        sh.telemetry.platform(
            "platform.initReport",
            json!({"initializationType": sh.cfg.init_type.as_str(), "phase": "init", "status": "success",
                   "metrics": {"durationMs": ms(report.duration)}, "spans": []}),
        );
        sh.telemetry.end_backlog();
        sh.bump();
        report
    }

    /// One invoke: the event goes to the runtime, INVOKE to every extension registered for it;
    /// done when the runtime has answered and every such extension has called next again, or
    /// at the function timeout.
    pub async fn invoke(
        &mut self,
        payload: impl Into<Bytes>,
    ) -> Result<InvokeOutcome, EmulatorError> {
        match &self.init_result {
            None => {
                self.wait_init().await?;
            }
            Some(Err(e)) => return Err(EmulatorError::Init(e.clone())),
            Some(Ok(_)) => {}
        }
        let sh = self.shared.clone();
        let payload = payload.into();
        let request_id = uuid::Uuid::new_v4().to_string();
        let timeout = sh.cfg.timeout;
        let started = Instant::now();
        let deadline_ms = clock::epoch_ms() + timeout.as_millis() as u64;
        let msg = InvocationMsg {
            request_id: request_id.clone(),
            deadline_ms,
            arn: sh.cfg.invoked_function_arn(),
            trace_id: trace_id(),
            payload,
        };
        let event = json!({
            "eventType": "INVOKE",
            "deadlineMs": deadline_ms,
            "requestId": request_id,
            "invokedFunctionArn": msg.arn,
            "tracing": {"type": "X-Amzn-Trace-Id", "value": msg.trace_id},
        })
        .to_string();
        let first_invoke;
        {
            let mut st = sh.lock();
            if st.phase != Phase::Idle {
                return Err(EmulatorError::NotReady(format!("{:?}", st.phase)));
            }
            st.phase = Phase::Invoking;
            st.invokes += 1;
            first_invoke = st.invokes == 1;
            let exited: Vec<bool> = st
                .extensions
                .iter()
                .map(|e| Shared::is_exited(&st, &e.name))
                .collect();
            let mut targets = Vec::new();
            for (i, e) in st.extensions.iter_mut().enumerate() {
                if !e.subscribed("INVOKE")
                    || exited[i]
                    || matches!(e.state, ExtState::InitError | ExtState::ExitError)
                {
                    continue;
                }
                e.pending.push_back(PendingEvent {
                    body: Bytes::from(event.clone()),
                    event_type: "INVOKE",
                    request_id: Some(request_id.clone()),
                });
                e.notify.notify_one();
                targets.push(i);
            }
            st.runtime.pending = Some(msg.clone());
            st.runtime.notify.notify_one();
            st.current = Some(CurrentInvoke {
                msg: msg.clone(),
                targets,
                delivered_to_runtime: None,
                result: None,
                produced_bytes: 0,
            });
            sh.log(
                &mut st,
                ProtocolEvent::InvokeStart {
                    request_id: request_id.clone(),
                },
            );
        }
        sh.bump();
        let tracing =
            json!({"spanId": random_hex(16), "type": "X-Amzn-Trace-Id", "value": msg.trace_id});
        sh.telemetry.platform(
            "platform.start",
            json!({"requestId": request_id, "version": sh.cfg.function_version, "tracing": tracing}),
        );

        let finished = sh
            .wait_until(Some(started + timeout), invoke_finished)
            .await
            .is_some();

        let mut st = sh.lock();
        let Some(cur) = st.current.take() else {
            return Err(EmulatorError::NotReady("invoke state lost".to_string()));
        };
        st.runtime.pending = None;
        let runtime_exit = st.procs.get(RUNTIME_NAME).and_then(|p| p.exit);
        let mut end = cur.result.as_ref().map(|(_, at)| *at);
        let mut acks = Vec::new();
        let mut ext_failure = None;
        for &i in &cur.targets {
            let e = &st.extensions[i];
            let delivered = e
                .delivered
                .as_ref()
                .filter(|(r, _)| *r == request_id)
                .map(|(_, at)| *at);
            let acked = e
                .acked
                .as_ref()
                .filter(|(r, _)| *r == request_id)
                .map(|(_, at)| *at);
            if let Some(a) = acked {
                end = Some(end.map_or(a, |x| x.max(a)));
            } else if let Some(err) = &e.exit_error {
                ext_failure.get_or_insert((e.name.clone(), format!("exit/error {err}")));
            } else if let Some((exit, _)) = st.procs.get(&e.name).and_then(|p| p.exit) {
                ext_failure.get_or_insert((e.name.clone(), format!("Extension.Crash ({exit})")));
            }
            acks.push(ExtensionAck {
                name: e.name.clone(),
                delivered_after: delivered.map(|d| d.saturating_duration_since(started)),
                acked_after: acked.map(|a| a.saturating_duration_since(started)),
                latency: match (delivered, acked) {
                    (Some(d), Some(a)) => Some(a.saturating_duration_since(d)),
                    _ => None,
                },
            });
        }
        // Events an extension never picked up are void after a reset.
        for &i in &cur.targets {
            st.extensions[i]
                .pending
                .retain(|p| p.event_type != "INVOKE");
        }
        let runtime_at = cur.result.as_ref().map(|(_, at)| *at);
        let result = match (finished, cur.result, ext_failure) {
            (_, _, Some((name, reason))) => InvokeResult::ExtensionFailed { name, reason },
            (true, Some((r, _)), None) => r,
            (_, None, None) if runtime_exit.is_some() => {
                InvokeResult::RuntimeExited(runtime_exit.map(|(e, _)| e).unwrap_or(ExitInfo {
                    code: None,
                    signal: None,
                }))
            }
            _ => InvokeResult::Timeout,
        };
        let duration = if finished {
            end.unwrap_or_else(Instant::now)
                .saturating_duration_since(started)
        } else {
            timeout
        };
        st.phase = if matches!(
            result,
            InvokeResult::Response(_) | InvokeResult::Error { .. }
        ) {
            Phase::Idle
        } else {
            Phase::Broken
        };
        let status = result.status();
        sh.log(
            &mut st,
            ProtocolEvent::InvokeEnd {
                request_id: request_id.clone(),
                status: status.to_string(),
            },
        );
        let init_ms = st
            .init_done_at
            .map(|d| ms(sh.since_start(d)))
            .unwrap_or(0.0);
        drop(st);
        sh.bump();

        let runtime_duration = runtime_at.map(|a| a.saturating_duration_since(started));
        let rt_ms = runtime_duration.map(ms).unwrap_or(ms(duration));
        let start_rfc =
            clock::rfc3339_ms(clock::epoch_ms().saturating_sub(duration.as_millis() as u64));
        sh.telemetry.platform(
            "platform.runtimeDone",
            json!({"requestId": request_id, "status": status,
                   "metrics": {"durationMs": rt_ms, "producedBytes": cur.produced_bytes},
                   "spans": [{"name": "responseLatency", "start": start_rfc, "durationMs": rt_ms},
                             {"name": "responseDuration", "start": start_rfc, "durationMs": 0.0}],
                   "tracing": tracing}),
        );
        let mut metrics = json!({
            "durationMs": ms(duration),
            "billedDurationMs": duration.as_millis() as u64 + 1,
            "memorySizeMB": sh.cfg.memory_mb,
            "maxMemoryUsedMB": sh.cfg.memory_mb.min(64),
        });
        if sh.cfg.init_type == InitType::ManagedInstances {
            // Schema 2025-01-29: the duration only.
            metrics = json!({"durationMs": ms(duration)});
        } else if first_invoke {
            metrics["initDurationMs"] = json!(init_ms);
        }
        sh.telemetry.platform(
            "platform.report",
            json!({"requestId": request_id, "status": status, "metrics": metrics, "tracing": tracing}),
        );
        Ok(InvokeOutcome {
            request_id,
            result,
            duration,
            runtime_duration,
            extension_acks: acks,
        })
    }

    /// [`Emulator::invoke`] with a JSON event.
    pub async fn invoke_json(&mut self, event: &Value) -> Result<InvokeOutcome, EmulatorError> {
        self.invoke(event.to_string()).await
    }

    /// SHUTDOWN: SIGTERM to the runtime, the SHUTDOWN event (deadline now + grace) to every
    /// extension registered for it, SIGKILL for whatever still runs at the deadline.
    /// Idempotent: later calls return the first report.
    pub async fn shutdown(&mut self, reason: ShutdownReason) -> ShutdownReport {
        if let Some(r) = &self.shutdown_report {
            return r.clone();
        }
        let sh = self.shared.clone();
        self.driver.abort();
        let grace = sh.cfg.shutdown_grace;
        let t_sd = Instant::now();
        let deadline = t_sd + grace;
        let deadline_ms = clock::epoch_ms() + grace.as_millis() as u64;
        {
            let mut st = sh.lock();
            st.phase = Phase::ShuttingDown;
            st.shutdown_started = Some(t_sd);
            st.runtime.pending = None;
            sh.log(
                &mut st,
                ProtocolEvent::ShutdownStart {
                    reason: reason.as_str().to_string(),
                    deadline_ms,
                },
            );
        }
        sh.bump();
        // Telemetry buffered so far goes out while subscribers still listen.
        sh.telemetry.flush(Duration::from_millis(200)).await;

        let inproc = sh
            .inproc_runtime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = inproc {
            task.abort();
        }
        process::signal(&sh, RUNTIME_NAME, libc::SIGTERM, false);

        let event = Bytes::from(
            json!({"eventType": "SHUTDOWN", "shutdownReason": reason.as_str(), "deadlineMs": deadline_ms})
                .to_string(),
        );
        {
            let mut st = sh.lock();
            let exited: Vec<bool> = st
                .extensions
                .iter()
                .map(|e| Shared::is_exited(&st, &e.name))
                .collect();
            for (i, e) in st.extensions.iter_mut().enumerate() {
                if e.subscribed("SHUTDOWN")
                    && e.id.is_some()
                    && !exited[i]
                    && !matches!(e.state, ExtState::InitError | ExtState::ExitError)
                {
                    e.pending.push_back(PendingEvent {
                        body: event.clone(),
                        event_type: "SHUTDOWN",
                        request_id: None,
                    });
                    e.notify.notify_one();
                }
            }
        }
        sh.bump();

        let all_exited = |st: &mut State| st.procs.values().all(|p| p.exit.is_some()).then_some(());
        sh.wait_until(Some(deadline), all_exited).await;
        let stragglers: Vec<String> = sh
            .lock()
            .procs
            .iter()
            .filter(|(_, p)| p.exit.is_none())
            .map(|(n, _)| n.clone())
            .collect();
        for name in &stragglers {
            process::signal(&sh, name, libc::SIGKILL, true);
        }
        if !stragglers.is_empty() {
            sh.wait_until(Some(Instant::now() + Duration::from_secs(2)), all_exited)
                .await;
        }
        // Let the output readers drain what the children wrote before they went.
        let readers: Vec<JoinHandle<()>> = sh
            .lock()
            .procs
            .values_mut()
            .flat_map(|p| std::mem::take(&mut p.readers))
            .collect();
        let drain_deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        for r in readers {
            let _ = tokio::time::timeout_at(drain_deadline, r).await;
        }

        let mut st = sh.lock();
        let extensions = st
            .extensions
            .iter()
            .filter_map(|e| {
                let p = st.procs.get(&e.name)?;
                let (exit, at) = match p.exit {
                    Some((x, at)) => (Some(x), Some(at)),
                    None => (None, None),
                };
                Some(ExtensionExit {
                    name: e.name.clone(),
                    exit,
                    elapsed: at.filter(|a| *a >= t_sd).map(|a| a - t_sd),
                    before_deadline: !p.killed && at.is_some_and(|a| a <= deadline),
                    killed: p.killed,
                    received_shutdown: e.shutdown_delivered_at.is_some(),
                })
            })
            .collect();
        let report = ShutdownReport {
            reason: reason.as_str().to_string(),
            deadline_ms,
            grace,
            runtime: st
                .procs
                .get(RUNTIME_NAME)
                .and_then(|p| p.exit.map(|(x, _)| x)),
            extensions,
        };
        st.phase = Phase::Done;
        drop(st);
        sh.bump();
        sh.close();
        sh.telemetry.close();
        self.server.abort();
        self.shutdown_report = Some(report.clone());
        report
    }

    /// Everything the emulator saw, in order.
    pub fn protocol_log(&self) -> Vec<LogEntry> {
        self.shared.lock().log.clone()
    }

    /// When the first event matching `pred` happened.
    pub fn first_event(&self, pred: impl Fn(&ProtocolEvent) -> bool) -> Option<Duration> {
        self.shared
            .lock()
            .log
            .iter()
            .find(|e| pred(&e.event))
            .map(|e| e.at)
    }

    /// Every line child `name` wrote (extension file name, or [`RUNTIME_NAME`]).
    pub fn output(&self, name: &str) -> Vec<OutputLine> {
        self.shared.output(name)
    }

    pub fn stdout_lines(&self, name: &str) -> Vec<String> {
        self.lines(name, Stream::Stdout)
    }

    pub fn stderr_lines(&self, name: &str) -> Vec<String> {
        self.lines(name, Stream::Stderr)
    }

    fn lines(&self, name: &str, stream: Stream) -> Vec<String> {
        self.shared
            .output(name)
            .into_iter()
            .filter(|l| l.stream == stream)
            .map(|l| l.text)
            .collect()
    }

    /// Waits up to `timeout` for a line of child `name` matching `pred`.
    pub async fn wait_for_line(
        &self,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&OutputLine) -> bool,
    ) -> Option<OutputLine> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.shared.output_changed();
        loop {
            if let Some(l) = self.shared.output(name).into_iter().find(|l| pred(l)) {
                return Some(l);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    /// Names of the extensions (launched and internal), in launch order.
    pub fn extension_names(&self) -> Vec<String> {
        self.shared
            .lock()
            .extensions
            .iter()
            .map(|e| e.name.clone())
            .collect()
    }

    pub fn pid(&self, name: &str) -> Option<u32> {
        self.shared.lock().procs.get(name).map(|p| p.pid)
    }

    pub fn exit_status(&self, name: &str) -> Option<ExitInfo> {
        self.shared
            .lock()
            .procs
            .get(name)
            .and_then(|p| p.exit.map(|(x, _)| x))
    }

    /// Waits up to `timeout` for child `name` to exit.
    pub async fn wait_exit(&self, name: &str, timeout: Duration) -> Option<ExitInfo> {
        self.shared
            .wait_until(Some(Instant::now() + timeout), |st| {
                st.procs.get(name).and_then(|p| p.exit.map(|(x, _)| x))
            })
            .await
    }

    pub fn telemetry_deliveries(&self) -> Vec<TelemetryDelivery> {
        self.shared.telemetry.deliveries()
    }

    pub fn init_result(&self) -> Option<&Result<InitReport, InitError>> {
        self.init_result.as_ref()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.shared.close();
        self.server.abort();
        self.driver.abort();
        if let Some(t) = self
            .shared
            .inproc_runtime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            t.abort();
        }
        let names: Vec<String> = self
            .shared
            .lock()
            .procs
            .iter()
            .filter(|(_, p)| p.exit.is_none())
            .map(|(n, _)| n.clone())
            .collect();
        for n in names {
            process::signal(&self.shared, &n, libc::SIGKILL, true);
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// Who INIT is still waiting for.
fn waiting_for(st: &State) -> Vec<String> {
    let mut w: Vec<String> = st
        .extensions
        .iter()
        .filter(|e| e.first_next_at.is_none() && (e.external || e.registered_at.is_some()))
        .map(|e| e.name.clone())
        .collect();
    if st.runtime.first_next_at.is_none() {
        w.push(RUNTIME_NAME.to_string());
    }
    w
}

/// `Some(Ok)` when INIT is complete, `Some(Err)` when it failed, `None` while it goes on.
fn init_status(st: &mut State) -> Option<Result<(), InitFailure>> {
    if st.phase != Phase::Init && st.init_failure.is_none() {
        return Some(Ok(()));
    }
    if let Some(f) = &st.init_failure {
        return Some(Err(f.clone()));
    }
    for e in &st.extensions {
        if let Some((exit, _)) = st.procs.get(&e.name).and_then(|p| p.exit) {
            return Some(Err(InitFailure::ExtensionCrash {
                name: e.name.clone(),
                exit,
            }));
        }
    }
    if let Some((exit, _)) = st.procs.get(RUNTIME_NAME).and_then(|p| p.exit) {
        return Some(Err(InitFailure::RuntimeExit { exit }));
    }
    if !st.runtime.started || st.runtime.first_next_at.is_none() {
        return None;
    }
    let all_ready = st.extensions.iter().all(|e| {
        if e.external {
            e.first_next_at.is_some()
        } else {
            e.registered_at.is_none() || e.first_next_at.is_some()
        }
    });
    all_ready.then_some(Ok(()))
}

/// `Some` once the runtime has answered (or died) and every INVOKE target called next again
/// (or failed).
fn invoke_finished(st: &mut State) -> Option<()> {
    let cur = st.current.as_ref()?;
    let rid = &cur.msg.request_id;
    let runtime_done =
        cur.result.is_some() || st.procs.get(RUNTIME_NAME).is_some_and(|p| p.exit.is_some());
    let exts_done = cur.targets.iter().all(|&i| {
        let e = &st.extensions[i];
        e.acked.as_ref().is_some_and(|(r, _)| r == rid)
            || matches!(e.state, ExtState::ExitError | ExtState::InitError)
            || Shared::is_exited(st, &e.name)
    });
    (runtime_done && exts_done).then_some(())
}

/// Waits for every launched extension to register, then starts the runtime.
async fn init_driver(shared: Arc<Shared>) {
    let deadline = shared.t0 + shared.cfg.init_timeout;
    let outcome = shared
        .wait_until(Some(deadline), |st| {
            if st.init_failure.is_some() || st.phase != Phase::Init {
                return Some(false);
            }
            for e in st.extensions.iter().filter(|e| e.external) {
                if e.registered_at.is_none() {
                    if let Some((exit, _)) = st.procs.get(&e.name).and_then(|p| p.exit) {
                        st.init_failure = Some(InitFailure::ExtensionCrash {
                            name: e.name.clone(),
                            exit,
                        });
                        return Some(false);
                    }
                    return None;
                }
            }
            Some(true)
        })
        .await;
    match outcome {
        Some(true) => start_runtime(&shared),
        Some(false) => shared.bump(),
        None => {
            let mut st = shared.lock();
            if st.init_failure.is_none() {
                let waiting_for = st
                    .extensions
                    .iter()
                    .filter(|e| e.external && e.registered_at.is_none())
                    .map(|e| e.name.clone())
                    .collect();
                st.init_failure = Some(InitFailure::Timeout { waiting_for });
            }
            drop(st);
            shared.bump();
        }
    }
}

fn start_runtime(shared: &Arc<Shared>) {
    let how = match &shared.cfg.runtime {
        Runtime::Command { program, args } => {
            let wrapper = shared
                .env
                .get("AWS_LAMBDA_EXEC_WRAPPER")
                .filter(|w| !w.trim().is_empty());
            let (prog, args) = match wrapper {
                Some(w) => {
                    let mut a = vec![program.display().to_string()];
                    a.extend(args.iter().cloned());
                    (PathBuf::from(w), a)
                }
                None => (program.clone(), args.clone()),
            };
            let cwd = shared
                .cfg
                .task_root
                .is_dir()
                .then_some(shared.cfg.task_root.as_path());
            match process::spawn(shared, RUNTIME_NAME, &prog, &args, &shared.env, cwd) {
                Ok(_) => format!("process {}", prog.display()),
                Err(e) => {
                    let mut st = shared.lock();
                    shared.log(
                        &mut st,
                        ProtocolEvent::SpawnFailed {
                            name: RUNTIME_NAME.to_string(),
                            error: e.to_string(),
                        },
                    );
                    if st.init_failure.is_none() {
                        st.init_failure = Some(InitFailure::SpawnFailed {
                            name: RUNTIME_NAME.to_string(),
                            error: e.to_string(),
                        });
                    }
                    drop(st);
                    shared.bump();
                    return;
                }
            }
        }
        Runtime::Echo | Runtime::Handler(_) => {
            let handler = match &shared.cfg.runtime {
                Runtime::Handler(h) => Some(h.clone()),
                _ => None,
            };
            let client = RuntimeClient::new(shared.addr);
            let task = tokio::spawn(in_process_runtime(client, handler));
            *shared
                .inproc_runtime
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(task);
            "in-process".to_string()
        }
        Runtime::Manual => "manual".to_string(),
    };
    let mut st = shared.lock();
    st.runtime.started = true;
    if st.runtime.started_at.is_none() {
        st.runtime.started_at = Some(Instant::now());
    }
    shared.log(&mut st, ProtocolEvent::RuntimeStart { how });
    drop(st);
    shared.bump();
}

/// The Echo / Handler runtime: next → handler → response or error, until the API goes away.
async fn in_process_runtime(client: RuntimeClient, handler: Option<HandlerFn>) {
    loop {
        let Ok(inv) = client.next().await else {
            return;
        };
        let event: Value = serde_json::from_slice(&inv.payload).unwrap_or(Value::Null);
        let outcome = match &handler {
            Some(h) => h(event),
            None => {
                if let Some(ms) = event.get("sleepMs").and_then(Value::as_u64) {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                match event.get("fail").and_then(Value::as_str) {
                    Some(t) => Err((t.to_string(), "failure requested by the event".to_string())),
                    None => Ok(json!({ "echo": event })),
                }
            }
        };
        let sent = match outcome {
            Ok(v) => client.respond(&inv.request_id, v.to_string()).await,
            Err((t, m)) => client.error(&inv.request_id, &t, &m).await,
        };
        if sent.is_err() {
            return;
        }
    }
}
