//! A response body that streams to the client untouched while keeping a bounded copy
//! for the shadow comparison, delivered when the body ends.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use crate::spool::Spooled;

/// Why no copy was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// The body was larger than the limit.
    TooLarge,
    /// The body did not end (error, or the client went away).
    Aborted,
}

/// The copying end, attached to a primary response body.
pub struct Tap {
    buf: BytesMut,
    limit: usize,
    too_large: bool,
    tx: Option<oneshot::Sender<Result<Bytes, Missed>>>,
}

impl Tap {
    /// A tap keeping at most `limit` bytes, and the receiver of its copy.
    pub fn new(limit: usize) -> (Tap, oneshot::Receiver<Result<Bytes, Missed>>) {
        let (tx, rx) = oneshot::channel();
        (Tap { buf: BytesMut::new(), limit, too_large: false, tx: Some(tx) }, rx)
    }

    fn push(&mut self, data: &Bytes) {
        if self.buf.len() + data.len() > self.limit {
            self.too_large = true;
        } else if !self.too_large {
            self.buf.extend_from_slice(data);
        }
    }

    fn finish(&mut self) {
        if let Some(tx) = self.tx.take() {
            let copy = if self.too_large { Err(Missed::TooLarge) } else { Ok(std::mem::take(&mut self.buf).freeze()) };
            let _ = tx.send(copy);
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Err(Missed::Aborted));
        }
    }
}

/// An upstream body (read ahead of the client), optionally tapped.
pub struct Tapped {
    inner: Spooled,
    tap: Option<Tap>,
}

impl Tapped {
    /// Wraps `inner`; with `tap`, a copy goes to the shadow comparison.
    pub fn new(inner: Spooled, tap: Option<Tap>) -> Tapped {
        Tapped { inner, tap }
    }
}

impl Body for Tapped {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(tap) = this.tap.as_mut() {
            match &frame {
                Some(Ok(f)) => {
                    if let Some(data) = f.data_ref() {
                        tap.push(data);
                    }
                    if this.inner.is_end_stream() {
                        tap.finish();
                    }
                }
                None => tap.finish(),
                Some(Err(_)) => {} // dropped with the body: Aborted
            }
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

impl Drop for Tapped {
    fn drop(&mut self) {
        // A body that was empty from the start is never polled.
        if self.inner.is_end_stream()
            && let Some(tap) = self.tap.as_mut()
        {
            tap.finish();
        }
    }
}
