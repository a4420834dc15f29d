//! Route mode: `http://127.0.0.1:PORT/<route>/<path>` → `<upstream>/<path>` over TLS on
//! pooled connections, with safe retries and a breaker that sends traffic to the route's
//! fallback while the primary is failing.
//!
//! The whole request — attempts and waits — stays within [`ROUTE_TIMEOUT`] and within the
//! current invocation's deadline (less a margin so the function can still handle the error).
//!
//! A pooled connection found dead just before the request was written to it (closed while
//! idle, or during a freeze) sent nothing: the request goes again at once on another
//! connection, whatever its method, without using up an attempt.

use crate::config::Upstream;
use crate::proxy::body::{ProxyBody, UpstreamBody};
use crate::proxy::request::headers::{append_via, strip_hop_by_hop};
use crate::proxy::request::outcome::{find_source, Refusal};
use crate::proxy::request::record::{record_bytes_out, Kind, RequestRecord};
use crate::proxy::shared::Proxy;
use crate::proxy::upstream::breaker::Admission;
use crate::proxy::upstream::connect::Failure;
use crate::proxy::upstream::liveness::stale_in;
use crate::proxy::upstream::retry::{backoff, method_allows_retry, status_allows_retry};
use http::header::HOST;
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Upper bound for one route-mode request, all attempts included.
pub(crate) const ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
/// Left to the function after the proxy gives up, before its invocation deadline.
const DEADLINE_MARGIN: Duration = Duration::from_millis(200);
/// Stale pooled connections skipped in a row before the request fails (several can die at
/// once when the sandbox was frozen; a revalidation after the first usually finds the rest).
const MAX_STALE_SKIPS: u32 = 3;
/// Request bodies up to this size (with a known length) are kept to be sent again.
const MAX_REPLAY_BYTES: u64 = 1024 * 1024;

/// `rest` is the path after the route name ("" or "/…"), query included.
pub(crate) async fn handle(
    proxy: &Arc<Proxy>,
    req: Request<Incoming>,
    name: &str,
    rest: &str,
) -> Response<ProxyBody> {
    let mut record = RequestRecord::new(Kind::Route, req.method());
    record.route = Some(name.to_owned());
    let Some(route) = proxy.config.route(name).cloned() else {
        let refusal = Refusal::new(
            StatusCode::NOT_FOUND,
            "unknown_route",
            format!("no route named {name:?}"),
        );
        return proxy.refuse(&mut record, refusal);
    };
    let started = record.started;
    let deadline = started + budget(proxy);
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    append_via(&mut parts.headers);
    let may_repeat = method_allows_retry(&parts.method, &parts.headers);

    // Keep a copy to resend when the body's size is known and small; stream it otherwise
    // (then only a failure before anything was sent can be retried).
    let mut stream = None;
    let replay = match body.size_hint().upper() {
        Some(n) if n <= MAX_REPLAY_BYTES => match body.collect().await {
            Ok(collected) => Some(collected.to_bytes()),
            Err(err) => {
                let refusal =
                    Refusal::bad_request(format!("reading the request body failed: {err}"));
                return proxy.refuse(&mut record, refusal);
            }
        },
        _ => {
            stream = Some(body);
            None
        }
    };

    let max_attempts = proxy.retry_max.max(1);
    let mut attempt = 0;
    let mut stale_skips = 0;
    loop {
        attempt += 1;
        let primary_key = upstream_key(&route.primary);
        let (upstream, probe) = match proxy.breakers.admit(&primary_key) {
            Admission::Pass => (&route.primary, false),
            Admission::Probe => (&route.primary, true),
            Admission::Reject => match &route.fallback {
                Some(fallback) => {
                    record.fallback = true;
                    (fallback, false)
                }
                None => {
                    let refusal = Refusal::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "circuit_open",
                        format!("{} is failing; its circuit is open", route.primary.uri),
                    );
                    return proxy.refuse(&mut record, refusal);
                }
            },
        };
        let on_primary = std::ptr::eq(upstream, &route.primary);
        record.set_target(
            &upstream.host,
            format!("{}:{}", host_for_uri(&upstream.host), upstream.port),
        );
        let body = match (&replay, stream.take()) {
            (Some(bytes), _) => {
                record_bytes_out(&proxy.recorder, &record.destination, bytes.len() as u64);
                UpstreamBody::replay(bytes)
            }
            (None, Some(incoming)) => {
                let recorder = proxy.recorder.clone();
                let dest = record.destination.clone();
                UpstreamBody::stream(
                    incoming,
                    Box::new(move |n| record_bytes_out(&recorder, &dest, n)),
                )
            }
            // The streamed body went out with an earlier attempt (never retried; defensive).
            (None, None) => {
                let refusal = Refusal::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    "cannot resend a streamed body",
                );
                return proxy.refuse(&mut record, refusal);
            }
        };
        let upstream_req = match build_request(&parts, upstream, rest, body) {
            Ok(r) => r,
            Err(message) => return proxy.refuse(&mut record, Refusal::bad_request(message)),
        };

        let client = proxy.upstreams.client();
        // Connections of this pool that sat idle are checked first; dead ones are dropped.
        proxy.upstreams.sweep(&upstream_key(upstream)).await;
        let left = deadline.saturating_duration_since(Instant::now());
        let sent_at = Instant::now();
        let result = tokio::time::timeout(left, client.request(upstream_req)).await;
        let can_repeat_body = replay.is_some();
        let wait = backoff(attempt);
        let attempts_left = attempt < max_attempts && Instant::now() + wait < deadline;
        let last = match result {
            Ok(Ok(res)) => {
                if on_primary {
                    proxy.breakers.success(&primary_key);
                }
                let status = res.status();
                if !(status_allows_retry(status) && may_repeat && can_repeat_body && attempts_left)
                {
                    return proxy.relay(&mut record, res, sent_at);
                }
                tracing::debug!(route = name, %status, attempt, "retrying after upstream status");
                Refusal::new(
                    status,
                    "upstream_status",
                    format!("upstream answered {status}"),
                )
            }
            Ok(Err(err))
                if stale_in(&err) == Some(false)
                    && can_repeat_body
                    && stale_skips < MAX_STALE_SKIPS
                    && Instant::now() < deadline =>
            {
                stale_skips += 1;
                attempt -= 1;
                record.retries += 1;
                // The next attempt's check drops its siblings that died the same way.
                tracing::debug!(route = name, "stale pooled connection skipped: {err}");
                continue;
            }
            Ok(Err(err)) => {
                let failure = find_source::<Failure>(&err);
                if let Some(f) = failure {
                    record.addr = f.addr();
                    record.dns_ms = f.dns_ms();
                }
                let refusal = Refusal::from_client_error(&err);
                let connect_phase = failure.is_some_and(Failure::is_connect_phase);
                if on_primary {
                    if connect_phase {
                        proxy.note_breaker_failure(&primary_key, probe);
                    } else {
                        proxy.breakers.success(&primary_key);
                    }
                }
                let denied = refusal.is_denial();
                tracing::debug!(
                    route = name,
                    attempt,
                    "route attempt failed: {}",
                    refusal.message
                );
                if denied || !(attempts_left && can_repeat_body && (connect_phase || may_repeat)) {
                    return proxy.refuse(&mut record, refusal);
                }
                refusal
            }
            Err(_) => {
                if on_primary {
                    proxy.note_breaker_failure(&primary_key, probe);
                }
                let refusal = Refusal::upstream_timeout();
                if !(attempts_left && can_repeat_body && may_repeat) {
                    return proxy.refuse(&mut record, refusal);
                }
                refusal
            }
        };
        tracing::debug!(
            route = name,
            attempt,
            "retrying in {wait:?}: {}",
            last.message
        );
        tokio::time::sleep(wait).await;
        record.retries += 1;
    }
}

