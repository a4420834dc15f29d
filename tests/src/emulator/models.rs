//! The execution models beyond one-invoke-at-a-time: Managed Instances (many invocations at
//! once, no INVOKE events for extensions) and SnapStart (a snapshot after INIT, restored
//! later), plus telemetry records of the test's choosing.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};

use super::config::InitType;
use super::state::{ConcurrentInvoke, InvocationMsg, Phase};
use super::types::{EmulatorError, InvokeOutcome, InvokeResult, ProtocolEvent};
use super::{clock, ms, process, random_hex, trace_id, Emulator};

/// How long the delivery of telemetry around a snapshot may take.
const TELEMETRY_FLUSH: Duration = Duration::from_secs(3);
/// How long stopping the processes for a snapshot may take.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// Whether process `pid` is stopped (or gone): state `T` in `/proc/PID/stat`.
fn stopped(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
    matches!(
        state.and_then(|r| r.chars().next()),
        Some('T' | 't' | 'Z' | 'X')
    )
}

impl Emulator {
    /// Managed Instances: queues every payload at once for the runtime's concurrent `next`
    /// calls and waits until each is answered or times out. No extension gets an event; the
    /// Telemetry API reports each invocation (`platform.start`, `platform.runtimeDone`,
    /// `platform.report` with `durationMs` only, as schema 2025-01-29 has it).
    pub async fn invoke_many(
        &mut self,
        payloads: Vec<Bytes>,
    ) -> Result<Vec<InvokeOutcome>, EmulatorError> {
        if self.shared.cfg.init_type != InitType::ManagedInstances {
            return Err(EmulatorError::NotReady(
                "invoke_many is for lambda-managed-instances".to_string(),
            ));
        }
        self.ensure_init().await?;
        let sh = self.shared.clone();
        let timeout = sh.cfg.timeout;
        let started = Instant::now();
        let mut ids = Vec::new();
        {
            let mut st = sh.lock();
            if st.phase != Phase::Idle {
                return Err(EmulatorError::NotReady(format!("{:?}", st.phase)));
            }
            for payload in payloads {
                let request_id = uuid::Uuid::new_v4().to_string();
                let msg = InvocationMsg {
                    request_id: request_id.clone(),
                    deadline_ms: clock::epoch_ms() + timeout.as_millis() as u64,
                    arn: sh.cfg.invoked_function_arn(),
                    trace_id: trace_id(),
                    payload,
                };
                st.invokes += 1;
                st.concurrent.insert(
                    request_id.clone(),
                    ConcurrentInvoke {
                        delivered_to_runtime: None,
                        result: None,
                    },
                );
                st.runtime.queue.push_back(msg);
                sh.log(
                    &mut st,
                    ProtocolEvent::InvokeStart {
                        request_id: request_id.clone(),
                    },
                );
                ids.push(request_id);
            }
            // Every waiting `next` looks again.
            st.runtime.notify.notify_waiters();
            st.runtime.notify.notify_one();
        }
        sh.bump();
        for id in &ids {
            sh.telemetry.platform(
                "platform.start",
                json!({"requestId": id, "version": sh.cfg.function_version}),
            );
        }
        let all_done = |st: &mut super::state::State| {
            ids.iter()
                .all(|id| st.concurrent.get(id).is_some_and(|i| i.result.is_some()))
                .then_some(())
        };
        sh.wait_until(Some(started + timeout), all_done).await;

        let mut outcomes = Vec::new();
        let mut st = sh.lock();
        for id in &ids {
            st.runtime.queue.retain(|m| &m.request_id != id);
            let inv = st.concurrent.remove(id);
            let (result, end) = match inv.and_then(|i| i.result) {
                Some((result, at)) => (result, at),
                None => (InvokeResult::Timeout, started + timeout),
            };
            let status = result.status().to_string();
            sh.log(
                &mut st,
                ProtocolEvent::InvokeEnd {
                    request_id: id.clone(),
                    status: status.clone(),
                },
            );
            let duration = end.saturating_duration_since(started);
            sh.telemetry.platform(
                "platform.runtimeDone",
                json!({"requestId": id, "status": status, "metrics": {"durationMs": ms(duration)}}),
            );
            sh.telemetry.platform(
                "platform.report",
                json!({"requestId": id, "status": status, "metrics": {"durationMs": ms(duration)}}),
            );
            outcomes.push(InvokeOutcome {
                request_id: id.clone(),
                result,
                duration,
                runtime_duration: Some(duration),
                extension_acks: Vec::new(),
            });
        }
        drop(st);
        sh.bump();
        Ok(outcomes)
    }

