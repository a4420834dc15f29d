//! Demo function for egress-warden.
//!
//! Event `{"urls": ["http://host:port/path", ...]}`: GETs each URL in turn, through the proxy in
//! `HTTP_PROXY` (or `http_proxy`) when set — an absolute-form request to the proxy, as HTTP
//! clients do — and answers with the status, time and size per URL. Without `urls` it answers
//! a greeting. `NO_PROXY` is deliberately not honoured: the demo exists to send traffic through
//! the proxy, including to loopback test servers.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpStream;

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
    via: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    ms: f64,
    bytes: usize,
    /// `X-Egress-Warden-Error` when the proxy denied or failed the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    warden_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn proxy_from_env() -> Option<String> {
    ["HTTP_PROXY", "http_proxy"]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .find(|v| !v.trim().is_empty())
}

/// `host:port` of an `http://` URI (port 80 by default).
fn authority_of(uri: &Uri) -> Result<(String, String), String> {
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(format!(
                "unsupported scheme {other:?}: the demo speaks plain http"
            ))
        }
        None => return Err("URL has no scheme".to_string()),
    }
    let host = uri.host().ok_or("URL has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_else(|| host.to_string());
    Ok((format!("{host}:{port}"), authority))
}

async fn fetch(url: &str, proxy: Option<&str>) -> UrlResult {
    let via = if proxy.is_some() { "proxy" } else { "direct" };
    let started = Instant::now();
    let mut result = UrlResult {
        url: url.to_string(),
        via,
        status: None,
        ms: 0.0,
        bytes: 0,
        warden_error: None,
        error: None,
    };
    let outcome = tokio::time::timeout(PER_URL_TIMEOUT, fetch_inner(url, proxy)).await;
    result.ms = started.elapsed().as_secs_f64() * 1000.0;
    match outcome {
        Ok(Ok((status, bytes, warden_error))) => {
            result.status = Some(status);
            result.bytes = bytes;
            result.warden_error = warden_error;
        }
        Ok(Err(e)) => result.error = Some(e),
        Err(_) => result.error = Some(format!("timed out after {PER_URL_TIMEOUT:?}")),
    }
    result
}

async fn fetch_inner(
    url: &str,
    proxy: Option<&str>,
) -> Result<(u16, usize, Option<String>), String> {
    let target: Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let (target_addr, target_authority) = authority_of(&target)?;
    // Through a proxy: connect to it and send the absolute URI; direct: origin-form.
    let (connect_to, request_uri) = match proxy {
        Some(p) => {
            let p: Uri = p.parse().map_err(|e| format!("bad HTTP_PROXY: {e}"))?;
            let (proxy_addr, _) = authority_of(&p)?;
            (proxy_addr, target.to_string())
        }
        None => {
            let path = target
                .path_and_query()
                .map(|pq| pq.as_str().to_string())
                .unwrap_or_else(|| "/".to_string());
            (target_addr, path)
        }
    };
    let stream = TcpStream::connect(&connect_to)
        .await
        .map_err(|e| format!("connect {connect_to}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn_task = tokio::spawn(conn);
    let req = Request::get(request_uri.as_str())
        .header(hyper::header::HOST, target_authority)
        .header(hyper::header::USER_AGENT, "egress-warden-demo/0.1")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status().as_u16();
    let warden_error = resp
        .headers()
        .get("x-egress-warden-error")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body = resp.into_body();
    let mut bytes = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        if let Some(data) = frame.data_ref() {
            bytes += data.len();
            if bytes > MAX_BODY_BYTES {
                break;
            }
        }
    }
    conn_task.abort();
    Ok((status, bytes, warden_error))
}

async fn handler(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let parsed: Event = serde_json::from_value(event.payload).unwrap_or_default();
    let proxy = proxy_from_env();
    if parsed.urls.is_empty() {
        return Ok(json!({
            "message": "hello from the egress-warden demo function",
            "requestId": event.context.request_id,
            "proxy": proxy,
        }));
    }
    let mut results = Vec::with_capacity(parsed.urls.len());
    for url in &parsed.urls {
        let r = fetch(url, proxy.as_deref()).await;
        println!(
            "GET {} via {} -> {} in {:.1} ms",
            r.url,
            r.via,
            r.status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "error".to_string()),
            r.ms
        );
        results.push(r);
    }
    Ok(json!({ "proxy": proxy, "results": results }))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handler)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_defaults_port_80_and_rejects_https() {
        let uri: Uri = "http://127.0.0.1/x".parse().unwrap();
        assert_eq!(
            authority_of(&uri).unwrap(),
            ("127.0.0.1:80".to_string(), "127.0.0.1".to_string())
        );
        let uri: Uri = "https://example.com/".parse().unwrap();
        assert!(authority_of(&uri).is_err());
    }

    #[tokio::test]
    async fn direct_and_proxied_get() {
        // A tiny origin that answers 200 with the request line it saw.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let line = String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                        line.len(),
                        line
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        let url = format!("http://{addr}/hello");
        let direct = fetch(&url, None).await;
        assert_eq!(direct.status, Some(200), "{direct:?}");
        assert_eq!(direct.bytes, "GET /hello HTTP/1.1".len());
        // The same server acting as "proxy": it must see the absolute-form request line.
        let proxied = fetch(&url, Some(&format!("http://{addr}"))).await;
        assert_eq!(proxied.status, Some(200), "{proxied:?}");
        assert_eq!(proxied.bytes, format!("GET {url} HTTP/1.1").len());
        assert_eq!(proxied.via, "proxy");
    }
}
