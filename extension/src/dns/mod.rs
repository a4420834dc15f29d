//! Placeholder: the DNS cache and its localhost server (being written).

use crate::context::Context;
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Debug)]
pub struct DnsError(pub String);

impl std::fmt::Display for DnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DnsError {}

/// The one DNS cache, shared by the DNS listener and the proxy.
pub struct DnsCache {}

impl DnsCache {
    pub fn new(_ctx: &Context) -> Result<Arc<DnsCache>, DnsError> {
        Ok(Arc::new(DnsCache {}))
    }

    pub async fn lookup_ip(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        tokio::net::lookup_host((host, 0))
            .await
            .map(|addrs| addrs.map(|a| a.ip()).collect())
            .map_err(|e| DnsError(e.to_string()))
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({})
    }
}

/// The running DNS listener.
pub struct DnsServerHandle {}

/// Binds UDP and TCP on 127.0.0.1:`dns_port` and serves from `cache` until shutdown.
pub async fn bind(_ctx: &Context, _cache: Arc<DnsCache>) -> std::io::Result<DnsServerHandle> {
    Ok(DnsServerHandle {})
}
