//! The DNS cache and its localhost listener.
//!
//! One [`DnsCache`] serves both the proxy's own lookups ([`DnsCache::lookup_ip`]) and any
//! client of the listener on 127.0.0.1:`EGRESS_WARDEN_DNS_PORT` ([`bind`]). Answers are kept
//! ready in wire form, so a cache hit is a copy and a few patches; misses go to the
//! upstreams once per question; stale answers cover upstream failures (RFC 8767).
//!
//! Layout: [`wire`] (packet parsing), [`answer`] (prepared answers, TTL rules), [`store`]
//! (bounded map, CLOCK eviction), [`upstream`] (hickory client, rotation), `core` (hit,
//! miss, stale, prefetch), `fetch` (one upstream query per question), `udp` / `tcp`
//! (listeners).

mod answer;
mod core;
mod fetch;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
mod mmsg;
mod store;
mod tcp;
mod udp;
mod upstream;
mod wire;

use self::core::Core;
use crate::config::DnsSettings;
use crate::metrics::Recorder;
use crate::metrics::Timing;
use crate::shutdown::Shutdown;
use answer::{Kind, TtlPolicy};
use hickory_proto::op::{Query as Question, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use hickory_proto::serialize::binary::BinEncodable;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::AbortHandle;

#[derive(Debug)]
pub struct DnsError {
    message: String,
    /// The name does not exist, has no addresses, or is not a name: asking again gives the
    /// same answer (unlike upstreams that failed).
    name_error: bool,
}

impl DnsError {
    fn new(message: String) -> DnsError {
        DnsError {
            message,
            name_error: false,
        }
    }

    fn name_error(message: String) -> DnsError {
        DnsError {
            message,
            name_error: true,
        }
    }

    pub fn is_name_error(&self) -> bool {
        self.name_error
    }
}

impl std::fmt::Display for DnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DnsError {}

/// Internal knobs that are not user settings; tests and benches shorten the timers.
#[derive(Debug, Clone)]
pub struct DnsTuning {
    /// How long one upstream gets before the next is tried.
    pub upstream_timeout: Duration,
    /// RFC 8767's client response timer: with a stale answer in hand, how long to wait for a
    /// fresh one before sending the stale one.
    pub stale_answer_after: Duration,
    /// RFC 8767's failure recheck timer: after a failed refresh, stale answers go out at
    /// once for this long instead of waiting on the upstreams again.
    pub failure_recheck: Duration,
    /// Most questions kept.
    pub capacity: usize,
    /// Threads answering UDP; one keeps up with far more than a function asks.
    pub udp_workers: usize,
    pub tcp_max_connections: usize,
    pub tcp_idle: Duration,
    /// Most listener queries waiting on upstreams at once; beyond it UDP queries are dropped.
    pub max_pending_misses: usize,
}

impl Default for DnsTuning {
    fn default() -> Self {
        DnsTuning {
            upstream_timeout: Duration::from_secs(2),
            stale_answer_after: Duration::from_millis(1800),
            failure_recheck: Duration::from_secs(30),
            capacity: 10_000,
            udp_workers: 1,
            tcp_max_connections: 128,
            tcp_idle: Duration::from_secs(10),
            max_pending_misses: 512,
        }
    }
}

/// The one DNS cache, shared by the DNS listener and the proxy.
pub struct DnsCache {
    core: Arc<Core>,
}

impl DnsCache {
    /// A cache for `settings`; `dns_port` is our own listener's (never used as an upstream
    /// when the upstreams come from /etc/resolv.conf).
    pub fn new(
        settings: &DnsSettings,
        dns_port: u16,
        recorder: Recorder,
    ) -> Result<Arc<DnsCache>, DnsError> {
        Self::with_tuning(settings, dns_port, recorder, DnsTuning::default())
    }

    pub fn with_tuning(
        settings: &DnsSettings,
        dns_port: u16,
        recorder: Recorder,
        tuning: DnsTuning,
    ) -> Result<Arc<DnsCache>, DnsError> {
        let upstreams = if settings.upstreams.is_empty() {
            let own = (dns_port != 0).then(|| SocketAddr::from((Ipv4Addr::LOCALHOST, dns_port)));
            upstream::from_resolv_conf(own)
        } else {
            settings.upstreams.clone()
        };
        if upstreams.is_empty() {
            tracing::warn!("no DNS upstream configured or found in /etc/resolv.conf; uncached lookups will fail");
        }
        let policy = TtlPolicy::new(
            settings.min_ttl,
            settings.max_ttl,
            settings.negative_ttl,
            settings.stale,
        );
        let upstreams =
            upstream::Upstreams::new(upstreams, tuning.upstream_timeout, recorder.clone());
        Ok(Arc::new(DnsCache {
            core: Arc::new(Core::new(upstreams, policy, tuning, recorder)),
        }))
    }

    /// After a restore from a snapshot: `gap` of wall-clock time passed that the monotonic
    /// clock may not have seen; stored answers age by it.
    pub fn age_by(&self, gap: Duration) {
        self.core.age_by(gap);
    }

    /// The addresses of `host` (IPv4 first), through the cache. Literal IPs return at once.
    /// Records `dns_ms`.
    pub async fn lookup_ip(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        if host.eq_ignore_ascii_case("localhost") {
            return Ok(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        }
        let started = Instant::now();
        let mut name = Name::from_utf8(host)
            .map_err(|e| DnsError::name_error(format!("invalid host name {host:?}: {e}")))?;
        // The proxy is handed names to reach, not relative ones to search.
        name.set_fqdn(true);
        let name = name.to_lowercase();
        let key_a = question_key(&name, RecordType::A)?;
        let key_aaaa = question_key(&name, RecordType::AAAA)?;
        let (a, aaaa) = tokio::join!(self.core.resolve(&key_a), self.core.resolve(&key_aaaa));
        self.core
            .recorder()
            .observe_ms(Timing::DnsMs, started.elapsed().as_secs_f64() * 1000.0);
        let mut ips = a.answer.addresses();
        ips.extend(aaaa.answer.addresses());
        if !ips.is_empty() {
            return Ok(ips);
        }
        let (reason, name_error) = match (a.answer.kind, a.answer.rcode()) {
            (Kind::Negative, ResponseCode::NXDomain) => ("does not exist (NXDOMAIN)", true),
            (Kind::Negative, _) | (Kind::Positive, _) => ("has no address records", true),
            (Kind::Failure, ResponseCode::Refused) => ("was refused by the DNS upstreams", false),
            (Kind::Failure, _) => ("could not be resolved: DNS upstreams failed", false),
        };
        let message = format!("{host} {reason}");
        Err(if name_error {
            DnsError::name_error(message)
        } else {
            DnsError::new(message)
        })
    }

    /// Cache and upstream figures for `/_warden/status`.
    pub fn status(&self) -> serde_json::Value {
        let core = &self.core;
        let stat = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        serde_json::json!({
            "entries": core.store.len(),
            "capacity": core.store.capacity(),
            "evictions": core.store.evictions(),
            "hits": stat(&core.stats.hits),
            "misses": stat(&core.stats.misses),
            "stale_served": stat(&core.stats.stale_served),
            "prefetches": stat(&core.stats.prefetches),
            "malformed": stat(&core.stats.malformed),
            "overload_dropped": stat(&core.stats.overload_dropped),
            "in_flight": core.in_flight(),
            "ttl_s": {
                "min": core.policy.min,
                "max": core.policy.max,
                "negative": core.policy.negative,
                "stale": core.policy.stale.as_secs(),
            },
            "upstreams": core.upstreams.status(),
        })
    }
}

fn question_key(name: &Name, rtype: RecordType) -> Result<Vec<u8>, DnsError> {
    Question::query(name.clone(), rtype)
        .to_bytes()
        .map_err(|e| DnsError::new(format!("cannot encode a question for {name}: {e}")))
}

/// The running DNS listener. Dropping it leaves the listener running; it stops at shutdown
/// (or on [`DnsServerHandle::stop`]).
pub struct DnsServerHandle {
    addr: Option<SocketAddr>,
    tasks: Vec<AbortHandle>,
    /// Tells the UDP threads to stop.
    stop: Arc<AtomicBool>,
}

impl DnsServerHandle {
    /// Where the listener answers (UDP and TCP); `None` when `EGRESS_WARDEN_DNS_PORT=0`.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Binds UDP and TCP on 127.0.0.1:`port` (before returning, so the lifecycle can register
/// with Lambda knowing the port is ours) and serves from `cache` until `shutdown`.
pub async fn bind(
    port: u16,
    cache: Arc<DnsCache>,
    shutdown: Shutdown,
) -> std::io::Result<DnsServerHandle> {
    let stop = Arc::new(AtomicBool::new(false));
    if port == 0 {
        return Ok(DnsServerHandle {
            addr: None,
            tasks: Vec::new(),
            stop,
        });
    }
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let udp_socket = udp::bind(addr)?;
    let tcp_listener = tokio::net::TcpListener::bind(addr).await?;
    let core = cache.core.clone();
    let workers = core.tuning.udp_workers.max(1);
    udp::spawn(
        core.clone(),
        udp_socket,
        workers,
        tokio::runtime::Handle::current(),
        stop.clone(),
    )?;
    let handle = DnsServerHandle {
        addr: Some(addr),
        tasks: vec![tcp::spawn(core, tcp_listener).abort_handle()],
        stop,
    };
    let (tasks, stop) = (handle.tasks.clone(), handle.stop.clone());
    tokio::spawn(async move {
        shutdown.wait().await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.abort();
        }
    });
    tracing::debug!(%addr, workers, "DNS listener bound");
    Ok(handle)
}
