//! Demo function for egress-warden.
//!
//! Event `{"urls": ["https://host/path", "http://…", ...]}`: GETs each URL in turn, one new
//! connection each (see `net`), through `HTTP_PROXY` / `HTTPS_PROXY` when set, and answers with
//! the status, the time and the time of each step (DNS, connect, TLS, first byte) per URL.
//! Without `urls` it answers a greeting.
//!
//! Demo-only settings (`scripts/demo` uses them to run the same function without the layer):
//! `DEMO_DNS_SERVER=ip:port` resolves names through that server instead of the system's;
//! `DEMO_CA_FILE=path` trusts the CAs in that PEM file instead of the system's.

mod dns;
mod net;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use net::{first_env, Setup, Steps, Target};

const PER_URL_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BODY_BYTES: usize = 1 << 20;

#[derive(Debug, Default, Deserialize)]
struct Event {
    #[serde(default)]
    urls: Vec<String>,
}

#[derive(Debug, Serialize)]
struct UrlResult {
    url: String,
    /// `direct`, `proxy` (forwarded or tunnelled) or `route` (a route-mode URL on the proxy).
    via: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    ms: f64,
    #[serde(flatten)]
    steps: Steps,
    /// From the request written until the response head arrived.
    #[serde(skip_serializing_if = "Option::is_none")]
    ttfb_ms: Option<f64>,
    bytes: usize,
    /// `X-Egress-Warden-Error` when the proxy denied or failed the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    warden_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

async fn fetch(url: &str, setup: &Setup) -> UrlResult {
    let started = Instant::now();
    let mut result = UrlResult {
        url: url.to_string(),
        via: "direct",
        status: None,
        ms: 0.0,
        steps: Steps::default(),
        ttfb_ms: None,
        bytes: 0,
        warden_error: None,
        error: None,
    };
    let outcome = tokio::time::timeout(PER_URL_TIMEOUT, fetch_inner(url, setup, &mut result)).await;
    result.ms = started.elapsed().as_secs_f64() * 1000.0;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => result.error = Some(e),
        Err(_) => result.error = Some(format!("timed out after {PER_URL_TIMEOUT:?}")),
    }
    result
}

async fn fetch_inner(url: &str, setup: &Setup, result: &mut UrlResult) -> Result<(), String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let target = Target::of(&uri)?;
    let (io, via, steps) = net::open(setup, &target).await?;
    result.via = via;
    result.steps = steps;
    // Forwarded by the proxy: the absolute URI; everything else (tunnel, route, direct):
    // origin-form.
    let request_uri = if via == "proxy" && !target.tls {
        uri.to_string()
    } else {
        uri.path_and_query()
            .map(|pq| pq.as_str().to_string())
            .unwrap_or_else(|| "/".to_string())
    };
    let host = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_else(|| target.host.clone());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn_task = tokio::spawn(conn);
    let req = Request::get(request_uri.as_str())
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "egress-warden-demo/0.1")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let sent = Instant::now();
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    result.ttfb_ms = Some(sent.elapsed().as_secs_f64() * 1000.0);
    result.status = Some(resp.status().as_u16());
    result.warden_error = resp
        .headers()
        .get("x-egress-warden-error")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        if let Some(data) = frame.data_ref() {
            result.bytes += data.len();
            if result.bytes > MAX_BODY_BYTES {
                break;
            }
        }
    }
    conn_task.abort();
    Ok(())
}

fn opt_ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}"))
        .unwrap_or_else(|| "-".to_string())
}

async fn handler(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let parsed: Event = serde_json::from_value(event.payload).unwrap_or_default();
    let setup = Setup::from_env()?;
    if parsed.urls.is_empty() {
        return Ok(json!({
            "message": "hello from the egress-warden demo function",
            "requestId": event.context.request_id,
            "proxy": first_env(&["HTTP_PROXY", "http_proxy"]),
        }));
    }
    let mut results = Vec::with_capacity(parsed.urls.len());
    for url in &parsed.urls {
        let r = fetch(url, &setup).await;
        println!(
            "GET {} via {} -> {} in {:.1} ms (dns {}, connect {:.1}, tls {}, first byte {})",
            r.url,
            r.via,
            r.status
                .map(|s| s.to_string())
                .or_else(|| r.error.clone())
                .unwrap_or_default(),
            r.ms,
            opt_ms(r.steps.dns_ms),
            r.steps.connect_ms,
            opt_ms(r.steps.tls_ms),
            opt_ms(r.ttfb_ms),
        );
        results.push(r);
    }
    let proxy = first_env(&["HTTP_PROXY", "http_proxy"]);
    Ok(json!({ "proxy": proxy, "results": results }))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handler)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn targets_default_their_ports() {
        let t = |u: &str| Target::of(&u.parse::<Uri>().unwrap());
        assert_eq!(t("http://127.0.0.1/x").unwrap().authority(), "127.0.0.1:80");
        assert_eq!(
            t("https://example.com/").unwrap().authority(),
            "example.com:443"
        );
        assert!(t("https://example.com/").unwrap().tls);
        assert!(t("ftp://example.com/").is_err());
    }

    /// A tiny server that answers every connection once with `answer(first line)`.
    async fn serve(answer: fn(&str) -> String) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let line = text.lines().next().unwrap_or("");
                    let _ = s.write_all(answer(line).as_bytes()).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn direct_proxied_and_route_mode_gets() {
        // It answers with the request line it saw.
        let addr = serve(|line| {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{line}",
                line.len()
            )
        })
        .await;
        let url = format!("http://{addr}/hello");
        let direct = fetch(&url, &Setup::default()).await;
        assert_eq!(direct.status, Some(200), "{direct:?}");
        assert_eq!(direct.bytes, "GET /hello HTTP/1.1".len());
        assert_eq!(direct.via, "direct");
        assert!(direct.steps.dns_ms.is_none(), "an IP is not resolved");
        // The same server acting as "proxy": it must see the absolute-form request line.
        let through = Setup {
            http_proxy: Some(addr.to_string()),
            ..Setup::default()
        };
        let other = format!("http://127.0.0.2:{}/hello", addr.port());
        let proxied = fetch(&other, &through).await;
        assert_eq!(proxied.status, Some(200), "{proxied:?}");
        assert_eq!(proxied.bytes, format!("GET {other} HTTP/1.1").len());
        assert_eq!(proxied.via, "proxy");
        // A URL on the proxy itself is route mode: direct, origin-form.
        let route = fetch(&url, &through).await;
        assert_eq!(route.via, "route", "{route:?}");
        assert_eq!(route.bytes, "GET /hello HTTP/1.1".len());
    }

    #[tokio::test]
    async fn a_refused_tunnel_names_the_proxy_reason() {
        let proxy = serve(|_| {
            "HTTP/1.1 403 Forbidden\r\nX-Egress-Warden-Error: policy_denied\r\ncontent-length: 0\r\n\r\n"
                .to_string()
        })
        .await;
        let setup = Setup {
            https_proxy: Some(proxy.to_string()),
            ..Setup::default()
        };
        let r = fetch("https://api.example.com/", &setup).await;
        let error = r.error.unwrap_or_default();
        assert!(
            error.contains("403") && error.contains("policy_denied"),
            "{error}"
        );
    }
}
