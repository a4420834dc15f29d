//! When a route-mode request may be sent again, and how long to wait first.
//!
//! Safe to repeat: idempotent methods (RFC 9110 §9.2.2), and POST/PATCH that carry an
//! `Idempotency-Key` (the upstream deduplicates them). Anything, whatever its method, whose
//! connection never opened (nothing was sent). Waits are exponential with full jitter
//! (a random time between 0 and the exponential cap), so retrying clients spread out.

use http::{HeaderMap, Method, StatusCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";
const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_CAP: Duration = Duration::from_secs(2);

pub(crate) fn method_allows_retry(method: &Method, headers: &HeaderMap) -> bool {
    match *method {
        Method::GET
        | Method::HEAD
        | Method::OPTIONS
        | Method::PUT
        | Method::DELETE
        | Method::TRACE => true,
        Method::POST | Method::PATCH => headers.contains_key(IDEMPOTENCY_KEY),
        _ => false,
    }
}

/// A write the client did not mark safe to repeat: POST, PATCH or DELETE without an
/// `Idempotency-Key`. With `fallback=reads` these stay on the route's primary (home).
pub(crate) fn is_unkeyed_write(method: &Method, headers: &HeaderMap) -> bool {
    matches!(*method, Method::POST | Method::PATCH | Method::DELETE)
        && !headers.contains_key(IDEMPOTENCY_KEY)
}

/// Gives a POST or PATCH without an `Idempotency-Key` a fresh one (a UUID v4, the form the
/// IETF draft recommends), so every attempt carries the same key and the upstream can drop
/// repeats. True when it added one.
pub(crate) fn add_idempotency_key(method: &Method, headers: &mut HeaderMap) -> bool {
    let unkeyed = (*method == Method::POST || *method == Method::PATCH)
        && !headers.contains_key(IDEMPOTENCY_KEY);
    if !unkeyed {
        return false;
    }
    let key = uuid::Uuid::new_v4().hyphenated().to_string();
    match http::HeaderValue::from_str(&key) {
        Ok(value) => {
            headers.insert(IDEMPOTENCY_KEY, value);
            true
        }
        Err(_) => false,
    }
}

/// Answers that say "try again" without the request having had an effect: a gateway's
/// 502–504, and a `429` that says when (`Retry-After`).
pub(crate) fn status_allows_retry(status: StatusCode, says_when: bool) -> bool {
    matches!(status.as_u16(), 502..=504) || (status.as_u16() == 429 && says_when)
}

/// Full-jitter wait before attempt `retry` (1 for the first retry).
pub(crate) fn backoff(retry: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << retry.min(16));
    let cap = exp.min(BACKOFF_CAP);
    let nanos = cap.as_nanos() as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(random_u64() % (nanos + 1))
}

/// splitmix64 over a shared counter seeded from the clock: jitter needs spread, not secrecy.
fn random_u64() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut seed = STATE.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    if seed == 0 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let _ = STATE.compare_exchange(
            0x9e37_79b9_7f4a_7c15,
            now,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        seed = now;
    }
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn an_idempotency_key_is_added_to_unkeyed_posts_and_patches_only() {
        let mut post = HeaderMap::new();
        assert!(add_idempotency_key(&Method::POST, &mut post));
        let key = post[IDEMPOTENCY_KEY]
            .to_str()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(key.len(), 36, "{key}");
        assert!(method_allows_retry(&Method::POST, &post));
        // Kept as it is: a key the client chose, or one added before.
        assert!(!add_idempotency_key(&Method::POST, &mut post));
        assert_eq!(post[IDEMPOTENCY_KEY], key.as_str());
        let mut patch = HeaderMap::new();
        assert!(add_idempotency_key(&Method::PATCH, &mut patch));
        let mut other = HeaderMap::new();
        assert_ne!(patch[IDEMPOTENCY_KEY], post[IDEMPOTENCY_KEY]);
        assert!(!add_idempotency_key(&Method::GET, &mut other));
        assert!(!add_idempotency_key(&Method::DELETE, &mut other));
        assert!(other.is_empty());
    }

    #[test]
    fn which_methods_may_repeat() {
        let none = HeaderMap::new();
        let mut keyed = HeaderMap::new();
        keyed.insert(IDEMPOTENCY_KEY, HeaderValue::from_static("k1"));
        assert!(method_allows_retry(&Method::GET, &none));
        assert!(method_allows_retry(&Method::PUT, &none));
        assert!(!method_allows_retry(&Method::POST, &none));
        assert!(method_allows_retry(&Method::POST, &keyed));
        assert!(method_allows_retry(&Method::PATCH, &keyed));
        assert!(!method_allows_retry(&Method::PATCH, &none));
        assert!(!method_allows_retry(&Method::CONNECT, &keyed));
    }

    #[test]
    fn backoff_is_bounded_and_jittered() {
        let mut seen = std::collections::HashSet::new();
        for retry in 1..20 {
            for _ in 0..50 {
                let d = backoff(retry);
                assert!(d <= BACKOFF_CAP);
                assert!(d <= BACKOFF_BASE * (1 << retry.min(16)));
                seen.insert(d);
            }
        }
        assert!(seen.len() > 100, "waits should vary");
    }
}
