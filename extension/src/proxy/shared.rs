//! The proxy's state, shared by every request: resolve-check-connect, the pooled upstream
//! client, parked connections, breakers and client slots. Every answered request goes through
//! [`Proxy::refuse`] or [`Proxy::relay`] (tunnels: [`Proxy::commit`]), which count it once.

use super::body::ProxyBody;
use super::client::limits::Timeouts;
use super::client::slots::Slots;
use super::policy::Policy;
use super::request::egress::{EgressMeter, Paths};
use super::request::headers::strip_hop_by_hop;
use super::request::outcome::Refusal;
use super::request::record::{record_end, RequestRecord};
use super::shaping::{Admission, Shaper};
use super::upstream::breaker::{Breakers, FAILURES_TO_OPEN, OPEN_FOR};
use super::upstream::connect::{ms_since, Dialer};
use super::upstream::connector::{ConnInfo, WardenConnector};
use super::upstream::drill::Drills;
use super::upstream::liveness::Registry;
use super::upstream::pool_stats::PoolStats;
use super::upstream::prewarmed::{ParkedSocket, Prewarmed};
use super::upstream::tls::TlsSetup;
use super::upstream::Upstreams;
use crate::clock::InvocationClock;
use crate::config::Config;
use crate::dns::DnsCache;
use crate::findings::Findings;
use crate::metrics::Recorder;
use crate::metrics::{Counter, Timing};
use crate::shutdown::Shutdown;
use http::Response;
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) struct Proxy {
    pub config: Arc<Config>,
    pub recorder: Recorder,
    pub clock: Arc<InvocationClock>,
    /// Read by the status page.
    pub findings: Arc<Findings>,
    pub shutdown: Shutdown,
    pub dialer: Arc<Dialer>,
    pub upstreams: Upstreams,
    pub breakers: Breakers,
    pub drills: Drills,
    pub pools: Arc<PoolStats>,
    /// Pre-connected sockets for `CONNECT` targets, by `host:port`.
    pub sockets: Prewarmed<ParkedSocket>,
    pub dns: Arc<DnsCache>,
    /// The port actually bound (the configured one, or the ephemeral one for port 0).
    pub port: u16,
    pub started: Instant,
    pub timeouts: Timeouts,
    pub retry_max: u32,
    pub slots: Slots,
    /// What path each connection's bytes take, and their price.
    pub paths: Paths,
    /// Per-host rate limits.
    pub shaper: Shaper,
}

/// Left to the function after the proxy gives up, before its invocation deadline.
pub(crate) const DEADLINE_MARGIN: Duration = Duration::from_millis(200);

impl Proxy {
    /// The proxy's state for a listener bound on `port`: resolve-check-connect, the pooled
    /// client with its TLS, parked and checked connections, breakers.
    pub(crate) fn new(deps: super::ProxyDeps, port: u16, timeouts: Timeouts) -> Proxy {
        let super::ProxyDeps {
            config,
            recorder,
            clock,
            findings,
            shutdown,
            dns,
        } = deps;
        let dialer = Arc::new(Dialer {
            dns: dns.clone(),
            policy: Policy::new(config.policy.clone(), vec![port, config.dns_port]),
            connect_timeout: config.connect_timeout,
            recorder: recorder.clone(),
        });
        let pools = Arc::new(PoolStats::default());
        let connector = WardenConnector {
            dialer: dialer.clone(),
            tls: Arc::new(TlsSetup::new(config.ca_bundle.clone())),
            pools: pools.clone(),
            parked: Arc::new(Prewarmed::new(config.pool_idle, recorder.clone())),
            registry: Registry::new(recorder.clone()),
        };
        Proxy {
            dialer,
            upstreams: Upstreams::new(connector, config.pool_idle),
            breakers: Breakers::new(FAILURES_TO_OPEN, OPEN_FOR),
            drills: Drills::new(&config.drills, recorder.clone()),
            pools,
            sockets: Prewarmed::new(config.pool_idle, recorder.clone()),
            dns,
            port,
            started: Instant::now(),
            timeouts,
            retry_max: config.retry_max,
            slots: Slots::new(config.max_connections, recorder.clone()),
            shaper: Shaper::new(&config.rate_limits, config.rate_limit_wait),
            paths: Paths::new(
                config.vpc_cidrs.clone(),
                config.lambda.region.clone(),
                config.prices,
            ),
            config,
            recorder,
            clock,
            findings,
            shutdown,
        }
    }

    /// Points the record at `host` (`destination` is its `host:port`), with a fresh meter for
    /// the bytes it moves.
    pub(crate) fn aim(&self, record: &mut RequestRecord, host: &str, destination: String) {
        let guess = self.paths.classify(host, None);
        let meter = EgressMeter::new(self.recorder.clone(), destination.clone(), guess);
        record.set_target(host, destination, meter);
    }

