//! One timer per client connection instead of two per request. A plain HTTP/1
//! connection has one request at a time, so it has one deadline at a time: the next
//! request head's (header read and keep-alive idle timeout), or the upstream answer's
//! (the request timeout), or none while a response streams. The request path sets it
//! in a [`Deadline`] (an atomic store, no timer wheel), and [`Watched`], the future that
//! drives the connection, keeps the connection's one timer armed no later than it:
//! re-armed only when it fires early or the deadline moves before it, so keep-alive
//! traffic touches the timer once per timeout, not twice per request.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// No deadline: a response is streaming.
const NONE: u64 = u64::MAX;
/// The answer's deadline passed: the request waiting for it fails.
const EXPIRED: u64 = u64::MAX - 1;
/// The low bit of a deadline: what it bounds.
const ANSWER: u64 = 1;

/// What the connection waits for, and until when (in milliseconds since it opened).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// A response is streaming: no deadline.
    Nothing,
    /// The answer's deadline passed, and the request has not yet noticed.
    Expired,
    /// The next request head, until then.
    Request(u64),
    /// The upstream's answer, until then.
    Answer(u64),
}

/// A client connection's current deadline, shared by the connection and its requests.
#[derive(Debug)]
pub struct Deadline {
    opened: Instant,
    /// The header read timeout, which also bounds a keep-alive connection's idle wait.
    idle: Duration,
    at: AtomicU64,
}

impl Deadline {
    /// The deadline of a connection just opened: its first request head within `idle`.
    pub fn new(idle: Duration) -> Arc<Deadline> {
        let d = Deadline { opened: Instant::now(), idle, at: AtomicU64::new(NONE) };
        d.at.store(d.ms(d.opened + idle) << 1, Ordering::Relaxed);
        Arc::new(d)
    }

    /// A request went upstream at `now`: its answer is due within `timeout`.
    pub fn answer_within(&self, now: Instant, timeout: Duration) {
        self.at.store(self.ms(now + timeout) << 1 | ANSWER, Ordering::Relaxed);
    }

    /// The answer came (or the request was refused): its body has no deadline.
    pub fn answered(&self) {
        self.at.store(NONE, Ordering::Relaxed);
    }

    /// The response is over: the next request head is due within the idle timeout.
    pub fn await_request(&self) {
        self.await_body(self.idle);
    }

    /// A request head came, its body not yet: the body is due within `within` (the
    /// upstream timeout, which bounds an upload streamed to the upstream too). A wait
    /// for the rest of a request, as for its head: when it passes, the connection ends.
    pub fn await_body(&self, within: Duration) {
        self.at.store(self.ms(Instant::now() + within) << 1, Ordering::Relaxed);
    }

    /// Whether the answer's deadline passed.
    pub fn expired(&self) -> bool {
        self.at.load(Ordering::Relaxed) == EXPIRED
    }

    fn wait(&self) -> Wait {
        match self.at.load(Ordering::Relaxed) {
            NONE => Wait::Nothing,
            EXPIRED => Wait::Expired,
            at if at & ANSWER == ANSWER => Wait::Answer(at >> 1),
            at => Wait::Request(at >> 1),
        }
    }

    /// `t` in milliseconds since the connection opened, rounded up (a deadline is never
    /// early).
    fn ms(&self, t: Instant) -> u64 {
        let d = t.saturating_duration_since(self.opened);
        d.as_secs() * 1000 + u64::from(d.subsec_nanos()).div_ceil(1_000_000)
    }

    fn instant(&self, ms: u64) -> Instant {
        self.opened + Duration::from_millis(ms)
    }
}

pin_project! {
    /// A connection's future, under its [`Deadline`]. Ends with `None` when the next
    /// request did not come in time (dropping the connection closes it).
    pub struct Watched<C> {
        #[pin]
        conn: C,
        #[pin]
        timer: Sleep,
        // The deadline the timer was last armed for; `None` before the first.
        armed: Option<u64>,
        deadline: Arc<Deadline>,
    }
}

impl<C> Watched<C> {
    /// Drives `conn` under `deadline`.
    pub fn new(conn: C, deadline: Arc<Deadline>) -> Watched<C> {
        // Not registered until armed (a `Sleep` is registered when first polled).
        let timer = tokio::time::sleep_until(deadline.opened);
        Watched { conn, timer, armed: None, deadline }
    }

    /// The connection itself (to start its graceful shutdown).
    pub fn conn(self: Pin<&mut Self>) -> Pin<&mut C> {
        self.project().conn
    }
}

