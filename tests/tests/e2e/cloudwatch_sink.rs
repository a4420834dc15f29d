//! The CloudWatch PutMetricData sink, end to end: the REAL egress-warden binary under the local
//! Lambda emulator, sending to a real CloudWatch-compatible API (moto's server) on loopback.
//!
//! - `cloudwatch`: every window lands in CloudWatch, nothing on stdout, and the SDK ignores
//!   `HTTP(S)_PROXY` (pointed at a black hole here).
//! - `both`: EMF on stdout and CloudWatch carry the same figures, metric by metric.
//! - endpoint stopped mid-run: the failure is counted and reported as a finding, and the windows
//!   CloudWatch did not get are on stdout as EMF; nothing lost, nothing doubled.
//! - endpoint that never answers (a VPC without a route): `/event/next` is not delayed, the
//!   SHUTDOWN send is bounded, and EMF carries everything.
//!
//! Needs `python3` with `moto[server]` and `boto3` (.ci/run installs them) and the binary
//! (`cargo build -p egress-warden`, default features). Network: 127.0.0.1 only.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warden_tests::emf::{self, EmfDocument};
use warden_tests::emulator::{Emulator, EmulatorConfig, InvokeOutcome};
use warden_tests::moto::{BlackHole, MotoServer, Stored, FAKE_CREDENTIALS};
use warden_tests::one_at_a_time;
use warden_tests::warden::{
    emf_documents, extension_log, findings, free_port, shut_down_cleanly, ExtensionsDir,
    EXTENSION_NAME,
};

const LIMIT: Duration = Duration::from_secs(120);
const FUNCTION: &str = "warden-cloudwatch-fn";
const NAMESPACE: &str = "WardenSinkTest";
/// `/event/next` must follow an INVOKE this fast whatever CloudWatch does; a send that blocked
/// it would take at least the 2.5 s attempt timeout against the black hole.
const MAX_ACK: Duration = Duration::from_millis(400);

/// One at a time among the heavy tests: each runs moto's server besides the extension, and
/// the acknowledgement bound is a timing.
async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    one_at_a_time(LIMIT, f).await
}

/// The extension with the sink on, listeners on free loopback ports, fake credentials.
fn config(d: &ExtensionsDir, sink: &str, endpoint: &str) -> (EmulatorConfig, u16) {
    let proxy = free_port();
    let mut cfg = EmulatorConfig::with_extensions_dir(d.path())
        .env("EGRESS_WARDEN_PROXY_PORT", proxy.to_string())
        .env("EGRESS_WARDEN_DNS_PORT", free_port().to_string())
        .env("EGRESS_WARDEN_DNS_UPSTREAMS", "127.0.0.1:1")
        .env("EGRESS_WARDEN_METRICS_SINK", sink)
        .env("EGRESS_WARDEN_METRICS_NAMESPACE", NAMESPACE)
        .env("EGRESS_WARDEN_CLOUDWATCH_ENDPOINT", endpoint)
        .env("EGRESS_WARDEN_LOG_LEVEL", "debug");
    for (k, v) in FAKE_CREDENTIALS {
        cfg = cfg.env(k, v);
    }
    cfg.function_name = FUNCTION.to_string();
    (cfg, proxy)
}

/// Some traffic through the proxy so the window holds more than invocations; whatever the
/// proxy records about it, the assertions compare recorded against delivered.
async fn proxy_request(port: u16) {
    let talk = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(
            b"GET http://127.0.0.1:9/x HTTP/1.1\r\nHost: 127.0.0.1:9\r\nConnection: close\r\n\r\n",
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map(|_| ())
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), talk).await;
}

