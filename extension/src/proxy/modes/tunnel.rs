//! `CONNECT host:port`: resolve-check-connect first (so a failure still gets a proper status
//! code), answer 200, then copy bytes both ways until either side closes.
//!
//! What a tunnel can honestly measure without terminating TLS: DNS and TCP connect time,
//! time from the client's first byte to the upstream's first byte (for TLS: the handshake's
//! first flight, reported as `ttfb_ms`), total lifetime (`request_ms`) and bytes.
//!
//! A socket the warm-up pre-connected to the same `host:port` is taken first (checked alive):
//! the tunnel then counts as a reused connection, with no DNS or connect time of its own.
//! Such a socket can still be dead without looking it (a NAT that forgot the flow answers the
//! first packet with RST), so until its first answer the client's bytes are kept: if the
//! upstream resets before answering anything, they never reached the server, and a fresh
//! connection gets them instead.

use crate::metrics::Event;
use crate::proxy::body::ProxyBody;
use crate::proxy::client::slots::ConnSlot;
use crate::proxy::modes::relay::relay;
use crate::proxy::policy::host::Target;
use crate::proxy::request::outcome::{is_reset, Refusal};
use crate::proxy::request::record::{record_end, Kind, RequestRecord};
use crate::proxy::shared::Proxy;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Read size while a warmed connection's first answer is awaited.
const FIRST_READ: usize = 16 * 1024;
/// Client bytes kept to replay on a fresh connection when a warmed one turns out dead: a TLS
/// first flight, or a small request, fits.
const REPLAY_LIMIT: usize = 64 * 1024;

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
    proxy.aim(&mut record, &target.host, target.destination());
    if let Err(refusal) = proxy.shape(&mut record, proxy.time_left()).await {
        return proxy.refuse(&mut record, refusal);
    }
    let warmed = proxy.sockets.take(&record.destination);
    let parked_at = warmed.as_ref().map(|p| p.parked_at);
    let dialed = if let Some(parked) = warmed {
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
    proxy.settle_path(&record);
    if let Some(reason) = dialed.observed {
        record.verdict = crate::proxy::policy::Verdict::Observe(reason);
    }
    record.status = 200;
    proxy.commit(&record);

    let proxy = proxy.clone();
    let destination = record.destination;
    let upstream = dialed.stream;
    let addr = dialed.addr;
    let open = dialed.open;
    tokio::spawn(async move {
        // Keeps the client connection counted (max connections, active gauge) while tunnelling.
        let _slot = slot;
        // And the upstream one (connections_peak) until the tunnel ends.
        let _open = open;
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(err) => {
                tracing::debug!(destination, "CONNECT upgrade failed: {err}");
                return;
            }
        };
        let started = Instant::now();
        // A warmed socket is only trusted once it has answered (see the module comment).
        let (upgraded, upstream, early) = match parked_at {
            Some(parked_at) => {
                let mut client = TokioIo::new(upgraded);
                let settled =
                    until_first_answer(&proxy, &target, parked_at, addr, &mut client, upstream)
                        .await;
                match settled {
                    Ok((upstream, early)) => (client.into_inner(), upstream, early),
                    Err(err) => {
                        tracing::debug!(destination, "tunnel ended: {err}");
                        return;
                    }
                }
            }
            None => (upgraded, upstream, Early::default()),
        };
        // The relay hands the meter what it moves, while the tunnel is open.
        let relayed = relay(upgraded, upstream, record.meter.clone()).await;
        match &relayed.error {
            Some(err) => tracing::debug!(destination, "tunnel ended: {err}"),
            None => tracing::debug!(destination, spliced = relayed.spliced, "tunnel closed"),
        }
        let client_first = early.first.or(relayed.client_first);
        let recorder = &proxy.recorder;
        if let Some(ttfb) = tunnel_ttfb(started, client_first, relayed.upstream_first) {
            recorder.observe_ms_for(&destination, crate::metrics::Timing::TtfbMs, ttfb);
        }
        if let Some(meter) = &record.meter {
            meter.sent(early.bytes);
        }
        record_end(recorder, &destination, record.started);
    });
    Response::builder()
        .status(StatusCode::OK)
        .body(ProxyBody::empty())
        .unwrap_or_else(|_| Response::new(ProxyBody::empty()))
}

/// What passed from the client before the tunnel proper started.
#[derive(Default)]
struct Early {
    bytes: u64,
    first: Option<Instant>,
}

/// Passes the client's bytes to a warmed `upstream` until it answers (or closes), keeping
/// them; if it resets first (or closes before anything was sent), they go to a fresh
/// connection instead, once. Returns the connection to tunnel on and the bytes passed so far.
async fn until_first_answer<C: AsyncRead + Unpin>(
    proxy: &Proxy,
    target: &Target,
    parked_at: Instant,
    addr: SocketAddr,
    client: &mut C,
    mut upstream: TcpStream,
) -> io::Result<(TcpStream, Early)> {
    let mut kept = Vec::new();
    let mut first_read = None;
    let mut buf = vec![0u8; FIRST_READ];
    let mut first = [0u8; 1];
    let mut replaced = false;
    while kept.len() <= REPLAY_LIMIT {
        let broken = tokio::select! {
            read = client.read(&mut buf) => {
                let n = read?;
                if n == 0 {
                    break;
                }
                first_read.get_or_insert_with(Instant::now);
                kept.extend_from_slice(&buf[..n]);
                match upstream.write_all(&buf[..n]).await {
                    Ok(()) => None,
                    Err(err) if is_reset(err.kind()) => Some(true),
                    Err(err) => return Err(err),
                }
            }
            answered = upstream.peek(&mut first) => match answered {
                // Closed before anything was sent: nothing is lost by going elsewhere.
                Ok(0) if kept.is_empty() => Some(false),
                Ok(_) => break,
                Err(err) if is_reset(err.kind()) => Some(true),
                Err(err) => return Err(err),
            },
        };
        let Some(reset) = broken else { continue };
        if replaced {
            return Err(io::Error::from(io::ErrorKind::ConnectionReset));
        }
        replaced = true;
        proxy.recorder.note(Event::StaleConnection {
            host: target.host.clone(),
            addr,
            idle: parked_at.elapsed(),
            reset,
            caught: false,
        });
        tracing::debug!(host = %target.host, %addr, "warmed connection was dead; using a fresh one");
        upstream = proxy
            .dialer
            .dial(target)
            .await
            .map_err(|failure| io::Error::other(failure.to_string()))?
            .stream;
        upstream.write_all(&kept).await?;
    }
    let early = Early {
        bytes: kept.len() as u64,
        first: first_read,
    };
    Ok((upstream, early))
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
