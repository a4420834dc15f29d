//! `lifecycle-bench`: lifecycle timings and footprint of an extension binary under the local
//! Lambda emulator, printed as a Markdown table.
//!
//! ```text
//! lifecycle-bench --extension PATH [--runs R] [--invokes N] [--env K=V]... [--telemetry-peer PATH] [--check]
//! ```
//!
//! * exec → `/extension/register` and exec → first `/extension/event/next` (median and max of
//!   R cold starts; target ≤ 5 ms for the first next, without warm-up targets);
//! * INVOKE handed out → the following `/event/next` (p50 / p99 / max over N invokes; target
//!   p99 ≤ 0.5 ms);
//! * idle RSS after INIT (`VmRSS` from `/proc/PID/status`; target ≤ 10 MiB);
//! * SHUTDOWN event → exit.
//!
//! Times are taken by the emulator when its handlers run, so they include its own HTTP parsing
//! on 127.0.0.1. `--check` makes the exit status 1 when a target is missed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use warden_tests::emulator::{Emulator, EmulatorConfig, ProtocolEvent, ShutdownReason};
use warden_tests::warden::{free_port, ExtensionsDir, EXTENSION_NAME};

struct Args {
    extension: PathBuf,
    runs: usize,
    invokes: usize,
    env: Vec<(String, String)>,
    /// Another extension, staged beside, that subscribes to the Telemetry API and registers
    /// for SHUTDOWN only (`fake-extension`): the emulator's delivery work, without egress-warden's.
    telemetry_peer: Option<PathBuf>,
    check: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut extension = std::env::var_os("EGRESS_WARDEN_BIN").map(PathBuf::from);
    let mut runs = 10;
    let mut invokes = 1000;
    let mut env = Vec::new();
    let mut check = false;
    let mut telemetry_peer = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = |n: &str| it.next().ok_or(format!("{n} needs a value"));
        match a.as_str() {
            "--extension" => extension = Some(PathBuf::from(val(&a)?)),
            "--runs" => runs = val(&a)?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--invokes" => invokes = val(&a)?.parse().map_err(|e| format!("--invokes: {e}"))?,
            "--env" => {
                let kv = val(&a)?;
                let (k, v) = kv
                    .split_once('=')
                    .ok_or(format!("--env {kv}: expected K=V"))?;
                env.push((k.to_string(), v.to_string()));
            }
            "--telemetry-peer" => telemetry_peer = Some(PathBuf::from(val(&a)?)),
            "--check" => check = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let extension = extension.ok_or("--extension PATH (or EGRESS_WARDEN_BIN) is required")?;
    if !extension.is_file() {
        return Err(format!(
            "{} does not exist: build it first (cargo build --release -p egress-warden)",
            extension.display()
        ));
    }
    Ok(Args {
        extension,
        runs: runs.max(1),
        invokes,
        env,
        telemetry_peer,
        check,
    })
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// User plus system CPU time of every thread of `pid` so far.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); the first after the name is field 3.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf reads a constant of the system.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    Some(Duration::from_millis(ticks * 1000 / per_second.max(1)))
}

fn vm_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[derive(Default)]
struct Samples {
    register: Vec<Duration>,
    first_next: Vec<Duration>,
    rss_kib: Vec<u64>,
    /// The extension's CPU time over the invokes, and how many there were.
    invoke_cpu: Option<(Duration, usize)>,
    ack: Vec<Duration>,
    shutdown: Vec<Duration>,
    failures: Vec<String>,
}

async fn one_run(args: &Args, s: &mut Samples, with_invokes: bool) -> Result<(), String> {
    let dir = ExtensionsDir::new().map_err(|e| e.to_string())?;
    dir.add(EXTENSION_NAME, &args.extension)
        .map_err(|e| e.to_string())?;
    let mut cfg = EmulatorConfig::with_extensions_dir(dir.path())
        .env("EGRESS_WARDEN_PROXY_PORT", free_port().to_string())
        .env("EGRESS_WARDEN_DNS_PORT", free_port().to_string())
        .env("EGRESS_WARDEN_DNS_UPSTREAMS", "127.0.0.1:1");
    for (k, v) in &args.env {
        cfg.env.insert(k.clone(), v.clone());
    }
    if let Some(peer) = &args.telemetry_peer {
        dir.add("telemetry-peer", peer).map_err(|e| e.to_string())?;
        cfg.env.insert("FAKE_EXT_EVENTS".into(), "SHUTDOWN".into());
        cfg.env.insert("FAKE_EXT_TELEMETRY".into(), "1".into());
    }
    cfg.timeout = Duration::from_secs(10);
    let mut emu = Emulator::start(cfg).await.map_err(|e| e.to_string())?;
    emu.wait_init().await.map_err(|e| e.to_string())?;
    let at = |pred: &dyn Fn(&ProtocolEvent) -> bool| emu.first_event(pred);
    let spawn = at(&|e| matches!(e, ProtocolEvent::Spawn { name, .. } if name == EXTENSION_NAME));
    let reg = at(&|e| matches!(e, ProtocolEvent::Register { name, .. } if name == EXTENSION_NAME));
    let next =
        at(&|e| matches!(e, ProtocolEvent::ExtensionNext { name } if name == EXTENSION_NAME));
    if let (Some(sp), Some(r), Some(n)) = (spawn, reg, next) {
        s.register.push(r.saturating_sub(sp));
        s.first_next.push(n.saturating_sub(sp));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    if let Some(kib) = emu.pid(EXTENSION_NAME).and_then(|p| vm_kib(p, "VmRSS:")) {
        s.rss_kib.push(kib);
    }
    if with_invokes {
        let pid = emu.pid(EXTENSION_NAME);
        let cpu_before = pid.and_then(cpu_time);
        for i in 0..args.invokes {
            let out = emu.invoke("{}").await.map_err(|e| e.to_string())?;
            if !out.is_success() {
                s.failures.push(format!("invoke {i}: {:?}", out.result));
                break;
            }
            if let Some(l) = out.ack(EXTENSION_NAME).and_then(|a| a.latency) {
                s.ack.push(l);
            }
        }
        // Telemetry of the last invokes is delivered within a second.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        if let (Some(before), Some(after)) = (cpu_before, pid.and_then(cpu_time)) {
            s.invoke_cpu = Some((after.saturating_sub(before), args.invokes));
        }
    }
    let report = emu.shutdown(ShutdownReason::Spindown).await;
    match report.extension(EXTENSION_NAME) {
        Some(e) if e.before_deadline && e.exit.is_some_and(|x| x.success()) => {
            if let Some(el) = e.elapsed {
                s.shutdown.push(el);
            }
        }
        other => s.failures.push(format!("SHUTDOWN: {other:?}")),
    }
    Ok(())
}

fn row(metric: &str, value: String, target: &str, ok: Option<bool>) -> String {
    let verdict = match ok {
        Some(true) => "yes",
        Some(false) => "**NO**",
        None => "",
    };
    format!("| {metric} | {value} | {target} | {verdict} |")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(m) => {
            if !m.is_empty() {
                eprintln!("lifecycle-bench: {m}");
            }
            eprintln!("usage: lifecycle-bench --extension PATH [--runs R] [--invokes N] [--env K=V]... [--telemetry-peer PATH] [--check]");
            return ExitCode::from(2);
        }
    };
    let mut s = Samples::default();
    for r in 0..args.runs {
        if let Err(e) = one_run(&args, &mut s, r == 0).await {
            s.failures.push(format!("run {r}: {e}"));
        }
    }
    for v in [
        &mut s.register,
        &mut s.first_next,
        &mut s.ack,
        &mut s.shutdown,
    ] {
        v.sort();
    }
    s.rss_kib.sort();
    let median = |v: &[Duration]| quantile(v, 0.5);
    let max = |v: &[Duration]| v.last().copied().unwrap_or_default();
    let first_next_ok =
        !s.first_next.is_empty() && median(&s.first_next) <= Duration::from_millis(5);
    let p99 = quantile(&s.ack, 0.99);
    let ack_ok = !s.ack.is_empty() && p99 <= Duration::from_micros(500);
    let rss = s.rss_kib.last().copied().unwrap_or(0);
    let rss_ok = !s.rss_kib.is_empty() && rss <= 10 * 1024;
    let size = std::fs::metadata(&args.extension)
        .map(|m| m.len())
        .unwrap_or(0);

    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".to_string());
    println!(
        "Extension `{}` ({:.1} MiB), {} cold starts, {} invokes, {} CPUs, 1-min load average {load} at the end.\n",
        args.extension.display(),
        size as f64 / (1024.0 * 1024.0),
        args.runs,
        s.ack.len(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    );
    println!("| metric | value | target | met |");
    println!("|---|---|---|---|");
    println!(
        "{}",
        row(
            "exec → register",
            format!("{} (max {})", ms(median(&s.register)), ms(max(&s.register))),
            "",
            None
        )
    );
    println!(
        "{}",
        row(
            "exec → first `/event/next`",
            format!(
                "{} (max {})",
                ms(median(&s.first_next)),
                ms(max(&s.first_next))
            ),
            "≤ 5 ms (median)",
            Some(first_next_ok)
        )
    );
    println!(
        "{}",
        row(
            "INVOKE → next `/event/next`, p50",
            ms(quantile(&s.ack, 0.5)),
            "",
            None
        )
    );
    println!(
        "{}",
        row(
            "INVOKE → next `/event/next`, p90",
            ms(quantile(&s.ack, 0.9)),
            "",
            None
        )
    );
    println!(
        "{}",
        row(
            "INVOKE → next `/event/next`, p99",
            ms(p99),
            "≤ 0.5 ms",
            Some(ack_ok)
        )
    );
    println!(
        "{}",
        row(
            "INVOKE → next `/event/next`, max",
            ms(max(&s.ack)),
            "",
            None
        )
    );
    println!(
        "{}",
        row(
            "idle RSS after INIT (VmRSS)",
            format!(
                "{:.1} MiB (median {:.1} MiB)",
                rss as f64 / 1024.0,
                s.rss_kib.get(s.rss_kib.len() / 2).copied().unwrap_or(0) as f64 / 1024.0
            ),
            "≤ 10 MiB (max)",
            Some(rss_ok)
        )
    );
    if let Some((cpu, invokes)) = s.invoke_cpu {
        println!(
            "{}",
            row(
                "extension CPU (user + system) per invoke",
                format!(
                    "{:.1} µs ({} ms over {invokes} invokes)",
                    cpu.as_secs_f64() * 1e6 / invokes.max(1) as f64,
                    cpu.as_millis()
                ),
                "",
                None
            )
        );
    }
    println!(
        "{}",
        row(
            "SHUTDOWN → exit",
            format!("{} (max {})", ms(median(&s.shutdown)), ms(max(&s.shutdown))),
            "< 2000 ms deadline",
            Some(s.shutdown.len() == args.runs)
        )
    );
    if !s.failures.is_empty() {
        println!("\nFailures:");
        for f in &s.failures {
            println!("- {f}");
        }
    }
    let all_ok = first_next_ok && ack_ok && rss_ok && s.failures.is_empty();
    if args.check && !all_ok {
        ExitCode::FAILURE
    } else if !s.failures.is_empty() {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}