async fn invoke(emu: &mut Emulator, k: usize) -> InvokeOutcome {
    let out = emu.invoke_json(&json!({ "k": k })).await.unwrap();
    assert!(out.is_success(), "invoke {k}: {:?}", out.result);
    let ack = out.ack(EXTENSION_NAME).expect("INVOKE delivered");
    let latency = ack.latency.expect("next called again");
    println!(
        "invoke {k}: /event/next {:.2} ms after the INVOKE",
        latency.as_secs_f64() * 1e3
    );
    assert!(
        latency < MAX_ACK,
        "invoke {k}: /event/next came {latency:?} after the INVOKE (limit {MAX_ACK:?})\n{}",
        extension_log(emu)
    );
    out
}

/// Levels, not counts: a window reports the highest level it saw, and windows merged while a
/// send is in flight keep the highest, so they compare by maximum.
const GAUGES: &[&str] = &["active_connections", "drill_active"];

/// A metric as CloudWatch stores it: its name and its dimensions (name, value), sorted.
type MetricKey = (String, Vec<(String, String)>);

/// Each metric under each of its dimension sets → (Σ value×count, Σ count (NaN for single
/// values), max) over every EMF document.
fn emf_totals(docs: &[EmfDocument]) -> BTreeMap<MetricKey, (f64, f64, f64)> {
    let mut totals: BTreeMap<MetricKey, (f64, f64, f64)> = BTreeMap::new();
    for d in docs {
        for (name, dims) in d.declared() {
            let value = d.get(&name).cloned().unwrap_or(Value::Null);
            // Sample counts are the data of distributions; for single values they only
            // tell how many windows there were, which merging changes.
            let samples = match value.get("Counts").and_then(Value::as_array) {
                Some(c) => c.iter().filter_map(Value::as_f64).sum(),
                None => f64::NAN,
            };
            let total = d.metric_total(&name).unwrap_or(0.0);
            let e = totals.entry((name.clone(), dims)).or_default();
            e.0 += total;
            e.1 += samples;
            e.2 = e.2.max(total);
        }
    }
    totals
}

async fn shutdown_cleanly(emu: &mut Emulator) {
    let report = shut_down_cleanly(emu).await;
    let exit = report.extension(EXTENSION_NAME).expect("extension exit");
    let elapsed = exit.elapsed.expect("exited after SHUTDOWN");
    assert!(
        elapsed < Duration::from_millis(1200),
        "SHUTDOWN handling took {elapsed:?}; the final send is bounded at 500 ms"
    );
}