/// Bounded by the route timeout and the invocation's deadline (when one is known).
fn budget(proxy: &Proxy) -> Duration {
    match proxy.clock.remaining() {
        Some(left) => ROUTE_TIMEOUT
            .min(left.saturating_sub(DEADLINE_MARGIN))
            .max(Duration::from_millis(1)),
        None => ROUTE_TIMEOUT,
    }
}

pub(crate) fn upstream_key(upstream: &Upstream) -> String {
    format!("https://{}:{}", host_for_uri(&upstream.host), upstream.port)
}

fn host_for_uri(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

pub(crate) fn build_request(
    parts: &Parts,
    upstream: &Upstream,
    rest: &str,
    body: UpstreamBody,
) -> Result<Request<UpstreamBody>, String> {
    let host = host_for_uri(&upstream.host);
    let authority = if upstream.port == 443 {
        host.clone()
    } else {
        format!("{host}:{}", upstream.port)
    };
    let path = if rest.is_empty() || rest.starts_with('?') {
        format!("{}/{}", upstream.base_path, rest)
    } else {
        format!("{}{}", upstream.base_path, rest)
    };
    let uri: Uri = format!("https://{authority}{path}")
        .parse()
        .map_err(|_| format!("cannot build an upstream URL from {path:?}"))?;
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = parts.headers.clone();
    let host_value =
        HeaderValue::from_str(&authority).map_err(|_| "bad upstream host".to_owned())?;
    req.headers_mut().insert(HOST, host_value);
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(base: &str, port: u16) -> Upstream {
        Upstream {
            host: "api.example.com".into(),
            port,
            base_path: base.into(),
            uri: String::new(),
        }
    }

    fn parts() -> Parts {
        Request::new(()).into_parts().0
    }

    #[test]
    fn paths_join_the_base_path() {
        let p = parts();
        let r = build_request(
            &p,
            &upstream("/v1", 443),
            "/users?id=3",
            UpstreamBody::Empty,
        )
        .unwrap();
        assert_eq!(r.uri().to_string(), "https://api.example.com/v1/users?id=3");
        assert_eq!(r.headers()[HOST], "api.example.com");
        let r = build_request(&p, &upstream("", 8443), "", UpstreamBody::Empty).unwrap();
        assert_eq!(r.uri().to_string(), "https://api.example.com:8443/");
        let r = build_request(&p, &upstream("/v1", 443), "?q=1", UpstreamBody::Empty).unwrap();
        assert_eq!(r.uri().to_string(), "https://api.example.com/v1/?q=1");
    }
}
