//! Placeholder: the localhost egress proxy (being written).

use crate::context::Context;
use crate::dns::DnsCache;
use std::sync::Arc;

/// The running proxy listener.
pub struct ProxyHandle {}

/// Binds 127.0.0.1:`proxy_port` and serves until shutdown.
pub async fn bind(_ctx: &Context, _dns: Arc<DnsCache>) -> std::io::Result<ProxyHandle> {
    Ok(ProxyHandle {})
}
