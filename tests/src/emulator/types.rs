//! What the emulator reports: protocol log, captured output, INIT / invoke / SHUTDOWN results.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

/// How a child process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl ExitInfo {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code {c}"),
            (None, Some(s)) => write!(f, "signal {s}"),
            (None, None) => f.write_str("unknown exit"),
        }
    }
}

/// One protocol event, in the order the emulator saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtocolEvent {
    InitStart,
    Spawn {
        name: String,
        pid: u32,
    },
    SpawnFailed {
        name: String,
        error: String,
    },
    Register {
        name: String,
        id: String,
        events: Vec<String>,
        external: bool,
        accept_account_id: bool,
    },
    ExtensionNext {
        name: String,
    },
    EventDelivered {
        name: String,
        event_type: String,
        request_id: Option<String>,
    },
    ExtensionInitError {
        name: String,
        error_type: String,
        body: Option<String>,
    },
    ExtensionExitError {
        name: String,
        error_type: String,
        body: Option<String>,
    },
    TelemetrySubscribe {
        name: String,
        types: Vec<String>,
        uri: String,
    },
    RuntimeStart {
        how: String,
    },
    RuntimeNext,
    RuntimeInvokeDelivered {
        request_id: String,
    },
    RuntimeResponse {
        request_id: String,
        bytes: usize,
    },
    RuntimeError {
        request_id: String,
        error_type: Option<String>,
    },
    RuntimeInitError {
        error_type: Option<String>,
    },
    InitDone,
    InitFailed {
        reason: String,
    },
    InvokeStart {
        request_id: String,
    },
    InvokeEnd {
        request_id: String,
        status: String,
    },
    ShutdownStart {
        reason: String,
        deadline_ms: u64,
    },
    Signal {
        name: String,
        signal: i32,
    },
    Exit {
        name: String,
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// SnapStart: every process stopped, the memory as good as saved.
    Snapshot,
    /// SnapStart: the processes resumed from the snapshot.
    Restore,
    /// A request the API refused (4xx), with the `errorType` it answered.
    Rejected {
        method: String,
        path: String,
        status: u16,
        error_type: String,
    },
}

/// A protocol event and when it happened (since the emulator started).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub at: Duration,
    pub event: ProtocolEvent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line a child wrote (without its line terminator).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputLine {
    pub at: Duration,
    pub stream: Stream,
    pub text: String,
}

/// Per-extension timings of a successful INIT.
#[derive(Clone, Debug)]
pub struct ExtensionInit {
    pub name: String,
    pub external: bool,
    pub events: Vec<String>,
    /// From the emulator's start to the spawn of the process.
    pub spawned_after: Option<Duration>,
    pub registered_after: Option<Duration>,
    /// First `/extension/event/next`.
    pub ready_after: Option<Duration>,
}

#[derive(Clone, Debug)]
pub struct InitReport {
    pub duration: Duration,
    pub extensions: Vec<ExtensionInit>,
    pub runtime_ready_after: Option<Duration>,
}

/// Why INIT failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InitFailure {
    ExtensionInitError {
        name: String,
        error_type: String,
        body: Option<String>,
    },
    ExtensionCrash {
        name: String,
        exit: ExitInfo,
    },
    ExtensionExitError {
        name: String,
        error_type: String,
    },
    SpawnFailed {
        name: String,
        error: String,
    },
    RuntimeInitError {
        error_type: Option<String>,
        body: Option<String>,
    },
    RuntimeExit {
        exit: ExitInfo,
    },
    Timeout {
        waiting_for: Vec<String>,
    },
}

impl fmt::Display for InitFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitFailure::ExtensionInitError {
                name, error_type, ..
            } => write!(
                f,
                "extension {name} posted /extension/init/error ({error_type})"
            ),
            InitFailure::ExtensionCrash { name, exit } => {
                write!(
                    f,
                    "extension {name} exited during INIT ({exit}): Extension.Crash"
                )
            }
            InitFailure::ExtensionExitError { name, error_type } => {
                write!(
                    f,
                    "extension {name} posted /extension/exit/error ({error_type})"
                )
            }
            InitFailure::SpawnFailed { name, error } => write!(f, "cannot launch {name}: {error}"),
            InitFailure::RuntimeInitError { error_type, .. } => write!(
                f,
                "runtime posted /runtime/init/error ({})",
                error_type.as_deref().unwrap_or("no type")
            ),
            InitFailure::RuntimeExit { exit } => write!(f, "runtime exited during INIT ({exit})"),
            InitFailure::Timeout { waiting_for } => {
                write!(f, "INIT timed out waiting for {}", waiting_for.join(", "))
            }
        }
    }
}

