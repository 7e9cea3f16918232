//! The client's request body as it goes upstream: with an optional size cap, for
//! bodies that do not declare their length (chunked uploads: past the cap the stream
//! errors, the upstream request is aborted, and the client is answered 413), and a
//! flag that says when it has all come.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body_util::Either;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::BoxError;

/// A client's request body: hyper's for HTTP/1 (no allocation), any other boxed (the
/// HTTP/2 server's streams).
pub type ClientBody = Either<Incoming, BoxBody<Bytes, BoxError>>;

/// The error a capped body ends with.
#[derive(Debug, thiserror::Error)]
#[error("request body over the {0}-byte limit")]
pub struct TooLarge(pub u64);

/// Whether a client body has all come: told to whoever must tell a slow client from
/// a slow upstream when the answer is late.
#[derive(Debug, Default)]
pub struct Arrived(AtomicBool);

impl Arrived {
    /// Whether the whole body has come.
    pub fn is_complete(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A client body, streamed, that errors past `limit` bytes.
pub struct Capped {
    inner: ClientBody,
    left: Option<u64>,
    limit: u64,
    arrived: Option<Arc<Arrived>>,
}

impl Capped {
    /// Caps `inner` at `limit` bytes (`None`: no cap). The second value says when
    /// the body has all come (none for a body that has already ended).
    pub fn new(inner: ClientBody, limit: Option<u64>) -> (Capped, Option<Arc<Arrived>>) {
        let arrived = (!inner.is_end_stream()).then(Arc::default);
        (Capped { inner, left: limit, limit: limit.unwrap_or(0), arrived: arrived.clone() }, arrived)
    }
}

impl Body for Capped {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(arrived) = &this.arrived
            && (frame.is_none() || this.inner.is_end_stream())
        {
            arrived.0.store(true, Ordering::Relaxed);
        }
        if let (Some(Ok(f)), Some(left)) = (&frame, this.left.as_mut()) {
            let n = f.data_ref().map_or(0, |d| d.len() as u64);
            if n > *left {
                return Poll::Ready(Some(Err(Box::new(TooLarge(this.limit)))));
            }
            *left -= n;
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
