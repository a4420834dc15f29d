//! Telemetry API: subscriptions and batched delivery of `platform`, `function` and `extension`
//! records (JSON arrays POSTed to the subscriber's URI, loopback only).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::clock;
use super::types::TelemetryDelivery;

/// A validated `PUT /2022-07-01/telemetry` body.
#[derive(Clone, Debug)]
pub(crate) struct Subscription {
    pub schema: String,
    pub types: Vec<String>,
    pub max_items: usize,
    pub max_bytes: usize,
    pub timeout: Duration,
    pub uri: String,
    pub addr: SocketAddr,
    pub path: String,
}

/// Checks a subscription request the way the Telemetry API reference describes it.
pub(crate) fn parse_subscription(body: &[u8]) -> Result<Subscription, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let schema = v
        .get("schemaVersion")
        .and_then(Value::as_str)
        .ok_or("schemaVersion is required")?;
    if !["2022-07-01", "2022-12-13", "2025-01-29"].contains(&schema) {
        return Err(format!("unsupported schemaVersion {schema:?}"));
    }
    let types: Vec<String> = v
        .get("types")
        .and_then(Value::as_array)
        .ok_or("types is required")?
        .iter()
        .map(|t| {
            t.as_str()
                .map(str::to_string)
                .ok_or("types must be strings")
        })
        .collect::<Result<_, _>>()?;
    if types.is_empty() {
        return Err("types must not be empty".to_string());
    }
    if let Some(bad) = types
        .iter()
        .find(|t| !["platform", "function", "extension"].contains(&t.as_str()))
    {
        return Err(format!("unknown telemetry type {bad:?}"));
    }
    let buffering = v.get("buffering").cloned().unwrap_or(json!({}));
    let num = |key: &str, default: u64, min: u64, max: u64| -> Result<u64, String> {
        match buffering.get(key) {
            None => Ok(default),
            Some(x) => {
                let n = x
                    .as_u64()
                    .ok_or(format!("buffering.{key} must be an integer"))?;
                if n < min || n > max {
                    Err(format!("buffering.{key} must be within {min}..={max}"))
                } else {
                    Ok(n)
                }
            }
        }
    };
    // Documented limits; maxItems is accepted down to 25 as Lambda itself does.
    let max_items = num("maxItems", 1000, 25, 10_000)? as usize;
    let max_bytes = num("maxBytes", 262_144, 262_144, 1_048_576)? as usize;
    let timeout = Duration::from_millis(num("timeoutMs", 1000, 25, 30_000)?);
    let dest = v.get("destination").ok_or("destination is required")?;
    let protocol = dest.get("protocol").and_then(Value::as_str).unwrap_or("");
    if protocol != "HTTP" {
        return Err(format!(
            "destination.protocol {protocol:?} not supported by the emulator (HTTP only)"
        ));
    }
    let uri = dest
        .get("URI")
        .and_then(Value::as_str)
        .ok_or("destination.URI is required")?
        .to_string();
    let parsed: http::Uri = uri
        .parse()
        .map_err(|e| format!("bad destination.URI: {e}"))?;
    if parsed.scheme_str() != Some("http") {
        return Err("destination.URI must be http://".to_string());
    }
    let host = parsed.host().unwrap_or("");
    // Lambda's sandbox host name maps to the loopback here; nothing else is reachable.
    if !["sandbox.localdomain", "sandbox", "localhost", "127.0.0.1"].contains(&host) {
        return Err(format!(
            "destination host {host:?} must be sandbox.localdomain or loopback"
        ));
    }
    let port = parsed.port_u16().unwrap_or(80);
    let path = parsed
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    Ok(Subscription {
        schema: schema.to_string(),
        types,
        max_items,
        max_bytes,
        timeout,
        uri,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        path,
    })
}

enum Msg {
    Record(Value, usize),
    Flush(oneshot::Sender<()>),
}

struct Sub {
    types: Vec<String>,
    tx: mpsc::UnboundedSender<Msg>,
}

#[derive(Default)]
struct Inner {
    subs: Vec<Sub>,
    /// Records emitted before INIT ended, replayed to subscribers that come later in INIT.
    backlog: Option<Vec<(String, Value)>>,
    deliveries: Vec<TelemetryDelivery>,
}

/// Fans records out to subscribers.
pub(crate) struct TelemetryHub {
    inner: Arc<Mutex<Inner>>,
}

impl Default for TelemetryHub {
    fn default() -> Self {
        TelemetryHub {
            inner: Arc::new(Mutex::new(Inner {
                backlog: Some(Vec::new()),
                ..Default::default()
            })),
        }
    }
}

fn record(category: &str, record: Value) -> Value {
    let kind = if category == "platform" {
        record
            .get("__type")
            .and_then(Value::as_str)
            .unwrap_or("platform")
            .to_string()
    } else {
        category.to_string()
    };
    let mut record = record;
    if let Some(obj) = record.as_object_mut() {
        obj.remove("__type");
    }
    json!({ "time": clock::rfc3339_ms(clock::epoch_ms()), "type": kind, "record": record })
}

