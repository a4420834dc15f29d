//! What the CloudWatch sink costs at INIT: the time from spawning the extension to its first
//! `/event/next` (what Lambda waits for before INIT can end), under the local emulator.
//!
//! - Checked on the binary under test: with `EGRESS_WARDEN_METRICS_SINK=cloudwatch` the sink
//!   really starts (and with `emf` it does not), and INIT takes no longer than with `emf`
//!   beyond [`MAX_EXTRA`]: the sink builds its SDK client on its first send, after INIT.
//! - Measured (`#[ignore]`d, prints a table; docs/PERFORMANCE.md has the commands and results):
//!   release binaries built with and without the `cloudwatch` feature:
//!
//! ```text
//! WARDEN_BIN_WITH=… WARDEN_BIN_WITHOUT=… [WARDEN_INIT_RUNS=30] \
//!   cargo test -p warden-tests --test e2e cloudwatch_init_cost -- --ignored --nocapture
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use warden_tests::emulator::{Emulator, EmulatorConfig, ShutdownReason};
use warden_tests::warden::{free_port, warden_binary, ExtensionsDir, EXTENSION_NAME};
use warden_tests::{exclusive_async, one_at_a_time};

/// Runs per sink in the check (interleaved, so the machine's load hits both alike).
const RUNS: usize = 15;
/// How much later than with `emf` the median INIT with the CloudWatch sink may end. A debug
/// build's INIT takes 10–25 ms here and medians of interleaved runs differ by a few ms on a
/// loaded two-core machine, so this catches work of the order of INIT itself (an SDK call, a
/// credentials lookup, a connection) moved into it, not a millisecond.
const MAX_EXTRA: Duration = Duration::from_millis(8);
/// What the extension logs when the CloudWatch sink starts.
const SINK_STARTED: &str = "sending metrics to CloudWatch PutMetricData";

/// One cold start of `binary` with `sink`: spawn → first `/event/next` in ms, and the
/// extension's stderr.
async fn init_run(binary: &Path, sink: &str) -> Result<(f64, Vec<String>), String> {
    let d = ExtensionsDir::new().map_err(|e| format!("extensions dir: {e}"))?;
    d.add(EXTENSION_NAME, binary)
        .map_err(|e| format!("stage {}: {e}", binary.display()))?;
    let mut cfg = EmulatorConfig::with_extensions_dir(d.path())
        .env("EGRESS_WARDEN_PROXY_PORT", free_port().to_string())
        .env("EGRESS_WARDEN_DNS_PORT", free_port().to_string())
        .env("EGRESS_WARDEN_DNS_UPSTREAMS", "127.0.0.1:1")
        .env("EGRESS_WARDEN_METRICS_SINK", sink)
        // Never contacted during INIT; loopback in case anything tried.
        .env("EGRESS_WARDEN_CLOUDWATCH_ENDPOINT", "http://127.0.0.1:9")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    cfg.function_name = "warden-init-cost".to_string();
    let mut emu = Emulator::start(cfg)
        .await
        .map_err(|e| format!("emulator: {e}"))?;
    let init = emu.wait_init().await;
    emu.shutdown(ShutdownReason::Spindown).await;
    // Read once the extension has exited: the sink's start line may follow registration.
    let stderr = emu.stderr_lines(EXTENSION_NAME);
    let report = init.map_err(|e| format!("INIT failed: {e}\n{}", stderr.join("\n")))?;
    let ext = report.extensions.first().ok_or("no extension in INIT")?;
    let took = ext
        .ready_after
        .zip(ext.spawned_after)
        .and_then(|(ready, spawned)| ready.checked_sub(spawned))
        .ok_or("no spawn or first /event/next time")?;
    Ok((took.as_secs_f64() * 1000.0, stderr))
}

fn quantile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn stats(v: &[f64]) -> String {
    if v.is_empty() {
        return "no data".into();
    }
    format!(
        "n={:3}  p50 {:6.2} ms  p90 {:6.2} ms  min {:6.2} ms  max {:6.2} ms",
        v.len(),
        quantile(v, 0.5),
        quantile(v, 0.9),
        quantile(v, 0.0),
        quantile(v, 1.0)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloudwatch_sink_starts_without_lengthening_init() {
    let binary = warden_binary();
    one_at_a_time(Duration::from_secs(120), async {
        let (mut emf, mut cloudwatch) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let (ms, stderr) = init_run(&binary, "emf").await.expect("sink emf");
            assert!(
                !stderr.iter().any(|l| l.contains(SINK_STARTED)),
                "sink emf started the CloudWatch sink:\n{}",
                stderr.join("\n")
            );
            emf.push(ms);
            let (ms, stderr) = init_run(&binary, "cloudwatch")
                .await
                .expect("sink cloudwatch");
            assert!(
                stderr.iter().any(|l| l.contains(SINK_STARTED)),
                "the CloudWatch sink did not start (no {SINK_STARTED:?} on stderr):\n{}",
                stderr.join("\n")
            );
            cloudwatch.push(ms);
        }
        let table = format!(
            "emf        {}\ncloudwatch {}",
            stats(&emf),
            stats(&cloudwatch)
        );
        eprintln!("spawn -> first /event/next:\n{table}");
        let extra = quantile(&cloudwatch, 0.5) - quantile(&emf, 0.5);
        assert!(
            extra <= MAX_EXTRA.as_secs_f64() * 1000.0,
            "INIT with the CloudWatch sink took {extra:.2} ms longer (median) than with EMF, \
             more than {MAX_EXTRA:?}:\n{table}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored and WARDEN_BIN_WITH / WARDEN_BIN_WITHOUT"]
async fn init_time_with_and_without_the_cloudwatch_feature() {
    let bin = |k: &str| {
        std::env::var_os(k)
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("set {k} to a release egress-warden binary"))
    };
    let (with, without) = (bin("WARDEN_BIN_WITH"), bin("WARDEN_BIN_WITHOUT"));
    let runs: usize = std::env::var("WARDEN_INIT_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let cases = [
        ("without feature, sink=emf", &without, "emf"),
        ("with feature,    sink=emf", &with, "emf"),
        ("with feature,    sink=cloudwatch", &with, "cloudwatch"),
    ];
    let _turn = exclusive_async().await;
    let mut results = vec![Vec::new(); cases.len()];
    // Interleaved, so drift in the machine's load hits every case alike.
    for _ in 0..runs {
        for (i, (label, binary, sink)) in cases.iter().enumerate() {
            let (ms, _) = init_run(binary, sink)
                .await
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            results[i].push(ms);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    println!("spawn -> first /event/next:");
    for ((label, _, _), r) in cases.iter().zip(results) {
        println!("  {label:34} {}", stats(&r));
    }
}
