//! One answer's spool, shared by its pump and its reader: frames in memory first,
//! then in a file once memory is full; read back in the order they came. Once
//! anything is in the file, everything after it goes there too until the reader has
//! caught up, so the order holds.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::time::{Instant, Sleep};

use super::file::SpoolFile;
use super::{Limits, Usage, add, sub};

/// The spool of one answer.
pub struct Shared {
    limits: Arc<Limits>,
    usage: Arc<Usage>,
    state: Mutex<State>,
}

struct State {
    memory: VecDeque<Bytes>,
    memory_bytes: u64,
    file: Option<SpoolFile>,
    /// The body ended (`Ok`) or failed (`Err`, handed to the reader once).
    end: Option<Result<(), Option<io::Error>>>,
    /// The reader dropped its end: nothing more is wanted.
    left: bool,
    /// Whom to wake when a frame comes / when room is made.
    reader: Option<Waker>,
    pump: Option<Waker>,
    /// When the reader last took something (or the spool was made).
    taken_at: Instant,
}

impl Shared {
    /// A spool holding `first` already.
    pub fn new(limits: Arc<Limits>, usage: Arc<Usage>, first: VecDeque<Bytes>) -> Shared {
        let memory_bytes = first.iter().map(|b| b.len() as u64).sum();
        add(&usage.memory, memory_bytes);
        let state = State {
            memory: first,
            memory_bytes,
            file: None,
            end: None,
            left: false,
            reader: None,
            pump: None,
            taken_at: Instant::now(),
        };
        Shared { limits, usage, state: Mutex::new(state) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until there is room for another frame. `false`: stop, the reader left,
    /// or took nothing for the send timeout while something waited for it.
    pub async fn room(&self) -> bool {
        let mut timer = None;
        poll_fn(|cx| {
            let mut state = self.lock();
            if state.left || self.given_up(&mut state, &mut timer, cx) {
                return Poll::Ready(false);
            }
            if self.has_room(&state) {
                return Poll::Ready(true);
            }
            state.pump = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// After the body's end: waits until the reader has taken everything (or left),
    /// giving the answer up if it takes nothing for the send timeout meanwhile.
    pub async fn drained(&self) {
        let mut timer = None;
        poll_fn(|cx| {
            let mut state = self.lock();
            if state.left || !has_unread(&state) || self.given_up(&mut state, &mut timer, cx) {
                return Poll::Ready(());
            }
            state.pump = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
    }

    /// Whether the answer is given up: something waits for the reader and it has
    /// taken nothing for the send timeout. Then what is held goes at once (nobody will
    /// read it; an HTTP/2 stream that gets no window may stay open a while yet) and
    /// the reader gets an error, never a clean end. Else the timer is armed for when
    /// that would be.
    fn given_up(&self, state: &mut State, timer: &mut Option<Pin<Box<Sleep>>>, cx: &mut Context<'_>) -> bool {
        if !has_unread(state) {
            return false;
        }
        let due = state.taken_at + self.limits.send_timeout;
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if timer.deadline() != due {
            timer.as_mut().reset(due);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        add(&self.usage.abandoned, 1);
        self.release(state);
        let e = io::Error::new(io::ErrorKind::TimedOut, super::GivenUp);
        state.end = Some(Err(Some(e)));
        wake(&mut state.reader);
        true
    }

    fn has_room(&self, state: &State) -> bool {
        let limits = &self.limits;
        let memory = state.file.as_ref().is_none_or(SpoolFile::is_drained)
            && state.memory_bytes < limits.memory_per_answer
            && self.usage.memory.load(Ordering::Relaxed) < limits.memory_total;
        memory || self.file_room(state)
    }

    fn file_room(&self, state: &State) -> bool {
        let unread = state.file.as_ref().map_or(0, SpoolFile::unread);
        unread < self.limits.file_per_answer && self.usage.file.load(Ordering::Relaxed) < self.limits.file_total
    }

    /// Adds a frame the upstream sent.
    pub fn push(&self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        let mut state = self.lock();
        let limits = &self.limits;
        let in_file = state.file.as_ref().is_some_and(|f| !f.is_drained());
        let fits_memory = state.memory_bytes < limits.memory_per_answer
            && self.usage.memory.load(Ordering::Relaxed) < limits.memory_total;
        if in_file || !fits_memory {
            match self.write(&mut state, &data) {
                Ok(()) => {
                    wake(&mut state.reader);
                    return;
                }
                // Memory then (over its cap by this frame): the answer is not lost.
                Err(e) => {
                    add(&self.usage.file_errors, 1);
                    tracing::warn!(error = %e, "cannot spool an answer to a file: keeping it in memory");
                    if in_file {
                        // Appending in memory would put it before the file's bytes.
                        state.end = Some(Err(Some(e)));
                        wake(&mut state.reader);
                        return;
                    }
                }
            }
        }
        let n = data.len() as u64;
        state.memory_bytes += n;
        add(&self.usage.memory, n);
        state.memory.push_back(data);
        wake(&mut state.reader);
    }

    fn write(&self, state: &mut State, data: &[u8]) -> io::Result<()> {
        if state.file.is_none() {
            state.file = Some(SpoolFile::create(&self.limits.dir, &self.usage)?);
        }
        let file = state.file.as_mut().expect("made above");
        file.append(data, &self.usage)
    }

    /// The body ended.
    pub fn end(&self) {
        let mut state = self.lock();
        state.end.get_or_insert(Ok(()));
        wake(&mut state.reader);
    }

    /// The body failed: the reader gets the error once it has what came before.
    pub fn fail(&self, e: io::Error) {
        let mut state = self.lock();
        state.end.get_or_insert(Err(Some(e)));
        wake(&mut state.reader);
    }

    /// The reader went away.
    pub fn leave(&self) {
        let mut state = self.lock();
        state.left = true;
        self.release(&mut state);
        wake(&mut state.pump);
    }

    /// Gives back what the spool holds.
    fn release(&self, state: &mut State) {
        sub(&self.usage.memory, state.memory_bytes);
        state.memory_bytes = 0;
        state.memory.clear();
        if let Some(file) = state.file.take() {
            file.close(&self.usage);
        }
    }

    /// The next bytes for the client, in order.
    pub fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        let mut state = self.lock();
        let taken = if let Some(data) = state.memory.pop_front() {
            let n = data.len() as u64;
            state.memory_bytes -= n;
            sub(&self.usage.memory, n);
            Some(Ok(data))
        } else {
            state.file.as_mut().filter(|f| !f.is_drained()).map(|file| file.read(&self.usage))
        };
        if let Some(taken) = taken {
            state.taken_at = Instant::now();
            wake(&mut state.pump);
            return Poll::Ready(Some(taken));
        }
        match state.end.as_mut() {
            Some(Ok(())) => {
                self.release(&mut state);
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                let e = e.take();
                self.release(&mut state);
                Poll::Ready(e.map(Err))
            }
            None => {
                state.reader = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let mut state = self.lock();
        self.release(&mut state);
    }
}

/// Whether anything waits for the reader.
fn has_unread(state: &State) -> bool {
    !state.memory.is_empty() || state.file.as_ref().is_some_and(|f| !f.is_drained())
}

fn wake(waker: &mut Option<Waker>) {
    if let Some(w) = waker.take() {
        w.wake();
    }
}
