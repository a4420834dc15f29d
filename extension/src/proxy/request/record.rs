//! One record per answered request or tunnel: filled in as the request goes, then turned
//! into metrics and exactly one decision log line when the response head is ready (so the
//! EMF flushed at the next INVOKE already counts it). What is only known later — the time
//! to the last byte, bytes moved — is added when the body or tunnel ends.

use crate::metrics::{log_ms, Counter, Event, Recorder, Timing};
use crate::proxy::policy::Verdict;
use crate::proxy::request::egress::EgressMeter;
use crate::proxy::request::outcome::Refusal;
use crate::proxy::request::region::is_cross_region;
use crate::proxy::upstream::connector::ConnInfo;
use std::net::SocketAddr;
use std::sync::Arc;
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
    /// The region of the route's upstream that served the request, when known (the route's
    /// `regions=` option, else an AWS regional endpoint's host name).
    pub region: Option<String>,
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
    /// Why the proxy answered itself, and what to change: the end of the decision line.
    pub cause: Option<String>,
    pub retries: u32,
    pub fallback: bool,
    /// Counts the bytes towards the destination on their path (set with the target).
    pub meter: Option<Arc<EgressMeter>>,
    /// How long the request waited for its host's rate limit.
    pub shaped_ms: Option<f64>,
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
            region: None,
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
            cause: None,
            retries: 0,
            fallback: false,
            meter: None,
            shaped_ms: None,
        }
    }

    /// Where the request goes, and the meter for its bytes (a new one for each attempt).
    pub(crate) fn set_target(&mut self, host: &str, destination: String, meter: Arc<EgressMeter>) {
        self.host = host.to_owned();
        self.destination = destination;
        self.addr = None;
        self.meter = Some(meter);
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
        self.cause = Some(refusal.described());
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
        if let (Some(route), Some(region)) = (&self.route, &self.region) {
            let errored = self.error_counters.contains(&Counter::Errors);
            let counters = [
                Some(Counter::Requests),
                errored.then_some(Counter::Errors),
                (self.status >= 500).then_some(Counter::Responses5xx),
                self.fallback.then_some(Counter::FallbackHits),
            ];
            recorder.count_route(route, region, counters.into_iter().flatten());
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

    /// The decision: `denied` by the policy, `failed` upstream (timeout, refused, DNS, TLS,
    /// reset), `refused` by the proxy itself (malformed, unknown route, circuit open, over
    /// capacity), else `observed` or `allowed`. The first three are warnings and end with
    /// their cause and what to change.
    pub(crate) fn decision(&self) -> (&'static str, Option<&'static str>) {
        match (self.verdict, self.error) {
            (Verdict::Deny(r), _) => ("denied", Some(r)),
            (_, Some(_)) if self.error_counters.contains(&Counter::Errors) => ("failed", None),
            (_, Some(_)) => ("refused", None),
            (Verdict::Observe(r), None) => ("observed", Some(r)),
            (Verdict::Allow, None) => ("allowed", None),
        }
    }

    /// The decision line's message: `<kind> <decision> <host:port>[: <cause>; <fix>]`.
    pub(crate) fn headline(&self) -> String {
        let destination = match self.destination.as_str() {
            "" => "-",
            d => d,
        };
        let (decision, _) = self.decision();
        match &self.cause {
            Some(cause) => format!("{} {decision} {destination}: {cause}", self.kind.as_str()),
            None => format!("{} {decision} {destination}", self.kind.as_str()),
        }
    }

    fn log(&self) {
        let (decision, reason) = self.decision();
        let (host, port) = match self.destination.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().ok()),
            None => (self.destination.as_str(), None),
        };
        let headline = self.headline();
        // One field list for both levels (a level is part of a call site).
        macro_rules! decision_line {
            ($level:expr) => {
                tracing::event!(
                    target: "egress_warden::proxy",
                    $level,
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
                    rate_limit_wait_ms = self.shaped_ms.map(log_ms),
                    head_ms = log_ms(self.started.elapsed().as_secs_f64() * 1000.0),
                    "{headline}"
                )
            };
        }
        match decision {
            "allowed" | "observed" => decision_line!(tracing::Level::INFO),
            _ => decision_line!(tracing::Level::WARN),
        }
    }
}

