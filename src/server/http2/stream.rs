//! One HTTP/2 stream: its request handed to [`Proxy::handle`], its answer sent as
//! the client's flow control allows. A stream whose client grants no window for the
//! send timeout is reset (`CANCEL`) and its answer dropped, as the send timeout
//! closes an HTTP/1 connection that takes nothing; other streams of the connection
//! go on.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, Request, Response, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Either};
use hyper::body::Body;

use super::recv::Recv;
use crate::proxy::{Client, Proxy};
use crate::spool;
use crate::upstream::BoxError;

/// Why an answer stopped before its end.
enum Stop {
    /// The client reset the stream or the connection went.
    Gone,
    /// The client granted no window for the send timeout.
    Stalled,
    /// The answer's own body failed (already counted where it failed).
    BodyFailed,
}

/// How a stream ended, as the connection weighs its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Answered (or given up by the proxy).
    Answered,
    /// The client reset it before its answer began.
    Reset,
}

/// Answers one stream.
pub async fn answer(
    proxy: Arc<Proxy>,
    client: Arc<Client>,
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    send_timeout: Duration,
) -> Ended {
    let length = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    let req = req.map(|stream| Either::Right(BoxBody::new(Recv::new(stream, length).map_err(Into::into))));
    let metrics = proxy.metrics.clone();
    // A client that resets the stream while the upstream works cancels the exchange.
    let handled = tokio::select! {
        handled = proxy.handle(req, &client) => handled,
        _ = poll_fn(|cx| respond.poll_reset(cx)) => return Ended::Reset,
    };
    let Ok(resp) = handled;
    let (mut head, body) = resp.into_parts();
    strip_connection_headers(&mut head.headers);
    let end = body.is_end_stream();
    let Ok(mut send) = respond.send_response(Response::from_parts(head, ()), end) else { return Ended::Reset };
    if end {
        return Ended::Answered;
    }
    match pipe(body, &mut send, send_timeout).await {
        Ok(()) | Err(Stop::Gone) => {}
        Err(Stop::Stalled) => {
            metrics.client_error("slow_reader");
            send.send_reset(Reason::CANCEL);
        }
        Err(Stop::BodyFailed) => send.send_reset(Reason::INTERNAL_ERROR),
    }
    Ended::Answered
}

/// Sends `body` on `send`, each chunk as the client's window allows.
async fn pipe<B>(body: B, send: &mut SendStream<Bytes>, send_timeout: Duration) -> Result<(), Stop>
where
    B: Body<Data = Bytes, Error: Into<BoxError>>,
{
    let mut body = std::pin::pin!(body);
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = poll_fn(|cx| send.poll_reset(cx)) => return Err(Stop::Gone),
        };
        let frame = match frame {
            None => return send.send_data(Bytes::new(), true).map_err(|_| Stop::Gone),
            // The read-ahead may have given the answer up first, for the same reason.
            Some(Err(e)) => {
                let given_up = spool::is_given_up(&*e.into());
                return Err(if given_up { Stop::Stalled } else { Stop::BodyFailed });
            }
            Some(Ok(frame)) => frame,
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                let Ok(trailers) = frame.into_trailers() else { continue };
                return send.send_trailers(trailers).map_err(|_| Stop::Gone);
            }
        };
        let last = body.is_end_stream();
        while !data.is_empty() {
            let room = window(send, data.len(), send_timeout).await?;
            let chunk = data.split_to(room.min(data.len()));
            send.send_data(chunk, last && data.is_empty()).map_err(|_| Stop::Gone)?;
        }
        if last {
            return Ok(());
        }
    }
}

/// Waits until the client's window takes some of `wanted` bytes: how many.
async fn window(send: &mut SendStream<Bytes>, wanted: usize, send_timeout: Duration) -> Result<usize, Stop> {
    send.reserve_capacity(wanted);
    let granted = async {
        loop {
            let room = send.capacity();
            if room > 0 {
                return Ok(room);
            }
            match poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Err(Stop::Gone),
            }
        }
    };
    tokio::time::timeout(send_timeout, granted).await.unwrap_or(Err(Stop::Stalled))
}

/// Removes what HTTP/2 forbids in a response (RFC 9113 §8.2.2): connection-specific
/// fields, which an upstream's HTTP/1 answer may carry.
fn strip_connection_headers(headers: &mut HeaderMap) {
    for name in [header::CONNECTION, header::TRANSFER_ENCODING, header::UPGRADE, header::TE] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_specific_fields_are_removed_and_others_kept() {
        let mut headers = HeaderMap::new();
        for (k, v) in [
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("content-type", "application/json"),
            ("content-range", "0-24/*"),
        ] {
            headers.insert(http::HeaderName::from_static(k), v.parse().unwrap());
        }
        strip_connection_headers(&mut headers);
        let mut left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-range", "content-type"]);
    }
}
