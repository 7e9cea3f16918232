//! One request/response exchange on a connection, driven from the request's task: the
//! head (and body) written, then the response head read; while a body goes up, an
//! early answer is watched for. No channel and no second task stand between the
//! request and the socket. An early success leaves the rest of the upload to the
//! response body ([`Upload::poll_send`]), so both directions stream at once.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::Method;
use hyper::body::{Body, Frame};
use tokio::io::AsyncWrite;
use tokio::time::Sleep;

use super::BoxError;
use super::chunked;
use super::conn::Conn;
use super::wire::{self, Framing, Head, Malformed, Parsed, Sent};
use super::{OutBody, Outbound};

/// Why a request got no response from the upstream.
#[derive(Debug)]
pub enum Failure {
    /// No connection could be made (refused, DNS, connect time-out, TLS).
    Connect(BoxError),
    /// The connection failed or closed before the whole response head came.
    Io(io::Error),
    /// The upstream's answer is not HTTP/1.1 the proxy can pass on.
    Malformed(Malformed),
    /// The client's request body failed (it went away, or went over the cap).
    Body(BoxError),
    /// No answer within the time allowed; `upload_incomplete` when the client's body
    /// had not all come by then.
    TimedOut { upload_incomplete: bool },
}

impl Failure {
    /// The error underneath, for classifying it (none for a time-out).
    pub fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Failure::Connect(e) | Failure::Body(e) => Some(e.as_ref()),
            Failure::Io(e) => Some(e),
            Failure::Malformed(e) => Some(e),
            Failure::TimedOut { .. } => None,
        }
    }
}

/// A request ready for the wire, kept whole until it has been written so that it can
/// be tried again on another connection.
pub struct Outgoing {
    head: BytesMut,
    body: Option<OutBody>,
    sent: Sent,
    head_request: bool,
    idempotent: bool,
    /// How long an upload that outlives its response may stall (the upstream timeout).
    stall: Duration,
}

impl Outgoing {
    /// Frames `out` for HTTP/1.1; an upload that outlives its response may stall for
    /// `stall` at most.
    pub fn new(out: Outbound, stall: Duration) -> Result<Outgoing, Failure> {
        let Outbound { req, forwarded } = out;
        let (mut parts, body) = req.into_parts();
        let sent = wire::frame_request(&mut parts, body.is_end_stream(), body.size_hint().exact())
            .map_err(|e| Failure::Body(e.into()))?;
        let m = &parts.method;
        Ok(Outgoing {
            head: wire::encode_head(&parts, &forwarded),
            body: (sent != Sent::Nothing).then_some(body),
            sent,
            head_request: m == Method::HEAD,
            idempotent: m.is_idempotent(),
            stall,
        })
    }
}

/// A failed exchange, and whether the request may be sent again on a fresh
/// connection: only when the upstream cannot have acted on it.
pub struct Attempt {
    pub failure: Failure,
    pub retry: bool,
}

