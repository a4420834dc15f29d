//! `lambda-emulator`: run extensions and a function under a local Lambda execution environment.
//!
//! ```text
//! lambda-emulator --extensions-dir DIR [--runtime PATH [--runtime-arg ARG]...]
//!                 [--env K=V]... [--invoke JSON]... [--invocations N]
//!                 [--shutdown-reason spindown|timeout|failure] [--function-name NAME]
//!                 [--timeout-ms MS] [--memory-mb MB] [--init-type on-demand|provisioned-concurrency|snap-start]
//!                 [--shutdown-grace-ms MS] [--quiet]
//! ```
//!
//! Children's output is echoed prefixed `[name] ` (unless `--quiet`); a summary follows.
//! Exit status 0 when INIT succeeded, every invoke answered successfully and every extension
//! exited 0 before the SHUTDOWN deadline; 1 otherwise; 2 for a usage error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use warden_tests::emulator::{
    Emulator, EmulatorConfig, InitType, InvokeResult, Runtime, ShutdownReason, ShutdownReport,
};

const USAGE: &str =
    "usage: lambda-emulator --extensions-dir DIR [--runtime PATH [--runtime-arg ARG]...] \
[--env K=V]... [--invoke JSON]... [--invocations N] [--shutdown-reason spindown|timeout|failure] \
[--function-name NAME] [--timeout-ms MS] [--memory-mb MB] \
[--init-type on-demand|provisioned-concurrency|snap-start] [--shutdown-grace-ms MS] [--quiet]
Without --runtime an in-process runtime answers {\"echo\": <event>} over the Runtime API.";

struct Args {
    cfg: EmulatorConfig,
    invokes: Vec<String>,
    invocations: Option<usize>,
    reason: ShutdownReason,
}

fn parse_args() -> Result<Args, String> {
    let mut cfg = EmulatorConfig::default().echo_output(true);
    let mut runtime: Option<PathBuf> = None;
    let mut runtime_args = Vec::new();
    let mut invokes = Vec::new();
    let mut invocations = None;
    let mut reason = ShutdownReason::Spindown;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "-h" | "--help" => return Err(String::new()),
            "--extensions-dir" => cfg.extensions_dir = Some(PathBuf::from(val(&a)?)),
            "--runtime" => runtime = Some(PathBuf::from(val(&a)?)),
            "--runtime-arg" => runtime_args.push(val(&a)?),
            "--env" => {
                let kv = val(&a)?;
                let (k, v) = kv
                    .split_once('=')
                    .ok_or(format!("--env {kv}: expected K=V"))?;
                cfg.env.insert(k.to_string(), v.to_string());
            }
            "--invoke" => invokes.push(val(&a)?),
            "--invocations" => {
                invocations = Some(
                    val(&a)?
                        .parse()
                        .map_err(|e| format!("--invocations: {e}"))?,
                )
            }
            "--shutdown-reason" => {
                let r = val(&a)?;
                reason = ShutdownReason::parse(&r).ok_or(format!("--shutdown-reason {r}"))?;
            }
            "--function-name" => cfg.function_name = val(&a)?,
            "--timeout-ms" => {
                cfg.timeout = Duration::from_millis(
                    val(&a)?.parse().map_err(|e| format!("--timeout-ms: {e}"))?,
                )
            }
            "--memory-mb" => {
                cfg.memory_mb = val(&a)?.parse().map_err(|e| format!("--memory-mb: {e}"))?
            }
            "--init-type" => {
                let t = val(&a)?;
                cfg.init_type = InitType::parse(&t).ok_or(format!("--init-type {t}"))?;
            }
            "--shutdown-grace-ms" => {
                cfg.shutdown_grace = Duration::from_millis(
                    val(&a)?
                        .parse()
                        .map_err(|e| format!("--shutdown-grace-ms: {e}"))?,
                )
            }
            "--quiet" => cfg.echo_output = false,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if let Some(p) = runtime {
        if let Some(dir) = p.parent().filter(|d| d.is_dir()) {
            cfg.task_root = dir.to_path_buf();
        }
        cfg.runtime = Runtime::Command {
            program: p,
            args: runtime_args,
        };
    }
    for i in &invokes {
        serde_json::from_str::<serde_json::Value>(i)
            .map_err(|e| format!("--invoke {i}: not JSON: {e}"))?;
    }
    Ok(Args {
        cfg,
        invokes,
        invocations,
        reason,
    })
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn print_shutdown(r: &ShutdownReport) -> bool {
    let mut ok = true;
    println!("== SHUTDOWN ({}), grace {}", r.reason, ms(r.grace));
    for e in &r.extensions {
        let exit = e
            .exit
            .map(|x| x.to_string())
            .unwrap_or_else(|| "still running".to_string());
        let when = e
            .elapsed
            .map(ms)
            .unwrap_or_else(|| "before SHUTDOWN".to_string());
        let verdict = if e.killed {
            "SIGKILLed at the deadline"
        } else if e.before_deadline {
            "before the deadline"
        } else {
            "after the deadline"
        };
        println!("   {}: {exit} after {when} ({verdict})", e.name);
        ok &= e.before_deadline && e.exit.is_some_and(|x| x.success());
    }
    if let Some(rt) = r.runtime {
        println!("   runtime: {rt}");
    }
    ok
}

async fn run(args: Args) -> bool {
    let mut emu = match Emulator::start(args.cfg).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("lambda-emulator: cannot start: {e}");
            return false;
        }
    };
    println!("== Runtime API on {}", emu.runtime_api());
    let init = match emu.wait_init().await {
        Ok(r) => r,
        Err(e) => {
            println!("== INIT FAILED: {}", e.failure);
            print_shutdown(&e.shutdown);
            return false;
        }
    };
    println!("== INIT ok in {}", ms(init.duration));
    for e in &init.extensions {
        let t = |d: Option<Duration>| d.map(ms).unwrap_or_else(|| "-".to_string());
        println!(
            "   {}: spawned +{}, registered +{} {:?}, first next +{}",
            e.name,
            t(e.spawned_after),
            t(e.registered_after),
            e.events,
            t(e.ready_after)
        );
    }
    let payloads = if args.invokes.is_empty() {
        vec!["{}".to_string()]
    } else {
        args.invokes
    };
    let n = args.invocations.unwrap_or(payloads.len());
    let mut ok = true;
    for i in 0..n {
        let payload = &payloads[i % payloads.len()];
        let out = match emu.invoke(payload.clone()).await {
            Ok(o) => o,
            Err(e) => {
                println!("== invoke {}/{n}: {e}", i + 1);
                ok = false;
                break;
            }
        };
        let acks: Vec<String> = out
            .extension_acks
            .iter()
            .map(|a| {
                format!(
                    "{} ack {}",
                    a.name,
                    a.latency.map(ms).unwrap_or_else(|| "none".to_string())
                )
            })
            .collect();
        let answer = match &out.result {
            InvokeResult::Response(b) => String::from_utf8_lossy(b).into_owned(),
            InvokeResult::Error { error_type, body } => format!(
                "ERROR {}: {}",
                error_type.as_deref().unwrap_or("-"),
                String::from_utf8_lossy(body)
            ),
            other => format!("{other:?}"),
        };
        println!(
            "== invoke {}/{n} {}: {} in {} [{}]\n   {answer}",
            i + 1,
            out.request_id,
            out.result.status(),
            ms(out.duration),
            acks.join(", ")
        );
        ok &= out.is_success();
        if !matches!(
            out.result,
            InvokeResult::Response(_) | InvokeResult::Error { .. }
        ) {
            break;
        }
    }
    let report = emu.shutdown(args.reason).await;
    let clean = print_shutdown(&report);
    ok && clean
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(m) => {
            if !m.is_empty() {
                eprintln!("lambda-emulator: {m}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let ok = tokio::select! {
        ok = run(args) => ok,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("lambda-emulator: interrupted");
            false
        }
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