/// Polls the server until `invocations` reaches `n` (sends run in the background).
async fn wait_for_invocations(moto: &MotoServer, n: f64) -> Stored {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stored = tokio::task::block_in_place(|| moto.query(NAMESPACE));
        let got = stored
            .function_stat("invocations", FUNCTION)
            .map_or(0.0, |s| s.sum);
        if got >= n || tokio::time::Instant::now() > deadline {
            return stored;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudwatch_sink_delivers_every_window_and_bypasses_any_proxy() {
    bounded(async {
        const N: usize = 5;
        let moto = MotoServer::start();
        let hole = BlackHole::bind();
        let d = ExtensionsDir::with_warden();
        let (cfg, proxy) = config(&d, "cloudwatch", &moto.endpoint());
        // If the SDK honoured these, every send would hang in the black hole and fail.
        let cfg = cfg
            .env("HTTPS_PROXY", hole.endpoint())
            .env("HTTP_PROXY", hole.endpoint())
            .env("https_proxy", hole.endpoint())
            .env("http_proxy", hole.endpoint());
        let mut emu = Emulator::start(cfg).await.unwrap();
        emu.wait_init()
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", extension_log(&emu)));
        for k in 1..=N {
            proxy_request(proxy).await;
            invoke(&mut emu, k).await;
        }
        shutdown_cleanly(&mut emu).await;

        let stored = tokio::task::block_in_place(|| moto.query(NAMESPACE));
        let log = extension_log(&emu);
        let inv = stored
            .function_stat("invocations", FUNCTION)
            .unwrap_or_else(|| panic!("no invocations in CloudWatch: {stored:?}\n{log}"));
        assert_eq!(inv.sum, N as f64, "GetMetricStatistics Sum\n{log}");
        assert_eq!(stored.invocations_get_metric_data, Some(N as f64));
        let init = stored
            .function_stat("extension_init_ms", FUNCTION)
            .expect("extension_init_ms listed");
        assert_eq!(init.samples, 1.0, "one INIT, one sample (values/counts)");
        assert!(init.sum > 0.0);
        let fn_dims = vec![("FunctionName".to_string(), FUNCTION.to_string())];
        assert!(stored
            .listed
            .contains(&("invocations".to_string(), fn_dims.clone())));

        assert!(
            emf_documents(&emu).is_empty(),
            "nothing falls back to EMF when CloudWatch works:\n{log}"
        );
        assert!(findings(&emu).is_empty(), "no finding: {log}");
        // RPCv2 CBOR addresses the operation in the path (awsQuery posted to `/`): the current
        // SDK's protocol, served by moto itself.
        let moto_log = moto.log_text();
        assert!(
            moto_log
                .contains("POST /service/GraniteServiceVersion20100801/operation/PutMetricData"),
            "the SDK talked to moto directly, over RPCv2 CBOR:\n{moto_log}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sinks_carry_the_same_figures() {
    bounded(async {
        const N: usize = 4;
        let moto = MotoServer::start();
        let d = ExtensionsDir::with_warden();
        let (cfg, proxy) = config(&d, "both", &moto.endpoint());
        let mut emu = Emulator::start(cfg).await.unwrap();
        emu.wait_init()
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", extension_log(&emu)));
        for k in 1..=N {
            proxy_request(proxy).await;
            proxy_request(proxy).await;
            invoke(&mut emu, k).await;
        }
        shutdown_cleanly(&mut emu).await;

        let docs = emf_documents(&emu);
        let emf = emf_totals(&docs);
        let function = vec![("FunctionName".to_string(), FUNCTION.to_string())];
        assert_eq!(
            emf[&("invocations".to_string(), function.clone())].0,
            N as f64
        );
        // The key metrics also per function version, in both sinks.
        let mut per_version = function.clone();
        per_version.push(("FunctionVersion".to_string(), "$LATEST".to_string()));
        assert_eq!(
            emf[&("requests".to_string(), per_version)].0,
            2.0 * N as f64
        );
        let stored = tokio::task::block_in_place(|| moto.query(NAMESPACE));
        for ((metric, dims), (sum, samples, max)) in &emf {
            let key = (metric.clone(), dims.clone());
            let got = stored
                .stats
                .get(&key)
                .unwrap_or_else(|| panic!("{key:?} is in EMF but not in CloudWatch: {stored:?}"));
            if GAUGES.contains(&metric.as_str()) {
                assert_eq!(got.max, Some(*max), "{key:?}: highest level");
                continue;
            }
            // Counts are exact. A distribution's values are its 2 %-wide bucket values, and
            // windows merged while a send was in flight share buckets, so its sum is exact
            // only to the bucket width.
            let tolerance = if samples.is_nan() { 1e-9 } else { 0.02 };
            assert!(
                (got.sum - sum).abs() <= tolerance * sum.abs().max(1e-3),
                "{key:?}: CloudWatch Sum {} vs EMF {sum}",
                got.sum
            );
            if !samples.is_nan() {
                assert_eq!(got.samples, *samples, "{key:?}: sample count");
            }
        }
        assert_eq!(
            stored.stats.len(),
            emf.len(),
            "CloudWatch holds exactly the metrics EMF carries"
        );
        assert!(findings(&emu).is_empty(), "{}", extension_log(&emu));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_endpoint_is_counted_reported_and_falls_back_to_emf() {
    bounded(async {
        const DELIVERED: usize = 2;
        const N: usize = 6;
        let mut moto = MotoServer::start();
        let d = ExtensionsDir::with_warden();
        let (cfg, _) = config(&d, "cloudwatch", &moto.endpoint());
        let mut emu = Emulator::start(cfg).await.unwrap();
        emu.wait_init()
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", extension_log(&emu)));
        for k in 1..=DELIVERED {
            invoke(&mut emu, k).await;
        }
        let stored = wait_for_invocations(&moto, DELIVERED as f64).await;
        let delivered = stored
            .function_stat("invocations", FUNCTION)
            .map_or(0.0, |s| s.sum);
        assert_eq!(delivered, DELIVERED as f64, "{}", extension_log(&emu));
        moto.stop();

        for k in DELIVERED + 1..=N {
            invoke(&mut emu, k).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shutdown_cleanly(&mut emu).await;

        let docs = emf_documents(&emu);
        let log = extension_log(&emu);
        assert_eq!(
            emf::sum(&docs, "invocations"),
            (N - DELIVERED) as f64,
            "EMF carries exactly what CloudWatch did not get\n{log}"
        );
        assert!(
            emf::sum(&docs, "cloudwatch_put_errors") >= 1.0,
            "the failure is counted\n{log}"
        );
        assert_eq!(
            emf::sum(&docs, "symptom_aws_endpoint_unreachable"),
            1.0,
            "one finding per outage\n{log}"
        );
        let found = findings(&emu);
        assert_eq!(found.len(), 1, "{log}");
        assert_eq!(found[0]["finding"], "aws_endpoint_unreachable");
        let fix = found[0]["fix"].as_str().unwrap_or_default();
        assert!(fix.contains("com.amazonaws.us-east-1.monitoring"), "{fix}");
        assert!(found[0]["evidence"]["error"].is_string());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_never_answers_delays_nothing_and_loses_nothing() {
    bounded(async {
        const N: usize = 5;
        let hole = BlackHole::bind();
        let d = ExtensionsDir::with_warden();
        let (cfg, proxy) = config(&d, "cloudwatch", &hole.endpoint());
        let mut emu = Emulator::start(cfg).await.unwrap();
        emu.wait_init()
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", extension_log(&emu)));

        // The first window's send hangs; the invoke is not held up by it.
        invoke(&mut emu, 1).await;
        // Past the 2.5 s attempt timeout with no INVOKE in between: a real failure.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let docs = emf_documents(&emu);
        assert_eq!(
            emf::sum(&docs, "invocations"),
            1.0,
            "the failed window is on stdout\n{}",
            extension_log(&emu)
        );
        assert_eq!(findings(&emu).len(), 1, "{}", extension_log(&emu));

        // Cooling down: windows go straight to EMF, nothing is attempted or delayed.
        for k in 2..=N {
            proxy_request(proxy).await;
            invoke(&mut emu, k).await;
        }
        shutdown_cleanly(&mut emu).await;

        let docs = emf_documents(&emu);
        let log = extension_log(&emu);
        assert_eq!(emf::sum(&docs, "invocations"), N as f64, "{log}");
        assert!(emf::sum(&docs, "cloudwatch_put_errors") >= 1.0, "{log}");
        assert_eq!(findings(&emu).len(), 1, "reported once per change\n{log}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_send_to_a_silent_endpoint_is_bounded_and_falls_back() {
    bounded(async {
        const N: usize = 3;
        let hole = BlackHole::bind();
        let d = ExtensionsDir::with_warden();
        let (cfg, _) = config(&d, "cloudwatch", &hole.endpoint());
        let mut emu = Emulator::start(cfg).await.unwrap();
        emu.wait_init()
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", extension_log(&emu)));
        // Back-to-back invokes: each send is still hanging when SHUTDOWN comes.
        for k in 1..=N {
            invoke(&mut emu, k).await;
        }
        shutdown_cleanly(&mut emu).await;
        let docs = emf_documents(&emu);
        let log = extension_log(&emu);
        assert_eq!(emf::sum(&docs, "invocations"), N as f64, "{log}");
        assert_eq!(emf::sum(&docs, "cloudwatch_put_errors"), 1.0, "{log}");
        assert_eq!(findings(&emu).len(), 1, "{log}");
    })
    .await
}
