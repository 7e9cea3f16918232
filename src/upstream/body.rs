//! An upstream response body that returns its connection to the pool the moment the
//! body has been read to its end, or when it is dropped already at its end (hyper's
//! server does not poll a body that says it is over). A body abandoned midway takes
//! its connection down with it: the rest of that response is never read.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::pool::Lease;

/// The body of an upstream response, streamed.
pub struct UpstreamBody {
    inner: Incoming,
    lease: Option<Lease>,
    reusable: bool,
}

impl UpstreamBody {
    /// `inner`, read over the connection `lease`; `reusable` is false after an upgrade.
    pub fn new(inner: Incoming, lease: Lease, reusable: bool) -> UpstreamBody {
        UpstreamBody { inner, lease: Some(lease), reusable }
    }

    fn release(&mut self) {
        if let Some(lease) = self.lease.take()
            && self.reusable
        {
            lease.release();
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.release(),
            Some(Ok(_)) if this.inner.is_end_stream() => this.release(),
            Some(Ok(_)) => {}
            Some(Err(_)) => this.lease = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}
