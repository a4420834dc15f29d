//! Absolute-form requests (`GET http://host/path`): forwarded on pooled keep-alive upstream
//! connections, hop-by-hop headers dropped, `Host` set from the normalised target.
//!
//! A request without a body is sent once more on another connection when the pooled one it
//! got turned out stale: found dead before anything was written (any method), or broken
//! before an answer for an idempotent method (the same rule as route mode's retries).

use crate::error_chain::{describe, find};
use crate::proxy::body::{ProxyBody, UpstreamBody};
use crate::proxy::policy::host::Target;
use crate::proxy::request::headers::{append_via, strip_hop_by_hop};
use crate::proxy::request::outcome::Refusal;
use crate::proxy::request::record::{Kind, RequestRecord};
use crate::proxy::shared::Proxy;
use crate::proxy::upstream::connect::Failure;
use crate::proxy::upstream::liveness::stale_in;
use crate::proxy::upstream::retry::method_allows_retry;
use http::header::HOST;
use http::request::Parts;
use http::{HeaderValue, Request, Response};
use hyper::body::{Body, Incoming};
use std::sync::Arc;

pub(crate) async fn handle(proxy: &Arc<Proxy>, req: Request<Incoming>) -> Response<ProxyBody> {
    let mut record = RequestRecord::new(Kind::Forward, req.method());
    let (mut parts, body) = req.into_parts();
    let (target, scheme) = match forward_target(&parts) {
        Ok(found) => found,
        Err(message) => return proxy.refuse(&mut record, Refusal::bad_request(message)),
    };
    proxy.aim(&mut record, &target.host, target.destination());
    if let Err(message) = rewrite_head(&mut parts, &target, scheme) {
        return proxy.refuse(&mut record, Refusal::bad_request(message));
    }
    if let Err(refusal) = proxy.shape(&mut record, proxy.time_left()).await {
        return proxy.refuse(&mut record, refusal);
    }

    // Only a bodiless request can be sent again (a streamed body is gone once sent).
    let again = (body.size_hint().exact() == Some(0)).then(|| {
        let mut copy = Request::new(UpstreamBody::empty());
        *copy.method_mut() = parts.method.clone();
        *copy.uri_mut() = parts.uri.clone();
        *copy.version_mut() = parts.version;
        *copy.headers_mut() = parts.headers.clone();
        copy
    });
    let may_repeat = method_allows_retry(&parts.method, &parts.headers);
    let meter = record.meter.clone();
    let body = UpstreamBody::stream(
        body,
        Box::new(move |n| {
            if let Some(meter) = meter {
                meter.sent(n);
            }
        }),
    );
    let upstream_req = Request::from_parts(parts, body);
    let client = proxy.upstreams.client();
    // Connections of this pool that sat idle are checked first; dead ones are dropped.
    let pool_key = format!("{scheme}://{target}");
    proxy.upstreams.sweep(&pool_key).await;
    let sent_at = std::time::Instant::now();
    let mut result = client.request(upstream_req).await;
    if let (Err(err), Some(again)) = (&result, again) {
        let stale = stale_in(err);
        if stale == Some(false) || (stale == Some(true) && may_repeat) {
            tracing::debug!(destination = %record.destination, "sending again on another connection: {}", describe(err));
            // Its siblings may have died the same way: drop them before the next try.
            proxy.upstreams.sweep(&pool_key).await;
            record.retries += 1;
            result = client.request(again).await;
        }
    }
    match result {
        Ok(res) => {
            proxy.note_answer(&target.host, &res);
            proxy.relay(&mut record, res, sent_at)
        }
        Err(err) => {
            let refusal = Refusal::from_client_error(&err);
            if let Some(failure) = find::<Failure>(&err) {
                record.addr = failure.addr();
                record.dns_ms = failure.dns_ms();
            }
            tracing::debug!(destination = %record.destination, "forward failed: {}", describe(&err));
            proxy.refuse(&mut record, refusal)
        }
    }
}

/// Where a client's absolute-form request goes: the normalised target and the scheme. An
/// error is the client's fault and says why.
pub(crate) fn forward_target(parts: &Parts) -> Result<(Target, &'static str), String> {
    let (scheme, default_port) = match parts.uri.scheme_str() {
        Some("http") => ("http", 80),
        Some("https") => ("https", 443),
        _ => return Err("only http:// and https:// URLs are proxied".into()),
    };
    match parts.uri.authority() {
        Some(authority) => Ok((
            Target::from_authority(authority, Some(default_port))?,
            scheme,
        )),
        None => Err("the URL has no host".into()),
    }
}

/// Turns the client's head into the upstream's: the URL rebuilt from the normalised target,
/// hop-by-hop fields dropped, `Host` set, `Via` appended.
pub(crate) fn rewrite_head(parts: &mut Parts, target: &Target, scheme: &str) -> Result<(), String> {
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = format!("{scheme}://{target}{path}")
        .parse()
        .map_err(|_| "the URL cannot be forwarded".to_owned())?;
    parts.version = http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    let default_port = if scheme == "https" { 443 } else { 80 };
    let host_value = if target.port == default_port {
        target.uri_host()
    } else {
        target.to_string()
    };
    if let Ok(v) = HeaderValue::from_str(&host_value) {
        parts.headers.insert(HOST, v);
    }
    append_via(&mut parts.headers);
    Ok(())
}
