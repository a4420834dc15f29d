//! How a failure is answered and counted: one table from failure kind to status code,
//! `X-Egress-Warden-Error` token and error counters, so every path reports alike.

use crate::error_chain::{describe, find};
use crate::metrics::Counter;
use crate::proxy::body::{ClientBodyError, ProxyBody};
use crate::proxy::shaping::Limited;
use crate::proxy::upstream::connect::Failure;
use http::{HeaderValue, Response, StatusCode};
use std::io;
use std::time::Duration;

pub(crate) const ERROR_HEADER: &str = "x-egress-warden-error";

/// A request the proxy answers itself.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub status: StatusCode,
    /// Short machine-readable reason (the `X-Egress-Warden-Error` value).
    pub token: &'static str,
    pub counters: &'static [Counter],
    pub message: String,
    /// What to change, naming the variable where one helps; shown after the message.
    pub hint: Option<String>,
    /// `Retry-After`: when the same request may succeed.
    pub retry_after: Option<Duration>,
}

const NONE: &[Counter] = &[];
const DENIED: &[Counter] = &[Counter::PolicyDenied];
const DNS: &[Counter] = &[Counter::Errors, Counter::ErrorsDns];
const TIMEOUT: &[Counter] = &[
    Counter::Errors,
    Counter::ErrorsTimeout,
    Counter::ConnectTimeouts,
];
const REFUSED: &[Counter] = &[Counter::Errors, Counter::ErrorsRefused];
const RESET: &[Counter] = &[Counter::Errors, Counter::ErrorsReset];
const TLS: &[Counter] = &[Counter::Errors, Counter::ErrorsTls];
const UPSTREAM_TIMEOUT: &[Counter] = &[Counter::Errors, Counter::ErrorsTimeout];
const OTHER: &[Counter] = &[Counter::Errors];
const RATE_LIMITED: &[Counter] = &[Counter::RateLimited];

impl Refusal {
    pub(crate) fn new(
        status: StatusCode,
        token: &'static str,
        message: impl Into<String>,
    ) -> Refusal {
        Refusal {
            status,
            token,
            counters: NONE,
            message: message.into(),
            hint: None,
            retry_after: None,
        }
    }

    /// `429 rate_limited`: no slot of `host`'s bucket within the wait allowed. The client's
    /// own pace, not an upstream failure.
    pub(crate) fn rate_limited(host: &str, limited: &Limited) -> Refusal {
        let waited_ms = limited.limit.max_wait.as_millis();
        let (message, hint) = if limited.paused {
            (
                format!("{host} asked to wait (Retry-After) and the pause outlasts the {waited_ms} ms a request may wait"),
                "send again after Retry-After".to_owned(),
            )
        } else {
            let burst = match limited.limit.burst {
                1 => String::new(),
                b => format!(" with bursts of {b}"),
            };
            (
                format!(
                    "requests to {host} are limited to {}/s{burst} and no slot is free within the {waited_ms} ms a request may wait",
                    limited.limit.per_second
                ),
                "send again after Retry-After, or raise the limit in EGRESS_WARDEN_RATE_LIMITS or the wait in EGRESS_WARDEN_RATE_LIMIT_WAIT_MS".to_owned(),
            )
        };
        Refusal {
            counters: RATE_LIMITED,
            ..Refusal::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        }
        .with_hint(hint)
        .with_retry_after(limited.retry_after)
    }

    pub(crate) fn with_hint(mut self, hint: impl Into<String>) -> Refusal {
        self.hint = Some(hint.into());
        self
    }

    pub(crate) fn with_retry_after(mut self, after: Duration) -> Refusal {
        self.retry_after = Some(after);
        self
    }

    /// The message and the hint, as the log line and the client's answer give them.
    pub(crate) fn described(&self) -> String {
        match &self.hint {
            Some(hint) => format!("{}; {hint}", self.message),
            None => self.message.clone(),
        }
    }

