//! An upstream response body, read straight from its connection as the client's side
//! polls for it. The connection goes back to the pool the moment the body's last byte
//! has been taken, before hyper even asks again; a body dropped midway takes its
//! connection down with it (the rest of that response is never read). When the
//! upstream answered a success before it had the whole request body, the body also
//! writes the rest of the upload as it streams, and ends only once that is done.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::chunked::{self, Decoder};
use super::conn::Conn;
use super::exchange::{Failure, Upload};
use super::pool::Lease;
use super::wire::Framing;

/// The body of an upstream response, streamed.
pub struct UpstreamBody {
    lease: Option<Lease>,
    left: Left,
    /// Whether the connection can carry another request once the body is over.
    reusable: bool,
    /// A failure held back for one poll (see [`UpstreamBody::fail`]).
    failed: Option<io::Error>,
    /// The rest of the request body, when the upstream answered before it had it all.
    upload: Option<Box<Upload>>,
}

/// What is left of the body.
enum Left {
    Bytes(u64),
    Chunked(Decoder),
    UntilClose,
    /// Nothing: over, or the connection belongs to another protocol now.
    Nothing,
}

impl Left {
    /// Whether the whole response has been taken (an upload may go on).
    fn is_over(&self) -> bool {
        match self {
            Left::Nothing | Left::Bytes(0) => true,
            Left::Chunked(decoder) => decoder.is_done(),
            Left::Bytes(_) | Left::UntilClose => false,
        }
    }
}

impl UpstreamBody {
    /// The body framed by `framing` on the leased connection, with what is left of the
    /// request's `upload`.
    pub fn new(lease: Lease, framing: Framing, reusable: bool, upload: Option<Box<Upload>>) -> UpstreamBody {
        let left = match framing {
            Framing::Length(n) => Left::Bytes(n),
            Framing::Chunked => Left::Chunked(Decoder::default()),
            Framing::Close => Left::UntilClose,
            Framing::Empty | Framing::Upgrade => Left::Nothing,
        };
        let mut body = UpstreamBody { lease: Some(lease), left, reusable, failed: None, upload };
        if framing == Framing::Empty {
            body.release();
        }
        body
    }

    /// After a 101: the connection, for the tunnel (once).
    pub fn take_upgraded(&mut self) -> Option<Box<Conn>> {
        self.lease.take().map(Lease::into_conn)
    }

    /// The body is over: the connection goes back to the pool, if it can be reused,
    /// once the upload is over too. Bytes past the response's end (nobody asked for
    /// them) make it unusable: it is closed here rather than when next wanted.
    fn release(&mut self) {
        self.left = Left::Nothing;
        if self.upload.is_some() {
            return;
        }
        if let Some(mut lease) = self.lease.take()
            && self.reusable
            && lease.conn().buf.is_empty()
        {
            lease.release();
        }
    }

    /// The end of the body, once the upload has ended too.
    fn end(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.release();
        match self.poll_upload(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(None),
            Poll::Ready(Err(e)) => self.fail(cx, e),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Writes what it can of the upload. `Pending` only once the response is over and
    /// the upload is not. An upstream that stops reading has its answer passed on
    /// whole, on a connection not used again; a client whose body fails cuts the
    /// response.
    fn poll_upload(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        let ended = self.left.is_over();
        let (Some(upload), Some(lease)) = (self.upload.as_mut(), self.lease.as_mut()) else {
            return Poll::Ready(Ok(()));
        };
        match upload.poll_send(cx, lease.conn(), ended) {
            Poll::Ready(Ok(())) => self.upload = None,
            Poll::Ready(Err(Failure::Body(e))) => return Poll::Ready(Err(io::Error::other(e))),
            Poll::Ready(Err(_)) => {
                self.upload = None;
                self.reusable = false;
            }
            Poll::Pending if ended => return Poll::Pending,
            Poll::Pending => return Poll::Ready(Ok(())),
        }
        if ended {
            self.release();
        }
        Poll::Ready(Ok(()))
    }

    /// Whether the frame just taken was the last. A chunked body knows that only once
    /// its terminator is in, which often came in the same read as the last chunk.
    fn is_end_stream_after_take(&mut self) -> bool {
        if let (Left::Chunked(decoder), Some(lease)) = (&mut self.left, self.lease.as_mut()) {
            // An error here is found again, and reported, by the next poll.
            return decoder.skip_framing(&mut lease.conn().buf) == Ok(Some(chunked::Step::End));
        }
        self.left.is_over()
    }

    /// Drops the connection after a failure, which is reported at the next poll: hyper's
    /// server discards output it has not flushed yet when a body fails, and yielding
    /// once lets it flush first, so the client gets the head and the bytes that did
    /// come before the connection is cut.
    fn fail(&mut self, cx: &mut Context<'_>, error: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.left = Left::Nothing;
        self.lease = None;
        self.upload = None;
        self.failed = Some(error);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if let Some(error) = this.failed.take() {
            return Poll::Ready(Some(Err(error)));
        }
        if this.upload.is_some() {
            match this.poll_upload(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return this.fail(cx, e),
                Poll::Pending => return Poll::Pending,
            }
        }
        loop {
            let Some(lease) = this.lease.as_mut() else { return Poll::Ready(None) };
            let conn = lease.conn();
            // Take what the buffer holds; read only when it holds nothing usable.
            let data = match &mut this.left {
                Left::Nothing => None,
                Left::Bytes(left) if !conn.buf.is_empty() => {
                    let take = usize::try_from(*left).map_or(conn.buf.len(), |l| l.min(conn.buf.len()));
                    *left -= take as u64;
                    Some(conn.buf.split_to(take).freeze())
                }
                Left::UntilClose if !conn.buf.is_empty() => Some(conn.buf.split().freeze()),
                Left::Chunked(decoder) => match decoder.step(&mut conn.buf) {
                    Ok(chunked::Step::Data(data)) => Some(data),
                    Ok(chunked::Step::End) => return this.end(cx),
                    Ok(chunked::Step::More) => None,
                    Err(e) => return this.fail(cx, io::Error::new(io::ErrorKind::InvalidData, e)),
                },
                Left::Bytes(_) | Left::UntilClose => None,
            };
            if let Some(data) = data {
                if this.is_end_stream_after_take() {
                    this.release();
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if this.left.is_over() {
                return this.end(cx);
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(this.left, Left::UntilClose) => {
                    this.reusable = false;
                    return this.end(cx);
                }
                Ok(0) => {
                    let cut =
                        io::Error::new(io::ErrorKind::UnexpectedEof, "the upstream closed the connection mid-body");
                    return this.fail(cx, cut);
                }
                Ok(_) => {}
                Err(e) => return this.fail(cx, e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed.is_none() && self.upload.is_none() && self.left.is_over()
    }

    fn size_hint(&self) -> SizeHint {
        if self.upload.is_some() {
            // The end waits for the upload's (see the pool): no length to go by.
            return SizeHint::default();
        }
        match self.left {
            Left::Bytes(n) => SizeHint::with_exact(n),
            Left::Nothing => SizeHint::with_exact(0),
            Left::Chunked(_) | Left::UntilClose => SizeHint::default(),
        }
    }
}
