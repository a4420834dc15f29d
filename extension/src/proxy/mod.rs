//! The localhost egress proxy (127.0.0.1:`EGRESS_WARDEN_PROXY_PORT`).
//!
//! - `CONNECT host:port` tunnels ([`tunnel`]) and absolute-form `http://` forwarding
//!   ([`forward`]) on pooled keep-alive upstream connections ([`upstreams`]);
//! - route mode `/<route>/<path>` → the route's `https://` upstream with rustls, HTTP/2
//!   when offered, safe retries and a breaker with fallback ([`route`], [`retry`],
//!   [`breaker`]);
//! - every new upstream connection: resolve once, check each address against the policy,
//!   connect to the checked address ([`connect`], [`policy`], [`ranges`], [`host`]);
//! - `GET /_warden/status` ([`status`]); client limits ([`limits`], [`listener`]);
//! - one record per request: metrics and a decision log line ([`record`], [`outcome`]);
//! - connections opened ahead of need and parked until used ([`prewarmed`], driven through
//!   [`Warmer`]); idle connections checked before reuse and after a freeze ([`liveness`]).

mod body;
mod breaker;
mod connect;
mod connector;
mod forward;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
mod headers;
mod host;
mod limits;
mod listener;
mod liveness;
mod outcome;
mod policy;
mod pool_stats;
mod prewarmed;
mod ranges;
mod record;
mod region;
mod relay;
mod retry;
mod route;
mod service;
mod slots;
mod status;
mod tls;
mod tunnel;
mod upstreams;

#[cfg(test)]
mod tests;

use crate::context::Context;
use crate::dns::DnsCache;
use crate::metrics::ConnectPurpose;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tokio::task::JoinHandle;

pub use limits::Timeouts as ClientTimeouts;
pub use liveness::Revalidated;

/// The running proxy listener.
pub struct ProxyHandle {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
    proxy: Arc<service::Proxy>,
}

impl ProxyHandle {
    /// The bound address (tells the port when `proxy_port` was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Opens connections ahead of need, and checks idle ones after a freeze.
    pub fn warmer(&self) -> Warmer {
        Warmer {
            proxy: self.proxy.clone(),
        }
    }

    /// Stops accepting new connections at once (connections in progress carry on).
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// Binds 127.0.0.1:`proxy_port` (synchronously, so the port is ready before Lambda
/// registration returns) and serves until `ctx.shutting_down()` resolves.
pub async fn bind(ctx: &Context, dns: Arc<DnsCache>) -> io::Result<ProxyHandle> {
    bind_with(ctx, dns, ClientTimeouts::default())
}

/// [`bind`] with other client timeouts (tests).
pub fn bind_with(
    ctx: &Context,
    dns: Arc<DnsCache>,
    timeouts: ClientTimeouts,
) -> io::Result<ProxyHandle> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, ctx.config.proxy_port))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let local_addr = listener.local_addr()?;
    let proxy = Arc::new(service::Proxy::new(ctx, dns, local_addr.port(), timeouts));
    let task = tokio::spawn(listener::serve(listener, proxy.clone()));
    tracing::info!("proxy listening on {local_addr}");
    Ok(ProxyHandle {
        local_addr,
        task,
        proxy,
    })
}

/// Opens upstream connections ahead of need (resolving, and so filling the DNS cache, on
/// the way) and parks them where the next request looks first. Cheap to clone.
#[derive(Clone)]
pub struct Warmer {
    proxy: Arc<service::Proxy>,
}

/// One connection made ready by the warm-up.
#[derive(Debug, Clone)]
pub struct Warmed {
    pub addr: SocketAddr,
    pub dns_ms: Option<f64>,
    pub connect_ms: f64,
    /// Route targets: the TLS handshake.
    pub tls_ms: Option<f64>,
    pub http2: bool,
}

/// Why a warm-up connection could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmError(pub String);

impl std::fmt::Display for WarmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WarmError {}

impl Warmer {
    /// Connects to `host:port` and parks the socket for the next `CONNECT` to it.
    pub async fn warm_host_port(&self, host: &str, port: u16) -> Result<Warmed, WarmError> {
        let target = host::Target::new(host, port).map_err(WarmError)?;
        let dialed = self
            .proxy
            .dialer
            .dial_for(&target, ConnectPurpose::Warm)
            .await
            .map_err(|f| WarmError(f.to_string()))?;
        let warmed = Warmed {
            addr: dialed.addr,
            dns_ms: dialed.dns_ms,
            connect_ms: dialed.connect_ms,
            tls_ms: None,
            http2: false,
        };
        let socket = prewarmed::ParkedSocket {
            dialed,
            host: target.host.clone(),
            parked_at: std::time::Instant::now(),
        };
        self.proxy.sockets.park(target.destination(), socket);
        Ok(warmed)
    }

    /// Pre-connected sockets waiting for a `CONNECT` to `host:port`.
    pub fn parked_host_port(&self, host: &str, port: u16) -> usize {
        match host::Target::new(host, port) {
            Ok(target) => self.proxy.sockets.count(&target.destination()),
            Err(_) => 0,
        }
    }

    /// Opens a TLS connection to the route's primary upstream and parks it for the pool.
    pub async fn warm_route(&self, name: &str) -> Result<Warmed, WarmError> {
        let uri = self.route_uri(name)?;
        let info = self
            .proxy
            .upstreams
            .connector()
            .warm(uri)
            .await
            .map_err(|f| WarmError(f.to_string()))?;
        Ok(Warmed {
            addr: info.addr,
            dns_ms: info.dns_ms,
            connect_ms: info.connect_ms,
            tls_ms: info.tls_ms,
            http2: info.http2,
        })
    }

    /// Open connections to the route's primary upstream (pooled, busy or parked).
    pub fn route_connections(&self, name: &str) -> usize {
        let Ok(uri) = self.route_uri(name) else {
            return 0;
        };
        match connector::pool_key(&uri) {
            Ok((key, _, _)) => self.proxy.upstreams.connector().registry.open_for(&key),
            Err(_) => 0,
        }
    }

    fn route_uri(&self, name: &str) -> Result<http::Uri, WarmError> {
        let route = self
            .proxy
            .ctx
            .config
            .route(name)
            .ok_or_else(|| WarmError(format!("no route named {name:?}")))?;
        let key = route::upstream_key(&route.primary);
        key.parse()
            .map_err(|_| WarmError(format!("{key} is not a usable upstream")))
    }

    /// After a restore from a snapshot: drops every parked connection and retires every
    /// pooled one, alive or not, so no request is sent on a connection from before the
    /// snapshot. Returns how many connections were let go.
    pub fn retire_all(&self) -> usize {
        let connector = self.proxy.upstreams.connector();
        self.proxy.sockets.clear() + connector.parked.clear() + connector.registry.retire_all()
    }

    /// After a freeze: drops dead parked connections and checks every pooled one, so none is
    /// handed to a request; each dead one is noted as a caught stale connection.
    pub fn revalidate(&self) -> Revalidated {
        let connector = self.proxy.upstreams.connector();
        let mut found = Revalidated::default();
        // Parked first: their dead ones close now, and the registry then skips them.
        for (checked, dropped) in [self.proxy.sockets.purge(), connector.parked.purge()] {
            found.checked += checked;
            found.dead += dropped;
        }
        let pooled = connector.registry.revalidate();
        found.checked += pooled.checked;
        found.dead += pooled.dead;
        found
    }
}