    /// Marks this answer as a policy denial (counted in `policy_denied`).
    pub(crate) fn denial(mut self) -> Refusal {
        self.counters = DENIED;
        self
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(crate) fn from_failure(failure: &Failure) -> Refusal {
        let (status, token, counters) = match failure {
            Failure::Denied { reason, .. } => (StatusCode::FORBIDDEN, *reason, DENIED),
            Failure::Dns { .. } => (StatusCode::BAD_GATEWAY, "dns_failure", DNS),
            Failure::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "connect_timeout", TIMEOUT),
            Failure::Refused { .. } => (StatusCode::BAD_GATEWAY, "connect_refused", REFUSED),
            Failure::Io { kind, .. } if is_broken(*kind) => {
                (StatusCode::BAD_GATEWAY, "connection_reset", RESET)
            }
            Failure::Io { .. } => (StatusCode::BAD_GATEWAY, "connect_failed", OTHER),
            Failure::Tls { .. } => (StatusCode::BAD_GATEWAY, "tls_error", TLS),
        };
        Refusal {
            status,
            token,
            counters,
            message: failure.to_string(),
            hint: failure.hint(),
            retry_after: None,
        }
    }

    /// The upstream did not answer within the time left for the request.
    pub(crate) fn upstream_timeout() -> Refusal {
        Refusal {
            status: StatusCode::GATEWAY_TIMEOUT,
            token: "upstream_timeout",
            counters: UPSTREAM_TIMEOUT,
            message: "the upstream did not answer in time".into(),
            hint: None,
            retry_after: None,
        }
    }

    /// A request that failed inside hyper's client: a connect failure carries our own
    /// [`Failure`]; otherwise the connection broke after the request went out.
    pub(crate) fn from_client_error(err: &hyper_util::client::legacy::Error) -> Refusal {
        if let Some(failure) = find::<Failure>(err) {
            return Refusal::from_failure(failure);
        }
        if let Some(body) = find::<ClientBodyError>(err) {
            return Refusal::bad_request(body.to_string());
        }
        let reset = || Refusal {
            status: StatusCode::BAD_GATEWAY,
            token: "upstream_reset",
            counters: RESET,
            message: format!("the upstream connection broke: {}", describe(err)),
            hint: None,
            retry_after: None,
        };
        if let Some(io) = find::<io::Error>(err) {
            if is_broken(io.kind()) {
                return reset();
            }
            if io.kind() == io::ErrorKind::TimedOut {
                return Refusal::upstream_timeout();
            }
        }
        if let Some(h) = find::<hyper::Error>(err) {
            if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
                return reset();
            }
            if h.is_timeout() {
                return Refusal::upstream_timeout();
            }
        }
        Refusal {
            status: StatusCode::BAD_GATEWAY,
            token: "upstream_error",
            counters: OTHER,
            message: format!("the upstream request failed: {}", describe(err)),
            hint: None,
            retry_after: None,
        }
    }

    pub(crate) fn is_denial(&self) -> bool {
        self.counters == DENIED
    }

    pub(crate) fn response(&self) -> Response<ProxyBody> {
        let mut res = text_response(
            self.status,
            Some(self.token),
            format!("egress-warden: {}\n", self.described()),
        );
        // Clients that show only the status line of a refused CONNECT (urllib3's "Tunnel
        // connection failed: 403 …", curl -v) still see who refused and why.
        let phrase = format!(
            "{} (egress-warden: {})",
            self.status.canonical_reason().unwrap_or("Error"),
            self.token
        );
        if let Ok(phrase) = hyper::ext::ReasonPhrase::try_from(phrase) {
            res.extensions_mut().insert(phrase);
        }
        if let Some(after) = self.retry_after {
            // Whole seconds (RFC 9110 §10.2.3), rounded up so a client never comes back early.
            let secs = after.as_millis().div_ceil(1000).max(1);
            res.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(secs as u64));
        }
        res
    }
}

pub(crate) fn text_response(
    status: StatusCode,
    token: Option<&'static str>,
    body: String,
) -> Response<ProxyBody> {
    let mut res = Response::new(ProxyBody::full(body.into()));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(token) = token {
        headers.insert(ERROR_HEADER, HeaderValue::from_static(token));
    }
    res
}

/// The peer reset or aborted the connection, or it broke under a write.
pub(crate) fn is_reset(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// A broken connection, or an answer cut short by the peer's close.
fn is_broken(kind: io::ErrorKind) -> bool {
    is_reset(kind) || kind == io::ErrorKind::UnexpectedEof
}