impl TelemetryHub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A `platform.*` event.
    pub fn platform(&self, event_type: &str, mut rec: Value) {
        if let Some(obj) = rec.as_object_mut() {
            obj.insert("__type".to_string(), Value::String(event_type.to_string()));
        }
        self.emit("platform", rec);
    }

    /// A record of `category` (`platform`, `function` or `extension`).
    pub fn emit(&self, category: &str, rec: Value) {
        let full = record(category, rec);
        let size = full.to_string().len();
        let mut inner = self.lock();
        if let Some(backlog) = inner.backlog.as_mut() {
            if backlog.len() < 10_000 {
                backlog.push((category.to_string(), full.clone()));
            }
        }
        for sub in &inner.subs {
            if sub.types.iter().any(|t| t == category) {
                let _ = sub.tx.send(Msg::Record(full.clone(), size));
            }
        }
    }

    /// INIT is over: later subscribers get no replay.
    pub fn end_backlog(&self) {
        self.lock().backlog = None;
    }

    pub fn subscribe(&self, extension: String, sub: Subscription) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut inner = self.lock();
        if let Some(backlog) = &inner.backlog {
            for (category, rec) in backlog {
                if sub.types.iter().any(|t| t == category) {
                    let size = rec.to_string().len();
                    let _ = tx.send(Msg::Record(rec.clone(), size));
                }
            }
        }
        inner.subs.push(Sub {
            types: sub.types.clone(),
            tx,
        });
        drop(inner);
        tokio::spawn(deliver(self.inner.clone(), extension, sub, rx));
    }

    /// Sends out everything buffered; waits at most `limit`.
    pub async fn flush(&self, limit: Duration) {
        let mut waits = Vec::new();
        for sub in &self.lock().subs {
            let (tx, rx) = oneshot::channel();
            if sub.tx.send(Msg::Flush(tx)).is_ok() {
                waits.push(rx);
            }
        }
        let _ = tokio::time::timeout(limit, async {
            for w in waits {
                let _ = w.await;
            }
        })
        .await;
    }

    /// Stops delivery (dropping the senders ends the delivery tasks after a last flush).
    pub fn close(&self) {
        self.lock().subs.clear();
    }

    pub fn deliveries(&self) -> Vec<TelemetryDelivery> {
        self.lock().deliveries.clone()
    }
}

async fn deliver(
    inner: Arc<Mutex<Inner>>,
    extension: String,
    sub: Subscription,
    mut rx: mpsc::UnboundedReceiver<Msg>,
) {
    let mut batch: Vec<Value> = Vec::new();
    let mut bytes = 0usize;
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let msg = match deadline {
            Some(d) => match tokio::time::timeout_at(d, rx.recv()).await {
                Ok(m) => m,
                Err(_) => {
                    post_batch(&inner, &extension, &sub, &mut batch, &mut bytes).await;
                    deadline = None;
                    continue;
                }
            },
            None => rx.recv().await,
        };
        match msg {
            Some(Msg::Record(v, size)) => {
                if batch.is_empty() {
                    deadline = Some(tokio::time::Instant::now() + sub.timeout);
                }
                batch.push(v);
                bytes += size;
                if batch.len() >= sub.max_items || bytes >= sub.max_bytes {
                    post_batch(&inner, &extension, &sub, &mut batch, &mut bytes).await;
                    deadline = None;
                }
            }
            Some(Msg::Flush(done)) => {
                post_batch(&inner, &extension, &sub, &mut batch, &mut bytes).await;
                deadline = None;
                let _ = done.send(());
            }
            None => {
                post_batch(&inner, &extension, &sub, &mut batch, &mut bytes).await;
                return;
            }
        }
    }
}

async fn post_batch(
    inner: &Arc<Mutex<Inner>>,
    extension: &str,
    sub: &Subscription,
    batch: &mut Vec<Value>,
    bytes: &mut usize,
) {
    if batch.is_empty() {
        return;
    }
    let records = batch.len();
    let body = Value::Array(std::mem::take(batch)).to_string();
    *bytes = 0;
    let result = tokio::time::timeout(Duration::from_secs(2), post(sub, body)).await;
    let (status, error) = match result {
        Ok(Ok(s)) => (Some(s), None),
        Ok(Err(e)) => (None, Some(e)),
        Err(_) => (None, Some("timed out".to_string())),
    };
    let mut g = inner.lock().unwrap_or_else(|e| e.into_inner());
    g.deliveries.push(TelemetryDelivery {
        extension: extension.to_string(),
        records,
        status,
        error,
    });
}

async fn post(sub: &Subscription, body: String) -> Result<u16, String> {
    let stream = TcpStream::connect(sub.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", sub.addr))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let req = Request::post(sub.path.as_str())
        .header(
            hyper::header::HOST,
            format!("sandbox.localdomain:{}", sub.addr.port()),
        )
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    conn.abort();
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_validation() {
        let ok = br#"{"schemaVersion":"2022-12-13","types":["platform","function"],
            "buffering":{"maxItems":1000,"maxBytes":262144,"timeoutMs":100},
            "destination":{"protocol":"HTTP","URI":"http://sandbox.localdomain:4243/t"}}"#;
        let s = parse_subscription(ok).unwrap();
        assert_eq!(s.addr.port(), 4243);
        assert_eq!(s.path, "/t");
        assert_eq!(s.timeout, Duration::from_millis(100));
        let bad_type = br#"{"schemaVersion":"2022-12-13","types":["logs"],
            "destination":{"protocol":"HTTP","URI":"http://sandbox.localdomain:1/"}}"#;
        assert!(parse_subscription(bad_type).is_err());
        let remote = br#"{"schemaVersion":"2022-12-13","types":["platform"],
            "destination":{"protocol":"HTTP","URI":"http://10.0.0.1:1/"}}"#;
        assert!(parse_subscription(remote).is_err());
        let bad_timeout = br#"{"schemaVersion":"2022-12-13","types":["platform"],
            "buffering":{"timeoutMs":5},
            "destination":{"protocol":"HTTP","URI":"http://sandbox:1/"}}"#;
        assert!(parse_subscription(bad_timeout).is_err());
    }
}
