//! In-process tests of the proxy: the real listener on an ephemeral loopback port, real
//! upstream servers (plain and TLS, HTTP/1.1 and HTTP/2) on loopback, and real clients
//! (raw sockets, curl). The end-to-end tests with the binary under the Lambda emulator live
//! in `tests/tests/proxy_*.rs`.

mod connect_tests;
mod forward_tests;
mod limits_tests;
mod policy_tests;
mod route_tests;
mod upstream;
mod warm_tests;

use super::{bind_with, ClientTimeouts, ProxyHandle};
use crate::clock::InvocationClock;
use crate::config::Config;
use crate::dns::DnsCache;
use crate::metrics::{Counter, Recorder, Snapshot};
use crate::shutdown::{self, ShutdownTrigger};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub(super) struct Harness {
    pub addr: SocketAddr,
    pub recorder: Recorder,
    pub clock: Arc<InvocationClock>,
    pub ctx: super::ProxyDeps,
    pub shutdown: ShutdownTrigger,
    handle: ProxyHandle,
}

impl Harness {
    pub(super) fn warmer(&self) -> super::Warmer {
        self.handle.warmer()
    }

    pub(super) fn warmup(&self) -> crate::warm::Warmup {
        crate::warm::Warmup::new(&self.ctx.config, self.recorder.clone())
    }

    pub(super) fn port(&self) -> u16 {
        self.addr.port()
    }

    pub(super) fn take(&self) -> Snapshot {
        self.recorder.take()
    }
}

pub(super) fn count(snapshot: &Snapshot, counter: Counter) -> u64 {
    snapshot.counters.get(&counter).copied().unwrap_or(0)
}

/// Loopback is lifted (tests only have loopback upstreams); DNS points nowhere.
pub(super) async fn start(vars: &[(&str, &str)]) -> Harness {
    start_with(vars, ClientTimeouts::default()).await
}

pub(super) async fn start_with(vars: &[(&str, &str)], timeouts: ClientTimeouts) -> Harness {
    let mut all: Vec<(String, String)> = [
        ("EGRESS_WARDEN_PROXY_PORT", "0"),
        ("EGRESS_WARDEN_DNS_PORT", "1053"),
        ("EGRESS_WARDEN_DNS_UPSTREAMS", "127.0.0.1:9"),
        ("EGRESS_WARDEN_ALLOW", "127.0.0.0/8"),
        ("EGRESS_WARDEN_CONNECT_TIMEOUT_MS", "500"),
        ("AWS_REGION", "us-east-1"),
    ]
    .iter()
    .filter(|(k, _)| !vars.iter().any(|(vk, _)| vk == k))
    .chain(vars.iter())
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    all.retain(|(_, v)| v != "<unset>");
    let (config, problems) = Config::from_vars(&all);
    assert!(problems.is_empty(), "config problems: {problems:?}");
    let (tx, rx) = shutdown::channel();
    let recorder = Recorder::new();
    let clock = Arc::new(InvocationClock::new());
    let dns = DnsCache::new(&config.dns, config.dns_port, recorder.clone()).expect("dns cache");
    let ctx = super::ProxyDeps {
        config: Arc::new(config),
        recorder: recorder.clone(),
        clock: clock.clone(),
        findings: Default::default(),
        shutdown: rx,
        dns,
    };
    let handle = bind_with(ctx.clone(), timeouts).expect("bind");
    Harness {
        addr: handle.local_addr(),
        recorder,
        clock,
        ctx,
        shutdown: tx,
        handle,
    }
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub(super) struct Reply {
    pub status: u16,
    /// The status line's reason phrase.
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn error(&self) -> Option<&str> {
        self.header("x-egress-warden-error")
    }
}

/// Reads one response (Content-Length bodies, or up to EOF) from a kept-alive connection.
pub(super) async fn read_reply(stream: &mut TcpStream) -> Option<Reply> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut status_line = lines.next()?.splitn(3, ' ');
    let status = status_line.nth(1)?.parse().ok()?;
    let reason = status_line.next().unwrap_or("").to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = buf[head_end..].to_vec();
    match length {
        Some(len) => {
            while body.len() < len {
                let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
                    .await
                    .ok()?
                    .ok()?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
        None if status == 200 && head.to_ascii_lowercase().contains("connection: close") => {
            let _ =
                tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut body)).await;
        }
        None => {}
    }
    Some(Reply {
        status,
        reason,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
    })
}

/// Sends raw bytes on a new connection and reads one response.
pub(super) async fn raw(addr: SocketAddr, request: &[u8]) -> Option<Reply> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream.write_all(request).await.ok()?;
    read_reply(&mut stream).await
}

/// `CONNECT target` and return the proxy's answer (and the stream, tunnelling on 200).
pub(super) async fn connect(addr: SocketAddr, target: &str) -> (Reply, TcpStream) {
    let mut stream = TcpStream::connect(addr).await.expect("connect to proxy");
    let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let reply = read_reply(&mut stream).await.expect("a reply to CONNECT");
    (reply, stream)
}

/// Test certificates (CA, server for localhost/127.0.0.1), made once per test run.
pub(super) fn certs() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("egress-warden-proxy-certs-{}", std::process::id()));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/proxy/make-certs.sh");
        let status = std::process::Command::new("sh")
            .arg(script)
            .arg(&dir)
            .status()
            .expect("run make-certs.sh");
        assert!(status.success(), "make-certs.sh failed");
        dir
    })
}

pub(super) fn ca_pem() -> String {
    certs().join("ca.pem").display().to_string()
}

/// A loopback port with nothing listening.
pub(super) fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}
