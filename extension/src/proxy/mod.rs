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
mod client;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
mod listener;
mod modes;
mod policy;
mod request;
mod shaping;
mod shared;
mod upstream;
mod warmer;

#[cfg(test)]
mod tests;

use crate::clock::InvocationClock;
use crate::config::Config;
use crate::dns::DnsCache;
use crate::findings::Findings;
use crate::metrics::Recorder;
use crate::shutdown::Shutdown;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tokio::task::JoinHandle;

pub use client::limits::Timeouts as ClientTimeouts;
pub use upstream::liveness::Revalidated;
pub use warmer::{WarmError, Warmed, Warmer};

/// The running proxy listener.
pub struct ProxyHandle {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
    proxy: Arc<shared::Proxy>,
}

impl ProxyHandle {
    /// The bound address (tells the port when `proxy_port` was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Opens connections ahead of need, and checks idle ones after a freeze.
    pub fn warmer(&self) -> Warmer {
        Warmer::new(self.proxy.clone())
    }

    /// Stops accepting new connections at once (connections in progress carry on).
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// What the proxy is built from.
#[derive(Clone)]
pub struct ProxyDeps {
    /// Ports, policy, routes, timeouts, pool and retry settings.
    pub config: Arc<Config>,
    /// Where every request, connect and stale connection is counted.
    pub recorder: Recorder,
    /// The invocation's deadline bounds route retries.
    pub clock: Arc<InvocationClock>,
    /// Listed by the status page.
    pub findings: Arc<Findings>,
    /// Stops the listener; answers after it close their connection.
    pub shutdown: Shutdown,
    /// Resolves upstream host names (the cache the DNS listener serves).
    pub dns: Arc<DnsCache>,
}

/// Binds 127.0.0.1:`proxy_port` (synchronously, so the port is ready before Lambda
/// registration returns) and serves until shutdown.
pub async fn bind(deps: ProxyDeps) -> io::Result<ProxyHandle> {
    bind_with(deps, ClientTimeouts::default())
}

/// [`bind`] with other client timeouts (tests).
pub fn bind_with(deps: ProxyDeps, timeouts: ClientTimeouts) -> io::Result<ProxyHandle> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, deps.config.proxy_port))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let local_addr = listener.local_addr()?;
    let proxy = Arc::new(shared::Proxy::new(deps, local_addr.port(), timeouts));
    let task = tokio::spawn(listener::serve(listener, proxy.clone()));
    tracing::info!("proxy listening on {local_addr}");
    Ok(ProxyHandle {
        local_addr,
        task,
        proxy,
    })
}
