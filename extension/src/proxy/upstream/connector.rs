//! The connector behind hyper's pooled client: resolve-check-connect ([`Dialer`]), then TLS
//! for `https` (ALPN decides HTTP/2). Each connection carries a [`ConnInfo`] that hyper
//! copies into every response it serves, which is how a request learns whether its
//! connection was new (and what opening it cost) or reused.
//!
//! Route warm-ups open connections ahead of need and park them ([`Prewarmed`]); hyper's pool
//! adopts a parked one when it next asks for a connection to that upstream. Every connection
//! carries a [`Health`] cell, so a stale one is found before a request is written to it.

use crate::metrics::{ConnectPurpose, OpenConnection};
use crate::proxy::policy::explain::Explained;
use crate::proxy::policy::host::Target;
use crate::proxy::upstream::connect::{ms_since, Dialer, Failure};
use crate::proxy::upstream::liveness::{Health, Liveness, Registry};
use crate::proxy::upstream::pool_stats::{OpenGuard, PoolStats};
use crate::proxy::upstream::prewarmed::{Parkable, Prewarmed};
use crate::proxy::upstream::tls::{server_name, TlsProblem, TlsSetup};
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

/// Facts about one upstream connection, attached to every response it carries.
#[derive(Clone, Debug)]
pub(crate) struct ConnInfo {
    pub addr: SocketAddr,
    pub dns_ms: Option<f64>,
    pub connect_ms: f64,
    pub tls_ms: Option<f64>,
    pub observed: Option<&'static str>,
    pub http2: bool,
    pub pool_key: Arc<str>,
    first_use: Arc<AtomicBool>,
}

impl ConnInfo {
    /// True exactly once: for the first response on this connection.
    pub(crate) fn take_first_use(&self) -> bool {
        self.first_use.swap(false, Ordering::Relaxed)
    }
}

#[derive(Clone)]
pub(crate) struct WardenConnector {
    pub dialer: Arc<Dialer>,
    pub tls: Arc<TlsSetup>,
    pub pools: Arc<PoolStats>,
    /// Route connections opened by the warm-up, waiting for their first request.
    pub parked: Arc<Prewarmed<Conn>>,
    pub registry: Arc<Registry>,
}

/// The pool key hyper's client uses for a URI (`scheme://host:port`), and the target.
pub(crate) fn pool_key(uri: &Uri) -> Result<(String, Target, bool), Failure> {
    let https = uri.scheme_str() == Some("https");
    let default_port = if https { 443 } else { 80 };
    let invalid = |message: String| {
        tracing::debug!("upstream URI rejected: {message}");
        Failure::Denied {
            reason: "invalid_host",
            addr: None,
            explained: Box::new(Explained {
                rule: message,
                fix: None,
            }),
        }
    };
    let authority = uri
        .authority()
        .ok_or_else(|| invalid(format!("{uri} has no host")))?;
    let target = Target::from_authority(authority, Some(default_port)).map_err(invalid)?;
    let scheme = if https { "https" } else { "http" };
    Ok((format!("{scheme}://{target}"), target, https))
}

impl WardenConnector {
    /// A parked connection for this URI (checked alive), else a new one.
    async fn connect(self, uri: Uri) -> Result<Conn, Failure> {
        let (key, _, _) = pool_key(&uri)?;
        if let Some(conn) = self.parked.take(&key) {
            conn.io.inner().health.set_parked(false);
            return Ok(conn);
        }
        self.open(uri, ConnectPurpose::Request).await
    }

    /// Opens a connection ahead of need and parks it for the pool to adopt.
    pub(crate) async fn warm(&self, uri: Uri) -> Result<ConnInfo, Failure> {
        let conn = self.clone().open(uri, ConnectPurpose::Warm).await?;
        // Its first request is a reuse: what opening it cost was paid during the warm-up.
        conn.info.first_use.store(false, Ordering::Relaxed);
        conn.io.inner().health.set_parked(true);
        let info = conn.info.clone();
        self.parked.park(info.pool_key.to_string(), conn);
        Ok(info)
    }

