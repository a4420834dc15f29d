//! One attempt of a route request, in parts: which upstream the breaker admits, the body to
//! send (kept to be sent again, or streamed once), how many attempts are left, and what the
//! result means — answer, refuse, retry after a wait, or go again at once past a stale
//! pooled connection.

use super::{host_for_uri, upstream_key};
use crate::config::{Route, Upstream};
use crate::error_chain::find;
use crate::proxy::body::{OnDone, UpstreamBody};
use crate::proxy::request::outcome::Refusal;
use crate::proxy::request::record::RequestRecord;
use crate::proxy::shared::Proxy;
use crate::proxy::upstream::breaker::Admission;
use crate::proxy::upstream::connect::Failure;
use crate::proxy::upstream::liveness::stale_in;
use crate::proxy::upstream::retry::status_allows_retry;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use std::time::{Duration, Instant};
use tokio::time::error::Elapsed;

/// Stale pooled connections skipped in a row before the request fails (several can die at
/// once when the sandbox was frozen; a revalidation after the first usually finds the rest).
const MAX_STALE_SKIPS: u32 = 3;
/// `Retry-After` for a write kept home by a drill without an end.
const DRILL_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Request bodies up to this size (with a known length) are kept to be sent again.
const MAX_REPLAY_BYTES: u64 = 1024 * 1024;

/// The attempts of one request: counted ones (bounded by `EGRESS_WARDEN_RETRY_MAX` and the
/// deadline) and free ones past stale pooled connections (which sent nothing).
pub(super) struct Attempts {
    number: u32,
    max: u32,
    stale_skips: u32,
    deadline: Instant,
}

impl Attempts {
    pub(super) fn new(retry_max: u32, deadline: Instant) -> Attempts {
        Attempts {
            number: 1,
            max: retry_max.max(1),
            stale_skips: 0,
            deadline,
        }
    }

    /// The current counted attempt, from 1.
    pub(super) fn number(&self) -> u32 {
        self.number
    }

    /// Whether another counted attempt may follow a wait of `wait`.
    pub(super) fn another_fits(&self, wait: Duration) -> bool {
        self.number < self.max && wait < self.deadline.saturating_duration_since(Instant::now())
    }

    pub(super) fn advance(&mut self) {
        self.number += 1;
    }

    /// Takes a free attempt past a stale connection, if any are left and time is.
    fn skip_stale(&mut self) -> bool {
        if self.stale_skips < MAX_STALE_SKIPS && Instant::now() < self.deadline {
            self.stale_skips += 1;
            true
        } else {
            false
        }
    }
}

/// The request body: kept when its size is known and small, so it can be sent again;
/// streamed otherwise (then only a failure before anything was sent can be retried).
pub(super) enum RequestBody {
    Replay(Bytes),
    /// Taken by the first attempt.
    Stream(Option<Incoming>),
}

impl RequestBody {
    pub(super) async fn read(body: Incoming) -> Result<RequestBody, Refusal> {
        match body.size_hint().upper() {
            Some(n) if n <= MAX_REPLAY_BYTES => match body.collect().await {
                Ok(collected) => Ok(RequestBody::Replay(collected.to_bytes())),
                Err(err) => Err(Refusal::bad_request(format!(
                    "reading the request body failed: {err}"
                ))),
            },
            _ => Ok(RequestBody::Stream(Some(body))),
        }
    }

    pub(super) fn can_repeat(&self) -> bool {
        matches!(self, RequestBody::Replay(_))
    }

    /// The body for the next attempt, its bytes counted by the attempt's meter as they go.
    pub(super) fn for_attempt(&mut self, record: &RequestRecord) -> Result<UpstreamBody, Refusal> {
        let meter = record.meter.clone();
        let count: OnDone = Box::new(move |n| {
            if let Some(meter) = meter {
                meter.sent(n);
            }
        });
        match self {
            RequestBody::Replay(bytes) => {
                let mut body = UpstreamBody::replay(bytes);
                body.on_done(count);
                Ok(body)
            }
            RequestBody::Stream(stream) => match stream.take() {
                Some(incoming) => Ok(UpstreamBody::stream(incoming, count)),
                // The streamed body went out with an earlier attempt (never retried; defensive).
                None => Err(Refusal::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    "cannot resend a streamed body",
                )),
            },
        }
    }
}

/// The upstream an attempt goes to.
pub(super) struct Chosen<'r> {
    pub upstream: &'r Upstream,
    /// The breaker's key for the route's primary.
    primary_key: String,
    /// False: the fallback, because the primary's breaker is open or a drill has it down.
    pub on_primary: bool,
    /// The one attempt a half-open breaker lets through.
    probe: bool,
}

impl Chosen<'_> {
    /// The attempt was not sent (its host's rate limit refused it): a half-open breaker's
    /// probe is handed to the next request rather than lost.
    pub(super) fn unsent(&self, proxy: &Proxy) {
        if self.probe {
            proxy.breakers.probe_unsent(&self.primary_key);
        }
    }
}

