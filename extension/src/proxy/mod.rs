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
//! - one record per request: metrics and a decision log line ([`record`], [`outcome`]).

mod body;
mod breaker;
mod connect;
mod connector;
mod forward;
mod headers;
mod host;
mod limits;
mod listener;
mod outcome;
mod policy;
mod pool_stats;
mod ranges;
mod record;
mod region;
mod relay;
mod retry;
mod route;
mod service;
mod status;
mod tls;
mod tunnel;
mod upstreams;

#[cfg(test)]
mod tests;

use crate::context::Context;
use crate::dns::DnsCache;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tokio::task::JoinHandle;

pub use limits::Timeouts as ClientTimeouts;

/// The running proxy listener.
pub struct ProxyHandle {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl ProxyHandle {
    /// The bound address (tells the port when `proxy_port` was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
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
    let config = &ctx.config;
    let dialer = Arc::new(connect::Dialer {
        dns: dns.clone(),
        policy: policy::Policy::new(
            config.policy.clone(),
            vec![local_addr.port(), config.dns_port],
        ),
        connect_timeout: config.connect_timeout,
        recorder: ctx.recorder.clone(),
        clock: ctx.clock.clone(),
    });
    let pools = Arc::new(pool_stats::PoolStats::default());
    let connector = connector::WardenConnector {
        dialer: dialer.clone(),
        tls: Arc::new(tls::TlsSetup::new(config.ca_bundle.clone())),
        pools: pools.clone(),
    };
    let proxy = Arc::new(service::Proxy::new(service::ProxyParts {
        ctx: ctx.clone(),
        dialer,
        upstreams: upstreams::Upstreams::new(connector, config.pool_idle),
        breakers: breaker::Breakers::new(breaker::FAILURES_TO_OPEN, breaker::OPEN_FOR),
        pools,
        dns,
        port: local_addr.port(),
        timeouts,
    }));
    let task = tokio::spawn(listener::serve(listener, proxy));
    tracing::info!("proxy listening on {local_addr}");
    Ok(ProxyHandle { local_addr, task })
}
