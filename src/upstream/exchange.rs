//! One request/response exchange on a connection, driven from the request's task: the
//! head (and body) written, then the response head read. No channel and no second
//! task stand between the request and the socket.

use std::io;

use bytes::{Bytes, BytesMut};
use http::{Method, request};
use http_body_util::BodyExt;
use hyper::body::Body;

use super::OutBody;
use super::chunked;
use super::conn::Conn;
use super::wire::{self, Head, Malformed, Parsed, Sent};
use crate::error::BoxError;

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
}

impl Failure {
    /// The error underneath, for classifying it.
    pub fn source(&self) -> &(dyn std::error::Error + 'static) {
        match self {
            Failure::Connect(e) | Failure::Body(e) => e.as_ref(),
            Failure::Io(e) => e,
            Failure::Malformed(e) => e,
        }
    }
}

/// A request ready for the wire, kept whole until it has been written so that it can
/// be tried again on another connection.
pub struct Outgoing {
    head: Bytes,
    body: Option<OutBody>,
    sent: Sent,
    head_request: bool,
    idempotent: bool,
}

impl Outgoing {
    /// Frames `parts` + `body` for HTTP/1.1.
    pub fn new(mut parts: request::Parts, body: OutBody) -> Result<Outgoing, Failure> {
        let sent = wire::frame_request(&mut parts, body.is_end_stream(), body.size_hint().exact())
            .map_err(|e| Failure::Body(e.into()))?;
        let m = &parts.method;
        Ok(Outgoing {
            head: wire::encode_head(&parts),
            body: (sent != Sent::Nothing).then_some(body),
            sent,
            head_request: m == Method::HEAD,
            idempotent: m.is_idempotent(),
        })
    }
}

/// A failed exchange, and whether the request may be sent again on a fresh
/// connection: only when the upstream cannot have acted on it.
pub struct Attempt {
    pub failure: Failure,
    pub retry: bool,
}

/// Writes `out` on `conn` and reads the response head.
pub async fn exchange(conn: &mut Conn, out: &mut Outgoing) -> Result<Head, Attempt> {
    match out.body.take() {
        // Nothing written reached the upstream as a request.
        None => conn.send(&out.head).await.map_err(|e| Attempt { failure: Failure::Io(e), retry: true })?,
        // Boxed: most requests have no body, and every request's future would otherwise
        // carry the body writer's state.
        Some(body) => {
            let written = Box::pin(write_body(conn, &out.head, body, out.sent)).await;
            written.map_err(|failure| Attempt { failure, retry: false })?;
        }
    }
    let mut received = false;
    loop {
        if !conn.buf.is_empty() {
            received = true;
            match wire::parse_head(&mut conn.buf, out.head_request) {
                Ok(Parsed::Head(head)) => return Ok(head),
                // What follows an interim answer may be in the buffer already.
                Ok(Parsed::Interim) => continue,
                Ok(Parsed::Partial) => {}
                Err(e) => return Err(Attempt { failure: Failure::Malformed(e), retry: false }),
            }
        }
        let error = match conn.fill().await {
            Ok(0) => {
                io::Error::new(io::ErrorKind::UnexpectedEof, "the upstream closed the connection before answering")
            }
            Ok(_) => continue,
            Err(e) => e,
        };
        // A kept-alive connection the upstream closed just as the request went out:
        // it never saw the request, if the request can be repeated safely at all.
        let retry = !received && out.idempotent && out.sent == Sent::Nothing;
        return Err(Attempt { failure: Failure::Io(error), retry });
    }
}

/// Writes the head and the body, coalescing what is ready into one write.
async fn write_body(conn: &mut Conn, head: &[u8], mut body: OutBody, sent: Sent) -> Result<(), Failure> {
    const FLUSH_AT: usize = 64 * 1024;
    let mut pending = BytesMut::from(head);
    let mut written = 0u64;
    loop {
        let frame = match futures_util::FutureExt::now_or_never(body.frame()) {
            Some(frame) => frame,
            None => {
                flush(conn, &mut pending).await?;
                body.frame().await
            }
        };
        let Some(frame) = frame else { break };
        let Ok(data) = frame.map_err(Failure::Body)?.into_data() else { continue }; // trailers: dropped
        written += data.len() as u64;
        match sent {
            Sent::Length(n) if written > n => {
                return Err(Failure::Body("request body longer than its content-length".into()));
            }
            Sent::Chunked => chunked::encode(&data, &mut pending),
            _ => pending.extend_from_slice(&data),
        }
        if pending.len() >= FLUSH_AT {
            flush(conn, &mut pending).await?;
        }
    }
    match sent {
        Sent::Length(n) if written != n => {
            return Err(Failure::Body("request body shorter than its content-length".into()));
        }
        Sent::Chunked => pending.extend_from_slice(chunked::END),
        _ => {}
    }
    flush(conn, &mut pending).await
}

async fn flush(conn: &mut Conn, pending: &mut BytesMut) -> Result<(), Failure> {
    if !pending.is_empty() {
        conn.send(pending).await.map_err(Failure::Io)?;
        pending.clear();
    }
    Ok(())
}
