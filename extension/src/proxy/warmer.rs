//! The warm-up's handle on the proxy: opens upstream connections ahead of need and parks
//! them where the next request looks first; after a freeze or a restore, checks or retires
//! what is parked and pooled.

use super::modes::route::upstream_key;
use super::policy::host::Target;
use super::shared::Proxy;
use super::upstream::liveness::Revalidated;
use super::upstream::prewarmed::ParkedSocket;
use crate::metrics::ConnectPurpose;
use std::net::SocketAddr;
use std::sync::Arc;

/// Opens upstream connections ahead of need (resolving, and so filling the DNS cache, on
/// the way) and parks them where the next request looks first. Cheap to clone.
#[derive(Clone)]
pub struct Warmer {
    proxy: Arc<Proxy>,
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
    pub(crate) fn new(proxy: Arc<Proxy>) -> Warmer {
        Warmer { proxy }
    }

    /// Connects to `host:port` and parks the socket for the next `CONNECT` to it.
    pub async fn warm_host_port(&self, host: &str, port: u16) -> Result<Warmed, WarmError> {
        let target = Target::new(host, port).map_err(WarmError)?;
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
        let socket = ParkedSocket {
            dialed,
            host: target.host.clone(),
            parked_at: std::time::Instant::now(),
        };
        self.proxy.sockets.park(target.destination(), socket);
        Ok(warmed)
    }

    /// Pre-connected sockets waiting for a `CONNECT` to `host:port`.
    pub fn parked_host_port(&self, host: &str, port: u16) -> usize {
        match Target::new(host, port) {
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
        self.proxy.upstreams.open_for(&uri)
    }

    fn route_uri(&self, name: &str) -> Result<http::Uri, WarmError> {
        let route = self
            .proxy
            .config
            .route(name)
            .ok_or_else(|| WarmError(format!("no route named {name:?}")))?;
        let key = upstream_key(&route.primary);
        key.parse()
            .map_err(|_| WarmError(format!("{key} is not a usable upstream")))
    }

    /// After a restore from a snapshot: drops every parked connection and retires every
    /// pooled one, alive or not, so no request is sent on a connection from before the
    /// snapshot. Returns how many connections were let go.
    pub fn retire_all(&self) -> usize {
        self.proxy.sockets.clear() + self.proxy.upstreams.retire_all()
    }

    /// After a freeze: drops dead parked connections and checks every pooled one, so none is
    /// handed to a request; each dead one is noted as a caught stale connection.
    pub fn revalidate(&self) -> Revalidated {
        // Parked sockets first: their dead ones close now, and the pool's check skips them.
        let (checked, dead) = self.proxy.sockets.purge();
        let mut found = self.proxy.upstreams.revalidate();
        found.checked += checked;
        found.dead += dead;
        found
    }
}
