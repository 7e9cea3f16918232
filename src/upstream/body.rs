//! An upstream response body, read straight from its connection as the client's side
//! polls for it. The connection goes back to the pool the moment the body's last byte
//! has been taken, before hyper even asks again; a body dropped midway takes its
//! connection down with it (the rest of that response is never read).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::chunked::{self, Decoder};
use super::conn::Conn;
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
}

/// What is left of the body.
enum Left {
    Bytes(u64),
    Chunked(Decoder),
    UntilClose,
    /// Nothing: over, or the connection belongs to another protocol now.
    Nothing,
}

impl UpstreamBody {
    /// The body framed by `framing` on the leased connection.
    pub fn new(lease: Lease, framing: Framing, reusable: bool) -> UpstreamBody {
        let left = match framing {
            Framing::Length(n) => Left::Bytes(n),
            Framing::Chunked => Left::Chunked(Decoder::default()),
            Framing::Close => Left::UntilClose,
            Framing::Empty | Framing::Upgrade => Left::Nothing,
        };
        let mut body = UpstreamBody { lease: Some(lease), left, reusable, failed: None };
        if framing == Framing::Empty {
            body.release();
        }
        body
    }

    /// After a 101: the connection, for the tunnel (once).
    pub fn take_upgraded(&mut self) -> Option<Box<Conn>> {
        self.lease.take().map(Lease::into_conn)
    }

    /// The body is over: the connection goes back to the pool, if it can be reused.
    fn release(&mut self) {
        self.left = Left::Nothing;
        if let Some(lease) = self.lease.take()
            && self.reusable
        {
            lease.release();
        }
    }

    /// Whether the frame just taken was the last. A chunked body knows that only once
    /// its terminator is in, which often came in the same read as the last chunk.
    fn is_end_stream_after_take(&mut self) -> bool {
        if let (Left::Chunked(decoder), Some(lease)) = (&mut self.left, self.lease.as_mut()) {
            // An error here is found again, and reported, by the next poll.
            return decoder.skip_framing(&mut lease.conn().buf) == Ok(Some(chunked::Step::End));
        }
        self.is_end_stream()
    }

    /// Drops the connection after a failure, which is reported at the next poll: hyper's
    /// server discards output it has not flushed yet when a body fails, and yielding
    /// once lets it flush first, so the client gets the head and the bytes that did
    /// come before the connection is cut.
    fn fail(&mut self, cx: &mut Context<'_>, error: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.left = Left::Nothing;
        self.lease = None;
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
                    Ok(chunked::Step::End) => {
                        this.release();
                        return Poll::Ready(None);
                    }
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
            if matches!(this.left, Left::Nothing) {
                this.release();
                return Poll::Ready(None);
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(this.left, Left::UntilClose) => {
                    this.reusable = false;
                    this.release();
                    return Poll::Ready(None);
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
        if self.failed.is_some() {
            return false;
        }
        match &self.left {
            Left::Nothing | Left::Bytes(0) => true,
            Left::Chunked(decoder) => decoder.is_done(),
            Left::Bytes(_) | Left::UntilClose => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Left::Bytes(n) => SizeHint::with_exact(n),
            Left::Nothing => SizeHint::with_exact(0),
            Left::Chunked(_) | Left::UntilClose => SizeHint::default(),
        }
    }
}