/// Records the request's whole time, known only at the end; returns it (ms). Its bytes are
/// counted by its [`EgressMeter`].
pub(crate) fn record_end(recorder: &Recorder, destination: &str, started: Instant) -> f64 {
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if destination.is_empty() {
        recorder.observe_ms(Timing::RequestMs, ms);
    } else {
        recorder.observe_ms_for(destination, Timing::RequestMs, ms);
    }
    ms
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::policy::explain::Explained;
    use crate::proxy::upstream::connect::Failure;
    use crate::proxy::upstream::tls::TlsProblem;
    use http::StatusCode;
    use std::time::Duration;

    fn refused(kind: Kind, destination: &str, refusal: &Refusal) -> RequestRecord {
        let mut record = RequestRecord::new(kind, &http::Method::GET);
        record.destination = destination.to_owned();
        record.refused(refusal);
        record
    }

    #[test]
    fn answers_of_the_proxy_are_decided_by_what_happened_and_say_why() {
        let addr: SocketAddr = "127.0.0.2:8443".parse().unwrap();
        let tls = Failure::Tls {
            addr,
            message: "invalid peer certificate: UnknownIssuer".into(),
            problem: TlsProblem::UnknownIssuer,
        };
        let record = refused(Kind::Route, "127.0.0.2:8443", &Refusal::from_failure(&tls));
        assert_eq!(record.decision(), ("failed", None));
        assert_eq!(
            record.headline(),
            "route failed 127.0.0.2:8443: TLS with 127.0.0.2:8443 failed: invalid peer certificate: UnknownIssuer; set EGRESS_WARDEN_CA_BUNDLE to the CA that signed it"
        );

        let denied = Failure::Denied {
            reason: "deny_rule",
            addr: None,
            explained: Box::new(Explained {
                rule: "x.test:443 matches `x.test` in EGRESS_WARDEN_DENY".into(),
                fix: Some("to allow it remove `x.test` from EGRESS_WARDEN_DENY".into()),
            }),
        };
        let record = refused(Kind::Tunnel, "x.test:443", &Refusal::from_failure(&denied));
        assert_eq!(record.decision(), ("denied", Some("deny_rule")));
        assert_eq!(
            record.headline(),
            "connect denied x.test:443: denied by policy: x.test:443 matches `x.test` in EGRESS_WARDEN_DENY; to allow it remove `x.test` from EGRESS_WARDEN_DENY"
        );

        let timeout = Failure::Timeout {
            addr,
            dns_ms: None,
            after: Duration::from_millis(3000),
        };
        let record = refused(Kind::Forward, "a:80", &Refusal::from_failure(&timeout));
        assert_eq!(record.decision(), ("failed", None));
        assert!(record
            .headline()
            .starts_with("forward failed a:80: connect to 127.0.0.2:8443 timed out after 3000 ms; nothing answered"));

        let unknown = Refusal::new(StatusCode::NOT_FOUND, "unknown_route", "unknown route");
        assert_eq!(
            refused(Kind::Route, "", &unknown).decision(),
            ("refused", None)
        );
        assert_eq!(
            refused(Kind::Route, "", &unknown).headline(),
            "route refused -: unknown route"
        );

        let mut allowed = RequestRecord::new(Kind::Forward, &http::Method::GET);
        allowed.destination = "a:80".into();
        allowed.status = 502;
        assert_eq!(allowed.decision(), ("allowed", None));
        assert_eq!(allowed.headline(), "forward allowed a:80");
        allowed.verdict = Verdict::Observe("not_allowed");
        assert_eq!(allowed.decision(), ("observed", Some("not_allowed")));
    }

    #[test]
    fn only_failures_that_recur_are_kept_from_retries() {
        let addr: SocketAddr = "127.0.0.2:443".parse().unwrap();
        let tls = |problem| Failure::Tls {
            addr,
            message: String::new(),
            problem,
        };
        assert!(tls(TlsProblem::UnknownIssuer).recurs());
        assert!(tls(TlsProblem::WrongName).recurs());
        assert!(!tls(TlsProblem::Handshake).recurs());
        let dns = |name_error| Failure::Dns {
            message: String::new(),
            dns_ms: None,
            name_error,
        };
        assert!(dns(true).recurs());
        assert!(!dns(false).recurs());
        assert!(!Failure::Refused { addr, dns_ms: None }.recurs());
        let timeout = Failure::Timeout {
            addr,
            dns_ms: None,
            after: Duration::from_secs(3),
        };
        assert!(!timeout.recurs());
    }
}
