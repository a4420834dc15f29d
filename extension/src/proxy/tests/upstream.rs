//! Upstream servers for the proxy tests, plain or TLS (HTTP/2 by ALPN when offered).
//!
//! Paths: `/fail/<n>/<key>` answers 503 to the first n requests for key, then 200 with the
//! `Idempotency-Key` of every request for key (`ok after 3 keys=a,a,a`);
//! `/reset/<n>/<key>` drops the connection the first n times; `/slow/<ms>` waits first;
//! anything else echoes `name method path host=… via=… proto=… body=<len>`.

use super::certs;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;

pub(in crate::proxy) struct TestUpstream {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct State {
    name: &'static str,
    hits: Arc<Mutex<HashMap<String, Vec<String>>>>,
}

type Reply = Result<Response<Full<Bytes>>, std::io::Error>;

async fn respond(state: State, req: Request<Incoming>) -> Reply {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let host = header(&req, "host");
    let via = header(&req, "via");
    let auth = header(&req, "proxy-authorization");
    let key = header(&req, "idempotency-key");
    let proto = format!("{:?}", req.version());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // Each request for a key, remembered by the Idempotency-Key it carried.
    let hit = |k: &str| {
        let mut hits = state.hits.lock().unwrap_or_else(|p| p.into_inner());
        let seen = hits.entry(k.to_owned()).or_default();
        seen.push(key.clone());
        (seen.len() as u32, seen.join(","))
    };
    let text = |status: StatusCode, body: String| {
        let mut res = Response::new(Full::new(Bytes::from(body)));
        *res.status_mut() = status;
        res.headers_mut()
            .insert("x-upstream", http::HeaderValue::from_static(state.name));
        Ok(res)
    };
    match parts.as_slice() {
        ["fail", n, k, ..] => {
            let n: u32 = n.parse().unwrap_or(0);
            let (seen, keys) = hit(k);
            if seen <= n {
                text(StatusCode::SERVICE_UNAVAILABLE, format!("failing {seen}/{n}"))
            } else {
                text(StatusCode::OK, format!("ok after {seen} keys={keys}"))
            }
        }
        ["reset", n, k, ..] => {
            let n: u32 = n.parse().unwrap_or(0);
            if hit(k).0 <= n {
                Err(std::io::Error::other("reset on purpose"))
            } else {
                text(StatusCode::OK, "ok after reset".into())
            }
        }
        ["slow", ms, ..] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            text(StatusCode::OK, "slow ok".into())
        }
        _ => text(
            StatusCode::OK,
            format!(
                "{} {method} {path} host={host} via={via} proto={proto} body={} auth={auth} key={key}",
                state.name,
                body.len()
            ),
        ),
    }
}

fn header(req: &Request<Incoming>, name: &str) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

fn state(name: &'static str) -> State {
    State {
        name,
        hits: Arc::new(Mutex::new(HashMap::new())),
    }
}

/// Plain HTTP/1.1 upstream.
pub(in crate::proxy) async fn http(name: &'static str) -> TestUpstream {
    http_with(name, None).await
}

/// Plain HTTP/1.1 upstream that closes every connection idle for `idle`.
pub(in crate::proxy) async fn http_closing_idle(
    name: &'static str,
    idle: Duration,
) -> TestUpstream {
    http_with(name, Some(idle)).await
}

async fn http_with(name: &'static str, idle_close: Option<Duration>) -> TestUpstream {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicU64::new(0));
    let counted = connections.clone();
    let st = state(name);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            let st = st.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| respond(st.clone(), req));
                let stream = IdleClose::new(stream, idle_close);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    TestUpstream {
        addr,
        connections,
        task,
    }
}

/// TLS upstream with the test certificate; offers h2 when `h2`.
pub(in crate::proxy) async fn tls(name: &'static str, h2: bool) -> TestUpstream {
    tls_with(name, h2, None).await
}

/// A TLS upstream that closes every connection idle for `idle`, as servers and load
/// balancers close idle keep-alive connections.
pub(in crate::proxy) async fn tls_closing_idle(
    name: &'static str,
    h2: bool,
    idle: Duration,
) -> TestUpstream {
    tls_with(name, h2, Some(idle)).await
}

async fn tls_with(name: &'static str, h2: bool, idle_close: Option<Duration>) -> TestUpstream {
    let dir = certs();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .expect("server.pem")
        .map(|c| c.expect("cert"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).expect("server.key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    config.alpn_protocols = if h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicU64::new(0));
    let counted = connections.clone();
    let st = state(name);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            let st = st.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let stream = IdleClose::new(stream, idle_close);
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let is_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let svc = service_fn(move |req| respond(st.clone(), req));
                if is_h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                }
            });
        }
    });
    TestUpstream {
        addr,
        connections,
        task,
    }
}

/// Reads end (EOF) once nothing arrived for `idle`: the server then closes the connection.
struct IdleClose<T> {
    inner: T,
    idle: Option<Duration>,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<T> IdleClose<T> {
    fn new(inner: T, idle: Option<Duration>) -> Self {
        let first = idle.unwrap_or(Duration::from_secs(3600));
        IdleClose {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(first)),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleClose<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                if let Some(idle) = self.idle {
                    self.timer
                        .as_mut()
                        .reset(tokio::time::Instant::now() + idle);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(done) => Poll::Ready(done),
            Poll::Pending if self.idle.is_some() => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Ok(())),
                Poll::Pending => Poll::Pending,
            },
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleClose<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A plain TCP echo server that closes connections idle for `idle`; counts accepted ones.
pub(in crate::proxy) async fn echo_closing_idle(idle: Duration) -> TestUpstream {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicU64::new(0));
    let counted = connections.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(Ok(n)) = tokio::time::timeout(idle, stream.read(&mut buf)).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    TestUpstream {
        addr,
        connections,
        task,
    }
}

/// A plain TCP server whose first connection answers its first bytes with RST (as a NAT that
/// forgot the flow does); later connections echo. Counts accepted connections.
pub(in crate::proxy) async fn reset_first_then_echo() -> TestUpstream {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicU64::new(0));
    let counted = connections.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let index = counted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                if index == 0 {
                    // Closing with unread data (and zero linger) sends RST.
                    let _ = stream.peek(&mut [0u8; 1]).await;
                    let _ = stream.set_zero_linger();
                    return;
                }
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    TestUpstream {
        addr,
        connections,
        task,
    }
}
