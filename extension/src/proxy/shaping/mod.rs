//! Per-host rate shaping (`EGRESS_WARDEN_RATE_LIMITS`): a token bucket for each host that a
//! configured glob matches, shared by every client of the environment. A request beyond its
//! bucket waits for a slot — at most `EGRESS_WARDEN_RATE_LIMIT_WAIT_MS` and never past the
//! invocation's deadline — else it is answered `429 rate_limited` with `Retry-After`, without
//! reaching the vendor. An upstream's own `429`/`503` with `Retry-After` pauses that host's
//! bucket for as long (at most [`MAX_PAUSE`]).
//!
//! A `CONNECT` tunnel takes one slot when it opens: the requests inside it are encrypted.

mod bucket;

use crate::config::RateLimit;
use bucket::{Bucket, Rate, Slot};
use http::{HeaderMap, StatusCode};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// The longest an upstream's `Retry-After` pauses its host: a misbehaving upstream cannot
/// hold requests for hours.
pub(crate) const MAX_PAUSE: Duration = Duration::from_secs(300);
/// Buckets kept before idle ones (as good as new) are dropped.
const MAX_BUCKETS: usize = 1024;

/// What a request's host bucket decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Admission {
    /// No limit applies to the host.
    Unlimited,
    /// A slot came; the request waited this long for it.
    Passed { waited: Duration },
    /// No slot within the wait allowed.
    Limited(Limited),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Limited {
    /// When a slot would be free.
    pub retry_after: Duration,
    /// The host had asked to wait (its own `Retry-After`), rather than the rate being spent.
    pub paused: bool,
    pub limit: LimitShown,
}

/// The limit that applied, for the refusal's message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LimitShown {
    pub per_second: f64,
    pub burst: u32,
    pub max_wait: Duration,
}