/// INIT failed; as Lambda does, the emulator then shut the environment down.
#[derive(Clone, Debug)]
pub struct InitError {
    pub failure: InitFailure,
    pub shutdown: ShutdownReport,
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "INIT failed: {}", self.failure)
    }
}

impl std::error::Error for InitError {}

/// What the function answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InvokeResult {
    Response(Bytes),
    Error {
        error_type: Option<String>,
        body: Bytes,
    },
    Timeout,
    RuntimeExited(ExitInfo),
    /// An extension crashed or posted `/extension/exit/error` during the invoke.
    ExtensionFailed {
        name: String,
        reason: String,
    },
}

impl InvokeResult {
    pub fn status(&self) -> &'static str {
        match self {
            InvokeResult::Response(_) => "success",
            InvokeResult::Error { .. } => "error",
            InvokeResult::Timeout => "timeout",
            InvokeResult::RuntimeExited(_) | InvokeResult::ExtensionFailed { .. } => "failure",
        }
    }
}

/// When an extension got the INVOKE event and when it asked for the next one.
#[derive(Clone, Debug)]
pub struct ExtensionAck {
    pub name: String,
    /// From the invoke's start to the INVOKE event being handed out on `/event/next`.
    pub delivered_after: Option<Duration>,
    /// From the invoke's start to the following `/event/next` call.
    pub acked_after: Option<Duration>,
    /// From delivery to the following `/event/next` call (the extension's own overhead).
    pub latency: Option<Duration>,
}

#[derive(Clone, Debug)]
pub struct InvokeOutcome {
    pub request_id: String,
    pub result: InvokeResult,
    /// From the invoke's start until the runtime answered and every extension called next again.
    pub duration: Duration,
    /// From the invoke's start until the runtime answered.
    pub runtime_duration: Option<Duration>,
    pub extension_acks: Vec<ExtensionAck>,
}

impl InvokeOutcome {
    pub fn is_success(&self) -> bool {
        matches!(self.result, InvokeResult::Response(_))
    }

    /// The response body parsed as JSON, for a successful invoke.
    pub fn response_json(&self) -> Option<serde_json::Value> {
        match &self.result {
            InvokeResult::Response(b) => serde_json::from_slice(b).ok(),
            _ => None,
        }
    }

    pub fn ack(&self, name: &str) -> Option<&ExtensionAck> {
        self.extension_acks.iter().find(|a| a.name == name)
    }
}

/// How one extension process ended at SHUTDOWN.
#[derive(Clone, Debug)]
pub struct ExtensionExit {
    pub name: String,
    pub exit: Option<ExitInfo>,
    /// From the start of SHUTDOWN to the exit (None when it had exited before SHUTDOWN).
    pub elapsed: Option<Duration>,
    /// Exited by itself no later than the SHUTDOWN deadline.
    pub before_deadline: bool,
    /// The emulator had to SIGKILL it.
    pub killed: bool,
    /// The SHUTDOWN event was handed to it on `/event/next`.
    pub received_shutdown: bool,
}

#[derive(Clone, Debug)]
pub struct ShutdownReport {
    pub reason: String,
    pub deadline_ms: u64,
    pub grace: Duration,
    pub runtime: Option<ExitInfo>,
    pub extensions: Vec<ExtensionExit>,
}

impl ShutdownReport {
    pub fn extension(&self, name: &str) -> Option<&ExtensionExit> {
        self.extensions.iter().find(|e| e.name == name)
    }
}

/// One batch POSTed to a Telemetry API subscriber.
#[derive(Clone, Debug)]
pub struct TelemetryDelivery {
    pub extension: String,
    pub records: usize,
    pub status: Option<u16>,
    pub error: Option<String>,
}

/// Misuse of the emulator from a test.
#[derive(Debug)]
pub enum EmulatorError {
    Init(InitError),
    /// The environment cannot take an invoke in its current phase.
    NotReady(String),
    Io(std::io::Error),
}

impl fmt::Display for EmulatorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmulatorError::Init(e) => write!(f, "{e}"),
            EmulatorError::NotReady(p) => write!(f, "environment not ready for an invoke ({p})"),
            EmulatorError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for EmulatorError {}

impl From<std::io::Error> for EmulatorError {
    fn from(e: std::io::Error) -> Self {
        EmulatorError::Io(e)
    }
}

impl From<InitError> for EmulatorError {
    fn from(e: InitError) -> Self {
        EmulatorError::Init(e)
    }
}
