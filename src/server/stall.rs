//! The send timeout: a client connection that takes no byte of its answer for
//! `limits.send_timeout_seconds` is closed, as nginx's `send_timeout` closes it. It
//! bounds what a client that stops reading can hold: its connection and the part of
//! its answer read ahead for it (the upstream connection itself was let go, see
//! `proxy::spool`).
//!
//! The clock runs only while a write is refused (the socket's send buffer is full):
//! a write that goes through costs nothing, and one that goes through after a wait
//! stops the clock. Reads are not timed here (the header read timeout and the
//! upstream timeout bound a client that sends too slowly).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The text of the error a timed-out write fails with.
const TIMED_OUT: &str = "client took nothing within the send timeout";

/// Whether `e` (or what caused it) is this module's time-out.
pub fn is_send_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(e), |e| e.source())
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .any(|e| e.kind() == io::ErrorKind::TimedOut && e.get_ref().is_some_and(|inner| inner.to_string() == TIMED_OUT))
}

/// A client stream whose writes may wait at most `limit` for the client to take
/// anything.
pub struct SendTimeout<T> {
    io: T,
    limit: Duration,
    /// Running while writes are refused; made on the first refused write.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the timer runs for the current wait (else it is stale).
    waiting: bool,
}

impl<T> SendTimeout<T> {
    /// Wraps `io`.
    pub fn new(io: T, limit: Duration) -> SendTimeout<T> {
        SendTimeout { io, limit, timer: None, waiting: false }
    }

    /// After a write was refused: starts the clock if this wait is new, and says
    /// whether it has run out.
    fn refused(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let deadline = Instant::now() + self.limit;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.waiting {
            timer.as_mut().reset(deadline);
            self.waiting = true;
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, TIMED_OUT)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn timed<R>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match polled {
            Poll::Pending => match self.refused(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
            ready => {
                self.waiting = false;
                ready
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SendTimeout<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SendTimeout<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        self.timed(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.timed(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.timed(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.timed(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_stops_is_cut_after_the_limit_and_not_before() {
        // A pipe the "client" never reads: writes fill it, then wait.
        let (ours, _theirs) = tokio::io::duplex(1024);
        let mut io = SendTimeout::new(ours, Duration::from_secs(60));
        let started = Instant::now();
        let err = io.write_all(&vec![0u8; 1 << 20]).await.unwrap_err();
        assert!(is_send_timeout(&err));
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_taking_is_never_cut() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut io = SendTimeout::new(ours, Duration::from_secs(60));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let mut got = 0;
            while got < 64 * 1024 {
                tokio::time::sleep(Duration::from_secs(30)).await;
                got += tokio::io::AsyncReadExt::read(&mut theirs, &mut buf).await.unwrap();
            }
        });
        // 128 waits of 30 s each: over an hour in all, none of them 60 s long.
        io.write_all(&vec![0u8; 64 * 1024]).await.expect("a reader that takes something in time");
        reader.await.unwrap();
    }
}
