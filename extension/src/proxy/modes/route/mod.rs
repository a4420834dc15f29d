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

mod attempt;

use crate::config::Upstream;
use crate::metrics::log_ms;
use crate::metrics::Counter;
use crate::proxy::body::{ProxyBody, UpstreamBody};
use crate::proxy::request::headers::{append_via, strip_hop_by_hop};
use crate::proxy::request::outcome::Refusal;
use crate::proxy::request::record::{Kind, RequestRecord};
use crate::proxy::shaping::retry_after;
use crate::proxy::shared::Proxy;
use crate::proxy::upstream::connector::ConnInfo;
use crate::proxy::upstream::retry::{
    add_idempotency_key, backoff, is_unkeyed_write, method_allows_retry,
};
use attempt::{choose, judge, Attempts, Next, RequestBody, Retry};
use http::header::HOST;
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Upper bound for one route-mode request, all attempts included.
pub(crate) const ROUTE_TIMEOUT: Duration = Duration::from_secs(30);

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
        return proxy.refuse(&mut record, unknown_route(proxy, name));
    };
    let deadline = record.started + budget(proxy);
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    append_via(&mut parts.headers);
    // As the client sent it: a key added below makes retries safe, not a write portable.
    let unkeyed_write = is_unkeyed_write(&parts.method, &parts.headers);
    // Before `may_repeat`: the key added here is what makes the request safe to retry.
    if route.options.idempotency_auto && add_idempotency_key(&parts.method, &mut parts.headers) {
        proxy.recorder.incr(Counter::IdempotencyKeysAdded);
    }
    let may_repeat = method_allows_retry(&parts.method, &parts.headers);
    let mut body = match RequestBody::read(body).await {
        Ok(body) => body,
        Err(refusal) => return proxy.refuse(&mut record, refusal),
    };
    let mut attempts = Attempts::new(proxy.retry_max, deadline);
    loop {
        let chosen = match choose(proxy, &route, unkeyed_write, &mut record) {
            Ok(chosen) => chosen,
            Err(refusal) => return proxy.refuse(&mut record, refusal),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(refusal) = proxy.shape(&mut record, Some(left)).await {
            chosen.unsent(proxy);
            return proxy.refuse(&mut record, refusal);
        }
        let upstream_body = match body.for_attempt(&record) {
            Ok(b) => b,
            Err(refusal) => return proxy.refuse(&mut record, refusal),
        };
        let upstream_req = match build_request(&parts, chosen.upstream, rest, upstream_body) {
            Ok(r) => r,
            Err(message) => return proxy.refuse(&mut record, Refusal::bad_request(message)),
        };
        let client = proxy.upstreams.client();
        // Connections of this pool that sat idle are checked first; dead ones are dropped.
        proxy.upstreams.sweep(&upstream_key(chosen.upstream)).await;
        let sent_at = Instant::now();
        let left = deadline.saturating_duration_since(sent_at);
        let result = tokio::time::timeout(left, client.request(upstream_req)).await;
        let mut wait = backoff(attempts.number());
        let mut says_when = false;
        if let Ok(Ok(res)) = &result {
            record.addr = res.extensions().get::<ConnInfo>().map(|info| info.addr);
            proxy.note_answer(&chosen.upstream.host, res);
            // An upstream that said when to come back is never asked sooner.
            if let Some(asked) = asked_to_wait(res) {
                wait = wait.max(asked);
                says_when = true;
            }
        }
        let retry = Retry {
            may_repeat,
            can_repeat_body: body.can_repeat(),
            attempts_left: attempts.another_fits(wait),
            says_when,
        };
        let next = judge(proxy, &mut record, &chosen, retry, &mut attempts, result);
        // This attempt's bytes are counted on its path even when another attempt follows.
        proxy.settle_path(&record);
        if !matches!(next, Next::SkipStale(_)) {
            proxy
                .drills
                .outcome(name, !chosen.on_primary, next.succeeded());
        }
        match next {
            Next::Answer(res) => return proxy.relay(&mut record, res, sent_at),
            Next::Refuse(refusal) => return proxy.refuse(&mut record, refusal),
            Next::SkipStale(err) => {
                // The next attempt's check drops its siblings that died the same way.
                tracing::debug!(route = name, "stale pooled connection skipped: {err}");
                record.retries += 1;
            }
            Next::RetryAfter(last) => {
                tracing::debug!(
                    route = name,
                    attempt = attempts.number(),
                    wait_ms = log_ms(wait.as_secs_f64() * 1000.0),
                    "retrying: {}",
                    last.message
                );
                tokio::time::sleep(wait).await;
                record.retries += 1;
                attempts.advance();
            }
        }
    }
}

/// How long a `429` or `502`–`504` answer asks the client to wait (`Retry-After`).
fn asked_to_wait(res: &Response<Incoming>) -> Option<Duration> {
    matches!(res.status().as_u16(), 429 | 502..=504)
        .then(|| retry_after(res.headers()))
        .flatten()
}

/// `404 unknown_route`, naming the routes there are (names only: their URLs may hold
/// credentials).
fn unknown_route(proxy: &Proxy, name: &str) -> Refusal {
    let known: Vec<&str> = proxy
        .config
        .routes
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    let known = if known.is_empty() {
        "none".to_owned()
    } else {
        known.join(", ")
    };
    Refusal::new(
        StatusCode::NOT_FOUND,
        "unknown_route",
        format!("unknown route {name:?}; known: {known}"),
    )
    .with_hint(format!(
        "set EGRESS_WARDEN_ROUTES to define it ({name}=https://host[/base]; a route whose value was invalid is named at INIT)"
    ))
}

/// Bounded by the route timeout and the invocation's deadline (when one is known).
fn budget(proxy: &Proxy) -> Duration {
    match proxy.time_left() {
        Some(left) => ROUTE_TIMEOUT.min(left).max(Duration::from_millis(1)),
        None => ROUTE_TIMEOUT,
    }
}

pub(crate) fn upstream_key(upstream: &Upstream) -> String {
    format!("https://{}:{}", host_for_uri(&upstream.host), upstream.port)
}

pub(super) fn host_for_uri(host: &str) -> String {
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
            UpstreamBody::empty(),
        )
        .unwrap();
        assert_eq!(r.uri().to_string(), "https://api.example.com/v1/users?id=3");
        assert_eq!(r.headers()[HOST], "api.example.com");
        let r = build_request(&p, &upstream("", 8443), "", UpstreamBody::empty()).unwrap();
        assert_eq!(r.uri().to_string(), "https://api.example.com:8443/");
        let r = build_request(&p, &upstream("/v1", 443), "?q=1", UpstreamBody::empty()).unwrap();
        assert_eq!(r.uri().to_string(), "https://api.example.com/v1/?q=1");
    }
}
