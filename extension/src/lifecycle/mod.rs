//! The extension's life: bind the listeners, register for what the execution model allows,
//! subscribe to platform telemetry, do the INIT work, then follow Lambda's events
//! ([`events`]) until SHUTDOWN (or SIGTERM), flushing metrics on each INVOKE, on the timer
//! where one is set, and at the end.
//!
//! Order matters: Lambda starts the runtime's INIT as soon as every extension has registered,
//! so the proxy and DNS listeners are bound first and the function's first request finds them
//! ready; the readiness file ([`ready`]) is written before registering too, so the exec wrapper
//! that starts the runtime finds it.

mod events;
mod extensions_api;
mod flusher;
mod logging;
mod memory;
mod panics;
mod ready;
mod restore;
mod workers;

use crate::clock::InvocationClock;
use crate::config::{Config, InitType, Problem};
use crate::diagnose::{self, Diagnosis};
use crate::dns::{self, DnsCache, DnsServerHandle};
use crate::findings::Findings;
use crate::metrics::{Counter, Recorder, Timing};
use crate::proxy::{self, ProxyDeps, ProxyHandle};
use crate::shutdown;
use crate::telemetry::{self, TelemetryListener};
use crate::warm;
use events::EventLoop;
use extensions_api::{ExtensionsApi, RegisterError};
use flusher::Flusher;
use restore::RestoreWatch;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const DEFAULT_NAME: &str = "egress-warden";
const CONFIG_INVALID: &str = "Extension.ConfigInvalid";
/// Telemetry batches are delivered at least this often (Lambda's default).
const TELEMETRY_BUFFER_MS: u64 = 1_000;

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let started = Instant::now();
    let (config, problems) = Config::from_env();
    logging::init(config.log_level, config.log_json);
    for problem in &problems {
        tracing::error!(variable = %problem.variable, "{problem}");
    }
    let workers = workers::from_env();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .on_thread_park(logging::worker_parks)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    tracing::debug!(workers, "async runtime started");
    let code = runtime.block_on(run(config, problems, started));
    // Listeners and tasks close with the runtime; don't wait long for stragglers.
    runtime.shutdown_timeout(Duration::from_millis(100));
    logging::flush_all();
    code
}

/// The name Lambda knows us by: the file name in `/opt/extensions`.
fn extension_name() -> String {
    std::env::args_os()
        .next()
        .as_deref()
        .map(std::path::Path::new)
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .unwrap_or_else(|| DEFAULT_NAME.to_owned())
}

/// The events this execution model lets an extension register for.
fn events_for(init_type: InitType) -> &'static [&'static str] {
    if init_type.has_invoke_events() {
        &["INVOKE", "SHUTDOWN"]
    } else {
        &["SHUTDOWN"]
    }
}

/// Registers for what the execution model allows. Refused anyway (an execution model we do
/// not know of yet that refuses INVOKE), it registers again for SHUTDOWN only and carries on
/// without INVOKE events. Returns the API and whether INVOKE events will come.
async fn register(
    runtime_api: &str,
    name: &str,
    init_type: InitType,
) -> Result<(ExtensionsApi, bool), RegisterError> {
    let events = events_for(init_type);
    let (api, registered, events) = match ExtensionsApi::register(runtime_api, name, events).await {
        Err(RegisterError::Refused { status, body }) if events.contains(&"INVOKE") => {
            tracing::warn!(
                "Lambda refused a registration for INVOKE ({status}: {body}); registering for SHUTDOWN only, metrics flush on the timer"
            );
            let fallback = events_for(InitType::ManagedInstances);
            let (api, registered) = ExtensionsApi::register(runtime_api, name, fallback).await?;
            (api, registered, fallback)
        }
        result => {
            let (api, registered) = result?;
            (api, registered, events)
        }
    };
    tracing::info!(
        function = %registered.function_name,
        version = %registered.function_version,
        events = %events.join(","),
        "registered as {name}"
    );
    Ok((api, events.contains(&"INVOKE")))
}

