//! The body of a client request: streamed by hyper's server, or already read whole by
//! the plain HTTP/1.1 path (which takes only requests whose body came with the head).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// A client request's body.
#[derive(Debug)]
pub enum Inbound {
    /// Read from the connection as the upstream takes it.
    Streamed(Incoming),
    /// Read already: the whole body, or `None` once taken (or when there is none).
    Read(Option<Bytes>),
}

impl Body for Inbound {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Inbound::Streamed(body) => Pin::new(body).poll_frame(cx),
            Inbound::Read(body) => Poll::Ready(body.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Inbound::Streamed(body) => body.is_end_stream(),
            Inbound::Read(body) => body.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Inbound::Streamed(body) => body.size_hint(),
            Inbound::Read(body) => SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn a_read_body_is_one_frame_of_its_exact_length() {
        let body = Inbound::Read(Some(Bytes::from_static(b"{\"a\":1}")));
        assert_eq!(body.size_hint().exact(), Some(7));
        assert!(!body.is_end_stream());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "{\"a\":1}");
        let none = Inbound::Read(None);
        assert!(none.is_end_stream());
        assert_eq!(none.size_hint().exact(), Some(0));
    }
}
