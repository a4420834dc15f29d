//! How the demo function reaches a URL, timed step by step: the way a function does it that
//! builds its HTTP client per call (`requests.get`, a fresh SDK client): one new connection per
//! request, so each number says what that request cost on its own.
//!
//! - `http://` with `HTTP_PROXY`: absolute-form request to the proxy;
//! - `https://` with `HTTPS_PROXY`: `CONNECT` tunnel through the proxy, TLS inside it;
//! - a URL on the proxy itself (`http://127.0.0.1:3128/<route>/…`, route mode): direct;
//! - otherwise direct: resolve (through `DEMO_DNS_SERVER` when set), connect, TLS for https.
//!
//! `NO_PROXY` is deliberately not honoured: the demo exists to send traffic through the proxy,
//! including to loopback test servers.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use hyper::Uri;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A stream hyper can speak HTTP/1.1 over: plain TCP or TLS.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where the function sends its requests, from its environment.
#[derive(Clone, Debug, Default)]
pub(crate) struct Setup {
    /// `host:port` of `HTTP_PROXY` / `HTTPS_PROXY`.
    pub(crate) http_proxy: Option<String>,
    pub(crate) https_proxy: Option<String>,
    /// `DEMO_DNS_SERVER`: the resolver direct requests ask.
    pub(crate) dns_server: Option<SocketAddr>,
    /// `DEMO_CA_FILE`: the CAs trusted for TLS (else the system's).
    pub(crate) ca_file: Option<String>,
}

pub(crate) fn first_env(keys: &[&str]) -> Option<String> {
    keys.iter()
        .filter_map(|k| std::env::var(k).ok())
        .find(|v| !v.trim().is_empty())
}

impl Setup {
    pub(crate) fn from_env() -> Result<Setup, String> {
        let proxy = |keys: &[&str]| -> Result<Option<String>, String> {
            first_env(keys)
                .map(|p| {
                    let uri: Uri = p.parse().map_err(|e| format!("bad proxy {p:?}: {e}"))?;
                    Ok(Target::of(&uri)?.authority())
                })
                .transpose()
        };
        Ok(Setup {
            http_proxy: proxy(&["HTTP_PROXY", "http_proxy"])?,
            https_proxy: proxy(&["HTTPS_PROXY", "https_proxy"])?,
            dns_server: first_env(&["DEMO_DNS_SERVER"])
                .map(|s| s.parse().map_err(|e| format!("DEMO_DNS_SERVER={s}: {e}")))
                .transpose()?,
            ca_file: first_env(&["DEMO_CA_FILE"]),
        })
    }
}

/// Scheme, host and port of a URL.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Target {
    pub(crate) tls: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl Target {
    pub(crate) fn of(uri: &Uri) -> Result<Target, String> {
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(other) => return Err(format!("unsupported scheme {other:?}")),
            None => return Err("URL has no scheme".to_string()),
        };
        let host = uri.host().ok_or("URL has no host")?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(Target {
            tls,
            host: host.to_string(),
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
        })
    }

    pub(crate) fn authority(&self) -> String {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => format!("[{}]:{}", self.host, self.port),
            _ => format!("{}:{}", self.host, self.port),
        }
    }
}

/// Milliseconds per step of one request (`None`: the step did not happen).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub(crate) struct Steps {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) dns_ms: Option<f64>,
    /// TCP connect; through a proxy tunnel, until the proxy answered `CONNECT`.
    pub(crate) connect_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tls_ms: Option<f64>,
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn tls_connector(ca_file: Option<&str>) -> Result<TlsConnector, String> {
    static BUILT: OnceLock<Result<TlsConnector, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            match ca_file {
                Some(path) => {
                    for cert in CertificateDer::pem_file_iter(path)
                        .map_err(|e| format!("DEMO_CA_FILE={path}: {e}"))?
                    {
                        let cert = cert.map_err(|e| format!("DEMO_CA_FILE={path}: {e}"))?;
                        roots
                            .add(cert)
                            .map_err(|e| format!("DEMO_CA_FILE={path}: {e}"))?;
                    }
                }
                None => {
                    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                }
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(TlsConnector::from(Arc::new(config)))
        })
        .clone()
}

async fn resolve(setup: &Setup, host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    match setup.dns_server {
        Some(server) => Ok(SocketAddr::new(
            crate::dns::resolve_a(server, host).await?,
            port,
        )),
        None => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("resolve {host}: no address")),
    }
}

/// Opens a tunnel to `target` through the proxy at `proxy` (`CONNECT`).
async fn tunnel(proxy: &str, target: &Target) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(proxy)
        .await
        .map_err(|e| format!("connect proxy {proxy}: {e}"))?;
    let _ = s.set_nodelay(true);
    let authority = target.authority();
    let head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    s.write_all(head.as_bytes())
        .await
        .map_err(|e| format!("CONNECT: {e}"))?;
    // The answer's head, byte by byte: nothing of the tunnel may be read past it.
    let mut buf = Vec::with_capacity(256);
    while !buf.ends_with(b"\r\n\r\n") {
        if buf.len() > 8192 {
            return Err("CONNECT: answer head too long".into());
        }
        let b = s.read_u8().await.map_err(|e| format!("CONNECT: {e}"))?;
        buf.push(b);
    }
    let text = String::from_utf8_lossy(&buf);
    let status = text.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        let why = text
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("x-egress-warden-error")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_default();
        return Err(format!(
            "CONNECT {authority}: proxy answered {status} {why}"
        ));
    }
    Ok(s)
}

/// A connection ready for the request to `target`, how it was made, and what it cost.
pub(crate) async fn open(
    setup: &Setup,
    target: &Target,
) -> Result<(Box<dyn Io>, &'static str, Steps), String> {
    let mut steps = Steps::default();
    let proxy = if target.tls {
        setup.https_proxy.as_deref()
    } else {
        setup.http_proxy.as_deref()
    };
    let on_proxy = proxy.is_some_and(|p| p == target.authority());
    let (tcp, via) = match proxy {
        Some(p) if target.tls => {
            let t = Instant::now();
            let s = tunnel(p, target).await?;
            steps.connect_ms = ms_since(t);
            (s, "proxy")
        }
        Some(p) if !on_proxy => {
            let t = Instant::now();
            let s = TcpStream::connect(p)
                .await
                .map_err(|e| format!("connect proxy {p}: {e}"))?;
            steps.connect_ms = ms_since(t);
            (s, "proxy")
        }
        _ => {
            let t = Instant::now();
            let addr = resolve(setup, &target.host, target.port).await?;
            if target.host.parse::<IpAddr>().is_err() {
                steps.dns_ms = Some(ms_since(t));
            }
            let t = Instant::now();
            let s = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect {addr}: {e}"))?;
            steps.connect_ms = ms_since(t);
            (s, if on_proxy { "route" } else { "direct" })
        }
    };
    let _ = tcp.set_nodelay(true);
    if !target.tls {
        return Ok((Box::new(tcp), via, steps));
    }
    let connector = tls_connector(setup.ca_file.as_deref())?;
    let name = ServerName::try_from(target.host.clone())
        .map_err(|e| format!("TLS name {}: {e}", target.host))?;
    let t = Instant::now();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {}: {e}", target.host))?;
    steps.tls_ms = Some(ms_since(t));
    Ok((Box::new(tls), via, steps))
}
