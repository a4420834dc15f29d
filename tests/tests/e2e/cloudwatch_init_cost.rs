//! What the `cloudwatch` feature costs at INIT: the time from spawning the extension to its
//! first `/event/next` (what Lambda waits for before INIT can end), under the local emulator,
//! for release binaries built with and without the feature. A measurement, not a check: it is
//! `#[ignore]`d and prints a table (docs/PERFORMANCE.md has the commands and results).
//!
//!   WARDEN_BIN_WITH=… WARDEN_BIN_WITHOUT=… [WARDEN_INIT_RUNS=30] \
//!     cargo test -p warden-tests --test e2e cloudwatch_init_cost -- --ignored --nocapture

use std::path::{Path, PathBuf};
use std::time::Duration;

use warden_tests::emulator::{Emulator, EmulatorConfig, ShutdownReason};
use warden_tests::warden::{free_port, ExtensionsDir, EXTENSION_NAME};

async fn init_ms(binary: &Path, sink: &str) -> Option<f64> {
    let d = ExtensionsDir::new().ok()?;
    d.add(EXTENSION_NAME, binary).ok()?;
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
    let mut emu = Emulator::start(cfg).await.ok()?;
    let report = emu.wait_init().await.ok()?;
    let ext = report.extensions.first()?;
    let ms = ext.ready_after?.checked_sub(ext.spawned_after?)?;
    emu.shutdown(ShutdownReason::Spindown).await;
    Some(ms.as_secs_f64() * 1000.0)
}

fn stats(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "no data".into();
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    format!(
        "n={:3}  p50 {:6.2} ms  p90 {:6.2} ms  min {:6.2} ms  max {:6.2} ms",
        v.len(),
        q(0.5),
        q(0.9),
        v[0],
        v[v.len() - 1]
    )
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
    let mut results = vec![Vec::new(); cases.len()];
    // Interleaved, so drift in the machine's load hits every case alike.
    for _ in 0..runs {
        for (i, (_, binary, sink)) in cases.iter().enumerate() {
            if let Some(ms) = init_ms(binary, sink).await {
                results[i].push(ms);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    println!("spawn -> first /event/next:");
    for ((label, _, _), r) in cases.iter().zip(results) {
        println!("  {label:34} {}", stats(r));
    }
}
