//! The pooled upstream client (HTTP/1.1 keep-alive, HTTP/2 when ALPN offers it), shared by
//! absolute-form forwarding and route mode.
//!
//! Idle connections leave the pool before `EGRESS_WARDEN_POOL_IDLE_S`, below the NAT
//! gateway's 350 s idle timeout, after which it answers with RST. hyper's pool measures
//! idleness on the monotonic clock, which may not advance while Lambda freezes the sandbox;
//! so when the wall clock says the pool sat unused longer than that, the whole pool is
//! dropped and rebuilt rather than trusted.

pub(crate) mod breaker;
pub(crate) mod connect;
pub(crate) mod connector;
pub(crate) mod drill;
pub(crate) mod liveness;
pub(crate) mod pool_stats;
pub(crate) mod prewarmed;
pub(crate) mod retry;
pub(crate) mod tls;

use crate::clock::epoch_ms as wall_ms;
use crate::proxy::body::UpstreamBody;
use crate::proxy::upstream::connect::Failure;
use crate::proxy::upstream::connector::{pool_key, ConnInfo, WardenConnector};
use crate::proxy::upstream::liveness::Revalidated;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

pub(crate) type UpstreamClient = Client<WardenConnector, UpstreamBody>;

/// Idle connections kept per upstream.
const MAX_IDLE_PER_UPSTREAM: usize = 32;

pub(crate) struct Upstreams {
    connector: WardenConnector,
    pool_idle: Duration,
    client: RwLock<UpstreamClient>,
    last_used_ms: AtomicU64,
}

impl Upstreams {
    pub(crate) fn new(connector: WardenConnector, pool_idle: Duration) -> Upstreams {
        let client = build(&connector, pool_idle);
        Upstreams {
            connector,
            pool_idle,
            client: RwLock::new(client),
            last_used_ms: AtomicU64::new(0),
        }
    }

    /// Checks this pool's connections that sat idle before one is reused; dead ones go.
    pub(crate) async fn sweep(&self, pool_key: &str) {
        self.connector.registry.sweep(pool_key).await;
    }

    /// Opens a connection to `uri` (TLS for `https`) and parks it for the pool.
    pub(crate) async fn warm(&self, uri: http::Uri) -> Result<ConnInfo, Failure> {
        self.connector.warm(uri).await
    }

    /// Open connections to the upstream `uri` names (pooled, busy or parked).
    pub(crate) fn open_for(&self, uri: &http::Uri) -> usize {
        match pool_key(uri) {
            Ok((key, _, _)) => self.connector.registry.open_for(&key),
            Err(_) => 0,
        }
    }

    /// Connections parked by the warm-up, by upstream (the status page).
    pub(crate) fn describe_parked(&self) -> serde_json::Value {
        self.connector.parked.describe()
    }

    /// Drops every parked connection and retires every pooled one; how many went.
    pub(crate) fn retire_all(&self) -> usize {
        self.connector.parked.clear() + self.connector.registry.retire_all()
    }

    /// Drops dead parked connections, then checks every pooled one.
    pub(crate) fn revalidate(&self) -> Revalidated {
        let (checked, dead) = self.connector.parked.purge();
        let mut found = self.connector.registry.revalidate();
        found.checked += checked;
        found.dead += dead;
        found
    }

    /// The client to send a request with.
    pub(crate) fn client(&self) -> UpstreamClient {
        let now = wall_ms();
        let last = self.last_used_ms.swap(now, Ordering::Relaxed);
        let idle_ms = self.pool_idle.as_millis() as u64;
        if last != 0 && now.saturating_sub(last) >= idle_ms {
            let fresh = build(&self.connector, self.pool_idle);
            let mut slot = self.client.write().unwrap_or_else(|p| p.into_inner());
            *slot = fresh.clone();
            tracing::debug!(
                "upstream pool unused for {} ms (frozen?): reopened",
                now - last
            );
            return fresh;
        }
        self.client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn build(connector: &WardenConnector, pool_idle: Duration) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(pool_idle)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_max_idle_per_host(MAX_IDLE_PER_UPSTREAM)
        // The proxy sets Host itself (from the normalised target).
        .set_host(false)
        .build(connector.clone())
}
