//! The Telemetry API listener: Lambda POSTs batches of platform records here, and the
//! lifecycle learns from them what it gets no event for: invocations on Managed Instances,
//! restores from a SnapStart snapshot, runtime outcomes.
//!
//! The listener binds the sandbox's own address (`sandbox.localdomain` in `/etc/hosts`,
//! loopback where there is no such entry), so nothing outside the execution environment can
//! reach it. Every batch is answered `200`, whatever it holds: an unknown record type is
//! counted and ignored ([`records`]), never a reason to refuse the records around it. A batch
//! that announces a restore is answered once the lifecycle has dealt with it (at most
//! `hold_limit` later), so a platform that waits for the answer finds the warm-up done.
//!
//! Deliveries are read and parsed on a thread of their own: a batch can hold a thousand
//! records, and the INVOKE acknowledgement on the async workers must not wait behind it.

mod records;

pub use records::{parse_batch, Batch, PlatformEvent};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

/// The schema for on-demand, provisioned-concurrency and SnapStart environments.
pub const SCHEMA: &str = "2022-12-13";
/// The schema Lambda Managed Instances require.
pub const SCHEMA_MANAGED_INSTANCES: &str = "2025-01-29";
/// The host name Lambda delivers to.
const SANDBOX_HOST: &str = "sandbox.localdomain";
/// Larger than any batch Lambda sends (`maxBytes` is at most 1 MiB).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// One delivered batch on its way to the lifecycle. The delivery is answered when `done` is
/// dropped or sent, if the batch announced a restore; at once otherwise.
pub struct Delivery {
    pub batch: Batch,
    pub done: oneshot::Sender<()>,
}

/// The bound listener; dropping it stops accepting.
pub struct TelemetryListener {
    uri: String,
    _stop: oneshot::Sender<()>,
}

impl TelemetryListener {
    /// Binds a free port on the sandbox's address and serves deliveries into the channel
    /// from a thread of its own.
    pub fn bind(
        hold_limit: Duration,
    ) -> io::Result<(TelemetryListener, mpsc::UnboundedReceiver<Delivery>)> {
        let ip = sandbox_ip(&std::fs::read_to_string("/etc/hosts").unwrap_or_default());
        let listener = std::net::TcpListener::bind(SocketAddr::new(ip, 0))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("warden-telemetry".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(err) => {
                            tracing::warn!("telemetry listener: {err}");
                            return;
                        }
                    };
                    tokio::select! {
                        () = serve(listener, tx, hold_limit) => {}
                        _ = stopped => {}
                    }
                });
            })?;
        let uri = format!("http://{SANDBOX_HOST}:{port}/telemetry");
        Ok((TelemetryListener { uri, _stop: stop }, rx))
    }

    /// The destination URI to subscribe.
    pub fn uri(&self) -> &str {
        &self.uri
    }
}

/// The IPv4 address `/etc/hosts` gives the sandbox's name; loopback without one (local
/// emulators map the name to loopback). Read from the file, not resolved: a DNS query for a
/// name that only `/etc/hosts` may know would stall INIT on a resolver that does not answer.
fn sandbox_ip(hosts: &str) -> IpAddr {
    hosts
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let ip = fields.next()?.parse::<Ipv4Addr>().ok()?;
            fields
                .any(|name| name.eq_ignore_ascii_case(SANDBOX_HOST) || name == "sandbox")
                .then_some(IpAddr::V4(ip))
        })
        .next()
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

async fn serve(listener: TcpListener, tx: mpsc::UnboundedSender<Delivery>, hold_limit: Duration) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::debug!("telemetry listener: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let tx = tx.clone();
                async move { Ok::<_, Infallible>(deliver(req, &tx, hold_limit).await) }
            });
            if let Err(err) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("telemetry delivery connection: {err}");
            }
        });
    }
}

async fn deliver(
    req: Request<Incoming>,
    tx: &mpsc::UnboundedSender<Delivery>,
    hold_limit: Duration,
) -> Response<Full<Bytes>> {
    let batch = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => parse_batch(&body.to_bytes()),
        Err(err) => {
            tracing::debug!("telemetry delivery unreadable: {err}");
            Batch {
                events: Vec::new(),
                ignored: 1,
            }
        }
    };
    let restore = batch.events.contains(&PlatformEvent::RestoreStart);
    let (done, finished) = oneshot::channel();
    if tx.send(Delivery { batch, done }).is_ok() && restore {
        // An error means the lifecycle let go of it: done either way.
        let _ = tokio::time::timeout(hold_limit, finished).await;
    }
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::OK;
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sandbox_address_comes_from_etc_hosts_else_loopback() {
        let hosts = "127.0.0.1 localhost\n# 10.9.9.9 sandbox.localdomain\n\
                     169.254.100.1   sandbox.localdomain sandbox  # the sandbox\n";
        assert_eq!(sandbox_ip(hosts), IpAddr::from([169, 254, 100, 1]));
        assert_eq!(
            sandbox_ip("::1 sandbox.localdomain\n"),
            IpAddr::from([127, 0, 0, 1])
        );
        assert_eq!(sandbox_ip(""), IpAddr::from([127, 0, 0, 1]));
    }
}
