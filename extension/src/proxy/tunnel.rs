//! `CONNECT host:port`: resolve-check-connect first (so a failure still gets a proper status
//! code), answer 200, then copy bytes both ways until either side closes.
//!
//! What a tunnel can honestly measure without terminating TLS: DNS and TCP connect time,
//! time from the client's first byte to the upstream's first byte (for TLS: the handshake's
//! first flight, reported as `ttfb_ms`), total lifetime (`request_ms`) and bytes.
//!
//! A socket the warm-up pre-connected to the same `host:port` is taken first (checked alive):
//! the tunnel then counts as a reused connection, with no DNS or connect time of its own.

use super::body::ProxyBody;
use super::host::Target;
use super::outcome::Refusal;
use super::record::{record_bytes_out, record_end, Kind, RequestRecord};
use super::relay::{relay, ClientFd};
use super::service::{ConnSlot, Proxy};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::Instant;

pub(crate) async fn handle(
    proxy: &Arc<Proxy>,
    req: Request<Incoming>,
    slot: Arc<ConnSlot>,
) -> Response<ProxyBody> {
    let mut record = RequestRecord::new(Kind::Tunnel, req.method());
    let target = match req
        .uri()
        .authority()
        .ok_or_else(|| "CONNECT needs host:port".to_owned())
        .and_then(|a| Target::from_authority(a, None))
    {
        Ok(t) => t,
        Err(message) => return proxy.refuse(&mut record, Refusal::bad_request(message)),
    };
    record.set_target(&target.host, target.destination());
    let dialed = if let Some(parked) = proxy.sockets.take(&record.destination) {
        record.reused = Some(true);
        parked.dialed
    } else {
        match proxy.dialer.dial(&target).await {
            Ok(d) => {
                record.dns_ms = d.dns_ms;
                record.connect_ms = Some(d.connect_ms);
                record.reused = Some(false);
                d
            }
            Err(failure) => {
                record.addr = failure.addr();
                record.dns_ms = failure.dns_ms();
                return proxy.refuse(&mut record, Refusal::from_failure(&failure));
            }
        }
    };
    record.addr = Some(dialed.addr);
    if let Some(reason) = dialed.observed {
        record.verdict = super::policy::Verdict::Observe(reason);
    }
    record.status = 200;
    proxy.commit(&record);

    let proxy = proxy.clone();
    let destination = record.destination;
    let upstream = dialed.stream;
    tokio::spawn(async move {
        // Keeps the client connection counted (max connections, active gauge) while tunnelling.
        let _slot = slot;
        let client_fd = req.extensions().get::<ClientFd>().copied();
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(err) => {
                tracing::debug!(destination, "CONNECT upgrade failed: {err}");
                return;
            }
        };
        let started = Instant::now();
        let relayed = relay(upgraded, client_fd, upstream).await;
        match &relayed.error {
            Some(err) => tracing::debug!(destination, "tunnel ended: {err}"),
            None => tracing::debug!(destination, spliced = relayed.spliced, "tunnel closed"),
        }
        let recorder = &proxy.ctx.recorder;
        if let Some(ttfb) = tunnel_ttfb(started, relayed.client_first, relayed.upstream_first) {
            recorder.observe_ms_for(&destination, crate::metrics::Timing::TtfbMs, ttfb);
        }
        record_bytes_out(recorder, &destination, relayed.out);
        record_end(recorder, &destination, record.started, relayed.back);
    });
    Response::builder()
        .status(StatusCode::OK)
        .body(ProxyBody::empty())
        .unwrap_or_else(|_| Response::new(ProxyBody::empty()))
}

/// From the client's first byte to the upstream's first byte; for protocols where the
/// server speaks first, from the tunnel's start.
fn tunnel_ttfb(
    started: Instant,
    client_first: Option<Instant>,
    upstream_first: Option<Instant>,
) -> Option<f64> {
    let up = upstream_first?;
    let from = match client_first {
        Some(c) if c <= up => c,
        _ => started,
    };
    Some(up.saturating_duration_since(from).as_secs_f64() * 1000.0)
}
