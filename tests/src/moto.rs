//! A real CloudWatch-compatible API on loopback for the sink's and the proxy's tests: moto's
//! server (PyPI `moto[server]`), started on a free loopback port and killed on drop, read back
//! through boto3 (`tests/cloudwatch/moto_query.py`). Also a "black hole": a port that accepts
//! TCP connections and never answers, the loopback stand-in for a VPC without a route to
//! CloudWatch.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::warden::{free_port, workspace_root};
use serde_json::Value;

pub const INSTALL_HINT: &str =
    "moto's server (5.2.6 or later) and boto3 are needed: pip install 'moto[server]>=5.2.6' boto3 \
     (.ci/run installs them)";

/// The first moto release that serves CloudWatch over RPCv2 CBOR, the current SDK's protocol;
/// an older server answers the extension's PutMetricData with an error.
pub const MIN_MOTO: (u32, u32, u32) = (5, 2, 6);

/// The installed moto's version, from the package metadata.
pub fn moto_version() -> Option<(u32, u32, u32)> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('moto'))",
        ])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.trim().split('.').map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// The fake credentials every test gives the extension (never real ones; the endpoint is
/// loopback). `AWS_EC2_METADATA_DISABLED` keeps the default chain from ever trying IMDS.
pub const FAKE_CREDENTIALS: [(&str, &str); 4] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_SESSION_TOKEN", "testing"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

pub struct MotoServer {
    child: Option<Child>,
    host: Ipv4Addr,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl MotoServer {
    /// Starts `python3 -m moto.server` on 127.0.0.1 and waits until it answers (at most 60 s:
    /// the first import of moto on a cold machine is slow).
    pub fn start() -> MotoServer {
        Self::start_on(Ipv4Addr::LOCALHOST)
    }

    /// [`MotoServer::start`] on another loopback address (one that `NO_PROXY=127.0.0.1` does
    /// not exempt from a proxy).
    pub fn start_on(host: Ipv4Addr) -> MotoServer {
        let version = moto_version();
        assert!(
            version.is_some_and(|v| v >= MIN_MOTO),
            "moto {version:?} is installed; CloudWatch over RPCv2 CBOR needs {MIN_MOTO:?} or later\n\
             {INSTALL_HINT}"
        );
        let dir = tempfile::Builder::new()
            .prefix("warden-moto-")
            .tempdir()
            .expect("temp dir");
        let log = dir.path().join("moto.log");
        let log_file = std::fs::File::create(&log).expect("moto log");
        let port = free_port();
        assert_ne!(port, 0, "no free port");
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                &host.to_string(),
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log fd"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run python3 -m moto.server: {e}\n{INSTALL_HINT}"));
        let mut server = MotoServer {
            child: Some(child),
            host,
            port,
            log,
            _dir: dir,
        };
        let started = Instant::now();
        let addr = SocketAddr::from((host, port));
        loop {
            if let Some(Some(status)) = server.child.as_mut().map(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "moto.server exited ({status}) before listening:\n{}\n{INSTALL_HINT}",
                    server.log_text()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "moto.server did not listen on {addr} within 60 s:\n{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // moto loads a service's backend on its first request (a second or more on a busy
        // machine); pay that here, not inside the extension's 500 ms SHUTDOWN budget.
        server.query("WardenWarmUp");
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the server: the port then refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What the server holds for `namespace` (ListMetrics, GetMetricStatistics, GetMetricData).
    pub fn query(&self, namespace: &str) -> Stored {
        let script = workspace_root()
            .join("tests")
            .join("cloudwatch")
            .join("moto_query.py");
        let out = Command::new("python3")
            .arg(&script)
            .args([&self.endpoint(), namespace])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "moto_query.py failed: {}\n{}\nserver log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("moto_query.py prints JSON");
        Stored::from_json(&v)
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One metric's statistics as the server computes them.
#[derive(Clone, Debug, PartialEq)]
pub struct Stat {
    pub sum: f64,
    pub samples: f64,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// Keyed by (metric name, sorted dimensions).
pub type MetricKey = (String, Vec<(String, String)>);

#[derive(Debug, Default)]
pub struct Stored {
    pub listed: Vec<MetricKey>,
    pub stats: BTreeMap<MetricKey, Stat>,
    pub invocations_get_metric_data: Option<f64>,
}

fn key_of(v: &Value) -> MetricKey {
    let name = v["name"].as_str().unwrap_or_default().to_string();
    let mut dims: Vec<(String, String)> = v["dimensions"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    dims.sort();
    (name, dims)
}

impl Stored {
    fn from_json(v: &Value) -> Stored {
        let listed = v["metrics"]
            .as_array()
            .map(|a| a.iter().map(key_of).collect())
            .unwrap_or_default();
        let stats = v["stats"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| {
                        (
                            key_of(s),
                            Stat {
                                sum: s["sum"].as_f64().unwrap_or(0.0),
                                samples: s["samples"].as_f64().unwrap_or(0.0),
                                min: s["min"].as_f64(),
                                max: s["max"].as_f64(),
                            },
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Stored {
            listed,
            stats,
            invocations_get_metric_data: v["invocations_get_metric_data"].as_f64(),
        }
    }

    /// The `[FunctionName]` figure of a metric.
    pub fn function_stat(&self, metric: &str, function: &str) -> Option<&Stat> {
        self.stats.get(&(
            metric.to_string(),
            vec![("FunctionName".to_string(), function.to_string())],
        ))
    }
}

/// Accepts connections (the kernel completes the handshake from the backlog) and never
/// answers: a request to it hangs until the client's own timeout.
pub struct BlackHole {
    listener: TcpListener,
}

impl BlackHole {
    pub fn bind() -> BlackHole {
        BlackHole {
            listener: TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"),
        }
    }

    pub fn endpoint(&self) -> String {
        let port = self.listener.local_addr().map(|a| a.port()).unwrap_or(0);
        format!("http://127.0.0.1:{port}")
    }
}