impl<C: Future> Future for Watched<C> {
    type Output = Option<C::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if let Poll::Ready(out) = this.conn.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            let (at, answer) = match this.deadline.wait() {
                Wait::Nothing | Wait::Expired => return Poll::Pending,
                Wait::Request(at) => (at, false),
                Wait::Answer(at) => (at, true),
            };
            // Armed for this deadline or an earlier one, and not yet fired: nothing to do.
            if this.armed.is_some_and(|a| a <= at) && !this.timer.is_elapsed() {
                return Poll::Pending;
            }
            if at <= this.deadline.ms(Instant::now()) {
                if !answer {
                    return Poll::Ready(None);
                }
                // The request notices when the connection polls it, just below.
                this.deadline.at.store(EXPIRED, Ordering::Relaxed);
                continue;
            }
            // Out of its budget, a timer would not take the waker: armed at the next poll.
            if !tokio::task::coop::has_budget_remaining() {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            this.timer.as_mut().reset(this.deadline.instant(at));
            *this.armed = Some(at);
            // Polled once so that it wakes this task when it fires.
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

pin_project! {
    /// A response body to the client: once it is over, the connection waits for its
    /// next request, within the idle timeout.
    pub struct Reply<B> {
        #[pin]
        body: B,
        deadline: Option<Arc<Deadline>>,
    }

    impl<B> PinnedDrop for Reply<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(deadline) = this.project().deadline.take() {
                deadline.await_request();
            }
        }
    }
}

impl<B> Reply<B> {
    /// `body`, answering a request on a connection with `deadline` (if it has one).
    pub fn new(body: B, deadline: Option<Arc<Deadline>>) -> Reply<B> {
        Reply { body, deadline }
    }
}

impl<B: Body> Body for Reply<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_states_round_trip() {
        let d = Deadline::new(Duration::from_secs(10));
        assert_eq!(d.wait(), Wait::Request(10_000));
        d.answer_within(d.opened + Duration::from_millis(1500), Duration::from_millis(250));
        assert_eq!(d.wait(), Wait::Answer(1750));
        assert!(!d.expired());
        d.answered();
        assert_eq!(d.wait(), Wait::Nothing);
        tokio::time::advance(Duration::from_millis(2)).await;
        d.await_request();
        assert_eq!(d.wait(), Wait::Request(10_002));
    }

    #[test]
    fn deadlines_round_up_to_the_millisecond() {
        let d = Deadline { opened: Instant::now(), idle: Duration::ZERO, at: AtomicU64::new(NONE) };
        assert_eq!(d.ms(d.opened), 0);
        assert_eq!(d.ms(d.opened + Duration::from_nanos(1)), 1);
        assert_eq!(d.ms(d.opened + Duration::from_micros(2_000_001)), 2001);
        assert_eq!(d.ms(d.opened - Duration::from_millis(5)), 0);
    }

    /// A connection that never ends, counting its polls.
    struct Forever(u32);

    impl Future for Forever {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            self.0 += 1;
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_ends_at_its_deadline_and_not_before() {
        let d = Deadline::new(Duration::from_secs(10));
        let started = Instant::now();
        let ended = Watched::new(Forever(0), d.clone()).await;
        assert!(ended.is_none());
        assert_eq!(started.elapsed().as_millis(), 10_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_answer_expires_and_the_connection_is_polled_again() {
        let d = Deadline::new(Duration::from_secs(10));
        let mut watched = std::pin::pin!(Watched::new(Forever(0), d.clone()));
        // Armed for the first request head; then a request asks for an earlier answer.
        assert!(futures_util::poll!(watched.as_mut()).is_pending());
        d.answer_within(Instant::now(), Duration::from_secs(3));
        assert!(futures_util::poll!(watched.as_mut()).is_pending());
        let polls = watched.as_mut().project().conn.0;
        tokio::time::sleep(Duration::from_millis(2999)).await;
        assert!(!d.expired());
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(futures_util::poll!(watched.as_mut()).is_pending());
        assert!(d.expired());
        // Polled once to find the deadline passed, and once more for the request to see it.
        assert_eq!(watched.as_mut().project().conn.0, polls + 2);
        // A streaming response has no deadline at all.
        d.answered();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(futures_util::poll!(watched.as_mut()).is_pending());
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_deadline_rearms_the_timer_only_when_it_fires() {
        let d = Deadline::new(Duration::from_secs(10));
        let mut watched = std::pin::pin!(Watched::new(Forever(0), d.clone()));
        assert!(futures_util::poll!(watched.as_mut()).is_pending());
        assert_eq!(watched.armed, Some(10_000));
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(4)).await;
            d.await_request();
            assert!(futures_util::poll!(watched.as_mut()).is_pending(), "ended though requests kept coming");
        }
        // Re-armed once: at the first poll after it fired at 10 s, for the deadline then.
        assert_eq!(watched.armed, Some(22_000));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(futures_util::poll!(watched.as_mut()).is_ready());
    }
}
