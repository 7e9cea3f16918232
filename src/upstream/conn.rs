//! One upstream connection: the stream (TCP, or TLS over it) and its read buffer,
//! which holds what arrived beyond the part of a response already handed out.
//! Requests and responses are driven from the request's own task (see
//! [`super::exchange`]), so a connection has no task of its own.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What the connector hands back.
pub type Stream = MaybeHttpsStream<TokioIo<TcpStream>>;

/// How much room a read asks for at first: a typical response head and body in one
/// read.
const READ_SIZE: usize = 8 * 1024;
/// The most a read asks for, reached by doubling while reads fill all the room they
/// have (a large download): fewer reads and fewer, larger frames to the client, with
/// a bounded buffer per connection.
const MAX_READ_SIZE: usize = 64 * 1024;

/// An open connection to an upstream host.
pub struct Conn {
    io: TokioIo<Stream>,
    /// Received and not yet consumed.
    pub buf: BytesMut,
    /// The room the next read asks for.
    read_size: usize,
}

impl Conn {
    /// Wraps a freshly connected stream.
    pub fn new(stream: Stream) -> Conn {
        Conn { io: TokioIo::new(stream), buf: BytesMut::new(), read_size: READ_SIZE }
    }

    /// Reads more into the buffer; `Ok(0)` is the end of the stream.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < self.read_size / 4 {
            self.buf.reserve(self.read_size);
        }
        let room = self.buf.capacity() - self.buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf))?;
        self.read_size = next_read_size(self.read_size, room, n);
        Poll::Ready(Ok(n))
    }

    /// Writes all of `bytes` and flushes them (TLS buffers records).
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// Readies the connection to sit idle: a read buffer grown for a download is let
    /// go (an idle connection keeps at most the usual one), and reads start small again.
    pub fn idle(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > READ_SIZE {
            self.buf = BytesMut::new();
        }
        self.read_size = READ_SIZE;
    }

    /// Whether an idle connection can no longer carry a request: the upstream closed
    /// it, failed it, or sent bytes nobody asked for. Never waits. It asks the kernel
    /// (a non-blocking peek at the TCP socket): polling the stream would answer
    /// Pending, whatever the socket's state, once the task's cooperative budget is
    /// spent, or before the reactor has seen the close.
    pub fn is_stale(&mut self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        let tcp: &TcpStream = match self.io.inner() {
            MaybeHttpsStream::Http(io) => io.inner(),
            MaybeHttpsStream::Https(tls) => tls.inner().get_ref().0.inner().inner(),
        };
        let mut probe = [std::mem::MaybeUninit::uninit(); 1];
        // A TLS connection's unread bytes (an alert, a late session ticket) count too:
        // a connection dropped needlessly is cheaper than a request lost.
        !matches!(socket2::SockRef::from(tcp).peek(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// Doubles the read size after a read that filled its room; back to the start after a
/// small one.
fn next_read_size(current: usize, room: usize, read: usize) -> usize {
    if read >= room {
        (current * 2).min(MAX_READ_SIZE)
    } else if read < READ_SIZE {
        READ_SIZE
    } else {
        current
    }
}

/// After an upgrade: reads return what was already buffered first.
impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.buf.is_empty() {
            let n = this.buf.len().min(out.remaining());
            out.put_slice(&this.buf[..n]);
            this.buf.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, out)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_grow_while_they_fill_up_and_shrink_after_a_small_one() {
        let mut size = READ_SIZE;
        for _ in 0..10 {
            size = next_read_size(size, size, size);
        }
        assert_eq!(size, MAX_READ_SIZE);
        assert_eq!(next_read_size(size, size, size / 2), size, "a large read keeps the size");
        assert_eq!(next_read_size(size, size, 100), READ_SIZE);
    }

    #[tokio::test]
    async fn an_idle_connection_lets_a_grown_buffer_go() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let mut conn = Conn::new(MaybeHttpsStream::Http(TokioIo::new(stream)));
        conn.buf.reserve(READ_SIZE);
        conn.idle();
        assert!(conn.buf.capacity() >= READ_SIZE, "the usual buffer is kept for the next response");
        conn.buf.reserve(MAX_READ_SIZE);
        conn.read_size = MAX_READ_SIZE;
        conn.idle();
        assert_eq!((conn.buf.capacity(), conn.read_size), (0, READ_SIZE));
    }

    #[tokio::test]
    async fn a_closed_connection_is_found_stale_with_the_tasks_budget_spent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut conn = Conn::new(MaybeHttpsStream::Http(TokioIo::new(stream)));
        assert!(!conn.is_stale(), "open and quiet");
        drop(server);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        // Spend the budget: every tokio resource now answers Pending.
        let sem = tokio::sync::Semaphore::new(1_000);
        while tokio::task::coop::has_budget_remaining() {
            let _ = futures_util::poll!(std::pin::pin!(sem.acquire()));
        }
        assert!(conn.is_stale(), "closed by the upstream, with the budget spent");
    }
}
