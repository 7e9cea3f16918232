//! The plain HTTP/1.1 server connection: the request path for the requests nearly all
//! traffic is made of (origin-form, a body of declared length that fits in memory or
//! none, no upgrade), without hyper's server. Per request it parses the head into the
//! same `http::Request` hyper would, hands it to [`Proxy::handle`], and writes the
//! response from one buffer. The first request it does not take (see [`head`]) and
//! everything after it on that connection go to hyper's server, handed the bytes
//! already read ([`Ended::Handoff`]).
//!
//! It keeps hyper's behaviour where a client can see it: keep-alive unless asked to
//! close, pipelined requests answered in order, a client that closes while its
//! request is upstream cancels the request, graceful shutdown ends the connection
//! after the response in flight, and the connection's [`Deadline`] bounds the wait
//! for each head and answer (the caller drives this under [`Watched`]).
//!
//! [`Deadline`]: crate::deadline::Deadline
//! [`Watched`]: crate::deadline::Watched

pub mod head;
mod reply;

use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use http::Response;
use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

use super::signal::Shutdown;
use crate::proxy::{Client, Inbound, Proxy};
use crate::upstream::chunked;
use head::{Head, Step};
use reply::Framing;

/// The read buffer's size, as hyper's: most request heads fit many times over.
const READ_BUFFER: usize = 8 * 1024;
/// Response bytes gathered before a write: one write for a small response, bounded
/// writes for a large one.
const WRITE_AT: usize = 64 * 1024;

/// How a plain connection ended.
pub enum Ended {
    /// Closed (by either side, by shutdown, or after an error).
    Closed,
    /// At a request this path does not take: hyper's server goes on from these bytes.
    Handoff(BytesMut),
}

/// The limits a plain connection parses with.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Header lines per request.
    pub max_headers: usize,
    /// Bytes of request head.
    pub max_head: usize,
    /// How long a body may take to follow its head: the upstream timeout, which would
    /// bound it were it streamed to the upstream.
    pub body_wait: Duration,
}

/// Serves requests on `stream` from `client` until it closes, shutdown ends it, or a
/// request needs hyper's server.
pub async fn serve(
    stream: &mut TcpStream,
    proxy: &Arc<Proxy>,
    client: &Client,
    limits: Limits,
    mut shutdown: Pin<&mut Shutdown>,
) -> Ended {
    let mut buf = BytesMut::with_capacity(READ_BUFFER);
    let mut out = BytesMut::new();
    loop {
        let head = match next_head(stream, &mut buf, client, limits, shutdown.as_mut()).await {
            Ok(head) => head,
            Err(ended) => return ended,
        };
        let (close, body) = (head.close, head.body);
        let bytes = buf.split_to(head.len).freeze();
        let Ok(mut req) = head.request(&bytes) else {
            // What `http` refuses though httparse let it through: hyper's server answers
            // it, as it answers every malformed request.
            let mut read = BytesMut::from(&bytes[..]);
            read.extend_from_slice(&buf);
            return Ended::Handoff(read);
        };
        drop(bytes);
        if body > 0 {
            *req.body_mut() = Inbound::Read(Some(buf.split_to(body).freeze()));
        }
        // Pinned where it is made: the future is large, and moving it costs.
        let handling = pin!(proxy.clone().handle(req, client));
        let Some(Ok(resp)) = answer(stream, &mut buf, limits.max_head, handling).await else {
            return Ended::Closed;
        };
        // The signal was polled (and registered) while this connection waited for a head.
        let close = close || shutdown.started();
        if !respond(stream, resp, close, &mut out).await || close {
            let _ = stream.shutdown().await;
            return Ended::Closed;
        }
    }
}