/// Writes `out` on `conn` and reads the response head. An upstream that answers
/// before the request body is all written is heard: after an error (a 413 or a 401
/// before reading the body) the upload stops; after a success the rest of the upload
/// comes back with the head, for the response body to finish.
pub async fn exchange(conn: &mut Conn, out: &mut Outgoing) -> Result<(Head, Option<Box<Upload>>), Attempt> {
    let mut received = false;
    match out.body.take() {
        // Nothing written reached the upstream as a request.
        None => conn.send(&out.head).await.map_err(|e| Attempt { failure: Failure::Io(e), retry: true })?,
        Some(body) => {
            // Boxed: most requests have no body, and every request's future would
            // otherwise carry the upload's state.
            let mut upload = Box::new(Upload::new(&out.head, body, out.sent, out.stall));
            let early = poll_fn(|cx| upload.poll(cx, conn, out.head_request)).await;
            match early.map_err(|failure| Attempt { failure, retry: false })? {
                Early::Written => {}
                Early::Stopped(head) => return Ok((head, None)),
                // Nothing of the answer is left to stream, so nothing can block behind
                // the upload: it is finished here, within the request's time-out.
                Early::Success(head) if head.framing == Framing::Empty => {
                    return match poll_fn(|cx| upload.poll_send(cx, conn, false)).await {
                        Ok(()) => Ok((head, None)),
                        Err(Failure::Io(_)) => Ok((cut_short(head), None)),
                        Err(failure) => Err(Attempt { failure, retry: false }),
                    };
                }
                Early::Success(head) => return Ok((head, Some(upload))),
            }
        }
    }
    let head = poll_fn(|cx| poll_head(cx, conn, out.head_request, &mut received)).await.map_err(|failure| {
        // A kept-alive connection the upstream closed just as the request went out:
        // it never saw the request, if the request can be repeated safely at all.
        let retry = matches!(failure, Failure::Io(_)) && !received && out.idempotent && out.sent == Sent::Nothing;
        Attempt { failure, retry }
    })?;
    Ok((head, None))
}

/// How an upload ended before its response head was read.
enum Early {
    /// All written; the head is still to come.
    Written,
    /// The upstream answered with an error: the upload stopped there.
    Stopped(Head),
    /// The upstream answered with a success while the upload goes on: it may be
    /// reading the body still, or streaming its answer as it reads.
    Success(Head),
}

/// Reads until the buffer holds a whole final response head. `received` records
/// whether any byte came.
fn poll_head(
    cx: &mut Context<'_>,
    conn: &mut Conn,
    head_request: bool,
    received: &mut bool,
) -> Poll<Result<Head, Failure>> {
    loop {
        if !conn.buf.is_empty() {
            *received = true;
            match wire::parse_head(&mut conn.buf, head_request) {
                Ok(Parsed::Head(head)) => return Poll::Ready(Ok(head)),
                // What follows an interim answer may be in the buffer already.
                Ok(Parsed::Interim) => continue,
                Ok(Parsed::Partial) => {}
                Err(e) => return Poll::Ready(Err(Failure::Malformed(e))),
            }
        }
        match ready!(conn.poll_fill(cx)) {
            Ok(0) => {
                let closed = "the upstream closed the connection before answering";
                return Poll::Ready(Err(Failure::Io(io::Error::new(io::ErrorKind::UnexpectedEof, closed))));
            }
            Ok(_) => {}
            Err(e) => return Poll::Ready(Err(Failure::Io(e))),
        }
    }
}

/// A head answering a request whose body was not all written: nothing can follow on
/// that connection.
fn cut_short(mut head: Head) -> Head {
    head.reusable = false;
    head
}

/// A request body on its way up: the client's frames, framed and coalesced into
/// writes of at most [`Upload::FLUSH_AT`] bytes.
pub struct Upload {
    body: OutBody,
    sent: Sent,
    /// Framed and not yet written (the request head first).
    pending: BytesMut,
    /// Body bytes taken from the client so far.
    taken: u64,
    /// The client's body has ended and its terminator is in `pending`.
    ended: bool,
    /// A write failed; the response head may still be readable.
    failed: Option<io::Error>,
    /// How long the upload may stall once its response has ended.
    stall: Duration,
    /// That limit, running while the response has ended and the upload has not.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl Upload {
    const FLUSH_AT: usize = 64 * 1024;

    fn new(head: &[u8], body: OutBody, sent: Sent, stall: Duration) -> Upload {
        let pending = BytesMut::from(head);
        Upload { body, sent, pending, taken: 0, ended: false, failed: None, stall, stalled: None }
    }

