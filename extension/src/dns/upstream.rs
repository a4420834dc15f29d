//! The upstream resolvers, asked through hickory's UDP client (a fresh random source port per
//! query, ID and question checked, retransmits) with a TCP retry when an answer comes back
//! truncated. One upstream is used until it fails or times out; then the next one is tried
//! and becomes the one used.

use crate::metrics::{Counter, DnsOutcome, Event, Recorder, Timing};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::tcp::TcpClientStream;
use hickory_resolver::net::udp::UdpClientStream;
use hickory_resolver::net::xfer::{DnsExchange, DnsHandle, FirstAnswer};
use hickory_resolver::net::NetError;
use hickory_resolver::proto::op::{
    DnsRequestOptions, DnsResponse, Query as Question, ResponseCode,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Upstream {
    addr: SocketAddr,
    /// Created on first use: hickory spawns its background task on the current runtime.
    udp: OnceLock<DnsExchange<TokioRuntimeProvider>>,
    queries: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
}

pub(super) struct Upstreams {
    servers: Box<[Upstream]>,
    /// hickory keeps its connections' background tasks in the provider's task set, which
    /// aborts them when the last clone is dropped: this clone keeps them alive.
    runtime: TokioRuntimeProvider,
    current: AtomicUsize,
    timeout: Duration,
    recorder: Recorder,
}

/// Why no upstream gave a usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UpstreamFailure {
    /// None configured.
    NoUpstreams,
    /// All answered, but with this RCODE (SERVFAIL, REFUSED…) from the last one asked.
    Rcode(ResponseCode),
    /// All timed out or could not be reached.
    Unreachable,
}

impl Upstreams {
    pub(super) fn new(addrs: Vec<SocketAddr>, timeout: Duration, recorder: Recorder) -> Upstreams {
        let servers = addrs
            .into_iter()
            .map(|addr| Upstream {
                addr,
                udp: OnceLock::new(),
                queries: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                timeouts: AtomicU64::new(0),
            })
            .collect();
        Upstreams {
            servers,
            runtime: TokioRuntimeProvider::new(),
            current: AtomicUsize::new(0),
            timeout,
            recorder,
        }
    }

    /// Asks the current upstream, then the others in order, until one answers with NOERROR
    /// or NXDOMAIN.
    pub(super) async fn query(&self, question: &Question) -> Result<DnsResponse, UpstreamFailure> {
        let n = self.servers.len();
        if n == 0 {
            return Err(UpstreamFailure::NoUpstreams);
        }
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut failure = UpstreamFailure::Unreachable;
        for step in 0..n {
            let index = (first + step) % n;
            let server = &self.servers[index];
            server.queries.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            // hickory bounds each exchange by `timeout`; this bounds the TCP retry too.
            let outcome = tokio::time::timeout(2 * self.timeout, self.ask(server, question)).await;
            match outcome {
                Ok(Ok(response)) => {
                    let ms = started.elapsed().as_secs_f64() * 1000.0;
                    self.recorder.observe_ms(Timing::DnsUpstreamMs, ms);
                    let rcode = response.metadata.response_code;
                    self.note(
                        match rcode {
                            ResponseCode::NoError | ResponseCode::NXDomain => DnsOutcome::Answered,
                            ResponseCode::ServFail => DnsOutcome::ServFail,
                            _ => DnsOutcome::Error,
                        },
                        ms,
                    );
                    if rcode == ResponseCode::NoError || rcode == ResponseCode::NXDomain {
                        if step > 0 {
                            self.current.store(index, Ordering::Relaxed);
                        }
                        return Ok(response);
                    }
                    tracing::debug!(upstream = %server.addr, ?rcode, "upstream answered with an error");
                    failure = UpstreamFailure::Rcode(rcode);
                    server.errors.fetch_add(1, Ordering::Relaxed);
                    self.recorder.incr(Counter::DnsUpstreamErrors);
                }
                Ok(Err(e)) if !is_timeout(&e) => {
                    tracing::debug!(upstream = %server.addr, error = %e, "upstream query failed");
                    self.note(DnsOutcome::Error, ms_since(started));
                    server.errors.fetch_add(1, Ordering::Relaxed);
                    self.recorder.incr(Counter::DnsUpstreamErrors);
                }
                Ok(Err(_)) | Err(_) => {
                    tracing::debug!(upstream = %server.addr, "upstream query timed out");
                    self.note(DnsOutcome::Timeout, ms_since(started));
                    server.timeouts.fetch_add(1, Ordering::Relaxed);
                    self.recorder.incr(Counter::DnsUpstreamTimeouts);
                }
            }
            // Move on from the failing upstream, unless a concurrent query already has.
            let _ = self.current.compare_exchange(
                index,
                (index + 1) % n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        Err(failure)
    }

    /// Each query goes to the journal: the diagnosis judges throttling from them.
    fn note(&self, outcome: DnsOutcome, ms: f64) {
        self.recorder.note(Event::DnsUpstream { outcome, ms });
    }

    async fn ask(&self, server: &Upstream, question: &Question) -> Result<DnsResponse, NetError> {
        let mut options = DnsRequestOptions::default();
        options.use_edns = true;
        options.edns_payload_len = super::wire::OUR_UDP_PAYLOAD;
        options.recursion_desired = true;
        let udp = server.udp.get_or_init(|| {
            UdpClientStream::builder(server.addr, self.runtime.clone())
                .with_timeout(Some(self.timeout))
                .exchange()
        });
        let response = udp.lookup(question.clone(), options).first_answer().await?;
        if !response.metadata.truncation {
            return Ok(response);
        }
        // RFC 7766 §5: a truncated UDP answer is retried over TCP. Rare enough for a fresh
        // connection each time.
        let tcp = TcpClientStream::exchange(
            server.addr,
            None,
            self.timeout,
            Some(1),
            self.runtime.clone(),
        )
        .await?;
        tcp.lookup(question.clone(), options).first_answer().await
    }

    pub(super) fn status(&self) -> serde_json::Value {
        let current = self.current.load(Ordering::Relaxed) % self.servers.len().max(1);
        self.servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                serde_json::json!({
                    "address": s.addr.to_string(),
                    "in_use": i == current,
                    "queries": s.queries.load(Ordering::Relaxed),
                    "errors": s.errors.load(Ordering::Relaxed),
                    "timeouts": s.timeouts.load(Ordering::Relaxed),
                })
            })
            .collect()
    }
}

fn ms_since(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

fn is_timeout(e: &NetError) -> bool {
    match e {
        NetError::Timeout => true,
        NetError::Io(io) => io.kind() == std::io::ErrorKind::TimedOut,
        _ => false,
    }
}

/// The nameservers of `/etc/resolv.conf`, without `own` (our own listener: asking ourselves
/// would loop).
pub(super) fn from_resolv_conf(own: Option<SocketAddr>) -> Vec<SocketAddr> {
    let config = match hickory_resolver::system_conf::read_system_conf() {
        Ok((config, _)) => config,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read /etc/resolv.conf; the DNS cache has no upstream");
            return Vec::new();
        }
    };
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for ns in config.name_servers() {
        let port = ns.connections.first().map_or(53, |c| c.port);
        let addr = SocketAddr::new(ns.ip, port);
        if Some(addr) != own && !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    addrs
}