/// Reads until the request at the front of `buf` is whole, its body included; `Err`
/// when the connection ends instead, or goes to hyper's server.
async fn next_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    client: &Client,
    limits: Limits,
    mut shutdown: Pin<&mut Shutdown>,
) -> Result<Head, Ended> {
    let mut awaiting_body = false;
    loop {
        match head::parse(buf, limits.max_headers, limits.max_head) {
            Step::Ready(head) => return Ok(head),
            Step::Handoff => return Err(Ended::Handoff(std::mem::take(buf))),
            Step::Partial => {}
            Step::Body if awaiting_body => {}
            Step::Body => {
                awaiting_body = true;
                if let Some(deadline) = &client.deadline {
                    deadline.await_body(limits.body_wait);
                }
            }
        }
        // Shutdown ends a connection between requests, not in the middle of one.
        let between = buf.is_empty();
        let read = poll_fn(|cx| {
            if between && shutdown.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(0));
            }
            reserve(buf);
            poll_read_buf(Pin::new(&mut *stream), cx, buf)
        });
        if !matches!(read.await, Ok(n) if n > 0) {
            return Err(Ended::Closed);
        }
    }
}

/// Room in `buf` for the next read (reclaiming the space of what was consumed).
fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_BUFFER);
    }
}

/// Waits for `handling`, reading what the client sends meanwhile (a pipelined request,
/// up to `limit` bytes). `None`: the client closed, and the request is dropped.
async fn answer<F: Future>(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    limit: usize,
    mut handling: Pin<&mut F>,
) -> Option<F::Output> {
    poll_fn(|cx| {
        if let Poll::Ready(out) = handling.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        while buf.len() < limit {
            reserve(buf);
            match poll_read_buf(Pin::new(&mut *stream), cx, buf) {
                Poll::Ready(Ok(n)) if n > 0 => {}
                Poll::Ready(_) => return Poll::Ready(None),
                Poll::Pending => break,
            }
        }
        Poll::Pending
    })
    .await
}

/// Writes `resp` to the client; whether the connection can carry another request.
async fn respond<B>(stream: &mut TcpStream, resp: Response<B>, close: bool, out: &mut BytesMut) -> bool
where
    B: Body<Data = bytes::Bytes>,
{
    let (parts, body) = resp.into_parts();
    let mut body = pin!(body);
    let framing = reply::framing(parts.status, &parts.headers, body.size_hint().exact());
    out.clear();
    reply::encode_head(&parts, framing, close, out);
    // No request here asked to switch protocols: nothing may follow an interim answer.
    let interim = parts.status.is_informational();
    drop(parts);
    let mut left = match framing {
        Framing::Length(n) => n,
        Framing::Empty | Framing::Chunked => 0,
    };
    let whole = loop {
        // What is ready goes out with the head, in one write.
        let frame = match body.frame().now_or_never() {
            Some(frame) => frame,
            None => {
                if !flush(stream, out).await {
                    return false;
                }
                body.frame().await
            }
        };
        let data = match frame {
            None => break true,
            Some(Err(_)) => break false,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue, // trailers: not sent over HTTP/1.1
            },
        };
        match framing {
            Framing::Empty => {}
            Framing::Chunked => chunked::encode(&data, out),
            Framing::Length(_) => {
                let Some(rest) = left.checked_sub(data.len() as u64) else { break false };
                left = rest;
                out.extend_from_slice(&data);
            }
        }
        if out.len() >= WRITE_AT && !flush(stream, out).await {
            return false;
        }
    };
    if framing == Framing::Chunked && whole {
        out.extend_from_slice(chunked::END);
    }
    // A body that failed, or ended short of its length, cannot be finished: what was
    // sent goes out and the connection closes, so the client sees it cut.
    let sent = flush(stream, out).await;
    if out.capacity() > WRITE_AT * 2 {
        *out = BytesMut::new();
    }
    sent && whole && left == 0 && !interim
}

/// Writes what `out` holds, and empties it; false when the client is gone.
async fn flush(stream: &mut TcpStream, out: &mut BytesMut) -> bool {
    let sent = stream.write_all(out).await.is_ok();
    out.clear();
    sent
}
