//! The pooled upstream client (HTTP/1.1 keep-alive, HTTP/2 when ALPN offers it), shared by
//! absolute-form forwarding and route mode.
//!
//! Idle connections leave the pool before `EGRESS_WARDEN_POOL_IDLE_S`, below the NAT
//! gateway's 350 s idle timeout, after which it answers with RST. hyper's pool measures
//! idleness on the monotonic clock, which may not advance while Lambda freezes the sandbox;
//! so when the wall clock says the pool sat unused longer than that, the whole pool is
//! dropped and rebuilt rather than trusted.

use super::body::UpstreamBody;
use super::connector::WardenConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

    /// What opens (and parks) upstream connections.
    pub(crate) fn connector(&self) -> &WardenConnector {
        &self.connector
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

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