    /// SnapStart, after INIT: sends out the telemetry buffered so far, then stops every
    /// process (SIGSTOP to its process group), as Lambda does before it saves the memory.
    /// Whatever the test does before [`Emulator::restore`] happens "while the snapshot is
    /// stored": move the upstreams to a new host, let time pass.
    pub async fn snapshot(&mut self) -> Result<(), EmulatorError> {
        if self.shared.cfg.init_type != InitType::SnapStart {
            return Err(EmulatorError::NotReady(
                "snapshot is for snap-start".to_string(),
            ));
        }
        self.ensure_init().await?;
        let sh = self.shared.clone();
        sh.telemetry.flush(TELEMETRY_FLUSH).await;
        let running = self.running();
        for name in &running {
            process::signal(&sh, name, libc::SIGSTOP, true);
        }
        // kill(2) returns before the process stops: the memory is "saved" once every one has.
        let deadline = Instant::now() + STOP_WAIT;
        for pid in running.iter().filter_map(|name| self.pid(name)) {
            while !stopped(pid) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let mut st = sh.lock();
        st.phase = Phase::Snapshotted;
        sh.log(&mut st, ProtocolEvent::Snapshot);
        drop(st);
        sh.bump();
        Ok(())
    }

    /// Resumes every process (SIGCONT) and runs the restore phase's telemetry: the stale
    /// `platform.initStart` of the snapshot's INIT, `platform.restoreStart`,
    /// `platform.restoreRuntimeDone` and `platform.restoreReport`, delivered before this
    /// returns (a subscriber may hold its answer while it gets ready, as within Lambda's
    /// 10 s restore limit). Invokes may follow.
    pub async fn restore(&mut self) -> Result<Duration, EmulatorError> {
        let sh = self.shared.clone();
        if sh.lock().phase != Phase::Snapshotted {
            return Err(EmulatorError::NotReady(
                "no snapshot to restore".to_string(),
            ));
        }
        let started = Instant::now();
        for name in self.running() {
            process::signal(&sh, &name, libc::SIGCONT, true);
        }
        {
            let mut st = sh.lock();
            sh.log(&mut st, ProtocolEvent::Restore);
        }
        let cfg = &sh.cfg;
        sh.telemetry.platform(
            "platform.initStart",
            json!({"initializationType": cfg.init_type.as_str(), "phase": "init",
                   "functionName": cfg.function_name, "functionVersion": cfg.function_version}),
        );
        sh.telemetry.platform(
            "platform.restoreStart",
            json!({"runtimeVersion": "emulated", "functionName": cfg.function_name,
                   "functionVersion": cfg.function_version,
                   "instanceId": random_hex(16), "instanceMaxMemory": cfg.memory_mb}),
        );
        sh.telemetry.platform(
            "platform.restoreRuntimeDone",
            json!({"status": "success", "spans": []}),
        );
        sh.telemetry.platform(
            "platform.restoreReport",
            json!({"status": "success", "metrics": {"durationMs": ms(started.elapsed())}}),
        );
        sh.telemetry.flush(TELEMETRY_FLUSH).await;
        let mut st = sh.lock();
        st.phase = Phase::Idle;
        drop(st);
        sh.bump();
        Ok(started.elapsed())
    }

    /// Sends a telemetry record of any type to the subscribers (`platform.*` types go as
    /// platform records): with [`Emulator::flush_telemetry`], a batch of the test's making.
    pub fn emit_platform(&self, record_type: &str, record: Value) {
        self.shared.telemetry.platform(record_type, record);
    }

    /// Delivers every buffered telemetry record now and waits for the answers.
    pub async fn flush_telemetry(&self) {
        self.shared.telemetry.flush(TELEMETRY_FLUSH).await;
    }

    async fn ensure_init(&mut self) -> Result<(), EmulatorError> {
        match self.init_result() {
            None => {
                self.wait_init().await?;
                Ok(())
            }
            Some(Err(e)) => Err(EmulatorError::Init(e.clone())),
            Some(Ok(_)) => Ok(()),
        }
    }

    fn running(&self) -> Vec<String> {
        self.shared
            .lock()
            .procs
            .iter()
            .filter(|(_, p)| p.exit.is_none())
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// A payload for [`Emulator::invoke_many`].
pub fn payload(v: &Value) -> Bytes {
    Bytes::from(v.to_string())
}
