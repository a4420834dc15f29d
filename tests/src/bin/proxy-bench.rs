//! `proxy-bench`: the egress proxy side by side with direct connections and other proxies, on
//! loopback, in one run (driven by `scripts/bench.d/proxy`).
//!
//! ```text
//! proxy-bench --extension [NAME=]BIN... [--proxy NAME=ADDR:PID]...
//!             [--tunnel-proxy NAME=ADDR:PID]... [--samples N]
//!             [--seconds S] [--concurrency C] [--log-dir DIR]
//!             [--only keepalive,connect-tls,tunnel,tunnel-bulk] [--cpu-quota F]
//! ```
//!
//! `--extension` may be repeated to compare two builds of egress-warden in the same run
//! (the first is named `egress-warden` unless given a NAME). A `--tunnel-proxy` only speaks
//! CONNECT (the bench's bare relay): it is measured in the tunnel scenarios only.
//!
//! Starts egress-warden (BIN) as a real process behind a minimal Extensions API stub, an
//! HTTP/1.1 upstream and an HTTPS one (rustls, a throw-away CA from `tests/proxy/make-certs.sh`)
//! on 127.0.0.2, then for each scenario and target measures:
//! sequential latency (p50/p99 over N requests on one client), throughput (C concurrent
//! clients for S seconds) and the proxy process's CPU time per request (from /proc).
//!
//! Scenarios: `keepalive` (absolute-form GET on a kept-alive client connection; pooled
//! upstream), `connect-tls` (a new client connection, CONNECT, a full TLS handshake with the
//! HTTPS upstream through the tunnel, one request, close: a new HTTPS connection as a function
//! makes it; direct is the same without CONNECT), `tunnel` (requests inside one long CONNECT
//! tunnel), `tunnel-bulk` (the same with 1 MiB answers: its req/s are MiB/s, its CPU per
//! request is CPU per MiB).
//!
//! `--cpu-quota F` adds a capacity column: each proxy's throughput again with the proxy held
//! to F of a CPU by a CFS quota (a cgroup of its own, v1 `cpu` or v2), as Lambda holds a
//! function and its extensions to a fraction of a vCPU by memory size (0.25 ≈ 450 MB). The
//! proxy, not the load generator, is then the bottleneck, so the figure is its capacity.

use std::io;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[derive(Clone)]
struct Target {
    name: String,
    /// None: straight to the upstream.
    proxy: Option<SocketAddr>,
    pid: Option<u32>,
    /// Speaks only CONNECT: left out of the keep-alive scenario.
    tunnel_only: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    KeepAlive,
    ConnectTls,
    Tunnel,
    TunnelBulk,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::KeepAlive => "keepalive",
            Scenario::ConnectTls => "connect-tls",
            Scenario::Tunnel => "tunnel",
            Scenario::TunnelBulk => "tunnel-bulk",
        }
    }

    fn tunnel(self) -> bool {
        !matches!(self, Scenario::KeepAlive)
    }
}