/// The primary, unless its breaker is open or a drill has it down: then the fallback (not for
/// an unkeyed write with `fallback=reads`: `503 home_region_only`), or `503 circuit_open`.
pub(super) fn choose<'r>(
    proxy: &Proxy,
    route: &'r Route,
    unkeyed_write: bool,
    record: &mut RequestRecord,
) -> Result<Chosen<'r>, Refusal> {
    let primary_key = upstream_key(&route.primary);
    let drilled = proxy.drills.active(&route.name);
    let admission = if drilled {
        Admission::Reject
    } else {
        proxy.breakers.admit(&primary_key)
    };
    let (upstream, probe) = match admission {
        Admission::Pass => (&route.primary, false),
        Admission::Probe => (&route.primary, true),
        Admission::Reject => match &route.fallback {
            Some(_) if route.options.fallback_reads_only && unkeyed_write => {
                let back_in = if drilled {
                    proxy.drills.left(&route.name).unwrap_or(DRILL_RETRY_AFTER)
                } else {
                    proxy.breakers.retry_in(&primary_key)
                };
                // Counted against home: the region the write waits for.
                record.region = upstream_region(route, &route.primary, true);
                return Err(home_region_only(&primary_key, back_in));
            }
            Some(fallback) => {
                record.fallback = true;
                (fallback, false)
            }
            None => {
                return Err(Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "circuit_open",
                    format!(
                        "the route's primary {} is failing; its circuit is open",
                        primary_key
                    ),
                )
                .with_hint(
                    "it is tried again within seconds; a fallback in EGRESS_WARDEN_ROUTES (name=https://primary|https://fallback) serves meanwhile",
                ))
            }
        },
    };
    proxy.aim(
        record,
        &upstream.host,
        format!("{}:{}", host_for_uri(&upstream.host), upstream.port),
    );
    let on_primary = std::ptr::eq(upstream, &route.primary);
    record.region = upstream_region(route, upstream, on_primary);
    Ok(Chosen {
        on_primary,
        upstream,
        primary_key,
        probe,
    })
}

/// The region of the upstream serving this attempt: the route's `regions=` option, else the
/// region in an AWS regional endpoint's name.
fn upstream_region(route: &Route, upstream: &Upstream, on_primary: bool) -> Option<String> {
    match &route.options.regions {
        Some(regions) if on_primary => Some(regions.primary.clone()),
        Some(regions) => regions.fallback.clone(),
        None => crate::aws::aws_region_of(&upstream.host).map(str::to_owned),
    }
}

/// `503 home_region_only`: with `fallback=reads`, a write (a request not safe to repeat) waits
/// for the primary rather than landing in the fallback's region.
fn home_region_only(primary_key: &str, retry_after: Duration) -> Refusal {
    Refusal::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "home_region_only",
        format!("the route's primary {primary_key} is unavailable and this request is not safe to repeat elsewhere"),
    )
    .with_hint("fallback=reads keeps writes home; send it again after Retry-After, or give it an Idempotency-Key if the fallback may take it")
    .with_retry_after(retry_after)
}

impl Next {
    /// An answer below 500: what ends a drill's cutover or return home.
    pub(super) fn succeeded(&self) -> bool {
        matches!(self, Next::Answer(res) if res.status().as_u16() < 500)
    }
}

/// What allows a retry, worked out once the attempt's result is in.
#[derive(Clone, Copy)]
pub(super) struct Retry {
    /// The method (or an idempotency key) makes sending again safe.
    pub may_repeat: bool,
    pub can_repeat_body: bool,
    pub attempts_left: bool,
    /// The answer said when to come back (a readable `Retry-After` on a 429 or 502–504).
    pub says_when: bool,
}

pub(super) enum Next {
    Answer(Response<Incoming>),
    Refuse(Refusal),
    /// Retry after the backoff; the refusal says why the attempt failed.
    RetryAfter(Refusal),
    /// A pooled connection was found dead before the request was written: go again at once.
    SkipStale(hyper_util::client::legacy::Error),
}

type AttemptResult = Result<Result<Response<Incoming>, hyper_util::client::legacy::Error>, Elapsed>;

/// Judges an attempt's result, feeding the breaker on the way.
pub(super) fn judge(
    proxy: &Proxy,
    record: &mut RequestRecord,
    chosen: &Chosen<'_>,
    retry: Retry,
    attempts: &mut Attempts,
    result: AttemptResult,
) -> Next {
    let Retry {
        may_repeat,
        can_repeat_body,
        attempts_left,
        says_when,
    } = retry;
    match result {
        Ok(Ok(res)) => {
            if chosen.on_primary {
                proxy.breakers.success(&chosen.primary_key);
            }
            let status = res.status();
            if !(status_allows_retry(status, says_when)
                && may_repeat
                && can_repeat_body
                && attempts_left)
            {
                return Next::Answer(res);
            }
            Next::RetryAfter(Refusal::new(
                status,
                "upstream_status",
                format!("upstream answered {status}"),
            ))
        }
        Ok(Err(err))
            if stale_in(&err) == Some(false) && can_repeat_body && attempts.skip_stale() =>
        {
            Next::SkipStale(err)
        }
        Ok(Err(err)) => {
            let failure = find::<Failure>(&err);
            if let Some(f) = failure {
                record.addr = f.addr();
                record.dns_ms = f.dns_ms();
            }
            let refusal = Refusal::from_client_error(&err);
            let connect_phase = failure.is_some_and(Failure::is_connect_phase);
            if chosen.on_primary {
                if connect_phase {
                    proxy.note_breaker_failure(&chosen.primary_key, chosen.probe);
                } else {
                    proxy.breakers.success(&chosen.primary_key);
                }
            }
            tracing::debug!(
                attempt = attempts.number(),
                "route attempt failed: {}",
                refusal.message
            );
            // A certificate verdict or a missing name comes back the same every time.
            let recurs = failure.is_some_and(Failure::recurs);
            let repeatable = attempts_left && can_repeat_body && (connect_phase || may_repeat);
            if recurs || refusal.is_denial() || !repeatable {
                return Next::Refuse(refusal);
            }
            Next::RetryAfter(refusal)
        }
        Err(_) => {
            if chosen.on_primary {
                proxy.note_breaker_failure(&chosen.primary_key, chosen.probe);
            }
            let refusal = Refusal::upstream_timeout();
            if !(attempts_left && can_repeat_body && may_repeat) {
                return Next::Refuse(refusal);
            }
            Next::RetryAfter(refusal)
        }
    }
}
