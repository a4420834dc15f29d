//! The extension's life: bind the listeners, register, do the INIT work, then follow
//! Lambda's events until SHUTDOWN (or SIGTERM), flushing metrics on each INVOKE and at the end.
//!
//! Order matters: Lambda starts the runtime's INIT as soon as every extension has registered,
//! so the proxy and DNS listeners are bound first and the function's first request finds them
//! ready; the readiness file ([`ready`]) is written before registering too, so the exec wrapper
//! that starts the runtime finds it.

mod extensions_api;
mod logging;
mod panics;
mod ready;
mod workers;

use crate::config::{Config, MetricsSink, Problem};
use crate::context::{Context, InvocationClock};
use crate::dns::{self, DnsCache, DnsServerHandle};
use crate::metrics::cloudwatch::{self, CloudWatchSink};
use crate::metrics::{Counter, EmfWriter, Recorder, Snapshot, Timing};
use crate::proxy::{self, ProxyHandle, Warmer};
use crate::warm;
use extensions_api::{Event, ExtensionsApi};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

const DEFAULT_NAME: &str = "egress-warden";
const CONFIG_INVALID: &str = "Extension.ConfigInvalid";

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

async fn register(name: &str) -> Result<String, lambda_extension::Error> {
    let registered = lambda_extension::Extension::new()
        .with_extension_name(name)
        .with_events(&["INVOKE", "SHUTDOWN"])
        .register()
        .await?;
    tracing::info!(
        function = %registered.function_name,
        version = %registered.function_version,
        "registered as {name}"
    );
    Ok(registered.extension_id)
}

struct Services {
    _dns_server: Option<DnsServerHandle>,
    proxy: Option<ProxyHandle>,
    /// Tells the exec wrapper the proxy listens; removed when dropped.
    _ready: Option<ready::ReadyFile>,
}

