//! The shared state of one emulated execution environment.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::config::EmulatorConfig;
use super::telemetry::TelemetryHub;
use super::types::{ExitInfo, InitFailure, InvokeResult, LogEntry, OutputLine, ProtocolEvent};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Init,
    Idle,
    Invoking,
    /// An invoke timed out or failed: Lambda would reset the environment.
    Broken,
    /// SnapStart: every process stopped, waiting for [`super::Emulator::restore`].
    Snapshotted,
    ShuttingDown,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExtState {
    Launched,
    Registered,
    /// Waiting in (or about to call) `/event/next`.
    Ready,
    /// Holding an event it has not acknowledged by calling next again.
    Processing,
    InitError,
    ExitError,
}

pub(crate) struct PendingEvent {
    pub body: Bytes,
    pub event_type: &'static str,
    pub request_id: Option<String>,
}

pub(crate) struct ExtSlot {
    pub name: String,
    pub external: bool,
    pub id: Option<String>,
    pub events: Vec<String>,
    pub state: ExtState,
    pub pending: VecDeque<PendingEvent>,
    pub notify: Arc<Notify>,
    pub spawned_at: Option<Instant>,
    pub registered_at: Option<Instant>,
    pub first_next_at: Option<Instant>,
    /// The INVOKE last handed out: request id and when.
    pub delivered: Option<(String, Instant)>,
    /// The next call that followed it.
    pub acked: Option<(String, Instant)>,
    pub shutdown_delivered_at: Option<Instant>,
    pub init_error: Option<String>,
    pub exit_error: Option<String>,
}

impl ExtSlot {
    pub fn new(name: String, external: bool) -> Self {
        ExtSlot {
            name,
            external,
            id: None,
            events: Vec::new(),
            state: ExtState::Launched,
            pending: VecDeque::new(),
            notify: Arc::new(Notify::new()),
            spawned_at: None,
            registered_at: None,
            first_next_at: None,
            delivered: None,
            acked: None,
            shutdown_delivered_at: None,
            init_error: None,
            exit_error: None,
        }
    }

    pub fn subscribed(&self, event: &str) -> bool {
        self.events.iter().any(|e| e == event)
    }
}

/// An invocation waiting for the runtime's `/invocation/next`.
#[derive(Clone)]
pub(crate) struct InvocationMsg {
    pub request_id: String,
    pub deadline_ms: u64,
    pub arn: String,
    pub trace_id: String,
    pub payload: Bytes,
}

/// One of several invocations running at once (Managed Instances).
pub(crate) struct ConcurrentInvoke {
    pub delivered_to_runtime: Option<Instant>,
    pub result: Option<(InvokeResult, Instant)>,
}

pub(crate) struct CurrentInvoke {
    pub msg: InvocationMsg,
    pub targets: Vec<usize>,
    pub delivered_to_runtime: Option<Instant>,
    pub result: Option<(InvokeResult, Instant)>,
    pub produced_bytes: usize,
}

#[derive(Default)]
pub(crate) struct RuntimeSlot {
    pub started_at: Option<Instant>,
    pub first_next_at: Option<Instant>,
    pub pending: Option<InvocationMsg>,
    /// Managed Instances: invocations waiting for any of the runtime's concurrent `next`s.
    pub queue: VecDeque<InvocationMsg>,
    pub notify: Arc<Notify>,
    /// Has the process (or in-process task) been started?
    pub started: bool,
    pub init_error: Option<(Option<String>, Option<String>)>,
}

/// A child process the emulator launched.
pub(crate) struct ProcInfo {
    pub pid: u32,
    pub exit: Option<(ExitInfo, Instant)>,
    pub killed: bool,
    pub readers: Vec<JoinHandle<()>>,
}

