//! The future of one request, returned by [`Proxy::handle`](super::Proxy::handle):
//! the upstream exchange (if the request got that far), then the bookkeeping.
//!
//! Written out by hand rather than as nested `async fn`s because hyper holds one per
//! request in flight, and each `async fn` level kept its own copy of the request and
//! of the futures below it (3.9 KB per request, copied on every call). Here the
//! exchange future is stored once, beside the little state the answer needs.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use super::{After, Body, Done};
use crate::error::Error;
use crate::upstream::UpstreamBody;

pin_project! {
    /// One request being handled.
    pub struct Handling<F> {
        #[pin]
        exchange: Option<F>,
        after: Option<After>,
        refused: Option<Error>,
        done: Option<Done>,
    }
}

impl<F> Handling<F> {
    /// A request that is sent upstream by `exchange` (or was refused before that), and
    /// answered through `done`.
    pub(super) fn new(exchange: Result<(F, After), Error>, done: Done) -> Handling<F> {
        let (exchange, after, refused) = match exchange {
            Ok((f, after)) => (Some(f), Some(after), None),
            Err(e) => (None, None, Some(e)),
        };
        Handling { exchange, after, refused, done: Some(done) }
    }
}

impl<F> Future for Handling<F>
where
    F: Future<Output = Result<Response<UpstreamBody>, Error>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.exchange.as_pin_mut() {
            Some(exchange) => {
                let answered = ready!(exchange.poll(cx));
                answered.map(|resp| (resp, this.after.take().unwrap_or_default()))
            }
            None => Err(this.refused.take().expect("a refused request has its error")),
        };
        let done = this.done.take().expect("Handling polled after it completed");
        Poll::Ready(Ok(done.finish(result)))
    }
}
