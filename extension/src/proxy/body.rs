//! Bodies the proxy sends: to the client ([`ProxyBody`]) and upstream ([`UpstreamBody`]).
//! Both are a [`Counted`] body: bytes held in memory or a stream passed on, counting the bytes
//! as they pass and reporting when done (fully sent or dropped), which is when a request's
//! `request_ms` and byte counts are known. They differ in whose fault a stream error is.

use bytes::Bytes;
use http_body_util::combinators::MapErr;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs once when a body is finished or dropped, with the bytes that went through.
pub(crate) type OnDone = Box<dyn FnOnce(u64) + Send>;

type Stream = MapErr<Incoming, fn(hyper::Error) -> BoxError>;

/// Bytes in memory or a stream, counted, with callbacks for when it is done.
pub(crate) struct Counted {
    inner: Either<Full<Bytes>, Stream>,
    bytes: u64,
    on_done: Vec<OnDone>,
}

/// A response body towards the client; a stream error is the upstream's.
pub(crate) type ProxyBody = Counted;
/// A request body towards the upstream: the client's stream as it arrives, or a buffered
/// copy that can be sent again on a retry; a stream error is the client's.
pub(crate) type UpstreamBody = Counted;

impl Counted {
    pub(crate) fn empty() -> Counted {
        Counted::full(Bytes::new())
    }

    pub(crate) fn full(bytes: Bytes) -> Counted {
        Counted::from_inner(Either::Left(Full::new(bytes)))
    }

    /// An upstream response, passed on to the client.
    pub(crate) fn upstream(body: Incoming) -> Counted {
        let upstream_error: fn(hyper::Error) -> BoxError = |err| err.into();
        Counted::from_inner(Either::Right(body.map_err(upstream_error)))
    }

    /// The client's request body, passed on upstream; `on_done` gets the bytes sent.
    pub(crate) fn stream(body: Incoming, on_done: OnDone) -> Counted {
        let client_error: fn(hyper::Error) -> BoxError = |err| Box::new(ClientBodyError(err));
        let mut counted = Counted::from_inner(Either::Right(body.map_err(client_error)));
        counted.on_done(on_done);
        counted
    }

    /// A buffered request body, to send (again).
    pub(crate) fn replay(bytes: &Bytes) -> Counted {
        Counted::full(bytes.clone())
    }

    fn from_inner(inner: Either<Full<Bytes>, Stream>) -> Counted {
        Counted {
            inner,
            bytes: 0,
            on_done: Vec::new(),
        }
    }

    /// Adds a callback run when the body is finished or dropped.
    pub(crate) fn on_done(&mut self, f: OnDone) {
        self.on_done.push(f);
    }

    fn done(&mut self) {
        for f in self.on_done.drain(..) {
            f(self.bytes);
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.done();
    }
}

impl Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => this.done(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reading the client's request body failed (a malformed chunk, a body cut short): the
/// client's fault, answered `400` and never counted as an upstream failure.
#[derive(Debug)]
pub(crate) struct ClientBodyError(hyper::Error);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the request body could not be read: {}", self.0)
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}