struct Args {
    /// (name, binary) of each egress-warden build to measure.
    extensions: Vec<(String, String)>,
    proxies: Vec<Target>,
    samples: usize,
    seconds: u64,
    concurrency: usize,
    log_dir: String,
    only: Vec<String>,
    cpu_quota: Option<f64>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        extensions: Vec::new(),
        proxies: Vec::new(),
        samples: 5000,
        seconds: 3,
        concurrency: 8,
        log_dir: std::env::temp_dir().display().to_string(),
        only: Vec::new(),
        cpu_quota: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--extension" => {
                let v = val()?;
                let (name, bin) = match v.split_once('=') {
                    Some((name, bin)) => (name.to_string(), bin.to_string()),
                    None if a.extensions.is_empty() => ("egress-warden".to_string(), v),
                    None => return Err(format!("a second --extension needs NAME=: {v}")),
                };
                a.extensions.push((name, bin));
            }
            "--samples" => a.samples = val()?.parse().map_err(|_| "bad --samples")?,
            "--seconds" => a.seconds = val()?.parse().map_err(|_| "bad --seconds")?,
            "--concurrency" => a.concurrency = val()?.parse().map_err(|_| "bad --concurrency")?,
            "--log-dir" => a.log_dir = val()?,
            "--only" => a.only = val()?.split(',').map(str::to_string).collect(),
            "--cpu-quota" => {
                let f: f64 = val()?.parse().map_err(|_| "bad --cpu-quota")?;
                if !(0.01..=64.0).contains(&f) {
                    return Err("--cpu-quota takes a fraction of a CPU, 0.01..64".into());
                }
                a.cpu_quota = Some(f);
            }
            "--proxy" | "--tunnel-proxy" => {
                let v = val()?;
                let usage = format!("{flag} NAME=ADDR:PID");
                let (name, rest) = v.split_once('=').ok_or(&usage)?;
                let (addr, pid) = rest.rsplit_once(':').ok_or(&usage)?;
                a.proxies.push(Target {
                    name: name.to_string(),
                    proxy: Some(addr.parse().map_err(|_| format!("bad address {addr}"))?),
                    pid: Some(pid.parse().map_err(|_| format!("bad pid {pid}"))?),
                    tunnel_only: flag == "--tunnel-proxy",
                });
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.extensions.is_empty() {
        return Err("--extension BIN is required".into());
    }
    Ok(a)
}

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";
/// `GET /bulk` is answered with this many bytes.
const BULK: usize = 1 << 20;
static BULK_BODY: [u8; BULK] = [b'x'; BULK];

/// A minimal keep-alive HTTP/1.1 server (over TLS when `tls` is given): one fixed answer per
/// request head.
async fn upstream(tls: Option<TlsAcceptor>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.2:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => answer_requests(s).await,
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(s).await {
                            answer_requests(s).await;
                        }
                    }
                }
            });
        }
    });
    Ok(addr)
}

async fn answer_requests<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut filled = 0;
    loop {
        match s.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => filled += n,
        }
        while let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            let written = if buf.starts_with(b"GET /bulk ") {
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BULK}\r\n\r\n");
                match s.write_all(head.as_bytes()).await {
                    Ok(()) => s.write_all(&BULK_BODY).await,
                    Err(e) => Err(e),
                }
            } else {
                s.write_all(RESPONSE).await
            };
            if written.is_err() || s.flush().await.is_err() {
                return;
            }
            buf.copy_within(end + 4..filled, 0);
            filled -= end + 4;
        }
        if filled == buf.len() {
            return;
        }
    }
}

/// The HTTPS upstream's and the clients' TLS settings, from a CA and server certificate made
/// for this run (the directory lives as long as this).
struct Tls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    _certs: tempfile::TempDir,
}

fn tls_setup() -> io::Result<Tls> {
    let certs = tempfile::tempdir()?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("proxy")
        .join("make-certs.sh");
    if !Command::new("sh")
        .arg(&script)
        .arg(certs.path())
        .status()?
        .success()
    {
        return Err(io::Error::other(format!(
            "{} failed (is openssl installed?)",
            script.display()
        )));
    }
    let dir = certs.path();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(io::Error::other)?;
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).map_err(io::Error::other)?;
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(io::Error::other)?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(dir.join("ca.pem")).map_err(io::Error::other)? {
        roots
            .add(ca.map_err(io::Error::other)?)
            .map_err(io::Error::other)?;
    }
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every connection pays the full handshake, as a new process's first call does.
    client.resumption = rustls::client::Resumption::disabled();
    Ok(Tls {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        connector: TlsConnector::from(Arc::new(client)),
        _certs: certs,
    })
}