    /// The record's upstream address is known: its bytes are counted on that path.
    pub(crate) fn settle_path(&self, record: &RequestRecord) {
        if let (Some(meter), Some(addr)) = (&record.meter, record.addr) {
            meter.settle(self.paths.classify(&record.host, Some(addr.ip())));
        }
    }

    /// Time to the invocation's deadline, less the function's margin (None: no deadline known).
    pub(crate) fn time_left(&self) -> Option<Duration> {
        self.clock
            .remaining()
            .map(|left| left.saturating_sub(DEADLINE_MARGIN))
    }

    /// Waits for the record's host's rate limit, if one applies, at most `left`.
    pub(crate) async fn shape(
        &self,
        record: &mut RequestRecord,
        left: Option<Duration>,
    ) -> Result<(), Refusal> {
        match self.shaper.admit(&record.host, left).await {
            Admission::Unlimited => Ok(()),
            Admission::Passed { waited } => {
                let ms = waited.as_secs_f64() * 1000.0;
                record.shaped_ms = Some(ms);
                self.recorder
                    .observe_ms_for(&record.destination, Timing::RateLimitWaitMs, ms);
                Ok(())
            }
            Admission::Limited(limited) => Err(Refusal::rate_limited(&record.host, &limited)),
        }
    }

    /// An upstream's `429`/`503` with `Retry-After` holds its host's rate limit for as long.
    pub(crate) fn note_answer<B>(&self, host: &str, res: &Response<B>) {
        if let Some(pause) = self.shaper.note_answer(host, res.status(), res.headers()) {
            tracing::info!(
                host,
                status = res.status().as_u16(),
                pause_ms = pause.as_millis() as u64,
                "{host} asked to wait: its rate limit holds every request for {} ms",
                pause.as_millis()
            );
        }
    }

    /// Counts the request and writes its decision line.
    pub(crate) fn commit(&self, record: &RequestRecord) {
        record.commit(&self.recorder, self.config.lambda.region.as_deref());
    }

    /// Answers with an error of the proxy's own.
    pub(crate) fn refuse(
        &self,
        record: &mut RequestRecord,
        refusal: Refusal,
    ) -> Response<ProxyBody> {
        record.refused(&refusal);
        self.settle_path(record);
        self.commit(record);
        let mut res = refusal.response();
        let recorder = self.recorder.clone();
        let (dest, started) = (record.destination.clone(), record.started);
        res.body_mut().on_done(Box::new(move |_| {
            record_end(&recorder, &dest, started);
        }));
        res
    }

    /// Passes an upstream response on to the client.
    pub(crate) fn relay(
        &self,
        record: &mut RequestRecord,
        res: Response<Incoming>,
        sent_at: Instant,
    ) -> Response<ProxyBody> {
        if let Some(info) = res.extensions().get::<ConnInfo>() {
            record.use_connection(info);
            if record.reused == Some(true) {
                self.pools.reused(&info.pool_key);
            }
        }
        self.settle_path(record);
        record.status = res.status().as_u16();
        record.ttfb_ms = Some(ms_since(sent_at));
        self.commit(record);
        let (mut parts, body) = res.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts.version = http::Version::HTTP_11;
        parts.extensions = http::Extensions::new();
        let mut body = ProxyBody::upstream(body);
        let recorder = self.recorder.clone();
        let (dest, started) = (record.destination.clone(), record.started);
        let route_region = record.route.clone().zip(record.region.clone());
        let meter = record.meter.clone();
        body.on_done(Box::new(move |n| {
            if let Some(meter) = meter {
                meter.received(n);
            }
            let ms = record_end(&recorder, &dest, started);
            if let Some((route, region)) = &route_region {
                recorder.observe_ms_route(route, region, Timing::RequestMs, ms);
            }
        }));
        Response::from_parts(parts, body)
    }

    pub(crate) fn note_breaker_failure(&self, key: &str, probe: bool) {
        if self.breakers.failure(key) {
            self.recorder
                .count_for(key.trim_start_matches("https://"), Counter::CircuitOpen, 1);
            tracing::warn!(
                upstream = key,
                probe,
                "circuit opened: connect failures or timeouts in a row; using the fallback while open"
            );
        }
    }

    /// Whether an authority names this proxy itself (a client sending route or status
    /// requests in absolute form).
    pub(crate) fn is_self(&self, uri: &http::Uri) -> bool {
        let Some(authority) = uri.authority() else {
            return false;
        };
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        authority.port_u16() == Some(self.port) && matches!(host, "127.0.0.1" | "localhost" | "::1")
    }
}
