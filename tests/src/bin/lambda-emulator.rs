//! `lambda-emulator`: run extensions and a function under a local Lambda execution environment.
//!
//! ```text
//! lambda-emulator --extensions-dir DIR [--runtime PATH [--runtime-arg ARG]...]
//!                 [--task-root DIR] [--handler NAME]
//!                 [--env K=V]... [--invoke JSON]... [--invocations N]
//!                 [--shutdown-reason spindown|timeout|failure] [--function-name NAME]
//!                 [--timeout-ms MS] [--memory-mb MB] [--init-type on-demand|provisioned-concurrency|snap-start]
//!                 [--shutdown-grace-ms MS] [--emf-json PATH] [--quiet]
//! ```
//!
//! Children's output is echoed prefixed `[name] ` (unless `--quiet`); a summary follows, and
//! after SHUTDOWN the totals of every extension's EMF lines (`--emf-json` writes them as JSON).
//! Exit status 0 when INIT succeeded, every invoke answered successfully and every extension
//! exited 0 before the SHUTDOWN deadline; 1 otherwise; 2 for a usage error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use warden_tests::emf_summary::EmfSummary;
use warden_tests::emulator::{
    Emulator, EmulatorConfig, InitType, InvokeResult, Runtime, ShutdownReason, ShutdownReport,
};

const USAGE: &str =
    "usage: lambda-emulator --extensions-dir DIR [--runtime PATH [--runtime-arg ARG]...] \
[--task-root DIR] [--handler NAME] \
[--env K=V]... [--invoke JSON]... [--invocations N] [--shutdown-reason spindown|timeout|failure] \
[--function-name NAME] [--timeout-ms MS] [--memory-mb MB] \
[--init-type on-demand|provisioned-concurrency|snap-start] [--shutdown-grace-ms MS] \
[--emf-json PATH] [--quiet]
Without --runtime an in-process runtime answers {\"echo\": <event>} over the Runtime API.
--runtime PATH: the function's process (a bootstrap, or an interpreter with --runtime-arg:
  --runtime python3 --runtime-arg -m --runtime-arg awslambdaric --runtime-arg handler.fn);
  run through AWS_LAMBDA_EXEC_WRAPPER when --env sets it.
--task-root DIR: the runtime's working directory and LAMBDA_TASK_ROOT (default: the directory
  of --runtime when it names one, else /var/task).
--handler NAME: _HANDLER (default: bootstrap).
--emf-json PATH: also write the totals of the extensions' EMF lines as JSON.";

struct Args {
    cfg: EmulatorConfig,
    invokes: Vec<String>,
    invocations: Option<usize>,
    reason: ShutdownReason,
    emf_json: Option<PathBuf>,
}

/// A program path with a directory part, made absolute: the runtime starts in the task root,
/// where a relative path would name something else. A bare name is left for PATH to find.
fn absolute_program(p: PathBuf) -> PathBuf {
    if p.components().count() > 1 {
        std::fs::canonicalize(&p).unwrap_or(p)
    } else {
        p
    }
}

fn parse_args() -> Result<Args, String> {
    let mut cfg = EmulatorConfig::default().echo_output(true);
    let mut runtime: Option<PathBuf> = None;
    let mut runtime_args = Vec::new();
    let mut invokes = Vec::new();
    let mut invocations = None;
    let mut reason = ShutdownReason::Spindown;
    let mut task_root: Option<PathBuf> = None;
    let mut emf_json = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "-h" | "--help" => return Err(String::new()),
            "--extensions-dir" => cfg.extensions_dir = Some(PathBuf::from(val(&a)?)),
            "--runtime" => runtime = Some(PathBuf::from(val(&a)?)),
            "--runtime-arg" => runtime_args.push(val(&a)?),
            "--task-root" => {
                let d = val(&a)?;
                let dir = std::fs::canonicalize(&d)
                    .ok()
                    .filter(|p| p.is_dir())
                    .ok_or(format!("--task-root {d}: not a directory"))?;
                task_root = Some(dir);
            }
            "--handler" => cfg.handler = val(&a)?,
            "--emf-json" => emf_json = Some(PathBuf::from(val(&a)?)),
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
        let p = absolute_program(p);
        if let Some(dir) = p.parent().filter(|d| d.is_dir()) {
            cfg.task_root = dir.to_path_buf();
        }
        cfg.runtime = Runtime::Command {
            program: p,
            args: runtime_args,
        };
    }
    if let Some(dir) = task_root {
        cfg.task_root = dir;
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
        emf_json,
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
    let where_ = format!(
        "task root {}, _HANDLER {}",
        args.cfg.task_root.display(),
        args.cfg.handler
    );
    let mut emu = match Emulator::start(args.cfg).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("lambda-emulator: cannot start: {e}");
            return false;
        }
    };
    println!("== Runtime API on {}; {where_}", emu.runtime_api());
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
    let written = print_emf(&emu, args.emf_json.as_deref());
    ok && clean && written
}

/// The totals of each extension's EMF lines (stdout), and the JSON file when asked for; false
/// when that file cannot be written.
fn print_emf(emu: &Emulator, json_path: Option<&Path>) -> bool {
    let mut all = serde_json::Map::new();
    for name in emu.extension_names() {
        let lines = emu.stdout_lines(&name);
        let s = EmfSummary::from_lines(lines.iter().map(String::as_str));
        if s.documents == 0 {
            continue;
        }
        println!(
            "== EMF of {name}: {} documents; function-level counts summed (gauges at their peak), \
             then per dimension",
            s.documents
        );
        print!("{}", s.render());
        all.insert(name, s.to_json());
    }
    let Some(path) = json_path else {
        return true;
    };
    let text = serde_json::Value::Object(all).to_string();
    match std::fs::write(path, text) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("lambda-emulator: --emf-json {}: {e}", path.display());
            false
        }
    }
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