/// Subscribes to the Telemetry API's platform records. Without them the extension still
/// works: invocations on Managed Instances go uncounted, a SnapStart restore is noticed on
/// the first event instead.
async fn subscribe_telemetry(
    api: &ExtensionsApi,
    config: &Config,
) -> Option<(
    TelemetryListener,
    mpsc::UnboundedReceiver<telemetry::Delivery>,
)> {
    let hold = config.restore_budget + Duration::from_millis(100);
    let (listener, rx) = match TelemetryListener::bind(hold) {
        Ok(bound) => bound,
        Err(err) => {
            tracing::warn!("cannot listen for the Telemetry API: {err}");
            return None;
        }
    };
    let schema = match config.lambda.initialization_type {
        InitType::ManagedInstances => telemetry::SCHEMA_MANAGED_INSTANCES,
        _ => telemetry::SCHEMA,
    };
    match api
        .subscribe_telemetry(schema, &["platform"], listener.uri(), TELEMETRY_BUFFER_MS)
        .await
    {
        Ok(()) => {
            tracing::debug!(
                uri = listener.uri(),
                schema,
                "subscribed to platform telemetry"
            );
            Some((listener, rx))
        }
        Err(err) => {
            tracing::warn!("the Telemetry API subscription failed: {err}");
            None
        }
    }
}

/// What the composition root hands out: each component gets the parts it uses.
struct Shared {
    config: Arc<Config>,
    recorder: Recorder,
    clock: Arc<InvocationClock>,
    findings: Arc<Findings>,
    shutdown: shutdown::Shutdown,
}

struct Services {
    cache: Option<Arc<DnsCache>>,
    _dns_server: Option<DnsServerHandle>,
    proxy: Option<ProxyHandle>,
    /// Tells the exec wrapper the proxy listens; removed when dropped.
    _ready: Option<ready::ReadyFile>,
}

/// Starts what the configuration asks for. A listener that cannot bind is switched off with
/// an error naming its variable; the rest runs.
async fn start_services(ctx: &Shared) -> Services {
    let cache = match DnsCache::new(&ctx.config.dns, ctx.config.dns_port, ctx.recorder.clone()) {
        Ok(cache) => Some(cache),
        Err(err) => {
            tracing::error!("the DNS cache is disabled: {err}");
            None
        }
    };
    let mut dns_server = None;
    if let (Some(cache), port) = (&cache, ctx.config.dns_port) {
        if port != 0 {
            match dns::bind(port, cache.clone(), ctx.shutdown.clone()).await {
                Ok(handle) => dns_server = Some(handle),
                Err(err) => tracing::error!(
                    variable = "EGRESS_WARDEN_DNS_PORT",
                    "the DNS listener is disabled: cannot bind 127.0.0.1:{port}: {err}"
                ),
            }
        }
    }
    let mut proxy_handle = None;
    let port = ctx.config.proxy_port;
    match (&cache, port) {
        (_, 0) => {}
        (None, _) => tracing::error!("the proxy is disabled because the DNS cache could not start"),
        (Some(cache), _) => match proxy::bind(ProxyDeps {
            config: ctx.config.clone(),
            recorder: ctx.recorder.clone(),
            clock: ctx.clock.clone(),
            findings: ctx.findings.clone(),
            shutdown: ctx.shutdown.clone(),
            dns: cache.clone(),
        })
        .await
        {
            Ok(handle) => proxy_handle = Some(handle),
            Err(err) => tracing::error!(
                variable = "EGRESS_WARDEN_PROXY_PORT",
                "the proxy is disabled: cannot bind 127.0.0.1:{port}: {err}"
            ),
        },
    }
    let ready_file = match &proxy_handle {
        Some(_) => match ready::ReadyFile::publish(Path::new(ready::DIR), port) {
            Ok(file) => {
                tracing::debug!("proxy readiness written to {}", file.path().display());
                Some(file)
            }
            Err(err) => {
                tracing::error!(
                    "cannot write {}/proxy-{port}: the exec wrapper will leave HTTP clients direct: {err}",
                    ready::DIR
                );
                None
            }
        },
        None => None,
    };
    Services {
        cache,
        _dns_server: dns_server,
        proxy: proxy_handle,
        _ready: ready_file,
    }
}