pub(crate) struct Shaper {
    limits: Vec<(RateLimit, Rate)>,
    max_wait: Duration,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Shaper {
    pub(crate) fn new(limits: &[RateLimit], max_wait: Duration) -> Shaper {
        Shaper {
            limits: limits
                .iter()
                .map(|l| (l.clone(), Rate::new(l.per_second, l.burst)))
                .collect(),
            max_wait,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The first configured limit whose glob matches `host`.
    fn limit_for(&self, host: &str) -> Option<&(RateLimit, Rate)> {
        self.limits
            .iter()
            .find(|(limit, _)| crate::proxy::policy::glob_matches(&limit.pattern, host))
    }

    fn with_bucket<R>(&self, host: &str, rate: Rate, f: impl FnOnce(&mut Bucket) -> R) -> R {
        let now = now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(host) {
            buckets.retain(|_, bucket| !bucket.is_idle(now));
        }
        f(buckets
            .entry(host.to_owned())
            .or_insert_with(|| Bucket::new(rate, now)))
    }

    /// Waits for a slot of `host`'s bucket, at most the configured wait and `left` (the time
    /// to the invocation's deadline, when known).
    pub(crate) async fn admit(&self, host: &str, left: Option<Duration>) -> Admission {
        let Some((limit, rate)) = self.limit_for(host) else {
            return Admission::Unlimited;
        };
        let started = now();
        let cap = left.map_or(self.max_wait, |left| left.min(self.max_wait));
        loop {
            let asked = now();
            let max_wait = cap.saturating_sub(asked - started);
            let (slot, paused_until) = self.with_bucket(host, *rate, |bucket| {
                (bucket.reserve(asked, max_wait), bucket.paused_until())
            });
            match slot {
                Slot::TooFar(retry_after) => {
                    return Admission::Limited(Limited {
                        retry_after,
                        paused: paused_until > asked,
                        limit: LimitShown {
                            per_second: limit.per_second,
                            burst: limit.burst,
                            max_wait: cap,
                        },
                    })
                }
                Slot::At(at) => {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
                    // A pause that came while it waited holds this request too.
                    let paused_until = self.with_bucket(host, *rate, |b| b.paused_until());
                    if paused_until <= now() {
                        return Admission::Passed {
                            waited: now() - started,
                        };
                    }
                }
            }
        }
    }

    /// Hosts whose bucket is busy now: slots reserved ahead, or held by a pause.
    pub(crate) fn describe(&self) -> serde_json::Value {
        let at = now();
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let mut busy: Vec<serde_json::Value> = buckets
            .iter()
            .filter(|(_, bucket)| !bucket.is_idle(at))
            .map(|(host, bucket)| {
                serde_json::json!({
                    "host": host,
                    "queued_ms": bucket.due().saturating_duration_since(at).as_millis() as u64,
                    "paused_ms": bucket.paused_until().saturating_duration_since(at).as_millis() as u64,
                })
            })
            .collect();
        busy.sort_by(|a, b| a["host"].as_str().cmp(&b["host"].as_str()));
        serde_json::Value::Array(busy)
    }

    /// An upstream answered `status` with these headers: a `429` or `503` with `Retry-After`
    /// pauses the host's bucket (only hosts with a limit). Returns the pause.
    pub(crate) fn note_answer(
        &self,
        host: &str,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Option<Duration> {
        if !matches!(status.as_u16(), 429 | 503) {
            return None;
        }
        let (_, rate) = self.limit_for(host)?;
        let pause = retry_after(headers)?;
        let until = now() + pause;
        self.with_bucket(host, *rate, |bucket| bucket.pause(until));
        Some(pause)
    }
}

/// Tokio's clock (paused in tests), as a std `Instant` for the buckets.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// `Retry-After` as seconds or an HTTP date (RFC 9110 §10.2.3), at most [`MAX_PAUSE`]; None
/// when absent or unreadable.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let asked = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    };
    Some(asked.min(MAX_PAUSE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn shaper(limits: &str, wait_ms: u64) -> Shaper {
        let limits: Vec<RateLimit> = limits
            .split(',')
            .map(|l| {
                let (pattern, rate) = l.split_once('=').unwrap();
                RateLimit {
                    pattern: pattern.into(),
                    per_second: rate.parse().unwrap(),
                    burst: 1,
                }
            })
            .collect();
        Shaper::new(&limits, Duration::from_millis(wait_ms))
    }

    fn headers(retry_after: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from_str(retry_after).unwrap(),
        );
        h
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(retry_after(&headers("2")), Some(Duration::from_secs(2)));
        let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let parsed = retry_after(&headers(&soon)).unwrap();
        assert!(parsed > Duration::from_secs(28) && parsed <= Duration::from_secs(30));
        let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(30));
        assert_eq!(retry_after(&headers(&past)), Some(Duration::ZERO));
        assert_eq!(retry_after(&headers("soon")), None);
        assert_eq!(
            retry_after(&headers("10000000000000000000")),
            Some(MAX_PAUSE),
            "capped, so adding it to a time cannot overflow"
        );
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn hosts_matching_a_glob_wait_their_turn_and_others_pass() {
        let s = shaper("*.vendor.test=10", 1000);
        assert_eq!(s.admit("other.test", None).await, Admission::Unlimited);
        assert_eq!(
            s.admit("a.vendor.test", None).await,
            Admission::Passed {
                waited: Duration::ZERO
            }
        );
        // Each matching host has its own bucket.
        assert_eq!(
            s.admit("b.vendor.test", None).await,
            Admission::Passed {
                waited: Duration::ZERO
            }
        );
        let Admission::Passed { waited } = s.admit("a.vendor.test", None).await else {
            panic!("the second request within 100 ms waits")
        };
        assert_eq!(waited, Duration::from_millis(100));
        // The deadline bounds the wait below the configured one.
        let limited = s
            .admit("a.vendor.test", Some(Duration::from_millis(20)))
            .await;
        assert!(
            matches!(limited, Admission::Limited(Limited { retry_after, paused: false, .. }) if retry_after == Duration::from_millis(100)),
            "{limited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_retry_after_pauses_its_host_for_every_client() {
        let s = shaper("api.vendor.test=100", 500);
        let too_many = StatusCode::TOO_MANY_REQUESTS;
        assert_eq!(
            s.note_answer("api.vendor.test", too_many, &headers("2")),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            s.note_answer("unlimited.test", too_many, &headers("2")),
            None
        );
        assert_eq!(
            s.note_answer("api.vendor.test", StatusCode::OK, &headers("2")),
            None
        );
        let shown = s.describe();
        assert_eq!(shown[0]["host"], "api.vendor.test", "{shown}");
        assert_eq!(shown[0]["paused_ms"], 2000, "{shown}");
        let Admission::Limited(limited) = s.admit("api.vendor.test", None).await else {
            panic!("held by the pause beyond the 500 ms wait")
        };
        assert!(limited.paused);
        assert_eq!(limited.retry_after, Duration::from_secs(2));
        let patient = shaper("api.vendor.test=100", 5000);
        patient.note_answer("api.vendor.test", too_many, &headers("2"));
        assert_eq!(
            patient.admit("api.vendor.test", None).await,
            Admission::Passed {
                waited: Duration::from_secs(2)
            }
        );
    }
}