pub(crate) struct State {
    pub phase: Phase,
    pub extensions: Vec<ExtSlot>,
    pub runtime: RuntimeSlot,
    pub current: Option<CurrentInvoke>,
    /// Managed Instances: the invocations under way, by request id.
    pub concurrent: HashMap<String, ConcurrentInvoke>,
    pub init_failure: Option<InitFailure>,
    pub init_done_at: Option<Instant>,
    pub invokes: u64,
    pub log: Vec<LogEntry>,
    pub procs: BTreeMap<String, ProcInfo>,
    pub shutdown_started: Option<Instant>,
}

pub(crate) struct Shared {
    pub cfg: EmulatorConfig,
    pub t0: Instant,
    pub addr: SocketAddr,
    st: Mutex<State>,
    changed: watch::Sender<u64>,
    /// Flips to true once the environment is gone (wakes handlers blocked in next).
    closing: watch::Sender<bool>,
    outputs: Mutex<HashMap<String, Vec<OutputLine>>>,
    output_changed: watch::Sender<u64>,
    pub telemetry: TelemetryHub,
    /// Environment handed to every child.
    pub env: BTreeMap<String, String>,
    /// The in-process runtime task, when the runtime is not a process.
    pub inproc_runtime: Mutex<Option<JoinHandle<()>>>,
}

impl Shared {
    pub fn new(cfg: EmulatorConfig, addr: SocketAddr, env: BTreeMap<String, String>) -> Self {
        Shared {
            cfg,
            t0: Instant::now(),
            addr,
            st: Mutex::new(State {
                phase: Phase::Init,
                extensions: Vec::new(),
                runtime: RuntimeSlot::default(),
                current: None,
                concurrent: HashMap::new(),
                init_failure: None,
                init_done_at: None,
                invokes: 0,
                log: Vec::new(),
                procs: BTreeMap::new(),
                shutdown_started: None,
            }),
            changed: watch::channel(0).0,
            closing: watch::channel(false).0,
            outputs: Mutex::new(HashMap::new()),
            output_changed: watch::channel(0).0,
            telemetry: TelemetryHub::default(),
            env,
            inproc_runtime: Mutex::new(None),
        }
    }

    /// The state; a panic elsewhere while holding it does not make it unusable.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes everyone waiting on a state change.
    pub fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn since_start(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.t0)
    }

    /// Appends to the protocol log (call with the state locked).
    pub fn log(&self, st: &mut State, event: ProtocolEvent) {
        st.log.push(LogEntry {
            at: self.t0.elapsed(),
            event,
        });
    }

    /// Re-evaluates `f` after every state change until it yields, or `deadline` passes
    /// (then `f` gets one last look).
    pub async fn wait_until<T>(
        &self,
        deadline: Option<Instant>,
        mut f: impl FnMut(&mut State) -> Option<T>,
    ) -> Option<T> {
        let mut rx = self.changed.subscribe();
        loop {
            if let Some(v) = f(&mut self.lock()) {
                return Some(v);
            }
            match deadline {
                Some(d) => {
                    if tokio::time::timeout_at(d.into(), rx.changed())
                        .await
                        .is_err()
                    {
                        return f(&mut self.lock());
                    }
                }
                None => {
                    if rx.changed().await.is_err() {
                        return None;
                    }
                }
            }
        }
    }

    /// Receives `true` once the environment has shut down.
    pub fn subscribe_closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    pub fn push_output(&self, name: &str, line: OutputLine) {
        {
            let mut out = self.outputs.lock().unwrap_or_else(|e| e.into_inner());
            out.entry(name.to_string()).or_default().push(line);
        }
        self.output_changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn output(&self, name: &str) -> Vec<OutputLine> {
        let out = self.outputs.lock().unwrap_or_else(|e| e.into_inner());
        out.get(name).cloned().unwrap_or_default()
    }

    pub fn output_changed(&self) -> watch::Receiver<u64> {
        self.output_changed.subscribe()
    }

    pub fn ext_index_by_id(st: &State, id: &str) -> Option<usize> {
        st.extensions
            .iter()
            .position(|e| e.id.as_deref() == Some(id))
    }

    pub fn is_exited(st: &State, name: &str) -> bool {
        st.procs.get(name).is_some_and(|p| p.exit.is_some())
    }
}