async fn run(config: Config, problems: Vec<Problem>, started: Instant) -> ExitCode {
    let Some(runtime_api) = std::env::var("AWS_LAMBDA_RUNTIME_API")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        tracing::error!("AWS_LAMBDA_RUNTIME_API is not set: egress-warden runs as a Lambda extension (/opt/extensions)");
        return ExitCode::FAILURE;
    };
    let config = Arc::new(config);
    let recorder = Recorder::new();
    panics::install_hook(recorder.clone());
    recorder.count(Counter::ConfigErrors, problems.len() as u64);

    let fail_init = config.strict && !problems.is_empty();
    let (shutdown_trigger, shutdown) = shutdown::channel();
    let clock = Arc::new(InvocationClock::new());
    let findings = Arc::new(Findings::default());
    let diagnosis = Diagnosis::start(
        recorder.clone(),
        clock.clone(),
        findings.clone(),
        diagnose::Settings::from_config(&config),
    );
    let ctx = Shared {
        config: config.clone(),
        recorder: recorder.clone(),
        clock: clock.clone(),
        findings,
        shutdown,
    };

    // Whatever an earlier life left: the wrapper must not trust it.
    if config.proxy_port != 0 {
        ready::clear(Path::new(ready::DIR), config.proxy_port);
    }
    // Kept alive until the end of `run`: dropping the handles closes the listeners (and
    // removes the readiness file).
    let services = if config.disable || fail_init {
        None
    } else {
        Some(start_services(&ctx).await)
    };

    let name = extension_name();
    let init_type = config.lambda.initialization_type;
    let (api, invoke_events) = match register(&runtime_api, &name, init_type).await {
        Ok(registered) => registered,
        Err(err) => {
            tracing::error!("registration with the Extensions API failed: {err}");
            return ExitCode::FAILURE;
        }
    };

    if fail_init {
        let message = problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        tracing::error!("EGRESS_WARDEN_STRICT=true and the configuration is invalid: failing INIT");
        if let Err(err) = api.init_error(CONFIG_INVALID, &message).await {
            tracing::error!("reporting the INIT error failed: {err}");
        }
        return ExitCode::FAILURE;
    }
    if config.disable {
        tracing::info!("EGRESS_WARDEN_DISABLE=true: registered, idling until SHUTDOWN");
        return events::idle(&api).await;
    }
    // Kept until the end of `run`: dropping the listener stops deliveries.
    let (_telemetry_listener, telemetry_rx) = match subscribe_telemetry(&api, &config).await {
        Some((listener, rx)) => (Some(listener), Some(rx)),
        None => (None, None),
    };
    // INIT work, before the first /event/next.
    let warmer = services
        .as_ref()
        .and_then(|s| s.proxy.as_ref())
        .map(ProxyHandle::warmer);
    let warmup = warm::Warmup::new(&config, recorder.clone());
    if let Some(warmer) = &warmer {
        warm::during_init(&warmup, warmer).await;
    }
    let mut restore = RestoreWatch::new(init_type == InitType::SnapStart);
    restore.init_done();
    if restore.awaiting_restore() {
        // The snapshot is taken once INIT ends: no connection from before it is ever handed
        // out. The warm-up still filled the DNS cache and readied the TLS configuration.
        if let Some(warmer) = &warmer {
            let closed = warmer.retire_all();
            tracing::debug!(closed, "SnapStart: connections closed before the snapshot");
        }
    }

    memory::watch();
    let init_ms = started.elapsed().as_secs_f64() * 1000.0;
    recorder.observe_ms(Timing::ExtensionInitMs, init_ms);
    // One per INIT: cold-start share = cold_starts / invocations.
    recorder.incr(Counter::ColdStarts);
    tracing::info!(
        initialization_type = init_type.as_str(),
        extension_init_ms = crate::metrics::log_ms(init_ms),
        "cold start"
    );
    let flusher = Flusher::configured(&config, &recorder, &clock, &ctx.findings);
    let inputs = events::Inputs {
        telemetry: telemetry_rx,
        warmer,
        dns: services.as_ref().and_then(|s| s.cache.clone()),
        invoke_events,
    };
    let parts = events::Parts {
        clock,
        recorder,
        diagnosis,
        shutdown: shutdown_trigger,
        warmup,
        flush_interval: config.flush_interval,
        pool_idle: config.pool_idle,
    };
    EventLoop::new(&api, parts, flusher, inputs, restore)
        .run()
        .await
}