/// Stands in for Lambda's Extensions API: registers anyone, never sends an event.
async fn extensions_api() -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut filled = 0;
                loop {
                    match s.read(&mut buf[filled..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => filled += n,
                    }
                    let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().to_string())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    while filled < end + 4 + len {
                        match s.read(&mut buf[filled..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => filled += n,
                        }
                    }
                    if head.contains("/extension/register") {
                        let body = r#"{"functionName":"bench","functionVersion":"$LATEST","handler":"bench"}"#;
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\nLambda-Extension-Identifier: bench-id\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = s.write_all(reply.as_bytes()).await;
                        buf.copy_within(end + 4 + len..filled, 0);
                        filled -= end + 4 + len;
                    } else {
                        // /event/next: the bench never ends the "invocation".
                        tokio::time::sleep(Duration::from_secs(86_400)).await;
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

struct Warden(Child);

impl Drop for Warden {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_warden(name: &str, bin: &str, log_dir: &str) -> io::Result<(Warden, Target)> {
    let api = extensions_api().await?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let log = std::fs::File::create(format!("{log_dir}/{name}.log"))?;
    let mut cmd = Command::new(bin);
    cmd.env_clear();
    // Runtime tuning experiments (e.g. TOKIO_WORKER_THREADS=1) pass through.
    if let Ok(n) = std::env::var("TOKIO_WORKER_THREADS") {
        cmd.env("TOKIO_WORKER_THREADS", n);
    }
    let mut child = cmd
        .env("PATH", "/usr/bin:/bin")
        .env("AWS_LAMBDA_RUNTIME_API", api.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "bench")
        .env("AWS_REGION", "us-east-1")
        .env("EGRESS_WARDEN_PROXY_PORT", port.to_string())
        .env("EGRESS_WARDEN_DNS_PORT", "0")
        .env("EGRESS_WARDEN_DNS_UPSTREAMS", "127.0.0.1:1")
        .env("EGRESS_WARDEN_ALLOW", "127.0.0.0/8")
        // Lets a run measure without the per-request decision line (EGRESS_WARDEN_LOG_LEVEL=warn).
        .env(
            "EGRESS_WARDEN_LOG_LEVEL",
            std::env::var("EGRESS_WARDEN_LOG_LEVEL").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    // stderr is a pipe, as in the Lambda sandbox, whose log agent reads it (a file would
    // charge the proxy a filesystem write per decision line); drained here into the log file.
    if let Some(mut pipe) = child.stderr.take() {
        let mut log = log;
        std::thread::spawn(move || std::io::copy(&mut pipe, &mut log));
    }
    let pid = child.id();
    let warden = Warden(child);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            return Err(io::Error::other(format!("{name} did not start listening")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((
        warden,
        Target {
            name: name.into(),
            proxy: Some(addr),
            pid: Some(pid),
            tunnel_only: false,
        },
    ))
}

/// Reads one response (head + Content-Length body, not kept); CONNECT answers have no body.
async fn read_response<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> io::Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&buf[..end]).map_err(|_| io::Error::other("bad head"))?;
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let len = head
            .split("\r\n")
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut have = buf.len() - (end + 4);
        while have < len {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            have += n;
        }
        return Ok(status);
    }
}

/// The upstreams a client talks to.
#[derive(Clone)]
struct Upstreams {
    plain: SocketAddr,
    https: SocketAddr,
    connector: TlsConnector,
}

struct Client {
    target: Target,
    /// The plain upstream, or the HTTPS one for `connect-tls`.
    upstream: SocketAddr,
    connector: TlsConnector,
    scenario: Scenario,
    conn: Option<TcpStream>,
    buf: Vec<u8>,
    absolute: Vec<u8>,
    origin: Vec<u8>,
}

impl Client {
    fn new(target: &Target, upstreams: &Upstreams, scenario: Scenario) -> Client {
        let upstream = match scenario {
            Scenario::ConnectTls => upstreams.https,
            Scenario::KeepAlive | Scenario::Tunnel | Scenario::TunnelBulk => upstreams.plain,
        };
        let path = if scenario == Scenario::TunnelBulk {
            "/bulk"
        } else {
            "/"
        };
        Client {
            target: target.clone(),
            upstream,
            connector: upstreams.connector.clone(),
            scenario,
            conn: None,
            buf: Vec::with_capacity(4096),
            absolute: format!("GET http://{upstream}/ HTTP/1.1\r\nHost: {upstream}\r\n\r\n")
                .into_bytes(),
            origin: format!("GET {path} HTTP/1.1\r\nHost: {upstream}\r\n\r\n").into_bytes(),
        }
    }

    async fn open(&mut self) -> io::Result<TcpStream> {
        let tunnel = self.scenario.tunnel();
        match self.target.proxy {
            None => {
                let s = TcpStream::connect(self.upstream).await?;
                s.set_nodelay(true)?;
                Ok(s)
            }
            Some(proxy) => {
                let mut s = TcpStream::connect(proxy).await?;
                s.set_nodelay(true)?;
                if tunnel {
                    let up = self.upstream;
                    s.write_all(format!("CONNECT {up} HTTP/1.1\r\nHost: {up}\r\n\r\n").as_bytes())
                        .await?;
                    let status = read_response(&mut s, &mut self.buf).await?;
                    if status != 200 {
                        return Err(io::Error::other(format!("CONNECT answered {status}")));
                    }
                }
                Ok(s)
            }
        }
    }

    /// One request; reconnects as the scenario demands, or when a proxy closed a kept-alive
    /// connection (tinyproxy answers HTTP/1.0-style, one request per client connection).
    async fn request(&mut self) -> io::Result<()> {
        let reused = self.conn.is_some() && self.scenario != Scenario::ConnectTls;
        match self.try_request().await {
            Err(_) if reused => {
                self.conn = None;
                self.try_request().await
            }
            other => other,
        }
    }

    async fn try_request(&mut self) -> io::Result<()> {
        if self.scenario == Scenario::ConnectTls {
            return self.new_https_connection().await;
        }
        let mut s = match self.conn.take() {
            Some(s) => s,
            None => self.open().await?,
        };
        let absolute = self.target.proxy.is_some() && self.scenario == Scenario::KeepAlive;
        let req = if absolute {
            &self.absolute
        } else {
            &self.origin
        };
        s.write_all(req).await?;
        let status = read_response(&mut s, &mut self.buf).await?;
        if status != 200 {
            return Err(io::Error::other(format!("answered {status}")));
        }
        self.conn = Some(s);
        Ok(())
    }

    /// (CONNECT →) TLS handshake → one HTTPS request → close.
    async fn new_https_connection(&mut self) -> io::Result<()> {
        let s = self.open().await?;
        let name = ServerName::from(self.upstream.ip());
        let mut tls = self.connector.connect(name, s).await?;
        tls.write_all(&self.origin).await?;
        tls.flush().await?;
        let status = read_response(&mut tls, &mut self.buf).await?;
        if status != 200 {
            return Err(io::Error::other(format!("answered {status}")));
        }
        // Close with RST: thousands of short connections must not pile up in TIME_WAIT.
        // (Deprecated because a non-zero linger blocks on drop; zero never does.)
        #[allow(deprecated)]
        let _ = tls.get_ref().0.set_linger(Some(Duration::ZERO));
        Ok(())
    }
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the ")": state is field 3, utime 14 and stime 15 (1-based in proc(5)).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

struct Row {
    scenario: &'static str,
    target: String,
    p50_us: f64,
    p99_us: f64,
    rps: f64,
    cpu_us_per_req: Option<f64>,
    /// Throughput with the proxy held to `--cpu-quota` of a CPU.
    capped_rps: Option<f64>,
}

/// Sequential request latency for every target, interleaved in rounds so that a noisy
/// neighbour (other work on the machine) weighs on all targets alike.
async fn latencies(
    targets: &[Target],
    upstreams: &Upstreams,
    scenario: Scenario,
    samples: usize,
) -> io::Result<Vec<(f64, f64)>> {
    const ROUNDS: usize = 10;
    let mut clients: Vec<Client> = targets
        .iter()
        .map(|t| Client::new(t, upstreams, scenario))
        .collect();
    // 1 MiB answers: fewer, or the run takes minutes.
    let (warm, samples) = match scenario {
        Scenario::TunnelBulk => (20, samples.div_ceil(10)),
        _ => (200, samples),
    };
    for c in &mut clients {
        for _ in 0..warm {
            c.request().await?;
        }
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(samples); targets.len()];
    for _ in 0..ROUNDS {
        for (c, t) in clients.iter_mut().zip(times.iter_mut()) {
            for _ in 0..samples.div_ceil(ROUNDS) {
                let started = Instant::now();
                c.request().await?;
                t.push(started.elapsed());
            }
        }
    }
    Ok(times
        .into_iter()
        .map(|mut t| {
            t.sort();
            let pick = |q: f64| t[((t.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1e6;
            (pick(0.50), pick(0.99))
        })
        .collect())
}

async fn throughput(
    target: &Target,
    upstreams: &Upstreams,
    scenario: Scenario,
    seconds: u64,
    concurrency: usize,
) -> io::Result<(f64, Option<f64>)> {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let cpu_before = target.pid.and_then(cpu_ticks);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (done, stop) = (done.clone(), stop.clone());
        let mut c = Client::new(target, upstreams, scenario);
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                c.request().await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, io::Error>(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.map_err(io::Error::other)??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed) as f64;
    let cpu = match (cpu_before, target.pid.and_then(cpu_ticks)) {
        (Some(a), Some(b)) if n > 0.0 => Some((b - a) as f64 / clock_ticks_per_s() * 1e6 / n),
        _ => None,
    };
    Ok((n / elapsed, cpu))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("proxy-bench: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proxy-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> io::Result<()> {
    let tls = tls_setup()?;
    let upstreams = Upstreams {
        plain: upstream(None).await?,
        https: upstream(Some(tls.acceptor.clone())).await?,
        connector: tls.connector.clone(),
    };
    let mut targets = vec![Target {
        name: "direct".into(),
        proxy: None,
        pid: None,
        tunnel_only: false,
    }];
    let mut _wardens = Vec::new();
    for (name, bin) in &args.extensions {
        let (process, target) = start_warden(name, bin, &args.log_dir).await?;
        _wardens.push(process);
        targets.push(target);
    }
    targets.extend(args.proxies.iter().cloned());
    let mut rows = Vec::new();
    for scenario in [
        Scenario::KeepAlive,
        Scenario::ConnectTls,
        Scenario::Tunnel,
        Scenario::TunnelBulk,
    ] {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == scenario.name()) {
            continue;
        }
        let targets: Vec<Target> = targets
            .iter()
            .filter(|t| scenario.tunnel() || !t.tunnel_only)
            .cloned()
            .collect();
        let lat = latencies(&targets, &upstreams, scenario, args.samples).await?;
        for (t, (p50, p99)) in targets.iter().zip(lat) {
            let (rps, cpu) =
                throughput(t, &upstreams, scenario, args.seconds, args.concurrency).await?;
            let capped_rps = match (args.cpu_quota, t.pid) {
                (Some(quota), Some(pid)) => {
                    let _held = CpuQuota::hold(pid, quota, &t.name)?;
                    let (capped, _) =
                        throughput(t, &upstreams, scenario, args.seconds, args.concurrency).await?;
                    Some(capped)
                }
                _ => None,
            };
            eprintln!(
                "{:<12} {:<14} p50 {p50:>8.1} us  p99 {p99:>8.1} us  {rps:>9.0} req/s",
                scenario.name(),
                t.name
            );
            rows.push(Row {
                scenario: scenario.name(),
                target: t.name.clone(),
                p50_us: p50,
                p99_us: p99,
                rps,
                cpu_us_per_req: cpu,
                capped_rps,
            });
        }
    }
    let capacity = match args.cpu_quota {
        Some(q) => format!(" req/s at {q} CPU |"),
        None => String::new(),
    };
    println!("| scenario | target | p50 µs | p99 µs | added p50 µs | added p99 µs | req/s ({} clients) | proxy CPU µs/req |{capacity}", args.concurrency);
    println!(
        "|---|---|---:|---:|---:|---:|---:|---:|{}",
        if capacity.is_empty() { "" } else { "---:|" }
    );
    for r in &rows {
        let direct = rows
            .iter()
            .find(|d| d.scenario == r.scenario && d.target == "direct");
        let (added50, added99) = match (direct, r.target.as_str()) {
            (_, "direct") | (None, _) => ("–".to_string(), "–".to_string()),
            (Some(d), _) => (
                format!("{:.1}", r.p50_us - d.p50_us),
                format!("{:.1}", r.p99_us - d.p99_us),
            ),
        };
        let cpu = r
            .cpu_us_per_req
            .map_or("–".to_string(), |c| format!("{c:.1}"));
        let capped = match (args.cpu_quota, r.capped_rps) {
            (None, _) => String::new(),
            (Some(_), None) => " – |".to_string(),
            (Some(_), Some(c)) => format!(" {c:.0} |"),
        };
        println!(
            "| {} | {} | {:.1} | {:.1} | {added50} | {added99} | {:.0} | {cpu} |{capped}",
            r.scenario, r.target, r.p50_us, r.p99_us, r.rps
        );
    }
    Ok(())
}

/// A proxy process held to a fraction of a CPU while this lives: a cgroup of its own with a
/// CFS quota (cgroup v1 `cpu` controller, else v2 with `cpu` enabled). Dropping it moves the
/// process back to the root group and removes the group.
struct CpuQuota {
    group: std::path::PathBuf,
    root: std::path::PathBuf,
    /// v1 lists threads in `tasks`; v2 moves whole processes through `cgroup.procs`.
    v1: bool,
    pid: u32,
}

impl CpuQuota {
    /// CFS period: short, so a held proxy is throttled in small slices, not 100 ms stalls.
    const PERIOD_US: u64 = 10_000;

    fn hold(pid: u32, fraction: f64, name: &str) -> io::Result<CpuQuota> {
        use std::path::Path;
        let quota = ((fraction * Self::PERIOD_US as f64) as u64).max(1000);
        let (root, v1) = if Path::new("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists() {
            (Path::new("/sys/fs/cgroup/cpu").to_path_buf(), true)
        } else if std::fs::read_to_string("/sys/fs/cgroup/cgroup.subtree_control")
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"))
        {
            (Path::new("/sys/fs/cgroup").to_path_buf(), false)
        } else {
            return Err(io::Error::other(
                "--cpu-quota needs a writable cpu cgroup (v1 cpu controller, or v2 with +cpu)",
            ));
        };
        let group = root.join(format!("proxy-bench-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&group)?;
        let held = CpuQuota {
            group,
            root,
            v1,
            pid,
        };
        if v1 {
            std::fs::write(
                held.group.join("cpu.cfs_period_us"),
                Self::PERIOD_US.to_string(),
            )?;
            std::fs::write(held.group.join("cpu.cfs_quota_us"), quota.to_string())?;
            for tid in threads(pid)? {
                // A thread that just ended cannot be moved: nothing to hold.
                let _ = std::fs::write(held.group.join("tasks"), tid.to_string());
            }
        } else {
            std::fs::write(
                held.group.join("cpu.max"),
                format!("{quota} {}", Self::PERIOD_US),
            )?;
            std::fs::write(held.group.join("cgroup.procs"), pid.to_string())?;
        }
        Ok(held)
    }
}

impl Drop for CpuQuota {
    fn drop(&mut self) {
        if self.v1 {
            for tid in threads(self.pid).unwrap_or_default() {
                let _ = std::fs::write(self.root.join("tasks"), tid.to_string());
            }
        } else {
            let _ = std::fs::write(self.root.join("cgroup.procs"), self.pid.to_string());
        }
        let _ = std::fs::remove_dir(&self.group);
    }
}

fn threads(pid: u32) -> io::Result<Vec<u32>> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}
