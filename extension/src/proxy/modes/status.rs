//! `GET /_warden/status`: what the proxy is configured to do and how it is doing — config
//! summary (no secrets), policy rules, pools, warmed connections, DNS cache, breakers,
//! drills, busy rate limits, findings.

use crate::proxy::body::ProxyBody;
use crate::proxy::modes::route::upstream_key;
use crate::proxy::shared::Proxy;
use http::{HeaderValue, Response, StatusCode};
use std::sync::Arc;

pub(crate) fn document(proxy: &Proxy) -> serde_json::Value {
    serde_json::json!({
        "service": "egress-warden",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": proxy.started.elapsed().as_secs(),
        "invocations": proxy.clock.invocations(),
        "config": proxy.config.summary(),
        "proxy": {
            "listen": format!("127.0.0.1:{}", proxy.port),
            "active_connections": proxy.slots.active(),
            "max_connections": proxy.slots.max(),
            "policy": proxy.dialer.policy.describe(),
        },
        "pools": proxy.pools.describe(),
        // Warmed connections not taken yet: sockets for CONNECT by host:port, TLS
        // connections for routes by upstream.
        "warm": {
            "sockets": proxy.sockets.describe(),
            "routes": proxy.upstreams.describe_parked(),
        },
        "dns": proxy.dns.status(),
        "breakers": breakers(proxy),
        // Failover drills (EGRESS_WARDEN_DRILL): a route whose primary is "active" here is
        // served by its fallback whatever its breaker says.
        "drills": proxy.drills.describe(),
        // Rate-limited hosts with requests queued or held by their own Retry-After.
        "rate_limits": proxy.shaper.describe(),
        "findings": proxy.findings.describe(),
    })
}

/// The breakers, with the primary of a route under an active drill shown as `drill`.
fn breakers(proxy: &Proxy) -> serde_json::Value {
    let mut list = match proxy.breakers.describe() {
        serde_json::Value::Array(list) => list,
        _ => Vec::new(),
    };
    for route in &proxy.config.routes {
        if !proxy.drills.active(&route.name) {
            continue;
        }
        let key = upstream_key(&route.primary);
        list.retain(|b| b["upstream"] != key.as_str());
        list.push(serde_json::json!({
            "upstream": key,
            "state": "drill",
            "route": route.name,
            "left_ms": proxy.drills.left(&route.name).map(|d| d.as_millis() as u64),
        }));
    }
    serde_json::Value::Array(list)
}

pub(crate) async fn response(proxy: &Arc<Proxy>) -> Response<ProxyBody> {
    // The page shows findings as of now, not as of the last INVOKE.
    proxy.findings.refresh().await;
    let body = serde_json::to_vec_pretty(&document(proxy)).unwrap_or_else(|_| b"{}".to_vec());
    let mut res = Response::new(ProxyBody::full(body.into()));
    *res.status_mut() = StatusCode::OK;
    let headers = res.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    res
}