    /// Until everything is written or the upstream answers first. An early error (a
    /// 413, a 401) stops the upload: the upstream does not want the body. An early
    /// success does not: the upstream may be reading the body still.
    fn poll(&mut self, cx: &mut Context<'_>, conn: &mut Conn, head_request: bool) -> Poll<Result<Early, Failure>> {
        if self.failed.is_none() {
            match self.poll_write(cx, conn) {
                Poll::Ready(Ok(())) => return Poll::Ready(Ok(Early::Written)),
                Poll::Ready(Err(Failure::Io(e))) => self.failed = Some(e),
                Poll::Ready(Err(other)) => return Poll::Ready(Err(other)),
                Poll::Pending => {}
            }
        }
        // Waiting on the client or on the upstream: has the upstream answered? After a
        // failed write too: an upstream that answers and closes makes the writes fail,
        // and its answer (which the read side may not have been told of yet) is worth
        // more than the write's error. A failed socket is soon readable, if only to
        // report the failure.
        let answered = ready!(poll_head(cx, conn, head_request, &mut false));
        Poll::Ready(match (answered, self.failed.take()) {
            (Ok(head), None) if head.status.is_success() => Ok(Early::Success(head)),
            (Ok(head), _) => Ok(Early::Stopped(cut_short(head))),
            (Err(_), Some(write)) => Err(Failure::Io(write)),
            (Err(read), None) => Err(read),
        })
    }

    /// Goes on with an upload that outlived its response head, from the response
    /// body. `Ready(Ok)` once all is written. With `ended` (the response is over), a
    /// stall longer than the upstream timeout gives up: the upstream has answered and
    /// is not reading.
    pub fn poll_send(&mut self, cx: &mut Context<'_>, conn: &mut Conn, ended: bool) -> Poll<Result<(), Failure>> {
        let before = (self.taken, self.pending.len());
        let polled = self.poll_write(cx, conn);
        if polled.is_ready() || !ended {
            return polled;
        }
        let stall = self.stall;
        let limit = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        if before != (self.taken, self.pending.len()) {
            limit.as_mut().reset(tokio::time::Instant::now() + stall);
        }
        ready!(limit.as_mut().poll(cx));
        Poll::Ready(Err(Failure::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            "the upstream stopped reading the upload",
        ))))
    }

    /// Takes what the client has ready (up to `FLUSH_AT` buffered) and writes it.
    fn poll_write(&mut self, cx: &mut Context<'_>, conn: &mut Conn) -> Poll<Result<(), Failure>> {
        loop {
            while !self.ended && self.pending.len() < Self::FLUSH_AT {
                match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Ready(Some(frame)) => self.take(frame.map_err(Failure::Body)?)?,
                    Poll::Ready(None) => self.end()?,
                    Poll::Pending => break,
                }
            }
            if self.pending.is_empty() {
                // All written (TLS holds records until flushed), or the client is slow.
                ready!(Pin::new(&mut *conn).poll_flush(cx)).map_err(Failure::Io)?;
                return if self.ended { Poll::Ready(Ok(())) } else { Poll::Pending };
            }
            match ready!(Pin::new(&mut *conn).poll_write(cx, &self.pending)) {
                Ok(0) => return Poll::Ready(Err(Failure::Io(io::ErrorKind::WriteZero.into()))),
                Ok(n) => self.pending.advance(n),
                Err(e) => return Poll::Ready(Err(Failure::Io(e))),
            }
        }
    }

    fn take(&mut self, frame: Frame<Bytes>) -> Result<(), Failure> {
        let Ok(data) = frame.into_data() else { return Ok(()) }; // trailers: dropped
        self.taken += data.len() as u64;
        match self.sent {
            Sent::Length(n) if self.taken > n => {
                return Err(Failure::Body("request body longer than its content-length".into()));
            }
            Sent::Chunked => chunked::encode(&data, &mut self.pending),
            _ => self.pending.extend_from_slice(&data),
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), Failure> {
        match self.sent {
            Sent::Length(n) if self.taken != n => {
                return Err(Failure::Body("request body shorter than its content-length".into()));
            }
            Sent::Chunked => self.pending.extend_from_slice(chunked::END),
            _ => {}
        }
        self.ended = true;
        Ok(())
    }
}