    async fn open(self, uri: Uri, purpose: ConnectPurpose) -> Result<Conn, Failure> {
        let (key, target, https) = pool_key(&uri)?;
        let dialed = self.dialer.dial_for(&target, purpose).await?;
        let pool_key: Arc<str> = Arc::from(key);
        let fd = dialed.stream.as_raw_fd();
        let counted = dialed.open;
        let mut info = ConnInfo {
            addr: dialed.addr,
            dns_ms: dialed.dns_ms,
            connect_ms: dialed.connect_ms,
            tls_ms: None,
            observed: dialed.observed,
            http2: false,
            pool_key: pool_key.clone(),
            first_use: Arc::new(AtomicBool::new(true)),
        };
        let stream = if https {
            let tls_err = |message: String| Failure::Tls {
                addr: dialed.addr,
                message,
                problem: TlsProblem::Handshake,
            };
            let connector = self.tls.connector().map_err(tls_err)?;
            let name = server_name(&target.host).map_err(tls_err)?;
            let started = Instant::now();
            let handshake = connector.connect(name, dialed.stream);
            let tls = match tokio::time::timeout(self.dialer.connect_timeout, handshake).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    return Err(Failure::Tls {
                        addr: dialed.addr,
                        message: err.to_string(),
                        problem: TlsProblem::of(&err),
                    })
                }
                Err(_) => return Err(tls_err("handshake timed out".into())),
            };
            info.tls_ms = Some(ms_since(started));
            info.http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            Either::Right(Box::new(tls))
        } else {
            Either::Left(dialed.stream)
        };
        // Listed only once the stream owns the socket: it closes after `Watched::drop`.
        let health = self
            .registry
            .track(fd, &target.host, info.addr, pool_key.clone(), info.http2);
        let guard = self.pools.opened(pool_key.to_string(), info.http2);
        Ok(Conn {
            io: TokioIo::new(Watched { stream, health }),
            info,
            _open: guard,
            _counted: counted,
        })
    }
}

impl tower_service::Service<Uri> for WardenConnector {
    type Response = Conn;
    type Error = Failure;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, Failure>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

/// Plain TCP or TLS over it.
type Stream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// The stream with its health cell: every write after an idle period is preceded by a
/// check, every read reports what it saw.
struct Watched {
    stream: Stream,
    health: Arc<Health>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        // Before `stream` (and with it the socket) closes.
        self.health.close();
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.health.before_read(cx.waker())?;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        let stale = match &polled {
            Poll::Ready(Ok(())) => this.health.after_read(Ok(buf.filled().len() == before)),
            Poll::Ready(Err(err)) => this.health.after_read(Err(err)),
            Poll::Pending => None,
        };
        match stale {
            Some(err) => Poll::Ready(Err(err)),
            None => polled,
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.health.before_write()?;
        let written = Pin::new(&mut this.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(_)) = written {
            this.health.wrote();
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.health.before_write()?;
        let written = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(_)) = written {
            this.health.wrote();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// One upstream connection as hyper's pool holds it.
pub(crate) struct Conn {
    io: TokioIo<Watched>,
    info: ConnInfo,
    _open: OpenGuard,
    /// Counted as an open upstream connection (`connections_peak`) while the pool holds it.
    _counted: OpenConnection,
}

impl Parkable for Conn {
    fn host(&self) -> &str {
        self.io.inner().health.host()
    }

    fn addr(&self) -> SocketAddr {
        self.info.addr
    }

    fn liveness(&self) -> Liveness {
        // The health cell notes a dead connection itself.
        match self.io.inner().health.check() {
            Some(Liveness::Alive) => Liveness::Alive,
            _ => Liveness::Gone,
        }
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        let connected = Connected::new().extra(self.info.clone());
        if self.info.http2 {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
