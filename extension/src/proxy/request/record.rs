//! One record per answered request or tunnel: filled in as the request goes, then turned
//! into metrics and exactly one decision log line when the response head is ready (so the
//! EMF flushed at the next INVOKE already counts it). What is only known later — the time
//! to the last byte, bytes moved — is added when the body or tunnel ends.

use crate::metrics::{log_ms, Counter, Event, Recorder, Timing};
use crate::proxy::policy::Verdict;
use crate::proxy::request::outcome::Refusal;
use crate::proxy::request::region::is_cross_region;
use crate::proxy::upstream::connector::ConnInfo;
use std::net::SocketAddr;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Tunnel,
    Forward,
    Route,
    /// Answered by the proxy before it knew where the request was going (malformed, over
    /// capacity, unknown route).
    Rejected,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Tunnel => "connect",
            Kind::Forward => "forward",
            Kind::Route => "route",
            Kind::Rejected => "rejected",
        }
    }
}

pub(crate) struct RequestRecord {
    pub kind: Kind,
    pub started: Instant,
    pub method: String,
    /// Normalised `host:port` (the `Destination` dimension); empty when never parsed.
    pub destination: String,
    /// The bare host, for cross-region detection.
    pub host: String,
    pub route: Option<String>,
    pub addr: Option<SocketAddr>,
    pub dns_ms: Option<f64>,
    pub connect_ms: Option<f64>,
    pub tls_ms: Option<f64>,
    pub ttfb_ms: Option<f64>,
    pub reused: Option<bool>,
    pub verdict: Verdict,
    pub status: u16,
    pub error: Option<&'static str>,
    pub error_counters: &'static [Counter],
    pub retries: u32,
    pub fallback: bool,
}

impl RequestRecord {
    pub(crate) fn new(kind: Kind, method: &http::Method) -> RequestRecord {
        RequestRecord {
            kind,
            started: Instant::now(),
            method: method.as_str().to_owned(),
            destination: String::new(),
            host: String::new(),
            route: None,
            addr: None,
            dns_ms: None,
            connect_ms: None,
            tls_ms: None,
            ttfb_ms: None,
            reused: None,
            verdict: Verdict::Allow,
            status: 0,
            error: None,
            error_counters: &[],
            retries: 0,
            fallback: false,
        }
    }

    pub(crate) fn set_target(&mut self, host: &str, destination: String) {
        self.host = host.to_owned();
        self.destination = destination;
    }

    /// The connection a response came on: new (with what opening it cost) or reused.
    pub(crate) fn use_connection(&mut self, info: &ConnInfo) {
        self.addr = Some(info.addr);
        if let Some(reason) = info.observed {
            self.verdict = Verdict::Observe(reason);
        }
        if info.take_first_use() {
            self.reused = Some(false);
            self.dns_ms = info.dns_ms;
            self.connect_ms = Some(info.connect_ms);
            self.tls_ms = info.tls_ms;
        } else {
            self.reused = Some(true);
        }
    }

    pub(crate) fn refused(&mut self, refusal: &Refusal) {
        self.status = refusal.status.as_u16();
        self.error = Some(refusal.token);
        self.error_counters = refusal.counters;
        if refusal.is_denial() {
            self.verdict = Verdict::Deny(refusal.token);
        }
    }

    /// Counts the request and writes its decision line.
    pub(crate) fn commit(&self, recorder: &Recorder, home_region: Option<&str>) {
        let dest = self.destination.as_str();
        let count = |c: Counter, n: u64| {
            if dest.is_empty() {
                recorder.count(c, n)
            } else {
                recorder.count_for(dest, c, n)
            }
        };
        let observe = |t: Timing, v: Option<f64>| {
            if let Some(ms) = v {
                if dest.is_empty() {
                    recorder.observe_ms(t, ms)
                } else {
                    recorder.observe_ms_for(dest, t, ms)
                }
            }
        };
        count(Counter::Requests, 1);
        for c in self.error_counters {
            // Denials are counted below from the verdict, once, whatever the mode.
            if *c != Counter::PolicyDenied {
                count(*c, 1);
            }
        }
        if self.verdict != Verdict::Allow {
            count(Counter::PolicyDenied, 1);
        }
        match self.reused {
            Some(true) => count(Counter::ConnectionsReused, 1),
            Some(false) => count(Counter::ConnectionsOpened, 1),
            None => {}
        }
        count(Counter::RetryCount, u64::from(self.retries));
        if self.fallback {
            count(Counter::FallbackHits, 1);
        }
        if !self.host.is_empty() {
            let cross_region = is_cross_region(&self.host, home_region);
            if cross_region {
                count(Counter::CrossRegionRequests, 1);
            }
            // The diagnosis judges the cross-region share from these.
            recorder.note(Event::Request {
                host: self.host.clone(),
                cross_region,
            });
        }
        // The DNS cache records the function-level `dns_ms` of every lookup it serves.
        if let (Some(ms), false) = (self.dns_ms, dest.is_empty()) {
            recorder.observe_ms_destination(dest, Timing::DnsMs, ms);
        }
        observe(Timing::TcpConnectMs, self.connect_ms);
        observe(Timing::TlsMs, self.tls_ms);
        observe(Timing::TtfbMs, self.ttfb_ms);
        self.log();
    }

    fn log(&self) {
        let (decision, reason) = match self.verdict {
            Verdict::Allow => ("allowed", None),
            Verdict::Observe(r) => ("observed", Some(r)),
            Verdict::Deny(r) => ("denied", Some(r)),
        };
        let (host, port) = match self.destination.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().ok()),
            None => (self.destination.as_str(), None),
        };
        tracing::info!(
            target: "egress_warden::proxy",
            kind = self.kind.as_str(),
            decision,
            reason,
            method = %self.method,
            host,
            port,
            route = self.route.as_deref(),
            address = self.addr.map(|a| a.ip().to_string()),
            status = self.status,
            error = self.error,
            reused = self.reused,
            retries = self.retries,
            fallback = self.fallback,
            dns_ms = self.dns_ms.map(log_ms),
            tcp_connect_ms = self.connect_ms.map(log_ms),
            tls_ms = self.tls_ms.map(log_ms),
            ttfb_ms = self.ttfb_ms.map(log_ms),
            head_ms = log_ms(self.started.elapsed().as_secs_f64() * 1000.0),
            "{} {} {}",
            self.kind.as_str(),
            decision,
            if self.destination.is_empty() { "-" } else { &self.destination },
        );
    }
}

/// Records what is known only at the end: total time and bytes from upstream.
pub(crate) fn record_end(recorder: &Recorder, destination: &str, started: Instant, bytes_in: u64) {
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if destination.is_empty() {
        recorder.observe_ms(Timing::RequestMs, ms);
        recorder.count(Counter::BytesIn, bytes_in);
    } else {
        recorder.observe_ms_for(destination, Timing::RequestMs, ms);
        recorder.count_for(destination, Counter::BytesIn, bytes_in);
    }
}

pub(crate) fn record_bytes_out(recorder: &Recorder, destination: &str, bytes: u64) {
    if destination.is_empty() {
        recorder.count(Counter::BytesOut, bytes);
    } else {
        recorder.count_for(destination, Counter::BytesOut, bytes);
    }
}
