//! Reading answers ahead of the client, as nginx's proxy buffering does: an upstream
//! answer is taken from its connection as fast as the upstream sends it, into memory
//! up to a per-answer bound, then into an unlinked temporary file, so that the
//! upstream connection goes back to its pool when the upstream has sent everything,
//! whatever the client's pace. A client that stops reading then holds only its own
//! connection and its spooled answer, both bounded (the send timeout, the caps).
//!
//! An answer already whole when its head arrives (most API answers: the body came in
//! the same read) is handed over as it is: no task, no copy. Any other is pumped by a
//! task of its own into a [`spool`](Shared), and every byte is handed to the client as
//! soon as it is in, so reading ahead never delays a streamed answer.
//!
//! Beyond the caps the pump stops reading (the upstream connection is held, as
//! back-pressure), and a client that takes nothing for the send timeout while some of
//! its answer waits for it loses the answer (what was held goes at once). A leaf module: it knows bodies and files, not the
//! proxy.

mod file;
mod shared;

/// Why a reader's answer ended early: it took nothing of it within the send timeout.
#[derive(Debug, thiserror::Error)]
#[error("client took nothing of its answer within the send timeout")]
pub struct GivenUp;

/// Whether `e` (or what caused it) is an answer given up for its reader.
pub fn is_given_up(e: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(e), |e| e.source()).any(|e| {
        e.downcast_ref::<GivenUp>().is_some()
            || e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).is_some_and(|inner| inner.is::<GivenUp>())
    })
}

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use shared::Shared;

/// Caps and where files go.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Bytes one answer may hold in memory.
    pub memory_per_answer: u64,
    /// Bytes all answers together may hold in memory.
    pub memory_total: u64,
    /// Bytes one answer may hold in its file.
    pub file_per_answer: u64,
    /// Bytes all answers together may hold in files.
    pub file_total: u64,
    /// Where the files are made (and unlinked at once).
    pub dir: PathBuf,
    /// How long the pump waits for a client that takes nothing while the caps are
    /// reached, before it gives the answer up.
    pub send_timeout: Duration,
}

/// What all spools hold now, for the metrics.
#[derive(Debug, Default)]
pub struct Usage {
    /// Bytes in memory.
    pub memory: AtomicU64,
    /// Bytes in files (written and not yet read).
    pub file: AtomicU64,
    /// Files open.
    pub files: AtomicU64,
    /// Answers given up because their client took nothing for the send timeout.
    pub abandoned: AtomicU64,
    /// Files that could not be made or written (the answer then waits in memory).
    pub file_errors: AtomicU64,
}

/// The read-ahead of every answer: caps and what they hold now.
#[derive(Debug, Clone)]
pub struct ReadAhead {
    limits: Arc<Limits>,
    usage: Arc<Usage>,
}

impl ReadAhead {
    /// Read-ahead within `limits`.
    pub fn new(limits: Limits) -> ReadAhead {
        ReadAhead { limits: Arc::new(limits), usage: Arc::default() }
    }

    /// What all spools hold now.
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// `body`, read ahead of its client: handed over whole if it is whole already,
    /// else pumped by a task into a spool.
    pub fn spool<B>(&self, mut body: B) -> Spooled
    where
        B: Body<Data = Bytes, Error = io::Error> + Send + Unpin + 'static,
    {
        let mut whole = VecDeque::new();
        let mut taken = 0;
        // What the body holds already, without waiting (a noop waker: the pump, or
        // nobody, polls it next), up to the per-answer memory.
        let mut cx = Context::from_waker(Waker::noop());
        while taken < self.limits.memory_per_answer {
            if body.is_end_stream() {
                return Spooled::Whole(whole);
            }
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        taken += data.len() as u64;
                        whole.push_back(data);
                    }
                }
                Poll::Ready(None) => return Spooled::Whole(whole),
                Poll::Ready(Some(Err(e))) => return Spooled::Failed(Some(e)),
                Poll::Pending => break,
            }
        }
        if body.is_end_stream() {
            return Spooled::Whole(whole);
        }
        let shared = Arc::new(Shared::new(self.limits.clone(), self.usage.clone(), whole));
        tokio::spawn(pump(body, shared.clone()));
        Spooled::Spool(Reader { shared })
    }
}

/// Takes `body` into `shared` as fast as the caps allow, until it ends, fails, or
/// nobody wants it any more; then watches the client take the rest.
async fn pump<B>(mut body: B, shared: Arc<Shared>)
where
    B: Body<Data = Bytes, Error = io::Error> + Unpin,
{
    use http_body_util::BodyExt;
    loop {
        if !shared.room().await {
            return; // the client left, or took nothing for the send timeout
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    shared.push(data);
                }
                continue;
            }
            Some(Err(e)) => shared.fail(e),
            None => shared.end(),
        }
        // The upstream is done (its connection let go): what is left is the client's
        // to take, within the send timeout.
        drop(body);
        return shared.drained().await;
    }
}

/// An answer read ahead of its client.
pub enum Spooled {
    /// Whole already: these frames and nothing more.
    Whole(VecDeque<Bytes>),
    /// Being pumped into a spool.
    Spool(Reader),
    /// Failed before anything of it was taken.
    Failed(Option<io::Error>),
}

/// The client's end of a spool.
pub struct Reader {
    shared: Arc<Shared>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.shared.leave();
    }
}

impl Body for Spooled {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Spooled::Whole(frames) => Poll::Ready(frames.pop_front().map(|d| Ok(Frame::data(d)))),
            Spooled::Spool(reader) => reader.shared.poll_take(cx).map(|o| o.map(|r| r.map(Frame::data))),
            Spooled::Failed(e) => Poll::Ready(e.take().map(Err)),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Spooled::Whole(frames) => frames.is_empty(),
            Spooled::Spool(_) => false,
            Spooled::Failed(e) => e.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Spooled::Whole(frames) => SizeHint::with_exact(frames.iter().map(|f| f.len() as u64).sum()),
            _ => SizeHint::default(),
        }
    }
}

/// Adds `n` to `counter` (an atomic of [`Usage`]).
fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Takes `n` from `counter`.
fn sub(counter: &AtomicU64, n: u64) {
    counter.fetch_sub(n, Ordering::Relaxed);
}

#[cfg(test)]
mod tests;