/// Starts what the configuration asks for. A listener that cannot bind is switched off with
/// an error naming its variable; the rest runs.
async fn start_services(ctx: &Context) -> Services {
    let cache = match DnsCache::new(ctx) {
        Ok(cache) => Some(cache),
        Err(err) => {
            tracing::error!("the DNS cache is disabled: {err}");
            None
        }
    };
    let mut dns_server = None;
    if let (Some(cache), port) = (&cache, ctx.config.dns_port) {
        if port != 0 {
            match dns::bind(ctx, cache.clone()).await {
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
        (Some(cache), _) => match proxy::bind(ctx, cache.clone()).await {
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
        _dns_server: dns_server,
        proxy: proxy_handle,
        _ready: ready_file,
    }
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes everything recorded since the previous flush. A window that cannot be written is
/// put back so the next flush carries it.
struct Flusher {
    recorder: Recorder,
    emf: EmfWriter,
    sink: MetricsSink,
    /// Set for `cloudwatch` and `both` (in builds with the `cloudwatch` feature).
    cloudwatch: Option<CloudWatchSink>,
}

impl Flusher {
    /// On INVOKE. The CloudWatch send runs in the background: this returns without waiting
    /// on the network, so `/event/next` is never delayed.
    fn flush(&self) {
        let snapshot = self.recorder.take();
        if snapshot.is_empty() || self.sink == MetricsSink::Off {
            return;
        }
        match (&self.cloudwatch, self.sink) {
            (Some(cw), MetricsSink::CloudWatch) => cw.submit(snapshot),
            // `both`: a window EMF could not take is put back whole and sent with the next.
            (Some(cw), _) => {
                if let Some(snapshot) = self.write_emf(snapshot) {
                    cw.submit(snapshot);
                }
            }
            (None, _) => {
                self.write_emf(snapshot);
            }
        }
    }

    /// At SHUTDOWN or SIGTERM: everything left, the final CloudWatch send bounded by the
    /// deadline (epoch ms, when Lambda gave one).
    async fn finish(&self, deadline_ms: Option<u64>) {
        let Some(cw) = &self.cloudwatch else {
            return self.flush();
        };
        let mut snapshot = self.recorder.take();
        if self.sink == MetricsSink::Both && !snapshot.is_empty() {
            snapshot = self.write_emf(snapshot).unwrap_or_default();
        }
        let budget = cloudwatch::shutdown_budget(deadline_ms, epoch_ms());
        cw.finish(snapshot, budget).await;
    }

    /// Returns the window when EMF took it; otherwise it is back in the recorder.
    fn write_emf(&self, snapshot: Snapshot) -> Option<Snapshot> {
        let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.emf
                .write(&snapshot, epoch_ms(), &mut std::io::stdout().lock())
        }));
        match written {
            Ok(Ok(())) => return Some(snapshot),
            Ok(Err(err)) => {
                tracing::warn!("writing EMF failed, keeping the metrics for the next flush: {err}");
            }
            Err(_) => {}
        }
        self.recorder.restore(snapshot);
        None
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
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let ctx = Context {
        config: config.clone(),
        recorder: recorder.clone(),
        clock: Arc::new(InvocationClock::new()),
        findings: Default::default(),
        shutdown: shutdown_rx,
    };
    // Runs when the board is refreshed: on INVOKE and at the end, before each flush.
    let _diagnosis = crate::diagnose::Diagnosis::start(&ctx);

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
    let api = match register(&name).await {
        Ok(id) => ExtensionsApi::new(&runtime_api, id),
        Err(err) => {
            tracing::error!("registration with the Extensions API failed: {err}");
            return ExitCode::FAILURE;
        }
    };
    let api = match api {
        Ok(api) => api,
        Err(err) => {
            tracing::error!(
                "AWS_LAMBDA_RUNTIME_API={runtime_api:?} is not a usable address: {err}"
            );
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
        return idle(&api).await;
    }
    // INIT work, before the first /event/next.
    let warmer = services
        .as_ref()
        .and_then(|s| s.proxy.as_ref())
        .map(ProxyHandle::warmer);
    if let Some(warmer) = &warmer {
        warm::during_init(&ctx, warmer).await;
    }

    recorder.observe_ms(
        Timing::ExtensionInitMs,
        started.elapsed().as_secs_f64() * 1000.0,
    );
    let emf = EmfWriter::new(
        config.metrics.namespace.clone(),
        config.lambda.function_name.clone(),
    );
    let flusher = Flusher {
        recorder: recorder.clone(),
        cloudwatch: CloudWatchSink::start(&ctx, emf.clone()),
        emf,
        sink: config.metrics.sink,
    };
    let code = serve_events(&api, &ctx, &flusher, warmer.as_ref()).await;
    let _ = shutdown_tx.send(true);
    code
}

/// Follows INVOKE and SHUTDOWN events; SIGTERM ends it like a SHUTDOWN.
async fn serve_events(
    api: &ExtensionsApi,
    ctx: &Context,
    flusher: &Flusher,
    warmer: Option<&Warmer>,
) -> ExitCode {
    let mut sigterm = match signal(SignalKind::terminate()) {
        Ok(s) => Some(s),
        Err(err) => {
            tracing::warn!("cannot watch SIGTERM: {err}");
            None
        }
    };
    let rewarm = warm::Rewarm::default();
    loop {
        let event = tokio::select! {
            event = api.next_event() => event,
            Some(()) = async { match sigterm.as_mut() { Some(s) => s.recv().await, None => None } } => {
                logging::flush_all();
                tracing::info!("SIGTERM: flushing and exiting");
                ctx.findings.refresh();
                flusher.finish(None).await;
                return ExitCode::SUCCESS;
            }
        };
        match event {
            Event::Invoke {
                deadline_ms,
                request_id,
            } => {
                let gap = ctx.clock.begin_invocation(deadline_ms);
                if let Some(warmer) = warmer {
                    warm::after_thaw(ctx, warmer, &rewarm, gap);
                }
                ctx.recorder.incr(Counter::Invocations);
                tracing::debug!(%request_id, "INVOKE");
                ctx.findings.refresh();
                flusher.flush();
            }
            Event::Shutdown {
                deadline_ms,
                reason,
            } => {
                let left = deadline_ms.saturating_sub(epoch_ms());
                logging::flush_all();
                tracing::info!(%reason, "SHUTDOWN: flushing and exiting ({left} ms before the deadline)");
                ctx.findings.refresh();
                flusher.finish(Some(deadline_ms)).await;
                return ExitCode::SUCCESS;
            }
        }
    }
}

/// The kill switch: acknowledge every event and do nothing else.
async fn idle(api: &ExtensionsApi) -> ExitCode {
    loop {
        if let Event::Shutdown { .. } = api.next_event().await {
            return ExitCode::SUCCESS;
        }
    }
}
