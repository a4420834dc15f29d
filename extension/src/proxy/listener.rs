//! The accept loop: admits clients up to `EGRESS_WARDEN_MAX_CONNECTIONS` ([`super::client::slots`]:
//! at the cap an idle connection makes room; with none idle, a 503 and close), serves each with
//! hyper's HTTP/1.1 server under the header limits, and at shutdown stops accepting and
//! drains: each connection finishes the request under way, then closes. A malformed request
//! gets hyper's 400 (or 431 for oversized heads), loses only its own connection, and is
//! counted like every answered request.

use super::client::limits::{GuardedIo, MAX_HEADERS, MAX_HEADER_BYTES};
use super::client::slots::ConnSlot;
use super::modes::dispatch;
use super::request::outcome::ERROR_HEADER;
use super::request::record::{Kind, RequestRecord};
use super::shared::Proxy;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long an over-capacity client gets to send its request before the 503.
const OVER_CAPACITY_READ: Duration = Duration::from_millis(500);

pub(crate) async fn serve(listener: TcpListener, proxy: Arc<Proxy>) {
    let mut http = http1::Builder::new();
    http.keep_alive(true)
        .max_headers(MAX_HEADERS)
        .max_header_size(MAX_HEADER_BYTES)
        // Our own GuardedIo times header reads (hyper's timer would also cut idle keep-alive).
        .header_read_timeout(None);
    let shutdown = proxy.shutdown.clone();
    let shutdown = shutdown.wait();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("proxy accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let Some(slot) = proxy.slots.admit() else {
            tokio::spawn(over_capacity(stream, proxy.clone()));
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(http.clone(), stream, proxy.clone(), slot));
    }
    tracing::debug!("proxy listener closed");
}

async fn serve_connection(
    http: http1::Builder,
    stream: TcpStream,
    proxy: Arc<Proxy>,
    slot: Arc<ConnSlot>,
) {
    let io = TokioIo::new(GuardedIo::new(stream, slot.phase.clone(), proxy.timeouts));
    let service = {
        let proxy = proxy.clone();
        let slot = slot.clone();
        service_fn(move |req: http::Request<hyper::body::Incoming>| {
            dispatch(proxy.clone(), slot.clone(), req)
        })
    };
    drop(slot);
    let connection = http.serve_connection(io, service).with_upgrades();
    tokio::pin!(connection);
    // The connection (and its socket) lives until the end of this function: a rejected
    // request is counted before the client sees the connection close.
    // At shutdown the connection finishes the request under way, answers it with
    // `Connection: close` and ends (an idle one ends at once): drained, not cut.
    let shutdown = proxy.shutdown.wait();
    tokio::pin!(shutdown);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = &mut shutdown => {
            connection.as_mut().graceful_shutdown();
            connection.as_mut().await
        }
    };
    if let Err(err) = served {
        if err.is_parse() || err.is_parse_too_large() {
            // hyper has answered 400 / 431 already; count and log it like any request.
            let mut record = RequestRecord::new(Kind::Rejected, &http::Method::GET);
            record.method = "-".into();
            record.status = if err.is_parse_too_large() { 431 } else { 400 };
            record.error = Some(if err.is_parse_too_large() {
                "headers_too_large"
            } else {
                "bad_request"
            });
            proxy.commit(&record);
        } else {
            tracing::debug!("client connection ended: {err}");
        }
    }
}

/// Reads what the client sent (so closing does not reset the reply away), answers 503.
async fn over_capacity(mut stream: TcpStream, proxy: Arc<Proxy>) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut seen = 0;
    let _ = tokio::time::timeout(OVER_CAPACITY_READ, async {
        while seen < buf.len() {
            match stream.read(&mut buf[seen..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen += n,
            }
            if buf[..seen].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    let body = "egress-warden: too many client connections (EGRESS_WARDEN_MAX_CONNECTIONS)\n";
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\n{ERROR_HEADER}: over_capacity\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(OVER_CAPACITY_READ, async {
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
    let mut record = RequestRecord::new(Kind::Rejected, &http::Method::GET);
    record.method = "-".into();
    record.status = 503;
    record.error = Some("over_capacity");
    record.cause =
        Some("too many client connections, none idle; raise EGRESS_WARDEN_MAX_CONNECTIONS".into());
    proxy.commit(&record);
}
