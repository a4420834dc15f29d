//! What the emulated execution environment looks like.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Which process plays the function's runtime.
#[derive(Clone, Default)]
pub enum Runtime {
    /// Spawn this executable as the function's `bootstrap` (through `AWS_LAMBDA_EXEC_WRAPPER`
    /// when the environment sets it: `wrapper bootstrap args…`).
    Command { program: PathBuf, args: Vec<String> },
    /// An in-process runtime that talks to the Runtime API over real HTTP and answers every
    /// invoke with `{"echo": <event>}`. An event may carry `"sleepMs": N` (answer after N ms)
    /// and `"fail": "ErrorType"` (post `/invocation/{id}/error` instead).
    #[default]
    Echo,
    /// An in-process runtime with a handler of your own (still over real HTTP).
    Handler(HandlerFn),
    /// No runtime at all: drive the Runtime API yourself with [`super::RuntimeClient`].
    Manual,
}

/// A handler for [`Runtime::Handler`]: the event in, `Ok(response)` or `Err((errorType, errorMessage))`.
pub type HandlerFn =
    Arc<dyn Fn(serde_json::Value) -> Result<serde_json::Value, (String, String)> + Send + Sync>;

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Runtime::Command { program, args } => f
                .debug_struct("Command")
                .field("program", program)
                .field("args", args)
                .finish(),
            Runtime::Echo => f.write_str("Echo"),
            Runtime::Handler(_) => f.write_str("Handler(..)"),
            Runtime::Manual => f.write_str("Manual"),
        }
    }
}

impl Runtime {
    pub fn command(program: impl Into<PathBuf>) -> Self {
        Runtime::Command {
            program: program.into(),
            args: Vec::new(),
        }
    }
}

/// `AWS_LAMBDA_INITIALIZATION_TYPE`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InitType {
    #[default]
    OnDemand,
    ProvisionedConcurrency,
    /// INIT once; then [`super::Emulator::snapshot`] and [`super::Emulator::restore`] before
    /// the invokes.
    SnapStart,
    /// Lambda Managed Instances: extensions may register for SHUTDOWN only, invocations run
    /// many at once ([`super::Emulator::invoke_many`]), the environment is never frozen, and
    /// the Telemetry API takes schema 2025-01-29 only.
    ManagedInstances,
}

impl InitType {
    pub fn as_str(self) -> &'static str {
        match self {
            InitType::OnDemand => "on-demand",
            InitType::ProvisionedConcurrency => "provisioned-concurrency",
            InitType::SnapStart => "snap-start",
            InitType::ManagedInstances => "lambda-managed-instances",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "on-demand" => Some(InitType::OnDemand),
            "provisioned-concurrency" => Some(InitType::ProvisionedConcurrency),
            "snap-start" => Some(InitType::SnapStart),
            "lambda-managed-instances" => Some(InitType::ManagedInstances),
            _ => None,
        }
    }
}

/// `shutdownReason` of the SHUTDOWN event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ShutdownReason {
    #[default]
    Spindown,
    Timeout,
    Failure,
}

impl ShutdownReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ShutdownReason::Spindown => "spindown",
            ShutdownReason::Timeout => "timeout",
            ShutdownReason::Failure => "failure",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "spindown" => Some(ShutdownReason::Spindown),
            "timeout" => Some(ShutdownReason::Timeout),
            "failure" => Some(ShutdownReason::Failure),
            _ => None,
        }
    }
}

/// The emulated function and execution environment.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// Like `/opt/extensions`: every executable file in it is launched, in name order.
    pub extensions_dir: Option<PathBuf>,
    pub runtime: Runtime,
    /// The function's environment variables (seen by the runtime and by extensions).
    pub env: BTreeMap<String, String>,
    pub function_name: String,
    pub function_version: String,
    pub handler: String,
    pub account_id: String,
    pub region: String,
    pub memory_mb: u32,
    /// The function timeout (invoke deadline).
    pub timeout: Duration,
    /// Limit for the whole INIT phase (extensions registering, runtime init).
    pub init_timeout: Duration,
    /// Time extensions get between the SHUTDOWN event and SIGKILL (2 s with external extensions).
    pub shutdown_grace: Duration,
    pub init_type: InitType,
    /// `LAMBDA_TASK_ROOT` (and the runtime's working directory when it exists).
    pub task_root: PathBuf,
    /// Echo every child's output line to this process's stdout, prefixed `[name] `.
    pub echo_output: bool,
    /// Refuse registrations for INVOKE whatever the execution model (an environment that
    /// behaves like Managed Instances while saying otherwise).
    pub refuse_invoke_registration: bool,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            extensions_dir: None,
            runtime: Runtime::Echo,
            env: BTreeMap::new(),
            function_name: "emulated-function".to_string(),
            function_version: "$LATEST".to_string(),
            handler: "bootstrap".to_string(),
            account_id: "123456789012".to_string(),
            region: "us-east-1".to_string(),
            memory_mb: 128,
            timeout: Duration::from_secs(3),
            init_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_millis(2000),
            init_type: InitType::OnDemand,
            task_root: PathBuf::from("/var/task"),
            echo_output: false,
            refuse_invoke_registration: false,
        }
    }
}

impl EmulatorConfig {
    /// A default environment that launches the extensions in `dir`.
    pub fn with_extensions_dir(dir: impl Into<PathBuf>) -> Self {
        EmulatorConfig {
            extensions_dir: Some(dir.into()),
            ..Default::default()
        }
    }

    /// Adds (or replaces) one function environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    pub fn runtime(mut self, runtime: Runtime) -> Self {
        self.runtime = runtime;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn init_type(mut self, init_type: InitType) -> Self {
        self.init_type = init_type;
        self
    }

    pub fn echo_output(mut self, echo: bool) -> Self {
        self.echo_output = echo;
        self
    }

    pub fn invoked_function_arn(&self) -> String {
        format!(
            "arn:aws:lambda:{}:{}:function:{}",
            self.region, self.account_id, self.function_name
        )
    }
}
