//! Bodies the proxy sends: to the client ([`ProxyBody`]) and upstream ([`UpstreamBody`]).
//! Both count bytes as they pass and report when they are done (fully sent or dropped),
//! which is when a request's `request_ms` and byte counts are known.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs once when a body is finished or dropped, with the bytes that went through.
pub(crate) type OnDone = Box<dyn FnOnce(u64) + Send>;

enum Source {
    Empty,
    Full(Option<Bytes>),
    Upstream(Incoming),
}

/// A response body towards the client.
pub(crate) struct ProxyBody {
    source: Source,
    bytes: u64,
    on_done: Vec<OnDone>,
}

impl ProxyBody {
    pub(crate) fn empty() -> ProxyBody {
        ProxyBody::from_source(Source::Empty)
    }

    pub(crate) fn full(bytes: Bytes) -> ProxyBody {
        ProxyBody::from_source(Source::Full(Some(bytes)))
    }

    pub(crate) fn upstream(body: Incoming) -> ProxyBody {
        ProxyBody::from_source(Source::Upstream(body))
    }

    fn from_source(source: Source) -> ProxyBody {
        ProxyBody {
            source,
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

impl Drop for ProxyBody {
    fn drop(&mut self) {
        self.done();
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.source {
            Source::Empty => Poll::Ready(None),
            Source::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Source::Upstream(body) => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        };
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
        match &self.source {
            Source::Empty => true,
            Source::Full(bytes) => bytes.is_none(),
            Source::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Empty => SizeHint::with_exact(0),
            Source::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Source::Full(None) => SizeHint::with_exact(0),
            Source::Upstream(body) => body.size_hint(),
        }
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

/// A request body towards the upstream: the client's stream as it arrives, or a buffered
/// copy that can be sent again on a retry.
pub(crate) enum UpstreamBody {
    Empty,
    Full(Option<Bytes>),
    Stream(Incoming, u64, Option<OnDone>),
}

impl UpstreamBody {
    pub(crate) fn stream(body: Incoming, on_done: OnDone) -> UpstreamBody {
        UpstreamBody::Stream(body, 0, Some(on_done))
    }

    pub(crate) fn replay(bytes: &Bytes) -> UpstreamBody {
        if bytes.is_empty() {
            UpstreamBody::Empty
        } else {
            UpstreamBody::Full(Some(bytes.clone()))
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let UpstreamBody::Stream(_, n, on_done) = self {
            if let Some(f) = on_done.take() {
                f(*n);
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Empty => Poll::Ready(None),
            UpstreamBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            UpstreamBody::Stream(body, n, _) => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        *n += data.len() as u64;
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(err))) => {
                    Poll::Ready(Some(Err(Box::new(ClientBodyError(err)))))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Full(bytes) => bytes.is_none(),
            UpstreamBody::Stream(body, _, _) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            UpstreamBody::Full(None) => SizeHint::with_exact(0),
            UpstreamBody::Stream(body, _, _) => body.size_hint(),
        }
    }
}
